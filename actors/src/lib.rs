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
pub mod claim;
pub mod delay;
pub mod deps;
pub mod dispatcher;
pub mod engine;
pub mod error;
pub mod events;
#[doc(hidden)]
pub mod fuzzing;
pub mod heartbeat;
pub mod inflight;
pub mod job;
pub mod keys;
pub mod listener;
pub mod messages;
pub mod operations;
pub mod outcome;
pub mod payload;
pub mod periodic;
pub mod providers;
pub mod ratelimit;
pub mod receipts;
pub mod registry;
pub mod relay;
pub mod retention;
pub mod sender;
pub mod settings;
pub mod store;
pub mod stream_reader;
pub mod supervisor;
pub mod tls;

pub use engine::Engine;
pub use error::EngineError;
