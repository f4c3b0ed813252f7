//! The alert check: every `alerts.interval_ms` a scheduler reads each shard's backlog
//! ([`Relay::backlog`]) and logs a warning when it passes a configured threshold, so that a log
//! pipeline (Loki, Elasticsearch) can alert on them; no metrics endpoint is needed:
//!
//! - `DLQ_GROWING` when the dead letters of all shards together exceed `alerts.dlq_length_max`,
//!   or when more than `alerts.dlq_added_max` were written since this process's previous check
//!   (counted from Redis's `entries-added`, so a DLQ capped at `redis.dlq_max_len` still shows
//!   its growth);
//! - `LAG_HIGH` when the entries no worker has read yet exceed `alerts.lag_max`, or when the
//!   oldest of them has waited longer than `alerts.lag_age_max_ms`.
//!
//! The events repeat at every check for as long as the condition holds, and stop when it ends:
//! an alert rule fires on "at least one in the last few minutes" and resolves by itself. Each
//! scheduler replica checks on its own, so with two replicas each check is logged twice.

use crate::error::Result;
use crate::events;
use crate::periodic::PeriodicJob;
use crate::relay::admin::ShardBacklog;
use crate::relay::Relay;
use crate::settings::rules::{millis, within, within_ms, SettingsError, DAY_MS, HOUR_MS, SECOND_MS};
use serde::{Deserialize, Serialize};
use slog::{warn, Logger};
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// `[alerts]`.
#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AlertSettings {
    /// Off: the check never runs (the actor still does, so `/readyz` counts it).
    pub enabled: bool,
    /// Time between two checks (`alerts.interval_ms`).
    #[serde(rename = "interval_ms", with = "millis")]
    pub interval: Duration,
    /// `DLQ_GROWING` when all shards together hold more dead letters than this.
    pub dlq_length_max: u64,
    /// `DLQ_GROWING` when more dead letters than this were written since the previous check.
    pub dlq_added_max: u64,
    /// `LAG_HIGH` when more entries than this wait for a worker.
    pub lag_max: u64,
    /// `LAG_HIGH` when the oldest entry waiting for a worker was written longer ago than this
    /// (`alerts.lag_age_max_ms`).
    #[serde(rename = "lag_age_max_ms", with = "millis")]
    pub lag_age_max: Duration,
}

impl AlertSettings {
    pub fn validate(&self) -> std::result::Result<(), SettingsError> {
        within_ms("alerts.interval_ms", self.interval, 100..=HOUR_MS)?;
        // 0 means "any": a single dead letter or a single waiting entry is then worth a warning.
        within("alerts.dlq_length_max", self.dlq_length_max, 0..=1_000_000_000)?;
        within("alerts.dlq_added_max", self.dlq_added_max, 0..=1_000_000_000)?;
        within("alerts.lag_max", self.lag_max, 0..=1_000_000_000)?;
        within_ms("alerts.lag_age_max_ms", self.lag_age_max, SECOND_MS / 10..=DAY_MS)
    }
}

/// The alert check's job.
pub struct WatchBacklog {
    relay: Relay,
    settings: AlertSettings,
    /// `entries-added` of each shard's dead-letter stream at the previous check (a shard whose
    /// stream held nothing then is absent); None before the first check.
    previous: Arc<Mutex<Option<BTreeMap<u16, u64>>>>,
}

impl WatchBacklog {
    pub fn new(relay: Relay, settings: AlertSettings) -> Self {
        WatchBacklog { relay, settings, previous: Arc::default() }
    }
}

impl PeriodicJob for WatchBacklog {
    const NAME: &'static str = "alerts";

    fn interval(&self) -> Option<Duration> {
        self.settings.enabled.then_some(self.settings.interval)
    }

    /// Returns how many alerts it logged (0, 1 or 2).
    fn step(&self, log: &Logger) -> impl Future<Output = Result<usize>> + use<> {
        let (relay, settings, previous, log) = (self.relay.clone(), self.settings, self.previous.clone(), log.clone());
        async move {
            let shards = relay.backlog().await?;
            let added: BTreeMap<u16, u64> = shards.iter().filter_map(|s| Some((s.shard, s.dlq_added?))).collect();
            let before = previous.lock().map_or(None, |mut p| p.replace(added));
            let alerts = Alerts::judge(&settings, &shards, before.as_ref(), SystemTime::now());
            alerts.log(&settings, &log);
            Ok(usize::from(alerts.dlq.is_some()) + usize::from(alerts.lag.is_some()))
        }
    }
}

