//! Outgoing HTTP, built the same way for every client that carries data or
//! credentials (VCD REST, ScaleIT history and schemas, webhooks).
//!
//! Exists because each peer is untrusted input: a redirect must not turn a
//! POST into a body-less GET that "succeeds", a `Retry-After` must not put
//! a task to sleep for years, a body must not fill the memory, and a URL
//! that carries a token must not reach a log line, a table or an event.

pub mod backoff;
pub mod tls;

use std::path::Path;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

use crate::config::{Config, Secret, SinkKind, SourceKind};

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("HTTP client: {0}")]
    Client(#[source] reqwest::Error),
    #[error("header `{0}` is not a valid HTTP header")]
    Header(String),
    #[error(
        "the response body is larger than {limit} bytes (a limit of gapless; see README, \"Input limits\")"
    )]
    TooLarge { limit: usize },
    #[error("reading the response body: {0}")]
    Body(#[source] reqwest::Error),
}

/// What a REST peer may make gapless do (`[http]`).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub retry_after_max: Duration,
    pub max_body: usize,
}

impl From<&crate::config::HttpConfig> for Limits {
    fn from(c: &crate::config::HttpConfig) -> Self {
        Limits {
            retry_after_max: c.retry_after_max.0,
            max_body: c.max_body.0,
        }
    }
}

/// How a client reaches its peer.
#[derive(Clone, Debug, Default)]
pub struct ClientSpec<'a> {
    /// The config key the client belongs to, for warnings.
    pub key: &'a str,
    pub timeout: Duration,
    /// Extra PEM CAs trusted besides the system roots.
    pub ca_file: Option<&'a Path>,
    /// Accept any certificate (labs only; warned about at start).
    pub insecure_skip_verify: bool,
}

/// A client that never follows redirects (a 3xx is an answer the caller
/// reports), with timeouts and the configured trust.
pub fn client(spec: &ClientSpec<'_>) -> Result<reqwest::Client, NetError> {
    tls::install_crypto_provider();
    let builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(spec.timeout)
        .connect_timeout(spec.timeout.min(Duration::from_secs(10)));
    let builder = if spec.insecure_skip_verify {
        tracing::warn!(
            key = spec.key,
            "tls.insecure_skip_verify = true: the certificate is NOT verified"
        );
        builder.tls_danger_accept_invalid_certs(true)
    } else {
        builder.tls_backend_preconfigured((*tls::client_config(spec.ca_file)?).clone())
    };
    builder.build().map_err(NetError::Client)
}

/// Request headers from the config: plain values, and secret ones (from
/// environment variables or files) marked sensitive so no `Debug` prints them.
pub fn headers(
    plain: &std::collections::BTreeMap<String, String>,
    secret: &[(String, Secret)],
) -> Result<HeaderMap, NetError> {
    let mut map = HeaderMap::new();
    let name =
        |k: &str| HeaderName::from_bytes(k.as_bytes()).map_err(|_| NetError::Header(k.into()));
    for (k, v) in plain {
        let value = HeaderValue::from_str(v).map_err(|_| NetError::Header(k.clone()))?;
        map.insert(name(k)?, value);
    }
    for (k, v) in secret {
        let mut value =
            HeaderValue::from_str(v.expose()).map_err(|_| NetError::Header(k.clone()))?;
        value.set_sensitive(true);
        map.insert(name(k)?, value);
    }
    Ok(map)
}

/// A `Retry-After` value (delay-seconds or an HTTP-date, RFC 9110 §10.2.3)
/// as a delay from `now_s` (Unix seconds), never longer than `cap`. A date
/// in the past is no delay; an unreadable value is none.
pub fn parse_retry_after(value: &str, now_s: i64, cap: Duration) -> Option<Duration> {
    let value = value.trim();
    let secs = match value.parse::<u64>() {
        Ok(s) => s,
        Err(_) => {
            let at = chrono::DateTime::parse_from_rfc2822(value)
                .ok()?
                .timestamp();
            u64::try_from(at.saturating_sub(now_s)).unwrap_or(0)
        }
    };
    Some(Duration::from_secs(secs).min(cap))
}

