//! Configuration: `config/default.toml` (compiled in), then the file given by `--config` or
//! `NOTIFY_CONFIG`, then the conventional `DATABASE_URL`, `REDIS_URL` and `WORKER_CONCURRENCY`,
//! then `NOTIFY__<SECTION>__<KEY>` variables. Loaded and validated once at start-up: a bad value
//! stops the process with a message naming its key. Secrets are wrapped in [`Secret`] so they
//! cannot reach a log.
//!
//! One type per section, deserialized as it is (durations already [`Duration`]s, read from the
//! `_ms` keys), with no second copy to convert into:
//!
//! - the sections the engine runs with are the engine's own types (`[worker]`, `[listener]`,
//!   `[retry]`, `[claim]`, `[circuit]`, `[retention]`, `[scheduler]`, `[alerts]`, `[payload]`,
//!   `[providers.*]`; `notify_relay_engine::settings` says where each lives);
//! - the sections only the binary uses are in `sections` (`[database]`, `[redis]`, `[http]`,
//!   `[devices]`, `[topics]`, `[shutdown]`, `[log]`), and `[auth]` in `crate::auth`.
//!
//! Validation is split the same way: each section's `validate()` checks its own fields next to
//! them (provider credentials included: the files are read and the keys parsed), and
//! `cross_checks` holds the few rules that compare two sections, each with its reason.
//! [`Settings::validate`] runs them all; [`Settings::engine`] clones the engine's sections.

mod cross_checks;
mod sections;

pub use crate::auth::AuthSettings;
pub use notify_relay_engine::settings::Secret;
pub use sections::{
    DatabaseSettings, DevicesSettings, HttpSettings, LogFormat, LogSettings, RedisSettings, ShutdownSettings,
    TopicsSettings, MAX_PER_USER_RANGE, MAX_TOPICS_PER_USER_RANGE,
};

use config::{Config, Environment, File, FileFormat};
use notify_relay_engine::settings::{
    AlertSettings, CircuitSettings, ClaimSettings, EngineSettings, InputLimits, ListenerSettings, PayloadSettings,
    Providers, RetentionPolicy, RetryPolicy, Roles, SchedulerSettings, SettingsError, WorkerSettings, SECOND_MS,
};
use notify_relay_engine::tls::{PgTarget, PgUrlError};
use serde::{Deserialize, Serialize};
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

impl From<SettingsError> for ConfigError {
    fn from(e: SettingsError) -> Self {
        ConfigError::Invalid { key: e.key, message: e.message }
    }
}

fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key, message: message.into() }
}

/// tokio-postgres's (and libpq's) keepalive idle time when the URL sets none: 2 hours.
const LIBPQ_KEEPALIVES_IDLE: Duration = Duration::from_secs(2 * 3600);
/// Unanswered keepalive probes before the kernel gives up on a connection.
const KEEPALIVE_PROBES: u32 = 3;

/// Every section of the configuration. `Serialize` writes the keys back (secrets included):
/// the tests hand their typed settings to the binary that way.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub database: DatabaseSettings,
    pub redis: RedisSettings,
    pub worker: WorkerSettings,
    pub listener: ListenerSettings,
    pub retry: RetryPolicy,
    pub claim: ClaimSettings,
    pub circuit: CircuitSettings,
    pub retention: RetentionPolicy,
    pub scheduler: SchedulerSettings,
    pub alerts: AlertSettings,
    pub payload: PayloadSettings,
    pub providers: Providers,
    pub http: HttpSettings,
    pub auth: AuthSettings,
    pub devices: DevicesSettings,
    pub topics: TopicsSettings,
    pub shutdown: ShutdownSettings,
    pub log: LogSettings,
}

impl Settings {
    /// Loads the layers, then validates them. `env` is the process environment (a parameter so
    /// tests can pass their own without touching the process's).
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
            // PGSSLROOTCERT as libpq reads it; the URL's sslrootcert= still wins over it.
            [
                ("DATABASE_URL", "database.url"),
                ("PGSSLROOTCERT", "database.ca_file"),
                ("REDIS_URL", "redis.url"),
                ("WORKER_CONCURRENCY", "worker.concurrency"),
            ]
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

