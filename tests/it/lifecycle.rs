//! The daemon's life as an operator drives it: `--exit-idle` with the
//! stdout sink and JSON logs, SIGINT, `tail --follow`, and a shutdown that
//! `shutdown_timeout` has to cut.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::*;

/// The test config with its file sink replaced by the stdout sink.
fn stdout_config(dir: &std::path::Path, url: &str) -> std::path::PathBuf {
    let path = config(dir, url, false, "gapless-stdout");
    let text = std::fs::read_to_string(&path).unwrap();
    let file_sink = format!(
        "kind = \"file\"\npath = \"{}\"\n",
        dir.join("events.jsonl").display()
    );
    assert!(text.contains(&file_sink));
    std::fs::write(&path, text.replace(&file_sink, "kind = \"stdout\"\n")).unwrap();
    path
}

/// `gapless --log-format json run --exit-idle 2s` with the stdout sink:
/// every event is printed once in `seq` order, gapless exits 0 by itself
/// once idle, and every log line is a JSON object.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_idle_drains_the_stdout_sink_and_logs_json() {
    let Some(bin) = mosquitto_bin("exit_idle") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(bin, dir.path());
    let config = stdout_config(dir.path(), &broker.tcp_url());
    let printed = dir.path().join("stdout.jsonl");
    let mut gapless = Gapless::spawn(
        dir.path(),
        &config,
        &["--log-format", "json"],
        &["--exit-idle", "2s"],
        &[],
        Stdio::from(std::fs::File::create(&printed).unwrap()),
    );
    gapless.wait_subscribed(1);
    let salt = 0x5eed_0500;
    let mut publisher = broker.publisher("pub-idle").await;
    publisher
        .publish_all(event_messages(salt, 0..200), None)
        .await
        .unwrap();
    assert_eq!(gapless.wait_exit(Duration::from_secs(60)), Some(0));
    assert_exactly_once(&printed, salt, 200);
    let log = gapless.log_text();
    assert!(!log.is_empty());
    for line in log.lines() {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("a log line that is no JSON ({e}): {line}"));
        assert!(v["level"].is_string() && v["fields"].is_object(), "{line}");
    }
}

/// Ctrl-C (SIGINT) stops gapless as SIGTERM does: drained, summary
/// written, exit 0. Meanwhile `tail --follow` prints each released event
/// as it comes, the same lines as the file sink.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_drains_and_exits_0_while_tail_follows_the_stream() {
    let Some(bin) = mosquitto_bin("sigint") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(bin, dir.path());
    let config = config(dir.path(), &broker.tcp_url(), false, "gapless-sigint");
    let mut gapless = Gapless::start(dir.path(), &config);
    gapless.wait_subscribed(1);
    let followed = dir.path().join("tail.jsonl");
    let mut tail = Command::new(env!("CARGO_BIN_EXE_gapless"))
        .args(["tail", "--follow", "--config"])
        .arg(&config)
        .stdout(std::fs::File::create(&followed).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    let salt = 0x5eed_0600;
    let mut publisher = broker.publisher("pub-int").await;
    publisher
        .publish_all(event_messages(salt, 0..300), None)
        .await
        .unwrap();
    let file = dir.path().join("events.jsonl");
    wait_lines(&file, 300, Duration::from_secs(60), &mut gapless);
    wait_for("tail --follow to print 300 lines", &mut gapless, || {
        count_lines(&followed) >= 300
    });
    tail.kill().unwrap();
    tail.wait().unwrap();

    let summary = gapless.stop_by("-INT");
    assert_eq!(summary["counters"]["delivered"], 300, "{summary}");
    assert_exactly_once(&file, salt, 300);
    assert_eq!(
        std::fs::read_to_string(&followed).unwrap(),
        std::fs::read_to_string(&file).unwrap()
    );
}

/// A webhook that takes the request and never answers holds its sink in
/// flight; SIGTERM's drain cannot finish, and `shutdown_timeout` ends it
/// with exit 1 instead of waiting for the request's own timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_timeout_cuts_a_drain_that_cannot_finish() {
    let Some(bin) = mosquitto_bin("shutdown_timeout") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(bin, dir.path());
    // Accepts connections and reads nothing: the POST never gets an answer.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    let config = config(dir.path(), &broker.tcp_url(), false, "gapless-cut");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        format!(
            "shutdown_timeout = \"1s\"\n{text}\n[[sink]]\nname = \"hook\"\nkind = \"webhook\"\n\
             url = \"http://{addr}/hook\"\n"
        ),
    )
    .unwrap();
    let mut gapless = Gapless::start(dir.path(), &config);
    gapless.wait_subscribed(1);
    let mut publisher = broker.publisher("pub-cut").await;
    publisher
        .publish_all(event_messages(0x5eed_0700, 0..3), None)
        .await
        .unwrap();
    let (_held, _) = tokio::time::timeout(Duration::from_secs(30), silent.accept())
        .await
        .expect("the webhook sink connects")
        .unwrap();
    Command::new("kill")
        .args(["-TERM", &gapless.pid().to_string()])
        .status()
        .unwrap();
    assert_eq!(gapless.wait_exit(Duration::from_secs(30)), Some(1));
}
