//! The bound on deliveries in flight in this process (`worker.concurrency`).
//!
//! A stream reader takes permits before it reads, and the outcome writer gives them back once
//! the outcome is stored and the entry acknowledged. Readers therefore never read more than the
//! senders and the writer can take: back-pressure reaches Redis instead of piling up in
//! mailboxes.
//!
//! It also remembers which targets are being sent right now, and from which stream entry: a
//! second copy of a target (a reclaimed entry and its re-enqueued twin) is not sent while the
//! first is in flight, and the heartbeat keeps the entries of live sends from looking idle to
//! the claim actor of another process (see [`crate::periodic::heartbeat`]).

use crate::job::EntryRef;
use crate::store::Target;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

#[derive(Debug, Clone)]
pub struct InFlight {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    capacity: usize,
    used: AtomicUsize,
    freed: Notify,
    targets: Mutex<HashMap<Target, EntryRef>>,
}

impl InFlight {
    pub fn new(capacity: usize) -> Self {
        InFlight {
            inner: Arc::new(Inner {
                capacity: capacity.max(1),
                used: AtomicUsize::new(0),
                freed: Notify::new(),
                targets: Mutex::new(HashMap::new()),
            }),
        }
    }

    pub fn capacity(&self) -> usize {
        self.inner.capacity
    }

    pub fn used(&self) -> usize {
        self.inner.used.load(Ordering::Acquire)
    }

    /// Takes up to `want` permits and returns how many were taken (0 when full).
    pub fn try_take(&self, want: usize) -> usize {
        let mut used = self.inner.used.load(Ordering::Acquire);
        loop {
            let n = want.min(self.inner.capacity.saturating_sub(used));
            if n == 0 {
                return 0;
            }
            match self.inner.used.compare_exchange(used, used + n, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return n,
                Err(actual) => used = actual,
            }
        }
    }

    /// Takes between 1 and `want` permits, waiting while none is free.
    pub async fn take(&self, want: usize) -> usize {
        loop {
            let freed = self.inner.freed.notified();
            let n = self.try_take(want);
            if n > 0 {
                return n;
            }
            freed.await;
        }
    }

    pub fn release(&self, n: usize) {
        if n == 0 {
            return;
        }
        let _ = self.inner.used.fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| Some(u.saturating_sub(n)));
        self.inner.freed.notify_waiters();
    }

    /// Marks a target as being sent by this process from `entry`; false if it already is.
    pub fn claim_target(&self, target: Target, entry: &EntryRef) -> bool {
        use std::collections::hash_map::Entry;
        match self.inner.targets.lock() {
            Ok(mut t) => match t.entry(target) {
                Entry::Occupied(_) => false,
                Entry::Vacant(v) => {
                    v.insert(entry.clone());
                    true
                }
            },
            Err(_) => true,
        }
    }

    /// The stream entries of the targets being sent right now.
    pub fn entries(&self) -> Vec<EntryRef> {
        self.inner.targets.lock().map(|t| t.values().cloned().collect()).unwrap_or_default()
    }

    /// The outcomes of these targets are stored: they are no longer in flight.
    pub fn release_targets(&self, targets: impl Iterator<Item = Target>) {
        if let Ok(mut t) = self.inner.targets.lock() {
            for target in targets {
                t.remove(&target);
            }
        }
    }

    /// Resolves once nothing is in flight.
    pub async fn drained(&self) {
        loop {
            let freed = self.inner.freed.notified();
            if self.used() == 0 {
                return;
            }
            freed.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permits_never_exceed_the_capacity() {
        let f = InFlight::new(10);
        assert_eq!(f.try_take(7), 7);
        assert_eq!(f.try_take(7), 3);
        assert_eq!(f.try_take(1), 0);
        f.release(4);
        assert_eq!(f.try_take(9), 4);
        f.release(100);
        assert_eq!(f.used(), 0);
    }

    #[test]
    fn a_target_is_in_flight_once_until_released() {
        let f = InFlight::new(4);
        let t = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
        let (first, twin) = (EntryRef { shard: 0, id: "1-0".into() }, EntryRef { shard: 0, id: "2-0".into() });
        assert!(f.claim_target(t, &first));
        assert!(!f.claim_target(t, &twin), "a second copy is refused");
        assert_eq!(f.entries(), vec![first], "the entry of the copy in flight");
        f.release_targets(std::iter::once(t));
        assert!(f.entries().is_empty());
        assert!(f.claim_target(t, &twin));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_waiting_reader_wakes_when_permits_are_released() {
        let f = InFlight::new(2);
        assert_eq!(f.try_take(2), 2);
        let g = f.clone();
        let waiter = tokio::spawn(async move { g.take(5).await });
        tokio::task::yield_now().await;
        f.release(1);
        assert_eq!(waiter.await.unwrap(), 1);
    }
}
