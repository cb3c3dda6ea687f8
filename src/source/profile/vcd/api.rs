//! The VCD REST client: login and the audit trail (docs/wire-formats.md §4–§5)
//! (the HTTP pieces every history shares are in [`crate::source::history`]).
//!
//! One client per source, shared by the poller and the credential
//! refresher: whoever logs in publishes the new token on a watch channel,
//! so MQTT and REST always use the same session. A `401` means the token
//! expired: the client logs in once more and retries the call once.

use std::sync::Arc;

use base64::Engine;
use reqwest::StatusCode;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::sync::{Mutex, watch};

use crate::config::{Secret, VcdLogin, VcdSecret};
use crate::event::rfc3339_us;
use crate::metrics::Counters;
use crate::net::Limits;
pub use crate::source::history::{ApiError, Window};
use crate::source::history::{json_body, rest_client, success};
use crate::source::poll::{History, HistoryPage, PollError};
use crate::source::session::{Login, Token};
use crate::telemetry::{InternalEvent, LoggedIn};

/// The `exp` claim of a JWT, in µs since the epoch; `None` if the token is
/// not a JWT (then expiry is only learnt from a refusal).
pub fn jwt_expiry_us(jwt: &str) -> Option<i64> {
    let payload = jwt.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    claims.get("exp")?.as_i64()?.checked_mul(1_000_000)
}

/// One page of the audit trail.
#[derive(Debug)]
pub struct AuditPage {
    /// Each event's JSON, verbatim.
    pub values: Vec<Box<RawValue>>,
    pub page_count: u32,
    /// How many events the whole window holds, as the server counted them.
    pub result_total: Option<u64>,
    /// The `Link` header names a next page.
    pub has_next: bool,
}

#[derive(Deserialize)]
struct PageBody {
    #[serde(rename = "pageCount", default)]
    page_count: u32,
    #[serde(rename = "resultTotal")]
    result_total: Option<u64>,
    #[serde(default)]
    values: Vec<Box<RawValue>>,
}

#[derive(Deserialize)]
struct OAuthToken {
    access_token: String,
    expires_in: Option<i64>,
}

/// The shared VCD REST client.
pub struct VcdClient {
    http: reqwest::Client,
    login: VcdLogin,
    accept: String,
    token: watch::Sender<Option<Token>>,
    /// Serialises logins so concurrent 401s cause one login, not several.
    login_lock: Mutex<()>,
    counters: Arc<Counters>,
    limits: Limits,
}

/// The audit trail's FIQL filter selecting `window` (`;` is AND).
fn fiql(window: &Window) -> String {
    format!(
        "timestamp=ge={};timestamp=lt={}",
        rfc3339_us(window.from_us),
        rfc3339_us(window.to_us)
    )
}

impl Login for VcdClient {
    /// Logs in (again) and publishes the new token.
    async fn login(&self) -> Result<Token, ApiError> {
        let _guard = self.login_lock.lock().await;
        let token = match &self.login.secret {
            VcdSecret::Password(password) => self.login_password(password).await?,
            VcdSecret::ApiToken(refresh) => self.login_api_token(refresh).await?,
        };
        LoggedIn {
            who: &self.principal(),
            expires_at: token.expires_at_us.map(rfc3339_us),
        }
        .emit(&self.counters);
        self.token.send_replace(Some(token.clone()));
        Ok(token)
    }

    /// `user@org`, the MQTT username VCD expects.
    fn principal(&self) -> String {
        format!("{}@{}", self.login.user, self.login.org)
    }

    fn tokens(&self) -> watch::Receiver<Option<Token>> {
        self.token.subscribe()
    }
}

impl VcdClient {
    pub fn new(login: VcdLogin, counters: Arc<Counters>, limits: Limits) -> Result<Self, ApiError> {
        let accept = format!("application/json;version={}", login.api_version);
        Ok(VcdClient {
            limits,
            http: rest_client(&login.tls)?,
            login,
            accept,
            token: watch::channel(None).0,
            login_lock: Mutex::new(()),
            counters,
        })
    }

    fn url(&self, path: &str) -> reqwest::Url {
        self.login.url.join(path).expect("a path joins a base URL")
    }

