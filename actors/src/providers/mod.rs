//! Provider clients: how one batch of jobs becomes requests to a push service, and how each
//! answer is classified (see PROVIDERS.md).

pub mod apns;
pub mod email;
pub mod expo;
pub mod fcm;

use crate::circuit::Health;
pub use crate::job::{bounded, MAX_ERROR_BYTES};
use crate::job::{Job, Provider, SendResult};
use crate::ratelimit::Limits;
use crate::settings::EngineSettings;
use futures_util::future::LocalBoxFuture;
use std::sync::Arc;
use std::time::Duration;

/// One provider's client, owned by a SenderActor on its own arbiter (awc clients are `!Send`).
pub trait ProviderClient {
    fn provider(&self) -> Provider;
    /// The most jobs one request may carry (100 for Expo).
    fn max_batch(&self) -> usize;
    /// How long a sender waits to fill a batch before sending what it has.
    fn flush_after(&self) -> Duration;
    /// Sends the jobs: one classified result per job, in order, and how the request as a whole
    /// went (for the circuit breaker).
    fn send(&self, jobs: &[Job]) -> LocalBoxFuture<'static, Response>;
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

/// The providers enabled in `settings`. Everything the clients share (parsed keys, the FCM
/// OAuth token cache) is built here once, so the senders of one provider share it.
pub fn enabled(settings: &EngineSettings) -> Result<Vec<EnabledProvider>, String> {
    let mut enabled = Vec::new();
    if let Some(expo) = settings.expo.clone() {
        let limits = expo.limits;
        let factory: ClientFactory = Arc::new(move || Box::new(expo::ExpoClient::new(&expo)));
        enabled.push(EnabledProvider { provider: Provider::Expo, factory, limits });
    }
    if let Some(fcm) = settings.fcm.clone() {
        let limits = fcm.limits;
        let tokens = Arc::new(fcm::TokenSource::new(fcm.account.clone())?);
        let factory: ClientFactory = Arc::new(move || Box::new(fcm::FcmClient::new(&fcm, tokens.clone())));
        enabled.push(EnabledProvider { provider: Provider::Fcm, factory, limits });
    }
    if let Some(apns) = settings.apns.clone() {
        let limits = apns.limits;
        let tls = apns::tls_config(apns.ca_pem.as_deref())?;
        let token = Arc::new(apns::ProviderToken::from_settings(&apns)?);
        let factory: ClientFactory =
            Arc::new(move || Box::new(apns::ApnsClient::new(&apns, tls.clone(), token.clone())));
        enabled.push(EnabledProvider { provider: Provider::Apns, factory, limits });
    }
    if let Some(email) = settings.email.clone() {
        let limits = email.limits;
        let config = email::EmailConfig::new(&email)?;
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
    let value = headers.get("retry-after")?.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let wait = at.signed_duration_since(chrono::Utc::now()).to_std().unwrap_or(Duration::ZERO);
    Some(wait.min(MAX_RETRY_AFTER))
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
