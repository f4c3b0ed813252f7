//! One circuit breaker per provider and process (failsafe), shared by that provider's senders.
//!
//! A request that fails as a whole — network error, timeout, 5xx, 429, or credentials the
//! provider refuses — counts as a failure; `circuit.failures` of them in a row open the circuit.
//! While it is open, deliveries for the provider are rescheduled for when it may close again,
//! without spending an attempt. After the open interval (growing, jittered, up to
//! `circuit.max_open_ms`) it is half-open: exactly one request at a time goes out as a probe, and
//! the others wait (again without spending attempts). A good probe closes the circuit; a failed
//! one opens it again.
//!
//! What an outage costs: only failures recorded while the circuit was still closed *and* left
//! it closed spend attempts. The failure that opens it, every failure of a request that was
//! already in flight when it opened (a provider that hangs fails all of them at once, one
//! timeout later), and every failed probe are free. So an outage, however it looks, costs a
//! delivery at most the attempts it made before `circuit.failures` requests in a row had failed.
//!
//! Time is failsafe's clock (`failsafe::clock::now`): the system's monotonic clock, unless a
//! test froze it on its thread (`failsafe::clock::freeze`) to move it by hand. The open
//! intervals kept here read the same clock as failsafe's state machine, so both agree on when
//! a probe may go out.

use crate::events;
use crate::job::Provider;
use crate::settings::rules::{at_least_ms, millis, within, within_ms, SettingsError, DAY_MS};
use failsafe::clock;
use failsafe::failure_policy::{consecutive_failures, ConsecutiveFailures};
use failsafe::StateMachine;
use serde::{Deserialize, Serialize};
use slog::{info, warn, Logger};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How a whole request went, as far as the provider's health is concerned.
#[derive(Debug, Clone, PartialEq)]
pub enum Health {
    /// The provider answered (whatever it said about single messages).
    Up,
    /// The provider is unreachable, overloaded or failing: network error, 5xx, 429.
    Outage(String),
    /// The provider refuses our credentials or configuration.
    AuthFailure(String),
}

/// `[circuit]`.
#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CircuitSettings {
    /// Failed requests in a row (outage or refused credentials) that open the circuit.
    pub failures: u32,
    /// First open interval (`circuit.open_ms`); it grows (jittered) while probes keep failing…
    #[serde(rename = "open_ms", with = "millis")]
    pub open: Duration,
    /// …up to this (`circuit.max_open_ms`).
    #[serde(rename = "max_open_ms", with = "millis")]
    pub max_open: Duration,
}

impl CircuitSettings {
    pub fn validate(&self) -> Result<(), SettingsError> {
        within("circuit.failures", u64::from(self.failures), 1..=100_000)?;
        within_ms("circuit.open_ms", self.open, 1..=DAY_MS)?;
        within_ms("circuit.max_open_ms", self.max_open, 1..=DAY_MS)?;
        at_least_ms("circuit.max_open_ms", self.max_open, "circuit.open_ms", self.open)
    }
}

type Machine = StateMachine<ConsecutiveFailures<OpenIntervals>, Events>;

/// How long the circuit stays open each time it opens: doubling from `open` up to `max_open`,
/// each with "equal jitter" (half fixed, half random) so that processes do not probe in step.
/// (failsafe's own jittered backoffs only take whole seconds.)
#[derive(Debug, Clone)]
struct OpenIntervals {
    next: Duration,
    max: Duration,
    /// When the interval drawn last ends: failsafe draws one as it opens the circuit, and does
    /// not say when it will let a probe through.
    until: Arc<Mutex<Instant>>,
}

impl Iterator for OpenIntervals {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let current = self.next;
        self.next = (self.next * 2).min(self.max);
        let half = current / 2;
        let jitter = rand::random_range(0..=half.as_millis() as u64);
        let interval = half + Duration::from_millis(jitter);
        if let Ok(mut until) = self.until.lock() {
            *until = clock::now() + interval;
        }
        Some(interval)
    }
}

/// Whether a request may go out now.
#[derive(Debug, PartialEq, Eq)]
pub enum Permit {
    /// The circuit is closed.
    Closed,
    /// The circuit is half-open and this request is its one probe: no other goes out until its
    /// outcome is recorded or the token is dropped (a send that never finished).
    Probe(ProbeToken),
    /// Not now: try again after `retry_in` (when the circuit may let a request through).
    Denied { retry_in: Duration },
}

