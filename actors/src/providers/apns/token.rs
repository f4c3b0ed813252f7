//! The APNs provider token: an ES256 JWT signed with the team's .p8 key, shared by every sender,
//! re-signed on Apple's schedule.

use super::ApnsError;
use crate::clock::{Clock, SystemClock};
use serde::Serialize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Re-sign the provider token once it is this old: before Apple's 60 minutes…
pub const REFRESH_AFTER: Duration = Duration::from_secs(50 * 60);
/// …and never sooner than this after the previous signature (Apple's 20 minutes).
pub const MIN_RESIGN_INTERVAL: Duration = Duration::from_secs(20 * 60);

/// The ES256 provider token (JWT `{"alg":"ES256","kid"}` `{"iss":team,"iat"}`), shared by all
/// senders of the provider. It is re-signed when older than `refresh_after`, or when APNs says
/// it expired, but never sooner than `min_interval` after the previous signature, and not at all
/// for 20 minutes after APNs answered `TooManyProviderTokenUpdates`. Ages and `iat` are read
/// from its [`Clock`].
pub struct ProviderToken {
    key: jsonwebtoken::EncodingKey,
    header: jsonwebtoken::Header,
    team_id: String,
    refresh_after: Duration,
    min_interval: Duration,
    clock: Arc<dyn Clock>,
    state: Mutex<TokenState>,
}

#[derive(Default)]
struct TokenState {
    /// The token in use and when it was signed.
    current: Option<(String, Instant)>,
    /// No re-signing before this instant (after `TooManyProviderTokenUpdates`).
    blocked_until: Option<Instant>,
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    iat: u64,
}

impl ProviderToken {
    /// A token source for `key_pem` (PKCS#8 P-256, the .p8 file, see
    /// [`ApnsSettings::key_pem`](super::ApnsSettings::key_pem)) with Apple's timing
    /// ([`REFRESH_AFTER`], [`MIN_RESIGN_INTERVAL`]) on the system's clock.
    pub fn from_settings(key_pem: &str, settings: &super::ApnsSettings) -> Result<ProviderToken, ApnsError> {
        let (refresh_after, min_interval, clock) = (REFRESH_AFTER, MIN_RESIGN_INTERVAL, Arc::new(SystemClock));
        ProviderToken::new(key_pem, &settings.key_id, &settings.team_id, refresh_after, min_interval, clock)
    }

    /// A token source with these timings, reading the time from `clock`.
    pub fn new(
        key_pem: &str,
        key_id: &str,
        team_id: &str,
        refresh_after: Duration,
        min_interval: Duration,
        clock: Arc<dyn Clock>,
    ) -> Result<ProviderToken, ApnsError> {
        let key = jsonwebtoken::EncodingKey::from_ec_pem(key_pem.as_bytes()).map_err(ApnsError::Key)?;
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.typ = None;
        header.kid = Some(key_id.to_string());
        let token = ProviderToken {
            key,
            header,
            team_id: team_id.to_string(),
            refresh_after,
            min_interval,
            clock,
            state: Mutex::new(TokenState::default()),
        };
        // Signed now, so that a key jsonwebtoken parses but cannot sign with stops start-up.
        let jwt = token.sign()?;
        token.state().current = Some((jwt, token.clock.now()));
        Ok(token)
    }

    /// The clock the token is judged on: the APNs client reads the time a job has left from it
    /// too, so that a test's `ManualClock` decides both.
    pub fn clock(&self) -> &dyn Clock {
        self.clock.as_ref()
    }

    /// The token to send now, signed anew when the current one is due.
    pub fn current(&self) -> Result<String, ApnsError> {
        self.current_at(self.clock.now())
    }

    /// APNs answered `ExpiredProviderToken` to a request that carried `used`: the token to retry
    /// with, or `None` when re-signing is not allowed yet. When another request already re-signed,
    /// that newer token is returned without signing again.
    pub fn expired(&self, used: &str) -> Option<String> {
        self.expired_at(used, self.clock.now())
    }

    /// APNs answered `TooManyProviderTokenUpdates`: do not re-sign for 20 minutes (or
    /// `min_interval` when that is longer), whatever the token's age.
    pub fn too_many_updates(&self) {
        self.too_many_updates_at(self.clock.now());
    }

