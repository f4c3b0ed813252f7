//! The listener's drainers: each claims pending notifications batch by batch, fans them out to
//! delivery rows and `XADD`s their targets, until no pending row is left.
//!
//! Drainers run as tasks of their own, apart from the ListenerActor that starts them (at most
//! `listener.drainers` at once; `SKIP LOCKED` keeps them apart), so that a doorbell rung while
//! one drainer is in the middle of a batch starts the next claim at once on another, instead of
//! waiting for every drainer to finish. A drainer is never cancelled: a batch it committed as
//! `queued` always reaches its `XADD` (or its error), whatever happens to its siblings or to the
//! actor (an actor restart does not stop a task it spawned).
//!
//! Besides pending rows a drain looks for two things, but only when [`Hints`] say there may be
//! something: due scheduled rows to promote, and topic rows whose subscribers' rows are still to
//! be written. A busy table then costs one transaction per batch, not three round trips more.
//!
//! Between full batches a drainer waits while the streams hold `listener.max_backlog` entries:
//! a bulk insert of ten million rows is claimed as the workers get through it, not all at once
//! into Redis memory (a 10M run's streams ran millions of entries ahead, bench/README).

use crate::error::Result;
use crate::events::{self, Tally};
use crate::job::{shard_of, Provider};
use crate::relay::{DeadLetter, RedisWrites, Relay};
use crate::runtime::supervisor::Shutdown;
use crate::settings::InputLimits;
use crate::store::{FanOutRules, Settled, Store};
use chrono::{DateTime, Utc};
use slog::{info, Logger};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often a drainer waiting for room in the streams looks again: from the first value,
/// doubling up to the second (a sender frees room a batch at a time, every few milliseconds).
const BACKLOG_POLL_MIN: Duration = Duration::from_millis(5);
const BACKLOG_POLL_MAX: Duration = Duration::from_millis(100);

/// How long a drainer's claims may start where its previous batch did before one starts from
/// the oldest pending row again ([`Floor`]).
pub const FLOOR_LIFETIME: Duration = Duration::from_secs(1);

/// Where a drainer's next claim starts while it works through a backlog: the oldest
/// `created_at` of its previous full batch, so that the claim does not read again past the
/// index entries of every row claimed since vacuum last ran (`FanOutRules::from`). Rows older
/// than that can still turn up pending: committed late by a transaction that started earlier
/// (`created_at` is its start), promoted from the schedule, retried through the API, or skipped
/// while another transaction held their lock. So a claim starts from the oldest at least every
/// [`FLOOR_LIFETIME`], after a promotion, and whenever a claim from the floor comes back short,
/// before the drainer concludes that nothing is pending: such a row waits a second at most, and
/// none is left behind.
#[derive(Debug, Default)]
struct Floor {
    from: Option<(DateTime<Utc>, Instant)>,
}

impl Floor {
    /// Where the next claim starts (None: from the oldest).
    fn start(&mut self, now: Instant) -> Option<DateTime<Utc>> {
        if self.from.is_some_and(|(_, since)| now.duration_since(since) >= FLOOR_LIFETIME) {
            self.from = None;
        }
        self.from.map(|(at, _)| at)
    }

    /// A full batch was claimed: the next claim starts at its oldest row. The lifetime counts
    /// from the last claim that started from the oldest.
    fn full_batch(&mut self, oldest: Option<DateTime<Utc>>, now: Instant) {
        let since = self.from.map_or(now, |(_, since)| since);
        self.from = oldest.map(|at| (at, since));
    }

    /// The next claim starts from the oldest; returns whether this one did not.
    fn reset(&mut self) -> bool {
        self.from.take().is_some()
    }
}

/// What a drain may find besides pending rows. Shared by the listener and its drainers; a hint
/// set too often costs a query, a hint missed would leave rows waiting, so every source of such
/// rows sets one (the schedule poll, a claimed topic row, every sweep, which also runs at start).
#[derive(Debug, Default)]
pub struct Hints {
    /// Scheduled rows may be due: promote a batch before the next claim.
    due: AtomicBool,
    /// Bumped whenever a topic row may be waiting for its subscribers' rows (and after each batch
    /// of them written); back to zero once `expand_topic` found none and nothing bumped it
    /// meanwhile. A drainer that finds none because a sibling holds the topic row's lock may
    /// clear it; the sibling bumps it again when its batch is written.
    topics: AtomicU64,
}

