//! Dead peers: after a failover, old connections are often blackholed rather than reset (the
//! socket stays open, nothing comes back) while new connections reach the new server. A loopback
//! proxy in front of Postgres or Redis plays that failover: `blackhole()` stops every connection
//! it carries from forwarding a byte in either direction, and lets new ones through. The proxy's
//! kernel keeps acknowledging, so TCP keepalives and `tcp_user_timeout` never fire: only the
//! relay's own deadlines can notice.

use crate::helpers::{
    add_users, base_database_url, eventually, insert_bulk, prepare, redis_url, spawn_app_with, TestApp,
};
use emulators::testing::Proxy;
use notify_relay::configuration::Secret;
use std::time::{Duration, Instant};

/// `url` with its `host:port` replaced by `addr`, and the `host:port` it had.
fn through(url: &str, addr: &str, default_port: u16) -> (String, String) {
    let (scheme, rest) = url.split_once("://").expect("a URL");
    let (authority, path) = rest.split_once('/').map(|(a, p)| (a, format!("/{p}"))).unwrap_or((rest, String::new()));
    let (user, host) =
        authority.rsplit_once('@').map(|(u, h)| (format!("{u}@"), h)).unwrap_or((String::new(), authority));
    let host = if host.contains(':') { host.to_string() } else { format!("{host}:{default_port}") };
    (format!("{scheme}://{user}{addr}{path}"), host)
}

/// Short leases, so that work whose Redis write was lost is found again by the sweep quickly.
fn short_leases(app: &mut TestApp) {
    app.settings.listener.sweep_interval = Duration::from_secs(1);
    app.settings.listener.stale_after = Duration::from_secs(3);
}

/// Loads the relay, blackholes the proxy mid-run, inserts more, and waits for every
/// notification to be delivered: far below the minutes the kernel would take. Returns how long
/// after the blackhole the last one became final.
/// `what` names the peer in the line printed with the time it took (for the reader of the test
/// log; nothing asserts it).
async fn deliver_through_a_failover(app: &mut TestApp, proxy: Proxy, what: &str) {
    app.expo.set_latency(Duration::from_millis(10));
    add_users(app, 50).await;
    insert_bulk(app, 600, 50).await;
    app.start().await;
    eventually(Duration::from_secs(30), || async { (app.expo.sent_count() >= 150).then_some(()) }).await;

    proxy.blackhole();
    let blackholed = Instant::now();
    let before = proxy.connections();
    insert_bulk(app, 100, 50).await;

    app.all_final(Duration::from_secs(60)).await;
    let took = blackholed.elapsed();
    assert_eq!(app.delivered().await, 700);
    assert!(proxy.connections() > before, "the relay opened fresh connections after the failover");
    // No actor is stuck: every one runs again, and new work still flows.
    let registry = app.app.as_ref().expect("app running").engine.registry().clone();
    eventually(Duration::from_secs(15), || async { registry.all_running().then_some(()) }).await;
    let late = app.notify("u1", serde_json::json!({"title": "after"})).await;
    assert_eq!(app.final_status(late).await.0, "delivered");
    eprintln!("{what} blackholed: every notification final {} ms later", took.as_millis());
}

/// Points the app's database URL at a proxy in front of the test's Postgres.
async fn postgres_behind_a_proxy(app: &mut TestApp) -> Proxy {
    let (_, upstream) = through(&base_database_url(), "", 5432);
    let proxy = Proxy::start(upstream).await;
    let url = app.settings.database.url.expose().to_string();
    app.settings.database.url = Secret::new(through(&url, &proxy.addr, 5432).0);
    proxy
}

#[actix_web::test]
async fn a_blackholed_postgres_fails_store_calls_in_seconds_and_every_notification_is_delivered() {
    let mut app = prepare().await;
    let proxy = postgres_behind_a_proxy(&mut app).await;
    // A store call without an answer after 2 s + the 2 s margin gives up its connection.
    app.settings.database.statement_timeout = Duration::from_secs(2);
    short_leases(&mut app);

    deliver_through_a_failover(&mut app, proxy, "postgres").await;
}

#[actix_web::test]
async fn a_blackholed_redis_connection_is_replaced_and_every_notification_is_delivered() {
    let mut app = prepare().await;
    let (_, upstream) = through(&redis_url(), "", 6379);
    let proxy = Proxy::start(upstream).await;
    app.settings.redis.url = Secret::new(through(&redis_url(), &proxy.addr, 6379).0);
    app.settings.redis.response_timeout = Duration::from_secs(1);
    short_leases(&mut app);

    deliver_through_a_failover(&mut app, proxy, "redis").await;
}

#[actix_web::test]
async fn pooled_connections_carry_the_statement_timeout_to_the_server() {
    let app = spawn_app_with(|s| s.database.statement_timeout = Duration::from_millis(2500)).await;
    let store = app.app.as_ref().expect("app running").store.clone();
    let conn = store.conn().await.expect("a pooled connection");
    let timeout: String = conn.query_one("SHOW statement_timeout", &[]).await.expect("SHOW").get(0);
    assert_eq!(timeout, "2500ms");
    drop(conn);
}

#[actix_web::test]
async fn a_blackholed_listen_connection_is_noticed_and_replaced_so_notify_rings_again() {
    // Idle, the LISTEN connection sends nothing: behind a dead peer it looks like a quiet table,
    // and new rows would wait for the next sweep (a minute here).
    let mut app = prepare().await;
    let proxy = postgres_behind_a_proxy(&mut app).await;
    app.settings.database.connect_timeout = Duration::from_secs(1);
    app.settings.database.statement_timeout = Duration::from_secs(2);
    app.settings.listener.sweep_interval = Duration::from_secs(60);
    app.start_with(notify_relay::startup::ProcessRoles::parse("listener").unwrap()).await;
    let listener = || {
        let actors = app.app.as_ref().expect("running").engine.registry().snapshot();
        actors.into_iter().find(|a| a.name == "listener").expect("a listener")
    };
    // The listener is idle, listening: a first row went through the whole drain (its last
    // Postgres call is the commit that settles it), so no call of its is in flight when the
    // proxy goes silent — only the LISTEN connection's silence is left to notice.
    let warm_up = app.notify("kim", serde_json::json!({})).await;
    eventually(Duration::from_secs(10), || async {
        (app.count(&format!("SELECT count(*) FROM notification WHERE id = '{warm_up}' AND status = 'failed'")).await
            == 1)
            .then_some(())
    })
    .await;
    let busy = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = '{}' AND application_name = 'notify-relay'
            AND state <> 'idle'",
        app.db_name
    );
    eventually(Duration::from_secs(10), || async { (app.count(&busy).await == 0).then_some(()) }).await;

    proxy.blackhole();
    // Noticed: the check finds the LISTEN connection silent (or, now and then, a pooled call of
    // the listener's on a connection opened before the blackhole times out first), and the
    // listener restarts on fresh connections.
    let error = eventually(Duration::from_secs(20), || async { listener().last_error }).await;
    println!("listener failed with: {error}");
    eventually(Duration::from_secs(20), || async { (listener().running && listener().restarts >= 1).then_some(()) })
        .await;
    // Listening again through a fresh connection: a new row rings the bell, no sweep needed.
    let id = app.notify("lena", serde_json::json!({})).await;
    eventually(Duration::from_secs(20), || async {
        (app.count(&format!("SELECT count(*) FROM notification WHERE id = '{id}' AND status <> 'pending'")).await == 1)
            .then_some(())
    })
    .await;
    drop(proxy);
}
