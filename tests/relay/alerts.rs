//! The scheduler's alert check: `LAG_HIGH` while entries wait for a worker, `DLQ_GROWING` while
//! dead letters pile up, each logged at every check the condition holds and no longer once it
//! ends (docs/alerts.md); and the start-up warning for a Redis that may evict the relay's keys.

use crate::helpers::{
    add_users, eventually, free_port, notify_each_user, prepare_with, wait_for_passes, CapturedLog, PrivateRedis,
    TestApp,
};
use notify_relay::configuration::Secret;
use notify_relay::startup::{Application, ProcessRoles};
use serde_json::Value;
use std::time::Duration;

/// Checks every 100 ms, with thresholds nothing here reaches unless `change` lowers them.
async fn watched(change: impl FnOnce(&mut notify_relay_engine::settings::AlertSettings)) -> TestApp {
    prepare_with(|s| {
        s.alerts.interval = Duration::from_millis(100);
        s.alerts.dlq_length_max = 1_000;
        s.alerts.dlq_added_max = 1_000;
        s.alerts.lag_max = 1_000;
        s.alerts.lag_age_max = Duration::from_secs(3600);
        change(&mut s.alerts);
    })
    .await
}

fn events(log: &CapturedLog, event: &str) -> Vec<Value> {
    log.lines().into_iter().filter(|l| l["event"] == event).collect()
}

/// Waits for a line of `event` that `accept` takes, and returns it.
async fn logged(log: &CapturedLog, event: &str, accept: impl Fn(&Value) -> bool) -> Value {
    eventually(Duration::from_secs(10), || async { events(log, event).into_iter().find(|l| accept(l)) }).await
}

fn app_of(app: &TestApp) -> &Application {
    app.app.as_ref().expect("started")
}

#[actix_web::test]
async fn lag_high_is_logged_while_entries_wait_for_a_worker_and_stops_once_they_are_read() {
    let mut app = watched(|a| a.lag_max = 3).await;
    add_users(&app, 5).await;
    // A listener fans out and a scheduler checks, but nobody reads the stream.
    let log = app.start_logged(ProcessRoles::parse("listener,scheduler").expect("roles")).await;
    notify_each_user(&app, 5).await;

    let line = logged(&log, "LAG_HIGH", |l| l["lag"] == 5).await;
    assert_eq!(line["level"], "WARN", "{line}");
    assert_eq!((line["lag_max"].as_u64(), line["shard"].as_u64()), (Some(3), Some(0)), "{line}");
    assert!(line["oldest_unread_ms"].as_u64().is_some(), "the age of the oldest entry is given: {line}");

    // A worker reads and delivers everything; from then on the checks are quiet.
    let worker = app.start_replica_with(ProcessRoles::parse("worker").expect("roles")).await;
    app.all_final(Duration::from_secs(10)).await;
    wait_for_passes(app_of(&app), "alerts", 1).await;
    let raised = events(&log, "LAG_HIGH").len();
    wait_for_passes(app_of(&app), "alerts", 3).await;
    assert_eq!(events(&log, "LAG_HIGH").len(), raised, "no LAG_HIGH once nothing waits");
    worker.stop(Duration::from_secs(5)).await;
}

#[actix_web::test]
async fn one_entry_waiting_too_long_is_lag_high_however_few_wait() {
    let mut app = watched(|a| a.lag_age_max = Duration::from_millis(300)).await;
    add_users(&app, 2).await;
    let log = app.start_logged(ProcessRoles::parse("listener,scheduler").expect("roles")).await;
    notify_each_user(&app, 2).await;

    let line = logged(&log, "LAG_HIGH", |l| l["lag"] == 2).await;
    let age = line["oldest_unread_ms"].as_u64().expect("an age");
    assert!(age > 300, "raised for the age of the oldest entry, past 300 ms: {line}");
    assert_eq!(line["lag_age_max_ms"], 300, "{line}");
}

