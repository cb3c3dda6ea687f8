//! Sources turn wire messages into [`Event`]s.
//!
//! The parsing half is sans-IO ([`Parser`], [`vcd`], [`generic`]): pure
//! functions over `(topic, bytes)` that unit tests drive without sockets. The
//! IO half ([`mqtt`]) owns the broker connection and hands what it parsed to
//! the store's writer.

pub mod api;
pub mod generic;
pub mod mqtt;
pub mod poll;
pub mod scaleit;
pub mod scaleit_history;
pub mod schema;
pub mod session;
pub mod vcd;

#[cfg(test)]
mod props;

use crate::config::{SourceConfig, SourceKind};
use crate::event::Event;

/// Why a message was refused. Each reason is a counter and a `reason` value
/// in the `rejected` table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RejectReason {
    Oversized,
    NotUtf8,
    MalformedJson,
    BadEnvelope,
    UnsupportedPayload,
    MissingId,
    MissingTimestamp,
    BadTimestamp,
    /// ScaleIT: the topic is not `app/<app>/<stack>/<message>/...`.
    BadTopic,
    /// ScaleIT: the body names no `$schema` (and `require_schema = true`).
    MissingSchema,
    /// ScaleIT: `$schema` names a URL outside the app's `schema_base_url`
    /// and `schema_allow`, which gapless never fetches.
    UnknownSchema,
    /// ScaleIT: the body does not validate against its schema.
    SchemaInvalid,
    /// The event's time is later than now plus `source.max_clock_skew`.
    FutureTime,
}

impl RejectReason {
    /// Every reason, so that `/metrics` shows each at 0 before it happens.
    pub const ALL: [RejectReason; 13] = [
        RejectReason::Oversized,
        RejectReason::NotUtf8,
        RejectReason::MalformedJson,
        RejectReason::BadEnvelope,
        RejectReason::UnsupportedPayload,
        RejectReason::MissingId,
        RejectReason::MissingTimestamp,
        RejectReason::BadTimestamp,
        RejectReason::BadTopic,
        RejectReason::MissingSchema,
        RejectReason::UnknownSchema,
        RejectReason::SchemaInvalid,
        RejectReason::FutureTime,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::Oversized => "oversized",
            RejectReason::NotUtf8 => "not_utf8",
            RejectReason::MalformedJson => "malformed_json",
            RejectReason::BadEnvelope => "bad_envelope",
            RejectReason::UnsupportedPayload => "unsupported_payload",
            RejectReason::MissingId => "missing_id",
            RejectReason::MissingTimestamp => "missing_timestamp",
            RejectReason::BadTimestamp => "bad_timestamp",
            RejectReason::BadTopic => "bad_topic",
            RejectReason::MissingSchema => "missing_schema",
            RejectReason::UnknownSchema => "unknown_schema",
            RejectReason::SchemaInvalid => "schema_invalid",
            RejectReason::FutureTime => "future_time",
        }
    }
}

/// A refused message, kept for inspection.
#[derive(Clone, Debug, PartialEq)]
pub struct Rejected {
    pub topic: String,
    pub reason: RejectReason,
    pub detail: String,
    /// The first bytes of the message (truncated to [`REJECTED_KEEP_BYTES`]).
    pub bytes: Vec<u8>,
    /// The message's full size.
    pub size: usize,
    /// When the message was received (a history entry: its `received`).
    pub at_us: i64,
}

/// How much of a rejected message is kept in the store.
pub const REJECTED_KEEP_BYTES: usize = 4096;

impl Rejected {
    pub fn new(
        topic: &str,
        body: &[u8],
        reason: RejectReason,
        detail: impl Into<String>,
        at_us: i64,
    ) -> Self {
        Rejected {
            topic: topic.to_string(),
            reason,
            detail: detail.into(),
            bytes: body[..body.len().min(REJECTED_KEEP_BYTES)].to_vec(),
            size: body.len(),
            at_us,
        }
    }
}

/// What one message turned into.
#[derive(Debug, PartialEq)]
pub enum Parsed {
    Event(Event),
    /// A well-formed message that carries no event (e.g. a VCD `TASK`
    /// envelope): counted, not kept.
    Skipped(String),
    Rejected(Rejected),
}

impl Parsed {
    /// An event dated later than `now_us + max_skew_us` becomes a rejection
    /// (`future_time`): released in event-time order it would mark every
    /// later event `late` until real time caught up with it.
    pub fn bound_time(self, topic: &str, now_us: i64, max_skew_us: i64) -> Parsed {
        match self {
            Parsed::Event(e) if e.occurred_at_us > now_us.saturating_add(max_skew_us) => {
                Parsed::Rejected(Rejected::new(
                    topic,
                    e.payload.as_bytes(),
                    RejectReason::FutureTime,
                    format!(
                        "event time {} is more than source.max_clock_skew ({} s) ahead of this host's clock",
                        crate::event::rfc3339_us(e.occurred_at_us),
                        max_skew_us / 1_000_000
                    ),
                    now_us,
                ))
            }
            other => other,
        }
    }
}

/// The sans-IO parser for the configured source profile.
#[derive(Clone, Debug)]
pub enum Parser {
    Vcd(vcd::VcdParser),
    Generic(generic::GenericParser),
    Scaleit(scaleit::ScaleitParser),
}

