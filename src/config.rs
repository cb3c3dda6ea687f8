//! Typed configuration, loaded from one TOML file.
//!
//! Exists so that every mistake in the file is caught before anything
//! connects: unknown keys are errors, and every error names the offending key
//! and a fix. Secrets are never in the file itself, only references to
//! environment variables or files, resolved here into [`Secret`]s that do not
//! print.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// A configuration error that names the key at fault and how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid `{key}`: {message}\n  hint: {hint}")]
    Invalid {
        key: String,
        message: String,
        hint: String,
    },
}

impl ConfigError {
    fn invalid(key: &str, message: impl Into<String>, hint: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key: key.to_string(),
            message: message.into(),
            hint: hint.into(),
        }
    }
}

/// A secret value (password, token). Its `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    /// The only way to read the secret: grep-able on purpose.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl Secret {
    /// The HMAC key of a webhook signing secret: a `whsec_` secret is
    /// base64 (as Standard Webhooks issues them), any other is its bytes.
    pub fn signing_key(&self) -> Result<Vec<u8>, String> {
        use base64::Engine;
        let key = match self.0.strip_prefix("whsec_") {
            Some(b64) => base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|e| format!("a whsec_ secret must be base64 ({e})"))?,
            None => self.0.as_bytes().to_vec(),
        };
        if key.is_empty() {
            return Err("the secret is empty".into());
        }
        Ok(key)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// A duration written in human form (`"30s"`, `"5m"`, `"250ms"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s)
            .map(HumanDuration)
            .map_err(|e| {
                serde::de::Error::custom(format!(
                    "`{s}` is not a duration ({e}); write it like \"30s\", \"5m\" or \"250ms\""
                ))
            })
    }
}

/// A size in bytes, written as an integer or with a unit (`"1MiB"`, `"512KiB"`, `"2MB"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByteSize(pub usize);

impl ByteSize {
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: usize = num
            .parse()
            .map_err(|_| format!("`{s}` is not a size; write it like \"1MiB\" or \"65536\""))?;
        let mult = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "kib" => 1 << 10,
            "mib" => 1 << 20,
            "gib" => 1 << 30,
            "kb" => 1_000,
            "mb" => 1_000_000,
            "gb" => 1_000_000_000,
            other => {
                return Err(format!(
                    "unknown unit `{other}` in `{s}`; use B, KiB, MiB, GiB, kB, MB or GB"
                ));
            }
        };
        n.checked_mul(mult)
            .map(ByteSize)
            .ok_or_else(|| format!("`{s}` is too large"))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Str(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(ByteSize(n as usize)),
            Raw::Str(s) => ByteSize::parse(&s).map_err(serde::de::Error::custom),
        }
    }
}

/// Which wire format the source speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// VMware Cloud Director: envelope + audit event (reference/vcd.md).
    Vcd,
    /// Any JSON over MQTT; identity and time found by JSON pointers.
    Mqtt,
    /// ScaleIT app-to-app messages (reference/scaleit.md).
    Scaleit,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    pub kind: SourceKind,
    pub name: String,
    /// The CloudEvent `source` attribute; defaults to `name`.
    pub uri: Option<String>,
    /// VCD only: envelope types that carry events (others are skipped and counted).
    #[serde(default = "default_event_types")]
    pub event_types: Vec<String>,
    /// Generic MQTT only: JSON pointer to the event id (absent → SHA-256 of topic + body).
    pub id_pointer: Option<String>,
    /// Generic MQTT only: JSON pointer to the event time (absent → receive time).
    pub time_pointer: Option<String>,
    /// Generic MQTT only: JSON pointer to the event type (absent → the topic).
    pub type_pointer: Option<String>,
    /// VCD only: the cell's base URL (`https://vcd.example.com`). With it
    /// gapless logs in, shares the token with MQTT and polls the audit trail.
    pub url: Option<String>,
    /// VCD: the organisation to log in to (`System` for the provider).
    pub org: Option<String>,
    /// VCD: the user name (without `@org`).
    pub user: Option<String>,
    pub password_env: Option<String>,
    pub password_file: Option<PathBuf>,
    /// VCD: an API token (a long-lived OAuth refresh token) instead of a password.
    pub api_token_env: Option<String>,
    pub api_token_file: Option<PathBuf>,
    /// VCD: the API version sent in every `Accept` header.
    #[serde(default = "default_api_version")]
    pub api_version: String,
    #[serde(default)]
    pub tls: SourceTls,
    /// ScaleIT: the apps to subscribe to (`app/<app>/#` each); empty = `app/#`.
    #[serde(default)]
    pub apps: Vec<String>,
    /// ScaleIT: the app API URL, `{app}` replaced by the app name; a
    /// schema's URL is this + `/api/messages/` + the body's `$schema`.
    pub schema_base_url: Option<String>,
    /// ScaleIT: a directory of schemas (`<dir>/<app>/<ref>`, then `<dir>/<ref>`),
    /// tried before `schema_base_url`.
    pub schema_dir: Option<PathBuf>,
    /// ScaleIT: the apps' history endpoint (`{app}` = app name), read by the
    /// poller with `since` and `until` for what MQTT missed; none = MQTT only.
    pub history_url: Option<String>,
    /// ScaleIT: a body without `$schema` is rejected unless this is false.
    #[serde(default = "default_true")]
    pub require_schema: bool,
    /// ScaleIT: what happens to a message whose schema cannot be fetched.
    #[serde(default)]
    pub on_schema_unavailable: SchemaUnavailable,
    /// ScaleIT, and MQTT without `id_pointer`: the same topic and body
    /// within this window is one event.
    #[serde(default = "default_dedup_window")]
    pub dedup_window: HumanDuration,
    /// ScaleIT: `$schema` URLs that may be fetched besides those under
    /// `schema_base_url` (prefixes, e.g. `"https://schemas.example.com/"`).
    #[serde(default)]
    pub schema_allow: Vec<String>,
    /// ScaleIT: the largest schema body fetched.
    #[serde(default = "default_schema_max_body")]
    pub schema_max_body: ByteSize,
    /// ScaleIT: schemas kept in memory (least recently used dropped first).
    #[serde(default = "default_schema_cache")]
    pub schema_cache: usize,
    /// An event time later than now plus this is rejected (`future_time`):
    /// it would otherwise hold the stream's order hostage.
    #[serde(default = "default_max_clock_skew")]
    pub max_clock_skew: HumanDuration,
    /// ScaleIT history and schema requests: headers whose values come from
    /// environment variables (`{ "X-Api-Key" = "APPS_API_KEY" }`).
    #[serde(default)]
    pub headers_env: BTreeMap<String, String>,
    /// ScaleIT history and schema requests: `Authorization: Bearer` from an
    /// environment variable or a file.
    pub bearer_env: Option<String>,
    pub bearer_file: Option<PathBuf>,
}

fn default_schema_max_body() -> ByteSize {
    ByteSize(1 << 20)
}
fn default_schema_cache() -> usize {
    1000
}
fn default_max_clock_skew() -> HumanDuration {
    HumanDuration(Duration::from_secs(5 * 60))
}

/// What to do with a message whose schema service is down.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SchemaUnavailable {
    /// Store it, hold it back from the stream, validate it once the schema
    /// can be fetched (invalid ones then move to `rejected`).
    #[default]
    Queue,
    /// Store and release it marked `validation = "unvalidated"`.
    Ingest,
}

fn default_dedup_window() -> HumanDuration {
    HumanDuration(Duration::from_secs(10 * 60))
}

fn default_api_version() -> String {
    "38.0".into()
}

/// TLS settings of the REST connection.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceTls {
    /// Extra PEM CA certificates trusted besides the system roots.
    pub ca_file: Option<PathBuf>,
    /// Accept any certificate (labs only; logged as a warning at start).
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

/// How the VCD login is proven: a password or an API token.
#[derive(Clone, Debug)]
pub enum VcdSecret {
    Password(Secret),
    ApiToken(Secret),
}

/// Everything needed to log in to VCD's REST API.
#[derive(Clone, Debug)]
pub struct VcdLogin {
    pub url: url::Url,
    pub org: String,
    pub user: String,
    pub secret: VcdSecret,
    pub api_version: String,
    pub tls: SourceTls,
}

impl VcdLogin {
    /// The provider (`System`) org logs in through the provider endpoints.
    pub fn is_provider(&self) -> bool {
        self.org.eq_ignore_ascii_case("system")
    }
}

fn default_event_types() -> Vec<String> {
    vec!["EVENT".into(), "EXTERNAL_EVENT".into()]
}

impl SourceConfig {
    /// The ScaleIT history and schema requests' secret headers.
    pub fn secret_headers(&self) -> Result<Vec<(String, Secret)>, ConfigError> {
        secret_headers(
            "source",
            &self.headers_env,
            &self.bearer_env,
            &self.bearer_file,
        )
    }

    /// `max_clock_skew` in µs.
    pub fn max_skew_us(&self) -> i64 {
        self.max_clock_skew.0.as_micros() as i64
    }

    /// The CloudEvent `source` attribute.
    pub fn uri(&self) -> &str {
        self.uri.as_deref().unwrap_or(&self.name)
    }
}

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

