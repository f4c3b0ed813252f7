//! FCM HTTP v1 against its emulator: the OAuth token dance (on a clock the test moves, shared
//! by the token source and the emulator) and one test per docs/providers.md row. Delivery through
//! the whole relay is `tests/relay/fcm.rs`.

use emulators::fcm::FcmEmulator;
use emulators::testing::{client_job, eventually, Proxy};
use notify_relay_engine::clock::ManualClock;
use notify_relay_engine::job::{Job, Priority, Provider, SendResult};
use notify_relay_engine::providers::fcm::{
    tls_config, Classified, FcmClient, ServiceAccount, TokenSource, FAILURE_MEMORY, QUOTA_BACKOFF, REFRESH_BEFORE,
};
use notify_relay_engine::providers::ProviderClient;
use notify_relay_engine::settings::{FcmSettings, Secret};
use notify_relay_engine::Health;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

/// The client's settings: `base_url`, the service account inline (as
/// `providers.fcm.service_account_json`), test timings. The client takes its project from the
/// token source.
fn settings(base_url: String, service_account_json: &str) -> FcmSettings {
    FcmSettings {
        enabled: true,
        base_url,
        service_account_file: None,
        service_account_json: Some(Secret::new(service_account_json)),
        timeout: Duration::from_secs(2),
        flush_after: Duration::from_millis(5),
        rate_per_sec: 0,
        device_rate_per_sec: 0,
    }
}

/// The emulator and a client whose token source reads the same clock, which only the test moves.
struct Fixture {
    emulator: FcmEmulator,
    client: FcmClient,
    tokens: Arc<TokenSource>,
    clock: ManualClock,
}

async fn fixture() -> Fixture {
    let clock = ManualClock::new();
    let emulator = FcmEmulator::start("127.0.0.1:0").await.expect("fcm emulator").with_clock(clock.shared());
    let account = ServiceAccount::from_json(&emulator.service_account_json()).expect("emulator service account");
    let settings = settings(emulator.url(), &emulator.service_account_json());
    let tokens = Arc::new(TokenSource::with_clock(account, clock.shared()).expect("token source"));
    let client = FcmClient::new(&settings, tokens.clone(), tls_config().expect("tls"));
    Fixture { emulator, client, tokens, clock }
}

fn job(token: &str, payload: Value) -> Job {
    client_job(Provider::Fcm, token, payload, Priority::High)
}

impl Fixture {
    async fn send(&self, token: &str) -> (SendResult, Health) {
        self.send_job(job(token, json!({"title": "T"}))).await
    }

    async fn send_job(&self, job: Job) -> (SendResult, Health) {
        let response = self.client.send(&[job]).await;
        assert_eq!(response.results.len(), 1);
        (response.results.into_iter().next().unwrap(), response.health)
    }
}

#[actix_web::test]
async fn messages_are_delivered_with_one_cached_access_token() {
    let f = fixture().await;
    let jobs: Vec<Job> = (0..20)
        .map(|i| job(&format!("device-{i}"), json!({"title": "Hi", "body": "there", "data": {"order": i}})))
        .collect();
    let response = f.client.send(&jobs).await;
    assert_eq!(response.health, Health::Up);
    for r in &response.results {
        assert!(
            matches!(r, SendResult::Delivered { provider_message_id: Some(name) } if name.starts_with("projects/")),
            "{r:?}"
        );
    }
    // 20 concurrent sends, one token request: the token source refreshes one at a time.
    assert_eq!(f.emulator.token_requests(), 1);
    f.client.send(&jobs[..3]).await;
    assert_eq!(f.emulator.token_requests(), 1, "the token is cached");
    let sent = f.emulator.sent();
    let first = sent.iter().find(|s| s.token == "device-0").expect("device-0 got it");
    assert_eq!(first.message["notification"], json!({"title": "Hi", "body": "there"}));
    assert_eq!(first.message["data"]["order"], json!("0"), "data values are strings");
    assert_eq!(first.notification_id(), Some(jobs[0].notification_id.to_string().as_str()));
    assert_eq!(first.message["android"]["priority"], json!("HIGH"));
    assert_eq!(f.tokens.fetched().await, 1);
    f.emulator.stop().await;
}

