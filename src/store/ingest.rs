//! What sources hand the writer, and the rules that decide what of it is
//! new: duplicates by id (in the batch and in the store), duplicates by
//! content key within a time window, and the multi-row insert.

use std::collections::{HashMap, HashSet};

use sqlx::AssertSqlSafe;
use tokio::sync::{OwnedSemaphorePermit, oneshot};

use super::StoreError;
use super::backend::{Tx, on};
use super::writer::Writer;
use crate::event::{Event, Parsed, Rejected};

/// A source's receipt for one message, handed back (in order) once the
/// commit that made the message durable is done: the MQTT source's PUBACK.
/// Opaque to the store, which only has to give it back after the commit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Receipt(pub u64);

/// What sources send the writer, in order.
#[derive(Debug)]
pub enum Ingest {
    /// One message: what it parsed to, the receipt to hand back once it is
    /// durable, and the share of the byte budget it holds until then.
    Message {
        item: Parsed,
        ack: Option<Receipt>,
        permit: Option<OwnedSemaphorePermit>,
    },
    /// The poller verified the source's history up to `until_us`. Sent
    /// after the window's events on the same channel, so it commits with or
    /// after them, never before; `done` fires after that commit.
    Verified {
        until_us: i64,
        done: oneshot::Sender<()>,
    },
    /// Events may be missing in this span and cannot be recovered: the
    /// writer adds a gap marker to the stream ([`crate::gap`]).
    Gap(crate::gap::Gap),
}

/// Rows per multi-row INSERT (16 columns each, well under SQLite's bind limit).
pub(super) const INSERT_CHUNK: usize = 64;

/// Ids per `IN (...)` lookup.
const LOOKUP_CHUNK: usize = 256;

/// A ScaleIT event waiting for its schema: stored, not released yet.
pub(super) fn pending(e: &Event) -> bool {
    e.ext
        .as_ref()
        .is_some_and(|x| x.validation == crate::event::Validation::Pending)
}

/// `rows` tuples of `cols` anonymous parameters. Not numbered: SQLite
/// finds a numbered parameter's name by a linear scan, so binding a
/// 1,024-parameter batch that way is quadratic (measured: +15 µs of CPU per
/// event in the drain bench).
pub(super) fn placeholders(rows: usize, cols: usize) -> String {
    let row = format!("({})", vec!["?"; cols].join(","));
    vec![row; rows].join(",")
}

impl Writer {
    /// Content-keyed events (sources without ids): one whose key is stored,
    /// or earlier in the batch, less than its window away in time (either
    /// side: a history copy may carry an earlier time than the MQTT one) is
    /// the same message again and is dropped.
    pub(super) async fn drop_window_duplicates(
        tx: &mut Tx<'_>,
        events: &mut Vec<Event>,
    ) -> Result<(), StoreError> {
        let spans = events.iter().filter_map(|e| {
            let w = e.content_key.as_ref()?.window_us;
            Some((
                e.occurred_at_us.saturating_sub(w),
                e.occurred_at_us.saturating_add(w),
            ))
        });
        let Some((from, to)) = spans.reduce(|a, b| (a.0.min(b.0), a.1.max(b.1))) else {
            return Ok(());
        };
        let keys: Vec<&str> = events
            .iter()
            .filter_map(|e| Some(e.content_key.as_ref()?.key.as_str()))
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        // Stored times per key near the batch, one query per chunk. Kept
        // times of one key are a window apart, so these lists stay short.
        let mut seen: HashMap<String, Vec<i64>> = HashMap::new();
        for chunk in keys.chunks(LOOKUP_CHUNK) {
            let text = format!(
                "SELECT dedup_key, occurred_at_us FROM events \
                 WHERE occurred_at_us > ? AND occurred_at_us < ? AND dedup_key IN {}",
                placeholders(1, chunk.len())
            );
            let rows = on!(&mut *tx, |t, sql| {
                let mut q = sqlx::query_as::<_, (String, i64)>(sql(AssertSqlSafe(text)))
                    .bind(from)
                    .bind(to);
                for key in chunk {
                    q = q.bind(*key);
                }
                q.fetch_all(&mut **t).await
            })?;
            for (key, at) in rows {
                seen.entry(key).or_default().push(at);
            }
        }
        events.retain(|e| {
            let Some(k) = &e.content_key else {
                return true;
            };
            let times = seen.entry(k.key.clone()).or_default();
            if times
                .iter()
                .any(|t| t.abs_diff(e.occurred_at_us) < k.window_us.unsigned_abs())
            {
                return false;
            }
            times.push(e.occurred_at_us);
            true
        });
        Ok(())
    }

