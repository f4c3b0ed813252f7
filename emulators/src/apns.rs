//! APNs emulator: HTTP/2 over TLS with a self-signed certificate for `localhost`/`127.0.0.1`
//! (generated at start, [`ApnsEmulator::ca_pem`]) and a generated .p8 signing key
//! ([`ApnsEmulator::key_pem`], key id [`KEY_ID`], team [`TEAM_ID`], topic [`TOPIC`]).
//!
//! `POST /3/device/<64 hex>` answers like Apple (docs/providers.md): requests that are not HTTP/2
//! are refused (505), then the provider token is checked (403 `MissingProviderToken`,
//! `InvalidProviderToken` for a wrong key id, signature or team, `ExpiredProviderToken` past
//! [`Rules::token_max_age`], 429 `TooManyProviderTokenUpdates` for a new token sooner than
//! [`Rules::min_resign_interval`] after the previous new one; both judged on the emulator's
//! clock, [`ApnsEmulator::with_clock`]), then the headers (`apns-topic`:
//! 400 `MissingTopic`, `DeviceTokenNotForTopic` for a sub-topic such as `<topic>.voip`,
//! `TopicDisallowed` for another app; `apns-priority` 10|5 and 5 for background pushes,
//! `BadPriority`; `apns-push-type`, `InvalidPushType`; `apns-collapse-id` ≤ 64 bytes,
//! `BadCollapseId`; `apns-id` a uuid, `BadMessageId`; `apns-expiration` numeric,
//! `BadExpirationDate`), the body (`PayloadEmpty`, 413 `PayloadTooLarge` over 4096 bytes) and the
//! device token (`BadDeviceToken`). Other paths are 404 `BadPath`, other methods 405
//! `MethodNotAllowed`. A 200 echoes `apns-id` (or makes one up).
//!
//! Failure injection: `POST /__emulator/answer {"token","status","reason","count"?}` answers that
//! device token so (410s carry a `timestamp`), every time or `count` times;
//! `POST /__emulator/fail {"status":503,"reason":"ServiceUnavailable","count":N}` fails the next
//! N requests as a whole, `{"status":503,"for_ms":10000}` every request for 10 s, with
//! `"retry_after_secs"` for a `Retry-After` header. `GET /__emulator/stats` counts.

use crate::failure::{FailPlan, Failure};
use crate::http::{Failing, Server};
use actix_web::http::{StatusCode, Version};
use actix_web::{web, HttpRequest, HttpResponse};
use notify_relay_engine::clock::{Clock, SystemClock};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use uuid::Uuid;

/// The emulator's key id, team and topic: `config/default.toml`'s examples, so that only the
/// key, the CA and the base URL need configuring to point a relay at it.
pub const KEY_ID: &str = "ABC123DEFG";
pub const TEAM_ID: &str = "DEF123GHIJ";
pub const TOPIC: &str = "com.example.app";
pub const MAX_PAYLOAD_BYTES: usize = 4096;
pub const MAX_COLLAPSE_ID_BYTES: usize = 64;
const PUSH_TYPES: [&str; 11] = [
    "alert",
    "background",
    "location",
    "voip",
    "complication",
    "fileprovider",
    "mdm",
    "liveactivity",
    "pushtotalk",
    "widgets",
    "controls",
];

/// A well-formed device token, made from `n`: 64 hex digits.
pub fn device_token(n: u32) -> String {
    format!("{n:064x}")
}

/// Apple's provider-token timing, shrinkable for tests (or kept, with a [`ManualClock`] the test
/// moves: [`ApnsEmulator::with_clock`]).
///
/// [`ManualClock`]: notify_relay_engine::clock::ManualClock
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    /// Tokens whose `iat` is older than this are refused with `ExpiredProviderToken` (60 min).
    pub token_max_age: Duration,
    /// A new token sooner than this after the previous new one is refused with
    /// `TooManyProviderTokenUpdates` (20 min).
    pub min_resign_interval: Duration,
}

