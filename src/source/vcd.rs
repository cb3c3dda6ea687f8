//! VMware Cloud Director messages: the envelope and the audit event inside
//! it (reference/vcd.md §2–§3).
//!
//! Tolerant by design: the envelope carries many message types (only the
//! configured event types are ingested, the rest are skipped), the payload is
//! usually a JSON string but may be an object, and events come in two field
//! sets (`eventId`/`eventType`/`operatingOrg` and the legacy
//! `type`/`org`/`entity`). Only what the pipeline needs is normalised; the
//! event object itself is kept verbatim.

use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;

use super::{Decoded, ParseError, Parsed, RejectReason, Rejected, parse_time_us};
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
        let event: Value = serde_json::from_str(&event_text)
            .map_err(|e| (RejectReason::MalformedJson, format!("payload: {e}")))?;
        if !event.is_object() {
            return Err((
                RejectReason::UnsupportedPayload,
                "payload is not a JSON object".to_string(),
            ));
        }
        let fields = EventFields::read(&event)?;
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

fn first_str<'a>(event: &'a Value, keys: &[&str]) -> Option<&'a str> {
    keys.iter()
        .find_map(|k| event.get(*k).and_then(Value::as_str))
        .filter(|s| !s.is_empty())
}

impl EventFields {
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
    let value = serde_json::from_str::<serde_json::Value>(text)
        .map_err(|e| (RejectReason::MalformedJson, e.to_string()));
    let parsed = value
        .as_ref()
        .map_err(Clone::clone)
        .and_then(EventFields::read);
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
        }),
        Err((reason, detail)) => {
            tracing::warn!(reason = reason.as_str(), %detail, "rejected audit trail event");
            let at = value
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
