//! A TCP proxy on loopback that can blackhole the connections it carries: what a failover or a
//! dead route looks like to a client (the socket stays open, nothing comes back). The proxy's
//! kernel keeps acknowledging, so TCP keepalives and `tcp_user_timeout` never fire: only the
//! client's own deadlines can notice.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

/// The proxy: `addr` forwards to the upstream it was started with. Its tasks, and with them
/// every socket it holds, end when it is dropped.
pub struct Proxy {
    /// `127.0.0.1:<port>`.
    pub addr: String,
    state: Arc<ProxyState>,
}

#[derive(Default)]
struct ProxyState {
    /// Connections accepted so far; each is numbered in order.
    accepted: AtomicU64,
    /// Connections numbered below this are blackholed.
    cutoff: AtomicU64,
    tasks: Mutex<Vec<AbortHandle>>,
}

impl ProxyState {
    fn tasks(&self) -> MutexGuard<'_, Vec<AbortHandle>> {
        // Only pushes and drains happen under the lock: a poisoned list is still a list.
        self.tasks.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Proxy {
    /// A proxy to `upstream` (`host:port`), on the current actix System; fails the test when no
    /// loopback port can be bound.
    pub async fn start(upstream: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address").to_string();
        let state = Arc::new(ProxyState::default());
        let shared = state.clone();
        let accept = actix_rt::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(&upstream).await else { continue };
                let number = shared.accepted.fetch_add(1, Ordering::SeqCst);
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                let up = actix_rt::spawn(pump(client_read, server_write, number, false, shared.clone()));
                let down = actix_rt::spawn(pump(server_read, client_write, number, true, shared.clone()));
                shared.tasks().extend([up.abort_handle(), down.abort_handle()]);
            }
        });
        state.tasks().push(accept.abort_handle());
        Proxy { addr, state }
    }

    /// Every connection open now stops forwarding; new ones pass.
    pub fn blackhole(&self) {
        self.state.cutoff.store(self.state.accepted.load(Ordering::SeqCst), Ordering::SeqCst);
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.state.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        for task in self.state.tasks().drain(..) {
            task.abort();
        }
    }
}

/// Copies bytes one way (`to_client`: from the server to the client). A blackholed connection
/// keeps reading (its peer's writes succeed, as they would towards a live kernel) and forwards
/// nothing, not even the server closing: a dead route delivers no FIN either, so the client is
/// left with a connection that is open and silent. A client closing is passed on, blackholed or
/// not: the server behind the proxy is the one that new connections reach, and a session left
/// open there would hold its locks for ever (the old primary of a real failover is gone, and its
/// locks with it).
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, number: u64, to_client: bool, state: Arc<ProxyState>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if number < state.cutoff.load(Ordering::SeqCst) {
            continue;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
    if to_client && number < state.cutoff.load(Ordering::SeqCst) {
        // Held open (and silent) until the proxy is dropped.
        std::future::pending::<()>().await;
    }
    drop(to);
}
