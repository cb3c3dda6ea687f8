//! `[source]`: which wire format and, for VCD and ScaleIT, the REST side.
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::*;

/// `[source]`: the keys every source has, and its profile with its own.
#[derive(Clone, Debug)]
pub struct SourceConfig {
    pub name: String,
    /// The CloudEvent `source` attribute; defaults to `name`.
    pub uri: Option<String>,
    /// An event time later than now plus this is rejected (`future_time`):
    /// it would otherwise hold the stream's order hostage.
    pub max_clock_skew: HumanDuration,
    pub kind: SourceKind,
}

/// The keys every source has.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SourceCommon {
    name: String,
    uri: Option<String>,
    #[serde(default = "default_max_clock_skew")]
    max_clock_skew: HumanDuration,
}

/// Which wire format the source speaks, with the keys only it takes.
#[derive(Clone, Debug)]
pub enum SourceKind {
    /// VMware Cloud Director: envelope + audit event (docs/wire-formats.md §2–§3).
    Vcd(VcdSource),
    /// Any JSON over MQTT; identity and time found by JSON pointers.
    Mqtt(GenericSource),
    /// ScaleIT app-to-app messages (docs/wire-formats.md §6).
    Scaleit(ScaleitSource),
}

/// `kind = "vcd"`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VcdSource {
    /// Envelope types that carry events (others are skipped and counted).
    #[serde(default = "default_event_types")]
    pub event_types: Vec<String>,
    /// The cell's base URL (`https://vcd.example.com`). With it gapless
    /// logs in, shares the token with MQTT and polls the audit trail.
    pub url: Option<String>,
    /// The organisation to log in to (`System` for the provider).
    pub org: Option<String>,
    /// The user name (without `@org`).
    pub user: Option<String>,
    password_env: Option<String>,
    password_file: Option<PathBuf>,
    /// An API token (a long-lived OAuth refresh token) instead of a password.
    api_token_env: Option<String>,
    api_token_file: Option<PathBuf>,
    /// The API version sent in every `Accept` header.
    #[serde(default = "default_api_version")]
    pub api_version: String,
    #[serde(default)]
    pub tls: SourceTls,
    /// The login, resolved at load when `url` is set.
    #[serde(skip)]
    pub login: Option<VcdLogin>,
}

/// `kind = "mqtt"`: any JSON.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenericSource {
    /// JSON pointer to the event id (absent → SHA-256 of topic + body).
    pub id_pointer: Option<String>,
    /// JSON pointer to the event time (absent → receive time).
    pub time_pointer: Option<String>,
    /// JSON pointer to the event type (absent → the topic).
    pub type_pointer: Option<String>,
    /// Without `id_pointer`: the same topic and body within this window is
    /// one event.
    #[serde(default = "default_dedup_window")]
    pub dedup_window: HumanDuration,
}

/// `kind = "scaleit"`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScaleitSource {
    /// The apps to subscribe to (`app/<app>/#` each); empty = `app/#`.
    #[serde(default)]
    pub apps: Vec<String>,
    /// The app API URL, `{app}` replaced by the app name; a schema's URL
    /// is this + `/api/messages/` + the body's `$schema`.
    pub schema_base_url: Option<String>,
    /// A directory of schemas (`<dir>/<app>/<ref>`, then `<dir>/<ref>`),
    /// tried before `schema_base_url`.
    pub schema_dir: Option<PathBuf>,
    /// The apps' history endpoint (`{app}` = app name), read by the poller
    /// with `since` and `until` for what MQTT missed; none = MQTT only.
    pub history_url: Option<String>,
    /// A body without `$schema` is rejected unless this is false.
    #[serde(default = "default_true")]
    pub require_schema: bool,
    /// What happens to a message whose schema cannot be fetched.
    #[serde(default)]
    pub on_schema_unavailable: SchemaUnavailable,
    /// The same topic and body within this window is one event.
    #[serde(default = "default_dedup_window")]
    pub dedup_window: HumanDuration,
    /// `$schema` URLs that may be fetched besides those under
    /// `schema_base_url` (prefixes, e.g. `"https://schemas.example.com/"`).
    #[serde(default)]
    pub schema_allow: Vec<String>,
    /// The largest schema body fetched.
    #[serde(default = "default_schema_max_body")]
    pub schema_max_body: ByteSize,
    /// Schemas kept in memory (least recently used dropped first).
    #[serde(default = "default_schema_cache")]
    pub schema_cache: usize,
    /// History and schema requests: headers whose values come from
    /// environment variables (`{ "X-Api-Key" = "APPS_API_KEY" }`).
    #[serde(default)]
    pub headers_env: BTreeMap<String, String>,
    /// History and schema requests: `Authorization: Bearer` from an
    /// environment variable or a file.
    pub bearer_env: Option<String>,
    pub bearer_file: Option<PathBuf>,
    #[serde(default)]
    pub tls: SourceTls,
    /// `headers_env` and the bearer token, read at load.
    #[serde(skip)]
    pub secret_headers: Vec<(String, Secret)>,
}

