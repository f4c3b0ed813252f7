//! Provider clients: how one batch of jobs becomes requests to a push service, and how each
//! answer is classified (see PROVIDERS.md).

pub mod expo;

use crate::circuit::Health;
use crate::job::{Job, Provider, SendResult};
use futures_util::future::LocalBoxFuture;
use std::time::Duration;

/// One provider's client, owned by a SenderActor on its own arbiter (awc clients are `!Send`).
pub trait ProviderClient {
    fn provider(&self) -> Provider;
    /// The most jobs one request may carry (100 for Expo).
    fn max_batch(&self) -> usize;
    /// How long a sender waits to fill a batch before sending what it has.
    fn flush_after(&self) -> Duration;
    /// Sends the jobs: one classified result per job, in order, and how the request as a whole
    /// went (for the circuit breaker).
    fn send(&self, jobs: &[Job]) -> LocalBoxFuture<'static, Response>;
}

/// What one request produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    pub results: Vec<SendResult>,
    pub health: Health,
}

impl Response {
    /// The whole request failed the same way for every message.
    pub fn all(n: usize, result: SendResult, health: Health) -> Response {
        Response { results: vec![result; n], health }
    }
}

/// Builds a client; called on the sender's arbiter thread.
pub type ClientFactory = std::sync::Arc<dyn Fn() -> Box<dyn ProviderClient> + Send + Sync>;
