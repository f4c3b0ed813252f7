//! The HTTP API: authentication (every security case), the pull/retry/devices routes, the
//! admin routes and the OpenAPI document.

use crate::helpers::{eventually, prepare, prepare_with, TestApp, ADMIN_TOKEN};
use crate::tokens::{claims, hs256, unsigned, JwksServer, SigningKey, AUDIENCE, HS_SECRET, ISSUER};
use emulators::testing::Captured;
use notify_relay::configuration::{Secret, Settings};
use serde_json::{json, Value};
use std::time::Duration;
use uuid::Uuid;

/// Shared with the producer routes' tests (`producers_api`).
pub(crate) struct Api {
    pub(crate) app: TestApp,
    pub(crate) jwks: JwksServer,
    pub(crate) key: SigningKey,
}

/// An app whose user routes accept ES256 tokens from a loopback JWKS and legacy HS256 tokens,
/// with issuer and audience checked.
pub(crate) async fn api() -> Api {
    with_jwks(|s| {
        s.auth.jwt_secret = Some(Secret::new(HS_SECRET));
        s.auth.issuer = Some(ISSUER.into());
        s.auth.audience = Some(AUDIENCE.into());
        s.auth.jwks_min_refresh = Duration::from_millis(200);
    })
    .await
}

/// An app whose user routes take ES256 tokens of `key-1` from a loopback JWKS, with these
/// settings on top.
pub(crate) async fn with_jwks(change: impl FnOnce(&mut Settings)) -> Api {
    let key = SigningKey::generate("key-1");
    let jwks = JwksServer::start(&[&key]).await;
    let mut app = prepare_with(change).await;
    app.settings.auth.jwks_url = Some(jwks.url.clone());
    app.settings.auth.allow_insecure_jwks = true;
    app.start().await;
    Api { app, jwks, key }
}

impl Api {
    pub(crate) fn token(&self, user: &str) -> String {
        self.key.sign(&claims(user, 3600))
    }

    pub(crate) async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&[u8]>,
    ) -> (u16, Value) {
        let client = awc::Client::builder().timeout(Duration::from_secs(10)).finish();
        let url = format!("{}{path}", self.app.api());
        let method = awc::http::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = client.request(method, url);
        if let Some(t) = token {
            req = req.insert_header(("authorization", format!("Bearer {t}")));
        }
        let mut resp = match body {
            Some(b) => req.insert_header(("content-type", "application/json")).send_body(b.to_vec()).await,
            None => req.send().await,
        }
        .expect("request");
        let status = resp.status().as_u16();
        let bytes = resp.body().limit(4 * 1024 * 1024).await.expect("body");
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    pub(crate) async fn get(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        self.call("GET", path, token, None).await
    }

    pub(crate) async fn post(&self, path: &str, token: Option<&str>, body: Value) -> (u16, Value) {
        self.call("POST", path, token, Some(body.to_string().as_bytes())).await
    }

    /// A failed notification of `user` (with its notification_failed row), failed `ago` ago.
    async fn failed_notification(&self, user: &str, ago_secs: i64) -> Uuid {
        let id: Uuid = self
            .app
            .one(
                "INSERT INTO notification (user_id, type, status, last_error, attempt_count, payload)
                 VALUES ($1, 't', 'failed', 'gone', 1, '{\"title\":\"x\"}') RETURNING id",
                &[&user],
            )
            .await;
        self.app
            .exec(
                "INSERT INTO notification_failed (notification_id, user_id, error, attempt_count, payload, failed_at)
                 VALUES ($1, $2, 'gone', 1, '{\"title\":\"x\"}', now() - make_interval(secs => $3))",
                &[&id, &user, &(ago_secs as f64)],
            )
            .await;
        id
    }
}

pub(crate) fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("")
}

#[actix_web::test]
async fn user_routes_accept_es256_from_the_jwks_and_legacy_hs256() {
    let api = api().await;
    let (status, body) = api.get("/users/alice/notifications/failed", Some(&api.token("alice"))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"items": [], "next_cursor": null}));
    // Every user route, with a token of each kind.
    let tokens = [("ES256", api.token("alice")), ("HS256", hs256(HS_SECRET.as_bytes(), &claims("alice", 3600)))];
    for (i, (kind, token)) in tokens.iter().enumerate() {
        let t = Some(token.as_str());
        assert_eq!(api.get("/users/alice/notifications/failed", t).await.0, 200, "{kind}");
        let device = json!({"provider": "fcm", "token": format!("alice-{kind}")});
        let (status, registered) = api.post("/users/alice/devices", t, device).await;
        assert_eq!(status, 201, "{kind}: {registered}");
        let path = format!("/users/alice/devices/{}", registered["id"].as_str().unwrap());
        assert_eq!(api.call("DELETE", &path, t, None).await.0, 204, "{kind}");
        let failed = api.failed_notification("alice", 10 + i as i64).await;
        let (status, body) = api.post(&format!("/notifications/{failed}/retry"), t, json!({})).await;
        assert_eq!(status, 202, "{kind}: {body}");
    }
    // A service_role token acts for any user.
    let mut service = claims("", 3600);
    service["role"] = json!("service_role");
    service.as_object_mut().unwrap().remove("sub");
    assert_eq!(api.get("/users/bob/notifications/failed", Some(&api.key.sign(&service))).await.0, 200);
}

