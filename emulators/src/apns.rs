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
//! `"retry_after_secs"` for a `Retry-After` header. `GET /__emulator/stats` counts: `sent`,
//! `requests`, `provider_tokens`, `connections` (TCP connections opened) and
//! `peak_concurrent_streams` (the most streams open at once on one connection), with the
//! `max_concurrent_streams` it advertises and the `refused_streams` opened beyond it.
//!
//! HTTP/2 is served by the emulator's own server on the `h2` crate, because actix-web's HTTP/2
//! server cannot be told to advertise `SETTINGS_MAX_CONCURRENT_STREAMS` (Apple's is 1000,
//! [`DEFAULT_MAX_CONCURRENT_STREAMS`]; [`ApnsEmulator::with_max_concurrent_streams`] lowers it
//! for a test). A connection whose ALPN is not `h2` is handed, decrypted, to an actix-web server
//! on a loopback port of its own, which refuses the device requests with 505 and serves the
//! admin calls. Connection faults for tests: [`ApnsEmulator::goaway_at_streams`] (GOAWAY and
//! close, mid-flight) and [`ApnsEmulator::hang`] (never answer a device).

use crate::failure::{FailPlan, Failure};
use crate::http::{Failing, Server};
use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use bytes::Bytes;
use http::HeaderMap;
use notify_relay_engine::clock::{Clock, SystemClock};
use serde::Deserialize;
use serde_json::{json, Value};
use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;
use uuid::Uuid;

/// The emulator's key id, team and topic: `config/default.toml`'s examples, so that only the
/// key, the CA and the base URL need configuring to point a relay at it.
pub const KEY_ID: &str = "ABC123DEFG";
pub const TEAM_ID: &str = "DEF123GHIJ";
pub const TOPIC: &str = "com.example.app";
pub const MAX_PAYLOAD_BYTES: usize = 4096;
pub const MAX_COLLAPSE_ID_BYTES: usize = 64;
/// The `SETTINGS_MAX_CONCURRENT_STREAMS` Apple documents for an established connection.
pub const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = 1000;
/// The largest request body read (the device routes answer 413 past 4096 bytes anyway).
const MAX_REQUEST_BYTES: usize = 1024 * 1024;
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
    /// The accepted provider tokens and their `iat`: a token seen before is not verified again
    /// (ES256 verification per request would make the emulator the benchmark's bottleneck).
    known_tokens: HashMap<String, u64>,
    /// When the last new provider token was accepted.
    last_new_token: Option<Instant>,
    /// What the HTTP/2 server advertises (read when a connection opens).
    max_concurrent_streams: u32,
    /// The most streams open at once on one connection so far.
    peak_streams: usize,
    /// The next connection to have this many streams open sends GOAWAY and closes, answering none.
    goaway_at: Option<usize>,
    /// Device tokens whose requests are never answered.
    hung: HashSet<String>,
    /// TCP connections accepted (HTTP/2 or not).
    connections_seen: usize,
    /// Client streams h2 refused (over the stream limit) before one it accepted: the gaps in
    /// the accepted stream ids.
    refused_streams: usize,
}

impl Failing for State {
    fn failure(&mut self) -> &mut Failure {
        &mut self.fail
    }
}

pub struct ApnsEmulator {
    pub addr: SocketAddr,
    /// The HTTP/1.1 side (505s and the admin calls), on a loopback port of its own; it owns the
    /// state.
    server: Server<State>,
    /// Tells the accept loop and every connection to stop.
    shutdown: watch::Sender<bool>,
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
            known_tokens: HashMap::new(),
            last_new_token: None,
            max_concurrent_streams: DEFAULT_MAX_CONCURRENT_STREAMS,
            peak_streams: 0,
            goaway_at: None,
            hung: HashSet::new(),
            connections_seen: 0,
            refused_streams: 0,
        };
        // `push_http1` refuses the HTTP/1.1 requests this server takes.
        let server = Server::start("127.0.0.1:0", state, None, routes)?;
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let front = Front {
            tls: {
                let mut tls = tls;
                tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
                tokio_rustls::TlsAcceptor::from(Arc::new(tls))
            },
            state: server.state(),
            http1: server.addr,
        };
        let (shutdown, stop) = watch::channel(false);
        let emulator =
            ApnsEmulator { addr: listener.local_addr()?, server, shutdown, ca_pem, key_pem: signing.serialize_pem() };
        actix_rt::spawn(front.accept(listener, stop));
        Ok(emulator)
    }

    /// Advertises `max` as `SETTINGS_MAX_CONCURRENT_STREAMS` on the connections opened from now
    /// on (Apple: [`DEFAULT_MAX_CONCURRENT_STREAMS`]).
    pub fn with_max_concurrent_streams(self, max: u32) -> ApnsEmulator {
        self.server.with(|s| s.max_concurrent_streams = max);
        self
    }

    /// The most streams that were open at once on one connection.
    pub fn peak_concurrent_streams(&self) -> usize {
        self.server.with(|s| s.peak_streams)
    }

    /// Streams the HTTP/2 server refused because the client opened more than it allowed (those
    /// followed by an accepted stream on the same connection).
    pub fn refused_streams(&self) -> usize {
        self.server.with(|s| s.refused_streams)
    }

    /// The next connection on which `streams` streams are open at once sends GOAWAY and closes
    /// without answering them (once): what a client sees when APNs drops a connection
    /// mid-flight. Until then, device requests are held unanswered, so that they all are in
    /// flight when it happens.
    pub fn goaway_at_streams(&self, streams: usize) {
        self.server.with(|s| s.goaway_at = Some(streams.max(1)));
    }

    /// Requests for `token` are never answered (the stream stays open until the client gives
    /// up or the connection closes): a hung APNs.
    pub fn hang(&self, token: &str) {
        self.server.with(|s| s.hung.insert(token.to_ascii_lowercase()));
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

    /// TCP connections accepted so far (HTTP/2 or not).
    pub fn connections(&self) -> usize {
        self.server.with(|s| s.connections_seen)
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
        let _ = self.shutdown.send(true);
        self.server.stop().await;
    }
}