#[actix_web::test]
async fn dead_tokens_are_invalid_and_bad_messages_permanent() {
    let f = fixture().await;
    for (token, expect_invalid) in
        [("x-unregistered", true), ("x-senderidmismatch", true), ("x-badtoken", true), ("x-invalidargument", false)]
    {
        let (result, health) = f.send(token).await;
        match expect_invalid {
            true => assert!(matches!(result, SendResult::InvalidToken { .. }), "{token}: {result:?}"),
            false => assert!(matches!(result, SendResult::Permanent { .. }), "{token}: {result:?}"),
        }
        assert_eq!(health, Health::Up, "{token}: a single message's problem says nothing about FCM");
    }
    let (result, _) = f.send("x-unregistered").await;
    assert_eq!(result.error(), Some("fcm: HTTP 404 UNREGISTERED: injected UNREGISTERED for this token"));
    f.emulator.stop().await;
}

#[actix_web::test]
async fn a_payload_over_4096_bytes_fails_before_it_is_sent() {
    let f = fixture().await;
    let requests = f.emulator.requests();
    let (result, _) = f.send_job(job("device", json!({"title": "big", "data": {"blob": "x".repeat(5000)}}))).await;
    assert!(
        matches!(&result, SendResult::Permanent { error } if error.starts_with("fcm: payload too large")),
        "{result:?}"
    );
    assert_eq!(f.emulator.requests(), requests, "nothing was sent");
    f.emulator.stop().await;
}

#[actix_web::test]
async fn quota_and_outages_are_retried_after_retry_after() {
    let f = fixture().await;
    let (result, health) = f.send("x-quota").await;
    assert!(matches!(result, SendResult::Retry { after: Some(d), .. } if d == Duration::from_secs(1)), "{result:?}");
    assert!(matches!(health, Health::Outage(_)));
    let (result, _) = f.send("x-quotanoretry").await;
    assert!(matches!(result, SendResult::Retry { after: Some(d), .. } if d == QUOTA_BACKOFF), "{result:?}");
    for token in ["x-unavailable", "x-internal"] {
        let (result, health) = f.send(token).await;
        assert!(matches!(result, SendResult::Retry { .. }), "{token}: {result:?}");
        assert!(matches!(health, Health::Outage(_)), "{token}");
    }
    f.emulator.fail_next(503, None, 1);
    let (result, _) = f.send("device").await;
    assert!(matches!(result, SendResult::Retry { after: Some(d), .. } if d == Duration::from_secs(1)), "{result:?}");
    f.emulator.stop().await;
}

#[actix_web::test]
async fn credential_problems_are_auth_failures() {
    let f = fixture().await;
    let (result, health) = f.send("x-thirdpartyauth").await;
    assert!(matches!(result, SendResult::Auth { .. }), "{result:?}");
    assert!(matches!(health, Health::AuthFailure(_)));
    // 403 without an FcmError: the service account may not send for this project.
    f.emulator.fail_next(403, None, 1);
    let (result, health) = f.send("device").await;
    assert!(matches!(result, SendResult::Auth { .. }), "{result:?}");
    assert!(matches!(health, Health::AuthFailure(_)));
    f.emulator.stop().await;
}