    async fn login_password(&self, password: &Secret) -> Result<Token, ApiError> {
        let path = if self.login.is_provider() {
            "cloudapi/1.0.0/sessions/provider"
        } else {
            "cloudapi/1.0.0/sessions"
        };
        let resp = self
            .http
            .post(self.url(path))
            .basic_auth(self.principal(), Some(password.expose()))
            .header(reqwest::header::ACCEPT, &self.accept)
            .send()
            .await?;
        let status = resp.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(ApiError::LoginRefused {
                who: self.principal(),
                status,
            });
        }
        let resp = success(resp, "VCD login", self.limits)?;
        let jwt = resp
            .headers()
            .get("x-vmware-vcloud-access-token")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| ApiError::NoToken("no X-VMWARE-VCLOUD-ACCESS-TOKEN header".into()))?
            .to_string();
        Ok(Token {
            expires_at_us: jwt_expiry_us(&jwt),
            jwt: Secret::new(jwt),
        })
    }

    async fn login_api_token(&self, refresh: &Secret) -> Result<Token, ApiError> {
        let path = if self.login.is_provider() {
            "oauth/provider/token".to_string()
        } else {
            format!("oauth/tenant/{}/token", self.login.org)
        };
        let resp = self
            .http
            .post(self.url(&path))
            .header(reqwest::header::ACCEPT, "application/json")
            .form(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh.expose()),
            ])
            .send()
            .await?;
        let status = resp.status();
        if matches!(
            status,
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::BAD_REQUEST
        ) {
            return Err(ApiError::LoginRefused {
                who: format!("API token for org {}", self.login.org),
                status,
            });
        }
        let resp = success(resp, "VCD token login", self.limits)?;
        let body: OAuthToken = json_body(resp, "VCD token login", self.limits).await?;
        let expires_at_us = jwt_expiry_us(&body.access_token).or_else(|| {
            body.expires_in
                .and_then(|s| s.checked_mul(1_000_000))
                .and_then(|us| crate::event::now_us().checked_add(us))
        });
        Ok(Token {
            jwt: Secret::new(body.access_token),
            expires_at_us,
        })
    }

    /// The current token, logging in if there is none.
    pub async fn token(&self) -> Result<Token, ApiError> {
        let current = self.token.borrow().clone();
        match current {
            Some(t) => Ok(t),
            None => self.login().await,
        }
    }

    /// One page of the audit trail inside `window`, oldest first.
    pub async fn audit_page(
        &self,
        window: Window,
        page: u32,
        page_size: u32,
    ) -> Result<AuditPage, ApiError> {
        let mut relogged = false;
        loop {
            let token = self.token().await?;
            let resp = self
                .http
                .get(self.url("cloudapi/1.0.0/auditTrail"))
                .bearer_auth(token.jwt.expose())
                .header(reqwest::header::ACCEPT, &self.accept)
                .query(&[
                    ("filter", fiql(&window)),
                    ("sortAsc", "timestamp".into()),
                    ("page", page.to_string()),
                    ("pageSize", page_size.to_string()),
                ])
                .send()
                .await?;
            let status = resp.status();
            if status == StatusCode::UNAUTHORIZED && !relogged {
                tracing::info!("VCD answered 401 (token expired); logging in again");
                relogged = true;
                self.login().await?;
                continue;
            }
            let resp = success(resp, "VCD auditTrail", self.limits)?;
            let has_next = resp
                .headers()
                .get_all(reqwest::header::LINK)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .any(|v| v.contains("rel=\"nextPage\""));
            let body: PageBody = json_body(resp, "VCD auditTrail", self.limits).await?;
            return Ok(AuditPage {
                values: body.values,
                page_count: body.page_count,
                result_total: body.result_total,
                has_next,
            });
        }
    }
}

/// The audit trail as the poller's history: VCD pages and counts.
impl History for VcdClient {
    async fn page(
        &self,
        window: Window,
        page: u32,
        page_size: u32,
    ) -> Result<HistoryPage, PollError> {
        let body = self.audit_page(window, page, page_size).await?;
        let now = crate::event::now_us();
        Ok(HistoryPage {
            items: body
                .values
                .iter()
                .map(|raw| super::audit_event(raw.get(), now))
                .collect(),
            more: page < body.page_count || body.has_next,
            total: body.result_total,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[test]
    fn the_simulators_tokens_carry_their_expiry() {
        let jwt = gapless_sim::vcd::make_jwt("u", 1_800_000_000, 1);
        assert_eq!(super::jwt_expiry_us(&jwt), Some(1_800_000_000_000_000));
    }

    use super::*;

    #[test]
    fn jwt_expiry_is_read_from_the_exp_claim() {
        let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(br#"{"sub":"a","exp":1800000000}"#);
        assert_eq!(
            jwt_expiry_us(&format!("eyJhbGciOiJub25lIn0.{claims}.sig")),
            Some(1_800_000_000_000_000)
        );
        assert_eq!(jwt_expiry_us("opaque-token"), None);
        assert_eq!(jwt_expiry_us("a.!!!.c"), None);
    }

    #[test]
    fn window_filter_is_closed_on_the_left_open_on_the_right() {
        let w = Window {
            from_us: 1_795_428_000_000_000,
            to_us: 1_795_428_060_123_000,
        };
        assert_eq!(
            fiql(&w),
            "timestamp=ge=2026-11-23T10:00:00.000Z;timestamp=lt=2026-11-23T10:01:00.123Z"
        );
    }

    #[test]
    fn only_transient_failures_are_retryable() {
        let status = |s: u16, ra: Option<u64>| ApiError::Status {
            what: "x",
            status: StatusCode::from_u16(s).unwrap(),
            retry_after: ra.map(Duration::from_secs),
        };
        assert_eq!(
            status(429, Some(2)).retryable(),
            Some(Some(Duration::from_secs(2)))
        );
        assert_eq!(status(503, None).retryable(), Some(None));
        assert_eq!(status(400, None).retryable(), None);
        assert_eq!(status(404, None).retryable(), None);
    }

    /// A connection the peer refuses is a network error, and the poller
    /// retries it. Port 0 is never listened on, so no other process can
    /// take it between a test's bind and connect.
    #[tokio::test]
    async fn a_refused_connection_is_retryable() {
        crate::net::tls::install_crypto_provider();
        let err = reqwest::get("http://127.0.0.1:0/").await.unwrap_err();
        assert_eq!(ApiError::from(err).retryable(), Some(None));
    }
}