    /// The events of a batch that are new: duplicates within the batch,
    /// content keys seen within their window, and ids already stored are
    /// dropped.
    pub(super) async fn fresh<'a>(
        tx: &mut Tx<'_>,
        events: &'a mut Vec<Event>,
    ) -> Result<Vec<&'a Event>, StoreError> {
        let mut seen = HashSet::with_capacity(events.len());
        events.retain(|e| seen.insert(e.id.clone()));
        Self::drop_window_duplicates(tx, events).await?;
        let mut existing = HashSet::new();
        let ids: Vec<&str> = events.iter().map(|e| e.id.as_str()).collect();
        for chunk in ids.chunks(LOOKUP_CHUNK) {
            let text = format!(
                "SELECT id FROM events WHERE id IN {}",
                placeholders(1, chunk.len())
            );
            existing.extend(on!(&mut *tx, |t, sql| {
                let mut q = sqlx::query_scalar::<_, String>(sql(AssertSqlSafe(text)));
                for id in chunk {
                    q = q.bind(*id);
                }
                q.fetch_all(&mut **t).await
            })?);
        }
        Ok(events
            .iter()
            .filter(|e| !existing.contains(&e.id))
            .collect())
    }

    /// Inserts new events, each at its stream position if it already has
    /// one (`(seq, late)`, parallel to `fresh`), else unreleased.
    pub(super) async fn insert(
        tx: &mut Tx<'_>,
        fresh: &[&Event],
        positions: &[Option<(i64, bool)>],
        source: &str,
    ) -> Result<(), StoreError> {
        debug_assert_eq!(fresh.len(), positions.len());
        for (chunk, at) in fresh
            .chunks(INSERT_CHUNK)
            .zip(positions.chunks(INSERT_CHUNK))
        {
            let text = format!(
                "INSERT INTO events (id, source, origin, occurred_at_us, received_at_us, type, \
                 subject, org, payload, seq, late, ce_source, dataschema, dedup_key, validation, retained) \
                 VALUES {} ON CONFLICT(id) DO NOTHING",
                placeholders(chunk.len(), 16)
            );
            let done = on!(&mut *tx, |t, sql| {
                let mut q = sqlx::query(sql(AssertSqlSafe(text)));
                for (e, at) in chunk.iter().zip(at) {
                    q = q
                        .bind(e.id.as_str())
                        .bind(source)
                        .bind(e.origin.as_str())
                        .bind(e.occurred_at_us)
                        .bind(e.received_at_us)
                        .bind(e.event_type.as_str())
                        .bind(e.subject.as_deref())
                        .bind(e.org.as_deref())
                        .bind(e.payload.as_str())
                        .bind(at.map(|(seq, _)| seq))
                        .bind(at.is_some_and(|(_, late)| late))
                        .bind(e.ext.as_ref().map(|x| x.source.as_str()))
                        .bind(e.ext.as_ref().and_then(|x| x.dataschema.as_deref()))
                        .bind(e.content_key.as_ref().map(|k| k.key.as_str()))
                        .bind(e.ext.as_ref().map(|x| x.validation.as_str()))
                        .bind(e.retained);
                }
                q.execute(&mut **t).await.map(|r| r.rows_affected())
            })?;
            debug_assert_eq!(done, chunk.len() as u64);
        }
        Ok(())
    }

    /// Keeps refused messages, and only the newest `keep` of them.
    pub(super) async fn insert_rejected(
        tx: &mut Tx<'_>,
        rejected: &[Rejected],
        keep: i64,
    ) -> Result<(), StoreError> {
        if rejected.is_empty() {
            return Ok(());
        }
        for r in rejected {
            on!(&mut *tx, |t, sql| sqlx::query(sql(
                "INSERT INTO rejected (topic, reason, detail, bytes, size, at_us) \
                 VALUES (?, ?, ?, ?, ?, ?)",
            ))
            .bind(r.topic.as_str())
            .bind(r.reason.as_str())
            .bind(r.detail.as_str())
            .bind(r.bytes.as_slice())
            .bind(r.size as i64)
            .bind(r.at_us)
            .execute(&mut **t)
            .await
            .map(|r| r.rows_affected()))?;
        }
        on!(&mut *tx, |t, sql| sqlx::query(sql(
            "DELETE FROM rejected WHERE id <= (SELECT MAX(id) FROM rejected) - ?"
        ))
        .bind(keep)
        .execute(&mut **t)
        .await
        .map(|r| r.rows_affected()))?;
        Ok(())
    }
}
