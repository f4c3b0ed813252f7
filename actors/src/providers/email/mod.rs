//! Email through an SMTP relay: one SMTP transaction (MAIL FROM, RCPT TO, DATA) per job, the
//! jobs of a batch sent concurrently over a few kept-open connections (lettre speaks SMTP on
//! connections this client opens itself, with `TCP_NODELAY`), the commands of a transaction
//! pipelined (RFC 2920) when the relay offers it.
//!
//! The device token of an email device is its address. Replies are classified as docs/providers.md's
//! SMTP table says: 2xx delivered; 421 and connect/timeout failures retried as an outage of the
//! relay; 450/451/452/455 retried (the mailbox, not the relay); 454 retried, and a second 454 in
//! a row within [`REPEATED_454_WITHIN`] treated as a credentials problem; 530/534/535/538 and a
//! refused TLS certificate are credentials/configuration problems; 550/551/553 with an enhanced
//! code 5.1.x disable the address; every other 5xx fails the message.
//!
//! Waiting for one of the sender's own connections is not an attempt: a job that gets none
//! within the timeout is deferred (rescheduled through Redis without spending an attempt), so a
//! backlog or a mailbox that stalls a connection never fails healthy messages. Only the
//! transactions that reached the relay say how the relay is doing.
//!
//! `smtp_url` carries the password: it is never logged, displayed or put in an error.
//!
//! Files: `smtp_url` parses the relay's URL, `tls` holds the implicit-TLS client, `message`
//! builds one email, `pool` keeps the connections and gives a transaction one of them within
//! the timeout, `transaction` runs it (pipelined or not), `classify` reads the relay's replies
//! (docs/providers.md, SMTP table); this file holds the settings and the client.

mod classify;
mod message;
mod pool;
mod smtp_url;
mod tls;
mod transaction;

pub use classify::{accepted, batch_response, classify, enhanced_code, Attempt, Failure};
pub use message::{mailbox, message, MailboxError, MAX_MESSAGE_BYTES, NOTIFICATION_ID_HEADER};
pub use pool::{MAX_IDLE, REPEATED_454_WITHIN};
pub use smtp_url::{Security, SmtpRelay, SmtpUrlError};

use super::{ProviderClient, ProviderProfile, Response};
use crate::job::{Job, Provider};
use crate::ratelimit::Limits;
use crate::secret::Secret;
use crate::settings::rules::{millis, read_optional, within_ms, SettingsError};
use futures_util::future::LocalBoxFuture;
use lettre::message::Mailbox;
use lettre::transport::smtp::client::{Certificate, TlsParameters};
use pool::Pool;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

/// `[providers.email]`: email through an SMTP relay. The URL carries the credentials, so it is
/// a [`Secret`].
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EmailSettings {
    pub enabled: bool,
    /// `smtp://host:port` (plain, local relays), `smtp://user:pass@host:587?tls=starttls`,
    /// `smtps://user:pass@host:465`; credentials in the URL's user info.
    pub smtp_url: Secret,
    /// The `From:` mailbox: `no-reply@example.com` or `Name <no-reply@example.com>`.
    pub from: String,
    /// Extra CA certificates (PEM) to trust for the relay's certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// How long a transaction (and, before it, the wait for a connection) may take.
    #[serde(rename = "timeout_ms", with = "millis")]
    pub timeout: Duration,
    #[serde(rename = "flush_after_ms", with = "millis")]
    pub flush_after: Duration,
    /// SMTP connections kept open per sender.
    pub connections: u32,
    /// Sends per second for the whole relay, shared by every worker (0 = unlimited).
    pub rate_per_sec: u32,
    /// Sends per second to one address (0 = unlimited).
    pub device_rate_per_sec: u32,
}

impl EmailSettings {
    pub fn validate(&self) -> Result<(), SettingsError> {
        // The parser's messages never echo the URL: it carries the password.
        SmtpRelay::parse(self.smtp_url.expose())
            .map_err(|e| SettingsError::new("providers.email.smtp_url", e.to_string()))?;
        mailbox(&self.from)
            .map_err(|e| SettingsError::new("providers.email.from", format!("{e}, got '{}'", self.from)))?;
        super::timeout("providers.email.timeout_ms", self.timeout)?;
        within_ms("providers.email.flush_after_ms", self.flush_after, 0..=60_000)?;
        if !(1..=100).contains(&self.connections) {
            return Err(SettingsError::new("providers.email.connections", "must be between 1 and 100"));
        }
        if let Some(pem) = self.ca_pem()? {
            if !rustls_pemfile::certs(&mut pem.as_slice()).any(|c| c.is_ok()) {
                return Err(SettingsError::new("providers.email.ca_file", "holds no PEM certificate"));
            }
        }
        Ok(())
    }

    /// The extra CA certificates of `ca_file`, read now.
    pub fn ca_pem(&self) -> Result<Option<Vec<u8>>, SettingsError> {
        read_optional("providers.email.ca_file", self.ca_file.as_deref())
    }

