//! What happened, said once: each kind of internal event is one type whose
//! [`InternalEvent::emit`] writes its log line and bumps its counters
//! together (the internal-events pattern of Vector). A call site builds
//! the event and emits it; the wording of the log and which counter moves
//! are decided here, so a log line cannot drift from its metric.
//!
//! The counters are [`Counters`], declared once in `metrics::counters!`:
//! a new metric is its line there (field, metric name, help), bumped by
//! the event that counts it here; `/metrics` then serves it. Test
//! `admin::metric_names_are_unchanged` holds the served names fixed.

use std::time::Duration;

use crate::metrics::{Counters, SinkStats};

/// One kind of thing that happened, with what the log says about it.
pub trait InternalEvent {
    fn emit(self, counters: &Counters);
}

/// The broker accepted the connection (`CONNACK`).
pub struct MqttConnected {
    pub session_present: bool,
    /// Connections so far in this run, this one included.
    pub generation: u64,
}

impl InternalEvent for MqttConnected {
    fn emit(self, c: &Counters) {
        Counters::add(&c.connects, 1);
        tracing::info!(
            session_present = self.session_present,
            generation = self.generation,
            "MQTT connected"
        );
    }
}

/// A connection attempt failed, or an established connection was lost.
pub struct MqttConnectionFailed<'a> {
    pub attempt: u32,
    /// The connection had been up (a disconnect, not only a failed attempt).
    pub was_up: bool,
    pub error: &'a str,
    pub retry_in: Duration,
}

impl InternalEvent for MqttConnectionFailed<'_> {
    fn emit(self, c: &Counters) {
        Counters::add(&c.connection_errors, 1);
        if self.was_up {
            Counters::add(&c.disconnects, 1);
        }
        tracing::warn!(attempt = self.attempt, error = %self.error, retry_in = ?self.retry_in,
            "MQTT connection failed; reconnecting");
    }
}

/// The broker's answer to a SUBSCRIBE.
pub struct MqttSubscribed<'a> {
    pub topics: &'a [String],
    /// Filters the broker refused (0: all granted).
    pub refused: usize,
}

impl InternalEvent for MqttSubscribed<'_> {
    fn emit(self, c: &Counters) {
        if self.refused > 0 {
            tracing::error!(refused = self.refused, topics = ?self.topics,
                "broker refused subscriptions; check the topic filters and the user's rights");
        } else {
            Counters::add(&c.subscribed, 1);
            tracing::info!(topics = ?self.topics, "subscribed");
        }
    }
}

/// The poller read a history window whole and moved the watermark past it.
pub struct PollWindowVerified<'a> {
    pub from: &'a str,
    pub to: &'a str,
    pub events: u64,
    pub pages: u32,
    pub took: Duration,
}

impl InternalEvent for PollWindowVerified<'_> {
    fn emit(self, c: &Counters) {
        Counters::add(&c.polled, self.events);
        Counters::add(&c.poll_windows, 1);
        tracing::info!(from = %self.from, to = %self.to, events = self.events,
            pages = self.pages, took = ?self.took, "poll window verified");
    }
}

/// A REST login (first, or renewing the token).
pub struct LoggedIn<'a> {
    pub who: &'a str,
    pub expires_at: Option<String>,
}

impl InternalEvent for LoggedIn<'_> {
    fn emit(self, c: &Counters) {
        Counters::add(&c.logins, 1);
        tracing::info!(who = %self.who, expires_at = ?self.expires_at, "logged in to VCD");
    }
}

/// A sink's attempt at the event `seq` failed and will be retried; the
/// first failure of an event marks the sink blocked from now.
pub struct SinkRetrying<'a> {
    pub sink: &'a str,
    pub stats: &'a SinkStats,
    /// What failed: `publish` (NATS, Kafka) or `delivery` (webhook).
    pub what: &'static str,
    pub seq: i64,
    pub attempt: u32,
    pub error: &'a str,
    pub retry_in: Duration,
    pub now_us: i64,
}

impl InternalEvent for SinkRetrying<'_> {
    fn emit(self, c: &Counters) {
        Counters::add(&c.retries, 1);
        Counters::add(&self.stats.retries, 1);
        if self.attempt == 1 {
            self.stats
                .blocked_since_us
                .store(self.now_us, std::sync::atomic::Ordering::Relaxed);
        }
        tracing::warn!(sink = %self.sink, seq = self.seq, attempt = self.attempt,
            error = %self.error, retry_in = ?self.retry_in,
            "{} failed; the sink is blocked until it succeeds", self.what);
    }
}

/// A sink's endpoint refused an event for good and it went to the dead letters.
pub struct SinkDeadLettered<'a> {
    pub sink: &'a str,
    pub stats: &'a SinkStats,
    pub seq: i64,
    pub status: Option<u16>,
    pub reason: &'a str,
}

impl InternalEvent for SinkDeadLettered<'_> {
    fn emit(self, c: &Counters) {
        Counters::add(&c.dead_letters, 1);
        Counters::add(&self.stats.dead_letters, 1);
        tracing::warn!(sink = %self.sink, seq = self.seq, status = ?self.status,
            reason = %self.reason, "refused by the endpoint; dead-lettered");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering::Relaxed;

    #[test]
    fn an_event_moves_its_counters_and_only_those() {
        let c = Counters::default();
        MqttConnectionFailed {
            attempt: 1,
            was_up: false,
            error: "refused",
            retry_in: Duration::ZERO,
        }
        .emit(&c);
        assert_eq!(c.connection_errors.load(Relaxed), 1);
        assert_eq!(c.disconnects.load(Relaxed), 0);
        MqttConnectionFailed {
            attempt: 1,
            was_up: true,
            error: "lost",
            retry_in: Duration::ZERO,
        }
        .emit(&c);
        assert_eq!(c.disconnects.load(Relaxed), 1);
        MqttSubscribed {
            topics: &["a/#".into()],
            refused: 1,
        }
        .emit(&c);
        assert_eq!(
            c.subscribed.load(Relaxed),
            0,
            "a refusal is no subscription"
        );
        let stats = SinkStats::default();
        for attempt in 1..=2 {
            SinkRetrying {
                sink: "s",
                stats: &stats,
                what: "delivery",
                seq: 1,
                attempt,
                error: "HTTP 503",
                retry_in: Duration::ZERO,
                now_us: 10 * i64::from(attempt),
            }
            .emit(&c);
        }
        assert_eq!(stats.retries.load(Relaxed), 2);
        assert_eq!(
            stats.blocked_since_us.load(Relaxed),
            10,
            "blocked since the first"
        );
    }
}
