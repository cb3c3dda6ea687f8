//! The typed read API: what sinks, the schema registry, the admin endpoint
//! and the CLI read, through the read pool, while the writer writes.

use super::backend::on;
use super::{Store, StoreError};
use crate::event::{StoredEvent, now_us};

/// The columns a [`StoredEvent`] is read from.
macro_rules! stored_columns {
    () => {
        "seq, id, origin, occurred_at_us, type, subject, payload, late, ce_source, dataschema, validation, retained"
    };
}

impl Store {
    /// The highest released `seq` (0 when nothing is released yet).
    pub async fn head(&self) -> Result<i64, StoreError> {
        Ok(on!(&self.pool, |p, sql| sqlx::query_scalar(sql(
            "SELECT COALESCE(MAX(seq), 0) FROM events"
        ))
        .fetch_one(p)
        .await)?)
    }

    /// Events held back for their schema after `after` (received µs, id),
    /// oldest first. Paging by both keys never skips events received in the
    /// same microsecond.
    pub async fn pending_events(
        &self,
        after: (i64, &str),
        limit: u32,
    ) -> Result<Vec<PendingEvent>, StoreError> {
        Ok(on!(&self.pool, |p, sql| sqlx::query_as(sql(
            "SELECT id, COALESCE(ce_source, '') AS ce_source, payload, received_at_us FROM events \
             WHERE validation = 'pending' AND (received_at_us, id) > (?, ?) \
             ORDER BY received_at_us, id LIMIT ?",
        ))
        .bind(after.0)
        .bind(after.1)
        .bind(i64::from(limit))
        .fetch_all(p)
        .await)?)
    }

    /// How many events wait for their schema.
    pub async fn pending_count(&self) -> Result<i64, StoreError> {
        Ok(on!(&self.pool, |p, sql| sqlx::query_scalar(sql(
            "SELECT COUNT(*) FROM events WHERE validation = 'pending'"
        ))
        .fetch_one(p)
        .await)?)
    }

    /// A cached schema.
    pub async fn schema(&self, url: &str) -> Result<Option<CachedSchema>, StoreError> {
        Ok(on!(&self.pool, |p, sql| sqlx::query_as(sql(
            "SELECT etag, body FROM schemas WHERE url = ?"
        ))
        .bind(url)
        .fetch_optional(p)
        .await)?)
    }

    /// A sink's cursor: the last `seq` its target accepted (0 = none).
    pub async fn cursor(&self, sink: &str) -> Result<i64, StoreError> {
        Ok(on!(&self.pool, |p, sql| sqlx::query_scalar(sql(
            "SELECT seq FROM cursors WHERE sink = ?"
        ))
        .bind(sink)
        .fetch_optional(p)
        .await)?
        .unwrap_or(0))
    }

    /// Released events after `seq`, in stream order.
    pub async fn released_after(
        &self,
        seq: i64,
        limit: u32,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        Ok(on!(&self.pool, |p, sql| sqlx::query_as(sql(concat!(
            "SELECT ",
            stored_columns!(),
            " FROM events WHERE seq > ? ORDER BY seq LIMIT ?"
        )))
        .bind(seq)
        .bind(i64::from(limit))
        .fetch_all(p)
        .await)?)
    }

    /// How far `source`'s history is verified (µs since the epoch), if ever.
    pub async fn verified_until(&self, source: &str) -> Result<Option<i64>, StoreError> {
        Ok(on!(&self.pool, |p, sql| sqlx::query_scalar(sql(
            "SELECT verified_until_us FROM watermarks WHERE source = ?"
        ))
        .bind(source)
        .fetch_optional(p)
        .await)?)
    }

    /// Why a sink is disabled, if it is.
    pub async fn sink_disabled(&self, sink: &str) -> Result<Option<String>, StoreError> {
        Ok(on!(&self.pool, |p, sql| sqlx::query_scalar(sql(
            "SELECT disabled_reason FROM sink_state WHERE sink = ?"
        ))
        .bind(sink)
        .fetch_optional(p)
        .await)?
        .flatten())
    }

    /// A pending replay request for a sink: deliver again from this `seq`.
    pub async fn replay_request(&self, sink: &str) -> Result<Option<i64>, StoreError> {
        Ok(on!(&self.pool, |p, sql| sqlx::query_scalar(sql(
            "SELECT replay_from_seq FROM sink_requests WHERE sink = ?"
        ))
        .bind(sink)
        .fetch_optional(p)
        .await)?)
    }

    /// A sink's dead letters (only those marked for retry, if asked), oldest first.
    pub async fn dead_letters(
        &self,
        sink: &str,
        only_retry: bool,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        Ok(on!(&self.pool, |p, sql| {
            sqlx::query_as(sql(
            "SELECT seq, event_id, attempts, last_status, last_error, at_us, retry FROM dead_letters \
             WHERE sink = ? AND (retry OR NOT ?) ORDER BY seq",
        ))
        .bind(sink)
        .bind(only_retry)
        .fetch_all(p)
        .await
        })?)
    }

