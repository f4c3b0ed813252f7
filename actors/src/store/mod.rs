//! The Postgres side of the relay: claiming pending notifications and fanning them out to
//! delivery targets, storing outcomes, and the sweep that re-enqueues whatever Redis lost.
//!
//! Postgres is the source of truth. A `delivery` row exists for every target from the moment
//! its notification is claimed, so the status rule ("delivered once any target is delivered,
//! failed once every target failed") is decided from durable state alone, and everything in
//! Redis can be rebuilt from these rows.

pub mod api;
pub mod pool;
pub mod receipts;

use crate::error::Result;
use crate::job::{Job, Priority, Provider};
use crate::payload::{Payload, PayloadError};
use crate::settings::InputLimits;
use pool::{Lease, Pool};
use serde_json::Value;
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

/// A delivery target: (notification, device), the key of a `delivery` row.
pub type Target = (Uuid, Uuid);

#[derive(Clone)]
pub struct Store {
    pool: Pool,
    /// Largest payload the API hands back (`payload.max_bytes`).
    max_payload_bytes: usize,
}

/// A target as Postgres has it when its entry is about to be sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetState {
    /// Delivered or failed already.
    pub finished: bool,
    /// The device row as it is now (None: deleted).
    pub device: Option<DeviceNow>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceNow {
    pub user_id: String,
    pub token: String,
    pub disabled: bool,
}

impl TargetState {
    /// Why a job for this target must not be sent even though the target is not final: its
    /// device went away, or is no longer the device the job was made for.
    pub fn withdrawn(&self, user_id: &str, token: &str) -> Option<&'static str> {
        match &self.device {
            None => Some("not sent: the device was deleted before the send"),
            Some(d) if d.disabled => Some("not sent: the device was removed or disabled before the send"),
            Some(d) if d.user_id != user_id => Some("not sent: the device was given to another user before the send"),
            Some(d) if d.token != token => Some("not sent: the device's token changed before the send"),
            Some(_) => None,
        }
    }
}

/// What one fan-out transaction produced.
#[derive(Debug, Default)]
pub struct FanOut {
    /// Notifications claimed (pending → queued).
    pub claimed: usize,
    /// Targets to write to the stream, committed as `queued` delivery rows.
    pub jobs: Vec<Job>,
    /// Notifications that reached a final state without being sent (no device, malformed row…).
    pub settled: Vec<Settled>,
}

/// A notification that just reached its final state.
#[derive(Debug, Clone, PartialEq)]
pub struct Settled {
    pub notification_id: Uuid,
    pub trace_id: Option<String>,
    pub delivered: bool,
    pub last_error: Option<String>,
}

/// The outcomes of one batch, for [`Store::record`].
#[derive(Debug, Default)]
pub struct OutcomeRows {
    /// (target, attempts made, provider message id, when its receipt is due: Expo tickets only)
    pub delivered: Vec<(Target, i32, Option<String>, Option<Duration>)>,
    /// (target, attempts made, error, delay before the next attempt)
    pub retrying: Vec<(Target, i32, String, Duration)>,
    /// (target, attempts made, error)
    pub failed: Vec<(Target, i32, String)>,
    /// (device, reason): tokens the provider says are dead.
    pub disable_devices: Vec<(Uuid, String)>,
    /// Devices that just received something.
    pub used_devices: Vec<Uuid>,
    /// Notifications with several targets, whose rows are locked while the batch is stored.
    pub shared_notifications: Vec<Uuid>,
}

/// A claimed notification, decoded defensively: whatever Postgres holds, the row becomes
/// either something to send or a failure with a reason; decoding never panics.
struct Claimed {
    id: Uuid,
    user_id: String,
    channel: Option<String>,
    /// The payload, or why it cannot be sent.
    payload: std::result::Result<Arc<Value>, String>,
    priority: String,
    trace_id: String,
}

/// What a fan-out may cost: rows that exceed a cap fail on their own.
#[derive(Clone, Copy)]
pub struct FanOutRules<'a> {
    /// Notifications claimed per transaction.
    pub batch: i64,
    pub limits: InputLimits,
    /// Whether this deployment sends through a provider.
    pub enabled: &'a dyn Fn(Provider) -> bool,
}

