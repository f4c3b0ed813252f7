//! ClaimActor: takes over stream entries whose consumer died.
//!
//! An entry stays pending until its outcome is stored. A live consumer keeps the entries it is
//! working on fresh (the heartbeat, see [`crate::periodic::heartbeat`]), however long the send, the
//! outcome writer or Postgres takes; an entry idle longer than `claim.min_idle_ms` therefore
//! belongs to a consumer that died or stalled, and is claimed with `XAUTOCLAIM`. Claimed
//! entries are screened against Postgres and the idempotency keys before anything is sent
//! again. While Postgres is unreachable nothing is claimed: a claim could neither be screened
//! nor stored, and would only count against the entry's `claim.max_deliveries`.

use crate::error::Result;
use crate::events;
use crate::inflight::InFlight;
use crate::job::{Outcome, SendResult};
use crate::periodic::PeriodicJob;
use crate::pipeline::dispatcher::{Dispatcher, Screened};
use crate::runtime::deps::Deps;
use crate::settings::rules::{millis, within, within_ms, SettingsError, DAY_MS, HOUR_MS};
use serde::{Deserialize, Serialize};
use slog::{info, warn, Logger};
use std::future::Future;
use std::time::Duration;

/// Most entries one `XAUTOCLAIM` takes.
const CLAIM_BATCH: usize = 100;
/// Pending entries looked at per `XPENDING` page.
const PEL_PAGE: usize = 500;

/// `[claim]`: when and what to take over.
#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimSettings {
    /// Period of the XAUTOCLAIM pass (`claim.interval_ms`).
    #[serde(rename = "interval_ms", with = "millis")]
    pub interval: Duration,
    /// Idle time after which a pending entry is taken over (`claim.min_idle_ms`).
    #[serde(rename = "min_idle_ms", with = "millis")]
    pub min_idle: Duration,
    /// An entry handed out this many times without an outcome is dead-lettered (poison).
    pub max_deliveries: u32,
}

impl ClaimSettings {
    pub fn validate(&self) -> std::result::Result<(), SettingsError> {
        if self.max_deliveries < 2 {
            return Err(SettingsError::new(
                "claim.max_deliveries",
                "must be at least 2 (the first read counts as one)",
            ));
        }
        within("claim.max_deliveries", u64::from(self.max_deliveries), 2..=1000)?;
        within_ms("claim.interval_ms", self.interval, 10..=HOUR_MS)?;
        within_ms("claim.min_idle_ms", self.min_idle, 1..=DAY_MS)
    }
}

/// The claim actor's job: one pass over every shard, taking over what dead consumers left.
pub struct ClaimStale {
    dispatcher: Dispatcher,
    inflight: InFlight,
    /// Claimed entries become this consumer's.
    consumer: String,
    policy: ClaimSettings,
}

impl ClaimStale {
    /// Claims as `deps.consumer`, within the permits of `deps.inflight`, and hands what it
    /// claims to `dispatcher`.
    pub fn new(dispatcher: Dispatcher, deps: &Deps, policy: ClaimSettings) -> Self {
        ClaimStale { dispatcher, inflight: deps.inflight.clone(), consumer: deps.consumer.clone(), policy }
    }
}

impl PeriodicJob for ClaimStale {
    const NAME: &'static str = "claim";

    fn interval(&self) -> Option<Duration> {
        Some(self.policy.interval)
    }

    fn step(&self, log: &Logger) -> impl Future<Output = Result<usize>> + use<> {
        claim_all(self.dispatcher.clone(), self.inflight.clone(), self.consumer.clone(), self.policy, log.clone())
    }
}

