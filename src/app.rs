//! Wires the pipeline together and runs it until shutdown.
//!
//! Source → writer → sinks, with one cancellation token. Shutdown order is
//! the data-flow order: the source stops reading and closes the ingest
//! channel, the writer commits what is queued (then the last acks go), the
//! sinks deliver up to the final head, and the writer exits once the last
//! sink's cursor is committed. Any task failing cancels the rest.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::admin::{Admin, PairWatch, SinkWatch};
use crate::config::Config;
use crate::config::SourceKind;
use crate::event::now_us;
use crate::gap::Continuity;
use crate::metrics::{Counters, Snapshot};
use crate::sink::SinkTask;
use crate::source::Parser;
use crate::source::mqtt::{Credentials, MqttAuth, MqttSource};
use crate::source::poll::{History, Poller};
use crate::source::profile::scaleit::history::ScaleitHistory;
use crate::source::profile::scaleit::schema::{SchemaRegistry, Settler};
use crate::source::profile::vcd::api::VcdClient;
use crate::source::session;
use crate::store::postgres::lease::{Lease, Role};
use crate::store::{Head, Retention, Store, StoreError, StreamSettings, Writer, WriterPlan};
use crate::stream::{Live, Rule};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Api(#[from] crate::source::history::ApiError),
    #[error(transparent)]
    Admin(#[from] crate::admin::AdminError),
    #[error("schema registry: {0}")]
    Schema(String),
}

/// Knobs of a run that are not configuration.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Stop once no message has arrived for this long after the first one
    /// (drain a backlog and exit).
    pub exit_idle: Option<Duration>,
}

/// What a run did, for the summary line and `--summary`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RunReport {
    pub counters: Snapshot,
    /// The last released `seq`.
    pub head: i64,
    pub events_in_store: i64,
    pub rejected_in_store: i64,
    /// Peak resident memory of the process, in KiB (Linux only).
    pub peak_rss_kib: Option<u64>,
    /// Why the run ended abnormally, if it did.
    pub failure: Option<String>,
}

/// Peak resident set size (VmHWM) of this process, in KiB.
pub fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

type TaskResult = (String, Result<(), String>);

/// Runs the pipeline until `shutdown` is cancelled (or a task fails), then
/// drains it within `shutdown_timeout`. On Postgres the pipeline runs only
/// while this process leads the store, once per term (see [`lead_terms`]).
pub async fn run(
    config: Config,
    options: RunOptions,
    counters: Arc<Counters>,
    shutdown: CancellationToken,
) -> Result<RunReport, AppError> {
    // The lock first: a second gapless on this store stops here, before it
    // logs in, subscribes or writes anything.
    let (store, _lock) = Store::open_exclusive(&config.store).await?;
    let (ttl, renew) = config.store.lease();
    let lease = store.lease(&holder_name(), ttl, renew);
    for warning in crate::net::exposure_warnings(&config)
        .into_iter()
        .chain(config.delivery_warnings())
    {
        tracing::warn!("{warning}");
    }
    // What the admin endpoint watches outlives a term: each term's writer
    // and MQTT source publish into these.
    let head = watch::Sender::new(Head {
        seq: store.head().await?,
        closed: false,
    });
    let live = watch::Sender::new(Live::default());
    let role = watch::Sender::new(Role::Standby);
    let pair = lease.clone().map(|lease| PairWatch {
        role: role.subscribe(),
        lease,
    });
    let admin = serve_admin(&config, &store, &counters, &head, &live, pair, &shutdown).await?;
    let bound = admin.as_ref().map(|a| a.bound);
    let pipeline = Pipeline {
        config: &config,
        options: &options,
        store: &store,
        counters: &counters,
        head: &head,
        live: &live,
    };
    let (failure, started) = match lease {
        None => match pipeline.record_admin(bound).await {
            Ok(()) => pipeline.term(None, &shutdown, &shutdown).await,
            Err(e) => (None, Err(e)),
        },
        Some(lease) => pipeline.lead_terms(lease, &role, bound, &shutdown).await,
    };
    if let Some(admin) = admin {
        admin.stop.cancel();
        let _ = admin.task.await;
    }
    let head = head.borrow().seq;
    let report = report(&store, &counters, head, failure).await;
    started?;
    report
}

