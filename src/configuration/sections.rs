//! The sections only the binary uses: `[database]`, `[redis]`, `[http]`, `[devices]`,
//! `[topics]`, `[shutdown]` and `[log]` (`[auth]` lives with the authenticator, in `crate::auth`). Each
//! checks its own fields in `validate()`; an error names its key.

use notify_relay_engine::settings::rules::{read_file, read_optional};
use notify_relay_engine::settings::{millis, within, within_ms, Secret, SettingsError, HOUR_MS, MINUTE_MS, SECOND_MS};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// `[database]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    /// Postgres URL (may hold a password). `sslmode` = disable | prefer (the default) | require
    /// | verify-ca | verify-full, as in libpq; `sslrootcert=<file>` gives the server's CA.
    pub url: Secret,
    /// PEM file of the CA that signed the server's certificate (also `PGSSLROOTCERT`); the
    /// URL's `sslrootcert` wins. Checked in `Settings::migrations_pg_config`, where the URL is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<std::path::PathBuf>,
    /// Pooled connections for fan-out, outcome writes and the API.
    pub pool_size: usize,
    /// How long opening a connection may take (the TCP connect to each host; for a pooled
    /// connection, TLS and login included). The URL's `connect_timeout` wins.
    #[serde(rename = "connect_timeout_ms", with = "millis")]
    pub connect_timeout: Duration,
    /// Server-side `statement_timeout`, sent as `options=-c statement_timeout=…` (unless the
    /// URL's `options` set one). Also enforced by the relay: a store call that has no answer
    /// after this plus 2 s closes its connection, so a blackholed connection fails in seconds.
    #[serde(rename = "statement_timeout_ms", with = "millis")]
    pub statement_timeout: Duration,
    /// TCP keepalives start after this much idle time (then probe every half of it, 3 times):
    /// a dead host is noticed even on an idle connection such as the LISTEN one.
    #[serde(rename = "keepalive_idle_ms", with = "millis")]
    pub keepalive_idle: Duration,
    /// `TCP_USER_TIMEOUT`: sent data (or keepalive probes) unacknowledged this long closes the
    /// connection.
    #[serde(rename = "tcp_user_timeout_ms", with = "millis")]
    pub tcp_user_timeout: Duration,
    /// How long a store call waits for a free pooled connection.
    #[serde(rename = "pool_wait_ms", with = "millis")]
    pub pool_wait: Duration,
}

impl DatabaseSettings {
    /// The URL and the CA file are checked where the URL is parsed (`Settings::pg_config`).
    pub fn validate(&self) -> Result<(), SettingsError> {
        if self.pool_size == 0 {
            return Err(SettingsError::new("database.pool_size", "must be at least 1"));
        }
        // Upper bounds keep "dead in seconds" true; a typo of minutes would undo it.
        within_ms("database.connect_timeout_ms", self.connect_timeout, 100..=MINUTE_MS)?;
        within_ms("database.statement_timeout_ms", self.statement_timeout, SECOND_MS..=HOUR_MS)?;
        within_ms("database.keepalive_idle_ms", self.keepalive_idle, SECOND_MS..=2 * HOUR_MS)?;
        within_ms("database.tcp_user_timeout_ms", self.tcp_user_timeout, SECOND_MS..=10 * MINUTE_MS)?;
        within_ms("database.pool_wait_ms", self.pool_wait, 100..=10 * MINUTE_MS)
    }
}

/// `[redis]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
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
    /// How long connecting to Redis may take.
    #[serde(rename = "connect_timeout_ms", with = "millis")]
    pub connect_timeout: Duration,
    /// How long a command waits for its reply (blocking reads: their block time plus this). A
    /// reply that times out replaces the shared connection: a blackholed one would otherwise
    /// time out every command for ever.
    #[serde(rename = "response_timeout_ms", with = "millis")]
    pub response_timeout: Duration,
    /// PEM file of the CA(s) that signed the Redis server's certificate (`rediss://` only). When
    /// set, only these CAs are trusted, not the public roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate (chain) offered when the server asks for one
    /// (`tls-auth-clients yes`); set with `key_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of `cert_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
}

