//! Gap markers: records in the stream that say "events may be missing here,
//! and gapless cannot get them back" (or, later, "that span is complete").
//!
//! Sans-IO. Whoever detects a gap (the MQTT source, the poller, the release
//! step) describes it as a [`Gap`]; the writer turns it into a marker
//! [`Event`] with [`Gap::marker`] and keeps it, so a marker has its own `seq`
//! and reaches every sink in order with the events, through the same path.

use crate::event::{Event, Origin, rfc3339_us};

/// Why events may be missing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// A source without history lost its MQTT session.
    NoHistory,
    /// The history no longer holds the span the poller had to read.
    HistoryExpired,
    /// `stream.max_hold` released events before the poller verified them.
    Unverified,
}

impl Reason {
    pub const ALL: [Reason; 3] = [
        Reason::NoHistory,
        Reason::HistoryExpired,
        Reason::Unverified,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::NoHistory => "no_history",
            Reason::HistoryExpired => "history_expired",
            Reason::Unverified => "unverified",
        }
    }
}

/// The CloudEvent type of a marker that opens a gap.
pub const GAP_TYPE: &str = "io.gapless.gap";
/// The CloudEvent type of the marker that closes an `unverified` gap.
pub const VERIFIED_TYPE: &str = "io.gapless.verified";

/// A span of event time (µs) in which events may be missing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gap {
    pub reason: Reason,
    pub from_us: i64,
    pub to_us: i64,
    /// `unverified`: how many events were released unverified.
    pub events: Option<u64>,
}

impl Gap {
    /// The marker record for this gap (`closes` = the `io.gapless.verified`
    /// marker of an `unverified` gap). Its time is just before `to`, so the
    /// release rule puts it after every event kept from the span and before
    /// the first event after it. Its id is derived from the gap, so a gap
    /// reported twice (a retried commit) is stored once.
    pub fn marker(&self, source: &str, closes: bool, now_us: i64) -> Event {
        let kind = if closes { VERIFIED_TYPE } else { GAP_TYPE };
        let mut data = serde_json::json!({
            "source": source,
            "from": rfc3339_us(self.from_us),
            "to": rfc3339_us(self.to_us),
            "reason": self.reason.as_str(),
        });
        if let Some(n) = self.events {
            data["events"] = n.into();
        }
        Event {
            id: self.id(closes),
            occurred_at_us: (self.to_us - 1).max(self.from_us),
            received_at_us: now_us,
            event_type: kind.to_string(),
            subject: None,
            org: None,
            origin: Origin::Gapless,
            payload: data.to_string(),
            ext: None,
            content_key: None,
            retained: false,
        }
    }

    /// The marker's id: an `unverified` gap keeps its id while it grows
    /// (its end is not part of it); its closing marker's id has the end.
    pub fn id(&self, closes: bool) -> String {
        let kind = if closes { VERIFIED_TYPE } else { GAP_TYPE };
        let to = if closes { self.to_us } else { 0 };
        format!("{kind}:{}:{}:{to}", self.reason.as_str(), self.from_us)
    }

    pub fn seconds(&self) -> f64 {
        (self.to_us - self.from_us).max(0) as f64 / 1e6
    }
}

/// Whether a source without history has an unbroken record: tracks the last
/// message and, after a connect that lost the session, the gap that the
/// next message closes (`to` = that message).
#[derive(Debug, Default)]
pub struct Continuity {
    last_us: Option<i64>,
    open_from: Option<i64>,
}

impl Continuity {
    /// Starts from the last message a previous run stored, if any: a first
    /// connect without a session then marks the time gapless was away.
    pub fn resume(last_stored_us: Option<i64>) -> Self {
        Continuity {
            last_us: last_stored_us,
            open_from: None,
        }
    }

    /// A CONNACK: without the session, whatever was published since the
    /// last message is gone.
    pub fn connected(&mut self, session_present: bool) {
        if !session_present && self.open_from.is_none() {
            self.open_from = self.last_us;
        }
    }

    /// A message at `at_us`: returns the gap it closes, if one is open.
    pub fn message(&mut self, at_us: i64) -> Option<Gap> {
        self.last_us = Some(at_us);
        self.open_from.take().map(|from_us| Gap {
            reason: Reason::NoHistory,
            from_us,
            to_us: at_us,
            events: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lost_session_opens_a_gap_the_next_message_closes() {
        let mut c = Continuity::resume(None);
        c.connected(false);
        assert_eq!(c.message(10), None, "nothing before the first connect");
        assert_eq!(c.message(20), None);
        c.connected(true);
        assert_eq!(c.message(30), None, "the broker kept the session");
        c.connected(false);
        c.connected(false);
        let gap = c.message(90).expect("a gap");
        assert_eq!(
            (gap.reason, gap.from_us, gap.to_us),
            (Reason::NoHistory, 30, 90)
        );
        assert_eq!(c.message(95), None, "closed once");
    }

    #[test]
    fn a_restart_without_session_marks_the_time_away() {
        let mut c = Continuity::resume(Some(1_000));
        c.connected(false);
        let gap = c.message(5_000).expect("a gap");
        assert_eq!((gap.from_us, gap.to_us), (1_000, 5_000));
    }

    #[test]
    fn a_marker_sits_just_before_its_end_and_says_what_it_covers() {
        let gap = Gap {
            reason: Reason::Unverified,
            from_us: 1_000_000,
            to_us: 3_000_000,
            events: Some(7),
        };
        let m = gap.marker("vcd-lab", false, 9);
        assert_eq!(m.event_type, GAP_TYPE);
        assert_eq!(m.occurred_at_us, 2_999_999);
        assert_eq!(m.origin, Origin::Gapless);
        let data: serde_json::Value = serde_json::from_str(&m.payload).unwrap();
        assert_eq!(data["reason"], "unverified");
        assert_eq!(data["events"], 7);
        assert_eq!(data["from"], "1970-01-01T00:00:01.000Z");
        assert_eq!(data["to"], "1970-01-01T00:00:03.000Z");
        let closing = gap.marker("vcd-lab", true, 9);
        assert_eq!(closing.event_type, VERIFIED_TYPE);
        assert_ne!(closing.id, m.id);
        assert_eq!(gap.seconds(), 2.0);
    }
}
