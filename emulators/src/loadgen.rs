//! `notify-relay loadgen`: an end-to-end benchmark on this machine.
//!
//! It starts the emulator of `--provider` (Expo by default; FCM, APNs or SMTP) in-process,
//! creates a fresh database (next to the configured one) with one device of that provider per
//! user, starts the relay as a child process against that
//! database and a fresh Redis key prefix, commits the notifications (in transactions of
//! `--batch` rows one after another while the relay already delivers, or paced with `--rate`),
//! and measures until every row is `delivered` in Postgres: throughput, latency from commit to
//! the provider (p50/p90/p99/max), duplicates, the relay's peak RSS (`VmHWM`) and the CPU time of
//! each part per 1,000 notifications with the machine's steal time ([`crate::cpu`]). Then it stops
//! the relay with SIGTERM and cleans up: drops the database and unlinks every Redis key of the
//! prefix; a cleanup that fails fails the run.
//!
//! For the producer features: `--topic` (one topic row to `--users` subscribers),
//! `--send-in-ms` (scheduled rows; lateness after `send_at`) and `--future` (rows scheduled a
//! day ahead during the run; `EXPLAIN` of the hot path's queries after it). See `LoadgenArgs`.
//!
//! The relay it starts is the running executable (`notify-relay loadgen` runs `notify-relay
//! run`), and the schema comes from the caller's migrations ([`Target::migrate`]): they are
//! compiled into the service binary, which this crate does not depend on.

use crate::apns::{ApnsEmulator, Rules};
use crate::cpu::{CpuReport, CpuSample, Parts};
use crate::expo::ExpoEmulator;
use crate::fcm::FcmEmulator;
use crate::smtp::{SmtpEmulator, SmtpOptions};
use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};
use uuid::Uuid;

#[derive(Debug, clap::Args)]
pub struct LoadgenArgs {
    /// The provider the devices are registered with (its emulator runs in-process): expo, fcm,
    /// apns or email.
    #[arg(long, default_value = "expo")]
    pub provider: notify_relay_engine::job::Provider,
    /// Notifications to commit.
    #[arg(long, default_value_t = 100_000)]
    pub notifications: u64,
    /// Distinct users (one Expo device each); notifications are spread evenly.
    #[arg(long, default_value_t = 1_000)]
    pub users: u64,
    /// Commit at this many notifications per second (20 times a second, the rows due by then, in
    /// statements of at most `--batch` rows) instead of as fast as Postgres takes them.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=MAX_COUNT))]
    pub rate: Option<u64>,
    /// Rows per `INSERT` statement, each its own transaction, committed one after another: the
    /// relay starts delivering the first batch while the next ones are written, and a row's
    /// latency counts from the commit of its own batch. 1 to 1,000,000,000; a batch of at least
    /// `--notifications` is one bulk commit.
    #[arg(long, default_value_t = DEFAULT_BATCH, value_name = "ROWS", value_parser = parse_batch)]
    pub batch: u64,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout_secs: u64,
    /// Where the relay's JSON logs go.
    #[arg(long, default_value = "/tmp/notify-relay-loadgen.log")]
    pub relay_log: String,
    /// The relay's log level (its logs are part of the cost being measured).
    #[arg(long, default_value = "info")]
    pub relay_log_level: String,
    /// Extra NAME=VALUE environment for the relay (e.g. NOTIFY__WORKER__CONCURRENCY=2000).
    #[arg(long = "relay-env")]
    pub relay_env: Vec<String>,
    /// Keep the database and Redis keys afterwards.
    #[arg(long)]
    pub keep: bool,
    /// Topic fan-out instead of per-user rows: every one of `--users` users (one device each)
    /// subscribes to one topic (`topic_subscription`, bulk-inserted before the relay starts) and
    /// ONE topic row is committed. Measured until every subscriber's row (`parent_id` = the
    /// topic row) is delivered: subscriber deliveries/s, latency from the topic row's commit to
    /// the provider, the relay's peak RSS. `--notifications` and `--rate` do not apply.
    #[arg(long, conflicts_with_all = ["notifications", "rate", "batch"])]
    pub topic: bool,
    /// Scheduled sends: every notification is committed with `send_at = now() + MS` (`now()` of
    /// its transaction: the rows of one batch are due at the same instant, and a `--batch` of at
    /// least `--notifications` makes all of them due at once). The
    /// latency printed is then lateness, provider receipt minus `send_at` (p50/p90/p99/max), and
    /// throughput counts from the first `send_at`; a receipt before its `send_at` is counted and
    /// fails the run.
    #[arg(long, value_name = "MS")]
    pub send_in_ms: Option<u64>,
    /// Before the run, commit N rows scheduled a day ahead, for N other users (without devices:
    /// never due, never waited for), then `VACUUM ANALYZE notification`; after the run, print
    /// `EXPLAIN (ANALYZE, BUFFERS)` of the listener's claim query and of the scheduler's probe
    /// and promotion with those rows present. `--future 0` prints the same plans without them.
    #[arg(long, value_name = "N")]
    pub future: Option<u64>,
    /// Retention at work during the run: before it, commit N notifications already delivered
    /// (one delivery row each, to the run's devices) and created 31 days ago, past the default
    /// `retention.final_after_days` of 30, and run the relay's retention job every second
    /// (`retention.interval_ms = 1000`) instead of hourly. The report says how many of them it
    /// deleted while the run went on.
    #[arg(long, value_name = "N")]
    pub aged: Option<u64>,
    /// Who commits the rows: `loadgen` itself (`INSERT … SELECT` statements of `--batch` rows),
    /// or `pgbench`: one single-row autocommit `INSERT` per transaction, `--pgbench-clients`
    /// connections paced at `--rate` for `--duration-secs`, as producers committing one row at
    /// a time do. A pgbench row's latency counts from its `created_at`, set to
    /// `clock_timestamp()` by the `INSERT`: inside its transaction, before the commit, so the
    /// figure is at most the transaction's duration (pgbench's latency) above commit → provider.
    #[arg(long, value_enum, default_value_t = Producer::Loadgen)]
    pub producer: Producer,
    /// With `--producer pgbench`: how long pgbench commits (`pgbench -T`).
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub duration_secs: u64,
    /// With `--producer pgbench`: its client connections (`-c`), shared by 2 threads (`-j`).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub pgbench_clients: u32,
    /// With `--producer pgbench`: pgbench's `--latency-limit`: transactions later than this
    /// (schedule lag included) are counted, and those already that late when their turn comes
    /// are skipped (both printed).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub pgbench_latency_limit_ms: u64,
    /// Also write one CSV line per provider receipt to this file: `notification_id,
    /// reference_unix_us, received_unix_us` (the reference is what the latency counts from), for
    /// finding where the time went (bench/latency/stages.py joins it with the relay's log).
    #[arg(long, value_name = "FILE")]
    pub samples_file: Option<std::path::PathBuf>,
}

/// Who commits the notifications of a run (`--producer`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Producer {
    /// loadgen's own `INSERT … SELECT` statements (`--batch`, `--rate`).
    Loadgen,
    /// pgbench, one single-row autocommit `INSERT` per transaction, at `--rate` for
    /// `--duration-secs`.
    Pgbench,
}

pub type BoxError = Box<dyn std::error::Error>;

/// What the load runs against: the service's configured Postgres (a fresh database is created
/// next to the one named) and Redis (a fresh key prefix), and how to migrate a database.
pub struct Target<M> {
    /// `database.url`, in URL form.
    pub database_url: String,
    /// `database.ca_file`: the CA of the server's certificate when the URL's `sslrootcert`
    /// does not give one.
    pub database_ca_file: Option<std::path::PathBuf>,
    /// `redis.url`.
    pub redis_url: String,
    /// Applies the relay's migrations to the database `config` names.
    pub migrate: M,
}

/// The emulator the load goes to, and how the relay is pointed at it.
enum Emulator {
    Expo(ExpoEmulator),
    Fcm(FcmEmulator),
    Apns(ApnsEmulator, std::path::PathBuf),
    Email(SmtpEmulator),
}

