//! What the HTTP API and the admin command line ask of Postgres: a user's failed notifications,
//! retries, devices, resetting dead-lettered targets, a notification's status and its
//! cancellation, and topic subscriptions.

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
    /// None for a topic notification (its audience is `topic`): it has no owner.
    pub user_id: Option<String>,
    pub topic: Option<String>,
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
        let row = client.query_opt("SELECT user_id, topic, status FROM notification WHERE id = $1", &[&id]).await?;
        Ok(row.map(|r| NotificationState { user_id: r.get(0), topic: r.get(1), status: r.get(2) }))
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
            // One doorbell for the whole batch: its payload is never read (the listener drains every
            // pending row), as the insert trigger's (migrations/V6__doorbell.sql).
            tx.execute("SELECT pg_notify('notification_insert', '')", &[]).await?;
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
        tx.batch_execute(super::KEYED_PLANS).await?;
        let reset: Vec<Target> = tx
            .query(
                "UPDATE delivery AS d
                    SET status = 'queued', attempt_count = 0, last_error = NULL, next_attempt_at = NULL,
                        updated_at = now(), created_at = now() -- the target starts over: so does its deadline
                   FROM unnest($1::uuid[], $2::uuid[]) AS t(n, d)
                  -- A CASE guard, under KEYED_PLANS (see store::outcomes).
                  WHERE d.notification_id = t.n AND d.device_id = t.d
                    AND CASE WHEN d.status = 'failed' THEN true ELSE false END
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

/// A notification as `GET /notifications/{id}` shows it: the row, every delivery target, and,
/// for a topic notification, the rows written for its subscribers.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NotificationDetail {
    pub id: Uuid,
    /// The owner; null for a topic notification.
    pub user_id: Option<String>,
    /// The topic whose subscribers it is for; null for a user's notification.
    pub topic: Option<String>,
    #[serde(rename = "type")]
    pub kind: String,
    /// expo, fcm, apns or email; null = every active device.
    pub channel: Option<String>,
    pub priority: String,
    /// pending, scheduled, queued, retrying, delivered, failed, expired or cancelled.
    pub status: String,
    pub attempt_count: i32,
    pub last_error: Option<String>,
    /// The payload as it was inserted; null when it is over `payload.max_bytes` or cannot be
    /// read as JSON.
    pub payload: Value,
    pub idempotency_key: Option<String>,
    pub send_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
    pub collapse_key: Option<String>,
    /// The topic notification this subscriber's row was written for.
    pub parent_id: Option<Uuid>,
    pub trace_id: Option<String>,
    pub created_at: DateTime<Utc>,
    pub queued_at: Option<DateTime<Utc>>,
    pub delivered_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
    /// Every delivery target (one per device it was fanned out to); a topic notification has
    /// none of its own: its subscribers' rows do.
    pub targets: Vec<TargetDetail>,
    /// Topic notifications only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subscribers: Option<SubscriberRows>,
}

/// A `delivery` row: one device of the notification.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TargetDetail {
    pub device_id: Uuid,
    pub provider: String,
    /// queued, retrying, delivered, failed or expired.
    pub status: String,
    pub attempts: i32,
    pub last_error: Option<String>,
    /// The provider's id of the message (an Expo ticket, an FCM message name, an APNs id).
    pub provider_message_id: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub delivered_at: Option<DateTime<Utc>>,
    /// When a retrying target is tried next.
    pub next_attempt_at: Option<DateTime<Utc>>,
}

/// The rows written so far for a topic notification's subscribers, counted by their status.
#[derive(Debug, Clone, Default, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SubscriberRows {
    pub written: i64,
    pub by_status: std::collections::BTreeMap<String, i64>,
}

/// What became of a cancel ([`Store::cancel`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Cancellation {
    /// The notification is `cancelled` and will not be sent.
    Cancelled {
        trace_id: Option<String>,
    },
    NotFound,
    /// Too late: it was fanned out already (or reached a final state). `status` is what it is
    /// now; `fanning_out`: a topic notification still `pending` whose fan-out to its
    /// subscribers has begun all the same (its cursor is set), which the status alone would
    /// not explain.
    TooLate {
        status: String,
        fanning_out: bool,
    },
}

/// Why a cancel came too late, for people (the API's 409 and `notify-relay admin cancel` say
/// the same).
pub fn cancel_refused(id: Uuid, status: &str, fanning_out: bool) -> String {
    let fan_out = if fanning_out { " but its fan-out to the topic's subscribers has begun" } else { "" };
    format!(
        "notification {id} is {status}{fan_out}; only a scheduled or pending notification can be cancelled, \
         before it is fanned out"
    )
}

