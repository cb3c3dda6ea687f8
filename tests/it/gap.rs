//! The whole daemon with the gap poller: the VCD simulator (REST over HTTP,
//! events published on the in-process broker, which checks session tokens
//! like VCD) and the real gapless binary.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use gapless_sim::broker::{EmbeddedBroker, TokenAuth};
use gapless_sim::vcd::{SimConfig, VcdSim};

use crate::support::*;

const PASSWORD_ENV: &str = "GAPLESS_IT_VCD_PASSWORD";

/// The simulator, its broker (logins checked against the simulator's
/// tokens) and a gapless config pointing at both.
struct World {
    dir: tempfile::TempDir,
    sim: VcdSim,
    auth: Arc<TokenAuth>,
    broker: Option<EmbeddedBroker>,
    config: PathBuf,
    /// Set by [`World::on`]; `None` is SQLite.
    store: Option<TestStore>,
}

impl World {
    async fn new(sim_config: SimConfig) -> World {
        Self::with_config(sim_config, write_config).await
    }

    /// A world whose gapless keeps its events in `store`.
    async fn on(store: TestStore) -> World {
        let world = Self::new(SimConfig::default()).await;
        store.apply(&world.config);
        World {
            store: Some(store),
            ..world
        }
    }

    /// A world whose gapless config `write` writes (into the directory, for
    /// the simulator and its broker).
    async fn with_config(
        sim_config: SimConfig,
        write: fn(&Path, &VcdSim, &EmbeddedBroker) -> PathBuf,
    ) -> World {
        let dir = tempfile::tempdir().unwrap();
        let sim = VcdSim::start(sim_config).await.unwrap();
        let auth = TokenAuth::new(sim.clone());
        let broker = EmbeddedBroker::start_on(([127, 0, 0, 1], 0).into(), Some(auth.clone()))
            .await
            .unwrap();
        sim.connect_mqtt("127.0.0.1", broker.addr().port())
            .await
            .unwrap();
        let config = write(dir.path(), &sim, &broker);
        World {
            dir,
            sim,
            auth,
            broker: Some(broker),
            config,
            store: None,
        }
    }

    fn gapless(&self) -> Gapless {
        Gapless::start_env(
            self.dir.path(),
            &self.config,
            &[(PASSWORD_ENV, &self.sim.config().password)],
        )
    }

    fn file(&self) -> PathBuf {
        self.dir.path().join("events.jsonl")
    }

    /// Stops the broker and starts a new one on the same port (all MQTT state lost).
    async fn restart_broker(&mut self) {
        let addr = self.broker.take().unwrap().addr();
        // The old listener closes as its task ends: bind again until it has.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let broker = loop {
            match EmbeddedBroker::start_on(addr, Some(self.auth.clone())).await {
                Ok(broker) => break broker,
                Err(e) => assert!(std::time::Instant::now() < deadline, "{e}"),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        self.broker = Some(broker);
        self.sim
            .connect_mqtt("127.0.0.1", addr.port())
            .await
            .unwrap();
    }
}

fn write_config(dir: &Path, sim: &VcdSim, broker: &EmbeddedBroker) -> PathBuf {
    let path = dir.join("gapless.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[source]
kind = "vcd"
name = "sim"
url = "{url}"
org = "{org}"
user = "{user}"
password_env = "{PASSWORD_ENV}"

[mqtt]
url = "mqtt://127.0.0.1:{port}"
client_id = "gapless-gap-it"
reconnect_max = "1s"

[poll]                      # runs every second: these tests watch many runs
schedule = "* * * * * *"
overlap = "20s"
visibility_lag = "1s"

{tail}"#,
            url = sim.url(),
            org = sim.config().org,
            user = sim.config().user,
            port = broker.addr().port(),
            tail = store_and_file_sink(dir),
        ),
    )
    .unwrap();
    path
}

