//! The HTTP/2 connections of the providers that take one request per message (APNs, FCM), on the
//! `h2` crate: opened lazily, kept open, and shared by every request of a client as concurrent
//! streams.
//!
//! Why not awc: awc's HTTP/2 pool hands a connection to one request at a time (README, "Why APNs
//! and FCM speak HTTP/2 through `h2` directly"), so a batch of 100 opened up to `limit` connections per sender,
//! and over plain HTTP it speaks HTTP/1.1 only. Here a sender keeps [`CONNECTIONS`] connections
//! and multiplexes its whole batch on them. The server's `SETTINGS_MAX_CONCURRENT_STREAMS` is
//! respected by `h2` itself: a request beyond the limit is queued as a pending stream and opened
//! only when one closes, and `SendRequest::ready()` waits while that queue is occupied, so the
//! client never has more streams open than the server allows.
//!
//! Transport: TLS with ALPN `h2` for an `https://` base URL; for `http://` (an emulator, a
//! gateway on loopback) HTTP/2 with prior knowledge (RFC 9113 §3.3, "h2c"), when the client
//! allows it ([`Connections::new`]).
//!
//! Lifecycle: a connection is driven by a task spawned on the sender's arbiter (a tokio
//! current-thread runtime, the thread that owns the client), which marks it closed when the
//! connection ends (GOAWAY, reset, EOF). The next request after that, or after a request saw a
//! connection-level error, opens a new one; the requests that were in flight on the old one
//! fail, and are classified as an outage by the caller (RETRY, PROVIDERS.md "GOAWAY/reset →
//! RETRY (new connection)"). A request that gets no answer in time makes the client PING the
//! connection: one that does not answer a PING either (a peer gone without a word, a
//! blackholed route) is given up, so that the next request opens a new one instead of waiting
//! for the kernel to notice, which takes a quarter of an hour.

use bytes::Bytes;
use h2::client::SendRequest;
use rustls::pki_types::ServerName;
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::Mutex;
use tokio::time::Instant;

/// HTTP/2 connections one client (one sender, on its own arbiter thread) keeps to a provider.
/// One is enough: a sender has at most its in-flight batches open as streams, and Apple allows
/// 1000 streams per connection; with `senders_per_provider` senders a process keeps that many
/// connections, the "few long-lived connections" Apple asks for. More would only cost
/// handshakes and buffers. Connections are per sender rather than per process because h2's
/// connection task must run on a runtime: each arbiter drives its own, with no locks between
/// threads.
pub const CONNECTIONS: usize = 1;

/// Why a request got no answer from the provider (an outage for the caller), e.g.
/// `fcm: request failed: no answer within 300ms`.
#[derive(Debug, thiserror::Error)]
#[error("{provider}: request failed: {failure}")]
pub struct SendError {
    pub provider: &'static str,
    pub failure: Failure,
}

