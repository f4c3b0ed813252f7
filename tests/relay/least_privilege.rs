//! The relay with no more rights than docs/security.md gives it: a Postgres login role that is
//! only a member of `notify_relay` (granted by `migrations/optional/runtime_role.sql`) and a Redis
//! ACL user with only the commands of `config/redis-acl.conf`, restricted to the test's key
//! prefix. Every role of the relay (listener, worker, scheduler, API) and the admin commands run
//! that way, through all four providers; every actor must get through it without one failure.
//! Then what the role and the user must not do is refused.
//!
//! Roles and ACL users belong to the whole server, and tests run at once: each test makes its own
//! login role and ACL user (named by a uuid) and its guard removes it on drop, also when the test
//! fails half-way. The NOLOGIN role `notify_relay` that the grants file creates is shared and
//! kept (as `supabase_rls`'s stand-in roles are): its grants go with each test's database.

use crate::helpers::{
    clean_up, eventually, on_base_database, pg, prepare_with, redis_connection, redis_url, OtherProviders, TestApp,
    ADMIN_TOKEN,
};
use crate::tokens::{claims, hs256, HS_SECRET};
use notify_relay::admin::{run as admin, AdminCommand};
use notify_relay::configuration::{Secret, Settings};
use serde_json::{json, Value};
use std::time::Duration;
use tokio_postgres::error::SqlState;
use uuid::Uuid;

const GRANTS: &str = include_str!("../../migrations/optional/runtime_role.sql");
const REDIS_ACL: &str = include_str!("../../config/redis-acl.conf");
const SECURITY_DOC: &str = include_str!("../../docs/security.md");

/// `url` with `user:password@` as its credentials (replacing any it had).
fn with_credentials(url: &str, user: &str, password: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("a URL with a scheme");
    let (authority, path) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let path = if path.is_empty() { String::new() } else { format!("/{path}") };
    format!("{scheme}://{user}:{password}@{host}{path}")
}

/// A login role of this test, member of `notify_relay` and nothing else. Dropped with whatever it
/// came to own in the test's database (it should own nothing) after its sessions are ended.
struct PgRole {
    name: String,
    password: String,
    db_url: String,
}

impl PgRole {
    /// Applies the grants file (twice: it must be idempotent) as the owner, then creates the role.
    async fn create(app: &TestApp) -> PgRole {
        app.db.batch_execute(GRANTS).await.expect("runtime_role.sql applies");
        app.db.batch_execute(GRANTS).await.expect("runtime_role.sql applies again");
        let role = PgRole {
            name: format!("relay_{}", Uuid::new_v4().simple()),
            password: Uuid::new_v4().simple().to_string(),
            db_url: app.settings.database.url.expose().to_string(),
        };
        app.db
            .batch_execute(&format!(
                "CREATE ROLE {} LOGIN PASSWORD '{}' NOSUPERUSER NOCREATEDB NOCREATEROLE IN ROLE notify_relay",
                role.name, role.password
            ))
            .await
            .expect("create the login role");
        role
    }

    fn url(&self) -> String {
        with_credentials(&self.db_url, &self.name, &self.password)
    }
}

impl Drop for PgRole {
    fn drop(&mut self) {
        let (name, db_url) = (self.name.clone(), self.db_url.clone());
        clean_up(async move {
            if let Ok((client, connection)) = tokio_postgres::connect(&db_url, tokio_postgres::NoTls).await {
                tokio::spawn(connection);
                let _ = client.batch_execute(&format!("DROP OWNED BY {name}")).await;
            }
            on_base_database(&format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{name}';
                 DROP ROLE IF EXISTS {name}"
            ))
            .await;
        });
    }
}

/// The rules of `config/redis-acl.conf` after its user name and password: what every relay user
/// gets, with the default prefix's key pattern `~notify:*`.
fn acl_rules() -> Vec<&'static str> {
    let line = REDIS_ACL.lines().find(|l| l.starts_with("user ")).expect("a user line in config/redis-acl.conf");
    line.split_whitespace().skip(2).filter(|w| *w != "on" && !w.starts_with('#') && !w.starts_with('>')).collect()
}

/// An ACL user of this test: the rules of `config/redis-acl.conf`, its keys restricted to the
/// test's prefix. Deleted on drop.
struct RedisUser {
    name: String,
    password: String,
}

