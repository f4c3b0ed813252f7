//! A user's devices: registering a push token (or email address) and removing it.

use super::{parse_uuid, ActingFor, AppState};
use crate::error::ApiError;
use actix_web::{delete, post, web, HttpRequest, HttpResponse};
use notify_relay_engine::job::Provider;
use notify_relay_engine::store::api::{Device, Registration};
use serde::Deserialize;
use serde_json::json;

/// A device to register. Its schema in the OpenAPI document is its `PartialSchema`: one
/// alternative per provider, with the token's pattern, exactly what [`validate_token`] checks.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewDevice {
    /// `expo`, `fcm`, `apns` or `email`.
    pub provider: String,
    /// Expo push token, FCM registration token, APNs device token (hex), or email address.
    pub token: String,
}

/// Longest token, in characters.
pub const MAX_TOKEN_CHARS: usize = 4096;

/// The token patterns of the OpenAPI document; [`validate_token`] checks the same by hand.
/// `P` (in an address) is any character but a control character, a space or another Unicode
/// white space, `<`, `>` and `@`.
const EXPO_PATTERN: &str = r"^Expo(nent)?PushToken\[[!-~]*\]$";
const FCM_PATTERN: &str = r"^[!-~]+$";
const APNS_PATTERN: &str = r"^([0-9A-Fa-f]{2}){32,}$";
const ADDRESS_CHAR: &str = r"[^\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000<>@]";
const DOMAIN_CHAR: &str = r"[^\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000<>@.]";

/// A character allowed in an email address (`ADDRESS_CHAR`).
fn address_char(c: char) -> bool {
    let space = c <= ' '
        || ('\u{7f}'..='\u{a0}').contains(&c)
        || ('\u{2000}'..='\u{200a}').contains(&c)
        || matches!(c, '\u{1680}' | '\u{2028}' | '\u{2029}' | '\u{202f}' | '\u{205f}' | '\u{3000}');
    !space && !matches!(c, '<' | '>' | '@')
}

impl utoipa::ToSchema for NewDevice {}

impl utoipa::PartialSchema for NewDevice {
    /// `oneOf` the four providers, each with its token's pattern and length.
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        let alternative = |provider: &str, pattern: String, description: &str| {
            json!({
                "type": "object",
                "required": ["provider", "token"],
                "additionalProperties": false,
                "properties": {
                    "provider": {"type": "string", "enum": [provider]},
                    "token": {"type": "string", "pattern": pattern, "maxLength": MAX_TOKEN_CHARS, "description": description},
                },
            })
        };
        let email = format!(r"^{ADDRESS_CHAR}+@{DOMAIN_CHAR}+(\.{DOMAIN_CHAR}+)+$");
        let schema = json!({
            "description": "A device: a provider and its token. An `email` address on a user token must be the \
                            token's `email` claim (domain in any case); other addresses need service_role.",
            "oneOf": [
                alternative("expo", EXPO_PATTERN.into(), "Expo push token: ExponentPushToken[…]"),
                alternative("fcm", FCM_PATTERN.into(), "FCM registration token: printable ASCII, no spaces"),
                alternative("apns", APNS_PATTERN.into(), "APNs device token: at least 64 hex digits, an even number"),
                alternative("email", email, "An email address; the domain is stored in lower case"),
            ],
        });
        // A constant document: it always deserialises (the OpenAPI test reads it back).
        serde_json::from_value(schema).unwrap_or_else(|_| utoipa::openapi::RefOr::T(Default::default()))
    }
}