    fn state(&self) -> std::sync::MutexGuard<'_, TokenState> {
        // The state is two fields assigned whole: a panic elsewhere cannot leave it half-written.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn sign(&self) -> Result<String, ApnsError> {
        let iat = self.clock.unix_secs();
        jsonwebtoken::encode(&self.header, &Claims { iss: &self.team_id, iat }, &self.key).map_err(ApnsError::Sign)
    }

    fn may_sign(&self, state: &TokenState, now: Instant) -> bool {
        let unblocked = state.blocked_until.is_none_or(|until| now >= until);
        let spaced = state.current.as_ref().is_none_or(|(_, at)| now.duration_since(*at) >= self.min_interval);
        unblocked && spaced
    }

    fn current_at(&self, now: Instant) -> Result<String, ApnsError> {
        let mut state = self.state();
        match &state.current {
            Some((jwt, at)) if now.duration_since(*at) < self.refresh_after || !self.may_sign(&state, now) => {
                Ok(jwt.clone())
            }
            _ => {
                let jwt = self.sign()?;
                state.current = Some((jwt.clone(), now));
                Ok(jwt)
            }
        }
    }

    fn expired_at(&self, used: &str, now: Instant) -> Option<String> {
        let mut state = self.state();
        if let Some((jwt, _)) = &state.current {
            if jwt != used {
                return Some(jwt.clone());
            }
        }
        if !self.may_sign(&state, now) {
            return None;
        }
        let jwt = self.sign().ok()?;
        state.current = Some((jwt.clone(), now));
        Some(jwt)
    }

    fn too_many_updates_at(&self, now: Instant) {
        self.state().blocked_until = Some(now + self.min_interval.max(MIN_RESIGN_INTERVAL));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    /// A P-256 PKCS#8 key generated for these tests only.
    const KEY_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQghVxAg2Xl+VFBFY5p
HpzgOg5ptmZFRQPY9/icjTB2bgmhRANCAAQNElV32MqauBxcU15MGIenhRoQv2vz
uzQcTSf1skvCNYBseC2yZ1A57q1rCuGb0nDFngD3RZWbbd6BnWMXEiO5
-----END PRIVATE KEY-----
";

    fn token(refresh_after: Duration, min_interval: Duration) -> ProviderToken {
        ProviderToken::new(KEY_PEM, "ABC123DEFG", "DEF123GHIJ", refresh_after, min_interval, Arc::new(SystemClock))
            .expect("key")
    }

    #[test]
    fn the_token_is_an_es256_jwt_with_kid_iss_and_iat() {
        let t = token(REFRESH_AFTER, MIN_RESIGN_INTERVAL);
        let jwt = t.current().expect("token");
        let header = jsonwebtoken::decode_header(&jwt).expect("header");
        assert_eq!(header.alg, jsonwebtoken::Algorithm::ES256);
        assert_eq!(header.kid.as_deref(), Some("ABC123DEFG"));
        let claims: Value = jsonwebtoken::dangerous::insecure_decode(&jwt).expect("claims").claims;
        assert_eq!(claims["iss"], json!("DEF123GHIJ"));
        assert!(claims["iat"].as_u64().is_some_and(|iat| iat > 1_600_000_000), "{claims}");
    }

    #[test]
    fn the_token_is_reused_until_it_is_50_minutes_old() {
        let t = token(REFRESH_AFTER, MIN_RESIGN_INTERVAL);
        let start = Instant::now();
        t.state().current = Some(("first".into(), start));
        assert_eq!(t.current_at(start + Duration::from_secs(49 * 60)).expect("token"), "first");
        let later = t.current_at(start + Duration::from_secs(50 * 60)).expect("token");
        assert_ne!(later, "first", "re-signed at 50 minutes");
    }

    #[test]
    fn the_token_ages_on_its_clock_and_is_signed_with_the_clocks_time() {
        let clock = crate::clock::ManualClock::new();
        let t =
            ProviderToken::new(KEY_PEM, "ABC123DEFG", "DEF123GHIJ", REFRESH_AFTER, MIN_RESIGN_INTERVAL, clock.shared())
                .expect("key");
        let first = t.current().expect("token");
        clock.advance(Duration::from_secs(49 * 60));
        assert_eq!(t.current().expect("token"), first, "49 minutes on the clock: reused");
        clock.advance(Duration::from_secs(60));
        let second = t.current().expect("token");
        assert_ne!(second, first, "50 minutes on the clock: re-signed");
        let claims: Value = jsonwebtoken::dangerous::insecure_decode(&second).expect("claims").claims;
        assert_eq!(claims["iat"], json!(clock.unix_secs()));
    }

    #[test]
    fn an_expired_token_is_re_signed_only_20_minutes_after_the_last_signature() {
        let t = token(REFRESH_AFTER, MIN_RESIGN_INTERVAL);
        let start = Instant::now();
        t.state().current = Some(("old".into(), start));
        assert_eq!(t.expired_at("old", start + Duration::from_secs(19 * 60)), None, "too soon");
        let fresh = t.expired_at("old", start + Duration::from_secs(20 * 60)).expect("re-signed");
        assert_ne!(fresh, "old");
        // Other requests that carried the old token get the new one without another signature.
        let at = t.state().current.as_ref().expect("signed").1;
        assert_eq!(t.expired_at("old", start + Duration::from_secs(21 * 60)), Some(fresh.clone()));
        assert_eq!(t.state().current.as_ref().expect("signed").1, at);
        // The new one expiring at once is not cured by signing again.
        assert_eq!(t.expired_at(&fresh, start + Duration::from_secs(21 * 60)), None);
    }

    #[test]
    fn too_many_token_updates_stop_re_signing_for_20_minutes() {
        let t = token(REFRESH_AFTER, MIN_RESIGN_INTERVAL);
        let start = Instant::now();
        t.state().current = Some(("old".into(), start));
        let now = start + Duration::from_secs(55 * 60);
        t.too_many_updates_at(now);
        assert_eq!(t.current_at(now + Duration::from_secs(60)).expect("token"), "old", "not re-signed while blocked");
        assert_eq!(t.expired_at("old", now + Duration::from_secs(19 * 60)), None);
        assert!(t.expired_at("old", now + Duration::from_secs(20 * 60)).is_some_and(|jwt| jwt != "old"));
    }

    #[test]
    fn a_key_that_is_not_p256_pkcs8_is_refused() {
        let clock = Arc::new(SystemClock);
        let err =
            ProviderToken::new("not a key", "ABC123DEFG", "DEF123GHIJ", REFRESH_AFTER, MIN_RESIGN_INTERVAL, clock)
                .err()
                .expect("refused");
        assert!(err.to_string().starts_with("apns: the key is not a .p8"), "{err}");
    }
}
