//! Expo answers → `classify_response` (push tickets) and `classify_receipts` (getReceipts).
//! Input: status (2 bytes), messages sent (1 byte, 1..=100), which API (1 byte), then the body.
//! One result of one class per message sent; bounded errors. Never a panic.
#![no_main]

use notify_relay_engine::fuzzing::{expo_classify, expo_classify_receipts, Health, SendResult};
use libfuzzer_sys::fuzz_target;
use notify_relay_fuzz::{assert_bounded, assert_one_class, take_u16, take_u8};
use std::time::Duration;

fuzz_target!(|data: &[u8]| {
    let (status, rest) = take_u16(data);
    let (n, rest) = take_u8(rest);
    let (api, body) = take_u8(rest);
    let n = usize::from(n % 100) + 1;
    if api % 2 == 0 {
        let retry_after = (status == 429).then(|| Duration::from_secs(u64::from(n as u8)));
        let response = expo_classify(status, body, retry_after, n);
        assert_eq!(response.results.len(), n);
        for result in &response.results {
            assert_one_class(result, &response.health);
        }
        // Credentials refused in any ticket are the project's problem.
        let any_auth = response.results.iter().any(|r| matches!(r, SendResult::Auth { .. }));
        assert_eq!(any_auth, matches!(response.health, Health::AuthFailure(_)));
    } else {
        match expo_classify_receipts(status, body) {
            Ok(receipts) => {
                assert_eq!(status, 200);
                for (_, result) in &receipts {
                    assert!(!matches!(result, SendResult::Deferred { .. }));
                    assert_bounded(result.error().unwrap_or_default());
                }
            }
            Err(error) => assert_bounded(&error.to_string()),
        }
    }
});
