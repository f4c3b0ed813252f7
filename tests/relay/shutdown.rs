//! SIGTERM lets in-flight work finish and exits 0.

use crate::helpers::{eventually, notify_times, prepare};
use serde_json::json;
use std::time::{Duration, Instant};

#[actix_web::test]
async fn sigterm_stops_the_service_cleanly_and_it_exits_0() {
    let app = prepare().await;
    app.add_device("max", "expo", "ExponentPushToken[max]").await;
    // At most 100 in flight: a backlog of 1,000 takes ten 200 ms rounds, so SIGTERM always meets
    // work in flight and work not yet read.
    let mut relay = app.spawn_binary(|s| {
        s.shutdown.grace = Duration::from_secs(3);
        s.worker.concurrency = 100;
    });

    let id = app.notify("max", json!({"title": "before shutdown"})).await;
    assert_eq!(app.final_status(id).await.0, "delivered");
    // A slow provider and a backlog in one statement: work is in flight when SIGTERM arrives.
    app.expo.set_latency(Duration::from_millis(200));
    notify_times(&app, "max", 1000).await;
    // SIGTERM once the first of the backlog came back (so the next are in flight, 200 ms each),
    // before it is all done.
    eventually(Duration::from_secs(10), || async { (app.expo.sent_count() > 1).then_some(()) }).await;
    let open = "SELECT count(*) FROM notification WHERE status IN ('pending', 'queued', 'retrying')";
    assert!(app.count(open).await > 0, "work is left when SIGTERM is sent");
    relay.signal("-TERM");

    let started = Instant::now();
    let status = relay.exited(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0));
    assert!(started.elapsed() < Duration::from_secs(8), "exited within grace + a little");
    // Nothing the service took is stuck half-done: what it acknowledged is stored, and what it
    // sent has its outcome stored.
    let pending = app.pending_entries().await;
    let queued = app.count("SELECT count(*) FROM delivery WHERE status = 'queued'").await;
    assert!(pending <= queued, "every pending entry is still queued in Postgres ({pending} > {queued})");
    let delivered = app.count("SELECT count(*) FROM delivery WHERE status = 'delivered'").await;
    assert_eq!(delivered as usize, app.expo.sent_count(), "every send that went out in grace was stored");
}
