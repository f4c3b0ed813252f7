//! The service account and its OAuth access tokens: a signed RS256 assertion exchanged at the
//! token endpoint, cached and shared by every FCM sender of the process.

use super::snippet;
use crate::clock::{Clock, SystemClock};
use crate::job::bounded;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The OAuth scope FCM sends need.
pub const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";
/// Google's token endpoint, used when the service account does not name one.
pub const DEFAULT_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";

/// The fields of a Google service-account JSON key that FCM needs.
#[derive(Clone, Deserialize)]
pub struct ServiceAccount {
    pub project_id: String,
    pub client_email: String,
    /// PKCS#8 PEM RSA key.
    pub private_key: String,
    #[serde(default = "default_token_uri")]
    pub token_uri: String,
}

fn default_token_uri() -> String {
    DEFAULT_TOKEN_URI.into()
}

impl fmt::Debug for ServiceAccount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceAccount")
            .field("project_id", &self.project_id)
            .field("client_email", &self.client_email)
            .field("private_key", &"[redacted]")
            .field("token_uri", &self.token_uri)
            .finish()
    }
}

/// Why a service-account JSON key cannot be used. The texts follow the configuration key that
/// held it (`providers.fcm.service_account_json …`).
#[derive(Debug, thiserror::Error)]
pub enum ServiceAccountError {
    #[error("not a service-account JSON key: {0}")]
    NotJson(#[source] serde_json::Error),
    #[error("project_id is empty")]
    NoProjectId,
    #[error("client_email is empty")]
    NoClientEmail,
    #[error("token_uri must be an http(s) URL, got '{0}'")]
    TokenUri(String),
    #[error("private_key is not a PEM RSA key: {0}")]
    Key(#[source] jsonwebtoken::errors::Error),
}

impl ServiceAccount {
    /// Parses a service-account JSON key and checks that its private key can sign.
    pub fn from_json(raw: &str) -> Result<ServiceAccount, ServiceAccountError> {
        let account: ServiceAccount = serde_json::from_str(raw).map_err(ServiceAccountError::NotJson)?;
        if account.project_id.trim().is_empty() {
            return Err(ServiceAccountError::NoProjectId);
        }
        if account.client_email.trim().is_empty() {
            return Err(ServiceAccountError::NoClientEmail);
        }
        if !(account.token_uri.starts_with("https://") || account.token_uri.starts_with("http://")) {
            return Err(ServiceAccountError::TokenUri(account.token_uri));
        }
        account.signing_key()?;
        Ok(account)
    }

    fn signing_key(&self) -> Result<jsonwebtoken::EncodingKey, ServiceAccountError> {
        jsonwebtoken::EncodingKey::from_rsa_pem(self.private_key.as_bytes()).map_err(ServiceAccountError::Key)
    }
}

/// An OAuth access token and when to stop using it.
#[derive(Clone)]
struct AccessToken {
    value: String,
    refresh_at: Instant,
}

/// A failed attempt to get an access token.
#[derive(Debug, Clone, PartialEq)]
pub enum TokenError {
    /// The token endpoint refused the assertion (400/401): the service account is wrong or
    /// disabled. Opens the circuit.
    Refused(String),
    /// The endpoint could not be reached or failed (network, 5xx).
    Unavailable(String),
}

/// The OAuth access tokens of one service account, shared by every sender of the provider:
/// fetched on first use, cached, refreshed [`REFRESH_BEFORE`] before they expire, and never
/// fetched by two senders at once (the mutex is held across the fetch). Lifetimes, the failure
/// memory and the assertion's `iat` are read from its [`Clock`].
pub struct TokenSource {
    account: ServiceAccount,
    key: jsonwebtoken::EncodingKey,
    clock: Arc<dyn Clock>,
    cache: tokio::sync::Mutex<Cache>,
}

#[derive(Default)]
struct Cache {
    token: Option<AccessToken>,
    /// The last failure, re-used for a moment so a down endpoint is not hammered by every send.
    failed: Option<(Instant, TokenError)>,
    fetched: u64,
}

/// How long before its expiry a token is replaced.
pub const REFRESH_BEFORE: Duration = Duration::from_secs(300);
/// How long a failed token request is answered from memory.
pub const FAILURE_MEMORY: Duration = Duration::from_secs(1);

#[derive(Serialize)]
struct Assertion<'a> {
    iss: &'a str,
    scope: &'a str,
    aud: &'a str,
    iat: u64,
    exp: u64,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default = "an_hour")]
    expires_in: u64,
}

