//! Operator commands over the store: `tail`, `replay`, `dlq`.
//!
//! They work whether or not the daemon runs: reads go through SQLite's WAL
//! beside the daemon, and changes are requests (`sink_requests`, the
//! `retry` mark of a dead letter) that the daemon's sink applies — at once
//! when it runs, at its next start otherwise — so the CLI never races the
//! sink for its cursor.

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use crate::config::Config;
use crate::store::{RejectedRow, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("no sink named `{0}` in the config (sinks: {1})")]
    UnknownSink(String, String),
    #[error("--from-seq must be at least 1")]
    BadSeq,
    #[error(
        "--from-seq {from} is past the stream's head (seq {head}): the sink would skip every event up to it\n  hint: pick a seq from 1 to {next}; `gapless status` shows the head"
    )]
    PastHead { from: i64, head: i64, next: i64 },
    #[error("writing output: {0}")]
    Io(#[from] std::io::Error),
}

/// Checks that `sink` is configured.
pub fn check_sink(config: &Config, sink: &str) -> Result<(), OpsError> {
    if config.sinks.iter().any(|s| s.name == sink) {
        return Ok(());
    }
    let names: Vec<&str> = config.sinks.iter().map(|s| s.name.as_str()).collect();
    Err(OpsError::UnknownSink(sink.to_string(), names.join(", ")))
}

/// Prints the released stream from `from_seq` as CloudEvents JSON lines;
/// with `follow`, keeps printing new events until interrupted.
pub async fn tail(
    config: &Config,
    from_seq: i64,
    follow: bool,
    out: &mut impl Write,
) -> Result<(), OpsError> {
    if from_seq < 1 {
        return Err(OpsError::BadSeq);
    }
    let store = Store::open(&config.store).await?;
    let mut cursor = from_seq - 1;
    loop {
        let events = store.released_after(cursor, 1000).await?;
        for e in &events {
            writeln!(out, "{}", e.to_cloudevent(config.source.uri()))?;
        }
        out.flush()?;
        match events.last() {
            Some(last) => cursor = last.seq,
            None if follow => tokio::time::sleep(Duration::from_millis(250)).await,
            None => break,
        }
    }
    store.close().await;
    Ok(())
}

/// Asks `sink` to deliver again from `from_seq` (and re-enables it if disabled).
pub async fn replay(config: &Config, sink: &str, from_seq: i64) -> Result<(), OpsError> {
    check_sink(config, sink)?;
    if from_seq < 1 {
        return Err(OpsError::BadSeq);
    }
    let store = Store::open(&config.store).await?;
    let head = store.head().await?;
    if from_seq > head + 1 {
        store.close().await;
        return Err(OpsError::PastHead {
            from: from_seq,
            head,
            next: head + 1,
        });
    }
    store.request_replay(sink, from_seq).await?;
    store.close().await;
    Ok(())
}

/// What `gapless dlq` does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DlqAction {
    List,
    Retry,
    /// Forget them; only those recorded longer ago than this, if given.
    Purge {
        older_than: Option<std::time::Duration>,
    },
}

/// Lists, retries or purges a sink's dead letters; prints what it did.
pub async fn dlq(
    config: &Config,
    sink: &str,
    action: DlqAction,
    out: &mut impl Write,
) -> Result<(), OpsError> {
    check_sink(config, sink)?;
    let store = Store::open(&config.store).await?;
    match action {
        DlqAction::List => {
            let letters = store.dead_letters(sink, false).await?;
            writeln!(
                out,
                "{:>8}  {:<36}  {:>8}  {:>6}  {:<24}  error",
                "seq", "event id", "attempts", "status", "at"
            )?;
            for d in &letters {
                writeln!(
                    out,
                    "{:>8}  {:<36}  {:>8}  {:>6}  {:<24}  {}{}",
                    d.seq,
                    d.event_id,
                    d.attempts,
                    d.last_status.map(|s| s.to_string()).unwrap_or_default(),
                    crate::event::rfc3339_us(d.at_us),
                    d.last_error,
                    if d.retry { "  (retry requested)" } else { "" }
                )?;
            }
            writeln!(out, "{} dead letter(s) for sink `{sink}`", letters.len())?;
        }
        DlqAction::Retry => {
            let n = store.dlq_retry(sink).await?;
            writeln!(
                out,
                "{n} dead letter(s) of sink `{sink}` marked for redelivery"
            )?;
        }
        DlqAction::Purge { older_than } => {
            let before =
                older_than.map_or(i64::MAX, |d| crate::event::now_us() - d.as_micros() as i64);
            let n = store.dlq_purge(sink, before).await?;
            writeln!(out, "{n} dead letter(s) of sink `{sink}` purged")?;
        }
    }
    store.close().await;
    Ok(())
}

