//! The admin HTTP endpoint: `/healthz`, `/readyz` and Prometheus `/metrics`.
//!
//! An unattended daemon must say from outside whether it is alive, whether
//! it is doing its job, and how far behind each sink is. The readiness rule
//! and the metric set are pure functions of a [`Facts`] snapshot (counters
//! plus a few store reads), so unit tests drive them without sockets; the
//! HTTP shell only gathers facts and renders.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics::{counter, describe_counter, describe_gauge, gauge};
use metrics_exporter_prometheus::PrometheusBuilder;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::Secret;
use crate::event::now_us;
use crate::metrics::{Counters, EXPORTED};
use crate::source::RejectReason;
use crate::store::postgres::lease::{Lease, Role};
use crate::store::{Head, Store, StoreError};
use crate::stream::{Live, QosDowngrade};

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error(
        "cannot listen on {addr} (`admin.listen`): {source}\n  hint: another process (a second gapless?) holds the port; set [admin] listen to a free address, or \"\" to turn the endpoint off"
    )]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("admin endpoint: {0}")]
    Serve(std::io::Error),
    #[error("admin endpoint: recording its address in the store: {0}")]
    Record(#[source] StoreError),
}

/// What `/readyz` needs to know about one sink.
#[derive(Clone, Debug)]
pub struct SinkWatch {
    pub name: String,
    pub alert_after: Duration,
}

/// Everything the endpoint reads; built once at start-up.
#[derive(Clone)]
pub struct Admin {
    pub counters: Arc<Counters>,
    pub store: Store,
    /// The SQLite file whose size the gauges show; `None` on Postgres.
    pub store_path: Option<PathBuf>,
    pub head: watch::Receiver<Head>,
    /// The MQTT subscription's state (subscribed while `since_us` is set).
    pub live: watch::Receiver<Live>,
    pub source: String,
    /// `poll.alert_after`, when a poller runs.
    pub poll_alert_after: Option<Duration>,
    pub sinks: Vec<SinkWatch>,
    /// `admin.token_env`: required by `/metrics` and by `/readyz`'s details.
    pub token: Option<Secret>,
    /// In a Postgres pair: whether this process leads, for `/readyz`.
    pub pair: Option<PairWatch>,
}

/// A pair member's role, and the lease that names who leads: a standby is
/// alive but not ready, and says so (`standby`) rather than listing the
/// problems of a pipeline it does not run.
#[derive(Clone)]
pub struct PairWatch {
    pub role: watch::Receiver<Role>,
    pub lease: Lease,
}

/// One sink's state at the moment of a request.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SinkFacts {
    pub name: String,
    pub cursor: i64,
    pub delivered: u64,
    pub retries: u64,
    pub dead_letters: u64,
    /// µs since the epoch; 0 = not blocked.
    pub blocked_since_us: i64,
    pub alert_after_us: i64,
    /// Why the sink is disabled (HTTP 410), if it is.
    pub disabled: Option<String>,
}

