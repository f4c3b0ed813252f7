//! `listener.max_backlog`: the drainers stop claiming once the streams hold that many entries,
//! so that a backlog of millions waits in Postgres (durable, on disk) rather than in Redis
//! memory, and claim again as the workers catch up.

use crate::helpers::{add_users, eventually, insert_bulk, prepare_with, wait_for_passes, CapturedLog, TestApp};
use notify_relay::configuration::Settings;
use notify_relay::startup::ProcessRoles;
use serde_json::Value;
use std::time::Duration;
use uuid::Uuid;

fn backlog_lines(log: &CapturedLog) -> Vec<Value> {
    log.lines().into_iter().filter(|l| l["event"] == "BACKLOG_FULL").collect()
}

/// An app whose one drainer claims batches of 10 and stops claiming at 20 stream entries, with
/// 100 users; `more` changes further settings.
async fn backlogged(more: impl FnOnce(&mut Settings)) -> TestApp {
    let app = prepare_with(|s| {
        s.listener.batch_size = 10;
        s.listener.drainers = 1;
        s.listener.max_backlog = 20;
        more(s);
    })
    .await;
    add_users(&app, 100).await;
    app
}

#[actix_web::test]
async fn claiming_waits_while_the_streams_hold_max_backlog_entries_and_goes_on_as_workers_read() {
    // The alert check's passes tell that time went by (no fixed sleep).
    let mut app = backlogged(|s| s.alerts.interval = Duration::from_millis(100)).await;
    // A listener fans out, nobody reads the streams.
    let log = app.start_logged(ProcessRoles::parse("listener,scheduler").expect("roles")).await;
    insert_bulk(&app, 100, 100).await;

    let full = eventually(Duration::from_secs(10), || async { backlog_lines(&log).into_iter().next() }).await;
    assert_eq!(
        (full["full"].as_bool(), full["entries"].as_u64(), full["max_backlog"].as_u64()),
        (Some(true), Some(20), Some(20)),
        "{full}"
    );
    // Two batches claimed, the rest still pending; and it stays so while nobody reads.
    let app_ref = app.app.as_ref().expect("started");
    wait_for_passes(app_ref, "alerts", 3).await;
    let pending = "SELECT count(*) FROM notification WHERE status = 'pending'";
    assert_eq!((app.stream_len().await, app.count(pending).await), (20, 80));

    // A worker reads and delivers: the drainer claims again, and everything is delivered.
    let worker = app.start_replica_with(ProcessRoles::parse("worker").expect("roles")).await;
    app.all_final(Duration::from_secs(20)).await;
    let delivered = "SELECT count(*) FROM notification WHERE status = 'delivered'";
    assert_eq!(app.count(delivered).await, 100);
    let again =
        eventually(Duration::from_secs(10), || async { backlog_lines(&log).into_iter().find(|l| l["full"] == false) })
            .await;
    assert!(again["entries"].as_u64().is_some_and(|n| n < 20), "{again}");
    worker.stop(Duration::from_secs(5)).await;
}

#[actix_web::test]
async fn a_drainer_waiting_for_room_stops_at_shutdown_without_logging_that_it_claims_again() {
    // The wait ends at shutdown with the streams still full: "claiming again" (full: false)
    // would tell an operator something that did not happen.
    let mut app = backlogged(|_| {}).await;
    let log = app.start_logged(ProcessRoles::parse("listener,scheduler").expect("roles")).await;
    insert_bulk(&app, 100, 100).await;
    eventually(Duration::from_secs(10), || async { backlog_lines(&log).into_iter().find(|l| l["full"] == true) }).await;

    assert!(app.stop().await, "the app stops while its drainer waits for room");
    // The drainer (a task of its own) sees the shutdown at its next look at the streams.
    eventually(Duration::from_secs(10), || async { backlog_lines(&log).into_iter().find(|l| l["shutdown"] == true) })
        .await;
    let pending = "SELECT count(*) FROM notification WHERE status = 'pending'";
    assert_eq!((app.stream_len().await, app.count(pending).await), (20, 80), "nothing claimed at shutdown");
    let lines = backlog_lines(&log);
    let said: Vec<_> = lines.iter().map(|l| (l["full"].as_bool(), l["shutdown"].as_bool())).collect();
    assert_eq!(said, [(Some(true), None), (Some(true), Some(true))], "{lines:?}");
}

#[actix_web::test]
async fn a_row_committed_late_with_an_older_created_at_is_claimed_while_a_backlog_drains() {
    // A backlog's claims start where the previous batch did (the left edge of
    // notification_pending_idx holds the entries of every row claimed since vacuum ran). A row
    // older than that, committed later by a transaction that began first (created_at is its
    // start) and with no doorbell of its own, is still claimed and delivered once.
    let mut app = backlogged(|s| {
        // Neither a later sweep nor a doorbell may be what finds the late row.
        s.listener.sweep_interval = Duration::from_secs(3600);
        s.alerts.interval = Duration::from_millis(100);
    })
    .await;
    let late = app.connect_db().await;
    late.batch_execute("BEGIN; SET LOCAL session_replication_role = replica").await.expect("begin");
    let row = late
        .query_one(
            "INSERT INTO notification (user_id, type, payload) VALUES ('u1', 'late', '{\"title\": \"late\"}') RETURNING id",
            &[],
        )
        .await
        .expect("the late row");
    let id: Uuid = row.get(0);
    // The listener starts on an empty table (the late row is not committed) and settles: its
    // start-up drains (the sweep's, the one after LISTEN) find nothing.
    let log = app.start_logged(ProcessRoles::parse("listener,scheduler").expect("roles")).await;
    eventually(Duration::from_secs(10), || async {
        log.lines().into_iter().find(|l| l["msg"] == "listening for new notifications")
    })
    .await;
    wait_for_passes(app.app.as_ref().expect("started"), "alerts", 3).await;
    // The backlog without a doorbell of its own, then one ring. (After each full batch the
    // drainer also asks for a sibling, whose first claim starts from the oldest: the floor's own
    // rules, a claim from the oldest every second and before a drainer stops, are the unit tests
    // in actors/src/pipeline/drain.rs; this one shows the whole: nothing is left behind.)
    app.db
        .batch_execute(
            "BEGIN; SET LOCAL session_replication_role = replica;
             INSERT INTO notification (user_id, type, payload)
             SELECT 'u' || (1 + g % 100), 'backlog', jsonb_build_object('title', 'n' || g) FROM generate_series(1, 100) g;
             COMMIT;
             SELECT pg_notify('notification_insert', '')",
        )
        .await
        .expect("the backlog and its ring");

    // Two batches claimed from the rows already committed: the drainer waits for room, its
    // next claim to start at the second batch's oldest row, after the late row's created_at.
    eventually(Duration::from_secs(10), || async { backlog_lines(&log).into_iter().find(|l| l["full"] == true) }).await;
    late.batch_execute("COMMIT").await.expect("commit the late row");
    let older = "SELECT count(*) FROM notification n, notification l
                  WHERE l.type = 'late' AND n.type <> 'late' AND n.status = 'queued' AND n.created_at > l.created_at";
    assert_eq!(app.count(older).await, 20, "the claimed rows are younger than the late one");

    let worker = app.start_replica_with(ProcessRoles::parse("worker").expect("roles")).await;
    app.all_final(Duration::from_secs(20)).await;
    let delivered = "SELECT count(*) FROM notification WHERE status = 'delivered'";
    assert_eq!(app.count(delivered).await, 101);
    assert_eq!(app.expo.sends_of(id, "ExponentPushToken[u1]"), 1);
    worker.stop(Duration::from_secs(5)).await;
}
