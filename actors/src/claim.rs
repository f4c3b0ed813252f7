//! ClaimActor: takes over stream entries whose consumer died.
//!
//! An entry stays pending until its outcome is stored; if it has been idle longer than
//! `claim.min_idle_ms` (which start-up checks is longer than any provider timeout, so a slow
//! send is never taken over while it is still running) its consumer is presumed dead and the
//! entry is claimed with `XAUTOCLAIM`. Claimed entries are checked against the idempotency keys
//! and Postgres before anything is sent again.

use crate::dispatcher::Dispatcher;
use crate::error::Result;
use crate::events;
use crate::inflight::InFlight;
use crate::job::{Delivery, Outcome, SendResult};
use crate::messages::ClaimStale;
use crate::registry::Envelope;
use crate::relay::Entry;
use crate::supervisor::{tick, Lifecycle, Shutdown, Supervisable};
use actix::prelude::*;
use slog::{info, warn};
use std::time::Duration;

/// Most entries one `XAUTOCLAIM` takes.
const CLAIM_BATCH: usize = 100;

/// `claim.*`: when and what to take over.
#[derive(Debug, Clone, Copy)]
pub struct ClaimPolicy {
    pub interval: Duration,
    pub min_idle: Duration,
    pub max_deliveries: u32,
}

pub struct ClaimActor {
    life: Lifecycle,
    consumer: String,
    dispatcher: Dispatcher,
    inflight: InFlight,
    policy: ClaimPolicy,
    shutdown: Shutdown,
}

impl ClaimActor {
    pub fn new(
        life: Lifecycle,
        consumer: String,
        dispatcher: Dispatcher,
        inflight: InFlight,
        policy: ClaimPolicy,
        shutdown: Shutdown,
    ) -> Self {
        ClaimActor { life, consumer, dispatcher, inflight, policy, shutdown }
    }
}

/// Entries handed out `max_deliveries` times without ever getting an outcome (each consumer that
/// read them died or stalled) are not handed out again: they are claimed here and failed for
/// good — dead-lettered, and their target failed in Postgres with the reason.
async fn retire_overdelivered(
    dispatcher: &Dispatcher,
    inflight: &InFlight,
    consumer: &str,
    min_idle: Duration,
    max_deliveries: u32,
    shard: u16,
    log: &slog::Logger,
) -> Result<usize> {
    let relay = &dispatcher.relay;
    let found = relay.overdelivered(shard, min_idle, max_deliveries, CLAIM_BATCH).await?;
    if found.is_empty() {
        return Ok(0);
    }
    let permits = inflight.try_take(found.len());
    if permits == 0 {
        return Ok(0);
    }
    let ids: Vec<&str> = found[..permits].iter().map(|(id, _)| id.as_str()).collect();
    let entries = match relay.claim_ids(shard, consumer, min_idle, &ids).await {
        Ok(entries) => entries,
        Err(e) => {
            inflight.release(permits);
            return Err(e);
        }
    };
    inflight.release(permits.saturating_sub(entries.len()));
    let n = entries.len();
    let outcomes: Vec<Outcome> = entries
        .into_iter()
        .map(|entry| match entry {
            // A copy of this target is being sent right here: that copy's outcome will count.
            Entry::Job(entry, job) if !inflight.claim_target(job.target()) => {
                Outcome::Duplicate { delivery: Delivery { job, entry } }
            }
            Entry::Job(entry, job) => {
                let times = found.iter().find(|(id, _)| *id == entry.id).map(|(_, t)| *t).unwrap_or(0);
                let error = format!(
                    "gave up: the stream entry was handed out {times} times without an outcome \
                     (claim.max_deliveries = {max_deliveries})"
                );
                warn!(log, "entry over claim.max_deliveries dead-lettered"; "event" => events::DLQ_PUSHED,
                      "notification_id" => %job.notification_id, "trace_id" => &job.trace_id, "deliveries" => times);
                Outcome::Sent {
                    delivery: Delivery { job, entry },
                    result: SendResult::Permanent { error },
                    latency_ms: 0,
                }
            }
            Entry::Poison { entry, raw, reason, target } => Outcome::Poison { entry, raw, reason, target },
        })
        .collect();
    if let Err(e) = dispatcher.record(outcomes).await {
        inflight.release(n);
        return Err(e);
    }
    Ok(n)
}

/// One pass over every shard; returns how many entries were claimed.
async fn claim_all(
    dispatcher: Dispatcher,
    inflight: InFlight,
    consumer: String,
    min_idle: Duration,
    max_deliveries: u32,
    log: slog::Logger,
) -> Result<usize> {
    let relay = dispatcher.relay.clone();
    let mut total = 0;
    for shard in relay.keys().shard_ids() {
        total += retire_overdelivered(&dispatcher, &inflight, &consumer, min_idle, max_deliveries, shard, &log).await?;
        let mut cursor = "0-0".to_string();
        loop {
            let permits = inflight.try_take(CLAIM_BATCH);
            if permits == 0 {
                return Ok(total);
            }
            let (next, entries, deleted) = match relay.autoclaim(shard, &consumer, min_idle, &cursor, permits).await {
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
            let n = entries.len();
            if n > 0 {
                info!(log, "claimed stale entries"; "event" => events::CLAIMED, "shard" => shard, "count" => n);
                total += n;
                if let Err(e) = dispatcher.dispatch(entries, true).await {
                    inflight.release(n);
                    return Err(e);
                }
            }
            if next == "0-0" {
                break;
            }
            cursor = next;
        }
    }
    Ok(total)
}

impl Actor for ClaimActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(self.life.stats.mailbox_capacity);
        let delay = self.life.on_started();
        tick(ctx, delay, self.policy.interval, self.life.stats.clone(), self.shutdown.clone(), || ClaimStale);
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        self.life.on_stopped();
    }
}

impl Supervisable for ClaimActor {
    fn life(&mut self) -> &mut Lifecycle {
        &mut self.life
    }
}

impl Supervised for ClaimActor {
    fn restarting(&mut self, _: &mut Context<Self>) {
        self.life.on_restarting();
    }
}

impl Handler<Envelope<ClaimStale>> for ClaimActor {
    type Result = ();

    fn handle(&mut self, _: Envelope<ClaimStale>, ctx: &mut Context<Self>) {
        let fut = claim_all(
            self.dispatcher.clone(),
            self.inflight.clone(),
            self.consumer.clone(),
            self.policy.min_idle,
            self.policy.max_deliveries,
            self.life.log.clone(),
        );
        self.run_step(ctx, fut);
    }
}
