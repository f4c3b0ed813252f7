//! `migrations/optional/supabase_rls.sql` on a stand-in of what Supabase defines (the `auth`
//! schema, `auth.uid()`, the roles `anon` and `authenticated`, and its default grants of every
//! table to both): a signed-in user (`SET ROLE authenticated` with the JWT's `sub` set as
//! PostgREST sets it) reaches their own rows as docs/supabase.md says and nobody else's; `anon`
//! reaches nothing. The relay's migrations run on a database where Supabase's `auth` schema is
//! already there. And what docs/supabase.md says of Supabase's own service role key.

use crate::helpers::{base_database_url, clean_up, drop_database, pg, prepare, TestApp};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::Client;
use uuid::Uuid;

const RLS: &str = include_str!("../../migrations/optional/supabase_rls.sql");

/// What a Supabase project has before its first table, as far as the policies use it. `auth.uid()`
/// is Supabase's own definition: the `sub` claim PostgREST puts in the settings, as
/// `request.jwt.claim.sub` (older PostgREST) or inside `request.jwt.claims` (current).
/// Roles belong to the whole cluster, and tests running at once share them: they are created when
/// missing (a concurrent creation losing the race is fine) and never dropped.
const SUPABASE_STAND_IN: &str = r#"
CREATE SCHEMA IF NOT EXISTS auth;
CREATE OR REPLACE FUNCTION auth.uid() RETURNS uuid LANGUAGE sql STABLE AS $$
    SELECT nullif(coalesce(current_setting('request.jwt.claim.sub', true),
                           (current_setting('request.jwt.claims', true)::jsonb ->> 'sub')), '')::uuid
$$;
DO $$
DECLARE
    role_name text;
BEGIN
    FOREACH role_name IN ARRAY ARRAY['authenticated', 'anon'] LOOP
        BEGIN
            IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = role_name) THEN
                EXECUTE format('CREATE ROLE %I NOLOGIN NOINHERIT', role_name);
            END IF;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
        END;
    END LOOP;
END
$$;
GRANT USAGE ON SCHEMA auth, public TO anon, authenticated;
"#;

/// The relay's tables as an app sees them through PostgREST on Supabase.
const TABLES: [&str; 6] =
    ["notification", "device", "notification_failed", "delivery", "topic_subscription", "refinery_schema_history"];

/// A prepared (migrated) database with the stand-in, Supabase's default grants of every table to
/// `anon` and `authenticated` (what the file must take back), and the RLS file applied twice (it
/// is idempotent).
async fn supabase_app() -> TestApp {
    let app = prepare().await;
    app.db.batch_execute(SUPABASE_STAND_IN).await.expect("the Supabase stand-in");
    app.db
        .batch_execute("GRANT ALL ON ALL TABLES IN SCHEMA public TO anon, authenticated")
        .await
        .expect("Supabase's default grants");
    app.db.batch_execute(RLS).await.expect("supabase_rls.sql applies");
    app.db.batch_execute(RLS).await.expect("supabase_rls.sql applies again");
    app
}

/// The session as PostgREST runs a request with this user's access token.
async fn as_user(db: &Client, user: Uuid) {
    db.batch_execute("RESET ROLE").await.expect("RESET ROLE");
    db.execute("SELECT set_config('request.jwt.claim.sub', $1, false)", &[&user.to_string()])
        .await
        .expect("set the sub claim");
    db.batch_execute("SET ROLE authenticated").await.expect("SET ROLE authenticated");
}

/// The session as PostgREST runs a request with only the anon key.
async fn as_anon(db: &Client) {
    db.batch_execute("RESET ROLE; SELECT set_config('request.jwt.claim.sub', '', false); SET ROLE anon")
        .await
        .expect("SET ROLE anon");
}

/// Back to the test's superuser (the tables' owner, as the relay is).
async fn as_owner(db: &Client) {
    db.batch_execute("RESET ROLE").await.expect("RESET ROLE");
}

