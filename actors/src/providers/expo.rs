//! Expo push service: `POST {base}/--/api/v2/push/send` with up to 100 messages, one ticket
//! back per message, in order.
//!
//! Expo refuses some requests as a whole because of what a few of their messages are: tokens of
//! several Expo projects in one request (`PUSH_TOO_MANY_EXPERIENCE_IDS`, whose `details` name
//! each project's tokens), or a message it does not accept (`VALIDATION_ERROR`, or another 400).
//! The batch-mates of such a message must not fail with it, so the client sends the batch again,
//! split: one request per project as Expo named them, else in halves until the refused message
//! is alone (and fails on its own). A refusal about the request itself (credentials, too many
//! messages, an outage) is not split. The sender still gets one [`Response`] per batch, in
//! input order, within the provider timeout however many requests it took.

use super::{bounded, ProviderClient, Response};
use crate::circuit::Health;
use crate::job::{Job, Priority, Provider, SendResult};
use crate::settings::ExpoSettings;
use futures_util::future::join_all;
use futures_util::future::LocalBoxFuture;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

/// Request bodies larger than this are sent gzip-compressed.
pub const GZIP_ABOVE_BYTES: usize = 1024;
/// Receipts asked for per getReceipts call (Expo's limit).
pub const MAX_RECEIPT_IDS: usize = 1000;
/// Expo accepts at most 100 messages per request…
pub const MAX_BATCH: usize = 100;
/// …of at most 4096 bytes each.
pub const MAX_PAYLOAD_BYTES: usize = 4096;
const MAX_RESPONSE_BYTES: usize = 4 * 1024 * 1024;

pub struct ExpoClient {
    poster: Poster,
    receipts_url: String,
    flush_after: Duration,
}

impl ExpoClient {
    pub fn new(settings: &ExpoSettings) -> Self {
        let http = awc::Client::builder()
            .timeout(settings.timeout)
            .connector(awc::Connector::new().timeout(settings.timeout).limit(64))
            .finish();
        let poster = Poster {
            http,
            url: format!("{}/--/api/v2/push/send", settings.base_url.trim_end_matches('/')),
            access_token: settings.access_token.clone(),
            timeout: settings.timeout,
        };
        ExpoClient {
            poster,
            receipts_url: format!("{}/--/api/v2/push/getReceipts", settings.base_url.trim_end_matches('/')),
            flush_after: settings.flush_after,
        }
    }
}

/// What a send request needs, cheap to clone into the requests of one batch (awc's client is
/// reference-counted).
#[derive(Clone)]
struct Poster {
    http: awc::Client,
    url: String,
    access_token: Option<String>,
    timeout: Duration,
}

/// One message of a batch, serialized once, whatever requests it goes out in.
struct Outgoing {
    /// Its place in the batch.
    job: usize,
    token: String,
    json: Vec<u8>,
}

/// What the requests for some messages of a batch produced: a result per message (by its place
/// in the batch), and the health of every request whose answer was final.
struct Sent {
    results: Vec<(usize, SendResult)>,
    healths: Vec<Health>,
}

