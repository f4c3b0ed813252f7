//! The producer routes of issue 12: reading a notification with its targets, cancelling one
//! before it is fanned out, a user's topic subscriptions, and the admin commands beside them
//! (`admin cancel`, `admin topics`).

use crate::api::{api, code, with_jwks, Api};
use crate::helpers::{eventually, ADMIN_TOKEN};
use notify_relay::admin::{run, AdminCommand};
use serde_json::{json, Value};
use std::time::Duration;
use uuid::Uuid;

impl Api {
    async fn put(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        self.call("PUT", path, token, None).await
    }

    async fn delete(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        self.call("DELETE", path, token, None).await
    }

    async fn cancel(&self, id: Uuid, token: Option<&str>) -> (u16, Value) {
        self.call("POST", &format!("/notifications/{id}/cancel"), token, None).await
    }

    /// A notification of `user` scheduled an hour from now: the listener leaves it alone.
    async fn scheduled(&self, user: &str) -> Uuid {
        self.app
            .one(
                "INSERT INTO notification (user_id, type, payload, send_at)
                 VALUES ($1, 'later', '{\"title\":\"later\"}', now() + interval '1 hour') RETURNING id",
                &[&user],
            )
            .await
    }

    /// A topic notification as a producer inserts it: no user, a topic.
    async fn topic_notification(&self, topic: &str) -> Uuid {
        self.app
            .one(
                "INSERT INTO notification (topic, type, payload) VALUES ($1, 'news', '{\"title\":\"hi\"}') RETURNING id",
                &[&topic],
            )
            .await
    }

    async fn wait_for_status(&self, id: Uuid, status: &str) {
        eventually(Duration::from_secs(20), || async { (self.app.status(id).await.0 == status).then_some(()) }).await;
    }
}

/// The callers of the auth matrix and the status each gets on a route of `alice`'s.
fn callers(api: &Api) -> Vec<(&'static str, Option<String>)> {
    vec![
        ("owner", Some(api.token("alice"))),
        ("another user", Some(api.token("mallory"))),
        ("service_role", Some(api.service_token())),
        ("admin token", Some(ADMIN_TOKEN.to_string())),
        ("no token", None),
    ]
}

#[actix_web::test]
async fn reading_and_cancelling_take_the_owner_a_service_or_the_admin_token() {
    let api = api().await;
    let expected =
        [("owner", 200), ("another user", 403), ("service_role", 200), ("admin token", 200), ("no token", 401)];
    let read = api.scheduled("alice").await;
    for ((who, token), (_, status)) in callers(&api).iter().zip(expected) {
        let (got, body) = api.get(&format!("/notifications/{read}"), token.as_deref()).await;
        assert_eq!(got, status, "GET by {who}: {body}");
        // Each cancel that may succeed gets a row of its own, still scheduled.
        let id = api.scheduled("alice").await;
        let (got, body) = api.cancel(id, token.as_deref()).await;
        assert_eq!(got, status, "cancel by {who}: {body}");
        let (row_status, _, error) = api.app.status(id).await;
        match status {
            200 => {
                assert_eq!(body, json!({"id": id, "status": "cancelled"}), "{who}");
                assert_eq!(row_status, "cancelled", "{who}");
                assert!(error.unwrap_or_default().starts_with("cancelled by "), "{who}");
            }
            _ => assert_eq!(row_status, "scheduled", "{who}: refused, so untouched"),
        }
    }
    // Who cancelled is the row's last_error.
    let errors: Vec<String> =
        api.app.column("SELECT last_error FROM notification WHERE status = 'cancelled' ORDER BY updated_at", &[]).await;
    assert_eq!(
        errors,
        ["cancelled by user alice", "cancelled by a service_role token", "cancelled by the admin token"]
    );
    assert_eq!(api.app.redis_counter("CANCELLED").await, 3);

    // A topic notification has no owner: a service's or the admin's only.
    let topic = api.topic_notification("no-subscribers").await;
    let (status, body) = api.get(&format!("/notifications/{topic}"), Some(&api.token("alice"))).await;
    assert_eq!((status, code(&body)), (403, "forbidden"), "{body}");
    assert_eq!(api.cancel(topic, Some(&api.token("alice"))).await.0, 403);
    assert_eq!(api.get(&format!("/notifications/{topic}"), Some(ADMIN_TOKEN)).await.0, 200);

    // Malformed and unknown ids.
    let service = api.service_token();
    for path in ["/notifications/not-a-uuid", "/notifications/67e5504410b1426f9247bb680e5fe0c8"] {
        let (status, body) = api.get(path, Some(&service)).await;
        assert_eq!((status, code(&body)), (400, "bad_request"), "{path}: {body}");
        let (status, body) = api.call("POST", &format!("{path}/cancel"), Some(&service), None).await;
        assert_eq!((status, code(&body)), (400, "bad_request"), "{path}: {body}");
    }
    let unknown = Uuid::new_v4();
    let (status, body) = api.get(&format!("/notifications/{unknown}"), Some(&service)).await;
    assert_eq!((status, code(&body)), (404, "not_found"), "{body}");
    let (status, body) = api.cancel(unknown, Some(ADMIN_TOKEN)).await;
    assert_eq!((status, code(&body)), (404, "not_found"), "{body}");
}

