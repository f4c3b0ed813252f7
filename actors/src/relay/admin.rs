//! What operators ask of Redis: queue figures per shard, the dead letters, the daily counters,
//! and the repairs of the admin command line (moving stuck entries, resetting the group).

use super::conn::RelayConn;
use super::{parse_entry, Entry, Relay};
use crate::error::Result;
use crate::events;
use crate::job::{EntryRef, Job, Provider};
use crate::keys::{GROUP, JOB_FIELD};
use redis::streams::{StreamId, StreamInfoGroup, StreamInfoGroupsReply, StreamRangeReply};
use redis::Value;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// One shard's queues.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ShardQueues {
    pub shard: u16,
    /// Entries in the stream: work not finished (entries are deleted once their outcome is stored).
    pub stream_length: u64,
    /// Entries handed to a consumer and not yet acknowledged.
    pub pending: u64,
    /// Entries not yet handed to any consumer (None if Redis cannot tell).
    pub lag: Option<u64>,
    /// Retries waiting for their time.
    pub delayed: u64,
    pub dlq_length: u64,
    /// Expo tickets of this shard's notifications whose receipt is still to be fetched (counted
    /// in Postgres, where receipts are due).
    pub receipts_pending: u64,
}

/// One shard's backlog, as the alert check reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct ShardBacklog {
    pub shard: u16,
    /// Dead letters held (the stream is capped near `redis.dlq_max_len`).
    pub dlq_length: u64,
    /// Dead letters ever written to the shard's stream (Redis's `entries-added`, which trimming
    /// does not lower); None while the stream holds none.
    pub dlq_added: Option<u64>,
    /// Entries no consumer has read yet.
    pub unread: u64,
    /// When the oldest of them was written (its entry id's time); None when there are none.
    pub oldest_unread: Option<SystemTime>,
}

/// A dead letter as operators see it.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeadLetterEntry {
    /// `<shard>:<entry id>`, what `POST /admin/dlq/requeue` takes.
    pub id: String,
    pub shard: u16,
    pub entry_id: String,
    pub reason: String,
    pub provider: String,
    pub attempts: u32,
    pub error: String,
    /// The job as written (JSON when it parses, else the raw text).
    pub job: serde_json::Value,
}

impl DeadLetterEntry {
    /// Parses `<shard>:<entry id>`.
    /// Decimal digits only (`str::parse` would also take a leading `+`).
    pub fn parse_id(id: &str) -> Option<(u16, String)> {
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        let (shard, entry) = id.split_once(':')?;
        let (ms, seq) = entry.split_once('-')?;
        (digits(shard) && digits(ms) && digits(seq)).then_some(())?;
        (ms.parse::<u64>().is_ok() && seq.parse::<u64>().is_ok()).then_some(())?;
        Some((shard.parse().ok()?, entry.to_string()))
    }

    /// Whether two `<shard>:<entry id>` name the same dead letter (`0:007-1` is `0:7-1`).
    pub fn same_id(a: &str, b: &str) -> bool {
        let key = |id: &str| DeadLetterEntry::parse_id(id).map(|(shard, entry)| (shard, entry_order(&entry)));
        key(a).is_some() && key(a) == key(b)
    }

    /// The job, if the entry holds one.
    pub fn parsed_job(&self) -> Option<Job> {
        serde_json::from_value(self.job.clone()).ok()
    }

    fn from_stream(shard: u16, id: StreamId) -> DeadLetterEntry {
        let field = |name: &str| -> String {
            id.map.get(name).and_then(|v| redis::from_redis_value::<String>(v.clone()).ok()).unwrap_or_default()
        };
        let raw = field(JOB_FIELD);
        DeadLetterEntry {
            id: format!("{shard}:{}", id.id),
            shard,
            entry_id: id.id.clone(),
            reason: field("reason"),
            provider: field("provider"),
            attempts: field("attempts").parse().unwrap_or(0),
            error: field("error"),
            job: serde_json::from_str(&raw).unwrap_or(serde_json::Value::String(raw)),
        }
    }
}

/// The counters of one day: event (or `event:provider`) → count.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DayCounters {
    /// `YYYY-MM-DD`
    pub date: String,
    pub events: BTreeMap<String, u64>,
}

