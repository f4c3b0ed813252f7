//! End-to-end outages against the real binary (issue 10): faults the fault suite (`faults.rs`)
//! did not imagine. A Redis that comes back from an older snapshot, a provider that accepts and
//! never answers, an outcome writer stalled in a process apart from the scheduler, Postgres
//! unreachable for 40 s, and workers whose provider settings differ during a rolling change.
//! Each checks the README's guarantees: every row final, nothing failed by the fault, and no
//! send repeated beyond what was in flight.

use crate::helpers::{
    add_users, eventually, insert_bulk, pg, prepare, samples_holding, wait_for_sends, PrivateRedis, TestApp,
};
use emulators::expo::ExpoEmulator;
use emulators::fcm::FcmEmulator;
use notify_relay::configuration::Secret;
use notify_relay_engine::Keys;
use std::time::{Duration, Instant};

/// (stream length, pending entries) of shard 0 on `conn`.
async fn backlog(conn: &redis::aio::MultiplexedConnection, keys: &Keys) -> (i64, i64) {
    let conn = &mut conn.clone();
    let len: i64 = redis::cmd("XLEN").arg(keys.stream(0)).query_async(conn).await.expect("XLEN");
    let summary: Vec<redis::Value> = redis::cmd("XPENDING")
        .arg(keys.stream(0))
        .arg(notify_relay_engine::GROUP)
        .query_async(conn)
        .await
        .unwrap_or_default();
    let pending = match summary.first() {
        Some(redis::Value::Int(n)) => *n,
        _ => 0,
    };
    (len, pending)
}

/// Targets and notifications that ended `failed`, and targets or notifications whose last error
/// says they gave up.
async fn failures(app: &TestApp) -> (i64, i64, i64) {
    (
        app.count("SELECT count(*) FROM delivery WHERE status = 'failed'").await,
        app.count("SELECT count(*) FROM notification WHERE status = 'failed'").await,
        app.count(
            "SELECT (SELECT count(*) FROM delivery WHERE last_error LIKE '%gave up%')
                  + (SELECT count(*) FROM notification WHERE last_error LIKE '%gave up%')",
        )
        .await,
    )
}

#[actix_web::test]
async fn the_expo_emulator_leaves_requests_unanswered_while_it_hangs() {
    let expo = ExpoEmulator::start("127.0.0.1:0", None).await.unwrap();
    let client = awc::Client::builder().timeout(Duration::from_millis(300)).finish();
    let send = || {
        client
            .post(format!("{}/--/api/v2/push/send", expo.url()))
            .send_json(&serde_json::json!({"to": "ExponentPushToken[hang]", "title": "t"}))
    };
    expo.hang_for(Duration::from_secs(1));

    let answer = send().await;
    assert!(matches!(answer, Err(awc::error::SendRequestError::Timeout)), "{answer:?}");
    assert_eq!((expo.hung_requests(), expo.sent_count()), (1, 0), "read, never answered, nothing sent");
    // Once the window is over, requests are answered again (each try within it hangs too).
    eventually(Duration::from_secs(5), || async { send().await.ok().filter(|r| r.status() == 200) }).await;
    assert_eq!(expo.sent_count(), 1);
    expo.stop().await;
}

