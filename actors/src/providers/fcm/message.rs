//! The FCM v1 message for one job.

use crate::job::{Job, Priority};
use crate::providers::lifetime::Lifetime;
use serde::Serialize;
use serde_json::Value;
use std::borrow::Cow;
use std::collections::BTreeMap;

/// FCM's longest `android.ttl` (4 weeks, its default): it takes 0 to 2,419,200 seconds.
pub const MAX_TTL_SECS: u64 = 2_419_200;

/// The request body: `{"message": …}`.
#[derive(Debug, Serialize)]
pub struct Request<'a> {
    pub message: Message<'a>,
}

/// An FCM v1 `Message`, borrowing from its job: serialized straight into the request body,
/// with no JSON tree built first (one request per message makes this the hot path).
#[derive(Debug, Serialize)]
pub struct Message<'a> {
    token: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    notification: Option<Notification<'a>>,
    /// `map<string, string>`: string values as they are, others JSON-encoded.
    data: BTreeMap<&'a str, Cow<'a, str>>,
    android: Android<'a>,
    #[serde(skip_serializing_if = "Apns::is_empty")]
    apns: Apns<'a>,
}

#[derive(Debug, Serialize)]
struct Notification<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    title: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    body: Option<&'a str>,
}

#[derive(Debug, Serialize)]
struct Android<'a> {
    priority: &'static str,
    /// A protobuf Duration in JSON: whole seconds are enough, as the ttl is rounded down.
    #[serde(skip_serializing_if = "Option::is_none")]
    ttl: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    collapse_key: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    notification: Option<AndroidNotification<'a>>,
}

#[derive(Debug, Serialize)]
struct AndroidNotification<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    sound: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    channel_id: Option<&'a str>,
}

#[derive(Debug, Serialize)]
struct Apns<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    headers: Option<ApnsHeaders<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<ApnsPayload<'a>>,
}

impl Apns<'_> {
    fn is_empty(&self) -> bool {
        self.headers.is_none() && self.payload.is_none()
    }
}

/// `ApnsConfig.headers` is a map of strings.
#[derive(Debug, Serialize)]
struct ApnsHeaders<'a> {
    #[serde(rename = "apns-expiration", skip_serializing_if = "Option::is_none")]
    expiration: Option<String>,
    #[serde(rename = "apns-collapse-id", skip_serializing_if = "Option::is_none")]
    collapse_id: Option<&'a str>,
}

#[derive(Debug, Serialize)]
struct ApnsPayload<'a> {
    aps: Aps<'a>,
}

#[derive(Debug, Serialize)]
struct Aps<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    sound: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    badge: Option<u64>,
}

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
pub fn message(job: &Job, now_ms: u64) -> Message<'_> {
    let payload = job.payload.as_object();
    let get = |key: &str| payload.and_then(|p| p.get(key));
    let text = |key: &str| get(key).and_then(Value::as_str);

    let (title, body) = (text("title"), text("body"));
    let notification = (title.is_some() || body.is_some()).then_some(Notification { title, body });

    let mut data: BTreeMap<&str, Cow<str>> = BTreeMap::new();
    if let Some(Value::Object(d)) = get("data") {
        for (k, v) in d {
            let v = match v {
                Value::String(s) => Cow::Borrowed(s.as_str()),
                other => Cow::Owned(other.to_string()),
            };
            data.insert(k.as_str(), v);
        }
    }
    data.insert("notification_id", Cow::Owned(job.notification_id.to_string()));

    let own_ttl = get("ttl").and_then(Value::as_u64);
    let lifetime = Lifetime::of(job, now_ms);
    let ttl = match lifetime {
        Some(left) => Some(own_ttl.map_or(left.ttl_secs, |own| own.min(left.ttl_secs)).min(MAX_TTL_SECS)),
        None => own_ttl,
    };
    let sound = text("sound");
    let channel_id = text("channelId");
    let android = Android {
        priority: match job.priority {
            Priority::High => "HIGH",
            Priority::Normal => "NORMAL",
        },
        ttl: ttl.map(|ttl| format!("{ttl}s")),
        collapse_key: job.collapse_key.as_deref(),
        notification: (sound.is_some() || channel_id.is_some()).then_some(AndroidNotification { sound, channel_id }),
    };

    // Through FCM, APNs reads an absolute time: the payload's ttl counted from now, when
    // shorter than what is left of the notification.
    let expiration = lifetime.map(|left| {
        let own = own_ttl.map(|ttl| (now_ms / 1000).saturating_add(ttl));
        own.map_or(left.expires_secs, |own| own.min(left.expires_secs)).to_string()
    });
    let collapse_id = job.collapse_key.as_deref();
    let headers = (expiration.is_some() || collapse_id.is_some()).then_some(ApnsHeaders { expiration, collapse_id });
    let badge = get("badge").and_then(Value::as_u64);
    let payload = (sound.is_some() || badge.is_some()).then_some(ApnsPayload { aps: Aps { sound, badge } });

    Message { token: &job.token, notification, data, android, apns: Apns { headers, payload } }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::Provider;
    use serde_json::json;
    use uuid::Uuid;

    /// The message as FCM reads it.
    fn message(job: &Job, now_ms: u64) -> Value {
        serde_json::to_value(super::message(job, now_ms)).expect("a message serializes")
    }

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
