//! Writes other tasks make through the single write connection: sink
//! cursors and dead letters, the schema registry's verdicts on held-back
//! events, and the handle they send them with.

use tokio::sync::{mpsc, oneshot};

use super::StoreError;
use super::backend::{Tx, on};
use super::writer::Writer;
use crate::event::RejectReason;
use crate::metrics::Counters;
use crate::stream::{Order, Sequencer};

/// Requests from other tasks that must go through the single write connection.
#[derive(Debug)]
pub(super) enum Control {
    Sink {
        sink: String,
        ops: Vec<SinkOp>,
        done: oneshot::Sender<()>,
    },
    Schema {
        ops: Vec<SchemaOp>,
        done: oneshot::Sender<()>,
    },
}

/// A schema registry's writes: its verdicts on held-back events, and the
/// schemas it fetched.
#[derive(Debug)]
pub enum SchemaOp {
    /// The held-back (`pending`) event `id` may be released: it validated,
    /// or goes out unvalidated.
    Release {
        id: String,
        validation: crate::event::Validation,
        dataschema: Option<String>,
    },
    /// The held-back event `id` is invalid: it moves to `rejected`.
    Reject {
        id: String,
        reason: RejectReason,
        detail: String,
    },
    /// A fetched schema, kept so a restart validates without the service.
    Put {
        url: String,
        etag: Option<String>,
        body: String,
    },
}

/// A sink's writes, committed through the writer in the order given.
#[derive(Clone, Debug, PartialEq)]
pub enum SinkOp {
    /// Everything up to `seq` is delivered.
    Cursor(i64),
    /// The target refused event `seq` for good; record it.
    DeadLetter {
        seq: i64,
        event_id: String,
        attempts: u32,
        status: Option<u16>,
        error: String,
    },
    /// A dead letter was delivered after all: forget it.
    DeadLetterDelivered(i64),
    /// A dead-letter retry failed again.
    DeadLetterFailed { seq: i64, error: String },
    /// The target is gone (410): stop delivering until a replay.
    Disable(String),
    /// A replay request was applied: clear it and any disabled state.
    ReplayApplied,
}

/// The released head, published after every commit so sinks wake up.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Head {
    pub seq: i64,
    /// No more events will come (ingest closed and drained).
    pub closed: bool,
}

/// A cheap, cloneable handle to send cursor commits to the writer.
#[derive(Clone, Debug)]
pub struct WriterHandle {
    pub(super) ctrl: mpsc::Sender<Control>,
}

impl WriterHandle {
    /// Durably records that `sink` has delivered everything up to `seq`.
    pub async fn commit_cursor(&self, sink: &str, seq: i64) -> Result<(), StoreError> {
        self.sink_ops(sink, vec![SinkOp::Cursor(seq)]).await
    }

    /// Durably applies a sink's writes, in one transaction.
    pub async fn sink_ops(&self, sink: &str, ops: Vec<SinkOp>) -> Result<(), StoreError> {
        self.sink_ops_queued(sink, ops)
            .await?
            .await
            .map_err(|_| StoreError::WriterGone)
    }

    /// Durably applies a schema registry's writes, in one transaction.
    pub async fn schema_ops(&self, ops: Vec<SchemaOp>) -> Result<(), StoreError> {
        let (done, wait) = oneshot::channel();
        self.ctrl
            .send(Control::Schema { ops, done })
            .await
            .map_err(|_| StoreError::WriterGone)?;
        wait.await.map_err(|_| StoreError::WriterGone)
    }

    /// Queues a sink's writes without waiting for their commit; the returned
    /// receiver fires once they are durable. Writes of one sink commit in
    /// the order queued, and the writer folds many into one transaction,
    /// which is what lets a webhook sink deliver faster than one commit per
    /// event.
    pub async fn sink_ops_queued(
        &self,
        sink: &str,
        ops: Vec<SinkOp>,
    ) -> Result<oneshot::Receiver<()>, StoreError> {
        let (done, wait) = oneshot::channel();
        self.ctrl
            .send(Control::Sink {
                sink: sink.to_string(),
                ops,
                done,
            })
            .await
            .map_err(|_| StoreError::WriterGone)?;
        Ok(wait)
    }
}