/// The capped `Retry-After` of a response, if it has one.
pub fn retry_after(headers: &HeaderMap, cap: Duration) -> Option<Duration> {
    let v = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    parse_retry_after(v, chrono::Utc::now().timestamp(), cap)
}

/// A URL fit for logs, tables and events: no user info, no query, no
/// fragment (where tokens live). Text that is not a URL is kept up to its
/// first `?` and without anything before an `@` in its authority.
pub fn redact(url: &str) -> String {
    // Nothing to remove (the common case, per message for `dataschema`):
    // no parse.
    if !url.contains(['@', '?', '#']) {
        return url.to_string();
    }
    match url::Url::parse(url) {
        Ok(mut u) if u.has_host() => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.set_query(None);
            u.set_fragment(None);
            u.to_string()
        }
        _ => {
            let cut = url.split(['?', '#']).next().unwrap_or_default();
            match cut.split_once("://") {
                Some((scheme, rest)) => {
                    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
                    let host = authority.rsplit('@').next().unwrap_or_default();
                    format!("{scheme}://{host}{path}")
                }
                None => cut.to_string(),
            }
        }
    }
}

/// Why a 3xx answer is a failure, naming where it pointed (redacted).
pub fn redirect_error(status: u16, headers: &HeaderMap) -> String {
    let location = headers
        .get(reqwest::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .map_or_else(|| "nowhere (no Location header)".to_string(), redact);
    format!(
        "HTTP {status} redirect to {location}: gapless does not follow redirects; configure the final URL"
    )
}

/// Reads a response body, refusing one over `limit` bytes without
/// buffering more than that.
pub async fn read_limited(mut resp: reqwest::Response, limit: usize) -> Result<Vec<u8>, NetError> {
    if resp.content_length().is_some_and(|n| n > limit as u64) {
        return Err(NetError::TooLarge { limit });
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| NetError::Body(e.without_url()))?
    {
        if body.len() + chunk.len() > limit {
            return Err(NetError::TooLarge { limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// A reqwest error without the URL it names (which may carry a token),
/// with its causes.
pub fn error_text(e: reqwest::Error) -> String {
    crate::error_chain(&e.without_url())
}

/// What the configuration exposes, one line per key: credentials that
/// would travel unencrypted, an admin endpoint reachable from other
/// hosts. Logged as warnings at start and printed by `check-config`.
pub fn exposure_warnings(config: &Config) -> Vec<String> {
    let mut out = Vec::new();
    let plain = |url: &str| {
        url.starts_with("http://")
            || url.starts_with("ws://")
            || url.starts_with("mqtt://")
            || url.starts_with("tcp://")
    };
    let userinfo = |url: &str| {
        url::Url::parse(&url.replace("{app}", "app"))
            .is_ok_and(|u| !u.username().is_empty() || u.password().is_some())
    };
    let vcd_url = match &config.source.kind {
        SourceKind::Vcd(v) => v.url.as_deref(),
        _ => None,
    };
    let mqtt_credentials = config.mqtt.username.is_some()
        || config.mqtt.password_env.is_some()
        || config.mqtt.password_file.is_some()
        || vcd_url.is_some();
    if plain(&config.mqtt.url) && mqtt_credentials {
        out.push(format!(
            "mqtt.url: `{}` sends the MQTT credentials unencrypted; use mqtts:// or wss://",
            redact(&config.mqtt.url)
        ));
    }
    if let Some(url) = vcd_url.filter(|u| plain(u)) {
        out.push(format!(
            "source.url: `{}` sends the VCD password or token unencrypted; use https://",
            redact(url)
        ));
    }
    if let SourceKind::Scaleit(s) = &config.source.kind {
        let secrets = sends_secrets(&s.headers_env, &s.bearer_env, &s.bearer_file);
        for (key, url) in [
            ("source.schema_base_url", &s.schema_base_url),
            ("source.history_url", &s.history_url),
        ] {
            if let Some(url) = url
                .as_deref()
                .filter(|u| plain(u) && (secrets || userinfo(u)))
            {
                out.push(format!(
                    "{key}: `{}` sends credentials unencrypted; use https://",
                    redact(url)
                ));
            }
        }
    }
    for (i, sink) in config.sinks.iter().enumerate() {
        match &sink.kind {
            SinkKind::Webhook(w) => {
                let secrets = sends_secrets(&w.headers_env, &w.bearer_env, &w.bearer_file);
                if plain(&w.url) && (secrets || userinfo(&w.url)) {
                    out.push(format!(
                        "sink[{i}].url: `{}` sends credentials unencrypted; use https://",
                        redact(&w.url)
                    ));
                }
            }
            SinkKind::Nats(n)
                if n.sends_secret()
                    && n.url.split(',').any(|u| u.trim().starts_with("nats://")) =>
            {
                out.push(format!(
                    "sink[{i}].url: `{}` sends the NATS password or token unencrypted unless the \
                     server demands TLS; use tls:// to insist on it",
                    redact(&n.url)
                ));
            }
            SinkKind::Kafka(k) => {
                let protocol = k
                    .properties
                    .get("security.protocol")
                    .map(|p| p.to_ascii_uppercase());
                if k.user.is_some() && !matches!(protocol.as_deref(), Some("SSL" | "SASL_SSL")) {
                    out.push(format!(
                        "sink[{i}].properties: `security.protocol` is not SASL_SSL, so the Kafka \
                         password may cross the network unencrypted; set \"security.protocol\" = \"SASL_SSL\""
                    ));
                }
            }
            _ => {}
        }
    }
    if let Ok(Some(addr)) = config.admin.addr()
        && !addr.ip().is_loopback()
    {
        let guard = if config.admin.token_env.is_some() || config.admin.token_file.is_some() {
            "/metrics and /readyz details need the admin token"
        } else {
            "anyone who can reach it reads /metrics; set admin.token_env, or listen on 127.0.0.1"
        };
        out.push(format!(
            "admin.listen: {addr} is reachable from other hosts; {guard}"
        ));
    }
    out
}

/// Whether a client is configured with secret headers.
fn sends_secrets<T>(
    headers_env: &std::collections::BTreeMap<String, String>,
    bearer_env: &Option<String>,
    bearer_file: &Option<T>,
) -> bool {
    !headers_env.is_empty() || bearer_env.is_some() || bearer_file.is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_dates_and_is_capped() {
        let cap = Duration::from_secs(600);
        let now = 1_445_412_480; // Wed, 21 Oct 2015 07:28:00 GMT
        assert_eq!(
            parse_retry_after("120", now, cap),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after(" 3 ", now, cap),
            Some(Duration::from_secs(3))
        );
        assert_eq!(parse_retry_after("99999999999", now, cap), Some(cap));
        assert_eq!(
            parse_retry_after(&u64::MAX.to_string(), now, cap),
            Some(cap)
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:30:00 GMT", now, cap),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now, cap),
            Some(Duration::ZERO)
        );
        assert_eq!(
            parse_retry_after("Fri, 31 Dec 9999 23:59:59 GMT", now, cap),
            Some(cap)
        );
        assert_eq!(parse_retry_after("soon", now, cap), None);
        assert_eq!(parse_retry_after("-5", now, cap), None);
    }

    #[test]
    fn redaction_drops_user_info_query_and_fragment() {
        assert_eq!(
            redact("https://user:pw@host.example/a/b?token=s3cret#frag"),
            "https://host.example/a/b"
        );
        assert_eq!(redact("http://h:8080/x?k=v"), "http://h:8080/x");
        assert_eq!(redact("http://{app}.apps/x?k=v"), "http://{app}.apps/x");
        assert_eq!(redact("ws://u:p@h/p?q"), "ws://h/p");
        assert_eq!(redact("gameover.json"), "gameover.json");
    }

    #[test]
    fn a_redirect_names_its_target_without_secrets() {
        let mut h = HeaderMap::new();
        h.insert(
            reqwest::header::LOCATION,
            HeaderValue::from_static("https://u:pw@elsewhere.example/hook?sig=x"),
        );
        let e = redirect_error(302, &h);
        assert!(
            e.contains("HTTP 302") && e.contains("https://elsewhere.example/hook"),
            "{e}"
        );
        assert!(!e.contains("pw") && !e.contains("sig"), "{e}");
        assert!(redirect_error(301, &HeaderMap::new()).contains("no Location"));
    }

    #[test]
    fn secret_headers_are_sensitive() {
        let h = headers(
            &[("X-Plain".to_string(), "a".to_string())].into(),
            &[("Authorization".into(), Secret::new("Bearer tok"))],
        )
        .unwrap();
        assert!(h["authorization"].is_sensitive());
        assert!(!format!("{h:?}").contains("tok"));
        assert!(headers(&[("bad name".into(), "v".into())].into(), &[]).is_err());
    }

    #[test]
    fn exposure_is_named_key_by_key() {
        let base = r#"
            [source]
            kind = "mqtt"
            name = "x"
            [mqtt]
            url = "ws://broker.example/mqtt"
            username = "u"
            [admin]
            listen = "0.0.0.0:9464"
            [[sink]]
            name = "hook"
            kind = "webhook"
            url = "http://user:pw@hooks.example/in?sig=abc"
        "#;
        let c = Config::parse(base).unwrap();
        let w = exposure_warnings(&c).join("\n");
        assert!(
            w.contains(
                "mqtt.url: `ws://broker.example/mqtt` sends the MQTT credentials unencrypted"
            ),
            "{w}"
        );
        assert!(w.contains("sink[0].url: `http://hooks.example/in`"), "{w}");
        assert!(
            w.contains("admin.listen: 0.0.0.0:9464 is reachable from other hosts"),
            "{w}"
        );
        assert!(!w.contains("pw") && !w.contains("sig"), "{w}");
        let safe = base
            .replace("ws://", "wss://")
            .replace("http://user:pw@", "https://")
            .replace("0.0.0.0", "127.0.0.1");
        assert!(exposure_warnings(&Config::parse(&safe).unwrap()).is_empty());
        let nats = |url: &str| {
            let c = Config::parse(&safe.replace(
                "[[sink]]",
                &format!(
                    "[[sink]]\nname = \"n\"\nkind = \"nats\"\nurl = \"{url}\"\n\
                     creds_file = \"/dev/null\"\n[[sink]]\nname = \"t\"\nkind = \"nats\"\n\
                     url = \"{url}\"\ntoken_file = \"/dev/null\"\n[[sink]]"
                ),
            ))
            .unwrap();
            exposure_warnings(&c)
        };
        let w = nats("nats://a:4222").join("\n");
        assert!(w.contains("sink[1].url") && !w.contains("sink[0]"), "{w}");
        assert!(nats("tls://a:4222").is_empty());
        let kafka = |protocol: &str| {
            let c = Config::parse(&safe.replace(
                "[[sink]]",
                &format!(
                    "[[sink]]\nname = \"k\"\nkind = \"kafka\"\nbrokers = \"a:9092\"\n\
                     topic = \"t\"\nuser = \"u\"\npassword_file = \"/dev/null\"\n\
                     properties = {{ \"security.protocol\" = \"{protocol}\" }}\n[[sink]]"
                ),
            ))
            .unwrap();
            exposure_warnings(&c)
        };
        let w = kafka("SASL_PLAINTEXT").join("\n");
        assert!(
            w.contains("sink[0].properties") && w.contains("SASL_SSL"),
            "{w}"
        );
        assert!(kafka("sasl_ssl").is_empty());
    }
}
