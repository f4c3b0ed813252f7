//! Email through an SMTP relay: one SMTP transaction (MAIL FROM, RCPT TO, DATA) per job, the
//! jobs of a batch sent concurrently over a few kept-open connections (lettre speaks SMTP on
//! connections this client opens itself, with `TCP_NODELAY`).
//!
//! The device token of an email device is its address. Replies are classified as PROVIDERS.md's
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

use super::{bounded, combine, ProviderClient};
use crate::circuit::Health;
use crate::job::{Job, Provider, SendResult};
use crate::settings::EmailSettings;
use futures_util::future::LocalBoxFuture;
use lettre::address::Envelope;
use lettre::message::header::{HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{AsyncSmtpConnection, AsyncTokioStream, Certificate, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::transport::smtp::response::Response as Reply;
use lettre::{Address, Message};
use std::cell::{Cell, RefCell};
use std::error::Error as _;
use std::fmt;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// Jobs one sender gathers before sending them (each is its own SMTP transaction).
pub const MAX_BATCH: usize = 50;
/// A formatted message larger than this fails without being sent (most relays refuse 10 MB+).
pub const MAX_MESSAGE_BYTES: usize = 10 * 1024 * 1024;
/// A 454 (temporary authentication failure) this soon after another one, with no delivery in
/// between, is no longer temporary: it counts as a credentials problem.
pub const REPEATED_454_WITHIN: Duration = Duration::from_secs(300);
/// A kept-open connection unused for this long is closed rather than reused.
pub const MAX_IDLE: Duration = Duration::from_secs(30);
/// The header that carries the notification id, so a recipient's tooling can de-duplicate.
pub const NOTIFICATION_ID_HEADER: &str = "X-Notification-Id";

/// How the connection to the relay is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    /// `smtp://`: no TLS (local relays only).
    Plain,
    /// `smtp://…?tls=starttls`: STARTTLS, required (a relay that does not offer it is refused).
    StartTls,
    /// `smtps://`: TLS from the first byte.
    Implicit,
}

/// The relay named by `smtp_url`. Deliberately not `Debug`: it holds the password.
#[derive(Clone)]
pub struct Relay {
    pub host: String,
    pub port: u16,
    pub security: Security,
    credentials: Option<Credentials>,
    /// The EHLO name (the URL's path), when given.
    hello: Option<String>,
}

impl fmt::Debug for Relay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Relay")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("security", &self.security)
            .field("credentials", &self.credentials.as_ref().map(|_| "[redacted]"))
            .finish()
    }
}

impl Relay {
    /// Parses `smtp://[user:pass@]host[:port][/ehlo-name][?tls=starttls]` or
    /// `smtps://[user:pass@]host[:port]`. User and password are percent-decoded. Errors never
    /// repeat the URL.
    pub fn parse(raw: &str) -> Result<Relay, String> {
        let url = url::Url::parse(raw).map_err(|e| format!("is not a URL ({e})"))?;
        let mut tls = None;
        for (key, value) in url.query_pairs() {
            match key.as_ref() {
                "tls" if tls.is_none() => tls = Some(value.into_owned()),
                other => return Err(format!("has an unknown or repeated query parameter `{other}` (only `tls`)")),
            }
        }
        let security = match (url.scheme(), tls.as_deref()) {
            ("smtp", None | Some("none")) => Security::Plain,
            ("smtp", Some("starttls" | "required")) => Security::StartTls,
            ("smtps", None) => Security::Implicit,
            ("smtp" | "smtps", Some(other)) => {
                return Err(format!("has tls={other}: use smtp://…?tls=starttls, or smtps:// for implicit TLS"))
            }
            (scheme, _) => return Err(format!("must start with smtp:// or smtps://, not {scheme}://")),
        };
        let host = match url.host() {
            Some(url::Host::Domain(d)) if !d.is_empty() => d.to_string(),
            Some(url::Host::Ipv4(ip)) => ip.to_string(),
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
            _ => return Err("has no host".into()),
        };
        let port = url.port().unwrap_or(match security {
            Security::Plain => 25,
            Security::StartTls => 587,
            Security::Implicit => 465,
        });
        let credentials = match (url.username(), url.password()) {
            ("", None) => None,
            (_, None) => return Err("has a user name but no password".into()),
            (user, Some(password)) => Some(Credentials::new(decode(user)?, decode(password)?)),
        };
        let hello = Some(url.path().trim_matches('/').to_string()).filter(|p| !p.is_empty());
        Ok(Relay { host, port, security, credentials, hello })
    }

    /// `host:port`, for messages (no credentials).
    pub fn name(&self) -> String {
        match self.host.contains(':') {
            true => format!("[{}]:{}", self.host, self.port),
            false => format!("{}:{}", self.host, self.port),
        }
    }

    pub fn has_credentials(&self) -> bool {
        self.credentials.is_some()
    }
}

fn decode(part: &str) -> Result<String, String> {
    percent_encoding::percent_decode_str(part)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| "has credentials that are not UTF-8 once percent-decoded".to_string())
}

/// Parses the `From` mailbox: `no-reply@example.com` or `Name <no-reply@example.com>`.
pub fn mailbox(from: &str) -> Result<Mailbox, String> {
    from.trim().parse::<Mailbox>().map_err(|e| format!("must be a mailbox like 'Name <no-reply@example.com>' ({e})"))
}

