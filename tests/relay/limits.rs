//! Shared rate limits: a limited delivery waits, is never dropped, and spends no attempt.

use crate::helpers::prepare;
use std::time::Duration;

#[actix_web::test]
async fn the_provider_rate_limit_defers_without_spending_attempts() {
    let mut app = prepare().await;
    app.env.insert("NOTIFY__PROVIDERS__EXPO__RATE_PER_SEC".into(), "100".into());
    app.env.insert("NOTIFY__RETRY__MAX_ATTEMPTS".into(), "1".into());
    app.start().await;
    app.db
        .execute(
            "INSERT INTO device (user_id, provider, token)
             SELECT 'x' || g, 'expo', 'ExponentPushToken[x' || g || ']' FROM generate_series(1, 300) g",
            &[],
        )
        .await
        .unwrap();

    app.db
        .execute("INSERT INTO notification (user_id, type) SELECT 'x' || g, 't' FROM generate_series(1, 300) g", &[])
        .await
        .unwrap();

    app.all_final(Duration::from_secs(30)).await;
    // With one attempt allowed, a limit that spent attempts would have failed most of them.
    assert_eq!(app.count("SELECT count(*) FROM notification WHERE status = 'delivered'").await, 300);
    assert_eq!(app.count("SELECT max(attempt_count)::int8 FROM delivery").await, 1);
    assert!(app.redis_counter("DEFERRED").await > 0, "the burst of 300 exceeded 100/s");
    assert_eq!(app.expo.sent_count(), 300);
    app.cleanup().await;
}

#[actix_web::test]
async fn the_per_device_limit_spreads_a_burst_to_one_device() {
    let mut app = prepare().await;
    app.env.insert("NOTIFY__PROVIDERS__EXPO__DEVICE_RATE_PER_SEC".into(), "5".into());
    app.start().await;
    app.add_device("yan", "expo", "ExponentPushToken[yan]").await;
    app.add_device("zoe", "expo", "ExponentPushToken[zoe]").await;

    app.db
        .execute("INSERT INTO notification (user_id, type) SELECT 'yan', 't' FROM generate_series(1, 12)", &[])
        .await
        .unwrap();
    let other = app.notify("zoe", serde_json::json!({})).await;

    app.all_final(Duration::from_secs(30)).await;
    assert_eq!(app.count("SELECT count(*) FROM notification WHERE status = 'delivered'").await, 13);
    assert_eq!(app.count("SELECT max(attempt_count)::int8 FROM delivery").await, 1);
    assert!(app.redis_counter("DEFERRED").await > 0, "12 at once exceed 5/s for one device");
    let (_, attempts, _) = app.status(other).await;
    assert_eq!(attempts, 1, "another device is not held back");
    app.cleanup().await;
}