#[actix_web::test]
async fn a_refused_token_request_is_an_auth_failure_and_an_unreachable_one_an_outage() {
    let f = fixture().await;
    f.emulator.fail_token_next(401, 1);
    let (result, health) = f.send("device").await;
    assert!(matches!(&result, SendResult::Auth { error } if error.contains("token endpoint refused")), "{result:?}");
    assert!(matches!(health, Health::AuthFailure(_)));
    assert_eq!(f.emulator.requests(), 0, "no send without a token");
    // Within the failure memory the refusal is answered again without asking the endpoint.
    let (again, _) = f.send("device").await;
    assert_eq!(again, result);
    assert_eq!(f.emulator.token_requests(), 1, "the failure is remembered for a moment");
    f.clock.advance(FAILURE_MEMORY);
    f.emulator.fail_token_next(500, 1);
    let (result, health) = f.send("device").await;
    assert!(matches!(result, SendResult::Retry { .. }), "{result:?}");
    assert!(matches!(health, Health::Outage(_)));
    assert_eq!(f.emulator.token_requests(), 2);
    f.emulator.stop().await;
}

#[actix_web::test]
async fn a_bad_signing_key_is_refused_by_the_token_endpoint() {
    let f = fixture().await;
    // Another RSA key than the one the emulator knows for this account.
    let mut account = ServiceAccount::from_json(&f.emulator.service_account_json()).unwrap();
    account.private_key = include_str!("fixtures/other-rsa-key.pem").to_string();
    let tokens = Arc::new(TokenSource::new(account).unwrap());
    let settings = settings(f.emulator.url(), &f.emulator.service_account_json());
    let client = FcmClient::new(&settings, tokens, tls_config().expect("tls"));
    let response = client.send(&[job("device", json!({}))]).await;
    assert!(
        matches!(&response.results[0], SendResult::Auth { error } if error.contains("invalid_grant")),
        "{:?}",
        response.results
    );
    f.emulator.stop().await;
}

#[actix_web::test]
async fn a_bare_401_refreshes_the_token_once() {
    let f = fixture().await;
    assert!(matches!(f.send("device").await.0, SendResult::Delivered { .. }));
    // The token was revoked behind our back: one refresh, and the send goes through.
    f.emulator.revoke_tokens();
    assert!(matches!(f.send("device").await.0, SendResult::Delivered { .. }));
    assert_eq!(f.emulator.token_requests(), 2);
    // Refused again with the fresh token too: an auth failure, and no third token.
    f.emulator.fail_next(401, None, 2);
    let (result, health) = f.send("device").await;
    assert!(matches!(&result, SendResult::Auth { error } if error.contains("401 twice")), "{result:?}");
    assert!(matches!(health, Health::AuthFailure(_)));
    assert_eq!(f.emulator.token_requests(), 3);
    f.emulator.stop().await;
}

#[actix_web::test]
async fn the_token_is_replaced_before_it_expires() {
    let f = fixture().await;
    // Google's hour: the token is used until 5 minutes before it ends, then replaced while valid.
    let lifetime = Duration::from_secs(3600);
    f.emulator.set_token_lifetime(lifetime);
    assert!(matches!(f.send("device").await.0, SendResult::Delivered { .. }));
    assert_eq!(f.emulator.token_requests(), 1);
    f.clock.advance(lifetime - REFRESH_BEFORE - Duration::from_secs(1));
    assert!(matches!(f.send("device").await.0, SendResult::Delivered { .. }));
    assert_eq!(f.emulator.token_requests(), 1, "still the first token a second before its refresh");
    f.clock.advance(Duration::from_secs(1));
    assert!(matches!(f.send("device").await.0, SendResult::Delivered { .. }));
    assert_eq!(f.emulator.token_requests(), 2);
    assert_eq!(f.emulator.requests(), 3, "no send was refused on the way");
    f.emulator.stop().await;
}