    /// The shared rate limits.
    pub fn limits(&self) -> Limits {
        Limits { per_sec: self.rate_per_sec, device_per_sec: self.device_rate_per_sec }
    }

    /// The longest one send may take: a job may wait `timeout` for a connection, then take
    /// `timeout` for its transaction.
    pub fn longest_send(&self) -> Duration {
        self.timeout.saturating_mul(2)
    }
}

/// Why the email client cannot be built (at start-up). The texts name the configuration key
/// and never repeat `smtp_url`.
#[derive(Debug, thiserror::Error)]
pub enum EmailError {
    #[error("providers.email.smtp_url {0}")]
    SmtpUrl(#[source] SmtpUrlError),
    #[error("providers.email.from {0}")]
    From(#[source] MailboxError),
    #[error("providers.email.ca_file holds no PEM certificate")]
    NoCa,
    #[error("providers.email.ca_file is not a PEM certificate: {0}")]
    CaNotPem(#[source] lettre::transport::smtp::Error),
    #[error("providers.email.ca_file: {0}")]
    CaUnreadable(#[source] std::io::Error),
    #[error("providers.email.ca_file: {0}")]
    CaUnusable(#[source] rustls::Error),
    #[error("providers.email: TLS setup failed: {0}")]
    Tls(#[source] lettre::transport::smtp::Error),
    #[error("providers.email: TLS setup failed: {0}")]
    Rustls(#[source] rustls::Error),
}

/// Jobs one sender gathers before sending them (each is its own SMTP transaction).
pub const MAX_BATCH: usize = 50;

/// Everything the senders of the email provider share, parsed and checked once at start-up.
#[derive(Clone)]
pub struct EmailConfig {
    relay: SmtpRelay,
    /// Built once: its root store (Mozilla roots plus `ca_pem`) is the expensive part.
    tls: Option<TlsParameters>,
    /// For `smtps://`: the TLS client the connection starts with.
    implicit: Option<Arc<rustls::ClientConfig>>,
    from: Mailbox,
    timeout: Duration,
    flush_after: Duration,
    connections: u32,
}

impl EmailConfig {
    /// Errors name the problem but never repeat `smtp_url`. `ca_pem` is what
    /// [`EmailSettings::ca_pem`] read.
    pub fn new(settings: &EmailSettings, ca_pem: Option<&[u8]>) -> Result<EmailConfig, EmailError> {
        let relay = SmtpRelay::parse(settings.smtp_url.expose()).map_err(EmailError::SmtpUrl)?;
        let from = mailbox(&settings.from).map_err(EmailError::From)?;
        let tls = match relay.security {
            Security::Plain => None,
            Security::StartTls | Security::Implicit => {
                let mut builder = TlsParameters::builder(relay.host.clone());
                if let Some(pem) = ca_pem {
                    let found = rustls_pemfile::certs(&mut &pem[..]).filter(Result::is_ok).count();
                    if found == 0 {
                        return Err(EmailError::NoCa);
                    }
                    let cert = Certificate::from_pem(pem).map_err(EmailError::CaNotPem)?;
                    builder = builder.add_root_certificate(cert);
                }
                Some(builder.build_rustls().map_err(EmailError::Tls)?)
            }
        };
        let implicit = match relay.security {
            Security::Implicit => Some(Arc::new(tls::implicit_tls(ca_pem)?)),
            _ => None,
        };
        Ok(EmailConfig {
            relay,
            tls,
            implicit,
            from,
            timeout: settings.timeout,
            flush_after: settings.flush_after,
            connections: settings.connections.max(1),
        })
    }
}

/// One sender's SMTP client.
pub struct EmailClient {
    pool: Rc<Pool>,
    profile: ProviderProfile,
}

impl EmailClient {
    pub fn new(config: &EmailConfig) -> EmailClient {
        let profile =
            ProviderProfile { provider: Provider::Email, max_batch: MAX_BATCH, flush_after: config.flush_after };
        EmailClient { pool: Rc::new(Pool::new(config)), profile }
    }
}

impl ProviderClient for EmailClient {
    fn profile(&self) -> ProviderProfile {
        self.profile
    }

    fn send(&self, jobs: &[Job]) -> LocalBoxFuture<'static, Response> {
        let prepared: Vec<_> = jobs.iter().map(|job| message(job, &self.pool.config.from)).collect();
        let pool = self.pool.clone();
        // A job waits at most the timeout for one of this sender's connections, then gets the
        // whole timeout for its transaction: a batch takes at most twice the timeout however
        // many jobs queue for the connections (the claim idle time is checked against that).
        let wait_until = tokio::time::Instant::now() + self.pool.config.timeout;
        Box::pin(async move {
            let sends = prepared.into_iter().map(|prepared| {
                let pool = pool.clone();
                async move {
                    match prepared {
                        Ok((envelope, bytes)) => pool.transaction(&envelope, &bytes, wait_until).await,
                        Err(refused) => Attempt::NotSent(refused),
                    }
                }
            });
            batch_response(futures_util::future::join_all(sends).await)
        })
    }
}
