//! `gapless demo`: the whole pipeline on embedded parts, with MQTT losing
//! events and the poller filling the gaps, checked against ground truth.
//!
//! Starts the VCD simulator and the in-process broker (which, like VCD,
//! admits only current session tokens), runs the real pipeline (the same
//! [`crate::app::run`] as the daemon: MQTT source, poller on a fast
//! schedule, event-time stream, a compact stdout sink and a file sink), lets
//! the simulator generate events while it drops and duplicates some of its
//! MQTT messages, adds noise (a `TASK` envelope, broken JSON, an oversized
//! body), and checks the file: every event the simulator created exactly
//! once, `seq` 1..N without a hole, and everything not flagged late in
//! (time, id) order.

pub mod plot;

use std::collections::HashSet;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::app::{self, RunOptions, RunReport};
use crate::config::Config;
use crate::metrics::Counters;
use gapless_sim::broker::{EmbeddedBroker, TokenAuth};
use gapless_sim::events::Noise;
use gapless_sim::publisher::Publisher;
use gapless_sim::vcd::{SimConfig, VcdSim};

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(transparent)]
    Broker(#[from] gapless_sim::broker::BrokerError),
    #[error(transparent)]
    Publish(#[from] gapless_sim::publisher::PublishError),
    #[error(transparent)]
    App(#[from] app::AppError),
    #[error("demo: {0}")]
    Io(#[from] std::io::Error),
    #[error("demo: the pipeline did not deliver everything within {0:?}")]
    Stalled(Duration),
}

/// What the demo generates.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// Events the simulator creates.
    pub events: u64,
    /// Events per second (`None`: all at once).
    pub rate: Option<f64>,
    /// Share of MQTT messages the simulator drops.
    pub drop_rate: f64,
    /// Share of MQTT messages it sends twice.
    pub dup_rate: f64,
    /// Where the store and the file go; `None`: a temporary directory.
    pub dir: Option<PathBuf>,
    /// Print every event on stdout (compact lines).
    pub show_events: bool,
    /// Where the SVG picture of the run goes.
    pub picture: PathBuf,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            events: 3000,
            rate: Some(150.0),
            drop_rate: 0.2,
            dup_rate: 0.05,
            dir: None,
            show_events: true,
            picture: std::env::temp_dir().join("gapless-demo.svg"),
        }
    }
}

/// The demo's result, checked against the simulator's ground truth.
#[derive(Debug)]
pub struct DemoOutcome {
    pub created: u64,
    pub mqtt_sent: u64,
    pub mqtt_dropped: u64,
    pub noise_rejected: u64,
    pub noise_skipped: u64,
    pub report: RunReport,
    pub file: PathBuf,
    /// The store and the file outlive the demo (`--keep`).
    pub kept: bool,
    pub check: Check,
    pub elapsed: Duration,
    /// The picture of the run, or why it could not be drawn.
    pub picture: Result<PathBuf, String>,
}

/// The file compared with the ground truth.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Check {
    /// Event lines (gap markers aside).
    pub lines: usize,
    /// Gap markers (`io.gapless.gap` / `io.gapless.verified` lines): they
    /// hold `seq`s of their own, so the `seq` check counts them.
    pub markers: usize,
    pub missing: usize,
    pub duplicated: usize,
    /// `seq` is 1..N with no hole.
    pub seq_ok: bool,
    /// Events not flagged late are in (time, id) order.
    pub order_ok: bool,
    pub late: usize,
}

impl DemoOutcome {
    pub fn passed(&self) -> bool {
        let c = &self.check;
        c.missing == 0
            && c.duplicated == 0
            && c.seq_ok
            && c.order_ok
            && self.report.failure.is_none()
            && self.report.counters.rejected == self.noise_rejected
            && self.report.counters.skipped == self.noise_skipped
    }

