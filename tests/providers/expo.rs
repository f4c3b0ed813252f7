//! The Expo client against its emulator: one case per row of the docs/providers.md Expo table.

use emulators::expo::ExpoEmulator;
use emulators::testing::client_job;
use notify_relay_engine::job::{Job, Priority, Provider, SendResult};
use notify_relay_engine::providers::expo::ExpoClient;
use notify_relay_engine::providers::ProviderClient;
use notify_relay_engine::settings::ExpoSettings;
use notify_relay_engine::Health;
use serde_json::json;
use std::time::Duration;

fn client(base_url: String) -> ExpoClient {
    ExpoClient::new(&ExpoSettings {
        enabled: true,
        base_url,
        access_token: None,
        timeout: Duration::from_secs(2),
        flush_after: Duration::from_millis(5),
        receipt_delay: Duration::from_secs(1),
        receipt_poll: Duration::from_secs(1),
        rate_per_sec: 0,
        device_rate_per_sec: 0,
    })
}

fn job(token: &str) -> Job {
    client_job(Provider::Expo, token, json!({"title": "T"}), Priority::Normal)
}

#[derive(Debug, Clone, PartialEq)]
enum Class {
    Ok,
    Retry,
    Perm,
    Invalid,
    Auth,
}

fn class(r: &SendResult) -> Class {
    match r {
        SendResult::Delivered { .. } => Class::Ok,
        SendResult::Retry { .. } => Class::Retry,
        SendResult::Permanent { .. } => Class::Perm,
        SendResult::InvalidToken { .. } => Class::Invalid,
        SendResult::Auth { .. } => Class::Auth,
        SendResult::Deferred { .. } => panic!("the client never defers"),
    }
}

#[actix_web::test]
async fn every_ticket_answer_is_classified_as_providers_md_says() {
    let expo = ExpoEmulator::start("127.0.0.1:0", None).await.unwrap();
    let client = client(expo.url());
    let cases = [
        ("ExponentPushToken[ok]", Class::Ok),
        ("ExponentPushToken[unregistered]", Class::Invalid),
        ("not-an-expo-token", Class::Invalid),
        ("ExponentPushToken[developererror]", Class::Perm),
        ("ExponentPushToken[ratelimited]", Class::Retry),
        ("ExponentPushToken[invalidcredentials]", Class::Auth),
        ("ExponentPushToken[mismatchsenderid]", Class::Auth),
        ("ExponentPushToken[expoerror]", Class::Retry),
        ("ExponentPushToken[providererror]", Class::Retry),
    ];
    // One request: each ticket is classified on its own, in order.
    let jobs: Vec<Job> = cases.iter().map(|(token, _)| job(token)).collect();
    let response = client.send(&jobs).await;
    for ((token, expected), result) in cases.iter().zip(&response.results) {
        assert_eq!(&class(result), expected, "{token}: {result:?}");
    }
    assert!(matches!(response.health, Health::AuthFailure(_)), "refused credentials are the project's problem");
    // MessageTooBig: the client refuses it before sending; the emulator would too.
    let mut big = job("ExponentPushToken[big]");
    big.payload = json!({"title": "x".repeat(5000)}).into();
    assert_eq!(class(&client.send(&[big]).await.results[0]), Class::Perm);
    expo.stop().await;
}

#[actix_web::test]
async fn every_request_level_answer_is_classified_as_providers_md_says() {
    let expo = ExpoEmulator::start("127.0.0.1:0", None).await.unwrap();
    let client = client(expo.url());
    let cases = [
        (401, Some("UNAUTHORIZED"), Class::Auth),
        (429, Some("TOO_MANY_REQUESTS"), Class::Retry),
        (500, None, Class::Retry),
        (503, None, Class::Retry),
        (400, Some("PUSH_TOO_MANY_NOTIFICATIONS"), Class::Perm),
        (400, Some("PUSH_TOO_MANY_RECEIPTS"), Class::Perm),
    ];
    for (status, code, expected) in cases {
        expo.fail_next(status, code, 1);
        let response = client.send(&[job("ExponentPushToken[a]"), job("ExponentPushToken[b]")]).await;
        for r in &response.results {
            assert_eq!(class(r), expected, "{status} {code:?}: {r:?}");
        }
        let health_ok = match expected {
            Class::Retry => matches!(response.health, Health::Outage(_)),
            Class::Auth => matches!(response.health, Health::AuthFailure(_)),
            _ => response.health == Health::Up,
        };
        assert!(health_ok, "{status} {code:?}: {:?}", response.health);
    }
    // A VALIDATION_ERROR may be about one message: the batch is sent again split, and when
    // every part is refused too, each message fails on its own (2 messages: 3 requests).
    expo.fail_next(400, Some("VALIDATION_ERROR"), 3);
    let before = expo.requests();
    let response = client.send(&[job("ExponentPushToken[a]"), job("ExponentPushToken[b]")]).await;
    assert!(response.results.iter().all(|r| class(r) == Class::Perm), "{response:?}");
    assert_eq!(response.health, Health::Up);
    assert_eq!(expo.requests() - before, 3);
    // A network error: nothing listens there.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let response = self::client(format!("http://{closed}")).send(&[job("ExponentPushToken[a]")]).await;
    assert_eq!(class(&response.results[0]), Class::Retry);
    assert!(matches!(response.health, Health::Outage(_)));
    expo.stop().await;
}

