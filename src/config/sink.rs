//! `[[sink]]`: where the ordered stream goes.
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::*;

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
    pub on_failure: OnFailure,
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

pub(super) fn default_sink_alert_after() -> HumanDuration {
    HumanDuration(Duration::from_secs(5 * 60))
}
pub(super) fn default_webhook_timeout() -> HumanDuration {
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
pub(super) fn secret_headers(
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
    pub(super) const DEFAULT_IN_FLIGHT: u32 = 256;

    pub fn nats_subject(&self) -> &str {
        self.subject
            .as_deref()
            .unwrap_or(Self::DEFAULT_NATS_SUBJECT)
    }

    pub fn in_flight_limit(&self) -> usize {
        self.max_in_flight.unwrap_or(Self::DEFAULT_IN_FLIGHT) as usize
    }

    /// The checks of a NATS sink's keys that need no secret.
    pub(super) fn nats_check(&self, i: usize) -> Result<(), ConfigError> {
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
        if let Err(e) = SubjectTemplate::parse(self.nats_subject()) {
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
    pub(super) fn kafka_check(&self, i: usize) -> Result<(), ConfigError> {
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

pub(super) fn default_sink_batch() -> u32 {
    512
}

/// One piece of a subject template.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Text(String),
    Source,
    Type,
    Origin,
}

/// A subject with `{source}`, `{type}` and `{origin}` placeholders, parsed
/// once at start so a bad template fails the config check, not a publish.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubjectTemplate(Vec<Part>);

impl SubjectTemplate {
    pub fn parse(template: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut rest = template;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_string()));
            }
            let close = rest[open..]
                .find('}')
                .ok_or_else(|| format!("`{template}` has a `{{` without its `}}`"))?;
            parts.push(match &rest[open + 1..open + close] {
                "source" => Part::Source,
                "type" => Part::Type,
                "origin" => Part::Origin,
                other => return Err(format!("`{{{other}}}` is not a placeholder")),
            });
            rest = &rest[open + close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_string()));
        }
        let t = SubjectTemplate(parts);
        let sample = t.render("s", "t", "o");
        let bad_token = sample.split('.').find(|tok| {
            tok.is_empty() || *tok == "*" || *tok == ">" || tok.chars().any(unsafe_char)
        });
        if let Some(tok) = bad_token {
            return Err(format!(
                "`{template}` makes a subject with the token `{tok}`: tokens must be non-empty, \
                 without spaces or wildcards"
            ));
        }
        Ok(t)
    }

    /// The subject of one event (`event_type` is its CloudEvent `type`).
    pub fn render(&self, source: &str, event_type: &str, origin: &str) -> String {
        let mut out = String::new();
        for part in &self.0 {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Source => push_token(&mut out, source),
                Part::Type => push_token(&mut out, event_type),
                Part::Origin => push_token(&mut out, origin),
            }
        }
        out
    }
}

fn unsafe_char(c: char) -> bool {
    c.is_whitespace() || c.is_control() || c == '*' || c == '>'
}

/// Appends a value as one subject token: dots, spaces and wildcards
/// become `_`, and an empty value is `_`.
fn push_token(out: &mut String, value: &str) {
    if value.is_empty() {
        out.push('_');
    }
    out.extend(
        value
            .chars()
            .map(|c| if c == '.' || unsafe_char(c) { '_' } else { c }),
    );
}

/// What to do with an event whose target refused it for good (4xx other
/// than 408, 410 and 429).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum OnFailure {
    /// Keep retrying: the stream waits (strict order, nothing skipped).
    #[default]
    Block,
    /// Record it in `dead_letters` and go on with the next event.
    DeadLetter,
}
