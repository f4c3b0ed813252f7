//! Email: the SMTP client against the SMTP emulator (every row of docs/providers.md's SMTP table),
//! and the emulator behind `mock-providers --smtp-addr`. The relay end to end is
//! `tests/relay/email.rs`.

use emulators::smtp::{SmtpEmulator, SmtpOptions, TlsMode};
use emulators::testing::{client_job, eventually, RelayProcess, TempDir};
use notify_relay_engine::job::{Job, Priority, Provider, SendResult};
use notify_relay_engine::providers::email::{EmailClient, EmailConfig};
use notify_relay_engine::providers::ProviderClient;
use notify_relay_engine::settings::{EmailSettings, Secret};
use notify_relay_engine::Health;
use serde_json::{json, Value};
use std::time::Duration;

const FROM: &str = "Notify <no-reply@example.com>";

fn settings(smtp_url: String, timeout: Duration) -> EmailSettings {
    EmailSettings {
        enabled: true,
        smtp_url: Secret::new(smtp_url),
        from: FROM.into(),
        // The emulator's CA is handed to `EmailConfig::new` directly.
        ca_file: None,
        timeout,
        flush_after: Duration::from_millis(5),
        connections: 2,
        rate_per_sec: 0,
        device_rate_per_sec: 0,
    }
}

fn client_with(smtp_url: String, ca_pem: Option<&str>, timeout: Duration) -> EmailClient {
    let config = EmailConfig::new(&settings(smtp_url, timeout), ca_pem.map(str::as_bytes)).expect("email config");
    EmailClient::new(&config)
}

fn client(emulator: &SmtpEmulator) -> EmailClient {
    client_with(emulator.url(), emulator.ca_pem(), Duration::from_secs(5))
}

fn job(to: &str, payload: Value) -> Job {
    client_job(Provider::Email, to, payload, Priority::Normal)
}

async fn send(client: &EmailClient, to: &str) -> (SendResult, Health) {
    let response = client.send(&[job(to, json!({"title": "t", "body": "b"}))]).await;
    assert_eq!(response.results.len(), 1);
    (response.results[0].clone(), response.health)
}

async fn emulator(options: SmtpOptions) -> SmtpEmulator {
    SmtpEmulator::start("127.0.0.1:0", options).await.expect("smtp emulator")
}

fn credentials() -> SmtpOptions {
    SmtpOptions { credentials: Some(("relay-user".into(), "s3cret/+:".into())), ..SmtpOptions::default() }
}

#[actix_web::test]
async fn a_message_reaches_the_relay_with_from_to_subject_body_and_notification_id() {
    let smtp = emulator(SmtpOptions::default()).await;
    let client = client(&smtp);
    let job = job("alice@example.org", json!({"title": "Shipped", "body": "Your order is on its way"}));

    let response = client.send(std::slice::from_ref(&job)).await;

    assert_eq!(response.health, Health::Up);
    match &response.results[0] {
        SendResult::Delivered { provider_message_id: Some(id) } => {
            assert!(id.starts_with("250 2.0.0 Ok: queued as "), "{id}")
        }
        other => panic!("not delivered: {other:?}"),
    }
    let received = smtp.received();
    assert_eq!(received.len(), 1);
    let m = &received[0];
    assert_eq!(
        (m.from.as_str(), m.to.as_slice()),
        ("no-reply@example.com", ["alice@example.org".to_string()].as_slice())
    );
    assert_eq!(m.header("From").as_deref(), Some("Notify <no-reply@example.com>"));
    assert_eq!(m.header("To").as_deref(), Some("alice@example.org"));
    assert_eq!(m.subject.as_deref(), Some("Shipped"));
    assert_eq!(m.notification_id, Some(job.notification_id.to_string()));
    assert_eq!(m.message_id, Some(format!("<{}.{}@example.com>", job.notification_id, job.device_id)));
    assert!(m.text().contains("\r\n\r\nYour order is on its way"), "{}", m.text());
    assert!(!m.tls && m.user.is_none());
}

