//! Hands entries read from a stream to the right SenderActor pool.
//!
//! Shared by the stream readers and the claim actor: entries already delivered (idempotency key
//! in Redis, or the Postgres record for reclaimed entries) and entries that cannot be parsed go
//! straight to the outcome writer; the rest are sent.

use crate::error::Result;
use crate::events;
use crate::inflight::InFlight;
use crate::job::{Delivery, Outcome, Provider, SendResult};
use crate::messages::{Deliver, Record};
use crate::outcome::OutcomeWriter;
use crate::registry::ActorStats;
use crate::relay::{Entry, Relay};
use crate::sender::SenderActor;
use crate::store::Store;
use actix::Addr;
use slog::{info, Logger};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// The address of an actor together with the figures that count its mailbox.
pub struct Handle<A: actix::Actor> {
    pub addr: Addr<A>,
    pub stats: Arc<ActorStats>,
}

impl<A: actix::Actor> Clone for Handle<A> {
    fn clone(&self) -> Self {
        Handle { addr: self.addr.clone(), stats: Arc::clone(&self.stats) }
    }
}

/// The SenderActors of one provider; deliveries go round-robin.
#[derive(Clone)]
pub struct SenderPool {
    senders: Arc<Vec<Handle<SenderActor>>>,
    next: Arc<AtomicUsize>,
}

impl SenderPool {
    pub fn new(senders: Vec<Handle<SenderActor>>) -> Self {
        SenderPool { senders: Arc::new(senders), next: Arc::new(AtomicUsize::new(0)) }
    }

    /// Waits for room in the chosen sender's bounded mailbox (`send`, unlike `do_send`, honours
    /// the capacity).
    pub async fn deliver(&self, deliveries: Vec<Delivery>) -> Result<()> {
        if self.senders.is_empty() || deliveries.is_empty() {
            return Ok(());
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.senders.len();
        let sender = &self.senders[i];
        sender.addr.send(sender.stats.envelope(Deliver { deliveries })).await?;
        Ok(())
    }
}

#[derive(Clone)]
pub struct Dispatcher {
    pub pools: HashMap<Provider, SenderPool>,
    pub outcomes: Handle<OutcomeWriter>,
    pub relay: Relay,
    pub store: Store,
    pub inflight: InFlight,
    pub log: Logger,
}

impl Dispatcher {
    /// Dispatches entries that this process holds permits for. Entries whose target is already
    /// delivered (idempotency key in Redis, or final in Postgres) are acknowledged unsent.
    /// `reclaimed` entries were handed to another consumer before.
    pub async fn dispatch(&self, entries: Vec<Entry>, reclaimed: bool) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut done: Vec<Outcome> = Vec::new();
        let mut deliveries: Vec<Delivery> = Vec::with_capacity(entries.len());
        for entry in entries {
            match entry {
                Entry::Job(entry, job) => deliveries.push(Delivery { job, entry }),
                Entry::Poison { entry, raw, reason, target } => {
                    done.push(Outcome::Poison { entry, raw, reason, target })
                }
            }
        }

        let seen = self.relay.delivered(&deliveries.iter().map(|d| &d.job).collect::<Vec<_>>()).await?;
        let mut fresh = Vec::with_capacity(deliveries.len());
        let mut in_batch = std::collections::HashSet::with_capacity(deliveries.len());
        for (delivery, seen) in deliveries.into_iter().zip(seen) {
            // The same target twice in one read (a reclaimed entry and its re-enqueued copy): once.
            if seen || !in_batch.insert(delivery.job.target()) {
                done.push(Outcome::Duplicate { delivery });
            } else {
                fresh.push(delivery);
            }
        }
        // Postgres too, for every entry that may repeat an earlier copy (reclaimed, retried or
        // re-enqueued): after a Redis flush the idempotency keys are gone, but the delivery rows
        // still say what was delivered or failed for good. A listener's first copy needs no look.
        let ids: Vec<_> = fresh.iter().filter(|d| reclaimed || d.job.may_repeat()).map(|d| d.job.target()).collect();
        if !ids.is_empty() {
            let finished: std::collections::HashSet<_> = self.store.already_final(&ids).await?.into_iter().collect();
            let (dups, rest): (Vec<_>, Vec<_>) = fresh.into_iter().partition(|d| finished.contains(&d.job.target()));
            done.extend(dups.into_iter().map(|delivery| Outcome::Duplicate { delivery }));
            fresh = rest;
        }
        // And not while another copy is being sent by this process.
        let (fresh, busy): (Vec<_>, Vec<_>) =
            fresh.into_iter().partition(|d| self.inflight.claim_target(d.job.target()));
        done.extend(busy.into_iter().map(|delivery| Outcome::Duplicate { delivery }));

        let mut by_provider: HashMap<Provider, Vec<Delivery>> = HashMap::new();
        for d in fresh {
            info!(self.log, "dequeued"; "event" => events::DEQUEUE, "notification_id" => %d.job.notification_id,
                  "trace_id" => &d.job.trace_id, "provider" => d.job.provider.as_str(), "attempt" => d.job.attempt_number());
            by_provider.entry(d.job.provider).or_default().push(d);
        }
        for (provider, batch) in by_provider {
            match self.pools.get(&provider) {
                Some(pool) => pool.deliver(batch).await?,
                None => done.extend(batch.into_iter().map(|delivery| Outcome::Sent {
                    delivery,
                    result: SendResult::Permanent {
                        error: format!("provider {provider} is not enabled on this worker"),
                    },
                    latency_ms: 0,
                })),
            }
        }
        self.record(done).await
    }

    /// Hands outcomes decided without a send to the outcome writer.
    pub async fn record(&self, outcomes: Vec<Outcome>) -> Result<()> {
        if !outcomes.is_empty() {
            self.outcomes.addr.send(self.outcomes.stats.envelope(Record { outcomes })).await?;
        }
        Ok(())
    }
}
