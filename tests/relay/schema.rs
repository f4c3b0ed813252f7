//! The hot queries can use their indexes.

use crate::helpers::prepare;

async fn plan(app: &crate::helpers::TestApp, sql: &str) -> String {
    app.db.batch_execute("SET enable_seqscan = off").await.unwrap();
    let rows = app.db.query(&format!("EXPLAIN {sql}"), &[]).await.unwrap();
    rows.iter().map(|r| r.get::<_, String>(0)).collect::<Vec<_>>().join("\n")
}

#[actix_web::test]
async fn the_claim_the_fan_out_the_sweep_and_the_receipt_lease_use_their_indexes() {
    let app = prepare().await;

    let claim = plan(&app, "SELECT id FROM notification WHERE status = 'pending' ORDER BY created_at LIMIT 1000").await;
    assert!(claim.contains("notification_pending_idx"), "{claim}");
    let devices =
        plan(&app, "SELECT id, provider, token FROM device WHERE user_id = ANY('{a,b}') AND disabled_at IS NULL").await;
    assert!(devices.contains("device_user_active_idx"), "{devices}");
    let sweep = plan(
        &app,
        "SELECT notification_id, device_id FROM delivery WHERE status IN ('queued', 'retrying')
          AND updated_at < now() - interval '5 minutes' ORDER BY updated_at LIMIT 1000",
    )
    .await;
    assert!(sweep.contains("delivery_in_flight_idx"), "{sweep}");
    let receipts = plan(
        &app,
        "SELECT notification_id, device_id FROM delivery WHERE receipt_due_at <= now()
            AND (receipt_leased_until IS NULL OR receipt_leased_until <= now())
          ORDER BY receipt_due_at LIMIT 1000 FOR UPDATE SKIP LOCKED",
    )
    .await;
    assert!(receipts.contains("delivery_receipt_due_idx"), "{receipts}");
}

/// A test's app, dropped, leaves neither its database nor any of its Redis keys behind, however
/// many there are (more than one SCAN page here).
#[actix_web::test]
async fn a_dropped_test_app_leaves_no_database_and_no_redis_keys() {
    let app = crate::helpers::prepare().await;
    let (db_name, prefix) = (app.db_name.clone(), app.prefix.clone());
    let mut conn = app.redis.clone();
    let mut pipe = redis::pipe();
    for i in 0..2500 {
        pipe.cmd("SET").arg(format!("{prefix}:k{i}")).arg(1).ignore();
    }
    let _: () = pipe.query_async(&mut conn).await.expect("SET");
    drop(app);

    let mut conn = crate::helpers::redis_connection(&crate::helpers::redis_url()).await.expect("redis");
    let (_, left): (u64, Vec<String>) = redis::cmd("SCAN")
        .arg(0)
        .arg("MATCH")
        .arg(format!("{prefix}:*"))
        .arg("COUNT")
        .arg(1_000_000)
        .query_async(&mut conn)
        .await
        .expect("SCAN");
    assert!(left.is_empty(), "{} keys left", left.len());
    let admin = crate::helpers::pg(&crate::helpers::base_database_url()).await;
    let dbs: i64 =
        admin.query_one("SELECT count(*) FROM pg_database WHERE datname = $1", &[&db_name]).await.unwrap().get(0);
    assert_eq!(dbs, 0, "database {db_name} left");
}

/// `migrate` builds the indexes of V5 with `CREATE INDEX CONCURRENTLY`: a producer's open
/// transaction delays the build, never the other producers' inserts; an index an interrupted
/// build left invalid is built again; `/readyz` waits for all of them.
#[actix_web::test]
async fn the_online_indexes_are_built_while_inserts_go_on_and_an_invalid_one_is_rebuilt() {
    use crate::helpers::{eventually, pg};
    use std::time::Duration;
    let app = prepare().await;
    app.db
        .batch_execute(
            "DROP INDEX notification_scheduled_idx;
             UPDATE pg_index SET indisvalid = false WHERE indexrelid = 'notification_parent_idx'::regclass",
        )
        .await
        .unwrap();
    assert!(!notify_relay::migrate::is_current(&app.db).await, "not ready without its indexes");

    let url = app.settings.database.url.expose().to_string();
    let mut producer = pg(&url).await;
    let open = producer.transaction().await.unwrap();
    open.execute("INSERT INTO notification (user_id, type) VALUES ('p', 'x')", &[]).await.unwrap();
    let config: tokio_postgres::Config = url.parse().unwrap();
    let migrating = actix_rt::spawn(async move { notify_relay::migrate::run(&config.into()).await });
    eventually(Duration::from_secs(20), || async {
        let waiting = app
            .count(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()
                   AND query LIKE 'CREATE INDEX CONCURRENTLY%' AND wait_event_type = 'Lock'",
            )
            .await;
        (waiting > 0).then_some(())
    })
    .await;
    // While the build waits for the open transaction, other inserts are not held up.
    let others = pg(&url).await;
    let inserts = async {
        for i in 0..100 {
            others
                .execute("INSERT INTO notification (user_id, type) VALUES ($1, 'x')", &[&format!("o{i}")])
                .await
                .unwrap();
        }
    };
    tokio::time::timeout(Duration::from_secs(20), inserts).await.expect("inserts are not blocked by the index build");
    assert!(!migrating.is_finished(), "the build waits for the producer's open transaction");
    open.commit().await.unwrap();
    let applied = migrating.await.unwrap().expect("migrate");
    assert_eq!(applied, vec!["index notification_scheduled_idx", "index notification_parent_idx"]);
    assert!(notify_relay::migrate::is_current(&app.db).await);
}

