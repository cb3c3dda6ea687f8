//! The main path: MQTT (TCP and WebSocket) → store → file sink, with
//! duplicates and noise.

use std::time::Duration;

use gapless_sim::events::Noise;

use crate::support::*;

/// 10k unique events, 10% published twice, 50 noise messages (20 TASK
/// envelopes, 20 broken JSON, 10 bodies of 2 MiB over a 1 MiB limit).
async fn ten_thousand_with_duplicates_and_noise(test: &str, websocket: bool, store: TestStore) {
    let Some(bin) = mosquitto_bin(test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(bin, dir.path());
    let url = if websocket {
        broker.ws_url()
    } else {
        broker.tcp_url()
    };
    let config = config(dir.path(), &url, true, "gapless-it");
    store.apply(&config);
    let mut gapless = Gapless::start(dir.path(), &config);
    gapless.wait_subscribed(1);

    let salt = 0x5eed_0001 + websocket as u64;
    let n = 10_000u64;
    let events = event_messages(salt, 0..n);
    let mut messages = Vec::new();
    for (i, m) in events.iter().enumerate() {
        messages.push(m.clone());
        if i % 10 == 3 {
            messages.push(m.clone());
        }
        if i % 200 == 7 {
            let kind = match (i / 200) % 5 {
                0 | 1 => Noise::Task,
                2 | 3 => Noise::BrokenJson,
                _ => Noise::Oversized(2 << 20),
            };
            messages.push(("publish/noise/x".into(), kind.body(i as u64)));
        }
    }
    assert_eq!(messages.len(), 10_000 + 1_000 + 50);
    let mut publisher = broker.publisher("it-pub").await;
    publisher.publish_all(messages, None).await.unwrap();

    let file = dir.path().join("events.jsonl");
    wait_lines(&file, n as usize, Duration::from_secs(120), &mut gapless);
    let summary = gapless.stop();
    assert_exactly_once(&file, salt, n);
    let c = &summary["counters"];
    assert_eq!(c["stored"], 10_000, "{summary}");
    assert_eq!(c["duplicates"], 1_000, "{summary}");
    assert_eq!(c["skipped"], 20, "{summary}");
    assert_eq!(c["rejected"], 30, "{summary}");
    assert_eq!(summary["head"], 10_000);
    assert_eq!(summary["rejected_in_store"], 30);

    let store = gapless::store::Store::open(&store.config(dir.path()))
        .await
        .unwrap();
    let reasons: Vec<(String, i64)> = store
        .rejected_by_reason()
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.reason, r.n))
        .collect();
    assert_eq!(
        reasons,
        vec![
            ("malformed_json".to_string(), 20),
            ("oversized".to_string(), 10)
        ]
    );
}

on_both_stores!(tcp_ten_thousand_events_exactly_once_in_seq_order);

async fn tcp_ten_thousand_events_exactly_once_in_seq_order(store: TestStore) {
    ten_thousand_with_duplicates_and_noise("tcp_ten_thousand", false, store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_ten_thousand_events_exactly_once_in_seq_order() {
    ten_thousand_with_duplicates_and_noise("websocket_ten_thousand", true, TestStore::Sqlite).await;
}
