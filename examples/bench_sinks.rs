//! Sink throughput from a backlog, against the release gapless binary:
//! a store is filled with N events (in-process broker, one file sink),
//! then, run after run, a new sink of each kind (file; NATS JetStream on a
//! local `nats-server -js`, stream recreated each run; Kafka on a local
//! tansu with in-memory storage, a new one-partition topic each run)
//! starts at cursor 0 and drains the backlog. Reports events/s (first
//! cursor move to the head) and gapless's CPU µs per event over the same
//! span; medians.
//!
//! Usage: cargo run --release --example bench_sinks -- [EVENTS] [RUNS]
//! Needs: nats-server (apt-get install nats-server) and tansu
//! (scripts/install-tansu.sh).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gapless::store::Store;
use gapless_sim::broker::EmbeddedBroker;
use gapless_sim::events;
use gapless_sim::publisher::Publisher;

mod common;

/// A gapless config on the bench's broker and store with one `sink` table.
fn write_config(dir: &Path, broker: &EmbeddedBroker, sink: &str) -> PathBuf {
    let config = dir.join("gapless.toml");
    std::fs::write(
        &config,
        format!(
            "[source]\nkind = \"vcd\"\nname = \"bench\"\n[mqtt]\nurl = \"{}\"\n\
             [store]\npath = \"{}\"\n[admin]\nlisten = \"\"\n[[sink]]\n{sink}\n",
            broker.url(),
            dir.join("bench.db").display()
        ),
    )
    .unwrap();
    config
}

fn start(gapless: &Path, config: &Path) -> Child {
    Command::new(gapless)
        .args(["--log-level", "warn", "run", "--config"])
        .arg(config)
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start gapless")
}

fn stop(mut child: Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}

/// User + system CPU of a process so far, in µs (from /proc).
fn cpu_us(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(vec![], |(_, rest)| rest.split_whitespace().collect());
    let ticks: f64 = fields
        .get(11..13)
        .map_or(0.0, |f| f.iter().map(|t| t.parse::<f64>().unwrap()).sum());
    ticks * 1e6 / 100.0
}

