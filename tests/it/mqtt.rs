//! MQTT as brokers behave: QoS 2, a broker that grants less, QoS 0.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use rumqttc::QoS;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::*;

/// A TCP proxy in front of the broker that can drop the broker's PUBREL
/// packets on their way to the client: the one fault a real broker cannot
/// be asked for, and the only way to stop a QoS 2 exchange between PUBREC
/// and PUBCOMP on purpose.
struct PubrelWithholder {
    port: u16,
    withhold: Arc<AtomicBool>,
    withheld: Arc<AtomicUsize>,
}

impl PubrelWithholder {
    async fn start(upstream: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let withhold = Arc::new(AtomicBool::new(true));
        let withheld = Arc::new(AtomicUsize::new(0));
        let (w, n) = (withhold.clone(), withheld.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let broker = TcpStream::connect(("127.0.0.1", upstream)).await.unwrap();
                let (mut client_rx, client_tx) = client.into_split();
                let (broker_rx, mut broker_tx) = broker.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut client_rx, &mut broker_tx).await;
                });
                tokio::spawn(Self::filter(broker_rx, client_tx, w.clone(), n.clone()));
            }
        });
        PubrelWithholder {
            port,
            withhold,
            withheld,
        }
    }

    /// Forwards whole MQTT packets, dropping PUBREL (type 6) while asked to.
    async fn filter(
        mut from: tokio::net::tcp::OwnedReadHalf,
        mut to: tokio::net::tcp::OwnedWriteHalf,
        withhold: Arc<AtomicBool>,
        withheld: Arc<AtomicUsize>,
    ) {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match from.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            while let Some(len) = packet_len(&buf) {
                let packet: Vec<u8> = buf.drain(..len).collect();
                if packet[0] >> 4 == 6 && withhold.load(Ordering::Acquire) {
                    withheld.fetch_add(1, Ordering::AcqRel);
                    continue;
                }
                if to.write_all(&packet).await.is_err() {
                    return;
                }
            }
        }
    }

    fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }
}

/// The length of the first complete packet in `buf`, if it is all there.
fn packet_len(buf: &[u8]) -> Option<usize> {
    let mut remaining = 0usize;
    for i in 1..5 {
        let b = *buf.get(i)?;
        remaining |= usize::from(b & 0x7f) << (7 * (i - 1));
        if b & 0x80 == 0 {
            let len = 1 + i + remaining;
            return (buf.len() >= len).then_some(len);
        }
    }
    None
}

