//! Real parts for the tests: mosquitto as a child process on ephemeral
//! loopback ports (TCP and WebSocket listeners), and the real `gapless`
//! binary run against it with a config file in a temporary directory.

use std::collections::HashSet;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use gapless_sim::events;
use gapless_sim::publisher::Publisher;

/// Returns the first of `paths` that exists. Its absence fails the test
/// (a skipped server test would pass unseen), unless `skip_var=1` says to
/// skip: then it prints SKIP and returns `None`.
pub fn server_bin(test: &str, paths: &[&str], install: &str, skip_var: &str) -> Option<PathBuf> {
    let found = paths.iter().map(PathBuf::from).find(|p| p.exists());
    if found.is_none() {
        if std::env::var(skip_var).as_deref() != Ok("1") {
            panic!("{test}: {paths:?} not installed ({install}), or set {skip_var}=1 to skip");
        }
        eprintln!("SKIP {test}: {paths:?} not installed ({skip_var}=1)");
    }
    found
}

/// The mosquitto binary (see `server_bin`).
pub fn mosquitto_bin(test: &str) -> Option<PathBuf> {
    server_bin(
        test,
        &[
            "/usr/sbin/mosquitto",
            "/usr/bin/mosquitto",
            "/usr/local/sbin/mosquitto",
        ],
        "apt-get install mosquitto",
        "GAPLESS_SKIP_MOSQUITTO",
    )
}

/// A loopback port held for a server the test starts later: bound with
/// `SO_REUSEADDR` and not listening, so connections to it are refused and
/// no other process is given it (neither by `bind` to port 0 nor as a
/// connection's local port), while a server that sets `SO_REUSEADDR`
/// (mosquitto, tokio, tansu) can still listen on it. A port found free and
/// released instead can be taken by another test before its server binds.
pub struct Reserved {
    socket: tokio::net::TcpSocket,
    pub port: u16,
}

pub fn reserve_port() -> Reserved {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_reuseaddr(true).unwrap();
    socket.bind(([127, 0, 0, 1], 0).into()).unwrap();
    let port = socket.local_addr().unwrap().port();
    Reserved { socket, port }
}

impl Reserved {
    pub fn addr(&self) -> std::net::SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }

    /// Starts listening on the held port itself.
    pub fn listen(self) -> tokio::net::TcpListener {
        self.socket.listen(1024).unwrap()
    }
}

/// A mosquitto broker with a TCP and a WebSocket listener on 127.0.0.1.
/// Its ports stay reserved for its whole life, so a restart finds them free.
pub struct Mosquitto {
    bin: PathBuf,
    conf: PathBuf,
    pub tcp_port: u16,
    pub ws_port: u16,
    /// The port `{port}` stood for in the extra config.
    pub extra_port: u16,
    _ports: [Reserved; 3],
    child: Option<Child>,
}

impl Mosquitto {
    pub fn start(bin: PathBuf, dir: &Path) -> Mosquitto {
        Self::start_with(bin, dir, "")
    }

    /// Starts mosquitto with `extra` appended to its config (more
    /// listeners: `{port}` stands for one more reserved port).
    pub fn start_with(bin: PathBuf, dir: &Path, extra: &str) -> Mosquitto {
        let ports = [reserve_port(), reserve_port(), reserve_port()];
        let [tcp_port, ws_port, extra_port] = [ports[0].port, ports[1].port, ports[2].port];
        let conf = dir.join("mosquitto.conf");
        let extra = extra.replace("{port}", &extra_port.to_string());
        // Unlimited queue: the persistent-session tests park thousands of
        // messages for an offline client.
        std::fs::write(
            &conf,
            format!(
                "listener {tcp_port} 127.0.0.1\n\
                 listener {ws_port} 127.0.0.1\nprotocol websockets\n\
                 allow_anonymous true\npersistence false\n\
                 max_queued_messages 0\nmax_inflight_messages 20\n\
                 log_dest stderr\nlog_type error\nlog_type warning\n{extra}"
            ),
        )
        .unwrap();
        let mut m = Mosquitto {
            bin,
            conf,
            tcp_port,
            ws_port,
            extra_port,
            _ports: ports,
            child: None,
        };
        m.restart();
        m
    }

    /// (Re)starts the broker on the same ports and waits until it listens.
    pub fn restart(&mut self) {
        let mut child = Command::new(&self.bin)
            .arg("-c")
            .arg(&self.conf)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn mosquitto");
        let deadline = Instant::now() + Duration::from_secs(10);
        for port in [self.tcp_port, self.ws_port] {
            while TcpStream::connect(("127.0.0.1", port)).is_err() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("mosquitto exited ({status}) before it listened on {port}");
                }
                assert!(
                    Instant::now() < deadline,
                    "mosquitto did not start on port {port}"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        self.child = Some(child);
    }

    /// Kills the broker hard (its in-memory state is lost).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn tcp_url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.tcp_port)
    }