/// What one check found over its thresholds.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Alerts {
    pub dlq: Option<DlqGrowing>,
    pub lag: Option<LagHigh>,
}

/// The figures of a `DLQ_GROWING` line.
#[derive(Debug, Clone, PartialEq)]
pub struct DlqGrowing {
    /// Dead letters held, all shards.
    pub length: u64,
    /// Written since the previous check; None at a process's first check.
    pub added: Option<u64>,
}

/// The figures of a `LAG_HIGH` line.
#[derive(Debug, Clone, PartialEq)]
pub struct LagHigh {
    /// Entries no worker has read yet, all shards.
    pub unread: u64,
    /// How long the oldest of them has waited, and its shard.
    pub oldest: Option<(Duration, u16)>,
}

impl Alerts {
    /// Compares one check's figures with the thresholds. `before` is the previous check's
    /// `entries-added` per shard: a shard missing from it had written no dead letter then, so
    /// all it has written since is new (as are the letters of a stream that was deleted and
    /// written again, whose count went down).
    pub fn judge(
        settings: &AlertSettings,
        shards: &[ShardBacklog],
        before: Option<&BTreeMap<u16, u64>>,
        now: SystemTime,
    ) -> Alerts {
        let length: u64 = shards.iter().map(|s| s.dlq_length).sum();
        let added = before.map(|before| {
            shards
                .iter()
                .filter_map(|s| {
                    let now = s.dlq_added?;
                    Some(match before.get(&s.shard) {
                        Some(&then) if then <= now => now - then,
                        _ => now,
                    })
                })
                .sum::<u64>()
        });
        let dlq = (length > settings.dlq_length_max || added.is_some_and(|a| a > settings.dlq_added_max))
            .then_some(DlqGrowing { length, added });

        let unread: u64 = shards.iter().map(|s| s.unread).sum();
        let oldest = shards
            .iter()
            .filter_map(|s| Some((now.duration_since(s.oldest_unread?).unwrap_or_default(), s.shard)))
            .max_by_key(|(age, _)| *age);
        let lag = (unread > settings.lag_max || oldest.is_some_and(|(age, _)| age > settings.lag_age_max))
            .then_some(LagHigh { unread, oldest });
        Alerts { dlq, lag }
    }

