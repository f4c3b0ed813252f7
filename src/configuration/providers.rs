//! `[providers.*]`: one section per provider. Credentials come from files (`*_file`) or inline
//! from the environment (`NOTIFY__PROVIDERS__FCM__SERVICE_ACCOUNT_JSON`, …), are wrapped in
//! [`Secret`], and are read and checked at start-up so a bad key stops the process there, named.

use super::{invalid, ConfigError, Secret};
use notify_relay_engine::providers::email;
use notify_relay_engine::providers::fcm::ServiceAccount;
use notify_relay_engine::settings::{ApnsSettings, EmailSettings, ExpoSettings, FcmSettings};
use notify_relay_engine::Limits;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProvidersSettings {
    pub expo: ExpoProviderSettings,
    pub fcm: FcmProviderSettings,
    pub apns: ApnsProviderSettings,
    pub email: EmailProviderSettings,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpoProviderSettings {
    pub enabled: bool,
    /// `https://exp.host`, or an emulator.
    pub base_url: String,
    /// Only with Expo's "enhanced push security".
    pub access_token: Option<Secret>,
    /// Request timeout, in ms.
    pub timeout_ms: u64,
    /// How long a sender waits to fill a 100-message request, in ms.
    pub flush_after_ms: u64,
    /// How long after a ticket its receipt is fetched, in ms (Expo: ~15 minutes).
    pub receipt_delay_ms: u64,
    /// How often due receipts are looked for, in ms.
    pub receipt_poll_ms: u64,
    /// Sends per second for the whole project, shared by every worker (0 = unlimited).
    pub rate_per_sec: u32,
    /// Sends per second to one device (0 = unlimited).
    pub device_rate_per_sec: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FcmProviderSettings {
    pub enabled: bool,
    /// `https://fcm.googleapis.com`, or an emulator.
    pub base_url: String,
    /// Path of the service-account JSON key…
    pub service_account_file: Option<PathBuf>,
    /// …or the JSON itself (e.g. from a Kubernetes secret in the environment).
    pub service_account_json: Option<Secret>,
    pub timeout_ms: u64,
    /// How long a sender gathers messages before sending them (concurrently), in ms.
    pub flush_after_ms: u64,
    pub rate_per_sec: u32,
    pub device_rate_per_sec: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApnsProviderSettings {
    pub enabled: bool,
    /// `https://api.push.apple.com` (production) or `https://api.sandbox.push.apple.com`.
    pub base_url: String,
    /// Path of the .p8 token-signing key…
    pub key_file: Option<PathBuf>,
    /// …or its PEM text.
    pub key: Option<Secret>,
    /// The key's id (10 characters, from the Apple developer account).
    pub key_id: String,
    /// The team id (10 characters).
    pub team_id: String,
    /// The app's bundle id, sent as `apns-topic`.
    pub topic: String,
    /// Extra CA certificates (PEM) to trust, for private gateways and the emulator.
    pub ca_file: Option<PathBuf>,
    pub timeout_ms: u64,
    pub flush_after_ms: u64,
    pub rate_per_sec: u32,
    pub device_rate_per_sec: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailProviderSettings {
    pub enabled: bool,
    /// `smtp://host:25` (plain), `smtp://user:pass@host:587?tls=starttls`, `smtps://user:pass@host:465`.
    pub smtp_url: Secret,
    /// The From mailbox: `no-reply@example.com` or `Name <no-reply@example.com>`.
    pub from: String,
    /// Extra CA certificates (PEM) to trust for the relay.
    pub ca_file: Option<PathBuf>,
    pub timeout_ms: u64,
    pub flush_after_ms: u64,
    /// SMTP connections each sender keeps open.
    pub connections: u32,
    pub rate_per_sec: u32,
    pub device_rate_per_sec: u32,
}

/// The enabled providers, converted for the engine.
#[derive(Debug, Default)]
pub struct EngineProviders {
    pub expo: Option<ExpoSettings>,
    pub fcm: Option<FcmSettings>,
    pub apns: Option<ApnsSettings>,
    pub email: Option<EmailSettings>,
}

fn http_url(key: &'static str, url: &str) -> Result<(), ConfigError> {
    match url.starts_with("http://") || url.starts_with("https://") {
        true => Ok(()),
        false => Err(invalid(key, format!("must be an http(s) URL, got '{url}'"))),
    }
}

/// A provider request timeout: at least 1 ms, at most 10 minutes.
fn timeout(key: &'static str, value: u64) -> Result<(), ConfigError> {
    super::within(key, value, 1..=600_000)
}

fn read(key: &'static str, path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|e| invalid(key, format!("cannot read {}: {e}", path.display())))
}

/// A secret given either as a file or inline; exactly one of the two.
fn file_or_inline(
    (file_key, file): (&'static str, Option<&PathBuf>),
    (inline_key, inline): (&'static str, Option<&Secret>),
) -> Result<(String, &'static str), ConfigError> {
    match (file, inline) {
        (Some(path), None) => Ok((read(file_key, path)?, file_key)),
        (None, Some(secret)) => Ok((secret.expose().to_string(), inline_key)),
        (Some(_), Some(_)) => Err(invalid(file_key, format!("and `{inline_key}` are both set; set one"))),
        (None, None) => Err(invalid(file_key, format!("(or `{inline_key}`) must be set when the provider is enabled"))),
    }
}

fn limits(per_sec: u32, device_per_sec: u32) -> Limits {
    Limits { per_sec, device_per_sec }
}

impl ProvidersSettings {
    /// Checks every enabled provider, reading its credentials.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.engine().map(|_| ())
    }

    /// The longest a send of the enabled providers can take (the claim idle time must exceed it).
    pub fn longest_timeout_ms(&self) -> Option<u64> {
        // A delivery may wait `flush_after_ms` in its sender's buffer before it is sent at all.
        [
            (self.expo.enabled, self.expo.timeout_ms, self.expo.flush_after_ms),
            (self.fcm.enabled, self.fcm.timeout_ms, self.fcm.flush_after_ms),
            (self.apns.enabled, self.apns.timeout_ms, self.apns.flush_after_ms),
            // An email send may wait `timeout_ms` for a connection, then take `timeout_ms`.
            (self.email.enabled, self.email.timeout_ms.saturating_mul(2), self.email.flush_after_ms),
        ]
        .into_iter()
        .filter_map(|(enabled, timeout, flush)| enabled.then_some(timeout.saturating_add(flush)))
        .max()
    }

    pub fn engine(&self) -> Result<EngineProviders, ConfigError> {
        Ok(EngineProviders {
            expo: self.expo.enabled.then(|| self.expo.engine()).transpose()?,
            fcm: self.fcm.enabled.then(|| self.fcm.engine()).transpose()?,
            apns: self.apns.enabled.then(|| self.apns.engine()).transpose()?,
            email: self.email.enabled.then(|| self.email.engine()).transpose()?,
        })
    }
}

impl ExpoProviderSettings {
    fn engine(&self) -> Result<ExpoSettings, ConfigError> {
        http_url("providers.expo.base_url", &self.base_url)?;
        timeout("providers.expo.timeout_ms", self.timeout_ms)?;
        super::within("providers.expo.flush_after_ms", self.flush_after_ms, 0..=60_000)?;
        if self.receipt_poll_ms < 50 {
            return Err(invalid("providers.expo.receipt_poll_ms", "must be at least 50"));
        }
        if self.receipt_delay_ms >= 24 * 3600 * 1000 {
            return Err(invalid("providers.expo.receipt_delay_ms", "must be under 24 h (Expo keeps receipts a day)"));
        }
        Ok(ExpoSettings {
            base_url: self.base_url.clone(),
            access_token: self.access_token.as_ref().map(|t| t.expose().to_string()),
            timeout: Duration::from_millis(self.timeout_ms),
            flush_after: Duration::from_millis(self.flush_after_ms),
            receipt_delay: Duration::from_millis(self.receipt_delay_ms),
            receipt_poll: Duration::from_millis(self.receipt_poll_ms),
            limits: limits(self.rate_per_sec, self.device_rate_per_sec),
        })
    }
}

impl FcmProviderSettings {
    fn engine(&self) -> Result<FcmSettings, ConfigError> {
        http_url("providers.fcm.base_url", &self.base_url)?;
        timeout("providers.fcm.timeout_ms", self.timeout_ms)?;
        super::within("providers.fcm.flush_after_ms", self.flush_after_ms, 0..=60_000)?;
        let (json, key) = file_or_inline(
            ("providers.fcm.service_account_file", self.service_account_file.as_ref()),
            ("providers.fcm.service_account_json", self.service_account_json.as_ref()),
        )?;
        let account = ServiceAccount::from_json(&json).map_err(|e| invalid(key, e.to_string()))?;
        Ok(FcmSettings {
            base_url: self.base_url.clone(),
            account,
            timeout: Duration::from_millis(self.timeout_ms),
            flush_after: Duration::from_millis(self.flush_after_ms),
            limits: limits(self.rate_per_sec, self.device_rate_per_sec),
        })
    }
}

impl ApnsProviderSettings {
    fn engine(&self) -> Result<ApnsSettings, ConfigError> {
        http_url("providers.apns.base_url", &self.base_url)?;
        timeout("providers.apns.timeout_ms", self.timeout_ms)?;
        super::within("providers.apns.flush_after_ms", self.flush_after_ms, 0..=60_000)?;
        let (key_pem, key) = file_or_inline(
            ("providers.apns.key_file", self.key_file.as_ref()),
            ("providers.apns.key", self.key.as_ref()),
        )?;
        jsonwebtoken::EncodingKey::from_ec_pem(key_pem.as_bytes())
            .map_err(|e| invalid(key, format!("is not a .p8 (PKCS#8 PEM P-256) key: {e}")))?;
        for (key, value) in [("providers.apns.key_id", &self.key_id), ("providers.apns.team_id", &self.team_id)] {
            if value.len() != 10 || !value.chars().all(|c| c.is_ascii_alphanumeric()) {
                return Err(invalid(key, format!("must be 10 letters or digits, got '{value}'")));
            }
        }
        if self.topic.trim().is_empty() {
            return Err(invalid("providers.apns.topic", "must be the app's bundle id"));
        }
        let ca_pem = match &self.ca_file {
            Some(path) => Some(read("providers.apns.ca_file", path)?.into_bytes()),
            None => None,
        };
        Ok(ApnsSettings {
            base_url: self.base_url.clone(),
            key_pem,
            key_id: self.key_id.clone(),
            team_id: self.team_id.clone(),
            topic: self.topic.clone(),
            ca_pem,
            timeout: Duration::from_millis(self.timeout_ms),
            flush_after: Duration::from_millis(self.flush_after_ms),
            limits: limits(self.rate_per_sec, self.device_rate_per_sec),
        })
    }
}

impl EmailProviderSettings {
    fn engine(&self) -> Result<EmailSettings, ConfigError> {
        let url = self.smtp_url.expose();
        // The parser's messages never echo the URL: it carries the password.
        email::SmtpRelay::parse(url).map_err(|e| invalid("providers.email.smtp_url", e.to_string()))?;
        email::mailbox(&self.from).map_err(|e| invalid("providers.email.from", format!("{e}, got '{}'", self.from)))?;
        timeout("providers.email.timeout_ms", self.timeout_ms)?;
        super::within("providers.email.flush_after_ms", self.flush_after_ms, 0..=60_000)?;
        if !(1..=100).contains(&self.connections) {
            return Err(invalid("providers.email.connections", "must be between 1 and 100"));
        }
        let ca_pem = match &self.ca_file {
            Some(path) => Some(read("providers.email.ca_file", path)?.into_bytes()),
            None => None,
        };
        if let Some(pem) = &ca_pem {
            if !rustls_pemfile::certs(&mut pem.as_slice()).any(|c| c.is_ok()) {
                return Err(invalid("providers.email.ca_file", "holds no PEM certificate"));
            }
        }
        Ok(EmailSettings {
            smtp_url: url.to_string(),
            from: self.from.clone(),
            ca_pem,
            timeout: Duration::from_millis(self.timeout_ms),
            flush_after: Duration::from_millis(self.flush_after_ms),
            connections: self.connections,
            limits: limits(self.rate_per_sec, self.device_rate_per_sec),
        })
    }
}
