//! FCM HTTP v1 emulator, with Google's OAuth token endpoint.
//!
//! `POST /token` takes `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer&assertion=<jwt>`
//! and verifies the assertion as Google does: RS256 only, signed by the emulator's service
//! account ([`FcmEmulator::service_account_json`]), `iss` = its `client_email`, `aud` = this
//! endpoint, `scope` including firebase.messaging, `exp` in the future and at most an hour after
//! `iat`. Refusals are 400 `invalid_grant` / `invalid_scope` / `unsupported_grant_type`. It answers
//! `{"access_token","expires_in"}` (3599 s unless [`FcmEmulator::set_token_lifetime`] says
//! otherwise). The assertion's times and the access tokens' lifetimes are judged on the
//! emulator's clock ([`FcmEmulator::with_clock`]; the system's unless a test passes its own).
//!
//! `POST /v1/projects/{project}/messages:send` requires a live access token (else 401
//! `UNAUTHENTICATED` without an FcmError, as Google answers a stale token), the emulator's
//! project (else 403 `PERMISSION_DENIED`, no FcmError), a `message.token`, string `data`
//! values, `android.priority` NORMAL|HIGH, `android.ttl` a protobuf Duration of 0 to 2,419,200
//! seconds (`"3600s"`, `"1.5s"`), `android.collapse_key` a string, `apns.headers` a map of
//! strings, and at most 4096 bytes of payload (else 400 `INVALID_ARGUMENT`; a bad field is named
//! in a `google.rpc.BadRequest` detail, as FCM's ErrorCode reference says of INVALID_ARGUMENT). Tokens containing a failure word get that answer: `unregistered` (404
//! UNREGISTERED), `senderidmismatch` (403 SENDER_ID_MISMATCH), `badtoken` (400 INVALID_ARGUMENT
//! with a `message.token` field violation), `invalidargument` (400 INVALID_ARGUMENT), `quota`
//! (429 QUOTA_EXCEEDED, `Retry-After: 1`; `quotanoretry` without it), `unavailable` (503),
//! `internal` (500), `thirdpartyauth` (401 THIRD_PARTY_AUTH_ERROR), `unspecified` (500
//! UNSPECIFIED_ERROR).
//!
//! Admin: `POST /__emulator/fail {"status":503,"count":N | "for_ms":M, "code":"…"}` fails sends
//! as a whole (401 and 403 without `code` carry no FcmError; 429 and 503 carry `Retry-After: 1`
//! unless `"retry_after_secs"` says otherwise); `POST /__emulator/fail-token` the
//! same for the token endpoint; `POST /__emulator/revoke` invalidates every access token issued;
//! `GET /__emulator/stats` counts `sent`, `requests`, `http2_requests` and `token_requests`.
//!
//! It speaks plain HTTP: HTTP/1.1, or HTTP/2 with prior knowledge (h2c), which is what the
//! relay's client speaks to an `http://` base URL (Google serves HTTP/2 over TLS).

use crate::failure::{FailPlan, Failure};
use crate::http::{Failing, Server};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use notify_relay_engine::clock::{Clock, SystemClock};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// The emulator's service-account key. It signs nothing but requests to this emulator.
const PRIVATE_KEY: &str = include_str!("../keys/fcm-emulator-key.pem");
const PUBLIC_KEY: &str = include_str!("../keys/fcm-emulator-key.pub.pem");
pub const PROJECT_ID: &str = "notify-relay-emulator";
pub const CLIENT_EMAIL: &str = "relay@notify-relay-emulator.iam.gserviceaccount.com";
const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";
pub const MAX_PAYLOAD_BYTES: usize = 4096;

/// One message the emulator accepted.
#[derive(Debug, Clone)]
pub struct Sent {
    pub token: String,
    pub message: Value,
    pub name: String,
    pub received_at: std::time::SystemTime,
}

impl Sent {
    pub fn notification_id(&self) -> Option<&str> {
        self.message.pointer("/data/notification_id").and_then(Value::as_str)
    }