    pub fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}/mqtt", self.ws_port)
    }

    pub async fn publisher(&self, id: &str) -> Publisher {
        Publisher::connect("127.0.0.1", self.tcp_port, id)
            .await
            .expect("publisher connects")
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The `[store]` and file `[[sink]]` tables every test config ends with,
/// on the defaults but one: the admin endpoint takes any free port (port
/// 0), because tests run side by side and its default port would collide;
/// [`Gapless::admin`] finds the port it took (the README-config test in
/// `gap.rs` covers the default).
pub fn store_and_file_sink(dir: &Path) -> String {
    format!(
        "[store]\npath = \"{}\"\n\n[admin]\nlisten = \"{ADMIN_ANY_PORT}\"\n\n\
         [[sink]]\nname = \"file\"\nkind = \"file\"\npath = \"{}\"\n",
        dir.join("gapless.db").display(),
        dir.join("events.jsonl").display(),
    )
}

/// The test configs' `admin.listen`.
pub const ADMIN_ANY_PORT: &str = "127.0.0.1:0";

/// A gapless config for tests: a VCD source (MQTT only), one file sink;
/// the client id and session kind are what the tests vary.
pub fn config(dir: &Path, url: &str, clean_session: bool, client_id: &str) -> PathBuf {
    let path = dir.join("gapless.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[source]
kind = "vcd"
name = "test"

[mqtt]
url = "{url}"
client_id = "{client_id}"
clean_session = {clean_session}

{tail}"#,
            tail = store_and_file_sink(dir),
        ),
    )
    .unwrap();
    path
}

/// The real gapless binary, running.
pub struct Gapless {
    child: Child,
    config: PathBuf,
    /// The admin endpoint's address, once [`Gapless::admin`] found it.
    admin: Option<String>,
    pub log: PathBuf,
    pub summary: PathBuf,
}

impl Gapless {
    pub fn start(dir: &Path, config: &Path) -> Gapless {
        Self::start_env(dir, config, &[])
    }

    /// Starts gapless with extra environment variables (secrets).
    pub fn start_env(dir: &Path, config: &Path, env: &[(&str, &str)]) -> Gapless {
        Self::start_env_level(dir, config, env, "info,mqtt5=warn")
    }

    /// Starts gapless with extra environment variables and a log filter.
    pub fn start_env_level(
        dir: &Path,
        config: &Path,
        env: &[(&str, &str)],
        level: &str,
    ) -> Gapless {
        Self::spawn(
            dir,
            config,
            &["--log-level", level],
            &[],
            env,
            Stdio::null(),
        )
    }

    /// Starts `gapless <global> run --config <config> --summary … <run>`
    /// with `env`, its stdout going to `stdout`, its log to a file.
    pub fn spawn(
        dir: &Path,
        config: &Path,
        global: &[&str],
        run: &[&str],
        env: &[(&str, &str)],
        stdout: Stdio,
    ) -> Gapless {
        static RUNS: AtomicUsize = AtomicUsize::new(0);
        let log = dir.join(format!(
            "gapless-{}.log",
            RUNS.fetch_add(1, Ordering::Relaxed)
        ));
        let summary = dir.join("summary.json");
        let _ = std::fs::remove_file(&summary);
        let child = Command::new(env!("CARGO_BIN_EXE_gapless"))
            .args(global)
            .args(["run", "--config"])
            .arg(config)
            .arg("--summary")
            .arg(&summary)
            .args(run)
            .stdout(stdout)
            .stderr(std::fs::File::create(&log).unwrap())
            .envs(env.iter().copied())
            .spawn()
            .expect("spawn gapless");
        Gapless {
            child,
            config: config.to_path_buf(),
            admin: None,
            log,
            summary,
        }
    }

