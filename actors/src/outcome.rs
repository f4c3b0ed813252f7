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

use crate::error::{EngineError, Result};
use crate::events;
use crate::inflight::InFlight;
use crate::job::{expired_text, EntryRef, Outcome, Provider, SendResult};
use crate::messages::{Flush, Record, Unwritten};
use crate::relay::{DeadLetter, RedisWrites, Relay};
use crate::retry::RetryPolicy;
use crate::runtime::registry::Envelope;
use crate::runtime::supervisor::{guarded, Lifecycle};
use crate::store::{DeadToken, DeliveredRow, FailedRow, OutcomeRows, RetryingRow, Settled, Store, Target};
use actix::prelude::*;
use slog::{error, info, warn, Logger};
use std::time::{Duration, SystemTime};

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
    /// Waiting out the restart backoff: outcomes arriving meanwhile are buffered, not written.
    resting: bool,
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
            resting: false,
        }
    }

    fn schedule(&mut self, ctx: &mut Context<Self>) {
        if self.flushing || self.resting || self.buffer.is_empty() {
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
        // From here a copy of these targets may be their retry, written before the write ends.
        self.inflight.recording(batch.iter().filter_map(held_target));
        // Kept for the one case the write cannot report on itself: a panic.
        let backup = batch.clone();
        let sink = Sink {
            store: self.store.clone(),
            relay: self.relay.clone(),
            retry: self.retry,
            receipt_delay: self.receipt_delay,
        };
        let fut = guarded(async move { Ok(sink.write(batch).await) });
        ctx.wait(fut.into_actor(self).map(move |res: Result<Written>, act, ctx| {
            act.flushing = false;
            let written = res.unwrap_or_else(|panic| Written { unstored: Some((panic, backup)), ..Written::default() });
            log_outcomes(&act.life.log, &written.stored, &written.settled, &act.retry);
            for (target, why) in &written.refused {
                error!(act.life.log, "Postgres refused an outcome; stored what it would take instead";
                       "event" => events::OUTCOME_REFUSED, "notification_id" => %target.0, "device_id" => %target.1,
                       "error" => why);
            }
            act.inflight.release_targets(written.finished_targets.iter().map(|(target, entry)| (*target, entry)));
            act.inflight.release(written.stored.len());
            match written.unstored {
                None => {
                    act.life.healthy();
                    act.schedule(ctx);
                }
                Some((e, unstored)) => {
                    // Keep what was not written, in front: it is written again after the restart.
                    let rest = std::mem::take(&mut act.buffer);
                    act.buffer = unstored;
                    act.buffer.extend(rest);
                    act.life.failed(&e);
                    ctx.stop();
                }
            }
        }));
    }
}

/// Where a batch goes, in this order: Postgres, then Redis.
struct Sink {
    store: Store,
    relay: Relay,
    retry: RetryPolicy,
    receipt_delay: Option<Duration>,
}

/// What became of a batch.
#[derive(Default)]
struct Written {
    /// The outcomes as stored (a refused one replaced by what was stored instead).
    stored: Vec<Outcome>,
    settled: Vec<Settled>,
    /// Targets whose send (or wait for one) is over, and the entries they were read from: no
    /// longer in flight in this process.
    finished_targets: Vec<(Target, EntryRef)>,
    /// Outcomes Postgres refused to store, and why.
    refused: Vec<(Target, String)>,
    /// Outcomes not written because of this error (Postgres or Redis unreachable…).
    unstored: Option<(EngineError, Vec<Outcome>)>,
}