#[actix_web::test]
async fn a_token_fcm_judges_expired_is_refused_and_replaced_once() {
    // The emulator's clock runs an hour ahead of the token source's (the system's): the cached
    // token is past its hour at FCM, which answers a bare 401, and the client fetches a new one.
    let f = fixture().await;
    let account = ServiceAccount::from_json(&f.emulator.service_account_json()).expect("service account");
    let tokens = Arc::new(TokenSource::new(account).expect("token source"));
    let settings = settings(f.emulator.url(), &f.emulator.service_account_json());
    let client = FcmClient::new(&settings, tokens.clone(), tls_config().expect("tls"));
    assert!(matches!(client.send(&[job("device", json!({}))]).await.results[0], SendResult::Delivered { .. }));

    f.clock.advance(Duration::from_secs(3600));

    assert!(matches!(client.send(&[job("device", json!({}))]).await.results[0], SendResult::Delivered { .. }));
    assert_eq!(f.emulator.token_requests(), 2, "one refresh after the refusal");
    assert_eq!(f.emulator.requests(), 3, "sent, refused as expired, sent again");
    f.emulator.stop().await;
}

#[actix_web::test]
async fn unspecified_error_gets_one_bounded_retry() {
    let f = fixture().await;
    let first = job("x-unspecified", json!({}));
    let mut second = first.clone();
    second.attempt = 1;
    assert!(matches!(f.send_job(first).await.0, SendResult::Retry { .. }));
    assert!(matches!(f.send_job(second).await.0, SendResult::Permanent { .. }));
    f.emulator.stop().await;
}

#[actix_web::test]
async fn an_unreachable_fcm_is_an_outage() {
    let f = fixture().await;
    assert!(matches!(f.send("device").await.0, SendResult::Delivered { .. }));
    // The same (cached) access token, but nothing listens where the sends go.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let settings = settings(format!("http://{closed}"), &f.emulator.service_account_json());
    let client = FcmClient::new(&settings, f.tokens.clone(), tls_config().expect("tls"));
    let response = client.send(&[job("device", json!({}))]).await;
    assert!(matches!(response.results[0], SendResult::Retry { .. }), "{:?}", response.results);
    assert!(matches!(response.health, Health::Outage(_)));
    f.emulator.stop().await;
}

/// A client for the fixture's emulator whose sends go through a loopback proxy (the token
/// endpoint is still reached directly), with `timeout`.
async fn behind_a_proxy(f: &Fixture, timeout: Duration) -> (Proxy, FcmClient) {
    let proxy = Proxy::start(f.emulator.addr.to_string()).await;
    let mut settings = settings(format!("http://{}", proxy.addr), &f.emulator.service_account_json());
    settings.timeout = timeout;
    (proxy, FcmClient::new(&settings, f.tokens.clone(), tls_config().expect("tls")))
}

#[actix_web::test]
async fn fcm_a_batch_goes_as_concurrent_streams_of_one_http2_connection_kept_for_the_next() {
    let f = fixture().await;
    let (proxy, client) = behind_a_proxy(&f, Duration::from_secs(2)).await;
    let jobs: Vec<Job> = (0..50).map(|i| job(&format!("device-{i}"), json!({"title": "Hi"}))).collect();

    for round in 1..=2 {
        let response = client.send(&jobs).await;
        assert_eq!(response.health, Health::Up);
        assert!(response.results.iter().all(|r| matches!(r, SendResult::Delivered { .. })), "{response:?}");
        assert_eq!(f.emulator.http2_requests(), 50 * round, "every request came over HTTP/2");
    }
    assert_eq!(proxy.connections(), 1, "100 messages in two batches, one connection");
    f.emulator.stop().await;
}

