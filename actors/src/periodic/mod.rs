//! Periodic: the one actor that runs every job done on a timer — moving due retries
//! ([`delay`]), claiming stale entries ([`claim`]), pruning old rows ([`retention`]), polling
//! Expo receipts ([`receipts`]), refreshing live entries ([`heartbeat`]) and warning of a
//! growing backlog ([`alerts`]); each job is a submodule.
//!
//! A job says what it is ([`PeriodicJob::NAME`], [`PeriodicJob::KIND`]: the actor's row in
//! `GET /admin/actors`), how often it runs ([`PeriodicJob::interval`]) and what one run does
//! ([`PeriodicJob::step`]); [`Periodic`] owns the rest, the same for all of them (tikv's
//! `RunnableWithTimer` runs periodic work the same way):
//! - it waits out the restart backoff of its [`Lifecycle`] before the first tick after a restart;
//! - a tick is skipped while the previous one still waits in the mailbox (counted by the
//!   registry), and every tick once the process shuts down;
//! - a step runs with the mailbox held; an error — or a panic — in it stops the actor, which its
//!   supervisor restarts with backoff, and a successful step resets the backoff.
//!
//! The actors the README names are these: DelayActor = `Periodic<delay::MoveDue>`, ClaimActor =
//! `Periodic<claim::ClaimStale>`, RetentionActor = `Periodic<retention::Prune>`, ReceiptPoller =
//! `Periodic<receipts::PollReceipts>`, HeartbeatActor = `Periodic<heartbeat::Heartbeat>`,
//! AlertActor = `Periodic<alerts::WatchBacklog>`.

pub mod alerts;
pub mod claim;
pub mod delay;
pub mod heartbeat;
pub mod receipts;
pub mod retention;

use crate::error::Result;
use crate::messages::Step;
use crate::runtime::registry::Envelope;
use crate::runtime::supervisor::{Lifecycle, Shutdown, Supervisable};
use actix::prelude::*;
use slog::Logger;
use std::future::Future;
use std::time::Duration;

/// Work done on a timer by a [`Periodic`] actor.
pub trait PeriodicJob: Unpin + 'static {
    /// The actor's name in the registry (and in its log lines).
    const NAME: &'static str;
    /// The actor's kind in the registry: its name, unless the name says more (the poller named
    /// `receipts-expo` is a `receipt_poller`).
    const KIND: &'static str = Self::NAME;

    /// Time between two steps; `None` never ticks (the actor still runs, so that `/readyz`
    /// counts it as up).
    fn interval(&self) -> Option<Duration>;

    /// One run of the job; returns how many items it handled. The future owns what it needs
    /// (clones of the job's handles), so that the actor is free while it runs.
    fn step(&self, log: &Logger) -> impl Future<Output = Result<usize>> + use<Self>;
}

/// Runs `J::step` every `J::interval`, under a supervisor.
pub struct Periodic<J: PeriodicJob> {
    life: Lifecycle,
    shutdown: Shutdown,
    job: J,
}

impl<J: PeriodicJob> Periodic<J> {
    pub fn new(life: Lifecycle, shutdown: Shutdown, job: J) -> Self {
        Periodic { life, shutdown, job }
    }
}

impl<J: PeriodicJob> Actor for Periodic<J> {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(self.life.stats.mailbox_capacity);
        let delay = self.life.on_started();
        let Some(interval) = self.job.interval() else { return };
        let (stats, shutdown) = (self.life.stats.clone(), self.shutdown.clone());
        ctx.run_later(delay, move |_, ctx| {
            ctx.run_interval(interval, move |_, ctx| {
                if !shutdown.is_triggered() && stats.mailbox_len() == 0 {
                    ctx.address().do_send(stats.envelope(Step));
                }
            });
        });
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        self.life.on_stopped();
    }
}

impl<J: PeriodicJob> Supervisable for Periodic<J> {
    fn life(&mut self) -> &mut Lifecycle {
        &mut self.life
    }
}

impl<J: PeriodicJob> Supervised for Periodic<J> {
    fn restarting(&mut self, _: &mut Context<Self>) {
        self.life.on_restarting();
    }
}

impl<J: PeriodicJob> Handler<Envelope<Step>> for Periodic<J> {
    type Result = ();

