//! The Postgres side of the store, for an active/passive pair: its
//! connection options and migrations (`migrations/postgres`), and the
//! [`lease`] that decides which of the two leads. The queries themselves
//! are the store's, compiled for both backends (see `store::backend`).

pub mod lease;

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgSslMode};

use super::backend::Db;
use super::{Store, StoreError};
use crate::config::{SslMode, StoreConfig};

/// The lease every gapless on one store contends for.
pub const LEASE: &str = "gapless";

impl Store {
    /// The leader lease of a Postgres store, to be claimed as `holder`
    /// (trusting a term `ttl - margin`); `None` for SQLite, whose file
    /// lock keeps a second daemon out instead.
    pub fn lease(&self, holder: &str, ttl: Duration, margin: Duration) -> Option<lease::Lease> {
        match &self.pool {
            Db::Postgres(pool) => Some(lease::Lease::new(pool.clone(), LEASE, holder, ttl, margin)),
            Db::Sqlite(_) => None,
        }
    }

    /// Who leads a Postgres store (`None` for SQLite, or before anyone
    /// ever led).
    pub async fn leader(&self) -> Result<Option<lease::Holder>, StoreError> {
        match &self.pool {
            Db::Postgres(pool) => Ok(lease::holder(pool, LEASE).await?),
            Db::Sqlite(_) => Ok(None),
        }
    }
}

/// How long a statement waits for a pooled connection: with the database
/// down, a lease renewal fails within this (not sqlx's default 30 s), well
/// inside the lease's `ttl - margin`, so the leader's own clock decides.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);

/// The connection options `[store]` describes: its URL, with the password
/// and TLS settings read at load (`verify-full` when a CA is given).
///
/// Every session also ends a transaction left idle for a lease TTL
/// (`idle_in_transaction_session_timeout`). A fenced transaction holds the
/// lease row until it ends; a leader paused or cut off from the database
/// in the middle of one (its socket still open on the server's side)
/// would otherwise hold its successor off until TCP gave up, hours later.
/// Its writes roll back instead, and the successor leads.
pub fn options(config: &StoreConfig) -> Option<Result<PgConnectOptions, sqlx::Error>> {
    let url = config.url.as_deref()?;
    let (ttl, _) = config.lease();
    let idle = format!("{}ms", ttl.as_millis());
    Some(url.parse::<PgConnectOptions>().map(|mut o| {
        o = o.options([("idle_in_transaction_session_timeout", idle.as_str())]);
        if let Some(p) = &config.password {
            o = o.password(p.expose());
        }
        if let Some(ca) = &config.ca_file {
            o = o.ssl_root_cert(ca);
        }
        match config
            .sslmode
            .or(config.ca_file.as_ref().map(|_| SslMode::VerifyFull))
        {
            Some(SslMode::Disable) => o.ssl_mode(PgSslMode::Disable),
            Some(SslMode::Prefer) => o.ssl_mode(PgSslMode::Prefer),
            Some(SslMode::Require) => o.ssl_mode(PgSslMode::Require),
            Some(SslMode::VerifyCa) => o.ssl_mode(PgSslMode::VerifyCa),
            Some(SslMode::VerifyFull) => o.ssl_mode(PgSslMode::VerifyFull),
            None => o,
        }
    }))
}

/// Connects with `options` and applies the Postgres migrations. Two
/// processes starting together are safe: sqlx takes an advisory lock
/// around them.
pub async fn connect(options: PgConnectOptions) -> Result<PgPool, sqlx::Error> {
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect_with(options)
        .await?;
    sqlx::migrate!("./migrations/postgres").run(&pool).await?;
    Ok(pool)
}
