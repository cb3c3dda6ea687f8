//! The Kafka target: one record per event from an idempotent producer
//! (`enable.idempotence`, `acks = all`), the cursor moved only over the
//! prefix whose delivery reports came back.
//!
//! Records follow the CloudEvents Kafka binding's binary mode: the value is
//! the event's `data`, its attributes are `ce_*` headers, plus
//! `gapless-seq`. The key is the event id unless `key` says otherwise.
//! librdkafka retries inside one producer session without duplicates; a
//! restart of gapless may re-send the events whose cursor commit was lost,
//! with the same key and `gapless-seq`.
//!
//! With a `transactional_id` each batch is one transaction, and the cursor
//! moves only after its commit. A successor with the same id fences this
//! producer: its next commit fails, and the sink stops.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};

use super::window::{Ack, AckWindow};
use super::{Published, SinkTargetError};
use crate::config::{KafkaKey, Secret};
use crate::event::StoredEvent;

/// How a Kafka sink reaches its cluster.
pub struct KafkaSpec<'a> {
    pub brokers: &'a str,
    pub topic: &'a str,
    pub key: KafkaKey,
    /// SASL user and password (with `properties` naming the mechanism).
    pub sasl: Option<(&'a str, Secret)>,
    pub ca_file: Option<&'a std::path::Path>,
    /// The delivery timeout of each record (`message.timeout.ms`).
    pub timeout: Duration,
    pub max_in_flight: usize,
    pub include_markers: bool,
    pub properties: &'a BTreeMap<String, String>,
    pub transactional_id: Option<&'a str>,
}

/// A producer for one topic.
pub struct KafkaTarget {
    producer: FutureProducer,
    topic: String,
    key: KafkaKey,
    max_in_flight: usize,
    include_markers: bool,
    transactional: bool,
    timeout: Duration,
}

impl KafkaTarget {
    /// Creates the producer and reads the topic's metadata, so a wrong
    /// address or a missing topic is reported at once, not as timeouts.
    pub async fn connect(spec: KafkaSpec<'_>) -> Result<Self, SinkTargetError> {
        let connect_error = |reason: String| SinkTargetError::Connect {
            url: spec.brokers.to_string(),
            reason,
        };
        let mut config = ClientConfig::new();
        // A missing topic is reported, not created with the broker's
        // defaults (its partition count decides the order consumers see).
        config.set("allow.auto.create.topics", "false");
        for (k, v) in spec.properties {
            config.set(k, v);
        }
        config
            .set("bootstrap.servers", spec.brokers)
            .set("client.id", "gapless")
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("message.timeout.ms", spec.timeout.as_millis().to_string());
        if let Some(ca) = spec.ca_file {
            config.set("ssl.ca.location", ca.display().to_string());
        }
        if let Some(id) = spec.transactional_id {
            config.set("transactional.id", id);
        }
        if let Some((user, password)) = &spec.sasl {
            config
                .set("sasl.username", *user)
                .set("sasl.password", password.expose());
        }
        let producer: FutureProducer = config.create().map_err(|e| connect_error(e.to_string()))?;
        let probe = producer.clone();
        let topic = spec.topic.to_string();
        let timeout = spec.timeout;
        let metadata = tokio::task::spawn_blocking(move || {
            probe
                .client()
                .fetch_metadata(Some(&topic), timeout)
                .map(|m| {
                    m.topics()
                        .first()
                        .map(|t| (t.partitions().len(), t.error()))
                })
        })
        .await
        .expect("metadata task panicked")
        .map_err(|e| connect_error(e.to_string()))?;
        match metadata {
            Some((n, None)) if n > 0 => {}
            other => {
                return Err(connect_error(format!(
                    "topic `{}` is not there ({other:?}); create it, e.g. \
                     `kafka-topics.sh --create --topic {} --partitions 1`",
                    spec.topic, spec.topic
                )));
            }
        }
        let target = KafkaTarget {
            producer,
            topic: spec.topic.to_string(),
            key: spec.key,
            max_in_flight: spec.max_in_flight,
            include_markers: spec.include_markers,
            transactional: spec.transactional_id.is_some(),
            timeout: spec.timeout,
        };
        if target.transactional {
            // Fences any earlier producer with the same id.
            target.txn(|p, t| p.init_transactions(t)).await?;
        }
        Ok(target)
    }

    /// One transactional step, on the blocking pool (librdkafka blocks).
    async fn txn(
        &self,
        step: fn(&FutureProducer, Duration) -> KafkaResult<()>,
    ) -> Result<(), SinkTargetError> {
        let (producer, timeout) = (self.producer.clone(), self.timeout);
        tokio::task::spawn_blocking(move || step(&producer, timeout))
            .await
            .expect("transaction task panicked")
            .map_err(|e| txn_error(&self.topic, e))
    }

