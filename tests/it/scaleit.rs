//! The ScaleIT profile end to end: mosquitto, the gapless binary, and a
//! schema service on 127.0.0.1 that can be taken down and brought back.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::support::*;

const GAMEOVER: &str = r#"{
  "$schema": "http://json-schema.org/draft-06/schema#",
  "title": "gameover",
  "type": "object",
  "properties": {
    "$schema": {"type": "string", "description": "Schema-Referenz"},
    "score": {"type": "integer", "description": "Punktestand", "description_en": "score"},
    "isHighscore": {"type": "boolean", "description": "Neuer Rekord?"}
  },
  "required": ["score", "isHighscore"]
}"#;

/// The app API's schema endpoint: `down` answers 503, each request counted.
struct SchemaService {
    down: Arc<AtomicBool>,
    requests: Arc<AtomicUsize>,
    /// Requests answered 304 Not Modified (the client sent our ETag).
    not_modified: Arc<AtomicUsize>,
    /// Requests for `late.json`: 404, then an HTML page with 200, then the schema.
    late: Arc<AtomicUsize>,
    /// Requests for anything outside `/api/messages/`.
    stray: Arc<AtomicUsize>,
    url: String,
}

async fn schema_service(down: bool) -> SchemaService {
    let down = Arc::new(AtomicBool::new(down));
    let requests = Arc::new(AtomicUsize::new(0));
    let not_modified = Arc::new(AtomicUsize::new(0));
    let late = Arc::new(AtomicUsize::new(0));
    let stray = Arc::new(AtomicUsize::new(0));
    let (d, r, n, l, st) = (
        down.clone(),
        requests.clone(),
        not_modified.clone(),
        late.clone(),
        stray.clone(),
    );
    let app = axum::Router::new()
        .route(
            "/api/messages/{name}",
            get(
                move |axum::extract::Path(name): axum::extract::Path<String>,
                      headers: HeaderMap| {
                    let (d, r, n, l) = (d.clone(), r.clone(), n.clone(), l.clone());
                    async move {
                        if name == "late.json" {
                            return match l.fetch_add(1, Ordering::SeqCst) {
                                0 => StatusCode::NOT_FOUND.into_response(),
                                1 => "<html><body>temporarily broken</body></html>".into_response(),
                                _ => GAMEOVER.into_response(),
                            };
                        }
                        r.fetch_add(1, Ordering::SeqCst);
                        if d.load(Ordering::SeqCst) {
                            return StatusCode::SERVICE_UNAVAILABLE.into_response();
                        }
                        if name != "gameover.json" {
                            return StatusCode::NOT_FOUND.into_response();
                        }
                        if headers.get("if-none-match").is_some_and(|v| v == "\"v1\"") {
                            n.fetch_add(1, Ordering::SeqCst);
                            return StatusCode::NOT_MODIFIED.into_response();
                        }
                        ([("etag", "\"v1\"")], GAMEOVER).into_response()
                    }
                },
            ),
        )
        .fallback(move || {
            st.fetch_add(1, Ordering::SeqCst);
            async { StatusCode::NOT_FOUND }
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    SchemaService {
        down,
        requests,
        not_modified,
        late,
        stray,
        url,
    }
}

fn scaleit_config(dir: &Path, broker: &str, schemas: &str, extra: &str) -> PathBuf {
    let path = dir.join("gapless.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[source]
kind = "scaleit"
name = "scaleit-it"
apps = ["de-ondics-pacman"]
schema_base_url = "{schemas}"
dedup_window = "3s"
{extra}

[mqtt]
url = "{broker}"
client_id = "gapless-scaleit"
max_packet_size = "4KiB"
reconnect_max = "1s"

[stream]
settle = "300ms"

{tail}"#,
            tail = store_and_file_sink(dir),
        ),
    )
    .unwrap();
    path
}

/// Everything a ScaleIT test runs against, started and subscribed.
struct Rig {
    dir: tempfile::TempDir,
    broker: Mosquitto,
    service: SchemaService,
    config: PathBuf,
    gapless: Gapless,
    file: PathBuf,
}

/// Starts mosquitto, the schema service (`down` or not) and gapless with
/// `extra` source keys; `None` when mosquitto is missing (test skipped).
async fn rig(test: &str, down: bool, extra: &str) -> Option<Rig> {
    rig_on(&TestStore::Sqlite, test, down, extra).await
}

async fn rig_on(store: &TestStore, test: &str, down: bool, extra: &str) -> Option<Rig> {
    let bin = mosquitto_bin(test)?;
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(bin, dir.path());
    let service = schema_service(down).await;
    let config = scaleit_config(dir.path(), &broker.tcp_url(), &service.url, extra);
    store.apply(&config);
    let mut gapless = Gapless::start(dir.path(), &config);
    gapless.wait_subscribed(1);
    let file = dir.path().join("events.jsonl");
    Some(Rig {
        dir,
        broker,
        service,
        config,
        gapless,
        file,
    })
}

const PACMAN_1: &str = "app/de-ondics-pacman/de-ondics-pacman_1/gameover";
const PACMAN_2: &str = "app/de-ondics-pacman/de-ondics-pacman_2/gameover";

/// A Pacman `gameover` body with `fields` after its `$schema`.
fn gameover(fields: &str) -> String {
    format!(r#"{{"$schema": "gameover.json", {fields}}}"#)
}

fn msg(topic: &str, body: &str) -> (String, Vec<u8>) {
    (topic.to_string(), body.as_bytes().to_vec())
}

fn lines(file: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Valid and invalid bodies, wildcard stacks, a subject, an oversized body,
/// a bad topic, a missing `$schema`; duplicates within and beyond the window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validates_dedups_in_window_and_maps_to_cloudevents() {
    let Some(Rig {
        broker,
        service,
        config,
        mut gapless,
        file,
        dir: _dir,
        ..
    }) = rig("scaleit_validation", false, "").await
    else {
        return;
    };

    let first = gameover(r#""score": 10230, "isHighscore": true"#);
    let big = format!(
        r#"{{"$schema": "gameover.json", "score": 1, "isHighscore": false, "pad": "{}"}}"#,
        "x".repeat(5000)
    );
    let mut publisher = broker.publisher("pacman").await;
    publisher
        .publish_all(
            vec![
                msg(PACMAN_1, &first),
                msg(PACMAN_1, &first), // a redelivery: same topic and body
                msg(PACMAN_2, &gameover(r#""score": 7, "isHighscore": false"#)),
                msg(
                    &format!("{PACMAN_1}/level/3"),
                    &gameover(r#""score": 3, "isHighscore": false"#),
                ),
                msg(
                    PACMAN_1,
                    &gameover(r#""score": "many", "isHighscore": true"#),
                ),
                msg(PACMAN_1, &gameover(r#""score": 5"#)),
                msg(PACMAN_1, r#"{"score": 5, "isHighscore": true}"#),
                // A publisher may not make gapless fetch what it likes.
                msg(
                    PACMAN_1,
                    &format!(
                        r#"{{"$schema": "{}/private/key.json", "score": 5}}"#,
                        service.url
                    ),
                ),
                msg("app/de-ondics-pacman/only-three", &first),
                msg(PACMAN_1, &big),
            ],
            None,
        )
        .await
        .unwrap();
    wait_lines(&file, 3, Duration::from_secs(30), &mut gapless);

    // Beyond the window the same reading is a new event.
    tokio::time::sleep(Duration::from_secs(4)).await;
    publisher
        .publish_all(vec![msg(PACMAN_1, &first)], None)
        .await
        .unwrap();
    wait_lines(&file, 4, Duration::from_secs(30), &mut gapless);
    let summary = gapless.stop();

    let events = lines(&file);
    assert_eq!(events.len(), 4, "{events:#?}");
    let first_event = &events[0];
    assert_eq!(
        first_event["source"],
        "app/de-ondics-pacman/de-ondics-pacman_1"
    );
    assert_eq!(first_event["type"], "gameover");
    assert_eq!(first_event["data"]["score"], 10230);
    assert_eq!(first_event["validation"], "valid");
    assert_eq!(
        first_event["dataschema"],
        format!("{}/api/messages/gameover.json", service.url)
    );
    assert!(first_event.get("subject").is_none());
    let sources: Vec<&str> = events
        .iter()
        .map(|e| e["source"].as_str().unwrap())
        .collect();
    assert!(
        sources.contains(&"app/de-ondics-pacman/de-ondics-pacman_2"),
        "{sources:?}"
    );
    assert!(
        events.iter().any(|e| e["subject"] == "level/3"),
        "{events:#?}"
    );
    let repeats: Vec<_> = events
        .iter()
        .filter(|e| e["data"]["score"] == 10230)
        .collect();
    assert_eq!(repeats.len(), 2, "once in the window, once after it");
    assert_ne!(repeats[0]["id"], repeats[1]["id"]);

    let c = &summary["counters"];
    assert_eq!(c["duplicates"], 1, "{summary}");
    assert_eq!(c["rejected"], 6, "{summary}");
    assert_eq!(
        service.requests.load(Ordering::SeqCst),
        1,
        "gameover.json once"
    );
    assert_eq!(
        service.stray.load(Ordering::SeqCst),
        0,
        "a $schema outside schema_base_url is never fetched"
    );

    let status = status_json(&config);
    let mut reasons: Vec<String> = status["rejected_by_reason"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| format!("{}={}", r[0].as_str().unwrap(), r[1]))
        .collect();
    reasons.sort();
    assert_eq!(
        reasons,
        [
            "bad_topic=1",
            "missing_schema=1",
            "oversized=1",
            "schema_invalid=2",
            "unknown_schema=1"
        ],
        "{status}"
    );
    let invalid: Vec<String> = status["last_rejected"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["reason"] == "schema_invalid")
        .map(|r| r["detail"].as_str().unwrap().to_string())
        .collect();
    assert!(
        invalid.iter().any(|d| d.starts_with("at /score: ")),
        "{invalid:?}"
    );
    assert!(
        invalid.iter().any(|d| d.contains("isHighscore")),
        "{invalid:?}"
    );
}

on_both_stores!(schema_service_down_queues_then_validates);

/// The schema service is down: messages are stored and held back (not
/// lost, not released); once it is back they are validated and released,
/// the invalid one moved to `rejected`. After a restart the stored schema
/// copy is revalidated with its ETag (304).
async fn schema_service_down_queues_then_validates(store: TestStore) {
    let Some(Rig {
        dir,
        broker,
        service,
        config,
        mut gapless,
        file,
    }) = rig_on(&store, "scaleit_schema_down", true, "").await
    else {
        return;
    };

    let mut publisher = broker.publisher("pacman").await;
    publisher
        .publish_all(
            vec![
                msg(PACMAN_1, &gameover(r#""score": 1, "isHighscore": false"#)),
                msg(PACMAN_2, &gameover(r#""score": 2, "isHighscore": true"#)),
                msg(
                    PACMAN_1,
                    &gameover(r#""score": false, "isHighscore": true"#),
                ),
            ],
            None,
        )
        .await
        .unwrap();
    // Positive first: all three are stored and held for validation.
    wait_for("3 messages held for their schema", &mut gapless, || {
        status_json(&config)["pending_validation"] == 3
    });
    assert_eq!(
        count_lines(&file),
        0,
        "held back while the schema is unknown"
    );

    service.down.store(false, Ordering::SeqCst);
    wait_lines(&file, 2, Duration::from_secs(30), &mut gapless);
    wait_for("the invalid message in rejected", &mut gapless, || {
        status_json(&config)["rejected"] == 1
    });
    let summary = gapless.stop();
    assert_eq!(summary["counters"]["rejected"], 1, "{summary}");
    assert_eq!(summary["counters"]["validation_queued"], 3, "{summary}");
    let events = lines(&file);
    assert!(
        events.iter().all(|e| e["validation"] == "valid"),
        "{events:#?}"
    );

    // Restart: the stored copy is checked with its ETag (304), not re-sent.
    let mut gapless = Gapless::start(dir.path(), &config);
    gapless.wait_subscribed(1);
    publisher
        .publish_all(
            vec![msg(
                PACMAN_1,
                &gameover(r#""score": 9, "isHighscore": true"#),
            )],
            None,
        )
        .await
        .unwrap();
    wait_lines(&file, 3, Duration::from_secs(30), &mut gapless);
    gapless.stop();
    assert_eq!(service.not_modified.load(Ordering::SeqCst), 1);
}

/// A schema the app does not serve yet (404), then serves broken (an HTML
/// page with 200), then serves: the message naming it waits, is not
/// rejected, and goes out valid once the schema is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_missing_at_first_is_retried_not_rejected() {
    let Some(Rig {
        broker,
        service,
        config,
        mut gapless,
        file,
        dir: _dir,
    }) = rig("scaleit_late_schema", false, "").await
    else {
        return;
    };
    let mut publisher = broker.publisher("pacman").await;
    publisher
        .publish_all(
            vec![msg(
                PACMAN_1,
                r#"{"$schema": "late.json", "score": 1, "isHighscore": false}"#,
            )],
            None,
        )
        .await
        .unwrap();
    gapless.wait_metric("gapless_schema_fetches_total", 2.0);
    assert_eq!(
        count_lines(&file),
        0,
        "held back while the schema is missing"
    );
    wait_lines(&file, 1, Duration::from_secs(30), &mut gapless);
    let summary = gapless.stop();
    assert_eq!(summary["counters"]["rejected"], 0, "{summary}");
    assert_eq!(lines(&file)[0]["validation"], "valid");
    assert!(service.late.load(Ordering::SeqCst) >= 3);
    let status = status_json(&config);
    assert_eq!(status["rejected"], 0, "{status}");
}

/// `on_schema_unavailable = "ingest"`: with the service down, events go out
/// at once, marked unvalidated and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_service_down_ingest_releases_unvalidated() {
    let Some(Rig {
        broker,
        mut gapless,
        file,
        dir: _dir,
        ..
    }) = rig("scaleit_ingest", true, "on_schema_unavailable = \"ingest\"").await
    else {
        return;
    };
    let mut publisher = broker.publisher("pacman").await;
    publisher
        .publish_all(
            vec![
                msg(PACMAN_1, &gameover(r#""score": 1, "isHighscore": false"#)),
                msg(PACMAN_2, &gameover(r#""score": "x""#)),
            ],
            None,
        )
        .await
        .unwrap();
    wait_lines(&file, 2, Duration::from_secs(30), &mut gapless);
    let summary = gapless.stop();
    assert_eq!(summary["counters"]["unvalidated"], 2, "{summary}");
    assert!(
        lines(&file)
            .iter()
            .all(|e| e["validation"] == "unvalidated")
    );
}

/// An app's history endpoint: `GET /apps/{app}/history?since&until`
/// answers the entries received in `[since, until)` (503 while `down`);
/// requests are kept.
struct HistoryService {
    down: Arc<AtomicBool>,
    entries: Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
    /// `(app, since, until)` of every request.
    requests: Arc<std::sync::Mutex<Vec<(String, String, String)>>>,
    url: String,
}

fn parse_time(s: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(s)
        .unwrap()
        .timestamp_micros()
}

async fn history_service() -> HistoryService {
    type Query = std::collections::HashMap<String, String>;
    let entries = Arc::new(std::sync::Mutex::new(Vec::<serde_json::Value>::new()));
    let requests = Arc::new(std::sync::Mutex::new(Vec::new()));
    let down = Arc::new(AtomicBool::new(false));
    let (e, r, d) = (entries.clone(), requests.clone(), down.clone());
    let app = axum::Router::new().route(
        "/apps/{app}/history",
        get(
            move |axum::extract::Path(app): axum::extract::Path<String>,
                  axum::extract::Query(q): axum::extract::Query<Query>| {
                let (e, r, d) = (e.clone(), r.clone(), d.clone());
                async move {
                    if d.load(Ordering::SeqCst) {
                        return StatusCode::SERVICE_UNAVAILABLE.into_response();
                    }
                    let (since, until) = (q["since"].clone(), q["until"].clone());
                    r.lock().unwrap().push((app, since.clone(), until.clone()));
                    let range = parse_time(&since)..parse_time(&until);
                    let hits: Vec<serde_json::Value> = e
                        .lock()
                        .unwrap()
                        .iter()
                        .filter(|x| range.contains(&parse_time(x["received"].as_str().unwrap())))
                        .cloned()
                        .collect();
                    axum::Json(hits).into_response()
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    HistoryService {
        down,
        entries,
        requests,
        url,
    }
}

/// A history entry for `topic` received `ago` before now; `body` is JSON.
fn entry(topic: &str, ago: Duration, body: &str) -> serde_json::Value {
    let at = gapless::event::now_us() - ago.as_micros() as i64;
    serde_json::json!({
        "topic": topic,
        "received": gapless::event::rfc3339_us(at),
        "body": serde_json::from_str::<serde_json::Value>(body).unwrap(),
    })
}

/// The `[source]` and `[poll]` keys of a ScaleIT source with a history.
fn history_keys(history: &HistoryService) -> String {
    format!(
        r#"history_url = "{}/apps/{{app}}/history"
[poll]
schedule = "* * * * * *"
overlap = "5s"
visibility_lag = "500ms"
initial_lookback = "1m"
max_retries = 1"#,
        history.url
    )
}

/// `history_url`: the poller recovers what MQTT missed, validated like MQTT
/// messages; the history's copy of an MQTT message (re-serialised, dated by
/// the app a little earlier) and a repeat within `dedup_window` are
/// duplicates, a repeat beyond it is an event; an invalid entry read again
/// in the overlap is rejected once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_endpoint_recovers_what_mqtt_missed() {
    let history = history_service().await;
    let missed = gameover(r#""score": 1, "isHighscore": false"#);
    history.entries.lock().unwrap().extend([
        entry(PACMAN_1, Duration::from_secs(20), &missed),
        entry(PACMAN_1, Duration::from_secs(19), &missed), // within 3 s: the same message
        entry(PACMAN_1, Duration::from_secs(10), &missed), // beyond: the reading again
        entry(
            PACMAN_2,
            Duration::from_millis(1500),
            &gameover(r#""score": "x""#),
        ),
    ]);
    let extra = history_keys(&history);
    let Some(Rig {
        broker,
        config,
        mut gapless,
        file,
        dir: _dir,
        ..
    }) = rig("scaleit_history", false, &extra).await
    else {
        return;
    };
    gapless.wait_metric("gapless_poll_windows_verified_total", 1.0);
    wait_lines(&file, 2, Duration::from_secs(30), &mut gapless);

    // Over MQTT, then in the history as the app saw it 200 ms earlier.
    let live = r#"{"$schema": "gameover.json", "score": 2, "isHighscore": true}"#;
    let mut publisher = broker.publisher("pacman").await;
    publisher
        .publish_all(vec![msg(PACMAN_2, live)], None)
        .await
        .unwrap();
    history.entries.lock().unwrap().push(entry(
        PACMAN_2,
        Duration::from_millis(200),
        r#"{"isHighscore":true,"score":2,"$schema":"gameover.json"}"#,
    ));
    wait_lines(&file, 3, Duration::from_secs(30), &mut gapless);
    let windows = gapless.metric("gapless_poll_windows_verified_total");
    gapless.wait_metric("gapless_poll_windows_verified_total", windows + 3.0);
    let summary = gapless.stop();

    let events = lines(&file);
    assert_eq!(events.len(), 3, "{events:#?}");
    let origins: Vec<(&str, &serde_json::Value)> = events
        .iter()
        .map(|e| (e["origin"].as_str().unwrap(), &e["data"]["score"]))
        .collect();
    assert_eq!(
        origins,
        [
            ("poll", &1.into()),
            ("poll", &1.into()),
            ("mqtt", &2.into())
        ],
        "{events:#?}"
    );
    assert!(
        events.iter().all(|e| e["validation"] == "valid"),
        "{events:#?}"
    );
    assert_eq!(
        events[0]["source"],
        "app/de-ondics-pacman/de-ondics-pacman_1"
    );
    let c = &summary["counters"];
    assert_eq!(c["recovered"], 2, "{summary}");
    assert_eq!(c["duplicates"], 0, "the MQTT message came first: {summary}");
    assert!(
        c["poll_known"].as_u64().unwrap() >= 2,
        "the repeat within the window and the MQTT message's copy: {summary}"
    );
    assert_eq!(c["rejected"], 1, "{summary}");
    assert_eq!(
        c["validation_queued"], 0,
        "the poller waits for a schema instead of holding events back: {summary}"
    );

    let requests = history.requests.lock().unwrap().clone();
    assert!(requests.len() >= 4, "{requests:?}");
    assert!(requests.iter().all(|(app, ..)| app == "de-ondics-pacman"));
    for pair in requests.windows(2) {
        assert!(
            parse_time(&pair[1].1) <= parse_time(&pair[0].2),
            "windows overlap or touch: {pair:?}"
        );
    }

    let status = status_json(&config);
    assert!(
        status["completeness"]
            .as_str()
            .unwrap()
            .starts_with("verified"),
        "{status}"
    );
    assert!(status["verified_until"].is_string(), "{status}");
}

/// A history endpoint that is down fails poll runs (the watermark stays,
/// nothing is released) without stopping gapless; once it is back the
/// missed message is recovered and released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_endpoint_down_then_back_loses_nothing() {
    let history = history_service().await;
    history.down.store(true, Ordering::SeqCst);
    history.entries.lock().unwrap().push(entry(
        PACMAN_1,
        Duration::from_secs(5),
        &gameover(r#""score": 4, "isHighscore": false"#),
    ));
    let Some(Rig {
        config,
        mut gapless,
        file,
        dir: _dir,
        ..
    }) = rig("scaleit_history_down", false, &history_keys(&history)).await
    else {
        return;
    };
    gapless.wait_metric("gapless_poll_errors_total", 2.0);
    assert_eq!(count_lines(&file), 0);
    let status = status_json(&config);
    assert!(status["verified_until"].is_null(), "{status}");

    history.down.store(false, Ordering::SeqCst);
    wait_lines(&file, 1, Duration::from_secs(30), &mut gapless);
    let summary = gapless.stop();
    assert_eq!(summary["counters"]["recovered"], 1, "{summary}");
    assert!(
        summary["counters"]["poll_errors"].as_u64().unwrap() >= 2,
        "{summary}"
    );
    assert_eq!(lines(&file)[0]["data"]["score"], 4);
}
