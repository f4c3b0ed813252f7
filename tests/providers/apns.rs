//! APNs: the client against the emulator (every row of docs/providers.md's APNs table, the provider
//! token's 20/50/60-minute rules on a clock the test moves, HTTP/2 and connection reuse). The
//! relay end to end is `tests/relay/apns.rs`.

use emulators::apns::{device_token as device, ApnsEmulator, Rules};
use emulators::testing::client_job;
use emulators::FailPlan;
use notify_relay_engine::clock::{Clock, ManualClock, SystemClock};
use notify_relay_engine::job::{Job, Priority, Provider, SendResult};
use notify_relay_engine::providers::apns::{
    tls_config, ApnsClient, ProviderToken, CONNECTIONS, MIN_RESIGN_INTERVAL, REFRESH_AFTER,
};
use notify_relay_engine::providers::ProviderClient;
use notify_relay_engine::settings::{ApnsSettings, Secret};
use notify_relay_engine::Health;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

fn settings(emulator: &ApnsEmulator) -> ApnsSettings {
    ApnsSettings {
        enabled: true,
        base_url: emulator.url(),
        key_file: None,
        key: Some(Secret::new(emulator.key_pem())),
        key_id: emulator.key_id().to_string(),
        team_id: emulator.team_id().to_string(),
        topic: emulator.topic().to_string(),
        // The emulator's CA is handed to `tls_config` directly (see `client_with`).
        ca_file: None,
        timeout: Duration::from_secs(2),
        flush_after: Duration::from_millis(5),
        rate_per_sec: 0,
        device_rate_per_sec: 0,
    }
}

/// A client for `settings` trusting the emulator's CA (`ca_pem`), whose provider token uses
/// these timings on `clock`.
fn client_with(
    settings: &ApnsSettings,
    ca_pem: &str,
    refresh_after: Duration,
    min_interval: Duration,
    clock: Arc<dyn Clock>,
) -> ApnsClient {
    let key = settings.key_pem().expect("key");
    let (key_id, team) = (&settings.key_id, &settings.team_id);
    let token = ProviderToken::new(&key, key_id, team, refresh_after, min_interval, clock).expect("provider token");
    let tls = tls_config(Some(ca_pem.as_bytes())).expect("tls");
    ApnsClient::new(settings, tls, Arc::new(token))
}

/// A client with Apple's timings (re-sign after 50 min, never within 20 min) on the system clock.
fn client(emulator: &ApnsEmulator) -> ApnsClient {
    client_with(&settings(emulator), emulator.ca_pem(), REFRESH_AFTER, MIN_RESIGN_INTERVAL, Arc::new(SystemClock))
}

async fn emulator(rules: Rules) -> ApnsEmulator {
    ApnsEmulator::start("127.0.0.1:0", rules).await.expect("apns emulator")
}

/// An emulator that judges provider tokens on `clock`, the clock the test's client reads too.
async fn emulator_on(clock: &ManualClock, rules: Rules) -> ApnsEmulator {
    emulator(rules).await.with_clock(clock.shared())
}

/// A first message delivered (the client has signed its first token), then, `later`, a second
/// one: what the second one came to.
async fn first_delivered_then(clock: &ManualClock, client: &ApnsClient, later: Duration) -> (SendResult, Health) {
    assert!(matches!(send_one(client, alert(&device(1))).await.0, SendResult::Delivered { .. }));
    clock.advance(later);
    send_one(client, alert(&device(2))).await
}

/// An emulator that takes a provider token for `secs` seconds after it was issued.
fn tokens_last(secs: u64) -> Rules {
    Rules { token_max_age: Duration::from_secs(secs), ..Rules::default() }
}

/// An emulator and a client on one manual clock: the client re-signs its token after
/// `refresh_after`, and not twice within `min_interval`.
async fn on_a_clock(
    rules: Rules,
    refresh_after: Duration,
    min_interval: Duration,
) -> (ManualClock, ApnsEmulator, ApnsClient) {
    let clock = ManualClock::new();
    let emulator = emulator_on(&clock, rules).await;
    let client = client_with(&settings(&emulator), emulator.ca_pem(), refresh_after, min_interval, clock.shared());
    (clock, emulator, client)
}

fn job(token: &str, payload: Value, priority: Priority) -> Job {
    client_job(Provider::Apns, token, payload, priority)
}

fn alert(token: &str) -> Job {
    job(token, json!({"title": "T", "body": "B"}), Priority::High)
}

/// Sends one job and returns its result and the request's health.
async fn send_one(client: &ApnsClient, job: Job) -> (SendResult, Health) {
    let response = client.send(&[job]).await;
    assert_eq!(response.results.len(), 1);
    (response.results[0].clone(), response.health)
}

