//! The parsers of outside input, for the cargo-fuzz targets in `fuzz/` (`scripts/fuzz`): stream
//! entries, and each provider's answer classifier. Not an API: nothing else may use it.

pub use crate::circuit::Health;
pub use crate::job::{Job, SendResult, MAX_ERROR_BYTES};
pub use crate::providers::apns::{answer as apns_answer, classify as apns_classify};
pub use crate::providers::email::{
    accepted as smtp_accepted, classify as smtp_classify, enhanced_code as smtp_enhanced_code, Failure as SmtpFailure,
};
pub use crate::providers::expo::{classify_receipts as expo_classify_receipts, classify_response as expo_classify};
pub use crate::providers::fcm::{
    classify as fcm_classify, token_answer as fcm_token_answer, Classified as FcmClassified,
    TokenError as FcmTokenError,
};
pub use crate::providers::{retry_after, MAX_RETRY_AFTER};
pub use crate::relay::Entry;
/// The types the parsers take, so that the fuzz crate builds them with the versions used here.
pub use awc::http::header::{HeaderMap, HeaderName, HeaderValue};
/// The headers of an APNs answer: its client speaks HTTP/2 through `h2`, whose `http` types these are.
pub use http::{HeaderMap as H2HeaderMap, HeaderName as H2HeaderName, HeaderValue as H2HeaderValue};
pub use lettre::transport::smtp::response::Response as SmtpReply;
pub use redis::streams::StreamId;
pub use redis::Value as RedisValue;

/// `relay::parse_entry`: one stream entry as a reader sees it.
pub fn parse_entry(shard: u16, id: StreamId) -> Entry {
    crate::relay::parse_entry(shard, id)
}

/// The payload decoder every notification row goes through at fan-out (`payload::text`).
pub use crate::payload::{readable as payload_readable, Payload, MAX_DEPTH as MAX_PAYLOAD_DEPTH};

/// A classified answer is exactly one class: the result and the provider's health agree (a
/// credentials problem is AUTH both ways; an outage is retried; what was delivered, refused for
/// good or for its token says the provider is up), no classifier defers (only the circuit does),
/// errors are bounded, and no wait is longer than a clamped Retry-After or FCM's quota backoff.
/// Panics otherwise: shared by the classifiers' property tests and the fuzz targets.
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
        assert!(*after <= MAX_RETRY_AFTER.max(crate::providers::fcm::QUOTA_BACKOFF), "{after:?}");
    }
}

/// An error of at most [`MAX_ERROR_BYTES`].
pub fn assert_bounded(error: &str) {
    assert!(error.len() <= MAX_ERROR_BYTES, "an error of {} bytes: {:.80}…", error.len(), error);
}
