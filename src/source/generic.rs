//! Generic JSON over MQTT (`[source] kind = "mqtt"`).
//!
//! For event sources without VCD's envelope: identity, time and type are
//! found by JSON pointers. A source without ids still deduplicates QoS 1
//! redeliveries by hashing topic and body, at the price that two genuinely
//! distinct but byte-identical messages collapse into one.

use serde_json::Value;
use sha2::{Digest, Sha256};

use super::{Decoded, ParseError, RejectReason, parse_time_us};
use crate::event::{Event, Origin, normalise_id};

#[derive(Clone, Debug)]
pub struct GenericParser {
    pub id_pointer: Option<String>,
    pub time_pointer: Option<String>,
    pub type_pointer: Option<String>,
}

/// Identity of a message without an id: SHA-256 over topic, a NUL, and body.
pub fn content_id(topic: &str, body: &str) -> String {
    let mut h = Sha256::new();
    h.update(topic.as_bytes());
    h.update([0u8]);
    h.update(body.as_bytes());
    hex::encode(h.finalize())
}

impl GenericParser {
    pub fn parse(
        &self,
        topic: &str,
        text: &str,
        received_at_us: i64,
    ) -> Result<Decoded, ParseError> {
        let body: Value =
            serde_json::from_str(text).map_err(|e| (RejectReason::MalformedJson, e.to_string()))?;
        let id = match &self.id_pointer {
            Some(p) => match body.pointer(p) {
                Some(Value::String(s)) if !s.is_empty() => normalise_id(s),
                Some(Value::Number(n)) => n.to_string(),
                _ => return Err((RejectReason::MissingId, format!("no id at `{p}`"))),
            },
            None => content_id(topic, text),
        };
        let occurred_at_us = match &self.time_pointer {
            Some(p) => match body.pointer(p) {
                Some(v) if !v.is_null() => parse_time_us(v)?,
                _ => return Err((RejectReason::MissingTimestamp, format!("no time at `{p}`"))),
            },
            None => received_at_us,
        };
        let event_type = self
            .type_pointer
            .as_deref()
            .and_then(|p| body.pointer(p))
            .and_then(Value::as_str)
            .unwrap_or(topic)
            .to_string();
        Ok(Decoded::Event(Event {
            id,
            occurred_at_us,
            received_at_us,
            event_type,
            subject: None,
            org: None,
            origin: Origin::Mqtt,
            payload: text.to_string(),
            ext: None,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_pointers() -> GenericParser {
        GenericParser {
            id_pointer: Some("/id".into()),
            time_pointer: Some("/time".into()),
            type_pointer: Some("/type".into()),
        }
    }

    #[test]
    fn pointers_find_id_time_and_type() {
        let text = r#"{"id":"ABC","time":"2026-11-23T10:00:00Z","type":"door.open"}"#;
        let Decoded::Event(e) = with_pointers().parse("a/b", text, 7).unwrap() else {
            panic!()
        };
        assert_eq!(e.id, "abc");
        assert_eq!(e.occurred_at_us, 1_795_428_000_000_000);
        assert_eq!(e.event_type, "door.open");
        assert_eq!(e.payload, text);
    }

    #[test]
    fn missing_pointed_fields_are_rejected() {
        let p = with_pointers();
        assert_eq!(
            p.parse("t", r#"{"time":1}"#, 0).unwrap_err().0,
            RejectReason::MissingId
        );
        assert_eq!(
            p.parse("t", r#"{"id":"x"}"#, 0).unwrap_err().0,
            RejectReason::MissingTimestamp
        );
        assert_eq!(
            p.parse("t", "nope", 0).unwrap_err().0,
            RejectReason::MalformedJson
        );
    }

    #[test]
    fn without_pointers_identity_is_the_content_hash() {
        let p = GenericParser {
            id_pointer: None,
            time_pointer: None,
            type_pointer: None,
        };
        let Decoded::Event(a) = p.parse("t/1", r#"{"v":1}"#, 9).unwrap() else {
            panic!()
        };
        let Decoded::Event(b) = p.parse("t/1", r#"{"v":1}"#, 10).unwrap() else {
            panic!()
        };
        let Decoded::Event(c) = p.parse("t/2", r#"{"v":1}"#, 10).unwrap() else {
            panic!()
        };
        assert_eq!(a.id, b.id);
        assert_ne!(a.id, c.id);
        assert_eq!(a.id.len(), 64);
        assert_eq!(a.occurred_at_us, 9);
        assert_eq!(a.event_type, "t/1");
    }
}
