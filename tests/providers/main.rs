//! The provider clients against their emulators, and the emulators themselves: every row of
//! docs/providers.md's tables, the token rules, connection handling. No PostgreSQL, no Redis — these
//! run anywhere (`cargo nextest run --test providers`); the relay end to end is `tests/relay/`.
//!
//! Time-based token rules (APNs' 20/50/60 minutes, FCM's access-token hour and the memory of a
//! failed token request) are judged on a `ManualClock` shared by the client and its emulator:
//! the tests move it instead of waiting.

mod apns;
mod email;
mod expo;
mod fcm;
mod mock_providers;