#[actix_web::test]
async fn fcm_a_connection_that_stops_answering_is_given_up_and_the_next_send_opens_a_new_one() {
    let f = fixture().await;
    let (proxy, client) = behind_a_proxy(&f, Duration::from_millis(300)).await;
    assert!(matches!(client.send(&[job("device", json!({}))]).await.results[0], SendResult::Delivered { .. }));
    // The route dies without a word: the open connection forwards nothing, new ones pass.
    proxy.blackhole();

    let response = client.send(&[job("device", json!({}))]).await;
    assert_eq!(response.results[0].error(), Some("fcm: request failed: no answer within 300ms"));
    assert!(matches!(response.health, Health::Outage(_)), "{:?}", response.health);

    // The unanswered request had the connection PINGed; once the PING goes unanswered too, the
    // next send opens a new connection (without the check, every send would time out on the
    // dead one until the kernel gave up on it, a quarter of an hour later).
    let delivered = eventually(Duration::from_secs(10), || async {
        let response = client.send(&[job("device", json!({}))]).await;
        matches!(response.results[0], SendResult::Delivered { .. }).then_some(response)
    })
    .await;
    assert_eq!(delivered.health, Health::Up);
    assert_eq!(proxy.connections(), 2);
    f.emulator.stop().await;
}

/// An `http://` base URL is spoken to in HTTP/2 with prior knowledge: a gateway there that
/// speaks only HTTP/1.1 answers the connection preface with an HTTP/1.1 error, and every message
/// is an outage that says HTTP/2 (README, `providers.fcm.base_url`), retried, never a delivery.
#[actix_web::test]
async fn fcm_an_http1_only_gateway_at_an_http_url_is_an_outage_naming_http2() {
    let f = fixture().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    actix_rt::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut conn, _)) = listener.accept().await {
            let mut buf = [0u8; 1024];
            let _ = conn.read(&mut buf).await;
            let _ = conn.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").await;
        }
    });
    let settings = settings(format!("http://{addr}"), &f.emulator.service_account_json());
    let client = FcmClient::new(&settings, f.tokens.clone(), tls_config().expect("tls"));

    let response = client.send(&[job("device", json!({}))]).await;

    let result = &response.results[0];
    assert!(matches!(result, SendResult::Retry { .. }), "{result:?}");
    assert!(result.error().unwrap_or_default().starts_with("fcm: request failed: HTTP/2"), "{result:?}");
    assert!(matches!(response.health, Health::Outage(_)), "{:?}", response.health);
    f.emulator.stop().await;
}

impl Fixture {
    /// A job for `token` that expires `left_ms` from now on the fixture's clock, with `collapse_key`.
    fn expiring(&self, token: &str, left_ms: u64, collapse_key: Option<&str>) -> Job {
        let mut j = job(token, json!({"title": "T", "badge": 2}));
        j.expires_ms = Some(notify_relay_engine::providers::lifetime::now_ms(&self.clock) + left_ms);
        j.collapse_key = collapse_key.map(str::to_string);
        j
    }

    fn sent_to(&self, token: &str) -> emulators::fcm::Sent {
        self.emulator.sent().into_iter().find(|s| s.token == token).expect("sent")
    }
}

#[actix_web::test]
async fn fcm_an_expiring_notification_carries_its_ttl_expiry_and_collapse_key_to_android_and_apns() {
    let f = fixture().await;
    // 3600.9 s left on the client's clock, which stands still: ttl exactly 3600 s (rounded down).
    let j = f.expiring("device-lasting", 3_600_900, Some("score"));
    let expires_secs = j.expires_ms.unwrap() / 1000;

    let (result, _) = f.send_job(j).await;

    assert!(matches!(result, SendResult::Delivered { .. }), "{result:?}");
    let s = f.sent_to("device-lasting");
    assert_eq!(s.android_ttl(), Some("3600s"));
    assert_eq!(s.collapse_key(), Some("score"));
    assert_eq!(s.apns_expiration(), Some(expires_secs.to_string().as_str()));
    assert_eq!(s.apns_collapse_id(), Some("score"));
    // What was sent before stays beside them.
    assert_eq!(s.message["android"]["priority"], json!("HIGH"));
    assert_eq!(s.message["apns"]["payload"], json!({"aps": {"badge": 2}}));
    f.emulator.stop().await;
}

