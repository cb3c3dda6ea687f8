//! A fourth profile, in test code only, to show what adding one takes: a
//! type that implements [`Profile`], handed to [`Parser::new`]. Nothing
//! else in the source (transport, poller, session) or the store changes.
//!
//! The toy's wire format: `<id> <type>` in plain text; type `secret` is
//! refused by its `admit` step.

use super::{Decoded, ParseError, Parser, Profile};
use crate::event::{Event, Origin, Parsed, RejectReason, Rejected};

#[derive(Debug)]
struct Toy;

impl Profile for Toy {
    fn decode(&self, topic: &str, text: &str, received_at_us: i64) -> Result<Decoded, ParseError> {
        let (id, event_type) = text
            .split_once(' ')
            .filter(|(id, t)| !id.is_empty() && !t.is_empty())
            .ok_or((
                RejectReason::MissingId,
                format!("`{text}` is not `<id> <type>`"),
            ))?;
        Ok(Decoded::Event(Event {
            id: id.into(),
            occurred_at_us: received_at_us,
            received_at_us,
            event_type: event_type.into(),
            subject: Some(topic.into()),
            org: None,
            origin: Origin::Mqtt,
            payload: serde_json::json!({ "id": id, "type": event_type }).to_string(),
            ext: None,
            content_key: None,
            retained: false,
        }))
    }

    fn admit(&self, event: Event, topic: &str, received_at_us: i64) -> Parsed {
        match event.event_type.as_str() {
            "secret" => Parsed::Rejected(Rejected::new(
                topic,
                event.payload.as_bytes(),
                RejectReason::SchemaInvalid,
                "the toy keeps no secrets",
                received_at_us,
            )),
            _ => Parsed::Event(event),
        }
    }
}

#[tokio::test]
async fn a_toy_profile_runs_through_the_parser_and_the_store() {
    use crate::store::testing::{keep_all, running};
    use crate::store::{Ingest, Receipt, StreamSettings};

    let parser = Parser::new(Toy);
    let (acks, mut receipts) = tokio::sync::mpsc::unbounded_channel();
    let r = running(StreamSettings::arrival(), keep_all(), Some(acks)).await;
    let messages: [&[u8]; 5] = [
        b"a1 created",
        b"a1 created",
        b"nonsense",
        b"b2 secret",
        &[0xff],
    ];
    let mut rejected = Vec::new();
    for (n, body) in messages.into_iter().enumerate() {
        let item = parser.parse("toy/x", body, 1_000 + n as i64);
        if let Parsed::Rejected(x) = &item {
            rejected.push(x.reason);
        }
        let ack = Some(Receipt(n as u64));
        let message = Ingest::Message {
            item,
            ack,
            permit: None,
        };
        r.channels.ingest.send(message).await.unwrap();
    }
    assert_eq!(
        rejected,
        [
            RejectReason::MissingId,
            RejectReason::SchemaInvalid,
            RejectReason::NotUtf8
        ]
    );
    let mut acked = 0;
    while acked < messages.len() {
        acked += receipts.recv().await.unwrap().len();
    }
    let released = r.store.released_after(0, 10).await.unwrap();
    let ids: Vec<(&str, &str)> = released
        .iter()
        .map(|e| (e.id.as_str(), e.event_type.as_str()))
        .collect();
    assert_eq!(ids, [("a1", "created")], "the duplicate is stored once");
    assert_eq!(r.store.counts().await.unwrap().rejected, 3);
}
