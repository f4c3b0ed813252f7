//! ListenerActor: turns committed `notification` rows into stream entries.
//!
//! It holds one dedicated Postgres connection (never a pooled one: pools drop notifications)
//! that `LISTEN`s on `notification_insert`. A notification is only a doorbell: it makes the
//! actor drain *all* pending rows in batches (`FOR UPDATE SKIP LOCKED`, so several listeners
//! share the work), fan them out to delivery rows and `XADD` one entry per target in a
//! pipeline. The insert trigger rings once per statement that inserts a claimable row, however
//! many rows it inserts (migrations/V6__doorbell.sql), and rings that arrive while a drain is
//! queued are coalesced into it. A sweep at start-up and every `listener.sweep_interval_ms`
//! catches rows whose NOTIFY was lost and targets whose stream entry was lost with Redis.

use crate::error::{EngineError, Result};
use crate::events::{self, Tally};
use crate::job::shard_of;
use crate::job::Provider;
use crate::messages::{Drain, Sweep};
use crate::relay::{DeadLetter, RedisWrites, Relay};
use crate::runtime::deps::Deps;
use crate::runtime::registry::Envelope;
use crate::runtime::supervisor::{guarded, Lifecycle, Shutdown, Supervisable};
use crate::settings::{EngineSettings, InputLimits};
use crate::store::{FanOutRules, Settled, Store};
use actix::prelude::*;
use futures_util::StreamExt;
use slog::{info, Logger};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_postgres::AsyncMessage;

/// The channel the insert trigger notifies.
pub const CHANNEL: &str = "notification_insert";

/// Longest the LISTEN connection may take to connect and subscribe, or to answer the check
/// made every so long (the same interval), as a multiple of `database.connect_timeout_ms`: a server that accepts TCP
/// and then says nothing (a blackholed connection after a failover) must not hold the listener
/// for the kernel's minutes.
fn listen_timeout(config: &crate::tls::PgTarget) -> Duration {
    config.get_connect_timeout().copied().unwrap_or(Duration::from_secs(5)) * 2
}

pub struct ListenerActor {
    life: Lifecycle,
    fanout: Fanout,
    pg_config: crate::tls::PgTarget,
    sweep_interval: Duration,
    stale_after: Duration,
    schedule_poll: Duration,
    shutdown: Shutdown,
    /// A drain is already queued: further doorbells add nothing.
    rung: Arc<AtomicBool>,
    /// Kept alive for as long as the LISTEN should last; dropping it closes the connection.
    listen_client: Option<Arc<tokio_postgres::Client>>,
    /// Counts connections, so that the end of a replaced one is not mistaken for a failure.
    generation: u64,
}

/// The LISTEN connection of generation `.0` ended; the actor stops and is restarted to
/// reconnect. A connection closed on purpose by a restart reports an old generation.
#[derive(Message)]
#[rtype(result = "()")]
struct ListenLost(u64, String);

/// Time to check that the LISTEN connection still answers.
#[derive(Message)]
#[rtype(result = "()")]
struct CheckListen;

/// The LISTEN connection is up.
#[derive(Message)]
#[rtype(result = "()")]
struct Listening(tokio_postgres::Client);

impl ListenerActor {
    /// The listener of this process: it fans out for the `enabled` providers, and LISTENs on a
    /// connection of its own made from `pg_config`.
    pub fn new(
        life: Lifecycle,
        deps: &Deps,
        settings: &EngineSettings,
        enabled: HashSet<Provider>,
        pg_config: crate::tls::PgTarget,
    ) -> Self {
        let fanout = Fanout {
            store: deps.store.clone(),
            relay: deps.relay.clone(),
            batch: settings.listener.batch_size,
            drainers: settings.listener.drainers,
            limits: settings.input_limits,
            enabled: Arc::new(enabled),
            log: life.log.clone(),
        };
        ListenerActor {
            life,
            fanout,
            pg_config,
            sweep_interval: settings.listener.sweep_interval,
            stale_after: settings.listener.stale_after,
            schedule_poll: settings.listener.schedule_poll,
            shutdown: deps.shutdown.clone(),
            rung: Arc::new(AtomicBool::new(false)),
            listen_client: None,
            generation: 0,
        }
    }

