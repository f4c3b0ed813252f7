//! Who is calling. User routes take `Authorization: Bearer <JWT>` as Supabase Auth issues them:
//! ES256/RS256 tokens checked against the project's JWKS (`auth.jwks_url`, fetched and cached,
//! or `auth.jwks_file`), or legacy HS256 tokens checked with `auth.jwt_secret`. Admin routes take
//! `auth.admin_token`, compared in constant time.
//!
//! The algorithm is decided by the key, never by the token alone: an HS256 token is only ever
//! checked with the shared secret, an ES256/RS256 token only with the JWKS key its `kid` names
//! and only if that key is of that algorithm. `alg: none`, other algorithms, unknown `kid`s and
//! tokens without `exp` are refused.

use crate::error::ApiError;
use actix_web::http::header::HeaderValue;
use actix_web::HttpRequest;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use notify_relay_engine::clock::{Clock, SystemClock};
use notify_relay_engine::settings::{millis, Secret};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// `[auth]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    /// Bearer token for `/admin/*`; unset means the admin routes refuse everyone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_token: Option<Secret>,
    /// The project's JWKS (`https://<project>.supabase.co/auth/v1/.well-known/jwks.json`):
    /// ES256/RS256 user tokens are verified with its keys…
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_url: Option<String>,
    /// …or with the keys of this JWKS file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_file: Option<std::path::PathBuf>,
    /// Legacy HS256 user tokens are verified with this shared secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt_secret: Option<Secret>,
    /// Required `iss` of user tokens, when set (Supabase: `https://<project>.supabase.co/auth/v1`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// Required `aud` of user tokens, when set (Supabase: `authenticated`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// Clock skew allowed on `exp`/`nbf`, in seconds.
    pub leeway_secs: u64,
    /// How long fetched JWKS keys are used before they are fetched again (`auth.jwks_cache_ms`).
    #[serde(rename = "jwks_cache_ms", with = "millis")]
    pub jwks_cache: Duration,
    /// A token with an unknown `kid` triggers a JWKS fetch at most this often
    /// (`auth.jwks_min_refresh_ms`).
    #[serde(rename = "jwks_min_refresh_ms", with = "millis")]
    pub jwks_min_refresh: Duration,
    /// Accept an `http://` `jwks_url` (anyone on the path could inject keys): loopback tests only.
    pub allow_insecure_jwks: bool,
}

impl AuthSettings {
    /// The section's own rules, then the authenticator built once to read the JWKS file: an
    /// error names its key.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if let Some(url) = &self.jwks_url {
            if !(url.starts_with("https://") || url.starts_with("http://")) {
                return Err(("auth.jwks_url", format!("must be an http(s) URL, got '{url}'")));
            }
            // Keys fetched in clear can be replaced by anyone on the path: then any token verifies.
            if url.starts_with("http://") && !self.allow_insecure_jwks {
                return Err((
                    "auth.jwks_url",
                    "is http://: keys fetched in clear can be forged on the way; use https:// \
                     (or set auth.allow_insecure_jwks = true for a loopback test JWKS)"
                        .into(),
                ));
            }
        }
        if self.jwt_secret.as_ref().is_some_and(|s| s.expose().len() < 16) {
            return Err(("auth.jwt_secret", "must be at least 16 characters".into()));
        }
        if self.admin_token.as_ref().is_some_and(|s| s.expose().len() < 16) {
            return Err(("auth.admin_token", "must be at least 16 characters".into()));
        }
        if self.leeway_secs > 300 {
            return Err(("auth.leeway_secs", "must be at most 300".into()));
        }
        Authenticator::new(self).map(|_| ())
    }

    /// The start-up warning when user tokens are accepted but neither `iss` nor `aud` is
    /// checked: then a token of any project that shares the key (or a Supabase token meant for
    /// another audience) is accepted.
    pub fn unchecked_claims_warning(&self) -> Option<&'static str> {
        let user_tokens = self.jwks_url.is_some() || self.jwks_file.is_some() || self.jwt_secret.is_some();
        (user_tokens && self.issuer.is_none() && self.audience.is_none()).then_some(
            "user tokens are accepted without checking iss or aud: set auth.issuer \
             (https://<project>.supabase.co/auth/v1) and/or auth.audience (authenticated)",
        )
    }
}

