//! Process-wide counters and health states.
//!
//! One shared set of numbers that every task bumps and that the end-of-run
//! summary and the admin endpoint (`/metrics`, `/readyz`) read. Counting is
//! cheap enough for the hot path: relaxed atomics, no allocation. The cold
//! paths (rejections by reason, per-sink figures) sit behind a mutex.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use serde::Serialize;

#[derive(Debug, Default)]
pub struct Counters {
    /// Messages taken off the MQTT connection.
    pub received: AtomicU64,
    /// Events newly stored (first time their id was seen).
    pub stored: AtomicU64,
    /// MQTT events whose id was already stored (QoS 1 redeliveries and copies).
    pub duplicates: AtomicU64,
    /// Poll events already stored (the overlap, and what MQTT delivered first).
    pub poll_known: AtomicU64,
    /// Messages refused (kept in `rejected`).
    pub rejected: AtomicU64,
    /// The same, by reason (`RejectReason::as_str`).
    pub rejected_by_reason: Mutex<BTreeMap<&'static str, u64>>,
    /// Events given a `seq` (released to the sinks).
    pub released: AtomicU64,
    /// ScaleIT: events held back until their schema could be fetched.
    pub validation_queued: AtomicU64,
    /// ScaleIT: events released unvalidated (schema service down, `ingest`).
    pub unvalidated: AtomicU64,
    /// ScaleIT: schema requests sent to app APIs.
    pub schema_fetches: AtomicU64,
    /// Well-formed messages carrying no event (e.g. VCD `TASK`).
    pub skipped: AtomicU64,
    /// Committed write batches.
    pub batches: AtomicU64,
    /// Events written by all sinks together.
    pub delivered: AtomicU64,
    /// Successful MQTT connections (CONNACK accepted).
    pub connects: AtomicU64,
    /// Lost MQTT connections and failed attempts.
    pub connection_errors: AtomicU64,
    /// Established MQTT connections that were lost.
    pub disconnects: AtomicU64,
    /// Subscriptions the broker granted (one per SUBACK without failures).
    pub subscribed: AtomicU64,
    /// Events first seen through the poller: MQTT had missed them.
    pub recovered: AtomicU64,
    /// Events read from the REST history (seen before or not).
    pub polled: AtomicU64,
    /// Completed poll runs.
    pub poll_runs: AtomicU64,
    /// History windows the poller read whole and verified.
    pub poll_windows: AtomicU64,
    /// Failed poll runs.
    pub poll_errors: AtomicU64,
    /// Since when poll runs have been failing (µs since the epoch, 0 = the
    /// last run succeeded or none ran yet).
    pub poll_failing_since_us: AtomicI64,
    /// REST logins (initial and renewals).
    pub logins: AtomicU64,
    /// Events released with `late = true`.
    pub late: AtomicU64,
    /// Events released by `stream.max_hold` although above the watermark.
    pub forced: AtomicU64,
    /// Webhook delivery attempts that failed and were retried.
    pub retries: AtomicU64,
    /// Events dead-lettered by webhook sinks.
    pub dead_letters: AtomicU64,
    /// Events deleted by the retention.
    pub pruned: AtomicU64,
    /// When the first and last message arrived (µs since the epoch, 0 = never).
    pub first_received_us: AtomicI64,
    pub last_received_us: AtomicI64,
    /// When the last batch was committed (µs since the epoch).
    pub last_commit_us: AtomicI64,
    /// When a sink last delivered a batch (µs since the epoch).
    pub last_delivered_us: AtomicI64,
    /// The first task that failed or ended unexpectedly: `/healthz` then
    /// answers 503 while the daemon shuts down (and exits non-zero).
    failed_task: Mutex<Option<String>>,
    /// Per-sink figures, by sink name.
    pub sinks: Mutex<BTreeMap<String, Arc<SinkStats>>>,
}

/// One sink's own figures: what `/metrics` reports per sink and what
/// `/readyz` checks (a sink stuck on one event).
#[derive(Debug, Default)]
pub struct SinkStats {
    pub delivered: AtomicU64,
    pub retries: AtomicU64,
    pub dead_letters: AtomicU64,
    /// Since when the sink has been retrying the event at its cursor (µs
    /// since the epoch, 0 = not blocked).
    pub blocked_since_us: AtomicI64,
}