/// One sink in `gapless status`.
#[derive(Debug, serde::Serialize)]
pub struct SinkStatus {
    pub name: String,
    pub kind: String,
    pub cursor: i64,
    /// Released events this sink has not delivered yet.
    pub lag: i64,
    pub dead_letters: i64,
    pub disabled: Option<String>,
    /// A `gapless replay` the running sink has not picked up yet: its seq.
    pub replay_from: Option<i64>,
}

/// Every configured sink's position against `head`, as the store says.
/// `status` and its live view (`--watch`) read the same.
pub(crate) async fn sink_statuses(
    config: &Config,
    store: &Store,
    head: i64,
) -> Result<Vec<SinkStatus>, OpsError> {
    let mut sinks = Vec::with_capacity(config.sinks.len());
    for s in &config.sinks {
        let cursor = store.cursor(&s.name).await?;
        sinks.push(SinkStatus {
            name: s.name.clone(),
            kind: s.kind.name().to_string(),
            cursor,
            lag: head - cursor,
            dead_letters: store.dead_letter_count(&s.name).await?,
            disabled: store.sink_disabled(&s.name).await?,
            replay_from: store.replay_request(&s.name).await?,
        });
    }
    Ok(sinks)
}

/// What `gapless status` shows.
#[derive(Debug, serde::Serialize)]
pub struct Status {
    pub store: String,
    pub store_bytes: u64,
    pub head_seq: i64,
    pub events: i64,
    pub unreleased: i64,
    pub late: i64,
    pub rejected: i64,
    pub verified_until: Option<String>,
    /// Seconds between now and the verified watermark.
    pub verified_age_s: Option<f64>,
    /// What the stream can claim: verified against a history, or MQTT only.
    pub completeness: String,
    /// ScaleIT: events stored but held back until their schema is fetched.
    pub pending_validation: i64,
    pub sinks: Vec<SinkStatus>,
    /// Rejected messages kept, per reason.
    pub rejected_by_reason: Vec<(String, i64)>,
    pub last_rejected: Vec<RejectedRow>,
    /// The newest gap markers (events may be missing in their spans).
    pub last_gaps: Vec<crate::store::GapRow>,
    /// What the running daemon's admin endpoint says (`/readyz`): MQTT
    /// connection and subscription, poller, sinks. The store cannot tell.
    pub daemon: String,
    /// Where that endpoint answers (with port 0 asked: the port it bound).
    pub admin: Option<AdminAddr>,
    /// A Postgres store: which process of the pair holds the lease.
    pub leader: Option<Leader>,
}

/// The holder of a Postgres store's leader lease, as `status` shows it.
#[derive(Debug, serde::Serialize)]
pub struct Leader {
    /// `host:pid` of the leading process.
    pub holder: String,
    pub epoch: i64,
    /// When its term began (RFC 3339).
    pub since: String,
    /// Unexpired when read: `false` means nobody leads right now.
    pub live: bool,
}

/// A client for the daemon's own admin endpoint: short timeout, no proxy.
fn admin_client() -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(3))
        .no_proxy()
        .build()
}