/// The role Supabase gives its service key: it may act for any user.
pub const SERVICE_ROLE: &str = "service_role";

/// The `iss` of Supabase's own API keys (the legacy `anon` and `service_role` JWTs).
pub const SUPABASE_KEY_ISSUER: &str = "supabase";

/// The verified caller of a user route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// A user token: `sub`, and the `email` claim when the token carries a non-empty one
    /// (Supabase Auth puts the user's address there).
    User { sub: String, email: Option<String> },
    /// A token with role `service_role`, or the admin token where a route accepts it.
    Service,
}

impl Caller {
    /// A user token without an email claim.
    pub fn user(sub: impl Into<String>) -> Caller {
        Caller::User { sub: sub.into(), email: None }
    }

    /// Whether the caller may read or change `user`'s data: their own, or anyone's as a service.
    pub fn may_act_for(&self, user: &str) -> Result<(), ApiError> {
        match self {
            Caller::Service => Ok(()),
            Caller::User { sub, .. } if sub == user => Ok(()),
            Caller::User { .. } => Err(ApiError::Forbidden("this token belongs to another user".into())),
        }
    }

    /// Whether the caller may read or cancel a notification of `owner`: their own, or any as a
    /// service. A topic notification has no owner (`None`): a service's only.
    pub fn may_act_for_notification(&self, owner: Option<&str>) -> Result<(), ApiError> {
        match owner {
            Some(user) => self.may_act_for(user),
            None if self.is_service() => Ok(()),
            None => Err(ApiError::Forbidden(
                "a topic notification belongs to no user: only service_role or the admin token may act on it".into(),
            )),
        }
    }

    pub fn is_service(&self) -> bool {
        matches!(self, Caller::Service)
    }

    /// Whether the caller may register `address` as an email device: a service may register
    /// any address, a user only the one in their token's `email` claim (see [`same_address`]).
    pub fn may_register_email(&self, address: &str) -> Result<(), ApiError> {
        match self {
            Caller::Service => Ok(()),
            Caller::User { email: Some(own), .. } if same_address(own, address) => Ok(()),
            Caller::User { email: Some(_), .. } => Err(ApiError::Forbidden(
                "token: a user token may register only the email address in its `email` claim; \
                 other addresses need a service_role token"
                    .into(),
            )),
            Caller::User { email: None, .. } => Err(ApiError::Forbidden(
                "token: this user token has no `email` claim, so it may not register an email address; \
                 use a service_role token"
                    .into(),
            )),
        }
    }
}

/// Whether two email addresses are the same mailbox as far as the ownership rule goes: the
/// local part compared exactly (RFC 5321 lets a server tell `Alice` from `alice`), the domain
/// without regard to ASCII case (domains are case-insensitive).
pub fn same_address(a: &str, b: &str) -> bool {
    match (a.rsplit_once('@'), b.rsplit_once('@')) {
        (Some((la, da)), Some((lb, db))) => la == lb && da.eq_ignore_ascii_case(db),
        _ => false,
    }
}

/// A verification key and the one algorithm it verifies.
#[derive(Clone)]
struct Key {
    key: DecodingKey,
    alg: Algorithm,
}

#[derive(Default)]
struct KeySet {
    by_kid: HashMap<String, Key>,
    fetched_at: Option<Instant>,
    last_attempt: Option<Instant>,
}

/// Where the JWKS comes from.
enum Source {
    Url(String),
    /// A file, read at start-up.
    Fixed,
}

