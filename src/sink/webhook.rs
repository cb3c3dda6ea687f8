//! The webhook target: one POST per event, signed per Standard Webhooks.
//!
//! `webhook-id` is the event id (stable across retries and re-sends, so a
//! receiver deduplicates by it), `webhook-timestamp` the attempt's Unix
//! time, `webhook-signature` `v1,` + base64 HMAC-SHA256 of
//! `"{id}.{timestamp}.{body}"` with the sink's secret (a `whsec_` prefix
//! marks a base64 secret, as Standard Webhooks issues them).

use std::time::Duration;

use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use super::retry::{Verdict, classify};
use crate::config::Secret;
use crate::event::StoredEvent;

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("secret: {0}")]
    Secret(String),
    #[error(transparent)]
    Net(#[from] crate::net::NetError),
}

/// Signs payloads with the sink's secret.
#[derive(Clone)]
pub struct Signer {
    key: Vec<u8>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer(***)")
    }
}

impl Signer {
    pub fn new(secret: &Secret) -> Result<Self, WebhookError> {
        Ok(Signer {
            key: secret.signing_key().map_err(WebhookError::Secret)?,
        })
    }

    /// The `webhook-signature` header value.
    pub fn sign(&self, id: &str, timestamp: i64, body: &str) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body.as_bytes());
        format!(
            "v1,{}",
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
        )
    }
}

/// The `webhook-id` header for an event id: the id itself when it is
/// header-safe (visible ASCII, at most 256 bytes), else `b64.` + the
/// unpadded URL-safe base64 of its bytes, so that no id can make an invalid
/// header (and a receiver can decode it back).
pub fn webhook_id(id: &str) -> std::borrow::Cow<'_, str> {
    let safe = !id.is_empty() && id.len() <= 256 && id.bytes().all(|b| (0x21..=0x7e).contains(&b));
    if safe && !id.starts_with("b64.") {
        return id.into();
    }
    format!(
        "b64.{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(id)
    )
    .into()
}

/// How a webhook sink reaches its endpoint.
pub struct WebhookSpec<'a> {
    pub url: reqwest::Url,
    pub secret: Option<Secret>,
    pub timeout: Duration,
    pub headers: &'a std::collections::BTreeMap<String, String>,
    pub secret_headers: &'a [(String, Secret)],
    pub ca_file: Option<&'a std::path::Path>,
    pub retry_after_max: Duration,
}

pub struct WebhookTarget {
    http: reqwest::Client,
    url: reqwest::Url,
    signer: Option<Signer>,
    headers: reqwest::header::HeaderMap,
    retry_after_max: Duration,
}

impl WebhookTarget {
    pub fn new(spec: WebhookSpec<'_>) -> Result<Self, WebhookError> {
        Ok(WebhookTarget {
            http: crate::net::client(&crate::net::ClientSpec {
                key: "sink.url",
                timeout: spec.timeout,
                ca_file: spec.ca_file,
                insecure_skip_verify: false,
            })?,
            url: spec.url,
            signer: spec.secret.as_ref().map(Signer::new).transpose()?,
            headers: crate::net::headers(spec.headers, spec.secret_headers)?,
            retry_after_max: spec.retry_after_max,
        })
    }

    /// One delivery attempt of one event.
    pub async fn post(&self, event: &StoredEvent, source: &str) -> Verdict {
        let body = event.to_cloudevent(source);
        let timestamp = chrono::Utc::now().timestamp();
        let id = webhook_id(&event.id);
        let mut req = self
            .http
            .post(self.url.clone())
            .headers(self.headers.clone())
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/cloudevents+json",
            )
            .header("webhook-id", id.as_ref())
            .header("webhook-timestamp", timestamp.to_string());
        if let Some(signer) = &self.signer {
            req = req.header("webhook-signature", signer.sign(&id, timestamp, &body));
        }
        match req.body(body).send().await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let retry_after = crate::net::retry_after(resp.headers(), self.retry_after_max);
                let detail = if resp.status().is_redirection() {
                    crate::net::redirect_error(status, resp.headers())
                } else {
                    String::new()
                };
                classify(Some(status), retry_after, &detail)
            }
            // A request that cannot be built fails the same way every time.
            Err(e) if e.is_builder() => Verdict::Refused {
                status: None,
                reason: format!("the request cannot be built: {}", crate::net::error_text(e)),
            },
            Err(e) => classify(None, None, &crate::net::error_text(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whsec_secrets_are_base64_and_plain_ones_are_bytes() {
        let b64 = base64::engine::general_purpose::STANDARD.encode(b"key");
        let a = Signer::new(&Secret::new(format!("whsec_{b64}"))).unwrap();
        let b = Signer::new(&Secret::new("key")).unwrap();
        assert_eq!(a.sign("id", 1, "{}"), b.sign("id", 1, "{}"));
        assert!(a.sign("id", 1, "{}").starts_with("v1,"));
        assert_ne!(a.sign("id", 2, "{}"), a.sign("id", 1, "{}"));
        assert!(Signer::new(&Secret::new("whsec_!!")).is_err());
        assert!(!format!("{a:?}").contains("key"));
    }

    /// The published test vector of the Standard Webhooks specification.
    #[test]
    fn signatures_match_the_standard_webhooks_vector() {
        let s = Signer::new(&Secret::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")).unwrap();
        assert_eq!(
            s.sign(
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1614265330,
                r#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn ids_that_are_not_header_safe_are_encoded() {
        assert_eq!(
            webhook_id("0b6c8a7e-1111-4222-8333-944445555666"),
            "0b6c8a7e-1111-4222-8333-944445555666"
        );
        assert_eq!(webhook_id("a\u{1}b"), "b64.YQFi");
        assert_eq!(webhook_id("two words"), "b64.dHdvIHdvcmRz");
        assert_eq!(webhook_id("é"), "b64.w6k");
        assert!(
            webhook_id("b64.YQFi").starts_with("b64.YjY0"),
            "an id that looks encoded is encoded too"
        );
        for id in ["a\u{1}b", "x\r\ny", &"z".repeat(300)] {
            assert!(reqwest::header::HeaderValue::from_str(&webhook_id(id)).is_ok());
        }
    }
}