/// Longest device token sent (the API refuses longer ones at registration).
pub const MAX_TOKEN_BYTES: usize = 4096;

/// Longest `user_id` and `trace_id` accepted: both travel in every stream entry and log line.
pub const MAX_ID_BYTES: usize = 256;

struct DeviceRow {
    id: Uuid,
    provider: String,
    token: String,
}

/// A target decided at fan-out: to be sent, or failed on the spot.
struct Planned {
    notification: usize,
    device: Uuid,
    provider: String,
    token: String,
    error: Option<String>,
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

    /// Claims up to `rules.batch` pending notifications (oldest first; `SKIP LOCKED` lets
    /// several listeners drain the same table), creates one `delivery` row per target and marks
    /// the notifications `queued`, all in one transaction. Malformed rows, rows over a cap and
    /// users without an active device are failed here, each with a `last_error` saying why; the
    /// rest of the batch goes on.
    pub async fn fan_out_pending(&self, rules: FanOutRules<'_>) -> Result<FanOut> {
        let mut client = self.conn().await?;
        let tx = client.transaction().await?;

        // The payload comes back as text, and only when it is within the cap: a jsonb that
        // serde_json cannot read (1e400, deep nesting) must not fail the whole batch, and a
        // 200 MB payload is not worth the transfer.
        let claim = tx
            .prepare_cached(
                "UPDATE notification n
                    SET status = 'queued', queued_at = now(), updated_at = now(),
                        trace_id = coalesce(n.trace_id, gen_random_uuid()::text)
                  WHERE n.id IN (SELECT id FROM notification WHERE status = 'pending'
                                  ORDER BY created_at LIMIT $1 FOR UPDATE SKIP LOCKED)
              RETURNING n.id, n.user_id, n.channel,
                        CASE WHEN octet_length(n.payload::text) <= $2::int8 THEN n.payload::text END,
                        octet_length(n.payload::text), n.priority, n.trace_id",
            )
            .await?;
        let max_bytes = rules.limits.payload_max_bytes;
        let claimed: Vec<Claimed> = tx
            .query(&claim, &[&rules.batch, &(max_bytes as i64)])
            .await?
            .iter()
            .filter_map(decode_claimed(max_bytes))
            .collect();
        if claimed.is_empty() {
            tx.commit().await?;
            return Ok(FanOut::default());
        }

        // Each user's active devices, newest first, at most `devices_per_user` of them: one user
        // with a million rows never loads a million rows.
        let mut users: Vec<&str> = claimed.iter().map(|c| c.user_id.as_str()).collect();
        users.sort_unstable();
        users.dedup();
        let devices = tx
            .prepare_cached(
                "SELECT u.user_id, d.id, d.provider, d.token
                   FROM unnest($1::text[]) AS u(user_id)
                   CROSS JOIN LATERAL (
                        SELECT id, provider, token, created_at FROM device
                         WHERE device.user_id = u.user_id AND disabled_at IS NULL
                         ORDER BY created_at DESC LIMIT $2) d
                  ORDER BY d.created_at",
            )
            .await?;
        let per_user = rules.limits.devices_per_user as i64;
        let mut by_user: HashMap<String, Vec<DeviceRow>> = HashMap::new();
        for r in tx.query(&devices, &[&users, &per_user]).await? {
            by_user.entry(r.get(0)).or_default().push(DeviceRow { id: r.get(1), provider: r.get(2), token: r.get(3) });
        }

        let mut targets = Vec::new();
        let mut rejected: Vec<(Uuid, String)> = Vec::new();
        for (i, n) in claimed.iter().enumerate() {
            match plan_targets(n, by_user.get(&n.user_id).map(Vec::as_slice).unwrap_or(&[]), rules.enabled) {
                Ok(ts) => targets.extend(ts.into_iter().map(|mut t| {
                    t.notification = i;
                    t
                })),
                Err(reason) => rejected.push((n.id, reason)),
            }
        }

        let mut out = FanOut { claimed: claimed.len(), ..FanOut::default() };
        if !targets.is_empty() {
            let insert = tx
                .prepare_cached(
                    "INSERT INTO delivery (notification_id, device_id, provider, status, last_error)
                     SELECT n, d, p, CASE WHEN e IS NULL THEN 'queued' ELSE 'failed' END, e
                       FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[]) AS u(n, d, p, e)
                     ON CONFLICT (notification_id, device_id) DO UPDATE
                        SET status = excluded.status, last_error = excluded.last_error, created_at = now(),
                            attempt_count = 0, next_attempt_at = NULL, delivered_at = NULL,
                            provider_message_id = NULL, updated_at = now()",
                )
                .await?;
            let n_ids: Vec<Uuid> = targets.iter().map(|t| claimed[t.notification].id).collect();
            let d_ids: Vec<Uuid> = targets.iter().map(|t| t.device).collect();
            let providers: Vec<&str> = targets.iter().map(|t| t.provider.as_str()).collect();
            let errors: Vec<Option<&str>> = targets.iter().map(|t| t.error.as_deref()).collect();
            tx.execute(&insert, &[&n_ids, &d_ids, &providers, &errors]).await?;
            let mut per_notification: HashMap<usize, u32> = HashMap::new();
            for t in &targets {
                *per_notification.entry(t.notification).or_default() += 1;
            }
            let queued_ms = crate::job::now_ms();
            for t in targets.iter().filter(|t| t.error.is_none()) {
                let n = &claimed[t.notification];
                let (Ok(provider), Ok(payload)) = (t.provider.parse(), &n.payload) else { continue };
                out.jobs.push(Job {
                    notification_id: n.id,
                    device_id: t.device,
                    user_id: n.user_id.clone(),
                    provider,
                    token: t.token.clone(),
                    payload: Arc::clone(payload),
                    priority: n.priority.parse().unwrap_or(Priority::Normal),
                    trace_id: n.trace_id.clone(),
                    attempt: 0,
                    targets: per_notification.get(&t.notification).copied().unwrap_or(1),
                    requeued: false,
                    queued_ms,
                });
            }
        }