/// The minimal VCD config exactly as README.md shows it, pointed at the
/// simulator: its URL, user and password (in the variable README names),
/// and the two paths moved under the test's directory. Every other key is
/// left at its default, including the admin endpoint on 127.0.0.1:9464.
fn readme_config(dir: &Path, sim: &VcdSim, _broker: &EmbeddedBroker) -> PathBuf {
    let readme = include_str!("../../README.md");
    let block = readme
        .split("A minimal configuration for a real VCD")
        .nth(1)
        .and_then(|rest| rest.split("```toml\n").nth(1))
        .and_then(|rest| rest.split("\n```").next())
        .expect("README.md shows the minimal VCD config in a toml block");
    let root = dir.join("var/lib/gapless");
    let text = block
        .replace("https://vcd.example.com", &sim.url())
        .replace("\"gapless-svc\"", &format!("\"{}\"", sim.config().user))
        .replace("/var/lib/gapless", &root.display().to_string());
    assert!(text.contains(&sim.url()) && text.contains(&root.display().to_string()));
    let path = dir.join("gapless.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// The README's minimal config with every default: the store's directory
/// is created, the poller reads the audit trail, the first event comes out
/// about `visibility_lag` after the subscription (the catch-up poll, not
/// `max_hold`), an event MQTT dropped is delivered after the next scheduled
/// poll, and the admin endpoint answers ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_minimal_config_reconciles_with_every_default() {
    let world = World::with_config(SimConfig::default(), readme_config).await;
    let file = world.dir.path().join("var/lib/gapless/events.jsonl");
    // The default schedule ticks at second 0: a subscription in a minute's
    // last seconds has its window covered by that tick before the catch-up
    // run is due. Start early in a minute, so the catch-up is what runs.
    while chrono::Utc::now().timestamp() % 60 > 40 {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let mut gapless = Gapless::start_env(
        world.dir.path(),
        &world.config,
        &[("VCD_PASSWORD", &world.sim.config().password)],
    );
    gapless.wait_subscribed(1);
    use std::os::unix::fs::PermissionsExt;
    let created = std::fs::metadata(world.dir.path().join("var/lib/gapless")).unwrap();
    assert_eq!(
        created.permissions().mode() & 0o777,
        0o750,
        "the store's directory"
    );
    let t0 = std::time::Instant::now();
    world.sim.create_events(5).await.unwrap();
    wait_lines(&file, 5, Duration::from_secs(120), &mut gapless);
    let first = t0.elapsed();
    eprintln!("first events released {first:?} after they were created");
    assert!(
        first < Duration::from_secs(60),
        "released after {first:?}: by max_hold or a cron tick, not the catch-up poll\n{}",
        gapless.log_text()
    );
    assert!(gapless.log_text().contains("catch-up poll"));

    world.sim.set_faults(|f| f.mqtt_drop_rate = 1.0);
    let lost = world.sim.create_events(3).await.unwrap();
    world.sim.set_faults(|f| f.mqtt_drop_rate = 0.0);
    world.sim.create_events(5).await.unwrap();
    // The next scheduled poll (every minute, at second 0) recovers them.
    wait_lines(&file, 13, Duration::from_secs(130), &mut gapless);
    let text = std::fs::read_to_string(&file).unwrap();
    for id in &lost {
        let line = text
            .lines()
            .find(|l| l.contains(&format!("\"id\":\"{id}\"")))
            .unwrap_or_else(|| panic!("{id} (dropped on MQTT) was not delivered"));
        // Its neighbours went out live; the poller found it a minute later.
        assert!(line.contains("\"late\":true"), "{line}");
    }
    assert!(
        !world.sim.requests().is_empty(),
        "no audit-trail request was made"
    );
    let (status, body) = http_get("http://127.0.0.1:9464/readyz").await;
    assert_eq!(status, 200, "{body}");
    let summary = gapless.stop();
    assert!(
        summary["counters"]["recovered"].as_u64() >= Some(3),
        "{summary}"
    );
    assert!(
        !logs_of(&world).contains("stream.max_hold"),
        "events were force-released"
    );
    assert_ground_truth(&file, &world.sim);
    assert_eq!(
        markers(&file),
        Vec::<serde_json::Value>::new(),
        "gap markers"
    );
}

/// Checks the file against the simulator's ground truth: each event once,
/// seq 1..N, and every event not flagged late in (time, id) order.
fn assert_ground_truth(file: &Path, sim: &VcdSim) {
    let truth: std::collections::HashSet<String> = sim.ground_truth().into_iter().collect();
    let check = gapless::demo::check_file(file, &truth).unwrap();
    assert!(check.seq_ok, "seq hole or reorder: {check:?}");
    assert_eq!(check.duplicated, 0, "duplicate ids: {check:?}");
    assert_eq!(check.missing, 0, "missing events: {check:?}");
    assert_eq!(check.lines, truth.len(), "line count");
    assert!(
        check.order_ok,
        "events not flagged late are out of (time, id) order: {check:?}"
    );
}

on_both_stores!(
    dropped_mqtt_messages_are_recovered_by_the_poller,
    restart_resumes_from_the_persisted_watermark_without_redelivery
);

/// 20% of MQTT messages dropped (plus duplicates and reordering): after the
/// poll every event is in the file exactly once, and the recovered counter
/// equals what MQTT lost.
async fn dropped_mqtt_messages_are_recovered_by_the_poller(store: TestStore) {
    let world = World::on(store).await;
    world.sim.set_faults(|f| {
        f.mqtt_drop_rate = 0.2;
        f.mqtt_dup_rate = 0.05;
        f.mqtt_reorder_rate = 0.05;
    });
    let mut gapless = world.gapless();
    gapless.wait_subscribed(1);
    for _ in 0..10 {
        world.sim.create_events(200).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_lines(&world.file(), 2000, Duration::from_secs(60), &mut gapless);
    // A copy recovered twice would follow the last poll: one more window.
    gapless.wait_one_more_window();
    let summary = gapless.stop();
    assert_ground_truth(&world.file(), &world.sim);
    let dropped = world.sim.stats().mqtt_dropped.load(Relaxed);
    assert!(dropped > 200, "the fault knob dropped {dropped}");
    assert_eq!(
        summary["counters"]["recovered"].as_u64(),
        Some(dropped),
        "{summary}"
    );
    assert_eq!(summary["counters"]["stored"], 2000);
    assert_eq!(
        markers(&world.file()),
        Vec::<serde_json::Value>::new(),
        "a healthy poller recovers everything: no gap marker"
    );
    // Only an event MQTT missed can come after its successors: `late`
    // flags no more lines than were recovered, and the counter agrees
    // with the file.
    let truth: std::collections::HashSet<String> = world.sim.ground_truth().into_iter().collect();
    let late = gapless::demo::check_file(&world.file(), &truth)
        .unwrap()
        .late as u64;
    assert!(late <= dropped, "{late} late lines, {dropped} recovered");
    assert_eq!(
        summary["counters"]["late"].as_u64(),
        Some(late),
        "{summary}"
    );
}

/// Tokens that expire every few seconds: gapless renews before expiry, so
/// after a broker restart it reconnects with a fresh token at once (the
/// broker never sees a stale one), and MQTT delivery resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiring_tokens_are_renewed_and_mqtt_reconnects_with_the_new_one() {
    let mut world = World::new(SimConfig {
        token_ttl: Duration::from_secs(4),
        ..Default::default()
    })
    .await;
    let mut gapless = world.gapless();
    gapless.wait_subscribed(1);
    world.sim.create_events(100).await.unwrap();
    wait_lines(&world.file(), 100, Duration::from_secs(30), &mut gapless);

    // Past the first token's lifetime: a renewal must have happened.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(world.sim.stats().logins.load(Relaxed) >= 2);
    // Renewed before expiry, not after a refusal: a 401 (which the poller
    // answers with a new login) would hide a renewal that never ran.
    assert_eq!(
        world.sim.stats().unauthorized.load(Relaxed),
        0,
        "the poller used an expired token"
    );
    world.restart_broker().await;
    gapless.wait_subscribed(2);
    assert_eq!(
        world.auth.refused.load(Relaxed),
        0,
        "a stale token was offered to the broker"
    );

    let mqtt_before = world.sim.stats().mqtt_published.load(Relaxed);
    world.sim.create_events(100).await.unwrap();
    assert!(world.sim.stats().mqtt_published.load(Relaxed) > mqtt_before);
    wait_lines(&world.file(), 200, Duration::from_secs(30), &mut gapless);
    let summary = gapless.stop();
    assert_ground_truth(&world.file(), &world.sim);
    assert!(
        summary["counters"]["connects"].as_u64().unwrap() >= 2,
        "{summary}"
    );
    assert!(gapless_log_has_no_token(&world));
}

/// Every gapless log of the world's runs.
fn logs_of(world: &World) -> String {
    std::fs::read_dir(world.dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".log"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap())
        .collect()
}

fn gapless_log_has_no_token(world: &World) -> bool {
    let logs = logs_of(world);
    !logs.contains(".sim") && !logs.contains(&world.sim.config().password)
}

/// gapless stopped between two runs while events keep coming (MQTT lost
/// them: nobody was subscribed): the next start resumes from the persisted
/// watermark and the file gets each event once.
async fn restart_resumes_from_the_persisted_watermark_without_redelivery(store: TestStore) {
    let world = World::on(store).await;
    let mut gapless = world.gapless();
    gapless.wait_subscribed(1);
    world.sim.create_events(150).await.unwrap();
    wait_lines(&world.file(), 150, Duration::from_secs(30), &mut gapless);
    gapless.wait_metric("gapless_poll_windows_verified_total", 2.0);
    gapless.stop();

    let store = world.store.as_ref().unwrap().config(world.dir.path());
    let store = gapless::store::Store::open(&store).await.unwrap();
    let verified = store
        .verified_until("sim")
        .await
        .unwrap()
        .expect("a watermark was persisted");
    store.close().await;

    world.sim.create_events(120).await.unwrap();
    let mut gapless = world.gapless();
    wait_lines(&world.file(), 270, Duration::from_secs(30), &mut gapless);
    let first_window = gapless
        .log_text()
        .lines()
        .find(|l| l.contains("poll window verified"))
        .unwrap()
        .to_string();
    let expected_from = gapless::event::rfc3339_us(verified - 20_000_000);
    assert!(
        first_window.contains(&expected_from),
        "{first_window} does not start at {expected_from}"
    );
    gapless.wait_one_more_window();
    gapless.stop();
    assert_ground_truth(&world.file(), &world.sim);
}

/// At debug level (ours and the libraries'), neither the VCD password nor
/// any session token appears in the logs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debug_logs_never_show_the_password_or_tokens() {
    let world = World::new(SimConfig::default()).await;
    let mut gapless = Gapless::start_env_level(
        world.dir.path(),
        &world.config,
        &[(PASSWORD_ENV, &world.sim.config().password)],
        "debug",
    );
    gapless.wait_subscribed(1);
    world.sim.create_events(50).await.unwrap();
    wait_lines(&world.file(), 50, Duration::from_secs(30), &mut gapless);
    gapless.wait_metric("gapless_poll_windows_verified_total", 1.0);
    let log = gapless.log_text();
    gapless.stop();
    assert!(log.contains("DEBUG"), "the run did log at debug level");
    assert!(
        !log.contains(&world.sim.config().password),
        "the password leaked"
    );
    let tokens = world.sim.issued_tokens();
    assert!(!tokens.is_empty());
    for t in tokens {
        assert!(!log.contains(&t), "a session token leaked");
        let payload = t.split('.').nth(1).unwrap();
        assert!(!log.contains(payload), "a token's payload leaked");
    }
}

/// The audit trail keeps only the last 4 s (`poll.history_retention`
/// says so, as it would say VCD's retention) and gapless is stopped for
/// longer: on restart the poller marks the span the history no longer
/// holds as one `history_expired` gap, recovers what is still there, and
/// everything else arrives once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_longer_than_the_history_is_one_history_expired_marker() {
    let world = World::with_config(SimConfig::default(), |dir, sim, broker| {
        let path = write_config(dir, sim, broker);
        let text = std::fs::read_to_string(&path).unwrap().replace(
            "visibility_lag = \"1s\"",
            "visibility_lag = \"1s\"\nhistory_retention = \"4s\"",
        );
        std::fs::write(&path, text).unwrap();
        path
    })
    .await;
    world
        .sim
        .set_faults(|f| f.audit_retention = Some(Duration::from_secs(4)));
    let mut gapless = world.gapless();
    gapless.wait_subscribed(1);
    world.sim.create_events(20).await.unwrap();
    wait_lines(&world.file(), 20, Duration::from_secs(30), &mut gapless);
    gapless.wait_metric("gapless_poll_windows_verified_total", 2.0);
    gapless.stop();

    // Nobody subscribed: MQTT loses these, and the audit trail prunes them.
    let pruned = world.sim.create_events(5).await.unwrap();
    tokio::time::sleep(Duration::from_secs(7)).await;
    // Lost on MQTT too, but still in the audit trail at the restart.
    let kept = world.sim.create_events(3).await.unwrap();
    let mut gapless = world.gapless();
    gapless.wait_subscribed(1);
    world.sim.create_events(10).await.unwrap();
    wait_lines(&world.file(), 33, Duration::from_secs(30), &mut gapless);
    gapless.wait_one_more_window();
    gapless.stop();

    let marker = match markers(&world.file()).as_slice() {
        [m] => m.clone(),
        other => panic!("one marker expected: {other:?}"),
    };
    let data = &marker["data"];
    assert_eq!(data["reason"], "history_expired", "{marker}");
    let text = std::fs::read_to_string(world.file()).unwrap();
    for id in &kept {
        assert!(text.contains(id), "{id} was still in the audit trail");
    }
    let truth: std::collections::HashSet<String> = world
        .sim
        .ground_truth()
        .into_iter()
        .filter(|id| !pruned.contains(id))
        .collect();
    let check = gapless::demo::check_file(&world.file(), &truth).unwrap();
    assert!(
        check.seq_ok && check.duplicated == 0 && check.missing == 0,
        "{check:?}"
    );
    assert_eq!(
        check.lines, 33,
        "every event but the pruned ones: {check:?}"
    );
    for id in &pruned {
        assert!(!text.contains(id), "{id} was pruned, yet delivered");
    }
    let (from, to) = (us_of(&data["from"]), us_of(&data["to"]));
    let times: Vec<i64> = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["origin"] != "gapless")
        .map(|v| us_of(&v["time"]))
        .collect();
    assert!(
        times.iter().all(|&t| t <= from || t >= to),
        "a delivered event lies inside the expired span {data}"
    );
}

