//! Hostile and broken peers, and unlucky operators: a file sink from
//! another store, a replay past the head, event times from the future,
//! byte-identical messages without ids, secrets in every option that takes
//! one, oversized bodies, and the admin endpoint's token and health.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use gapless_sim::broker::EmbeddedBroker;
use gapless_sim::events;

use crate::support::*;

async fn publish(broker: &EmbeddedBroker, messages: Vec<(String, Vec<u8>)>) {
    let mut p =
        gapless_sim::publisher::Publisher::connect("127.0.0.1", broker.addr().port(), "hostile")
            .await
            .unwrap();
    p.publish_all(messages, None).await.unwrap();
    p.disconnect().await;
}

/// A file sink whose last line is ahead of the store (a new database, a
/// changed `store.path`) would silently skip seqs: gapless refuses to start
/// and says how to proceed; after the replay it names, it appends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_from_another_store_is_refused_until_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let broker = EmbeddedBroker::start().await.unwrap();
    let config = config(dir.path(), &broker.url(), true, "gapless-other-store");
    let file = dir.path().join("events.jsonl");
    let before = "{\"seq\":41}\n{\"seq\":42}\n";
    std::fs::write(&file, before).unwrap();

    let mut refused = Gapless::start(dir.path(), &config);
    let code = refused.wait_exit(Duration::from_secs(30));
    let stderr = refused.log_text();
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("ends at seq 42") && stderr.contains("stream ends at seq 0"),
        "{stderr}"
    );
    assert!(
        stderr.contains("gapless replay --sink file --from-seq 1"),
        "{stderr}"
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), before);

    run_ok(
        gapless_cmd()
            .args(["replay", "--sink", "file", "--from-seq", "1", "--config"])
            .arg(&config),
    );
    let mut gapless = Gapless::start(dir.path(), &config);
    gapless.wait_subscribed(1);
    publish(&broker, event_messages(0x40_01, 0..5)).await;
    wait_lines(&file, 7, Duration::from_secs(30), &mut gapless);
    gapless.stop();
    let seqs: Vec<i64> = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["seq"]
                .as_i64()
                .unwrap()
        })
        .collect();
    assert_eq!(seqs, [41, 42, 1, 2, 3, 4, 5]);

    // A replay past the head would make the sink skip events: refused.
    let out = gapless_cmd()
        .args(["replay", "--sink", "file", "--from-seq", "9", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("past the stream's head (seq 5)") && stderr.contains("1 to 6"),
        "{stderr}"
    );
    run_ok(
        gapless_cmd()
            .args(["replay", "--sink", "file", "--from-seq", "6", "--config"])
            .arg(&config),
    );
}

/// An event stamped a day ahead would hold the event-time order hostage
/// (every later event `late`): it is rejected as `future_time`, and the
/// stream goes on in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_from_the_future_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let broker = EmbeddedBroker::start().await.unwrap();
    let config = config(dir.path(), &broker.url(), true, "gapless-future");
    let mut gapless = Gapless::start(dir.path(), &config);
    gapless.wait_subscribed(1);
    let now = gapless::event::now_us();
    let salt = 0x40_02;
    let message = |i: u64, at: i64| {
        (
            events::topic(salt, i),
            events::envelope(&events::audit_event(salt, i, at)),
        )
    };
    publish(
        &broker,
        vec![
            message(0, now),
            message(1, now + 86_400_000_000),
            message(2, now + 1000),
        ],
    )
    .await;
    let file = dir.path().join("events.jsonl");
    wait_lines(&file, 2, Duration::from_secs(30), &mut gapless);
    gapless.stop();
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(!text.contains("\"late\":true"), "{text}");
    assert!(!text.contains(&events::event_id(salt, 1)), "{text}");
    let status = status_json(&config);
    assert_eq!(
        status["rejected_by_reason"],
        serde_json::json!([["future_time", 1]]),
        "{status}"
    );
}

