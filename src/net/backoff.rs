//! Backoff: how long to wait before the next attempt, for every client
//! that retries (the MQTT reconnect, REST calls, logins).

use std::time::Duration;

/// Reconnect delay for the `attempt`-th consecutive failure (1-based):
/// exponential from 100 ms, capped at `max`, scaled by `jitter` ∈ [0, 1)
/// into its upper half so many clients do not reconnect in lockstep.
pub fn backoff(attempt: u32, max: Duration, jitter: f64) -> Duration {
    let base = Duration::from_millis(100)
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(20))
        .min(max);
    base.mul_f64(0.5 + jitter.clamp(0.0, 1.0) / 2.0)
}

/// Delay before retry `attempt` (1-based): the server's `Retry-After` when
/// it gave one, else exponential from 500 ms to 30 s, with jitter.
pub fn retry_delay(attempt: u32, retry_after: Option<Duration>, jitter: f64) -> Duration {
    let backoff = backoff(attempt + 2, Duration::from_secs(30), jitter);
    match retry_after {
        Some(ra) => ra + backoff.mul_f64(0.1),
        None => backoff,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps_with_jitter_in_the_upper_half() {
        let max = Duration::from_secs(30);
        assert_eq!(backoff(1, max, 1.0), Duration::from_millis(100));
        assert_eq!(backoff(1, max, 0.0), Duration::from_millis(50));
        assert_eq!(backoff(4, max, 1.0), Duration::from_millis(800));
        assert_eq!(backoff(30, max, 1.0), max);
        assert_eq!(backoff(u32::MAX, max, 0.0), max / 2);
        for attempt in 1..12 {
            assert!(backoff(attempt, max, 0.3) <= backoff(attempt + 1, max, 0.3));
        }
    }

    #[test]
    fn retry_delay_honours_retry_after() {
        assert!(retry_delay(1, Some(Duration::from_secs(2)), 0.0) >= Duration::from_secs(2));
        assert!(retry_delay(1, None, 0.0) >= Duration::from_millis(200));
        assert!(retry_delay(30, None, 1.0) <= Duration::from_secs(30));
    }
}