impl RedisUser {
    async fn create(prefix: &str) -> RedisUser {
        let user = RedisUser {
            name: format!("relay-{}", Uuid::new_v4().simple()),
            password: Uuid::new_v4().simple().to_string(),
        };
        let mut cmd = redis::cmd("ACL");
        cmd.arg("SETUSER").arg(&user.name).arg("reset").arg("on").arg(format!(">{}", user.password));
        for rule in acl_rules() {
            match rule {
                "~notify:*" => cmd.arg(format!("~{prefix}:*")),
                other => cmd.arg(other),
            };
        }
        let mut conn = redis_connection(&redis_url()).await.expect("redis");
        cmd.query_async::<()>(&mut conn).await.expect("ACL SETUSER with the rules of config/redis-acl.conf");
        user
    }

    fn url(&self) -> String {
        with_credentials(&redis_url(), &self.name, &self.password)
    }
}

impl Drop for RedisUser {
    fn drop(&mut self) {
        let name = self.name.clone();
        clean_up(async move {
            if let Ok(mut conn) = redis_connection(&redis_url()).await {
                let _ = redis::cmd("ACL").arg("DELUSER").arg(&name).query_async::<()>(&mut conn).await;
            }
        });
    }
}

/// `user` registers the Expo device `ExponentPushToken[<user>-api]` through the API.
async fn register_expo_device(app: &TestApp, user: &str, token: &str) {
    let body = json!({"provider": "expo", "token": format!("ExponentPushToken[{user}-api]")});
    let (status, answer) = call(app, "POST", &format!("/users/{user}/devices"), token, Some(body)).await;
    assert_eq!(status, 201, "{answer}");
}

/// A request to the app's API: (status, JSON body).
async fn call(app: &TestApp, method: &str, path: &str, token: &str, body: Option<Value>) -> (u16, Value) {
    let client = awc::Client::builder().timeout(Duration::from_secs(10)).finish();
    let method = awc::http::Method::from_bytes(method.as_bytes()).expect("method");
    let req = client.request(method, format!("{}{path}", app.api())).bearer_auth(token);
    let mut resp = match body {
        Some(b) => req.send_json(&b).await,
        None => req.send().await,
    }
    .expect("request");
    let status = resp.status().as_u16();
    let body = resp.json::<Value>().limit(1 << 20).await.unwrap_or(Value::Null);
    (status, body)
}

fn user_token(user: &str) -> String {
    hs256(HS_SECRET.as_bytes(), &claims(user, 3600))
}

/// The shipped restrictions, on top of the tests' settings: rate limits on (their Lua script
/// runs), retention every 200 ms, HS256 user tokens.
fn restricted(s: &mut Settings) {
    s.auth.jwt_secret = Some(Secret::new(HS_SECRET));
    s.retention.final_after_days = 30;
    s.retention.interval = Duration::from_millis(200);
    s.providers.expo.rate_per_sec = 10_000;
    s.providers.expo.device_rate_per_sec = 1;
}

