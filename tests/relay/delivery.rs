//! The happy paths: rows in, pushes out.

use crate::helpers::{
    add_users, assert_refused_credentials_defer, eventually, insert_bulk, prepare, spawn_app, OtherProviders, TestApp,
};
use notify_relay::configuration::Secret;
use serde_json::json;
use std::collections::HashMap;
use std::time::Duration;
use uuid::Uuid;

#[actix_web::test]
async fn bulk_inserted_rows_are_each_delivered_exactly_once() {
    let app = spawn_app().await;
    add_users(&app, 30).await;

    insert_bulk(&app, 600, 30).await;

    eventually(Duration::from_secs(30), || async { (app.delivered().await == 600).then_some(()) }).await;
    let sent = app.expo.sent();
    assert_eq!(sent.len(), 600);
    let mut per_notification: HashMap<String, usize> = HashMap::new();
    for m in &sent {
        *per_notification.entry(m.notification_id().unwrap().to_string()).or_default() += 1;
    }
    assert_eq!(per_notification.len(), 600);
    assert!(per_notification.values().all(|&n| n == 1));
    // Expo takes up to 100 messages per request: 600 messages need far fewer than 600 requests.
    assert!(app.expo.requests() <= 60, "{} requests", app.expo.requests());
    assert_eq!(
        app.count("SELECT count(*) FROM delivery WHERE status = 'delivered' AND provider_message_id IS NOT NULL").await,
        600
    );
}

#[actix_web::test]
async fn a_single_insert_reaches_the_device_with_title_body_and_notification_id() {
    let app = spawn_app().await;
    app.add_device("alice", "expo", "ExponentPushToken[alice]").await;

    let id = app
        .notify("alice", json!({"title": "Shipped", "body": "Your order is on its way", "data": {"order": 42}}))
        .await;

    let (status, attempts, error) = app.final_status(id).await;
    assert_eq!((status.as_str(), attempts, error), ("delivered", 1, None));
    let sent = app.expo.sent();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].to, "ExponentPushToken[alice]");
    assert_eq!(sent[0].title.as_deref(), Some("Shipped"));
    assert_eq!(sent[0].body.as_deref(), Some("Your order is on its way"));
    assert_eq!(sent[0].data, json!({"order": 42, "notification_id": id.to_string()}));
    assert_eq!(sent[0].priority.as_deref(), Some("default"));
    let delivered_at_set =
        app.count(&format!("SELECT count(*) FROM notification WHERE id = '{id}' AND delivered_at IS NOT NULL")).await;
    assert_eq!(delivered_at_set, 1);
    let used = app.count("SELECT count(*) FROM device WHERE last_used_at IS NOT NULL").await;
    assert_eq!(used, 1);
}

#[actix_web::test]
async fn rows_inserted_while_the_service_was_stopped_are_delivered_after_it_starts() {
    let mut app = prepare().await;
    app.add_device("bob", "expo", "ExponentPushToken[bob]").await;
    let ids: Vec<Uuid> =
        futures_util::future::join_all((0..5).map(|i| app.notify("bob", json!({"title": format!("missed {i}")}))))
            .await;

    app.start().await;

    for id in ids {
        assert_eq!(app.final_status(id).await.0, "delivered");
    }
    assert_eq!(app.expo.sent_count(), 5);
}

#[actix_web::test]
async fn a_user_with_several_devices_gets_one_send_per_device() {
    let app = spawn_app().await;
    let tokens = ["ExponentPushToken[phone]", "ExponentPushToken[tablet]", "ExponentPushToken[watch]"];
    for t in tokens {
        app.add_device("carol", "expo", t).await;
    }

    let id = app.notify("carol", json!({"title": "hello"})).await;

    assert_eq!(app.final_status(id).await.0, "delivered");
    eventually(Duration::from_secs(10), || async {
        (app.count(&format!("SELECT count(*) FROM delivery WHERE notification_id = '{id}' AND status = 'delivered'"))
            .await
            == 3)
            .then_some(())
    })
    .await;
    for t in tokens {
        assert_eq!(app.expo.sends_of(id, t), 1, "{t}");
    }
}

#[actix_web::test]
async fn the_channel_limits_delivery_to_that_providers_devices() {
    let app = spawn_app().await;
    app.add_device("dave", "expo", "ExponentPushToken[dave]").await;
    app.add_device("dave", "email", "dave@example.com").await;

    let to_expo: Uuid = app
        .one("INSERT INTO notification (user_id, type, channel) VALUES ('dave', 't', 'expo') RETURNING id", &[])
        .await;
    let to_apns: Uuid = app
        .one("INSERT INTO notification (user_id, type, channel) VALUES ('dave', 't', 'apns') RETURNING id", &[])
        .await;

    assert_eq!(app.final_status(to_expo).await.0, "delivered");
    let (status, _, error) = app.final_status(to_apns).await;
    assert_eq!((status.as_str(), error.as_deref()), ("failed", Some("user dave has no active apns device")));
    assert_eq!(app.expo.sent_count(), 1);
}

