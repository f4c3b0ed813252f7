//! `notification.payload` as a producer wrote it, parsed once at fan-out into a payload every
//! sender can map without surprises — or refused with an error that names the field.
//!
//! Postgres accepts more than a JSON parser does: `jsonb` stores numbers beyond f64 (`1e400`),
//! nests as deep as its stack allows and holds up to 255 MB. So the payload is read as text
//! (`payload::text`), measured, checked for depth before it is parsed, and parsed with
//! `serde_path_to_error` so that even a number out of range is reported at its path
//! (`payload.data.amount: number out of range`). A row that fails here is failed on its own;
//! it never stops the batch it was claimed with.

use crate::settings::rules::{within, SettingsError};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::fmt;

/// `[payload]`.
#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PayloadSettings {
    /// Largest `notification.payload` sent, in bytes as Postgres prints the jsonb; a larger one
    /// fails its notification with a `last_error` naming the limit.
    pub max_bytes: usize,
}

/// Every provider's own limit fits under the smallest accepted `payload.max_bytes`.
pub const MIN_PAYLOAD_BYTES: u64 = 4 * 1024;
/// A payload is copied into every target's stream entry: beyond this, Redis and the fan-out
/// pay for what no provider accepts.
pub const MAX_PAYLOAD_BYTES: u64 = 1024 * 1024;

impl PayloadSettings {
    pub fn validate(&self) -> Result<(), SettingsError> {
        within("payload.max_bytes", self.max_bytes as u64, MIN_PAYLOAD_BYTES..=MAX_PAYLOAD_BYTES)
    }
}

/// Deepest nesting accepted (objects and arrays; the payload object itself is level 1).
/// serde_json refuses more than 128; providers accept far less in practice.
pub const MAX_DEPTH: usize = 32;

/// APNs refuses an `apns-collapse-id` over 64 bytes.
pub const MAX_COLLAPSE_ID_BYTES: usize = 64;

/// Why a payload cannot be sent; `Display` names the field, as `last_error` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PayloadError {
    /// Over `payload.max_bytes` (measured as Postgres prints the jsonb).
    TooLarge { bytes: usize, limit: usize },
    /// Objects and arrays nested deeper than [`MAX_DEPTH`].
    TooDeep { limit: usize },
    /// Not readable as JSON by the relay (a number beyond f64, …), at this path.
    Unreadable { path: String, reason: String },
    /// The payload is not an object.
    NotAnObject { found: &'static str },
    /// A field of the wrong type (`expected` says what it must be).
    WrongType { field: String, expected: &'static str, found: String },
    /// A field that becomes a header holds a control character.
    ControlCharacter { field: &'static str },
    /// A field over a provider's limit.
    FieldTooLong { field: &'static str, bytes: usize, limit: usize },
}

impl fmt::Display for PayloadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PayloadError::TooLarge { bytes, limit } => {
                write!(f, "payload: {bytes} bytes, over the limit of {limit} (payload.max_bytes)")
            }
            PayloadError::TooDeep { limit } => write!(f, "payload: nested deeper than {limit} levels"),
            PayloadError::Unreadable { path, reason } => write!(f, "{path}: {reason}"),
            PayloadError::NotAnObject { found } => write!(f, "payload must be a JSON object, got {found}"),
            PayloadError::WrongType { field, expected, found } => {
                write!(f, "payload.{field} must be {expected}, got {found}")
            }
            PayloadError::ControlCharacter { field } => {
                write!(f, "payload.{field} must not contain control characters (it becomes a header)")
            }
            PayloadError::FieldTooLong { field, bytes, limit } => {
                write!(f, "payload.{field} is {bytes} bytes, over the limit of {limit}")
            }
        }
    }
}

impl std::error::Error for PayloadError {}

/// A payload that passed every check: a JSON object whose known fields have the types the
/// senders map (unknown fields are kept and ignored by the senders).
#[derive(Debug, Clone, PartialEq)]
pub struct Payload(Map<String, Value>);

