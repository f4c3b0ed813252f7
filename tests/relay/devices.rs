//! Device ownership (`POST /users/{user_id}/devices`): whose email address a user token may
//! register, which active devices move between users, and `devices.max_per_user`.

use crate::api::code;
use crate::helpers::{prepare, TestApp};
use crate::tokens::{claims, hs256, HS_SECRET};
use futures_util::future::join_all;
use notify_relay::configuration::Secret;
use serde_json::{json, Value};
use std::time::Duration;

/// An app whose user routes take HS256 tokens, with `devices.max_per_user` = `max`.
async fn app(max: u32) -> TestApp {
    let mut app = prepare().await;
    app.settings.auth.jwt_secret = Some(Secret::new(HS_SECRET));
    app.settings.devices.max_per_user = max;
    app.start().await;
    app
}

/// A user token for `sub`, with `email` as its `email` claim when given.
fn user(sub: &str, email: Option<&str>) -> String {
    let mut c = claims(sub, 3600);
    if let Some(e) = email {
        c["email"] = json!(e);
    }
    hs256(HS_SECRET.as_bytes(), &c)
}

fn service() -> String {
    let mut c = claims("", 3600);
    c["role"] = json!("service_role");
    c.as_object_mut().unwrap().remove("sub");
    hs256(HS_SECRET.as_bytes(), &c)
}

async fn register(app: &TestApp, path_user: &str, token: &str, provider: &str, device: &str) -> (u16, Value) {
    let client = awc::Client::builder().timeout(Duration::from_secs(20)).finish();
    let mut resp = client
        .post(format!("{}/users/{path_user}/devices", app.api()))
        .bearer_auth(token)
        .send_json(&json!({"provider": provider, "token": device}))
        .await
        .expect("request");
    let status = resp.status().as_u16();
    (status, resp.json::<Value>().await.unwrap_or(Value::Null))
}

async fn remove(app: &TestApp, user: &str, token: &str, id: &str) -> u16 {
    let client = awc::Client::default();
    let resp = client
        .delete(format!("{}/users/{user}/devices/{id}", app.api()))
        .bearer_auth(token)
        .send()
        .await
        .expect("request");
    resp.status().as_u16()
}

async fn owner(app: &TestApp, provider: &str, token: &str) -> (String, bool) {
    let row = app
        .row("SELECT user_id, disabled_at IS NULL FROM device WHERE provider = $1 AND token = $2", &[&provider, &token])
        .await;
    (row.get(0), row.get(1))
}

fn message(body: &Value) -> &str {
    body["error"]["message"].as_str().unwrap_or("")
}

#[actix_web::test]
async fn an_email_address_not_in_the_token_needs_the_service_role() {
    let app = app(100).await;
    let alice = user("alice", Some("alice@Example.com"));
    // Someone else's address: refused, saying why.
    let (status, body) = register(&app, "alice", &alice, "email", "bob@example.com").await;
    assert_eq!((status, code(&body)), (403, "forbidden"), "{body}");
    assert!(message(&body).contains("`email` claim") && message(&body).contains("service_role"), "{body}");
    // A token without an email claim registers no address at all.
    let (status, body) = register(&app, "carol", &user("carol", None), "email", "carol@example.com").await;
    assert_eq!(status, 403, "{body}");
    assert!(message(&body).contains("no `email` claim"), "{body}");
    assert_eq!(app.count("SELECT count(*) FROM device").await, 0, "nothing registered");
    // Her own address, the domain in another case: registered, the domain stored in lower case.
    let (status, body) = register(&app, "alice", &alice, "email", "alice@EXAMPLE.COM").await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["token"], "alice@example.com");
    // The local part is compared exactly.
    let (status, _) = register(&app, "alice", &alice, "email", "Alice@example.com").await;
    assert_eq!(status, 403);
    // A service may register any address for anyone.
    let (status, body) = register(&app, "alice", &service(), "email", "alice.work@example.org").await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(owner(&app, "email", "alice.work@example.org").await, ("alice".into(), true));
}

#[actix_web::test]
async fn an_active_email_device_never_moves_to_another_user() {
    let app = app(100).await;
    let address = "shared@example.com";
    let (status, first) = register(&app, "alice", &user("alice", Some(address)), "email", address).await;
    assert_eq!(status, 201, "{first}");
    // A second account whose token carries the same address (e.g. the address was re-used):
    // the active device stays with alice.
    let mallory = user("mallory", Some(address));
    let (status, body) = register(&app, "mallory", &mallory, "email", address).await;
    assert_eq!((status, code(&body)), (409, "conflict"), "{body}");
    assert!(message(&body).contains("active device of another user"), "{body}");
    assert_eq!(owner(&app, "email", address).await, ("alice".into(), true));
    // Once alice removed it, the address's owner may register it.
    assert_eq!(remove(&app, "alice", &user("alice", Some(address)), first["id"].as_str().unwrap()).await, 204);
    let (status, body) = register(&app, "mallory", &mallory, "email", address).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["id"], first["id"], "the same row, re-assigned");
    assert_eq!(owner(&app, "email", address).await, ("mallory".into(), true));
    // A service may move an active address.
    let (status, _) = register(&app, "alice", &service(), "email", address).await;
    assert_eq!(status, 201);
    assert_eq!(owner(&app, "email", address).await, ("alice".into(), true));
}

