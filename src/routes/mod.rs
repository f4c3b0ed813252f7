//! The HTTP API, one file per resource. It runs on the same actix System as the engine.

pub mod admin;
pub mod cursor;
pub mod devices;
pub mod docs;
pub mod health;
pub mod notifications;
pub mod topics;

use crate::auth::{Authenticator, Caller};
use crate::error::ApiError;
use actix_web::dev::Payload;
use actix_web::{web, FromRequest, HttpRequest};
use futures_util::future::LocalBoxFuture;
use notify_relay_engine::relay::Relay;
use notify_relay_engine::store::Store;
use notify_relay_engine::Registry;
use std::ops::RangeInclusive;
use uuid::Uuid;

/// What every handler can reach.
pub struct AppState {
    pub store: Store,
    pub relay: Relay,
    pub registry: Registry,
    pub auth: Authenticator,
    /// Signs pagination cursors.
    pub cursor_key: Vec<u8>,
    /// `devices.max_per_user`.
    pub max_devices_per_user: u32,
    /// `topics.max_per_user`.
    pub max_topics_per_user: u32,
    pub log: slog::Logger,
}

/// An operator route's caller: the request carries `Authorization: Bearer <auth.admin_token>`
/// (401 otherwise). A handler lists it after its query, whose errors are answered first, as they
/// were before credentials were looked at.
pub struct Admin;

impl FromRequest for Admin {
    type Error = actix_web::Error;
    type Future = std::future::Ready<Result<Admin, actix_web::Error>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        std::future::ready(app_state(req).and_then(|state| Ok(state.auth.admin(req).map(|()| Admin)?)))
    }
}

/// A user route's caller, checked against the path's `{user_id}` by [`acting_for`]. A handler
/// lists it after its path and query, whose errors are answered first.
pub struct ActingFor {
    pub caller: Caller,
    /// The path's `{user_id}`.
    pub user_id: String,
}

impl FromRequest for ActingFor {
    type Error = actix_web::Error;
    type Future = LocalBoxFuture<'static, Result<ActingFor, actix_web::Error>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        #[derive(serde::Deserialize)]
        struct UserSegment {
            user_id: String,
        }
        let req = req.clone();
        Box::pin(async move {
            let state = app_state(&req)?;
            let UserSegment { user_id } = web::Path::<UserSegment>::extract(&req).await?.into_inner();
            let caller = acting_for(&req, state, &user_id).await?;
            Ok(ActingFor { caller, user_id })
        })
    }
}

/// The caller of a user route, once it may act for `user_id`: that user's token, or
/// `service_role` (401, 403 otherwise), and `user_id` one Postgres can store (400 otherwise).
pub async fn acting_for(req: &HttpRequest, state: &AppState, user_id: &str) -> Result<Caller, ApiError> {
    let caller = state.auth.user(req).await?;
    caller.may_act_for(user_id)?;
    check_user_id(user_id)?;
    Ok(caller)
}

fn app_state(req: &HttpRequest) -> Result<&web::Data<AppState>, actix_web::Error> {
    req.app_data::<web::Data<AppState>>()
        .ok_or_else(|| actix_web::error::ErrorInternalServerError("the API state is not configured"))
}

pub fn configure(cfg: &mut actix_web::web::ServiceConfig) {
    use utoipa::OpenApi;
    cfg.service(health::healthz)
        .service(health::readyz)
        .service(notifications::failed)
        .service(notifications::retry)
        .service(notifications::show)
        .service(notifications::cancel)
        .service(topics::subscribe)
        .service(topics::unsubscribe)
        .service(topics::list)
        .service(devices::register)
        .service(devices::remove)
        .service(admin::list_actors)
        .service(admin::queues)
        .service(admin::dlq)
        .service(admin::requeue)
        .service(admin::metrics)
        .service(docs::swagger_ui());
    // A known path with a method it does not take: 405 with `Allow`, not the 404 actix-web
    // answers by default. Registered after the routes above (whose method guards then failed),
    // for every path of the OpenAPI document, so the two cannot disagree.
    for (path, item) in docs::ApiDoc::openapi().paths.paths {
        let allow = allowed_methods(&item).join(", ");
        cfg.service(actix_web::web::resource(path).to(move || {
            let allow = allow.clone();
            async move { method_not_allowed(&allow) }
        }));
    }
}

/// The methods the OpenAPI document gives a path.
fn allowed_methods(item: &utoipa::openapi::PathItem) -> Vec<&'static str> {
    [
        ("GET", item.get.is_some()),
        ("PUT", item.put.is_some()),
        ("POST", item.post.is_some()),
        ("DELETE", item.delete.is_some()),
        ("PATCH", item.patch.is_some()),
    ]
    .into_iter()
    .filter_map(|(m, there)| there.then_some(m))
    .collect()
}