/// A user's subscription to a topic.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Subscription {
    pub topic: String,
    pub user_id: String,
    pub created_at: DateTime<Utc>,
}

/// One of a user's topics, as `GET /users/{user_id}/topics` lists them.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UserTopic {
    pub topic: String,
    pub created_at: DateTime<Utc>,
}

/// What became of a subscription ([`Store::subscribe`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Subscribe {
    /// `created`: a new subscription; false: the user was subscribed already (unchanged).
    Subscribed { subscription: Subscription, created: bool },
    /// The user already has `max` topics.
    TooManyTopics { max: i64 },
}

impl Store {
    /// A notification with its targets (and its subscribers' rows, for a topic notification),
    /// read in one snapshot so that the status and the targets agree.
    pub async fn notification_detail(&self, id: Uuid) -> Result<Option<NotificationDetail>> {
        let mut client = self.conn().await?;
        let tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await?;
        // The payload as text, as `failed_for_user` reads it: a payload serde_json cannot read
        // or one over the limit is shown as null instead of failing the request.
        let Some(r) = tx
            .query_opt(
                "SELECT id, user_id, topic, type, channel, priority, status, attempt_count, last_error,
                        CASE WHEN octet_length(payload::text) <= $2::int8 THEN payload::text END,
                        idempotency_key, send_at, expires_at, collapse_key, parent_id, trace_id,
                        created_at, queued_at, delivered_at, updated_at
                   FROM notification WHERE id = $1",
                &[&id, &(self.max_payload_bytes as i64)],
            )
            .await?
        else {
            tx.commit().await?;
            return Ok(None);
        };
        let max = self.max_payload_bytes;
        let payload = r.try_get::<_, Option<String>>(9).ok().flatten().and_then(|t| crate::payload::readable(&t, max));
        let targets = tx
            .query(
                "SELECT device_id, provider, status, attempt_count, last_error, provider_message_id,
                        created_at, updated_at, delivered_at, next_attempt_at
                   FROM delivery WHERE notification_id = $1
                  ORDER BY created_at, device_id",
                &[&id],
            )
            .await?
            .iter()
            .map(|t| TargetDetail {
                device_id: t.get(0),
                provider: t.get(1),
                status: t.get(2),
                attempts: t.get(3),
                last_error: t.get(4),
                provider_message_id: t.get(5),
                created_at: t.get(6),
                updated_at: t.get(7),
                delivered_at: t.get(8),
                next_attempt_at: t.get(9),
            })
            .collect();
        let topic: Option<String> = r.get(2);
        let subscribers = match topic {
            // notification_parent_idx: one index range of the topic's children.
            Some(_) => {
                let mut rows = SubscriberRows::default();
                for c in tx
                    .query("SELECT status, count(*) FROM notification WHERE parent_id = $1 GROUP BY status", &[&id])
                    .await?
                {
                    let n: i64 = c.get(1);
                    rows.written += n;
                    rows.by_status.insert(c.get(0), n);
                }
                Some(rows)
            }
            None => None,
        };
        tx.commit().await?;
        Ok(Some(NotificationDetail {
            id: r.get(0),
            user_id: r.get(1),
            topic,
            kind: r.get(3),
            channel: r.get(4),
            priority: r.get(5),
            status: r.get(6),
            attempt_count: r.get(7),
            last_error: r.get(8),
            payload: payload.unwrap_or(Value::Null),
            idempotency_key: r.get(10),
            send_at: r.get(11),
            expires_at: r.get(12),
            collapse_key: r.get(13),
            parent_id: r.get(14),
            trace_id: r.get(15),
            created_at: r.get(16),
            queued_at: r.get(17),
            delivered_at: r.get(18),
            updated_at: r.get(19),
            targets,
            subscribers,
        }))
    }

