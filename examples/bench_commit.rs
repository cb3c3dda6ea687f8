//! The store's speed limit on this disk: commits of `BATCH` event-sized rows
//! (a UUID key, ~900 bytes of JSON) to a fresh SQLite file in WAL mode with
//! the pragmas of gapless's write connection (checkpoints are left to
//! another connection there, so none here), one transaction per batch,
//! nothing else. Used
//! by `scripts/bench-drain.sh` as C in the serial limit `1/(1/C + 1/S)`: a
//! broker window's round trip and its commit happen one after the other.
//!
//! It also shows what the store's unique index on event ids costs: with
//! `uuid` keys (as VCD's) every batch touches about one index page per row
//! once the index outgrows a batch; with `time` keys (ascending, like a
//! time-ordered id) it appends. The WAL is never checkpointed here, so its
//! final size over ROWS is the WAL bytes written per row.
//!
//! Usage: bench_commit DIR ROWS BATCH full|normal [uuid|time]
//! (prints rows/s; with a fifth argument also the process's CPU time (user +
//! system) and the WAL bytes per row: what SQLite, reached through sqlx,
//! costs for one event-sized row with nothing of gapless around it)

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use std::path::PathBuf;

use sqlx::{ConnectOptions, Connection};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (dir, rows, batch, sync, keys) = match args.as_slice() {
        [d, r, b, s] => (d, r, b, s, None),
        [d, r, b, s, k] if k == "uuid" || k == "time" => (d, r, b, s, Some(k.as_str())),
        _ => {
            eprintln!("usage: bench_commit DIR ROWS BATCH full|normal [uuid|time]");
            std::process::exit(2);
        }
    };
    let rows: usize = rows.parse().expect("ROWS is a number");
    let batch: usize = batch.parse().expect("BATCH is a number");
    let path = std::path::Path::new(dir).join("commit-probe.db");
    let files = ["", "-wal", "-shm"].map(|s| PathBuf::from(format!("{}{s}", path.display())));
    for f in &files {
        let _ = std::fs::remove_file(f);
    }
    let mut conn = SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(if sync == "normal" {
            SqliteSynchronous::Normal
        } else {
            SqliteSynchronous::Full
        })
        .pragma("wal_autocheckpoint", "0")
        .pragma("cache_size", "-8192")
        .pragma("temp_store", "memory")
        .connect()
        .await
        .expect("open the probe database");
    sqlx::query("CREATE TABLE t (id TEXT PRIMARY KEY NOT NULL, payload TEXT NOT NULL)")
        .execute(&mut conn)
        .await
        .expect("create the table");
    let payload = format!("{{\"description\":\"{}\"}}", "x".repeat(880));
    let sql = format!(
        "INSERT INTO t (id, payload) VALUES {}",
        vec!["(?, ?)"; batch].join(",")
    );
    let started = std::time::Instant::now();
    let mut n = 0u64;
    for _ in 0..rows.div_ceil(batch) {
        let mut tx = conn.begin().await.expect("begin");
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()));
        for _ in 0..batch {
            n += 1;
            let id = if keys == Some("time") {
                format!("{n:032x}")
            } else {
                // Spread like UUIDs: each key lands on a different index page.
                format!(
                    "{:032x}",
                    u128::from(n).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835)
                )
            };
            q = q.bind(id).bind(payload.as_str());
        }
        q.execute(&mut *tx).await.expect("insert");
        tx.commit().await.expect("commit");
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    match keys {
        None => println!("{rate:.0}"),
        Some(k) => println!(
            "{k} keys: {rate:.0} rows/s, {:.1} CPU µs per row, {:.0} WAL bytes per row",
            cpu_seconds() * 1e6 / n as f64,
            std::fs::metadata(&files[1]).map(|m| m.len()).unwrap_or(0) as f64 / n as f64
        ),
    }
    drop(conn);
    for f in &files {
        let _ = std::fs::remove_file(f);
    }
}

/// User + system CPU seconds of this process so far (`/proc/self/stat`,
/// fields 14 and 15, in clock ticks of 1/100 s on Linux).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let ticks: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|f| f.parse().ok())
        .collect();
    ticks.iter().sum::<u64>() as f64 / 100.0
}
