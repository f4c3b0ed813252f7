//! A user's devices: registering a push token (or email address) and removing it.

use super::{parse_uuid, AppState};
use crate::error::ApiError;
use actix_web::{delete, post, web, HttpRequest, HttpResponse};
use actors::job::Provider;
use actors::store::api::{Device, Registration};
use serde::Deserialize;
use utoipa::ToSchema;

/// A device to register.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewDevice {
    /// `expo`, `fcm`, `apns` or `email`.
    pub provider: String,
    /// Expo push token, FCM registration token, APNs device token (hex), or email address.
    pub token: String,
}

/// Checks a token's shape for its provider; the error names the field.
pub fn validate_token(provider: Provider, token: &str) -> Result<(), String> {
    let t = token.trim();
    if t.is_empty() || t.len() != token.len() {
        return Err("token: must be non-empty, without surrounding spaces".into());
    }
    if token.len() > 4096 {
        return Err("token: longer than 4096 characters".into());
    }
    let ok = match provider {
        Provider::Expo => {
            (token.starts_with("ExponentPushToken[") || token.starts_with("ExpoPushToken[")) && token.ends_with(']')
        }
        Provider::Fcm => !token.chars().any(char::is_whitespace),
        Provider::Apns => {
            token.len() >= 64 && token.len().is_multiple_of(2) && token.chars().all(|c| c.is_ascii_hexdigit())
        }
        Provider::Email => {
            let (local, domain) = token.split_once('@').unwrap_or(("", ""));
            !local.is_empty()
                && domain.contains('.')
                && !token.chars().any(|c| c.is_whitespace() || c == '<' || c == '>')
        }
    };
    match ok {
        true => Ok(()),
        false => Err(format!(
            "token: not a valid {provider} token ({})",
            match provider {
                Provider::Expo => "expected ExponentPushToken[…]",
                Provider::Fcm => "no whitespace allowed",
                Provider::Apns => "expected at least 64 hex digits",
                Provider::Email => "expected an email address",
            }
        )),
    }
}

/// Registers a device for the user, under the device-ownership rule (README, "Devices"):
/// an `email` device on a user token only for the address in its `email` claim; a token that is
/// active for another user moves only if it is a push token (the previous owner stops receiving
/// on it) or the caller is `service_role` (an email address never moves on a user token: 409);
/// a disabled token may be re-registered; at most `devices.max_per_user` active devices (422).
#[utoipa::path(
    tag = "devices",
    params(("user_id" = String, Path)),
    request_body = NewDevice,
    responses(
        (status = 201, body = Device),
        (status = 400, description = "malformed JSON", body = crate::error::ErrorBody),
        (status = 401, body = crate::error::ErrorBody),
        (status = 403, description = "another user's path, or an email address that is not the token's `email` claim", body = crate::error::ErrorBody),
        (status = 409, description = "the email address is an active device of another user", body = crate::error::ErrorBody),
        (status = 413, description = "body over 64 KiB", body = crate::error::ErrorBody),
        (status = 422, description = "missing field or bad provider/token (the message names the field), or the user has `devices.max_per_user` active devices", body = crate::error::ErrorBody),
    ),
    security(("user_jwt" = []))
)]
#[post("/users/{user_id}/devices")]
pub async fn register(
    req: HttpRequest,
    user_id: web::Path<String>,
    body: web::Json<serde_json::Value>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let caller = state.auth.user(&req).await?;
    caller.may_act_for(&user_id)?;
    let body: NewDevice = crate::error::from_json(body.into_inner())?;
    let provider: Provider = body.provider.parse().map_err(|e| ApiError::Unprocessable(format!("provider: {e}")))?;
    validate_token(provider, &body.token).map_err(ApiError::Unprocessable)?;
    let token = match provider {
        Provider::Email => {
            caller.may_register_email(&body.token)?;
            normalize_address(&body.token)
        }
        _ => body.token,
    };
    let max = i64::from(state.max_devices_per_user);
    match state.store.register_device(&user_id, provider, &token, caller.is_service(), max).await? {
        Registration::Registered { device, .. } => Ok(HttpResponse::Created()
            .insert_header(("location", format!("/users/{}/devices/{}", device.user_id, device.id)))
            .json(device)),
        Registration::OwnedByAnotherUser => Err(ApiError::Conflict(
            "token: this email address is an active device of another user; it moves only on a service_role \
             token (or once that user removes it)"
                .into(),
        )),
        Registration::TooManyDevices { max } => Err(ApiError::Unprocessable(format!(
            "token: user {user_id} already has {max} active devices, the most devices.max_per_user allows \
             (at most {max} active devices); remove one first"
        ))),
    }
}

/// An address as it is stored: the domain in lower case (domains are case-insensitive), the
/// local part as given.
pub fn normalize_address(address: &str) -> String {
    match address.rsplit_once('@') {
        Some((local, domain)) => format!("{local}@{}", domain.to_ascii_lowercase()),
        None => address.to_string(),
    }
}

/// Removes (disables) one of the user's devices; it receives nothing more.
#[utoipa::path(
    tag = "devices",
    params(("user_id" = String, Path), ("device_id" = String, Path, description = "a UUID")),
    responses(
        (status = 204, description = "removed"),
        (status = 400, description = "the id is not a UUID", body = crate::error::ErrorBody),
        (status = 401, body = crate::error::ErrorBody),
        (status = 403, body = crate::error::ErrorBody),
        (status = 404, description = "the user has no such device", body = crate::error::ErrorBody),
    ),
    security(("user_jwt" = []))
)]
#[delete("/users/{user_id}/devices/{device_id}")]
pub async fn remove(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (user_id, device_id) = path.into_inner();
    state.auth.user(&req).await?.may_act_for(&user_id)?;
    let device_id = parse_uuid("device_id", &device_id)?;
    match state.store.remove_device(&user_id, device_id).await? {
        true => Ok(HttpResponse::NoContent().finish()),
        false => Err(ApiError::NotFound(format!("user {user_id} has no device {device_id}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_checked_for_their_provider() {
        assert!(validate_token(Provider::Expo, "ExponentPushToken[abc]").is_ok());
        assert!(validate_token(Provider::Expo, "abc").unwrap_err().starts_with("token: not a valid expo token"));
        assert!(validate_token(Provider::Apns, &"ab".repeat(32)).is_ok());
        assert!(validate_token(Provider::Apns, "xyz").is_err());
        assert!(validate_token(Provider::Email, "a@example.com").is_ok());
        assert!(validate_token(Provider::Email, "a@b").is_err());
        assert!(validate_token(Provider::Fcm, "abc:def").is_ok());
        assert!(validate_token(Provider::Fcm, " x").is_err());
        assert!(validate_token(Provider::Fcm, "").is_err());
    }
}