fn default_true() -> bool {
    true
}
fn default_keep_alive() -> HumanDuration {
    HumanDuration(Duration::from_secs(30))
}
fn default_max_packet_size() -> ByteSize {
    ByteSize(1 << 20)
}
fn default_queue() -> usize {
    1024
}
fn default_reconnect_max() -> HumanDuration {
    HumanDuration(Duration::from_secs(30))
}

/// How hard SQLite pushes a commit to disk before it returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Synchronous {
    /// fsync on every commit: survives power loss (default).
    Full,
    /// fsync at checkpoints only: survives a crash of gapless, not of the OS.
    Normal,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    #[serde(default = "default_store_path")]
    pub path: PathBuf,
    /// Flush a batch at this many messages.
    #[serde(default = "default_batch_max")]
    pub batch_max: usize,
    /// Wait at most this long for a batch to fill; 0 commits whatever is queued.
    #[serde(default = "default_batch_delay")]
    pub batch_delay: HumanDuration,
    #[serde(default = "default_synchronous")]
    pub synchronous: Synchronous,
    /// How many rejected messages are kept for inspection (oldest dropped).
    #[serde(default = "default_rejected_max")]
    pub rejected_max: u32,
    /// Delivered events older than this are pruned once every sink passed them.
    #[serde(default = "default_retention")]
    pub retention: HumanDuration,
}

fn default_retention() -> HumanDuration {
    HumanDuration(Duration::from_secs(7 * 24 * 3600))
}

fn default_store_path() -> PathBuf {
    PathBuf::from("gapless.db")
}
fn default_batch_max() -> usize {
    1000
}
fn default_batch_delay() -> HumanDuration {
    HumanDuration(Duration::ZERO)
}
fn default_synchronous() -> Synchronous {
    Synchronous::Full
}
fn default_rejected_max() -> u32 {
    10_000
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            path: default_store_path(),
            batch_max: default_batch_max(),
            batch_delay: default_batch_delay(),
            synchronous: default_synchronous(),
            rejected_max: default_rejected_max(),
            retention: default_retention(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SinkKind {
    File,
    Stdout,
    Webhook,
    /// A NATS JetStream stream (publish acks, `Nats-Msg-Id` dedup).
    Nats,
    /// A Kafka topic (idempotent producer, delivery reports).
    Kafka,
}

impl SinkKind {
    pub fn name(self) -> &'static str {
        match self {
            SinkKind::File => "file",
            SinkKind::Stdout => "stdout",
            SinkKind::Webhook => "webhook",
            SinkKind::Nats => "nats",
            SinkKind::Kafka => "kafka",
        }
    }
}

/// How the stdout sink prints an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LineFormat {
    /// One CloudEvent JSON object per line.
    #[default]
    Json,
    /// One short human line per event (seq, time, type, id).
    Compact,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    pub name: String,
    pub kind: SinkKind,
    /// File sink: the JSON Lines file.
    pub path: Option<PathBuf>,
    /// Stdout sink: `json` (default) or `compact`.
    #[serde(default)]
    pub format: LineFormat,
    /// Events read from the store and written per batch.
    #[serde(default = "default_sink_batch")]
    pub batch: u32,
    /// Webhook: the endpoint. NATS: the server (`nats://host:4222`, or
    /// `tls://` for TLS), several separated by commas.
    pub url: Option<String>,
    /// Webhook: the signing secret (`whsec_<base64>` or plain), from an env var or a file.
    pub secret_env: Option<String>,
    pub secret_file: Option<PathBuf>,
    /// Webhook: per-request timeout. NATS: the wait for a publish ack.
    #[serde(default = "default_webhook_timeout")]
    pub timeout: HumanDuration,
    /// Webhook: extra request headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Webhook: headers whose values come from environment variables.
    #[serde(default)]
    pub headers_env: BTreeMap<String, String>,
    /// Webhook: `Authorization: Bearer` from an environment variable or a file.
    pub bearer_env: Option<String>,
    pub bearer_file: Option<PathBuf>,
    /// Webhook and NATS: extra PEM CAs trusted besides the system roots.
    pub ca_file: Option<PathBuf>,
    /// Webhook: what a refused event (4xx) does: `block` or `dead-letter`.
    #[serde(default)]
    pub on_failure: crate::sink::retry::OnFailure,
    /// Webhook and NATS: delays between retries; the last repeats forever.
    pub retry_schedule: Option<Vec<HumanDuration>>,
    /// NATS: the subject of each event; `{source}` (the source's name),
    /// `{type}` and `{origin}` are replaced by the event's values with
    /// `.`, spaces and wildcards made `_`.
    pub subject: Option<String>,
    /// NATS: user name, with `password_env` or `password_file`.
    pub user: Option<String>,
    pub password_env: Option<String>,
    pub password_file: Option<PathBuf>,
    /// NATS: an auth token from an environment variable or a file.
    pub token_env: Option<String>,
    pub token_file: Option<PathBuf>,
    /// NATS: a `.creds` file (JWT and NKey seed) for decentralised auth.
    pub creds_file: Option<PathBuf>,
    /// NATS, Kafka: publishes awaiting their ack at once.
    pub max_in_flight: Option<u32>,
    /// Kafka: the bootstrap servers, `host:port` separated by commas.
    pub brokers: Option<String>,
    /// Kafka: the topic every event goes to.
    pub topic: Option<String>,
    /// Kafka: what keys a record (and so picks its partition).
    pub key: Option<KafkaKey>,
    /// Kafka: further librdkafka producer settings (`security.protocol`,
    /// `sasl.mechanisms`, `compression.type`, ...).
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// Kafka: one transaction per batch under this id; a successor with
    /// the same id fences this producer.
    pub transactional_id: Option<String>,
    /// `/readyz` fails once the sink has been stuck on one event this long.
    #[serde(default = "default_sink_alert_after")]
    pub alert_after: HumanDuration,
    /// Deliver gap markers (`io.gapless.gap`, `io.gapless.verified`); when
    /// false the cursor still passes them.
    #[serde(default = "default_true")]
    pub include_markers: bool,
}

fn default_sink_alert_after() -> HumanDuration {
    HumanDuration(Duration::from_secs(5 * 60))
}
fn default_webhook_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(10))
}

impl SinkConfig {
    /// The webhook signing secret, if configured; a `whsec_` secret must be base64.
    pub fn secret(&self, i: usize) -> Result<Option<Secret>, ConfigError> {
        let (env_key, file_key) = (
            format!("sink[{i}].secret_env"),
            format!("sink[{i}].secret_file"),
        );
        let key = if self.secret_file.is_some() {
            &file_key
        } else {
            &env_key
        };
        let secret = read_secret(&env_key, &file_key, &self.secret_env, &self.secret_file)?;
        if let Some(Err(e)) = secret.as_ref().map(Secret::signing_key) {
            return Err(ConfigError::invalid(
                key,
                e,
                "a Standard Webhooks secret is `whsec_` + base64 of the key bytes; or give a plain secret without the prefix",
            ));
        }
        Ok(secret)
    }

    /// The webhook's secret request headers (`headers_env`, `bearer_env`/`bearer_file`).
    pub fn secret_headers(&self, i: usize) -> Result<Vec<(String, Secret)>, ConfigError> {
        secret_headers(
            &format!("sink[{i}]"),
            &self.headers_env,
            &self.bearer_env,
            &self.bearer_file,
        )
    }
}

/// Headers whose values are secrets: each of `headers_env` from its
/// variable, and `Authorization: Bearer` from `bearer_env` or `bearer_file`.
fn secret_headers(
    prefix: &str,
    headers_env: &BTreeMap<String, String>,
    bearer_env: &Option<String>,
    bearer_file: &Option<PathBuf>,
) -> Result<Vec<(String, Secret)>, ConfigError> {
    let mut out = Vec::new();
    for (name, var) in headers_env {
        let key = format!("{prefix}.headers_env.{name}");
        let value =
            read_secret(&key, &key, &Some(var.clone()), &None)?.expect("an env var is named");
        out.push((name.clone(), value));
    }
    let bearer = read_secret(
        &format!("{prefix}.bearer_env"),
        &format!("{prefix}.bearer_file"),
        bearer_env,
        bearer_file,
    )?;
    if let Some(token) = bearer {
        out.push((
            "Authorization".into(),
            Secret(format!("Bearer {}", token.0)),
        ));
    }
    Ok(out)
}

/// The record key of a Kafka sink: the event's id (default), its
/// CloudEvent `subject` (records without one get the id) or `type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum KafkaKey {
    #[default]
    Id,
    Subject,
    Type,
}

/// How a NATS sink authenticates, resolved from its keys at load.
#[derive(Clone, Debug)]
pub enum NatsAuth {
    Anonymous,
    UserPassword { user: String, password: Secret },
    Token(Secret),
    CredsFile(PathBuf),
}

impl SinkConfig {
    /// The NATS subject template when `subject` is not set.
    pub const DEFAULT_NATS_SUBJECT: &'static str = "gapless.{source}.{type}";
    const DEFAULT_IN_FLIGHT: u32 = 256;

    pub fn nats_subject(&self) -> &str {
        self.subject
            .as_deref()
            .unwrap_or(Self::DEFAULT_NATS_SUBJECT)
    }

    pub fn in_flight_limit(&self) -> usize {
        self.max_in_flight.unwrap_or(Self::DEFAULT_IN_FLIGHT) as usize
    }