/// The poller fails for longer than `stream.max_hold` after an MQTT
/// break (MQTT also drops a third of the events meanwhile): the held
/// events are forced out behind one `unverified` marker; once the audit
/// trail answers again the poller recovers what MQTT dropped (late) and
/// one `io.gapless.verified` marker follows them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_poller_past_max_hold_is_unverified_then_verified() {
    let mut world = World::with_config(SimConfig::default(), |dir, sim, broker| {
        let path = write_config(dir, sim, broker);
        let text = std::fs::read_to_string(&path).unwrap() + "\n[stream]\nmax_hold = \"3s\"\n";
        std::fs::write(&path, text).unwrap();
        path
    })
    .await;
    let mut gapless = world.gapless();
    gapless.wait_subscribed(1);
    world.sim.create_events(10).await.unwrap();
    wait_lines(&world.file(), 10, Duration::from_secs(30), &mut gapless);

    world.sim.set_faults(|f| f.http_5xx_rate = 1.0);
    world.restart_broker().await;
    gapless.wait_subscribed(2);
    world.sim.set_faults(|f| f.mqtt_drop_rate = 0.34);
    world.sim.create_events(30).await.unwrap();
    world.sim.set_faults(|f| f.mqtt_drop_rate = 0.0);
    let via_mqtt = 40 - world.sim.stats().mqtt_dropped.load(Relaxed) as usize;
    wait_lines(
        &world.file(),
        via_mqtt,
        Duration::from_secs(30),
        &mut gapless,
    );
    assert_eq!(markers(&world.file()).len(), 1, "the unverified marker");

    world.sim.set_faults(|f| f.http_5xx_rate = 0.0);
    wait_lines(&world.file(), 40, Duration::from_secs(90), &mut gapless);
    let file = world.file();
    wait_for("the io.gapless.verified marker", &mut gapless, || {
        markers(&file)
            .iter()
            .any(|m| m["type"] == "io.gapless.verified")
    });
    gapless.stop();

    let lines: Vec<serde_json::Value> = std::fs::read_to_string(world.file())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let found = markers(&world.file());
    let [open, close] = found.as_slice() else {
        panic!("two markers expected: {found:?}");
    };
    assert_eq!(open["type"], "io.gapless.gap");
    assert_eq!(open["data"]["reason"], "unverified");
    assert!(open["data"]["events"].as_u64() >= Some(1), "{open}");
    assert_eq!(close["type"], "io.gapless.verified");
    assert_eq!(close["data"]["from"], open["data"]["from"]);
    let late: Vec<&serde_json::Value> = lines.iter().filter(|l| l["late"] == true).collect();
    assert!(!late.is_empty(), "the poller recovered what MQTT dropped");
    assert!(
        late.iter()
            .all(|l| l["seq"].as_i64() < close["seq"].as_i64()),
        "the verified marker follows the events the poller recovered"
    );
    assert!(open["seq"].as_i64() < close["seq"].as_i64());
    // The store's record of it: the whole span forced out, then verified.
    let status = status_json(&world.config);
    let kept = &status["last_gaps"][0];
    assert_eq!(kept["reason"], "unverified", "{status}");
    assert!(kept["verified_at_us"].as_i64().is_some(), "{status}");
    assert!(
        kept["events"].as_u64() >= open["data"]["events"].as_u64(),
        "{status}"
    );
    assert_ground_truth(&world.file(), &world.sim);
}

