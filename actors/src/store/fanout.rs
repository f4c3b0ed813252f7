//! Fan-out: claiming pending notifications and turning each into one `delivery` row per target.
//!
//! Whatever a claimed row holds, it becomes either jobs to write to the stream or a failure
//! whose `last_error` names the field at fault; one bad row never fails the batch.

use super::outcomes::settle;
use super::{storable, Final, Settled, Store, Unsendable};
use crate::error::Result;
use crate::job::{check_topic, expired_text, Job, Priority, Provider, MAX_COLLAPSE_KEY_BYTES};
use crate::payload::{Payload, PayloadError};
use chrono::{DateTime, Utc};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;
use uuid::Uuid;

/// What one fan-out transaction produced.
#[derive(Debug, Default)]
pub struct FanOutBatch {
    /// Notifications claimed (pending → queued).
    pub claimed: usize,
    /// Targets to write to the stream, committed as `queued` delivery rows.
    pub jobs: Vec<Job>,
    /// Notifications that reached a final state without being sent (no device, malformed row…).
    pub settled: Vec<Settled>,
    /// Topic notifications claimed, whose subscribers' rows `expand_topic` now writes.
    pub topics: usize,
    /// The oldest `created_at` claimed: where the next claim of a backlog can start
    /// ([`FanOutRules::from`]).
    pub oldest: Option<DateTime<Utc>>,
}

/// A claimed notification, decoded defensively: whatever Postgres holds, the row becomes
/// either something to send or a failure with a reason; decoding never panics.
struct Claimed {
    id: Uuid,
    /// Empty for a topic row (user_id NULL).
    user_id: String,
    /// Set for a row addressed to a topic's subscribers instead of a user.
    topic: Option<String>,
    channel: Option<String>,
    /// The payload, or why it cannot be sent.
    payload: std::result::Result<Arc<Value>, Unsendable>,
    priority: String,
    trace_id: String,
    /// `expires_at` in ms since the epoch.
    expires_ms: Option<u64>,
    /// `expires_at` had passed when the row was claimed.
    expired: bool,
    collapse_key: Option<String>,
}

/// Caps on what one notification row or one user can cost (`payload.max_bytes`,
/// `devices.max_per_user`). A row over a cap fails on its own, with a `last_error` naming it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputLimits {
    /// Largest payload accepted, as Postgres prints the jsonb (`payload::text`).
    pub payload_max_bytes: usize,
    /// Most active devices one notification fans out to (the newest are chosen).
    pub devices_per_user: usize,
}

impl Default for InputLimits {
    fn default() -> Self {
        InputLimits { payload_max_bytes: 16 * 1024, devices_per_user: 100 }
    }
}

/// What a fan-out may cost: rows that exceed a cap fail on their own.
#[derive(Clone, Copy)]
pub struct FanOutRules<'a> {
    /// Notifications claimed per transaction.
    pub batch: i64,
    /// Claim only rows created at or after this (None: from the oldest). A backlog's claims
    /// start where the previous batch did: `notification_pending_idx` is read from its left
    /// edge, where the entries of rows already claimed stay until vacuum removes them, and in a
    /// 10M run the first claimable entry took 8-12 ms to reach (bench/README). A row this skips
    /// (committed late by a long transaction, or made pending again) waits for the next claim
    /// from the oldest, which the drainer makes at least every
    /// [`FLOOR_LIFETIME`](crate::pipeline::drain::FLOOR_LIFETIME) and before it stops.
    pub from: Option<DateTime<Utc>>,
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
    error: Option<Unsendable>,
}

