//! The NATS JetStream sink against a real `nats-server -js` (Debian's
//! `nats-server` package) on an ephemeral loopback port.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gapless_sim::events;

use crate::support::*;

/// The nats-server binary (see `server_bin`).
fn nats_bin(test: &str) -> Option<PathBuf> {
    server_bin(
        test,
        &[
            "/usr/sbin/nats-server",
            "/usr/bin/nats-server",
            "/usr/local/bin/nats-server",
        ],
        "apt-get install nats-server",
        "GAPLESS_SKIP_NATS",
    )
}

/// A JetStream-enabled nats-server on 127.0.0.1. The first start binds
/// port 0 and reports its port in a ports file (no bind-then-release
/// race); a restart reuses that port and the same store directory.
struct NatsServer {
    bin: PathBuf,
    dir: PathBuf,
    args: Vec<String>,
    port: u16,
    child: Option<Child>,
}

impl NatsServer {
    fn start(bin: PathBuf, dir: &Path, args: &[&str]) -> NatsServer {
        let mut s = NatsServer {
            bin,
            dir: dir.join("nats"),
            args: args.iter().map(|a| a.to_string()).collect(),
            port: 0,
            child: None,
        };
        std::fs::create_dir_all(&s.dir).unwrap();
        s.restart();
        s
    }

    fn restart(&mut self) {
        let port = if self.port == 0 {
            "-1".to_string()
        } else {
            self.port.to_string()
        };
        let child = Command::new(&self.bin)
            .args(["-js", "-a", "127.0.0.1", "-p", &port, "-sd"])
            .arg(self.dir.join("store"))
            .arg("--ports_file_dir")
            .arg(&self.dir)
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.join("server.log")).unwrap())
            .spawn()
            .expect("spawn nats-server");
        let ports = self.dir.join(format!("nats-server_{}.ports", child.id()));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        let url = loop {
            let parsed = std::fs::read_to_string(&ports)
                .ok()
                .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok());
            if let Some(url) = parsed.as_ref().and_then(|v| v["nats"][0].as_str()) {
                break url.to_string();
            }
            assert!(Instant::now() < deadline, "nats-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        };
        self.port = url.rsplit(':').next().unwrap().parse().unwrap();
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// A JetStream client, with credentials when the server wants them.
    async fn jetstream(&self, auth: Option<(&str, &str)>) -> async_nats::jetstream::Context {
        let options = match auth {
            Some((u, p)) => async_nats::ConnectOptions::with_user_and_password(u.into(), p.into()),
            None => async_nats::ConnectOptions::new(),
        };
        let client = options.connect(self.url()).await.expect("connect to nats");
        async_nats::jetstream::new(client)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Creates the stream `GAPLESS` on `gapless.>` with JetStream's defaults
/// (a two-minute duplicate window).
async fn create_stream(
    js: &async_nats::jetstream::Context,
) -> async_nats::jetstream::stream::Stream {
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "GAPLESS".into(),
        subjects: vec!["gapless.>".into()],
        ..Default::default()
    })
    .await
    .expect("create the stream")
}

/// One stored stream message: its subject, `Nats-Msg-Id`, `gapless-seq`
/// and the `seq` inside its CloudEvent body.
struct Stored {
    subject: String,
    msg_id: String,
    gapless_seq: i64,
    body_seq: i64,
}

/// Every message of the stream, in stream order.
async fn read_stream(stream: &mut async_nats::jetstream::stream::Stream) -> Vec<Stored> {
    let last = stream.info().await.unwrap().state.last_sequence;
    let mut out = Vec::new();
    for seq in 1..=last {
        let m = stream.get_raw_message(seq).await.unwrap();
        let header = |name: &str| m.headers.get(name).map(|v| v.as_str().to_string());
        let body: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
        out.push(Stored {
            subject: m.subject.to_string(),
            msg_id: header("Nats-Msg-Id").expect("Nats-Msg-Id"),
            gapless_seq: header("gapless-seq").unwrap().parse().unwrap(),
            body_seq: body["seq"].as_i64().unwrap(),
        });
    }
    out
}

fn nats_sink(url: &str, extra: &str) -> String {
    format!("\n[[sink]]\nname = \"nats\"\nkind = \"nats\"\nurl = \"{url}\"\n{extra}")
}

