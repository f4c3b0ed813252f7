//! Outcomes: storing what the senders' batch did to its targets, and the status rule that
//! settles a notification from its delivery rows.
//!
//! Every statement here joins a batch (`unnest` of arrays) to the rows it updates, found by
//! their keys, and updates them only if they are still in some state. Postgres's statistics of
//! these queue tables are always wrong: never analysed in a fresh database, or analysed while
//! everything was final, so that it believes no row is in flight. Both misled the planner into
//! scanning the whole table for every batch: a hash join over a sequential scan (fresh tables),
//! or the batch as the inner side of a nested loop over a scan it took for one row (20,000
//! notifications in flight over 50,000 final ones: 10 to 20 million comparisons and 2 to 6 s per
//! batch of 500–1,000; bench/README, "Issue 14: plans that statistics cannot break"). So the
//! transaction runs with [`KEYED_PLANS`](super::KEYED_PLANS), and each state guard is a `CASE`,
//! whose selectivity Postgres does not take from the status column's statistics: the batch
//! drives a nested loop of primary-key probes, whatever the statistics say.

use super::{split_targets, storable, Final, Settled, Store, Target};
use crate::error::Result;
use std::borrow::Cow;
use std::time::Duration;
use uuid::Uuid;

/// The status rule's common case: notifications of delivered targets become `delivered`
/// (`$1` ids, `$2` attempts). Public for the plan test in tests/relay/schema.rs.
pub const MARK_DELIVERED: &str = "UPDATE notification n
        SET status = 'delivered', delivered_at = now(), updated_at = now(),
            attempt_count = greatest(n.attempt_count, u.attempts)
       FROM unnest($1::uuid[], $2::int4[]) AS u(id, attempts)
      -- An expired notification delivered after all (a copy in flight when it expired) is
      -- delivered: the delivery is what the user got.
      WHERE n.id = u.id
        AND CASE WHEN n.status IN ('delivered', 'failed') THEN false ELSE true END
  RETURNING n.id, n.trace_id";

/// The outcomes of one batch, for [`Store::record`].
#[derive(Debug, Default)]
pub struct OutcomeRows {
    pub delivered: Vec<DeliveredRow>,
    pub retrying: Vec<RetryingRow>,
    pub failed: Vec<FailedRow>,
    /// Targets whose notification expired before they were delivered.
    pub expired: Vec<FailedRow>,
    /// Tokens the provider says are dead: their devices are disabled.
    pub disable_devices: Vec<DeadToken>,
    /// Devices that just received something.
    pub used_devices: Vec<Uuid>,
    /// Notifications with several targets, whose rows are locked while the batch is stored.
    pub shared_notifications: Vec<Uuid>,
}

/// A target the provider accepted.
#[derive(Debug, Clone, PartialEq)]
pub struct DeliveredRow {
    pub target: Target,
    /// Attempts made, this one included (the row keeps the larger of its count and this).
    pub attempts: i32,
    /// The provider's id for the message (an Expo ticket is what its receipt is asked by).
    pub provider_message_id: Option<String>,
    /// When its receipt is to be asked for: Expo tickets only, and only when receipts are polled.
    pub receipt_after: Option<Duration>,
}

/// A target to be sent again later.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryingRow {
    pub target: Target,
    /// Attempts made (a deferral spends none, so this may not have grown).
    pub attempts: i32,
    /// Why this attempt did not deliver: the delivery's `last_error`.
    pub error: String,
    /// How long until the next attempt.
    pub delay: Duration,
}

/// A target given up.
#[derive(Debug, Clone, PartialEq)]
pub struct FailedRow {
    pub target: Target,
    /// Attempts made.
    pub attempts: i32,
    /// Why it was given up: the delivery's `last_error`.
    pub error: String,
}

/// A device whose token the provider says is dead.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadToken {
    pub device_id: Uuid,
    /// What the provider said: the device's `disabled_reason`.
    pub reason: String,
}

