//! Whole-request failures injected into an emulator: the plan, as the admin endpoints and the
//! tests give it, and what is left of it while it is in force. Every emulator takes the same
//! plan, so a test or an operator says "503 for the next 3 requests" the same way to each.

use serde::Deserialize;
use std::time::{Duration, Instant};

/// Whole-request failures to inject: the next `count` requests, or every request for `for_ms`.
#[derive(Debug, Clone, Deserialize)]
pub struct FailPlan {
    pub status: u16,
    /// The error the answer names, in the provider's words: Expo's `errors[].code`, FCM's
    /// `errorCode`, APNs's `reason` (the APNs admin call spells the key `"reason"`), the SMTP
    /// enhanced status code. Absent: the usual one for the status.
    #[serde(default, alias = "reason")]
    pub code: Option<String>,
    #[serde(default)]
    pub count: Option<usize>,
    #[serde(default)]
    pub for_ms: Option<u64>,
    /// A `Retry-After` header on the injected answers (HTTP emulators; otherwise each answers as
    /// its provider does, e.g. Expo's 429 with `Retry-After: 1`).
    #[serde(default)]
    pub retry_after_secs: Option<u64>,
}

impl FailPlan {
    /// The next `count` requests fail with `status`.
    pub fn next(status: u16, count: usize) -> FailPlan {
        FailPlan { status, code: None, count: Some(count), for_ms: None, retry_after_secs: None }
    }

    /// Every request fails with `status` for `duration`.
    pub fn lasting(status: u16, duration: Duration) -> FailPlan {
        let for_ms = Some(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX));
        FailPlan { status, code: None, count: None, for_ms, retry_after_secs: None }
    }

    /// The answers name this error (see [`FailPlan::code`]).
    pub fn with_code(self, code: Option<&str>) -> FailPlan {
        FailPlan { code: code.map(str::to_string), ..self }
    }
}

/// The failure in force in one emulator (or one of its endpoints), if any.
#[derive(Debug, Default)]
pub(crate) struct Failure {
    active: Option<Active>,
}

/// A plan being injected, and what is left of it.
#[derive(Debug)]
struct Active {
    plan: FailPlan,
    left: Option<usize>,
    until: Option<Instant>,
}

impl Failure {
    /// Puts `plan` in force, replacing any other.
    pub(crate) fn set(&mut self, plan: FailPlan) {
        let until = plan.for_ms.map(|ms| Instant::now() + Duration::from_millis(ms));
        self.active = Some(Active { left: plan.count, until, plan });
    }

    /// The plan, when the request arriving now is one it fails (and counts it); a spent plan is
    /// forgotten.
    pub(crate) fn strike(&mut self) -> Option<&FailPlan> {
        let active = self.active.as_mut()?;
        let strikes = match (active.until, active.left.as_mut()) {
            (Some(until), _) => Instant::now() < until,
            (None, Some(n)) if *n > 0 => {
                *n -= 1;
                true
            }
            (None, _) => false,
        };
        if !strikes {
            self.active = None;
        }
        self.active.as_ref().map(|a| &a.plan)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_counted_plan_fails_that_many_requests_then_is_forgotten() {
        let mut failure = Failure::default();
        assert!(failure.strike().is_none());
        failure.set(FailPlan::next(503, 2).with_code(Some("UNAVAILABLE")));
        assert_eq!(failure.strike().and_then(|p| p.code.clone()).as_deref(), Some("UNAVAILABLE"));
        assert!(failure.strike().is_some());
        assert!(failure.strike().is_none());
        assert!(failure.active.is_none());
    }

    #[test]
    fn a_timed_plan_fails_every_request_until_it_ends() {
        let mut failure = Failure::default();
        failure.set(FailPlan::lasting(429, Duration::from_secs(60)));
        assert!((0..5).all(|_| failure.strike().is_some()));
        failure.set(FailPlan::lasting(429, Duration::ZERO));
        assert!(failure.strike().is_none());
    }

    #[test]
    fn the_apns_admin_call_spells_the_code_reason() {
        let plan: FailPlan = serde_json::from_str(r#"{"status":503,"reason":"ServiceUnavailable","count":1}"#).unwrap();
        assert_eq!(plan.code.as_deref(), Some("ServiceUnavailable"));
        let plan: FailPlan = serde_json::from_str(r#"{"status":421,"code":"4.3.2","for_ms":10}"#).unwrap();
        assert_eq!((plan.code.as_deref(), plan.for_ms), (Some("4.3.2"), Some(10)));
    }
}
