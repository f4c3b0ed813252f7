//! The Postgres side of Expo receipts.
//!
//! A delivered Expo target keeps its ticket in `delivery.provider_message_id` and the time its
//! receipt is to be asked for in `delivery.receipt_due_at` (set by [`Store::record`] in the same
//! UPDATE that marks it delivered; NULL = nothing to ask). The poller *leases* due rows: one
//! statement sets their `receipt_leased_until` and returns them, so several pollers share the
//! work (`SKIP LOCKED`, and a leased row is passed over until its lease runs out) and a poller
//! that dies holding a lease only delays those receipts until then (a new ticket stored by
//! [`Store::record`] drops the old one's lease with it). The lease has a column of its
//! own, which no index names, so that it is a HOT update (`migrations/V9__receipt_lease.sql`):
//! moving `receipt_due_at`, the receipt index's key, would write a new entry in both of the
//! table's indexes for every Expo delivery. Only [`Store::settle_receipts`] clears `receipt_due_at`, in
//! the transaction that stores what the receipt said: a receipt is either still due in Postgres or
//! applied, whatever fails in between (Postgres, Expo, the process) and whatever Redis forgets.

use super::outcomes::{disable_devices, DeadToken};
use super::{split_targets, storable, Store, Target};
use crate::error::Result;
use std::borrow::Cow;
use std::time::{Duration, SystemTime};

/// A receipt leased to one poller.
#[derive(Debug, Clone, PartialEq)]
pub struct DueReceipt {
    pub target: Target,
    /// The ticket id (the delivery's `provider_message_id`); None if the row no longer has one.
    pub ticket: Option<String>,
    pub trace_id: String,
    /// When the target was stored as delivered: Expo keeps a receipt for a day after that.
    pub delivered_at: Option<SystemTime>,
}

/// What becomes of a leased receipt.
#[derive(Debug, Clone, PartialEq)]
pub enum ReceiptVerdict {
    /// Expo answered; nothing more to ask. `error`: what the receipt said went wrong (kept in the
    /// delivery's `last_error`); `disable`: the token is dead and its device is disabled.
    Answered { error: Option<String>, disable: bool },
    /// Expo does not have the receipt yet: ask again after this long.
    AskAgain(Duration),
    /// Nothing left to ask for (no ticket, or older than Expo keeps receipts).
    GiveUp,
}

