//! The doorbell (`notification_insert_notify`, migrations/V6__doorbell.sql) rings once per
//! statement that inserts a row the listener can claim now, whatever the number of rows, and
//! never for a statement that inserts none.
//!
//! A test LISTENs on a connection of its own and counts what arrives. "Zero" or "exactly one" is
//! a statement about what arrived before a marker: the marker is notified by a later transaction,
//! and Postgres delivers notifications in commit order, so once it is in, every ring of the
//! statements before it is in too.

use crate::helpers::{prepare, TestApp};
use futures_util::StreamExt;
use std::time::Duration;
use tokio::sync::mpsc::UnboundedReceiver;
use uuid::Uuid;

const CHANNEL: &str = "notification_insert";

/// A LISTEN connection and what it has heard (payloads, in order).
struct Doorbell {
    /// Kept for the LISTEN to last; dropping it closes the connection.
    _client: tokio_postgres::Client,
    heard: UnboundedReceiver<String>,
}

impl Doorbell {
    async fn listen(app: &TestApp) -> Doorbell {
        let (client, mut connection) =
            tokio_postgres::connect(app.settings.database.url.expose(), tokio_postgres::NoTls)
                .await
                .expect("connect the LISTEN connection");
        let (tx, heard) = tokio::sync::mpsc::unbounded_channel();
        actix_rt::spawn(async move {
            let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(Ok(message)) = messages.next().await {
                if let tokio_postgres::AsyncMessage::Notification(n) = message {
                    if n.channel() == CHANNEL && tx.send(n.payload().to_string()).is_err() {
                        return;
                    }
                }
            }
        });
        client.batch_execute(&format!("LISTEN {CHANNEL}")).await.expect("LISTEN");
        Doorbell { _client: client, heard }
    }

    /// How many times the doorbell rang since the last call: sends a marker from a new
    /// transaction of `app.db` and counts the rings heard before it. Every ring carries the
    /// constant (empty) payload.
    async fn rings(&mut self, app: &TestApp) -> usize {
        let marker = format!("marker-{}", Uuid::new_v4());
        app.db.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &marker]).await.expect("send the marker");
        let mut rings = 0;
        loop {
            let payload = tokio::time::timeout(Duration::from_secs(10), self.heard.recv())
                .await
                .expect("the marker arrives within 10 s")
                .expect("the LISTEN connection is open");
            if payload == marker {
                return rings;
            }
            assert_eq!(payload, "", "the doorbell's payload is constant");
            rings += 1;
        }
    }
}

#[actix_web::test]
async fn a_bulk_insert_of_a_thousand_rows_rings_once_and_a_single_insert_rings_once() {
    let app = prepare().await;
    let mut bell = Doorbell::listen(&app).await;
    assert_eq!(bell.rings(&app).await, 0, "nothing inserted yet");

    let inserted = app
        .exec("INSERT INTO notification (user_id, type) SELECT 'u' || g, 't' FROM generate_series(1, 1000) g", &[])
        .await;
    assert_eq!(inserted, 1000);
    assert_eq!(bell.rings(&app).await, 1);

    app.exec("INSERT INTO notification (user_id, type) VALUES ('solo', 't')", &[]).await;
    assert_eq!(bell.rings(&app).await, 1);
}

#[actix_web::test]
async fn a_copy_of_a_thousand_rows_rings_once() {
    use futures_util::SinkExt;
    let app = prepare().await;
    let mut bell = Doorbell::listen(&app).await;

    let rows: String = (1..=1000).map(|i| format!("copied-{i}\tt\n")).collect();
    let sink = app.db.copy_in("COPY notification (user_id, type) FROM STDIN").await.expect("COPY");
    let mut sink = std::pin::pin!(sink);
    sink.send(std::io::Cursor::new(rows.into_bytes())).await.expect("send the rows");
    assert_eq!(sink.as_mut().finish().await.expect("finish the COPY"), 1000);

    assert_eq!(bell.rings(&app).await, 1);
}

