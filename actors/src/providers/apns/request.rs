//! One APNs request from one job: the URL, the `apns-*` headers and the JSON body, or the
//! result of a job refused before any round trip.

use crate::job::{Job, Priority, SendResult};
use crate::providers::lifetime::Lifetime;
use serde_json::{Map, Value};

/// Apple's limit for the JSON body of a regular notification.
pub const MAX_PAYLOAD_BYTES: usize = 4096;
/// Apple's limit for `apns-collapse-id`.
pub const MAX_COLLAPSE_ID_BYTES: usize = 64;

/// One prepared APNs request.
#[derive(Debug)]
pub struct Request {
    pub url: String,
    pub apns_id: String,
    pub push_type: &'static str,
    pub priority: &'static str,
    pub expiration: Option<u64>,
    pub collapse_id: Option<String>,
    /// Shared, not copied, when the request is sent again (a re-signed token).
    pub body: bytes::Bytes,
}

impl Request {
    /// The request for one job at `now_ms` (ms since the epoch, on the client's clock), or the
    /// result of a job refused without a round trip (a token that is not hex, a collapse id over
    /// 64 bytes, a body over 4096 bytes).
    ///
    /// `apns-expiration` is the job's `expires_at` in Unix seconds (rounded down, so never after
    /// it), or the payload's own expiry when that is sooner; a job that does not expire keeps the
    /// payload's (see [`expiration`]). `apns-collapse-id` is the job's `collapse_key`, else the
    /// payload's `collapse_id`.
    pub fn build(job: &Job, base_url: &str, now_ms: u64) -> Result<Request, SendResult> {
        if job.token.is_empty() || !job.token.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(SendResult::InvalidToken {
                error: "apns: BadDeviceToken: the token is not hexadecimal".into(),
            });
        }
        let empty = Map::new();
        let payload = job.payload.as_object().unwrap_or(&empty);
        let collapse_id =
            job.collapse_key.clone().or_else(|| payload.get("collapse_id").and_then(Value::as_str).map(str::to_string));
        if let Some(id) = &collapse_id {
            // Fan-out refuses these already; an entry written by an older version still must
            // not reach the HTTP/2 client, which would fail the request as if APNs were down.
            if id.chars().any(char::is_control) {
                let error = "apns: collapse_id holds a control character (not allowed in a header)".to_string();
                return Err(SendResult::Permanent { error });
            }
            if id.len() > MAX_COLLAPSE_ID_BYTES {
                let error = format!("apns: collapse_id too long: {} bytes (limit {MAX_COLLAPSE_ID_BYTES})", id.len());
                return Err(SendResult::Permanent { error });
            }
        }
        let alert = ["title", "body"].iter().any(|k| payload.get(*k).is_some_and(|v| !v.is_null()));
        let (push_type, priority) = match (alert, job.priority) {
            (true, Priority::High) => ("alert", "10"),
            (true, Priority::Normal) => ("alert", "5"),
            // Apple refuses priority 10 for background notifications.
            (false, _) => ("background", "5"),
        };
        let body = serde_json::to_vec(&body(job, payload, alert)).unwrap_or_default();
        if body.len() > MAX_PAYLOAD_BYTES {
            let error = format!("apns: payload too large: {} bytes (limit {MAX_PAYLOAD_BYTES})", body.len());
            return Err(SendResult::Permanent { error });
        }
        Ok(Request {
            url: format!("{base_url}/3/device/{}", job.token.to_ascii_lowercase()),
            apns_id: uuid::Uuid::new_v4().to_string(),
            push_type,
            priority,
            expiration: match (Lifetime::of(job, now_ms), expiration(payload, now_ms)) {
                (Some(left), Some(own)) => Some(own.min(left.expires_secs)),
                (Some(left), None) => Some(left.expires_secs),
                (None, own) => own,
            },
            collapse_id,
            body: body.into(),
        })
    }
}

