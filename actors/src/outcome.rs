//! OutcomeWriter: the one place where results become durable.
//!
//! Outcomes from every sender are gathered for a few milliseconds (or until `max_batch`), then
//! written in this order: one Postgres transaction (delivery rows, devices, the notifications'
//! status), then Redis (idempotency keys and counters; per shard one `MULTI` with the retries,
//! dead letters, `XACK` and `XDEL`), then the in-flight permits are given back.
//!
//! XACK comes last on purpose: a crash before it leaves the entries pending, so they are claimed
//! and — their Postgres rows or idempotency keys saying they are done — acknowledged without a
//! second send. If a write fails, the batch stays buffered and the actor restarts with backoff
//! and writes it again; nothing is acknowledged on the way.

use crate::error::Result;
use crate::events;
use crate::inflight::InFlight;
use crate::job::{Outcome, Provider, SendResult};
use crate::messages::{Flush, Record};
use crate::registry::Envelope;
use crate::relay::{DeadLetter, PendingReceipt, RedisWrites, Relay};
use crate::settings::RetryPolicy;
use crate::store::{OutcomeRows, Settled, Store};
use crate::supervisor::{guarded, Lifecycle};
use actix::prelude::*;
use slog::{info, warn, Logger};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub struct OutcomeWriter {
    life: Lifecycle,
    store: Store,
    relay: Relay,
    inflight: InFlight,
    retry: RetryPolicy,
    /// When to fetch the receipt of an Expo ticket (None: receipts are not polled).
    receipt_delay: Option<Duration>,
    /// Flush once this many outcomes are buffered…
    max_batch: usize,
    /// …or this long after the first one arrived.
    linger: Duration,
    buffer: Vec<Outcome>,
    flushing: bool,
    flush_scheduled: bool,
}

impl OutcomeWriter {
    pub fn new(
        life: Lifecycle,
        store: Store,
        relay: Relay,
        inflight: InFlight,
        retry: RetryPolicy,
        receipt_delay: Option<Duration>,
    ) -> Self {
        OutcomeWriter {
            life,
            store,
            relay,
            inflight,
            retry,
            receipt_delay,
            max_batch: 1000,
            linger: Duration::from_millis(5),
            buffer: Vec::new(),
            flushing: false,
            flush_scheduled: false,
        }
    }

    fn schedule(&mut self, ctx: &mut Context<Self>) {
        if self.flushing || self.buffer.is_empty() {
            return;
        }
        if self.buffer.len() >= self.max_batch {
            self.flush(ctx);
        } else if !self.flush_scheduled {
            self.flush_scheduled = true;
            ctx.run_later(self.linger, |act, ctx| {
                act.flush_scheduled = false;
                act.flush(ctx);
            });
        }
    }

    /// Writes the buffer. `ctx.wait` holds the mailbox meanwhile: senders that keep producing
    /// meet the bounded mailbox, which is the back-pressure we want.
    fn flush(&mut self, ctx: &mut Context<Self>) {
        if self.flushing || self.buffer.is_empty() {
            return;
        }
        self.flushing = true;
        let take = self.buffer.len().min(self.max_batch);
        let batch: Vec<Outcome> = self.buffer.drain(..take).collect();
        let plan = Plan::build(&batch, &self.retry, self.receipt_delay);
        let (store, relay) = (self.store.clone(), self.relay.clone());
        let fut = guarded(async move {
            let settled = store.record(&plan.rows).await?;
            let mut writes = plan.redis;
            let failed = settled.iter().filter(|s| !s.delivered).count() as u64;
            writes.tally.add(events::NOTIFICATION_FAILED, None, failed);
            relay.write_outcomes(&writes, &events::today()).await?;
            Ok(settled)
        });
        ctx.wait(fut.into_actor(self).map(move |res: Result<Vec<Settled>>, act, ctx| {
            act.flushing = false;
            match res {
                Ok(settled) => {
                    log_outcomes(&act.life.log, &batch, &settled, &act.retry);
                    act.inflight.release_targets(batch.iter().filter_map(|o| match o {
                        Outcome::Sent { delivery, .. } => Some(delivery.job.target()),
                        _ => None,
                    }));
                    act.inflight.release(batch.len());
                    act.life.healthy();
                    act.schedule(ctx);
                }
                Err(e) => {
                    // Keep the batch, in front: it is written again after the restart.
                    let rest = std::mem::take(&mut act.buffer);
                    act.buffer = batch;
                    act.buffer.extend(rest);
                    act.life.failed(&e);
                    ctx.stop();
                }
            }
        }));
    }
}

