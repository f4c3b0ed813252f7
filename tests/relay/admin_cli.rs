//! `notify-relay admin …` against a real database and Redis.

use crate::helpers::{eventually, spawn_app, spawn_app_with, wait_for_passes, TestApp};
use notify_relay::admin::{run, AdminCommand};
use serde_json::{json, Value};
use std::time::Duration;
use uuid::Uuid;

async fn admin(app: &TestApp, command: AdminCommand) -> String {
    let mut out = Vec::new();
    run(&app.settings, command, &mut out).await.expect("admin command");
    String::from_utf8(out).expect("utf-8 output")
}

/// A dead letter: a device that keeps answering MessageRateExceeded, with max_attempts 2.
async fn app_with_a_dead_letter() -> (TestApp, uuid::Uuid) {
    let app = spawn_app_with(|s| s.retry.max_attempts = 2).await;
    app.add_device("gina", "expo", "ExponentPushToken[gina-ratelimited]").await;
    let id = app.notify("gina", json!({"title": "t"})).await;
    assert_eq!(app.final_status(id).await.0, "failed");
    app.wait_for_dead_letters(1).await;
    (app, id)
}

#[actix_web::test]
async fn inspect_dlq_prints_a_table_or_json_and_requeue_dlq_brings_letters_back() {
    let (app, id) = app_with_a_dead_letter().await;
    let table = admin(&app, AdminCommand::InspectDlq { limit: 10, json: false }).await;
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("ID") && lines[0].contains("REASON") && lines[0].contains("NOTIFICATION"), "{table}");
    assert!(lines[1].contains(&id.to_string()) && lines[1].contains("expo"), "{table}");
    assert_eq!(lines.last(), Some(&"1 dead letter(s)"));
    let doc: Value =
        serde_json::from_str(&admin(&app, AdminCommand::InspectDlq { limit: 10, json: true }).await).unwrap();
    assert_eq!(doc["items"][0]["job"]["notification_id"], id.to_string());

    app.expo.forgive("ratelimited");
    let out = admin(&app, AdminCommand::RequeueDlq { ids: vec![], all: true, limit: 100 }).await;
    assert_eq!(out.trim(), "requeued 1 dead letter(s), skipped 0");
    eventually(Duration::from_secs(20), || async { (app.status(id).await.0 == "delivered").then_some(()) }).await;
    assert_eq!(admin(&app, AdminCommand::InspectDlq { limit: 10, json: false }).await.trim(), "no dead letters");
    // An id that names no letter (this one was requeued above) is said to be skipped, and why.
    let letter = doc["items"][0]["id"].as_str().expect("the letter's id").to_string();
    let out = admin(&app, AdminCommand::RequeueDlq { ids: vec![letter.clone()], all: false, limit: 1 }).await;
    assert_eq!(
        out.trim(),
        format!("requeued 0 dead letter(s), skipped 1\n  skipped {letter}: no such dead letter (requeued already, or trimmed past redis.dlq_max_len)")
    );
    let mut out = Vec::new();
    let err = run(&app.settings, AdminCommand::RequeueDlq { ids: vec!["junk".into()], all: false, limit: 1 }, &mut out)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("--id junk"), "{err}");
}

