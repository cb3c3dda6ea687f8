//! VMware Cloud Director messages: the envelope and the audit event inside
//! it (docs/wire-formats.md §2–§3).
//!
//! Tolerant by design: the envelope carries many message types (only the
//! configured event types are ingested, the rest are skipped), the payload is
//! usually a JSON string but may be an object, and events come in two field
//! sets (`eventId`/`eventType`/`operatingOrg` and the legacy
//! `type`/`org`/`entity`). Only what the pipeline needs is normalised; the
//! event object itself is kept verbatim.

pub mod api;

use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;

use super::{Decoded, ParseError, Parsed, Profile, RejectReason, Rejected, parse_time_us};
use crate::event::{Event, Origin, normalise_id};

/// Parses VCD envelopes; knows which envelope types carry events.
#[derive(Clone, Debug)]
pub struct VcdParser {
    event_types: Vec<String>,
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    headers: Option<Headers>,
    #[serde(borrow)]
    payload: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Headers {
    #[serde(rename = "contentType")]
    content_type: Option<String>,
}

impl Profile for VcdParser {
    fn decode(&self, _topic: &str, text: &str, received_at_us: i64) -> Result<Decoded, ParseError> {
        self.parse(text, received_at_us)
    }
}

impl VcdParser {
    pub fn new(event_types: Vec<String>) -> Self {
        VcdParser { event_types }
    }

    /// Parses one envelope (already known to be UTF-8).
    pub fn parse(&self, text: &str, received_at_us: i64) -> Result<Decoded, ParseError> {
        let env: Envelope = serde_json::from_str(text)
            .map_err(|e| (RejectReason::MalformedJson, format!("envelope: {e}")))?;
        let kind = env.kind.ok_or_else(|| {
            (
                RejectReason::BadEnvelope,
                "envelope has no `type`".to_string(),
            )
        })?;
        if !self.event_types.iter().any(|t| t == &kind) {
            return Ok(Decoded::Skip(kind));
        }
        if let Some(ct) = env.headers.and_then(|h| h.content_type)
            && !ct.to_ascii_lowercase().contains("json")
        {
            return Err((
                RejectReason::UnsupportedPayload,
                format!("{kind} payload has contentType `{ct}`; only JSON is understood"),
            ));
        }
        let raw = env.payload.ok_or_else(|| {
            (
                RejectReason::BadEnvelope,
                format!("{kind} envelope has no `payload`"),
            )
        })?;
        // The payload is a JSON document encoded as a string (parse it a
        // second time); tolerate an inline object too.
        let event_text: String = match raw.get().trim_start().as_bytes().first() {
            Some(b'"') => serde_json::from_str::<String>(raw.get())
                .map_err(|e| (RejectReason::MalformedJson, format!("payload string: {e}")))?,
            Some(b'{') => raw.get().to_string(),
            _ => {
                return Err((
                    RejectReason::UnsupportedPayload,
                    "payload is neither a JSON string nor an object".to_string(),
                ));
            }
        };
        let fields = match EventFields::read_borrowed(&event_text) {
            Some(fields) => fields,
            None => {
                let event: Value = serde_json::from_str(&event_text)
                    .map_err(|e| (RejectReason::MalformedJson, format!("payload: {e}")))?;
                if !event.is_object() {
                    return Err((
                        RejectReason::UnsupportedPayload,
                        "payload is not a JSON object".to_string(),
                    ));
                }
                EventFields::read(&event)?
            }
        };
        Ok(Decoded::Event(Event {
            id: fields.id,
            occurred_at_us: fields.occurred_at_us,
            received_at_us,
            event_type: fields.event_type,
            subject: fields.subject,
            org: fields.org,
            origin: Origin::Mqtt,
            payload: event_text,
            ext: None,
            content_key: None,
            retained: false,
        }))
    }
}

/// The normalised fields of an audit event, read from either field set.
/// Shared with the REST path, which returns the same `AuditTrailEvent`.
#[derive(Debug, PartialEq)]
pub struct EventFields {
    pub id: String,
    pub occurred_at_us: i64,
    pub event_type: String,
    pub subject: Option<String>,
    pub org: Option<String>,
}

/// A reference to an entity: `{"id": ..., "name": ...}` or a bare id string.
fn entity_id(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Object(o) => o.get("id").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

/// The fields [`EventFields`] reads, borrowed from the event's text: most
/// events are read through this without building a JSON tree for the whole
/// event (that tree was the largest cost of parsing a VCD message).
#[derive(Deserialize)]
struct Borrowed<'a> {
    #[serde(rename = "eventId", borrow)]
    event_id: Option<&'a RawValue>,
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    #[serde(borrow)]
    timestamp: Option<&'a RawValue>,
    #[serde(rename = "eventType", borrow)]
    event_type: Option<&'a RawValue>,
    #[serde(rename = "type", borrow)]
    kind: Option<&'a RawValue>,
    #[serde(rename = "eventEntity", borrow)]
    event_entity: Option<&'a RawValue>,
    #[serde(borrow)]
    entity: Option<&'a RawValue>,
    #[serde(rename = "operatingOrg", borrow)]
    operating_org: Option<&'a RawValue>,
    #[serde(borrow)]
    org: Option<&'a RawValue>,
}

/// A JSON string's value; `None` for any other JSON value.
fn raw_str(v: Option<&RawValue>) -> Option<String> {
    let v = v?.get();
    v.starts_with('"')
        .then(|| serde_json::from_str(v).ok())
        .flatten()
}

/// [`first_str`] on borrowed values: the first that is a string, if not empty.
fn first_raw_str(values: &[Option<&RawValue>]) -> Option<String> {
    values
        .iter()
        .find_map(|v| raw_str(*v))
        .filter(|s| !s.is_empty())
}

fn first_str<'a>(event: &'a Value, keys: &[&str]) -> Option<&'a str> {
    keys.iter()
        .find_map(|k| event.get(*k).and_then(Value::as_str))
        .filter(|s| !s.is_empty())
}

