//! `TestApp`: a fresh database (named by a uuid, migrated), a unique Redis key prefix, an Expo
//! emulator on a loopback port, and the real application (engine + API on port 0) in the test's
//! actix System.
//!
//! Its [`Settings`] are loaded once (the shipped defaults, then this test's database, Redis
//! prefix, emulator and the tests' quicker timings) and changed through their typed fields:
//! `app.settings.claim.min_idle = Duration::from_secs(60)`, or `prepare_with(|s| …)`. `start`
//! validates them first, so a test cannot start what the binary would refuse; the binary
//! (`spawn_binary`) gets the same settings as `NOTIFY__…` variables.
//!
//! Everything a test makes is removed when it is dropped — the database, the Redis keys, temp
//! files and directories, child processes — so a test that fails half-way leaves nothing behind
//! and a test that passes needs no cleanup call. Below `TestApp`: the waits (`eventually`,
//! `samples_holding`), the shared inserts and the shared assertions.

use emulators::expo::ExpoEmulator;
// Shared with tests/providers.
use emulators::testing::remove_keys;
pub use emulators::testing::{
    eventually, eventually_explained, redis_connection, until_redis_answers, RelayProcess, TempDir,
};
use notify_relay::configuration::{Secret, Settings};
use notify_relay::startup::{Application, ProcessRoles};
use notify_relay_engine::clock::ManualClock;
use notify_relay_engine::Keys;
use serde_json::Value;
use std::collections::HashMap;
use std::time::Duration;
use tokio_postgres::types::{FromSql, ToSql};
use uuid::Uuid;

pub const ADMIN_TOKEN: &str = "test-admin-token";

