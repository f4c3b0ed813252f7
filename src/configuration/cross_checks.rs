//! The rules that compare two sections. Every rule of a single section lives with its fields
//! (`validate()` of that section); the few here hold only together, each for the reason beside it.

use super::Settings;
use notify_relay_engine::settings::{millis, SettingsError};

/// Checks the rules that span sections; the error names the key to change.
pub fn check(s: &Settings) -> Result<(), SettingsError> {
    // The fan-out holds one pooled connection per drainer: the writer and the API need some left.
    if s.listener.drainers >= s.database.pool_size {
        let pool = s.database.pool_size;
        return Err(SettingsError::new(
            "listener.drainers",
            format!("must be below database.pool_size ({pool}) to leave connections for the writer and the API"),
        ));
    }
    let min_idle = millis::of(s.claim.min_idle);
    // A send still running must never be claimed and sent a second time in parallel.
    if let Some(longest) = s.providers.longest_send().map(millis::of) {
        if min_idle <= longest {
            return Err(SettingsError::new(
                "claim.min_idle_ms",
                format!(
                    "must exceed the longest provider send ({longest} ms: flush_after_ms + timeout_ms, the timeout \
                     twice for email and FCM), got {min_idle}"
                ),
            ));
        }
    }
    // The sweep must not re-enqueue what the claim actor is about to recover: that would put a
    // second copy of a pending entry in the stream.
    if s.listener.stale_after <= s.claim.min_idle {
        let stale_after = millis::of(s.listener.stale_after);
        return Err(SettingsError::new(
            "listener.stale_after_ms",
            format!("must exceed claim.min_idle_ms ({min_idle}), got {stale_after}"),
        ));
    }
    Ok(())
}
