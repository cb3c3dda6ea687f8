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
    #[error("header `{0}` is not a valid HTTP header")]
    Header(String),
    #[error("HTTP client: {0}")]
    Client(#[from] reqwest::Error),
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
        let s = secret.expose();
        let key = match s.strip_prefix("whsec_") {
            Some(b64) => base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|e| {
                    WebhookError::Secret(format!("a whsec_ secret must be base64 ({e})"))
                })?,
            None => s.as_bytes().to_vec(),
        };
        if key.is_empty() {
            return Err(WebhookError::Secret("is empty".into()));
        }
        Ok(Signer { key })
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

pub struct WebhookTarget {
    http: reqwest::Client,
    url: reqwest::Url,
    signer: Option<Signer>,
    headers: reqwest::header::HeaderMap,
}

impl WebhookTarget {
    pub fn new(
        url: reqwest::Url,
        secret: Option<Secret>,
        timeout: Duration,
        headers: &std::collections::BTreeMap<String, String>,
    ) -> Result<Self, WebhookError> {
        crate::tls::install_crypto_provider();
        let mut map = reqwest::header::HeaderMap::new();
        for (k, v) in headers {
            let name = reqwest::header::HeaderName::from_bytes(k.as_bytes())
                .map_err(|_| WebhookError::Header(k.clone()))?;
            let value = reqwest::header::HeaderValue::from_str(v)
                .map_err(|_| WebhookError::Header(k.clone()))?;
            map.insert(name, value);
        }
        Ok(WebhookTarget {
            http: reqwest::Client::builder()
                .timeout(timeout)
                .connect_timeout(timeout.min(Duration::from_secs(10)))
                .build()?,
            url,
            signer: secret.as_ref().map(Signer::new).transpose()?,
            headers: map,
        })
    }

    /// One delivery attempt of one event.
    pub async fn post(&self, event: &StoredEvent, source: &str) -> Verdict {
        let body = event.to_cloudevent(source);
        let timestamp = chrono::Utc::now().timestamp();
        let mut req = self
            .http
            .post(self.url.clone())
            .headers(self.headers.clone())
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/cloudevents+json",
            )
            .header("webhook-id", &event.id)
            .header("webhook-timestamp", timestamp.to_string());
        if let Some(signer) = &self.signer {
            req = req.header(
                "webhook-signature",
                signer.sign(&event.id, timestamp, &body),
            );
        }
        match req.body(body).send().await {
            Ok(resp) => {
                let retry_after = resp
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_secs);
                classify(Some(resp.status().as_u16()), retry_after, "")
            }
            Err(e) => classify(None, None, &e.to_string()),
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
}