    /// Sends `events` in order, up to `max_in_flight` awaiting their
    /// delivery report, and stops at the first failure.
    pub async fn publish(&self, events: &[StoredEvent], uri: &str) -> Published {
        if self.transactional
            && let Err(e) = self.txn(|p, _| p.begin_transaction()).await
        {
            return Published::failed(e);
        }
        let mut window = AckWindow::new(self.max_in_flight);
        let mut error = None;
        for event in events {
            let delivery = if event.is_marker() && !self.include_markers {
                None
            } else {
                match self.send(event, uri) {
                    Ok(d) => Some(delivered(self.topic.clone(), d)),
                    Err(e) => {
                        error = Some(e);
                        break;
                    }
                }
            };
            if let Err(e) = window.push(event.seq, delivery).await {
                error = Some(e);
                break;
            }
        }
        if error.is_none() {
            error = window.finish().await.err();
        }
        if !self.transactional {
            return Published::of_window(window, error);
        }
        // All or nothing: the cursor moves only over a committed batch.
        let ended = match error {
            None => self.txn(|p, t| p.commit_transaction(t)).await,
            Some(e) => match self.txn(|p, t| p.abort_transaction(t)).await {
                Err(fenced @ SinkTargetError::Fenced { .. }) => Err(fenced),
                _ => Err(e),
            },
        };
        match ended {
            Ok(()) => Published::of_window(window, None),
            Err(e) => Published::failed(e),
        }
    }

    fn send(&self, event: &StoredEvent, uri: &str) -> Result<DeliveryFuture, SinkTargetError> {
        let seq = event.seq.to_string();
        let attributes = event.ce_attributes(uri);
        let mut headers = OwnedHeaders::new_with_capacity(attributes.len() + 2)
            .insert(Header {
                key: "content-type",
                value: Some("application/json"),
            })
            .insert(Header {
                key: "gapless-seq",
                value: Some(&seq),
            });
        for (name, value) in &attributes {
            headers = headers.insert(Header {
                key: &format!("ce_{name}"),
                value: Some(value),
            });
        }
        let key = record_key(self.key, event);
        let record = FutureRecord::to(&self.topic)
            .key(&key)
            .payload(&event.payload)
            .headers(headers);
        self.producer
            .send_result(record)
            .map_err(|(e, _)| SinkTargetError::Publish {
                to: self.topic.clone(),
                reason: e.to_string(),
            })
    }
}

/// The record key: `key = "subject"` falls back to the id for events
/// without a subject, so no record goes unkeyed.
fn record_key(key: KafkaKey, event: &StoredEvent) -> String {
    match key {
        KafkaKey::Id => event.id.clone(),
        KafkaKey::Subject => event.subject.clone().unwrap_or_else(|| event.id.clone()),
        KafkaKey::Type => event.ce_type(),
    }
}

/// A fenced producer stops; any other transaction error makes it anew.
fn txn_error(topic: &str, e: KafkaError) -> SinkTargetError {
    let fenced = matches!(
        e.rdkafka_error_code(),
        Some(RDKafkaErrorCode::Fenced | RDKafkaErrorCode::ProducerFenced)
    );
    let (to, reason) = (topic.to_string(), e.to_string());
    match fenced {
        true => SinkTargetError::Fenced { to, reason },
        false => SinkTargetError::Transaction { to, reason },
    }
}

/// The delivery report of one record.
async fn delivered(topic: String, d: DeliveryFuture) -> Result<Ack, SinkTargetError> {
    let reason = match d.await {
        Ok(Ok(_)) => return Ok(Ack::Stored),
        Ok(Err((e, _))) => e.to_string(),
        Err(_) => "the producer was dropped before the delivery report".to_string(),
    };
    Err(SinkTargetError::Publish { to: topic, reason })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_keyed_by_id_subject_or_type() {
        let mut e = StoredEvent {
            subject: Some("urn:vcloud:vm:1".into()),
            ..StoredEvent::sample("abc", "com/vmware/cloud/event/vm/create", "mqtt")
        };
        assert_eq!(record_key(KafkaKey::Id, &e), "abc");
        assert_eq!(record_key(KafkaKey::Subject, &e), "urn:vcloud:vm:1");
        assert_eq!(
            record_key(KafkaKey::Type, &e),
            "com.vmware.cloud.event.vm.create"
        );
        e.subject = None;
        assert_eq!(record_key(KafkaKey::Subject, &e), "abc");
    }
}
