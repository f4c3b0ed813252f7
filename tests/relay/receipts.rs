//! Expo receipts: due in Postgres `receipt_delay_ms` after the ticket, fetched, acted upon,
//! forgotten — and never lost: not to a Redis flush, a write Postgres refused, or a poller that
//! died holding them.

use crate::helpers::{
    add_users, eventually, notify_each_user, prepare, prepare_with, spawn_app, spawn_app_with, TestApp, ADMIN_TOKEN,
};
use notify_relay::startup::ProcessRoles;
use notify_relay_engine::store::{DeliveredRow, OutcomeRows, Store};
use serde_json::json;
use std::time::{Duration, SystemTime};
use uuid::Uuid;

/// Deliveries whose receipt is still to be asked for.
async fn receipts_due(app: &TestApp) -> i64 {
    app.count("SELECT count(*) FROM delivery WHERE receipt_due_at IS NOT NULL").await
}

/// Waits until the device is disabled: (when, why).
async fn disabled(app: &TestApp, device: Uuid, limit: Duration) -> (SystemTime, String) {
    eventually(limit, || async {
        let row = app.db.query_one("SELECT disabled_at, disabled_reason FROM device WHERE id = $1", &[&device]).await;
        let row = row.unwrap();
        Some((row.get::<_, Option<SystemTime>>(0)?, row.get::<_, Option<String>>(1)?))
    })
    .await
}

/// Deletes every key of the app's prefix, as `FLUSHALL` or a Redis restored empty would.
async fn wipe_redis(app: &TestApp) {
    let mut conn = app.redis.clone();
    let keys: Vec<String> = redis::cmd("KEYS").arg(format!("{}:*", app.prefix)).query_async(&mut conn).await.unwrap();
    if !keys.is_empty() {
        let _: () = redis::cmd("DEL").arg(&keys).query_async(&mut conn).await.unwrap();
    }
}

/// A relay without the scheduler role (so the test's own calls are the only receipt poller)
/// that has delivered one notification to `user`'s Expo device: (app, its store, the
/// notification, the device).
async fn delivered_without_a_poller(user: &str, token: &str) -> (TestApp, Store, Uuid, Uuid) {
    let mut app = prepare().await;
    app.start_with(ProcessRoles::parse("listener,worker,api").unwrap()).await;
    let device = app.add_device(user, "expo", token).await;
    let id = app.notify(user, json!({"title": "delivered, its receipt due"})).await;
    assert_eq!(app.final_status(id).await.0, "delivered");
    let store = app.app.as_ref().expect("app running").store.clone();
    (app, store, id, device)
}

#[actix_web::test]
async fn a_receipt_saying_device_not_registered_disables_the_device() {
    let app = spawn_app().await;
    let device = app.add_device("uma", "expo", "ExponentPushToken[receiptgone-uma]").await;

    let id = app.notify("uma", json!({"title": "accepted, then refused by APNs"})).await;

    assert_eq!(app.final_status(id).await.0, "delivered", "the ticket was ok");
    let (_, reason) = disabled(&app, device, Duration::from_secs(10)).await;
    assert!(reason.starts_with("receipt: expo: DeviceNotRegistered"), "{reason}");
    let last_error: Option<String> =
        app.one("SELECT last_error FROM delivery WHERE notification_id = $1", &[&id]).await;
    assert!(last_error.unwrap().starts_with("receipt: "));
    eventually(Duration::from_secs(5), || async { (receipts_due(&app).await == 0).then_some(()) }).await;
}

#[actix_web::test]
async fn ok_receipts_are_fetched_in_few_calls_and_forgotten() {
    let app = spawn_app().await;
    add_users(&app, 150).await;
    notify_each_user(&app, 150).await;

    app.all_final(Duration::from_secs(20)).await;
    eventually(Duration::from_secs(10), || async {
        (app.expo.receipt_requests() > 0 && receipts_due(&app).await == 0).then_some(())
    })
    .await;
    assert!(app.expo.receipt_requests() <= 20, "{} calls for 150 receipts", app.expo.receipt_requests());
    assert_eq!(app.disabled_devices().await, 0);
}

#[actix_web::test]
async fn a_receipt_still_due_when_redis_is_flushed_is_applied() {
    let app = spawn_app_with(|s| {
        // Due well after the flush below.
        s.providers.expo.receipt_delay = Duration::from_secs(3);
    })
    .await;
    let device = app.add_device("vic", "expo", "ExponentPushToken[receiptgone-vic]").await;
    let id = app.notify("vic", json!({"title": "ticket before the flush"})).await;
    assert_eq!(app.final_status(id).await.0, "delivered");
    // The outcome's Redis writes are done too: the ack (and anything written with it) empties the stream.
    eventually(Duration::from_secs(5), || async { (app.stream_len().await == 0).then_some(()) }).await;

    wipe_redis(&app).await;

    assert_eq!(app.expo.receipt_requests(), 0, "the receipt was not asked for before the flush");
    let (_, reason) = disabled(&app, device, Duration::from_secs(15)).await;
    assert!(reason.starts_with("receipt: expo: DeviceNotRegistered"), "{reason}");
    assert_eq!(receipts_due(&app).await, 0);
}

