//! `[admin]` and `[http]`: the endpoint gapless serves and the limits
//! on the HTTP peers it talks to.
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::*;

/// The admin HTTP endpoint (`/healthz`, `/readyz`, `/metrics`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// `host:port` to listen on; `""` turns the endpoint off. Port 0 takes
    /// any free port, recorded in the store where `gapless status` finds it.
    #[serde(default = "default_admin_listen")]
    pub listen: String,
    /// A bearer token required by `/metrics` and the details of `/readyz`,
    /// from an environment variable or a file.
    pub token_env: Option<String>,
    pub token_file: Option<PathBuf>,
    /// The token, read at load.
    #[serde(skip)]
    pub token: Option<Secret>,
}

pub(super) fn default_admin_listen() -> String {
    "127.0.0.1:9464".into()
}

impl Default for AdminConfig {
    fn default() -> Self {
        toml::from_str("").expect("every [admin] key has a default")
    }
}

impl AdminConfig {
    pub(super) fn resolve_token(&mut self) -> Result<(), ConfigError> {
        self.token = self.read_token()?;
        Ok(())
    }

    /// The bearer token the endpoint requires, if configured: read at
    /// load by the daemon, and by `status` (which loads no secrets) only
    /// to ask the daemon.
    pub fn read_token(&self) -> Result<Option<Secret>, ConfigError> {
        read_secret(
            "admin.token_env",
            "admin.token_file",
            &self.token_env,
            &self.token_file,
        )
    }

    /// The socket address to bind, `None` when the endpoint is off.
    pub fn addr(&self) -> Result<Option<std::net::SocketAddr>, ConfigError> {
        if self.listen.is_empty() {
            return Ok(None);
        }
        self.listen.parse().map(Some).map_err(|_| {
            ConfigError::invalid(
                "admin.listen",
                format!("`{}` is not an IP address and port", self.listen),
                "write e.g. \"127.0.0.1:9464\" (or \"[::1]:9464\"), or \"\" to turn the endpoint off",
            )
        })
    }
}

/// Limits on what an HTTP peer (VCD, a ScaleIT app, a webhook endpoint)
/// can make gapless do.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// The longest `Retry-After` honoured; a longer one waits this long.
    #[serde(default = "default_retry_after_max")]
    pub retry_after_max: HumanDuration,
    /// The largest REST response read (an audit-trail page, a history window).
    #[serde(default = "default_max_body")]
    pub max_body: ByteSize,
}

pub(super) fn default_retry_after_max() -> HumanDuration {
    HumanDuration(Duration::from_secs(600))
}
pub(super) fn default_max_body() -> ByteSize {
    ByteSize(16 << 20)
}

impl Default for HttpConfig {
    fn default() -> Self {
        toml::from_str("").expect("every [http] key has a default")
    }
}
