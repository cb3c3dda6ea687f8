//! ScaleIT history benchmark: with MQTT down, an app's history endpoint on
//! 127.0.0.1 holds N Pacman `gameover` messages of the last minutes; the
//! release gapless binary recovers them through `history_url`, validating
//! each against the draft-06 schema (from `schema_dir`). Measures from the
//! first history request until the store holds all N; reports events/s,
//! median of the runs.
//!
//! Usage: cargo run --release --example bench_history -- [EVENTS] [RUNS]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::routing::get;

mod common;

const GAMEOVER: &str = r#"{"$schema": "http://json-schema.org/draft-06/schema#",
  "type": "object",
  "properties": {"score": {"type": "integer", "description": "Punktestand"},
                 "isHighscore": {"type": "boolean", "description": "Neuer Rekord?"}},
  "required": ["score", "isHighscore"]}"#;

/// The entries, sorted by receive time, each already JSON; and when the
/// first request came.
struct History {
    entries: Vec<(i64, String)>,
    first_request_us: Mutex<Option<i64>>,
}

fn micros(s: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(s)
        .expect("RFC 3339")
        .timestamp_micros()
}

async fn history(
    State(h): State<Arc<History>>,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> String {
    h.first_request_us
        .lock()
        .unwrap()
        .get_or_insert_with(gapless::event::now_us);
    let (since, until) = (micros(&q["since"]), micros(&q["until"]));
    let from = h.entries.partition_point(|(t, _)| *t < since);
    let to = h.entries.partition_point(|(t, _)| *t < until);
    let parts: Vec<&str> = h.entries[from..to]
        .iter()
        .map(|(_, e)| e.as_str())
        .collect();
    format!("[{}]", parts.join(","))
}

async fn one_run(events: u64, gapless: &std::path::Path) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("schemas")).unwrap();
    std::fs::write(dir.path().join("schemas/gameover.json"), GAMEOVER).unwrap();
    // Ten messages per millisecond, over the last seconds, across 4 stacks.
    let start_us = gapless::event::now_us() - (events as i64 / 10) * 1000 - 10_000_000;
    let entries = (0..events)
        .map(|k| {
            let at = start_us + (k as i64 / 10) * 1000 + (k as i64 % 10);
            let entry = serde_json::json!({
                "topic": format!("app/de-ondics-pacman/de-ondics-pacman_{}/gameover", k % 4),
                "received": gapless::event::rfc3339_us(at),
                "body": {"$schema": "gameover.json", "score": k, "isHighscore": k % 7 == 0},
            });
            (at, entry.to_string())
        })
        .collect();
    let state = Arc::new(History {
        entries,
        first_request_us: Mutex::new(None),
    });
    let app = axum::Router::new()
        .route("/apps/{app}/history", get(history))
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let source = format!(
        r#"
[source]
kind = "scaleit"
name = "bench"
apps = ["de-ondics-pacman"]
schema_dir = "{schemas}"
history_url = "{url}/apps/{{app}}/history"
[poll]
schedule = "0 0 * * * *"
initial_lookback = "1h"
visibility_lag = "1s""#,
        schemas = dir.path().join("schemas").display(),
    );
    let done_us = common::recover(gapless, dir.path(), &source, &[], events).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let first = state.first_request_us.lock().unwrap().expect("a request");
    (done_us - first) as f64 / 1e6
}

#[tokio::main]
async fn main() {
    let (events, runs) = common::args(50_000);
    let gapless = common::gapless_binary();
    let mut seconds = Vec::new();
    println!("| run | seconds | events/s |\n|---|---|---|");
    for run in 1..=runs {
        let s = one_run(events, &gapless).await;
        println!("| {run} | {s:.2} | {:.0} |", events as f64 / s);
        seconds.push(s);
    }
    seconds.sort_by(f64::total_cmp);
    let median = seconds[seconds.len() / 2];
    println!(
        "| **median** | {median:.2} | {:.0} |\n({events} ScaleIT messages, validated, MQTT down, 127.0.0.1)",
        events as f64 / median
    );
}
