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
mod types;

pub use admin::*;
pub use mqtt::*;
pub use poll::*;
pub use sink::*;
pub use source::*;
pub use store::*;
pub use types::*;

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

fn default_shutdown_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(15))
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

#[cfg(test)]
mod tests;