/// An HTTP/2 client that trusts the emulator, for requests the relay's client would never make.
fn raw_client(emulator: &ApnsEmulator, alpn: &[u8]) -> awc::Client {
    let mut tls = (*tls_config(Some(emulator.ca_pem().as_bytes())).expect("tls")).clone();
    tls.alpn_protocols = vec![alpn.to_vec()];
    awc::Client::builder().connector(awc::Connector::new().rustls_0_23(Arc::new(tls))).finish()
}

/// (status, reason) of a response.
async fn answer_of<S>(mut resp: awc::ClientResponse<S>) -> (u16, String)
where
    S: futures_util::Stream<Item = Result<actix_web::web::Bytes, awc::error::PayloadError>> + Unpin,
{
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    (status, body["reason"].as_str().unwrap_or_default().to_string())
}

#[actix_web::test]
async fn apns_delivers_over_http2_with_apples_headers_and_body() {
    let emulator = emulator(Rules::default()).await;
    let client = client(&emulator);
    let mut message = job(
        &device(1),
        json!({"title": "Score", "body": "2-1", "subtitle": "90'", "sound": "goal.caf", "badge": 2,
               "ttl": 3600, "collapse_id": "match-7", "data": {"match": 7}}),
        Priority::High,
    );
    message.notification_id = Uuid::from_u128(42);

    let (result, health) = send_one(&client, message).await;

    assert_eq!(health, Health::Up);
    let sent = emulator.sent();
    assert_eq!(sent.len(), 1, "the emulator only answers 200 to HTTP/2 requests");
    let s = &sent[0];
    assert_eq!(result, SendResult::Delivered { provider_message_id: Some(s.apns_id.clone()) });
    assert!(Uuid::parse_str(&s.apns_id).is_ok(), "{}", s.apns_id);
    assert_eq!(s.token, device(1));
    assert_eq!(s.topic, "com.example.app");
    assert_eq!((s.push_type.as_deref(), s.priority.as_deref()), (Some("alert"), Some("10")));
    assert_eq!(s.collapse_id.as_deref(), Some("match-7"));
    let expiration: u64 = s.expiration.as_deref().expect("apns-expiration").parse().expect("numeric");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    assert!(expiration > now + 3500 && expiration <= now + 3600, "{expiration} vs {now}");
    assert_eq!(
        s.body,
        json!({"aps": {"alert": {"title": "Score", "body": "2-1", "subtitle": "90'"}, "sound": "goal.caf", "badge": 2},
               "match": 7, "notification_id": Uuid::from_u128(42).to_string()})
    );
    emulator.stop().await;
}

#[actix_web::test]
async fn apns_a_payload_without_title_or_body_goes_as_a_background_push_at_priority_5() {
    let emulator = emulator(Rules::default()).await;
    let client = client(&emulator);

    let (result, _) = send_one(&client, job(&device(2), json!({"data": {"sync": "inbox"}}), Priority::High)).await;

    assert!(matches!(result, SendResult::Delivered { .. }), "{result:?}");
    let s = &emulator.sent()[0];
    assert_eq!((s.push_type.as_deref(), s.priority.as_deref()), (Some("background"), Some("5")));
    assert_eq!(s.body["aps"], json!({"content-available": 1}));
    assert_eq!(s.body["sync"], json!("inbox"));
    assert_eq!(s.expiration, None);
    let normal = job(&device(3), json!({"title": "T"}), Priority::Normal);
    send_one(&client, normal).await;
    assert_eq!(emulator.sent()[1].priority.as_deref(), Some("5"));
    emulator.stop().await;
}

#[actix_web::test]
async fn apns_a_batch_is_sent_concurrently_and_connections_are_reused() {
    let emulator = emulator(Rules::default()).await;
    let client = client(&emulator);
    let batch: Vec<Job> = (10..20).map(|n| alert(&device(n))).collect();

    let first = client.send(&batch).await;
    let opened = emulator.connections();
    for n in 20..25 {
        send_one(&client, alert(&device(n))).await;
    }

    assert!(first.results.iter().all(|r| matches!(r, SendResult::Delivered { .. })), "{first:?}");
    assert_eq!(first.health, Health::Up);
    assert_eq!(emulator.sent_count(), 15);
    assert!(opened >= 1);
    assert_eq!(emulator.connections(), opened, "one-by-one sends reuse the open HTTP/2 connections");
    assert_eq!(emulator.provider_tokens().len(), 1, "one provider token for every request");
    emulator.stop().await;
}