impl Poster {
    /// Sends `messages` (places in `all`), split again as long as Expo refuses the request for
    /// what some of them are. Every request ends by `deadline`.
    fn deliver(
        self,
        all: Rc<Vec<Outgoing>>,
        messages: Vec<usize>,
        deadline: tokio::time::Instant,
    ) -> LocalBoxFuture<'static, Sent> {
        Box::pin(async move {
            let answer = self.post(&all, &messages, deadline).await;
            let parts = match &answer {
                Answer::Final(_) => Vec::new(),
                Answer::Split { projects, .. } => {
                    let tokens: Vec<&str> = messages.iter().map(|&m| all[m].token.as_str()).collect();
                    split(&tokens, projects)
                }
            };
            if parts.is_empty() {
                let response = answer.response();
                let results = messages.iter().map(|&m| all[m].job).zip(response.results).collect();
                return Sent { results, healths: vec![response.health] };
            }
            let requests = parts.into_iter().map(|part| {
                let part = part.into_iter().map(|p| messages[p]).collect();
                self.clone().deliver(Rc::clone(&all), part, deadline)
            });
            let mut sent = Sent { results: Vec::with_capacity(messages.len()), healths: Vec::new() };
            for part in join_all(requests).await {
                sent.results.extend(part.results);
                sent.healths.extend(part.healths);
            }
            sent
        })
    }

    /// One request with `messages`, and how Expo answered it (by `deadline`, or an outage).
    async fn post(&self, all: &[Outgoing], messages: &[usize], deadline: tokio::time::Instant) -> Answer {
        let n = messages.len();
        let mut body = Vec::with_capacity(messages.iter().map(|&m| all[m].json.len() + 1).sum::<usize>() + 2);
        body.push(b'[');
        for (i, &m) in messages.iter().enumerate() {
            if i > 0 {
                body.push(b',');
            }
            body.extend_from_slice(&all[m].json);
        }
        body.push(b']');
        // Expo accepts gzip request bodies; 100 messages compress to a fraction of their size.
        let (body, gzipped) = match body.len() > GZIP_ABOVE_BYTES {
            true => gzip(&body).map(|z| (z, true)).unwrap_or((body, false)),
            false => (body, false),
        };
        let mut req = self
            .http
            .post(&self.url)
            .insert_header(("content-type", "application/json"))
            .insert_header(("accept", "application/json"))
            .insert_header(("accept-encoding", "gzip"));
        if gzipped {
            req = req.insert_header(("content-encoding", "gzip"));
        }
        if let Some(token) = &self.access_token {
            req = req.bearer_auth(token);
        }
        match tokio::time::timeout_at(deadline, send_request(req, body, n)).await {
            Ok(answer) => answer,
            Err(_) => Answer::Final(outage(n, format!("expo: no answer within {} ms", self.timeout.as_millis()))),
        }
    }
}

/// How to send a refused request again: one part per project when Expo named the projects'
/// tokens (tokens it did not name form a part of their own), else two halves; nothing once it
/// is down to one message, or when the projects would not divide it. Parts are places in
/// `tokens`, each part smaller than the whole.
pub fn split(tokens: &[&str], projects: &[Vec<String>]) -> Vec<Vec<usize>> {
    if tokens.len() < 2 {
        return Vec::new();
    }
    let project_of: HashMap<&str, usize> =
        projects.iter().enumerate().flat_map(|(p, named)| named.iter().map(move |t| (t.as_str(), p))).collect();
    let mut parts = vec![Vec::new(); projects.len() + 1];
    for (i, token) in tokens.iter().enumerate() {
        parts[project_of.get(token).copied().unwrap_or(projects.len())].push(i);
    }
    parts.retain(|p| !p.is_empty());
    if parts.len() > 1 {
        return parts;
    }
    let half = tokens.len() / 2;
    vec![(0..half).collect(), (half..tokens.len()).collect()]
}

/// The health of a batch sent as several requests: credentials refused by any request are the
/// project's problem; an outage only when every request with a final answer was one.
fn overall(healths: Vec<Health>) -> Health {
    if let Some(auth) = healths.iter().find(|h| matches!(h, Health::AuthFailure(_))) {
        return auth.clone();
    }
    let all_out = !healths.is_empty() && healths.iter().all(|h| matches!(h, Health::Outage(_)));
    match (all_out, healths.into_iter().next()) {
        (true, Some(outage)) => outage,
        _ => Health::Up,
    }
}

impl ProviderClient for ExpoClient {
    fn provider(&self) -> Provider {
        Provider::Expo
    }

    fn max_batch(&self) -> usize {
        MAX_BATCH
    }

    fn flush_after(&self) -> Duration {
        self.flush_after
    }

    fn send(&self, jobs: &[Job]) -> LocalBoxFuture<'static, Response> {
        // Each message is serialized once: to check Expo's size limit before sending (a
        // too-big message fails here with its size, without a round trip), then for the body.
        let mut results: Vec<Option<SendResult>> = Vec::with_capacity(jobs.len());
        let mut outgoing = Vec::with_capacity(jobs.len());
        for (place, job) in jobs.iter().enumerate() {
            let json = serde_json::to_vec(&message(job)).unwrap_or_default();
            if json.len() > MAX_PAYLOAD_BYTES {
                let error = format!("expo: payload too large: {} bytes (limit {MAX_PAYLOAD_BYTES})", json.len());
                results.push(Some(SendResult::Permanent { error }));
                continue;
            }
            results.push(None);
            outgoing.push(Outgoing { job: place, token: job.token.clone(), json });
        }
        if outgoing.is_empty() {
            let results = results.into_iter().flatten().collect();
            return Box::pin(std::future::ready(Response { results, health: Health::Up }));
        }
        // However many requests the batch takes, it is answered within the timeout (the claim
        // idle time is checked against it).
        let deadline = tokio::time::Instant::now() + self.poster.timeout;
        let messages = (0..outgoing.len()).collect();
        let sent = self.poster.clone().deliver(Rc::new(outgoing), messages, deadline);
        Box::pin(async move {
            let sent = sent.await;
            for (place, result) in sent.results {
                results[place] = Some(result);
            }
            let missing = || SendResult::Retry { error: "expo: no result for this message".into(), after: None };
            let results = results.into_iter().map(|r| r.unwrap_or_else(missing)).collect();
            Response { results, health: overall(sent.healths) }
        })
    }
}

