//! The Kafka sink against a real Kafka-protocol broker: tansu 0.6.0 with
//! in-memory storage (`scripts/install-tansu.sh`), on a loopback port.
//! Records are read back by partition and offset.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gapless_sim::events;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::support::*;

/// The tansu binary (see `server_bin`).
fn tansu_bin(test: &str) -> Option<PathBuf> {
    server_bin(
        test,
        &["/usr/local/bin/tansu", "/usr/bin/tansu"],
        "scripts/install-tansu.sh",
        "GAPLESS_SKIP_KAFKA",
    )
}

/// tansu on 127.0.0.1, on a port reserved for its whole life (see
/// [`Reserved`]): it cannot report a port it picked, because it advertises
/// the one it was given.
struct Tansu {
    child: Child,
    port: u16,
    _reserved: Reserved,
}

impl Tansu {
    /// Starts tansu on `port`, or on a newly reserved one when `None`.
    fn start(bin: &Path, dir: &Path, port: Option<Reserved>) -> Tansu {
        let reserved = port.unwrap_or_else(reserve_port);
        let port = reserved.port;
        let url = format!("tcp://127.0.0.1:{port}");
        let log = dir.join("tansu.log");
        let mut child = Command::new(bin)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn tansu");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = child.try_wait().unwrap() {
                panic!(
                    "tansu exited ({status}):\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            assert!(Instant::now() < deadline, "tansu did not listen on {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        Tansu {
            child,
            port,
            _reserved: reserved,
        }
    }

    fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn create_topic(&self, bin: &Path, topic: &str) {
        let out = Command::new(bin)
            .args(["topic", "create", topic, "--partitions", "1", "--broker"])
            .arg(format!("tcp://127.0.0.1:{}", self.port))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One record: its key, `gapless-seq`, `ce_*` headers and value.
struct Record {
    key: String,
    seq: i64,
    ce: HashMap<String, String>,
    value: serde_json::Value,
}

/// A consumer assigned to partition 0 of `topic` (no group coordination),
/// seeing committed records only.
fn consumer(brokers: &str, topic: &str) -> BaseConsumer {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "gapless-test")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)
        .unwrap();
    c.assign(&tpl).unwrap();
    c
}

/// Every record of partition 0, by offset: at least `min`, then until
/// nothing more comes for a second.
fn read_all(c: &BaseConsumer, min: usize) -> Vec<Record> {
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(Instant::now() < deadline, "read {} of {min}", out.len());
        let Some(m) = c.poll(Duration::from_millis(1000)) else {
            if out.len() >= min {
                break;
            }
            continue;
        };
        let m = m.unwrap();
        let mut ce = HashMap::new();
        let mut seq = None;
        for h in m
            .headers()
            .map(|h| h.iter().collect::<Vec<_>>())
            .unwrap_or_default()
        {
            let v = String::from_utf8(h.value.unwrap().to_vec()).unwrap();
            match h.key.strip_prefix("ce_") {
                Some(k) => {
                    ce.insert(k.to_string(), v);
                }
                None if h.key == "gapless-seq" => seq = Some(v.parse().unwrap()),
                None => {}
            }
        }
        out.push(Record {
            key: String::from_utf8(m.key().unwrap().to_vec()).unwrap(),
            seq: seq.expect("gapless-seq header"),
            ce,
            value: serde_json::from_slice(m.payload().unwrap()).unwrap(),
        });
    }
    out
}

/// The crash test of the issue: 10k events, gapless SIGKILLed while it
/// sends, restarted. Every event is in the topic; what the restart sent
/// again (cursor commit lost) carries the same key and `gapless-seq`, so
/// dropping records whose `gapless-seq` was seen leaves 1..=N in order.
/// The sink has only `brokers` and `topic`.
#[tokio::test(flavor = "multi_thread")]
async fn a_sigkill_mid_send_leaves_every_event_in_the_topic_and_resends_keep_their_seq() {
    gapless::net::tls::install_crypto_provider();
    let (Some(mosq), Some(tansu)) = (mosquitto_bin("kafka_sigkill"), tansu_bin("kafka_sigkill"))
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(mosq, dir.path());
    let kafka = Tansu::start(&tansu, dir.path(), None);
    kafka.create_topic(&tansu, "vcd-events");
    let config = config(dir.path(), &broker.tcp_url(), false, "gapless-kafka");
    let text = std::fs::read_to_string(&config).unwrap()
        + &format!(
            "\n[[sink]]\nname = \"kafka\"\nkind = \"kafka\"\nbrokers = \"{}\"\ntopic = \"vcd-events\"\n",
            kafka.brokers()
        );
    std::fs::write(&config, text).unwrap();

    let mut gapless = Gapless::start(dir.path(), &config);
    gapless.wait_subscribed(1);
    let salt = 0x5eed_0a00;
    let n = 10_000u64;
    let mut publisher = broker.publisher("pub-kafka").await;
    let publishing = tokio::spawn(async move {
        publisher
            .publish_all(event_messages(salt, 0..n), Some(4000.0))
            .await
            .unwrap();
    });
    // tansu's high watermark is not a record count: the sink's cursor
    // tells how far it got.
    let deadline = Instant::now() + Duration::from_secs(60);
    while sink_status(&config, "kafka")["cursor"].as_i64().unwrap() < 2000 {
        assert!(Instant::now() < deadline, "{}", gapless.log_text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    gapless.kill();
    assert!(
        sink_status(&config, "kafka")["cursor"].as_i64().unwrap() < n as i64,
        "the kill must land mid-stream"
    );
    publishing.await.unwrap();

    let mut gapless = Gapless::start(dir.path(), &config);
    wait_sink_caught_up(&config, "kafka", n as i64, &mut gapless);
    wait_sink_caught_up(&config, "file", n as i64, &mut gapless);
    gapless.stop();
    assert_exactly_once(&dir.path().join("events.jsonl"), salt, n);

    let records = read_all(&consumer(&kafka.brokers(), "vcd-events"), n as usize);
    let mut first_of_seq: HashMap<i64, &Record> = HashMap::new();
    let mut in_order = Vec::new();
    for r in &records {
        match first_of_seq.get(&r.seq) {
            Some(first) => assert_eq!(first.key, r.key, "a resend of seq {} keeps its key", r.seq),
            None => {
                first_of_seq.insert(r.seq, r);
                in_order.push(r.seq);
            }
        }
    }
    let expected: Vec<i64> = (1..=n as i64).collect();
    if let Some(i) = (0..expected.len()).find(|&i| in_order.get(i) != Some(&expected[i])) {
        panic!(
            "first copies must be seq 1..=N in offset order; at {i}: {:?} ({} records, {} distinct)",
            &in_order[i.saturating_sub(3)..(i + 5).min(in_order.len())],
            records.len(),
            in_order.len()
        );
    }
    let ids: HashSet<&str> = records.iter().map(|r| r.key.as_str()).collect();
    let truth: HashSet<String> = (0..n).map(|i| events::event_id(salt, i)).collect();
    assert_eq!(ids.len(), truth.len());
    assert!(truth.iter().all(|id| ids.contains(id.as_str())));
    for r in &records {
        assert_eq!(r.ce["id"], r.key);
        assert_eq!(r.ce["specversion"], "1.0");
        assert_eq!(r.ce["seq"], r.seq.to_string());
        assert!(
            r.ce["type"].starts_with("com.vmware.cloud.event."),
            "{:?}",
            r.ce
        );
        assert_eq!(r.ce["source"], "test");
        assert!(
            r.value.get("eventId").is_some(),
            "the value is the event's data"
        );
    }
    eprintln!(
        "kafka: {} records for {n} events ({} re-sent after the kill)",
        records.len(),
        records.len() as u64 - n
    );
}

/// With no broker at its address the sink blocks (nothing is skipped),
/// and the same gapless process sends the backlog once a broker listens
/// there.
#[tokio::test(flavor = "multi_thread")]
async fn a_kafka_outage_blocks_the_sink_until_the_broker_is_there() {
    gapless::net::tls::install_crypto_provider();
    let (Some(mosq), Some(tansu)) = (mosquitto_bin("kafka_outage"), tansu_bin("kafka_outage"))
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(mosq, dir.path());
    let config = config(dir.path(), &broker.tcp_url(), false, "gapless-kafka-outage");
    let reserved = reserve_port();
    let port = reserved.port;
    let text = std::fs::read_to_string(&config).unwrap()
        + &format!(
            "\n[[sink]]\nname = \"kafka\"\nkind = \"kafka\"\nbrokers = \"127.0.0.1:{port}\"\ntopic = \"t\"\n"
        );
    std::fs::write(&config, text).unwrap();
    let mut gapless = Gapless::start(dir.path(), &config);
    gapless.wait_subscribed(1);
    let salt = 0x5eed_0a01;
    let mut publisher = broker.publisher("pub-kafka-outage").await;
    publisher
        .publish_all(event_messages(salt, 0..100), None)
        .await
        .unwrap();
    // Positive signal first: the file sink has all 100.
    wait_sink_caught_up(&config, "file", 100, &mut gapless);
    let lag = sink_status(&config, "kafka")["lag"].as_i64().unwrap();
    assert_eq!(lag, 100, "nothing reached a broker that is not there");

    let kafka = Tansu::start(&tansu, dir.path(), Some(reserved));
    kafka.create_topic(&tansu, "t");
    wait_sink_caught_up(&config, "kafka", 100, &mut gapless);
    gapless.stop();
    let records = read_all(&consumer(&kafka.brokers(), "t"), 100);
    let keys: Vec<String> = records.iter().map(|r| r.key.clone()).collect();
    let truth: Vec<String> = (0..100).map(|i| events::event_id(salt, i)).collect();
    assert!(
        keys == truth,
        "all 100 once, in order: {} records",
        keys.len()
    );
}

/// With `transactional_id` each batch is a transaction. A successor that
/// starts a producer with the same id fences gapless: its next batch is
/// not committed, its cursor stays, and it stops, naming the fencing.
/// Only the committed events are visible to a read-committed consumer.
#[tokio::test(flavor = "multi_thread")]
async fn a_successor_with_the_same_transactional_id_fences_gapless() {
    gapless::net::tls::install_crypto_provider();
    let (Some(mosq), Some(tansu)) = (mosquitto_bin("kafka_fence"), tansu_bin("kafka_fence")) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(mosq, dir.path());
    let kafka = Tansu::start(&tansu, dir.path(), None);
    kafka.create_topic(&tansu, "t");
    let config = config(dir.path(), &broker.tcp_url(), false, "gapless-kafka-fence");
    let text = std::fs::read_to_string(&config).unwrap()
        + &format!(
            "\n[[sink]]\nname = \"kafka\"\nkind = \"kafka\"\nbrokers = \"{}\"\ntopic = \"t\"\n\
             transactional_id = \"gapless-vcd\"\n",
            kafka.brokers()
        );
    std::fs::write(&config, text).unwrap();
    let mut gapless = Gapless::start(dir.path(), &config);
    gapless.wait_subscribed(1);
    let salt = 0x5eed_0a02;
    let mut publisher = broker.publisher("pub-kafka-fence").await;
    publisher
        .publish_all(event_messages(salt, 0..100), None)
        .await
        .unwrap();
    wait_sink_caught_up(&config, "kafka", 100, &mut gapless);

    let brokers = kafka.brokers();
    let successor = tokio::task::spawn_blocking(move || {
        use rdkafka::producer::{FutureProducer, Producer};
        let p: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("transactional.id", "gapless-vcd")
            .create()
            .unwrap();
        p.init_transactions(Duration::from_secs(10)).unwrap();
        p
    })
    .await
    .unwrap();
    publisher
        .publish_all(event_messages(salt, 100..150), None)
        .await
        .unwrap();
    let code = gapless.wait_exit(Duration::from_secs(60));
    assert_ne!(code, Some(0), "a fenced gapless stops with an error");
    let log = gapless.log_text();
    assert!(log.contains("fenced"), "{log}");
    assert_eq!(
        sink_status(&config, "kafka")["cursor"].as_i64().unwrap(),
        100,
        "the fenced batch is not counted"
    );
    drop(successor);

    let records = read_all(&consumer(&kafka.brokers(), "t"), 100);
    let keys: Vec<String> = records.iter().map(|r| r.key.clone()).collect();
    let truth: Vec<String> = (0..100).map(|i| events::event_id(salt, i)).collect();
    assert!(
        keys == truth,
        "the 100 committed, once, in order: {} records",
        keys.len()
    );
}
