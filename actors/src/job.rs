//! A `Job` is one delivery target — one (notification, device) pair — as it travels through the
//! relay: written to a Redis stream by the listener, read by a stream reader, sent by a sender,
//! and turned into an [`Outcome`] that the outcome writer stores.
//!
//! A job carries everything a sender needs (token, payload, trace id), so the hot path never
//! goes back to Postgres to send.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

/// A push provider (or email) that a device is registered with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    Expo,
    Fcm,
    Apns,
    Email,
}

impl Provider {
    pub const ALL: [Provider; 4] = [Provider::Expo, Provider::Fcm, Provider::Apns, Provider::Email];

    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Expo => "expo",
            Provider::Fcm => "fcm",
            Provider::Apns => "apns",
            Provider::Email => "email",
        }
    }
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A text that names none of the values of [`Provider`] or [`Priority`] (a column or a field
/// written by someone else); the message names what is expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnknownName {
    #[error("unknown provider `{0}` (expected one of expo, fcm, apns, email)")]
    Provider(String),
    #[error("must be 'normal' or 'high', got '{0}'")]
    Priority(String),
}

impl FromStr for Provider {
    type Err = UnknownName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Provider::ALL.into_iter().find(|p| p.as_str() == s).ok_or_else(|| UnknownName::Provider(s.to_string()))
    }
}

/// Longest topic name, in bytes.
pub const MAX_TOPIC_BYTES: usize = 256;

/// Longest `collapse_key`, in bytes: APNs refuses an `apns-collapse-id` over 64 bytes.
pub const MAX_COLLAPSE_KEY_BYTES: usize = 64;

/// A topic name that is not one: empty, too long, only dots, or with a character outside
/// letters, digits and `_ . ~ : -`. Names travel in URL paths and log lines: these characters
/// are never percent-encoded, so the name a client writes in a URL is the name stored (a `%`
/// would be read as the start of an escape: `%3F` is `?`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("topic: must be 1 to {MAX_TOPIC_BYTES} bytes of letters, digits and _ . ~ : -, not only dots, got {0:?}")]
pub struct BadTopic(pub String);

/// Checks a topic name (see [`BadTopic`]).
pub fn check_topic(name: &str) -> Result<(), BadTopic> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || "_.~:-".contains(c);
    // `.` and `..` are path segments every HTTP client resolves away: no route could name them.
    let dots_only = name.chars().all(|c| c == '.');
    if name.is_empty() || name.len() > MAX_TOPIC_BYTES || dots_only || !name.chars().all(allowed) {
        let shown: String = name.chars().take(64).collect();
        return Err(BadTopic(shown));
    }
    Ok(())
}

/// `notification.priority`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    #[default]
    Normal,
    High,
}

impl FromStr for Priority {
    type Err = UnknownName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "normal" => Ok(Priority::Normal),
            "high" => Ok(Priority::High),
            other => Err(UnknownName::Priority(other.to_string())),
        }
    }
}

/// One delivery target, serialized as the `job` field of a stream entry and as a member of the
/// delayed ZSET.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// With `device_id`, the key of the target's `delivery` row in Postgres.
    pub notification_id: Uuid,
    pub device_id: Uuid,
    pub user_id: String,
    pub provider: Provider,
    /// Device token (Expo push token, FCM registration token, APNs hex token, email address).
    pub token: String,
    /// `notification.payload`, checked at fan-out ([`crate::payload::Payload`]); shared by
    /// every target of the notification.
    pub payload: Arc<serde_json::Value>,
    #[serde(default)]
    pub priority: Priority,
    pub trace_id: String,
    /// Attempts already made for this target (0 for a first send).
    #[serde(default)]
    pub attempt: u32,
    /// How many targets the notification has. Only notifications with several targets need
    /// their row locked while an outcome is stored (see `Store::record`).
    #[serde(default = "one")]
    pub targets: u32,
    /// Written again by the sweep: an earlier copy may have been delivered.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub requeued: bool,
    /// When the target was first queued (ms since the epoch; 0 if unknown: an entry written by
    /// an older version). `retry.max_age_ms` counts from here.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub queued_ms: u64,
    /// `notification.expires_at` (ms since the epoch): not sent from then on, and what is sent
    /// carries the time left to the provider. None: it never expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_ms: Option<u64>,
    /// `notification.collapse_key`: a newer notification with the same key replaces this one on
    /// the device, where the provider can do that (FCM, APNs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collapse_key: Option<String>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn one() -> u32 {
    1
}