impl Emulator {
    async fn start(provider: notify_relay_engine::job::Provider, run_id: &str) -> Result<Emulator, BoxError> {
        use notify_relay_engine::job::Provider;
        Ok(match provider {
            Provider::Expo => {
                // A million messages kept whole (with their receipts) would cost the emulator
                // gigabytes; the run needs only which notification arrived when.
                let expo = ExpoEmulator::start("127.0.0.1:0", None).await?;
                expo.keep_arrivals_only();
                Emulator::Expo(expo)
            }
            Provider::Fcm => Emulator::Fcm(FcmEmulator::start("127.0.0.1:0").await?),
            Provider::Apns => {
                let apns = ApnsEmulator::start("127.0.0.1:0", Rules::default()).await?;
                let ca = std::env::temp_dir().join(format!("loadgen-{run_id}-apns-ca.pem"));
                std::fs::write(&ca, apns.ca_pem())?;
                Emulator::Apns(apns, ca)
            }
            Provider::Email => Emulator::Email(SmtpEmulator::start("127.0.0.1:0", SmtpOptions::default()).await?),
        })
    }

    fn url(&self) -> String {
        match self {
            Emulator::Expo(e) => e.url(),
            Emulator::Fcm(e) => e.url(),
            Emulator::Apns(e, _) => e.url(),
            Emulator::Email(e) => e.url(),
        }
    }

    /// The SQL expression of user `g`'s device token.
    fn token_sql(&self) -> &'static str {
        match self {
            Emulator::Expo(_) => "'ExponentPushToken[loadgen-' || g || ']'",
            Emulator::Fcm(_) => "'loadgen-fcm-' || g",
            Emulator::Apns(..) => "lpad(to_hex(g), 64, '0')",
            Emulator::Email(_) => "'loadgen-' || g || '@example.com'",
        }
    }

    /// The relay's environment for this provider: enabled, pointed at the emulator, no quota
    /// (the emulators have none: the relay is what is measured).
    fn relay_env(&self) -> Vec<(String, String)> {
        let (name, mut env): (&str, Vec<(&str, String)>) = match self {
            Emulator::Expo(e) => ("EXPO", vec![("BASE_URL", e.url())]),
            Emulator::Fcm(e) => {
                ("FCM", vec![("BASE_URL", e.url()), ("SERVICE_ACCOUNT_JSON", e.service_account_json())])
            }
            Emulator::Apns(e, ca) => (
                "APNS",
                vec![
                    ("BASE_URL", e.url()),
                    ("KEY", e.key_pem().to_string()),
                    ("KEY_ID", e.key_id().to_string()),
                    ("TEAM_ID", e.team_id().to_string()),
                    ("TOPIC", e.topic().to_string()),
                    ("CA_FILE", ca.display().to_string()),
                ],
            ),
            Emulator::Email(e) => ("EMAIL", vec![("SMTP_URL", e.url()), ("FROM", "loadgen@example.com".into())]),
        };
        env.push(("ENABLED", "true".into()));
        env.push(("RATE_PER_SEC", "0".into()));
        env.into_iter().map(|(k, v)| (format!("NOTIFY__PROVIDERS__{name}__{k}"), v)).collect()
    }

    /// (notification id, when the emulator accepted it) of every message accepted that names one.
    fn received(&self) -> Vec<(Uuid, SystemTime)> {
        fn ids<T>(items: Vec<T>, f: impl Fn(&T) -> (Option<&str>, SystemTime)) -> Vec<(Uuid, SystemTime)> {
            let parsed = items.iter().map(f).map(|(id, at)| (id.and_then(|id| Uuid::parse_str(id).ok()), at));
            parsed.filter_map(|(id, at)| id.map(|id| (id, at))).collect()
        }
        match self {
            Emulator::Expo(e) => e.arrivals().into_iter().filter_map(|(id, at)| id.map(|id| (id, at))).collect(),
            Emulator::Fcm(e) => ids(e.sent(), |m| (m.notification_id(), m.received_at)),
            Emulator::Apns(e, _) => ids(e.sent(), |m| (m.notification_id(), m.received_at)),
            Emulator::Email(e) => ids(e.received(), |m| (m.notification_id.as_deref(), m.received_at)),
        }
    }

    /// How many messages were accepted (cheap: no copy).
    fn received_count(&self) -> usize {
        match self {
            Emulator::Expo(e) => e.sent_count(),
            Emulator::Fcm(e) => e.sent_count(),
            Emulator::Apns(e, _) => e.sent_count(),
            Emulator::Email(e) => e.received_count(),
        }
    }

    async fn stop(self) {
        match self {
            Emulator::Expo(e) => e.stop().await,
            Emulator::Fcm(e) => e.stop().await,
            Emulator::Apns(e, ca) => {
                let _ = std::fs::remove_file(ca);
                e.stop().await
            }
            Emulator::Email(e) => e.stop().await,
        }
    }
}

/// Most notifications (and users) one run may ask for: the counts become Postgres `int8`
/// arithmetic and in-memory tables, so they are bounded well below where they would wrap.
pub const MAX_COUNT: u64 = 1_000_000_000;

/// Longest `--send-in-ms`, half an hour: the completion check counts scheduled rows due within
/// the hour (`--future`'s are a day ahead).
pub const MAX_SEND_IN_MS: u64 = 30 * 60 * 1000;

/// `--batch` when not given: 100,000 rows are 10 commits, 1,000,000 are 100.
pub const DEFAULT_BATCH: u64 = 10_000;

/// `--batch`'s parser: a whole number of rows, 1 to [`MAX_COUNT`].
pub fn parse_batch(text: &str) -> Result<u64, String> {
    let rows: u64 =
        text.trim().parse().map_err(|_| format!("expected a whole number of rows per commit, got {text:?}"))?;
    check_batch(rows).map_err(|e| e.to_string())?;
    Ok(rows)
}

/// `--batch`: 1 to [`MAX_COUNT`] rows per commit.
pub fn check_batch(rows: u64) -> Result<(), CountError> {
    if (1..=MAX_COUNT).contains(&rows) {
        Ok(())
    } else {
        Err(CountError { flag: "--batch", got: rows })
    }
}

/// The statements that commit the rows `first..=last`: consecutive `(first, last)` ranges of at
/// most `batch` rows each, in order, covering every row once. Nothing when `first > last`.
pub fn batches(first: u64, last: u64, batch: u64) -> impl Iterator<Item = (u64, u64)> {
    let batch = batch.max(1);
    let mut next = Some(first).filter(|&f| f <= last);
    std::iter::from_fn(move || {
        let start = next?;
        let end = start.saturating_add(batch - 1).min(last);
        next = end.checked_add(1).filter(|&n| n <= last);
        Some((start, end))
    })
}

/// The topic every subscriber of a `--topic` run follows.
const TOPIC: &str = "loadgen.topic";

/// `--notifications` and `--users`: 1 to [`MAX_COUNT`].
pub fn check_counts(notifications: u64, users: u64) -> Result<(), CountError> {
    for (flag, n) in [("--notifications", notifications), ("--users", users)] {
        if !(1..=MAX_COUNT).contains(&n) {
            return Err(CountError { flag, got: n });
        }
    }
    Ok(())
}

/// A count flag outside 1..=[`MAX_COUNT`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CountError {
    pub flag: &'static str,
    pub got: u64,
}

impl std::fmt::Display for CountError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} must be between 1 and {MAX_COUNT}, got {}", self.flag, self.got)
    }
}

impl std::error::Error for CountError {}