impl Relay {
    /// Every shard's queue figures in Redis, in one pipeline. `receipts_pending` is left 0: receipts
    /// are due in Postgres, counted by [`crate::store::Store::receipts_pending`].
    pub async fn queues(&self) -> Result<Vec<ShardQueues>> {
        let mut cmds = Vec::new();
        for shard in self.keys.shard_ids() {
            for (command, key) in
                [("XLEN", self.keys.stream(shard)), ("ZCARD", self.keys.delayed(shard)), ("XLEN", self.keys.dlq(shard))]
            {
                let mut cmd = redis::cmd(command);
                cmd.arg(&key);
                cmds.push((key, cmd));
            }
        }
        let mut conn = self.conn();
        let counts: Vec<u64> = conn.query_each(cmds).await?;
        let mut out = Vec::new();
        for (i, shard) in self.keys.shard_ids().enumerate() {
            let group = self.group_info(&mut conn, shard).await;
            let c = &counts[i * 3..i * 3 + 3];
            out.push(ShardQueues {
                shard,
                stream_length: c[0],
                pending: group.as_ref().map_or(0, |g| g.pending as u64),
                lag: group.and_then(|g| g.lag.map(|l| l as u64)),
                delayed: c[1],
                dlq_length: c[2],
                receipts_pending: 0,
            });
        }
        Ok(out)
    }

    /// The consumer group's figures on one shard's stream; None when the stream or the group
    /// does not exist (yet), or Redis cannot tell.
    async fn group_info(&self, conn: &mut RelayConn, shard: u16) -> Option<StreamInfoGroup> {
        let groups: Result<StreamInfoGroupsReply, _> =
            redis::cmd("XINFO").arg("GROUPS").arg(self.keys.stream(shard)).query_async(conn).await;
        groups.ok()?.groups.into_iter().find(|g| g.name == GROUP)
    }

    /// What the alert check ([`crate::periodic::alerts`]) reads of every shard: the dead
    /// letters held and ever written, and the entries no consumer has read yet with the time the
    /// oldest of them was written. Two pipelined round trips whatever the number of shards, plus one
    /// `XINFO GROUPS` per shard.
    pub async fn backlog(&self) -> Result<Vec<ShardBacklog>> {
        let mut conn = self.conn();
        let mut lengths = Vec::new();
        for shard in self.keys.shard_ids() {
            for key in [self.keys.dlq(shard), self.keys.stream(shard)] {
                let mut xlen = redis::cmd("XLEN");
                xlen.arg(&key);
                lengths.push((key, xlen));
            }
        }
        let lengths: Vec<u64> = conn.query_each(lengths).await?;
        let mut out = Vec::new();
        for (i, shard) in self.keys.shard_ids().enumerate() {
            let (dlq_length, stream_length) = (lengths[2 * i], lengths[2 * i + 1]);
            let group = self.group_info(&mut conn, shard).await;
            // Acknowledged entries are deleted, so what the stream holds is either pending or
            // not read yet: the difference stands in when Redis cannot count the lag itself.
            let unread = match &group {
                Some(g) => g.lag.map_or(stream_length.saturating_sub(g.pending as u64), |l| l as u64),
                None => stream_length,
            };
            let after = group.map_or_else(|| "0-0".to_string(), |g| g.last_delivered_id);
            out.push((ShardBacklog { shard, dlq_length, dlq_added: None, unread, oldest_unread: None }, after));
        }
        // `XINFO STREAM` fails on a key that does not exist: only the dead-letter streams that
        // hold letters are asked (a stream is never removed by trimming or deleting entries).
        let mut asks = Vec::new();
        for (b, after) in &out {
            if b.dlq_length > 0 {
                let mut info = redis::cmd("XINFO");
                info.arg("STREAM").arg(self.keys.dlq(b.shard));
                asks.push((self.keys.dlq(b.shard), info));
            }
            if b.unread > 0 {
                let mut first = redis::cmd("XRANGE");
                first.arg(self.keys.stream(b.shard)).arg(format!("({after}")).arg("+").arg("COUNT").arg(1);
                asks.push((self.keys.stream(b.shard), first));
            }
        }
        let mut replies = conn.query_each::<Value>(asks).await?.into_iter();
        let mut backlog = Vec::new();
        for (mut b, _) in out {
            if b.dlq_length > 0 {
                let info: HashMap<String, Value> = parse(replies.next())?;
                b.dlq_added = info.get("entries-added").and_then(|v| redis::from_redis_value::<u64>(v.clone()).ok());
            }
            if b.unread > 0 {
                let first: StreamRangeReply = parse(replies.next())?;
                b.oldest_unread = first.ids.first().and_then(|e| entry_time(&e.id));
            }
            backlog.push(b);
        }
        Ok(backlog)
    }