        if !rejected.is_empty() {
            let fail = tx
                .prepare_cached(
                    "WITH f AS (
                        UPDATE notification n SET status = 'failed', last_error = u.err, updated_at = now()
                          FROM unnest($1::uuid[], $2::text[]) AS u(id, err)
                         WHERE n.id = u.id
                     RETURNING n.id, n.user_id, n.last_error, n.attempt_count, n.payload, n.trace_id
                     ), ins AS (
                        INSERT INTO notification_failed (notification_id, user_id, error, attempt_count, payload)
                        SELECT id, user_id, last_error, attempt_count, payload FROM f
                     )
                     SELECT id, trace_id, last_error FROM f",
                )
                .await?;
            let ids: Vec<Uuid> = rejected.iter().map(|r| r.0).collect();
            let errs: Vec<Cow<str>> = rejected.iter().map(|r| storable(&r.1)).collect();
            for r in tx.query(&fail, &[&ids, &errs]).await? {
                out.settled.push(Settled {
                    notification_id: r.get(0),
                    trace_id: r.get(1),
                    delivered: false,
                    last_error: r.get(2),
                });
            }
        }

        // Targets failed on the spot (provider not enabled…) may have settled a notification.
        let instantly_failed: Vec<Uuid> =
            targets.iter().filter(|t| t.error.is_some()).map(|t| claimed[t.notification].id).collect();
        if !instantly_failed.is_empty() {
            out.settled.extend(settle(&tx, &instantly_failed).await?);
        }
        tx.commit().await?;
        Ok(out)
    }

    /// Stores the outcomes of one batch in one transaction and settles the notifications they
    /// touch. Returns the notifications that reached a final state.
    pub async fn record(&self, rows: &OutcomeRows) -> Result<Vec<Settled>> {
        let mut client = self.conn().await?;
        let tx = client.transaction().await?;
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
                            receipt_due_at = coalesce(now() + u.receipt_ms * interval '1 millisecond', d.receipt_due_at)
                       FROM unnest($1::uuid[], $2::uuid[], $3::int4[], $4::text[], $5::int8[])
                            AS u(n, dev, attempts, msg, receipt_ms)
                      WHERE d.notification_id = u.n AND d.device_id = u.dev AND d.status <> 'failed'",
                )
                .await?;
            let (n, dev) = split_targets(rows.delivered.iter().map(|r| r.0));
            let attempts: Vec<i32> = rows.delivered.iter().map(|r| r.1).collect();
            let msgs: Vec<Option<Cow<str>>> = rows.delivered.iter().map(|r| r.2.as_deref().map(storable)).collect();
            let receipt_ms: Vec<Option<i64>> =
                rows.delivered.iter().map(|r| r.3.map(|d| d.as_millis() as i64)).collect();
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
                        AND d.status NOT IN ('delivered', 'failed')",
                )
                .await?;
            let (notes, dev) = split_targets(rows.retrying.iter().map(|r| r.0));
            let attempts: Vec<i32> = rows.retrying.iter().map(|r| r.1).collect();
            let errs: Vec<Cow<str>> = rows.retrying.iter().map(|r| storable(&r.2)).collect();
            let delays: Vec<i64> = rows.retrying.iter().map(|r| r.3.as_millis() as i64).collect();
            tx.execute(&stmt, &[&notes, &dev, &attempts, &errs, &delays]).await?;

            let stmt = tx
                .prepare_cached(
                    "UPDATE notification n
                        SET status = 'retrying', attempt_count = greatest(n.attempt_count, u.attempts),
                            last_error = u.err, updated_at = now()
                       FROM unnest($1::uuid[], $2::int4[], $3::text[]) AS u(id, attempts, err)
                      WHERE n.id = u.id AND n.status IN ('queued', 'retrying')",
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
                      WHERE d.notification_id = u.n AND d.device_id = u.dev AND d.status <> 'delivered'",
                )
                .await?;
            let (n, dev) = split_targets(rows.failed.iter().map(|r| r.0));
            let attempts: Vec<i32> = rows.failed.iter().map(|r| r.1).collect();
            let errs: Vec<Cow<str>> = rows.failed.iter().map(|r| storable(&r.2)).collect();
            tx.execute(&stmt, &[&n, &dev, &attempts, &errs]).await?;
        }
        disable_devices(&tx, rows.disable_devices.iter().map(|(id, reason)| (*id, reason.as_str()))).await?;
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
            let stmt = tx
                .prepare_cached(
                    "UPDATE notification n
                        SET status = 'delivered', delivered_at = now(), updated_at = now(),
                            attempt_count = greatest(n.attempt_count, u.attempts)
                       FROM unnest($1::uuid[], $2::int4[]) AS u(id, attempts)
                      WHERE n.id = u.id AND n.status NOT IN ('delivered', 'failed')
                  RETURNING n.id, n.trace_id",
                )
                .await?;
            let notes: Vec<Uuid> = rows.delivered.iter().map(|r| r.0 .0).collect();
            let attempts: Vec<i32> = rows.delivered.iter().map(|r| r.1).collect();
            for r in tx.query(&stmt, &[&notes, &attempts]).await? {
                settled.push(Settled {
                    notification_id: r.get(0),
                    trace_id: r.get(1),
                    delivered: true,
                    last_error: None,
                });
            }
        }
        settled.extend(corrected);
        let mut failing: Vec<Uuid> = rows.failed.iter().map(|r| r.0 .0).collect();
        failing.sort_unstable();
        failing.dedup();
        if !failing.is_empty() {
            settled.extend(settle(&tx, &failing).await?);
        }
        tx.commit().await?;
        Ok(settled)
    }

    /// What Postgres says about each of these targets now (one query for the whole batch): an
    /// entry read from a stream is checked against it before anything is sent, whatever Redis
    /// remembers — a Redis restored from an old snapshot hands out again work that Postgres
    /// knows is done. Targets missing from the answer have no `delivery` row any more.
    pub async fn target_states(&self, targets: &[Target]) -> Result<HashMap<Target, TargetState>> {
        if targets.is_empty() {
            return Ok(HashMap::new());
        }
        let client = self.conn().await?;
        let stmt = client
            .prepare_cached(
                "SELECT d.notification_id, d.device_id, d.status IN ('delivered', 'failed'),
                        dev.user_id, dev.token, dev.disabled_at IS NOT NULL
                   FROM unnest($1::uuid[], $2::uuid[]) AS u(n, dev_id)
                   JOIN delivery d ON d.notification_id = u.n AND d.device_id = u.dev_id
                   LEFT JOIN device dev ON dev.id = u.dev_id",
            )
            .await?;
        let (n, dev) = split_targets(targets.iter().copied());
        let mut states = HashMap::with_capacity(targets.len());
        for r in client.query(&stmt, &[&n, &dev]).await? {
            let target: Target = (r.try_get(0)?, r.try_get(1)?);
            let state = TargetState {
                finished: r.try_get(2)?,
                device: match r.try_get::<_, Option<String>>(3)? {
                    None => None,
                    Some(user_id) => {
                        Some(DeviceNow { user_id, token: r.try_get(4)?, disabled: r.try_get(5).unwrap_or(false) })
                    }
                },
            };
            states.insert(target, state);
        }
        Ok(states)
    }

    /// The sweep's second half: targets that made no progress for `stale_after` (their stream
    /// entry or delayed retry was lost with Redis, or the process died between commit and XADD)
    /// are touched and returned, to be written to the stream again. A target whose notification
    /// can no longer be sent (a payload written before the caps existed, a provider name this
    /// version does not know) is failed instead, and its notification settled: returned second.
    ///
    /// `live_since` is the oldest work Redis still holds (the first entry of any stream, the
    /// first due retry; None when it holds none). A target last enqueued after that may still
    /// be waiting there, unread — a backlog, a retry not yet moved back — and is left alone:
    /// only what is older than everything Redis holds (by `stale_after` as well) is lost.
    pub async fn requeue_stale(
        &self,
        stale_after: Duration,
        live_since: Option<std::time::SystemTime>,
        limit: i64,
        limits: InputLimits,
    ) -> Result<(Vec<Job>, Vec<Settled>)> {
        let mut client = self.conn().await?;
        let tx = client.transaction().await?;
        let stale_ms = stale_after.as_millis() as i64;
        let stmt = tx
            .prepare_cached(
                "UPDATE delivery d SET status = 'queued', next_attempt_at = NULL, updated_at = now()
                   FROM notification n, device dev
                  WHERE (d.notification_id, d.device_id) IN (
                            SELECT notification_id, device_id FROM delivery,
                                   LATERAL (SELECT least(now(), coalesce($4::timestamptz, now()))
                                                   - $1::int8 * interval '1 millisecond' AS cutoff) c
                             WHERE status IN ('queued', 'retrying')
                               AND updated_at < c.cutoff
                               AND coalesce(next_attempt_at, updated_at) < c.cutoff
                             ORDER BY updated_at LIMIT $2 FOR UPDATE SKIP LOCKED)
                    AND n.id = d.notification_id AND dev.id = d.device_id
              RETURNING d.notification_id, d.device_id, d.provider, d.attempt_count,
                        n.user_id, CASE WHEN octet_length(n.payload::text) <= $3::int8 THEN n.payload::text END,
                        n.priority, coalesce(n.trace_id, n.id::text), dev.token,
                        (SELECT count(*) FROM delivery s WHERE s.notification_id = d.notification_id),
                        (extract(epoch FROM d.created_at) * 1000)::int8",
            )
            .await?;
        let max_bytes = limits.payload_max_bytes;
        let mut jobs = Vec::new();
        let mut unsendable: Vec<(Target, String)> = Vec::new();
        for r in tx.query(&stmt, &[&stale_ms, &limit, &(max_bytes as i64), &live_since]).await? {
            let target: Target = (r.get(0), r.get(1));
            match stale_job(&r, max_bytes) {
                Ok(job) => jobs.push(job),
                Err(error) => unsendable.push((target, error)),
            }
        }
        let mut settled = Vec::new();
        if !unsendable.is_empty() {
            let stmt = tx
                .prepare_cached(
                    "UPDATE delivery d SET status = 'failed', last_error = u.err, updated_at = now()
                       FROM unnest($1::uuid[], $2::uuid[], $3::text[]) AS u(n, dev, err)
                      WHERE d.notification_id = u.n AND d.device_id = u.dev",
                )
                .await?;
            let (n, dev) = split_targets(unsendable.iter().map(|u| u.0));
            let errs: Vec<Cow<str>> = unsendable.iter().map(|u| storable(&u.1)).collect();
            tx.execute(&stmt, &[&n, &dev, &errs]).await?;
            let mut ids = n;
            ids.sort_unstable();
            ids.dedup();
            settled = settle(&tx, &ids).await?;
        }
        tx.commit().await?;
        Ok((jobs, settled))
    }

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
                       AND status IN ('delivered', 'failed')
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