impl Parser {
    pub fn from_config(c: &SourceConfig) -> Self {
        match c.kind {
            SourceKind::Vcd => Parser::Vcd(vcd::VcdParser::new(c.event_types.clone())),
            SourceKind::Mqtt => Parser::Generic(generic::GenericParser {
                id_pointer: c.id_pointer.clone(),
                time_pointer: c.time_pointer.clone(),
                type_pointer: c.type_pointer.clone(),
                dedup_window_us: c.dedup_window.0.as_micros() as i64,
            }),
            SourceKind::Scaleit => Parser::Scaleit(scaleit::ScaleitParser {
                schema_base_url: c.schema_base_url.clone(),
                require_schema: c.require_schema,
                dedup_window_us: c.dedup_window.0.as_micros() as i64,
                validating: c.schema_base_url.is_some() || c.schema_dir.is_some(),
                schema_allow: c.schema_allow.clone(),
            }),
        }
    }

    /// Parses one message received at `received_at_us`. Never panics.
    pub fn parse(&self, topic: &str, body: &[u8], received_at_us: i64) -> Parsed {
        let text = match std::str::from_utf8(body) {
            Ok(t) => t,
            Err(e) => {
                return Parsed::Rejected(Rejected::new(
                    topic,
                    body,
                    RejectReason::NotUtf8,
                    e.to_string(),
                    received_at_us,
                ));
            }
        };
        let result = match self {
            Parser::Vcd(p) => p.parse(text, received_at_us),
            Parser::Generic(p) => p.parse(topic, text, received_at_us),
            Parser::Scaleit(p) => p.parse(topic, text, received_at_us),
        };
        match result {
            Ok(Decoded::Event(event)) => Parsed::Event(event),
            Ok(Decoded::Skip(kind)) => Parsed::Skipped(kind),
            Err((reason, detail)) => {
                Parsed::Rejected(Rejected::new(topic, body, reason, detail, received_at_us))
            }
        }
    }
}

/// What a profile parser made of a well-formed message.
#[derive(Debug, PartialEq)]
pub enum Decoded {
    Event(Event),
    /// Carries no event; the string says what it was (e.g. `TASK`).
    Skip(String),
}

/// A parse failure: the reason and a human detail.
pub type ParseError = (RejectReason, String);

/// Parses an event time: RFC 3339 / ISO 8601 text (`Z` or an offset, with
/// or without a colon), or a number of milliseconds since the epoch.
pub fn parse_time_us(v: &serde_json::Value) -> Result<i64, ParseError> {
    match v {
        serde_json::Value::String(s) => chrono::DateTime::parse_from_rfc3339(s)
            .or_else(|_| chrono::DateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f%z"))
            .map(|t| t.timestamp_micros())
            .map_err(|e| (RejectReason::BadTimestamp, format!("`{s}`: {e}"))),
        serde_json::Value::Number(n) => {
            n.as_i64()
                .and_then(|ms| ms.checked_mul(1000))
                .ok_or_else(|| {
                    (
                        RejectReason::BadTimestamp,
                        format!("`{n}` is not epoch milliseconds"),
                    )
                })
        }
        other => Err((
            RejectReason::BadTimestamp,
            format!("`{other}` is not a time"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn times_parse_in_all_accepted_shapes() {
        let ms = 1_763_892_000_123_000;
        for v in [
            json!("2025-11-23T10:00:00.123Z"),
            json!("2025-11-23T10:00:00.123+00:00"),
            json!("2025-11-23T11:00:00.123+0100"),
            json!(1_763_892_000_123i64),
        ] {
            assert_eq!(parse_time_us(&v).unwrap(), ms, "{v}");
        }
        assert_eq!(
            parse_time_us(&json!("yesterday")).unwrap_err().0,
            RejectReason::BadTimestamp
        );
        assert_eq!(
            parse_time_us(&json!(true)).unwrap_err().0,
            RejectReason::BadTimestamp
        );
    }

    #[test]
    fn non_utf8_is_rejected_with_bytes_kept() {
        let p = Parser::Vcd(vcd::VcdParser::new(vec!["EVENT".into()]));
        match p.parse("publish/o/u", &[0xff, 0xfe, b'{'], 5) {
            Parsed::Rejected(r) => {
                assert_eq!(r.reason, RejectReason::NotUtf8);
                assert_eq!(r.bytes, vec![0xff, 0xfe, b'{']);
                assert_eq!(r.topic, "publish/o/u");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_event_from_the_future_is_rejected_beyond_the_skew() {
        let p = Parser::Vcd(vcd::VcdParser::new(vec!["EVENT".into()]));
        let now = 1_795_428_000_000_000;
        let at = |us: i64| {
            let env = crate::sim::events::envelope(&crate::sim::events::audit_event(1, 0, us));
            p.parse("publish/o/u", &env, now)
                .bound_time("publish/o/u", now, 300_000_000)
        };
        assert!(matches!(at(now + 299_000_000), Parsed::Event(_)));
        assert!(matches!(at(now - 86_400_000_000), Parsed::Event(_)));
        match at(now + 3_600_000_000) {
            Parsed::Rejected(r) => {
                assert_eq!(r.reason, RejectReason::FutureTime);
                assert!(r.detail.contains("max_clock_skew"), "{}", r.detail);
            }
            other => panic!("{other:?}"),
        }
        assert!(
            matches!(at(253_402_300_799_000_000), Parsed::Rejected(_)),
            "year 9999"
        );
    }

    #[test]
    fn rejected_keeps_a_bounded_prefix() {
        let big = vec![b'x'; REJECTED_KEEP_BYTES * 3];
        let r = Rejected::new("t", &big, RejectReason::Oversized, "", 0);
        assert_eq!(r.bytes.len(), REJECTED_KEEP_BYTES);
        assert_eq!(r.size, big.len());
    }
}
