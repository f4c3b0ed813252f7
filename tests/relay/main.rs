//! Integration tests against the real PostgreSQL and Redis, with Expo emulated on loopback.

mod admin;
mod config;
mod delivery;
mod email;
mod failures;
mod faults;
mod helpers;
mod idempotency;
mod limits;
mod receipts;
mod recovery;
mod schema;
mod shutdown;