pub(super) fn default_schema_max_body() -> ByteSize {
    ByteSize(1 << 20)
}
pub(super) fn default_schema_cache() -> usize {
    1000
}
pub(super) fn default_max_clock_skew() -> HumanDuration {
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

pub(super) fn default_dedup_window() -> HumanDuration {
    HumanDuration(Duration::from_secs(10 * 60))
}

pub(super) fn default_api_version() -> String {
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

pub(super) fn default_event_types() -> Vec<String> {
    vec!["EVENT".into(), "EXTERNAL_EVENT".into()]
}

impl SourceConfig {
    /// Reads `[source]` from its table: a key of another profile is
    /// refused with its name, then the profile's own checks run.
    pub(super) fn from_table(table: toml::Table) -> Result<Self, ConfigError> {
        let tagged = Tagged {
            at: "source".into(),
            what: "source",
            kinds: vec![
                ("vcd", keys_of::<VcdSource>()),
                ("mqtt", keys_of::<GenericSource>()),
                ("scaleit", keys_of::<ScaleitSource>()),
            ],
        };
        let (common, kind, own): (SourceCommon, _, _) = tagged.split(table)?;
        let kind = match kind {
            "vcd" => SourceKind::Vcd(tagged.de(own)?),
            "mqtt" => SourceKind::Mqtt(tagged.de(own)?),
            _ => SourceKind::Scaleit(tagged.de(own)?),
        };
        if common.name.trim().is_empty() {
            return Err(ConfigError::invalid(
                "source.name",
                "is empty",
                "name the source, e.g. name = \"vcd-lab\"",
            ));
        }
        if common.max_clock_skew.0.is_zero() {
            return Err(ConfigError::invalid(
                "source.max_clock_skew",
                "is 0: every event stamped a moment ahead of this host's clock would be rejected",
                "the default, \"5m\", allows for clocks that drift apart",
            ));
        }
        match &kind {
            SourceKind::Vcd(v) => v.check()?,
            SourceKind::Mqtt(g) => g.check()?,
            SourceKind::Scaleit(s) => s.check()?,
        }
        Ok(SourceConfig {
            name: common.name,
            uri: common.uri,
            max_clock_skew: common.max_clock_skew,
            kind,
        })
    }

    /// Reads the source's secrets: the VCD login, the ScaleIT headers.
    pub(super) fn resolve_secrets(&mut self) -> Result<(), ConfigError> {
        match &mut self.kind {
            SourceKind::Vcd(v) => v.login = v.resolve_login()?,
            SourceKind::Scaleit(s) => {
                s.secret_headers =
                    secret_headers("source", &s.headers_env, &s.bearer_env, &s.bearer_file)?
            }
            SourceKind::Mqtt(_) => {}
        }
        Ok(())
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

fn check_tls(tls: &SourceTls) -> Result<(), ConfigError> {
    if let (true, Some(ca)) = (tls.insecure_skip_verify, &tls.ca_file) {
        return Err(ConfigError::invalid(
            "source.tls.insecure_skip_verify",
            format!(
                "is true, so source.tls.ca_file {} would be ignored",
                ca.display()
            ),
            "keep ca_file (verification against your CA) and remove insecure_skip_verify",
        ));
    }
    Ok(())
}

fn check_dedup_window(window: HumanDuration) -> Result<(), ConfigError> {
    if window.0.is_zero() {
        return Err(ConfigError::invalid(
            "source.dedup_window",
            "is 0: QoS 1 redeliveries would become new events",
            "the default, \"10m\", outlasts any redelivery",
        ));
    }
    Ok(())
}

impl GenericSource {
    fn check(&self) -> Result<(), ConfigError> {
        check_dedup_window(self.dedup_window)?;
        for (key, value) in [
            ("source.id_pointer", &self.id_pointer),
            ("source.time_pointer", &self.time_pointer),
            ("source.type_pointer", &self.type_pointer),
        ] {
            if let Some(p) = value
                .as_deref()
                .filter(|p| !p.is_empty() && !p.starts_with('/'))
            {
                return Err(ConfigError::invalid(
                    key,
                    format!("`{p}` is not a JSON pointer"),
                    "a JSON pointer starts with '/', e.g. \"/id\" or \"/data/id\"",
                ));
            }
        }
        Ok(())
    }
}

impl VcdSource {
    /// What needs no secret: the URL, and login keys only with a URL.
    fn check(&self) -> Result<(), ConfigError> {
        check_tls(&self.tls)?;
        match &self.url {
            Some(raw) => vcd_url(raw).map(drop),
            None => {
                for (key, set) in [
                    ("source.org", self.org.is_some()),
                    ("source.user", self.user.is_some()),
                    ("source.password_env", self.password_env.is_some()),
                    ("source.api_token_env", self.api_token_env.is_some()),
                ] {
                    if set {
                        return Err(ConfigError::invalid(
                            key,
                            "has no effect without source.url",
                            "set source.url = \"https://<vcd-host>\", or remove the key",
                        ));
                    }
                }
                Ok(())
            }
        }
    }

    /// The login, when `url` is set, with its secret read.
    fn resolve_login(&self) -> Result<Option<VcdLogin>, ConfigError> {
        let Some(raw) = &self.url else {
            return Ok(None);
        };
        let url = vcd_url(raw)?;
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
            &self.org,
            "org = \"System\" (provider) or your tenant org",
        )?;
        let secret = match (
            read_secret(
                "source.password_env",
                "source.password_file",
                &self.password_env,
                &self.password_file,
            )?,
            read_secret(
                "source.api_token_env",
                "source.api_token_file",
                &self.api_token_env,
                &self.api_token_file,
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
            VcdSecret::Password(_) => need("source.user", &self.user, "user = \"administrator\"")?,
            VcdSecret::ApiToken(_) => self.user.clone().unwrap_or_default(),
        };
        Ok(Some(VcdLogin {
            url,
            org,
            user,
            secret,
            api_version: self.api_version.clone(),
            tls: self.tls.clone(),
        }))
    }
}

impl ScaleitSource {
    /// The apps are names, URLs are URLs, and validation has somewhere to
    /// find schemas.
    fn check(&self) -> Result<(), ConfigError> {
        check_tls(&self.tls)?;
        check_dedup_window(self.dedup_window)?;
        if let Some(app) = self
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
        if let Some(base) = &self.schema_base_url {
            app_url_template(
                "source.schema_base_url",
                base,
                "http://{app}.apps.example.com",
            )?;
        }
        if let Some(bad) = self.schema_allow.iter().find(|p| {
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
        if let Some(history) = &self.history_url {
            app_url_template(
                "source.history_url",
                history,
                "http://{app}.apps.example.com/api/history",
            )?;
            if history.contains("{app}") && self.apps.is_empty() {
                return Err(ConfigError::invalid(
                    "source.history_url",
                    "names `{app}`, but source.apps is empty, so there is no app to ask",
                    "list the apps, e.g. apps = [\"de-ondics-pacman\"], or give one URL for all apps",
                ));
            }
        }
        if self.require_schema && self.schema_base_url.is_none() && self.schema_dir.is_none() {
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
pub(super) fn app_url_template(
    key: &str,
    template: &str,
    example: &str,
) -> Result<(), ConfigError> {
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

/// The VCD cell's base URL from `source.url` (no secret needed).
pub(super) fn vcd_url(raw: &str) -> Result<url::Url, ConfigError> {
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