/// New notification ids are UUIDv7 (migrations/V7__write_path.sql): version 7, RFC 4122
/// variant, their first 48 bits the creation time in Unix ms, so ids grow with time and new rows
/// go to the right edge of the primary keys. Several rows of one statement differ in their
/// random bits. And the tables that are updated keep room on each page for new row versions.
#[actix_web::test]
async fn notification_ids_are_time_ordered_uuid_v7_and_the_updated_tables_keep_free_space_and_vacuum_by_churn() {
    let app = prepare().await;
    let before_ms: i64 =
        app.db.query_one("SELECT (extract(epoch FROM clock_timestamp()) * 1000)::int8", &[]).await.unwrap().get(0);
    let rows = app
        .db
        .query(
            "INSERT INTO notification (user_id, type) SELECT 'u' || g, 't' FROM generate_series(1, 50) g
             RETURNING id, (extract(epoch FROM created_at) * 1000)::int8",
            &[],
        )
        .await
        .unwrap();
    let later =
        app.db.query_one("INSERT INTO notification (user_id, type) VALUES ('u', 't') RETURNING id", &[]).await.unwrap();
    let after_ms: i64 =
        app.db.query_one("SELECT (extract(epoch FROM clock_timestamp()) * 1000)::int8", &[]).await.unwrap().get(0);

    let ms_of = |id: uuid::Uuid| -> i64 {
        let b = id.as_bytes();
        i64::from_be_bytes([0, 0, b[0], b[1], b[2], b[3], b[4], b[5]])
    };
    let mut ids = std::collections::HashSet::new();
    for row in &rows {
        let id: uuid::Uuid = row.get(0);
        assert_eq!(id.get_version_num(), 7, "{id}");
        assert_eq!(id.get_variant(), uuid::Variant::RFC4122, "{id}");
        let ms = ms_of(id);
        assert!((before_ms..=after_ms).contains(&ms), "{id}: {ms} ms not within {before_ms}..={after_ms}");
        // created_at is the statement's now(): at most the statement's own duration earlier.
        let created_ms: i64 = row.get(1);
        assert!(ms >= created_ms - 1, "{id}: time {ms} before created_at {created_ms}");
        assert!(ids.insert(id), "duplicate id {id}");
    }
    let later: uuid::Uuid = later.get(0);
    // Time-ordered: a later row's id never sorts before an earlier millisecond's.
    assert!(ids.iter().all(|id| ms_of(*id) <= ms_of(later)), "{later} sorts before an earlier row");

    let options: Vec<(String, Option<Vec<String>>)> = app
        .db
        .query(
            "SELECT relname::text, reloptions FROM pg_class WHERE relname IN ('notification', 'delivery') ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    // Room for HOT updates (V7), and vacuum by churn rather than by size (V8).
    let wanted = [
        "fillfactor=85",
        "autovacuum_vacuum_scale_factor=0.02",
        "autovacuum_vacuum_insert_scale_factor=0.02",
        "autovacuum_analyze_scale_factor=0.05",
    ];
    for (table, opts) in &options {
        let opts = opts.as_deref().unwrap_or_default();
        for option in wanted {
            assert!(opts.iter().any(|o| o == option), "{table}: {option} not in {opts:?}");
        }
    }
    assert_eq!(options.len(), 2);
}

/// Retention's check for open targets stays a primary-key probe per candidate however stale the
/// statistics are: analysed while nothing was in flight, then 5,000 targets in flight, the
/// statement must not become an anti-join over every in-flight target (it did: 4.5 s per batch
/// of 1,000 with 20,000 in flight, while deliveries waited).
#[actix_web::test]
async fn retentions_open_target_check_probes_the_primary_key_whatever_the_statistics_say() {
    let app = prepare().await;
    app.exec(
        "INSERT INTO device (user_id, provider, token) SELECT 'u' || g, 'expo', 'ExponentPushToken[r' || g || ']'
           FROM generate_series(1, 100) g",
        &[],
    )
    .await;
    app.exec(
        "WITH n AS (INSERT INTO notification (user_id, type, status, created_at)
                    SELECT 'u' || (1 + g % 100), 'old', 'delivered', now() - interval '40 days'
                      FROM generate_series(1, 5000) g RETURNING id, user_id)
         INSERT INTO delivery (notification_id, device_id, provider, status)
         SELECT n.id, d.id, 'expo', 'delivered' FROM n JOIN device d USING (user_id)",
        &[],
    )
    .await;
    app.db.batch_execute("ANALYZE notification; ANALYZE delivery").await.unwrap();
    app.exec(
        "WITH n AS (INSERT INTO notification (user_id, type, status)
                    SELECT 'u' || (1 + g % 100), 'new', 'queued' FROM generate_series(1, 5000) g RETURNING id, user_id)
         INSERT INTO delivery (notification_id, device_id, provider, status)
         SELECT n.id, d.id, 'expo', 'queued' FROM n JOIN device d USING (user_id)",
        &[],
    )
    .await;
    let sql = notify_relay_engine::store::retention::DELETE_FINAL_OLDER_THAN;
    // EXPLAIN ANALYZE runs the DELETE: inside a transaction rolled back.
    app.db.batch_execute("BEGIN").await.unwrap();
    let rows = app.db.query(&format!("EXPLAIN (ANALYZE, COSTS OFF) {sql}"), &[&30i32, &1000i64]).await.unwrap();
    let plan: String = rows.iter().map(|r| r.get::<_, String>(0)).collect::<Vec<_>>().join("\n");
    app.db.batch_execute("ROLLBACK").await.unwrap();
    assert!(plan.contains("SubPlan"), "{plan}");
    assert!(plan.contains("Index Scan using delivery_pkey on delivery d"), "{plan}");
    assert!(!plan.contains("delivery_in_flight_idx") && !plan.contains("Anti Join"), "{plan}");
}