impl RedisSettings {
    /// The TLS material of `ca_file`, `cert_file` and `key_file`, read and checked now (so a
    /// bad file fails start-up naming its key, not the first connection); `None` when none is
    /// set. They need `rediss://` URLs: with `redis://` they would silently do nothing.
    pub fn tls_certificates(&self) -> Result<Option<redis::TlsCertificates>, SettingsError> {
        if self.ca_file.is_none() && self.cert_file.is_none() && self.key_file.is_none() {
            return Ok(None);
        }
        let (url_key, plain) = match self.cluster_urls.is_empty() {
            true => ("redis.url", !self.url.expose().starts_with("rediss://")),
            false => ("redis.cluster_urls", self.cluster_urls.iter().any(|u| !u.expose().starts_with("rediss://"))),
        };
        let set = [
            ("redis.ca_file", &self.ca_file),
            ("redis.cert_file", &self.cert_file),
            ("redis.key_file", &self.key_file),
        ];
        if plain {
            let key = set.iter().find(|(_, v)| v.is_some()).map_or("redis.ca_file", |(k, _)| k);
            return Err(SettingsError::new(key, format!("is set but {url_key} is not rediss:// (TLS)")));
        }
        let root_cert = match read_optional("redis.ca_file", self.ca_file.as_deref())? {
            Some(pem) => {
                pem_certificates("redis.ca_file", &pem)?;
                Some(pem)
            }
            None => None,
        };
        let client_tls = match (&self.cert_file, &self.key_file) {
            (None, None) => None,
            (Some(_), None) => return Err(SettingsError::new("redis.key_file", "must be set with redis.cert_file")),
            (None, Some(_)) => return Err(SettingsError::new("redis.cert_file", "must be set with redis.key_file")),
            (Some(cert), Some(key)) => {
                let client_cert = read_file("redis.cert_file", cert)?.into_bytes();
                pem_certificates("redis.cert_file", &client_cert)?;
                let client_key = read_file("redis.key_file", key)?.into_bytes();
                match rustls_pemfile::private_key(&mut client_key.as_slice()) {
                    Ok(Some(_)) => {}
                    Ok(None) => return Err(SettingsError::new("redis.key_file", "holds no PEM private key")),
                    Err(e) => {
                        return Err(SettingsError::new("redis.key_file", format!("is not a PEM private key: {e}")))
                    }
                }
                Some(redis::ClientTlsConfig { client_cert, client_key })
            }
        };
        Ok(Some(redis::TlsCertificates { client_tls, root_cert }))
    }

    pub fn validate(&self) -> Result<(), SettingsError> {
        within_ms("redis.connect_timeout_ms", self.connect_timeout, 100..=MINUTE_MS)?;
        within_ms("redis.response_timeout_ms", self.response_timeout, 100..=5 * MINUTE_MS)?;
        let url = self.url.expose();
        if !(url.starts_with("redis://") || url.starts_with("rediss://") || url.starts_with("unix://")) {
            return Err(SettingsError::new("redis.url", "must start with redis://, rediss:// or unix://"));
        }
        redis::Client::open(url).map_err(|_| SettingsError::new("redis.url", "is not a valid Redis URL"))?;
        for (i, seed) in self.cluster_urls.iter().enumerate() {
            let seed = seed.expose();
            if !(seed.starts_with("redis://") || seed.starts_with("rediss://")) {
                return Err(SettingsError::new(
                    "redis.cluster_urls",
                    format!("entry {i} must start with redis:// or rediss://"),
                ));
            }
            redis::Client::open(seed)
                .map_err(|_| SettingsError::new("redis.cluster_urls", format!("entry {i} is not a valid Redis URL")))?;
        }
        let prefix = &self.key_prefix;
        if prefix.is_empty() || prefix.chars().any(|c| c.is_whitespace() || c == '{' || c == '}') {
            return Err(SettingsError::new("redis.key_prefix", "must be non-empty, without spaces or braces"));
        }
        if !(1..=1024).contains(&self.shards) {
            return Err(SettingsError::new("redis.shards", format!("must be between 1 and 1024, got {}", self.shards)));
        }
        if self.dlq_max_len < 100 {
            return Err(SettingsError::new("redis.dlq_max_len", "must be at least 100"));
        }
        self.tls_certificates().map(|_| ())
    }
}