/// The admin endpoint serving for the whole process.
struct AdminTask {
    bound: std::net::SocketAddr,
    /// Stops it at the end of the run (and with `shutdown`).
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

/// Binds the admin endpoint (a taken port fails start-up) and serves it
/// for the whole process: a standby answers too. A serving error fails
/// the run (cancels `shutdown`).
async fn serve_admin(
    config: &Config,
    store: &Store,
    counters: &Arc<Counters>,
    head: &watch::Sender<Head>,
    live: &watch::Sender<Live>,
    pair: Option<PairWatch>,
    shutdown: &CancellationToken,
) -> Result<Option<AdminTask>, AppError> {
    let Some(addr) = config.admin.addr()? else {
        return Ok(None);
    };
    let admin = Admin {
        counters: counters.clone(),
        store: store.clone(),
        store_path: config.store.file().map(Path::to_path_buf),
        head: head.subscribe(),
        live: live.subscribe(),
        source: config.source.uri().to_string(),
        poll_alert_after: config.has_history().then_some(config.poll.alert_after.0),
        sinks: config
            .sinks
            .iter()
            .map(|s| SinkWatch {
                name: s.name.clone(),
                alert_after: s.alert_after.0,
            })
            .collect(),
        token: config.admin.token.clone(),
        pair,
    };
    let stop = shutdown.child_token();
    let (bound, server) = admin.serve(addr, stop.clone()).await?;
    let (counters, shutdown) = (counters.clone(), shutdown.clone());
    let task = tokio::spawn(async move {
        if let Err(e) = server.await {
            tracing::error!(error = %crate::error_chain(&e), "admin endpoint failed; shutting down");
            counters.fail(format!("admin: {e}"));
            shutdown.cancel();
        }
    });
    Ok(Some(AdminTask { bound, stop, task }))
}

/// What every term of the pipeline runs with.
struct Pipeline<'a> {
    config: &'a Config,
    options: &'a RunOptions,
    store: &'a Store,
    counters: &'a Arc<Counters>,
    head: &'a watch::Sender<Head>,
    live: &'a watch::Sender<Live>,
}

/// Why a term ended abnormally, and whether it failed to start.
type TermEnd = (Option<String>, Result<(), AppError>);