    /// `android.ttl` as sent (`"3600s"`).
    pub fn android_ttl(&self) -> Option<&str> {
        self.message.pointer("/android/ttl").and_then(Value::as_str)
    }

    /// `android.collapse_key`.
    pub fn collapse_key(&self) -> Option<&str> {
        self.message.pointer("/android/collapse_key").and_then(Value::as_str)
    }

    /// `apns.headers["apns-expiration"]` (Unix seconds, a string).
    pub fn apns_expiration(&self) -> Option<&str> {
        self.message.pointer("/apns/headers/apns-expiration").and_then(Value::as_str)
    }

    /// `apns.headers["apns-collapse-id"]`.
    pub fn apns_collapse_id(&self) -> Option<&str> {
        self.message.pointer("/apns/headers/apns-collapse-id").and_then(Value::as_str)
    }
}

struct State {
    /// The emulator's own base URL: the audience of the token endpoint.
    url: String,
    sent: Vec<Sent>,
    requests: usize,
    /// Send requests that came over HTTP/2.
    http2_requests: usize,
    token_requests: usize,
    /// Access token → when it expires.
    tokens: HashMap<String, Instant>,
    token_lifetime: Duration,
    /// What token lifetimes and the assertion's `iat` are judged on.
    clock: Arc<dyn Clock>,
    fail: Failure,
    fail_token: Failure,
}

impl Failing for State {
    fn failure(&mut self) -> &mut Failure {
        &mut self.fail
    }
}

pub struct FcmEmulator {
    pub addr: SocketAddr,
    server: Server<State>,
}

impl FcmEmulator {
    /// Starts on `addr` (`127.0.0.1:0` for a free port) in the current actix System.
    pub async fn start(addr: &str) -> std::io::Result<FcmEmulator> {
        let state = State {
            url: String::new(),
            sent: Vec::new(),
            requests: 0,
            http2_requests: 0,
            token_requests: 0,
            tokens: HashMap::new(),
            token_lifetime: Duration::from_secs(3599),
            clock: Arc::new(SystemClock),
            fail: Failure::default(),
            fail_token: Failure::default(),
        };
        let server = Server::start(addr, state, None, routes)?;
        let addr = server.addr;
        server.with(|s| s.url = format!("http://{addr}"));
        Ok(FcmEmulator { addr, server })
    }

    /// Judges assertions and access-token lifetimes on `clock` from now on (set it before the
    /// first request): a test that shares a `ManualClock` with the relay's token source moves
    /// both past a token's hour at once.
    pub fn with_clock(self, clock: Arc<dyn Clock>) -> FcmEmulator {
        self.server.with(|s| s.clock = clock);
        self
    }

    /// The base URL (`providers.fcm.base_url`).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A service-account JSON key for this emulator (`providers.fcm.service_account_json`).
    pub fn service_account_json(&self) -> String {
        json!({
            "type": "service_account",
            "project_id": PROJECT_ID,
            "private_key_id": "emulator",
            "private_key": PRIVATE_KEY,
            "client_email": CLIENT_EMAIL,
            "token_uri": format!("{}/token", self.url()),
        })
        .to_string()
    }