impl Default for Rules {
    fn default() -> Self {
        Rules { token_max_age: Duration::from_secs(60 * 60), min_resign_interval: Duration::from_secs(20 * 60) }
    }
}

/// One notification the emulator accepted (answered 200).
#[derive(Debug, Clone)]
pub struct Sent {
    pub token: String,
    pub apns_id: String,
    pub topic: String,
    pub push_type: Option<String>,
    pub priority: Option<String>,
    pub expiration: Option<String>,
    pub collapse_id: Option<String>,
    /// The provider token (JWT) the request carried.
    pub provider_token: String,
    pub body: Value,
    pub received_at: SystemTime,
}

impl Sent {
    pub fn notification_id(&self) -> Option<&str> {
        self.body.get("notification_id").and_then(Value::as_str)
    }
}

/// An answer injected for one device token.
#[derive(Debug, Clone, Deserialize)]
pub struct Answer {
    pub token: String,
    pub status: u16,
    pub reason: String,
    /// How many times (default: every time).
    #[serde(default)]
    pub count: Option<usize>,
}

struct State {
    rules: Rules,
    /// What the token checks read: the `iat` age and the spacing of new tokens.
    clock: Arc<dyn Clock>,
    verify_key: jsonwebtoken::DecodingKey,
    sent: Vec<Sent>,
    requests: usize,
    requests_by_token: HashMap<String, usize>,
    answers: HashMap<String, Answer>,
    fail: Failure,
    /// Every provider token accepted so far, in order.
    provider_tokens: Vec<String>,
    /// Every provider token presented (accepted or not), each once, in order.
    presented_tokens: Vec<String>,
    known_tokens: HashSet<String>,
    /// When the last new provider token was accepted.
    last_new_token: Option<Instant>,
}

impl Failing for State {
    fn failure(&mut self) -> &mut Failure {
        &mut self.fail
    }
}

pub struct ApnsEmulator {
    pub addr: SocketAddr,
    server: Server<State>,
    ca_pem: String,
    key_pem: String,
}

impl ApnsEmulator {
    /// Starts on `addr` (`127.0.0.1:0` for a free port) in the current actix System, with a new
    /// certificate and signing key.
    pub async fn start(addr: &str, rules: Rules) -> std::io::Result<ApnsEmulator> {
        let signing = rcgen::KeyPair::generate().map_err(std::io::Error::other)?;
        let verify_key = jsonwebtoken::DecodingKey::from_ec_pem(signing.public_key_pem().as_bytes())
            .map_err(std::io::Error::other)?;
        let (tls, ca_pem) = crate::tls::self_signed(&["localhost", "127.0.0.1"])?;
        let state = State {
            rules,
            clock: Arc::new(SystemClock),
            verify_key,
            sent: Vec::new(),
            requests: 0,
            requests_by_token: HashMap::new(),
            answers: HashMap::new(),
            fail: Failure::default(),
            provider_tokens: Vec::new(),
            presented_tokens: Vec::new(),
            known_tokens: HashSet::new(),
            last_new_token: None,
        };
        // `push` refuses the HTTP/1.1 requests the server also takes.
        let server = Server::start(addr, state, Some(tls), routes)?;
        Ok(ApnsEmulator { addr: server.addr, server, ca_pem, key_pem: signing.serialize_pem() })
    }