#[actix_web::test]
async fn every_bad_credential_is_refused_on_every_user_route() {
    let api = api().await;
    let other_key = SigningKey::generate("key-1"); // same kid, different key
    let unknown_kid = SigningKey::generate("key-unknown");
    let mut wrong_iss = claims("alice", 3600);
    wrong_iss["iss"] = json!("https://evil.example/auth/v1");
    let mut wrong_aud = claims("alice", 3600);
    wrong_aud["aud"] = json!("anon");
    let mut no_exp = claims("alice", 3600);
    no_exp.as_object_mut().unwrap().remove("exp");
    let mut not_yet = claims("alice", 3600);
    not_yet["nbf"] = json!(chrono::Utc::now().timestamp() + 600);
    let jwks_json = json!({"keys": [api.key.jwk.clone()]}).to_string();
    let cases: Vec<(&str, Option<String>)> = vec![
        ("no token", None),
        ("expired", Some(api.key.sign(&claims("alice", -120)))),
        ("wrong HS256 secret", Some(hs256(b"not-the-secret-of-this-project", &claims("alice", 3600)))),
        ("alg none", Some(unsigned(&claims("alice", 3600)))),
        ("HS256 signed with the public key (PEM)", Some(hs256(api.key.public_pem.as_bytes(), &claims("alice", 3600)))),
        ("HS256 signed with the JWKS document", Some(hs256(jwks_json.as_bytes(), &claims("alice", 3600)))),
        ("unknown kid", Some(unknown_kid.sign(&claims("alice", 3600)))),
        ("signed by another key under the known kid", Some(other_key.sign(&claims("alice", 3600)))),
        ("wrong issuer", Some(api.key.sign(&wrong_iss))),
        ("wrong audience", Some(api.key.sign(&wrong_aud))),
        ("no exp", Some(api.key.sign(&no_exp))),
        ("not valid before a time to come (nbf)", Some(api.key.sign(&not_yet))),
        ("the admin token", Some(ADMIN_TOKEN.into())),
        ("garbage", Some("not.a.jwt".into())),
    ];
    let device = Uuid::new_v4();
    let routes: Vec<(&str, String, Option<Value>)> = vec![
        ("GET", "/users/alice/notifications/failed".into(), None),
        ("POST", "/users/alice/devices".into(), Some(json!({"provider": "expo", "token": "ExponentPushToken[a]"}))),
        ("DELETE", format!("/users/alice/devices/{device}"), None),
    ];
    for (method, path, body) in &routes {
        for (case, token) in &cases {
            let bytes = body.as_ref().map(|b| b.to_string().into_bytes());
            let (status, resp) = api.call(method, path, token.as_deref(), bytes.as_deref()).await;
            assert_eq!(status, 401, "{method} {path} with {case}: {resp}");
            assert_eq!(code(&resp), "unauthorized", "{case}");
        }
        // A valid token of someone else: authenticated, but not allowed.
        let bytes = body.as_ref().map(|b| b.to_string().into_bytes());
        let (status, resp) = api.call(method, path, Some(&api.token("mallory")), bytes.as_deref()).await;
        assert_eq!(status, 403, "{method} {path} with another user's token: {resp}");
        assert_eq!(code(&resp), "forbidden");
    }
    // Retry: the owner, a service or the admin; not someone else.
    let id = api.failed_notification("alice", 10).await;
    let (status, _) = api.post(&format!("/notifications/{id}/retry"), Some(&api.token("mallory")), json!({})).await;
    assert_eq!(status, 403);
    let (status, _) = api.post(&format!("/notifications/{id}/retry"), None, json!({})).await;
    assert_eq!(status, 401);
}

