//! The Postgres side of the relay: claiming pending notifications and fanning them out to
//! delivery targets, storing outcomes, and the sweep that re-enqueues whatever Redis lost.
//!
//! Postgres is the source of truth. A `delivery` row exists for every target from the moment
//! its notification is claimed, so the status rule ("delivered once any target is delivered,
//! failed once every target failed") is decided from durable state alone, and everything in
//! Redis can be rebuilt from these rows.
//!
//! # Layout
//! One concern per file, each adding its methods to [`Store`]:
//! - `fanout`: pending notifications become `delivery` rows and jobs ([`Store::fan_out_pending`]).
//! - `targets`: what a stream entry is checked against before its send ([`Store::target_states`]).
//! - `outcomes`: a batch's results, and the status rule that settles a notification
//!   ([`Store::record`]).
//! - `sweep`: targets Redis lost, found again ([`Store::requeue_stale`]).
//! - `schedule`: scheduled notifications made pending when due ([`Store::promote_due`]).
//! - `topics`: a topic notification written out as one row per subscriber
//!   ([`Store::expand_topic`]).
//! - `retention`: old final notifications deleted ([`Store::delete_final_older_than`]).
//! - `unsendable`: why a row cannot be sent ([`Unsendable`], its `last_error`).
//! - [`receipts`]: Expo receipts leased and settled; [`api`]: what the HTTP API and the admin
//!   command line ask; [`pool`]: connections with deadlines.
//!
//! This file holds the [`Store`] itself and what the concerns share ([`Target`], [`Settled`],
//! [`storable`]).

pub mod api;
mod fanout;
mod outcomes;
pub mod pool;
pub mod receipts;
pub mod retention;
mod schedule;
mod sweep;
mod targets;
mod topics;
mod unsendable;

pub use fanout::{FanOutBatch, FanOutRules, InputLimits, MAX_ID_BYTES, MAX_TOKEN_BYTES};
pub use outcomes::{DeadToken, DeliveredRow, FailedRow, OutcomeRows, RetryingRow, MARK_DELIVERED};
pub use targets::{DeviceNow, TargetState};
pub use topics::TopicProgress;
pub use unsendable::Unsendable;

use crate::error::Result;
use pool::{Lease, Pool};
use std::borrow::Cow;
use uuid::Uuid;

/// A delivery target: (notification, device), the key of a `delivery` row.
pub type Target = (Uuid, Uuid);

/// Run first in a transaction whose statements find their rows by key (a batch of ids, a
/// partial index's head): the planner may then use neither a sequential scan nor a hash or
/// merge join, so every row is reached through an index, one probe per key. Those plans only pay
/// off for bulk work the relay never does, and the planner picks them from statistics that on a
/// queue table are always wrong (store::outcomes says how: a batch of 500 took 30 ms on a fresh
/// table and up to 6 s on a stale one, instead of 3–7 ms). `SET LOCAL` ends with the
/// transaction, so the pooled connection is left as it was.
///
/// Nor is any of them JIT-compiled: the plans a disabled scan or join leaves are costed high
/// enough to pass the server's `jit_*_above_cost`, and compiling (with inlining and
/// optimisation) is then the statement's largest cost. Retention's delete spent 52 ms of its
/// 194 ms per batch compiling on a 10M-row table (bench/README, "the retention batch").
pub const KEYED_PLANS: &str = "SET LOCAL enable_seqscan = off; SET LOCAL enable_hashjoin = off; \
                               SET LOCAL enable_mergejoin = off; SET LOCAL jit = off";

#[derive(Clone)]
pub struct Store {
    pool: Pool,
    /// Largest payload the API hands back (`payload.max_bytes`).
    max_payload_bytes: usize,
}

/// A notification that just reached its final state.
#[derive(Debug, Clone, PartialEq)]
pub struct Settled {
    pub notification_id: Uuid,
    pub trace_id: Option<String>,
    pub status: Final,
    pub last_error: Option<String>,
}

/// The final states a notification settles in by the status rule (`cancelled`, the fourth,
/// is only ever set by a producer's cancel).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Final {
    Delivered,
    /// Every target failed (or there was none): one `notification_failed` row says why.
    Failed,
    /// Not delivered before `expires_at`: final, and not a failure of the user's.
    Expired,
}

impl Final {
    /// The `status` column's value.
    pub fn from_status(status: &str) -> Final {
        match status {
            "delivered" => Final::Delivered,
            "expired" => Final::Expired,
            _ => Final::Failed,
        }
    }