fn method_not_allowed(allow: &str) -> actix_web::HttpResponse {
    use actix_web::ResponseError;
    ApiError::MethodNotAllowed { allow: allow.to_string() }.error_response()
}

/// A path segment that must be a UUID, in its hyphenated form (`format: uuid`): 400 naming it
/// otherwise. The other forms `Uuid::parse_str` takes (simple, braced, URN) are refused too, so
/// the server accepts exactly what the OpenAPI document says.
pub fn parse_uuid(name: &str, raw: &str) -> Result<Uuid, ApiError> {
    let bad = || ApiError::BadRequest(format!("{name} must be a UUID, got '{}'", raw.escape_debug()));
    let hyphenated = raw.len() == 36
        && raw
            .char_indices()
            .all(|(i, c)| if matches!(i, 8 | 13 | 18 | 23) { c == '-' } else { c.is_ascii_hexdigit() });
    if !hyphenated {
        return Err(bad());
    }
    raw.parse().map_err(|_| bad())
}

/// A numeric query parameter with bounds: its value, `default` when absent, and a 400 naming it
/// when out of `range`. The query structs stay one per route, as each one's doc comments and
/// `#[param(minimum, maximum)]` are what the OpenAPI document says about it; only the check is
/// shared, so that it reads the same on every route.
pub fn bounded<T>(name: &str, value: Option<T>, default: T, range: RangeInclusive<T>) -> Result<T, ApiError>
where
    T: PartialOrd + Copy + std::fmt::Display,
{
    let value = value.unwrap_or(default);
    match range.contains(&value) {
        true => Ok(value),
        false => Err(ApiError::BadRequest(format!(
            "{name} must be between {} and {}, got {value}",
            range.start(),
            range.end()
        ))),
    }
}

/// The `user_id` pattern of the OpenAPI document: anything Postgres can store as text (no NUL).
pub const USER_ID_PATTERN: &str = r"^[^\u0000]+$";

/// A `{user_id}` path segment: 400 if Postgres could not store it (a NUL character).
pub fn check_user_id(raw: &str) -> Result<(), ApiError> {
    match raw.is_empty() || raw.contains('\0') {
        true => Err(ApiError::BadRequest("user_id must be non-empty text without NUL characters".into())),
        false => Ok(()),
    }
}

/// `raw` as one URL path segment: every byte but the unreserved ones (RFC 3986) as `%XX`, so a
/// user id of any text makes a valid `Location` header.
pub fn path_segment(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for b in raw.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => out.push(char::from(b)),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_id_of_any_text_becomes_one_encoded_path_segment() {
        assert_eq!(path_segment("alice-1_2.3~"), "alice-1_2.3~");
        assert_eq!(path_segment("a/b c\u{85}é\u{1b}"), "a%2Fb%20c%C2%85%C3%A9%1B");
        assert!(actix_web::http::header::HeaderValue::from_str(&path_segment("\u{85}\u{1b}\r\n")).is_ok());
    }

    #[test]
    fn only_hyphenated_uuids_are_accepted() {
        let id = "67e55044-10b1-426f-9247-bb680e5fe0c8";
        assert_eq!(parse_uuid("id", id).unwrap().to_string(), id);
        assert!(parse_uuid("id", &id.to_uppercase()).is_ok());
        for bad in [
            "67e5504410b1426f9247bb680e5fe0c8",
            "{67e55044-10b1-426f-9247-bb680e5fe0c8}",
            "urn:uuid:67e55044-10b1-426f-9247-bb680e5fe0c8",
            "67e55044-10b1-426f-9247-bb680e5fe0cé",
            "",
        ] {
            assert!(parse_uuid("id", bad).unwrap_err().to_string().contains("id must be a UUID"), "{bad}");
        }
    }

    #[test]
    fn a_bounded_parameter_takes_its_default_and_names_itself_out_of_range() {
        assert_eq!(bounded("limit", None, 50, 1..=1000).unwrap(), 50);
        assert_eq!(bounded("limit", Some(1000), 50, 1..=1000).unwrap(), 1000);
        for (value, message) in
            [(0, "limit must be between 1 and 1000, got 0"), (1001, "limit must be between 1 and 1000, got 1001")]
        {
            match bounded("limit", Some(value), 50, 1..=1000) {
                Err(ApiError::BadRequest(m)) => assert_eq!(m, message),
                other => panic!("{value}: {other:?}"),
            }
        }
        let err = bounded("days", Some(91u32), 7, 1..=90).unwrap_err();
        assert_eq!(err.to_string(), "days must be between 1 and 90, got 91");
    }

    #[test]
    fn a_user_id_with_a_nul_is_a_400() {
        assert!(check_user_id("alice").is_ok());
        assert!(matches!(check_user_id("a\0b"), Err(ApiError::BadRequest(_))));
        assert!(check_user_id("").is_err());
    }
}
