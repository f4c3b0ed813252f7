//! What the engine needs to know, handed in by the binary (which owns loading the layers of
//! configuration). The engine owns each section it uses, and that type is what is deserialized
//! from the configuration (`#[serde(deny_unknown_fields)]`): there is no second copy to convert.
//!
//! | section | type | where |
//! |---|---|---|
//! | `[worker]` | [`WorkerSettings`] | here |
//! | `[retry]` | [`RetryPolicy`] | `retry` |
//! | `[listener]` | [`ListenerSettings`] | here (the listener reads [`EngineSettings`]) |
//! | `[claim]` | `ClaimSettings` | `periodic::claim` |
//! | `[circuit]` | `CircuitSettings` | `circuit` |
//! | `[retention]` | `RetentionPolicy` | `periodic::retention` |
//! | `[scheduler]` | `SchedulerSettings` | `periodic::delay` |
//! | `[alerts]` | `AlertSettings` | `periodic::alerts` |
//! | `[payload]` | `PayloadSettings` | `payload` |
//! | `[providers.*]` | `Providers` and one struct per provider | `providers`, `providers::<p>` |
//!
//! Durations are [`Duration`] fields, read once from the `_ms` keys through [`millis`].
//! Validation is split: each section's `validate()` checks its own fields (range errors print
//! milliseconds, as the keys do) and returns a [`SettingsError`] naming the key (the shared
//! checks are in `rules`, a leaf module every section can use); the rules that
//! compare two sections live in the binary (`configuration::cross_checks`), which also owns the
//! sections only it uses (database, redis, http, auth, devices, shutdown, log).

pub mod rules;

pub use crate::circuit::CircuitSettings;
pub use crate::payload::PayloadSettings;
pub use crate::periodic::alerts::AlertSettings;
pub use crate::periodic::claim::ClaimSettings;
pub use crate::periodic::delay::SchedulerSettings;
pub use crate::periodic::retention::RetentionPolicy;
pub use crate::providers::apns::ApnsSettings;
pub use crate::providers::email::EmailSettings;
pub use crate::providers::expo::ExpoSettings;
pub use crate::providers::fcm::FcmSettings;
pub use crate::providers::Providers;
pub use crate::retry::RetryPolicy;
pub use crate::secret::Secret;
pub use crate::store::InputLimits;
pub use rules::{
    file_or_inline, http_url, millis, read_file, read_optional, within, within_ms, SettingsError, DAY_MS, HOUR_MS,
    MINUTE_MS, SECOND_MS,
};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Which parts of the engine this process runs (`notify-relay run --roles`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Roles {
    /// ListenerActor: LISTEN doorbell, fan-out, sweep.
    pub listener: bool,
    /// StreamReaderActors, SenderActor pools and the outcome writer.
    pub worker: bool,
    /// DelayActor and ClaimActor.
    pub scheduler: bool,
}

impl Roles {
    pub const ALL: Roles = Roles { listener: true, worker: true, scheduler: true };
}

/// The sections of the configuration the engine runs with, as they were loaded, and what the
/// process adds (its roles and consumer name, and the input caps drawn from `[payload]` and
/// `[devices]`).
#[derive(Debug, Clone)]
pub struct EngineSettings {
    pub roles: Roles,
    /// Name of this process's consumer in the group; unique per process.
    pub consumer: String,
    pub worker: WorkerSettings,
    pub listener: ListenerSettings,
    pub retry: RetryPolicy,
    pub claim: ClaimSettings,
    /// Per-provider circuit breakers.
    pub circuit: CircuitSettings,
    pub retention: RetentionPolicy,
    pub scheduler: SchedulerSettings,
    /// Thresholds of the `DLQ_GROWING` and `LAG_HIGH` warnings.
    pub alerts: AlertSettings,
    /// Every provider's section; only the enabled ones get senders.
    pub providers: Providers,
    /// Caps on what one notification row or one user can cost.
    pub input_limits: InputLimits,
}

/// `[worker]`.
#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerSettings {
    /// Deliveries in flight per process (read from the stream but not yet stored).
    pub concurrency: usize,
    /// SenderActors (one thread each) per enabled provider.
    pub senders_per_provider: usize,
}

impl WorkerSettings {
    pub fn validate(&self) -> Result<(), SettingsError> {
        if !(1..=100_000).contains(&self.concurrency) {
            return Err(SettingsError::new(
                "worker.concurrency",
                format!("must be between 1 and 100000, got {}", self.concurrency),
            ));
        }
        if !(1..=64).contains(&self.senders_per_provider) {
            return Err(SettingsError::new("worker.senders_per_provider", "must be between 1 and 64"));
        }
        Ok(())
    }
}

/// `[listener]`: how the fan-out claims pending notifications and how often the sweep runs.
#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerSettings {
    /// Notifications claimed per fan-out transaction.
    pub batch_size: i64,
    /// Fan-out transactions in flight at once (each on its own pooled connection).
    pub drainers: usize,
    /// Entries the streams may hold (all shards together, read or not) before the drainers stop
    /// claiming until the senders catch up (`listener.max_backlog`; 0: no limit). A backlog of
    /// millions stays in Postgres, where it is durable and cheap, instead of in Redis memory.
    pub max_backlog: u64,
    /// Period of the sweep (`listener.sweep_interval_ms`).
    #[serde(rename = "sweep_interval_ms", with = "millis")]
    pub sweep_interval: Duration,
    /// A queued/retrying target without progress for this long is re-enqueued
    /// (`listener.stale_after_ms`).
    #[serde(rename = "stale_after_ms", with = "millis")]
    pub stale_after: Duration,
    /// How often the listener looks for scheduled notifications that are due
    /// (`listener.schedule_poll_ms`): a due row waits at most this long, plus its fan-out.
    #[serde(rename = "schedule_poll_ms", with = "millis")]
    pub schedule_poll: Duration,
}

impl ListenerSettings {
    pub fn validate(&self) -> Result<(), SettingsError> {
        if !(1..=10_000).contains(&self.batch_size) {
            return Err(SettingsError::new("listener.batch_size", "must be between 1 and 10000"));
        }
        if !(1..=16).contains(&self.drainers) {
            return Err(SettingsError::new("listener.drainers", "must be between 1 and 16"));
        }
        if self.max_backlog != 0 && self.max_backlog < self.batch_size as u64 {
            return Err(SettingsError::new(
                "listener.max_backlog",
                "must be 0 (no limit) or at least listener.batch_size: the streams must hold a whole batch",
            ));
        }
        within_ms("listener.sweep_interval_ms", self.sweep_interval, 100..=DAY_MS)?;
        within_ms("listener.stale_after_ms", self.stale_after, SECOND_MS..=7 * DAY_MS)?;
        within_ms("listener.schedule_poll_ms", self.schedule_poll, 10..=MINUTE_MS)
    }
}
