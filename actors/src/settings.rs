//! What the engine needs to know, handed in by the binary (which owns loading and validating
//! the configuration file). Durations are already converted from the `_ms` keys. Each
//! provider's section is owned by its module (`providers::expo::ExpoSettings`, …) and
//! re-exported here.

pub use crate::providers::apns::ApnsSettings;
pub use crate::providers::email::EmailSettings;
pub use crate::providers::expo::ExpoSettings;
pub use crate::providers::fcm::FcmSettings;
pub use crate::store::InputLimits;
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

#[derive(Debug, Clone)]
pub struct EngineSettings {
    pub roles: Roles,
    /// Deliveries in flight in this process (read from the stream but not yet stored).
    pub concurrency: usize,
    /// Name of this process's consumer in the group; unique per process.
    pub consumer: String,
    /// How many pending notifications one fan-out transaction claims.
    pub listener_batch: i64,
    /// Fan-out transactions in flight at once.
    pub listener_drainers: usize,
    pub sweep_interval: Duration,
    pub stale_after: Duration,
    pub retry: RetryPolicy,
    /// Per-provider circuit breakers.
    pub circuit: crate::circuit::CircuitSettings,
    pub claim_interval: Duration,
    pub claim_min_idle: Duration,
    /// Hand-outs of one entry without an outcome before it is dead-lettered.
    pub claim_max_deliveries: u32,
    pub retention: crate::periodic::retention::RetentionPolicy,
    /// How often due retries are moved from the delayed set back to the stream.
    pub delay_poll_interval: Duration,
    pub expo: Option<ExpoSettings>,
    pub fcm: Option<FcmSettings>,
    pub apns: Option<ApnsSettings>,
    pub email: Option<EmailSettings>,
    /// SenderActors per provider.
    pub senders_per_provider: usize,
    /// Caps on what one notification row or one user can cost.
    pub input_limits: InputLimits,
}

/// Exponential backoff with full jitter, and the deadline of a target.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub base: Duration,
    pub max: Duration,
    /// A target not delivered this long after it was first queued fails instead of being
    /// retried or deferred again (`retry.max_age_ms`).
    pub max_age: Duration,
}

impl RetryPolicy {
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
}
