//! APNs with a token-based connection: one `POST {base}/3/device/<hex token>` per message over
//! HTTP/2 and TLS, authorised by an ES256 provider token signed with the team's .p8 key.
//!
//! The messages of a batch are sent concurrently on the client's pooled HTTP/2 connections and
//! each answer is classified on its own (PROVIDERS.md, APNs table). The provider token is shared
//! by every sender of the process ([`ProviderToken`]), because Apple refuses tokens that change
//! more often than every 20 minutes (`TooManyProviderTokenUpdates`).

use super::{bounded, combine, ProviderClient, Response};
use crate::circuit::Health;
use crate::job::{Job, Priority, Provider, SendResult};
use crate::settings::ApnsSettings;
use futures_util::future::{join_all, LocalBoxFuture};
use serde::Serialize;
use serde_json::{Map, Value};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Messages one sender gathers before sending them (concurrently, one request each).
pub const MAX_BATCH: usize = 100;
/// Apple's limit for the JSON body of a regular notification.
pub const MAX_PAYLOAD_BYTES: usize = 4096;
/// Apple's limit for `apns-collapse-id`.
pub const MAX_COLLAPSE_ID_BYTES: usize = 64;
/// Re-sign the provider token once it is this old: before Apple's 60 minutes…
pub const REFRESH_AFTER: Duration = Duration::from_secs(50 * 60);
/// …and never sooner than this after the previous signature (Apple's 20 minutes).
pub const MIN_RESIGN_INTERVAL: Duration = Duration::from_secs(20 * 60);
/// HTTP/2 connections one client keeps to APNs; awc sends one request at a time on each.
const CONNECTIONS: usize = 32;
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// The ES256 provider token (JWT `{"alg":"ES256","kid"}` `{"iss":team,"iat"}`), shared by all
/// senders of the provider. It is re-signed when older than `refresh_after`, or when APNs says
/// it expired, but never sooner than `min_interval` after the previous signature, and not at all
/// for 20 minutes after APNs answered `TooManyProviderTokenUpdates`.
pub struct ProviderToken {
    key: jsonwebtoken::EncodingKey,
    header: jsonwebtoken::Header,
    team_id: String,
    refresh_after: Duration,
    min_interval: Duration,
    state: Mutex<TokenState>,
}

#[derive(Default)]
struct TokenState {
    /// The token in use and when it was signed.
    current: Option<(String, Instant)>,
    /// No re-signing before this instant (after `TooManyProviderTokenUpdates`).
    blocked_until: Option<Instant>,
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    iat: u64,
}

impl ProviderToken {
    /// A token source for `key_pem` (PKCS#8 P-256, the .p8 file) with Apple's timing
    /// ([`REFRESH_AFTER`], [`MIN_RESIGN_INTERVAL`]).
    pub fn from_settings(settings: &ApnsSettings) -> Result<ProviderToken, String> {
        ProviderToken::new(&settings.key_pem, &settings.key_id, &settings.team_id, REFRESH_AFTER, MIN_RESIGN_INTERVAL)
    }

    pub fn new(
        key_pem: &str,
        key_id: &str,
        team_id: &str,
        refresh_after: Duration,
        min_interval: Duration,
    ) -> Result<ProviderToken, String> {
        let key = jsonwebtoken::EncodingKey::from_ec_pem(key_pem.as_bytes())
            .map_err(|e| format!("apns: the key is not a .p8 (PKCS#8 PEM P-256) key: {e}"))?;
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.typ = None;
        header.kid = Some(key_id.to_string());
        let token = ProviderToken {
            key,
            header,
            team_id: team_id.to_string(),
            refresh_after,
            min_interval,
            state: Mutex::new(TokenState::default()),
        };
        // Signed now, so that a key jsonwebtoken parses but cannot sign with stops start-up.
        let jwt = token.sign()?;
        token.state().current = Some((jwt, Instant::now()));
        Ok(token)
    }

    /// The token to send now, signed anew when the current one is due.
    pub fn current(&self) -> Result<String, String> {
        self.current_at(Instant::now())
    }

    /// APNs answered `ExpiredProviderToken` to a request that carried `used`: the token to retry
    /// with, or `None` when re-signing is not allowed yet. When another request already re-signed,
    /// that newer token is returned without signing again.
    pub fn expired(&self, used: &str) -> Option<String> {
        self.expired_at(used, Instant::now())
    }

    /// APNs answered `TooManyProviderTokenUpdates`: do not re-sign for 20 minutes (or
    /// `min_interval` when that is longer), whatever the token's age.
    pub fn too_many_updates(&self) {
        self.too_many_updates_at(Instant::now());
    }

