//! SenderActor: one member of a provider's pool. It gathers deliveries into provider-sized
//! batches (100 for Expo, or whatever arrived within `flush_after`), sends each batch as one
//! request, and hands the classified results to the outcome writer. Several requests of one
//! sender are in flight at once; the stream readers' permits bound the total. The provider's
//! [`Circuit`] decides whether a batch is sent at all, and whether failures spend attempts.

use crate::circuit::{Circuit, Health, Permit};
use crate::error::EngineError;
use crate::job::{Delivery, Outcome, SendResult};
use crate::messages::{Deliver, Record};
use crate::outcome::OutcomeWriter;
use crate::providers::{ClientFactory, ProviderClient, Response};
use crate::ratelimit::RateLimiter;
use crate::runtime::registry::{ActorStats, Envelope, Handle};
use crate::runtime::supervisor::Lifecycle;
use actix::prelude::*;
use futures_util::FutureExt;
use slog::warn;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where a sender's outcomes go (the outcome writer), with the figures that count its mailbox.
#[derive(Clone)]
pub struct Outcomes {
    pub recipient: Recipient<Envelope<Record>>,
    pub stats: Arc<ActorStats>,
}

impl From<Handle<OutcomeWriter>> for Outcomes {
    fn from(writer: Handle<OutcomeWriter>) -> Self {
        Outcomes { recipient: writer.addr.recipient(), stats: writer.stats }
    }
}

/// What stands between a sender and its provider, shared by the provider's pool.
#[derive(Clone)]
pub struct SendGuards {
    /// Whether a batch is sent at all, and whether its failures spend attempts.
    pub circuit: Circuit,
    /// The provider's shared rate limits (None: unlimited).
    pub limiter: Option<RateLimiter>,
}

pub struct SenderActor {
    life: Lifecycle,
    client: Box<dyn ProviderClient>,
    buffer: Vec<Delivery>,
    flush_scheduled: bool,
    outcomes: Outcomes,
    guards: SendGuards,
}

impl SenderActor {
    pub fn new(life: Lifecycle, factory: &ClientFactory, outcomes: Outcomes, guards: SendGuards) -> Self {
        SenderActor { life, client: factory(), buffer: Vec::new(), flush_scheduled: false, outcomes, guards }
    }

    fn send_full_batches(&mut self, ctx: &mut Context<Self>) {
        let max = self.client.max_batch();
        while self.buffer.len() >= max {
            let rest = self.buffer.split_off(max);
            let batch = std::mem::replace(&mut self.buffer, rest);
            self.send(batch, ctx);
        }
    }

    /// Sends a batch, after the shared rate limits admitted it: what they hold back is
    /// rescheduled without spending an attempt.
    fn send(&mut self, batch: Vec<Delivery>, ctx: &mut Context<Self>) {
        let Some(limiter) = self.guards.limiter.clone() else {
            return self.send_now(batch, ctx);
        };
        let jobs: Vec<_> = batch.iter().map(|d| d.job.clone()).collect();
        let provider = self.client.provider();
        ctx.spawn(async move { limiter.admit(&jobs).await }.into_actor(self).map(move |admission, act, ctx| {
            let (admitted, wait) = admission.unwrap_or_else(|e| {
                // Redis is the limiter's memory; without it, send rather than stall.
                warn!(act.life.log, "rate limiter unavailable; sending unlimited"; "error" => e.chain());
                (vec![true; batch.len()], Duration::ZERO)
            });
            let mut go = Vec::with_capacity(batch.len());
            let mut held = Vec::new();
            for (delivery, ok) in batch.into_iter().zip(admitted) {
                if ok {
                    go.push(delivery);
                } else {
                    let error = format!("rate limited ({provider})");
                    held.push(Outcome::Sent {
                        delivery,
                        result: SendResult::Deferred { error, after: wait },
                        latency_ms: 0,
                    });
                }
            }
            if !held.is_empty() {
                let (outcomes, log) = (act.outcomes.clone(), act.life.log.clone());
                ctx.spawn(async move { record(&outcomes, held, &log).await }.into_actor(act));
            }
            if !go.is_empty() {
                act.send_now(go, ctx);
            }
        }));
    }

