//! Typed configuration, loaded from one TOML file.
//!
//! Exists so that every mistake in the file is caught before anything
//! connects: unknown keys are errors, and every error names the offending key
//! and a fix. Secrets are never in the file itself, only references to
//! environment variables or files, resolved here into [`Secret`]s that do not
//! print.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

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

mod admin;
mod mqtt;
mod poll;
mod sink;
mod source;
mod store;
mod tagged;
mod types;

pub use admin::*;
pub use mqtt::*;
pub use poll::*;
pub use sink::*;
pub use source::*;
pub use store::*;
use tagged::{Tagged, key, keys_of};
pub use types::*;

/// The whole configuration file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(deserialize_with = "source_table")]
    pub source: SourceConfig,
    #[serde(default)]
    pub mqtt: MqttConfig,
    #[serde(default)]
    pub poll: PollConfig,
    #[serde(default)]
    pub stream: StreamConfig,
    #[serde(default)]
    pub store: StoreConfig,
    #[serde(default, rename = "sink", deserialize_with = "sink_tables")]
    pub sinks: Vec<SinkConfig>,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub http: HttpConfig,
    /// How long shutdown may take to drain before gapless gives up.
    #[serde(default = "default_shutdown_timeout")]
    pub shutdown_timeout: HumanDuration,
}

fn source_table<'de, D: serde::Deserializer<'de>>(d: D) -> Result<SourceConfig, D::Error> {
    SourceConfig::from_table(toml::Table::deserialize(d)?).map_err(serde::de::Error::custom)
}

fn sink_tables<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<SinkConfig>, D::Error> {
    let tables = Vec::<toml::Table>::deserialize(d)?;
    tables
        .into_iter()
        .enumerate()
        .map(|(i, t)| SinkConfig::from_table(i, t))
        .collect::<Result<_, _>>()
        .map_err(serde::de::Error::custom)
}

fn default_shutdown_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(15))
}

impl Config {
    /// Reads, parses and validates a config file, secrets included.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::load_with(path, true)
    }

    /// Like [`Config::load`] without reading any secret but the store's
    /// own password: for operator commands (`tail`, `replay`, `dlq`) that
    /// only open the store.
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
        config.validate()?;
        config.store.resolve_password()?;
        // Read secrets now so a missing variable fails at start, not at
        // first connect; offline commands never connect.
        if secrets {
            config.resolve_secrets()?;
        }
        Ok(config)
    }

    /// For a VCD source with a REST URL, the broker is the cell's
    /// (`wss://<host>/messaging/mqtt`) unless `[mqtt] url` says otherwise.
    fn derive_mqtt(&mut self) -> Result<(), ConfigError> {
        if self.mqtt.topics.is_empty() {
            self.mqtt.topics = match &self.source.kind {
                SourceKind::Scaleit(s) if s.apps.is_empty() => vec!["app/#".into()],
                SourceKind::Scaleit(s) => s.apps.iter().map(|a| format!("app/{a}/#")).collect(),
                _ => vec!["publish/#".into()],
            };
        }
        if !self.mqtt.url.is_empty() {
            return Ok(());
        }
        // The URL alone: commands that read no secrets (status, tail) get here too.
        match &self.source.kind {
            SourceKind::Vcd(VcdSource { url: Some(raw), .. }) => {
                let url = vcd_url(raw)?;
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
        let mut files: Vec<(String, &Path)> = self
            .store
            .file()
            .map(|f| ("store.path".to_string(), f))
            .into_iter()
            .collect();
        for (i, sink) in self.sinks.iter().enumerate() {
            if let SinkKind::File(f) = &sink.kind {
                files.push((format!("sink[{i}].path"), &f.path));
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
        let retention = match (self.poll.history_retention, &self.source.kind) {
            (Some(r), _) => r.0,
            (None, SourceKind::Vcd(_)) => Duration::from_secs(90 * 24 * 3600),
            (None, _) => Duration::ZERO,
        };
        (!retention.is_zero()).then_some(retention)
    }

    pub fn has_history(&self) -> bool {
        match &self.source.kind {
            SourceKind::Vcd(v) => v.url.is_some(),
            SourceKind::Scaleit(s) => s.history_url.is_some(),
            SourceKind::Mqtt(_) => false,
        }
    }

    /// The VCD login, when `[source] url` is set (read at load).
    pub fn vcd_login(&self) -> Option<&VcdLogin> {
        match &self.source.kind {
            SourceKind::Vcd(v) => v.login.as_ref(),
            _ => None,
        }
    }

    /// Reads every secret the config names, once.
    fn resolve_secrets(&mut self) -> Result<(), ConfigError> {
        self.mqtt.resolve_password()?;
        self.source.resolve_secrets()?;
        self.admin.resolve_token()?;
        for (i, sink) in self.sinks.iter_mut().enumerate() {
            sink.resolve_secrets(i)?;
        }
        Ok(())
    }

    /// The checks that span sections; each section checked its own keys.
    fn validate(&self) -> Result<(), ConfigError> {
        self.admin.addr()?;
        self.store.check()?;
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
            if let SourceKind::Vcd(_) = self.source.kind {
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
        if let Some((i, sink)) = self
            .sinks
            .iter()
            .enumerate()
            .find(|(_, s)| s.name.is_empty() || !names.insert(s.name.as_str()))
        {
            return Err(ConfigError::invalid(
                &format!("sink[{i}].name"),
                format!("`{}` is empty or used twice", sink.name),
                "give every sink a unique name: it keys the sink's cursor in the store",
            ));
        }
        if self.stream.release == ReleaseMode::Verified && !self.has_history() {
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
        if let Err(e) = parse_schedule(&self.poll.schedule) {
            return Err(ConfigError::invalid(
                "poll.schedule",
                e,
                "six fields with seconds, UTC: \"0 * * * * *\" is every minute, \"*/10 * * * * *\" every 10 s",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
