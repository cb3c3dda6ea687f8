//! Operating a store: `gapless status` on known content, and retention.

use std::time::Duration;

use gapless_sim::broker::EmbeddedBroker;
use gapless_sim::events::Noise;
use gapless_sim::publisher::Publisher;

use crate::support::*;

fn config_with(
    dir: &std::path::Path,
    broker: &EmbeddedBroker,
    store_extra: &str,
    store: &TestStore,
) -> std::path::PathBuf {
    let path = config(dir, &broker.url(), true, "gapless-ops");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        text.replace("[store]\n", &format!("[store]\n{store_extra}")),
    )
    .unwrap();
    store.apply(&path);
    path
}

async fn publish(broker: &EmbeddedBroker, messages: Vec<(String, Vec<u8>)>) {
    let mut p = Publisher::connect("127.0.0.1", broker.addr().port(), "ops-pub")
        .await
        .unwrap();
    p.publish_all(messages, None).await.unwrap();
    p.disconnect().await;
}

on_both_stores!(
    status_reports_head_cursors_counts_and_rejections,
    retention_prunes_delivered_events_and_seq_continues
);

async fn status_reports_head_cursors_counts_and_rejections(store: TestStore) {
    let dir = tempfile::tempdir().unwrap();
    let broker = EmbeddedBroker::start().await.unwrap();
    let config = config_with(dir.path(), &broker, "", &store);
    let mut gapless = Gapless::start(dir.path(), &config);
    gapless.wait_subscribed(1);
    let mut messages = event_messages(0x0b_01, 0..40);
    messages.push(("publish/x/y".into(), Noise::BrokenJson.body(1)));
    messages.push(("publish/x/y".into(), Noise::MissingId.body(2)));
    publish(&broker, messages).await;
    wait_lines(
        &dir.path().join("events.jsonl"),
        40,
        Duration::from_secs(30),
        &mut gapless,
    );

    let s = status_json(&config);
    assert_eq!(s["head_seq"], 40);
    assert_eq!(s["events"], 40);
    assert_eq!(s["rejected"], 2);
    assert_eq!(s["sinks"][0]["name"], "file");
    assert_eq!(s["sinks"][0]["cursor"], 40);
    assert_eq!(s["sinks"][0]["lag"], 0);
    let reasons: Vec<&str> = s["last_rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["reason"].as_str().unwrap())
        .collect();
    assert_eq!(
        reasons,
        vec!["missing_id", "malformed_json"],
        "newest first"
    );
    assert!(s["verified_until"].is_null());
    gapless.stop();

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gapless"))
        .args(["status", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("head seq 40") && text.contains("lag      0"),
        "{text}"
    );
}

async fn retention_prunes_delivered_events_and_seq_continues(store: TestStore) {
    let dir = tempfile::tempdir().unwrap();
    let broker = EmbeddedBroker::start().await.unwrap();
    let config = config_with(dir.path(), &broker, "retention = \"1s\"\n", &store);
    let mut gapless = Gapless::start(dir.path(), &config);
    gapless.wait_subscribed(1);
    let file = dir.path().join("events.jsonl");
    publish(&broker, event_messages(0x0b_02, 0..200)).await;
    wait_lines(&file, 200, Duration::from_secs(30), &mut gapless);

    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while status_json(&config)["events"].as_i64().unwrap() > 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "nothing pruned: {}",
            status_json(&config)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let s = status_json(&config);
    assert_eq!(s["head_seq"], 200, "the head row is kept");

    // New events continue the stream after the kept head.
    publish(&broker, event_messages(0x0b_02, 200..220)).await;
    wait_lines(&file, 220, Duration::from_secs(30), &mut gapless);
    wait_sink_caught_up(&config, "file", 220, &mut gapless);
    let summary = gapless.stop();
    assert_exactly_once(&file, 0x0b_02, 220);
    assert!(
        summary["counters"]["pruned"].as_u64().unwrap() >= 199,
        "{summary}"
    );
}

/// `gapless status --watch`: while a publisher sends about 200 events/s,
/// its `--json` twin prints one frame a second with a non-zero MQTT ingest
/// rate, a growing head and the file sink's position; the text view shows
/// the same in a few lines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_watch_shows_ingest_rate_sinks_and_head_every_second() {
    let dir = tempfile::tempdir().unwrap();
    let broker = EmbeddedBroker::start().await.unwrap();
    let config = config(dir.path(), &broker.url(), true, "gapless-watch");
    let mut gapless = Gapless::start(dir.path(), &config);
    gapless.wait_subscribed(1);
    let addr = broker.addr();
    let publishing = tokio::spawn(async move {
        let mut publisher = Publisher::connect("127.0.0.1", addr.port(), "pub-watch")
            .await
            .unwrap();
        publisher
            .publish_all(event_messages(0x3a7c, 0..1200), Some(200.0))
            .await
            .unwrap();
    });
    let out = tokio::task::spawn_blocking({
        let config = config.clone();
        move || {
            run_ok(
                gapless_cmd()
                    .args(["status", "--watch", "--json", "--frames", "4", "--config"])
                    .arg(&config),
            )
        }
    })
    .await
    .unwrap();
    let frames: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(frames.len(), 4, "{out}");
    let mqtt_rate = |f: &serde_json::Value| {
        f["ingest_per_s"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r[0] == "mqtt")
            .and_then(|r| r[1].as_f64())
            .unwrap()
    };
    assert!(
        frames.iter().any(|f| mqtt_rate(f) > 50.0),
        "no frame saw the ~200/s ingest: {out}"
    );
    let heads: Vec<i64> = frames
        .iter()
        .map(|f| f["head_seq"].as_i64().unwrap())
        .collect();
    assert!(
        heads.first() < heads.last(),
        "the head did not move: {heads:?}"
    );
    let sink = &frames[3]["sinks"][0];
    assert_eq!(sink["name"], "file");
    assert_eq!(sink["state"], "ok");
    assert!(
        sink["cursor"].as_i64() > Some(0) && sink["lag"].as_i64() >= Some(0),
        "{sink}"
    );
    assert!(frames[0]["daemon"].as_str().is_some());

    let text = run_ok(
        gapless_cmd()
            .args(["status", "--watch", "--frames", "1", "--config"])
            .arg(&config),
    );
    assert!(text.contains("ingest/s  mqtt"), "{text}");
    assert!(text.contains("sink     file"), "{text}");
    assert!(text.contains("head seq"), "{text}");
    publishing.await.unwrap();
    gapless.stop();
}