impl ExpoClient {
    /// `POST {base}/--/api/v2/push/getReceipts` for at most 1000 ids. Returns the receipts Expo
    /// has, classified like tickets; ids it does not know yet are absent.
    pub async fn receipts(&self, ids: &[&str]) -> Result<Vec<(String, SendResult)>, String> {
        let mut req = self.poster.http.post(&self.receipts_url).insert_header(("accept", "application/json"));
        if let Some(token) = &self.poster.access_token {
            req = req.bearer_auth(token);
        }
        let mut resp = req.send_json(&json!({ "ids": ids })).await.map_err(|e| format!("expo receipts: {e}"))?;
        let status = resp.status().as_u16();
        let body = resp.body().limit(MAX_RESPONSE_BYTES).await.map_err(|e| format!("expo receipts: {e}"))?;
        classify_receipts(status, &body)
    }
}

/// Classifies a getReceipts answer: the receipts it holds, classified like tickets, or why the
/// whole answer is unusable (then every receipt asked for is asked for again later).
pub fn classify_receipts(status: u16, body: &[u8]) -> Result<Vec<(String, SendResult)>, String> {
    if status != 200 {
        return Err(bounded(format!(
            "expo receipts: HTTP {status}: {}",
            String::from_utf8_lossy(&body[..body.len().min(200)])
        )));
    }
    let parsed: ReceiptsResponse =
        serde_json::from_slice(body).map_err(|e| bounded(format!("expo receipts: unreadable response: {e}")))?;
    Ok(parsed.data.into_iter().map(|(id, ticket)| (id, classify_ticket(ticket))).collect())
}

#[derive(Deserialize)]
struct ReceiptsResponse {
    data: std::collections::HashMap<String, Ticket>,
}

fn gzip(body: &[u8]) -> std::io::Result<Vec<u8>> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::with_capacity(body.len() / 4), flate2::Compression::fast());
    encoder.write_all(body)?;
    encoder.finish()
}

/// Posts a prepared body of `n` messages and classifies the answer.
async fn send_request(req: awc::ClientRequest, body: Vec<u8>, n: usize) -> Answer {
    let mut resp = match req.send_body(body).await {
        Ok(resp) => resp,
        Err(e) => return Answer::Final(outage(n, format!("expo: request failed: {e}"))),
    };
    let status = resp.status().as_u16();
    let retry_after = super::retry_after(resp.headers());
    let body = match resp.body().limit(MAX_RESPONSE_BYTES).await {
        Ok(body) => body,
        Err(e) => return Answer::Final(outage(n, format!("expo: reading the response failed: {e}"))),
    };
    answer(status, &body, retry_after, n)
}

/// The Expo message for one job (DESIGN §8): title, body, and `data` merged with the
/// notification id so the app can de-duplicate and link to the pull API.
pub fn message(job: &Job) -> Value {
    let payload = job.payload.as_object().cloned().unwrap_or_default();
    let mut data = match payload.get("data") {
        Some(Value::Object(d)) => d.clone(),
        _ => Map::new(),
    };
    data.insert("notification_id".into(), Value::String(job.notification_id.to_string()));
    let mut msg = Map::new();
    msg.insert("to".into(), Value::String(job.token.clone()));
    for key in [
        "title",
        "body",
        "subtitle",
        "sound",
        "badge",
        "ttl",
        "expiration",
        "channelId",
        "categoryId",
        "mutableContent",
    ] {
        if let Some(v) = payload.get(key).filter(|v| !v.is_null()) {
            msg.insert(key.into(), v.clone());
        }
    }
    msg.insert("data".into(), Value::Object(data));
    let priority = match job.priority {
        Priority::High => "high",
        Priority::Normal => "default",
    };
    msg.insert("priority".into(), json!(priority));
    Value::Object(msg)
}

