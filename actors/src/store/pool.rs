//! The store's Postgres pool, and the deadline every store call runs under.
//!
//! After a managed-Postgres failover the old connections are often blackholed rather than
//! reset: the socket stays open and nothing comes back, so a query waits for the kernel's
//! retransmission timeout (~15 min), or for ever behind a proxy whose kernel keeps acknowledging.
//! TCP keepalives and `tcp_user_timeout` (on the `tokio_postgres::Config`) catch a dead host, and
//! the server's `statement_timeout` ends a slow statement; neither ends a call whose bytes go
//! nowhere. So every store call holds its connection as a [`Lease`] with a deadline
//! (`database.statement_timeout_ms` + [`CALL_MARGIN`]): once it passes, the task that drives the
//! connection closes it, the call's pending query fails at once ("connection closed"), and the
//! closed connection is never lent again (recycling drops it). The idle connections opened
//! before the lost call began are dropped with it: after a failover they lead to the same dead
//! peer.
//!
//! The deadline is enforced here, where connections are lent, so that no store method carries
//! a timeout of its own.

use deadpool::managed::{self, Metrics, Object, RecycleError, RecycleResult};
use deadpool_postgres::ClientWrapper;
use slog::{warn, Logger};
use std::future::Future;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// The store's pool of Postgres connections.
pub type Pool = managed::Pool<PgManager>;

/// What a call past its statement timeout may take on top: the server cancels the statement at
/// `statement_timeout` and its error still has to travel back, and a call runs a few round trips
/// (BEGIN, prepares, COMMIT) besides its statements.
pub const CALL_MARGIN: Duration = Duration::from_secs(2);

/// How the pool lends connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolSettings {
    /// Connections at most.
    pub size: usize,
    /// How long a call waits for a free connection (and a returned one may take to recycle).
    pub wait: Duration,
    /// How long opening a connection may take, TLS and login included.
    pub connect: Duration,
    /// The server-side `statement_timeout`: a store call may take this plus [`CALL_MARGIN`].
    pub statement_timeout: Duration,
}

impl PoolSettings {
    /// The deadline of one store call, from the moment it holds its connection.
    pub fn call_limit(&self) -> Duration {
        self.statement_timeout + CALL_MARGIN
    }
}

/// The pool, with deadpool's wait, create and recycle timeouts set (they need a runtime).
pub fn build(target: crate::tls::PgTarget, settings: PoolSettings, log: Logger) -> Result<Pool, managed::BuildError> {
    let manager = PgManager { target, call_limit: settings.call_limit(), log };
    Pool::builder(manager)
        .max_size(settings.size)
        .runtime(deadpool::Runtime::Tokio1)
        .wait_timeout(Some(settings.wait))
        .create_timeout(Some(settings.connect))
        .recycle_timeout(Some(settings.wait))
        .build()
}

/// Opens connections whose driving task closes them when their call's deadline passes.
pub struct PgManager {
    target: crate::tls::PgTarget,
    call_limit: Duration,
    log: Logger,
}

impl PgManager {
    /// The deadline of one store call.
    pub fn call_limit(&self) -> Duration {
        self.call_limit
    }

    /// A pool error with its sources, and for a TLS failure its cause and the setting that
    /// fixes it (deadpool's own message says only that creating a connection failed).
    pub fn explain(&self, err: &managed::PoolError<tokio_postgres::Error>) -> String {
        match err {
            managed::PoolError::Backend(pg) => format!("opening a connection: {}", self.target.explain(pg)),
            other => crate::error::with_sources(other),
        }
    }
}

/// A pooled connection: the client, and the deadline its driving task watches.
pub struct PgConn {
    client: ClientWrapper,
    /// The deadline of the call holding the connection; `None` while it is idle in the pool.
    deadline: watch::Sender<Option<Instant>>,
    /// Set by the driving task when it closed the connection at the deadline.
    expired: Arc<AtomicBool>,
    created: Instant,
}

impl Deref for PgConn {
    type Target = ClientWrapper;

    fn deref(&self) -> &ClientWrapper {
        &self.client
    }
}