/// MQTT without `id_pointer`: the same topic and body within
/// `dedup_window` is one message (a QoS 1 redelivery); after it, a new event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_bytes_without_ids_repeat_after_the_dedup_window() {
    let dir = tempfile::tempdir().unwrap();
    let broker = EmbeddedBroker::start().await.unwrap();
    let config = dir.path().join("gapless.toml");
    std::fs::write(
        &config,
        format!(
            "[source]\nkind = \"mqtt\"\nname = \"sensors\"\ndedup_window = \"2s\"\n\n\
             [mqtt]\nurl = \"{}\"\ntopics = [\"s/#\"]\n\n{}",
            broker.url(),
            store_and_file_sink(dir.path())
        ),
    )
    .unwrap();
    let mut gapless = Gapless::start(dir.path(), &config);
    gapless.wait_subscribed(1);
    let reading = || ("s/1".to_string(), br#"{"celsius":21}"#.to_vec());
    publish(&broker, vec![reading(), reading()]).await;
    let file = dir.path().join("events.jsonl");
    wait_lines(&file, 1, Duration::from_secs(30), &mut gapless);
    tokio::time::sleep(Duration::from_secs(3)).await;
    publish(&broker, vec![reading()]).await;
    wait_lines(&file, 2, Duration::from_secs(30), &mut gapless);
    let summary = gapless.stop();
    assert_eq!(count_lines(&file), 2);
    assert_eq!(summary["counters"]["duplicates"], 1, "{summary}");
}

const SECRETS: [&str; 7] = [
    "s3cret-basic-pw",
    "s3cret-api-key",
    "s3cret-bearer",
    "s3cret-history-token",
    "s3cret-hook-key",
    "s3cret-hook-bearer",
    "s3cret-hook-header",
];

/// Every request the fake app and webhook endpoint saw, as header dumps.
type Seen = Arc<Mutex<Vec<String>>>;

