//! What a webhook answer means, and when to try again (sans-IO).
//!
//! Exists apart from the HTTP code so the policy (Standard Webhooks
//! practice: retry transient failures on a widening schedule with jitter,
//! honour `Retry-After`, stop on `410 Gone`) is unit-tested on its own.

use std::time::Duration;

pub use crate::config::OnFailure;

/// The meaning of one delivery attempt's result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Delivered,
    /// Transient (429, 5xx, 408, timeout, connection error): try again.
    Retry {
        retry_after: Option<Duration>,
        reason: String,
    },
    /// 410 Gone: the endpoint is gone; disable the sink.
    Gone,
    /// Any other 4xx, a redirect, or a request that cannot be built: the
    /// target will not take this event as it is (`status` when it answered).
    Refused {
        status: Option<u16>,
        reason: String,
    },
}

/// Classifies an HTTP status (`None`: no answer — timeout or connection error).
pub fn classify(status: Option<u16>, retry_after: Option<Duration>, error: &str) -> Verdict {
    match status {
        Some(200..=299) => Verdict::Delivered,
        Some(410) => Verdict::Gone,
        Some(s @ (408 | 429 | 500..=599)) => Verdict::Retry {
            retry_after,
            reason: format!("HTTP {s}"),
        },
        Some(s) if (400..500).contains(&s) => Verdict::Refused {
            status: Some(s),
            reason: format!("HTTP {s}"),
        },
        Some(s @ 300..=399) => Verdict::Refused {
            status: Some(s),
            reason: if error.is_empty() {
                format!("HTTP {s} redirect")
            } else {
                error.to_string()
            },
        },
        Some(s) => Verdict::Retry {
            retry_after,
            reason: format!("unexpected HTTP {s}"),
        },
        None => Verdict::Retry {
            retry_after: None,
            reason: error.to_string(),
        },
    }
}

/// Retry delays: the schedule, then its last step forever.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetrySchedule(pub Vec<Duration>);

impl Default for RetrySchedule {
    /// 1 s, 5 s, 30 s, 2 min, 10 min, then every 30 min.
    fn default() -> Self {
        RetrySchedule(
            [1, 5, 30, 120, 600, 1800]
                .into_iter()
                .map(Duration::from_secs)
                .collect(),
        )
    }
}

impl RetrySchedule {
    /// 1 s, 2 s, 5 s, 10 s, then every 30 s: for a target the operator runs
    /// (a NATS server), whose outage should be caught up within seconds of
    /// its end rather than on a webhook's widening schedule.
    pub fn quick() -> Self {
        RetrySchedule(
            [1, 2, 5, 10, 30]
                .into_iter()
                .map(Duration::from_secs)
                .collect(),
        )
    }

    /// The delay before retry `attempt` (1-based), jittered by ±20%
    /// (`jitter` ∈ [0, 1)), and never shorter than the server's `Retry-After`.
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>, jitter: f64) -> Duration {
        let i = (attempt.max(1) as usize - 1).min(self.0.len().saturating_sub(1));
        let base = self.0.get(i).copied().unwrap_or(Duration::from_secs(1));
        let jittered = base.mul_f64(0.8 + 0.4 * jitter.clamp(0.0, 1.0));
        retry_after.map_or(jittered, |ra| jittered.max(ra))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_mean_what_standard_webhooks_says() {
        assert_eq!(classify(Some(204), None, ""), Verdict::Delivered);
        assert_eq!(classify(Some(410), None, ""), Verdict::Gone);
        assert!(
            matches!(classify(Some(429), Some(Duration::from_secs(3)), ""),
            Verdict::Retry { retry_after: Some(d), .. } if d == Duration::from_secs(3))
        );
        assert!(matches!(
            classify(Some(503), None, ""),
            Verdict::Retry { .. }
        ));
        assert!(matches!(
            classify(Some(408), None, ""),
            Verdict::Retry { .. }
        ));
        assert!(matches!(
            classify(None, None, "connection refused"),
            Verdict::Retry { .. }
        ));
        assert_eq!(
            classify(Some(400), None, ""),
            Verdict::Refused {
                status: Some(400),
                reason: "HTTP 400".into()
            }
        );
        assert_eq!(
            classify(Some(302), None, "HTTP 302 redirect to https://x/"),
            Verdict::Refused {
                status: Some(302),
                reason: "HTTP 302 redirect to https://x/".into()
            }
        );
    }

    #[test]
    fn schedule_widens_then_repeats_its_last_step_with_jitter() {
        let s = RetrySchedule::default();
        assert_eq!(s.delay(1, None, 0.5), Duration::from_secs(1));
        assert_eq!(s.delay(4, None, 0.5), Duration::from_secs(120));
        assert_eq!(s.delay(6, None, 0.5), Duration::from_secs(1800));
        assert_eq!(s.delay(60, None, 0.5), Duration::from_secs(1800));
        assert_eq!(s.delay(1, None, 0.0), Duration::from_millis(800));
        assert_eq!(s.delay(1, None, 0.999).as_millis(), 1199);
        assert_eq!(
            s.delay(1, Some(Duration::from_secs(7)), 0.5),
            Duration::from_secs(7)
        );
    }
}
