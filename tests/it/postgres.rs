//! The leader lease against a real Postgres (`initdb` + `pg_ctl` on a
//! reserved port): one holder at a time, a successor's term has the next
//! epoch, a fenced write of a lost term rolls back, and an open fenced
//! transaction holds the successor off until it commits.

use std::time::Duration;

use gapless::store::postgres::{
    connect,
    lease::{Lease, LeaseError, Role, Term, fence},
    options,
};
use sqlx::postgres::PgPool;

use crate::support::Postgres;

// Long enough that a loaded machine does not lose a term between two
// statements of a test; short enough that waiting out an expiry is quick.
const TTL: Duration = Duration::from_secs(3);
const MARGIN: Duration = Duration::from_millis(300);

/// A Postgres of its own and two processes' pools on it; `None` when
/// Postgres is missing and the test is to be skipped.
async fn rig(test: &str) -> Option<(Postgres, PgPool, PgPool)> {
    let pg = Postgres::start(test)?;
    let (a, b) = pair(&pg).await;
    Some((pg, a, b))
}

/// Lease `vcd` as two processes, `host-a:1` on `pa` and `host-b:1` on `pb`.
fn leases(pa: &PgPool, pb: &PgPool, ttl: Duration, margin: Duration) -> [Lease; 2] {
    [
        Lease::new(pa.clone(), "vcd", "host-a:1", ttl, margin),
        Lease::new(pb.clone(), "vcd", "host-b:1", ttl, margin),
    ]
}

/// Two processes' pools on the same database, migrated together.
async fn pair(pg: &Postgres) -> (PgPool, PgPool) {
    let (a, b) = tokio::join!(
        connect(pg.url.parse().unwrap()),
        connect(pg.url.parse().unwrap())
    );
    let a = a.unwrap();
    sqlx::query("CREATE TABLE IF NOT EXISTS writes (who TEXT, epoch BIGINT)")
        .execute(&a)
        .await
        .unwrap();
    (a, b.unwrap())
}

/// One write that matters: fenced, then committed.
async fn fenced_write(pool: &PgPool, who: &str, term: Term) -> Result<(), LeaseError> {
    let mut tx = pool.begin().await?;
    fence(&mut tx, "vcd", term.epoch).await?;
    sqlx::query("INSERT INTO writes VALUES ($1, $2)")
        .bind(who)
        .bind(term.epoch)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// `a`'s fenced write of `term`, not committed yet.
async fn open_fenced_write(
    pool: &PgPool,
    term: Term,
) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut tx = pool.begin().await.unwrap();
    fence(&mut tx, "vcd", term.epoch).await.unwrap();
    sqlx::query("INSERT INTO writes VALUES ('a', $1)")
        .bind(term.epoch)
        .execute(&mut *tx)
        .await
        .unwrap();
    tx
}

async fn writes(pool: &PgPool) -> Vec<(String, i64)> {
    sqlx::query_as("SELECT who, epoch FROM writes ORDER BY epoch, who")
        .fetch_all(pool)
        .await
        .unwrap()
}

