//! Keeps a login session alive and hands MQTT its credentials.
//!
//! Where the MQTT connection authenticates with the same expiring token as
//! the REST side (VCD's JWT), this task logs in again shortly before the
//! token expires (or as soon as the broker refused it), and turns every new
//! token into the [`MqttAuth`] the next MQTT connect uses. It knows the
//! login only through [`Login`].

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use super::history::ApiError;
use super::mqtt::{Credentials, MqttAuth};
use crate::config::{MqttAuthMode, Secret};
use crate::event::now_us;

/// A session token and, when known, when it expires.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    pub jwt: Secret,
    pub expires_at_us: Option<i64>,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("jwt", &"***")
            .field("expires_at_us", &self.expires_at_us)
            .finish()
    }
}

/// A login that issues expiring tokens (a profile's REST client).
pub trait Login: Send + Sync + 'static {
    fn login(&self) -> impl Future<Output = Result<Token, ApiError>> + Send;
    /// The MQTT user name that goes with the token.
    fn principal(&self) -> String;
    /// Every token issued, whoever logged in (the poller after a 401 too).
    fn tokens(&self) -> watch::Receiver<Option<Token>>;
}

/// How long before expiry the token is renewed: a tenth of its remaining
/// life, between 1 s and 5 min.
pub fn renew_in(token: &Token, now_us: i64) -> Option<Duration> {
    let exp = token.expires_at_us?;
    let left = exp.saturating_sub(now_us).max(0);
    let margin = (left / 10).clamp(1_000_000, 300_000_000);
    Some(Duration::from_micros((left - margin).max(0) as u64))
}

/// The MQTT credentials for a token.
pub fn mqtt_auth(mode: MqttAuthMode, principal: &str, token: &Token) -> MqttAuth {
    match mode {
        MqttAuthMode::Password => MqttAuth {
            username: Some(principal.to_string()),
            password: Some(token.jwt.clone()),
            bearer: None,
        },
        MqttAuthMode::Bearer => MqttAuth {
            username: None,
            password: None,
            bearer: Some(token.jwt.clone()),
        },
    }
}

/// Logs in, retrying transient failures with backoff; a refused login is final.
pub async fn login_until_ok<L: Login>(
    client: &L,
    shutdown: &CancellationToken,
) -> Result<Option<Token>, ApiError> {
    let mut attempt = 0;
    loop {
        match client.login().await {
            Ok(t) => return Ok(Some(t)),
            Err(e) if e.retryable().is_some() => {
                attempt += 1;
                let delay = crate::net::backoff::retry_delay(
                    attempt,
                    e.retryable().flatten(),
                    rand::random(),
                );
                tracing::warn!(error = %crate::error_chain(&e), attempt, retry_in = ?delay, "login failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.cancelled() => return Ok(None),
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// Logs in once and returns the MQTT credentials that follow the session,
/// plus the refresher task to spawn.
pub async fn start<L: Login>(
    client: Arc<L>,
    mode: MqttAuthMode,
    shutdown: CancellationToken,
) -> Result<Option<(Credentials, impl Future<Output = Result<(), ApiError>>)>, ApiError> {
    let Some(first) = login_until_ok(client.as_ref(), &shutdown).await? else {
        return Ok(None);
    };
    let principal = client.principal();
    let (tx, rx) = watch::channel(mqtt_auth(mode, &principal, &first));
    let refused = Arc::new(Notify::new());
    let credentials = Credentials::from_watch(rx, refused.clone());
    let task = async move {
        let mut tokens = client.tokens();
        loop {
            let current = tokens.borrow_and_update().clone();
            if let Some(t) = &current {
                tx.send_replace(mqtt_auth(mode, &principal, t));
            }
            let wait = current.as_ref().and_then(|t| renew_in(t, now_us()));
            let renew = async {
                match wait {
                    Some(d) => tokio::time::sleep(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = renew => {
                    tracing::info!("token about to expire; renewing");
                }
                _ = refused.notified() => {
                    tracing::info!("the broker refused the token; logging in again");
                }
                changed = tokens.changed() => {
                    // Someone else (the poller after a 401) logged in.
                    if changed.is_err() { return Ok(()); }
                    continue;
                }
                _ = shutdown.cancelled() => return Ok(()),
            }
            if login_until_ok(client.as_ref(), &shutdown).await?.is_none() {
                return Ok(());
            }
        }
    };
    Ok(Some((credentials, task)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(exp_us: Option<i64>) -> Token {
        Token {
            jwt: Secret::new("j"),
            expires_at_us: exp_us,
        }
    }

    #[test]
    fn renewal_comes_before_expiry() {
        let now = 1_000_000_000_000;
        assert_eq!(renew_in(&token(None), now), None);
        assert_eq!(
            renew_in(&token(Some(now + 3_600_000_000)), now),
            Some(Duration::from_secs(3300))
        );
        assert_eq!(
            renew_in(&token(Some(now + 4_000_000)), now),
            Some(Duration::from_secs(3))
        );
        assert_eq!(renew_in(&token(Some(now - 1)), now), Some(Duration::ZERO));
    }

    #[test]
    fn auth_modes_place_the_token() {
        let t = token(None);
        let p = mqtt_auth(MqttAuthMode::Password, "admin@System", &t);
        assert_eq!(
            (
                p.username.as_deref(),
                p.password.is_some(),
                p.bearer.is_some()
            ),
            (Some("admin@System"), true, false)
        );
        let b = mqtt_auth(MqttAuthMode::Bearer, "admin@System", &t);
        assert_eq!(
            (b.username, b.password.is_some(), b.bearer.is_some()),
            (None, false, true)
        );
    }
}