/// Every metric name `dist/grafana/gapless.json` and
/// `dist/prometheus/gapless-rules.yml` query is one a running gapless (VCD
/// simulator, poller, file sink) serves on `/metrics`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_and_rules_query_only_exported_metrics() {
    let world = World::new(SimConfig::default()).await;
    let mut gapless = world.gapless();
    let admin = gapless.admin();
    gapless.wait_metric("gapless_poll_windows_verified_total", 1.0);
    let (status, page) = http_get(&format!("http://{admin}/metrics")).await;
    assert_eq!(status, 200, "{page}");
    gapless.stop();
    let exported: std::collections::HashSet<&str> = page
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    let declared: std::collections::HashSet<&str> =
        include_str!("metric-names.txt").lines().collect();
    let undeclared: Vec<&&str> = exported
        .iter()
        .filter(|n| !declared.contains(**n))
        .collect();
    assert!(
        undeclared.is_empty(),
        "served but not declared: {undeclared:?}"
    );
    let root = env!("CARGO_MANIFEST_DIR");
    let mut queried = std::collections::BTreeSet::new();
    for file in [
        "dist/grafana/gapless.json",
        "dist/prometheus/gapless-rules.yml",
    ] {
        let body = std::fs::read_to_string(format!("{root}/{file}")).unwrap();
        let names: Vec<String> = body
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("gapless_"))
            .map(String::from)
            .collect();
        assert!(names.len() >= 6, "{file} queries no gapless metric");
        queried.extend(names);
    }
    let unknown: Vec<&String> = queried
        .iter()
        .filter(|n| !exported.contains(n.as_str()))
        .collect();
    assert!(
        unknown.is_empty(),
        "queried but not exported: {unknown:?}\n{page}"
    );
    for wanted in [
        "gapless_poll_window_lag_seconds",
        "gapless_gaps_total",
        "gapless_store_wal_bytes",
    ] {
        assert!(
            queried.contains(wanted),
            "the dashboard or rules leave out {wanted}"
        );
    }
}