#[actix_web::test]
async fn requeue_failed_filters_by_user_counts_in_a_dry_run_and_retries() {
    let app = spawn_app().await;
    for user in ["hank", "hank", "ivy"] {
        app.add_device(user, "expo", &format!("ExponentPushToken[{user}-{}-unregistered]", uuid::Uuid::new_v4())).await;
    }
    let mut ids = Vec::new();
    for user in ["hank", "hank", "ivy"] {
        let id = app.notify(user, json!({"title": "x"})).await;
        assert_eq!(app.final_status(id).await.0, "failed");
        ids.push(id);
    }
    let dry = RequeueFailed { user: Some("hank"), dry_run: true, since: None };
    assert_eq!(
        admin(&app, dry.command()).await.trim(),
        "would requeue 2 failed notification(s) (dry run: nothing changed)"
    );
    assert_eq!(app.count("SELECT count(*) FROM notification WHERE status = 'failed'").await, 3);
    // hank gets a working device; his two notifications are retried and delivered.
    app.add_device("hank", "expo", "ExponentPushToken[hank-works]").await;
    let real = RequeueFailed { user: Some("hank"), dry_run: false, since: Some("1h") };
    assert_eq!(admin(&app, real.command()).await.trim(), "requeued 2 failed notification(s)");
    for id in &ids[..2] {
        eventually(Duration::from_secs(20), || async { (app.status(*id).await.0 == "delivered").then_some(()) }).await;
    }
    assert_eq!(app.status(ids[2]).await.0, "failed", "ivy's was not touched");
    let future = RequeueFailed { user: None, dry_run: true, since: Some("2999-01-01") };
    assert!(admin(&app, future.command()).await.starts_with("would requeue 0"));
}

struct RequeueFailed {
    user: Option<&'static str>,
    dry_run: bool,
    since: Option<&'static str>,
}

impl RequeueFailed {
    fn command(&self) -> AdminCommand {
        AdminCommand::RequeueFailed {
            user: self.user.map(str::to_string),
            since: self.since.map(str::to_string),
            dry_run: self.dry_run,
            batch: 1,
        }
    }
}

/// An app with an entry of `user`'s left pending by a dead consumer, and a claim actor that
/// keeps away from it (60 s idle): only the admin commands can free it.
async fn app_with_an_orphan(user: &str) -> (TestApp, Uuid) {
    let app = spawn_app_with(|s| {
        s.claim.min_idle = Duration::from_secs(60);
        s.listener.stale_after = Duration::from_secs(120);
    })
    .await;
    let token = format!("ExponentPushToken[{user}]");
    let (id, _) = app.orphaned_entry(user, &token, json!({"title": "stuck"})).await;
    (app, id)
}

#[actix_web::test]
async fn claim_stuck_moves_entries_of_a_dead_consumer_back_for_live_workers() {
    let (app, id) = app_with_an_orphan("jack").await;
    // Two claim passes ran after the entry was orphaned, and left it (idle < claim.min_idle_ms).
    wait_for_passes(app.app.as_ref().expect("started"), "claim", 2).await;
    assert_eq!(app.status(id).await.0, "queued");
    assert_eq!(app.pending_entries().await, 1, "still pending with the dead consumer");
    let out = admin(&app, AdminCommand::ClaimStuck { min_idle_ms: Some(100) }).await;
    assert_eq!(out.trim(), "moved 1 stuck entry back into the stream");
    assert_eq!(app.final_status(id).await.0, "delivered");
    assert_eq!(app.expo.sends_of(id, "ExponentPushToken[jack]"), 1);
}

#[actix_web::test]
async fn reset_group_asks_for_yes_and_then_hands_pending_entries_out_again() {
    let (app, id) = app_with_an_orphan("kim").await;
    let mut out = Vec::new();
    let err = run(&app.settings, AdminCommand::ResetGroup { yes: false }, &mut out).await.unwrap_err();
    assert!(err.to_string().contains("--yes"), "{err}");
    assert_eq!(app.status(id).await.0, "queued", "nothing happened without --yes");
    // Through the binary too: a non-zero exit and the reason on stderr.
    let refused = std::process::Command::new(env!("CARGO_BIN_EXE_notify-relay"))
        .args(["admin", "reset-group"])
        .env_remove("NOTIFY_CONFIG")
        .envs(app.binary_env())
        .output()
        .expect("run the binary");
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--yes"));

    let out = admin(&app, AdminCommand::ResetGroup { yes: true }).await;
    assert_eq!(out.trim(), "consumer group reset on 1 shard(s); 1 entry that were pending will be handed out again");
    assert_eq!(app.final_status(id).await.0, "delivered");
    assert_eq!(app.expo.sends_of(id, "ExponentPushToken[kim]"), 1);
}