    /// The checks of a NATS sink's keys that need no secret.
    fn nats_check(&self, i: usize) -> Result<(), ConfigError> {
        let key = |k: &str| format!("sink[{i}].{k}");
        let url = self.url.as_deref().unwrap_or_default();
        let bad = url.split(',').map(str::trim).find(|u| {
            !(u.starts_with("nats://") || u.starts_with("tls://")) || url::Url::parse(u).is_err()
        });
        if let Some(u) = bad {
            return Err(ConfigError::invalid(
                &key("url"),
                format!("`{u}` is not a nats:// or tls:// URL"),
                "e.g. url = \"nats://127.0.0.1:4222\" (several servers separated by commas)",
            ));
        }
        if let Err(e) = crate::sink::nats::SubjectTemplate::parse(self.nats_subject()) {
            return Err(ConfigError::invalid(
                &key("subject"),
                e,
                format!(
                    "tokens separated by dots, with {{source}}, {{type}} or {{origin}}; the default is \"{}\"",
                    Self::DEFAULT_NATS_SUBJECT
                ),
            ));
        }
        let password = self.password_env.is_some() || self.password_file.is_some();
        if self.user.is_some() != password {
            return Err(ConfigError::invalid(
                &key(if password { "user" } else { "password_env" }),
                "user and password go together",
                "set both user and password_env (or password_file)",
            ));
        }
        let token = self.token_env.is_some() || self.token_file.is_some();
        let ways = [self.user.is_some(), token, self.creds_file.is_some()];
        if ways.iter().filter(|w| **w).count() > 1 {
            return Err(ConfigError::invalid(
                &key("creds_file"),
                "more than one way to authenticate is set",
                "keep one of user/password_env, token_env/token_file and creds_file",
            ));
        }
        Ok(())
    }

    /// The checks of a Kafka sink's keys that need no secret.
    fn kafka_check(&self, i: usize) -> Result<(), ConfigError> {
        let key = |k: &str| format!("sink[{i}].{k}");
        if self.brokers.as_deref().is_none_or(|b| b.trim().is_empty()) {
            return Err(ConfigError::invalid(
                &key("brokers"),
                "a kafka sink needs its bootstrap servers",
                "e.g. brokers = \"kafka1:9092,kafka2:9092\"",
            ));
        }
        let topic = self.topic.as_deref().unwrap_or_default();
        let legal = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
        if topic.is_empty() || topic.len() > 249 || !topic.chars().all(legal) {
            return Err(ConfigError::invalid(
                &key("topic"),
                format!("`{topic}` is not a Kafka topic name"),
                "1 to 249 of a-z, A-Z, 0-9, `.`, `_` and `-`, e.g. topic = \"vcd-events\"",
            ));
        }
        for fixed in [
            "enable.idempotence",
            "acks",
            "bootstrap.servers",
            "sasl.password",
            "transactional.id",
        ] {
            if self.properties.contains_key(fixed) {
                return Err(ConfigError::invalid(
                    &format!("{}.\"{fixed}\"", key("properties")),
                    "gapless sets this itself",
                    "remove it: the producer is always idempotent with acks = all; \
                     brokers, password_env and transactional_id have their own keys",
                ));
            }
        }
        if self.user.is_some() != (self.password_env.is_some() || self.password_file.is_some()) {
            return Err(ConfigError::invalid(
                &key("password_env"),
                "user and password go together",
                "set both user and password_env (or password_file), and properties \
                 `sasl.mechanisms` and `security.protocol`",
            ));
        }
        Ok(())
    }

    /// The Kafka sink's SASL password, read from its variable or file.
    pub fn kafka_password(&self, i: usize) -> Result<Option<Secret>, ConfigError> {
        read_secret(
            &format!("sink[{i}].password_env"),
            &format!("sink[{i}].password_file"),
            &self.password_env,
            &self.password_file,
        )
    }

    /// The NATS sink's credentials, read from their variables or files.
    pub fn nats_auth(&self, i: usize) -> Result<NatsAuth, ConfigError> {
        let key = |k: &str| format!("sink[{i}].{k}");
        if let Some(path) = &self.creds_file {
            if let Err(e) = std::fs::metadata(path) {
                return Err(ConfigError::invalid(
                    &key("creds_file"),
                    format!("cannot read {}: {e}", path.display()),
                    "point it at the .creds file `nsc` or your NATS operator issued",
                ));
            }
            return Ok(NatsAuth::CredsFile(path.clone()));
        }
        if let Some(token) = read_secret(
            &key("token_env"),
            &key("token_file"),
            &self.token_env,
            &self.token_file,
        )? {
            return Ok(NatsAuth::Token(token));
        }
        let password = read_secret(
            &key("password_env"),
            &key("password_file"),
            &self.password_env,
            &self.password_file,
        )?;
        Ok(match (&self.user, password) {
            (Some(user), Some(password)) => NatsAuth::UserPassword {
                user: user.clone(),
                password,
            },
            _ => NatsAuth::Anonymous,
        })
    }
}

fn default_sink_batch() -> u32 {
    512
}

/// The gap poller (VCD with `[source] url` only).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PollConfig {
    /// 6-field cron expression (with seconds), UTC. Runs also once at start.
    #[serde(default = "default_schedule")]
    pub schedule: String,
    /// How far before the verified watermark each run re-reads.
    #[serde(default = "default_overlap")]
    pub overlap: HumanDuration,
    /// Events younger than this are not queried yet (the audit trail lags).
    #[serde(default = "default_visibility_lag")]
    pub visibility_lag: HumanDuration,
    /// Events per page (VCD allows at most 128).
    #[serde(default = "default_page_size")]
    pub page_size: u32,
    /// Longer gaps are split into windows of at most this, verified one by one.
    #[serde(default = "default_max_window")]
    pub max_window: HumanDuration,
    /// On first start, read history back this far (0 = from now on).
    #[serde(default = "default_initial_lookback")]
    pub initial_lookback: HumanDuration,
    /// Retries of 429/5xx/network errors per run before the run gives up.
    #[serde(default = "default_max_retries")]
    pub max_retries: u32,
    /// `/readyz` fails once poll runs have failed for this long.
    #[serde(default = "default_poll_alert_after")]
    pub alert_after: HumanDuration,
    /// How far back the history still holds events; an unverified span
    /// older than this becomes a `history_expired` gap marker. Unset: the
    /// profile's default ([`Config::history_retention`]); `"0s"`: unbounded.
    pub history_retention: Option<HumanDuration>,
}

fn default_poll_alert_after() -> HumanDuration {
    HumanDuration(Duration::from_secs(15 * 60))
}
fn default_schedule() -> String {
    "0 * * * * *".into()
}
fn default_overlap() -> HumanDuration {
    HumanDuration(Duration::from_secs(120))
}
fn default_visibility_lag() -> HumanDuration {
    HumanDuration(Duration::from_secs(5))
}
fn default_page_size() -> u32 {
    128
}
fn default_max_window() -> HumanDuration {
    HumanDuration(Duration::from_secs(3600))
}
fn default_initial_lookback() -> HumanDuration {
    HumanDuration(Duration::ZERO)
}
fn default_max_retries() -> u32 {
    6
}

impl Default for PollConfig {
    fn default() -> Self {
        toml::from_str("").expect("every [poll] key has a default")
    }
}

/// The ordered stream (see [`crate::stream`]).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamConfig {
    /// `event-time` (default) or `arrival`.
    #[serde(default)]
    pub order: crate::stream::Order,
    /// `live` (default) or `verified` (strict: only what the poller confirmed).
    #[serde(default)]
    pub release: crate::stream::ReleaseMode,
    /// How long behind real time the live watermark trails.
    #[serde(default = "default_settle")]
    pub settle: HumanDuration,
    /// Release an event that waited this long even above the watermark.
    #[serde(default = "default_max_hold")]
    pub max_hold: HumanDuration,
}

fn default_settle() -> HumanDuration {
    HumanDuration(Duration::from_secs(2))
}
fn default_max_hold() -> HumanDuration {
    HumanDuration(Duration::from_secs(15 * 60))
}

impl Default for StreamConfig {
    fn default() -> Self {
        toml::from_str("").expect("every [stream] key has a default")
    }
}

/// The admin HTTP endpoint (`/healthz`, `/readyz`, `/metrics`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// `host:port` to listen on; `""` turns the endpoint off. Port 0 takes
    /// any free port, recorded in the store where `gapless status` finds it.
    #[serde(default = "default_admin_listen")]
    pub listen: String,
    /// A bearer token required by `/metrics` and the details of `/readyz`,
    /// from an environment variable or a file.
    pub token_env: Option<String>,
    pub token_file: Option<PathBuf>,
}

fn default_admin_listen() -> String {
    "127.0.0.1:9464".into()
}

impl Default for AdminConfig {
    fn default() -> Self {
        toml::from_str("").expect("every [admin] key has a default")
    }
}

impl AdminConfig {
    /// The bearer token the endpoint requires, if configured.
    pub fn token(&self) -> Result<Option<Secret>, ConfigError> {
        read_secret(
            "admin.token_env",
            "admin.token_file",
            &self.token_env,
            &self.token_file,
        )
    }

