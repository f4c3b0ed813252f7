//! The supervisor tree: starts every actor of this process's roles under an actix
//! `Supervisor`, and stops them gracefully.
//!
//! ```text
//! System arbiter ── ListenerActor                    (role listener)
//!                ├─ StreamReaderActor × shards        (role worker)
//!                ├─ OutcomeWriter, HeartbeatActor     (role worker or scheduler)
//!                ├─ DelayActor, ClaimActor,
//!                │  RetentionActor, ReceiptPoller     (role scheduler)
//!                └─ actix-web API                     (started by the binary)
//! sender arbiters ─ SenderActor × senders_per_provider, one arbiter (thread) each
//! ```
//!
//! The heartbeat, delay, claim, retention and receipt actors are one [`Periodic`] actor each,
//! running their job's step on a timer. Every actor is built from one [`Deps`] bundle (the
//! store, the relay, the in-flight permits, the shutdown flag, the consumer name, the registry
//! and the log), taking the parts it needs.

use crate::circuit::Circuit;
use crate::error::Result;
use crate::inflight::InFlight;
use crate::job::Provider;
use crate::messages::Flush;
use crate::outcome::OutcomeWriter;
use crate::periodic::alerts::WatchBacklog;
use crate::periodic::claim::ClaimStale;
use crate::periodic::delay::MoveDue;
use crate::periodic::heartbeat::Heartbeat;
use crate::periodic::receipts::PollReceipts;
use crate::periodic::retention::Prune;
use crate::periodic::{Periodic, PeriodicJob};
use crate::pipeline::dispatcher::{Dispatcher, SenderPool};
use crate::pipeline::listener::ListenerActor;
use crate::pipeline::sender::{SendGuards, SenderActor};
use crate::pipeline::stream_reader::StreamReaderActor;
use crate::providers::EnabledProvider;
use crate::ratelimit::RateLimiter;
use crate::relay::Relay;
use crate::runtime::deps::Deps;
use crate::runtime::registry::{Handle, Registry};
use crate::runtime::supervisor::Shutdown;
use crate::settings::EngineSettings;
use crate::store::Store;
use actix::{Actor, Arbiter, Context, Supervised, Supervisor};
use slog::{info, warn, Logger};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// Mailbox capacity of every actor. Messages carry batches, so this is plenty; a full mailbox
/// makes `send` wait, which is how back-pressure travels upstream.
const MAILBOX: usize = 64;