/// The test config with `extra` lines added to `[mqtt]`.
fn config_with(
    dir: &std::path::Path,
    url: &str,
    clean: bool,
    id: &str,
    extra: &str,
) -> std::path::PathBuf {
    let path = config(dir, url, clean, id);
    let text = std::fs::read_to_string(&path).unwrap().replace(
        &format!("clean_session = {clean}\n"),
        &format!("clean_session = {clean}\n{extra}\n"),
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// A config whose `[source]` and `[mqtt]` tables hold `source` and
/// `mqtt`, then `tables` (more tables, or nothing), then the usual store
/// and file sink.
fn write_config(
    dir: &std::path::Path,
    source: &str,
    mqtt: &str,
    tables: &str,
) -> std::path::PathBuf {
    let path = dir.join("gapless.toml");
    let tail = store_and_file_sink(dir);
    let text = format!("[source]\n{source}\n\n[mqtt]\n{mqtt}\n\n{tables}\n\n{tail}");
    std::fs::write(&path, text).unwrap();
    path
}

/// QoS 2 with a persistent session, gapless SIGKILLed while the broker's
/// PUBRELs are held back, so every message it stored is between PUBREC and
/// PUBCOMP. After the restart the broker re-sends those PUBRELs; gapless
/// completes them on its first connection (no reconnect loop, see
/// `expect_any_pubrel`) and the file holds every message exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos_2_crash_between_pubrec_and_pubcomp_loses_and_repeats_nothing() {
    let Some(bin) = mosquitto_bin("qos2_crash") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(bin, dir.path());
    let proxy = PubrelWithholder::start(broker.tcp_port).await;
    let config = config_with(dir.path(), &proxy.url(), false, "gapless-qos2", "qos = 2");
    let mut gapless = Gapless::start(dir.path(), &config);
    gapless.wait_subscribed(1);
    let salt = 0x5eed_2000;
    let n = 300u64;
    let file = dir.path().join("events.jsonl");

    let mut publisher = broker
        .publisher("pub-qos2")
        .await
        .with_qos(QoS::ExactlyOnce);
    publisher
        .publish_all(event_messages(salt, 0..n), None)
        .await
        .unwrap();
    // The broker's window (20) fills with exchanges awaiting PUBCOMP.
    wait_lines(&file, 20, Duration::from_secs(30), &mut gapless);
    wait_for("a PUBREL withheld", &mut gapless, || {
        proxy.withheld.load(Ordering::Acquire) >= 1
    });
    let stored = count_lines(&file);
    assert!(stored < n as usize, "the window must hold the rest back");
    gapless.kill();

    proxy.withhold.store(false, Ordering::Release);
    let mut gapless = Gapless::start(dir.path(), &config);
    wait_lines(&file, n as usize, Duration::from_secs(60), &mut gapless);
    wait_sink_caught_up(&config, "file", n as i64, &mut gapless);
    let summary = gapless.stop();
    assert_exactly_once(&file, salt, n);
    assert_eq!(
        summary["counters"]["connects"].as_u64(),
        Some(1),
        "one connection completed the held exchanges: {summary}"
    );
}

/// A broker that grants QoS 1 to a QoS 2 subscription (mosquitto's
/// `max_qos 1`): gapless warns once per topic, not on every resubscribe,
/// and `status` shows the weaker guarantee while events still flow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_qos_downgrade_is_warned_once_and_shown_in_status() {
    let Some(bin) = mosquitto_bin("qos_downgrade") else {
        return;
    };
    gapless::net::tls::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    // Appended after the WebSocket listener, so it caps that one.
    let mut broker = Mosquitto::start_with(bin, dir.path(), "max_qos 1\n");
    let config = config_with(dir.path(), &broker.ws_url(), true, "gapless-cap", "qos = 2");
    let mut gapless = Gapless::start(dir.path(), &config);
    gapless.wait_subscribed(1);
    let warning = "the broker granted a lower QoS than mqtt.qos";
    wait_for("status to show the granted QoS", &mut gapless, || {
        status_json(&config)["daemon"]
            .as_str()
            .unwrap()
            .contains("granted QoS 1 where mqtt.qos = 2")
    });

    broker.kill();
    broker.restart();
    gapless.wait_subscribed(2);
    let salt = 0x5eed_2100;
    let mut publisher = broker.publisher("pub-cap").await;
    publisher
        .publish_all(event_messages(salt, 0..100), None)
        .await
        .unwrap();
    let file = dir.path().join("events.jsonl");
    wait_lines(&file, 100, Duration::from_secs(30), &mut gapless);
    let log = gapless.log_text();
    gapless.stop();
    assert_exactly_once(&file, salt, 100);
    assert_eq!(log.matches(warning).count(), 1, "{log}");
}

/// A ScaleIT source with `mqtt.retained` at `mode` (`None`: the default).
/// The dedup window is short so that restarts can outlast it.
fn retained_config(dir: &std::path::Path, url: &str, mode: Option<&str>) -> std::path::PathBuf {
    let retained = mode
        .map(|m| format!("retained = \"{m}\""))
        .unwrap_or_default();
    write_config(
        dir,
        "kind = \"scaleit\"\nname = \"plant\"\napps = [\"pacman\"]\n\
         require_schema = false\ndedup_window = \"1s\"",
        &format!("url = \"{url}\"\n{retained}"),
        "",
    )
}

