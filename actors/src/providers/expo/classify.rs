//! How Expo answered, as docs/providers.md's Expo table says: pure functions from a send answer
//! (status, body, `Retry-After`) to one result per message and the provider's health, or to a
//! split of the request. Tickets and receipts share [`classify_ticket`].

use crate::circuit::Health;
use crate::job::SendResult;
use crate::providers::{bounded, Response};
use serde::Deserialize;
use serde_json::Value;
use std::time::Duration;

#[derive(Deserialize)]
struct SendResponse {
    data: Vec<Ticket>,
}

#[derive(Deserialize)]
pub(super) struct Ticket {
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

/// Every message of a request that got no usable answer: retried, and Expo counts as down.
pub(super) fn outage(n: usize, error: String) -> Response {
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
pub(super) fn classify_ticket(t: Ticket) -> SendResult {
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
pub(super) mod tests {
    use super::*;
    use crate::providers::expo::classify_receipts;
    use serde_json::json;

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
        assert!(receipts.to_string().len() <= crate::providers::MAX_ERROR_BYTES, "{receipts}");
    }

    pub(in crate::providers::expo) fn refusal(code: &str, details: Option<Value>) -> Vec<u8> {
        let mut error = json!({"code": code, "message": "m"});
        if let Some(details) = details {
            error["details"] = details;
        }
        json!({ "errors": [error] }).to_string().into_bytes()
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
    use crate::providers::expo::{classify_receipts, MAX_BATCH};
    use crate::providers::{MAX_ERROR_BYTES, MAX_RETRY_AFTER};
    use proptest::prelude::*;
    use serde_json::json;

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

    /// docs/providers.md's Expo table, for a ticket or a receipt.
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
                Err(error) => prop_assert!(error.to_string().len() <= MAX_ERROR_BYTES, "{} bytes", error.to_string().len()),
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
