//! What both integration-test targets use (`tests/relay`, with Postgres and Redis, and
//! `tests/providers`, the provider clients against the emulators alone): a wait for a condition
//! with a deadline, a temp directory and a child process that are removed when dropped, and a
//! job to hand a provider client directly, and a Redis connection patient enough for a loaded
//! machine. Test support: the waits panic when the test fails. `redis_connection`,
//! `remove_keys` and `count_keys` return errors instead, and `loadgen` uses them to clean up after
//! a run. `Proxy` stands for a dead route: a loopback TCP proxy that can blackhole what it
//! carries.

mod proxy;

pub use proxy::Proxy;

use notify_relay_engine::job::{Job, Priority, Provider};
use serde_json::Value;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// A connection to the Redis at `url` for a test's own commands. redis-rs gives up on a reply
/// after 500 ms by default; on a machine running many tests at once (or while another test
/// loads 100k entries) a healthy Redis can take longer, and a test must fail on what it checks,
/// not on a client timeout.
pub async fn redis_connection(url: &str) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
    let patient = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(10)))
        .set_response_timeout(Some(Duration::from_secs(10)));
    redis::Client::open(url)?.get_multiplexed_async_connection_with_config(&patient).await
}

/// Waits until the Redis at `url` answers `command` with a text `ready` accepts (`PING` once a
/// server listens and has loaded its snapshot; `CLUSTER INFO` once a cluster is formed); fails
/// the test after `limit`.
pub async fn until_redis_answers(url: &str, limit: Duration, command: &redis::Cmd, ready: impl Fn(&str) -> bool) {
    eventually(limit, || async {
        let mut conn = redis_connection(url).await.ok()?;
        let reply: String = command.query_async(&mut conn).await.ok()?;
        ready(&reply).then_some(())
    })
    .await
}

/// Removes every key under `prefix` (`prefix:*`) with `SCAN` and `UNLINK` in batches, so that
/// cleaning up after a test with 100k keys never blocks the Redis that other tests share
/// (`KEYS` walks the whole keyspace in one command, `DEL` frees memory inline). Returns how many
/// keys were unlinked.
pub async fn remove_keys(conn: &mut redis::aio::MultiplexedConnection, prefix: &str) -> redis::RedisResult<u64> {
    let (pattern, mut cursor, mut removed) = (format!("{prefix}:*"), 0, 0);
    loop {
        let (next, keys) = scan_page(conn, &pattern, cursor).await?;
        if !keys.is_empty() {
            removed += redis::cmd("UNLINK").arg(&keys).query_async::<u64>(conn).await?;
        }
        match next {
            0 => return Ok(removed),
            next => cursor = next,
        }
    }
}

/// How many keys there are under `prefix` (`prefix:*`), counted with `SCAN` (never `KEYS`).
pub async fn count_keys(conn: &mut redis::aio::MultiplexedConnection, prefix: &str) -> redis::RedisResult<u64> {
    let (pattern, mut cursor, mut count) = (format!("{prefix}:*"), 0, 0);
    loop {
        let (next, keys) = scan_page(conn, &pattern, cursor).await?;
        count += keys.len() as u64;
        match next {
            0 => return Ok(count),
            next => cursor = next,
        }
    }
}

/// One `SCAN` page of the keys matching `pattern`: the next cursor (0 at the end) and the keys.
async fn scan_page(
    conn: &mut redis::aio::MultiplexedConnection,
    pattern: &str,
    cursor: u64,
) -> redis::RedisResult<(u64, Vec<String>)> {
    redis::cmd("SCAN").arg(cursor).arg("MATCH").arg(pattern).arg("COUNT").arg(1000).query_async(conn).await
}

/// Polls `check` until it yields a value, failing the test after `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    eventually_explained(limit, check, || async { String::new() }).await
}

/// [`eventually`], whose failure adds what `explain` finds at the deadline (the rows still
/// open, say), so that a timeout names its cause.
pub async fn eventually_explained<T, F, Fut, E, EFut>(limit: Duration, mut check: F, explain: E) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
    E: FnOnce() -> EFut,
    EFut: Future<Output = String>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("condition not reached within {limit:?}{}", explain().await);
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A first attempt for a new (notification, device) of `provider`, for calling a provider
/// client directly.
pub fn client_job(provider: Provider, token: &str, payload: Value, priority: Priority) -> Job {
    Job { trace_id: "test-trace".into(), ..Job::first_attempt(provider, token, payload, priority) }
}

/// An `io::Write` that keeps what is written to it, for a test to read back (a logger's output).
#[derive(Clone, Default)]
pub struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut kept = self.0.lock().map_err(|_| std::io::Error::other("a writer panicked"))?;
        kept.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    /// What was written so far, as text (bytes that are not UTF-8 replaced).
    pub fn text(&self) -> String {
        let kept = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        String::from_utf8_lossy(&kept).into_owned()
    }
}

/// A directory of the test's own under the system temp dir, removed with what is in it when
/// dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("{name}-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("create a temp directory");
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The `notify-relay` binary started as a child process (a relay, or `mock-providers`); killed
/// when dropped, so a failing test leaves none behind.
pub struct RelayProcess(pub std::process::Child);

impl RelayProcess {
    /// Sends a signal (`-KILL`, `-TERM`).
    pub fn signal(&self, signal: &str) {
        let _ = std::process::Command::new("kill").arg(signal).arg(self.0.id().to_string()).status();
    }

    /// Waits up to `limit` for the process to exit.
    pub async fn exited(&mut self, limit: Duration) -> std::process::ExitStatus {
        eventually(limit, || {
            let status = self.0.try_wait().expect("try_wait");
            async move { status }
        })
        .await
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[actix_rt::test]
    #[should_panic(expected = "condition not reached within 50ms: 3 rows still open")]
    async fn a_wait_that_times_out_says_what_explain_found() {
        let explain = || async { ": 3 rows still open".to_string() };
        eventually_explained(Duration::from_millis(50), || async { None::<()> }, explain).await;
    }

    #[actix_rt::test]
    async fn a_wait_returns_what_the_check_yields_once_it_holds() {
        let mut polls = 0;
        let value = eventually(Duration::from_secs(5), || {
            polls += 1;
            let done = polls >= 3;
            async move { done.then_some(polls) }
        })
        .await;
        assert_eq!(value, 3);
    }
}
