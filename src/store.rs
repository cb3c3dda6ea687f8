//! The SQLite store and its single writer.
//!
//! One task, the [`Writer`], owns the only write connection: it takes
//! whatever is queued (opportunistic batching), deduplicates by id, assigns
//! `seq`s, commits, and only then lets the MQTT acks go. Everything else
//! (sinks, CLI) reads through the [`Store`]'s small read pool; sinks send
//! their cursor commits to the writer instead of writing themselves, so
//! there is never lock contention on the write path.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::{AssertSqlSafe, ConnectOptions, Connection, Row};
use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot, watch};

use crate::config::{StoreConfig, Synchronous};
use crate::event::{Event, Origin, StoredEvent, now_us};
use crate::metrics::Counters;
use crate::source::mqtt::Ack;
use crate::source::{Parsed, Rejected};
use crate::stream::{Candidate, Live, Order, Rule, Sequencer};

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
    pool: SqlitePool,
    options: SqliteConnectOptions,
}

/// The WAL file is cut back to this size whenever it restarts, so a burst
/// does not leave a large file behind.
const JOURNAL_SIZE_LIMIT: u64 = 16 << 20;
/// Above this size the writer cuts the WAL back itself with a TRUNCATE
/// checkpoint, which waits (briefly) for readers.
const WAL_TRUNCATE_AT: u64 = 24 << 20;
/// Prepared statements the writer keeps (see [`Store::write_connection`]).
const WRITER_STATEMENTS: usize = 32;
/// How often the checkpointer copies the WAL back into the database.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(200);
/// How often, at most, the writer looks at the WAL's size after a commit
/// (a `stat` per commit would be work on the write path for nothing).
const WAL_CHECK_EVERY: Duration = Duration::from_millis(100);

/// The WAL file next to the database at `path`.
fn wal_path(path: &Path) -> PathBuf {
    PathBuf::from(format!("{}-wal", path.display()))
}

fn connect_options(path: &Path, sync: Synchronous) -> SqliteConnectOptions {
    SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(match sync {
            Synchronous::Full => SqliteSynchronous::Full,
            Synchronous::Normal => SqliteSynchronous::Normal,
        })
        .busy_timeout(Duration::from_secs(10))
        .statement_cache_capacity(256)
        .pragma("temp_store", "memory")
        .pragma("journal_size_limit", JOURNAL_SIZE_LIMIT.to_string())
        // A checkpoint may take seconds by design; that is not worth a WARN.
        .log_slow_statements(log::LevelFilter::Debug, Duration::from_secs(1))
}

/// The daemon's claim on a store: an exclusive lock on `<store>.lock`
/// (holding the daemon's pid), released when the process ends, however it
/// ends. Operator commands do not take it.
#[derive(Debug)]
pub struct StoreLock {
    _file: std::fs::File,
}

impl StoreLock {
    fn take(store: &Path) -> Result<Self, StoreError> {
        use std::io::{Read, Seek, Write};
        let path = PathBuf::from(format!("{}.lock", store.display()));
        let failed = |source| StoreError::Lock {
            path: path.display().to_string(),
            source,
        };
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(failed)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                return Err(StoreError::Locked {
                    store: store.display().to_string(),
                    pid: text.trim().parse().ok(),
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(failed(e)),
        }
        file.set_len(0).map_err(failed)?;
        file.rewind().map_err(failed)?;
        writeln!(file, "{}", std::process::id()).map_err(failed)?;
        Ok(StoreLock { _file: file })
    }
}

/// The store's directory: it must exist for every command but `run`, which
/// creates it (mode 0750: events may be confidential).
fn store_dir(path: &Path, create: bool) -> Result<(), StoreError> {
    let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) else {
        return Ok(());
    };
    if dir.is_dir() {
        return Ok(());
    }
    if !create {
        return Err(StoreError::NoDir {
            dir: dir.display().to_string(),
        });
    }
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o750)
        .create(dir)
        .map_err(|source| StoreError::CreateDir {
            dir: dir.display().to_string(),
            source,
        })?;
    tracing::info!(dir = %dir.display(), "created the store directory");
    Ok(())
}

/// Runs `PRAGMA wal_checkpoint(mode)` on `conn`; returns the WAL frames
/// still not copied back.
async fn checkpoint_on(conn: &mut SqliteConnection, mode: &str) -> Result<i64, StoreError> {
    let row = sqlx::query(AssertSqlSafe(format!("PRAGMA wal_checkpoint({mode})")))
        .fetch_one(&mut *conn)
        .await?;
    let (log, done): (i64, i64) = (row.get(1), row.get(2));
    Ok(log - done)
}

/// The columns a [`StoredEvent`] is read from.
macro_rules! stored_columns {
    () => {
        "seq, id, origin, occurred_at_us, type, subject, payload, late, ce_source, dataschema, validation"
    };
}

/// Bytes the store occupies on disk: the database and its write-ahead log.
pub fn size_on_disk(path: &Path) -> u64 {
    [path.to_path_buf(), wal_path(path)]
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum()
}

impl Store {
    /// Opens the store for the daemon: creates its directory, takes the
    /// exclusive lock, then opens it. Hold the lock as long as the store.
    pub async fn open_exclusive(config: &StoreConfig) -> Result<(Self, StoreLock), StoreError> {
        store_dir(&config.path, true)?;
        let lock = StoreLock::take(&config.path)?;
        Ok((Self::open(config).await?, lock))
    }