impl Store {
    /// Stores the outcomes of one batch in one transaction and settles the notifications they
    /// touch. Returns the notifications that reached a final state.
    pub async fn record(&self, rows: &OutcomeRows) -> Result<Vec<Settled>> {
        let mut client = self.conn().await?;
        let tx = client.transaction().await?;
        tx.batch_execute(super::KEYED_PLANS).await?;
        let mut corrected = Vec::new();

        // Lock notifications with several targets first, in a fixed order: two processes
        // storing sibling targets would otherwise each see the other's target as unfinished, and
        // the notification would not settle. Later statements take fresh snapshots, so the second
        // process sees what the first committed. (Single-target notifications have no sibling to
        // race with, so the common case writes each notification row once.)
        if !rows.shared_notifications.is_empty() {
            let mut shared = rows.shared_notifications.clone();
            shared.sort_unstable();
            shared.dedup();
            let lock =
                tx.prepare_cached("SELECT 1 FROM notification WHERE id = ANY($1) ORDER BY id FOR UPDATE").await?;
            tx.execute(&lock, &[&shared]).await?;
        }

        if !rows.delivered.is_empty() {
            let stmt = tx
                .prepare_cached(
                    "UPDATE delivery d
                        SET status = 'delivered', attempt_count = greatest(d.attempt_count, u.attempts),
                            provider_message_id = coalesce(u.msg, d.provider_message_id),
                            delivered_at = coalesce(d.delivered_at, now()), updated_at = now(), next_attempt_at = NULL,
                            receipt_due_at = coalesce(now() + u.receipt_ms * interval '1 millisecond', d.receipt_due_at),
                            -- A new ticket's receipt is not held off by a lease taken on the old one.
                            receipt_leased_until = CASE WHEN u.receipt_ms IS NULL THEN d.receipt_leased_until END
                       FROM unnest($1::uuid[], $2::uuid[], $3::int4[], $4::text[], $5::int8[])
                            AS u(n, dev, attempts, msg, receipt_ms)
                      WHERE d.notification_id = u.n AND d.device_id = u.dev
                        AND CASE WHEN d.status = 'failed' THEN false ELSE true END",
                )
                .await?;
            let (n, dev) = split_targets(rows.delivered.iter().map(|r| r.target));
            let attempts: Vec<i32> = rows.delivered.iter().map(|r| r.attempts).collect();
            let msgs: Vec<Option<Cow<str>>> =
                rows.delivered.iter().map(|r| r.provider_message_id.as_deref().map(storable)).collect();
            let receipt_ms: Vec<Option<i64>> =
                rows.delivered.iter().map(|r| r.receipt_after.map(|d| d.as_millis() as i64)).collect();
            let updated = tx.execute(&stmt, &[&n, &dev, &attempts, &msgs, &receipt_ms]).await?;
            if updated < rows.delivered.len() as u64 {
                // Rare: a target failed (by a process that gave it up) was delivered after all,
                // or its row is gone. The delivery is the truth: see `correct_failed`.
                corrected = correct_failed(&tx, &n, &dev, &attempts, &msgs).await?;
            }
        }
        if !rows.retrying.is_empty() {
            let stmt = tx
                .prepare_cached(
                    "UPDATE delivery d
                        SET status = 'retrying', attempt_count = u.attempts, last_error = u.err,
                            next_attempt_at = now() + u.delay_ms * interval '1 millisecond', updated_at = now()
                       FROM unnest($1::uuid[], $2::uuid[], $3::int4[], $4::text[], $5::int8[])
                            AS u(n, dev, attempts, err, delay_ms)
                      WHERE d.notification_id = u.n AND d.device_id = u.dev
                        AND CASE WHEN d.status IN ('delivered', 'failed') THEN false ELSE true END",
                )
                .await?;
            let (notes, dev) = split_targets(rows.retrying.iter().map(|r| r.target));
            let attempts: Vec<i32> = rows.retrying.iter().map(|r| r.attempts).collect();
            let errs: Vec<Cow<str>> = rows.retrying.iter().map(|r| storable(&r.error)).collect();
            let delays: Vec<i64> = rows.retrying.iter().map(|r| r.delay.as_millis() as i64).collect();
            tx.execute(&stmt, &[&notes, &dev, &attempts, &errs, &delays]).await?;

            let stmt = tx
                .prepare_cached(
                    "UPDATE notification n
                        SET status = 'retrying', attempt_count = greatest(n.attempt_count, u.attempts),
                            last_error = u.err, updated_at = now()
                       FROM unnest($1::uuid[], $2::int4[], $3::text[]) AS u(id, attempts, err)
                      WHERE n.id = u.id
                        AND CASE WHEN n.status IN ('queued', 'retrying') THEN true ELSE false END",
                )
                .await?;
            tx.execute(&stmt, &[&notes, &attempts, &errs]).await?;
        }
        if !rows.failed.is_empty() {
            let stmt = tx
                .prepare_cached(
                    "UPDATE delivery d
                        SET status = 'failed', attempt_count = greatest(d.attempt_count, u.attempts),
                            last_error = u.err, next_attempt_at = NULL, updated_at = now()
                       FROM unnest($1::uuid[], $2::uuid[], $3::int4[], $4::text[]) AS u(n, dev, attempts, err)
                      WHERE d.notification_id = u.n AND d.device_id = u.dev
                        AND CASE WHEN d.status = 'delivered' THEN false ELSE true END",
                )
                .await?;
            let (n, dev) = split_targets(rows.failed.iter().map(|r| r.target));
            let attempts: Vec<i32> = rows.failed.iter().map(|r| r.attempts).collect();
            let errs: Vec<Cow<str>> = rows.failed.iter().map(|r| storable(&r.error)).collect();
            tx.execute(&stmt, &[&n, &dev, &attempts, &errs]).await?;
        }
        if !rows.expired.is_empty() {
            // Final like `failed`, but not the user's failure: the status rule below makes the
            // notification `expired` (no notification_failed row) unless a sibling was delivered.
            let stmt = tx
                .prepare_cached(
                    "UPDATE delivery d
                        SET status = 'expired', attempt_count = greatest(d.attempt_count, u.attempts),
                            last_error = u.err, next_attempt_at = NULL, updated_at = now()
                       FROM unnest($1::uuid[], $2::uuid[], $3::int4[], $4::text[]) AS u(n, dev, attempts, err)
                      WHERE d.notification_id = u.n AND d.device_id = u.dev
                        AND CASE WHEN d.status IN ('queued', 'retrying') THEN true ELSE false END",
                )
                .await?;
            let (n, dev) = split_targets(rows.expired.iter().map(|r| r.target));
            let attempts: Vec<i32> = rows.expired.iter().map(|r| r.attempts).collect();
            let errs: Vec<Cow<str>> = rows.expired.iter().map(|r| storable(&r.error)).collect();
            tx.execute(&stmt, &[&n, &dev, &attempts, &errs]).await?;
        }
        disable_devices(&tx, &rows.disable_devices).await?;
        if !rows.used_devices.is_empty() {
            // Refreshed at most once a minute per device: a busy device is not rewritten per push.
            let stmt = tx
                .prepare_cached(
                    "UPDATE device SET last_used_at = now()
                      WHERE id = ANY($1) AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute')",
                )
                .await?;
            tx.execute(&stmt, &[&rows.used_devices]).await?;
        }
        // The status rule. A delivered target settles its notification outright; only
        // notifications with a failed target need the aggregate over all their targets.
        let mut settled = Vec::new();
        if !rows.delivered.is_empty() {
            let stmt = tx.prepare_cached(MARK_DELIVERED).await?;
            let notes: Vec<Uuid> = rows.delivered.iter().map(|r| r.target.0).collect();
            let attempts: Vec<i32> = rows.delivered.iter().map(|r| r.attempts).collect();
            for r in tx.query(&stmt, &[&notes, &attempts]).await? {
                settled.push(Settled {
                    notification_id: r.get(0),
                    trace_id: r.get(1),
                    status: Final::Delivered,
                    last_error: None,
                });
            }
        }
        settled.extend(corrected);
        let mut failing: Vec<Uuid> = rows.failed.iter().chain(&rows.expired).map(|r| r.target.0).collect();
        failing.sort_unstable();
        failing.dedup();
        if !failing.is_empty() {
            settled.extend(settle(&tx, &failing).await?);
        }
        tx.commit().await?;
        Ok(settled)
    }
}