/// What type each known field must have.
#[derive(Clone, Copy)]
enum Kind {
    Text,
    /// A string that becomes a header (email subject, APNs collapse id): no control characters.
    HeaderText,
    Object,
    Count,
    Flag,
}

/// The fields the senders read, and their kinds (README: "The payload").
const FIELDS: [(&str, Kind); 14] = [
    ("title", Kind::Text),
    ("body", Kind::Text),
    ("subtitle", Kind::Text),
    ("sound", Kind::Text),
    ("html", Kind::Text),
    ("channelId", Kind::Text),
    ("categoryId", Kind::Text),
    ("subject", Kind::HeaderText),
    ("collapse_id", Kind::HeaderText),
    ("data", Kind::Object),
    ("badge", Kind::Count),
    ("ttl", Kind::Count),
    ("expiration", Kind::Count),
    ("mutableContent", Kind::Flag),
];

impl Payload {
    /// Parses a payload as Postgres prints it (`payload::text`). `max_bytes` is
    /// `payload.max_bytes`.
    pub fn parse(text: &str, max_bytes: usize) -> Result<Payload, PayloadError> {
        if text.len() > max_bytes {
            return Err(PayloadError::TooLarge { bytes: text.len(), limit: max_bytes });
        }
        if nesting_exceeds(text.as_bytes(), MAX_DEPTH) {
            return Err(PayloadError::TooDeep { limit: MAX_DEPTH });
        }
        let mut de = serde_json::Deserializer::from_str(text);
        let value: Value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let path = match e.path().to_string() {
                p if p == "." => "payload".to_string(),
                p => format!("payload.{}", shortened(&p, MAX_PATH_BYTES)),
            };
            unreadable(path, &e.into_inner())
        })?;
        de.end().map_err(|e| unreadable("payload".into(), &e))?;
        Payload::from_value(value)
    }

    /// Checks an already parsed payload (depth and size were bounded by whoever parsed it).
    pub fn from_value(value: Value) -> Result<Payload, PayloadError> {
        let Value::Object(map) = value else {
            return Err(PayloadError::NotAnObject { found: json_type(&value) });
        };
        for (field, kind) in FIELDS {
            let Some(v) = map.get(field).filter(|v| !v.is_null()) else { continue };
            check_field(field, kind, v)?;
        }
        Ok(Payload(map))
    }

    pub fn into_value(self) -> Value {
        Value::Object(self.0)
    }
}

/// Reads a stored payload to show it back (the pull API), whatever it holds: its JSON when the
/// relay can read it within `max_bytes`, else `None` (the failure's `error` says why).
pub fn readable(text: &str, max_bytes: usize) -> Option<Value> {
    if text.len() > max_bytes || nesting_exceeds(text.as_bytes(), MAX_DEPTH) {
        return None;
    }
    serde_json::from_str(text).ok()
}

/// Longest path quoted in an error: keys are the producer's, and may be long.
const MAX_PATH_BYTES: usize = 200;

/// `text`, cut at a character boundary to at most `max` bytes (with "…" when cut).
fn shortened(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// serde_json's message without its " at line L column C": the path says more.
fn unreadable(path: String, e: &serde_json::Error) -> PayloadError {
    let reason = e.to_string();
    let reason = reason.split(" at line ").next().unwrap_or_default().to_string();
    PayloadError::Unreadable { path, reason }
}

fn check_field(field: &'static str, kind: Kind, v: &Value) -> Result<(), PayloadError> {
    let wrong = |expected: &'static str| PayloadError::WrongType {
        field: field.to_string(),
        expected,
        found: match v {
            Value::Number(n) => n.to_string(),
            other => json_type(other).to_string(),
        },
    };
    match (kind, v) {
        (Kind::Text, Value::String(_)) | (Kind::Object, Value::Object(_)) | (Kind::Flag, Value::Bool(_)) => Ok(()),
        (Kind::HeaderText, Value::String(s)) => {
            if s.chars().any(char::is_control) {
                return Err(PayloadError::ControlCharacter { field });
            }
            if field == "collapse_id" && s.len() > MAX_COLLAPSE_ID_BYTES {
                return Err(PayloadError::FieldTooLong { field, bytes: s.len(), limit: MAX_COLLAPSE_ID_BYTES });
            }
            Ok(())
        }
        (Kind::Count, Value::Number(n)) if n.as_u64().is_some() => Ok(()),
        (Kind::Text | Kind::HeaderText, _) => Err(wrong("a string")),
        (Kind::Object, _) => Err(wrong("an object")),
        (Kind::Count, _) => Err(wrong("a non-negative integer")),
        (Kind::Flag, _) => Err(wrong("a boolean")),
    }
}