/// The TLS listener: HTTP/2 served here, anything else passed to the HTTP/1.1 server.
struct Front {
    tls: tokio_rustls::TlsAcceptor,
    state: Arc<Mutex<State>>,
    http1: SocketAddr,
}

impl Front {
    async fn accept(self, listener: tokio::net::TcpListener, mut stop: watch::Receiver<bool>) {
        let front = Rc::new(self);
        loop {
            let tcp = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((tcp, _)) => tcp,
                    // Out of descriptors, or a connection reset before it was accepted.
                    Err(_) => continue,
                },
                _ = stop.changed() => return,
            };
            lock(&front.state).connections_seen += 1;
            let _ = tcp.set_nodelay(true);
            let (front, mut stop) = (front.clone(), stop.clone());
            actix_rt::spawn(async move {
                tokio::select! {
                    _ = front.serve(tcp) => {}
                    _ = stop.changed() => {}
                }
            });
        }
    }

    async fn serve(&self, tcp: tokio::net::TcpStream) {
        let Ok(mut tls) = self.tls.accept(tcp).await else { return };
        if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
            return serve_h2(tls, self.state.clone()).await;
        }
        // HTTP/1.1: the actix-web side answers (505 for a device, the admin calls).
        if let Ok(mut plain) = tokio::net::TcpStream::connect(self.http1).await {
            let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
        }
    }
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    // A handler that panicked holding the lock left the state as it was: go on with it.
    state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One HTTP/2 connection: every stream is answered by a task of its own, so that a held or
/// slow answer holds no other; the connection counts its open streams.
async fn serve_h2<T>(io: T, state: Arc<Mutex<State>>)
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + 'static,
{
    let max = lock(&state).max_concurrent_streams;
    let Ok(mut connection) = h2::server::Builder::new().max_concurrent_streams(max).handshake::<_, Bytes>(io).await
    else {
        return;
    };
    let open = Rc::new(Cell::new(0usize));
    // Set once the connection is gone: what held streams wait for.
    let (closed, gone) = watch::channel(false);
    let (mut accepted, mut skipped) = (0usize, 0usize);
    while let Some(Ok((request, respond))) = connection.accept().await {
        open.set(open.get() + 1);
        accepted += 1;
        // Client streams have odd ids, one after another: the ids passed over were refused.
        let id = respond.stream_id().as_u32() as usize;
        let gap = id.div_ceil(2).saturating_sub(accepted);
        let (held, goaway) = {
            let mut s = lock(&state);
            s.refused_streams += gap.saturating_sub(skipped);
            skipped = skipped.max(gap);
            s.peak_streams = s.peak_streams.max(open.get());
            let goaway = s.goaway_at.is_some_and(|at| open.get() >= at);
            let held = s.goaway_at.is_some();
            if goaway {
                s.goaway_at = None;
            }
            (held, goaway)
        };
        let stream = Stream { open: open.clone(), gone: gone.clone(), held };
        actix_rt::spawn(answer_stream(request, respond, state.clone(), stream));
        if goaway {
            // GOAWAY, then the connection closes with its streams unanswered.
            connection.abrupt_shutdown(h2::Reason::NO_ERROR);
            while let Some(Ok(_)) = connection.accept().await {}
            break;
        }
    }
    drop(connection);
    let _ = closed.send(true);
}