    /// The closing summary table.
    pub fn summary(&self) -> String {
        let c = &self.report.counters;
        let k = &self.check;
        let rows: Vec<(&str, String)> = vec![
            ("events created (simulator)", self.created.to_string()),
            ("MQTT messages sent", self.mqtt_sent.to_string()),
            ("  dropped on MQTT", self.mqtt_dropped.to_string()),
            (
                "  noise (rejected / skipped)",
                format!("{} / {}", self.noise_rejected, self.noise_skipped),
            ),
            ("received over MQTT", c.received.to_string()),
            ("recovered by the poller", c.recovered.to_string()),
            ("MQTT duplicates dropped", c.duplicates.to_string()),
            ("poll overlap (already stored)", c.poll_known.to_string()),
            ("stored", c.stored.to_string()),
            ("released late", c.late.to_string()),
            ("gap markers", k.markers.to_string()),
            ("delivered (all sinks)", c.delivered.to_string()),
            (
                "poll runs / logins",
                format!("{} / {}", c.poll_runs, c.logins),
            ),
            (
                "file",
                format!(
                    "{} ({} lines{})",
                    self.file.display(),
                    k.lines,
                    if self.kept {
                        ""
                    } else {
                        "; deleted on exit, keep it with --keep DIR"
                    }
                ),
            ),
            ("check: missing", k.missing.to_string()),
            ("check: duplicated", k.duplicated.to_string()),
            ("check: seq 1..N, no hole", ok(k.seq_ok)),
            (
                "check: order (time, id)",
                format!("{} ({} late)", ok(k.order_ok), k.late),
            ),
            (
                "picture",
                match &self.picture {
                    Ok(p) => p.display().to_string(),
                    Err(e) => format!("not drawn: {e}"),
                },
            ),
            ("elapsed", format!("{:.1?}", self.elapsed)),
        ];
        let mut s = String::from("\ngapless demo — summary\n");
        for (key, value) in rows {
            s += &format!("  {key:<30} {value}\n");
        }
        s += &format!(
            "  result: {}\n",
            if self.passed() { "PASS" } else { "FAIL" }
        );
        s += "\nnext: put the README's minimal config in gapless.toml, then \
              `gapless check-config -c gapless.toml && gapless run -c gapless.toml`\n";
        s
    }
}

fn ok(b: bool) -> String {
    if b { "ok" } else { "FAILED" }.into()
}

fn demo_config(sim: &VcdSim, broker: &EmbeddedBroker, dir: &Path, show_events: bool) -> Config {
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
url = "{url}"
org = "{org}"
user = "{user}"
password_file = "{password}"

[mqtt]
url = "{broker}"
client_id = "gapless-demo"
reconnect_max = "1s"

[poll]
schedule = "*/2 * * * * *"
overlap = "30s"
visibility_lag = "1s"
initial_lookback = "10s"

[stream]
order = "event-time"
release = "live"
settle = "4s"

[store]
path = "{store}"
synchronous = "normal"

[admin]
listen = ""

{stdout_sink}
[[sink]]
name = "file"
kind = "file"
path = "{file}"
"#,
        url = sim.url(),
        org = sim.config().org,
        user = sim.config().user,
        password = dir.join("vcd-password").display(),
        broker = broker.url(),
        store = dir.join("demo.db").display(),
        file = dir.join("events.jsonl").display(),
    );
    std::fs::write(dir.join("vcd-password"), &sim.config().password).expect("demo dir is writable");
    Config::parse(&text).expect("the demo config is valid")
}

/// The live progress line on stderr: redrawn in place on a terminal, a
/// plain line every few seconds otherwise (logs, CI).
struct Progress {
    tty: bool,
    last: Option<Instant>,
}

impl Progress {
    fn new() -> Self {
        Progress {
            tty: std::io::stderr().is_terminal(),
            last: None,
        }
    }