    /// The socket address to bind, `None` when the endpoint is off.
    pub fn addr(&self) -> Result<Option<std::net::SocketAddr>, ConfigError> {
        if self.listen.is_empty() {
            return Ok(None);
        }
        self.listen.parse().map(Some).map_err(|_| {
            ConfigError::invalid(
                "admin.listen",
                format!("`{}` is not an IP address and port", self.listen),
                "write e.g. \"127.0.0.1:9464\" (or \"[::1]:9464\"), or \"\" to turn the endpoint off",
            )
        })
    }
}

/// The whole configuration file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub source: SourceConfig,
    #[serde(default)]
    pub mqtt: MqttConfig,
    #[serde(default)]
    pub poll: PollConfig,
    #[serde(default)]
    pub stream: StreamConfig,
    #[serde(default)]
    pub store: StoreConfig,
    #[serde(default, rename = "sink")]
    pub sinks: Vec<SinkConfig>,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub http: HttpConfig,
    /// How long shutdown may take to drain before gapless gives up.
    #[serde(default = "default_shutdown_timeout")]
    pub shutdown_timeout: HumanDuration,
}

/// Limits on what an HTTP peer (VCD, a ScaleIT app, a webhook endpoint)
/// can make gapless do.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// The longest `Retry-After` honoured; a longer one waits this long.
    #[serde(default = "default_retry_after_max")]
    pub retry_after_max: HumanDuration,
    /// The largest REST response read (an audit-trail page, a history window).
    #[serde(default = "default_max_body")]
    pub max_body: ByteSize,
}

fn default_retry_after_max() -> HumanDuration {
    HumanDuration(Duration::from_secs(600))
}
fn default_max_body() -> ByteSize {
    ByteSize(16 << 20)
}

impl Default for HttpConfig {
    fn default() -> Self {
        toml::from_str("").expect("every [http] key has a default")
    }
}

fn default_shutdown_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(15))
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