/// One retained ScaleIT message, gapless restarted three times, each run
/// further apart than `dedup_window`: the broker re-sends the message on
/// every subscribe. The default (`once`) delivers it once, marked
/// `retained`; `skip` never; `every` three times (which shows the restarts
/// did outlast the window).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retained_message_is_one_event_across_restarts() {
    let Some(bin) = mosquitto_bin("retained") else {
        return;
    };
    let root = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(bin, root.path());
    let mut publisher = broker.publisher("pub-retained").await.retained();
    let body = br#"{"$schema":"state.json","level":3}"#.to_vec();
    publisher
        .publish_all([("app/pacman/s1/state".to_string(), body)], None)
        .await
        .unwrap();
    for (mode, want) in [(None, 1), (Some("skip"), 0), (Some("every"), 3)] {
        let dir = root.path().join(mode.unwrap_or("default"));
        std::fs::create_dir(&dir).unwrap();
        let config = retained_config(&dir, &broker.tcp_url(), mode);
        let file = dir.join("events.jsonl");
        let mut skipped = 0;
        for run in 1..=3 {
            let mut gapless = Gapless::start(&dir, &config);
            gapless.wait_subscribed(1);
            if want >= run {
                wait_lines(&file, run, Duration::from_secs(20), &mut gapless);
            }
            // The retained copy has arrived and gone through the writer.
            let admin = gapless.admin();
            wait_for("the retained copy written", &mut gapless, || {
                [
                    "gapless_events_stored_total{origin=\"mqtt\"}",
                    "gapless_duplicates_total{origin=\"mqtt\"}",
                    "gapless_skipped_total",
                ]
                .iter()
                .map(|series| metric_at(&admin, series))
                .sum::<f64>()
                    >= 1.0
            });
            let summary = gapless.stop();
            skipped += summary["counters"]["skipped"].as_u64().unwrap();
            std::thread::sleep(Duration::from_millis(1100));
        }
        // Each restart of this source without history is also a gap
        // (marked when the retained copy arrives): not what this test counts.
        let lines: Vec<serde_json::Value> = std::fs::read_to_string(&file)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|l| l["origin"] != "gapless")
            .collect();
        assert_eq!(lines.len(), want, "{mode:?}: {lines:?}");
        assert!(lines.iter().all(|l| l["retained"] == true), "{lines:?}");
        assert_eq!(skipped, if want == 0 { 3 } else { 0 }, "{mode:?}");
    }
}

/// A plain subscriber: every payload on `topic`, in order, as JSON.
async fn watch_topic(
    port: u16,
    topic: &str,
) -> tokio::sync::mpsc::UnboundedReceiver<serde_json::Value> {
    let mut o = rumqttc::MqttOptions::new("status-watcher", "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(5));
    let (client, mut eventloop) = rumqttc::AsyncClient::new(o, 16);
    client.subscribe(topic, QoS::AtLeastOnce).await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let _client = client;
        while let Ok(event) = eventloop.poll().await {
            if let rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) = event {
                let _ = tx.send(serde_json::from_slice(&p.payload).unwrap());
            }
        }
    });
    rx
}

async fn next_state(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<serde_json::Value>,
    within: Duration,
) -> serde_json::Value {
    tokio::time::timeout(within, rx.recv())
        .await
        .expect("a status record in time")
        .expect("the watcher runs")
}

/// `mqtt.status_topic`: a retained `online` record on connect; `offline`
/// from gapless on a clean stop, and from the broker (the last will) when
/// gapless is SIGKILLed, within keep-alive × 1.5 (the default 30 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_topic_says_online_then_offline_on_stop_and_on_kill() {
    let Some(bin) = mosquitto_bin("status_topic") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(bin, dir.path());
    let topic = "gapless/plant/status";
    let config = write_config(
        dir.path(),
        "kind = \"mqtt\"\nname = \"plant\"",
        &format!(
            "url = \"{}\"\ntopics = [\"plant/#\"]\nstatus_topic = \"{topic}\"",
            broker.tcp_url()
        ),
        "",
    );
    let mut states = watch_topic(broker.tcp_port, topic).await;
    let soon = Duration::from_secs(20);

    let mut gapless = Gapless::start(dir.path(), &config);
    let online = next_state(&mut states, soon).await;
    assert_eq!(online["state"], "online", "{online}");
    assert_eq!(online["source"], "plant");
    assert_eq!(online["version"], env!("CARGO_PKG_VERSION"));
    gapless.wait_subscribed(1);
    gapless.stop();
    let offline = next_state(&mut states, soon).await;
    assert_eq!(offline["state"], "offline", "{offline}");
    assert_eq!(offline["started_at"], online["started_at"]);

    let gapless = Gapless::start(dir.path(), &config);
    assert_eq!(next_state(&mut states, soon).await["state"], "online");
    gapless.kill();
    let will = next_state(&mut states, Duration::from_secs(45)).await;
    assert_eq!(will["state"], "offline", "{will}");

    // Retained: a subscriber arriving later learns the state at once.
    let mut late = watch_topic(broker.tcp_port, topic).await;
    assert_eq!(next_state(&mut late, soon).await["state"], "offline");
}

