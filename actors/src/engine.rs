//! The supervisor tree: starts every actor of this process's roles under an actix
//! `Supervisor`, and stops them gracefully.
//!
//! ```text
//! System arbiter ── ListenerActor                    (role listener)
//!                ├─ StreamReaderActor × shards        (role worker)
//!                ├─ OutcomeWriter, HeartbeatActor     (role worker or scheduler)
//!                ├─ DelayActor, ClaimActor,
//!                │  RetentionActor                    (role scheduler)
//!                └─ actix-web API                     (started by the binary)
//! sender arbiters ─ SenderActor × senders_per_provider, one arbiter (thread) each
//! ```

use crate::circuit::Circuit;
use crate::claim::{ClaimActor, ClaimPolicy};
use crate::delay::DelayActor;
use crate::dispatcher::{Dispatcher, Handle, SenderPool};
use crate::error::Result;
use crate::heartbeat::HeartbeatActor;
use crate::inflight::InFlight;
use crate::job::Provider;
use crate::listener::{Fanout, ListenerActor};
use crate::messages::Flush;
use crate::outcome::OutcomeWriter;
use crate::ratelimit::RateLimiter;
use crate::receipts::ReceiptPoller;
use crate::registry::Registry;
use crate::relay::Relay;
use crate::retention::RetentionActor;
use crate::sender::{SendGuards, SenderActor};
use crate::settings::EngineSettings;
use crate::store::Store;
use crate::stream_reader::StreamReaderActor;
use crate::supervisor::{Lifecycle, Shutdown};
use actix::{Arbiter, Supervisor};
use slog::{info, warn, Logger};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
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
        pg_config: tokio_postgres::Config,
        log: Logger,
    ) -> Result<Engine> {
        let registry = Registry::default();
        let shutdown = Shutdown::default();
        let inflight = InFlight::new(settings.concurrency);
        let mut arbiters = Vec::new();
        let life = |name: String, kind: &'static str| Lifecycle::new(registry.register(name, kind, MAILBOX), &log);

        let providers = crate::providers::enabled(
            settings.expo.as_ref(),
            settings.fcm.as_ref(),
            settings.apns.as_ref(),
            settings.email.as_ref(),
        )?;
        // The groups exist before anyone reads, and `/readyz` can rely on them.
        relay.ensure_groups().await?;

        let mut supervised: Vec<Box<dyn std::any::Any>> = Vec::new();
        let mut outcomes = None;
        let mut dispatcher = None;
        if settings.roles.worker || settings.roles.scheduler {
            let writer_life = life("outcome-writer".into(), "outcome_writer");
            let stats = writer_life.stats.clone();
            let (s, r, f, retry) = (store.clone(), relay.clone(), inflight.clone(), settings.retry);
            let receipt_delay = settings.expo.as_ref().map(|e| e.receipt_delay);
            let addr = Supervisor::start(move |_| OutcomeWriter::new(writer_life, s, r, f, retry, receipt_delay));
            let writer = Handle { addr, stats };

            let mut pools = HashMap::new();
            let transitions = count_circuit_transitions(relay.clone(), log.clone());
            for p in &providers {
                let guards = SendGuards {
                    circuit: Circuit::new(p.provider, settings.circuit, &log, Some(transitions.clone())),
                    limiter: (p.limits.per_sec > 0 || p.limits.device_per_sec > 0)
                        .then(|| RateLimiter::new(relay.clone(), p.provider, p.limits)),
                };
                let mut senders = Vec::new();
                for i in 0..settings.senders_per_provider.max(1) {
                    let arbiter = Arbiter::new();
                    let sender_life = life(format!("sender-{}-{i}", p.provider), "sender");
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
            dispatcher = Some(Dispatcher {
                pools,
                outcomes: writer.clone(),
                relay: relay.clone(),
                store: store.clone(),
                inflight: inflight.clone(),
                elsewhere_after: settings.circuit.open,
                log: log.clone(),
            });
            outcomes = Some(writer);
        }

        if dispatcher.is_some() {
            // Whatever this process has in flight — read by its readers or taken by its claim
            // actor — stays its own while it lives.
            let heartbeat_life = life("heartbeat".into(), "heartbeat");
            let (r, f, c, s) = (relay.clone(), inflight.clone(), settings.consumer.clone(), shutdown.clone());
            let interval = HeartbeatActor::interval_for(settings.claim_min_idle);
            supervised
                .push(Box::new(Supervisor::start(move |_| HeartbeatActor::new(heartbeat_life, r, f, c, interval, s))));
        }

        if let (true, Some(dispatcher)) = (settings.roles.worker, &dispatcher) {
            for shard in relay.keys().shard_ids() {
                let reader_life = life(format!("stream-reader-{shard}"), "stream_reader");
                let (d, f, s, c) = (dispatcher.clone(), inflight.clone(), shutdown.clone(), settings.consumer.clone());
                supervised
                    .push(Box::new(Supervisor::start(move |_| StreamReaderActor::new(reader_life, shard, c, d, f, s))));
            }
        }

        if let (true, Some(dispatcher)) = (settings.roles.scheduler, &dispatcher) {
            let delay_life = life("delay".into(), "delay");
            let (r, s, interval) = (relay.clone(), shutdown.clone(), settings.delay_poll_interval);
            supervised.push(Box::new(Supervisor::start(move |_| DelayActor::new(delay_life, r, interval, s))));

            if let Some(expo) = settings.expo.clone() {
                let poller_life = life("receipts-expo".into(), "receipt_poller");
                let (st, s) = (store.clone(), shutdown.clone());
                supervised.push(Box::new(Supervisor::start(move |_| ReceiptPoller::new(poller_life, &expo, st, s))));
            }

            let retention_life = life("retention".into(), "retention");
            let (st, s, policy) = (store.clone(), shutdown.clone(), settings.retention);
            supervised.push(Box::new(Supervisor::start(move |_| RetentionActor::new(retention_life, st, policy, s))));

            let claim_life = life("claim".into(), "claim");
            let (d, f, s, c) = (dispatcher.clone(), inflight.clone(), shutdown.clone(), settings.consumer.clone());
            let policy = ClaimPolicy {
                interval: settings.claim_interval,
                min_idle: settings.claim_min_idle,
                max_deliveries: settings.claim_max_deliveries,
            };
            supervised.push(Box::new(Supervisor::start(move |_| ClaimActor::new(claim_life, c, d, f, policy, s))));
        }

        if settings.roles.listener {
            let listener_life = life("listener".into(), "listener");
            let enabled: HashSet<Provider> = providers.iter().map(|p| p.provider).collect();
            let fanout = Fanout {
                store: store.clone(),
                relay: relay.clone(),
                batch: settings.listener_batch,
                drainers: settings.listener_drainers,
                limits: settings.input_limits,
                enabled: Arc::new(enabled),
                log: listener_life.log.clone(),
            };
            let (s, sweep, stale) = (shutdown.clone(), settings.sweep_interval, settings.stale_after);
            supervised.push(Box::new(Supervisor::start(move |_| {
                ListenerActor::new(listener_life, fanout, pg_config, sweep, stale, s)
            })));
        }

        info!(log, "engine started"; "roles" => format!("{:?}", settings.roles), "consumer" => &settings.consumer,
              "concurrency" => settings.concurrency, "shards" => relay.keys().shards());
        Ok(Engine { registry, shutdown, inflight, outcomes, _supervised: supervised, arbiters, log })
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn in_flight(&self) -> usize {
        self.inflight.used()
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
