//! What time it is, for everything that judges ages and signs timestamps: the provider tokens
//! (APNs' `iat`, re-signed after 50 minutes; FCM's OAuth assertion and access-token lifetime),
//! the binary's JWKS cache, and the emulators' "older than an hour" checks.
//!
//! A [`Clock`] gives two readings: a monotonic [`Instant`] for ages and intervals, and the wall
//! time for what goes into a JWT. The service passes [`SystemClock`]; a test passes a
//! [`ManualClock`], which stands still until the test moves it, so that "an hour later" is a
//! step of the test instead of a wait. The same `ManualClock` handed to a client and to its
//! emulator keeps the two in agreement.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A source of the current time. Both readings move together.
pub trait Clock: Send + Sync {
    /// Monotonic time, for ages and intervals.
    fn now(&self) -> Instant;

    /// Wall-clock time, for timestamps others read (a JWT's `iat`).
    fn wall(&self) -> SystemTime;

    /// [`wall`](Clock::wall) as whole seconds since the Unix epoch (0 before it).
    fn unix_secs(&self) -> u64 {
        self.wall().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default()
    }
}

/// The system's clocks: `Instant::now()` and `SystemTime::now()`.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn wall(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A clock that starts at the real now and then moves only by [`advance`](ManualClock::advance).
/// Clones share one time (it is an `Arc`), so the clone given to a token source and the one the
/// test keeps show the same moment.
#[derive(Debug, Clone)]
pub struct ManualClock {
    inner: Arc<Manual>,
}

#[derive(Debug)]
struct Manual {
    instant: Instant,
    wall: SystemTime,
    moved: Mutex<Duration>,
}

impl ManualClock {
    pub fn new() -> ManualClock {
        let inner = Manual { instant: Instant::now(), wall: SystemTime::now(), moved: Mutex::new(Duration::ZERO) };
        ManualClock { inner: Arc::new(inner) }
    }

    /// Moves both readings forward by `by`.
    pub fn advance(&self, by: Duration) {
        *self.moved() += by;
    }

    /// This clock as what token sources and emulators take.
    pub fn shared(&self) -> Arc<dyn Clock> {
        Arc::new(self.clone())
    }

    fn moved(&self) -> std::sync::MutexGuard<'_, Duration> {
        // A `Duration` is assigned whole: a panic elsewhere cannot leave it half-written.
        self.inner.moved.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        ManualClock::new()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        self.inner.instant + *self.moved()
    }

    fn wall(&self) -> SystemTime {
        self.inner.wall + *self.moved()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_stands_still_until_advanced_and_then_moves_both_readings_in_every_clone() {
        let clock = ManualClock::new();
        let shared = clock.shared();
        let (instant, secs) = (shared.now(), shared.unix_secs());
        assert!(secs > 1_600_000_000, "it starts at the real now: {secs}");
        assert_eq!((shared.now(), shared.unix_secs()), (instant, secs), "no time passes by itself");

        clock.advance(Duration::from_secs(3600));

        assert_eq!(shared.now(), instant + Duration::from_secs(3600));
        assert_eq!(shared.unix_secs(), secs + 3600);
    }

    #[test]
    fn the_system_clock_reads_the_system() {
        let before = SystemTime::now();
        let wall = SystemClock.wall();
        assert!(wall >= before && wall <= SystemTime::now());
        let at = Instant::now();
        assert!(SystemClock.now() >= at);
    }
}
