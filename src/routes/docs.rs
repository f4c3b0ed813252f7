//! `GET /openapi.json`, generated from the handlers' annotations, and `GET /docs`, Swagger UI
//! served from assets compiled into the binary (no CDN: it works offline).

use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_swagger_ui::SwaggerUi;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "notify-relay",
        description = "Pull back the notifications that could not be pushed, retry them, read and cancel notifications, register devices, subscribe to topics, and inspect the relay."
    ),
    paths(
        super::health::healthz,
        super::health::readyz,
        super::notifications::failed,
        super::notifications::retry,
        super::notifications::show,
        super::notifications::cancel,
        super::topics::subscribe,
        super::topics::unsubscribe,
        super::topics::list,
        super::devices::register,
        super::devices::remove,
        super::admin::list_actors,
        super::admin::queues,
        super::admin::dlq,
        super::admin::requeue,
        super::admin::metrics,
    ),
    modifiers(&Security),
    tags(
        (name = "notifications", description = "A user's failed notifications (Supabase Auth JWT); a notification's status, and cancelling it (its owner, service_role or the admin token)"),
        (name = "devices", description = "A user's devices (Supabase Auth JWT)"),
        (name = "topics", description = "A user's topic subscriptions (Supabase Auth JWT)"),
        (name = "admin", description = "Operators (auth.admin_token)"),
        (name = "health", description = "Probes"),
    )
)]
pub struct ApiDoc;

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let mut user = Http::new(HttpAuthScheme::Bearer);
        user.bearer_format = Some("JWT".into());
        user.description = Some("A Supabase Auth access token (ES256/RS256 via JWKS, or legacy HS256)".into());
        components.add_security_scheme("user_jwt", SecurityScheme::Http(user));
        let mut admin = Http::new(HttpAuthScheme::Bearer);
        admin.description = Some("auth.admin_token".into());
        components.add_security_scheme("admin_token", SecurityScheme::Http(admin));
    }
}

/// `GET /openapi.json` and Swagger UI at `/docs/`, which reads it.
pub fn swagger_ui() -> SwaggerUi {
    SwaggerUi::new("/docs/{_:.*}").url("/openapi.json", ApiDoc::openapi())
}
