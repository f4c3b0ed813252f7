//! What the HTTP API and the admin command line ask of Postgres: a user's failed notifications,
//! retries, devices, and resetting dead-lettered targets.

use super::{Store, Target};
use crate::error::Result;
use crate::job::Provider;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

/// A row of `notification_failed`: what a user pulls.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FailedNotification {
    /// The failure's id (one per failure; a retried notification that fails again has another).
    pub id: Uuid,
    pub notification_id: Uuid,
    pub user_id: String,
    pub error: String,
    pub attempt_count: i32,
    /// The notification's payload as it was inserted; null when it is over `payload.max_bytes`
    /// or cannot be read as JSON (the `error` says which).
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub payload: Value,
    pub failed_at: DateTime<Utc>,
    pub retried_at: Option<DateTime<Utc>>,
}

/// Where a page of failures starts: strictly older than this (failed_at, id).
pub type Position = (DateTime<Utc>, Uuid);

/// A device as the API shows it.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Device {
    pub id: Uuid,
    pub user_id: String,
    pub provider: String,
    pub token: String,
    pub created_at: DateTime<Utc>,
    pub disabled_at: Option<DateTime<Utc>>,
    pub disabled_reason: Option<String>,
}

/// Which failed notifications to retry in bulk (`notify-relay admin requeue-failed`).
#[derive(Debug, Clone, Default)]
pub struct FailedFilter {
    pub user: Option<String>,
    pub since: Option<DateTime<Utc>>,
}

/// The notifications a [`FailedFilter`] selects: `$1` user (or NULL), `$2` failed since (or NULL).
const FAILED_MATCHING: &str = "status = 'failed'
    AND ($1::text IS NULL OR user_id = $1)
    AND ($2::timestamptz IS NULL OR updated_at >= $2)";

/// The owner and status of a notification.
#[derive(Debug, Clone, PartialEq)]
pub struct NotificationState {
    pub user_id: String,
    pub status: String,
}

impl Store {
    /// A user's failures, newest first, starting after `after`.
    pub async fn failed_for_user(
        &self,
        user: &str,
        after: Option<Position>,
        limit: i64,
    ) -> Result<Vec<FailedNotification>> {
        let client = self.pool.get().await?;
        let (at, id) = after.map_or((None, None), |(t, i)| (Some(t), Some(i)));
        // (user_id, failed_at DESC, id DESC) is notification_failed_user_idx: one index range.
        let rows = client
            .query(
                "SELECT id, notification_id, user_id, error, attempt_count,
                        CASE WHEN octet_length(payload::text) <= $5::int8 THEN payload::text END,
                        failed_at, retried_at
                   FROM notification_failed
                  WHERE user_id = $1
                    AND ($2::timestamptz IS NULL OR (failed_at, id) < ($2, $3))
                  ORDER BY failed_at DESC, id DESC
                  LIMIT $4",
                &[&user, &at, &id, &limit, &(self.max_payload_bytes as i64)],
            )
            .await?;
        // The payload is read as text: a failure is often *about* a payload serde_json cannot
        // read (1e400, deep nesting) or one over the limit; it is shown as null then.
        let max = self.max_payload_bytes;
        let payload = |r: &tokio_postgres::Row| {
            r.try_get::<_, Option<String>>(5).ok().flatten().and_then(|t| crate::payload::readable(&t, max))
        };
        Ok(rows
            .iter()
            .map(|r| FailedNotification {
                id: r.get(0),
                notification_id: r.get(1),
                user_id: r.get(2),
                error: r.get(3),
                attempt_count: r.get(4),
                payload: payload(r).unwrap_or(Value::Null),
                failed_at: r.get(6),
                retried_at: r.get(7),
            })
            .collect())
    }

    pub async fn notification_state(&self, id: Uuid) -> Result<Option<NotificationState>> {
        let client = self.pool.get().await?;
        let row = client.query_opt("SELECT user_id, status FROM notification WHERE id = $1", &[&id]).await?;
        Ok(row.map(|r| NotificationState { user_id: r.get(0), status: r.get(1) }))
    }

    /// Puts failed notifications back to `pending` so the listener fans them out again — to the
    /// user's devices as they are now, so a device added since gets it. Their old targets are
    /// forgotten, their open `notification_failed` rows stamped `retried_at`, and the listener
    /// woken. Notifications that are not `failed` (any more) are left alone. Returns the ids
    /// that were requeued.
    pub async fn retry_failed(&self, ids: &[Uuid]) -> Result<Vec<Uuid>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let requeued: Vec<Uuid> = tx
            .query(
                "UPDATE notification
                    SET status = 'pending', attempt_count = 0, last_error = NULL, queued_at = NULL,
                        delivered_at = NULL, updated_at = now()
                  WHERE id = ANY($1) AND status = 'failed'
              RETURNING id",
                &[&ids],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        if !requeued.is_empty() {
            tx.execute("DELETE FROM delivery WHERE notification_id = ANY($1)", &[&requeued]).await?;
            tx.execute(
                "UPDATE notification_failed SET retried_at = now()
                  WHERE notification_id = ANY($1) AND retried_at IS NULL",
                &[&requeued],
            )
            .await?;
            tx.execute("SELECT pg_notify('notification_insert', id::text) FROM unnest($1::uuid[]) id", &[&requeued])
                .await?;
        }
        tx.commit().await?;
        Ok(requeued)
    }