/// Checks that `pem` holds at least one certificate, and nothing unparsable.
fn pem_certificates(key: &'static str, pem: &[u8]) -> Result<(), SettingsError> {
    let certs = rustls_pemfile::certs(&mut &pem[..])
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| SettingsError::new(key, format!("is not a PEM certificate: {e}")))?;
    match certs.is_empty() {
        true => Err(SettingsError::new(key, "holds no PEM certificate")),
        false => Ok(()),
    }
}

/// `[http]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    /// API listen address.
    pub addr: String,
}

impl HttpSettings {
    /// The listen address, parsed.
    pub fn addr(&self) -> Result<SocketAddr, SettingsError> {
        self.addr
            .parse()
            .map_err(|_| SettingsError::new("http.addr", format!("must be host:port, got '{}'", self.addr)))
    }
}

/// `[devices]`: what one user may register.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DevicesSettings {
    /// Active devices one user may have; registering one more is a 422.
    pub max_per_user: u32,
}

/// The range `devices.max_per_user` must be in.
pub const MAX_PER_USER_RANGE: std::ops::RangeInclusive<u32> = 1..=10_000;

impl DevicesSettings {
    pub fn validate(&self) -> Result<(), SettingsError> {
        within("devices.max_per_user", self.max_per_user, MAX_PER_USER_RANGE)
    }
}

/// `[topics]`: what one user may subscribe to.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TopicsSettings {
    /// Topics one user may subscribe to; subscribing to one more is a 409.
    pub max_per_user: u32,
}

/// The range `topics.max_per_user` must be in.
pub const MAX_TOPICS_PER_USER_RANGE: std::ops::RangeInclusive<u32> = 1..=100_000;

impl TopicsSettings {
    pub fn validate(&self) -> Result<(), SettingsError> {
        within("topics.max_per_user", self.max_per_user, MAX_TOPICS_PER_USER_RANGE)
    }
}

/// `[shutdown]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ShutdownSettings {
    /// How long SIGTERM waits for in-flight work (`shutdown.grace_ms`).
    #[serde(rename = "grace_ms", with = "millis")]
    pub grace: Duration,
}

impl ShutdownSettings {
    pub fn validate(&self) -> Result<(), SettingsError> {
        within_ms("shutdown.grace_ms", self.grace, 0..=HOUR_MS)
    }
}

/// `[log]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    /// trace | debug | info | warning | error | critical
    pub level: String,
    /// `json` (one object per line, for log agents) or `pretty` (one readable line per event,
    /// for a person at a terminal). Unset: pretty when stdout is a terminal, JSON otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<LogFormat>,
}

/// `log.format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase", try_from = "String")]
pub enum LogFormat {
    Json,
    Pretty,
}

impl TryFrom<String> for LogFormat {
    type Error = String;

    /// The loader names the key; the message says what it takes.
    fn try_from(value: String) -> Result<Self, String> {
        match value.as_str() {
            "json" => Ok(LogFormat::Json),
            "pretty" => Ok(LogFormat::Pretty),
            other => Err(format!("must be `json` or `pretty`, got `{other}`")),
        }
    }
}

impl LogSettings {
    /// The format to write in: the configured one, else pretty on a terminal and JSON
    /// otherwise (a container's stdout, a pipe, a file).
    pub fn format(&self, stdout_is_terminal: bool) -> LogFormat {
        self.format.unwrap_or(if stdout_is_terminal { LogFormat::Pretty } else { LogFormat::Json })
    }

    /// The level, parsed.
    pub fn level(&self) -> Result<slog::Level, SettingsError> {
        self.level.parse().map_err(|_| SettingsError::new("log.level", format!("unknown level '{}'", self.level)))
    }
}
