//! Wiring: pools, migrations, the engine and the HTTP API on one actix System.

use crate::auth::Authenticator;
use crate::configuration::Settings;
use crate::db::pg_pool;
use crate::error::ApiError;
use crate::routes::{self, AppState};
use crate::{error, migrate};
use actix_web::dev::ServerHandle;
use actix_web::dev::Service;
use actix_web::{web, App, HttpServer, ResponseError};
use notify_relay_engine::events;
use notify_relay_engine::relay::Relay;
use notify_relay_engine::settings::Roles;
use notify_relay_engine::store::Store;
use notify_relay_engine::Engine;
use notify_relay_engine::Keys;
use slog::{info, warn, Logger};

/// Which parts run in this process (`--roles`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessRoles {
    pub engine: Roles,
    pub api: bool,
}

impl ProcessRoles {
    pub const ALL: ProcessRoles = ProcessRoles { engine: Roles::ALL, api: true };

    /// Parses `listener,worker,scheduler,api`.
    pub fn parse(list: &str) -> Result<ProcessRoles, RolesError> {
        let mut roles = ProcessRoles { engine: Roles { listener: false, worker: false, scheduler: false }, api: false };
        for role in list.split(',').map(str::trim).filter(|r| !r.is_empty()) {
            match role {
                "listener" => roles.engine.listener = true,
                "worker" => roles.engine.worker = true,
                "scheduler" => roles.engine.scheduler = true,
                "api" => roles.api = true,
                "all" => roles = ProcessRoles::ALL,
                other => return Err(RolesError::Unknown(other.to_string())),
            }
        }
        if roles == (ProcessRoles { engine: Roles { listener: false, worker: false, scheduler: false }, api: false }) {
            return Err(RolesError::None);
        }
        Ok(roles)
    }
}

