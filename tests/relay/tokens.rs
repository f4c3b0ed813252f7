//! User tokens as Supabase Auth issues them, for the API tests: an ES256 key published in a
//! JWKS served on loopback, and legacy HS256 tokens.

use actix_web::dev::ServerHandle;
use actix_web::{web, App, HttpResponse, HttpServer};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};

pub const HS_SECRET: &str = "legacy-jwt-secret-of-the-test-project";
pub const ISSUER: &str = "https://test-project.supabase.co/auth/v1";
pub const AUDIENCE: &str = "authenticated";

/// An ES256 signing key and its JWK.
pub struct SigningKey {
    pub kid: String,
    pub encoding: EncodingKey,
    pub jwk: Value,
    /// The public key as PEM (what an attacker would use as an HMAC secret).
    pub public_pem: String,
}

impl SigningKey {
    pub fn generate(kid: &str) -> SigningKey {
        let pair = rcgen::KeyPair::generate().expect("P-256 key");
        let raw = pair.public_key_raw();
        assert_eq!(raw.len(), 65, "uncompressed P-256 point");
        let jwk = json!({
            "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": kid,
            "x": URL_SAFE_NO_PAD.encode(&raw[1..33]), "y": URL_SAFE_NO_PAD.encode(&raw[33..65]),
        });
        SigningKey {
            kid: kid.into(),
            encoding: EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).expect("ec key"),
            jwk,
            public_pem: pair.public_key_pem(),
        }
    }

    pub fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).expect("sign")
    }
}

/// Claims of a user token that expires `exp_in` seconds from now (negative: expired).
pub fn claims(sub: &str, exp_in: i64) -> Value {
    let now = chrono::Utc::now().timestamp();
    json!({"sub": sub, "role": "authenticated", "aud": AUDIENCE, "iss": ISSUER, "iat": now, "exp": now + exp_in})
}

pub fn hs256(secret: &[u8], claims: &Value) -> String {
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(secret)).expect("sign")
}

/// A token with `alg: none` and no signature.
pub fn unsigned(claims: &Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(json!({"alg": "none", "typ": "JWT"}).to_string());
    format!("{header}.{}.", URL_SAFE_NO_PAD.encode(claims.to_string()))
}

/// A JWKS endpoint on loopback; keys can be added (rotation) while it runs, and it can be made
/// to answer 503 (an outage that still counts the fetches).
pub struct JwksServer {
    pub url: String,
    keys: Arc<Mutex<Vec<Value>>>,
    pub fetches: Arc<Mutex<usize>>,
    failing: Arc<std::sync::atomic::AtomicBool>,
    handle: ServerHandle,
}

impl JwksServer {
    pub async fn start(keys: &[&SigningKey]) -> JwksServer {
        let keys = Arc::new(Mutex::new(keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()));
        let fetches = Arc::new(Mutex::new(0));
        let failing = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (k, f, down) = (keys.clone(), fetches.clone(), failing.clone());
        let server = HttpServer::new(move || {
            let (k, f, down) = (k.clone(), f.clone(), down.clone());
            App::new().route(
                "/auth/v1/.well-known/jwks.json",
                web::get().to(move || {
                    let (k, f, down) = (k.clone(), f.clone(), down.clone());
                    async move {
                        *f.lock().unwrap() += 1;
                        if down.load(std::sync::atomic::Ordering::SeqCst) {
                            return HttpResponse::ServiceUnavailable().finish();
                        }
                        HttpResponse::Ok().json(json!({"keys": *k.lock().unwrap()}))
                    }
                }),
            )
        })
        .workers(1)
        .disable_signals()
        .bind("127.0.0.1:0")
        .expect("bind jwks");
        let url = format!("http://{}/auth/v1/.well-known/jwks.json", server.addrs()[0]);
        let server = server.run();
        let handle = server.handle();
        actix_rt::spawn(server);
        JwksServer { url, keys, fetches, failing, handle }
    }

    pub fn add(&self, key: &SigningKey) {
        self.keys.lock().unwrap().push(key.jwk.clone());
    }

    /// From now on every fetch is answered 503.
    pub fn fail(&self) {
        self.failing.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn fetches(&self) -> usize {
        *self.fetches.lock().unwrap()
    }

    pub async fn stop(self) {
        self.handle.stop(false).await;
    }
}