    fn state(&self) -> std::sync::MutexGuard<'_, TokenState> {
        // The state is two fields assigned whole: a panic elsewhere cannot leave it half-written.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn sign(&self) -> Result<String, String> {
        let iat = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default();
        jsonwebtoken::encode(&self.header, &Claims { iss: &self.team_id, iat }, &self.key)
            .map_err(|e| format!("apns: signing the provider token failed: {e}"))
    }

    fn may_sign(&self, state: &TokenState, now: Instant) -> bool {
        let unblocked = state.blocked_until.is_none_or(|until| now >= until);
        let spaced = state.current.as_ref().is_none_or(|(_, at)| now.duration_since(*at) >= self.min_interval);
        unblocked && spaced
    }

    fn current_at(&self, now: Instant) -> Result<String, String> {
        let mut state = self.state();
        match &state.current {
            Some((jwt, at)) if now.duration_since(*at) < self.refresh_after || !self.may_sign(&state, now) => {
                Ok(jwt.clone())
            }
            _ => {
                let jwt = self.sign()?;
                state.current = Some((jwt.clone(), now));
                Ok(jwt)
            }
        }
    }

    fn expired_at(&self, used: &str, now: Instant) -> Option<String> {
        let mut state = self.state();
        if let Some((jwt, _)) = &state.current {
            if jwt != used {
                return Some(jwt.clone());
            }
        }
        if !self.may_sign(&state, now) {
            return None;
        }
        let jwt = self.sign().ok()?;
        state.current = Some((jwt.clone(), now));
        Some(jwt)
    }

    fn too_many_updates_at(&self, now: Instant) {
        self.state().blocked_until = Some(now + self.min_interval.max(MIN_RESIGN_INTERVAL));
    }
}

/// The TLS configuration of every APNs connection: the Mozilla roots plus the certificates of
/// `ca_pem` (private gateways, the emulator), and ALPN `h2` only, since APNs speaks HTTP/2 only.
pub fn tls_config(ca_pem: Option<&[u8]>) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    if let Some(pem) = ca_pem {
        let certs = rustls_pemfile::certs(&mut &pem[..])
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("apns: unreadable CA certificates: {e}"))?;
        if certs.is_empty() {
            return Err("apns: the CA file holds no PEM certificate".into());
        }
        for cert in certs {
            roots.add(cert).map_err(|e| format!("apns: unusable CA certificate: {e}"))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("apns: TLS configuration: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

pub struct ApnsClient {
    http: awc::Client,
    base_url: String,
    topic: String,
    token: Arc<ProviderToken>,
    flush_after: Duration,
}

impl ApnsClient {
    /// `tls` and `token` are built once per process (see `providers::enabled`) and shared by
    /// every sender; the awc client (and its connections) belongs to this sender's thread.
    pub fn new(settings: &ApnsSettings, tls: Arc<rustls::ClientConfig>, token: Arc<ProviderToken>) -> ApnsClient {
        let connector = awc::Connector::new()
            .rustls_0_23(tls)
            .timeout(settings.timeout)
            .handshake_timeout(settings.timeout)
            .limit(CONNECTIONS);
        let http = awc::Client::builder().timeout(settings.timeout).connector(connector).finish();
        ApnsClient {
            http,
            base_url: settings.base_url.trim_end_matches('/').to_string(),
            topic: settings.topic.clone(),
            token,
            flush_after: settings.flush_after,
        }
    }
}

impl ProviderClient for ApnsClient {
    fn provider(&self) -> Provider {
        Provider::Apns
    }

    fn max_batch(&self) -> usize {
        MAX_BATCH
    }

    fn flush_after(&self) -> Duration {
        self.flush_after
    }

    fn send(&self, jobs: &[Job]) -> LocalBoxFuture<'static, Response> {
        let sends: Vec<_> = jobs
            .iter()
            .map(|job| {
                let request = Request::build(job, &self.base_url);
                let (http, topic, token) = (self.http.clone(), self.topic.clone(), self.token.clone());
                async move {
                    match request {
                        Ok(request) => send_one(&http, &topic, &token, request).await,
                        Err(refused) => (refused, Health::Up),
                    }
                }
            })
            .collect();
        Box::pin(async move { combine(join_all(sends).await) })
    }
}

/// One prepared APNs request.
#[derive(Debug)]
pub struct Request {
    pub url: String,
    pub apns_id: String,
    pub push_type: &'static str,
    pub priority: &'static str,
    pub expiration: Option<u64>,
    pub collapse_id: Option<String>,
    pub body: Vec<u8>,
}

impl Request {
    /// The request for one job, or the result of a job refused without a round trip (a token
    /// that is not hex, a collapse id over 64 bytes, a body over 4096 bytes).
    pub fn build(job: &Job, base_url: &str) -> Result<Request, SendResult> {
        if job.token.is_empty() || !job.token.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(SendResult::InvalidToken {
                error: "apns: BadDeviceToken: the token is not hexadecimal".into(),
            });
        }
        let payload = job.payload.as_object().cloned().unwrap_or_default();
        let collapse_id = payload.get("collapse_id").and_then(Value::as_str).map(str::to_string);
        if let Some(id) = &collapse_id {
            // Fan-out refuses these already; an entry written by an older version still must
            // not reach awc, which would fail the request as if APNs were down.
            if id.chars().any(char::is_control) {
                let error = "apns: collapse_id holds a control character (not allowed in a header)".to_string();
                return Err(SendResult::Permanent { error });
            }
            if id.len() > MAX_COLLAPSE_ID_BYTES {
                let error = format!("apns: collapse_id too long: {} bytes (limit {MAX_COLLAPSE_ID_BYTES})", id.len());
                return Err(SendResult::Permanent { error });
            }
        }
        let alert = ["title", "body"].iter().any(|k| payload.get(*k).is_some_and(|v| !v.is_null()));
        let (push_type, priority) = match (alert, job.priority) {
            (true, Priority::High) => ("alert", "10"),
            (true, Priority::Normal) => ("alert", "5"),
            // Apple refuses priority 10 for background notifications.
            (false, _) => ("background", "5"),
        };
        let body = serde_json::to_vec(&body(job, &payload, alert)).unwrap_or_default();
        if body.len() > MAX_PAYLOAD_BYTES {
            let error = format!("apns: payload too large: {} bytes (limit {MAX_PAYLOAD_BYTES})", body.len());
            return Err(SendResult::Permanent { error });
        }
        Ok(Request {
            url: format!("{base_url}/3/device/{}", job.token.to_ascii_lowercase()),
            apns_id: uuid::Uuid::new_v4().to_string(),
            push_type,
            priority,
            expiration: expiration(&payload),
            collapse_id,
            body,
        })
    }
}

