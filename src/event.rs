//! The event as the pipeline sees it, and its one output rendering.
//!
//! Sources produce [`Event`]s; the store keeps them; sinks read
//! [`StoredEvent`]s back and render them with [`StoredEvent::to_cloudevent`],
//! the single renderer every sink uses, so no two sinks can disagree on the
//! output format. What a message turned into ([`Parsed`]: an event, a skip
//! or a [`Rejected`] message) is here too: sources make it, the store keeps it.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use serde_json::value::RawValue;

/// Which path brought an event in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    Mqtt,
    Poll,
    /// A gap marker gapless itself wrote ([`crate::gap`]).
    Gapless,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Mqtt => "mqtt",
            Origin::Poll => "poll",
            Origin::Gapless => "gapless",
        }
    }
}

/// One source event, normalised just enough for the pipeline; the original
/// payload is kept verbatim.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// Normalised identity: the same event seen twice collapses to one row.
    pub id: String,
    pub occurred_at_us: i64,
    pub received_at_us: i64,
    pub event_type: String,
    /// The entity the event is about, when known (CloudEvent `subject`).
    pub subject: Option<String>,
    pub org: Option<String>,
    pub origin: Origin,
    /// The original event object as JSON text.
    pub payload: String,
    /// What only some profiles have (ScaleIT); boxed so the others stay small.
    pub ext: Option<Box<EventExt>>,
    /// Identity by content, for sources without ids (ScaleIT, MQTT without
    /// `id_pointer`): the id then includes the receive time, and this key
    /// decides what is a redelivery.
    pub content_key: Option<ContentKey>,
    /// Delivered as the broker's retained copy (`mqtt.retained`).
    pub retained: bool,
}

/// Hash of topic and body: the same key within `window_us` of a stored
/// event (either side) is a redelivery of it, not a new event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContentKey {
    pub key: String,
    pub window_us: i64,
}

/// Per-message attributes of sources without a single origin (ScaleIT):
/// the CloudEvent `source` and `dataschema`, and the schema validation state.
#[derive(Clone, Debug, PartialEq)]
pub struct EventExt {
    /// CloudEvent `source` for this event (`app/<app>/<stack>`).
    pub source: String,
    pub app: String,
    /// The body's `$schema` reference, as written.
    pub schema_ref: Option<String>,
    /// The resolved schema location (CloudEvent `dataschema`).
    pub dataschema: Option<String>,
    pub validation: Validation,
}

/// Where an event stands with its JSON Schema.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Validation {
    /// Checked against its schema.
    Valid,
    /// Released without a check (no schema configured, or the schema service
    /// was down under `on_schema_unavailable = "ingest"`).
    Unvalidated,
    /// Stored, held back from the stream until its schema can be fetched.
    Pending,
}

impl Validation {
    pub fn as_str(self) -> &'static str {
        match self {
            Validation::Valid => "valid",
            Validation::Unvalidated => "unvalidated",
            Validation::Pending => "pending",
        }
    }
}

/// Turns a VCD event id into its identity: any `urn:vcloud:<kind>:` prefix
/// removed, so MQTT's and REST's spellings of one event are the same key;
/// a UUID (VCD's ids are) lower-cased, since its case carries no meaning.
/// Any other id keeps its case: ids that differ by case stay distinct.
pub fn normalise_id(raw: &str) -> String {
    let trimmed = raw.trim();
    let id = match trimmed.get(..11) {
        Some(p) if p.eq_ignore_ascii_case("urn:vcloud:") => trimmed[11..]
            .split_once(':')
            .map(|(_kind, id)| id)
            .filter(|id| !id.is_empty())
            .unwrap_or(trimmed),
        _ => trimmed,
    };
    if is_uuid(id) {
        id.to_ascii_lowercase()
    } else {
        id.to_string()
    }
}

/// `8-4-4-4-12` hex digits.
fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

/// Current time in microseconds since the Unix epoch (see [`crate::clock`]).
pub fn now_us() -> i64 {
    crate::clock::now_us()
}

/// Microseconds since the epoch as RFC 3339 UTC (microsecond precision kept
/// only when needed).
pub fn rfc3339_us(us: i64) -> String {
    let dt = DateTime::<Utc>::from_timestamp_micros(us).unwrap_or_default();
    let format = if us % 1000 != 0 {
        SecondsFormat::Micros
    } else {
        SecondsFormat::Millis
    };
    dt.to_rfc3339_opts(format, true)
}