    fn connect(&mut self, ctx: &mut Context<Self>) {
        let config = self.pg_config.clone();
        let addr = ctx.address();
        let stats = self.life.stats.clone();
        let rung = self.rung.clone();
        self.generation += 1;
        let generation = self.generation;
        let fut = async move {
            // A refused certificate names its cause and the setting that fixes it.
            let (client, mut connection) = config
                .connect()
                .await
                .map_err(|e| EngineError::ListenLost(format!("could not connect: {}", config.explain(&e))))?;
            // The connection delivers notifications only while something polls it.
            let lost = addr.clone();
            actix_rt::spawn(async move {
                let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
                while let Some(message) = messages.next().await {
                    match message {
                        Ok(AsyncMessage::Notification(_)) => {
                            if !rung.swap(true, Ordering::AcqRel) {
                                lost.do_send(stats.envelope(Drain));
                            }
                        }
                        Ok(_) => {}
                        Err(e) => {
                            lost.do_send(ListenLost(generation, crate::error::with_sources(&e)));
                            return;
                        }
                    }
                }
                lost.do_send(ListenLost(generation, "connection closed".into()));
            });
            client.batch_execute(&format!("LISTEN {CHANNEL}")).await?;
            Ok::<_, EngineError>(client)
        };
        let limit = listen_timeout(&self.pg_config);
        let fut = async move {
            tokio::time::timeout(limit, fut).await.unwrap_or_else(|_| {
                Err(EngineError::ListenLost(format!("no LISTEN connection within {} ms", limit.as_millis())))
            })
        };
        ctx.wait(guarded(fut).into_actor(self).map(|res, act, ctx| match res {
            Ok(client) => {
                ctx.notify(Listening(client));
                // Whatever was inserted while nobody listened is picked up now.
                ctx.address().do_send(act.life.stats.envelope(Sweep));
            }
            Err(e) => {
                act.life.failed(&e);
                ctx.stop();
            }
        }));
    }
}

/// What a drain needs; cloned into each concurrent drainer.
#[derive(Clone)]
pub struct Fanout {
    pub store: Store,
    pub relay: Relay,
    /// Notifications per fan-out transaction.
    pub batch: i64,
    /// Drainers claiming concurrently (`SKIP LOCKED` keeps them apart).
    pub drainers: usize,
    /// Caps on payload size and devices per user.
    pub limits: InputLimits,
    pub enabled: Arc<HashSet<Provider>>,
    pub log: Logger,
}

impl Fanout {
    /// Makes due scheduled notifications pending and claims and enqueues pending notifications
    /// until none is left, with `drainers` transactions in flight so that Postgres works on one
    /// batch while Redis takes another.
    ///
    /// A drainer that fails never cancels the others: a sibling may have committed its batch
    /// as `queued` and be on its way to the XADD (or waiting for its COMMIT's answer), and
    /// dropping it there leaves those targets in Postgres with no stream entry, found again only
    /// by the sweep after `listener.stale_after_ms` (5 min by default). That is what a Postgres
    /// outage cutting a fan-out did (`try_join_all`). So every drainer finishes the batch it
    /// holds; the first failure only stops them all from claiming another one.
    async fn drain(self) -> Result<usize> {
        let failed = Arc::new(AtomicBool::new(false));
        let drainers = (0..self.drainers.max(1)).map(|_| {
            let failed = failed.clone();
            let drainer = self.clone();
            async move {
                let out = drainer.drain_one(&failed).await;
                if out.is_err() {
                    failed.store(true, Ordering::Release);
                }
                out
            }
        });
        let mut total = 0;
        let mut first_error = None;
        for out in futures_util::future::join_all(drainers).await {
            match out {
                Ok(n) => total += n,
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(total),
        }
    }

    /// Makes up to a batch of due scheduled notifications pending: one batch before each claim,
    /// so that a thousand rows due in the same second are sent batch by batch as they are
    /// promoted, not after all of them are. (With nothing scheduled, one probe of an empty
    /// index range per batch claimed.)
    async fn promote_due(&self) -> Result<()> {
        let due = self.store.promote_due(self.batch).await?;
        if due > 0 {
            info!(self.log, "scheduled notifications are due"; "event" => events::SCHEDULED_DUE, "count" => due);
            let mut tally = Tally::default();
            tally.add(events::SCHEDULED_DUE, None, due);
            self.relay.enqueue(&[], &tally, &events::today()).await?;
        }
        Ok(())
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

    /// Drains batch after batch until none is left, or until a sibling drainer failed (checked
    /// only between batches: a batch claimed is always enqueued or failed on its own).
    async fn drain_one(self, sibling_failed: &AtomicBool) -> Result<usize> {
        let mut total = 0;
        loop {
            if sibling_failed.load(Ordering::Acquire) {
                return Ok(total);
            }
            self.promote_due().await?;
            let enabled = |p| self.enabled.contains(&p);
            let rules = FanOutRules { batch: self.batch, limits: self.limits, enabled: &enabled };
            let out = self.store.fan_out_pending(rules).await?;
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
            // Pending rows first; when they run out, a topic's next batch of subscribers (which
            // are pending rows again).
            if (out.claimed as i64) < self.batch && !self.expand_topic().await? {
                return Ok(total);
            }
        }
    }

    /// Re-enqueues the stale targets whose copy Redis no longer holds, then drains.
    async fn sweep(self, stale_after: Duration) -> Result<usize> {
        // Anything enqueued after the oldest work Redis still holds may be waiting there unread.
        let live_since = self.relay.oldest_live().await?;
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
            if (jobs.len() as i64) < self.batch {
                break;
            }
        }
        self.drain().await
    }
}

impl Fanout {
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

impl Actor for ListenerActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(self.life.stats.mailbox_capacity);
        self.rung.store(false, Ordering::Release);
        let delay = self.life.on_started();
        ctx.run_later(delay, |act, ctx| {
            act.connect(ctx);
            let stats = act.life.stats.clone();
            ctx.run_interval(act.sweep_interval, move |act, ctx| {
                if !act.shutdown.is_triggered() {
                    ctx.address().do_send(stats.envelope(Sweep));
                }
            });
            // An idle LISTEN connection behind a dead peer looks exactly like a quiet table.
            ctx.run_interval(listen_timeout(&act.pg_config), |_, ctx| ctx.notify(CheckListen));
            // Scheduled rows ring no doorbell: they are looked for.
            ctx.run_interval(act.schedule_poll, |act, ctx| act.poll_schedule(ctx));
        });
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        self.listen_client = None;
        self.life.on_stopped();
    }
}

