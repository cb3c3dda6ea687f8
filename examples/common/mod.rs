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

/// Waits (5 minutes at most) until the store at `db` holds `events`
/// events; returns when, in µs since the epoch.
#[allow(dead_code, reason = "bench_webhook reads no store")]
pub async fn wait_stored(db: &Path, events: u64) -> i64 {
    let store = loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if let Ok(s) = gapless::store::Store::open(&gapless::config::StoreConfig {
            path: db.to_path_buf(),
            ..Default::default()
        })
        .await
        {
            break s;
        }
    };
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let (stored, _) = store.counts().await.unwrap();
        if stored as u64 >= events {
            return gapless::event::now_us();
        }
        assert!(
            Instant::now() < deadline,
            "only {stored} of {events} stored"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