struct Jwks {
    source: Source,
    keys: RwLock<KeySet>,
    /// One fetch at a time.
    fetching: tokio::sync::Mutex<()>,
    /// Keys are re-fetched after this long…
    ttl: Duration,
    /// …and, when a token names an unknown `kid`, no more often than this.
    min_refresh: Duration,
    /// What time it is for the cache's age and the refetch rate limit: the system's clock, or a
    /// test's `ManualClock`, so that "after the cache is stale" needs no waiting.
    clock: Arc<dyn Clock>,
}

pub struct Authenticator {
    jwks: Option<Jwks>,
    hs256: Option<DecodingKey>,
    issuer: Option<String>,
    audience: Option<String>,
    leeway_secs: u64,
    admin_token: Option<Secret>,
}

#[derive(Deserialize)]
struct Claims {
    sub: Option<String>,
    role: Option<String>,
    /// Supabase: the user's address (empty for phone and anonymous users). Anything but a
    /// string is ignored, as no address.
    #[serde(default, deserialize_with = "string_or_none")]
    email: Option<String>,
}

fn string_or_none<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::String(s) if !s.trim().is_empty() => Some(s),
        _ => None,
    })
}

fn unauthorized(message: impl Into<String>) -> ApiError {
    ApiError::Unauthorized(message.into())
}

/// The keys of a JWKS document that verify ES256 or RS256 signatures, by `kid`. Keys for
/// encryption, without a `kid`, or of other types and algorithms are left out.
fn parse_jwks(raw: &[u8]) -> Result<HashMap<String, Key>, String> {
    let set: JwkSet = serde_json::from_slice(raw).map_err(|e| format!("not a JWKS document: {e}"))?;
    let mut keys = HashMap::new();
    for jwk in &set.keys {
        let Some(kid) = jwk.common.key_id.clone() else { continue };
        if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
            continue;
        }
        let alg = match (&jwk.common.key_algorithm, &jwk.algorithm) {
            (Some(KeyAlgorithm::ES256), AlgorithmParameters::EllipticCurve(ec)) if ec.curve == EllipticCurve::P256 => {
                Algorithm::ES256
            }
            (None, AlgorithmParameters::EllipticCurve(ec)) if ec.curve == EllipticCurve::P256 => Algorithm::ES256,
            (Some(KeyAlgorithm::RS256) | None, AlgorithmParameters::RSA(_)) => Algorithm::RS256,
            _ => continue,
        };
        let Ok(key) = DecodingKey::from_jwk(jwk) else { continue };
        keys.insert(kid, Key { key, alg });
    }
    Ok(keys)
}

impl Jwks {
    /// How long ago `t` was, by this cache's clock.
    fn since(&self, t: Instant) -> Duration {
        self.clock.now().saturating_duration_since(t)
    }

    fn fresh(&self) -> bool {
        let keys = self.keys.read().unwrap_or_else(|p| p.into_inner());
        matches!(self.source, Source::Fixed) || keys.fetched_at.is_some_and(|t| self.since(t) < self.ttl)
    }

    fn lookup(&self, kid: &str) -> Option<Key> {
        self.keys.read().unwrap_or_else(|p| p.into_inner()).by_kid.get(kid).cloned()
    }

    /// The key named `kid`, fetching the JWKS when the cache is stale or (rate-limited) when
    /// the kid is unknown: a rotated-in key is picked up, a stream of made-up kids is not a
    /// stream of fetches.
    async fn key(&self, kid: &str) -> Option<Key> {
        let Source::Url(url) = &self.source else {
            return self.lookup(kid);
        };
        let known = self.lookup(kid);
        if known.is_some() && self.fresh() {
            return known;
        }
        let _one_at_a_time = self.fetching.lock().await;
        {
            // Another request may have fetched while this one waited.
            let keys = self.keys.read().unwrap_or_else(|p| p.into_inner());
            let fresh = keys.fetched_at.is_some_and(|t| self.since(t) < self.ttl);
            let known = keys.by_kid.get(kid);
            if known.is_some() && fresh {
                return known.cloned();
            }
            if keys.last_attempt.is_some_and(|t| self.since(t) < self.min_refresh) {
                return known.cloned();
            }
        }
        let fetched = fetch(url).await;
        let mut keys = self.keys.write().unwrap_or_else(|p| p.into_inner());
        let now = self.clock.now();
        keys.last_attempt = Some(now);
        // On failure keep serving the keys we had: a JWKS outage must not log everyone out.
        if let Ok(by_kid) = fetched {
            keys.by_kid = by_kid;
            keys.fetched_at = Some(now);
        }
        keys.by_kid.get(kid).cloned()
    }
}

