//! Poison input: any row Postgres accepts reaches a final state on its own, and never delays
//! another row; an answer Postgres cannot store never stops the outcome writer.

use crate::helpers::{eventually, spawn_app, TestApp, ADMIN_TOKEN};
use notify_relay::configuration::Secret;
use serde_json::{json, Value};
use std::time::Duration;

/// Every actor's restart count, by name.
async fn restarts(app: &TestApp) -> Vec<(String, u64)> {
    let (status, body) = app.get("/admin/actors", Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 200, "{body}");
    body["actors"]
        .as_array()
        .expect("actors")
        .iter()
        .map(|a| (a["name"].as_str().unwrap_or_default().to_string(), a["restarts"].as_u64().unwrap_or(u64::MAX)))
        .collect()
}

async fn assert_no_actor_restarted(app: &TestApp) {
    let restarted: Vec<_> = restarts(app).await.into_iter().filter(|(_, n)| *n > 0).collect();
    assert!(restarted.is_empty(), "actors restarted: {restarted:?}");
}

/// Each kind of row that Postgres accepts but nobody can send, with the `last_error` it gets.
fn poison_rows() -> Vec<(&'static str, String, String)> {
    let deep = format!("{}{}", "[".repeat(300), "]".repeat(300));
    vec![
        (
            "number beyond f64",
            r#"{"title": "t", "data": {"amount": 1e400}}"#.into(),
            "payload.data.amount: number out of range".into(),
        ),
        (
            "300-deep nesting",
            format!(r#"{{"title": "t", "data": {{"d": {deep}}}}}"#),
            "payload: nested deeper than 32 levels".into(),
        ),
        (
            "1 MiB payload",
            format!(r#"{{"body": "{}"}}"#, "x".repeat(1024 * 1024)),
            format!("payload: {} bytes, over the limit of 16384 (payload.max_bytes)", 1024 * 1024 + 12),
        ),
        ("array payload", "[1, 2, 3]".into(), "payload must be a JSON object, got an array".into()),
        (
            "control character in collapse_id",
            r#"{"title": "t", "collapse_id": "order\n42"}"#.into(),
            "payload.collapse_id must not contain control characters (it becomes a header)".into(),
        ),
        (
            "control character in subject",
            r#"{"title": "t", "subject": "a\u0007b"}"#.into(),
            "payload.subject must not contain control characters (it becomes a header)".into(),
        ),
        (
            "ttl of the wrong type",
            r#"{"title": "t", "ttl": "1h"}"#.into(),
            "payload.ttl must be a non-negative integer, got a string".into(),
        ),
    ]
}

#[actix_web::test]
async fn poison_rows_among_a_thousand_good_ones_fail_alone_and_every_good_row_is_delivered() {
    let app = spawn_app().await;
    for u in 0..50 {
        app.add_device(&format!("user{u}"), "expo", &format!("ExponentPushToken[user{u}]")).await;
    }
    app.add_device("victim", "expo", "ExponentPushToken[victim]").await;
    let rows = poison_rows();

    // One transaction, so the poison is claimed in the same batches as the good rows: half of
    // the poison is older than every good row, half in the middle.
    let mut tx = String::from("BEGIN;");
    let insert_poison = |tx: &mut String, payload: &str| {
        tx.push_str(&format!(
            "INSERT INTO notification (user_id, type, payload) VALUES ('victim', 'poison', '{}');",
            payload.replace('\'', "''")
        ));
    };
    for (_, payload, _) in &rows {
        insert_poison(&mut tx, payload);
    }
    tx.push_str("INSERT INTO notification (user_id, type, payload) SELECT 'user' || (i % 50), 'good', jsonb_build_object('title', 'n' || i) FROM generate_series(1, 500) i;");
    tx.push_str("INSERT INTO notification (user_id, type, channel) VALUES ('victim', 'poison', 'sms');");
    tx.push_str("INSERT INTO notification (user_id, type, priority) VALUES ('victim', 'poison', 'urgent');");
    for (_, payload, _) in &rows {
        insert_poison(&mut tx, payload);
    }
    tx.push_str("INSERT INTO notification (user_id, type, payload) SELECT 'user' || (i % 50), 'good', jsonb_build_object('title', 'n' || i) FROM generate_series(501, 1000) i;");
    tx.push_str("COMMIT;");
    app.db.batch_execute(&tx).await.expect("insert the rows");

    app.all_final(Duration::from_secs(60)).await;
    let good = app.count("SELECT count(*) FROM notification WHERE type = 'good' AND status = 'delivered'").await;
    assert_eq!(good, 1000);
    assert_eq!(app.expo.sent_count(), 1000, "every good row sent once, no poison row sent");

    let failed = app
        .db
        .query(
            "SELECT last_error, count(*) FROM notification WHERE type = 'poison' AND status = 'failed' GROUP BY 1",
            &[],
        )
        .await
        .unwrap();
    let failed: Vec<(String, i64)> = failed.iter().map(|r| (r.get(0), r.get(1))).collect();
    let mut expected: Vec<(String, i64)> = rows.iter().map(|(_, _, e)| (e.clone(), 2)).collect();
    expected.push(("channel: unknown provider `sms` (expected one of expo, fcm, apns, email)".into(), 1));
    expected.push(("priority: must be 'normal' or 'high', got 'urgent'".into(), 1));
    for e in &expected {
        assert!(failed.contains(e), "expected {e:?} among {failed:?}");
    }
    assert_eq!(failed.len(), expected.len(), "{failed:?}");
    let poison = 2 * rows.len() as i64 + 2;
    assert_eq!(app.failed_rows().await, poison);
    app.wait_for_dead_letters(poison).await;
    assert_no_actor_restarted(&app).await;
}

/// A row nobody can send that was fanned out by an earlier version (before the caps) is failed
/// by the sweep instead of being re-enqueued forever.
#[actix_web::test]
async fn the_sweep_fails_a_stale_target_whose_payload_can_no_longer_be_sent() {
    let mut app = crate::helpers::prepare_with(|s| {
        s.listener.stale_after = Duration::from_secs(3);
        s.listener.sweep_interval = Duration::from_millis(200);
    })
    .await;
    let (id, _) = app.queued_target("old", "ExponentPushToken[old]", &json!({"title": "t", "ttl": "soon"}), 3600).await;
    app.start().await;

    let (status, _, error) = app.final_status(id).await;
    assert_eq!(
        (status.as_str(), error.as_deref()),
        ("failed", Some("payload.ttl must be a non-negative integer, got a string"))
    );
    assert_eq!(app.expo.sent_count(), 0);
    assert_eq!(app.failed_rows().await, 1);
}

#[actix_web::test]
async fn a_nul_byte_in_a_providers_answer_is_stored_without_it_and_the_writer_keeps_going() {
    let app = spawn_app().await;
    app.add_device("nul", "expo", "ExponentPushToken[nulbyte-and-developererror]").await;
    app.add_device("fine", "expo", "ExponentPushToken[fine]").await;

    let bad = app.notify("nul", json!({"title": "t"})).await;
    let good = app.notify("fine", json!({"title": "t"})).await;

    let (status, _, error) = app.final_status(bad).await;
    assert_eq!(status, "failed");
    let error = error.unwrap_or_default();
    assert!(error.contains("DeveloperError") && error.contains('\u{FFFD}') && !error.contains('\0'), "{error:?}");
    assert_eq!(app.final_status(good).await.0, "delivered");
    let after = app.notify("fine", json!({"title": "after"})).await;
    assert_eq!(app.final_status(after).await.0, "delivered");
    assert_no_actor_restarted(&app).await;
}

/// Postgres refuses one outcome (here a trigger stands in for whatever it may refuse): the
/// batch is split until that outcome is alone, it is stored as a plain failure, and the
/// outcomes it was batched with are stored as they were.
#[actix_web::test]
async fn an_outcome_postgres_refuses_is_isolated_and_the_rest_of_its_batch_is_stored() {
    let mut app = crate::helpers::prepare().await;
    app.db
        .batch_execute(
            "CREATE FUNCTION refuse_developer_errors() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 IF NEW.last_error LIKE '%DeveloperError%' THEN
                     RAISE EXCEPTION 'refused by a trigger' USING ERRCODE = '22000';
                 END IF;
                 RETURN NEW;
             END $$;
             CREATE TRIGGER refuse_developer_errors BEFORE UPDATE ON delivery
                 FOR EACH ROW EXECUTE FUNCTION refuse_developer_errors();",
        )
        .await
        .unwrap();
    // Large flush windows, so the refused outcome shares its batches with the good ones.
    app.settings.providers.expo.flush_after = Duration::from_millis(200);
    app.start().await;
    app.add_device("bad", "expo", "ExponentPushToken[developererror-bad]").await;
    for u in 0..20 {
        app.add_device(&format!("u{u}"), "expo", &format!("ExponentPushToken[u{u}]")).await;
    }
    app.db
        .batch_execute(
            "INSERT INTO notification (user_id, type, payload)
             SELECT CASE WHEN i = 10 THEN 'bad' ELSE 'u' || i END, 't', '{\"title\": \"x\"}'
               FROM generate_series(0, 19) i",
        )
        .await
        .unwrap();

    app.all_final(Duration::from_secs(30)).await;
    assert_eq!(app.delivered().await, 19);
    let error: String =
        app.one("SELECT last_error FROM notification WHERE user_id = 'bad' AND status = 'failed'", &[]).await;
    assert!(error.starts_with("the provider's answer could not be stored: "), "{error}");
    // The counters are written to Redis after the outcomes are committed to Postgres.
    eventually(Duration::from_secs(10), || async { (app.redis_counter("OUTCOME_REFUSED").await >= 1).then_some(()) })
        .await;
    assert_no_actor_restarted(&app).await;
}

/// If Postgres refuses even the plainest record of a target, the entry is dead-lettered in
/// Redis and everything else keeps flowing.
#[actix_web::test]
async fn a_target_postgres_refuses_every_outcome_for_is_dead_lettered_and_the_rest_flows() {
    let mut app = crate::helpers::prepare().await;
    let cursed = app.add_device("cursed", "expo", "ExponentPushToken[cursed]").await;
    app.db
        .batch_execute(&format!(
            "CREATE FUNCTION refuse_cursed() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 IF NEW.device_id = '{cursed}' AND NEW.status <> 'queued' THEN
                     RAISE EXCEPTION 'no' USING ERRCODE = '23514';
                 END IF;
                 RETURN NEW;
             END $$;
             CREATE TRIGGER refuse_cursed BEFORE UPDATE ON delivery
                 FOR EACH ROW EXECUTE FUNCTION refuse_cursed();"
        ))
        .await
        .unwrap();
    app.start().await;
    app.add_device("fine", "expo", "ExponentPushToken[fine]").await;

    let cursed_id = app.notify("cursed", json!({"title": "t"})).await;
    let good = app.notify("fine", json!({"title": "t"})).await;
    assert_eq!(app.final_status(good).await.0, "delivered");
    let letter: Value = eventually(Duration::from_secs(20), || async {
        let (_, body) = app.get("/admin/dlq?limit=10", Some(ADMIN_TOKEN)).await;
        body["items"].as_array().and_then(|items| {
            items
                .iter()
                .find(|l| l["reason"] == "poison" && l["job"].to_string().contains(&cursed_id.to_string()))
                .cloned()
        })
    })
    .await;
    assert!(
        letter["error"].as_str().unwrap_or_default().starts_with("Postgres refuses every outcome of this target"),
        "{letter}"
    );
    let later = app.notify("fine", json!({"title": "later"})).await;
    assert_eq!(app.final_status(later).await.0, "delivered");
    assert_no_actor_restarted(&app).await;
}

/// A stream entry that is not a whole job but still names its target (a field missing, a
/// payload nested too deep for the parser) fails that target in Postgres, not just in Redis:
/// its notification reaches `failed` instead of waiting for the sweep forever.
#[actix_web::test]
async fn an_unreadable_stream_entry_that_names_its_target_fails_that_target() {
    let app = spawn_app().await;
    let (id, device) = app.queued_target("ann", "ExponentPushToken[ann]", &json!({}), 0).await;
    let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
    let entry =
        format!(r#"{{"notification_id": "{id}", "device_id": "{device}", "provider": "expo", "payload": {deep}}}"#);
    app.enqueue_entry(&entry).await;

    let (status, _, error) = app.final_status(id).await;
    assert_eq!(status, "failed");
    let error = error.unwrap_or_default();
    assert!(error.starts_with("unreadable stream entry: malformed job: recursion limit exceeded"), "{error}");
    assert_eq!(app.failed_rows().await, 1);
    app.wait_for_dead_letters(1).await;
    assert_eq!(app.expo.sent_count(), 0);
    assert_no_actor_restarted(&app).await;
}

/// A user with more active devices than `devices.max_per_user` (rows written around the API)
/// gets each notification on the newest ones only; a fan-out of many devices times a large
/// payload is written to Redis in parts, and every target arrives.
#[actix_web::test]
async fn fan_out_is_capped_per_user_and_large_fan_outs_are_enqueued_in_parts() {
    let app = spawn_app().await;
    app.exec(
        "INSERT INTO device (user_id, provider, token, created_at)
             SELECT 'many', 'expo', 'ExponentPushToken[many' || g || ']', now() - g * interval '1 minute'
               FROM generate_series(1, 150) g",
        &[],
    )
    .await;
    let body = "b".repeat(3000);
    app.exec(
        "INSERT INTO notification (user_id, type, payload)
             SELECT 'many', 't', jsonb_build_object('title', 'n' || g, 'body', $1::text) FROM generate_series(1, 20) g",
        &[&body],
    )
    .await;

    app.all_final(Duration::from_secs(60)).await;
    assert_eq!(app.delivered().await, 20);
    assert_eq!(app.count("SELECT count(*) FROM delivery").await, 20 * 100);
    assert_eq!(app.expo.sent_count(), 2000);
    // The newest 100: created 1 to 100 minutes ago.
    let oldest_used = app
        .count(
            "SELECT max(substring(d.token from 'many([0-9]+)')::int8) FROM delivery x JOIN device d ON d.id = x.device_id",
        )
        .await;
    assert_eq!(oldest_used, 100);
    assert_no_actor_restarted(&app).await;
}

/// The pull API shows a user's failures whatever their payloads hold: one the relay cannot read
/// (the reason it failed) or one over `payload.max_bytes` comes back as `null`, never a 500.
#[actix_web::test]
async fn failures_with_unreadable_or_oversized_payloads_are_listed_with_a_null_payload() {
    use crate::tokens::{claims, hs256, HS_SECRET};
    let mut app = crate::helpers::prepare().await;
    app.settings.auth.jwt_secret = Some(Secret::new(HS_SECRET));
    app.start().await;
    let rows = poison_rows();
    let mut tx = String::from("BEGIN;");
    for (_, payload, error) in &rows {
        tx.push_str(&format!(
            "WITH n AS (INSERT INTO notification (user_id, type, payload, status, last_error)
                        VALUES ('pat', 't', '{p}', 'failed', '{e}') RETURNING id, payload)
             INSERT INTO notification_failed (notification_id, user_id, error, attempt_count, payload)
             SELECT id, 'pat', '{e}', 0, payload FROM n;",
            p = payload.replace('\'', "''"),
            e = error.replace('\'', "''"),
        ));
    }
    tx.push_str("COMMIT;");
    app.db.batch_execute(&tx).await.expect("insert failures");

    let token = hs256(HS_SECRET.as_bytes(), &claims("pat", 3600));
    let (status, body) = app.get("/users/pat/notifications/failed?limit=100", Some(&token)).await;
    assert_eq!(status, 200, "{body}");
    let items = body["items"].as_array().expect("items");
    assert_eq!(items.len(), rows.len());
    let payload_of = |error: &str| items.iter().find(|i| i["error"] == error).map(|i| i["payload"].clone());
    for (kind, _, error) in &rows {
        let payload = payload_of(error).unwrap_or_else(|| panic!("{kind} missing"));
        let readable = !matches!(*kind, "number beyond f64" | "300-deep nesting" | "1 MiB payload");
        assert_eq!(payload.is_null(), !readable, "{kind}: {payload}");
    }
}

/// While Postgres fails every write (here a trigger raising a serialization failure, which is
/// worth retrying), the outcome writer restarts with backoff — outcomes that keep arriving meanwhile
/// are buffered, not written at once (each used to trigger a flush and a restart of its own) —
/// and once Postgres takes writes again, every outcome is stored.
#[actix_web::test]
async fn the_outcome_writer_waits_out_its_backoff_however_many_outcomes_arrive() {
    let app = spawn_app().await;
    app.db
        .batch_execute(
            "CREATE TABLE chaos (on_ boolean NOT NULL);
             INSERT INTO chaos VALUES (true);
             CREATE FUNCTION chaos() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 IF (SELECT on_ FROM chaos) THEN
                     RAISE EXCEPTION 'try again' USING ERRCODE = '40001';
                 END IF;
                 RETURN NEW;
             END $$;
             CREATE TRIGGER chaos BEFORE UPDATE ON delivery FOR EACH ROW EXECUTE FUNCTION chaos();",
        )
        .await
        .unwrap();
    app.add_device("wes", "expo", "ExponentPushToken[wes]").await;

    // One outcome at a time: each reaches the writer in a message of its own.
    for i in 1..=40 {
        app.notify("wes", json!({"title": format!("n{i}")})).await;
        eventually(Duration::from_secs(10), || async { (app.expo.sent_count() >= i).then_some(()) }).await;
    }
    let writer = restarts(&app).await.into_iter().find(|(name, _)| name == "outcome-writer").map(|(_, n)| n);
    let writer = writer.expect("an outcome_writer actor");
    assert!((1..=12).contains(&writer), "{writer} restarts for 40 outcomes");

    app.db.batch_execute("UPDATE chaos SET on_ = false").await.unwrap();
    app.all_final(Duration::from_secs(60)).await;
    assert_eq!(app.delivered().await, 40);
    assert_eq!(app.expo.sent_count(), 40, "nothing sent twice");
}
