//! Operator routes, behind `Authorization: Bearer <auth.admin_token>` (and nothing else: a user
//! token, even a `service_role` one, is refused here).

use super::AppState;
use crate::error::ApiError;
use actix_web::{get, post, web, HttpRequest, HttpResponse};
use actors::operations::{requeue_dead_letters, RequeueReport};
use actors::registry::ActorSnapshot;
use actors::relay::admin::{DayCounters, DeadLetterEntry, ShardQueues};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

#[derive(Debug, Serialize, ToSchema)]
pub struct ActorsBody {
    pub actors: Vec<ActorSnapshot>,
}

/// Every live actor with its mailbox figures.
#[utoipa::path(tag = "admin", responses((status = 200, body = ActorsBody), (status = 401, body = crate::error::ErrorBody)),
    security(("admin_token" = [])))]
#[get("/admin/actors")]
pub async fn list_actors(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    state.auth.admin(&req)?;
    Ok(HttpResponse::Ok().json(ActorsBody { actors: state.registry.snapshot() }))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct QueuesBody {
    pub shards: Vec<ShardQueues>,
    /// Sums over the shards.
    pub totals: Totals,
}

#[derive(Debug, Default, Serialize, ToSchema)]
pub struct Totals {
    pub stream_length: u64,
    pub pending: u64,
    pub lag: u64,
    pub delayed: u64,
    pub dlq_length: u64,
    pub receipts_pending: u64,
}

/// Per shard: stream length, pending, lag, delayed retries, dead letters, receipts to fetch.
#[utoipa::path(tag = "admin", responses((status = 200, body = QueuesBody), (status = 401, body = crate::error::ErrorBody)),
    security(("admin_token" = [])))]
#[get("/admin/queues")]
pub async fn queues(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    state.auth.admin(&req)?;
    let shards = state.relay.queues().await?;
    let mut totals = Totals::default();
    for s in &shards {
        totals.stream_length += s.stream_length;
        totals.pending += s.pending;
        totals.lag += s.lag.unwrap_or(0);
        totals.delayed += s.delayed;
        totals.dlq_length += s.dlq_length;
        totals.receipts_pending += s.receipts_pending;
    }
    Ok(HttpResponse::Ok().json(QueuesBody { shards, totals }))
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct DlqQuery {
    /// How many dead letters, newest first: 1–1000 (default 50).
    limit: Option<usize>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DlqBody {
    pub items: Vec<DeadLetterEntry>,
}

/// The newest dead letters of every shard.
#[utoipa::path(tag = "admin", params(DlqQuery),
    responses((status = 200, body = DlqBody), (status = 400, body = crate::error::ErrorBody), (status = 401, body = crate::error::ErrorBody)),
    security(("admin_token" = [])))]
#[get("/admin/dlq")]
pub async fn dlq(
    req: HttpRequest,
    query: web::Query<DlqQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    state.auth.admin(&req)?;
    let limit = query.limit.unwrap_or(50);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::BadRequest(format!("limit must be between 1 and 1000, got {limit}")));
    }
    Ok(HttpResponse::Ok().json(DlqBody { items: state.relay.dead_letters(limit).await? }))
}

/// Which dead letters to requeue: the given ids, or (with `all`) the newest `limit`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RequeueRequest {
    /// Ids as `GET /admin/dlq` shows them (`<shard>:<entry id>`).
    #[serde(default)]
    pub ids: Vec<String>,
    #[serde(default)]
    pub all: bool,
    /// With `all`: at most this many (default 1000, at most 10000).
    pub limit: Option<usize>,
}

/// Puts dead letters back into the stream as fresh first attempts (their targets are reset in
/// Postgres first). Letters without a job, or whose target is no longer failed, are skipped.
#[utoipa::path(tag = "admin", request_body = RequeueRequest,
    responses((status = 200, body = RequeueReport), (status = 401, body = crate::error::ErrorBody),
              (status = 422, description = "no ids and not `all`, or a malformed id", body = crate::error::ErrorBody)),
    security(("admin_token" = [])))]
#[post("/admin/dlq/requeue")]
pub async fn requeue(
    req: HttpRequest,
    body: web::Json<serde_json::Value>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    state.auth.admin(&req)?;
    let body: RequeueRequest = crate::error::from_json(body.into_inner())?;
    let letters = match (body.all, body.ids.is_empty()) {
        (true, true) => {
            let limit = body.limit.unwrap_or(1000);
            if !(1..=10_000).contains(&limit) {
                return Err(ApiError::Unprocessable(format!("limit: must be between 1 and 10000, got {limit}")));
            }
            state.relay.dead_letters(limit).await?
        }
        (false, false) => {
            let mut ids = Vec::with_capacity(body.ids.len());
            for (i, id) in body.ids.iter().enumerate() {
                let parsed = DeadLetterEntry::parse_id(id)
                    .ok_or_else(|| ApiError::Unprocessable(format!("ids[{i}]: '{id}' is not <shard>:<entry id>")))?;
                ids.push(parsed);
            }
            state.relay.dead_letters_by_id(&ids).await?
        }
        (true, false) => return Err(ApiError::Unprocessable("ids: give ids or all, not both".into())),
        (false, true) => return Err(ApiError::Unprocessable("ids: required unless all is true".into())),
    };
    Ok(HttpResponse::Ok().json(requeue_dead_letters(&state.store, &state.relay, letters).await?))
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct MetricsQuery {
    /// Days back from today, 1–90 (default 7).
    days: Option<u32>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MetricsBody {
    pub days: Vec<DayCounters>,
}

/// The daily Redis counters per event (and `event:provider`), today first.
#[utoipa::path(tag = "admin", params(MetricsQuery),
    responses((status = 200, body = MetricsBody), (status = 400, body = crate::error::ErrorBody), (status = 401, body = crate::error::ErrorBody)),
    security(("admin_token" = [])))]
#[get("/admin/metrics")]
pub async fn metrics(
    req: HttpRequest,
    query: web::Query<MetricsQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    state.auth.admin(&req)?;
    let days = query.days.unwrap_or(7);
    if !(1..=90).contains(&days) {
        return Err(ApiError::BadRequest(format!("days must be between 1 and 90, got {days}")));
    }
    Ok(HttpResponse::Ok().json(MetricsBody { days: state.relay.counters(days).await? }))
}