#[actix_web::test]
async fn a_receipt_whose_write_postgres_refused_once_is_applied_later() {
    let mut app = prepare().await;
    // The first write of a receipt's error fails (a sequence is not rolled back with it); the
    // following ones go through.
    app.db
        .batch_execute(
            "CREATE SEQUENCE receipt_writes;
             CREATE FUNCTION refuse_first_receipt() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 IF nextval('receipt_writes') = 1 THEN
                     RAISE EXCEPTION 'test: the first receipt write is refused';
                 END IF;
                 RETURN NEW;
             END $$;
             CREATE TRIGGER refuse_first_receipt BEFORE UPDATE ON delivery FOR EACH ROW
                 WHEN (NEW.last_error LIKE 'receipt: %') EXECUTE FUNCTION refuse_first_receipt();",
        )
        .await
        .unwrap();
    app.start().await;
    let device = app.add_device("wes", "expo", "ExponentPushToken[receiptgone-wes]").await;

    let id = app.notify("wes", json!({"title": "its receipt is refused, then stored"})).await;

    assert_eq!(app.final_status(id).await.0, "delivered");
    let (_, reason) = disabled(&app, device, Duration::from_secs(20)).await;
    assert!(reason.starts_with("receipt: expo: DeviceNotRegistered"), "{reason}");
    let writes = app.count("SELECT last_value FROM receipt_writes").await;
    assert!(writes >= 2, "refused once, stored after: {writes} writes");
    let (_, actors) = app.get("/admin/actors", Some(ADMIN_TOKEN)).await;
    let poller = actors["actors"].as_array().unwrap().iter().find(|a| a["kind"] == "receipt_poller").cloned();
    let poller = poller.unwrap_or_else(|| panic!("no receipt poller in {actors}"));
    assert!(poller["last_error"].as_str().unwrap_or_default().contains("refused"), "{poller}");
    assert_eq!(receipts_due(&app).await, 0);
}

#[actix_web::test]
async fn a_receipt_leased_by_a_poller_that_died_is_applied_once_the_lease_ran_out() {
    // No scheduler at first: the only poller is the test's, which dies holding the lease.
    let (app, store, id, device) = delivered_without_a_poller("xia", "ExponentPushToken[receiptgone-xia]").await;
    // The outcome's update is not HOT (it changes the status and receipt_due_at, which indexes
    // name); the lease is (V9: a column no index names), and leaves both indexes alone.
    let hot_updates = "SELECT n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = 'delivery'";
    assert_eq!(app.count(hot_updates).await, 0);
    let leased = eventually(Duration::from_secs(5), || async {
        let leased = store.lease_receipts(1000, Duration::from_secs(2)).await.unwrap();
        (!leased.is_empty()).then_some(leased)
    })
    .await;
    assert_eq!(leased.iter().map(|r| r.target).collect::<Vec<_>>(), vec![(id, device)]);
    let leased_until: SystemTime =
        app.one("SELECT receipt_leased_until FROM delivery WHERE notification_id = $1", &[&id]).await;
    drop(leased); // the poller "crashes": it never asks Expo nor writes anything
                  // Statistics reach the view within a second or so of the lease's commit.
    eventually(Duration::from_secs(10), || async { (app.count(hot_updates).await == 1).then_some(()) }).await;

    // A scheduler comes up (another replica); the lease holds it off, then runs out.
    let replica = app.start_replica().await;
    let (disabled_at, reason) = disabled(&app, device, Duration::from_secs(15)).await;

    assert!(reason.starts_with("receipt: expo: DeviceNotRegistered"), "{reason}");
    assert!(disabled_at >= leased_until, "applied before the lease ran out");
    assert_eq!(receipts_due(&app).await, 0);
    replica.stop(Duration::from_secs(5)).await;
}