fn an_hour() -> u64 {
    3600
}

impl TokenSource {
    /// The token source of `account`, on the system's clock.
    pub fn new(account: ServiceAccount) -> Result<TokenSource, super::FcmError> {
        TokenSource::with_clock(account, Arc::new(SystemClock))
    }

    /// The token source of `account`, reading the time from `clock`.
    pub fn with_clock(account: ServiceAccount, clock: Arc<dyn Clock>) -> Result<TokenSource, super::FcmError> {
        let key = account.signing_key()?;
        Ok(TokenSource { account, key, clock, cache: Default::default() })
    }

    /// The FCM project of the service account.
    pub fn project_id(&self) -> &str {
        &self.account.project_id
    }

    /// The clock tokens are judged on: the FCM client reads the time a job has left from it too,
    /// so that a test's `ManualClock` decides both.
    pub fn clock(&self) -> &dyn Clock {
        self.clock.as_ref()
    }

    /// Token requests made so far (for the admin view and tests).
    pub async fn fetched(&self) -> u64 {
        self.cache.lock().await.fetched
    }

    /// A valid access token, fetching one if none is cached or the cached one is due.
    pub async fn token(&self, http: &awc::Client) -> Result<String, TokenError> {
        self.token_replacing(http, None).await
    }

    /// Like [`token`](Self::token), but `rejected` (a token FCM just refused) is not handed out
    /// again: unless another sender already replaced it, a new one is fetched.
    pub async fn token_replacing(&self, http: &awc::Client, rejected: Option<&str>) -> Result<String, TokenError> {
        let mut cache = self.cache.lock().await;
        let now = self.clock.now();
        if let Some(token) = &cache.token {
            if now < token.refresh_at && Some(token.value.as_str()) != rejected {
                return Ok(token.value.clone());
            }
        }
        if let Some((at, error)) = &cache.failed {
            if now.duration_since(*at) < FAILURE_MEMORY {
                return Err(error.clone());
            }
        }
        cache.fetched += 1;
        match self.fetch(http).await {
            Ok(token) => {
                cache.failed = None;
                cache.token = Some(token.clone());
                Ok(token.value)
            }
            Err(error) => {
                cache.token = None;
                cache.failed = Some((self.clock.now(), error.clone()));
                Err(error)
            }
        }
    }

    /// The signed assertion for the token endpoint (RS256, valid for an hour).
    fn assertion(&self) -> Result<String, TokenError> {
        let iat = self.clock.unix_secs();
        let claims = Assertion {
            iss: &self.account.client_email,
            scope: SCOPE,
            aud: &self.account.token_uri,
            iat,
            exp: iat + 3600,
        };
        let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        jsonwebtoken::encode(&header, &claims, &self.key)
            .map_err(|e| TokenError::Refused(format!("fcm: signing the token assertion failed: {e}")))
    }

    async fn fetch(&self, http: &awc::Client) -> Result<AccessToken, TokenError> {
        let assertion = self.assertion()?;
        let form = [("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"), ("assertion", assertion.as_str())];
        let started = self.clock.now();
        let mut resp = http
            .post(&self.account.token_uri)
            .insert_header(("accept", "application/json"))
            .send_form(&form)
            .await
            .map_err(|e| TokenError::Unavailable(format!("fcm: token endpoint unreachable: {e}")))?;
        let status = resp.status().as_u16();
        let body = resp
            .body()
            .limit(64 * 1024)
            .await
            .map_err(|e| TokenError::Unavailable(format!("fcm: reading the token response failed: {e}")))?;
        let (value, refresh_in) = token_answer(status, &body)?;
        Ok(AccessToken { value, refresh_at: started + refresh_in })
    }
}

/// The longest an access token is used, whatever `expires_in` says (Google's last an hour).
pub const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);