/// Disables devices whose provider said their token is dead (once: the first reason stays).
async fn disable_devices<'a>(
    tx: &deadpool_postgres::Transaction<'_>,
    devices: impl Iterator<Item = (Uuid, &'a str)>,
) -> Result<()> {
    let (ids, reasons): (Vec<Uuid>, Vec<Cow<str>>) = devices.map(|(id, reason)| (id, storable(reason))).unzip();
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
                 WHERE d.notification_id = u.n AND d.device_id = u.dev AND d.status = 'failed'
             RETURNING d.notification_id
             ), note AS (
                UPDATE notification n SET status = 'delivered', delivered_at = now(), last_error = NULL,
                       updated_at = now()
                 WHERE n.id IN (SELECT notification_id FROM fixed) AND n.status = 'failed'
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
        .map(|r| Settled { notification_id: r.get(0), trace_id: r.get(1), delivered: true, last_error: None })
        .collect())
}

/// Applies the status rule to these notifications: `delivered` once any target is delivered,
/// `failed` (with exactly one `notification_failed` row) once every target failed. Rows already
/// final are left alone, so settling twice writes nothing twice.
async fn settle(tx: &deadpool_postgres::Transaction<'_>, ids: &[Uuid]) -> Result<Vec<Settled>> {
    let stmt = tx
        .prepare_cached(
            "WITH agg AS (
                SELECT notification_id AS id,
                       bool_or(status = 'delivered') AS delivered,
                       bool_and(status IN ('delivered', 'failed')) AS final,
                       max(attempt_count) AS attempts,
                       max(delivered_at) AS delivered_at,
                       string_agg(DISTINCT last_error, '; ') FILTER (WHERE status = 'failed') AS errors
                  FROM delivery WHERE notification_id = ANY($1)
                 GROUP BY notification_id
             ), done AS (
                UPDATE notification n
                   SET status = CASE WHEN agg.delivered THEN 'delivered' ELSE 'failed' END,
                       delivered_at = CASE WHEN agg.delivered THEN agg.delivered_at END,
                       last_error = CASE WHEN agg.delivered THEN n.last_error
                                         ELSE coalesce(agg.errors, 'every target failed') END,
                       attempt_count = greatest(n.attempt_count, agg.attempts),
                       updated_at = now()
                  FROM agg
                 WHERE n.id = agg.id AND (agg.delivered OR agg.final)
                   AND n.status NOT IN ('delivered', 'failed')
             RETURNING n.id, n.user_id, n.status, n.last_error, n.attempt_count, n.payload, n.trace_id
             ), failed AS (
                INSERT INTO notification_failed (notification_id, user_id, error, attempt_count, payload)
                SELECT id, user_id, last_error, attempt_count, payload FROM done WHERE status = 'failed'
             )
             SELECT id, trace_id, status = 'delivered', last_error FROM done",
        )
        .await?;
    Ok(tx
        .query(&stmt, &[&ids])
        .await?
        .into_iter()
        .map(|r| Settled { notification_id: r.get(0), trace_id: r.get(1), delivered: r.get(2), last_error: r.get(3) })
        .collect())
}