/// What one batch writes, decided before any I/O.
struct Plan {
    rows: OutcomeRows,
    redis: RedisWrites,
}

impl Plan {
    fn build(batch: &[Outcome], retry: &RetryPolicy, receipt_delay: Option<Duration>) -> Plan {
        let mut rows = OutcomeRows::default();
        let mut redis = RedisWrites::default();
        let now = SystemTime::now();
        for outcome in batch {
            redis.acks.push(outcome.entry().clone());
            let (delivery, result) = match outcome {
                Outcome::Poison { entry, raw, reason } => {
                    redis.dead_letters.push(DeadLetter {
                        shard: entry.shard,
                        reason: "poison",
                        provider: String::new(),
                        attempts: 0,
                        error: reason.clone(),
                        job: raw.clone(),
                    });
                    redis.tally.add(events::DLQ_PUSHED, None, 1);
                    continue;
                }
                Outcome::Duplicate { .. } => {
                    redis.tally.add(events::DUPLICATE_SKIPPED, None, 1);
                    continue;
                }
                Outcome::Sent { delivery, result, .. } => (delivery, result),
            };
            let job = &delivery.job;
            let provider = Some(job.provider.as_str());
            let attempts = job.attempt_number();
            if job.targets > 1 {
                rows.shared_notifications.push(job.notification_id);
            }
            let dead_letter = |reason: &'static str, error: &str| DeadLetter {
                shard: delivery.entry.shard,
                reason,
                provider: job.provider.to_string(),
                attempts,
                error: error.to_string(),
                job: job.to_json(),
            };
            match result {
                SendResult::Delivered { provider_message_id } => {
                    if let (Provider::Expo, Some(ticket), Some(delay)) =
                        (job.provider, provider_message_id, receipt_delay)
                    {
                        let receipt = PendingReceipt {
                            id: ticket.clone(),
                            notification_id: job.notification_id,
                            device_id: job.device_id,
                            trace_id: job.trace_id.clone(),
                            sent_ms: now.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64,
                        };
                        redis.receipts.push((delivery.entry.shard, now + delay, receipt));
                    }
                    rows.delivered.push((job.target(), pg_count(attempts), provider_message_id.clone()));
                    rows.used_devices.push(job.device_id);
                    redis.delivered.push((job.notification_id, job.device_id));
                    redis.tally.add(events::SEND_SUCCESS, provider, 1);
                }
                SendResult::Retry { error, .. } | SendResult::Auth { error } if attempts < retry.max_attempts => {
                    let after = if let SendResult::Retry { after, .. } = result { *after } else { None };
                    let delay = retry.delay(attempts, after);
                    rows.retrying.push((job.target(), pg_count(attempts), error.clone(), delay));
                    let mut next = job.clone();
                    next.attempt = attempts;
                    redis.retries.push((delivery.entry.shard, now + delay, next));
                    redis.tally.add(events::SEND_FAIL, provider, 1);
                    redis.tally.add(events::RETRY_SCHEDULED, provider, 1);
                }
                SendResult::Deferred { error, after } => {
                    // Not an attempt: the attempt count stays where it was.
                    let delay = retry.delay(1, Some(*after));
                    let delay = delay + Duration::from_millis(rand::random_range(0..=delay.as_millis() as u64 / 2));
                    rows.retrying.push((job.target(), pg_count(job.attempt), error.clone(), delay));
                    redis.retries.push((delivery.entry.shard, now + delay, job.clone()));
                    redis.tally.add(events::DEFERRED, provider, 1);
                }
                SendResult::Retry { error, .. } | SendResult::Auth { error } => {
                    let error = format!("gave up after {attempts} attempts: {error}");
                    rows.failed.push((job.target(), pg_count(attempts), error.clone()));
                    redis.dead_letters.push(dead_letter("max_attempts", &error));
                    redis.tally.add(events::SEND_FAIL, provider, 1);
                    redis.tally.add(events::DLQ_PUSHED, provider, 1);
                }
                SendResult::Permanent { error } => {
                    rows.failed.push((job.target(), pg_count(attempts), error.clone()));
                    redis.dead_letters.push(dead_letter("permanent", error));
                    redis.tally.add(events::SEND_FAIL, provider, 1);
                    redis.tally.add(events::DLQ_PUSHED, provider, 1);
                }
                SendResult::InvalidToken { error } => {
                    rows.failed.push((job.target(), pg_count(attempts), error.clone()));
                    rows.disable_devices.push((job.device_id, error.clone()));
                    redis.dead_letters.push(dead_letter("invalid_token", error));
                    redis.tally.add(events::SEND_FAIL, provider, 1);
                    redis.tally.add(events::DEVICE_DISABLED, provider, 1);
                    redis.tally.add(events::DLQ_PUSHED, provider, 1);
                }
            }
        }
        Plan { rows, redis }
    }
}