    /// Writes `fcm-service-account.json` into `dir` and returns its path.
    pub fn write_credentials(&self, dir: &std::path::Path) -> std::io::Result<std::path::PathBuf> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("fcm-service-account.json");
        std::fs::write(&path, self.service_account_json())?;
        Ok(path)
    }

    pub fn sent(&self) -> Vec<Sent> {
        self.server.with(|s| s.sent.clone())
    }

    pub fn sent_count(&self) -> usize {
        self.server.with(|s| s.sent.len())
    }

    /// How many times this notification reached this token.
    pub fn sends_of(&self, notification_id: Uuid, token: &str) -> usize {
        let id = notification_id.to_string();
        self.server.with(|s| s.sent.iter().filter(|m| m.token == token && m.notification_id() == Some(&id)).count())
    }

    /// Send requests received (any outcome).
    pub fn requests(&self) -> usize {
        self.server.with(|s| s.requests)
    }

    /// Send requests that came over HTTP/2 (h2c: the relay's client speaks it to an `http://`
    /// URL).
    pub fn http2_requests(&self) -> usize {
        self.server.with(|s| s.http2_requests)
    }

    /// Token requests received (any outcome).
    pub fn token_requests(&self) -> usize {
        self.server.with(|s| s.token_requests)
    }

    /// Access tokens issued from now on live this long.
    pub fn set_token_lifetime(&self, lifetime: Duration) {
        self.server.with(|s| s.token_lifetime = lifetime)
    }

    /// Every access token issued so far stops working (401 on the next send).
    pub fn revoke_tokens(&self) {
        self.server.with(|s| s.tokens.clear())
    }

    /// The next `count` sends fail as a whole with `status` (FcmError `code` when given).
    pub fn fail_next(&self, status: u16, code: Option<&str>, count: usize) {
        self.server.with(|s| s.fail.set(FailPlan::next(status, count).with_code(code)))
    }

    /// Every send fails with `status` for `duration`.
    pub fn fail_for(&self, status: u16, duration: Duration) {
        self.server.with(|s| s.fail.set(FailPlan::lasting(status, duration)))
    }

    /// The next `count` token requests fail with `status`.
    pub fn fail_token_next(&self, status: u16, count: usize) {
        self.server.with(|s| s.fail_token.set(FailPlan::next(status, count)))
    }

    pub async fn stop(self) {
        self.server.stop().await;
    }
}

fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/token", web::post().to(token))
        .route("/v1/projects/{project}/messages:send", web::post().to(send))
        .route("/__emulator/fail", web::post().to(crate::http::set_failure::<State>))
        .route("/__emulator/fail-token", web::post().to(fail_token))
        .route("/__emulator/revoke", web::post().to(revoke))
        .route("/__emulator/stats", web::get().to(stats));
}