/// Decides the targets of one notification, or why it cannot be sent at all.
fn plan_targets(
    n: &Claimed,
    devices: &[DeviceRow],
    enabled: &dyn Fn(Provider) -> bool,
) -> Result<Vec<Planned>, String> {
    validate(n)?;
    let channel = n.channel.as_deref();
    let targets: Vec<Planned> = devices
        .iter()
        .filter(|d| channel.is_none_or(|c| c == d.provider))
        .map(|d| {
            let error = match d.provider.parse::<Provider>() {
                // A device row written around the API can hold anything; its token travels in
                // every stream entry and request.
                _ if d.token.len() > MAX_TOKEN_BYTES => {
                    Some(format!("token: {} bytes, over the limit of {MAX_TOKEN_BYTES}", d.token.len()))
                }
                Ok(p) if enabled(p) => None,
                Ok(p) => Some(format!("provider {p} is not enabled in this deployment")),
                Err(e) => Some(e),
            };
            Planned { notification: 0, device: d.id, provider: d.provider.clone(), token: d.token.clone(), error }
        })
        .collect();
    if targets.is_empty() {
        return Err(match channel {
            Some(c) => format!("user {} has no active {c} device", n.user_id),
            None => format!("user {} has no active device", n.user_id),
        });
    }
    Ok(targets)
}

