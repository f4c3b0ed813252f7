//! The Redis side of the relay: streams, the delayed set, the dead-letter stream, idempotency
//! keys and counters. Key names live in [`crate::keys`], whose docs explain the layout.
//!
//! Every hot-path call is one pipeline per batch: writing 1,000 jobs is one round trip.

pub mod admin;
pub mod conn;

use crate::error::Result;
use crate::events::Tally;
use crate::job::{EntryRef, Job};
use crate::keys::{Keys, COUNTER_TTL, DELIVERED_TTL, GROUP, JOB_FIELD};
use conn::{Endpoint, Opener, RelayConn, Timeouts};
use redis::streams::{StreamAutoClaimReply, StreamClaimReply, StreamId, StreamReadReply};
use redis::{Script, Value};
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Moves due members of a delayed set to its stream, atomically: a member is either still in
/// the set or in the stream, never both and never neither, however many schedulers run this.
const MOVE_DUE: &str = r"
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, member in ipairs(due) do
  redis.call('XADD', KEYS[2], '*', ARGV[3], member)
  redis.call('ZREM', KEYS[1], member)
end
return #due
";

/// Resets the idle time of pending entries that `consumer` still owns (KEYS[1] the stream,
/// ARGV group, consumer, ids…). `XCLAIM` with JUSTID does not bump the delivery count.
const REFRESH: &str = r"
local kept = 0
for i = 3, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if p[1] and p[1][2] == ARGV[2] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
    kept = kept + 1
  end
end
return kept
";

/// Most bytes of jobs sent in one pipeline by [`Relay::enqueue`].
pub const MAX_PIPELINE_BYTES: usize = 4 * 1024 * 1024;

/// One entry read from a stream: a job, or the raw fields and why they are not one (with the
/// target, when at least its ids could be read, so that its row can be failed too).
#[derive(Debug, Clone)]
pub enum Entry {
    Job(EntryRef, Job),
    Poison { entry: EntryRef, raw: String, reason: String, target: Option<(uuid::Uuid, uuid::Uuid)> },
}

/// A dead letter: a delivery that failed for good, with the original job.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub shard: u16,
    pub reason: &'static str,
    pub provider: String,
    pub attempts: u32,
    pub error: String,
    pub job: String,
}

/// Everything one outcome batch writes to Redis.
#[derive(Debug, Default)]
pub struct RedisWrites {
    /// Idempotency keys of delivered targets: (notification, device).
    pub delivered: Vec<(uuid::Uuid, uuid::Uuid)>,
    /// (shard, due time, job) for the delayed set.
    pub retries: Vec<(u16, SystemTime, Job)>,
    pub dead_letters: Vec<DeadLetter>,
    /// Entries to acknowledge and delete.
    pub acks: Vec<EntryRef>,
    pub tally: Tally,
}

#[derive(Clone)]
pub struct Relay {
    opener: Opener,
    conn: RelayConn,
    keys: Keys,
    move_due: Script,
    refresh: Script,
    /// How long an idempotency key outlives the delivery it marks.
    delivered_ttl: Duration,
    /// The dead-letter stream is capped near this length (`MAXLEN ~`): Postgres keeps the
    /// durable record of every failure, the stream is for inspection and requeueing.
    dlq_max_len: usize,
}

impl Relay {
    pub async fn connect(endpoint: &Endpoint, keys: Keys, dlq_max_len: usize) -> Result<Self> {
        Self::connect_with(endpoint, Timeouts::default(), keys, dlq_max_len).await
    }

    /// [`Relay::connect`] with the configured connect and reply timeouts.
    pub async fn connect_with(endpoint: &Endpoint, timeouts: Timeouts, keys: Keys, dlq_max_len: usize) -> Result<Self> {
        let opener = Opener::new(endpoint, timeouts)?;
        // The start-up connection is where a TLS mistake shows first: say what it means.
        let conn = opener.shared().await.map_err(|source| match conn::tls_failure(&source, endpoint) {
            Some(hint) => crate::error::EngineError::RedisTls { hint, source },
            None => source.into(),
        })?;
        Ok(Relay {
            opener,
            conn,
            keys,
            move_due: Script::new(MOVE_DUE),
            refresh: Script::new(REFRESH),
            delivered_ttl: DELIVERED_TTL,
            dlq_max_len,
        })
    }