async fn fetch(url: &str) -> Result<HashMap<String, Key>, String> {
    let client = awc::Client::builder().timeout(Duration::from_secs(5)).finish();
    let mut resp = client.get(url).send().await.map_err(|e| format!("JWKS request failed: {e}"))?;
    if !resp.status().is_success() {
        return Err(format!("JWKS answered {}", resp.status()));
    }
    let body = resp.body().limit(1024 * 1024).await.map_err(|e| format!("JWKS body: {e}"))?;
    parse_jwks(&body)
}

impl Authenticator {
    /// Builds the authenticator from `[auth]`; reads `auth.jwks_file` now. The error names
    /// the key.
    pub fn new(settings: &AuthSettings) -> Result<Authenticator, (&'static str, String)> {
        Authenticator::with_clock(settings, Arc::new(SystemClock))
    }

    /// [`Authenticator::new`] with the clock its JWKS cache reads.
    pub fn with_clock(settings: &AuthSettings, clock: Arc<dyn Clock>) -> Result<Authenticator, (&'static str, String)> {
        let jwks = match (&settings.jwks_url, &settings.jwks_file) {
            (Some(_), Some(_)) => return Err(("auth.jwks_url", "and auth.jwks_file are both set; set one".into())),
            (Some(url), None) => Some(Jwks {
                source: Source::Url(url.clone()),
                keys: RwLock::new(KeySet::default()),
                fetching: tokio::sync::Mutex::new(()),
                ttl: settings.jwks_cache,
                min_refresh: settings.jwks_min_refresh,
                clock,
            }),
            (None, Some(path)) => {
                let raw = std::fs::read(path)
                    .map_err(|e| ("auth.jwks_file", format!("cannot read {}: {e}", path.display())))?;
                let by_kid = parse_jwks(&raw).map_err(|e| ("auth.jwks_file", e))?;
                if by_kid.is_empty() {
                    return Err(("auth.jwks_file", "holds no ES256 or RS256 signing key with a kid".into()));
                }
                Some(Jwks {
                    source: Source::Fixed,
                    keys: RwLock::new(KeySet { by_kid, fetched_at: Some(clock.now()), last_attempt: None }),
                    fetching: tokio::sync::Mutex::new(()),
                    ttl: Duration::MAX,
                    min_refresh: Duration::MAX,
                    clock,
                })
            }
            (None, None) => None,
        };
        let hs256 = settings.jwt_secret.as_ref().map(|s| DecodingKey::from_secret(s.expose().as_bytes()));
        Ok(Authenticator {
            jwks,
            hs256,
            issuer: settings.issuer.clone(),
            audience: settings.audience.clone(),
            leeway_secs: settings.leeway_secs,
            admin_token: settings.admin_token.clone(),
        })
    }

    /// Whether user tokens can be verified at all.
    pub fn accepts_user_tokens(&self) -> bool {
        self.jwks.is_some() || self.hs256.is_some()
    }

