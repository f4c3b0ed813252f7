//! The Expo message for one job.

use crate::job::{Job, Priority};
use crate::providers::lifetime::Lifetime;
use serde_json::{json, Map, Value};

/// The Expo message for one job (DESIGN §8): title, body, and `data` merged with the
/// notification id so the app can de-duplicate and link to the pull API.
///
/// A job that expires carries what is left of its life at `now_ms`: `ttl` (whole seconds left)
/// and `expiration` (its `expires_at` in Unix seconds), each no later than the payload's own
/// when it gives one. Expo documents `ttl` as taking precedence; both are sent so that either
/// reading stops at `expires_at`. Its `collapse_key` is not sent: Expo's push API, as
/// docs/providers.md documents it, has no collapse field, and an unknown field risks the message.
pub fn message(job: &Job, now_ms: u64) -> Value {
    let empty = Map::new();
    let payload = job.payload.as_object().unwrap_or(&empty);
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
    if let Some(left) = Lifetime::of(job, now_ms) {
        // A payload's own ttl or expiration may be shorter; never one that outlives the row.
        let ttl = payload.get("ttl").and_then(Value::as_u64).map_or(left.ttl_secs, |own| own.min(left.ttl_secs));
        let expiration = payload
            .get("expiration")
            .and_then(Value::as_u64)
            .map_or(left.expires_secs, |own| own.min(left.expires_secs));
        msg.insert("ttl".into(), json!(ttl));
        msg.insert("expiration".into(), json!(expiration));
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
        let m = message(&job(json!({"title": "T", "body": "B", "data": {"order": 7}, "sound": "default", "x": 1})), 0);
        assert_eq!(
            m,
            json!({"to": "ExponentPushToken[x]", "title": "T", "body": "B", "sound": "default",
                   "data": {"order": 7, "notification_id": Uuid::nil().to_string()}, "priority": "high"})
        );
    }

    #[test]
    fn an_expiring_job_carries_the_seconds_left_and_its_expiry_but_no_collapse_key() {
        let now = 1_700_000_000_000;
        let mut j = job(json!({"title": "T"}));
        j.expires_ms = Some(now + 3_600_900);
        j.collapse_key = Some("score".into());
        let m = message(&j, now);
        assert_eq!((&m["ttl"], &m["expiration"]), (&json!(3600), &json!(1_700_003_600)));
        assert!(m.get("collapseId").is_none(), "Expo has no collapse field: {m}");
        // A shorter ttl or expiration of the payload's own stays; a longer one is cut to what is left.
        j.payload = json!({"title": "T", "ttl": 60, "expiration": 1_800_000_000}).into();
        let m = message(&j, now);
        assert_eq!((&m["ttl"], &m["expiration"]), (&json!(60), &json!(1_700_003_600)));
        // Without an expiry: the payload's fields as they are.
        let plain = message(&job(json!({"title": "T", "ttl": 30})), now);
        assert_eq!(plain["ttl"], json!(30));
        assert!(plain.get("expiration").is_none() && plain.get("collapseId").is_none(), "{plain}");
    }
}