/// The statement was refused for want of a privilege or by a policy (both SQLSTATE 42501);
/// returns the message, which tells the two apart.
async fn refused(db: &Client, sql: &str, params: &[&(dyn ToSql + Sync)]) -> String {
    let error = db.execute(sql, params).await.expect_err(sql);
    assert_eq!(error.code(), Some(&SqlState::INSUFFICIENT_PRIVILEGE), "{error:?}");
    error.as_db_error().map(|e| e.message().to_string()).unwrap_or_default()
}

async fn count(db: &Client, sql: &str) -> i64 {
    db.query_one(&format!("SELECT count(*) FROM ({sql}) q"), &[]).await.expect(sql).get(0)
}

async fn device(db: &Client, user: Uuid, token: &str) -> Uuid {
    db.query_one(
        "INSERT INTO device (user_id, provider, token) VALUES ($1, 'expo', $2) RETURNING id",
        &[&user.to_string(), &token],
    )
    .await
    .expect("insert device")
    .get(0)
}

#[actix_web::test]
async fn a_user_registers_reads_and_removes_their_own_devices_and_touches_no_one_elses() {
    let app = supabase_app().await;
    let db = &app.db;
    let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
    let bobs = device(db, bob, "ExponentPushToken[bob]").await;

    as_user(db, alice).await;
    // What supabase-js sends for `.insert({ user_id, provider, token }).select()`.
    let mine: Uuid = db
        .query_one(
            "INSERT INTO device (user_id, provider, token) VALUES ($1, 'expo', 'ExponentPushToken[alice]') RETURNING id",
            &[&alice.to_string()],
        )
        .await
        .expect("alice registers her device")
        .get(0);
    let seen = db.query("SELECT id, user_id FROM device", &[]).await.unwrap();
    assert_eq!(seen.len(), 1, "alice sees her own device only");
    assert_eq!(seen[0].get::<_, Uuid>(0), mine);

    // Not for someone else, not an email address (the API checks those against the token's
    // claim), not a malformed token, not the relay's columns.
    for (user, provider, token) in [
        (bob, "expo", "ExponentPushToken[for-bob]"),
        (alice, "email", "bob@example.com"),
        (alice, "expo", "not-a-token"),
        (alice, "apns", "abc"),
        (alice, "sms", "1"),
    ] {
        let sql = "INSERT INTO device (user_id, provider, token) VALUES ($1, $2, $3)";
        let message = refused(db, sql, &[&user.to_string(), &provider, &token]).await;
        assert!(message.contains("row-level security"), "{user} {provider} {token}: {message}");
    }
    let apns = "ab".repeat(32);
    db.execute("INSERT INTO device (user_id, provider, token) VALUES ($1, 'apns', $2)", &[&alice.to_string(), &apns])
        .await
        .expect("a well-formed APNs token");
    let column = refused(
        db,
        "INSERT INTO device (user_id, provider, token, disabled_at) VALUES ($1, 'fcm', 'x', now())",
        &[&alice.to_string()],
    )
    .await;
    assert!(column.contains("permission denied"), "{column}");

    // Bob's device: invisible, and neither deleted nor re-pointed.
    assert_eq!(count(db, &format!("SELECT 1 FROM device WHERE id = '{bobs}'")).await, 0);
    assert_eq!(db.execute("DELETE FROM device WHERE id = $1", &[&bobs]).await.expect("DELETE runs"), 0);
    let update = refused(db, "UPDATE device SET user_id = $1 WHERE id = $2", &[&alice.to_string(), &bobs]).await;
    assert!(update.contains("permission denied"), "{update}");

    // Her own: removed.
    assert_eq!(db.execute("DELETE FROM device WHERE id = $1", &[&mine]).await.expect("alice removes hers"), 1);
    assert_eq!(count(db, "SELECT 1 FROM device WHERE provider = 'expo'").await, 0);

    as_owner(db).await;
    let left: Vec<(String, String)> = db
        .query("SELECT user_id, provider FROM device ORDER BY provider", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(left, [(alice.to_string(), "apns".to_string()), (bob.to_string(), "expo".to_string())]);
}

/// Deleting a device deletes its delivery rows, and the trigger that settles their notifications
/// then runs for the app's role: it must still see and settle them (SECURITY DEFINER).
#[actix_web::test]
async fn a_device_the_user_removes_mid_delivery_settles_its_notification() {
    let app = supabase_app().await;
    let db = &app.db;
    let alice = Uuid::new_v4();
    let phone = device(db, alice, "ExponentPushToken[alice]").await;
    let notification: Uuid = db
        .query_one(
            "INSERT INTO notification (user_id, type, status) VALUES ($1, 'test', 'queued') RETURNING id",
            &[&alice.to_string()],
        )
        .await
        .unwrap()
        .get(0);
    db.execute(
        "INSERT INTO delivery (notification_id, device_id, provider) VALUES ($1, $2, 'expo')",
        &[&notification, &phone],
    )
    .await
    .unwrap();

    as_user(db, alice).await;
    assert_eq!(db.execute("DELETE FROM device WHERE id = $1", &[&phone]).await.expect("alice removes her phone"), 1);
    as_owner(db).await;

    let row =
        db.query_one("SELECT status, last_error FROM notification WHERE id = $1", &[&notification]).await.unwrap();
    assert_eq!(row.get::<_, String>(0), "failed");
    assert_eq!(row.get::<_, String>(1), "not delivered: every target was deleted with its device");
    assert_eq!(
        count(db, &format!("SELECT 1 FROM notification_failed WHERE notification_id = '{notification}'")).await,
        1
    );
}

#[actix_web::test]
async fn a_user_reads_only_their_own_notifications_failures_and_subscriptions_and_changes_no_notification() {
    let app = supabase_app().await;
    let db = &app.db;
    let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
    for user in [alice, bob] {
        let user = user.to_string();
        db.execute(
            "WITH n AS (INSERT INTO notification (user_id, type, status) VALUES ($1, 'test', 'failed') RETURNING id)
             INSERT INTO notification_failed (notification_id, user_id, error, attempt_count, payload)
             SELECT id, $1, 'boom', 5, '{}' FROM n",
            &[&user],
        )
        .await
        .unwrap();
        db.execute("INSERT INTO topic_subscription (topic, user_id) VALUES ('match.1', $1), ('match.2', $1)", &[&user])
            .await
            .unwrap();
    }
    // A topic row belongs to nobody: no user reads it.
    db.batch_execute("INSERT INTO notification (topic, type) VALUES ('match.1', 'goal')").await.unwrap();
    let alices: Uuid =
        db.query_one("SELECT id FROM notification WHERE user_id = $1", &[&alice.to_string()]).await.unwrap().get(0);

    as_user(db, alice).await;
    let me = alice.to_string();
    for table in ["notification", "notification_failed", "topic_subscription"] {
        let users: Vec<String> =
            db.query(&format!("SELECT user_id FROM {table}"), &[]).await.unwrap().iter().map(|r| r.get(0)).collect();
        assert!(!users.is_empty() && users.iter().all(|u| *u == me), "{table}: {users:?}");
    }
    assert_eq!(count(db, "SELECT 1 FROM notification").await, 1);
    assert_eq!(count(db, "SELECT 1 FROM notification_failed").await, 1);
    assert_eq!(count(db, "SELECT 1 FROM topic_subscription").await, 2);

    // Notifications are read-only, her own too; the relay's bookkeeping is not hers to read.
    let update = refused(db, "UPDATE notification SET status = 'pending' WHERE id = $1", &[&alices]).await;
    assert!(update.contains("permission denied"), "{update}");
    refused(db, "DELETE FROM notification WHERE id = $1", &[&alices]).await;
    refused(db, "INSERT INTO notification (user_id, type) VALUES ($1, 'spoofed')", &[&me]).await;
    refused(db, "UPDATE notification_failed SET retried_at = now()", &[]).await;
    refused(db, "SELECT * FROM delivery", &[]).await;
    refused(db, "SELECT * FROM refinery_schema_history", &[]).await;

    // Subscriptions: her own in and out, nobody else's.
    db.execute("INSERT INTO topic_subscription (topic, user_id) VALUES ('match.3', $1)", &[&me])
        .await
        .expect("alice subscribes");
    let bobs =
        refused(db, "INSERT INTO topic_subscription (topic, user_id) VALUES ('match.3', $1)", &[&bob.to_string()])
            .await;
    assert!(bobs.contains("row-level security"), "{bobs}");
    for topic in ["a b", "..", ""] {
        let bad_topic =
            refused(db, "INSERT INTO topic_subscription (topic, user_id) VALUES ($1, $2)", &[&topic, &me]).await;
        assert!(bad_topic.contains("row-level security"), "{topic:?}: {bad_topic}");
    }
    assert_eq!(
        db.execute("DELETE FROM topic_subscription WHERE user_id = $1", &[&bob.to_string()])
            .await
            .expect("DELETE runs"),
        0
    );
    assert_eq!(
        db.execute("DELETE FROM topic_subscription WHERE topic = 'match.1'", &[]).await.expect("alice unsubscribes"),
        1
    );

    as_owner(db).await;
    assert_eq!(count(db, &format!("SELECT 1 FROM topic_subscription WHERE user_id = '{bob}'")).await, 2);
    assert_eq!(count(db, &format!("SELECT 1 FROM topic_subscription WHERE user_id = '{alice}'")).await, 2);
    let status: String =
        db.query_one("SELECT status FROM notification WHERE id = $1", &[&alices]).await.unwrap().get(0);
    assert_eq!(status, "failed");
}

#[actix_web::test]
async fn anon_and_a_session_without_a_user_reach_nothing() {
    let app = supabase_app().await;
    let db = &app.db;
    let alice = Uuid::new_v4();
    device(db, alice, "ExponentPushToken[alice]").await;
    app.notify(&alice.to_string(), serde_json::json!({})).await;
    db.execute("INSERT INTO topic_subscription (topic, user_id) VALUES ('t', $1)", &[&alice.to_string()])
        .await
        .unwrap();

    as_anon(db).await;
    for table in TABLES {
        let message = refused(db, &format!("SELECT * FROM {table}"), &[]).await;
        assert!(message.contains("permission denied"), "{table}: {message}");
    }
    refused(db, "INSERT INTO device (user_id, provider, token) VALUES ('x', 'expo', 'ExponentPushToken[x]')", &[])
        .await;
    refused(db, "INSERT INTO topic_subscription (topic, user_id) VALUES ('t', 'x')", &[]).await;
    refused(db, "SELECT notify_relay_own_active_devices()", &[]).await;

    // `authenticated` without a `sub` (auth.uid() is NULL) matches no row.
    db.batch_execute("RESET ROLE; SELECT set_config('request.jwt.claim.sub', '', false); SET ROLE authenticated")
        .await
        .unwrap();
    for table in ["notification", "device", "notification_failed", "topic_subscription"] {
        assert_eq!(count(db, &format!("SELECT 1 FROM {table}")).await, 0, "{table}");
    }
    as_owner(db).await;
}

/// docs/supabase.md's trigger: an app's own table, updated by the user through supabase-js, inserts
/// the notification. The trigger runs as that user, who may not insert notifications, so the
/// function must be SECURITY DEFINER (owned by the tables' owner), as the guide says.
#[actix_web::test]
async fn a_trigger_on_the_apps_table_notifies_when_its_function_is_security_definer() {
    let app = supabase_app().await;
    let db = &app.db;
    let alice = Uuid::new_v4();
    db.batch_execute(
        "CREATE TABLE orders (id bigint PRIMARY KEY, user_id uuid NOT NULL, shipped_at timestamptz);
         ALTER TABLE orders ENABLE ROW LEVEL SECURITY;
         GRANT SELECT, UPDATE ON orders TO authenticated;
         CREATE POLICY orders_own ON orders FOR ALL TO authenticated USING (user_id = (select auth.uid()));
         CREATE FUNCTION notify_order_shipped() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF NEW.shipped_at IS NOT NULL AND OLD.shipped_at IS NULL THEN
                 INSERT INTO notification (user_id, type, payload, idempotency_key)
                 VALUES (NEW.user_id::text, 'order.shipped', jsonb_build_object('title', 'Shipped'),
                         'order-shipped:' || NEW.id)
                 ON CONFLICT DO NOTHING;
             END IF;
             RETURN NEW;
         END $$;
         CREATE TRIGGER order_shipped AFTER UPDATE OF shipped_at ON orders
             FOR EACH ROW EXECUTE FUNCTION notify_order_shipped();",
    )
    .await
    .expect("the app's table and trigger");
    db.execute("INSERT INTO orders (id, user_id) VALUES (42, $1)", &[&alice]).await.unwrap();

    as_user(db, alice).await;
    let plain = refused(db, "UPDATE orders SET shipped_at = now() WHERE id = 42", &[]).await;
    assert!(plain.contains("permission denied for table notification"), "{plain}");

    as_owner(db).await;
    db.batch_execute("ALTER FUNCTION notify_order_shipped() SECURITY DEFINER SET search_path = public, pg_temp")
        .await
        .unwrap();
    as_user(db, alice).await;
    assert_eq!(db.execute("UPDATE orders SET shipped_at = now() WHERE id = 42", &[]).await.expect("shipped"), 1);
    let row = db.query_one("SELECT type, status FROM notification", &[]).await.expect("alice reads her notification");
    assert_eq!((row.get::<_, String>(0), row.get::<_, String>(1)), ("order.shipped".into(), "pending".into()));
    as_owner(db).await;
}

/// A database that is not a TestApp's (its migrations must run after the test has set it up),
/// dropped with the test, passed or failed.
struct ScratchDatabase {
    name: String,
}

impl Drop for ScratchDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        clean_up(async move { drop_database(&name).await });
    }
}

