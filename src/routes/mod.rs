//! The HTTP API, one file per resource. It runs on the same actix System as the engine.

pub mod admin;
pub mod health;

use crate::configuration::Secret;
use actors::registry::Registry;
use actors::relay::Relay;
use actors::store::Store;

/// What every handler can reach.
pub struct AppState {
    pub store: Store,
    pub relay: Relay,
    pub registry: Registry,
    pub admin_token: Option<Secret>,
}

pub fn configure(cfg: &mut actix_web::web::ServiceConfig) {
    cfg.service(health::healthz).service(health::readyz).service(admin::actors);
}