impl Store {
    /// Claims up to `rules.batch` pending notifications (oldest first; `SKIP LOCKED` lets
    /// several listeners drain the same table), creates one `delivery` row per target and marks
    /// the notifications `queued`, all in one transaction. Malformed rows, rows over a cap and
    /// users without an active device are failed here, each with a `last_error` saying why; the
    /// rest of the batch goes on.
    pub async fn fan_out_pending(&self, rules: FanOutRules<'_>) -> Result<FanOutBatch> {
        let mut client = self.conn().await?;
        let tx = client.transaction().await?;

        // The payload comes back as text, and only when it is within the cap: a jsonb that
        // serde_json cannot read (1e400, deep nesting) must not fail the whole batch, and a
        // 200 MB payload is not worth the transfer.
        // A topic row is claimed like any other; its fan-out to subscribers (`expand_topic`)
        // starts from an empty cursor.
        let claim = tx
            .prepare_cached(
                "UPDATE notification n
                    SET status = 'queued', queued_at = now(), updated_at = now(),
                        trace_id = coalesce(n.trace_id, gen_random_uuid()::text),
                        fanout_cursor = CASE WHEN n.topic IS NOT NULL THEN coalesce(n.fanout_cursor, '') END
                  WHERE n.id IN (SELECT id FROM notification
                                  WHERE status = 'pending' AND created_at >= coalesce($3, '-infinity'::timestamptz)
                                  ORDER BY created_at LIMIT $1 FOR UPDATE SKIP LOCKED)
              RETURNING n.id, n.user_id, n.channel,
                        CASE WHEN octet_length(n.payload::text) <= $2::int8 THEN n.payload::text END,
                        octet_length(n.payload::text), n.priority, n.trace_id, n.topic,
                        (extract(epoch FROM n.expires_at) * 1000)::int8, n.expires_at <= now(), n.collapse_key,
                        n.created_at",
            )
            .await?;
        let max_bytes = rules.limits.payload_max_bytes;
        // KEYED_PLANS and the claim go out together, in this order (tokio-postgres sends the
        // requests of futures polled at once without waiting in between): one round trip less
        // on every notification's way.
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 3] = [&rules.batch, &(max_bytes as i64), &rules.from];
        let (_, rows) = futures_util::try_join!(tx.batch_execute(super::KEYED_PLANS), tx.query(&claim, &params))?;
        let oldest = rows.iter().filter_map(|r| r.try_get::<_, DateTime<Utc>>(11).ok()).min();
        let claimed: Vec<Claimed> = rows.iter().filter_map(decode_claimed(max_bytes)).collect();
        if claimed.is_empty() {
            tx.commit().await?;
            return Ok(FanOutBatch::default());
        }

        // Each user's active devices, newest first, at most `devices_per_user` of them: one user
        // with a million rows never loads a million rows.
        let mut users: Vec<&str> =
            claimed.iter().filter(|c| c.topic.is_none() && !c.expired).map(|c| c.user_id.as_str()).collect();
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
        let mut unsent: Vec<(Uuid, Final, String)> = Vec::new();
        let mut topics = 0;
        for (i, n) in claimed.iter().enumerate() {
            if n.expired {
                unsent.push((n.id, Final::Expired, expired_text(n.expires_ms, "before it was sent")));
                continue;
            }
            if let Some(topic) = &n.topic {
                // Its subscribers' rows are written by `expand_topic`, batch by batch.
                match validate(n).and_then(|_| check_topic(topic).map_err(Unsendable::Topic)) {
                    Ok(()) => topics += 1,
                    Err(reason) => unsent.push((n.id, Final::Failed, reason.to_string())),
                }
                continue;
            }
            match plan_targets(n, by_user.get(&n.user_id).map(Vec::as_slice).unwrap_or(&[]), rules.enabled) {
                Ok(ts) => targets.extend(ts.into_iter().map(|mut t| {
                    t.notification = i;
                    t
                })),
                Err(reason) => unsent.push((n.id, Final::Failed, reason.to_string())),
            }
        }

        let mut out = FanOutBatch { claimed: claimed.len(), topics, oldest, ..FanOutBatch::default() };
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
            let errors: Vec<Option<String>> =
                targets.iter().map(|t| t.error.as_ref().map(Unsendable::to_string)).collect();
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
                    expires_ms: n.expires_ms,
                    collapse_key: n.collapse_key.clone(),
                });
            }
        }

        out.settled.extend(finish_unsent(&tx, &unsent).await?);

        // Targets failed on the spot (provider not enabled…) may have settled a notification.
        let instantly_failed: Vec<Uuid> =
            targets.iter().filter(|t| t.error.is_some()).map(|t| claimed[t.notification].id).collect();
        if !instantly_failed.is_empty() {
            out.settled.extend(settle(&tx, &instantly_failed).await?);
        }
        tx.commit().await?;
        Ok(out)
    }
}

