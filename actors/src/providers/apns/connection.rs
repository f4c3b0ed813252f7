//! The HTTP/2 connections of one APNs client, on the `h2` crate: opened lazily, kept open, and
//! shared by every request of the client as concurrent streams.
//!
//! Why not awc: awc's HTTP/2 pool hands a connection to one request at a time (README, "Why APNs
//! speaks h2 directly"), so a batch of 100 opened up to `limit` TLS connections per sender. Here
//! a sender keeps [`CONNECTIONS`] connections and multiplexes its whole batch on them. The
//! server's `SETTINGS_MAX_CONCURRENT_STREAMS` is respected by `h2` itself: a request beyond the
//! limit is queued as a pending stream and opened only when one closes, and
//! `SendRequest::ready()` waits while that queue is occupied, so the client never has more
//! streams open than the server allows.
//!
//! Lifecycle: a connection is driven by a task spawned on the sender's arbiter (a tokio
//! current-thread runtime, the thread that owns the client), which marks it closed when the
//! connection ends (GOAWAY, reset, EOF). The next request after that, or after a request saw a
//! connection-level error, opens a new one; the requests that were in flight on the old one
//! fail, and are classified as an outage by the caller (RETRY, PROVIDERS.md "GOAWAY/reset →
//! RETRY (new connection)").

use bytes::Bytes;
use h2::client::SendRequest;
use rustls::pki_types::ServerName;
use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::Mutex;

/// HTTP/2 connections one client (one sender, on its own arbiter thread) keeps to APNs. One is
/// enough: a sender has at most its in-flight batches open as streams, and Apple allows 1000
/// streams per connection; with `senders_per_provider` senders a process keeps that many
/// connections, the "few long-lived connections" Apple asks for. More would only cost TLS
/// handshakes and buffers. Connections are per sender rather than per process because h2's
/// connection task must run on a runtime: each arbiter drives its own, with no locks between
/// threads.
pub const CONNECTIONS: usize = 1;

