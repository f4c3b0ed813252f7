//! The HTTP API, one file per resource. It runs on the same actix System as the engine.

pub mod admin;
pub mod cursor;
pub mod devices;
pub mod docs;
pub mod health;
pub mod notifications;

use crate::auth::Authenticator;
use crate::error::ApiError;
use actors::registry::Registry;
use actors::relay::Relay;
use actors::store::Store;
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
}

pub fn configure(cfg: &mut actix_web::web::ServiceConfig) {
    cfg.service(health::healthz)
        .service(health::readyz)
        .service(notifications::failed)
        .service(notifications::retry)
        .service(devices::register)
        .service(devices::remove)
        .service(admin::list_actors)
        .service(admin::queues)
        .service(admin::dlq)
        .service(admin::requeue)
        .service(admin::metrics)
        .service(docs::swagger_ui());
}

/// A path segment that must be a UUID: 400 naming it otherwise.
pub fn parse_uuid(name: &str, raw: &str) -> Result<Uuid, ApiError> {
    raw.parse().map_err(|_| ApiError::BadRequest(format!("{name} must be a UUID, got '{raw}'")))
}
