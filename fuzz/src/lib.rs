//! What the fuzz targets check besides "never panics": each classified answer is exactly one
//! class (result and provider health agree) and its error is bounded.

pub use notify_relay_engine::fuzzing::{assert_bounded, assert_one_class};

/// A big-endian u16 from the first two bytes (0 when short), and the rest.
pub fn take_u16(data: &[u8]) -> (u16, &[u8]) {
    match data {
        [a, b, rest @ ..] => (u16::from_be_bytes([*a, *b]), rest),
        _ => (0, &[]),
    }
}

/// The first byte (0 when empty), and the rest.
pub fn take_u8(data: &[u8]) -> (u8, &[u8]) {
    match data {
        [a, rest @ ..] => (*a, rest),
        _ => (0, &[]),
    }
}
