//! `[retry]`: when a failed attempt is tried again (exponential backoff with full jitter, or the
//! provider's `Retry-After`), and when a target stops being retried at all (`max_age`). Read by
//! the outcome writer.

use crate::settings::rules::{at_least_ms, millis, within, within_ms, SettingsError, DAY_MS, SECOND_MS};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// `[retry]`: exponential backoff with full jitter, and the deadline of a target.
#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// Attempts per target before it is dead-lettered.
    pub max_attempts: u32,
    /// First backoff ceiling (`retry.base_ms`).
    #[serde(rename = "base_ms", with = "millis")]
    pub base: Duration,
    /// Largest backoff, also the clamp for `Retry-After` (`retry.max_ms`).
    #[serde(rename = "max_ms", with = "millis")]
    pub max: Duration,
    /// A target not delivered this long after it was first queued fails instead of being
    /// retried or deferred again (`retry.max_age_ms`).
    #[serde(rename = "max_age_ms", with = "millis")]
    pub max_age: Duration,
}

impl RetryPolicy {
    pub fn validate(&self) -> Result<(), SettingsError> {
        within("retry.max_attempts", u64::from(self.max_attempts), 1..=100)?;
        within_ms("retry.base_ms", self.base, 1..=DAY_MS)?;
        within_ms("retry.max_ms", self.max, 1..=7 * DAY_MS)?;
        at_least_ms("retry.max_ms", self.max, "retry.base_ms", self.base)?;
        within_ms("retry.max_age_ms", self.max_age, 60 * SECOND_MS..=30 * DAY_MS)
    }

    /// The delay before attempt number `attempt + 1`, given that `attempt` attempts failed:
    /// uniform in `[0, min(max, base * 2^(attempt-1))]` ("full jitter"), or the provider's
    /// `Retry-After` clamped to `[base, max]` when it sent one.
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        if let Some(after) = retry_after {
            return after.clamp(self.base, self.max);
        }
        let exp = attempt.saturating_sub(1).min(30);
        let ceiling = self.base.saturating_mul(1u32 << exp).min(self.max);
        let ms = ceiling.as_millis() as u64;
        Duration::from_millis(if ms == 0 { 0 } else { rand::random_range(0..=ms) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: RetryPolicy = RetryPolicy {
        max_attempts: 5,
        base: Duration::from_millis(100),
        max: Duration::from_millis(1000),
        max_age: Duration::from_secs(86_400),
    };

    #[test]
    fn backoff_grows_exponentially_and_stays_under_the_cap() {
        for _ in 0..200 {
            assert!(POLICY.delay(1, None) <= Duration::from_millis(100));
            assert!(POLICY.delay(3, None) <= Duration::from_millis(400));
            assert!(POLICY.delay(40, None) <= Duration::from_millis(1000));
        }
    }

    #[test]
    fn full_jitter_spreads_delays_over_the_whole_window() {
        let delays: Vec<_> = (0..200).map(|_| POLICY.delay(4, None).as_millis()).collect();
        assert!(delays.iter().any(|&d| d < 200), "{delays:?}");
        assert!(delays.iter().any(|&d| d > 600), "{delays:?}");
    }

    #[test]
    fn retry_after_is_honoured_but_clamped() {
        assert_eq!(POLICY.delay(1, Some(Duration::from_millis(500))), Duration::from_millis(500));
        assert_eq!(POLICY.delay(1, Some(Duration::from_secs(60))), Duration::from_millis(1000));
        assert_eq!(POLICY.delay(1, Some(Duration::ZERO)), Duration::from_millis(100));
    }

    #[test]
    fn range_errors_print_milliseconds_and_name_the_key() {
        let policy = RetryPolicy { max_age: Duration::from_secs(1), ..POLICY };
        let err = policy.validate().unwrap_err();
        assert_eq!(err.to_string(), "`retry.max_age_ms` must be between 60000 and 2592000000, got 1000");
        let policy = RetryPolicy { max: Duration::from_millis(50), ..POLICY };
        assert_eq!(policy.validate().unwrap_err().message, "must be at least retry.base_ms (100)");
        assert!(POLICY.validate().is_ok());
    }
}
