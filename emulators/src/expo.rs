//! Expo push service emulator.
//!
//! Requests refused as a whole because of some of their messages, as Expo does: a token's
//! project is the part of `ExponentPushToken[<project>:…]` before the colon (`@emulator/<project>`),
//! or [`DEFAULT_PROJECT`] for other tokens, and a request with tokens of several projects gets
//! 400 `PUSH_TOO_MANY_EXPERIENCE_IDS` with `details` mapping each project to its tokens. A message
//! whose fields have the wrong type (`ttl`, `expiration`, `badge` not numbers, `title` not a
//! string, …), or whose token contains `validationerror` (a message Expo
//! refuses that the relay cannot tell apart), gets the whole request a 400 `VALIDATION_ERROR`
//! naming that message.
//!
//! `POST /--/api/v2/push/send` takes one message or an array (gzip bodies too), refuses more
//! than 100 recipients with `PUSH_TOO_MANY_NOTIFICATIONS`, checks the bearer token when one is
//! configured (401 `UNAUTHORIZED`), and answers one ticket per recipient, in order. Tickets are
//! errors when the message is over 4096 bytes (`MessageTooBig`), the token is not an Expo push
//! token (`DeviceNotRegistered`), or the token contains a failure word: `unregistered`,
//! `ratelimited` (`MessageRateExceeded`), `invalidcredentials`, `developererror`, `expoerror`,
//! `mismatchsenderid`, `providererror`. A token containing `nulbyte` gets its error message
//! with a NUL character in it, as a broken upstream or proxy may send (Postgres cannot store it).
//! Each accepted message is recorded with its `ttl` and `expiration` ([`Sent`]), and with a
//! `collapseId` if one came (the relay sends none: a test can check that).
//! `POST /--/api/v2/push/getReceipts` answers receipts for ids it issued (≤ 1000 per call):
//! `ok`, or `DeviceNotRegistered` for tokens containing `receiptgone` (accepted at send time,
//! refused by APNs/FCM later, as happens for real).
//! `POST /__emulator/fail {"status":503,"code":"…","count":N}` makes the next N requests fail
//! as a whole, `{"status":503,"for_ms":10000}` every request for 10 s (429 carries
//! `Retry-After: 1`; `"retry_after_secs"` sets a header on any status).
//! `hang_for(duration)` makes the service hang: requests arriving in that window (sends and
//! receipts) are read and never answered, as a provider that accepts connections and then
//! stalls; only the client's timeout ends them.

use crate::failure::{FailPlan, Failure};
use crate::http::{Failing, Server};
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::SystemTime;
use uuid::Uuid;

/// Expo's documented limits.
pub const MAX_MESSAGES: usize = 100;
pub const MAX_PAYLOAD_BYTES: usize = 4096;
pub const MAX_RECEIPT_IDS: usize = 1000;
/// The project of tokens that do not name one (`ExponentPushToken[<project>:…]`).
pub const DEFAULT_PROJECT: &str = "@emulator/app";

/// One message the emulator accepted (ticket ok).
#[derive(Debug, Clone)]
pub struct Sent {
    pub to: String,
    pub title: Option<String>,
    pub body: Option<String>,
    pub data: Value,
    pub priority: Option<String>,
    /// `ttl` (seconds), `expiration` (Unix seconds) and `collapseId`, as sent: what a message
    /// carries of its notification's lifetime and collapse key.
    pub ttl: Option<u64>,
    pub expiration: Option<u64>,
    pub collapse_id: Option<String>,
    pub received_at: SystemTime,
}

impl Sent {
    pub fn notification_id(&self) -> Option<&str> {
        self.data.get("notification_id").and_then(Value::as_str)
    }
}

