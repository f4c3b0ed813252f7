//! DelayActor: moves retries whose time has come from each shard's delayed set back to its
//! stream. The move is one Lua script per batch, so any number of schedulers can run it at
//! once without losing or doubling a retry.

use crate::error::Result;
use crate::periodic::PeriodicJob;
use crate::relay::Relay;
use crate::settings::rules::{millis, within_ms, SettingsError, SECOND_MS};
use serde::{Deserialize, Serialize};
use slog::{debug, Logger};
use std::future::Future;
use std::time::Duration;

/// `[scheduler]`.
#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SchedulerSettings {
    /// Period of the move of due retries back to the stream (`scheduler.delay_poll_ms`).
    #[serde(rename = "delay_poll_ms", with = "millis")]
    pub delay_poll: Duration,
}

impl SchedulerSettings {
    pub fn validate(&self) -> std::result::Result<(), SettingsError> {
        within_ms("scheduler.delay_poll_ms", self.delay_poll, 10..=60 * SECOND_MS)
    }
}

/// Most retries one script call moves.
const MOVE_BATCH: usize = 500;

/// The delay actor's job: move due retries to their stream.
pub struct MoveDue {
    relay: Relay,
    interval: Duration,
}

impl MoveDue {
    pub fn new(relay: Relay, interval: Duration) -> Self {
        MoveDue { relay, interval }
    }
}

impl PeriodicJob for MoveDue {
    const NAME: &'static str = "delay";

    fn interval(&self) -> Option<Duration> {
        Some(self.interval)
    }

    fn step(&self, log: &Logger) -> impl Future<Output = Result<usize>> + use<> {
        let (relay, log) = (self.relay.clone(), log.clone());
        async move {
            let moved = move_all_due(relay).await?;
            if moved > 0 {
                debug!(log, "due retries moved to the stream"; "moved" => moved);
            }
            Ok(moved)
        }
    }
}

async fn move_all_due(relay: Relay) -> Result<usize> {
    let mut total = 0;
    for shard in relay.keys().shard_ids() {
        loop {
            let moved = relay.move_due(shard, MOVE_BATCH).await?;
            total += moved;
            if moved < MOVE_BATCH {
                break;
            }
        }
    }
    Ok(total)
}
