//! The fault-injection suite: each test causes a fault and checks that every committed row
//! still reaches a final state, and that provider sends are duplicated only for work that was in
//! flight in a process that died.

use crate::helpers::{
    add_users, eventually, insert_bulk, prepare, prepare_with, spawn_app, spawn_app_with, wait_for_sends, PrivateRedis,
};
use notify_relay::configuration::Secret;
use notify_relay::startup::ProcessRoles;
use std::time::{Duration, Instant};

#[actix_web::test]
async fn kill_9_of_the_service_under_load_three_times_loses_nothing() {
    let app = prepare_with(|s| {
        s.worker.concurrency = 200;
        // A process killed between its fan-out commit and its XADD leaves targets that only the
        // sweep finds again: a short lease keeps the test short.
        s.listener.sweep_interval = Duration::from_millis(500);
        s.listener.stale_after = Duration::from_secs(3);
    })
    .await;
    app.expo.set_latency(Duration::from_millis(20));
    add_users(&app, 50).await;
    insert_bulk(&app, 3000, 50).await;

    let mut kills = 0;
    for threshold in [300, 1200, 2100] {
        let mut relay = app.spawn_binary(|_| {});
        wait_for_sends(&app, threshold).await;
        relay.signal("-KILL");
        relay.exited(Duration::from_secs(5)).await;
        kills += 1;
    }
    let relay = app.spawn_binary(|_| {});
    app.all_final(Duration::from_secs(90)).await;
    drop(relay);

    assert_eq!(app.delivered().await, 3000);
    let duplicates = app.duplicate_sends();
    println!("kill -9 x{kills}: {} sends for 3000 notifications, {duplicates} duplicates", app.expo.sent_count());
    // Only what was in flight in a killed process may go out twice: at most worker.concurrency each.
    assert!(duplicates <= kills * 200, "{duplicates} duplicates");
}

#[actix_web::test]
async fn wiping_the_redis_keys_mid_run_loses_nothing_and_resends_nothing_delivered() {
    let mut app = prepare_with(|s| {
        s.listener.sweep_interval = Duration::from_millis(200);
        s.listener.stale_after = Duration::from_secs(3);
        // Few in flight, so that most of the work is still waiting in the stream when it is wiped.
        s.worker.concurrency = 200;
    })
    .await;
    app.expo.set_latency(Duration::from_millis(100));
    app.start().await;
    add_users(&app, 40).await;
    insert_bulk(&app, 4000, 40).await;
    wait_for_sends(&app, 500).await;

    let mut conn = app.redis.clone();
    let keys: Vec<String> = redis::cmd("KEYS").arg(format!("{}:*", app.prefix)).query_async(&mut conn).await.unwrap();
    let _: () = redis::cmd("DEL").arg(&keys).query_async(&mut conn).await.unwrap();

    app.all_final(Duration::from_secs(60)).await;
    assert_eq!(app.delivered().await, 4000);
    let duplicates = app.duplicate_sends();
    println!("redis wipe: {} sends for 4000 notifications, {duplicates} duplicates", app.expo.sent_count());
    // The wipe took the idempotency keys too; Postgres still knows what was delivered.
    assert_eq!(duplicates, 0, "delivered work is never resent");
    assert!(app.redis_counter("REQUEUED").await > 0, "the sweep rebuilt what the wipe lost");
    assert_eq!(app.failed_rows().await, 0, "nothing failed because of the wipe");
}

#[actix_web::test]
async fn a_provider_outage_longer_than_every_retry_delay_keeps_the_attempts() {
    let app = spawn_app_with(|s| s.retry.max_attempts = 3).await;
    add_users(&app, 10).await;
    // All retry delays together are well under 1 s (20 ms, then up to 100 ms); the outage lasts 3 s.
    app.expo.fail_for(503, Duration::from_secs(3));

    insert_bulk(&app, 200, 10).await;

    app.all_final(Duration::from_secs(30)).await;
    assert_eq!(app.delivered().await, 200);
    let most = app.count("SELECT max(attempt_count)::int8 FROM delivery").await;
    assert!(most <= 3, "the open circuit kept the attempts: at most {most}");
    assert!(app.redis_counter("DEFERRED").await > 0, "deliveries waited without spending attempts");
    assert_eq!(app.duplicate_sends(), 0);
}