/// `apns-expiration`: `ttl` seconds from now (0 = deliver now or never), else the payload's
/// absolute `expiration` (UNIX seconds), else none (APNs stores it for a while).
fn expiration(payload: &Map<String, Value>) -> Option<u64> {
    if let Some(ttl) = payload.get("ttl").and_then(Value::as_u64) {
        if ttl == 0 {
            return Some(0);
        }
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default();
        return Some(now.saturating_add(ttl));
    }
    payload.get("expiration").and_then(Value::as_u64)
}

/// The JSON body: `aps` from the payload's title, body, subtitle, sound, badge, categoryId and
/// mutableContent (`content-available` when there is nothing to show), the keys of
/// `payload.data` at the top level, and `notification_id`.
pub fn body(job: &Job, payload: &Map<String, Value>, alert: bool) -> Value {
    let get = |key: &str| payload.get(key).filter(|v| !v.is_null());
    let mut aps = Map::new();
    if alert {
        let mut text = Map::new();
        for key in ["title", "body", "subtitle"] {
            if let Some(v) = get(key) {
                text.insert(key.into(), v.clone());
            }
        }
        aps.insert("alert".into(), Value::Object(text));
    } else {
        aps.insert("content-available".into(), Value::from(1));
    }
    for (from, to) in [("sound", "sound"), ("badge", "badge"), ("categoryId", "category")] {
        if let Some(v) = get(from) {
            aps.insert(to.into(), v.clone());
        }
    }
    if get("mutableContent").is_some_and(|v| v == &Value::Bool(true) || v == &Value::from(1)) {
        aps.insert("mutable-content".into(), Value::from(1));
    }
    let mut body = Map::new();
    if let Some(Value::Object(data)) = get("data") {
        // `aps` is Apple's; an app key of that name must not replace it.
        body.extend(data.iter().filter(|(k, _)| k.as_str() != "aps").map(|(k, v)| (k.clone(), v.clone())));
    }
    body.insert("aps".into(), Value::Object(aps));
    body.insert("notification_id".into(), Value::String(job.notification_id.to_string()));
    Value::Object(body)
}

/// What APNs answered to one request.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub status: u16,
    /// The body's `reason`, or else the start of the body.
    pub reason: String,
    /// The body's `timestamp` (410 only).
    pub timestamp: Option<i64>,
    /// The `apns-id` header.
    pub apns_id: Option<String>,
    pub retry_after: Option<Duration>,
}

