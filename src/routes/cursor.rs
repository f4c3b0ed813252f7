//! Opaque pagination cursors: the position of the last item of a page, signed (HMAC-SHA256) so
//! a client cannot forge one. A cursor that does not verify is a 400, not an empty page.

use crate::error::ApiError;
use actors::store::api::Position;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};

pub fn encode(key: &[u8], (at, id): Position) -> String {
    let body = URL_SAFE_NO_PAD.encode(format!("{}:{id}", at.timestamp_micros()));
    // HMAC over our own bytes with a valid key cannot fail; an empty signature would only
    // make the cursor refuse itself.
    let sig = jsonwebtoken::crypto::sign(body.as_bytes(), &EncodingKey::from_secret(key), Algorithm::HS256)
        .unwrap_or_default();
    format!("{body}.{sig}")
}

pub fn decode(key: &[u8], cursor: &str) -> Result<Position, ApiError> {
    let bad = || ApiError::BadRequest("cursor is malformed or was not issued by this API".into());
    let (body, sig) = cursor.split_once('.').ok_or_else(bad)?;
    let valid = jsonwebtoken::crypto::verify(sig, body.as_bytes(), &DecodingKey::from_secret(key), Algorithm::HS256)
        .unwrap_or(false);
    if !valid {
        return Err(bad());
    }
    let raw = String::from_utf8(URL_SAFE_NO_PAD.decode(body).map_err(|_| bad())?).map_err(|_| bad())?;
    let (micros, id) = raw.split_once(':').ok_or_else(bad)?;
    let at = DateTime::<Utc>::from_timestamp_micros(micros.parse().map_err(|_| bad())?).ok_or_else(bad)?;
    Ok((at, id.parse().map_err(|_| bad())?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    #[test]
    fn a_cursor_round_trips_and_refuses_tampering() {
        let at = DateTime::<Utc>::from_timestamp_micros(1_700_000_000_123_456).unwrap();
        let id = Uuid::new_v4();
        let c = encode(b"k1", (at, id));
        assert_eq!(decode(b"k1", &c).unwrap(), (at, id));
        assert!(decode(b"k2", &c).is_err(), "another deployment's cursor");
        let (body, sig) = c.split_once('.').unwrap();
        let forged = URL_SAFE_NO_PAD.encode(format!("{}:{id}", at.timestamp_micros() + 1));
        assert!(decode(b"k1", &format!("{forged}.{sig}")).is_err());
        for junk in ["", "abc", "abc.def", &format!("{body}."), &format!(".{sig}")] {
            assert!(decode(b"k1", junk).is_err(), "{junk}");
        }
    }
}