/// `apns-expiration`: `ttl` seconds from now (0 = deliver now or never), else the payload's
/// absolute `expiration` (UNIX seconds), else none (APNs stores it for a while).
fn expiration(payload: &Map<String, Value>, now_ms: u64) -> Option<u64> {
    if let Some(ttl) = payload.get("ttl").and_then(Value::as_u64) {
        if ttl == 0 {
            return Some(0);
        }
        return Some((now_ms / 1000).saturating_add(ttl));
    }
    payload.get("expiration").and_then(Value::as_u64)
}

/// The JSON body: `aps` from the payload's title, body, subtitle, sound, badge, categoryId and
/// mutableContent (`content-available` when there is nothing to show), the keys of
/// `payload.data` at the top level, and `notification_id`.
pub fn body(job: &Job, payload: &Map<String, Value>, alert: bool) -> Value {
    let get = |key: &str| payload.get(key).filter(|v| !v.is_null());
    let mut aps = Map::new();
    if alert {
        let mut text = Map::new();
        for key in ["title", "body", "subtitle"] {
            if let Some(v) = get(key) {
                text.insert(key.into(), v.clone());
            }
        }
        aps.insert("alert".into(), Value::Object(text));
    } else {
        aps.insert("content-available".into(), Value::from(1));
    }
    for (from, to) in [("sound", "sound"), ("badge", "badge"), ("categoryId", "category")] {
        if let Some(v) = get(from) {
            aps.insert(to.into(), v.clone());
        }
    }
    if get("mutableContent").is_some_and(|v| v == &Value::Bool(true) || v == &Value::from(1)) {
        aps.insert("mutable-content".into(), Value::from(1));
    }
    let mut body = Map::new();
    if let Some(Value::Object(data)) = get("data") {
        // `aps` is Apple's; an app key of that name must not replace it.
        body.extend(data.iter().filter(|(k, _)| k.as_str() != "aps").map(|(k, v)| (k.clone(), v.clone())));
    }
    body.insert("aps".into(), Value::Object(aps));
    body.insert("notification_id".into(), Value::String(job.notification_id.to_string()));
    Value::Object(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::Provider;
    use serde_json::json;
    use uuid::Uuid;

    /// The client's clock when the requests are built.
    const NOW: u64 = 1_700_000_000_000;

    fn job(payload: Value, priority: Priority) -> Job {
        crate::providers::check::job(Provider::Apns, &"AB".repeat(32), payload, priority)
    }

    #[test]
    fn the_body_puts_the_alert_in_aps_and_the_data_at_the_top_level() {
        let j = job(
            json!({"title": "T", "body": "B", "subtitle": "S", "sound": "default", "badge": 3,
                   "mutableContent": true, "data": {"order": 7, "aps": "not mine"}, "x": 1}),
            Priority::High,
        );
        let request = Request::build(&j, "https://apns", NOW).expect("request");
        assert_eq!((request.push_type, request.priority), ("alert", "10"));
        assert_eq!(request.url, format!("https://apns/3/device/{}", "ab".repeat(32)));
        let body: Value = serde_json::from_slice(&request.body).expect("json");
        assert_eq!(
            body,
            json!({"aps": {"alert": {"title": "T", "body": "B", "subtitle": "S"}, "sound": "default", "badge": 3,
                           "mutable-content": 1},
                   "order": 7, "notification_id": Uuid::nil().to_string()})
        );
    }

    #[test]
    fn a_payload_without_title_or_body_is_a_background_push_at_priority_5() {
        let request = Request::build(&job(json!({"data": {"sync": true}}), Priority::High), "b", NOW).expect("request");
        assert_eq!((request.push_type, request.priority), ("background", "5"));
        let body: Value = serde_json::from_slice(&request.body).expect("json");
        assert_eq!(body["aps"], json!({"content-available": 1}));
        assert_eq!(body["sync"], json!(true));
        let normal = Request::build(&job(json!({"title": "T"}), Priority::Normal), "b", NOW).expect("request");
        assert_eq!((normal.push_type, normal.priority), ("alert", "5"));
    }

    #[test]
    fn ttl_becomes_an_absolute_expiration_and_collapse_id_a_header() {
        let request =
            Request::build(&job(json!({"title": "T", "ttl": 60, "collapse_id": "score"}), Priority::Normal), "b", NOW)
                .expect("request");
        assert_eq!(request.expiration, Some(1_700_000_060), "60 s from the clock's now");
        assert_eq!(request.collapse_id.as_deref(), Some("score"));
        let once = Request::build(&job(json!({"title": "T", "ttl": 0}), Priority::Normal), "b", NOW).expect("request");
        assert_eq!(once.expiration, Some(0));
        let none = Request::build(&job(json!({"title": "T"}), Priority::Normal), "b", NOW).expect("request");
        assert_eq!(none.expiration, None);
        // A ttl near u64::MAX saturates instead of overflowing (a panic in a debug build).
        let huge = Request::build(&job(json!({"title": "T", "ttl": u64::MAX}), Priority::Normal), "b", NOW);
        assert_eq!(huge.expect("request").expiration, Some(u64::MAX));
    }

    #[test]
    fn an_expiring_job_expires_at_its_expires_at_second_and_its_collapse_key_wins() {
        let mut j = job(json!({"title": "T", "collapse_id": "payload's"}), Priority::Normal);
        j.expires_ms = Some(NOW + 3_600_900);
        j.collapse_key = Some("score".into());
        let request = Request::build(&j, "b", NOW).expect("request");
        assert_eq!(request.expiration, Some(1_700_003_600), "rounded down: never after expires_at");
        assert_eq!(request.collapse_id.as_deref(), Some("score"));
        // A payload ttl that ends sooner stays; one that ends later is cut to expires_at.
        j.payload = json!({"title": "T", "ttl": 60}).into();
        assert_eq!(Request::build(&j, "b", NOW).expect("request").expiration, Some(1_700_000_060));
        j.payload = json!({"title": "T", "ttl": 86_400}).into();
        assert_eq!(Request::build(&j, "b", NOW).expect("request").expiration, Some(1_700_003_600));
        // Under a second left: the second it expires in, which APNs tries once and does not store.
        j.expires_ms = Some(NOW + 400);
        assert_eq!(Request::build(&j, "b", NOW).expect("request").expiration, Some(1_700_000_000));
        // The job's key is checked as the payload's is.
        j.collapse_key = Some("k".repeat(65));
        assert!(matches!(Request::build(&j, "b", NOW), Err(SendResult::Permanent { .. })));
    }

    #[test]
    fn oversized_bodies_long_collapse_ids_and_non_hex_tokens_are_refused_before_sending() {
        let big = Request::build(&job(json!({"body": "x".repeat(4100)}), Priority::Normal), "b", NOW).unwrap_err();
        let error = big.error().unwrap_or_default().to_string();
        assert!(matches!(big, SendResult::Permanent { .. }), "{big:?}");
        assert!(error.starts_with("apns: payload too large: ") && error.ends_with(" bytes (limit 4096)"), "{error}");
        let long =
            Request::build(&job(json!({"title": "T", "collapse_id": "c".repeat(65)}), Priority::Normal), "b", NOW);
        assert_eq!(
            long.unwrap_err(),
            SendResult::Permanent { error: "apns: collapse_id too long: 65 bytes (limit 64)".into() }
        );
        let newline =
            Request::build(&job(json!({"title": "T", "collapse_id": "order\n42"}), Priority::Normal), "b", NOW);
        assert_eq!(
            newline.unwrap_err(),
            SendResult::Permanent {
                error: "apns: collapse_id holds a control character (not allowed in a header)".into()
            }
        );
        let mut bad = job(json!({"title": "T"}), Priority::Normal);
        bad.token = "ExponentPushToken[x]".into();
        assert!(matches!(Request::build(&bad, "b", NOW).unwrap_err(), SendResult::InvalidToken { .. }));
    }
}