fn status_of(code: u16) -> StatusCode {
    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

fn oauth_error(status: u16, error: &str, description: &str) -> HttpResponse {
    HttpResponse::build(status_of(status)).json(json!({"error": error, "error_description": description}))
}

#[derive(Deserialize)]
struct TokenForm {
    grant_type: String,
    assertion: String,
}

#[derive(Deserialize)]
struct AssertionClaims {
    iss: String,
    scope: String,
    iat: u64,
    exp: u64,
}

/// Checks an assertion as Google's token endpoint does, at `now_secs` (the emulator's clock); the
/// error is the OAuth error body.
fn verify_assertion(assertion: &str, audience: &str, now_secs: u64) -> Result<(), (&'static str, String)> {
    let header = jsonwebtoken::decode_header(assertion).map_err(|e| ("invalid_grant", format!("Invalid JWT: {e}")))?;
    if header.alg != Algorithm::RS256 {
        return Err(("invalid_grant", format!("Invalid JWT: algorithm {:?} is not RS256", header.alg)));
    }
    let key = DecodingKey::from_rsa_pem(PUBLIC_KEY.as_bytes())
        .map_err(|e| ("invalid_grant", format!("emulator key unusable: {e}")))?;
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_audience(&[audience]);
    validation.set_required_spec_claims(&["exp", "iat", "iss", "aud"]);
    validation.leeway = 60;
    // `exp` is judged below on the emulator's clock, not on the system's.
    validation.validate_exp = false;
    let invalid = |e: jsonwebtoken::errors::Error| ("invalid_grant", format!("Invalid JWT Signature or claims: {e}"));
    let claims = jsonwebtoken::decode::<AssertionClaims>(assertion, &key, &validation).map_err(invalid)?.claims;
    if claims.exp.saturating_add(validation.leeway) < now_secs {
        return Err(invalid(jsonwebtoken::errors::ErrorKind::ExpiredSignature.into()));
    }
    if claims.iss != CLIENT_EMAIL {
        return Err(("invalid_grant", format!("Invalid grant: account not found ({})", claims.iss)));
    }
    if !claims.scope.split_whitespace().any(|s| s == SCOPE) {
        return Err(("invalid_scope", format!("scope must include {SCOPE}")));
    }
    if claims.exp <= claims.iat || claims.exp - claims.iat > 3600 {
        return Err(("invalid_grant", "Invalid JWT: exp must be after iat and at most an hour later".into()));
    }
    if claims.iat > now_secs + 60 {
        return Err((
            "invalid_grant",
            "Invalid JWT: Token must be a short-lived token and in a reasonable timeframe".into(),
        ));
    }
    Ok(())
}

async fn token(form: web::Form<TokenForm>, state: web::Data<Mutex<State>>) -> HttpResponse {
    let Ok(mut state) = state.lock() else {
        return oauth_error(500, "internal_failure", "emulator state poisoned");
    };
    state.token_requests += 1;
    if let Some(plan) = state.fail_token.strike() {
        return oauth_error(plan.status, "invalid_client", "injected failure");
    }
    if form.grant_type != "urn:ietf:params:oauth:grant-type:jwt-bearer" {
        return oauth_error(400, "unsupported_grant_type", &format!("Invalid grant_type: {}", form.grant_type));
    }
    let audience = format!("{}/token", state.url);
    if let Err((error, description)) = verify_assertion(&form.assertion, &audience, state.clock.unix_secs()) {
        return oauth_error(400, error, &description);
    }
    let access_token = format!("ya29.emulator-{}", Uuid::new_v4().simple());
    let lifetime = state.token_lifetime;
    let expires = state.clock.now() + lifetime;
    state.tokens.insert(access_token.clone(), expires);
    HttpResponse::Ok()
        .json(json!({"access_token": access_token, "expires_in": lifetime.as_secs(), "token_type": "Bearer"}))
}

fn google_status(status: u16) -> &'static str {
    match status {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        429 => "RESOURCE_EXHAUSTED",
        503 => "UNAVAILABLE",
        _ => "INTERNAL",
    }
}

/// An error as FCM sends it; `code` becomes the FcmError `errorCode`, `token_violation` adds
/// the `google.rpc.BadRequest` detail naming `message.token`.
fn fcm_error(status: u16, code: Option<&str>, message: &str, token_violation: bool) -> HttpResponse {
    let violation = token_violation.then_some(("message.token", "Invalid registration token"));
    fcm_error_on(status, code, message, violation)
}

/// [`fcm_error`] with a `google.rpc.BadRequest` detail naming `(field, description)`.
fn fcm_error_on(status: u16, code: Option<&str>, message: &str, violation: Option<(&str, &str)>) -> HttpResponse {
    let mut details = Vec::new();
    if let Some((field, description)) = violation {
        details.push(json!({"@type": "type.googleapis.com/google.rpc.BadRequest",
            "fieldViolations": [{"field": field, "description": description}]}));
    }
    if let Some(code) = code {
        details.push(json!({"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": code}));
    }
    let mut resp = HttpResponse::build(status_of(status));
    let body =
        json!({"error": {"code": status, "message": message, "status": google_status(status), "details": details}});
    resp.json(body)
}

fn with_retry_after(mut resp: HttpResponse, seconds: u64) -> HttpResponse {
    crate::http::retry_after(&mut resp, seconds);
    resp
}

/// The answer to a device token containing `word` (the first that matches, in this order).
struct TokenWord {
    word: &'static str,
    status: u16,
    code: &'static str,
    /// With the `google.rpc.BadRequest` detail naming `message.token`.
    token_violation: bool,
    retry_after_secs: Option<u64>,
}

const fn word(word: &'static str, status: u16, code: &'static str) -> TokenWord {
    TokenWord { word, status, code, token_violation: false, retry_after_secs: None }
}