/// Asks a daemon's `/healthz` at `admin` (a base URL): its answer when it
/// is 200, else why not.
pub async fn health(admin: &str) -> Result<String, String> {
    let url = format!("{}/healthz", admin.trim_end_matches('/'));
    let client = admin_client().map_err(|e| e.to_string())?;
    let resp = client
        .get(&url)
        .send()
        .await
        .map_err(|e| format!("{url}: {}", crate::error_chain(&e.without_url())))?;
    let ok = resp.status().is_success();
    let body = resp.text().await.unwrap_or_default();
    if ok {
        Ok(body)
    } else {
        Err(format!("{url}: {body}"))
    }
}

/// Where a daemon's admin endpoint answers.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct AdminAddr {
    pub addr: SocketAddr,
    /// With port 0 asked: the process that bound it (a restarted daemon
    /// records its own; until then this names the previous one).
    pub pid: Option<i64>,
}

/// Where the daemon's admin endpoint answers: `admin.listen`, or for port
/// 0 the address the daemon recorded when it bound. `None` when it is off.
pub(crate) async fn admin_addr(
    config: &Config,
    store: &Store,
) -> Result<Option<AdminAddr>, String> {
    let Some(mut addr) = config.admin.addr().map_err(|e| e.to_string())? else {
        return Ok(None);
    };
    let mut pid = None;
    if addr.port() == 0 {
        let (bound, by) = match store.admin_addr().await {
            Ok(Some(row)) => row,
            Ok(None) => return Err("admin.listen asks for any port and none is recorded".into()),
            Err(e) => return Err(e.to_string()),
        };
        addr = bound.parse().map_err(|e| format!("{bound}: {e}"))?;
        pid = Some(by);
    }
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    Ok(Some(AdminAddr { addr, pid }))
}

/// Asks the daemon's `/readyz` (when `admin.listen` is set) how it is: the
/// MQTT connection, the poller and the sinks live only in its memory.
pub(crate) async fn daemon_state(
    config: &Config,
    admin: &Result<Option<AdminAddr>, String>,
) -> String {
    let addr = match admin {
        Ok(Some(a)) => a.addr,
        Ok(None) => return "unknown (admin.listen is off)".into(),
        Err(e) => return format!("unknown ({e})"),
    };
    let url = format!("http://{addr}/readyz");
    let client = admin_client();
    // The details need the admin token, when one is set and readable here.
    let token = config.admin.read_token().ok().flatten();
    let answer = match client {
        Ok(c) => {
            let request = c.get(&url);
            match &token {
                Some(t) => request.bearer_auth(t.expose()),
                None => request,
            }
            .send()
            .await
        }
        Err(e) => return format!("unknown ({e})"),
    };
    match answer {
        Ok(r) => {
            let ready = r.status().is_success();
            let body = r.text().await.unwrap_or_default();
            let problems: Vec<&str> = body.lines().skip(1).collect();
            if ready && problems.is_empty() {
                format!("running at {addr}: ready (MQTT subscribed, poller and sinks healthy)")
            } else if ready {
                format!("running at {addr}: ready, {}", problems.join("; "))
            } else {
                format!("running at {addr}: NOT READY: {}", problems.join("; "))
            }
        }
        Err(_) => format!("not reachable at {addr} (not running, or another admin.listen)"),
    }
}

