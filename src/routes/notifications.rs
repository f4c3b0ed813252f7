//! What a user's app and a producer ask about notifications: the failed ones, retrying one,
//! reading one with its targets, and cancelling one before it is fanned out.

use super::{cursor, parse_uuid, ActingFor, AppState};
use crate::auth::Caller;
use crate::error::ApiError;
use actix_web::{get, post, web, HttpRequest, HttpResponse};
use notify_relay_engine::events::{self, Tally};
use notify_relay_engine::store::api::{
    cancel_refused, Cancellation, FailedNotification, NotificationDetail, NotificationState,
};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

pub const DEFAULT_LIMIT: i64 = 20;
pub const MAX_LIMIT: i64 = 100;

#[derive(Debug, Deserialize, IntoParams)]
pub struct FailedQuery {
    /// Page size, 1–100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<i64>,
    /// `next_cursor` of the previous page (opaque and signed: one this API did not issue is a 400).
    #[param(pattern = r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$")]
    cursor: Option<String>,
}

/// A page of failed notifications.
#[derive(Debug, Serialize, ToSchema)]
pub struct FailedPage {
    pub items: Vec<FailedNotification>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

/// The user's failed notifications, newest first.
#[utoipa::path(
    tag = "notifications",
    params(("user_id" = String, Path, min_length = 1, pattern = r"^[^\u0000]+$", description = "The user (the JWT's `sub`)"), FailedQuery),
    responses(
        (status = 200, body = FailedPage),
        (status = 400, description = "bad `limit`, a malformed or tampered cursor, or a user_id with a NUL", body = crate::error::ErrorBody),
        crate::error::Unauthorized,
        (status = 403, description = "another user's notifications", body = crate::error::ErrorBody),
        crate::error::Unavailable,
    ),
    security(("user_jwt" = []))
)]
#[get("/users/{user_id}/notifications/failed")]
pub async fn failed(
    query: web::Query<FailedQuery>,
    user: ActingFor,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let limit = super::bounded("limit", query.limit, DEFAULT_LIMIT, 1..=MAX_LIMIT)?;
    let after = match &query.cursor {
        Some(c) => Some(cursor::decode(&state.cursor_key, c)?),
        None => None,
    };
    // One more than asked: whether a next page exists, without a count.
    let mut items = state.store.failed_for_user(&user.user_id, after, limit + 1).await?;
    let next_cursor = match items.len() as i64 > limit {
        true => {
            items.truncate(limit as usize);
            items.last().map(|last| cursor::encode(&state.cursor_key, (last.failed_at, last.id)))
        }
        false => None,
    };
    Ok(HttpResponse::Ok().json(FailedPage { items, next_cursor }))
}

/// The caller, the notification's id and its state, once the caller may act on it: the admin
/// token, a service, or the owner's JWT (a topic notification has no owner). 400 for an id that
/// is not a UUID, 404 for one that names nothing.
async fn owned_notification(
    req: &HttpRequest,
    id: &str,
    state: &AppState,
) -> Result<(Caller, Uuid, NotificationState), ApiError> {
    let caller = state.auth.admin_or_user(req).await?;
    let id = parse_uuid("id", id)?;
    let Some(notification) = state.store.notification_state(id).await? else {
        return Err(ApiError::NotFound(format!("no notification {id}")));
    };
    caller.may_act_for_notification(notification.user_id.as_deref())?;
    Ok((caller, id, notification))
}

/// The notification is back to `pending`.
#[derive(Debug, Serialize, ToSchema)]
pub struct RetryAccepted {
    pub id: Uuid,
    pub status: String,
}

/// Re-enqueues a failed notification: it is fanned out again to the user's devices as they are
/// now (a device registered since gets it).
#[utoipa::path(
    tag = "notifications",
    params(("id" = uuid::Uuid, Path, description = "The notification's id")),
    responses(
        (status = 202, body = RetryAccepted),
        (status = 400, description = "the id is not a UUID", body = crate::error::ErrorBody),
        crate::error::Unauthorized,
        (status = 403, description = "another user's notification", body = crate::error::ErrorBody),
        (status = 404, body = crate::error::ErrorBody),
        (status = 409, description = "the notification is not failed", body = crate::error::ErrorBody),
        crate::error::Unavailable,
    ),
    security(("user_jwt" = []), ("admin_token" = []))
)]
#[post("/notifications/{id}/retry")]
pub async fn retry(
    req: HttpRequest,
    id: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (_, id, notification) = owned_notification(&req, &id, &state).await?;
    let conflict =
        || ApiError::Conflict(format!("notification {id} is {}; only failed ones can be retried", notification.status));
    if notification.status != "failed" {
        return Err(conflict());
    }
    if state.store.retry_failed(&[id]).await?.is_empty() {
        // Retried by someone else between the two statements.
        return Err(conflict());
    }
    Ok(HttpResponse::Accepted().json(RetryAccepted { id, status: "pending".into() }))
}

