//! Configuration: `config/default.toml` (compiled in), then the file given by `--config` or
//! `NOTIFY_CONFIG`, then the conventional `DATABASE_URL`, `REDIS_URL` and `WORKER_CONCURRENCY`,
//! then `NOTIFY__<SECTION>__<KEY>` variables. Loaded and validated once at start-up: a bad value
//! stops the process with a message naming its key. Secrets are wrapped in [`Secret`] so they
//! cannot reach a log.

mod providers;

pub use crate::auth::AuthSettings;
pub use crate::secret::Secret;
pub use providers::ProvidersSettings;

use config::{Config, Environment, File, FileFormat};
use notify_relay_engine::settings::{EngineSettings, RetryPolicy, Roles};
use serde::Deserialize;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

const DEFAULTS: &str = include_str!("../../config/default.toml");

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    #[error("configuration could not be loaded: {0}")]
    Load(String),
    #[error("invalid configuration: `{key}` {message}")]
    Invalid { key: &'static str, message: String },
}

fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key, message: message.into() }
}

/// `value` must lie in `range`. Upper bounds matter as much as lower ones: a value past them is
/// a typo, and some would overflow a timer, an int4 or a date.
fn within(key: &'static str, value: u64, range: std::ops::RangeInclusive<u64>) -> Result<(), ConfigError> {
    match range.contains(&value) {
        true => Ok(()),
        false => Err(invalid(key, format!("must be between {} and {}, got {value}", range.start(), range.end()))),
    }
}

const SECOND_MS: u64 = 1000;
const MINUTE_MS: u64 = 60 * SECOND_MS;
const HOUR_MS: u64 = 3600 * SECOND_MS;
const DAY_MS: u64 = 24 * HOUR_MS;