impl EventFields {
    /// Reads the fields straight from an event's JSON text, for most
    /// events: `None` unless every field reads cleanly. Anything else (bad
    /// JSON, not an object, a duplicate key, odd shapes) goes through
    /// [`EventFields::read`] on the parsed tree, which stays the one rule
    /// and decides the rejection reason.
    pub fn read_borrowed(text: &str) -> Option<Self> {
        let b: Borrowed = serde_json::from_str(text).ok()?;
        let id = first_raw_str(&[b.event_id, b.id])?;
        let time: Value = serde_json::from_str(b.timestamp?.get()).ok()?;
        let occurred_at_us = parse_time_us(&time).ok()?;
        let event_type =
            first_raw_str(&[b.event_type, b.kind]).unwrap_or_else(|| "unknown".to_string());
        let subject = Self::entity(b.event_entity)?.or(Self::entity(b.entity)?);
        let org = Self::entity(b.operating_org)?.or(Self::entity(b.org)?);
        Some(EventFields {
            id: normalise_id(&id),
            occurred_at_us,
            event_type,
            subject,
            org,
        })
    }

    /// [`entity_id`] on a borrowed value; `None` when it cannot tell.
    fn entity(v: Option<&RawValue>) -> Option<Option<String>> {
        #[derive(Deserialize)]
        struct Ref<'a> {
            #[serde(borrow)]
            id: Option<&'a RawValue>,
        }
        let Some(raw) = v else {
            return Some(None);
        };
        match raw.get().as_bytes().first() {
            Some(b'"') => Some(raw_str(Some(raw)).filter(|s| !s.is_empty())),
            Some(b'{') => Some(raw_str(serde_json::from_str::<Ref>(raw.get()).ok()?.id)),
            _ => Some(None),
        }
    }

    pub fn read(event: &Value) -> Result<Self, ParseError> {
        let id = first_str(event, &["eventId", "id"])
            .map(normalise_id)
            .ok_or_else(|| {
                (
                    RejectReason::MissingId,
                    "event has no `eventId`".to_string(),
                )
            })?;
        let time = event
            .get("timestamp")
            .filter(|v| !v.is_null())
            .ok_or_else(|| {
                (
                    RejectReason::MissingTimestamp,
                    format!("event {id} has no `timestamp`"),
                )
            })?;
        let occurred_at_us = parse_time_us(time)?;
        let event_type = first_str(event, &["eventType", "type"])
            .unwrap_or("unknown")
            .to_string();
        let subject =
            entity_id(event.get("eventEntity")).or_else(|| entity_id(event.get("entity")));
        let org = entity_id(event.get("operatingOrg")).or_else(|| entity_id(event.get("org")));
        Ok(EventFields {
            id,
            occurred_at_us,
            event_type,
            subject,
            org,
        })
    }
}

