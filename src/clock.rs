//! The daemon's clock.
//!
//! Wall time, except when a soak test compresses a month into minutes:
//! `GAPLESS_TEST_CLOCK=<start_us>:<rate>` makes time run `rate` times as
//! fast from the instant `start_us` (µs since the epoch). Everything that
//! reasons in event time (retention, the watermark, `max_hold`, received
//! times) then sees the compressed clock, so a 7-day retention can be
//! watched at work without changing the knob. Not for production: a
//! warning is logged when it is set.

use std::sync::OnceLock;
use std::time::Duration;

use chrono::Utc;

/// The compression in force: (start µs, rate).
fn compression() -> Option<(i64, f64)> {
    static CLOCK: OnceLock<Option<(i64, f64)>> = OnceLock::new();
    *CLOCK.get_or_init(|| {
        let text = std::env::var("GAPLESS_TEST_CLOCK").ok()?;
        parse(&text)
    })
}

/// Parses `<start_us>:<rate>`; a rate must be positive.
fn parse(text: &str) -> Option<(i64, f64)> {
    let (start, rate) = text.split_once(':')?;
    let (start, rate) = (start.trim().parse().ok()?, rate.trim().parse::<f64>().ok()?);
    (rate > 0.0 && rate.is_finite()).then_some((start, rate))
}

/// `real_us` on a clock compressed from `start_us` by `rate`.
pub fn compressed(real_us: i64, start_us: i64, rate: f64) -> i64 {
    start_us + ((real_us - start_us) as f64 * rate) as i64
}

/// Current time in microseconds since the Unix epoch.
pub fn now_us() -> i64 {
    let real = Utc::now().timestamp_micros();
    match compression() {
        None => real,
        Some((start, rate)) => compressed(real, start, rate),
    }
}

/// How long a span of clock time `d` lasts in real time (timers sleep in
/// real time).
pub fn real(d: Duration) -> Duration {
    match compression() {
        None => d,
        Some((_, rate)) => d.div_f64(rate),
    }
}

/// Logs a warning when the clock is compressed.
pub fn warn_if_compressed() {
    if let Some((start, rate)) = compression() {
        tracing::warn!(
            start_us = start,
            rate,
            "GAPLESS_TEST_CLOCK is set: time runs {rate}x fast (tests only)"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_compressed_clock_starts_at_start_and_runs_rate_times_as_fast() {
        assert_eq!(parse("1000:2.5"), Some((1000, 2.5)));
        assert_eq!(parse("1000:0"), None);
        assert_eq!(parse("nope"), None);
        assert_eq!(compressed(1000, 1000, 50.0), 1000);
        assert_eq!(compressed(3000, 1000, 50.0), 101_000);
    }
}
