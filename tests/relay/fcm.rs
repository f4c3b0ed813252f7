//! FCM end to end through the relay (the client and the OAuth token dance against the emulator
//! alone are in `tests/providers/fcm.rs`).

use crate::helpers::{eventually, prepare, TestApp};
use emulators::fcm::FcmEmulator;
use serde_json::json;
use std::time::Duration;

/// A test app whose relay also sends through the FCM emulator.
async fn with_fcm() -> (TestApp, FcmEmulator) {
    let mut app = prepare().await;
    let fcm = FcmEmulator::start("127.0.0.1:0").await.expect("fcm emulator");
    app.enable_fcm(&fcm);
    (app, fcm)
}

#[actix_web::test]
async fn the_relay_delivers_to_fcm_and_disables_unregistered_tokens() {
    let (mut app, fcm) = with_fcm().await;
    app.start().await;
    app.add_device("carol", "fcm", "carol-phone").await;
    let gone = app.add_device("carol", "fcm", "carol-old-unregistered").await;
    app.add_device("carol", "expo", "ExponentPushToken[carol]").await;

    let id = app.notify("carol", json!({"title": "Hello", "data": {"n": 1}})).await;
    let (status, _, _) = app.final_status(id).await;
    assert_eq!(status, "delivered");
    eventually(Duration::from_secs(10), || async {
        (app.count("SELECT count(*) FROM delivery WHERE status IN ('delivered', 'failed')").await == 3).then_some(())
    })
    .await;
    assert_eq!(fcm.sends_of(id, "carol-phone"), 1);
    assert_eq!(app.expo.sends_of(id, "ExponentPushToken[carol]"), 1);
    let name: Option<String> = app.one("SELECT provider_message_id FROM delivery d JOIN device v ON v.id = d.device_id WHERE v.token = 'carol-phone'", &[]).await;
    assert!(name.is_some_and(|n| n.starts_with("projects/notify-relay-emulator/messages/")));
    let row = app.row("SELECT disabled_at IS NOT NULL, disabled_reason FROM device WHERE id = $1", &[&gone]).await;
    assert!(row.get::<_, bool>(0), "the unregistered token is disabled");
    assert!(row.get::<_, Option<String>>(1).is_some_and(|r| r.contains("UNREGISTERED")));
    app.cleanup().await;
    fcm.stop().await;
}

#[actix_web::test]
async fn a_service_account_fcm_refuses_opens_the_circuit_without_failing_anything() {
    let (mut app, fcm) = with_fcm().await;
    app.start().await;
    app.add_device("dave", "fcm", "dave-phone").await;
    // THIRD_PARTY_AUTH_ERROR for every send for a while: the circuit opens and deliveries wait.
    fcm.fail_for(401, Duration::from_secs(2));
    let id = app.notify("dave", json!({"title": "later"})).await;
    let (status, _, error) = app.final_status(id).await;
    assert_eq!(status, "delivered", "{error:?}");
    assert_eq!(fcm.sends_of(id, "dave-phone"), 1);
    assert_eq!(app.failed_rows().await, 0);
    assert_eq!(app.disabled_devices().await, 0);
    let attempts = app.count("SELECT max(attempt_count)::bigint FROM delivery").await;
    // circuit.failures = 3 in tests: three refusals open it, then only the successful send counts.
    assert!(attempts <= 4, "an open circuit spends no attempts: {attempts}");
    // The transitions are counted (once each), not only logged.
    eventually(Duration::from_secs(5), || async {
        (app.redis_counter("CIRCUIT_OPEN").await >= 1 && app.redis_counter("CIRCUIT_CLOSED").await >= 1).then_some(())
    })
    .await;
    app.cleanup().await;
    fcm.stop().await;
}
