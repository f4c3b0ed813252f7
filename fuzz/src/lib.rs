//! What the fuzz targets check besides "never panics": each classified answer is exactly one
//! class (result and provider health agree) and its error is bounded.

use actors::fuzzing::{Health, SendResult, MAX_ERROR_BYTES, MAX_RETRY_AFTER};
use std::time::Duration;

/// The longest wait a classifier may ask for: a clamped Retry-After, or FCM's quota backoff.
const MAX_WAIT: Duration = MAX_RETRY_AFTER;

/// Panics (a crash for libFuzzer) unless the result and the health tell one story: AUTH both
/// ways, an outage only for a retry, delivered/permanent/invalid with the provider up, nothing
/// deferred (only the circuit defers), errors of at most MAX_ERROR_BYTES.
pub fn assert_one_class(result: &SendResult, health: &Health) {
    let coherent = match (result, health) {
        (SendResult::Auth { .. }, Health::AuthFailure(_)) => true,
        (_, Health::AuthFailure(_)) | (SendResult::Auth { .. }, _) => false,
        (SendResult::Retry { .. }, Health::Outage(_) | Health::Up) => true,
        (_, Health::Outage(_)) => false,
        (SendResult::Delivered { .. } | SendResult::Permanent { .. } | SendResult::InvalidToken { .. }, _) => true,
        (SendResult::Deferred { .. }, _) => false,
    };
    assert!(coherent, "{result:?} with {health:?}");
    assert_bounded(result.error().unwrap_or_default());
    if let Health::Outage(e) | Health::AuthFailure(e) = health {
        assert_bounded(e);
    }
    if let SendResult::Retry { after: Some(after), .. } = result {
        assert!(*after <= MAX_WAIT, "{after:?}");
    }
}

pub fn assert_bounded(error: &str) {
    assert!(error.len() <= MAX_ERROR_BYTES, "an error of {} bytes: {:.80}…", error.len(), error);
}

/// A big-endian u16 from the first two bytes (0 when short), and the rest.
pub fn take_u16(data: &[u8]) -> (u16, &[u8]) {
    match data {
        [a, b, rest @ ..] => (u16::from_be_bytes([*a, *b]), rest),
        _ => (0, &[]),
    }
}

/// The first byte (0 when empty), and the rest.
pub fn take_u8(data: &[u8]) -> (u8, &[u8]) {
    match data {
        [a, rest @ ..] => (*a, rest),
        _ => (0, &[]),
    }
}