#[actix_web::test]
async fn a_rotated_in_key_is_fetched_once_and_made_up_kids_do_not_hammer_the_jwks() {
    let api = api().await;
    assert_eq!(api.get("/users/alice/notifications/failed", Some(&api.token("alice"))).await.0, 200);
    let fetched = api.jwks.fetches();
    assert_eq!(fetched, 1, "cached after the first fetch");
    for _ in 0..5 {
        let forged = SigningKey::generate("made-up").sign(&claims("alice", 3600));
        assert_eq!(api.get("/users/alice/notifications/failed", Some(&forged)).await.0, 401);
    }
    assert_eq!(api.jwks.fetches(), fetched, "unknown kids refetch at most once per jwks_min_refresh_ms");
    // The project rotates in a new key: within the refresh interval it is not fetched yet…
    let new_key = SigningKey::generate("key-2");
    api.jwks.add(&new_key);
    let rotated = new_key.sign(&claims("alice", 3600));
    api.app.auth_clock.advance(Duration::from_millis(150));
    assert_eq!(api.get("/users/alice/notifications/failed", Some(&rotated)).await.0, 401);
    assert_eq!(api.jwks.fetches(), fetched, "no refetch within jwks_min_refresh_ms (200)");
    // …after it, one fetch and its tokens work.
    api.app.auth_clock.advance(Duration::from_millis(100));
    let (status, body) = api.get("/users/alice/notifications/failed", Some(&rotated)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(api.jwks.fetches(), fetched + 1);
}

#[actix_web::test]
async fn keys_already_fetched_keep_working_while_the_jwks_endpoint_is_down() {
    // Stale after 100 ms: every later request wants a fresh copy of the keys.
    let Api { app, jwks, key } = with_jwks(|s| {
        s.auth.jwks_cache = Duration::from_millis(100);
        s.auth.jwks_min_refresh = Duration::ZERO;
    })
    .await;
    let token = key.sign(&claims("alice", 3600));
    assert_eq!(app.get("/users/alice/notifications/failed", Some(&token)).await.0, 200);
    assert_eq!(jwks.fetches(), 1);
    let stranger = SigningKey::generate("key-2").sign(&claims("alice", 3600));
    // The endpoint answers 503, then is gone altogether.
    jwks.fail();
    app.auth_clock.advance(Duration::from_millis(200));
    // The stale keys are refetched and the refetch fails: the keys fetched before still
    // verify, unknown ones still do not.
    assert_eq!(app.get("/users/alice/notifications/failed", Some(&token)).await.0, 200);
    assert_eq!(jwks.fetches(), 2, "the stale cache was refetched");
    assert_eq!(app.get("/users/alice/notifications/failed", Some(&stranger)).await.0, 401);
    jwks.stop().await;
    app.auth_clock.advance(Duration::from_millis(200));
    assert_eq!(app.get("/users/alice/notifications/failed", Some(&token)).await.0, 200);
    assert_eq!(app.get("/users/alice/notifications/failed", Some(&stranger)).await.0, 401);
}

#[actix_web::test]
async fn keys_from_a_jwks_file_verify_user_tokens() {
    let mut app = prepare().await;
    let key = SigningKey::generate("file-key");
    let file = std::env::temp_dir().join(format!("jwks-{}.json", Uuid::new_v4().simple()));
    std::fs::write(&file, json!({"keys": [key.jwk.clone()]}).to_string()).unwrap();
    app.remove_on_drop(file.clone());
    app.settings.auth.jwks_file = Some(file.clone());
    app.start().await;
    let token = key.sign(&claims("alice", 3600));
    assert_eq!(app.get("/users/alice/notifications/failed", Some(&token)).await.0, 200);
    let stranger = SigningKey::generate("other-key").sign(&claims("alice", 3600));
    assert_eq!(app.get("/users/alice/notifications/failed", Some(&stranger)).await.0, 401);
    // Without a jwt_secret, HS256 tokens are refused outright.
    let legacy = hs256(HS_SECRET.as_bytes(), &claims("alice", 3600));
    assert_eq!(app.get("/users/alice/notifications/failed", Some(&legacy)).await.0, 401);
}

#[actix_web::test]
async fn admin_routes_take_only_the_admin_token() {
    let api = api().await;
    let mut service = claims("ops", 3600);
    service["role"] = json!("service_role");
    for path in ["/admin/actors", "/admin/queues", "/admin/dlq", "/admin/metrics"] {
        assert_eq!(api.get(path, None).await.0, 401, "{path}");
        assert_eq!(api.get(path, Some(&api.token("alice"))).await.0, 401, "{path}: a user token");
        assert_eq!(api.get(path, Some(&api.key.sign(&service))).await.0, 401, "{path}: a service_role token");
        assert_eq!(api.get(path, Some("test-admin-token-but-wrong")).await.0, 401, "{path}");
        let (status, body) = api.get(path, Some(ADMIN_TOKEN)).await;
        assert_eq!(status, 200, "{path}: {body}");
    }
    let (status, _) = api.post("/admin/dlq/requeue", Some(&api.token("alice")), json!({"all": true})).await;
    assert_eq!(status, 401);
}

#[actix_web::test]
async fn failed_notifications_page_newest_first_with_signed_cursors() {
    let api = api().await;
    let mut ids = Vec::new();
    for i in 0..45 {
        ids.push(api.failed_notification("alice", 1000 - i).await); // later i = newer
    }
    api.failed_notification("bob", 1).await;
    let token = api.token("alice");
    let mut seen: Vec<Uuid> = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("/users/alice/notifications/failed?limit=20&cursor={c}"),
            None => "/users/alice/notifications/failed?limit=20".into(),
        };
        let (status, body) = api.get(&path, Some(&token)).await;
        assert_eq!(status, 200, "{body}");
        pages += 1;
        for item in body["items"].as_array().unwrap() {
            assert_eq!(item["user_id"], "alice");
            seen.push(item["notification_id"].as_str().unwrap().parse().unwrap());
        }
        match body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    ids.reverse();
    assert_eq!(seen, ids, "newest first, each once, nobody else's");

    let first = api.get("/users/alice/notifications/failed?limit=1", Some(&token)).await.1;
    let good = first["next_cursor"].as_str().unwrap().to_string();
    let (body_part, sig) = good.split_once('.').unwrap();
    let tampered = format!("{}A.{sig}", body_part);
    for bad in ["limit=0", "limit=101", "limit=abc", "cursor=garbage", &format!("cursor={tampered}")] {
        let (status, body) = api.get(&format!("/users/alice/notifications/failed?{bad}"), Some(&token)).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(code(&body), "bad_request");
    }
}

