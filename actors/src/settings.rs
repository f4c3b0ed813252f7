//! What the engine needs to know, handed in by the binary (which owns loading and validating
//! the configuration file). Durations are already converted from the `_ms` keys.

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
    pub retention: crate::retention::RetentionPolicy,
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

/// Caps on what one notification row or one user can cost (`payload.max_bytes`,
/// `devices.max_per_user`). A row over a cap fails on its own, with a `last_error` naming it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputLimits {
    /// Largest payload accepted, as Postgres prints the jsonb (`payload::text`).
    pub payload_max_bytes: usize,
    /// Most active devices one notification fans out to (the newest are chosen).
    pub devices_per_user: usize,
}

impl Default for InputLimits {
    fn default() -> Self {
        InputLimits { payload_max_bytes: 16 * 1024, devices_per_user: 100 }
    }
}

#[derive(Clone)]
pub struct ExpoSettings {
    /// e.g. `https://exp.host`; the send path is appended.
    pub base_url: String,
    /// Only for projects with "enhanced push security".
    pub access_token: Option<String>,
    pub timeout: Duration,
    /// How long a sender waits to fill a 100-message request before sending what it has.
    pub flush_after: Duration,
    /// How long after a ticket its receipt is fetched.
    pub receipt_delay: Duration,
    /// How often the receipt poller looks for due receipts.
    pub receipt_poll: Duration,
    /// Shared rate limits (0 = unlimited).
    pub limits: crate::ratelimit::Limits,
}

impl std::fmt::Debug for ExpoSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The access token is a credential: only whether there is one.
        f.debug_struct("ExpoSettings")
            .field("base_url", &self.base_url)
            .field("access_token", &self.access_token.as_ref().map(|_| "[redacted]"))
            .field("timeout", &self.timeout)
            .field("flush_after", &self.flush_after)
            .field("receipt_delay", &self.receipt_delay)
            .field("receipt_poll", &self.receipt_poll)
            .field("limits", &self.limits)
            .finish()
    }
}

/// FCM HTTP v1. The service account (from `providers.fcm.service_account_file` or
/// `.service_account_json`) gives the project, the signing key and the token endpoint.
#[derive(Debug, Clone)]
pub struct FcmSettings {
    /// e.g. `https://fcm.googleapis.com`; `/v1/projects/{project}/messages:send` is appended.
    pub base_url: String,
    pub account: crate::providers::fcm::ServiceAccount,
    pub timeout: Duration,
    /// How long a sender waits to gather messages it then sends concurrently.
    pub flush_after: Duration,
    pub limits: crate::ratelimit::Limits,
}

/// APNs with a token-based (.p8) connection.
#[derive(Clone)]
pub struct ApnsSettings {
    /// `https://api.push.apple.com` or `https://api.sandbox.push.apple.com`, or an emulator.
    pub base_url: String,
    /// The .p8 signing key (PKCS#8 PEM, P-256).
    pub key_pem: String,
    /// The key's 10-character id (JWT header `kid`).
    pub key_id: String,
    /// The developer team id (JWT claim `iss`).
    pub team_id: String,
    /// The app's bundle id (`apns-topic`).
    pub topic: String,
    /// Extra trusted CA certificates (PEM), for private gateways and the emulator.
    pub ca_pem: Option<Vec<u8>>,
    pub timeout: Duration,
    pub flush_after: Duration,
    pub limits: crate::ratelimit::Limits,
}

impl std::fmt::Debug for ApnsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApnsSettings")
            .field("base_url", &self.base_url)
            .field("key_pem", &"[redacted]")
            .field("key_id", &self.key_id)
            .field("team_id", &self.team_id)
            .field("topic", &self.topic)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// Email through an SMTP relay.
#[derive(Clone)]
pub struct EmailSettings {
    /// `smtp://host:port` (plain, local relays), `smtp://…?tls=starttls`, `smtps://…`;
    /// credentials in the URL's user info.
    pub smtp_url: String,
    /// The `From:` mailbox, e.g. `Notifications <no-reply@example.com>`.
    pub from: String,
    /// Extra trusted CA certificates (PEM) for the relay's certificate.
    pub ca_pem: Option<Vec<u8>>,
    pub timeout: Duration,
    pub flush_after: Duration,
    /// SMTP connections kept open per sender.
    pub connections: u32,
    pub limits: crate::ratelimit::Limits,
}

impl std::fmt::Debug for EmailSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL carries the credentials.
        f.debug_struct("EmailSettings")
            .field("from", &self.from)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
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

    const SECRET: &str = "hunter2-very-secret";

    #[test]
    fn no_settings_struct_prints_a_credential() {
        let limits = crate::ratelimit::Limits::default();
        let d = Duration::from_millis(1);
        let expo = ExpoSettings {
            base_url: "https://exp.host".into(),
            access_token: Some(SECRET.into()),
            timeout: d,
            flush_after: d,
            receipt_delay: d,
            receipt_poll: d,
            limits,
        };
        let fcm = FcmSettings {
            base_url: "https://fcm.googleapis.com".into(),
            account: crate::providers::fcm::ServiceAccount {
                project_id: "p".into(),
                client_email: "c@p.iam.gserviceaccount.com".into(),
                private_key: format!("-----BEGIN PRIVATE KEY-----\n{SECRET}\n-----END PRIVATE KEY-----"),
                token_uri: "https://oauth2.googleapis.com/token".into(),
            },
            timeout: d,
            flush_after: d,
            limits,
        };
        let apns = ApnsSettings {
            base_url: "https://api.push.apple.com".into(),
            key_pem: format!("-----BEGIN PRIVATE KEY-----\n{SECRET}\n-----END PRIVATE KEY-----"),
            key_id: "ABC123DEFG".into(),
            team_id: "DEF123GHIJ".into(),
            topic: "com.example.app".into(),
            ca_pem: None,
            timeout: d,
            flush_after: d,
            limits,
        };
        let email = EmailSettings {
            smtp_url: format!("smtps://user:{SECRET}@smtp.example.com:465"),
            from: "no-reply@example.com".into(),
            ca_pem: None,
            timeout: d,
            flush_after: d,
            connections: 1,
            limits,
        };
        for printed in [format!("{expo:?}"), format!("{fcm:?}"), format!("{apns:?}"), format!("{email:?}")] {
            assert!(!printed.contains(SECRET), "{printed}");
        }
        // What is not secret is still there to debug with.
        assert!(format!("{expo:?}").contains("access_token: Some(\"[redacted]\")"), "{expo:?}");
        assert!(format!("{fcm:?}").contains("c@p.iam.gserviceaccount.com"), "{fcm:?}");
    }

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