pub async fn run<M>(target: Target<M>, args: LoadgenArgs) -> Result<(), BoxError>
where
    M: AsyncFn(&notify_relay_engine::tls::PgTarget) -> Result<(), BoxError>,
{
    check_counts(args.notifications, args.users)?;
    check_batch(args.batch)?;
    if let Some(n) = args.future.filter(|&n| n > MAX_COUNT) {
        return Err(CountError { flag: "--future", got: n }.into());
    }
    if let Some(n) = args.aged.filter(|&n| n > MAX_COUNT) {
        return Err(CountError { flag: "--aged", got: n }.into());
    }
    if let Some(ms) = args.send_in_ms.filter(|&ms| ms > MAX_SEND_IN_MS) {
        return Err(format!("--send-in-ms must be at most {MAX_SEND_IN_MS} (half an hour), got {ms}").into());
    }
    if args.producer == Producer::Pgbench {
        if args.rate.is_none() {
            return Err("--producer pgbench needs --rate (pgbench -R: commits per second)".into());
        }
        if args.topic || args.send_in_ms.is_some() {
            return Err("--producer pgbench commits single rows now: --topic and --send-in-ms do not apply".into());
        }
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let db_name = format!("loadgen_{run_id}");
    let prefix = format!("loadgen-{run_id}");
    let base_url = target.database_url.clone();
    let db_url = with_database(&base_url, &db_name)?;

    let admin = connect(&base_url, target.database_ca_file.as_deref()).await?;
    let emulator = Emulator::start(args.provider, &run_id).await?;
    if let Err(e) = admin.batch_execute(&format!("CREATE DATABASE {db_name}")).await {
        emulator.stop().await;
        return Err(e.into());
    }
    eprintln!("loadgen: database {db_name}, key prefix {prefix}, {} emulator {}", args.provider, emulator.url());

    // The relay is kept here, so that whatever `measure` returns it is gone (killed and
    // reaped) before the cleanup: nothing writes a key after the keys are removed.
    let mut relay: Option<tokio::process::Child> = None;
    let result = measure(&target, &args, &db_url, &prefix, &emulator, &mut relay).await;
    if let Some(mut child) = relay.take() {
        // An error here is a child already reaped by `measure`.
        let _ = child.kill().await;
    }
    emulator.stop().await;

    if args.keep {
        eprintln!("loadgen: kept database {db_name} and the Redis keys {prefix}:* (--keep)");
        return result;
    }
    let cleaned = clean_up(&admin, &db_name, &target.redis_url, &prefix).await;
    match (&result, cleaned) {
        (_, Ok(removed)) => {
            eprintln!(
                "loadgen: cleaned up: database {db_name} dropped, {removed} Redis keys of {prefix}:* unlinked, 0 left"
            );
            result
        }
        (Ok(()), Err(e)) => Err(format!("cleanup failed: {e}").into()),
        (Err(_), Err(e)) => {
            // The run's own error is the one returned; this one is said too.
            eprintln!("loadgen: cleanup failed: {e}");
            result
        }
    }
}

/// Drops the run's database and unlinks every Redis key of its prefix (`SCAN` + `UNLINK` in
/// batches: a 1M-key cleanup neither blocks Redis nor outlasts a reply timeout), then counts what
/// is left of the prefix with `SCAN`. Returns the keys unlinked; any failure, or a key left, is an
/// error naming what is left behind. Both are tried whatever the other's outcome.
pub async fn clean_up(
    admin: &tokio_postgres::Client,
    db_name: &str,
    redis_url: &str,
    prefix: &str,
) -> Result<u64, String> {
    let mut problems = Vec::new();
    if let Err(e) = admin.batch_execute(&format!("DROP DATABASE IF EXISTS {db_name} WITH (FORCE)")).await {
        problems.push(format!("database {db_name} not dropped: {e}"));
    }
    let keys = async {
        let mut conn = crate::testing::redis_connection(redis_url).await?;
        let removed = crate::testing::remove_keys(&mut conn, prefix).await?;
        let left = crate::testing::count_keys(&mut conn, prefix).await?;
        Ok::<_, redis::RedisError>((removed, left))
    };
    let removed = match keys.await {
        Ok((removed, 0)) => removed,
        Ok((removed, left)) => {
            problems.push(format!("{left} Redis keys of {prefix}:* still there after unlinking {removed}"));
            removed
        }
        Err(e) => {
            problems.push(format!("Redis keys of {prefix}:* not removed: {e}"));
            0
        }
    };
    if problems.is_empty() {
        Ok(removed)
    } else {
        Err(problems.join("; "))
    }
}

async fn measure<M>(
    target: &Target<M>,
    args: &LoadgenArgs,
    db_url: &str,
    prefix: &str,
    emulator: &Emulator,
    relay_slot: &mut Option<tokio::process::Child>,
) -> Result<(), BoxError>
where
    M: AsyncFn(&notify_relay_engine::tls::PgTarget) -> Result<(), BoxError>,
{
    let pg_config = pg_config(db_url, target.database_ca_file.as_deref())?;
    (target.migrate)(&pg_config).await?;
    let db = connect(db_url, target.database_ca_file.as_deref()).await?;
    let devices = format!(
        "INSERT INTO device (user_id, provider, token)
         SELECT 'loadgen-user-' || g, $2, {} FROM generate_series(1, $1::int8) g",
        emulator.token_sql()
    );
    let setup = Instant::now();
    db.execute(&devices, &[&(args.users as i64), &args.provider.as_str()]).await?;
    if args.topic {
        db.execute(
            "INSERT INTO topic_subscription (topic, user_id) SELECT $1, 'loadgen-user-' || g FROM generate_series(1, $2::int8) g",
            &[&TOPIC, &(args.users as i64)],
        )
        .await?;
    }
    if let Some(future) = args.future.filter(|&n| n > 0) {
        // Other users (no devices), a day ahead: they sit in notification_scheduled_idx and are
        // never due during the run.
        db.execute(
            "INSERT INTO notification (user_id, type, payload, send_at)
             SELECT 'loadgen-future-' || g, 'loadgen-future',
                    jsonb_build_object('title', 'Later', 'body', 'Scheduled ' || g), now() + interval '1 day'
               FROM generate_series(1, $1::int8) g",
            &[&(future as i64)],
        )
        .await?;
    }
    if let Some(aged) = args.aged.filter(|&n| n > 0) {
        // A month-old backlog for retention: final rows of the run's own users and devices, in
        // statements of `--batch` rows.
        for (first, last) in batches(1, aged, args.batch) {
            db.execute(
                "WITH n AS (
                    INSERT INTO notification (user_id, type, payload, status, attempt_count, created_at, updated_at,
                                              queued_at, delivered_at)
                    SELECT 'loadgen-user-' || (1 + g % $3::int8), 'loadgen-aged', jsonb_build_object('title', 'Old ' || g),
                           'delivered', 1, t, t, t, t
                      FROM generate_series($1::int8, $2::int8) g, LATERAL (SELECT now() - interval '31 days' AS t) c
                 RETURNING id, user_id, created_at
                 )
                 INSERT INTO delivery (notification_id, device_id, provider, status, attempt_count, created_at,
                                       updated_at, delivered_at)
                 SELECT n.id, d.id, d.provider, 'delivered', 1, n.created_at, n.created_at, n.created_at
                   FROM n JOIN device d ON d.user_id = n.user_id",
                &[&(first as i64), &(last as i64), &(args.users as i64)],
            )
            .await?;
        }
    }
    // Statistics (and, for the scheduled rows, the visibility map) as a table of that size has
    // in production, where autovacuum keeps them.
    db.batch_execute("VACUUM ANALYZE device").await?;
    if args.topic {
        db.batch_execute("VACUUM ANALYZE topic_subscription").await?;
    }
    if args.future.is_some() || args.aged.is_some() {
        db.batch_execute("VACUUM ANALYZE notification").await?;
    }
    if args.aged.is_some() {
        db.batch_execute("VACUUM ANALYZE delivery").await?;
    }
    eprintln!(
        "loadgen: {} users{}{}{} set up in {} ms",
        args.users,
        if args.topic { ", subscribed to one topic" } else { "" },
        args.future.map(|n| format!(", {n} rows scheduled a day ahead")).unwrap_or_default(),
        args.aged.map(|n| format!(", {n} delivered rows 31 days old")).unwrap_or_default(),
        setup.elapsed().as_millis()
    );

    let http_port = free_port()?;
    let log_file = std::fs::File::create(&args.relay_log)?;
    let mut cmd = tokio::process::Command::new(std::env::current_exe()?);
    cmd.arg("run")
        .env("NOTIFY__DATABASE__URL", db_url)
        .env("NOTIFY__REDIS__URL", &target.redis_url)
        .env("NOTIFY__REDIS__KEY_PREFIX", prefix)
        .envs(emulator.relay_env())
        .env("NOTIFY__HTTP__ADDR", format!("127.0.0.1:{http_port}"))
        .env("NOTIFY__LOG__LEVEL", &args.relay_log_level)
        .env_remove("NOTIFY_CONFIG")
        .stdout(log_file)
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true);
    if args.aged.is_some() {
        cmd.env("NOTIFY__RETENTION__INTERVAL_MS", "1000");
    }
    for pair in &args.relay_env {
        let (k, v) = pair.split_once('=').ok_or_else(|| format!("--relay-env {pair}: expected NAME=VALUE"))?;
        cmd.env(k, v);
    }
    let relay = relay_slot.insert(cmd.spawn()?);
    let pid = relay.id().ok_or("relay exited at once")?;
    wait_ready(http_port, Duration::from_secs(60)).await?;
    let idle_rss = read_status_kb(pid, "VmRSS:").unwrap_or(0);

    // Commit the notifications, remembering when each batch became visible.
    let n = args.notifications as i64;
    let users = args.users as i64;
    let send_in_ms = args.send_in_ms.map(|ms| ms as i64);
    let insert = "INSERT INTO notification (user_id, type, payload, send_at)
                  SELECT 'loadgen-user-' || (1 + g % $3::int8), 'loadgen',
                         jsonb_build_object('title', 'Load test', 'body', 'Notification ' || g,
                                            'data', jsonb_build_object('seq', g)),
                         now() + $4::int8 * interval '1 millisecond'
                    FROM generate_series($1::int8, $2::int8) g";
    let mut commits: Vec<(i64, SystemTime)> = Vec::new(); // (last seq of the batch, commit time)
    let cpu = CpuMeter::start(&db, &target.redis_url, pid, args.producer == Producer::Pgbench).await;
    let started = Instant::now();
    let mut topic_row: Option<uuid::Uuid> = None;
    let mut pgbench: Option<PgbenchReport> = None;
    // Rows (or, with --topic, subscriber rows) that must be delivered.
    let mut expected = if args.topic { users } else { n };
    if args.producer == Producer::Pgbench {
        let rate = args.rate.ok_or("--producer pgbench needs --rate")?;
        let script = std::env::temp_dir().join(format!("{prefix}-pgbench.sql"));
        commits.push((0, SystemTime::now()));
        let report = run_pgbench(db_url, target.database_ca_file.as_deref(), args, rate, &script).await;
        let _ = std::fs::remove_file(&script);
        let report = report?;
        commits.push((0, SystemTime::now()));
        // Every transaction pgbench counts as processed committed one row: the run waits for
        // exactly those (the final count of delivered rows checks it).
        expected = report.processed as i64;
        eprintln!(
            "loadgen: pgbench committed {} single-row transactions in {} s at {:.0}/s (asked {rate}/s; {} skipped, {} over {} ms, {} failed)",
            report.processed, args.duration_secs, report.tps, report.skipped, report.late,
            args.pgbench_latency_limit_ms, report.failed
        );
        pgbench = Some(report);
    } else if args.topic {
        let row = db
            .query_one(
                "INSERT INTO notification (topic, type, payload, send_at)
                 VALUES ($1, 'loadgen', jsonb_build_object('title', 'Load test', 'body', 'To every subscriber',
                                                          'data', jsonb_build_object('seq', 1)),
                         now() + $2::int8 * interval '1 millisecond')
                 RETURNING id",
                &[&TOPIC, &send_in_ms],
            )
            .await?;
        topic_row = Some(row.get(0));
        commits.push((n, SystemTime::now()));
        eprintln!("loadgen: committed one topic row for {users} subscribers");
    } else {
        // Each statement is its own transaction (autocommit): the relay hears the first batch
        // and delivers it while the next ones are written.
        let mut commit = async |(first, last): (u64, u64)| -> Result<(), BoxError> {
            db.execute(insert, &[&(first as i64), &(last as i64), &users, &send_in_ms]).await?;
            commits.push((last as i64, SystemTime::now()));
            Ok(())
        };
        match args.rate {
            None => {
                for range in batches(1, args.notifications, args.batch) {
                    commit(range).await?;
                }
            }
            Some(rate) => {
                // Tick k (20 a second) brings the rows committed up to rate * k / 20, so any
                // rate is kept on average, also one below 20/s.
                let mut tick = tokio::time::interval(Duration::from_millis(50));
                let mut done = 0u64;
                let mut k = 0u64;
                while done < args.notifications {
                    tick.tick().await;
                    k += 1;
                    let due = (u128::from(rate) * u128::from(k) / 20).min(u128::from(args.notifications)) as u64;
                    for range in batches(done + 1, due, args.batch) {
                        commit(range).await?;
                    }
                    done = done.max(due);
                }
            }
        }
        let transactions = match commits.len() {
            1 => "one transaction".to_string(),
            c => format!("{c} transactions of at most {} rows", args.batch.min(args.notifications)),
        };
        eprintln!(
            "loadgen: committed {n} notifications in {transactions}{} ({} ms)",
            args.rate.map(|r| format!(" at {r}/s")).unwrap_or_default(),
            started.elapsed().as_millis()
        );
    }
    let n = if pgbench.is_some() { expected } else { n };
    // The clock starts at the first commit: before it the relay has nothing to do.
    let first_commit = commits.first().map(|c| c.1).ok_or("nothing was committed")?;

    // Wait until Postgres says every notification is final. Postgres is only asked once the
    // emulator has accepted every message (or its count stopped moving for 2 s: some failed),
    // and then only through partial indexes whose size is the open work, never by a scan of the
    // table (which holds `--future`'s rows, and a million subscriber rows with `--topic`).
    //
    // On a connection of its own that plans them as index (only) scans, never bitmap scans: the
    // partial indexes keep an entry for every row that left them until vacuum comes (1M after a
    // 1M run), and a bitmap heap scan visits the heap for each of them on every check, where a
    // plain index scan marks the dead entries on its first pass, so that each later check reads
    // the index alone (EXPLAIN of a 1M-row run in bench/README.md: 26k heap buffers every time
    // as a bitmap scan; 1,900 index buffers from the second check on as an index scan).
    let checker = connect(db_url, target.database_ca_file.as_deref()).await?;
    checker.batch_execute("SET enable_bitmapscan = off").await?;
    let deadline = Instant::now() + Duration::from_secs(args.timeout_secs);
    let mut peak_rss = 0;
    let mut last_count = (0usize, Instant::now());
    let done_at = loop {
        peak_rss = peak_rss.max(read_status_kb(pid, "VmHWM:").unwrap_or(0));
        let received = emulator.received_count();
        if received != last_count.0 {
            last_count = (received, Instant::now());
        }
        let ask = received as i64 >= expected || last_count.1.elapsed() > Duration::from_secs(2);
        if ask {
            let open = open_work(&checker).await?;
            if open == 0 {
                break SystemTime::now();
            }
            if Instant::now() > deadline {
                return Err(format!("timed out with {open} rows or targets not final, {received} sent").into());
            }
        } else if Instant::now() > deadline {
            return Err(format!("timed out with {received} of {expected} sent").into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    peak_rss = peak_rss.max(read_status_kb(pid, "VmHWM:").unwrap_or(0));
    let cpu = cpu.stop(expected.max(0) as u64).await;
    let row = match topic_row {
        Some(id) => {
            db.query_one(
                "SELECT count(*) FILTER (WHERE status = 'delivered'), count(*) FILTER (WHERE status = 'failed')
                   FROM notification WHERE parent_id = $1",
                &[&id],
            )
            .await?
        }
        None => {
            db.query_one(
                "SELECT count(*) FILTER (WHERE status = 'delivered'), count(*) FILTER (WHERE status = 'failed')
                   FROM notification WHERE type = 'loadgen'",
                &[],
            )
            .await?
        }
    };
    let (delivered, failed): (i64, i64) = (row.get(0), row.get(1));
    let topic_status: Option<String> = match topic_row {
        Some(id) => Some(db.query_one("SELECT status FROM notification WHERE id = $1", &[&id]).await?.get(0)),
        None => None,
    };

    // When each row was meant to reach the provider: the commit of its batch (found by its
    // sequence number), or its `send_at` (`--send-in-ms`); a topic's subscriber rows, the topic
    // row's.
    let epoch = |secs: f64| SystemTime::UNIX_EPOCH + Duration::from_secs_f64(secs.max(0.0));
    let reference_of: HashMap<Uuid, SystemTime> = match topic_row {
        Some(id) => {
            let at = match send_in_ms {
                Some(_) => epoch(
                    db.query_one("SELECT extract(epoch FROM send_at)::float8 FROM notification WHERE id = $1", &[&id])
                        .await?
                        .get(0),
                ),
                None => first_commit,
            };
            db.query("SELECT id FROM notification WHERE parent_id = $1", &[&id])
                .await?
                .iter()
                .map(|r| (r.get(0), at))
                .collect()
        }
        // A pgbench row counts from its created_at (clock_timestamp() in its transaction), a
        // scheduled row from its send_at.
        None if pgbench.is_some() || send_in_ms.is_some() => {
            let column = if pgbench.is_some() { "created_at" } else { "send_at" };
            db.query(
                &format!("SELECT id, extract(epoch FROM {column})::float8 FROM notification WHERE type = 'loadgen'"),
                &[],
            )
            .await?
            .iter()
            .map(|r| (r.get(0), epoch(r.get(1))))
            .collect()
        }
        None => db
            .query("SELECT id, (payload->'data'->>'seq')::int8 FROM notification WHERE type = 'loadgen'", &[])
            .await?
            .iter()
            .map(|r| {
                let seq: i64 = r.get(1);
                let idx = commits.partition_point(|c| c.0 < seq).min(commits.len() - 1);
                (r.get(0), commits[idx].1)
            })
            .collect(),
    };
    let first_due = match (send_in_ms, &pgbench) {
        (Some(_), _) | (_, Some(_)) => reference_of.values().min().copied().unwrap_or(first_commit),
        (None, None) => first_commit,
    };
    let sent = emulator.received();
    let mut per_id: HashMap<Uuid, u32> = HashMap::with_capacity(sent.len());
    let mut latencies: Vec<f64> = Vec::with_capacity(sent.len());
    let mut early = 0u64;
    for (id, received_at) in &sent {
        let Some(reference) = reference_of.get(id) else {
            continue;
        };
        *per_id.entry(*id).or_default() += 1;
        match received_at.duration_since(*reference) {
            Ok(d) => latencies.push(d.as_secs_f64() * 1000.0),
            // Before its send_at: a scheduled row sent too soon. (Before the commit as
            // loadgen timed it: the commit's answer was still on its way; not counted.)
            Err(e) if send_in_ms.is_some() => {
                early += 1;
                latencies.push(-e.duration().as_secs_f64() * 1000.0);
            }
            Err(_) => {}
        }
    }
    latencies.sort_by(|a, b| a.total_cmp(b));
    if let Some(path) = &args.samples_file {
        write_samples(path, &sent, &reference_of)?;
    }
    // Streamed commits: how much the relay had sent before the last batch was committed.
    let last_commit = commits.last().map(|c| c.1).unwrap_or(first_commit);
    let sent_before_last_commit = sent.iter().filter(|(_, at)| *at < last_commit).count();
    let duplicates: u32 = per_id.values().map(|c| c.saturating_sub(1)).sum();
    let elapsed = done_at.duration_since(first_due).unwrap_or_default().as_secs_f64();

    // What the run left in the tables, and what retention took away meanwhile.
    let tables = table_report(&db).await?;
    let aged_left = match args.aged {
        Some(_) => Some(
            db.query_one("SELECT count(*) FROM notification WHERE type = 'loadgen-aged'", &[]).await?.get::<_, i64>(0),
        ),
        None => None,
    };

    // Graceful stop, timed.
    let stop_started = Instant::now();
    let _ = std::process::Command::new("kill").arg("-TERM").arg(pid.to_string()).status();
    let status = tokio::time::timeout(Duration::from_secs(30), relay.wait()).await;
    let stop_ms = stop_started.elapsed().as_millis();
    let exit = match status {
        Ok(Ok(s)) => s.code().map(|c| c.to_string()).unwrap_or_else(|| "signal".into()),
        _ => {
            let _ = relay.kill().await;
            "killed after 30 s".into()
        }
    };

    // The hot path's queries with the scheduled rows present (and the relay stopped, so that
    // nothing else runs), each twice: the first pays for whatever the run left behind.
    let plans = match args.future {
        Some(_) => explain_hot_path(&db).await?,
        None => Vec::new(),
    };

    let pct = |p: f64| -> f64 {
        if latencies.is_empty() {
            return 0.0;
        }
        latencies[((latencies.len() - 1) as f64 * p).round() as usize]
    };
    let throughput = delivered as f64 / elapsed.max(1e-9);
    let what = if args.topic { "subscriber deliveries/s" } else { "notifications/s" };
    println!("notify-relay loadgen");
    if args.topic {
        println!(
            "  topic                one row to {users} subscribers, one {} device each (topic row: {})",
            args.provider,
            topic_status.as_deref().unwrap_or("?")
        );
    } else if let Some(report) = &pgbench {
        println!(
            "  notifications        {n} for {users} {} devices (pgbench: {} clients, one single-row autocommit INSERT per transaction, -R {} for {} s)",
            args.provider,
            args.pgbench_clients,
            args.rate.unwrap_or_default(),
            args.duration_secs
        );
        println!(
            "  pgbench              tps {:.1}, latency avg {:.3} ms (stddev {:.3}), schedule lag avg {:.3} ms (max {:.3}), skipped {}, over {} ms {}, failed {}",
            report.tps,
            report.latency_avg_ms,
            report.latency_stddev_ms,
            report.lag_avg_ms,
            report.lag_max_ms,
            report.skipped,
            args.pgbench_latency_limit_ms,
            report.late,
            report.failed
        );
    } else {
        println!(
            "  notifications        {n} for {users} {} devices ({})",
            args.provider,
            match args.rate {
                Some(r) => format!("paced at {r}/s in {} commits", commits.len()),
                None if commits.len() == 1 => "one bulk commit".into(),
                None => format!("{} commits of at most {} rows, one after another", commits.len(), args.batch),
            }
        );
    }
    if let Some(ms) = send_in_ms {
        println!("  scheduled            send_at = commit + {ms} ms");
    }
    if let Some(future) = args.future {
        println!("  also present         {future} rows scheduled a day ahead (other users)");
    }
    println!("  delivered / failed   {delivered} / {failed}{}", if args.topic { " (subscriber rows)" } else { "" });
    println!("  provider sends       {} (duplicates: {duplicates})", sent.len());
    println!(
        "  end to end           {elapsed:.2} s{}  ->  {throughput:.0} {what}",
        if send_in_ms.is_some() { " from send_at" } else { "" }
    );
    if commits.len() > 1 {
        println!("  sent while committing {sent_before_last_commit} before the last of {} commits", commits.len());
    }
    let latency_label = match (send_in_ms, &pgbench) {
        (Some(_), _) => "lateness send_at->provider",
        (None, Some(_)) => "latency created_at->provider",
        (None, None) => "latency commit->provider",
    };
    // Whole milliseconds hide what a steady-load run is about: one decimal below 100 ms.
    let ms = |v: f64| if v.abs() < 100.0 { format!("{v:.1} ms") } else { format!("{v:.0} ms") };
    println!(
        "  {latency_label}  p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
        ms(pct(0.5)),
        ms(pct(0.9)),
        ms(pct(0.99)),
        ms(pct(0.999)),
        ms(pct(1.0))
    );
    if send_in_ms.is_some() {
        println!("  received before send_at  {early}");
    }
    if let (Some(aged), Some(left)) = (args.aged, aged_left) {
        println!("  retention            deleted {} of {aged} rows 31 days old during the run", aged as i64 - left);
    }
    for t in &tables {
        println!(
            "  table {:<14} heap {} MiB, indexes {} MiB, {} live / {} dead rows, {} autovacuums, {} autoanalyzes",
            t.name, t.heap_mib, t.index_mib, t.live, t.dead, t.autovacuums, t.autoanalyzes
        );
    }
    println!("  relay RSS            idle {} MiB, peak {} MiB (VmHWM)", idle_rss / 1024, peak_rss / 1024);
    println!("  cpu                  {cpu}");
    println!("  relay SIGTERM        exit {exit} after {stop_ms} ms");
    for plan in &plans {
        println!("  EXPLAIN (ANALYZE, BUFFERS) {}: {:.3} ms, then {:.3} ms", plan.name, plan.first_ms, plan.second_ms);
        for line in &plan.lines {
            println!("    {line}");
        }
    }
    println!(
        "{}",
        serde_json::json!({
            "provider": args.provider.as_str(), "notifications": if args.topic { 1 } else { n }, "users": users,
            "rate": args.rate,
            "batch": if args.topic || pgbench.is_some() { None } else { Some(args.batch) },
            // pgbench commits one row per transaction.
            "commits": pgbench.as_ref().map_or(commits.len() as u64, |r| r.processed), "topic": args.topic, "send_in_ms": send_in_ms, "future": args.future,
            "aged": args.aged, "aged_deleted": args.aged.zip(aged_left).map(|(a, left)| a as i64 - left),
            "tables": tables.iter().map(|t| (t.name.clone(), serde_json::json!({
                "heap_mib": t.heap_mib, "index_mib": t.index_mib, "live": t.live, "dead": t.dead,
                "autovacuums": t.autovacuums, "autoanalyzes": t.autoanalyzes,
            }))).collect::<serde_json::Map<_, _>>(),
            "delivered": delivered, "failed": failed,
            "sends": sent.len(), "duplicates": duplicates,
            "sent_before_last_commit": sent_before_last_commit, "seconds": elapsed, "per_second": throughput,
            "latency_from": match (send_in_ms, &pgbench) {
                (Some(_), _) => "send_at",
                (None, Some(_)) => "created_at",
                (None, None) => "commit",
            },
            "latency_ms": {"p50": pct(0.5), "p90": pct(0.9), "p99": pct(0.99), "p99_9": pct(0.999), "max": pct(1.0)},
            "producer": match args.producer { Producer::Loadgen => "loadgen", Producer::Pgbench => "pgbench" },
            "pgbench": pgbench.as_ref().map(|r| serde_json::json!({
                "clients": args.pgbench_clients, "duration_secs": args.duration_secs,
                "processed": r.processed, "failed": r.failed, "skipped": r.skipped, "late": r.late,
                "latency_limit_ms": args.pgbench_latency_limit_ms, "tps": r.tps,
                "latency_avg_ms": r.latency_avg_ms, "latency_stddev_ms": r.latency_stddev_ms,
                "schedule_lag_avg_ms": r.lag_avg_ms, "schedule_lag_max_ms": r.lag_max_ms,
            })),
            "received_before_send_at": early,
            "rss_mib": {"idle": idle_rss / 1024, "peak": peak_rss / 1024}, "shutdown_ms": stop_ms,
            "cpu": cpu.to_json(),
            "explain_ms": plans.iter().map(|p| (p.name.to_string(), serde_json::json!([p.first_ms, p.second_ms])))
                .collect::<serde_json::Map<_, _>>(),
        })
    );
    if delivered != expected {
        return Err(format!("only {delivered} of {expected} delivered").into());
    }
    if early > 0 {
        return Err(format!("{early} messages reached the provider before their send_at").into());
    }
    Ok(())
}

/// Size and vacuum state of a table the relay writes, at the end of a run.
struct TableReport {
    name: String,
    heap_mib: i64,
    index_mib: i64,
    live: i64,
    dead: i64,
    autovacuums: i64,
    autoanalyzes: i64,
}

/// `notification` and `delivery`: heap and index sizes, live and dead rows, and how often
/// autovacuum and autoanalyze ran during the run (pg_stat_user_tables; the counts lag by up to
/// the statistics collector's flush interval).
async fn table_report(db: &tokio_postgres::Client) -> Result<Vec<TableReport>, BoxError> {
    let rows = db
        .query(
            "SELECT relname::text, pg_table_size(relid) / 1048576, pg_indexes_size(relid) / 1048576,
                    n_live_tup, n_dead_tup, autovacuum_count, autoanalyze_count
               FROM pg_stat_user_tables WHERE relname IN ('notification', 'delivery') ORDER BY relname DESC",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| TableReport {
            name: r.get(0),
            heap_mib: r.get(1),
            index_mib: r.get(2),
            live: r.get(3),
            dead: r.get(4),
            autovacuums: r.get(5),
            autoanalyzes: r.get(6),
        })
        .collect())
}

