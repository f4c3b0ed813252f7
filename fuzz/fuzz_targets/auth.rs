//! `Authorization` headers and user tokens → `bearer_token` and `Authenticator::verify`, with a
//! legacy HS256 secret and an ES256 JWKS key configured. Input: a mode byte, then either a
//! header value, a token, or a JOSE header and claims (split at the first NUL) that are signed
//! with the configured HS256 secret or ES256 key before being verified, so that claim parsing
//! past the signature is fuzzed too. Refusals are always 401s. Never a panic.
#![no_main]

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey};
use libfuzzer_sys::fuzz_target;
use notify_relay::fuzzing::{
    bearer_token, status_of, verify_now, ApiError, AuthSettings, Authenticator, HeaderValue, Secret,
};
use notify_relay_fuzz::take_u8;
use std::sync::OnceLock;
use std::time::Duration;

const SECRET: &str = "fuzz-hs256-secret";

struct Keys {
    auth: Authenticator,
    es256: EncodingKey,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let pair = rcgen::KeyPair::generate().expect("P-256 key");
        let raw = pair.public_key_raw();
        let jwks = serde_json::json!({"keys": [{
            "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": "k",
            "x": URL_SAFE_NO_PAD.encode(&raw[1..33]), "y": URL_SAFE_NO_PAD.encode(&raw[33..65]),
        }]});
        let path = std::env::temp_dir().join(format!("notify-relay-fuzz-jwks-{}.json", std::process::id()));
        std::fs::write(&path, jwks.to_string()).expect("JWKS file");
        let settings = AuthSettings {
            admin_token: None,
            jwks_url: None,
            jwks_file: Some(path),
            jwt_secret: Some(Secret::new(SECRET)),
            issuer: None,
            audience: None,
            leeway_secs: 30,
            jwks_cache: Duration::from_secs(60),
            jwks_min_refresh: Duration::from_secs(10),
            allow_insecure_jwks: false,
        };
        let auth = Authenticator::new(&settings).expect("authenticator");
        let es256 = EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).expect("ES256 key");
        Keys { auth, es256 }
    })
}

/// Verifies, and checks that a refusal is a 401.
fn verify(token: &str) -> bool {
    match verify_now(&keys().auth, token).expect("verify never waits without a JWKS URL") {
        Ok(_) => true,
        Err(e @ ApiError::Unauthorized(_)) => {
            assert_eq!(status_of(&e), 401);
            false
        }
        Err(other) => panic!("a token was refused with {other:?}, not a 401"),
    }
}

fuzz_target!(|data: &[u8]| {
    let (mode, rest) = take_u8(data);
    match mode % 4 {
        0 => {
            let Ok(value) = HeaderValue::from_bytes(rest) else { return };
            match bearer_token(Some(&value)) {
                Ok(token) => {
                    assert!(!token.is_empty() && token == token.trim());
                    // Nothing but a signature made with the configured keys gets in.
                    assert!(!verify(token), "an unsigned header value was accepted: {token:?}");
                }
                Err(e) => assert_eq!(status_of(&e), 401),
            }
        }
        1 => {
            let token = String::from_utf8_lossy(rest);
            assert!(!verify(&token), "an unsigned token was accepted: {token:?}");
        }
        signed => {
            let (header, claims) = match rest.iter().position(|b| *b == 0) {
                Some(at) => (&rest[..at], &rest[at + 1..]),
                None => (&b"{\"alg\":\"HS256\"}"[..], rest),
            };
            let body = format!("{}.{}", URL_SAFE_NO_PAD.encode(header), URL_SAFE_NO_PAD.encode(claims));
            let sig = match signed {
                2 => jsonwebtoken::crypto::sign(
                    body.as_bytes(),
                    &EncodingKey::from_secret(SECRET.as_bytes()),
                    Algorithm::HS256,
                ),
                _ => jsonwebtoken::crypto::sign(body.as_bytes(), &keys().es256, Algorithm::ES256),
            };
            let Ok(sig) = sig else { return };
            verify(&format!("{body}.{sig}"));
        }
    }
});