/// Disables devices whose provider said their token is dead (once: the first reason stays).
pub(super) async fn disable_devices(tx: &deadpool_postgres::Transaction<'_>, dead: &[DeadToken]) -> Result<()> {
    let (ids, reasons): (Vec<Uuid>, Vec<Cow<str>>) = dead.iter().map(|d| (d.device_id, storable(&d.reason))).unzip();
    if ids.is_empty() {
        return Ok(());
    }
    let stmt = tx
        .prepare_cached(
            "UPDATE device d SET disabled_at = now(), disabled_reason = u.reason
               FROM unnest($1::uuid[], $2::text[]) AS u(id, reason)
              WHERE d.id = u.id AND d.disabled_at IS NULL",
        )
        .await?;
    tx.execute(&stmt, &[&ids, &reasons]).await?;
    Ok(())
}

/// Delivered targets whose row says `failed`: some process gave them up (an entry over
/// `claim.max_deliveries`, a deadline) while a copy was being delivered after all. The delivery
/// is what the user got, so it wins: the row becomes `delivered`, its notification too, and the
/// notification's unretried `notification_failed` row goes (the failure it reported did not
/// happen). Returns the notifications corrected this way.
async fn correct_failed(
    tx: &deadpool_postgres::Transaction<'_>,
    n: &[Uuid],
    dev: &[Uuid],
    attempts: &[i32],
    msgs: &[Option<Cow<'_, str>>],
) -> Result<Vec<Settled>> {
    let stmt = tx
        .prepare_cached(
            "WITH fixed AS (
                UPDATE delivery d
                   SET status = 'delivered', attempt_count = greatest(d.attempt_count, u.attempts),
                       provider_message_id = coalesce(u.msg, d.provider_message_id), last_error = NULL,
                       delivered_at = now(), updated_at = now(), next_attempt_at = NULL
                  FROM unnest($1::uuid[], $2::uuid[], $3::int4[], $4::text[]) AS u(n, dev, attempts, msg)
                 WHERE d.notification_id = u.n AND d.device_id = u.dev
                   AND CASE WHEN d.status = 'failed' THEN true ELSE false END
             RETURNING d.notification_id
             ), note AS (
                UPDATE notification n SET status = 'delivered', delivered_at = now(), last_error = NULL,
                       updated_at = now()
                 WHERE n.id IN (SELECT notification_id FROM fixed)
                   AND CASE WHEN n.status = 'failed' THEN true ELSE false END
             RETURNING n.id, n.trace_id
             ), unfailed AS (
                DELETE FROM notification_failed f USING note WHERE f.notification_id = note.id AND f.retried_at IS NULL
             )
             SELECT id, trace_id FROM note",
        )
        .await?;
    Ok(tx
        .query(&stmt, &[&n, &dev, &attempts, &msgs])
        .await?
        .into_iter()
        .map(|r| Settled { notification_id: r.get(0), trace_id: r.get(1), status: Final::Delivered, last_error: None })
        .collect())
}