    fn handle(&mut self, _: Envelope<Step>, ctx: &mut Context<Self>) {
        let fut = self.job.step(&self.life.log);
        self.run_step(ctx, fut);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::EngineError;
    use crate::runtime::registry::Registry;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Instant;

    /// Counts its steps; fails the steps whose number is in `fail_at`.
    struct Counting {
        steps: Arc<AtomicUsize>,
        interval: Option<Duration>,
        fail_at: &'static [usize],
    }

    impl PeriodicJob for Counting {
        const NAME: &'static str = "counting";
        const KIND: &'static str = "test";

        fn interval(&self) -> Option<Duration> {
            self.interval
        }

        fn step(&self, _: &Logger) -> impl Future<Output = Result<usize>> + use<> {
            let n = self.steps.fetch_add(1, Ordering::SeqCst) + 1;
            let fail = self.fail_at.contains(&n);
            async move {
                if fail {
                    Err(EngineError::Panic(format!("step {n} failed")))
                } else {
                    Ok(n)
                }
            }
        }
    }

    fn start(
        job: Counting,
        registry: &Registry,
        shutdown: &Shutdown,
    ) -> (Addr<Periodic<Counting>>, Arc<crate::runtime::registry::ActorStats>) {
        let log = Logger::root(slog::Discard, slog::o!());
        let stats = registry.register(Counting::NAME, Counting::KIND, 4);
        let life = Lifecycle::new(stats.clone(), &log);
        let shutdown = shutdown.clone();
        (Supervisor::start(move |_| Periodic::new(life, shutdown, job)), stats)
    }

    async fn until(what: &str, cond: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            actix_rt::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[actix_rt::test]
    async fn a_failed_step_restarts_the_actor_which_keeps_stepping() {
        let (registry, shutdown) = (Registry::default(), Shutdown::default());
        let steps = Arc::new(AtomicUsize::new(0));
        let job = Counting { steps: steps.clone(), interval: Some(Duration::from_millis(5)), fail_at: &[2] };
        let (_addr, stats) = start(job, &registry, &shutdown);
        until("steps after the restart", || steps.load(Ordering::SeqCst) >= 4).await;
        let snap = stats.snapshot();
        assert_eq!((snap.name.as_str(), snap.kind, snap.restarts), ("counting", "test", 1));
        assert_eq!(snap.last_error.as_deref(), Some("panicked: step 2 failed"));
        assert!(snap.running);
    }

    #[actix_rt::test]
    async fn without_an_interval_or_once_shut_down_a_running_actor_never_steps() {
        let registry = Registry::default();
        let (live, stopping) = (Shutdown::default(), Shutdown::default());
        stopping.trigger();
        let counter = || Arc::new(AtomicUsize::new(0));
        let (control, idle, shut) = (counter(), counter(), counter());
        let every = Some(Duration::from_millis(5));
        let _control = start(Counting { steps: control.clone(), interval: every, fail_at: &[] }, &registry, &live);
        let (_idle, idle_stats) =
            start(Counting { steps: idle.clone(), interval: None, fail_at: &[] }, &registry, &live);
        let (_shut, shut_stats) =
            start(Counting { steps: shut.clone(), interval: every, fail_at: &[] }, &registry, &stopping);
        // Same arbiter, same interval: by the time the control job stepped five times, the
        // others' timers had as many chances.
        until("five steps of the control job", || control.load(Ordering::SeqCst) >= 5).await;
        assert!(idle_stats.is_running() && shut_stats.is_running());
        assert_eq!(idle.load(Ordering::SeqCst), 0, "a job without an interval stepped");
        assert_eq!(shut.load(Ordering::SeqCst), 0, "a job stepped after shutdown");
    }

    /// `GET /admin/actors`, the operators' dashboards and the tests read these.
    #[test]
    fn the_periodic_actors_keep_their_names_and_kinds() {
        fn row<J: PeriodicJob>() -> (&'static str, &'static str) {
            (J::NAME, J::KIND)
        }
        assert_eq!(row::<crate::periodic::delay::MoveDue>(), ("delay", "delay"));
        assert_eq!(row::<crate::periodic::claim::ClaimStale>(), ("claim", "claim"));
        assert_eq!(row::<crate::periodic::retention::Prune>(), ("retention", "retention"));
        assert_eq!(row::<crate::periodic::receipts::PollReceipts>(), ("receipts-expo", "receipt_poller"));
        assert_eq!(row::<crate::periodic::heartbeat::Heartbeat>(), ("heartbeat", "heartbeat"));
    }
}
