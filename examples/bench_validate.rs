//! Validation cost per message: the ScaleIT check gapless runs on the MQTT
//! path (parse the body, validate against a compiled draft-06 schema),
//! timed over N Pacman `gameover` bodies, median of 5 rounds.
//!
//! Usage: cargo run --release --example bench_validate -- [N]

use std::time::Instant;

use gapless::source::profile::scaleit::schema::describe_errors;
use serde_json::{Value, json};

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("N is a number"))
        .unwrap_or(200_000);
    let schema = json!({
        "$schema": "http://json-schema.org/draft-06/schema#",
        "type": "object",
        "properties": {
            "$schema": {"type": "string", "description": "Schema"},
            "score": {"type": "integer", "description": "Punkte"},
            "isHighscore": {"type": "boolean", "description": "Rekord?"},
            "player": {"type": "string", "description": "Spieler"}
        },
        "required": ["score", "isHighscore"]
    });
    let validator = jsonschema::validator_for(&schema).expect("schema compiles");
    let bodies: Vec<String> = (0..n)
        .map(|i| {
            format!(
                r#"{{"$schema":"gameover.json","score":{i},"isHighscore":{},"player":"p{}"}}"#,
                i % 7 == 0,
                i % 97
            )
        })
        .collect();
    let mut rounds: Vec<f64> = (0..5)
        .map(|_| {
            let start = Instant::now();
            let mut invalid = 0;
            for b in &bodies {
                let v: Value = serde_json::from_str(b).expect("JSON");
                invalid += usize::from(describe_errors(&validator, &v).is_some());
            }
            assert_eq!(invalid, 0);
            start.elapsed().as_nanos() as f64 / n as f64
        })
        .collect();
    rounds.sort_by(f64::total_cmp);
    println!(
        "parse + validate: median {:.0} ns per message over {n} bodies ({:.0}k msg/s on one core)",
        rounds[2],
        1e6 / rounds[2]
    );
}
