//! Which actors exist and how full their mailboxes are.
//!
//! actix exposes no mailbox length, so every message to a supervised actor travels in an
//! [`Envelope`] carrying a [`MailboxToken`]: the token counts the message in when it is sent and
//! out when the handler drops it. `GET /admin/actors` reads [`Registry::snapshot`]. A [`Handle`]
//! is how one actor addresses another: the address, and the figures that count its mailbox.

use actix::{Actor, Addr, Message};
use serde::Serialize;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Live figures of one actor; shared by the actor (across restarts) and the registry.
#[derive(Debug)]
pub struct ActorStats {
    pub name: String,
    pub kind: &'static str,
    pub mailbox_capacity: usize,
    mailbox_len: AtomicI64,
    handled: AtomicU64,
    restarts: AtomicU32,
    running: AtomicBool,
    last_error: Mutex<Option<String>>,
}

impl ActorStats {
    /// A token for one message on its way to this actor's mailbox.
    pub fn token(self: &Arc<Self>) -> MailboxToken {
        self.mailbox_len.fetch_add(1, Ordering::Relaxed);
        MailboxToken { stats: Arc::clone(self) }
    }

    /// Wraps a message so that it is counted while it waits in the mailbox.
    pub fn envelope<M>(self: &Arc<Self>, msg: M) -> Envelope<M> {
        Envelope { msg, _token: self.token() }
    }

    pub fn mailbox_len(&self) -> usize {
        self.mailbox_len.load(Ordering::Relaxed).max(0) as usize
    }

    pub fn set_running(&self, running: bool) {
        self.running.store(running, Ordering::Relaxed);
    }

    pub fn is_running(&self) -> bool {
        self.running.load(Ordering::Relaxed)
    }

    pub fn restarted(&self) -> u32 {
        self.restarts.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub fn restarts(&self) -> u32 {
        self.restarts.load(Ordering::Relaxed)
    }

    pub fn record_error(&self, error: impl Into<String>) {
        if let Ok(mut slot) = self.last_error.lock() {
            *slot = Some(error.into());
        }
    }

    pub fn snapshot(&self) -> ActorSnapshot {
        ActorSnapshot {
            name: self.name.clone(),
            kind: self.kind,
            mailbox_len: self.mailbox_len(),
            mailbox_capacity: self.mailbox_capacity,
            handled: self.handled.load(Ordering::Relaxed),
            restarts: self.restarts(),
            running: self.is_running(),
            last_error: self.last_error.lock().ok().and_then(|e| e.clone()),
        }
    }
}

/// Counts one message in the mailbox; dropping it (when the handler is done with the message,
/// or when the message is dropped undelivered) counts it out.
#[derive(Debug)]
pub struct MailboxToken {
    stats: Arc<ActorStats>,
}

impl Drop for MailboxToken {
    fn drop(&mut self) {
        self.stats.mailbox_len.fetch_sub(1, Ordering::Relaxed);
        self.stats.handled.fetch_add(1, Ordering::Relaxed);
    }
}

/// The address of an actor together with the figures that count its mailbox: send it
/// `handle.stats.envelope(msg)`, so that the message is counted while it waits.
pub struct Handle<A: Actor> {
    pub addr: Addr<A>,
    pub stats: Arc<ActorStats>,
}

impl<A: Actor> Clone for Handle<A> {
    fn clone(&self) -> Self {
        Handle { addr: self.addr.clone(), stats: Arc::clone(&self.stats) }
    }
}

/// A message together with the token that counts it.
#[derive(Debug)]
pub struct Envelope<M> {
    pub msg: M,
    _token: MailboxToken,
}

impl<M: Message> Message for Envelope<M> {
    type Result = M::Result;
}

/// The row `GET /admin/actors` shows for one actor.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ActorSnapshot {
    pub name: String,
    pub kind: &'static str,
    pub mailbox_len: usize,
    pub mailbox_capacity: usize,
    pub handled: u64,
    pub restarts: u32,
    pub running: bool,
    pub last_error: Option<String>,
}

/// Every actor of this process.
#[derive(Debug, Default, Clone)]
pub struct Registry {
    actors: Arc<Mutex<Vec<Arc<ActorStats>>>>,
}

impl Registry {
    pub fn register(&self, name: impl Into<String>, kind: &'static str, mailbox_capacity: usize) -> Arc<ActorStats> {
        let stats = Arc::new(ActorStats {
            name: name.into(),
            kind,
            mailbox_capacity,
            mailbox_len: AtomicI64::new(0),
            handled: AtomicU64::new(0),
            restarts: AtomicU32::new(0),
            running: AtomicBool::new(false),
            last_error: Mutex::new(None),
        });
        if let Ok(mut actors) = self.actors.lock() {
            actors.push(Arc::clone(&stats));
        }
        stats
    }

    pub fn snapshot(&self) -> Vec<ActorSnapshot> {
        self.actors.lock().map(|a| a.iter().map(|s| s.snapshot()).collect()).unwrap_or_default()
    }

    /// True when every registered actor is running (an API-only process has none).
    pub fn all_running(&self) -> bool {
        self.actors.lock().map(|a| a.iter().all(|s| s.is_running())).unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_counts_a_message_until_it_is_dropped() {
        let registry = Registry::default();
        let stats = registry.register("sender-expo-0", "sender", 16);
        let a = stats.envelope(1u8);
        let b = stats.token();
        assert_eq!(stats.mailbox_len(), 2);
        drop(a);
        assert_eq!(stats.mailbox_len(), 1);
        drop(b);
        let snap = &registry.snapshot()[0];
        assert_eq!((snap.mailbox_len, snap.handled, snap.mailbox_capacity), (0, 2, 16));
    }
}