/// A point-in-time copy of the counters, for summaries.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Snapshot {
    pub received: u64,
    pub stored: u64,
    pub duplicates: u64,
    pub poll_known: u64,
    pub rejected: u64,
    pub released: u64,
    pub validation_queued: u64,
    pub unvalidated: u64,
    pub schema_fetches: u64,
    pub skipped: u64,
    pub batches: u64,
    pub delivered: u64,
    pub connects: u64,
    pub connection_errors: u64,
    pub disconnects: u64,
    pub subscribed: u64,
    pub recovered: u64,
    pub polled: u64,
    pub poll_runs: u64,
    pub poll_windows: u64,
    pub poll_errors: u64,
    pub logins: u64,
    pub late: u64,
    pub retries: u64,
    pub dead_letters: u64,
    pub pruned: u64,
    pub first_received_us: i64,
    pub last_received_us: i64,
    pub last_commit_us: i64,
    pub last_delivered_us: i64,
}

impl Counters {
    /// Records why the run failed; the first reason stays.
    pub fn fail(&self, what: String) {
        self.failed_task
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert(what);
    }

    /// The first recorded failure, if any.
    pub fn failure(&self) -> Option<String> {
        self.failed_task
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    /// Records a received message at `now_us`.
    pub fn received_at(&self, now_us: i64) {
        self.received.fetch_add(1, Relaxed);
        let _ = self
            .first_received_us
            .compare_exchange(0, now_us, Relaxed, Relaxed);
        self.last_received_us.store(now_us, Relaxed);
    }

    /// Counts one refused message under its reason.
    pub fn rejected_for(&self, reason: &'static str) {
        self.rejected.fetch_add(1, Relaxed);
        *lock(&self.rejected_by_reason).entry(reason).or_default() += 1;
    }

    /// Rejections so far, by reason.
    pub fn rejected_reasons(&self) -> Vec<(&'static str, u64)> {
        lock(&self.rejected_by_reason)
            .iter()
            .map(|(k, v)| (*k, *v))
            .collect()
    }

    /// The figures of the sink `name`, created on first use.
    pub fn sink(&self, name: &str) -> Arc<SinkStats> {
        lock(&self.sinks)
            .entry(name.to_string())
            .or_default()
            .clone()
    }

    /// A poller starts without having verified anything: until a run
    /// succeeds it counts as failing since `now_us` (no error is counted).
    pub fn poll_started(&self, now_us: i64) {
        let _ = self
            .poll_failing_since_us
            .compare_exchange(0, now_us, Relaxed, Relaxed);
    }

    /// Records the outcome of a poll run at `now_us`.
    pub fn poll_result(&self, ok: bool, now_us: i64) {
        if ok {
            self.poll_runs.fetch_add(1, Relaxed);
            self.poll_failing_since_us.store(0, Relaxed);
        } else {
            self.poll_errors.fetch_add(1, Relaxed);
            let _ = self
                .poll_failing_since_us
                .compare_exchange(0, now_us, Relaxed, Relaxed);
        }
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            received: self.received.load(Relaxed),
            stored: self.stored.load(Relaxed),
            duplicates: self.duplicates.load(Relaxed),
            poll_known: self.poll_known.load(Relaxed),
            rejected: self.rejected.load(Relaxed),
            released: self.released.load(Relaxed),
            validation_queued: self.validation_queued.load(Relaxed),
            unvalidated: self.unvalidated.load(Relaxed),
            schema_fetches: self.schema_fetches.load(Relaxed),
            skipped: self.skipped.load(Relaxed),
            batches: self.batches.load(Relaxed),
            delivered: self.delivered.load(Relaxed),
            connects: self.connects.load(Relaxed),
            connection_errors: self.connection_errors.load(Relaxed),
            disconnects: self.disconnects.load(Relaxed),
            subscribed: self.subscribed.load(Relaxed),
            recovered: self.recovered.load(Relaxed),
            polled: self.polled.load(Relaxed),
            poll_runs: self.poll_runs.load(Relaxed),
            poll_windows: self.poll_windows.load(Relaxed),
            poll_errors: self.poll_errors.load(Relaxed),
            logins: self.logins.load(Relaxed),
            late: self.late.load(Relaxed),
            retries: self.retries.load(Relaxed),
            dead_letters: self.dead_letters.load(Relaxed),
            pruned: self.pruned.load(Relaxed),
            first_received_us: self.first_received_us.load(Relaxed),
            last_received_us: self.last_received_us.load(Relaxed),
            last_commit_us: self.last_commit_us.load(Relaxed),
            last_delivered_us: self.last_delivered_us.load(Relaxed),
        }
    }
}

/// A poisoned lock only means another task panicked mid-update of a counter
/// map; the numbers are still worth reading.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