#[actix_web::test]
async fn a_redis_restored_from_a_snapshot_taken_before_400_deliveries_resends_none_of_them() {
    let started = Instant::now();
    let mut redis_server = PrivateRedis::persistent().await;
    let mut app = prepare().await;
    app.settings.redis.url = Secret::new(redis_server.url());
    add_users(&app, 20).await;

    // Fan-out only: the 400 entries wait unread in the stream when the snapshot is taken.
    let listener = app.spawn_roles("listener,api", |_| {});
    insert_bulk(&app, 400, 20).await;
    let conn = redis_server.connection().await;
    eventually(Duration::from_secs(30), || async {
        let queued = app.count("SELECT count(*) FROM notification WHERE status = 'queued'").await;
        (queued == 400 && backlog(&conn, &app.keys).await == (400, 0)).then_some(())
    })
    .await;
    redis_server.save().await;

    let worker = app.spawn_roles("worker,scheduler", |_| {});
    app.all_final(Duration::from_secs(60)).await;
    assert_eq!(app.delivered().await, 400);
    assert_eq!(app.expo.sent_count(), 400);
    // Every entry acknowledged and deleted: the live Redis has moved on from the snapshot.
    eventually(Duration::from_secs(30), || async { (backlog(&conn, &app.keys).await == (0, 0)).then_some(()) }).await;

    // Paused, not killed, across the restore (no relay process dies in this test), so that the
    // restored stream can be looked at before the worker reads it.
    worker.signal("-STOP");
    redis_server.shutdown_nosave().await;
    redis_server.restart().await;
    let conn = redis_server.connection().await;
    assert_eq!(backlog(&conn, &app.keys).await, (400, 0), "the snapshot brought the 400 entries back, unread");
    worker.signal("-CONT");

    eventually(Duration::from_secs(60), || async { (backlog(&conn, &app.keys).await == (0, 0)).then_some(()) }).await;
    println!(
        "redis from a snapshot: {} sends for 400 notifications, {} duplicates, {:?}",
        app.expo.sent_count(),
        app.duplicate_sends(),
        started.elapsed()
    );
    assert_eq!(app.expo.sent_count(), 400, "what Postgres records as delivered is never sent again");
    assert_eq!(app.duplicate_sends(), 0);
    assert_eq!(app.delivered().await, 400);
    drop((worker, listener));
}

#[actix_web::test]
async fn a_provider_that_hangs_for_25_s_fails_nothing_and_costs_at_most_3_attempts() {
    let started = Instant::now();
    let mut app = prepare().await;
    let s = &mut app.settings;
    s.providers.expo.timeout = Duration::from_secs(1);
    s.retry.max_attempts = 5;
    s.retry.base = Duration::from_millis(200);
    s.retry.max = Duration::from_secs(2);
    // Above the provider timeout, so that a hung send is never claimed while it waits.
    s.claim.min_idle = Duration::from_secs(5);
    s.circuit.failures = 3;
    s.circuit.open = Duration::from_millis(500);
    s.circuit.max_open = Duration::from_secs(2);
    add_users(&app, 20).await;
    let relay = app.spawn_binary(|_| {});

    insert_bulk(&app, 100, 20).await;
    let hang = Duration::from_secs(25);
    let hang_ends = Instant::now() + hang;
    app.expo.hang_for(hang);
    // More work arrives while the provider hangs: 20 notifications when the 1st, 2nd, 4th, 8th…
    // request is left hanging (spread over the window however often the relay tries).
    let mut inserted = 100;
    let mut threshold = 1;
    while Instant::now() < hang_ends {
        let expo = &app.expo;
        eventually(hang + Duration::from_secs(5), || async move {
            (expo.hung_requests() >= threshold || Instant::now() >= hang_ends).then_some(())
        })
        .await;
        if Instant::now() < hang_ends {
            insert_bulk(&app, 20, 20).await;
            inserted += 20;
        }
        threshold *= 2;
    }

    app.all_final(Duration::from_secs(90)).await;
    let delivered = app.delivered().await;
    let most = app.count("SELECT coalesce(max(attempt_count), 0)::int8 FROM delivery").await;
    let (failed_targets, failed, gave_up) = failures(&app).await;
    println!(
        "provider hung 25 s: {inserted} notifications, {} requests hung, {delivered} delivered, {failed} failed \
         ({failed_targets} targets, {gave_up} gave up), at most {most} attempts, {:?}",
        app.expo.hung_requests(),
        started.elapsed()
    );
    assert!(app.expo.hung_requests() > 0, "the provider did hang");
    assert_eq!((failed_targets, failed, gave_up), (0, 0, 0), "a hung provider fails nothing");
    assert_eq!(delivered, inserted);
    assert!(most <= 3, "an outage costs no attempts: a target spent {most}");
    assert_eq!(app.duplicate_sends(), 0);
    drop(relay);
}

