//! Claiming across processes: a live worker keeps its entries however long their outcome takes,
//! and the claim actor looks at every pending entry before it retires one.

use crate::helpers::{eventually, expo_job, prepare, prepare_with, wait_for_passes};
use notify_relay::startup::ProcessRoles;
use serde_json::json;
use std::time::Duration;

#[actix_web::test]
async fn a_worker_whose_outcome_writer_stalls_longer_than_min_idle_keeps_its_entry() {
    // The shipped k8s layout: workers and the scheduler (with the claim actor) in different
    // processes. The worker has sent; storing the outcome hangs (Postgres locks, a slow commit).
    let mut app = prepare_with(|s| s.claim.min_idle = Duration::from_millis(2100)).await;
    let token = "ExponentPushToken[jo]";
    let (id, device) = app.queued_target("jo", token, &json!({}), 0).await;
    let blocker = app.connect_db().await;
    blocker.batch_execute("BEGIN").await.unwrap();
    blocker.execute("SELECT 1 FROM delivery WHERE notification_id = $1 FOR UPDATE", &[&id]).await.unwrap();
    app.start_with(ProcessRoles::parse("worker").unwrap()).await;
    let scheduler = app.start_replica_with(ProcessRoles::parse("scheduler").unwrap()).await;
    app.enqueue(&expo_job(id, device, "jo", token, json!({"title": "once"}))).await;
    eventually(Duration::from_secs(10), || async { (app.expo.sends_of(id, token) == 1).then_some(()) }).await;

    // Twenty claim passes of the scheduler (4 s) while the outcome cannot be stored: the entry
    // is pending for twice claim.min_idle_ms.
    wait_for_passes(&scheduler, "claim", 20).await;
    blocker.batch_execute("COMMIT").await.unwrap();

    assert_eq!(app.final_status(id).await.0, "delivered");
    assert_eq!(app.expo.sends_of(id, token), 1, "the scheduler took over a send that was alive");
    scheduler.stop(Duration::from_secs(5)).await;
}

#[actix_web::test]
async fn entries_over_max_deliveries_far_down_the_pending_list_are_retired_not_sent() {
    // A crash with many entries pending: the over-delivered ones are not among the oldest 100.
    let mut app = prepare().await;
    let mut targets = Vec::new();
    for i in 0..150 {
        let (user, token) = (format!("p{i}"), format!("ExponentPushToken[p{i}]"));
        let (id, device) = app.queued_target(&user, &token, &json!({}), 0).await;
        app.enqueue(&expo_job(id, device, &user, &token, json!({"title": "x"}))).await;
        targets.push((id, token));
    }
    let stream = app.keys.stream(0);
    let mut conn = app.redis.clone();
    app.create_group().await;
    let read: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(notify_relay_engine::GROUP)
        .arg("dead-0")
        .arg("COUNT")
        .arg(150)
        .arg("STREAMS")
        .arg(&stream)
        .arg(">")
        .query_async(&mut conn)
        .await
        .unwrap();
    drop(read);
    let pending = app.pending_ids(150).await;
    assert_eq!(pending.len(), 150);
    for (n, entry) in pending.iter().enumerate() {
        // Long idle, and the newest 30 handed out ten times already (claim.max_deliveries is 5).
        let times = if n >= 120 { 10 } else { 1 };
        let _: redis::Value = redis::cmd("XCLAIM")
            .arg(&stream)
            .arg(notify_relay_engine::GROUP)
            .arg("dead-0")
            .arg(0)
            .arg(entry)
            .arg("IDLE")
            .arg(600_000)
            .arg("RETRYCOUNT")
            .arg(times)
            .arg("JUSTID")
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    app.start().await;

    app.all_final(Duration::from_secs(30)).await;
    for (n, (id, token)) in targets.iter().enumerate() {
        let (status, _, error) = app.status(*id).await;
        if n >= 120 {
            assert_eq!(status, "failed", "target {n}");
            assert!(error.unwrap_or_default().contains("handed out 10 times without an outcome"), "target {n}");
            assert_eq!(app.expo.sends_of(*id, token), 0, "target {n} was sent again");
        } else {
            assert_eq!(status, "delivered", "target {n}");
            assert_eq!(app.expo.sends_of(*id, token), 1, "target {n}");
        }
    }
}

/// A provider client that is never reached in the test below.
struct Unreachable;

impl notify_relay_engine::providers::ProviderClient for Unreachable {
    fn profile(&self) -> notify_relay_engine::providers::ProviderProfile {
        notify_relay_engine::providers::ProviderProfile {
            provider: notify_relay_engine::job::Provider::Expo,
            max_batch: 100,
            flush_after: Duration::from_millis(5),
        }
    }
    fn send(
        &self,
        jobs: &[notify_relay_engine::job::Job],
    ) -> futures_util::future::LocalBoxFuture<'static, notify_relay_engine::providers::Response> {
        let n = jobs.len();
        Box::pin(async move {
            notify_relay_engine::providers::Response::all(
                n,
                notify_relay_engine::job::SendResult::Delivered { provider_message_id: None },
                notify_relay_engine::Health::Up,
            )
        })
    }
}

