//! What the actors run on: the [`engine`] that starts them from one [`deps::Deps`] bundle, the
//! [`supervisor`] that restarts them with backoff, and the [`registry`] that counts their
//! mailboxes and addresses them.

pub mod deps;
pub mod engine;
pub mod registry;
pub mod supervisor;