/// What went wrong, without the provider's name.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error("the base URL has no host: {0}")]
    Url(String),
    #[error("connecting to {0}: {1}")]
    Connect(String, #[source] std::io::Error),
    #[error("TLS with {0}: {1}")]
    Tls(String, #[source] std::io::Error),
    #[error("{0} did not agree to HTTP/2 (ALPN h2)")]
    NoHttp2(String),
    #[error("HTTP/2: {0}")]
    Http2(#[source] h2::Error),
    /// The connection could take no new stream (it had ended, or got a GOAWAY): the request
    /// never left.
    #[error("HTTP/2 (not sent): {0}")]
    NotSent(#[source] h2::Error),
    #[error("no connection within {0:?} (TCP, TLS and the HTTP/2 handshake)")]
    HandshakeTimeout(Duration),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("building the request: {0}")]
    Build(#[source] http::Error),
}

/// An answer: the status, the headers, and at most the body's first `max_body` bytes.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Vec<u8>,
}

/// Where the connections go.
struct Target {
    /// `host:port`, for errors.
    addr: String,
    host: String,
    port: u16,
    /// The server's name for TLS; `None` for HTTP/2 with prior knowledge over plain TCP.
    tls_name: Option<ServerName<'static>>,
}

/// A live connection: a handle to open streams on it, whether it has ended, and its PING (taken
/// while a check is running).
#[derive(Clone)]
struct Live {
    send: SendRequest<Bytes>,
    closed: Rc<Cell<bool>>,
    ping: Rc<RefCell<Option<h2::PingPong>>>,
}

/// The connections of one client; cheap to share (`Rc`) between its requests, which all run on
/// the client's thread.
pub struct Connections {
    provider: &'static str,
    /// The target, or the base URL that names none.
    target: Result<Target, String>,
    tls: tokio_rustls::TlsConnector,
    handshake_timeout: Duration,
    /// Each slot is locked only while it is being connected, so that the requests of a batch
    /// arriving at an empty slot open one connection, not one each.
    slots: Box<[Mutex<Option<Live>>]>,
    next: Cell<usize>,
}

impl Connections {
    /// Connections to `base_url`'s host, named `provider` in errors: over TLS with `tls` (ALPN
    /// h2; port 443 unless the URL names one), or, when `cleartext` allows it and the URL is
    /// `http://`, over plain TCP with prior knowledge (port 80 unless named). Nothing is opened
    /// until the first request.
    pub fn new(
        provider: &'static str,
        base_url: &str,
        tls: Arc<rustls::ClientConfig>,
        cleartext: bool,
        handshake_timeout: Duration,
    ) -> Connections {
        Connections {
            provider,
            target: target(base_url, cleartext),
            tls: tokio_rustls::TlsConnector::from(tls),
            handshake_timeout,
            slots: (0..CONNECTIONS).map(|_| Mutex::new(None)).collect(),
            next: Cell::new(0),
        }
    }

    /// One request within `timeout` (connecting included): the head `head` builds (once more if
    /// the request is sent again) with `body`, and the answer with at most `max_body` bytes of
    /// its body.
    ///
    /// Sent once more, once: a request that never left (the connection had just ended, e.g. the
    /// provider closed it for idling), on a new connection; and a stream the server refused
    /// (REFUSED_STREAM: it lowered its stream limit while the request was on its way), which was
    /// not processed (RFC 9113 §8.7). A connection that fails as a whole (GOAWAY, I/O) is
    /// discarded, so that the next request opens a new one; a stream reset by the server
    /// concerns that stream only; a request without an answer in time has its connection
    /// checked ([`Connections::check`]).
    pub async fn send(
        &self,
        timeout: Duration,
        head: impl Fn() -> Result<http::Request<()>, http::Error>,
        body: Bytes,
        max_body: usize,
    ) -> Result<Answer, SendError> {
        let deadline = Instant::now() + timeout;
        let mut again = false;
        loop {
            let live = match tokio::time::timeout_at(deadline, self.get()).await {
                Ok(live) => live?,
                Err(_) => return Err(self.error(Failure::Timeout(timeout))),
            };
            let answer =
                match tokio::time::timeout_at(deadline, exchange(live.send.clone(), &head, body.clone(), max_body))
                    .await
                {
                    Ok(answer) => answer,
                    Err(_) => {
                        self.check(&live);
                        return Err(self.error(Failure::Timeout(timeout)));
                    }
                };
            match &answer {
                Err(Failure::NotSent(_)) => {
                    self.discard(&live);
                    if !again {
                        again = true;
                        continue;
                    }
                }
                Err(Failure::Http2(e)) => {
                    if e.reason() == Some(h2::Reason::REFUSED_STREAM) && e.is_reset() && !again {
                        again = true;
                        continue;
                    }
                    if !e.is_reset() {
                        self.discard(&live);
                    }
                }
                _ => {}
            }
            return answer.map_err(|failure| self.error(failure));
        }
    }

    fn error(&self, failure: Failure) -> SendError {
        SendError { provider: self.provider, failure }
    }

    /// A live connection to open a stream on: the next slot's, connected first if it has none
    /// or its connection ended.
    async fn get(&self) -> Result<Live, SendError> {
        let i = self.next.get();
        self.next.set((i + 1) % self.slots.len());
        let mut slot = self.slots[i].lock().await;
        if let Some(live) = slot.as_ref().filter(|live| !live.closed.get()) {
            return Ok(live.clone());
        }
        *slot = None;
        let live = tokio::time::timeout(self.handshake_timeout, self.connect())
            .await
            .map_err(|_| self.error(Failure::HandshakeTimeout(self.handshake_timeout)))?
            .map_err(|failure| self.error(failure))?;
        *slot = Some(live.clone());
        Ok(live)
    }

    /// Forgets a connection a request found broken (GOAWAY, I/O error): the next request opens
    /// a new one. Its task ends on its own once the connection is gone.
    fn discard(&self, live: &Live) {
        live.closed.set(true);
    }

    /// After a request got no answer in time: PINGs the connection (in the background, one
    /// check at a time), and discards it unless the PING is answered within the handshake
    /// timeout. A slow answer to one request keeps the connection; a connection that answers
    /// nothing at all is replaced.
    fn check(&self, live: &Live) {
        let Some(mut ping) = live.ping.borrow_mut().take() else { return };
        let (live, within) = (live.clone(), self.handshake_timeout);
        actix_rt::spawn(async move {
            match tokio::time::timeout(within, ping.ping(h2::Ping::opaque())).await {
                Ok(Ok(_)) => *live.ping.borrow_mut() = Some(ping),
                _ => live.closed.set(true),
            }
        });
    }

    async fn connect(&self) -> Result<Live, Failure> {
        let target = self.target.as_ref().map_err(|url| Failure::Url(url.clone()))?;
        let tcp = TcpStream::connect((target.host.as_str(), target.port))
            .await
            .map_err(|e| Failure::Connect(target.addr.clone(), e))?;
        // Requests are small and latency-bound: no Nagle delay.
        tcp.set_nodelay(true).map_err(|e| Failure::Connect(target.addr.clone(), e))?;
        let Some(name) = &target.tls_name else {
            return handshake(tcp).await;
        };
        let tls = self.tls.connect(name.clone(), tcp).await.map_err(|e| Failure::Tls(target.addr.clone(), e))?;
        if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
            return Err(Failure::NoHttp2(target.addr.clone()));
        }
        handshake(tls).await
    }
}

/// The HTTP/2 handshake on a connected stream, and the task that drives the connection.
async fn handshake<T>(io: T) -> Result<Live, Failure>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + 'static,
{
    let (send, mut connection) = h2::client::Builder::new().handshake::<_, Bytes>(io).await.map_err(Failure::Http2)?;
    let mut ping = connection.ping_pong();
    let closed = Rc::new(Cell::new(false));
    let ended = closed.clone();
    // The connection's frames are read and written by this task, on the client's own arbiter;
    // it ends when the server closes the connection, or after the client and all its streams
    // are gone (h2 then sends GOAWAY).
    actix_rt::spawn(async move {
        let _ = connection.await;
        ended.set(true);
    });
    // Until the server's SETTINGS arrive, h2 assumes 100 concurrent streams may be opened, and
    // a server that allows fewer refuses the rest (REFUSED_STREAM). The server sends SETTINGS
    // first, so once a PING is answered its limit is the one h2 keeps to.
    if let Some(ping) = ping.as_mut() {
        ping.ping(h2::Ping::opaque()).await.map_err(Failure::Http2)?;
    }
    Ok(Live { send, closed, ping: Rc::new(RefCell::new(ping)) })
}

/// The request on a new stream, and its answer: status, headers and at most `max_body` bytes of
/// body.
async fn exchange(
    send: SendRequest<Bytes>,
    head: &impl Fn() -> Result<http::Request<()>, http::Error>,
    body: Bytes,
    max_body: usize,
) -> Result<Answer, Failure> {
    // Waits while h2's queue of streams beyond the server's SETTINGS_MAX_CONCURRENT_STREAMS is
    // occupied (see the module's comment).
    let mut send = send.ready().await.map_err(Failure::NotSent)?;
    let head = head().map_err(Failure::Build)?;
    let (response, mut body_out) = send.send_request(head, body.is_empty()).map_err(Failure::NotSent)?;
    if !body.is_empty() {
        // At most a few KiB (4096 for both providers), within the initial stream window: h2
        // buffers it until it is written.
        body_out.send_data(body, true).map_err(Failure::Http2)?;
    }
    let (parts, mut body_in) = response.await.map_err(Failure::Http2)?.into_parts();
    let mut body = Vec::new();
    while let Some(chunk) = body_in.data().await {
        let chunk = chunk.map_err(Failure::Http2)?;
        // Hands the window back, or a long body would stall the connection's other streams.
        let _ = body_in.flow_control().release_capacity(chunk.len());
        let room = max_body - body.len();
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() == max_body {
            // Enough to classify: dropping the stream resets it (CANCEL), the rest is not read.
            break;
        }
    }
    Ok(Answer { status: parts.status.as_u16(), headers: parts.headers, body })
}

/// The TLS configuration of a provider's connections: the Mozilla roots plus `extra` (private
/// gateways, the emulators), and ALPN `h2` only.
pub fn tls_config(
    extra: Vec<rustls::pki_types::CertificateDer<'static>>,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let mut roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    for cert in extra {
        roots.add(cert).map_err(TlsError::Certificate)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Config)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// Why [`tls_config`] failed.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("unusable CA certificate: {0}")]
    Certificate(#[source] rustls::Error),
    #[error("TLS configuration: {0}")]
    Config(#[source] rustls::Error),
}

fn target(base_url: &str, cleartext: bool) -> Result<Target, String> {
    let uri: http::Uri = base_url.parse().map_err(|_| base_url.to_string())?;
    let host = uri.host().ok_or_else(|| base_url.to_string())?;
    // An IPv6 literal is bracketed in the URL only.
    let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
    let plain = cleartext && uri.scheme_str() == Some("http");
    let port = uri.port_u16().unwrap_or(if plain { 80 } else { 443 });
    let tls_name = match plain {
        true => None,
        false => Some(ServerName::try_from(host.clone()).map_err(|_| base_url.to_string())?),
    };
    Ok(Target { addr: format!("{host}:{port}"), host, port, tls_name })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_target_is_the_base_urls_host_and_port() {
        let t = target("https://api.push.apple.com", false).expect("target");
        assert_eq!((t.host.as_str(), t.port), ("api.push.apple.com", 443));
        assert!(t.tls_name.is_some());
        let t = target("https://127.0.0.1:4002", false).expect("target");
        assert_eq!((t.addr.as_str(), t.port), ("127.0.0.1:4002", 4002));
        let t = target("https://[::1]:4002", false).expect("target");
        assert_eq!(t.host, "::1");
        assert!(target("not a url", false).is_err());
    }

    #[test]
    fn plain_http_is_h2_with_prior_knowledge_only_where_the_client_allows_it() {
        let t = target("http://127.0.0.1:4001", true).expect("target");
        assert_eq!((t.port, t.tls_name.is_none()), (4001, true));
        assert_eq!(target("http://fcm.local", true).expect("target").port, 80);
        // APNs speaks TLS whatever the scheme says.
        let t = target("http://127.0.0.1:4001", false).expect("target");
        assert!(t.tls_name.is_some());
        assert_eq!(target("https://fcm.googleapis.com", true).expect("target").port, 443);
    }
}