/// Each row: the answer injected for one device token, and how the client must take it.
#[actix_web::test]
async fn apns_every_answer_in_the_providers_md_table_is_classified() {
    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Class {
        Invalid,
        Perm,
        Auth,
        RetryDevice,
        RetryOutage,
    }
    use Class::*;
    let rows: &[(u16, &str, Class)] = &[
        (400, "BadDeviceToken", Invalid),
        (400, "DeviceTokenNotForTopic", Invalid),
        (410, "ExpiredToken", Invalid),
        (400, "BadCollapseId", Perm),
        (400, "BadPriority", Perm),
        (400, "PayloadEmpty", Perm),
        (400, "BadExpirationDate", Perm),
        (404, "BadPath", Perm),
        (405, "MethodNotAllowed", Perm),
        (413, "PayloadTooLarge", Perm),
        (403, "InvalidProviderToken", Auth),
        (403, "MissingProviderToken", Auth),
        (403, "BadCertificate", Auth),
        (403, "BadCertificateEnvironment", Auth),
        (403, "Forbidden", Auth),
        (400, "TopicDisallowed", Auth),
        (429, "TooManyRequests", RetryDevice),
        (500, "InternalServerError", RetryOutage),
        (503, "ServiceUnavailable", RetryOutage),
        (503, "Shutdown", RetryOutage),
        (400, "IdleTimeout", RetryOutage),
    ];
    let emulator = emulator(Rules::default()).await;
    let client = client(&emulator);

    for (n, (status, reason, class)) in rows.iter().enumerate() {
        let token = device(100 + n as u32);
        emulator.answer(&token, *status, reason);

        let (result, health) = send_one(&client, alert(&token)).await;

        let error = result.error().unwrap_or_default();
        assert!(error.starts_with(&format!("apns: HTTP {status} {reason}")), "{status} {reason}: {error}");
        let got = match (&result, &health) {
            (SendResult::InvalidToken { .. }, Health::Up) => Invalid,
            (SendResult::Permanent { .. }, Health::Up) => Perm,
            (SendResult::Auth { .. }, Health::AuthFailure(_)) => Auth,
            (SendResult::Retry { .. }, Health::Up) => RetryDevice,
            (SendResult::Retry { .. }, Health::Outage(_)) => RetryOutage,
            other => panic!("{status} {reason}: unexpected {other:?}"),
        };
        assert_eq!(got, *class, "{status} {reason}");
        assert_eq!(emulator.requests_for(&token), 1, "{status} {reason}: sent once");
    }
    emulator.stop().await;
}

#[actix_web::test]
async fn apns_410_unregistered_is_an_invalid_token_and_keeps_apples_timestamp() {
    let emulator = emulator(Rules::default()).await;
    let client = client(&emulator);
    let token = device(7);
    // Through the admin route, as a smoke test against `mock-providers` would.
    let admin = raw_client(&emulator, b"h2");
    let resp = admin
        .post(format!("{}/__emulator/answer", emulator.url()))
        .send_json(&json!({"token": token, "status": 410, "reason": "Unregistered"}))
        .await
        .expect("admin route");
    assert_eq!(resp.status().as_u16(), 204);

    let (result, health) = send_one(&client, alert(&token)).await;

    assert_eq!(health, Health::Up);
    let SendResult::InvalidToken { error } = result else { panic!("{result:?}") };
    let timestamp: u64 = error
        .strip_prefix("apns: HTTP 410 Unregistered (timestamp ")
        .and_then(|rest| rest.strip_suffix(')'))
        .and_then(|ts| ts.parse().ok())
        .unwrap_or_else(|| panic!("{error}"));
    assert!(timestamp > 1_600_000_000_000, "milliseconds since the epoch: {timestamp}");
    emulator.stop().await;
}

#[actix_web::test]
async fn apns_the_emulators_own_checks_reach_the_client_classified() {
    // Several clients, each with its own provider token: let the emulator take them all.
    let emulator = emulator(Rules { min_resign_interval: Duration::ZERO, ..Rules::default() }).await;
    let base = settings(&emulator);
    let with = |f: &dyn Fn(&mut ApnsSettings)| {
        let mut s = base.clone();
        f(&mut s);
        client_with(&s, emulator.ca_pem(), REFRESH_AFTER, MIN_RESIGN_INTERVAL, Arc::new(SystemClock))
    };
    let other_key = rcgen::KeyPair::generate().expect("key").serialize_pem();
    type Class = fn(&SendResult) -> bool;
    let cases: Vec<(&str, ApnsClient, &str, Class)> = vec![
        ("a 63-digit token", client(&emulator), "apns: HTTP 400 BadDeviceToken", |r| {
            matches!(r, SendResult::InvalidToken { .. })
        }),
        (
            "a sub-topic the device is not registered for",
            with(&|s| s.topic = "com.example.app.voip".into()),
            "apns: HTTP 400 DeviceTokenNotForTopic",
            |r| matches!(r, SendResult::InvalidToken { .. }),
        ),
        ("another app's topic", with(&|s| s.topic = "com.other.app".into()), "apns: HTTP 400 TopicDisallowed", |r| {
            matches!(r, SendResult::Auth { .. })
        }),
        ("another team", with(&|s| s.team_id = "WRONGTEAM1".into()), "apns: HTTP 403 InvalidProviderToken", |r| {
            matches!(r, SendResult::Auth { .. })
        }),
        ("another key id", with(&|s| s.key_id = "WRONGKEY01".into()), "apns: HTTP 403 InvalidProviderToken", |r| {
            matches!(r, SendResult::Auth { .. })
        }),
        (
            "another key",
            with(&|s| s.key = Some(Secret::new(other_key.clone()))),
            "apns: HTTP 403 InvalidProviderToken",
            |r| matches!(r, SendResult::Auth { .. }),
        ),
    ];

    for (case, client, error, class) in cases {
        let token = if case == "a 63-digit token" { "a".repeat(63) } else { device(1) };
        let (result, _) = send_one(&client, alert(&token)).await;
        assert!(class(&result), "{case}: {result:?}");
        assert_eq!(result.error(), Some(error), "{case}");
    }
    assert_eq!(emulator.sent_count(), 0);
    emulator.stop().await;
}

