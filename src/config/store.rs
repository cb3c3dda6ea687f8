//! `[store]`: where and how the events are kept.
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::*;

/// How hard SQLite pushes a commit to disk before it returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Synchronous {
    /// fsync on every commit: survives power loss (default).
    Full,
    /// fsync at checkpoints only: survives a crash of gapless, not of the OS.
    Normal,
}

/// How a Postgres connection uses TLS (libpq's `sslmode` names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// The SQLite file (unless `url` names a Postgres database).
    #[serde(default = "default_store_path")]
    pub path: PathBuf,
    /// `postgres://user@host:port/db`: the store is that database, shared
    /// by an active/passive pair. Its password is never in the URL.
    pub url: Option<String>,
    pub password_env: Option<String>,
    pub password_file: Option<PathBuf>,
    /// The Postgres password, read at load.
    #[serde(skip)]
    pub password: Option<Secret>,
    /// Default `verify-full` when `ca_file` is set, else libpq's `prefer`.
    pub sslmode: Option<SslMode>,
    /// The CA that signed the Postgres server's certificate.
    pub ca_file: Option<PathBuf>,
    /// Postgres: how long a leader's lease lasts unrenewed (default 10 s).
    pub lease_ttl: Option<HumanDuration>,
    /// Postgres: how often the leader renews its lease and a standby tries
    /// to take it (default 2 s).
    pub lease_renew: Option<HumanDuration>,
    /// Flush a batch at this many messages.
    #[serde(default = "default_batch_max")]
    pub batch_max: usize,
    /// Wait at most this long for a batch to fill; 0 commits whatever is queued.
    #[serde(default = "default_batch_delay")]
    pub batch_delay: HumanDuration,
    #[serde(default = "default_synchronous")]
    pub synchronous: Synchronous,
    /// How many rejected messages are kept for inspection (oldest dropped).
    #[serde(default = "default_rejected_max")]
    pub rejected_max: u32,
    /// Delivered events older than this are pruned once every sink passed them.
    #[serde(default = "default_retention")]
    pub retention: HumanDuration,
}

pub(super) fn default_retention() -> HumanDuration {
    HumanDuration(Duration::from_secs(7 * 24 * 3600))
}

pub(super) fn default_store_path() -> PathBuf {
    PathBuf::from("gapless.db")
}
pub(super) fn default_batch_max() -> usize {
    1000
}
pub(super) fn default_batch_delay() -> HumanDuration {
    HumanDuration(Duration::ZERO)
}
pub(super) fn default_synchronous() -> Synchronous {
    Synchronous::Full
}
pub(super) fn default_rejected_max() -> u32 {
    10_000
}

impl StoreConfig {
    /// Where the events are, as logs and `status` name it: the Postgres
    /// URL (it holds no password) or the SQLite file.
    pub fn location(&self) -> String {
        match &self.url {
            Some(url) => url.clone(),
            None => self.path.display().to_string(),
        }
    }

    /// The SQLite file, when the store is one: a Postgres store (`url`)
    /// has no file on this machine to check, size or watch.
    pub fn file(&self) -> Option<&Path> {
        self.url.is_none().then_some(self.path.as_path())
    }

    /// Checks the Postgres keys: a URL Postgres accepts, with no password
    /// in it, and the Postgres-only keys only beside a URL.
    pub(super) fn check(&self) -> Result<(), ConfigError> {
        let Some(url) = &self.url else {
            for (set, k) in [
                (self.password_env.is_some(), "store.password_env"),
                (self.password_file.is_some(), "store.password_file"),
                (self.sslmode.is_some(), "store.sslmode"),
                (self.ca_file.is_some(), "store.ca_file"),
                (self.lease_ttl.is_some(), "store.lease_ttl"),
                (self.lease_renew.is_some(), "store.lease_renew"),
            ] {
                if set {
                    return Err(ConfigError::invalid(
                        k,
                        "applies to a Postgres store only",
                        "set store.url = \"postgres://user@host/db\", or remove the key",
                    ));
                }
            }
            return Ok(());
        };
        let fix = "use store.url = \"postgres://user@host:5432/db\"";
        let parsed = url::Url::parse(url)
            .map_err(|e| ConfigError::invalid("store.url", format!("is not a URL: {e}"), fix))?;
        if !matches!(parsed.scheme(), "postgres" | "postgresql") {
            return Err(ConfigError::invalid(
                "store.url",
                format!("the scheme is {}, not postgres", parsed.scheme()),
                format!("{fix}; without a URL the store is the file at store.path"),
            ));
        }
        let (ttl, renew) = self.lease();
        if renew.is_zero() || ttl < renew * 3 {
            return Err(ConfigError::invalid(
                "store.lease_ttl",
                format!("{ttl:?} is less than three renewals ({renew:?} each)"),
                "keep lease_ttl at least 3 × lease_renew (defaults 10s and 2s)",
            ));
        }
        if parsed.password().is_some() {
            return Err(ConfigError::invalid(
                "store.url",
                "holds a password",
                "remove it from the URL and name it with store.password_env or store.password_file",
            ));
        }
        Ok(())
    }

    /// The leader lease's term and renewal interval.
    pub fn lease(&self) -> (Duration, Duration) {
        (
            self.lease_ttl.map_or(Duration::from_secs(10), |d| d.0),
            self.lease_renew.map_or(Duration::from_secs(2), |d| d.0),
        )
    }

    pub(super) fn resolve_password(&mut self) -> Result<(), ConfigError> {
        self.password = read_secret(
            "store.password_env",
            "store.password_file",
            &self.password_env,
            &self.password_file,
        )?;
        Ok(())
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            path: default_store_path(),
            url: None,
            password_env: None,
            password_file: None,
            password: None,
            sslmode: None,
            ca_file: None,
            lease_ttl: None,
            lease_renew: None,
            batch_max: default_batch_max(),
            batch_delay: default_batch_delay(),
            synchronous: default_synchronous(),
            rejected_max: default_rejected_max(),
            retention: default_retention(),
        }
    }
}