#[actix_web::test]
async fn lines_that_start_with_a_dot_arrive_whole_and_a_lone_dot_does_not_end_the_message() {
    let smtp = emulator(SmtpOptions::default()).await;
    let body = "Agenda\r\n.\r\n..two dots\r\n.three\r\nend.";
    let response = client(&smtp).send(&[job("cy@example.org", json!({"title": "T", "body": body}))]).await;

    assert!(matches!(response.results[0], SendResult::Delivered { .. }), "{response:?}");
    let text = smtp.received()[0].text();
    assert!(text.contains(&format!("\r\n\r\n{body}\r\n")), "unstuffed as it was written, to its end: {text:?}");
}

#[actix_web::test]
async fn an_html_payload_is_sent_as_the_alternative_to_the_text() {
    let smtp = emulator(SmtpOptions::default()).await;

    let payload = json!({"title": "T", "subject": "Your receipt", "body": "plain text", "html": "<b>rich</b>"});
    let response = client(&smtp).send(&[job("bo@example.org", payload)]).await;

    assert!(matches!(response.results[0], SendResult::Delivered { .. }), "{response:?}");
    let m = &smtp.received()[0];
    assert_eq!(m.subject.as_deref(), Some("Your receipt"), "subject wins over title");
    let text = m.text();
    assert!(text.contains("multipart/alternative"), "{text}");
    assert!(text.contains("text/plain") && text.contains("plain text"), "{text}");
    assert!(text.contains("text/html") && text.contains("<b>rich</b>"), "{text}");
}

#[actix_web::test]
async fn a_kept_connection_the_relay_closed_while_idle_is_replaced_without_a_failure() {
    let options = SmtpOptions { idle_timeout: Some(Duration::from_millis(200)), ..SmtpOptions::default() };
    let smtp = emulator(options).await;
    let client = client(&smtp);
    let (first, _) = send(&client, "early@example.org").await;
    assert!(matches!(first, SendResult::Delivered { .. }), "{first:?}");
    // The relay times the idle connection out (421 4.4.2, then it hangs up).
    eventually(Duration::from_secs(5), || async { (smtp.closed() == 1).then_some(()) }).await;
    let (second, health) = send(&client, "late@example.org").await;
    assert!(matches!(second, SendResult::Delivered { .. }), "{second:?}");
    assert_eq!(health, Health::Up);
    assert_eq!(smtp.connections(), 2, "the closed connection was replaced by a new one");
    assert_eq!(smtp.received().len(), 2);
}

#[actix_web::test]
async fn pooled_connections_carry_several_transactions() {
    let smtp = emulator(SmtpOptions::default()).await;
    let client = client(&smtp);

    for i in 0..6 {
        let (result, _) = send(&client, &format!("user{i}@example.org")).await;
        assert!(matches!(result, SendResult::Delivered { .. }), "{result:?}");
    }

    assert_eq!(smtp.received().len(), 6);
    assert_eq!(smtp.transactions(), 6);
    // A connection goes back to the idle list as soon as its transaction succeeded.
    assert_eq!(smtp.connections(), 1, "{} connections for 6 messages in a row", smtp.connections());
}

#[actix_web::test]
async fn a_relay_that_offers_pipelining_gets_each_transactions_commands_in_one_group() {
    let smtp = emulator(SmtpOptions::default()).await;
    let client = client(&smtp);

    for i in 0..3 {
        let (result, _) = send(&client, &format!("user{i}@example.org")).await;
        assert!(matches!(result, SendResult::Delivered { .. }), "{result:?}");
    }

    // RCPT TO and DATA came with MAIL FROM, before its reply: two per transaction.
    assert_eq!(smtp.pipelined(), 6);
    let to: Vec<String> = smtp.received().iter().map(|m| m.to.join(",")).collect();
    assert_eq!(to, ["user0@example.org", "user1@example.org", "user2@example.org"]);
    assert!(smtp.received().iter().all(|m| m.from == "no-reply@example.com"));
}

