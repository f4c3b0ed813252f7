//! What the engine needs to know, handed in by the binary (which owns loading the layers of
//! configuration). The engine owns each section it uses, and that type is what is deserialized
//! from the configuration (`#[serde(deny_unknown_fields)]`): there is no second copy to convert.
//!
//! | section | type | where |
//! |---|---|---|
//! | `[worker]` | [`WorkerSettings`] | here |
//! | `[retry]` | [`RetryPolicy`] | here |
//! | `[listener]` | [`ListenerSettings`] | here (the listener reads [`EngineSettings`]) |
//! | `[claim]` | `ClaimSettings` | `periodic::claim` |
//! | `[circuit]` | `CircuitSettings` | `circuit` |
//! | `[retention]` | `RetentionPolicy` | `periodic::retention` |
//! | `[scheduler]` | `SchedulerSettings` | `periodic::delay` |
//! | `[payload]` | `PayloadSettings` | `payload` |
//! | `[providers.*]` | `Providers` and one struct per provider | `providers`, `providers::<p>` |
//!
//! Durations are [`Duration`] fields, read once from the `_ms` keys through [`millis`].
//! Validation is split: each section's `validate()` checks its own fields (range errors print
//! milliseconds, as the keys do) and returns a [`SettingsError`] naming the key (the shared
//! checks are in `rules`, a leaf module every section can use); the rules that
//! compare two sections live in the binary (`configuration::cross_checks`), which also owns the
//! sections only it uses (database, redis, http, auth, devices, shutdown, log).

pub mod rules;

pub use crate::circuit::CircuitSettings;
pub use crate::payload::PayloadSettings;
pub use crate::periodic::claim::ClaimSettings;
pub use crate::periodic::delay::SchedulerSettings;
pub use crate::periodic::retention::RetentionPolicy;
pub use crate::providers::apns::ApnsSettings;
pub use crate::providers::email::EmailSettings;
pub use crate::providers::expo::ExpoSettings;
pub use crate::providers::fcm::FcmSettings;
pub use crate::providers::Providers;
pub use crate::secret::Secret;
pub use crate::store::InputLimits;
pub use rules::{
    file_or_inline, http_url, millis, read_file, read_optional, within, within_ms, SettingsError, DAY_MS, HOUR_MS,
    MINUTE_MS, SECOND_MS,
};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Which parts of the engine this process runs (`notify-relay run --roles`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Roles {
    /// ListenerActor: LISTEN doorbell, fan-out, sweep.
    pub listener: bool,
    /// StreamReaderActors, SenderActor pools and the outcome writer.
    pub worker: bool,
    /// DelayActor and ClaimActor.
    pub scheduler: bool,
}

impl Roles {
    pub const ALL: Roles = Roles { listener: true, worker: true, scheduler: true };
}

/// The sections of the configuration the engine runs with, as they were loaded, and what the
/// process adds (its roles and consumer name, and the input caps drawn from `[payload]` and
/// `[devices]`).
#[derive(Debug, Clone)]
pub struct EngineSettings {
    pub roles: Roles,
    /// Name of this process's consumer in the group; unique per process.
    pub consumer: String,
    pub worker: WorkerSettings,
    pub listener: ListenerSettings,
    pub retry: RetryPolicy,
    pub claim: ClaimSettings,
    /// Per-provider circuit breakers.
    pub circuit: CircuitSettings,
    pub retention: RetentionPolicy,
    pub scheduler: SchedulerSettings,
    /// Every provider's section; only the enabled ones get senders.
    pub providers: Providers,
    /// Caps on what one notification row or one user can cost.
    pub input_limits: InputLimits,
}

/// `[worker]`.
#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerSettings {
    /// Deliveries in flight per process (read from the stream but not yet stored).
    pub concurrency: usize,
    /// SenderActors (one thread each) per enabled provider.
    pub senders_per_provider: usize,
}

impl WorkerSettings {
    pub fn validate(&self) -> Result<(), SettingsError> {
        if !(1..=100_000).contains(&self.concurrency) {
            return Err(SettingsError::new(
                "worker.concurrency",
                format!("must be between 1 and 100000, got {}", self.concurrency),
            ));
        }
        if !(1..=64).contains(&self.senders_per_provider) {
            return Err(SettingsError::new("worker.senders_per_provider", "must be between 1 and 64"));
        }
        Ok(())
    }
}

/// `[listener]`: how the fan-out claims pending notifications and how often the sweep runs.
#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerSettings {
    /// Notifications claimed per fan-out transaction.
    pub batch_size: i64,
    /// Fan-out transactions in flight at once (each on its own pooled connection).
    pub drainers: usize,
    /// Period of the sweep (`listener.sweep_interval_ms`).
    #[serde(rename = "sweep_interval_ms", with = "millis")]
    pub sweep_interval: Duration,
    /// A queued/retrying target without progress for this long is re-enqueued
    /// (`listener.stale_after_ms`).
    #[serde(rename = "stale_after_ms", with = "millis")]
    pub stale_after: Duration,
}

impl ListenerSettings {
    pub fn validate(&self) -> Result<(), SettingsError> {
        if !(1..=10_000).contains(&self.batch_size) {
            return Err(SettingsError::new("listener.batch_size", "must be between 1 and 10000"));
        }
        if !(1..=16).contains(&self.drainers) {
            return Err(SettingsError::new("listener.drainers", "must be between 1 and 16"));
        }
        within_ms("listener.sweep_interval_ms", self.sweep_interval, 100..=DAY_MS)?;
        within_ms("listener.stale_after_ms", self.stale_after, SECOND_MS..=7 * DAY_MS)
    }
}

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
        if self.max < self.base {
            let base = millis::of(self.base);
            return Err(SettingsError::new("retry.max_ms", format!("must be at least retry.base_ms ({base})")));
        }
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
