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

/// What became of a device registration ([`Store::register_device`]).
#[derive(Debug, Clone)]
pub enum Registration {
    /// The device is now an active device of the user. `created`: a new row; `moved_from`: the
    /// user it was an active device of until now.
    Registered { device: Device, created: bool, moved_from: Option<String> },
    /// The token is an active device of another user and may not move on this caller's word.
    OwnedByAnotherUser,
    /// The user already has `max` active devices.
    TooManyDevices { max: i64 },
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
        let client = self.conn().await?;
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
        let client = self.conn().await?;
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
        let mut client = self.conn().await?;
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
        let client = self.conn().await?;
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
        let client = self.conn().await?;
        let row = client
            .query_one(
                &format!("SELECT count(*) FROM notification WHERE {FAILED_MATCHING}"),
                &[&filter.user, &filter.since],
            )
            .await?;
        Ok(row.get::<_, i64>(0) as u64)
    }

    /// Registers `token` as a device of `user`, under the device-ownership rule:
    ///
    /// - a (provider, token) nobody has is created for `user`, and one `user` already has is
    ///   re-enabled (one row per token: re-registering never counts twice);
    /// - a token that is *disabled* (removed, or refused by its provider) goes to `user`,
    ///   whoever had it;
    /// - a token that is *active* for another user moves to `user` only if it is a push token
    ///   (expo, fcm, apns: a phone changes hands, and the previous owner stops receiving on it)
    ///   or if the caller is a service (`as_service`); an active email address never moves
    ///   between users on a user token: [`Registration::OwnedByAnotherUser`];
    /// - a registration that would give `user` more than `max_active` active devices is
    ///   [`Registration::TooManyDevices`].
    ///
    /// One transaction: the user's registrations are serialised by an advisory lock on the user
    /// (so two concurrent ones cannot both pass the cap), and the token's row is locked by the
    /// upsert before anything is decided (so two users registering it at once are decided one
    /// after the other, by the same rule, on the row as the first left it).
    pub async fn register_device(
        &self,
        user: &str,
        provider: Provider,
        token: &str,
        as_service: bool,
        max_active: i64,
    ) -> Result<Registration> {
        let may_take_active = as_service || provider != Provider::Email;
        let mut client = self.conn().await?;
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1, hashtext($2))", &[&DEVICE_LOCK_SPACE, &user]).await?;
        // Inserts the row, or locks the existing one (waiting for a concurrent inserter to
        // finish) and returns it unchanged: the decision below is made on the latest version.
        let row = tx
            .query_one(
                "INSERT INTO device (user_id, provider, token) VALUES ($1, $2, $3)
                 ON CONFLICT (provider, token) DO UPDATE SET user_id = device.user_id
                 RETURNING id, user_id, disabled_at IS NULL, xmax = 0",
                &[&user, &provider.as_str(), &token],
            )
            .await?;
        let (id, owner, active, created): (Uuid, String, bool, bool) = (row.get(0), row.get(1), row.get(2), row.get(3));
        let mine = owner == user;
        if !created && active && !mine && !may_take_active {
            return Ok(Registration::OwnedByAnotherUser); // rolled back on drop
        }
        if created || !(active && mine) {
            // The token becomes an active device of `user` that it was not before.
            let others: i64 = tx
                .query_one(
                    "SELECT count(*) FROM device WHERE user_id = $1 AND disabled_at IS NULL AND id <> $2",
                    &[&user, &id],
                )
                .await?
                .get(0);
            if others >= max_active {
                return Ok(Registration::TooManyDevices { max: max_active });
            }
        }
        let row = tx
            .query_one(
                &format!(
                    "UPDATE device SET user_id = $2, disabled_at = NULL, disabled_reason = NULL
                      WHERE id = $1 RETURNING {DEVICE_COLUMNS}"
                ),
                &[&id, &user],
            )
            .await?;
        tx.commit().await?;
        let moved_from = (!created && active && !mine).then_some(owner);
        Ok(Registration::Registered { device: device(&row), created, moved_from })
    }

    /// Disables one of a user's active devices (kept for the delivery history; registering the
    /// token again re-enables it). False when the user has no such active device (removing
    /// twice: the second finds none).
    pub async fn remove_device(&self, user: &str, device_id: Uuid) -> Result<bool> {
        let client = self.conn().await?;
        let n = client
            .execute(
                "UPDATE device SET disabled_at = now(), disabled_reason = 'removed through the API'
                  WHERE id = $1 AND user_id = $2 AND disabled_at IS NULL",
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
        let mut client = self.conn().await?;
        let tx = client.transaction().await?;
        let reset: Vec<Target> = tx
            .query(
                "UPDATE delivery AS d
                    SET status = 'queued', attempt_count = 0, last_error = NULL, next_attempt_at = NULL,
                        updated_at = now(), created_at = now() -- the target starts over: so does its deadline
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

/// The columns [`device`] reads, in its order.
const DEVICE_COLUMNS: &str = "id, user_id, provider, token, created_at, disabled_at, disabled_reason";

/// First key of the advisory lock that serialises one user's device registrations.
const DEVICE_LOCK_SPACE: i32 = 0x6e72_6476; // "nrdv"

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