/// A notification with its status and every target; for a topic notification, the rows
/// written for its subscribers, counted by status (each subscriber's row carries its own
/// status and targets, and can be read by that user).
#[utoipa::path(
    tag = "notifications",
    params(("id" = uuid::Uuid, Path, description = "The notification's id")),
    responses(
        (status = 200, body = NotificationDetail),
        (status = 400, description = "the id is not a UUID", body = crate::error::ErrorBody),
        crate::error::Unauthorized,
        (status = 403, description = "another user's notification, or a topic notification on a user token", body = crate::error::ErrorBody),
        (status = 404, body = crate::error::ErrorBody),
        crate::error::Unavailable,
    ),
    security(("user_jwt" = []), ("admin_token" = []))
)]
#[get("/notifications/{id}")]
pub async fn show(
    req: HttpRequest,
    id: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let caller = state.auth.admin_or_user(&req).await?;
    let id = parse_uuid("id", &id)?;
    let Some(notification) = state.store.notification_detail(id).await? else {
        return Err(ApiError::NotFound(format!("no notification {id}")));
    };
    caller.may_act_for_notification(notification.user_id.as_deref())?;
    Ok(HttpResponse::Ok().json(notification))
}

/// The notification is cancelled: it will not be sent.
#[derive(Debug, Serialize, ToSchema)]
pub struct CancelledNotification {
    pub id: Uuid,
    pub status: String,
}

/// Cancels a notification before it is fanned out: a `scheduled` one (future `send_at`), or a
/// `pending` one the listener has not claimed yet. It ends `cancelled`, its `last_error` saying
/// who cancelled it. Race-free with the listener: whichever commits first wins.
#[utoipa::path(
    tag = "notifications",
    params(("id" = uuid::Uuid, Path, description = "The notification's id")),
    responses(
        (status = 200, body = CancelledNotification),
        (status = 400, description = "the id is not a UUID", body = crate::error::ErrorBody),
        crate::error::Unauthorized,
        (status = 403, description = "another user's notification, or a topic notification on a user token", body = crate::error::ErrorBody),
        (status = 404, body = crate::error::ErrorBody),
        (status = 409, description = "fanned out already (queued, retrying, delivered, failed, expired, cancelled, or a topic notification whose fan-out to its subscribers has begun): the message names its status", body = crate::error::ErrorBody),
        crate::error::Unavailable,
    ),
    security(("user_jwt" = []), ("admin_token" = []))
)]
#[post("/notifications/{id}/cancel")]
pub async fn cancel(
    req: HttpRequest,
    id: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (caller, id, _) = owned_notification(&req, &id, &state).await?;
    let by = canceller(&state, &req, &caller);
    match state.store.cancel(id, &by).await? {
        Cancellation::Cancelled { trace_id } => {
            let mut tally = Tally::default();
            tally.add(events::CANCELLED, None, 1);
            // The cancel is committed: a counter Redis could not take is no reason to answer
            // as if it had failed.
            if let Err(e) = state.relay.enqueue(&[], &tally, &events::today()).await {
                slog::warn!(state.log, "could not count a cancellation"; "event" => events::CANCELLED, "error" => e.chain());
            }
            slog::info!(state.log, "notification cancelled"; "event" => events::CANCELLED, "notification_id" => %id,
                        "trace_id" => trace_id, "by" => &by);
            Ok(HttpResponse::Ok().json(CancelledNotification { id, status: "cancelled".into() }))
        }
        // Deleted (retention) between the two statements.
        Cancellation::NotFound => Err(ApiError::NotFound(format!("no notification {id}"))),
        Cancellation::TooLate { status, fanning_out } => {
            Err(ApiError::Conflict(cancel_refused(id, &status, fanning_out)))
        }
    }
}

/// Who cancels, as the row's `last_error` and the log line name them.
fn canceller(state: &AppState, req: &HttpRequest, caller: &Caller) -> String {
    match caller {
        _ if state.auth.is_admin(req) => "the admin token".into(),
        Caller::User { sub, .. } => format!("user {sub}"),
        Caller::Service => "a service_role token".into(),
    }
}