#[actix_web::test]
async fn apns_the_emulator_refuses_what_apple_refuses() {
    let emulator = emulator(Rules::default()).await;
    let clock = Arc::new(SystemClock);
    let jwt =
        ProviderToken::new(emulator.key_pem(), "ABC123DEFG", "DEF123GHIJ", REFRESH_AFTER, MIN_RESIGN_INTERVAL, clock)
            .expect("token")
            .current()
            .expect("jwt");
    let http = raw_client(&emulator, b"h2");
    let url = format!("{}/3/device/{}", emulator.url(), device(1));
    let body = json!({"aps": {"alert": "hi"}}).to_string();
    let good: Vec<(&str, String)> = vec![
        ("authorization", format!("bearer {jwt}")),
        ("apns-topic", "com.example.app".into()),
        ("apns-push-type", "alert".into()),
        ("apns-priority", "10".into()),
    ];
    type Case<'a> = (&'a str, Option<(&'a str, &'a str)>, Option<&'a str>, String, (u16, &'a str));
    let long_collapse = "c".repeat(65);
    let cases: Vec<Case> = vec![
        ("no provider token", None, Some("authorization"), body.clone(), (403, "MissingProviderToken")),
        ("a bad priority", Some(("apns-priority", "7")), None, body.clone(), (400, "BadPriority")),
        (
            "priority 10 for a background push",
            Some(("apns-push-type", "background")),
            None,
            body.clone(),
            (400, "BadPriority"),
        ),
        ("an unknown push type", Some(("apns-push-type", "shout")), None, body.clone(), (400, "InvalidPushType")),
        ("a long collapse id", Some(("apns-collapse-id", &long_collapse)), None, body.clone(), (400, "BadCollapseId")),
        ("an apns-id that is no uuid", Some(("apns-id", "42")), None, body.clone(), (400, "BadMessageId")),
        ("a date as expiration", Some(("apns-expiration", "tomorrow")), None, body.clone(), (400, "BadExpirationDate")),
        ("no topic", None, Some("apns-topic"), body.clone(), (400, "MissingTopic")),
        ("an empty body", None, None, String::new(), (400, "PayloadEmpty")),
        ("a body over 4096 bytes", None, None, "x".repeat(4097), (413, "PayloadTooLarge")),
        ("a bad token", Some(("authorization", "bearer not.a.jwt")), None, body.clone(), (403, "InvalidProviderToken")),
    ];

    for (case, replace, remove, body, expected) in cases {
        let mut req = http.post(&url);
        for (name, value) in &good {
            if Some(*name) != remove && replace.is_none_or(|(n, _)| n != *name) {
                req = req.insert_header((*name, value.as_str()));
            }
        }
        if let Some(header) = replace {
            req = req.insert_header(header);
        }
        let got = answer_of(req.send_body(body).await.expect("request")).await;
        assert_eq!((got.0, got.1.as_str()), expected, "{case}");
    }
    let id = Uuid::new_v4().to_string();
    let mut req = http.post(&url).insert_header(("apns-id", id.as_str()));
    for (name, value) in &good {
        req = req.insert_header((*name, value.as_str()));
    }
    let ok = req.send_body(body.clone()).await.expect("request");
    assert_eq!(ok.status().as_u16(), 200);
    assert_eq!(ok.headers().get("apns-id").and_then(|v| v.to_str().ok()), Some(id.as_str()), "apns-id echoed");
    let wrong_method = http.get(&url).send().await.expect("request");
    assert_eq!(answer_of(wrong_method).await, (405, "MethodNotAllowed".into()));
    let wrong_path = http.post(format!("{}/3/devices/{}", emulator.url(), device(1))).send_body(body.clone());
    assert_eq!(answer_of(wrong_path.await.expect("request")).await, (404, "BadPath".into()));
    // Apple speaks HTTP/2 only.
    let http1 = raw_client(&emulator, b"http/1.1");
    let mut req = http1.post(&url);
    for (name, value) in &good {
        req = req.insert_header((*name, value.as_str()));
    }
    let refused = req.send_body(body).await.expect("request");
    assert_eq!(refused.version(), awc::http::Version::HTTP_11);
    assert_eq!(answer_of(refused).await, (505, "HTTP2Required".into()));
    assert_eq!(emulator.sent_count(), 1);
    emulator.stop().await;
}