fn tokens_of(response: &notify_relay_engine::providers::Response) -> Vec<Class> {
    response.results.iter().map(class).collect()
}

#[actix_web::test]
async fn tokens_of_several_expo_projects_in_one_batch_go_out_as_one_request_per_project() {
    let expo = ExpoEmulator::start("127.0.0.1:0", None).await.unwrap();
    let client = client(expo.url());
    let tokens = [
        "ExponentPushToken[shop:1]",
        "ExponentPushToken[admin:2]",
        "ExponentPushToken[shop:3]",
        "ExponentPushToken[4]",
    ];
    let jobs: Vec<Job> = tokens.iter().map(|t| job(t)).collect();

    let response = client.send(&jobs).await;

    // Expo refused the mixed request naming each project's tokens; the client sent one request
    // per project (@emulator/shop, @emulator/admin, @emulator/app), results in input order.
    assert_eq!(tokens_of(&response), [Class::Ok, Class::Ok, Class::Ok, Class::Ok], "{response:?}");
    assert_eq!(response.health, Health::Up);
    assert_eq!(expo.requests(), 4);
    let mut to: Vec<String> = expo.sent().iter().map(|m| m.to.clone()).collect();
    to.sort();
    let mut expected: Vec<String> = tokens.iter().map(|t| t.to_string()).collect();
    expected.sort();
    assert_eq!(to, expected, "each message once");
    expo.stop().await;
}

#[actix_web::test]
async fn a_message_expo_refuses_fails_alone_and_its_batch_mates_are_delivered() {
    let expo = ExpoEmulator::start("127.0.0.1:0", None).await.unwrap();
    let client = client(expo.url());
    // Nine fine messages and one whose `ttl` Expo does not accept (the relay's fan-out refuses
    // it; a job built here does not go through fan-out), in a batch mixing it with devices that
    // fail on their own tickets.
    let mut jobs: Vec<Job> = (0..10).map(|i| job(&format!("ExponentPushToken[m{i}]"))).collect();
    jobs[6].payload = json!({"title": "T", "ttl": "soon"}).into();
    jobs[2] = job("ExponentPushToken[unregistered-2]");

    let response = client.send(&jobs).await;

    let mut expected = vec![Class::Ok; 10];
    expected[2] = Class::Invalid;
    expected[6] = Class::Perm;
    assert_eq!(tokens_of(&response), expected, "{response:?}");
    let error = response.results[6].error().unwrap_or_default();
    assert!(error.starts_with("expo: HTTP 400 VALIDATION_ERROR: \"[0].ttl\" must be a number"), "{error}");
    assert_eq!(response.health, Health::Up);
    // Bisection: at most 2n - 1 requests, here far fewer.
    assert!(expo.requests() <= 9, "{} requests", expo.requests());
    assert_eq!(expo.sent_count(), 8);
    expo.stop().await;
}