/// Supabase creates `auth` (with `auth.users`, its own functions and its own tables) before any
/// of the project's migrations, and grants every new table in `public` to anon and authenticated.
/// The relay's migrations run there and leave `auth` as they found it.
#[actix_web::test]
async fn the_migrations_run_beside_supabases_auth_schema() {
    let scratch = ScratchDatabase { name: format!("test_{}", Uuid::new_v4().simple()) };
    let base = base_database_url();
    pg(&base).await.batch_execute(&format!("CREATE DATABASE {}", scratch.name)).await.expect("create database");
    let url = format!("{}/{}", base.rsplit_once('/').map(|(b, _)| b).unwrap_or(&base), scratch.name);
    let db = pg(&url).await;
    db.batch_execute(SUPABASE_STAND_IN).await.expect("the Supabase stand-in");
    db.batch_execute(
        "CREATE TABLE auth.users (id uuid PRIMARY KEY, email text, created_at timestamptz DEFAULT now());
         CREATE TABLE auth.refresh_tokens (id bigserial PRIMARY KEY, user_id text, token text);
         CREATE TABLE auth.schema_migrations (version text PRIMARY KEY);
         INSERT INTO auth.users (id, email) VALUES (gen_random_uuid(), 'alice@example.com');
         ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON TABLES TO anon, authenticated;",
    )
    .await
    .expect("Supabase's auth schema");
    let auth_objects = "SELECT string_agg(c.relname, ',' ORDER BY c.relname) FROM pg_class c
                          JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'auth'";
    let before: String = db.query_one(auth_objects, &[]).await.unwrap().get(0);

    let config: tokio_postgres::Config = url.parse().expect("database url");
    notify_relay::migrate::run(&config.into()).await.expect("the migrations run beside auth");

    let after: String = db.query_one(auth_objects, &[]).await.unwrap().get(0);
    assert_eq!(after, before, "the migrations added nothing to auth, nor removed anything");
    assert_eq!(count(&db, "SELECT 1 FROM auth.users").await, 1);
    for table in TABLES {
        let schema: Option<String> = db
            .query_one("SELECT relnamespace::regnamespace::text FROM pg_class WHERE relname = $1", &[&table])
            .await
            .unwrap()
            .get(0);
        assert_eq!(schema.as_deref(), Some("public"), "{table}");
    }
    let version: i32 = db.query_one("SELECT max(version) FROM refinery_schema_history", &[]).await.unwrap().get(0);
    assert_eq!(version, notify_relay::migrate::latest_version());

    // The default grants reached the relay's tables; the RLS file takes them back.
    db.batch_execute(RLS).await.expect("supabase_rls.sql applies");
    as_anon(&db).await;
    refused(&db, "SELECT * FROM notification", &[]).await;
    as_owner(&db).await;
}