/// A stream being answered: counted open until its task ends.
struct Stream {
    open: Rc<Cell<usize>>,
    gone: watch::Receiver<bool>,
    /// Waiting for a GOAWAY: not answered (see [`ApnsEmulator::goaway_at_streams`]).
    held: bool,
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.open.set(self.open.get().saturating_sub(1));
    }
}

async fn answer_stream(
    request: http::Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
    state: Arc<Mutex<State>>,
    mut stream: Stream,
) {
    let (head, mut body_in) = request.into_parts();
    let mut body = Vec::new();
    while let Some(chunk) = body_in.data().await {
        let Ok(chunk) = chunk else { return };
        let _ = body_in.flow_control().release_capacity(chunk.len());
        if body.len() + chunk.len() > MAX_REQUEST_BYTES {
            return send(&mut respond, reply(413, "PayloadTooLarge"));
        }
        body.extend_from_slice(&chunk);
    }
    let path = head.uri.path();
    let device = path.strip_prefix("/3/device/").filter(|t| !t.is_empty() && !t.contains('/'));
    let answer = match (device, head.method.as_str(), path) {
        (Some(token), "POST", _) => {
            let token = token.to_ascii_lowercase();
            if stream.held || lock(&state).hung.contains(&token) {
                // Never answered: the client times out, or the connection goes (GOAWAY).
                let _ = stream.gone.wait_for(|gone| *gone).await;
                return;
            }
            let apns_id =
                header(&head.headers, "apns-id").map(str::to_string).unwrap_or_else(|| Uuid::new_v4().to_string());
            let mut answer = respond_device(&head.headers, token, &body, &state, &apns_id);
            answer.apns_id = Some(apns_id);
            answer
        }
        (Some(_), _, _) => reply(405, "MethodNotAllowed"),
        (None, "POST", "/3/device/") => reply(400, "MissingDeviceToken"),
        (None, "POST", "/__emulator/answer") => match serde_json::from_slice::<Answer>(&body) {
            Ok(answer) => {
                insert_answer(&mut lock(&state), answer);
                Reply::empty(204)
            }
            Err(e) => Reply::text(400, e.to_string()),
        },
        (None, "POST", "/__emulator/fail") => match serde_json::from_slice::<FailPlan>(&body) {
            Ok(plan) => {
                lock(&state).fail.set(plan);
                Reply::empty(204)
            }
            Err(e) => Reply::text(400, e.to_string()),
        },
        (None, "GET", "/__emulator/stats") => Reply::json(200, stats_of(&lock(&state))),
        _ => reply(404, "BadPath"),
    };
    send(&mut respond, answer);
}

/// Sends an answer on an HTTP/2 stream (a stream the client reset is not answered).
fn send(respond: &mut h2::server::SendResponse<Bytes>, answer: Reply) {
    let mut head = http::Response::builder().status(answer.status);
    if let Some(id) = &answer.apns_id {
        head = head.header("apns-id", id.as_str());
    }
    if let Some(secs) = answer.retry_after {
        head = head.header("retry-after", secs.to_string());
    }
    if !answer.body.is_empty() {
        head = head.header("content-type", answer.content_type);
    }
    let Ok(head) = head.body(()) else { return };
    let Ok(mut out) = respond.send_response(head, answer.body.is_empty()) else { return };
    if !answer.body.is_empty() {
        let _ = out.send_data(Bytes::from(answer.body), true);
    }
}

/// An answer, as both servers send it.
struct Reply {
    status: u16,
    body: Vec<u8>,
    content_type: &'static str,
    apns_id: Option<String>,
    retry_after: Option<u64>,
}

impl Reply {
    fn json(status: u16, body: Value) -> Reply {
        Reply {
            status,
            body: body.to_string().into_bytes(),
            content_type: "application/json",
            apns_id: None,
            retry_after: None,
        }
    }

    fn text(status: u16, body: String) -> Reply {
        Reply { status, body: body.into_bytes(), content_type: "text/plain", apns_id: None, retry_after: None }
    }

    fn empty(status: u16) -> Reply {
        Reply { status, body: Vec::new(), content_type: "", apns_id: None, retry_after: None }
    }

    fn into_actix(self) -> HttpResponse {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut resp = HttpResponse::build(status);
        if !self.body.is_empty() {
            resp.content_type(self.content_type);
        }
        let mut resp = resp.body(self.body);
        if let Some(secs) = self.retry_after {
            crate::http::retry_after(&mut resp, secs);
        }
        resp
    }
}

