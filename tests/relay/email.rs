//! Email end to end: the relay with the email provider enabled and pointed at the SMTP emulator
//! (the client against the emulator alone, every row of docs/providers.md's SMTP table, is in
//! `tests/providers/email.rs`), and the binary's email configuration errors.

use crate::helpers::{prepare, spawn_app_enabling, TestApp};
use emulators::smtp::{SmtpEmulator, SmtpOptions};
use serde_json::json;
use std::time::Duration;

/// The relay's sender address in these tests.
const FROM: &str = "Notify <no-reply@example.com>";

async fn emulator() -> SmtpEmulator {
    SmtpEmulator::start("127.0.0.1:0", SmtpOptions::default()).await.expect("smtp emulator")
}

async fn app_with_email(smtp: &SmtpEmulator) -> TestApp {
    spawn_app_enabling(|app| app.enable_email(smtp, FROM)).await
}

#[actix_web::test]
async fn a_notification_to_an_email_device_is_delivered_through_the_relay() {
    let smtp = emulator().await;
    let app = app_with_email(&smtp).await;
    let device = app.add_device("mia", "email", "mia@example.org").await;

    let id = app.notify("mia", json!({"title": "Welcome", "body": "Hello Mia"})).await;

    let (status, attempts, error) = app.final_status(id).await;
    assert_eq!((status.as_str(), attempts, error), ("delivered", 1, None));
    let row = app.row("SELECT status, provider_message_id FROM delivery WHERE device_id = $1", &[&device]).await;
    assert_eq!(row.get::<_, String>(0), "delivered");
    assert!(row.get::<_, Option<String>>(1).unwrap_or_default().starts_with("250 "));
    assert_eq!(smtp.sends_of(id, "mia@example.org"), 1);
    let m = &smtp.received()[0];
    assert_eq!(m.subject.as_deref(), Some("Welcome"));
    assert!(m.text().contains("Hello Mia"));
}

#[actix_web::test]
async fn an_unknown_mailbox_disables_the_address_and_the_expo_device_still_gets_it() {
    let smtp = emulator().await;
    let app = app_with_email(&smtp).await;
    let email = app.add_device("noor", "email", "unknown@example.org").await;
    app.add_device("noor", "expo", "ExponentPushToken[noor]").await;

    let id = app.notify("noor", json!({"title": "hi"})).await;

    let error = app.dead_device_error(id, email, "550 5.1.1").await;
    assert!(error.starts_with("email: 550 5.1.1"), "{error}");
    assert_eq!(app.expo.sends_of(id, "ExponentPushToken[noor]"), 1);
    assert!(smtp.received().is_empty());
}

#[actix_web::test]
async fn a_421_outage_window_is_retried_and_ends_delivered() {
    let smtp = emulator().await;
    let app = app_with_email(&smtp).await;
    app.add_device("olga", "email", "olga@example.org").await;
    // Every retry delay is well under the window (20 ms, then up to 100 ms): the circuit opens.
    smtp.fail_for(421, Duration::from_secs(2));

    let id = app.notify("olga", json!({"title": "after the outage"})).await;

    let (status, attempts, error) = app.final_status(id).await;
    assert_eq!(status, "delivered");
    assert!(attempts >= 2, "{attempts} attempts");
    assert!(smtp.injected() >= 1, "the relay refused at least once");
    // The last error is the 421 or, once the circuit opened, the deferral.
    let error = error.unwrap_or_default();
    assert!(error.contains("421 4.3.2") || error.contains("circuit open for email"), "{error}");
    assert_eq!(smtp.sends_of(id, "olga@example.org"), 1);
    assert!(app.redis_counter("DEFERRED").await > 0, "the open circuit deferred it without spending attempts");
}

