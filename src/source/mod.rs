//! Sources turn wire messages into [`Event`]s.
//!
//! The parsing half is sans-IO ([`Parser`], [`vcd`], [`generic`]): pure
//! functions over `(topic, bytes)` that unit tests drive without sockets. The
//! IO half ([`mqtt`]) owns the broker connection and hands what it parsed to
//! the store's writer.

pub mod api;
pub mod generic;
pub mod history;
pub mod mqtt;
pub mod poll;
pub mod scaleit;
pub mod scaleit_history;
pub mod schema;
pub mod session;
pub mod vcd;

#[cfg(test)]
mod props;

use crate::config::{RetainedMode, SourceConfig, SourceKind};
use crate::event::Event;

// What a message turned into is the pipeline's data (the store keeps
// rejections too), so it lives in `event`; sources name it from here.
pub use crate::event::{Parsed, REJECTED_KEEP_BYTES, RejectReason, Rejected};

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

/// What a message delivered with the MQTT retain flag becomes: the broker
/// sends its retained copy again on every subscribe, so under `once` the
/// copy's content key (sources without ids) matches stored copies at any
/// distance in time, and sources with ids match by id as always; `skip`
/// drops it; `every` treats it as live. Kept events are marked `retained`.
pub fn on_retained(item: Parsed, mode: RetainedMode) -> Parsed {
    match (item, mode) {
        (Parsed::Event(_), RetainedMode::Skip) => Parsed::Skipped("retained".into()),
        (Parsed::Event(mut e), mode) => {
            e.retained = true;
            if let (Some(k), RetainedMode::Once) = (&mut e.content_key, mode) {
                k.window_us = i64::MAX;
            }
            Parsed::Event(e)
        }
        (other, _) => other,
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

    fn scaleit() -> Parsed {
        let c: crate::config::Config = crate::config::Config::parse(
            "[source]\nkind = \"scaleit\"\nname = \"s\"\nrequire_schema = false\n[mqtt]\nurl = \"mqtt://127.0.0.1\"\n\
             [[sink]]\nname = \"o\"\nkind = \"stdout\"\n",
        )
        .unwrap();
        Parser::from_config(&c.source).parse(
            "app/a/s/state",
            br#"{"$schema":"state.json","on":true}"#,
            1_000,
        )
    }

    #[test]
    fn a_retained_copy_is_marked_and_matched_at_any_distance_once() {
        let Parsed::Event(live) = scaleit() else {
            panic!("a ScaleIT body parses")
        };
        assert!(!live.retained);
        let Parsed::Event(once) = on_retained(scaleit(), RetainedMode::Once) else {
            panic!("kept")
        };
        assert!(once.retained);
        assert_eq!(once.content_key.as_ref().unwrap().window_us, i64::MAX);
        assert_eq!(
            once.content_key.unwrap().key,
            live.content_key.clone().unwrap().key
        );
        let Parsed::Event(every) = on_retained(scaleit(), RetainedMode::Every) else {
            panic!("kept")
        };
        assert!(every.retained);
        assert_eq!(every.content_key, live.content_key);
        assert!(matches!(
            on_retained(scaleit(), RetainedMode::Skip),
            Parsed::Skipped(k) if k == "retained"
        ));
    }
}