/// Entries handed out `max_deliveries` times without ever getting an outcome (each consumer that
/// read them died or stalled) are not handed out again: they are claimed here and failed for
/// good — dead-lettered, and their target failed in Postgres with the reason. Every idle pending
/// entry of the shard is looked at, page by page, not only the oldest. Before failing one, the
/// same screen as a send runs: a target that is final in Postgres, known delivered by its key, or
/// withdrawn is settled as such instead, and if Postgres cannot be asked nothing is failed.
async fn retire_overdelivered(
    dispatcher: &Dispatcher,
    inflight: &InFlight,
    consumer: &str,
    policy: ClaimSettings,
    shard: u16,
    log: &Logger,
) -> Result<usize> {
    let mut after: Option<String> = None;
    let mut total = 0;
    loop {
        let page = dispatcher.relay.idle_pending(shard, policy.min_idle, after.as_deref(), PEL_PAGE).await?;
        let last_page = page.len() < PEL_PAGE;
        after = page.last().map(|(id, _)| id.clone());
        let over: Vec<(String, u64)> =
            page.into_iter().filter(|(_, n)| *n >= u64::from(policy.max_deliveries)).collect();
        if !over.is_empty() {
            total += retire(dispatcher, inflight, consumer, policy, shard, &over, log).await?;
        }
        if last_page || after.is_none() {
            return Ok(total);
        }
    }
}

async fn retire(
    dispatcher: &Dispatcher,
    inflight: &InFlight,
    consumer: &str,
    policy: ClaimSettings,
    shard: u16,
    found: &[(String, u64)],
    log: &Logger,
) -> Result<usize> {
    let permits = inflight.try_take(found.len());
    if permits == 0 {
        return Ok(0);
    }
    let ids: Vec<&str> = found[..permits].iter().map(|(id, _)| id.as_str()).collect();
    let entries = match dispatcher.relay.claim_ids(shard, consumer, policy.min_idle, &ids).await {
        Ok(entries) => entries,
        Err(e) => {
            inflight.release(permits);
            return Err(e);
        }
    };
    inflight.release(permits.saturating_sub(entries.len()));
    let n = entries.len();
    let Screened { mut done, fresh } = match dispatcher.screen(entries).await {
        Ok(screened) => screened,
        Err(e) => {
            inflight.release(n);
            return Err(e);
        }
    };
    for delivery in fresh {
        // A copy of this target in flight right here: dropped, or put back (Dispatcher::take).
        let Some(delivery) = dispatcher.take(delivery, &mut done) else { continue };
        let job = &delivery.job;
        let times = found.iter().find(|(id, _)| *id == delivery.entry.id).map(|(_, t)| *t).unwrap_or(0);
        let error = format!(
            "gave up: the stream entry was handed out {times} times without an outcome \
             (claim.max_deliveries = {})",
            policy.max_deliveries
        );
        warn!(log, "entry over claim.max_deliveries dead-lettered"; "event" => events::DLQ_PUSHED,
              "notification_id" => %job.notification_id, "trace_id" => &job.trace_id, "deliveries" => times);
        done.push(Outcome::Sent { delivery, result: SendResult::Permanent { error }, latency_ms: 0 });
    }
    dispatcher.record(done).await?;
    Ok(n)
}

/// One pass over every shard; returns how many entries were claimed.
async fn claim_all(
    dispatcher: Dispatcher,
    inflight: InFlight,
    consumer: String,
    policy: ClaimSettings,
    log: Logger,
) -> Result<usize> {
    // Claiming while Postgres is unreachable can only fail: skip the pass (the actor restarts
    // with backoff and tries again) instead of bumping every entry's delivery count.
    dispatcher.store.ping().await?;
    let relay = dispatcher.relay.clone();
    let mut total = 0;
    for shard in relay.keys().shard_ids() {
        total += retire_overdelivered(&dispatcher, &inflight, &consumer, policy, shard, &log).await?;
        let mut cursor = "0-0".to_string();
        loop {
            let permits = inflight.try_take(CLAIM_BATCH);
            if permits == 0 {
                return Ok(total);
            }
            let (next, entries, deleted) =
                match relay.autoclaim(shard, &consumer, policy.min_idle, &cursor, permits).await {
                    Ok(r) => r,
                    Err(e) => {
                        inflight.release(permits);
                        return Err(e);
                    }
                };
            inflight.release(permits.saturating_sub(entries.len()));
            if !deleted.is_empty() {
                // Pending ids whose entry is gone have nothing left to deliver.
                relay.ack_deleted(shard, &deleted).await?;
            }
            if !entries.is_empty() {
                info!(log, "claimed stale entries"; "event" => events::CLAIMED, "shard" => shard, "count" => entries.len());
                total += entries.len();
                // The dispatcher gives back the permits of whatever it cannot hand on.
                dispatcher.dispatch(entries).await?;
            }
            if next == "0-0" {
                break;
            }
            cursor = next;
        }
    }
    Ok(total)
}