/// docs/supabase.md, "The service role": the key a Supabase project hands out as its service
/// role key is an HS256 JWT of the legacy secret with `iss: supabase` and no `aud`. The relay
/// checks `auth.issuer` / `auth.audience` on every token, so that key is refused where they are
/// set, and a service token minted with the project's issuer and audience is accepted.
#[actix_web::test]
async fn supabases_service_role_key_is_accepted_where_issuer_and_audience_are_checked_and_its_anon_key_is_not() {
    use crate::tokens::{hs256, AUDIENCE, HS_SECRET, ISSUER};
    use notify_relay::configuration::Secret;
    let now = chrono::Utc::now().timestamp();
    let supabase_key = hs256(
        HS_SECRET.as_bytes(),
        &serde_json::json!({"iss": "supabase", "ref": "test-project", "role": "service_role", "iat": now, "exp": now + 3600}),
    );
    let minted = hs256(
        HS_SECRET.as_bytes(),
        &serde_json::json!({"iss": ISSUER, "aud": AUDIENCE, "role": "service_role", "exp": now + 300}),
    );
    let route = "/users/bob/notifications/failed";

    // Its anon key has the same issuer; a key of that issuer signed with another secret.
    let anon_key = hs256(
        HS_SECRET.as_bytes(),
        &serde_json::json!({"iss": "supabase", "ref": "test-project", "role": "anon", "iat": now, "exp": now + 3600}),
    );
    let forged = hs256(
        b"not-the-project-secret-not-the-project-secret",
        &serde_json::json!({"iss": "supabase", "role": "service_role", "exp": now + 3600}),
    );
    let expired =
        hs256(HS_SECRET.as_bytes(), &serde_json::json!({"iss": "supabase", "role": "service_role", "exp": now - 3600}));
    let checked = crate::api::api().await; // jwt_secret, issuer and audience set
    let (status, body) = checked.get(route, Some(&supabase_key)).await;
    assert_eq!(status, 200, "the project's service_role key: {body}");
    assert_eq!(checked.get(route, Some(&minted)).await.0, 200);
    for (name, token) in [("anon key", &anon_key), ("forged", &forged), ("expired", &expired)] {
        let (status, body) = checked.get(route, Some(token)).await;
        assert_eq!(status, 401, "{name}: {body}");
    }
    drop(checked);

    let unchecked = crate::api::with_jwks(|s| s.auth.jwt_secret = Some(Secret::new(HS_SECRET))).await;
    let (status, body) = unchecked.get(route, Some(&supabase_key)).await;
    assert_eq!(status, 200, "{body}");
}
