//! Provider clients: how one batch of jobs becomes requests to a push service, and how each
//! answer is classified (see docs/providers.md).
//!
//! One folder per provider: `mod.rs` holds its settings section (`[providers.<p>]`, deserialized
//! as it is, with its own `validate()` and the methods that read its credentials) and its client
//! (the requests), and
//! `classify.rs` the pure functions from the provider's answer to a [`SendResult`] and a
//! [`Health`], to be read beside the provider's table in docs/providers.md. What a provider needs
//! besides (tokens, messages, receipts, the SMTP connection pool) has a file of its own.
//! `http2` holds the HTTP/2 connections of the providers that take one request per message
//! (APNs, FCM). `lifetime` is what every push provider is told of a job's `expires_at`: the
//! whole seconds left and the expiry second, both rounded down.

pub mod apns;
pub mod email;
pub mod expo;
pub mod fcm;
pub mod http2;
pub mod lifetime;

use crate::circuit::Health;
pub use crate::job::{bounded, MAX_ERROR_BYTES};
use crate::job::{Job, Provider, SendResult};
use crate::ratelimit::Limits;
use crate::settings::rules::{within_ms, SettingsError};
use apns::ApnsSettings;
use email::EmailSettings;
use expo::ExpoSettings;
use fcm::FcmSettings;
use futures_util::future::{join_all, LocalBoxFuture};
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// `[providers]`: one section per provider, each with its `enabled` flag.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Providers {
    pub expo: ExpoSettings,
    pub fcm: FcmSettings,
    pub apns: ApnsSettings,
    pub email: EmailSettings,
}

impl Providers {
    /// Checks every enabled provider, reading its credentials; a disabled one is not looked at.
    pub fn validate(&self) -> Result<(), SettingsError> {
        if self.expo.enabled {
            self.expo.validate()?;
        }
        if self.fcm.enabled {
            self.fcm.validate()?;
        }
        if self.apns.enabled {
            self.apns.validate()?;
        }
        if self.email.enabled {
            self.email.validate()?;
        }
        Ok(())
    }

    /// The longest a send of the enabled providers can take: a delivery may wait `flush_after`
    /// in its sender's buffer before it is sent at all, then the request's timeout (twice it
    /// for email, see [`EmailSettings::longest_send`]).
    pub fn longest_send(&self) -> Option<Duration> {
        [
            (self.expo.enabled, self.expo.timeout, self.expo.flush_after),
            (self.fcm.enabled, self.fcm.longest_send(), self.fcm.flush_after),
            (self.apns.enabled, self.apns.timeout, self.apns.flush_after),
            (self.email.enabled, self.email.longest_send(), self.email.flush_after),
        ]
        .into_iter()
        .filter_map(|(enabled, timeout, flush)| enabled.then_some(timeout.saturating_add(flush)))
        .max()
    }
}

/// A provider request timeout: at least 1 ms, at most 10 minutes.
fn timeout(key: &'static str, value: Duration) -> Result<(), SettingsError> {
    within_ms(key, value, 1..=600_000)
}

/// What a sender needs to know about a provider's client to batch for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProviderProfile {
    pub provider: Provider,
    /// The most jobs one [`ProviderClient::send`] may carry (100 for Expo).
    pub max_batch: usize,
    /// How long a sender waits to fill a batch before sending what it has.
    pub flush_after: Duration,
}

/// One provider's client, owned by a SenderActor on its own arbiter (awc clients are `!Send`).
pub trait ProviderClient {
    fn profile(&self) -> ProviderProfile;
    /// Sends the jobs: one classified result per job, in order, and how the request as a whole
    /// went (for the circuit breaker).
    fn send(&self, jobs: &[Job]) -> LocalBoxFuture<'static, Response>;

    fn provider(&self) -> Provider {
        self.profile().provider
    }

    fn max_batch(&self) -> usize {
        self.profile().max_batch
    }

    fn flush_after(&self) -> Duration {
        self.profile().flush_after
    }
}

/// A sender's connections (email) or requests in flight (FCM) to a provider, as permits: a
/// message takes one before its request is built and sent (so the messages waiting for one cost
/// only the jobs they are), and a
/// message that finds none free by its deadline was not sent: deferred, no attempt spent (the
/// sender's own queue is not the provider's fault). FCM and email use it.
pub(crate) struct ConnectionSlots {
    permits: tokio::sync::Semaphore,
    count: usize,
    /// How a deferral starts, e.g. `fcm: no free request slot`.
    none_free: &'static str,
}

