//! DelayActor: moves retries whose time has come from each shard's delayed set back to its
//! stream. The move is one Lua script per batch, so any number of schedulers can run it at
//! once without losing or doubling a retry.

use crate::error::Result;
use crate::messages::MoveDue;
use crate::relay::Relay;
use crate::supervisor::{guarded, Lifecycle, Shutdown};
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
        ctx.run_later(delay, |act, ctx| {
            let stats = act.life.stats.clone();
            ctx.run_interval(act.interval, move |act, ctx| {
                if !act.shutdown.is_triggered() && stats.mailbox_len() == 0 {
                    ctx.address().do_send(stats.envelope(MoveDue));
                }
            });
        });
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        self.life.on_stopped();
    }
}

impl Supervised for DelayActor {
    fn restarting(&mut self, _: &mut Context<Self>) {
        self.life.on_restarting();
    }
}

impl Handler<crate::registry::Envelope<MoveDue>> for DelayActor {
    type Result = ();

    fn handle(&mut self, _: crate::registry::Envelope<MoveDue>, ctx: &mut Context<Self>) {
        ctx.wait(guarded(move_all_due(self.relay.clone())).into_actor(self).map(|res, act, ctx| match res {
            Ok(moved) => {
                if moved > 0 {
                    debug!(act.life.log, "due retries moved to the stream"; "moved" => moved);
                }
                act.life.healthy();
            }
            Err(e) => {
                act.life.failed(&e);
                ctx.stop();
            }
        }));
    }
}