/// The right to be the half-open probe; given back when dropped.
#[derive(Debug)]
pub struct ProbeToken {
    out: Arc<AtomicU64>,
    id: u64,
}

impl PartialEq for ProbeToken {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}

impl Eq for ProbeToken {}

impl Drop for ProbeToken {
    fn drop(&mut self) {
        // Only this probe's own token: a later probe may hold it by now.
        let _ = self.out.compare_exchange(self.id, 0, Ordering::AcqRel, Ordering::Acquire);
    }
}

const CLOSED: u8 = 0;
const OPEN: u8 = 1;
const HALF_OPEN: u8 = 2;

#[derive(Clone)]
pub struct Circuit {
    machine: Machine,
    events: Events,
    /// When the current open interval ends.
    until: Arc<Mutex<Instant>>,
    /// How long a delivery waits while the probe is out: the first open interval.
    probe_wait: Duration,
}

/// Where transitions are sent to be counted in Redis (failsafe's callbacks are synchronous and
/// run on the senders' threads, so they only hand the event over).
pub type Transitions = tokio::sync::mpsc::UnboundedSender<(&'static str, Provider)>;

/// Logs the transitions (once each, not once per message), hands them over to be counted, and
/// keeps the state and the half-open probe token.
#[derive(Clone)]
struct Events {
    provider: Provider,
    log: Logger,
    transitions: Option<Transitions>,
    /// CLOSED, OPEN or HALF_OPEN, as failsafe last reported.
    state: Arc<AtomicU8>,
    /// The id of the half-open probe that is out (0: none).
    probe_out: Arc<AtomicU64>,
    /// Ids for probe tokens.
    probes: Arc<AtomicU64>,
    /// Opened since it last closed (failsafe also reports the initial closed state).
    tripped: Arc<AtomicBool>,
    last_failure: Arc<Mutex<String>>,
}

impl Events {
    fn count(&self, event: &'static str) {
        if let Some(tx) = &self.transitions {
            let _ = tx.send((event, self.provider));
        }
    }
}

impl failsafe::Instrument for Events {
    fn on_call_rejected(&self) {}

    fn on_open(&self) {
        self.state.store(OPEN, Ordering::Release);
        self.probe_out.store(0, Ordering::Release);
        self.tripped.store(true, Ordering::Release);
        let reason = self.last_failure.lock().map(|r| r.clone()).unwrap_or_default();
        warn!(self.log, "circuit opened: deliveries are rescheduled without spending attempts";
              "event" => events::CIRCUIT_OPEN, "provider" => self.provider.as_str(), "reason" => reason);
        self.count(events::CIRCUIT_OPEN);
    }

    fn on_half_open(&self) {
        self.state.store(HALF_OPEN, Ordering::Release);
        info!(self.log, "circuit half-open: probing"; "event" => events::CIRCUIT_HALF_OPEN,
              "provider" => self.provider.as_str());
        self.count(events::CIRCUIT_HALF_OPEN);
    }

    fn on_closed(&self) {
        self.state.store(CLOSED, Ordering::Release);
        self.probe_out.store(0, Ordering::Release);
        if !self.tripped.swap(false, Ordering::AcqRel) {
            return;
        }
        info!(self.log, "circuit closed"; "event" => events::CIRCUIT_CLOSED, "provider" => self.provider.as_str());
        self.count(events::CIRCUIT_CLOSED);
    }
}

impl Circuit {
    pub fn new(provider: Provider, settings: CircuitSettings, log: &Logger, transitions: Option<Transitions>) -> Self {
        let events = Events {
            provider,
            log: log.new(slog::o!("circuit" => provider.as_str())),
            transitions,
            state: Arc::new(AtomicU8::new(CLOSED)),
            probe_out: Arc::new(AtomicU64::new(0)),
            probes: Arc::new(AtomicU64::new(0)),
            tripped: Arc::new(AtomicBool::new(false)),
            last_failure: Arc::new(Mutex::new(String::new())),
        };
        let until = Arc::new(Mutex::new(clock::now()));
        let intervals =
            OpenIntervals { next: settings.open, max: settings.max_open.max(settings.open), until: Arc::clone(&until) };
        let policy = consecutive_failures(settings.failures.max(1), intervals);
        Circuit { machine: StateMachine::new(policy, events.clone()), events, until, probe_wait: settings.open }
    }

    /// May a request be sent now? Closed: yes. Half-open: only if no other probe is out.
    pub fn permit(&self) -> Permit {
        if !self.machine.is_call_permitted() {
            return Permit::Denied { retry_in: self.reopens_in() };
        }
        if self.events.state.load(Ordering::Acquire) != HALF_OPEN {
            return Permit::Closed;
        }
        let id = self.events.probes.fetch_add(1, Ordering::AcqRel) + 1;
        match self.events.probe_out.compare_exchange(0, id, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => Permit::Probe(ProbeToken { out: Arc::clone(&self.events.probe_out), id }),
            Err(_) => Permit::Denied { retry_in: self.probe_wait },
        }
    }

    /// How long until the open circuit lets a probe through (zero when it is not open).
    fn reopens_in(&self) -> Duration {
        self.until.lock().map(|until| until.saturating_duration_since(clock::now())).unwrap_or(self.probe_wait)
    }

    /// Records how a permitted request went. Returns `Some(wait)` when its failures must not
    /// spend attempts — it was the probe, it opened the circuit, or the circuit was already
    /// open when it failed — with how long its deliveries should wait: until the circuit may
    /// let a request through again.
    pub fn record(&self, permit: Permit, health: &Health) -> Option<Duration> {
        let probe = matches!(permit, Permit::Probe(_));
        let free = match health {
            Health::Up => {
                self.machine.on_success();
                None
            }
            Health::Outage(reason) | Health::AuthFailure(reason) => {
                if let Ok(mut last) = self.events.last_failure.lock() {
                    last.clone_from(reason);
                }
                self.machine.on_error();
                let closed = self.events.state.load(Ordering::Acquire) == CLOSED;
                (probe || !closed).then(|| self.reopens_in().max(Duration::from_millis(1)))
            }
        };
        // A probe's token goes back here, now that its outcome counts.
        drop(permit);
        free
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use failsafe::clock::MockClock;

    /// Opens after 2 failures, for 25–50 ms the first time (equal jitter), 50–100 ms after.
    fn circuit() -> Circuit {
        let settings =
            CircuitSettings { failures: 2, open: Duration::from_millis(50), max_open: Duration::from_millis(100) };
        Circuit::new(Provider::Expo, settings, &Logger::root(slog::Discard, slog::o!()), None)
    }

    /// Moves the frozen clock past the longest open interval (`max_open`, 100 ms): failsafe
    /// lets a request through only once its clock is strictly past the interval's end.
    fn past_open(clock: &mut MockClock) {
        clock.advance(Duration::from_millis(101));
    }

    fn open(c: &Circuit) {
        for reason in ["a", "b"] {
            c.record(Permit::Closed, &Health::Outage(reason.into()));
        }
        assert!(matches!(c.permit(), Permit::Denied { .. }), "two failures in a row open it");
    }

    /// Opens the circuit, moves past its interval and takes the half-open probe.
    fn probe(c: &Circuit, clock: &mut MockClock) -> Permit {
        open(c);
        past_open(clock);
        let probe = c.permit();
        assert!(matches!(probe, Permit::Probe(_)), "half-open after the interval: {probe:?}");
        probe
    }

    #[test]
    fn consecutive_outages_open_the_circuit_and_a_good_probe_closes_it() {
        clock::freeze(|clock| {
            let c = circuit();
            assert_eq!(c.permit(), Permit::Closed);
            assert_eq!(c.record(Permit::Closed, &Health::Outage("503".into())), None, "one failure spends its attempt");
            assert_eq!(c.permit(), Permit::Closed, "one failure is not enough");
            let wait =
                c.record(Permit::Closed, &Health::AuthFailure("401".into())).expect("the one that opens it is free");
            assert!(wait >= Duration::from_millis(25) && wait <= Duration::from_millis(50), "{wait:?}");
            match c.permit() {
                Permit::Denied { retry_in } => assert_eq!(retry_in, wait, "denied until the interval it drew ends"),
                other => panic!("open, yet {other:?}"),
            }
            clock.advance(Duration::from_millis(24));
            assert!(matches!(c.permit(), Permit::Denied { .. }), "still open before the shortest interval ends");
            past_open(clock);
            let probe = c.permit();
            assert!(matches!(probe, Permit::Probe(_)), "half-open after the interval: {probe:?}");
            assert_eq!(c.record(probe, &Health::Up), None);
            assert_eq!(c.permit(), Permit::Closed);
            c.record(Permit::Closed, &Health::Outage("503".into()));
            assert_eq!(c.permit(), Permit::Closed, "closed again: the count starts over");
        });
    }

    #[test]
    fn half_open_lets_one_probe_out_at_a_time() {
        clock::freeze(|clock| {
            let c = circuit();
            let probe = probe(&c, clock);
            for _ in 0..10 {
                match c.permit() {
                    Permit::Denied { retry_in } => assert_eq!(retry_in, Duration::from_millis(50)),
                    other => panic!("a second request went out while the probe is out: {other:?}"),
                }
            }
            // The probe failed: open again (the interval doubled), the next probe only after it.
            let wait = c.record(probe, &Health::Outage("timeout".into())).expect("a failed probe is free");
            assert!(wait >= Duration::from_millis(50) && wait <= Duration::from_millis(100), "{wait:?}");
            clock.advance(Duration::from_millis(49));
            assert!(matches!(c.permit(), Permit::Denied { .. }));
            past_open(clock);
            assert!(matches!(c.permit(), Permit::Probe(_)), "one probe again after the interval");
        });
    }

    #[test]
    fn a_probe_that_never_reports_gives_its_token_back_when_dropped() {
        clock::freeze(|clock| {
            let c = circuit();
            let probe = probe(&c, clock);
            assert!(matches!(c.permit(), Permit::Denied { .. }), "the token is out");
            drop(probe); // its send was cancelled
            assert!(matches!(c.permit(), Permit::Probe(_)));
        });
    }

    #[test]
    fn failures_of_requests_in_flight_when_it_opened_are_free() {
        // A provider that hangs fails every request in flight at once, one timeout later.
        clock::freeze(|clock| {
            let c = circuit();
            let in_flight: Vec<Permit> = (0..5).map(|_| c.permit()).collect();
            let spent: Vec<bool> = in_flight
                .into_iter()
                .map(|permit| c.record(permit, &Health::Outage("timeout".into())).is_none())
                .collect();
            assert_eq!(spent, vec![true, false, false, false, false], "only the failure before it opened spends");
            let opened_for = match c.permit() {
                Permit::Denied { retry_in } => retry_in,
                other => panic!("open, yet {other:?}"),
            };
            clock.advance(Duration::from_millis(10));
            let wait = c.record(Permit::Closed, &Health::Outage("late".into())).expect("free while open");
            assert_eq!(wait, opened_for - Duration::from_millis(10), "until it may close");
        });
    }

    #[test]
    fn transitions_are_handed_over_to_be_counted() {
        clock::freeze(|clock| {
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
            let settings =
                CircuitSettings { failures: 1, open: Duration::from_millis(20), max_open: Duration::from_millis(20) };
            let c = Circuit::new(Provider::Fcm, settings, &Logger::root(slog::Discard, slog::o!()), Some(tx));
            c.record(Permit::Closed, &Health::Outage("a".into()));
            clock.advance(Duration::from_millis(21));
            let probe = c.permit();
            c.record(probe, &Health::Up);
            let mut seen = Vec::new();
            while let Ok(e) = rx.try_recv() {
                seen.push(e);
            }
            assert_eq!(
                seen,
                vec![
                    (events::CIRCUIT_OPEN, Provider::Fcm),
                    (events::CIRCUIT_HALF_OPEN, Provider::Fcm),
                    (events::CIRCUIT_CLOSED, Provider::Fcm)
                ]
            );
        });
    }

    #[test]
    fn a_success_between_failures_keeps_it_closed() {
        let c = circuit();
        c.record(Permit::Closed, &Health::Outage("a".into()));
        c.record(Permit::Closed, &Health::Up);
        c.record(Permit::Closed, &Health::Outage("b".into()));
        assert_eq!(c.permit(), Permit::Closed);
    }
}
