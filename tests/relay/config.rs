//! The real binary refuses bad configuration, naming the key.

use std::process::Command;

fn run_with(env: &[(&str, &str)]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_notify-relay"))
        .arg("run")
        .env_remove("NOTIFY_CONFIG")
        .envs(env.iter().copied())
        .output()
        .expect("run binary");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn a_bad_value_stops_start_up_naming_the_key() {
    let (code, stderr) = run_with(&[("NOTIFY__RETRY__BASE_MS", "0")]);
    assert_eq!(code, 1);
    assert!(stderr.contains("`retry.base_ms` must be between 1 and 86400000, got 0"), "{stderr}");
}

#[test]
fn a_value_of_the_wrong_type_names_the_key() {
    let (code, stderr) = run_with(&[("WORKER_CONCURRENCY", "many")]);
    assert_eq!(code, 1);
    assert!(stderr.contains("worker.concurrency"), "{stderr}");
}

#[test]
fn a_config_file_with_an_unknown_key_is_refused() {
    let dir = crate::helpers::TempDir::new("notify-relay-test");
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "[retry]\nmax_atempts = 3\n").unwrap();
    let out =
        Command::new(env!("CARGO_BIN_EXE_notify-relay")).arg("--config").arg(&file).arg("migrate").output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("max_atempts"), "{stderr}");
}

#[test]
fn a_claim_idle_time_shorter_than_a_provider_timeout_is_refused() {
    let (code, stderr) =
        run_with(&[("NOTIFY__CLAIM__MIN_IDLE_MS", "1000"), ("NOTIFY__PROVIDERS__EXPO__TIMEOUT_MS", "5000")]);
    assert_eq!(code, 1);
    assert!(stderr.contains("`claim.min_idle_ms` must exceed the longest provider send (5001 ms"), "{stderr}");
}

/// What `TestApp::spawn_binary` hands the binary: the typed settings, written as `NOTIFY__…`
/// variables, load back as the same settings (a value lost on the way would silently leave the
/// binary on a default).
#[test]
fn typed_test_settings_reach_the_binary_unchanged_through_its_environment() {
    use notify_relay::configuration::{Secret, Settings};
    use std::time::Duration;
    let mut s = Settings::load(None, &Default::default()).expect("defaults");
    s.redis.cluster_urls = vec![Secret::new("redis://a:7000"), Secret::new("redis://b:7001")];
    s.claim.min_idle = Duration::from_millis(60_001);
    s.listener.stale_after = Duration::from_secs(120);
    s.providers.expo.access_token = Some(Secret::new("expo-token"));
    s.providers.email.enabled = true;
    s.auth.jwt_secret = Some(Secret::new("a-secret-of-16-chars"));
    s.shutdown.grace = Duration::ZERO;
    let back = Settings::load(None, &crate::helpers::settings_env(&s)).expect("loads back");
    let json = |s: &Settings| serde_json::to_value(s).expect("serialize");
    assert_eq!(json(&back), json(&s));
}