/// Polls `done` until it holds; fails after `limit`.
async fn eventually<F, Fut>(what: &str, limit: Duration, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while !done().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the database's clock has passed the lease's expiry.
async fn until_expired(lease: &Lease) {
    let lease = lease.clone();
    eventually("the lease to expire", Duration::from_secs(10), move || {
        let lease = lease.clone();
        async move { !lease.holder().await.unwrap().unwrap().live }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_holder_at_a_time_and_a_lost_term_cannot_write() {
    let Some((_pg, pa, pb)) = rig("one_holder_at_a_time").await else {
        return;
    };
    let [a, b] = leases(&pa, &pb, TTL, MARGIN);

    let mut term_a = a
        .try_acquire()
        .await
        .unwrap()
        .expect("a free lease is taken");
    assert_eq!(term_a.epoch, 1);
    assert_eq!(
        b.try_acquire().await.unwrap(),
        None,
        "a live lease has one holder"
    );
    assert!(a.renew(&mut term_a).await.unwrap());
    fenced_write(&pa, "a", term_a).await.unwrap();
    let shown = b.holder().await.unwrap().unwrap();
    assert_eq!(
        (shown.holder.as_str(), shown.epoch, shown.live),
        ("host-a:1", 1, true)
    );
    assert!(shown.expires_at_us > shown.acquired_at_us, "{shown:?}");

    // a stops renewing (a stalled process); once the lease expires in the
    // database's clock, b takes it as the next term.
    until_expired(&a).await;
    let term_b = b
        .try_acquire()
        .await
        .unwrap()
        .expect("an expired lease is taken");
    assert_eq!(term_b.epoch, 2);
    assert!(
        !a.renew(&mut term_a).await.unwrap(),
        "a lost term is not renewed"
    );
    match fenced_write(&pa, "a", term_a).await {
        Err(LeaseError::Fenced { mine: 1, .. }) => {}
        other => panic!("a stale epoch must be fenced off, got {other:?}"),
    }
    fenced_write(&pb, "b", term_b).await.unwrap();
    assert_eq!(
        writes(&pa).await,
        [("a".to_string(), 1), ("b".to_string(), 2)],
        "the fenced-off write left nothing"
    );

    // A clean stop hands over at once, as a new term.
    b.release(term_b).await.unwrap();
    let again = a
        .try_acquire()
        .await
        .unwrap()
        .expect("a released lease is free");
    assert_eq!(again.epoch, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_fenced_transaction_holds_the_successor_off_until_it_commits() {
    let Some((_pg, pa, pb)) = rig("an_open_fenced_transaction").await else {
        return;
    };
    let [a, b] = leases(&pa, &pb, TTL, MARGIN);
    let term_a = a.try_acquire().await.unwrap().unwrap();

    // a checks its epoch and writes, but has not committed when its
    // lease runs out.
    let tx = open_fenced_write(&pa, term_a).await;
    until_expired(&a).await;

    // b's acquisition waits on the row a's transaction holds...
    let acquiring = tokio::spawn(async move { b.try_acquire().await });
    let watcher = pb.clone();
    eventually(
        "b to wait on the lease row",
        Duration::from_secs(10),
        move || {
            let watcher = watcher.clone();
            async move {
                let waiting: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM pg_stat_activity \
                 WHERE wait_event_type = 'Lock' AND query LIKE 'INSERT INTO leader%'",
                )
                .fetch_one(&watcher)
                .await
                .unwrap();
                waiting == 1
            }
        },
    )
    .await;
    // ...so a's write commits inside its own term, and b's term comes after.
    tx.commit().await.unwrap();
    let term_b = acquiring.await.unwrap().unwrap().expect("b leads next");
    assert_eq!(term_b.epoch, 2);
    assert_eq!(writes(&pa).await, [("a".to_string(), 1)]);
    assert!(matches!(
        fenced_write(&pa, "a", term_a).await,
        Err(LeaseError::Fenced { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_crash_and_restart_keeps_the_lease_and_its_holder() {
    let Some((pg, pa, pb)) = rig("a_postgres_crash_and_restart").await else {
        return;
    };
    // A term far longer than a restart: the point is what survives it.
    let long = Duration::from_secs(60);
    let [a, b] = leases(&pa, &pb, long, MARGIN);
    let mut term = a.try_acquire().await.unwrap().unwrap();
    fenced_write(&pa, "a", term).await.unwrap();

    pg.pg_ctl("stop");
    assert!(
        matches!(a.renew(&mut term).await, Err(LeaseError::Sql(_))),
        "a renewal with the database down is an error, not a lost lease"
    );
    pg.pg_ctl("start");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let renewed = loop {
        match a.renew(&mut term).await {
            Ok(renewed) => break renewed,
            Err(e) => assert!(tokio::time::Instant::now() < deadline, "no reconnect: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(renewed, "the term is renewed once the pool reconnects");
    assert_eq!(
        b.try_acquire().await.unwrap(),
        None,
        "the lease and its holder outlive the crash"
    );
    fenced_write(&pa, "a", term).await.unwrap();
    assert_eq!(
        writes(&pb).await,
        [("a".to_string(), 1), ("a".to_string(), 1)]
    );
}

/// One column as both schemas describe it: name, kind of value, nullable.
type Column = (String, String, String, bool);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_postgres_schema_has_every_sqlite_table_and_column() {
    let Some((_pg, pool, _)) = rig("the_postgres_schema").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gapless.db");
    let config = gapless::config::StoreConfig {
        path: path.clone(),
        ..Default::default()
    };
    gapless::store::Store::open(&config)
        .await
        .unwrap()
        .close()
        .await;
    let sqlite = sqlx::SqlitePool::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    // SQLite: INTEGER, TEXT, BLOB; a key column is never null.
    let rows: Vec<(String, String, String, bool, bool)> = sqlx::query_as(
        "SELECT m.name, c.name, c.type, c.\"notnull\", c.pk > 0 FROM sqlite_master m, \
         pragma_table_info(m.name) c WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite_%' \
         AND m.name NOT LIKE '_sqlx%'",
    )
    .fetch_all(&sqlite)
    .await
    .unwrap();
    let kind = |t: &str| match t {
        "INTEGER" | "bigint" | "boolean" => "integer",
        "TEXT" | "text" => "text",
        "BLOB" | "bytea" => "bytes",
        other => panic!("an unmapped column type {other}"),
    };
    let mut want: Vec<Column> = rows
        .iter()
        .map(|(t, c, ty, notnull, pk)| (t.clone(), c.clone(), kind(ty).into(), !notnull && !pk))
        .collect();
    want.sort();
    let rows: Vec<(String, String, String, String)> = sqlx::query_as(
        "SELECT table_name::text, column_name::text, data_type::text, is_nullable::text \
         FROM information_schema.columns WHERE table_schema = 'public' \
         AND table_name NOT IN ('leader', 'writes', '_sqlx_migrations') \
         AND column_name <> 'rowid'",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let mut have: Vec<Column> = rows
        .iter()
        .map(|(t, c, ty, null)| (t.clone(), c.clone(), kind(ty).into(), null == "YES"))
        .collect();
    have.sort();
    assert_eq!(
        have, want,
        "(table, column, kind, nullable) in Postgres vs SQLite"
    );
    assert!(want.len() > 50, "{} columns read", want.len());
}

/// Two processes running the lease; a monitor samples both roles and
/// counts the samples in which both lead.
struct Pair {
    roles: [tokio::sync::watch::Receiver<Role>; 2],
    stops: [tokio_util::sync::CancellationToken; 2],
    both_led: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

const INTERVAL: Duration = Duration::from_millis(200);

impl Pair {
    fn start(leases: [Lease; 2]) -> Pair {
        let (ta, ra) = tokio::sync::watch::channel(Role::Standby);
        let (tb, rb) = tokio::sync::watch::channel(Role::Standby);
        let [a, b] = leases;
        let (sa, sb) = (
            tokio_util::sync::CancellationToken::new(),
            tokio_util::sync::CancellationToken::new(),
        );
        tokio::spawn(a.run(INTERVAL, ta, sa.clone()));
        tokio::spawn(b.run(INTERVAL, tb, sb.clone()));
        let both_led = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (ma, mb, count) = (ra.clone(), rb.clone(), both_led.clone());
        tokio::spawn(async move {
            loop {
                let both = matches!(*ma.borrow(), Role::Leader(_))
                    && matches!(*mb.borrow(), Role::Leader(_));
                if both {
                    count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        });
        Pair {
            roles: [ra, rb],
            stops: [sa, sb],
            both_led,
        }
    }

    /// Waits until one of the two leads; returns which and its epoch.
    async fn leader(&mut self) -> (usize, i64) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            for (i, r) in self.roles.iter().enumerate() {
                if let Role::Leader(t) = *r.borrow() {
                    return (i, t.epoch);
                }
            }
            assert!(tokio::time::Instant::now() < deadline, "nobody leads");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until each of `which` stands by.
    async fn stand_by(&mut self, which: &[usize]) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        for &i in which {
            while *self.roles[i].borrow() != Role::Standby {
                assert!(tokio::time::Instant::now() < deadline, "{i} still leads");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_out_of_reach_steps_down_and_one_leads_again_never_two() {
    let Some((pg, pa, pb)) = rig("a_leader_out_of_reach").await else {
        return;
    };
    let mut pair = Pair::start(leases(
        &pa,
        &pb,
        Duration::from_secs(2),
        Duration::from_millis(500),
    ));
    // Epochs are compared, not counted: a loaded machine may make a
    // leader step down early (by design), which only adds terms.
    let (_, before) = pair.leader().await;

    // The database goes away: the leader cannot renew, and steps down by
    // its own clock within its term; nobody can take over meanwhile.
    pg.pg_ctl("stop");
    pair.stand_by(&[0, 1]).await;
    pg.pg_ctl("start");
    let (_, after) = pair.leader().await;
    assert!(
        after > before,
        "leading again is a new term: {before} then {after}"
    );

    // A clean stop hands the lease over at once.
    let (now, current) = pair.leader().await;
    pair.stops[now].cancel();
    pair.stand_by(&[now]).await;
    let (next, handed) = pair.leader().await;
    assert_eq!(next, 1 - now, "the other process leads");
    assert!(handed > current, "a new term: {current} then {handed}");
    assert_eq!(
        pair.both_led.load(std::sync::atomic::Ordering::Relaxed),
        0,
        "both processes led at once"
    );
    pair.stops.iter().for_each(|s| s.cancel());
}

/// A leader cut off (or paused) in the middle of a fenced transaction
/// holds the lease row, its socket still open on the server's side. With
/// the store's connection options (`store::postgres::options`), the server
/// ends that transaction once it has idled for a lease TTL: its write rolls
/// back, and the successor leads instead of waiting on the row for as long
/// as TCP takes to notice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_stuck_in_a_fenced_transaction_gives_way_after_one_ttl() {
    let Some(pg) = Postgres::start("a_leader_stuck_in_a_fenced_transaction") else {
        return;
    };
    let config = gapless::config::StoreConfig {
        url: Some(pg.url.clone()),
        lease_ttl: Some(gapless::config::HumanDuration(TTL)),
        ..Default::default()
    };
    let stuck = connect(options(&config).unwrap().unwrap()).await.unwrap();
    let (_, pb) = pair(&pg).await;
    let [a, b] = leases(&stuck, &pb, TTL, MARGIN);
    let term_a = a.try_acquire().await.unwrap().unwrap();
    let tx = open_fenced_write(&stuck, term_a).await;
    // a goes silent with its transaction open; b leads once the server
    // has ended it (a's lease expired TTL after a took it).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let term_b = loop {
        let tried = tokio::time::timeout_at(deadline, b.try_acquire()).await;
        if let Some(term) = tried.expect("b leads within a minute").unwrap() {
            break term;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(term_b.epoch, 2);
    assert!(
        tx.commit().await.is_err(),
        "a's stale transaction committed"
    );
    assert_eq!(writes(&pb).await, []);
}
