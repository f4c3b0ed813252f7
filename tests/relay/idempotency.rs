//! A redelivered entry is acknowledged without a second send.

use crate::helpers::{eventually, spawn_app};
use serde_json::json;
use std::time::Duration;

#[actix_web::test]
async fn the_same_entry_delivered_twice_is_sent_once() {
    let app = spawn_app().await;
    let id = app.delivered_first("kim", json!({"title": "once"})).await;

    // Write the very same job to the stream again, as a redelivery would.
    let row = app.row("SELECT d.device_id, dev.token FROM delivery d JOIN device dev ON dev.id = d.device_id WHERE d.notification_id = $1",
            &[&id]).await;
    let job = crate::helpers::expo_job(id, row.get(0), "kim", row.get(1), json!({"title": "once"}));
    app.enqueue(&job).await;

    eventually(Duration::from_secs(10), || async { (app.redis_counter("DUPLICATE_SKIPPED").await == 1).then_some(()) })
        .await;
    assert_eq!(app.expo.sends_of(id, "ExponentPushToken[kim]"), 1);
    // The duplicate is acknowledged right after it is counted: wait for the ack.
    eventually(Duration::from_secs(10), || async { (app.pending_entries().await == 0).then_some(()) }).await;
}

#[actix_web::test]
async fn a_delivered_target_gets_an_idempotency_key_that_outlives_two_sweep_leases() {
    let app = spawn_app().await;
    let device = app.add_device("lee", "expo", "ExponentPushToken[lee]").await;
    let id = app.notify("lee", json!({})).await;
    assert_eq!(app.final_status(id).await.0, "delivered");

    let mut conn = app.redis.clone();
    let ttl: i64 = eventually(Duration::from_secs(5), || {
        let mut conn = conn.clone();
        let key = app.keys.delivered(id, device);
        async move {
            let ttl: i64 = redis::cmd("TTL").arg(key).query_async(&mut conn).await.unwrap();
            (ttl > 0).then_some(ttl)
        }
    })
    .await;
    // Postgres is checked before every send; the key only covers an outcome Postgres lost, until
    // the sweep finds the target again: an hour, or two leases of listener.stale_after_ms.
    assert!(ttl > 3600 - 60 && ttl <= 3600, "{ttl}");
    let _: () = redis::cmd("PING").query_async(&mut conn).await.unwrap();
}