/// The checks a row must pass before anything is sent; each failure names the field.
fn validate(n: &Claimed) -> Result<(), String> {
    if let Some(c) = &n.channel {
        c.parse::<Provider>().map_err(|e| format!("channel: {e}"))?;
    }
    n.priority.parse::<Priority>().map_err(|e| format!("priority: {e}"))?;
    for (field, value) in [("user_id", &n.user_id), ("trace_id", &n.trace_id)] {
        if value.len() > MAX_ID_BYTES {
            return Err(format!("{field}: {} bytes, over the limit of {MAX_ID_BYTES}", value.len()));
        }
    }
    n.payload.as_ref().map(|_| ()).map_err(Clone::clone)
}

/// The job for a row of the sweep's RETURNING list, or why it cannot be sent any more.
fn stale_job(r: &tokio_postgres::Row, max_bytes: usize) -> std::result::Result<Job, String> {
    let text = |i: usize| r.try_get::<_, Option<String>>(i).ok().flatten().unwrap_or_default();
    let provider: Provider = text(2).parse().map_err(|e| format!("provider: {e}"))?;
    let payload = match r.try_get::<_, Option<String>>(5) {
        Ok(Some(raw)) => Payload::parse(&raw, max_bytes).map_err(|e| e.to_string())?,
        Ok(None) => return Err(format!("payload: over the limit of {max_bytes} bytes (payload.max_bytes)")),
        Err(e) => return Err(format!("payload: unreadable: {e}")),
    };
    Ok(Job {
        notification_id: r.get(0),
        device_id: r.get(1),
        provider,
        attempt: r.try_get::<_, i32>(3).unwrap_or_default().max(0) as u32,
        user_id: text(4),
        payload: Arc::new(payload.into_value()),
        priority: text(6).parse().unwrap_or_default(),
        trace_id: text(7),
        token: text(8),
        targets: r.try_get::<_, i64>(9).unwrap_or(1).max(1) as u32,
        requeued: true,
        queued_ms: r.try_get::<_, i64>(10).unwrap_or(0).max(0) as u64,
    })
}

