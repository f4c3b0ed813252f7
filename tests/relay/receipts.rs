//! Expo receipts: fetched after `receipt_delay_ms`, acted upon, forgotten.

use crate::helpers::{eventually, spawn_app};
use serde_json::json;
use std::time::Duration;

async fn receipts_waiting(app: &crate::helpers::TestApp) -> i64 {
    let mut conn = app.redis.clone();
    redis::cmd("ZCARD").arg(app.keys.receipts(0)).query_async(&mut conn).await.unwrap()
}

#[actix_web::test]
async fn a_receipt_saying_device_not_registered_disables_the_device() {
    let app = spawn_app().await;
    let device = app.add_device("uma", "expo", "ExponentPushToken[receiptgone-uma]").await;

    let id = app.notify("uma", json!({"title": "accepted, then refused by APNs"})).await;

    assert_eq!(app.final_status(id).await.0, "delivered", "the ticket was ok");
    let reason: String = eventually(Duration::from_secs(10), || async {
        let row = app.db.query_one("SELECT disabled_reason FROM device WHERE id = $1", &[&device]).await.unwrap();
        row.get::<_, Option<String>>(0)
    })
    .await;
    assert!(reason.starts_with("receipt: expo: DeviceNotRegistered"), "{reason}");
    let last_error: Option<String> =
        app.db.query_one("SELECT last_error FROM delivery WHERE notification_id = $1", &[&id]).await.unwrap().get(0);
    assert!(last_error.unwrap().starts_with("receipt: "));
    eventually(Duration::from_secs(5), || async { (receipts_waiting(&app).await == 0).then_some(()) }).await;
    app.cleanup().await;
}

#[actix_web::test]
async fn ok_receipts_are_fetched_in_few_calls_and_forgotten() {
    let app = spawn_app().await;
    app.db
        .execute(
            "INSERT INTO device (user_id, provider, token)
             SELECT 'v' || g, 'expo', 'ExponentPushToken[v' || g || ']' FROM generate_series(1, 150) g",
            &[],
        )
        .await
        .unwrap();
    app.db
        .execute("INSERT INTO notification (user_id, type) SELECT 'v' || g, 't' FROM generate_series(1, 150) g", &[])
        .await
        .unwrap();

    app.all_final(Duration::from_secs(20)).await;
    eventually(Duration::from_secs(10), || async {
        (app.expo.receipt_requests() > 0 && receipts_waiting(&app).await == 0).then_some(())
    })
    .await;
    assert!(app.expo.receipt_requests() <= 20, "{} calls for 150 receipts", app.expo.receipt_requests());
    assert_eq!(app.count("SELECT count(*) FROM device WHERE disabled_at IS NOT NULL").await, 0);
    app.cleanup().await;
}