    /// The same relay, keeping idempotency keys for `ttl`.
    pub fn with_delivered_ttl(self, ttl: Duration) -> Self {
        Relay { delivered_ttl: ttl, ..self }
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// The shared, auto-reconnecting connection for short commands.
    pub fn conn(&self) -> RelayConn {
        self.conn.clone()
    }

    /// A consumer-group command on a shard's stream, its first two arguments given:
    /// `<command> <stream> <group>`.
    fn group_cmd(&self, command: &str, shard: u16) -> redis::Cmd {
        let mut cmd = redis::cmd(command);
        cmd.arg(self.keys.stream(shard)).arg(GROUP);
        cmd
    }

    /// `XAUTOCLAIM` or `XCLAIM` on `shard` for `consumer`, of entries idle for at least
    /// `min_idle`: the arguments both commands start with, in their order.
    fn claim_cmd(&self, command: &str, shard: u16, consumer: &str, min_idle: Duration) -> redis::Cmd {
        let mut cmd = self.group_cmd(command, shard);
        cmd.arg(consumer).arg(min_idle.as_millis() as u64);
        cmd
    }

    /// Whether this relay talks to a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        self.conn.is_cluster()
    }

    /// A connection of its own for blocking reads. redis-rs gives up on a reply after 500 ms by
    /// default while the server keeps blocking, so the response timeout here outlasts `block`.
    /// On a single Redis the connection is named (`CLIENT SETNAME`) so that operators can find
    /// it in `CLIENT LIST`.
    pub async fn blocking_connection(&self, block: Duration, name: &str) -> Result<RelayConn> {
        Ok(self.opener.blocking(block, name).await?)
    }

    pub async fn ping(&self) -> Result<()> {
        let mut conn = self.conn();
        redis::cmd("PING").query_async::<()>(&mut conn).await?;
        Ok(())
    }

    /// Creates the consumer group of every shard (and the stream, `MKSTREAM`) unless it exists.
    /// The group starts at `0`, so entries written before it existed are read too.
    pub async fn ensure_groups(&self) -> Result<()> {
        let mut conn = self.conn();
        for shard in self.keys.shard_ids() {
            let created = redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(self.keys.stream(shard))
                .arg(GROUP)
                .arg("0")
                .arg("MKSTREAM")
                .query_async::<()>(&mut conn)
                .await;
            match created {
                Err(e) if e.code() == Some("BUSYGROUP") => {}
                other => other?,
            }
        }
        Ok(())
    }

    /// Whether every shard's stream has its consumer group (for `/readyz`).
    pub async fn groups_exist(&self) -> Result<bool> {
        let mut conn = self.conn();
        for shard in self.keys.shard_ids() {
            let groups: Result<Vec<redis::Value>, _> =
                redis::cmd("XINFO").arg("GROUPS").arg(self.keys.stream(shard)).query_async(&mut conn).await;
            match groups {
                Ok(g) if !g.is_empty() => {}
                Ok(_) => return Ok(false),
                Err(e) if e.code() == Some("ERR") => return Ok(false), // no such stream
                Err(e) => return Err(e.into()),
            }
        }
        Ok(true)
    }

    /// Writes jobs to their shards' streams, and the counters, in one pipeline — or in several,
    /// each of at most [`MAX_PIPELINE_BYTES`] of jobs: a fan-out to many devices of a large
    /// payload is never serialized all at once.
    pub async fn enqueue(&self, jobs: &[Job], tally: &Tally, day: &str) -> Result<()> {
        if jobs.is_empty() && tally.is_empty() {
            return Ok(());
        }
        let mut cmds = self.counter_cmds(tally, day);
        let mut bytes = 0;
        for job in jobs {
            let stream = self.keys.stream(job.shard(self.keys.shards()));
            let json = job.to_json();
            bytes += json.len();
            let mut xadd = redis::cmd("XADD");
            xadd.arg(&stream).arg("*").arg(JOB_FIELD).arg(json);
            cmds.push((stream, xadd));
            if bytes >= MAX_PIPELINE_BYTES {
                self.conn().query_each::<Value>(std::mem::take(&mut cmds)).await?;
                bytes = 0;
            }
        }
        if !cmds.is_empty() {
            self.conn().query_each::<Value>(cmds).await?;
        }
        Ok(())
    }

