//! Retention: deleting final notifications older than `retention.final_after_days`.

use super::Store;
use crate::error::Result;

/// One retention batch: up to `$2` final notifications created more than `$1` days ago, with
/// their `notification_failed` rows (and, by `ON DELETE CASCADE`, their `delivery` rows).
///
/// A `delivered` notification may still have a sibling target on its way, so each candidate
/// is checked for an open target, and that check is written so that it can only be a probe of
/// `delivery`'s primary key per candidate (`OFFSET 0` keeps it a subplan rather than an
/// anti-join, and `NOT IN` of the final statuses is what the in-flight partial index cannot
/// serve). Statistics of a queue table are always stale: analysed while little was in flight,
/// the planner took the partial index for tiny and ran the check as an anti-join over every
/// in-flight target, 1,000 candidates × 20,000 targets in flight: 4.5 s per batch instead of
/// 47 ms, while every delivery waited for the CPU (bench/README, "Issue 14: plans that statistics
/// cannot break").
///
/// The candidates come oldest first from `notification_final_created_idx` (a partial B-tree of
/// final rows by `created_at`, built online by `migrate`), one index range from its left edge,
/// however the heap's pages mix old and new rows. `ORDER BY` keeps it that index whatever the
/// estimates (the BRIN cannot give the order), and keeps a batch from taking rows a day younger
/// than the ones it leaves.
pub const DELETE_FINAL_OLDER_THAN: &str = "WITH old AS (
        SELECT id FROM notification
         WHERE created_at < now() - $1::int4 * interval '1 day'
           AND status IN ('delivered', 'failed', 'expired', 'cancelled')
           AND NOT EXISTS (SELECT 1 FROM delivery d WHERE d.notification_id = notification.id
                              AND d.status NOT IN ('delivered', 'failed', 'expired') OFFSET 0)
         ORDER BY created_at
         LIMIT $2 FOR UPDATE SKIP LOCKED
     ), failed AS (
        DELETE FROM notification_failed f USING old WHERE f.notification_id = old.id
     )
     DELETE FROM notification n USING old WHERE n.id = old.id";

impl Store {
    /// Deletes up to `batch` final notifications created more than `days` days ago, with their
    /// delivery and notification_failed rows; returns how many notifications went. A
    /// notification with a target still queued or retrying is kept (it is `delivered` as soon as
    /// one target is).
    pub async fn delete_final_older_than(&self, days: u32, batch: i64) -> Result<u64> {
        let mut client = self.conn().await?;
        // The batch's rows are deleted by key: no table scan per batch (see KEYED_PLANS).
        let tx = client.transaction().await?;
        tx.batch_execute(super::KEYED_PLANS).await?;
        let stmt = tx.prepare_cached(DELETE_FINAL_OLDER_THAN).await?;
        // `retention.final_after_days` is range-checked at start-up; saturate all the same, so that
        // no value can wrap into "everything is old".
        let days = i32::try_from(days).unwrap_or(i32::MAX);
        let deleted = tx.execute(&stmt, &[&days, &batch]).await?;
        tx.commit().await?;
        Ok(deleted)
    }
}