#[actix_web::test]
async fn every_role_of_the_relay_runs_on_the_runtime_grants_and_the_redis_acl_alone() {
    let mut app = prepare_with(restricted).await;
    let OtherProviders { fcm, apns, smtp } = app.enable_every_provider().await;
    let role = PgRole::create(&app).await;
    let redis_user = RedisUser::create(&app.prefix).await;
    app.settings.database.url = Secret::new(role.url());
    app.settings.redis.url = Secret::new(redis_user.url());
    // A final row older than retention.final_after_days, for the retention job to delete.
    let old: Uuid = app
        .one(
            "INSERT INTO notification (user_id, type, status, created_at)
             VALUES ('old', 'old', 'delivered', now() - interval '40 days') RETURNING id",
            &[],
        )
        .await;
    // Redis's script cache is the server's: empty it, so that this relay must load its scripts
    // itself (SCRIPT LOAD) as after a Redis restart. Other tests' relays just load them again.
    let mut redis = app.redis.clone();
    let _: () = redis::cmd("SCRIPT").arg("FLUSH").query_async(&mut redis).await.expect("SCRIPT FLUSH");
    app.start().await;

    // Ready: migrations current (refinery_schema_history, pg_index), groups created.
    eventually(Duration::from_secs(20), || async { (app.get("/readyz", None).await.0 == 200).then_some(()) }).await;
    assert_eq!(app.get("/healthz", None).await, (200, json!({"status": "ok", "postgres": "ok", "redis": "ok"})));

    // Every provider, one notification; devices registered through the API and in SQL. Expo is
    // slow for it, so that the heartbeat refreshes entries in flight.
    let zoe = user_token("zoe");
    register_expo_device(&app, "zoe", &zoe).await;
    let apns_token = "ab".repeat(32);
    app.add_device("zoe", "fcm", "zoe-android").await;
    app.add_device("zoe", "apns", &apns_token).await;
    app.add_device("zoe", "email", "zoe@example.com").await;
    app.expo.set_latency(Duration::from_millis(1500));
    let everywhere = app.notify("zoe", json!({"title": "Everywhere", "body": "at once"})).await;
    eventually(Duration::from_secs(20), || async {
        let delivered = app
            .one::<i64>(
                "SELECT count(*) FROM delivery WHERE notification_id = $1 AND status = 'delivered'",
                &[&everywhere],
            )
            .await;
        (delivered == 4).then_some(())
    })
    .await;
    app.expo.set_latency(Duration::ZERO);
    assert_eq!(app.status(everywhere).await.0, "delivered");
    assert_eq!(app.expo.sends_of(everywhere, "ExponentPushToken[zoe-api]"), 1);
    assert_eq!(fcm.sends_of(everywhere, "zoe-android"), 1);
    assert_eq!(apns.sent().iter().filter(|s| s.token == apns_token).count(), 1);
    assert_eq!(smtp.sends_of(everywhere, "zoe@example.com"), 1);

    // A retry: Expo answers MessageRateExceeded until forgiven, the target waits in the delayed
    // set and comes back.
    app.add_device("ray", "expo", "ExponentPushToken[ray-ratelimited]").await;
    let retried = app.notify("ray", json!({"title": "second try", "data": {"n": 2}})).await;
    eventually(Duration::from_secs(20), || async { (app.status(retried).await.0 == "retrying").then_some(()) }).await;
    app.expo.forgive("ratelimited");
    assert_eq!(app.final_status(retried).await.0, "delivered");
    assert!(app.one::<i32>("SELECT attempt_count FROM delivery WHERE notification_id = $1", &[&retried]).await >= 2);

    // Two notifications at once to a device allowed one per second: the rate limiter's bucket
    // (a Lua script) defers the second, which is delivered a second later without an attempt
    // spent. The limiter fails open when Redis refuses it, so the deferral is the evidence.
    app.add_device("dee", "expo", "ExponentPushToken[dee]").await;
    app.exec("INSERT INTO notification (user_id, type) SELECT 'dee', 'burst' FROM generate_series(1, 2)", &[]).await;
    app.all_final(Duration::from_secs(20)).await;
    assert_eq!(app.count("SELECT count(*) FROM notification WHERE user_id = 'dee' AND status = 'delivered'").await, 2);
    assert!(app.redis_counter("DEFERRED").await >= 1, "the device's bucket deferred the second send");

    // A dead token: failed, pulled back by its user, a new device registered, retried, delivered.
    let erin = user_token("erin");
    let dead = app.add_device("erin", "expo", "ExponentPushToken[erin-unregistered]").await;
    let failed = app.notify("erin", json!({"title": "Your code"})).await;
    assert_eq!(app.final_status(failed).await.0, "failed");
    assert!(app.disabled_reason(dead).await.contains("DeviceNotRegistered"));
    let (status, page) = call(&app, "GET", "/users/erin/notifications/failed", &erin, None).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["items"][0]["notification_id"], failed.to_string(), "{page}");
    register_expo_device(&app, "erin", &erin).await;
    let (status, body) = call(&app, "POST", &format!("/notifications/{failed}/retry"), &erin, Some(json!({}))).await;
    assert_eq!(status, 202, "{body}");
    eventually(Duration::from_secs(20), || async { (app.status(failed).await.0 == "delivered").then_some(()) }).await;
    assert_eq!(app.expo.sends_of(failed, "ExponentPushToken[erin-api]"), 1);
    let (_, page) = call(&app, "GET", "/users/erin/notifications/failed", &erin, None).await;
    assert!(page["items"][0]["retried_at"].is_string(), "{page}");

    // Topics: subscribe through the API, the relay writes the subscriber's row, unsubscribe.
    let (status, _) = call(&app, "PUT", "/users/zoe/topics/news", &zoe, None).await;
    assert_eq!(status, 201);
    let topic: Uuid = app
        .one(
            "INSERT INTO notification (topic, type, payload) VALUES ('news', 'n', '{\"title\":\"News\"}') RETURNING id",
            &[],
        )
        .await;
    let copy: Uuid = eventually(Duration::from_secs(20), || async {
        app.db
            .query_opt("SELECT id FROM notification WHERE parent_id = $1", &[&topic])
            .await
            .ok()
            .flatten()
            .map(|r| r.get(0))
    })
    .await;
    assert_eq!(app.final_status(copy).await.0, "delivered");
    let (status, _) = call(&app, "DELETE", "/users/zoe/topics/news", &zoe, None).await;
    assert_eq!(status, 204);

    // A scheduled row comes due; another is cancelled before it does.
    let due: Uuid = app
        .one(
            "INSERT INTO notification (user_id, type, send_at) VALUES ('zoe', 'later', now() + interval '300 milliseconds')
             RETURNING id",
            &[],
        )
        .await;
    let later: Uuid = app
        .one("INSERT INTO notification (user_id, type, send_at) VALUES ('zoe', 'later', now() + interval '1 hour') RETURNING id", &[])
        .await;
    let (status, body) = call(&app, "POST", &format!("/notifications/{later}/cancel"), ADMIN_TOKEN, None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(app.final_status(due).await.0, "delivered");
    let (status, body) = call(&app, "GET", &format!("/notifications/{due}"), ADMIN_TOKEN, None).await;
    assert_eq!(status, 200, "{body}");

    // Expo receipts fetched and stored; retention deleted the old row.
    eventually(Duration::from_secs(20), || async {
        let due = app.count("SELECT count(*) FROM delivery WHERE receipt_due_at IS NOT NULL").await;
        (app.expo.receipt_requests() > 0 && due == 0).then_some(())
    })
    .await;
    eventually(Duration::from_secs(10), || async {
        (app.one::<i64>("SELECT count(*) FROM notification WHERE id = $1", &[&old]).await == 0).then_some(())
    })
    .await;

    // A device removed through the API; the admin views.
    let (_, device) = call(&app, "GET", &format!("/notifications/{failed}"), &erin, None).await;
    let erin_new =
        device["targets"].as_array().and_then(|t| t.last()).map(|t| t["device_id"].clone()).expect("a target");
    let erin_new = erin_new.as_str().expect("a device id");
    let (status, _) = call(&app, "DELETE", &format!("/users/erin/devices/{erin_new}"), &erin, None).await;
    assert_eq!(status, 204);
    for path in ["/admin/actors", "/admin/queues", "/admin/dlq", "/admin/metrics"] {
        let (status, body) = call(&app, "GET", path, ADMIN_TOKEN, None).await;
        assert_eq!(status, 200, "{path}: {body}");
    }

    // The admin commands, with the same restricted settings.
    let settings = app.valid_settings();
    for command in [
        AdminCommand::InspectDlq { limit: 10, json: true },
        AdminCommand::RequeueFailed { user: None, since: None, dry_run: true, batch: 10 },
        AdminCommand::ClaimStuck { min_idle_ms: Some(60_000) },
        AdminCommand::Topics { limit: 10 },
        AdminCommand::ResetGroup { yes: true },
    ] {
        let name = format!("{command:?}");
        let mut out = Vec::new();
        if let Err(e) = admin(&settings, command, &mut out).await {
            panic!("admin {name} as the restricted role and user: {e}");
        }
    }
    let after_reset = app.notify("zoe", json!({"title": "after the reset"})).await;
    assert_eq!(app.final_status(after_reset).await.0, "delivered");

    // No actor met a refusal on the way: a missing grant or command stops an actor, which its
    // supervisor restarts, even when the delivery it was on is finished by a later attempt.
    let actors = app.app.as_ref().expect("running").engine.registry().snapshot();
    let failures: Vec<_> =
        actors.iter().filter(|a| a.restarts > 0 || a.last_error.is_some()).map(|a| (&a.name, &a.last_error)).collect();
    assert!(failures.is_empty(), "actors failed as the restricted role and user: {failures:?}");

    app.cleanup().await;
    fcm.stop().await;
    apns.stop().await;
    smtp.stop().await;
}