/// The gap tests' config with `stream.release = "verified"`, the knob
/// under test.
fn verified_release_config(dir: &Path, sim: &VcdSim, broker: &EmbeddedBroker) -> PathBuf {
    let path = write_config(dir, sim, broker);
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        text.replace("[store]", "[stream]\nrelease = \"verified\"\n\n[store]"),
    )
    .unwrap();
    path
}

/// `release = "verified"` under 20% MQTT loss: nothing goes out before the
/// poller has checked it against the audit trail, so no event is ever
/// late, and the file holds every event once in (time, id) order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verified_release_never_flags_an_event_late_under_mqtt_loss() {
    let world = World::with_config(SimConfig::default(), verified_release_config).await;
    world.sim.set_faults(|f| f.mqtt_drop_rate = 0.2);
    let mut gapless = world.gapless();
    gapless.wait_subscribed(1);
    for _ in 0..10 {
        world.sim.create_events(100).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_lines(&world.file(), 1000, Duration::from_secs(60), &mut gapless);
    let summary = gapless.stop();
    assert_ground_truth(&world.file(), &world.sim);
    assert!(world.sim.stats().mqtt_dropped.load(Relaxed) > 100);
    assert_eq!(summary["counters"]["late"], 0, "{summary}");
    let truth: std::collections::HashSet<String> = world.sim.ground_truth().into_iter().collect();
    let check = gapless::demo::check_file(&world.file(), &truth).unwrap();
    assert_eq!(check.late, 0, "{check:?}");
    assert_eq!(check.markers, 0, "{check:?}");
}

