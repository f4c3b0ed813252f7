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