#[actix_web::test]
async fn retry_answers_202_404_409_and_400_as_it_should() {
    let api = api().await;
    let token = api.token("alice");
    let (status, body) = api.post("/notifications/not-a-uuid/retry", Some(&token), json!({})).await;
    assert_eq!((status, code(&body)), (400, "bad_request"), "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("id must be a UUID"));
    let (status, _) = api.post(&format!("/notifications/{}/retry", Uuid::new_v4()), Some(&token), json!({})).await;
    assert_eq!(status, 404);
    let delivered: Uuid = api
        .app
        .one("INSERT INTO notification (user_id, type, status) VALUES ('alice', 't', 'delivered') RETURNING id", &[])
        .await;
    let (status, body) = api.post(&format!("/notifications/{delivered}/retry"), Some(&token), json!({})).await;
    assert_eq!((status, code(&body)), (409, "conflict"), "{body}");

    // With a device, the retried notification goes pending → queued → delivered, never failed
    // again: the second retry below conflicts whenever it lands.
    api.app.add_device("alice", "expo", "ExponentPushToken[alice-retry]").await;
    let failed = api.failed_notification("alice", 5).await;
    let (status, body) = api.post(&format!("/notifications/{failed}/retry"), Some(&token), json!({})).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body, json!({"id": failed.to_string(), "status": "pending"}));
    // It is no longer failed: a second retry conflicts.
    let (status, _) = api.post(&format!("/notifications/{failed}/retry"), Some(&token), json!({})).await;
    assert_eq!(status, 409);
    let stamped = api
        .app
        .count(&format!(
            "SELECT count(*) FROM notification_failed WHERE notification_id = '{failed}' AND retried_at IS NOT NULL"
        ))
        .await;
    assert_eq!(stamped, 1);
    // The admin token may retry anyone's.
    let other = api.failed_notification("bob", 5).await;
    let (status, _) = api.post(&format!("/notifications/{other}/retry"), Some(ADMIN_TOKEN), json!({})).await;
    assert_eq!(status, 202);
}

#[actix_web::test]
async fn devices_are_registered_validated_re_enabled_and_removed() {
    let api = api().await;
    let token = api.token("alice");
    let register = |body: Value| {
        let token = token.clone();
        let api = &api;
        async move { api.post("/users/alice/devices", Some(&token), body).await }
    };
    let (status, device) = register(json!({"provider": "expo", "token": "ExponentPushToken[alice-1]"})).await;
    assert_eq!(status, 201, "{device}");
    assert_eq!(device["user_id"], "alice");
    assert_eq!(device["disabled_at"], Value::Null);
    let id = device["id"].as_str().unwrap().to_string();

    // Removed, then registered again: the same row, enabled again.
    let (status, _) = api.call("DELETE", &format!("/users/alice/devices/{id}"), Some(&token), None).await;
    assert_eq!(status, 204);
    assert_eq!(api.app.disabled_devices().await, 1);
    let (status, again) = register(json!({"provider": "expo", "token": "ExponentPushToken[alice-1]"})).await;
    assert_eq!(status, 201);
    assert_eq!(again["id"], device["id"]);
    assert_eq!(again["disabled_at"], Value::Null);

    for (body, field) in [
        (json!({"provider": "sms", "token": "x"}), "provider"),
        (json!({"provider": "expo", "token": "not-an-expo-token"}), "token"),
        (json!({"provider": "apns", "token": "zz"}), "token"),
        (json!({"provider": "email", "token": "nobody"}), "token"),
        (json!({"provider": "expo"}), "token"),
        (json!({"provider": 5, "token": "x"}), "provider"),
        (json!({"provider": "fcm", "token": "t", "extra": 1}), "extra"),
    ] {
        let (status, resp) = register(body.clone()).await;
        assert_eq!(status, 422, "{body}: {resp}");
        assert_eq!(code(&resp), "invalid_value");
        assert!(resp["error"]["message"].as_str().unwrap().contains(field), "{body}: {resp}");
    }
    let (status, resp) = api.call("POST", "/users/alice/devices", Some(&token), Some(b"{\"provider\": ")).await;
    assert_eq!((status, code(&resp)), (400, "bad_request"), "{resp}");
    let huge = json!({"provider": "fcm", "token": "x".repeat(70 * 1024)}).to_string();
    let (status, resp) = api.call("POST", "/users/alice/devices", Some(&token), Some(huge.as_bytes())).await;
    assert_eq!((status, code(&resp)), (413, "payload_too_large"), "{resp}");

    let (status, _) = api.call("DELETE", &format!("/users/alice/devices/{}", Uuid::new_v4()), Some(&token), None).await;
    assert_eq!(status, 404);
    let (status, _) = api.call("DELETE", "/users/alice/devices/123", Some(&token), None).await;
    assert_eq!(status, 400);
    // Bob cannot remove Alice's device through his own path either.
    let bob = api.token("bob");
    let (status, _) = api.call("DELETE", &format!("/users/bob/devices/{id}"), Some(&bob), None).await;
    assert_eq!(status, 404);
}

