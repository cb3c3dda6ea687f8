//! The Postgres side of the store, for an active/passive pair: its
//! connection and migrations (`migrations/postgres`), and the [`lease`]
//! that decides which of the two leads.

pub mod lease;

use std::time::Duration;

use sqlx::postgres::{PgPool, PgPoolOptions};

/// How long a statement waits for a pooled connection: with the database
/// down, a lease renewal fails within this (not sqlx's default 30 s), well
/// inside the lease's `ttl - margin`, so the leader's own clock decides.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);

/// Connects to `url` and applies the Postgres migrations. Two processes
/// starting together are safe: sqlx takes an advisory lock around them.
pub async fn connect(url: &str) -> Result<PgPool, sqlx::Error> {
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect(url)
        .await?;
    sqlx::migrate!("./migrations/postgres").run(&pool).await?;
    Ok(pool)
}