    fn show(&mut self, created: u64, c: &Counters, last: bool) {
        if !self.tty
            && !last
            && self
                .last
                .is_some_and(|t| t.elapsed() < Duration::from_secs(3))
        {
            return;
        }
        self.last = Some(Instant::now());
        let s = c.snapshot();
        let line = format!(
            "created {created} | via MQTT {} | recovered by poll {} | duplicates dropped {} | delivered {}",
            s.received, s.recovered, s.duplicates, s.delivered
        );
        let mut err = std::io::stderr().lock();
        let _ = match (self.tty, last) {
            (true, false) => write!(err, "\r\x1b[2K{line}"),
            (true, true) => writeln!(err, "\r\x1b[2K{line}"),
            (false, _) => writeln!(err, "{line}"),
        };
        let _ = err.flush();
    }
}

/// Runs the demo; the outcome says whether the check passed.
pub async fn run(opts: DemoOptions) -> Result<DemoOutcome, DemoError> {
    let started = Instant::now();
    let tmp = match &opts.dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            None
        }
        None => Some(tempfile::Builder::new().prefix("gapless-demo-").tempdir()?),
    };
    let dir = opts
        .dir
        .clone()
        .unwrap_or_else(|| tmp.as_ref().expect("set above").path().to_path_buf());
    let sim = VcdSim::start(SimConfig::default()).await?;
    let broker = EmbeddedBroker::start_on(
        ([127, 0, 0, 1], 0).into(),
        Some(TokenAuth::new(sim.clone())),
    )
    .await?;
    sim.connect_mqtt("127.0.0.1", broker.addr().port()).await?;
    sim.set_faults(|f| {
        f.mqtt_drop_rate = opts.drop_rate;
        f.mqtt_dup_rate = opts.dup_rate;
    });
    let config = demo_config(&sim, &broker, &dir, opts.show_events);
    let store_config = config.store.clone();
    let source = config.source.uri().to_string();
    let counters = Arc::new(Counters::default());
    let shutdown = CancellationToken::new();
    let t0 = crate::event::now_us();
    let pipeline = tokio::spawn(app::run(
        config,
        RunOptions::default(),
        counters.clone(),
        shutdown.clone(),
    ));
    wait_for(|| counters.subscribed.load(Relaxed) > 0, || {}).await?;
    // Only now: the pipeline has created and migrated the store (two pools
    // migrating one new file at once race).
    let sampler = tokio::spawn(sample_verified(
        store_config.clone(),
        source,
        shutdown.clone(),
    ));
    let progress = std::cell::RefCell::new(Progress::new());

    // Noise the broker carries besides events: one of each kind.
    let noise = [
        Noise::Task,
        Noise::BrokenJson,
        Noise::MissingId,
        Noise::Oversized(2 << 20),
    ];
    let mut noisy = Publisher::connect_as(
        "127.0.0.1",
        broker.addr().port(),
        "demo-noise",
        Some(("vcd-sim", "vcd-sim")),
    )
    .await?;
    noisy
        .publish_all(
            noise
                .iter()
                .enumerate()
                .map(|(i, n)| ("publish/demo/noise".to_string(), n.body(i as u64))),
            None,
        )
        .await?;
    noisy.disconnect().await;
    let noise_rejected = noise.iter().filter(|n| n.is_rejected()).count() as u64;
    let noise_skipped = noise.len() as u64 - noise_rejected;

    // Generate in 100 ms steps at the requested rate.
    let mut created = 0u64;
    let step = Duration::from_millis(100);
    let per_step = opts
        .rate
        .map_or(opts.events, |r| ((r / 10.0).ceil() as u64).max(1));
    let mut next = Instant::now();
    while created < opts.events {
        let n = per_step.min(opts.events - created);
        sim.create_events(n).await?;
        created += n;
        progress.borrow_mut().show(created, &counters, false);
        next += step;
        tokio::time::sleep_until(next.into()).await;
    }
    let file = dir.join("events.jsonl");
    let wanted = opts.events as usize;
    // A pipeline that ended (it failed) ends the wait: its error is the answer.
    wait_for(
        || count_lines(&file) >= wanted || pipeline.is_finished(),
        || progress.borrow_mut().show(created, &counters, false),
    )
    .await?;
    progress.borrow_mut().show(created, &counters, true);
    shutdown.cancel();
    let report = pipeline.await.expect("pipeline task")?;
    let verified = sampler.await.expect("sampler task");
    let drops = sim.stats().dropped_at_ms.lock().unwrap().clone();
    let picture = draw(&store_config, t0, verified, &drops, &opts.picture).await;
    let truth: HashSet<String> = sim.ground_truth().into_iter().collect();
    Ok(DemoOutcome {
        created,
        mqtt_sent: sim.stats().mqtt_published.load(Relaxed),
        mqtt_dropped: sim.stats().mqtt_dropped.load(Relaxed),
        noise_rejected,
        noise_skipped,
        report,
        check: check_file(&file, &truth)?,
        file,
        kept: tmp.is_none(),
        elapsed: started.elapsed(),
        picture,
    })
}