impl Hints {
    /// Scheduled rows are due (the schedule poll saw one, or a sweep looks anyway).
    pub fn scheduled_due(&self) {
        self.due.store(true, Ordering::Release);
    }

    /// A topic row may be waiting for its subscribers' rows: claimed here, or left by a process
    /// that stopped in the middle of one (found by the next sweep).
    pub fn topics_waiting(&self) {
        self.topics.fetch_add(1, Ordering::AcqRel);
    }

    /// Takes the due hint: the caller promotes a batch (and sets it again if the batch was full).
    fn take_due(&self) -> bool {
        self.due.swap(false, Ordering::AcqRel)
    }

    fn due(&self) -> bool {
        self.due.load(Ordering::Acquire)
    }

    /// The topic hint's current value (0: no topic waits).
    fn topics(&self) -> u64 {
        self.topics.load(Ordering::Acquire)
    }

    /// `expand_topic` found no topic waiting: clears the hint unless it was bumped since `seen`
    /// (a sibling claimed a topic row in between).
    fn no_topic_since(&self, seen: u64) {
        let _ = self.topics.compare_exchange(seen, 0, Ordering::AcqRel, Ordering::Acquire);
    }
}

/// What a drainer needs; cloned into each one.
#[derive(Clone)]
pub struct Fanout {
    pub store: Store,
    pub relay: Relay,
    /// Notifications per fan-out transaction.
    pub batch: i64,
    /// Drainers claiming concurrently at most (`SKIP LOCKED` keeps them apart).
    pub drainers: usize,
    /// Stream entries above which a drainer waits before its next claim (0: no limit).
    pub max_backlog: u64,
    /// Caps on payload size and devices per user.
    pub limits: InputLimits,
    pub enabled: Arc<HashSet<Provider>>,
    pub hints: Arc<Hints>,
    pub shutdown: Shutdown,
    pub log: Logger,
}

impl Fanout {
    /// Drains batch after batch until no pending row is left (and no due row or topic batch
    /// either, where the hints say there may be one), or until the process shuts down (checked
    /// only between batches: a batch claimed is always enqueued or failed on its own). `more` is
    /// called after each full batch: there is probably more, and a sibling drainer may help.
    pub async fn drain_one(self, more: impl Fn()) -> Result<usize> {
        let mut total = 0;
        let mut floor = Floor::default();
        loop {
            if self.shutdown.is_triggered() {
                return Ok(total);
            }
            if self.hints.take_due() && self.promote_due().await? > 0 {
                // Promoted rows keep their `created_at`, older than the backlog's.
                floor.reset();
            }
            let enabled = |p| self.enabled.contains(&p);
            let from = floor.start(Instant::now());
            let rules = FanOutRules { batch: self.batch, from, limits: self.limits, enabled: &enabled };
            let out = self.store.fan_out_pending(rules).await?;
            if out.topics > 0 {
                self.hints.topics_waiting();
            }
            // Committed as `queued` before the XADD: if the XADD fails the sweep re-enqueues them.
            let mut tally = Tally::default();
            for job in &out.jobs {
                tally.add(events::ENQUEUE, Some(job.provider.as_str()), 1);
            }
            let (failed, expired) = Settled::count_unsent(&out.settled);
            tally.add(events::NOTIFICATION_FAILED, None, failed);
            tally.add(events::NOTIFICATION_EXPIRED, None, expired);
            self.relay.enqueue(&out.jobs, &tally, &events::today()).await?;
            self.dead_letter(&out.settled).await?;
            for job in &out.jobs {
                info!(self.log, "enqueued"; "event" => events::ENQUEUE, "notification_id" => %job.notification_id,
                      "trace_id" => &job.trace_id, "provider" => job.provider.as_str(), "device_id" => %job.device_id);
            }
            Settled::log_failures(&self.log, &out.settled);
            total += out.claimed;
            if out.claimed as i64 >= self.batch {
                floor.full_batch(out.oldest, Instant::now());
                // Room in the streams first: a sibling started now would claim at once.
                self.wait_for_room().await?;
                more();
                continue;
            }
            if floor.reset() {
                // Short from the floor: look once from the oldest before concluding.
                continue;
            }
            // Pending rows ran out: a topic's next batch of subscribers (which are pending rows
            // again), then whatever scheduled rows became due meanwhile.
            let seen = self.hints.topics();
            if seen > 0 {
                if self.expand_topic().await? {
                    // A sibling that found the topic row locked by this drainer (`SKIP LOCKED`)
                    // may have cleared the hint meanwhile: this topic is not finished yet.
                    self.hints.topics_waiting();
                    continue;
                }
                self.hints.no_topic_since(seen);
            }
            if !self.hints.due() {
                return Ok(total);
            }
        }
    }

