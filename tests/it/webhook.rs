//! Webhook sinks end to end: the gapless binary, the in-process broker, and
//! a real HTTP receiver on 127.0.0.1 whose answers each test scripts.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine;
use gapless_sim::broker::EmbeddedBroker;
use sha2::{Digest, Sha256};
use tokio::sync::Notify;

use crate::support::*;

const SECRET_ENV: &str = "GAPLESS_IT_WEBHOOK_SECRET";
/// A Standard Webhooks secret: `whsec_` + base64 of the key bytes.
const SECRET: &str = "whsec_c2VjcmV0LWtleS1ieXRlcy1mb3ItdGVzdHM=";

/// One request as the receiver saw it.
#[derive(Clone, Debug)]
struct Hit {
    headers: HeaderMap,
    body: String,
    at_us: i64,
}

impl Hit {
    fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default()
    }
    fn seq(&self) -> u64 {
        serde_json::from_str::<serde_json::Value>(&self.body).unwrap()["seq"]
            .as_u64()
            .unwrap()
    }
}

/// Decides the answer to the n-th request (0-based): status and the raw
/// Retry-After value. A 3xx answer points `Location` at `/elsewhere`.
type Script = Box<dyn FnMut(usize, &Hit) -> (u16, Option<String>) + Send>;

/// Hold the answer to request `.0`: notify `.1` when it arrives, answer
/// once `.2` is notified.
type Hold = (usize, Arc<Notify>, Arc<Notify>);

struct Receiver {
    hits: Mutex<Vec<Hit>>,
    /// Requests that followed a redirect to `/elsewhere`.
    followed: std::sync::atomic::AtomicUsize,
    script: Mutex<Script>,
    hold: Mutex<Option<Hold>>,
}

async fn receive(State(rx): State<Arc<Receiver>>, headers: HeaderMap, body: Bytes) -> Response {
    let hit = Hit {
        headers,
        body: String::from_utf8(body.to_vec()).unwrap(),
        at_us: gapless::event::now_us(),
    };
    let n = {
        let mut hits = rx.hits.lock().unwrap();
        hits.push(hit.clone());
        hits.len() - 1
    };
    let hold = rx.hold.lock().unwrap().clone();
    if let Some((at, arrived, release)) = hold
        && at == n
    {
        arrived.notify_one();
        release.notified().await;
    }
    let (status, retry_after) = (rx.script.lock().unwrap())(n, &hit);
    let mut resp = StatusCode::from_u16(status).unwrap().into_response();
    if let Some(s) = retry_after {
        resp.headers_mut()
            .insert("retry-after", HeaderValue::from_str(&s).unwrap());
    }
    if (300..400).contains(&status) {
        resp.headers_mut().insert(
            "location",
            HeaderValue::from_static("http://user:pw@127.0.0.1:9/elsewhere?token=leak"),
        );
    }
    resp
}

/// Starts a receiver on `addr` (port 0: any).
async fn start_receiver(addr: SocketAddr, script: Script) -> (Arc<Receiver>, SocketAddr) {
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    serve_receiver(listener, script)
}