impl Job {
    /// A first attempt at a new (notification, device) of `provider`, with fresh ids, user `u`,
    /// trace `t` and nothing else set: a job for calling a provider client outside the
    /// pipeline (the engine's unit tests, the emulators' test support).
    pub fn first_attempt(provider: Provider, token: &str, payload: serde_json::Value, priority: Priority) -> Job {
        Job {
            notification_id: Uuid::new_v4(),
            device_id: Uuid::new_v4(),
            user_id: "u".into(),
            provider,
            token: token.into(),
            payload: payload.into(),
            priority,
            trace_id: "t".into(),
            attempt: 0,
            targets: 1,
            requeued: false,
            queued_ms: 0,
            expires_ms: None,
            collapse_key: None,
        }
    }

    /// Which stream shard this job lives on: every target of one notification shares a shard.
    pub fn shard(&self, shards: u16) -> u16 {
        shard_of(self.notification_id, shards)
    }

    /// Whether the target has been waiting longer than `max_age` since it was first queued, at
    /// `now_ms`. Unknown start times never expire.
    pub fn past_deadline(&self, now_ms: u64, max_age: Duration) -> bool {
        self.queued_ms > 0 && now_ms.saturating_sub(self.queued_ms) > max_age.as_millis() as u64
    }

    /// `delay`, shortened so that it ends no later than the notification's expiry: a retry is
    /// never scheduled past it (it comes back when it expires, and is expired then).
    pub fn clamp_to_expiry(&self, now_ms: u64, delay: Duration) -> Duration {
        self.time_left(now_ms).map_or(delay, |left| delay.min(left))
    }

    /// Whether the target's notification has expired at `now_ms`.
    pub fn expired(&self, now_ms: u64) -> bool {
        self.expires_ms.is_some_and(|at| now_ms >= at)
    }

    /// How long the target has left at `now_ms` (None: it never expires; zero once expired).
    pub fn time_left(&self, now_ms: u64) -> Option<Duration> {
        self.expires_ms.map(|at| Duration::from_millis(at.saturating_sub(now_ms)))
    }

    /// The number of the attempt this entry is (1 for a first send). Saturates: the count
    /// comes from a stream entry, which must not be able to overflow anything.
    pub fn attempt_number(&self) -> u32 {
        self.attempt.saturating_add(1)
    }

    /// The key of the target's `delivery` row (and of its idempotency key).
    pub fn target(&self) -> (Uuid, Uuid) {
        (self.notification_id, self.device_id)
    }

    pub fn to_json(&self) -> String {
        // Serializing a struct of strings, uuids and a `Value` cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn from_json(raw: &[u8]) -> Result<Self, MalformedJob> {
        serde_json::from_slice(raw).map_err(|e| MalformedJob(bounded(format!("malformed job: {e}"))))
    }

    /// The target named by an entry that is not a whole job (a field missing or malformed),
    /// when at least its two ids can be read.
    pub fn target_of(raw: &[u8]) -> Option<(Uuid, Uuid)> {
        #[derive(Deserialize)]
        struct Ids {
            notification_id: Uuid,
            device_id: Uuid,
        }
        let ids: Ids = serde_json::from_slice(raw).ok()?;
        Some((ids.notification_id, ids.device_id))
    }
}

/// A stream entry's `job` field that does not decode to a [`Job`]. Its text (parser's message
/// included) is at most [`MAX_ERROR_BYTES`]: it is stored with the dead letter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct MalformedJob(String);

/// The `last_error` of something not sent because it expired: "expired at <time> <what>".
pub fn expired_text(expires_ms: Option<u64>, what: &str) -> String {
    let at = expires_ms
        .and_then(|ms| chrono::DateTime::from_timestamp_millis(i64::try_from(ms).ok()?))
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_else(|| "its expires_at".into());
    format!("expired at {at} {what}")
}