/// Classifies the token endpoint's answer: the access token and how long after the request it
/// is to be replaced, or why there is none.
pub fn token_answer(status: u16, body: &[u8]) -> Result<(String, Duration), TokenError> {
    match status {
        200 => {
            let parsed: TokenResponse = serde_json::from_slice(body)
                .map_err(|e| TokenError::Unavailable(bounded(format!("fcm: unreadable token response: {e}"))))?;
            let lifetime = Duration::from_secs(parsed.expires_in).min(MAX_TOKEN_LIFETIME);
            // Refresh early; a very short-lived token is still used for half its life.
            let early = REFRESH_BEFORE.min(lifetime / 2);
            Ok((parsed.access_token, lifetime - early))
        }
        400 | 401 | 403 => Err(TokenError::Refused(bounded(format!(
            "fcm: token endpoint refused the service account ({status}): {}",
            snippet(body)
        )))),
        _ => Err(TokenError::Unavailable(bounded(format!("fcm: token endpoint answered {status}: {}", snippet(body))))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_absurd_expires_in_is_capped_at_an_hour() {
        // Found while writing the token-answer properties: `expires_in` near u64::MAX overflowed
        // `Instant + lifetime` and panicked the sender that fetched the token.
        let body = json!({"access_token": "t", "expires_in": u64::MAX}).to_string();
        let (token, refresh_in) = token_answer(200, body.as_bytes()).expect("token");
        assert_eq!((token.as_str(), refresh_in), ("t", MAX_TOKEN_LIFETIME - REFRESH_BEFORE));
        let (_, refresh_in) = token_answer(200, br#"{"access_token":"t","expires_in":3599}"#).expect("token");
        assert_eq!(refresh_in, Duration::from_secs(3599) - REFRESH_BEFORE);
    }

    #[test]
    fn a_binary_token_endpoint_answer_gives_a_bounded_error() {
        // Found by the `fcm` fuzz target: 200 bytes that are not UTF-8 became 600 bytes of `�`.
        for status in [255, 400, 503] {
            let (Err(TokenError::Refused(e)) | Err(TokenError::Unavailable(e))) = token_answer(status, &[0xff; 300])
            else {
                panic!("{status} gave a token");
            };
            assert!(e.len() <= crate::providers::MAX_ERROR_BYTES, "{status}: {} bytes", e.len());
        }
        assert!(snippet(&[0xff; 300]).len() <= 200);
    }

    #[test]
    fn a_service_account_without_a_usable_key_is_refused() {
        let raw = json!({"project_id": "p", "client_email": "a@b", "private_key": "nope"}).to_string();
        assert!(ServiceAccount::from_json(&raw).unwrap_err().to_string().contains("private_key"));
        assert!(ServiceAccount::from_json("{}").unwrap_err().to_string().contains("service-account"));
    }
}

#[cfg(test)]
mod proptests {
    use super::*;
    use crate::providers::check::{body, status};
    use proptest::prelude::*;
    use serde_json::json;

    proptest! {
        #[test]
        fn any_token_answer_is_a_token_used_at_most_an_hour_or_a_bounded_error(status in status(), body in body()) {
            match token_answer(status, &body) {
                Ok((_, refresh_in)) => prop_assert!(status == 200 && refresh_in <= MAX_TOKEN_LIFETIME),
                Err(TokenError::Refused(e) | TokenError::Unavailable(e)) => {
                    prop_assert!(e.len() <= crate::providers::MAX_ERROR_BYTES, "{} bytes", e.len())
                }
            }
        }

        #[test]
        fn any_expires_in_gives_a_refresh_within_the_hour(expires_in in any::<u64>()) {
            let body = json!({"access_token": "t", "expires_in": expires_in}).to_string();
            let (_, refresh_in) = token_answer(200, body.as_bytes()).unwrap();
            prop_assert!(refresh_in <= Duration::from_secs(expires_in).min(MAX_TOKEN_LIFETIME));
            prop_assert!(refresh_in >= Duration::from_secs(expires_in).min(MAX_TOKEN_LIFETIME) / 2);
        }
    }
}