/// Retention's candidates are one range of the final-rows index from its left edge, whatever
/// the heap looks like: old final rows spread over pages full of new ones (what retention leaves
/// behind once new rows reuse the space it freed), analysed, and the batch under KEYED_PLANS
/// still reads the index in order instead of rechecking every page a BRIN range names.
#[actix_web::test]
async fn retentions_candidates_come_oldest_first_from_the_final_rows_index() {
    let app = prepare().await;
    // Every 50th row is 40 days old, the rest new: each BRIN range holds both ages.
    app.exec(
        "INSERT INTO notification (user_id, type, status, created_at)
         SELECT 'u' || g, 'x', CASE WHEN g % 3 = 0 THEN 'pending' ELSE 'delivered' END,
                CASE WHEN g % 50 = 0 THEN now() - interval '40 days' - g * interval '1 second' ELSE now() END
           FROM generate_series(1, 20000) g",
        &[],
    )
    .await;
    app.db.batch_execute("ANALYZE notification").await.unwrap();
    let sql = notify_relay_engine::store::retention::DELETE_FINAL_OLDER_THAN;
    app.db.batch_execute(&format!("BEGIN; {}", notify_relay_engine::store::KEYED_PLANS)).await.unwrap();
    let rows = app.db.query(&format!("EXPLAIN (ANALYZE, COSTS OFF) {sql}"), &[&30i32, &100i64]).await.unwrap();
    let plan: String = rows.iter().map(|r| r.get::<_, String>(0)).collect::<Vec<_>>().join("\n");
    app.db.batch_execute("ROLLBACK").await.unwrap();
    assert!(plan.contains("Index Scan using notification_final_created_idx on notification"), "{plan}");
    assert!(!plan.contains("notification_created_brin") && !plan.contains("Sort"), "{plan}");

    // And it deletes the oldest final rows first, 100 per batch, never a pending one.
    let oldest: Vec<uuid::Uuid> = app
        .column(
            "SELECT id FROM notification WHERE status = 'delivered' AND created_at < now() - interval '30 days'
              ORDER BY created_at LIMIT 100",
            &[],
        )
        .await;
    app.db.batch_execute(&format!("BEGIN; {}", notify_relay_engine::store::KEYED_PLANS)).await.unwrap();
    let deleted = app.db.execute(sql, &[&30i32, &100i64]).await.unwrap();
    app.db.batch_execute("COMMIT").await.unwrap();
    assert_eq!(deleted, 100);
    let kept: i64 = app.one("SELECT count(*) FROM notification WHERE id = ANY($1)", &[&oldest]).await;
    assert_eq!(kept, 0, "the 100 oldest final rows went");
    // 400 old rows: 133 pending (kept), 267 delivered, of which 100 deleted.
    assert_eq!(app.count("SELECT count(*) FROM notification WHERE created_at < now() - interval '30 days'").await, 300);
}