/// Counts circuit transitions in the daily Redis counters, off the senders' threads.
fn count_circuit_transitions(relay: Relay, log: Logger) -> crate::circuit::Transitions {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(&'static str, Provider)>();
    actix_rt::spawn(async move {
        while let Some((event, provider)) = rx.recv().await {
            let mut tally = crate::events::Tally::default();
            tally.add(event, Some(provider.as_str()), 1);
            if let Err(e) = relay.enqueue(&[], &tally, &crate::events::today()).await {
                warn!(log, "could not count a circuit transition"; "event" => event, "error" => e.chain());
            }
        }
    });
    tx
}

/// Starts the outcome writer and every provider's pool of senders (each sender on an arbiter
/// of its own); returns the writer and the dispatcher that hands work to the pools.
fn start_pipeline(
    deps: &Deps,
    settings: &EngineSettings,
    providers: &[EnabledProvider],
    arbiters: &mut Vec<Arbiter>,
) -> (Handle<OutcomeWriter>, Dispatcher) {
    let writer_life = deps.life("outcome-writer", "outcome_writer", MAILBOX);
    let stats = writer_life.stats.clone();
    let (store, relay, inflight, retry) =
        (deps.store.clone(), deps.relay.clone(), deps.inflight.clone(), settings.retry);
    let expo = &settings.providers.expo;
    let receipt_delay = expo.enabled.then_some(expo.receipt_delay);
    let addr =
        Supervisor::start(move |_| OutcomeWriter::new(writer_life, store, relay, inflight, retry, receipt_delay));
    let writer = Handle { addr, stats };

    let mut pools = HashMap::new();
    let transitions = count_circuit_transitions(deps.relay.clone(), deps.log.clone());
    for p in providers {
        let guards = SendGuards {
            circuit: Circuit::new(p.provider, settings.circuit, &deps.log, Some(transitions.clone())),
            limiter: (p.limits.per_sec > 0 || p.limits.device_per_sec > 0)
                .then(|| RateLimiter::new(deps.relay.clone(), p.provider, p.limits)),
        };
        let mut senders = Vec::new();
        for i in 0..settings.worker.senders_per_provider.max(1) {
            let arbiter = Arbiter::new();
            let sender_life = deps.life(format!("sender-{}-{i}", p.provider), "sender", MAILBOX);
            let stats = sender_life.stats.clone();
            let (factory, writer, guards) = (p.factory.clone(), writer.clone(), guards.clone());
            let addr = Supervisor::start_in_arbiter(&arbiter.handle(), move |_| {
                SenderActor::new(sender_life, &factory, writer.into(), guards)
            });
            senders.push(Handle { addr, stats });
            arbiters.push(arbiter);
        }
        pools.insert(p.provider, SenderPool::new(senders));
    }
    let dispatcher = Dispatcher {
        pools,
        outcomes: writer.clone(),
        relay: deps.relay.clone(),
        store: deps.store.clone(),
        inflight: deps.inflight.clone(),
        elsewhere_after: settings.circuit.open,
        put_back_after: settings.retry.base,
        log: deps.log.clone(),
    };
    (writer, dispatcher)
}

/// What `Engine::start` has started so far.
#[derive(Default)]
struct Started {
    /// Addresses of the actors nobody else addresses (see [`Engine::_supervised`]).
    supervised: Vec<Box<dyn std::any::Any>>,
    /// The senders' arbiters, stopped at shutdown.
    arbiters: Vec<Arbiter>,
    outcomes: Option<Handle<OutcomeWriter>>,
}

impl Started {
    /// Starts an actor on this arbiter under a supervisor, which restarts it while the engine
    /// holds its address.
    fn supervise<A: Supervised + Actor<Context = Context<A>>>(&mut self, actor: A) {
        self.supervised.push(Box::new(Supervisor::start(move |_| actor)));
    }

    /// Starts a periodic job's actor, registered as `J::NAME` / `J::KIND`.
    fn periodic<J: PeriodicJob>(&mut self, deps: &Deps, job: J) {
        self.supervise(Periodic::new(deps.life(J::NAME, J::KIND, MAILBOX), deps.shutdown.clone(), job));
    }
}

/// A running engine.
pub struct Engine {
    registry: Registry,
    shutdown: Shutdown,
    inflight: InFlight,
    outcomes: Option<Handle<OutcomeWriter>>,
    /// Addresses of the actors nobody else addresses. An actix `Supervisor` restarts a stopped
    /// actor only while its address is alive, so the engine holds them for the process's life.
    _supervised: Vec<Box<dyn std::any::Any>>,
    arbiters: Vec<Arbiter>,
    log: Logger,
}

impl Engine {
    /// Starts the actors of `settings.roles` on the current actix System.
    pub async fn start(
        settings: EngineSettings,
        store: Store,
        relay: Relay,
        pg_config: crate::tls::PgTarget,
        log: Logger,
    ) -> Result<Engine> {
        let deps = Deps {
            store,
            relay,
            inflight: InFlight::new(settings.worker.concurrency),
            shutdown: Shutdown::default(),
            consumer: settings.consumer.clone(),
            registry: Registry::default(),
            log,
        };
        let providers = crate::providers::enabled(&settings.providers)?;
        // The groups exist before anyone reads, and `/readyz` can rely on them.
        deps.relay.ensure_groups().await?;

        let mut started = Started::default();
        let pipeline = (settings.roles.worker || settings.roles.scheduler)
            .then(|| start_pipeline(&deps, &settings, &providers, &mut started.arbiters));
        if let Some((writer, dispatcher)) = pipeline {
            // Whatever this process has in flight — read by its readers or taken by its claim
            // actor — stays its own while it lives.
            started.periodic(&deps, Heartbeat::new(&deps, settings.claim.min_idle));
            if settings.roles.worker {
                for shard in deps.relay.keys().shard_ids() {
                    let life = deps.life(format!("stream-reader-{shard}"), "stream_reader", MAILBOX);
                    started.supervise(StreamReaderActor::new(life, shard, dispatcher.clone(), &deps));
                }
            }
            if settings.roles.scheduler {
                started.periodic(&deps, MoveDue::new(deps.relay.clone(), settings.scheduler.delay_poll));
                started.periodic(&deps, WatchBacklog::new(deps.relay.clone(), settings.alerts));
                if settings.providers.expo.enabled {
                    started.periodic(&deps, PollReceipts::new(&settings.providers.expo, deps.store.clone()));
                }
                started.periodic(&deps, Prune::new(deps.store.clone(), settings.retention));
                started.periodic(&deps, ClaimStale::new(dispatcher, &deps, settings.claim));
            }
            started.outcomes = Some(writer);
        }

        if settings.roles.listener {
            let life = deps.life("listener", "listener", MAILBOX);
            let enabled: HashSet<Provider> = providers.iter().map(|p| p.provider).collect();
            started.supervise(ListenerActor::new(life, &deps, &settings, enabled, pg_config));
        }

        info!(deps.log, "engine started"; "roles" => format!("{:?}", settings.roles), "consumer" => &settings.consumer,
              "concurrency" => settings.worker.concurrency, "shards" => deps.relay.keys().shards());
        let Started { supervised, arbiters, outcomes } = started;
        Ok(Engine {
            registry: deps.registry,
            shutdown: deps.shutdown,
            inflight: deps.inflight,
            outcomes,
            _supervised: supervised,
            arbiters,
            log: deps.log,
        })
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn in_flight(&self) -> usize {
        self.inflight.used()
    }

    /// The deliveries in flight in this process: their permits, and the targets being sent or
    /// recorded (`GET /admin/actors` shows the count; tests hold a target to stage a race).
    pub fn inflight(&self) -> &InFlight {
        &self.inflight
    }

    /// Graceful stop: no more reading or claiming; deliveries in flight get up to `grace` to
    /// finish and be stored; the rest stays pending in Redis for another process to claim.
    pub async fn shutdown(self, grace: Duration) -> bool {
        self.shutdown.trigger();
        let deadline = Instant::now() + grace;
        let drained = tokio::time::timeout(grace, self.inflight.drained()).await.is_ok();
        let mut flushed = true;
        if let Some(writer) = &self.outcomes {
            flushed = false;
            while Instant::now() < deadline + Duration::from_millis(500) {
                match writer.addr.send(writer.stats.envelope(Flush)).await {
                    Ok(Ok(())) => {
                        flushed = true;
                        break;
                    }
                    Ok(Err(_)) => tokio::time::sleep(Duration::from_millis(20)).await,
                    Err(_) => break,
                }
            }
        }
        let left = self.inflight.used();
        if drained && flushed {
            info!(self.log, "engine stopped; all in-flight work stored");
        } else {
            warn!(self.log, "engine stopped with work in flight; it stays pending and will be claimed"; "in_flight" => left);
        }
        for arbiter in &self.arbiters {
            arbiter.stop();
        }
        drained && flushed
    }
}
