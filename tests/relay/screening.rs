//! What the relay does with an entry whose target is not what Redis remembers: Postgres is asked
//! before every send (a first attempt too), so work that is finished, withdrawn or orphaned is
//! never sent, and what only Redis knew is written back to Postgres.

use crate::helpers::{eventually, expo_job, prepare, prepare_with, TestApp};
use notify_relay::startup::ProcessRoles;
use serde_json::json;
use std::time::Duration;
use uuid::Uuid;

/// Waits until every entry written to shard 0 was read and acknowledged.
async fn drained(app: &TestApp) {
    eventually(Duration::from_secs(20), || async {
        (app.stream_len().await == 0 && app.pending_entries().await == 0).then_some(())
    })
    .await;
}

/// A first attempt (attempt 0, not re-enqueued) for `user`'s queued target, in the stream.
async fn first_attempt(app: &TestApp, user: &str) -> (Uuid, Uuid, String) {
    let token = format!("ExponentPushToken[{user}]");
    let (id, device) = app.queued_target(user, &token, &json!({}), 0).await;
    app.enqueue(&expo_job(id, device, user, &token, json!({"title": "hi"}))).await;
    (id, device, token)
}

#[actix_web::test]
async fn a_first_attempt_postgres_has_as_delivered_is_not_sent_again_without_its_key() {
    // A Redis restored from a snapshot hands out entries whose outcome Postgres stored since,
    // and has lost their idempotency keys.
    let mut app = prepare().await;
    let (id, device, token) = first_attempt(&app, "ann").await;
    app.exec("UPDATE delivery SET status = 'delivered', delivered_at = now() WHERE notification_id = $1", &[&id]).await;
    app.exec("UPDATE notification SET status = 'delivered' WHERE id = $1", &[&id]).await;
    app.start().await;

    drained(&app).await;
    assert_eq!(app.expo.sends_of(id, &token), 0, "Postgres said delivered");
    assert_eq!(app.redis_counter("DUPLICATE_SKIPPED").await, 1);
    let _ = device;
}

#[actix_web::test]
async fn a_target_only_its_idempotency_key_knows_as_delivered_is_marked_delivered_in_postgres() {
    // The outcome reached Redis but Postgres lost it (a failover to a replica behind it).
    let mut app = prepare().await;
    let (id, device, token) = first_attempt(&app, "bo").await;
    let mut conn = app.redis.clone();
    let _: () = redis::cmd("SET").arg(app.keys.delivered(id, device)).arg("1").query_async(&mut conn).await.unwrap();
    app.start().await;

    let (status, _, _) = app.final_status(id).await;
    assert_eq!(status, "delivered", "repaired from the key");
    let row: String = app.one("SELECT status FROM delivery WHERE notification_id = $1", &[&id]).await;
    assert_eq!(row, "delivered");
    drained(&app).await;
    assert_eq!(app.expo.sends_of(id, &token), 0);
}

#[actix_web::test]
async fn queued_work_for_a_device_removed_or_given_to_another_user_is_not_sent() {
    let mut app = prepare().await;
    let (removed, removed_device, removed_token) = first_attempt(&app, "cy").await;
    let (moved, moved_device, moved_token) = first_attempt(&app, "di").await;
    let (kept, _, kept_token) = first_attempt(&app, "ed").await;
    app.exec("UPDATE device SET disabled_at = now() WHERE id = $1", &[&removed_device]).await;
    // The phone changed hands: the new owner registered the same token.
    app.exec("UPDATE device SET user_id = 'new-owner' WHERE id = $1", &[&moved_device]).await;
    app.start().await;

    let (status, _, error) = app.final_status(removed).await;
    assert_eq!(status, "failed");
    assert_eq!(error.as_deref(), Some("not sent: the device was removed or disabled before the send"));
    let (status, _, error) = app.final_status(moved).await;
    assert_eq!(status, "failed");
    assert_eq!(error.as_deref(), Some("not sent: the device was given to another user before the send"));
    assert_eq!(app.final_status(kept).await.0, "delivered");
    drained(&app).await;
    assert_eq!(app.expo.sends_of(removed, &removed_token), 0);
    assert_eq!(app.expo.sends_of(moved, &moved_token), 0, "the new owner gets nothing of the old owner's");
    assert_eq!(app.expo.sends_of(kept, &kept_token), 1);
    assert_eq!(app.redis_counter("TARGET_WITHDRAWN").await, 2);
}