#[actix_web::test]
async fn two_accounts_registering_one_address_at_once_leave_it_with_exactly_one() {
    let app = app(100).await;
    let address = "contested@example.com";
    let calls = (0..8).map(|i| {
        let (sub, app) = (format!("user-{i}"), &app);
        async move { register(app, &sub, &user(&sub, Some(address)), "email", address).await.0 }
    });
    let mut statuses = join_all(calls).await;
    statuses.sort_unstable();
    assert_eq!(statuses, [201, 409, 409, 409, 409, 409, 409, 409]);
    assert_eq!(app.count("SELECT count(*) FROM device WHERE token = 'contested@example.com'").await, 1);
}

#[actix_web::test]
async fn a_push_token_moves_with_the_phone_and_the_old_owner_stops_receiving() {
    let app = app(100).await;
    let phone = "ExponentPushToken[second-hand-phone]";
    let (status, first) = register(&app, "alice", &user("alice", None), "expo", phone).await;
    assert_eq!(status, 201, "{first}");
    // The phone changes hands: bob signs in on it and registers the same token.
    let (status, moved) = register(&app, "bob", &user("bob", None), "expo", phone).await;
    assert_eq!(status, 201, "{moved}");
    assert_eq!(moved["id"], first["id"], "one row per token");
    assert_eq!(moved["user_id"], "bob");
    assert_eq!(owner(&app, "expo", phone).await, ("bob".into(), true));
    // Alice's notifications no longer reach it; bob's do.
    let for_alice = app.notify("alice", json!({"title": "for alice"})).await;
    let for_bob = app.notify("bob", json!({"title": "for bob"})).await;
    let (status, _, error) = app.final_status(for_alice).await;
    assert_eq!(status, "failed");
    assert!(error.unwrap_or_default().contains("no active device"));
    assert_eq!(app.final_status(for_bob).await.0, "delivered");
    assert_eq!(app.expo.sends_of(for_alice, phone), 0);
    assert_eq!(app.expo.sends_of(for_bob, phone), 1);
}

#[actix_web::test]
async fn registering_beyond_devices_max_per_user_is_a_422_naming_the_limit() {
    let app = app(3).await;
    let dave = user("dave", None);
    let mut ids = Vec::new();
    for i in 0..3 {
        let (status, body) = register(&app, "dave", &dave, "fcm", &format!("dave-{i}")).await;
        assert_eq!(status, 201, "{body}");
        ids.push(body["id"].as_str().unwrap().to_string());
    }
    // Registering one of them again is not a new device.
    assert_eq!(register(&app, "dave", &dave, "fcm", "dave-1").await.0, 201);
    let (status, body) = register(&app, "dave", &dave, "fcm", "dave-3").await;
    assert_eq!((status, code(&body)), (422, "invalid_value"), "{body}");
    assert!(message(&body).contains("devices.max_per_user") && message(&body).contains("at most 3 active devices"));
    // A token of someone else would be a new device of dave's too.
    assert_eq!(register(&app, "erin", &user("erin", None), "fcm", "erin-0").await.0, 201);
    assert_eq!(register(&app, "dave", &dave, "fcm", "erin-0").await.0, 422);
    assert_eq!(owner(&app, "fcm", "erin-0").await, ("erin".into(), true), "a refused move changes nothing");
    // Removed devices do not count; re-enabling one does.
    assert_eq!(remove(&app, "dave", &dave, &ids[0]).await, 204);
    assert_eq!(register(&app, "dave", &dave, "fcm", "dave-3").await.0, 201);
    assert_eq!(register(&app, "dave", &dave, "fcm", "dave-0").await.0, 422, "re-enabling is a fourth active one");
    assert_eq!(app.count("SELECT count(*) FROM device WHERE user_id = 'dave' AND disabled_at IS NULL").await, 3);
}

#[actix_web::test]
async fn concurrent_registrations_cannot_pass_devices_max_per_user() {
    let app = app(5).await;
    let frank = user("frank", None);
    let calls = (0..16).map(|i| {
        let (app, frank) = (&app, &frank);
        async move { register(app, "frank", frank, "fcm", &format!("frank-{i}")).await.0 }
    });
    let statuses = join_all(calls).await;
    assert_eq!(statuses.iter().filter(|&&s| s == 201).count(), 5, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|&&s| s == 422).count(), 11, "{statuses:?}");
    assert_eq!(app.count("SELECT count(*) FROM device WHERE user_id = 'frank' AND disabled_at IS NULL").await, 5);
}