#[actix_web::test]
async fn a_relay_without_pipelining_gets_one_command_at_a_time() {
    // This emulator refuses a command that comes before the previous one's reply (503 5.5.0).
    let smtp = emulator(SmtpOptions { pipelining: false, ..SmtpOptions::default() }).await;
    let client = client(&smtp);

    for i in 0..3 {
        let (result, _) = send(&client, &format!("user{i}@example.org")).await;
        assert!(matches!(result, SendResult::Delivered { .. }), "{result:?}");
    }

    assert_eq!((smtp.pipelined(), smtp.received().len()), (0, 3));
}

#[actix_web::test]
async fn a_pipelined_mail_from_that_is_refused_is_the_answer_not_the_503s_that_follow_it() {
    let smtp = emulator(SmtpOptions::default()).await;
    let client = client(&smtp);
    let (first, _) = send(&client, "first@example.org").await;
    assert!(matches!(first, SendResult::Delivered { .. }), "{first:?}");
    // The kept-open connection's next MAIL FROM is refused; the RCPT TO and DATA pipelined
    // behind it then get "503 Need MAIL command".
    smtp.fail_next(451, Some("4.3.0"), 1);

    let (refused, health) = send(&client, "second@example.org").await;

    assert!(
        matches!(&refused, SendResult::Retry { error, .. } if error.starts_with("email: 451 4.3.0")),
        "{refused:?}"
    );
    assert_eq!(health, Health::Up);
    let (after, _) = send(&client, "third@example.org").await;
    assert!(matches!(after, SendResult::Delivered { .. }), "{after:?}");
    assert_eq!(smtp.connections(), 2, "the connection that saw a refusal was closed, not reused");
    let to: Vec<String> = smtp.received().iter().map(|m| m.to.join(",")).collect();
    assert_eq!(to, ["first@example.org", "third@example.org"]);
}

#[actix_web::test]
async fn a_reply_of_the_wrong_kind_is_a_relay_out_of_step_and_never_a_delivery() {
    let smtp = emulator(SmtpOptions::default()).await;
    let client = client(&smtp);
    let (first, _) = send(&client, "first@example.org").await;
    assert!(matches!(first, SendResult::Delivered { .. }), "{first:?}");

    // RCPT TO answered 354 (DATA's reply): on the kept-open connection, then on a new one.
    let (out_of_step, health) = send(&client, "reply-354@example.org").await;

    let error = out_of_step.error().unwrap_or_default();
    assert!(matches!(out_of_step, SendResult::Retry { .. }), "{out_of_step:?}");
    assert!(error.contains("a 354 reply to RCPT TO, out of step with the commands"), "{error}");
    assert!(matches!(health, Health::Outage(_)), "{health:?}");
    assert_eq!(smtp.connections(), 2, "tried once more on a new connection");
    let (after, _) = send(&client, "after@example.org").await;
    assert!(matches!(after, SendResult::Delivered { .. }), "{after:?}");
    assert_eq!(smtp.received().len(), 2);
}

#[actix_web::test]
async fn a_relay_that_answers_twice_is_out_of_step_whether_or_not_the_commands_are_pipelined() {
    // `twice` gets RCPT TO's 250 twice: every reply after it belongs to the command before.
    // Pipelined, the extra 250 is read as DATA's reply; one command at a time (lettre's send),
    // DATA takes the extra 250, the message then gets DATA's 354 and only the final check can
    // tell: neither may count as a delivery.
    for (pipelining, wrong) in [(true, "a 250 reply to DATA"), (false, "a 354 reply to the message")] {
        let smtp = emulator(SmtpOptions { pipelining, ..SmtpOptions::default() }).await;
        let client = client(&smtp);

        let (result, health) = send(&client, "twice@example.org").await;

        let error = result.error().unwrap_or_default();
        assert!(matches!(result, SendResult::Retry { .. }), "pipelining {pipelining}: {result:?}");
        assert!(error.contains(&format!("{wrong}, out of step with the commands")), "pipelining {pipelining}: {error}");
        assert!(matches!(health, Health::Outage(_)), "pipelining {pipelining}: {health:?}");
        let (after, _) = send(&client, "after@example.org").await;
        assert!(matches!(after, SendResult::Delivered { .. }), "pipelining {pipelining}: {after:?}");
    }
}

