//! One sender's SMTP connections: a few kept open between transactions, at most
//! `providers.email.connections` at once, each opened with `TCP_NODELAY`; and the transaction
//! that runs on one of them within the timeout.

use super::classify::{accepted, classify, failure_of, Attempt, Failure};
use super::smtp_url::Security;
use super::tls::{certificate_error, TlsConnection};
use super::transaction::Connection;
use super::EmailConfig;
use crate::circuit::Health;
use crate::providers::ConnectionSlots;
use lettre::address::Envelope;
use lettre::transport::smtp::authentication::Mechanism;
use lettre::transport::smtp::client::{AsyncSmtpConnection, AsyncTokioStream};
use lettre::transport::smtp::extension::ClientId;
use lettre::transport::smtp::response::Response as Reply;
use std::cell::{Cell, RefCell};
use std::time::{Duration, Instant};

/// A 454 (temporary authentication failure) this soon after another one, with no delivery in
/// between, is no longer temporary: it counts as a credentials problem.
pub const REPEATED_454_WITHIN: Duration = Duration::from_secs(300);
/// A kept-open connection unused for this long is closed rather than reused.
pub const MAX_IDLE: Duration = Duration::from_secs(30);

impl EmailConfig {
    /// A new connection to the relay, ready to send: TCP with `TCP_NODELAY` (lettre's own
    /// connections lack it, and Nagle's algorithm then holds each message's final "." until the
    /// relay's delayed ACK, ~40 ms a message), TLS as configured, EHLO (and once more to learn
    /// whether the relay pipelines), AUTH.
    async fn open(&self) -> Result<Connection, Failure> {
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
        let mut conn = Connection::ready(conn, &hello).await.map_err(failed)?;
        if let Some(credentials) = &relay.credentials {
            conn.smtp().auth(&[Mechanism::Plain, Mechanism::Login], credentials).await.map_err(failed)?;
        }
        Ok(conn)
    }
}

pub(super) struct Pool {
    pub(super) config: EmailConfig,
    /// Connections kept open between transactions, with when they were last used. A connection
    /// is only put back after a successful transaction (lettre closes it on any error), and a
    /// transaction that times out drops its connection with it.
    idle: RefCell<Vec<(Connection, Instant)>>,
    /// Transactions (and so connections) at once.
    slots: ConnectionSlots,
    /// When the last 454 was answered, if no delivery succeeded since.
    last_454: Cell<Option<Instant>>,
}

impl Pool {
    pub(super) fn new(config: &EmailConfig) -> Pool {
        Pool {
            config: config.clone(),
            idle: RefCell::new(Vec::new()),
            slots: ConnectionSlots::new(config.connections as usize, "email: no free SMTP connection"),
            last_454: Cell::new(None),
        }
    }

    /// One SMTP transaction, within the timeout, classified; or, when none of this sender's
    /// connections came free by `wait_until`, deferred.
    pub(super) async fn transaction(
        &self,
        envelope: &Envelope,
        bytes: &[u8],
        wait_until: tokio::time::Instant,
    ) -> Attempt {
        // Nothing was sent when no connection frees by `wait_until`: this sender's connections
        // are busy (a backlog, or a mailbox that holds one for the whole timeout). That is no
        // attempt at this message: it goes back to Redis and comes again after about as long as
        // it waited, rather than spending attempts on our own queue.
        let _permit = match self.slots.take(wait_until, self.config.timeout).await {
            Ok(permit) => permit,
            Err(deferred) => return Attempt::NotSent(deferred),
        };
        // The transaction has the whole timeout, however long it waited for its connection: a
        // timeout then says the relay is slow, not that this job queued behind others.
        // Boxed: the transaction's state (connecting, TLS, EHLO, AUTH, the exchange) is several
        // KiB, and inline it would make every message waiting for a connection that big.
        let send = Box::pin(self.send_on_a_connection(envelope, bytes));
        let sent = tokio::time::timeout(self.config.timeout, send).await;
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
        let relay = &self.config.relay;
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
            // No reply (the relay hung up), a 421 (relays say it when they close an idle
            // connection) or a reply left over: try once more on a new connection, which tells
            // if the relay is down.
            Err(refused) if !fresh && refused.may_be_the_connection() => {
                let mut conn = self.config.open().await?;
                let reply = conn.send(envelope, bytes).await.map_err(|refused| refused.failure(relay))?;
                self.idle.borrow_mut().push((conn, Instant::now()));
                Ok(reply)
            }
            Err(refused) => Err(refused.failure(relay)),
        }
    }

    /// The most recently used idle connection; those idle too long are closed (relays drop
    /// idle clients after a few minutes).
    fn take_idle(&self) -> Option<Connection> {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every message of a sender's batches waits for one of its connections as a `transaction`
    /// future: what one costs while it waits is part of the memory per message in flight. The
    /// transaction itself is boxed, allocated once a connection is held; inline it made each
    /// waiting message ~6.8 KiB.
    #[actix_rt::test]
    async fn a_message_waiting_for_a_connection_holds_well_under_a_kib() {
        let settings: crate::providers::email::EmailSettings = serde_json::from_value(serde_json::json!({
            "enabled": true, "smtp_url": "smtp://127.0.0.1:9", "from": "relay@example.com", "timeout_ms": 50,
            "flush_after_ms": 0, "connections": 1, "rate_per_sec": 0, "device_rate_per_sec": 0,
        }))
        .expect("settings");
        let pool = Pool::new(&EmailConfig::new(&settings, None).expect("config"));
        let to = "someone@example.com".parse().expect("address");
        let envelope = Envelope::new(None, vec![to]).expect("envelope");
        let waiting = pool.transaction(&envelope, b"message", tokio::time::Instant::now());
        let size = std::mem::size_of_val(&waiting);
        assert!(size <= 1024, "a waiting message's future is {size} bytes");
    }
}