    /// Judges the provider token's age and the spacing of new tokens on `clock` from now on
    /// (set it before the first request): a test that shares a `ManualClock` with the relay's
    /// token source moves both by an hour at once.
    pub fn with_clock(self, clock: Arc<dyn Clock>) -> ApnsEmulator {
        self.server.with(|s| s.clock = clock);
        self
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// The certificate the emulator serves (self-signed): trust it as a CA (`providers.apns.ca_file`).
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The provider-token signing key, PKCS#8 PEM (what Apple hands out as a .p8 file).
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    pub fn key_id(&self) -> &str {
        KEY_ID
    }

    pub fn team_id(&self) -> &str {
        TEAM_ID
    }

    pub fn topic(&self) -> &str {
        TOPIC
    }

    /// Every notification accepted so far.
    pub fn sent(&self) -> Vec<Sent> {
        self.server.with(|s| s.sent.clone())
    }

    pub fn sent_count(&self) -> usize {
        self.server.with(|s| s.sent.len())
    }

    /// Device requests received (any outcome).
    pub fn requests(&self) -> usize {
        self.server.with(|s| s.requests)
    }

    /// Requests received for one device token (any outcome).
    pub fn requests_for(&self, token: &str) -> usize {
        self.server.with(|s| s.requests_by_token.get(&token.to_ascii_lowercase()).copied().unwrap_or(0))
    }

    /// The provider tokens accepted so far, each once, in the order they first came.
    pub fn provider_tokens(&self) -> Vec<String> {
        self.server.with(|s| s.provider_tokens.clone())
    }

    /// The provider tokens presented so far (accepted or refused), each once, in order.
    pub fn presented_tokens(&self) -> Vec<String> {
        self.server.with(|s| s.presented_tokens.clone())
    }

    /// TLS connections accepted so far.
    pub fn connections(&self) -> usize {
        self.server.connections()
    }

    /// Every request for `token` is answered `status` `{"reason": reason}` (410s with a
    /// `timestamp`), before any other check.
    pub fn answer(&self, token: &str, status: u16, reason: &str) {
        let answer = Answer { token: token.to_ascii_lowercase(), status, reason: reason.into(), count: None };
        self.server.with(|s| s.answers.insert(answer.token.clone(), answer));
    }

    /// The next `count` requests fail as a whole with `status` and `reason`.
    pub fn fail_next(&self, status: u16, reason: &str, count: usize) {
        self.fail_with(FailPlan::next(status, count).with_code(Some(reason)));
    }

    /// Every request fails with `status` and `reason` for `duration`.
    pub fn fail_for(&self, status: u16, reason: &str, duration: Duration) {
        self.fail_with(FailPlan::lasting(status, duration).with_code(Some(reason)));
    }

    /// Whole-request failures as `POST /__emulator/fail` takes them.
    pub fn fail_with(&self, plan: FailPlan) {
        self.server.with(|s| s.fail.set(plan));
    }

    pub async fn stop(self) {
        self.server.stop().await;
    }
}

fn routes(cfg: &mut web::ServiceConfig) {
    cfg.app_data(web::PayloadConfig::new(1024 * 1024))
        .service(
            web::resource("/3/device/{token}").route(web::post().to(push)).default_service(web::to(method_not_allowed)),
        )
        .route("/3/device/", web::post().to(missing_device_token))
        .route("/__emulator/answer", web::post().to(inject_answer))
        .route("/__emulator/fail", web::post().to(crate::http::set_failure::<State>))
        .route("/__emulator/stats", web::get().to(stats))
        .default_service(web::to(bad_path));
}

/// `mock-providers --credentials-dir DIR`: writes the emulator's signing key (`apns-key.p8`,
/// readable by its owner only) and CA certificate (`apns-ca.pem`) into `dir`, and returns their
/// paths.
pub fn write_credentials(emulator: &ApnsEmulator, dir: &Path) -> std::io::Result<(PathBuf, PathBuf)> {
    std::fs::create_dir_all(dir)?;
    let key = dir.join("apns-key.p8");
    let ca = dir.join("apns-ca.pem");
    std::fs::write(&key, emulator.key_pem())?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))?;
    }
    std::fs::write(&ca, emulator.ca_pem())?;
    Ok((key, ca))
}

fn reason(status: u16, reason: &str) -> HttpResponse {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut body = json!({ "reason": reason });
    if status == StatusCode::GONE {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or_default();
        body["timestamp"] = json!(now);
    }
    HttpResponse::build(status).json(body)
}

