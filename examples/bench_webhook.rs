//! Webhook benchmarks against the release gapless binary, the in-process
//! broker and a local HTTP receiver that answers at once:
//! - throughput: N events queued, one webhook sink (single in-flight),
//!   first to last receipt;
//! - latency: events published at 1,000/s (each stamped with its publish
//!   time), `order = "event-time"`, `release = "live"`, `settle = "200ms"`,
//!   publish → receipt p50 / p99.
//!
//! Usage: cargo run --release --example bench_webhook -- [EVENTS] [RUNS]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use gapless_sim::broker::EmbeddedBroker;
use gapless_sim::events;
use gapless_sim::publisher::Publisher;

mod common;

type Log = Arc<Mutex<Vec<(i64, i64)>>>;

/// Records (receipt µs, event time µs) and answers 204 at once.
async fn receive(State(log): State<Log>, body: Bytes) -> axum::http::StatusCode {
    let now = gapless::event::now_us();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let t = chrono::DateTime::parse_from_rfc3339(v["time"].as_str().unwrap())
        .unwrap()
        .timestamp_micros();
    log.lock().unwrap().push((now, t));
    axum::http::StatusCode::NO_CONTENT
}

async fn receiver() -> (Log, SocketAddr) {
    let log: Log = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new()
        .route("/hook", post(receive))
        .with_state(log.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (log, addr)
}

/// Runs gapless with one webhook sink and `stream`; publishes `n` events at
/// `rate` (None: at once), each stamped with its publish time; returns what
/// the receiver logged.
async fn run(
    gapless: &std::path::Path,
    stream: &str,
    n: u64,
    rate: Option<f64>,
) -> Vec<(i64, i64)> {
    let dir = tempfile::tempdir().unwrap();
    let broker = EmbeddedBroker::start().await.unwrap();
    let (log, addr) = receiver().await;
    let config = dir.path().join("gapless.toml");
    std::fs::write(
        &config,
        format!(
            "[source]\nkind = \"vcd\"\nname = \"bench\"\n[mqtt]\nurl = \"{}\"\n[stream]\n{stream}\n\
             [store]\npath = \"{}\"\n[[sink]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"http://{addr}/hook\"\n",
            broker.url(),
            dir.path().join("bench.db").display()
        ),
    )
    .unwrap();
    let log_file = std::fs::File::create(dir.path().join("gapless.log")).unwrap();
    let mut child = std::process::Command::new(gapless)
        .args(["run", "--config"])
        .arg(&config)
        .stderr(log_file)
        .spawn()
        .unwrap();
    while !std::fs::read_to_string(dir.path().join("gapless.log"))
        .unwrap_or_default()
        .contains("subscribed")
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let salt = gapless::event::now_us() as u64;
    let start = gapless::event::now_us();
    let step = rate.map_or(0, |r| (1e6 / r) as i64);
    let messages: Vec<(String, Vec<u8>)> = (0..n)
        .map(|i| {
            let ev = events::audit_event(salt, i, start + i as i64 * step);
            (events::topic(salt, i), events::envelope(&ev))
        })
        .collect();
    let mut p = Publisher::connect("127.0.0.1", broker.addr().port(), "bench-pub")
        .await
        .unwrap();
    p.publish_all(messages, rate).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while (log.lock().unwrap().len() as u64) < n {
        assert!(
            std::time::Instant::now() < deadline,
            "only {} of {n} received",
            log.lock().unwrap().len()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    log.lock().unwrap().clone()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main]
async fn main() {
    let (n, runs) = common::args(20_000);
    let gapless = common::gapless_binary();

    println!("throughput ({n} events, order = \"arrival\", one webhook, single in-flight):");
    let mut rates = Vec::new();
    for r in 1..=runs {
        let log = run(&gapless, "order = \"arrival\"", n, None).await;
        let (first, last) = (log[0].0, log[log.len() - 1].0);
        let rate = (log.len() - 1) as f64 / ((last - first) as f64 / 1e6);
        println!("  run {r}: {rate:.0} events/s");
        rates.push(rate);
    }
    println!("  median: {:.0} events/s", median(rates));

    let m = 5_000;
    println!("latency ({m} events at 1,000/s, event-time, release = live, settle = 200ms):");
    let (mut p50s, mut p99s) = (Vec::new(), Vec::new());
    for r in 1..=runs {
        let log = run(
            &gapless,
            "order = \"event-time\"\nrelease = \"live\"\nsettle = \"200ms\"",
            m,
            Some(1000.0),
        )
        .await;
        let mut lat: Vec<f64> = log.iter().map(|(rx, t)| (rx - t) as f64 / 1000.0).collect();
        lat.sort_by(f64::total_cmp);
        let (p50, p99) = (lat[lat.len() / 2], lat[lat.len() * 99 / 100]);
        println!("  run {r}: p50 {p50:.1} ms, p99 {p99:.1} ms");
        p50s.push(p50);
        p99s.push(p99);
    }
    println!(
        "  median: p50 {:.1} ms, p99 {:.1} ms (target p99 < 250 ms)",
        median(p50s),
        median(p99s)
    );
}
