//! APNs answers → `answer` (status, headers, body) → `classify`. Input: status (2 bytes), a
//! header block (1 byte of length, then `name:value` lines), then the body. One class per
//! answer, Retry-After clamped, the apns-id kept on a 200, bounded errors. Never a panic.
#![no_main]

use notify_relay_engine::fuzzing::MAX_RETRY_AFTER;
use notify_relay_engine::fuzzing::{apns_answer, apns_classify, retry_after, HeaderMap, HeaderName, HeaderValue, SendResult};
use notify_relay_engine::fuzzing::{H2HeaderMap, H2HeaderName, H2HeaderValue};
use libfuzzer_sys::fuzz_target;
use notify_relay_fuzz::{assert_one_class, take_u16, take_u8};

fuzz_target!(|data: &[u8]| {
    let (status, rest) = take_u16(data);
    let (len, rest) = take_u8(rest);
    let (block, body) = rest.split_at(usize::from(len).min(rest.len()));
    // The same header block as the HTTP/1 clients' map (Retry-After) and as the APNs client's.
    let mut headers = HeaderMap::new();
    let mut h2_headers = H2HeaderMap::new();
    for line in block.split(|b| *b == b'\n') {
        let Some(colon) = line.iter().position(|b| *b == b':') else { continue };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
            headers.append(name, value);
        }
        if let (Ok(name), Ok(value)) = (H2HeaderName::from_bytes(name), H2HeaderValue::from_bytes(value)) {
            h2_headers.append(name, value);
        }
    }
    assert!(retry_after(&headers).is_none_or(|d| d <= MAX_RETRY_AFTER));
    let a = apns_answer(status, &h2_headers, body);
    let (result, health) = apns_classify(a.status, &a.reason, a.timestamp, a.apns_id.clone(), a.retry_after);
    assert_one_class(&result, &health);
    if status == 200 {
        assert_eq!(result, SendResult::Delivered { provider_message_id: a.apns_id });
    }
});
