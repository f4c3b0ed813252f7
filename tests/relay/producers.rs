//! What producers write: idempotency keys, scheduled sends, expiry, collapse keys and topics, as
//! the relay carries them out (the HTTP routes are in `producers_api`).

use crate::helpers::{eventually, pg, prepare, spawn_app, spawn_app_with, TestApp};
use emulators::testing::remove_keys;
use std::time::{Duration, SystemTime};
use tokio_postgres::types::ToSql;
use uuid::Uuid;

/// The statement the README gives producers: a retried transaction inserts nothing twice.
const IDEMPOTENT_INSERT: &str = "INSERT INTO notification (user_id, type, payload, idempotency_key)
     VALUES ($1, 'order.shipped', '{\"title\": \"Shipped\"}', $2)
     ON CONFLICT DO NOTHING";

/// The id of the notification row `row` (`(columns) VALUES (…)`) inserts.
async fn inserted(app: &TestApp, row: &str, params: &[&(dyn ToSql + Sync)]) -> Uuid {
    app.one(&format!("INSERT INTO notification {row} RETURNING id"), params).await
}

async fn final_of(app: &TestApp, id: Uuid) -> String {
    eventually(Duration::from_secs(30), || async {
        let status: String = app.one("SELECT status FROM notification WHERE id = $1", &[&id]).await;
        (!["pending", "scheduled", "queued", "retrying"].contains(&status.as_str())).then_some(status)
    })
    .await
}

#[actix_web::test]
async fn two_transactions_racing_with_the_same_idempotency_key_make_one_notification_sent_once() {
    let app = spawn_app().await;
    app.add_device("ida", "expo", "ExponentPushToken[ida]").await;
    let url = app.settings.database.url.expose().to_string();
    let (mut first, mut second) = (pg(&url).await, pg(&url).await);
    let a = first.transaction().await.unwrap();
    assert_eq!(a.execute(IDEMPOTENT_INSERT, &[&"ida", &"order-42"]).await.unwrap(), 1);
    // The second insert waits on the first's uncommitted key, then finds it committed.
    let b = second.transaction().await.unwrap();
    let racing = async { b.execute(IDEMPOTENT_INSERT, &[&"ida", &"order-42"]).await.unwrap() };
    let commit = async {
        // Only once the second one is waiting on the key: otherwise the race is not run.
        app.wait_for_a_lock_wait(Duration::from_secs(10)).await;
        a.commit().await.unwrap();
    };
    let (inserted, ()) = futures_util::join!(racing, commit);
    b.commit().await.unwrap();
    assert_eq!(inserted, 0, "the retried insert is a no-op");

    // Another user's key of the same text is another notification.
    app.add_device("jo", "expo", "ExponentPushToken[jo]").await;
    assert_eq!(app.exec(IDEMPOTENT_INSERT, &[&"jo", &"order-42"]).await, 1);
    let ids: Vec<Uuid> =
        app.column("SELECT id FROM notification WHERE idempotency_key = 'order-42' ORDER BY user_id", &[]).await;
    assert_eq!(ids.len(), 2);
    for id in &ids {
        assert_eq!(final_of(&app, *id).await, "delivered");
    }
    assert_eq!(app.expo.sends_of(ids[0], "ExponentPushToken[ida]"), 1);
    assert_eq!(app.expo.sent_count(), 2);
}

#[actix_web::test]
async fn a_topic_key_is_unique_per_topic_and_does_not_collide_with_a_users_key() {
    let app = prepare().await;
    let topic_insert = "INSERT INTO notification (topic, type, idempotency_key) VALUES ($1, 'news', $2)
                        ON CONFLICT DO NOTHING";
    assert_eq!(app.exec(topic_insert, &[&"sports", &"k1"]).await, 1);
    assert_eq!(app.exec(topic_insert, &[&"sports", &"k1"]).await, 0);
    assert_eq!(app.exec(topic_insert, &[&"news", &"k1"]).await, 1);
    // A user named like the topic, with the same key.
    assert_eq!(app.exec(IDEMPOTENT_INSERT, &[&"sports", &"k1"]).await, 1);
    // Exactly one of user_id and topic.
    for bad in [
        "INSERT INTO notification (type) VALUES ('x')",
        "INSERT INTO notification (user_id, topic, type) VALUES ('u', 't', 'x')",
    ] {
        let err = app.db.execute(bad, &[]).await.unwrap_err();
        let constraint = err.as_db_error().and_then(|e| e.constraint()).map(str::to_string);
        assert_eq!(constraint.as_deref(), Some("notification_one_audience"), "{err:?}");
    }
}

