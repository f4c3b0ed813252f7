//! `notify-relay loadgen`: the run streams its commits (`--batch`, `--rate`, or pgbench's single
//! rows with `--producer pgbench`) and leaves neither its database nor a Redis key of its prefix
//! behind; a cleanup that cannot finish says so.

use crate::helpers::{base_database_url, pg, redis_connection, redis_url, Leftovers, TempDir};
use emulators::loadgen::clean_up;
use emulators::testing::count_keys;
use serde_json::Value;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use uuid::Uuid;

async fn database_exists(name: &str) -> bool {
    let admin = pg(&base_database_url()).await;
    let row =
        admin.query_one("SELECT count(*) FROM pg_database WHERE datname = $1", &[&name]).await.expect("pg_database");
    row.get::<_, i64>(0) == 1
}

/// A finished `notify-relay loadgen` run: how it exited, what it printed, and the names of its
/// database and key prefix (guarded: whatever it left is removed when this is dropped).
struct Run {
    status: std::process::ExitStatus,
    err: String,
    out: String,
    db_name: String,
    prefix: String,
    _guard: Leftovers,
}

impl Run {
    /// The JSON summary line of the output.
    fn report(&self) -> Value {
        self.out
            .lines()
            .find_map(|l| serde_json::from_str(l).ok())
            .unwrap_or_else(|| panic!("a JSON line in the output:\n{}", self.out))
    }

    /// It said it cleaned up, and neither its database nor a key of its prefix is left.
    async fn assert_left_nothing(&self) {
        let (db_name, prefix, err) = (&self.db_name, &self.prefix, &self.err);
        assert!(err.contains(&format!("cleaned up: database {db_name} dropped")) && err.contains("0 left"), "{err}");
        assert!(!database_exists(db_name).await, "{db_name} is still there");
        let mut redis = redis_connection(&redis_url()).await.expect("redis");
        assert_eq!(count_keys(&mut redis, prefix).await.expect("SCAN"), 0, "keys of {prefix} left");
    }
}

/// Runs `notify-relay loadgen ARGS` (relay log in `dir`) to its end, within `limit`.
async fn run_loadgen(args: &[&str], dir: &TempDir, limit: Duration) -> Run {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_notify-relay"))
        .arg("loadgen")
        .args(args)
        .args(["--timeout-secs", "120", "--relay-log"])
        .arg(dir.path().join("relay.log"))
        .env_remove("NOTIFY_CONFIG")
        .env("DATABASE_URL", base_database_url())
        .env("REDIS_URL", redis_url())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start loadgen");
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = BufReader::new(child.stderr.take().expect("piped stderr")).lines();

    // Its first line names the database and the key prefix: guarded from here on.
    let first = tokio::time::timeout(Duration::from_secs(60), stderr.next_line())
        .await
        .expect("loadgen names its database within 60 s")
        .expect("read loadgen's stderr")
        .expect("a first line");
    let names = first.strip_prefix("loadgen: database ").unwrap_or_else(|| panic!("first line: {first}"));
    let (db_name, rest) = names.split_once(", key prefix ").unwrap_or_else(|| panic!("first line: {first}"));
    let prefix = rest.split_once(',').map(|(p, _)| p).unwrap_or_else(|| panic!("first line: {first}"));
    let (db_name, prefix) = (db_name.to_string(), prefix.to_string());
    let guard = Leftovers::of(&db_name, &prefix);
    assert!(db_name.starts_with("loadgen_") && prefix.starts_with("loadgen-"), "{first}");

    let rest_of_stderr = async {
        let mut lines = Vec::new();
        while let Some(line) = stderr.next_line().await.expect("read loadgen's stderr") {
            lines.push(line);
        }
        lines
    };
    let all_of_stdout = async {
        let mut text = String::new();
        stdout.read_to_string(&mut text).await.expect("read loadgen's stdout");
        text
    };
    let (status, lines, out) = tokio::time::timeout(limit, async {
        let (lines, out) = tokio::join!(rest_of_stderr, all_of_stdout);
        (child.wait().await.expect("wait for loadgen"), lines, out)
    })
    .await
    .unwrap_or_else(|_| panic!("loadgen ends within {} s", limit.as_secs()));
    Run { status, err: lines.join("\n"), out, db_name, prefix, _guard: guard }
}