/// An event as read back from the store, released with its stream `seq`.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct StoredEvent {
    pub seq: i64,
    pub id: String,
    pub origin: String,
    pub occurred_at_us: i64,
    #[sqlx(rename = "type")]
    pub event_type: String,
    pub subject: Option<String>,
    pub payload: String,
    pub late: bool,
    /// Per-event CloudEvent `source` (ScaleIT); `None` = the configured one.
    #[sqlx(default)]
    pub ce_source: Option<String>,
    #[sqlx(default)]
    pub dataschema: Option<String>,
    /// `valid` / `unvalidated` for validated profiles, `None` otherwise.
    #[sqlx(default)]
    pub validation: Option<String>,
    #[sqlx(default)]
    pub retained: bool,
}

#[derive(Serialize)]
struct CloudEvent<'a> {
    specversion: &'static str,
    id: &'a str,
    source: &'a str,
    #[serde(rename = "type")]
    event_type: String,
    time: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    subject: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dataschema: Option<&'a str>,
    datacontenttype: &'static str,
    data: &'a RawValue,
    seq: i64,
    origin: &'a str,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    late: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    validation: Option<&'a str>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    retained: bool,
}

/// The payload column holds JSON the source parsed; if it were ever not JSON
/// (a bug or a hand-edited store) the event is still emitted, as a string.
fn payload_raw(payload: &str) -> Box<RawValue> {
    RawValue::from_string(payload.to_string()).unwrap_or_else(|_| {
        RawValue::from_string(serde_json::to_string(payload).expect("string serialises"))
            .expect("a JSON string is valid JSON")
    })
}

impl StoredEvent {
    /// A gap marker rather than a source event (`include_markers`).
    pub fn is_marker(&self) -> bool {
        self.origin == Origin::Gapless.as_str()
    }

    /// The CloudEvent `type`: the stored type with `/` made `.` (VCD's
    /// types are topic-like paths).
    pub fn ce_type(&self) -> String {
        self.event_type.replace('/', ".")
    }

    /// The CloudEvent's attributes other than `data` and
    /// `datacontenttype`, as text: the `ce_*` headers of the binary content
    /// mode (Kafka), where the record's value is `data` alone.
    pub fn ce_attributes(&self, source: &str) -> Vec<(&'static str, String)> {
        let mut a = vec![
            ("specversion", "1.0".to_string()),
            ("id", self.id.clone()),
            (
                "source",
                self.ce_source.as_deref().unwrap_or(source).to_string(),
            ),
            ("type", self.ce_type()),
            ("time", rfc3339_us(self.occurred_at_us)),
        ];
        let optional = [
            ("subject", self.subject.clone()),
            ("dataschema", self.dataschema.clone()),
            ("seq", Some(self.seq.to_string())),
            ("origin", Some(self.origin.clone())),
            ("late", self.late.then(|| "true".to_string())),
            ("validation", self.validation.clone()),
            ("retained", self.retained.then(|| "true".to_string())),
        ];
        a.extend(optional.into_iter().filter_map(|(k, v)| Some((k, v?))));
        a
    }

    /// The CloudEvents 1.0 JSON rendering (one line, no trailing newline).
    pub fn to_cloudevent(&self, source: &str) -> String {
        let data = payload_raw(&self.payload);
        let ce = CloudEvent {
            specversion: "1.0",
            id: &self.id,
            source: self.ce_source.as_deref().unwrap_or(source),
            event_type: self.ce_type(),
            time: rfc3339_us(self.occurred_at_us),
            subject: self.subject.as_deref(),
            dataschema: self.dataschema.as_deref(),
            datacontenttype: "application/json",
            data: &data,
            seq: self.seq,
            origin: &self.origin,
            late: self.late,
            validation: self.validation.as_deref(),
            retained: self.retained,
        };
        serde_json::to_string(&ce).expect("CloudEvent serialises")
    }

    /// A short human line: seq, time, type, id (and markers).
    pub fn to_compact(&self) -> String {
        format!(
            "#{:<6} {} {:<5} {} {}{}",
            self.seq,
            rfc3339_us(self.occurred_at_us),
            self.origin,
            self.event_type.replace('/', "."),
            self.id,
            if self.late { " late" } else { "" }
        )
    }
}

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
                        rfc3339_us(e.occurred_at_us),
                        max_skew_us / 1_000_000
                    ),
                    now_us,
                ))
            }
            other => other,
        }
    }
}