    /// The `status` column's value for it.
    pub fn as_status(self) -> &'static str {
        match self {
            Final::Delivered => "delivered",
            Final::Failed => "failed",
            Final::Expired => "expired",
        }
    }
}

impl Settled {
    /// A row of `SELECT id, trace_id, status, last_error`, as the statements that settle
    /// notifications return them.
    pub(crate) fn from_row(r: &tokio_postgres::Row) -> Settled {
        Settled {
            notification_id: r.get(0),
            trace_id: r.get(1),
            status: Final::from_status(r.get(2)),
            last_error: r.get(3),
        }
    }

    pub fn failed(&self) -> bool {
        self.status == Final::Failed
    }

    /// How many of `settled` failed, and how many expired.
    pub fn count_unsent(settled: &[Settled]) -> (u64, u64) {
        let count = |f| settled.iter().filter(|s| s.status == f).count() as u64;
        (count(Final::Failed), count(Final::Expired))
    }

    /// Logs each notification of `settled` that failed (`notification_failed`) or expired,
    /// whoever settled it: the outcome writer, the fan-out or the sweep.
    pub fn log_failures(log: &slog::Logger, settled: &[Settled]) {
        for s in settled {
            let (event, message) = match s.status {
                Final::Delivered => continue,
                Final::Failed => (crate::events::NOTIFICATION_FAILED, "notification failed"),
                Final::Expired => (crate::events::NOTIFICATION_EXPIRED, "notification expired before it was delivered"),
            };
            slog::warn!(log, "{}", message; "event" => event,
                        "notification_id" => %s.notification_id, "trace_id" => s.trace_id.as_deref().unwrap_or_default(),
                        "error" => s.last_error.as_deref().unwrap_or_default());
        }
    }
}

impl Store {
    pub fn new(pool: Pool) -> Self {
        Store { pool, max_payload_bytes: InputLimits::default().payload_max_bytes }
    }

    /// The same store, handing back payloads of at most `max_bytes` through the API.
    pub fn with_payload_limit(self, max_bytes: usize) -> Self {
        Store { max_payload_bytes: max_bytes, ..self }
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The connection for one store call: every method takes its connection here, so every
    /// call runs under the deadline of [`pool`] (`database.statement_timeout_ms` + a margin).
    pub async fn conn(&self) -> Result<Lease> {
        Ok(Lease::new(&self.pool).await?)
    }

    /// Whether Postgres answers (a pooled connection and `SELECT 1`).
    pub async fn ping(&self) -> Result<()> {
        self.conn().await?.simple_query("SELECT 1").await?;
        Ok(())
    }
}

/// Longest error or provider message id stored; a provider's answer can be any length.
pub const MAX_STORED_TEXT: usize = 2000;

/// Text as Postgres can store it: without NUL (which `text` refuses: SQLSTATE 22021) or other
/// control characters except newline and tab, and at most [`MAX_STORED_TEXT`] bytes. Errors
/// and message ids carry whatever a provider (or a proxy in front of it) answered.
pub fn storable(text: &str) -> Cow<'_, str> {
    let clean = |c: char| !c.is_control() || c == '\n' || c == '\t';
    if text.len() <= MAX_STORED_TEXT && text.chars().all(clean) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len().min(MAX_STORED_TEXT));
    for c in text.chars().map(|c| if clean(c) { c } else { '\u{FFFD}' }) {
        if out.len() + c.len_utf8() > MAX_STORED_TEXT {
            break;
        }
        out.push(c);
    }
    Cow::Owned(out)
}

/// A list of targets as the two columns `unnest($1::uuid[], $2::uuid[])` takes.
fn split_targets(targets: impl Iterator<Item = Target>) -> (Vec<Uuid>, Vec<Uuid>) {
    targets.unzip()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_from_providers_is_made_storable() {
        assert_eq!(storable("plain: fine\nsecond line"), "plain: fine\nsecond line");
        assert!(matches!(storable("ok"), Cow::Borrowed(_)));
        assert_eq!(storable("bad\u{0}x\u{1b}[31m"), "bad\u{FFFD}x\u{FFFD}[31m");
        let long = "é".repeat(MAX_STORED_TEXT);
        let stored = storable(&long);
        assert!(stored.len() <= MAX_STORED_TEXT && stored.len() >= MAX_STORED_TEXT - 1, "{}", stored.len());
        assert!(stored.chars().all(|c| c == 'é'));
    }
}
