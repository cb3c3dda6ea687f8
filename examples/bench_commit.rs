//! The store's speed limit on this disk: commits of `BATCH` event-sized rows
//! (a UUID key, ~900 bytes of JSON) to a fresh SQLite file in WAL mode with
//! the pragmas of gapless's write connection (checkpoints are left to
//! another connection there, so none here), one transaction per batch,
//! nothing else. Used
//! by `scripts/bench-drain.sh` as C in the serial limit `1/(1/C + 1/S)`: a
//! broker window's round trip and its commit happen one after the other.
//!
//! Usage: bench_commit DIR ROWS BATCH full|normal  (prints rows/s)

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use sqlx::{ConnectOptions, Connection};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [dir, rows, batch, sync] = args.as_slice() else {
        eprintln!("usage: bench_commit DIR ROWS BATCH full|normal");
        std::process::exit(2);
    };
    let rows: usize = rows.parse().expect("ROWS is a number");
    let batch: usize = batch.parse().expect("BATCH is a number");
    let path = std::path::Path::new(dir).join("commit-probe.db");
    let _ = std::fs::remove_file(&path);
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
            // Spread like UUIDs: each key lands on a different index page.
            let id = format!(
                "{:032x}",
                u128::from(n).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835)
            );
            q = q.bind(id).bind(payload.as_str());
        }
        q.execute(&mut *tx).await.expect("insert");
        tx.commit().await.expect("commit");
    }
    println!("{:.0}", n as f64 / started.elapsed().as_secs_f64());
    let _ = std::fs::remove_file(&path);
}
