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
//!
//! Files: `classify` reads Expo's answers (docs/providers.md, Expo table) and nothing else,
//! `message` builds one message, `receipts` fetches and reads getReceipts; this file sends.

mod classify;
mod message;
mod receipts;

pub use classify::{answer, classify_response, Answer};
pub use message::message;
pub use receipts::{classify_receipts, ReceiptsError};

use super::{ProviderClient, ProviderProfile, Response};
use crate::circuit::Health;
use crate::job::{Job, Provider, SendResult};
use crate::ratelimit::Limits;
use crate::secret::Secret;
use crate::settings::rules::{http_url, millis, within_ms, SettingsError, DAY_MS};
use classify::outage;
use futures_util::future::join_all;
use futures_util::future::LocalBoxFuture;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

/// `[providers.expo]`. The access token is a [`Secret`]: `Debug` shows only whether there is one.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ExpoSettings {
    pub enabled: bool,
    /// e.g. `https://exp.host` (or an emulator); the send path is appended.
    pub base_url: String,
    /// Only for projects with Expo's "enhanced push security".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_token: Option<Secret>,
    /// Request timeout (`timeout_ms`).
    #[serde(rename = "timeout_ms", with = "millis")]
    pub timeout: Duration,
    /// How long a sender waits to fill a 100-message request before sending what it has.
    #[serde(rename = "flush_after_ms", with = "millis")]
    pub flush_after: Duration,
    /// How long after a ticket its receipt is fetched (Expo: ~15 minutes).
    #[serde(rename = "receipt_delay_ms", with = "millis")]
    pub receipt_delay: Duration,
    /// How often the receipt poller looks for due receipts.
    #[serde(rename = "receipt_poll_ms", with = "millis")]
    pub receipt_poll: Duration,
    /// Sends per second for the whole project, shared by every worker (0 = unlimited).
    pub rate_per_sec: u32,
    /// Sends per second to one device (0 = unlimited).
    pub device_rate_per_sec: u32,
}

impl ExpoSettings {
    pub fn validate(&self) -> Result<(), SettingsError> {
        http_url("providers.expo.base_url", &self.base_url)?;
        super::timeout("providers.expo.timeout_ms", self.timeout)?;
        within_ms("providers.expo.flush_after_ms", self.flush_after, 0..=60_000)?;
        if self.receipt_poll < Duration::from_millis(50) {
            return Err(SettingsError::new("providers.expo.receipt_poll_ms", "must be at least 50"));
        }
        if self.receipt_delay >= Duration::from_millis(DAY_MS) {
            return Err(SettingsError::new(
                "providers.expo.receipt_delay_ms",
                "must be under 24 h (Expo keeps receipts a day)",
            ));
        }
        Ok(())
    }

    /// The shared rate limits.
    pub fn limits(&self) -> Limits {
        Limits { per_sec: self.rate_per_sec, device_per_sec: self.device_rate_per_sec }
    }
}

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
    profile: ProviderProfile,
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
            access_token: settings.access_token.as_ref().map(|t| t.expose().to_string()),
            timeout: settings.timeout,
        };
        ExpoClient {
            poster,
            receipts_url: format!("{}/--/api/v2/push/getReceipts", settings.base_url.trim_end_matches('/')),
            profile: ProviderProfile {
                provider: Provider::Expo,
                max_batch: MAX_BATCH,
                flush_after: settings.flush_after,
            },
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
    fn profile(&self) -> ProviderProfile {
        self.profile
    }

    fn send(&self, jobs: &[Job]) -> LocalBoxFuture<'static, Response> {
        // Each message is serialized once: to check Expo's size limit before sending (a
        // too-big message fails here with its size, without a round trip), then for the body.
        let mut results: Vec<Option<SendResult>> = Vec::with_capacity(jobs.len());
        let mut outgoing = Vec::with_capacity(jobs.len());
        // The client has no clock of its own: the lifetime left is read from the system's.
        let now_ms = crate::job::now_ms();
        for (place, job) in jobs.iter().enumerate() {
            let json = serde_json::to_vec(&message(job, now_ms)).unwrap_or_default();
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

#[cfg(test)]
mod tests {
    use super::classify::tests::refusal;
    use super::*;
    use serde_json::json;

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
    fn a_batch_sent_as_several_requests_is_an_outage_only_when_every_final_request_was_one() {
        let out = || Health::Outage("503".into());
        assert!(matches!(overall(vec![out(), out()]), Health::Outage(_)));
        assert_eq!(overall(vec![out(), Health::Up]), Health::Up);
        assert!(matches!(overall(vec![Health::Up, Health::AuthFailure("401".into()), out()]), Health::AuthFailure(_)));
        assert_eq!(overall(Vec::new()), Health::Up);
    }
}

#[cfg(test)]
mod proptests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
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
    }
}
