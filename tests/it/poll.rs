//! The gap poller against the VCD simulator over HTTP, writing through the
//! real writer into a real SQLite file.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use gapless::config::{
    HumanDuration, PollConfig, Secret, SourceTls, StoreConfig, VcdLogin, VcdSecret,
};
use gapless::metrics::Counters;
use gapless::source::poll::{Poller, Rules, plan};
use gapless::source::profile::vcd::api::VcdClient;
use gapless::source::session::Login;
use gapless::store::{Retention, Store, StreamSettings, Writer, WriterPlan};
use gapless_sim::vcd::{SimConfig, VcdSim};
use tokio_util::sync::CancellationToken;

/// A poller wired to a store, a running writer and the simulator.
struct Rig {
    _dir: tempfile::TempDir,
    store: Store,
    poller: Poller<VcdClient>,
    counters: Arc<Counters>,
    shutdown: CancellationToken,
}

fn login(sim: &VcdSim) -> VcdLogin {
    let c = sim.config();
    VcdLogin {
        url: sim.url().parse().unwrap(),
        org: c.org.clone(),
        user: c.user.clone(),
        secret: VcdSecret::Password(Secret::new(c.password.clone())),
        api_version: "38.0".into(),
        tls: SourceTls::default(),
    }
}

async fn rig(sim: &VcdSim, poll: PollConfig) -> Rig {
    gapless::net::tls::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig {
        path: dir.path().join("poll.db"),
        ..Default::default()
    };
    let store = Store::open(&config).await.unwrap();
    let counters = Arc::new(Counters::default());
    let plan = WriterPlan {
        source: "sim".into(),
        queue: 256,
        counters: counters.clone(),
        acks: None,
        stream: StreamSettings::arrival(),
        retention: Retention {
            keep_us: i64::MAX / 2,
            sinks: vec![],
            poll_guard_us: None,
        },
        fence: None,
        head: Default::default(),
    };
    let (writer, channels) = Writer::new(&store, &config, plan).await.unwrap();
    tokio::spawn(writer.run());
    let client = Arc::new(VcdClient::new(login(sim), counters.clone(), limits()).unwrap());
    let poller = Poller {
        history: client,
        store: store.clone(),
        ingest: channels.ingest,
        source: "sim".into(),
        config: poll,
        counters: counters.clone(),
        live: None,
        max_skew_us: 300_000_000,
        retention_us: None,
    };
    Rig {
        _dir: dir,
        store,
        poller,
        counters,
        shutdown: CancellationToken::new(),
    }
}

fn poll_config(max_window: Duration, lookback: Duration) -> PollConfig {
    PollConfig {
        overlap: HumanDuration(Duration::from_secs(2)),
        visibility_lag: HumanDuration(Duration::from_millis(600)),
        max_window: HumanDuration(max_window),
        initial_lookback: HumanDuration(lookback),
        max_retries: 3,
        ..Default::default()
    }
}

async fn stored_ids(store: &Store) -> HashSet<String> {
    let events = store.released_after(0, 1_000_000).await.unwrap();
    let ids: HashSet<String> = events.iter().map(|e| e.id.clone()).collect();
    assert_eq!(ids.len(), events.len(), "an id is stored twice");
    ids
}

fn now_ms() -> i64 {
    gapless::event::now_us() / 1000
}