    /// The admin endpoint's `host:port` for the test configs' port 0: the
    /// one its log line names, else (a JSON log) the one `status --json`
    /// shows this process recorded. A pair's standby records none.
    pub fn admin(&mut self) -> String {
        if let Some(a) = &self.admin {
            return a.clone();
        }
        let (config, pid, log) = (self.config.clone(), i64::from(self.pid()), self.log.clone());
        let mut found = None;
        wait_for("the admin endpoint's address", self, || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            found = text
                .lines()
                .filter(|l| l.contains("admin endpoint listening"))
                .find_map(|l| l.split(" addr=").nth(1))
                .map(|a| a.trim().to_string());
            if found.is_some() {
                return true;
            }
            // Before the daemon creates the store, status has nothing to read.
            let out = status_cmd(&config).output().unwrap();
            let Ok(status) = serde_json::from_slice::<serde_json::Value>(&out.stdout) else {
                return false;
            };
            let admin = &status["admin"];
            if admin["pid"].is_null() || admin["pid"].as_i64() == Some(pid) {
                found = admin["addr"].as_str().map(String::from);
            }
            found.is_some()
        });
        self.admin = found;
        self.admin.clone().unwrap()
    }

    /// One sample of `/metrics` (`series` as exposed, labels and all), 0
    /// when it is not there.
    pub fn metric(&mut self, series: &str) -> f64 {
        metric_at(&self.admin(), series)
    }

    /// Waits until `series` on `/metrics` reaches `at_least`.
    pub fn wait_metric(&mut self, series: &str, at_least: f64) {
        let admin = self.admin();
        wait_for(&format!("{series} >= {at_least}"), self, || {
            metric_at(&admin, series) >= at_least
        });
    }

    /// Waits until the poller verifies one more history window than it had:
    /// what it was going to recover up to now is in.
    pub fn wait_one_more_window(&mut self) {
        let windows = self.metric("gapless_poll_windows_verified_total");
        self.wait_metric("gapless_poll_windows_verified_total", windows + 1.0);
    }

    /// Waits until the broker has granted the `n`-th subscription.
    pub fn wait_subscribed(&mut self, n: usize) {
        self.wait_metric("gapless_mqtt_subscriptions_total", n as f64);
    }

    /// Whether the process has not exited.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then waits for the exit; returns the summary JSON.
    pub fn stop(self) -> serde_json::Value {
        self.stop_by("-TERM")
    }

    /// Sends `signal` (`-TERM`, `-STOP`, `-CONT`, …) to the process.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.id().to_string();
        let status = Command::new("kill").args([signal, &pid]).status().unwrap();
        assert!(status.success(), "kill {signal} {pid}");
    }

    /// Sends `signal` (`-TERM`, `-INT`), then waits for a clean exit;
    /// returns the summary JSON.
    pub fn stop_by(mut self, signal: &str) -> serde_json::Value {
        self.signal(signal);
        let code = self.wait_exit(Duration::from_secs(30));
        assert_eq!(code, Some(0), "gapless exit:\n{}", self.log_text());
        let text = std::fs::read_to_string(&self.summary).expect("summary written");
        serde_json::from_str(&text).unwrap()
    }

    /// Waits for gapless to exit by itself; its exit code. Fails the test
    /// if it is still running after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(
                Instant::now() < deadline,
                "gapless still runs after {timeout:?}:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: no shutdown, no flush.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Gapless {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub use gapless::demo::count_lines;

/// The gap markers in a sink file, parsed.
pub fn markers(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["origin"] == "gapless")
        .collect()
}

/// The `time` of a CloudEvent line, or a marker's `from`/`to`, in µs.
pub fn us_of(rfc3339: &serde_json::Value) -> i64 {
    chrono::DateTime::parse_from_rfc3339(rfc3339.as_str().unwrap())
        .unwrap()
        .timestamp_micros()
}

