//! The single writer: one task owns the only write connection, takes
//! whatever is queued (opportunistic batching), and commits it in one
//! transaction: inserts, releases, sink and schema writes; then hands the
//! receipts back and publishes the new head.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot, watch};

use super::backend::{Conn, Db, Tx, on};
use super::control::{Control, Head, SchemaOp, SinkOp, WriterHandle, write_sink_op};
use super::ingest::{Ingest, Receipt, pending};
use super::maintenance::Retention;
use super::open::wal_path;
use super::release::{Releaser, StreamSettings, WAITING, release_tick};
use super::{Store, StoreError};
use crate::config::StoreConfig;
use crate::event::{Event, Origin, Parsed, Rejected, now_us};
use crate::gap::Gap;
use crate::metrics::Counters;
use crate::stream::{Order, Sequencer};

/// The endpoints the rest of the pipeline talks to the writer through.
pub struct WriterChannels {
    pub ingest: mpsc::Sender<Ingest>,
    pub handle: WriterHandle,
    pub head: watch::Receiver<Head>,
}

/// Who the writer works for: the source it stores for, how deep its queue
/// is, whose acks it releases, how it sequences and what it prunes.
pub struct WriterPlan {
    pub source: String,
    pub queue: usize,
    pub counters: Arc<Counters>,
    pub acks: Option<mpsc::UnboundedSender<Vec<Receipt>>>,
    pub stream: StreamSettings,
    pub retention: Retention,
    /// On Postgres: the epoch of this process's leader lease, checked in
    /// every write transaction ([`begin`]).
    pub fence: Option<i64>,
    /// Where the released head is published: the caller's channel, so that
    /// a reader outliving this writer (the admin endpoint across a pair's
    /// terms) keeps one receiver.
    pub head: watch::Sender<Head>,
}

/// Begins a write transaction. On Postgres with a lease `fence`d, the
/// transaction first checks that this process still leads (and holds the
/// lease row until it ends): a deposed leader's write fails, so the writer
/// stops before anything of it lands.
pub(super) async fn begin(conn: &mut Conn, fence: Option<i64>) -> Result<Tx<'_>, StoreError> {
    let mut tx = conn.begin().await?;
    if let (Db::Postgres(t), Some(epoch)) = (&mut tx, fence) {
        super::postgres::lease::fence(t, super::postgres::LEASE, epoch).await?;
    }
    Ok(tx)
}

/// The single writer task's state.
pub struct Writer {
    pub(super) retention: Retention,
    pub(super) conn: Conn,
    pub(super) rel: Releaser,
    pub(super) batch_max: usize,
    pub(super) batch_delay: Duration,
    pub(super) rejected_max: i64,
    pub(super) counters: Arc<Counters>,
    pub(super) head: watch::Sender<Head>,
    pub(super) acks: Option<mpsc::UnboundedSender<Vec<Receipt>>>,
    pub(super) ingest_rx: mpsc::Receiver<Ingest>,
    pub(super) ctrl_rx: mpsc::Receiver<Control>,
    /// Forced releases already logged, and when.
    pub(super) forced_logged: (u64, std::time::Instant),
    /// The WAL file, whose size the writer bounds, and when it last looked.
    pub(super) wal: (PathBuf, std::time::Instant),
    pub(super) fence: Option<i64>,
    /// Shared with [`Store::run_checkpointer`] (see `Store::checkpoints`).
    pub(super) checkpoints: std::sync::Arc<tokio::sync::Mutex<()>>,
}

/// A writer gone (stopped, failed, or its task aborted) releases nothing
/// more: the head says so, and the sinks stop at it instead of waiting on
/// a channel that outlives the writer (the caller's, [`WriterPlan::head`]).
impl Drop for Writer {
    fn drop(&mut self) {
        self.head.send_modify(|h| h.closed = true);
    }
}

/// How the writer opens its transactions: with the write lock taken at
/// once. A deferred one reads first and then asks for the lock; if a
/// checkpoint restarted the WAL in between, SQLite refuses the upgrade at
/// once (`database is locked`, busy timeout or not). Seen in the soak test.
pub(super) const WRITE_TX: &str = "BEGIN IMMEDIATE";

