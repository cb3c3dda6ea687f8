//! Keeping a months-long store small: the WAL copied back and bounded,
//! and delivered events pruned past the retention.

use std::path::Path;
use std::time::Duration;

use sqlx::sqlite::SqliteConnection;
use sqlx::{AssertSqlSafe, Row};

use super::backend::{Db, on};
use super::open::wal_path;
use super::writer::Writer;
use super::{Store, StoreError};
use crate::event::now_us;
use crate::metrics::Counters;

/// The WAL file is cut back to this size whenever it restarts, so a burst
/// does not leave a large file behind.
pub(super) const JOURNAL_SIZE_LIMIT: u64 = 16 << 20;

/// Above this size the writer cuts the WAL back itself with a TRUNCATE
/// checkpoint, which waits (briefly) for readers.
const WAL_TRUNCATE_AT: u64 = 24 << 20;

/// How often the checkpointer copies the WAL back into the database.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(200);

/// How often, at most, the writer looks at the WAL's size after a commit
/// (a `stat` per commit would be work on the write path for nothing).
const WAL_CHECK_EVERY: Duration = Duration::from_millis(100);

/// Events deleted per retention transaction: small enough that a commit
/// waiting behind it waits milliseconds, not seconds.
const PRUNE_BATCH: u64 = 5000;

/// Runs `PRAGMA wal_checkpoint(mode)` on `conn`; returns the WAL frames
/// still not copied back.
async fn checkpoint_on(conn: &mut SqliteConnection, mode: &str) -> Result<i64, StoreError> {
    let row = sqlx::query(AssertSqlSafe(format!("PRAGMA wal_checkpoint({mode})")))
        .fetch_one(&mut *conn)
        .await?;
    let (log, done): (i64, i64) = (row.get(1), row.get(2));
    Ok(log - done)
}

/// Bytes the store occupies on disk: the database and its write-ahead log.
/// The WAL's size alone: what the checkpointer bounds.
pub fn wal_on_disk(path: &Path) -> u64 {
    std::fs::metadata(wal_path(path)).map_or(0, |m| m.len())
}

pub fn size_on_disk(path: &Path) -> u64 {
    [path.to_path_buf(), wal_path(path)]
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum()
}

impl Store {
    /// Copies committed WAL pages into the database without blocking the
    /// writer or readers (a PASSIVE checkpoint). Returns the WAL frames
    /// still not checkpointed (readers may pin some). Postgres has no WAL
    /// of ours to keep: nothing to do there.
    pub async fn checkpoint(&self) -> Result<i64, StoreError> {
        let Db::Sqlite(pool) = &self.pool else {
            return Ok(0);
        };
        let mut conn = pool.acquire().await?;
        let _one = self.checkpoints.lock().await;
        checkpoint_on(&mut conn, "PASSIVE").await
    }

    /// Copies the WAL back into the database every 200 ms with a PASSIVE
    /// checkpoint, off the commit path, until `stop`, then once more. What
    /// this cannot keep up with (a writer draining a backlog, readers that
    /// keep the WAL from restarting) the writer bounds itself
    /// ([`WAL_TRUNCATE_AT`]).
    pub async fn run_checkpointer(
        self,
        stop: tokio_util::sync::CancellationToken,
    ) -> Result<(), StoreError> {
        if !self.pool.is_sqlite() {
            // Nothing to do, but a task that ends early looks like a crash.
            stop.cancelled().await;
            return Ok(());
        }
        loop {
            tokio::select! {
                _ = tokio::time::sleep(CHECKPOINT_EVERY) => {}
                _ = stop.cancelled() => break,
            }
            self.checkpoint().await?;
        }
        self.checkpoint().await.map(drop)
    }
}

/// What the writer may prune, and when (see [`Writer::prune`]).
pub struct Retention {
    pub keep_us: i64,
    /// The sinks whose cursors must all have passed an event.
    pub sinks: Vec<String>,
    /// With a poller: never prune within this much before its watermark,
    /// so the poll overlap still finds the ids and deduplicates.
    pub poll_guard_us: Option<i64>,
}