impl Sink {
    /// Writes a batch. When Postgres refuses it because of what one outcome holds (a value it
    /// cannot store, a trigger's exception), the batch is split in halves until that outcome is
    /// alone; it is then stored as the plainest outcome that says what happened, and every
    /// other outcome of the batch is stored as it was. One bad answer never holds up the rest.
    async fn write(self, batch: Vec<Outcome>) -> Written {
        let mut w = Written::default();
        // Parts still to write, the next one last; `true` marks a refused outcome's replacement.
        let mut parts: Vec<(Vec<Outcome>, bool)> = vec![(batch, false)];
        while let Some((mut part, replacement)) = parts.pop() {
            let e = match self.write_part(&part).await {
                Ok(settled) => {
                    w.settled.extend(settled);
                    w.finished_targets
                        .extend(part.iter().filter_map(held_target).map(|(target, entry)| (target, entry.clone())));
                    w.stored.extend(part);
                    continue;
                }
                Err(e) => e,
            };
            if !e.is_refused_write() {
                let mut rest = part;
                rest.extend(parts.into_iter().rev().flat_map(|(p, _)| p));
                w.unstored = Some((e, rest));
                break;
            }
            if part.len() > 1 {
                let right = part.split_off(part.len() / 2);
                parts.push((right, replacement));
                parts.push((part, replacement));
                continue;
            }
            let Some(refused) = part.pop() else { continue };
            let why = e.chain();
            if let Some(target) = sent_target(&refused) {
                w.refused.push((target, why.clone()));
                if replacement {
                    // Even the plainest record was refused: Postgres will not take anything for
                    // this target. Dead-letter the entry so the rest flows; the sweep finds
                    // the row again after `stale_after`.
                    w.finished_targets.push((target, refused.entry().clone()));
                }
            }
            parts.push((vec![instead_of_refused(refused, &why, replacement)], true));
        }
        if !w.refused.is_empty() {
            let mut writes = RedisWrites::default();
            writes.tally.add(events::OUTCOME_REFUSED, None, w.refused.len() as u64);
            // Only a counter: if Redis is gone now, the next flush says so.
            let _ = self.relay.write_outcomes(&writes, &events::today()).await;
        }
        w
    }

    async fn write_part(&self, part: &[Outcome]) -> Result<Vec<Settled>> {
        let plan = Plan::build(part, &self.retry, self.receipt_delay);
        let settled = self.store.record(&plan.rows).await?;
        let mut writes = plan.redis;
        let (failed, expired) = Settled::count_unsent(&settled);
        writes.tally.add(events::NOTIFICATION_FAILED, None, failed);
        writes.tally.add(events::NOTIFICATION_EXPIRED, None, expired);
        self.relay.write_outcomes(&writes, &events::today()).await?;
        Ok(settled)
    }
}

fn sent_target(outcome: &Outcome) -> Option<Target> {
    match outcome {
        Outcome::Sent { delivery, .. } => Some(delivery.job.target()),
        _ => None,
    }
}

/// The target an outcome held in flight, with its entry: a send's (`Sent`, or `Expired` when
/// it expired waiting in its sender or before its retry). The other outcomes are decided before
/// a target is taken, and never held one.
fn held_target(outcome: &Outcome) -> Option<(Target, &EntryRef)> {
    match outcome {
        Outcome::Sent { delivery, .. } | Outcome::Expired { delivery, .. } => {
            Some((delivery.job.target(), &delivery.entry))
        }
        _ => None,
    }
}