#[derive(Deserialize)]
struct SendResponse {
    data: Vec<Ticket>,
}

#[derive(Deserialize)]
struct Ticket {
    status: String,
    id: Option<String>,
    message: Option<String>,
    details: Option<Details>,
}

#[derive(Deserialize)]
struct Details {
    error: Option<String>,
}

#[derive(Deserialize)]
struct ErrorResponse {
    errors: Vec<RequestError>,
}

#[derive(Deserialize)]
struct RequestError {
    code: String,
    message: Option<String>,
    /// For `PUSH_TOO_MANY_EXPERIENCE_IDS`: each project (experience id) with its tokens from
    /// the request, `{"@owner/project-a": ["ExponentPushToken[…]", …], …}`.
    #[serde(default)]
    details: Option<Value>,
}

fn outage(n: usize, error: String) -> Response {
    let error = bounded(error);
    Response::all(n, SendResult::Retry { error: error.clone(), after: None }, Health::Outage(error))
}

/// How Expo answered one request.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// One result per message sent, and the provider's health: tickets, or a refusal that
    /// applies to every message alike.
    Final(Response),
    /// Refused as a whole because of what some messages are: sent again split, `projects`
    /// (each project's tokens, when Expo named them) saying how. `refused` is what the messages
    /// get when the request cannot be split any further.
    Split { refused: Response, projects: Vec<Vec<String>> },
}

impl Answer {
    /// What the messages get when this request is all there is.
    pub fn response(self) -> Response {
        match self {
            Answer::Final(response) | Answer::Split { refused: response, .. } => response,
        }
    }
}

/// Classifies a whole response: one result per message sent, and the provider's health. A
/// refusal that splitting would get around counts here as what each message gets alone.
pub fn classify_response(status: u16, body: &[u8], retry_after: Option<Duration>, n: usize) -> Response {
    answer(status, body, retry_after, n).response()
}

/// Classifies a whole response, and says whether sending its messages split could fare better.
pub fn answer(status: u16, body: &[u8], retry_after: Option<Duration>, n: usize) -> Answer {
    if status == 200 {
        match serde_json::from_slice::<SendResponse>(body) {
            Ok(r) if r.data.len() == n => {
                let results: Vec<SendResult> = r.data.into_iter().map(classify_ticket).collect();
                // Credentials refused per ticket are still the project's problem, not the device's.
                let health = match results.iter().find(|r| matches!(r, SendResult::Auth { .. })) {
                    Some(auth) => Health::AuthFailure(auth.error().unwrap_or_default().to_string()),
                    None => Health::Up,
                };
                return Answer::Final(Response { results, health });
            }
            Ok(r) => return Answer::Final(outage(n, format!("expo: {} tickets for {n} messages", r.data.len()))),
            // A 200 that carries request errors instead of tickets is read like a 400.
            Err(e) => match serde_json::from_slice::<ErrorResponse>(body) {
                Ok(r) if !r.errors.is_empty() => {}
                _ => return Answer::Final(outage(n, format!("expo: unreadable 200 response: {e}"))),
            },
        }
    }
    let (code, message, details) = match serde_json::from_slice::<ErrorResponse>(body) {
        Ok(r) => {
            r.errors.into_iter().next().map(|e| (e.code, e.message.unwrap_or_default(), e.details)).unwrap_or_default()
        }
        Err(_) => (String::new(), String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned(), None),
    };
    let error = bounded(format!("expo: HTTP {status} {code}: {message}").replace(" : ", ": "));
    // A request we built wrong fails its messages, but says nothing about Expo's health.
    let refused = |error: String| Response::all(n, SendResult::Permanent { error }, Health::Up);
    match (status, code.as_str()) {
        (401, _) | (_, "UNAUTHORIZED") => {
            Answer::Final(Response::all(n, SendResult::Auth { error: error.clone() }, Health::AuthFailure(error)))
        }
        (429, _) | (_, "TOO_MANY_REQUESTS") | (500..=599, _) => Answer::Final(Response::all(
            n,
            SendResult::Retry { error: error.clone(), after: retry_after },
            Health::Outage(error),
        )),
        // About the request itself (the sender chunks at Expo's limits): no split helps.
        (_, "PUSH_TOO_MANY_NOTIFICATIONS" | "PUSH_TOO_MANY_RECEIPTS") => Answer::Final(refused(error)),
        (_, "PUSH_TOO_MANY_EXPERIENCE_IDS") => {
            Answer::Split { refused: refused(error), projects: projects(details.as_ref()) }
        }
        // Any other 400 may be about a single message (a field Expo does not accept).
        (200 | 400, _) => Answer::Split { refused: refused(error), projects: Vec::new() },
        _ => Answer::Final(refused(error)),
    }
}

