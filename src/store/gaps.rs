//! Gap markers in the store: the marker rows the writer adds to the stream
//! and the `gaps` table that remembers them (migration 0009), so `status`
//! can list them, `/metrics` can count them, and an open `unverified` gap
//! survives a restart.

use super::backend::{Tx, on};
use super::writer::Writer;
use super::{Store, StoreError};
use crate::event::{Event, now_us, rfc3339_us};
use crate::gap::{Gap, Reason};

/// A gap as `gapless status` and `/readyz` list it.
#[derive(Clone, Debug, serde::Serialize, sqlx::FromRow)]
pub struct GapRow {
    pub reason: String,
    pub from_us: i64,
    pub to_us: i64,
    pub events: Option<i64>,
    pub at_us: i64,
    pub verified_at_us: Option<i64>,
}

/// How many gaps of one reason, and how much event time they span.
#[derive(Clone, Debug, PartialEq, sqlx::FromRow)]
pub struct GapTotal {
    pub reason: String,
    pub n: i64,
    pub seconds: f64,
}

impl Writer {
    /// Keeps the `gaps` row of a marker (a marker stored twice keeps one).
    pub(super) async fn record_gap(
        tx: &mut Tx<'_>,
        source: &str,
        marker: &Event,
        gap: &Gap,
    ) -> Result<(), StoreError> {
        on!(&mut *tx, |t, sql| sqlx::query(sql(
            "INSERT INTO gaps (id, source, reason, from_us, to_us, events, at_us) \
             VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO NOTHING",
        ))
        .bind(marker.id.as_str())
        .bind(source)
        .bind(gap.reason.as_str())
        .bind(gap.from_us)
        .bind(gap.to_us)
        .bind(gap.events.map(|n| n as i64))
        .bind(marker.received_at_us)
        .execute(&mut **t)
        .await
        .map(|r| r.rows_affected()))?;
        tracing::warn!(reason = gap.reason.as_str(), from = %rfc3339_us(gap.from_us),
            to = %rfc3339_us(gap.to_us), seconds = gap.seconds(), events = gap.events,
            "gap marker: events in this span may be missing and cannot be recovered");
        Ok(())
    }

    /// Writes how far an open `unverified` gap has grown.
    pub(super) async fn extend_gap(tx: &mut Tx<'_>, open: &Gap) -> Result<(), StoreError> {
        on!(&mut *tx, |t, sql| sqlx::query(sql(
            "UPDATE gaps SET to_us = ?, events = ? WHERE id = ?"
        ))
        .bind(open.to_us)
        .bind(open.events.map(|n| n as i64))
        .bind(open.id(false))
        .execute(&mut **t)
        .await
        .map(|r| r.rows_affected()))?;
        Ok(())
    }

    /// Marks an `unverified` gap as verified.
    pub(super) async fn close_gap(tx: &mut Tx<'_>, open: &Gap) -> Result<(), StoreError> {
        on!(&mut *tx, |t, sql| sqlx::query(sql(
            "UPDATE gaps SET verified_at_us = ? WHERE id = ?"
        ))
        .bind(now_us())
        .bind(open.id(false))
        .execute(&mut **t)
        .await
        .map(|r| r.rows_affected()))?;
        tracing::info!(from = %rfc3339_us(open.from_us),
            to = %rfc3339_us(open.to_us),
            "the poller verified the span max_hold released early: io.gapless.verified marker");
        Ok(())
    }
}

impl Store {
    /// The `unverified` gap of `source` still open, if any.
    pub(super) async fn open_gap(&self, source: &str) -> Result<Option<Gap>, StoreError> {
        let row: Option<(i64, i64, Option<i64>)> = on!(&self.pool, |p, sql| sqlx::query_as(sql(
            "SELECT from_us, to_us, events FROM gaps \
             WHERE source = ? AND reason = 'unverified' AND verified_at_us IS NULL \
             ORDER BY at_us DESC LIMIT 1",
        ))
        .bind(source)
        .fetch_optional(p)
        .await)?;
        Ok(row.map(|(from_us, to_us, events)| Gap {
            reason: Reason::Unverified,
            from_us,
            to_us,
            events: events.map(|n| n as u64),
        }))
    }

    /// The newest `limit` gaps, newest first.
    pub async fn last_gaps(&self, limit: u32) -> Result<Vec<GapRow>, StoreError> {
        Ok(on!(&self.pool, |p, sql| sqlx::query_as(sql(
            "SELECT reason, from_us, to_us, events, at_us, verified_at_us FROM gaps \
             ORDER BY at_us DESC, rowid DESC LIMIT ?",
        ))
        .bind(i64::from(limit))
        .fetch_all(p)
        .await)?)
    }

    /// Gaps per reason, with the event time they span (for `/metrics`).
    pub async fn gap_totals(&self) -> Result<Vec<GapTotal>, StoreError> {
        Ok(on!(&self.pool, |p, sql| {
            sqlx::query_as(sql(
            "SELECT reason, COUNT(*) AS n, CAST(COALESCE(SUM(to_us - from_us), 0) AS DOUBLE PRECISION) / 1e6 AS seconds \
             FROM gaps GROUP BY reason ORDER BY reason",
        ))
        .fetch_all(p)
        .await
        })?)
    }
}
