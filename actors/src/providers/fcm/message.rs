//! The FCM v1 message for one job.

use crate::job::{Job, Priority};
use serde_json::{json, Map, Value};

/// The FCM v1 message for one job: `notification` from title/body, `data` with string values
/// only (others are JSON-encoded) plus `notification_id`, android priority and ttl, and the
/// APNs sound/badge when given.
pub fn message(job: &Job) -> Value {
    let payload = job.payload.as_object().cloned().unwrap_or_default();
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
    if let Some(ttl) = payload.get("ttl").and_then(Value::as_u64) {
        android.insert("ttl".into(), json!(format!("{ttl}s")));
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
    if !aps.is_empty() {
        msg.insert("apns".into(), json!({ "payload": { "aps": aps } }));
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
        let m = message(&job(
            json!({"title": "T", "body": "B", "data": {"order": 7, "tag": "x", "nested": {"a": 1}}, "ttl": 60,
                   "sound": "default", "badge": 3}),
            Priority::High,
        ));
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
        let quiet = message(&job(json!({"data": {"k": "v"}}), Priority::Normal));
        assert_eq!(quiet["android"], json!({"priority": "NORMAL"}));
        assert!(quiet.get("notification").is_none() && quiet.get("apns").is_none());
    }
}