pub(super) async fn write_sink_op(
    tx: &mut Tx<'_>,
    sink: &str,
    op: &SinkOp,
    now: i64,
) -> Result<(), StoreError> {
    on!(&mut *tx, |t, sql| {
        let q = match op {
        SinkOp::Cursor(seq) => sqlx::query(sql(
            "INSERT INTO cursors (sink, seq, updated_at_us) VALUES (?1, ?2, ?3) \
             ON CONFLICT(sink) DO UPDATE SET seq = excluded.seq, updated_at_us = excluded.updated_at_us",
        ))
        .bind(sink)
        .bind(*seq)
        .bind(now),
        SinkOp::DeadLetter { seq, event_id, attempts, status, error } => sqlx::query(sql(
            "INSERT INTO dead_letters (sink, seq, event_id, attempts, last_status, last_error, at_us) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT(sink, seq) DO UPDATE SET \
             attempts = excluded.attempts, last_status = excluded.last_status, \
             last_error = excluded.last_error, at_us = excluded.at_us, retry = FALSE",
        ))
        .bind(sink)
        .bind(*seq)
        .bind(event_id.as_str())
        .bind(i64::from(*attempts))
        .bind(status.map(i64::from))
        .bind(error.as_str())
        .bind(now),
        SinkOp::DeadLetterDelivered(seq) => sqlx::query(sql("DELETE FROM dead_letters WHERE sink = ?1 AND seq = ?2"))
            .bind(sink)
            .bind(*seq),
        SinkOp::DeadLetterFailed { seq, error } => sqlx::query(sql(
            "UPDATE dead_letters SET attempts = attempts + 1, last_error = ?3, at_us = ?4, retry = FALSE \
             WHERE sink = ?1 AND seq = ?2",
        ))
        .bind(sink)
        .bind(*seq)
        .bind(error.as_str())
        .bind(now),
        SinkOp::Disable(reason) => sqlx::query(sql(
            "INSERT INTO sink_state (sink, disabled_reason, at_us) VALUES (?1, ?2, ?3) \
             ON CONFLICT(sink) DO UPDATE SET disabled_reason = excluded.disabled_reason, at_us = excluded.at_us",
        ))
        .bind(sink)
        .bind(reason.as_str())
        .bind(now),
        SinkOp::ReplayApplied => {
            sqlx::query(sql("DELETE FROM sink_state WHERE sink = ?1"))
                .bind(sink)
                .execute(&mut **t)
                .await?;
            sqlx::query(sql("DELETE FROM sink_requests WHERE sink = ?1")).bind(sink)
        }
    };
        q.execute(&mut **t).await?;
        Ok::<(), sqlx::Error>(())
    })?;
    Ok(())
}

impl Writer {
    /// Applies one schema registry write inside the batch's transaction.
    /// Only rows still `pending` are touched, so a repeated op is harmless.
    pub(super) async fn write_schema_op(
        tx: &mut Tx<'_>,
        op: SchemaOp,
        now: i64,
        order: Order,
        sequencer: &mut Sequencer,
        counters: &Counters,
    ) -> Result<(), StoreError> {
        match op {
            SchemaOp::Release {
                id,
                validation,
                dataschema,
            } => {
                let done = on!(&mut *tx, |t, sql| sqlx::query(sql(
                    "UPDATE events SET validation = ?, dataschema = COALESCE(?, dataschema) \
                     WHERE id = ? AND validation = 'pending'",
                ))
                .bind(validation.as_str())
                .bind(dataschema)
                .bind(id.as_str())
                .execute(&mut **t)
                .await
                .map(|r| r.rows_affected()))?;
                // In arrival order it takes the next seq now (event-time
                // order releases it with the watermark); it arrived earlier.
                if done == 1 && order == Order::Arrival {
                    on!(&mut *tx, |t, sql| sqlx::query(sql(
                        "UPDATE events SET seq = ?, late = TRUE WHERE id = ?"
                    ))
                    .bind(sequencer.next_seq())
                    .bind(id.as_str())
                    .execute(&mut **t)
                    .await
                    .map(|r| r.rows_affected()))?;
                }
            }
            SchemaOp::Reject { id, reason, detail } => {
                let moved = on!(&mut *tx, |t, sql| {
                    sqlx::query(sql(
                    "INSERT INTO rejected (topic, reason, detail, bytes, size, at_us) \
                     SELECT COALESCE(ce_source, '') || '/' || type || COALESCE('/' || subject, ''), \
                     ?, ?, CAST(payload AS BLOB), length(CAST(payload AS BLOB)), ? \
                     FROM events WHERE id = ? AND validation = 'pending'",
                ))
                .bind(reason.as_str())
                .bind(detail.as_str())
                .bind(now)
                .bind(id.as_str())
                .execute(&mut **t)
                .await.map(|r| r.rows_affected())
                })?;
                on!(&mut *tx, |t, sql| sqlx::query(sql(
                    "DELETE FROM events WHERE id = ? AND validation = 'pending'"
                ))
                .bind(id.as_str())
                .execute(&mut **t)
                .await
                .map(|r| r.rows_affected()))?;
                if moved == 1 {
                    counters.rejected_for(reason.as_str());
                }
            }
            SchemaOp::Put { url, etag, body } => {
                on!(&mut *tx, |t, sql| sqlx::query(sql(
                    "INSERT INTO schemas (url, etag, body, fetched_at_us) VALUES (?, ?, ?, ?) \
                     ON CONFLICT(url) DO UPDATE SET etag = excluded.etag, body = excluded.body, \
                     fetched_at_us = excluded.fetched_at_us",
                ))
                .bind(url)
                .bind(etag)
                .bind(body)
                .bind(now)
                .execute(&mut **t)
                .await
                .map(|r| r.rows_affected()))?;
            }
        }
        Ok(())
    }
}