#[actix_web::test]
async fn deleting_the_devices_of_a_notification_in_flight_settles_it() {
    let app = prepare().await;
    let (lost, device) = app.queued_target("fay", "ExponentPushToken[fay]", &json!({}), 0).await;
    // A second notification with one target delivered and one still queued on another device.
    let (half, first) = app.queued_target("gus", "ExponentPushToken[gus-1]", &json!({}), 0).await;
    let second = app.add_device("gus", "expo", "ExponentPushToken[gus-2]").await;
    app.exec("UPDATE delivery SET status = 'failed', last_error = 'boom' WHERE device_id = $1", &[&first]).await;
    app.exec("INSERT INTO delivery (notification_id, device_id, provider) VALUES ($1, $2, 'expo')", &[&half, &second])
        .await;

    // Erasing users: their devices go, and their delivery rows with them (ON DELETE CASCADE).
    app.exec("DELETE FROM device WHERE id = ANY($1)", &[&vec![device, second]]).await;

    let (status, _, error) = app.status(lost).await;
    assert_eq!(status, "failed");
    assert_eq!(error.as_deref(), Some("not delivered: every target was deleted with its device"));
    let (status, _, error) = app.status(half).await;
    assert_eq!((status.as_str(), error.as_deref()), ("failed", Some("boom")), "settled by what is left");
    let failures = app.failed_rows().await;
    assert_eq!(failures, 2, "one notification_failed row each");
}

async fn age_by_40_days(app: &TestApp, id: Uuid) {
    app.exec("UPDATE notification SET created_at = now() - interval '40 days' WHERE id = $1", &[&id]).await;
}

#[actix_web::test]
async fn retention_keeps_a_delivered_notification_while_another_of_its_targets_is_in_flight() {
    let mut app = prepare_with(|s| s.retention.interval = Duration::from_millis(100)).await;
    // Delivered to one device, still retrying on the other.
    let (busy, first) = app.queued_target("hal", "ExponentPushToken[hal-1]", &json!({}), 0).await;
    let second = app.add_device("hal", "expo", "ExponentPushToken[hal-2]").await;
    app.exec("UPDATE delivery SET status = 'delivered' WHERE device_id = $1", &[&first]).await;
    app.exec(
        "INSERT INTO delivery (notification_id, device_id, provider, status, next_attempt_at)
             VALUES ($1, $2, 'expo', 'retrying', now() + interval '1 hour')",
        &[&busy, &second],
    )
    .await;
    app.exec("UPDATE notification SET status = 'delivered' WHERE id = $1", &[&busy]).await;
    age_by_40_days(&app, busy).await;
    // The control: old, delivered, nothing in flight.
    let (done, _) = app.queued_target("ivy", "ExponentPushToken[ivy]", &json!({}), 0).await;
    app.exec("UPDATE delivery SET status = 'delivered' WHERE notification_id = $1", &[&done]).await;
    app.exec("UPDATE notification SET status = 'delivered' WHERE id = $1", &[&done]).await;
    age_by_40_days(&app, done).await;
    app.start_with(ProcessRoles::parse("scheduler").unwrap()).await;

    eventually(Duration::from_secs(10), || async {
        (app.count(&format!("SELECT count(*) FROM notification WHERE id = '{done}'")).await == 0).then_some(())
    })
    .await;
    assert_eq!(app.count(&format!("SELECT count(*) FROM notification WHERE id = '{busy}'")).await, 1);
    assert_eq!(app.count(&format!("SELECT count(*) FROM delivery WHERE notification_id = '{busy}'")).await, 2);
}

#[actix_web::test]
async fn the_sweep_leaves_a_backlog_nobody_has_read_yet_and_requeues_only_what_redis_lost() {
    let mut app = prepare_with(|s| {
        s.claim.min_idle = Duration::from_millis(2100);
        s.listener.stale_after = Duration::from_millis(2500);
        s.listener.sweep_interval = Duration::from_millis(200);
    })
    .await;
    for i in 0..20 {
        app.add_device(&format!("u{i}"), "expo", &format!("ExponentPushToken[u{i}]")).await;
    }
    // Fan-out only: the backlog waits, unread, for workers that are not there.
    app.start_with(ProcessRoles::parse("listener").unwrap()).await;
    app.exec(
        "INSERT INTO notification (user_id, type, payload)
             SELECT 'u' || g, 't', '{}' FROM generate_series(0, 19) g",
        &[],
    )
    .await;
    eventually(Duration::from_secs(10), || async { (app.stream_len().await == 20).then_some(()) }).await;

    // Twenty sweeps later — 4 s, past the 2.5 s lease: still one entry per target.
    let sweeps = || {
        let registry = app.app.as_ref().expect("running").engine.registry().snapshot();
        registry.iter().find(|a| a.name == "listener").map_or(0, |a| a.handled)
    };
    let before = sweeps();
    eventually(Duration::from_secs(20), || async { (sweeps() >= before + 20).then_some(()) }).await;
    assert_eq!(app.stream_len().await, 20, "the sweep copied a backlog that was still there");

    // Now Redis loses them: the sweep puts each back, once.
    let mut conn = app.redis.clone();
    let _: i64 = redis::cmd("XTRIM").arg(app.keys.stream(0)).arg("MAXLEN").arg(0).query_async(&mut conn).await.unwrap();
    eventually(Duration::from_secs(15), || async { (app.stream_len().await == 20).then_some(()) }).await;
}
