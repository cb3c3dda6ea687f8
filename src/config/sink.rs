//! `[[sink]]`: where the ordered stream goes.
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::*;

/// One `[[sink]]`: the keys every sink has, and its kind with its own.
#[derive(Clone, Debug)]
pub struct SinkConfig {
    pub name: String,
    /// Events read from the store and written per batch.
    pub batch: u32,
    /// `/readyz` fails once the sink has been stuck on one event this long.
    pub alert_after: HumanDuration,
    /// Deliver gap markers (`io.gapless.gap`, `io.gapless.verified`); when
    /// false the cursor still passes them.
    pub include_markers: bool,
    pub kind: SinkKind,
}

/// The keys every sink has.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SinkCommon {
    name: String,
    #[serde(default = "default_sink_batch")]
    batch: u32,
    #[serde(default = "default_sink_alert_after")]
    alert_after: HumanDuration,
    #[serde(default = "default_true")]
    include_markers: bool,
}

/// Where a sink delivers, with the keys only that kind takes.
#[derive(Clone, Debug)]
pub enum SinkKind {
    File(FileSink),
    Stdout(StdoutSink),
    Webhook(WebhookSink),
    /// A NATS JetStream stream (publish acks, `Nats-Msg-Id` dedup).
    Nats(NatsSink),
    /// A Kafka topic (idempotent producer, delivery reports).
    Kafka(KafkaSink),
}

impl SinkKind {
    pub fn name(&self) -> &'static str {
        match self {
            SinkKind::File(_) => "file",
            SinkKind::Stdout(_) => "stdout",
            SinkKind::Webhook(_) => "webhook",
            SinkKind::Nats(_) => "nats",
            SinkKind::Kafka(_) => "kafka",
        }
    }

    /// The webhook, NATS or Kafka sink's delays between retries.
    pub fn retry_schedule(&self) -> Option<&[HumanDuration]> {
        match self {
            SinkKind::Webhook(w) => w.retry_schedule.as_deref(),
            SinkKind::Nats(n) => n.retry_schedule.as_deref(),
            SinkKind::Kafka(k) => k.retry_schedule.as_deref(),
            SinkKind::File(_) | SinkKind::Stdout(_) => None,
        }
    }
}

/// `kind = "file"`: the JSON Lines file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSink {
    #[serde(default)]
    pub path: PathBuf,
}

/// `kind = "stdout"`: `json` (default) or `compact` lines.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StdoutSink {
    #[serde(default)]
    pub format: LineFormat,
}

/// `kind = "webhook"`: signed POSTs, one event each.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSink {
    #[serde(default)]
    pub url: String,
    /// The signing secret (`whsec_<base64>` or plain), from an env var or a file.
    secret_env: Option<String>,
    secret_file: Option<PathBuf>,
    /// Per-request timeout.
    #[serde(default = "default_webhook_timeout")]
    pub timeout: HumanDuration,
    /// Extra request headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Headers whose values come from environment variables.
    #[serde(default)]
    pub headers_env: BTreeMap<String, String>,
    /// `Authorization: Bearer` from an environment variable or a file.
    pub bearer_env: Option<String>,
    pub bearer_file: Option<PathBuf>,
    /// Extra PEM CAs trusted besides the system roots.
    pub ca_file: Option<PathBuf>,
    /// What a refused event (4xx) does: `block` or `dead-letter`.
    #[serde(default)]
    pub on_failure: OnFailure,
    /// Delays between retries; the last repeats forever.
    pub retry_schedule: Option<Vec<HumanDuration>>,
    /// The signing secret, read at load.
    #[serde(skip)]
    pub secret: Option<Secret>,
    /// `headers_env` and the bearer token, read at load.
    #[serde(skip)]
    pub secret_headers: Vec<(String, Secret)>,
}