/// Turns a claimed row into a [`Claimed`], whatever its columns hold. `None` only for a row
/// without a readable id, which Postgres (uuid primary key) cannot produce.
fn decode_claimed(max_bytes: usize) -> impl Fn(&tokio_postgres::Row) -> Option<Claimed> {
    move |r| {
        let id: Uuid = r.try_get(0).ok()?;
        let text = |i: usize| r.try_get::<_, Option<String>>(i).map_err(|e| e.to_string());
        let payload = match (text(3), r.try_get::<_, Option<i32>>(4)) {
            (Ok(Some(raw)), _) => {
                Payload::parse(&raw, max_bytes).map(|p| Arc::new(p.into_value())).map_err(|e| e.to_string())
            }
            (Ok(None), Ok(Some(bytes))) => {
                Err(PayloadError::TooLarge { bytes: bytes as usize, limit: max_bytes }.to_string())
            }
            (Ok(None), _) => Err("payload: missing".to_string()),
            (Err(e), _) => Err(format!("payload: unreadable: {e}")),
        };
        Some(Claimed {
            id,
            user_id: text(1).ok().flatten().unwrap_or_default(),
            channel: text(2).ok().flatten(),
            payload,
            priority: text(5).ok().flatten().unwrap_or_default(),
            trace_id: text(6).ok().flatten().unwrap_or_else(|| id.to_string()),
        })
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

fn split_targets(targets: impl Iterator<Item = Target>) -> (Vec<Uuid>, Vec<Uuid>) {
    targets.unzip()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claimed(channel: Option<&str>, payload: Value) -> Claimed {
        Claimed {
            id: Uuid::new_v4(),
            user_id: "u1".into(),
            channel: channel.map(str::to_string),
            payload: Payload::from_value(payload).map(|p| Arc::new(p.into_value())).map_err(|e| e.to_string()),
            priority: "normal".into(),
            trace_id: "t".into(),
        }
    }

    fn device(provider: &str) -> DeviceRow {
        DeviceRow { id: Uuid::new_v4(), provider: provider.into(), token: "tok".into() }
    }

    fn all(_: Provider) -> bool {
        true
    }

    #[test]
    fn malformed_rows_are_rejected_naming_the_field() {
        let err = plan_targets(&claimed(None, json!({"title": 5})), &[device("expo")], &all).err().unwrap();
        assert_eq!(err, "payload.title must be a string, got 5");
        let mut row = claimed(None, json!({}));
        row.priority = "urgent".into();
        let err = plan_targets(&row, &[device("expo")], &all).err().unwrap();
        assert_eq!(err, "priority: must be 'normal' or 'high', got 'urgent'");
        let mut row = claimed(None, json!({}));
        row.trace_id = "t".repeat(MAX_ID_BYTES + 1);
        let err = plan_targets(&row, &[device("expo")], &all).err().unwrap();
        assert_eq!(err, format!("trace_id: {} bytes, over the limit of {MAX_ID_BYTES}", MAX_ID_BYTES + 1));
    }

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

    #[test]
    fn an_unknown_channel_is_rejected() {
        let err = plan_targets(&claimed(Some("sms"), json!({})), &[device("expo")], &all).err().unwrap();
        assert!(err.starts_with("channel: unknown provider `sms`"), "{err}");
    }

    #[test]
    fn the_channel_filters_the_users_devices() {
        let devices = [device("expo"), device("fcm"), device("expo")];
        let targets = plan_targets(&claimed(Some("expo"), json!({})), &devices, &all).unwrap();
        assert_eq!(targets.len(), 2);
        let targets = plan_targets(&claimed(None, json!({})), &devices, &all).unwrap();
        assert_eq!(targets.len(), 3);
        let err = plan_targets(&claimed(Some("apns"), json!({})), &devices, &all).err().unwrap();
        assert_eq!(err, "user u1 has no active apns device");
    }

    #[test]
    fn a_device_whose_token_is_over_the_limit_fails_alone() {
        let mut huge = device("expo");
        huge.token = "t".repeat(MAX_TOKEN_BYTES + 1);
        let targets = plan_targets(&claimed(None, json!({})), &[huge, device("expo")], &all).unwrap();
        assert_eq!(
            targets[0].error,
            Some(format!("token: {} bytes, over the limit of {MAX_TOKEN_BYTES}", MAX_TOKEN_BYTES + 1))
        );
        assert_eq!(targets[1].error, None);
    }

    #[test]
    fn targets_of_a_disabled_provider_fail_with_a_reason() {
        let only_expo = |p: Provider| p == Provider::Expo;
        let targets = plan_targets(&claimed(None, json!({})), &[device("expo"), device("fcm")], &only_expo).unwrap();
        assert_eq!(targets[0].error, None);
        assert_eq!(targets[1].error.as_deref(), Some("provider fcm is not enabled in this deployment"));
    }
}