#[actix_web::test]
async fn a_batch_is_sent_concurrently_with_one_result_per_job_in_order() {
    let smtp = emulator(SmtpOptions::default()).await;
    let jobs: Vec<Job> = ["a@example.org", "unknown@example.org", "b@example.org", "full@example.org", "c@example.org"]
        .iter()
        .map(|to| job(to, json!({"title": "batch"})))
        .collect();

    let response = client(&smtp).send(&jobs).await;

    let r = &response.results;
    assert_eq!(r.len(), 5);
    assert!(matches!(r[0], SendResult::Delivered { .. }), "{r:?}");
    assert!(matches!(r[1], SendResult::InvalidToken { .. }), "{r:?}");
    assert!(matches!(r[2], SendResult::Delivered { .. }), "{r:?}");
    assert!(matches!(r[3], SendResult::Retry { .. }), "{r:?}");
    assert!(matches!(r[4], SendResult::Delivered { .. }), "{r:?}");
    assert_eq!(response.health, Health::Up);
    let mut delivered: Vec<String> = smtp.received().iter().map(|m| m.to[0].clone()).collect();
    delivered.sort();
    assert_eq!(delivered, ["a@example.org", "b@example.org", "c@example.org"]);
}

#[actix_web::test]
async fn starttls_with_the_emulators_ca_delivers_over_tls() {
    let smtp = emulator(SmtpOptions { tls: TlsMode::StartTls, ..SmtpOptions::default() }).await;
    assert!(smtp.url().ends_with("?tls=starttls"));

    let (result, health) = send(&client(&smtp), "tls@example.org").await;

    assert!(matches!(result, SendResult::Delivered { .. }), "{result:?}");
    assert_eq!(health, Health::Up);
    assert!(smtp.received()[0].tls);
}

#[actix_web::test]
async fn implicit_tls_with_credentials_delivers() {
    let smtp = emulator(SmtpOptions { tls: TlsMode::Implicit, ..credentials() }).await;
    assert!(smtp.url().starts_with("smtps://"));

    let (result, _) = send(&client(&smtp), "smtps@example.org").await;

    assert!(matches!(result, SendResult::Delivered { .. }), "{result:?}");
    let m = &smtp.received()[0];
    assert!(m.tls);
    assert_eq!(m.user.as_deref(), Some("relay-user"));
}

#[actix_web::test]
async fn auth_with_the_right_credentials_delivers_and_wrong_ones_are_an_auth_failure() {
    let smtp = emulator(SmtpOptions { tls: TlsMode::StartTls, ..credentials() }).await;

    let (result, _) = send(&client(&smtp), "ok@example.org").await;
    assert!(matches!(result, SendResult::Delivered { .. }), "{result:?}");
    assert_eq!(smtp.received()[0].user.as_deref(), Some("relay-user"));

    let wrong = format!("smtp://relay-user:wrong-password@{}?tls=starttls", smtp.addr());
    let (result, health) = send(&client_with(wrong, smtp.ca_pem(), Duration::from_secs(5)), "ok@example.org").await;
    assert!(matches!(&result, SendResult::Auth { error } if error.starts_with("email: 535 5.7.8")), "{result:?}");
    assert!(!result.error().unwrap_or_default().contains("wrong-password"), "{result:?}");
    assert!(matches!(health, Health::AuthFailure(_)));

    let none = format!("smtp://{}?tls=starttls", smtp.addr());
    let (result, health) = send(&client_with(none, smtp.ca_pem(), Duration::from_secs(5)), "ok@example.org").await;
    assert!(matches!(&result, SendResult::Auth { error } if error.starts_with("email: 530 5.7.0")), "{result:?}");
    assert!(matches!(health, Health::AuthFailure(_)));
    assert_eq!(smtp.received().len(), 1);
}