#[actix_web::test]
async fn a_scheduled_notification_waits_for_send_at_and_is_sent_right_after_it() {
    let app = spawn_app().await;
    app.add_device("sam", "expo", "ExponentPushToken[sam]").await;
    let id = inserted(
        &app,
        "(user_id, type, payload, send_at)
             VALUES ('sam', 'reminder', '{\"title\": \"now\"}', now() + interval '2 seconds')",
        &[],
    )
    .await;
    assert_eq!(app.status(id).await.0, "scheduled");
    assert_eq!(final_of(&app, id).await, "delivered");
    let row = app.row("SELECT send_at, queued_at FROM notification WHERE id = $1", &[&id]).await;
    let (send_at, queued_at): (SystemTime, SystemTime) = (row.get(0), row.get(1));
    let sent = app.expo.sent();
    let received = sent[0].received_at;
    let late = received.duration_since(send_at).expect("not sent before send_at");
    println!(
        "scheduled send: fanned out {:?} after send_at, received {late:?} after it",
        queued_at.duration_since(send_at)
    );
    assert!(queued_at >= send_at, "not fanned out before send_at");
    assert_eq!(sent.len(), 1);
}

#[actix_web::test]
async fn a_past_send_at_is_sent_at_once() {
    let app = spawn_app().await;
    app.add_device("pat", "expo", "ExponentPushToken[pat]").await;
    let id = inserted(&app, "(user_id, type, send_at) VALUES ('pat', 'x', now() - interval '1 hour')", &[]).await;
    assert_eq!(final_of(&app, id).await, "delivered");
}

#[actix_web::test]
async fn scheduled_rows_survive_kill_9_of_every_process_and_a_redis_flush() {
    let app = prepare().await;
    crate::helpers::add_users(&app, 20).await;
    let relays = || {
        [
            app.spawn_roles("listener,api", |_| {}),
            app.spawn_roles("worker,api", |_| {}),
            app.spawn_roles("scheduler,api", |_| {}),
        ]
    };
    let first = relays();
    eventually(Duration::from_secs(30), || async { (app.readers_waiting().await >= 1).then_some(()) }).await;
    // Two waves: one due while every process is down, one due after they are back.
    app.exec(
        "INSERT INTO notification (user_id, type, payload, send_at)
         SELECT 'u' || (1 + g % 20), 'wave', jsonb_build_object('title', 'w' || g),
                now() + CASE WHEN g <= 20 THEN interval '2 seconds' ELSE interval '6 seconds' END
           FROM generate_series(1, 40) g",
        &[],
    )
    .await;
    assert_eq!(app.count("SELECT count(*) FROM notification WHERE status = 'scheduled'").await, 40);
    for relay in &first {
        relay.signal("-KILL");
    }
    drop(first);
    let mut conn = app.redis.clone();
    remove_keys(&mut conn, &app.prefix).await.expect("flush the relay's keys");
    // Down past the first wave's send_at. (Judged by the clock alone: on a loaded machine the
    // scheduler may have promoted some of the first wave before it was killed.)
    eventually(Duration::from_secs(10), || async {
        (app.count("SELECT count(*) FROM notification WHERE send_at <= now()").await >= 20).then_some(())
    })
    .await;
    let _second = relays();
    app.all_final(Duration::from_secs(60)).await;

    assert_eq!(app.delivered().await, 40);
    assert_eq!(app.expo.sent_count(), 40, "each once");
    assert_eq!(app.duplicate_sends(), 0);
    let early = app.count("SELECT count(*) FROM notification WHERE queued_at < send_at").await;
    assert_eq!(early, 0, "none fanned out before its send_at");
}

