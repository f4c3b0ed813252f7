//! A stream entry's `job` field (JSON bytes) → `Job::from_json`: a job that survives a round
//! trip unchanged, or a bounded "malformed job" reason. Never a panic.
#![no_main]

use notify_relay_engine::fuzzing::Job;
use libfuzzer_sys::fuzz_target;
use notify_relay_fuzz::assert_bounded;

fuzz_target!(|data: &[u8]| {
    match Job::from_json(data) {
        Ok(job) => assert_eq!(Job::from_json(job.to_json().as_bytes()).as_ref(), Ok(&job)),
        Err(error) => {
            let reason = error.to_string();
            assert!(reason.starts_with("malformed job: "), "{reason}");
            assert_bounded(&reason);
        }
    }
});