/// `--samples-file`: one line per receipt of a row of the run, `id,reference_us,received_us`.
fn write_samples(
    path: &std::path::Path,
    sent: &[(Uuid, SystemTime)],
    reference_of: &HashMap<Uuid, SystemTime>,
) -> Result<(), BoxError> {
    use std::io::Write as _;
    let us = |t: &SystemTime| t.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_micros()).unwrap_or(0);
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    writeln!(out, "notification_id,reference_unix_us,received_unix_us")?;
    for (id, received_at) in sent {
        if let Some(reference) = reference_of.get(id) {
            writeln!(out, "{id},{},{}", us(reference), us(received_at))?;
        }
    }
    out.flush()?;
    Ok(())
}

/// What pgbench reported about the transactions it committed (its summary, parsed).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct PgbenchReport {
    /// `number of transactions actually processed`: each committed one row.
    pub processed: u64,
    /// `number of failed transactions` (PostgreSQL 15's pgbench; 0 when absent).
    pub failed: u64,
    /// `number of transactions skipped`: already later than `--latency-limit` when due.
    pub skipped: u64,
    /// `number of transactions above the … ms latency limit`.
    pub late: u64,
    /// `tps = … (without initial connection time)`.
    pub tps: f64,
    /// `latency average`, `latency stddev`: per transaction, schedule lag included.
    pub latency_avg_ms: f64,
    pub latency_stddev_ms: f64,
    /// `rate limit schedule lag: avg … (max …) ms`: how late pgbench started transactions.
    pub lag_avg_ms: f64,
    pub lag_max_ms: f64,
}

