//! The admin endpoint of the real binary: readiness follows the broker and
//! a stuck sink, and the metrics count what happened.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use axum::routing::post;

use crate::support::*;

/// A webhook endpoint that answers 503 while `failing` is set.
async fn switchable_endpoint(failing: Arc<AtomicBool>) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().route(
        "/hook",
        post(move || {
            let failing = failing.clone();
            async move {
                if failing.load(Ordering::SeqCst) {
                    StatusCode::SERVICE_UNAVAILABLE
                } else {
                    StatusCode::OK
                }
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// Polls `url` until its status is `want`; returns the body.
async fn wait_status(url: &str, want: u16, gapless: &mut Gapless) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = http_get(url).await;
        if status == want {
            return body;
        }
        if Instant::now() > deadline {
            panic!(
                "{url}: still {status} ({body}), wanted {want}\n{}",
                gapless.log_text()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// [`sample_in`], failing the test when the page lacks the series.
fn sample(page: &str, series: &str) -> f64 {
    sample_in(page, series).unwrap_or_else(|| panic!("no `{series}` in\n{page}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_broker_and_stuck_sink_and_metrics_count() {
    let Some(bin) = mosquitto_bin("admin_endpoint") else {
        return;
    };
    gapless::net::tls::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Mosquitto::start(bin, dir.path());
    let failing = Arc::new(AtomicBool::new(false));
    let hook = switchable_endpoint(failing.clone()).await;
    let config = config(dir.path(), &broker.tcp_url(), true, "gapless-admin");
    let text = std::fs::read_to_string(&config).unwrap().replace(
        &format!("[admin]\nlisten = \"{ADMIN_ANY_PORT}\""),
        &format!(
            "[admin]\nlisten = \"{ADMIN_ANY_PORT}\"\n\n[[sink]]\nname = \"hook\"\nkind = \"webhook\"\n\
             url = \"http://{hook}/hook\"\nretry_schedule = [\"100ms\"]\nalert_after = \"1s\"\n\
             include_markers = false"
        ),
    );
    std::fs::write(&config, text).unwrap();
    let mut gapless = Gapless::start(dir.path(), &config);
    let base = format!("http://{}", gapless.admin());

    wait_status(&format!("{base}/healthz"), 200, &mut gapless).await;
    wait_status(&format!("{base}/readyz"), 200, &mut gapless).await;

    let salt = 0xad_0001;
    let mut publisher = broker.publisher("pub-admin").await;
    let mut messages = event_messages(salt, 0..50);
    messages.push(("publish/bad".into(), b"{not json".to_vec()));
    publisher.publish_all(messages, None).await.unwrap();
    let file = dir.path().join("events.jsonl");
    wait_lines(&file, 50, Duration::from_secs(30), &mut gapless);

    let page = wait_metrics(&base, "gapless_sink_delivered_total{sink=\"hook\"} 50").await;
    assert_eq!(sample(&page, "gapless_mqtt_messages_total"), 51.0);
    assert_eq!(
        sample(&page, "gapless_events_stored_total{origin=\"mqtt\"}"),
        50.0
    );
    assert_eq!(
        sample(&page, "gapless_rejected_total{reason=\"malformed_json\"}"),
        1.0
    );
    assert_eq!(
        sample(&page, "gapless_rejected_total{reason=\"oversized\"}"),
        0.0
    );
    assert_eq!(sample(&page, "gapless_released_total"), 50.0);
    assert_eq!(sample(&page, "gapless_stream_head_seq"), 50.0);
    // The file sink commits its cursor after its write: wait for it.
    let page = wait_metrics(&base, "gapless_sink_lag_events{sink=\"file\"} 0").await;
    assert_eq!(sample(&page, "gapless_mqtt_subscribed"), 1.0);
    assert!(sample(&page, "gapless_store_size_bytes") > 0.0);
    assert!(sample(&page, "gapless_store_wal_bytes") > 0.0);
    assert_eq!(sample(&page, "gapless_store_rows{table=\"events\"}"), 50.0);
    assert_eq!(sample(&page, "gapless_store_rows{table=\"rejected\"}"), 1.0);
    assert_eq!(
        sample(&page, "gapless_store_rows{table=\"dead_letters\"}"),
        0.0
    );
    let age = sample(&page, "gapless_store_oldest_event_age_seconds");
    assert!((0.0..60.0).contains(&age), "{age}");

    // A failing endpoint: retries count, and past alert_after the sink makes
    // the daemon unready; once it answers again, ready.
    failing.store(true, Ordering::SeqCst);
    publisher
        .publish_all(event_messages(salt, 50..51), None)
        .await
        .unwrap();
    let body = wait_status(&format!("{base}/readyz"), 503, &mut gapless).await;
    assert!(body.contains("sink hook: blocked on seq 51"), "{body}");
    let page = wait_metrics(&base, "gapless_sink_blocked{sink=\"hook\"} 1").await;
    assert!(sample(&page, "gapless_sink_retries_total{sink=\"hook\"}") >= 1.0);
    assert_eq!(sample(&page, "gapless_sink_lag_events{sink=\"hook\"}"), 1.0);
    failing.store(false, Ordering::SeqCst);
    wait_status(&format!("{base}/readyz"), 200, &mut gapless).await;

    // The broker goes away: unready, and a disconnect is counted.
    broker.kill();
    let body = wait_status(&format!("{base}/readyz"), 503, &mut gapless).await;
    assert!(body.contains("mqtt: not connected"), "{body}");
    let page = wait_metrics(&base, "gapless_mqtt_subscribed 0").await;
    assert_eq!(sample(&page, "gapless_mqtt_disconnects_total"), 1.0);
    broker.restart();
    wait_status(&format!("{base}/readyz"), 200, &mut gapless).await;
    // This source has no history: the session lost with the broker is a
    // gap, marked when the next message arrives, and counted.
    let mut publisher = broker.publisher("pub-admin-2").await;
    publisher
        .publish_all(event_messages(salt, 51..52), None)
        .await
        .unwrap();
    let page = wait_metrics(
        &base,
        "gapless_gaps_total{source=\"test\",reason=\"no_history\"} 1",
    )
    .await;
    assert!(
        sample(
            &page,
            "gapless_gap_seconds_total{source=\"test\",reason=\"no_history\"}"
        ) >= 1.0
    );
    assert_eq!(
        sample(
            &page,
            "gapless_gaps_total{source=\"test\",reason=\"unverified\"}"
        ),
        0.0
    );
    // The webhook leaves the marker out (`include_markers = false`) and its
    // cursor passes it: 52 events delivered, nothing behind.
    let page = wait_metrics(&base, "gapless_sink_delivered_total{sink=\"hook\"} 52").await;
    assert_eq!(sample(&page, "gapless_stream_head_seq"), 53.0);
    wait_metrics(&base, "gapless_sink_lag_events{sink=\"hook\"} 0").await;
    wait_metrics(&base, "gapless_sink_delivered_total{sink=\"file\"} 53").await;
    gapless.stop();
}

/// Polls `/metrics` until it holds the line `line`; returns the page.
async fn wait_metrics(base: &str, line: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, page) = http_get(&format!("{base}/metrics")).await;
        if page.lines().any(|l| l == line) {
            return page;
        }
        assert!(Instant::now() < deadline, "no `{line}` in\n{page}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A taken admin port stops start-up with an error naming the key.
#[test]
fn taken_admin_port_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let config = config(dir.path(), "mqtt://127.0.0.1:1", true, "gapless-port");
    let text = std::fs::read_to_string(&config).unwrap().replace(
        &format!("[admin]\nlisten = \"{ADMIN_ANY_PORT}\""),
        &format!("[admin]\nlisten = \"{}\"", taken.local_addr().unwrap()),
    );
    std::fs::write(&config, text).unwrap();
    let out = gapless_cmd()
        .args(["run", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("`admin.listen`"), "{stderr}");
}

/// The metric names are a contract with dashboards and alerts: the ones
/// the endpoint declares are exactly `tests/it/metric-names.txt`. A rename
/// fails here; an addition is one line there.
#[test]
fn metric_names_are_unchanged() {
    let fixture = include_str!("metric-names.txt");
    let want: std::collections::BTreeSet<&str> = fixture.lines().collect();
    let have: std::collections::BTreeSet<&str> =
        gapless::admin::metrics().map(|(name, _, _)| name).collect();
    assert_eq!(have, want);
}

/// Every metric the endpoint serves is documented in the README.
#[test]
fn readme_documents_every_metric() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let missing: Vec<_> = gapless::admin::metrics()
        .map(|(name, _, _)| name)
        .filter(|name| !readme.contains(&format!("`{name}`")))
        .collect();
    assert!(missing.is_empty(), "undocumented metrics: {missing:?}");
}