#[actix_web::test]
async fn a_worker_whose_outcome_writer_stalls_past_min_idle_is_not_sent_twice_by_a_scheduler_apart() {
    let started = Instant::now();
    let mut app = prepare().await;
    let min_idle = Duration::from_millis(3000);
    app.settings.claim.min_idle = min_idle;
    // Sends take long enough for the test to lock the fanned-out rows before any outcome is stored.
    app.expo.set_latency(Duration::from_millis(500));
    add_users(&app, 20).await;
    // The shipped Kubernetes layout: claims run in scheduler pods, apart from the workers.
    let worker = app.spawn_roles("listener,worker,api", |_| {});
    let scheduler = app.spawn_roles("scheduler", |_| {});

    insert_bulk(&app, 200, 20).await;
    eventually(Duration::from_secs(30), || async {
        (app.count("SELECT count(*) FROM delivery").await == 200).then_some(())
    })
    .await;
    // Row locks block the outcome writer's UPDATEs, not the plain SELECTs of the claim check.
    let locker = app.connect_db().await;
    locker.batch_execute("BEGIN").await.unwrap();
    let locked = locker.query("SELECT status FROM delivery FOR UPDATE", &[]).await.unwrap();
    assert_eq!(locked.len(), 200);
    assert!(
        locked.iter().all(|r| r.get::<_, String>(0) == "queued"),
        "locked before any outcome was stored (raise the emulator latency)"
    );
    wait_for_sends(&app, 200).await;
    app.wait_for_a_lock_wait(Duration::from_secs(20)).await;
    // The stall lasts twice claim.min_idle_ms; meanwhile, count the moments with extra sends.
    let once = samples_holding(60, min_idle * 2 / 60, || app.expo.sent_count(), |&n| n == 200).await;
    locker.batch_execute("COMMIT").await.unwrap();

    app.all_final(Duration::from_secs(60)).await;
    let delivered = app.delivered().await;
    let (failed_targets, failed, _) = failures(&app).await;
    let duplicates = app.duplicate_sends();
    println!(
        "writer stalled {:?}: {} sends for 200 notifications, {duplicates} duplicates (sends still 200 in {once}/60 \
         samples of the stall), {delivered} delivered, {failed} failed, {:?}",
        min_idle * 2,
        app.expo.sent_count(),
        started.elapsed()
    );
    assert_eq!(duplicates, 0, "a live worker's entries are not claimed and sent again");
    assert_eq!((failed_targets, failed), (0, 0));
    assert_eq!(delivered, 200);
    drop((worker, scheduler));
}

#[actix_web::test]
async fn postgres_unreachable_for_40_s_under_load_fails_nothing() {
    let started = Instant::now();
    let mut app = prepare().await;
    let concurrency = 500;
    app.settings.worker.concurrency = concurrency;
    app.expo.set_latency(Duration::from_millis(100));
    add_users(&app, 40).await;
    insert_bulk(&app, 4000, 40).await;
    // The shipped Kubernetes layout: each role in processes of its own.
    let relays = [
        app.spawn_roles("listener,api", |_| {}),
        app.spawn_roles("worker,api", |_| {}),
        app.spawn_roles("scheduler,api", |_| {}),
    ];
    wait_for_sends(&app, 300).await;

    // The test's own connection stays; every other is cut, and no new one is let in.
    let own: i32 = app.one("SELECT pg_backend_pid()", &[]).await;
    let admin = pg(&crate::helpers::base_database_url()).await;
    admin.batch_execute(&format!("ALTER DATABASE {} ALLOW_CONNECTIONS false", app.db_name)).await.unwrap();
    let others = "FROM pg_stat_activity WHERE datname::text = $1 AND pid <> $2";
    let cut: i64 = app.one(&format!("SELECT count(pg_terminate_backend(pid)) {others}"), &[&app.db_name, &own]).await;
    let sent_at_cut = app.expo.sent_count();
    let outage = Duration::from_secs(40);
    let sending = samples_holding(400, outage / 400, || app.expo.sent_count(), |&n| n > sent_at_cut).await;
    let connected: i64 = app.one(&format!("SELECT count(*) {others}"), &[&app.db_name, &own]).await;
    let sent_in_outage = app.expo.sent_count() - sent_at_cut;
    admin.batch_execute(&format!("ALTER DATABASE {} ALLOW_CONNECTIONS true", app.db_name)).await.unwrap();
    let reopened = Instant::now();
    assert!(cut >= 3, "every process's connections were cut: {cut}");
    assert_eq!(connected, 0, "Postgres stayed unreachable for the relay");

    app.all_final(Duration::from_secs(90)).await;
    let recovery = reopened.elapsed();
    let delivered = app.delivered().await;
    let (failed_targets, failed, gave_up) = failures(&app).await;
    let duplicates = app.duplicate_sends();
    println!(
        "postgres unreachable {outage:?} ({cut} connections cut after {sent_at_cut} sends; {sent_in_outage} sent \
         during it, past the cut in {sending}/400 samples): all final {recovery:?} after it ended, {} sends for \
         4000, {duplicates} duplicates, {delivered} delivered, {failed} failed ({failed_targets} targets, {gave_up} \
         gave up), {:?}",
        app.expo.sent_count(),
        started.elapsed()
    );
    assert_eq!((failed_targets, failed, gave_up), (0, 0, 0), "an outage of Postgres fails nothing");
    assert_eq!(delivered, 4000);
    assert!(duplicates <= concurrency, "at most what was in flight ({concurrency}): {duplicates}");
    drop(relays);
}