/// Checks a token's shape for its provider, exactly as the OpenAPI patterns say; the error
/// names the field.
pub fn validate_token(provider: Provider, token: &str) -> Result<(), BadToken> {
    if token.is_empty() {
        return Err(BadToken::Empty);
    }
    if token.chars().count() > MAX_TOKEN_CHARS {
        return Err(BadToken::TooLong);
    }
    let printable = |s: &str| s.chars().all(|c| c.is_ascii_graphic());
    let ok = match provider {
        Provider::Expo => ["ExponentPushToken[", "ExpoPushToken["]
            .iter()
            .find_map(|prefix| token.strip_prefix(prefix))
            .and_then(|rest| rest.strip_suffix(']'))
            .is_some_and(printable),
        Provider::Fcm => printable(token),
        Provider::Apns => {
            token.len() >= 64 && token.len().is_multiple_of(2) && token.chars().all(|c| c.is_ascii_hexdigit())
        }
        Provider::Email => match token.split_once('@') {
            Some((local, domain)) => {
                let labels: Vec<&str> = domain.split('.').collect();
                !local.is_empty()
                    && local.chars().all(address_char)
                    && labels.len() >= 2
                    && labels.iter().all(|l| !l.is_empty() && l.chars().all(address_char))
            }
            None => false,
        },
    };
    match ok {
        true => Ok(()),
        false => Err(BadToken::Shape(provider)),
    }
}

/// Why a device token is refused (a 422 naming the field).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BadToken {
    #[error("token: must not be empty")]
    Empty,
    #[error("token: longer than {MAX_TOKEN_CHARS} characters")]
    TooLong,
    #[error("token: not a valid {provider} token ({expected})", provider = .0, expected = expected_shape(*.0))]
    Shape(Provider),
}

fn expected_shape(provider: Provider) -> &'static str {
    match provider {
        Provider::Expo => "expected ExponentPushToken[…] of printable characters",
        Provider::Fcm => "expected printable ASCII without spaces",
        Provider::Apns => "expected at least 64 hex digits, an even number",
        Provider::Email => "expected an email address",
    }
}