#[actix_web::test]
async fn statements_of_only_scheduled_rows_or_only_subscriber_rows_ring_nothing() {
    let app = prepare().await;
    let mut bell = Doorbell::listen(&app).await;

    let scheduled = app
        .exec(
            "INSERT INTO notification (user_id, type, send_at)
             SELECT 'u' || g, 't', now() + interval '1 hour' FROM generate_series(1, 100) g",
            &[],
        )
        .await;
    assert_eq!(scheduled, 100);
    assert_eq!(app.count("SELECT count(*) FROM notification WHERE status = 'scheduled'").await, 100);
    assert_eq!(bell.rings(&app).await, 0, "scheduled rows ring nothing");

    // The rows the listener writes for a topic's subscribers.
    let parent = Uuid::new_v4();
    let children = app
        .exec(
            "INSERT INTO notification (user_id, type, parent_id)
             SELECT 'sub' || g, 't', $1 FROM generate_series(1, 100) g",
            &[&parent],
        )
        .await;
    assert_eq!(children, 100);
    assert_eq!(bell.rings(&app).await, 0, "a topic's subscriber rows ring nothing");

    // Rows inserted in a state the listener does not claim.
    app.exec("INSERT INTO notification (user_id, type, status) VALUES ('done', 't', 'failed')", &[]).await;
    assert_eq!(bell.rings(&app).await, 0, "a failed row rings nothing");
}

#[actix_web::test]
async fn an_insert_that_conflicts_and_inserts_nothing_rings_nothing() {
    let app = prepare().await;
    let insert = "INSERT INTO notification (user_id, type, idempotency_key) VALUES ('kim', 't', 'order-1')
                  ON CONFLICT DO NOTHING";
    assert_eq!(app.exec(insert, &[]).await, 1);
    let mut bell = Doorbell::listen(&app).await;

    assert_eq!(app.exec(insert, &[]).await, 0, "the key is taken");
    assert_eq!(bell.rings(&app).await, 0);
}

#[actix_web::test]
async fn a_statement_mixing_claimable_scheduled_and_subscriber_rows_rings_once() {
    let app = prepare().await;
    let mut bell = Doorbell::listen(&app).await;

    let parent = Uuid::new_v4();
    let inserted = app
        .exec(
            "INSERT INTO notification (user_id, type, send_at, parent_id)
             SELECT 'u' || g, 't',
                    CASE WHEN g % 3 = 1 THEN now() + interval '1 hour' END,
                    CASE WHEN g % 3 = 2 THEN $1::uuid END
               FROM generate_series(1, 300) g",
            &[&parent],
        )
        .await;
    assert_eq!(inserted, 300);
    assert_eq!(
        app.count("SELECT count(*) FROM notification WHERE status = 'pending' AND parent_id IS NULL").await,
        100,
        "a third of the rows is claimable"
    );
    assert_eq!(bell.rings(&app).await, 1);
}

#[actix_web::test]
async fn several_inserting_statements_in_one_transaction_ring_once() {
    let app = prepare().await;
    let mut bell = Doorbell::listen(&app).await;

    app.db
        .batch_execute(
            "BEGIN;
             INSERT INTO notification (user_id, type) VALUES ('a', 't');
             INSERT INTO notification (user_id, type) VALUES ('b', 't');
             INSERT INTO notification (user_id, type) SELECT 'c' || g, 't' FROM generate_series(1, 10) g;
             COMMIT",
        )
        .await
        .expect("the transaction");
    assert_eq!(bell.rings(&app).await, 1, "identical notifications of a transaction are delivered once");
}

/// `retry_failed` (the API's and `admin requeue-failed`'s) wakes the listener once per batch,
/// not once per notification.
#[actix_web::test]
async fn requeuing_fifty_failed_notifications_rings_once() {
    let app = prepare().await;
    let ids: Vec<Uuid> = app
        .column(
            "INSERT INTO notification (user_id, type, status)
             SELECT 'u' || g, 't', 'failed' FROM generate_series(1, 50) g RETURNING id",
            &[],
        )
        .await;
    let mut bell = Doorbell::listen(&app).await;
    let log = notify_relay::telemetry::discard();
    let pool = notify_relay::db::pg_pool(&app.settings, &log).expect("a pool");
    let store = notify_relay_engine::store::Store::new(pool);

    let requeued = store.retry_failed(&ids).await.expect("retry_failed");
    assert_eq!(requeued.len(), 50);
    assert_eq!(bell.rings(&app).await, 1);
}