/// Why a request got no answer from APNs (an outage for the caller).
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("apns: request failed: the base URL has no host: {0}")]
    Url(String),
    #[error("apns: request failed: connecting to {0}: {1}")]
    Connect(String, #[source] std::io::Error),
    #[error("apns: request failed: TLS with {0}: {1}")]
    Tls(String, #[source] std::io::Error),
    #[error("apns: request failed: {0} did not agree to HTTP/2 (ALPN h2)")]
    NoHttp2(String),
    #[error("apns: request failed: HTTP/2: {0}")]
    Http2(#[source] h2::Error),
    /// The connection could take no new stream (it had ended, or got a GOAWAY): the request
    /// never left.
    #[error("apns: request failed: HTTP/2 (not sent): {0}")]
    NotSent(#[source] h2::Error),
    #[error("apns: request failed: no connection within {0:?} (TCP, TLS and the HTTP/2 handshake)")]
    HandshakeTimeout(Duration),
    #[error("apns: request failed: no answer within {0:?}")]
    Timeout(Duration),
    #[error("apns: request failed: building the request: {0}")]
    Build(#[source] http::Error),
}

/// Where the connections go.
struct Target {
    /// `host:port`, for errors.
    addr: String,
    host: String,
    port: u16,
    server_name: ServerName<'static>,
}

/// A live connection: a handle to open streams on it, and whether it has ended.
#[derive(Clone)]
pub struct Live {
    pub send: SendRequest<Bytes>,
    closed: Rc<Cell<bool>>,
}

/// The connections of one client; cheap to share (`Rc`) between its requests, which all run on
/// the client's thread.
pub struct Connections {
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
    /// Connections to `base_url`'s host (port 443 unless it names one), over TLS with `tls`
    /// (ALPN h2). Nothing is opened until the first request.
    pub fn new(base_url: &str, tls: Arc<rustls::ClientConfig>, handshake_timeout: Duration) -> Connections {
        Connections {
            target: target(base_url),
            tls: tokio_rustls::TlsConnector::from(tls),
            handshake_timeout,
            slots: (0..CONNECTIONS).map(|_| Mutex::new(None)).collect(),
            next: Cell::new(0),
        }
    }

    /// A live connection to open a stream on: the next slot's, connected first if it has none
    /// or its connection ended.
    pub async fn get(&self) -> Result<Live, SendError> {
        let i = self.next.get();
        self.next.set((i + 1) % self.slots.len());
        let mut slot = self.slots[i].lock().await;
        if let Some(live) = slot.as_ref().filter(|live| !live.closed.get()) {
            return Ok(live.clone());
        }
        *slot = None;
        let live = tokio::time::timeout(self.handshake_timeout, self.connect())
            .await
            .map_err(|_| SendError::HandshakeTimeout(self.handshake_timeout))??;
        *slot = Some(live.clone());
        Ok(live)
    }

    /// Forgets a connection a request found broken (GOAWAY, I/O error): the next request opens
    /// a new one. Its task ends on its own once the connection is gone.
    pub fn discard(&self, live: &Live) {
        live.closed.set(true);
    }

    async fn connect(&self) -> Result<Live, SendError> {
        let target = self.target.as_ref().map_err(|url| SendError::Url(url.clone()))?;
        let tcp = TcpStream::connect((target.host.as_str(), target.port))
            .await
            .map_err(|e| SendError::Connect(target.addr.clone(), e))?;
        // Requests are small and latency-bound: no Nagle delay.
        tcp.set_nodelay(true).map_err(|e| SendError::Connect(target.addr.clone(), e))?;
        let tls = self
            .tls
            .connect(target.server_name.clone(), tcp)
            .await
            .map_err(|e| SendError::Tls(target.addr.clone(), e))?;
        if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
            return Err(SendError::NoHttp2(target.addr.clone()));
        }
        let (send, mut connection) =
            h2::client::Builder::new().handshake::<_, Bytes>(tls).await.map_err(SendError::Http2)?;
        let ping = connection.ping_pong();
        let closed = Rc::new(Cell::new(false));
        let ended = closed.clone();
        // The connection's frames are read and written by this task, on the client's own
        // arbiter; it ends when the server closes the connection, or after the client and all
        // its streams are gone (h2 then sends GOAWAY).
        actix_rt::spawn(async move {
            let _ = connection.await;
            ended.set(true);
        });
        // Until the server's SETTINGS arrive, h2 assumes 100 concurrent streams may be opened,
        // and a server that allows fewer refuses the rest (REFUSED_STREAM). The server sends
        // SETTINGS first, so once a PING is answered its limit is the one h2 keeps to.
        if let Some(mut ping) = ping {
            ping.ping(h2::Ping::opaque()).await.map_err(SendError::Http2)?;
        }
        Ok(Live { send, closed })
    }
}

fn target(base_url: &str) -> Result<Target, String> {
    let uri: http::Uri = base_url.parse().map_err(|_| base_url.to_string())?;
    let host = uri.host().ok_or_else(|| base_url.to_string())?;
    // An IPv6 literal is bracketed in the URL only.
    let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
    let port = uri.port_u16().unwrap_or(443);
    let server_name = ServerName::try_from(host.clone()).map_err(|_| base_url.to_string())?;
    Ok(Target { addr: format!("{host}:{port}"), host, port, server_name })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_target_is_the_base_urls_host_and_port() {
        let t = target("https://api.push.apple.com").expect("target");
        assert_eq!((t.host.as_str(), t.port), ("api.push.apple.com", 443));
        let t = target("https://127.0.0.1:4002").expect("target");
        assert_eq!((t.addr.as_str(), t.port), ("127.0.0.1:4002", 4002));
        let t = target("https://[::1]:4002").expect("target");
        assert_eq!(t.host, "::1");
        assert!(target("not a url").is_err());
    }
}
