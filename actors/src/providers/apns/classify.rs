//! How APNs answered, as docs/providers.md's APNs table says: [`answer`] reads the status, headers
//! and body, and [`classify`] maps them to the message's result and the provider's health.

use crate::circuit::Health;
use crate::job::{bounded, SendResult};
use serde_json::Value;
use std::time::Duration;

/// What APNs answered to one request.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub status: u16,
    /// The body's `reason`, or else the start of the body.
    pub reason: String,
    /// The body's `timestamp` (410 only).
    pub timestamp: Option<i64>,
    /// The `apns-id` header.
    pub apns_id: Option<String>,
    pub retry_after: Option<Duration>,
}

/// Reads an APNs answer: status, `apns-id` and `Retry-After` headers, and the JSON body's
/// `reason` and `timestamp` (a body that is not that JSON gives its start as the reason).
pub fn answer(status: u16, headers: &http::HeaderMap, body: &[u8]) -> Answer {
    let apns_id = headers.get("apns-id").and_then(|v| v.to_str().ok()).map(str::to_string);
    let retry_after =
        headers.get("retry-after").and_then(|v| v.to_str().ok()).and_then(crate::providers::retry_after_value);
    let parsed: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let reason = match parsed.get("reason").and_then(Value::as_str) {
        Some(reason) => reason.to_string(),
        None => String::from_utf8_lossy(&body[..body.len().min(200)]).trim().to_string(),
    };
    let timestamp = parsed.get("timestamp").and_then(Value::as_i64);
    Answer { status, reason, timestamp, apns_id, retry_after }
}

