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
//!
//! A target in flight is first being sent, then being recorded: from the moment the outcome
//! writer starts storing its outcome until the outcome is stored. The two are told apart
//! because a copy that turns up meanwhile means something different. While the target is
//! being sent, a copy is a twin, and dropping it loses nothing, since the send in flight
//! carries the target on (to delivered, a retry, or a dead letter). While it is being
//! recorded, the copy may be that carrying-on itself: the retry the outcome writer has just
//! written to the delayed set, moved back to the stream and read before the writer has
//! finished (other shards' writes, a busy thread). Dropping it would lose the target until the
//! sweep, so it is put back for later instead ([`Claim::BeingRecorded`]).

use crate::job::EntryRef;
use crate::store::Target;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
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
    targets: Mutex<HashMap<Target, Held>>,
}

/// A target in flight: the entry it was read from, and whether its outcome is being stored.
#[derive(Debug)]
struct Held {
    entry: EntryRef,
    recording: bool,
}

/// What [`InFlight::claim_target`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// The target was not in flight; now it is, from this entry: send it.
    Claimed,
    /// Another copy is being sent: this one is a twin, and is dropped.
    BeingSent,
    /// Another copy's outcome is being stored: this one may be the retry it scheduled, and is
    /// put back for later.
    BeingRecorded,
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

    /// Marks a target as being sent by this process from `entry`, unless a copy of it already
    /// is in flight here.
    pub fn claim_target(&self, target: Target, entry: &EntryRef) -> Claim {
        use std::collections::hash_map::Entry;
        let mut targets = self.inner.targets.lock().unwrap_or_else(PoisonError::into_inner);
        match targets.entry(target) {
            Entry::Occupied(held) if held.get().recording => Claim::BeingRecorded,
            Entry::Occupied(_) => Claim::BeingSent,
            Entry::Vacant(v) => {
                v.insert(Held { entry: entry.clone(), recording: false });
                Claim::Claimed
            }
        }
    }

    /// The outcome writer starts storing the outcomes of these targets, read from these
    /// entries. A target held from another entry (a copy taken since) stays being sent.
    pub fn recording<'a>(&self, targets: impl Iterator<Item = (Target, &'a EntryRef)>) {
        let mut held = self.inner.targets.lock().unwrap_or_else(PoisonError::into_inner);
        for (target, entry) in targets {
            if let Some(h) = held.get_mut(&target).filter(|h| h.entry == *entry) {
                h.recording = true;
            }
        }
    }

    /// The stream entries of the targets in flight right now.
    pub fn entries(&self) -> Vec<EntryRef> {
        let held = self.inner.targets.lock().unwrap_or_else(PoisonError::into_inner);
        held.values().map(|h| h.entry.clone()).collect()
    }

    /// The outcomes of these targets, read from these entries, are stored: they are no longer
    /// in flight. A target held from another entry (a copy taken since) stays held.
    pub fn release_targets<'a>(&self, targets: impl Iterator<Item = (Target, &'a EntryRef)>) {
        let mut held = self.inner.targets.lock().unwrap_or_else(PoisonError::into_inner);
        for (target, entry) in targets {
            if held.get(&target).is_some_and(|h| h.entry == *entry) {
                held.remove(&target);
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
        assert_eq!(f.claim_target(t, &first), Claim::Claimed);
        assert_eq!(f.claim_target(t, &twin), Claim::BeingSent, "a second copy is refused");
        assert_eq!(f.entries(), vec![first.clone()], "the entry of the copy in flight");
        f.release_targets(std::iter::once((t, &twin)));
        assert_eq!(f.entries(), vec![first.clone()], "released only from the entry that holds it");
        f.release_targets(std::iter::once((t, &first)));
        assert!(f.entries().is_empty());
        assert_eq!(f.claim_target(t, &twin), Claim::Claimed);
    }

    #[test]
    fn a_copy_that_comes_while_the_outcome_is_stored_is_told_apart_from_a_twin() {
        let f = InFlight::new(4);
        let (t, other) = ((uuid::Uuid::new_v4(), uuid::Uuid::new_v4()), (uuid::Uuid::new_v4(), uuid::Uuid::new_v4()));
        let (first, copy) = (EntryRef { shard: 0, id: "1-0".into() }, EntryRef { shard: 0, id: "2-0".into() });
        assert_eq!(f.claim_target(t, &first), Claim::Claimed);
        f.recording([(t, &copy), (other, &first)].into_iter());
        assert_eq!(f.claim_target(t, &copy), Claim::BeingSent, "only the outcome of the entry that holds it counts");
        f.recording([(t, &first), (other, &first)].into_iter());
        assert_eq!(f.claim_target(t, &copy), Claim::BeingRecorded);
        assert_eq!(f.claim_target(other, &copy), Claim::Claimed, "recording marks only targets in flight");
        assert_eq!(f.entries().len(), 2, "a target being recorded is still in flight: its entry is kept alive");
        f.release_targets(std::iter::once((t, &first)));
        assert_eq!(f.claim_target(t, &copy), Claim::Claimed);
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