/// Now, in ms since the epoch (the unit of stream scores and `Job::queued_ms`).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

pub fn shard_of(notification_id: Uuid, shards: u16) -> u16 {
    (notification_id.as_u128() % u128::from(shards.max(1))) as u16
}

/// The longest error a provider classifier or the entry parser returns, in bytes. Errors end up
/// in `last_error`, the dead-letter stream, logs and the circuit's state: a 4 MiB body or a
/// 100 kB SMTP reply must not be copied into each of them.
pub const MAX_ERROR_BYTES: usize = 512;

/// `error`, cut to at most [`MAX_ERROR_BYTES`] on a character boundary (with `…` when cut).
pub fn bounded(mut error: String) -> String {
    const ELLIPSIS: &str = "…";
    if error.len() <= MAX_ERROR_BYTES {
        return error;
    }
    let mut end = MAX_ERROR_BYTES - ELLIPSIS.len();
    while !error.is_char_boundary(end) {
        end -= 1;
    }
    error.truncate(end);
    error.push_str(ELLIPSIS);
    error
}

/// Where a job came from in Redis, so its outcome can be acknowledged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryRef {
    pub shard: u16,
    pub id: String,
}

/// A job read from a stream, ready to be sent.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub job: Job,
    pub entry: EntryRef,
}

/// How a provider answered, classified as in docs/providers.md.
#[derive(Debug, Clone, PartialEq)]
pub enum SendResult {
    /// Accepted; the provider's id for the message (Expo ticket id, FCM name, apns-id).
    Delivered { provider_message_id: Option<String> },
    /// Try again later; `after` is the provider's `Retry-After` when it gave one.
    Retry { error: String, after: Option<Duration> },
    /// Never going to work for this message.
    Permanent { error: String },
    /// The token or address is dead: fail the target and disable the device.
    InvalidToken { error: String },
    /// Credentials or configuration are wrong: nothing for this provider will work until fixed.
    Auth { error: String },
    /// Not sent, or sent while the provider was down (see [`crate::circuit`]): reschedule after
    /// `after` without spending an attempt. Also what a wait for the relay's own resources
    /// becomes (the rate limit, a free connection, a worker that has the provider).
    Deferred { error: String, after: Duration },
}

impl SendResult {
    pub fn error(&self) -> Option<&str> {
        match self {
            SendResult::Delivered { .. } => None,
            SendResult::Retry { error, .. }
            | SendResult::Permanent { error }
            | SendResult::InvalidToken { error }
            | SendResult::Auth { error }
            | SendResult::Deferred { error, .. } => Some(error),
        }
    }
}

/// What the outcome writer must store for one stream entry.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// The provider answered.
    Sent { delivery: Delivery, result: SendResult, latency_ms: u64 },
    /// Already final, or a copy of it is being sent here: acknowledge, do not send. `repair`:
    /// only the idempotency key knew it was delivered (Postgres lost that write, or has not
    /// stored it yet): mark the row delivered.
    Duplicate { delivery: Delivery, repair: bool },
    /// Not sent now: another copy of the target is in flight here and its outcome is being
    /// stored, and this copy may be the retry that outcome scheduled. Acknowledged and written
    /// back to the delayed set, due `after` from now, unchanged and with nothing stored: when
    /// it comes back, Postgres says whether anything is left to send.
    PutBack { delivery: Delivery, after: std::time::Duration },
    /// Not sent because the target no longer stands: its device was removed, disabled or given
    /// to another user before the send, or its row is gone. Fails the target (if its row still
    /// exists) with `reason`; no dead letter, as there is nothing to send again.
    Withdrawn { delivery: Delivery, reason: String },
    /// Not sent (again) because its notification's `expires_at` passed first: the target ends
    /// `expired` (no dead letter: it is not to be sent again). `last_attempt`: why the attempt
    /// before it did not deliver, if there was one.
    Expired { delivery: Delivery, last_attempt: Option<String> },
    /// The entry could not be parsed: dead-letter it with the reason and acknowledge it, and
    /// fail its target when the entry still names one.
    Poison { entry: EntryRef, raw: String, reason: String, target: Option<(Uuid, Uuid)> },
}

