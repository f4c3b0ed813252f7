//! What both integration-test targets use (`tests/relay`, with Postgres and Redis, and
//! `tests/providers`, the provider clients against the emulators alone): a wait for a condition
//! with a deadline, a temp directory and a child process that are removed when dropped, and a
//! job to hand a provider client directly. Test support only: these panic when the test fails.

use notify_relay_engine::job::{Job, Priority, Provider};
use serde_json::Value;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// Polls `check` until it yields a value, failing the test after `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "condition not reached within {limit:?}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A first attempt for a new (notification, device) of `provider`, for calling a provider
/// client directly.
pub fn client_job(provider: Provider, token: &str, payload: Value, priority: Priority) -> Job {
    Job {
        notification_id: Uuid::new_v4(),
        device_id: Uuid::new_v4(),
        user_id: "u".into(),
        provider,
        token: token.into(),
        payload: payload.into(),
        priority,
        trace_id: "test-trace".into(),
        attempt: 0,
        targets: 1,
        requeued: false,
        queued_ms: 0,
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
