//! What every REST history client shares, whatever the profile: the HTTP
//! error type and its retry classification, the time window a page is
//! read in, the client with its timeouts, and reading a response within
//! the limits.

use std::time::Duration;

use reqwest::StatusCode;

use crate::config::SourceTls;
use crate::net::Limits;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Without the URL, which may carry a token.
    #[error("request failed: {0}")]
    Http(#[source] reqwest::Error),
    #[error("{what}: {detail}")]
    Redirect { what: &'static str, detail: String },
    #[error("{what}: {source}")]
    Body {
        what: &'static str,
        source: crate::net::NetError,
    },
    #[error(transparent)]
    Net(#[from] crate::net::NetError),
    #[error("{what} answered {status}{}", retry_after.map(|d| format!(" (Retry-After {d:?})")).unwrap_or_default())]
    Status {
        what: &'static str,
        status: StatusCode,
        retry_after: Option<Duration>,
    },
    #[error(
        "VCD refused the login of `{who}` ({status}): check source.org, source.user and the password or API token"
    )]
    LoginRefused { who: String, status: StatusCode },
    #[error("VCD login answered without a token: {0}")]
    NoToken(String),
    #[error("unexpected response from {what}: {message}")]
    BadResponse { what: &'static str, message: String },
}

impl From<reqwest::Error> for ApiError {
    fn from(e: reqwest::Error) -> Self {
        ApiError::Http(e.without_url())
    }
}

impl ApiError {
    /// `Some(retry_after)` when the call may succeed if tried again later
    /// (429, 5xx, network errors); `None` when retrying cannot help.
    pub fn retryable(&self) -> Option<Option<Duration>> {
        match self {
            ApiError::Http(e)
                if e.is_timeout() || e.is_connect() || e.is_request() || e.is_body() =>
            {
                Some(None)
            }
            ApiError::Body {
                source: crate::net::NetError::Body(_),
                ..
            } => Some(None),
            ApiError::Status {
                status,
                retry_after,
                ..
            } if *status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() => {
                Some(*retry_after)
            }
            _ => None,
        }
    }
}

/// A half-open time window `[from, to)` in µs (whole milliseconds).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub from_us: i64,
    pub to_us: i64,
}

/// The response itself when it is a 2xx, else the error for `what` (a
/// redirect is not followed: it names where it pointed).
pub(crate) fn success(
    resp: reqwest::Response,
    what: &'static str,
    limits: Limits,
) -> Result<reqwest::Response, ApiError> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    if status.is_redirection() {
        return Err(ApiError::Redirect {
            what,
            detail: crate::net::redirect_error(status.as_u16(), resp.headers()),
        });
    }
    Err(ApiError::Status {
        what,
        status,
        retry_after: crate::net::retry_after(resp.headers(), limits.retry_after_max),
    })
}

/// A successful response's body as JSON, read up to `limits.max_body`.
pub(crate) async fn json_body<T: serde::de::DeserializeOwned>(
    resp: reqwest::Response,
    what: &'static str,
    limits: Limits,
) -> Result<T, ApiError> {
    let body = crate::net::read_limited(resp, limits.max_body)
        .await
        .map_err(|source| ApiError::Body { what, source })?;
    serde_json::from_slice(&body).map_err(|e| ApiError::BadResponse {
        what,
        message: e.to_string(),
    })
}

/// The HTTP client of a REST history (`[source] tls` applies), with
/// timeouts so a hung server fails the run instead of stalling it.
pub fn rest_client(tls: &SourceTls) -> Result<reqwest::Client, ApiError> {
    Ok(crate::net::client(&crate::net::ClientSpec {
        key: "source.tls",
        timeout: Duration::from_secs(60),
        ca_file: tls.ca_file.as_deref(),
        insecure_skip_verify: tls.insecure_skip_verify,
    })?)
}