/// `stream.order = "arrival"`: events from one publisher keep the order
/// the broker delivered them in, across batches and across the writer's
/// dedup. 10k numbered messages, every tenth followed by a copy of the one
/// five before it: the sink holds each number once, strictly increasing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arrival_order_keeps_one_publishers_order_through_duplicates() {
    let Some(bin) = mosquitto_bin("arrival_order") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(bin, dir.path());
    let config = write_config(
        dir.path(),
        "kind = \"mqtt\"\nname = \"line\"\nid_pointer = \"/id\"",
        &format!("url = \"{}\"\ntopics = [\"line/#\"]", broker.tcp_url()),
        "[stream]\norder = \"arrival\"",
    );
    let mut gapless = Gapless::start(dir.path(), &config);
    gapless.wait_subscribed(1);
    let n = 10_000u64;
    let message = |i: u64| {
        (
            format!("line/{}", i % 7),
            format!(r#"{{"id":"m-{i}","n":{i}}}"#).into_bytes(),
        )
    };
    let mut messages = Vec::new();
    for i in 0..n {
        messages.push(message(i));
        if i % 10 == 9 {
            messages.push(message(i - 5));
        }
    }
    let mut publisher = broker.publisher("pub-line").await;
    publisher.publish_all(messages, None).await.unwrap();
    let file = dir.path().join("events.jsonl");
    wait_lines(&file, n as usize, Duration::from_secs(120), &mut gapless);
    // Positive first: every repeated copy went through the writer.
    gapless.wait_metric("gapless_duplicates_total{origin=\"mqtt\"}", (n / 10) as f64);
    let summary = gapless.stop();
    let numbers: Vec<u64> = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["data"]["n"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(numbers, (0..n).collect::<Vec<_>>());
    assert_eq!(
        summary["counters"]["duplicates"].as_u64(),
        Some(n / 10),
        "{summary}"
    );
}

/// `mqtt.qos = 0` against mosquitto: accepted with a warning at start that
/// what is missed is lost for good (this source has no history), and what
/// arrives is stored and delivered once, with nothing to acknowledge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos_0_is_warned_at_start_and_still_delivers() {
    let Some(bin) = mosquitto_bin("qos0") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(bin, dir.path());
    let config = config_with(
        dir.path(),
        &broker.tcp_url(),
        true,
        "gapless-qos0",
        "qos = 0",
    );
    let mut gapless = Gapless::start(dir.path(), &config);
    gapless.wait_subscribed(1);
    // Start-up warnings come before the source connects.
    assert!(gapless.log_text().contains("lost for good"));
    let salt = 0x5eed_2200;
    let mut publisher = broker.publisher("pub-qos0").await;
    publisher
        .publish_all(event_messages(salt, 0..500), None)
        .await
        .unwrap();
    let file = dir.path().join("events.jsonl");
    wait_lines(&file, 500, Duration::from_secs(30), &mut gapless);
    gapless.stop();
    assert_exactly_once(&file, salt, 500);
}