    /// Opens (creating the file if needed) the store and applies pending
    /// migrations. Its directory must exist.
    pub async fn open(config: &StoreConfig) -> Result<Self, StoreError> {
        store_dir(&config.path, false)?;
        let options = connect_options(&config.path, config.synchronous);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options.clone())
            .await
            .map_err(|source| StoreError::Open {
                path: config.path.display().to_string(),
                source,
            })?;
        sqlx::migrate!("./migrations").run(&pool).await?;
        Ok(Store { pool, options })
    }

    /// The highest released `seq` (0 when nothing is released yet).
    pub async fn head(&self) -> Result<i64, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM events")
                .fetch_one(&self.pool)
                .await?,
        )
    }

    /// Events held back for their schema after `after` (received µs, id),
    /// oldest first: (id, CloudEvent source, payload, received µs). Paging
    /// by both keys never skips events received in the same microsecond.
    pub async fn pending_events(
        &self,
        after: (i64, &str),
        limit: u32,
    ) -> Result<Vec<(String, String, String, i64)>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT id, COALESCE(ce_source, ''), payload, received_at_us FROM events \
             WHERE validation = 'pending' AND (received_at_us, id) > (?, ?) \
             ORDER BY received_at_us, id LIMIT ?",
        )
        .bind(after.0)
        .bind(after.1)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    /// How many events wait for their schema.
    pub async fn pending_count(&self) -> Result<i64, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT COUNT(*) FROM events WHERE validation = 'pending'")
                .fetch_one(&self.pool)
                .await?,
        )
    }

    /// A cached schema: (etag, body).
    pub async fn schema(&self, url: &str) -> Result<Option<(Option<String>, String)>, StoreError> {
        Ok(
            sqlx::query_as("SELECT etag, body FROM schemas WHERE url = ?")
                .bind(url)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    /// A sink's cursor: the last `seq` its target accepted (0 = none).
    pub async fn cursor(&self, sink: &str) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar("SELECT seq FROM cursors WHERE sink = ?")
            .bind(sink)
            .fetch_optional(&self.pool)
            .await?
            .unwrap_or(0))
    }

    /// Released events after `seq`, in stream order.
    pub async fn released_after(
        &self,
        seq: i64,
        limit: u32,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        Ok(sqlx::query_as(concat!(
            "SELECT ",
            stored_columns!(),
            " FROM events WHERE seq > ? ORDER BY seq LIMIT ?"
        ))
        .bind(seq)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    /// How far `source`'s history is verified (µs since the epoch), if ever.
    pub async fn verified_until(&self, source: &str) -> Result<Option<i64>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT verified_until_us FROM watermarks WHERE source = ?")
                .bind(source)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    /// Why a sink is disabled, if it is.
    pub async fn sink_disabled(&self, sink: &str) -> Result<Option<String>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT disabled_reason FROM sink_state WHERE sink = ?")
                .bind(sink)
                .fetch_optional(&self.pool)
                .await?
                .flatten(),
        )
    }

    /// A pending replay request for a sink: deliver again from this `seq`.
    pub async fn replay_request(&self, sink: &str) -> Result<Option<i64>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT replay_from_seq FROM sink_requests WHERE sink = ?")
                .bind(sink)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    /// A sink's dead letters (only those marked for retry, if asked), oldest first.
    pub async fn dead_letters(
        &self,
        sink: &str,
        only_retry: bool,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT seq, event_id, attempts, last_status, last_error, at_us, retry FROM dead_letters \
             WHERE sink = ? AND (retry = 1 OR ? = 0) ORDER BY seq",
        )
        .bind(sink)
        .bind(only_retry)
        .fetch_all(&self.pool)
        .await?)
    }

    /// The released event at `seq`.
    pub async fn event_at(&self, seq: i64) -> Result<Option<StoredEvent>, StoreError> {
        Ok(sqlx::query_as(concat!(
            "SELECT ",
            stored_columns!(),
            " FROM events WHERE seq = ?"
        ))
        .bind(seq)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Operator request (CLI): deliver again from `seq`. The sink applies it
    /// (now if the daemon runs, else at its next start) and is re-enabled.
    pub async fn request_replay(&self, sink: &str, from_seq: i64) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO sink_requests (sink, replay_from_seq, at_us) VALUES (?, ?, ?) \
             ON CONFLICT(sink) DO UPDATE SET replay_from_seq = excluded.replay_from_seq, at_us = excluded.at_us",
        )
        .bind(sink)
        .bind(from_seq)
        .bind(now_us())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Operator request (CLI): mark a sink's dead letters for another delivery.
    pub async fn dlq_retry(&self, sink: &str) -> Result<u64, StoreError> {
        Ok(
            sqlx::query("UPDATE dead_letters SET retry = 1 WHERE sink = ?")
                .bind(sink)
                .execute(&self.pool)
                .await?
                .rows_affected(),
        )
    }

    /// Operator request (CLI): forget a sink's dead letters recorded before
    /// `before_us`. Nothing else removes them: retention keeps their events.
    pub async fn dlq_purge(&self, sink: &str, before_us: i64) -> Result<u64, StoreError> {
        Ok(
            sqlx::query("DELETE FROM dead_letters WHERE sink = ? AND at_us < ?")
                .bind(sink)
                .bind(before_us)
                .execute(&self.pool)
                .await?
                .rows_affected(),
        )
    }

    /// (events, unreleased, late, rejected) counts.
    pub async fn stream_counts(&self) -> Result<(i64, i64, i64, i64), StoreError> {
        let row = sqlx::query(
            "SELECT (SELECT COUNT(*) FROM events), (SELECT COUNT(*) FROM events WHERE seq IS NULL), \
             (SELECT COUNT(*) FROM events WHERE late = 1), (SELECT COUNT(*) FROM rejected)",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok((row.get(0), row.get(1), row.get(2), row.get(3)))
    }

    /// The most recent rejected messages, newest first.
    pub async fn last_rejected(&self, n: u32) -> Result<Vec<RejectedRow>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT at_us, topic, reason, detail, size FROM rejected ORDER BY id DESC LIMIT ?",
        )
        .bind(n)
        .fetch_all(&self.pool)
        .await?)
    }

    /// How many events and rejected messages the store holds.
    pub async fn counts(&self) -> Result<(i64, i64), StoreError> {
        let row =
            sqlx::query("SELECT (SELECT COUNT(*) FROM events), (SELECT COUNT(*) FROM rejected)")
                .fetch_one(&self.pool)
                .await?;
        Ok((row.get(0), row.get(1)))
    }

    /// Rejected messages per reason, most frequent first.
    pub async fn rejected_by_reason(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT reason, COUNT(*) AS n FROM rejected GROUP BY reason ORDER BY n DESC, reason",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Opens the dedicated write connection for a [`Writer`]. It does not
    /// checkpoint after every commit (SQLite's auto-checkpoint):
    /// [`Store::run_checkpointer`] copies the WAL back from another
    /// connection, and the writer steps in only past [`WAL_TRUNCATE_AT`].
    async fn write_connection(&self) -> Result<SqliteConnection, StoreError> {
        let options = self
            .options
            .clone()
            .pragma("wal_autocheckpoint", "0")
            .pragma("cache_size", "-8192")
            // Its SQL differs by chunk size (1..64 rows, 1..256 ids), so a
            // large statement cache slowly fills with rarely used shapes.
            .statement_cache_capacity(WRITER_STATEMENTS);
        Ok(SqliteConnection::connect_with(&options).await?)
    }

    /// Copies committed WAL pages into the database without blocking the
    /// writer or readers (a PASSIVE checkpoint). Returns the WAL frames
    /// still not checkpointed (readers may pin some).
    pub async fn checkpoint(&self) -> Result<i64, StoreError> {
        let mut conn = self.pool.acquire().await?;
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
        loop {
            tokio::select! {
                _ = tokio::time::sleep(CHECKPOINT_EVERY) => {}
                _ = stop.cancelled() => break,
            }
            self.checkpoint().await?;
        }
        self.checkpoint().await.map(drop)
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// A rejected message as `gapless status` shows it.
#[derive(Debug, serde::Serialize, sqlx::FromRow)]
pub struct RejectedRow {
    pub at_us: i64,
    pub topic: String,
    pub reason: String,
    pub detail: String,
    pub size: i64,
}

/// A dead letter, as `gapless dlq list` shows it.
#[derive(Clone, Debug, sqlx::FromRow, serde::Serialize)]
pub struct DeadLetter {
    pub seq: i64,
    pub event_id: String,
    pub attempts: i64,
    pub last_status: Option<i64>,
    pub last_error: String,
    pub at_us: i64,
    pub retry: bool,
}

/// What sources send the writer, in order.
#[derive(Debug)]
pub enum Ingest {
    /// One message: what it parsed to, the MQTT ack to send once it is
    /// durable, and the share of the byte budget it holds until then.
    Message {
        item: Parsed,
        ack: Option<Ack>,
        permit: Option<OwnedSemaphorePermit>,
    },
    /// The poller verified the source's history up to `until_us`. Sent
    /// after the window's events on the same channel, so it commits with or
    /// after them, never before; `done` fires after that commit.
    Verified {
        until_us: i64,
        done: oneshot::Sender<()>,
    },
}

/// Requests from other tasks that must go through the single write connection.
#[derive(Debug)]
enum Control {
    Sink {
        sink: String,
        ops: Vec<SinkOp>,
        done: oneshot::Sender<()>,
    },
    Schema {
        ops: Vec<SchemaOp>,
        done: oneshot::Sender<()>,
    },
}

/// A schema registry's writes (see [`crate::source::schema`]).
#[derive(Debug)]
pub enum SchemaOp {
    /// The held-back (`pending`) event `id` may be released: it validated,
    /// or goes out unvalidated.
    Release {
        id: String,
        validation: crate::event::Validation,
        dataschema: Option<String>,
    },
    /// The held-back event `id` is invalid: it moves to `rejected`.
    Reject {
        id: String,
        reason: crate::source::RejectReason,
        detail: String,
    },
    /// A fetched schema, kept so a restart validates without the service.
    Put {
        url: String,
        etag: Option<String>,
        body: String,
    },
}

/// A sink's writes, committed through the writer in the order given.
#[derive(Clone, Debug, PartialEq)]
pub enum SinkOp {
    /// Everything up to `seq` is delivered.
    Cursor(i64),
    /// The target refused event `seq` for good; record it.
    DeadLetter {
        seq: i64,
        event_id: String,
        attempts: u32,
        status: Option<u16>,
        error: String,
    },
    /// A dead letter was delivered after all: forget it.
    DeadLetterDelivered(i64),
    /// A dead-letter retry failed again.
    DeadLetterFailed { seq: i64, error: String },
    /// The target is gone (410): stop delivering until a replay.
    Disable(String),
    /// A replay request was applied: clear it and any disabled state.
    ReplayApplied,
}

/// The released head, published after every commit so sinks wake up.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Head {
    pub seq: i64,
    /// No more events will come (ingest closed and drained).
    pub closed: bool,
}

/// A cheap, cloneable handle to send cursor commits to the writer.
#[derive(Clone, Debug)]
pub struct WriterHandle {
    ctrl: mpsc::Sender<Control>,
}

impl WriterHandle {
    /// Durably records that `sink` has delivered everything up to `seq`.
    pub async fn commit_cursor(&self, sink: &str, seq: i64) -> Result<(), StoreError> {
        self.sink_ops(sink, vec![SinkOp::Cursor(seq)]).await
    }

    /// Durably applies a sink's writes, in one transaction.
    pub async fn sink_ops(&self, sink: &str, ops: Vec<SinkOp>) -> Result<(), StoreError> {
        self.sink_ops_queued(sink, ops)
            .await?
            .await
            .map_err(|_| StoreError::WriterGone)
    }

    /// Durably applies a schema registry's writes, in one transaction.
    pub async fn schema_ops(&self, ops: Vec<SchemaOp>) -> Result<(), StoreError> {
        let (done, wait) = oneshot::channel();
        self.ctrl
            .send(Control::Schema { ops, done })
            .await
            .map_err(|_| StoreError::WriterGone)?;
        wait.await.map_err(|_| StoreError::WriterGone)
    }

    /// Queues a sink's writes without waiting for their commit; the returned
    /// receiver fires once they are durable. Writes of one sink commit in
    /// the order queued, and the writer folds many into one transaction,
    /// which is what lets a webhook sink deliver faster than one commit per
    /// event.
    pub async fn sink_ops_queued(
        &self,
        sink: &str,
        ops: Vec<SinkOp>,
    ) -> Result<oneshot::Receiver<()>, StoreError> {
        let (done, wait) = oneshot::channel();
        self.ctrl
            .send(Control::Sink {
                sink: sink.to_string(),
                ops,
                done,
            })
            .await
            .map_err(|_| StoreError::WriterGone)?;
        Ok(wait)
    }
}

/// The endpoints the rest of the pipeline talks to the writer through.
pub struct WriterChannels {
    pub ingest: mpsc::Sender<Ingest>,
    pub handle: WriterHandle,
    pub head: watch::Receiver<Head>,
}

/// How the writer releases events (see [`crate::stream`]).
pub struct StreamSettings {
    pub order: Order,
    pub rule: Rule,
    /// The MQTT subscription's state, for the `live` watermark.
    pub live: watch::Receiver<Live>,
}

impl StreamSettings {
    /// Release every event at once, in commit order.
    pub fn arrival() -> Self {
        StreamSettings {
            order: Order::Arrival,
            rule: Rule {
                release: crate::stream::ReleaseMode::Live,
                settle_us: 0,
                max_hold_us: 0,
                has_poller: false,
            },
            live: watch::channel(Live::default()).1,
        }
    }
}

/// How often the writer re-evaluates the event-time watermark when idle: a
/// tenth of `settle`, between 5 ms and 50 ms, so release latency stays
/// close to `settle`.
fn release_tick(settle_us: i64) -> Duration {
    Duration::from_micros((settle_us / 10).clamp(5_000, 50_000) as u64)
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
    fn every(&self) -> Duration {
        let clock = Duration::from_micros((self.keep_us / 10).clamp(1_000_000, 600_000_000) as u64);
        crate::clock::real(clock).max(Duration::from_secs(1))
    }
}

/// Who the writer works for: the source it stores for, how deep its queue
/// is, whose acks it releases, how it sequences and what it prunes.
pub struct WriterPlan {
    pub source: String,
    pub queue: usize,
    pub counters: Arc<Counters>,
    pub acks: Option<mpsc::UnboundedSender<Vec<Ack>>>,
    pub stream: StreamSettings,
    pub retention: Retention,
}

/// The single writer task's state.
pub struct Writer {
    retention: Retention,
    conn: SqliteConnection,
    sequencer: Sequencer,
    stream: StreamSettings,
    /// The poller's verified watermark for this source (µs).
    verified: Option<i64>,
    source: String,
    batch_max: usize,
    batch_delay: Duration,
    rejected_max: i64,
    counters: Arc<Counters>,
    head: watch::Sender<Head>,
    acks: Option<mpsc::UnboundedSender<Vec<Ack>>>,
    ingest_rx: mpsc::Receiver<Ingest>,
    ctrl_rx: mpsc::Receiver<Control>,
    /// Forced releases already logged, and when.
    forced_logged: (u64, std::time::Instant),
    /// The WAL file, whose size the writer bounds, and when it last looked.
    wal: (PathBuf, std::time::Instant),
}

/// How often forced releases are summed up in the log.
const FORCED_LOG_EVERY: Duration = Duration::from_secs(10);

/// What one loop turn collected.
#[derive(Default)]
struct Batch {
    events: Vec<Event>,
    rejected: Vec<Rejected>,
    skipped: u64,
    acks: Vec<Ack>,
    sink_ops: Vec<(String, SinkOp)>,
    schema_ops: Vec<SchemaOp>,
    /// Fired after the commit of the sink and schema ops.
    sink_done: Vec<oneshot::Sender<()>>,
    verified: Option<i64>,
    verified_done: Vec<oneshot::Sender<()>>,
    permits: Vec<OwnedSemaphorePermit>,
    messages: usize,
}

impl Batch {
    fn push_ingest(&mut self, i: Ingest) {
        self.messages += 1;
        match i {
            Ingest::Message { item, ack, permit } => {
                match item {
                    Parsed::Event(e) => self.events.push(e),
                    Parsed::Rejected(r) => self.rejected.push(r),
                    Parsed::Skipped(_) => self.skipped += 1,
                }
                self.acks.extend(ack);
                self.permits.extend(permit);
            }
            Ingest::Verified { until_us, done } => {
                self.verified = Some(self.verified.map_or(until_us, |v| v.max(until_us)));
                self.verified_done.push(done);
            }
        }
    }

    fn push_control(&mut self, c: Control) {
        match c {
            Control::Sink { sink, ops, done } => {
                self.sink_ops
                    .extend(ops.into_iter().map(|op| (sink.clone(), op)));
                self.sink_done.push(done);
            }
            Control::Schema { ops, done } => {
                self.schema_ops.extend(ops);
                self.sink_done.push(done);
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.messages == 0 && self.sink_done.is_empty()
    }
}

async fn write_sink_op(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    sink: &str,
    op: &SinkOp,
    now: i64,
) -> Result<(), StoreError> {
    let q = match op {
        SinkOp::Cursor(seq) => sqlx::query(
            "INSERT INTO cursors (sink, seq, updated_at_us) VALUES (?1, ?2, ?3) \
             ON CONFLICT(sink) DO UPDATE SET seq = excluded.seq, updated_at_us = excluded.updated_at_us",
        )
        .bind(sink)
        .bind(*seq)
        .bind(now),
        SinkOp::DeadLetter { seq, event_id, attempts, status, error } => sqlx::query(
            "INSERT INTO dead_letters (sink, seq, event_id, attempts, last_status, last_error, at_us) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT(sink, seq) DO UPDATE SET \
             attempts = excluded.attempts, last_status = excluded.last_status, \
             last_error = excluded.last_error, at_us = excluded.at_us, retry = 0",
        )
        .bind(sink)
        .bind(*seq)
        .bind(event_id.as_str())
        .bind(*attempts)
        .bind(status.map(i64::from))
        .bind(error.as_str())
        .bind(now),
        SinkOp::DeadLetterDelivered(seq) => sqlx::query("DELETE FROM dead_letters WHERE sink = ?1 AND seq = ?2")
            .bind(sink)
            .bind(*seq),
        SinkOp::DeadLetterFailed { seq, error } => sqlx::query(
            "UPDATE dead_letters SET attempts = attempts + 1, last_error = ?3, at_us = ?4, retry = 0 \
             WHERE sink = ?1 AND seq = ?2",
        )
        .bind(sink)
        .bind(*seq)
        .bind(error.as_str())
        .bind(now),
        SinkOp::Disable(reason) => sqlx::query(
            "INSERT INTO sink_state (sink, disabled_reason, at_us) VALUES (?1, ?2, ?3) \
             ON CONFLICT(sink) DO UPDATE SET disabled_reason = excluded.disabled_reason, at_us = excluded.at_us",
        )
        .bind(sink)
        .bind(reason.as_str())
        .bind(now),
        SinkOp::ReplayApplied => {
            sqlx::query("DELETE FROM sink_state WHERE sink = ?1")
                .bind(sink)
                .execute(&mut **tx)
                .await?;
            sqlx::query("DELETE FROM sink_requests WHERE sink = ?1").bind(sink)
        }
    };
    q.execute(&mut **tx).await?;
    Ok(())
}

/// Rows per multi-row INSERT (11 columns each, well under SQLite's bind limit).
const INSERT_CHUNK: usize = 64;
/// How the writer opens its transactions: with the write lock taken at
/// once. A deferred one reads first and then asks for the lock; if a
/// checkpoint restarted the WAL in between, SQLite refuses the upgrade at
/// once (`database is locked`, busy timeout or not). Seen in the soak test.
const WRITE_TX: &str = "BEGIN IMMEDIATE";
/// Events deleted per retention transaction: small enough that a commit
/// waiting behind it waits milliseconds, not seconds.
const PRUNE_BATCH: u64 = 5000;
/// Ids per `IN (...)` lookup.
const LOOKUP_CHUNK: usize = 256;

/// A ScaleIT event waiting for its schema: stored, not released yet.
fn pending(e: &Event) -> bool {
    e.ext
        .as_ref()
        .is_some_and(|x| x.validation == crate::event::Validation::Pending)
}

fn placeholders(rows: usize, cols: usize) -> String {
    let row = format!("({})", vec!["?"; cols].join(","));
    vec![row; rows].join(",")
}

impl Writer {
    /// Creates the writer for `store` and the channels that feed it.
    pub async fn new(
        store: &Store,
        config: &StoreConfig,
        plan: WriterPlan,
    ) -> Result<(Writer, WriterChannels), StoreError> {
        let WriterPlan {
            source,
            queue,
            counters,
            acks,
            stream,
            retention,
        } = plan;
        let source = source.as_str();
        let conn = store.write_connection().await?;
        let head_seq = store.head().await?;
        let high: Option<i64> =
            sqlx::query_scalar("SELECT value FROM stream_state WHERE key = 'high_us'")
                .fetch_optional(&store.pool)
                .await?;
        let verified = store.verified_until(source).await?;
        let (ingest_tx, ingest_rx) = mpsc::channel(queue);
        let (ctrl_tx, ctrl_rx) = mpsc::channel(64);
        let (head_tx, head_rx) = watch::channel(Head {
            seq: head_seq,
            closed: false,
        });
        let writer = Writer {
            conn,
            retention,
            sequencer: Sequencer::resume(head_seq, high),
            stream,
            verified,
            source: source.to_string(),
            batch_max: config.batch_max,
            batch_delay: config.batch_delay.0,
            rejected_max: i64::from(config.rejected_max),
            counters,
            head: head_tx,
            acks,
            ingest_rx,
            ctrl_rx,
            forced_logged: (0, std::time::Instant::now()),
            wal: (wal_path(&config.path), std::time::Instant::now()),
        };
        let channels = WriterChannels {
            ingest: ingest_tx,
            handle: WriterHandle { ctrl: ctrl_tx },
            head: head_rx,
        };
        Ok((writer, channels))
    }

    /// Runs until ingest is closed and drained and every [`WriterHandle`] is
    /// dropped. A failed commit is fatal: nothing of that batch was acked,
    /// so the broker (persistent session) or the poller delivers it again.
    pub async fn run(mut self) -> Result<(), StoreError> {
        let mut ingest_open = true;
        let mut ctrl_open = true;
        let mut tick = tokio::time::interval(release_tick(self.stream.rule.settle_us));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let ticking = self.stream.order == Order::EventTime;
        let mut prune = tokio::time::interval(self.retention.every());
        prune.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // A backlog of old events is pruned one bounded batch per loop
        // turn, taking turns with commits, so neither waits long.
        let mut prune_more = false;
        let mut prune_turn = true;
        while ingest_open || ctrl_open {
            let mut batch = Batch::default();
            tokio::select! {
                biased;
                _ = std::future::ready(()), if prune_more && prune_turn => {
                    prune_more = self.prune().await?;
                    prune_turn = false;
                    continue;
                }
                _ = prune.tick() => {
                    prune_more = self.prune().await?;
                    continue;
                }
                _ = tick.tick(), if ticking => {
                    self.release_idle().await?;
                    continue;
                }
                c = self.ctrl_rx.recv(), if ctrl_open => match c {
                    Some(c) => batch.push_control(c),
                    None => ctrl_open = false,
                },
                i = self.ingest_rx.recv(), if ingest_open => match i {
                    Some(i) => batch.push_ingest(i),
                    None => {
                        ingest_open = false;
                        self.head.send_modify(|h| h.closed = true);
                    }
                },
            }
            if batch.is_empty() {
                continue;
            }
            self.fill(&mut batch, ingest_open).await;
            self.commit(batch).await?;
            prune_turn = true;
        }
        self.log_forced(true);
        Ok(())
    }

    /// Adds whatever else is queued, up to `batch_max` messages; waits up to
    /// `batch_delay` for more only when configured to (default: never wait,
    /// because the broker's in-flight window stalls while acks are held).
    async fn fill(&mut self, batch: &mut Batch, ingest_open: bool) {
        let deadline = tokio::time::Instant::now() + self.batch_delay;
        while batch.messages < self.batch_max {
            while let Ok(c) = self.ctrl_rx.try_recv() {
                batch.push_control(c);
            }
            match self.ingest_rx.try_recv() {
                Ok(i) => batch.push_ingest(i),
                Err(_) if self.batch_delay.is_zero() || !ingest_open => break,
                Err(_) => match tokio::time::timeout_at(deadline, self.ingest_rx.recv()).await {
                    Ok(Some(i)) => batch.push_ingest(i),
                    _ => break,
                },
            }
        }
    }

    /// Deletes one batch (at most [`PRUNE_BATCH`], its own short
    /// transaction) of delivered events older than the retention: every
    /// configured sink's cursor has passed them, they are not dead letters,
    /// not the head row (it keeps `seq` going), and not inside the poll
    /// overlap. Returns whether more may be left. Freed pages go to
    /// SQLite's freelist and are reused by new events.
    async fn prune(&mut self) -> Result<bool, StoreError> {
        let r = &self.retention;
        if r.sinks.is_empty() {
            return Ok(false);
        }
        let now = now_us();
        let mut cutoff = now - r.keep_us;
        if let Some(guard) = r.poll_guard_us {
            cutoff = cutoff.min(self.verified.unwrap_or(i64::MIN).saturating_sub(guard));
        }
        let cursors: Vec<i64> = {
            let mut v = Vec::new();
            for sink in &r.sinks {
                v.push(
                    sqlx::query_scalar("SELECT seq FROM cursors WHERE sink = ?")
                        .bind(sink.as_str())
                        .fetch_optional(&mut self.conn)
                        .await?
                        .unwrap_or(0),
                );
            }
            v
        };
        let passed = cursors
            .into_iter()
            .min()
            .unwrap_or(0)
            .min(self.sequencer.head() - 1);
        if passed <= 0 {
            return Ok(false);
        }
        let mut tx = self.conn.begin_with(WRITE_TX).await?;
        let done = sqlx::query(
            "DELETE FROM events WHERE rowid IN (SELECT rowid FROM events WHERE seq IS NOT NULL \
             AND seq <= ? AND occurred_at_us < ? \
             AND seq NOT IN (SELECT seq FROM dead_letters) LIMIT ?)",
        )
        .bind(passed)
        .bind(cutoff)
        .bind(PRUNE_BATCH as i64)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        if done.rows_affected() > 0 {
            Counters::add(&self.counters.pruned, done.rows_affected());
            tracing::debug!(
                events = done.rows_affected(),
                "pruned events past the retention"
            );
        }
        Ok(done.rows_affected() == PRUNE_BATCH)
    }

    /// Releases what the watermark now allows when no batch is coming.
    async fn release_idle(&mut self) -> Result<(), StoreError> {
        let (head, high) = (self.sequencer.head(), self.sequencer.high());
        let mut tx = self.conn.begin_with(WRITE_TX).await?;
        let released = match Self::release(
            &mut tx,
            &mut self.sequencer,
            &self.stream,
            self.verified,
            &self.counters,
        )
        .await
        {
            Ok(n) => n,
            Err(e) => {
                self.sequencer.rewind_to(head, high);
                return Err(e);
            }
        };
        if released == 0 {
            tx.rollback().await?;
            self.sequencer.rewind_to(head, self.sequencer.high());
            return Ok(());
        }
        if let Err(e) = tx.commit().await {
            self.sequencer.rewind_to(head, high);
            return Err(e.into());
        }
        self.publish_head();
        self.log_forced(false);
        Ok(())
    }

    /// One WARN line per [`FORCED_LOG_EVERY`] (and at the end) with how many
    /// events `max_hold` released, not one per release step.
    fn log_forced(&mut self, last: bool) {
        let total = self
            .counters
            .forced
            .load(std::sync::atomic::Ordering::Relaxed);
        let (logged, at) = self.forced_logged;
        if total == logged || (!last && at.elapsed() < FORCED_LOG_EVERY) {
            return;
        }
        tracing::warn!(
            events = total - logged,
            since = ?at.elapsed(),
            max_hold = ?Duration::from_micros(self.stream.rule.max_hold_us as u64),
            "released events held longer than stream.max_hold above the watermark (is the poller failing?)"
        );
        self.forced_logged = (total, std::time::Instant::now());
    }

    fn publish_head(&self) {
        let head = self.sequencer.head();
        self.head.send_if_modified(|h| {
            let changed = h.seq != head;
            h.seq = head;
            changed
        });
    }

    /// The event-time release step, inside the writer's transaction: takes
    /// the unreleased events the watermark (or `max_hold`) allows and gives
    /// them their `seq` in (time, id) order. Returns how many were released.
    async fn release(
        tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
        sequencer: &mut Sequencer,
        stream: &StreamSettings,
        verified: Option<i64>,
        counters: &Counters,
    ) -> Result<u64, StoreError> {
        let now = now_us();
        let live = *stream.live.borrow();
        let watermark = stream.rule.watermark(now, verified, live);
        let held_since = now - stream.rule.max_hold_us;
        // Two index range scans (see migration 0007), not a walk over
        // every unreleased event.
        let rows: Vec<(String, i64, i64)> = sqlx::query_as(
            "SELECT id, occurred_at_us, received_at_us FROM events INDEXED BY events_unreleased \
             WHERE seq IS NULL AND validation IS NOT 'pending' AND occurred_at_us <= ? \
             UNION \
             SELECT id, occurred_at_us, received_at_us FROM events INDEXED BY events_unreleased_received \
             WHERE seq IS NULL AND validation IS NOT 'pending' AND received_at_us <= ?",
        )
        .bind(watermark.unwrap_or(i64::MIN))
        .bind(held_since)
        .fetch_all(&mut **tx)
        .await?;
        let candidates = rows
            .into_iter()
            .map(|(id, occurred_us, received_us)| Candidate {
                id,
                occurred_us,
                received_us,
            })
            .collect();
        let step = sequencer.release(candidates, watermark, now, stream.rule.max_hold_us);
        Counters::add(&counters.forced, step.forced as u64);
        // One statement per chunk: a poll window verified at once releases
        // its whole backlog in this transaction.
        for chunk in step.released.chunks(INSERT_CHUNK) {
            let sql = format!(
                "UPDATE events SET seq = v.column2, late = v.column3 \
                 FROM (VALUES {}) AS v WHERE events.id = v.column1",
                placeholders(chunk.len(), 3)
            );
            let mut q = sqlx::query(AssertSqlSafe(sql));
            for r in chunk {
                q = q.bind(r.id.as_str()).bind(r.seq).bind(r.late);
            }
            q.execute(&mut **tx).await?;
        }
        if !step.released.is_empty() {
            sqlx::query(
                "INSERT INTO stream_state (key, value) VALUES ('high_us', ?) \
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            )
            .bind(sequencer.high())
            .execute(&mut **tx)
            .await?;
        }
        let late = step.released.iter().filter(|r| r.late).count() as u64;
        Counters::add(&counters.late, late);
        Counters::add(&counters.released, step.released.len() as u64);
        Ok(step.released.len() as u64)
    }

    async fn commit(&mut self, mut batch: Batch) -> Result<(), StoreError> {
        let head_before = self.sequencer.head();
        let high_before = self.sequencer.high();
        let verified_before = self.verified;
        let offered_poll = batch
            .events
            .iter()
            .filter(|e| e.origin == Origin::Poll)
            .count() as u64;
        let offered_mqtt = batch.events.len() as u64 - offered_poll;
        let result = self.write(&mut batch).await;
        let (inserted, recovered) = match result {
            Ok(n) => n,
            Err(e) => {
                self.sequencer.rewind_to(head_before, high_before);
                self.verified = verified_before;
                return Err(e);
            }
        };
        let now = now_us();
        Counters::add(&self.counters.stored, inserted);
        Counters::add(&self.counters.recovered, recovered);
        Counters::add(
            &self.counters.duplicates,
            offered_mqtt - (inserted - recovered),
        );
        Counters::add(&self.counters.poll_known, offered_poll - recovered);
        for r in &batch.rejected {
            self.counters.rejected_for(r.reason.as_str());
        }
        Counters::add(&self.counters.skipped, batch.skipped);
        Counters::add(&self.counters.batches, 1);
        self.counters
            .last_commit_us
            .store(now, std::sync::atomic::Ordering::Relaxed);
        if !batch.acks.is_empty()
            && let Some(acks) = &self.acks
        {
            // The acker may be gone during shutdown; the broker then
            // redelivers (persistent session) and dedup absorbs it.
            let _ = acks.send(std::mem::take(&mut batch.acks));
        }
        for done in batch.sink_done {
            let _ = done.send(());
        }
        for done in batch.verified_done {
            let _ = done.send(());
        }
        self.publish_head();
        self.log_forced(false);
        self.bound_wal().await
    }

    /// After a commit: if the WAL has passed [`WAL_TRUNCATE_AT`] (a backlog
    /// written faster than the background checkpoint copies it, or readers
    /// that kept it from restarting), copy it all back and truncate it now.
    /// Only the writer can: from another connection the checkpoint waits
    /// for a write lock the busy writer hardly ever lets go.
    async fn bound_wal(&mut self) -> Result<(), StoreError> {
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
        let left = checkpoint_on(&mut self.conn, "TRUNCATE").await?;
        tracing::debug!(wal_bytes = size, left, took = ?started.elapsed(), "WAL truncated by the writer");
        Ok(())
    }

    /// Applies one schema registry write inside the batch's transaction.
    /// Only rows still `pending` are touched, so a repeated op is harmless.
    async fn write_schema_op(
        tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
        op: SchemaOp,
        now: i64,
        order: Order,
        sequencer: &mut Sequencer,
        counters: &Counters,
    ) -> Result<(), StoreError> {
        match op {
            SchemaOp::Release {
                id,
                validation,
                dataschema,
            } => {
                let done = sqlx::query(
                    "UPDATE events SET validation = ?, dataschema = COALESCE(?, dataschema) \
                     WHERE id = ? AND validation = 'pending'",
                )
                .bind(validation.as_str())
                .bind(dataschema)
                .bind(id.as_str())
                .execute(&mut **tx)
                .await?;
                // In arrival order it takes the next seq now (event-time
                // order releases it with the watermark); it arrived earlier.
                if done.rows_affected() == 1 && order == Order::Arrival {
                    sqlx::query("UPDATE events SET seq = ?, late = 1 WHERE id = ?")
                        .bind(sequencer.next_seq())
                        .bind(id.as_str())
                        .execute(&mut **tx)
                        .await?;
                }
            }
            SchemaOp::Reject { id, reason, detail } => {
                let moved = sqlx::query(
                    "INSERT INTO rejected (topic, reason, detail, bytes, size, at_us) \
                     SELECT COALESCE(ce_source, '') || '/' || type || COALESCE('/' || subject, ''), \
                     ?, ?, CAST(payload AS BLOB), length(CAST(payload AS BLOB)), ? \
                     FROM events WHERE id = ? AND validation = 'pending'",
                )
                .bind(reason.as_str())
                .bind(detail.as_str())
                .bind(now)
                .bind(id.as_str())
                .execute(&mut **tx)
                .await?;
                sqlx::query("DELETE FROM events WHERE id = ? AND validation = 'pending'")
                    .bind(id.as_str())
                    .execute(&mut **tx)
                    .await?;
                if moved.rows_affected() == 1 {
                    counters.rejected_for(reason.as_str());
                }
            }
            SchemaOp::Put { url, etag, body } => {
                sqlx::query(
                    "INSERT INTO schemas (url, etag, body, fetched_at_us) VALUES (?, ?, ?, ?) \
                     ON CONFLICT(url) DO UPDATE SET etag = excluded.etag, body = excluded.body, \
                     fetched_at_us = excluded.fetched_at_us",
                )
                .bind(url)
                .bind(etag)
                .bind(body)
                .bind(now)
                .execute(&mut **tx)
                .await?;
            }
        }
        Ok(())
    }

    /// Content-keyed events (sources without ids): one whose key is stored,
    /// or earlier in the batch, less than its window away in time (either
    /// side: a history copy may carry an earlier time than the MQTT one) is
    /// the same message again and is dropped.
    async fn drop_window_duplicates(
        tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
        events: &mut Vec<Event>,
    ) -> Result<(), StoreError> {
        let spans = events.iter().filter_map(|e| {
            let w = e.content_key.as_ref()?.window_us;
            Some((
                e.occurred_at_us.saturating_sub(w),
                e.occurred_at_us.saturating_add(w),
            ))
        });
        let Some((from, to)) = spans.reduce(|a, b| (a.0.min(b.0), a.1.max(b.1))) else {
            return Ok(());
        };
        let keys: Vec<&str> = events
            .iter()
            .filter_map(|e| Some(e.content_key.as_ref()?.key.as_str()))
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        // Stored times per key near the batch, one query per chunk. Kept
        // times of one key are a window apart, so these lists stay short.
        let mut seen: HashMap<String, Vec<i64>> = HashMap::new();
        for chunk in keys.chunks(LOOKUP_CHUNK) {
            let sql = format!(
                "SELECT dedup_key, occurred_at_us FROM events \
                 WHERE occurred_at_us > ? AND occurred_at_us < ? AND dedup_key IN {}",
                placeholders(1, chunk.len())
            );
            let mut q = sqlx::query_as::<_, (String, i64)>(AssertSqlSafe(sql))
                .bind(from)
                .bind(to);
            for key in chunk {
                q = q.bind(*key);
            }
            for (key, at) in q.fetch_all(&mut **tx).await? {
                seen.entry(key).or_default().push(at);
            }
        }
        events.retain(|e| {
            let Some(k) = &e.content_key else {
                return true;
            };
            let times = seen.entry(k.key.clone()).or_default();
            if times
                .iter()
                .any(|t| t.abs_diff(e.occurred_at_us) < k.window_us.unsigned_abs())
            {
                return false;
            }
            times.push(e.occurred_at_us);
            true
        });
        Ok(())
    }

    /// Writes one batch in one transaction; returns how many events were
    /// new, and how many of those came from the poller (MQTT had missed them).
    async fn write(&mut self, batch: &mut Batch) -> Result<(u64, u64), StoreError> {
        let mut tx = self.conn.begin_with(WRITE_TX).await?;

        // In-batch duplicates first, then ids already stored.
        let mut seen = HashSet::with_capacity(batch.events.len());
        batch.events.retain(|e| seen.insert(e.id.clone()));
        Self::drop_window_duplicates(&mut tx, &mut batch.events).await?;
        let mut existing = HashSet::new();
        let ids: Vec<&str> = batch.events.iter().map(|e| e.id.as_str()).collect();
        for chunk in ids.chunks(LOOKUP_CHUNK) {
            let sql = format!(
                "SELECT id FROM events WHERE id IN {}",
                placeholders(1, chunk.len())
            );
            let mut q = sqlx::query_scalar::<_, String>(AssertSqlSafe(sql));
            for id in chunk {
                q = q.bind(*id);
            }
            existing.extend(q.fetch_all(&mut *tx).await?);
        }
        let fresh: Vec<&Event> = batch
            .events
            .iter()
            .filter(|e| !existing.contains(&e.id))
            .collect();

        for chunk in fresh.chunks(INSERT_CHUNK) {
            let sql = format!(
                "INSERT INTO events (id, source, origin, occurred_at_us, received_at_us, type, \
                 subject, org, payload, seq, late, ce_source, dataschema, dedup_key, validation) \
                 VALUES {} ON CONFLICT(id) DO NOTHING",
                placeholders(chunk.len(), 15)
            );
            let mut q = sqlx::query(AssertSqlSafe(sql));
            for e in chunk {
                q = q
                    .bind(e.id.as_str())
                    .bind(self.source.as_str())
                    .bind(e.origin.as_str())
                    .bind(e.occurred_at_us)
                    .bind(e.received_at_us)
                    .bind(e.event_type.as_str())
                    .bind(e.subject.as_deref())
                    .bind(e.org.as_deref())
                    .bind(e.payload.as_str())
                    .bind(match self.stream.order {
                        Order::Arrival if !pending(e) => Some(self.sequencer.next_seq()),
                        _ => None,
                    })
                    .bind(self.stream.order == Order::Arrival && e.origin == Origin::Poll)
                    .bind(e.ext.as_ref().map(|x| x.source.as_str()))
                    .bind(e.ext.as_ref().and_then(|x| x.dataschema.as_deref()))
                    .bind(e.content_key.as_ref().map(|k| k.key.as_str()))
                    .bind(e.ext.as_ref().map(|x| x.validation.as_str()));
            }
            let done = q.execute(&mut *tx).await?;
            debug_assert_eq!(done.rows_affected(), chunk.len() as u64);
        }

        if !batch.rejected.is_empty() {
            for r in &batch.rejected {
                sqlx::query(
                    "INSERT INTO rejected (topic, reason, detail, bytes, size, at_us) \
                     VALUES (?, ?, ?, ?, ?, ?)",
                )
                .bind(r.topic.as_str())
                .bind(r.reason.as_str())
                .bind(r.detail.as_str())
                .bind(r.bytes.as_slice())
                .bind(r.size as i64)
                .bind(r.at_us)
                .execute(&mut *tx)
                .await?;
            }
            sqlx::query("DELETE FROM rejected WHERE id <= (SELECT MAX(id) FROM rejected) - ?")
                .bind(self.rejected_max)
                .execute(&mut *tx)
                .await?;
        }

        let now = now_us();
        for op in std::mem::take(&mut batch.schema_ops) {
            let order = self.stream.order;
            Self::write_schema_op(&mut tx, op, now, order, &mut self.sequencer, &self.counters)
                .await?;
        }
        for (sink, op) in &batch.sink_ops {
            write_sink_op(&mut tx, sink, op, now).await?;
        }

        if let Some(until) = batch.verified {
            self.verified = self.verified.max(Some(until));
            sqlx::query(
                "INSERT INTO watermarks (source, verified_until_us, updated_at_us) VALUES (?, ?, ?) \
                 ON CONFLICT(source) DO UPDATE SET verified_until_us = MAX(verified_until_us, excluded.verified_until_us), \
                 updated_at_us = excluded.updated_at_us",
            )
            .bind(self.source.as_str())
            .bind(until)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }

        if self.stream.order == Order::EventTime {
            Self::release(
                &mut tx,
                &mut self.sequencer,
                &self.stream,
                self.verified,
                &self.counters,
            )
            .await?;
        }

        tx.commit().await?;
        let recovered = fresh.iter().filter(|e| e.origin == Origin::Poll).count() as u64;
        Ok((fresh.len() as u64, recovered))
    }
}