/// The SQLSTATE of what `sql` ends with, run as `client`.
async fn refusal(client: &tokio_postgres::Client, sql: &str) -> Option<SqlState> {
    match client.batch_execute(sql).await {
        Ok(()) => None,
        Err(e) => e.code().cloned(),
    }
}

#[actix_web::test]
async fn the_runtime_role_cannot_change_the_schema_and_the_redis_user_reaches_only_its_own_keys() {
    let app = prepare_with(|_| {}).await;
    let role = PgRole::create(&app).await;
    let relay = pg(&role.url()).await;

    // What the relay does works …
    relay.batch_execute("SELECT count(*) FROM notification; LISTEN notification_insert").await.expect("allowed");
    // … what it never does is refused.
    for sql in [
        "DROP TABLE notification",
        "CREATE TABLE intruder (id int)",
        "ALTER TABLE notification ADD COLUMN intruder int",
        "CREATE INDEX intruder_idx ON delivery (provider)",
        "TRUNCATE delivery",
        "DELETE FROM device",
        "UPDATE device SET token = 'someone-else'",
        "UPDATE notification SET payload = '{}'",
        "UPDATE notification SET user_id = 'mallory'",
        "INSERT INTO refinery_schema_history (version, name, applied_on, checksum) VALUES (99, 'x', 'x', 'x')",
        "CREATE FUNCTION intruder() RETURNS int LANGUAGE sql AS 'SELECT 1'",
    ] {
        assert_eq!(refusal(&relay, sql).await, Some(SqlState::INSUFFICIENT_PRIVILEGE), "{sql}");
    }
    // Every table of the schema is named by the grants file: a migration that adds one must say
    // what the relay may do with it (the file sets no default privileges).
    let unnamed: Vec<String> = app
        .db
        .query(
            "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p')
                AND NOT has_table_privilege('notify_relay', c.oid, 'SELECT')",
            &[],
        )
        .await
        .expect("tables without a grant")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(unnamed.is_empty(), "tables runtime_role.sql does not grant: {unnamed:?}");

    // The Redis user: its own keys with its commands; nothing else.
    let user = RedisUser::create(&app.prefix).await;
    let mut conn = redis_connection(&user.url()).await.expect("the ACL user logs in");
    let own = format!("{}:probe", app.prefix);
    let _: () = redis::cmd("SET").arg(&own).arg("1").arg("EX").arg(60).query_async(&mut conn).await.expect("own key");
    let refused = [
        redis::cmd("FLUSHALL"),
        redis::cmd("KEYS").arg("*").clone(),
        redis::cmd("GET").arg("someone-else:key").clone(),
        redis::cmd("SET").arg("notify:{0}:stream").arg("x").clone(),
        redis::cmd("CONFIG").arg("SET").arg("maxmemory-policy").arg("allkeys-lru").clone(),
        redis::cmd("DEL").arg(&own).clone(),
        redis::cmd("EVAL").arg("return 1").arg(0).clone(),
        redis::cmd("ACL").arg("LIST").clone(),
    ];
    for cmd in refused {
        let err = cmd.query_async::<redis::Value>(&mut conn).await.map(|_| ()).expect_err("refused");
        assert_eq!(err.code(), Some("NOPERM"), "{err}");
    }

    // docs/security.md shows the same rules as the file.
    let rules = acl_rules().join(" ");
    assert!(
        SECURITY_DOC.contains(&rules),
        "docs/security.md does not show the rules of config/redis-acl.conf: {rules}"
    );
}

#[actix_web::test]
async fn a_server_granted_before_the_receipt_lease_column_gets_it_from_the_migration() {
    // A server set up with runtime_role.sql before V9 has no grant on the column V9 adds; the
    // migration grants it where the role exists, or the upgraded receipt poller is refused.
    const V9: &str = include_str!("../../migrations/V9__receipt_lease.sql");
    let app = prepare_with(|_| {}).await;
    let _role = PgRole::create(&app).await;
    let may_lease = || async {
        app.one::<bool>(
            "SELECT has_column_privilege('notify_relay', 'delivery', 'receipt_leased_until', 'UPDATE')",
            &[],
        )
        .await
    };
    assert!(may_lease().await, "runtime_role.sql grants it on a fresh set-up");

    app.db.batch_execute("REVOKE UPDATE (receipt_leased_until) ON delivery FROM notify_relay").await.expect("revoke");
    assert!(!may_lease().await, "as set up before V9");
    let grant = V9.find("DO $$").map(|at| &V9[at..]).expect("V9 grants the column where the role exists");
    app.db.batch_execute(grant).await.expect("V9's grant runs");
    assert!(may_lease().await);
}