/// What one loop turn collected.
#[derive(Default)]
struct Batch {
    events: Vec<Event>,
    rejected: Vec<Rejected>,
    skipped: u64,
    acks: Vec<Receipt>,
    sink_ops: Vec<(String, SinkOp)>,
    schema_ops: Vec<SchemaOp>,
    /// Fired after the commit of the sink and schema ops.
    sink_done: Vec<oneshot::Sender<()>>,
    verified: Option<i64>,
    verified_done: Vec<oneshot::Sender<()>>,
    gaps: Vec<Gap>,
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
            Ingest::Gap(gap) => self.gaps.push(gap),
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

impl Writer {
    /// Creates the writer for `store` and the channels that feed it.
    pub async fn new(
        store: &Store,
        config: &StoreConfig,
        plan: WriterPlan,
    ) -> Result<(Writer, WriterChannels), StoreError> {
        let WriterPlan {
            fence,
            head,
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
        let high: Option<i64> = on!(&store.pool, |p, sql| sqlx::query_scalar(sql(
            "SELECT value FROM stream_state WHERE key = 'high_us'"
        ))
        .fetch_optional(p)
        .await)?;
        let verified = store.verified_until(source).await?;
        let waiting: bool = on!(&store.pool, |p, sql| sqlx::query_scalar(sql(WAITING))
            .fetch_one(p)
            .await)?;
        let unverified = store.open_gap(source).await?;
        let (ingest_tx, ingest_rx) = mpsc::channel(queue);
        let (ctrl_tx, ctrl_rx) = mpsc::channel(64);
        head.send_replace(Head {
            seq: head_seq,
            closed: false,
        });
        let head_rx = head.subscribe();
        let writer = Writer {
            conn,
            retention,
            rel: Releaser {
                sequencer: Sequencer::resume(head_seq, high),
                stream,
                verified,
                all_released: !waiting,
                counters: counters.clone(),
                source: source.to_string(),
                unverified,
            },
            batch_max: config.batch_max,
            batch_delay: config.batch_delay.0,
            rejected_max: i64::from(config.rejected_max),
            counters,
            head,
            acks,
            ingest_rx,
            ctrl_rx,
            forced_logged: (0, std::time::Instant::now()),
            wal: (wal_path(&config.path), std::time::Instant::now()),
            checkpoints: store.checkpoints.clone(),
            fence,
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
        let mut tick = tokio::time::interval(release_tick(self.rel.stream.rule.settle_us));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let ticking = self.rel.stream.order == Order::EventTime;
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
                        // Every message is committed and its receipt sent:
                        // let the source disconnect now rather than after
                        // the sinks (which hold the writer open) catch up.
                        self.acks = None;
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

    pub(super) fn publish_head(&self) {
        let head = self.rel.sequencer.head();
        self.head.send_if_modified(|h| {
            let changed = h.seq != head;
            h.seq = head;
            changed
        });
    }

    async fn commit(&mut self, mut batch: Batch) -> Result<(), StoreError> {
        let offered = |origin| batch.events.iter().filter(|e| e.origin == origin).count() as u64;
        let (offered_poll, offered_mqtt) = (offered(Origin::Poll), offered(Origin::Mqtt));
        // A failed write is fatal to the writer (see `run`): nothing of the
        // batch was acked, and the release state it leaves is never used.
        let Written {
            inserted,
            recovered,
            markers,
        } = self.write(&mut batch).await?;
        let now = now_us();
        Counters::add(&self.counters.stored, inserted);
        Counters::add(&self.counters.recovered, recovered);
        Counters::add(
            &self.counters.duplicates,
            offered_mqtt - (inserted - recovered - markers),
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

    /// Writes one batch in one transaction: new events and gap markers,
    /// rejections, schema and sink writes, the poller's watermark, then the
    /// release step.
    async fn write(&mut self, batch: &mut Batch) -> Result<Written, StoreError> {
        let mut tx = super::writer::begin(&mut self.conn, self.fence).await?;
        let order = self.rel.stream.order;
        if let Some(until) = batch.verified {
            self.rel.verified = self.rel.verified.max(Some(until));
        }
        let now = now_us();
        batch.events.extend(
            batch
                .gaps
                .iter()
                .map(|g| g.marker(&self.rel.source, false, now)),
        );
        let fresh = Self::fresh(&mut tx, &mut batch.events).await?;
        // Where each new event goes in the stream, if it goes now. A batch
        // with schema ops may release stored events, so it takes the
        // general step after its inserts.
        let at_once =
            order == Order::EventTime && self.rel.all_released && batch.schema_ops.is_empty();
        let positions = match order {
            Order::Arrival => fresh
                .iter()
                .map(|e| {
                    (!pending(e)).then(|| (self.rel.sequencer.next_seq(), e.origin == Origin::Poll))
                })
                .collect(),
            Order::EventTime if at_once => self.rel.release_fresh(&mut tx, &fresh).await?,
            Order::EventTime => vec![None; fresh.len()],
        };
        Self::insert(&mut tx, &fresh, &positions, &self.rel.source).await?;
        Self::insert_rejected(&mut tx, &batch.rejected, self.rejected_max).await?;
        let mut markers = 0;
        for marker in fresh.iter().filter(|e| e.origin == Origin::Gapless) {
            if let Some(gap) = batch.gaps.iter().find(|g| g.id(false) == marker.id) {
                Self::record_gap(&mut tx, &self.rel.source, marker, gap).await?;
                markers += 1;
            }
        }

        for op in std::mem::take(&mut batch.schema_ops) {
            Self::write_schema_op(
                &mut tx,
                op,
                now,
                order,
                &mut self.rel.sequencer,
                &self.counters,
            )
            .await?;
        }
        for (sink, op) in &batch.sink_ops {
            write_sink_op(&mut tx, sink, op, now).await?;
        }

        if let Some(until) = batch.verified {
            on!(&mut tx, |t, sql| {
                sqlx::query(sql(
                "INSERT INTO watermarks (source, verified_until_us, updated_at_us) VALUES (?, ?, ?) \
                 ON CONFLICT(source) DO UPDATE SET verified_until_us = CASE WHEN excluded.verified_until_us > watermarks.verified_until_us \
                 THEN excluded.verified_until_us ELSE watermarks.verified_until_us END, \
                 updated_at_us = excluded.updated_at_us",
            ))
            .bind(self.rel.source.as_str())
            .bind(until)
            .bind(now)
            .execute(&mut **t)
            .await
            .map(drop)
            })?;
        }

        if order == Order::EventTime && !at_once {
            self.rel.release(&mut tx).await?;
        }
        if batch.verified.is_some() {
            self.rel.close_unverified(&mut tx).await?;
        }

        tx.commit().await?;
        Ok(Written {
            inserted: fresh.len() as u64,
            recovered: fresh.iter().filter(|e| e.origin == Origin::Poll).count() as u64,
            markers,
        })
    }
}

/// What one batch's transaction added.
struct Written {
    /// New rows (events and gap markers).
    inserted: u64,
    /// New events the poller brought: MQTT had missed them.
    recovered: u64,
    /// New gap markers.
    markers: u64,
}