    /// Waits while the streams hold `max_backlog` entries or more: the senders are that far
    /// behind, and the rest of a large backlog waits as `pending` rows (claimed oldest first,
    /// so nothing overtakes it). Asked only between full batches, so a quiet relay never asks;
    /// the wait ends at shutdown too (the next claim then does not happen).
    async fn wait_for_room(&self) -> Result<()> {
        if self.max_backlog == 0 {
            return Ok(());
        }
        let mut pause = BACKLOG_POLL_MIN;
        let mut waited = false;
        loop {
            let held = self.relay.entries_held().await?;
            if held < self.max_backlog {
                if waited {
                    info!(self.log, "claiming again"; "event" => events::BACKLOG_FULL, "entries" => held, "full" => false);
                }
                return Ok(());
            }
            if self.shutdown.is_triggered() {
                // The streams are still full and no claim follows: the rest stays pending for
                // the next process.
                if waited {
                    info!(self.log, "shutting down while the streams hold listener.max_backlog entries";
                          "event" => events::BACKLOG_FULL, "entries" => held, "full" => true, "shutdown" => true);
                }
                return Ok(());
            }
            if !waited {
                info!(self.log, "the streams hold listener.max_backlog entries: claiming waits for the senders";
                      "event" => events::BACKLOG_FULL, "entries" => held, "max_backlog" => self.max_backlog, "full" => true);
                waited = true;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(BACKLOG_POLL_MAX);
        }
    }

    /// Makes up to a batch of due scheduled notifications pending: one batch before each claim
    /// while there are more, so that a thousand rows due in the same second are sent batch by
    /// batch as they are promoted, not after all of them are.
    async fn promote_due(&self) -> Result<u64> {
        let due = self.store.promote_due(self.batch).await?;
        if due as i64 >= self.batch {
            self.hints.scheduled_due();
        }
        if due > 0 {
            info!(self.log, "scheduled notifications are due"; "event" => events::SCHEDULED_DUE, "count" => due);
            let mut tally = Tally::default();
            tally.add(events::SCHEDULED_DUE, None, due);
            self.relay.enqueue(&[], &tally, &events::today()).await?;
        }
        Ok(due)
    }

    /// Writes the next batch of a topic's subscriber rows, if a topic notification is being
    /// fanned out. Returns whether there was one.
    async fn expand_topic(&self) -> Result<bool> {
        let Some(progress) = self.store.expand_topic(self.batch).await? else { return Ok(false) };
        let mut tally = Tally::default();
        tally.add(events::TOPIC_FANOUT, None, progress.written);
        if let Some(settled) = &progress.settled {
            let (failed, expired) = Settled::count_unsent(std::slice::from_ref(settled));
            tally.add(events::NOTIFICATION_FAILED, None, failed);
            tally.add(events::NOTIFICATION_EXPIRED, None, expired);
            Settled::log_failures(&self.log, std::slice::from_ref(settled));
        }
        self.relay.enqueue(&[], &tally, &events::today()).await?;
        info!(self.log, "topic fan-out"; "event" => events::TOPIC_FANOUT, "notification_id" => %progress.notification_id,
              "topic" => &progress.topic, "count" => progress.written, "done" => progress.done);
        Ok(true)
    }

    /// Re-enqueues the stale targets whose copy Redis no longer holds; the caller then starts a
    /// drainer. Sets both hints: a sweep looks for everything a lost doorbell or a stopped
    /// process may have left.
    pub async fn requeue_stale(self, stale_after: Duration) -> Result<usize> {
        self.hints.scheduled_due();
        self.hints.topics_waiting();
        // Anything enqueued after the oldest work Redis still holds may be waiting there unread.
        let live_since = self.relay.oldest_live().await?;
        let mut total = 0;
        loop {
            let (jobs, settled) = self.store.requeue_stale(stale_after, live_since, self.batch, self.limits).await?;
            Settled::log_failures(&self.log, &settled);
            let mut tally = Tally::default();
            tally.add(events::REQUEUED, None, jobs.len() as u64);
            let (failed, expired) = Settled::count_unsent(&settled);
            tally.add(events::NOTIFICATION_FAILED, None, failed);
            tally.add(events::NOTIFICATION_EXPIRED, None, expired);
            self.relay.enqueue(&jobs, &tally, &events::today()).await?;
            self.dead_letter(&settled).await?;
            for job in &jobs {
                info!(self.log, "re-enqueued a stale target"; "event" => events::REQUEUED,
                      "notification_id" => %job.notification_id, "trace_id" => &job.trace_id,
                      "provider" => job.provider.as_str(), "attempt" => job.attempt_number());
            }
            total += jobs.len();
            if (jobs.len() as i64) < self.batch {
                return Ok(total);
            }
        }
    }

    /// Notifications that failed without a send (a malformed row, no device…) get a dead letter
    /// too, so that `GET /admin/dlq` shows every failure. It names the notification; the row in
    /// Postgres holds the rest.
    async fn dead_letter(&self, settled: &[Settled]) -> Result<()> {
        let mut writes = RedisWrites::default();
        for s in settled.iter().filter(|s| s.failed()) {
            let job = serde_json::json!({"notification_id": s.notification_id, "trace_id": s.trace_id});
            writes.dead_letters.push(DeadLetter {
                shard: shard_of(s.notification_id, self.relay.keys().shards()),
                reason: "rejected",
                provider: String::new(),
                attempts: 0,
                error: s.last_error.clone().unwrap_or_default(),
                job: job.to_string(),
            });
        }
        if writes.dead_letters.is_empty() {
            return Ok(());
        }
        writes.tally.add(events::DLQ_PUSHED, None, writes.dead_letters.len() as u64);
        self.relay.write_outcomes(&writes, &events::today()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).expect("a valid time")
    }

    #[test]
    fn a_backlogs_claims_start_at_the_previous_batch_and_from_the_oldest_every_floor_lifetime() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut floor = Floor::default();
        assert_eq!(floor.start(t0), None, "the first claim starts from the oldest");
        floor.full_batch(Some(at(1)), t0);
        assert_eq!(floor.start(ms(100)), Some(at(1)));
        floor.full_batch(Some(at(2)), ms(200));
        assert_eq!(floor.start(ms(999)), Some(at(2)));
        // The lifetime counts from the claim that started from the oldest, not from the last
        // batch: a steady backlog still gets a claim from the oldest every FLOOR_LIFETIME.
        assert_eq!(floor.start(t0 + FLOOR_LIFETIME), None);
        floor.full_batch(Some(at(3)), ms(1_000));
        assert_eq!(floor.start(ms(1_500)), Some(at(3)));
        assert_eq!(floor.start(ms(2_000)), None);
    }

    #[test]
    fn a_short_claim_from_the_floor_is_followed_by_one_from_the_oldest() {
        let now = Instant::now();
        let mut floor = Floor::default();
        floor.full_batch(Some(at(1)), now);
        assert!(floor.reset(), "the claim that came back short started from the floor");
        assert_eq!(floor.start(now), None);
        assert!(!floor.reset(), "a short claim from the oldest: nothing is pending");
        // A full batch whose rows had no readable created_at leaves no floor.
        floor.full_batch(None, now);
        assert_eq!(floor.start(now), None);
    }
}
