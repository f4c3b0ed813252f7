//! FCM HTTP v1: one `POST {base}/v1/projects/{project}/messages:send` per message, authorised by
//! an OAuth access token obtained from the service account (RS256 JWT assertion).

use super::{bounded, combine, retry_after, ProviderClient, Response};
use crate::circuit::Health;
use crate::job::{Job, Priority, Provider, SendResult};
use crate::settings::FcmSettings;
use futures_util::future::{join_all, LocalBoxFuture};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::fmt;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The OAuth scope FCM sends need.
pub const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";
/// Google's token endpoint, used when the service account does not name one.
pub const DEFAULT_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";

/// The fields of a Google service-account JSON key that FCM needs.
#[derive(Clone, Deserialize)]
pub struct ServiceAccount {
    pub project_id: String,
    pub client_email: String,
    /// PKCS#8 PEM RSA key.
    pub private_key: String,
    #[serde(default = "default_token_uri")]
    pub token_uri: String,
}

fn default_token_uri() -> String {
    DEFAULT_TOKEN_URI.into()
}

impl fmt::Debug for ServiceAccount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceAccount")
            .field("project_id", &self.project_id)
            .field("client_email", &self.client_email)
            .field("private_key", &"[redacted]")
            .field("token_uri", &self.token_uri)
            .finish()
    }
}

impl ServiceAccount {
    /// Parses a service-account JSON key and checks that its private key can sign.
    pub fn from_json(raw: &str) -> Result<ServiceAccount, String> {
        let account: ServiceAccount =
            serde_json::from_str(raw).map_err(|e| format!("not a service-account JSON key: {e}"))?;
        if account.project_id.trim().is_empty() {
            return Err("project_id is empty".into());
        }
        if account.client_email.trim().is_empty() {
            return Err("client_email is empty".into());
        }
        if !(account.token_uri.starts_with("https://") || account.token_uri.starts_with("http://")) {
            return Err(format!("token_uri must be an http(s) URL, got '{}'", account.token_uri));
        }
        jsonwebtoken::EncodingKey::from_rsa_pem(account.private_key.as_bytes())
            .map_err(|e| format!("private_key is not a PEM RSA key: {e}"))?;
        Ok(account)
    }
}

/// An OAuth access token and when to stop using it.
#[derive(Clone)]
struct AccessToken {
    value: String,
    refresh_at: Instant,
}

/// A failed attempt to get an access token.
#[derive(Debug, Clone, PartialEq)]
pub enum TokenError {
    /// The token endpoint refused the assertion (400/401): the service account is wrong or
    /// disabled. Opens the circuit.
    Refused(String),
    /// The endpoint could not be reached or failed (network, 5xx).
    Unavailable(String),
}

/// The OAuth access tokens of one service account, shared by every sender of the provider:
/// fetched on first use, cached, refreshed [`REFRESH_BEFORE`] before they expire, and never
/// fetched by two senders at once (the mutex is held across the fetch).
pub struct TokenSource {
    account: ServiceAccount,
    key: jsonwebtoken::EncodingKey,
    cache: tokio::sync::Mutex<Cache>,
}

#[derive(Default)]
struct Cache {
    token: Option<AccessToken>,
    /// The last failure, re-used for a moment so a down endpoint is not hammered by every send.
    failed: Option<(Instant, TokenError)>,
    fetched: u64,
}

/// How long before its expiry a token is replaced.
pub const REFRESH_BEFORE: Duration = Duration::from_secs(300);
/// How long a failed token request is answered from memory.
const FAILURE_MEMORY: Duration = Duration::from_secs(1);

#[derive(Serialize)]
struct Assertion<'a> {
    iss: &'a str,
    scope: &'a str,
    aud: &'a str,
    iat: u64,
    exp: u64,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default = "an_hour")]
    expires_in: u64,
}

fn an_hour() -> u64 {
    3600
}

impl TokenSource {
    pub fn new(account: ServiceAccount) -> Result<TokenSource, String> {
        let key = jsonwebtoken::EncodingKey::from_rsa_pem(account.private_key.as_bytes())
            .map_err(|e| format!("fcm: private_key is not a PEM RSA key: {e}"))?;
        Ok(TokenSource { account, key, cache: Default::default() })
    }

    /// Token requests made so far (for the admin view and tests).
    pub async fn fetched(&self) -> u64 {
        self.cache.lock().await.fetched
    }