/// Sends one request: once, or twice when APNs says the provider token expired and it may be
/// re-signed.
async fn send_one(http: &awc::Client, topic: &str, token: &ProviderToken, request: Request) -> (SendResult, Health) {
    let jwt = match token.current() {
        Ok(jwt) => jwt,
        Err(error) => return (SendResult::Auth { error: error.clone() }, Health::AuthFailure(error)),
    };
    let mut answer = match post(http, topic, &jwt, &request).await {
        Ok(answer) => answer,
        Err(error) => return (SendResult::Retry { error: error.clone(), after: None }, Health::Outage(error)),
    };
    if answer.status == 403 && answer.reason == "ExpiredProviderToken" {
        let Some(fresh) = token.expired(&jwt) else {
            let error = "apns: HTTP 403 ExpiredProviderToken (re-signing is not allowed yet)".to_string();
            return (SendResult::Auth { error: error.clone() }, Health::AuthFailure(error));
        };
        // A second ExpiredProviderToken is classified as AUTH below: no third try.
        answer = match post(http, topic, &fresh, &request).await {
            Ok(answer) => answer,
            Err(error) => return (SendResult::Retry { error: error.clone(), after: None }, Health::Outage(error)),
        };
    }
    if answer.status == 429 && answer.reason == "TooManyProviderTokenUpdates" {
        token.too_many_updates();
    }
    let apns_id = answer.apns_id.or(Some(request.apns_id));
    classify(answer.status, &answer.reason, answer.timestamp, apns_id, answer.retry_after)
}

async fn post(http: &awc::Client, topic: &str, jwt: &str, request: &Request) -> Result<Answer, String> {
    let mut req = http
        .post(&request.url)
        .insert_header(("authorization", format!("bearer {jwt}")))
        .insert_header(("apns-topic", topic))
        .insert_header(("apns-push-type", request.push_type))
        .insert_header(("apns-priority", request.priority))
        .insert_header(("apns-id", request.apns_id.as_str()))
        .insert_header(("content-type", "application/json"));
    if let Some(expiration) = request.expiration {
        req = req.insert_header(("apns-expiration", expiration.to_string()));
    }
    if let Some(collapse_id) = &request.collapse_id {
        req = req.insert_header(("apns-collapse-id", collapse_id.as_str()));
    }
    let mut resp = req.send_body(request.body.clone()).await.map_err(|e| format!("apns: request failed: {e}"))?;
    let body = resp.body().limit(MAX_RESPONSE_BYTES).await.map_err(|e| format!("apns: reading the answer: {e}"))?;
    Ok(answer(resp.status().as_u16(), resp.headers(), &body))
}

/// Reads an APNs answer: status, `apns-id` and `Retry-After` headers, and the JSON body's
/// `reason` and `timestamp` (a body that is not that JSON gives its start as the reason).
pub fn answer(status: u16, headers: &awc::http::header::HeaderMap, body: &[u8]) -> Answer {
    let apns_id = headers.get("apns-id").and_then(|v| v.to_str().ok()).map(str::to_string);
    let retry_after = super::retry_after(headers);
    let parsed: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let reason = match parsed.get("reason").and_then(Value::as_str) {
        Some(reason) => reason.to_string(),
        None => String::from_utf8_lossy(&body[..body.len().min(200)]).trim().to_string(),
    };
    let timestamp = parsed.get("timestamp").and_then(Value::as_i64);
    Answer { status, reason, timestamp, apns_id, retry_after }
}

