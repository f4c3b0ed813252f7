//! `Secret`: a configuration value (password, token, key) that must never be printed.

use serde::Deserialize;
use std::fmt;

/// A value that must never be printed: `Debug` shows `[redacted]` (there is no `Display`: a
/// secret is only ever handed on through [`Secret::expose`]).
#[derive(Clone, Deserialize, PartialEq, Eq)]
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
