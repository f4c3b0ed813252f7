//! HeartbeatActor: keeps the stream entries of live sends from looking abandoned.
//!
//! Redis measures an entry's idle time from when it was last handed to a consumer, and the
//! claim actor — in this process or in another one — takes over entries idle longer than
//! `claim.min_idle_ms`. A send that takes long (a slow provider, a full mailbox, an outcome
//! writer waiting for Postgres) is still alive, though: claiming it would send it twice. So every
//! `claim.min_idle_ms / 4` this actor resets the idle time of every entry whose target is in
//! flight here ([`InFlight::entries`]) — only where this consumer still owns the entry, and
//! without counting a delivery (`XCLAIM … JUSTID` in a script). An entry goes idle only when the
//! process holding it dies or stalls as a whole.

use crate::error::Result;
use crate::inflight::InFlight;
use crate::messages::Heartbeat;
use crate::registry::Envelope;
use crate::relay::Relay;
use crate::supervisor::{tick, Lifecycle, Shutdown, Supervisable};
use actix::prelude::*;
use slog::debug;
use std::collections::BTreeMap;
use std::time::Duration;

/// Entries refreshed per script call.
const REFRESH_BATCH: usize = 500;

pub struct HeartbeatActor {
    life: Lifecycle,
    relay: Relay,
    inflight: InFlight,
    consumer: String,
    interval: Duration,
    shutdown: Shutdown,
}

impl HeartbeatActor {
    pub fn new(
        life: Lifecycle,
        relay: Relay,
        inflight: InFlight,
        consumer: String,
        interval: Duration,
        shutdown: Shutdown,
    ) -> Self {
        HeartbeatActor { life, relay, inflight, consumer, interval, shutdown }
    }

    /// How often entries are refreshed for a given `claim.min_idle_ms`: four beats fit in it, so
    /// one late or failed beat never lets an entry look idle.
    pub fn interval_for(min_idle: Duration) -> Duration {
        (min_idle / 4).max(Duration::from_millis(10))
    }
}

/// One beat: refreshes every in-flight entry; returns how many were refreshed.
async fn beat(relay: Relay, inflight: InFlight, consumer: String) -> Result<usize> {
    let mut by_shard: BTreeMap<u16, Vec<String>> = BTreeMap::new();
    for entry in inflight.entries() {
        by_shard.entry(entry.shard).or_default().push(entry.id);
    }
    let mut refreshed = 0;
    for (shard, ids) in by_shard {
        for chunk in ids.chunks(REFRESH_BATCH) {
            let ids: Vec<&str> = chunk.iter().map(String::as_str).collect();
            refreshed += relay.refresh_pending(shard, &consumer, &ids).await?;
        }
    }
    Ok(refreshed)
}

impl Actor for HeartbeatActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(self.life.stats.mailbox_capacity);
        let delay = self.life.on_started();
        tick(ctx, delay, self.interval, self.life.stats.clone(), self.shutdown.clone(), || Heartbeat);
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        self.life.on_stopped();
    }
}

impl Supervisable for HeartbeatActor {
    fn life(&mut self) -> &mut Lifecycle {
        &mut self.life
    }
}

impl Supervised for HeartbeatActor {
    fn restarting(&mut self, _: &mut Context<Self>) {
        self.life.on_restarting();
    }
}

impl Handler<Envelope<Heartbeat>> for HeartbeatActor {
    type Result = ();

    fn handle(&mut self, _: Envelope<Heartbeat>, ctx: &mut Context<Self>) {
        let (relay, inflight, consumer, log) =
            (self.relay.clone(), self.inflight.clone(), self.consumer.clone(), self.life.log.clone());
        self.run_step(ctx, async move {
            let refreshed = beat(relay, inflight, consumer).await?;
            if refreshed > 0 {
                debug!(log, "in-flight entries refreshed"; "count" => refreshed);
            }
            Ok(refreshed)
        });
    }
}
