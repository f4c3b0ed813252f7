//! Scheduled notifications (`send_at`): a row inserted with a future `send_at` waits as
//! `scheduled` (the insert trigger of V5 sets it) in an index of its own, out of the listener's
//! pending index; when it is due, the listener makes it `pending` and fans it out as usual.
//! Postgres holds the schedule, so restarts and a Redis flush lose nothing.

use super::Store;
use crate::error::Result;

impl Store {
    /// Whether a scheduled notification is due: one probe of `notification_scheduled_idx`.
    pub async fn any_due(&self) -> Result<bool> {
        let client = self.conn().await?;
        let stmt = client
            .prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM notification WHERE status = 'scheduled' AND send_at <= now())",
            )
            .await?;
        Ok(client.query_one(&stmt, &[]).await?.get(0))
    }

    /// Makes up to `limit` due scheduled notifications `pending` (soonest first; `SKIP LOCKED`
    /// lets several listeners share them, and a cancel holding a row's lock wins or loses it
    /// whole). Returns how many.
    pub async fn promote_due(&self, limit: i64) -> Result<u64> {
        let client = self.conn().await?;
        let stmt = client
            .prepare_cached(
                "UPDATE notification SET status = 'pending', updated_at = now()
                  WHERE id IN (SELECT id FROM notification WHERE status = 'scheduled' AND send_at <= now()
                                ORDER BY send_at LIMIT $1 FOR UPDATE SKIP LOCKED)",
            )
            .await?;
        Ok(client.execute(&stmt, &[&limit]).await?)
    }
}
