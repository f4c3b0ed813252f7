//! FCM HTTP v1: one `POST {base}/v1/projects/{project}/messages:send` per message, authorised by
//! an OAuth access token obtained from the service account (RS256 JWT assertion). The messages
//! of a batch are sent concurrently as streams of one long-lived HTTP/2 connection per sender
//! (`providers::http2`: TLS with ALPN h2 for `https://`, prior knowledge for an `http://`
//! emulator); the token endpoint is asked over awc, a few times an hour.
//!
//! Files: `oauth` holds the service account and the shared access-token source, `message` builds
//! one message, `classify` reads FCM's answers (docs/providers.md, FCM table); this file sends.

mod classify;
mod message;
mod oauth;

pub use classify::{classify, Classified, QUOTA_BACKOFF};
use message::Request;
pub use message::{message, MAX_TTL_SECS};
pub use oauth::{
    token_answer, ServiceAccount, ServiceAccountError, TokenError, TokenSource, DEFAULT_TOKEN_URI, FAILURE_MEMORY,
    MAX_TOKEN_LIFETIME, REFRESH_BEFORE, SCOPE,
};

use super::http2::{self, Connections};
use super::{
    auth_failure, outage, retry_after_value, send_each, ConnectionSlots, ProviderClient, ProviderProfile, Response,
};
use crate::circuit::Health;
use crate::job::{Job, Provider, SendResult};
use crate::ratelimit::Limits;
use crate::secret::Secret;
use crate::settings::rules::{file_or_inline, http_url, millis, within_ms, SettingsError};
use bytes::Bytes;
use futures_util::future::LocalBoxFuture;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

/// `[providers.fcm]`: FCM HTTP v1. The service account (from `service_account_file` or
/// `service_account_json`, see [`FcmSettings::account`]) gives the project, the signing key and
/// the token endpoint.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FcmSettings {
    pub enabled: bool,
    /// e.g. `https://fcm.googleapis.com`; `/v1/projects/{project}/messages:send` is appended.
    pub base_url: String,
    /// Path of the service-account JSON key…
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_file: Option<PathBuf>,
    /// …or the JSON itself (e.g. from a Kubernetes secret in the environment).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_json: Option<Secret>,
    /// Request timeout (`timeout_ms`).
    #[serde(rename = "timeout_ms", with = "millis")]
    pub timeout: Duration,
    /// How long a sender gathers messages it then sends concurrently (`flush_after_ms`).
    #[serde(rename = "flush_after_ms", with = "millis")]
    pub flush_after: Duration,
    /// Sends per second for the whole project, shared by every worker (0 = unlimited).
    pub rate_per_sec: u32,
    /// Sends per second to one device (0 = unlimited).
    pub device_rate_per_sec: u32,
}

impl FcmSettings {
    pub fn validate(&self) -> Result<(), SettingsError> {
        http_url("providers.fcm.base_url", &self.base_url)?;
        super::timeout("providers.fcm.timeout_ms", self.timeout)?;
        within_ms("providers.fcm.flush_after_ms", self.flush_after, 0..=60_000)?;
        self.account().map(|_| ())
    }

    /// The service account, read from `service_account_file` (now: it may have been rotated)
    /// or `service_account_json`, and checked; the error names the key it came from.
    pub fn account(&self) -> Result<ServiceAccount, SettingsError> {
        let (json, key) = file_or_inline(
            ("providers.fcm.service_account_file", self.service_account_file.as_deref()),
            ("providers.fcm.service_account_json", self.service_account_json.as_ref()),
        )?;
        ServiceAccount::from_json(&json).map_err(|e| SettingsError::new(key, e.to_string()))
    }

    /// The shared rate limits.
    pub fn limits(&self) -> Limits {
        Limits { per_sec: self.rate_per_sec, device_per_sec: self.device_rate_per_sec }
    }

    /// The longest a message may take from its sender's batch to its answer: the wait for a free
    /// request slot (at most the timeout), then the request (the timeout).
    pub fn longest_send(&self) -> Duration {
        self.timeout.saturating_mul(2)
    }
}