/// `kind = "nats"`: a JetStream stream.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsSink {
    /// The server (`nats://host:4222`, or `tls://` for TLS), several
    /// separated by commas.
    #[serde(default)]
    pub url: String,
    /// The subject of each event; `{source}` (the source's name), `{type}`
    /// and `{origin}` are replaced by the event's values with `.`, spaces
    /// and wildcards made `_`.
    #[serde(default = "default_nats_subject")]
    pub subject: String,
    /// User name, with `password_env` or `password_file`.
    pub user: Option<String>,
    password_env: Option<String>,
    password_file: Option<PathBuf>,
    /// An auth token from an environment variable or a file.
    token_env: Option<String>,
    token_file: Option<PathBuf>,
    /// A `.creds` file (JWT and NKey seed) for decentralised auth.
    pub creds_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
    /// The wait for a publish ack.
    #[serde(default = "default_webhook_timeout")]
    pub timeout: HumanDuration,
    pub retry_schedule: Option<Vec<HumanDuration>>,
    /// Publishes awaiting their ack at once.
    #[serde(default = "default_in_flight")]
    pub max_in_flight: u32,
    /// How it authenticates, resolved at load.
    #[serde(skip)]
    pub auth: NatsAuth,
    /// `subject`, parsed at load.
    #[serde(skip)]
    template: Option<SubjectTemplate>,
}

/// `kind = "kafka"`: one topic, idempotent producer.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSink {
    /// The bootstrap servers, `host:port` separated by commas.
    #[serde(default)]
    pub brokers: String,
    /// The topic every event goes to.
    #[serde(default)]
    pub topic: String,
    /// What keys a record (and so picks its partition).
    #[serde(default)]
    pub key: KafkaKey,
    /// Further librdkafka producer settings (`security.protocol`,
    /// `sasl.mechanisms`, `compression.type`, ...).
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// One transaction per batch under this id; a successor with the same
    /// id fences this producer.
    pub transactional_id: Option<String>,
    /// SASL user, with `password_env` or `password_file`.
    pub user: Option<String>,
    password_env: Option<String>,
    password_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
    /// The wait for a delivery report.
    #[serde(default = "default_webhook_timeout")]
    pub timeout: HumanDuration,
    pub retry_schedule: Option<Vec<HumanDuration>>,
    #[serde(default = "default_in_flight")]
    pub max_in_flight: u32,
    /// The SASL password, read at load.
    #[serde(skip)]
    pub password: Option<Secret>,
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

pub(super) fn default_sink_alert_after() -> HumanDuration {
    HumanDuration(Duration::from_secs(5 * 60))
}
pub(super) fn default_webhook_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(10))
}
fn default_nats_subject() -> String {
    NatsSink::DEFAULT_SUBJECT.into()
}
fn default_in_flight() -> u32 {
    256
}

impl SinkConfig {
    /// Reads `[[sink]]` number `i` from its table: a key of another kind
    /// is refused with its name, then the kind's own checks run.
    pub(super) fn from_table(i: usize, table: toml::Table) -> Result<Self, ConfigError> {
        let tagged = Tagged {
            at: format!("sink[{i}]"),
            what: "sink",
            kinds: vec![
                ("file", keys_of::<FileSink>()),
                ("stdout", keys_of::<StdoutSink>()),
                ("webhook", keys_of::<WebhookSink>()),
                ("nats", keys_of::<NatsSink>()),
                ("kafka", keys_of::<KafkaSink>()),
            ],
        };
        let (common, kind, own): (SinkCommon, _, _) = tagged.split(table)?;
        let mut kind = match kind {
            "file" => SinkKind::File(tagged.de(own)?),
            "stdout" => SinkKind::Stdout(tagged.de(own)?),
            "webhook" => SinkKind::Webhook(tagged.de(own)?),
            "nats" => SinkKind::Nats(tagged.de(own)?),
            _ => SinkKind::Kafka(tagged.de(own)?),
        };
        let at = &tagged.at;
        if common.batch == 0 {
            return Err(ConfigError::invalid(
                &key(at, "batch"),
                "must be at least 1",
                "the default is 512",
            ));
        }
        if kind.retry_schedule().is_some_and(|s| s.is_empty()) {
            return Err(ConfigError::invalid(
                &key(at, "retry_schedule"),
                "is empty",
                "e.g. [\"1s\", \"5s\", \"30s\", \"2m\", \"10m\", \"30m\"], or remove it for that default",
            ));
        }
        match &mut kind {
            SinkKind::File(f) if f.path.as_os_str().is_empty() => {
                return Err(ConfigError::invalid(
                    &key(at, "path"),
                    "a file sink needs a path",
                    "add path = \"events.jsonl\"",
                ));
            }
            SinkKind::Webhook(w) => w.check(at)?,
            SinkKind::Nats(n) => n.check(at)?,
            SinkKind::Kafka(k) => k.check(at)?,
            SinkKind::File(_) | SinkKind::Stdout(_) => {}
        }
        Ok(SinkConfig {
            name: common.name,
            batch: common.batch,
            alert_after: common.alert_after,
            include_markers: common.include_markers,
            kind,
        })
    }

