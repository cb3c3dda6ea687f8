//! Sinks: each reads released events from the store, in `seq` order, from
//! its own durable cursor.
//!
//! Reading from the store (never from the writer's memory) is what keeps a
//! slow sink from holding back the writer or the other sinks, and what makes
//! restart trivial: a sink resumes after its cursor. A cursor advances only
//! after the target has durably accepted the events.

pub mod file;
pub mod stdout;

use std::sync::Arc;

use tokio::sync::watch;

use crate::config::{SinkConfig, SinkKind};
use crate::event::{StoredEvent, now_us};
use crate::metrics::Counters;
use crate::store::{Head, Store, StoreError, WriterHandle};

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("sink `{sink}`: {source}")]
    Io {
        sink: String,
        source: std::io::Error,
    },
    #[error("sink `{sink}`: {message}")]
    Corrupt { sink: String, message: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Where a sink writes.
pub enum Target {
    File(file::FileTarget),
    Stdout(stdout::StdoutTarget),
}

impl Target {
    async fn open(config: &SinkConfig) -> Result<Self, SinkError> {
        let io = |source| SinkError::Io {
            sink: config.name.clone(),
            source,
        };
        Ok(match config.kind {
            SinkKind::File => Target::File(
                file::FileTarget::open(config.path.as_deref().expect("validated"))
                    .await
                    .map_err(|e| match e {
                        file::FileError::Io(source) => io(source),
                        file::FileError::Corrupt(message) => SinkError::Corrupt {
                            sink: config.name.clone(),
                            message,
                        },
                    })?,
            ),
            SinkKind::Stdout => Target::Stdout(stdout::StdoutTarget::new(config.format)),
        })
    }

    /// The last `seq` the target itself holds, when it can tell.
    fn last_seq(&self) -> Option<i64> {
        match self {
            Target::File(f) => f.last_seq(),
            Target::Stdout(_) => None,
        }
    }

    async fn write(&mut self, events: &[StoredEvent], source: &str) -> std::io::Result<()> {
        match self {
            Target::File(f) => f.write(events, source).await,
            Target::Stdout(s) => s.write(events, source).await,
        }
    }
}

/// Everything a sink task needs.
pub struct SinkTask {
    pub config: SinkConfig,
    pub store: Store,
    pub writer: WriterHandle,
    pub head: watch::Receiver<Head>,
    pub source_uri: String,
    pub counters: Arc<Counters>,
}

/// Decides where a sink resumes from its stored cursor and what its target
/// already holds: a target ahead of the cursor (crash between write and
/// cursor commit) wins, so nothing is written twice.
pub fn resume_point(cursor: i64, target_last: Option<i64>) -> i64 {
    match target_last {
        Some(last) if last > cursor => last,
        _ => cursor,
    }
}

impl SinkTask {
    /// Delivers until ingest has closed and this sink has caught up with the head.
    pub async fn run(mut self) -> Result<i64, SinkError> {
        let name = self.config.name.clone();
        let mut target = Target::open(&self.config).await?;
        let stored = self.store.cursor(&name).await?;
        let mut cursor = resume_point(stored, target.last_seq());
        match target.last_seq() {
            Some(last) if last > stored => {
                tracing::info!(sink = %name, cursor = stored, target_seq = last,
                    "target is ahead of the stored cursor (crash after write); resuming after its last event");
                self.writer.commit_cursor(&name, cursor).await?;
            }
            Some(last) if last < stored => {
                tracing::warn!(sink = %name, cursor = stored, target_seq = last,
                "target holds less than the cursor says (rotated or edited?); continuing after the cursor")
            }
            _ => {}
        }
        tracing::info!(sink = %name, cursor, "sink started");
        loop {
            let events = self.store.released_after(cursor, self.config.batch).await?;
            if let Some(last) = events.last() {
                target
                    .write(&events, &self.source_uri)
                    .await
                    .map_err(|source| SinkError::Io {
                        sink: name.clone(),
                        source,
                    })?;
                cursor = last.seq;
                self.writer.commit_cursor(&name, cursor).await?;
                Counters::add(&self.counters.delivered, events.len() as u64);
                self.counters
                    .last_delivered_us
                    .store(now_us(), std::sync::atomic::Ordering::Relaxed);
                continue;
            }
            let head = *self.head.borrow_and_update();
            if cursor < head.seq {
                continue;
            }
            if head.closed {
                break;
            }
            if self.head.changed().await.is_err() {
                break;
            }
        }
        tracing::info!(sink = %name, cursor, "sink drained");
        Ok(cursor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_point_never_repeats_what_the_target_holds() {
        assert_eq!(resume_point(10, None), 10);
        assert_eq!(resume_point(10, Some(12)), 12);
        assert_eq!(resume_point(10, Some(10)), 10);
        assert_eq!(resume_point(10, Some(3)), 10);
    }
}