    fn send_now(&mut self, batch: Vec<Delivery>, ctx: &mut Context<Self>) {
        let outcomes = self.outcomes.clone();
        let log = self.life.log.clone();
        // What expired while it waited here (the rate limit, a full batch) is not sent.
        let now_ms = crate::job::now_ms();
        let (expired, mut batch): (Vec<_>, Vec<_>) = batch.into_iter().partition(|d| d.job.expired(now_ms));
        if !expired.is_empty() {
            let expired =
                expired.into_iter().map(|delivery| Outcome::Expired { delivery, last_attempt: None }).collect();
            let (outcomes, log) = (outcomes.clone(), log.clone());
            ctx.spawn(async move { record(&outcomes, expired, &log).await }.into_actor(self));
        }
        if batch.is_empty() {
            return;
        }
        let circuit = self.guards.circuit.clone();
        let provider = self.client.provider();
        let (permit, request) = match self.guards.circuit.permit() {
            Permit::Denied { retry_in } => (Permit::Denied { retry_in }, None),
            permit => {
                let jobs: Vec<_> = batch.iter().map(|d| d.job.clone()).collect();
                // Building a request is synchronous code over a job's content: a panic there must
                // neither kill this actor (actix would not restart it) nor fail the batch-mates
                // of the job that caused it. Sent one by one, the culprit fails on its own.
                match std::panic::catch_unwind(AssertUnwindSafe(|| self.client.send(&jobs))) {
                    Ok(request) => (permit, Some(request)),
                    Err(panic) if batch.len() > 1 => {
                        warn!(self.life.log, "building a request panicked; sending the batch one by one";
                              "error" => EngineError::from_panic(panic).chain(), "provider" => provider.as_str());
                        drop(permit);
                        for delivery in batch {
                            self.send_now(vec![delivery], ctx);
                        }
                        return;
                    }
                    Err(panic) => {
                        let error =
                            format!("{provider}: the message could not be built: {}", EngineError::from_panic(panic));
                        let failed = vec![Outcome::Sent {
                            delivery: batch.remove(0),
                            result: SendResult::Permanent { error },
                            latency_ms: 0,
                        }];
                        ctx.spawn(async move { record(&outcomes, failed, &log).await }.into_actor(self));
                        return;
                    }
                }
            }
        };
        ctx.spawn(
            async move {
                let started = Instant::now();
                let n = batch.len();
                let results = match request {
                    None => {
                        // Back when the circuit may let a request through; no attempt spent.
                        let retry_in = match permit {
                            Permit::Denied { retry_in } => retry_in,
                            _ => Duration::ZERO,
                        };
                        let error = format!("circuit open for {provider}: not sent");
                        vec![SendResult::Deferred { error, after: retry_in_of(retry_in) }; n]
                    }
                    Some(request) => {
                        // A panicking provider client must not take the batch with it. It is a
                        // fault of ours, not the provider's: retried, but not counted against
                        // the provider's circuit.
                        let response = AssertUnwindSafe(request).catch_unwind().await.unwrap_or_else(|p| {
                            let error = format!("sender {}", EngineError::from_panic(p));
                            Response::all(n, SendResult::Retry { error, after: None }, Health::Up)
                        });
                        match circuit.record(permit, &response.health) {
                            Some(wait) => response.results.into_iter().map(|r| spare_attempt(r, wait)).collect(),
                            None => response.results,
                        }
                    }
                };
                let latency_ms = started.elapsed().as_millis() as u64;
                let outcomes_batch: Vec<Outcome> = batch
                    .into_iter()
                    .zip(results)
                    .map(|(delivery, result)| Outcome::Sent { delivery, result, latency_ms })
                    .collect();
                record(&outcomes, outcomes_batch, &log).await;
            }
            .into_actor(self),
        );
    }
}

/// How long a delivery the circuit kept back waits: until the circuit may let a request
/// through, and never less than a millisecond.
fn retry_in_of(retry_in: Duration) -> Duration {
    retry_in.max(Duration::from_millis(1))
}

async fn record(outcomes: &Outcomes, batch: Vec<Outcome>, log: &slog::Logger) {
    // If the writer is gone, the entries stay pending and are claimed again later.
    if let Err(e) = outcomes.recipient.send(outcomes.stats.envelope(Record { outcomes: batch })).await {
        warn!(log, "outcome writer unreachable; entries will be reclaimed"; "error" => %e);
    }
}

/// A request whose failure the circuit does not count as an attempt (a probe, or a failure
/// while the circuit opened or was open): its outage or auth failures are rescheduled for when
/// the circuit may close, without spending an attempt (whatever the provider said about single
/// messages still counts).
fn spare_attempt(result: SendResult, defer: Duration) -> SendResult {
    match result {
        SendResult::Retry { error, .. } | SendResult::Auth { error } => SendResult::Deferred { error, after: defer },
        other => other,
    }
}

impl Actor for SenderActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(self.life.stats.mailbox_capacity);
        self.life.on_started();
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        self.life.on_stopped();
    }
}

impl Supervised for SenderActor {
    fn restarting(&mut self, _: &mut Context<Self>) {
        self.life.on_restarting();
        self.flush_scheduled = false;
    }
}

impl Handler<Envelope<Deliver>> for SenderActor {
    type Result = ();