/// `quotanoretry` before `quota`, which it contains.
const TOKEN_WORDS: &[TokenWord] = &[
    word("unregistered", 404, "UNREGISTERED"),
    word("senderidmismatch", 403, "SENDER_ID_MISMATCH"),
    TokenWord { token_violation: true, ..word("badtoken", 400, "INVALID_ARGUMENT") },
    word("invalidargument", 400, "INVALID_ARGUMENT"),
    word("quotanoretry", 429, "QUOTA_EXCEEDED"),
    TokenWord { retry_after_secs: Some(1), ..word("quota", 429, "QUOTA_EXCEEDED") },
    word("unavailable", 503, "UNAVAILABLE"),
    word("internal", 500, "INTERNAL"),
    word("thirdpartyauth", 401, "THIRD_PARTY_AUTH_ERROR"),
    word("unspecified", 500, "UNSPECIFIED_ERROR"),
];

/// The injected whole-request failure for `status`, FCM-shaped (429 and 503 with
/// `Retry-After: 1`, as Google answers, unless the plan says otherwise).
fn injected(status: u16, code: Option<&str>, retry_after_secs: Option<u64>) -> HttpResponse {
    let code = code.or(match status {
        429 => Some("QUOTA_EXCEEDED"),
        500 => Some("INTERNAL"),
        503 => Some("UNAVAILABLE"),
        _ => None,
    });
    let message = match status {
        401 => "Request had invalid authentication credentials. Expected OAuth 2 access token.",
        403 => "Permission 'cloudmessaging.messages.create' denied on resource",
        _ => "injected failure",
    };
    let resp = fcm_error(status, code, message, false);
    match retry_after_secs.or(matches!(status, 429 | 503).then_some(1)) {
        Some(seconds) => with_retry_after(resp, seconds),
        None => resp,
    }
}

async fn send(
    req: HttpRequest,
    project: web::Path<String>,
    body: web::Bytes,
    state: web::Data<Mutex<State>>,
) -> HttpResponse {
    let Ok(mut state) = state.lock() else {
        return fcm_error(500, Some("INTERNAL"), "emulator state poisoned", false);
    };
    state.requests += 1;
    if req.version() == actix_web::http::Version::HTTP_2 {
        state.http2_requests += 1;
    }
    if let Some(plan) = state.fail.strike() {
        return injected(plan.status, plan.code.as_deref(), plan.retry_after_secs);
    }
    let bearer =
        req.headers().get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    let now = state.clock.now();
    let live = bearer.and_then(|t| state.tokens.get(t)).is_some_and(|until| now < *until);
    if !live {
        return injected(401, None, None);
    }
    if project.as_str() != PROJECT_ID {
        return injected(403, None, None);
    }
    let mut parsed: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return fcm_error(400, None, &format!("Invalid JSON payload received. {e}"), false),
    };
    let Some(message) = parsed.get("message").filter(|m| m.is_object()) else {
        return fcm_error(400, Some("INVALID_ARGUMENT"), "Request contains an invalid argument: message", false);
    };
    let Some(token) = message.get("token").and_then(Value::as_str) else {
        return fcm_error(400, Some("INVALID_ARGUMENT"), "Recipient of the message is not set.", false);
    };
    if let Some(data) = message.get("data") {
        let strings = data.as_object().is_some_and(|d| d.values().all(Value::is_string));
        if !strings {
            return fcm_error(
                400,
                Some("INVALID_ARGUMENT"),
                "Invalid value at 'message.data': values must be strings",
                false,
            );
        }
    }
    if let Some(priority) = message.pointer("/android/priority") {
        if !matches!(priority.as_str(), Some("NORMAL" | "HIGH")) {
            return fcm_error(400, Some("INVALID_ARGUMENT"), "Invalid value at 'message.android.priority'", false);
        }
    }
    if let Some(refusal) = lifetime_fields(message) {
        return refusal;
    }
    let size = body.len().saturating_sub(token.len());
    if size > MAX_PAYLOAD_BYTES {
        return fcm_error(400, Some("INVALID_ARGUMENT"), &format!("Message is too big: {size} bytes"), false);
    }
    let lower = token.to_ascii_lowercase();
    if let Some(word) = TOKEN_WORDS.iter().find(|w| lower.contains(w.word)) {
        let message = format!("injected {} for this token", word.code);
        let resp = fcm_error(word.status, Some(word.code), &message, word.token_violation);
        return match word.retry_after_secs {
            Some(seconds) => with_retry_after(resp, seconds),
            None => resp,
        };
    }
    let name = format!("projects/{PROJECT_ID}/messages/{}", Uuid::new_v4().simple());
    let token = token.to_string();
    // The parsed message is kept as it is (not copied).
    let message = parsed.get_mut("message").map(Value::take).unwrap_or_default();
    let sent = Sent { token, message, name: name.clone(), received_at: std::time::SystemTime::now() };
    state.sent.push(sent);
    HttpResponse::Ok().json(json!({ "name": name }))
}

