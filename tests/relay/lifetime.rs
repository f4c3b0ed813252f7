//! Expiry and collapse keys end to end (issue 12, item 3): a notification inserted with
//! `expires_at` and `collapse_key` reaches each provider's emulator with what is left of its
//! lifetime and its key, in that provider's fields. The mappings and their rounding, on a clock
//! the test holds still, are `tests/providers/`.

use crate::helpers::{prepare, spawn_app_enabling, TestApp};
use emulators::apns::{device_token, ApnsEmulator, Rules};
use emulators::fcm::FcmEmulator;
use serde_json::json;
use uuid::Uuid;

/// A notification for `user` that expires in an hour, with collapse key `score`; returns its id
/// and its `expires_at` in whole Unix seconds, read as the relay reads it (to the millisecond).
async fn notify_expiring(app: &TestApp, user: &str) -> (Uuid, u64) {
    let row = app
        .row(
            "INSERT INTO notification (user_id, type, payload, expires_at, collapse_key)
             VALUES ($1, 'test', $2, now() + interval '1 hour', 'score')
             RETURNING id, (extract(epoch FROM expires_at) * 1000)::int8 / 1000",
            &[&user, &json!({"title": "Goal", "body": "2-1"})],
        )
        .await;
    (row.get(0), row.get::<_, i64>(1) as u64)
}

/// A ttl of an hour less what the trip through the relay took (well under a minute here), never
/// more than the hour.
fn about_an_hour(ttl: u64) -> bool {
    (3540..=3600).contains(&ttl)
}

#[actix_web::test]
async fn lifetime_an_expiring_notification_reaches_expo_with_its_ttl_and_expiration_and_no_collapse_key() {
    let mut app = prepare().await;
    app.start().await;
    app.add_device("eve", "expo", "ExponentPushToken[eve]").await;

    let (id, expires_secs) = notify_expiring(&app, "eve").await;

    assert_eq!(app.final_status(id).await.0, "delivered");
    let sent = app.expo.sent();
    let m = sent.iter().find(|m| m.notification_id() == Some(id.to_string().as_str())).expect("sent to expo");
    assert!(m.ttl.is_some_and(about_an_hour), "ttl {:?}", m.ttl);
    assert_eq!(m.expiration, Some(expires_secs));
    assert_eq!(m.collapse_id, None, "Expo has no collapse field");
    app.cleanup().await;
}

#[actix_web::test]
async fn lifetime_an_expiring_notification_reaches_fcm_with_android_ttl_collapse_key_and_apns_headers() {
    let fcm = FcmEmulator::start("127.0.0.1:0").await.expect("fcm emulator");
    let app = spawn_app_enabling(|app| app.enable_fcm(&fcm)).await;
    app.add_device("fay", "fcm", "fay-phone").await;

    let (id, expires_secs) = notify_expiring(&app, "fay").await;

    assert_eq!(app.final_status(id).await.0, "delivered");
    let sent = fcm.sent();
    let s = sent.iter().find(|s| s.notification_id() == Some(id.to_string().as_str())).expect("sent to fcm");
    let ttl = s.android_ttl().and_then(|t| t.strip_suffix('s')).and_then(|t| t.parse().ok());
    assert!(ttl.is_some_and(about_an_hour), "android.ttl {:?}", s.android_ttl());
    assert_eq!(s.collapse_key(), Some("score"));
    assert_eq!(s.apns_expiration(), Some(expires_secs.to_string().as_str()));
    assert_eq!(s.apns_collapse_id(), Some("score"));
    app.cleanup().await;
    fcm.stop().await;
}

#[actix_web::test]
async fn lifetime_an_expiring_notification_reaches_apns_with_apns_expiration_and_apns_collapse_id() {
    let apns = ApnsEmulator::start("127.0.0.1:0", Rules::default()).await.expect("apns emulator");
    let app = spawn_app_enabling(|app| app.enable_apns(&apns, apns.team_id())).await;
    app.add_device("gus", "apns", &device_token(12)).await;

    let (id, expires_secs) = notify_expiring(&app, "gus").await;

    assert_eq!(app.final_status(id).await.0, "delivered");
    let sent = apns.sent();
    let s = sent.iter().find(|s| s.notification_id() == Some(id.to_string().as_str())).expect("sent to apns");
    assert_eq!(s.expiration.as_deref(), Some(expires_secs.to_string().as_str()));
    assert_eq!(s.collapse_id.as_deref(), Some("score"));
    app.cleanup().await;
    apns.stop().await;
}
