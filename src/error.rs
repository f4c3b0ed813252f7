//! API errors: one enum, one table from error to status and code, one JSON shape:
//! `{"error": {"code": "...", "message": "..."}}`. Unexpected errors are logged with their
//! cause and answered with an opaque 500. The log gets the error chain, never row data: of a
//! Postgres error only its severity, SQLSTATE, message and the names of the table, column and
//! constraint, not its DETAIL, HINT or WHERE (`Key (provider, token)=(…) already exists`,
//! `Failing row contains (…)`), and quoted values that are not identifiers are masked.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    /// A well-formed body with a bad value; the message names the field.
    #[error("{0}")]
    Unprocessable(String),
    #[error("{0}")]
    NotFound(String),
    /// A known path with a method it does not take; `allow` lists the ones it does.
    #[error("this path takes only {allow}")]
    MethodNotAllowed { allow: String },
    #[error("{0}")]
    Unavailable(String),
    /// Postgres or Redis cannot be reached (or the engine is stopping): a 503, `what` named,
    /// the cause logged.
    #[error("{what} is unavailable; try again later")]
    DependencyDown {
        what: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl ApiError {
    /// The one table (meilisearch's `make_error_codes!` shape): each error's HTTP status and
    /// its stable `code`, side by side in one row, so that the two cannot drift apart.
    pub fn parts(&self) -> (StatusCode, &'static str) {
        use ApiError as E;
        match self {
            E::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            E::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            E::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            E::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            E::MethodNotAllowed { .. } => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            E::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            E::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            E::Unprocessable(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_value"),
            E::Unavailable(_) | E::DependencyDown { .. } => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            E::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.parts().0
    }

    fn error_response(&self) -> HttpResponse {
        let (status, code) = self.parts();
        let mut resp = HttpResponse::build(status);
        match self {
            ApiError::Unauthorized(_) => {
                resp.insert_header(("www-authenticate", "Bearer"));
            }
            ApiError::MethodNotAllowed { allow } => {
                resp.insert_header(("allow", allow.as_str()));
            }
            _ => {}
        }
        resp.json(ErrorBody::new(code, self.to_string()))
    }
}

impl ApiError {
    /// What the log says about this error: its message and its sources', with no row data
    /// (see the module comment).
    pub fn log_text(&self) -> String {
        match self {
            ApiError::Internal(source) => format!("internal error: {}", loggable(source.as_ref())),
            ApiError::DependencyDown { what, source } => format!("{what} unavailable: {}", loggable(source.as_ref())),
            other => mask_values(&other.to_string()),
        }
    }
}

/// An error and its sources, one message each, joined by `: `, safe to log: Postgres errors
/// without their DETAIL/HINT/WHERE, quoted values masked.
pub fn loggable(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = next {
        let text = match e.downcast_ref::<tokio_postgres::error::DbError>() {
            Some(db) => db_error(db),
            None => mask_values(&e.to_string()),
        };
        // Wrappers often repeat their source's message ("postgres: db error" then "db error").
        if !parts.last().is_some_and(|last| last.contains(&text)) {
            parts.push(text);
        }
        next = e.source();
    }
    parts.join(": ")
}

fn db_error(db: &tokio_postgres::error::DbError) -> String {
    let mut out = format!("{} {}: {}", db.severity(), db.code().code(), mask_values(db.message()));
    for (what, name) in [("table", db.table()), ("column", db.column()), ("constraint", db.constraint())] {
        if let Some(name) = name {
            out.push_str(&format!(" ({what} {name})"));
        }
    }
    out
}

/// Masks double-quoted text that is not an identifier (Postgres quotes both names and input
/// values: `relation "device"` stays, `invalid input syntax for type uuid: "ExponentPushToken[…]"`
/// does not): an identifier is at most 63 letters, digits, `_`, `$` or `.`, not starting with a
/// digit. A push token or an email address never is one.
pub fn mask_values(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(open) = rest.find('"') {
        out.push_str(&rest[..=open]);
        let after = &rest[open + 1..];
        let Some(close) = after.find('"') else {
            // An unmatched quote: mask the rest, it may be a cut value.
            out.push('…');
            return out;
        };
        let quoted = &after[..close];
        let identifier = !quoted.is_empty()
            && quoted.len() <= 63
            && !quoted.starts_with(|c: char| c.is_ascii_digit())
            && quoted.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '$' | '.'));
        out.push_str(if identifier { quoted } else { "…" });
        out.push('"');
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    out
}

impl From<notify_relay_engine::EngineError> for ApiError {
    /// Postgres or Redis out of reach is a 503 (the client may try again); anything else a 500.
    fn from(e: notify_relay_engine::EngineError) -> Self {
        use notify_relay_engine::EngineError as E;
        let what = match &e {
            E::Pool(_) => Some("postgres"),
            E::Postgres(pg) if postgres_unreachable(pg) => Some("postgres"),
            E::Redis(r) if redis_unreachable(r) => Some("redis"),
            E::Mailbox(_) => Some("the relay engine"),
            _ => None,
        };
        match what {
            Some(what) => ApiError::DependencyDown { what, source: Box::new(e) },
            None => ApiError::Internal(Box::new(e)),
        }
    }
}

/// A lost or refused connection, or a server going away (SQLSTATE classes 08 connection
/// exception, 53 insufficient resources, 57P operator intervention).
fn postgres_unreachable(e: &tokio_postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    if let Some(code) = e.code() {
        let code = code.code();
        return code.starts_with("08") || code.starts_with("53") || code.starts_with("57P");
    }
    std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>())
}

fn redis_unreachable(e: &redis::RedisError) -> bool {
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_refusal()
        || e.is_connection_dropped()
        || matches!(e.code(), Some("LOADING" | "BUSY" | "TRYAGAIN" | "CLUSTERDOWN" | "MASTERDOWN"))
}

/// The 401 every authenticated route can answer, for the OpenAPI document (listed in a route's
/// `responses(...)` by name).
#[derive(utoipa::IntoResponses)]
#[response(status = 401, description = "no token, or one that is malformed, expired, or not for this route")]
pub struct Unauthorized(pub ErrorBody);

/// The 503 every route that reads Postgres or Redis can answer, for the OpenAPI document.
#[derive(utoipa::IntoResponses)]
#[response(status = 503, description = "Postgres or Redis cannot be reached; try again")]
pub struct Unavailable(pub ErrorBody);

/// `{"error": {"code", "message"}}`, for the OpenAPI document.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

impl ErrorBody {
    /// The body of every error response: [`ApiError`]'s, and those the routes' fallbacks answer.
    pub fn new(code: &str, message: impl Into<String>) -> ErrorBody {
        ErrorBody { error: ErrorDetail { code: code.to_string(), message: message.into() } }
    }
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable, machine-readable: bad_request, unauthorized, forbidden, not_found, conflict,
    /// payload_too_large, invalid_value, method_not_allowed, unavailable, internal.
    pub code: String,
    /// What was wrong, for people; names the field where one is at fault.
    pub message: String,
}

/// actix-web's own extractor errors, in our shape: a body over the limit is 413, JSON that does
/// not parse 400, JSON of the wrong shape (missing field, wrong type) 422 naming the field.
pub fn json_error(err: actix_web::error::JsonPayloadError, _req: &actix_web::HttpRequest) -> actix_web::Error {
    use actix_web::error::JsonPayloadError as J;
    let api = match &err {
        J::Overflow { limit } | J::OverflowKnownLength { limit, .. } => {
            ApiError::PayloadTooLarge(format!("body over {limit} bytes"))
        }
        J::ContentType => ApiError::BadRequest("expected Content-Type: application/json".into()),
        J::Deserialize(e) if e.is_data() => ApiError::Unprocessable(e.to_string()),
        J::Deserialize(e) => ApiError::BadRequest(format!("malformed JSON: {e}")),
        other => ApiError::BadRequest(other.to_string()),
    };
    api.into()
}

/// A JSON body (already parsed) as `T`: a missing field, an unknown one or a value of the wrong
/// type is a 422 whose message starts with the field's path.
pub fn from_json<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        ApiError::Unprocessable(match path.as_str() {
            "." => inner.to_string(),
            _ => format!("{path}: {inner}"),
        })
    })
}