impl ConnectionSlots {
    pub(crate) fn new(count: usize, none_free: &'static str) -> ConnectionSlots {
        ConnectionSlots { permits: tokio::sync::Semaphore::new(count), count, none_free }
    }

    /// A free connection by `deadline`, or the deferral that says none was (rescheduled after
    /// `wait`, the time a message may wait for one).
    pub(crate) async fn take(
        &self,
        deadline: tokio::time::Instant,
        wait: Duration,
    ) -> Result<tokio::sync::SemaphorePermit<'_>, SendResult> {
        match tokio::time::timeout_at(deadline, self.permits.acquire()).await {
            Ok(Ok(permit)) => Ok(permit),
            // Err(_) inside: the semaphore is never closed.
            _ => Err(SendResult::Deferred {
                error: format!(
                    "{} within {} ms ({} per sender); rescheduled without spending an attempt",
                    self.none_free,
                    wait.as_millis(),
                    self.count
                ),
                after: wait,
            }),
        }
    }
}

/// The sends of a provider that takes one request per message (FCM, APNs), run concurrently
/// and answered as one [`Response`] (see [`combine`]).
pub fn send_each<F>(sends: impl IntoIterator<Item = F>) -> LocalBoxFuture<'static, Response>
where
    F: Future<Output = (SendResult, Health)> + 'static,
{
    let sends = join_all(sends);
    Box::pin(async move { combine(sends.await) })
}

/// What one request produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    pub results: Vec<SendResult>,
    pub health: Health,
}

impl Response {
    /// The whole request failed the same way for every message.
    pub fn all(n: usize, result: SendResult, health: Health) -> Response {
        Response { results: vec![result; n], health }
    }
}

/// Builds a client; called on the sender's arbiter thread.
pub type ClientFactory = std::sync::Arc<dyn Fn() -> Box<dyn ProviderClient> + Send + Sync>;

/// A provider this process sends through: how to build its clients, and its shared limits.
pub struct EnabledProvider {
    pub provider: Provider,
    pub factory: ClientFactory,
    pub limits: Limits,
}