    /// Cancels a notification that is not fanned out yet (`scheduled` or `pending`, and for a
    /// topic notification no subscriber given a row yet); `by` says who, in its `last_error`.
    ///
    /// One statement, so it is race-free with the listener: the listener claims with
    /// `FOR UPDATE SKIP LOCKED` and then sets `queued`, this UPDATE locks the row too, and
    /// whichever commits first wins (a cancel that waited for the claim re-reads the row,
    /// finds it `queued`, and changes nothing). The second statement only reads what the row
    /// is now, for the answer.
    pub async fn cancel(&self, id: Uuid, by: &str) -> Result<Cancellation> {
        let client = self.conn().await?;
        let cancelled = client
            .query_opt(
                "UPDATE notification SET status = 'cancelled', last_error = $2, updated_at = now()
                  WHERE id = $1 AND status IN ('scheduled', 'pending') AND fanout_cursor IS NULL
              RETURNING trace_id",
                &[&id, &format!("cancelled by {by}")],
            )
            .await?;
        if let Some(r) = cancelled {
            return Ok(Cancellation::Cancelled { trace_id: r.get(0) });
        }
        let now = client
            .query_opt(
                "SELECT status, status IN ('scheduled', 'pending') AND fanout_cursor IS NOT NULL
                   FROM notification WHERE id = $1",
                &[&id],
            )
            .await?;
        Ok(match now {
            Some(r) => Cancellation::TooLate { status: r.get(0), fanning_out: r.get(1) },
            None => Cancellation::NotFound,
        })
    }

    /// Subscribes `user` to `topic`, unless it would give them more than `max` topics.
    /// Subscribing again changes nothing (the first `created_at` stays).
    ///
    /// One transaction under an advisory lock on the user, as device registrations are: two
    /// concurrent subscriptions of one user cannot both pass the cap.
    pub async fn subscribe(&self, user: &str, topic: &str, max: i64) -> Result<Subscribe> {
        let mut client = self.conn().await?;
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1, hashtext($2))", &[&TOPIC_LOCK_SPACE, &user]).await?;
        let existing = tx
            .query_opt("SELECT created_at FROM topic_subscription WHERE topic = $1 AND user_id = $2", &[&topic, &user])
            .await?;
        if let Some(r) = existing {
            tx.commit().await?;
            let subscription = Subscription { topic: topic.into(), user_id: user.into(), created_at: r.get(0) };
            return Ok(Subscribe::Subscribed { subscription, created: false });
        }
        // topic_subscription_user_idx: an index-only count.
        let have: i64 =
            tx.query_one("SELECT count(*) FROM topic_subscription WHERE user_id = $1", &[&user]).await?.get(0);
        if have >= max {
            return Ok(Subscribe::TooManyTopics { max }); // rolled back on drop
        }
        // ON CONFLICT: a producer may write subscriptions with SQL of its own, outside the lock.
        let r = tx
            .query_one(
                "INSERT INTO topic_subscription (topic, user_id) VALUES ($1, $2)
                 ON CONFLICT (topic, user_id) DO UPDATE SET topic = excluded.topic
                 RETURNING created_at, xmax = 0",
                &[&topic, &user],
            )
            .await?;
        tx.commit().await?;
        let subscription = Subscription { topic: topic.into(), user_id: user.into(), created_at: r.get(0) };
        Ok(Subscribe::Subscribed { subscription, created: r.get(1) })
    }

    /// Ends `user`'s subscription to `topic`. False when there was none.
    pub async fn unsubscribe(&self, user: &str, topic: &str) -> Result<bool> {
        let client = self.conn().await?;
        let n = client
            .execute("DELETE FROM topic_subscription WHERE topic = $1 AND user_id = $2", &[&topic, &user])
            .await?;
        Ok(n == 1)
    }

    /// `user`'s topics, by name (one range of topic_subscription_user_idx).
    pub async fn topics_of(&self, user: &str) -> Result<Vec<UserTopic>> {
        let client = self.conn().await?;
        let rows = client
            .query("SELECT topic, created_at FROM topic_subscription WHERE user_id = $1 ORDER BY topic", &[&user])
            .await?;
        Ok(rows.iter().map(|r| UserTopic { topic: r.get(0), created_at: r.get(1) }).collect())
    }

    /// The `limit` topics with the most subscribers, and how many each has
    /// (`notify-relay admin topics`). It counts the whole table: an operator's question, not a
    /// hot path.
    pub async fn topic_counts(&self, limit: i64) -> Result<Vec<(String, i64)>> {
        let client = self.conn().await?;
        let rows = client
            .query(
                "SELECT topic, count(*) FROM topic_subscription GROUP BY topic ORDER BY count(*) DESC, topic LIMIT $1",
                &[&limit],
            )
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }
}

/// First key of the advisory lock that serialises one user's topic subscriptions.
const TOPIC_LOCK_SPACE: i32 = 0x6e72_7470; // "nrtp"

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
