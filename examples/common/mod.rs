//! What the benchmark examples share: their arguments and the binary they run.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// `[EVENTS] [RUNS]` from the command line, with defaults.
pub fn args(default_events: u64) -> (u64, usize) {
    let mut args = std::env::args().skip(1);
    let events = args
        .next()
        .map_or(default_events, |a| a.parse().expect("EVENTS is a number"));
    let runs = args
        .next()
        .map_or(3, |a| a.parse().expect("RUNS is a number"));
    (events, runs)
}

/// The release `gapless` binary next to this example's directory.
pub fn gapless_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("own path");
    let bin = exe
        .parent()
        .and_then(|p| p.parent())
        .expect("target/release/examples")
        .join("gapless");
    assert!(
        bin.exists(),
        "build the binary first: cargo build --release"
    );
    bin
}

/// Runs the release binary on `source` (its `[source]` and `[poll]`
/// tables) with MQTT pointed at a closed port, so everything it stores
/// came from the REST history; returns when (µs since the epoch) the store
/// in `dir` held `events` events, waiting 5 minutes at most.
#[allow(dead_code, reason = "bench_webhook recovers nothing")]
pub async fn recover(
    gapless: &Path,
    dir: &Path,
    source: &str,
    env: &[(&str, &str)],
    events: u64,
) -> i64 {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = dir.join("gapless.toml");
    let db = dir.join("bench.db");
    std::fs::write(
        &config,
        format!(
            r#"{source}
[mqtt]
url = "mqtt://127.0.0.1:{closed}"
[store]
path = "{db}"
[admin]
listen = ""
[[sink]]
name = "file"
kind = "file"
path = "{file}"
"#,
            db = db.display(),
            file = dir.join("events.jsonl").display(),
        ),
    )
    .unwrap();
    let mut child = std::process::Command::new(gapless)
        .args(["--log-level", "error", "run", "--config"])
        .arg(&config)
        .envs(env.iter().copied())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start gapless");
    let store = loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if let Ok(s) = gapless::store::Store::open(&gapless::config::StoreConfig {
            path: db.clone(),
            ..Default::default()
        })
        .await
        {
            break s;
        }
    };
    let deadline = Instant::now() + Duration::from_secs(300);
    let done_us = loop {
        let stored = store.counts().await.unwrap().events;
        if stored as u64 >= events {
            break gapless::event::now_us();
        }
        assert!(
            Instant::now() < deadline,
            "only {stored} of {events} stored"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    done_us
}