#[actix_web::test]
async fn healthy_addresses_queued_behind_stalled_mailboxes_are_delivered_at_their_first_attempt() {
    // The review's recipe (finding 7): one connection per sender, one sender, three mailboxes
    // that hold that connection for the whole timeout each time they are tried.
    let smtp = emulator().await;
    let mut app = prepare().await;
    app.enable_email(&smtp, FROM);
    let s = &mut app.settings;
    s.providers.email.connections = 1;
    s.providers.email.timeout = Duration::from_secs(2);
    s.worker.senders_per_provider = 1;
    s.retry.max_attempts = 3;
    s.claim.min_idle = Duration::from_secs(5);
    // The circuit is another matter (review findings 2 and 13): a stalled mailbox alone in
    // a batch looks like a hung relay, and an open circuit defers the stalled targets without
    // spending their attempts for as long as it flaps. Kept closed, this test is about the
    // attempts alone.
    s.circuit.failures = 1000;
    app.start().await;
    // The stalled mailboxes sort first, so they are fanned out (and queue for the connection)
    // ahead of the healthy ones.
    for i in 0..20 {
        let address = match i % 7 {
            0 => format!("stall+{i}@example.org"),
            _ => format!("user{i}@example.org"),
        };
        app.add_device(&format!("u{i:02}"), "email", &address).await;
    }

    app.db
        .execute(
            "INSERT INTO notification (user_id, type, payload)
             SELECT user_id, 'test', '{\"title\": \"hi\"}' FROM device ORDER BY token",
            &[],
        )
        .await
        .expect("one notification per user");

    app.all_final(Duration::from_secs(90)).await;
    let rows = app
        .db
        .query(
            "SELECT v.token, d.status, d.attempt_count, d.last_error, n.status
             FROM delivery d JOIN device v ON v.id = d.device_id JOIN notification n ON n.id = d.notification_id
             ORDER BY v.token",
            &[],
        )
        .await
        .expect("deliveries");
    assert_eq!(rows.len(), 20);
    // Every target that did not end as docs/providers.md says, so that a failure shows all of them.
    let wrong: Vec<String> = rows
        .iter()
        .filter_map(|row| {
            let (token, status, attempts, error): (String, String, i32, Option<String>) =
                (row.get(0), row.get(1), row.get(2), row.get(3));
            let notification: String = row.get(4);
            let error = error.unwrap_or_default();
            let as_documented = match token.starts_with("stall") {
                // No answer within the timeout is retried; after max_attempts it fails.
                true => {
                    (status.as_str(), attempts, notification.as_str()) == ("failed", 3, "failed")
                        && error.starts_with("gave up after 3 attempts: email: no answer from the SMTP relay")
                        && error.ends_with("within 2000 ms")
                }
                // Waiting for the connection is no attempt.
                false => (status.as_str(), attempts, notification.as_str()) == ("delivered", 1, "delivered"),
            };
            (!as_documented).then(|| format!("{token}: {status} after {attempts} attempts ({error})"))
        })
        .collect();
    assert!(wrong.is_empty(), "{} of 20 targets ended wrong:\n{}", wrong.len(), wrong.join("\n"));
    let mut delivered: Vec<String> = smtp.received().iter().map(|m| m.to[0].clone()).collect();
    delivered.sort();
    let healthy: Vec<String> = rows.iter().map(|r| r.get::<_, String>(0)).filter(|t| !t.starts_with("stall")).collect();
    assert_eq!(delivered, healthy, "every healthy address got its message once");
    assert!(app.redis_counter("DEFERRED").await > 0, "the waits were rescheduled without spending attempts");
}

// The binary: configuration errors.

#[test]
fn a_bad_from_or_smtp_url_stops_start_up_naming_the_key_and_hiding_the_password() {
    let run = |key: &str, value: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_notify-relay"))
            .arg("run")
            .env_remove("NOTIFY_CONFIG")
            .env("NOTIFY__PROVIDERS__EMAIL__ENABLED", "true")
            .env(key, value)
            .output()
            .expect("run the binary");
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };

    let (code, stderr) = run("NOTIFY__PROVIDERS__EMAIL__FROM", "Notifications");
    assert_eq!(code, Some(1));
    assert!(stderr.contains("`providers.email.from` must be a mailbox"), "{stderr}");

    let (code, stderr) = run("NOTIFY__PROVIDERS__EMAIL__SMTP_URL", "smtp://user:hunter2@relay:587?tls=sometimes");
    assert_eq!(code, Some(1));
    assert!(stderr.contains("`providers.email.smtp_url` has tls=sometimes"), "{stderr}");
    assert!(!stderr.contains("hunter2"), "{stderr}");
}
