//! The typed messages the actors exchange. Messages to supervised actors travel in a
//! [`crate::runtime::registry::Envelope`] so that their mailboxes can be counted.

use crate::job::{Delivery, Outcome};
use actix::Message;

/// A `NOTIFY notification_insert` arrived (or the listener's own timer fired, or a drainer
/// claimed a full batch): start a drainer, which claims and fans out pending notifications until
/// none is left (at most `listener.drainers` run at once; a ring while they are busy starts one
/// when one of them ends).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Drain;

/// Re-enqueue targets that made no progress for `listener.stale_after_ms`, then drain
/// (promoting due rows and continuing half-written topics too).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Sweep;

/// Send these deliveries (all for the sender's provider).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Deliver {
    pub deliveries: Vec<Delivery>,
}

/// Store these outcomes, then acknowledge their entries and free their in-flight permits.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Record {
    pub outcomes: Vec<Outcome>,
}

/// Write everything buffered now (at shutdown); answers once it is stored, or with the error.
#[derive(Debug, Message)]
#[rtype(result = "Result<(), Unwritten>")]
pub struct Flush;

/// Outcomes still buffered after a [`Flush`]: their write failed (Postgres down). Their entries
/// stay pending in Redis, so the claim job hands them out again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{outcomes} outcomes not written")]
pub struct Unwritten {
    pub outcomes: usize,
}

/// Read the next batch from the stream (a reader's own loop).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct ReadNext;

/// Run one step of a periodic job: the delay, claim, retention and receipt actors' and the
/// heartbeat's tick (see [`crate::periodic`]).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Step;