impl Pipeline<'_> {
    /// Records the admin endpoint's address for `status`, which asks the
    /// process that runs the pipeline (a pair's leader).
    async fn record_admin(&self, bound: Option<std::net::SocketAddr>) -> Result<(), AppError> {
        if let Some(bound) = bound {
            let recorded = self.store.record_admin(bound).await;
            recorded.map_err(crate::admin::AdminError::Record)?;
        }
        Ok(())
    }

    /// A Postgres pair member's life: stand by until this process leads,
    /// run the pipeline for the term, and when the term ends without a
    /// shutdown (the lease lost, the database gone) stand by again, one
    /// lease TTL out of the race, so the other process leads first. Only
    /// a start-up error other than the store's ends the process.
    async fn lead_terms(
        &self,
        lease: Lease,
        role: &watch::Sender<Role>,
        admin: Option<std::net::SocketAddr>,
        shutdown: &CancellationToken,
    ) -> TermEnd {
        let (ttl, renew) = self.config.store.lease();
        let mut sit_out = Duration::ZERO;
        loop {
            let Some(leading) = lead(&lease, renew, role, sit_out, shutdown).await else {
                // A standby stopped: it reports the store's head, the leader's.
                if let Ok(seq) = self.store.head().await {
                    self.head.send_modify(|h| h.seq = seq);
                }
                return (None, Ok(()));
            };
            let term = shutdown.child_token();
            let (failure, started) = match self.record_admin(admin).await {
                Ok(()) => self.term(Some(&leading), &term, shutdown).await,
                Err(e) => (None, Err(e)),
            };
            // Only now, with the last commit made: the other takes over at once.
            leading.stop.cancel();
            let _ = leading.task.await;
            self.live.send_replace(Live::default());
            let why = match (failure, started) {
                (failure, started) if shutdown.is_cancelled() => return (failure, started),
                (_, Err(e)) if !matches!(e, AppError::Store(_) | AppError::Admin(_)) => {
                    return (None, Err(e));
                }
                (_, Err(e)) => crate::error_chain(&e),
                (failure, Ok(())) => failure.unwrap_or_else(|| "the pipeline stopped".into()),
            };
            tracing::warn!(reason = %why, sit_out = ?ttl,
                "this process no longer leads; standing by (the other process may take over first)");
            self.counters.clear_failure();
            sit_out = ttl;
        }
    }

    /// Runs the pipeline once: until `stop` (or a task fails, which
    /// cancels `stop`), then drains it within `shutdown_timeout`. As a
    /// pair's leader, every write is fenced with the term's epoch, and the
    /// term ends as soon as the lease is lost. `--exit-idle` cancels
    /// `shutdown`, the whole process's.
    async fn term(
        &self,
        leading: Option<&Leading>,
        stop: &CancellationToken,
        shutdown: &CancellationToken,
    ) -> TermEnd {
        let (config, store, counters) = (self.config, self.store, self.counters);
        let (acks_tx, acks_rx) = mpsc::unbounded_channel();
        let stream = StreamSettings {
            order: config.stream.order,
            rule: Rule {
                release: config.stream.release,
                settle_us: config.stream.settle.0.as_micros() as i64,
                max_hold_us: config.stream.max_hold.0.as_micros() as i64,
                has_poller: config.has_history(),
            },
            live: self.live.subscribe(),
        };
        let plan = WriterPlan {
            source: config.source.uri().to_string(),
            queue: config.mqtt.queue,
            counters: counters.clone(),
            acks: Some(acks_tx),
            stream,
            retention: Retention {
                keep_us: config.store.retention.0.as_micros() as i64,
                sinks: config.sinks.iter().map(|s| s.name.clone()).collect(),
                poll_guard_us: config
                    .has_history()
                    .then(|| 2 * config.poll.overlap.0.as_micros() as i64),
            },
            fence: leading.map(|l| l.epoch),
            head: self.head.clone(),
        };
        let (writer, channels) = match Writer::new(store, &config.store, plan).await {
            Ok(w) => w,
            Err(e) => return (None, Err(e.into())),
        };
        tracing::info!(store = %config.store.location(), head = channels.head.borrow().seq, "store open");
        if config.has_history() {
            // Until the first run verifies something, the poller counts as
            // failing (for /readyz and the metrics), so a poller that never
            // gets going is noticed after poll.alert_after.
            counters.poll_started(now_us());
        }

        let mut tasks: JoinSet<TaskResult> = JoinSet::new();
        if let Some(leading) = leading {
            let (mut role, stop) = (leading.role.clone(), stop.clone());
            tasks.spawn(async move {
                // A dropped sender (the lease task gone) is as lost.
                tokio::select! {
                    _ = role.wait_for(|r| *r == Role::Standby) => ("leader lease".into(), Err("this process no longer leads the store \
                        (the lease was lost or not renewed in time): stopping, so that only \
                        the new leader writes".into())),
                    _ = stop.cancelled() => ("leader lease".into(), Ok(())),
                }
            });
        }
        tasks.spawn(async move {
            (
                "writer".into(),
                writer.run().await.map_err(|e| crate::error_chain(&e)),
            )
        });
        let checkpointer = store.clone().run_checkpointer(stop.clone());
        tasks.spawn(async move {
            let r = checkpointer.await;
            ("checkpointer".into(), r.map_err(|e| crate::error_chain(&e)))
        });
        for sink in &config.sinks {
            let task = SinkTask {
                config: sink.clone(),
                shutdown: stop.clone(),
                store: store.clone(),
                writer: channels.handle.clone(),
                head: channels.head.clone(),
                source_uri: config.source.uri().to_string(),
                source_name: config.source.name.clone(),
                counters: counters.clone(),
                stats: counters.sink(&sink.name),
                retry_after_max: config.http.retry_after_max.0,
            };
            let name = format!("sink {}", sink.name);
            tasks.spawn(async move {
                (
                    name,
                    task.run()
                        .await
                        .map(drop)
                        .map_err(|e| crate::error_chain(&e)),
                )
            });
        }
        let started = start_sources(
            config,
            &mut tasks,
            store,
            channels,
            self.live.clone(),
            acks_rx,
            counters,
            stop,
        )
        .await;
        if let Err(e) = &started {
            tracing::error!(error = %crate::error_chain(e), "start-up failed; shutting down");
            stop.cancel();
        }
        if let Some(idle) = self.options.exit_idle {
            spawn_idle_watch(&mut tasks, idle, config, counters, stop, shutdown);
        }
        let failure = supervise(&mut tasks, stop, config.shutdown_timeout.0, counters).await;
        (failure, started)
    }
}

