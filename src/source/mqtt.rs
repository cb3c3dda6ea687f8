//! The MQTT source: the IO shell around the parsers.
//!
//! It owns the rumqttc event loop and does only three things there: parse
//! (cheap, sans-IO), hand the result to the writer through a bounded channel
//! (when it is full this task stops reading: backpressure reaches the
//! broker), and keep the session alive (re-subscribe on every clean
//! CONNACK, reconnect with jittered backoff, fresh credentials per connect).
//! Acks are sent by a separate task, only for messages the writer has
//! committed, so the event loop never waits on SQLite.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, MqttOptions, Packet, Publish, QoS,
    SubscribeFilter, SubscribeReasonCode, TlsConfiguration, Transport,
};
use tokio::sync::{Notify, Semaphore, mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::{Parsed, Parser, RejectReason, Rejected};
use crate::config::{MQTT_MAX_PACKET, MqttConfig, MqttQos, Scheme, Secret, WS_MAX_FRAME};
use crate::event::now_us;
use crate::gap::Continuity;
use crate::metrics::Counters;
use crate::store::{Ingest, Receipt};
use crate::stream::{Live, QosDowngrade};
use crate::telemetry::{InternalEvent, MqttConnected, MqttConnectionFailed, MqttSubscribed};

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    Tls(#[from] crate::net::tls::TlsError),
    #[error("mqtt.headers: {0}")]
    Header(#[from] crate::net::NetError),
    /// The task that sends acks and subscriptions ended while reading went on.
    #[error("the MQTT ack/subscribe task ended: {0}")]
    AckerEnded(String),
}

/// What it takes to acknowledge one message once it is durable. It travels
/// through the store's writer packed into an opaque [`Receipt`], so the
/// store knows nothing of MQTT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ack {
    pub pkid: u16,
    pub qos: QoS,
    /// Which connection delivered it (see [`Acker`]).
    pub generation: u64,
}

impl Ack {
    /// Packet id in the low 16 bits, QoS in the next 2, generation above
    /// (2^46 reconnects are out of reach).
    fn receipt(self) -> Receipt {
        Receipt(self.generation << 18 | (self.qos as u64) << 16 | u64::from(self.pkid))
    }

    fn from_receipt(r: Receipt) -> Self {
        Ack {
            pkid: r.0 as u16,
            qos: match (r.0 >> 16) & 3 {
                0 => QoS::AtMostOnce,
                1 => QoS::AtLeastOnce,
                _ => QoS::ExactlyOnce,
            },
            generation: r.0 >> 18,
        }
    }
}

/// The credentials for the next connect.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct MqttAuth {
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// Sent as `Authorization: Bearer …` on the WebSocket upgrade (VCD).
    pub bearer: Option<Secret>,
}

impl std::fmt::Debug for MqttAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttAuth")
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("bearer", &self.bearer.as_ref().map(|_| "***"))
            .finish()
    }
}

/// Where the source gets credentials from, read afresh before every connect.
///
/// A fixed configuration is one case; a token refresher (VCD login, see the
/// gap poller) is the other: it publishes new credentials on the watch
/// channel and listens on [`Credentials::refused`] to renew early when the
/// broker turned the current ones down.
#[derive(Clone, Debug)]
pub struct Credentials {
    current: watch::Receiver<MqttAuth>,
    refused: Arc<Notify>,
}

impl Credentials {
    /// Credentials that never change.
    pub fn fixed(auth: MqttAuth) -> Self {
        let (_tx, rx) = watch::channel(auth);
        Credentials {
            current: rx,
            refused: Arc::new(Notify::new()),
        }
    }

    /// Credentials published by a refresher.
    pub fn from_watch(current: watch::Receiver<MqttAuth>, refused: Arc<Notify>) -> Self {
        Credentials { current, refused }
    }

    pub fn current(&self) -> MqttAuth {
        self.current.borrow().clone()
    }

    /// Notified when the broker refused the credentials.
    pub fn refused(&self) -> Arc<Notify> {
        self.refused.clone()
    }
}

/// The client library's QoS for the configured one.
fn qos(q: MqttQos) -> QoS {
    match q {
        MqttQos::AtMostOnce => QoS::AtMostOnce,
        MqttQos::AtLeastOnce => QoS::AtLeastOnce,
        MqttQos::ExactlyOnce => QoS::ExactlyOnce,
    }
}

