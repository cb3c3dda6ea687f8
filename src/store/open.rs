//! Opening the store: its directory, the daemon's lock, the connection
//! options every connection shares, and migrations.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sqlx::postgres::PgConnection;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{ConnectOptions, Connection};

use super::backend::{Conn, Db};
use super::maintenance::JOURNAL_SIZE_LIMIT;
use super::{Store, StoreError};
use crate::config::{StoreConfig, Synchronous};

/// Prepared statements the writer keeps (see [`Store::write_connection`]).
const WRITER_STATEMENTS: usize = 32;

/// The WAL file next to the database at `path`.
pub(super) fn wal_path(path: &Path) -> PathBuf {
    PathBuf::from(format!("{}-wal", path.display()))
}

fn connect_options(path: &Path, sync: Synchronous) -> SqliteConnectOptions {
    SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(match sync {
            Synchronous::Full => SqliteSynchronous::Full,
            Synchronous::Normal => SqliteSynchronous::Normal,
        })
        .busy_timeout(Duration::from_secs(10))
        .statement_cache_capacity(256)
        .pragma("temp_store", "memory")
        // Readers (sinks, status) read recent rows once: a small cache.
        .pragma("cache_size", "-512")
        .pragma("journal_size_limit", JOURNAL_SIZE_LIMIT.to_string())
        // A checkpoint may take seconds by design; that is not worth a WARN.
        .log_slow_statements(log::LevelFilter::Debug, Duration::from_secs(1))
}

/// The daemon's claim on a store: an exclusive lock on `<store>.lock`
/// (holding the daemon's pid), released when the process ends, however it
/// ends. Operator commands do not take it.
#[derive(Debug)]
pub struct StoreLock {
    /// `None` for a Postgres store: the file is not on this machine.
    _file: Option<std::fs::File>,
}

impl StoreLock {
    fn take(store: &Path) -> Result<Self, StoreError> {
        use std::io::{Read, Seek, Write};
        let (mut file, failed) = lock_file(store, "lock")?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                return Err(StoreError::Locked {
                    store: store.display().to_string(),
                    pid: text.trim().parse().ok(),
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(failed(e)),
        }
        file.set_len(0).map_err(&failed)?;
        file.rewind().map_err(&failed)?;
        writeln!(file, "{}", std::process::id()).map_err(&failed)?;
        Ok(StoreLock { _file: Some(file) })
    }
}

/// Opens (creating it) the lock file `<store>.<suffix>`, with the error
/// a failure on it maps to.
fn lock_file(
    store: &Path,
    suffix: &str,
) -> Result<(std::fs::File, impl Fn(std::io::Error) -> StoreError), StoreError> {
    let path = format!("{}.{suffix}", store.display());
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path);
    let failed = move |source| StoreError::Lock {
        path: path.clone(),
        source,
    };
    Ok((opened.map_err(&failed)?, failed))
}

/// The store's directory: it must exist for every command but `run`, which
/// creates it (mode 0750: events may be confidential).
fn store_dir(path: &Path, create: bool) -> Result<(), StoreError> {
    let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) else {
        return Ok(());
    };
    if dir.is_dir() {
        return Ok(());
    }
    if !create {
        return Err(StoreError::NoDir {
            dir: dir.display().to_string(),
        });
    }
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o750)
        .create(dir)
        .map_err(|source| StoreError::CreateDir {
            dir: dir.display().to_string(),
            source,
        })?;
    tracing::info!(dir = %dir.display(), "created the store directory");
    Ok(())
}

impl Store {
    /// Opens the store for the daemon: creates its directory, takes the
    /// exclusive lock, then opens it. Hold the lock as long as the store.
    pub async fn open_exclusive(config: &StoreConfig) -> Result<(Self, StoreLock), StoreError> {
        if config.url.is_some() {
            return Ok((Self::open(config).await?, StoreLock { _file: None }));
        }
        store_dir(&config.path, true)?;
        let lock = StoreLock::take(&config.path)?;
        Ok((Self::open(config).await?, lock))
    }

    /// Opens (creating the file if needed) the store and applies pending
    /// migrations. Its directory must exist.
    pub async fn open(config: &StoreConfig) -> Result<Self, StoreError> {
        if let Some(options) = super::postgres::options(config) {
            let failed = |source| StoreError::Open {
                path: config.url.clone().unwrap_or_default(),
                source,
            };
            let options = options.map_err(failed)?;
            let pool = super::postgres::connect(options.clone())
                .await
                .map_err(failed)?;
            return Ok(Store {
                pool: Db::Postgres(pool),
                options: Db::Postgres(options),
                checkpoints: Default::default(),
            });
        }
        store_dir(&config.path, false)?;
        // Two processes opening a new store at once (the daemon starting,
        // `status` beside it) would both switch it to WAL and apply
        // migration 1; the second fails (busy, or the table exists). One
        // at a time, then; the lock is held for milliseconds.
        let (lock, failed) = lock_file(&config.path, "migrate.lock")?;
        let lock = tokio::task::spawn_blocking(move || lock.lock().map(|()| lock))
            .await
            .expect("the lock task does not panic")
            .map_err(failed)?;
        let options = connect_options(&config.path, config.synchronous);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options.clone())
            .await
            .map_err(|source| StoreError::Open {
                path: config.path.display().to_string(),
                source,
            })?;
        sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
        drop(lock);
        Ok(Store {
            pool: Db::Sqlite(pool),
            options: Db::Sqlite(options),
            checkpoints: Default::default(),
        })
    }

    /// Opens the dedicated write connection for a [`Writer`]. It does not
    /// checkpoint after every commit (SQLite's auto-checkpoint):
    /// [`Store::run_checkpointer`] copies the WAL back from another
    /// connection, and the writer steps in only past [`WAL_TRUNCATE_AT`].
    pub(super) async fn write_connection(&self) -> Result<Conn, StoreError> {
        let options = match &self.options {
            Db::Sqlite(o) => o,
            Db::Postgres(o) => return Ok(Db::Postgres(PgConnection::connect_with(o).await?)),
        };
        let options = options
            .clone()
            .pragma("wal_autocheckpoint", "0")
            // 4 MiB of pages, but dirty pages spill into the WAL mid-
            // transaction only past 4096 pages (16 MiB): a spilled page is
            // written again at commit (a 4 MiB cache that spilled doubled
            // the WAL bytes per event in the drain bench).
            .pragma("cache_size", "-4096")
            .pragma("cache_spill", "4096")
            // Its SQL differs by chunk size (1..64 rows, 1..256 ids), so a
            // large statement cache slowly fills with rarely used shapes.
            .statement_cache_capacity(WRITER_STATEMENTS);
        Ok(Db::Sqlite(SqliteConnection::connect_with(&options).await?))
    }

    pub async fn close(&self) {
        match &self.pool {
            Db::Sqlite(p) => p.close().await,
            Db::Postgres(p) => p.close().await,
        }
    }
}
