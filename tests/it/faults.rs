//! Faults: the broker dies under gapless, and gapless dies under the broker.

use std::time::Duration;

use crate::support::*;

/// Broker killed and restarted (state lost, clean session): gapless
/// reconnects with backoff, subscribes again, and gets everything published
/// after the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_reconnects_and_resubscribes() {
    let Some(bin) = mosquitto_bin("broker_restart") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Mosquitto::start(bin, dir.path());
    let config = config(dir.path(), &broker.tcp_url(), true, "gapless-restart");
    let mut gapless = Gapless::start(dir.path(), &config);
    gapless.wait_log("subscribed", 1, Duration::from_secs(20));
    let salt = 0x5eed_0100;
    let file = dir.path().join("events.jsonl");

    let mut publisher = broker.publisher("pub-1").await;
    publisher
        .publish_all(event_messages(salt, 0..1000), None)
        .await
        .unwrap();
    wait_lines(&file, 1000, Duration::from_secs(60), &mut gapless);

    broker.kill();
    gapless.wait_log("MQTT connection failed", 1, Duration::from_secs(20));
    broker.restart();
    gapless.wait_log("subscribed", 2, Duration::from_secs(30));

    let mut publisher = broker.publisher("pub-2").await;
    publisher
        .publish_all(event_messages(salt, 1000..2000), None)
        .await
        .unwrap();
    wait_lines(&file, 2000, Duration::from_secs(60), &mut gapless);
    let summary = gapless.stop();
    assert_exactly_once(&file, salt, 2000);
    assert!(
        summary["counters"]["connects"].as_u64().unwrap() >= 2,
        "{summary}"
    );
}

/// gapless SIGKILLed mid-stream with a persistent session: the broker keeps
/// what was not acked, and after the restart the file holds every event
/// exactly once (torn line truncated, cursor reconciled, redeliveries
/// deduplicated).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_stream_with_persistent_session_loses_and_repeats_nothing() {
    let Some(bin) = mosquitto_bin("sigkill_persistent") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(bin, dir.path());
    let config = config(dir.path(), &broker.tcp_url(), false, "gapless-persistent");
    let mut gapless = Gapless::start(dir.path(), &config);
    gapless.wait_log("subscribed", 1, Duration::from_secs(20));
    let salt = 0x5eed_0200;
    let n = 8000u64;
    let file = dir.path().join("events.jsonl");

    let mut publisher = broker.publisher("pub-kill").await;
    let publishing = tokio::spawn(async move {
        publisher
            .publish_all(event_messages(salt, 0..n), Some(4000.0))
            .await
            .unwrap();
    });
    wait_lines(&file, 1500, Duration::from_secs(60), &mut gapless);
    gapless.kill();
    let at_kill = count_lines(&file);
    assert!(at_kill < n as usize, "the kill must land mid-stream");
    publishing.await.unwrap();

    let mut gapless = Gapless::start(dir.path(), &config);
    wait_lines(&file, n as usize, Duration::from_secs(60), &mut gapless);
    // Give redeliveries a moment to (wrongly) show up as extra lines.
    std::thread::sleep(Duration::from_millis(500));
    gapless.stop();
    assert_exactly_once(&file, salt, n);
}