/// Applies the status rule to these notifications: `delivered` once any target is delivered;
/// once every target is final without one delivered, `expired` if any target expired (it would
/// not be delivered now anyway, and it is not the user's failure: no `notification_failed` row),
/// else `failed` (with exactly one `notification_failed` row). Rows already final are left
/// alone, so settling twice writes nothing twice.
pub(super) async fn settle(tx: &deadpool_postgres::Transaction<'_>, ids: &[Uuid]) -> Result<Vec<Settled>> {
    let stmt = tx
        .prepare_cached(
            "WITH agg AS (
                SELECT notification_id AS id,
                       bool_or(status = 'delivered') AS delivered,
                       bool_or(status = 'expired') AS expired,
                       bool_and(status IN ('delivered', 'failed', 'expired')) AS final,
                       max(attempt_count) AS attempts,
                       max(delivered_at) AS delivered_at,
                       string_agg(DISTINCT last_error, '; ') FILTER (WHERE status IN ('failed', 'expired')) AS errors
                  FROM delivery WHERE notification_id = ANY($1)
                 GROUP BY notification_id
             ), done AS (
                UPDATE notification n
                   SET status = CASE WHEN agg.delivered THEN 'delivered' WHEN agg.expired THEN 'expired'
                                     ELSE 'failed' END,
                       delivered_at = CASE WHEN agg.delivered THEN agg.delivered_at END,
                       last_error = CASE WHEN agg.delivered THEN n.last_error
                                         ELSE coalesce(agg.errors, 'every target failed') END,
                       attempt_count = greatest(n.attempt_count, agg.attempts),
                       updated_at = now()
                  FROM agg
                 WHERE n.id = agg.id AND (agg.delivered OR agg.final)
                   AND CASE WHEN n.status IN ('delivered', 'failed', 'expired') THEN false ELSE true END
             RETURNING n.id, n.user_id, n.status, n.last_error, n.attempt_count, n.payload, n.trace_id
             ), failed AS (
                INSERT INTO notification_failed (notification_id, user_id, error, attempt_count, payload)
                SELECT id, user_id, last_error, attempt_count, payload FROM done WHERE status = 'failed'
             )
             SELECT id, trace_id, status, last_error FROM done",
        )
        .await?;
    Ok(tx.query(&stmt, &[&ids]).await?.into_iter().map(|r| Settled::from_row(&r)).collect())
}