/// Settles notifications that end without a target: `failed` ones (a malformed row, no device)
/// get their `notification_failed` row — when they have a user to pull it: a topic row has
/// none — and `expired` ones none.
async fn finish_unsent(
    tx: &deadpool_postgres::Transaction<'_>,
    unsent: &[(Uuid, Final, String)],
) -> Result<Vec<Settled>> {
    if unsent.is_empty() {
        return Ok(Vec::new());
    }
    let stmt = tx
        .prepare_cached(
            "WITH f AS (
                UPDATE notification n SET status = u.status, last_error = u.err, updated_at = now()
                  FROM unnest($1::uuid[], $2::text[], $3::text[]) AS u(id, err, status)
                 WHERE n.id = u.id
             RETURNING n.id, n.user_id, n.status, n.last_error, n.attempt_count, n.payload, n.trace_id
             ), ins AS (
                INSERT INTO notification_failed (notification_id, user_id, error, attempt_count, payload)
                SELECT id, user_id, last_error, attempt_count, payload FROM f
                 WHERE status = 'failed' AND user_id IS NOT NULL
             )
             SELECT id, trace_id, status, last_error FROM f",
        )
        .await?;
    let ids: Vec<Uuid> = unsent.iter().map(|u| u.0).collect();
    let errs: Vec<String> = unsent.iter().map(|u| storable(&u.2).into_owned()).collect();
    let statuses: Vec<&str> = unsent.iter().map(|u| if u.1 == Final::Expired { "expired" } else { "failed" }).collect();
    Ok(tx.query(&stmt, &[&ids, &errs, &statuses]).await?.into_iter().map(|r| Settled::from_row(&r)).collect())
}

/// Decides the targets of one notification, or why it cannot be sent at all.
fn plan_targets(
    n: &Claimed,
    devices: &[DeviceRow],
    enabled: &dyn Fn(Provider) -> bool,
) -> Result<Vec<Planned>, Unsendable> {
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
                    Some(Unsendable::TooLong { field: "token", bytes: d.token.len(), limit: MAX_TOKEN_BYTES })
                }
                Ok(p) if enabled(p) => None,
                Ok(p) => Some(Unsendable::NotEnabled(p)),
                Err(e) => Some(Unsendable::DeviceProvider(e)),
            };
            Planned { notification: 0, device: d.id, provider: d.provider.clone(), token: d.token.clone(), error }
        })
        .collect();
    if targets.is_empty() {
        let user = n.user_id.clone();
        return Err(match channel {
            Some(c) => Unsendable::NoDeviceOnChannel { user, channel: c.to_string() },
            None => Unsendable::NoDevice { user },
        });
    }
    Ok(targets)
}

/// The checks a row must pass before anything is sent; each failure names the field.
fn validate(n: &Claimed) -> Result<(), Unsendable> {
    if let Some(c) = &n.channel {
        c.parse::<Provider>().map_err(Unsendable::Channel)?;
    }
    n.priority.parse::<Priority>().map_err(Unsendable::Priority)?;
    for (field, value) in [("user_id", &n.user_id), ("trace_id", &n.trace_id)] {
        if value.len() > MAX_ID_BYTES {
            return Err(Unsendable::TooLong { field, bytes: value.len(), limit: MAX_ID_BYTES });
        }
    }
    if let Some(key) = n.collapse_key.as_ref().filter(|k| k.len() > MAX_COLLAPSE_KEY_BYTES) {
        return Err(Unsendable::TooLong { field: "collapse_key", bytes: key.len(), limit: MAX_COLLAPSE_KEY_BYTES });
    }
    n.payload.as_ref().map(|_| ()).map_err(Clone::clone)
}

