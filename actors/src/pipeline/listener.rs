//! ListenerActor: turns committed `notification` rows into stream entries.
//!
//! It holds one dedicated Postgres connection (never a pooled one: pools drop notifications)
//! that `LISTEN`s on `notification_insert`. A notification is only a doorbell: it starts a
//! drainer ([`super::drain`]) that claims *all* pending rows in batches (`FOR UPDATE SKIP
//! LOCKED`, so several drainers and listeners share the work), fans them out to delivery rows
//! and `XADD`s one entry per target in a pipeline. The insert trigger rings once per statement
//! that inserts a claimable row, however many rows it inserts (migrations/V6__doorbell.sql);
//! rings that arrive while a drainer start is queued are coalesced into it, and a ring while
//! `listener.drainers` drainers are busy starts one more as soon as one of them ends. A sweep at
//! start-up and every `listener.sweep_interval_ms` catches rows whose NOTIFY was lost and
//! targets whose stream entry was lost with Redis.

use super::drain::{Fanout, Hints};
use crate::error::{EngineError, Result};
use crate::job::Provider;
use crate::messages::{Drain, Sweep};
use crate::runtime::deps::Deps;
use crate::runtime::registry::{ActorStats, Envelope};
use crate::runtime::supervisor::{guarded, Lifecycle, Shutdown, Supervisable};
use crate::settings::EngineSettings;
use actix::prelude::*;
use futures_util::StreamExt;
use slog::info;
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
    /// A [`Drain`] is already queued (see [`Doorbell`]).
    rung: Arc<AtomicBool>,
    /// Drainers running now (tasks of their own; each reports its end with [`DrainerDone`]).
    running: usize,
    /// A ring came while `listener.drainers` drainers were busy: start one when one ends.
    rung_while_busy: bool,
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

/// A drainer ended: no pending row was left, the process is shutting down, or it failed.
#[derive(Message)]
#[rtype(result = "()")]
struct DrainerDone(Result<usize>);

/// Sends the actor a [`Drain`] unless one is already queued. Cloned into the LISTEN
/// connection's task, the schedule poll and every drainer (which rings after a full batch: a
/// sibling may help with the rest).
#[derive(Clone)]
struct Doorbell {
    /// A [`Drain`] is already queued: further rings add nothing. Cleared by its handler, so a
    /// row committed after that rings again.
    rung: Arc<AtomicBool>,
    addr: Addr<ListenerActor>,
    stats: Arc<ActorStats>,
}

impl Doorbell {
    fn ring(&self) {
        if !self.rung.swap(true, Ordering::AcqRel) {
            self.addr.do_send(self.stats.envelope(Drain));
        }
    }

    /// The queued [`Drain`] is being handled.
    fn answered(&self) {
        self.rung.store(false, Ordering::Release);
    }
}

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
            max_backlog: settings.listener.max_backlog,
            limits: settings.input_limits,
            enabled: Arc::new(enabled),
            hints: Arc::new(Hints::default()),
            shutdown: deps.shutdown.clone(),
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
            running: 0,
            rung_while_busy: false,
            listen_client: None,
            generation: 0,
        }
    }

    fn doorbell(&self, ctx: &Context<Self>) -> Doorbell {
        Doorbell { rung: self.rung.clone(), addr: ctx.address(), stats: self.life.stats.clone() }
    }

    /// Starts a drainer, unless `listener.drainers` are running: then one starts when one of
    /// them ends (a claim that begins after this ring is what the ring needs).
    fn start_drainer(&mut self, ctx: &mut Context<Self>) {
        if self.shutdown.is_triggered() {
            return;
        }
        if self.running >= self.fanout.drainers.max(1) {
            self.rung_while_busy = true;
            return;
        }
        self.running += 1;
        let (fanout, doorbell, addr) = (self.fanout.clone(), self.doorbell(ctx), ctx.address());
        // A task of its own, not the actor's: it is not cancelled when the actor restarts.
        actix_rt::spawn(async move {
            let out = guarded(fanout.drain_one(move || doorbell.ring())).await;
            addr.do_send(DrainerDone(out));
        });
    }

    fn connect(&mut self, ctx: &mut Context<Self>) {
        let config = self.pg_config.clone();
        let addr = ctx.address();
        let doorbell = self.doorbell(ctx);
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
                        Ok(AsyncMessage::Notification(_)) => doorbell.ring(),
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
        if self.shutdown.is_triggered() {
            return;
        }
        let (store, hints, doorbell) = (self.fanout.store.clone(), self.fanout.hints.clone(), self.doorbell(ctx));
        actix_rt::spawn(async move {
            if matches!(store.any_due().await, Ok(true)) {
                // The hint first: a drainer that ends after seeing it promotes; one that ended
                // before is followed by the one this ring starts.
                hints.scheduled_due();
                doorbell.ring();
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
        // Cleared before the drainer claims: a row committed after this rings again.
        self.doorbell(ctx).answered();
        self.start_drainer(ctx);
    }
}

impl Handler<DrainerDone> for ListenerActor {
    type Result = ();

    fn handle(&mut self, msg: DrainerDone, ctx: &mut Context<Self>) {
        self.running = self.running.saturating_sub(1);
        if let Err(e) = msg.0 {
            // Its siblings finish their batches on their own; the restart reconnects and sweeps.
            if !self.shutdown.is_triggered() {
                self.life.failed(&e);
                ctx.stop();
            }
            return;
        }
        self.life.healthy();
        if std::mem::take(&mut self.rung_while_busy) {
            self.start_drainer(ctx);
        }
    }
}

impl Handler<Envelope<Sweep>> for ListenerActor {
    type Result = ();

    /// Re-enqueues stale targets, then rings for a drainer (which, with the hints the sweep
    /// sets, also promotes due rows and continues any topic left half-written).
    fn handle(&mut self, _: Envelope<Sweep>, ctx: &mut Context<Self>) {
        if self.shutdown.is_triggered() {
            return;
        }
        let (requeue, doorbell) = (self.fanout.clone().requeue_stale(self.stale_after), self.doorbell(ctx));
        let fut = async move {
            let requeued = requeue.await?;
            doorbell.ring();
            Ok(requeued)
        };
        self.run_step(ctx, fut);
    }
}
