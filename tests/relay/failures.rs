//! What goes wrong is failed or retried with a clear reason, and the rest keeps flowing.

use crate::helpers::spawn_app;
use serde_json::json;

#[actix_web::test]
async fn a_user_without_devices_is_failed_with_one_notification_failed_row() {
    let app = spawn_app().await;

    let id = app.notify("nobody", json!({"title": "lost?"})).await;

    let (status, _, error) = app.final_status(id).await;
    assert_eq!(status, "failed");
    assert_eq!(error.as_deref(), Some("user nobody has no active device"));
    let row =
        app.row("SELECT user_id, error, payload FROM notification_failed WHERE notification_id = $1", &[&id]).await;
    assert_eq!(row.get::<_, String>(0), "nobody");
    assert_eq!(row.get::<_, String>(1), "user nobody has no active device");
    assert_eq!(row.get::<_, serde_json::Value>(2), json!({"title": "lost?"}));
    assert_eq!(app.failed_rows().await, 1);
}

#[actix_web::test]
async fn device_not_registered_disables_the_device_and_the_other_device_still_gets_it() {
    let app = spawn_app().await;
    let dead = app.add_device("erin", "expo", "ExponentPushToken[unregistered-erin]").await;
    app.add_device("erin", "expo", "ExponentPushToken[erin-live]").await;

    let id = app.notify("erin", json!({"title": "hi"})).await;

    app.dead_device_error(id, dead, "DeviceNotRegistered").await;
    app.wait_for_dead_letters(1).await; // one dead letter for the dead token

    // A disabled device is not targeted again.
    let next = app.notify("erin", json!({"title": "again"})).await;
    assert_eq!(app.final_status(next).await.0, "delivered");
    assert_eq!(app.expo.sends_of(next, "ExponentPushToken[unregistered-erin]"), 0);
}

#[actix_web::test]
async fn retryable_errors_are_retried_with_backoff_until_delivered() {
    let app = spawn_app().await;
    app.add_device("fred", "expo", "ExponentPushToken[fred]").await;
    app.expo.fail_next(503, None, 2);

    let id = app.notify("fred", json!({"title": "eventually"})).await;

    let (status, attempts, error) = app.final_status(id).await;
    assert_eq!(status, "delivered");
    assert_eq!(attempts, 3, "two 503s then success");
    assert!(error.unwrap_or_default().contains("HTTP 503"));
    assert_eq!(app.expo.sent_count(), 1);
    assert_eq!(app.redis_counter("RETRY_SCHEDULED").await, 2);
}

#[actix_web::test]
async fn retries_stop_at_max_attempts_and_the_notification_fails() {
    let app = crate::helpers::spawn_app_with(|s| s.retry.max_attempts = 3).await;
    app.add_device("gina", "expo", "ExponentPushToken[gina-ratelimited]").await;

    let id = app.notify("gina", json!({"title": "never"})).await;

    let (status, attempts, error) = app.final_status(id).await;
    assert_eq!((status.as_str(), attempts), ("failed", 3));
    assert!(error.unwrap().starts_with("gave up after 3 attempts: expo: MessageRateExceeded"));
    assert_eq!(app.failed_rows().await, 1);
}

#[actix_web::test]
async fn malformed_rows_fail_with_a_precise_error_and_the_rest_keeps_flowing() {
    let app = spawn_app().await;
    app.add_device("hank", "expo", "ExponentPushToken[hank]").await;

    let cases = [
        (
            "INSERT INTO notification (user_id, type, payload) VALUES ('hank', 't', '\"text\"') RETURNING id",
            "payload must be a JSON object, got a string",
        ),
        (
            "INSERT INTO notification (user_id, type, payload) VALUES ('hank', 't', '{\"title\": 7}') RETURNING id",
            "payload.title must be a string, got 7",
        ),
        (
            "INSERT INTO notification (user_id, type, channel) VALUES ('hank', 't', 'sms') RETURNING id",
            "channel: unknown provider `sms` (expected one of expo, fcm, apns, email)",
        ),
        (
            "INSERT INTO notification (user_id, type, priority) VALUES ('hank', 't', 'urgent') RETURNING id",
            "priority: must be 'normal' or 'high', got 'urgent'",
        ),
    ];
    let mut bad = Vec::new();
    for (sql, _) in cases {
        bad.push(app.db.query_one(sql, &[]).await.unwrap().get::<_, uuid::Uuid>(0));
    }
    let good = app.notify("hank", json!({"title": "fine"})).await;

    for (id, (_, expected)) in bad.into_iter().zip(cases) {
        let (status, _, error) = app.final_status(id).await;
        assert_eq!((status.as_str(), error.as_deref()), ("failed", Some(expected)));
    }
    assert_eq!(app.final_status(good).await.0, "delivered");
    assert_eq!(app.failed_rows().await, 4);
}

#[actix_web::test]
async fn a_payload_over_expos_limit_fails_permanently_and_is_dead_lettered() {
    let app = spawn_app().await;
    app.add_device("ivy", "expo", "ExponentPushToken[ivy]").await;

    let id = app.notify("ivy", json!({"title": "big", "body": "x".repeat(5000)})).await;
    let small = app.notify("ivy", json!({"title": "small"})).await;

    let (status, attempts, error) = app.final_status(id).await;
    assert_eq!((status.as_str(), attempts), ("failed", 1));
    let error = error.unwrap();
    assert!(error.starts_with("expo: payload too large: ") && error.ends_with(" bytes (limit 4096)"), "{error}");
    assert_eq!(app.final_status(small).await.0, "delivered");
    assert_eq!(app.expo.requests(), 1, "the big one was refused before sending");
    assert_eq!(app.failed_rows().await, 1);
    app.wait_for_dead_letters(1).await;
}

#[actix_web::test]
async fn garbage_in_the_stream_is_dead_lettered_without_stalling_delivery() {
    let app = spawn_app().await;
    app.add_device("jo", "expo", "ExponentPushToken[jo]").await;
    let mut conn = app.redis.clone();
    let stream = app.keys.stream(0);
    let _: String =
        redis::cmd("XADD").arg(&stream).arg("*").arg("job").arg("{not json").query_async(&mut conn).await.unwrap();
    let _: String =
        redis::cmd("XADD").arg(&stream).arg("*").arg("other").arg("x").query_async(&mut conn).await.unwrap();

    let id = app.notify("jo", json!({"title": "still works"})).await;

    assert_eq!(app.final_status(id).await.0, "delivered");
    app.wait_for_dead_letters(2).await;
    let mut conn = app.redis.clone();
    let entries: Vec<(String, Vec<(String, String)>)> =
        redis::cmd("XRANGE").arg(app.keys.dlq(0)).arg("-").arg("+").query_async(&mut conn).await.unwrap();
    let reasons: Vec<String> = entries
        .iter()
        .map(|(_, fields)| fields.iter().find(|(k, _)| k == "error").map(|(_, v)| v.clone()).unwrap_or_default())
        .collect();
    assert!(reasons[0].starts_with("malformed job:"), "{reasons:?}");
    assert_eq!(reasons[1], "entry has no `job` field");
    // Both were acknowledged and deleted: nothing is left pending.
    let len: i64 = redis::cmd("XLEN").arg(&stream).query_async(&mut conn).await.unwrap();
    assert_eq!(len, 0);
}