/// An attempt count as Postgres stores it (int4); a hostile stream entry cannot wrap it.
fn pg_count(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// One log line per event, written once the batch is durable.
fn log_outcomes(log: &Logger, batch: &[Outcome], settled: &[Settled], retry: &RetryPolicy) {
    for outcome in batch {
        match outcome {
            Outcome::Poison { entry, reason, .. } => {
                warn!(log, "unreadable stream entry dead-lettered"; "event" => events::DLQ_PUSHED,
                      "entry" => &entry.id, "shard" => entry.shard, "error" => reason);
            }
            Outcome::Duplicate { delivery } => {
                let j = &delivery.job;
                info!(log, "already delivered, or a copy is being sent: acknowledged without sending"; "event" => events::DUPLICATE_SKIPPED,
                      "notification_id" => %j.notification_id, "trace_id" => &j.trace_id, "provider" => j.provider.as_str());
            }
            Outcome::Sent { delivery, result, latency_ms } => {
                let j = &delivery.job;
                let attempt = j.attempt_number();
                let log = log.new(
                    slog::o!("notification_id" => j.notification_id.to_string(), "trace_id" => j.trace_id.clone(),
                    "provider" => j.provider.as_str(), "device_id" => j.device_id.to_string(), "attempt" => attempt,
                    "latency_ms" => *latency_ms),
                );
                match result {
                    SendResult::Delivered { .. } => {
                        info!(log, "delivered"; "event" => events::SEND_SUCCESS)
                    }
                    SendResult::Deferred { error, .. } => {
                        info!(log, "rescheduled without spending an attempt"; "event" => events::DEFERRED, "error" => error)
                    }
                    other => {
                        let error = other.error().unwrap_or_default();
                        warn!(log, "send failed"; "event" => events::SEND_FAIL, "error" => error);
                        match other {
                            SendResult::Retry { .. } | SendResult::Auth { .. } if attempt < retry.max_attempts => {
                                info!(log, "retry scheduled"; "event" => events::RETRY_SCHEDULED)
                            }
                            SendResult::InvalidToken { .. } => {
                                info!(log, "device disabled"; "event" => events::DEVICE_DISABLED);
                                info!(log, "dead-lettered"; "event" => events::DLQ_PUSHED);
                            }
                            _ => info!(log, "dead-lettered"; "event" => events::DLQ_PUSHED),
                        }
                    }
                }
            }
        }
    }
    for s in settled.iter().filter(|s| !s.delivered) {
        warn!(log, "notification failed"; "event" => events::NOTIFICATION_FAILED, "notification_id" => %s.notification_id,
              "trace_id" => s.trace_id.as_deref().unwrap_or_default(), "error" => s.last_error.as_deref().unwrap_or_default());
    }
}

impl Actor for OutcomeWriter {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(self.life.stats.mailbox_capacity);
        let delay = self.life.on_started();
        // After a restart, write what was buffered when the last attempt failed.
        ctx.run_later(delay, |act, ctx| act.schedule(ctx));
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        self.life.on_stopped();
    }
}

impl Supervised for OutcomeWriter {
    fn restarting(&mut self, _: &mut Context<Self>) {
        self.life.on_restarting();
        self.flushing = false;
        self.flush_scheduled = false;
    }
}

impl Handler<Envelope<Record>> for OutcomeWriter {
    type Result = ();

    fn handle(&mut self, msg: Envelope<Record>, ctx: &mut Context<Self>) {
        self.buffer.extend(msg.msg.outcomes);
        self.schedule(ctx);
    }
}

impl Handler<Envelope<Flush>> for OutcomeWriter {
    type Result = ResponseActFuture<Self, Result<(), String>>;

    /// Answers once the buffer is empty (every batch written), or with the last error.
    fn handle(&mut self, _: Envelope<Flush>, ctx: &mut Context<Self>) -> Self::Result {
        self.flush(ctx);
        Box::pin(async {}.into_actor(self).map(|_, act, _| {
            if act.buffer.is_empty() {
                Ok(())
            } else {
                Err(format!("{} outcomes not written", act.buffer.len()))
            }
        }))
    }
}