    /// The newest `limit` dead letters of all shards, newest first.
    ///
    /// A merge of the shards' DLQ streams, each read newest first in pages of about
    /// `limit / shards`: what is held at any time is bounded by `limit` plus one page per shard
    /// (about twice `limit`, plus the number of shards), never `limit` per shard, however many
    /// shards there are and wherever the newest letters are.
    pub async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetterEntry>> {
        Ok(self.dead_letters_counted(limit).await?.0)
    }

    /// [`Relay::dead_letters`], and how many entries it read from Redis to find them.
    pub async fn dead_letters_counted(&self, limit: usize) -> Result<(Vec<DeadLetterEntry>, usize)> {
        let shards = usize::from(self.keys.shards());
        if limit == 0 || shards == 0 {
            return Ok((Vec::new(), 0));
        }
        let page = limit.div_ceil(shards).max(1);
        let mut conn = self.conn();
        // Every shard's first page in one round trip (grouped by slot on a cluster).
        let first: Vec<(String, redis::Cmd)> = self
            .keys
            .shard_ids()
            .map(|shard| {
                let key = self.keys.dlq(shard);
                let mut cmd = redis::cmd("XREVRANGE");
                cmd.arg(&key).arg("+").arg("-").arg("COUNT").arg(page);
                (key, cmd)
            })
            .collect();
        let replies: Vec<StreamRangeReply> = conn.query_each(first).await?;
        let mut read: usize = replies.iter().map(|r| r.ids.len()).sum();
        let mut heads: Vec<ShardPage> =
            self.keys.shard_ids().zip(replies).map(|(shard, reply)| ShardPage::new(shard, reply.ids, page)).collect();
        let mut out = Vec::with_capacity(limit.min(10_000));
        while out.len() < limit {
            // A shard whose page is used up may still hold the newest letter: read on first.
            for head in heads.iter_mut().filter(|h| h.entries.is_empty() && !h.exhausted) {
                let Some(last) = head.last_id.clone() else {
                    head.exhausted = true;
                    continue;
                };
                let reply: StreamRangeReply = redis::cmd("XREVRANGE")
                    .arg(self.keys.dlq(head.shard))
                    .arg(format!("({last}"))
                    .arg("-")
                    .arg("COUNT")
                    .arg(page)
                    .query_async(&mut conn)
                    .await?;
                read += reply.ids.len();
                head.refill(reply.ids, page);
            }
            let newest = heads
                .iter_mut()
                .filter(|h| !h.entries.is_empty())
                .max_by_key(|h| h.entries.front().map(|e| entry_order(&e.id)));
            match newest.and_then(|h| h.entries.pop_front().map(|e| (h.shard, e))) {
                Some((shard, entry)) => out.push(DeadLetterEntry::from_stream(shard, entry)),
                None => break,
            }
        }
        Ok((out, read))
    }

    /// The dead letters with these ids (`<shard>:<entry id>`); unknown ids are left out.
    pub async fn dead_letters_by_id(&self, ids: &[(u16, String)]) -> Result<Vec<DeadLetterEntry>> {
        let mut conn = self.conn();
        let mut out = Vec::new();
        for (shard, id) in ids {
            if *shard >= self.keys.shards() {
                continue;
            }
            let reply: StreamRangeReply =
                redis::cmd("XRANGE").arg(self.keys.dlq(*shard)).arg(id).arg(id).query_async(&mut conn).await?;
            out.extend(reply.ids.into_iter().map(|e| DeadLetterEntry::from_stream(*shard, e)));
        }
        Ok(out)
    }

