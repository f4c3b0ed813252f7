//! `listener.max_backlog`: the drainers stop claiming once the streams hold that many entries,
//! so that a backlog of millions waits in Postgres (durable, on disk) rather than in Redis
//! memory, and claim again as the workers catch up.

use crate::helpers::{add_users, eventually, insert_bulk, prepare_with, wait_for_passes, CapturedLog};
use notify_relay::startup::ProcessRoles;
use serde_json::Value;
use std::time::Duration;

fn backlog_lines(log: &CapturedLog) -> Vec<Value> {
    log.lines().into_iter().filter(|l| l["event"] == "BACKLOG_FULL").collect()
}

#[actix_web::test]
async fn claiming_waits_while_the_streams_hold_max_backlog_entries_and_goes_on_as_workers_read() {
    let mut app = prepare_with(|s| {
        s.listener.batch_size = 10;
        s.listener.drainers = 1;
        s.listener.max_backlog = 20;
        // The alert check's passes tell that time went by (no fixed sleep).
        s.alerts.interval = Duration::from_millis(100);
    })
    .await;
    add_users(&app, 100).await;
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
