//! Deps: what the engine's actors are built from.
//!
//! The engine makes one [`Deps`] at start and hands it to each actor's constructor, which takes
//! the fields it needs (mini-redis builds its `Handler` from a documented struct the same way).
//! Every field is a cheap handle onto something shared by the whole process, so cloning a field
//! shares it; nothing here is per actor.

use crate::inflight::InFlight;
use crate::relay::Relay;
use crate::runtime::registry::Registry;
use crate::runtime::supervisor::{Lifecycle, Shutdown};
use crate::store::Store;
use slog::Logger;

/// The process-wide handles every actor is built from.
#[derive(Clone)]
pub struct Deps {
    /// Postgres, the record of truth: fan-out, screens before a send, outcomes, retention and
    /// receipts all go through it.
    pub store: Store,
    /// Redis: the streams the work travels on, the delayed sets, idempotency keys and counters.
    pub relay: Relay,
    /// The process's in-flight permits and targets: they bound what the readers and the claim
    /// actor take, and keep one target from being sent twice at once here; the heartbeat keeps
    /// their entries fresh.
    pub inflight: InFlight,
    /// Set once the process shuts down: readers stop reading, the listener and the periodic
    /// actors stop ticking.
    pub shutdown: Shutdown,
    /// This process's consumer name in the streams' consumer group: what it reads or claims is
    /// pending under this name until acknowledged.
    pub consumer: String,
    /// Every actor registers here, for its restart bookkeeping and `GET /admin/actors`.
    pub registry: Registry,
    /// The engine's logger; each actor's [`Lifecycle`] adds its name and kind.
    pub log: Logger,
}

impl Deps {
    /// Registers an actor (its row in `GET /admin/actors`) and gives it the restart bookkeeping
    /// that survives its restarts.
    pub fn life(&self, name: impl Into<String>, kind: &'static str, mailbox_capacity: usize) -> Lifecycle {
        Lifecycle::new(self.registry.register(name, kind, mailbox_capacity), &self.log)
    }
}