/// Waits until `path` has at least `n` event lines.
pub fn wait_lines(path: &Path, n: usize, timeout: Duration, gapless: &mut Gapless) {
    let deadline = Instant::now() + timeout;
    loop {
        let have = count_lines(path);
        if have >= n {
            return;
        }
        if let Ok(Some(status)) = gapless.child.try_wait() {
            panic!(
                "gapless exited ({status}) at {have}/{n} lines:\n{}",
                gapless.log_text()
            );
        }
        assert!(
            Instant::now() < deadline,
            "only {have}/{n} lines:\n{}",
            gapless.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sample events `range` as `(topic, envelope)` messages.
pub fn event_messages(salt: u64, range: std::ops::Range<u64>) -> Vec<(String, Vec<u8>)> {
    let base = gapless::event::now_us();
    range
        .map(|i| {
            let ev = events::audit_event(salt, i, base + i as i64 * 1000);
            (events::topic(salt, i), events::envelope(&ev))
        })
        .collect()
}

/// Checks a sink file: exactly the events `0..n` of `salt`, each once, with
/// `seq` 1..=n in order.
pub fn assert_exactly_once(path: &Path, salt: u64, n: u64) {
    let truth: HashSet<String> = (0..n).map(|i| events::event_id(salt, i)).collect();
    let check = gapless::demo::check_file(path, &truth).unwrap();
    assert!(check.seq_ok, "seq hole or reorder: {check:?}");
    assert_eq!(check.duplicated, 0, "duplicate ids: {check:?}");
    assert_eq!(check.lines as u64, n, "line count");
    assert_eq!(check.missing, 0, "events missing: {check:?}");
    for line in std::fs::read_to_string(path).unwrap().lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["specversion"], "1.0");
    }
}

/// The gapless binary as a command.
pub fn gapless_cmd() -> Command {
    Command::new(env!("CARGO_BIN_EXE_gapless"))
}

/// Runs a command to completion; fails the test with its stderr unless it
/// exits 0; returns its stdout.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `gapless status --json` for `config`.
fn status_cmd(config: &Path) -> Command {
    let mut cmd = gapless_cmd();
    cmd.args(["status", "--json", "--config"]).arg(config);
    cmd
}

/// `gapless status --json` for `config`, parsed.
pub fn status_json(config: &Path) -> serde_json::Value {
    serde_json::from_str(&run_ok(&mut status_cmd(config))).unwrap()
}

/// Sink `name`'s row of `gapless status --json`.
pub fn sink_status(config: &Path, name: &str) -> serde_json::Value {
    sink_in(&status_json(config), name)
}

/// Sink `name`'s row of a parsed `status --json`.
fn sink_in(status: &serde_json::Value, name: &str) -> serde_json::Value {
    status["sinks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no sink {name} in {status}"))
}

/// Waits until sink `name` has delivered up to a head of at least `n`
/// and has no replay request pending.
pub fn wait_sink_caught_up(config: &Path, name: &str, n: i64, gapless: &mut Gapless) {
    wait_for(
        &format!("sink {name} to catch up with seq {n}"),
        gapless,
        || {
            let s = status_json(config);
            let sink = sink_in(&s, name);
            s["head_seq"].as_i64().unwrap_or(0) >= n
                && sink["lag"] == 0
                && sink["replay_from"].is_null()
        },
    );
}

/// Polls `done` every 100 ms until it holds; fails the test naming
/// `what`, with gapless's log, when gapless exits first or after two
/// minutes.
pub fn wait_for(what: &str, gapless: &mut Gapless, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !done() {
        if let Ok(Some(status)) = gapless.child.try_wait() {
            panic!(
                "gapless exited ({status}) while waiting for {what}:\n{}",
                gapless.log_text()
            );
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}:\n{}",
            gapless.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// GET `url`: (status, body), or (0, the error) when nothing answers.
pub async fn http_get(url: &str) -> (u16, String) {
    match reqwest::get(url).await {
        Ok(r) => (r.status().as_u16(), r.text().await.unwrap()),
        Err(e) => (0, e.to_string()),
    }
}

/// One sample of the `/metrics` page at `admin` (see [`Gapless::metric`]).
pub fn metric_at(admin: &str, series: &str) -> f64 {
    sample_in(&get_blocking(admin, "/metrics"), series).unwrap_or(0.0)
}

/// The value of one sample line (`name{labels} value`) in a metrics page.
pub fn sample_in(page: &str, series: &str) -> Option<f64> {
    page.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.trim().parse().unwrap())
}

/// A plain HTTP/1.0 GET of `path` at `addr` from a synchronous wait: its
/// body, or "" when nothing answers (yet).
pub fn get_blocking(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let Ok(mut stream) = TcpStream::connect(addr) else {
        return String::new();
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    let mut response = String::new();
    if stream.write_all(request.as_bytes()).is_err()
        || stream.read_to_string(&mut response).is_err()
    {
        return String::new();
    }
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default()
}

/// The store a test runs on. The scenarios `on_both_stores!` names run
/// once on each: SQLite (`gapless.db` in the test's directory, the default)
/// and a Postgres server of their own.
pub enum TestStore {
    Sqlite,
    Postgres(Postgres),
}

impl TestStore {
    /// `None` only when Postgres is missing and `GAPLESS_SKIP_POSTGRES=1`.
    pub fn postgres(test: &str) -> Option<Self> {
        Postgres::start(test).map(TestStore::Postgres)
    }

    /// Points the config at `path` at this store: for Postgres, its
    /// `[store]` SQLite path (as [`store_and_file_sink`] writes it) becomes
    /// the server's URL. Every other key stays as the test wrote it.
    pub fn apply(&self, config: &Path) {
        let TestStore::Postgres(pg) = self else {
            return;
        };
        let text = std::fs::read_to_string(config).unwrap();
        let dir = config.parent().unwrap();
        let sqlite = format!("path = \"{}\"", dir.join("gapless.db").display());
        assert!(text.contains(&sqlite), "no SQLite store path in {text}");
        let text = text.replace(&sqlite, &format!("url = \"{}\"", pg.url));
        std::fs::write(config, text).unwrap();
    }

    /// The store's config, for a test that opens it itself.
    pub fn config(&self, dir: &Path) -> gapless::config::StoreConfig {
        match self {
            TestStore::Sqlite => gapless::config::StoreConfig {
                path: dir.join("gapless.db"),
                ..Default::default()
            },
            TestStore::Postgres(pg) => gapless::config::StoreConfig {
                url: Some(pg.url.clone()),
                ..Default::default()
            },
        }
    }
}

/// Makes each named scenario `async fn(TestStore)` two tests,
/// `<scenario>::sqlite` and `<scenario>::postgres`: one suite, both
/// backends.
macro_rules! on_both_stores {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$scenario($crate::support::TestStore::Sqlite).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                if let Some(store) = $crate::support::TestStore::postgres(stringify!($scenario)) {
                    super::$scenario(store).await;
                }
            }
        }
    )*};
}
pub(crate) use on_both_stores;

