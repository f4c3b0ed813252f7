//! The Expo emulator's lean mode (`keep_arrivals_only`), which loadgen uses for runs of
//! millions: only which notification arrived when is kept. No Postgres or Redis needed.

use emulators::expo::ExpoEmulator;
use serde_json::{json, Value};
use uuid::Uuid;

async fn send(base: &str, messages: Value) -> Value {
    let client = awc::Client::default();
    let mut resp = client.post(format!("{base}/--/api/v2/push/send")).send_json(&messages).await.expect("send");
    assert_eq!(resp.status().as_u16(), 200);
    resp.json().await.expect("tickets")
}

#[actix_rt::test]
async fn lean_mode_keeps_arrivals_and_no_messages_and_answers_its_tickets_receipts_ok() {
    let expo = ExpoEmulator::start("127.0.0.1:0", None).await.expect("expo");
    let (before, during) = (Uuid::new_v4(), Uuid::new_v4());
    let to = "ExponentPushToken[lean]";
    send(&expo.url(), json!([{"to": to, "data": {"notification_id": before.to_string()}}])).await;

    expo.keep_arrivals_only();
    let answer = send(
        &expo.url(),
        json!([{"to": to, "data": {"notification_id": during.to_string()}}, {"to": to, "data": {"notification_id": "not-a-uuid"}}]),
    )
    .await;
    let tickets = answer["data"].as_array().expect("tickets");
    assert!(tickets.iter().all(|t| t["status"] == "ok"), "{answer}");

    assert_eq!(expo.sent_count(), 3, "every accepted message is counted");
    assert_eq!(expo.sent().len(), 1, "only the message from before lean mode is kept whole");
    let ids: Vec<Option<Uuid>> = expo.arrivals().into_iter().map(|(id, _)| id).collect();
    assert_eq!(ids, [Some(before), Some(during), None]);

    // No receipt is kept for a lean ticket, and its receipt says ok, as Expo's does for a
    // message that went on; an id that is no ticket at all is left out, as Expo does.
    let id = tickets[0]["id"].as_str().expect("ticket id");
    let client = awc::Client::default();
    let mut resp = client
        .post(format!("{}/--/api/v2/push/getReceipts", expo.url()))
        .send_json(&json!({"ids": [id, "not-a-ticket"]}))
        .await
        .expect("receipts");
    let receipts: Value = resp.json().await.expect("receipts body");
    assert_eq!(receipts["data"], json!({ id: {"status": "ok"} }), "{receipts}");
    expo.stop().await;
}
