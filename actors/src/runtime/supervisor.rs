//! Supervision: how every actor starts, fails and comes back.
//!
//! Each actor is started under an actix [`Supervisor`], which restarts it
//! (calling `Supervised::restarting`) whenever it stops while it is still addressed. An actor
//! that meets an I/O error — or panics inside one of its futures, caught by [`guarded`] — records
//! the error and calls `ctx.stop()`; when it starts again it waits out an exponential backoff
//! with jitter (`backon`) before touching Redis or Postgres again. Work taken by an actor that
//! died is never lost: it is acknowledged only after its outcome is stored, so the stream (or
//! the Postgres sweep) still has it.

use crate::error::{EngineError, Result};
use crate::events;
use crate::runtime::registry::ActorStats;
use actix::prelude::*;
use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use futures_util::FutureExt;
use slog::{error, info, Logger};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Runs a future, turning a panic inside it into an error so that the actor can stop and be
/// restarted instead of taking its arbiter down.
pub async fn guarded<T>(fut: impl Future<Output = Result<T>>) -> Result<T> {
    AssertUnwindSafe(fut).catch_unwind().await.unwrap_or_else(|p| Err(EngineError::from_panic(p)))
}

/// The restart bookkeeping every supervised actor carries.
pub struct Lifecycle {
    pub stats: Arc<ActorStats>,
    pub log: Logger,
    backoff: ExponentialBackoff,
    pending_delay: Option<Duration>,
}

impl Lifecycle {
    pub fn new(stats: Arc<ActorStats>, log: &Logger) -> Self {
        let log = log.new(slog::o!("actor" => stats.name.clone(), "kind" => stats.kind));
        Lifecycle { stats, log, backoff: backoff(), pending_delay: None }
    }

    /// Call from `Actor::started`. Returns how long to wait before doing any I/O: zero on the
    /// first start, the next backoff step after a failure.
    pub fn on_started(&mut self) -> Duration {
        self.stats.set_running(true);
        self.pending_delay.take().unwrap_or_default()
    }

    pub fn on_stopped(&self) {
        self.stats.set_running(false);
    }

    /// Call from `Supervised::restarting`.
    pub fn on_restarting(&mut self) {
        let restarts = self.stats.restarted();
        let delay = self.backoff.next().unwrap_or(Duration::from_secs(30));
        self.pending_delay = Some(delay);
        info!(self.log, "actor restarting"; "event" => events::ACTOR_RESTARTED, "restarts" => restarts,
              "delay_ms" => delay.as_millis() as u64);
    }

    /// The actor did useful work again: the next failure starts the backoff from the bottom.
    pub fn healthy(&mut self) {
        self.backoff = backoff();
    }

    /// Records why the actor is about to stop; the caller then calls `ctx.stop()`.
    pub fn failed(&self, err: &EngineError) {
        let chain = err.chain();
        error!(self.log, "actor failed; stopping for a restart"; "event" => events::ACTOR_FAILED, "error" => &chain);
        self.stats.record_error(chain);
    }
}

/// From 100 ms, doubling, to at most 10 s (plus jitter): an actor stopped by a Postgres or Redis
/// outage is back within seconds of its end, and a long outage costs one attempt (and one log
/// line) per actor every ~10 s.
fn backoff() -> ExponentialBackoff {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(10))
        .with_jitter()
        .without_max_times()
        .build()
}

/// An actor that carries a [`Lifecycle`].
pub trait Supervisable: Actor<Context = Context<Self>> + Sized {
    fn life(&mut self) -> &mut Lifecycle;

    /// Runs one step of the actor's work with its mailbox held (`ctx.wait`): a failure — or a
    /// panic inside — stops the actor for a restart with backoff; a success resets the backoff.
    fn run_step<T: 'static>(&mut self, ctx: &mut Context<Self>, fut: impl Future<Output = Result<T>> + 'static) {
        ctx.wait(guarded(fut).into_actor(self).map(|res, act, ctx| match res {
            Ok(_) => act.life().healthy(),
            Err(e) => {
                act.life().failed(&e);
                ctx.stop();
            }
        }));
    }
}

/// Set once the process is shutting down: readers stop reading, the listener stops claiming.
#[derive(Debug, Clone, Default)]
pub struct Shutdown(Arc<AtomicBool>);

impl Shutdown {
    pub fn trigger(&self) {
        self.0.store(true, Ordering::Release);
    }

    pub fn is_triggered(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn a_panic_in_a_guarded_future_becomes_an_error() {
        let out: Result<()> = guarded(async { panic!("boom") }).await;
        match out {
            Err(EngineError::Panic(msg)) => assert_eq!(msg, "boom"),
            other => panic!("expected a panic error, got {other:?}"),
        }
    }

    #[test]
    fn restart_delays_grow_and_reset_when_healthy() {
        let registry = crate::runtime::registry::Registry::default();
        let mut life = Lifecycle::new(registry.register("x", "test", 1), &Logger::root(slog::Discard, slog::o!()));
        assert_eq!(life.on_started(), Duration::ZERO);
        let mut last = Duration::ZERO;
        for _ in 0..6 {
            life.on_restarting();
            last = life.on_started();
        }
        assert!(last >= Duration::from_millis(3200), "{last:?}");
        life.healthy();
        life.on_restarting();
        assert!(life.on_started() < Duration::from_millis(200));
        assert_eq!(registry.snapshot()[0].restarts, 7);
    }
}
