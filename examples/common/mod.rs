//! What the benchmark examples share: their arguments and the binary they run.

use std::path::PathBuf;

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
