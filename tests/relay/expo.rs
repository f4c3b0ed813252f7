//! Expo end to end: the relay in front of the emulator (the client against the emulator alone,
//! one case per row of the docs/providers.md Expo table, is in `tests/providers/expo.rs`).

use crate::helpers::{spawn_app_with, TestApp};
use std::time::Duration;

/// A started app whose Expo sender waits long enough to put one INSERT's rows in one request.
async fn app_batching_expo() -> TestApp {
    let app = spawn_app_with(|s| s.providers.expo.flush_after = Duration::from_millis(300)).await;
    app
}

/// Inserts one notification for each user in one statement; returns (user, notification).
async fn notify_all(app: &TestApp, users: &[&str]) -> Vec<(String, uuid::Uuid)> {
    let users: Vec<String> = users.iter().map(|u| u.to_string()).collect();
    let rows = app
        .db
        .query(
            "INSERT INTO notification (user_id, type, payload)
             SELECT u, 'test', '{\"title\": \"hi\"}' FROM unnest($1::text[]) u RETURNING user_id, id",
            &[&users],
        )
        .await
        .expect("notifications");
    rows.iter().map(|r| (r.get(0), r.get(1))).collect()
}

#[actix_web::test]
async fn two_users_on_two_expo_projects_notified_in_one_insert_are_both_delivered() {
    let app = app_batching_expo().await;
    app.add_device("ana", "expo", "ExponentPushToken[shop:ana]").await;
    app.add_device("ben", "expo", "ExponentPushToken[admin:ben]").await;

    let ids = notify_all(&app, &["ana", "ben"]).await;

    for (user, id) in &ids {
        let (status, attempts, error) = app.final_status(*id).await;
        assert_eq!((status.as_str(), attempts, error), ("delivered", 1, None), "{user}");
    }
    // One request refused for mixing projects, then one per project: they shared a batch.
    assert_eq!(app.expo.requests(), 3);
    assert_eq!(app.duplicate_sends(), 0);
}

#[actix_web::test]
async fn in_one_batch_only_the_message_expo_refuses_fails() {
    let app = app_batching_expo().await;
    let users = ["cleo", "dan", "eve", "fay", "gus", "hal"];
    for user in &users[..5] {
        app.add_device(user, "expo", &format!("ExponentPushToken[{user}]")).await;
    }
    app.add_device("hal", "expo", "ExponentPushToken[hal-validationerror]").await;

    let ids = notify_all(&app, &users).await;

    for (user, id) in &ids {
        let (status, attempts, error) = app.final_status(*id).await;
        match user.as_str() {
            "hal" => {
                assert_eq!((status.as_str(), attempts), ("failed", 1), "{user}");
                let error = error.unwrap_or_default();
                assert!(error.contains("HTTP 400 VALIDATION_ERROR") && error.contains("validationerror"), "{error}");
            }
            _ => assert_eq!((status.as_str(), attempts, error), ("delivered", 1, None), "{user}"),
        }
    }
    assert!(app.expo.requests() > 1, "the refused batch was sent again split");
    assert_eq!(app.expo.sent_count(), 5);
}