    /// Writes the jobs of dead letters back to their streams as fresh first attempts and removes
    /// the dead letters, atomically per shard.
    pub async fn requeue_dead_letters(&self, letters: &[(DeadLetterEntry, Job)]) -> Result<()> {
        let mut by_shard: BTreeMap<u16, redis::Pipeline> = BTreeMap::new();
        let mut moved_shard = Vec::new();
        for (letter, job) in letters {
            let mut job = job.clone();
            job.attempt = 0;
            job.requeued = true;
            // A fresh first attempt: `retry.max_age_ms` counts from now (as the reset row's does).
            job.queued_ms = crate::job::now_ms();
            let shard = job.shard(self.keys.shards());
            if shard != letter.shard {
                // `redis.shards` changed since: two keys in two slots, written one after the other.
                moved_shard.push((letter, job, shard));
                continue;
            }
            let pipe = by_shard.entry(shard).or_insert_with(|| {
                let mut p = redis::pipe();
                p.atomic();
                p
            });
            pipe.cmd("XADD").arg(self.keys.stream(shard)).arg("*").arg(JOB_FIELD).arg(job.to_json()).ignore();
            pipe.cmd("XDEL").arg(self.keys.dlq(letter.shard)).arg(&letter.entry_id).ignore();
        }
        let mut conn = self.conn();
        for pipe in by_shard.values() {
            pipe.query_async::<()>(&mut conn).await?;
        }
        for (letter, job, shard) in moved_shard {
            redis::cmd("XADD")
                .arg(self.keys.stream(shard))
                .arg("*")
                .arg(JOB_FIELD)
                .arg(job.to_json())
                .query_async::<()>(&mut conn)
                .await?;
            redis::cmd("XDEL")
                .arg(self.keys.dlq(letter.shard))
                .arg(&letter.entry_id)
                .query_async::<()>(&mut conn)
                .await?;
        }
        Ok(())
    }

    /// The daily counters of the last `days` days (today first), read with one MGET per day.
    pub async fn counters(&self, days: u32) -> Result<Vec<DayCounters>> {
        let mut conn = self.conn();
        let mut out = Vec::new();
        let today = chrono::Utc::now().date_naive();
        for back in 0..days {
            let date = today - chrono::Duration::days(i64::from(back));
            let day = date.format("%Y%m%d").to_string();
            let mut names = Vec::new();
            let mut cmds = Vec::new();
            for event in events::ALL {
                for provider in std::iter::once(None).chain(Provider::ALL.into_iter().map(Some)) {
                    let key = self.keys.counter(event, provider.map(Provider::as_str), &day);
                    let mut get = redis::cmd("GET");
                    get.arg(&key);
                    cmds.push((key, get));
                    names.push(match provider {
                        Some(p) => format!("{event}:{p}"),
                        None => event.to_string(),
                    });
                }
            }
            let values: Vec<Option<u64>> = conn.query_each(cmds).await?;
            let events =
                names.into_iter().zip(values).filter_map(|(n, v)| v.filter(|&v| v > 0).map(|v| (n, v))).collect();
            out.push(DayCounters { date: date.format("%Y-%m-%d").to_string(), events });
        }
        Ok(out)
    }

    /// Moves entries pending for at least `min_idle` (their consumer died or hangs) back into
    /// the stream as new entries, so any live worker takes them; returns how many moved.
    /// The copies are marked `requeued`, so a target that was delivered meanwhile is not sent.
    pub async fn release_stuck(&self, min_idle: Duration, consumer: &str) -> Result<usize> {
        let mut moved = 0;
        for shard in self.keys.shard_ids() {
            let mut start = "0-0".to_string();
            loop {
                let (next, entries, deleted) = self.autoclaim(shard, consumer, min_idle, &start, 500).await?;
                let mut pipe = redis::pipe();
                pipe.atomic();
                let stream = self.keys.stream(shard);
                for entry in &entries {
                    match entry {
                        Entry::Job(at, job) => {
                            let mut job = job.clone();
                            job.requeued = true;
                            pipe.cmd("XADD").arg(&stream).arg("*").arg(JOB_FIELD).arg(job.to_json()).ignore();
                            ack_delete(&mut pipe, &stream, at);
                        }
                        // Garbage stays pending: the claim actor dead-letters it with its reason.
                        Entry::Poison { .. } => {}
                    }
                }
                for id in &deleted {
                    pipe.cmd("XACK").arg(&stream).arg(GROUP).arg(id).ignore();
                }
                pipe.query_async::<()>(&mut self.conn()).await?;
                moved += entries.iter().filter(|e| matches!(e, Entry::Job(..))).count();
                if next == "0-0" {
                    break;
                }
                start = next;
            }
        }
        Ok(moved)
    }

