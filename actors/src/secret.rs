//! `Secret`: a configuration value (password, token, key) that must never be printed. It lives
//! in the engine so that the engine's own settings sections (provider credentials) can hold it;
//! the binary re-exports it from its configuration module.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A value that must never be printed: `Debug` shows `[redacted]` (there is no `Display`: a
/// secret is only ever handed on through [`Secret::expose`]).
///
/// `Serialize` writes the value itself: it exists to hand settings to a child process (the
/// tests start the binary with their typed settings). Never serialize settings into a log.
#[derive(Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    /// The secret itself, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}