/// Waits until `gapless`'s `/readyz` says it stands by, naming the
/// process that leads (the test configs set no admin token).
fn wait_standing_by(gapless: &mut Gapless, leader: &Gapless) {
    let admin = gapless.admin();
    let want = format!("standby\nleader: {}", holder_of(leader));
    let mut said = String::new();
    wait_for(&format!("/readyz to say {want:?}"), gapless, || {
        said = get_blocking(&admin, "/readyz");
        said.starts_with(&want)
    });
}

/// The lease holder name of `gapless`, as `status` and `/readyz` show it.
fn holder_of(gapless: &Gapless) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    format!("{}:{}", host.trim(), gapless.pid())
}

/// An active/passive pair on a Postgres store of its own, VCD's MQTT
/// losing 20%: the leader subscribed, the standby waiting behind it.
/// `None` when Postgres is missing (the test is skipped).
async fn pair(test: &str) -> Option<(World, Gapless, Gapless)> {
    let world = World::on(TestStore::postgres(test)?).await;
    world.sim.set_faults(|f| f.mqtt_drop_rate = 0.2);
    let mut leader = world.gapless();
    leader.wait_subscribed(1);
    let mut standby = world.gapless();
    wait_standing_by(&mut standby, &leader);
    assert_eq!(leader.metric("gapless_leader"), 1.0);
    assert_eq!(standby.metric("gapless_leader"), 0.0);
    Some((world, leader, standby))
}

