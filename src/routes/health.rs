//! `GET /healthz` (are Postgres and Redis reachable?) and `GET /readyz` (is this process ready
//! for traffic: schema migrated, consumer groups present, every actor running?).

use super::AppState;
use actix_web::{get, web, HttpResponse};
use serde::Serialize;
use std::time::Duration;
use utoipa::ToSchema;

/// `GET /healthz`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// `ok` or `degraded`.
    #[schema(pattern = "^(ok|degraded)$")]
    pub status: &'static str,
    /// `ok` or `down`.
    #[schema(pattern = "^(ok|down)$")]
    pub postgres: &'static str,
    /// `ok` or `down`.
    #[schema(pattern = "^(ok|down)$")]
    pub redis: &'static str,
}

/// `GET /readyz`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    /// `ready` or `not_ready`.
    #[schema(pattern = "^(ready|not_ready)$")]
    pub status: &'static str,
    pub migrations: bool,
    pub consumer_groups: bool,
    pub actors_running: bool,
}

const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Whether Postgres and Redis answer: 200 `{"status":"ok","postgres":"ok","redis":"ok"}`, or 503
/// naming what is `down`.
#[utoipa::path(tag = "health", responses((status = 200, description = "both reachable", body = Health), (status = 503, description = "one is down", body = Health)))]
#[get("/healthz")]
pub async fn healthz(state: web::Data<AppState>) -> HttpResponse {
    let postgres = async {
        let pool = state.store.pool();
        let client = pool.get().await.map_err(|e| pool.manager().explain(&e))?;
        client.simple_query("SELECT 1").await.map(|_| ()).map_err(|e| crate::error::loggable(&e))
    };
    let (pg, redis) = futures_util::join!(
        tokio::time::timeout(PROBE_TIMEOUT, postgres),
        tokio::time::timeout(PROBE_TIMEOUT, state.relay.ping())
    );
    let pg_ok = matches!(pg, Ok(Ok(())));
    // Said here so that a probe's 503 has its reason in the log (a refused certificate names
    // its cause and the setting that fixes it).
    if let Ok(Err(e)) = &pg {
        slog::warn!(state.log, "healthz: Postgres is down"; "error" => e);
    }
    let redis_ok = matches!(redis, Ok(Ok(())));
    let word = |ok: bool| if ok { "ok" } else { "down" };
    let body = Health {
        status: if pg_ok && redis_ok { "ok" } else { "degraded" },
        postgres: word(pg_ok),
        redis: word(redis_ok),
    };
    if pg_ok && redis_ok {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

/// 200 once migrations ran, the consumer groups exist and every actor runs; else 503.
#[utoipa::path(tag = "health", responses((status = 200, description = "ready", body = Readiness), (status = 503, description = "not ready, with what is missing", body = Readiness)))]
#[get("/readyz")]
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let migrated = async {
        match state.store.pool().get().await {
            Ok(client) => crate::migrate::is_current(&client).await,
            Err(_) => false,
        }
    };
    let (migrated, groups) = futures_util::join!(
        tokio::time::timeout(PROBE_TIMEOUT, migrated),
        tokio::time::timeout(PROBE_TIMEOUT, state.relay.groups_exist())
    );
    let migrated = matches!(migrated, Ok(true));
    let groups = matches!(groups, Ok(Ok(true)));
    let actors = state.registry.all_running();
    let ready = migrated && groups && actors;
    let body = Readiness {
        status: if ready { "ready" } else { "not_ready" },
        migrations: migrated,
        consumer_groups: groups,
        actors_running: actors,
    };
    if ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}