    /// A valid access token, fetching one if none is cached or the cached one is due.
    pub async fn token(&self, http: &awc::Client) -> Result<String, TokenError> {
        self.token_replacing(http, None).await
    }

    /// Like [`token`](Self::token), but `rejected` (a token FCM just refused) is not handed out
    /// again: unless another sender already replaced it, a new one is fetched.
    pub async fn token_replacing(&self, http: &awc::Client, rejected: Option<&str>) -> Result<String, TokenError> {
        let mut cache = self.cache.lock().await;
        let now = Instant::now();
        if let Some(token) = &cache.token {
            if now < token.refresh_at && Some(token.value.as_str()) != rejected {
                return Ok(token.value.clone());
            }
        }
        if let Some((at, error)) = &cache.failed {
            if now.duration_since(*at) < FAILURE_MEMORY {
                return Err(error.clone());
            }
        }
        cache.fetched += 1;
        match self.fetch(http).await {
            Ok(token) => {
                cache.failed = None;
                cache.token = Some(token.clone());
                Ok(token.value)
            }
            Err(error) => {
                cache.token = None;
                cache.failed = Some((Instant::now(), error.clone()));
                Err(error)
            }
        }
    }

    /// The signed assertion for the token endpoint (RS256, valid for an hour).
    fn assertion(&self) -> Result<String, TokenError> {
        let iat = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let claims = Assertion {
            iss: &self.account.client_email,
            scope: SCOPE,
            aud: &self.account.token_uri,
            iat,
            exp: iat + 3600,
        };
        let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        jsonwebtoken::encode(&header, &claims, &self.key)
            .map_err(|e| TokenError::Refused(format!("fcm: signing the token assertion failed: {e}")))
    }

    async fn fetch(&self, http: &awc::Client) -> Result<AccessToken, TokenError> {
        let assertion = self.assertion()?;
        let form = [("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"), ("assertion", assertion.as_str())];
        let started = Instant::now();
        let mut resp = http
            .post(&self.account.token_uri)
            .insert_header(("accept", "application/json"))
            .send_form(&form)
            .await
            .map_err(|e| TokenError::Unavailable(format!("fcm: token endpoint unreachable: {e}")))?;
        let status = resp.status().as_u16();
        let body = resp
            .body()
            .limit(64 * 1024)
            .await
            .map_err(|e| TokenError::Unavailable(format!("fcm: reading the token response failed: {e}")))?;
        let (value, refresh_in) = token_answer(status, &body)?;
        Ok(AccessToken { value, refresh_at: started + refresh_in })
    }
}

/// The longest an access token is used, whatever `expires_in` says (Google's last an hour).
pub const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);

/// Classifies the token endpoint's answer: the access token and how long after the request it
/// is to be replaced, or why there is none.
pub fn token_answer(status: u16, body: &[u8]) -> Result<(String, Duration), TokenError> {
    match status {
        200 => {
            let parsed: TokenResponse = serde_json::from_slice(body)
                .map_err(|e| TokenError::Unavailable(bounded(format!("fcm: unreadable token response: {e}"))))?;
            let lifetime = Duration::from_secs(parsed.expires_in).min(MAX_TOKEN_LIFETIME);
            // Refresh early; a very short-lived token is still used for half its life.
            let early = REFRESH_BEFORE.min(lifetime / 2);
            Ok((parsed.access_token, lifetime - early))
        }
        400 | 401 | 403 => Err(TokenError::Refused(bounded(format!(
            "fcm: token endpoint refused the service account ({status}): {}",
            snippet(body)
        )))),
        _ => Err(TokenError::Unavailable(bounded(format!("fcm: token endpoint answered {status}: {}", snippet(body))))),
    }
}

/// The start of a body, for an error: at most 200 bytes of text (each invalid UTF-8 byte becomes
/// a 3-byte `�`, so the cut comes after the conversion).
fn snippet(body: &[u8]) -> String {
    let mut text = String::from_utf8_lossy(&body[..body.len().min(200)]).trim().to_string();
    let mut end = text.len().min(200);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text
}

/// FCM messages are sent one per request; a sender gathers this many and sends them together.
pub const MAX_BATCH: usize = 100;
/// FCM's limit on a message's payload.
pub const MAX_PAYLOAD_BYTES: usize = 4096;
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

pub struct FcmClient {
    http: awc::Client,
    send_url: Rc<str>,
    tokens: Arc<TokenSource>,
    flush_after: Duration,
}