#[derive(Debug, Default)]
struct State {
    sent: Vec<Sent>,
    /// In lean mode ([`ExpoEmulator::keep_arrivals_only`]): (notification id, when) of every
    /// message accepted, instead of the message in `sent` and its receipt.
    arrivals: Option<Vec<(Option<Uuid>, SystemTime)>>,
    requests: usize,
    /// Receipt of every ticket issued, by ticket id.
    receipts: HashMap<String, Value>,
    receipt_requests: usize,
    gzip_requests: usize,
    fail: Failure,
    access_token: Option<String>,
    /// Added before every send answer, to keep requests in flight.
    latency: std::time::Duration,
    /// Failure words no longer acted on (a device that recovered).
    forgiven: Vec<String>,
    /// Requests arriving before this instant are never answered.
    hang_until: Option<std::time::Instant>,
    /// Requests left unanswered by a hang.
    hung: usize,
}

impl Failing for State {
    fn failure(&mut self) -> &mut Failure {
        &mut self.fail
    }
}

pub struct ExpoEmulator {
    pub addr: SocketAddr,
    server: Server<State>,
}

impl ExpoEmulator {
    /// Starts on `addr` (use `127.0.0.1:0` for a free port) in the current actix System.
    /// With `access_token`, requests must carry `Authorization: Bearer <access_token>`.
    pub async fn start(addr: &str, access_token: Option<String>) -> std::io::Result<ExpoEmulator> {
        let server = Server::start(addr, State { access_token, ..State::default() }, None, routes)?;
        Ok(ExpoEmulator { addr: server.addr, server })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every message accepted so far.
    pub fn sent(&self) -> Vec<Sent> {
        self.server.with(|s| s.sent.clone())
    }

    pub fn sent_count(&self) -> usize {
        self.server.with(|s| s.sent.len() + s.arrivals.as_ref().map_or(0, Vec::len))
    }

    /// Lean mode, for loads of millions: from now on an accepted message is kept only as its
    /// `data.notification_id` and arrival time (24 bytes, see [`ExpoEmulator::arrivals`]), not
    /// in [`ExpoEmulator::sent`], and no receipt is kept for its ticket: getReceipts answers `ok`
    /// for any ticket id that is a uuid and not otherwise known (what Expo answers for a message
    /// that went on), so that a relay asks for each receipt once, as it would of Expo.
    pub fn keep_arrivals_only(&self) {
        self.server.with(|s| s.arrivals = Some(s.arrivals.take().unwrap_or_default()))
    }

    /// (notification id, arrival time) of every message accepted, in either mode; the id is
    /// None when the message's `data.notification_id` is missing or not a uuid.
    pub fn arrivals(&self) -> Vec<(Option<Uuid>, SystemTime)> {
        self.server.with(|s| {
            let full =
                s.sent.iter().map(|m| (m.notification_id().and_then(|n| Uuid::parse_str(n).ok()), m.received_at));
            full.chain(s.arrivals.iter().flatten().copied()).collect()
        })
    }

    /// How many times this notification reached this token.
    pub fn sends_of(&self, notification_id: Uuid, to: &str) -> usize {
        let id = notification_id.to_string();
        self.server.with(|s| s.sent.iter().filter(|m| m.to == to && m.notification_id() == Some(&id)).count())
    }

    /// Send requests whose body came gzip-compressed.
    pub fn gzip_requests(&self) -> usize {
        self.server.with(|s| s.gzip_requests)
    }

    /// getReceipts calls received.
    pub fn receipt_requests(&self) -> usize {
        self.server.with(|s| s.receipt_requests)
    }

    /// Requests received (any outcome).
    pub fn requests(&self) -> usize {
        self.server.with(|s| s.requests)
    }

    /// Stops answering tokens containing `word` (e.g. `ratelimited`) with their error: the
    /// condition cleared.
    pub fn forgive(&self, word: &str) {
        self.server.with(|s| s.forgiven.push(word.to_string()))
    }

    /// Every send answer is delayed by `latency` (requests stay in flight that long).
    pub fn set_latency(&self, latency: std::time::Duration) {
        self.server.with(|s| s.latency = latency)
    }

    /// Every send request fails with `status` for `duration`.
    pub fn fail_for(&self, status: u16, duration: std::time::Duration) {
        self.server.with(|s| s.fail.set(FailPlan::lasting(status, duration)))
    }

    /// The next `count` send requests fail as a whole with `status` (and error `code`).
    pub fn fail_next(&self, status: u16, code: Option<&str>, count: usize) {
        self.server.with(|s| s.fail.set(FailPlan::next(status, count).with_code(code)))
    }

    /// For `duration` from now, every request (send or receipts) is read and never answered.
    pub fn hang_for(&self, duration: std::time::Duration) {
        self.server.with(|s| s.hang_until = Some(std::time::Instant::now() + duration))
    }

    /// Requests left unanswered by `hang_for` (not counted in `requests`).
    pub fn hung_requests(&self) -> usize {
        self.server.with(|s| s.hung)
    }

    pub async fn stop(self) {
        self.server.stop().await;
    }
}

fn routes(cfg: &mut web::ServiceConfig) {
    cfg.app_data(web::PayloadConfig::new(16 * 1024 * 1024))
        .route("/--/api/v2/push/send", web::post().to(send))
        .route("/--/api/v2/push/getReceipts", web::post().to(receipts))
        .route("/__emulator/fail", web::post().to(crate::http::set_failure::<State>))
        .route("/__emulator/stats", web::get().to(stats));
}

/// Whether a request arriving now falls into a hang (and counts it as hung).
fn hangs(state: &Mutex<State>) -> bool {
    let Ok(mut s) = state.lock() else { return false };
    let hanging = s.hang_until.is_some_and(|until| std::time::Instant::now() < until);
    if hanging {
        s.hung += 1;
    }
    hanging
}

fn errors(status: u16, code: &str, message: &str) -> HttpResponse {
    let mut resp = HttpResponse::build(
        actix_web::http::StatusCode::from_u16(status).unwrap_or(actix_web::http::StatusCode::INTERNAL_SERVER_ERROR),
    );
    if status == 429 {
        resp.insert_header(("retry-after", "1"));
    }
    resp.json(json!({"errors": [{"code": code, "message": message}]}))
}

fn is_expo_token(t: &str) -> bool {
    (t.starts_with("ExponentPushToken[") || t.starts_with("ExpoPushToken[")) && t.ends_with(']') && t.len() > 16
}

/// The ticket for one recipient of one message.
fn ticket(message: &Value, to: &str, state: &mut State) -> Value {
    let size = serde_json::to_vec(message).map(|v| v.len()).unwrap_or(0);
    let lower = to.to_ascii_lowercase();
    let error = |code: &str, msg: String| json!({"status": "error", "message": msg, "details": {"error": code}});
    if size > MAX_PAYLOAD_BYTES {
        return error("MessageTooBig", format!("Message too big: {size} bytes, the limit is {MAX_PAYLOAD_BYTES}"));
    }
    if !is_expo_token(to) || lower.contains("unregistered") {
        return error("DeviceNotRegistered", format!("\"{to}\" is not a registered push notification recipient"));
    }
    for (word, code) in [
        ("ratelimited", "MessageRateExceeded"),
        ("invalidcredentials", "InvalidCredentials"),
        ("developererror", "DeveloperError"),
        ("expoerror", "ExpoError"),
        ("mismatchsenderid", "MismatchSenderId"),
        ("providererror", "ProviderError"),
    ] {
        if lower.contains(word) && !state.forgiven.iter().any(|f| f == word) {
            let nul = if lower.contains("nulbyte") { "\u{0}" } else { "" };
            return error(code, format!("injected {code}{nul} for {to}"));
        }
    }
    let id = Uuid::new_v4().to_string();
    let receipt = if lower.contains("receiptgone") {
        json!({"status": "error", "message": format!("\"{to}\" is not a registered push notification recipient"),
               "details": {"error": "DeviceNotRegistered"}})
    } else {
        json!({"status": "ok"})
    };
    let received_at = SystemTime::now();
    if let Some(arrivals) = &mut state.arrivals {
        let notification = message.pointer("/data/notification_id").and_then(Value::as_str);
        arrivals.push((notification.and_then(|n| Uuid::parse_str(n).ok()), received_at));
        return json!({"status": "ok", "id": id});
    }
    state.receipts.insert(id.clone(), receipt);
    state.sent.push(Sent {
        to: to.to_string(),
        title: message.get("title").and_then(Value::as_str).map(str::to_string),
        body: message.get("body").and_then(Value::as_str).map(str::to_string),
        data: message.get("data").cloned().unwrap_or(Value::Null),
        priority: message.get("priority").and_then(Value::as_str).map(str::to_string),
        ttl: message.get("ttl").and_then(Value::as_u64),
        expiration: message.get("expiration").and_then(Value::as_u64),
        collapse_id: message.get("collapseId").and_then(Value::as_str).map(str::to_string),
        received_at,
    });
    json!({"status": "ok", "id": id})
}

async fn send(req: HttpRequest, body: web::Bytes, state: web::Data<Mutex<State>>) -> HttpResponse {
    if hangs(&state) {
        return std::future::pending().await;
    }
    let latency = state.lock().map(|s| s.latency).unwrap_or_default();
    if !latency.is_zero() {
        actix_rt::time::sleep(latency).await;
    }
    let Ok(mut state) = state.lock() else {
        return errors(500, "INTERNAL_SERVER_ERROR", "emulator state poisoned");
    };
    state.requests += 1;
    if req.headers().get("content-encoding").and_then(|v| v.to_str().ok()) == Some("gzip") {
        state.gzip_requests += 1;
    }
    if let Some(plan) = state.fail.strike() {
        let mut resp =
            errors(plan.status, plan.code.as_deref().unwrap_or(default_code(plan.status)), "injected failure");
        if let Some(seconds) = plan.retry_after_secs {
            crate::http::retry_after(&mut resp, seconds);
        }
        return resp;
    }
    if let Some(expected) = &state.access_token {
        let given = req.headers().get("authorization").and_then(|v| v.to_str().ok());
        if given != Some(format!("Bearer {expected}").as_str()) {
            return errors(401, "UNAUTHORIZED", "The bearer token is invalid");
        }
    }
    let parsed: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return errors(400, "VALIDATION_ERROR", &format!("\"value\" must be valid JSON: {e}")),
    };
    let messages = match parsed {
        Value::Array(items) => items,
        one @ Value::Object(_) => vec![one],
        _ => return errors(400, "VALIDATION_ERROR", "\"value\" must be an object or an array"),
    };
    let mut recipients = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        match m.get("to") {
            Some(Value::String(t)) => recipients.push((i, t.clone())),
            Some(Value::Array(ts)) if ts.iter().all(Value::is_string) => {
                recipients.extend(ts.iter().filter_map(Value::as_str).map(|t| (i, t.to_string())))
            }
            _ => {
                return errors(
                    400,
                    "VALIDATION_ERROR",
                    &format!("\"[{i}].to\" is required and must be a string or an array of strings"),
                )
            }
        }
    }
    if let Some(refused) = messages.iter().enumerate().find_map(|(i, m)| invalid_field(i, m)) {
        return errors(400, "VALIDATION_ERROR", &refused);
    }
    if let Some((i, _)) = recipients.iter().find(|(_, to)| to.to_ascii_lowercase().contains("validationerror")) {
        return errors(400, "VALIDATION_ERROR", &format!("\"[{i}]\" is refused (injected validationerror)"));
    }
    if recipients.len() > MAX_MESSAGES {
        return errors(
            400,
            "PUSH_TOO_MANY_NOTIFICATIONS",
            &format!("You are trying to send more than {MAX_MESSAGES} push notifications in one request"),
        );
    }
    let mut projects: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for (_, to) in &recipients {
        if let Some(tokens) = project_of(to).map(|p| projects.entry(p).or_default()) {
            if !tokens.contains(to) {
                tokens.push(to.clone());
            }
        }
    }
    if projects.len() > 1 {
        let body = json!({"errors": [{
            "code": "PUSH_TOO_MANY_EXPERIENCE_IDS",
            "message": "All push notification messages in the same request must be for the same project; \
                        check the details field to investigate conflicting tokens.",
            "details": projects,
        }]});
        return HttpResponse::BadRequest().json(body);
    }
    let tickets: Vec<Value> = recipients.iter().map(|(i, to)| ticket(&messages[*i], to, &mut state)).collect();
    HttpResponse::Ok().json(json!({ "data": tickets }))
}