/// What to store for an outcome Postgres refused: a delivery without its provider message id,
/// any other answer as a permanent failure that says why. If that was refused too
/// (`second_refusal`), a dead letter in Redis and nothing in Postgres.
fn instead_of_refused(outcome: Outcome, why: &str, second_refusal: bool) -> Outcome {
    match outcome {
        Outcome::Sent { delivery, .. } if second_refusal => Outcome::Poison {
            entry: delivery.entry.clone(),
            raw: delivery.job.to_json(),
            reason: format!("Postgres refuses every outcome of this target: {why}"),
            target: None,
        },
        Outcome::Sent { delivery, result: SendResult::Delivered { .. }, latency_ms } => {
            Outcome::Sent { delivery, result: SendResult::Delivered { provider_message_id: None }, latency_ms }
        }
        Outcome::Sent { delivery, latency_ms, .. } => Outcome::Sent {
            delivery,
            result: SendResult::Permanent { error: format!("the provider's answer could not be stored: {why}") },
            latency_ms,
        },
        // Nothing of these reaches Postgres, so Postgres cannot have refused them.
        other => other,
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
        let now_ms = now.duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
        for outcome in batch {
            redis.acks.push(outcome.entry().clone());
            let (delivery, result) = match outcome {
                Outcome::Poison { entry, raw, reason, target } => {
                    if let Some(target) = target {
                        rows.failed.push(FailedRow {
                            target: *target,
                            attempts: 0,
                            error: format!("unreadable stream entry: {reason}"),
                        });
                        rows.shared_notifications.push(target.0);
                    }
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
                Outcome::Duplicate { delivery, repair } => {
                    if *repair {
                        // Only the idempotency key knew: Postgres learns it now.
                        let job = &delivery.job;
                        rows.delivered.push(DeliveredRow {
                            target: job.target(),
                            attempts: pg_count(job.attempt),
                            provider_message_id: None,
                            receipt_after: None,
                        });
                        if job.targets > 1 {
                            rows.shared_notifications.push(job.notification_id);
                        }
                    }
                    redis.tally.add(events::DUPLICATE_SKIPPED, None, 1);
                    continue;
                }
                Outcome::PutBack { delivery, after } => {
                    let job = &delivery.job;
                    redis.retries.push((delivery.entry.shard, now + *after, job.clone()));
                    redis.tally.add(events::DEFERRED, Some(job.provider.as_str()), 1);
                    continue;
                }
                Outcome::Withdrawn { delivery, reason } => {
                    let job = &delivery.job;
                    rows.failed.push(FailedRow {
                        target: job.target(),
                        attempts: pg_count(job.attempt),
                        error: reason.clone(),
                    });
                    rows.shared_notifications.push(job.notification_id);
                    redis.tally.add(events::TARGET_WITHDRAWN, Some(job.provider.as_str()), 1);
                    continue;
                }
                Outcome::Expired { delivery, last_attempt } => {
                    let job = &delivery.job;
                    let mut error = expired_text(job.expires_ms, "before it was delivered");
                    if let Some(last) = last_attempt {
                        error = format!("{error} (last attempt: {last})");
                    }
                    rows.expired.push(FailedRow { target: job.target(), attempts: pg_count(job.attempt), error });
                    rows.shared_notifications.push(job.notification_id);
                    redis.tally.add(events::EXPIRED, Some(job.provider.as_str()), 1);
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
            let failed = |spent: u32, error: &str| FailedRow {
                target: job.target(),
                attempts: pg_count(spent),
                error: error.to_string(),
            };
            let retrying = |spent: u32, error: &str, delay: Duration| RetryingRow {
                target: job.target(),
                attempts: pg_count(spent),
                error: error.to_string(),
                delay,
            };
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
                    // An Expo ticket: its receipt is asked for later (the row says when).
                    let receipt =
                        receipt_delay.filter(|_| job.provider == Provider::Expo && provider_message_id.is_some());
                    rows.delivered.push(DeliveredRow {
                        target: job.target(),
                        attempts: pg_count(attempts),
                        provider_message_id: provider_message_id.clone(),
                        receipt_after: receipt,
                    });
                    rows.used_devices.push(job.device_id);
                    redis.delivered.push((job.notification_id, job.device_id));
                    redis.tally.add(events::SEND_SUCCESS, provider, 1);
                }
                SendResult::Retry { error, .. } | SendResult::Auth { error } | SendResult::Deferred { error, .. }
                    if job.past_deadline(now_ms, retry.max_age) =>
                {
                    // Revoked credentials, a provider gone for a day: a finite end, not a loop.
                    let error = format!(
                        "gave up: not delivered within retry.max_age_ms ({} s) of its first attempt: {error}",
                        retry.max_age.as_secs()
                    );
                    let spent = if matches!(result, SendResult::Deferred { .. }) { job.attempt } else { attempts };
                    rows.failed.push(failed(spent, &error));
                    redis.dead_letters.push(dead_letter("max_age", &error));
                    redis.tally.add(events::GAVE_UP, provider, 1);
                    redis.tally.add(events::DLQ_PUSHED, provider, 1);
                }
                SendResult::Retry { error, .. } | SendResult::Auth { error } if attempts < retry.max_attempts => {
                    let after = if let SendResult::Retry { after, .. } = result { *after } else { None };
                    let delay = job.clamp_to_expiry(now_ms, retry.delay(attempts, after));
                    rows.retrying.push(retrying(attempts, error, delay));
                    let mut next = job.clone();
                    next.attempt = attempts;
                    redis.retries.push((delivery.entry.shard, now + delay, next));
                    redis.tally.add(events::SEND_FAIL, provider, 1);
                    redis.tally.add(events::RETRY_SCHEDULED, provider, 1);
                }
                SendResult::Deferred { error, after } => {
                    // Not an attempt: the attempt count stays where it was. Back when whatever
                    // held it may let it through (the circuit's open interval, the rate limit's
                    // window), spread by up to half that again so a backlog does not return at
                    // once; never sooner than `retry.base_ms`.
                    let delay = (*after).max(retry.base);
                    let delay = delay + Duration::from_millis(rand::random_range(0..=delay.as_millis() as u64 / 2));
                    let delay = job.clamp_to_expiry(now_ms, delay);
                    rows.retrying.push(retrying(job.attempt, error, delay));
                    redis.retries.push((delivery.entry.shard, now + delay, job.clone()));
                    redis.tally.add(events::DEFERRED, provider, 1);
                }
                SendResult::Retry { error, .. } | SendResult::Auth { error } => {
                    let error = format!("gave up after {attempts} attempts: {error}");
                    rows.failed.push(failed(attempts, &error));
                    redis.dead_letters.push(dead_letter("max_attempts", &error));
                    redis.tally.add(events::SEND_FAIL, provider, 1);
                    redis.tally.add(events::DLQ_PUSHED, provider, 1);
                }
                SendResult::Permanent { error } => {
                    rows.failed.push(failed(attempts, error));
                    redis.dead_letters.push(dead_letter("permanent", error));
                    redis.tally.add(events::SEND_FAIL, provider, 1);
                    redis.tally.add(events::DLQ_PUSHED, provider, 1);
                }
                SendResult::InvalidToken { error } => {
                    rows.failed.push(failed(attempts, error));
                    rows.disable_devices.push(DeadToken { device_id: job.device_id, reason: error.clone() });
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

/// A target that would be retried or deferred although its notification has expired ends
/// here instead, as `expired`.
fn expire_if_due(outcome: Outcome, now_ms: u64) -> Outcome {
    match outcome {
        Outcome::Sent {
            delivery,
            result: result @ (SendResult::Retry { .. } | SendResult::Auth { .. } | SendResult::Deferred { .. }),
            latency_ms,
        } => {
            if delivery.job.expired(now_ms) {
                Outcome::Expired { delivery, last_attempt: result.error().map(str::to_string) }
            } else {
                Outcome::Sent { delivery, result, latency_ms }
            }
        }
        other => other,
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
            Outcome::Duplicate { delivery, repair } => {
                let j = &delivery.job;
                info!(log, "already final, or a copy is being sent: acknowledged without sending"; "event" => events::DUPLICATE_SKIPPED,
                      "notification_id" => %j.notification_id, "trace_id" => &j.trace_id, "provider" => j.provider.as_str(),
                      "repaired" => *repair);
            }
            Outcome::PutBack { delivery, after } => {
                let j = &delivery.job;
                info!(log, "a copy of a target whose outcome is being stored: put back for later"; "event" => events::DEFERRED,
                      "notification_id" => %j.notification_id, "trace_id" => &j.trace_id, "provider" => j.provider.as_str(),
                      "attempt" => j.attempt, "after_ms" => after.as_millis() as u64);
            }
            Outcome::Expired { delivery, last_attempt } => {
                let j = &delivery.job;
                info!(log, "target expired before it was delivered"; "event" => events::EXPIRED,
                      "notification_id" => %j.notification_id, "trace_id" => &j.trace_id, "provider" => j.provider.as_str(),
                      "device_id" => %j.device_id, "attempt" => j.attempt, "error" => last_attempt.as_deref().unwrap_or_default());
            }
            Outcome::Withdrawn { delivery, reason } => {
                let j = &delivery.job;
                info!(log, "target withdrawn before the send"; "event" => events::TARGET_WITHDRAWN,
                      "notification_id" => %j.notification_id, "trace_id" => &j.trace_id, "provider" => j.provider.as_str(),
                      "device_id" => %j.device_id, "error" => reason);
            }
            Outcome::Sent { delivery, result, latency_ms } => {
                let j = &delivery.job;
                let attempt = j.attempt_number();
                let log = log.new(
                    slog::o!("notification_id" => j.notification_id.to_string(), "trace_id" => j.trace_id.clone(),
                    "provider" => j.provider.as_str(), "device_id" => j.device_id.to_string(), "attempt" => attempt,
                    "latency_ms" => *latency_ms),
                );
                let expired = !matches!(
                    result,
                    SendResult::Delivered { .. } | SendResult::Permanent { .. } | SendResult::InvalidToken { .. }
                ) && j.past_deadline(crate::job::now_ms(), retry.max_age);
                match result {
                    SendResult::Delivered { .. } => {
                        info!(log, "delivered"; "event" => events::SEND_SUCCESS)
                    }
                    other if expired => {
                        warn!(log, "gave up: not delivered within retry.max_age_ms"; "event" => events::GAVE_UP,
                              "error" => other.error().unwrap_or_default());
                        info!(log, "dead-lettered"; "event" => events::DLQ_PUSHED);
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
    Settled::log_failures(log, settled);
}

impl Actor for OutcomeWriter {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(self.life.stats.mailbox_capacity);
        let delay = self.life.on_started();
        // After a restart, write what was buffered when the last attempt failed — after the
        // backoff, however many outcomes arrive meanwhile.
        self.resting = !delay.is_zero();
        ctx.run_later(delay, |act, ctx| {
            act.resting = false;
            act.schedule(ctx);
        });
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
        let now_ms = crate::job::now_ms();
        self.buffer.extend(msg.msg.outcomes.into_iter().map(|o| expire_if_due(o, now_ms)));
        self.schedule(ctx);
    }
}

impl Handler<Envelope<Flush>> for OutcomeWriter {
    type Result = ResponseActFuture<Self, Result<(), Unwritten>>;

    /// Answers once the buffer is empty (every batch written), or with the last error.
    fn handle(&mut self, _: Envelope<Flush>, ctx: &mut Context<Self>) -> Self::Result {
        self.flush(ctx);
        Box::pin(async {}.into_actor(self).map(|_, act, _| {
            if act.buffer.is_empty() {
                Ok(())
            } else {
                Err(Unwritten { outcomes: act.buffer.len() })
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::{Delivery, EntryRef, Job, Priority};

    const RETRY: RetryPolicy = RetryPolicy {
        max_attempts: 5,
        base: Duration::from_millis(100),
        max: Duration::from_millis(1000),
        max_age: Duration::from_secs(3600),
    };

    fn sent(attempt: u32, queued_ago: Duration, result: SendResult) -> Outcome {
        let job = Job {
            attempt,
            queued_ms: crate::job::now_ms() - queued_ago.as_millis() as u64,
            ..Job::first_attempt(Provider::Fcm, "t", serde_json::json!({}), Priority::Normal)
        };
        Outcome::Sent {
            delivery: Delivery { job, entry: EntryRef { shard: 0, id: "1-0".into() } },
            result,
            latency_ms: 1,
        }
    }

    fn deferred(after: Duration) -> SendResult {
        SendResult::Deferred { error: "circuit open for fcm: not sent".into(), after }
    }

    #[test]
    fn a_deferral_waits_as_long_as_the_circuit_asked_not_the_retry_ceiling() {
        // The circuit stays open 30 s; retry.max_ms is 1 s. Coming back every second would be
        // 30 useless round trips through Redis and Postgres per delivery.
        let plan = Plan::build(&[sent(2, Duration::ZERO, deferred(Duration::from_secs(30)))], &RETRY, None);
        let RetryingRow { attempts, delay, .. } = &plan.rows.retrying[0];
        assert_eq!(*attempts, 2, "no attempt spent");
        assert!(*delay >= Duration::from_secs(30) && *delay <= Duration::from_secs(45), "{delay:?}");
        // A very short wait still comes back no sooner than retry.base_ms.
        let plan = Plan::build(&[sent(0, Duration::ZERO, deferred(Duration::from_millis(1)))], &RETRY, None);
        assert!(plan.rows.retrying[0].delay >= RETRY.base);
    }

    #[test]
    fn past_its_deadline_a_target_fails_instead_of_being_retried_or_deferred() {
        let old = Duration::from_secs(3601);
        let retry = SendResult::Retry { error: "HTTP 503".into(), after: None };
        let auth = SendResult::Auth { error: "THIRD_PARTY_AUTH_ERROR".into() };
        let batch = [sent(1, old, retry.clone()), sent(0, old, deferred(Duration::from_secs(5))), sent(1, old, auth)];
        let plan = Plan::build(&batch, &RETRY, None);
        assert!(plan.rows.retrying.is_empty());
        assert!(plan.redis.retries.is_empty());
        let errors: Vec<(i32, &str)> = plan.rows.failed.iter().map(|f| (f.attempts, f.error.as_str())).collect();
        assert_eq!(
            errors,
            vec![
                (2, "gave up: not delivered within retry.max_age_ms (3600 s) of its first attempt: HTTP 503"),
                (
                    0,
                    "gave up: not delivered within retry.max_age_ms (3600 s) of its first attempt: circuit open for \
                     fcm: not sent"
                ),
                (2, "gave up: not delivered within retry.max_age_ms (3600 s) of its first attempt: THIRD_PARTY_AUTH_ERROR"),
            ]
        );
        assert!(plan.redis.dead_letters.iter().all(|d| d.reason == "max_age"));
        // Within the deadline the same answers are retried and deferred as usual.
        let young = Duration::from_secs(60);
        let plan =
            Plan::build(&[sent(1, young, retry), sent(0, young, deferred(Duration::from_secs(5)))], &RETRY, None);
        assert_eq!(plan.rows.retrying.len(), 2);
        assert!(plan.rows.failed.is_empty());
    }
}
