//! Integration tests against the real PostgreSQL and Redis (and a private Redis Cluster), with
//! the providers emulated on loopback. The provider clients against their emulators alone, which
//! need neither, are the `providers` target (`tests/providers/`).

mod admin;
mod admin_cli;
mod alerts;
mod api;
mod apns;
mod backlog;
mod claims;
mod cluster;
mod config;
mod dead_peers;
mod delivery;
mod devices;
mod doorbell;
mod email;
mod expo;
mod failures;
mod faults;
mod fcm;
mod helpers;
mod idempotency;
mod least_privilege;
mod lifetime;
mod limits;
mod loadgen;
mod outages;
mod poison;
mod postgres_tls;
mod producers;
mod producers_api;
mod receipts;
mod recovery;
mod redis_tls;
mod schema;
mod screening;
mod shutdown;
mod supabase_rls;
mod tokens;
