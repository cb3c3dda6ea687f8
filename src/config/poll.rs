//! `[poll]` and `[stream]`: the gap poller and the release rule.
use std::time::Duration;

use serde::Deserialize;

use super::*;

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

pub(super) fn default_poll_alert_after() -> HumanDuration {
    HumanDuration(Duration::from_secs(15 * 60))
}
pub(super) fn default_schedule() -> String {
    "0 * * * * *".into()
}
pub(super) fn default_overlap() -> HumanDuration {
    HumanDuration(Duration::from_secs(120))
}
pub(super) fn default_visibility_lag() -> HumanDuration {
    HumanDuration(Duration::from_secs(5))
}
pub(super) fn default_page_size() -> u32 {
    128
}
pub(super) fn default_max_window() -> HumanDuration {
    HumanDuration(Duration::from_secs(3600))
}
pub(super) fn default_initial_lookback() -> HumanDuration {
    HumanDuration(Duration::ZERO)
}
pub(super) fn default_max_retries() -> u32 {
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
    pub order: Order,
    /// `live` (default) or `verified` (strict: only what the poller confirmed).
    #[serde(default)]
    pub release: ReleaseMode,
    /// How long behind real time the live watermark trails.
    #[serde(default = "default_settle")]
    pub settle: HumanDuration,
    /// Release an event that waited this long even above the watermark.
    #[serde(default = "default_max_hold")]
    pub max_hold: HumanDuration,
}

pub(super) fn default_settle() -> HumanDuration {
    HumanDuration(Duration::from_secs(2))
}
pub(super) fn default_max_hold() -> HumanDuration {
    HumanDuration(Duration::from_secs(15 * 60))
}

impl Default for StreamConfig {
    fn default() -> Self {
        toml::from_str("").expect("every [stream] key has a default")
    }
}

/// How the stream is ordered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Order {
    #[default]
    EventTime,
    Arrival,
}

/// Which watermark releases events in `event-time` order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ReleaseMode {
    /// `max(verified, live)`: low latency while MQTT is unbroken.
    #[default]
    Live,
    /// Only what the poller verified against the REST history (strict).
    Verified,
}

/// A 6-field cron expression (seconds first, UTC), parsed.
pub fn parse_schedule(expr: &str) -> Result<croner::Cron, String> {
    if expr.split_whitespace().count() != 6 {
        return Err(format!(
            "`{expr}` must have 6 fields (sec min hour day month weekday)"
        ));
    }
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Required)
        .dom_and_dow(true)
        .build()
        .parse(expr)
        .map_err(|e| format!("`{expr}`: {e}"))
}
