//! Sinks: each reads released events from the store, in `seq` order, from
//! its own durable cursor.
//!
//! Reading from the store (never from the writer's memory) is what keeps a
//! slow sink from holding back the writer or the other sinks, and what makes
//! restart trivial: a sink resumes after its cursor. A cursor advances only
//! after the target has durably accepted the events.

pub mod file;
pub mod kafka;
pub mod nats;
pub mod retry;
pub mod stdout;
pub mod webhook;
pub mod window;

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use self::retry::{OnFailure, RetrySchedule, Verdict};
use self::webhook::{WebhookSpec, WebhookTarget};

use crate::config::{SinkConfig, SinkKind, WebhookSink};
use crate::event::{StoredEvent, now_us};
use crate::metrics::{Counters, SinkStats};
use crate::store::{Head, SinkOp, Store, StoreError, WriterHandle};
use crate::telemetry::{InternalEvent, SinkDeadLettered, SinkRetrying};

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// A file or stdout write failed: the cursor stays before the batch,
    /// so a restart writes it again.
    #[error(
        "sink `{sink}`: cannot write to {target}: {source}; its cursor stays before this batch"
    )]
    Io {
        sink: String,
        target: String,
        source: std::io::Error,
    },
    /// The target could not be opened or is not one of ours.
    #[error("sink `{sink}`: {message}")]
    Corrupt { sink: String, message: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A successor fenced this sink: it stops rather than fight for the topic.
    #[error("sink `{sink}`: {source}; this gapless stops delivering to it")]
    Fenced {
        sink: String,
        source: SinkTargetError,
    },
}

/// Why a log sink (NATS, Kafka) could not connect or publish: the sink
/// then blocks on its retry schedule, except when it was fenced.
#[derive(Debug, thiserror::Error)]
pub enum SinkTargetError {
    #[error("cannot connect to {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("{0}")]
    Tls(#[from] crate::net::tls::TlsError),
    #[error("publish to `{to}` failed: {reason}")]
    Publish { to: String, reason: String },
    /// A Kafka transaction failed; the producer is made anew.
    #[error("transaction on `{to}` failed: {reason}")]
    Transaction { to: String, reason: String },
    /// Another producer with the same `transactional_id` took over.
    #[error(
        "fenced on `{to}`: another producer with this sink's transactional_id took over ({reason})"
    )]
    Fenced { to: String, reason: String },
}

/// What became of one batch sent to a log sink.
#[derive(Debug)]
pub struct Published {
    /// The `seq` of the last event of the acked prefix.
    pub through: Option<i64>,
    pub acked: u64,
    /// Of the acked, those the target already held.
    pub duplicates: u64,
    /// Why the batch stopped short.
    pub error: Option<SinkTargetError>,
}

impl Published {
    /// Nothing moved: the batch failed before any send counted.
    fn failed(error: SinkTargetError) -> Self {
        Published {
            through: None,
            acked: 0,
            duplicates: 0,
            error: Some(error),
        }
    }

    fn of_window<F>(w: window::AckWindow<F>, error: Option<SinkTargetError>) -> Self {
        Published {
            through: w.through,
            acked: w.acked,
            duplicates: w.duplicates,
            error,
        }
    }
}

/// A connected log sink.
enum LogTarget {
    Nats(Box<nats::NatsTarget>),
    Kafka(kafka::KafkaTarget),
}

impl LogTarget {
    async fn publish(&self, events: &[StoredEvent], source: &str, uri: &str) -> Published {
        match self {
            LogTarget::Nats(t) => t.publish(events, source, uri).await,
            LogTarget::Kafka(t) => t.publish(events, uri).await,
        }
    }
}

/// Where a sink delivers, for the log and errors (no credentials).
fn target_address(config: &SinkConfig) -> String {
    match &config.kind {
        SinkKind::Kafka(k) => format!("{} topic {}", k.brokers, k.topic),
        SinkKind::File(f) => f.path.display().to_string(),
        SinkKind::Stdout(_) => "stdout".to_string(),
        SinkKind::Webhook(w) => crate::net::redact(&w.url),
        SinkKind::Nats(n) => crate::net::redact(&n.url),
    }
}