#[actix_web::test]
async fn an_expiry_that_passes_during_a_provider_outage_ends_expired_never_sent() {
    let app = spawn_app_with(|s| s.retry.max_attempts = 50).await;
    app.add_device("eve", "expo", "ExponentPushToken[eve]").await;
    app.expo.fail_for(503, Duration::from_secs(120));
    let id = inserted(
        &app,
        "(user_id, type, payload, expires_at)
             VALUES ('eve', 'flash-sale', '{\"title\": \"ends soon\"}', now() + interval '3 seconds')",
        &[],
    )
    .await;
    assert_eq!(final_of(&app, id).await, "expired");
    assert_eq!(app.expo.sent_count(), 0, "never accepted by the provider");
    assert!(app.expo.requests() >= 1, "it was tried during the outage");
    let (status, error): (String, String) = {
        let r = app.row("SELECT status, last_error FROM delivery WHERE notification_id = $1", &[&id]).await;
        (r.get(0), r.get(1))
    };
    assert_eq!(status, "expired");
    assert!(error.starts_with("expired at ") && error.contains("before it was delivered"), "{error}");
    assert_eq!(app.failed_rows().await, 0, "an expiry is not the user's failure");
    assert_eq!(app.dlq_len().await, 0, "nothing to send again");
    eventually(Duration::from_secs(10), || async {
        (app.redis_counter("EXPIRED").await == 1 && app.redis_counter("NOTIFICATION_EXPIRED").await == 1).then_some(())
    })
    .await;
}

#[actix_web::test]
async fn a_target_answered_after_its_expiry_ends_expired_and_is_no_longer_held_in_flight() {
    // Sent in time, answered (rate limited) after `expires_at`: no retry, the target ends expired,
    // and this process lets go of it (it was kept as in flight for ever, its entry refreshed by
    // the heartbeat, one more for each such target).
    let app = spawn_app().await;
    app.add_device("fox", "expo", "ExponentPushToken[fox-ratelimited]").await;
    app.expo.set_latency(Duration::from_millis(800));
    let id = inserted(
        &app,
        "(user_id, type, payload, expires_at) VALUES ('fox', 't', '{}', now() + interval '300 milliseconds')",
        &[],
    )
    .await;
    assert_eq!(final_of(&app, id).await, "expired");
    let error: String = app.one("SELECT last_error FROM delivery WHERE notification_id = $1", &[&id]).await;
    assert!(error.contains("(last attempt: expo: MessageRateExceeded"), "the send was answered: {error}");
    let engine = &app.app.as_ref().expect("running").engine;
    eventually(Duration::from_secs(5), || async {
        (engine.inflight().entries().is_empty() && engine.in_flight() == 0).then_some(())
    })
    .await;
}

#[actix_web::test]
async fn rows_expired_before_they_are_fanned_out_end_expired_without_a_target() {
    let app = spawn_app().await;
    app.add_device("old", "expo", "ExponentPushToken[old]").await;
    let stale =
        inserted(&app, "(user_id, type, expires_at) VALUES ('old', 'x', now() - interval '1 second')", &[]).await;
    // Due after it expires: never sent either.
    let late = inserted(
        &app,
        "(user_id, type, send_at, expires_at)
             VALUES ('old', 'x', now() + interval '1 second', now() + interval '500 milliseconds')",
        &[],
    )
    .await;
    for id in [stale, late] {
        assert_eq!(final_of(&app, id).await, "expired");
        let error: String = app.one("SELECT last_error FROM notification WHERE id = $1", &[&id]).await;
        assert!(error.starts_with("expired at ") && error.ends_with("before it was sent"), "{error}");
    }
    assert_eq!(app.count("SELECT count(*) FROM delivery").await, 0);
    assert_eq!(app.failed_rows().await, 0);
    assert_eq!(app.expo.sent_count(), 0);
    // What expires later is sent, carrying the time it has left.
    let fresh = inserted(&app, "(user_id, type, expires_at) VALUES ('old', 'x', now() + interval '1 hour')", &[]).await;
    assert_eq!(final_of(&app, fresh).await, "delivered");
}