#[actix_web::test]
async fn a_relay_certificate_without_its_ca_is_an_auth_failure() {
    let smtp = emulator(SmtpOptions { tls: TlsMode::StartTls, ..SmtpOptions::default() }).await;

    let untrusting = client_with(smtp.url(), None, Duration::from_secs(5));
    let (result, health) = send(&untrusting, "x@example.org").await;

    assert!(matches!(&result, SendResult::Auth { error } if error.contains("certificate")), "{result:?}");
    assert!(matches!(health, Health::AuthFailure(_)));
    assert!(smtp.received().is_empty());
}

#[actix_web::test]
async fn a_relay_without_starttls_is_refused_when_tls_is_required() {
    let smtp = emulator(SmtpOptions::default()).await;

    let client = client_with(format!("smtp://{}?tls=starttls", smtp.addr()), None, Duration::from_secs(5));
    let (result, health) = send(&client, "x@example.org").await;

    assert!(matches!(&result, SendResult::Auth { error } if error.contains("STARTTLS")), "{result:?}");
    assert!(matches!(health, Health::AuthFailure(_)));
    assert!(smtp.received().is_empty(), "nothing goes out in plain text");
}

/// What a reply must become: the class and whether it counts against the relay.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Class {
    Retry,
    RetryOutage,
    Invalid,
    Permanent,
    Auth,
}

fn class_of(result: &SendResult, health: &Health) -> Class {
    match (result, health) {
        (SendResult::Retry { .. }, Health::Up) => Class::Retry,
        (SendResult::Retry { .. }, Health::Outage(_)) => Class::RetryOutage,
        (SendResult::InvalidToken { .. }, Health::Up) => Class::Invalid,
        (SendResult::Permanent { .. }, Health::Up) => Class::Permanent,
        (SendResult::Auth { .. }, Health::AuthFailure(_)) => Class::Auth,
        other => panic!("unexpected combination {other:?}"),
    }
}

#[actix_web::test]
async fn every_reply_of_the_smtp_table_is_classified_as_providers_md_says() {
    let smtp = emulator(SmtpOptions::default()).await;
    let client = client(&smtp);
    let table = [
        // 421, 450, 451, 452, 455 → RETRY (421: the relay is going away)
        ("closing@example.org", "421 4.3.2", Class::RetryOutage),
        ("greylist@example.org", "450 4.2.0", Class::Retry),
        ("busy@example.org", "451 4.3.0", Class::Retry),
        ("full@example.org", "452 4.2.2", Class::Retry),
        ("params@example.org", "455 4.5.0", Class::Retry),
        // 530, 534, 535, 538 → AUTH
        ("authreq@example.org", "530 5.7.0", Class::Auth),
        ("weakauth@example.org", "534 5.7.9", Class::Auth),
        ("badcreds@example.org", "535 5.7.8", Class::Auth),
        ("needtls@example.org", "538 5.7.11", Class::Auth),
        // 550/551/553 with 5.1.x → INVALID
        ("unknown@example.org", "550 5.1.1", Class::Invalid),
        ("moved@example.org", "551 5.1.6", Class::Invalid),
        ("badaddr@example.org", "553 5.1.3", Class::Invalid),
        // other 5xx → PERM
        ("denied@example.org", "550 5.7.1", Class::Permanent),
        ("reply-553-5.7.1@example.org", "553 5.7.1", Class::Permanent),
        ("reply-500-5.5.2@example.org", "500 5.5.2", Class::Permanent),
        ("reply-501-5.5.4@example.org", "501 5.5.4", Class::Permanent),
        ("reply-502-5.5.1@example.org", "502 5.5.1", Class::Permanent),
        ("reply-503-5.5.1@example.org", "503 5.5.1", Class::Permanent),
        ("reply-504-5.5.4@example.org", "504 5.5.4", Class::Permanent),
        ("toolarge@example.org", "552 5.3.4", Class::Permanent),
        ("policy@example.org", "554 5.7.1", Class::Permanent),
    ];

    for (to, reply, expected) in table {
        let (result, health) = send(&client, to).await;
        assert_eq!(class_of(&result, &health), expected, "{to}: {result:?}");
        let error = result.error().unwrap_or_default();
        assert!(error.starts_with(&format!("email: {reply} ")), "{to}: {error}");
    }
    assert!(smtp.received().is_empty(), "{:?}", smtp.received());
    let (result, _) = send(&client, "fine@example.org").await;
    assert!(matches!(result, SendResult::Delivered { .. }), "the client still works after all that: {result:?}");
}