/// The topics of a SUBACK granted below `asked`, with what each got
/// (refusals are counted apart, not here).
fn downgrades<'t>(
    topics: &'t [String],
    codes: &[SubscribeReasonCode],
    asked: QoS,
) -> Vec<(&'t str, QoS)> {
    topics
        .iter()
        .zip(codes)
        .filter_map(|(t, c)| match c {
            SubscribeReasonCode::Success(granted) if (*granted as u8) < asked as u8 => {
                Some((t.as_str(), *granted))
            }
            _ => None,
        })
        .collect()
}

/// Works around rumqttc forgetting, on every reconnect, which QoS 2
/// messages it sent PUBREC for (bytebeamio/rumqtt#664). A broker resuming
/// the session re-sends PUBREL for those; rumqttc then reports an
/// "unsolicited" PUBREL and drops the connection, and the broker re-sends
/// it on the next one: a reconnect loop that also follows a crash between
/// PUBREC and PUBCOMP. Marking every packet id as awaiting PUBREL makes
/// rumqttc answer any PUBREL with PUBCOMP, as the MQTT 5 rules and
/// mosquitto_sub do. The marks are set by feeding the state machine empty
/// QoS 2 publishes (with manual acks it sends nothing for them) whose
/// events are then removed; only a subscriber may do this, since it never
/// publishes at QoS 2 itself.
///
/// Done in chunks so the event queue, which keeps its capacity, never holds
/// 65,535 events at once (that alone raised the drain's peak RSS by 14 MB).
fn expect_any_pubrel(state: &mut rumqttc::MqttState) {
    let queued = state.events.len();
    for pkid in 1..=u16::MAX {
        let mut p = Publish::new("", QoS::ExactlyOnce, Vec::<u8>::new());
        p.pkid = pkid;
        let _ = state.handle_incoming_packet(Packet::Publish(p));
        if pkid % 256 == 0 {
            state.events.truncate(queued);
        }
    }
    state.events.truncate(queued);
}

/// The total payload bytes that may wait for the writer at once.
const BYTE_BUDGET: usize = 32 << 20;

/// Everything the source task needs.
pub struct MqttSource {
    pub config: MqttConfig,
    pub parser: Parser,
    pub credentials: Credentials,
    pub counters: Arc<Counters>,
    pub ingest: mpsc::Sender<Ingest>,
    /// Published on every subscribe and loss, for the live watermark.
    pub live: watch::Sender<Live>,
    /// `source.max_clock_skew` in µs: later event times are rejected.
    pub max_skew_us: i64,
    /// The CloudEvent source name, for the status records.
    pub name: String,
    /// When this run started (µs), for the status records.
    pub started_at_us: i64,
    /// For a source without history: its record of unbroken delivery, so
    /// a lost session becomes a `no_history` gap marker. `None` when a
    /// poller recovers what a break loses.
    pub continuity: Option<Continuity>,
}

impl MqttSource {
    /// The options for a connect with `auth`, with the last will when
    /// `mqtt.status_topic` is set.
    fn options(&self, auth: &MqttAuth) -> Result<MqttOptions, SourceError> {
        let mut o = options(&self.config, auth)?;
        if let Some(topic) = &self.config.status_topic {
            o.set_last_will(rumqttc::LastWill::new(
                topic,
                self.status("offline"),
                QoS::AtLeastOnce,
                true,
            ));
        }
        Ok(o)
    }

    /// The record gapless keeps on `mqtt.status_topic`: whether it runs,
    /// which build, for which source, since when. Retained, so a subscriber
    /// arriving later still learns the state.
    fn status(&self, state: &str) -> Vec<u8> {
        serde_json::json!({
            "state": state,
            "source": self.name,
            "version": env!("CARGO_PKG_VERSION"),
            "started_at": crate::event::rfc3339_us(self.started_at_us),
        })
        .to_string()
        .into_bytes()
    }
}

