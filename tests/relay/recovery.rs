//! The basic recovery paths of the walking skeleton: a lost LISTEN connection, an entry left
//! pending by a consumer that died.

use crate::helpers::{add_users, eventually, insert_bulk, prepare_with, spawn_app, ADMIN_TOKEN};
use serde_json::json;
use std::time::Duration;

#[actix_web::test]
async fn the_listener_reconnects_after_its_connection_is_terminated() {
    let app = spawn_app().await;
    app.delivered_first("olga", json!({"title": "before"})).await;

    let killed: i64 = app
        .one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
              WHERE datname = current_database() AND query LIKE 'LISTEN%'",
            &[],
        )
        .await;
    assert_eq!(killed, 1, "one LISTEN connection");
    let after = app.notify("olga", json!({"title": "after"})).await;

    assert_eq!(app.final_status(after).await.0, "delivered");
    let (_, body) = app.get("/admin/actors", Some(ADMIN_TOKEN)).await;
    let listener = body["actors"].as_array().unwrap().iter().find(|a| a["kind"] == "listener").unwrap().clone();
    assert_eq!(listener["restarts"], 1, "{listener}");
    assert!(listener["last_error"].as_str().unwrap().contains("LISTEN connection was lost"), "{listener}");
    eventually(Duration::from_secs(10), || async {
        let (_, body) = app.get("/admin/actors", Some(ADMIN_TOKEN)).await;
        let running = body["actors"].as_array().unwrap().iter().all(|a| a["running"] == true);
        running.then_some(())
    })
    .await;
}

/// Two drainers fan out at once; one fails (as a Postgres outage fails it) while the other waits
/// for its COMMIT's answer. The committed batch still reaches the stream at once: cancelled
/// there, its rows would stay `queued` with no stream entry until the sweep finds them after
/// `listener.stale_after_ms` (5 min), and a 40 s outage under load once left 1,000 such rows.
#[actix_web::test]
async fn a_drainer_that_fails_does_not_strand_the_batch_its_sibling_committed() {
    let mut app = prepare_with(|s| {
        s.listener.drainers = 2;
        s.listener.batch_size = 10;
    })
    .await;
    add_users(&app, 20).await;
    // The first row claimed fails its fan-out 1 s later; the first fan-out to commit takes 3 s
    // to do so (a deferred trigger runs at COMMIT). Sequences are not rolled back with the
    // transaction that failed, so each happens once.
    app.db
        .batch_execute(
            "CREATE SEQUENCE fanout_claims;
             CREATE SEQUENCE fanout_commits;
             CREATE FUNCTION fail_first_claim() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 IF nextval('fanout_claims') = 1 THEN
                     PERFORM pg_sleep(1);
                     RAISE EXCEPTION 'test: the first fan-out fails';
                 END IF;
                 RETURN NEW;
             END $$;
             CREATE TRIGGER fail_first_claim BEFORE UPDATE ON notification FOR EACH ROW
                 WHEN (OLD.status = 'pending' AND NEW.status = 'queued') EXECUTE FUNCTION fail_first_claim();
             CREATE FUNCTION slow_first_commit() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 IF nextval('fanout_commits') = 1 THEN
                     PERFORM pg_sleep(3);
                 END IF;
                 RETURN NULL;
             END $$;
             CREATE CONSTRAINT TRIGGER slow_first_commit AFTER UPDATE ON notification
                 DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
                 WHEN (OLD.status = 'pending' AND NEW.status = 'queued') EXECUTE FUNCTION slow_first_commit();",
        )
        .await
        .unwrap();
    insert_bulk(&app, 20, 20).await;
    app.start().await;

    app.all_final(Duration::from_secs(30)).await;
    assert_eq!(app.delivered().await, 20);
    let (_, body) = app.get("/admin/actors", Some(ADMIN_TOKEN)).await;
    let listener = body["actors"].as_array().unwrap().iter().find(|a| a["kind"] == "listener").unwrap().clone();
    assert!(listener["last_error"].as_str().unwrap_or_default().contains("the first fan-out fails"), "{listener}");
    assert!(app.count("SELECT last_value FROM fanout_commits").await >= 2, "both batches were committed");
}

#[actix_web::test]
async fn an_entry_left_pending_by_a_dead_consumer_is_claimed_and_delivered() {
    let app = spawn_app().await;
    // A notification queued in Postgres, whose entry a consumer read and then died with.
    let (id, _) = app.orphaned_entry("pete", "ExponentPushToken[pete]", json!({"title": "orphaned"})).await;
    assert_eq!(app.pending_entries().await, 1);

    // claim.min_idle_ms is 2.5 s in the tests.
    let (status, attempts, _) = app.final_status(id).await;
    assert_eq!((status.as_str(), attempts), ("delivered", 1));
    assert_eq!(app.expo.sends_of(id, "ExponentPushToken[pete]"), 1);
    eventually(Duration::from_secs(5), || async { (app.pending_entries().await == 0).then_some(()) }).await;
}

