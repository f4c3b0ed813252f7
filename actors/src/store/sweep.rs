//! The sweep: targets whose stream entry or delayed retry Redis lost are found in Postgres and
//! written to the stream again.

use super::outcomes::settle;
use super::InputLimits;
use super::{split_targets, storable, Settled, Store, Target, Unsendable};
use crate::error::Result;
use crate::job::{Job, Provider};
use crate::payload::Payload;
use std::sync::Arc;
use std::time::Duration;

impl Store {
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
        tx.batch_execute(super::KEYED_PLANS).await?;
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
                        (extract(epoch FROM d.created_at) * 1000)::int8,
                        (extract(epoch FROM n.expires_at) * 1000)::int8, n.collapse_key",
            )
            .await?;
        let max_bytes = limits.payload_max_bytes;
        let mut jobs = Vec::new();
        let mut unsendable: Vec<(Target, Unsendable)> = Vec::new();
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
            let errs: Vec<String> = unsendable.iter().map(|u| storable(&u.1.to_string()).into_owned()).collect();
            tx.execute(&stmt, &[&n, &dev, &errs]).await?;
            let mut ids = n;
            ids.sort_unstable();
            ids.dedup();
            settled = settle(&tx, &ids).await?;
        }
        tx.commit().await?;
        Ok((jobs, settled))
    }
}

/// The job for a row of the sweep's RETURNING list, or why it cannot be sent any more.
fn stale_job(r: &tokio_postgres::Row, max_bytes: usize) -> std::result::Result<Job, Unsendable> {
    let text = |i: usize| r.try_get::<_, Option<String>>(i).ok().flatten().unwrap_or_default();
    let provider: Provider = text(2).parse().map_err(Unsendable::TargetProvider)?;
    let payload = match r.try_get::<_, Option<String>>(5) {
        Ok(Some(raw)) => Payload::parse(&raw, max_bytes).map_err(Unsendable::Payload)?,
        Ok(None) => return Err(Unsendable::PayloadOverLimit(max_bytes)),
        Err(e) => return Err(Unsendable::PayloadUnreadable(e.to_string())),
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
        expires_ms: r.try_get::<_, Option<i64>>(11).ok().flatten().map(|ms| ms.max(0) as u64),
        collapse_key: r.try_get::<_, Option<String>>(12).ok().flatten(),
    })
}