/// A source without history (generic MQTT, the default clean session)
/// whose broker is down for 5 s: exactly one `no_history` marker, whose
/// span covers the outage, in `seq` order between the events before and
/// after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_session_without_history_is_one_gap_marker_between_its_neighbours() {
    let Some(bin) = mosquitto_bin("no_history_gap") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Mosquitto::start(bin, dir.path());
    let config = write_config(
        dir.path(),
        "kind = \"mqtt\"\nname = \"line\"\nid_pointer = \"/id\"",
        &format!("url = \"{}\"\ntopics = [\"line/#\"]", broker.tcp_url()),
        &format!(
            "[[sink]]\nname = \"quiet\"\nkind = \"file\"\npath = \"{}\"\ninclude_markers = false",
            dir.path().join("quiet.jsonl").display()
        ),
    );
    let mut gapless = Gapless::start(dir.path(), &config);
    gapless.wait_subscribed(1);
    let batch = |range: std::ops::Range<u64>| -> Vec<(String, Vec<u8>)> {
        range
            .map(|i| {
                (
                    "line/a".to_string(),
                    format!(r#"{{"id":"m-{i}"}}"#).into_bytes(),
                )
            })
            .collect()
    };
    let file = dir.path().join("events.jsonl");
    let mut publisher = broker.publisher("pub-before").await;
    publisher.publish_all(batch(0..50), None).await.unwrap();
    wait_lines(&file, 50, Duration::from_secs(30), &mut gapless);

    let down_at = gapless::event::now_us();
    broker.kill();
    std::thread::sleep(Duration::from_secs(5));
    broker.restart();
    let up_at = gapless::event::now_us();
    gapless.wait_subscribed(2);
    let mut publisher = broker.publisher("pub-after").await;
    publisher.publish_all(batch(50..100), None).await.unwrap();
    wait_lines(&file, 100, Duration::from_secs(30), &mut gapless);
    wait_for("the gap marker", &mut gapless, || markers(&file).len() == 1);
    gapless.stop();

    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let marker = match markers(&file).as_slice() {
        [m] => m.clone(),
        other => panic!("one marker expected: {other:?}"),
    };
    assert_eq!(marker["type"], "io.gapless.gap");
    assert_eq!(marker["source"], "line");
    let data = &marker["data"];
    assert_eq!(data["reason"], "no_history");
    assert_eq!(data["source"], "line");
    assert!(
        us_of(&data["from"]) <= down_at && us_of(&data["to"]) >= up_at,
        "the span {data} does not cover the outage {down_at}..{up_at}"
    );
    let seq_of = |i: u64| {
        lines
            .iter()
            .find(|l| l["data"]["id"] == format!("m-{i}"))
            .map(|l| l["seq"].as_i64().unwrap())
            .unwrap()
    };
    let at = marker["seq"].as_i64().unwrap();
    assert!(
        (0..50).all(|i| seq_of(i) < at) && (50..100).all(|i| seq_of(i) > at),
        "the marker (seq {at}) is not between the events before and after the outage"
    );
    let check = gapless::demo::check_file(&file, &Default::default()).unwrap();
    assert!(
        check.seq_ok && check.lines == 100 && check.markers == 1,
        "{check:?}"
    );

    // gapless itself away (a clean session again): the next start marks
    // the time since the last message it stored.
    let stopped_at = gapless::event::now_us();
    std::thread::sleep(Duration::from_secs(1));
    let mut gapless = Gapless::start(dir.path(), &config);
    gapless.wait_subscribed(1);
    let mut publisher = broker.publisher("pub-restart").await;
    publisher.publish_all(batch(100..110), None).await.unwrap();
    wait_lines(&file, 110, Duration::from_secs(30), &mut gapless);
    wait_for("the second gap marker", &mut gapless, || {
        markers(&file).len() == 2
    });
    let quiet = dir.path().join("quiet.jsonl");
    wait_lines(&quiet, 110, Duration::from_secs(30), &mut gapless);
    gapless.stop();
    let found = markers(&file);
    assert_eq!(found.len(), 2, "{found:?}");
    let data = &found[1]["data"];
    assert_eq!(data["reason"], "no_history");
    assert!(
        us_of(&data["from"]) <= stopped_at && us_of(&data["to"]) > stopped_at,
        "the span {data} does not cover the restart at {stopped_at}"
    );

    // The sink with `include_markers = false`: every event, no marker, and
    // its cursor went past the markers to the head.
    assert_eq!(count_lines(&quiet), 110);
    assert!(markers(&quiet).is_empty());
    let status = status_json(&config);
    let cursor = status["sinks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "quiet")
        .map(|k| k["cursor"].clone());
    assert_eq!(cursor, Some(status["head_seq"].clone()), "{status}");
    assert_eq!(status["head_seq"], 112);
    assert_eq!(
        status["last_gaps"].as_array().map(Vec::len),
        Some(2),
        "{status}"
    );
}
