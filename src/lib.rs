//! The `notify-relay` binary's library: CLI, configuration, telemetry, HTTP API, start-up
//! wiring, provider emulators and the load generator. The relay engine itself is the `actors`
//! crate.

pub mod admin;
pub mod auth;
pub mod cli;
pub mod configuration;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod loadgen;
pub mod migrate;
pub mod mock;
pub mod routes;
pub mod startup;
pub mod telemetry;