    /// Reads the sink's secrets from their variables and files.
    pub(super) fn resolve_secrets(&mut self, i: usize) -> Result<(), ConfigError> {
        let at = &format!("sink[{i}]");
        match &mut self.kind {
            SinkKind::Webhook(w) => w.resolve(at),
            SinkKind::Nats(n) => n.resolve(at),
            SinkKind::Kafka(k) => {
                k.password = read_secret(
                    &key(at, "password_env"),
                    &key(at, "password_file"),
                    &k.password_env,
                    &k.password_file,
                )?;
                Ok(())
            }
            SinkKind::File(_) | SinkKind::Stdout(_) => Ok(()),
        }
    }
}

impl WebhookSink {
    fn check(&self, at: &str) -> Result<(), ConfigError> {
        let url = &self.url;
        if !(url.starts_with("http://") || url.starts_with("https://"))
            || url::Url::parse(url).is_err()
        {
            return Err(ConfigError::invalid(
                &key(at, "url"),
                format!("`{url}` is not an http(s) URL"),
                "e.g. url = \"https://siem.example.com/hooks/vcd\"",
            ));
        }
        Ok(())
    }

    /// The signing secret (a `whsec_` secret must be base64) and the
    /// secret headers.
    fn resolve(&mut self, at: &str) -> Result<(), ConfigError> {
        let (env_key, file_key) = (key(at, "secret_env"), key(at, "secret_file"));
        let at = if self.secret_file.is_some() {
            &file_key
        } else {
            &env_key
        };
        let secret = read_secret(&env_key, &file_key, &self.secret_env, &self.secret_file)?;
        if let Some(Err(e)) = secret.as_ref().map(Secret::signing_key) {
            return Err(ConfigError::invalid(
                at,
                e,
                "a Standard Webhooks secret is `whsec_` + base64 of the key bytes; or give a plain secret without the prefix",
            ));
        }
        self.secret = secret;
        self.secret_headers =
            secret_headers(at, &self.headers_env, &self.bearer_env, &self.bearer_file)?;
        Ok(())
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
#[derive(Clone, Debug, Default)]
pub enum NatsAuth {
    #[default]
    Anonymous,
    UserPassword {
        user: String,
        password: Secret,
    },
    Token(Secret),
    CredsFile(PathBuf),
}

impl NatsSink {
    /// The subject template when `subject` is not set.
    pub const DEFAULT_SUBJECT: &'static str = "gapless.{source}.{type}";

    fn check(&mut self, at: &str) -> Result<(), ConfigError> {
        let bad = self.url.split(',').map(str::trim).find(|u| {
            !(u.starts_with("nats://") || u.starts_with("tls://")) || url::Url::parse(u).is_err()
        });
        if let Some(u) = bad {
            return Err(ConfigError::invalid(
                &key(at, "url"),
                format!("`{u}` is not a nats:// or tls:// URL"),
                "e.g. url = \"nats://127.0.0.1:4222\" (several servers separated by commas)",
            ));
        }
        match SubjectTemplate::parse(&self.subject) {
            Ok(t) => self.template = Some(t),
            Err(e) => {
                return Err(ConfigError::invalid(
                    &key(at, "subject"),
                    e,
                    format!(
                        "tokens separated by dots, with {{source}}, {{type}} or {{origin}}; the default is \"{}\"",
                        Self::DEFAULT_SUBJECT
                    ),
                ));
            }
        }
        at_least_one(at, self.max_in_flight)?;
        let password = self.password_env.is_some() || self.password_file.is_some();
        if self.user.is_some() != password {
            return Err(ConfigError::invalid(
                &key(at, if password { "user" } else { "password_env" }),
                "user and password go together",
                "set both user and password_env (or password_file)",
            ));
        }
        let token = self.token_env.is_some() || self.token_file.is_some();
        let ways = [self.user.is_some(), token, self.creds_file.is_some()];
        if ways.iter().filter(|w| **w).count() > 1 {
            return Err(ConfigError::invalid(
                &key(at, "creds_file"),
                "more than one way to authenticate is set",
                "keep one of user/password_env, token_env/token_file and creds_file",
            ));
        }
        Ok(())
    }

    /// The subject template, parsed when the config was read.
    pub fn template(&self) -> &SubjectTemplate {
        self.template
            .as_ref()
            .expect("a loaded config has parsed it")
    }

    /// Whether a password or token would cross the connection.
    pub fn sends_secret(&self) -> bool {
        self.password_env.is_some()
            || self.password_file.is_some()
            || self.token_env.is_some()
            || self.token_file.is_some()
    }

    /// Reads the credentials from their variables or files.
    fn resolve(&mut self, at: &str) -> Result<(), ConfigError> {
        if let Some(path) = &self.creds_file {
            if let Err(e) = std::fs::metadata(path) {
                return Err(ConfigError::invalid(
                    &key(at, "creds_file"),
                    format!("cannot read {}: {e}", path.display()),
                    "point it at the .creds file `nsc` or your NATS operator issued",
                ));
            }
            self.auth = NatsAuth::CredsFile(path.clone());
            return Ok(());
        }
        if let Some(token) = read_secret(
            &key(at, "token_env"),
            &key(at, "token_file"),
            &self.token_env,
            &self.token_file,
        )? {
            self.auth = NatsAuth::Token(token);
            return Ok(());
        }
        let password = read_secret(
            &key(at, "password_env"),
            &key(at, "password_file"),
            &self.password_env,
            &self.password_file,
        )?;
        self.auth = match (&self.user, password) {
            (Some(user), Some(password)) => NatsAuth::UserPassword {
                user: user.clone(),
                password,
            },
            _ => NatsAuth::Anonymous,
        };
        Ok(())
    }
}

fn at_least_one(at: &str, max_in_flight: u32) -> Result<(), ConfigError> {
    if max_in_flight == 0 {
        return Err(ConfigError::invalid(
            &key(at, "max_in_flight"),
            "must be at least 1",
            format!("the default is {}", default_in_flight()),
        ));
    }
    Ok(())
}

impl KafkaSink {
    fn check(&self, at: &str) -> Result<(), ConfigError> {
        if self.brokers.trim().is_empty() {
            return Err(ConfigError::invalid(
                &key(at, "brokers"),
                "a kafka sink needs its bootstrap servers",
                "e.g. brokers = \"kafka1:9092,kafka2:9092\"",
            ));
        }
        let topic = &self.topic;
        let legal = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
        if topic.is_empty() || topic.len() > 249 || !topic.chars().all(legal) {
            return Err(ConfigError::invalid(
                &key(at, "topic"),
                format!("`{topic}` is not a Kafka topic name"),
                "1 to 249 of a-z, A-Z, 0-9, `.`, `_` and `-`, e.g. topic = \"vcd-events\"",
            ));
        }
        at_least_one(at, self.max_in_flight)?;
        for fixed in [
            "enable.idempotence",
            "acks",
            "bootstrap.servers",
            "sasl.password",
            "transactional.id",
        ] {
            if self.properties.contains_key(fixed) {
                return Err(ConfigError::invalid(
                    &format!("{}.\"{fixed}\"", key(at, "properties")),
                    "gapless sets this itself",
                    "remove it: the producer is always idempotent with acks = all; \
                     brokers, password_env and transactional_id have their own keys",
                ));
            }
        }
        if self.user.is_some() != (self.password_env.is_some() || self.password_file.is_some()) {
            return Err(ConfigError::invalid(
                &key(at, "password_env"),
                "user and password go together",
                "set both user and password_env (or password_file), and properties \
                 `sasl.mechanisms` and `security.protocol`",
            ));
        }
        Ok(())
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
