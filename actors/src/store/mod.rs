//! The Postgres side of the relay: claiming pending notifications and fanning them out to
//! delivery targets, storing outcomes, and the sweep that re-enqueues whatever Redis lost.
//!
//! Postgres is the source of truth. A `delivery` row exists for every target from the moment
//! its notification is claimed, so the status rule ("delivered once any target is delivered,
//! failed once every target failed") is decided from durable state alone, and everything in
//! Redis can be rebuilt from these rows.

pub mod api;

use crate::error::Result;
use crate::job::{Job, Priority, Provider};
use deadpool_postgres::Pool;
use serde_json::Value;
use std::collections::HashMap;
use std::time::Duration;
use uuid::Uuid;

/// A delivery target: (notification, device), the key of a `delivery` row.
pub type Target = (Uuid, Uuid);

#[derive(Clone)]
pub struct Store {
    pool: Pool,
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
    /// (target, attempts made, provider message id)
    pub delivered: Vec<(Target, i32, Option<String>)>,
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

struct Claimed {
    id: Uuid,
    user_id: String,
    channel: Option<String>,
    payload: Value,
    priority: String,
    trace_id: String,
}

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
        Store { pool }
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Claims up to `limit` pending notifications (oldest first; `SKIP LOCKED` lets several
    /// listeners drain the same table), creates one `delivery` row per target and marks the
    /// notifications `queued`, all in one transaction. Malformed rows and users without an active
    /// device are failed here, with a `last_error` saying why.
    pub async fn fan_out_pending(&self, limit: i64, enabled: &dyn Fn(Provider) -> bool) -> Result<FanOut> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;

        let claim = tx
            .prepare_cached(
                "UPDATE notification n
                    SET status = 'queued', queued_at = now(), updated_at = now(),
                        trace_id = coalesce(n.trace_id, gen_random_uuid()::text)
                  WHERE n.id IN (SELECT id FROM notification WHERE status = 'pending'
                                  ORDER BY created_at LIMIT $1 FOR UPDATE SKIP LOCKED)
              RETURNING n.id, n.user_id, n.channel, n.payload, n.priority, n.trace_id",
            )
            .await?;
        let claimed: Vec<Claimed> = tx
            .query(&claim, &[&limit])
            .await?
            .into_iter()
            .map(|r| Claimed {
                id: r.get(0),
                user_id: r.get(1),
                channel: r.get(2),
                payload: r.get(3),
                priority: r.get(4),
                trace_id: r.get(5),
            })
            .collect();
        if claimed.is_empty() {
            tx.commit().await?;
            return Ok(FanOut::default());
        }

        let users: Vec<&str> = claimed.iter().map(|c| c.user_id.as_str()).collect();
        let devices = tx
            .prepare_cached(
                "SELECT user_id, id, provider, token FROM device
                  WHERE user_id = ANY($1) AND disabled_at IS NULL
                  ORDER BY created_at",
            )
            .await?;
        let mut by_user: HashMap<String, Vec<DeviceRow>> = HashMap::new();
        for r in tx.query(&devices, &[&users]).await? {
            by_user.entry(r.get(0)).or_default().push(DeviceRow { id: r.get(1), provider: r.get(2), token: r.get(3) });
        }

        let mut targets = Vec::new();
        let mut rejected: Vec<(Uuid, String)> = Vec::new();
        for (i, n) in claimed.iter().enumerate() {
            match plan_targets(n, by_user.get(&n.user_id).map(Vec::as_slice).unwrap_or(&[]), enabled) {
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
                        SET status = excluded.status, last_error = excluded.last_error,
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
            for t in targets.iter().filter(|t| t.error.is_none()) {
                let n = &claimed[t.notification];
                let Ok(provider) = t.provider.parse() else { continue };
                out.jobs.push(Job {
                    notification_id: n.id,
                    device_id: t.device,
                    user_id: n.user_id.clone(),
                    provider,
                    token: t.token.clone(),
                    payload: n.payload.clone(),
                    priority: n.priority.parse().unwrap_or(Priority::Normal),
                    trace_id: n.trace_id.clone(),
                    attempt: 0,
                    targets: per_notification.get(&t.notification).copied().unwrap_or(1),
                    requeued: false,
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
            let errs: Vec<&str> = rejected.iter().map(|r| r.1.as_str()).collect();
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
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;

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
                        SET status = 'delivered', attempt_count = u.attempts, provider_message_id = u.msg,
                            delivered_at = now(), updated_at = now(), next_attempt_at = NULL
                       FROM unnest($1::uuid[], $2::uuid[], $3::int4[], $4::text[]) AS u(n, dev, attempts, msg)
                      WHERE d.notification_id = u.n AND d.device_id = u.dev",
                )
                .await?;
            let (n, dev) = split_targets(rows.delivered.iter().map(|r| r.0));
            let attempts: Vec<i32> = rows.delivered.iter().map(|r| r.1).collect();
            let msgs: Vec<Option<&str>> = rows.delivered.iter().map(|r| r.2.as_deref()).collect();
            tx.execute(&stmt, &[&n, &dev, &attempts, &msgs]).await?;
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
            let errs: Vec<&str> = rows.retrying.iter().map(|r| r.2.as_str()).collect();
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
                        SET status = 'failed', attempt_count = u.attempts, last_error = u.err,
                            next_attempt_at = NULL, updated_at = now()
                       FROM unnest($1::uuid[], $2::uuid[], $3::int4[], $4::text[]) AS u(n, dev, attempts, err)
                      WHERE d.notification_id = u.n AND d.device_id = u.dev AND d.status <> 'delivered'",
                )
                .await?;
            let (n, dev) = split_targets(rows.failed.iter().map(|r| r.0));
            let attempts: Vec<i32> = rows.failed.iter().map(|r| r.1).collect();
            let errs: Vec<&str> = rows.failed.iter().map(|r| r.2.as_str()).collect();
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
        let mut failing: Vec<Uuid> = rows.failed.iter().map(|r| r.0 .0).collect();
        failing.sort_unstable();
        failing.dedup();
        if !failing.is_empty() {
            settled.extend(settle(&tx, &failing).await?);
        }
        tx.commit().await?;
        Ok(settled)
    }

    /// Of these targets, the ones Postgres already knows to be final (delivered or failed): a
    /// redelivered or reclaimed entry for one of them must not be sent again.
    pub async fn already_final(&self, targets: &[Target]) -> Result<Vec<Target>> {
        let client = self.pool.get().await?;
        let stmt = client
            .prepare_cached(
                "SELECT d.notification_id, d.device_id
                   FROM delivery d JOIN unnest($1::uuid[], $2::uuid[]) AS u(n, dev)
                     ON d.notification_id = u.n AND d.device_id = u.dev
                  WHERE d.status IN ('delivered', 'failed')",
            )
            .await?;
        let (n, dev) = split_targets(targets.iter().copied());
        Ok(client.query(&stmt, &[&n, &dev]).await?.into_iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// The sweep's second half: targets that made no progress for `stale_after` (their stream
    /// entry or delayed retry was lost with Redis, or the process died between commit and XADD)
    /// are touched and returned, to be written to the stream again.
    pub async fn requeue_stale(&self, stale_after: Duration, limit: i64) -> Result<Vec<Job>> {
        let client = self.pool.get().await?;
        let stale_ms = stale_after.as_millis() as i64;
        let stmt = client
            .prepare_cached(
                "UPDATE delivery d SET status = 'queued', next_attempt_at = NULL, updated_at = now()
                   FROM notification n, device dev
                  WHERE (d.notification_id, d.device_id) IN (
                            SELECT notification_id, device_id FROM delivery
                             WHERE status IN ('queued', 'retrying')
                               AND updated_at < now() - $1::int8 * interval '1 millisecond'
                               AND coalesce(next_attempt_at, updated_at) < now() - $1::int8 * interval '1 millisecond'
                             ORDER BY updated_at LIMIT $2 FOR UPDATE SKIP LOCKED)
                    AND n.id = d.notification_id AND dev.id = d.device_id
              RETURNING d.notification_id, d.device_id, d.provider, d.attempt_count,
                        n.user_id, n.payload, n.priority, coalesce(n.trace_id, n.id::text), dev.token,
                        (SELECT count(*) FROM delivery s WHERE s.notification_id = d.notification_id)",
            )
            .await?;
        let mut jobs = Vec::new();
        for r in client.query(&stmt, &[&stale_ms, &limit]).await? {
            let (provider, priority, attempt): (String, String, i32) = (r.get(2), r.get(6), r.get(3));
            let Ok(provider) = provider.parse() else { continue };
            jobs.push(Job {
                notification_id: r.get(0),
                device_id: r.get(1),
                provider,
                attempt: attempt.max(0) as u32,
                user_id: r.get(4),
                payload: r.get(5),
                priority: priority.parse().unwrap_or_default(),
                trace_id: r.get(7),
                token: r.get(8),
                targets: r.get::<_, i64>(9).max(1) as u32,
                requeued: true,
            });
        }
        Ok(jobs)
    }

    /// Deletes up to `batch` final notifications created more than `days` days ago, with their
    /// delivery and notification_failed rows; returns how many notifications went.
    pub async fn delete_final_older_than(&self, days: u32, batch: i64) -> Result<u64> {
        let client = self.pool.get().await?;
        let stmt = client
            .prepare_cached(
                "WITH old AS (
                    SELECT id FROM notification
                     WHERE created_at < now() - $1::int4 * interval '1 day'
                       AND status IN ('delivered', 'failed')
                     LIMIT $2 FOR UPDATE SKIP LOCKED
                 ), failed AS (
                    DELETE FROM notification_failed f USING old WHERE f.notification_id = old.id
                 )
                 DELETE FROM notification n USING old WHERE n.id = old.id",
            )
            .await?;
        Ok(client.execute(&stmt, &[&(days as i32), &batch]).await?)
    }

    /// Keeps receipt errors in their delivery's `last_error`, and disables the devices whose
    /// receipt said the token is dead (`disable`).
    pub async fn record_receipt_errors(&self, errors: &[(Target, String, bool)]) -> Result<()> {
        if errors.is_empty() {
            return Ok(());
        }
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let stmt = tx
            .prepare_cached(
                "UPDATE delivery d SET last_error = u.err, updated_at = now()
                   FROM unnest($1::uuid[], $2::uuid[], $3::text[]) AS u(n, dev, err)
                  WHERE d.notification_id = u.n AND d.device_id = u.dev",
            )
            .await?;
        let (n, dev) = split_targets(errors.iter().map(|e| e.0));
        let errs: Vec<&str> = errors.iter().map(|e| e.1.as_str()).collect();
        tx.execute(&stmt, &[&n, &dev, &errs]).await?;
        disable_devices(&tx, errors.iter().filter(|e| e.2).map(|((_, device), reason, _)| (*device, reason.as_str())))
            .await?;
        tx.commit().await?;
        Ok(())
    }
}

/// Disables devices whose provider said their token is dead (once: the first reason stays).
async fn disable_devices<'a>(
    tx: &deadpool_postgres::Transaction<'_>,
    devices: impl Iterator<Item = (Uuid, &'a str)>,
) -> Result<()> {
    let (ids, reasons): (Vec<Uuid>, Vec<&str>) = devices.unzip();
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
    n.priority.parse::<Priority>()?;
    let Value::Object(payload) = &n.payload else {
        return Err(format!("payload must be a JSON object, got {}", json_type(&n.payload)));
    };
    for field in ["title", "body", "subtitle", "sound"] {
        match payload.get(field) {
            None | Some(Value::Null) | Some(Value::String(_)) => {}
            Some(other) => return Err(format!("payload.{field} must be a string, got {}", json_type(other))),
        }
    }
    match payload.get("data") {
        None | Some(Value::Null) | Some(Value::Object(_)) => {}
        Some(other) => return Err(format!("payload.data must be an object, got {}", json_type(other))),
    }
    match payload.get("badge") {
        None | Some(Value::Null) => {}
        Some(Value::Number(n)) if n.as_u64().is_some() => {}
        Some(other) => return Err(format!("payload.badge must be a non-negative integer, got {other}")),
    }
    Ok(())
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
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
            payload,
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
    fn malformed_payloads_are_rejected_naming_the_field() {
        let cases = [
            (json!("hello"), "payload must be a JSON object, got a string"),
            (json!({"title": 5}), "payload.title must be a string, got a number"),
            (json!({"data": [1]}), "payload.data must be an object, got an array"),
            (json!({"badge": -1}), "payload.badge must be a non-negative integer, got -1"),
        ];
        for (payload, expected) in cases {
            let err = plan_targets(&claimed(None, payload), &[device("expo")], &all).err().unwrap();
            assert_eq!(err, expected);
        }
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
    fn targets_of_a_disabled_provider_fail_with_a_reason() {
        let only_expo = |p: Provider| p == Provider::Expo;
        let targets = plan_targets(&claimed(None, json!({})), &[device("expo"), device("fcm")], &only_expo).unwrap();
        assert_eq!(targets[0].error, None);
        assert_eq!(targets[1].error.as_deref(), Some("provider fcm is not enabled in this deployment"));
    }
}