impl Supervised for ListenerActor {
    fn restarting(&mut self, _: &mut Context<Self>) {
        // The old connection's end ("connection closed", once its client is dropped here) is
        // not news: without a new generation it would fail the restarted actor once more.
        self.generation += 1;
        self.listen_client = None;
        self.life.on_restarting();
    }
}

impl ListenerActor {
    /// Rings the doorbell when a scheduled notification is due (one index probe, beside the
    /// actor's work). A probe that fails says nothing: the next one asks again, and a Postgres
    /// that stays away fails the drains and the sweep, which restart the actor.
    fn poll_schedule(&mut self, ctx: &mut Context<Self>) {
        if self.shutdown.is_triggered() || self.rung.load(Ordering::Acquire) {
            return;
        }
        let (store, rung, addr, stats) =
            (self.fanout.store.clone(), self.rung.clone(), ctx.address(), self.life.stats.clone());
        actix_rt::spawn(async move {
            if matches!(store.any_due().await, Ok(true)) && !rung.swap(true, Ordering::AcqRel) {
                addr.do_send(stats.envelope(Drain));
            }
        });
    }
}

impl Handler<Listening> for ListenerActor {
    type Result = ();

    fn handle(&mut self, msg: Listening, _: &mut Context<Self>) {
        info!(self.life.log, "listening for new notifications"; "channel" => CHANNEL);
        self.listen_client = Some(Arc::new(msg.0));
    }
}

impl Handler<CheckListen> for ListenerActor {
    type Result = ();

    /// Asks the LISTEN connection to answer (`SELECT 1`, beside the actor's work: a drain may be
    /// running); if it does not within the limit, it is lost and replaced.
    fn handle(&mut self, _: CheckListen, ctx: &mut Context<Self>) {
        let Some(client) = self.listen_client.clone() else { return };
        let (generation, limit, addr) = (self.generation, listen_timeout(&self.pg_config), ctx.address());
        actix_rt::spawn(async move {
            let lost = match tokio::time::timeout(limit, client.simple_query("SELECT 1")).await {
                Ok(Ok(_)) => return,
                Ok(Err(e)) => crate::error::with_sources(&e),
                Err(_) => format!("no answer to a check within {} ms", limit.as_millis()),
            };
            addr.do_send(ListenLost(generation, lost));
        });
    }
}

impl Handler<ListenLost> for ListenerActor {
    type Result = ();

    fn handle(&mut self, msg: ListenLost, ctx: &mut Context<Self>) {
        if self.shutdown.is_triggered() || msg.0 != self.generation {
            return;
        }
        self.life.failed(&EngineError::ListenLost(msg.1));
        ctx.stop();
    }
}

impl Supervisable for ListenerActor {
    fn life(&mut self) -> &mut Lifecycle {
        &mut self.life
    }
}

impl Handler<Envelope<Drain>> for ListenerActor {
    type Result = ();

    fn handle(&mut self, _: Envelope<Drain>, ctx: &mut Context<Self>) {
        // Cleared before draining: a row committed during the drain rings again.
        self.rung.store(false, Ordering::Release);
        if self.shutdown.is_triggered() {
            return;
        }
        let fut = self.fanout.clone().drain();
        self.run_step(ctx, fut);
    }
}

impl Handler<Envelope<Sweep>> for ListenerActor {
    type Result = ();

    fn handle(&mut self, _: Envelope<Sweep>, ctx: &mut Context<Self>) {
        if self.shutdown.is_triggered() {
            return;
        }
        let fut = self.fanout.clone().sweep(self.stale_after);
        self.run_step(ctx, fut);
    }
}