#[actix_web::test]
async fn a_collapse_key_over_64_bytes_fails_its_row_naming_the_field() {
    let app = spawn_app().await;
    app.add_device("cal", "expo", "ExponentPushToken[cal]").await;
    let long = "k".repeat(65);
    let bad = inserted(&app, "(user_id, type, collapse_key) VALUES ('cal', 'x', $1)", &[&long]).await;
    let good = inserted(&app, "(user_id, type, collapse_key) VALUES ('cal', 'x', 'score')", &[]).await;
    assert_eq!(final_of(&app, bad).await, "failed");
    assert_eq!(app.status(bad).await.2.as_deref(), Some("collapse_key: 65 bytes, over the limit of 64"));
    assert_eq!(final_of(&app, good).await, "delivered");
}

#[actix_web::test]
async fn a_topic_of_10000_subscribers_reaches_each_device_once() {
    let app = spawn_app_with(|s| s.listener.batch_size = 500).await;
    let subscribers = 10_000i64;
    app.exec(
        "WITH u AS (SELECT 'sub' || g AS id FROM generate_series(1, $1::int8) g),
              d AS (INSERT INTO device (user_id, provider, token)
                    SELECT id, 'expo', 'ExponentPushToken[' || id || ']' FROM u)
         INSERT INTO topic_subscription (topic, user_id) SELECT 'match.42', id FROM u",
        &[&subscribers],
    )
    .await;
    // Someone subscribed to another topic, and a subscriber without a device.
    app.exec("INSERT INTO topic_subscription (topic, user_id) VALUES ('other', 'sub1'), ('match.42', 'nodevice')", &[])
        .await;
    let id = inserted(&app, "(topic, type, payload) VALUES ('match.42', 'goal', '{\"title\": \"Goal!\"}')", &[]).await;
    eventually(Duration::from_secs(120), || async {
        let open = app
            .count(
                "SELECT count(*) FROM notification
                  WHERE status IN ('pending', 'queued', 'retrying') OR (topic IS NOT NULL AND status <> 'delivered')",
            )
            .await;
        (open == 0).then_some(())
    })
    .await;
    assert_eq!(app.status(id).await.0, "delivered");
    let children = app.count(&format!("SELECT count(*) FROM notification WHERE parent_id = '{id}'")).await;
    assert_eq!(children, subscribers + 1, "one row per subscriber");
    assert_eq!(
        app.count(&format!("SELECT count(*) FROM notification WHERE parent_id = '{id}' AND status = 'delivered'"))
            .await,
        subscribers
    );
    let failed: String =
        app.one("SELECT last_error FROM notification WHERE parent_id = $1 AND user_id = 'nodevice'", &[&id]).await;
    assert_eq!(failed, "user nodevice has no active device");
    assert_eq!(app.expo.sent_count(), subscribers as usize);
    assert_eq!(app.duplicate_sends(), 0, "once to each device");
}

#[actix_web::test]
async fn topic_rows_without_subscribers_or_with_a_malformed_topic_end_without_a_pull_row() {
    let app = spawn_app().await;
    let empty = inserted(&app, "(topic, type) VALUES ('nobody', 'x')", &[]).await;
    let bad: Uuid = inserted(&app, "(topic, type) VALUES ('no spaces/allowed', 'x')", &[]).await;
    eventually(Duration::from_secs(20), || async {
        (app.count("SELECT count(*) FROM notification WHERE status IN ('pending', 'queued')").await == 0).then_some(())
    })
    .await;
    assert_eq!(app.status(empty).await.0, "delivered", "handed to every subscriber: none");
    let (status, _, error) = app.status(bad).await;
    assert_eq!(status, "failed");
    assert!(error.unwrap_or_default().starts_with("topic: must be 1 to 256 bytes"));
    assert_eq!(app.failed_rows().await, 0, "a topic row has no user to pull it");
}