    fn log(&self, settings: &AlertSettings, log: &Logger) {
        if let Some(d) = &self.dlq {
            warn!(log, "dead letters are piling up: inspect them (notify-relay admin inspect-dlq), then requeue or drop them";
                  "event" => events::DLQ_GROWING, "dlq_length" => d.length, "dlq_added" => d.added,
                  "dlq_length_max" => settings.dlq_length_max, "dlq_added_max" => settings.dlq_added_max,
                  "interval_ms" => millis::of(settings.interval));
        }
        if let Some(l) = &self.lag {
            warn!(log, "workers are falling behind: entries wait in the streams for a worker to read them";
                  "event" => events::LAG_HIGH, "lag" => l.unread,
                  "oldest_unread_ms" => l.oldest.map(|(age, _)| millis::of(age)), "shard" => l.oldest.map(|(_, s)| s),
                  "lag_max" => settings.lag_max, "lag_age_max_ms" => millis::of(settings.lag_age_max));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> AlertSettings {
        AlertSettings {
            enabled: true,
            interval: Duration::from_secs(30),
            dlq_length_max: 100,
            dlq_added_max: 10,
            lag_max: 1000,
            lag_age_max: Duration::from_secs(60),
        }
    }

    fn shard(shard: u16, dlq_length: u64, dlq_added: Option<u64>) -> ShardBacklog {
        ShardBacklog { shard, dlq_length, dlq_added, unread: 0, oldest_unread: None }
    }

    fn before(pairs: &[(u16, u64)]) -> BTreeMap<u16, u64> {
        pairs.iter().copied().collect()
    }

    const NOW: Duration = Duration::from_secs(1_800_000_000);

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + NOW
    }

    #[test]
    fn a_quiet_backlog_raises_nothing() {
        let shards = [shard(0, 100, Some(500)), shard(1, 0, None)];
        let alerts = Alerts::judge(&settings(), &shards, Some(&before(&[(0, 490)])), now());
        assert_eq!(alerts, Alerts::default(), "100 held is not over 100, 10 written is not over 10");
    }

    #[test]
    fn the_dead_letters_held_count_across_shards() {
        let shards = [shard(0, 60, Some(60)), shard(1, 41, Some(41))];
        let alerts = Alerts::judge(&settings(), &shards, None, now());
        assert_eq!(alerts.dlq, Some(DlqGrowing { length: 101, added: None }), "no growth at the first check");
    }

    #[test]
    fn growth_counts_what_a_capped_stream_wrote_since_the_previous_check() {
        // Shard 0 is capped at 50 letters but wrote 11 more; shard 1 wrote its first 3.
        let shards = [shard(0, 50, Some(1011)), shard(1, 3, Some(3))];
        let grew = Alerts::judge(&settings(), &shards, Some(&before(&[(0, 1003)])), now());
        assert_eq!(grew.dlq, Some(DlqGrowing { length: 53, added: Some(11) }));
        let steady = Alerts::judge(&settings(), &shards, Some(&before(&[(0, 1011), (1, 3)])), now());
        assert_eq!(steady.dlq, None);
        // A stream deleted and written again counts from zero.
        let anew = Alerts::judge(&settings(), &[shard(0, 12, Some(12))], Some(&before(&[(0, 1011)])), now());
        assert_eq!(anew.dlq, Some(DlqGrowing { length: 12, added: Some(12) }));
    }

    #[test]
    fn lag_is_judged_by_count_and_by_the_age_of_the_oldest_unread_entry() {
        let waiting = |shard, unread, age_s: u64| ShardBacklog {
            unread,
            oldest_unread: Some(now() - Duration::from_secs(age_s)),
            ..self::shard(shard, 0, None)
        };
        let s = settings();
        assert_eq!(Alerts::judge(&s, &[waiting(0, 600, 5), waiting(1, 400, 60)], None, now()).lag, None);
        let many = Alerts::judge(&s, &[waiting(0, 600, 5), waiting(1, 401, 2)], None, now()).lag;
        assert_eq!(many, Some(LagHigh { unread: 1001, oldest: Some((Duration::from_secs(5), 0)) }));
        let old = Alerts::judge(&s, &[waiting(0, 1, 5), waiting(1, 1, 61)], None, now()).lag;
        assert_eq!(old, Some(LagHigh { unread: 2, oldest: Some((Duration::from_secs(61), 1)) }));
    }

    #[test]
    fn thresholds_of_zero_mean_any() {
        let s = AlertSettings { dlq_length_max: 0, lag_max: 0, ..settings() };
        let one = [ShardBacklog { unread: 1, oldest_unread: Some(now()), ..shard(0, 1, Some(1)) }];
        let alerts = Alerts::judge(&s, &one, None, now());
        assert!(alerts.dlq.is_some() && alerts.lag.is_some(), "{alerts:?}");
        assert_eq!(Alerts::judge(&s, &[shard(0, 0, None)], None, now()), Alerts::default());
    }

    #[test]
    fn bad_settings_name_their_key() {
        let cases = [
            (AlertSettings { interval: Duration::from_millis(99), ..settings() }, "alerts.interval_ms"),
            (AlertSettings { interval: Duration::from_secs(3601), ..settings() }, "alerts.interval_ms"),
            (AlertSettings { lag_age_max: Duration::from_millis(99), ..settings() }, "alerts.lag_age_max_ms"),
            (AlertSettings { lag_max: 1_000_000_001, ..settings() }, "alerts.lag_max"),
            (AlertSettings { dlq_added_max: u64::MAX, ..settings() }, "alerts.dlq_added_max"),
            (AlertSettings { dlq_length_max: u64::MAX, ..settings() }, "alerts.dlq_length_max"),
        ];
        for (bad, key) in cases {
            let error = bad.validate().expect_err(key).to_string();
            assert!(error.contains(key), "{error}");
        }
        settings().validate().expect("the example settings are valid");
    }
}