/// A second connection pool on the store in `dir` (`gapless.db`), for a
/// test that reads the store directly or injects a fault into it.
pub async fn store_pool(dir: &Path) -> sqlx::SqlitePool {
    sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(
            sqlx::sqlite::SqliteConnectOptions::new()
                .filename(dir.join("gapless.db"))
                .busy_timeout(Duration::from_secs(10)),
        )
        .await
        .unwrap()
}

/// A Postgres server of its own: `initdb` into a temporary directory and
/// `pg_ctl start` on a reserved loopback port (trust auth, fsync off: the
/// tests are about the protocol, not the disk). As root the server runs as
/// the `postgres` user, as `initdb` refuses root. Stopped on drop.
pub struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    as_postgres: bool,
    port: Reserved,
    pub url: String,
}

impl Postgres {
    /// `None` only when Postgres is missing and `GAPLESS_SKIP_POSTGRES=1`.
    pub fn start(test: &str) -> Option<Self> {
        let newest = std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok().map(|e| e.path().join("bin/initdb")))
            .filter(|p| p.exists())
            .max_by_key(|p| p.display().to_string())
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "/usr/lib/postgresql/<version>/bin/initdb".into());
        let initdb = server_bin(
            test,
            &[newest.as_str()],
            "apt-get install postgresql",
            "GAPLESS_SKIP_POSTGRES",
        )?;
        let bin = initdb.parent().unwrap().to_path_buf();
        use std::os::unix::fs::MetadataExt;
        let as_postgres = std::fs::metadata("/proc/self").unwrap().uid() == 0;
        let dir = tempfile::tempdir().unwrap();
        if as_postgres {
            let status = Command::new("chown")
                .args(["postgres"])
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(status.success(), "chown postgres {}", dir.path().display());
        }
        let port = reserve_port();
        let pg = Postgres {
            url: format!("postgres://gapless@127.0.0.1:{}/postgres", port.port),
            dir,
            bin,
            as_postgres,
            port,
        };
        let data = pg.dir.path().join("data");
        let mut initdb = pg.command("initdb");
        initdb.arg("-D").arg(&data);
        initdb.args(["-A", "trust", "-U", "gapless", "-E", "UTF8", "--no-sync"]);
        checked(initdb, "initdb");
        pg.pg_ctl("start");
        Some(pg)
    }

    /// `tool` of the server's version, run as the server's user.
    fn command(&self, tool: &str) -> Command {
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(self.bin.join(tool));
            c
        } else {
            Command::new(self.bin.join(tool))
        }
    }

    /// `pg_ctl` with `action`: `start` waits until it accepts connections,
    /// `stop` is immediate (the server dies as in a crash).
    fn pg_ctl_command(&self, action: &str) -> Command {
        let dir = self.dir.path();
        let port = self.port.port;
        let mut c = self.command("pg_ctl");
        c.arg("-D").arg(dir.join("data"));
        c.arg("-l").arg(dir.join("log"));
        c.args(["-w", "-m", "immediate", action]);
        if action == "start" {
            c.arg("-o").arg(format!(
                "-p {port} -h 127.0.0.1 -k {} -F -c max_connections=50",
                dir.display()
            ));
        }
        c
    }

    pub fn pg_ctl(&self, action: &str) {
        checked(self.pg_ctl_command(action), &format!("pg_ctl {action}"));
    }
}

/// Runs `c` and fails the test, with its output, unless it succeeds.
fn checked(mut c: Command, what: &str) {
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self.pg_ctl_command("stop").output();
    }
}