#[actix_web::test]
async fn sigterm_under_load_exits_0_in_time_and_another_process_finishes_the_work() {
    let app = prepare().await;
    app.expo.set_latency(Duration::from_millis(50));
    add_users(&app, 20).await;
    insert_bulk(&app, 1500, 20).await;

    let mut first = app.spawn_binary(|s| s.shutdown.grace = Duration::from_secs(2));
    wait_for_sends(&app, 200).await;
    let stopping = Instant::now();
    first.signal("-TERM");
    let status = first.exited(Duration::from_secs(10)).await;
    let took = stopping.elapsed();
    assert_eq!(status.code(), Some(0));
    assert!(took < Duration::from_millis(2000 + 1500), "exited within grace + a little: {took:?}");

    let second = app.spawn_binary(|_| {});
    app.all_final(Duration::from_secs(60)).await;
    drop(second);
    assert_eq!(app.delivered().await, 1500);
    let duplicates = app.duplicate_sends();
    println!("SIGTERM under load: stopped in {took:?}, {duplicates} duplicates");
    assert_eq!(duplicates, 0, "a graceful stop finishes or hands over, it never resends");
}

#[actix_web::test]
async fn a_backlog_of_120000_entries_built_with_the_workers_stopped_is_delivered_completely() {
    // The whole backlog in Redis: no `listener.max_backlog` (tests/relay/backlog.rs has it).
    let mut app = prepare_with(|s| s.listener.max_backlog = 0).await;
    add_users(&app, 1000).await;
    app.start_with(ProcessRoles::parse("listener,api").unwrap()).await;
    insert_bulk(&app, 120_000, 1000).await;
    eventually(Duration::from_secs(120), || async {
        (app.count("SELECT count(*) FROM notification WHERE status = 'queued'").await == 120_000).then_some(())
    })
    .await;
    // Every entry waits in the stream, nothing trimmed it. The fan-out commits `queued` before
    // its XADD, so the last batch may reach the stream a moment after Postgres says queued.
    eventually(Duration::from_secs(10), || async { (app.stream_len().await == 120_000).then_some(()) }).await;
    app.stop().await;

    app.start_with(ProcessRoles::parse("worker,scheduler").unwrap()).await;

    app.all_final(Duration::from_secs(240)).await;
    assert_eq!(app.delivered().await, 120_000);
    assert_eq!(app.expo.sent_count(), 120_000);
    // Entries are acknowledged and deleted in Redis after their outcomes are committed.
    eventually(Duration::from_secs(10), || async { (app.stream_len().await == 0).then_some(()) }).await;
}

#[actix_web::test]
async fn the_same_process_restarting_its_engine_picks_up_where_it_left() {
    let mut app = spawn_app().await;
    add_users(&app, 5).await;
    app.expo.set_latency(Duration::from_millis(30));
    insert_bulk(&app, 300, 5).await;
    wait_for_sends(&app, 50).await;
    app.stop().await;
    app.start().await;
    app.all_final(Duration::from_secs(30)).await;
    assert_eq!(app.delivered().await, 300);
    assert_eq!(app.duplicate_sends(), 0);
}

#[actix_web::test]
async fn terminating_every_postgres_connection_mid_run_loses_nothing() {
    let app = spawn_app_with(|s| s.worker.concurrency = 500).await;
    app.expo.set_latency(Duration::from_millis(20));
    add_users(&app, 20).await;
    insert_bulk(&app, 2000, 20).await;
    wait_for_sends(&app, 300).await;

    let killed: i64 = app
        .one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
              WHERE datname = current_database() AND pid <> pg_backend_pid()",
            &[],
        )
        .await;
    assert!(killed >= 2, "the pool and the LISTEN connection: {killed}");

    app.all_final(Duration::from_secs(60)).await;
    assert_eq!(app.delivered().await, 2000);
    let duplicates = app.duplicate_sends();
    println!("postgres connections terminated ({killed}): {duplicates} duplicates");
    // Outcomes whose transaction was cut are kept and written again after the writer restarts;
    // at worst what was in flight (worker.concurrency) could be claimed and sent twice.
    assert!(duplicates <= 500, "{duplicates}");
}

