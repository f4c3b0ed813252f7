//! The notify-relay engine.
//!
//! A row inserted into `notification` rings the [`listener`]'s doorbell; the listener fans it
//! out to one [`job::Job`] per device and writes them to Redis streams ([`relay`]).
//! [`stream_reader`]s read the streams and hand them to the [`dispatcher`], which screens each
//! entry against Postgres and passes it to a per-provider pool of [`sender`]s, whose results the
//! [`outcome`] writer stores in Postgres ([`store`]) before acknowledging them. The [`delay`] job
//! brings retries back when they are due; the [`claim`] job takes over what a dead process left
//! pending, while the [`heartbeat`] keeps what a live one holds from looking abandoned.
//! [`engine`] starts them all under supervisors.
//!
//! # Layout
//!
//! | folder / module | what |
//! |---|---|
//! | `pipeline/` | the path of one notification: `listener` (LISTEN, fan-out, sweep) → `stream_reader` → `dispatcher` (screen, route) → `sender` (batches, circuit, rate limit) |
//! | `outcome` | the outcome writer: Postgres first, then Redis, then the permits |
//! | `periodic/` | one `Periodic<J>` actor and its jobs: `delay`, `claim`, `retention`, `receipts`, `heartbeat` |
//! | `runtime/` | `engine` (the supervisor tree and its wiring), `deps` (what every actor shares), `supervisor` (start, fail, restart), `registry` (mailbox counts, `Handle`) |
//! | `store/` | Postgres, by concern: `fanout`, `targets` (the screen), `outcomes`, `sweep`, `retention`, `receipts`, `api`, `pool` |
//! | `relay/` | Redis: streams, delayed sets, dead letters, idempotency keys, counters (`keys` names them) |
//! | `providers/` | one folder per provider: settings, client, `message`, `classify` (a pure function per answer table) |
//! | `job`, `payload` | the domain: a target as it travels, a payload parsed once |
//! | `circuit`, `ratelimit`, `inflight` | what stands between a delivery and its provider |
//! | `clock` | the time token sources, the JWKS cache and the emulators read (`SystemClock`, or a test's `ManualClock`) |
//! | `settings`, `events`, `error`, `messages` | what the binary hands in; the event names; errors; the typed actor messages |

pub mod circuit;
pub mod clock;
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

// The old flat paths (`notify_relay_engine::dispatcher`, `crate::supervisor`, …) stay, for the binary, the
// tests and the modules that name them.
pub use periodic::{claim, delay, heartbeat, receipts, retention};
pub use pipeline::{dispatcher, listener, sender, stream_reader};
pub use runtime::{deps, engine, registry, supervisor};

pub use engine::Engine;
pub use error::EngineError;
