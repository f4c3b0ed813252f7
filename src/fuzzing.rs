//! The parsers of outside input of the HTTP API, for the cargo-fuzz targets in `fuzz/`
//! (`scripts/fuzz`): the `Authorization` header, JWTs and the pagination cursor. Not an API:
//! nothing else may use it.

use std::future::Future;
use std::task::{Context, Poll, Waker};

pub use crate::auth::{Authenticator, Caller};
pub use crate::configuration::{AuthSettings, Secret};
pub use crate::error::ApiError;
pub use crate::routes::cursor::{decode as decode_cursor, encode as encode_cursor};
pub use actix_web::http::header::HeaderValue;

/// The HTTP status an error is answered with.
pub fn status_of(error: &ApiError) -> u16 {
    actix_web::ResponseError::status_code(error).as_u16()
}

/// `auth::bearer_token`: the token of an `Authorization` header, or the 401.
pub fn bearer_token(header: Option<&HeaderValue>) -> Result<&str, ApiError> {
    crate::auth::bearer_token(header)
}

/// `Authenticator::verify`, run to completion: with a secret or a JWKS file (no JWKS URL) it
/// never waits. `None` if it did wait.
pub fn verify_now(auth: &Authenticator, token: &str) -> Option<Result<Caller, ApiError>> {
    let mut verify = std::pin::pin!(auth.verify(token));
    match verify.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(result) => Some(result),
        Poll::Pending => None,
    }
}