#[actix_web::test]
async fn a_delivered_notification_is_shown_with_both_of_its_targets() {
    let api = api().await;
    let phone = api.app.add_device("alice", "expo", "ExponentPushToken[alice-phone]").await;
    let tablet = api.app.add_device("alice", "expo", "ExponentPushToken[alice-tablet]").await;
    let id = api.app.notify("alice", json!({"title": "shipped", "data": {"order": 7}})).await;
    eventually(Duration::from_secs(20), || async {
        let delivered: i64 = api
            .app
            .one("SELECT count(*) FROM delivery WHERE notification_id = $1 AND status = 'delivered'", &[&id])
            .await;
        (delivered == 2).then_some(())
    })
    .await;
    let (status, body) = api.get(&format!("/notifications/{id}"), Some(&api.token("alice"))).await;
    assert_eq!(status, 200, "{body}");
    for (field, value) in [
        ("id", json!(id)),
        ("user_id", json!("alice")),
        ("topic", Value::Null),
        ("type", json!("test")),
        ("channel", Value::Null),
        ("priority", json!("normal")),
        ("status", json!("delivered")),
        ("payload", json!({"title": "shipped", "data": {"order": 7}})),
        ("idempotency_key", Value::Null),
        ("send_at", Value::Null),
        ("expires_at", Value::Null),
        ("collapse_key", Value::Null),
        ("parent_id", Value::Null),
    ] {
        assert_eq!(body[field], value, "{field}: {body}");
    }
    for field in ["attempt_count", "last_error", "trace_id", "created_at", "queued_at", "delivered_at", "updated_at"] {
        assert!(body.get(field).is_some(), "{field} missing: {body}");
    }
    assert!(body["trace_id"].is_string() && body["queued_at"].is_string() && body["delivered_at"].is_string());
    assert!(body.get("subscribers").is_none(), "a user's notification has no subscribers: {body}");
    let targets = body["targets"].as_array().expect("targets");
    let mut devices: Vec<&str> = targets.iter().map(|t| t["device_id"].as_str().unwrap()).collect();
    devices.sort_unstable();
    let mut expected = [phone.to_string(), tablet.to_string()];
    expected.sort_unstable();
    assert_eq!(devices, expected, "{body}");
    for t in targets {
        assert_eq!(
            (&t["provider"], &t["status"], &t["attempts"]),
            (&json!("expo"), &json!("delivered"), &json!(1)),
            "{t}"
        );
        assert!(t["provider_message_id"].is_string(), "the Expo ticket: {t}");
        for field in ["created_at", "updated_at", "delivered_at"] {
            assert!(t[field].is_string(), "{field}: {t}");
        }
        assert!(t.get("last_error").is_some() && t.get("next_attempt_at").is_some(), "{t}");
    }
    // Fanned out and delivered: too late to cancel, and the 409 says what it is.
    let (status, body) = api.cancel(id, Some(&api.token("alice"))).await;
    assert_eq!((status, code(&body)), (409, "conflict"), "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains(&format!("notification {id} is delivered")), "{body}");
}

#[actix_web::test]
async fn a_topic_notification_is_shown_with_its_subscribers_rows_by_status() {
    let api = api().await;
    let service = api.service_token();
    // bob has a device and gets it; carol has none, so her row fails.
    api.app.add_device("bob", "expo", "ExponentPushToken[bob]").await;
    for user in ["bob", "carol"] {
        let (status, body) = api.put(&format!("/users/{user}/topics/releases"), Some(&service)).await;
        assert_eq!(status, 201, "{body}");
    }
    let id = api.topic_notification("releases").await;
    api.wait_for_status(id, "delivered").await;
    eventually(Duration::from_secs(20), || async {
        let (_, body) = api.get(&format!("/notifications/{id}"), Some(ADMIN_TOKEN)).await;
        (body["subscribers"]["by_status"] == json!({"delivered": 1, "failed": 1})).then_some(())
    })
    .await;
    let (status, body) = api.get(&format!("/notifications/{id}"), Some(&service)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (&body["user_id"], &body["topic"], &body["status"]),
        (&Value::Null, &json!("releases"), &json!("delivered"))
    );
    assert_eq!(body["targets"], json!([]), "the subscribers' rows have the targets");
    assert_eq!(body["subscribers"], json!({"written": 2, "by_status": {"delivered": 1, "failed": 1}}));

    // bob reads his own row, which names the topic row.
    let child: Uuid = api.app.one("SELECT id FROM notification WHERE parent_id = $1 AND user_id = 'bob'", &[&id]).await;
    let (status, mine) = api.get(&format!("/notifications/{child}"), Some(&api.token("bob"))).await;
    assert_eq!(status, 200, "{mine}");
    assert_eq!((&mine["parent_id"], &mine["status"]), (&json!(id), &json!("delivered")), "{mine}");
    assert_eq!(mine["targets"].as_array().map(Vec::len), Some(1), "{mine}");
    assert_eq!(api.get(&format!("/notifications/{child}"), Some(&api.token("carol"))).await.0, 403);

    // Fanned out: too late to cancel.
    let (status, body) = api.cancel(id, Some(&service)).await;
    assert_eq!((status, code(&body)), (409, "conflict"), "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("is delivered"), "{body}");
}

#[actix_web::test]
async fn a_cancelled_scheduled_notification_is_never_sent_even_once_it_is_due() {
    let api = api().await;
    let token = api.token("alice");
    api.app.add_device("alice", "expo", "ExponentPushToken[alice]").await;
    let id = api.scheduled("alice").await;
    assert_eq!(api.app.status(id).await.0, "scheduled", "the insert trigger");
    let (status, body) = api.cancel(id, Some(&token)).await;
    assert_eq!((status, &body), (200, &json!({"id": id, "status": "cancelled"})));
    assert_eq!(api.app.redis_counter("CANCELLED").await, 1);

    // Its send_at passes; then a notification inserted after it is delivered, so the listener
    // has promoted what was due (it does so before every fan-out) since.
    api.app.exec("UPDATE notification SET send_at = now() - interval '1 second' WHERE id = $1", &[&id]).await;
    let later = api.app.notify("alice", json!({"title": "now"})).await;
    assert_eq!(api.app.final_status(later).await.0, "delivered");
    assert_eq!(api.app.status(id).await.0, "cancelled");
    assert_eq!(api.app.expo.sends_of(id, "ExponentPushToken[alice]"), 0, "never sent");
    assert_eq!(api.app.count("SELECT count(*) FROM delivery WHERE notification_id IN (SELECT id FROM notification WHERE status = 'cancelled')").await, 0);

    // Cancelling twice: the second is a 409 naming the status.
    let (status, body) = api.cancel(id, Some(&token)).await;
    assert_eq!((status, code(&body)), (409, "conflict"), "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("is cancelled"), "{body}");
    assert_eq!(api.app.redis_counter("CANCELLED").await, 1);
}

#[actix_web::test]
async fn topics_are_subscribed_idempotently_listed_by_name_and_unsubscribed() {
    let api = api().await;
    let owner = api.token("alice");
    let (status, body) = api.get("/users/alice/topics", Some(&owner)).await;
    assert_eq!((status, &body), (200, &json!({"items": []})));

    let (status, first) = api.put("/users/alice/topics/sports", Some(&owner)).await;
    assert_eq!(status, 201, "{first}");
    assert_eq!((&first["topic"], &first["user_id"]), (&json!("sports"), &json!("alice")));
    assert!(first["created_at"].is_string(), "{first}");
    let (status, again) = api.put("/users/alice/topics/sports", Some(&owner)).await;
    assert_eq!((status, &again), (200, &first), "subscribing again changes nothing");
    // Every character the rule allows. A `%` is not one of them: in a URL it starts an escape,
    // so `%3F` would name the topic `?`, and a literal `%` (`%25`) is refused like any other.
    let (status, body) = api.put("/users/alice/topics/A-z_0.9~:x", Some(&owner)).await;
    assert_eq!((status, &body["topic"]), (201, &json!("A-z_0.9~:x")), "{body}");
    for escaped in ["a%25b", "IzPkzIW%3FRn"] {
        let (status, body) = api.put(&format!("/users/alice/topics/{escaped}"), Some(&owner)).await;
        assert_eq!((status, code(&body)), (400, "bad_request"), "{escaped}: {body}");
    }

    let (status, list) = api.get("/users/alice/topics", Some(&owner)).await;
    assert_eq!(status, 200);
    let names: Vec<&str> = list["items"].as_array().unwrap().iter().map(|i| i["topic"].as_str().unwrap()).collect();
    assert_eq!(names, ["A-z_0.9~:x", "sports"], "by topic: {list}");
    assert_eq!(list["items"][1], json!({"topic": "sports", "created_at": first["created_at"]}));

    assert_eq!(api.delete("/users/alice/topics/sports", Some(&owner)).await.0, 204);
    let (status, body) = api.delete("/users/alice/topics/sports", Some(&owner)).await;
    assert_eq!((status, code(&body)), (404, "not_found"), "unsubscribing twice: {body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("not subscribed"), "{body}");
    let (_, list) = api.get("/users/alice/topics", Some(&owner)).await;
    assert_eq!(list["items"].as_array().map(Vec::len), Some(1));

    // Names outside the rule, and a user id Postgres cannot store.
    let service = api.service_token();
    let long = "a".repeat(257);
    for bad in ["a%20b", "a%2Fb", "%C3%A9", long.as_str()] {
        for method in ["PUT", "DELETE"] {
            let (status, body) = api.call(method, &format!("/users/alice/topics/{bad}"), Some(&service), None).await;
            assert_eq!((status, code(&body)), (400, "bad_request"), "{method} {bad}: {body}");
            assert!(body["error"]["message"].as_str().unwrap().starts_with("topic: must be 1 to 256 bytes"), "{body}");
        }
    }
    for (method, path) in
        [("PUT", "/users/a%00b/topics/x"), ("DELETE", "/users/a%00b/topics/x"), ("GET", "/users/a%00b/topics")]
    {
        let (status, body) = api.call(method, path, Some(&service), None).await;
        assert_eq!((status, code(&body)), (400, "bad_request"), "{method} {path}: {body}");
    }
}

#[actix_web::test]
async fn topic_routes_take_the_user_or_a_service_but_not_the_admin_token() {
    let api = api().await;
    let expected =
        [("owner", 200), ("another user", 403), ("service_role", 200), ("admin token", 401), ("no token", 401)];
    for ((who, token), (_, status)) in callers(&api).iter().zip(expected) {
        let t = token.as_deref();
        let topic = format!("t-{}", who.replace(' ', "-"));
        let put = api.put(&format!("/users/alice/topics/{topic}"), t).await;
        assert_eq!(put.0, if status == 200 { 201 } else { status }, "PUT by {who}: {}", put.1);
        let list = api.get("/users/alice/topics", t).await;
        assert_eq!(list.0, status, "GET by {who}: {}", list.1);
        // Removing what the service subscribed, so that a refused caller meets a real subscription.
        api.put(&format!("/users/alice/topics/{topic}"), Some(&api.service_token())).await;
        let delete = api.delete(&format!("/users/alice/topics/{topic}"), t).await;
        assert_eq!(delete.0, if status == 200 { 204 } else { status }, "DELETE by {who}: {}", delete.1);
    }
}

#[actix_web::test]
async fn subscribing_past_topics_max_per_user_is_a_409_even_when_concurrent() {
    let api = with_jwks(|s| s.topics.max_per_user = 2).await;
    let token = api.token("alice");
    for topic in ["a", "b"] {
        assert_eq!(api.put(&format!("/users/alice/topics/{topic}"), Some(&token)).await.0, 201);
    }
    let (status, body) = api.put("/users/alice/topics/c", Some(&token)).await;
    assert_eq!((status, code(&body)), (409, "conflict"), "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("topics.max_per_user"), "{body}");
    assert_eq!(api.put("/users/alice/topics/a", Some(&token)).await.0, 200, "one already had is not counted again");
    assert_eq!(api.delete("/users/alice/topics/a", Some(&token)).await.0, 204);

    // One place left, five subscriptions at once: one of them gets it.
    let puts = ["c", "d", "e", "f", "g"].map(|t| {
        let (api, token) = (&api, &token);
        async move { api.put(&format!("/users/alice/topics/{t}"), Some(token)).await.0 }
    });
    let mut statuses = futures_util::future::join_all(puts).await;
    statuses.sort_unstable();
    assert_eq!(statuses, [201, 409, 409, 409, 409]);
    assert_eq!(api.app.count("SELECT count(*) FROM topic_subscription WHERE user_id = 'alice'").await, 2);
}

#[actix_web::test]
async fn the_new_routes_are_in_the_openapi_document_and_answer_405_to_other_methods() {
    let api = api().await;
    let (_, doc) = api.get("/openapi.json", None).await;
    for (path, methods) in [
        ("/notifications/{id}", &["get"][..]),
        ("/notifications/{id}/cancel", &["post"]),
        ("/users/{user_id}/topics/{topic}", &["put", "delete"]),
        ("/users/{user_id}/topics", &["get"]),
    ] {
        for method in methods {
            assert!(doc["paths"][path][method].is_object(), "{method} {path} missing");
        }
    }
    let id = Uuid::new_v4();
    for (method, path, allow) in [
        ("POST", format!("/notifications/{id}"), "GET"),
        ("GET", format!("/notifications/{id}/cancel"), "POST"),
        ("POST", "/users/alice/topics/news".into(), "PUT, DELETE"),
        ("DELETE", "/users/alice/topics".into(), "GET"),
    ] {
        let client = awc::Client::default();
        let m = awc::http::Method::from_bytes(method.as_bytes()).unwrap();
        let mut resp = client.request(m, format!("{}{path}", api.app.api())).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 405, "{method} {path}");
        assert_eq!(resp.headers().get("allow").and_then(|v| v.to_str().ok()), Some(allow), "{method} {path}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(code(&body), "method_not_allowed");
    }
}

async fn admin(api: &Api, command: AdminCommand) -> Result<String, String> {
    let mut out = Vec::new();
    run(&api.app.settings, command, &mut out).await.map_err(|e| e.to_string())?;
    Ok(String::from_utf8(out).expect("utf-8 output"))
}

#[actix_web::test]
async fn admin_cancel_cancels_before_the_fan_out_and_fails_on_unknown_or_fanned_out_ones() {
    let api = api().await;
    let id = api.scheduled("alice").await;
    let out = admin(&api, AdminCommand::Cancel { id }).await.expect("cancelled");
    assert_eq!(out.trim(), format!("cancelled notification {id}: it will not be sent"));
    assert_eq!(
        api.app.status(id).await,
        ("cancelled".into(), 0, Some("cancelled by notify-relay admin cancel".into()))
    );
    assert_eq!(api.app.redis_counter("CANCELLED").await, 1);
    let err = admin(&api, AdminCommand::Cancel { id }).await.unwrap_err();
    assert!(err.contains(&format!("notification {id} is cancelled")), "{err}");
    let unknown = Uuid::new_v4();
    assert_eq!(
        admin(&api, AdminCommand::Cancel { id: unknown }).await.unwrap_err(),
        format!("no notification {unknown}")
    );
    // Through the binary: a non-zero exit and the reason on stderr.
    let refused = std::process::Command::new(env!("CARGO_BIN_EXE_notify-relay"))
        .args(["admin", "cancel", &id.to_string()])
        .env_remove("NOTIFY_CONFIG")
        .envs(api.app.binary_env())
        .output()
        .expect("run the binary");
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("is cancelled"), "{refused:?}");
}

#[actix_web::test]
async fn admin_topics_lists_topics_with_the_most_subscribers_first() {
    let api = api().await;
    assert_eq!(admin(&api, AdminCommand::Topics { limit: 10 }).await.unwrap().trim(), "no topic has subscribers");
    api.app
        .exec(
            "INSERT INTO topic_subscription (topic, user_id)
             SELECT 'big', 'u' || g FROM generate_series(1, 3) g
             UNION ALL SELECT 'small', 'u1'
             UNION ALL SELECT 'middle', 'u' || g FROM generate_series(1, 2) g",
            &[],
        )
        .await;
    let out = admin(&api, AdminCommand::Topics { limit: 10 }).await.unwrap();
    let rows: Vec<Vec<&str>> = out.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(
        rows,
        [
            vec!["TOPIC", "SUBSCRIBERS"],
            vec!["big", "3"],
            vec!["middle", "2"],
            vec!["small", "1"],
            vec!["3", "topic(s)"]
        ],
        "{out}"
    );
    let out = admin(&api, AdminCommand::Topics { limit: 1 }).await.unwrap();
    assert_eq!(out.lines().nth(1).map(|l| l.split_whitespace().collect::<Vec<_>>()), Some(vec!["big", "3"]));
}