#[actix_web::test]
async fn fcm_under_a_second_left_is_ttl_0_and_four_weeks_at_most_and_no_expiry_keeps_todays_message() {
    let f = fixture().await;
    let last = f.expiring("device-last", 999, None);
    let last_secs = last.expires_ms.unwrap() / 1000;
    let year = f.expiring("device-year", 365 * 86_400_000, None);
    let mut own = job("device-own", json!({"title": "T", "ttl": 60}));
    own.collapse_key = None;
    let plain = job("device-plain", json!({"title": "T"}));

    let response = f.client.send(&[last, year, own, plain]).await;

    assert!(response.results.iter().all(|r| matches!(r, SendResult::Delivered { .. })), "{response:?}");
    // ttl 0: FCM delivers it now or drops it, never stores it.
    let s = f.sent_to("device-last");
    assert_eq!((s.android_ttl(), s.apns_expiration()), (Some("0s"), Some(last_secs.to_string().as_str())));
    assert_eq!(f.sent_to("device-year").android_ttl(), Some("2419200s"), "FCM keeps a message 4 weeks at most");
    // Without an expiry: the payload's ttl as before, no APNs headers, no collapse key.
    let s = f.sent_to("device-own");
    assert_eq!((s.android_ttl(), s.apns_expiration(), s.collapse_key()), (Some("60s"), None, None));
    let s = f.sent_to("device-plain");
    assert_eq!((s.android_ttl(), s.apns_collapse_id()), (None, None));
    assert!(s.message.get("apns").is_none(), "{}", s.message);
    f.emulator.stop().await;
}

#[test]
fn fcm_the_emulator_takes_android_ttl_as_a_protobuf_duration_of_at_most_four_weeks() {
    use emulators::fcm::valid_ttl;
    for ok in ["0s", "3600s", "1.5s", "3.000000001s", "2419200s", "2419200.000s"] {
        assert!(valid_ttl(ok), "{ok}");
    }
    for bad in ["", "s", "3600", "soon", "-1s", "1.s", ".5s", "3.0000000001s", "2419200.5s", "2419201s", "1e3s", " 1s"]
    {
        assert!(!valid_ttl(bad), "{bad:?}");
    }
}

#[actix_web::test]
async fn fcm_the_emulator_refuses_a_malformed_lifetime_field_with_invalid_argument_classified_perm() {
    let f = fixture().await;
    let http = awc::Client::default();
    let access = f.tokens.token(&http).await.expect("access token");
    let url = format!("{}/v1/projects/{}/messages:send", f.emulator.url(), emulators::fcm::PROJECT_ID);
    let cases = [
        ("message.android.ttl", json!({"token": "d", "android": {"ttl": "soon"}})),
        ("message.android.ttl", json!({"token": "d", "android": {"ttl": 3600}})),
        ("message.android.ttl", json!({"token": "d", "android": {"ttl": "2419201s"}})),
        ("message.android.collapse_key", json!({"token": "d", "android": {"collapse_key": 7}})),
        ("message.apns.headers", json!({"token": "d", "apns": {"headers": {"apns-expiration": 1700000000}}})),
    ];
    for (field, message) in cases {
        let mut resp =
            http.post(&url).bearer_auth(&access).send_json(&json!({ "message": message })).await.expect("post");
        let status = resp.status().as_u16();
        let body = resp.body().await.expect("body");
        let answer: Value = serde_json::from_slice(&body).expect("json");
        assert_eq!((status, answer["error"]["status"].as_str()), (400, Some("INVALID_ARGUMENT")), "{message}");
        assert_eq!(answer["error"]["details"][0]["fieldViolations"][0]["field"], json!(field), "{message}");
        // docs/providers.md: INVALID_ARGUMENT is PERM unless the violation is on message.token.
        let classified = notify_relay_engine::providers::fcm::classify(status, &body, None, 0);
        assert!(
            matches!(classified, Classified::Result(SendResult::Permanent { .. }, Health::Up)),
            "{message}: {classified:?}"
        );
    }
    assert!(f.emulator.sent().is_empty());
    f.emulator.stop().await;
}
