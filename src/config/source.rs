//! `[source]`: which wire format and, for VCD and ScaleIT, the REST side.
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::*;

/// Which wire format the source speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// VMware Cloud Director: envelope + audit event (docs/wire-formats.md §2–§3).
    Vcd,
    /// Any JSON over MQTT; identity and time found by JSON pointers.
    Mqtt,
    /// ScaleIT app-to-app messages (docs/wire-formats.md §6).
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
pub(super) fn vcd_url(kind: SourceKind, raw: &str) -> Result<url::Url, ConfigError> {
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
