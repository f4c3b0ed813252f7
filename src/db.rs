//! The store's Postgres pool, built from the configuration. Its own module because both the
//! service's start-up and the admin commands need it, and neither should depend on the other.

use crate::configuration::{ConfigError, Settings};
use notify_relay_engine::store::pool::Pool;
use slog::Logger;

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("postgres pool: {0}")]
    Build(String),
}

/// The store's pool: every store call holds its connection under a deadline, and waiting for,
/// opening and recycling a connection are bounded too (see `notify_relay_engine::store::pool`).
pub fn pg_pool(settings: &Settings, log: &Logger) -> Result<Pool, PoolError> {
    let log = log.new(slog::o!("component" => "postgres"));
    notify_relay_engine::store::pool::build(settings.pg_config()?, settings.pool_settings()?, log)
        .map_err(|e| PoolError::Build(e.to_string()))
}