/// The daemon's state at the moment of a request.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Facts {
    pub now_us: i64,
    pub counters: crate::metrics::Snapshot,
    pub rejected: Vec<(&'static str, u64)>,
    pub mqtt_ready: bool,
    pub qos_downgrade: Option<QosDowngrade>,
    /// Rows per table and the oldest event's arrival, read per scrape.
    pub store_counts: crate::store::StoreCounts,
    pub wal_bytes: u64,
    /// `(failing since µs or 0, alert_after µs)` when a poller runs.
    pub poll: Option<(i64, i64)>,
    pub verified_until_us: Option<i64>,
    pub head: i64,
    /// This process runs the pipeline: always on SQLite; on Postgres,
    /// while it leads the pair.
    pub leading: bool,
    pub store_bytes: u64,
    pub sinks: Vec<SinkFacts>,
    /// The source's CloudEvent name, the gap metrics' `source` label.
    pub source: String,
    /// Gap markers per reason (every reason, zeros included): how many,
    /// and the event time they span (seconds).
    pub gaps: Vec<(&'static str, i64, f64)>,
}

/// What is wrong without making gapless unready: it delivers, but with a
/// weaker guarantee than configured. Listed by `/readyz` and `status`.
pub fn warnings(f: &Facts) -> Vec<String> {
    f.qos_downgrade
        .map(|d| {
            format!(
                "warning: mqtt: the broker granted QoS {} where mqtt.qos = {} was asked",
                d.granted, d.asked
            )
        })
        .into_iter()
        .collect()
}

/// Why the daemon is not ready; empty when it is.
pub fn problems(f: &Facts) -> Vec<String> {
    let mut out = Vec::new();
    if !f.mqtt_ready {
        out.push("mqtt: not connected and subscribed".to_string());
    }
    if let Some((since, alert)) = f.poll
        && since > 0
        && f.now_us - since > alert
    {
        let what = match f.verified_until_us {
            None => "nothing verified yet",
            Some(_) => "failing",
        };
        out.push(format!(
            "poll: {what} for {}s (poll.alert_after = {}s)",
            (f.now_us - since) / 1_000_000,
            alert / 1_000_000
        ));
    }
    for s in &f.sinks {
        if let Some(reason) = &s.disabled {
            out.push(format!("sink {}: disabled ({reason})", s.name));
        } else if s.blocked_since_us > 0 && f.now_us - s.blocked_since_us > s.alert_after_us {
            out.push(format!(
                "sink {}: blocked on seq {} for {}s (alert_after = {}s)",
                s.name,
                s.cursor + 1,
                (f.now_us - s.blocked_since_us) / 1_000_000,
                s.alert_after_us / 1_000_000
            ));
        }
    }
    out
}

/// Every metric `/metrics` serves, its kind and help text, as the README
/// documents them (a test keeps them in step): the plain counters declared
/// in `metrics`, then the labelled and derived ones below.
pub fn metrics() -> impl Iterator<Item = (&'static str, Kind, &'static str)> {
    let plain = EXPORTED.iter().map(|e| (e.name, Kind::Counter, e.help));
    plain.chain(DERIVED.iter().copied())
}

/// The metrics `render` computes itself: labelled, per sink, gauges.
const DERIVED: &[(&str, Kind, &str)] = &[
    (
        "gapless_events_stored_total",
        Kind::Counter,
        "Events stored for the first time, by origin (mqtt, poll).",
    ),
    (
        "gapless_duplicates_total",
        Kind::Counter,
        "Events already stored, by origin (mqtt: QoS 1 redeliveries; poll: the overlap and what MQTT delivered first).",
    ),
    (
        "gapless_rejected_total",
        Kind::Counter,
        "Messages refused and kept in the rejected table, by reason.",
    ),
    (
        "gapless_stream_head_seq",
        Kind::Gauge,
        "The last released seq.",
    ),
    (
        "gapless_leader",
        Kind::Gauge,
        "1 while this process runs the pipeline (a lone process always does), 0 while it stands by behind the leader of a Postgres pair: across a pair, the sum is 1.",
    ),
    (
        "gapless_sink_delivered_total",
        Kind::Counter,
        "Events a sink delivered, by sink.",
    ),
    (
        "gapless_sink_lag_events",
        Kind::Gauge,
        "Released events a sink has not delivered yet (head seq - cursor), by sink.",
    ),
    (
        "gapless_sink_retries_total",
        Kind::Counter,
        "Failed delivery attempts that were retried, by sink.",
    ),
    (
        "gapless_sink_dead_letters_total",
        Kind::Counter,
        "Events a sink dead-lettered, by sink.",
    ),
    (
        "gapless_sink_blocked",
        Kind::Gauge,
        "1 while a sink retries the event at its cursor or is disabled, by sink.",
    ),
    (
        "gapless_sink_blocked_seconds",
        Kind::Gauge,
        "How long a sink has been retrying the event at its cursor, by sink.",
    ),
    (
        "gapless_poll_window_lag_seconds",
        Kind::Gauge,
        "Now minus the verified watermark: how far back the history is confirmed complete.",
    ),
    (
        "gapless_mqtt_subscribed",
        Kind::Gauge,
        "1 while the MQTT source is connected and subscribed.",
    ),
    (
        "gapless_gaps_total",
        Kind::Counter,
        "Gap markers in the stream (events may be missing and cannot be recovered), by source and reason.",
    ),
    (
        "gapless_gap_seconds_total",
        Kind::Counter,
        "Event time the gap markers span (whole seconds, rounded up), by source and reason.",
    ),
    (
        "gapless_store_size_bytes",
        Kind::Gauge,
        "Bytes the store occupies on disk (database and WAL).",
    ),
    (
        "gapless_store_wal_bytes",
        Kind::Gauge,
        "Bytes of the store's write-ahead log (bounded by the checkpointer).",
    ),
    (
        "gapless_store_rows",
        Kind::Gauge,
        "Rows in the store, by table (events, rejected, dead_letters).",
    ),
    (
        "gapless_store_oldest_event_age_seconds",
        Kind::Gauge,
        "Age of the oldest event the store keeps, 0 when it keeps none (retention prunes delivered ones).",
    ),
];

/// A metric's Prometheus type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

/// Renders `facts` in the Prometheus text format.
pub fn render(f: &Facts) -> String {
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::with_local_recorder(&recorder, || {
        for (name, kind, help) in metrics() {
            match kind {
                Kind::Counter => describe_counter!(name, help),
                Kind::Gauge => describe_gauge!(name, help),
            }
        }
        let c = &f.counters;
        for e in EXPORTED {
            counter!(e.name).absolute((e.value)(c));
        }
        let mqtt_stored = c.stored.saturating_sub(c.recovered);
        counter!("gapless_events_stored_total", "origin" => "mqtt").absolute(mqtt_stored);
        counter!("gapless_events_stored_total", "origin" => "poll").absolute(c.recovered);
        counter!("gapless_duplicates_total", "origin" => "mqtt").absolute(c.duplicates);
        counter!("gapless_duplicates_total", "origin" => "poll").absolute(c.poll_known);
        for (reason, n) in &f.rejected {
            counter!("gapless_rejected_total", "reason" => *reason).absolute(*n);
        }
        gauge!("gapless_stream_head_seq").set(f.head as f64);
        for s in &f.sinks {
            let name = s.name.clone();
            counter!("gapless_sink_delivered_total", "sink" => name.clone()).absolute(s.delivered);
            gauge!("gapless_sink_lag_events", "sink" => name.clone())
                .set((f.head - s.cursor).max(0) as f64);
            counter!("gapless_sink_retries_total", "sink" => name.clone()).absolute(s.retries);
            counter!("gapless_sink_dead_letters_total", "sink" => name.clone())
                .absolute(s.dead_letters);
            let blocked = s.blocked_since_us > 0 || s.disabled.is_some();
            gauge!("gapless_sink_blocked", "sink" => name.clone()).set(f64::from(blocked));
            let blocked_s = if s.blocked_since_us > 0 {
                (f.now_us - s.blocked_since_us) as f64 / 1e6
            } else {
                0.0
            };
            gauge!("gapless_sink_blocked_seconds", "sink" => name).set(blocked_s);
        }
        if let Some(v) = f.verified_until_us {
            gauge!("gapless_poll_window_lag_seconds").set((f.now_us - v) as f64 / 1e6);
        }
        gauge!("gapless_mqtt_subscribed").set(f64::from(f.mqtt_ready));
        gauge!("gapless_leader").set(f64::from(f.leading));
        for (reason, n, seconds) in &f.gaps {
            let labels = [("source", f.source.clone()), ("reason", reason.to_string())];
            counter!("gapless_gaps_total", &labels).absolute(*n as u64);
            // The exporter's counters are integers: whole seconds, rounded
            // up so that no gap counts as none.
            counter!("gapless_gap_seconds_total", &labels).absolute(seconds.ceil() as u64);
        }
        gauge!("gapless_store_size_bytes").set(f.store_bytes as f64);
        gauge!("gapless_store_wal_bytes").set(f.wal_bytes as f64);
        let rows = &f.store_counts;
        for (table, n) in [
            ("events", rows.events),
            ("rejected", rows.rejected),
            ("dead_letters", rows.dead_letters),
        ] {
            gauge!("gapless_store_rows", "table" => table).set(n as f64);
        }
        let oldest_age_us = rows.oldest_received_us.map_or(0, |at| f.now_us - at);
        gauge!("gapless_store_oldest_event_age_seconds").set(oldest_age_us as f64 / 1e6);
    });
    handle.render()
}

impl Admin {
    /// Gathers the facts: counters from memory, cursors and the verified
    /// watermark from the store (a few indexed reads).
    pub async fn facts(&self) -> Result<Facts, StoreError> {
        let now = now_us();
        let (mqtt_ready, qos_downgrade) = {
            let live = self.live.borrow();
            (live.since_us.is_some(), live.downgraded)
        };
        let mut sinks = Vec::with_capacity(self.sinks.len());
        for w in &self.sinks {
            let s = self.counters.sink(&w.name);
            sinks.push(SinkFacts {
                name: w.name.clone(),
                cursor: self.store.cursor(&w.name).await?,
                delivered: s.delivered.load(Relaxed),
                retries: s.retries.load(Relaxed),
                dead_letters: s.dead_letters.load(Relaxed),
                blocked_since_us: s.blocked_since_us.load(Relaxed),
                alert_after_us: w.alert_after.as_micros() as i64,
                disabled: self.store.sink_disabled(&w.name).await?,
            });
        }
        let leading = self.standing_by().is_none();
        // A standby's own head is its last term's: the store's is current.
        let head = match leading {
            true => self.head.borrow().seq,
            false => self.store.head().await?,
        };
        let store_counts = self.store.counts().await?;
        let totals = self.store.gap_totals().await?;
        let gaps = crate::gap::Reason::ALL
            .iter()
            .map(|r| {
                let t = totals.iter().find(|t| t.reason == r.as_str());
                (
                    r.as_str(),
                    t.map_or(0, |t| t.n),
                    t.map_or(0.0, |t| t.seconds),
                )
            })
            .collect();
        let poll = self.poll_alert_after.map(|a| {
            (
                self.counters.poll_failing_since_us.load(Relaxed),
                a.as_micros() as i64,
            )
        });
        Ok(Facts {
            now_us: now,
            counters: self.counters.snapshot(),
            rejected: {
                let seen = self.counters.rejected_reasons();
                let mut all: Vec<_> = RejectReason::ALL.iter().map(|r| (r.as_str(), 0)).collect();
                for (reason, n) in seen {
                    match all.iter_mut().find(|(r, _)| *r == reason) {
                        Some(slot) => slot.1 = n,
                        None => all.push((reason, n)),
                    }
                }
                all
            },
            mqtt_ready,
            qos_downgrade,
            poll,
            verified_until_us: match poll {
                Some(_) => self.store.verified_until(&self.source).await?,
                None => None,
            },
            head,
            leading,
            store_bytes: self
                .store_path
                .as_deref()
                .map_or(0, crate::store::size_on_disk),
            store_counts,
            wal_bytes: self
                .store_path
                .as_deref()
                .map_or(0, crate::store::wal_on_disk),
            sinks,
            source: self.source.clone(),
            gaps,
        })
    }

    /// The pair's watch while this process stands by behind another.
    fn standing_by(&self) -> Option<&PairWatch> {
        self.pair
            .as_ref()
            .filter(|p| *p.role.borrow() == Role::Standby)
    }

    /// Binds `addr` now (so a taken port fails start-up; port 0 picks any
    /// free port), then serves until `shutdown`. Returns the bound address,
    /// which the caller records in the store (`Store::record_admin`) once
    /// this process is the one `status` should ask.
    pub async fn serve(
        self,
        addr: SocketAddr,
        shutdown: CancellationToken,
    ) -> Result<(SocketAddr, impl Future<Output = Result<(), AdminError>>), AdminError> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| AdminError::Bind { addr, source })?;
        let bound = listener.local_addr().map_err(AdminError::Serve)?;
        tracing::info!(addr = %bound, "admin endpoint listening (/healthz, /readyz, /metrics)");
        let app = axum::Router::new()
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .route("/metrics", get(metrics_page))
            .with_state(Arc::new(self));
        Ok((bound, async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown.cancelled_owned())
                .await
                .map_err(AdminError::Serve)
        }))
    }
}

