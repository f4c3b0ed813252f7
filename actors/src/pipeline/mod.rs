//! The pipeline a notification travels, in order: the [`listener`] and its [`drain`]ers turn
//! committed rows into stream entries; a [`stream_reader`] per shard reads them; the
//! [`dispatcher`] screens them against Postgres and hands them to a provider's pool of
//! [`sender`]s; the outcome writer ([`crate::outcome`]) stores what came of each send and only
//! then acknowledges the entry.

pub mod dispatcher;
pub mod drain;
pub mod listener;
pub mod sender;
pub mod stream_reader;
