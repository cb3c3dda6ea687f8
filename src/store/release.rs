//! The release step: which stored events get their `seq` now. The rule
//! itself is sans-IO ([`crate::stream`]); this is its IO shell inside the
//! writer's transaction.

use std::sync::Arc;
use std::time::Duration;

use sqlx::AssertSqlSafe;
use tokio::sync::watch;

use super::StoreError;
use super::backend::{Tx, on};
use super::ingest::{INSERT_CHUNK, pending, placeholders};
use super::writer::Writer;
use crate::event::{Event, now_us};
use crate::gap::{Gap, Reason};
use crate::metrics::Counters;
use crate::stream::{Candidate, Live, Order, Release, Rule, Sequencer};

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
pub(super) fn release_tick(settle_us: i64) -> Duration {
    Duration::from_micros((settle_us / 10).clamp(5_000, 50_000) as u64)
}

/// Whether a stored event (one pending validation aside) waits for its `seq`.
pub(super) const WAITING: &str = "SELECT EXISTS (SELECT 1 FROM events INDEXED BY events_unreleased \
     WHERE seq IS NULL AND validation IS DISTINCT FROM 'pending')";

/// How often forced releases are summed up in the log.
const FORCED_LOG_EVERY: Duration = Duration::from_secs(10);

/// The writer's release state: the sequencer, the rule, the poller's
/// verified watermark, and whether any stored event waits for its `seq`.
/// One field of the [`Writer`], apart from its connection, so that its
/// steps run inside a transaction on that connection.
pub(super) struct Releaser {
    pub(super) sequencer: Sequencer,
    pub(super) stream: StreamSettings,
    /// The poller's verified watermark for this source (µs).
    pub(super) verified: Option<i64>,
    /// No stored event waits for its `seq` (those pending validation
    /// aside): a batch's own events are then the release step's only
    /// candidates (see [`Releaser::release_fresh`]).
    pub(super) all_released: bool,
    pub(super) counters: Arc<Counters>,
    /// The source's name: the `source` column of what the writer stores,
    /// the watermark's key, and the markers' CloudEvent `source`.
    pub(super) source: String,
    /// The `unverified` gap `max_hold` opened and the poller has not yet
    /// verified: later forced events extend it instead of opening another.
    pub(super) unverified: Option<Gap>,
}

impl Releaser {
    /// Now, and the release watermark now.
    fn watermark_now(&self) -> (i64, Option<i64>) {
        let now = now_us();
        let live = *self.stream.live.borrow();
        (now, self.stream.rule.watermark(now, self.verified, live))
    }

    /// The event-time release step, inside the writer's transaction: takes
    /// the unreleased events the watermark (or `max_hold`) allows and gives
    /// them their `seq` in (time, id) order. Returns how many were released.
    pub(super) async fn release(&mut self, tx: &mut Tx<'_>) -> Result<u64, StoreError> {
        let (now, watermark) = self.watermark_now();
        let held_since = now - self.stream.rule.max_hold_us;
        // Two index range scans (see migration 0007), not a walk over
        // every unreleased event.
        let rows: Vec<(i64, String, i64, i64)> = on!(&mut *tx, |t, sql| {
            sqlx::query_as(sql(
            "SELECT rowid, id, occurred_at_us, received_at_us FROM events INDEXED BY events_unreleased \
             WHERE seq IS NULL AND validation IS DISTINCT FROM 'pending' AND occurred_at_us <= ? \
             UNION \
             SELECT rowid, id, occurred_at_us, received_at_us FROM events INDEXED BY events_unreleased_received \
             WHERE seq IS NULL AND validation IS DISTINCT FROM 'pending' AND received_at_us <= ?",
        ))
        .bind(watermark.unwrap_or(i64::MIN))
        .bind(held_since)
        .fetch_all(&mut **t)
        .await
        })?;
        let candidates = rows
            .into_iter()
            .map(|(row, id, occurred_us, received_us)| Candidate {
                row,
                id,
                occurred_us,
                received_us,
            })
            .collect();
        let released = self.step(tx, (now, watermark), candidates).await?;
        // One statement per chunk: a poll window verified at once releases
        // its whole backlog in this transaction.
        for chunk in released.chunks(INSERT_CHUNK) {
            let text = format!(
                "UPDATE events SET seq = v.column2, late = v.column3 \
                 FROM (VALUES {}) AS v WHERE events.rowid = v.column1",
                placeholders(chunk.len(), 3)
            );
            on!(&mut *tx, |t, sql| {
                let mut q = sqlx::query(sql(AssertSqlSafe(text)));
                for r in chunk {
                    q = q.bind(r.row).bind(r.seq).bind(r.late);
                }
                q.execute(&mut **t).await.map(drop)
            })?;
        }
        let waiting: bool = on!(&mut *tx, |t, sql| sqlx::query_scalar(sql(WAITING))
            .fetch_one(&mut **t)
            .await)?;
        self.all_released = !waiting;
        Ok(released.len() as u64)
    }

    /// The release step for a batch when no stored event waits for its
    /// `seq`: the batch's new events are then the only candidates, so each
    /// released one is inserted at its position (its row written once, no
    /// lookup, no unreleased-index entry to add and remove). Returns the
    /// positions, parallel to `fresh`.
    pub(super) async fn release_fresh(
        &mut self,
        tx: &mut Tx<'_>,
        fresh: &[&Event],
    ) -> Result<Vec<Option<(i64, bool)>>, StoreError> {
        let candidates: Vec<Candidate> = fresh
            .iter()
            .enumerate()
            .filter(|(_, e)| !pending(e))
            .map(|(i, e)| Candidate {
                row: i as i64,
                id: e.id.clone(),
                occurred_us: e.occurred_at_us,
                received_us: e.received_at_us,
            })
            .collect();
        let offered = candidates.len();
        let at = self.watermark_now();
        let released = self.step(tx, at, candidates).await?;
        self.all_released = released.len() == offered;
        let mut positions = vec![None; fresh.len()];
        for r in &released {
            positions[r.row as usize] = Some((r.seq, r.late));
        }
        Ok(positions)
    }