impl Config {
    /// Reads, parses and validates a config file, secrets included.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::load_with(path, true)
    }

    /// Like [`Config::load`] without reading any secret: for operator
    /// commands (`tail`, `replay`, `dlq`) that only open the store.
    pub fn load_offline(path: &Path) -> Result<Self, ConfigError> {
        Self::load_with(path, false)
    }

    fn load_with(path: &Path, secrets: bool) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse_with(&text, secrets).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_path_buf(),
                message,
            },
            other => other,
        })
    }

    /// Parses and validates TOML text, secrets included.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        Self::parse_with(text, true)
    }

    fn parse_with(text: &str, secrets: bool) -> Result<Self, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::new(),
            message: e.to_string(),
        })?;
        config.derive_mqtt()?;
        config.validate(secrets)?;
        Ok(config)
    }

    /// For a VCD source with a REST URL, the broker is the cell's
    /// (`wss://<host>/messaging/mqtt`) unless `[mqtt] url` says otherwise.
    fn derive_mqtt(&mut self) -> Result<(), ConfigError> {
        if self.mqtt.topics.is_empty() {
            self.mqtt.topics = match (self.source.kind, self.source.apps.as_slice()) {
                (SourceKind::Scaleit, []) => vec!["app/#".into()],
                (SourceKind::Scaleit, apps) => apps.iter().map(|a| format!("app/{a}/#")).collect(),
                _ => vec!["publish/#".into()],
            };
        }
        if !self.mqtt.url.is_empty() {
            return Ok(());
        }
        // The URL alone: commands that read no secrets (status, tail) get here too.
        let url = match &self.source.url {
            Some(raw) => Some(vcd_url(self.source.kind, raw)?),
            None => None,
        };
        match (&self.source.kind, url) {
            (SourceKind::Vcd, Some(url)) => {
                let host = url.host_str().unwrap_or_default();
                let port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
                let scheme = if url.scheme() == "http" { "ws" } else { "wss" };
                self.mqtt.url = format!("{scheme}://{host}{port}/messaging/mqtt");
                Ok(())
            }
            _ => Err(ConfigError::invalid(
                "mqtt.url",
                "is missing",
                "set [mqtt] url, or (VCD) set [source] url to derive it",
            )),
        }
    }

    /// Checks the files the daemon will write: each directory must exist or
    /// be creatable (no regular file in the way). Returns the directories
    /// `gapless run` will create.
    pub fn check_paths(&self) -> Result<Vec<PathBuf>, ConfigError> {
        let mut files = vec![("store.path".to_string(), &self.store.path)];
        for (i, sink) in self.sinks.iter().enumerate() {
            if let Some(path) = &sink.path {
                files.push((format!("sink[{i}].path"), path));
            }
        }
        let mut created = Vec::new();
        for (key, file) in files {
            let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) else {
                continue;
            };
            let existing = dir
                .ancestors()
                .find(|a| a.exists())
                .unwrap_or(Path::new("/"));
            if !existing.is_dir() {
                return Err(ConfigError::invalid(
                    &key,
                    format!(
                        "{} cannot be created: {} is a file, not a directory",
                        dir.display(),
                        existing.display()
                    ),
                    "point it into a directory",
                ));
            }
            if existing != dir && !created.contains(&dir.to_path_buf()) {
                created.push(dir.to_path_buf());
            }
        }
        Ok(created)
    }

    /// Settings that weaken what gapless can promise, said once at start.
    pub fn delivery_warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.mqtt.qos == MqttQos::AtMostOnce {
            out.push(if self.has_history() {
                "mqtt.qos = 0: the broker neither keeps nor redelivers what gapless misses while \
                 disconnected or stopped; only the poller's history recovers it"
                    .to_string()
            } else {
                "mqtt.qos = 0 and this source has no history: messages missed while disconnected \
                 or stopped are lost for good; use qos = 1 where the broker offers it"
                    .to_string()
            });
        }
        out
    }

    /// Whether a poller reads a REST history (VCD with `url`, ScaleIT with
    /// `history_url`): then the stream can claim completeness.
    /// `poll.history_retention`, or the profile's default: VCD prunes its
    /// audit trail (90 days unless the provider changed it); a ScaleIT
    /// app's history endpoint states no limit. `None` = unbounded.
    pub fn history_retention(&self) -> Option<Duration> {
        let retention = match (self.poll.history_retention, self.source.kind) {
            (Some(r), _) => r.0,
            (None, SourceKind::Vcd) => Duration::from_secs(90 * 24 * 3600),
            (None, _) => Duration::ZERO,
        };
        (!retention.is_zero()).then_some(retention)
    }

    pub fn has_history(&self) -> bool {
        match self.source.kind {
            SourceKind::Vcd => self.source.url.is_some(),
            SourceKind::Scaleit => self.source.history_url.is_some(),
            SourceKind::Mqtt => false,
        }
    }

    /// The VCD login, when `[source] url` is set.
    pub fn vcd_login(&self) -> Result<Option<VcdLogin>, ConfigError> {
        let s = &self.source;
        let Some(raw) = &s.url else {
            for (key, set) in [
                ("source.org", s.org.is_some()),
                ("source.user", s.user.is_some()),
                ("source.password_env", s.password_env.is_some()),
                ("source.api_token_env", s.api_token_env.is_some()),
            ] {
                if set {
                    return Err(ConfigError::invalid(
                        key,
                        "has no effect without source.url",
                        "set source.url = \"https://<vcd-host>\", or remove the key",
                    ));
                }
            }
            return Ok(None);
        };
        let url = vcd_url(s.kind, raw)?;
        let need = |key: &str, v: &Option<String>, example: &str| {
            v.clone().filter(|v| !v.is_empty()).ok_or_else(|| {
                ConfigError::invalid(
                    key,
                    "is required with source.url",
                    format!("e.g. {example}"),
                )
            })
        };
        let org = need(
            "source.org",
            &s.org,
            "org = \"System\" (provider) or your tenant org",
        )?;
        let secret = match (
            read_secret(
                "source.password_env",
                "source.password_file",
                &s.password_env,
                &s.password_file,
            )?,
            read_secret(
                "source.api_token_env",
                "source.api_token_file",
                &s.api_token_env,
                &s.api_token_file,
            )?,
        ) {
            (Some(p), None) => VcdSecret::Password(p),
            (None, Some(t)) => VcdSecret::ApiToken(t),
            (Some(_), Some(_)) => {
                return Err(ConfigError::invalid(
                    "source.api_token_env",
                    "both a password and an API token are configured",
                    "keep one way to log in",
                ));
            }
            (None, None) => {
                return Err(ConfigError::invalid(
                    "source.password_env",
                    "no credentials for the VCD login",
                    "set password_env (with user) or api_token_env",
                ));
            }
        };
        let user = match &secret {
            VcdSecret::Password(_) => need("source.user", &s.user, "user = \"administrator\"")?,
            VcdSecret::ApiToken(_) => s.user.clone().unwrap_or_default(),
        };
        Ok(Some(VcdLogin {
            url,
            org,
            user,
            secret,
            api_version: s.api_version.clone(),
            tls: s.tls.clone(),
        }))
    }

    fn validate(&self, secrets: bool) -> Result<(), ConfigError> {
        self.admin.addr()?;
        self.validate_scaleit()?;
        if self.source.name.trim().is_empty() {
            return Err(ConfigError::invalid(
                "source.name",
                "is empty",
                "name the source, e.g. name = \"vcd-lab\"",
            ));
        }
        let generic_only = [
            ("source.id_pointer", &self.source.id_pointer),
            ("source.time_pointer", &self.source.time_pointer),
            ("source.type_pointer", &self.source.type_pointer),
        ];
        for (key, value) in generic_only {
            match (self.source.kind, value) {
                (SourceKind::Vcd, Some(_)) => {
                    return Err(ConfigError::invalid(
                        key,
                        "only applies to kind = \"mqtt\"",
                        "remove it, or set source.kind = \"mqtt\"",
                    ));
                }
                (SourceKind::Mqtt, Some(p)) if !p.is_empty() && !p.starts_with('/') => {
                    return Err(ConfigError::invalid(
                        key,
                        format!("`{p}` is not a JSON pointer"),
                        "a JSON pointer starts with '/', e.g. \"/id\" or \"/data/id\"",
                    ));
                }
                _ => {}
            }
        }
        let url = BrokerUrl::parse(&self.mqtt.url).map_err(|m| {
            ConfigError::invalid(
                "mqtt.url",
                m,
                "use mqtt://host:1883, mqtts://host:8883, ws://host/path or wss://host/messaging/mqtt",
            )
        })?;
        if !self.mqtt.headers.is_empty() && !matches!(url.scheme, Scheme::Ws | Scheme::Wss) {
            return Err(ConfigError::invalid(
                "mqtt.headers",
                "upgrade headers need a WebSocket URL",
                "use a ws:// or wss:// mqtt.url, or remove mqtt.headers",
            ));
        }
        if self.mqtt.topics.is_empty() {
            return Err(ConfigError::invalid(
                "mqtt.topics",
                "is empty",
                "subscribe to at least one filter, e.g. topics = [\"publish/#\"]",
            ));
        }
        if let Some(topic) = &self.mqtt.status_topic {
            if self.source.kind == SourceKind::Vcd {
                return Err(ConfigError::invalid(
                    "mqtt.status_topic",
                    "VCD's broker is not a general-purpose one: gapless may not publish there",
                    "remove mqtt.status_topic, or use it with kind = \"mqtt\" or \"scaleit\"",
                ));
            }
            if topic.is_empty() || !rumqttc::valid_topic(topic) {
                return Err(ConfigError::invalid(
                    "mqtt.status_topic",
                    format!("`{topic}` is not a topic one can publish to"),
                    "name one topic without wildcards, e.g. \"gapless/plant-1/status\"",
                ));
            }
            if let Some(filter) = self.mqtt.topics.iter().find(|f| rumqttc::matches(topic, f)) {
                return Err(ConfigError::invalid(
                    "mqtt.status_topic",
                    format!(
                        "`{topic}` matches the subscription `{filter}`: gapless would ingest its own status records"
                    ),
                    "choose a status topic outside mqtt.topics, e.g. under \"gapless/\"",
                ));
            }
        }
        if !self.mqtt.clean_session
            && self
                .mqtt
                .client_id
                .as_deref()
                .is_none_or(|id| id.trim().is_empty())
        {
            return Err(ConfigError::invalid(
                "mqtt.client_id",
                "is not set but clean_session = false: the default `gapless-<pid>` changes on every start, \
                 so each restart would leave the last persistent session (and its queued messages) orphaned",
                "set a stable client_id, e.g. client_id = \"gapless-prod-1\"",
            ));
        }
        if matches!(url.scheme, Scheme::Ws | Scheme::Wss)
            && self.mqtt.max_packet_size.0 > WS_MAX_FRAME
        {
            return Err(ConfigError::invalid(
                "mqtt.max_packet_size",
                format!(
                    "{} bytes is more than a WebSocket frame may carry ({WS_MAX_FRAME} bytes, the transport's limit)",
                    self.mqtt.max_packet_size.0
                ),
                "keep it at most \"16MiB\" with ws:// and wss://",
            ));
        }
        if let (true, Some(ca)) = (
            self.source.tls.insecure_skip_verify,
            &self.source.tls.ca_file,
        ) {
            return Err(ConfigError::invalid(
                "source.tls.insecure_skip_verify",
                format!(
                    "is true, so source.tls.ca_file {} would be ignored",
                    ca.display()
                ),
                "keep ca_file (verification against your CA) and remove insecure_skip_verify",
            ));
        }
        if self.source.dedup_window.0.is_zero() {
            return Err(ConfigError::invalid(
                "source.dedup_window",
                "is 0: QoS 1 redeliveries would become new events",
                "the default, \"10m\", outlasts any redelivery",
            ));
        }
        if self.source.max_clock_skew.0.is_zero() {
            return Err(ConfigError::invalid(
                "source.max_clock_skew",
                "is 0: every event stamped a moment ahead of this host's clock would be rejected",
                "the default, \"5m\", allows for clocks that drift apart",
            ));
        }
        if self.mqtt.max_packet_size.0 < 1024 || self.mqtt.max_packet_size.0 > MQTT_MAX_PACKET {
            return Err(ConfigError::invalid(
                "mqtt.max_packet_size",
                format!("{} bytes is out of range", self.mqtt.max_packet_size.0),
                "pick a size between \"1KiB\" and \"256MiB\", e.g. \"1MiB\"",
            ));
        }
        if self.mqtt.queue == 0 {
            return Err(ConfigError::invalid(
                "mqtt.queue",
                "must be at least 1",
                "the default, 1024, suits most deployments",
            ));
        }
        if self.store.batch_max == 0 {
            return Err(ConfigError::invalid(
                "store.batch_max",
                "must be at least 1",
                "the default, 1000, suits most deployments",
            ));
        }
        if self.sinks.is_empty() {
            return Err(ConfigError::invalid(
                "sink",
                "no sink is configured",
                "add a [[sink]] table, e.g. name = \"out\", kind = \"file\", path = \"events.jsonl\"",
            ));
        }
        let mut names = std::collections::HashSet::new();
        for (i, sink) in self.sinks.iter().enumerate() {
            let key = |k: &str| format!("sink[{i}].{k}");
            if sink.name.is_empty() || !names.insert(sink.name.as_str()) {
                return Err(ConfigError::invalid(
                    &key("name"),
                    format!("`{}` is empty or used twice", sink.name),
                    "give every sink a unique name: it keys the sink's cursor in the store",
                ));
            }
            if sink.batch == 0 {
                return Err(ConfigError::invalid(
                    &key("batch"),
                    "must be at least 1",
                    "the default is 512",
                ));
            }
            match (sink.kind, &sink.path) {
                (SinkKind::File, None) => {
                    return Err(ConfigError::invalid(
                        &key("path"),
                        "a file sink needs a path",
                        "add path = \"events.jsonl\"",
                    ));
                }
                (
                    SinkKind::Stdout | SinkKind::Webhook | SinkKind::Nats | SinkKind::Kafka,
                    Some(_),
                ) => {
                    return Err(ConfigError::invalid(
                        &key("path"),
                        "only a file sink takes a path",
                        "remove path, or set kind = \"file\"",
                    ));
                }
                _ => {}
            }
            use SinkKind::{Kafka, Nats, Webhook};
            let kind_keys: [(&str, bool, &[SinkKind]); 18] = [
                ("url", sink.url.is_some(), &[Webhook, Nats]),
                (
                    "secret_env",
                    sink.secret_env.is_some() || sink.secret_file.is_some(),
                    &[Webhook],
                ),
                ("headers", !sink.headers.is_empty(), &[Webhook]),
                ("headers_env", !sink.headers_env.is_empty(), &[Webhook]),
                (
                    "bearer_env",
                    sink.bearer_env.is_some() || sink.bearer_file.is_some(),
                    &[Webhook],
                ),
                ("ca_file", sink.ca_file.is_some(), &[Webhook, Nats, Kafka]),
                (
                    "retry_schedule",
                    sink.retry_schedule.is_some(),
                    &[Webhook, Nats, Kafka],
                ),
                ("subject", sink.subject.is_some(), &[Nats]),
                ("user", sink.user.is_some(), &[Nats, Kafka]),
                (
                    "password_env",
                    sink.password_env.is_some() || sink.password_file.is_some(),
                    &[Nats, Kafka],
                ),
                (
                    "token_env",
                    sink.token_env.is_some() || sink.token_file.is_some(),
                    &[Nats],
                ),
                ("creds_file", sink.creds_file.is_some(), &[Nats]),
                (
                    "max_in_flight",
                    sink.max_in_flight.is_some(),
                    &[Nats, Kafka],
                ),
                ("brokers", sink.brokers.is_some(), &[Kafka]),
                ("topic", sink.topic.is_some(), &[Kafka]),
                ("key", sink.key.is_some(), &[Kafka]),
                ("properties", !sink.properties.is_empty(), &[Kafka]),
                (
                    "transactional_id",
                    sink.transactional_id.is_some(),
                    &[Kafka],
                ),
            ];
            if let Some((k, _, kinds)) = kind_keys
                .iter()
                .find(|(_, set, kinds)| *set && !kinds.contains(&sink.kind))
            {
                let owners: Vec<&str> = kinds.iter().map(|k| k.name()).collect();
                return Err(ConfigError::invalid(
                    &key(k),
                    format!("only a {} sink takes it", owners.join(" or ")),
                    format!("remove it, or set kind = \"{}\"", owners[0]),
                ));
            }
            if sink.max_in_flight == Some(0) {
                return Err(ConfigError::invalid(
                    &key("max_in_flight"),
                    "must be at least 1",
                    format!("the default is {}", SinkConfig::DEFAULT_IN_FLIGHT),
                ));
            }
            if sink.retry_schedule.as_ref().is_some_and(|s| s.is_empty()) {
                return Err(ConfigError::invalid(
                    &key("retry_schedule"),
                    "is empty",
                    "e.g. [\"1s\", \"5s\", \"30s\", \"2m\", \"10m\", \"30m\"], or remove it for that default",
                ));
            }
            match sink.kind {
                SinkKind::Webhook => {
                    let url = sink.url.as_deref().unwrap_or_default();
                    if !(url.starts_with("http://") || url.starts_with("https://"))
                        || url::Url::parse(url).is_err()
                    {
                        return Err(ConfigError::invalid(
                            &key("url"),
                            format!("`{url}` is not an http(s) URL"),
                            "e.g. url = \"https://siem.example.com/hooks/vcd\"",
                        ));
                    }
                    if secrets {
                        sink.secret(i)?;
                    }
                }
                SinkKind::Nats => {
                    sink.nats_check(i)?;
                    if secrets {
                        sink.nats_auth(i)?;
                    }
                }
                SinkKind::Kafka => {
                    sink.kafka_check(i)?;
                    if secrets {
                        sink.kafka_password(i)?;
                    }
                }
                SinkKind::File | SinkKind::Stdout => {}
            }
        }
        if self.stream.release == crate::stream::ReleaseMode::Verified && !self.has_history() {
            return Err(ConfigError::invalid(
                "stream.release",
                "\"verified\" needs the poller, which needs a REST history",
                "set source.url (VCD) or source.history_url (ScaleIT), or use release = \"live\"",
            ));
        }
        if self.poll.page_size == 0 || self.poll.page_size > 128 {
            return Err(ConfigError::invalid(
                "poll.page_size",
                format!("{} is out of range", self.poll.page_size),
                "VCD serves 1 to 128 events per page; the default is 128",
            ));
        }
        if self.poll.max_window.0 < Duration::from_secs(1) {
            return Err(ConfigError::invalid(
                "poll.max_window",
                "is shorter than a second",
                "the default, \"1h\", suits most deployments",
            ));
        }
        if let Err(e) = crate::source::poll::parse_schedule(&self.poll.schedule) {
            return Err(ConfigError::invalid(
                "poll.schedule",
                e,
                "six fields with seconds, UTC: \"0 * * * * *\" is every minute, \"*/10 * * * * *\" every 10 s",
            ));
        }
        // Resolve secrets now so a missing variable fails at start, not at first connect.
        if secrets {
            self.mqtt.password()?;
            self.vcd_login()?;
            self.source.secret_headers()?;
            self.admin.token()?;
            for (i, sink) in self.sinks.iter().enumerate() {
                sink.secret_headers(i)?;
            }
        } else if self.source.url.is_some() && self.source.kind != SourceKind::Vcd {
            return Err(ConfigError::invalid(
                "source.url",
                "the REST poller exists only for kind = \"vcd\"",
                "remove source.url, or set source.kind = \"vcd\"",
            ));
        }
        Ok(())
    }
}