/// Parses pgbench's summary (what it prints to stdout at the end of a run).
pub fn parse_pgbench(out: &str) -> Result<PgbenchReport, String> {
    fn first_number(text: &str) -> Option<f64> {
        let start = text.find(|c: char| c.is_ascii_digit())?;
        let rest = &text[start..];
        let end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        rest[..end].parse().ok()
    }
    let mut report = PgbenchReport::default();
    let mut saw = (false, false);
    for line in out.lines().map(str::trim) {
        let after = |prefix: &str| line.strip_prefix(prefix).and_then(first_number);
        if let Some(v) = after("number of transactions actually processed:") {
            report.processed = v as u64;
            saw.0 = true;
        } else if let Some(v) = after("number of failed transactions:") {
            report.failed = v as u64;
        } else if let Some(v) = after("number of transactions skipped:") {
            report.skipped = v as u64;
        } else if let Some(rest) = line.strip_prefix("number of transactions above the") {
            // "… above the 100.0 ms latency limit: 3/119990 (0.003%)"
            report.late = rest.split_once(':').and_then(|(_, v)| first_number(v)).unwrap_or(0.0) as u64;
        } else if let Some(v) = after("latency average =") {
            report.latency_avg_ms = v;
        } else if let Some(v) = after("latency stddev =") {
            report.latency_stddev_ms = v;
        } else if let Some(rest) = line.strip_prefix("rate limit schedule lag: avg") {
            report.lag_avg_ms = first_number(rest).unwrap_or(0.0);
            report.lag_max_ms = rest.split_once("max").and_then(|(_, v)| first_number(v)).unwrap_or(0.0);
        } else if let Some(v) = after("tps =") {
            report.tps = v;
            saw.1 = true;
        }
    }
    match saw {
        (true, true) => Ok(report),
        _ => Err(format!("no transaction count and tps in pgbench's output:\n{out}")),
    }
}