fn routes(cfg: &mut web::ServiceConfig) {
    cfg.app_data(web::PayloadConfig::new(1024 * 1024))
        .service(
            web::resource("/3/device/{token}")
                .route(web::post().to(push_http1))
                .default_service(web::to(method_not_allowed)),
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

/// Apple's error answer: `{"reason": …}`, with a `timestamp` on a 410.
fn reply(status: u16, reason: &str) -> Reply {
    let mut body = json!({ "reason": reason });
    if status == 410 {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or_default();
        body["timestamp"] = json!(now);
    }
    Reply::json(status, body)
}

fn reason(status: u16, reason: &str) -> HttpResponse {
    reply(status, reason).into_actix()
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

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

#[derive(Deserialize)]
struct TokenClaims {
    iss: String,
    iat: u64,
}

/// A refusal: HTTP status and Apple's `reason`.
type Refusal = (u16, &'static str);

/// The provider-token checks, in Apple's order; `Err` is the refusal.
fn authorize(headers: &HeaderMap, state: &mut State) -> Result<String, Refusal> {
    let jwt = match header(headers, "authorization").and_then(|v| v.split_once(' ')) {
        Some((scheme, jwt)) if scheme.eq_ignore_ascii_case("bearer") && !jwt.trim().is_empty() => jwt.trim(),
        _ => return Err((403, "MissingProviderToken")),
    };
    if !state.presented_tokens.iter().any(|t| t == jwt) {
        state.presented_tokens.push(jwt.to_string());
    }
    let now = state.clock.unix_secs();
    if let Some(iat) = state.known_tokens.get(jwt) {
        // Verified when it was first accepted; only its age can have changed.
        if now.saturating_sub(*iat) > state.rules.token_max_age.as_secs() {
            return Err((403, "ExpiredProviderToken"));
        }
        return Ok(jwt.to_string());
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
    if now.saturating_sub(claims.claims.iat) > state.rules.token_max_age.as_secs() {
        return Err((403, "ExpiredProviderToken"));
    }
    let now = state.clock.now();
    let too_soon =
        state.last_new_token.is_some_and(|at| now.saturating_duration_since(at) < state.rules.min_resign_interval);
    if too_soon {
        return Err((429, "TooManyProviderTokenUpdates"));
    }
    state.known_tokens.insert(jwt.to_string(), claims.claims.iat);
    state.provider_tokens.push(jwt.to_string());
    state.last_new_token = Some(now);
    Ok(jwt.to_string())
}

/// The header checks; `Err` is the refusal.
fn check_headers(req: &HeaderMap) -> Result<(), Refusal> {
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

/// A device request that is not HTTP/2: Apple serves HTTP/2 only. (505 and this reason are the
/// emulator's own.)
async fn push_http1() -> HttpResponse {
    reason(505, "HTTP2Required")
}

/// A device request over HTTP/2, judged in Apple's order (injected failures first).
fn respond_device(headers: &HeaderMap, token: String, body: &[u8], state: &Mutex<State>, apns_id: &str) -> Reply {
    let mut state = lock(state);
    state.requests += 1;
    *state.requests_by_token.entry(token.clone()).or_default() += 1;
    if let Some(plan) = state.fail.strike() {
        let mut answer = reply(plan.status, plan.code.as_deref().unwrap_or(default_reason(plan.status)));
        answer.retry_after = plan.retry_after_secs;
        return answer;
    }
    if let Some(answer) = state.answers.get_mut(&token) {
        let refusal = reply(answer.status, &answer.reason);
        match answer.count.as_mut() {
            Some(0) => {}
            Some(n) => {
                *n -= 1;
                return refusal;
            }
            None => return refusal,
        }
    }
    let provider_token = match authorize(headers, &mut state) {
        Ok(jwt) => jwt,
        Err((status, why)) => return reply(status, why),
    };
    if let Err((status, why)) = check_headers(headers) {
        return reply(status, why);
    }
    if body.is_empty() {
        return reply(400, "PayloadEmpty");
    }
    if body.len() > MAX_PAYLOAD_BYTES {
        return reply(413, "PayloadTooLarge");
    }
    if token.len() != 64 || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
        return reply(400, "BadDeviceToken");
    }
    let own = |name: &str| header(headers, name).map(str::to_string);
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
    Reply::empty(200)
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
    insert_answer(&mut lock(&state), answer.into_inner());
    HttpResponse::NoContent().finish()
}

fn insert_answer(state: &mut State, mut answer: Answer) {
    answer.token = answer.token.to_ascii_lowercase();
    state.answers.insert(answer.token.clone(), answer);
}

async fn stats(state: web::Data<Mutex<State>>) -> HttpResponse {
    HttpResponse::Ok().json(stats_of(&lock(&state)))
}

/// `GET /__emulator/stats`.
fn stats_of(s: &State) -> Value {
    json!({
        "sent": s.sent.len(),
        "requests": s.requests,
        "provider_tokens": s.provider_tokens.len(),
        "connections": s.connections_seen,
        "peak_concurrent_streams": s.peak_streams,
        "refused_streams": s.refused_streams,
        "max_concurrent_streams": s.max_concurrent_streams,
    })
}