/// Reads the store's state (works while the daemon runs).
pub async fn status(config: &Config) -> Result<Status, OpsError> {
    let store = Store::open(&config.store).await?;
    let head = store.head().await?;
    let crate::store::StreamCounts {
        events,
        unreleased,
        late,
        rejected,
    } = store.stream_counts().await?;
    let verified = store.verified_until(config.source.uri()).await?;
    let sinks = sink_statuses(config, &store, head).await?;
    let last_rejected = store.last_rejected(5).await?;
    let last_gaps = store.last_gaps(5).await?;
    let rejected_by_reason = store
        .rejected_by_reason()
        .await?
        .into_iter()
        .map(|r| (r.reason, r.n))
        .collect();
    let pending_validation = store.pending_count().await?;
    let completeness = if config.has_history() {
        "verified: the poller checks the REST history for what MQTT missed".to_string()
    } else {
        "MQTT only: this source has no history endpoint, so messages lost while \
         disconnected are not recovered (no completeness claim)"
            .to_string()
    };
    let admin = admin_addr(config, &store).await;
    let leader = store.leader().await?.map(|h| Leader {
        holder: h.holder,
        epoch: h.epoch,
        since: crate::event::rfc3339_us(h.acquired_at_us),
        live: h.live,
    });
    store.close().await;
    let now = crate::event::now_us();
    Ok(Status {
        store: config.store.location(),
        store_bytes: config.store.file().map_or(0, crate::store::size_on_disk),
        head_seq: head,
        events,
        unreleased,
        late,
        rejected,
        verified_until: verified.map(crate::event::rfc3339_us),
        verified_age_s: verified.map(|v| (now - v) as f64 / 1e6),
        completeness,
        pending_validation,
        sinks,
        rejected_by_reason,
        last_rejected,
        last_gaps,
        daemon: daemon_state(config, &admin).await,
        admin: admin.ok().flatten(),
        leader,
    })
}

impl Status {
    /// The human rendering.
    pub fn render(&self) -> String {
        let mut s = format!(
            "daemon      {}\nstore       {} ({:.1} MiB)\nstream      head seq {}, {} events stored, {} waiting for release, {} released late\n",
            self.daemon,
            self.store,
            self.store_bytes as f64 / (1 << 20) as f64,
            self.head_seq,
            self.events,
            self.unreleased,
            self.late
        );
        s += &match (&self.verified_until, self.verified_age_s) {
            (Some(v), Some(age)) => format!("verified    up to {v} ({age:.0} s ago)\n"),
            _ => "verified    never (no poller, or it has not completed a window yet)\n".into(),
        };
        if let Some(l) = &self.leader {
            s += &format!(
                "leader      {} since {} (epoch {}{})\n",
                l.holder,
                l.since,
                l.epoch,
                if l.live {
                    ""
                } else {
                    ", expired: nobody leads now"
                }
            );
        }
        s += &format!("source      {}\n", self.completeness);
        if self.pending_validation > 0 {
            s += &format!(
                "validation  {} event(s) held back until their schema can be fetched\n",
                self.pending_validation
            );
        }
        s += "sinks\n";
        for k in &self.sinks {
            s += &format!(
                "  {:<16} {:<8} cursor {:>8}  lag {:>6}  dead letters {:>4}{}\n",
                k.name,
                k.kind,
                k.cursor,
                k.lag,
                k.dead_letters,
                k.disabled
                    .as_ref()
                    .map(|r| format!("  DISABLED: {r}"))
                    .unwrap_or_default()
            );
            if let Some(from) = k.replay_from {
                s += &format!("  {:<16} replay from seq {from} requested\n", "");
            }
        }
        s += &format!("rejected    {} kept", self.rejected);
        for (reason, n) in &self.rejected_by_reason {
            s += &format!(", {n} {reason}");
        }
        for r in &self.last_rejected {
            s += &format!(
                "\n  {}  {:<18} {}  {} ({} bytes)",
                crate::event::rfc3339_us(r.at_us),
                r.reason,
                r.topic,
                r.detail,
                r.size
            );
        }
        s += match self.last_gaps.len() {
            0 => "\ngaps        none marked",
            _ => "\ngaps        newest first (events may be missing in these spans)",
        };
        for g in &self.last_gaps {
            let closed = match (g.reason.as_str(), g.verified_at_us) {
                ("unverified", Some(at)) => {
                    format!(", verified at {}", crate::event::rfc3339_us(at))
                }
                ("unverified", None) => ", not verified yet".into(),
                _ => String::new(),
            };
            s += &format!(
                "\n  {:<16} {} .. {} ({:.1} s){}{}",
                g.reason,
                crate::event::rfc3339_us(g.from_us),
                crate::event::rfc3339_us(g.to_us),
                (g.to_us - g.from_us) as f64 / 1e6,
                g.events
                    .map(|n| format!(", {n} events released"))
                    .unwrap_or_default(),
                closed
            );
        }
        s + "\n"
    }
}