impl Config {
    /// The ScaleIT keys belong to `kind = "scaleit"`, and validation needs
    /// somewhere to find schemas.
    fn validate_scaleit(&self) -> Result<(), ConfigError> {
        let s = &self.source;
        if s.kind != SourceKind::Scaleit {
            for (key, set) in [
                ("source.apps", !s.apps.is_empty()),
                ("source.schema_base_url", s.schema_base_url.is_some()),
                ("source.schema_dir", s.schema_dir.is_some()),
                ("source.history_url", s.history_url.is_some()),
                ("source.schema_allow", !s.schema_allow.is_empty()),
                ("source.headers_env", !s.headers_env.is_empty()),
                (
                    "source.bearer_env",
                    s.bearer_env.is_some() || s.bearer_file.is_some(),
                ),
            ] {
                if set {
                    return Err(ConfigError::invalid(
                        key,
                        "only applies to kind = \"scaleit\"",
                        "remove it, or set source.kind = \"scaleit\"",
                    ));
                }
            }
            return Ok(());
        }
        if s.url.is_some() {
            return Err(ConfigError::invalid(
                "source.url",
                "is the VCD REST URL; a ScaleIT source has none",
                "remove source.url; schemas come from source.schema_base_url or source.schema_dir",
            ));
        }
        if let Some(app) = s
            .apps
            .iter()
            .find(|a| a.is_empty() || a.contains(['/', '+', '#']))
        {
            return Err(ConfigError::invalid(
                "source.apps",
                format!("`{app}` is not an app name"),
                "list app names as they appear in topics, e.g. apps = [\"de-ondics-pacman\"]",
            ));
        }
        if let Some(base) = &s.schema_base_url {
            app_url_template(
                "source.schema_base_url",
                base,
                "http://{app}.apps.example.com",
            )?;
        }
        if let Some(bad) = s.schema_allow.iter().find(|p| {
            !(p.starts_with("http://") || p.starts_with("https://"))
                || !p.ends_with('/')
                || url::Url::parse(p).is_err()
        }) {
            return Err(ConfigError::invalid(
                "source.schema_allow",
                format!("`{bad}` is not an http(s) URL prefix ending in `/`"),
                "e.g. schema_allow = [\"https://schemas.example.com/shared/\"]; the `/` keeps `example.com.evil.net` out",
            ));
        }
        if let Some(history) = &s.history_url {
            app_url_template(
                "source.history_url",
                history,
                "http://{app}.apps.example.com/api/history",
            )?;
            if history.contains("{app}") && s.apps.is_empty() {
                return Err(ConfigError::invalid(
                    "source.history_url",
                    "names `{app}`, but source.apps is empty, so there is no app to ask",
                    "list the apps, e.g. apps = [\"de-ondics-pacman\"], or give one URL for all apps",
                ));
            }
        }
        if s.require_schema && s.schema_base_url.is_none() && s.schema_dir.is_none() {
            return Err(ConfigError::invalid(
                "source.schema_base_url",
                "is missing: bodies must name a $schema (require_schema = true), but there is nowhere to find schemas",
                "set schema_base_url = \"http://{app}.apps.example.com\" or schema_dir = \"/etc/gapless/schemas\", or require_schema = false",
            ));
        }
        Ok(())
    }
}

/// Checks a URL template in which `{app}` stands for an app name.
fn app_url_template(key: &str, template: &str, example: &str) -> Result<(), ConfigError> {
    let probe = template.replace("{app}", "app");
    if (probe.starts_with("http://") || probe.starts_with("https://"))
        && url::Url::parse(&probe).is_ok()
    {
        return Ok(());
    }
    Err(ConfigError::invalid(
        key,
        format!("`{template}` is not an http(s) URL"),
        format!("`{{app}}` stands for the app name, e.g. \"{example}\""),
    ))
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

    /// The MQTT password, from its environment variable or file.
    pub fn password(&self) -> Result<Option<Secret>, ConfigError> {
        read_secret(
            "mqtt.password_env",
            "mqtt.password_file",
            &self.password_env,
            &self.password_file,
        )
    }
}

/// The VCD cell's base URL from `source.url` (no secret needed).
fn vcd_url(kind: SourceKind, raw: &str) -> Result<url::Url, ConfigError> {
    if kind != SourceKind::Vcd {
        return Err(ConfigError::invalid(
            "source.url",
            "the REST poller exists only for kind = \"vcd\"",
            "remove source.url, or set source.kind = \"vcd\"",
        ));
    }
    url::Url::parse(raw)
        .ok()
        .filter(|u| matches!(u.scheme(), "https" | "http") && u.host_str().is_some())
        .ok_or_else(|| {
            ConfigError::invalid(
                "source.url",
                format!("`{raw}` is not an http(s) URL"),
                "write the cell's base URL, e.g. \"https://vcd.example.com\"",
            )
        })
}

