//! `gapless demo`: the whole pipeline on embedded parts, checked against its
//! own ground truth.
//!
//! Starts the in-process broker, runs the real pipeline (the same
//! [`crate::app::run`] as the daemon) with a stdout and a file sink,
//! publishes sample VCD envelopes with duplicates and noise, and verifies
//! the file: every unique event exactly once, `seq` 1..N without a hole.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::app::{self, RunOptions, RunReport};
use crate::config::Config;
use crate::metrics::Counters;
use crate::sim::broker::EmbeddedBroker;
use crate::sim::events::{self, Noise};
use crate::sim::publisher::Publisher;

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(transparent)]
    Broker(#[from] crate::sim::broker::BrokerError),
    #[error(transparent)]
    Publish(#[from] crate::sim::publisher::PublishError),
    #[error(transparent)]
    App(#[from] app::AppError),
    #[error("demo: {0}")]
    Io(#[from] std::io::Error),
    #[error("demo: the pipeline did not take all messages within {0:?}")]
    Stalled(Duration),
}

/// What the demo publishes.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// Unique events.
    pub events: u64,
    /// Share of events published a second time (QoS 1 redelivery stand-in).
    pub dup_rate: f64,
    /// Publish rate in messages per second (`None`: as fast as possible).
    pub rate: Option<f64>,
    /// Where the store and the file go; `None`: a temporary directory.
    pub dir: Option<PathBuf>,
    /// Print every event on stdout (compact lines).
    pub show_events: bool,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            events: 300,
            dup_rate: 0.1,
            rate: Some(100.0),
            dir: None,
            show_events: true,
        }
    }
}

/// The demo's result, checked against the ground truth.
#[derive(Debug)]
pub struct DemoOutcome {
    pub published: usize,
    pub unique: u64,
    pub duplicates_sent: u64,
    pub noise_rejected: u64,
    pub noise_skipped: u64,
    pub report: RunReport,
    pub file: PathBuf,
    pub file_lines: usize,
    pub missing: usize,
    pub repeated: usize,
    pub seq_ok: bool,
    pub elapsed: Duration,
}

impl DemoOutcome {
    pub fn passed(&self) -> bool {
        self.missing == 0
            && self.repeated == 0
            && self.seq_ok
            && self.report.failure.is_none()
            && self.report.counters.rejected == self.noise_rejected
            && self.report.counters.skipped == self.noise_skipped
    }

    /// The closing summary table.
    pub fn summary(&self) -> String {
        let c = &self.report.counters;
        let row = |k: &str, v: String| format!("  {k:<28} {v}\n");
        let mut s = String::from("\ngapless demo — summary\n");
        s += &row("messages published", self.published.to_string());
        s += &row("  unique events", self.unique.to_string());
        s += &row("  duplicates", self.duplicates_sent.to_string());
        s += &row(
            "  noise (reject / skip)",
            format!("{} / {}", self.noise_rejected, self.noise_skipped),
        );
        s += &row("received by gapless", c.received.to_string());
        s += &row("stored (new events)", c.stored.to_string());
        s += &row("duplicates dropped", c.duplicates.to_string());
        s += &row("rejected (kept in store)", c.rejected.to_string());
        s += &row("skipped (not events)", c.skipped.to_string());
        s += &row("delivered (all sinks)", c.delivered.to_string());
        s += &row(
            "file",
            format!("{} ({} lines)", self.file.display(), self.file_lines),
        );
        s += &row("check: missing", self.missing.to_string());
        s += &row("check: duplicated", self.repeated.to_string());
        s += &row(
            "check: seq 1..N, no hole",
            if self.seq_ok { "ok" } else { "FAILED" }.into(),
        );
        s += &row("elapsed", format!("{:.2?}", self.elapsed));
        s += &format!(
            "  result: {}\n",
            if self.passed() { "PASS" } else { "FAIL" }
        );
        s
    }
}

fn demo_config(broker_url: &str, dir: &Path, show_events: bool) -> Config {
    let stdout_sink = if show_events {
        "[[sink]]\nname = \"console\"\nkind = \"stdout\"\nformat = \"compact\"\n"
    } else {
        ""
    };
    let text = format!(
        r#"
[source]
kind = "vcd"
name = "demo"
uri = "urn:gapless:demo"

[mqtt]
url = "{broker_url}"
topics = ["publish/#"]
client_id = "gapless-demo"
max_packet_size = "1MiB"

[store]
path = "{store}"
synchronous = "normal"

{stdout_sink}
[[sink]]
name = "file"
kind = "file"
path = "{file}"
"#,
        store = dir.join("demo.db").display(),
        file = dir.join("events.jsonl").display(),
    );
    Config::parse(&text).expect("the demo config is valid")
}