impl Outcome {
    pub fn entry(&self) -> &EntryRef {
        match self {
            Outcome::Sent { delivery, .. }
            | Outcome::Duplicate { delivery, .. }
            | Outcome::PutBack { delivery, .. }
            | Outcome::Withdrawn { delivery, .. }
            | Outcome::Expired { delivery, .. } => &delivery.entry,
            Outcome::Poison { entry, .. } => entry,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> Job {
        let first = Job::first_attempt(
            Provider::Expo,
            "ExponentPushToken[abc]",
            serde_json::json!({"title": "hi"}),
            Priority::High,
        );
        Job { user_id: "u1".into(), attempt: 2, ..first }
    }

    #[test]
    fn an_attempt_count_from_a_hostile_entry_cannot_overflow() {
        let mut j = job();
        j.attempt = u32::MAX;
        assert_eq!(j.attempt_number(), u32::MAX);
    }

    #[test]
    fn topic_names_are_url_safe_and_bounded() {
        for good in ["sports", "match.42", "a-b_c~d:e", &"t".repeat(MAX_TOPIC_BYTES), "..x"] {
            assert_eq!(check_topic(good), Ok(()), "{good}");
        }
        // `%` starts an escape in a URL: a name holding one could not be written in a path as is.
        for bad in ["", ".", "..", "...", "a b", "a/b", "é", "a%20b", "?", &"t".repeat(MAX_TOPIC_BYTES + 1)] {
            let err = check_topic(bad).unwrap_err().to_string();
            assert!(err.starts_with("topic: must be 1 to 256 bytes"), "{bad}: {err}");
        }
    }

    #[test]
    fn a_target_is_past_its_deadline_only_once_max_age_has_passed_since_it_was_queued() {
        let mut j = job();
        let day = Duration::from_secs(86_400);
        j.queued_ms = 1_000;
        assert!(!j.past_deadline(1_000 + 86_400_000, day));
        assert!(j.past_deadline(1_001 + 86_400_000, day));
        assert!(!j.past_deadline(0, day), "a clock behind the queue time is not past anything");
        j.queued_ms = 0;
        assert!(!j.past_deadline(u64::MAX, day), "an entry of an older version never expires");
    }

    #[test]
    fn a_job_survives_a_round_trip_through_json() {
        let j = job();
        assert_eq!(Job::from_json(j.to_json().as_bytes()).unwrap(), j);
    }

    #[test]
    fn a_payload_number_keeps_its_exact_value_through_the_stream() {
        // Found by `every_job_survives_a_round_trip_through_json`: without serde_json's
        // `float_roundtrip`, this number came back one ULP off.
        let mut j = job();
        j.payload = serde_json::json!({"x": -1.7412071854123407e-293, "y": [0.1, 1e308, 5e-324]}).into();
        assert_eq!(Job::from_json(j.to_json().as_bytes()).unwrap().payload, j.payload);
    }

    #[test]
    fn garbage_is_reported_as_a_malformed_job() {
        let err = Job::from_json(b"{\"notification_id\": 3}").unwrap_err().to_string();
        assert!(err.starts_with("malformed job:"), "{err}");
    }

    #[test]
    fn all_targets_of_a_notification_share_a_shard() {
        let mut a = job();
        let mut b = job();
        b.notification_id = a.notification_id;
        b.device_id = Uuid::new_v4();
        assert_eq!(a.shard(8), b.shard(8));
        a.notification_id = Uuid::from_u128(13);
        assert_eq!(a.shard(8), 5);
        assert_eq!(a.shard(1), 0);
    }

    #[test]
    fn unknown_providers_are_named_in_the_error() {
        assert_eq!("fcm".parse::<Provider>(), Ok(Provider::Fcm));
        assert!("sms".parse::<Provider>().unwrap_err().to_string().contains("`sms`"));
    }
}

/// Property tests of the job decoder, and the strategies other modules' property tests use to
/// make jobs and JSON values.
#[cfg(test)]
pub(crate) mod proptests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::Value;

    /// Any JSON value serde_json can hold: finite numbers, any strings, nesting a few levels deep.
    pub(crate) fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
            any::<String>().prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map(any::<String>(), inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// Any JSON object, as a payload.
    pub(crate) fn payload() -> impl Strategy<Value = Value> {
        prop::collection::btree_map(any::<String>(), json_value(), 0..6)
            .prop_map(|m| Value::Object(m.into_iter().collect()))
    }

    pub(crate) fn job() -> impl Strategy<Value = Job> {
        let ids = (any::<u128>(), any::<u128>());
        let provider = prop::sample::select(Provider::ALL.to_vec());
        let priority = prop_oneof![Just(Priority::Normal), Just(Priority::High)];
        let strings = (any::<String>(), any::<String>(), any::<String>());
        let counts = (any::<u32>(), any::<u32>(), any::<bool>(), any::<u64>());
        let lifetime = (any::<Option<u64>>(), any::<Option<String>>());
        (ids, provider, strings, payload(), priority, counts, lifetime).prop_map(
            |(
                (n, d),
                provider,
                (user_id, token, trace_id),
                payload,
                priority,
                (attempt, targets, requeued, queued_ms),
                (expires_ms, collapse_key),
            )| Job {
                notification_id: Uuid::from_u128(n),
                device_id: Uuid::from_u128(d),
                user_id,
                provider,
                token,
                payload: Arc::new(payload),
                priority,
                trace_id,
                attempt,
                targets,
                requeued,
                queued_ms,
                expires_ms,
                collapse_key,
            },
        )
    }

    proptest! {
        #[test]
        fn any_bytes_decode_to_a_job_or_a_bounded_malformed_job_error(raw in prop::collection::vec(any::<u8>(), 0..512)) {
            if let Err(reason) = Job::from_json(&raw).map_err(|e| e.to_string()) {
                prop_assert!(reason.starts_with("malformed job: "), "{}", reason);
                prop_assert!(reason.len() <= MAX_ERROR_BYTES, "{} bytes", reason.len());
            }
        }

        #[test]
        fn every_job_survives_a_round_trip_through_json(job in job()) {
            prop_assert_eq!(Job::from_json(job.to_json().as_bytes()), Ok(job));
        }

        #[test]
        fn a_job_decodes_whatever_the_order_of_its_fields_and_with_unknown_ones(
            job in job(),
            order in Just((0..14).collect::<Vec<usize>>()).prop_shuffle(),
            extra in any::<String>(),
        ) {
            // A JSON object written by another version: fields in any order, one we do not know.
            let Value::Object(fields) = serde_json::to_value(&job).unwrap() else { unreachable!() };
            let mut fields: Vec<(String, Value)> = fields.into_iter().collect();
            fields.push((format!("x-{extra}"), Value::from(1)));
            let mut text = String::from("{");
            for (i, at) in order.iter().filter(|at| **at < fields.len()).enumerate() {
                let (key, value) = &fields[*at];
                if i > 0 {
                    text.push(',');
                }
                text.push_str(&format!("{}:{}", Value::String(key.clone()), value));
            }
            text.push('}');
            prop_assert_eq!(Job::from_json(text.as_bytes()), Ok(job));
        }

        #[test]
        fn a_long_malformed_job_gives_a_reason_of_bounded_length(junk in "\\PC{600,2000}") {
            // serde_json quotes the offending string in its message.
            let raw = serde_json::json!({ "notification_id": junk }).to_string();
            let reason = Job::from_json(raw.as_bytes()).unwrap_err().to_string();
            prop_assert!(reason.len() <= MAX_ERROR_BYTES, "{} bytes", reason.len());
        }

        #[test]
        fn bounded_errors_are_a_prefix_of_the_original_within_the_limit(error in "\\PC{0,700}") {
            let cut = bounded(error.clone());
            prop_assert!(cut.len() <= MAX_ERROR_BYTES);
            match cut.strip_suffix('…') {
                Some(kept) if error.len() > MAX_ERROR_BYTES => prop_assert!(error.starts_with(kept)),
                _ => prop_assert_eq!(cut, error),
            }
        }
    }
}
