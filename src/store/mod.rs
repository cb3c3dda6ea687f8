//! The SQLite store and its single writer.
//!
//! One task, the [`Writer`], owns the only write connection: it takes
//! whatever is queued (opportunistic batching), deduplicates by id, assigns
//! `seq`s, commits, and only then hands the sources their receipts (the
//! MQTT acks). Everything else (sinks, CLI) reads through the [`Store`]'s
//! small read pool; sinks send their cursor commits to the writer instead
//! of writing themselves, so there is never lock contention on the write
//! path.
//!
//! The files follow a message's way through: [`open`] (the file, its
//! migrations and lock), [`ingest`] (what sources send and the dedup and
//! insert rules), [`release`] (the sequence rule), [`control`] (what sinks
//! and the schema registry write through the writer), [`writer`] (the batch
//! loop that ties them into one transaction), [`maintenance`] (checkpoints
//! and retention), and [`read`] (the typed read API everyone else uses).
//! The store runs on SQLite (the default) or Postgres (`[store] url`):
//! [`backend`] compiles every query for both. [`postgres`] holds the
//! Postgres connection and the leader lease of an active/passive pair.
//!
//! The SQL is written once, in SQLite's dialect, to mean the same in
//! Postgres where that costs nothing: `TRUE`/`FALSE`, `IS DISTINCT FROM`,
//! `CASE` rather than the two-argument `MAX`, and an explicit `rowid`
//! column in Postgres's tables. What Postgres spells differently
//! `backend::postgres_sql` rewrites: anonymous `?` parameters (numbered ones
//! made SQLite's batch insert binding quadratic: see
//! `ingest::placeholders`), `INDEXED BY` hints, `CAST(… AS BLOB)`. What is
//! SQLite's alone (PRAGMAs, WAL checkpoints) runs only there.

pub(crate) mod backend;
mod control;
mod gaps;
mod ingest;
mod maintenance;
mod open;
pub mod postgres;
mod read;
mod release;
#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;
mod writer;

pub use control::{Head, SchemaOp, SinkOp, WriterHandle};
pub use gaps::{GapRow, GapTotal};
pub use ingest::{Ingest, Receipt};
pub use maintenance::{Retention, size_on_disk, wal_on_disk};
pub use open::StoreLock;
pub use read::{
    CachedSchema, DeadLetter, PendingEvent, ReasonCount, RejectedRow, StoreCounts, StreamCounts,
};
pub use release::StreamSettings;
pub use writer::{Writer, WriterChannels, WriterPlan};

use backend::{Db, Pool};
use sqlx::postgres::PgConnectOptions;
use sqlx::sqlite::SqliteConnectOptions;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store {path}: {source}")]
    Open { path: String, source: sqlx::Error },
    #[error("store migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("store: {0}")]
    Sql(#[from] sqlx::Error),
    #[error("the store writer has stopped")]
    WriterGone,
    #[error(transparent)]
    Lease(#[from] postgres::lease::LeaseError),
    #[error(
        "store.path: the directory {dir} does not exist (gapless run creates it; create it or fix store.path)"
    )]
    NoDir { dir: String },
    #[error("store.path: cannot create the directory {dir}: {source}")]
    CreateDir { dir: String, source: std::io::Error },
    #[error("store.path: cannot lock {path}: {source}")]
    Lock {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "another gapless{} holds the store {store}: run one daemon per store (status, tail and replay work alongside it)",
        pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
    )]
    Locked { store: String, pid: Option<u32> },
}

/// Read access to the store (a small pool; WAL lets it read while the writer writes).
#[derive(Clone, Debug)]
pub struct Store {
    pool: Pool,
    /// What the writer's own connection is opened with.
    options: Db<SqliteConnectOptions, PgConnectOptions>,
    /// One checkpoint at a time in this process. SQLite refuses a second
    /// concurrent checkpoint at once (`SQLITE_BUSY`, without calling the
    /// busy handler), so the writer's TRUNCATE would lose to the background
    /// PASSIVE one, again and again on a slow disk, while the WAL grows.
    checkpoints: std::sync::Arc<tokio::sync::Mutex<()>>,
}