    /// The idle step while nothing stored waits: no candidate, so it only
    /// moves how far event time has been released (kept with the next
    /// release that commits).
    fn advance(&mut self) {
        let (now, watermark) = self.watermark_now();
        let max_hold_us = self.stream.rule.max_hold_us;
        self.sequencer
            .release(Vec::new(), watermark, now, max_hold_us);
    }

    /// Runs the release rule over `candidates`, counts what it did and
    /// keeps how far event time has been released.
    async fn step(
        &mut self,
        tx: &mut Tx<'_>,
        (now, watermark): (i64, Option<i64>),
        candidates: Vec<Candidate>,
    ) -> Result<Vec<Release>, StoreError> {
        let max_hold_us = self.stream.rule.max_hold_us;
        let step = self
            .sequencer
            .release(candidates, watermark, now, max_hold_us);
        if let Some((from_us, to_us)) = step.forced_span {
            self.note_unverified(tx, from_us, to_us, step.forced as u64, now)
                .await?;
        }
        let counters = &self.counters;
        Counters::add(&counters.forced, step.forced as u64);
        if !step.released.is_empty() {
            on!(&mut *tx, |t, sql| sqlx::query(sql(
                "INSERT INTO stream_state (key, value) VALUES ('high_us', ?) \
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            ))
            .bind(self.sequencer.high())
            .execute(&mut **t)
            .await
            .map(|r| r.rows_affected()))?;
        }
        let late = step.released.iter().filter(|r| r.late).count() as u64;
        Counters::add(&counters.late, late);
        Counters::add(&counters.released, step.released.len() as u64);
        Ok(step.released)
    }

    /// Events `max_hold` forced out before the poller verified them: the
    /// first opens an `unverified` gap with a marker right after them; while
    /// it stays open, later ones only extend it (one marker per outage, not
    /// one per release step).
    async fn note_unverified(
        &mut self,
        tx: &mut Tx<'_>,
        from_us: i64,
        to_us: i64,
        events: u64,
        now: i64,
    ) -> Result<(), StoreError> {
        if let Some(open) = &mut self.unverified {
            open.to_us = open.to_us.max(to_us);
            open.events = Some(open.events.unwrap_or(0) + events);
            return Writer::extend_gap(tx, open).await;
        }
        let gap = Gap {
            reason: Reason::Unverified,
            from_us,
            to_us,
            events: Some(events),
        };
        let marker = self.emit(tx, &gap, false, now).await?;
        Writer::record_gap(tx, &self.source, &marker, &gap).await?;
        self.unverified = Some(gap);
        Ok(())
    }

    /// Closes the open `unverified` gap once the poller has verified past
    /// its end, with an `io.gapless.verified` marker after the events the
    /// poller recovered in it (they are released `late` before it).
    pub(super) async fn close_unverified(&mut self, tx: &mut Tx<'_>) -> Result<(), StoreError> {
        let Some(open) = self.unverified else {
            return Ok(());
        };
        // `verified` is exclusive (the audit trail is read `lt` it): events
        // at the gap's last instant are verified only once it is past it.
        if self.verified <= Some(open.to_us) {
            return Ok(());
        }
        self.emit(tx, &open, true, now_us()).await?;
        Writer::close_gap(tx, &open).await?;
        self.unverified = None;
        Ok(())
    }

    /// Writes a marker already released at the next `seq`.
    async fn emit(
        &mut self,
        tx: &mut Tx<'_>,
        gap: &Gap,
        closes: bool,
        now: i64,
    ) -> Result<Event, StoreError> {
        let marker = gap.marker(&self.source, closes, now);
        let seq = self.sequencer.next_seq();
        Writer::insert(tx, &[&marker], &[Some((seq, false))], &self.source).await?;
        Counters::add(&self.counters.released, 1);
        Ok(marker)
    }
}

impl Writer {
    /// Releases what the watermark now allows when no batch is coming.
    pub(super) async fn release_idle(&mut self) -> Result<(), StoreError> {
        if self.rel.all_released {
            self.rel.advance();
            return Ok(());
        }
        // A failure is fatal to the writer (see `Writer::run`), so the
        // in-memory release state it leaves behind is never used.
        let mut tx = super::writer::begin(&mut self.conn, self.fence).await?;
        let released = self.rel.release(&mut tx).await?;
        if released == 0 {
            // Nothing changed but how far event time has been released.
            tx.rollback().await?;
            return Ok(());
        }
        tx.commit().await?;
        self.publish_head();
        self.log_forced(false);
        Ok(())
    }

    /// One WARN line per [`FORCED_LOG_EVERY`] (and at the end) with how many
    /// events `max_hold` released, not one per release step.
    pub(super) fn log_forced(&mut self, last: bool) {
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
            max_hold = ?Duration::from_micros(self.rel.stream.rule.max_hold_us as u64),
            "released events held longer than stream.max_hold above the watermark (is the poller failing?)"
        );
        self.forced_logged = (total, std::time::Instant::now());
    }
}