#[actix_web::test]
async fn apns_an_expired_provider_token_is_re_signed_and_the_message_retried_once() {
    // An APNs that takes tokens for 30 minutes instead of Apple's 60: the client's token
    // expires there before the client's own 50 minutes are up.
    let (clock, emulator, client) = on_a_clock(tokens_last(30 * 60), REFRESH_AFTER, MIN_RESIGN_INTERVAL).await;
    // 31 minutes on, the token is older than the emulator's limit, and over 20 minutes old: it may
    // be re-signed.
    let (result, health) = first_delivered_then(&clock, &client, Duration::from_secs(31 * 60)).await;

    assert!(matches!(result, SendResult::Delivered { .. }), "{result:?}");
    assert_eq!(health, Health::Up);
    assert_eq!(emulator.requests_for(&device(2)), 2, "refused with ExpiredProviderToken, then accepted");
    assert_eq!(emulator.provider_tokens().len(), 2);
    emulator.stop().await;
}

#[actix_web::test]
async fn apns_an_expired_provider_token_within_20_minutes_of_signing_is_auth_without_a_retry() {
    // An APNs that takes tokens for 10 minutes: expired there, but signed too recently to re-sign.
    let (clock, emulator, client) = on_a_clock(tokens_last(10 * 60), REFRESH_AFTER, MIN_RESIGN_INTERVAL).await;
    let (result, health) = first_delivered_then(&clock, &client, Duration::from_secs(11 * 60)).await;

    assert!(matches!(result, SendResult::Auth { .. }), "{result:?}");
    assert!(result.error().unwrap_or_default().contains("ExpiredProviderToken"), "{result:?}");
    assert!(matches!(health, Health::AuthFailure(_)));
    assert_eq!(emulator.requests_for(&device(2)), 1, "not re-signed 20 minutes early");
    assert_eq!(emulator.presented_tokens().len(), 1);
    emulator.stop().await;
}

#[actix_web::test]
async fn apns_a_repeated_expired_provider_token_is_auth_after_one_retry() {
    let emulator = emulator(Rules::default()).await;
    let client =
        client_with(&settings(&emulator), emulator.ca_pem(), REFRESH_AFTER, Duration::ZERO, Arc::new(SystemClock));
    let token = device(9);
    emulator.answer(&token, 403, "ExpiredProviderToken");

    let (result, health) = send_one(&client, alert(&token)).await;

    assert_eq!(result, SendResult::Auth { error: "apns: HTTP 403 ExpiredProviderToken".into() });
    assert!(matches!(health, Health::AuthFailure(_)));
    assert_eq!(emulator.requests_for(&token), 2, "one retry with a re-signed token, no more");
    emulator.stop().await;
}

#[actix_web::test]
async fn apns_too_many_provider_token_updates_is_auth_and_stops_re_signing() {
    // Apple's 20 minutes between new tokens; a client that would re-sign every minute.
    let (clock, emulator, client) = on_a_clock(Rules::default(), Duration::from_secs(60), Duration::ZERO).await;
    let (result, health) = first_delivered_then(&clock, &client, Duration::from_secs(2 * 60)).await;

    assert_eq!(result, SendResult::Auth { error: "apns: HTTP 429 TooManyProviderTokenUpdates".into() });
    assert!(matches!(health, Health::AuthFailure(_)));
    assert_eq!(emulator.presented_tokens().len(), 2);
    // The second token is over a minute old now too, but the client must not re-sign for 20 min.
    clock.advance(Duration::from_secs(2 * 60));
    let (again, _) = send_one(&client, alert(&device(3))).await;
    assert!(matches!(again, SendResult::Auth { .. }), "{again:?}");
    assert_eq!(emulator.presented_tokens().len(), 2, "no third token");
    emulator.answer(&device(4), 403, "ExpiredProviderToken");
    send_one(&client, alert(&device(4))).await;
    assert_eq!(emulator.requests_for(&device(4)), 1, "not even for ExpiredProviderToken");
    // 20 minutes after the refusal the client signs again, and APNs (20 minutes after the last
    // new token too) takes it.
    clock.advance(Duration::from_secs(20 * 60));
    let (after, _) = send_one(&client, alert(&device(5))).await;
    assert!(matches!(after, SendResult::Delivered { .. }), "{after:?}");
    assert_eq!(emulator.provider_tokens().len(), 2, "the first token and the one signed after the pause");
    emulator.stop().await;
}

