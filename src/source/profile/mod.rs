//! Source profiles: what a message on one kind of broker means.
//!
//! A profile is a folder here (its parser, its ids, its history client,
//! its schema handling) behind [`Profile`]; the MQTT transport, the
//! poller and the login session know only the trait. A new profile is a
//! new folder, one variant of `config::SourceKind` for its keys, and its
//! arm in [`Parser::from_config`]; `toy` (test code) is one.

pub mod generic;
pub mod scaleit;
pub mod vcd;

#[cfg(test)]
mod toy;

use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::{Parsed, RejectReason, Rejected};
use crate::config::{SourceConfig, SourceKind};
use crate::event::Event;

/// What a profile does with one message, without IO.
pub trait Profile: std::fmt::Debug + Send + Sync {
    /// Decodes one UTF-8 message received at `received_at_us`.
    fn decode(&self, topic: &str, text: &str, received_at_us: i64) -> Result<Decoded, ParseError>;

    /// The last word on a decoded event before the store (ScaleIT checks
    /// its schema here); by default it is kept as it is.
    fn admit(&self, event: Event, _topic: &str, _received_at_us: i64) -> Parsed {
        Parsed::Event(event)
    }
}

/// The configured profile, as the transport and tests call it.
#[derive(Clone, Debug)]
pub struct Parser(Arc<dyn Profile>);

impl Parser {
    pub fn new(profile: impl Profile + 'static) -> Self {
        Parser(Arc::new(profile))
    }

    /// The profile `[source]` names; `schemas` is the registry a ScaleIT
    /// source validates against (none: accepted as unvalidated).
    pub fn from_config(
        c: &SourceConfig,
        schemas: Option<Arc<scaleit::schema::SchemaRegistry>>,
    ) -> Self {
        match &c.kind {
            SourceKind::Vcd(v) => Parser::new(vcd::VcdParser::new(v.event_types.clone())),
            SourceKind::Mqtt(g) => Parser::new(generic::GenericParser::from_config(g)),
            SourceKind::Scaleit(s) => Parser::new(scaleit::ScaleitProfile {
                parser: scaleit::ScaleitParser::from_config(s),
                schemas,
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
        match self.0.decode(topic, text, received_at_us) {
            Ok(Decoded::Event(event)) => self.0.admit(event, topic, received_at_us),
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

/// Identity of a message without an id: SHA-256 over topic, a NUL, and
/// body (generic JSON without `id_pointer`, ScaleIT).
pub fn content_id(topic: &str, body: &str) -> String {
    let mut h = Sha256::new();
    h.update(topic.as_bytes());
    h.update([0u8]);
    h.update(body.as_bytes());
    hex::encode(h.finalize())
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
    use crate::source::REJECTED_KEEP_BYTES;
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
        let p = Parser::new(vcd::VcdParser::new(vec!["EVENT".into()]));
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
        let p = Parser::new(vcd::VcdParser::new(vec!["EVENT".into()]));
        let now = 1_795_428_000_000_000;
        let at = |us: i64| {
            let env = gapless_sim::events::envelope(&gapless_sim::events::audit_event(1, 0, us));
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