/// The Expo project of a push token: `ExponentPushToken[<project>:…]` names one, other Expo
/// tokens belong to [`DEFAULT_PROJECT`]; what is not an Expo token has none.
fn project_of(token: &str) -> Option<String> {
    if !is_expo_token(token) {
        return None;
    }
    let inner = token.split_once('[').map(|(_, rest)| rest.trim_end_matches(']')).unwrap_or_default();
    match inner.split_once(':') {
        Some((project, _)) if !project.is_empty() => Some(format!("@emulator/{project}")),
        _ => Some(DEFAULT_PROJECT.to_string()),
    }
}

/// Expo's check of a message's fields (its `VALIDATION_ERROR` text), for the first field of
/// message `i` of the wrong type; absent and null fields pass.
fn invalid_field(i: usize, message: &Value) -> Option<String> {
    let field = |key: &str| message.get(key).filter(|v| !v.is_null());
    let wrong = |key: &str, what: &str| Some(format!("\"[{i}].{key}\" must be {what}"));
    for key in ["ttl", "expiration", "badge"] {
        if field(key).is_some_and(|v| !v.is_number()) {
            return wrong(key, "a number");
        }
    }
    for key in ["title", "body", "subtitle", "channelId", "categoryId"] {
        if field(key).is_some_and(|v| !v.is_string()) {
            return wrong(key, "a string");
        }
    }
    if field("sound").is_some_and(|v| !v.is_string() && !v.is_object()) {
        return wrong("sound", "a string or an object");
    }
    if field("mutableContent").is_some_and(|v| !v.is_boolean()) {
        return wrong("mutableContent", "a boolean");
    }
    if field("data").is_some_and(|v| !v.is_object()) {
        return wrong("data", "of type object");
    }
    if field("priority").is_some_and(|v| !matches!(v.as_str(), Some("default" | "normal" | "high"))) {
        return wrong("priority", "one of [default, normal, high]");
    }
    None
}