#[actix_web::test]
async fn apns_the_provider_token_is_refreshed_before_it_expires_and_no_sooner_than_allowed() {
    // Apple's 60/20 minutes; the client re-signs after 50.
    let (clock, emulator, client) = on_a_clock(Rules::default(), REFRESH_AFTER, MIN_RESIGN_INTERVAL).await;
    for n in 0..3 {
        assert!(matches!(send_one(&client, alert(&device(n))).await.0, SendResult::Delivered { .. }));
    }
    clock.advance(Duration::from_secs(49 * 60));
    assert!(matches!(send_one(&client, alert(&device(3))).await.0, SendResult::Delivered { .. }));
    assert_eq!(emulator.provider_tokens().len(), 1, "still the first token at 49 minutes");
    clock.advance(Duration::from_secs(2 * 60));

    let (result, _) = send_one(&client, alert(&device(5))).await;

    assert!(matches!(result, SendResult::Delivered { .. }), "{result:?}");
    assert_eq!(emulator.requests_for(&device(5)), 1, "refreshed before APNs refused it");
    assert_eq!(emulator.provider_tokens().len(), 2);
    emulator.stop().await;
}

#[actix_web::test]
async fn apns_whole_request_failures_are_outages_and_retry_after_is_honoured() {
    let emulator = emulator(Rules::default()).await;
    let client = client(&emulator);
    emulator.fail_with(FailPlan {
        status: 503,
        code: Some("ServiceUnavailable".into()),
        count: Some(1),
        for_ms: None,
        retry_after_secs: Some(3),
    });

    let (result, health) = send_one(&client, alert(&device(1))).await;

    assert_eq!(
        result,
        SendResult::Retry { error: "apns: HTTP 503 ServiceUnavailable".into(), after: Some(Duration::from_secs(3)) }
    );
    assert!(matches!(health, Health::Outage(_)));
    emulator.fail_for(503, "Shutdown", Duration::from_secs(10));
    let batch: Vec<Job> = (2..5).map(|n| alert(&device(n))).collect();
    let response = client.send(&batch).await;
    assert!(response.results.iter().all(|r| matches!(r, SendResult::Retry { .. })), "{response:?}");
    assert!(matches!(response.health, Health::Outage(_)), "every request failed: an outage");
    assert_eq!(emulator.sent_count(), 0);
    emulator.stop().await;
}

#[actix_web::test]
async fn apns_a_refused_connection_is_an_outage() {
    let emulator = emulator(Rules::default()).await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = closed.local_addr().expect("addr").port();
    drop(closed);
    let mut s = settings(&emulator);
    s.base_url = format!("https://127.0.0.1:{port}");
    let client = client_with(&s, emulator.ca_pem(), REFRESH_AFTER, MIN_RESIGN_INTERVAL, Arc::new(SystemClock));

    let (result, health) = send_one(&client, alert(&device(1))).await;

    assert!(matches!(result, SendResult::Retry { after: None, .. }), "{result:?}");
    assert!(result.error().unwrap_or_default().starts_with("apns: request failed"), "{result:?}");
    assert!(matches!(health, Health::Outage(_)));
    emulator.stop().await;
}

#[actix_web::test]
async fn apns_a_connection_reset_is_an_outage() {
    let emulator = emulator(Rules::default()).await;
    // A server that reads nothing and closes once the client has written (its TLS hello):
    // unread data makes the close a TCP reset.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for conn in listener.incoming().take(4).flatten() {
            // Blocks until the client's first bytes are there, and leaves them unread.
            let _ = conn.peek(&mut [0u8; 1]);
            drop(conn);
        }
    });
    let mut s = settings(&emulator);
    s.base_url = format!("https://127.0.0.1:{port}");
    let client = client_with(&s, emulator.ca_pem(), REFRESH_AFTER, MIN_RESIGN_INTERVAL, Arc::new(SystemClock));

    let (result, health) = send_one(&client, alert(&device(1))).await;

    assert!(matches!(result, SendResult::Retry { .. }), "{result:?}");
    assert!(matches!(health, Health::Outage(_)));
    emulator.stop().await;
}

#[actix_web::test]
async fn apns_payloads_over_4096_bytes_and_collapse_ids_over_64_bytes_are_refused_before_sending() {
    let emulator = emulator(Rules::default()).await;
    let client = client(&emulator);
    let big = job(&device(1), json!({"title": "big", "body": "x".repeat(4100)}), Priority::High);
    let long = job(&device(2), json!({"title": "T", "collapse_id": "c".repeat(65)}), Priority::High);
    let fine = alert(&device(3));

    let response = client.send(&[big, long, fine]).await;

    let error = response.results[0].error().unwrap_or_default().to_string();
    assert!(matches!(response.results[0], SendResult::Permanent { .. }), "{:?}", response.results[0]);
    assert!(error.starts_with("apns: payload too large: ") && error.ends_with(" bytes (limit 4096)"), "{error}");
    assert_eq!(
        response.results[1],
        SendResult::Permanent { error: "apns: collapse_id too long: 65 bytes (limit 64)".into() }
    );
    assert!(matches!(response.results[2], SendResult::Delivered { .. }));
    assert_eq!(response.health, Health::Up);
    assert_eq!(emulator.requests(), 1, "only the fine one was sent");
    emulator.stop().await;
}