/// FCM's longest `android.ttl`: "a duration from 0 to 2,419,200 seconds (28 days)".
pub const MAX_TTL_SECS: u64 = 2_419_200;

/// Whether `ttl` is what FCM takes for `android.ttl`: a protobuf Duration in its JSON form
/// (whole seconds, then up to nine fractional digits, then `s`) between 0 and [`MAX_TTL_SECS`].
pub fn valid_ttl(ttl: &str) -> bool {
    let Some(number) = ttl.strip_suffix('s') else { return false };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    let fraction_ok = !number.contains('.') || (!fraction.is_empty() && fraction.len() <= 9 && digits(fraction));
    if whole.is_empty() || !digits(whole) || !fraction_ok {
        return false;
    }
    // Exactly 2,419,200 s is allowed, a fraction more is not.
    match whole.parse::<u64>() {
        Ok(secs) if secs < MAX_TTL_SECS => true,
        Ok(MAX_TTL_SECS) => fraction.bytes().all(|b| b == b'0'),
        _ => false,
    }
}

/// The refusal of a message whose lifetime or collapse fields FCM would not take, as it answers
/// a bad field: 400 INVALID_ARGUMENT naming it.
fn lifetime_fields(message: &Value) -> Option<HttpResponse> {
    let refuse = |field: &str, what: &str| {
        let text = format!("Invalid value at '{field}': {what}");
        Some(fcm_error_on(400, Some("INVALID_ARGUMENT"), &text, Some((field, what))))
    };
    if let Some(ttl) = message.pointer("/android/ttl") {
        if !ttl.as_str().is_some_and(valid_ttl) {
            return refuse("message.android.ttl", &format!("not a duration of 0 to {MAX_TTL_SECS}s: {ttl}"));
        }
    }
    if message.pointer("/android/collapse_key").is_some_and(|k| !k.is_string()) {
        return refuse("message.android.collapse_key", "must be a string");
    }
    if let Some(headers) = message.pointer("/apns/headers") {
        if !headers.as_object().is_some_and(|h| h.values().all(Value::is_string)) {
            return refuse("message.apns.headers", "must be a map of strings");
        }
    }
    None
}

async fn fail_token(plan: web::Json<FailPlan>, state: web::Data<Mutex<State>>) -> HttpResponse {
    if let Ok(mut s) = state.lock() {
        s.fail_token.set(plan.into_inner());
    }
    HttpResponse::NoContent().finish()
}

async fn revoke(state: web::Data<Mutex<State>>) -> HttpResponse {
    if let Ok(mut s) = state.lock() {
        s.tokens.clear();
    }
    HttpResponse::NoContent().finish()
}

async fn stats(state: web::Data<Mutex<State>>) -> HttpResponse {
    let body = state
        .lock()
        .map(|s| {
            json!({
                "sent": s.sent.len(),
                "requests": s.requests,
                "http2_requests": s.http2_requests,
                "token_requests": s.token_requests,
            })
        })
        .unwrap_or_default();
    HttpResponse::Ok().json(body)
}
