//! StreamReaderActor: reads one shard's stream with `XREADGROUP` and dispatches what it reads.
//!
//! It takes in-flight permits before each read and asks for no more entries than it got
//! permits, so a slow provider or a slow database stops the reading instead of filling
//! mailboxes. Blocking reads use a connection of their own (see [`Relay::blocking_connection`]).

use crate::error::Result;
use crate::inflight::InFlight;
use crate::messages::ReadNext;
use crate::pipeline::dispatcher::Dispatcher;
use crate::relay::conn::RelayConn;
use crate::relay::Relay;
use crate::runtime::deps::Deps;
use crate::runtime::supervisor::{guarded, Lifecycle, Shutdown};
use actix::prelude::*;
use slog::warn;
use std::time::Duration;

/// Longest a read waits on the server for new entries.
const BLOCK: Duration = Duration::from_secs(1);
/// Most entries one read asks for.
const READ_BATCH: usize = 500;

pub struct StreamReaderActor {
    life: Lifecycle,
    shard: u16,
    consumer: String,
    relay: Relay,
    dispatcher: Dispatcher,
    inflight: InFlight,
    shutdown: Shutdown,
    conn: Option<RelayConn>,
}

impl StreamReaderActor {
    /// The reader of `shard`; it reads as `deps.consumer` and hands what it reads to `dispatcher`.
    pub fn new(life: Lifecycle, shard: u16, dispatcher: Dispatcher, deps: &Deps) -> Self {
        StreamReaderActor {
            life,
            shard,
            consumer: deps.consumer.clone(),
            relay: deps.relay.clone(),
            dispatcher,
            inflight: deps.inflight.clone(),
            shutdown: deps.shutdown.clone(),
            conn: None,
        }
    }
}

/// One read: permits, `XREADGROUP`, dispatch. Returns the connection for the next read.
///
/// Permits are held only for entries that are there: a first read does not block; only when
/// the shard is empty does the reader give its permits back and wait (`BLOCK`) for the next
/// entry holding none, taking a permit for it once it came. An idle shard therefore never
/// holds permits that a busy one needs, however many shards there are.
async fn read_once(
    relay: Relay,
    conn: Option<RelayConn>,
    shard: u16,
    consumer: String,
    dispatcher: Dispatcher,
    inflight: InFlight,
    shutdown: Shutdown,
) -> Result<RelayConn> {
    let mut conn = match conn {
        Some(c) => c,
        None => relay.blocking_connection(BLOCK, &format!("{}:reader-{shard}", relay.keys().prefix())).await?,
    };
    let permits = inflight.take(READ_BATCH).await;
    if shutdown.is_triggered() {
        inflight.release(permits);
        return Ok(conn);
    }
    let mut entries = match read_or_regroup(&relay, &mut conn, shard, &consumer, permits, None).await {
        Ok(entries) => entries,
        Err(e) => {
            inflight.release(permits);
            return Err(e);
        }
    };
    inflight.release(permits - entries.len());
    if entries.is_empty() {
        entries = read_or_regroup(&relay, &mut conn, shard, &consumer, 1, Some(BLOCK)).await?;
        if entries.is_empty() {
            return Ok(conn);
        }
        // The entry (one: COUNT 1) is ours, pending, already; it waits for a permit like any
        // other.
        inflight.take(1).await;
    }
    // What cannot be dispatched stays pending in Redis and is claimed again; the dispatcher
    // gives back its permits.
    dispatcher.dispatch(entries).await?;
    Ok(conn)
}

/// `XREADGROUP` on one shard (blocking for `block` when given). A stream or group that
/// vanished (Redis restarted or was flushed) is recreated, and the read answers nothing.
async fn read_or_regroup(
    relay: &Relay,
    conn: &mut RelayConn,
    shard: u16,
    consumer: &str,
    count: usize,
    block: Option<Duration>,
) -> Result<Vec<crate::relay::Entry>> {
    match relay.read(conn, shard, consumer, count, block).await {
        Err(crate::error::EngineError::Redis(e)) if e.code() == Some("NOGROUP") => {
            relay.ensure_groups().await?;
            Ok(Vec::new())
        }
        other => other,
    }
}

impl Actor for StreamReaderActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(self.life.stats.mailbox_capacity);
        let delay = self.life.on_started();
        ctx.run_later(delay, |_, ctx| ctx.notify(ReadNext));
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        self.life.on_stopped();
    }
}

impl Supervised for StreamReaderActor {
    fn restarting(&mut self, _: &mut Context<Self>) {
        self.life.on_restarting();
        self.conn = None;
    }
}

impl Handler<ReadNext> for StreamReaderActor {
    type Result = ();

    fn handle(&mut self, _: ReadNext, ctx: &mut Context<Self>) {
        if self.shutdown.is_triggered() {
            return;
        }
        let fut = guarded(read_once(
            self.relay.clone(),
            self.conn.take(),
            self.shard,
            self.consumer.clone(),
            self.dispatcher.clone(),
            self.inflight.clone(),
            self.shutdown.clone(),
        ));
        ctx.wait(fut.into_actor(self).map(|res, act, ctx| match res {
            Ok(conn) => {
                act.conn = Some(conn);
                act.life.healthy();
                ctx.notify(ReadNext);
            }
            Err(e) => {
                if act.shutdown.is_triggered() {
                    warn!(act.life.log, "read failed during shutdown"; "error" => e.chain());
                    return;
                }
                act.life.failed(&e);
                ctx.stop();
            }
        }));
    }
}
