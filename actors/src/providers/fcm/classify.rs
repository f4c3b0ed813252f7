//! How FCM answered, as docs/providers.md's FCM table says: a pure function from a send answer
//! (status, body, `Retry-After`, the attempt) to a result and the provider's health, or to
//! "get a new access token and try once more".

use crate::circuit::Health;
use crate::job::{bounded, SendResult};
use serde::Deserialize;
use serde_json::Value;
use std::time::Duration;

/// How one FCM answer is classified (docs/providers.md), before the token-refresh rule is applied.
#[derive(Debug, Clone, PartialEq)]
pub enum Classified {
    Result(SendResult, Health),
    /// 401 without an FcmError: the access token was refused; get a new one and retry once.
    RefreshToken,
}

impl Classified {
    pub(super) fn into_result(self) -> (SendResult, Health) {
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
    use serde_json::json;

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
    fn a_long_error_message_is_cut_to_a_bounded_error() {
        let body = json!({"error": {"status": "INTERNAL", "message": "m".repeat(70_000)}}).to_string();
        let (r, h) = result(classify(500, body.as_bytes(), None, 0));
        assert!(r.error().is_some_and(|e| e.len() <= crate::providers::MAX_ERROR_BYTES), "{r:?}");
        assert!(matches!(h, Health::Outage(e) if e.len() <= crate::providers::MAX_ERROR_BYTES));
    }
}

#[cfg(test)]
mod proptests {
    use super::*;
    use crate::providers::check::{assert_one_class, body, class, status};
    use crate::providers::fcm::{token_answer, TokenError};
    use crate::providers::MAX_RETRY_AFTER;
    use proptest::prelude::*;
    use serde_json::json;

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
    }
}