/// Everything the senders of the email provider share, parsed and checked once at start-up.
#[derive(Clone)]
pub struct EmailConfig {
    relay: Relay,
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
    /// Errors name the problem but never repeat `smtp_url`.
    pub fn new(settings: &EmailSettings) -> Result<EmailConfig, String> {
        let relay = Relay::parse(&settings.smtp_url).map_err(|e| format!("providers.email.smtp_url {e}"))?;
        let from = mailbox(&settings.from).map_err(|e| format!("providers.email.from {e}"))?;
        let tls = match relay.security {
            Security::Plain => None,
            Security::StartTls | Security::Implicit => {
                let mut builder = TlsParameters::builder(relay.host.clone());
                if let Some(pem) = &settings.ca_pem {
                    let found = rustls_pemfile::certs(&mut pem.as_slice()).filter(Result::is_ok).count();
                    if found == 0 {
                        return Err("providers.email.ca_file holds no PEM certificate".into());
                    }
                    let cert = Certificate::from_pem(pem)
                        .map_err(|e| format!("providers.email.ca_file is not a PEM certificate: {e}"))?;
                    builder = builder.add_root_certificate(cert);
                }
                Some(builder.build_rustls().map_err(|e| format!("providers.email: TLS setup failed: {e}"))?)
            }
        };
        let implicit = match relay.security {
            Security::Implicit => Some(Arc::new(implicit_tls(settings.ca_pem.as_deref())?)),
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

    /// A new connection to the relay, ready to send: TCP with `TCP_NODELAY` (lettre's own
    /// connections lack it, and Nagle's algorithm then holds each message's final "." until the
    /// relay's delayed ACK, ~40 ms a message), TLS as configured, EHLO, AUTH.
    async fn open(&self) -> Result<AsyncSmtpConnection, Failure> {
        let relay = &self.relay;
        let refused = |e: std::io::Error| Failure::Network(format!("SMTP relay {}: {e}", relay.name()));
        let tcp = tokio::net::TcpStream::connect((relay.host.as_str(), relay.port)).await.map_err(refused)?;
        tcp.set_nodelay(true).map_err(refused)?;
        let stream: Box<dyn AsyncTokioStream> = match &self.implicit {
            Some(config) => {
                let name = rustls::pki_types::ServerName::try_from(relay.host.clone())
                    .map_err(|e| Failure::Setup(format!("SMTP relay {}: not a TLS server name: {e}", relay.name())))?;
                let tls = tokio_rustls::TlsConnector::from(config.clone()).connect(name, tcp).await.map_err(|e| {
                    match certificate_error(&e) {
                        Some(reason) => Failure::Certificate(format!(
                            "the TLS certificate of the SMTP relay {} was refused: {reason}",
                            relay.name()
                        )),
                        None => Failure::Setup(format!("TLS with the SMTP relay {} failed: {e}", relay.name())),
                    }
                })?;
                Box::new(TlsConnection(tls))
            }
            None => Box::new(tcp),
        };
        let hello = relay.hello.clone().map(ClientId::Domain).unwrap_or_default();
        let failed = |e: lettre::transport::smtp::Error| failure_of(&e, relay);
        let mut conn = AsyncSmtpConnection::connect_with_transport(stream, &hello).await.map_err(failed)?;
        if let (Security::StartTls, Some(tls)) = (relay.security, &self.tls) {
            conn.starttls(tls.clone(), &hello).await.map_err(failed)?;
        }
        if let Some(credentials) = &relay.credentials {
            conn.auth(&[Mechanism::Plain, Mechanism::Login], credentials).await.map_err(failed)?;
        }
        Ok(conn)
    }
}

/// The rustls client for `smtps://`: the Mozilla roots plus the certificates of `ca_pem`.
fn implicit_tls(ca_pem: Option<&[u8]>) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for cert in rustls_pemfile::certs(&mut ca_pem.unwrap_or_default()) {
        let cert = cert.map_err(|e| format!("providers.email.ca_file: {e}"))?;
        roots.add(cert).map_err(|e| format!("providers.email.ca_file: {e}"))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("providers.email: TLS setup failed: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// A TLS connection handed to lettre as an already-open stream.
#[derive(Debug)]
struct TlsConnection(tokio_rustls::client::TlsStream<tokio::net::TcpStream>);

impl AsyncTokioStream for TlsConnection {
    fn peer_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.0.get_ref().0.peer_addr()
    }
}

impl tokio::io::AsyncRead for TlsConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for TlsConnection {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// One sender's SMTP client.
pub struct EmailClient {
    inner: Rc<Inner>,
}

struct Inner {
    config: EmailConfig,
    /// Connections kept open between transactions, with when they were last used. A connection
    /// is only put back after a successful transaction (lettre closes it on any error), and a
    /// transaction that times out drops its connection with it.
    idle: RefCell<Vec<(AsyncSmtpConnection, Instant)>>,
    /// Transactions (and so connections) at once.
    permits: tokio::sync::Semaphore,
    /// When the last 454 was answered, if no delivery succeeded since.
    last_454: Cell<Option<Instant>>,
}

impl EmailClient {
    pub fn new(config: &EmailConfig) -> EmailClient {
        let inner = Inner {
            config: config.clone(),
            idle: RefCell::new(Vec::new()),
            permits: tokio::sync::Semaphore::new(config.connections as usize),
            last_454: Cell::new(None),
        };
        EmailClient { inner: Rc::new(inner) }
    }
}

impl ProviderClient for EmailClient {
    fn provider(&self) -> Provider {
        Provider::Email
    }

    fn max_batch(&self) -> usize {
        MAX_BATCH
    }

    fn flush_after(&self) -> Duration {
        self.inner.config.flush_after
    }

    fn send(&self, jobs: &[Job]) -> LocalBoxFuture<'static, super::Response> {
        let prepared: Vec<_> = jobs.iter().map(|job| message(job, &self.inner.config.from)).collect();
        let inner = self.inner.clone();
        // A job waits at most the timeout for one of this sender's connections, then gets the
        // whole timeout for its transaction: a batch takes at most twice the timeout however
        // many jobs queue for the connections (the claim idle time is checked against that).
        let wait_until = tokio::time::Instant::now() + self.inner.config.timeout;
        Box::pin(async move {
            let sends = prepared.into_iter().map(|prepared| {
                let inner = inner.clone();
                async move {
                    match prepared {
                        Ok((envelope, bytes)) => inner.transaction(&envelope, &bytes, wait_until).await,
                        Err((refused, _)) => Attempt::NotSent(refused),
                    }
                }
            });
            batch_response(futures_util::future::join_all(sends).await)
        })
    }
}

/// What became of one job of a batch.
#[derive(Debug, Clone, PartialEq)]
pub enum Attempt {
    /// A transaction with the relay, classified: its health says how the relay did.
    Transaction(SendResult, Health),
    /// Nothing reached the relay (no free connection in time, or a message that cannot be
    /// built), so it says nothing about the relay's health.
    NotSent(SendResult),
}

/// One result per job, in order. The relay's health is judged on the transactions alone: a
/// relay that hangs is an outage even when most of the batch was still waiting for the
/// connections the hung transactions held.
pub fn batch_response(attempts: Vec<Attempt>) -> super::Response {
    let transactions = attempts
        .iter()
        .filter_map(|a| match a {
            Attempt::Transaction(result, health) => Some((result.clone(), health.clone())),
            Attempt::NotSent(_) => None,
        })
        .collect();
    let health = combine(transactions).health;
    let results = attempts
        .into_iter()
        .map(|a| match a {
            Attempt::Transaction(result, _) | Attempt::NotSent(result) => result,
        })
        .collect();
    super::Response { results, health }
}

impl Inner {
    /// One SMTP transaction, within the timeout, classified; or, when none of this sender's
    /// connections came free by `wait_until`, deferred.
    async fn transaction(&self, envelope: &Envelope, bytes: &[u8], wait_until: tokio::time::Instant) -> Attempt {
        let Ok(permit) = tokio::time::timeout_at(wait_until, self.permits.acquire()).await else {
            // Nothing was sent: this sender's connections are busy (a backlog, or a mailbox
            // that holds one for the whole timeout). That is no attempt at this message: it goes
            // back to Redis and comes again after about as long as it waited, rather than
            // spending attempts on our own queue.
            let error = format!(
                "email: no free SMTP connection within {} ms ({} per sender); rescheduled without spending an attempt",
                self.config.timeout.as_millis(),
                self.config.connections
            );
            return Attempt::NotSent(SendResult::Deferred { error, after: self.config.timeout });
        };
        // The semaphore is never closed, so acquiring only fails if it were.
        let _permit = permit.ok();
        // The transaction has the whole timeout, however long it waited for its connection: a
        // timeout then says the relay is slow, not that this job queued behind others.
        let sent = tokio::time::timeout(self.config.timeout, self.send_on_a_connection(envelope, bytes)).await;
        let (result, health) = match sent {
            Ok(Ok(reply)) => {
                self.last_454.set(None);
                (accepted(&reply), Health::Up)
            }
            Ok(Err(failure)) => {
                let repeated = matches!(failure, Failure::Reply { code: 454, .. }) && self.repeated_454();
                classify(&failure, repeated)
            }
            Err(_) => classify(&Failure::Timeout(self.config.timeout, self.config.relay.name()), false),
        };
        Attempt::Transaction(result, health)
    }

    /// Sends on a kept-open connection, or a new one. A kept-open connection that turns out to be
    /// closed (the relay hung up, or said 421, while it was idle) is replaced once, without
    /// blaming the relay.
    async fn send_on_a_connection(&self, envelope: &Envelope, bytes: &[u8]) -> Result<Reply, Failure> {
        let reused = self.take_idle();
        let fresh = reused.is_none();
        let mut conn = match reused {
            Some(conn) => conn,
            None => self.config.open().await?,
        };
        match conn.send(envelope, bytes).await {
            Ok(reply) => {
                self.idle.borrow_mut().push((conn, Instant::now()));
                Ok(reply)
            }
            // No reply (the relay hung up), or a 421 (relays say it when they close an idle
            // connection): try once more on a new connection, which tells if the relay is down.
            Err(e) if !fresh && e.status().is_none_or(|code| u16::from(code) == 421) => {
                let mut conn = self.config.open().await?;
                let reply = conn.send(envelope, bytes).await.map_err(|e| failure_of(&e, &self.config.relay))?;
                self.idle.borrow_mut().push((conn, Instant::now()));
                Ok(reply)
            }
            Err(e) => Err(failure_of(&e, &self.config.relay)),
        }
    }

    /// The most recently used idle connection; those idle too long are closed (relays drop
    /// idle clients after a few minutes).
    fn take_idle(&self) -> Option<AsyncSmtpConnection> {
        let mut idle = self.idle.borrow_mut();
        idle.retain(|(conn, since)| since.elapsed() < MAX_IDLE && !conn.has_broken());
        idle.pop().map(|(conn, _)| conn)
    }

    /// Records a 454; true when another one came within [`REPEATED_454_WITHIN`] before it.
    fn repeated_454(&self) -> bool {
        let now = Instant::now();
        let repeated = self.last_454.get().is_some_and(|at| now.duration_since(at) < REPEATED_454_WITHIN);
        self.last_454.set(Some(now));
        repeated
    }
}

/// The envelope and the formatted message for one job, or why it cannot be sent.
///
/// From = the configured mailbox, To = the device token, Subject = `payload.subject` or else
/// `payload.title`, text body = `payload.body`, HTML alternative = `payload.html`; the headers
/// `X-Notification-Id` and a `Message-ID` made of the notification and device ids (a re-send of
/// the same target carries the same Message-ID, so it is recognisable).
pub fn message(job: &Job, from: &Mailbox) -> Result<(Envelope, Vec<u8>), (SendResult, Health)> {
    let to = job.token.trim().parse::<Address>().map_err(|e| {
        let error = format!("email: '{}' is not an email address ({e})", job.token);
        (SendResult::InvalidToken { error }, Health::Up)
    })?;
    let permanent = |error: String| (SendResult::Permanent { error }, Health::Up);
    let text = |key: &str| job.payload.get(key).and_then(serde_json::Value::as_str);
    // A subject is one header line: control characters (a title's newline) become spaces.
    let subject: String = text("subject")
        .or_else(|| text("title"))
        .unwrap_or_default()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let body = text("body").unwrap_or_default().to_string();
    let message_id = format!("<{}.{}@{}>", job.notification_id, job.device_id, from.email.domain());
    let builder = Message::builder()
        .from(from.clone())
        .to(Mailbox::new(None, to))
        .subject(subject)
        .message_id(Some(message_id))
        .raw_header(HeaderValue::new(
            HeaderName::new_from_ascii_str(NOTIFICATION_ID_HEADER),
            job.notification_id.to_string(),
        ))
        // RFC 3834: auto-responders must not answer a notification.
        .raw_header(HeaderValue::new(HeaderName::new_from_ascii_str("Auto-Submitted"), "auto-generated".into()));
    let built = match text("html") {
        Some(html) => builder.multipart(MultiPart::alternative_plain_html(body, html.to_string())),
        None => builder.singlepart(SinglePart::plain(body)),
    };
    let message = built.map_err(|e| permanent(format!("email: cannot build the message: {e}")))?;
    let bytes = message.formatted();
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(permanent(format!("email: message too large: {} bytes (limit {MAX_MESSAGE_BYTES})", bytes.len())));
    }
    Ok((message.envelope().clone(), bytes))
}

/// What went wrong in one SMTP transaction, as far as classification cares.
#[derive(Debug, Clone, PartialEq)]
pub enum Failure {
    /// A negative reply: the reply code and its text (led by the enhanced status code, if any).
    Reply { code: u16, text: String },
    /// Could not connect, the connection broke, or the relay's answer was unreadable.
    Network(String),
    /// No answer within the timeout (how long, which relay).
    Timeout(Duration, String),
    /// The relay's TLS certificate was refused.
    Certificate(String),
    /// The relay cannot work with our configuration: STARTTLS or AUTH required but not offered.
    Setup(String),
    /// This message cannot be sent as built (e.g. 8BITMIME or SMTPUTF8 needed but not offered).
    Message(String),
}

/// The enhanced status code (RFC 3463) that leads a reply's text: `5.1.1` → (5, 1, 1).
pub fn enhanced_code(text: &str) -> Option<(u8, u16, u16)> {
    let mut parts = text.split_whitespace().next()?.splitn(3, '.');
    let class = parts.next()?.parse::<u8>().ok().filter(|c| matches!(c, 2 | 4 | 5))?;
    let subject = parts.next()?.parse::<u16>().ok()?;
    let detail = parts.next()?.parse::<u16>().ok()?;
    Some((class, subject, detail))
}

/// The result of the reply that accepted a message: delivered, with the reply (code and text,
/// which usually names the relay's queue id) as the provider's message id.
pub fn accepted(reply: &Reply) -> SendResult {
    let text: Vec<&str> = reply.message().collect();
    let id = Some(format!("{} {}", u16::from(reply.code()), text.join(" ")).trim().to_string());
    SendResult::Delivered { provider_message_id: id }
}

/// PROVIDERS.md's SMTP table. `repeated_454` says whether a 454 follows another one closely.
pub fn classify(failure: &Failure, repeated_454: bool) -> (SendResult, Health) {
    let retry = |error: String| SendResult::Retry { error, after: None };
    match failure {
        Failure::Reply { code, text } => {
            let error = bounded(format!("email: {code} {}", text.replace(['\r', '\n'], " ").trim()));
            let enhanced = enhanced_code(text);
            match code {
                200..=399 => (SendResult::Delivered { provider_message_id: None }, Health::Up),
                // The relay is going away or overloaded: everything sent there now would fail.
                421 => (retry(error.clone()), Health::Outage(error)),
                454 if repeated_454 => {
                    let error = bounded(format!("{error} (repeated)"));
                    (SendResult::Auth { error: error.clone() }, Health::AuthFailure(error))
                }
                // Temporary authentication failure: the relay's side, not this mailbox's.
                454 => (retry(error.clone()), Health::Outage(error)),
                // 450/451/452/455 and other 4xx: this mailbox or transaction, the relay answered.
                400..=499 => (retry(error), Health::Up),
                530 | 534 | 535 | 538 => (SendResult::Auth { error: error.clone() }, Health::AuthFailure(error)),
                550 | 551 | 553 if matches!(enhanced, Some((5, 1, _))) => {
                    (SendResult::InvalidToken { error }, Health::Up)
                }
                _ => (SendResult::Permanent { error }, Health::Up),
            }
        }
        Failure::Network(e) => {
            let error = bounded(format!("email: {e}"));
            (retry(error.clone()), Health::Outage(error))
        }
        Failure::Timeout(after, relay) => {
            let error =
                bounded(format!("email: no answer from the SMTP relay {relay} within {} ms", after.as_millis()));
            (retry(error.clone()), Health::Outage(error))
        }
        Failure::Certificate(e) | Failure::Setup(e) => {
            let error = bounded(format!("email: {e}"));
            (SendResult::Auth { error: error.clone() }, Health::AuthFailure(error))
        }
        Failure::Message(e) => (SendResult::Permanent { error: bounded(format!("email: {e}")) }, Health::Up),
    }
}

/// Reads lettre's error: a reply (`status()` and the reply text, which is the error's source),
/// or how the connection failed.
fn failure_of(e: &lettre::transport::smtp::Error, relay: &Relay) -> Failure {
    let detail = e.source().map(|s| s.to_string()).unwrap_or_default();
    if let Some(code) = e.status() {
        return Failure::Reply { code: u16::from(code), text: detail };
    }
    if let Some(reason) = certificate_error(e) {
        return Failure::Certificate(format!(
            "the TLS certificate of the SMTP relay {} was refused: {reason}",
            relay.name()
        ));
    }
    if e.is_timeout() {
        return Failure::Network(format!("connecting to the SMTP relay {} timed out", relay.name()));
    }
    if e.is_client() {
        // lettre's own checks of what the relay offers (its texts, lettre 0.11).
        return match detail.as_str() {
            d if d.contains("STARTTLS is not supported") => {
                Failure::Setup(format!("the SMTP relay {} does not offer STARTTLS", relay.name()))
            }
            d if d.contains("authentication mechanism") => Failure::Setup(format!(
                "the SMTP relay {} offers no authentication (AUTH PLAIN or LOGIN) for the configured credentials",
                relay.name()
            )),
            d => Failure::Message(d.to_string()),
        };
    }
    if e.is_tls() {
        return Failure::Setup(format!("TLS with the SMTP relay {} failed: {detail}", relay.name()));
    }
    Failure::Network(format!("SMTP relay {}: {e}", relay.name()))
}

/// A certificate that rustls refused, anywhere in the error's chain (tokio-rustls wraps it in
/// an `io::Error`, whose `source()` skips it, hence `get_ref`).
fn certificate_error(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = next {
        let inner = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .map(|i| i as &(dyn std::error::Error + 'static));
        for candidate in [Some(err), inner].into_iter().flatten() {
            if let Some(tls) = candidate.downcast_ref::<rustls::Error>() {
                if matches!(tls, rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented) {
                    return Some(tls.to_string());
                }
            }
        }
        next = inner.and_then(|i| i.source()).or_else(|| err.source());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::Priority;
    use serde_json::json;
    use uuid::Uuid;

    fn reply(code: u16, text: &str) -> (SendResult, Health) {
        classify(&Failure::Reply { code, text: text.into() }, false)
    }

    fn job(token: &str, payload: serde_json::Value) -> Job {
        Job {
            notification_id: Uuid::from_u128(1),
            device_id: Uuid::from_u128(2),
            user_id: "u".into(),
            provider: Provider::Email,
            token: token.into(),
            payload: payload.into(),
            priority: Priority::Normal,
            trace_id: "t".into(),
            attempt: 0,
            targets: 1,
            requeued: false,
            queued_ms: 0,
        }
    }

    #[test]
    fn temporary_replies_are_retried_and_only_421_is_an_outage() {
        for code in [450, 451, 452, 455] {
            let (result, health) = reply(code, "4.2.0 try later");
            assert!(matches!(result, SendResult::Retry { after: None, .. }), "{code}");
            assert_eq!(health, Health::Up, "{code}: the relay answered");
        }
        let (result, health) = reply(421, "4.3.2 closing");
        assert_eq!(result, SendResult::Retry { error: "email: 421 4.3.2 closing".into(), after: None });
        assert!(matches!(health, Health::Outage(_)));
    }

    #[test]
    fn a_454_is_retried_and_a_repeated_one_is_an_auth_failure() {
        let failure = Failure::Reply { code: 454, text: "4.7.0 Temporary authentication failure".into() };
        let (first, health) = classify(&failure, false);
        assert!(matches!(first, SendResult::Retry { .. }));
        assert!(matches!(health, Health::Outage(_)));
        let (second, health) = classify(&failure, true);
        assert!(matches!(second, SendResult::Auth { .. }));
        assert!(matches!(health, Health::AuthFailure(_)));
    }

    #[test]
    fn authentication_replies_are_auth_failures() {
        for code in [530, 534, 535, 538] {
            let (result, health) = reply(code, "5.7.8 no");
            assert!(matches!(result, SendResult::Auth { .. }), "{code}");
            assert!(matches!(health, Health::AuthFailure(_)), "{code}");
        }
    }

    #[test]
    fn only_mailbox_replies_with_an_enhanced_5_1_code_disable_the_address() {
        for (code, text) in [(550, "5.1.1 User unknown"), (551, "5.1.6 moved"), (553, "5.1.3 bad syntax")] {
            let (result, health) = reply(code, text);
            assert!(matches!(result, SendResult::InvalidToken { .. }), "{code} {text}");
            assert_eq!(health, Health::Up);
        }
        for (code, text) in [
            (550, "5.7.1 relay denied"),
            (550, "User unknown"),
            (553, "5.7.1 sender refused"),
            (500, "5.5.2 syntax"),
            (501, "5.1.3 bad address"),
            (502, "5.5.1 not implemented"),
            (503, "5.5.1 bad sequence"),
            (504, "5.5.4 not implemented"),
            (552, "5.3.4 too big"),
            (554, "5.7.1 policy"),
        ] {
            let (result, health) = reply(code, text);
            assert!(matches!(result, SendResult::Permanent { .. }), "{code} {text}");
            assert_eq!(health, Health::Up);
        }
    }

    #[test]
    fn connection_failures_timeouts_and_certificates() {
        let (result, health) = classify(&Failure::Network("connection refused".into()), false);
        assert!(matches!(result, SendResult::Retry { .. }) && matches!(health, Health::Outage(_)));
        let (result, health) = classify(&Failure::Timeout(Duration::from_millis(500), "h:25".into()), false);
        assert_eq!(result.error(), Some("email: no answer from the SMTP relay h:25 within 500 ms"));
        assert!(matches!(health, Health::Outage(_)));
        let (result, health) = classify(&Failure::Certificate("UnknownIssuer".into()), false);
        assert!(matches!(result, SendResult::Auth { .. }) && matches!(health, Health::AuthFailure(_)));
    }

    #[test]
    fn jobs_that_never_reached_the_relay_do_not_hide_an_outage() {
        let timeout = || classify(&Failure::Timeout(Duration::from_millis(300), "h:25".into()), false);
        let (hung, outage) = timeout();
        let waited = || Attempt::NotSent(SendResult::Deferred { error: "no free".into(), after: Duration::ZERO });
        let refused = Attempt::NotSent(SendResult::InvalidToken { error: "not an address".into() });

        let response = batch_response(vec![Attempt::Transaction(hung.clone(), outage.clone()), waited(), refused]);

        assert!(matches!(response.health, Health::Outage(_)), "{response:?}");
        assert_eq!(response.results.len(), 3);
        assert_eq!(response.results[0], hung);
        assert!(matches!(response.results[1], SendResult::Deferred { .. }));
        assert!(matches!(response.results[2], SendResult::InvalidToken { .. }));
        // One transaction the relay answered: it is up, whatever the others waited for.
        let delivered = Attempt::Transaction(SendResult::Delivered { provider_message_id: None }, Health::Up);
        let (hung, outage) = timeout();
        assert_eq!(batch_response(vec![Attempt::Transaction(hung, outage), delivered, waited()]).health, Health::Up);
        // Nothing reached the relay: nothing learned about it.
        assert_eq!(batch_response(vec![waited(), waited()]).health, Health::Up);
    }

    #[test]
    fn enhanced_codes_are_read_from_the_start_of_the_text() {
        assert_eq!(enhanced_code("5.1.1 <a@b>: unknown"), Some((5, 1, 1)));
        assert_eq!(enhanced_code("4.7.0"), Some((4, 7, 0)));
        assert_eq!(enhanced_code("User 5.1.1 unknown"), None);
        assert_eq!(enhanced_code("3.1.1 odd"), None);
        assert_eq!(enhanced_code(""), None);
    }

    #[test]
    fn a_long_reply_is_cut_to_a_bounded_error() {
        // lettre accepts replies of up to 100 kB; the error keeps their start.
        let (result, health) = reply(554, &format!("5.7.1 {}", "no ".repeat(30_000)));
        assert!(result.error().is_some_and(|e| e.len() <= crate::providers::MAX_ERROR_BYTES), "{result:?}");
        let (result, health_454) = classify(&Failure::Reply { code: 454, text: "x".repeat(5_000) }, true);
        assert!(result.error().is_some_and(|e| e.len() <= crate::providers::MAX_ERROR_BYTES), "{result:?}");
        assert!(matches!(health_454, Health::AuthFailure(e) if e.len() <= crate::providers::MAX_ERROR_BYTES));
        assert_eq!(health, Health::Up);
    }

    #[test]
    fn smtp_urls_are_parsed_without_echoing_them() {
        let r = Relay::parse("smtp://127.0.0.1:2525").unwrap();
        assert_eq!(
            (r.host.as_str(), r.port, r.security, r.has_credentials()),
            ("127.0.0.1", 2525, Security::Plain, false)
        );
        let r = Relay::parse("smtp://us%40er:p%3Ass@mail.example.com?tls=starttls").unwrap();
        assert_eq!((r.port, r.security), (587, Security::StartTls));
        let c = r.credentials.clone().unwrap();
        assert_eq!(c, Credentials::new("us@er".into(), "p:ss".into()));
        assert_eq!(Relay::parse("smtps://u:p@[::1]").unwrap().name(), "[::1]:465");
        let r = Relay::parse("smtp://relay.local/client.example.com").unwrap();
        assert_eq!(r.hello.as_deref(), Some("client.example.com"));
        for bad in [
            "http://u:secret@host",
            "smtp://u:secret@host?tls=maybe",
            "smtp://u:secret@host?tsl=starttls",
            "smtp://u@host",
            "smtps://u:secret@host?tls=starttls",
            "u:secret@host",
        ] {
            let err = Relay::parse(bad).unwrap_err();
            assert!(!err.contains("secret"), "{err}");
        }
    }

    #[test]
    fn the_from_mailbox_must_parse() {
        assert_eq!(mailbox("Notifications <no-reply@example.com>").unwrap().email.to_string(), "no-reply@example.com");
        assert!(mailbox("no-reply@example.com").is_ok());
        assert!(mailbox("Notifications").is_err());
        assert!(mailbox("a@b@c").is_err());
    }

    #[test]
    fn the_message_has_the_headers_and_the_ids() {
        let from = mailbox("Notify <no-reply@example.com>").unwrap();
        let (envelope, bytes) =
            message(&job("alice@example.org", json!({"title": "Shipped", "body": "On its way"})), &from).unwrap();
        assert_eq!(envelope.to()[0].to_string(), "alice@example.org");
        assert_eq!(envelope.from().unwrap().to_string(), "no-reply@example.com");
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.contains("Subject: Shipped\r\n"), "{text}");
        assert!(text.contains(&format!("X-Notification-Id: {}\r\n", Uuid::from_u128(1))), "{text}");
        let id = format!("Message-ID: <{}.{}@example.com>\r\n", Uuid::from_u128(1), Uuid::from_u128(2));
        assert!(text.contains(&id), "{text}");
        assert!(text.contains("\r\n\r\nOn its way"), "{text}");
        assert!(text.contains("Content-Type: text/plain"), "{text}");
    }

    #[test]
    fn a_title_with_control_characters_becomes_a_one_line_subject() {
        let from = mailbox("no-reply@example.com").unwrap();
        let payload = json!({"title": "Two\nlines\r\nBcc: x@evil.example\u{7}"});
        let (_, bytes) = message(&job("a@example.org", payload), &from).unwrap();
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.contains("Subject: Two lines  Bcc: x@evil.example \r\n"), "{text}");
        assert!(!text.contains("\r\nBcc:"), "{text}");
    }

    #[test]
    fn subject_wins_over_title_and_html_becomes_the_alternative() {
        let from = mailbox("no-reply@example.com").unwrap();
        let payload = json!({"title": "T", "subject": "S", "body": "plain", "html": "<p>rich</p>"});
        let (_, bytes) = message(&job("a@example.org", payload), &from).unwrap();
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.contains("Subject: S\r\n"), "{text}");
        assert!(text.contains("multipart/alternative") && text.contains("text/html"), "{text}");
        assert!(text.contains("<p>rich</p>"), "{text}");
    }

    #[test]
    fn an_unparsable_address_is_an_invalid_token_and_a_huge_message_is_permanent() {
        let from = mailbox("no-reply@example.com").unwrap();
        let (result, health) = message(&job("not an address", json!({})), &from).unwrap_err();
        assert!(matches!(result, SendResult::InvalidToken { .. }));
        assert_eq!(health, Health::Up);
        let big = json!({"body": "x".repeat(MAX_MESSAGE_BYTES)});
        let (result, _) = message(&job("a@example.org", big), &from).unwrap_err();
        assert!(result.error().unwrap().starts_with("email: message too large: "), "{result:?}");
    }
}

#[cfg(test)]
mod proptests {
    use super::*;
    use crate::providers::check::{assert_one_class, class};
    use proptest::prelude::*;

    /// PROVIDERS.md's SMTP table.
    fn documented(code: u16, text: &str, repeated_454: bool) -> &'static str {
        match code {
            200..=299 => "OK",
            454 if repeated_454 => "AUTH",
            400..=499 => "RETRY",
            530 | 534 | 535 | 538 => "AUTH",
            550 | 551 | 553 if matches!(enhanced_code(text), Some((5, 1, _))) => "INVALID",
            _ => "PERM",
        }
    }

    #[test]
    fn every_documented_reply_read_from_the_wire_maps_to_its_class() {
        let rows: &[(&str, bool, &str)] = &[
            ("250 2.0.0 Ok: queued as 4Bc1\r\n", false, "OK"),
            ("421 4.3.2 Service not available, closing channel\r\n", false, "RETRY"),
            ("450 4.2.1 Mailbox busy\r\n", false, "RETRY"),
            ("451 4.3.0 Local error\r\n", false, "RETRY"),
            ("452 4.3.1 Insufficient storage\r\n", false, "RETRY"),
            ("455 4.5.4 Parameters cannot be accommodated\r\n", false, "RETRY"),
            ("454 4.7.0 Temporary authentication failure\r\n", false, "RETRY"),
            ("454 4.7.0 Temporary authentication failure\r\n", true, "AUTH"),
            ("530 5.7.0 Authentication required\r\n", false, "AUTH"),
            ("534 5.7.9 Mechanism too weak\r\n", false, "AUTH"),
            ("535 5.7.8 Authentication credentials invalid\r\n", false, "AUTH"),
            ("538 5.7.11 Encryption required\r\n", false, "AUTH"),
            ("550-5.1.1 The email account does not exist.\r\n550 5.1.1 Try again.\r\n", false, "INVALID"),
            ("551 5.1.6 User has moved\r\n", false, "INVALID"),
            ("553 5.1.3 Bad destination syntax\r\n", false, "INVALID"),
            ("550 5.7.1 Relaying denied\r\n", false, "PERM"),
            ("500 5.5.2 Syntax error\r\n", false, "PERM"),
            ("501 5.5.4 Bad arguments\r\n", false, "PERM"),
            ("502 5.5.1 Not implemented\r\n", false, "PERM"),
            ("503 5.5.1 Bad sequence\r\n", false, "PERM"),
            ("504 5.5.4 Not implemented\r\n", false, "PERM"),
            ("552 5.3.4 Message too big\r\n", false, "PERM"),
            ("554 5.7.1 Rejected by policy\r\n", false, "PERM"),
        ];
        for (wire, repeated, expected) in rows {
            let (result, health) = from_the_wire(wire, *repeated).expect("lettre parses the reply");
            assert_one_class(&result, &health);
            assert_eq!(class(&result), *expected, "{wire:?}");
        }
    }

    /// What the client makes of a reply lettre read: `accepted` for a positive one, else the
    /// failure lettre reports (code, and the lines joined) classified.
    fn from_the_wire(wire: &str, repeated_454: bool) -> Option<(SendResult, Health)> {
        let reply: Reply = wire.parse().ok()?;
        if reply.is_positive() {
            return Some((accepted(&reply), Health::Up));
        }
        let text = reply.message().collect::<Vec<_>>().join(" ");
        Some(classify(&Failure::Reply { code: u16::from(reply.code()), text }, repeated_454))
    }

    fn reply_text() -> impl Strategy<Value = String> {
        prop_oneof!["[245]\\.[0-9]{1,3}\\.[0-9]{1,3}( \\PC{0,40})?", any::<String>(), "\\PC{600,2000}",]
    }

    proptest! {
        #[test]
        fn any_reply_is_one_class_and_its_documented_one(
            code in prop_oneof![200u16..600, any::<u16>()],
            text in reply_text(),
            repeated_454 in any::<bool>(),
        ) {
            let (result, health) = classify(&Failure::Reply { code, text: text.clone() }, repeated_454);
            assert_one_class(&result, &health);
            if (200..600).contains(&code) && !(300..400).contains(&code) {
                prop_assert_eq!(class(&result), documented(code, &text, repeated_454));
            }
        }

        #[test]
        fn any_connection_failure_is_one_class(text in reply_text(), ms in any::<u64>()) {
            for failure in [
                Failure::Network(text.clone()),
                Failure::Timeout(Duration::from_millis(ms), text.clone()),
                Failure::Certificate(text.clone()),
                Failure::Setup(text.clone()),
                Failure::Message(text.clone()),
            ] {
                let (result, health) = classify(&failure, false);
                assert_one_class(&result, &health);
            }
        }

        #[test]
        fn any_reply_lettre_reads_is_one_class(
            lines in prop::collection::vec(reply_text(), 1..4),
            code in prop_oneof![prop::sample::select(vec![250u16, 421, 450, 454, 535, 550, 553, 554]), 200u16..600],
            repeated_454 in any::<bool>(),
        ) {
            let last = lines.len() - 1;
            let wire: String = lines
                .iter()
                .enumerate()
                .map(|(i, l)| format!("{code}{}{}\r\n", if i == last { ' ' } else { '-' }, l.replace(['\r', '\n'], " ")))
                .collect();
            if let Some((result, health)) = from_the_wire(&wire, repeated_454) {
                assert_one_class(&result, &health);
            }
        }

        #[test]
        fn enhanced_codes_never_panic_and_have_a_class_of_2_4_or_5(text in reply_text()) {
            if let Some((class, _, _)) = enhanced_code(&text) {
                prop_assert!(matches!(class, 2 | 4 | 5));
            }
        }
    }
}