    /// How many dead letters `sink` has (for `status` and its live view,
    /// without reading them).
    pub async fn dead_letter_count(&self, sink: &str) -> Result<i64, StoreError> {
        Ok(on!(&self.pool, |p, sql| sqlx::query_scalar(sql(
            "SELECT COUNT(*) FROM dead_letters WHERE sink = ?"
        ))
        .bind(sink)
        .fetch_one(p)
        .await)?)
    }

    /// The released event at `seq`.
    pub async fn event_at(&self, seq: i64) -> Result<Option<StoredEvent>, StoreError> {
        Ok(on!(&self.pool, |p, sql| sqlx::query_as(sql(concat!(
            "SELECT ",
            stored_columns!(),
            " FROM events WHERE seq = ?"
        )))
        .bind(seq)
        .fetch_optional(p)
        .await)?)
    }

    /// Operator request (CLI): deliver again from `seq`. The sink applies it
    /// (now if the daemon runs, else at its next start) and is re-enabled.
    pub async fn request_replay(&self, sink: &str, from_seq: i64) -> Result<(), StoreError> {
        on!(&self.pool, |p, sql| {
            sqlx::query(sql(
            "INSERT INTO sink_requests (sink, replay_from_seq, at_us) VALUES (?, ?, ?) \
             ON CONFLICT(sink) DO UPDATE SET replay_from_seq = excluded.replay_from_seq, at_us = excluded.at_us",
        ))
        .bind(sink)
        .bind(from_seq)
        .bind(now_us())
        .execute(p)
        .await.map(|r| r.rows_affected())
        })?;
        Ok(())
    }

    /// Records the address the admin endpoint bound, so `status` finds a
    /// daemon whose `admin.listen` asked for port 0.
    pub async fn record_admin(&self, addr: std::net::SocketAddr) -> Result<(), StoreError> {
        on!(&self.pool, |p, sql| sqlx::query(sql(
            "INSERT INTO daemon (id, admin_addr, pid, started_at_us) VALUES (1, ?, ?, ?) \
             ON CONFLICT(id) DO UPDATE SET admin_addr = excluded.admin_addr, \
             pid = excluded.pid, started_at_us = excluded.started_at_us",
        ))
        .bind(addr.to_string())
        .bind(i64::from(std::process::id()))
        .bind(now_us())
        .execute(p)
        .await
        .map(|r| r.rows_affected()))?;
        Ok(())
    }

    /// The admin address the last daemon on this store bound, and its pid.
    pub async fn admin_addr(&self) -> Result<Option<(String, i64)>, StoreError> {
        Ok(on!(&self.pool, |p, sql| sqlx::query_as(sql(
            "SELECT admin_addr, pid FROM daemon WHERE id = 1"
        ))
        .fetch_optional(p)
        .await)?)
    }

    /// Operator request (CLI): mark a sink's dead letters for another delivery.
    pub async fn dlq_retry(&self, sink: &str) -> Result<u64, StoreError> {
        Ok(on!(&self.pool, |p, sql| sqlx::query(sql(
            "UPDATE dead_letters SET retry = TRUE WHERE sink = ?"
        ))
        .bind(sink)
        .execute(p)
        .await
        .map(|r| r.rows_affected()))?)
    }

    /// Operator request (CLI): forget a sink's dead letters recorded before
    /// `before_us`. Nothing else removes them: retention keeps their events.
    pub async fn dlq_purge(&self, sink: &str, before_us: i64) -> Result<u64, StoreError> {
        Ok(on!(&self.pool, |p, sql| sqlx::query(sql(
            "DELETE FROM dead_letters WHERE sink = ? AND at_us < ?"
        ))
        .bind(sink)
        .bind(before_us)
        .execute(p)
        .await
        .map(|r| r.rows_affected()))?)
    }

    /// What the stream holds, for `gapless status`.
    pub async fn stream_counts(&self) -> Result<StreamCounts, StoreError> {
        Ok(on!(&self.pool, |p, sql| sqlx::query_as(sql(
            "SELECT (SELECT COUNT(*) FROM events) AS events, \
             (SELECT COUNT(*) FROM events WHERE seq IS NULL) AS unreleased, \
             (SELECT COUNT(*) FROM events WHERE late) AS late, \
             (SELECT COUNT(*) FROM rejected) AS rejected",
        ))
        .fetch_one(p)
        .await)?)
    }

    /// The most recent rejected messages, newest first.
    pub async fn last_rejected(&self, n: u32) -> Result<Vec<RejectedRow>, StoreError> {
        Ok(on!(&self.pool, |p, sql| sqlx::query_as(sql(
            "SELECT at_us, topic, reason, detail, size FROM rejected ORDER BY id DESC LIMIT ?",
        ))
        .bind(i64::from(n))
        .fetch_all(p)
        .await)?)
    }