/// Turns a claimed row into a [`Claimed`], whatever its columns hold. `None` only for a row
/// without a readable id, which Postgres (uuid primary key) cannot produce.
fn decode_claimed(max_bytes: usize) -> impl Fn(&tokio_postgres::Row) -> Option<Claimed> {
    move |r| {
        let id: Uuid = r.try_get(0).ok()?;
        let text = |i: usize| r.try_get::<_, Option<String>>(i).map_err(|e| e.to_string());
        let payload = match (text(3), r.try_get::<_, Option<i32>>(4)) {
            (Ok(Some(raw)), _) => {
                Payload::parse(&raw, max_bytes).map(|p| Arc::new(p.into_value())).map_err(Unsendable::Payload)
            }
            (Ok(None), Ok(Some(bytes))) => {
                Err(Unsendable::Payload(PayloadError::TooLarge { bytes: bytes as usize, limit: max_bytes }))
            }
            (Ok(None), _) => Err(Unsendable::PayloadMissing),
            (Err(e), _) => Err(Unsendable::PayloadUnreadable(e.to_string())),
        };
        Some(Claimed {
            id,
            user_id: text(1).ok().flatten().unwrap_or_default(),
            topic: text(7).ok().flatten(),
            channel: text(2).ok().flatten(),
            payload,
            priority: text(5).ok().flatten().unwrap_or_default(),
            trace_id: text(6).ok().flatten().unwrap_or_else(|| id.to_string()),
            expires_ms: r.try_get::<_, Option<i64>>(8).ok().flatten().map(|ms| ms.max(0) as u64),
            expired: r.try_get::<_, Option<bool>>(9).ok().flatten().unwrap_or(false),
            collapse_key: text(10).ok().flatten(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claimed(channel: Option<&str>, payload: Value) -> Claimed {
        Claimed {
            id: Uuid::new_v4(),
            user_id: "u1".into(),
            topic: None,
            channel: channel.map(str::to_string),
            payload: Payload::from_value(payload).map(|p| Arc::new(p.into_value())).map_err(Unsendable::Payload),
            priority: "normal".into(),
            trace_id: "t".into(),
            expires_ms: None,
            expired: false,
            collapse_key: None,
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
        let err = plan_targets(&claimed(None, json!({"title": 5})), &[device("expo")], &all).err().unwrap().to_string();
        assert_eq!(err, "payload.title must be a string, got 5");
        let mut row = claimed(None, json!({}));
        row.priority = "urgent".into();
        let err = plan_targets(&row, &[device("expo")], &all).err().unwrap().to_string();
        assert_eq!(err, "priority: must be 'normal' or 'high', got 'urgent'");
        let mut row = claimed(None, json!({}));
        row.trace_id = "t".repeat(MAX_ID_BYTES + 1);
        let err = plan_targets(&row, &[device("expo")], &all).err().unwrap().to_string();
        assert_eq!(err, format!("trace_id: {} bytes, over the limit of {MAX_ID_BYTES}", MAX_ID_BYTES + 1));
    }

    #[test]
    fn an_unknown_channel_is_rejected() {
        let err = plan_targets(&claimed(Some("sms"), json!({})), &[device("expo")], &all).err().unwrap().to_string();
        assert!(err.starts_with("channel: unknown provider `sms`"), "{err}");
    }

    #[test]
    fn the_channel_filters_the_users_devices() {
        let devices = [device("expo"), device("fcm"), device("expo")];
        let targets = plan_targets(&claimed(Some("expo"), json!({})), &devices, &all).unwrap();
        assert_eq!(targets.len(), 2);
        let targets = plan_targets(&claimed(None, json!({})), &devices, &all).unwrap();
        assert_eq!(targets.len(), 3);
        let err = plan_targets(&claimed(Some("apns"), json!({})), &devices, &all).err().unwrap().to_string();
        assert_eq!(err, "user u1 has no active apns device");
    }

    #[test]
    fn a_device_whose_token_is_over_the_limit_fails_alone() {
        let mut huge = device("expo");
        huge.token = "t".repeat(MAX_TOKEN_BYTES + 1);
        let targets = plan_targets(&claimed(None, json!({})), &[huge, device("expo")], &all).unwrap();
        assert_eq!(
            targets[0].error.as_ref().map(Unsendable::to_string),
            Some(format!("token: {} bytes, over the limit of {MAX_TOKEN_BYTES}", MAX_TOKEN_BYTES + 1))
        );
        assert_eq!(targets[1].error, None);
    }

    #[test]
    fn targets_of_a_disabled_provider_fail_with_a_reason() {
        let only_expo = |p: Provider| p == Provider::Expo;
        let targets = plan_targets(&claimed(None, json!({})), &[device("expo"), device("fcm")], &only_expo).unwrap();
        assert_eq!(targets[0].error, None);
        assert_eq!(
            targets[1].error.as_ref().map(Unsendable::to_string).as_deref(),
            Some("provider fcm is not enabled in this deployment")
        );
    }
}