/// Why FCM's client cannot be built (at start-up).
#[derive(Debug, thiserror::Error)]
pub enum FcmError {
    #[error("fcm: {0}")]
    Account(#[from] ServiceAccountError),
    #[error("fcm: {0}")]
    Tls(#[from] http2::TlsError),
}

/// The TLS configuration of every FCM connection: the Mozilla roots, ALPN `h2`. Built once per
/// process and shared by the senders.
pub fn tls_config() -> Result<Arc<rustls::ClientConfig>, FcmError> {
    Ok(http2::tls_config(Vec::new())?)
}

/// FCM messages are sent one per request; a sender gathers this many and sends them together.
pub const MAX_BATCH: usize = 100;
/// FCM's limit on a message's payload.
pub const MAX_PAYLOAD_BYTES: usize = 4096;
const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// Requests one sender has in flight at most (streams of its HTTP/2 connection, fewer if FCM's
/// `SETTINGS_MAX_CONCURRENT_STREAMS` says so): one batch's worth.
const IN_FLIGHT: usize = MAX_BATCH;

pub struct FcmClient {
    /// The token endpoint's client.
    http: awc::Client,
    connections: Rc<Connections>,
    send_url: Rc<str>,
    tokens: Arc<TokenSource>,
    /// A message becomes a request (its body, its headers, its stream) only once it holds one of
    /// these; the rest of the messages in flight wait as the jobs they are (bench/README,
    /// "memory per message in flight").
    slots: Rc<ConnectionSlots>,
    timeout: Duration,
    profile: ProviderProfile,
}

/// What one message's send needs, shared by the messages of one [`ProviderClient::send`].
struct Shared {
    http: awc::Client,
    connections: Rc<Connections>,
    url: Rc<str>,
    tokens: Arc<TokenSource>,
    slots: Rc<ConnectionSlots>,
    timeout: Duration,
    jobs: Vec<Job>,
}
impl FcmClient {
    /// The project comes from the service account of `tokens`; `tls` is [`tls_config`]'s.
    pub fn new(settings: &FcmSettings, tokens: Arc<TokenSource>, tls: Arc<rustls::ClientConfig>) -> Self {
        let http = awc::Client::builder()
            .timeout(settings.timeout)
            .connector(awc::Connector::new().timeout(settings.timeout))
            .finish();
        let base_url = settings.base_url.trim_end_matches('/');
        let connections = Rc::new(Connections::new("fcm", base_url, tls, true, settings.timeout));
        let send_url = format!("{base_url}/v1/projects/{}/messages:send", tokens.project_id());
        let profile =
            ProviderProfile { provider: Provider::Fcm, max_batch: MAX_BATCH, flush_after: settings.flush_after };
        let slots = Rc::new(ConnectionSlots::new(IN_FLIGHT, "fcm: no free request slot"));
        FcmClient { http, connections, send_url: send_url.into(), tokens, slots, timeout: settings.timeout, profile }
    }
}

impl ProviderClient for FcmClient {
    fn profile(&self) -> ProviderProfile {
        self.profile
    }

    fn send(&self, jobs: &[Job]) -> LocalBoxFuture<'static, Response> {
        let shared = Rc::new(Shared {
            http: self.http.clone(),
            connections: self.connections.clone(),
            url: self.send_url.clone(),
            tokens: self.tokens.clone(),
            slots: self.slots.clone(),
            timeout: self.timeout,
            jobs: jobs.to_vec(),
        });
        send_each((0..jobs.len()).map(|i| send_one(shared.clone(), i)))
    }
}

/// Sends message `i` of a batch once a request slot is free: size check, access token, POST,
/// and one retry with a fresh token when FCM refuses the token itself (401 without an
/// FcmError). A message that finds no slot within the timeout was not sent: deferred, without
/// spending an attempt (the sender's own queue is not FCM's fault).
async fn send_one(shared: Rc<Shared>, i: usize) -> (SendResult, Health) {
    let deadline = tokio::time::Instant::now() + shared.timeout;
    let _slot = match shared.slots.take(deadline, shared.timeout).await {
        Ok(slot) => slot,
        Err(deferred) => return (deferred, Health::Up),
    };
    let (http, tokens, job) = (&shared.http, &shared.tokens, &shared.jobs[i]);
    // The lifetime left is read on the token source's clock (a test's `ManualClock`).
    let now_ms = super::lifetime::now_ms(tokens.clock());
    let body = match serde_json::to_vec(&Request { message: message(job, now_ms) }) {
        Ok(body) if payload_bytes(&body, &job.token) > MAX_PAYLOAD_BYTES => {
            let size = payload_bytes(&body, &job.token);
            let error = format!("fcm: payload too large: {size} bytes (limit {MAX_PAYLOAD_BYTES})");
            return (SendResult::Permanent { error }, Health::Up);
        }
        Ok(body) => Bytes::from(body),
        Err(e) => return (SendResult::Permanent { error: format!("fcm: unserializable message: {e}") }, Health::Up),
    };
    let mut rejected: Option<String> = None;
    loop {
        let token = match tokens.token_replacing(http, rejected.as_deref()).await {
            Ok(token) => token,
            Err(TokenError::Refused(error)) => return auth_failure(error),
            Err(TokenError::Unavailable(error)) => return outage(error),
        };
        // Boxed: the exchange's state (the HTTP/2 request, its stream, the answer being read) is
        // several KiB, and inline it would make every message waiting for a slot that big.
        let answer = Box::pin(post(&shared, &token, body.clone())).await;
        let answer = match answer {
            Ok(answer) => answer,
            Err(error) => return outage(error),
        };
        let retry_after = answer.headers.get("retry-after").and_then(|v| v.to_str().ok()).and_then(retry_after_value);
        let reply = answer.body.as_slice();
        let classified = classify(answer.status, reply, retry_after, job.attempt);
        if classified == Classified::RefreshToken {
            if rejected.is_none() {
                rejected = Some(token);
                continue;
            }
            return auth_failure(format!("fcm: HTTP 401 twice, with a fresh access token too: {}", snippet(reply)));
        }
        return classified.into_result();
    }
}

/// What counts against FCM's 4096-byte limit: the message without its recipient token.
pub fn payload_bytes(body: &[u8], token: &str) -> usize {
    body.len().saturating_sub(token.len())
}

/// One POST of a message on the sender's HTTP/2 connection, within the timeout.
async fn post(shared: &Shared, token: &str, body: Bytes) -> Result<http2::Answer, http2::SendError> {
    let head = || {
        http::Request::post(&*shared.url)
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "application/json")
            .body(())
    };
    shared.connections.send(shared.timeout, head, body, MAX_RESPONSE_BYTES).await
}

