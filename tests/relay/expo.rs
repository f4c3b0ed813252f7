//! The Expo client against its emulator: one case per row of the PROVIDERS.md Expo table.

use crate::helpers::client_job;
use actors::circuit::Health;
use actors::job::{Job, Priority, Provider, SendResult};
use actors::providers::expo::ExpoClient;
use actors::providers::ProviderClient;
use actors::ratelimit::Limits;
use actors::settings::ExpoSettings;
use notify_relay::mock::expo::ExpoEmulator;
use serde_json::json;
use std::time::Duration;

fn client(base_url: String) -> ExpoClient {
    ExpoClient::new(&ExpoSettings {
        base_url,
        access_token: None,
        timeout: Duration::from_secs(2),
        flush_after: Duration::from_millis(5),
        receipt_delay: Duration::from_secs(1),
        receipt_poll: Duration::from_secs(1),
        limits: Limits::default(),
    })
}

fn job(token: &str) -> Job {
    client_job(Provider::Expo, token, json!({"title": "T"}), Priority::Normal)
}

#[derive(Debug, PartialEq)]
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
        (400, Some("VALIDATION_ERROR"), Class::Perm),
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
    // A network error: nothing listens there.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let response = self::client(format!("http://{closed}")).send(&[job("ExponentPushToken[a]")]).await;
    assert_eq!(class(&response.results[0]), Class::Retry);
    assert!(matches!(response.health, Health::Outage(_)));
    expo.stop().await;
}