#[actix_web::test]
async fn a_454_is_retried_and_a_second_454_in_a_row_is_an_auth_failure() {
    let smtp = emulator(SmtpOptions::default()).await;
    let client = client(&smtp);

    let first = send(&client, "tempauth@example.org").await;
    let delivered = send(&client, "fine@example.org").await;
    let after_a_delivery = send(&client, "tempauth@example.org").await;
    let repeated = send(&client, "tempauth+again@example.org").await;

    assert_eq!(class_of(&first.0, &first.1), Class::RetryOutage, "{first:?}");
    assert!(matches!(delivered.0, SendResult::Delivered { .. }));
    assert_eq!(class_of(&after_a_delivery.0, &after_a_delivery.1), Class::RetryOutage, "a delivery resets the count");
    assert_eq!(class_of(&repeated.0, &repeated.1), Class::Auth, "{repeated:?}");
    assert!(repeated.0.error().unwrap_or_default().starts_with("email: 454 4.7.0"), "{repeated:?}");
}

#[actix_web::test]
async fn a_421_from_the_whole_relay_is_an_outage_and_the_next_message_goes_through() {
    let smtp = emulator(SmtpOptions::default()).await;
    let client = client(&smtp);
    // The second time with a connection kept open: a 421 there is first taken for an idle
    // timeout, so the client tries a new connection, whose greeting is refused too (two 421s):
    // the same outage.
    for (enhanced, times, expected) in [(None, 1, "email: 421 4.3.2"), (Some("4.7.0"), 2, "email: 421 4.7.0")] {
        smtp.fail_next(421, enhanced, times);

        let (refused, health) = send(&client, "a@example.org").await;

        assert!(matches!(&refused, SendResult::Retry { error, .. } if error.starts_with(expected)), "{refused:?}");
        assert!(matches!(health, Health::Outage(_)));
        let (ok, _) = send(&client, "a@example.org").await;
        assert!(matches!(ok, SendResult::Delivered { .. }), "{ok:?}");
    }
    assert_eq!((smtp.injected(), smtp.received().len()), (3, 2));
}

#[actix_web::test]
async fn a_refused_connection_is_retried_as_an_outage() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = closed.local_addr().expect("addr");
    drop(closed);

    let client = client_with(format!("smtp://user:pw-not-shown@{addr}"), None, Duration::from_secs(5));
    let (result, health) = send(&client, "a@example.org").await;

    assert_eq!(class_of(&result, &health), Class::RetryOutage, "{result:?}");
    let error = result.error().unwrap_or_default();
    assert!(error.contains(&addr.to_string()) && !error.contains("pw-not-shown"), "{error}");
}

#[actix_web::test]
async fn a_relay_that_stops_answering_times_out_and_the_next_message_still_goes_through() {
    let smtp = emulator(SmtpOptions::default()).await;
    let client = client_with(smtp.url(), None, Duration::from_millis(300));
    let (warm, _) = send(&client, "first@example.org").await;
    assert!(matches!(warm, SendResult::Delivered { .. }), "{warm:?}");

    let (result, health) = send(&client, "stall@example.org").await;

    assert_eq!(class_of(&result, &health), Class::RetryOutage, "{result:?}");
    assert!(result.error().unwrap_or_default().ends_with("within 300 ms"), "{result:?}");
    let (after, _) = send(&client, "after@example.org").await;
    assert!(matches!(after, SendResult::Delivered { .. }), "{after:?}");
    let to: Vec<String> = smtp.received().iter().map(|m| m.to[0].clone()).collect();
    assert_eq!(to, ["first@example.org", "after@example.org"]);
}

