//! Rate limits shared by every worker: token buckets in Redis, one per provider
//! (`providers.<name>.rate_per_sec`, Expo's documented 600/s by default) and one per recipient
//! device (`providers.<name>.device_rate_per_sec`). A delivery over a limit is not dropped and
//! spends no attempt: it is rescheduled (`DEFERRED`) for when its bucket has refilled.

use crate::error::Result;
use crate::job::{Job, Provider};
use crate::relay::conn::RelayConn;
use crate::relay::Relay;
use redis::Script;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Takes up to ARGV[4] tokens from the bucket KEYS[1] refilling at ARGV[1] tokens/s up to
/// ARGV[2], at time ARGV[3] (ms); returns how many were granted. Atomic, so every worker shares
/// the same bucket.
const TAKE: &str = r"
local rate, burst, now, want = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens, ts = tonumber(state[1]), tonumber(state[2])
if tokens == nil then tokens, ts = burst, now end
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate / 1000)
local granted = math.min(want, math.floor(tokens))
tokens = tokens - granted
redis.call('HSET', KEYS[1], 'tokens', tokens, 'ts', now)
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return granted
";

/// The limits of one provider; 0 means unlimited.
#[derive(Debug, Clone, Copy, Default)]
pub struct Limits {
    pub per_sec: u32,
    pub device_per_sec: u32,
}

#[derive(Clone)]
pub struct RateLimiter {
    relay: Relay,
    provider: Provider,
    limits: Limits,
    script: Script,
}

impl RateLimiter {
    pub fn new(relay: Relay, provider: Provider, limits: Limits) -> Self {
        RateLimiter { relay, provider, limits, script: Script::new(TAKE) }
    }

    /// Which jobs may be sent now (in order), and how long the others should wait.
    pub async fn admit(&self, jobs: &[Job]) -> Result<(Vec<bool>, Duration)> {
        let mut admitted = vec![true; jobs.len()];
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
        let mut wait = Duration::ZERO;
        let mut conn = self.relay.conn();
        if self.limits.device_per_sec > 0 {
            let rate = self.limits.device_per_sec;
            // A device may receive a small burst, then `rate` per second.
            let burst = rate.max(1);
            let keys: Vec<String> = jobs
                .iter()
                .map(|job| {
                    format!("{}:ratelimit:{}:device:{}", self.relay.keys().prefix(), self.provider, job.device_id)
                })
                .collect();
            let granted = self.take_each(&mut conn, &keys, rate, burst, now).await?;
            for (ok, g) in admitted.iter_mut().zip(granted) {
                *ok = g > 0;
            }
            if admitted.iter().any(|ok| !ok) {
                wait = wait.max(Duration::from_millis(1000 / u64::from(rate).max(1)));
            }
        }
        if self.limits.per_sec > 0 {
            let want = admitted.iter().filter(|ok| **ok).count();
            if want > 0 {
                let rate = self.limits.per_sec;
                let key = format!("{}:ratelimit:{}", self.relay.keys().prefix(), self.provider);
                let granted: usize =
                    self.script.key(key).arg(rate).arg(rate).arg(now).arg(want).invoke_async(&mut conn).await?;
                let mut left = granted;
                for ok in admitted.iter_mut().filter(|ok| **ok) {
                    if left == 0 {
                        *ok = false;
                    } else {
                        left -= 1;
                    }
                }
                if granted < want {
                    // The bucket refills `rate` per second: wait for the shortfall's share.
                    let short = (want - granted) as u64;
                    wait = wait.max(Duration::from_millis((short * 1000 / u64::from(rate)).clamp(50, 5000)));
                }
            }
        }
        Ok((admitted, wait))
    }

    /// One token from each of these buckets: one pipeline of `EVALSHA` on a single Redis (the
    /// script is loaded on first use, or again after a Redis restart); on a cluster, where the
    /// buckets live on different nodes, one script call per bucket, concurrently.
    async fn take_each(
        &self,
        conn: &mut RelayConn,
        keys: &[String],
        rate: u32,
        burst: u32,
        now: u64,
    ) -> Result<Vec<u32>> {
        if conn.is_cluster() {
            let calls = keys.iter().map(|key| {
                let mut conn = conn.clone();
                let mut call = self.script.key(key);
                call.arg(rate).arg(burst).arg(now).arg(1);
                async move { call.invoke_async::<u32>(&mut conn).await }
            });
            return Ok(futures_util::future::try_join_all(calls).await?);
        }
        let mut loaded = false;
        loop {
            let mut pipe = redis::pipe();
            for key in keys {
                pipe.cmd("EVALSHA").arg(self.script.get_hash()).arg(1).arg(key).arg(rate).arg(burst).arg(now).arg(1);
            }
            match pipe.query_async::<Vec<u32>>(conn).await {
                Err(e) if e.code() == Some("NOSCRIPT") && !loaded => {
                    redis::cmd("SCRIPT").arg("LOAD").arg(TAKE).query_async::<String>(conn).await?;
                    loaded = true;
                }
                other => return Ok(other?),
            }
        }
    }
}