/// The crash test of the issue: 10k events, gapless SIGKILLed while it
/// publishes, restarted: the stream holds each event once, in `seq` order.
/// Then a replay of the last 5k inside the duplicate window adds nothing:
/// `Nats-Msg-Id` is what makes a resend harmless, shown without relying on
/// where the kill landed. The sink has only its `url`: every other key is
/// the default.
#[tokio::test(flavor = "multi_thread")]
async fn a_sigkill_mid_publish_leaves_each_event_once_in_the_stream() {
    let (Some(mosq), Some(nats_bin)) = (mosquitto_bin("nats_sigkill"), nats_bin("nats_sigkill"))
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(mosq, dir.path());
    let nats = NatsServer::start(nats_bin, dir.path(), &[]);
    let js = nats.jetstream(None).await;
    let mut stream = create_stream(&js).await;
    let config = config(dir.path(), &broker.tcp_url(), false, "gapless-nats");
    let text = std::fs::read_to_string(&config).unwrap() + &nats_sink(&nats.url(), "");
    std::fs::write(&config, text).unwrap();

    let mut gapless = Gapless::start(dir.path(), &config);
    gapless.wait_subscribed(1);
    let salt = 0x5eed_0900;
    let n = 10_000u64;
    let mut publisher = broker.publisher("pub-nats").await;
    let publishing = tokio::spawn(async move {
        publisher
            .publish_all(event_messages(salt, 0..n), Some(4000.0))
            .await
            .unwrap();
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    while stream.info().await.unwrap().state.messages < 2000 {
        assert!(Instant::now() < deadline, "{}", gapless.log_text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    gapless.kill();
    let at_kill = stream.info().await.unwrap().state.messages;
    assert!(at_kill < n, "the kill must land mid-stream");
    publishing.await.unwrap();

    let mut gapless = Gapless::start(dir.path(), &config);
    wait_sink_caught_up(&config, "nats", n as i64, &mut gapless);
    wait_sink_caught_up(&config, "file", n as i64, &mut gapless);
    run_ok(
        gapless_cmd()
            .args(["replay", "--sink", "nats", "--from-seq", "5001", "--config"])
            .arg(&config),
    );
    wait_sink_caught_up(&config, "nats", n as i64, &mut gapless);
    gapless.stop();

    assert_exactly_once(&dir.path().join("events.jsonl"), salt, n);
    let stored = read_stream(&mut stream).await;
    assert_eq!(stored.len() as u64, n, "one message per event");
    let mut count: HashMap<&str, usize> = HashMap::new();
    for m in &stored {
        *count.entry(m.msg_id.as_str()).or_default() += 1;
    }
    for i in 0..n {
        assert_eq!(
            count.get(events::event_id(salt, i).as_str()),
            Some(&1),
            "event {i}"
        );
    }
    for pair in stored.windows(2) {
        assert!(
            pair[0].gapless_seq < pair[1].gapless_seq,
            "gapless-seq {} then {}",
            pair[0].gapless_seq,
            pair[1].gapless_seq
        );
    }
    for m in &stored {
        assert_eq!(m.gapless_seq, m.body_seq);
        assert!(
            m.subject
                .starts_with("gapless.test.com_vmware_cloud_event_"),
            "{}",
            m.subject
        );
    }
}

/// A NATS outage blocks the sink (the stream waits, nothing is skipped),
/// and the sink publishes the backlog once the server is back. The server
/// wants a user and password; the password never reaches the log.
#[tokio::test(flavor = "multi_thread")]
async fn a_nats_outage_blocks_the_sink_until_the_server_is_back() {
    let (Some(mosq), Some(nats_bin)) = (mosquitto_bin("nats_outage"), nats_bin("nats_outage"))
    else {
        return;
    };
    let password = "nats-pw-7f3a91";
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(mosq, dir.path());
    let mut nats = NatsServer::start(
        nats_bin,
        dir.path(),
        &["--user", "gapless", "--pass", password],
    );
    let mut stream = create_stream(&nats.jetstream(Some(("gapless", password))).await).await;
    let config = config(dir.path(), &broker.tcp_url(), false, "gapless-nats-outage");
    let text = std::fs::read_to_string(&config).unwrap()
        + &nats_sink(
            &nats.url(),
            "user = \"gapless\"\npassword_env = \"NATS_PASSWORD\"\n",
        );
    std::fs::write(&config, text).unwrap();
    let mut gapless = Gapless::start_env(dir.path(), &config, &[("NATS_PASSWORD", password)]);
    gapless.wait_subscribed(1);
    let salt = 0x5eed_0901;
    let mut publisher = broker.publisher("pub-nats-outage").await;
    publisher
        .publish_all(event_messages(salt, 0..100), None)
        .await
        .unwrap();
    wait_sink_caught_up(&config, "nats", 100, &mut gapless);

    nats.kill();
    publisher
        .publish_all(event_messages(salt, 100..200), None)
        .await
        .unwrap();
    // Positive signal first: the file sink has all 200, so the NATS sink's
    // lag is what it has not published.
    wait_sink_caught_up(&config, "file", 200, &mut gapless);
    let blocked = sink_status(&config, "nats");
    assert!(blocked["lag"].as_i64().unwrap() > 0, "{blocked}");

    nats.restart();
    wait_sink_caught_up(&config, "nats", 200, &mut gapless);
    let log = gapless.log.clone();
    gapless.stop();
    let stored = read_stream(&mut stream).await;
    let ids: Vec<String> = stored.iter().map(|m| m.msg_id.clone()).collect();
    let truth: Vec<String> = (0..200).map(|i| events::event_id(salt, i)).collect();
    assert_eq!(ids, truth, "all 200 once, in order");
    let log = std::fs::read_to_string(log).unwrap();
    assert!(!log.contains(password), "the password reached the log");
}