/// The pgbench script of `--producer pgbench`: one notification per transaction for a random
/// user, its `created_at` the clock at the `INSERT` (not `now()`, the transaction's start).
fn pgbench_script(users: u64) -> String {
    format!(
        "\\set u random(1, {users})
INSERT INTO notification (user_id, type, payload, created_at)
VALUES ('loadgen-user-' || :u, 'loadgen',
        jsonb_build_object('title', 'Load test', 'body', 'pgbench client ' || :client_id),
        clock_timestamp());
"
    )
}

/// Runs pgbench against the run's database: `-n -R rate -T duration -c clients -j 2 -L limit`,
/// the script of [`pgbench_script`] written to `script`. A pgbench that is not installed, or
/// that fails, is an error with its own words.
async fn run_pgbench(
    db_url: &str,
    ca_file: Option<&std::path::Path>,
    args: &LoadgenArgs,
    rate: u64,
    script: &std::path::Path,
) -> Result<PgbenchReport, BoxError> {
    std::fs::write(script, pgbench_script(args.users))?;
    let threads = args.pgbench_clients.min(2);
    let mut cmd = tokio::process::Command::new("pgbench");
    cmd.arg("-n")
        .args(["-R", &rate.to_string(), "-T", &args.duration_secs.to_string()])
        .args(["-c", &args.pgbench_clients.to_string(), "-j", &threads.to_string()])
        .args(["-L", &args.pgbench_latency_limit_ms.to_string()])
        .arg("-f")
        .arg(script)
        .arg(db_url)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    if let Some(ca) = ca_file {
        cmd.env("PGSSLROOTCERT", ca);
    }
    let out = cmd.output().await.map_err(|e| -> BoxError {
        if e.kind() == std::io::ErrorKind::NotFound {
            "--producer pgbench: pgbench is not on PATH (Debian: apt-get install postgresql-client)".into()
        } else {
            format!("could not run pgbench: {e}").into()
        }
    })?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!("pgbench failed ({}): {}{stdout}", out.status, String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(parse_pgbench(&stdout)?)
}

/// Rows and targets not final yet, counted through the partial indexes that hold exactly them
/// (so the count costs the open work, not the table): pending rows (`notification_pending_idx`),
/// scheduled rows due within the hour (`notification_scheduled_idx`, which leaves out
/// `--future`'s), targets queued or retrying (`delivery_in_flight_idx`), and topic rows whose
/// subscribers are still being written (`notification_topic_fanout_idx`). A notification is
/// `queued` or `retrying` exactly while one of its targets is: both are written in one
/// transaction.
async fn open_work(db: &tokio_postgres::Client) -> Result<i64, BoxError> {
    Ok(db
        .query_one(
            "SELECT (SELECT count(*) FROM notification WHERE status = 'pending')
                  + (SELECT count(*) FROM notification WHERE status = 'scheduled' AND send_at < now() + interval '1 hour')
                  + (SELECT count(*) FROM delivery WHERE status IN ('queued', 'retrying'))
                  + (SELECT count(*) FROM notification WHERE topic IS NOT NULL AND status = 'queued')",
            &[],
        )
        .await?
        .get(0))
}

/// One query's `EXPLAIN (ANALYZE, BUFFERS)`.
struct Plan {
    name: &'static str,
    /// The plan of the first execution.
    lines: Vec<String>,
    /// `Execution Time` of the first and of a second execution.
    first_ms: f64,
    second_ms: f64,
}

/// The queries every listener runs all the time, whatever is scheduled: the claim of pending
/// rows (as `Store::fan_out_pending` runs it, without the UPDATE around it), the scheduler's
/// probe (`Store::any_due`, every `listener.schedule_poll_ms`) and its promotion's SELECT
/// (`Store::promote_due`). Each in a transaction rolled back, so that the row locks go.
async fn explain_hot_path(db: &tokio_postgres::Client) -> Result<Vec<Plan>, BoxError> {
    const QUERIES: [(&str, &str); 3] = [
        (
            "listener claim",
            "SELECT id FROM notification WHERE status = 'pending' ORDER BY created_at LIMIT 1000 FOR UPDATE SKIP LOCKED",
        ),
        (
            "scheduler probe",
            "SELECT EXISTS (SELECT 1 FROM notification WHERE status = 'scheduled' AND send_at <= now())",
        ),
        (
            "scheduler promotion (its SELECT)",
            "SELECT id FROM notification WHERE status = 'scheduled' AND send_at <= now()
              ORDER BY send_at LIMIT 1000 FOR UPDATE SKIP LOCKED",
        ),
    ];
    let mut plans = Vec::new();
    for (name, query) in QUERIES {
        let mut runs = Vec::new();
        for _ in 0..2 {
            db.batch_execute("BEGIN").await?;
            let lines: Vec<String> = db
                .simple_query(&format!("EXPLAIN (ANALYZE, BUFFERS) {query}"))
                .await?
                .iter()
                .filter_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                    _ => None,
                })
                .collect();
            db.batch_execute("ROLLBACK").await?;
            let ms = lines
                .iter()
                .find_map(|l| l.strip_prefix("Execution Time: ")?.strip_suffix(" ms")?.parse::<f64>().ok())
                .unwrap_or(f64::NAN);
            runs.push((lines, ms));
        }
        let second_ms = runs[1].1;
        let (lines, first_ms) = runs.swap_remove(0);
        plans.push(Plan { name, lines, first_ms, second_ms });
    }
    Ok(plans)
}