/// The tokens of each project that `PUSH_TOO_MANY_EXPERIENCE_IDS` names in its `details`.
fn projects(details: Option<&Value>) -> Vec<Vec<String>> {
    let Some(Value::Object(projects)) = details else { return Vec::new() };
    projects
        .values()
        .filter_map(Value::as_array)
        .map(|tokens| tokens.iter().filter_map(Value::as_str).map(str::to_string).collect::<Vec<_>>())
        .filter(|tokens| !tokens.is_empty())
        .collect()
}

/// Classifies one ticket (the same table applies to receipts).
fn classify_ticket(t: Ticket) -> SendResult {
    if t.status == "ok" {
        return SendResult::Delivered { provider_message_id: t.id };
    }
    let code = t.details.and_then(|d| d.error).unwrap_or_default();
    let error = bounded(format!("expo: {code}: {}", t.message.unwrap_or_default()));
    match code.as_str() {
        "DeviceNotRegistered" => SendResult::InvalidToken { error },
        "MessageRateExceeded" | "ExpoError" | "ProviderError" => SendResult::Retry { error, after: None },
        "InvalidCredentials" | "MismatchSenderId" => SendResult::Auth { error },
        _ => SendResult::Permanent { error },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn job(payload: Value) -> Job {
        Job {
            notification_id: Uuid::nil(),
            device_id: Uuid::new_v4(),
            user_id: "u".into(),
            provider: Provider::Expo,
            token: "ExponentPushToken[x]".into(),
            payload: payload.into(),
            priority: Priority::High,
            trace_id: "t".into(),
            attempt: 0,
            targets: 1,
            requeued: false,
            queued_ms: 0,
        }
    }

    #[test]
    fn the_message_merges_the_notification_id_into_data() {
        let m = message(&job(json!({"title": "T", "body": "B", "data": {"order": 7}, "sound": "default", "x": 1})));
        assert_eq!(
            m,
            json!({"to": "ExponentPushToken[x]", "title": "T", "body": "B", "sound": "default",
                   "data": {"order": 7, "notification_id": Uuid::nil().to_string()}, "priority": "high"})
        );
    }

    #[test]
    fn tickets_are_classified_as_providers_md_says() {
        let body = json!({"data": [
            {"status": "ok", "id": "r1"},
            {"status": "error", "message": "gone", "details": {"error": "DeviceNotRegistered"}},
            {"status": "error", "message": "big", "details": {"error": "MessageTooBig"}},
            {"status": "error", "message": "slow", "details": {"error": "MessageRateExceeded"}},
            {"status": "error", "message": "creds", "details": {"error": "InvalidCredentials"}},
            {"status": "error", "message": "dev", "details": {"error": "DeveloperError"}},
        ]});
        let response = classify_response(200, body.to_string().as_bytes(), None, 6);
        assert!(matches!(response.health, Health::AuthFailure(_)), "InvalidCredentials is the project's problem");
        let r = response.results;
        assert_eq!(r[0], SendResult::Delivered { provider_message_id: Some("r1".into()) });
        assert!(matches!(r[1], SendResult::InvalidToken { .. }));
        assert!(matches!(r[2], SendResult::Permanent { .. }));
        assert!(matches!(r[3], SendResult::Retry { .. }));
        assert!(matches!(r[4], SendResult::Auth { .. }));
        assert!(matches!(r[5], SendResult::Permanent { .. }));
    }

    #[test]
    fn request_level_errors_apply_to_every_message() {
        let body = |code: &str| json!({"errors": [{"code": code, "message": "m"}]}).to_string();
        let response = classify_response(429, body("TOO_MANY_REQUESTS").as_bytes(), Some(Duration::from_secs(3)), 2);
        assert!(matches!(response.health, Health::Outage(_)));
        let r = response.results;
        assert_eq!(r.len(), 2);
        assert_eq!(
            r[0],
            SendResult::Retry {
                error: "expo: HTTP 429 TOO_MANY_REQUESTS: m".into(),
                after: Some(Duration::from_secs(3))
            }
        );
        assert!(matches!(classify_response(503, b"oops", None, 1).results[0], SendResult::Retry { .. }));
        assert!(matches!(
            classify_response(401, body("UNAUTHORIZED").as_bytes(), None, 1).results[0],
            SendResult::Auth { .. }
        ));
        assert!(matches!(
            classify_response(400, body("PUSH_TOO_MANY_NOTIFICATIONS").as_bytes(), None, 1).results[0],
            SendResult::Permanent { .. }
        ));
    }

    #[test]
    fn provider_text_is_cut_to_a_bounded_error() {
        // The bound the property tests check: before it, a ticket message, a request error or a
        // serde message quoting a 4 MiB body was copied whole into the error.
        let long = "x".repeat(10_000);
        let ticket = json!({"data": [{"status": "error", "message": long, "details": {"error": "DeveloperError"}}]});
        let request = json!({"errors": [{"code": "VALIDATION_ERROR", "message": long}]});
        let unreadable = json!({"data": long});
        for (status, body) in [(200, ticket), (400, request), (200, unreadable)] {
            let response = classify_response(status, body.to_string().as_bytes(), None, 1);
            let error = response.results[0].error().unwrap();
            assert!(error.len() <= crate::providers::MAX_ERROR_BYTES && error.ends_with('…'), "{status}: {error}");
        }
        let receipts = classify_receipts(200, json!({"data": long}).to_string().as_bytes()).unwrap_err();
        assert!(receipts.len() <= crate::providers::MAX_ERROR_BYTES, "{receipts}");
    }

    fn refusal(code: &str, details: Option<Value>) -> Vec<u8> {
        let mut error = json!({"code": code, "message": "m"});
        if let Some(details) = details {
            error["details"] = details;
        }
        json!({ "errors": [error] }).to_string().into_bytes()
    }

    #[test]
    fn mixing_expo_projects_is_split_by_the_tokens_expo_names_for_each_project() {
        let details = json!({"@acme/shop": ["ExponentPushToken[a]", "ExponentPushToken[c]"],
                             "@acme/admin": ["ExponentPushToken[b]"]});
        let body = refusal("PUSH_TOO_MANY_EXPERIENCE_IDS", Some(details));

        let Answer::Split { refused, projects } = answer(400, &body, None, 3) else { panic!("not split") };

        assert_eq!(projects.len(), 2);
        assert!(refused.results.iter().all(|r| matches!(r, SendResult::Permanent { .. })), "{refused:?}");
        assert_eq!(refused.health, Health::Up);
        let tokens = ["ExponentPushToken[a]", "ExponentPushToken[b]", "ExponentPushToken[c]", "ExponentPushToken[d]"];
        let mut parts = split(&tokens, &projects);
        parts.sort();
        // One request per project; a token Expo did not name goes in a request of its own.
        assert_eq!(parts, vec![vec![0, 2], vec![1], vec![3]]);
        // The same refused with a 200 (no tickets, only errors) is read alike.
        assert!(matches!(answer(200, &body, None, 3), Answer::Split { projects, .. } if projects.len() == 2));
    }

    #[test]
    fn a_400_that_may_be_about_one_message_is_bisected_down_to_that_message() {
        for (status, body) in [
            (400, refusal("VALIDATION_ERROR", None)),
            (400, b"<html>bad request</html>".to_vec()),
            // Projects Expo did not name, or a single project: nothing to split by.
            (400, refusal("PUSH_TOO_MANY_EXPERIENCE_IDS", Some(json!("unreadable")))),
        ] {
            let Answer::Split { projects, .. } = answer(status, &body, None, 5) else { panic!("{status}: not split") };
            let tokens = ["a", "b", "c", "d", "e"];
            assert_eq!(split(&tokens, &projects), vec![vec![0, 1], vec![2, 3, 4]]);
        }
        let one_project = vec![vec!["a".to_string(), "b".to_string()]];
        assert_eq!(split(&["a", "b"], &one_project), vec![vec![0], vec![1]], "halves when projects do not divide");
        assert!(split(&["a"], &[]).is_empty(), "one message alone is the culprit: not sent again");
        assert!(split(&[], &[]).is_empty());
    }

    #[test]
    fn refusals_about_the_whole_request_are_not_split() {
        for (status, code) in [
            (401, "UNAUTHORIZED"),
            (400, "PUSH_TOO_MANY_NOTIFICATIONS"),
            (400, "PUSH_TOO_MANY_RECEIPTS"),
            (429, "TOO_MANY_REQUESTS"),
            (503, "INTERNAL_SERVER_ERROR"),
            (403, "FORBIDDEN"),
            (404, "NOT_FOUND"),
        ] {
            let answered = answer(status, &refusal(code, None), None, 2);
            assert!(matches!(answered, Answer::Final(_)), "{status} {code}: {answered:?}");
            assert_eq!(answered.response(), classify_response(status, &refusal(code, None), None, 2));
        }
    }

    #[test]
    fn a_batch_sent_as_several_requests_is_an_outage_only_when_every_final_request_was_one() {
        let out = || Health::Outage("503".into());
        assert!(matches!(overall(vec![out(), out()]), Health::Outage(_)));
        assert_eq!(overall(vec![out(), Health::Up]), Health::Up);
        assert!(matches!(overall(vec![Health::Up, Health::AuthFailure("401".into()), out()]), Health::AuthFailure(_)));
        assert_eq!(overall(Vec::new()), Health::Up);
    }

    #[test]
    fn a_ticket_count_mismatch_is_retried_not_misattributed() {
        let body = json!({"data": [{"status": "ok", "id": "r1"}]}).to_string();
        let response = classify_response(200, body.as_bytes(), None, 2);
        assert!(response.results.iter().all(|r| matches!(r, SendResult::Retry { .. })));
        assert!(matches!(response.health, Health::Outage(_)));
    }
}

#[cfg(test)]
mod proptests {
    use super::*;
    use crate::providers::check::{assert_one_class, body, class, status};
    use crate::providers::{MAX_ERROR_BYTES, MAX_RETRY_AFTER};
    use proptest::prelude::*;

    const TICKET_ERRORS: &[&str] = &[
        "DeviceNotRegistered",
        "MessageTooBig",
        "DeveloperError",
        "MessageRateExceeded",
        "InvalidCredentials",
        "MismatchSenderId",
        "ExpoError",
        "ProviderError",
    ];

    /// PROVIDERS.md's Expo table, for a ticket or a receipt.
    fn documented(ticket: &Value) -> &'static str {
        if ticket["status"] == "ok" {
            return "OK";
        }
        match ticket["details"]["error"].as_str().unwrap_or_default() {
            "DeviceNotRegistered" => "INVALID",
            "MessageRateExceeded" | "ExpoError" | "ProviderError" => "RETRY",
            "InvalidCredentials" | "MismatchSenderId" => "AUTH",
            _ => "PERM",
        }
    }

    fn ticket() -> impl Strategy<Value = Value> {
        let status = prop_oneof![Just("ok".to_string()), Just("error".to_string()), any::<String>()];
        let code = prop_oneof![prop::sample::select(TICKET_ERRORS).prop_map(str::to_string), any::<String>()];
        let message = prop_oneof![any::<String>(), "\\PC{600,1200}"];
        (status, proptest::option::of(any::<String>()), proptest::option::of(message), proptest::option::of(code))
            .prop_map(|(status, id, message, code)| {
                let mut t = json!({ "status": status });
                if let Some(id) = id {
                    t["id"] = json!(id);
                }
                if let Some(message) = message {
                    t["message"] = json!(message);
                }
                if let Some(code) = code {
                    t["details"] = json!({ "error": code });
                }
                t
            })
    }

    #[test]
    fn every_documented_row_maps_to_its_class() {
        let tickets = [
            (json!({"status": "ok", "id": "r"}), "OK"),
            (json!({"status": "error", "details": {"error": "DeviceNotRegistered"}}), "INVALID"),
            (json!({"status": "error", "details": {"error": "MessageTooBig"}}), "PERM"),
            (json!({"status": "error", "details": {"error": "DeveloperError"}}), "PERM"),
            (json!({"status": "error", "details": {"error": "MessageRateExceeded"}}), "RETRY"),
            (json!({"status": "error", "details": {"error": "InvalidCredentials"}}), "AUTH"),
            (json!({"status": "error", "details": {"error": "MismatchSenderId"}}), "AUTH"),
            (json!({"status": "error", "details": {"error": "ExpoError"}}), "RETRY"),
            (json!({"status": "error", "details": {"error": "ProviderError"}}), "RETRY"),
        ];
        for (ticket, expected) in &tickets {
            let body = json!({ "data": [ticket] }).to_string();
            let r = classify_response(200, body.as_bytes(), None, 1);
            assert_eq!(class(&r.results[0]), *expected, "ticket {ticket}");
            let body = json!({ "data": { "id-1": ticket } }).to_string();
            let receipts = classify_receipts(200, body.as_bytes()).unwrap();
            assert_eq!(class(&receipts[0].1), *expected, "receipt {ticket}");
        }
        let request = |code: &str| json!({"errors": [{"code": code, "message": "m"}]}).to_string();
        let rows = [
            (401, request("UNAUTHORIZED"), "AUTH"),
            (429, request("TOO_MANY_REQUESTS"), "RETRY"),
            (500, request("INTERNAL_SERVER_ERROR"), "RETRY"),
            (502, "<html>bad gateway</html>".to_string(), "RETRY"),
            (503, String::new(), "RETRY"),
            (400, request("PUSH_TOO_MANY_NOTIFICATIONS"), "PERM"),
            (400, request("PUSH_TOO_MANY_RECEIPTS"), "PERM"),
            (400, request("VALIDATION_ERROR"), "PERM"),
        ];
        for (status, body, expected) in &rows {
            let r = classify_response(*status, body.as_bytes(), None, 3);
            assert!(r.results.iter().all(|x| class(x) == *expected), "{status} {body}: {r:?}");
        }
    }

    proptest! {
        #[test]
        fn any_answer_gives_one_result_of_one_class_per_message(
            status in status(),
            body in body(),
            after in proptest::option::of(0u64..=MAX_RETRY_AFTER.as_secs()),
            n in 1usize..=MAX_BATCH,
        ) {
            let after = after.map(Duration::from_secs);
            let response = classify_response(status, &body, after, n);
            prop_assert_eq!(response.results.len(), n);
            for result in &response.results {
                assert_one_class(result, &response.health);
            }
        }

        #[test]
        fn a_split_divides_the_messages_into_smaller_parts_that_keep_every_one(
            tokens in prop::collection::vec("[a-d]", 0..40),
            projects in prop::collection::vec(prop::collection::vec("[a-e]", 0..6), 0..4),
        ) {
            let tokens: Vec<&str> = tokens.iter().map(String::as_str).collect();
            let parts = split(&tokens, &projects);
            // Every split makes progress, so resending ends after at most 2n - 1 requests.
            prop_assert!(parts.is_empty() == (tokens.len() < 2));
            prop_assert!(parts.iter().all(|p| !p.is_empty() && p.len() < tokens.len()));
            let mut places: Vec<usize> = parts.concat();
            places.sort_unstable();
            if !parts.is_empty() {
                prop_assert_eq!(places, (0..tokens.len()).collect::<Vec<_>>());
            }
        }

        #[test]
        fn tickets_map_to_their_documented_class(tickets in prop::collection::vec(ticket(), 1..30)) {
            let body = json!({ "data": tickets }).to_string();
            let response = classify_response(200, body.as_bytes(), None, tickets.len());
            prop_assert_eq!(response.results.len(), tickets.len());
            let any_auth = response.results.iter().any(|r| matches!(r, SendResult::Auth { .. }));
            prop_assert_eq!(matches!(response.health, Health::AuthFailure(_)), any_auth);
            for (ticket, result) in tickets.iter().zip(&response.results) {
                prop_assert_eq!(class(result), documented(ticket), "{}", ticket);
                if let Some(error) = result.error() {
                    prop_assert!(error.len() <= MAX_ERROR_BYTES);
                }
            }
        }

        #[test]
        fn any_receipts_answer_is_classified_or_refused_with_a_bounded_error(status in status(), body in body()) {
            match classify_receipts(status, &body) {
                Ok(receipts) => {
                    prop_assert_eq!(status, 200);
                    for (_, result) in &receipts {
                        prop_assert!(class(result) != "DEFERRED");
                        prop_assert!(result.error().is_none_or(|e| e.len() <= MAX_ERROR_BYTES));
                    }
                }
                Err(error) => prop_assert!(error.len() <= MAX_ERROR_BYTES, "{} bytes", error.len()),
            }
        }

        #[test]
        fn receipts_map_to_their_documented_class(receipts in prop::collection::btree_map(any::<String>(), ticket(), 0..20)) {
            let body = json!({ "data": receipts }).to_string();
            let classified: std::collections::HashMap<String, SendResult> =
                classify_receipts(200, body.as_bytes()).unwrap().into_iter().collect();
            prop_assert_eq!(classified.len(), receipts.len());
            for (id, receipt) in &receipts {
                prop_assert_eq!(class(&classified[id]), documented(receipt), "{}", receipt);
            }
        }
    }
}
