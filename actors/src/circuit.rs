//! One circuit breaker per provider and process (failsafe), shared by that provider's senders.
//!
//! A request that fails as a whole — network error, 5xx, 429, or credentials the provider
//! refuses — counts as a failure; `circuit.failures` of them in a row open the circuit. While it
//! is open, deliveries for the provider are rescheduled without spending an attempt. After the
//! open interval (growing, jittered, up to `circuit.max_open_ms`) one request is let through
//! as a probe: success closes the circuit, failure opens it again. A failed probe does not
//! spend its deliveries' attempts either, so a long outage costs each delivery at most the
//! attempts it made before the circuit opened.

use crate::events;
use crate::job::Provider;
use failsafe::failure_policy::{consecutive_failures, ConsecutiveFailures};
use failsafe::StateMachine;
use slog::{info, warn, Logger};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

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

#[derive(Debug, Clone, Copy)]
pub struct CircuitSettings {
    /// Failed requests in a row that open the circuit.
    pub failures: u32,
    /// First open interval.
    pub open: Duration,
    /// Longest open interval.
    pub max_open: Duration,
}

type Machine = StateMachine<ConsecutiveFailures<OpenIntervals>, Events>;

/// How long the circuit stays open each time it opens: doubling from `open` up to `max_open`,
/// each with "equal jitter" (half fixed, half random) so that processes do not probe in step.
/// (failsafe's own jittered backoffs only take whole seconds.)
#[derive(Debug, Clone)]
struct OpenIntervals {
    next: Duration,
    max: Duration,
}

impl Iterator for OpenIntervals {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let current = self.next;
        self.next = (self.next * 2).min(self.max);
        let half = current / 2;
        let jitter = rand::random_range(0..=half.as_millis() as u64);
        Some(half + Duration::from_millis(jitter))
    }
}

#[derive(Clone)]
pub struct Circuit {
    machine: Machine,
    events: Events,
}

/// Where transitions are sent to be counted in Redis (failsafe's callbacks are synchronous and
/// run on the senders' threads, so they only hand the event over).
pub type Transitions = tokio::sync::mpsc::UnboundedSender<(&'static str, Provider)>;

/// Logs the transitions (once each, not once per message), hands them over to be counted, and
/// remembers whether the current call is a half-open probe.
#[derive(Clone)]
struct Events {
    provider: Provider,
    log: Logger,
    transitions: Option<Transitions>,
    probing: Arc<AtomicBool>,
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
        self.probing.store(false, Ordering::Release);
        self.tripped.store(true, Ordering::Release);
        let reason = self.last_failure.lock().map(|r| r.clone()).unwrap_or_default();
        warn!(self.log, "circuit opened: deliveries are rescheduled without spending attempts";
              "event" => events::CIRCUIT_OPEN, "provider" => self.provider.as_str(), "reason" => reason);
        self.count(events::CIRCUIT_OPEN);
    }

    fn on_half_open(&self) {
        self.probing.store(true, Ordering::Release);
        info!(self.log, "circuit half-open: probing"; "event" => events::CIRCUIT_HALF_OPEN,
              "provider" => self.provider.as_str());
        self.count(events::CIRCUIT_HALF_OPEN);
    }

    fn on_closed(&self) {
        self.probing.store(false, Ordering::Release);
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
            probing: Arc::new(AtomicBool::new(false)),
            tripped: Arc::new(AtomicBool::new(false)),
            last_failure: Arc::new(Mutex::new(String::new())),
        };
        let intervals = OpenIntervals { next: settings.open, max: settings.max_open.max(settings.open) };
        let policy = consecutive_failures(settings.failures.max(1), intervals);
        Circuit { machine: StateMachine::new(policy, events.clone()), events }
    }

    /// May a request be sent now? (Closed, or half-open and this is the probe.)
    pub fn permits(&self) -> bool {
        self.machine.is_call_permitted()
    }

    /// Records how a permitted request went. Returns true when its failures must not spend
    /// attempts: the request was a half-open probe, or it just opened the circuit.
    pub fn record(&self, health: &Health) -> bool {
        match health {
            Health::Up => {
                self.machine.on_success();
                false
            }
            Health::Outage(reason) | Health::AuthFailure(reason) => {
                let was_probe = self.events.probing.load(Ordering::Acquire);
                if let Ok(mut last) = self.events.last_failure.lock() {
                    last.clone_from(reason);
                }
                self.machine.on_error();
                was_probe
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn circuit() -> Circuit {
        let settings =
            CircuitSettings { failures: 2, open: Duration::from_millis(50), max_open: Duration::from_millis(100) };
        Circuit::new(Provider::Expo, settings, &Logger::root(slog::Discard, slog::o!()), None)
    }

    #[test]
    fn consecutive_outages_open_the_circuit_and_a_good_probe_closes_it() {
        let c = circuit();
        assert!(c.permits());
        assert!(!c.record(&Health::Outage("503".into())));
        assert!(c.permits(), "one failure is not enough");
        c.record(&Health::AuthFailure("401".into()));
        assert!(!c.permits(), "two in a row open it");
        std::thread::sleep(Duration::from_millis(120));
        assert!(c.permits(), "half-open after the interval");
        c.record(&Health::Up);
        assert!(c.permits());
        c.record(&Health::Outage("503".into()));
        assert!(c.permits(), "closed again: the count starts over");
    }

    #[test]
    fn a_failed_probe_does_not_spend_attempts_and_reopens() {
        let c = circuit();
        c.record(&Health::Outage("a".into()));
        c.record(&Health::Outage("b".into()));
        std::thread::sleep(Duration::from_millis(120));
        assert!(c.permits());
        assert!(c.record(&Health::Outage("c".into())), "the probe's failure is free");
        assert!(!c.permits());
    }

    #[test]
    fn transitions_are_handed_over_to_be_counted() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let settings =
            CircuitSettings { failures: 1, open: Duration::from_millis(20), max_open: Duration::from_millis(20) };
        let c = Circuit::new(Provider::Fcm, settings, &Logger::root(slog::Discard, slog::o!()), Some(tx));
        c.record(&Health::Outage("a".into()));
        std::thread::sleep(Duration::from_millis(40));
        assert!(c.permits());
        c.record(&Health::Up);
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
    }

    #[test]
    fn a_success_between_failures_keeps_it_closed() {
        let c = circuit();
        c.record(&Health::Outage("a".into()));
        c.record(&Health::Up);
        c.record(&Health::Outage("b".into()));
        assert!(c.permits());
    }
}
