//! APNs with a token-based connection: one `POST {base}/3/device/<hex token>` per message over
//! HTTP/2 and TLS, authorised by an ES256 provider token signed with the team's .p8 key.
//!
//! The messages of a batch are sent concurrently as streams of the client's few long-lived HTTP/2
//! connections (`connection`, on the `h2` crate) and each answer is classified on its own (docs/providers.md, APNs table). The provider token is shared
//! by every sender of the process ([`ProviderToken`]), because Apple refuses tokens that change
//! more often than every 20 minutes (`TooManyProviderTokenUpdates`).
//!
//! Files: `token` signs and shares the provider token, `request` builds one request from a job,
//! `classify` reads APNs's answers (docs/providers.md, APNs table); the HTTP/2 connections are
//! `providers::http2`'s; this file sends.

mod classify;
mod request;
mod token;

pub use super::http2::{SendError, CONNECTIONS};
pub use classify::{answer, classify, Answer};
pub use request::{body, Request, MAX_COLLAPSE_ID_BYTES, MAX_PAYLOAD_BYTES};
pub use token::{ProviderToken, MIN_RESIGN_INTERVAL, REFRESH_AFTER};

use super::http2::{self, Connections};
use super::{auth_failure, outage, send_each, ProviderClient, ProviderProfile, Response};
use crate::circuit::Health;
use crate::job::{Job, Provider, SendResult};
use crate::ratelimit::Limits;
use crate::secret::Secret;
use crate::settings::rules::{file_or_inline, http_url, millis, read_optional, within_ms, SettingsError};
use futures_util::future::LocalBoxFuture;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

/// `[providers.apns]`: APNs with a token-based (.p8) connection. The key comes from `key_file`
/// or `key` (see [`ApnsSettings::key_pem`]).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApnsSettings {
    pub enabled: bool,
    /// `https://api.push.apple.com` or `https://api.sandbox.push.apple.com`, or an emulator.
    pub base_url: String,
    /// Path of the .p8 token-signing key (PKCS#8 PEM, P-256)…
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// …or its PEM text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<Secret>,
    /// The key's 10-character id (JWT header `kid`).
    pub key_id: String,
    /// The developer team id (JWT claim `iss`).
    pub team_id: String,
    /// The app's bundle id (`apns-topic`).
    pub topic: String,
    /// Extra CA certificates (PEM) to trust, for private gateways and the emulator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Request timeout (`timeout_ms`).
    #[serde(rename = "timeout_ms", with = "millis")]
    pub timeout: Duration,
    #[serde(rename = "flush_after_ms", with = "millis")]
    pub flush_after: Duration,
    /// Sends per second for the whole app, shared by every worker (0 = unlimited).
    pub rate_per_sec: u32,
    /// Sends per second to one device (0 = unlimited).
    pub device_rate_per_sec: u32,
}

impl ApnsSettings {
    pub fn validate(&self) -> Result<(), SettingsError> {
        http_url("providers.apns.base_url", &self.base_url)?;
        super::timeout("providers.apns.timeout_ms", self.timeout)?;
        within_ms("providers.apns.flush_after_ms", self.flush_after, 0..=60_000)?;
        self.key_pem()?;
        for (key, value) in [("providers.apns.key_id", &self.key_id), ("providers.apns.team_id", &self.team_id)] {
            if value.len() != 10 || !value.chars().all(|c| c.is_ascii_alphanumeric()) {
                return Err(SettingsError::new(key, format!("must be 10 letters or digits, got '{value}'")));
            }
        }
        if self.topic.trim().is_empty() {
            return Err(SettingsError::new("providers.apns.topic", "must be the app's bundle id"));
        }
        self.ca_pem().map(|_| ())
    }

    /// The .p8 key's PEM, read from `key_file` (now: it may have been rotated) or `key`, and
    /// checked to be a P-256 PKCS#8 key; the error names the key it came from.
    pub fn key_pem(&self) -> Result<String, SettingsError> {
        let (pem, key) = file_or_inline(
            ("providers.apns.key_file", self.key_file.as_deref()),
            ("providers.apns.key", self.key.as_ref()),
        )?;
        jsonwebtoken::EncodingKey::from_ec_pem(pem.as_bytes())
            .map_err(|e| SettingsError::new(key, format!("is not a .p8 (PKCS#8 PEM P-256) key: {e}")))?;
        Ok(pem)
    }

    /// The extra CA certificates of `ca_file`, read now.
    pub fn ca_pem(&self) -> Result<Option<Vec<u8>>, SettingsError> {
        read_optional("providers.apns.ca_file", self.ca_file.as_deref())
    }

    /// The shared rate limits.
    pub fn limits(&self) -> Limits {
        Limits { per_sec: self.rate_per_sec, device_per_sec: self.device_rate_per_sec }
    }
}