/// Hundreds of events share the millisecond where one window ends and the
/// next begins, and the one just before it; each spans several pages of 128.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_sharing_a_window_and_page_boundary_millisecond_are_all_read() {
    let sim = VcdSim::start(SimConfig::default()).await.unwrap();
    let config = poll_config(Duration::from_secs(10), Duration::from_secs(120));
    let rules = Rules::from(&config);
    let rig = rig(&sim, config).await;
    let now = now_ms() * 1000;
    let windows = plan(None, now, rules);
    assert!(windows.len() > 5, "{windows:?}");
    let boundary_ms = windows[3].to_us / 1000;
    assert_eq!(windows[4].from_us / 1000, boundary_ms);
    sim.create_events_at(300, boundary_ms).await.unwrap();
    sim.create_events_at(300, boundary_ms - 1).await.unwrap();
    sim.create_events_at(50, windows[0].from_us / 1000)
        .await
        .unwrap();
    sim.create_events_at(20, windows.last().unwrap().to_us / 1000 - 1)
        .await
        .unwrap();

    let stats = rig.poller.run_once_at(now, &rig.shutdown).await.unwrap();
    assert_eq!(stats.windows as usize, windows.len());
    assert_eq!(stats.events, 670, "each event read in exactly one window");
    let truth: HashSet<String> = sim.ground_truth().into_iter().collect();
    assert_eq!(stored_ids(&rig.store).await, truth);
    assert_eq!(
        rig.store.verified_until("sim").await.unwrap(),
        Some(windows.last().unwrap().to_us)
    );
}

/// A 429 with `Retry-After: 2` makes the poller wait at least 2 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_honoured() {
    let sim = VcdSim::start(SimConfig::default()).await.unwrap();
    let rig = rig(
        &sim,
        poll_config(Duration::from_secs(3600), Duration::from_secs(60)),
    )
    .await;
    sim.create_events_at(10, now_ms() - 10_000).await.unwrap();
    sim.set_faults(|f| {
        f.fail_next_429 = 1;
        f.retry_after_secs = 2;
    });
    rig.poller.run_once(&rig.shutdown).await.unwrap();
    let requests = sim.requests();
    assert_eq!(requests[0].1, 429);
    assert_eq!(requests[1].1, 200);
    let waited = Duration::from_micros((requests[1].0 - requests[0].0) as u64);
    assert!(waited >= Duration::from_secs(2), "waited only {waited:?}");
    assert_eq!(stored_ids(&rig.store).await.len(), 10);
}

/// A run of 503s longer than the retry budget fails the run and leaves the
/// watermark where it was; the next run completes the window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_of_503s_leaves_the_watermark_and_the_next_run_completes() {
    let sim = VcdSim::start(SimConfig::default()).await.unwrap();
    let rig = rig(
        &sim,
        poll_config(Duration::from_secs(3600), Duration::from_secs(60)),
    )
    .await;
    sim.create_events_at(200, now_ms() - 20_000).await.unwrap();
    rig.poller.run_once(&rig.shutdown).await.unwrap();
    let before = rig
        .store
        .verified_until("sim")
        .await
        .unwrap()
        .expect("first run verified");

    sim.create_events_at(150, now_ms() - 1_000).await.unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    sim.set_faults(|f| f.fail_next_503 = 4);
    let failed = rig.poller.run_once(&rig.shutdown).await;
    assert!(failed.is_err(), "{failed:?}");
    assert_eq!(rig.store.verified_until("sim").await.unwrap(), Some(before));

    rig.poller.run_once(&rig.shutdown).await.unwrap();
    assert!(rig.store.verified_until("sim").await.unwrap().unwrap() > before);
    let truth: HashSet<String> = sim.ground_truth().into_iter().collect();
    assert_eq!(stored_ids(&rig.store).await, truth);
    assert_eq!(rig.counters.snapshot().recovered, 350);
}

/// Events created while a window is being paged fall after the closed
/// window, so the paging is not disturbed and the next run picks them up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_written_while_paging_are_not_lost() {
    let sim = VcdSim::start(SimConfig::default()).await.unwrap();
    let rig = rig(
        &sim,
        poll_config(Duration::from_secs(3600), Duration::from_secs(60)),
    )
    .await;
    sim.create_events_at(400, now_ms() - 30_000).await.unwrap();
    sim.set_faults(|f| f.create_on_page = Some((2, 50)));
    let first = rig.poller.run_once(&rig.shutdown).await.unwrap();
    assert_eq!(first.events, 400);
    assert_eq!(sim.ground_truth().len(), 450);
    tokio::time::sleep(Duration::from_millis(800)).await;
    rig.poller.run_once(&rig.shutdown).await.unwrap();
    let truth: HashSet<String> = sim.ground_truth().into_iter().collect();
    assert_eq!(stored_ids(&rig.store).await, truth);
}