#[actix_web::test]
async fn a_new_ticket_is_not_held_off_by_the_lease_taken_on_the_old_one() {
    let (app, store, id, device) = delivered_without_a_poller("zoe", "ExponentPushToken[zoe]").await;
    let old = eventually(Duration::from_secs(5), || async {
        let leased = store.lease_receipts(1000, Duration::from_secs(3600)).await.unwrap();
        (!leased.is_empty()).then_some(leased)
    })
    .await;
    assert_eq!(old.len(), 1);

    // The target is delivered again with a new ticket (a copy sent twice) while the old ticket's
    // lease, an hour, still runs: the new receipt is due at once and must not wait for that hour.
    let again = DeliveredRow {
        target: (id, device),
        attempts: 2,
        provider_message_id: Some("new-ticket".into()),
        receipt_after: Some(Duration::ZERO),
    };
    store.record(&OutcomeRows { delivered: vec![again], ..OutcomeRows::default() }).await.unwrap();
    let lease: Option<SystemTime> =
        app.one("SELECT receipt_leased_until FROM delivery WHERE notification_id = $1", &[&id]).await;
    assert_eq!(lease, None, "the old ticket's lease is gone with it");
    let leased = store.lease_receipts(1000, Duration::from_secs(60)).await.unwrap();
    assert_eq!(leased.len(), 1, "{leased:?}");
    assert_eq!(leased[0].ticket.as_deref(), Some("new-ticket"));

    // An outcome without a receipt (receipts not polled) leaves a running lease alone.
    let plain = DeliveredRow { target: (id, device), attempts: 3, provider_message_id: None, receipt_after: None };
    store.record(&OutcomeRows { delivered: vec![plain], ..OutcomeRows::default() }).await.unwrap();
    let lease: Option<SystemTime> =
        app.one("SELECT receipt_leased_until FROM delivery WHERE notification_id = $1", &[&id]).await;
    assert!(lease.is_some(), "the new ticket's lease is kept");
}

#[actix_web::test]
async fn a_receipt_expo_does_not_have_is_asked_again_until_it_is_a_day_old() {
    let app = spawn_app().await;
    let device = app.add_device("yan", "expo", "ExponentPushToken[yan]").await;
    let ids = app.delivered_rows("yan", 2).await;
    // Tickets the emulator never issued: Expo has no receipt for them (yet, or any more).
    for (id, hours) in [(ids[0], 1), (ids[1], 25)] {
        app.exec(
            "INSERT INTO delivery (notification_id, device_id, provider, status, provider_message_id,
                                       delivered_at, receipt_due_at)
                 VALUES ($1, $2, 'expo', 'delivered', 'unknown-' || $1::uuid::text,
                         now() - $3::int4 * interval '1 hour', now())",
            &[&id, &device, &hours],
        )
        .await;
    }

    let due_in = |id: Uuid| {
        let db = &app.db;
        async move {
            let row = db
                .query_one(
                    "SELECT extract(epoch FROM receipt_due_at - now())::float8 FROM delivery WHERE notification_id = $1",
                    &[&id],
                )
                .await
                .unwrap();
            row.get::<_, Option<f64>>(0)
        }
    };
    eventually(Duration::from_secs(10), || async {
        let (young, old) = (due_in(ids[0]).await, due_in(ids[1]).await);
        (young.is_some_and(|s| s > 30.0) && old.is_none()).then_some(())
    })
    .await;

    assert!(app.expo.receipt_requests() >= 1);
    assert_eq!(app.disabled_devices().await, 0);
    assert_eq!(app.count("SELECT count(*) FROM delivery WHERE last_error IS NOT NULL").await, 0);
}

#[actix_web::test]
async fn admin_queues_count_the_receipts_due_in_postgres_per_shard() {
    let mut app = prepare_with(|s| s.redis.shards = 3).await;
    // API only: no poller that would ask for these receipts.
    app.start_with(ProcessRoles::parse("api").unwrap()).await;
    let device = app.add_device("zed", "expo", "ExponentPushToken[zed]").await;
    let ids = app.delivered_rows("zed", 40).await;
    app.exec(
        "INSERT INTO delivery (notification_id, device_id, provider, status, provider_message_id, delivered_at,
                                   receipt_due_at)
             SELECT id, $2, 'expo', 'delivered', 'ticket-' || id, now(), now() + interval '1 hour'
               FROM unnest($1::uuid[]) AS id",
        &[&ids, &device],
    )
    .await;
    let mut expected = [0u64; 3];
    for id in &ids {
        expected[usize::from(notify_relay_engine::job::shard_of(*id, 3))] += 1;
    }

    let (status, queues) = app.get("/admin/queues", Some(ADMIN_TOKEN)).await;

    assert_eq!(status, 200, "{queues}");
    let per_shard: Vec<u64> =
        queues["shards"].as_array().unwrap().iter().map(|s| s["receipts_pending"].as_u64().unwrap()).collect();
    assert_eq!(per_shard, expected, "{queues}");
    assert_eq!(queues["totals"]["receipts_pending"], 40, "{queues}");
}
