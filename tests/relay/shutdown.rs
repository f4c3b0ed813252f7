//! SIGTERM lets in-flight work finish and exits 0.

use crate::helpers::{eventually, prepare};
use serde_json::json;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[actix_web::test]
async fn sigterm_stops_the_service_cleanly_and_it_exits_0() {
    let app = prepare().await;
    app.add_device("max", "expo", "ExponentPushToken[max]").await;
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_notify-relay"))
        .arg("run")
        .envs(app.env.iter())
        .env("NOTIFY__HTTP__ADDR", format!("127.0.0.1:{port}"))
        .env("NOTIFY__SHUTDOWN__GRACE_MS", "3000")
        .stdout(Stdio::null())
        .spawn()
        .expect("start the binary");

    let id = app.notify("max", json!({"title": "before shutdown"})).await;
    assert_eq!(app.final_status(id).await.0, "delivered");
    for i in 0..200 {
        app.notify("max", json!({"title": format!("load {i}")})).await;
    }
    let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();

    let started = Instant::now();
    let status = eventually(Duration::from_secs(10), || {
        let s = child.try_wait().unwrap();
        async move { s }
    })
    .await;
    assert_eq!(status.code(), Some(0));
    assert!(started.elapsed() < Duration::from_secs(8), "exited within grace + a little");
    // Nothing the service took is stuck half-done: what it acknowledged is stored.
    let pending = app.pending_entries().await;
    let queued = app.count("SELECT count(*) FROM delivery WHERE status = 'queued'").await;
    assert!(pending <= queued, "every pending entry is still queued in Postgres ({pending} > {queued})");
    app.cleanup().await;
}
