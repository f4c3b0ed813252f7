//! Claiming across processes: a live worker keeps its entries however long their outcome takes,
//! and the claim actor looks at every pending entry before it retires one.

use crate::helpers::{eventually, expo_job, prepare, TestApp};
use notify_relay::startup::ProcessRoles;
use serde_json::json;
use std::time::Duration;

#[actix_web::test]
async fn a_worker_whose_outcome_writer_stalls_longer_than_min_idle_keeps_its_entry() {
    // The shipped k8s layout: workers and the scheduler (with the claim actor) in different
    // processes. The worker has sent; storing the outcome hangs (Postgres locks, a slow commit).
    let mut app = prepare().await;
    app.env.insert("NOTIFY__CLAIM__MIN_IDLE_MS".into(), "2100".into());
    let token = "ExponentPushToken[jo]";
    let (id, device) = app.queued_target("jo", token, &json!({}), 0).await;
    let blocker = app.connect_db().await;
    blocker.batch_execute("BEGIN").await.unwrap();
    blocker.execute("SELECT 1 FROM delivery WHERE notification_id = $1 FOR UPDATE", &[&id]).await.unwrap();
    app.start_with(ProcessRoles::parse("worker").unwrap()).await;
    let scheduler = app.start_replica_with(ProcessRoles::parse("scheduler").unwrap()).await;
    app.enqueue(&expo_job(id, device, "jo", token, json!({"title": "once"}))).await;
    eventually(Duration::from_secs(10), || async { (app.expo.sends_of(id, token) == 1).then_some(()) }).await;

    // Twenty claim passes of the scheduler (4 s) while the outcome cannot be stored: the entry
    // is pending for twice claim.min_idle_ms.
    let passes = TestApp::handled(&scheduler, "claim");
    eventually(Duration::from_secs(30), || async {
        (TestApp::handled(&scheduler, "claim") >= passes + 20).then_some(())
    })
    .await;
    blocker.batch_execute("COMMIT").await.unwrap();

    assert_eq!(app.final_status(id).await.0, "delivered");
    assert_eq!(app.expo.sends_of(id, token), 1, "the scheduler took over a send that was alive");
    scheduler.stop(Duration::from_secs(5)).await;
    app.cleanup().await;
}

#[actix_web::test]
async fn entries_over_max_deliveries_far_down_the_pending_list_are_retired_not_sent() {
    // A crash with many entries pending: the over-delivered ones are not among the oldest 100.
    let mut app = prepare().await;
    let mut targets = Vec::new();
    for i in 0..150 {
        let (user, token) = (format!("p{i}"), format!("ExponentPushToken[p{i}]"));
        let (id, device) = app.queued_target(&user, &token, &json!({}), 0).await;
        app.enqueue(&expo_job(id, device, &user, &token, json!({"title": "x"}))).await;
        targets.push((id, token));
    }
    let stream = app.keys.stream(0);
    let mut conn = app.redis.clone();
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&stream)
        .arg(actors::keys::GROUP)
        .arg(0)
        .arg("MKSTREAM")
        .query_async(&mut conn)
        .await
        .unwrap();
    let read: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(actors::keys::GROUP)
        .arg("dead-0")
        .arg("COUNT")
        .arg(150)
        .arg("STREAMS")
        .arg(&stream)
        .arg(">")
        .query_async(&mut conn)
        .await
        .unwrap();
    drop(read);
    let pending: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
        .arg(&stream)
        .arg(actors::keys::GROUP)
        .arg("-")
        .arg("+")
        .arg(150)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(pending.len(), 150);
    for (n, (entry, ..)) in pending.iter().enumerate() {
        // Long idle, and the newest 30 handed out ten times already (claim.max_deliveries is 5).
        let times = if n >= 120 { 10 } else { 1 };
        let _: redis::Value = redis::cmd("XCLAIM")
            .arg(&stream)
            .arg(actors::keys::GROUP)
            .arg("dead-0")
            .arg(0)
            .arg(entry)
            .arg("IDLE")
            .arg(600_000)
            .arg("RETRYCOUNT")
            .arg(times)
            .arg("JUSTID")
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    app.start().await;

    app.all_final(Duration::from_secs(30)).await;
    for (n, (id, token)) in targets.iter().enumerate() {
        let (status, _, error) = app.status(*id).await;
        if n >= 120 {
            assert_eq!(status, "failed", "target {n}");
            assert!(error.unwrap_or_default().contains("handed out 10 times without an outcome"), "target {n}");
            assert_eq!(app.expo.sends_of(*id, token), 0, "target {n} was sent again");
        } else {
            assert_eq!(status, "delivered", "target {n}");
            assert_eq!(app.expo.sends_of(*id, token), 1, "target {n}");
        }
    }
    app.cleanup().await;
}