#[actix_web::test]
async fn the_scheduler_probe_and_the_topic_queries_use_their_indexes() {
    let app = prepare().await;
    app.db.batch_execute("SET enable_seqscan = off").await.unwrap();
    for (sql, index) in [
        (
            "SELECT id FROM notification WHERE status = 'scheduled' AND send_at <= now() ORDER BY send_at LIMIT 1000",
            "notification_scheduled_idx",
        ),
        (
            "SELECT id FROM notification WHERE topic IS NOT NULL AND status = 'queued' ORDER BY created_at LIMIT 1",
            "notification_topic_fanout_idx",
        ),
        (
            "SELECT status, count(*) FROM notification WHERE parent_id = gen_random_uuid() GROUP BY status",
            "notification_parent_idx",
        ),
        (
            "SELECT user_id FROM topic_subscription WHERE topic = 't' AND user_id > '' ORDER BY user_id LIMIT 1000",
            "topic_subscription_pkey",
        ),
        ("SELECT topic FROM topic_subscription WHERE user_id = 'u' ORDER BY topic", "topic_subscription_user_idx"),
    ] {
        let plan: Vec<String> = app.column(&format!("EXPLAIN {sql}"), &[]).await;
        assert!(plan.join("\n").contains(index), "{sql}: {plan:?}");
    }
}

