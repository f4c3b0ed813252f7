//! A redelivered entry is acknowledged without a second send.

use crate::helpers::{eventually, expo_job, prepare, spawn_app, TestApp};
use notify_relay_engine::job::EntryRef;
use notify_relay_engine::parts::{Claim, InFlight};
use serde_json::json;
use std::time::Duration;
use uuid::Uuid;

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

/// A started app with `user`'s queued target held in its in-flight set, as if a copy read from
/// entry `1-0` were being sent: the app, the set, the target, its token and that entry.
async fn held_in_flight(user: &str) -> (TestApp, InFlight, (Uuid, Uuid), String, EntryRef) {
    let mut app = prepare().await;
    let token = format!("ExponentPushToken[{user}]");
    let target = app.queued_target(user, &token, &json!({}), 0).await;
    app.start().await;
    let inflight = app.app.as_ref().expect("running").engine.inflight().clone();
    let earlier = EntryRef { shard: 0, id: "1-0".into() };
    assert_eq!(inflight.claim_target(target, &earlier), Claim::Claimed);
    (app, inflight, target, token, earlier)
}

#[actix_web::test]
async fn a_copy_read_while_the_previous_attempt_is_being_stored_is_put_back_not_dropped() {
    // The retry an outcome schedules can be moved back to the stream and read before the outcome
    // writer has finished its batch (its other shards' writes, a thread the machine is slow to
    // run): the target is still in flight here, its outcome being recorded. That copy is the
    // target's only way on; dropping it as a twin left the row `retrying` until the sweep.
    let (app, inflight, (id, device), token, earlier) = held_in_flight("mo").await;
    let token = token.as_str();
    inflight.recording(std::iter::once(((id, device), &earlier)));
    let mut retry = expo_job(id, device, "mo", token, json!({"title": "again"}));
    retry.attempt = 1;
    app.enqueue(&retry).await;

    // Put back for as long as the earlier attempt is being stored: neither sent nor dropped.
    eventually(Duration::from_secs(10), || async { (app.redis_counter("DEFERRED").await >= 2).then_some(()) }).await;
    assert_eq!(app.expo.sends_of(id, token), 0);
    assert_eq!(app.redis_counter("DUPLICATE_SKIPPED").await, 0);
    let (status, attempts): (String, i32) = {
        let row = app.row("SELECT status, attempt_count FROM delivery WHERE notification_id = $1", &[&id]).await;
        (row.get(0), row.get(1))
    };
    assert_eq!((status.as_str(), attempts), ("queued", 0), "putting back stores nothing");

    // Stored: the copy goes on.
    inflight.release_targets(std::iter::once(((id, device), &earlier)));
    assert_eq!(app.final_status(id).await.0, "delivered");
    assert_eq!(app.expo.sends_of(id, token), 1);
}

#[actix_web::test]
async fn a_twin_read_while_its_target_is_being_sent_is_dropped() {
    // A reclaimed entry and its re-enqueued copy: the send in flight carries the target on.
    let (app, _inflight, (id, device), token, _) = held_in_flight("ny").await;
    let token = token.as_str();
    app.enqueue(&expo_job(id, device, "ny", token, json!({"title": "twin"}))).await;

    eventually(Duration::from_secs(10), || async { (app.redis_counter("DUPLICATE_SKIPPED").await == 1).then_some(()) })
        .await;
    eventually(Duration::from_secs(10), || async { (app.pending_entries().await == 0).then_some(()) }).await;
    assert_eq!(app.stream_len().await, 0, "acknowledged and deleted, not put back");
    assert_eq!(app.redis_counter("DEFERRED").await, 0);
    assert_eq!(app.expo.sends_of(id, token), 0);
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