/// Registers a device for the user, under the device-ownership rule (README, "Devices"):
/// an `email` device on a user token only for the address in its `email` claim; a token that is
/// active for another user moves only if it is a push token (the previous owner stops receiving
/// on it) or the caller is `service_role` (an email address never moves on a user token: 409);
/// a disabled token may be re-registered; at most `devices.max_per_user` active devices (422).
#[utoipa::path(
    tag = "devices",
    params(("user_id" = String, Path, min_length = 1, pattern = r"^[^\u0000]+$", description = "The user (the JWT's `sub`)")),
    request_body(content = inline(NewDevice), content_type = "application/json"),
    responses(
        (status = 201, body = Device, headers(("location" = String, description = "/users/{user_id}/devices/{id}"))),
        (status = 400, description = "malformed JSON, not Content-Type: application/json, or a user_id with a NUL", body = crate::error::ErrorBody),
        crate::error::Unauthorized,
        (status = 403, description = "another user's path, or an email address that is not the token's `email` claim", body = crate::error::ErrorBody),
        (status = 409, description = "the email address is an active device of another user", body = crate::error::ErrorBody),
        (status = 413, description = "body over 64 KiB", body = crate::error::ErrorBody),
        (status = 422, description = "missing field or bad provider/token (the message names the field), or the user has `devices.max_per_user` active devices", body = crate::error::ErrorBody),
        crate::error::Unavailable,
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
    // Not the `ActingFor` extractor: the body's errors are answered before the credentials.
    let caller = super::acting_for(&req, &state, &user_id).await?;
    let body: NewDevice = crate::error::from_json(body.into_inner())?;
    let provider: Provider = body.provider.parse().map_err(|e| ApiError::Unprocessable(format!("provider: {e}")))?;
    validate_token(provider, &body.token).map_err(|e| ApiError::Unprocessable(e.to_string()))?;
    let token = match provider {
        Provider::Email => {
            caller.may_register_email(&body.token)?;
            normalize_address(&body.token)
        }
        _ => body.token,
    };
    let max = i64::from(state.max_devices_per_user);
    match state.store.register_device(&user_id, provider, &token, caller.is_service(), max).await? {
        Registration::Registered { device, moved_from, .. } => {
            if let Some(from) = moved_from {
                // Who had a device before matters when a phone changes hands (or is taken).
                slog::info!(state.log, "device moved to another user"; "event" => "DEVICE_MOVED",
                            "device_id" => %device.id, "provider" => provider.as_str(),
                            "from_user" => from, "to_user" => &device.user_id);
            }
            Ok(HttpResponse::Created()
                .insert_header((
                    "location",
                    format!("/users/{}/devices/{}", super::path_segment(&device.user_id), device.id),
                ))
                .json(device))
        }
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

/// Removes (disables) one of the user's active devices; it receives nothing more. Removing it
/// again is a 404: the user has no such active device any more.
#[utoipa::path(
    tag = "devices",
    params(
        ("user_id" = String, Path, min_length = 1, pattern = r"^[^\u0000]+$", description = "The user (the JWT's `sub`)"),
        ("device_id" = uuid::Uuid, Path, description = "The device's id"),
    ),
    responses(
        (status = 204, description = "removed"),
        (status = 400, description = "the id is not a UUID, or a user_id with a NUL", body = crate::error::ErrorBody),
        crate::error::Unauthorized,
        (status = 403, body = crate::error::ErrorBody),
        (status = 404, description = "the user has no such active device", body = crate::error::ErrorBody),
        crate::error::Unavailable,
    ),
    security(("user_jwt" = []))
)]
#[delete("/users/{user_id}/devices/{device_id}")]
pub async fn remove(
    path: web::Path<(String, String)>,
    user: ActingFor,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (_, device_id) = path.into_inner();
    let user_id = user.user_id;
    let device_id = parse_uuid("device_id", &device_id)?;
    match state.store.remove_device(&user_id, device_id).await? {
        true => Ok(HttpResponse::NoContent().finish()),
        false => Err(ApiError::NotFound(format!("user {user_id} has no active device {device_id}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_checked_for_their_provider() {
        assert!(validate_token(Provider::Expo, "ExponentPushToken[abc]").is_ok());
        assert!(validate_token(Provider::Expo, "abc")
            .unwrap_err()
            .to_string()
            .starts_with("token: not a valid expo token"));
        assert!(validate_token(Provider::Apns, &"ab".repeat(32)).is_ok());
        assert!(validate_token(Provider::Apns, "xyz").is_err());
        assert!(validate_token(Provider::Email, "a@example.com").is_ok());
        assert!(validate_token(Provider::Email, "a@b").is_err());
        assert!(validate_token(Provider::Fcm, "abc:def").is_ok());
        assert!(validate_token(Provider::Fcm, " x").is_err());
        assert!(validate_token(Provider::Fcm, "").is_err());
    }

    #[test]
    fn control_characters_and_white_space_are_refused_in_every_token() {
        for (provider, token) in [
            (Provider::Fcm, "abc\0def"),
            (Provider::Fcm, "abc def"),
            (Provider::Fcm, "abc\u{3000}def"),
            (Provider::Expo, "ExponentPushToken[a\0b]"),
            (Provider::Expo, "ExponentPushToken[a b]"),
            (Provider::Email, "a\0b@example.com"),
            (Provider::Email, "a@exam\u{a0}ple.com"),
            (Provider::Email, "a@b@example.com"),
            (Provider::Email, "a@.example.com"),
            (Provider::Email, "a@example."),
            (Provider::Email, "<a@example.com>"),
        ] {
            assert!(validate_token(provider, token).is_err(), "{provider} {token:?}");
        }
        assert!(validate_token(Provider::Email, "élise@exämple.com").is_ok(), "non-ASCII addresses");
        assert!(validate_token(Provider::Fcm, &"é".repeat(10)).is_err());
        // The length is counted in characters, as JSON Schema's maxLength does.
        assert!(validate_token(Provider::Email, &format!("{}@example.com", "é".repeat(3000))).is_ok());
        assert!(validate_token(Provider::Fcm, &"a".repeat(4097)).unwrap_err().to_string().contains("longer than 4096"));
    }
}