#[actix_web::test]
async fn jobs_that_get_no_connection_within_the_timeout_are_deferred_and_only_transactions_judge_the_relay() {
    let smtp = emulator(SmtpOptions::default()).await;
    let mut one_connection = settings(smtp.url(), Duration::from_millis(300));
    one_connection.connections = 1;
    let client = EmailClient::new(&EmailConfig::new(&one_connection, None).expect("email config"));
    let jobs =
        [job("stall@example.org", json!({})), job("stall+2@example.org", json!({})), job("w@example.org", json!({}))];

    let response = client.send(&jobs).await;

    // The first holds the only connection for the whole timeout; the second may take it over
    // at that very moment (and stall too) or give up waiting; the third gets no connection in
    // time either way, which is no attempt: it is rescheduled after about the timeout.
    let r = &response.results;
    assert!(matches!(&r[0], SendResult::Retry { error, .. } if error.ends_with("within 300 ms")), "{r:?}");
    assert!(matches!(&r[1], SendResult::Retry { .. } | SendResult::Deferred { .. }), "{r:?}");
    assert!(
        matches!(&r[2], SendResult::Deferred { error, after } if error.contains("no free SMTP connection within 300 ms")
            && *after == Duration::from_millis(300)),
        "{r:?}"
    );
    // Every transaction that reached the relay got no answer: an outage, however many jobs
    // were still waiting for the connection.
    assert!(matches!(response.health, Health::Outage(_)), "{:?}", response.health);
    assert!(smtp.received().is_empty());
}

#[actix_web::test]
async fn an_unparsable_address_is_an_invalid_token_and_nothing_is_sent() {
    let smtp = emulator(SmtpOptions::default()).await;

    let (result, health) = send(&client(&smtp), "not an address").await;

    assert!(matches!(&result, SendResult::InvalidToken { error } if error.contains("not an email address")));
    assert_eq!(health, Health::Up);
    assert_eq!(smtp.connections(), 0);
}

// `mock-providers --smtp-addr`: the emulator behind the command, reached by the client.

#[actix_web::test]
async fn mock_providers_serves_the_smtp_emulator_on_the_smtp_addr() {
    use std::io::BufRead;
    let credentials = TempDir::new("mock-credentials");
    // Killed when dropped: a failing assertion leaves no emulator process behind.
    let mut child = RelayProcess(
        std::process::Command::new(env!("CARGO_BIN_EXE_notify-relay"))
            .args(["mock-providers", "--expo-addr", "127.0.0.1:0", "--smtp-addr", "127.0.0.1:0"])
            .args(["--fcm-addr", "127.0.0.1:0", "--apns-addr", "127.0.0.1:0", "--credentials-dir"])
            .arg(credentials.path())
            .env_remove("NOTIFY_CONFIG")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("start mock-providers"),
    );
    let stdout = child.0.stdout.take().expect("stdout");
    // A blocking read must not stall the test's runtime. The pipe is kept open afterwards: the
    // child prints more, and would die of a broken pipe.
    let (url, _stdout) = tokio::task::spawn_blocking(move || {
        let mut reader = std::io::BufReader::new(stdout);
        let mut line = String::new();
        while reader.read_line(&mut line).unwrap_or(0) > 0 {
            if let Some(rest) = line.strip_prefix("smtp emulator listening on ") {
                return (Some(rest.trim().to_string()), reader);
            }
            line.clear();
        }
        (None, reader)
    })
    .await
    .expect("reader");
    let url = url.expect("the emulator's address is printed");
    let url = url.split_whitespace().next().unwrap_or_default().to_string();

    let client = client_with(url, None, Duration::from_secs(5));
    let (result, _) = send(&client, "someone@example.org").await;
    let (refused, _) = send(&client, "unknown@example.org").await;
    drop(child);

    assert!(matches!(result, SendResult::Delivered { .. }), "{result:?}");
    assert!(matches!(refused, SendResult::InvalidToken { .. }), "{refused:?}");
    // The credentials a relay needs for the FCM and APNs emulators were written where asked.
    for file in ["fcm-service-account.json", "apns-key.p8", "apns-ca.pem"] {
        assert!(credentials.path().join(file).is_file(), "{file} written");
    }
}