/// This process in a pair's lease, e.g. `host-a:4242`.
fn holder_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("{}:{}", host.trim(), std::process::id())
}

/// This process leading a Postgres store: the epoch its writes are fenced
/// with, and the lease task that keeps (and at the end releases) it.
struct Leading {
    epoch: i64,
    role: watch::Receiver<Role>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

/// After `sit_out`, runs the lease (publishing this process's role on
/// `role`) and waits, as a standby, until this process leads; `None` if
/// `shutdown` comes first.
async fn lead(
    lease: &Lease,
    renew: Duration,
    role: &watch::Sender<Role>,
    sit_out: Duration,
    shutdown: &CancellationToken,
) -> Option<Leading> {
    tokio::select! {
        _ = tokio::time::sleep(sit_out) => {}
        _ = shutdown.cancelled() => return None,
    }
    let mut watch = role.subscribe();
    let stop = CancellationToken::new();
    let task = tokio::spawn(lease.clone().run(renew, role.clone(), stop.clone()));
    let mut announced = false;
    loop {
        let now = *watch.borrow_and_update();
        if let Role::Leader(term) = now {
            return Some(Leading {
                epoch: term.epoch,
                role: watch,
                stop,
                task,
            });
        }
        if !announced && let Ok(Some(h)) = lease.holder().await {
            if h.live {
                tracing::info!(leader = %h.holder, since = %crate::event::rfc3339_us(h.acquired_at_us),
                    "standing by: another gapless leads this store");
            }
            announced = true;
        }
        tokio::select! {
            _ = watch.changed() => {}
            _ = shutdown.cancelled() => {
                stop.cancel();
                let _ = task.await;
                return None;
            }
        }
    }
}

/// Logs in (VCD), then starts the pollers, the schema registry and the MQTT
/// source. Returns once they run; a login cancelled by shutdown is not an error.
#[allow(clippy::too_many_arguments)]
async fn start_sources(
    config: &Config,
    tasks: &mut JoinSet<TaskResult>,
    store: &Store,
    channels: crate::store::WriterChannels,
    live_tx: watch::Sender<Live>,
    acks_rx: mpsc::UnboundedReceiver<Vec<crate::store::Receipt>>,
    counters: &Arc<Counters>,
    shutdown: &CancellationToken,
) -> Result<(), AppError> {
    let writer_handle = channels.handle;
    // With a VCD login, MQTT uses the session's token; log in before anything connects.
    let credentials = match config.vcd_login() {
        Some(login) => {
            let client = Arc::new(VcdClient::new(
                login.clone(),
                counters.clone(),
                (&config.http).into(),
            )?);
            let Some((credentials, refresher)) =
                session::start(client.clone(), config.mqtt.auth, shutdown.clone()).await?
            else {
                return Ok(());
            };
            tasks.spawn(async move {
                (
                    "vcd session".into(),
                    refresher.await.map_err(|e| crate::error_chain(&e)),
                )
            });
            spawn_poller(
                tasks,
                client,
                config,
                store,
                &channels.ingest,
                &live_tx,
                counters,
                shutdown,
            );
            credentials
        }
        None => Credentials::fixed(MqttAuth {
            username: config.mqtt.username.clone(),
            password: config.mqtt.password.clone(),
            bearer: None,
        }),
    };
    let scaleit = match &config.source.kind {
        SourceKind::Scaleit(s) => Some(s),
        _ => None,
    };
    let schemas = match scaleit {
        Some(s) => SchemaRegistry::from_config(s, counters.clone())
            .map_err(|e| AppError::Schema(e.to_string()))?,
        None => None,
    };
    if let Some(registry) = &schemas {
        let registry = registry.clone();
        let (store, writer, shutdown) = (store.clone(), writer_handle.clone(), shutdown.clone());
        tasks.spawn(async move {
            let r = registry.run(store, writer, shutdown).await;
            (
                "schema registry".into(),
                r.map_err(|e| crate::error_chain(&e)),
            )
        });
    }
    let parser = Parser::from_config(&config.source, schemas.clone());
    let settler = schemas.clone().map(|registry| Settler {
        registry,
        store: store.clone(),
        writer: writer_handle.clone(),
    });
    drop(writer_handle);
    if let Some(s) = scaleit
        && let Some(history) = ScaleitHistory::from_config(s, settler, (&config.http).into())?
    {
        spawn_poller(
            tasks,
            Arc::new(history),
            config,
            store,
            &channels.ingest,
            &live_tx,
            counters,
            shutdown,
        );
    }
    let continuity = match config.has_history() {
        true => None,
        false => Some(Continuity::resume(store.last_mqtt_received_us().await?)),
    };
    let source = MqttSource {
        config: config.mqtt.clone(),
        parser,
        credentials,
        counters: counters.clone(),
        ingest: channels.ingest,
        live: live_tx,
        max_skew_us: config.source.max_skew_us(),
        name: config.source.uri().to_string(),
        started_at_us: crate::event::now_us(),
        continuity,
    };
    let source_shutdown = shutdown.clone();
    tasks.spawn(async move {
        let r = source.run(acks_rx, source_shutdown).await;
        ("mqtt source".into(), r.map_err(|e| crate::error_chain(&e)))
    });
    Ok(())
}

/// `--exit-idle`: stops the whole process (`shutdown`) once it is idle
/// ([`is_idle`]); ends with the term (`stop`).
fn spawn_idle_watch(
    tasks: &mut JoinSet<TaskResult>,
    idle: Duration,
    config: &Config,
    counters: &Arc<Counters>,
    stop: &CancellationToken,
    shutdown: &CancellationToken,
) {
    let (counters, stop, shutdown) = (counters.clone(), stop.clone(), shutdown.clone());
    let settle_us = config.stream.settle.0.as_micros() as i64;
    tasks.spawn(async move {
        let idle_us = idle.as_micros() as i64;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                _ = stop.cancelled() => return ("idle watch".into(), Ok(())),
            }
            if is_idle(&counters.snapshot(), now_us(), idle_us, settle_us) {
                tracing::info!(idle = ?idle, "no message and no delivery for the idle period; stopping");
                shutdown.cancel();
                return ("idle watch".into(), Ok(()));
            }
        }
    });
}