/// tokio-postgres's (and libpq's) keepalive idle time when the URL sets none: 2 hours.
const LIBPQ_KEEPALIVES_IDLE: Duration = Duration::from_secs(2 * 3600);
/// Unanswered keepalive probes before the kernel gives up on a connection.
const KEEPALIVE_PROBES: u32 = 3;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub database: DatabaseSettings,
    pub redis: RedisSettings,
    pub worker: WorkerSettings,
    pub listener: ListenerSettings,
    pub retry: RetrySettings,
    pub claim: ClaimSettings,
    pub circuit: CircuitBreakerSettings,
    pub retention: RetentionSettings,
    pub scheduler: SchedulerSettings,
    pub payload: PayloadSettings,
    pub providers: ProvidersSettings,
    pub http: HttpSettings,
    pub auth: AuthSettings,
    pub devices: DevicesSettings,
    pub shutdown: ShutdownSettings,
    pub log: LogSettings,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    /// Postgres URL (may hold a password); `sslmode=require` asks for TLS.
    pub url: Secret,
    /// Pooled connections for fan-out, outcome writes and the API.
    pub pool_size: usize,
    /// How long opening a connection may take, in ms (the TCP connect to each host; for a
    /// pooled connection, TLS and login included). The URL's `connect_timeout` wins.
    pub connect_timeout_ms: u64,
    /// Server-side `statement_timeout`, in ms, sent as `options=-c statement_timeout=…` (unless
    /// the URL's `options` set one). Also enforced by the relay: a store call that has no answer
    /// after this plus 2 s closes its connection, so a blackholed connection fails in seconds.
    pub statement_timeout_ms: u64,
    /// TCP keepalives start after this much idle time, in ms (then probe every half of it, 3
    /// times): a dead host is noticed even on an idle connection such as the LISTEN one.
    pub keepalive_idle_ms: u64,
    /// `TCP_USER_TIMEOUT`, in ms: sent data (or keepalive probes) unacknowledged this long
    /// closes the connection.
    pub tcp_user_timeout_ms: u64,
    /// How long a store call waits for a free pooled connection, in ms.
    pub pool_wait_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSettings {
    /// `redis://` or `rediss://` URL (may hold a password).
    pub url: Secret,
    /// Seed nodes of a Redis Cluster (`redis://` or `rediss://` URLs); when set, the relay
    /// talks to the cluster and `url` is not used. From the environment: comma-separated.
    #[serde(default)]
    pub cluster_urls: Vec<Secret>,
    /// First segment of every key.
    pub key_prefix: String,
    /// Number of stream shards.
    pub shards: u16,
    /// Dead letters kept per shard's DLQ stream (approximately; Postgres keeps every failure).
    pub dlq_max_len: usize,
    /// How long connecting to Redis may take, in ms.
    pub connect_timeout_ms: u64,
    /// How long a command waits for its reply, in ms (blocking reads: their block time plus
    /// this). A reply that times out replaces the shared connection: a blackholed one would
    /// otherwise time out every command for ever.
    pub response_timeout_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerSettings {
    /// Deliveries in flight per process.
    pub concurrency: usize,
    /// SenderActors (one thread each) per enabled provider.
    pub senders_per_provider: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerSettings {
    /// Notifications claimed per fan-out transaction.
    pub batch_size: i64,
    /// Fan-out transactions in flight at once (each on its own pooled connection).
    pub drainers: usize,
    /// Period of the sweep, in ms.
    pub sweep_interval_ms: u64,
    /// A queued/retrying target without progress for this many ms is re-enqueued.
    pub stale_after_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrySettings {
    /// Attempts per target before it is dead-lettered.
    pub max_attempts: u32,
    /// First backoff ceiling, in ms.
    pub base_ms: u64,
    /// Largest backoff, in ms (also the clamp for `Retry-After`).
    pub max_ms: u64,
    /// A target not delivered this long (ms) after it was first queued fails, however many
    /// attempts it has left: deferrals (an open circuit, revoked credentials) end too.
    pub max_age_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimSettings {
    /// Period of the XAUTOCLAIM pass, in ms.
    pub interval_ms: u64,
    /// Idle time after which a pending entry is taken over, in ms.
    pub min_idle_ms: u64,
    /// An entry handed out this many times without an outcome is dead-lettered (poison).
    pub max_deliveries: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreakerSettings {
    /// Failed requests in a row (outage or refused credentials) that open a provider's circuit.
    pub failures: u32,
    /// First open interval, in ms; it grows (jittered) while probes keep failing…
    pub open_ms: u64,
    /// …up to this, in ms.
    pub max_open_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionSettings {
    /// Final notifications (and their delivery / notification_failed rows) older than this many
    /// days are deleted; 0 keeps everything.
    pub final_after_days: u32,
    /// How often the retention job runs, in ms.
    pub interval_ms: u64,
    /// Notifications deleted per statement.
    pub batch_size: i64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PayloadSettings {
    /// Largest `notification.payload` sent, in bytes as Postgres prints the jsonb; a larger one
    /// fails its notification with a `last_error` naming the limit.
    pub max_bytes: usize,
}

/// Every provider's own limit fits under the smallest accepted `payload.max_bytes`.
pub const MIN_PAYLOAD_BYTES: u64 = 4 * 1024;
/// A payload is copied into every target's stream entry: beyond this, Redis and the fan-out
/// pay for what no provider accepts.
pub const MAX_PAYLOAD_BYTES: u64 = 1024 * 1024;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchedulerSettings {
    /// Period of the move of due retries back to the stream, in ms.
    pub delay_poll_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    /// API listen address.
    pub addr: String,
}

/// `[devices]`: what one user may register.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DevicesSettings {
    /// Active devices one user may have; registering one more is a 422.
    pub max_per_user: u32,
}

/// The range `devices.max_per_user` must be in.
pub const MAX_PER_USER_RANGE: std::ops::RangeInclusive<u32> = 1..=10_000;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShutdownSettings {
    /// How long SIGTERM waits for in-flight work, in ms.
    pub grace_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    /// trace | debug | info | warning | error | critical
    pub level: String,
}

impl Settings {
    /// Loads the layers. `env` is the process environment (a parameter so tests can pass
    /// their own without touching the process's).
    pub fn load(file: Option<&Path>, env: &HashMap<String, String>) -> Result<Settings, ConfigError> {
        let mut builder = Config::builder().add_source(File::from_str(DEFAULTS, FileFormat::Toml));
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError::Load(format!("config file {} does not exist", path.display())));
            }
            builder = builder.add_source(File::from(path).required(true));
        }
        // The conventional variables sit below the NOTIFY__ ones, which are more specific.
        for (var, key) in
            [("DATABASE_URL", "database.url"), ("REDIS_URL", "redis.url"), ("WORKER_CONCURRENCY", "worker.concurrency")]
        {
            let specific = format!("NOTIFY__{}", key.replace('.', "__").to_uppercase());
            if let (Some(value), false) = (env.get(var), env.contains_key(&specific)) {
                builder = builder.set_override(key, value.as_str()).map_err(|e| ConfigError::Load(e.to_string()))?;
            }
        }
        let notify_vars: config::Map<String, String> =
            env.iter().filter(|(k, _)| k.starts_with("NOTIFY__")).map(|(k, v)| (k.clone(), v.clone())).collect();
        builder = builder.add_source(
            Environment::with_prefix("NOTIFY")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
                .list_separator(",")
                .with_list_parse_key("redis.cluster_urls")
                .source(Some(notify_vars)),
        );
        let settings: Settings =
            builder.build().and_then(Config::try_deserialize).map_err(|e| ConfigError::Load(e.to_string()))?;
        settings.validate()?;
        Ok(settings)
    }

    /// Checks every value once; each error names its key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.pg_config()?;
        if self.database.pool_size == 0 {
            return Err(invalid("database.pool_size", "must be at least 1"));
        }
        // Upper bounds keep "dead in seconds" true; a typo of minutes would undo it.
        within("database.connect_timeout_ms", self.database.connect_timeout_ms, 100..=MINUTE_MS)?;
        within("database.statement_timeout_ms", self.database.statement_timeout_ms, SECOND_MS..=HOUR_MS)?;
        within("database.keepalive_idle_ms", self.database.keepalive_idle_ms, SECOND_MS..=2 * HOUR_MS)?;
        within("database.tcp_user_timeout_ms", self.database.tcp_user_timeout_ms, SECOND_MS..=10 * MINUTE_MS)?;
        within("database.pool_wait_ms", self.database.pool_wait_ms, 100..=10 * MINUTE_MS)?;
        within("redis.connect_timeout_ms", self.redis.connect_timeout_ms, 100..=MINUTE_MS)?;
        within("redis.response_timeout_ms", self.redis.response_timeout_ms, 100..=5 * MINUTE_MS)?;
        let url = self.redis.url.expose();
        if !(url.starts_with("redis://") || url.starts_with("rediss://") || url.starts_with("unix://")) {
            return Err(invalid("redis.url", "must start with redis://, rediss:// or unix://"));
        }
        redis::Client::open(url).map_err(|_| invalid("redis.url", "is not a valid Redis URL"))?;
        for (i, seed) in self.redis.cluster_urls.iter().enumerate() {
            let seed = seed.expose();
            if !(seed.starts_with("redis://") || seed.starts_with("rediss://")) {
                return Err(invalid("redis.cluster_urls", format!("entry {i} must start with redis:// or rediss://")));
            }
            redis::Client::open(seed)
                .map_err(|_| invalid("redis.cluster_urls", format!("entry {i} is not a valid Redis URL")))?;
        }
        let prefix = &self.redis.key_prefix;
        if prefix.is_empty() || prefix.chars().any(|c| c.is_whitespace() || c == '{' || c == '}') {
            return Err(invalid("redis.key_prefix", "must be non-empty, without spaces or braces"));
        }
        if !(1..=1024).contains(&self.redis.shards) {
            return Err(invalid("redis.shards", format!("must be between 1 and 1024, got {}", self.redis.shards)));
        }
        if self.redis.dlq_max_len < 100 {
            return Err(invalid("redis.dlq_max_len", "must be at least 100"));
        }
        if !(1..=100_000).contains(&self.worker.concurrency) {
            return Err(invalid(
                "worker.concurrency",
                format!("must be between 1 and 100000, got {}", self.worker.concurrency),
            ));
        }
        if !(1..=64).contains(&self.worker.senders_per_provider) {
            return Err(invalid("worker.senders_per_provider", "must be between 1 and 64"));
        }
        if !(1..=10_000).contains(&self.listener.batch_size) {
            return Err(invalid("listener.batch_size", "must be between 1 and 10000"));
        }
        if !(1..=16).contains(&self.listener.drainers) {
            return Err(invalid("listener.drainers", "must be between 1 and 16"));
        }
        if self.listener.drainers >= self.database.pool_size {
            let pool = self.database.pool_size;
            return Err(invalid(
                "listener.drainers",
                format!("must be below database.pool_size ({pool}) to leave connections for the writer and the API"),
            ));
        }
        within("listener.sweep_interval_ms", self.listener.sweep_interval_ms, 100..=DAY_MS)?;
        within("listener.stale_after_ms", self.listener.stale_after_ms, SECOND_MS..=7 * DAY_MS)?;
        within("retry.max_attempts", u64::from(self.retry.max_attempts), 1..=100)?;
        within("retry.base_ms", self.retry.base_ms, 1..=DAY_MS)?;
        within("retry.max_ms", self.retry.max_ms, 1..=7 * DAY_MS)?;
        if self.retry.max_ms < self.retry.base_ms {
            return Err(invalid("retry.max_ms", format!("must be at least retry.base_ms ({})", self.retry.base_ms)));
        }
        within("retry.max_age_ms", self.retry.max_age_ms, 60 * SECOND_MS..=30 * DAY_MS)?;
        if self.claim.max_deliveries < 2 {
            return Err(invalid("claim.max_deliveries", "must be at least 2 (the first read counts as one)"));
        }
        within("claim.max_deliveries", u64::from(self.claim.max_deliveries), 2..=1000)?;
        within("claim.interval_ms", self.claim.interval_ms, 10..=HOUR_MS)?;
        within("claim.min_idle_ms", self.claim.min_idle_ms, 1..=DAY_MS)?;
        within("circuit.failures", u64::from(self.circuit.failures), 1..=100_000)?;
        within("circuit.open_ms", self.circuit.open_ms, 1..=DAY_MS)?;
        within("circuit.max_open_ms", self.circuit.max_open_ms, 1..=DAY_MS)?;
        if self.circuit.max_open_ms < self.circuit.open_ms {
            return Err(invalid(
                "circuit.max_open_ms",
                format!("must be at least circuit.open_ms ({})", self.circuit.open_ms),
            ));
        }
        // 0 keeps everything; 100 years is the most that still reads as a retention period (a
        // value near u32::MAX once wrapped to -1 day and deleted every final notification).
        within("retention.final_after_days", u64::from(self.retention.final_after_days), 0..=36_500)?;
        within("retention.interval_ms", self.retention.interval_ms, 100..=7 * DAY_MS)?;
        if !(1..=100_000).contains(&self.retention.batch_size) {
            return Err(invalid("retention.batch_size", "must be between 1 and 100000"));
        }
        within("scheduler.delay_poll_ms", self.scheduler.delay_poll_ms, 10..=60 * SECOND_MS)?;
        within("shutdown.grace_ms", self.shutdown.grace_ms, 0..=HOUR_MS)?;
        within("payload.max_bytes", self.payload.max_bytes as u64, MIN_PAYLOAD_BYTES..=MAX_PAYLOAD_BYTES)?;
        self.providers.validate()?;
        // A send still running must never be claimed and sent a second time in parallel.
        if let Some(longest) = self.providers.longest_timeout_ms() {
            if self.claim.min_idle_ms <= longest {
                return Err(invalid(
                    "claim.min_idle_ms",
                    format!(
                        "must exceed the longest provider send ({longest} ms: flush_after_ms + timeout_ms, the \
                         timeout twice for email), got {}",
                        self.claim.min_idle_ms
                    ),
                ));
            }
        }
        // The sweep must not re-enqueue what the claim actor is about to recover: that would put a
        // second copy of a pending entry in the stream.
        if self.listener.stale_after_ms <= self.claim.min_idle_ms {
            return Err(invalid(
                "listener.stale_after_ms",
                format!(
                    "must exceed claim.min_idle_ms ({}), got {}",
                    self.claim.min_idle_ms, self.listener.stale_after_ms
                ),
            ));
        }
        self.http_addr()?;
        self.log_level()?;
        self.validate_auth()?;
        self.validate_devices()?;
        Ok(())
    }

    fn validate_devices(&self) -> Result<(), ConfigError> {
        let max = self.devices.max_per_user;
        if !MAX_PER_USER_RANGE.contains(&max) {
            let (lo, hi) = (MAX_PER_USER_RANGE.start(), MAX_PER_USER_RANGE.end());
            return Err(invalid("devices.max_per_user", format!("must be between {lo} and {hi}, got {max}")));
        }
        Ok(())
    }

    fn validate_auth(&self) -> Result<(), ConfigError> {
        let auth = &self.auth;
        if let Some(url) = &auth.jwks_url {
            if !(url.starts_with("https://") || url.starts_with("http://")) {
                return Err(invalid("auth.jwks_url", format!("must be an http(s) URL, got '{url}'")));
            }
            // Keys fetched in clear can be replaced by anyone on the path: then any token verifies.
            if url.starts_with("http://") && !auth.allow_insecure_jwks {
                return Err(invalid(
                    "auth.jwks_url",
                    "is http://: keys fetched in clear can be forged on the way; use https:// \
                     (or set auth.allow_insecure_jwks = true for a loopback test JWKS)",
                ));
            }
        }
        if auth.jwt_secret.as_ref().is_some_and(|s| s.expose().len() < 16) {
            return Err(invalid("auth.jwt_secret", "must be at least 16 characters"));
        }
        if auth.admin_token.as_ref().is_some_and(|s| s.expose().len() < 16) {
            return Err(invalid("auth.admin_token", "must be at least 16 characters"));
        }
        if auth.leeway_secs > 300 {
            return Err(invalid("auth.leeway_secs", "must be at most 300"));
        }
        crate::auth::Authenticator::new(auth).map(|_| ()).map_err(|(key, message)| invalid(key, message))
    }

    /// The Redis the relay talks to: the cluster when `redis.cluster_urls` is set.
    pub fn redis_endpoint(&self) -> notify_relay_engine::relay::conn::Endpoint {
        let seeds: Vec<String> = self.redis.cluster_urls.iter().map(|s| s.expose().to_string()).collect();
        notify_relay_engine::relay::conn::Endpoint::new(self.redis.url.expose(), &seeds)
    }

    /// The Postgres config of the pool and the LISTEN connection: [`Settings::migrations_pg_config`]
    /// plus the server-side `statement_timeout`, appended to the URL's `options` unless they set
    /// one already.
    pub fn pg_config(&self) -> Result<tokio_postgres::Config, ConfigError> {
        let mut config = self.migrations_pg_config()?;
        let timeout = format!("-c statement_timeout={}", self.database.statement_timeout_ms);
        let options = match config.get_options().map(str::trim) {
            Some(o) if o.contains("statement_timeout") || o.contains("statement-timeout") => None,
            Some(o) if !o.is_empty() => Some(format!("{o} {timeout}")),
            _ => Some(timeout),
        };
        if let Some(options) = options {
            config.options(options);
        }
        Ok(config)
    }

    /// The URL, then where it does not say otherwise: the connect timeout, TCP keepalives and
    /// `tcp_user_timeout`, so that a dead host is noticed in seconds. No statement timeout:
    /// migrations may build an index or wait for another replica's migration lock for longer.
    pub fn migrations_pg_config(&self) -> Result<tokio_postgres::Config, ConfigError> {
        // The parser's message could quote the URL (and its password): say only what is wrong.
        let mut config: tokio_postgres::Config =
            self.database.url.expose().parse().map_err(|_| {
                invalid("database.url", "is not a valid Postgres URL (postgres://user:pass@host:port/db)")
            })?;
        notify_relay_engine::tls::only_when_required(&mut config);
        let db = &self.database;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_millis(db.connect_timeout_ms));
        }
        // `keepalives=0` in the URL turns them off; its other keepalive parameters win.
        if config.get_keepalives() {
            if config.get_keepalives_idle() == LIBPQ_KEEPALIVES_IDLE {
                config.keepalives_idle(Duration::from_millis(db.keepalive_idle_ms));
            }
            if config.get_keepalives_interval().is_none() {
                config.keepalives_interval(Duration::from_millis((db.keepalive_idle_ms / 2).max(SECOND_MS)));
            }
            if config.get_keepalives_retries().is_none() {
                config.keepalives_retries(KEEPALIVE_PROBES);
            }
        }
        if config.get_tcp_user_timeout().is_none() {
            config.tcp_user_timeout(Duration::from_millis(db.tcp_user_timeout_ms));
        }
        if config.get_application_name().is_none() {
            config.application_name("notify-relay");
        }
        Ok(config)
    }

    /// How the store's pool lends connections.
    pub fn pool_settings(&self) -> Result<notify_relay_engine::store::pool::PoolSettings, ConfigError> {
        let db = &self.database;
        // Each host of a multi-host URL gets its own connect timeout.
        let hosts = self.migrations_pg_config()?.get_hosts().len().max(1) as u32;
        Ok(notify_relay_engine::store::pool::PoolSettings {
            size: db.pool_size,
            wait: Duration::from_millis(db.pool_wait_ms),
            connect: Duration::from_millis(db.connect_timeout_ms) * hosts,
            statement_timeout: Duration::from_millis(db.statement_timeout_ms),
        })
    }

    /// The Redis connect and reply timeouts.
    pub fn redis_timeouts(&self) -> notify_relay_engine::relay::conn::Timeouts {
        notify_relay_engine::relay::conn::Timeouts {
            connect: Duration::from_millis(self.redis.connect_timeout_ms),
            response: Duration::from_millis(self.redis.response_timeout_ms),
        }
    }

    pub fn http_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.http.addr.parse().map_err(|_| invalid("http.addr", format!("must be host:port, got '{}'", self.http.addr)))
    }

    pub fn log_level(&self) -> Result<slog::Level, ConfigError> {
        self.log.level.parse().map_err(|_| invalid("log.level", format!("unknown level '{}'", self.log.level)))
    }

    pub fn grace(&self) -> Duration {
        Duration::from_millis(self.shutdown.grace_ms)
    }

    /// What the engine needs, for the given roles and consumer name. Reads the provider
    /// credential files (again: they were checked by `validate`, but may have been rotated).
    pub fn engine(&self, roles: Roles, consumer: String) -> Result<EngineSettings, ConfigError> {
        let providers = self.providers.engine()?;
        Ok(EngineSettings {
            roles,
            concurrency: self.worker.concurrency,
            consumer,
            listener_batch: self.listener.batch_size,
            listener_drainers: self.listener.drainers,
            sweep_interval: Duration::from_millis(self.listener.sweep_interval_ms),
            stale_after: Duration::from_millis(self.listener.stale_after_ms),
            retry: RetryPolicy {
                max_attempts: self.retry.max_attempts,
                base: Duration::from_millis(self.retry.base_ms),
                max: Duration::from_millis(self.retry.max_ms),
                max_age: Duration::from_millis(self.retry.max_age_ms),
            },
            circuit: notify_relay_engine::CircuitSettings {
                failures: self.circuit.failures,
                open: Duration::from_millis(self.circuit.open_ms),
                max_open: Duration::from_millis(self.circuit.max_open_ms),
            },
            claim_interval: Duration::from_millis(self.claim.interval_ms),
            claim_min_idle: Duration::from_millis(self.claim.min_idle_ms),
            claim_max_deliveries: self.claim.max_deliveries,
            retention: notify_relay_engine::RetentionPolicy {
                final_after_days: self.retention.final_after_days,
                interval: Duration::from_millis(self.retention.interval_ms),
                batch: self.retention.batch_size,
            },
            delay_poll_interval: Duration::from_millis(self.scheduler.delay_poll_ms),
            expo: providers.expo,
            fcm: providers.fcm,
            apns: providers.apns,
            email: providers.email,
            senders_per_provider: self.worker.senders_per_provider,
            input_limits: notify_relay_engine::settings::InputLimits {
                payload_max_bytes: self.payload.max_bytes,
                devices_per_user: self.devices.max_per_user as usize,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn error(pairs: &[(&str, &str)]) -> String {
        Settings::load(None, &env(pairs)).expect_err("should be rejected").to_string()
    }

    #[test]
    fn the_shipped_defaults_are_valid() {
        let s = Settings::load(None, &HashMap::new()).unwrap();
        assert_eq!(s.redis.key_prefix, "notify");
        assert_eq!(s.redis.shards, 1);
    }

    #[test]
    fn notify_variables_override_the_conventional_ones() {
        let s = Settings::load(
            None,
            &env(&[
                ("WORKER_CONCURRENCY", "7"),
                ("REDIS_URL", "redis://10.0.0.1:6379"),
                ("NOTIFY__REDIS__URL", "redis://h:1"),
            ]),
        )
        .unwrap();
        assert_eq!(s.worker.concurrency, 7);
        assert_eq!(s.redis.url.expose(), "redis://h:1");
        let s = Settings::load(None, &env(&[("NOTIFY__REDIS__KEY_PREFIX", "staging")])).unwrap();
        assert_eq!(s.redis.key_prefix, "staging");
    }

    #[test]
    fn values_past_their_upper_bound_are_refused_before_they_can_wrap() {
        let huge = u32::MAX.to_string();
        assert_eq!(
            error(&[("NOTIFY__RETENTION__FINAL_AFTER_DAYS", &huge)]),
            "invalid configuration: `retention.final_after_days` must be between 0 and 36500, got 4294967295"
        );
        assert!(Settings::load(None, &env(&[("NOTIFY__RETENTION__FINAL_AFTER_DAYS", "0")])).is_ok());
        assert!(error(&[("NOTIFY__RETRY__MAX_ATTEMPTS", "1000")])
            .contains("`retry.max_attempts` must be between 1 and 100"));
        assert!(error(&[("NOTIFY__CIRCUIT__OPEN_MS", "18446744073709551615")]).contains("`circuit.open_ms`"));
        assert!(error(&[("NOTIFY__SHUTDOWN__GRACE_MS", "999999999999")]).contains("`shutdown.grace_ms`"));
        assert!(
            error(&[("NOTIFY__PROVIDERS__EXPO__TIMEOUT_MS", "99999999999")]).contains("`providers.expo.timeout_ms`")
        );
    }

    #[test]
    fn payload_max_bytes_has_a_default_and_a_range() {
        let s = Settings::load(None, &HashMap::new()).unwrap();
        assert_eq!(s.payload.max_bytes, 16 * 1024);
        assert_eq!(
            s.engine(notify_relay_engine::settings::Roles::ALL, "c".into()).unwrap().input_limits.payload_max_bytes,
            16 * 1024
        );
        let s = Settings::load(None, &env(&[("NOTIFY__DEVICES__MAX_PER_USER", "7")])).unwrap();
        assert_eq!(
            s.engine(notify_relay_engine::settings::Roles::ALL, "c".into()).unwrap().input_limits.devices_per_user,
            7
        );
        assert!(error(&[("NOTIFY__PAYLOAD__MAX_BYTES", "100")])
            .contains("`payload.max_bytes` must be between 4096 and 1048576"));
        assert!(error(&[("NOTIFY__PAYLOAD__MAX_BYTES", "2000000")]).contains("`payload.max_bytes`"));
    }

    #[test]
    fn bad_values_name_their_key() {
        assert!(error(&[("NOTIFY__RETRY__BASE_MS", "0")]).contains("`retry.base_ms`"));
        assert!(error(&[("NOTIFY__REDIS__SHARDS", "0")]).contains("`redis.shards`"));
        assert!(error(&[("WORKER_CONCURRENCY", "0")]).contains("`worker.concurrency`"));
        assert!(error(&[("NOTIFY__HTTP__ADDR", "nowhere")]).contains("`http.addr`"));
        assert!(error(&[("NOTIFY__LOG__LEVEL", "loud")]).contains("`log.level`"));
        assert!(error(&[("NOTIFY__PROVIDERS__EXPO__BASE_URL", "exp.host")]).contains("`providers.expo.base_url`"));
        assert!(error(&[("NOTIFY__REDIS__URL", "http://x")]).contains("`redis.url`"));
    }

    #[test]
    fn values_of_the_wrong_type_name_their_key() {
        let err = error(&[("WORKER_CONCURRENCY", "lots")]);
        assert!(err.contains("worker.concurrency"), "{err}");
        let err = error(&[("NOTIFY__RETRY__MAX_ATTEMPTS", "-1")]);
        assert!(err.contains("retry.max_attempts"), "{err}");
    }

    #[test]
    fn cluster_seeds_come_comma_separated_from_the_environment() {
        let s =
            Settings::load(None, &env(&[("NOTIFY__REDIS__CLUSTER_URLS", "redis://a:7000,redis://b:7001")])).unwrap();
        let seeds: Vec<&str> = s.redis.cluster_urls.iter().map(Secret::expose).collect();
        assert_eq!(seeds, ["redis://a:7000", "redis://b:7001"]);
        assert!(
            matches!(s.redis_endpoint(), notify_relay_engine::relay::conn::Endpoint::Cluster(ref v) if v.len() == 2)
        );
        let err = error(&[("NOTIFY__REDIS__CLUSTER_URLS", "redis://a:7000,http://b")]);
        assert!(err.contains("`redis.cluster_urls` entry 1 must start with"), "{err}");
        let single = Settings::load(None, &env(&[])).unwrap();
        assert!(matches!(single.redis_endpoint(), notify_relay_engine::relay::conn::Endpoint::Single(_)));
    }

    #[test]
    fn a_tls_redis_url_is_accepted() {
        let s = Settings::load(None, &env(&[("REDIS_URL", "rediss://user:pw@redis.example.com:6380")])).unwrap();
        assert!(s.redis.url.expose().starts_with("rediss://"));
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err = error(&[("NOTIFY__RETRY__MAX_ATEMPTS", "3")]);
        assert!(err.contains("max_atempts"), "{err}");
    }

    #[test]
    fn claim_min_idle_must_exceed_every_provider_timeout() {
        let err = error(&[("NOTIFY__CLAIM__MIN_IDLE_MS", "5000"), ("NOTIFY__PROVIDERS__EXPO__TIMEOUT_MS", "10000")]);
        // The default flush_after_ms (5) counts too: a delivery may wait that long before its send.
        assert!(err.contains("`claim.min_idle_ms` must exceed the longest provider send (10005 ms"), "{err}");
        let err = error(&[
            ("NOTIFY__CLAIM__MIN_IDLE_MS", "12000"),
            ("NOTIFY__PROVIDERS__EXPO__TIMEOUT_MS", "10000"),
            ("NOTIFY__PROVIDERS__EXPO__FLUSH_AFTER_MS", "8000"),
        ]);
        assert!(err.contains("longest provider send (18000 ms: flush_after_ms + timeout_ms"), "{err}");
    }

    #[test]
    fn retry_max_age_defaults_to_a_day_and_is_range_checked() {
        let settings = Settings::load(None, &env(&[])).unwrap();
        assert_eq!(settings.retry.max_age_ms, 86_400_000);
        let err = error(&[("NOTIFY__RETRY__MAX_AGE_MS", "1000")]);
        assert!(err.contains("`retry.max_age_ms` must be between 60000 and 2592000000, got 1000"), "{err}");
        let err = error(&[("NOTIFY__RETRY__MAX_AGE_MS", "18446744073709551615")]);
        assert!(err.contains("`retry.max_age_ms` must be between"), "{err}");
    }

    #[test]
    fn bad_auth_settings_name_their_key() {
        assert!(
            error(&[("NOTIFY__AUTH__JWKS_FILE", "/nonexistent/jwks.json")]).contains("`auth.jwks_file` cannot read")
        );
        let garbage = std::env::temp_dir().join(format!("jwks-{}.json", uuid::Uuid::new_v4().simple()));
        std::fs::write(&garbage, "{\"keys\": []}").unwrap();
        let err = error(&[("NOTIFY__AUTH__JWKS_FILE", garbage.to_str().unwrap())]);
        let _ = std::fs::remove_file(&garbage);
        assert!(err.contains("`auth.jwks_file` holds no ES256 or RS256 signing key"), "{err}");
        let both =
            error(&[("NOTIFY__AUTH__JWKS_FILE", "/x"), ("NOTIFY__AUTH__JWKS_URL", "https://p.supabase.co/jwks")]);
        assert!(both.contains("`auth.jwks_url` and auth.jwks_file are both set"), "{both}");
        assert!(error(&[("NOTIFY__AUTH__JWKS_URL", "ftp://x")]).contains("`auth.jwks_url` must be an http(s) URL"));
        assert!(error(&[("NOTIFY__AUTH__JWT_SECRET", "short")]).contains("`auth.jwt_secret` must be at least 16"));
    }

    #[test]
    fn an_email_send_counts_twice_its_timeout() {
        let err = error(&[
            ("NOTIFY__PROVIDERS__EMAIL__ENABLED", "true"),
            ("NOTIFY__PROVIDERS__EMAIL__TIMEOUT_MS", "40000"),
            ("NOTIFY__CLAIM__MIN_IDLE_MS", "60000"),
        ]);
        assert!(err.contains("longest provider send (80005 ms"), "{err}");
    }

    #[test]
    fn the_sweep_lease_must_outlast_the_claim_idle_time() {
        let err = error(&[("NOTIFY__LISTENER__STALE_AFTER_MS", "60000"), ("NOTIFY__CLAIM__MIN_IDLE_MS", "60000")]);
        assert!(err.contains("`listener.stale_after_ms` must exceed claim.min_idle_ms (60000)"), "{err}");
    }

    #[test]
    fn a_bad_database_url_is_named_without_echoing_it() {
        let err = error(&[("DATABASE_URL", "postgres://u:hunter2@h:notaport/db")]);
        assert!(err.contains("`database.url`"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn secrets_do_not_show_in_debug_output() {
        let s = Settings::load(
            None,
            &env(&[
                ("NOTIFY__AUTH__ADMIN_TOKEN", "s3cret-admin-token-value"),
                ("DATABASE_URL", "postgres://u:pw@h/db"),
            ]),
        )
        .unwrap();
        let printed = format!("{s:?}");
        assert!(!printed.contains("s3cret") && !printed.contains(":pw@"), "{printed}");
    }

    /// Every credential the settings can hold, with every provider enabled: neither the loaded
    /// settings nor what they hand the engine print any of them.
    #[test]
    fn no_credential_shows_in_the_debug_output_of_the_settings_or_the_engine_settings() {
        let fcm_key = include_str!("../../emulators/keys/fcm-emulator-key.pem");
        let apns_key = rcgen::KeyPair::generate().unwrap().serialize_pem();
        let fcm_json = serde_json::json!({
            "project_id": "p", "client_email": "relay@p.iam.gserviceaccount.com", "private_key": fcm_key,
        })
        .to_string();
        // A line from the middle of each PEM: base64 of the key itself.
        let fcm_secret = fcm_key.lines().nth(3).unwrap().to_string();
        let apns_secret = apns_key.lines().nth(1).unwrap().to_string();
        let s = Settings::load(
            None,
            &env(&[
                ("DATABASE_URL", "postgres://u:pg-password-1@h/db"),
                ("REDIS_URL", "redis://:redis-password-2@h:6379"),
                ("NOTIFY__REDIS__CLUSTER_URLS", "redis://:cluster-password-3@a:7000"),
                ("NOTIFY__AUTH__ADMIN_TOKEN", "admin-token-value-4"),
                ("NOTIFY__AUTH__JWT_SECRET", "jwt-secret-value-5"),
                ("NOTIFY__PROVIDERS__EXPO__ACCESS_TOKEN", "expo-access-token-6"),
                ("NOTIFY__PROVIDERS__FCM__ENABLED", "true"),
                ("NOTIFY__PROVIDERS__FCM__SERVICE_ACCOUNT_JSON", &fcm_json),
                ("NOTIFY__PROVIDERS__APNS__ENABLED", "true"),
                ("NOTIFY__PROVIDERS__APNS__KEY", &apns_key),
                ("NOTIFY__PROVIDERS__EMAIL__ENABLED", "true"),
                ("NOTIFY__PROVIDERS__EMAIL__SMTP_URL", "smtps://user:smtp-password-7@smtp.example.com:465"),
            ]),
        )
        .unwrap();
        let engine = s.engine(notify_relay_engine::settings::Roles::ALL, "c".into()).unwrap();
        assert!(engine.expo.as_ref().and_then(|e| e.access_token.as_deref()) == Some("expo-access-token-6"));
        let printed = [format!("{s:?}"), format!("{engine:?}"), format!("{:?}", s.providers.engine().unwrap())];
        for secret in [
            "pg-password-1",
            "redis-password-2",
            "cluster-password-3",
            "admin-token-value-4",
            "jwt-secret-value-5",
            "expo-access-token-6",
            "smtp-password-7",
            &fcm_secret,
            &apns_secret,
        ] {
            for p in &printed {
                assert!(!p.contains(secret), "{secret} printed in {p}");
            }
        }
    }

    #[test]
    fn an_http_jwks_url_is_refused_unless_allow_insecure_jwks_is_set() {
        let err = error(&[("NOTIFY__AUTH__JWKS_URL", "http://p.supabase.co/auth/v1/.well-known/jwks.json")]);
        assert!(err.contains("`auth.jwks_url` is http://"), "{err}");
        assert!(err.contains("auth.allow_insecure_jwks"), "{err}");
        let s = Settings::load(
            None,
            &env(&[
                ("NOTIFY__AUTH__JWKS_URL", "http://127.0.0.1:9/jwks.json"),
                ("NOTIFY__AUTH__ALLOW_INSECURE_JWKS", "true"),
            ]),
        )
        .unwrap();
        assert!(s.auth.allow_insecure_jwks);
        let s = Settings::load(None, &env(&[("NOTIFY__AUTH__JWKS_URL", "https://p.supabase.co/jwks")])).unwrap();
        assert!(!s.auth.allow_insecure_jwks, "off by default");
    }

    #[test]
    fn user_tokens_without_issuer_or_audience_get_a_warning() {
        let warning =
            |pairs: &[(&str, &str)]| Settings::load(None, &env(pairs)).unwrap().auth.unchecked_claims_warning();
        assert_eq!(warning(&[]), None, "no user tokens at all");
        let secret = ("NOTIFY__AUTH__JWT_SECRET", "a-secret-of-16-chars");
        assert!(warning(&[secret]).unwrap().contains("auth.issuer"));
        assert_eq!(warning(&[secret, ("NOTIFY__AUTH__ISSUER", "https://p.supabase.co/auth/v1")]), None);
        assert_eq!(warning(&[secret, ("NOTIFY__AUTH__AUDIENCE", "authenticated")]), None);
    }

    #[test]
    fn devices_max_per_user_defaults_to_100_and_is_range_checked() {
        assert_eq!(Settings::load(None, &HashMap::new()).unwrap().devices.max_per_user, 100);
        for bad in ["0", "10001"] {
            let err = error(&[("NOTIFY__DEVICES__MAX_PER_USER", bad)]);
            assert!(err.contains("`devices.max_per_user` must be between 1 and 10000"), "{err}");
        }
        let err = error(&[("NOTIFY__DEVICES__MAX_PER_USER", "-1")]);
        assert!(err.contains("devices.max_per_user"), "{err}");
        let s = Settings::load(None, &env(&[("NOTIFY__DEVICES__MAX_PER_USER", "10000")])).unwrap();
        assert_eq!(s.devices.max_per_user, 10_000);
    }

    #[test]
    fn connection_timeouts_have_defaults_and_ranges_that_name_their_key() {
        let s = Settings::load(None, &HashMap::new()).unwrap();
        let db = &s.database;
        let shipped = (db.connect_timeout_ms, db.statement_timeout_ms, db.keepalive_idle_ms);
        assert_eq!(shipped, (5000, 30_000, 10_000));
        assert_eq!((db.tcp_user_timeout_ms, db.pool_wait_ms), (20_000, 10_000));
        assert_eq!((s.redis.connect_timeout_ms, s.redis.response_timeout_ms), (5000, 5000));
        for (key, var, low, high) in [
            ("database.connect_timeout_ms", "NOTIFY__DATABASE__CONNECT_TIMEOUT_MS", "99", "60001"),
            ("database.statement_timeout_ms", "NOTIFY__DATABASE__STATEMENT_TIMEOUT_MS", "999", "3600001"),
            ("database.keepalive_idle_ms", "NOTIFY__DATABASE__KEEPALIVE_IDLE_MS", "999", "7200001"),
            ("database.tcp_user_timeout_ms", "NOTIFY__DATABASE__TCP_USER_TIMEOUT_MS", "999", "600001"),
            ("database.pool_wait_ms", "NOTIFY__DATABASE__POOL_WAIT_MS", "99", "600001"),
            ("redis.connect_timeout_ms", "NOTIFY__REDIS__CONNECT_TIMEOUT_MS", "99", "60001"),
            ("redis.response_timeout_ms", "NOTIFY__REDIS__RESPONSE_TIMEOUT_MS", "99", "300001"),
        ] {
            for bad in [low, high, "0"] {
                let err = error(&[(var, bad)]);
                assert!(err.contains(&format!("`{key}` must be between")), "{var}={bad}: {err}");
            }
            let err = error(&[(var, "-1")]);
            assert!(err.contains(key.split('.').nth(1).unwrap()), "{var}=-1: {err}");
        }
        let edges = Settings::load(
            None,
            &env(&[
                ("NOTIFY__DATABASE__CONNECT_TIMEOUT_MS", "100"),
                ("NOTIFY__DATABASE__STATEMENT_TIMEOUT_MS", "3600000"),
                ("NOTIFY__DATABASE__KEEPALIVE_IDLE_MS", "1000"),
                ("NOTIFY__DATABASE__TCP_USER_TIMEOUT_MS", "600000"),
                ("NOTIFY__DATABASE__POOL_WAIT_MS", "100"),
                ("NOTIFY__REDIS__CONNECT_TIMEOUT_MS", "60000"),
                ("NOTIFY__REDIS__RESPONSE_TIMEOUT_MS", "100"),
            ]),
        )
        .unwrap();
        assert_eq!(edges.database.statement_timeout_ms, 3_600_000);
        assert_eq!(
            edges.redis_timeouts(),
            notify_relay_engine::relay::conn::Timeouts {
                connect: Duration::from_secs(60),
                response: Duration::from_millis(100)
            }
        );
    }

    #[test]
    fn postgres_connections_get_timeouts_keepalives_and_a_statement_timeout() {
        let s = Settings::load(None, &env(&[("NOTIFY__DATABASE__STATEMENT_TIMEOUT_MS", "2000")])).unwrap();
        let c = s.pg_config().unwrap();
        assert_eq!(c.get_connect_timeout(), Some(&Duration::from_secs(5)));
        assert!(c.get_keepalives());
        assert_eq!(c.get_keepalives_idle(), Duration::from_secs(10));
        assert_eq!(c.get_keepalives_interval(), Some(Duration::from_secs(5)));
        assert_eq!(c.get_keepalives_retries(), Some(3));
        assert_eq!(c.get_tcp_user_timeout(), Some(&Duration::from_secs(20)));
        assert_eq!(c.get_options(), Some("-c statement_timeout=2000"));
        // Migrations may build an index or wait on another replica's lock for longer.
        let m = s.migrations_pg_config().unwrap();
        assert_eq!(m.get_options(), None);
        assert_eq!(m.get_keepalives_idle(), Duration::from_secs(10));
        let pool = s.pool_settings().unwrap();
        assert_eq!(pool.statement_timeout, Duration::from_secs(2));
        assert_eq!(pool.call_limit(), Duration::from_secs(4), "statement timeout + the 2 s margin");
        assert_eq!((pool.size, pool.wait, pool.connect), (8, Duration::from_secs(10), Duration::from_secs(5)));
    }

    #[test]
    fn what_the_database_url_says_wins_over_the_timeout_keys() {
        let url = "postgres://u@h/db?connect_timeout=2&keepalives_idle=60&tcp_user_timeout=7\
                   &options=-c%20search_path%3Dapp";
        let c = Settings::load(None, &env(&[("DATABASE_URL", url)])).unwrap().pg_config().unwrap();
        assert_eq!(c.get_connect_timeout(), Some(&Duration::from_secs(2)));
        assert_eq!(c.get_keepalives_idle(), Duration::from_secs(60));
        assert_eq!(c.get_tcp_user_timeout(), Some(&Duration::from_secs(7)), "tokio-postgres reads seconds");
        assert_eq!(c.get_options(), Some("-c search_path=app -c statement_timeout=30000"), "appended");
        let own = "postgres://u@h/db?options=-c%20statement_timeout%3D5s&keepalives=0";
        let c = Settings::load(None, &env(&[("DATABASE_URL", own)])).unwrap().pg_config().unwrap();
        assert_eq!(c.get_options(), Some("-c statement_timeout=5s"), "the URL's own statement_timeout stays");
        assert!(!c.get_keepalives());
        assert_eq!(c.get_keepalives_interval(), None, "keepalives off: nothing to tune");
        // Every host of a failover list gets its own connect timeout.
        let hosts = Settings::load(None, &env(&[("DATABASE_URL", "postgres://u@a,b,c/db")])).unwrap();
        assert_eq!(hosts.pool_settings().unwrap().connect, Duration::from_secs(15));
    }

    #[test]
    fn a_missing_config_file_is_reported() {
        let err = Settings::load(Some(Path::new("/nonexistent/notify.toml")), &HashMap::new()).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/notify.toml"));
    }
}