    fn handle(&mut self, msg: Envelope<Deliver>, ctx: &mut Context<Self>) {
        self.buffer.extend(msg.msg.deliveries);
        self.send_full_batches(ctx);
        if !self.buffer.is_empty() && !self.flush_scheduled {
            self.flush_scheduled = true;
            ctx.run_later(self.client.flush_after(), |act, ctx| {
                act.flush_scheduled = false;
                let batch = std::mem::take(&mut act.buffer);
                if !batch.is_empty() {
                    act.send(batch, ctx);
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::circuit::CircuitSettings;
    use crate::job::{EntryRef, Job, Priority, Provider};
    use crate::runtime::registry::Registry;
    use futures_util::future::LocalBoxFuture;
    use std::sync::Mutex;

    /// A client whose request building panics when a job's token says `boom`.
    struct Fragile;

    impl ProviderClient for Fragile {
        fn profile(&self) -> crate::providers::ProviderProfile {
            crate::providers::ProviderProfile {
                provider: Provider::Expo,
                max_batch: 100,
                flush_after: Duration::from_millis(5),
            }
        }
        fn send(&self, jobs: &[Job]) -> LocalBoxFuture<'static, Response> {
            assert!(jobs.iter().all(|j| j.token != "boom"), "a bug while building the request");
            let n = jobs.len();
            Box::pin(async move { Response::all(n, SendResult::Delivered { provider_message_id: None }, Health::Up) })
        }
    }

    /// Collects what senders record.
    struct Collector(Arc<Mutex<Vec<Outcome>>>);

    impl Actor for Collector {
        type Context = Context<Self>;
    }

    impl Handler<Envelope<Record>> for Collector {
        type Result = ();
        fn handle(&mut self, msg: Envelope<Record>, _: &mut Context<Self>) {
            if let Ok(mut seen) = self.0.lock() {
                seen.extend(msg.msg.outcomes);
            }
        }
    }

    fn delivery(token: &str) -> Delivery {
        Delivery {
            job: Job::first_attempt(Provider::Expo, token, serde_json::json!({}), Priority::Normal),
            entry: EntryRef { shard: 0, id: "1-0".into() },
        }
    }

    #[actix_rt::test]
    async fn a_panic_while_building_a_request_fails_only_its_job_and_the_sender_lives_on() {
        let log = slog::Logger::root(slog::Discard, slog::o!());
        let registry = Registry::default();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let collector = Collector(Arc::clone(&seen)).start();
        let outcomes =
            Outcomes { recipient: collector.recipient(), stats: registry.register("writer", "outcome_writer", 64) };
        let settings = CircuitSettings { failures: 3, open: Duration::from_secs(1), max_open: Duration::from_secs(1) };
        let guards = SendGuards { circuit: Circuit::new(Provider::Expo, settings, &log, None), limiter: None };
        let factory: ClientFactory = Arc::new(|| Box::new(Fragile) as Box<dyn ProviderClient>);
        let stats = registry.register("sender", "sender", 64);
        let life = Lifecycle::new(Arc::clone(&stats), &log);
        let sender = SenderActor::new(life, &factory, outcomes, guards).start();

        let batch = vec![delivery("a"), delivery("boom"), delivery("b")];
        sender.send(stats.envelope(Deliver { deliveries: batch })).await.expect("sender alive");
        let results = wait_for(&seen, 3).await;
        let by_token = |t: &str| results.iter().find(|(token, _)| token == t).map(|(_, r)| r.clone());
        assert_eq!(by_token("a"), Some(SendResult::Delivered { provider_message_id: None }));
        assert_eq!(by_token("b"), Some(SendResult::Delivered { provider_message_id: None }));
        let Some(SendResult::Permanent { error }) = by_token("boom") else { panic!("{results:?}") };
        assert!(error.starts_with("expo: the message could not be built: panicked: a bug"), "{error}");

        // Still alive, and still sending.
        sender.send(stats.envelope(Deliver { deliveries: vec![delivery("c")] })).await.expect("sender alive");
        assert_eq!(wait_for(&seen, 4).await.len(), 4);
    }

    /// (token, result) of every outcome recorded, once there are `n`.
    async fn wait_for(seen: &Arc<Mutex<Vec<Outcome>>>, n: usize) -> Vec<(String, SendResult)> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let results: Vec<_> = seen
                .lock()
                .map(|s| {
                    s.iter()
                        .filter_map(|o| match o {
                            Outcome::Sent { delivery, result, .. } => {
                                Some((delivery.job.token.clone(), result.clone()))
                            }
                            _ => None,
                        })
                        .collect()
                })
                .unwrap_or_default();
            if results.len() >= n {
                return results;
            }
            assert!(Instant::now() < deadline, "only {} of {n} outcomes", results.len());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