/// A released event for the sinks' unit tests.
#[cfg(test)]
impl StoredEvent {
    pub(crate) fn sample(id: &str, event_type: &str, origin: &str) -> StoredEvent {
        StoredEvent {
            seq: 1,
            id: id.into(),
            origin: origin.into(),
            occurred_at_us: 0,
            event_type: event_type.into(),
            subject: None,
            payload: "{}".into(),
            late: false,
            ce_source: None,
            dataschema: None,
            validation: None,
            retained: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_normalise_across_spellings() {
        let uuid = "6a0b5b7e-2f5c-4c0e-9d57-0f6f1c3c9a11";
        assert_eq!(normalise_id(&format!("urn:vcloud:audit:{uuid}")), uuid);
        assert_eq!(
            normalise_id(&format!("URN:VCLOUD:AUDIT:{}", uuid.to_uppercase())),
            uuid
        );
        assert_eq!(normalise_id(&uuid.to_uppercase()), uuid);
        assert_eq!(normalise_id(&format!(" {uuid} ")), uuid);
        assert_eq!(normalise_id("urn:vcloud:audit:"), "urn:vcloud:audit:");
        assert_eq!(normalise_id("urn:other:x:y"), "urn:other:x:y");
        assert_eq!(
            normalise_id("urn:vcloud:task:Job-A"),
            "Job-A",
            "not a UUID: case kept"
        );
        assert_ne!(normalise_id("Job-A"), normalise_id("job-a"));
    }

    #[test]
    fn cloudevent_has_the_design_shape() {
        let e = StoredEvent {
            seq: 7,
            id: "abc".into(),
            origin: "mqtt".into(),
            occurred_at_us: 1_763_892_000_123_000,
            event_type: "com/vmware/cloud/event/vapp/create".into(),
            subject: Some("urn:vcloud:vapp:1".into()),
            payload: r#"{"eventId":"abc","n":[1,2]}"#.into(),
            late: false,
            ce_source: None,
            dataschema: None,
            validation: None,
            retained: false,
        };
        let v: serde_json::Value = serde_json::from_str(&e.to_cloudevent("vcd-lab")).unwrap();
        assert_eq!(v["specversion"], "1.0");
        assert_eq!(v["type"], "com.vmware.cloud.event.vapp.create");
        assert_eq!(v["time"], "2025-11-23T10:00:00.123Z");
        assert_eq!(v["source"], "vcd-lab");
        assert_eq!(v["subject"], "urn:vcloud:vapp:1");
        assert_eq!(v["data"]["n"][1], 2);
        assert_eq!(v["seq"], 7);
        assert_eq!(v["origin"], "mqtt");
        assert!(v.get("late").is_none());
        assert!(v.get("retained").is_none());
        let late = StoredEvent {
            late: true,
            retained: true,
            subject: None,
            ..e.clone()
        };
        let v: serde_json::Value = serde_json::from_str(&late.to_cloudevent("s")).unwrap();
        assert_eq!(v["late"], true);
        assert_eq!(v["retained"], true);
        assert!(v.get("subject").is_none());
        for ev in [&e, &late] {
            binary_attributes_are_the_structured_ones(ev);
        }
    }

    /// Kafka's `ce_*` headers carry what the JSON form carries, as text.
    fn binary_attributes_are_the_structured_ones(e: &StoredEvent) {
        let v: serde_json::Value = serde_json::from_str(&e.to_cloudevent("src")).unwrap();
        let mut json_keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        json_keys.retain(|k| !matches!(*k, "data" | "datacontenttype"));
        json_keys.sort_unstable();
        let attrs = e.ce_attributes("src");
        let mut keys: Vec<&str> = attrs.iter().map(|(k, _)| *k).collect();
        keys.sort_unstable();
        assert_eq!(keys, json_keys);
        for (k, text) in &attrs {
            let expected = match &v[*k] {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            assert_eq!(text, &expected, "{k}");
        }
    }

    #[test]
    fn non_json_payload_still_renders() {
        let e = StoredEvent {
            seq: 1,
            id: "x".into(),
            origin: "mqtt".into(),
            occurred_at_us: 0,
            event_type: "t".into(),
            subject: None,
            payload: "<xml/>".into(),
            late: false,
            ce_source: None,
            dataschema: None,
            validation: None,
            retained: false,
        };
        let v: serde_json::Value = serde_json::from_str(&e.to_cloudevent("s")).unwrap();
        assert_eq!(v["data"], "<xml/>");
    }
}