/// Samples the poller's verified watermark four times a second until
/// `stop`, for the picture: `(when, verified up to)` in µs.
async fn sample_verified(
    store: crate::config::StoreConfig,
    source: String,
    stop: CancellationToken,
) -> Vec<(i64, i64)> {
    let mut samples = Vec::new();
    let Ok(store) = crate::store::Store::open(&store).await else {
        return samples;
    };
    while !stop.is_cancelled() {
        if let Ok(Some(v)) = store.verified_until(&source).await {
            samples.push((crate::event::now_us(), v));
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            _ = stop.cancelled() => {}
        }
    }
    store.close().await;
    samples
}

/// Draws the run from the store (when each event arrived, how; the gap
/// markers), the drops the simulator injected and the watermark samples,
/// and writes the SVG to `path`. A picture that cannot be drawn is
/// reported, not fatal: the check is what the demo proves.
async fn draw(
    store: &crate::config::StoreConfig,
    t0_us: i64,
    verified: Vec<(i64, i64)>,
    drops_ms: &[i64],
    path: &Path,
) -> Result<PathBuf, String> {
    let secs = |us: i64| (us - t0_us) as f64 / 1e6;
    let store = crate::store::Store::open(store)
        .await
        .map_err(|e| e.to_string())?;
    let arrivals = store.arrivals().await.map_err(|e| e.to_string())?;
    let gaps = store.last_gaps(1000).await.map_err(|e| e.to_string())?;
    store.close().await;
    let of = |origin: &str| -> Vec<f64> {
        arrivals
            .iter()
            .filter(|(o, _)| o == origin)
            .map(|(_, at)| secs(*at))
            .collect()
    };
    let timeline = plot::Timeline {
        via_mqtt: of("mqtt"),
        via_poll: of("poll"),
        drops: drops_ms.iter().map(|ms| secs(ms * 1000)).collect(),
        verified: verified
            .iter()
            .map(|&(at, v)| (secs(at), secs(v)))
            .collect(),
        gaps: gaps
            .iter()
            .map(|g| (secs(g.from_us), secs(g.to_us)))
            .collect(),
    };
    std::fs::write(path, timeline.svg()?).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(path.to_path_buf())
}

/// How long the demo waits for the pipeline before calling it stalled.
const STALL: Duration = Duration::from_secs(60);