#[actix_web::test]
async fn apns_an_expiring_notification_expires_at_its_expiry_second_with_its_collapse_id() {
    let (clock, emulator, client) = on_a_clock(Rules::default(), REFRESH_AFTER, MIN_RESIGN_INTERVAL).await;
    let now_ms = notify_relay_engine::providers::lifetime::now_ms(&clock);
    let mut lasting = alert(&device(1));
    lasting.expires_ms = Some(now_ms + 3_600_900);
    lasting.collapse_key = Some("score".into());
    // Under a second left: the second it expires in, which APNs does not store (one attempt).
    let mut last = alert(&device(2));
    let last_expiry = now_ms + 999;
    last.expires_ms = Some(last_expiry);
    // A payload ttl that ends sooner than the notification is kept.
    let mut own = job(&device(3), json!({"title": "T", "ttl": 60}), Priority::High);
    own.expires_ms = Some(now_ms + 3_600_000);
    let plain = alert(&device(4));

    let response = client.send(&[lasting, last, own, plain]).await;

    assert!(response.results.iter().all(|r| matches!(r, SendResult::Delivered { .. })), "{response:?}");
    let sent = emulator.sent();
    let of = |token: &str| sent.iter().find(|s| s.token == token).cloned().expect("sent");
    let s = of(&device(1));
    let expected = ((now_ms + 3_600_900) / 1000).to_string();
    assert_eq!((s.expiration.as_deref(), s.collapse_id.as_deref()), (Some(expected.as_str()), Some("score")));
    let expected = (last_expiry / 1000).to_string();
    assert_eq!(of(&device(2)).expiration.as_deref(), Some(expected.as_str()));
    let expected = (now_ms / 1000 + 60).to_string();
    assert_eq!(of(&device(3)).expiration.as_deref(), Some(expected.as_str()));
    // Neither an expiry nor a key: neither header (APNs' default storage applies).
    let s = of(&device(4));
    assert_eq!((s.expiration, s.collapse_id), (None, None));
    emulator.stop().await;
}

#[actix_web::test]
async fn apns_the_emulators_refusal_of_a_bad_collapse_id_or_expiration_is_classified_perm() {
    let emulator = emulator(Rules::default()).await;
    let jwt = ProviderToken::new(
        emulator.key_pem(),
        "ABC123DEFG",
        "DEF123GHIJ",
        REFRESH_AFTER,
        MIN_RESIGN_INTERVAL,
        Arc::new(SystemClock),
    )
    .expect("token")
    .current()
    .expect("jwt");
    let http = raw_client(&emulator, b"h2");
    let url = format!("{}/3/device/{}", emulator.url(), device(1));
    let long = "c".repeat(65);
    let cases =
        [("apns-collapse-id", long.as_str(), "BadCollapseId"), ("apns-expiration", "soon", "BadExpirationDate")];
    for (name, value, reason) in cases {
        let mut resp = http
            .post(&url)
            .insert_header(("authorization", format!("bearer {jwt}")))
            .insert_header(("apns-topic", "com.example.app"))
            .insert_header(("apns-push-type", "alert"))
            .insert_header(("apns-priority", "10"))
            .insert_header((name, value))
            .send_body(json!({"aps": {"alert": "hi"}}).to_string())
            .await
            .expect("request");
        let status = resp.status().as_u16();
        let body = resp.body().await.expect("body");
        // awc's header map, as the APNs client's (h2's `http::HeaderMap`).
        let headers: http::HeaderMap = resp.headers().iter().map(|(n, v)| (n.clone(), v.clone())).collect();
        let answer = notify_relay_engine::providers::apns::answer(status, &headers, &body);
        assert_eq!((answer.status, answer.reason.as_str()), (400, reason), "{name}");
        let (result, health) = notify_relay_engine::providers::apns::classify(
            answer.status,
            &answer.reason,
            answer.timestamp,
            answer.apns_id,
            answer.retry_after,
        );
        assert!(matches!(result, SendResult::Permanent { .. }), "{name}: {result:?}");
        assert_eq!(health, Health::Up, "{name}: one message's problem says nothing about APNs");
    }
    assert_eq!(emulator.sent_count(), 0);
    emulator.stop().await;
}