#[actix_web::test]
async fn a_paced_run_commits_in_batches_while_the_relay_delivers_and_leaves_nothing_behind() {
    let dir = TempDir::new("loadgen-test");
    // 1,000/s is 50 rows a tick, in statements of at most 20: 20 + 20 + 10, 50 ticks.
    let args = ["--notifications", "2500", "--users", "40", "--rate", "1000", "--batch", "20"];
    let run = run_loadgen(&args, &dir, Duration::from_secs(240)).await;
    let (err, out) = (&run.err, &run.out);
    assert!(run.status.success(), "loadgen: {}\n{err}\n{out}", run.status);

    assert!(err.contains("committed 2500 notifications in 150 transactions of at most 20 rows at 1000/s"), "{err}");
    let report = run.report();
    assert_eq!(
        (&report["delivered"], &report["failed"], &report["duplicates"], &report["commits"], &report["batch"]),
        (&Value::from(2500), &Value::from(0), &Value::from(0), &Value::from(150), &Value::from(20)),
        "{out}"
    );
    // Paced: 50 ticks of 50 ms from the first commit, so at least 2.4 s from it to the last.
    let seconds = report["seconds"].as_f64().expect("seconds");
    assert!(seconds >= 2.4, "{seconds} s for 2,500 rows at 1,000/s: the rate was not kept\n{out}");
    // Streamed: the relay sent while later batches were still being committed.
    let early = report["sent_before_last_commit"].as_u64().expect("sent_before_last_commit");
    assert!(early > 0 && early < 2500, "{early} sent before the last commit\n{out}");
    let latency = &report["latency_ms"];
    let p99_9 = latency["p99_9"].as_f64().expect("p99.9 in the summary");
    assert!(latency["p99"].as_f64().expect("p99") <= p99_9 && p99_9 <= latency["max"].as_f64().expect("max"), "{out}");
    // CPU per 1,000 notifications: every part on this machine was read (Postgres and Redis are
    // local here), the relay did some work, and the parts add up to the total.
    let cpu = &report["cpu"]["per_1k_ms"];
    let part = |name: &str| cpu[name].as_f64().unwrap_or_else(|| panic!("cpu.{name} in the summary\n{out}"));
    assert!(part("relay") > 0.0 && part("postgres") > 0.0, "{out}");
    let sum = part("relay") + part("loadgen") + part("postgres") + part("redis");
    assert!((sum - part("total")).abs() < 0.5, "{out}");
    assert!(cpu.get("pgbench").is_none(), "no pgbench in a loadgen-produced run\n{out}");
    let steal = report["cpu"]["steal"].as_f64().expect("steal");
    assert!((0.0..=1.0).contains(&steal), "{out}");
    let busy = report["cpu"]["cores_used"].as_f64().expect("cores_used");
    assert!(busy > 0.0 && report["cpu"]["cores"].as_u64().is_some_and(|c| c >= 1), "{out}");
    assert!(out.contains("  cpu                  ") && out.contains(" ms per 1k notifications (relay "), "{out}");

    run.assert_left_nothing().await;
}

/// `--aged`: a backlog of final rows 31 days old, which the relay's retention job (every second
/// in such a run) deletes while the run goes on, and the end-of-run table report.
#[actix_web::test]
async fn an_aged_backlog_is_deleted_by_retention_during_the_run_and_the_tables_are_reported() {
    let dir = TempDir::new("loadgen-aged");
    // Paced over 8 s: the retention job, once a second, has time to run several times.
    let args = ["--notifications", "1600", "--users", "20", "--rate", "200", "--aged", "500"];
    let run = run_loadgen(&args, &dir, Duration::from_secs(240)).await;
    let (err, out) = (&run.err, &run.out);
    assert!(run.status.success(), "loadgen: {}\n{err}\n{out}", run.status);
    assert!(err.contains("500 delivered rows 31 days old"), "{err}");
    let report = run.report();
    assert_eq!((&report["delivered"], &report["duplicates"]), (&Value::from(1600), &Value::from(0)), "{out}");
    assert_eq!((&report["aged"], &report["aged_deleted"]), (&Value::from(500), &Value::from(500)), "{out}");
    assert!(out.contains("retention            deleted 500 of 500 rows 31 days old during the run"), "{out}");
    for table in ["notification", "delivery"] {
        let t = &report["tables"][table];
        // The run's rows at least (pg_stat_user_tables lags the deletes by up to its flush
        // interval, so the aged rows may still be counted).
        let live = t["live"].as_i64().expect("live");
        assert!((1600..=2100).contains(&live), "{table}: {live} live\n{out}");
        assert!(t["heap_mib"].as_i64().is_some() && t["autovacuums"].as_i64().is_some(), "{table}: {out}");
    }
    run.assert_left_nothing().await;
}