/// Builds the rumqttc options for a connect with `auth`.
fn options(config: &MqttConfig, auth: &MqttAuth) -> Result<MqttOptions, SourceError> {
    let broker = config.broker();
    let host = match broker.scheme {
        Scheme::Ws | Scheme::Wss => broker.url.clone(),
        Scheme::Mqtt | Scheme::Mqtts => broker.host.clone(),
    };
    let mut o = MqttOptions::new(config.client_id(), host, broker.port);
    let tls = || -> Result<TlsConfiguration, SourceError> {
        Ok(TlsConfiguration::Rustls(crate::net::tls::client_config(
            config.ca_file.as_deref(),
        )?))
    };
    o.set_transport(match broker.scheme {
        Scheme::Mqtt => Transport::Tcp,
        Scheme::Mqtts => Transport::Tls(tls()?),
        Scheme::Ws => Transport::Ws,
        Scheme::Wss => Transport::Wss(tls()?),
    });
    o.set_keep_alive(config.keep_alive.0.max(Duration::from_secs(1)));
    o.set_clean_session(config.clean_session);
    o.set_manual_acks(true);
    // gapless enforces `max_packet_size` itself (reject + ack). The transport
    // accepts anything the protocol can carry: a packet over the transport
    // limit would drop the connection, and a persistent session would then
    // redeliver it forever. Over WebSocket the frame limit is the ceiling
    // (and `max_packet_size` is validated against it).
    let transport_max = match broker.scheme {
        Scheme::Ws | Scheme::Wss => WS_MAX_FRAME,
        Scheme::Mqtt | Scheme::Mqtts => MQTT_MAX_PACKET,
    };
    o.set_max_packet_size(transport_max, 64 * 1024);
    o.set_request_channel_capacity(config.queue + 64);
    if let Some(user) = &auth.username {
        let password = auth.password.as_ref().map(|p| p.expose().to_string());
        o.set_credentials(user.clone(), password.unwrap_or_default());
    }
    if matches!(broker.scheme, Scheme::Ws | Scheme::Wss) {
        let bearer: Vec<(String, Secret)> = auth
            .bearer
            .iter()
            .map(|t| {
                (
                    "Authorization".into(),
                    Secret::new(format!("Bearer {}", t.expose())),
                )
            })
            .collect();
        let headers = crate::net::headers(&config.headers, &bearer)?;
        o.set_request_modifier(move |mut req: http::Request<()>| {
            req.headers_mut().extend(headers.clone());
            async move { req }
        });
    }
    Ok(o)
}

/// What the event loop asks the acker task to send for it.
enum Outbound {
    Subscribe(Vec<SubscribeFilter>),
    /// A retained record on `mqtt.status_topic`.
    Status(Vec<u8>),
}

/// Sends the acks the writer releases, and the subscriptions and status
/// records the event loop asks for. Runs apart from the event loop so a full request channel
/// never stalls reading (awaiting it in the loop that drains it would
/// deadlock); the source watches this task and fails if it ends. With a clean session an ack
/// from an earlier connection is dropped: its packet id may name a
/// different message on the new one (the broker forgot the old one anyway).
struct Acker {
    client: AsyncClient,
    generation: Arc<AtomicU64>,
    clean_session: bool,
    status_topic: Option<String>,
}

