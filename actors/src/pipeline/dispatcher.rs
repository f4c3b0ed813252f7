//! Hands entries read from a stream to the right SenderActor pool.
//!
//! Shared by the stream readers and the claim actor. Before anything is sent, every entry is
//! screened against Postgres (one query per read batch) and the idempotency keys: what is final
//! already, what lost its device, and what cannot be parsed go straight to the outcome writer;
//! the rest are sent. Postgres is asked for every entry, first attempts too, because Redis's
//! memory cannot be trusted to be current: restored from a snapshot, or failed over to a lagging
//! replica, it hands out again entries whose outcome Postgres stored long ago.
//!
//! Every entry handed to [`Dispatcher::dispatch`] holds one in-flight permit. Each permit is
//! given back exactly once: by the outcome writer for what reached it, or here for what could
//! not be handed on (its entry stays pending in Redis and is claimed again).

use crate::error::Result;
use crate::events;
use crate::inflight::{Claim, InFlight};
use crate::job::{Delivery, EntryRef, Outcome, Provider, SendResult};
use crate::messages::{Deliver, Record};
use crate::outcome::OutcomeWriter;
use crate::pipeline::sender::SenderActor;
use crate::relay::{Entry, Relay};
/// The handle lives in the registry (the sender needs it too); re-exported for the old path.
pub use crate::runtime::registry::Handle;
use crate::store::Store;
use crate::store::Target;
use slog::{info, warn, Logger};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

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
    /// How long an entry for a provider this process does not send through waits before it is
    /// read again (by any worker: another one may have it, e.g. during a rolling config change).
    pub elsewhere_after: Duration,
    /// How long a copy put back while another copy's outcome is stored waits (`retry.base_ms`).
    pub put_back_after: Duration,
    pub log: Logger,
}

/// Entries sorted by [`Dispatcher::screen`].
pub struct Screened {
    /// Decided without a send (final already, withdrawn, poison…).
    pub done: Vec<Outcome>,
    /// To be sent.
    pub fresh: Vec<Delivery>,
}

impl Dispatcher {
    /// Screens and sends entries this process holds permits for (one each). Returns an error
    /// after handing on what it could; the permits of what it could not hand on are given back
    /// here, never by the caller.
    pub async fn dispatch(&self, entries: Vec<Entry>) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let n = entries.len();
        let Screened { mut done, fresh } = match self.screen(entries).await {
            Ok(screened) => screened,
            Err(e) => {
                // Nothing was handed on: the entries stay pending in Redis.
                self.inflight.release(n);
                return Err(e);
            }
        };
        // Not while another copy is in flight in this process.
        let taken: Vec<Delivery> = fresh.into_iter().filter_map(|d| self.take(d, &mut done)).collect();