async fn wait_for(cond: impl Fn() -> bool, tick: impl Fn()) -> Result<(), DemoError> {
    let deadline = Instant::now() + STALL;
    while !cond() {
        if Instant::now() > deadline {
            return Err(DemoError::Stalled(STALL));
        }
        tick();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// Complete event lines in a sink file (0 if it does not exist yet); gap
/// markers are not events and are not counted.
pub fn count_lines(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .map(|t| {
            t.split_inclusive('\n')
                .filter(|l| l.ends_with('\n') && !l.contains(MARKER_ORIGIN))
                .count()
        })
        .unwrap_or(0)
}

/// How a gap marker's line shows its origin (`"origin":"gapless"`).
const MARKER_ORIGIN: &str = r#""origin":"gapless""#;

/// Compares the file with the ground truth.
pub fn check_file(path: &Path, truth: &HashSet<String>) -> std::io::Result<Check> {
    let text = std::fs::read_to_string(path)?;
    let mut seen = HashSet::new();
    let mut check = Check {
        seq_ok: true,
        order_ok: true,
        ..Default::default()
    };
    let mut last_in_order: Option<(String, String)> = None;
    for (n, line) in text.lines().enumerate() {
        let v: serde_json::Value = serde_json::from_str(line).map_err(std::io::Error::other)?;
        check.seq_ok &= v["seq"].as_i64() == Some(n as i64 + 1);
        if v["origin"] == crate::event::Origin::Gapless.as_str() {
            check.markers += 1;
            continue;
        }
        check.lines += 1;
        let id = v["id"].as_str().unwrap_or_default().to_string();
        if v["late"] == true {
            check.late += 1;
        } else {
            let key = (
                v["time"].as_str().unwrap_or_default().to_string(),
                id.clone(),
            );
            check.order_ok &= last_in_order.as_ref().is_none_or(|last| *last <= key);
            last_in_order = Some(key);
        }
        if !seen.insert(id) {
            check.duplicated += 1;
        }
    }
    check.missing = truth.difference(&seen).count();
    Ok(check)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `check_file` on files whose verdicts are known: it decides most
    /// end-to-end tests, so each of its counts is pinned here.
    fn check(lines: &[&str], truth: &[&str]) -> Check {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        let truth = truth.iter().map(|s| s.to_string()).collect();
        check_file(&path, &truth).unwrap()
    }

    fn line(seq: i64, id: &str, second: u32, extra: &str) -> String {
        format!(r#"{{"seq":{seq},"id":"{id}","time":"2026-01-01T00:00:{second:02}Z"{extra}}}"#)
    }

    #[test]
    fn check_file_counts_what_it_finds() {
        let good = [
            line(1, "a", 1, ""),
            line(2, "c", 3, ""),
            // Out of order, but flagged: not an order error.
            line(3, "b", 2, r#","late":true"#),
            r#"{"seq":4,"id":"gap-1","origin":"gapless"}"#.to_string(),
            line(5, "a", 4, ""),
        ];
        let good: Vec<&str> = good.iter().map(String::as_str).collect();
        let c = check(&good, &["a", "b", "c", "d"]);
        assert_eq!(
            (c.lines, c.markers, c.late, c.duplicated, c.missing),
            (4, 1, 1, 1, 1)
        );
        assert!(c.seq_ok && c.order_ok, "{c:?}");
    }

    #[test]
    fn check_file_sees_holes_and_disorder() {
        let hole = [line(1, "a", 1, ""), line(3, "b", 2, "")];
        let c = check(&[&hole[0], &hole[1]], &["a", "b"]);
        assert!(!c.seq_ok && c.order_ok, "{c:?}");

        let early = [line(1, "b", 2, ""), line(2, "a", 1, "")];
        let c = check(&[&early[0], &early[1]], &["a", "b"]);
        assert!(c.seq_ok && !c.order_ok, "{c:?}");

        // Same time: the id breaks the tie.
        let tie = [line(1, "b", 1, ""), line(2, "a", 1, "")];
        let c = check(&[&tie[0], &tie[1]], &["a", "b"]);
        assert!(!c.order_ok, "{c:?}");
        let tie = [line(1, "a", 1, ""), line(2, "b", 1, "")];
        assert!(check(&[&tie[0], &tie[1]], &["a", "b"]).order_ok);
    }
}
