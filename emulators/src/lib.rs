//! Loopback emulators of the push providers, faithful to docs/providers.md (including their
//! errors), and the load generator that drives the relay against them.
//!
//! The integration tests use the emulators directly; the service binary links this crate only
//! for its `notify-relay mock-providers` (staging smoke tests without real devices) and
//! `notify-relay loadgen` (benchmarks) commands. The engine crate (`actors/`) never depends on
//! it, so no emulator key is compiled into the engine.
//!
//! # Layout
//!
//! - [`expo`], [`fcm`] (with Google's OAuth token endpoint), [`apns`] (HTTP/2 over TLS) and
//!   [`smtp`]: one emulator per provider. Each starts on a loopback address, records what it
//!   accepted, and takes failure injection: a word in the device token or address, or an admin
//!   call.
//! - [`FailPlan`]: the whole-request failure every emulator takes ("answer 503 to the next 3
//!   requests", "421 for 10 s"), and the bookkeeping of what is left of it (private `failure`).
//! - `http` and `tls` (private): the server setup the three HTTP emulators share, and the
//!   self-signed certificates of the TLS ones (APNs, SMTP with STARTTLS or implicit TLS).
//! - [`serve`] and [`MockArgs`]: `notify-relay mock-providers`, all four emulators until the
//!   process is asked to stop.
//! - [`loadgen`]: `notify-relay loadgen`, an end-to-end benchmark against one emulator.
//! - [`testing`]: what both integration-test targets share (`eventually`, `TempDir`,
//!   `RelayProcess`, `client_job`).
//!
//! The APNs and FCM emulators judge token ages on a [`Clock`](notify_relay_engine::clock::Clock)
//! (`with_clock`): the system's, or a test's `ManualClock` shared with the client under test.
//! - `keys/`: the FCM emulator's fixed service-account key (it signs nothing but requests to the
//!   emulator; the APNs key and all certificates are generated at start).

pub mod apns;
pub mod cpu;
pub mod expo;
mod failure;
pub mod fcm;
mod http;
pub mod loadgen;
mod serve;
pub mod smtp;
pub mod testing;
mod tls;

pub use failure::FailPlan;
pub use serve::{serve, MockArgs};
