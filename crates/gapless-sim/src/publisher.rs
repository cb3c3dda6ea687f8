//! A publisher that knows when the broker has taken every message.
//!
//! The demo and the tests publish through it so "published" means acked by
//! the broker (PUBACK at QoS 1, the default; PUBCOMP at QoS 2), not merely
//! queued in a client.

use std::time::Duration;

use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Outgoing, Packet, QoS};

/// The largest packet the MQTT protocol can express (remaining length).
const MQTT_MAX_PACKET: usize = 268_435_455;

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("publisher: {0}")]
    Client(#[from] rumqttc::ClientError),
    #[error("publisher connection: {0}")]
    Connection(#[from] rumqttc::ConnectionError),
    #[error("publisher: only {acked} of {sent} messages acknowledged in time")]
    Timeout { acked: usize, sent: usize },
}

/// A connected publisher client.
pub struct Publisher {
    client: AsyncClient,
    eventloop: EventLoop,
    qos: QoS,
    retain: bool,
}

impl Publisher {
    /// Connects to `host:port` over TCP.
    pub async fn connect(host: &str, port: u16, client_id: &str) -> Result<Self, PublishError> {
        Self::connect_as(host, port, client_id, None).await
    }

    /// Connects with MQTT credentials `(username, password)`.
    pub async fn connect_as(
        host: &str,
        port: u16,
        client_id: &str,
        login: Option<(&str, &str)>,
    ) -> Result<Self, PublishError> {
        let mut o = MqttOptions::new(client_id, host, port);
        if let Some((user, password)) = login {
            o.set_credentials(user, password);
        }
        // The largest packet MQTT can express: the publisher never limits.
        o.set_max_packet_size(MQTT_MAX_PACKET, MQTT_MAX_PACKET);
        o.set_keep_alive(Duration::from_secs(30));
        o.set_inflight(100);
        let (client, mut eventloop) = AsyncClient::new(o, 256);
        loop {
            if let Event::Incoming(Packet::ConnAck(_)) = eventloop.poll().await? {
                break;
            }
        }
        Ok(Publisher {
            client,
            eventloop,
            qos: QoS::AtLeastOnce,
            retain: false,
        })
    }

    /// Publishes at `qos` from now on (QoS 0 is not acknowledged, so it is
    /// not offered: "published" would mean nothing).
    pub fn with_qos(mut self, qos: QoS) -> Self {
        assert!(qos != QoS::AtMostOnce, "a QoS 0 publish is never acked");
        if qos == QoS::ExactlyOnce {
            // mosquitto disconnects a client that opens more unfinished
            // QoS 2 exchanges than its max_inflight_messages (20).
            self.eventloop.mqtt_options.set_inflight(20);
        }
        self.qos = qos;
        self
    }

    /// Publishes with the retain flag from now on.
    pub fn retained(mut self) -> Self {
        self.retain = true;
        self
    }

    /// Publishes every `(topic, body)`, optionally paced at `rate`
    /// messages per second, and returns once the broker acknowledged all.
    pub async fn publish_all<I>(
        &mut self,
        messages: I,
        rate: Option<f64>,
    ) -> Result<usize, PublishError>
    where
        I: IntoIterator<Item = (String, Vec<u8>)>,
    {
        let mut sent = 0usize;
        let mut acked = 0usize;
        let start = tokio::time::Instant::now();
        for (topic, body) in messages {
            if let Some(rate) = rate {
                let at = start + Duration::from_secs_f64(sent as f64 / rate);
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep_until(at) => break,
                        n = self.turn() => acked += n?,
                    }
                }
            }
            // Queue without blocking; when the request channel is full, turn
            // the event loop so publishes go out and acks come back.
            let (mut topic, mut body) = (topic, body);
            loop {
                match self.client.try_publish(topic, self.qos, self.retain, body) {
                    Ok(()) => break,
                    Err(rumqttc::ClientError::TryRequest(rumqttc::Request::Publish(p))) => {
                        (topic, body) = (p.topic, p.payload.to_vec());
                        acked += self.turn().await?;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            sent += 1;
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while acked < sent {
            match tokio::time::timeout_at(deadline, self.turn()).await {
                Ok(n) => acked += n?,
                Err(_) => return Err(PublishError::Timeout { acked, sent }),
            }
        }
        Ok(sent)
    }

    /// Polls the event loop once; returns 1 for a PUBACK or PUBCOMP, else 0.
    async fn turn(&mut self) -> Result<usize, PublishError> {
        Ok(match self.eventloop.poll().await? {
            Event::Incoming(Packet::PubAck(_) | Packet::PubComp(_)) => 1,
            Event::Outgoing(Outgoing::Publish(_)) | Event::Incoming(_) | Event::Outgoing(_) => 0,
        })
    }

    /// Disconnects cleanly.
    pub async fn disconnect(mut self) {
        let _ = self.client.disconnect().await;
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while !matches!(
                self.eventloop.poll().await,
                Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_)
            ) {}
        })
        .await;
    }
}