    /// Failed notifications matching `filter` (oldest first), for bulk requeues.
    pub async fn failed_ids(&self, filter: &FailedFilter, limit: i64) -> Result<Vec<Uuid>> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                &format!("SELECT id FROM notification WHERE {FAILED_MATCHING} ORDER BY updated_at, id LIMIT $3"),
                &[&filter.user, &filter.since, &limit],
            )
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// How many failed notifications match `filter`.
    pub async fn count_failed(&self, filter: &FailedFilter) -> Result<u64> {
        let client = self.pool.get().await?;
        let row = client
            .query_one(
                &format!("SELECT count(*) FROM notification WHERE {FAILED_MATCHING}"),
                &[&filter.user, &filter.since],
            )
            .await?;
        Ok(row.get::<_, i64>(0) as u64)
    }

    /// Registers a device, or re-enables and re-assigns an existing one with the same
    /// (provider, token): a phone that changes hands keeps one row. Returns the device and
    /// whether it was created.
    pub async fn register_device(&self, user: &str, provider: Provider, token: &str) -> Result<(Device, bool)> {
        let client = self.pool.get().await?;
        let row = client
            .query_one(
                "INSERT INTO device (user_id, provider, token) VALUES ($1, $2, $3)
                 ON CONFLICT (provider, token) DO UPDATE
                    SET user_id = EXCLUDED.user_id, disabled_at = NULL, disabled_reason = NULL
                 RETURNING id, user_id, provider, token, created_at, disabled_at, disabled_reason, xmax = 0",
                &[&user, &provider.as_str(), &token],
            )
            .await?;
        Ok((device(&row), row.get(7)))
    }

    /// Disables a user's device (kept for the delivery history; registering the token again
    /// re-enables it). False when the user has no such device.
    pub async fn remove_device(&self, user: &str, device_id: Uuid) -> Result<bool> {
        let client = self.pool.get().await?;
        let n = client
            .execute(
                "UPDATE device SET disabled_at = coalesce(disabled_at, now()),
                        disabled_reason = coalesce(disabled_reason, 'removed through the API')
                  WHERE id = $1 AND user_id = $2",
                &[&device_id, &user],
            )
            .await?;
        Ok(n == 1)
    }

    /// Makes dead-lettered targets sendable again: `failed` delivery rows back to `queued` with
    /// no attempts, their notifications (if failed) back to `queued`, open failures stamped
    /// `retried_at`. Returns the targets that were reset; the caller then writes their jobs to
    /// the stream (if it dies first, the sweep re-enqueues them).
    pub async fn reset_failed_targets(&self, targets: &[Target]) -> Result<Vec<Target>> {
        if targets.is_empty() {
            return Ok(Vec::new());
        }
        let (n, d): (Vec<Uuid>, Vec<Uuid>) = targets.iter().copied().unzip();
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let reset: Vec<Target> = tx
            .query(
                "UPDATE delivery AS d
                    SET status = 'queued', attempt_count = 0, last_error = NULL, next_attempt_at = NULL,
                        updated_at = now()
                   FROM unnest($1::uuid[], $2::uuid[]) AS t(n, d)
                  WHERE d.notification_id = t.n AND d.device_id = t.d AND d.status = 'failed'
              RETURNING d.notification_id, d.device_id",
                &[&n, &d],
            )
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let notifications: Vec<Uuid> = reset.iter().map(|t| t.0).collect();
        if !notifications.is_empty() {
            tx.execute(
                "UPDATE notification SET status = 'queued', last_error = NULL, updated_at = now()
                  WHERE id = ANY($1) AND status = 'failed'",
                &[&notifications],
            )
            .await?;
            tx.execute(
                "UPDATE notification_failed SET retried_at = now()
                  WHERE notification_id = ANY($1) AND retried_at IS NULL",
                &[&notifications],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(reset)
    }
}

fn device(r: &tokio_postgres::Row) -> Device {
    Device {
        id: r.get(0),
        user_id: r.get(1),
        provider: r.get(2),
        token: r.get(3),
        created_at: r.get(4),
        disabled_at: r.get(5),
        disabled_reason: r.get(6),
    }
}
