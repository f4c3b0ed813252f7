//! DelayActor: moves retries whose time has come from each shard's delayed set back to its
//! stream. The move is one Lua script per batch, so any number of schedulers can run it at
//! once without losing or doubling a retry.

use crate::error::Result;
use crate::messages::MoveDue;
use crate::registry::Envelope;
use crate::relay::Relay;
use crate::supervisor::{tick, Lifecycle, Shutdown, Supervisable};
use actix::prelude::*;
use slog::debug;
use std::time::Duration;

/// Most retries one script call moves.
const MOVE_BATCH: usize = 500;

pub struct DelayActor {
    life: Lifecycle,
    relay: Relay,
    interval: Duration,
    shutdown: Shutdown,
}

impl DelayActor {
    pub fn new(life: Lifecycle, relay: Relay, interval: Duration, shutdown: Shutdown) -> Self {
        DelayActor { life, relay, interval, shutdown }
    }
}

async fn move_all_due(relay: Relay) -> Result<usize> {
    let mut total = 0;
    for shard in relay.keys().shard_ids() {
        loop {
            let moved = relay.move_due(shard, MOVE_BATCH).await?;
            total += moved;
            if moved < MOVE_BATCH {
                break;
            }
        }
    }
    Ok(total)
}

impl Actor for DelayActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(self.life.stats.mailbox_capacity);
        let delay = self.life.on_started();
        tick(ctx, delay, self.interval, self.life.stats.clone(), self.shutdown.clone(), || MoveDue);
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        self.life.on_stopped();
    }
}

impl Supervisable for DelayActor {
    fn life(&mut self) -> &mut Lifecycle {
        &mut self.life
    }
}

impl Supervised for DelayActor {
    fn restarting(&mut self, _: &mut Context<Self>) {
        self.life.on_restarting();
    }
}

impl Handler<Envelope<MoveDue>> for DelayActor {
    type Result = ();

    fn handle(&mut self, _: Envelope<MoveDue>, ctx: &mut Context<Self>) {
        let (relay, log) = (self.relay.clone(), self.life.log.clone());
        self.run_step(ctx, async move {
            let moved = move_all_due(relay).await?;
            if moved > 0 {
                debug!(log, "due retries moved to the stream"; "moved" => moved);
            }
            Ok(moved)
        });
    }
}