/// Connects a NATS or Kafka sink (its secrets read and its subject
/// parsed when the config was read).
async fn connect_log(config: &SinkConfig) -> Result<LogTarget, SinkTargetError> {
    let include_markers = config.include_markers;
    Ok(match &config.kind {
        SinkKind::Nats(n) => LogTarget::Nats(Box::new(
            nats::NatsTarget::connect(nats::NatsSpec {
                url: &n.url,
                auth: n.auth.clone(),
                ca_file: n.ca_file.as_deref(),
                timeout: n.timeout.0,
                subject: n.template().clone(),
                max_in_flight: n.max_in_flight as usize,
                include_markers,
            })
            .await?,
        )),
        SinkKind::Kafka(k) => LogTarget::Kafka(
            kafka::KafkaTarget::connect(kafka::KafkaSpec {
                brokers: &k.brokers,
                topic: &k.topic,
                key: k.key,
                sasl: k.user.as_deref().zip(k.password.clone()),
                ca_file: k.ca_file.as_deref(),
                timeout: k.timeout.0,
                max_in_flight: k.max_in_flight as usize,
                include_markers,
                properties: &k.properties,
                transactional_id: k.transactional_id.as_deref(),
            })
            .await?,
        ),
        other => unreachable!("{} is not a log sink", other.name()),
    })
}

/// Where a sink writes.
pub enum Target {
    File(file::FileTarget),
    Stdout(stdout::StdoutTarget),
}

impl Target {
    async fn open(config: &SinkConfig) -> Result<Self, SinkError> {
        Ok(match &config.kind {
            SinkKind::File(f) => {
                Target::File(file::FileTarget::open(&f.path).await.map_err(|e| {
                    SinkError::Corrupt {
                        sink: config.name.clone(),
                        message: e.to_string(),
                    }
                })?)
            }
            SinkKind::Stdout(s) => Target::Stdout(stdout::StdoutTarget::new(s.format)),
            other => unreachable!("a {} sink has its own loop", other.name()),
        })
    }

    /// The last `seq` the target itself holds, when it can tell.
    fn last_seq(&self) -> Option<i64> {
        match self {
            Target::File(f) => f.last_seq(),
            Target::Stdout(_) => None,
        }
    }

    async fn write(&mut self, events: &[StoredEvent], source: &str) -> std::io::Result<()> {
        match self {
            Target::File(f) => f.write(events, source).await,
            Target::Stdout(s) => s.write(events, source).await,
        }
    }
}

/// Everything a sink task needs.
pub struct SinkTask {
    pub config: SinkConfig,
    pub store: Store,
    pub writer: WriterHandle,
    pub head: watch::Receiver<Head>,
    pub source_uri: String,
    /// The source's name (the NATS subject's `{source}`).
    pub source_name: String,
    pub counters: Arc<Counters>,
    /// This sink's share of the counters (`counters.sink(name)`).
    pub stats: Arc<SinkStats>,
    /// Cancelled at shutdown: a sink then stops at its first retry wait.
    pub shutdown: CancellationToken,
    /// `http.retry_after_max`: no endpoint makes the sink wait longer.
    pub retry_after_max: Duration,
}

/// Decides where a sink resumes from its stored cursor and what its target
/// already holds: a target ahead of the cursor (crash between write and
/// cursor commit) wins, so nothing is written twice.
pub fn resume_point(cursor: i64, target_last: Option<i64>) -> i64 {
    match target_last {
        Some(last) if last > cursor => last,
        _ => cursor,
    }
}

/// How often an idle sink looks for operator requests (replay, dlq retry).
const REQUEST_POLL: Duration = Duration::from_secs(1);

/// What became of one event at a webhook.
enum Outcome {
    Delivered,
    /// A gap marker the sink leaves out (`include_markers = false`).
    Passed,
    DeadLettered(SinkOp),
    Disabled(String),
    /// Shutdown came while the event waited for a retry.
    Stopped,
}

impl SinkTask {
    /// Delivers until ingest has closed and this sink has caught up with the head.
    pub async fn run(self) -> Result<i64, SinkError> {
        match &self.config.kind {
            SinkKind::Webhook(w) => {
                let w = w.clone();
                self.run_webhook(w).await
            }
            SinkKind::Nats(_) | SinkKind::Kafka(_) => self.run_log().await,
            SinkKind::File(_) | SinkKind::Stdout(_) => self.run_batches().await,
        }
    }

    /// Waits for newly released events (or an operator request); false once
    /// ingest has closed and the sink is at the head.
    async fn wait_for_more(&mut self, cursor: i64) -> bool {
        let head = *self.head.borrow_and_update();
        if cursor < head.seq {
            return true;
        }
        if head.closed {
            return false;
        }
        tokio::select! {
            changed = self.head.changed() => changed.is_ok(),
            _ = tokio::time::sleep(REQUEST_POLL) => true,
        }
    }