/// Reads a secret from the environment variable or the file a config names.
fn read_secret(
    env_key: &str,
    file_key: &str,
    env: &Option<String>,
    file: &Option<PathBuf>,
) -> Result<Option<Secret>, ConfigError> {
    match (env, file) {
        (Some(_), Some(_)) => Err(ConfigError::invalid(
            env_key,
            format!("both {env_key} and {file_key} are set"),
            "keep one of them",
        )),
        (Some(var), None) => std::env::var(var).map(|v| Some(Secret(v))).map_err(|_| {
            ConfigError::invalid(
                env_key,
                format!("environment variable `{var}` is not set"),
                format!(
                    "export {var}=... before starting gapless, or name the secret's file with {file_key} instead"
                ),
            )
        }),
        (None, Some(path)) => std::fs::read_to_string(path)
            .map(|v| Some(Secret(v.trim_end_matches(['\n', '\r']).to_string())))
            .map_err(|e| {
                ConfigError::invalid(
                    file_key,
                    format!("cannot read {}: {e}", path.display()),
                    "point it at a readable file holding only the secret",
                )
            }),
        (None, None) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        [source]
        kind = "vcd"
        name = "vcd-lab"
        [mqtt]
        url = "mqtt://127.0.0.1:1883"
        [[sink]]
        name = "out"
        kind = "file"
        path = "events.jsonl"
    "#;

    #[test]
    fn minimal_config_takes_defaults() {
        let c = Config::parse(MINIMAL).unwrap();
        assert_eq!(c.mqtt.topics, vec!["publish/#"]);
        assert_eq!(c.mqtt.keep_alive.0, Duration::from_secs(30));
        assert_eq!(c.mqtt.max_packet_size.0, 1 << 20);
        assert!(c.mqtt.clean_session);
        assert_eq!(c.store.path, PathBuf::from("gapless.db"));
        assert_eq!(c.source.uri(), "vcd-lab");
        assert_eq!(c.source.event_types, vec!["EVENT", "EXTERNAL_EVENT"]);
    }

    #[test]
    fn history_retention_defaults_by_profile_and_zero_is_unbounded() {
        let vcd = Config::parse(MINIMAL).unwrap();
        assert_eq!(
            vcd.history_retention(),
            Some(Duration::from_secs(90 * 24 * 3600))
        );
        let mqtt = Config::parse(&MINIMAL.replace("kind = \"vcd\"", "kind = \"mqtt\"")).unwrap();
        assert_eq!(mqtt.history_retention(), None);
        let set = |v: &str| {
            Config::parse(&format!("{MINIMAL}\n[poll]\nhistory_retention = \"{v}\"\n"))
                .unwrap()
                .history_retention()
        };
        assert_eq!(set("4s"), Some(Duration::from_secs(4)));
        assert_eq!(set("0s"), None);
    }

    fn err_of(text: &str) -> String {
        Config::parse(text).unwrap_err().to_string()
    }

    /// MINIMAL with a sink of `kind` and `keys` first (so it is `sink[0]`).
    fn with_sink(kind: &str, keys: &str) -> String {
        MINIMAL.replace(
            "[[sink]]",
            &format!("[[sink]]\nname = \"s\"\nkind = \"{kind}\"\n{keys}\n[[sink]]"),
        )
    }

    /// A `kind` sink with `keys` fails to load, naming `key` and saying `says`.
    fn assert_named(kind: &str, (keys, key, says): (&str, &str, &str)) {
        let e = err_of(&with_sink(kind, keys));
        assert!(e.contains(key) && e.contains(says), "{keys}: {e}");
    }

    #[test]
    fn nats_sink_keys_are_checked_and_named() {
        let nats = |keys: &str| with_sink("nats", keys);
        let ok = Config::parse(&nats("url = \"nats://127.0.0.1:4222\"")).unwrap();
        assert_eq!(ok.sinks[0].nats_subject(), SinkConfig::DEFAULT_NATS_SUBJECT);
        assert_eq!(ok.sinks[0].in_flight_limit(), 256);
        [
            ("url = \"http://x:4222\"", "sink[0].url", "nats://"),
            ("", "sink[0].url", "nats://"),
            (
                "url = \"nats://a:1\"\nsubject = \"x.{kind}\"",
                "sink[0].subject",
                "placeholder",
            ),
            (
                "url = \"nats://a:1\"\nmax_in_flight = 0",
                "sink[0].max_in_flight",
                "at least 1",
            ),
            (
                "url = \"nats://a:1\"\nuser = \"u\"",
                "sink[0].password_env",
                "together",
            ),
            (
                "url = \"nats://a:1\"\ntoken_env = \"T\"\ncreds_file = \"c\"",
                "sink[0].creds_file",
                "more than one",
            ),
            (
                "url = \"nats://a:1\"\nsecret_env = \"S\"",
                "sink[0].secret_env",
                "only a webhook sink",
            ),
        ]
        .into_iter()
        .for_each(|case| assert_named("nats", case));
        let e =
            err_of(&MINIMAL.replace("path = \"events.jsonl\"", "path = \"e\"\nsubject = \"x\""));
        assert!(
            e.contains("sink[0].subject") && e.contains("only a nats sink"),
            "{e}"
        );
        let e = err_of(&nats(
            "url = \"nats://a:1\"\ntoken_env = \"GAPLESS_TEST_UNSET_VAR\"",
        ));
        assert!(
            e.contains("sink[0].token_env") && e.contains("GAPLESS_TEST_UNSET_VAR"),
            "{e}"
        );
    }

    #[test]
    fn kafka_sink_keys_are_checked_and_named() {
        let kafka = |keys: &str| with_sink("kafka", keys);
        let ok = Config::parse(&kafka("brokers = \"a:9092\"\ntopic = \"vcd-events\"")).unwrap();
        assert_eq!(ok.sinks[0].key.unwrap_or_default(), KafkaKey::Id);
        [
            ("topic = \"t\"", "sink[0].brokers", "bootstrap"),
            ("brokers = \"a:1\"", "sink[0].topic", "not a Kafka topic"),
            (
                "brokers = \"a:1\"\ntopic = \"a b\"",
                "sink[0].topic",
                "not a Kafka topic",
            ),
            (
                "brokers = \"a:1\"\ntopic = \"t\"\nproperties = { acks = \"1\" }",
                "sink[0].properties.\"acks\"",
                "sets this itself",
            ),
            (
                "brokers = \"a:1\"\ntopic = \"t\"\nproperties = { \"transactional.id\" = \"x\" }",
                "sink[0].properties.\"transactional.id\"",
                "transactional_id have their own keys",
            ),
            (
                "brokers = \"a:1\"\ntopic = \"t\"\nuser = \"u\"",
                "sink[0].password_env",
                "together",
            ),
            (
                "brokers = \"a:1\"\ntopic = \"t\"\nsubject = \"x\"",
                "sink[0].subject",
                "only a nats sink",
            ),
            (
                "brokers = \"a:1\"\ntopic = \"t\"\nkey = \"seq\"",
                "key",
                "unknown variant",
            ),
        ]
        .into_iter()
        .for_each(|case| assert_named("kafka", case));
        let e = err_of(&MINIMAL.replace("path = \"events.jsonl\"", "path = \"e\"\ntopic = \"t\""));
        assert!(
            e.contains("sink[0].topic") && e.contains("only a kafka sink"),
            "{e}"
        );
    }

    #[test]
    fn unknown_key_is_named() {
        let e = err_of(&MINIMAL.replace("[mqtt]", "[mqtt]\nbogus_key = 1"));
        assert!(e.contains("bogus_key"), "{e}");
    }

    #[test]
    fn bad_values_name_their_key_and_hint() {
        let e = err_of(&MINIMAL.replace("mqtt://127.0.0.1:1883", "http://x"));
        assert!(e.contains("mqtt.url") && e.contains("hint"), "{e}");
        let e = err_of(&MINIMAL.replace("[mqtt]", "[mqtt]\nkeep_alive = \"soon\""));
        assert!(e.contains("keep_alive") && e.contains("30s"), "{e}");
        let e = err_of(&MINIMAL.replace("path = \"events.jsonl\"", ""));
        assert!(e.contains("sink[0].path"), "{e}");
        let e = err_of(&MINIMAL.replace(
            "[mqtt]",
            "[mqtt]\npassword_env = \"GAPLESS_TEST_UNSET_VAR\"",
        ));
        assert!(
            e.contains("GAPLESS_TEST_UNSET_VAR") && e.contains("mqtt.password_env"),
            "{e}"
        );
        let e = err_of(&MINIMAL.replace("[mqtt]", "[source2]\n[mqtt]"));
        assert!(e.contains("source2"), "{e}");
        let e =
            err_of(&MINIMAL.replace("name = \"vcd-lab\"", "name = \"x\"\nid_pointer = \"/id\""));
        assert!(e.contains("source.id_pointer"), "{e}");
    }

    #[test]
    fn a_vcd_source_alone_derives_the_broker() {
        let text = r#"
            [source]
            kind = "vcd"
            name = "lab"
            url = "https://vcd.example.com"
            org = "System"
            user = "administrator"
            password_file = "/dev/null"
            [[sink]]
            name = "out"
            kind = "stdout"
        "#;
        let c = Config::parse(text).unwrap();
        assert_eq!(c.mqtt.url, "wss://vcd.example.com/messaging/mqtt");
        assert_eq!(c.mqtt.topics, vec!["publish/#"]);
        assert_eq!(c.mqtt.auth, MqttAuthMode::Password);
        let login = c.vcd_login().unwrap().unwrap();
        assert!(login.is_provider());
        assert_eq!(login.api_version, "38.0");
        assert_eq!(c.poll.schedule, "0 * * * * *");
        assert_eq!(c.poll.page_size, 128);

        let e = err_of(&text.replace("org = \"System\"", ""));
        assert!(e.contains("source.org"), "{e}");
        let e = err_of(&text.replace("password_file = \"/dev/null\"", ""));
        assert!(e.contains("source.password_env"), "{e}");
        let e = err_of(&text.replace("https://vcd.example.com", "vcd.example.com"));
        assert!(e.contains("source.url"), "{e}");
        let e = err_of(&text.replace("[[sink]]", "[poll]\nschedule = \"* * * * *\"\n[[sink]]"));
        assert!(e.contains("poll.schedule"), "{e}");
        let e = err_of(&text.replace("[[sink]]", "[poll]\npage_size = 500\n[[sink]]"));
        assert!(e.contains("poll.page_size"), "{e}");
        let no_url = text.replace("url = \"https://vcd.example.com\"", "");
        let e = err_of(&no_url);
        assert!(e.contains("source.org") || e.contains("mqtt.url"), "{e}");
    }

    #[test]
    fn scaleit_keys_are_checked() {
        let text = r#"
            [source]
            kind = "scaleit"
            name = "apps"
            apps = ["de-ondics-pacman"]
            schema_base_url = "http://{app}.apps.local"
            history_url = "http://{app}.apps.local/api/history"
            [mqtt]
            url = "mqtt://127.0.0.1:1883"
            [[sink]]
            name = "out"
            kind = "stdout"
        "#;
        let c = Config::parse(text).unwrap();
        assert!(c.has_history());
        assert_eq!(c.mqtt.topics, vec!["app/de-ondics-pacman/#"]);
        assert!(
            !Config::parse(&text.replace("history_url", "# history_url"))
                .unwrap()
                .has_history()
        );
        let e = err_of(&text.replace("apps = [\"de-ondics-pacman\"]", ""));
        assert!(
            e.contains("source.history_url") && e.contains("source.apps"),
            "{e}"
        );
        let e = err_of(&text.replace("http://{app}.apps.local/api", "{app}/api"));
        assert!(
            e.contains("source.history_url") && e.contains("e.g."),
            "{e}"
        );
        let e = err_of(&text.replace("http://{app}.apps.local\"", "ftp://x\""));
        assert!(e.contains("source.schema_base_url"), "{e}");
        let e = err_of(&MINIMAL.replace(
            "name = \"vcd-lab\"",
            "name = \"x\"\nhistory_url = \"http://h\"",
        ));
        assert!(
            e.contains("source.history_url") && e.contains("scaleit"),
            "{e}"
        );
    }

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(ByteSize::parse("1MiB").unwrap().0, 1 << 20);
        assert_eq!(ByteSize::parse("512 KiB").unwrap().0, 512 << 10);
        assert_eq!(ByteSize::parse("2MB").unwrap().0, 2_000_000);
        assert_eq!(ByteSize::parse("4096").unwrap().0, 4096);
        assert!(ByteSize::parse("1 parsec").is_err());
        assert!(ByteSize::parse("MiB").is_err());
    }

    #[test]
    fn broker_urls_split() {
        let u = BrokerUrl::parse("wss://vcd.example.com/messaging/mqtt").unwrap();
        assert_eq!(
            (u.scheme, u.host.as_str(), u.port),
            (Scheme::Wss, "vcd.example.com", 443)
        );
        let u = BrokerUrl::parse("mqtt://127.0.0.1:18830").unwrap();
        assert_eq!(
            (u.scheme, u.host.as_str(), u.port),
            (Scheme::Mqtt, "127.0.0.1", 18830)
        );
        let u = BrokerUrl::parse("mqtts://[::1]:8883").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 8883));
        let u = BrokerUrl::parse("ws://[::1]/mqtt").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 80));
        assert!(BrokerUrl::parse("mqtt://user:pw@host").is_err());
        assert!(BrokerUrl::parse("host:1883").is_err());
    }

    #[test]
    fn secrets_do_not_print() {
        let s = Secret::new("hunter2");
        assert!(!format!("{s:?}").contains("hunter2"));
    }

    #[test]
    fn mqtt_qos_is_0_1_or_2_and_1_by_default() {
        assert_eq!(
            Config::parse(MINIMAL).unwrap().mqtt.qos,
            MqttQos::AtLeastOnce
        );
        for (n, qos) in [
            (0, MqttQos::AtMostOnce),
            (1, MqttQos::AtLeastOnce),
            (2, MqttQos::ExactlyOnce),
        ] {
            let c = Config::parse(&MINIMAL.replace("[mqtt]", &format!("[mqtt]\nqos = {n}")));
            assert_eq!(c.unwrap().mqtt.qos, qos);
        }
        let e = err_of(&MINIMAL.replace("[mqtt]", "[mqtt]\nqos = 3"));
        assert!(
            e.contains("mqtt.qos = 3") && e.contains("exactly once"),
            "{e}"
        );
    }

    #[test]
    fn a_status_topic_is_one_topic_and_not_for_vcd() {
        let e = err_of(&MINIMAL.replace("[mqtt]", "[mqtt]\nstatus_topic = \"g/status\""));
        assert!(e.contains("mqtt.status_topic") && e.contains("VCD"), "{e}");
        let generic = MINIMAL.replace("kind = \"vcd\"", "kind = \"mqtt\"");
        let e = err_of(&generic.replace("[mqtt]", "[mqtt]\nstatus_topic = \"g/#\""));
        assert!(e.contains("wildcards"), "{e}");
        let e = err_of(&generic.replace("[mqtt]", "[mqtt]\nstatus_topic = \"publish/me\""));
        assert!(e.contains("matches the subscription `publish/#`"), "{e}");
        let ok = generic.replace("[mqtt]", "[mqtt]\nstatus_topic = \"g/status\"");
        assert_eq!(
            Config::parse(&ok).unwrap().mqtt.status_topic.as_deref(),
            Some("g/status")
        );
    }

    #[test]
    /// The status-topic check relies on rumqttc's matching as MQTT defines it.
    fn topic_filters_match_as_mqtt_says() {
        for (filter, topic, want) in [
            ("#", "a/b", true),
            ("a/#", "a", true),
            ("a/#", "a/b/c", true),
            ("a/+", "a/b", true),
            ("a/+", "a/b/c", false),
            ("+/+", "a/b", true),
            ("a/b", "a/b", true),
            ("a/b", "a/c", false),
            ("a/b", "a/b/c", false),
            ("#", "$SYS/x", false),
            ("+/x", "$SYS/x", false),
        ] {
            assert_eq!(rumqttc::matches(topic, filter), want, "{filter} vs {topic}");
        }
    }

    #[test]
    fn qos_0_is_accepted_with_a_warning_that_names_the_recovery() {
        assert!(
            Config::parse(MINIMAL)
                .unwrap()
                .delivery_warnings()
                .is_empty()
        );
        let qos0 = MINIMAL.replace("[mqtt]", "[mqtt]\nqos = 0");
        let w = Config::parse(&qos0).unwrap().delivery_warnings();
        assert!(w.len() == 1 && w[0].contains("lost for good"), "{w:?}");
        let with_history = qos0.replace(
            "name = \"vcd-lab\"",
            "name = \"vcd-lab\"\nurl = \"https://vcd.example\"\norg = \"System\"\nuser = \"u\"\npassword_file = \"/dev/null\"",
        );
        let w = Config::parse(&with_history).unwrap().delivery_warnings();
        assert!(w.len() == 1 && w[0].contains("only the poller"), "{w:?}");
    }

    #[test]
    fn a_persistent_session_needs_an_explicit_client_id() {
        let e = err_of(&MINIMAL.replace("[mqtt]", "[mqtt]\nclean_session = false"));
        assert!(
            e.contains("mqtt.client_id") && e.contains("orphaned"),
            "{e}"
        );
        let ok = MINIMAL.replace(
            "[mqtt]",
            "[mqtt]\nclean_session = false\nclient_id = \"g-1\"",
        );
        assert_eq!(Config::parse(&ok).unwrap().mqtt.client_id(), "g-1");
        assert!(
            Config::parse(MINIMAL)
                .unwrap()
                .mqtt
                .client_id()
                .starts_with("gapless-")
        );
    }

    #[test]
    fn websocket_packets_stay_within_a_frame() {
        let ws = MINIMAL.replace("mqtt://127.0.0.1:1883", "ws://127.0.0.1:8080/mqtt");
        let e = err_of(&ws.replace("[mqtt]", "[mqtt]\nmax_packet_size = \"32MiB\""));
        assert!(
            e.contains("mqtt.max_packet_size") && e.contains("WebSocket"),
            "{e}"
        );
        assert!(
            Config::parse(&ws.replace("[mqtt]", "[mqtt]\nmax_packet_size = \"16MiB\"")).is_ok()
        );
        let tcp = MINIMAL.replace("[mqtt]", "[mqtt]\nmax_packet_size = \"32MiB\"");
        assert!(Config::parse(&tcp).is_ok());
    }

    #[test]
    fn skipping_verification_does_not_silently_drop_a_ca_file() {
        let text = MINIMAL.replace(
            "name = \"vcd-lab\"",
            "name = \"vcd-lab\"\ntls = { ca_file = \"/etc/ca.pem\", insecure_skip_verify = true }",
        );
        let e = err_of(&text);
        assert!(
            e.contains("source.tls.insecure_skip_verify") && e.contains("ca.pem"),
            "{e}"
        );
    }

    #[test]
    fn an_invalid_whsec_secret_is_refused_at_load() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secret");
        let hook = |secret: &str| {
            std::fs::write(&file, secret).unwrap();
            MINIMAL.replace(
                "[[sink]]",
                &format!(
                    "[[sink]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"https://h.example/x\"\n\
                     secret_file = \"{}\"\n[[sink]]",
                    file.display()
                ),
            )
        };
        let e = err_of(&hook("whsec_not*base64"));
        assert!(
            e.contains("sink[0].secret_file") && e.contains("base64"),
            "{e}"
        );
        assert!(!e.contains("not*base64"), "the secret is not echoed: {e}");
        assert!(Config::parse(&hook("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")).is_ok());
    }

    #[test]
    fn a_zero_clock_skew_is_refused() {
        let e = err_of(&MINIMAL.replace(
            "name = \"vcd-lab\"",
            "name = \"vcd-lab\"\nmax_clock_skew = \"0s\"",
        ));
        assert!(e.contains("source.max_clock_skew"), "{e}");
    }
}
