//! APNs end to end through the relay (the client against the emulator alone is in
//! `tests/providers/apns.rs`).

use crate::helpers::{assert_refused_credentials_defer, spawn_app_enabling, TestApp};
use emulators::apns::{device_token as device, ApnsEmulator, Rules};
use serde_json::json;

async fn emulator() -> ApnsEmulator {
    ApnsEmulator::start("127.0.0.1:0", Rules::default()).await.expect("apns emulator")
}

/// A started app with APNs enabled against `emulator`.
async fn relay_with_apns(emulator: &ApnsEmulator, team_id: &str) -> TestApp {
    spawn_app_enabling(|app| app.enable_apns(emulator, team_id)).await
}

#[actix_web::test]
async fn apns_a_notification_reaches_an_apns_device_through_the_relay() {
    let emulator = emulator().await;
    let app = relay_with_apns(&emulator, emulator.team_id()).await;
    let device_id = app.add_device("ada", "apns", &device(1)).await;

    let id = app.notify("ada", json!({"title": "Hello", "body": "from APNs", "data": {"k": "v"}})).await;

    assert_eq!(app.final_status(id).await.0, "delivered");
    let sent = emulator.sent();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].notification_id(), Some(id.to_string().as_str()));
    assert_eq!(sent[0].body["aps"]["alert"], json!({"title": "Hello", "body": "from APNs"}));
    assert_eq!(sent[0].body["k"], json!("v"));
    let row = app
        .row(
            "SELECT status, provider_message_id FROM delivery WHERE notification_id = $1 AND device_id = $2",
            &[&id, &device_id],
        )
        .await;
    assert_eq!(row.get::<_, String>(0), "delivered");
    assert_eq!(row.get::<_, Option<String>>(1), Some(sent[0].apns_id.clone()));
    app.cleanup().await;
    emulator.stop().await;
}

#[actix_web::test]
async fn apns_410_unregistered_disables_the_device_and_the_users_expo_device_still_gets_it() {
    let emulator = emulator().await;
    let app = relay_with_apns(&emulator, emulator.team_id()).await;
    let dead = app.add_device("bo", "apns", &device(2)).await;
    app.add_device("bo", "expo", "ExponentPushToken[bo]").await;
    emulator.answer(&device(2), 410, "Unregistered");

    let id = app.notify("bo", json!({"title": "hi"})).await;

    let error = app.dead_device_error(id, dead, "410 Unregistered").await;
    assert!(error.contains("(timestamp "), "{error}");
    assert_eq!(app.expo.sends_of(id, "ExponentPushToken[bo]"), 1);
    assert_eq!(emulator.requests_for(&device(2)), 1, "an invalid token is not retried");
    app.cleanup().await;
    emulator.stop().await;
}

#[actix_web::test]
async fn apns_an_invalid_provider_token_opens_the_circuit_and_defers_without_failing() {
    let emulator = emulator().await;
    let app = relay_with_apns(&emulator, "WRONGTEAM1").await;
    app.add_device("cy", "apns", &device(3)).await;

    let id = app.notify("cy", json!({"title": "refused"})).await;

    // Deliveries are only deferred while the circuit is open.
    assert_refused_credentials_defer(&app, id, "403 InvalidProviderToken", "apns").await;
    assert_eq!(app.failed_rows().await, 0);
    assert_eq!(emulator.sent_count(), 0);
    assert!(emulator.requests() >= 1);
    app.cleanup().await;
    emulator.stop().await;
}