#[actix_web::test]
async fn pull_add_a_device_retry_and_the_notification_is_delivered() {
    let api = api().await;
    let token = api.token("erin");
    api.app.add_device("erin", "expo", "ExponentPushToken[erin-unregistered]").await;
    let id = api.app.notify("erin", json!({"title": "Your code", "body": "123456"})).await;
    let (status, _, _) = api.app.final_status(id).await;
    assert_eq!(status, "failed");

    let (_, page) = api.get("/users/erin/notifications/failed", Some(&token)).await;
    let items = page["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["notification_id"], id.to_string());
    assert_eq!(items[0]["payload"]["title"], "Your code");

    let (status, _) = api
        .post("/users/erin/devices", Some(&token), json!({"provider": "expo", "token": "ExponentPushToken[erin-new]"}))
        .await;
    assert_eq!(status, 201);
    let (status, _) = api.post(&format!("/notifications/{id}/retry"), Some(&token), json!({})).await;
    assert_eq!(status, 202);
    eventually(Duration::from_secs(20), || async { (api.app.status(id).await.0 == "delivered").then_some(()) }).await;
    assert_eq!(api.app.expo.sends_of(id, "ExponentPushToken[erin-new]"), 1);
    let (_, page) = api.get("/users/erin/notifications/failed", Some(&token)).await;
    assert!(page["items"][0]["retried_at"].is_string(), "{page}");
}

#[actix_web::test]
async fn admin_sees_queues_and_metrics_and_requeues_dead_letters() {
    let mut api = api().await;
    api.app.stop().await;
    api.app.settings.retry.max_attempts = 2;
    api.app.start().await;
    api.app.add_device("fred", "expo", "ExponentPushToken[fred-ratelimited]").await;
    let id = api.app.notify("fred", json!({"title": "t"})).await;
    assert_eq!(api.app.final_status(id).await.0, "failed");
    api.app.wait_for_dead_letters(1).await;

    let (status, dlq) = api.get("/admin/dlq?limit=10", Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 200);
    let items = dlq["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{dlq}");
    assert_eq!(items[0]["job"]["notification_id"], id.to_string());
    assert_eq!(items[0]["provider"], "expo");
    let (_, queues) = api.get("/admin/queues", Some(ADMIN_TOKEN)).await;
    assert_eq!(queues["totals"]["dlq_length"], 1, "{queues}");
    assert_eq!(queues["shards"][0]["shard"], 0);
    let (_, metrics) = api.get("/admin/metrics?days=2", Some(ADMIN_TOKEN)).await;
    assert_eq!(metrics["days"].as_array().unwrap().len(), 2);
    assert_eq!(metrics["days"][0]["events"]["DLQ_PUSHED"], 1, "{metrics}");
    assert_eq!(metrics["days"][0]["events"]["DLQ_PUSHED:expo"], 1, "{metrics}");
    assert_eq!(api.get("/admin/metrics?days=0", Some(ADMIN_TOKEN)).await.0, 400);
    assert_eq!(api.get("/admin/dlq?limit=5000", Some(ADMIN_TOKEN)).await.0, 400);
    let (status, resp) = api.post("/admin/dlq/requeue", Some(ADMIN_TOKEN), json!({"ids": ["nope"]})).await;
    assert_eq!((status, code(&resp)), (422, "invalid_value"), "{resp}");
    assert_eq!(api.post("/admin/dlq/requeue", Some(ADMIN_TOKEN), json!({})).await.0, 422);

    // The device recovered: requeue the dead letter and it is delivered.
    api.app.expo.forgive("ratelimited");
    let letter = items[0]["id"].as_str().unwrap();
    let (status, report) = api.post("/admin/dlq/requeue", Some(ADMIN_TOKEN), json!({"ids": [letter]})).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report, json!({"requeued": [letter], "skipped": []}));
    eventually(Duration::from_secs(20), || async { (api.app.status(id).await.0 == "delivered").then_some(()) }).await;
    assert_eq!(api.app.expo.sends_of(id, "ExponentPushToken[fred-ratelimited]"), 1);
    let (_, queues) = api.get("/admin/queues", Some(ADMIN_TOKEN)).await;
    assert_eq!(queues["totals"]["dlq_length"], 0, "{queues}");
    // Requeueing it again: it is gone.
    let (_, report) = api.post("/admin/dlq/requeue", Some(ADMIN_TOKEN), json!({"ids": [letter]})).await;
    assert_eq!(report, json!({"requeued": [], "skipped": []}));
}

