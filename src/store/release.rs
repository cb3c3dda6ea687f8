//! The release step: which stored events get their `seq` now. The rule
//! itself is sans-IO ([`crate::stream`]); this is its IO shell inside the
//! writer's transaction.

use std::time::Duration;

use sqlx::{AssertSqlSafe, Connection};
use tokio::sync::watch;

use super::StoreError;
use super::ingest::{INSERT_CHUNK, pending, placeholders};
use super::writer::{WRITE_TX, Writer};
use crate::event::{Event, now_us};
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

impl StreamSettings {
    /// Now, and the release watermark now.
    fn watermark_now(&self, verified: Option<i64>) -> (i64, Option<i64>) {
        let now = now_us();
        (now, self.rule.watermark(now, verified, *self.live.borrow()))
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
     WHERE seq IS NULL AND validation IS NOT 'pending')";

/// How often forced releases are summed up in the log.
const FORCED_LOG_EVERY: Duration = Duration::from_secs(10);

impl Writer {
    /// Releases what the watermark now allows when no batch is coming.
    pub(super) async fn release_idle(&mut self) -> Result<(), StoreError> {
        if self.all_released {
            // Nothing stored waits: the step has no candidate and only
            // moves how far event time has been released, which is kept
            // with the next release that commits.
            let (now, watermark) = self.stream.watermark_now(self.verified);
            self.sequencer
                .release(Vec::new(), watermark, now, self.stream.rule.max_hold_us);
            return Ok(());
        }
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
            Ok((n, all)) => {
                self.all_released = all;
                n
            }
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
            max_hold = ?Duration::from_micros(self.stream.rule.max_hold_us as u64),
            "released events held longer than stream.max_hold above the watermark (is the poller failing?)"
        );
        self.forced_logged = (total, std::time::Instant::now());
    }

    /// The event-time release step, inside the writer's transaction: takes
    /// the unreleased events the watermark (or `max_hold`) allows and gives
    /// them their `seq` in (time, id) order. Returns how many were released
    /// and whether every stored event (but those pending validation) now
    /// has its `seq`.
    pub(super) async fn release(
        tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
        sequencer: &mut Sequencer,
        stream: &StreamSettings,
        verified: Option<i64>,
        counters: &Counters,
    ) -> Result<(u64, bool), StoreError> {
        let (now, watermark) = stream.watermark_now(verified);
        let held_since = now - stream.rule.max_hold_us;
        // Two index range scans (see migration 0007), not a walk over
        // every unreleased event.
        let rows: Vec<(i64, String, i64, i64)> = sqlx::query_as(
            "SELECT rowid, id, occurred_at_us, received_at_us FROM events INDEXED BY events_unreleased \
             WHERE seq IS NULL AND validation IS NOT 'pending' AND occurred_at_us <= ? \
             UNION \
             SELECT rowid, id, occurred_at_us, received_at_us FROM events INDEXED BY events_unreleased_received \
             WHERE seq IS NULL AND validation IS NOT 'pending' AND received_at_us <= ?",
        )
        .bind(watermark.unwrap_or(i64::MIN))
        .bind(held_since)
        .fetch_all(&mut **tx)
        .await?;
        let candidates = rows
            .into_iter()
            .map(|(row, id, occurred_us, received_us)| Candidate {
                row,
                id,
                occurred_us,
                received_us,
            })
            .collect();
        let released = Self::step(
            tx,
            sequencer,
            stream,
            (now, watermark),
            candidates,
            counters,
        )
        .await?;
        // One statement per chunk: a poll window verified at once releases
        // its whole backlog in this transaction.
        for chunk in released.chunks(INSERT_CHUNK) {
            let sql = format!(
                "UPDATE events SET seq = v.column2, late = v.column3 \
                 FROM (VALUES {}) AS v WHERE events.rowid = v.column1",
                placeholders(chunk.len(), 3)
            );
            let mut q = sqlx::query(AssertSqlSafe(sql));
            for r in chunk {
                q = q.bind(r.row).bind(r.seq).bind(r.late);
            }
            q.execute(&mut **tx).await?;
        }
        let waiting: bool = sqlx::query_scalar(WAITING).fetch_one(&mut **tx).await?;
        Ok((released.len() as u64, !waiting))
    }

    /// The release step for a batch when no stored event waits for its
    /// `seq`: the batch's new events are then the only candidates, so each
    /// released one is inserted at its position (its row written once, no
    /// lookup, no unreleased-index entry to add and remove). Returns the
    /// positions, parallel to `fresh`, and whether all were released.
    pub(super) async fn release_fresh(
        tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
        fresh: &[&Event],
        sequencer: &mut Sequencer,
        stream: &StreamSettings,
        verified: Option<i64>,
        counters: &Counters,
    ) -> Result<(Vec<Option<(i64, bool)>>, bool), StoreError> {
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
        let (now, watermark) = stream.watermark_now(verified);
        let released = Self::step(
            tx,
            sequencer,
            stream,
            (now, watermark),
            candidates,
            counters,
        )
        .await?;
        let mut positions = vec![None; fresh.len()];
        for r in &released {
            positions[r.row as usize] = Some((r.seq, r.late));
        }
        Ok((positions, released.len() == offered))
    }

    /// Runs the release rule over `candidates`, counts what it did and
    /// keeps how far event time has been released.
    async fn step(
        tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
        sequencer: &mut Sequencer,
        stream: &StreamSettings,
        (now, watermark): (i64, Option<i64>),
        candidates: Vec<Candidate>,
        counters: &Counters,
    ) -> Result<Vec<Release>, StoreError> {
        let step = sequencer.release(candidates, watermark, now, stream.rule.max_hold_us);
        Counters::add(&counters.forced, step.forced as u64);
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
        Ok(step.released)
    }
}
