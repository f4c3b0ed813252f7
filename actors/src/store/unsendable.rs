//! Why a row read back from Postgres cannot be sent. Each reason becomes the `last_error` of
//! its notification (fan-out) or of its target (fan-out, sweep), with a text that names the
//! field, so the producer who wrote the row can see what to fix.

use crate::job::{BadTopic, Provider, UnknownName};
use crate::payload::PayloadError;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unsendable {
    #[error("channel: {0}")]
    Channel(UnknownName),
    #[error("priority: {0}")]
    Priority(UnknownName),
    /// A target's `delivery.provider` (sweep) is not a provider.
    #[error("provider: {0}")]
    TargetProvider(UnknownName),
    /// A device row written around the API names no provider.
    #[error(transparent)]
    DeviceProvider(UnknownName),
    #[error("provider {0} is not enabled in this deployment")]
    NotEnabled(Provider),
    /// An id or token over the relay's limit: it would travel in every stream entry and request.
    #[error("{field}: {bytes} bytes, over the limit of {limit}")]
    TooLong { field: &'static str, bytes: usize, limit: usize },
    #[error(transparent)]
    Payload(PayloadError),
    /// Postgres printed the payload longer than `payload.max_bytes`, so it was not read back.
    #[error("payload: over the limit of {0} bytes (payload.max_bytes)")]
    PayloadOverLimit(usize),
    #[error("payload: missing")]
    PayloadMissing,
    #[error("payload: unreadable: {0}")]
    PayloadUnreadable(String),
    #[error(transparent)]
    Topic(BadTopic),
    #[error("user {user} has no active device")]
    NoDevice { user: String },
    /// The row's `channel` names a provider the user has no active device with.
    #[error("user {user} has no active {channel} device")]
    NoDeviceOnChannel { user: String, channel: String },
}
