//! Generic JSON over MQTT (`[source] kind = "mqtt"`).
//!
//! For event sources without VCD's envelope: identity, time and type are
//! found by JSON pointers. An id keeps its case (ids differing only by case
//! are different events). A source without ids deduplicates QoS 1
//! redeliveries by a hash of topic and body within `dedup_window`, as
//! ScaleIT does: the same bytes again after the window are a new event.

use super::{Decoded, ParseError, Profile, RejectReason, content_id, parse_time_us};
use crate::config::GenericSource;
use crate::event::{ContentKey, Event, Origin};
use serde_json::Value;

#[derive(Clone, Debug)]
pub struct GenericParser {
    pub id_pointer: Option<String>,
    pub time_pointer: Option<String>,
    pub type_pointer: Option<String>,
    /// Without `id_pointer`: how long the same topic and body count as one event.
    pub dedup_window_us: i64,
}

impl Profile for GenericParser {
    fn decode(&self, topic: &str, text: &str, received_at_us: i64) -> Result<Decoded, ParseError> {
        self.parse(topic, text, received_at_us)
    }
}

impl GenericParser {
    pub fn from_config(c: &GenericSource) -> Self {
        GenericParser {
            id_pointer: c.id_pointer.clone(),
            time_pointer: c.time_pointer.clone(),
            type_pointer: c.type_pointer.clone(),
            dedup_window_us: c.dedup_window.0.as_micros() as i64,
        }
    }

    pub fn parse(
        &self,
        topic: &str,
        text: &str,
        received_at_us: i64,
    ) -> Result<Decoded, ParseError> {
        let body: Value =
            serde_json::from_str(text).map_err(|e| (RejectReason::MalformedJson, e.to_string()))?;
        let (id, content_key) = match &self.id_pointer {
            Some(p) => match body.pointer(p) {
                Some(Value::String(s)) if !s.trim().is_empty() => (s.trim().to_string(), None),
                Some(Value::Number(n)) => (n.to_string(), None),
                _ => return Err((RejectReason::MissingId, format!("no id at `{p}`"))),
            },
            None => {
                let key = content_id(topic, text);
                (
                    format!("{}-{received_at_us}", &key[..32]),
                    Some(ContentKey {
                        key,
                        window_us: self.dedup_window_us,
                    }),
                )
            }
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
            content_key,
            retained: false,
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
            dedup_window_us: 600_000_000,
        }
    }

    #[test]
    fn pointers_find_id_time_and_type() {
        let text = r#"{"id":"ABC","time":"2026-11-23T10:00:00Z","type":"door.open"}"#;
        let Decoded::Event(e) = with_pointers().parse("a/b", text, 7).unwrap() else {
            panic!()
        };
        assert_eq!(e.id, "ABC", "an id keeps its case");
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
    fn without_pointers_identity_is_the_content_hash_within_the_window() {
        let p = GenericParser {
            id_pointer: None,
            time_pointer: None,
            type_pointer: None,
            dedup_window_us: 600_000_000,
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
        assert_ne!(a.id, b.id, "the receive time is part of the id");
        assert_eq!(a.content_key, b.content_key);
        assert_ne!(a.content_key, c.content_key);
        assert_eq!(a.content_key.as_ref().unwrap().window_us, 600_000_000);
        assert_eq!(a.occurred_at_us, 9);
        assert_eq!(a.event_type, "t/1");
    }
}
