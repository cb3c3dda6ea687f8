//! VCD-shaped sample traffic: audit events in the shape of
//! docs/wire-formats.md §3, wrapped in the MQTT envelope of §2, plus the noise a real broker
//! carries (other envelope types, broken JSON, events without id, oversized
//! bodies). Deterministic for a given `(salt, index)`, so a test can rebuild
//! its ground truth.

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const EVENT_TYPES: &[&str] = &[
    "com/vmware/cloud/event/vapp/create",
    "com/vmware/cloud/event/vapp/delete",
    "com/vmware/cloud/event/vm/deploy",
    "com/vmware/cloud/event/vm/poweron",
    "com/vmware/cloud/event/vm/poweroff",
    "com/vmware/cloud/event/user/login",
    "com/vmware/cloud/event/org/modify",
];

fn digest(salt: u64, i: u64, what: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(salt.to_le_bytes());
    h.update(i.to_le_bytes());
    h.update(what.as_bytes());
    h.finalize().into()
}

/// A UUID-shaped id (lower-case) derived from `(salt, i, what)`.
pub fn uuid(salt: u64, i: u64, what: &str) -> String {
    let h = hex::encode(&digest(salt, i, what)[..16]);
    format!(
        "{}-{}-4{}-8{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}

/// The normalised id of sample event `i` (what the store will key it by).
pub fn event_id(salt: u64, i: u64) -> String {
    uuid(salt, i, "event")
}

/// The organisation and user a sample event belongs to (for its topic).
pub fn org_user(salt: u64, i: u64) -> (String, String) {
    let org = i % 3;
    let user = i % 5;
    (uuid(salt, org, "org"), uuid(salt, user, "user"))
}

/// Sample audit event `i`, at `time_us`. Ids are URNs on odd indices and
/// bare on even ones (VCD's MQTT spelling is uncertain; both must collapse).
pub fn audit_event(salt: u64, i: u64, time_us: i64) -> Value {
    let id = event_id(salt, i);
    let (org, user) = org_user(salt, i);
    let event_type = EVENT_TYPES[(digest(salt, i, "type")[0] as usize) % EVENT_TYPES.len()];
    json!({
        "eventId": if i % 2 == 1 { format!("urn:vcloud:audit:{id}") } else { id },
        "eventType": event_type,
        "eventStatus": "SUCCESS",
        "timestamp": timestamp_ms(time_us),
        "operatingOrg": {"name": format!("org-{}", i % 3), "id": format!("urn:vcloud:org:{org}")},
        "user": {"name": format!("user-{}", i % 5), "id": format!("urn:vcloud:user:{user}")},
        "eventEntity": {"name": format!("vapp-{i}"), "id": format!("urn:vcloud:vapp:{}", uuid(salt, i, "entity"))},
        "taskId": null,
        "cellId": "urn:vcloud:cell:1",
        "serviceNamespace": "com.vmware.cloud",
        "description": format!("sample event {i}"),
        "external": false,
        "additionalProperties": {}
    })
}

/// The MQTT envelope around an event (`type` EVENT, payload as a JSON string).
pub fn envelope(event: &Value) -> Vec<u8> {
    json!({
        "type": "EVENT",
        "headers": {"contentType": "application/json"},
        "payload": event.to_string()
    })
    .to_string()
    .into_bytes()
}

/// The topic VCD publishes an event on: `publish/<orgId>/<userId>`.
pub fn topic(salt: u64, i: u64) -> String {
    let (org, user) = org_user(salt, i);
    format!("publish/{org}/{user}")
}

/// Kinds of messages that are not events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Noise {
    /// A well-formed `TASK` envelope: skipped, not rejected.
    Task,
    /// Not JSON at all: rejected.
    BrokenJson,
    /// An `EVENT` whose payload has no `eventId`: rejected.
    MissingId,
    /// A body larger than `max_packet_size`: rejected.
    Oversized(usize),
}

impl Noise {
    /// The message body for noise number `i`.
    pub fn body(self, i: u64) -> Vec<u8> {
        match self {
            Noise::Task => json!({
                "type": "TASK",
                "headers": {"contentType": "application/json"},
                "payload": json!({"taskId": format!("t-{i}"), "status": "running"}).to_string()
            })
            .to_string()
            .into_bytes(),
            Noise::BrokenJson => {
                format!("{{\"type\": \"EVENT\", \"payload\": broken {i}").into_bytes()
            }
            Noise::MissingId => {
                envelope(&json!({"eventType": "x", "timestamp": "2026-01-01T00:00:00Z"}))
            }
            Noise::Oversized(n) => {
                let mut body = br#"{"type":"EVENT","payload":""#.to_vec();
                body.resize(n, b'x');
                body.extend_from_slice(br#""}"#);
                body
            }
        }
    }

    /// True for noise that ends in the `rejected` table (not merely skipped).
    pub fn is_rejected(self) -> bool {
        !matches!(self, Noise::Task)
    }
}

/// An audit event's `timestamp`: RFC 3339, UTC, millisecond precision
/// (VCD's own), from µs since the epoch.
fn timestamp_ms(us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(us - us.rem_euclid(1000))
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