    /// `XREADGROUP ... >` on one shard: up to `count` new entries, waiting up to `block` for
    /// one (not at all without).
    pub async fn read(
        &self,
        conn: &mut RelayConn,
        shard: u16,
        consumer: &str,
        count: usize,
        block: Option<Duration>,
    ) -> Result<Vec<Entry>> {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP").arg(GROUP).arg(consumer).arg("COUNT").arg(count);
        if let Some(block) = block {
            cmd.arg("BLOCK").arg(block.as_millis() as u64);
        }
        let reply: Option<StreamReadReply> =
            cmd.arg("STREAMS").arg(self.keys.stream(shard)).arg(">").query_async(conn).await?;
        Ok(reply
            .map(|r| r.keys.into_iter().flat_map(|k| k.ids).map(|id| parse_entry(shard, id)).collect())
            .unwrap_or_default())
    }

    /// `XAUTOCLAIM`: takes over entries of this shard idle for at least `min_idle`. Returns the
    /// cursor for the next call ("0-0" when the scan wrapped), the claimed entries, and the ids
    /// of pending entries whose data was already deleted.
    pub async fn autoclaim(
        &self,
        shard: u16,
        consumer: &str,
        min_idle: Duration,
        start: &str,
        count: usize,
    ) -> Result<(String, Vec<Entry>, Vec<String>)> {
        let mut conn = self.conn();
        let reply: StreamAutoClaimReply = self
            .claim_cmd("XAUTOCLAIM", shard, consumer, min_idle)
            .arg(start)
            .arg("COUNT")
            .arg(count)
            .query_async(&mut conn)
            .await?;
        let entries = reply.claimed.into_iter().map(|id| parse_entry(shard, id)).collect();
        Ok((reply.next_stream_id, entries, reply.deleted_ids))
    }

    /// A page of the pending entries of a shard idle for at least `min_idle`, after the entry
    /// id `after` (from the start without): (id, times delivered), at most `count`, in id order.
    pub async fn idle_pending(
        &self,
        shard: u16,
        min_idle: Duration,
        after: Option<&str>,
        count: usize,
    ) -> Result<Vec<(String, u64)>> {
        let mut conn = self.conn();
        let start = after.map_or_else(|| "-".to_string(), |id| format!("({id}"));
        let pending: Vec<(String, String, u64, u64)> = self
            .group_cmd("XPENDING", shard)
            .arg("IDLE")
            .arg(min_idle.as_millis() as u64)
            .arg(start)
            .arg("+")
            .arg(count)
            .query_async(&mut conn)
            .await?;
        Ok(pending.into_iter().map(|(id, _, _, delivered)| (id, delivered)).collect())
    }

    /// Resets the idle time of these pending entries of `consumer` (`XCLAIM … JUSTID` to itself,
    /// which does not count as a delivery) — only those it still owns: one another consumer took
    /// over meanwhile stays where it is. Returns how many were refreshed.
    pub async fn refresh_pending(&self, shard: u16, consumer: &str, ids: &[&str]) -> Result<usize> {
        if ids.is_empty() {
            return Ok(0);
        }
        let mut conn = self.conn();
        let mut invocation = self.refresh.key(self.keys.stream(shard));
        invocation.arg(GROUP).arg(consumer);
        for id in ids {
            invocation.arg(*id);
        }
        let refreshed: usize = invocation.invoke_async(&mut conn).await?;
        Ok(refreshed)
    }

    /// `XCLAIM`s these pending entries for `consumer` (if still idle for `min_idle`).
    pub async fn claim_ids(&self, shard: u16, consumer: &str, min_idle: Duration, ids: &[&str]) -> Result<Vec<Entry>> {
        let mut conn = self.conn();
        let reply: StreamClaimReply =
            self.claim_cmd("XCLAIM", shard, consumer, min_idle).arg(ids).query_async(&mut conn).await?;
        Ok(reply.ids.into_iter().map(|id| parse_entry(shard, id)).collect())
    }