#[actix_web::test]
async fn pgbench_as_the_producer_commits_single_rows_at_the_rate_and_every_one_is_delivered() {
    // CI installs pgbench with the PostgreSQL client (scripts/services.sh): missing is a failure.
    let found = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).any(|dir| dir.join("pgbench").is_file()))
        .unwrap_or(false);
    assert!(found, "pgbench is not on PATH (scripts/test installs it: postgresql-client)");
    let dir = TempDir::new("loadgen-pgbench-test");
    let args = ["--producer", "pgbench", "--rate", "200", "--duration-secs", "2", "--users", "20"];
    let args = [&args[..], &["--pgbench-clients", "2"]].concat();
    let run = run_loadgen(&args, &dir, Duration::from_secs(240)).await;
    let (err, out) = (&run.err, &run.out);
    assert!(run.status.success(), "loadgen: {}\n{err}\n{out}", run.status);

    let report = run.report();
    let pgbench = &report["pgbench"];
    let processed = pgbench["processed"].as_u64().expect("pgbench's transaction count");
    // 200/s for 2 s is about 400 single-row commits (pgbench's schedule is a Poisson process).
    assert!((200..=600).contains(&processed), "{processed} transactions\n{out}");
    assert!(pgbench["tps"].as_f64().expect("tps") > 0.0, "{out}");
    assert_eq!(
        (&report["producer"], &report["latency_from"], &report["delivered"], &report["failed"], &report["duplicates"]),
        (
            &Value::from("pgbench"),
            &Value::from("created_at"),
            &Value::from(processed),
            &Value::from(0),
            &Value::from(0)
        ),
        "{out}"
    );
    assert_eq!(report["sends"].as_u64(), Some(processed), "{out}");
    let latency = &report["latency_ms"];
    for p in ["p50", "p90", "p99", "p99_9", "max"] {
        assert!(latency[p].as_f64().is_some_and(|ms| ms >= 0.0), "{p}\n{out}");
    }
    assert!(out.contains("pgbench              tps "), "{out}");

    run.assert_left_nothing().await;
}

#[actix_web::test]
async fn the_cleanup_unlinks_every_key_of_the_prefix_and_a_redis_it_cannot_reach_is_an_error() {
    let id = Uuid::new_v4().simple().to_string();
    let (db_name, prefix) = (format!("loadgen_{id}"), format!("loadgen-{id}"));
    let _guard = Leftovers::of(&db_name, &prefix);
    let admin = pg(&base_database_url()).await;
    let mut redis = redis_connection(&redis_url()).await.expect("redis");

    // More keys than one SCAN batch, and one key of another prefix sharing the first letters.
    admin.batch_execute(&format!("CREATE DATABASE {db_name}")).await.expect("create database");
    let mut pipe = redis::pipe();
    for i in 0..2_500 {
        pipe.cmd("SET").arg(format!("{prefix}:delivered:{i}")).arg(1).ignore();
    }
    let neighbour = format!("{prefix}x:other");
    let _neighbour_guard = Leftovers::of(&format!("{db_name}x"), &format!("{prefix}x"));
    pipe.cmd("SET").arg(&neighbour).arg(1).ignore();
    pipe.query_async::<()>(&mut redis).await.expect("SET");

    let removed = clean_up(&admin, &db_name, &redis_url(), &prefix).await.expect("clean up");
    assert_eq!(removed, 2_500);
    assert_eq!(count_keys(&mut redis, &prefix).await.expect("SCAN"), 0);
    assert!(!database_exists(&db_name).await);
    let kept: u64 = redis::cmd("UNLINK").arg(&neighbour).query_async(&mut redis).await.expect("UNLINK");
    assert_eq!(kept, 1, "a key outside the prefix was removed");

    // Nothing listens on port 1: the keys cannot be removed, which is said, naming the prefix;
    // the database is dropped all the same.
    admin.batch_execute(&format!("CREATE DATABASE {db_name}")).await.expect("create database");
    let err = clean_up(&admin, &db_name, "redis://127.0.0.1:1", &prefix).await.expect_err("Redis is unreachable");
    assert!(err.contains(&format!("Redis keys of {prefix}:* not removed")), "{err}");
    assert!(!database_exists(&db_name).await);
}
