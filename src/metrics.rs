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

/// Declares the plain counters once: each becomes a field of [`Counters`]
/// and of [`Snapshot`], and one with a metric name is exported on
/// `/metrics` as that counter, with that help text ([`EXPORTED`]). Adding
/// such a metric is one line here; its [`crate::telemetry`] event bumps it.
macro_rules! counters {
    ($(
        $(#[doc = $doc:literal])*
        $field:ident $(=> $metric:literal, $help:literal)?;
    )*) => {
        /// The process-wide counters every task bumps (relaxed atomics on
        /// the hot path; the by-reason and per-sink maps behind mutexes).
        #[derive(Debug, Default)]
        pub struct Counters {
            $( $(#[doc = $doc])* pub $field: AtomicU64, )*
            /// The same as `rejected`, by reason (`RejectReason::as_str`).
            pub rejected_by_reason: Mutex<BTreeMap<&'static str, u64>>,
            /// Since when poll runs have been failing (µs since the epoch,
            /// 0 = the last run succeeded or none ran yet).
            pub poll_failing_since_us: AtomicI64,
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

        /// A point-in-time copy of the counters, for summaries.
        #[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
        pub struct Snapshot {
            $( pub $field: u64, )*
            pub first_received_us: i64,
            pub last_received_us: i64,
            pub last_commit_us: i64,
            pub last_delivered_us: i64,
        }

        impl Counters {
            pub fn snapshot(&self) -> Snapshot {
                Snapshot {
                    $( $field: self.$field.load(Relaxed), )*
                    first_received_us: self.first_received_us.load(Relaxed),
                    last_received_us: self.last_received_us.load(Relaxed),
                    last_commit_us: self.last_commit_us.load(Relaxed),
                    last_delivered_us: self.last_delivered_us.load(Relaxed),
                }
            }
        }

        /// The counters `/metrics` exports as they are.
        pub const EXPORTED: &[Exported] = &[
            $( $( Exported { name: $metric, help: $help, value: |s| s.$field }, )? )*
        ];
    };
}

/// A counter exported under its own metric name, unlabelled.
pub struct Exported {
    pub name: &'static str,
    pub help: &'static str,
    pub value: fn(&Snapshot) -> u64,
}

counters! {
    /// Messages taken off the MQTT connection.
    received => "gapless_mqtt_messages_total", "MQTT messages received.";
    /// Events newly stored (first time their id was seen).
    stored;
    /// MQTT events whose id was already stored (QoS 1 redeliveries and copies).
    duplicates;
    /// Poll events already stored (the overlap, and what MQTT delivered first).
    poll_known;
    /// Messages refused (kept in `rejected`).
    rejected;
    /// Events given a `seq` (released to the sinks).
    released => "gapless_released_total", "Events given a seq in the ordered stream.";
    /// ScaleIT: events held back until their schema could be fetched.
    validation_queued => "gapless_validation_queued_total",
        "ScaleIT: events held back until their schema could be fetched.";
    /// ScaleIT: events released unvalidated (schema service down, `ingest`).
    unvalidated => "gapless_unvalidated_total",
        "ScaleIT: events released without validation (schema service down, on_schema_unavailable = ingest).";
    /// ScaleIT: schema requests sent to app APIs.
    schema_fetches => "gapless_schema_fetches_total", "ScaleIT: schema requests sent to app APIs.";
    /// Well-formed messages carrying no event (e.g. VCD `TASK`).
    skipped => "gapless_skipped_total", "Well-formed messages that carry no event (e.g. VCD tasks).";
    /// Committed write batches.
    batches;
    /// Events written by all sinks together.
    delivered;
    /// Successful MQTT connections (CONNACK accepted).
    connects => "gapless_mqtt_connects_total", "MQTT connections established.";
    /// Lost MQTT connections and failed attempts.
    connection_errors => "gapless_mqtt_connection_errors_total",
        "Failed MQTT connection attempts and lost connections.";
    /// Established MQTT connections that were lost.
    disconnects => "gapless_mqtt_disconnects_total", "Established MQTT connections that were lost.";
    /// Subscriptions the broker granted (one per SUBACK without failures).
    subscribed => "gapless_mqtt_subscriptions_total",
        "Subscriptions the broker granted (one per connection that had no session).";
    /// Events first seen through the poller: MQTT had missed them.
    recovered;
    /// Events read from the REST history (seen before or not).
    polled => "gapless_poll_events_total", "Events read from the REST history (seen before or not).";
    /// Completed poll runs.
    poll_runs => "gapless_poll_runs_total", "Completed poll runs.";
    /// History windows the poller read whole and verified.
    poll_windows => "gapless_poll_windows_verified_total",
        "History windows the poller read whole and verified.";
    /// Failed poll runs.
    poll_errors => "gapless_poll_errors_total", "Failed poll runs.";
    /// REST logins (initial and renewals).
    logins => "gapless_rest_logins_total", "REST logins (initial and renewals).";
    /// Events released with `late = true`.
    late => "gapless_late_total", "Events released after newer events (late = true).";
    /// Events released by `stream.max_hold` although above the watermark.
    forced;
    /// Webhook delivery attempts that failed and were retried.
    retries;
    /// Events dead-lettered by webhook sinks.
    dead_letters;
    /// Events deleted by the retention.
    pruned => "gapless_pruned_total", "Events deleted by the retention.";
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

impl Counters {
    /// Records why the run failed; the first reason stays.
    pub fn fail(&self, what: String) {
        self.failed_task
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert(what);
    }

    /// Forgets the failure: a pair's process that stopped leading after
    /// one goes on, as a healthy standby.
    pub fn clear_failure(&self) {
        *self.failed_task.lock().unwrap_or_else(|e| e.into_inner()) = None;
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
}

/// A poisoned lock only means another task panicked mid-update of a counter
/// map; the numbers are still worth reading.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