/// The messages to publish: events (some twice) interleaved with noise.
fn traffic(salt: u64, opts: &DemoOptions) -> (Vec<(String, Vec<u8>)>, u64, u64, u64) {
    let mut out = Vec::new();
    let base_us = crate::event::now_us() - 60_000_000;
    let dup_every = if opts.dup_rate > 0.0 {
        (1.0 / opts.dup_rate).round() as u64
    } else {
        0
    };
    let (mut dups, mut rejected, mut skipped) = (0, 0, 0);
    let noise = [
        Noise::Task,
        Noise::BrokenJson,
        Noise::MissingId,
        Noise::Oversized(2 << 20),
    ];
    for i in 0..opts.events {
        let ev = events::audit_event(salt, i, base_us + i as i64 * 1000);
        let body = events::envelope(&ev);
        out.push((events::topic(salt, i), body.clone()));
        if dup_every > 0 && i % dup_every == dup_every - 1 {
            out.push((events::topic(salt, i), body));
            dups += 1;
        }
        if i % 25 == 12 {
            let n = noise[(i / 25) as usize % noise.len()];
            out.push((events::topic(salt, i), n.body(i)));
            if n.is_rejected() {
                rejected += 1;
            } else {
                skipped += 1;
            }
        }
    }
    (out, dups, rejected, skipped)
}

/// Runs the demo; the outcome says whether the check passed.
pub async fn run(opts: DemoOptions) -> Result<DemoOutcome, DemoError> {
    let started = Instant::now();
    let broker = EmbeddedBroker::start().await?;
    let tmp = match &opts.dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            None
        }
        None => Some(tempfile::Builder::new().prefix("gapless-demo-").tempdir()?),
    };
    let dir = match (&opts.dir, &tmp) {
        (Some(d), _) => d.clone(),
        (None, Some(t)) => t.path().to_path_buf(),
        (None, None) => unreachable!("one of the two is set"),
    };
    let config = demo_config(&broker.url(), &dir, opts.show_events);
    let counters = Arc::new(Counters::default());
    let shutdown = CancellationToken::new();
    let pipeline = tokio::spawn(app::run(
        config,
        RunOptions::default(),
        counters.clone(),
        shutdown.clone(),
    ));

    wait_for(|| counters.subscribed.load(Relaxed) > 0).await?;

    let salt = crate::event::now_us() as u64;
    let (messages, duplicates_sent, noise_rejected, noise_skipped) = traffic(salt, &opts);
    let addr = broker.addr();
    let mut publisher = Publisher::connect(
        &addr.ip().to_string(),
        addr.port(),
        "gapless-demo-publisher",
    )
    .await?;
    let published = publisher.publish_all(messages, opts.rate).await?;
    publisher.disconnect().await;

    let sinks = if opts.show_events { 2 } else { 1 };
    wait_for(|| {
        let c = counters.snapshot();
        c.received as usize >= published && c.delivered >= opts.events * sinks
    })
    .await?;
    shutdown.cancel();
    let report = pipeline.await.expect("pipeline task")?;

    let file = dir.join("events.jsonl");
    let (file_lines, missing, repeated, seq_ok) = check_file(&file, salt, opts.events)?;
    Ok(DemoOutcome {
        published,
        unique: opts.events,
        duplicates_sent,
        noise_rejected,
        noise_skipped,
        report,
        file,
        file_lines,
        missing,
        repeated,
        seq_ok,
        elapsed: started.elapsed(),
    })
}

/// How long the demo waits for the pipeline before calling it stalled.
const STALL: Duration = Duration::from_secs(30);

async fn wait_for(cond: impl Fn() -> bool) -> Result<(), DemoError> {
    let deadline = Instant::now() + STALL;
    while !cond() {
        if Instant::now() > deadline {
            return Err(DemoError::Stalled(STALL));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Checks the file against the ground truth: (lines, missing, repeated, seq ok).
fn check_file(path: &Path, salt: u64, events: u64) -> std::io::Result<(usize, usize, usize, bool)> {
    let text = std::fs::read_to_string(path)?;
    let mut seen = HashSet::new();
    let mut repeated = 0;
    let mut seq_ok = true;
    let mut lines = 0;
    for (n, line) in text.lines().enumerate() {
        lines += 1;
        let v: serde_json::Value = serde_json::from_str(line).map_err(std::io::Error::other)?;
        if v["seq"].as_i64() != Some(n as i64 + 1) {
            seq_ok = false;
        }
        if !seen.insert(v["id"].as_str().unwrap_or_default().to_string()) {
            repeated += 1;
        }
    }
    let missing = (0..events)
        .filter(|i| !seen.contains(&events::event_id(salt, *i)))
        .count();
    Ok((lines, missing, repeated, seq_ok))
}
