//! The `notify-relay` binary's library: CLI, configuration, telemetry, HTTP API, start-up
//! wiring and the admin commands. The relay engine itself is the `notify-relay-engine` crate
//! (folder `actors/`); the provider emulators and the load generator (`mock-providers`,
//! `loadgen`) are the `emulators` crate.

pub mod admin;
pub mod auth;
pub mod cli;
pub mod configuration;
pub mod db;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod migrate;
pub mod routes;
pub mod startup;
pub mod telemetry;