#[actix_web::test]
async fn a_batch_that_keeps_getting_refused_ends_within_the_timeout() {
    let expo = ExpoEmulator::start("127.0.0.1:0", None).await.unwrap();
    let client = client(expo.url());
    // Every request answers a VALIDATION_ERROR after 450 ms. Splitting 16 messages down to one
    // each takes 5 rounds of requests (16, 8, 4, 2, 1): the fifth cannot end before 2.25 s, past
    // the 2 s timeout, so it is cut off at the timeout instead of holding the batch longer.
    expo.set_latency(Duration::from_millis(450));
    expo.fail_for(400, Duration::from_secs(30));
    let jobs: Vec<Job> = (0..16).map(|i| job(&format!("ExponentPushToken[t{i}]"))).collect();
    let started = std::time::Instant::now();

    let response = client.send(&jobs).await;

    let took = started.elapsed();
    assert!(took < Duration::from_millis(2600), "the batch took {took:?} for a 2 s timeout");
    assert_eq!(response.results.len(), 16);
    // The messages not isolated in time are retried (Expo did not answer them in time).
    assert!(response.results.iter().all(|r| matches!(class(r), Class::Retry)), "{response:?}");
    assert!(matches!(response.health, Health::Outage(_)), "{:?}", response.health);
    expo.stop().await;
}

/// A job for `token` that expires `left_ms` from now (the system's clock: the Expo client has no
/// clock of its own), with `collapse_key`.
fn expiring(token: &str, left_ms: u64, collapse_key: Option<&str>) -> Job {
    let mut j = job(token);
    j.expires_ms = Some(notify_relay_engine::job::now_ms() + left_ms);
    j.collapse_key = collapse_key.map(str::to_string);
    j
}

#[actix_web::test]
async fn expo_an_expiring_notification_carries_its_whole_seconds_left_and_its_expiry_not_its_collapse_key() {
    let expo = ExpoEmulator::start("127.0.0.1:0", None).await.unwrap();
    let client = client(expo.url());
    // 3600.9 s left: ttl 3600, rounded down (the send takes far less than the 0.9 s to spare).
    let lasting = expiring("ExponentPushToken[lasting]", 3_600_900, Some("score"));
    let expires_secs = lasting.expires_ms.unwrap() / 1000;
    // Under a second left: ttl 0, which Expo documents as "deliver now" (no redelivery).
    let last = expiring("ExponentPushToken[last]", 300, None);
    let last_secs = last.expires_ms.unwrap() / 1000;
    let plain = job("ExponentPushToken[plain]");

    let response = client.send(&[lasting, last, plain]).await;

    assert!(response.results.iter().all(|r| class(r) == Class::Ok), "{response:?}");
    let sent = expo.sent();
    let of = |to: &str| sent.iter().find(|m| m.to == to).cloned().expect("sent");
    let m = of("ExponentPushToken[lasting]");
    // Expo has no collapse field: the key stays behind.
    assert_eq!((m.ttl, m.expiration, m.collapse_id.as_deref()), (Some(3600), Some(expires_secs), None));
    let m = of("ExponentPushToken[last]");
    assert_eq!((m.ttl, m.expiration, m.collapse_id), (Some(0), Some(last_secs), None));
    // Neither an expiry nor a key: nothing of either is sent (Expo's defaults apply).
    let m = of("ExponentPushToken[plain]");
    assert_eq!((m.ttl, m.expiration, m.collapse_id), (None, None, None));
    expo.stop().await;
}

#[actix_web::test]
async fn expo_a_payload_ttl_is_kept_when_shorter_than_what_is_left_and_a_non_numeric_one_is_refused() {
    let expo = ExpoEmulator::start("127.0.0.1:0", None).await.unwrap();
    let client = client(expo.url());
    let mut short = expiring("ExponentPushToken[short]", 3_600_900, None);
    short.payload = json!({"title": "T", "ttl": 60}).into();
    let mut long = expiring("ExponentPushToken[long]", 120_500, None);
    long.payload = json!({"title": "T", "ttl": 86_400}).into();
    // Without an expiry the payload's ttl goes as it is, and Expo refuses one that is not a
    // number with its validation error (the request as a whole; the client isolates it).
    let mut bad = job("ExponentPushToken[bad]");
    bad.payload = json!({"title": "T", "ttl": "soon"}).into();

    let response = client.send(&[short, long, bad]).await;

    assert_eq!(tokens_of(&response), [Class::Ok, Class::Ok, Class::Perm], "{response:?}");
    let error = response.results[2].error().unwrap_or_default();
    assert!(error.starts_with("expo: HTTP 400 VALIDATION_ERROR: \"[0].ttl\" must be a number"), "{error}");
    let sent = expo.sent();
    let ttl_of = |to: &str| sent.iter().find(|m| m.to == to).and_then(|m| m.ttl);
    assert_eq!(ttl_of("ExponentPushToken[short]"), Some(60));
    assert_eq!(ttl_of("ExponentPushToken[long]"), Some(120));
    expo.stop().await;
}
