//! The failure plan every emulator takes, through each HTTP emulator's admin call: the same
//! JSON fails the next requests, with the provider's usual `Retry-After` unless the plan sets
//! one. No Postgres or Redis needed.

use emulators::expo::ExpoEmulator;
use emulators::fcm::FcmEmulator;
use serde_json::json;

/// Posts `plan` to `/__emulator/fail`, then one send to `path`: its status and `Retry-After`.
async fn failed_send(base: &str, path: &str, plan: serde_json::Value) -> (u16, Option<String>) {
    let client = awc::Client::default();
    let set = client.post(format!("{base}/__emulator/fail")).send_json(&plan).await.expect("admin call");
    assert_eq!(set.status().as_u16(), 204);
    let resp = client.post(format!("{base}{path}")).send_json(&json!({})).await.expect("send");
    let retry_after = resp.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_string);
    (resp.status().as_u16(), retry_after)
}

#[actix_rt::test]
async fn expo_answers_the_plan_with_its_own_or_the_plans_retry_after() {
    let expo = ExpoEmulator::start("127.0.0.1:0", None).await.expect("expo");
    let send = "/--/api/v2/push/send";
    let plan = json!({"status": 429, "count": 1});
    assert_eq!(failed_send(&expo.url(), send, plan).await, (429, Some("1".into())));
    let plan = json!({"status": 503, "count": 1, "retry_after_secs": 7});
    assert_eq!(failed_send(&expo.url(), send, plan).await, (503, Some("7".into())));
    assert_eq!(expo.requests(), 2);
    expo.stop().await;
}

#[actix_rt::test]
async fn fcm_answers_the_plan_with_its_own_or_the_plans_retry_after() {
    let fcm = FcmEmulator::start("127.0.0.1:0").await.expect("fcm");
    let send = "/v1/projects/notify-relay-emulator/messages:send";
    let plan = json!({"status": 503, "count": 1});
    assert_eq!(failed_send(&fcm.url(), send, plan).await, (503, Some("1".into())));
    let plan = json!({"status": 500, "code": "INTERNAL", "for_ms": 60_000, "retry_after_secs": 9});
    assert_eq!(failed_send(&fcm.url(), send, plan).await, (500, Some("9".into())));
    let plan = json!({"status": 400, "count": 1});
    assert_eq!(failed_send(&fcm.url(), send, plan).await, (400, None));
    fcm.stop().await;
}
