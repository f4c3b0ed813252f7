//! `notification.payload` as Postgres prints it (`payload::text`) → `Payload::parse`: a payload
//! every sender can map, or an error naming the field. Never a panic, whatever the text.
//! What it accepts parses again to the same value (so it survives the stream), nests at most
//! `MAX_DEPTH` deep, and fits the limit; `readable` (the pull API's view) never panics either.
#![no_main]

use notify_relay_engine::fuzzing::{payload_readable, Payload, MAX_PAYLOAD_DEPTH};
use libfuzzer_sys::fuzz_target;

const LIMIT: usize = 4096;

fn depth(v: &serde_json::Value) -> usize {
    match v {
        serde_json::Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        serde_json::Value::Object(o) => 1 + o.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = payload_readable(text, LIMIT);
    match Payload::parse(text, LIMIT) {
        Ok(payload) => {
            let value = payload.into_value();
            assert!(depth(&value) <= MAX_PAYLOAD_DEPTH, "{text}");
            let again = serde_json::to_string(&value).expect("a parsed value serializes");
            let reparsed = Payload::parse(&again, usize::MAX).expect("what was accepted is accepted again");
            assert_eq!(reparsed.into_value(), value);
        }
        Err(e) => {
            let message = e.to_string();
            assert!(message.starts_with("payload"), "{message}");
            assert!(message.len() <= 300, "{} bytes: {message:.200}", message.len());
        }
    }
});