impl FcmClient {
    pub fn new(settings: &FcmSettings, tokens: Arc<TokenSource>) -> Self {
        let http = awc::Client::builder()
            .timeout(settings.timeout)
            .connector(awc::Connector::new().timeout(settings.timeout).limit(128))
            .finish();
        let send_url = format!(
            "{}/v1/projects/{}/messages:send",
            settings.base_url.trim_end_matches('/'),
            settings.account.project_id
        );
        FcmClient { http, send_url: send_url.into(), tokens, flush_after: settings.flush_after }
    }
}

impl ProviderClient for FcmClient {
    fn provider(&self) -> Provider {
        Provider::Fcm
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
            .map(|job| send_one(self.http.clone(), self.send_url.clone(), self.tokens.clone(), job.clone()))
            .collect();
        Box::pin(async move { combine(join_all(sends).await) })
    }
}

/// Sends one message: size check, access token, POST, and one retry with a fresh token when FCM
/// refuses the token itself (401 without an FcmError).
async fn send_one(http: awc::Client, url: Rc<str>, tokens: Arc<TokenSource>, job: Job) -> (SendResult, Health) {
    let body = match serde_json::to_vec(&json!({ "message": message(&job) })) {
        Ok(body) if payload_bytes(&body, &job.token) > MAX_PAYLOAD_BYTES => {
            let size = payload_bytes(&body, &job.token);
            let error = format!("fcm: payload too large: {size} bytes (limit {MAX_PAYLOAD_BYTES})");
            return (SendResult::Permanent { error }, Health::Up);
        }
        Ok(body) => body,
        Err(e) => return (SendResult::Permanent { error: format!("fcm: unserializable message: {e}") }, Health::Up),
    };
    let mut rejected: Option<String> = None;
    loop {
        let token = match tokens.token_replacing(&http, rejected.as_deref()).await {
            Ok(token) => token,
            Err(TokenError::Refused(error)) => {
                return (SendResult::Auth { error: error.clone() }, Health::AuthFailure(error))
            }
            Err(TokenError::Unavailable(error)) => {
                return (SendResult::Retry { error: error.clone(), after: None }, Health::Outage(error))
            }
        };
        let answer = post(&http, &url, &token, body.clone()).await;
        let (status, retry_after, reply) = match answer {
            Ok(answer) => answer,
            Err(error) => return (SendResult::Retry { error: error.clone(), after: None }, Health::Outage(error)),
        };
        let classified = classify(status, &reply, retry_after, job.attempt);
        if classified == Classified::RefreshToken {
            if rejected.is_none() {
                rejected = Some(token);
                continue;
            }
            let error = format!("fcm: HTTP 401 twice, with a fresh access token too: {}", snippet(&reply));
            return (SendResult::Auth { error: error.clone() }, Health::AuthFailure(error));
        }
        return classified.into_result();
    }
}

/// What counts against FCM's 4096-byte limit: the message without its recipient token.
pub fn payload_bytes(body: &[u8], token: &str) -> usize {
    body.len().saturating_sub(token.len())
}

async fn post(
    http: &awc::Client,
    url: &str,
    token: &str,
    body: Vec<u8>,
) -> Result<(u16, Option<Duration>, bytes::Bytes), String> {
    let mut resp = http
        .post(url)
        .bearer_auth(token)
        .insert_header(("content-type", "application/json"))
        .send_body(body)
        .await
        .map_err(|e| format!("fcm: request failed: {e}"))?;
    let status = resp.status().as_u16();
    let retry_after = retry_after(resp.headers());
    let body =
        resp.body().limit(MAX_RESPONSE_BYTES).await.map_err(|e| format!("fcm: reading the response failed: {e}"))?;
    Ok((status, retry_after, body))
}