/// One audit-trail value (REST) as a poll event, or a rejection kept
/// like MQTT's. A rejection is dated by the value's own `timestamp` when it
/// has a readable one, so the poller can tell an overlap re-read from a new
/// bad value (and records it once).
pub fn audit_event(text: &str, now: i64) -> Parsed {
    let parsed = EventFields::read_borrowed(text).map(Ok).unwrap_or_else(|| {
        serde_json::from_str::<Value>(text)
            .map_err(|e| (RejectReason::MalformedJson, e.to_string()))
            .and_then(|v| EventFields::read(&v))
    });
    match parsed {
        Ok(f) => Parsed::Event(Event {
            id: f.id,
            occurred_at_us: f.occurred_at_us,
            received_at_us: now,
            event_type: f.event_type,
            subject: f.subject,
            org: f.org,
            origin: Origin::Poll,
            payload: text.to_string(),
            ext: None,
            content_key: None,
            retained: false,
        }),
        Err((reason, detail)) => {
            tracing::warn!(reason = reason.as_str(), %detail, "rejected audit trail event");
            let at = serde_json::from_str::<Value>(text)
                .ok()
                .and_then(|v| parse_time_us(v.get("timestamp")?).ok())
                .unwrap_or(now);
            Parsed::Rejected(Rejected::new(
                "rest:auditTrail",
                text.as_bytes(),
                reason,
                detail,
                at,
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parser() -> VcdParser {
        VcdParser::new(vec!["EVENT".into(), "EXTERNAL_EVENT".into()])
    }

    fn envelope(kind: &str, event: &Value) -> String {
        json!({"type": kind, "headers": {"contentType": "application/json"}, "payload": event.to_string()})
            .to_string()
    }

    fn modern() -> Value {
        json!({
            "eventId": "urn:vcloud:audit:0B6C8A7E-1111-4222-8333-944445555666",
            "eventType": "com/vmware/cloud/event/vapp/create",
            "eventStatus": "SUCCESS",
            "timestamp": "2026-11-23T10:00:00.123Z",
            "operatingOrg": {"name": "acme", "id": "urn:vcloud:org:1"},
            "user": {"name": "ann", "id": "urn:vcloud:user:2"},
            "eventEntity": {"name": "web", "id": "urn:vcloud:vapp:3"},
            "description": "created"
        })
    }

    #[test]
    fn modern_event_is_normalised_and_kept_verbatim() {
        let ev = modern();
        let text = envelope("EVENT", &ev);
        let Decoded::Event(e) = parser().parse(&text, 42).unwrap() else {
            panic!()
        };
        assert_eq!(e.id, "0b6c8a7e-1111-4222-8333-944445555666");
        assert_eq!(e.event_type, "com/vmware/cloud/event/vapp/create");
        assert_eq!(e.occurred_at_us, 1_795_428_000_123_000);
        assert_eq!(e.received_at_us, 42);
        assert_eq!(e.org.as_deref(), Some("urn:vcloud:org:1"));
        assert_eq!(e.subject.as_deref(), Some("urn:vcloud:vapp:3"));
        assert_eq!(e.payload, ev.to_string());
        assert_eq!(e.origin, Origin::Mqtt);
    }

    /// The borrowed fast path may only decline, never disagree with
    /// [`EventFields::read`]; and it does answer for ordinary events.
    #[test]
    fn the_fast_path_agrees_with_the_tree_or_declines() {
        let shapes = [
            modern().to_string(),
            r#"{"eventId":"","id":"x-1","timestamp":1795428000123}"#.into(),
            r#"{"eventId":5,"id":"x-2","timestamp":"2026-11-23T10:00:00Z","type":"a/b"}"#.into(),
            r#"{"eventId":"x-3","eventType":"","type":"t","timestamp":"2026-11-23T10:00:00Z"}"#
                .into(),
            r#"{"eventId":"x-4","timestamp":null}"#.into(),
            r#"{"eventId":"x-5","timestamp":"yesterday"}"#.into(),
            r#"{"eventId":"x-6","timestamp":1,"eventEntity":{"id":7},"entity":"e-1"}"#.into(),
            r#"{"eventId":"x-7","timestamp":1,"eventEntity":"","entity":{"id":""}}"#.into(),
            r#"{"eventId":"x-8","timestamp":1,"operatingOrg":[1],"org":{"name":"n"}}"#.into(),
            r#"{"eventId":"x-9","eventId":"x-10","timestamp":1}"#.into(),
            r#"{"eventId":"x-\u0041\n","timestamp":1,"org":{"id":"o\"1","id":"o2"}}"#.into(),
            r#"{"timestamp":1}"#.into(),
        ];
        let mut answered = 0;
        for text in &shapes {
            let tree: Value = serde_json::from_str(text).unwrap();
            if let Some(fast) = EventFields::read_borrowed(text) {
                answered += 1;
                assert_eq!(Ok(fast), EventFields::read(&tree), "{text}");
            }
        }
        assert!(
            answered >= 6,
            "the fast path answered only {answered} shapes"
        );
    }

    #[test]
    fn legacy_field_set_is_accepted() {
        let ev = json!({
            "eventId": "0b6c8a7e-1111-4222-8333-944445555666",
            "type": "com/vmware/vcloud/event/vm/deploy",
            "operationSuccess": true,
            "org": "urn:vcloud:org:1",
            "user": "urn:vcloud:user:2",
            "entity": "urn:vcloud:vm:9",
            "timestamp": "2026-11-23T10:00:00.123+00:00"
        });
        let Decoded::Event(e) = parser().parse(&envelope("EXTERNAL_EVENT", &ev), 0).unwrap() else {
            panic!()
        };
        assert_eq!(e.id, "0b6c8a7e-1111-4222-8333-944445555666");
        assert_eq!(e.event_type, "com/vmware/vcloud/event/vm/deploy");
        assert_eq!(e.subject.as_deref(), Some("urn:vcloud:vm:9"));
        assert_eq!(e.org.as_deref(), Some("urn:vcloud:org:1"));
    }

    #[test]
    fn urn_and_bare_ids_collapse() {
        let mut a = modern();
        a["eventId"] = json!("0b6c8a7e-1111-4222-8333-944445555666");
        let ids: Vec<String> = [modern(), a]
            .iter()
            .map(
                |ev| match parser().parse(&envelope("EVENT", ev), 0).unwrap() {
                    Decoded::Event(e) => e.id,
                    other => panic!("{other:?}"),
                },
            )
            .collect();
        assert_eq!(ids[0], ids[1]);
    }

    #[test]
    fn inline_object_payload_is_tolerated() {
        let text = json!({"type": "EVENT", "payload": modern()}).to_string();
        assert!(matches!(
            parser().parse(&text, 0).unwrap(),
            Decoded::Event(_)
        ));
    }

    #[test]
    fn other_types_are_skipped_never_failed() {
        for kind in ["TASK", "API_REQUEST", "SOMETHING_FROM_THE_FUTURE"] {
            let text = json!({"type": kind, "payload": "<not json at all>"}).to_string();
            assert_eq!(
                parser().parse(&text, 0).unwrap(),
                Decoded::Skip(kind.to_string())
            );
        }
    }

    fn reason(text: &str) -> RejectReason {
        parser().parse(text, 0).unwrap_err().0
    }

    #[test]
    fn bad_messages_are_rejected_with_a_reason() {
        assert_eq!(reason("{not json"), RejectReason::MalformedJson);
        assert_eq!(reason(r#"{"payload": "{}"}"#), RejectReason::BadEnvelope);
        assert_eq!(reason(r#"{"type": "EVENT"}"#), RejectReason::BadEnvelope);
        assert_eq!(
            reason(r#"{"type": "EVENT", "payload": "{broken"}"#),
            RejectReason::MalformedJson
        );
        assert_eq!(
            reason(r#"{"type": "EVENT", "payload": "[1,2]"}"#),
            RejectReason::UnsupportedPayload
        );
        assert_eq!(
            reason(r#"{"type": "EVENT", "payload": 12}"#),
            RejectReason::UnsupportedPayload
        );
        let xml = json!({"type": "EVENT", "headers": {"contentType": "application/xml"}, "payload": "<e/>"});
        assert_eq!(reason(&xml.to_string()), RejectReason::UnsupportedPayload);
        let mut no_id = modern();
        no_id.as_object_mut().unwrap().remove("eventId");
        assert_eq!(reason(&envelope("EVENT", &no_id)), RejectReason::MissingId);
        let mut no_ts = modern();
        no_ts.as_object_mut().unwrap().remove("timestamp");
        assert_eq!(
            reason(&envelope("EVENT", &no_ts)),
            RejectReason::MissingTimestamp
        );
        let mut bad_ts = modern();
        bad_ts["timestamp"] = json!("last tuesday");
        assert_eq!(
            reason(&envelope("EVENT", &bad_ts)),
            RejectReason::BadTimestamp
        );
    }

    #[test]
    fn audit_values_become_poll_events_or_rejections() {
        let ok = r#"{"eventId":"urn:vcloud:audit:ABC","eventType":"t","timestamp":"2026-11-23T10:00:00.000Z"}"#;
        match audit_event(ok, 1) {
            Parsed::Event(e) => {
                assert_eq!(
                    (e.id.as_str(), e.origin),
                    ("ABC", Origin::Poll),
                    "not a UUID: case kept"
                );
                assert_eq!(e.payload, ok);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            audit_event(r#"{"eventType":"t"}"#, 1),
            Parsed::Rejected(_)
        ));
        // Dated by its own timestamp when readable, else by now.
        let at = |text: &str| match audit_event(text, 7) {
            Parsed::Rejected(r) => r.at_us,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            at(r#"{"eventType":"t","timestamp":"2026-11-23T10:00:00.000Z"}"#),
            1_795_428_000_000_000
        );
        assert_eq!(at(r#"{"eventType":"t","timestamp":"soon"}"#), 7);
        assert_eq!(at("{"), 7);
    }
}

#[cfg(test)]
/// The simulator's sample traffic parses to the ground truth it promises.
mod sim_traffic {
    use crate::source::{Parsed, Parser};
    use gapless_sim::events::{Noise, audit_event, envelope, event_id, topic};

    #[test]
    fn samples_parse_to_their_ground_truth() {
        let parser = Parser::new(super::VcdParser::new(vec!["EVENT".into()]));
        for i in 0..4 {
            let ev = audit_event(7, i, 1_795_428_000_123_456);
            match parser.parse(&topic(7, i), &envelope(&ev), 0) {
                Parsed::Event(e) => {
                    assert_eq!(e.id, event_id(7, i));
                    assert_eq!(e.occurred_at_us, 1_795_428_000_123_000);
                }
                other => panic!("{other:?}"),
            }
        }
        assert_ne!(event_id(7, 1), event_id(8, 1));
    }

    #[test]
    fn noise_is_classified_as_promised() {
        let parser = Parser::new(super::VcdParser::new(vec!["EVENT".into()]));
        for noise in [Noise::Task, Noise::BrokenJson, Noise::MissingId] {
            let parsed = parser.parse("publish/a/b", &noise.body(1), 0);
            assert_eq!(
                matches!(parsed, Parsed::Rejected(_)),
                noise.is_rejected(),
                "{noise:?}"
            );
        }
        assert_eq!(Noise::Oversized(4096).body(0).len(), 4098);
    }
}