    /// Released events after `cursor`, up to this process's own head: a
    /// deposed leader of a Postgres pair never delivers what its successor
    /// released.
    async fn released(&self, cursor: i64) -> Result<Vec<StoredEvent>, StoreError> {
        let head = self.head.borrow().seq;
        let mut events = self.store.released_after(cursor, self.config.batch).await?;
        events.retain(|e| e.seq <= head);
        Ok(events)
    }

    /// Applies a pending `gapless replay` to `cursor`.
    async fn apply_replay(&self, cursor: &mut i64) -> Result<(), SinkError> {
        if let Some(from) = self.store.replay_request(&self.config.name).await? {
            *cursor = (from - 1).max(0);
            tracing::info!(sink = %self.config.name, from_seq = from, "replay requested: delivering again");
            self.writer
                .sink_ops(
                    &self.config.name,
                    vec![SinkOp::Cursor(*cursor), SinkOp::ReplayApplied],
                )
                .await?;
        }
        Ok(())
    }

    /// The sink's retry schedule: its `retry_schedule`, else `default`.
    fn retry_schedule(&self, default: fn() -> RetrySchedule) -> RetrySchedule {
        self.config
            .kind
            .retry_schedule()
            .map_or_else(default, |s| RetrySchedule(s.iter().map(|d| d.0).collect()))
    }

    /// Counts and logs failed attempt `attempt` at the event `seq` (the
    /// first marks the sink blocked) and says how long to wait before the
    /// next.
    fn retrying(
        &self,
        schedule: &RetrySchedule,
        (what, seq, attempt): (&'static str, i64, u32),
        error: &str,
        retry_after: Option<Duration>,
    ) -> Duration {
        let delay = schedule.delay(attempt, retry_after, rand::random());
        SinkRetrying {
            sink: &self.config.name,
            stats: &self.stats,
            what,
            seq,
            attempt,
            error,
            retry_in: delay,
            now_us: now_us(),
        }
        .emit(&self.counters);
        delay
    }

    fn delivered(&self, n: u64) {
        Counters::add(&self.counters.delivered, n);
        Counters::add(&self.stats.delivered, n);
        self.counters.last_delivered_us.store(now_us(), Relaxed);
    }

    /// File and stdout: whole batches, one cursor commit per batch.
    async fn run_batches(mut self) -> Result<i64, SinkError> {
        let name = self.config.name.clone();
        let mut target = Target::open(&self.config).await?;
        let stored = self.store.cursor(&name).await?;
        let head = self.head.borrow().seq;
        if let Some(last) = target.last_seq()
            && last > head
            && self.store.replay_request(&name).await?.is_none()
        {
            return Err(SinkError::Corrupt {
                sink: name.clone(),
                message: format!(
                    "{} ends at seq {last}, but this store's stream ends at seq {head}: the file was \
                     written from another store (a new or deleted database, or a changed store.path). \
                     Nothing was written. Move the file aside to start a new one, or run \
                     `gapless replay --sink {name} --from-seq 1` to append this store's stream after it",
                    target_address(&self.config)
                ),
            });
        }
        let mut cursor = resume_point(stored, target.last_seq());
        match target.last_seq() {
            Some(last) if last > stored => {
                tracing::info!(sink = %name, cursor = stored, target_seq = last,
                    "target is ahead of the stored cursor (crash after write); resuming after its last event");
                self.writer.commit_cursor(&name, cursor).await?;
            }
            // Without markers, a file whose last lines would have been
            // markers ends below the cursor by design.
            Some(last) if last < stored && self.config.include_markers => {
                tracing::warn!(sink = %name, cursor = stored, target_seq = last,
                "target holds less than the cursor says (rotated or edited?); continuing after the cursor")
            }
            _ => {}
        }
        tracing::info!(sink = %name, cursor, "sink started");
        loop {
            self.apply_replay(&mut cursor).await?;
            let mut events = self.released(cursor).await?;
            if let Some(last) = events.last().map(|e| e.seq) {
                if !self.config.include_markers {
                    events.retain(|e| !e.is_marker());
                }
                target
                    .write(&events, &self.source_uri)
                    .await
                    .map_err(|source| SinkError::Io {
                        sink: name.clone(),
                        target: target_address(&self.config),
                        source,
                    })?;
                cursor = last;
                self.writer.commit_cursor(&name, cursor).await?;
                self.delivered(events.len() as u64);
                continue;
            }
            if !self.wait_for_more(cursor).await {
                break;
            }
        }
        tracing::info!(sink = %name, cursor, "sink drained");
        Ok(cursor)
    }

    /// NATS and Kafka: batches published pipelined; the cursor follows the
    /// acked prefix, and a failure blocks the sink on the retry schedule
    /// (an outage of the target is waited out, never skipped).
    async fn run_log(mut self) -> Result<i64, SinkError> {
        let name = self.config.name.clone();
        let schedule = self.retry_schedule(RetrySchedule::quick);
        let mut cursor = self.store.cursor(&name).await?;
        let mut target = None;
        let mut failures = 0u32;
        let mut committing = None;
        let mut fenced = None;
        tracing::info!(sink = %name, cursor, to = %target_address(&self.config), "sink started");
        loop {
            self.apply_replay(&mut cursor).await?;
            let events = self.released(cursor).await?;
            if events.is_empty() {
                if !self.wait_for_more(cursor).await {
                    break;
                }
                continue;
            }
            let error = match &target {
                None => match connect_log(&self.config).await {
                    Ok(t) => {
                        tracing::info!(sink = %name, "connected");
                        target = Some(t);
                        continue;
                    }
                    Err(e) => e,
                },
                Some(t) => {
                    let done = t
                        .publish(&events, &self.source_name, &self.source_uri)
                        .await;
                    if let Some(through) = done.through {
                        cursor = through;
                        committing = Some(
                            self.writer
                                .sink_ops_queued(&name, vec![SinkOp::Cursor(cursor)])
                                .await?,
                        );
                        self.delivered(done.acked - done.duplicates);
                    }
                    if done.duplicates > 0 {
                        tracing::info!(sink = %name, duplicates = done.duplicates,
                            "the target already held some re-sent events (dropped by its deduplication)");
                    }
                    match done.error {
                        None => {
                            if failures > 0 {
                                tracing::info!(sink = %name, cursor, attempts = failures + 1, "published after retries; sink unblocked");
                                failures = 0;
                                self.stats.blocked_since_us.store(0, Relaxed);
                            }
                            continue;
                        }
                        Some(e) => e,
                    }
                }
            };
            match error {
                SinkTargetError::Fenced { .. } => {
                    fenced = Some(error);
                    break;
                }
                SinkTargetError::Transaction { .. } => target = None,
                _ => {}
            }
            failures += 1;
            let delay = self.retrying(
                &schedule,
                ("publish", cursor + 1, failures),
                &error.to_string(),
                None,
            );
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = self.shutdown.cancelled() => break,
            }
        }
        if let Some(done) = committing {
            done.await.map_err(|_| StoreError::WriterGone)?;
        }
        if let Some(source) = fenced {
            return Err(SinkError::Fenced { sink: name, source });
        }
        tracing::info!(sink = %name, cursor, "sink stopped");
        Ok(cursor)
    }