/// An app API (schemas, history) and a webhook endpoint on 127.0.0.1 that
/// record the credentials they receive; the webhook refuses every event.
async fn credential_peers(seen: Seen) -> String {
    let record = |seen: Seen| {
        move |uri: axum::http::Uri, headers: HeaderMap| {
            let seen = seen.clone();
            async move {
                seen.lock().unwrap().push(format!("{uri} {headers:?}"));
                (uri, headers)
            }
        }
    };
    let (a, b, c) = (record(seen.clone()), record(seen.clone()), record(seen));
    let app = axum::Router::new()
        .route(
            "/api/messages/{name}",
            axum::routing::get(move |uri, headers| async move {
                a(uri, headers).await;
                r#"{"type": "object", "required": ["celsius"]}"#
            }),
        )
        .route(
            "/history",
            axum::routing::get(move |uri, headers| async move {
                b(uri, headers).await;
                ([("content-type", "application/json")], "[]")
            }),
        )
        .route(
            "/hook",
            axum::routing::post(move |uri, headers| async move {
                c(uri, headers).await;
                StatusCode::BAD_REQUEST.into_response()
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr.to_string()
}

/// A secret in each option that takes one (URL user info, a URL query,
/// `headers_env`, `bearer_env`, on the schema, history and webhook clients)
/// reaches its peer, and never a debug log, the database file or a sink's
/// output (`dataschema`, `dead_letters.last_error`, `schemas.url`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_reach_their_peer_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let broker = EmbeddedBroker::start().await.unwrap();
    let seen: Seen = Default::default();
    let peer = credential_peers(seen.clone()).await;
    let config = dir.path().join("gapless.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[source]
kind = "scaleit"
name = "factory"
apps = ["thermo"]
schema_base_url = "http://gapless:{s0}@{peer}"
history_url = "http://{peer}/history?token={s3}"
headers_env = {{ "X-Api-Key" = "IT_API_KEY" }}
bearer_env = "IT_BEARER"


[mqtt]
url = "{broker}"

[[sink]]
name = "hook"
kind = "webhook"
url = "http://{peer}/hook?key={s4}"
bearer_env = "IT_HOOK_BEARER"
headers_env = {{ "X-Hook" = "IT_HOOK_HEADER" }}
on_failure = "dead-letter"

{tail}"#,
            s0 = SECRETS[0],
            s3 = SECRETS[3],
            s4 = SECRETS[4],
            broker = broker.url(),
            tail = store_and_file_sink(dir.path()),
        ),
    )
    .unwrap();
    let env = [
        ("IT_API_KEY", SECRETS[1]),
        ("IT_BEARER", SECRETS[2]),
        ("IT_HOOK_BEARER", SECRETS[5]),
        ("IT_HOOK_HEADER", SECRETS[6]),
    ];
    let mut gapless = Gapless::start_env_level(dir.path(), &config, &env, "debug");
    gapless.wait_subscribed(1);
    publish(
        &broker,
        vec![(
            "app/thermo/thermo_1/reading".into(),
            br#"{"$schema": "reading.json", "celsius": 21}"#.to_vec(),
        )],
    )
    .await;
    let file = dir.path().join("events.jsonl");
    wait_lines(&file, 1, Duration::from_secs(30), &mut gapless);
    gapless.wait_metric("gapless_sink_dead_letters_total{sink=\"hook\"}", 1.0);
    let admin = gapless.admin();
    wait_for("two poll runs", &mut gapless, || {
        metric_at(&admin, "gapless_poll_runs_total")
            + metric_at(&admin, "gapless_poll_errors_total")
            >= 2.0
    });
    gapless.stop();

    // Each secret went where it was meant to go.
    let requests = seen.lock().unwrap().join("\n");
    for secret in &SECRETS[1..] {
        assert!(
            requests.contains(secret),
            "{secret} never sent:\n{requests}"
        );
    }

    // And nowhere else.
    let status = run_ok(
        gapless_cmd()
            .args(["status", "--json", "--config"])
            .arg(&config),
    );
    let dlq = run_ok(
        gapless_cmd()
            .args(["dlq", "list", "--sink", "hook", "--config"])
            .arg(&config),
    );
    let mut places = vec![
        ("the log", gapless_log(dir.path())),
        ("status", status),
        ("dlq list", dlq.clone()),
    ];
    for name in ["gapless.db", "gapless.db-wal", "events.jsonl"] {
        places.push((name, read_lossy(&dir.path().join(name))));
    }
    for (place, text) in &places {
        for secret in SECRETS {
            assert!(!text.contains(secret), "{secret} leaked into {place}");
        }
    }
    assert!(dlq.contains("HTTP 400"), "{dlq}");
    let line: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(&file)
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        line["dataschema"],
        format!("http://{peer}/api/messages/reading.json")
    );
}

fn read_lossy(path: &Path) -> String {
    String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned()
}

/// Every gapless log file of a test directory, concatenated.
fn gapless_log(dir: &Path) -> String {
    let mut text = String::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "log") {
            text.push_str(&read_lossy(&path));
        }
    }
    text
}

/// A body over the limit is refused without being read whole, whether the
/// server declares its length or streams it (chunked, no length).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_the_limit_are_refused() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut conn, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut request = vec![0u8; 4096];
                let n = conn.read(&mut request).await.unwrap_or(0);
                let chunked = String::from_utf8_lossy(&request[..n]).contains("/streamed");
                let body = vec![b'x'; 2 << 20];
                let head = if chunked {
                    "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
                        .to_string()
                } else {
                    format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                        body.len()
                    )
                };
                let _ = conn.write_all(head.as_bytes()).await;
                if chunked {
                    for chunk in body.chunks(64 * 1024) {
                        let _ = conn
                            .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                            .await;
                        let _ = conn.write_all(chunk).await;
                        let _ = conn.write_all(b"\r\n").await;
                    }
                    let _ = conn.write_all(b"0\r\n\r\n").await;
                } else {
                    let _ = conn.write_all(&body).await;
                }
            });
        }
    });
    let client = gapless::net::client(&gapless::net::ClientSpec {
        key: "test",
        timeout: Duration::from_secs(10),
        ..Default::default()
    })
    .unwrap();
    for path in ["declared", "streamed"] {
        let get = || client.get(format!("http://{addr}/{path}")).send();
        let err = gapless::net::read_limited(get().await.unwrap(), 1 << 20)
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("larger than 1048576 bytes"),
            "{path}: {err}"
        );
        let whole = gapless::net::read_limited(get().await.unwrap(), 4 << 20)
            .await
            .unwrap();
        assert_eq!(whole.len(), 2 << 20, "{path}");
    }
}

