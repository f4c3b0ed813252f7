//! Redis key names, in one place.
//!
//! # Redis Streams in brief
//! A stream is an append-only log of entries (`XADD`). A *consumer group* (`cg:notifications`)
//! hands each entry to one consumer (`XREADGROUP ... >`) and remembers it in the group's
//! *pending entries list* (PEL) until that consumer acknowledges it (`XACK`). An entry whose
//! consumer died stays pending; another consumer takes it over with `XAUTOCLAIM` once it has
//! been idle long enough. notify-relay acknowledges an entry only after its outcome is stored,
//! then deletes it (`XDEL`), so the stream holds exactly the work not yet finished and is
//! never trimmed blindly.
//!
//! Retries wait in a sorted set scored by due time (ms since the epoch) and are moved back to the
//! stream by a Lua script. Entries that failed for good are copied to the dead-letter stream.
//! Expo receipts have no key: they are due in Postgres (`delivery.receipt_due_at`), so a flush
//! loses none of them.
//!
//! # Layout
//! Every key starts with `redis.key_prefix`. The keys of one shard share a hash tag (`{N}`), so
//! the shard's Lua scripts and atomic pipelines run on Redis Cluster:
//!
//! | key | type | what |
//! |---|---|---|
//! | `<prefix>:{N}:stream` | stream | jobs waiting to be sent (field `job`: JSON) |
//! | `<prefix>:{N}:delayed` | zset | jobs waiting for a retry, score = due time in ms |
//! | `<prefix>:{N}:dlq` | stream | dead letters: reason, provider, attempts, error, job |
//! | `<prefix>:delivered:<notification>:<device>` | string | idempotency key, TTL max(1 h, 2 × `listener.stale_after_ms`) |
//! | `<prefix>:metrics:notifications:<event>:<YYYYMMDD>` | string | daily counter, TTL 90 days |
//! | `<prefix>:metrics:notifications:<event>:<provider>:<YYYYMMDD>` | string | same, per provider |

use std::time::Duration;
use uuid::Uuid;

/// The consumer group every worker reads the streams with.
pub const GROUP: &str = "cg:notifications";

/// The field of a stream entry that holds the job's JSON.
pub const JOB_FIELD: &str = "job";

/// How long an idempotency key outlives the delivery it guards, at least. Postgres is checked
/// before every send, so the key only has to cover the one gap Postgres can have: an outcome
/// Postgres lost (a failover to a replica that had not received its commit), until the sweep
/// has found that target again — `listener.stale_after_ms` — and it has been read. Keeping it
/// longer only costs Redis memory (one key per delivered target).
pub const DELIVERED_TTL: Duration = Duration::from_secs(3600);

/// The idempotency keys' TTL for a sweep lease of `stale_after`: twice the lease, at least
/// [`DELIVERED_TTL`].
pub fn delivered_ttl(stale_after: Duration) -> Duration {
    (stale_after * 2).max(DELIVERED_TTL)
}

/// How long daily counters are kept.
pub const COUNTER_TTL: Duration = Duration::from_secs(90 * 24 * 3600);

/// Builds every key of one deployment from its prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
    shards: u16,
}

impl Keys {
    pub fn new(prefix: impl Into<String>, shards: u16) -> Self {
        Keys { prefix: prefix.into(), shards: shards.max(1) }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn shards(&self) -> u16 {
        self.shards
    }

    pub fn shard_ids(&self) -> impl Iterator<Item = u16> {
        0..self.shards
    }

    pub fn stream(&self, shard: u16) -> String {
        format!("{}:{{{shard}}}:stream", self.prefix)
    }

    pub fn delayed(&self, shard: u16) -> String {
        format!("{}:{{{shard}}}:delayed", self.prefix)
    }

    pub fn dlq(&self, shard: u16) -> String {
        format!("{}:{{{shard}}}:dlq", self.prefix)
    }

    pub fn delivered(&self, notification_id: Uuid, device_id: Uuid) -> String {
        format!("{}:delivered:{notification_id}:{device_id}", self.prefix)
    }

    /// `day` is `YYYYMMDD`.
    pub fn counter(&self, event: &str, provider: Option<&str>, day: &str) -> String {
        match provider {
            Some(p) => format!("{}:metrics:notifications:{event}:{p}:{day}", self.prefix),
            None => format!("{}:metrics:notifications:{event}:{day}", self.prefix),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_of_one_shard_share_a_hash_tag() {
        let k = Keys::new("notify", 4);
        assert_eq!(k.stream(0), "notify:{0}:stream");
        assert_eq!(k.delayed(3), "notify:{3}:delayed");
        assert_eq!(k.dlq(3), "notify:{3}:dlq");
    }

    #[test]
    fn counters_are_named_per_event_provider_and_day() {
        let k = Keys::new("p", 1);
        assert_eq!(k.counter("SEND_SUCCESS", None, "20261126"), "p:metrics:notifications:SEND_SUCCESS:20261126");
        assert_eq!(
            k.counter("SEND_SUCCESS", Some("expo"), "20261126"),
            "p:metrics:notifications:SEND_SUCCESS:expo:20261126"
        );
    }
}