/// The FCM v1 message for one job: `notification` from title/body, `data` with string values
/// only (others are JSON-encoded) plus `notification_id`, android priority and ttl, and the
/// APNs sound/badge when given.
pub fn message(job: &Job) -> Value {
    let payload = job.payload.as_object().cloned().unwrap_or_default();
    let text = |key: &str| payload.get(key).and_then(Value::as_str).map(str::to_string);
    let mut msg = Map::new();
    msg.insert("token".into(), json!(job.token));
    let mut notification = Map::new();
    for key in ["title", "body"] {
        if let Some(v) = text(key) {
            notification.insert(key.into(), json!(v));
        }
    }
    if !notification.is_empty() {
        msg.insert("notification".into(), Value::Object(notification));
    }
    let mut data = Map::new();
    if let Some(Value::Object(d)) = payload.get("data") {
        for (k, v) in d {
            let v = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            data.insert(k.clone(), Value::String(v));
        }
    }
    data.insert("notification_id".into(), Value::String(job.notification_id.to_string()));
    msg.insert("data".into(), Value::Object(data));

    let mut android = Map::new();
    let priority = match job.priority {
        Priority::High => "HIGH",
        Priority::Normal => "NORMAL",
    };
    android.insert("priority".into(), json!(priority));
    if let Some(ttl) = payload.get("ttl").and_then(Value::as_u64) {
        android.insert("ttl".into(), json!(format!("{ttl}s")));
    }
    let mut android_notification = Map::new();
    if let Some(sound) = text("sound") {
        android_notification.insert("sound".into(), json!(sound));
    }
    if let Some(channel) = text("channelId") {
        android_notification.insert("channel_id".into(), json!(channel));
    }
    if !android_notification.is_empty() {
        android.insert("notification".into(), Value::Object(android_notification));
    }
    msg.insert("android".into(), Value::Object(android));

    let mut aps = Map::new();
    if let Some(sound) = text("sound") {
        aps.insert("sound".into(), json!(sound));
    }
    if let Some(badge) = payload.get("badge").and_then(Value::as_u64) {
        aps.insert("badge".into(), json!(badge));
    }
    if !aps.is_empty() {
        msg.insert("apns".into(), json!({ "payload": { "aps": aps } }));
    }
    Value::Object(msg)
}

/// How one FCM answer is classified (PROVIDERS.md), before the token-refresh rule is applied.
#[derive(Debug, Clone, PartialEq)]
pub enum Classified {
    Result(SendResult, Health),
    /// 401 without an FcmError: the access token was refused; get a new one and retry once.
    RefreshToken,
}

impl Classified {
    fn into_result(self) -> (SendResult, Health) {
        match self {
            Classified::Result(result, health) => (result, health),
            Classified::RefreshToken => {
                let error = "fcm: access token refused".to_string();
                (SendResult::Auth { error: error.clone() }, Health::AuthFailure(error))
            }
        }
    }
}

#[derive(Deserialize, Default)]
struct ErrorBody {
    #[serde(default)]
    error: GoogleError,
}

#[derive(Deserialize, Default)]
struct GoogleError {
    #[serde(default)]
    status: String,
    #[serde(default)]
    message: String,
    #[serde(default)]
    details: Vec<Value>,
}

/// The first retry of `QUOTA_EXCEEDED` waits at least this long when FCM gives no Retry-After.
pub const QUOTA_BACKOFF: Duration = Duration::from_secs(60);