#[actix_web::test]
async fn apns_120_concurrent_messages_are_multiplexed_on_one_connection_within_the_servers_stream_limit() {
    let emulator = emulator(Rules::default()).await.with_max_concurrent_streams(8);
    let client = client(&emulator);
    let batch: Vec<Job> = (0..120).map(|n| alert(&device(n))).collect();

    let response = client.send(&batch).await;

    assert!(response.results.iter().all(|r| matches!(r, SendResult::Delivered { .. })), "{response:?}");
    assert_eq!(emulator.sent_count(), 120);
    assert!(emulator.connections() <= CONNECTIONS, "{} connections for one client", emulator.connections());
    let peak = emulator.peak_concurrent_streams();
    assert!(peak <= 8, "{peak} streams open at once; the emulator allows 8");
    assert!(peak > 1, "the streams were not multiplexed (peak {peak})");
    assert_eq!(emulator.refused_streams(), 0, "the client opened streams beyond the server's limit");
    // The admin call says the same.
    let stats = raw_client(&emulator, b"h2").get(format!("{}/__emulator/stats", emulator.url())).send().await;
    let stats: Value = stats.expect("stats").json().await.expect("stats json");
    assert_eq!(stats["peak_concurrent_streams"], json!(peak));
    assert_eq!(stats["max_concurrent_streams"], json!(8));
    assert_eq!(stats["refused_streams"], json!(0));
    assert_eq!(stats["sent"], json!(120));
    assert!(stats["connections"].as_u64().is_some_and(|c| c >= 2), "{stats}");
    emulator.stop().await;
}

#[actix_web::test]
async fn apns_a_goaway_mid_flight_is_an_outage_and_the_next_batch_opens_a_new_connection() {
    let emulator = emulator(Rules::default()).await;
    let client = client(&emulator);
    emulator.goaway_at_streams(10);
    let batch = |from: u32| (from..from + 10).map(|n| alert(&device(n))).collect::<Vec<Job>>();

    let dropped = client.send(&batch(0)).await;
    let opened = emulator.connections();
    let next = client.send(&batch(100)).await;

    for result in &dropped.results {
        assert!(matches!(result, SendResult::Retry { after: None, .. }), "{result:?}");
        assert!(result.error().unwrap_or_default().starts_with("apns: request failed"), "{result:?}");
    }
    assert!(matches!(dropped.health, Health::Outage(_)), "{:?}", dropped.health);
    assert_eq!(opened, 1);
    assert!(next.results.iter().all(|r| matches!(r, SendResult::Delivered { .. })), "{next:?}");
    assert_eq!(next.health, Health::Up);
    assert_eq!(emulator.connections(), 2, "the next batch went on a new connection");
    assert_eq!(emulator.sent_count(), 10);
    emulator.stop().await;
}

#[actix_web::test]
async fn apns_a_hung_answer_is_bounded_by_the_timeout_and_an_outage_while_the_connection_serves_the_others() {
    let emulator = emulator(Rules::default()).await;
    let mut s = settings(&emulator);
    // Long enough that the PING the timed-out request sends is answered within it, however
    // loaded the machine.
    s.timeout = Duration::from_millis(1000);
    let client = client_with(&s, emulator.ca_pem(), REFRESH_AFTER, MIN_RESIGN_INTERVAL, Arc::new(SystemClock));
    emulator.hang(&device(1));
    let started = std::time::Instant::now();

    let response = client.send(&[alert(&device(1)), alert(&device(2))]).await;

    let elapsed = started.elapsed();
    assert!(matches!(&response.results[0], SendResult::Retry { .. }), "{response:?}");
    assert_eq!(response.results[0].error(), Some("apns: request failed: no answer within 1s"));
    assert!(matches!(response.results[1], SendResult::Delivered { .. }), "{response:?}");
    assert!(elapsed >= Duration::from_millis(1000) && elapsed < Duration::from_secs(5), "{elapsed:?}");
    assert_eq!(emulator.connections(), 1);

    // One stream without an answer says nothing against the connection, which still answers
    // the PING the timeout sent: the next message goes on it (a client that gave the connection
    // up on every timeout would open a second one here).
    let next = client.send(&[alert(&device(3))]).await;
    assert!(matches!(next.results[0], SendResult::Delivered { .. }), "{next:?}");
    assert_eq!(emulator.connections(), 1, "the connection was kept");
    emulator.stop().await;
}

#[actix_web::test]
async fn apns_a_server_that_accepts_and_never_answers_is_an_outage_within_the_timeout() {
    let emulator = emulator(Rules::default()).await;
    // Accepts TCP connections and holds them, reading and writing nothing.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    actix_rt::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = listener.accept().await {
            held.push(conn);
        }
    });
    let mut s = settings(&emulator);
    s.base_url = format!("https://127.0.0.1:{port}");
    s.timeout = Duration::from_millis(300);
    let client = client_with(&s, emulator.ca_pem(), REFRESH_AFTER, MIN_RESIGN_INTERVAL, Arc::new(SystemClock));
    let started = std::time::Instant::now();

    let response = client.send(&[alert(&device(1)), alert(&device(2))]).await;

    let elapsed = started.elapsed();
    for result in &response.results {
        assert!(matches!(result, SendResult::Retry { after: None, .. }), "{result:?}");
        assert!(result.error().unwrap_or_default().starts_with("apns: request failed: no "), "{result:?}");
    }
    assert!(matches!(response.health, Health::Outage(_)));
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
    emulator.stop().await;
}