#[actix_web::test]
async fn large_requests_are_sent_gzip_compressed_and_small_ones_plain() {
    let app = spawn_app().await;
    app.delivered_first("wes", json!({"title": "hi"})).await;
    assert_eq!(app.expo.gzip_requests(), 0, "a ~150-byte body goes plain");

    let big = app.notify("wes", json!({"title": "long", "body": "x".repeat(2000)})).await;

    assert_eq!(app.final_status(big).await.0, "delivered");
    assert_eq!(app.expo.gzip_requests(), 1);
    let sent = app.expo.sent();
    assert_eq!(sent.last().unwrap().body.as_deref(), Some("x".repeat(2000).as_str()), "decompressed intact");
}

/// An app sending with `access_token` to an Expo emulator that wants `s3cret`.
async fn with_secured_expo(access_token: &str) -> (TestApp, emulators::expo::ExpoEmulator) {
    let secured = emulators::expo::ExpoEmulator::start("127.0.0.1:0", Some("s3cret".into())).await.unwrap();
    let mut app = crate::helpers::prepare_with(|s| {
        s.providers.expo.access_token = Some(Secret::new(access_token));
        s.providers.expo.base_url = secured.url();
    })
    .await;
    app.start().await;
    (app, secured)
}

#[actix_web::test]
async fn the_expo_access_token_is_sent_as_a_bearer_token() {
    let (app, secured) = with_secured_expo("s3cret").await;
    app.add_device("ann", "expo", "ExponentPushToken[ann]").await;

    let id = app.notify("ann", json!({"title": "with enhanced push security"})).await;

    assert_eq!(app.final_status(id).await.0, "delivered");
    assert_eq!(secured.sent_count(), 1);
    secured.stop().await;
}

#[actix_web::test]
async fn a_refused_access_token_opens_the_circuit_and_disables_no_device() {
    let (app, secured) = with_secured_expo("wrong").await;
    app.add_device("ben", "expo", "ExponentPushToken[ben]").await;

    let id = app.notify("ben", json!({"title": "refused"})).await;

    // Deliveries are only deferred while the circuit is open.
    assert_refused_credentials_defer(&app, id, "HTTP 401 UNAUTHORIZED", "expo").await;
    assert_eq!(secured.sent_count(), 0);
    secured.stop().await;
}

#[actix_web::test]
async fn one_notification_reaches_a_users_expo_fcm_apns_and_email_devices() {
    let mut app = prepare().await;
    let OtherProviders { fcm, apns, smtp } = app.enable_every_provider().await;
    app.start().await;
    let apns_token = "ab".repeat(32);
    app.add_device("zoe", "expo", "ExponentPushToken[zoe]").await;
    app.add_device("zoe", "fcm", "zoe-android").await;
    app.add_device("zoe", "apns", &apns_token).await;
    app.add_device("zoe", "email", "zoe@example.com").await;

    let id = app.notify("zoe", json!({"title": "Everywhere", "body": "at once", "data": {"k": "v"}})).await;

    eventually(Duration::from_secs(20), || async {
        (app.count("SELECT count(*) FROM delivery WHERE status = 'delivered'").await == 4).then_some(())
    })
    .await;
    assert_eq!(app.status(id).await.0, "delivered");
    assert_eq!(app.expo.sends_of(id, "ExponentPushToken[zoe]"), 1);
    assert_eq!(fcm.sends_of(id, "zoe-android"), 1);
    let to_apns: Vec<_> = apns.sent().into_iter().filter(|s| s.token == apns_token).collect();
    assert_eq!(to_apns.len(), 1);
    assert_eq!(to_apns[0].notification_id(), Some(id.to_string().as_str()));
    assert_eq!(to_apns[0].body["aps"]["alert"]["title"], "Everywhere");
    assert_eq!(smtp.sends_of(id, "zoe@example.com"), 1);
    let mail = smtp.received().into_iter().find(|m| m.to.iter().any(|t| t == "zoe@example.com")).unwrap();
    assert_eq!(mail.subject.as_deref(), Some("Everywhere"));
    let providers: Vec<String> =
        app.column("SELECT provider FROM delivery WHERE notification_id = $1 ORDER BY provider", &[&id]).await;
    assert_eq!(providers, ["apns", "email", "expo", "fcm"]);
    app.cleanup().await;
    fcm.stop().await;
    apns.stop().await;
    smtp.stop().await;
}
