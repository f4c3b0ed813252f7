//! Integration tests against the real PostgreSQL and Redis, with Expo emulated on loopback.

mod admin;
mod admin_cli;
mod api;
mod apns;
mod config;
mod delivery;
mod email;
mod expo;
mod failures;
mod faults;
mod fcm;
mod helpers;
mod idempotency;
mod limits;
mod receipts;
mod recovery;
mod schema;
mod shutdown;
mod tokens;
