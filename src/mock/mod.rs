//! Loopback emulators of the push providers, faithful to PROVIDERS.md (including their
//! errors). The tests use them, and `notify-relay mock-providers` runs them for staging smoke
//! tests and load tests without real devices.

pub mod expo;
pub mod smtp;

/// `notify-relay mock-providers`: serve until Ctrl-C / SIGTERM.
pub async fn serve(expo_addr: &str, smtp_addr: &str) -> std::io::Result<()> {
    let expo = expo::ExpoEmulator::start(expo_addr, None).await?;
    println!("expo emulator listening on {}", expo.url());
    println!("  failure injection: tokens containing 'unregistered', 'ratelimited', 'invalidcredentials',");
    println!("  'developererror', 'expoerror'; POST {}/__emulator/fail {{\"status\":503,\"count\":10}}", expo.url());
    let smtp = smtp::SmtpEmulator::start(smtp_addr, smtp::SmtpOptions::default()).await?;
    println!("smtp emulator listening on {} (plain, no AUTH)", smtp.url());
    println!("  failure injection: recipients unknown@, moved@, badaddr@, denied@, policy@, full@, greylist@,");
    println!("  busy@, params@, tempauth@, authreq@, weakauth@, badcreds@, needtls@, closing@, toolarge@, stall@,");
    println!(
        "  reply-<code>[-<x.y.z>]@ (any domain; word+tag@ too); the command XFAIL {{\"status\":421,\"for_ms\":10000}}"
    );
    let _ = tokio::signal::ctrl_c().await;
    smtp.stop().await;
    expo.stop().await;
    Ok(())
}
