//! Loopback emulators of the push providers, faithful to PROVIDERS.md (including their
//! errors). The tests use them, and `notify-relay mock-providers` runs them for staging smoke
//! tests and load tests without real devices.

pub mod expo;

/// `notify-relay mock-providers`: serve until Ctrl-C / SIGTERM.
pub async fn serve(expo_addr: &str) -> std::io::Result<()> {
    let expo = expo::ExpoEmulator::start(expo_addr, None).await?;
    println!("expo emulator listening on {}", expo.url());
    println!("  failure injection: tokens containing 'unregistered', 'ratelimited', 'invalidcredentials',");
    println!("  'developererror', 'expoerror'; POST {}/__emulator/fail {{\"status\":503,\"count\":10}}", expo.url());
    let _ = tokio::signal::ctrl_c().await;
    expo.stop().await;
    Ok(())
}