/// Query strings that do not parse (e.g. `limit=abc`): 400 naming the parameter.
pub fn query_error(err: actix_web::error::QueryPayloadError, _req: &actix_web::HttpRequest) -> actix_web::Error {
    ApiError::BadRequest(format!("bad query string: {err}")).into()
}

/// What the request log says about the error behind a response (see [`ApiError::log_text`]).
pub fn log_text(err: &actix_web::Error) -> String {
    match err.as_error::<ApiError>() {
        Some(api) => api.log_text(),
        None => mask_values(&err.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_or_redis_out_of_reach_is_a_503_and_anything_else_a_500() {
        use notify_relay_engine::EngineError as E;
        let refused = redis::RedisError::from(std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused"));
        let timeout = deadpool_postgres::PoolError::Timeout(deadpool_postgres::TimeoutType::Wait);
        for e in [E::Redis(refused), E::Pool(timeout)] {
            let api = ApiError::from(e);
            assert_eq!(api.parts(), (StatusCode::SERVICE_UNAVAILABLE, "unavailable"), "{api}");
            assert!(api.log_text().contains("unavailable: "), "the cause is logged: {}", api.log_text());
        }
        let wrongtype =
            redis::RedisError::from((redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError), "WRONGTYPE"));
        assert_eq!(ApiError::from(E::Redis(wrongtype)).status_code(), StatusCode::INTERNAL_SERVER_ERROR);
        let provider = notify_relay_engine::providers::ProviderError::Email(
            notify_relay_engine::providers::email::EmailError::NoCa,
        );
        assert_eq!(ApiError::from(E::from(provider)).status_code(), StatusCode::INTERNAL_SERVER_ERROR);
    }

    #[actix_web::test]
    async fn every_error_answers_its_rows_status_and_code_in_the_one_json_shape() {
        let cases = [
            (ApiError::BadRequest("b".into()), 400, "bad_request", None),
            (ApiError::Unauthorized("u".into()), 401, "unauthorized", Some(("www-authenticate", "Bearer"))),
            (ApiError::Forbidden("f".into()), 403, "forbidden", None),
            (ApiError::NotFound("no such route".into()), 404, "not_found", None),
            (
                ApiError::MethodNotAllowed { allow: "GET, POST".into() },
                405,
                "method_not_allowed",
                Some(("allow", "GET, POST")),
            ),
            (ApiError::Conflict("c".into()), 409, "conflict", None),
            (ApiError::PayloadTooLarge("p".into()), 413, "payload_too_large", None),
            (ApiError::Unprocessable("v".into()), 422, "invalid_value", None),
            (ApiError::Unavailable("a".into()), 503, "unavailable", None),
            (ApiError::Internal("secret detail".into()), 500, "internal", None),
        ];
        for (err, status, code, header) in cases {
            let message = err.to_string();
            let resp = err.error_response();
            assert_eq!((resp.status().as_u16(), err.status_code().as_u16()), (status, status), "{err}");
            if let Some((name, value)) = header {
                assert_eq!(resp.headers().get(name).and_then(|v| v.to_str().ok()), Some(value), "{err}");
            }
            let bytes = actix_web::body::to_bytes(resp.into_body()).await.unwrap();
            let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(body, serde_json::json!({"error": {"code": code, "message": message}}), "{err}");
        }
        // Opaque: an internal error's cause goes to the log, never to the client.
        assert_eq!(ApiError::Internal("secret detail".into()).to_string(), "internal error");
        assert_eq!(ApiError::MethodNotAllowed { allow: "DELETE".into() }.to_string(), "this path takes only DELETE");
    }

    #[test]
    fn quoted_values_are_masked_and_identifiers_kept() {
        assert_eq!(
            mask_values(r#"duplicate key value violates unique constraint "device_provider_token_key""#),
            r#"duplicate key value violates unique constraint "device_provider_token_key""#
        );
        assert_eq!(
            mask_values(r#"invalid input syntax for type uuid: "ExponentPushToken[abc]""#),
            r#"invalid input syntax for type uuid: "…""#
        );
        assert_eq!(mask_values(r#"a "alice@example.com" b "public.device" c"#), r#"a "…" b "public.device" c"#);
        assert_eq!(mask_values(r#"cut "alice@exa"#), r#"cut "…"#);
        assert_eq!(mask_values(&format!(r#"hex "{}""#, "ab".repeat(32))), r#"hex "…""#);
        assert_eq!(mask_values("no quotes"), "no quotes");
    }
}
