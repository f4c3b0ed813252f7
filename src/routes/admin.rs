//! Operator routes, behind `Authorization: Bearer <auth.admin_token>` (and nothing else: a user
//! token, even a `service_role` one, is refused here).

use super::{Admin, AppState};
use crate::error::ApiError;
use actix_web::{get, post, web, HttpRequest, HttpResponse};
use notify_relay_engine::relay::admin::{DayCounters, DeadLetterEntry, ShardQueues};
use notify_relay_engine::ActorSnapshot;
use notify_relay_engine::{requeue_dead_letters, RequeueReport};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

#[derive(Debug, Serialize, ToSchema)]
pub struct ActorsBody {
    pub actors: Vec<ActorSnapshot>,
}

/// Every live actor with its mailbox figures.
#[utoipa::path(tag = "admin", responses((status = 200, body = ActorsBody), crate::error::Unauthorized),
    security(("admin_token" = [])))]
#[get("/admin/actors")]
pub async fn list_actors(_: Admin, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
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
#[utoipa::path(tag = "admin", responses((status = 200, body = QueuesBody), crate::error::Unauthorized,
    crate::error::Unavailable),
    security(("admin_token" = [])))]
#[get("/admin/queues")]
pub async fn queues(_: Admin, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let mut shards = state.relay.queues().await?;
    // Receipts are bookkept in Postgres, per delivery; counted by the shard of their notification.
    let receipts = state.store.receipts_pending(state.relay.keys().shards()).await?;
    for s in &mut shards {
        s.receipts_pending = receipts.get(usize::from(s.shard)).copied().unwrap_or_default();
    }
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
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DlqBody {
    pub items: Vec<DeadLetterEntry>,
}

/// The newest dead letters of every shard.
#[utoipa::path(tag = "admin", params(DlqQuery),
    responses((status = 200, body = DlqBody), (status = 400, body = crate::error::ErrorBody), crate::error::Unauthorized,
    crate::error::Unavailable),
    security(("admin_token" = [])))]
#[get("/admin/dlq")]
pub async fn dlq(query: web::Query<DlqQuery>, _: Admin, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let limit = super::bounded("limit", query.limit, 50, 1..=1000)?;
    Ok(HttpResponse::Ok().json(DlqBody { items: state.relay.dead_letters(limit).await? }))
}

/// Which dead letters to requeue: the given ids, or (with `all`) the newest `limit`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequeueRequest {
    /// Ids as `GET /admin/dlq` shows them (`<shard>:<entry id>`).
    #[serde(default)]
    pub ids: Vec<String>,
    #[serde(default)]
    pub all: bool,
    /// With `all`: at most this many (default 1000, at most 10000). JSON Schema's `integer`
    /// includes `5.0`, so an integral float is taken too.
    #[serde(default, deserialize_with = "integral")]
    pub limit: Option<u64>,
}

/// An optional whole number, also when written as a float with no fraction (`1208.0`).
fn integral<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    use serde::de::Error;
    match Option::<serde_json::Number>::deserialize(d)? {
        None => Ok(None),
        Some(n) => match (n.as_u64(), n.as_f64()) {
            (Some(v), _) => Ok(Some(v)),
            (None, Some(f)) if f >= 0.0 && f.fract() == 0.0 && f <= u64::MAX as f64 => Ok(Some(f as u64)),
            _ => Err(D::Error::custom(format!("invalid value: {n}, expected a whole number from 1 to 10000"))),
        },
    }
}

/// Most ids one request may name, and the longest id: together they keep every body the
/// schema allows under the 64 KiB body limit.
pub const MAX_IDS: usize = 1000;
pub const MAX_ID_CHARS: usize = 47;
/// What an id looks like (`<shard>:<ms>-<seq>`, decimal digits).
const ID_PATTERN: &str = r"^[0-9]+:[0-9]+-[0-9]+$";

impl utoipa::ToSchema for RequeueRequest {}

impl utoipa::PartialSchema for RequeueRequest {
    /// `{"ids": [...]}` (1–1000 ids) or `{"all": true, "limit": N}`; nothing else.
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        let ids = |min: usize, max: usize| {
            serde_json::json!({"type": "array", "minItems": min, "maxItems": max,
                               "items": {"type": "string", "pattern": ID_PATTERN, "maxLength": MAX_ID_CHARS}})
        };
        let schema = serde_json::json!({
            "description": "Dead letters to requeue: the given ids, or with `all` the newest `limit` (default 1000). \
                            An id that names no dead letter (any more) is left out of the report.",
            "oneOf": [
                {"type": "object", "required": ["ids"], "additionalProperties": false,
                 "properties": {"ids": ids(1, MAX_IDS), "all": {"type": "boolean", "enum": [false]},
                                "limit": {"type": ["integer", "null"], "minimum": 1, "maximum": 10000}}},
                {"type": "object", "required": ["all"], "additionalProperties": false,
                 "properties": {"ids": ids(0, 0), "all": {"type": "boolean", "enum": [true]},
                                "limit": {"type": ["integer", "null"], "minimum": 1, "maximum": 10000}}},
            ],
        });
        // A constant document: it always deserialises (the OpenAPI test reads it back).
        serde_json::from_value(schema).unwrap_or_else(|_| utoipa::openapi::RefOr::T(Default::default()))
    }
}