/// A receiver on `listener`, run by `script`.
fn serve_receiver(
    listener: tokio::net::TcpListener,
    script: Script,
) -> (Arc<Receiver>, SocketAddr) {
    let rx = Arc::new(Receiver {
        hits: Mutex::new(Vec::new()),
        followed: Default::default(),
        script: Mutex::new(script),
        hold: Mutex::new(None),
    });
    let addr = listener.local_addr().unwrap();
    let app = Router::new()
        .route("/hook", post(receive))
        .route(
            "/elsewhere",
            axum::routing::any(|State(rx): State<Arc<Receiver>>| async move {
                rx.followed
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                StatusCode::OK
            }),
        )
        .with_state(rx.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (rx, addr)
}

fn ok() -> Script {
    Box::new(|_, _| (200, None))
}

/// A webhook `[[sink]]` table.
fn webhook_sink(name: &str, addr: SocketAddr, on_failure: &str) -> String {
    format!(
        "[[sink]]\nname = \"{name}\"\nkind = \"webhook\"\nurl = \"http://{addr}/hook\"\n\
         secret_env = \"{SECRET_ENV}\"\non_failure = \"{on_failure}\"\ntimeout = \"2s\"\n\
         retry_schedule = [\"200ms\", \"400ms\"]\nheaders = {{ \"X-Test\" = \"yes\" }}\n\n"
    )
}

fn write_config(dir: &Path, broker: &EmbeddedBroker, sinks: &str) -> PathBuf {
    let path = dir.join("gapless.toml");
    std::fs::write(
        &path,
        format!(
            "[source]\nkind = \"vcd\"\nname = \"wh\"\n\n[mqtt]\nurl = \"{}\"\nclient_id = \"gapless-wh\"\n\n\
             [stream]\norder = \"arrival\"\n\n{sinks}{}",
            broker.url(),
            store_and_file_sink(dir)
        ),
    )
    .unwrap();
    path
}

async fn start(dir: &Path, broker: &EmbeddedBroker, sinks: &str) -> (Gapless, PathBuf) {
    start_on(&TestStore::Sqlite, dir, broker, sinks).await
}

async fn start_on(
    store: &TestStore,
    dir: &Path,
    broker: &EmbeddedBroker,
    sinks: &str,
) -> (Gapless, PathBuf) {
    let config = write_config(dir, broker, sinks);
    store.apply(&config);
    let mut g = Gapless::start_env(dir, &config, &[(SECRET_ENV, SECRET)]);
    g.wait_subscribed(1);
    (g, config)
}

async fn publish(broker: &EmbeddedBroker, salt: u64, n: u64) {
    let mut p =
        gapless_sim::publisher::Publisher::connect("127.0.0.1", broker.addr().port(), "wh-pub")
            .await
            .unwrap();
    p.publish_all(event_messages(salt, 0..n), None)
        .await
        .unwrap();
    p.disconnect().await;
}

async fn wait_hits(rx: &Receiver, pred: impl Fn(&[Hit]) -> bool, what: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !pred(&rx.hits.lock().unwrap()) {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The seqs delivered with a 2xx, in order of delivery.
fn delivered(rx: &Receiver, ok_status: impl Fn(usize) -> bool) -> Vec<u64> {
    rx.hits
        .lock()
        .unwrap()
        .iter()
        .enumerate()
        .filter(|(i, _)| ok_status(*i))
        .map(|(_, h)| h.seq())
        .collect()
}

/// HMAC-SHA256 written out from its definition (RFC 2104), independent of
/// the `hmac` crate gapless uses.
fn hmac_sha256(key: &[u8], msg: &[u8]) -> Vec<u8> {
    let mut k = [0u8; 64];
    k[..key.len()].copy_from_slice(key);
    let (mut inner, mut outer) = (Sha256::new(), Sha256::new());
    inner.update(k.iter().map(|b| b ^ 0x36).collect::<Vec<_>>());
    inner.update(msg);
    outer.update(k.iter().map(|b| b ^ 0x5c).collect::<Vec<_>>());
    outer.update(inner.finalize());
    outer.finalize().to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_arrives_once_in_order_signed_after_the_receiver_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let broker = EmbeddedBroker::start().await.unwrap();
    // Held, not listening: the sink's requests are refused until it listens.
    let reserved = reserve_port();
    let addr = reserved.addr();
    let (mut gapless, config) =
        start(dir.path(), &broker, &webhook_sink("hook", addr, "block")).await;
    publish(&broker, 0x3e_01, 60).await;
    gapless.wait_metric("gapless_sink_retries_total{sink=\"hook\"}", 2.0);
    let (rx, _) = serve_receiver(reserved.listen(), ok());
    wait_sink_caught_up(&config, "hook", 60, &mut gapless);
    gapless.stop();

    let hits = rx.hits.lock().unwrap().clone();
    assert_eq!(hits.len(), 60, "nothing twice");
    let key = base64::engine::general_purpose::STANDARD
        .decode(SECRET.strip_prefix("whsec_").unwrap())
        .unwrap();
    for (i, hit) in hits.iter().enumerate() {
        assert_eq!(hit.seq(), i as u64 + 1, "strict seq order");
        assert_eq!(hit.header("content-type"), "application/cloudevents+json");
        assert_eq!(hit.header("x-test"), "yes");
        let id = hit.header("webhook-id");
        let body: serde_json::Value = serde_json::from_str(&hit.body).unwrap();
        assert_eq!(body["id"], id.as_str());
        let ts = hit.header("webhook-timestamp");
        assert!((ts.parse::<i64>().unwrap() - hit.at_us / 1_000_000).abs() <= 5);
        let expected = base64::engine::general_purpose::STANDARD.encode(hmac_sha256(
            &key,
            format!("{id}.{ts}.{}", hit.body).as_bytes(),
        ));
        assert_eq!(hit.header("webhook-signature"), format!("v1,{expected}"));
    }
    assert_exactly_once(&dir.path().join("events.jsonl"), 0x3e_01, 60);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_on_429_is_honoured() {
    let dir = tempfile::tempdir().unwrap();
    let broker = EmbeddedBroker::start().await.unwrap();
    let (rx, addr) = start_receiver(
        ([127, 0, 0, 1], 0).into(),
        Box::new(|n, _| {
            if n == 0 {
                (429, Some("2".into()))
            } else {
                (200, None)
            }
        }),
    )
    .await;
    let (gapless, _) = start(dir.path(), &broker, &webhook_sink("hook", addr, "block")).await;
    publish(&broker, 0x3e_02, 3).await;
    wait_hits(&rx, |h| h.len() >= 4, "4 requests").await;
    gapless.stop();
    let hits = rx.hits.lock().unwrap().clone();
    assert_eq!(
        (hits[0].seq(), hits[1].seq()),
        (1, 1),
        "the refused event is retried first"
    );
    let waited = Duration::from_micros((hits[1].at_us - hits[0].at_us) as u64);
    assert!(waited >= Duration::from_secs(2), "retried after {waited:?}");
    assert_eq!(delivered(&rx, |i| i > 0), vec![1, 2, 3]);
}

on_both_stores!(
    a_refused_event_is_dead_lettered_and_dlq_retry_delivers_it,
    killed_between_post_and_cursor_commit_resends_with_the_same_webhook_id,
    replay_while_running_redelivers_and_tail_prints_the_stream
);

async fn a_refused_event_is_dead_lettered_and_dlq_retry_delivers_it(store: TestStore) {
    let dir = tempfile::tempdir().unwrap();
    let broker = EmbeddedBroker::start().await.unwrap();
    let refuse = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let r = refuse.clone();
    let (rx, addr) = start_receiver(
        ([127, 0, 0, 1], 0).into(),
        Box::new(move |_, hit| {
            if hit.seq() == 2 && r.load(std::sync::atomic::Ordering::SeqCst) {
                (400, None)
            } else {
                (200, None)
            }
        }),
    )
    .await;
    let (mut gapless, config) = start_on(
        &store,
        dir.path(),
        &broker,
        &webhook_sink("hook", addr, "dead-letter"),
    )
    .await;
    publish(&broker, 0x3e_03, 5).await;
    wait_hits(&rx, |h| h.len() >= 5, "5 requests").await;
    assert_eq!(
        delivered(&rx, |i| i != 1),
        vec![1, 3, 4, 5],
        "the stream went on past the refused event"
    );

    let cli = |args: &[&str]| {
        run_ok(
            gapless_cmd()
                .args(args)
                .arg("--config")
                .arg(&config)
                .args(["--sink", "hook"]),
        )
    };
    // The dead letter is committed beside the cursor, after the next
    // event may already be on its way: wait for it.
    wait_for("the dead letter recorded", &mut gapless, || {
        sink_status(&config, "hook")["dead_letters"] == 1
    });
    let list = cli(&["dlq", "list"]);
    assert!(
        list.contains("1 dead letter(s)") && list.contains(" 400 "),
        "{list}"
    );
    let purged = cli(&["dlq", "purge", "--older-than", "1h"]);
    assert!(
        purged.contains("0 dead letter(s) of sink `hook` purged"),
        "a minute-old dead letter is not older than 1h: {purged}"
    );
    refuse.store(false, std::sync::atomic::Ordering::SeqCst);
    assert!(cli(&["dlq", "retry"]).contains("1 dead letter(s)"));
    wait_hits(&rx, |h| h.len() >= 6, "the dead letter's redelivery").await;
    assert_eq!(rx.hits.lock().unwrap()[5].seq(), 2);
    wait_for(
        "the redelivered dead letter to be cleared",
        &mut gapless,
        || cli(&["dlq", "list"]).contains("0 dead letter(s)"),
    );
    let summary = gapless.stop();
    assert_eq!(summary["counters"]["dead_letters"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gone_disables_the_sink_and_other_sinks_carry_on() {
    let dir = tempfile::tempdir().unwrap();
    let broker = EmbeddedBroker::start().await.unwrap();
    let (gone, gone_addr) =
        start_receiver(([127, 0, 0, 1], 0).into(), Box::new(|_, _| (410, None))).await;
    let (failing, failing_addr) =
        start_receiver(([127, 0, 0, 1], 0).into(), Box::new(|_, _| (503, None))).await;
    let (fine, fine_addr) = start_receiver(([127, 0, 0, 1], 0).into(), ok()).await;
    let sinks = format!(
        "{}{}{}",
        webhook_sink("gone", gone_addr, "block"),
        webhook_sink("failing", failing_addr, "block"),
        webhook_sink("fine", fine_addr, "block")
    );
    let (mut gapless, config) = start(dir.path(), &broker, &sinks).await;
    publish(&broker, 0x3e_04, 200).await;
    wait_hits(
        &fine,
        |h| h.len() >= 200,
        "200 deliveries to the healthy sink",
    )
    .await;
    wait_for("the gone sink to be disabled", &mut gapless, || {
        !sink_status(&config, "gone")["disabled"].is_null()
    });
    gapless.wait_metric("gapless_sink_retries_total{sink=\"failing\"}", 2.0);
    gapless.stop();
    assert_eq!(
        gone.hits.lock().unwrap().len(),
        1,
        "a disabled sink sends nothing more, up to the drained stop"
    );
    assert!(
        failing.hits.lock().unwrap().iter().all(|h| h.seq() == 1),
        "the failing sink retries its first event"
    );
    assert!(failing.hits.lock().unwrap().len() >= 2);
    assert_eq!(delivered(&fine, |_| true), (1..=200).collect::<Vec<_>>());
    assert_exactly_once(&dir.path().join("events.jsonl"), 0x3e_04, 200);
}

async fn killed_between_post_and_cursor_commit_resends_with_the_same_webhook_id(store: TestStore) {
    let dir = tempfile::tempdir().unwrap();
    let broker = EmbeddedBroker::start().await.unwrap();
    let (rx, addr) = start_receiver(([127, 0, 0, 1], 0).into(), ok()).await;
    let (arrived, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    *rx.hold.lock().unwrap() = Some((2, arrived.clone(), release.clone()));
    let (mut gapless, config) = start_on(
        &store,
        dir.path(),
        &broker,
        &webhook_sink("hook", addr, "block"),
    )
    .await;
    publish(&broker, 0x3e_05, 5).await;
    arrived.notified().await;
    // Seq 3 is held at the receiver; kill once the cursor has passed 1 and
    // 2 (its commits are pipelined, so wait for them).
    wait_for("the cursor at seq 2", &mut gapless, || {
        sink_status(&config, "hook")["cursor"] == 2
    });
    gapless.kill();
    release.notify_one();
    let held = rx.hits.lock().unwrap()[2].clone();
    assert_eq!(held.seq(), 3);

    let mut restarted = Gapless::start_env(dir.path(), &config, &[(SECRET_ENV, SECRET)]);
    restarted.wait_subscribed(1);
    wait_hits(&rx, |h| h.len() >= 6, "the re-sent event and the rest").await;
    restarted.stop();
    let hits = rx.hits.lock().unwrap().clone();
    // After the restart delivery resumes right after the stored cursor,
    // with the unacknowledged event, runs on without a gap, and the event
    // sent twice carries its original webhook-id.
    let resent: Vec<u64> = hits.iter().skip(3).map(Hit::seq).collect();
    assert_eq!(resent, vec![3, 4, 5]);
    for hit in hits.iter().skip(3) {
        let first = hits.iter().find(|h| h.seq() == hit.seq()).unwrap();
        assert_eq!(hit.header("webhook-id"), first.header("webhook-id"));
    }
    assert_eq!(
        held.header("webhook-id"),
        hits.iter()
            .skip(3)
            .find(|h| h.seq() == 3)
            .unwrap()
            .header("webhook-id")
    );
}

async fn replay_while_running_redelivers_and_tail_prints_the_stream(store: TestStore) {
    let dir = tempfile::tempdir().unwrap();
    let broker = EmbeddedBroker::start().await.unwrap();
    let (rx, addr) = start_receiver(([127, 0, 0, 1], 0).into(), ok()).await;
    let (gapless, config) = start_on(
        &store,
        dir.path(),
        &broker,
        &webhook_sink("hook", addr, "block"),
    )
    .await;
    publish(&broker, 0x3e_06, 5).await;
    wait_hits(&rx, |h| h.len() >= 5, "5 deliveries").await;

    let cli = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_gapless"))
            .args(args)
            .arg("--config")
            .arg(&config)
            .output()
            .unwrap()
    };
    let out = cli(&["replay", "--sink", "hook", "--from-seq", "2"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_hits(&rx, |h| h.len() >= 9, "the replayed events").await;
    assert_eq!(delivered(&rx, |_| true), vec![1, 2, 3, 4, 5, 2, 3, 4, 5]);

    let out = cli(&["replay", "--sink", "nope", "--from-seq", "2"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope"));

    let out = cli(&["tail", "--from-seq", "4"]);
    let seqs: Vec<u64> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(seqs, vec![4, 5]);
    gapless.stop();
}

/// A redirect is not followed (a POST turned into a body-less GET would
/// count as delivered): it is a refusal naming where it pointed, without
/// the credentials in that URL, and under `dead-letter` the stream goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_is_a_refusal_naming_its_location() {
    let dir = tempfile::tempdir().unwrap();
    let broker = EmbeddedBroker::start().await.unwrap();
    let (rx, addr) = start_receiver(
        ([127, 0, 0, 1], 0).into(),
        Box::new(|n, _| if n == 0 { (302, None) } else { (200, None) }),
    )
    .await;
    let (mut gapless, config) = start(
        dir.path(),
        &broker,
        &webhook_sink("hook", addr, "dead-letter"),
    )
    .await;
    publish(&broker, 0x3e_51, 3).await;
    wait_hits(&rx, |h| h.len() >= 3, "3 requests").await;
    gapless.wait_metric("gapless_sink_dead_letters_total{sink=\"hook\"}", 1.0);
    gapless.stop();
    assert_eq!(rx.followed.load(std::sync::atomic::Ordering::SeqCst), 0);
    let out = run_ok(
        gapless_cmd()
            .args(["dlq", "list", "--sink", "hook", "--config"])
            .arg(&config),
    );
    assert!(
        out.contains("HTTP 302 redirect to http://127.0.0.1:9/elsewhere"),
        "{out}"
    );
    assert!(!out.contains("leak") && !out.contains("pw"), "{out}");
}

/// An event id with a control character cannot be a header value: the
/// `webhook-id` carries it base64-encoded (`b64.` prefix), signed as sent,
/// and the body keeps the id as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_that_is_no_header_value_is_sent_encoded() {
    let dir = tempfile::tempdir().unwrap();
    let broker = EmbeddedBroker::start().await.unwrap();
    let (rx, addr) = start_receiver(([127, 0, 0, 1], 0).into(), ok()).await;
    let config = dir.path().join("gapless.toml");
    std::fs::write(
        &config,
        format!(
            "[source]\nkind = \"mqtt\"\nname = \"ids\"\nid_pointer = \"/id\"\n\n[mqtt]\nurl = \"{}\"\ntopics = [\"t/#\"]\n\n\
             [stream]\norder = \"arrival\"\n\n{}{}",
            broker.url(),
            webhook_sink("hook", addr, "dead-letter"),
            store_and_file_sink(dir.path())
        ),
    )
    .unwrap();
    let mut gapless = Gapless::start_env(dir.path(), &config, &[(SECRET_ENV, SECRET)]);
    gapless.wait_subscribed(1);
    let mut p =
        gapless_sim::publisher::Publisher::connect("127.0.0.1", broker.addr().port(), "ids-pub")
            .await
            .unwrap();
    let bodies = [r#"{"id":"a\u0001b"}"#, r#"{"id":"Plain-ID"}"#];
    p.publish_all(
        bodies
            .iter()
            .map(|b| ("t/1".to_string(), b.as_bytes().to_vec()))
            .collect::<Vec<_>>(),
        None,
    )
    .await
    .unwrap();
    p.disconnect().await;
    wait_hits(&rx, |h| h.len() >= 2, "2 deliveries").await;
    gapless.stop();
    let hits = rx.hits.lock().unwrap().clone();
    assert_eq!(hits.len(), 2, "delivered once each, no retry");
    assert_eq!(hits[0].header("webhook-id"), "b64.YQFi");
    let body: serde_json::Value = serde_json::from_str(&hits[0].body).unwrap();
    assert_eq!(body["id"], "a\u{1}b");
    assert_eq!(hits[1].header("webhook-id"), "Plain-ID", "case kept");
    let key = base64::engine::general_purpose::STANDARD
        .decode(SECRET.trim_start_matches("whsec_"))
        .unwrap();
    let msg = format!(
        "b64.YQFi.{}.{}",
        hits[0].header("webhook-timestamp"),
        hits[0].body
    );
    let want = format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(hmac_sha256(&key, msg.as_bytes()))
    );
    assert_eq!(hits[0].header("webhook-signature"), want);
}

/// A `Retry-After` of centuries (seconds or an HTTP-date) waits at most
/// `http.retry_after_max`, not forever, and does not crash the sink.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_retry_after_is_capped() {
    let dir = tempfile::tempdir().unwrap();
    let broker = EmbeddedBroker::start().await.unwrap();
    let (rx, addr) = start_receiver(
        ([127, 0, 0, 1], 0).into(),
        Box::new(|n, _| match n {
            0 => (503, Some(u64::MAX.to_string())),
            1 => (429, Some("Fri, 31 Dec 9999 23:59:59 GMT".into())),
            _ => (200, None),
        }),
    )
    .await;
    let sinks = format!(
        "[http]\nretry_after_max = \"1s\"\n\n{}",
        webhook_sink("hook", addr, "block")
    );
    let (gapless, _) = start(dir.path(), &broker, &sinks).await;
    publish(&broker, 0x3e_61, 1).await;
    // wait_hits gives up after 30 s: the two waits were capped at 1 s each.
    wait_hits(&rx, |h| h.len() >= 3, "the third attempt").await;
    gapless.stop();
}

/// A webhook `[[sink]]` on the default failure policy (no `on_failure`).
fn default_policy_sink(name: &str, addr: SocketAddr) -> String {
    webhook_sink(name, addr, "block").replace("on_failure = \"block\"\n", "")
}

/// Under the default policy (`block`) a 4xx is not skipped: the same event
/// is sent until the endpoint takes it, nothing is dead-lettered, and the
/// stream goes on in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_4xx_under_the_default_policy_blocks_and_retries_the_same_event() {
    let dir = tempfile::tempdir().unwrap();
    let broker = EmbeddedBroker::start().await.unwrap();
    let script: Script = Box::new(|n, _| (if n < 3 { 400 } else { 200 }, None));
    let (rx, addr) = start_receiver(([127, 0, 0, 1], 0).into(), script).await;
    let (gapless, config) = start(dir.path(), &broker, &default_policy_sink("hook", addr)).await;
    publish(&broker, 0x3e_0a, 5).await;
    wait_hits(&rx, |h| h.len() >= 8, "3 refusals and 5 deliveries").await;
    gapless.stop();
    let seqs: Vec<u64> = rx.hits.lock().unwrap().iter().map(Hit::seq).collect();
    assert_eq!(seqs, [1, 1, 1, 1, 2, 3, 4, 5]);
    assert_eq!(sink_status(&config, "hook")["dead_letters"], 0);
}

/// A request the endpoint does not answer within `timeout` is retried,
/// with the same `webhook-id`; the late answer to the first is ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_times_out_is_retried_with_the_same_webhook_id() {
    let dir = tempfile::tempdir().unwrap();
    let broker = EmbeddedBroker::start().await.unwrap();
    let (rx, addr) = start_receiver(([127, 0, 0, 1], 0).into(), ok()).await;
    let (arrived, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    *rx.hold.lock().unwrap() = Some((0, arrived.clone(), release.clone()));
    let (gapless, config) = start(dir.path(), &broker, &webhook_sink("hook", addr, "block")).await;
    publish(&broker, 0x3e_0b, 3).await;
    arrived.notified().await;
    // The sink's `timeout` is 2 s: the retry comes while the first waits.
    wait_hits(&rx, |h| h.len() >= 2, "the retry of the held request").await;
    release.notify_one();
    wait_hits(&rx, |h| h.len() >= 4, "the rest").await;
    gapless.stop();
    let hits = rx.hits.lock().unwrap().clone();
    let seqs: Vec<u64> = hits.iter().map(Hit::seq).collect();
    assert_eq!(seqs, [1, 1, 2, 3]);
    assert_eq!(hits[0].header("webhook-id"), hits[1].header("webhook-id"));
    assert!(sink_status(&config, "hook")["lag"] == 0);
}

/// A sink disabled by `410 Gone` sends nothing until `gapless replay`
/// re-enables it, then delivers from the replayed seq.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_re_enables_a_sink_that_410_disabled() {
    let dir = tempfile::tempdir().unwrap();
    let broker = EmbeddedBroker::start().await.unwrap();
    let script: Script = Box::new(|n, _| (if n == 0 { 410 } else { 200 }, None));
    let (rx, addr) = start_receiver(([127, 0, 0, 1], 0).into(), script).await;
    let (mut gapless, config) =
        start(dir.path(), &broker, &webhook_sink("hook", addr, "block")).await;
    publish(&broker, 0x3e_0c, 3).await;
    wait_for("sink hook disabled", &mut gapless, || {
        !sink_status(&config, "hook")["disabled"].is_null()
    });
    assert_eq!(rx.hits.lock().unwrap().len(), 1);

    run_ok(
        gapless_cmd()
            .args(["replay", "--sink", "hook", "--from-seq", "1", "--config"])
            .arg(&config),
    );
    wait_hits(&rx, |h| h.len() >= 4, "the replayed events").await;
    gapless.stop();
    assert_eq!(delivered(&rx, |i| i > 0), [1, 2, 3]);
    assert!(sink_status(&config, "hook")["disabled"].is_null());
}