/// Whether objects and arrays nest deeper than `limit` (brackets inside strings do not count).
/// Linear, allocation-free, and safe on text that is not JSON at all.
fn nesting_exceeds(text: &[u8], limit: usize) -> bool {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in text {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > limit {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

pub fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MAX: usize = 16 * 1024;

    fn err(text: &str) -> String {
        Payload::parse(text, MAX).unwrap_err().to_string()
    }

    #[test]
    fn a_number_beyond_f64_is_refused_at_its_path() {
        assert_eq!(err(r#"{"title": "t", "data": {"amount": 1e400}}"#), "payload.data.amount: number out of range");
        // Postgres prints numeric without an exponent: 1e400 comes back as 401 digits.
        let digits = format!(r#"{{"data": {{"n": [1, 1{}]}}}}"#, "0".repeat(400));
        assert_eq!(err(&digits), "payload.data.n[1]: number out of range");
    }

    #[test]
    fn nesting_deeper_than_the_limit_is_refused() {
        let deep = format!(r#"{{"data": {{"d": {}{}}}}}"#, "[".repeat(300), "]".repeat(300));
        assert_eq!(err(&deep), format!("payload: nested deeper than {MAX_DEPTH} levels"));
        // Brackets in strings are text, not nesting.
        let text = format!(r#"{{"body": "{}"}}"#, "[".repeat(300));
        assert!(Payload::parse(&text, MAX).is_ok());
        let at_limit = format!("{}{}", "{\"a\":".repeat(MAX_DEPTH), "}".repeat(MAX_DEPTH)).replace(":}", ":1}");
        assert!(Payload::parse(&at_limit, MAX).is_ok(), "{at_limit}");
    }

    #[test]
    fn a_payload_over_max_bytes_is_refused_with_its_size() {
        let big = format!(r#"{{"body": "{}"}}"#, "x".repeat(MAX));
        assert_eq!(err(&big), format!("payload: {} bytes, over the limit of {MAX} (payload.max_bytes)", big.len()));
    }

    #[test]
    fn a_payload_must_be_an_object() {
        assert_eq!(err("[1, 2]"), "payload must be a JSON object, got an array");
        assert_eq!(err(r#""hello""#), "payload must be a JSON object, got a string");
        assert_eq!(err("null"), "payload must be a JSON object, got null");
    }

    #[test]
    fn known_fields_must_have_their_type() {
        let cases = [
            (r#"{"title": 5}"#, "payload.title must be a string, got 5"),
            (r#"{"data": [1]}"#, "payload.data must be an object, got an array"),
            (r#"{"badge": -1}"#, "payload.badge must be a non-negative integer, got -1"),
            (r#"{"ttl": "1h"}"#, "payload.ttl must be a non-negative integer, got a string"),
            (r#"{"expiration": 1.5}"#, "payload.expiration must be a non-negative integer, got 1.5"),
            (r#"{"mutableContent": "yes"}"#, "payload.mutableContent must be a boolean, got a string"),
            (r#"{"channelId": {}}"#, "payload.channelId must be a string, got an object"),
        ];
        for (text, expected) in cases {
            assert_eq!(err(text), expected, "{text}");
        }
        assert!(
            Payload::parse(r#"{"title": null, "badge": 3, "ttl": 0, "mutableContent": true, "x": [1]}"#, MAX).is_ok()
        );
    }

    #[test]
    fn fields_that_become_headers_refuse_control_characters() {
        assert_eq!(
            err(r#"{"collapse_id": "order\n42"}"#),
            "payload.collapse_id must not contain control characters (it becomes a header)"
        );
        assert_eq!(
            err(r#"{"subject": "a\u0000b"}"#),
            "payload.subject must not contain control characters (it becomes a header)"
        );
        let long = format!(r#"{{"collapse_id": "{}"}}"#, "c".repeat(65));
        assert_eq!(err(&long), "payload.collapse_id is 65 bytes, over the limit of 64");
        // Titles and bodies may hold newlines.
        assert!(Payload::parse(r#"{"title": "two\nlines", "collapse_id": "ünïcode"}"#, MAX).is_ok());
    }

    #[test]
    fn a_stored_payload_is_shown_back_only_when_readable() {
        assert_eq!(readable(r#"{"title": 5}"#, MAX), Some(serde_json::json!({"title": 5})));
        assert_eq!(readable(r#"{"n": 1e400}"#, MAX), None);
        assert_eq!(readable(&format!("{}{}", "[".repeat(200), "]".repeat(200)), MAX), None);
        assert_eq!(readable(&format!(r#""{}""#, "x".repeat(MAX)), MAX), None);
    }

    /// Found by the `payload` fuzz target: a path of long keys made an error as long as the
    /// payload.
    #[test]
    fn an_error_quotes_at_most_200_bytes_of_its_path() {
        let key = "k".repeat(3000);
        let raw = format!("{{\"{key}\": {{\"é{key}\": \"a\u{0}\"}}}}");
        let err = Payload::parse(&raw, usize::MAX).unwrap_err().to_string();
        assert!(err.len() <= 300, "{} bytes", err.len());
        assert!(err.starts_with("payload.kkk"), "{err}");
        assert!(err.ends_with("…: control character (\\u0000-\\u001F) found while parsing a string"), "{err}");
    }

    #[test]
    fn text_that_is_not_json_is_refused_not_panicked_on() {
        for text in ["", "{", "}", "]]]]", "{\"a\":", "\u{0}", "{\"a\": 1} trailing"] {
            assert!(Payload::parse(text, MAX).is_err(), "{text:?}");
        }
    }

    /// Any JSON value, nested up to `depth` levels.
    fn json(depth: u32) -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
            ".{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(depth, 64, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map("[a-zA-Z_]{1,12}", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// Whatever the text, parsing ends in a payload or in an error that names the payload.
        #[test]
        fn any_text_parses_or_is_refused_naming_the_payload(text in ".{0,300}") {
            if let Err(e) = Payload::parse(&text, MAX) {
                prop_assert!(e.to_string().starts_with("payload"), "{}", e);
            }
            let _ = readable(&text, MAX);
        }

        /// An accepted payload survives the stream: serialized and parsed again, it is the same.
        #[test]
        fn an_accepted_payload_round_trips(value in json(6)) {
            let text = value.to_string();
            if let Ok(payload) = Payload::parse(&text, usize::MAX) {
                let value = payload.into_value();
                let again = Payload::parse(&value.to_string(), usize::MAX).map(Payload::into_value);
                prop_assert_eq!(again, Ok(value));
            }
        }

        /// Depth is checked before parsing: over the limit is refused, within it never for depth.
        #[test]
        fn nesting_is_refused_exactly_beyond_the_limit(depth in 1usize..80) {
            let text = format!("{{\"d\": {}1{}}}", "[".repeat(depth - 1), "]".repeat(depth - 1));
            let result = Payload::parse(&text, MAX);
            prop_assert_eq!(result.is_ok(), depth <= MAX_DEPTH, "{}: {:?}", depth, result);
        }
    }
}