/// `--exit-idle`: a message has arrived, and for `idle_us` nothing has
/// arrived and no sink has delivered. A sink still catching up on a drained
/// backlog keeps the run going, so shutdown does not start with a long
/// delivery left for `shutdown_timeout` to cut (exit 1). A sink that stopped
/// delivering (a webhook that is down) does not.
///
/// The last arrival counts from when the live watermark passes it
/// (`settle` later): until then the stream holds it, and an idle period
/// shorter than `settle` would stop the run with it unreleased.
fn is_idle(s: &crate::metrics::Snapshot, now: i64, idle_us: i64, settle_us: i64) -> bool {
    s.last_received_us > 0
        && now - (s.last_received_us + settle_us).max(s.last_delivered_us) > idle_us
}

/// Starts the gap poller over `history`.
#[allow(clippy::too_many_arguments)]
fn spawn_poller<H: History>(
    tasks: &mut JoinSet<TaskResult>,
    history: Arc<H>,
    config: &Config,
    store: &Store,
    ingest: &mpsc::Sender<crate::store::Ingest>,
    live: &watch::Sender<Live>,
    counters: &Arc<Counters>,
    shutdown: &CancellationToken,
) {
    let poller = Poller {
        history,
        store: store.clone(),
        ingest: ingest.clone(),
        source: config.source.uri().to_string(),
        config: config.poll.clone(),
        counters: counters.clone(),
        live: Some(live.subscribe()),
        max_skew_us: config.source.max_skew_us(),
        retention_us: config.history_retention().map(|r| r.as_micros() as i64),
    };
    let shutdown = shutdown.clone();
    tasks.spawn(async move {
        let r = poller.run(shutdown).await;
        ("poller".into(), r.map_err(|e| crate::error_chain(&e)))
    });
}

async fn report(
    store: &Store,
    counters: &Counters,
    head: i64,
    failure: Option<String>,
) -> Result<RunReport, AppError> {
    let in_store = store.counts().await?;
    store.close().await;
    Ok(RunReport {
        counters: counters.snapshot(),
        head,
        events_in_store: in_store.events,
        rejected_in_store: in_store.rejected,
        peak_rss_kib: peak_rss_kib(),
        failure,
    })
}

