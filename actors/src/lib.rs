//! The notify-relay engine.
//!
//! A row inserted into `notification` rings the [`listener`]'s doorbell; the listener fans it
//! out to one [`job::Job`] per device and writes them to Redis streams ([`relay`]).
//! [`stream_reader`]s read the streams and hand jobs to per-provider pools of [`sender`]s,
//! whose results the [`outcome`] writer stores in Postgres ([`store`]) before acknowledging
//! them. The [`delay`] actor brings retries back when they are due; the [`claim`] actor takes
//! over what a dead process left pending, while the [`heartbeat`] keeps what a live one holds
//! from looking abandoned. [`engine`] starts them all under supervisors.

pub mod circuit;
pub mod error;
pub mod events;
#[doc(hidden)]
pub mod fuzzing;
pub mod inflight;
pub mod job;
pub mod keys;
pub mod messages;
pub mod operations;
pub mod outcome;
pub mod payload;
pub mod periodic;
pub mod pipeline;
pub mod providers;
pub mod ratelimit;
pub mod relay;
pub mod runtime;
pub mod settings;
pub mod store;
pub mod tls;

// The old flat paths (`actors::dispatcher`, `crate::supervisor`, …) stay, for the binary, the
// tests and the modules that name them.
pub use periodic::{claim, delay, heartbeat, receipts, retention};
pub use pipeline::{dispatcher, listener, sender, stream_reader};
pub use runtime::{deps, engine, registry, supervisor};

pub use engine::Engine;
pub use error::EngineError;