    /// Which of these targets already carry an idempotency key (one pipeline).
    pub async fn delivered(&self, jobs: &[&Job]) -> Result<Vec<bool>> {
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        let cmds = jobs
            .iter()
            .map(|job| {
                let key = self.keys.delivered(job.notification_id, job.device_id);
                let mut exists = redis::cmd("EXISTS");
                exists.arg(&key);
                (key, exists)
            })
            .collect();
        Ok(self.conn().query_each(cmds).await?)
    }

    /// The entries every shard's stream holds, read or not (acknowledged entries are deleted,
    /// so this is the work handed to the workers and not finished). One pipeline.
    pub async fn entries_held(&self) -> Result<u64> {
        let cmds = self
            .keys
            .shard_ids()
            .map(|shard| {
                let stream = self.keys.stream(shard);
                let mut xlen = redis::cmd("XLEN");
                xlen.arg(&stream);
                (stream, xlen)
            })
            .collect();
        let lengths: Vec<u64> = self.conn().query_each(cmds).await?;
        Ok(lengths.iter().sum())
    }

    /// When the oldest work Redis still holds was enqueued: the first entry of any shard's
    /// stream (its id is its time), or the first due time in any delayed set, whichever is
    /// earlier; None when every stream and delayed set is empty. Pending entries are in the
    /// stream until acknowledged, so they count too. (One pipeline for every shard.)
    pub async fn oldest_live(&self) -> Result<Option<SystemTime>> {
        let mut cmds = Vec::new();
        for shard in self.keys.shard_ids() {
            let stream = self.keys.stream(shard);
            let mut first = redis::cmd("XRANGE");
            first.arg(&stream).arg("-").arg("+").arg("COUNT").arg(1);
            cmds.push((stream, first));
            let delayed = self.keys.delayed(shard);
            let mut due = redis::cmd("ZRANGE");
            due.arg(&delayed).arg(0).arg(0).arg("WITHSCORES");
            cmds.push((delayed, due));
        }
        let replies: Vec<Value> = self.conn().query_each(cmds).await?;
        let mut oldest: Option<u64> = None;
        for (i, reply) in replies.into_iter().enumerate() {
            let ms = if i % 2 == 0 {
                let entries: Vec<(String, BTreeMap<String, Value>)> =
                    redis::from_redis_value(reply).unwrap_or_default();
                entries.first().and_then(|(id, _)| id.split('-').next()?.parse::<u64>().ok())
            } else {
                let scored: Vec<(String, f64)> = redis::from_redis_value(reply).unwrap_or_default();
                scored.first().map(|(_, score)| score.max(0.0) as u64)
            };
            if let Some(ms) = ms {
                oldest = Some(oldest.map_or(ms, |o| o.min(ms)));
            }
        }
        Ok(oldest.map(|ms| UNIX_EPOCH + Duration::from_millis(ms)))
    }

    /// Moves up to `limit` due retries of one shard back to its stream; returns how many moved.
    pub async fn move_due(&self, shard: u16, limit: usize) -> Result<usize> {
        let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
        let mut conn = self.conn();
        let moved: usize = self
            .move_due
            .key(self.keys.delayed(shard))
            .key(self.keys.stream(shard))
            .arg(now_ms)
            .arg(limit)
            .arg(JOB_FIELD)
            .invoke_async(&mut conn)
            .await?;
        Ok(moved)
    }