/// Why the APNs client cannot be built (at start-up), or cannot sign a provider token.
#[derive(Debug, thiserror::Error)]
pub enum ApnsError {
    #[error("apns: the key is not a .p8 (PKCS#8 PEM P-256) key: {0}")]
    Key(#[source] jsonwebtoken::errors::Error),
    #[error("apns: signing the provider token failed: {0}")]
    Sign(#[source] jsonwebtoken::errors::Error),
    #[error("apns: unreadable CA certificates: {0}")]
    CaUnreadable(#[source] std::io::Error),
    #[error("apns: the CA file holds no PEM certificate")]
    NoCa,
    #[error("apns: unusable CA certificate: {0}")]
    CaUnusable(#[source] rustls::Error),
    #[error("apns: TLS configuration: {0}")]
    Tls(#[source] rustls::Error),
}

/// Messages one sender gathers before sending them (concurrently, one stream each).
pub const MAX_BATCH: usize = 100;
/// The most of an answer's body that is read; the rest is not (an error body is a short JSON).
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// The TLS configuration of every APNs connection: the Mozilla roots plus the certificates of
/// `ca_pem` (private gateways, the emulator), and ALPN `h2` only, since APNs speaks HTTP/2 only.
pub fn tls_config(ca_pem: Option<&[u8]>) -> Result<Arc<rustls::ClientConfig>, ApnsError> {
    let mut extra = Vec::new();
    if let Some(pem) = ca_pem {
        extra = rustls_pemfile::certs(&mut &pem[..]).collect::<Result<Vec<_>, _>>().map_err(ApnsError::CaUnreadable)?;
        if extra.is_empty() {
            return Err(ApnsError::NoCa);
        }
    }
    http2::tls_config(extra).map_err(|e| match e {
        http2::TlsError::Certificate(e) => ApnsError::CaUnusable(e),
        http2::TlsError::Config(e) => ApnsError::Tls(e),
    })
}

pub struct ApnsClient {
    connections: Rc<Connections>,
    timeout: Duration,
    base_url: String,
    topic: String,
    token: Arc<ProviderToken>,
    profile: ProviderProfile,
}

impl ApnsClient {
    /// `tls` and `token` are built once per process (see `providers::enabled`) and shared by
    /// every sender; the connections belong to this sender's thread (see `connection`).
    pub fn new(settings: &ApnsSettings, tls: Arc<rustls::ClientConfig>, token: Arc<ProviderToken>) -> ApnsClient {
        let base_url = settings.base_url.trim_end_matches('/').to_string();
        ApnsClient {
            // TLS whatever the URL's scheme: APNs speaks HTTP/2 over TLS only.
            connections: Rc::new(Connections::new("apns", &base_url, tls, false, settings.timeout)),
            timeout: settings.timeout,
            base_url,
            topic: settings.topic.clone(),
            token,
            profile: ProviderProfile {
                provider: Provider::Apns,
                max_batch: MAX_BATCH,
                flush_after: settings.flush_after,
            },
        }
    }
}

impl ProviderClient for ApnsClient {
    fn profile(&self) -> ProviderProfile {
        self.profile
    }

    fn send(&self, jobs: &[Job]) -> LocalBoxFuture<'static, Response> {
        // The lifetime left is read on the provider token's clock (a test's `ManualClock`).
        let now_ms = super::lifetime::now_ms(self.token.clock());
        send_each(jobs.iter().map(|job| {
            let request = Request::build(job, &self.base_url, now_ms);
            let (connections, topic, token) = (self.connections.clone(), self.topic.clone(), self.token.clone());
            let timeout = self.timeout;
            async move {
                match request {
                    Ok(request) => send_one(&connections, timeout, &topic, &token, request).await,
                    Err(refused) => (refused, Health::Up),
                }
            }
        }))
    }
}

/// Sends one request: once, or twice when APNs says the provider token expired and it may be
/// re-signed. Each try is bounded by `timeout` (connecting included).
async fn send_one(
    connections: &Connections,
    timeout: Duration,
    topic: &str,
    token: &ProviderToken,
    request: Request,
) -> (SendResult, Health) {
    let jwt = match token.current() {
        Ok(jwt) => jwt,
        Err(error) => return auth_failure(error),
    };
    let mut answer = match post(connections, timeout, topic, &jwt, &request).await {
        Ok(answer) => answer,
        Err(error) => return outage(error),
    };
    if answer.status == 403 && answer.reason == "ExpiredProviderToken" {
        let Some(fresh) = token.expired(&jwt) else {
            return auth_failure("apns: HTTP 403 ExpiredProviderToken (re-signing is not allowed yet)");
        };
        // A second ExpiredProviderToken is classified as AUTH below: no third try.
        answer = match post(connections, timeout, topic, &fresh, &request).await {
            Ok(answer) => answer,
            Err(error) => return outage(error),
        };
    }
    if answer.status == 429 && answer.reason == "TooManyProviderTokenUpdates" {
        token.too_many_updates();
    }
    let apns_id = answer.apns_id.or(Some(request.apns_id));
    classify(answer.status, &answer.reason, answer.timestamp, apns_id, answer.retry_after)
}

/// One request on one of the client's connections, within `timeout` (see
/// [`Connections::send`]).
async fn post(
    connections: &Connections,
    timeout: Duration,
    topic: &str,
    jwt: &str,
    request: &Request,
) -> Result<Answer, SendError> {
    let head = || {
        let mut head = http::Request::post(request.url.as_str())
            .header("authorization", format!("bearer {jwt}"))
            .header("apns-topic", topic)
            .header("apns-push-type", request.push_type)
            .header("apns-priority", request.priority)
            .header("apns-id", request.apns_id.as_str())
            .header("content-type", "application/json");
        if let Some(expiration) = request.expiration {
            head = head.header("apns-expiration", expiration.to_string());
        }
        if let Some(collapse_id) = &request.collapse_id {
            head = head.header("apns-collapse-id", collapse_id.as_str());
        }
        head.body(())
    };
    let reply = connections.send(timeout, head, request.body.clone(), MAX_RESPONSE_BYTES).await?;
    Ok(answer(reply.status, &reply.headers, &reply.body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extra_ca_certificates_must_be_pem() {
        assert!(tls_config(None).is_ok());
        assert!(tls_config(Some(b"garbage")).is_err());
    }
}