impl Acker {
    async fn run(
        self,
        mut rx: mpsc::UnboundedReceiver<Vec<Receipt>>,
        mut outbound: mpsc::UnboundedReceiver<Outbound>,
    ) {
        loop {
            let acks = tokio::select! {
                biased;
                Some(out) = outbound.recv() => {
                    let sent = match out {
                        Outbound::Subscribe(filters) => self.client.subscribe_many(filters).await,
                        Outbound::Status(record) => match &self.status_topic {
                            Some(topic) => self.client.publish(topic, QoS::AtLeastOnce, true, record).await,
                            None => Ok(()),
                        },
                    };
                    if let Err(e) = sent {
                        tracing::error!(error = %e, "could not queue a subscription or status record");
                        return;
                    }
                    continue;
                }
                acks = rx.recv() => acks,
            };
            let Some(acks) = acks else { return };
            for ack in acks.into_iter().map(Ack::from_receipt) {
                if self.clean_session && ack.generation != self.generation.load(Ordering::Acquire) {
                    continue;
                }
                let mut p = Publish::new("", ack.qos, Vec::<u8>::new());
                p.pkid = ack.pkid;
                if self.client.ack(&p).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// What the source does on its connection, fed one event-loop result at a time.
struct Session<'a> {
    source: &'a MqttSource,
    client: AsyncClient,
    generation: Arc<AtomicU64>,
    budget: Arc<Semaphore>,
    max_size: usize,
    outbound: mpsc::UnboundedSender<Outbound>,
    /// Topics whose QoS downgrade was logged (once per topic per run).
    warned: std::sync::Mutex<std::collections::HashSet<String>>,
    /// `None` for a source with history: no lock on its messages' path.
    continuity: Option<std::sync::Mutex<Continuity>>,
}

impl MqttSource {
    /// Runs until `shutdown`; then stops reading, lets the writer finish,
    /// sends the last acks and disconnects. Returns once the broker has seen
    /// the DISCONNECT (or after a short grace period).
    pub async fn run(
        mut self,
        acks: mpsc::UnboundedReceiver<Vec<Receipt>>,
        shutdown: CancellationToken,
    ) -> Result<(), SourceError> {
        let continuity = self.continuity.take().map(std::sync::Mutex::new);
        let auth = self.credentials.current();
        let opts = self.options(&auth)?;
        let (client, mut eventloop) = AsyncClient::new(opts, self.config.queue + 64);
        let generation = Arc::new(AtomicU64::new(0));
        let (outbound, outbound_rx) = mpsc::unbounded_channel();
        let mut acker = tokio::spawn(
            Acker {
                client: client.clone(),
                generation: generation.clone(),
                clean_session: self.config.clean_session,
                status_topic: self.config.status_topic.clone(),
            }
            .run(acks, outbound_rx),
        );
        let session = Session {
            source: &self,
            client: client.clone(),
            generation,
            budget: Arc::new(Semaphore::new(BYTE_BUDGET)),
            max_size: self.config.max_packet_size.0,
            outbound,
            warned: Default::default(),
            continuity,
        };
        tracing::info!(url = %crate::net::redact(&self.config.url), client_id = %self.config.client_id(),
            clean_session = self.config.clean_session, "connecting to MQTT broker");
        let mut attempt = 0u32;
        let mut auth = auth;
        loop {
            let event = tokio::select! {
                e = eventloop.poll() => e,
                _ = shutdown.cancelled() => break,
                ended = &mut acker => return Err(SourceError::AckerEnded(match ended {
                    Ok(()) => "its channel closed".into(),
                    Err(e) => e.to_string(),
                })),
            };
            match event {
                Ok(event) => {
                    if let Event::Incoming(Packet::ConnAck(ack)) = &event
                        && ack.session_present
                        && self.config.qos == MqttQos::ExactlyOnce
                    {
                        expect_any_pubrel(&mut eventloop.state);
                    }
                    if session.on_event(event).await {
                        attempt = 0;
                    }
                }
                Err(e) => {
                    attempt += 1;
                    let was_up = self.live.send_if_modified(|l| {
                        let was_up = l.since_us.take().is_some();
                        if was_up {
                            l.lost_at_us = Some(now_us());
                        }
                        was_up
                    });
                    if let ConnectionError::ConnectionRefused(
                        ConnectReturnCode::NotAuthorized | ConnectReturnCode::BadUserNamePassword,
                    ) = e
                    {
                        self.credentials.refused().notify_one();
                    }
                    let delay = crate::net::backoff::backoff(
                        attempt,
                        self.config.reconnect_max.0,
                        rand::random(),
                    );
                    MqttConnectionFailed {
                        attempt,
                        was_up,
                        error: &crate::error_chain(&e),
                        retry_in: delay,
                    }
                    .emit(&self.counters);
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = shutdown.cancelled() => break,
                    }
                    let fresh = self.credentials.current();
                    if fresh != auth {
                        tracing::info!("using renewed MQTT credentials for the next connect");
                        eventloop.mqtt_options = self.options(&fresh)?;
                        auth = fresh;
                    }
                }
            }
        }
        // Shutdown: stop handing messages to the writer (unacked ones are
        // redelivered by a persistent session), keep the connection turning
        // until the writer has committed and the acker has queued the last
        // acks, then disconnect behind them.
        let Session { client, .. } = session;
        let offline = self
            .config
            .status_topic
            .clone()
            .map(|topic| (topic, self.status("offline")));
        drop(self.ingest);
        let drain = async {
            loop {
                tokio::select! {
                    _ = &mut acker => break,
                    e = eventloop.poll() => if e.is_err() { tokio::time::sleep(Duration::from_millis(50)).await },
                }
            }
            // A clean DISCONNECT discards the last will: say `offline` first.
            if let Some((topic, record)) = offline {
                let _ = client.try_publish(topic, QoS::AtLeastOnce, true, record);
            }
            let _ = client.try_disconnect();
            loop {
                match eventloop.poll().await {
                    Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        };
        if tokio::time::timeout(Duration::from_secs(5), drain)
            .await
            .is_err()
        {
            tracing::warn!("MQTT disconnect timed out; closing the connection");
        }
        tracing::info!("MQTT source stopped");
        Ok(())
    }
}

impl Session<'_> {
    /// Handles one event-loop result; returns true when a connection was established.
    async fn on_event(&self, event: Event) -> bool {
        match event {
            Event::Incoming(Packet::ConnAck(ack)) => {
                let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
                MqttConnected {
                    session_present: ack.session_present,
                    generation,
                }
                .emit(&self.source.counters);
                if self.source.config.status_topic.is_some() {
                    let _ = self
                        .outbound
                        .send(Outbound::Status(self.source.status("online")));
                }
                if let Some(c) = &self.continuity {
                    c.lock()
                        .expect("not poisoned")
                        .connected(ack.session_present);
                }
                if ack.session_present {
                    // The broker kept the subscription.
                    self.subscribed();
                } else {
                    self.subscribe();
                }
                true
            }
            Event::Incoming(Packet::SubAck(ack)) => {
                let refused = ack
                    .return_codes
                    .iter()
                    .filter(|c| matches!(c, SubscribeReasonCode::Failure))
                    .count();
                self.note_granted(&ack.return_codes);
                MqttSubscribed {
                    topics: &self.source.config.topics,
                    refused,
                }
                .emit(&self.source.counters);
                if refused == 0 {
                    self.subscribed();
                }
                false
            }
            Event::Incoming(Packet::Publish(p)) => {
                self.on_publish(p).await;
                false
            }
            Event::Incoming(Packet::Disconnect) => {
                tracing::warn!("broker sent DISCONNECT");
                false
            }
            _ => false,
        }
    }

    /// Compares what the SUBACK granted with `mqtt.qos`: warns once per
    /// topic granted less, and publishes the downgrade (or its end) for
    /// `/readyz` and `status`.
    fn note_granted(&self, codes: &[SubscribeReasonCode]) {
        let asked = qos(self.source.config.qos);
        let lower = downgrades(&self.source.config.topics, codes, asked);
        let mut warned = self.warned.lock().expect("not poisoned");
        for (topic, granted) in lower.iter().filter(|(t, _)| warned.insert(t.to_string())) {
            tracing::warn!(
                topic,
                asked = asked as u8,
                granted = *granted as u8,
                "the broker granted a lower QoS than mqtt.qos; delivery has that QoS's guarantee only"
            );
        }
        let downgraded = lower
            .iter()
            .map(|(_, q)| *q as u8)
            .min()
            .map(|granted| QosDowngrade {
                asked: asked as u8,
                granted,
            });
        self.source
            .live
            .send_if_modified(|l| std::mem::replace(&mut l.downgraded, downgraded) != downgraded);
    }

    /// The subscription is in place from now on (for the live watermark).
    fn subscribed(&self) {
        self.source.live.send_modify(|l| {
            l.since_us.get_or_insert_with(now_us);
        });
    }

    /// Asks the acker task to subscribe (see [`Acker`]).
    fn subscribe(&self) {
        let filters: Vec<SubscribeFilter> = self
            .source
            .config
            .topics
            .iter()
            .map(|t| SubscribeFilter::new(t.clone(), qos(self.source.config.qos)))
            .collect();
        let _ = self.outbound.send(Outbound::Subscribe(filters));
    }

    async fn on_publish(&self, p: Publish) {
        let now = now_us();
        self.source.counters.received_at(now);
        let gap = self
            .continuity
            .as_ref()
            .and_then(|c| c.lock().expect("not poisoned").message(now));
        if let Some(gap) = gap {
            let _ = self.source.ingest.send(Ingest::Gap(gap)).await;
        }
        let ack = (p.qos != QoS::AtMostOnce).then(|| {
            Ack {
                pkid: p.pkid,
                qos: p.qos,
                generation: self.generation.load(Ordering::Acquire),
            }
            .receipt()
        });
        let item = if p.payload.len() > self.max_size {
            Parsed::Rejected(Rejected::new(
                &p.topic,
                &p.payload,
                RejectReason::Oversized,
                format!(
                    "{} bytes > max_packet_size {}",
                    p.payload.len(),
                    self.max_size
                ),
                now,
            ))
        } else {
            self.source
                .parser
                .parse(&p.topic, &p.payload, now)
                .bound_time(&p.topic, now, self.source.max_skew_us)
        };
        let item = if p.retain {
            super::on_retained(item, self.source.config.retained)
        } else {
            item
        };
        let cost = match &item {
            Parsed::Rejected(r) => {
                tracing::warn!(topic = %r.topic, reason = r.reason.as_str(), detail = %r.detail,
                    size = r.size, "rejected message");
                r.bytes.len()
            }
            Parsed::Skipped(kind) => {
                tracing::debug!(topic = %p.topic, kind = %kind, "skipped message");
                0
            }
            Parsed::Event(e) => e.payload.len(),
        };
        let permit = match self
            .budget
            .clone()
            .acquire_many_owned(cost.clamp(1, BYTE_BUDGET) as u32)
            .await
        {
            Ok(p) => p,
            Err(_) => return,
        };
        // Blocks while the writer is behind: this is the backpressure.
        let _ = self
            .source
            .ingest
            .send(Ingest::Message {
                item,
                ack,
                permit: Some(permit),
            })
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ack_survives_its_trip_through_the_store() {
        for (pkid, qos, generation) in [
            (1, QoS::AtLeastOnce, 1),
            (u16::MAX, QoS::ExactlyOnce, (1 << 46) - 1),
            (0, QoS::AtMostOnce, 0),
            (4242, QoS::AtLeastOnce, 77),
        ] {
            let ack = Ack {
                pkid,
                qos,
                generation,
            };
            assert_eq!(Ack::from_receipt(ack.receipt()), ack);
        }
    }

    #[test]
    fn a_suback_below_the_asked_qos_names_its_topics() {
        let topics = ["a/#".to_string(), "b/#".to_string(), "c/#".to_string()];
        let codes = [
            SubscribeReasonCode::Success(QoS::ExactlyOnce),
            SubscribeReasonCode::Success(QoS::AtLeastOnce),
            SubscribeReasonCode::Failure,
        ];
        assert_eq!(
            downgrades(&topics, &codes, QoS::ExactlyOnce),
            vec![("b/#", QoS::AtLeastOnce)]
        );
        assert!(downgrades(&topics, &codes, QoS::AtLeastOnce).is_empty());
    }

    /// After a reconnect, rumqttc answers a PUBREL it has no record of
    /// with PUBCOMP once the marks are set, instead of failing the
    /// connection; the marking leaves queued events as they were.
    #[test]
    fn any_pubrel_is_answered_once_marked() {
        let mut state = rumqttc::MqttState::new(10, true);
        let pubrel = || Packet::PubRel(rumqttc::PubRel::new(7));
        assert!(state.handle_incoming_packet(pubrel()).is_err());
        state.events.clear();
        state.events.push_back(Event::Incoming(Packet::PingResp));
        expect_any_pubrel(&mut state);
        assert_eq!(state.events.len(), 1);
        assert_eq!(
            state.handle_incoming_packet(pubrel()).unwrap(),
            Some(Packet::PubComp(rumqttc::PubComp::new(7)))
        );
    }

    /// The WebSocket upgrade carries `mqtt.headers` and, in bearer mode,
    /// the token as a sensitive `Authorization` header; a bad header name is
    /// an error naming the key.
    #[tokio::test]
    async fn websocket_upgrades_carry_the_configured_headers_and_the_bearer() {
        let config = crate::config::Config::parse(
            "[source]\nkind = \"mqtt\"\nname = \"x\"\n[mqtt]\nurl = \"wss://broker.example/mqtt\"\n\
             headers = { \"X-Tenant\" = \"acme\" }\n[[sink]]\nname = \"f\"\nkind = \"stdout\"\n",
        )
        .unwrap();
        let auth = MqttAuth {
            bearer: Some(Secret::new("jwt-1")),
            ..Default::default()
        };
        let modify = options(&config.mqtt, &auth)
            .unwrap()
            .request_modifier()
            .unwrap();
        let req = modify(http::Request::new(())).await;
        assert_eq!(req.headers()["x-tenant"], "acme");
        assert_eq!(req.headers()["authorization"], "Bearer jwt-1");
        assert!(req.headers()["authorization"].is_sensitive());
        let mut bad = config.mqtt.clone();
        bad.headers.insert("bad name".into(), "v".into());
        let e = options(&bad, &auth).err().unwrap().to_string();
        assert!(e.contains("mqtt.headers") && e.contains("bad name"), "{e}");
    }

    #[test]
    fn credentials_never_print() {
        let auth = MqttAuth {
            username: Some("admin@System".into()),
            password: Some(Secret::new("pa55word")),
            bearer: Some(Secret::new("eyJhbGciOi.jwt")),
        };
        let shown = format!("{auth:?}");
        assert!(shown.contains("admin@System"));
        assert!(!shown.contains("pa55word") && !shown.contains("eyJ"));
    }
}