    /// Stores one outcome batch in Redis. Per shard, the retries, dead letters, `XACK` and
    /// `XDEL` go in one `MULTI` (the shard's keys share a hash tag), so an entry is never
    /// acknowledged without its retry or dead letter being written, nor the reverse.
    pub async fn write_outcomes(&self, writes: &RedisWrites, day: &str) -> Result<()> {
        let mut conn = self.conn();
        if !writes.delivered.is_empty() || !writes.tally.is_empty() {
            let mut cmds = self.counter_cmds(&writes.tally, day);
            for (n, d) in &writes.delivered {
                let key = self.keys.delivered(*n, *d);
                let mut set = redis::cmd("SET");
                set.arg(&key).arg("1").arg("NX").arg("EX").arg(self.delivered_ttl.as_secs().max(1));
                cmds.push((key, set));
            }
            conn.query_each::<Value>(cmds).await?;
        }

        let mut by_shard: BTreeMap<u16, redis::Pipeline> = BTreeMap::new();
        for (shard, due, job) in &writes.retries {
            let score = due.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
            atomic_pipe(&mut by_shard, *shard)
                .cmd("ZADD")
                .arg(self.keys.delayed(*shard))
                .arg(score)
                .arg(job.to_json())
                .ignore();
        }
        for dl in &writes.dead_letters {
            atomic_pipe(&mut by_shard, dl.shard)
                .cmd("XADD")
                .arg(self.keys.dlq(dl.shard))
                .arg("MAXLEN")
                .arg("~")
                .arg(self.dlq_max_len)
                .arg("*")
                .arg("reason")
                .arg(dl.reason)
                .arg("provider")
                .arg(&dl.provider)
                .arg("attempts")
                .arg(dl.attempts)
                .arg("error")
                .arg(&dl.error)
                .arg(JOB_FIELD)
                .arg(&dl.job)
                .ignore();
        }
        let mut acks: BTreeMap<u16, Vec<&str>> = BTreeMap::new();
        for e in &writes.acks {
            acks.entry(e.shard).or_default().push(e.id.as_str());
        }
        for (shard, ids) in &acks {
            let stream = self.keys.stream(*shard);
            let p = atomic_pipe(&mut by_shard, *shard);
            p.cmd("XACK").arg(&stream).arg(GROUP).arg(ids).ignore();
            // Deleting what is acknowledged keeps the stream to unfinished work, which is the
            // only trimming the main stream ever gets.
            p.cmd("XDEL").arg(&stream).arg(ids).ignore();
        }
        for pipe in by_shard.values() {
            pipe.query_async::<()>(&mut conn).await?;
        }
        Ok(())
    }
}

fn atomic_pipe(pipes: &mut BTreeMap<u16, redis::Pipeline>, shard: u16) -> &mut redis::Pipeline {
    pipes.entry(shard).or_insert_with(|| {
        let mut p = redis::pipe();
        p.atomic();
        p
    })
}

/// One stream entry as the relay reads it: its `job` field decoded, or poison (with the raw
/// fields and why) that the outcome writer dead-letters. Never fails, never panics.
pub(crate) fn parse_entry(shard: u16, id: StreamId) -> Entry {
    let entry = EntryRef { shard, id: id.id };
    match id.map.get(JOB_FIELD) {
        Some(Value::BulkString(raw)) => match Job::from_json(raw) {
            Ok(job) => Entry::Job(entry, job),
            Err(reason) => Entry::Poison {
                entry,
                raw: String::from_utf8_lossy(raw).into_owned(),
                reason: reason.to_string(),
                target: Job::target_of(raw),
            },
        },
        _ => {
            let raw = format!("{:?}", id.map);
            Entry::Poison { entry, raw, reason: format!("entry has no `{JOB_FIELD}` field"), target: None }
        }
    }
}

impl Relay {
    /// Adds the counter increments of a batch to a pipeline (daily keys, with a TTL).
    /// The day's counter increments (with their TTL) as (key, command) pairs.
    fn counter_cmds(&self, tally: &Tally, day: &str) -> Vec<(String, redis::Cmd)> {
        let mut cmds = Vec::new();
        for (event, provider, n) in tally.iter() {
            let key = self.keys.counter(event, provider, day);
            let mut incr = redis::cmd("INCRBY");
            incr.arg(&key).arg(n);
            let mut expire = redis::cmd("EXPIRE");
            expire.arg(&key).arg(COUNTER_TTL.as_secs());
            cmds.push((key.clone(), incr));
            cmds.push((key, expire));
        }
        cmds
    }

    /// Acknowledges pending ids whose entries no longer exist (reported by `XAUTOCLAIM`).
    pub async fn ack_deleted(&self, shard: u16, ids: &[String]) -> Result<()> {
        let mut conn = self.conn();
        redis::cmd("XACK").arg(self.keys.stream(shard)).arg(GROUP).arg(ids).query_async::<()>(&mut conn).await?;
        Ok(())
    }
}

#[cfg(test)]
mod proptests {
    use super::*;
    use crate::job::proptests::job;
    use crate::job::MAX_ERROR_BYTES;
    use proptest::prelude::*;
    use std::collections::HashMap;