/// Waits until sink `name` reaches `head`: (events/s, CPU µs per event),
/// both measured from the first cursor move.
async fn drain(store: &Store, name: &str, head: i64, pid: u32) -> (f64, f64) {
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut first: Option<(Instant, i64, f64)> = None;
    loop {
        let cursor = store.cursor(name).await.unwrap();
        if first.is_none() && cursor > 0 {
            first = Some((Instant::now(), cursor, cpu_us(pid)));
        }
        if cursor >= head {
            let (t0, c0, cpu0) = first.unwrap();
            let events = (head - c0) as f64;
            return (
                events / t0.elapsed().as_secs_f64(),
                (cpu_us(pid) - cpu0) / events,
            );
        }
        assert!(Instant::now() < deadline, "{name} stuck at {cursor}/{head}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `nats-server -js` on a port it picks, reported in its ports file.
fn nats_server(dir: &Path) -> (Child, String) {
    let bin = ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("nats-server is not installed (apt-get install nats-server)");
    let mut child = Command::new(bin)
        .args(["-js", "-a", "127.0.0.1", "-p", "-1", "-sd"])
        .arg(dir.join("js"))
        .arg("--ports_file_dir")
        .arg(dir)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let ports = dir.join(format!("nats-server_{}.ports", child.id()));
    for _ in 0..1000 {
        let url = std::fs::read_to_string(&ports)
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v["nats"][0].as_str().map(str::to_string));
        if let Some(url) = url {
            return (child, url);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("nats-server did not start");
}

/// tansu on a free loopback port, in-memory storage: (child, brokers).
fn tansu(dir: &Path) -> (Child, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("tcp://127.0.0.1:{port}");
    let child = Command::new("tansu")
        .args([
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
        ])
        .args(["--storage-engine", "memory://tansu/"])
        .env("RUST_LOG", "error")
        .stderr(std::fs::File::create(dir.join("tansu.log")).unwrap())
        .spawn()
        .expect("tansu is not installed (scripts/install-tansu.sh)");
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        std::thread::sleep(Duration::from_millis(20));
    }
    (child, format!("127.0.0.1:{port}"))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main]
async fn main() {
    gapless::net::tls::install_crypto_provider();
    let (n, runs) = common::args(100_000);
    let gapless = common::gapless_binary();
    let dir = tempfile::tempdir().unwrap();
    let broker = EmbeddedBroker::start().await.unwrap();

    eprintln!("filling the store with {n} events...");
    let fill = write_config(
        dir.path(),
        &broker,
        &format!(
            "name = \"fill\"\nkind = \"file\"\npath = \"{}\"",
            dir.path().join("fill.jsonl").display()
        ),
    );
    let child = start(&gapless, &fill);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let salt = gapless::event::now_us() as u64;
    let t0 = gapless::event::now_us();
    let messages: Vec<(String, Vec<u8>)> = (0..n)
        .map(|i| {
            let ev = events::audit_event(salt, i, t0 + i as i64);
            (events::topic(salt, i), events::envelope(&ev))
        })
        .collect();
    let mut p = Publisher::connect("127.0.0.1", broker.addr().port(), "bench-pub")
        .await
        .unwrap();
    p.publish_all(messages, None).await.unwrap();
    let store = Store::open(&gapless::config::StoreConfig {
        path: dir.path().join("bench.db"),
        ..Default::default()
    })
    .await
    .unwrap();
    let pid = child.id();
    let _ = drain(&store, "fill", n as i64, pid).await;
    stop(child);

    let (mut nats, url) = nats_server(dir.path());
    let client = async_nats::connect(&url).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let (mut kafka, brokers) = tansu(dir.path());
    let mut results: Vec<(&str, Vec<f64>, Vec<f64>)> = vec![
        ("file", vec![], vec![]),
        ("nats", vec![], vec![]),
        ("kafka", vec![], vec![]),
    ];
    for r in 1..=runs {
        for (kind, rates, cpus) in results.iter_mut() {
            let name = format!("{kind}-{r}");
            let sink = match *kind {
                "file" => format!(
                    "name = \"{name}\"\nkind = \"file\"\npath = \"{}\"",
                    dir.path().join(format!("{name}.jsonl")).display()
                ),
                "kafka" => {
                    let topic = format!("bench-{r}");
                    let created = Command::new("tansu")
                        .args(["topic", "create", &topic, "--partitions", "1", "--broker"])
                        .arg(format!("tcp://{brokers}"))
                        .status()
                        .unwrap();
                    assert!(created.success(), "tansu topic create {topic}");
                    format!(
                        "name = \"{name}\"\nkind = \"kafka\"\nbrokers = \"{brokers}\"\ntopic = \"{topic}\""
                    )
                }
                _ => {
                    let _ = js.delete_stream("GAPLESS").await;
                    js.create_stream(async_nats::jetstream::stream::Config {
                        name: "GAPLESS".into(),
                        subjects: vec!["gapless.>".into()],
                        ..Default::default()
                    })
                    .await
                    .unwrap();
                    format!("name = \"{name}\"\nkind = \"nats\"\nurl = \"{url}\"")
                }
            };
            let child = start(&gapless, &write_config(dir.path(), &broker, &sink));
            let (rate, cpu) = drain(&store, &name, n as i64, child.id()).await;
            stop(child);
            println!("  run {r} {kind:<5} {rate:>8.0} events/s  {cpu:>6.1} CPU µs/event");
            rates.push(rate);
            cpus.push(cpu);
        }
    }
    println!("median of {runs} ({n} events backlog):");
    for (kind, rates, cpus) in results {
        println!(
            "  {kind:<5} {:>8.0} events/s  {:>6.1} CPU µs/event",
            median(rates),
            median(cpus)
        );
    }
    for child in [&mut nats, &mut kafka] {
        let _ = child.kill();
        let _ = child.wait();
    }
}
