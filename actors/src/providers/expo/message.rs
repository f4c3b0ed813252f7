//! The Expo message for one job.

use crate::job::{Job, Priority};
use serde_json::{json, Map, Value};

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::Provider;
    use uuid::Uuid;

    fn job(payload: Value) -> Job {
        crate::providers::check::job(Provider::Expo, "ExponentPushToken[x]", payload, Priority::High)
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
}