fn store_failure(e: StoreError) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        format!("store unreadable: {e}\n"),
    )
        .into_response()
}

/// Whether a request carries the admin token (always, when none is set).
/// Compared in constant time.
fn authorized(admin: &Admin, headers: &axum::http::HeaderMap) -> bool {
    let Some(token) = &admin.token else {
        return true;
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    let want = token.expose().as_bytes();
    given.len() == want.len()
        && given
            .bytes()
            .zip(want)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// Liveness: 503 once a task has failed (the daemon is then shutting down).
async fn healthz(State(admin): State<Arc<Admin>>) -> Response {
    match admin.counters.failure() {
        None => (StatusCode::OK, "ok\n").into_response(),
        Some(task) => {
            (StatusCode::SERVICE_UNAVAILABLE, format!("failed: {task}\n")).into_response()
        }
    }
}

async fn readyz(State(admin): State<Arc<Admin>>, headers: axum::http::HeaderMap) -> Response {
    if let Some(pair) = admin.standing_by() {
        return standby(pair, authorized(&admin, &headers)).await;
    }
    let facts = match admin.facts().await {
        Ok(f) => f,
        Err(e) => return store_failure(e),
    };
    let problems = problems(&facts);
    if problems.is_empty() {
        let warnings = warnings(&facts);
        if warnings.is_empty() || !authorized(&admin, &headers) {
            (StatusCode::OK, "ready\n").into_response()
        } else {
            (StatusCode::OK, format!("ready\n{}\n", warnings.join("\n"))).into_response()
        }
    } else if !authorized(&admin, &headers) {
        // The details name sinks and settings: only with the token.
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready\n{}\n", problems.join("\n")),
        )
            .into_response()
    }
}

/// `/readyz` of a standby: 503 `standby`, and with the token who leads.
async fn standby(pair: &PairWatch, authorized: bool) -> Response {
    let mut body = "standby\n".to_string();
    if authorized {
        body += &match pair.lease.holder().await {
            Ok(Some(h)) if h.live => format!(
                "leader: {} since {} (epoch {})\n",
                h.holder,
                crate::event::rfc3339_us(h.acquired_at_us),
                h.epoch
            ),
            Ok(_) => "leader: none (the lease is free)\n".into(),
            Err(e) => format!("leader: unknown ({e})\n"),
        };
    }
    (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
}

async fn metrics_page(State(admin): State<Arc<Admin>>, headers: axum::http::HeaderMap) -> Response {
    if !authorized(&admin, &headers) {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "the admin token is required (Authorization: Bearer …)\n",
        )
            .into_response();
    }
    match admin.facts().await {
        Ok(f) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            render(&f),
        )
            .into_response(),
        Err(e) => store_failure(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready_facts() -> Facts {
        Facts {
            now_us: 1_000_000_000,
            mqtt_ready: true,
            qos_downgrade: None,
            store_counts: Default::default(),
            wal_bytes: 0,
            poll: Some((0, 60_000_000)),
            sinks: vec![SinkFacts {
                name: "hook".into(),
                cursor: 7,
                alert_after_us: 30_000_000,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn ready_when_subscribed_polling_and_sinks_moving() {
        assert!(problems(&ready_facts()).is_empty());
    }

    #[test]
    fn each_condition_makes_it_unready_only_past_its_threshold() {
        let mut f = ready_facts();
        f.mqtt_ready = false;
        assert_eq!(problems(&f).len(), 1);

        let mut f = ready_facts();
        f.poll = Some((f.now_us - 59_000_000, 60_000_000));
        assert!(problems(&f).is_empty(), "failing, but not for long");
        f.poll = Some((f.now_us - 61_000_000, 60_000_000));
        assert!(problems(&f)[0].starts_with("poll: nothing verified yet for 61s"));
        f.verified_until_us = Some(f.now_us - 70_000_000);
        assert!(problems(&f)[0].starts_with("poll: failing for 61s"));

        let mut f = ready_facts();
        f.sinks[0].blocked_since_us = f.now_us - 29_000_000;
        assert!(problems(&f).is_empty(), "retrying, but not for long");
        f.sinks[0].blocked_since_us = f.now_us - 31_000_000;
        assert!(problems(&f)[0].contains("blocked on seq 8"));

        let mut f = ready_facts();
        f.sinks[0].disabled = Some("HTTP 410".into());
        assert!(problems(&f)[0].contains("disabled"));
    }

    #[test]
    fn every_metric_is_rendered_with_help_and_lag_is_head_minus_cursor() {
        let mut f = ready_facts();
        f.head = 10;
        f.verified_until_us = Some(f.now_us - 5_000_000);
        f.rejected = vec![("malformed_json", 3)];
        f.counters.stored = 9;
        f.counters.recovered = 2;
        f.source = "vcd-lab".into();
        f.gaps = vec![("no_history", 2, 5.2), ("unverified", 0, 0.0)];
        let text = render(&f);
        for (name, kind, _) in metrics() {
            let kind = match kind {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
            };
            assert!(
                text.contains(&format!("# TYPE {name} {kind}")),
                "{name} missing:\n{text}"
            );
            assert!(
                text.contains(&format!("# HELP {name} ")),
                "{name} has no help"
            );
        }
        assert!(text.contains("gapless_sink_lag_events{sink=\"hook\"} 3"));
        assert!(text.contains("gapless_events_stored_total{origin=\"mqtt\"} 7"));
        assert!(text.contains("gapless_events_stored_total{origin=\"poll\"} 2"));
        assert!(text.contains("gapless_rejected_total{reason=\"malformed_json\"} 3"));
        assert!(text.contains("gapless_poll_window_lag_seconds 5"));
        assert!(text.contains("gapless_gaps_total{source=\"vcd-lab\",reason=\"no_history\"} 2"));
        assert!(
            text.contains("gapless_gap_seconds_total{source=\"vcd-lab\",reason=\"no_history\"} 6")
        );
        assert!(text.contains("gapless_gaps_total{source=\"vcd-lab\",reason=\"unverified\"} 0"));
    }
}