    /// Verifies a user token.
    pub async fn verify(&self, token: &str) -> Result<Caller, ApiError> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| unauthorized(format!("malformed token: {e}")))?;
        let key = match header.alg {
            Algorithm::HS256 => match &self.hs256 {
                Some(key) => Key { key: key.clone(), alg: Algorithm::HS256 },
                None => return Err(unauthorized("HS256 tokens are not accepted here")),
            },
            Algorithm::ES256 | Algorithm::RS256 => {
                let Some(jwks) = &self.jwks else {
                    return Err(unauthorized(format!("{:?} tokens are not accepted here", header.alg)));
                };
                let kid = header.kid.as_deref().ok_or_else(|| unauthorized("token has no kid"))?;
                let key = jwks.key(kid).await.ok_or_else(|| unauthorized(format!("unknown signing key '{kid}'")))?;
                if key.alg != header.alg {
                    return Err(unauthorized(format!("key '{kid}' does not verify {:?}", header.alg)));
                }
                key
            }
            other => return Err(unauthorized(format!("algorithm {other:?} is not accepted"))),
        };
        let mut validation = Validation::new(key.alg);
        validation.leeway = self.leeway_secs;
        validation.set_required_spec_claims(&["exp"]);
        validation.validate_nbf = true;
        match &self.audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        if let Some(iss) = &self.issuer {
            validation.set_issuer(&[iss]);
        }
        let claims = match jsonwebtoken::decode::<Claims>(token, &key.key, &validation) {
            Ok(data) => data.claims,
            Err(e) => match self.supabase_service_key(token, &key) {
                Some(claims) => claims,
                None => return Err(unauthorized(format!("invalid token: {e}"))),
            },
        };
        if claims.role.as_deref() == Some(SERVICE_ROLE) {
            return Ok(Caller::Service);
        }
        match claims.sub {
            Some(sub) if !sub.is_empty() => Ok(Caller::User { sub, email: claims.email }),
            _ => Err(unauthorized("token has no subject")),
        }
    }

    /// Supabase's legacy `service_role` API key: signed with the project's JWT secret (HS256)
    /// like its user tokens, but with `iss: supabase` and no `aud`, whatever issuer and audience
    /// the project's user tokens carry. Such a key is taken for what it says — the service role —
    /// and for nothing else: the same issuer with any other role (the `anon` key) is refused.
    fn supabase_service_key(&self, token: &str, key: &Key) -> Option<Claims> {
        if key.alg != Algorithm::HS256 || (self.issuer.is_none() && self.audience.is_none()) {
            return None;
        }
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = self.leeway_secs;
        validation.set_required_spec_claims(&["exp", "iss"]);
        validation.validate_nbf = true;
        validation.validate_aud = false;
        validation.set_issuer(&[SUPABASE_KEY_ISSUER]);
        let claims = jsonwebtoken::decode::<Claims>(token, &key.key, &validation).ok()?.claims;
        (claims.role.as_deref() == Some(SERVICE_ROLE)).then_some(claims)
    }

    /// The caller of a user route.
    pub async fn user(&self, req: &HttpRequest) -> Result<Caller, ApiError> {
        let token = bearer(req)?;
        if !self.accepts_user_tokens() {
            return Err(unauthorized("user routes are disabled: set auth.jwks_url, auth.jwks_file or auth.jwt_secret"));
        }
        self.verify(token).await
    }

    /// Whether the request carries the admin token.
    pub fn is_admin(&self, req: &HttpRequest) -> bool {
        match (&self.admin_token, bearer(req)) {
            (Some(expected), Ok(given)) => constant_time_eq(given.as_bytes(), expected.expose().as_bytes()),
            _ => false,
        }
    }

    /// Admin routes: the admin token and nothing else.
    pub fn admin(&self, req: &HttpRequest) -> Result<(), ApiError> {
        if self.admin_token.is_none() {
            return Err(unauthorized("admin routes are disabled: auth.admin_token is not set"));
        }
        bearer(req)?;
        match self.is_admin(req) {
            true => Ok(()),
            false => Err(unauthorized("invalid admin token")),
        }
    }

    /// Routes open to a user for their own data and to operators: the admin token, or a user
    /// token.
    pub async fn admin_or_user(&self, req: &HttpRequest) -> Result<Caller, ApiError> {
        match self.is_admin(req) {
            true => Ok(Caller::Service),
            false => self.user(req).await,
        }
    }
}

