//! FCM answers → `classify` (messages:send) and `token_answer` (the OAuth token endpoint).
//! Input: status (2 bytes), attempt (1 byte), which endpoint and Retry-After (1 byte), body.
//! One class per answer, a refresh only for a 401, tokens used at most an hour, bounded errors.
#![no_main]

use notify_relay_engine::fuzzing::{fcm_classify, fcm_token_answer, FcmClassified, FcmTokenError};
use libfuzzer_sys::fuzz_target;
use notify_relay_fuzz::{assert_bounded, assert_one_class, take_u16, take_u8};
use std::time::Duration;

fuzz_target!(|data: &[u8]| {
    let (status, rest) = take_u16(data);
    let (attempt, rest) = take_u8(rest);
    let (flags, body) = take_u8(rest);
    if flags & 1 == 0 {
        let retry_after = (flags & 2 != 0).then(|| Duration::from_secs(u64::from(flags) * 97));
        match fcm_classify(status, body, retry_after, u32::from(attempt % 4)) {
            FcmClassified::Result(result, health) => assert_one_class(&result, &health),
            FcmClassified::RefreshToken => assert_eq!(status, 401),
        }
    } else {
        match fcm_token_answer(status, body) {
            Ok((_, refresh_in)) => assert!(status == 200 && refresh_in <= Duration::from_secs(3600)),
            Err(FcmTokenError::Refused(e) | FcmTokenError::Unavailable(e)) => assert_bounded(&e),
        }
    }
});