#[actix_web::test]
async fn several_schedulers_move_each_due_retry_exactly_once() {
    let app = prepare().await;
    let url = crate::helpers::redis_url();
    let endpoint = notify_relay_engine::relay::conn::Endpoint::single(url.clone());
    let connect = || notify_relay_engine::relay::Relay::connect(&endpoint, app.keys.clone(), 1000);
    let (a, b) = (connect().await.unwrap(), connect().await.unwrap());
    let mut conn = app.redis.clone();
    let mut pipe = redis::pipe();
    for i in 0..3000 {
        pipe.cmd("ZADD").arg(app.keys.delayed(0)).arg(1000 + i).arg(format!("job-{i}")).ignore();
    }
    let _: () = pipe.query_async(&mut conn).await.unwrap();

    let mover = |relay: notify_relay_engine::relay::Relay| async move {
        let mut moved = 0;
        loop {
            let n = relay.move_due(0, 100).await.unwrap();
            moved += n;
            if n == 0 {
                return moved;
            }
        }
    };
    let (x, y) = futures_util::join!(mover(a), mover(b));

    assert_eq!(x + y, 3000);
    let len = app.stream_len().await;
    let left: i64 = redis::cmd("ZCARD").arg(app.keys.delayed(0)).query_async(&mut conn).await.unwrap();
    assert_eq!((len, left), (3000, 0));
}

#[actix_web::test]
async fn a_redis_restart_without_persistence_mid_run_loses_nothing() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut redis_server = PrivateRedis::start(port).await;
    let mut app = prepare().await;
    app.settings.redis.url = Secret::new(format!("redis://127.0.0.1:{port}"));
    app.settings.worker.concurrency = 300;
    app.settings.listener.sweep_interval = Duration::from_millis(300);
    app.settings.listener.stale_after = Duration::from_secs(3);
    app.expo.set_latency(Duration::from_millis(20));
    app.start().await;
    add_users(&app, 20).await;
    insert_bulk(&app, 2000, 20).await;
    wait_for_sends(&app, 300).await;

    let failures = || {
        let actors = app.app.as_ref().expect("running").engine.registry().snapshot();
        actors.iter().map(|a| u64::from(a.restarts) + u64::from(!a.running)).sum::<u64>()
    };
    let before = failures();
    redis_server.kill();
    // Down until the relay has felt it (an actor failed on the missing Redis), then back empty.
    eventually(Duration::from_secs(30), || async { (failures() > before).then_some(()) }).await;
    let _restarted = PrivateRedis::start(redis_server.port).await;

    app.all_final(Duration::from_secs(90)).await;
    assert_eq!(app.delivered().await, 2000);
    let duplicates = app.duplicate_sends();
    println!("redis restarted empty: {} sends, {duplicates} duplicates", app.expo.sent_count());
    // Everything Redis held is rebuilt from Postgres; what was delivered stays delivered.
    assert!(duplicates <= 300, "at most what was in flight: {duplicates}");
}

#[actix_web::test]
async fn two_replicas_running_every_role_deliver_each_notification_once() {
    let app = spawn_app().await;
    let replica = app.start_replica().await;
    app.expo.set_latency(Duration::from_millis(5));
    add_users(&app, 30).await;

    insert_bulk(&app, 3000, 30).await;

    app.all_final(Duration::from_secs(60)).await;
    assert_eq!(app.delivered().await, 3000);
    assert_eq!(app.expo.sent_count(), 3000);
    assert_eq!(app.duplicate_sends(), 0);
    replica.stop(Duration::from_secs(5)).await;
}