fn pg_config(url: &str, ca_file: Option<&std::path::Path>) -> Result<notify_relay_engine::tls::PgTarget, BoxError> {
    let mut config = notify_relay_engine::tls::PgTarget::from_url(url, ca_file)?;
    config.connect_timeout(Duration::from_secs(5));
    Ok(config)
}

async fn connect(url: &str, ca_file: Option<&std::path::Path>) -> Result<tokio_postgres::Client, BoxError> {
    let config = pg_config(url, ca_file)?;
    let (client, connection) = config.connect().await.map_err(|e| config.explain(&e))?;
    actix_rt::spawn(connection);
    Ok(client)
}

/// The same URL pointing at another database.
fn with_database(url: &str, db: &str) -> Result<String, BoxError> {
    let (base, query) = url.split_once('?').map(|(b, q)| (b, Some(q))).unwrap_or((url, None));
    let scheme_end = base.find("://").ok_or("loadgen needs database.url in URL form (postgres://…)")? + 3;
    let path_start = base[scheme_end..].find('/').map(|i| i + scheme_end).unwrap_or(base.len());
    let mut out = format!("{}/{db}", &base[..path_start]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    Ok(out)
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

async fn wait_ready(port: u16, limit: Duration) -> Result<(), BoxError> {
    let client = awc::Client::default();
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(resp) = client.get(format!("http://127.0.0.1:{port}/readyz")).send().await {
            if resp.status().is_success() {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            return Err("the relay did not become ready within 60 s (see its log)".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The CPU time of a run's parts ([`crate::cpu`]), from the first commit until every row is
/// final.
struct CpuMeter {
    parts: Parts,
    redis: Option<redis::aio::MultiplexedConnection>,
    start: CpuSample,
}

impl CpuMeter {
    async fn start(db: &tokio_postgres::Client, redis_url: &str, relay: u32, pgbench: bool) -> CpuMeter {
        // A server elsewhere (or one whose pid cannot be had) is left out of the report.
        let backend = db.query_one("SELECT pg_backend_pid()", &[]).await.ok().and_then(|r| r.try_get::<_, i32>(0).ok());
        let parts =
            Parts { relay: Some(relay), postgres_backend: backend.and_then(|p| u32::try_from(p).ok()), pgbench };
        let mut redis = crate::testing::redis_connection(redis_url).await.ok();
        let start = CpuSample::take(parts, redis_cpu(&mut redis).await.as_deref());
        CpuMeter { parts, redis, start }
    }

    async fn stop(mut self, notifications: u64) -> CpuReport {
        let end = CpuSample::take(self.parts, redis_cpu(&mut self.redis).await.as_deref());
        self.start.until(&end, notifications)
    }
}

/// `INFO cpu` of the run's Redis (of the node `redis.url` names, on a cluster).
async fn redis_cpu(conn: &mut Option<redis::aio::MultiplexedConnection>) -> Option<String> {
    redis::cmd("INFO").arg("cpu").query_async(conn.as_mut()?).await.ok()
}

/// A `kB` figure from `/proc/<pid>/status` (`VmHWM:` is the peak resident set).
fn read_status_kb(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find(|l| l.starts_with(field))?.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::{
        batches, check_batch, check_counts, parse_pgbench, pgbench_script, with_database, LoadgenArgs, PgbenchReport,
        Producer, DEFAULT_BATCH, MAX_COUNT,
    };
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: LoadgenArgs,
    }

    #[test]
    fn the_producer_options_parse_and_a_topic_run_takes_no_row_count() {
        let cli = Cli::try_parse_from(["loadgen", "--topic", "--users", "1000000"]).unwrap();
        assert!(cli.args.topic);
        assert_eq!(cli.args.users, 1_000_000);
        let cli = Cli::try_parse_from(["loadgen", "--send-in-ms", "5000", "--future", "1000000"]).unwrap();
        assert_eq!((cli.args.send_in_ms, cli.args.future, cli.args.topic), (Some(5000), Some(1_000_000), false));
        assert!(Cli::try_parse_from(["loadgen", "--topic", "--notifications", "5"]).is_err());
        assert!(Cli::try_parse_from(["loadgen", "--topic", "--rate", "5"]).is_err());
    }

    #[test]
    fn counts_that_would_wrap_in_int8_arithmetic_are_refused() {
        assert!(check_counts(1, 1).is_ok());
        assert!(check_counts(MAX_COUNT, MAX_COUNT).is_ok());
        assert!(check_counts(0, 1).unwrap_err().to_string().contains("--notifications"));
        assert!(check_counts(u64::MAX, 1).unwrap_err().to_string().contains("--notifications"));
        assert!(check_counts(1, u64::MAX).unwrap_err().to_string().contains("--users"));
    }

    #[test]
    fn batches_cover_every_row_once_in_order_and_none_is_over_the_size() {
        assert_eq!(batches(1, 100_000, 10_000).count(), 10);
        assert_eq!(batches(1, 25, 10).collect::<Vec<_>>(), [(1, 10), (11, 20), (21, 25)]);
        assert_eq!(batches(1, 5, 10).collect::<Vec<_>>(), [(1, 5)]);
        assert_eq!(batches(1, 3, 1).collect::<Vec<_>>(), [(1, 1), (2, 2), (3, 3)]);
        assert_eq!(batches(7, 7, 10).collect::<Vec<_>>(), [(7, 7)]);
        assert_eq!(batches(8, 7, 10).count(), 0);
        // Near the top of u64: no overflow, the last range ends at `last`.
        assert_eq!(
            batches(u64::MAX - 2, u64::MAX, 2).collect::<Vec<_>>(),
            [(u64::MAX - 2, u64::MAX - 1), (u64::MAX, u64::MAX)]
        );
        for (first, last, size) in [(1, 1_000_003, 10_000), (1, 999, 7), (50, 1_049, 1_000), (3, 3, MAX_COUNT)] {
            let mut expected_next = first;
            for (a, b) in batches(first, last, size) {
                assert_eq!(a, expected_next, "ranges are consecutive");
                assert!(a <= b && b - a < size, "({a}, {b}) within {size}");
                expected_next = b + 1;
            }
            assert_eq!(expected_next, last + 1, "every row up to {last}");
        }
    }

    #[test]
    fn batch_defaults_to_ten_thousand_and_bad_values_get_a_clear_error() {
        let cli = Cli::try_parse_from(["loadgen"]).unwrap();
        assert_eq!((cli.args.batch, DEFAULT_BATCH), (10_000, 10_000));
        let cli = Cli::try_parse_from(["loadgen", "--batch", "250"]).unwrap();
        assert_eq!(cli.args.batch, 250);
        for (bad, says) in [
            ("0", "--batch must be between 1 and 1000000000, got 0"),
            ("1000000001", "--batch must be between 1 and 1000000000, got 1000000001"),
            ("-5", "expected a whole number of rows per commit, got \"-5\""),
            ("ten", "expected a whole number of rows per commit, got \"ten\""),
            ("", "expected a whole number of rows per commit"),
        ] {
            let err =
                Cli::try_parse_from(["loadgen".to_string(), format!("--batch={bad}")]).err().expect(bad).to_string();
            assert!(err.contains("--batch") && err.contains(says), "--batch {bad:?}: {err}");
        }
        assert_eq!(check_batch(0).unwrap_err().to_string(), "--batch must be between 1 and 1000000000, got 0");
        assert!(check_batch(1).is_ok() && check_batch(MAX_COUNT).is_ok());
        // A topic run commits one row: a batch size means nothing there.
        assert!(Cli::try_parse_from(["loadgen", "--topic", "--batch", "10"]).is_err());
        // --rate 0 would commit nothing forever.
        let err = Cli::try_parse_from(["loadgen", "--rate", "0"]).err().expect("--rate 0").to_string();
        assert!(err.contains("--rate"), "{err}");
        let cli = Cli::try_parse_from(["loadgen", "--rate", "5", "--batch", "2"]).unwrap();
        assert_eq!((cli.args.rate, cli.args.batch), (Some(5), 2));
    }

    #[test]
    fn pgbench_as_producer_takes_a_rate_a_duration_and_its_clients() {
        let cli = Cli::try_parse_from(["loadgen", "--producer", "pgbench", "--rate", "2000", "--duration-secs", "60"])
            .unwrap();
        assert_eq!(
            (cli.args.producer, cli.args.rate, cli.args.duration_secs, cli.args.pgbench_clients),
            (Producer::Pgbench, Some(2000), 60, 8)
        );
        assert_eq!(Cli::try_parse_from(["loadgen"]).unwrap().args.producer, Producer::Loadgen);
        assert!(Cli::try_parse_from(["loadgen", "--producer", "psql"]).is_err());
        assert!(Cli::try_parse_from(["loadgen", "--duration-secs", "0"]).is_err());
    }

    #[test]
    fn the_pgbench_script_stamps_each_row_with_the_clock_of_its_insert() {
        let script = pgbench_script(40);
        assert!(script.starts_with("\\set u random(1, 40)\n"), "{script}");
        assert!(script.contains("clock_timestamp()") && !script.contains("now()"), "{script}");
    }

    #[test]
    fn pgbench_s_summary_is_parsed() {
        // PostgreSQL 15.20's pgbench, -R 100 -T 1 -c 2 -j 2 -L 100.
        let out = "pgbench (15.20 (Debian 15.20-0+deb12u1))
transaction type: /tmp/lat-select.sql
scaling factor: 1
query mode: simple
number of clients: 2
number of threads: 2
maximum number of tries: 1
duration: 1 s
number of transactions actually processed: 94
number of failed transactions: 0 (0.000%)
number of transactions skipped: 2 (2.083%)
number of transactions above the 100.0 ms latency limit: 3/94 (3.191%)
latency average = 0.597 ms
latency stddev = 0.313 ms
rate limit schedule lag: avg 0.121 (max 0.511) ms
initial connection time = 19.579 ms
tps = 96.428850 (without initial connection time)
";
        let report = parse_pgbench(out).unwrap();
        assert_eq!(
            report,
            PgbenchReport {
                processed: 94,
                failed: 0,
                skipped: 2,
                late: 3,
                tps: 96.428850,
                latency_avg_ms: 0.597,
                latency_stddev_ms: 0.313,
                lag_avg_ms: 0.121,
                lag_max_ms: 0.511,
            }
        );
        assert!(parse_pgbench("pgbench: error: connection refused").is_err());
    }

    #[test]
    fn the_database_of_a_url_is_replaced() {
        assert_eq!(
            with_database("postgres://u:p@h:5432/app?sslmode=require", "x").unwrap(),
            "postgres://u:p@h:5432/x?sslmode=require"
        );
        assert_eq!(with_database("postgres://h", "x").unwrap(), "postgres://h/x");
        assert!(with_database("host=h dbname=d", "x").is_err());
    }
}
