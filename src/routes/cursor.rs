//! Opaque pagination cursors: the position of the last item of a page, signed (HMAC-SHA256) so
//! a client cannot forge one. A cursor that does not verify is a 400, not an empty page.

use crate::error::ApiError;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
use notify_relay_engine::store::api::Position;

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

#[cfg(test)]
mod proptests {
    use super::*;
    use actix_web::ResponseError;
    use proptest::prelude::*;
    use uuid::Uuid;

    /// Any instant chrono can hold, to the microsecond (the precision of Postgres timestamps,
    /// where positions come from).
    fn instant() -> impl Strategy<Value = DateTime<Utc>> {
        let (min, max) = (DateTime::<Utc>::MIN_UTC.timestamp_micros(), DateTime::<Utc>::MAX_UTC.timestamp_micros());
        prop_oneof![Just(min), Just(max), min..=max, -10i64.pow(15)..10i64.pow(17)]
            .prop_map(|us| DateTime::<Utc>::from_timestamp_micros(us).expect("within chrono's range"))
    }

    fn assert_400(result: Result<Position, ApiError>) {
        match result {
            Err(e @ ApiError::BadRequest(_)) => assert_eq!(e.status_code().as_u16(), 400),
            other => panic!("expected a 400, got {other:?}"),
        }
    }

    proptest! {
        #[test]
        fn every_position_round_trips(key in prop::collection::vec(any::<u8>(), 0..64), at in instant(), id in any::<u128>()) {
            let position = (at, Uuid::from_u128(id));
            prop_assert_eq!(decode(&key, &encode(&key, position)).ok(), Some(position));
        }

        #[test]
        fn any_other_string_is_a_400(cursor in prop_oneof![
            any::<String>(),
            "[A-Za-z0-9_-]{0,80}\\.[A-Za-z0-9_-]{0,60}",
            (any::<i64>(), any::<String>()).prop_map(|(us, id)| URL_SAFE_NO_PAD.encode(format!("{us}:{id}")) + ".sig"),
        ]) {
            assert_400(decode(b"k1", &cursor));
        }

        #[test]
        fn a_cursor_of_another_key_or_changed_anywhere_is_a_400(
            at in instant(),
            id in any::<u128>(),
            index in any::<prop::sample::Index>(),
            to in "[A-Za-z0-9_.-]",
        ) {
            let cursor = encode(b"k1", (at, Uuid::from_u128(id)));
            assert_400(decode(b"k2", &cursor));
            let i = index.index(cursor.len());
            let mut changed = cursor.clone();
            changed.replace_range(i..i + 1, &to);
            prop_assume!(changed != cursor);
            assert_400(decode(b"k1", &changed));
        }

        #[test]
        fn a_signed_body_that_is_not_a_position_is_a_400(body in any::<String>()) {
            // Only this API signs cursors, but its decoder must not trust its own bytes blindly.
            let encoded = URL_SAFE_NO_PAD.encode(&body);
            let sig = jsonwebtoken::crypto::sign(encoded.as_bytes(), &EncodingKey::from_secret(b"k1"), Algorithm::HS256)
                .unwrap();
            let result = decode(b"k1", &format!("{encoded}.{sig}"));
            let position = body.split_once(':').and_then(|(us, id)| {
                Some((DateTime::<Utc>::from_timestamp_micros(us.parse().ok()?)?, id.parse::<Uuid>().ok()?))
            });
            match position {
                Some(p) => prop_assert_eq!(result.ok(), Some(p)),
                None => assert_400(result),
            }
        }
    }
}