    /// Checks every value once: each section's own rules, then the rules that span sections
    /// (`cross_checks`). Each error names its key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.pg_config()?;
        self.database.validate()?;
        self.redis.validate()?;
        self.worker.validate()?;
        self.listener.validate()?;
        self.retry.validate()?;
        self.claim.validate()?;
        self.circuit.validate()?;
        self.retention.validate()?;
        self.scheduler.validate()?;
        self.alerts.validate()?;
        self.shutdown.validate()?;
        self.payload.validate()?;
        self.providers.validate()?;
        cross_checks::check(self)?;
        self.http.addr()?;
        self.log.level()?;
        self.auth.validate().map_err(|(key, message)| invalid(key, message))?;
        self.devices.validate()?;
        self.topics.validate()?;
        Ok(())
    }

    /// The Redis the relay talks to: the cluster when `redis.cluster_urls` is set, with the
    /// certificates of `redis.ca_file`, `.cert_file` and `.key_file` (read now).
    pub fn redis_endpoint(&self) -> Result<notify_relay_engine::relay::conn::Endpoint, ConfigError> {
        let seeds: Vec<String> = self.redis.cluster_urls.iter().map(|s| s.expose().to_string()).collect();
        let endpoint = notify_relay_engine::relay::conn::Endpoint::new(self.redis.url.expose(), &seeds);
        Ok(endpoint.with_tls(self.redis.tls_certificates()?))
    }

    /// The Postgres config of the pool and the LISTEN connection: [`Settings::migrations_pg_config`]
    /// plus the server-side `statement_timeout`, appended to the URL's `options` unless they set
    /// one already.
    pub fn pg_config(&self) -> Result<PgTarget, ConfigError> {
        let mut config = self.migrations_pg_config()?;
        let timeout = format!("-c statement_timeout={}", self.database.statement_timeout.as_millis());
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
    /// TLS as the URL's `sslmode` says, with the CA of its `sslrootcert`, else of
    /// `database.ca_file` (see `notify_relay_engine::tls`).
    pub fn migrations_pg_config(&self) -> Result<PgTarget, ConfigError> {
        // The parser's message could quote the URL (and its password): ours say only what is
        // wrong. A CA file's message names the setting it came from.
        let mut config =
            PgTarget::from_url(self.database.url.expose(), self.database.ca_file.as_deref()).map_err(|e| match e {
                PgUrlError::CaFile(ca) => invalid("database.ca_file", ca.to_string()),
                other => invalid("database.url", other.to_string()),
            })?;
        let db = &self.database;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(db.connect_timeout);
        }
        // `keepalives=0` in the URL turns them off; its other keepalive parameters win.
        if config.get_keepalives() {
            if config.get_keepalives_idle() == LIBPQ_KEEPALIVES_IDLE {
                config.keepalives_idle(db.keepalive_idle);
            }
            if config.get_keepalives_interval().is_none() {
                config.keepalives_interval((db.keepalive_idle / 2).max(Duration::from_millis(SECOND_MS)));
            }
            if config.get_keepalives_retries().is_none() {
                config.keepalives_retries(KEEPALIVE_PROBES);
            }
        }
        if config.get_tcp_user_timeout().is_none() {
            config.tcp_user_timeout(db.tcp_user_timeout);
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
            wait: db.pool_wait,
            connect: db.connect_timeout * hosts,
            statement_timeout: db.statement_timeout,
        })
    }

    /// The Redis connect and reply timeouts.
    pub fn redis_timeouts(&self) -> notify_relay_engine::relay::conn::Timeouts {
        notify_relay_engine::relay::conn::Timeouts {
            connect: self.redis.connect_timeout,
            response: self.redis.response_timeout,
        }
    }

    pub fn http_addr(&self) -> Result<SocketAddr, ConfigError> {
        Ok(self.http.addr()?)
    }

    pub fn log_level(&self) -> Result<slog::Level, ConfigError> {
        Ok(self.log.level()?)
    }

    /// `log.format`, or what suits this process's stdout when it is unset.
    pub fn log_format(&self) -> LogFormat {
        use std::io::IsTerminal;
        self.log.format(std::io::stdout().is_terminal())
    }

    pub fn grace(&self) -> Duration {
        self.shutdown.grace
    }

    /// What the engine runs with, for the given roles and consumer name: its sections as they
    /// are, and the input caps of `[payload]` and `[devices]`. The provider credentials are read
    /// when the engine builds its clients.
    pub fn engine(&self, roles: Roles, consumer: String) -> EngineSettings {
        EngineSettings {
            roles,
            consumer,
            worker: self.worker,
            listener: self.listener,
            retry: self.retry,
            claim: self.claim,
            circuit: self.circuit,
            retention: self.retention,
            scheduler: self.scheduler,
            alerts: self.alerts,
            providers: self.providers.clone(),
            input_limits: InputLimits {
                payload_max_bytes: self.payload.max_bytes,
                devices_per_user: self.devices.max_per_user as usize,
            },
        }
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

    /// The settings `pairs` make are refused, with a message that contains `expected`.
    fn assert_refused(pairs: &[(&str, &str)], expected: &str) {
        let err = error(pairs);
        assert!(err.contains(expected), "{err}");
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
            s.engine(notify_relay_engine::settings::Roles::ALL, "c".into()).input_limits.payload_max_bytes,
            16 * 1024
        );
        let s = Settings::load(None, &env(&[("NOTIFY__DEVICES__MAX_PER_USER", "7")])).unwrap();
        assert_eq!(s.engine(notify_relay_engine::settings::Roles::ALL, "c".into()).input_limits.devices_per_user, 7);
        assert!(error(&[("NOTIFY__PAYLOAD__MAX_BYTES", "100")])
            .contains("`payload.max_bytes` must be between 4096 and 1048576"));
        assert!(error(&[("NOTIFY__PAYLOAD__MAX_BYTES", "2000000")]).contains("`payload.max_bytes`"));
    }

    #[test]
    fn the_alert_thresholds_have_defaults_and_ranges_that_name_their_keys() {
        let alerts = Settings::load(None, &HashMap::new()).unwrap().alerts;
        assert!(alerts.enabled);
        assert_eq!((alerts.interval, alerts.lag_age_max), (Duration::from_secs(30), Duration::from_secs(60)));
        assert_eq!((alerts.dlq_length_max, alerts.dlq_added_max, alerts.lag_max), (1000, 100, 10_000));
        let off = Settings::load(None, &env(&[("NOTIFY__ALERTS__ENABLED", "false")])).unwrap();
        assert!(!off.engine(notify_relay_engine::settings::Roles::ALL, "c".into()).alerts.enabled);
        assert_eq!(
            error(&[("NOTIFY__ALERTS__INTERVAL_MS", "50")]),
            "invalid configuration: `alerts.interval_ms` must be between 100 and 3600000, got 50"
        );
        assert!(error(&[("NOTIFY__ALERTS__LAG_MAX", "-1")]).contains("`alerts.lag_max`"));
        let unknown = error(&[("NOTIFY__ALERTS__THRESHOLD", "1")]);
        assert!(unknown.contains("threshold"), "{unknown}");
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
        assert_refused(&[("WORKER_CONCURRENCY", "lots")], "worker.concurrency");
        assert_refused(&[("NOTIFY__RETRY__MAX_ATTEMPTS", "-1")], "retry.max_attempts");
    }

    #[test]
    fn cluster_seeds_come_comma_separated_from_the_environment() {
        let s =
            Settings::load(None, &env(&[("NOTIFY__REDIS__CLUSTER_URLS", "redis://a:7000,redis://b:7001")])).unwrap();
        let seeds: Vec<&str> = s.redis.cluster_urls.iter().map(Secret::expose).collect();
        assert_eq!(seeds, ["redis://a:7000", "redis://b:7001"]);
        assert!(
            matches!(s.redis_endpoint().unwrap().nodes, notify_relay_engine::relay::conn::Nodes::Cluster(ref v) if v.len() == 2)
        );
        assert_refused(
            &[("NOTIFY__REDIS__CLUSTER_URLS", "redis://a:7000,http://b")],
            "`redis.cluster_urls` entry 1 must start with",
        );
        let single = Settings::load(None, &env(&[])).unwrap();
        assert!(matches!(single.redis_endpoint().unwrap().nodes, notify_relay_engine::relay::conn::Nodes::Single(_)));
    }

    #[test]
    fn a_tls_redis_url_is_accepted() {
        let s = Settings::load(None, &env(&[("REDIS_URL", "rediss://user:pw@redis.example.com:6380")])).unwrap();
        assert!(s.redis.url.expose().starts_with("rediss://"));
    }

    #[test]
    fn unknown_keys_are_rejected() {
        assert_refused(&[("NOTIFY__RETRY__MAX_ATEMPTS", "3")], "max_atempts");
    }

    #[test]
    fn claim_min_idle_must_exceed_every_provider_timeout() {
        for (pairs, expected) in [
            // The default flush_after_ms (1) counts too: a delivery may wait that long before its send.
            (
                &[("NOTIFY__CLAIM__MIN_IDLE_MS", "5000"), ("NOTIFY__PROVIDERS__EXPO__TIMEOUT_MS", "10000")][..],
                "`claim.min_idle_ms` must exceed the longest provider send (10001 ms",
            ),
            (
                &[
                    ("NOTIFY__CLAIM__MIN_IDLE_MS", "12000"),
                    ("NOTIFY__PROVIDERS__EXPO__TIMEOUT_MS", "10000"),
                    ("NOTIFY__PROVIDERS__EXPO__FLUSH_AFTER_MS", "8000"),
                ],
                "longest provider send (18000 ms: flush_after_ms + timeout_ms",
            ),
            // An email send counts its timeout twice (the wait for a connection, then the transaction).
            (
                &[
                    ("NOTIFY__PROVIDERS__EMAIL__ENABLED", "true"),
                    ("NOTIFY__PROVIDERS__EMAIL__TIMEOUT_MS", "40000"),
                    ("NOTIFY__CLAIM__MIN_IDLE_MS", "60000"),
                ],
                "longest provider send (80001 ms",
            ),
        ] {
            assert_refused(pairs, expected);
        }
        // So does an FCM send's (the wait for one of the sender's connections, then the request).
        let account = serde_json::json!({
            "project_id": "p",
            "client_email": "relay@p.iam.gserviceaccount.com",
            "private_key": include_str!("../../emulators/keys/fcm-emulator-key.pem"),
        })
        .to_string();
        let fcm = [
            ("NOTIFY__PROVIDERS__FCM__ENABLED", "true"),
            ("NOTIFY__PROVIDERS__FCM__SERVICE_ACCOUNT_JSON", account.as_str()),
            ("NOTIFY__PROVIDERS__FCM__TIMEOUT_MS", "25000"),
        ];
        assert_refused(
            &[&fcm[..], &[("NOTIFY__CLAIM__MIN_IDLE_MS", "50000")]].concat(),
            "longest provider send (50001 ms",
        );
        assert!(Settings::load(None, &env(&[&fcm[..], &[("NOTIFY__CLAIM__MIN_IDLE_MS", "50006")]].concat())).is_ok());
    }

    #[test]
    fn retry_max_age_defaults_to_a_day_and_is_range_checked() {
        let settings = Settings::load(None, &env(&[])).unwrap();
        assert_eq!(settings.retry.max_age, Duration::from_millis(86_400_000));
        assert_refused(
            &[("NOTIFY__RETRY__MAX_AGE_MS", "1000")],
            "`retry.max_age_ms` must be between 60000 and 2592000000, got 1000",
        );
        assert_refused(&[("NOTIFY__RETRY__MAX_AGE_MS", "18446744073709551615")], "`retry.max_age_ms` must be between");
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
    fn the_sweep_lease_must_outlast_the_claim_idle_time() {
        assert_refused(
            &[("NOTIFY__LISTENER__STALE_AFTER_MS", "60000"), ("NOTIFY__CLAIM__MIN_IDLE_MS", "60000")],
            "`listener.stale_after_ms` must exceed claim.min_idle_ms (60000)",
        );
    }

    #[test]
    fn a_bad_database_url_is_named_without_echoing_it() {
        let err = error(&[("DATABASE_URL", "postgres://u:hunter2@h:notaport/db")]);
        assert!(err.contains("`database.url`") && !err.contains("hunter2"), "{err}");
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
        let engine = s.engine(notify_relay_engine::settings::Roles::ALL, "c".into());
        assert!(engine.providers.expo.access_token.as_ref().map(Secret::expose) == Some("expo-access-token-6"));
        // What the credentials resolve to, as the engine's clients get them.
        let account = s.providers.fcm.account().unwrap();
        let printed = [format!("{s:?}"), format!("{engine:?}"), format!("{account:?}")];
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
        assert!(err.contains("`auth.jwks_url` is http://") && err.contains("auth.allow_insecure_jwks"), "{err}");
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
    fn the_per_user_caps_of_devices_and_topics_have_defaults_and_ranges_that_name_their_key() {
        type Cap = fn(&Settings) -> u32;
        let caps: [(&str, &str, Cap, u32, u32); 2] = [
            ("devices.max_per_user", "NOTIFY__DEVICES__MAX_PER_USER", |s| s.devices.max_per_user, 100, 10_000),
            ("topics.max_per_user", "NOTIFY__TOPICS__MAX_PER_USER", |s| s.topics.max_per_user, 1000, 100_000),
        ];
        for (key, var, read, default, max) in caps {
            assert_eq!(read(&Settings::load(None, &HashMap::new()).unwrap()), default, "{key}");
            for bad in ["0".to_string(), (max + 1).to_string()] {
                assert_refused(&[(var, &bad)], &format!("`{key}` must be between 1 and {max}, got {bad}"));
            }
            assert_refused(&[(var, "-1")], key);
            let edge = Settings::load(None, &env(&[(var, &max.to_string())])).unwrap();
            assert_eq!(read(&edge), max, "{key}");
        }
    }

    #[test]
    fn the_log_format_is_json_or_pretty_and_unset_follows_the_terminal() {
        let s = Settings::load(None, &HashMap::new()).unwrap();
        assert_eq!(s.log.format, None);
        assert_eq!((s.log.format(true), s.log.format(false)), (LogFormat::Pretty, LogFormat::Json));
        for (value, format) in [("json", LogFormat::Json), ("pretty", LogFormat::Pretty)] {
            let s = Settings::load(None, &env(&[("NOTIFY__LOG__FORMAT", value)])).unwrap();
            assert_eq!((s.log.format(true), s.log.format(false)), (format, format), "{value}");
        }
        let err = error(&[("NOTIFY__LOG__FORMAT", "xml")]);
        assert!(err.contains("must be `json` or `pretty`, got `xml`") && err.contains("log.format"), "{err}");
    }

    #[test]
    fn the_schedule_poll_has_a_default_and_a_range_that_names_its_key() {
        let s = Settings::load(None, &HashMap::new()).unwrap();
        assert_eq!(s.listener.schedule_poll, Duration::from_millis(200));
        for bad in ["9", "60001", "0"] {
            let err = error(&[("NOTIFY__LISTENER__SCHEDULE_POLL_MS", bad)]);
            let expected = format!("`listener.schedule_poll_ms` must be between 10 and 60000, got {bad}");
            assert!(err.contains(&expected), "{bad}: {err}");
        }
        let edge = Settings::load(None, &env(&[("NOTIFY__LISTENER__SCHEDULE_POLL_MS", "10")])).unwrap();
        assert_eq!(edge.listener.schedule_poll, Duration::from_millis(10));
    }

    #[test]
    fn the_backlog_cap_has_a_default_can_be_off_and_must_hold_a_batch() {
        let s = Settings::load(None, &HashMap::new()).unwrap();
        assert_eq!(s.listener.max_backlog, 100_000);
        let off = Settings::load(None, &env(&[("NOTIFY__LISTENER__MAX_BACKLOG", "0")])).unwrap();
        assert_eq!(off.listener.max_backlog, 0);
        let edge = Settings::load(None, &env(&[("NOTIFY__LISTENER__MAX_BACKLOG", "1000")])).unwrap();
        assert_eq!(edge.listener.max_backlog, 1000, "exactly one batch (listener.batch_size 1000)");
        let err = error(&[("NOTIFY__LISTENER__MAX_BACKLOG", "999")]);
        assert!(err.contains("`listener.max_backlog` must be 0 (no limit) or at least listener.batch_size"), "{err}");
        let err = error(&[("NOTIFY__LISTENER__MAX_BACKLOG", "-1")]);
        assert!(err.contains("max_backlog"), "{err}");
    }

    #[test]
    fn connection_timeouts_have_defaults_and_ranges_that_name_their_key() {
        let s = Settings::load(None, &HashMap::new()).unwrap();
        let db = &s.database;
        let ms = Duration::from_millis;
        let shipped = (db.connect_timeout, db.statement_timeout, db.keepalive_idle);
        assert_eq!(shipped, (ms(5000), ms(30_000), ms(10_000)));
        assert_eq!((db.tcp_user_timeout, db.pool_wait), (ms(20_000), ms(10_000)));
        assert_eq!((s.redis.connect_timeout, s.redis.response_timeout), (ms(5000), ms(5000)));
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
        assert_eq!(edges.database.statement_timeout, Duration::from_millis(3_600_000));
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
    fn the_postgres_ca_comes_from_ca_file_or_pgsslrootcert_and_a_bad_one_names_its_key() {
        assert_refused(
            &[("NOTIFY__DATABASE__CA_FILE", "/nonexistent/ca.pem")],
            "`database.ca_file` file /nonexistent/ca.pem cannot be read",
        );
        assert_refused(
            &[("PGSSLROOTCERT", "/nonexistent/root.crt")],
            "`database.ca_file` file /nonexistent/root.crt cannot be read",
        );
        let garbage = std::env::temp_dir().join(format!("ca-{}.pem", uuid::Uuid::new_v4().simple()));
        std::fs::write(&garbage, "not a certificate").unwrap();
        let err = error(&[("NOTIFY__DATABASE__CA_FILE", garbage.to_str().unwrap())]);
        let _ = std::fs::remove_file(&garbage);
        assert!(err.contains("`database.ca_file` file") && err.contains("holds no PEM certificate"), "{err}");
        let url = "postgres://u@h/db?sslmode=verify-full&sslrootcert=%2Fnonexistent%2Fx.pem";
        assert_refused(&[("DATABASE_URL", url)], "`database.url` sslrootcert file /nonexistent/x.pem cannot be read");
        assert_refused(
            &[("DATABASE_URL", "postgres://u:secret@h/db?sslmode=allow")],
            "`database.url` has sslmode=allow; use disable, prefer, require",
        );
        assert!(!err.contains("secret"), "the URL's password stays out: {err}");

        let ca = rcgen::generate_simple_self_signed(vec!["db.example.com".to_string()]).unwrap();
        // Removed with the directory, whatever the test's outcome: the CA is read at each use.
        let dir = emulators::testing::TempDir::new("notify-relay-ca");
        let good = dir.path().join("ca.pem");
        std::fs::write(&good, ca.cert.pem()).unwrap();
        let good = good.to_str().unwrap().to_string();
        let url = "postgres://u@h/db?sslmode=verify-full";
        let from_env = Settings::load(None, &env(&[("DATABASE_URL", url), ("PGSSLROOTCERT", &good)]));
        // NOTIFY__DATABASE__CA_FILE is the more specific of the two.
        let both = Settings::load(
            None,
            &env(&[("DATABASE_URL", url), ("PGSSLROOTCERT", "/nonexistent/x"), ("NOTIFY__DATABASE__CA_FILE", &good)]),
        );
        let from_env = from_env.unwrap();
        assert_eq!(from_env.database.ca_file.as_deref(), Some(Path::new(&good)));
        assert_eq!(from_env.pg_config().unwrap().mode(), notify_relay_engine::tls::SslMode::VerifyFull);
        assert_eq!(both.unwrap().database.ca_file.as_deref(), Some(Path::new(&good)));
        // Without sslmode, libpq's default.
        let default = Settings::load(None, &env(&[])).unwrap().pg_config().unwrap();
        assert_eq!(default.mode(), notify_relay_engine::tls::SslMode::Prefer);
    }

    #[test]
    fn a_missing_config_file_is_reported() {
        let err = Settings::load(Some(Path::new("/nonexistent/notify.toml")), &HashMap::new()).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/notify.toml"));
    }
}
