//! Health, readiness and the actor inspection endpoint.

use crate::api::code;
use crate::helpers::{spawn_app, ADMIN_TOKEN};

#[actix_web::test]
async fn healthz_and_readyz_report_ok_when_everything_runs() {
    let app = spawn_app().await;

    let (status, body) = app.get("/healthz", None).await;
    assert_eq!(status, 200);
    assert_eq!(body, serde_json::json!({"status": "ok", "postgres": "ok", "redis": "ok"}));
    let (status, body) = app.get("/readyz", None).await;
    assert_eq!(status, 200, "{body}");
}

#[actix_web::test]
async fn admin_actors_refuses_a_missing_or_wrong_token() {
    let app = spawn_app().await;

    let (status, body) = app.get("/admin/actors", None).await;
    assert_eq!((status, code(&body)), (401, "unauthorized"));
    let (status, _) = app.get("/admin/actors", Some("not-the-token")).await;
    assert_eq!(status, 401);
}

#[actix_web::test]
async fn admin_actors_lists_every_actor_with_its_mailbox_figures() {
    let app = spawn_app().await;

    let (status, body) = app.get("/admin/actors", Some(ADMIN_TOKEN)).await;

    assert_eq!(status, 200);
    let actors = body["actors"].as_array().expect("actors array");
    for kind in ["listener", "stream_reader", "sender", "delay", "claim", "outcome_writer"] {
        let actor = actors.iter().find(|a| a["kind"] == kind).unwrap_or_else(|| panic!("no {kind} in {body}"));
        for field in ["name", "mailbox_len", "mailbox_capacity", "handled", "restarts", "last_error"] {
            assert!(actor.get(field).is_some(), "{kind} lacks {field}");
        }
        assert!(actor["mailbox_capacity"].as_u64().unwrap() > 0);
        assert_eq!(actor["running"], true);
    }
}

#[actix_web::test]
async fn unknown_routes_answer_a_json_404() {
    let app = spawn_app().await;
    let (status, body) = app.get("/nope", None).await;
    assert_eq!((status, code(&body)), (404, "not_found"));
}

#[actix_web::test]
async fn readyz_turns_503_when_a_consumer_group_is_missing() {
    // API only: no reader that would recreate the group behind the test's back.
    let mut app = crate::helpers::prepare().await;
    app.start_with(notify_relay::startup::ProcessRoles::parse("api").unwrap()).await;
    assert_eq!(app.get("/readyz", None).await.0, 200);
    app.destroy_group().await;

    let (status, body) = app.get("/readyz", None).await;

    assert_eq!(status, 503);
    assert_eq!(body["consumer_groups"], false);
    assert_eq!(body["migrations"], true);
}

#[actix_web::test]
async fn a_destroyed_consumer_group_is_recreated_and_delivery_goes_on() {
    let app = spawn_app().await;
    app.add_device("gus", "expo", "ExponentPushToken[gus]").await;
    app.destroy_group().await;

    let id = app.notify("gus", serde_json::json!({"title": "after NOGROUP"})).await;

    assert_eq!(app.final_status(id).await.0, "delivered");
    assert_eq!(app.get("/readyz", None).await.0, 200);
}