/// Why a provider's client cannot be built from its settings (the process does not start).
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// A credential file could not be read, or holds no usable key.
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error(transparent)]
    Fcm(#[from] fcm::FcmError),
    #[error(transparent)]
    Apns(#[from] apns::ApnsError),
    #[error(transparent)]
    Email(#[from] email::EmailError),
}

impl From<ProviderError> for crate::error::EngineError {
    fn from(e: ProviderError) -> Self {
        crate::error::EngineError::Provider(Box::new(e))
    }
}

/// The providers enabled in `providers`. Everything the clients share (parsed keys, the FCM
/// OAuth token cache) is built here once, so the senders of one provider share it; the
/// credential files are read again here (they were checked at start-up, but may have been
/// rotated since).
pub fn enabled(providers: &Providers) -> Result<Vec<EnabledProvider>, ProviderError> {
    let mut enabled = Vec::new();
    if providers.expo.enabled {
        let expo = providers.expo.clone();
        let limits = expo.limits();
        let factory: ClientFactory = Arc::new(move || Box::new(expo::ExpoClient::new(&expo)));
        enabled.push(EnabledProvider { provider: Provider::Expo, factory, limits });
    }
    if providers.fcm.enabled {
        let fcm = providers.fcm.clone();
        let limits = fcm.limits();
        let tokens = Arc::new(fcm::TokenSource::new(fcm.account()?)?);
        let tls = fcm::tls_config()?;
        let factory: ClientFactory = Arc::new(move || Box::new(fcm::FcmClient::new(&fcm, tokens.clone(), tls.clone())));
        enabled.push(EnabledProvider { provider: Provider::Fcm, factory, limits });
    }
    if providers.apns.enabled {
        let apns = providers.apns.clone();
        let limits = apns.limits();
        let tls = apns::tls_config(apns.ca_pem()?.as_deref())?;
        let token = Arc::new(apns::ProviderToken::from_settings(&apns.key_pem()?, &apns)?);
        let factory: ClientFactory =
            Arc::new(move || Box::new(apns::ApnsClient::new(&apns, tls.clone(), token.clone())));
        enabled.push(EnabledProvider { provider: Provider::Apns, factory, limits });
    }
    if providers.email.enabled {
        let email = providers.email.clone();
        let limits = email.limits();
        let config = email::EmailConfig::new(&email, email.ca_pem()?.as_deref())?;
        let factory: ClientFactory = Arc::new(move || Box::new(email::EmailClient::new(&config)));
        enabled.push(EnabledProvider { provider: Provider::Email, factory, limits });
    }
    Ok(enabled)
}

/// The longest `Retry-After` taken from a provider; a longer one is read as this. (The retry
/// policy clamps again, to `retry.max_ms`; this bound keeps `now + after` far from overflowing
/// whatever a provider or a proxy sends.)
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

/// `Retry-After`: delay-seconds or an HTTP-date, at most [`MAX_RETRY_AFTER`].
pub fn retry_after(headers: &awc::http::header::HeaderMap) -> Option<Duration> {
    retry_after_value(headers.get("retry-after")?.to_str().ok()?)
}

/// A `Retry-After` value (see [`retry_after`]), for clients whose headers are not awc's (APNs).
pub fn retry_after_value(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let wait = at.signed_duration_since(chrono::Utc::now()).to_std().unwrap_or(Duration::ZERO);
    Some(wait.min(MAX_RETRY_AFTER))
}

/// A message that got no answer to classify (the provider unreachable, or its answer
/// unreadable): retried, and the provider counts as down.
pub(crate) fn outage(error: impl ToString) -> (SendResult, Health) {
    let error = error.to_string();
    (SendResult::Retry { error: error.clone(), after: None }, Health::Outage(error))
}

/// Credentials refused: the message fails as AUTH, and the provider's circuit opens.
pub(crate) fn auth_failure(error: impl ToString) -> (SendResult, Health) {
    let error = error.to_string();
    (SendResult::Auth { error: error.clone() }, Health::AuthFailure(error))
}

/// Several requests (one per message) as one [`Response`]: the provider is in trouble when any
/// request was refused for credentials, or when every request failed for an outage.
pub fn combine(outcomes: Vec<(SendResult, Health)>) -> Response {
    let auth = outcomes.iter().find_map(|(_, h)| matches!(h, Health::AuthFailure(_)).then(|| h.clone()));
    let all_out = !outcomes.is_empty() && outcomes.iter().all(|(_, h)| matches!(h, Health::Outage(_)));
    let health = match (auth, all_out) {
        (Some(auth), _) => auth,
        (None, true) => outcomes[0].1.clone(),
        (None, false) => Health::Up,
    };
    Response { results: outcomes.into_iter().map(|(r, _)| r).collect(), health }
}

#[cfg(test)]
mod tests {
    use super::*;
    use awc::http::header::{HeaderMap, HeaderValue, RETRY_AFTER};

    fn headers(value: &str) -> HeaderMap {
        let mut map = HeaderMap::new();
        map.insert(RETRY_AFTER, HeaderValue::from_str(value).unwrap());
        map
    }

    const SECRET: &str = "hunter2-very-secret";

    #[test]
    fn no_settings_struct_prints_a_credential() {
        let d = Duration::from_millis(1);
        let pem = format!("-----BEGIN PRIVATE KEY-----\n{SECRET}\n-----END PRIVATE KEY-----");
        let expo = ExpoSettings {
            enabled: true,
            base_url: "https://exp.host".into(),
            access_token: Some(crate::secret::Secret::new(SECRET)),
            timeout: d,
            flush_after: d,
            receipt_delay: d,
            receipt_poll: d,
            rate_per_sec: 0,
            device_rate_per_sec: 0,
        };
        let account = crate::providers::fcm::ServiceAccount {
            project_id: "p".into(),
            client_email: "c@p.iam.gserviceaccount.com".into(),
            private_key: pem.clone(),
            token_uri: "https://oauth2.googleapis.com/token".into(),
        };
        let fcm = FcmSettings {
            enabled: true,
            base_url: "https://fcm.googleapis.com".into(),
            service_account_file: None,
            service_account_json: Some(crate::secret::Secret::new(format!(
                r#"{{"project_id": "p", "client_email": "c@p.iam.gserviceaccount.com", "private_key": "{SECRET}"}}"#
            ))),
            timeout: d,
            flush_after: d,
            rate_per_sec: 0,
            device_rate_per_sec: 0,
        };
        let apns = ApnsSettings {
            enabled: true,
            base_url: "https://api.push.apple.com".into(),
            key_file: None,
            key: Some(crate::secret::Secret::new(pem)),
            key_id: "ABC123DEFG".into(),
            team_id: "DEF123GHIJ".into(),
            topic: "com.example.app".into(),
            ca_file: None,
            timeout: d,
            flush_after: d,
            rate_per_sec: 0,
            device_rate_per_sec: 0,
        };
        let email = EmailSettings {
            enabled: true,
            smtp_url: crate::secret::Secret::new(format!("smtps://user:{SECRET}@smtp.example.com:465")),
            from: "no-reply@example.com".into(),
            ca_file: None,
            timeout: d,
            flush_after: d,
            connections: 1,
            rate_per_sec: 0,
            device_rate_per_sec: 0,
        };
        let printed = [
            format!("{expo:?}"),
            format!("{account:?}"),
            format!("{fcm:?}"),
            format!("{apns:?}"),
            format!("{email:?}"),
        ];
        for printed in printed {
            assert!(!printed.contains(SECRET), "{printed}");
        }
        // What is not secret is still there to debug with.
        assert!(format!("{expo:?}").contains("access_token: Some([redacted])"), "{expo:?}");
        assert!(format!("{account:?}").contains("c@p.iam.gserviceaccount.com"), "{account:?}");
        assert!(format!("{apns:?}").contains("ABC123DEFG"), "{apns:?}");
    }

    #[test]
    fn retry_after_takes_seconds_or_an_http_date() {
        assert_eq!(retry_after(&headers("7")), Some(Duration::from_secs(7)));
        assert_eq!(retry_after(&headers(" 2 ")), Some(Duration::from_secs(2)));
        let later = (chrono::Utc::now() + chrono::Duration::seconds(90)).to_rfc2822();
        let wait = retry_after(&headers(&later)).unwrap();
        assert!(wait > Duration::from_secs(80) && wait <= Duration::from_secs(90), "{wait:?}");
        let past = (chrono::Utc::now() - chrono::Duration::seconds(90)).to_rfc2822();
        assert_eq!(retry_after(&headers(&past)), Some(Duration::ZERO));
        assert_eq!(retry_after(&headers("soon")), None);
        assert_eq!(retry_after(&HeaderMap::new()), None);
    }

    #[test]
    fn an_absurd_retry_after_is_read_as_a_day() {
        assert_eq!(retry_after(&headers("18446744073709551615")), Some(MAX_RETRY_AFTER));
        assert_eq!(retry_after(&headers("Fri, 31 Dec 9999 23:59:59 GMT")), Some(MAX_RETRY_AFTER));
    }

    #[actix_rt::test]
    async fn send_each_answers_every_message_in_order_as_one_response() {
        let delivered = |id: &str| (SendResult::Delivered { provider_message_id: Some(id.into()) }, Health::Up);
        let sends = vec![
            futures_util::future::ready(outage("a")),
            futures_util::future::ready(delivered("b")),
            futures_util::future::ready(outage("c")),
        ];
        let response = send_each(sends).await;
        let errors: Vec<_> = response.results.iter().map(|r| r.error().unwrap_or("delivered")).collect();
        assert_eq!(errors, ["a", "delivered", "c"]);
        assert_eq!(response.health, Health::Up, "one message went through: FCM or APNs is up");
        let response =
            send_each(vec![futures_util::future::ready(outage("a")), futures_util::future::ready(outage("b"))]).await;
        assert_eq!(response.health, Health::Outage("a".into()));
        let response = send_each(vec![futures_util::future::ready(auth_failure("key"))]).await;
        assert_eq!(response.results, [SendResult::Auth { error: "key".into() }]);
        assert_eq!(response.health, Health::AuthFailure("key".into()));
    }

    #[test]
    fn a_clients_profile_answers_for_its_provider_batch_and_flush() {
        struct Client;
        impl ProviderClient for Client {
            fn profile(&self) -> ProviderProfile {
                ProviderProfile { provider: Provider::Apns, max_batch: 7, flush_after: Duration::from_millis(3) }
            }
            fn send(&self, _: &[Job]) -> LocalBoxFuture<'static, Response> {
                unreachable!("not sent in this test")
            }
        }
        assert_eq!(
            (Client.provider(), Client.max_batch(), Client.flush_after()),
            (Provider::Apns, 7, Duration::from_millis(3))
        );
    }

    #[test]
    fn one_request_per_message_is_an_outage_only_when_every_request_was_one() {
        let out = |e: &str| (SendResult::Retry { error: e.into(), after: None }, Health::Outage(e.into()));
        let ok = (SendResult::Delivered { provider_message_id: None }, Health::Up);
        assert!(matches!(combine(vec![out("a"), out("b")]).health, Health::Outage(_)));
        assert_eq!(combine(vec![out("a"), ok.clone()]).health, Health::Up);
        let auth = (SendResult::Auth { error: "x".into() }, Health::AuthFailure("x".into()));
        assert!(matches!(combine(vec![ok, auth]).health, Health::AuthFailure(_)));
        assert_eq!(combine(Vec::new()).health, Health::Up);
    }
}

/// What the provider classifiers' property tests share: how a result and a health are one class,
/// and strategies for HTTP answers.
#[cfg(test)]
pub(crate) mod check {
    use super::*;
    use awc::http::header::{HeaderMap, HeaderName, HeaderValue};
    use proptest::prelude::*;

    /// The docs/providers.md class of a result.
    pub(crate) fn class(result: &SendResult) -> &'static str {
        match result {
            SendResult::Delivered { .. } => "OK",
            SendResult::Retry { .. } => "RETRY",
            SendResult::Permanent { .. } => "PERM",
            SendResult::InvalidToken { .. } => "INVALID",
            SendResult::Auth { .. } => "AUTH",
            SendResult::Deferred { .. } => "DEFERRED",
        }
    }

    pub(crate) use crate::fuzzing::assert_one_class;

    /// A job for `provider`'s unit tests: the nil notification id, a fresh device id, the first
    /// attempt.
    pub(crate) fn job(
        provider: Provider,
        token: &str,
        payload: serde_json::Value,
        priority: crate::job::Priority,
    ) -> Job {
        Job { notification_id: uuid::Uuid::nil(), ..Job::first_attempt(provider, token, payload, priority) }
    }

    /// Any status a server could send, weighted towards the ones the tables name.
    pub(crate) fn status() -> impl Strategy<Value = u16> {
        prop_oneof![
            prop::sample::select(vec![200u16, 400, 401, 403, 404, 405, 410, 413, 429, 500, 502, 503]),
            100u16..600,
            any::<u16>(),
        ]
    }

    /// Headers as a server could send them: any names and value bytes that are valid header
    /// values, often a `Retry-After` (seconds, dates, junk) and an `apns-id`.
    pub(crate) fn headers() -> impl Strategy<Value = HeaderMap> {
        let retry_after = prop_oneof![
            any::<u64>().prop_map(|s| s.to_string()),
            (0u64..100_000).prop_map(|s| format!(" {s} ")),
            (-100_000i64..100_000_000).prop_map(|s| (chrono::Utc::now() + chrono::Duration::seconds(s)).to_rfc2822()),
            "[A-Za-z]{3}, [0-9]{1,2} [A-Za-z]{3} -?[0-9]{1,6} [0-9]{2}:[0-9]{2}:[0-9]{2} (GMT|[+-][0-9]{4})",
            prop::collection::vec(any::<u8>(), 0..40).prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
        ];
        let named = prop::collection::vec(
            (prop::sample::select(vec!["retry-after", "apns-id", "content-type", "x-other"]), any::<Vec<u8>>()),
            0..4,
        );
        (proptest::option::of(retry_after), named).prop_map(|(retry_after, named)| {
            let mut map = HeaderMap::new();
            for (name, value) in named {
                if let Ok(value) = HeaderValue::from_bytes(&value) {
                    map.append(HeaderName::from_static(name), value);
                }
            }
            if let Some(Ok(value)) = retry_after.map(|v| HeaderValue::from_str(&v)) {
                map.insert(HeaderName::from_static("retry-after"), value);
            }
            map
        })
    }

    /// Bodies: any bytes, bytes that never occur in UTF-8 (0xF5..=0xFF: each becomes a 3-byte
    /// `�`), JSON, or text far longer than any error may be.
    pub(crate) fn body() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            prop::collection::vec(any::<u8>(), 0..300),
            prop::collection::vec(0xf5u8.., 150..400),
            crate::job::proptests::json_value().prop_map(|v| v.to_string().into_bytes()),
            "\\PC{600,3000}".prop_map(String::into_bytes),
        ]
    }

    proptest! {
        #[test]
        fn retry_after_never_panics_and_is_clamped(headers in headers()) {
            if let Some(after) = retry_after(&headers) {
                prop_assert!(after <= MAX_RETRY_AFTER, "{:?}", after);
            }
        }

        #[test]
        fn retry_after_in_seconds_is_taken_up_to_the_clamp(secs in any::<u64>()) {
            let mut headers = HeaderMap::new();
            headers.insert(HeaderName::from_static("retry-after"), HeaderValue::from(secs));
            prop_assert_eq!(retry_after(&headers), Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER)));
        }
    }
}