/// 100 events every 100 ms, `rounds` times.
async fn trickle(world: &World, rounds: usize) {
    for _ in 0..rounds {
        world.sim.create_events(100).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An active/passive pair on one Postgres store, every key at its default
/// but the store's URL, VCD's MQTT losing 20%: the leader is SIGKILLed
/// mid-stream. The standby waits (it neither logs in nor subscribes) until
/// the dead leader's lease expires, then leads: it subscribes, polls from
/// the last verified watermark and resumes the file sink from its cursor.
/// The file, written by both in turn, holds every event once, seq without
/// holes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_leader_is_replaced_by_its_standby_and_every_event_lands_once() {
    let Some((world, leader, mut standby)) = pair("pair_killed_leader").await else {
        return;
    };
    trickle(&world, 5).await;
    leader.kill();
    let killed = std::time::Instant::now();
    trickle(&world, 5).await;
    standby.wait_subscribed(1);
    eprintln!(
        "the standby subscribed {:.1?} after the kill",
        killed.elapsed()
    );
    wait_lines(&world.file(), 1000, Duration::from_secs(60), &mut standby);
    // `status` names the new leader, in a later term than the first.
    let leader = &status_json(&world.config)["leader"];
    assert!(
        leader["holder"] == holder_of(&standby) && leader["live"] == true,
        "{leader}"
    );
    assert!(leader["epoch"].as_i64() >= Some(2), "{leader}");
    // ...and asks the new leader's admin endpoint, which it recorded.
    let admin = &status_json(&world.config)["admin"];
    assert_eq!(
        admin["pid"].as_i64(),
        Some(i64::from(standby.pid())),
        "{admin}"
    );
    assert_eq!(standby.metric("gapless_leader"), 1.0);
    standby.wait_one_more_window();
    standby.stop();
    assert_ground_truth(&world.file(), &world.sim);
}

/// The leader is paused (SIGSTOP) longer than its lease: the standby takes
/// over and goes on. Resumed (SIGCONT), the old leader finds itself deposed,
/// stops its pipeline and stands by behind its successor (`/readyz` says
/// so); its writes are fenced, and its sinks deliver nothing its successor
/// released. Every event is in the file once, with one seq each, and both
/// processes stop cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_leader_is_fenced_when_it_wakes_and_nothing_is_sequenced_twice() {
    let Some((world, mut leader, mut standby)) = pair("pair_paused_leader").await else {
        return;
    };
    world.sim.create_events(300).await.unwrap();
    wait_lines(&world.file(), 300, Duration::from_secs(60), &mut leader);
    leader.signal("-STOP");
    world.sim.create_events(200).await.unwrap();
    standby.wait_subscribed(1);
    wait_lines(&world.file(), 500, Duration::from_secs(60), &mut standby);
    leader.signal("-CONT");
    world.sim.create_events(100).await.unwrap();
    wait_standing_by(&mut leader, &standby);
    assert!(
        leader.log_text().contains("no longer leads"),
        "{}",
        leader.log_text()
    );
    wait_lines(&world.file(), 600, Duration::from_secs(60), &mut standby);
    standby.wait_one_more_window();
    leader.stop();
    standby.stop();
    assert_ground_truth(&world.file(), &world.sim);
}

