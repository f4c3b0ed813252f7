//! The notify-relay engine.
//!
//! A row inserted into `notification` rings the listener's doorbell; the listener fans it out
//! to one [`job::Job`] per device and writes them to Redis streams ([`relay`]). Stream readers
//! read the streams and hand them to the dispatcher, which screens each entry against Postgres
//! and passes it to a per-provider pool of senders, whose results the outcome writer stores in
//! Postgres ([`store`]) before acknowledging them. The delay job brings retries back when they
//! are due; the claim job takes over what a dead process left pending, while the heartbeat
//! keeps what a live one holds from looking abandoned. The [`Engine`] starts them all under
//! supervisors.
//!
//! # Public surface
//!
//! What the binary (the HTTP API, the admin commands, start-up) and the emulators need, and no
//! more: [`Engine`] and its [`settings`]; the [`clock`] token sources and emulators read; the domain ([`job`]); the two stores the API reads
//! ([`store`] for Postgres, [`relay`] for Redis, named by [`Keys`]); the provider clients
//! ([`providers`]); the event names ([`events`]); Postgres TLS ([`tls`]); and a few types at the
//! root. The actors, the periodic jobs and the runtime are private. Two hidden modules exist
//! for the fuzz targets (`fuzzing`) and for the one test that assembles a pipeline by hand
//! (`parts`); neither is an API.
//!
//! # Layout
//!
//! | folder / module | what |
//! |---|---|
//! | `pipeline/` | the path of one notification: `listener` (LISTEN, fan-out, sweep) → `stream_reader` → `dispatcher` (screen, route) → `sender` (batches, circuit, rate limit) |
//! | `outcome` | the outcome writer: Postgres first, then Redis, then the permits |
//! | `periodic/` | one `Periodic<J>` actor and its jobs: `delay`, `claim`, `retention`, `receipts`, `heartbeat`, `alerts` |
//! | `runtime/` | `engine` (the supervisor tree and its wiring), `deps` (what every actor shares), `supervisor` (start, fail, restart), `registry` (mailbox counts, `Handle`) |
//! | `store/` | Postgres, by concern: `fanout`, `targets` (the screen), `outcomes`, `sweep`, `retention`, `receipts`, `api`, `pool` |
//! | `relay/` | Redis: streams, delayed sets, dead letters, idempotency keys, counters (`keys` names them) |
//! | `providers/` | one folder per provider: settings, client, `message`, `classify` (a pure function per answer table) |
//! | `job`, `payload` | the domain: a target as it travels, a payload parsed once |
//! | `circuit`, `ratelimit`, `inflight` | what stands between a delivery and its provider |
//! | `clock` | the time token sources, the JWKS cache and the emulators read (`SystemClock`, or a test's `ManualClock`) |
//! | `settings`, `secret`, `events`, `error`, `messages` | what the binary hands in (each configuration section is owned by the module that uses it; `settings` lists them, `settings::rules` holds the shared checks); `Secret`; the event names; errors; the typed actor messages |
//! | `retry` | `[retry]`: the backoff and deadline of a target |

// The public surface: see the crate docs.
pub mod clock;
pub mod events;
pub mod job;
pub mod providers;
pub mod relay;
pub mod settings;
pub mod store;
pub mod tls;

mod circuit;
mod error;
mod inflight;
mod keys;
mod messages;
mod operations;
mod outcome;
mod payload;
mod periodic;
mod pipeline;
mod ratelimit;
mod retry;
mod runtime;
mod secret;

pub use circuit::{CircuitSettings, Health};
pub use error::EngineError;
pub use keys::{delivered_ttl, Keys, GROUP};
pub use operations::{requeue_dead_letters, RequeueReport};
pub use periodic::retention::RetentionPolicy;
pub use ratelimit::Limits;
pub use runtime::engine::Engine;
pub use runtime::registry::{ActorSnapshot, Registry};

#[doc(hidden)]
pub mod fuzzing;

/// The engine's building blocks, for the test that wires part of a pipeline by hand (a sender
/// pool behind a dispatcher, without the engine). Not an API.
#[doc(hidden)]
pub mod parts {
    pub use crate::circuit::Circuit;
    pub use crate::inflight::{Claim, InFlight};
    pub use crate::outcome::OutcomeWriter;
    pub use crate::pipeline::dispatcher::{Dispatcher, Handle, SenderPool};
    pub use crate::pipeline::sender::{SendGuards, SenderActor};
    pub use crate::runtime::supervisor::Lifecycle;
}