/// Tokens expiring mid-run: the audit trail answers 401, the client logs in
/// once more and the run completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_is_renewed_on_401() {
    let sim = VcdSim::start(SimConfig::default()).await.unwrap();
    let rig = rig(
        &sim,
        poll_config(Duration::from_secs(3600), Duration::from_secs(60)),
    )
    .await;
    sim.create_events_at(300, now_ms() - 5_000).await.unwrap();
    rig.poller.run_once(&rig.shutdown).await.unwrap();
    let logins = sim
        .stats()
        .logins
        .load(std::sync::atomic::Ordering::Relaxed);
    sim.expire_tokens();
    sim.create_events_at(300, now_ms() - 1_000).await.unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    rig.poller.run_once(&rig.shutdown).await.unwrap();
    assert!(
        sim.stats()
            .unauthorized
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );
    assert_eq!(
        sim.stats()
            .logins
            .load(std::sync::atomic::Ordering::Relaxed),
        logins + 1
    );
    assert_eq!(stored_ids(&rig.store).await.len(), 600);
    assert!(rig.counters.snapshot().logins >= 2);
}

/// API-token login (OAuth refresh-token grant) instead of a password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_token_login_reads_the_audit_trail() {
    let sim = VcdSim::start(SimConfig::default()).await.unwrap();
    sim.create_events_at(130, now_ms() - 5_000).await.unwrap();
    let mut with_token = login(&sim);
    with_token.secret = VcdSecret::ApiToken(Secret::new(sim.config().api_token.clone()));
    let client =
        VcdClient::new(with_token.clone(), Arc::new(Counters::default()), limits()).unwrap();
    let token = client.login().await.unwrap();
    assert!(token.expires_at_us.is_some(), "the JWT's exp is read");
    let rig = rig(
        &sim,
        poll_config(Duration::from_secs(3600), Duration::from_secs(60)),
    )
    .await;
    let poller = Poller {
        history: Arc::new(client),
        ..rig.poller
    };
    poller.run_once(&rig.shutdown).await.unwrap();
    assert_eq!(stored_ids(&rig.store).await.len(), 130);

    with_token.secret = VcdSecret::ApiToken(Secret::new("wrong"));
    let refused = VcdClient::new(with_token, Arc::new(Counters::default()), limits())
        .unwrap()
        .login()
        .await;
    let err = refused.unwrap_err().to_string();
    assert!(err.contains("refused") && !err.contains("wrong"), "{err}");
}

/// Verified means verified: a window whose pages never add up to the
/// server's `resultTotal` fails the run after its re-reads, and the
/// watermark stays where it was; once the count is right the window is
/// verified.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_short_of_the_server_count_is_never_verified() {
    let sim = VcdSim::start(SimConfig::default()).await.unwrap();
    sim.create_events_at(40, now_ms() - 5_000).await.unwrap();
    let rig = rig(
        &sim,
        poll_config(Duration::from_secs(3600), Duration::from_secs(60)),
    )
    .await;
    sim.set_faults(|f| f.overcount = 1);
    let requests = sim.requests().len();
    let err = rig.poller.run_once(&rig.shutdown).await.unwrap_err();
    assert!(
        matches!(
            err,
            gapless::source::poll::PollError::Incomplete {
                seen: 40,
                total: 41,
                rereads: 3,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(
        sim.requests().len() - requests,
        4,
        "one read and three re-reads"
    );
    assert_eq!(rig.store.verified_until("sim").await.unwrap(), None);

    sim.set_faults(|f| f.overcount = 0);
    rig.poller.run_once(&rig.shutdown).await.unwrap();
    assert!(rig.store.verified_until("sim").await.unwrap().is_some());
    assert_eq!(stored_ids(&rig.store).await.len(), 40);
}

/// The default `[http]` limits.
fn limits() -> gapless::net::Limits {
    (&gapless::config::HttpConfig::default()).into()
}