/// Postgres crashes and restarts under load (`pg_ctl stop -m immediate`,
/// events arriving all the while): neither process of the pair exits. The
/// leader's term ends when its writes fail and it stands by; once the
/// database is back, one of the two leads in a new term, subscribes and
/// polls what MQTT delivered while nothing could be stored. Every event is
/// in the file once, seq without holes, and both stop cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pair_survives_a_postgres_restart_under_load_and_resumes() {
    let Some((world, mut first, mut second)) = pair("pair_postgres_restart").await else {
        return;
    };
    let Some(TestStore::Postgres(pg)) = &world.store else {
        unreachable!("a pair runs on Postgres")
    };
    trickle(&world, 3).await;
    wait_lines(&world.file(), 300, Duration::from_secs(60), &mut first);
    pg.pg_ctl("stop");
    trickle(&world, 4).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    pg.pg_ctl("start");
    trickle(&world, 3).await;
    wait_lines(&world.file(), 1000, Duration::from_secs(120), &mut first);
    assert!(second.running(), "{}", second.log_text());
    let leader = &status_json(&world.config)["leader"];
    assert!(
        [holder_of(&first), holder_of(&second)]
            .contains(&leader["holder"].as_str().unwrap().to_string())
            && leader["live"] == true
            && leader["epoch"].as_i64() >= Some(2),
        "{leader}"
    );
    first.stop();
    second.stop();
    assert_ground_truth(&world.file(), &world.sim);
}
