//! Topic notifications: one row for a topic (`user_id` NULL) becomes one row per subscriber.
//!
//! Each subscriber gets a notification row of its own (`parent_id` names the topic row), so
//! that every user pulls, retries and reads the status of their own copy exactly as if it had
//! been written for them, and the rest of the relay does not know topics exist. The rows are
//! written in batches streamed by Postgres itself (`INSERT … SELECT` from `topic_subscription`
//! in `user_id` order, after the last one written): the relay never holds the audience, so a
//! million subscribers cost what a thousand do, per batch. The cursor is committed with the
//! batch, so a crash repeats nothing and skips nobody; the row lock taken with `SKIP LOCKED`
//! keeps two listeners from writing the same topic's batches at once.

use super::{storable, Final, Settled, Store};
use crate::error::{EngineError, Result};
use crate::job::expired_text;
use uuid::Uuid;

/// What one call of [`Store::expand_topic`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct TopicProgress {
    pub notification_id: Uuid,
    pub topic: String,
    /// Subscriber rows written by this batch.
    pub written: u64,
    /// Every subscriber has a row: the topic row is `delivered` (handed over).
    pub done: bool,
    /// The topic row reached a final state without finishing (it expired, or Postgres refused
    /// its subscribers' rows).
    pub settled: Option<Settled>,
}

impl Store {
    /// Writes the next batch of up to `batch` subscriber rows of one topic notification whose
    /// fan-out has begun (the oldest not being written by someone else). None: there is none.
    pub async fn expand_topic(&self, batch: i64) -> Result<Option<TopicProgress>> {
        let mut client = self.conn().await?;
        let mut tx = client.transaction().await?;
        tx.batch_execute(super::KEYED_PLANS).await?;
        let pick = tx
            .prepare_cached(
                "SELECT id, topic, coalesce(fanout_cursor, ''), expires_at <= now(),
                        (extract(epoch FROM expires_at) * 1000)::int8, trace_id
                   FROM notification
                  WHERE topic IS NOT NULL AND status = 'queued'
                  ORDER BY created_at LIMIT 1 FOR UPDATE SKIP LOCKED",
            )
            .await?;
        let Some(row) = tx.query_opt(&pick, &[]).await? else {
            tx.commit().await?;
            return Ok(None);
        };
        let id: Uuid = row.get(0);
        let topic: String = row.get(1);
        let cursor: String = row.get(2);
        if row.get::<_, Option<bool>>(3).unwrap_or(false) {
            // The rows written so far carry the same expires_at and expire on their own.
            let expires_ms = row.get::<_, Option<i64>>(4).map(|ms| ms.max(0) as u64);
            let error = expired_text(expires_ms, "before every subscriber was given a row");
            return settle_topic(
                tx,
                Settled { notification_id: id, trace_id: row.get(5), status: Final::Expired, last_error: Some(error) },
                topic,
            )
            .await;
        }
        let write = tx
            .prepare_cached(
                "WITH batch AS (
                    SELECT user_id FROM topic_subscription
                     WHERE topic = $2 AND user_id > $3 ORDER BY user_id LIMIT $4
                 ), written AS (
                    INSERT INTO notification (user_id, type, channel, payload, priority, trace_id,
                                              expires_at, collapse_key, parent_id, queued_at)
                    SELECT b.user_id, p.type, p.channel, p.payload, p.priority, p.trace_id,
                           p.expires_at, p.collapse_key, p.id, NULL
                      FROM batch b CROSS JOIN (SELECT * FROM notification WHERE id = $1) p
                    ON CONFLICT DO NOTHING
                    RETURNING 1
                 )
                 SELECT (SELECT count(*) FROM batch), (SELECT max(user_id) FROM batch),
                        (SELECT count(*) FROM written)",
            )
            .await?;
        // Postgres may refuse a batch for what the rows hold (a producer's own trigger on
        // `notification`, a constraint added since): retrying would refuse it again, forever, and
        // hold up every topic behind it. The topic row fails instead, saying why.
        let savepoint = tx.savepoint("topic_batch").await?;
        let r = match savepoint.query_one(&write, &[&id, &topic, &cursor, &batch]).await {
            Ok(r) => {
                savepoint.commit().await?;
                r
            }
            Err(e) => {
                let e = EngineError::from(e);
                if !e.is_refused_write() {
                    return Err(e);
                }
                savepoint.rollback().await?;
                let error =
                    storable(&format!("topic fan-out stopped: Postgres refused a batch: {}", e.chain())).into_owned();
                return settle_topic(
                    tx,
                    Settled {
                        notification_id: id,
                        trace_id: row.get(5),
                        status: Final::Failed,
                        last_error: Some(error),
                    },
                    topic,
                )
                .await;
            }
        };
        let seen: i64 = r.get(0);
        let last: Option<String> = r.get(1);
        let written: i64 = r.get(2);
        let done = seen < batch;
        let advance = tx
            .prepare_cached(
                "UPDATE notification
                    SET fanout_cursor = coalesce($2, fanout_cursor), updated_at = now(),
                        status = CASE WHEN $3 THEN 'delivered' ELSE status END,
                        delivered_at = CASE WHEN $3 THEN now() END
                  WHERE id = $1",
            )
            .await?;
        tx.execute(&advance, &[&id, &last, &done]).await?;
        tx.commit().await?;
        Ok(Some(TopicProgress { notification_id: id, topic, written: written.max(0) as u64, done, settled: None }))
    }
}

/// Ends a topic row before every subscriber has a row of their own, as `settled` says (expired,
/// or failed), and commits: its fan-out is over.
async fn settle_topic(
    tx: deadpool_postgres::Transaction<'_>,
    settled: Settled,
    topic: String,
) -> Result<Option<TopicProgress>> {
    let stmt = tx
        .prepare_cached("UPDATE notification SET status = $3, last_error = $2, updated_at = now() WHERE id = $1")
        .await?;
    tx.execute(&stmt, &[&settled.notification_id, &settled.last_error, &settled.status.as_status()]).await?;
    tx.commit().await?;
    Ok(Some(TopicProgress {
        notification_id: settled.notification_id,
        topic,
        written: 0,
        done: true,
        settled: Some(settled),
    }))
}