/// A `--roles` list that names no role, or one that does not exist.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RolesError {
    #[error("unknown role '{0}' (expected listener, worker, scheduler, api)")]
    Unknown(String),
    #[error("no role given")]
    None,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] crate::configuration::ConfigError),
    #[error(transparent)]
    Migrate(#[from] migrate::MigrateError),
    #[error("engine: {0}")]
    Engine(#[from] notify_relay_engine::EngineError),
    #[error(transparent)]
    Pool(#[from] crate::db::PoolError),
    #[error("http: cannot listen on {addr}: {source}")]
    Bind { addr: String, source: std::io::Error },
}

/// A started process: engine plus (optionally) the API server.
pub struct Application {
    pub port: Option<u16>,
    pub engine: Engine,
    pub store: Store,
    pub relay: Relay,
    server: Option<ServerHandle>,
    log: Logger,
}

impl Application {
    /// Starts everything this process runs; call inside an actix System.
    pub async fn build(
        settings: Settings,
        roles: ProcessRoles,
        run_migrations: bool,
        consumer: String,
        log: Logger,
    ) -> Result<Self, StartError> {
        let clock = std::sync::Arc::new(notify_relay_engine::clock::SystemClock);
        Application::build_with_clock(settings, roles, run_migrations, consumer, log, clock).await
    }

    /// [`Application::build`] with the clock the API's JWKS cache reads (tests pass one they
    /// move, instead of waiting for the cache to age).
    pub async fn build_with_clock(
        settings: Settings,
        roles: ProcessRoles,
        run_migrations: bool,
        consumer: String,
        log: Logger,
        clock: std::sync::Arc<dyn notify_relay_engine::clock::Clock>,
    ) -> Result<Self, StartError> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        if run_migrations {
            let applied = migrate::run(&settings.migrations_pg_config()?).await?;
            info!(log, "migrations up to date"; "applied_now" => applied.join(","));
        }
        let store = Store::new(pg_pool(&settings, &log)?).with_payload_limit(settings.payload.max_bytes);
        let keys = Keys::new(settings.redis.key_prefix.clone(), settings.redis.shards);
        let relay = Relay::connect_with(
            &settings.redis_endpoint()?,
            settings.redis_timeouts(),
            keys,
            settings.redis.dlq_max_len,
        )
        .await?
        .with_delivered_ttl(notify_relay_engine::delivered_ttl(settings.listener.stale_after));
        warn_if_relay_keys_can_be_evicted(&relay, &log).await;

        let engine_settings = settings.engine(roles.engine, consumer);
        let engine =
            Engine::start(engine_settings, store.clone(), relay.clone(), settings.pg_config()?, log.clone()).await?;

        let (mut port, mut server) = (None, None);
        if roles.api {
            let auth = Authenticator::with_clock(&settings.auth, clock)
                .map_err(|(key, message)| crate::configuration::ConfigError::Invalid { key, message })?;
            if let Some(warning) = settings.auth.unchecked_claims_warning() {
                warn!(log, "{}", warning; "event" => "AUTH_CLAIMS_UNCHECKED");
            }
            let state = web::Data::new(AppState {
                store: store.clone(),
                relay: relay.clone(),
                registry: engine.registry().clone(),
                auth,
                cursor_key: cursor_key(&settings),
                max_devices_per_user: settings.devices.max_per_user,
                max_topics_per_user: settings.topics.max_per_user,
                log: log.new(slog::o!("component" => "api")),
            });
            let addr = settings.http_addr()?;
            let api_log = log.new(slog::o!("component" => "api"));
            let http = HttpServer::new(move || {
                let api_log = api_log.clone();
                App::new()
                    .wrap_fn(move |req, srv| {
                        let (method, path) = (req.method().to_string(), req.path().to_string());
                        let call = srv.call(req);
                        let log = api_log.clone();
                        async move {
                            let res = call.await?;
                            // Internal errors answer an opaque 500; their cause goes to the log.
                            if res.status().is_server_error() {
                                if let Some(err) = res.response().error() {
                                    // The chain without row data (tokens, addresses): see error::log_text.
                                    slog::error!(log, "request failed"; "method" => method, "path" => path,
                                                 "status" => res.status().as_u16(), "error" => error::log_text(err));
                                }
                            }
                            Ok(res)
                        }
                    })
                    .app_data(state.clone())
                    .app_data(web::JsonConfig::default().limit(64 * 1024).error_handler(error::json_error))
                    .app_data(web::QueryConfig::default().error_handler(error::query_error))
                    .configure(routes::configure)
                    .default_service(web::to(|| async { ApiError::NotFound("no such route".into()).error_response() }))
            })
            .workers(1)
            // Signals are ours (the engine drains first); open requests get 5 s at shutdown.
            .disable_signals()
            .shutdown_timeout(5)
            .bind(addr)
            .map_err(|source| StartError::Bind { addr: addr.to_string(), source })?;
            port = http.addrs().first().map(|a| a.port());
            let running = http.run();
            server = Some(running.handle());
            actix_rt::spawn(running);
            info!(log, "http api listening"; "addr" => %addr, "port" => port);
        }
        Ok(Application { port, engine, store, relay, server, log })
    }

    /// Graceful stop: the API stops accepting, in-flight deliveries get `grace` to finish.
    pub async fn stop(self, grace: std::time::Duration) -> bool {
        info!(self.log, "shutting down"; "grace_ms" => grace.as_millis() as u64);
        let clean = self.engine.shutdown(grace).await;
        if let Some(server) = self.server {
            server.stop(true).await;
        }
        clean
    }
}

/// The key that signs pagination cursors: the same for every replica of a deployment (it is
/// derived from its secrets), unknown outside it.
fn cursor_key(settings: &Settings) -> Vec<u8> {
    let mut key = b"notify-relay cursor v1\0".to_vec();
    key.extend_from_slice(settings.database.url.expose().as_bytes());
    for secret in [&settings.auth.admin_token, &settings.auth.jwt_secret].into_iter().flatten() {
        key.push(0);
        key.extend_from_slice(secret.expose().as_bytes());
    }
    key
}

/// Relay keys must not be evicted: an evicted stream entry is found again only by the sweep.
async fn warn_if_relay_keys_can_be_evicted(relay: &Relay, log: &Logger) {
    let mut conn = relay.conn();
    let policy: Result<Vec<String>, _> =
        redis::cmd("CONFIG").arg("GET").arg("maxmemory-policy").query_async(&mut conn).await;
    match policy {
        Ok(v) => {
            let policy = v.get(1).cloned().unwrap_or_default();
            if policy != "noeviction" && !policy.is_empty() {
                warn!(log, "Redis may evict relay keys under memory pressure; set maxmemory-policy noeviction"; "event" => events::REDIS_EVICTION_POSSIBLE,
                      "maxmemory_policy" => policy);
            }
        }
        Err(e) => {
            warn!(log, "could not read Redis maxmemory-policy (CONFIG may be disabled)"; "error" => %e)
        }
    }
}

/// A consumer name unique to this process: hostname (the pod name on Kubernetes) and a uuid.
pub fn consumer_name() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "notify-relay".into());
    format!("{host}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_parse_from_a_comma_list() {
        let r = ProcessRoles::parse("listener,api").unwrap();
        assert!(r.engine.listener && r.api && !r.engine.worker && !r.engine.scheduler);
        assert_eq!(ProcessRoles::parse("all").unwrap(), ProcessRoles::ALL);
        assert!(ProcessRoles::parse("listener,mailer").unwrap_err().to_string().contains("'mailer'"));
        assert!(ProcessRoles::parse("").is_err());
    }
}
