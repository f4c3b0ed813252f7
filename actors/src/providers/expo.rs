//! Expo push service: `POST {base}/--/api/v2/push/send` with up to 100 messages, one ticket
//! back per message, in order.

use super::{bounded, ProviderClient, Response};
use crate::circuit::Health;
use crate::job::{Job, Priority, Provider, SendResult};
use crate::settings::ExpoSettings;
use futures_util::future::LocalBoxFuture;
use serde::Deserialize;
use serde_json::{json, Map, Value};
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
    http: awc::Client,
    send_url: String,
    receipts_url: String,
    access_token: Option<String>,
    flush_after: Duration,
}

impl ExpoClient {
    pub fn new(settings: &ExpoSettings) -> Self {
        let http = awc::Client::builder()
            .timeout(settings.timeout)
            .connector(awc::Connector::new().timeout(settings.timeout).limit(64))
            .finish();
        ExpoClient {
            http,
            send_url: format!("{}/--/api/v2/push/send", settings.base_url.trim_end_matches('/')),
            receipts_url: format!("{}/--/api/v2/push/getReceipts", settings.base_url.trim_end_matches('/')),
            access_token: settings.access_token.clone(),
            flush_after: settings.flush_after,
        }
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
        let mut oversize: Vec<Option<SendResult>> = Vec::with_capacity(jobs.len());
        let mut body = Vec::with_capacity(jobs.len() * 256);
        body.push(b'[');
        let mut n = 0;
        for job in jobs {
            let bytes = serde_json::to_vec(&message(job)).unwrap_or_default();
            if bytes.len() > MAX_PAYLOAD_BYTES {
                let error = format!("expo: payload too large: {} bytes (limit {MAX_PAYLOAD_BYTES})", bytes.len());
                oversize.push(Some(SendResult::Permanent { error }));
                continue;
            }
            oversize.push(None);
            if n > 0 {
                body.push(b',');
            }
            body.extend_from_slice(&bytes);
            n += 1;
        }
        body.push(b']');
        // Expo accepts gzip request bodies; 100 messages compress to a fraction of their size.
        let (body, gzipped) = match body.len() > GZIP_ABOVE_BYTES {
            true => gzip(&body).map(|z| (z, true)).unwrap_or((body, false)),
            false => (body, false),
        };
        if n == 0 {
            let results = oversize.into_iter().flatten().collect();
            return Box::pin(std::future::ready(Response { results, health: Health::Up }));
        }
        let mut req = self
            .http
            .post(&self.send_url)
            .insert_header(("content-type", "application/json"))
            .insert_header(("accept", "application/json"))
            .insert_header(("accept-encoding", "gzip"));
        if gzipped {
            req = req.insert_header(("content-encoding", "gzip"));
        }
        if let Some(token) = &self.access_token {
            req = req.bearer_auth(token);
        }
        Box::pin(async move {
            let sent = send_request(req, body, n).await;
            // Put the refused messages back in their places; Expo answered one result per message.
            let mut from_expo = sent.results.into_iter();
            let missing = || SendResult::Retry { error: "expo: no result for this message".into(), after: None };
            let results =
                oversize.into_iter().map(|o| o.unwrap_or_else(|| from_expo.next().unwrap_or_else(missing))).collect();
            Response { results, health: sent.health }
        })
    }
}

impl ExpoClient {
    /// `POST {base}/--/api/v2/push/getReceipts` for at most 1000 ids. Returns the receipts Expo
    /// has, classified like tickets; ids it does not know yet are absent.
    pub async fn receipts(&self, ids: &[&str]) -> Result<Vec<(String, SendResult)>, String> {
        let mut req = self.http.post(&self.receipts_url).insert_header(("accept", "application/json"));
        if let Some(token) = &self.access_token {
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
async fn send_request(req: awc::ClientRequest, body: Vec<u8>, n: usize) -> Response {
    let mut resp = match req.send_body(body).await {
        Ok(resp) => resp,
        Err(e) => return outage(n, format!("expo: request failed: {e}")),
    };
    let status = resp.status().as_u16();
    let retry_after = super::retry_after(resp.headers());
    let body = match resp.body().limit(MAX_RESPONSE_BYTES).await {
        Ok(body) => body,
        Err(e) => return outage(n, format!("expo: reading the response failed: {e}")),
    };
    classify_response(status, &body, retry_after, n)
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
}

fn outage(n: usize, error: String) -> Response {
    let error = bounded(error);
    Response::all(n, SendResult::Retry { error: error.clone(), after: None }, Health::Outage(error))
}

/// Classifies a whole response: one result per message sent, and the provider's health.
pub fn classify_response(status: u16, body: &[u8], retry_after: Option<Duration>, n: usize) -> Response {
    if status == 200 {
        let results: Vec<SendResult> = match serde_json::from_slice::<SendResponse>(body) {
            Ok(r) if r.data.len() == n => r.data.into_iter().map(classify_ticket).collect(),
            Ok(r) => return outage(n, format!("expo: {} tickets for {n} messages", r.data.len())),
            Err(e) => return outage(n, format!("expo: unreadable 200 response: {e}")),
        };
        // Credentials refused per ticket are still the project's problem, not the device's.
        let health = match results.iter().find(|r| matches!(r, SendResult::Auth { .. })) {
            Some(auth) => Health::AuthFailure(auth.error().unwrap_or_default().to_string()),
            None => Health::Up,
        };
        return Response { results, health };
    }
    let (code, message) = match serde_json::from_slice::<ErrorResponse>(body) {
        Ok(r) => r.errors.into_iter().next().map(|e| (e.code, e.message.unwrap_or_default())).unwrap_or_default(),
        Err(_) => (String::new(), String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned()),
    };
    let error = bounded(format!("expo: HTTP {status} {code}: {message}").replace(" : ", ": "));
    match (status, code.as_str()) {
        (401, _) | (_, "UNAUTHORIZED") => {
            Response::all(n, SendResult::Auth { error: error.clone() }, Health::AuthFailure(error))
        }
        (429, _) | (_, "TOO_MANY_REQUESTS") | (500..=599, _) => {
            Response::all(n, SendResult::Retry { error: error.clone(), after: retry_after }, Health::Outage(error))
        }
        // A request we built wrong fails its messages, but says nothing about Expo's health.
        _ => Response::all(n, SendResult::Permanent { error }, Health::Up),
    }
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