        let mut by_provider: HashMap<Provider, Vec<Delivery>> = HashMap::new();
        for d in taken {
            info!(self.log, "dequeued"; "event" => events::DEQUEUE, "notification_id" => %d.job.notification_id,
                  "trace_id" => &d.job.trace_id, "provider" => d.job.provider.as_str(), "attempt" => d.job.attempt_number());
            by_provider.entry(d.job.provider).or_default().push(d);
        }
        let mut failure = None;
        for (provider, batch) in by_provider {
            let Some(pool) = self.pools.get(&provider) else {
                // Another worker may send through it (a rolling config change): not a failure
                // of the target's. It comes back, to any worker, until `retry.max_age_ms`.
                warn!(self.log, "provider not enabled on this worker; deliveries deferred for another worker";
                      "event" => events::DEFERRED, "provider" => provider.as_str(), "count" => batch.len());
                self.inflight.release_targets(batch.iter().map(|d| (d.job.target(), &d.entry)));
                done.extend(batch.into_iter().map(|delivery| Outcome::Sent {
                    delivery,
                    result: SendResult::Deferred {
                        error: format!("provider {provider} is not enabled on this worker"),
                        after: self.elsewhere_after,
                    },
                    latency_ms: 0,
                }));
                continue;
            };
            let held: Vec<(Target, EntryRef)> = batch.iter().map(|d| (d.job.target(), d.entry.clone())).collect();
            let size = held.len();
            if let Err(e) = pool.deliver(batch).await {
                self.inflight.release_targets(held.iter().map(|(target, entry)| (*target, entry)));
                self.inflight.release(size);
                failure.get_or_insert(e);
            }
        }
        let recorded = self.record(done).await;
        match failure {
            Some(e) => Err(e),
            None => recorded,
        }
    }

    /// Takes `delivery`'s target for a send by this process and hands the delivery back; or,
    /// when a copy of the target is in flight here already, adds this copy's outcome to `done`:
    /// dropped while that copy is being sent (its send carries the target on), put back while
    /// its outcome is being stored (this copy may be the retry that outcome has just
    /// scheduled; see [`crate::inflight`]).
    pub fn take(&self, delivery: Delivery, done: &mut Vec<Outcome>) -> Option<Delivery> {
        match self.inflight.claim_target(delivery.job.target(), &delivery.entry) {
            Claim::Claimed => return Some(delivery),
            Claim::BeingSent => done.push(Outcome::Duplicate { delivery, repair: false }),
            Claim::BeingRecorded => done.push(Outcome::PutBack { delivery, after: self.put_back_after }),
        }
        None
    }

    /// Sorts entries into what must be sent and what is decided without a send:
    /// - unreadable entries: poison;
    /// - the same target twice in one read (a reclaimed entry and its re-enqueued copy): once;
    /// - targets Postgres has as delivered or failed: acknowledged;
    /// - targets whose device was deleted, disabled, or given to another user: withdrawn;
    /// - targets only the idempotency key knows as delivered: acknowledged, and the row repaired;
    /// - targets whose notification expired: expired, not sent.
    ///
    /// Fails (deciding nothing) when Postgres or Redis cannot be asked.
    pub async fn screen(&self, entries: Vec<Entry>) -> Result<Screened> {
        let mut done: Vec<Outcome> = Vec::new();
        let mut deliveries: Vec<Delivery> = Vec::with_capacity(entries.len());
        let mut in_batch = std::collections::HashSet::with_capacity(entries.len());
        for entry in entries {
            match entry {
                Entry::Job(entry, job) if in_batch.insert(job.target()) => deliveries.push(Delivery { job, entry }),
                Entry::Job(entry, job) => {
                    done.push(Outcome::Duplicate { delivery: Delivery { job, entry }, repair: false })
                }
                Entry::Poison { entry, raw, reason, target } => {
                    done.push(Outcome::Poison { entry, raw, reason, target })
                }
            }
        }
        let targets: Vec<Target> = deliveries.iter().map(|d| d.job.target()).collect();
        let jobs: Vec<_> = deliveries.iter().map(|d| &d.job).collect();
        let (seen, states) = futures_util::try_join!(self.relay.delivered(&jobs), self.store.target_states(&targets))?;
        let mut fresh = Vec::with_capacity(deliveries.len());
        let now_ms = crate::job::now_ms();
        for (delivery, seen) in deliveries.into_iter().zip(seen) {
            let Some(state) = states.get(&delivery.job.target()) else {
                // No row: the device was deleted (its targets go with it) or the notification
                // was retried or deleted. Nothing to send, nothing to store.
                done.push(Outcome::Withdrawn { delivery, reason: "not sent: the target no longer exists".into() });
                continue;
            };
            if state.finished {
                done.push(Outcome::Duplicate { delivery, repair: false });
            } else if let Some(reason) = state.withdrawn(&delivery.job.user_id, &delivery.job.token) {
                done.push(Outcome::Withdrawn { delivery, reason: reason.to_string() });
            } else if seen {
                done.push(Outcome::Duplicate { delivery, repair: true });
            } else if delivery.job.expired(now_ms) {
                done.push(Outcome::Expired { delivery, last_attempt: None });
            } else {
                fresh.push(delivery);
            }
        }
        Ok(Screened { done, fresh })
    }

    /// Hands outcomes decided without a send to the outcome writer. On failure (the writer is
    /// gone) their permits are given back: the entries stay pending and are claimed again.
    pub async fn record(&self, outcomes: Vec<Outcome>) -> Result<()> {
        if outcomes.is_empty() {
            return Ok(());
        }
        let n = outcomes.len();
        if let Err(e) = self.outcomes.addr.send(self.outcomes.stats.envelope(Record { outcomes })).await {
            self.inflight.release(n);
            return Err(e.into());
        }
        Ok(())
    }
}
