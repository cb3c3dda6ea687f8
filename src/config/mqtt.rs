//! `[mqtt]`: the broker connection and subscription.
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::*;

/// How the VCD token reaches the broker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum MqttAuthMode {
    /// MQTT username `user@org`, password = the JWT.
    #[default]
    Password,
    /// `Authorization: Bearer <JWT>` on the WebSocket upgrade, no MQTT credentials.
    Bearer,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// Required unless `[source] url` is set (VCD: `wss://<host>/messaging/mqtt`).
    #[serde(default)]
    pub url: String,
    /// With a VCD login: how the token is presented to the broker.
    #[serde(default)]
    pub auth: MqttAuthMode,
    /// Empty in the file means the profile's default (see `derive_mqtt`).
    #[serde(default)]
    pub topics: Vec<String>,
    /// `None`: `gapless-<pid>` (only with a clean session).
    pub client_id: Option<String>,
    #[serde(default = "default_true")]
    pub clean_session: bool,
    pub username: Option<String>,
    pub password_env: Option<String>,
    pub password_file: Option<PathBuf>,
    /// The password, read at load.
    #[serde(skip)]
    pub password: Option<Secret>,
    #[serde(default = "default_keep_alive")]
    pub keep_alive: HumanDuration,
    #[serde(default = "default_max_packet_size")]
    pub max_packet_size: ByteSize,
    /// Extra PEM CA certificates trusted in addition to the system roots.
    pub ca_file: Option<PathBuf>,
    /// Extra headers on the WebSocket upgrade request (ws:// and wss:// only).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// How many received messages may wait for the writer before reading stops.
    #[serde(default = "default_queue")]
    pub queue: usize,
    /// Upper bound of the reconnect backoff.
    #[serde(default = "default_reconnect_max")]
    pub reconnect_max: HumanDuration,
    /// The QoS gapless subscribes with (the broker may grant less).
    #[serde(default)]
    pub qos: MqttQos,
    /// What a message delivered with the retain flag becomes.
    #[serde(default)]
    pub retained: RetainedMode,
    /// Where gapless announces itself: a retained `online` record on
    /// connect, `offline` as its last will and on a clean stop.
    pub status_topic: Option<String>,
}

/// A retained message is the broker's copy of a topic's last state, sent
/// again on every (re)subscribe; this decides whether that is an event.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RetainedMode {
    /// An event the first time; its later copies are duplicates whatever
    /// the time between them (the same topic and body, or the same id).
    #[default]
    Once,
    /// Never an event: only live messages are.
    Skip,
    /// Like any other message (for content keys: new after `dedup_window`).
    Every,
}

/// The QoS of gapless's subscriptions, written as the number MQTT uses.
///
/// Exists so that a QoS is a type with three values, not a `u8` checked in
/// several places, and so a bad value fails the config load naming the key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "i64")]
pub enum MqttQos {
    /// Nothing is acknowledged and nothing redelivered: what is lost while
    /// disconnected or crashed is recovered only through a history.
    AtMostOnce,
    /// PUBACK after the commit; redeliveries are deduplicated by the store.
    #[default]
    AtLeastOnce,
    /// PUBREC after the commit; the broker then redelivers nothing.
    ExactlyOnce,
}

impl TryFrom<i64> for MqttQos {
    type Error = String;

    fn try_from(n: i64) -> Result<Self, String> {
        match n {
            0 => Ok(MqttQos::AtMostOnce),
            1 => Ok(MqttQos::AtLeastOnce),
            2 => Ok(MqttQos::ExactlyOnce),
            _ => Err(format!(
                "mqtt.qos = {n}: use 0 (at most once), 1 (at least once, the default) or 2 (exactly once)"
            )),
        }
    }
}

impl Default for MqttConfig {
    fn default() -> Self {
        toml::from_str("").expect("every [mqtt] key has a default")
    }
}

pub(super) fn default_true() -> bool {
    true
}
pub(super) fn default_keep_alive() -> HumanDuration {
    HumanDuration(Duration::from_secs(30))
}
pub(super) fn default_max_packet_size() -> ByteSize {
    ByteSize(1 << 20)
}
pub(super) fn default_queue() -> usize {
    1024
}
pub(super) fn default_reconnect_max() -> HumanDuration {
    HumanDuration(Duration::from_secs(30))
}

/// The MQTT URL schemes gapless understands, with what they imply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    Mqtt,
    Mqtts,
    Ws,
    Wss,
}

/// A broker URL split into what rumqttc needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokerUrl {
    pub scheme: Scheme,
    pub host: String,
    pub port: u16,
    /// The full URL (WebSocket transports take it whole, path included).
    pub url: String,
}

impl BrokerUrl {
    pub fn parse(url: &str) -> Result<Self, String> {
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| format!("`{url}` has no scheme"))?;
        let (scheme, default_port) = match scheme {
            "mqtt" | "tcp" => (Scheme::Mqtt, 1883),
            "mqtts" | "ssl" => (Scheme::Mqtts, 8883),
            "ws" => (Scheme::Ws, 80),
            "wss" => (Scheme::Wss, 443),
            other => return Err(format!("unsupported scheme `{other}`")),
        };
        let authority = rest.split(['/', '?']).next().unwrap_or_default();
        if authority.contains('@') {
            return Err("credentials do not belong in the URL".into());
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => match p.parse::<u16>() {
                Ok(port) => (h.to_string(), port),
                Err(_) if authority.starts_with('[') && authority.ends_with(']') => {
                    (authority.to_string(), default_port)
                }
                Err(_) => return Err(format!("port `{p}` is not a number")),
            },
            _ => (authority.to_string(), default_port),
        };
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        if host.is_empty() {
            return Err(format!("`{url}` has no host"));
        }
        Ok(BrokerUrl {
            scheme,
            host,
            port,
            url: url.to_string(),
        })
    }
}

/// The largest packet the MQTT protocol can express (remaining length limit).
pub const MQTT_MAX_PACKET: usize = 268_435_455;

/// The largest WebSocket frame the MQTT transport reads (tungstenite's
/// default, which rumqttc does not let us change): over `ws://`/`wss://`
/// no packet can be larger, so `max_packet_size` may not be either.
pub const WS_MAX_FRAME: usize = 16 << 20;

impl MqttConfig {
    /// The client id: the configured one, or `gapless-<pid>`.
    pub fn client_id(&self) -> String {
        self.client_id
            .clone()
            .unwrap_or_else(|| format!("gapless-{}", std::process::id()))
    }

    pub fn broker(&self) -> BrokerUrl {
        BrokerUrl::parse(&self.url).expect("validated at load")
    }

    /// Reads the MQTT password from its environment variable or file.
    pub(super) fn resolve_password(&mut self) -> Result<(), ConfigError> {
        self.password = read_secret(
            "mqtt.password_env",
            "mqtt.password_file",
            &self.password_env,
            &self.password_file,
        )?;
        Ok(())
    }
}
