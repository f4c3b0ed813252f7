//! The names of the events that every log line and daily counter is keyed by.
//!
//! Each event is one JSON log line (`"event": "SEND_SUCCESS"`, with `notification_id`,
//! `trace_id`, `provider`, `attempt` and `latency_ms` where they apply) and one increment of the
//! day's Redis counters, overall and per provider.

pub const ENQUEUE: &str = "ENQUEUE";
pub const DEQUEUE: &str = "DEQUEUE";
pub const SEND_SUCCESS: &str = "SEND_SUCCESS";
pub const SEND_FAIL: &str = "SEND_FAIL";
pub const RETRY_SCHEDULED: &str = "RETRY_SCHEDULED";
pub const DLQ_PUSHED: &str = "DLQ_PUSHED";
pub const DEVICE_DISABLED: &str = "DEVICE_DISABLED";
pub const DUPLICATE_SKIPPED: &str = "DUPLICATE_SKIPPED";
pub const NOTIFICATION_FAILED: &str = "NOTIFICATION_FAILED";
pub const CLAIMED: &str = "CLAIMED";
pub const REQUEUED: &str = "REQUEUED";
pub const CIRCUIT_OPEN: &str = "CIRCUIT_OPEN";
pub const CIRCUIT_HALF_OPEN: &str = "CIRCUIT_HALF_OPEN";
pub const CIRCUIT_CLOSED: &str = "CIRCUIT_CLOSED";
/// Rescheduled without spending an attempt (circuit open, rate limit, no free connection, a
/// provider this worker does not have, a copy read while its target's outcome is being stored).
pub const DEFERRED: &str = "DEFERRED";
pub const RETENTION_DELETED: &str = "RETENTION_DELETED";
pub const RECEIPT_ERROR: &str = "RECEIPT_ERROR";
pub const ACTOR_FAILED: &str = "ACTOR_FAILED";
pub const ACTOR_RESTARTED: &str = "ACTOR_RESTARTED";
/// Postgres refused to store an outcome as it was (it was stored in a plainer form).
pub const OUTCOME_REFUSED: &str = "OUTCOME_REFUSED";
/// A target not sent because its device was deleted, disabled or given to another user.
pub const TARGET_WITHDRAWN: &str = "TARGET_WITHDRAWN";
/// A target failed because it was not delivered within `retry.max_age_ms`.
pub const GAVE_UP: &str = "GAVE_UP";

/// A target not sent because its notification's `expires_at` passed first (per provider).
pub const EXPIRED: &str = "EXPIRED";
/// A notification that reached `expired`: a target expired and none was delivered, or it
/// expired before it was fanned out.
pub const NOTIFICATION_EXPIRED: &str = "NOTIFICATION_EXPIRED";
/// A notification cancelled before it was fanned out (`POST /notifications/{id}/cancel`).
pub const CANCELLED: &str = "CANCELLED";
/// A scheduled notification became due and was handed to the fan-out.
pub const SCHEDULED_DUE: &str = "SCHEDULED_DUE";
/// Rows written for a topic's subscribers (counted per subscriber).
pub const TOPIC_FANOUT: &str = "TOPIC_FANOUT";
/// The dead letters held or written since the previous check passed `alerts.*` (logged only).
pub const DLQ_GROWING: &str = "DLQ_GROWING";
/// The entries waiting for a worker, or the age of the oldest, passed `alerts.*` (logged only).
pub const LAG_HIGH: &str = "LAG_HIGH";
/// At start-up: Redis's `maxmemory-policy` may evict the relay's keys (logged only).
pub const REDIS_EVICTION_POSSIBLE: &str = "REDIS_EVICTION_POSSIBLE";
/// The streams hold `listener.max_backlog` entries: claiming waits (`full: true`), or goes on
/// again (`full: false`) (logged only).
pub const BACKLOG_FULL: &str = "BACKLOG_FULL";

/// Every event, for reading the counters back (`GET /admin/metrics`).
pub const ALL: [&str; 27] = [
    ENQUEUE,
    DEQUEUE,
    SEND_SUCCESS,
    SEND_FAIL,
    RETRY_SCHEDULED,
    DLQ_PUSHED,
    DEVICE_DISABLED,
    DUPLICATE_SKIPPED,
    NOTIFICATION_FAILED,
    CLAIMED,
    REQUEUED,
    CIRCUIT_OPEN,
    CIRCUIT_HALF_OPEN,
    CIRCUIT_CLOSED,
    DEFERRED,
    RETENTION_DELETED,
    RECEIPT_ERROR,
    ACTOR_FAILED,
    ACTOR_RESTARTED,
    OUTCOME_REFUSED,
    TARGET_WITHDRAWN,
    GAVE_UP,
    EXPIRED,
    NOTIFICATION_EXPIRED,
    CANCELLED,
    SCHEDULED_DUE,
    TOPIC_FANOUT,
];

/// `YYYYMMDD` of today in UTC: the day part of counter keys.
pub fn today() -> String {
    chrono::Utc::now().format("%Y%m%d").to_string()
}

/// Daily counter increments gathered over a batch, written in one pipeline.
#[derive(Debug, Default)]
pub struct Tally {
    counts: std::collections::HashMap<(&'static str, Option<&'static str>), u64>,
}

impl Tally {
    pub fn add(&mut self, event: &'static str, provider: Option<&'static str>, n: u64) {
        if n == 0 {
            return;
        }
        *self.counts.entry((event, None)).or_default() += n;
        if provider.is_some() {
            *self.counts.entry((event, provider)).or_default() += n;
        }
    }

    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&'static str, Option<&'static str>, u64)> + '_ {
        self.counts.iter().map(|(&(e, p), &n)| (e, p, n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tally_counts_overall_and_per_provider() {
        let mut t = Tally::default();
        t.add(SEND_SUCCESS, Some("expo"), 2);
        t.add(SEND_SUCCESS, Some("fcm"), 1);
        t.add(ENQUEUE, None, 5);
        let mut rows: Vec<_> = t.iter().collect();
        rows.sort();
        assert_eq!(
            rows,
            vec![
                ("ENQUEUE", None, 5),
                ("SEND_SUCCESS", None, 3),
                ("SEND_SUCCESS", Some("expo"), 2),
                ("SEND_SUCCESS", Some("fcm"), 1),
            ]
        );
    }
}