/// Waits for every task; the first failure cancels the others. After
/// cancellation the remaining tasks get `timeout` to drain, then are aborted.
async fn supervise(
    tasks: &mut JoinSet<TaskResult>,
    shutdown: &CancellationToken,
    timeout: Duration,
    counters: &Counters,
) -> Option<String> {
    let failed = |what: String| {
        counters.fail(what);
        shutdown.cancel();
    };
    let mut deadline: Option<tokio::time::Instant> = None;
    loop {
        let next = match deadline {
            None => tokio::select! {
                n = tasks.join_next() => n,
                _ = shutdown.cancelled() => {
                    tracing::info!("shutting down: draining the pipeline");
                    deadline = Some(tokio::time::Instant::now() + timeout);
                    continue;
                }
            },
            Some(d) => match tokio::time::timeout_at(d, tasks.join_next()).await {
                Ok(n) => n,
                Err(_) => {
                    tracing::error!(timeout = ?timeout, remaining = tasks.len(),
                        "shutdown timed out; aborting the remaining tasks");
                    tasks.abort_all();
                    counters.fail("shutdown timed out".into());
                    break;
                }
            },
        };
        let Some(joined) = next else { break };
        let (name, result) = match joined {
            Ok(r) => r,
            Err(e) => ("task".into(), Err(format!("panicked: {e}"))),
        };
        match result {
            Ok(()) if shutdown.is_cancelled() => tracing::debug!(task = %name, "stopped"),
            Ok(()) => {
                tracing::error!(task = %name, "stopped unexpectedly");
                failed(format!("{name} stopped unexpectedly"));
            }
            Err(e) => {
                tracing::error!(task = %name, error = %e, "task failed; stopping the pipeline");
                failed(format!("{name}: {e}"));
            }
        }
    }
    counters.failure()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_idle_waits_for_sinks_that_catch_up() {
        let s = |received, delivered| crate::metrics::Snapshot {
            last_received_us: received,
            last_delivered_us: delivered,
            ..Default::default()
        };
        let (idle, settle) = (2_000_000, 0);
        let now = 100_000_000;
        let is_idle = |s| is_idle(&s, now, idle, settle);
        assert!(!is_idle(s(0, 0)), "nothing arrived yet");
        assert!(!is_idle(s(now - 1_000_000, 0)), "arrived lately");
        assert!(
            !is_idle(s(now - 60_000_000, now - 500_000)),
            "a sink is still delivering the backlog"
        );
        assert!(is_idle(s(now - 60_000_000, now - 3_000_000)));
        assert!(
            is_idle(s(now - 3_000_000, 0)),
            "a sink that never delivers does not hold the run"
        );
    }

    /// The stream holds the last arrival for `settle`: the idle period
    /// starts when it can have been released, not when it arrived.
    #[test]
    fn exit_idle_counts_from_when_the_last_arrival_is_released() {
        let last = crate::metrics::Snapshot {
            last_received_us: 10_000_000,
            last_delivered_us: 9_000_000,
            ..Default::default()
        };
        let (idle, settle) = (2_000_000, 2_000_000);
        assert!(!is_idle(&last, 13_000_000, idle, settle), "still held");
        assert!(!is_idle(&last, 14_000_000, idle, settle));
        assert!(is_idle(&last, 14_000_001, idle, settle));
    }

    #[tokio::test]
    async fn a_panicking_task_fails_the_run_and_health() {
        let mut tasks: JoinSet<TaskResult> = JoinSet::new();
        let shutdown = CancellationToken::new();
        let counters = Counters::default();
        let s = shutdown.clone();
        tasks.spawn(async move {
            s.cancelled().await;
            ("steady".into(), Ok(()))
        });
        tasks.spawn(async { panic!("boom") });
        let failure = supervise(&mut tasks, &shutdown, Duration::from_secs(5), &counters).await;
        assert!(
            failure.as_deref().is_some_and(|f| f.contains("panicked")),
            "{failure:?}"
        );
        assert!(shutdown.is_cancelled());
        assert!(counters.failure().is_some());
    }
}