fn default_code(status: u16) -> &'static str {
    match status {
        401 => "UNAUTHORIZED",
        429 => "TOO_MANY_REQUESTS",
        400 => "VALIDATION_ERROR",
        _ => "INTERNAL_SERVER_ERROR",
    }
}

#[derive(Deserialize)]
struct ReceiptsRequest {
    ids: Vec<String>,
}

async fn receipts(body: web::Json<ReceiptsRequest>, state: web::Data<Mutex<State>>) -> HttpResponse {
    if hangs(&state) {
        return std::future::pending().await;
    }
    if body.ids.len() > MAX_RECEIPT_IDS {
        return errors(
            400,
            "PUSH_TOO_MANY_RECEIPTS",
            "You are trying to get more than 1000 push receipts in one request",
        );
    }
    let Ok(mut state) = state.lock() else {
        return errors(500, "INTERNAL_SERVER_ERROR", "emulator state poisoned");
    };
    state.receipt_requests += 1;
    let lean = state.arrivals.is_some();
    let data: serde_json::Map<String, Value> = body
        .ids
        .iter()
        .filter_map(|id| match state.receipts.get(id) {
            Some(receipt) => Some((id.clone(), receipt.clone())),
            // Lean mode keeps no receipts: a ticket it issued (a uuid) was for a message it
            // accepted, whose receipt says ok, as Expo's does once the message went on.
            None if lean && Uuid::parse_str(id).is_ok() => Some((id.clone(), json!({"status": "ok"}))),
            None => None,
        })
        .collect();
    HttpResponse::Ok().json(json!({ "data": data }))
}

async fn stats(state: web::Data<Mutex<State>>) -> HttpResponse {
    let (sent, requests) = state.lock().map(|s| (s.sent.len(), s.requests)).unwrap_or_default();
    HttpResponse::Ok().json(json!({"sent": sent, "requests": requests}))
}
