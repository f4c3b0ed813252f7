//! RetentionActor: deletes final notifications (delivered or failed) older than
//! `retention.final_after_days`, with their `delivery` and `notification_failed` rows, in
//! batches of `retention.batch_size` every `retention.interval_ms`. Pending and in-flight rows
//! are never touched. Redis needs no such job: idempotency keys expire after an hour or two sweep leases, counters
//! after 90, and the dead-letter stream is capped (`redis.dlq_max_len`).

use crate::error::Result;
use crate::events;
use crate::periodic::PeriodicJob;
use crate::settings::rules::{millis, within, within_ms, SettingsError, DAY_MS};
use crate::store::Store;
use serde::{Deserialize, Serialize};
use slog::{info, Logger};
use std::future::Future;
use std::time::Duration;

/// `[retention]`.
#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionPolicy {
    /// Final notifications (and their delivery / notification_failed rows) older than this many
    /// days are deleted; 0 keeps everything.
    pub final_after_days: u32,
    /// How often the retention job runs (`retention.interval_ms`).
    #[serde(rename = "interval_ms", with = "millis")]
    pub interval: Duration,
    /// Notifications deleted per statement (`retention.batch_size`).
    #[serde(rename = "batch_size")]
    pub batch: i64,
}

impl RetentionPolicy {
    pub fn validate(&self) -> std::result::Result<(), SettingsError> {
        // 0 keeps everything; 100 years is the most that still reads as a retention period (a
        // value near u32::MAX once wrapped to -1 day and deleted every final notification).
        within("retention.final_after_days", u64::from(self.final_after_days), 0..=36_500)?;
        within_ms("retention.interval_ms", self.interval, 100..=7 * DAY_MS)?;
        if !(1..=100_000).contains(&self.batch) {
            return Err(SettingsError::new("retention.batch_size", "must be between 1 and 100000"));
        }
        Ok(())
    }
}

/// The retention actor's job: delete final notifications past the retention period.
pub struct Prune {
    store: Store,
    policy: RetentionPolicy,
}

impl Prune {
    pub fn new(store: Store, policy: RetentionPolicy) -> Self {
        Prune { store, policy }
    }
}

impl PeriodicJob for Prune {
    const NAME: &'static str = "retention";

    /// `final_after_days = 0` keeps everything: the actor runs (and counts as up) but never ticks.
    fn interval(&self) -> Option<Duration> {
        (self.policy.final_after_days > 0).then_some(self.policy.interval)
    }

    fn step(&self, log: &Logger) -> impl Future<Output = Result<usize>> + use<> {
        let fut = prune(self.store.clone(), self.policy, log.clone());
        async move { Ok(usize::try_from(fut.await?).unwrap_or(usize::MAX)) }
    }
}

async fn prune(store: Store, policy: RetentionPolicy, log: Logger) -> Result<u64> {
    let mut total = 0;
    loop {
        let deleted = store.delete_final_older_than(policy.final_after_days, policy.batch).await?;
        total += deleted;
        if deleted < policy.batch as u64 {
            break;
        }
    }
    if total > 0 {
        info!(log, "old final notifications deleted"; "event" => events::RETENTION_DELETED, "count" => total,
              "older_than_days" => policy.final_after_days);
    }
    Ok(total)
}