/// Classifies an FCM answer: on the FcmError `errorCode` first, then on the HTTP status.
/// `attempt` is the attempts already made for this message (for the one bounded retry of
/// `UNSPECIFIED_ERROR`).
pub fn classify(status: u16, body: &[u8], retry_after: Option<Duration>, attempt: u32) -> Classified {
    use Classified::Result as R;
    if status == 200 {
        let name = serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|v| v.get("name").and_then(Value::as_str).map(str::to_string));
        return R(SendResult::Delivered { provider_message_id: name }, Health::Up);
    }
    let parsed: ErrorBody = serde_json::from_slice(body).unwrap_or_default();
    let google = parsed.error;
    let type_is = |v: &Value, suffix: &str| v.get("@type").and_then(Value::as_str).is_some_and(|t| t.ends_with(suffix));
    let error_code = google
        .details
        .iter()
        .find(|d| type_is(d, "google.firebase.fcm.v1.FcmError"))
        .and_then(|d| d.get("errorCode").and_then(Value::as_str))
        .map(str::to_string);
    let on_token = google.details.iter().filter(|d| type_is(d, "google.rpc.BadRequest")).any(|d| {
        d.get("fieldViolations")
            .and_then(Value::as_array)
            .is_some_and(|vs| vs.iter().any(|v| v.get("field").and_then(Value::as_str) == Some("message.token")))
    });
    let what = error_code.as_deref().unwrap_or(google.status.as_str());
    let error = bounded(format!("fcm: HTTP {status} {what}: {}", google.message).replace(" : ", ": "));
    let retry =
        |after: Option<Duration>| R(SendResult::Retry { error: error.clone(), after }, Health::Outage(error.clone()));
    let auth = || R(SendResult::Auth { error: error.clone() }, Health::AuthFailure(error.clone()));
    let invalid = || R(SendResult::InvalidToken { error: error.clone() }, Health::Up);
    let permanent = || R(SendResult::Permanent { error: error.clone() }, Health::Up);
    match error_code.as_deref() {
        Some("UNREGISTERED") | Some("SENDER_ID_MISMATCH") => return invalid(),
        Some("INVALID_ARGUMENT") if on_token => return invalid(),
        Some("INVALID_ARGUMENT") => return permanent(),
        Some("QUOTA_EXCEEDED") => return retry(Some(retry_after.unwrap_or(QUOTA_BACKOFF))),
        Some("UNAVAILABLE") | Some("INTERNAL") => return retry(retry_after),
        Some("THIRD_PARTY_AUTH_ERROR") => return auth(),
        Some("UNSPECIFIED_ERROR") if attempt == 0 => {
            // One bounded retry; it says nothing about FCM's health.
            return R(SendResult::Retry { error, after: retry_after }, Health::Up);
        }
        Some("UNSPECIFIED_ERROR") => return permanent(),
        _ => {}
    }
    match status {
        401 => Classified::RefreshToken,
        403 => auth(),
        400 if on_token => invalid(),
        429 => retry(Some(retry_after.unwrap_or(QUOTA_BACKOFF))),
        500..=599 => retry(retry_after),
        _ => permanent(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn job(payload: Value, priority: Priority) -> Job {
        Job {
            notification_id: Uuid::nil(),
            device_id: Uuid::new_v4(),
            user_id: "u".into(),
            provider: Provider::Fcm,
            token: "fcm-token".into(),
            payload: payload.into(),
            priority,
            trace_id: "t".into(),
            attempt: 0,
            targets: 1,
            requeued: false,
            queued_ms: 0,
        }
    }

    fn error(status: u16, google_status: &str, code: Option<&str>) -> Vec<u8> {
        let mut details = vec![];
        if let Some(code) = code {
            details.push(json!({"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": code}));
        }
        json!({"error": {"code": status, "status": google_status, "message": "m", "details": details}})
            .to_string()
            .into_bytes()
    }

    fn result(c: Classified) -> (SendResult, Health) {
        match c {
            Classified::Result(r, h) => (r, h),
            Classified::RefreshToken => panic!("unexpected refresh"),
        }
    }

    #[test]
    fn the_message_has_string_data_priority_and_ttl() {
        let m = message(&job(
            json!({"title": "T", "body": "B", "data": {"order": 7, "tag": "x", "nested": {"a": 1}}, "ttl": 60,
                   "sound": "default", "badge": 3}),
            Priority::High,
        ));
        assert_eq!(
            m,
            json!({
                "token": "fcm-token",
                "notification": {"title": "T", "body": "B"},
                "data": {"order": "7", "tag": "x", "nested": "{\"a\":1}", "notification_id": Uuid::nil().to_string()},
                "android": {"priority": "HIGH", "ttl": "60s", "notification": {"sound": "default"}},
                "apns": {"payload": {"aps": {"sound": "default", "badge": 3}}}
            })
        );
        let quiet = message(&job(json!({"data": {"k": "v"}}), Priority::Normal));
        assert_eq!(quiet["android"], json!({"priority": "NORMAL"}));
        assert!(quiet.get("notification").is_none() && quiet.get("apns").is_none());
    }

    #[test]
    fn error_codes_are_classified_before_statuses() {
        type Case = (u16, &'static str, Option<&'static str>, fn(&SendResult) -> bool);
        let cases: &[Case] = &[
            (404, "NOT_FOUND", Some("UNREGISTERED"), |r| matches!(r, SendResult::InvalidToken { .. })),
            (403, "PERMISSION_DENIED", Some("SENDER_ID_MISMATCH"), |r| matches!(r, SendResult::InvalidToken { .. })),
            (400, "INVALID_ARGUMENT", Some("INVALID_ARGUMENT"), |r| matches!(r, SendResult::Permanent { .. })),
            (503, "UNAVAILABLE", Some("UNAVAILABLE"), |r| matches!(r, SendResult::Retry { .. })),
            (500, "INTERNAL", Some("INTERNAL"), |r| matches!(r, SendResult::Retry { .. })),
            (401, "UNAUTHENTICATED", Some("THIRD_PARTY_AUTH_ERROR"), |r| matches!(r, SendResult::Auth { .. })),
            (403, "PERMISSION_DENIED", None, |r| matches!(r, SendResult::Auth { .. })),
            (502, "", None, |r| matches!(r, SendResult::Retry { .. })),
            (400, "FAILED_PRECONDITION", None, |r| matches!(r, SendResult::Permanent { .. })),
        ];
        for (status, google, code, expected) in cases {
            let (r, _) = result(classify(*status, &error(*status, google, *code), None, 0));
            assert!(expected(&r), "{status} {code:?} → {r:?}");
        }
    }

    #[test]
    fn health_follows_the_class() {
        let (_, h) = result(classify(503, &error(503, "UNAVAILABLE", Some("UNAVAILABLE")), None, 0));
        assert!(matches!(h, Health::Outage(_)));
        let (_, h) = result(classify(401, &error(401, "UNAUTHENTICATED", Some("THIRD_PARTY_AUTH_ERROR")), None, 0));
        assert!(matches!(h, Health::AuthFailure(_)));
        let (_, h) = result(classify(404, &error(404, "NOT_FOUND", Some("UNREGISTERED")), None, 0));
        assert_eq!(h, Health::Up);
    }

    #[test]
    fn a_violation_on_the_token_makes_invalid_argument_an_invalid_token() {
        let body = json!({"error": {"code": 400, "status": "INVALID_ARGUMENT", "message": "bad token", "details": [
            {"@type": "type.googleapis.com/google.rpc.BadRequest",
             "fieldViolations": [{"field": "message.token", "description": "Invalid registration token"}]},
            {"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": "INVALID_ARGUMENT"}]}});
        let (r, _) = result(classify(400, body.to_string().as_bytes(), None, 0));
        assert!(matches!(r, SendResult::InvalidToken { .. }), "{r:?}");
    }

    #[test]
    fn quota_waits_for_retry_after_or_a_minute() {
        let body = error(429, "RESOURCE_EXHAUSTED", Some("QUOTA_EXCEEDED"));
        let (r, _) = result(classify(429, &body, Some(Duration::from_secs(7)), 0));
        assert!(matches!(r, SendResult::Retry { after: Some(d), .. } if d == Duration::from_secs(7)));
        let (r, _) = result(classify(429, &body, None, 0));
        assert!(matches!(r, SendResult::Retry { after: Some(d), .. } if d == QUOTA_BACKOFF));
        let (r, _) =
            result(classify(503, &error(503, "UNAVAILABLE", Some("UNAVAILABLE")), Some(Duration::from_secs(2)), 0));
        assert!(matches!(r, SendResult::Retry { after: Some(d), .. } if d == Duration::from_secs(2)));
    }

    #[test]
    fn unspecified_error_is_retried_once_then_permanent() {
        let body = error(500, "UNKNOWN", Some("UNSPECIFIED_ERROR"));
        assert!(matches!(result(classify(500, &body, None, 0)).0, SendResult::Retry { .. }));
        assert!(matches!(result(classify(500, &body, None, 1)).0, SendResult::Permanent { .. }));
    }

    #[test]
    fn a_bare_401_asks_for_a_new_token() {
        assert_eq!(classify(401, &error(401, "UNAUTHENTICATED", None), None, 0), Classified::RefreshToken);
        assert_eq!(classify(401, b"", None, 0), Classified::RefreshToken);
    }

    #[test]
    fn a_200_keeps_the_message_name() {
        let (r, h) = result(classify(200, br#"{"name":"projects/p/messages/42"}"#, None, 0));
        assert_eq!(r, SendResult::Delivered { provider_message_id: Some("projects/p/messages/42".into()) });
        assert_eq!(h, Health::Up);
    }

    #[test]
    fn an_absurd_expires_in_is_capped_at_an_hour() {
        // Found while writing the token-answer properties: `expires_in` near u64::MAX overflowed
        // `Instant + lifetime` and panicked the sender that fetched the token.
        let body = json!({"access_token": "t", "expires_in": u64::MAX}).to_string();
        let (token, refresh_in) = token_answer(200, body.as_bytes()).expect("token");
        assert_eq!((token.as_str(), refresh_in), ("t", MAX_TOKEN_LIFETIME - REFRESH_BEFORE));
        let (_, refresh_in) = token_answer(200, br#"{"access_token":"t","expires_in":3599}"#).expect("token");
        assert_eq!(refresh_in, Duration::from_secs(3599) - REFRESH_BEFORE);
    }

    #[test]
    fn a_binary_token_endpoint_answer_gives_a_bounded_error() {
        // Found by the `fcm` fuzz target: 200 bytes that are not UTF-8 became 600 bytes of `�`.
        for status in [255, 400, 503] {
            let (Err(TokenError::Refused(e)) | Err(TokenError::Unavailable(e))) = token_answer(status, &[0xff; 300])
            else {
                panic!("{status} gave a token");
            };
            assert!(e.len() <= crate::providers::MAX_ERROR_BYTES, "{status}: {} bytes", e.len());
        }
        assert!(snippet(&[0xff; 300]).len() <= 200);
    }

    #[test]
    fn a_long_error_message_is_cut_to_a_bounded_error() {
        let body = json!({"error": {"status": "INTERNAL", "message": "m".repeat(70_000)}}).to_string();
        let (r, h) = result(classify(500, body.as_bytes(), None, 0));
        assert!(r.error().is_some_and(|e| e.len() <= crate::providers::MAX_ERROR_BYTES), "{r:?}");
        assert!(matches!(h, Health::Outage(e) if e.len() <= crate::providers::MAX_ERROR_BYTES));
    }

    #[test]
    fn a_service_account_without_a_usable_key_is_refused() {
        let raw = json!({"project_id": "p", "client_email": "a@b", "private_key": "nope"}).to_string();
        assert!(ServiceAccount::from_json(&raw).unwrap_err().contains("private_key"));
        assert!(ServiceAccount::from_json("{}").unwrap_err().contains("service-account"));
    }
}

#[cfg(test)]
mod proptests {
    use super::*;
    use crate::providers::check::{assert_one_class, body, class, status};
    use crate::providers::MAX_RETRY_AFTER;
    use proptest::prelude::*;

    const ERROR_CODES: &[&str] = &[
        "UNREGISTERED",
        "SENDER_ID_MISMATCH",
        "INVALID_ARGUMENT",
        "QUOTA_EXCEEDED",
        "UNAVAILABLE",
        "INTERNAL",
        "THIRD_PARTY_AUTH_ERROR",
        "UNSPECIFIED_ERROR",
    ];

    fn fcm_error(code: &str) -> Value {
        json!({"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": code})
    }

    fn body_with(status: u16, details: Vec<Value>) -> Vec<u8> {
        json!({"error": {"code": status, "status": "S", "message": "m", "details": details}}).to_string().into_bytes()
    }

    /// The class of a classified answer; a token refresh is its own.
    fn class_of(c: &Classified) -> &'static str {
        match c {
            Classified::Result(r, h) => {
                assert_one_class(r, h);
                class(r)
            }
            Classified::RefreshToken => "REFRESH",
        }
    }

    #[test]
    fn every_documented_row_maps_to_its_class() {
        let on_token = json!({"@type": "type.googleapis.com/google.rpc.BadRequest",
                              "fieldViolations": [{"field": "message.token"}]});
        let rows: Vec<(u16, Vec<Value>, u32, &str)> = vec![
            (404, vec![fcm_error("UNREGISTERED")], 0, "INVALID"),
            (403, vec![fcm_error("SENDER_ID_MISMATCH")], 0, "INVALID"),
            (400, vec![fcm_error("INVALID_ARGUMENT")], 0, "PERM"),
            (400, vec![on_token.clone(), fcm_error("INVALID_ARGUMENT")], 0, "INVALID"),
            (400, vec![on_token], 0, "INVALID"),
            (429, vec![fcm_error("QUOTA_EXCEEDED")], 0, "RETRY"),
            (429, vec![], 0, "RETRY"),
            (503, vec![fcm_error("UNAVAILABLE")], 0, "RETRY"),
            (500, vec![fcm_error("INTERNAL")], 0, "RETRY"),
            (503, vec![], 0, "RETRY"),
            (401, vec![fcm_error("THIRD_PARTY_AUTH_ERROR")], 0, "AUTH"),
            (403, vec![], 0, "AUTH"),
            (401, vec![], 0, "REFRESH"),
            (500, vec![fcm_error("UNSPECIFIED_ERROR")], 0, "RETRY"),
            (500, vec![fcm_error("UNSPECIFIED_ERROR")], 1, "PERM"),
        ];
        for (status, details, attempt, expected) in rows {
            let body = body_with(status, details.clone());
            assert_eq!(class_of(&classify(status, &body, None, attempt)), expected, "{status} {details:?}");
        }
        assert_eq!(class_of(&classify(200, br#"{"name":"projects/p/messages/1"}"#, None, 0)), "OK");
        // QUOTA_EXCEEDED: Retry-After, else at least a minute.
        let quota = body_with(429, vec![fcm_error("QUOTA_EXCEEDED")]);
        let after = |c: Classified| match c {
            Classified::Result(SendResult::Retry { after, .. }, _) => after,
            other => panic!("{other:?}"),
        };
        assert_eq!(after(classify(429, &quota, None, 0)), Some(QUOTA_BACKOFF));
        assert_eq!(after(classify(429, &quota, Some(Duration::from_secs(5)), 0)), Some(Duration::from_secs(5)));
        // The token endpoint: 400/401 are AUTH (refused), others an outage.
        assert!(matches!(token_answer(400, b"{}"), Err(TokenError::Refused(_))));
        assert!(matches!(token_answer(401, b"{}"), Err(TokenError::Refused(_))));
        assert!(matches!(token_answer(503, b""), Err(TokenError::Unavailable(_))));
    }

    fn structured_body() -> impl Strategy<Value = (u16, Vec<u8>)> {
        let code = prop_oneof![prop::sample::select(ERROR_CODES).prop_map(str::to_string), any::<String>()];
        let detail = prop_oneof![
            code.prop_map(|c| fcm_error(&c)),
            Just(json!({"@type": "type.googleapis.com/google.rpc.BadRequest",
                        "fieldViolations": [{"field": "message.token"}]})),
            crate::job::proptests::json_value(),
        ];
        let message = prop_oneof![any::<String>(), "\\PC{600,1200}"];
        (status(), prop::collection::vec(detail, 0..3), any::<String>(), message).prop_map(
            |(status, details, google_status, message)| {
                let body = json!({"error": {"code": status, "status": google_status, "message": message,
                                            "details": details}});
                (status, body.to_string().into_bytes())
            },
        )
    }

    proptest! {
        #[test]
        fn any_answer_is_one_class(
            status in status(),
            body in body(),
            after in proptest::option::of(0u64..=MAX_RETRY_AFTER.as_secs()),
            attempt in 0u32..3,
        ) {
            let classified = classify(status, &body, after.map(Duration::from_secs), attempt);
            let class = class_of(&classified);
            // Only a bare 401 asks for a new token; 200 is always delivered.
            prop_assert!(class != "REFRESH" || status == 401, "{}", class);
            prop_assert_eq!(class == "OK", status == 200);
        }

        #[test]
        fn error_bodies_are_classified_on_the_error_code_first(
            (status, body) in structured_body(),
            attempt in 0u32..3,
        ) {
            let classified = classify(status, &body, None, attempt);
            let class = class_of(&classified);
            let parsed: Value = serde_json::from_slice(&body).unwrap();
            let code = parsed["error"]["details"].as_array().and_then(|ds| {
                ds.iter()
                    .find(|d| d["@type"].as_str().is_some_and(|t| t.ends_with("google.firebase.fcm.v1.FcmError")))
                    .and_then(|d| d["errorCode"].as_str())
            });
            let expected = match code {
                _ if status == 200 => Some("OK"),
                Some("UNREGISTERED" | "SENDER_ID_MISMATCH") => Some("INVALID"),
                Some("QUOTA_EXCEEDED" | "UNAVAILABLE" | "INTERNAL") => Some("RETRY"),
                Some("THIRD_PARTY_AUTH_ERROR") => Some("AUTH"),
                Some("UNSPECIFIED_ERROR") => Some(if attempt == 0 { "RETRY" } else { "PERM" }),
                _ => None,
            };
            if let Some(expected) = expected {
                prop_assert_eq!(class, expected);
            }
        }

        #[test]
        fn any_token_answer_is_a_token_used_at_most_an_hour_or_a_bounded_error(status in status(), body in body()) {
            match token_answer(status, &body) {
                Ok((_, refresh_in)) => prop_assert!(status == 200 && refresh_in <= MAX_TOKEN_LIFETIME),
                Err(TokenError::Refused(e) | TokenError::Unavailable(e)) => {
                    prop_assert!(e.len() <= crate::providers::MAX_ERROR_BYTES, "{} bytes", e.len())
                }
            }
        }

        #[test]
        fn any_expires_in_gives_a_refresh_within_the_hour(expires_in in any::<u64>()) {
            let body = json!({"access_token": "t", "expires_in": expires_in}).to_string();
            let (_, refresh_in) = token_answer(200, body.as_bytes()).unwrap();
            prop_assert!(refresh_in <= Duration::from_secs(expires_in).min(MAX_TOKEN_LIFETIME));
            prop_assert!(refresh_in >= Duration::from_secs(expires_in).min(MAX_TOKEN_LIFETIME) / 2);
        }
    }
}