/// With `admin.token_env`, `/metrics` and `/readyz`'s details need the
/// token; `/healthz` stays open, and `gapless health` reads it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_token_guards_metrics_and_health_answers() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(
        dir.path(),
        "mqtt://127.0.0.1:1",
        true,
        "gapless-admin-token",
    );
    let text = std::fs::read_to_string(&config).unwrap().replace(
        &format!("[admin]\nlisten = \"{ADMIN_ANY_PORT}\""),
        &format!("[admin]\nlisten = \"{ADMIN_ANY_PORT}\"\ntoken_env = \"IT_ADMIN_TOKEN\""),
    );
    std::fs::write(&config, text).unwrap();
    let token = "s3cret-admin-token";
    let mut gapless = Gapless::start_env(dir.path(), &config, &[("IT_ADMIN_TOKEN", token)]);
    let base = format!("http://{}", gapless.admin());
    let client = reqwest::Client::new();
    let get = |path: &str, auth: Option<&str>| {
        let mut r = client.get(format!("{base}{path}"));
        if let Some(a) = auth {
            r = r.bearer_auth(a);
        }
        async move {
            let resp = r.send().await.unwrap();
            (resp.status().as_u16(), resp.text().await.unwrap())
        }
    };
    assert_eq!(get("/metrics", None).await.0, 401);
    assert_eq!(get("/metrics", Some("wrong")).await.0, 401);
    let (code, page) = get("/metrics", Some(token)).await;
    assert_eq!(code, 200);
    assert!(page.contains("gapless_mqtt_subscribed 0"), "{page}");
    // MQTT cannot connect (port 1): not ready, details only with the token.
    assert_eq!(get("/readyz", None).await, (503, "not ready\n".to_string()));
    assert!(
        get("/readyz", Some(token))
            .await
            .1
            .contains("mqtt: not connected")
    );
    assert_eq!(get("/healthz", None).await, (200, "ok\n".to_string()));

    let health = |admin: &str| {
        gapless_cmd()
            .args(["health", "--admin", admin])
            .output()
            .unwrap()
    };
    let out = health(&base);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    gapless.stop();
    let out = health(&base);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unhealthy"));
}

/// The task that sends acks and subscriptions is watched: when it ends
/// (here: its channel from the writer closes) the MQTT source fails instead
/// of reading on with nobody to acknowledge, so the daemon stops (exit 1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mqtt_source_fails_when_its_ack_task_ends() {
    use gapless::source::mqtt::{Credentials, MqttAuth, MqttSource};
    let broker = EmbeddedBroker::start().await.unwrap();
    let config = gapless::config::Config::parse(&format!(
        "[source]\nkind = \"vcd\"\nname = \"x\"\n[mqtt]\nurl = \"{}\"\n\
         [[sink]]\nname = \"f\"\nkind = \"stdout\"\n",
        broker.url()
    ))
    .unwrap();
    let (ingest, _ingest_rx) = tokio::sync::mpsc::channel(16);
    let source = MqttSource {
        config: config.mqtt.clone(),
        parser: gapless::source::Parser::from_config(&config.source, None),
        credentials: Credentials::fixed(MqttAuth::default()),
        counters: Arc::new(gapless::metrics::Counters::default()),
        ingest,
        live: tokio::sync::watch::channel(Default::default()).0,
        max_skew_us: 300_000_000,
        name: "x".into(),
        started_at_us: 0,
        continuity: None,
    };
    let (acks_tx, acks_rx) = tokio::sync::mpsc::unbounded_channel();
    drop(acks_tx);
    let shutdown = tokio_util::sync::CancellationToken::new();
    let ran = tokio::time::timeout(Duration::from_secs(20), source.run(acks_rx, shutdown)).await;
    let err = ran.expect("the source noticed").unwrap_err().to_string();
    assert!(err.contains("ack/subscribe task ended"), "{err}");
}