impl Store {
    /// Leases up to `limit` due receipts, oldest first: their `receipt_leased_until` is set
    /// `lease` ahead, so that no other poller takes them meanwhile, and they are returned. A receipt
    /// whose lease runs out without [`Store::settle_receipts`] (the poller died, Expo or Postgres
    /// failed) is due again.
    pub async fn lease_receipts(&self, limit: usize, lease: Duration) -> Result<Vec<DueReceipt>> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        tx.batch_execute(super::KEYED_PLANS).await?;
        let stmt = tx
            .prepare_cached(
                "UPDATE delivery d SET receipt_leased_until = now() + $2::int8 * interval '1 millisecond'
                   FROM notification n
                  WHERE (d.notification_id, d.device_id) IN (
                            SELECT notification_id, device_id FROM delivery
                             WHERE receipt_due_at <= now()
                               AND (receipt_leased_until IS NULL OR receipt_leased_until <= now())
                             ORDER BY receipt_due_at LIMIT $1 FOR UPDATE SKIP LOCKED)
                    AND n.id = d.notification_id
              RETURNING d.notification_id, d.device_id, d.provider_message_id,
                        coalesce(n.trace_id, n.id::text), d.delivered_at",
            )
            .await?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let lease_ms = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
        let leased = tx
            .query(&stmt, &[&limit, &lease_ms])
            .await?
            .iter()
            .map(|r| DueReceipt {
                target: (r.get(0), r.get(1)),
                ticket: r.get(2),
                trace_id: r.get(3),
                delivered_at: r.get(4),
            })
            .collect();
        tx.commit().await?;
        Ok(leased)
    }

    /// Stores the verdicts on leased receipts in one transaction: answered and given-up receipts
    /// are no longer due (an answer's error goes to the delivery's `last_error`, a dead token
    /// disables its device), the others are due again later. A row that has received another
    /// ticket since it was leased keeps the schedule of its new ticket.
    pub async fn settle_receipts(&self, verdicts: &[(&DueReceipt, ReceiptVerdict)]) -> Result<()> {
        if verdicts.is_empty() {
            return Ok(());
        }
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        tx.batch_execute(super::KEYED_PLANS).await?;
        let stmt = tx
            .prepare_cached(
                "UPDATE delivery d
                    SET receipt_due_at = now() + u.again_ms * interval '1 millisecond',
                        receipt_leased_until = NULL,
                        last_error = coalesce(u.err, d.last_error),
                        updated_at = CASE WHEN u.err IS NULL THEN d.updated_at ELSE now() END
                   FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::int8[])
                        AS u(n, dev, ticket, err, again_ms)
                  WHERE d.notification_id = u.n AND d.device_id = u.dev
                    AND d.provider_message_id IS NOT DISTINCT FROM u.ticket",
            )
            .await?;
        let (n, dev) = split_targets(verdicts.iter().map(|(r, _)| r.target));
        let tickets: Vec<Option<&str>> = verdicts.iter().map(|(r, _)| r.ticket.as_deref()).collect();
        let errs: Vec<Option<Cow<str>>> = verdicts
            .iter()
            .map(|(_, v)| match v {
                ReceiptVerdict::Answered { error: Some(e), .. } => Some(storable(e)),
                _ => None,
            })
            .collect();
        let again: Vec<Option<i64>> = verdicts
            .iter()
            .map(|(_, v)| match v {
                ReceiptVerdict::AskAgain(after) => Some(i64::try_from(after.as_millis()).unwrap_or(i64::MAX)),
                _ => None,
            })
            .collect();
        tx.execute(&stmt, &[&n, &dev, &tickets, &errs, &again]).await?;
        let dead: Vec<DeadToken> = verdicts
            .iter()
            .filter_map(|(r, v)| match v {
                ReceiptVerdict::Answered { error: Some(reason), disable: true } => {
                    Some(DeadToken { device_id: r.target.1, reason: reason.clone() })
                }
                _ => None,
            })
            .collect();
        disable_devices(&tx, &dead).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Receipts still to be asked for, per shard of their notification (`job::shard_of`), for
    /// `GET /admin/queues`: index `i` is shard `i`.
    pub async fn receipts_pending(&self, shards: u16) -> Result<Vec<u64>> {
        let shards = shards.max(1);
        let client = self.pool.get().await?;
        // The uuid as a 128-bit number modulo `shards`, as `shard_of` computes it in Rust: Horner
        // over its four 32-bit limbs, which keeps every intermediate under 2^49 (int8).
        let stmt = client
            .prepare_cached(
                "WITH r AS (
                    SELECT replace(notification_id::text, '-', '') AS h
                      FROM delivery WHERE receipt_due_at IS NOT NULL
                 ), limbs AS (
                    SELECT ('x' || substr(h, 1, 8))::bit(32)::int8 AS a, ('x' || substr(h, 9, 8))::bit(32)::int8 AS b,
                           ('x' || substr(h, 17, 8))::bit(32)::int8 AS c, ('x' || substr(h, 25, 8))::bit(32)::int8 AS d
                      FROM r
                 )
                 SELECT ((((a % $1) * 4294967296 + b) % $1 * 4294967296 + c) % $1 * 4294967296 + d) % $1 AS shard,
                        count(*)
                   FROM limbs GROUP BY 1",
            )
            .await?;
        let mut out = vec![0u64; usize::from(shards)];
        for r in client.query(&stmt, &[&i64::from(shards)]).await? {
            let (shard, count): (i64, i64) = (r.get(0), r.get(1));
            if let Some(slot) = usize::try_from(shard).ok().and_then(|s| out.get_mut(s)) {
                *slot = u64::try_from(count).unwrap_or_default();
            }
        }
        Ok(out)
    }
}