    /// Destroys and recreates the consumer group of every shard at `0`: every entry still in the
    /// streams is handed out again (the idempotency keys keep delivered targets from being sent
    /// twice). Returns the entries that were pending.
    pub async fn reset_groups(&self) -> Result<u64> {
        let mut conn = self.conn();
        let mut pending = 0;
        for q in self.queues().await? {
            pending += q.pending;
        }
        for shard in self.keys.shard_ids() {
            let destroyed: Result<(), _> = redis::cmd("XGROUP")
                .arg("DESTROY")
                .arg(self.keys.stream(shard))
                .arg(GROUP)
                .query_async(&mut conn)
                .await;
            if let Err(e) = destroyed {
                if e.code() != Some("ERR") {
                    return Err(e.into());
                }
            }
        }
        self.ensure_groups().await?;
        Ok(pending)
    }

    /// Raw stream entries of one shard, for tests and inspection.
    pub async fn stream_entries(&self, shard: u16, count: usize) -> Result<Vec<Entry>> {
        let reply: StreamRangeReply = redis::cmd("XRANGE")
            .arg(self.keys.stream(shard))
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(count)
            .query_async(&mut self.conn())
            .await?;
        Ok(reply.ids.into_iter().map(|id| parse_entry(shard, id)).collect())
    }
}

/// What has been read of one shard's DLQ and not yet merged.
struct ShardPage {
    shard: u16,
    entries: std::collections::VecDeque<StreamId>,
    /// The oldest id read so far: the next page starts below it.
    last_id: Option<String>,
    exhausted: bool,
}

impl ShardPage {
    fn new(shard: u16, ids: Vec<StreamId>, page: usize) -> Self {
        let mut p = ShardPage { shard, entries: Default::default(), last_id: None, exhausted: false };
        p.refill(ids, page);
        p
    }

    fn refill(&mut self, ids: Vec<StreamId>, page: usize) {
        self.exhausted = ids.len() < page;
        if let Some(last) = ids.last() {
            self.last_id = Some(last.id.clone());
        }
        self.entries.extend(ids);
    }
}

fn ack_delete(pipe: &mut redis::Pipeline, stream: &str, at: &EntryRef) {
    pipe.cmd("XACK").arg(stream).arg(GROUP).arg(&at.id).ignore();
    pipe.cmd("XDEL").arg(stream).arg(&at.id).ignore();
}

/// Stream ids order by (ms, seq).
fn entry_order(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}

/// A reply as `T`; a missing one reads as nil.
fn parse<T: redis::FromRedisValue>(reply: Option<Value>) -> Result<T> {
    Ok(redis::from_redis_value(reply.unwrap_or(Value::Nil)).map_err(redis::RedisError::from)?)
}

/// When a stream entry was written: the time in its id (`<ms>-<seq>`).
pub(super) fn entry_time(id: &str) -> Option<SystemTime> {
    let ms = id.split_once('-').map_or(id, |(ms, _)| ms);
    ms.parse().ok().map(|ms| UNIX_EPOCH + Duration::from_millis(ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_letter_ids_compare_by_their_numbers() {
        assert!(DeadLetterEntry::same_id("0:007-1", "0:7-1"));
        assert!(!DeadLetterEntry::same_id("0:7-1", "1:7-1") && !DeadLetterEntry::same_id("0:7-1", "0:7-2"));
        assert!(!DeadLetterEntry::same_id("junk", "junk"), "what names no letter is no letter");
    }

    #[test]
    fn dead_letter_ids_name_a_shard_and_an_entry() {
        assert_eq!(DeadLetterEntry::parse_id("3:1700000000000-7"), Some((3, "1700000000000-7".into())));
        for bad in ["", "3", "x:1-1", "3:abc", "3:1-x", "-1:1-1", "3:1", "+3:1-1", "3:+1-1", "3:1-+1", "70000:1-1"] {
            assert_eq!(DeadLetterEntry::parse_id(bad), None, "{bad}");
        }
    }

    #[test]
    fn entry_ids_sort_numerically() {
        assert!(entry_order("10-0") > entry_order("9-5"));
        assert!(entry_order("9-10") > entry_order("9-9"));
    }
}
