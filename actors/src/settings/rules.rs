//! The vocabulary every settings section checks itself with: [`SettingsError`] (a key and what
//! is wrong with it), range checks that print milliseconds as the `_ms` keys do, the [`millis`]
//! serde module behind every `Duration` field, and the readers of credential files. A leaf: it
//! names no other module of the engine but `secret`, so every section can use it.

use crate::secret::Secret;
use std::fmt;
use std::ops::RangeInclusive;
use std::path::Path;
use std::time::Duration;

pub const SECOND_MS: u64 = 1000;
pub const MINUTE_MS: u64 = 60 * SECOND_MS;
pub const HOUR_MS: u64 = 3600 * SECOND_MS;
pub const DAY_MS: u64 = 24 * HOUR_MS;

/// A setting that cannot be used: its key (`retry.max_age_ms`) and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{key}` {message}")]
pub struct SettingsError {
    pub key: &'static str,
    pub message: String,
}

impl SettingsError {
    pub fn new(key: &'static str, message: impl Into<String>) -> Self {
        SettingsError { key, message: message.into() }
    }
}

/// `value` must lie in `range`. Upper bounds matter as much as lower ones: a value past them is
/// a typo, and some would overflow a timer, an int4 or a date.
pub fn within<T: PartialOrd + fmt::Display>(
    key: &'static str,
    value: T,
    range: RangeInclusive<T>,
) -> Result<(), SettingsError> {
    match range.contains(&value) {
        true => Ok(()),
        false => {
            Err(SettingsError::new(key, format!("must be between {} and {}, got {value}", range.start(), range.end())))
        }
    }
}

/// The top of a duration range must not be below its bottom: `key` must be at least the
/// `floor` of `floor_key` (named with its value, in milliseconds).
pub fn at_least_ms(key: &'static str, value: Duration, floor_key: &str, floor: Duration) -> Result<(), SettingsError> {
    match value < floor {
        true => Err(SettingsError::new(key, format!("must be at least {floor_key} ({})", millis::of(floor)))),
        false => Ok(()),
    }
}

/// [`within`] for a duration, in milliseconds (as its `_ms` key says).
pub fn within_ms(key: &'static str, value: Duration, range: RangeInclusive<u64>) -> Result<(), SettingsError> {
    within(key, millis::of(value), range)
}

/// `url` must be an http(s) URL.
pub fn http_url(key: &'static str, url: &str) -> Result<(), SettingsError> {
    match url.starts_with("http://") || url.starts_with("https://") {
        true => Ok(()),
        false => Err(SettingsError::new(key, format!("must be an http(s) URL, got '{url}'"))),
    }
}

/// A file named by a setting, read (the error names the key and the path).
pub fn read_file(key: &'static str, path: &Path) -> Result<String, SettingsError> {
    std::fs::read_to_string(path).map_err(|e| SettingsError::new(key, format!("cannot read {}: {e}", path.display())))
}

/// The bytes of an optional file named by a setting (a CA bundle), read now.
pub fn read_optional(key: &'static str, path: Option<&Path>) -> Result<Option<Vec<u8>>, SettingsError> {
    path.map(|path| read_file(key, path).map(String::into_bytes)).transpose()
}

/// A credential given either as a file or inline; exactly one of the two. Returns its text and
/// the key it came from (for the errors about what it holds).
pub fn file_or_inline(
    (file_key, file): (&'static str, Option<&Path>),
    (inline_key, inline): (&'static str, Option<&Secret>),
) -> Result<(String, &'static str), SettingsError> {
    match (file, inline) {
        (Some(path), None) => Ok((read_file(file_key, path)?, file_key)),
        (None, Some(secret)) => Ok((secret.expose().to_string(), inline_key)),
        (Some(_), Some(_)) => Err(SettingsError::new(file_key, format!("and `{inline_key}` are both set; set one"))),
        (None, None) => {
            Err(SettingsError::new(file_key, format!("(or `{inline_key}`) must be set when the provider is enabled")))
        }
    }
}

/// `#[serde(with = "crate::settings::millis")]`: a [`Duration`] kept in the configuration as
/// whole milliseconds (the `_ms` keys). A value that is not a `u64` fails with its key.
pub mod millis {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    /// The duration in whole milliseconds (`u64::MAX` past it).
    pub fn of(value: Duration) -> u64 {
        u64::try_from(value.as_millis()).unwrap_or(u64::MAX)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        u64::deserialize(deserializer).map(Duration::from_millis)
    }

    pub fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(of(*value))
    }
}