fn bearer(req: &HttpRequest) -> Result<&str, ApiError> {
    bearer_token(req.headers().get("authorization"))
}

/// The token of an `Authorization: Bearer <token>` header (the scheme in any case, the token
/// trimmed), or the 401 for a missing or malformed one.
pub(crate) fn bearer_token(header: Option<&HeaderValue>) -> Result<&str, ApiError> {
    let value = header
        .ok_or_else(|| unauthorized("missing Authorization header"))?
        .to_str()
        .map_err(|_| unauthorized("unreadable Authorization header"))?;
    let (scheme, token) = value.split_once(' ').ok_or_else(|| unauthorized("expected 'Bearer <token>'"))?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(unauthorized("expected 'Bearer <token>'"));
    }
    Ok(token.trim())
}

/// Compares without stopping at the first difference, so timing does not reveal a prefix.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        diff |= usize::from(a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0xff));
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tokens_compare_equal_only_when_identical() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(!constant_time_eq(b"", b"a"));
    }

    #[test]
    fn only_signing_keys_with_a_kid_and_a_known_algorithm_are_kept() {
        // An RSA key (n/e of a small example modulus are enough to parse), an encryption key,
        // a key without kid, and a symmetric key that must never be accepted from a JWKS.
        let jwks = json!({"keys": [
            {"kty": "RSA", "kid": "rsa", "alg": "RS256", "use": "sig", "n": "sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw", "e": "AQAB"},
            {"kty": "RSA", "kid": "enc", "use": "enc", "n": "sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw", "e": "AQAB"},
            {"kty": "RSA", "n": "sXch", "e": "AQAB"},
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"}
        ]});
        let keys = parse_jwks(jwks.to_string().as_bytes()).unwrap();
        assert_eq!(keys.keys().collect::<Vec<_>>(), vec!["rsa"]);
        assert_eq!(keys["rsa"].alg, Algorithm::RS256);
        assert!(parse_jwks(b"{}").is_err());
    }

    #[test]
    fn users_act_for_themselves_and_services_for_anyone() {
        assert!(Caller::user("a").may_act_for("a").is_ok());
        assert!(matches!(Caller::user("a").may_act_for("b"), Err(ApiError::Forbidden(_))));
        assert!(Caller::Service.may_act_for("b").is_ok());
    }

    #[test]
    fn a_user_registers_only_the_address_of_their_email_claim_with_the_domain_in_any_case() {
        let alice = Caller::User { sub: "a".into(), email: Some("alice@Example.COM".into()) };
        assert!(alice.may_register_email("alice@example.com").is_ok());
        assert!(alice.may_register_email("alice@EXAMPLE.com").is_ok());
        for other in ["Alice@example.com", "bob@example.com", "alice@example.org", "alice", "alice@example.com.evil"] {
            let err = alice.may_register_email(other).unwrap_err();
            assert!(matches!(&err, ApiError::Forbidden(m) if m.contains("`email` claim")), "{other}: {err}");
        }
        assert!(matches!(Caller::user("a").may_register_email("a@example.com"), Err(ApiError::Forbidden(_))));
        assert!(Caller::Service.may_register_email("anyone@example.com").is_ok());
    }
}

#[cfg(test)]
mod proptests {
    use super::*;
    use actix_web::ResponseError;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    use jsonwebtoken::EncodingKey;
    use proptest::prelude::*;
    use serde_json::{json, Value};
    use std::future::Future;
    use std::task::{Context, Poll, Waker};

    const SECRET: &str = "the-configured-hs256-secret";
    const ISSUER: &str = "https://project.supabase.co/auth/v1";
    const AUDIENCE: &str = "authenticated";

