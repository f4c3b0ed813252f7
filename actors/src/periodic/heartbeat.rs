//! HeartbeatActor: keeps the stream entries of live sends from looking abandoned.
//!
//! Redis measures an entry's idle time from when it was last handed to a consumer, and the
//! claim actor — in this process or in another one — takes over entries idle longer than
//! `claim.min_idle_ms`. A send that takes long (a slow provider, a full mailbox, an outcome
//! writer waiting for Postgres) is still alive, though: claiming it would send it twice. So every
//! `claim.min_idle_ms / 4` this actor resets the idle time of every entry whose target is in
//! flight here ([`InFlight::entries`]) — only where this consumer still owns the entry, and
//! without counting a delivery (`XCLAIM … JUSTID` in a script). An entry goes idle only when the
//! process holding it dies or stalls as a whole.

use crate::error::Result;
use crate::inflight::InFlight;
use crate::periodic::PeriodicJob;
use crate::relay::Relay;
use crate::runtime::deps::Deps;
use slog::{debug, Logger};
use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

/// Entries refreshed per script call.
const REFRESH_BATCH: usize = 500;

/// The heartbeat's job: refresh the idle time of the entries in flight here.
pub struct Heartbeat {
    relay: Relay,
    inflight: InFlight,
    /// This process's consumer: only entries it still owns are refreshed.
    consumer: String,
    interval: Duration,
}

impl Heartbeat {
    /// Refreshes `deps.consumer`'s entries of `deps.inflight`, often enough for none to look
    /// idle after `min_idle` (`claim.min_idle_ms`).
    pub fn new(deps: &Deps, min_idle: Duration) -> Self {
        Heartbeat {
            relay: deps.relay.clone(),
            inflight: deps.inflight.clone(),
            consumer: deps.consumer.clone(),
            interval: Self::interval_for(min_idle),
        }
    }

    /// How often entries are refreshed for a given `claim.min_idle_ms`: four beats fit in it, so
    /// one late or failed beat never lets an entry look idle.
    pub fn interval_for(min_idle: Duration) -> Duration {
        (min_idle / 4).max(Duration::from_millis(10))
    }
}

impl PeriodicJob for Heartbeat {
    const NAME: &'static str = "heartbeat";

    fn interval(&self) -> Option<Duration> {
        Some(self.interval)
    }

    fn step(&self, log: &Logger) -> impl Future<Output = Result<usize>> + use<> {
        let (relay, inflight, consumer, log) =
            (self.relay.clone(), self.inflight.clone(), self.consumer.clone(), log.clone());
        async move {
            let refreshed = beat(relay, inflight, consumer).await?;
            if refreshed > 0 {
                debug!(log, "in-flight entries refreshed"; "count" => refreshed);
            }
            Ok(refreshed)
        }
    }
}

/// One beat: refreshes every in-flight entry; returns how many were refreshed.
async fn beat(relay: Relay, inflight: InFlight, consumer: String) -> Result<usize> {
    let mut by_shard: BTreeMap<u16, Vec<String>> = BTreeMap::new();
    for entry in inflight.entries() {
        by_shard.entry(entry.shard).or_default().push(entry.id);
    }
    let mut refreshed = 0;
    for (shard, ids) in by_shard {
        for chunk in ids.chunks(REFRESH_BATCH) {
            let ids: Vec<&str> = chunk.iter().map(String::as_str).collect();
            refreshed += relay.refresh_pending(shard, &consumer, &ids).await?;
        }
    }
    Ok(refreshed)
}
