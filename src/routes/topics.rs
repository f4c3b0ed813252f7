//! A user's topics: subscribing, unsubscribing and listing. A notification inserted for a topic
//! (`topic` set, `user_id` NULL) reaches every subscriber's active devices.

use super::{ActingFor, AppState};
use crate::error::ApiError;
use actix_web::{delete, get, put, web, HttpResponse};
use notify_relay_engine::job::check_topic;
use notify_relay_engine::store::api::{Subscribe, Subscription, UserTopic};
use serde::Serialize;
use utoipa::ToSchema;

/// The topic-name rule of `notify_relay_engine::job::check_topic`, for the OpenAPI document:
/// 1 to 256 (`MAX_TOPIC_BYTES`) letters, digits and `_ . ~ : -` (all ASCII, so bytes and
/// characters count the same).
pub const TOPIC_PATTERN: &str = r"^[A-Za-z0-9_.~:-]+$";

/// A `{topic}` path segment: 400 naming the rule unless it is a topic name.
fn parse_topic(raw: &str) -> Result<&str, ApiError> {
    check_topic(raw).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    Ok(raw)
}

/// Subscribes the user to a topic: 201 when new, 200 (unchanged) when subscribed already.
#[utoipa::path(
    tag = "topics",
    params(
        ("user_id" = String, Path, min_length = 1, pattern = r"^[^\u0000]+$", description = "The user (the JWT's `sub`)"),
        ("topic" = String, Path, min_length = 1, max_length = 256, pattern = r"^[A-Za-z0-9_.~:-]+$", description = "The topic: 1 to 256 letters, digits and _ . ~ : -"),
    ),
    responses(
        (status = 201, description = "subscribed", body = Subscription),
        (status = 200, description = "subscribed already: nothing changed", body = Subscription),
        (status = 400, description = "a topic that breaks the naming rule, or a user_id with a NUL", body = crate::error::ErrorBody),
        crate::error::Unauthorized,
        (status = 403, description = "another user's topics", body = crate::error::ErrorBody),
        (status = 409, description = "the user has `topics.max_per_user` topics already", body = crate::error::ErrorBody),
        crate::error::Unavailable,
    ),
    security(("user_jwt" = []))
)]
#[put("/users/{user_id}/topics/{topic}")]
pub async fn subscribe(
    path: web::Path<(String, String)>,
    user: ActingFor,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (_, topic) = path.into_inner();
    let topic = parse_topic(&topic)?;
    let user_id = user.user_id;
    let max = i64::from(state.max_topics_per_user);
    match state.store.subscribe(&user_id, topic, max).await? {
        Subscribe::Subscribed { subscription, created: true } => Ok(HttpResponse::Created().json(subscription)),
        Subscribe::Subscribed { subscription, created: false } => Ok(HttpResponse::Ok().json(subscription)),
        Subscribe::TooManyTopics { max } => Err(ApiError::Conflict(format!(
            "topic: user {user_id} already has {max} topics, the most topics.max_per_user allows; unsubscribe from one first"
        ))),
    }
}

/// Ends the user's subscription to a topic. Unsubscribing again is a 404.
#[utoipa::path(
    tag = "topics",
    params(
        ("user_id" = String, Path, min_length = 1, pattern = r"^[^\u0000]+$", description = "The user (the JWT's `sub`)"),
        ("topic" = String, Path, min_length = 1, max_length = 256, pattern = r"^[A-Za-z0-9_.~:-]+$", description = "The topic"),
    ),
    responses(
        (status = 204, description = "unsubscribed"),
        (status = 400, description = "a topic that breaks the naming rule, or a user_id with a NUL", body = crate::error::ErrorBody),
        crate::error::Unauthorized,
        (status = 403, body = crate::error::ErrorBody),
        (status = 404, description = "the user is not subscribed to this topic", body = crate::error::ErrorBody),
        crate::error::Unavailable,
    ),
    security(("user_jwt" = []))
)]
#[delete("/users/{user_id}/topics/{topic}")]
pub async fn unsubscribe(
    path: web::Path<(String, String)>,
    user: ActingFor,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (_, topic) = path.into_inner();
    let topic = parse_topic(&topic)?;
    let user_id = user.user_id;
    match state.store.unsubscribe(&user_id, topic).await? {
        true => Ok(HttpResponse::NoContent().finish()),
        false => Err(ApiError::NotFound(format!("user {user_id} is not subscribed to {topic}"))),
    }
}

/// A user's topics.
#[derive(Debug, Serialize, ToSchema)]
pub struct TopicList {
    /// By topic name.
    pub items: Vec<UserTopic>,
}

/// The user's topics, by name (at most `topics.max_per_user` of them).
#[utoipa::path(
    tag = "topics",
    params(("user_id" = String, Path, min_length = 1, pattern = r"^[^\u0000]+$", description = "The user (the JWT's `sub`)")),
    responses(
        (status = 200, body = TopicList),
        (status = 400, description = "a user_id with a NUL", body = crate::error::ErrorBody),
        crate::error::Unauthorized,
        (status = 403, body = crate::error::ErrorBody),
        crate::error::Unavailable,
    ),
    security(("user_jwt" = []))
)]
#[get("/users/{user_id}/topics")]
pub async fn list(user: ActingFor, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let items = state.store.topics_of(&user.user_id).await?;
    Ok(HttpResponse::Ok().json(TopicList { items }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify_relay_engine::job::MAX_TOPIC_BYTES;
    use utoipa::OpenApi;

    #[test]
    fn a_topic_is_checked_by_the_engine_rule_with_a_400_naming_it() {
        for name in ["news", "a.b~c:e-f_g", "0", &"a".repeat(MAX_TOPIC_BYTES)] {
            assert!(parse_topic(name).is_ok(), "{name}");
        }
        for name in ["", "a b", "a/b", "é", "a\0b", "a%3Fb", &"a".repeat(MAX_TOPIC_BYTES + 1)] {
            match parse_topic(name) {
                Err(ApiError::BadRequest(m)) => assert!(m.starts_with("topic: must be 1 to 256 bytes"), "{m}"),
                other => panic!("{name:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn the_openapi_document_states_the_topic_rule_on_both_routes() {
        let doc = serde_json::to_value(super::super::docs::ApiDoc::openapi()).unwrap();
        for method in ["put", "delete"] {
            let params = doc["paths"]["/users/{user_id}/topics/{topic}"][method]["parameters"].as_array().unwrap();
            let topic = &params.iter().find(|p| p["name"] == "topic").unwrap()["schema"];
            assert_eq!(topic["pattern"], TOPIC_PATTERN, "{method}");
            assert_eq!(topic["maxLength"], MAX_TOPIC_BYTES, "{method}");
            assert_eq!(topic["minLength"], 1, "{method}");
        }
    }
}