    /// Any value a Redis reply can carry, a few levels deep.
    fn redis_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Nil),
            Just(Value::Okay),
            any::<i64>().prop_map(Value::Int),
            any::<f64>().prop_map(Value::Double),
            any::<bool>().prop_map(Value::Boolean),
            any::<String>().prop_map(Value::SimpleString),
            prop::collection::vec(any::<u8>(), 0..64).prop_map(Value::BulkString),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Set),
                prop::collection::vec((inner.clone(), inner), 0..4).prop_map(Value::Map),
            ]
        })
    }

    fn entry(id: String, map: HashMap<String, Value>) -> StreamId {
        StreamId { id, map, ..Default::default() }
    }

    /// The entry keeps its place, and poison always says why (briefly) and keeps what it held.
    fn check(shard: u16, id: &str, parsed: &Entry) -> Result<(), TestCaseError> {
        let at = match parsed {
            Entry::Job(at, _) => at,
            Entry::Poison { entry, raw, reason, .. } => {
                prop_assert!(!reason.is_empty() && reason.len() <= MAX_ERROR_BYTES, "{}", reason);
                prop_assert!(!raw.is_empty());
                entry
            }
        };
        prop_assert_eq!(at, &EntryRef { shard, id: id.to_string() });
        Ok(())
    }

    proptest! {
        #[test]
        fn any_field_map_is_a_job_or_poison_with_a_reason(
            shard in any::<u16>(),
            id in any::<String>(),
            map in prop::collection::hash_map(prop_oneof![Just(JOB_FIELD.to_string()), any::<String>()], redis_value(), 0..4),
        ) {
            let expected = match map.get(JOB_FIELD) {
                Some(Value::BulkString(raw)) => Job::from_json(raw).ok(),
                _ => None,
            };
            let target = match map.get(JOB_FIELD) {
                Some(Value::BulkString(raw)) => Job::target_of(raw),
                _ => None,
            };
            let parsed = parse_entry(shard, entry(id.clone(), map));
            check(shard, &id, &parsed)?;
            match (parsed, expected) {
                (Entry::Job(_, job), Some(expected)) => prop_assert_eq!(job, expected),
                // Poison that still names its target fails that target; other poison only goes
                // to the dead-letter stream.
                (Entry::Poison { target: named, .. }, None) => prop_assert_eq!(named, target),
                (parsed, expected) => prop_assert!(false, "{:?} for {:?}", parsed, expected),
            }
        }

        #[test]
        fn any_bytes_in_the_job_field_are_a_job_or_poison_that_keeps_them(
            shard in any::<u16>(),
            raw in prop_oneof![
                prop::collection::vec(any::<u8>(), 0..256),
                job().prop_map(|j| j.to_json().into_bytes()),
                job().prop_map(|j| { let mut b = j.to_json().into_bytes(); b.truncate(b.len() / 2); b }),
            ],
        ) {
            let map = HashMap::from([(JOB_FIELD.to_string(), Value::BulkString(raw.clone()))]);
            let parsed = parse_entry(shard, entry("1-0".into(), map));
            if let Entry::Poison { raw: kept, reason, target, .. } = &parsed {
                prop_assert_eq!(kept, &String::from_utf8_lossy(&raw).into_owned());
                prop_assert!(reason.starts_with("malformed job: "), "{}", reason);
                prop_assert_eq!(*target, Job::target_of(&raw));
            }
            // The "empty raw" rule of `check` does not apply to an empty field.
            if !raw.is_empty() {
                check(shard, "1-0", &parsed)?;
            }
        }

        #[test]
        fn every_job_written_to_a_stream_is_read_back_as_itself(shard in any::<u16>(), job in job()) {
            let map = HashMap::from([(JOB_FIELD.to_string(), Value::BulkString(job.to_json().into_bytes()))]);
            match parse_entry(shard, entry("1700000000000-0".into(), map)) {
                Entry::Job(at, read) => {
                    prop_assert_eq!(at, EntryRef { shard, id: "1700000000000-0".into() });
                    prop_assert_eq!(read, job);
                }
                poison => prop_assert!(false, "{:?}", poison),
            }
        }
    }
}