#[actix_web::test]
async fn during_a_rolling_config_change_a_worker_without_fcm_fails_no_fcm_target() {
    let started = Instant::now();
    let mut app = prepare().await;
    let fcm = FcmEmulator::start("127.0.0.1:0").await.expect("fcm emulator");
    app.enable_fcm(&fcm);
    app.exec("INSERT INTO device (user_id, provider, token) SELECT 'u' || g, 'fcm', 'fcm-u' || g FROM generate_series(1, 30) g",
            &[]).await;
    insert_bulk(&app, 300, 30).await;

    // A worker still on the old config (FCM off) is up and reading when the listener, already on
    // the new config, fans out the FCM targets; a worker on the new config runs next to it.
    let old = app.spawn_roles("worker", |s| s.providers.fcm.enabled = false);
    eventually(Duration::from_secs(30), || async { (app.readers_waiting().await >= 1).then_some(()) }).await;
    let new = app.spawn_roles("listener,worker,scheduler,api", |_| {});
    app.all_final(Duration::from_secs(90)).await;
    // More waves while both wait on the stream: whichever reader is waiting takes the first entry
    // of a wave, and both read the rest.
    for _ in 0..4 {
        eventually(Duration::from_secs(30), || async { (app.readers_waiting().await >= 2).then_some(()) }).await;
        insert_bulk(&app, 50, 30).await;
        app.all_final(Duration::from_secs(90)).await;
    }
    let delivered = app.count("SELECT count(*) FROM delivery WHERE provider = 'fcm' AND status = 'delivered'").await;
    let (failed_targets, failed, _) = failures(&app).await;
    // Deferred by the old worker, then delivered by the new one: the row keeps the deferral as its
    // last error, but never ends failed because of it.
    let not_enabled = app
        .count("SELECT count(*) FROM delivery WHERE status <> 'delivered' AND last_error LIKE '%not enabled%'")
        .await;
    let deferred =
        app.count("SELECT count(*) FROM delivery WHERE last_error LIKE '%not enabled on this worker%'").await;
    let sent = fcm.sent();
    let unique: std::collections::HashSet<_> =
        sent.iter().map(|s| (s.token.clone(), s.notification_id().map(str::to_string))).collect();
    println!(
        "rolling config change: {delivered}/500 FCM targets delivered, {failed_targets} failed ({not_enabled} \"not \
         enabled\"), {deferred} deferred by the old worker, {} FCM sends, {} duplicates, {:?}",
        sent.len(),
        sent.len() - unique.len(),
        started.elapsed()
    );
    assert_eq!((failed_targets, failed, not_enabled), (0, 0, 0), "local config never fails a target");
    assert_eq!(delivered, 500);
    assert_eq!(sent.len(), unique.len(), "no FCM target sent twice");
    drop((old, new));
    app.cleanup().await;
    fcm.stop().await;
}