    fn authenticator(checks_iss_and_aud: bool) -> Authenticator {
        let settings = AuthSettings {
            admin_token: None,
            jwks_url: None,
            jwks_file: None,
            jwt_secret: Some(Secret::new(SECRET)),
            issuer: checks_iss_and_aud.then(|| ISSUER.to_string()),
            audience: checks_iss_and_aud.then(|| AUDIENCE.to_string()),
            leeway_secs: 30,
            jwks_cache: Duration::from_secs(60),
            jwks_min_refresh: Duration::from_secs(10),
            allow_insecure_jwks: false,
        };
        Authenticator::new(&settings).expect("authenticator")
    }

    /// `verify` with only a secret configured never waits for anything: run it to completion.
    fn verify(auth: &Authenticator, token: &str) -> Result<Caller, ApiError> {
        let mut fut = std::pin::pin!(auth.verify(token));
        match fut.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(result) => result,
            Poll::Pending => panic!("verify waited without a JWKS to fetch"),
        }
    }

    fn assert_401(result: &Result<Caller, ApiError>) {
        match result {
            Err(e @ ApiError::Unauthorized(_)) => assert_eq!(e.status_code().as_u16(), 401),
            other => panic!("expected a 401, got {other:?}"),
        }
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
            any::<String>().prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map("\\PC{0,8}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// A JSON object written field by field, in the given order.
    fn object(fields: &[(String, Value)], order: &[usize]) -> String {
        let parts: Vec<String> = order
            .iter()
            .filter_map(|i| fields.get(*i))
            .map(|(k, v)| format!("{}:{v}", Value::String(k.clone())))
            .collect();
        format!("{{{}}}", parts.join(","))
    }

    fn sign(header: &str, claims: &str) -> String {
        let body = format!("{}.{}", URL_SAFE_NO_PAD.encode(header), URL_SAFE_NO_PAD.encode(claims));
        let key = EncodingKey::from_secret(SECRET.as_bytes());
        let sig = jsonwebtoken::crypto::sign(body.as_bytes(), &key, Algorithm::HS256).expect("sign");
        format!("{body}.{sig}")
    }

    /// A valid token: header and claims in any field order, optional `typ`/`kid`, optional
    /// `iat`/`nbf`/role, unknown claims of any JSON value; `iss`/`aud` when they are checked.
    fn valid_token(checks_iss_and_aud: bool) -> impl Strategy<Value = (String, Caller)> {
        let now = chrono::Utc::now().timestamp();
        let role = proptest::option::of(prop::sample::select(vec!["authenticated", "anon", SERVICE_ROLE]));
        let extra = prop::collection::vec(("[a-z_]{1,8}", json_value()), 0..4);
        (
            "\\PC{1,40}",
            60i64..100_000_000,
            role,
            proptest::option::of(0i64..100_000),
            any::<bool>(),
            extra,
            any::<bool>(),
            any::<bool>(),
            Just((0..12).collect::<Vec<usize>>()).prop_shuffle(),
            Just((0..3).collect::<Vec<usize>>()).prop_shuffle(),
        )
            .prop_map(
                move |(sub, exp_in, role, nbf_ago, with_iat, extra, typ, kid, claim_order, header_order)| {
                    let mut claims = vec![("sub".to_string(), json!(sub)), ("exp".to_string(), json!(now + exp_in))];
                    if let Some(role) = role {
                        claims.push(("role".into(), json!(role)));
                    }
                    if let Some(ago) = nbf_ago {
                        claims.push(("nbf".into(), json!(now - ago)));
                    }
                    if with_iat {
                        claims.push(("iat".into(), json!(now)));
                    }
                    if checks_iss_and_aud {
                        claims.push(("iss".into(), json!(ISSUER)));
                        claims.push(("aud".into(), if typ { json!(AUDIENCE) } else { json!(["other", AUDIENCE]) }));
                    }
                    claims.extend(extra.into_iter().map(|(k, v)| (format!("x_{k}"), v)));
                    let mut order = claim_order;
                    order.extend(12..claims.len());
                    let mut header = vec![("alg".to_string(), json!("HS256"))];
                    if typ {
                        header.push(("typ".into(), json!("JWT")));
                    }
                    if kid {
                        header.push(("kid".into(), json!("any")));
                    }
                    let token = sign(&object(&header, &header_order), &object(&claims, &order));
                    let caller = match role {
                        Some(SERVICE_ROLE) => Caller::Service,
                        _ => Caller::user(sub),
                    };
                    (token, caller)
                },
            )
    }

    /// Three dot-separated segments of base64url of anything, or of JSON that looks like a JWT.
    fn jwt_shaped() -> impl Strategy<Value = String> {
        let segment = prop_oneof![
            prop::collection::vec(any::<u8>(), 0..64),
            prop::sample::select(vec![
                r#"{"alg":"HS256"}"#,
                r#"{"alg":"none"}"#,
                r#"{"alg":"ES256","kid":"k"}"#,
                r#"{"alg":"RS256"}"#,
                r#"{"alg":"HS512"}"#,
                r#"{"sub":"u","exp":99999999999}"#,
                r#"{"exp":"soon"}"#,
                "{}",
                "[]",
                "null",
            ])
            .prop_map(|s| s.as_bytes().to_vec()),
            json_value().prop_map(|v| v.to_string().into_bytes()),
        ];
        (segment.clone(), segment.clone(), segment, any::<bool>()).prop_map(|(h, c, s, plain)| {
            let e = |b: &[u8]| URL_SAFE_NO_PAD.encode(b);
            match plain {
                true => format!("{}.{}.{}", e(&h), e(&c), e(&s)),
                false => format!("{}.{}.{}", e(&h), e(&c), String::from_utf8_lossy(&s)),
            }
        })
    }

    proptest! {
        #[test]
        fn any_authorization_header_gives_its_token_or_a_401(value in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..80),
            "(?i:bearer)[ \t]{0,3}\\PC{0,40}".prop_map(String::into_bytes),
        ]) {
            let Ok(header) = HeaderValue::from_bytes(&value) else { return Ok(()) };
            match bearer_token(Some(&header)) {
                Ok(token) => {
                    let text = header.to_str().unwrap();
                    let (scheme, rest) = text.split_once(' ').unwrap();
                    prop_assert!(scheme.eq_ignore_ascii_case("bearer"));
                    prop_assert_eq!(token, rest.trim());
                    prop_assert!(!token.is_empty());
                }
                Err(e) => prop_assert_eq!(e.status_code().as_u16(), 401),
            }
        }

        #[test]
        fn any_string_as_a_token_is_a_401(token in prop_oneof![any::<String>(), jwt_shaped()], checks in any::<bool>()) {
            assert_401(&verify(&authenticator(checks), &token));
        }

        #[test]
        fn a_valid_token_is_accepted_whatever_the_order_of_its_fields((token, caller) in valid_token(false)) {
            prop_assert_eq!(verify(&authenticator(false), &token).ok(), Some(caller));
        }

        #[test]
        fn a_valid_token_with_the_configured_issuer_and_audience_is_accepted((token, caller) in valid_token(true)) {
            prop_assert_eq!(verify(&authenticator(true), &token).ok(), Some(caller));
            // The same token where iss/aud are not checked is accepted too.
            prop_assert!(verify(&authenticator(false), &token).is_ok());
        }

        #[test]
        fn a_token_changed_anywhere_is_a_401((token, _) in valid_token(false), at in any::<prop::sample::Index>(), to in "[A-Za-z0-9_.=+/-]") {
            let at = at.index(token.len());
            let mut changed = token.clone();
            changed.replace_range(at..at + 1, &to);
            prop_assume!(changed != token);
            assert_401(&verify(&authenticator(false), &changed));
        }
    }
}