fn default_reason(status: u16) -> &'static str {
    match status {
        400 => "BadDeviceToken",
        403 => "Forbidden",
        410 => "Unregistered",
        429 => "TooManyRequests",
        500 => "InternalServerError",
        _ => "ServiceUnavailable",
    }
}

fn header<'a>(req: &'a HttpRequest, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

#[derive(Deserialize)]
struct TokenClaims {
    iss: String,
    iat: u64,
}

/// A refusal: HTTP status and Apple's `reason`.
type Refusal = (u16, &'static str);

/// The provider-token checks, in Apple's order; `Err` is the refusal.
fn authorize(req: &HttpRequest, state: &mut State) -> Result<String, Refusal> {
    let jwt = match header(req, "authorization").and_then(|v| v.split_once(' ')) {
        Some((scheme, jwt)) if scheme.eq_ignore_ascii_case("bearer") && !jwt.trim().is_empty() => jwt.trim(),
        _ => return Err((403, "MissingProviderToken")),
    };
    if !state.presented_tokens.iter().any(|t| t == jwt) {
        state.presented_tokens.push(jwt.to_string());
    }
    let invalid = || (403, "InvalidProviderToken");
    let head = jsonwebtoken::decode_header(jwt).map_err(|_| invalid())?;
    if head.alg != jsonwebtoken::Algorithm::ES256 || head.kid.as_deref() != Some(KEY_ID) {
        return Err(invalid());
    }
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    validation.required_spec_claims.clear();
    validation.validate_exp = false;
    validation.validate_aud = false;
    let claims = jsonwebtoken::decode::<TokenClaims>(jwt, &state.verify_key, &validation).map_err(|_| invalid())?;
    if claims.claims.iss != TEAM_ID {
        return Err(invalid());
    }
    let now = state.clock.unix_secs();
    if now.saturating_sub(claims.claims.iat) > state.rules.token_max_age.as_secs() {
        return Err((403, "ExpiredProviderToken"));
    }
    if !state.known_tokens.contains(jwt) {
        let now = state.clock.now();
        let too_soon =
            state.last_new_token.is_some_and(|at| now.saturating_duration_since(at) < state.rules.min_resign_interval);
        if too_soon {
            return Err((429, "TooManyProviderTokenUpdates"));
        }
        state.known_tokens.insert(jwt.to_string());
        state.provider_tokens.push(jwt.to_string());
        state.last_new_token = Some(now);
    }
    Ok(jwt.to_string())
}

/// The header checks; `Err` is the refusal.
fn check_headers(req: &HttpRequest) -> Result<(), Refusal> {
    match header(req, "apns-topic") {
        None => return Err((400, "MissingTopic")),
        Some(TOPIC) => {}
        // A sub-topic of this app (VoIP, complications…): the device token is not registered for it.
        Some(t) if t.starts_with(&format!("{TOPIC}.")) => return Err((400, "DeviceTokenNotForTopic")),
        Some(_) => return Err((400, "TopicDisallowed")),
    }
    let push_type = header(req, "apns-push-type");
    if push_type.is_some_and(|t| !PUSH_TYPES.contains(&t)) {
        return Err((400, "InvalidPushType"));
    }
    match (header(req, "apns-priority"), push_type) {
        (Some("10"), Some("background")) => return Err((400, "BadPriority")),
        (None | Some("10" | "5"), _) => {}
        (Some(_), _) => return Err((400, "BadPriority")),
    }
    if header(req, "apns-collapse-id").is_some_and(|c| c.len() > MAX_COLLAPSE_ID_BYTES) {
        return Err((400, "BadCollapseId"));
    }
    if header(req, "apns-id").is_some_and(|id| Uuid::parse_str(id).is_err()) {
        return Err((400, "BadMessageId"));
    }
    if header(req, "apns-expiration").is_some_and(|e| e.parse::<u64>().is_err()) {
        return Err((400, "BadExpirationDate"));
    }
    Ok(())
}

async fn push(
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Bytes,
    state: web::Data<Mutex<State>>,
) -> HttpResponse {
    // Apple answers every request with its `apns-id`: the one sent, or a new one.
    let apns_id = header(&req, "apns-id").map(str::to_string).unwrap_or_else(|| Uuid::new_v4().to_string());
    let mut resp = respond(&req, path.into_inner(), &body, &state, &apns_id);
    if let Ok(value) = actix_web::http::header::HeaderValue::from_str(&apns_id) {
        resp.headers_mut().insert(actix_web::http::header::HeaderName::from_static("apns-id"), value);
    }
    resp
}

fn respond(req: &HttpRequest, token: String, body: &[u8], state: &Mutex<State>, apns_id: &str) -> HttpResponse {
    if req.version() != Version::HTTP_2 {
        // Apple serves HTTP/2 only. (505 and this reason are the emulator's own.)
        return reason(505, "HTTP2Required");
    }
    let token = token.to_ascii_lowercase();
    let Ok(mut state) = state.lock() else {
        return reason(500, "InternalServerError");
    };
    state.requests += 1;
    *state.requests_by_token.entry(token.clone()).or_default() += 1;
    if let Some(plan) = state.fail.strike() {
        let mut resp = reason(plan.status, plan.code.as_deref().unwrap_or(default_reason(plan.status)));
        if let Some(seconds) = plan.retry_after_secs {
            crate::http::retry_after(&mut resp, seconds);
        }
        return resp;
    }
    if let Some(answer) = state.answers.get_mut(&token) {
        let refusal = reason(answer.status, &answer.reason);
        match answer.count.as_mut() {
            Some(0) => {}
            Some(n) => {
                *n -= 1;
                return refusal;
            }
            None => return refusal,
        }
    }
    let provider_token = match authorize(req, &mut state) {
        Ok(jwt) => jwt,
        Err((status, why)) => return reason(status, why),
    };
    if let Err((status, why)) = check_headers(req) {
        return reason(status, why);
    }
    if body.is_empty() {
        return reason(400, "PayloadEmpty");
    }
    if body.len() > MAX_PAYLOAD_BYTES {
        return reason(413, "PayloadTooLarge");
    }
    if token.len() != 64 || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
        return reason(400, "BadDeviceToken");
    }
    let own = |name: &str| header(req, name).map(str::to_string);
    state.sent.push(Sent {
        token,
        apns_id: apns_id.to_string(),
        topic: TOPIC.to_string(),
        push_type: own("apns-push-type"),
        priority: own("apns-priority"),
        expiration: own("apns-expiration"),
        collapse_id: own("apns-collapse-id"),
        provider_token,
        body: serde_json::from_slice(body).unwrap_or(Value::Null),
        received_at: SystemTime::now(),
    });
    HttpResponse::Ok().finish()
}

async fn missing_device_token() -> HttpResponse {
    reason(400, "MissingDeviceToken")
}

async fn method_not_allowed() -> HttpResponse {
    reason(405, "MethodNotAllowed")
}

async fn bad_path() -> HttpResponse {
    reason(404, "BadPath")
}

async fn inject_answer(answer: web::Json<Answer>, state: web::Data<Mutex<State>>) -> HttpResponse {
    let mut answer = answer.into_inner();
    answer.token = answer.token.to_ascii_lowercase();
    if let Ok(mut s) = state.lock() {
        s.answers.insert(answer.token.clone(), answer);
    }
    HttpResponse::NoContent().finish()
}

async fn stats(state: web::Data<Mutex<State>>) -> HttpResponse {
    let (sent, requests, tokens) =
        state.lock().map(|s| (s.sent.len(), s.requests, s.provider_tokens.len())).unwrap_or_default();
    HttpResponse::Ok().json(json!({"sent": sent, "requests": requests, "provider_tokens": tokens}))
}
