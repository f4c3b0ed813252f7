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
use crate::messages::ClaimStale;
use crate::registry::Envelope;
use crate::supervisor::{guarded, Lifecycle, Shutdown};
use actix::prelude::*;
use slog::info;
use std::time::Duration;

/// Most entries one `XAUTOCLAIM` takes.
const CLAIM_BATCH: usize = 100;

pub struct ClaimActor {
    life: Lifecycle,
    consumer: String,
    dispatcher: Dispatcher,
    inflight: InFlight,
    interval: Duration,
    min_idle: Duration,
    shutdown: Shutdown,
}

impl ClaimActor {
    pub fn new(
        life: Lifecycle,
        consumer: String,
        dispatcher: Dispatcher,
        inflight: InFlight,
        interval: Duration,
        min_idle: Duration,
        shutdown: Shutdown,
    ) -> Self {
        ClaimActor { life, consumer, dispatcher, inflight, interval, min_idle, shutdown }
    }
}

/// One pass over every shard; returns how many entries were claimed.
async fn claim_all(
    dispatcher: Dispatcher,
    inflight: InFlight,
    consumer: String,
    min_idle: Duration,
    log: slog::Logger,
) -> Result<usize> {
    let relay = dispatcher.relay.clone();
    let mut total = 0;
    for shard in relay.keys().shard_ids() {
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
        ctx.run_later(delay, |act, ctx| {
            let stats = act.life.stats.clone();
            ctx.run_interval(act.interval, move |act, ctx| {
                if !act.shutdown.is_triggered() && stats.mailbox_len() == 0 {
                    ctx.address().do_send(stats.envelope(ClaimStale));
                }
            });
        });
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        self.life.on_stopped();
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
            self.min_idle,
            self.life.log.clone(),
        );
        ctx.wait(guarded(fut).into_actor(self).map(|res, act, ctx| match res {
            Ok(_) => act.life.healthy(),
            Err(e) => {
                act.life.failed(&e);
                ctx.stop();
            }
        }));
    }
}