#[actix_web::test]
async fn a_dispatch_whose_sender_is_gone_gives_back_each_permit_and_target_exactly_once() {
    use actix::{Actor, Arbiter};
    use notify_relay_engine::job::{EntryRef, Provider};
    use notify_relay_engine::parts::{Claim, Dispatcher, Handle, SenderPool};
    use notify_relay_engine::relay::Entry;
    use std::sync::Arc;

    let app = prepare().await;
    let settings = app.settings.clone();
    let log = notify_relay::telemetry::discard();
    let store = notify_relay_engine::store::Store::new(notify_relay::db::pg_pool(&settings, &log).unwrap());
    let relay = notify_relay_engine::relay::Relay::connect(&settings.redis_endpoint().unwrap(), app.keys.clone(), 1000)
        .await
        .unwrap();
    relay.ensure_groups().await.unwrap();
    let inflight = notify_relay_engine::parts::InFlight::new(10);
    let registry = notify_relay_engine::Registry::default();
    let life = |name: &str, kind| notify_relay_engine::parts::Lifecycle::new(registry.register(name, kind, 64), &log);

    let writer_life = life("writer", "outcome_writer");
    let stats = writer_life.stats.clone();
    let retry = settings.retry;
    let writer = notify_relay_engine::parts::OutcomeWriter::new(
        writer_life,
        store.clone(),
        relay.clone(),
        inflight.clone(),
        retry,
        None,
    );
    let writer = Handle { addr: writer.start(), stats };
    // A sender whose arbiter is gone: every Deliver to it fails.
    let arbiter = Arbiter::new();
    let sender_life = life("sender", "sender");
    let stats = sender_life.stats.clone();
    let circuit = notify_relay_engine::parts::Circuit::new(Provider::Expo, settings.circuit, &log, None);
    let guards = notify_relay_engine::parts::SendGuards { circuit, limiter: None };
    let factory: notify_relay_engine::providers::ClientFactory = Arc::new(|| Box::new(Unreachable));
    let outcomes = writer.clone().into();
    let addr = notify_relay_engine::parts::SenderActor::start_in_arbiter(&arbiter.handle(), move |_| {
        notify_relay_engine::parts::SenderActor::new(sender_life, &factory, outcomes, guards)
    });
    arbiter.stop();
    eventually(Duration::from_secs(5), || async { (!addr.connected()).then_some(()) }).await;
    let dispatcher = Dispatcher {
        pools: [(Provider::Expo, SenderPool::new(vec![Handle { addr, stats }]))].into_iter().collect(),
        outcomes: writer,
        relay,
        store,
        inflight: inflight.clone(),
        elsewhere_after: Duration::from_secs(1),
        put_back_after: Duration::from_secs(1),
        log,
    };

    // One target to send, one already delivered (decided without a send, so it reaches the writer).
    let (to_send, device) = app.queued_target("kai", "ExponentPushToken[kai]", &json!({}), 0).await;
    let (done, done_device) = app.queued_target("lu", "ExponentPushToken[lu]", &json!({}), 0).await;
    app.exec("UPDATE delivery SET status = 'delivered' WHERE notification_id = $1", &[&done]).await;
    let entry = |id: &str| EntryRef { shard: 0, id: id.into() };
    let entries = vec![
        Entry::Job(entry("1-0"), expo_job(to_send, device, "kai", "ExponentPushToken[kai]", json!({}))),
        Entry::Job(entry("2-0"), expo_job(done, done_device, "lu", "ExponentPushToken[lu]", json!({}))),
    ];
    // One permit more than the entries need, held by someone else all along.
    assert_eq!(inflight.try_take(3), 3);
    assert!(dispatcher.dispatch(entries).await.is_err(), "the sender is gone");

    // The duplicate's permit comes back from the writer, the unsendable one's from the dispatcher:
    // exactly the one held elsewhere is left.
    eventually(Duration::from_secs(10), || async { (inflight.used() == 1).then_some(()) }).await;
    assert_eq!(
        inflight.claim_target((to_send, device), &entry("3-0")),
        Claim::Claimed,
        "the target is not left marked in flight"
    );
    assert_eq!(inflight.used(), 1);
}