impl DerefMut for PgConn {
    fn deref_mut(&mut self) -> &mut ClientWrapper {
        &mut self.client
    }
}

impl managed::Manager for PgManager {
    type Type = PgConn;
    type Error = tokio_postgres::Error;

    async fn create(&self) -> Result<PgConn, tokio_postgres::Error> {
        let (client, connection) = match self.target.connect().await {
            Ok(opened) => opened,
            Err(e) => {
                // Said here because deadpool hands on only the driver's words, and a refused
                // certificate should name its cause and the setting that fixes it. Only TLS
                // failures: an outage's refused connections are reported by the calls that
                // wanted them, and would repeat here at every attempt.
                if crate::tls::tls_failure(&e).is_some() {
                    slog::warn!(self.log, "could not open a Postgres connection"; "error" => self.target.explain(&e));
                }
                return Err(e);
            }
        };
        let (deadline, watched) = watch::channel(None);
        let expired = Arc::new(AtomicBool::new(false));
        let limit = self.call_limit;
        let task = tokio::spawn(drive(connection, watched, expired.clone(), self.log.clone(), limit));
        // The wrapper aborts the task when it is dropped: a discarded connection closes.
        Ok(PgConn { client: ClientWrapper::new(client, task), deadline, expired, created: Instant::now() })
    }

    async fn recycle(&self, conn: &mut PgConn, _: &Metrics) -> RecycleResult<tokio_postgres::Error> {
        match conn.client.is_closed() {
            true => Err(RecycleError::message("connection closed")),
            false => Ok(()),
        }
    }
}

/// Drives the connection until it ends, its `PgConn` is dropped, or the deadline of the call
/// holding it passes; then the connection is dropped, which closes the socket and fails every
/// request still waiting on it.
async fn drive(
    connection: impl Future<Output = Result<(), tokio_postgres::Error>>,
    mut deadline: watch::Receiver<Option<Instant>>,
    expired: Arc<AtomicBool>,
    log: Logger,
    limit: Duration,
) {
    tokio::pin!(connection);
    loop {
        let at = *deadline.borrow_and_update();
        let passed = async move {
            match at {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = &mut connection => return,
            changed = deadline.changed() => if changed.is_err() { return },
            () = passed => {
                expired.store(true, Ordering::Release);
                warn!(log, "a Postgres call got no answer within its deadline: connection closed \
                            (a dead or blackholed peer; see database.statement_timeout_ms)";
                      "event" => "POSTGRES_CALL_ABANDONED", "deadline_ms" => limit.as_millis() as u64);
                return;
            }
        }
    }
}

/// A pooled connection lent to one store call, under the call's deadline. Dereferences to the
/// deadpool client (`transaction`, `prepare_cached`, and the tokio-postgres methods).
pub struct Lease {
    object: Object<PgManager>,
    started: Instant,
}

impl Lease {
    /// Waits (at most `database.pool_wait_ms`) for a connection and starts its deadline.
    pub async fn new(pool: &Pool) -> Result<Lease, managed::PoolError<tokio_postgres::Error>> {
        let object = pool.get().await?;
        let started = Instant::now();
        object.deadline.send_replace(Some(started + pool.manager().call_limit));
        Ok(Lease { object, started })
    }
}

impl Deref for Lease {
    type Target = ClientWrapper;

    fn deref(&self) -> &ClientWrapper {
        &self.object.client
    }
}

impl DerefMut for Lease {
    fn deref_mut(&mut self) -> &mut ClientWrapper {
        &mut self.object.client
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.object.deadline.send_replace(None);
        // A connection closed at its deadline goes back closed, and recycling (`is_closed`)
        // drops it at the next checkout: it is never lent again.
        if !self.object.expired.load(Ordering::Acquire) {
            return;
        }
        // Idle connections opened before this call began reach the same dead peer after a
        // failover; those opened since reached a live server.
        if let Some(pool) = Object::pool(&self.object) {
            let started = self.started;
            let _ = pool.retain(|conn, _| conn.created > started && !conn.client.is_closed());
        }
    }
}
