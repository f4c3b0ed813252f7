//! What is left of a job's lifetime (`notification.expires_at`) at the moment its request is
//! built, in the units the providers take: whole seconds left (Expo `ttl`, FCM `android.ttl`)
//! and the expiry as whole Unix seconds (Expo `expiration`, `apns-expiration`).
//!
//! Both are rounded down, so that what a provider is told is never longer than what is left: a
//! provider that holds a message until its ttl runs out must not deliver it after `expires_at`,
//! when the relay already counts it `expired`. A job with less than a second left gets a ttl of
//! 0 (Expo and FCM: deliver now or drop, never store) and the second it expires in (APNs: a time
//! already past or current means one attempt, not stored).

use crate::clock::Clock;
use crate::job::Job;
use std::time::UNIX_EPOCH;

/// A job's remaining lifetime, as sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifetime {
    /// Whole seconds left (rounded down; 0 with less than a second left).
    pub ttl_secs: u64,
    /// `expires_at` in whole seconds since the Unix epoch (rounded down).
    pub expires_secs: u64,
}

impl Lifetime {
    /// The lifetime of `job` at `now_ms` (ms since the epoch); None when it never expires.
    pub fn of(job: &Job, now_ms: u64) -> Option<Lifetime> {
        let expires_ms = job.expires_ms?;
        Some(Lifetime { ttl_secs: expires_ms.saturating_sub(now_ms) / 1000, expires_secs: expires_ms / 1000 })
    }
}

/// `clock`'s wall time in ms since the epoch (the unit of `Job::expires_ms`): the clients that
/// have an injected clock read the time from it, so that tests on a `ManualClock` are exact.
pub fn now_ms(clock: &dyn Clock) -> u64 {
    clock.wall().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::{Priority, Provider};

    fn expiring(expires_ms: Option<u64>) -> Job {
        let mut job = crate::providers::check::job(Provider::Expo, "t", serde_json::json!({}), Priority::Normal);
        job.expires_ms = expires_ms;
        job
    }

    #[test]
    fn what_is_left_is_rounded_down_to_whole_seconds() {
        let now = 1_700_000_000_000;
        assert_eq!(Lifetime::of(&expiring(None), now), None);
        let left = Lifetime::of(&expiring(Some(now + 3_600_900)), now).expect("expires");
        assert_eq!(left, Lifetime { ttl_secs: 3600, expires_secs: 1_700_003_600 });
        // Under a second left: ttl 0, and the second it expires in.
        let last = Lifetime::of(&expiring(Some(now + 999)), now).expect("expires");
        assert_eq!(last, Lifetime { ttl_secs: 0, expires_secs: 1_700_000_000 });
        // A clock ahead of the expiry (the relay ends those first) still gives 0, not an overflow.
        assert_eq!(Lifetime::of(&expiring(Some(now - 5)), now).map(|l| l.ttl_secs), Some(0));
    }

    #[test]
    fn the_time_is_read_from_the_clock_given() {
        let clock = crate::clock::ManualClock::new();
        let before = now_ms(&clock);
        clock.advance(std::time::Duration::from_millis(1500));
        assert_eq!(now_ms(&clock), before + 1500);
    }
}
