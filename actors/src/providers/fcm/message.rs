//! The FCM v1 message for one job.

use crate::job::{Job, Priority};
use crate::providers::lifetime::Lifetime;
use serde_json::{json, Map, Value};

/// FCM's longest `android.ttl` (4 weeks, its default): it takes 0 to 2,419,200 seconds.
pub const MAX_TTL_SECS: u64 = 2_419_200;

/// The FCM v1 message for one job: `notification` from title/body, `data` with string values
/// only (others are JSON-encoded) plus `notification_id`, android priority and ttl, and the
/// APNs sound/badge when given.
///
/// A job that expires carries what is left of its life at `now_ms`: `android.ttl` in whole
/// seconds left (at most [`MAX_TTL_SECS`]) and, for the iOS devices FCM reaches through APNs,
/// `apns.headers["apns-expiration"]` (its `expires_at` in Unix seconds), each no longer than the
/// payload's own `ttl` when it gives one. Its `collapse_key` goes as `android.collapse_key` and
/// `apns.headers["apns-collapse-id"]`. Without an expiry, the payload's `ttl` is sent as before
/// (Android only) and FCM's defaults apply.
pub fn message(job: &Job, now_ms: u64) -> Value {
    let empty = Map::new();
    let payload = job.payload.as_object().unwrap_or(&empty);
    let text = |key: &str| payload.get(key).and_then(Value::as_str).map(str::to_string);
    let mut msg = Map::new();
    msg.insert("token".into(), json!(job.token));
    let mut notification = Map::new();
    for key in ["title", "body"] {
        if let Some(v) = text(key) {
            notification.insert(key.into(), json!(v));
        }
    }
    if !notification.is_empty() {
        msg.insert("notification".into(), Value::Object(notification));
    }
    let mut data = Map::new();
    if let Some(Value::Object(d)) = payload.get("data") {
        for (k, v) in d {
            let v = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            data.insert(k.clone(), Value::String(v));
        }
    }
    data.insert("notification_id".into(), Value::String(job.notification_id.to_string()));
    msg.insert("data".into(), Value::Object(data));

    let mut android = Map::new();
    let priority = match job.priority {
        Priority::High => "HIGH",
        Priority::Normal => "NORMAL",
    };
    android.insert("priority".into(), json!(priority));
    let own_ttl = payload.get("ttl").and_then(Value::as_u64);
    let lifetime = Lifetime::of(job, now_ms);
    let ttl = match lifetime {
        Some(left) => Some(own_ttl.map_or(left.ttl_secs, |own| own.min(left.ttl_secs)).min(MAX_TTL_SECS)),
        None => own_ttl,
    };
    if let Some(ttl) = ttl {
        // A protobuf Duration in JSON: whole seconds are enough, as the ttl is rounded down.
        android.insert("ttl".into(), json!(format!("{ttl}s")));
    }
    if let Some(key) = &job.collapse_key {
        android.insert("collapse_key".into(), json!(key));
    }
    let mut android_notification = Map::new();
    if let Some(sound) = text("sound") {
        android_notification.insert("sound".into(), json!(sound));
    }
    if let Some(channel) = text("channelId") {
        android_notification.insert("channel_id".into(), json!(channel));
    }
    if !android_notification.is_empty() {
        android.insert("notification".into(), Value::Object(android_notification));
    }
    msg.insert("android".into(), Value::Object(android));

    let mut aps = Map::new();
    if let Some(sound) = text("sound") {
        aps.insert("sound".into(), json!(sound));
    }
    if let Some(badge) = payload.get("badge").and_then(Value::as_u64) {
        aps.insert("badge".into(), json!(badge));
    }
    let mut headers = Map::new();
    if let Some(left) = lifetime {
        // Through FCM, APNs reads an absolute time: the payload's ttl counted from now, when
        // shorter than what is left of the notification.
        let own = own_ttl.map(|ttl| (now_ms / 1000).saturating_add(ttl));
        let expiration = own.map_or(left.expires_secs, |own| own.min(left.expires_secs));
        // `ApnsConfig.headers` is a map of strings.
        headers.insert("apns-expiration".into(), json!(expiration.to_string()));
    }
    if let Some(key) = &job.collapse_key {
        headers.insert("apns-collapse-id".into(), json!(key));
    }
    let mut apns = Map::new();
    if !headers.is_empty() {
        apns.insert("headers".into(), Value::Object(headers));
    }
    if !aps.is_empty() {
        apns.insert("payload".into(), json!({ "aps": aps }));
    }
    if !apns.is_empty() {
        msg.insert("apns".into(), Value::Object(apns));
    }
    Value::Object(msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::Provider;
    use uuid::Uuid;

    fn job(payload: Value, priority: Priority) -> Job {
        crate::providers::check::job(Provider::Fcm, "fcm-token", payload, priority)
    }

    #[test]
    fn the_message_has_string_data_priority_and_ttl() {
        let m = message(
            &job(
                json!({"title": "T", "body": "B", "data": {"order": 7, "tag": "x", "nested": {"a": 1}}, "ttl": 60,
                       "sound": "default", "badge": 3}),
                Priority::High,
            ),
            0,
        );
        assert_eq!(
            m,
            json!({
                "token": "fcm-token",
                "notification": {"title": "T", "body": "B"},
                "data": {"order": "7", "tag": "x", "nested": "{\"a\":1}", "notification_id": Uuid::nil().to_string()},
                "android": {"priority": "HIGH", "ttl": "60s", "notification": {"sound": "default"}},
                "apns": {"payload": {"aps": {"sound": "default", "badge": 3}}}
            })
        );
        let quiet = message(&job(json!({"data": {"k": "v"}}), Priority::Normal), 0);
        assert_eq!(quiet["android"], json!({"priority": "NORMAL"}));
        assert!(quiet.get("notification").is_none() && quiet.get("apns").is_none());
    }

    #[test]
    fn an_expiring_job_carries_its_ttl_and_expiry_to_android_and_apns_with_its_collapse_key() {
        let now = 1_700_000_000_000;
        let mut j = job(json!({"title": "T", "badge": 1}), Priority::High);
        j.expires_ms = Some(now + 3_600_900);
        j.collapse_key = Some("score".into());
        let m = message(&j, now);
        assert_eq!(m["android"], json!({"priority": "HIGH", "ttl": "3600s", "collapse_key": "score"}));
        assert_eq!(
            m["apns"],
            json!({"headers": {"apns-expiration": "1700003600", "apns-collapse-id": "score"},
                   "payload": {"aps": {"badge": 1}}})
        );
        // The payload's shorter ttl stays, on both sides.
        j.payload = json!({"title": "T", "ttl": 60}).into();
        let m = message(&j, now);
        assert_eq!(
            (&m["android"]["ttl"], &m["apns"]["headers"]["apns-expiration"]),
            (&json!("60s"), &json!("1700000060"))
        );
        // Less than a second left: ttl 0 (deliver now or drop) and the second it expires in.
        j.payload = json!({"title": "T"}).into();
        j.expires_ms = Some(now + 400);
        let m = message(&j, now);
        assert_eq!(
            (&m["android"]["ttl"], &m["apns"]["headers"]["apns-expiration"]),
            (&json!("0s"), &json!("1700000000"))
        );
        // A year left: FCM keeps messages 4 weeks at most.
        j.expires_ms = Some(now + 365 * 86_400_000);
        assert_eq!(message(&j, now)["android"]["ttl"], json!("2419200s"));
    }
}
