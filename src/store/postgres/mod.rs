//! The Postgres side of the store, for an active/passive pair: its
//! connection and migrations (`migrations/postgres`), and the [`lease`]
//! that decides which of the two leads.

pub mod lease;

use sqlx::postgres::{PgPool, PgPoolOptions};

/// Connects to `url` and applies the Postgres migrations. Two processes
/// starting together are safe: sqlx takes an advisory lock around them.
pub async fn connect(url: &str) -> Result<PgPool, sqlx::Error> {
    let pool = PgPoolOptions::new().max_connections(4).connect(url).await?;
    sqlx::migrate!("./migrations/postgres").run(&pool).await?;
    Ok(pool)
}