/// Cancels racing the fan-out of rows that fall due: for every row, either the cancel won (200,
/// `cancelled`, never sent) or the fan-out did (409, sent once) — never both, never neither.
#[actix_web::test]
async fn cancels_racing_the_due_send_either_win_whole_or_answer_409() {
    // Due rows are looked for every 10 ms: the fan-out starts right at send_at.
    let app = spawn_app_with(|s| s.listener.schedule_poll = Duration::from_millis(10)).await;
    app.add_device("rae", "expo", "ExponentPushToken[rae]").await;
    let due_in = Duration::from_secs(2);
    let ids: Vec<Uuid> = app
        .db
        .query(
            "INSERT INTO notification (user_id, type, send_at)
             SELECT 'rae', 'race', now() + $1::int8 * interval '1 millisecond' FROM generate_series(1, 200)
             RETURNING id",
            &[&(due_in.as_millis() as i64)],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let send_at: SystemTime = app.one("SELECT min(send_at) FROM notification", &[]).await;
    // Start cancelling just before they are due, so that some cancels meet the fan-out.
    eventually(Duration::from_secs(10), || async {
        let left = send_at.duration_since(SystemTime::now()).unwrap_or_default();
        (left < Duration::from_millis(100)).then_some(())
    })
    .await;
    let client = awc::Client::builder().timeout(Duration::from_secs(20)).finish();
    let cancels = ids.iter().map(|id| {
        let req =
            client.post(format!("{}/notifications/{id}/cancel", app.api())).bearer_auth(crate::helpers::ADMIN_TOKEN);
        async move { req.send().await.map(|r| r.status().as_u16()).unwrap_or(0) }
    });
    let answers = futures_util::future::join_all(cancels).await;
    app.all_final(Duration::from_secs(30)).await;
    let (mut won, mut lost) = (0, 0);
    for (id, answer) in ids.iter().zip(&answers) {
        let status = app.status(*id).await.0;
        let sends = app.expo.sends_of(*id, "ExponentPushToken[rae]");
        match answer {
            200 => {
                won += 1;
                assert_eq!((status.as_str(), sends), ("cancelled", 0), "{id}: the cancel won");
            }
            409 => {
                lost += 1;
                assert_eq!((status.as_str(), sends), ("delivered", 1), "{id}: the fan-out won");
            }
            other => panic!("{id}: cancel answered {other}"),
        }
    }
    println!("cancels racing the due send: {won} won, {lost} answered 409");
}

/// A batch of subscriber rows Postgres refuses (here a producer's own trigger) fails its topic
/// row, saying why, instead of being retried forever; the next topic goes out.
#[actix_web::test]
async fn a_topic_whose_subscriber_rows_postgres_refuses_fails_and_the_next_topic_goes_out() {
    let app = spawn_app().await;
    app.db
        .batch_execute(
            "CREATE FUNCTION refuse_mallory() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 IF NEW.user_id = 'mallory' THEN RAISE EXCEPTION 'mallory gets nothing'; END IF;
                 RETURN NEW;
             END $$;
             CREATE TRIGGER refuse_mallory BEFORE INSERT ON notification
                 FOR EACH ROW EXECUTE FUNCTION refuse_mallory();
             INSERT INTO topic_subscription (topic, user_id) VALUES ('tainted', 'mallory'), ('clean', 'cy');",
        )
        .await
        .unwrap();
    app.add_device("cy", "expo", "ExponentPushToken[cy]").await;
    let tainted: Uuid = inserted(&app, "(topic, type) VALUES ('tainted', 'x')", &[]).await;
    let clean = inserted(&app, "(topic, type) VALUES ('clean', 'x')", &[]).await;
    assert_eq!(final_of(&app, tainted).await, "failed");
    let error = app.status(tainted).await.2.unwrap_or_default();
    assert!(
        error.starts_with("topic fan-out stopped: Postgres refused a batch") && error.contains("mallory gets nothing"),
        "{error}"
    );
    assert_eq!(final_of(&app, clean).await, "delivered");
    eventually(Duration::from_secs(20), || async { (app.expo.sent_count() == 1).then_some(()) }).await;
}

/// A drainer held up does not hold up the next notification: while a topic's subscriber rows
/// wait for a lock on `topic_subscription` (a DBA's migration, say), a user's notification
/// committed meanwhile is claimed by another drainer and delivered; the topic goes out once the
/// lock is released. (Before, a ring during a drain waited for every drainer to finish.)
#[actix_web::test]
async fn a_drainer_held_up_by_a_lock_does_not_hold_up_the_next_notification() {
    let app = spawn_app().await;
    app.exec("INSERT INTO topic_subscription (topic, user_id) VALUES ('held', 'ann')", &[]).await;
    app.add_device("ann", "expo", "ExponentPushToken[ann]").await;
    app.add_device("bob", "expo", "ExponentPushToken[bob]").await;
    let locker = app.connect_db().await;
    locker.batch_execute("BEGIN; LOCK TABLE topic_subscription IN ACCESS EXCLUSIVE MODE").await.unwrap();
    let topic = inserted(&app, "(topic, type) VALUES ('held', 'x')", &[]).await;
    app.wait_for_a_lock_wait(Duration::from_secs(20)).await;

    let direct = app.notify("bob", serde_json::json!({"title": "not held up"})).await;
    assert_eq!(final_of(&app, direct).await, "delivered");
    assert_eq!(app.status(topic).await.0, "queued", "the topic's drainer still waits for the lock");
    assert_eq!(app.expo.sent_count(), 1);

    locker.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(final_of(&app, topic).await, "delivered");
    eventually(Duration::from_secs(20), || async { (app.expo.sent_count() == 2).then_some(()) }).await;
    assert_eq!(app.duplicate_sends(), 0);
}

/// A topic row a stopped process had claimed but not finished (`queued`, its cursor part-way)
/// is continued by the next process's start-up sweep, from its cursor: the subscribers before it
/// get nothing twice.
#[actix_web::test]
async fn a_topic_left_half_written_by_a_stopped_process_is_continued_at_start_from_its_cursor() {
    let mut app = prepare().await;
    app.exec(
        "INSERT INTO topic_subscription (topic, user_id) VALUES ('half', 'a1'), ('half', 'a2'), ('half', 'b1'), ('half', 'b2')",
        &[],
    )
    .await;
    for user in ["a1", "a2", "b1", "b2"] {
        app.add_device(user, "expo", &format!("ExponentPushToken[{user}]")).await;
    }
    // Claimed and written up to a2 by a process that then stopped.
    let topic = inserted(
        &app,
        "(topic, type, payload, status, queued_at, fanout_cursor) VALUES ('half', 'x', '{\"title\": \"t\"}', 'queued', now(), 'a2')",
        &[],
    )
    .await;
    app.start().await;
    assert_eq!(final_of(&app, topic).await, "delivered");
    let children: Vec<String> =
        app.column("SELECT user_id FROM notification WHERE parent_id = $1 ORDER BY user_id", &[&topic]).await;
    assert_eq!(children, ["b1", "b2"], "written from the cursor on");
    eventually(Duration::from_secs(20), || async { (app.expo.sent_count() == 2).then_some(()) }).await;
}