#[actix_web::test]
async fn dlq_growing_counts_each_new_dead_letter_once_and_holds_while_the_dlq_is_over_its_length() {
    // Any dead letter written since the previous check raises it; so do more than 2 held.
    let mut app = watched(|a| {
        a.dlq_added_max = 0;
        a.dlq_length_max = 2;
    })
    .await;
    let log = app.start_logged(ProcessRoles::ALL).await;
    // A first check has run, so every letter below is written after a check that saw none.
    wait_for_passes(app_of(&app), "alerts", 1).await;
    for user in ["ann", "bob", "cem"] {
        app.add_device(user, "expo", &format!("ExponentPushToken[unregistered-{user}]")).await;
        app.notify(user, serde_json::json!({"title": "to a dead token"})).await;
    }
    app.wait_for_dead_letters(3).await;

    // Held over the length: raised at every check, with nothing new added.
    logged(&log, "DLQ_GROWING", |l| l["dlq_length"] == 3 && l["dlq_added"] == 0).await;
    let lines = events(&log, "DLQ_GROWING");
    let added: u64 = lines.iter().filter_map(|l| l["dlq_added"].as_u64()).sum();
    assert_eq!(added, 3, "each dead letter counted as new exactly once: {lines:?}");
    let first = &lines[0];
    assert_eq!(first["level"], "WARN", "{first}");
    assert_eq!((first["dlq_length_max"].as_u64(), first["dlq_added_max"].as_u64()), (Some(2), Some(0)), "{first}");

    // Once the operator has dealt with them (here: dropped), the checks are quiet again.
    let mut conn = app.redis.clone();
    let _: i64 =
        redis::cmd("XTRIM").arg(app.keys.dlq(0)).arg("MAXLEN").arg(0).query_async(&mut conn).await.expect("XTRIM");
    wait_for_passes(app_of(&app), "alerts", 1).await;
    let raised = events(&log, "DLQ_GROWING").len();
    wait_for_passes(app_of(&app), "alerts", 3).await;
    assert_eq!(events(&log, "DLQ_GROWING").len(), raised, "no DLQ_GROWING once the DLQ is empty");
}

#[actix_web::test]
async fn a_disabled_check_never_runs() {
    let mut app = watched(|a| {
        a.enabled = false;
        a.lag_max = 0;
    })
    .await;
    add_users(&app, 1).await;
    let log = app.start_logged(ProcessRoles::parse("listener,scheduler").expect("roles")).await;
    notify_each_user(&app, 1).await;
    eventually(Duration::from_secs(10), || async { (app.stream_len().await == 1).then_some(()) }).await;
    // The delay actor ticks every 20 ms in the tests: 25 of its passes span five alert intervals.
    wait_for_passes(app_of(&app), "delay", 25).await;
    assert_eq!(TestApp::handled(app_of(&app), "alerts"), 0);
    assert!(events(&log, "LAG_HIGH").is_empty());
}

#[actix_web::test]
async fn a_redis_that_may_evict_relay_keys_is_warned_about_at_start_up() {
    let redis_server = PrivateRedis::start(free_port()).await;
    let url = format!("redis://127.0.0.1:{}", redis_server.port);
    let mut conn = crate::helpers::redis_connection(&url).await.expect("the private redis");
    let mut app = prepare_with(|s| s.redis.url = Secret::new(url.clone())).await;
    let mut warnings = Vec::new();
    for policy in ["noeviction", "allkeys-lru"] {
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("maxmemory-policy")
            .arg(policy)
            .query_async(&mut conn)
            .await
            .expect("CONFIG SET");
        let log = app.start_logged(ProcessRoles::parse("api").expect("roles")).await;
        app.stop().await;
        warnings.push(events(&log, "REDIS_EVICTION_POSSIBLE"));
    }
    assert!(warnings[0].is_empty(), "noeviction is what the relay asks for: {:?}", warnings[0]);
    let line = warnings[1].first().expect("a warning for allkeys-lru");
    assert_eq!(
        (line["level"].as_str(), line["maxmemory_policy"].as_str()),
        (Some("WARN"), Some("allkeys-lru")),
        "{line}"
    );
}