/// Classifies one APNs answer (PROVIDERS.md): the message's result and what it says about the
/// provider's health. `ExpiredProviderToken` arrives here only when it could not be cured by
/// re-signing, and is AUTH like the other refused credentials.
pub fn classify(
    status: u16,
    reason: &str,
    timestamp: Option<i64>,
    apns_id: Option<String>,
    retry_after: Option<Duration>,
) -> (SendResult, Health) {
    let error = bounded(match timestamp {
        Some(ts) => format!("apns: HTTP {status} {reason} (timestamp {ts})"),
        None => format!("apns: HTTP {status} {reason}"),
    });
    let auth = |error: String| (SendResult::Auth { error: error.clone() }, Health::AuthFailure(error));
    let outage =
        |error: String| (SendResult::Retry { error: error.clone(), after: retry_after }, Health::Outage(error));
    let permanent = |error: String| (SendResult::Permanent { error }, Health::Up);
    match (status, reason) {
        (200, _) => (SendResult::Delivered { provider_message_id: apns_id }, Health::Up),
        (400, "BadDeviceToken" | "DeviceTokenNotForTopic") | (410, _) => {
            (SendResult::InvalidToken { error }, Health::Up)
        }
        (400, "TopicDisallowed") | (403, _) => auth(error),
        (400, "IdleTimeout") => outage(error),
        (429, "TooManyProviderTokenUpdates") => auth(error),
        // Too many notifications for this one device: only that device waits.
        (429, _) => (SendResult::Retry { error, after: retry_after }, Health::Up),
        (500..=599, _) => outage(error),
        (400..=499, _) => permanent(error),
        // Not an HTTP status APNs uses: something between us and APNs is misbehaving.
        _ => outage(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use uuid::Uuid;

    fn job(payload: Value, priority: Priority) -> Job {
        Job {
            notification_id: Uuid::nil(),
            device_id: Uuid::new_v4(),
            user_id: "u".into(),
            provider: Provider::Apns,
            token: "AB".repeat(32),
            payload: payload.into(),
            priority,
            trace_id: "t".into(),
            attempt: 0,
            targets: 1,
            requeued: false,
            queued_ms: 0,
        }
    }

    /// A P-256 PKCS#8 key generated for these tests only.
    const KEY_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQghVxAg2Xl+VFBFY5p
HpzgOg5ptmZFRQPY9/icjTB2bgmhRANCAAQNElV32MqauBxcU15MGIenhRoQv2vz
uzQcTSf1skvCNYBseC2yZ1A57q1rCuGb0nDFngD3RZWbbd6BnWMXEiO5
-----END PRIVATE KEY-----
";

    fn token(refresh_after: Duration, min_interval: Duration) -> ProviderToken {
        ProviderToken::new(KEY_PEM, "ABC123DEFG", "DEF123GHIJ", refresh_after, min_interval).expect("key")
    }

    #[test]
    fn answers_are_classified_as_providers_md_says() {
        let invalid = |r: &SendResult| matches!(r, SendResult::InvalidToken { .. });
        let permanent = |r: &SendResult| matches!(r, SendResult::Permanent { .. });
        let auth = |r: &SendResult| matches!(r, SendResult::Auth { .. });
        let retry = |r: &SendResult| matches!(r, SendResult::Retry { .. });
        let up = |h: &Health| *h == Health::Up;
        let auth_failure = |h: &Health| matches!(h, Health::AuthFailure(_));
        let outage = |h: &Health| matches!(h, Health::Outage(_));
        type Check = fn(&SendResult) -> bool;
        type HealthCheck = fn(&Health) -> bool;
        let rows: &[(u16, &str, Check, HealthCheck)] = &[
            (400, "BadDeviceToken", invalid, up),
            (400, "DeviceTokenNotForTopic", invalid, up),
            (410, "Unregistered", invalid, up),
            (410, "ExpiredToken", invalid, up),
            (400, "BadCollapseId", permanent, up),
            (400, "BadPriority", permanent, up),
            (400, "PayloadEmpty", permanent, up),
            (400, "MissingTopic", permanent, up),
            (404, "BadPath", permanent, up),
            (405, "MethodNotAllowed", permanent, up),
            (413, "PayloadTooLarge", permanent, up),
            (403, "ExpiredProviderToken", auth, auth_failure),
            (403, "InvalidProviderToken", auth, auth_failure),
            (403, "MissingProviderToken", auth, auth_failure),
            (403, "BadCertificate", auth, auth_failure),
            (403, "BadCertificateEnvironment", auth, auth_failure),
            (403, "Forbidden", auth, auth_failure),
            (400, "TopicDisallowed", auth, auth_failure),
            (429, "TooManyRequests", retry, up),
            (429, "TooManyProviderTokenUpdates", auth, auth_failure),
            (500, "InternalServerError", retry, outage),
            (503, "ServiceUnavailable", retry, outage),
            (503, "Shutdown", retry, outage),
            (400, "IdleTimeout", retry, outage),
        ];
        for (status, reason, result, health) in rows {
            let (r, h) = classify(*status, reason, None, None, None);
            assert!(result(&r), "{status} {reason}: {r:?}");
            assert!(health(&h), "{status} {reason}: {h:?}");
            assert_eq!(r.error(), Some(format!("apns: HTTP {status} {reason}").as_str()));
        }
        let (ok, health) = classify(200, "", None, Some("id-1".into()), None);
        assert_eq!(ok, SendResult::Delivered { provider_message_id: Some("id-1".into()) });
        assert_eq!(health, Health::Up);
    }

    #[test]
    fn the_410_timestamp_is_kept_and_retry_after_is_passed_on() {
        let (gone, _) = classify(410, "Unregistered", Some(1_700_000_000_000), None, None);
        assert_eq!(gone.error(), Some("apns: HTTP 410 Unregistered (timestamp 1700000000000)"));
        let (busy, _) = classify(503, "ServiceUnavailable", None, None, Some(Duration::from_secs(7)));
        assert!(matches!(busy, SendResult::Retry { after: Some(d), .. } if d == Duration::from_secs(7)));
    }

    #[test]
    fn a_long_reason_is_cut_to_a_bounded_error() {
        let body = json!({"reason": "r".repeat(60_000)}).to_string();
        let a = answer(400, &awc::http::header::HeaderMap::new(), body.as_bytes());
        let (result, _) = classify(a.status, &a.reason, a.timestamp, a.apns_id, a.retry_after);
        assert!(result.error().is_some_and(|e| e.len() <= crate::providers::MAX_ERROR_BYTES), "{result:?}");
    }

    #[test]
    fn the_body_puts_the_alert_in_aps_and_the_data_at_the_top_level() {
        let j = job(
            json!({"title": "T", "body": "B", "subtitle": "S", "sound": "default", "badge": 3,
                   "mutableContent": true, "data": {"order": 7, "aps": "not mine"}, "x": 1}),
            Priority::High,
        );
        let request = Request::build(&j, "https://apns").expect("request");
        assert_eq!((request.push_type, request.priority), ("alert", "10"));
        assert_eq!(request.url, format!("https://apns/3/device/{}", "ab".repeat(32)));
        let body: Value = serde_json::from_slice(&request.body).expect("json");
        assert_eq!(
            body,
            json!({"aps": {"alert": {"title": "T", "body": "B", "subtitle": "S"}, "sound": "default", "badge": 3,
                           "mutable-content": 1},
                   "order": 7, "notification_id": Uuid::nil().to_string()})
        );
    }

    #[test]
    fn a_payload_without_title_or_body_is_a_background_push_at_priority_5() {
        let request = Request::build(&job(json!({"data": {"sync": true}}), Priority::High), "b").expect("request");
        assert_eq!((request.push_type, request.priority), ("background", "5"));
        let body: Value = serde_json::from_slice(&request.body).expect("json");
        assert_eq!(body["aps"], json!({"content-available": 1}));
        assert_eq!(body["sync"], json!(true));
        let normal = Request::build(&job(json!({"title": "T"}), Priority::Normal), "b").expect("request");
        assert_eq!((normal.push_type, normal.priority), ("alert", "5"));
    }

    #[test]
    fn ttl_becomes_an_absolute_expiration_and_collapse_id_a_header() {
        let before = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
        let request =
            Request::build(&job(json!({"title": "T", "ttl": 60, "collapse_id": "score"}), Priority::Normal), "b")
                .expect("request");
        let expiration = request.expiration.expect("expiration");
        assert!(expiration >= before + 60 && expiration <= before + 3600, "{expiration}");
        assert_eq!(request.collapse_id.as_deref(), Some("score"));
        let once = Request::build(&job(json!({"title": "T", "ttl": 0}), Priority::Normal), "b").expect("request");
        assert_eq!(once.expiration, Some(0));
        let none = Request::build(&job(json!({"title": "T"}), Priority::Normal), "b").expect("request");
        assert_eq!(none.expiration, None);
        // A ttl near u64::MAX saturates instead of overflowing (a panic in a debug build).
        let huge = Request::build(&job(json!({"title": "T", "ttl": u64::MAX}), Priority::Normal), "b");
        assert_eq!(huge.expect("request").expiration, Some(u64::MAX));
    }

    #[test]
    fn oversized_bodies_long_collapse_ids_and_non_hex_tokens_are_refused_before_sending() {
        let big = Request::build(&job(json!({"body": "x".repeat(4100)}), Priority::Normal), "b").unwrap_err();
        let error = big.error().unwrap_or_default().to_string();
        assert!(matches!(big, SendResult::Permanent { .. }), "{big:?}");
        assert!(error.starts_with("apns: payload too large: ") && error.ends_with(" bytes (limit 4096)"), "{error}");
        let long = Request::build(&job(json!({"title": "T", "collapse_id": "c".repeat(65)}), Priority::Normal), "b");
        assert_eq!(
            long.unwrap_err(),
            SendResult::Permanent { error: "apns: collapse_id too long: 65 bytes (limit 64)".into() }
        );
        let newline = Request::build(&job(json!({"title": "T", "collapse_id": "order\n42"}), Priority::Normal), "b");
        assert_eq!(
            newline.unwrap_err(),
            SendResult::Permanent {
                error: "apns: collapse_id holds a control character (not allowed in a header)".into()
            }
        );
        let mut bad = job(json!({"title": "T"}), Priority::Normal);
        bad.token = "ExponentPushToken[x]".into();
        assert!(matches!(Request::build(&bad, "b").unwrap_err(), SendResult::InvalidToken { .. }));
    }

    #[test]
    fn the_token_is_an_es256_jwt_with_kid_iss_and_iat() {
        let t = token(REFRESH_AFTER, MIN_RESIGN_INTERVAL);
        let jwt = t.current().expect("token");
        let header = jsonwebtoken::decode_header(&jwt).expect("header");
        assert_eq!(header.alg, jsonwebtoken::Algorithm::ES256);
        assert_eq!(header.kid.as_deref(), Some("ABC123DEFG"));
        let claims: Value = jsonwebtoken::dangerous::insecure_decode(&jwt).expect("claims").claims;
        assert_eq!(claims["iss"], json!("DEF123GHIJ"));
        assert!(claims["iat"].as_u64().is_some_and(|iat| iat > 1_600_000_000), "{claims}");
    }

    #[test]
    fn the_token_is_reused_until_it_is_50_minutes_old() {
        let t = token(REFRESH_AFTER, MIN_RESIGN_INTERVAL);
        let start = Instant::now();
        t.state().current = Some(("first".into(), start));
        assert_eq!(t.current_at(start + Duration::from_secs(49 * 60)).expect("token"), "first");
        let later = t.current_at(start + Duration::from_secs(50 * 60)).expect("token");
        assert_ne!(later, "first", "re-signed at 50 minutes");
    }

    #[test]
    fn an_expired_token_is_re_signed_only_20_minutes_after_the_last_signature() {
        let t = token(REFRESH_AFTER, MIN_RESIGN_INTERVAL);
        let start = Instant::now();
        t.state().current = Some(("old".into(), start));
        assert_eq!(t.expired_at("old", start + Duration::from_secs(19 * 60)), None, "too soon");
        let fresh = t.expired_at("old", start + Duration::from_secs(20 * 60)).expect("re-signed");
        assert_ne!(fresh, "old");
        // Other requests that carried the old token get the new one without another signature.
        let at = t.state().current.as_ref().expect("signed").1;
        assert_eq!(t.expired_at("old", start + Duration::from_secs(21 * 60)), Some(fresh.clone()));
        assert_eq!(t.state().current.as_ref().expect("signed").1, at);
        // The new one expiring at once is not cured by signing again.
        assert_eq!(t.expired_at(&fresh, start + Duration::from_secs(21 * 60)), None);
    }

    #[test]
    fn too_many_token_updates_stop_re_signing_for_20_minutes() {
        let t = token(REFRESH_AFTER, MIN_RESIGN_INTERVAL);
        let start = Instant::now();
        t.state().current = Some(("old".into(), start));
        let now = start + Duration::from_secs(55 * 60);
        t.too_many_updates_at(now);
        assert_eq!(t.current_at(now + Duration::from_secs(60)).expect("token"), "old", "not re-signed while blocked");
        assert_eq!(t.expired_at("old", now + Duration::from_secs(19 * 60)), None);
        assert!(t.expired_at("old", now + Duration::from_secs(20 * 60)).is_some_and(|jwt| jwt != "old"));
    }

    #[test]
    fn a_key_that_is_not_p256_pkcs8_is_refused() {
        let err = ProviderToken::new("not a key", "ABC123DEFG", "DEF123GHIJ", REFRESH_AFTER, MIN_RESIGN_INTERVAL)
            .err()
            .expect("refused");
        assert!(err.starts_with("apns: the key is not a .p8"), "{err}");
    }

    #[test]
    fn extra_ca_certificates_must_be_pem() {
        assert!(tls_config(None).is_ok());
        assert!(tls_config(Some(b"garbage")).is_err());
    }
}

#[cfg(test)]
mod proptests {
    use super::*;
    use crate::providers::check::{assert_one_class, body, class, headers, status};
    use awc::http::header::{HeaderMap, HeaderName, HeaderValue};
    use proptest::prelude::*;
    use serde_json::json;

    const REASONS: &[&str] = &[
        "BadDeviceToken",
        "DeviceTokenNotForTopic",
        "Unregistered",
        "ExpiredToken",
        "BadCollapseId",
        "BadPriority",
        "PayloadEmpty",
        "PayloadTooLarge",
        "ExpiredProviderToken",
        "InvalidProviderToken",
        "MissingProviderToken",
        "BadCertificate",
        "BadCertificateEnvironment",
        "Forbidden",
        "TopicDisallowed",
        "TooManyRequests",
        "TooManyProviderTokenUpdates",
        "InternalServerError",
        "ServiceUnavailable",
        "Shutdown",
        "IdleTimeout",
    ];

    /// PROVIDERS.md's APNs table (ExpiredProviderToken as it arrives here: after re-signing).
    fn documented(status: u16, reason: &str) -> &'static str {
        match (status, reason) {
            (200, _) => "OK",
            (400, "BadDeviceToken" | "DeviceTokenNotForTopic") | (410, _) => "INVALID",
            (400, "TopicDisallowed") | (403, _) | (429, "TooManyProviderTokenUpdates") => "AUTH",
            (400, "IdleTimeout") | (429, _) | (500..=599, _) => "RETRY",
            (400..=499, _) => "PERM",
            _ => "RETRY",
        }
    }

    #[test]
    fn documented_answers_read_from_the_wire_map_to_their_class() {
        let rows: &[(u16, &str, &str)] = &[
            (400, r#"{"reason":"BadDeviceToken"}"#, "INVALID"),
            (400, r#"{"reason":"DeviceTokenNotForTopic"}"#, "INVALID"),
            (410, r#"{"reason":"Unregistered","timestamp":1700000000000}"#, "INVALID"),
            (410, r#"{"reason":"ExpiredToken"}"#, "INVALID"),
            (400, r#"{"reason":"BadCollapseId"}"#, "PERM"),
            (400, r#"{"reason":"PayloadEmpty"}"#, "PERM"),
            (404, r#"{"reason":"BadPath"}"#, "PERM"),
            (405, r#"{"reason":"MethodNotAllowed"}"#, "PERM"),
            (413, r#"{"reason":"PayloadTooLarge"}"#, "PERM"),
            (403, r#"{"reason":"ExpiredProviderToken"}"#, "AUTH"),
            (403, r#"{"reason":"InvalidProviderToken"}"#, "AUTH"),
            (403, r#"{"reason":"MissingProviderToken"}"#, "AUTH"),
            (403, r#"{"reason":"BadCertificate"}"#, "AUTH"),
            (403, r#"{"reason":"Forbidden"}"#, "AUTH"),
            (400, r#"{"reason":"TopicDisallowed"}"#, "AUTH"),
            (429, r#"{"reason":"TooManyRequests"}"#, "RETRY"),
            (429, r#"{"reason":"TooManyProviderTokenUpdates"}"#, "AUTH"),
            (500, r#"{"reason":"InternalServerError"}"#, "RETRY"),
            (503, r#"{"reason":"ServiceUnavailable"}"#, "RETRY"),
            (503, r#"{"reason":"Shutdown"}"#, "RETRY"),
            (400, r#"{"reason":"IdleTimeout"}"#, "RETRY"),
            (502, "<html>Bad Gateway</html>", "RETRY"),
            (200, "", "OK"),
        ];
        let mut headers = HeaderMap::new();
        headers.insert(
            HeaderName::from_static("apns-id"),
            HeaderValue::from_static("b2c3d4e5-0000-0000-0000-000000000001"),
        );
        headers.insert(HeaderName::from_static("retry-after"), HeaderValue::from_static("30"));
        for (status, body, expected) in rows {
            let a = answer(*status, &headers, body.as_bytes());
            let (result, health) = classify(a.status, &a.reason, a.timestamp, a.apns_id, a.retry_after);
            assert_one_class(&result, &health);
            assert_eq!(class(&result), *expected, "{status} {body}: {result:?}");
        }
        let a = answer(410, &headers, br#"{"reason":"Unregistered","timestamp":1700000000000}"#);
        assert_eq!((a.reason.as_str(), a.timestamp), ("Unregistered", Some(1_700_000_000_000)));
        assert_eq!(a.apns_id.as_deref(), Some("b2c3d4e5-0000-0000-0000-000000000001"));
        assert_eq!(a.retry_after, Some(Duration::from_secs(30)));
    }

    fn reason_body() -> impl Strategy<Value = Vec<u8>> {
        let reason = prop_oneof![prop::sample::select(REASONS).prop_map(str::to_string), any::<String>()];
        (reason, proptest::option::of(any::<i64>()))
            .prop_map(|(reason, ts)| json!({"reason": reason, "timestamp": ts}).to_string().into_bytes())
    }

    proptest! {
        #[test]
        fn any_answer_is_read_and_classified_as_one_class(
            status in status(),
            headers in headers(),
            body in prop_oneof![body(), reason_body()],
        ) {
            let a = answer(status, &headers, &body);
            prop_assert!(a.retry_after.is_none_or(|d| d <= crate::providers::MAX_RETRY_AFTER));
            let (result, health) = classify(a.status, &a.reason, a.timestamp, a.apns_id.clone(), a.retry_after);
            assert_one_class(&result, &health);
            prop_assert_eq!(class(&result), documented(status, &a.reason));
            if status == 200 {
                prop_assert_eq!(result, SendResult::Delivered { provider_message_id: a.apns_id });
            }
        }
    }
}
