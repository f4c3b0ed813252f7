//! `notify-relay mock-providers`, the emulators as a command: it writes the credentials a relay
//! needs and stops cleanly on SIGTERM (how a container runtime or a CI job stops it), not only
//! on Ctrl-C.

use emulators::testing::{eventually, RelayProcess};
use std::process::{Command, Stdio};
use std::time::Duration;

#[actix_web::test]
async fn mock_providers_writes_the_credentials_and_exits_0_on_sigterm() {
    let dir = std::env::temp_dir().join(format!("mock-providers-{}", uuid::Uuid::new_v4().simple()));
    // In a RelayProcess, so that a failing test does not leave the emulators running.
    let mut child = RelayProcess(
        Command::new(env!("CARGO_BIN_EXE_notify-relay"))
            .arg("mock-providers")
            .args(["--expo-addr", "127.0.0.1:0", "--fcm-addr", "127.0.0.1:0"])
            .args(["--apns-addr", "127.0.0.1:0", "--smtp-addr", "127.0.0.1:0"])
            .arg("--credentials-dir")
            .arg(&dir)
            .env_remove("NOTIFY_CONFIG")
            .stdout(Stdio::null())
            .spawn()
            .expect("start the binary"),
    );
    let files = ["fcm-service-account.json", "apns-key.p8", "apns-ca.pem"];
    eventually(Duration::from_secs(20), || {
        let written = files.iter().all(|f| dir.join(f).exists());
        async move { written.then_some(()) }
    })
    .await;

    child.signal("-TERM");
    let status = child.exited(Duration::from_secs(10)).await;
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(status.code(), Some(0), "SIGTERM stops the emulators and the command exits 0, got {status}");
}