/// EXPLAIN ANALYZE of marking 500 queued notifications delivered under KEYED_PLANS, rolled back.
async fn mark_delivered_plan(app: &crate::helpers::TestApp) -> String {
    let ids: Vec<uuid::Uuid> = app
        .db
        .query("SELECT id FROM notification WHERE status = 'queued' LIMIT 500", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let attempts = vec![1i32; ids.len()];
    app.db.batch_execute(&format!("BEGIN; {}", notify_relay_engine::store::KEYED_PLANS)).await.unwrap();
    let sql = format!("EXPLAIN (ANALYZE, COSTS OFF) {}", notify_relay_engine::store::MARK_DELIVERED);
    let rows = app.db.query(&sql, &[&ids, &attempts]).await.unwrap();
    app.db.batch_execute("ROLLBACK").await.unwrap();
    rows.iter().map(|r| r.get::<_, String>(0)).collect::<Vec<_>>().join("\n")
}

/// The outcome writer's statements probe by key whatever the statistics say (KEYED_PLANS and
/// CASE guards, store::outcomes): on a table analysed while every row was final, and on one
/// never analysed, marking 500 notifications delivered is a nested loop of primary-key probes,
/// never a scan of the table (it was: 2–6 s per batch with stale statistics, a hash join over a
/// sequential scan on fresh tables).
#[actix_web::test]
async fn marking_a_batch_delivered_probes_the_primary_key_on_fresh_and_on_stale_statistics() {
    let app = prepare().await;
    let probes = |plan: &str| {
        plan.contains("Nested Loop")
            && plan.contains("Index Scan using notification_pkey on notification n")
            && !plan.contains("Seq Scan")
            && !plan.contains("Hash Join")
    };
    // Rows of one status, numbered under a user prefix.
    let add = |prefix: &'static str, status: &'static str, n: i64| {
        let db = &app.db;
        async move {
            db.execute(
                "INSERT INTO notification (user_id, type, status)
                 SELECT $1 || g, 'plan', $2 FROM generate_series(1, $3::int8) g",
                &[&prefix, &status, &n],
            )
            .await
            .unwrap();
        }
    };
    // Fresh: never analysed, 20,000 in flight.
    add("u", "queued", 20_000).await;
    let fresh = mark_delivered_plan(&app).await;
    assert!(probes(&fresh), "{fresh}");
    // Stale: analysed while 50,000 rows were all final, then 20,000 more in flight.
    app.exec("UPDATE notification SET status = 'delivered'", &[]).await;
    add("o", "delivered", 30_000).await;
    app.db.batch_execute("ANALYZE notification").await.unwrap();
    add("n", "queued", 20_000).await;
    let stale = mark_delivered_plan(&app).await;
    assert!(probes(&stale), "{stale}");
}

/// No keyed statement is JIT-compiled, whatever the server's `jit_*_above_cost`: with every
/// threshold at 0 (so that the server would compile anything), retention's delete under
/// KEYED_PLANS runs without JIT, while the same statement without them is compiled (which shows
/// the server can JIT at all, so that the first half means something).
#[actix_web::test]
async fn keyed_statements_are_never_jit_compiled() {
    let app = prepare().await;
    app.exec(
        "INSERT INTO notification (user_id, type, status, created_at)
         SELECT 'u' || g, 'old', 'delivered', now() - interval '40 days' FROM generate_series(1, 100) g",
        &[],
    )
    .await;
    let sql = notify_relay_engine::store::retention::DELETE_FINAL_OLDER_THAN;
    let plan = |keyed: bool| {
        let db = &app.db;
        async move {
            let prelude = if keyed { notify_relay_engine::store::KEYED_PLANS } else { "" };
            db.batch_execute(&format!(
                "BEGIN; SET LOCAL jit_above_cost = 0; SET LOCAL jit_inline_above_cost = 0;
                 SET LOCAL jit_optimize_above_cost = 0; {prelude}"
            ))
            .await
            .unwrap();
            // EXPLAIN ANALYZE runs the DELETE: inside a transaction rolled back. (The JIT
            // section is printed only with costs.)
            let rows = db.query(&format!("EXPLAIN (ANALYZE, COSTS ON) {sql}"), &[&30i32, &1000i64]).await.unwrap();
            db.batch_execute("ROLLBACK").await.unwrap();
            rows.iter().map(|r| r.get::<_, String>(0)).collect::<Vec<_>>().join("\n")
        }
    };
    let unkeyed = plan(false).await;
    assert!(unkeyed.contains("JIT:"), "this server does not JIT at all, so the test shows nothing:\n{unkeyed}");
    let keyed = plan(true).await;
    assert!(!keyed.contains("JIT:"), "{keyed}");
}
