//! Retention: deleting final notifications older than `retention.final_after_days`.

use super::Store;
use crate::error::Result;

impl Store {
    /// Deletes up to `batch` final notifications created more than `days` days ago, with their
    /// delivery and notification_failed rows; returns how many notifications went. A
    /// notification with a target still queued or retrying is kept (it is `delivered` as soon as
    /// one target is).
    pub async fn delete_final_older_than(&self, days: u32, batch: i64) -> Result<u64> {
        let client = self.conn().await?;
        let stmt = client
            .prepare_cached(
                "WITH old AS (
                    SELECT id FROM notification
                     WHERE created_at < now() - $1::int4 * interval '1 day'
                       AND status IN ('delivered', 'failed', 'expired', 'cancelled')
                       -- Delivered means one target was: its siblings may still be on their way.
                       AND NOT EXISTS (SELECT 1 FROM delivery d WHERE d.notification_id = notification.id
                                          AND d.status IN ('queued', 'retrying'))
                     LIMIT $2 FOR UPDATE SKIP LOCKED
                 ), failed AS (
                    DELETE FROM notification_failed f USING old WHERE f.notification_id = old.id
                 )
                 DELETE FROM notification n USING old WHERE n.id = old.id",
            )
            .await?;
        // `retention.final_after_days` is range-checked at start-up; saturate all the same, so that
        // no value can wrap into "everything is old".
        let days = i32::try_from(days).unwrap_or(i32::MAX);
        Ok(client.execute(&stmt, &[&days, &batch]).await?)
    }
}
