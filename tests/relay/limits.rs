//! Shared rate limits: a limited delivery waits, is never dropped, and spends no attempt.

use crate::helpers::{add_users, notify_each_user, notify_times, samples_holding, spawn_app_with};
use std::time::Duration;

#[actix_web::test]
async fn the_provider_rate_limit_defers_without_spending_attempts() {
    let app = spawn_app_with(|s| {
        s.providers.expo.rate_per_sec = 100;
        s.retry.max_attempts = 1;
    })
    .await;
    add_users(&app, 300).await;
    notify_each_user(&app, 300).await;

    app.all_final(Duration::from_secs(30)).await;
    // With one attempt allowed, a limit that spent attempts would have failed most of them.
    assert_eq!(app.delivered().await, 300);
    assert_eq!(app.count("SELECT max(attempt_count)::int8 FROM delivery").await, 1);
    assert!(app.redis_counter("DEFERRED").await > 0, "the burst of 300 exceeded 100/s");
    assert_eq!(app.expo.sent_count(), 300);
}

#[actix_web::test]
async fn the_per_device_limit_spreads_a_burst_to_one_device() {
    let app = spawn_app_with(|s| s.providers.expo.device_rate_per_sec = 5).await;
    app.add_device("yan", "expo", "ExponentPushToken[yan]").await;
    app.add_device("zoe", "expo", "ExponentPushToken[zoe]").await;

    notify_times(&app, "yan", 12).await;
    let other = app.notify("zoe", serde_json::json!({})).await;

    app.all_final(Duration::from_secs(30)).await;
    assert_eq!(app.delivered().await, 13);
    assert_eq!(app.count("SELECT max(attempt_count)::int8 FROM delivery").await, 1);
    assert!(app.redis_counter("DEFERRED").await > 0, "12 at once exceed 5/s for one device");
    let (_, attempts, _) = app.status(other).await;
    assert_eq!(attempts, 1, "another device is not held back");
}

/// An idle shard's reader waits for entries holding no in-flight permits, so busy shards are
/// never starved of them, however many shards there are (with 4 shards and 1 permit, an idle
/// reader holding it through its 1 s BLOCK left the others waiting).
#[actix_web::test]
async fn idle_readers_hold_no_permits_and_one_permit_serves_every_shard() {
    let app = spawn_app_with(|s| {
        s.redis.shards = 4;
        s.worker.concurrency = 1;
    })
    .await;
    app.add_device("sam", "expo", "ExponentPushToken[sam]").await;

    // Idle: sampled 50 times, the permit is mostly free. A reader that held it through its 1 s
    // BLOCK would show in every sample; the short non-blocking reads between BLOCKs show in a
    // few, more of them on a loaded machine.
    let engine = &app.app.as_ref().expect("running").engine;
    let held = samples_holding(50, Duration::from_millis(20), || engine.in_flight(), |n| *n > 0).await;
    assert!(held < 25, "idle readers held the permit in {held} of 50 samples");

    notify_times(&app, "sam", 40).await;
    app.all_final(Duration::from_secs(30)).await;
    assert_eq!(app.delivered().await, 40);
    assert_eq!(
        app.count(
            "SELECT count(DISTINCT shard) FROM (SELECT get_byte(uuid_send(id), 15) % 4 AS shard FROM notification) s"
        )
        .await,
        4
    );
}
