//! Pagination cursors → `decode`. Input: a mode byte, then either any string (a 400 unless it
//! is a cursor this key signed), or a position (8 bytes of microseconds, 16 of uuid) that must
//! round-trip through `encode`. Never a panic.
#![no_main]

use chrono::{DateTime, Utc};
use libfuzzer_sys::fuzz_target;
use notify_relay::fuzzing::{decode_cursor, encode_cursor, status_of};
use notify_relay_fuzz::take_u8;

const KEY: &[u8] = b"fuzz-cursor-key";

fuzz_target!(|data: &[u8]| {
    let (mode, rest) = take_u8(data);
    if mode % 2 == 0 {
        let cursor = String::from_utf8_lossy(rest);
        if let Err(e) = decode_cursor(KEY, &cursor) {
            assert_eq!(status_of(&e), 400, "{e:?}");
        }
    } else {
        let mut micros = [0u8; 8];
        let mut id = [0u8; 16];
        for (i, b) in rest.iter().take(24).enumerate() {
            match i {
                0..8 => micros[i] = *b,
                _ => id[i - 8] = *b,
            }
        }
        let Some(at) = DateTime::<Utc>::from_timestamp_micros(i64::from_be_bytes(micros)) else { return };
        let position = (at, uuid::Uuid::from_bytes(id));
        let cursor = encode_cursor(KEY, position);
        assert_eq!(decode_cursor(KEY, &cursor).ok(), Some(position));
    }
});