/// Classifies one APNs answer (docs/providers.md): the message's result and what it says about the
/// provider's health. `ExpiredProviderToken` arrives here only when it could not be cured by
/// re-signing, and is AUTH like the other refused credentials.
pub fn classify(
    status: u16,
    reason: &str,
    timestamp: Option<i64>,
    apns_id: Option<String>,
    retry_after: Option<Duration>,
) -> (SendResult, Health) {
    let error = bounded(match timestamp {
        Some(ts) => format!("apns: HTTP {status} {reason} (timestamp {ts})"),
        None => format!("apns: HTTP {status} {reason}"),
    });
    let auth = |error: String| (SendResult::Auth { error: error.clone() }, Health::AuthFailure(error));
    let outage =
        |error: String| (SendResult::Retry { error: error.clone(), after: retry_after }, Health::Outage(error));
    let permanent = |error: String| (SendResult::Permanent { error }, Health::Up);
    match (status, reason) {
        (200, _) => (SendResult::Delivered { provider_message_id: apns_id }, Health::Up),
        (400, "BadDeviceToken" | "DeviceTokenNotForTopic") | (410, _) => {
            (SendResult::InvalidToken { error }, Health::Up)
        }
        (400, "TopicDisallowed") | (403, _) => auth(error),
        (400, "IdleTimeout") => outage(error),
        (429, "TooManyProviderTokenUpdates") => auth(error),
        // Too many notifications for this one device: only that device waits.
        (429, _) => (SendResult::Retry { error, after: retry_after }, Health::Up),
        (500..=599, _) => outage(error),
        (400..=499, _) => permanent(error),
        // Not an HTTP status APNs uses: something between us and APNs is misbehaving.
        _ => outage(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn answers_are_classified_as_providers_md_says() {
        let invalid = |r: &SendResult| matches!(r, SendResult::InvalidToken { .. });
        let permanent = |r: &SendResult| matches!(r, SendResult::Permanent { .. });
        let auth = |r: &SendResult| matches!(r, SendResult::Auth { .. });
        let retry = |r: &SendResult| matches!(r, SendResult::Retry { .. });
        let up = |h: &Health| *h == Health::Up;
        let auth_failure = |h: &Health| matches!(h, Health::AuthFailure(_));
        let outage = |h: &Health| matches!(h, Health::Outage(_));
        type Check = fn(&SendResult) -> bool;
        type HealthCheck = fn(&Health) -> bool;
        let rows: &[(u16, &str, Check, HealthCheck)] = &[
            (400, "BadDeviceToken", invalid, up),
            (400, "DeviceTokenNotForTopic", invalid, up),
            (410, "Unregistered", invalid, up),
            (410, "ExpiredToken", invalid, up),
            (400, "BadCollapseId", permanent, up),
            (400, "BadPriority", permanent, up),
            (400, "PayloadEmpty", permanent, up),
            (400, "MissingTopic", permanent, up),
            (404, "BadPath", permanent, up),
            (405, "MethodNotAllowed", permanent, up),
            (413, "PayloadTooLarge", permanent, up),
            (403, "ExpiredProviderToken", auth, auth_failure),
            (403, "InvalidProviderToken", auth, auth_failure),
            (403, "MissingProviderToken", auth, auth_failure),
            (403, "BadCertificate", auth, auth_failure),
            (403, "BadCertificateEnvironment", auth, auth_failure),
            (403, "Forbidden", auth, auth_failure),
            (400, "TopicDisallowed", auth, auth_failure),
            (429, "TooManyRequests", retry, up),
            (429, "TooManyProviderTokenUpdates", auth, auth_failure),
            (500, "InternalServerError", retry, outage),
            (503, "ServiceUnavailable", retry, outage),
            (503, "Shutdown", retry, outage),
            (400, "IdleTimeout", retry, outage),
        ];
        for (status, reason, result, health) in rows {
            let (r, h) = classify(*status, reason, None, None, None);
            assert!(result(&r), "{status} {reason}: {r:?}");
            assert!(health(&h), "{status} {reason}: {h:?}");
            assert_eq!(r.error(), Some(format!("apns: HTTP {status} {reason}").as_str()));
        }
        let (ok, health) = classify(200, "", None, Some("id-1".into()), None);
        assert_eq!(ok, SendResult::Delivered { provider_message_id: Some("id-1".into()) });
        assert_eq!(health, Health::Up);
    }

    #[test]
    fn the_410_timestamp_is_kept_and_retry_after_is_passed_on() {
        let (gone, _) = classify(410, "Unregistered", Some(1_700_000_000_000), None, None);
        assert_eq!(gone.error(), Some("apns: HTTP 410 Unregistered (timestamp 1700000000000)"));
        let (busy, _) = classify(503, "ServiceUnavailable", None, None, Some(Duration::from_secs(7)));
        assert!(matches!(busy, SendResult::Retry { after: Some(d), .. } if d == Duration::from_secs(7)));
    }

    #[test]
    fn a_long_reason_is_cut_to_a_bounded_error() {
        let body = json!({"reason": "r".repeat(60_000)}).to_string();
        let a = answer(400, &http::HeaderMap::new(), body.as_bytes());
        let (result, _) = classify(a.status, &a.reason, a.timestamp, a.apns_id, a.retry_after);
        assert!(result.error().is_some_and(|e| e.len() <= crate::providers::MAX_ERROR_BYTES), "{result:?}");
    }
}

#[cfg(test)]
mod proptests {
    use super::*;
    use crate::providers::check::{assert_one_class, body, class, headers, status};
    use http::header::{HeaderMap, HeaderName, HeaderValue};
    use proptest::prelude::*;
    use serde_json::json;

    const REASONS: &[&str] = &[
        "BadDeviceToken",
        "DeviceTokenNotForTopic",
        "Unregistered",
        "ExpiredToken",
        "BadCollapseId",
        "BadPriority",
        "PayloadEmpty",
        "PayloadTooLarge",
        "ExpiredProviderToken",
        "InvalidProviderToken",
        "MissingProviderToken",
        "BadCertificate",
        "BadCertificateEnvironment",
        "Forbidden",
        "TopicDisallowed",
        "TooManyRequests",
        "TooManyProviderTokenUpdates",
        "InternalServerError",
        "ServiceUnavailable",
        "Shutdown",
        "IdleTimeout",
    ];

    /// docs/providers.md's APNs table (ExpiredProviderToken as it arrives here: after re-signing).
    fn documented(status: u16, reason: &str) -> &'static str {
        match (status, reason) {
            (200, _) => "OK",
            (400, "BadDeviceToken" | "DeviceTokenNotForTopic") | (410, _) => "INVALID",
            (400, "TopicDisallowed") | (403, _) | (429, "TooManyProviderTokenUpdates") => "AUTH",
            (400, "IdleTimeout") | (429, _) | (500..=599, _) => "RETRY",
            (400..=499, _) => "PERM",
            _ => "RETRY",
        }
    }

    #[test]
    fn documented_answers_read_from_the_wire_map_to_their_class() {
        let rows: &[(u16, &str, &str)] = &[
            (400, r#"{"reason":"BadDeviceToken"}"#, "INVALID"),
            (400, r#"{"reason":"DeviceTokenNotForTopic"}"#, "INVALID"),
            (410, r#"{"reason":"Unregistered","timestamp":1700000000000}"#, "INVALID"),
            (410, r#"{"reason":"ExpiredToken"}"#, "INVALID"),
            (400, r#"{"reason":"BadCollapseId"}"#, "PERM"),
            (400, r#"{"reason":"PayloadEmpty"}"#, "PERM"),
            (404, r#"{"reason":"BadPath"}"#, "PERM"),
            (405, r#"{"reason":"MethodNotAllowed"}"#, "PERM"),
            (413, r#"{"reason":"PayloadTooLarge"}"#, "PERM"),
            (403, r#"{"reason":"ExpiredProviderToken"}"#, "AUTH"),
            (403, r#"{"reason":"InvalidProviderToken"}"#, "AUTH"),
            (403, r#"{"reason":"MissingProviderToken"}"#, "AUTH"),
            (403, r#"{"reason":"BadCertificate"}"#, "AUTH"),
            (403, r#"{"reason":"Forbidden"}"#, "AUTH"),
            (400, r#"{"reason":"TopicDisallowed"}"#, "AUTH"),
            (429, r#"{"reason":"TooManyRequests"}"#, "RETRY"),
            (429, r#"{"reason":"TooManyProviderTokenUpdates"}"#, "AUTH"),
            (500, r#"{"reason":"InternalServerError"}"#, "RETRY"),
            (503, r#"{"reason":"ServiceUnavailable"}"#, "RETRY"),
            (503, r#"{"reason":"Shutdown"}"#, "RETRY"),
            (400, r#"{"reason":"IdleTimeout"}"#, "RETRY"),
            (502, "<html>Bad Gateway</html>", "RETRY"),
            (200, "", "OK"),
        ];
        let mut headers = HeaderMap::new();
        headers.insert(
            HeaderName::from_static("apns-id"),
            HeaderValue::from_static("b2c3d4e5-0000-0000-0000-000000000001"),
        );
        headers.insert(HeaderName::from_static("retry-after"), HeaderValue::from_static("30"));
        for (status, body, expected) in rows {
            let a = answer(*status, &headers, body.as_bytes());
            let (result, health) = classify(a.status, &a.reason, a.timestamp, a.apns_id, a.retry_after);
            assert_one_class(&result, &health);
            assert_eq!(class(&result), *expected, "{status} {body}: {result:?}");
        }
        let a = answer(410, &headers, br#"{"reason":"Unregistered","timestamp":1700000000000}"#);
        assert_eq!((a.reason.as_str(), a.timestamp), ("Unregistered", Some(1_700_000_000_000)));
        assert_eq!(a.apns_id.as_deref(), Some("b2c3d4e5-0000-0000-0000-000000000001"));
        assert_eq!(a.retry_after, Some(Duration::from_secs(30)));
    }

    fn reason_body() -> impl Strategy<Value = Vec<u8>> {
        let reason = prop_oneof![prop::sample::select(REASONS).prop_map(str::to_string), any::<String>()];
        (reason, proptest::option::of(any::<i64>()))
            .prop_map(|(reason, ts)| json!({"reason": reason, "timestamp": ts}).to_string().into_bytes())
    }

    proptest! {
        #[test]
        fn any_answer_is_read_and_classified_as_one_class(
            status in status(),
            headers in headers(),
            body in prop_oneof![body(), reason_body()],
        ) {
            // The strategy makes awc's map (FCM reads those); APNs reads h2's `http::HeaderMap`.
            let headers: HeaderMap = headers.iter().map(|(n, v)| (n.clone(), v.clone())).collect();
            let a = answer(status, &headers, &body);
            prop_assert!(a.retry_after.is_none_or(|d| d <= crate::providers::MAX_RETRY_AFTER));
            let (result, health) = classify(a.status, &a.reason, a.timestamp, a.apns_id.clone(), a.retry_after);
            assert_one_class(&result, &health);
            prop_assert_eq!(class(&result), documented(status, &a.reason));
            if status == 200 {
                prop_assert_eq!(result, SendResult::Delivered { provider_message_id: a.apns_id });
            }
        }
    }
}