#[actix_web::test]
async fn a_target_whose_entry_was_lost_is_re_enqueued_by_the_sweep() {
    let mut app = crate::helpers::prepare_with(|s| {
        s.listener.sweep_interval = std::time::Duration::from_millis(200);
        s.listener.stale_after = std::time::Duration::from_secs(3);
    })
    .await;
    // Queued in Postgres an hour ago, but its stream entry never made it (Redis lost it).
    let (id, _) = app.queued_target("quinn", "ExponentPushToken[quinn]", &json!({"title": "lost"}), 3600).await;

    app.start().await;

    assert_eq!(app.final_status(id).await.0, "delivered");
    assert_eq!(app.expo.sends_of(id, "ExponentPushToken[quinn]"), 1);
    assert_eq!(app.redis_counter("REQUEUED").await, 1);
}

#[actix_web::test]
async fn a_stream_reader_whose_connection_is_killed_is_restarted_and_delivery_goes_on() {
    let app = spawn_app().await;
    app.delivered_first("rita", json!({"title": "before"})).await;

    let mut conn = app.redis.clone();
    let clients: String = redis::cmd("CLIENT").arg("LIST").query_async(&mut conn).await.unwrap();
    let name = format!("name={}:reader-0 ", app.prefix);
    let id = clients
        .lines()
        .find(|l| l.contains(&name))
        .and_then(|l| l.split_whitespace().find_map(|kv| kv.strip_prefix("id=")))
        .expect("the reader's named connection")
        .to_string();
    let _: i64 = redis::cmd("CLIENT").arg("KILL").arg("ID").arg(&id).query_async(&mut conn).await.unwrap();

    let after = app.notify("rita", json!({"title": "after"})).await;

    assert_eq!(app.final_status(after).await.0, "delivered");
    let (_, body) = app.get("/admin/actors", Some(ADMIN_TOKEN)).await;
    let reader = body["actors"].as_array().unwrap().iter().find(|a| a["kind"] == "stream_reader").unwrap().clone();
    assert_eq!(reader["restarts"], 1, "{reader}");
}

#[actix_web::test]
async fn an_entry_handed_out_max_deliveries_times_is_dead_lettered_not_sent() {
    let app = spawn_app().await;
    // Handed out five times: one read by a consumer that died, then four claims by consumers
    // that died too.
    let (id, _) = app.orphaned_entry("sam", "ExponentPushToken[sam]", json!({"title": "poison"})).await;
    let stream = app.keys.stream(0);
    let mut conn = app.redis.clone();
    let entry = app.pending_ids(10).await.remove(0);
    for n in 1..5 {
        let _: redis::Value = redis::cmd("XCLAIM")
            .arg(&stream)
            .arg(notify_relay_engine::GROUP)
            .arg(format!("dead-{n}"))
            .arg(0)
            .arg(&entry)
            .query_async(&mut conn)
            .await
            .unwrap();
    }

    let (status, _, error) = app.final_status(id).await;

    assert_eq!(status, "failed");
    assert!(error.unwrap().contains("handed out 5 times without an outcome"));
    assert_eq!(app.expo.sent_count(), 0, "a poison entry is not sent again");
    app.wait_for_dead_letters(1).await;
    eventually(Duration::from_secs(5), || async { (app.pending_entries().await == 0).then_some(()) }).await;
}

#[actix_web::test]
async fn the_retention_job_deletes_old_final_rows_and_keeps_the_rest() {
    let mut app = crate::helpers::prepare_with(|s| {
        s.retention.final_after_days = 30;
        s.retention.interval = Duration::from_millis(200);
        s.retention.batch = 2;
    })
    .await;
    let device = app.add_device("tess", "expo", "ExponentPushToken[tess]").await;
    let old = "now() - interval '40 days'";
    for status in ["delivered", "delivered", "failed"] {
        let id: uuid::Uuid = app.one(&format!(
                    "INSERT INTO notification (user_id, type, status, created_at) VALUES ('tess', 'old', '{status}', {old})
                     RETURNING id"
                ),
                &[]).await;
        app.exec(
            "INSERT INTO delivery (notification_id, device_id, provider, status) VALUES ($1, $2, 'expo', 'delivered')",
            &[&id, &device],
        )
        .await;
        if status == "failed" {
            app.exec(
                "INSERT INTO notification_failed (notification_id, user_id, error, attempt_count, payload)
                     VALUES ($1, 'tess', 'x', 1, '{}')",
                &[&id],
            )
            .await;
        }
    }
    // Recent final rows stay.
    app.exec("INSERT INTO notification (user_id, type, status) VALUES ('tess', 'new', 'delivered')", &[]).await;
    app.start().await;
    // An old row that is still in flight is never deleted (inserted after start so that the
    // relay does not deliver it: it is 'queued' with no stream entry and a fresh lease).
    app.exec(
        &format!(
            "INSERT INTO notification (user_id, type, status, created_at) VALUES ('tess', 'stuck', 'queued', {old})"
        ),
        &[],
    )
    .await;

    eventually(Duration::from_secs(10), || async {
        (app.count("SELECT count(*) FROM notification WHERE type = 'old'").await == 0).then_some(())
    })
    .await;
    assert_eq!(app.count("SELECT count(*) FROM delivery").await, 0);
    assert_eq!(app.failed_rows().await, 0);
    assert_eq!(app.count("SELECT count(*) FROM notification WHERE type IN ('new', 'stuck')").await, 2);
}