    /// How many events and rejected messages the store holds.
    pub async fn counts(&self) -> Result<StoreCounts, StoreError> {
        // The first row by rowid is the oldest received: rows are inserted
        // as they arrive and rowids only grow, so this is one b-tree step,
        // not a scan of `received_at_us`.
        Ok(on!(&self.pool, |p, sql| sqlx::query_as(sql(
            "SELECT (SELECT COUNT(*) FROM events) AS events, \
             (SELECT COUNT(*) FROM rejected) AS rejected, \
             (SELECT COUNT(*) FROM dead_letters) AS dead_letters, \
             (SELECT received_at_us FROM events ORDER BY rowid LIMIT 1) AS oldest_received_us",
        ))
        .fetch_one(p)
        .await)?)
    }

    /// Every event's origin and when it was stored (µs), in arrival order:
    /// the demo's picture. Reads the whole table; not for a daemon's store.
    pub async fn arrivals(&self) -> Result<Vec<(String, i64)>, StoreError> {
        Ok(on!(&self.pool, |p, sql| sqlx::query_as(sql(
            "SELECT origin, received_at_us FROM events ORDER BY rowid"
        ))
        .fetch_all(p)
        .await)?)
    }

    /// The highest rowid in `events` (0 when empty): where
    /// [`Store::added_by_origin`] starts counting.
    pub async fn max_rowid(&self) -> Result<i64, StoreError> {
        Ok(on!(&self.pool, |p, sql| sqlx::query_scalar(sql(
            "SELECT COALESCE(MAX(rowid), 0) FROM events"
        ))
        .fetch_one(p)
        .await)?)
    }

    /// Rows added after `after_rowid`, by origin, and the new highest
    /// rowid: a rowid range, so a live view costs what was added, not the
    /// table.
    pub async fn added_by_origin(
        &self,
        after_rowid: i64,
    ) -> Result<(i64, Vec<(String, i64)>), StoreError> {
        let rows: Vec<(String, i64, i64)> = on!(&self.pool, |p, sql| sqlx::query_as(sql(
            "SELECT origin, COUNT(*), MAX(rowid) FROM events WHERE rowid > ? GROUP BY origin",
        ))
        .bind(after_rowid)
        .fetch_all(p)
        .await)?;
        let high = rows.iter().map(|r| r.2).max().unwrap_or(after_rowid);
        Ok((high, rows.into_iter().map(|(o, n, _)| (o, n)).collect()))
    }

    /// When the last event that came over MQTT was received (µs): where a
    /// source without history resumes its record of unbroken delivery.
    pub async fn last_mqtt_received_us(&self) -> Result<Option<i64>, StoreError> {
        Ok(on!(&self.pool, |p, sql| sqlx::query_scalar(sql(
            "SELECT received_at_us FROM events WHERE origin = 'mqtt' ORDER BY rowid DESC LIMIT 1",
        ))
        .fetch_optional(p)
        .await)?)
    }

    /// Rejected messages per reason, most frequent first.
    pub async fn rejected_by_reason(&self) -> Result<Vec<ReasonCount>, StoreError> {
        Ok(on!(&self.pool, |p, sql| sqlx::query_as(sql(
            "SELECT reason, COUNT(*) AS n FROM rejected GROUP BY reason ORDER BY n DESC, reason",
        ))
        .fetch_all(p)
        .await)?)
    }
}

/// A rejected message as `gapless status` shows it.
#[derive(Debug, serde::Serialize, sqlx::FromRow)]
pub struct RejectedRow {
    pub at_us: i64,
    pub topic: String,
    pub reason: String,
    pub detail: String,
    pub size: i64,
}

/// A dead letter, as `gapless dlq list` shows it.
#[derive(Clone, Debug, sqlx::FromRow, serde::Serialize)]
pub struct DeadLetter {
    pub seq: i64,
    pub event_id: String,
    pub attempts: i64,
    pub last_status: Option<i64>,
    pub last_error: String,
    pub at_us: i64,
    pub retry: bool,
}

/// A ScaleIT event held back for its schema, as the schema sweep reads it.
#[derive(Debug, sqlx::FromRow)]
pub struct PendingEvent {
    pub id: String,
    /// The CloudEvent source (`app/<app>/<stack>`), empty if none.
    pub ce_source: String,
    pub payload: String,
    pub received_at_us: i64,
}

/// A fetched JSON Schema kept in the store, so a restart validates without
/// the schema service.
#[derive(Debug, sqlx::FromRow)]
pub struct CachedSchema {
    pub etag: Option<String>,
    pub body: String,
}

/// The stream's rows by state, for `gapless status`.
#[derive(Debug, sqlx::FromRow)]
pub struct StreamCounts {
    pub events: i64,
    pub unreleased: i64,
    pub late: i64,
    pub rejected: i64,
}

/// Rows in the store, for the run summary and the store gauges.
#[derive(Clone, Debug, Default, PartialEq, Eq, sqlx::FromRow)]
pub struct StoreCounts {
    pub events: i64,
    pub rejected: i64,
    pub dead_letters: i64,
    /// When the oldest event still kept arrived (µs); `None` when empty.
    pub oldest_received_us: Option<i64>,
}

/// How many kept rejections have one reason.
#[derive(Debug, sqlx::FromRow)]
pub struct ReasonCount {
    pub reason: String,
    pub n: i64,
}