#[actix_web::test]
async fn the_openapi_document_lists_every_route_and_the_docs_page_is_served_offline() {
    let api = api().await;
    let (status, doc) = api.get("/openapi.json", None).await;
    assert_eq!(status, 200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    for path in [
        "/healthz",
        "/readyz",
        "/users/{user_id}/notifications/failed",
        "/notifications/{id}/retry",
        "/users/{user_id}/devices",
        "/users/{user_id}/devices/{device_id}",
        "/admin/actors",
        "/admin/queues",
        "/admin/dlq",
        "/admin/dlq/requeue",
        "/admin/metrics",
    ] {
        assert!(paths.contains_key(path), "{path} missing from {:?}", paths.keys().collect::<Vec<_>>());
    }
    assert!(doc["components"]["securitySchemes"]["user_jwt"].is_object());
    // The shared 401 and 503 answers carry the error body, as every other error does.
    let queues = &doc["paths"]["/admin/queues"]["get"]["responses"];
    for status in ["401", "503"] {
        let schema = &queues[status]["content"]["application/json"]["schema"]["$ref"];
        assert_eq!(schema, "#/components/schemas/ErrorBody", "{status}: {queues}");
        assert!(!queues[status]["description"].as_str().unwrap_or_default().is_empty(), "{status}: {queues}");
    }
    let client = awc::Client::default();
    let mut page = client.get(format!("{}/docs/", api.app.api())).send().await.unwrap();
    assert_eq!(page.status().as_u16(), 200);
    let html = String::from_utf8_lossy(&page.body().await.unwrap()).to_string();
    assert!(html.contains("swagger-ui"), "{html}");
    let mut js = client.get(format!("{}/docs/swagger-ui-bundle.js", api.app.api())).send().await.unwrap();
    assert_eq!(js.status().as_u16(), 200);
    assert!(js.body().limit(20 * 1024 * 1024).await.unwrap().len() > 100_000, "the bundle is served by the binary");
}

#[actix_web::test]
async fn the_dlq_listing_reads_a_bounded_total_across_shards_not_limit_per_shard() {
    let mut app = prepare().await;
    let shards: u16 = 64;
    app.settings.redis.shards = shards;
    app.start().await;
    let keys = notify_relay_engine::Keys::new(app.prefix.clone(), shards);
    // 20 dead letters in every shard, their ids interleaved in time across the shards.
    let mut conn = app.redis.clone();
    let mut pipe = redis::pipe();
    for i in 0..20u64 {
        for shard in 0..shards {
            let id = format!("{}-0", 1_000_000 + i * 1000 + u64::from(shard));
            pipe.cmd("XADD").arg(keys.dlq(shard)).arg(&id).arg("reason").arg("permanent").arg("provider").arg("expo");
            pipe.arg("attempts").arg(1).arg("error").arg(format!("e{i}-{shard}")).arg("job").arg("{}").ignore();
        }
    }
    let _: () = pipe.query_async(&mut conn).await.expect("dead letters");
    let limit = 20;
    let (letters, read) = app.app.as_ref().unwrap().relay.dead_letters_counted(limit).await.expect("dead letters");
    // The newest 20 overall: the last round (i = 19) of shards 63 down to 44.
    let expected: Vec<String> = (0..20u64).map(|k| format!("{}-0", 1_000_000 + 19 * 1000 + 63 - k)).collect();
    assert_eq!(letters.iter().map(|l| l.entry_id.clone()).collect::<Vec<_>>(), expected);
    assert!(read <= 2 * limit + usize::from(shards), "read {read} entries for {limit} (was limit per shard: 1280)");
    // The newest letters all in one shard: that shard is read on, page by page.
    let mut pipe = redis::pipe();
    for i in 0..30u64 {
        let id = format!("{}-0", 2_000_000 + i);
        pipe.cmd("XADD").arg(keys.dlq(3)).arg(&id).arg("reason").arg("permanent").arg("job").arg("{}").ignore();
    }
    let _: () = pipe.query_async(&mut conn).await.expect("dead letters");
    let (letters, read) = app.app.as_ref().unwrap().relay.dead_letters_counted(40).await.expect("dead letters");
    let mut expected: Vec<String> = (0..30u64).rev().map(|i| format!("{}-0", 2_000_000 + i)).collect();
    expected.extend((0..10u64).map(|k| format!("{}-0", 1_000_000 + 19 * 1000 + 63 - k)));
    assert_eq!(letters.iter().map(|l| l.entry_id.clone()).collect::<Vec<_>>(), expected);
    assert!(read <= 2 * 40 + usize::from(shards), "read {read}");
    // The same through the API, and requeue `all` takes the same bounded path.
    let (status, body) = app.get("/admin/dlq?limit=20", Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["items"][0]["id"], "3:2000029-0");
    assert_eq!(body["items"].as_array().unwrap().len(), 20);
}

#[actix_web::test]
async fn a_500_is_logged_with_its_postgres_error_chain_but_no_row_data() {
    let app = prepare().await;
    let token = "ExponentPushToken[secret-of-a-user]";
    app.add_device("alice", "expo", token).await;
    // A real Postgres error whose DETAIL carries the row: "Key (provider, token)=(expo, …)".
    let err = app
        .db
        .execute("INSERT INTO device (user_id, provider, token) VALUES ('bob', 'expo', $1)", &[&token])
        .await
        .expect_err("duplicate token");
    assert!(format!("{err:?}").contains(token), "the raw error does carry it: {err:?}");
    let logged = notify_relay::error::ApiError::from(notify_relay_engine::EngineError::Postgres(err)).log_text();
    assert!(!logged.contains("secret-of-a-user"), "{logged}");
    for useful in ["postgres", "ERROR 23505", "duplicate key value violates unique constraint", "(table device)"] {
        assert!(logged.contains(useful), "{useful} missing from {logged}");
    }
    // A value quoted in the message itself is masked too.
    let err = app.db.execute("SELECT $1::text::uuid", &[&token]).await.expect_err("not a uuid");
    let logged = notify_relay::error::ApiError::from(notify_relay_engine::EngineError::Postgres(err)).log_text();
    assert!(!logged.contains("secret-of-a-user") && logged.contains("22P02"), "{logged}");
}

/// A JSON logger whose lines land in `out`.
fn json_logger(out: &Captured) -> slog::Logger {
    use slog::Drain;
    let json = slog_json::Json::new(out.clone()).add_default_keys().build();
    slog::Logger::root(std::sync::Mutex::new(json).fuse(), slog::o!())
}

/// The JSON lines of `out`.
fn json_lines(out: &Captured) -> Vec<Value> {
    out.text().lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

#[actix_web::test]
async fn user_tokens_without_issuer_or_audience_are_warned_about_in_the_json_log() {
    use notify_relay::startup::{Application, ProcessRoles};
    let mut app = prepare().await;
    app.settings.auth.jwt_secret = Some(Secret::new(HS_SECRET));
    let api_only = ProcessRoles::parse("api").unwrap();
    let mut warned = Vec::new();
    for issuer in [None, Some(ISSUER)] {
        if let Some(iss) = issuer {
            app.settings.auth.issuer = Some(iss.into());
        }
        let log = Captured::default();
        let started =
            Application::build(app.valid_settings(), api_only, false, "c".into(), json_logger(&log)).await.unwrap();
        started.stop(Duration::from_secs(1)).await;
        let lines = json_lines(&log);
        assert!(lines.iter().any(|l| l["msg"] == "http api listening"), "the log is captured: {lines:?}");
        warned.push(lines.into_iter().find(|l| l["event"] == "AUTH_CLAIMS_UNCHECKED"));
    }
    let line = warned[0].as_ref().expect("a warning without auth.issuer and auth.audience");
    assert_eq!(line["level"], "WARN");
    assert!(line["msg"].as_str().unwrap().contains("auth.issuer"), "{line}");
    assert!(warned[1].is_none(), "no warning once auth.issuer is set: {:?}", warned[1]);
}

impl Api {
    pub(crate) fn service_token(&self) -> String {
        let mut service = claims("", 3600);
        service["role"] = json!("service_role");
        service.as_object_mut().unwrap().remove("sub");
        self.key.sign(&service)
    }
}

#[actix_web::test]
async fn unsupported_methods_answer_405_with_allow_and_the_json_error_shape() {
    let api = api().await;
    let client = awc::Client::default();
    let device = Uuid::new_v4();
    for (method, path, allow) in [
        ("PUT", "/users/alice/devices".to_string(), "POST"),
        ("GET", "/users/alice/devices".to_string(), "POST"),
        ("GET", format!("/users/alice/devices/{device}"), "DELETE"),
        ("PATCH", "/admin/dlq".to_string(), "GET"),
        ("DELETE", "/admin/dlq/requeue".to_string(), "POST"),
        ("POST", "/healthz".to_string(), "GET"),
        ("GET", format!("/notifications/{device}/retry"), "POST"),
        ("OPTIONS", "/users/alice/notifications/failed".to_string(), "GET"),
    ] {
        let m = awc::http::Method::from_bytes(method.as_bytes()).unwrap();
        let mut resp = client.request(m, format!("{}{path}", api.app.api())).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 405, "{method} {path}");
        assert_eq!(resp.headers().get("allow").and_then(|v| v.to_str().ok()), Some(allow), "{method} {path}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(code(&body), "method_not_allowed", "{method} {path}: {body}");
    }
    // An unknown path is still a 404.
    let (status, body) = api.call("PUT", "/no/such/route", None, None).await;
    assert_eq!((status, code(&body)), (404, "not_found"));
}

#[actix_web::test]
async fn a_user_id_of_any_text_gets_a_valid_location_and_one_with_a_nul_is_a_400() {
    let api = api().await;
    let service = api.service_token();
    let path = "/users/a%20b%2F%C3%A9%C2%85%1B/devices";
    let client = awc::Client::default();
    let mut resp = client
        .post(format!("{}{path}", api.app.api()))
        .bearer_auth(&service)
        .send_json(&json!({"provider": "fcm", "token": "odd-user"}))
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 201, "{:?}", resp.body().await);
    let body: Value = resp.json().await.unwrap();
    let location = resp.headers().get("location").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    assert_eq!(body["user_id"], "a b/é\u{85}\u{1b}");
    assert_eq!(location, format!("/users/a%20b%2F%C3%A9%C2%85%1B/devices/{}", body["id"].as_str().unwrap()));
    let (status, body) = api.call("DELETE", &location, Some(&service), None).await;
    assert_eq!(status, 204, "the Location names the device: {body}");
    // NUL cannot be stored in a Postgres text: refused, not a 500.
    let (status, body) =
        api.post("/users/a%00b/devices", Some(&service), json!({"provider": "fcm", "token": "x"})).await;
    assert_eq!((status, code(&body)), (400, "bad_request"), "{body}");
    let (status, _) = api.get("/users/a%00b/notifications/failed", Some(&service)).await;
    assert_eq!(status, 400);
    let (status, body) =
        api.post("/users/alice/devices", Some(&service), json!({"provider": "fcm", "token": "a\u{0}b"})).await;
    assert_eq!((status, code(&body)), (422, "invalid_value"), "{body}");
}

#[actix_web::test]
async fn removing_a_device_twice_is_a_404_the_second_time() {
    let api = api().await;
    let token = api.token("alice");
    let (_, device) =
        api.post("/users/alice/devices", Some(&token), json!({"provider": "fcm", "token": "twice"})).await;
    let path = format!("/users/alice/devices/{}", device["id"].as_str().unwrap());
    assert_eq!(api.call("DELETE", &path, Some(&token), None).await.0, 204);
    let (status, body) = api.call("DELETE", &path, Some(&token), None).await;
    assert_eq!(status, 404, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("no active device"));
}

#[actix_web::test]
async fn requeue_takes_what_its_schema_allows_and_refuses_the_rest() {
    let api = api().await;
    let admin = Some(ADMIN_TOKEN);
    let empty = json!({"requeued": [], "skipped": []});
    // JSON Schema's integer includes 1208.0; a well-formed id beyond any shard names nothing.
    for body in [json!({"all": true, "limit": 1208.0}), json!({"ids": ["65536:99999999999999999999-0"]})] {
        let (status, report) = api.post("/admin/dlq/requeue", admin, body.clone()).await;
        assert_eq!((status, &report), (200, &empty), "{body}");
    }
    for body in [
        json!({"all": true, "limit": 1.5}),
        json!({"all": true, "limit": 0}),
        json!({"all": true, "limit": 10001}),
        json!({"ids": ["+1:1-1"]}),
        json!({"ids": vec!["0:1-1"; 1001]}),
        json!({"ids": [format!("0:{}-0", "1".repeat(50))]}),
        json!({"ids": ["0:1-1"], "all": true}),
        json!({}),
    ] {
        let (status, resp) = api.post("/admin/dlq/requeue", admin, body.clone()).await;
        assert_eq!((status, code(&resp)), (422, "invalid_value"), "{body}: {resp}");
    }
}

#[actix_web::test]
async fn the_openapi_document_states_the_constraints_the_server_enforces() {
    let api = api().await;
    let (_, doc) = api.get("/openapi.json", None).await;
    let op = |path: &str, method: &str| doc["paths"][path][method].clone();
    let param = |op: &Value, name: &str| {
        op["parameters"].as_array().unwrap().iter().find(|p| p["name"] == name).cloned().unwrap_or(Value::Null)
    };
    let remove = op("/users/{user_id}/devices/{device_id}", "delete");
    assert_eq!(param(&remove, "device_id")["schema"]["format"], "uuid");
    assert_eq!(param(&op("/notifications/{id}/retry", "post"), "id")["schema"]["format"], "uuid");
    let failed = op("/users/{user_id}/notifications/failed", "get");
    let limit = &param(&failed, "limit")["schema"];
    assert_eq!((limit["minimum"].as_i64(), limit["maximum"].as_i64()), (Some(1), Some(100)), "{limit}");
    let limit = &param(&op("/admin/dlq", "get"), "limit")["schema"];
    assert_eq!((limit["minimum"].as_i64(), limit["maximum"].as_i64()), (Some(1), Some(1000)), "{limit}");
    let days = &param(&op("/admin/metrics", "get"), "days")["schema"];
    assert_eq!((days["minimum"].as_i64(), days["maximum"].as_i64()), (Some(1), Some(90)), "{days}");
    let register = op("/users/{user_id}/devices", "post");
    let body = &register["requestBody"]["content"]["application/json"]["schema"];
    let providers: Vec<&Value> =
        body["oneOf"].as_array().unwrap().iter().map(|a| &a["properties"]["provider"]["enum"][0]).collect();
    assert_eq!(providers, [&json!("expo"), &json!("fcm"), &json!("apns"), &json!("email")]);
    for status in ["201", "400", "401", "403", "409", "413", "422"] {
        assert!(register["responses"][status].is_object(), "POST devices does not list {status}");
    }
    for status in ["200", "400", "401", "413", "422"] {
        assert!(op("/admin/dlq/requeue", "post")["responses"][status].is_object(), "requeue does not list {status}");
    }
}

#[actix_web::test]
async fn postgres_out_of_reach_is_a_503_naming_it_not_a_500() {
    let api = api().await;
    let token = api.token("alice");
    assert_eq!(api.get("/users/alice/notifications/failed", Some(&token)).await.0, 200);
    // The database refuses new connections and every open one is cut: the pool has none left.
    let base = crate::helpers::base_database_url();
    let (admin, connection) = tokio_postgres::connect(&base, tokio_postgres::NoTls).await.unwrap();
    actix_rt::spawn(connection);
    let db = &api.app.db_name;
    admin.batch_execute(&format!("ALTER DATABASE {db} WITH ALLOW_CONNECTIONS false")).await.unwrap();
    admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", &[db]).await.unwrap();
    let (status, body) = api.get("/users/alice/notifications/failed", Some(&token)).await;
    assert_eq!((status, code(&body)), (503, "unavailable"), "{body}");
    assert!(body["error"]["message"].as_str().unwrap().starts_with("postgres is unavailable"), "{body}");
    let (status, _) = api.post("/users/alice/devices", Some(&token), json!({"provider": "fcm", "token": "t"})).await;
    assert_eq!(status, 503);
    admin.batch_execute(&format!("ALTER DATABASE {db} WITH ALLOW_CONNECTIONS true")).await.unwrap();
    // Back: the pool connects again.
    eventually(Duration::from_secs(10), || async {
        (api.get("/users/alice/notifications/failed", Some(&token)).await.0 == 200).then_some(())
    })
    .await;
}