    /// Webhook: one event at a time, strictly in `seq` order, each retried
    /// until it is delivered, dead-lettered or the endpoint is gone.
    async fn run_webhook(mut self, config: WebhookSink) -> Result<i64, SinkError> {
        let name = self.config.name.clone();
        let corrupt = |message: String| SinkError::Corrupt {
            sink: name.clone(),
            message,
        };
        let target = WebhookTarget::new(WebhookSpec {
            url: config
                .url
                .parse()
                .map_err(|e| corrupt(format!("url: {e}")))?,
            secret: config.secret.clone(),
            timeout: config.timeout.0,
            headers: &config.headers,
            secret_headers: &config.secret_headers,
            ca_file: config.ca_file.as_deref(),
            retry_after_max: self.retry_after_max,
        })
        .map_err(|e| corrupt(e.to_string()))?;
        let schedule = self.retry_schedule(RetrySchedule::default);
        let mut cursor = self.store.cursor(&name).await?;
        // The last queued cursor commit; awaited before the sink stops. A
        // crash before it commits re-sends those events (same webhook-id).
        let mut committing = None;
        tracing::info!(sink = %name, cursor, url = %crate::net::redact(&config.url), "sink started");
        'outer: loop {
            self.apply_replay(&mut cursor).await?;
            if let Some(reason) = self.store.sink_disabled(&name).await? {
                tracing::debug!(sink = %name, %reason, "sink disabled; waiting for a replay");
                tokio::select! {
                    _ = tokio::time::sleep(REQUEST_POLL) => continue,
                    _ = self.shutdown.cancelled() => break,
                }
            }
            self.retry_dead_letters(&target).await?;
            let events = self.released(cursor).await?;
            if events.is_empty() {
                if !self.wait_for_more(cursor).await {
                    break;
                }
                continue;
            }
            for event in events {
                let outcome = match event.is_marker() && !self.config.include_markers {
                    true => Outcome::Passed,
                    false => {
                        self.deliver(&target, &schedule, config.on_failure, &event)
                            .await
                    }
                };
                let sent = !matches!(outcome, Outcome::Passed);
                let ops = match outcome {
                    Outcome::Delivered | Outcome::Passed => vec![SinkOp::Cursor(event.seq)],
                    Outcome::DeadLettered(op) => vec![op, SinkOp::Cursor(event.seq)],
                    Outcome::Disabled(reason) => {
                        tracing::error!(sink = %name, seq = event.seq, %reason,
                            "the endpoint is gone (410): sink disabled; fix it, then `gapless replay --sink` re-enables it");
                        self.writer
                            .sink_ops(&name, vec![SinkOp::Disable(reason)])
                            .await?;
                        continue 'outer;
                    }
                    Outcome::Stopped => break 'outer,
                };
                committing = Some(self.writer.sink_ops_queued(&name, ops).await?);
                cursor = event.seq;
                self.delivered(u64::from(sent));
            }
        }
        if let Some(done) = committing {
            done.await.map_err(|_| StoreError::WriterGone)?;
        }
        tracing::info!(sink = %name, cursor, "sink stopped");
        Ok(cursor)
    }

    /// Tries one event until it is settled; the sink counts as blocked
    /// from its first failed attempt until then.
    async fn deliver(
        &self,
        target: &WebhookTarget,
        schedule: &RetrySchedule,
        on_failure: OnFailure,
        event: &StoredEvent,
    ) -> Outcome {
        let outcome = self.attempt(target, schedule, on_failure, event).await;
        self.stats.blocked_since_us.store(0, Relaxed);
        outcome
    }

    /// Tries one event until it is settled; waits between attempts on the
    /// retry schedule (honouring `Retry-After`).
    async fn attempt(
        &self,
        target: &WebhookTarget,
        schedule: &RetrySchedule,
        on_failure: OnFailure,
        event: &StoredEvent,
    ) -> Outcome {
        let name = &self.config.name;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let (retry_after, reason) = match target.post(event, &self.source_uri).await {
                Verdict::Delivered => {
                    if attempt > 1 {
                        tracing::info!(sink = %name, seq = event.seq, attempts = attempt, "delivered after retries; sink unblocked");
                    }
                    return Outcome::Delivered;
                }
                Verdict::Gone => {
                    return Outcome::Disabled(format!("HTTP 410 Gone at seq {}", event.seq));
                }
                Verdict::Refused { status, reason } => match on_failure {
                    OnFailure::DeadLetter => {
                        SinkDeadLettered {
                            sink: name,
                            stats: &self.stats,
                            seq: event.seq,
                            status,
                            reason: &reason,
                        }
                        .emit(&self.counters);
                        return Outcome::DeadLettered(SinkOp::DeadLetter {
                            seq: event.seq,
                            event_id: event.id.clone(),
                            attempts: attempt,
                            status,
                            error: reason,
                        });
                    }
                    OnFailure::Block => (None, format!("{reason} (on_failure = block)")),
                },
                Verdict::Retry {
                    retry_after,
                    reason,
                } => (retry_after, reason),
            };
            let delay = self.retrying(
                schedule,
                ("delivery", event.seq, attempt),
                &reason,
                retry_after,
            );
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = self.shutdown.cancelled() => return Outcome::Stopped,
            }
        }
    }

    /// Delivers the dead letters an operator marked for retry (one attempt each).
    async fn retry_dead_letters(&self, target: &WebhookTarget) -> Result<(), SinkError> {
        let name = &self.config.name;
        for dl in self.store.dead_letters(name, true).await? {
            let Some(event) = self.store.event_at(dl.seq).await? else {
                self.writer
                    .sink_ops(name, vec![SinkOp::DeadLetterDelivered(dl.seq)])
                    .await?;
                continue;
            };
            let op = match target.post(&event, &self.source_uri).await {
                Verdict::Delivered => {
                    tracing::info!(sink = %name, seq = dl.seq, "dead letter delivered");
                    self.delivered(1);
                    SinkOp::DeadLetterDelivered(dl.seq)
                }
                other => SinkOp::DeadLetterFailed {
                    seq: dl.seq,
                    error: format!("{other:?}"),
                },
            };
            self.writer.sink_ops(name, vec![op]).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_point_never_repeats_what_the_target_holds() {
        assert_eq!(resume_point(10, None), 10);
        assert_eq!(resume_point(10, Some(12)), 12);
        assert_eq!(resume_point(10, Some(10)), 10);
        assert_eq!(resume_point(10, Some(3)), 10);
    }
}