/// Puts dead letters back into the stream as fresh first attempts (their targets are reset in
/// Postgres first). Letters without a job, or whose target is no longer failed, are skipped;
/// ids that name no dead letter are left out.
#[utoipa::path(tag = "admin", request_body(content = inline(RequeueRequest), content_type = "application/json"),
    responses((status = 200, body = RequeueReport),
              (status = 400, description = "malformed JSON or not Content-Type: application/json", body = crate::error::ErrorBody),
              crate::error::Unauthorized,
              (status = 413, description = "body over 64 KiB", body = crate::error::ErrorBody),
              (status = 422, description = "no ids and not `all`, both, a malformed id, or a limit out of range", body = crate::error::ErrorBody),
              crate::error::Unavailable),
    security(("admin_token" = [])))]
#[post("/admin/dlq/requeue")]
pub async fn requeue(
    req: HttpRequest,
    body: web::Json<serde_json::Value>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    state.auth.admin(&req)?;
    let body: RequeueRequest = crate::error::from_json(body.into_inner())?;
    if let Some(limit) = body.limit {
        if !(1..=10_000).contains(&limit) {
            return Err(ApiError::Unprocessable(format!("limit: must be between 1 and 10000, got {limit}")));
        }
    }
    let letters = match (body.all, body.ids.is_empty()) {
        // Checked above: 1..=10000.
        (true, true) => state.relay.dead_letters(body.limit.unwrap_or(1000) as usize).await?,
        (false, false) => {
            if body.ids.len() > MAX_IDS {
                return Err(ApiError::Unprocessable(format!("ids: at most {MAX_IDS}, got {}", body.ids.len())));
            }
            let mut ids = Vec::with_capacity(body.ids.len());
            for (i, id) in body.ids.iter().enumerate() {
                if !well_formed_id(id) || id.len() > MAX_ID_CHARS {
                    return Err(ApiError::Unprocessable(format!(
                        "ids[{i}]: '{}' is not <shard>:<entry id>",
                        id.escape_debug()
                    )));
                }
                // Well formed but beyond any shard or stream id: names no dead letter.
                ids.extend(DeadLetterEntry::parse_id(id));
            }
            state.relay.dead_letters_by_id(&ids).await?
        }
        (true, false) => return Err(ApiError::Unprocessable("ids: give ids or all, not both".into())),
        (false, true) => return Err(ApiError::Unprocessable("ids: required unless all is true".into())),
    };
    Ok(HttpResponse::Ok().json(requeue_dead_letters(&state.store, &state.relay, letters).await?))
}

/// `ID_PATTERN` by hand: digits, a colon, digits, a hyphen, digits.
fn well_formed_id(id: &str) -> bool {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    match id.split_once(':').map(|(shard, entry)| (shard, entry.split_once('-'))) {
        Some((shard, Some((ms, seq)))) => digits(shard) && digits(ms) && digits(seq),
        _ => false,
    }
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct MetricsQuery {
    /// Days back from today, 1–90 (default 7).
    #[param(minimum = 1, maximum = 90)]
    days: Option<u32>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MetricsBody {
    pub days: Vec<DayCounters>,
}

/// The daily Redis counters per event (and `event:provider`), today first.
#[utoipa::path(tag = "admin", params(MetricsQuery),
    responses((status = 200, body = MetricsBody), (status = 400, body = crate::error::ErrorBody), crate::error::Unauthorized,
    crate::error::Unavailable),
    security(("admin_token" = [])))]
#[get("/admin/metrics")]
pub async fn metrics(
    query: web::Query<MetricsQuery>,
    _: Admin,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let days = super::bounded("days", query.days, 7, 1..=90)?;
    Ok(HttpResponse::Ok().json(MetricsBody { days: state.relay.counters(days).await? }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_letter_ids_are_digits_colon_digits_hyphen_digits() {
        assert!(well_formed_id("0:1700000000000-0"));
        assert!(well_formed_id("99999:99999999999999999999999-1"), "well formed, names nothing");
        for bad in ["", "0", "0:", "0:1", "0:1-", ":1-1", "+1:1-1", "1:+1-1", "1:1-+1", "a:1-1", "1:1-1-1", "１:1-1"] {
            assert!(!well_formed_id(bad), "{bad}");
        }
    }
}