pub fn base_database_url() -> String {
    std::env::var("TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

pub fn redis_url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

pub struct TestApp {
    pub db: tokio_postgres::Client,
    pub db_name: String,
    pub prefix: String,
    pub keys: Keys,
    pub expo: ExpoEmulator,
    /// What `start` (and `spawn_binary`) run with; change it before starting.
    pub settings: Settings,
    pub app: Option<Application>,
    pub redis: redis::aio::MultiplexedConnection,
    /// The clock of the API's JWKS cache (of `start`, not of replicas): it stands still until
    /// the test moves it.
    pub auth_clock: ManualClock,
    /// Last, so that it is dropped after the in-process application.
    leftovers: Leftovers,
}

pub async fn pg(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.expect("connect to Postgres");
    actix_rt::spawn(connection);
    client
}

/// A migrated database and everything around it, with the application not started yet.
pub async fn prepare() -> TestApp {
    let id = Uuid::new_v4().simple().to_string();
    let db_name = format!("test_{id}");
    let base = base_database_url();
    pg(&base).await.batch_execute(&format!("CREATE DATABASE {db_name}")).await.expect("create test database");
    let db_url = format!("{}/{db_name}", base.rsplit_once('/').map(|(b, _)| b).unwrap_or(&base));
    let config: tokio_postgres::Config = db_url.parse().expect("database url");
    notify_relay::migrate::run(&config.into()).await.expect("migrations");
    let expo = ExpoEmulator::start("127.0.0.1:0", None).await.expect("expo emulator");
    let prefix = format!("test-{id}");
    let settings = test_settings(&db_url, &prefix, &expo.url());
    let redis = redis_connection(&redis_url()).await.expect("redis");
    let leftovers = Leftovers { db_name: db_name.clone(), prefix: prefix.clone(), temp_files: Vec::new() };
    TestApp {
        db: pg(&db_url).await,
        db_name,
        keys: Keys::new(prefix.clone(), 1),
        prefix,
        expo,
        settings,
        app: None,
        redis,
        auth_clock: ManualClock::new(),
        leftovers,
    }
}

/// The shipped defaults with this test's database, Redis prefix and Expo emulator, and the
/// tests' quicker timings (retries in milliseconds, claims after 2.5 s, one sender).
fn test_settings(db_url: &str, prefix: &str, expo_url: &str) -> Settings {
    let ms = Duration::from_millis;
    let mut s = Settings::load(None, &HashMap::new()).expect("the shipped defaults load");
    s.database.url = Secret::new(db_url);
    s.database.pool_size = 4;
    s.redis.url = Secret::new(redis_url());
    s.redis.key_prefix = prefix.to_string();
    s.http.addr = "127.0.0.1:0".into();
    s.auth.admin_token = Some(Secret::new(ADMIN_TOKEN));
    s.retry.base = ms(20);
    s.retry.max = ms(100);
    s.claim.interval = ms(200);
    s.claim.min_idle = ms(2500);
    s.scheduler.delay_poll = ms(20);
    s.worker.senders_per_provider = 1;
    s.circuit.failures = 3;
    s.circuit.open = ms(100);
    s.circuit.max_open = ms(400);
    let expo = &mut s.providers.expo;
    expo.base_url = expo_url.to_string();
    expo.timeout = ms(2000);
    expo.receipt_delay = ms(100);
    expo.receipt_poll = ms(100);
    expo.rate_per_sec = 0;
    s
}

/// A prepared app, started.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// A prepared app whose settings `change` changes, on top of the tests' defaults.
pub async fn prepare_with(change: impl FnOnce(&mut Settings)) -> TestApp {
    let mut app = prepare().await;
    change(&mut app.settings);
    app
}

/// [`prepare_with`], started.
pub async fn spawn_app_with(change: impl FnOnce(&mut Settings)) -> TestApp {
    let mut app = prepare_with(change).await;
    app.start().await;
    app
}

/// A prepared app that `enable` changes first (a provider pointed at its emulator), started.
pub async fn spawn_app_enabling(enable: impl FnOnce(&mut TestApp)) -> TestApp {
    let mut app = prepare().await;
    enable(&mut app);
    app.start().await;
    app
}

/// `settings` as the binary reads them from its environment: one `NOTIFY__<SECTION>__<KEY>`
/// variable per value (lists comma-separated; unset options and empty lists left out, as the
/// defaults have them).
pub fn settings_env(settings: &Settings) -> HashMap<String, String> {
    fn walk(prefix: &str, value: &Value, env: &mut HashMap<String, String>) {
        let text = match value {
            Value::Object(map) => {
                for (key, value) in map {
                    walk(&format!("{prefix}__{}", key.to_uppercase()), value, env);
                }
                return;
            }
            Value::Null => return,
            Value::Array(items) if items.is_empty() => return,
            Value::Array(items) => items
                .iter()
                .map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_string))
                .collect::<Vec<_>>()
                .join(","),
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        env.insert(prefix.to_string(), text);
    }
    let mut env = HashMap::new();
    walk("NOTIFY", &serde_json::to_value(settings).expect("settings serialize"), &mut env);
    env
}

impl TestApp {
    pub async fn start(&mut self) {
        self.start_with(ProcessRoles::ALL).await;
    }

    pub async fn start_with(&mut self, roles: ProcessRoles) {
        let log = if std::env::var("TEST_LOG").is_ok() {
            let (log, guard) = notify_relay::telemetry::logger(slog::Level::Debug);
            std::mem::forget(guard); // keep the log thread for the whole test process
            log
        } else {
            notify_relay::telemetry::discard()
        };
        self.start_logging_to(roles, log).await;
    }

    /// Starts the app with `roles`, its log lines kept for the test to read.
    pub async fn start_logged(&mut self, roles: ProcessRoles) -> CapturedLog {
        let captured = CapturedLog::default();
        self.start_logging_to(roles, captured.logger()).await;
        captured
    }

    async fn start_logging_to(&mut self, roles: ProcessRoles, log: slog::Logger) {
        let settings = self.valid_settings();
        let consumer = format!("test-consumer-{}", Uuid::new_v4().simple());
        let clock = self.auth_clock.shared();
        let app = Application::build_with_clock(settings, roles, false, consumer, log, clock)
            .await
            .expect("application starts");
        self.app = Some(app);
    }

    /// The settings, checked as the binary would check them at start-up.
    pub fn valid_settings(&self) -> Settings {
        if let Err(e) = self.settings.validate() {
            panic!("the test's settings would not start: {e}");
        }
        self.settings.clone()
    }

    /// Another process's worth of engine and API on the same database and Redis prefix (a second
    /// replica), started in this System.
    pub async fn start_replica(&self) -> Application {
        self.start_replica_with(ProcessRoles::ALL).await
    }

    /// Another process with only these roles (e.g. a scheduler next to this app's worker).
    pub async fn start_replica_with(&self, roles: ProcessRoles) -> Application {
        let consumer = format!("test-replica-{}", Uuid::new_v4().simple());
        Application::build(self.valid_settings(), roles, false, consumer, notify_relay::telemetry::discard())
            .await
            .expect("replica starts")
    }

    /// How many messages the actor `name` of `app` has handled (ticks, reads…).
    pub fn handled(app: &Application, name: &str) -> u64 {
        app.engine.registry().snapshot().iter().find(|a| a.name == name).map_or(0, |a| a.handled)
    }

    pub async fn stop(&mut self) -> bool {
        match self.app.take() {
            Some(app) => app.stop(Duration::from_secs(5)).await,
            None => true,
        }
    }

    /// Stops the app gracefully (engine drain, API stop), then drops it: the database, Redis
    /// keys and temp files go with the drop. A test that only needs the removal just ends.
    pub async fn cleanup(mut self) {
        self.stop().await;
    }

    /// A file this test writes (an emulator's CA, a JWKS file), removed when the app is dropped.
    pub fn remove_on_drop(&mut self, file: std::path::PathBuf) {
        self.leftovers.temp_files.push(file);
    }

    /// Another client of this test's database (e.g. to hold locks in a transaction of its own).
    pub async fn connect_db(&self) -> tokio_postgres::Client {
        pg(self.settings.database.url.expose()).await
    }

    /// Starts the real binary (`notify-relay run`) with this app's settings, as `change` changes
    /// them for this process only.
    pub fn spawn_binary(&self, change: impl FnOnce(&mut Settings)) -> RelayProcess {
        self.spawn_roles("listener,worker,scheduler,api", change)
    }

    /// The environment that hands this app's settings to the binary.
    pub fn binary_env(&self) -> HashMap<String, String> {
        settings_env(&self.valid_settings())
    }

    /// Starts the real binary with `--roles roles` and this app's settings, as `change` changes
    /// them for this process only. Its log goes to the test's stdout when `TEST_LOG` is set.
    pub fn spawn_roles(&self, roles: &str, change: impl FnOnce(&mut Settings)) -> RelayProcess {
        let mut settings = self.valid_settings();
        change(&mut settings);
        if let Err(e) = settings.validate() {
            panic!("the binary's settings would not start: {e}");
        }
        let log = if std::env::var("TEST_LOG").is_ok() {
            std::process::Stdio::inherit()
        } else {
            std::process::Stdio::null()
        };
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_notify-relay"))
            .arg("run")
            .arg("--no-migrate")
            .arg("--roles")
            .arg(roles)
            .env_remove("NOTIFY_CONFIG")
            .envs(settings_env(&settings))
            .stdout(log)
            .spawn()
            .expect("start the binary");
        RelayProcess(child)
    }

    /// Stream readers of this prefix (any process) waiting on shard 0 (`XREADGROUP … BLOCK`),
    /// found by their connection name in `CLIENT LIST`: a worker that is up and reading. (The
    /// group lists a consumer only once it has been handed an entry.)
    pub async fn readers_waiting(&self) -> usize {
        let mut conn = self.redis.clone();
        let clients: String = redis::cmd("CLIENT").arg("LIST").query_async(&mut conn).await.expect("CLIENT LIST");
        let name = format!(" name={}:reader-0 ", self.prefix);
        clients.lines().filter(|c| c.contains(&name) && c.contains(" cmd=xreadgroup ")).count()
    }

    /// How many provider sends were duplicates (same notification to the same token again).
    pub fn duplicate_sends(&self) -> usize {
        let sent = self.expo.sent();
        let unique: std::collections::HashSet<_> =
            sent.iter().map(|m| (m.to.clone(), m.notification_id().map(str::to_string))).collect();
        sent.len() - unique.len()
    }

    /// Waits until no notification is scheduled, pending, queued or retrying; on timeout the
    /// failure names what is still open, with its targets.
    pub async fn all_final(&self, limit: Duration) {
        let open = "SELECT count(*) FROM notification WHERE status IN ('scheduled', 'pending', 'queued', 'retrying')";
        let still_open = || async { format!(": notifications still open:\n{}", self.open_rows().await) };
        eventually_explained(limit, || async { (self.count(open).await == 0).then_some(()) }, still_open).await;
    }

    /// Up to 20 open notifications, each with its targets' status, attempts and last error.
    async fn open_rows(&self) -> String {
        let rows = self
            .db
            .query(
                "SELECT n.id::text || ' ' || n.status || ' attempts ' || n.attempt_count
                        || coalesce(' error ' || n.last_error, '') || ': '
                        || coalesce(string_agg(d.provider || ' ' || d.status || ' attempts ' || d.attempt_count
                                               || coalesce(' next ' || d.next_attempt_at::text, '')
                                               || coalesce(' error ' || d.last_error, ''), '; '), 'no targets')
                   FROM notification n LEFT JOIN delivery d ON d.notification_id = n.id
                  WHERE n.status IN ('scheduled', 'pending', 'queued', 'retrying')
                  GROUP BY n.id ORDER BY n.created_at LIMIT 20",
                &[],
            )
            .await;
        match rows {
            Ok(rows) => rows.iter().map(|r| r.get::<_, String>(0)).collect::<Vec<_>>().join("\n"),
            Err(e) => format!("(could not read them: {e})"),
        }
    }

    /// Waits, for up to `limit`, until the count `sql` returns satisfies `holds`.
    pub async fn wait_for_count(&self, limit: Duration, sql: &str, holds: impl Fn(i64) -> bool) {
        eventually(limit, || async { holds(self.count(sql).await).then_some(()) }).await;
    }

    pub fn api(&self) -> String {
        let port = self.app.as_ref().and_then(|a| a.port).expect("api running");
        format!("http://127.0.0.1:{port}")
    }

    pub async fn add_device(&self, user: &str, provider: &str, token: &str) -> Uuid {
        self.db
            .query_one(
                "INSERT INTO device (user_id, provider, token) VALUES ($1, $2, $3) RETURNING id",
                &[&user, &provider, &token],
            )
            .await
            .expect("insert device")
            .get(0)
    }

    pub async fn notify(&self, user: &str, payload: Value) -> Uuid {
        self.db
            .query_one(
                "INSERT INTO notification (user_id, type, payload) VALUES ($1, 'test', $2) RETURNING id",
                &[&user, &payload],
            )
            .await
            .expect("insert notification")
            .get(0)
    }

    /// An Expo device `ExponentPushToken[user]` for `user` and a first notification to it,
    /// waited for until delivered: the relay is up and delivering. Returns the notification.
    pub async fn delivered_first(&self, user: &str, payload: Value) -> Uuid {
        self.add_device(user, "expo", &format!("ExponentPushToken[{user}]")).await;
        let id = self.notify(user, payload).await;
        assert_eq!(self.final_status(id).await.0, "delivered");
        id
    }

    /// `n` notifications of `user` stored as `delivered` (as if sent earlier), in one statement.
    pub async fn delivered_rows(&self, user: &str, n: i64) -> Vec<Uuid> {
        let rows = self
            .db
            .query(
                "INSERT INTO notification (user_id, type, status, delivered_at)
                 SELECT $1, 't', 'delivered', now() FROM generate_series(1, $2::int8) RETURNING id",
                &[&user, &n],
            )
            .await
            .expect("insert delivered notifications");
        rows.iter().map(|r| r.get(0)).collect()
    }

    /// (status, attempt_count, last_error)
    pub async fn status(&self, id: Uuid) -> (String, i32, Option<String>) {
        let row = self
            .db
            .query_one("SELECT status, attempt_count, last_error FROM notification WHERE id = $1", &[&id])
            .await
            .expect("notification row");
        (row.get(0), row.get(1), row.get(2))
    }

    /// Waits until the notification is `delivered` or `failed`, and returns its row.
    pub async fn final_status(&self, id: Uuid) -> (String, i32, Option<String>) {
        eventually(Duration::from_secs(20), || async {
            let s = self.status(id).await;
            (s.0 == "delivered" || s.0 == "failed").then_some(s)
        })
        .await
    }

    /// Waits until the device is disabled, and returns why (`disabled_reason`).
    pub async fn disabled_reason(&self, device: Uuid) -> String {
        eventually(Duration::from_secs(10), || async {
            let row = self
                .db
                .query_one("SELECT disabled_at IS NOT NULL, disabled_reason FROM device WHERE id = $1", &[&device])
                .await
                .expect("device row");
            row.get::<_, bool>(0).then(|| row.get::<_, Option<String>>(1).unwrap_or_default())
        })
        .await
    }

    /// After notification `id` went to a user with a dead `device` besides a working one: the
    /// notification is delivered, `device` is disabled saying `reason` and its target failed.
    /// Returns the target's `last_error`.
    pub async fn dead_device_error(&self, id: Uuid, device: Uuid, reason: &str) -> String {
        assert_eq!(self.final_status(id).await.0, "delivered");
        let disabled = self.disabled_reason(device).await;
        assert!(disabled.contains(reason), "{disabled}");
        let (status, error) = self.delivery_of(device).await;
        assert_eq!(status, "failed");
        error.unwrap_or_default()
    }

    /// How many devices are disabled.
    pub async fn disabled_devices(&self) -> i64 {
        self.count("SELECT count(*) FROM device WHERE disabled_at IS NOT NULL").await
    }

    /// (status, last_error) of the delivery row of `device` (a test that sent it one).
    pub async fn delivery_of(&self, device: Uuid) -> (String, Option<String>) {
        let row = self
            .db
            .query_one("SELECT status, last_error FROM delivery WHERE device_id = $1", &[&device])
            .await
            .expect("delivery row");
        (row.get(0), row.get(1))
    }

    /// How many notifications are `delivered`.
    pub async fn delivered(&self) -> i64 {
        self.count("SELECT count(*) FROM notification WHERE status = 'delivered'").await
    }

    /// How many `notification_failed` rows there are.
    pub async fn failed_rows(&self) -> i64 {
        self.count("SELECT count(*) FROM notification_failed").await
    }

    pub async fn count(&self, sql: &str) -> i64 {
        self.one(sql, &[]).await
    }

    /// The first column of the one row `sql` returns.
    pub async fn one<T>(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> T
    where
        T: for<'a> FromSql<'a>,
    {
        self.db.query_one(sql, params).await.unwrap_or_else(|e| panic!("{sql}: {e}")).get(0)
    }

    /// The first column of every row `sql` returns, in order.
    pub async fn column<T>(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Vec<T>
    where
        T: for<'a> FromSql<'a>,
    {
        let rows = self.db.query(sql, params).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
        rows.iter().map(|r| r.get(0)).collect()
    }

    /// The one row `sql` returns.
    pub async fn row(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> tokio_postgres::Row {
        self.db.query_one(sql, params).await.unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// Runs one statement; the number of rows it changed.
    pub async fn exec(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> u64 {
        self.db.execute(sql, params).await.unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        let client = awc::Client::default();
        let mut req = client.get(format!("{}{path}", self.api()));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let mut resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let body = resp.json::<Value>().await.unwrap_or(Value::Null);
        (status, body)
    }

    /// A target as a consumer that then died leaves it: the notification `queued` in Postgres
    /// with its delivery row, and its entry in shard 0 read by `dead-0` and never acknowledged.
    /// The write and the read are one `MULTI`, so the live readers never see the entry as new.
    /// Returns (notification, device).
    /// A notification already fanned out in Postgres (`queued`, one `queued` delivery row to an
    /// expo device of `user` with `token`, last touched `idle_secs` ago) and nothing in Redis:
    /// (notification, device).
    pub async fn queued_target(&self, user: &str, token: &str, payload: &Value, idle_secs: i64) -> (Uuid, Uuid) {
        let device = self.add_device(user, "expo", token).await;
        let id: Uuid = self
            .db
            .query_one(
                "INSERT INTO notification (user_id, type, status, payload) VALUES ($1, 't', 'queued', $2) RETURNING id",
                &[&user, payload],
            )
            .await
            .expect("queued notification")
            .get(0);
        self.db
            .execute(
                "INSERT INTO delivery (notification_id, device_id, provider, updated_at)
                 VALUES ($1, $2, 'expo', now() - $3::int8 * interval '1 second')",
                &[&id, &device, &idle_secs],
            )
            .await
            .expect("delivery row");
        (id, device)
    }

    pub async fn orphaned_entry(&self, user: &str, token: &str, payload: Value) -> (Uuid, Uuid) {
        let (id, device) = self.queued_target(user, token, &serde_json::json!({}), 0).await;
        let job = expo_job(id, device, user, token, payload);
        let stream = self.keys.stream(0);
        let mut conn = self.redis.clone();
        let _: redis::Value = redis::pipe()
            .atomic()
            .cmd("XADD")
            .arg(&stream)
            .arg("*")
            .arg("job")
            .arg(job.to_json())
            .cmd("XREADGROUP")
            .arg("GROUP")
            .arg(notify_relay_engine::GROUP)
            .arg("dead-0")
            .arg("COUNT")
            .arg(1)
            .arg("STREAMS")
            .arg(&stream)
            .arg(">")
            .query_async(&mut conn)
            .await
            .expect("orphaned entry");
        (id, device)
    }

    /// Writes a job to shard 0's stream, unread, as a listener (or a Redis restored from an old
    /// snapshot) would have.
    pub async fn enqueue(&self, job: &notify_relay_engine::job::Job) {
        self.enqueue_entry(&job.to_json()).await;
    }

    /// Writes `job` as the `job` field of an entry in shard 0's stream, whatever it holds (a
    /// malformed or partial job, for the poison tests).
    pub async fn enqueue_entry(&self, job: &str) {
        let mut conn = self.redis.clone();
        let _: String = redis::cmd("XADD")
            .arg(self.keys.stream(0))
            .arg("*")
            .arg("job")
            .arg(job)
            .query_async(&mut conn)
            .await
            .expect("XADD");
    }

    /// Creates shard 0's consumer group (and stream) reading from the start, as the engine
    /// does, for tests that hand entries out before it runs.
    pub async fn create_group(&self) {
        let mut conn = self.redis.clone();
        let _: () = self
            .group_cmd(&["XGROUP", "CREATE"])
            .arg(0)
            .arg("MKSTREAM")
            .query_async(&mut conn)
            .await
            .expect("XGROUP CREATE");
    }

    /// The ids of the first `count` pending entries of shard 0, oldest first.
    pub async fn pending_ids(&self, count: usize) -> Vec<String> {
        let mut conn = self.redis.clone();
        let pending: Vec<(String, String, u64, u64)> =
            self.group_cmd(&["XPENDING"]).arg("-").arg("+").arg(count).query_async(&mut conn).await.expect("XPENDING");
        pending.into_iter().map(|(id, ..)| id).collect()
    }

    /// A command on shard 0's consumer group: `words`, then the stream and the group.
    fn group_cmd(&self, words: &[&str]) -> redis::Cmd {
        let mut cmd = redis::cmd(words[0]);
        cmd.arg(&words[1..]).arg(self.keys.stream(0)).arg(notify_relay_engine::GROUP);
        cmd
    }

    /// The length of shard 0's stream.
    pub async fn stream_len(&self) -> i64 {
        self.xlen(&self.keys.stream(0)).await
    }

    /// The length of shard 0's dead-letter stream.
    pub async fn dlq_len(&self) -> i64 {
        self.xlen(&self.keys.dlq(0)).await
    }

    async fn xlen(&self, key: &str) -> i64 {
        let mut conn = self.redis.clone();
        redis::cmd("XLEN").arg(key).query_async(&mut conn).await.expect("XLEN")
    }

    /// Destroys shard 0's consumer group, as a Redis flush or an operator mistake would.
    pub async fn destroy_group(&self) {
        let mut conn = self.redis.clone();
        let _: () = self.group_cmd(&["XGROUP", "DESTROY"]).query_async(&mut conn).await.expect("XGROUP DESTROY");
    }

    /// Entries of shard 0 read by a consumer and not yet acknowledged.
    pub async fn pending_entries(&self) -> i64 {
        let mut conn = self.redis.clone();
        let summary: Vec<redis::Value> = redis::cmd("XPENDING")
            .arg(self.keys.stream(0))
            .arg(notify_relay_engine::GROUP)
            .query_async(&mut conn)
            .await
            .expect("XPENDING");
        match summary.first() {
            Some(redis::Value::Int(n)) => *n,
            _ => 0,
        }
    }

    /// Points the relay (when next started) at an FCM emulator.
    pub fn enable_fcm(&mut self, fcm: &emulators::fcm::FcmEmulator) {
        let s = &mut self.settings.providers.fcm;
        s.enabled = true;
        s.base_url = fcm.url();
        s.service_account_json = Some(Secret::new(fcm.service_account_json()));
        // Under half of the tests' claim.min_idle_ms (2500): an FCM send may take twice this
        // (the wait for a free connection, then the request).
        s.timeout = Duration::from_millis(1200);
    }

    /// Points the relay at an APNs emulator, trusting its CA, with `team_id` in the provider
    /// token (the emulator's own team unless a test wants it refused).
    pub fn enable_apns(&mut self, apns: &emulators::apns::ApnsEmulator, team_id: &str) {
        let ca_file = std::env::temp_dir().join(format!("apns-ca-{}.pem", Uuid::new_v4().simple()));
        std::fs::write(&ca_file, apns.ca_pem()).expect("write the APNs CA");
        self.remove_on_drop(ca_file.clone());
        let s = &mut self.settings.providers.apns;
        s.enabled = true;
        s.base_url = apns.url();
        s.key = Some(Secret::new(apns.key_pem()));
        s.key_id = apns.key_id().to_string();
        s.team_id = team_id.to_string();
        s.topic = apns.topic().to_string();
        s.ca_file = Some(ca_file);
        s.timeout = Duration::from_millis(2000);
    }

    /// Starts emulators of FCM, APNs and SMTP and points the relay at them (Expo's is always
    /// there): every provider, for the tests that go through all four.
    pub async fn enable_every_provider(&mut self) -> OtherProviders {
        use emulators::{apns::ApnsEmulator, apns::Rules, fcm::FcmEmulator, smtp::SmtpEmulator, smtp::SmtpOptions};
        let fcm = FcmEmulator::start("127.0.0.1:0").await.expect("fcm emulator");
        let apns = ApnsEmulator::start("127.0.0.1:0", Rules::default()).await.expect("apns emulator");
        let smtp = SmtpEmulator::start("127.0.0.1:0", SmtpOptions::default()).await.expect("smtp emulator");
        self.enable_fcm(&fcm);
        self.enable_apns(&apns, apns.team_id());
        self.enable_email(&smtp, "Notifications <no-reply@example.com>");
        OtherProviders { fcm, apns, smtp }
    }

    /// Points the relay at an SMTP emulator.
    pub fn enable_email(&mut self, smtp: &emulators::smtp::SmtpEmulator, from: &str) {
        let s = &mut self.settings.providers.email;
        s.enabled = true;
        s.smtp_url = Secret::new(smtp.url());
        s.from = from.to_string();
        // Under half of the tests' claim.min_idle_ms (2500): an email send may take twice this.
        s.timeout = Duration::from_millis(1200);
    }

    /// Waits until the dead-letter stream of shard 0 holds `n` entries. The outcome writer stores
    /// Postgres first and Redis right after, so a row can be final a moment before its dead
    /// letter is written.
    pub async fn wait_for_dead_letters(&self, n: i64) {
        eventually(Duration::from_secs(10), || async { (self.dlq_len().await == n).then_some(()) }).await;
    }

    /// Waits until a session of the test's database waits on a lock (a row lock another
    /// transaction holds), for up to `limit`.
    pub async fn wait_for_a_lock_wait(&self, limit: Duration) {
        let waiting =
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'";
        self.wait_for_count(limit, waiting, |waiting| waiting > 0).await;
    }

    pub async fn redis_counter(&self, event: &str) -> i64 {
        let key = self.keys.counter(event, None, &notify_relay_engine::events::today());
        let mut conn = self.redis.clone();
        redis::cmd("GET").arg(key).query_async::<Option<i64>>(&mut conn).await.expect("counter").unwrap_or(0)
    }
}

/// A JSON logger whose lines land in a buffer, for tests that read the relay's log.
#[derive(Clone, Default)]
pub struct CapturedLog(emulators::testing::Captured);

impl CapturedLog {
    pub fn logger(&self) -> slog::Logger {
        use slog::Drain;
        let json = slog_json::Json::new(self.0.clone()).add_default_keys().build();
        slog::Logger::root(std::sync::Mutex::new(json).fuse(), slog::o!())
    }

    /// The lines written so far, parsed.
    pub fn lines(&self) -> Vec<Value> {
        self.0.text().lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
    }
}

/// The emulators of `TestApp::enable_every_provider`, running while this lives.
pub struct OtherProviders {
    pub fcm: emulators::fcm::FcmEmulator,
    pub apns: emulators::apns::ApnsEmulator,
    pub smtp: emulators::smtp::SmtpEmulator,
}

/// What a test leaves in the shared Postgres, Redis and temp directory, removed when its
/// `TestApp` is dropped: at its end, or half-way when it fails.
pub struct Leftovers {
    db_name: String,
    prefix: String,
    temp_files: Vec<std::path::PathBuf>,
}

impl Leftovers {
    /// A guard of a database and a Redis key prefix made by something else (a `loadgen` run).
    pub fn of(db_name: &str, prefix: &str) -> Leftovers {
        Leftovers { db_name: db_name.into(), prefix: prefix.into(), temp_files: Vec::new() }
    }
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        for file in &self.temp_files {
            let _ = std::fs::remove_file(file);
        }
        let (db_name, prefix) = (self.db_name.clone(), self.prefix.clone());
        clean_up(async move {
            if let Ok(mut conn) = redis_connection(&redis_url()).await {
                let _ = remove_keys(&mut conn, &prefix).await;
            }
            drop_database(&db_name).await;
        });
    }
}

/// Runs a guard's async clean-up to its end from `Drop`. Drop runs on the test's runtime, which
/// cannot block on async work: a thread with a runtime of its own does it, and is waited for.
pub fn clean_up(work: impl std::future::Future<Output = ()> + Send + 'static) {
    let cleaner = std::thread::spawn(move || {
        if let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() {
            runtime.block_on(work);
        }
    });
    let _ = cleaner.join();
}

/// Runs `sql` on the server's base database, ignoring failures (for clean-ups).
pub async fn on_base_database(sql: &str) {
    if let Ok((client, connection)) = tokio_postgres::connect(&base_database_url(), tokio_postgres::NoTls).await {
        tokio::spawn(connection);
        let _ = client.batch_execute(sql).await;
    }
}

/// Drops the database `name` and ends its sessions, ignoring failures (for clean-ups).
pub async fn drop_database(name: &str) {
    on_base_database(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await;
}

/// `users` users `u1`…, each with one Expo device.
pub async fn add_users(app: &TestApp, users: i64) {
    app.db
        .execute(
            "INSERT INTO device (user_id, provider, token)
             SELECT 'u' || g, 'expo', 'ExponentPushToken[u' || g || ']' FROM generate_series(1, $1::int8) g",
            &[&users],
        )
        .await
        .expect("insert the users' devices");
}

/// One notification (no payload) for each of the users `u1`… of `add_users`.
pub async fn notify_each_user(app: &TestApp, users: i64) {
    app.db
        .execute(
            "INSERT INTO notification (user_id, type) SELECT 'u' || g, 't' FROM generate_series(1, $1::int8) g",
            &[&users],
        )
        .await
        .expect("insert a notification per user");
}

/// `n` notifications (no payload) for `user`, in one statement.
pub async fn notify_times(app: &TestApp, user: &str, n: i64) {
    app.db
        .execute(
            "INSERT INTO notification (user_id, type) SELECT $1, 't' FROM generate_series(1, $2::int8)",
            &[&user, &n],
        )
        .await
        .expect("insert the notifications");
}

/// `n` notifications in one statement, spread over the users of `add_users`.
pub async fn insert_bulk(app: &TestApp, n: i64, users: i64) {
    app.db
        .execute(
            "INSERT INTO notification (user_id, type, payload)
             SELECT 'u' || (1 + g % $2::int8), 'fault', jsonb_build_object('title', 'n' || g)
               FROM generate_series(1, $1::int8) g",
            &[&n, &users],
        )
        .await
        .expect("insert the notifications");
}

/// Waits until the actor `name` of `app` has handled `more` messages after this call (e.g.
/// claim passes): "nothing happened" is then a statement about passes that ran, not about a
/// time that went by.
pub async fn wait_for_passes(app: &Application, name: &str, more: u64) {
    let start = TestApp::handled(app, name);
    eventually(Duration::from_secs(30), || async { (TestApp::handled(app, name) >= start + more).then_some(()) }).await;
}

/// A provider refuses the project's credentials: once the circuit opened and deferred a
/// delivery, `id` is still `retrying` (credentials are the project's problem, so nothing fails
/// for good) with few attempts spent, its error is the provider's `refusal` or the open circuit
/// of `provider`, and no device was disabled.
pub async fn assert_refused_credentials_defer(app: &TestApp, id: Uuid, refusal: &str, provider: &str) {
    eventually(Duration::from_secs(10), || async { (app.redis_counter("DEFERRED").await >= 1).then_some(()) }).await;
    let (status, attempts, error) = app.status(id).await;
    assert_eq!(status, "retrying", "credentials are the project's problem: nothing fails for good");
    assert!(attempts <= 3, "the open circuit stops spending attempts: {attempts}");
    let error = error.unwrap_or_default();
    assert!(error.contains(refusal) || error.contains(&format!("circuit open for {provider}")), "{error}");
    assert_eq!(app.disabled_devices().await, 0);
}

/// Waits until the Expo emulator accepted at least `at_least` messages.
pub async fn wait_for_sends(app: &TestApp, at_least: usize) {
    eventually(Duration::from_secs(60), || async { (app.expo.sent_count() >= at_least).then_some(()) }).await;
}

/// A Redis of the test's own, so that it can be killed and restarted without disturbing the
/// other tests. `start` keeps nothing on disk (a restart comes back empty, like a Redis without
/// persistence); `persistent` writes a snapshot into a directory of its own on `SAVE` only, and
/// comes back from it on `restart`. The process is killed and the directory removed on drop.
pub struct PrivateRedis {
    pub port: u16,
    child: Option<std::process::Child>,
    dir: Option<std::path::PathBuf>,
}

impl PrivateRedis {
    pub async fn start(port: u16) -> PrivateRedis {
        let mut redis = PrivateRedis { port, child: None, dir: None };
        redis.run().await;
        redis
    }

    /// On a free port, with a snapshot directory of its own and no automatic snapshots
    /// (`--save ""`): what is on disk is exactly what the last `save` wrote.
    pub async fn persistent() -> PrivateRedis {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("notify-relay-redis-{}", Uuid::new_v4().simple()));
        std::fs::create_dir(&dir).expect("create the Redis directory");
        let mut redis = PrivateRedis { port, child: None, dir: Some(dir) };
        redis.run().await;
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A new connection (one made before a restart is gone with the old process).
    pub async fn connection(&self) -> redis::aio::MultiplexedConnection {
        redis_connection(&self.url()).await.expect("connect to the private redis")
    }

    /// `SAVE`: a snapshot of this moment, for `restart` to come back from.
    pub async fn save(&self) {
        let mut conn = self.connection().await;
        let _: () = redis::cmd("SAVE").query_async(&mut conn).await.expect("SAVE");
    }

    /// `SHUTDOWN NOSAVE` (what was written since the last `save` is lost), then waits for the
    /// process to exit.
    pub async fn shutdown_nosave(&mut self) {
        let mut conn = self.connection().await;
        // The server closes the connection instead of answering.
        let _: redis::RedisResult<()> = redis::cmd("SHUTDOWN").arg("NOSAVE").query_async(&mut conn).await;
        let mut child = self.child.take().expect("the private redis is running");
        eventually(Duration::from_secs(10), || {
            let status = child.try_wait().expect("try_wait");
            async move { status }
        })
        .await;
    }

    /// Starts the server again on the same port (and directory: from the last snapshot).
    pub async fn restart(&mut self) {
        self.kill();
        self.run().await;
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    async fn run(&mut self) {
        let mut command = std::process::Command::new("redis-server");
        command.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]);
        if let Some(dir) = &self.dir {
            command.arg("--dir").arg(dir);
        }
        self.child = Some(command.stdout(std::process::Stdio::null()).spawn().expect("redis-server on PATH"));
        let url = self.url();
        // PING answers once the server listens and has loaded its snapshot (LOADING before).
        until_redis_answers(&url, Duration::from_secs(10), &redis::cmd("PING"), |_| true).await;
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The stream job of a first attempt at (notification, device) for an Expo token.
pub fn expo_job(
    notification_id: Uuid,
    device_id: Uuid,
    user: &str,
    token: &str,
    payload: Value,
) -> notify_relay_engine::job::Job {
    use notify_relay_engine::job::{Priority, Provider};
    let mut job = emulators::testing::client_job(Provider::Expo, token, payload, Priority::Normal);
    job.notification_id = notification_id;
    job.device_id = device_id;
    job.user_id = user.into();
    job
}

/// Observes `value` `n` times, `every` apart, and returns how often `hold` held: for
/// properties over time ("the permit is free while the readers are idle"), not for waiting.
pub async fn samples_holding<T>(
    n: usize,
    every: Duration,
    mut value: impl FnMut() -> T,
    hold: impl Fn(&T) -> bool,
) -> usize {
    let mut held = 0;
    for _ in 0..n {
        if hold(&value()) {
            held += 1;
        }
        tokio::time::sleep(every).await;
    }
    held
}