/// The start of a body, for an error: at most 200 bytes of text (each invalid UTF-8 byte becomes
/// a 3-byte `�`, so the cut comes after the conversion).
pub(crate) fn snippet(body: &[u8]) -> String {
    let mut text = String::from_utf8_lossy(&body[..body.len().min(200)]).trim().to_string();
    let mut end = text.len().min(200);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::Priority;
    use serde_json::json;

    /// A client whose FCM and token endpoint are a closed port: nothing it builds is sent.
    fn client(timeout: Duration) -> FcmClient {
        let account = json!({
            "project_id": "p",
            "client_email": "relay@p.iam.gserviceaccount.com",
            "private_key": include_str!("../../../../emulators/keys/fcm-emulator-key.pem"),
            "token_uri": "http://127.0.0.1:9/token",
        });
        let account = ServiceAccount::from_json(&account.to_string()).expect("service account");
        let settings = FcmSettings {
            enabled: true,
            base_url: "http://127.0.0.1:9".into(),
            service_account_file: None,
            service_account_json: None,
            timeout,
            flush_after: Duration::ZERO,
            rate_per_sec: 0,
            device_rate_per_sec: 0,
        };
        let tls = tls_config().expect("tls");
        FcmClient::new(&settings, Arc::new(TokenSource::new(account).expect("token source")), tls)
    }

    /// A message that finds every connection slot taken for the whole timeout is deferred: no
    /// attempt spent, nothing against FCM's circuit, and no request built (the closed port would
    /// have made it an outage).
    #[actix_rt::test]
    async fn a_message_that_finds_no_free_connection_within_the_timeout_is_deferred() {
        let client = client(Duration::from_millis(50));
        let taken = client.slots.permits.acquire_many(IN_FLIGHT as u32).await.expect("every slot");
        let job = crate::providers::check::job(Provider::Fcm, "tok", json!({"title": "t"}), Priority::Normal);
        let response = client.send(std::slice::from_ref(&job)).await;
        assert_eq!(response.health, Health::Up);
        let [SendResult::Deferred { error, after }] = &response.results[..] else {
            panic!("{:?}", response.results);
        };
        assert!(error.starts_with("fcm: no free request slot within 50 ms (100 per sender)"), "{error}");
        assert_eq!(*after, Duration::from_millis(50));

        // With a slot free the message is built and sent: here to the closed port, an outage.
        drop(taken);
        let response = client.send(&[job]).await;
        assert!(matches!(response.health, Health::Outage(_)), "{:?}", response.health);
    }

    /// Every message of a sender's batches is a `send_one` future from the moment the batch
    /// arrives, most of them waiting for a request slot: what one costs while it waits is part of
    /// the memory per message in flight (bench/README, "FCM over HTTP/2"). The HTTP/2 exchange is
    /// boxed, allocated only once a slot is held; inline it made each waiting message ~8 KiB.
    #[actix_rt::test]
    async fn a_message_waiting_for_a_request_slot_holds_well_under_a_kib() {
        let client = client(Duration::from_millis(50));
        let shared = Rc::new(Shared {
            http: client.http.clone(),
            connections: client.connections.clone(),
            url: client.send_url.clone(),
            tokens: client.tokens.clone(),
            slots: client.slots.clone(),
            timeout: client.timeout,
            jobs: Vec::new(),
        });
        let waiting = send_one(shared, 0);
        let size = std::mem::size_of_val(&waiting);
        assert!(size <= 1024, "a waiting message's future is {size} bytes");
    }
}
