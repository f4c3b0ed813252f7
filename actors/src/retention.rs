//! RetentionActor: deletes final notifications (delivered or failed) older than
//! `retention.final_after_days`, with their `delivery` and `notification_failed` rows, in
//! batches of `retention.batch_size` every `retention.interval_ms`. Pending and in-flight rows
//! are never touched. Redis needs no such job: idempotency keys expire after an hour or two sweep leases, counters
//! after 90, and the dead-letter stream is capped (`redis.dlq_max_len`).

use crate::error::Result;
use crate::events;
use crate::messages::Prune;
use crate::registry::Envelope;
use crate::store::Store;
use crate::supervisor::{tick, Lifecycle, Shutdown, Supervisable};
use actix::prelude::*;
use slog::info;
use std::time::Duration;

#[derive(Debug, Clone, Copy)]
pub struct RetentionPolicy {
    /// Final rows older than this many days are deleted; 0 keeps everything.
    pub final_after_days: u32,
    pub interval: Duration,
    pub batch: i64,
}

pub struct RetentionActor {
    life: Lifecycle,
    store: Store,
    policy: RetentionPolicy,
    shutdown: Shutdown,
}

impl RetentionActor {
    pub fn new(life: Lifecycle, store: Store, policy: RetentionPolicy, shutdown: Shutdown) -> Self {
        RetentionActor { life, store, policy, shutdown }
    }
}

async fn prune(store: Store, policy: RetentionPolicy, log: slog::Logger) -> Result<u64> {
    let mut total = 0;
    loop {
        let deleted = store.delete_final_older_than(policy.final_after_days, policy.batch).await?;
        total += deleted;
        if deleted < policy.batch as u64 {
            break;
        }
    }
    if total > 0 {
        info!(log, "old final notifications deleted"; "event" => events::RETENTION_DELETED, "count" => total,
              "older_than_days" => policy.final_after_days);
    }
    Ok(total)
}

impl Actor for RetentionActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(self.life.stats.mailbox_capacity);
        let delay = self.life.on_started();
        if self.policy.final_after_days == 0 {
            return;
        }
        tick(ctx, delay, self.policy.interval, self.life.stats.clone(), self.shutdown.clone(), || Prune);
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        self.life.on_stopped();
    }
}

impl Supervisable for RetentionActor {
    fn life(&mut self) -> &mut Lifecycle {
        &mut self.life
    }
}

impl Supervised for RetentionActor {
    fn restarting(&mut self, _: &mut Context<Self>) {
        self.life.on_restarting();
    }
}

impl Handler<Envelope<Prune>> for RetentionActor {
    type Result = ();

    fn handle(&mut self, _: Envelope<Prune>, ctx: &mut Context<Self>) {
        let fut = prune(self.store.clone(), self.policy, self.life.log.clone());
        self.run_step(ctx, fut);
    }
}