impl Retention {
    /// How often to prune: a tenth of the retention, 1 s to 10 min (of
    /// the clock's time; at least 1 s of real time).
    pub(super) fn every(&self) -> Duration {
        let clock = Duration::from_micros((self.keep_us / 10).clamp(1_000_000, 600_000_000) as u64);
        crate::clock::real(clock).max(Duration::from_secs(1))
    }
}

impl Writer {
    /// Deletes one batch (at most [`PRUNE_BATCH`], its own short
    /// transaction) of delivered events older than the retention: every
    /// configured sink's cursor has passed them, they are not dead letters,
    /// not the head row (it keeps `seq` going), and not inside the poll
    /// overlap. Returns whether more may be left. Freed pages go to
    /// SQLite's freelist and are reused by new events.
    pub(super) async fn prune(&mut self) -> Result<bool, StoreError> {
        let r = &self.retention;
        if r.sinks.is_empty() {
            return Ok(false);
        }
        let now = now_us();
        let mut cutoff = now - r.keep_us;
        if let Some(guard) = r.poll_guard_us {
            cutoff = cutoff.min(self.rel.verified.unwrap_or(i64::MIN).saturating_sub(guard));
        }
        let cursors: Vec<i64> = {
            let mut v = Vec::new();
            for sink in &r.sinks {
                v.push(
                    on!(&mut self.conn, |c, sql| sqlx::query_scalar(sql(
                        "SELECT seq FROM cursors WHERE sink = ?"
                    ))
                    .bind(sink.as_str())
                    .fetch_optional(&mut *c)
                    .await)?
                    .unwrap_or(0),
                );
            }
            v
        };
        let passed = cursors
            .into_iter()
            .min()
            .unwrap_or(0)
            .min(self.rel.sequencer.head() - 1);
        if passed <= 0 {
            return Ok(false);
        }
        let mut tx = super::writer::begin(&mut self.conn, self.fence).await?;
        let done = on!(&mut tx, |t, sql| sqlx::query(sql(
            "DELETE FROM events WHERE rowid IN (SELECT rowid FROM events WHERE seq IS NOT NULL \
             AND seq <= ? AND occurred_at_us < ? \
             AND seq NOT IN (SELECT seq FROM dead_letters) LIMIT ?)"
        ))
        .bind(passed)
        .bind(cutoff)
        .bind(PRUNE_BATCH as i64)
        .execute(&mut **t)
        .await
        .map(|r| r.rows_affected()))?;
        tx.commit().await?;
        if done > 0 {
            Counters::add(&self.counters.pruned, done);
            tracing::debug!(events = done, "pruned events past the retention");
        }
        Ok(done == PRUNE_BATCH)
    }

    /// After a commit: if the WAL has passed [`WAL_TRUNCATE_AT`] (a backlog
    /// written faster than the background checkpoint copies it, or readers
    /// that kept it from restarting), copy it all back and truncate it now.
    /// Only the writer can: from another connection the checkpoint waits
    /// for a write lock the busy writer hardly ever lets go.
    pub(super) async fn bound_wal(&mut self) -> Result<(), StoreError> {
        let Db::Sqlite(conn) = &mut self.conn else {
            return Ok(());
        };
        let (wal, checked) = &mut self.wal;
        if checked.elapsed() < WAL_CHECK_EVERY {
            return Ok(());
        }
        *checked = std::time::Instant::now();
        let size = std::fs::metadata(wal).map(|m| m.len()).unwrap_or(0);
        if size <= WAL_TRUNCATE_AT {
            return Ok(());
        }
        let started = std::time::Instant::now();
        let _one = self.checkpoints.lock().await;
        let left = checkpoint_on(conn, "TRUNCATE").await?;
        tracing::debug!(wal_bytes = size, left, took = ?started.elapsed(), "WAL truncated by the writer");
        Ok(())
    }
}
