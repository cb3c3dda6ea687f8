//! Poll benchmark: with MQTT down, the VCD simulator holds N events; the
//! release gapless binary recovers them through the REST audit trail.
//! Measures from the first audit-trail request (the poll's start, seen by
//! the simulator) until the store holds all N; reports events/s and
//! pages/s, median of the runs.
//!
//! Usage: cargo run --release --example bench_poll -- [EVENTS] [RUNS]

use std::time::Duration;

use gapless_sim::vcd::{SimConfig, VcdSim};

mod common;

const PASSWORD_ENV: &str = "GAPLESS_BENCH_VCD_PASSWORD";

struct Run {
    seconds: f64,
    pages: u64,
}

async fn one_run(events: u64, gapless: &std::path::Path) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let sim = VcdSim::start(SimConfig {
        visibility_lag: Duration::ZERO,
        ..Default::default()
    })
    .await
    .unwrap();
    // Ten events per millisecond over the last minutes, as a busy cloud writes them.
    let now_ms = gapless::event::now_us() / 1000;
    let start_ms = now_ms - (events / 10) as i64 - 10_000;
    for k in 0..events / 10 {
        sim.create_events_at(10, start_ms + k as i64).await.unwrap();
    }
    let source = format!(
        r#"
[source]
kind = "vcd"
name = "bench"
url = "{url}"
org = "System"
user = "administrator"
password_env = "{PASSWORD_ENV}"
[poll]
schedule = "0 0 * * * *"
initial_lookback = "1h"
visibility_lag = "1s""#,
        url = sim.url(),
    );
    let password = sim.config().password.clone();
    let done_us = common::recover(
        gapless,
        dir.path(),
        &source,
        &[(PASSWORD_ENV, password.as_str())],
        events,
    )
    .await;
    let requests = sim.requests();
    Run {
        seconds: (done_us - requests[0].0) as f64 / 1e6,
        pages: requests.len() as u64,
    }
}

#[tokio::main]
async fn main() {
    let (events, runs) = common::args(50_000);
    let gapless = common::gapless_binary();
    let row = |label: &str, r: &Run| {
        format!(
            "| {label} | {:.2} | {:.0} | {} | {:.0} |",
            r.seconds,
            events as f64 / r.seconds,
            r.pages,
            r.pages as f64 / r.seconds
        )
    };
    let mut results = Vec::new();
    println!("| run | seconds | events/s | pages | pages/s |\n|---|---|---|---|---|");
    for run in 1..=runs {
        let r = one_run(events, &gapless).await;
        println!("{}", row(&run.to_string(), &r));
        results.push(r);
    }
    results.sort_by(|a, b| a.seconds.total_cmp(&b.seconds));
    println!(
        "{}\n({events} events, page size 128, MQTT down, 127.0.0.1)",
        row("**median**", &results[results.len() / 2])
    );
}
