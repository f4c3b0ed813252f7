//! Loopback emulators of the push providers, faithful to PROVIDERS.md (including their
//! errors). The tests use them, and `notify-relay mock-providers` runs them for staging smoke
//! tests and load tests without real devices.

pub mod apns;
pub mod expo;

/// `notify-relay mock-providers`: serve until Ctrl-C / SIGTERM.
pub async fn serve(expo_addr: &str, apns_addr: &str, credentials_dir: Option<&std::path::Path>) -> std::io::Result<()> {
    let expo = expo::ExpoEmulator::start(expo_addr, None).await?;
    println!("expo emulator listening on {}", expo.url());
    println!("  failure injection: tokens containing 'unregistered', 'ratelimited', 'invalidcredentials',");
    println!("  'developererror', 'expoerror'; POST {}/__emulator/fail {{\"status\":503,\"count\":10}}", expo.url());
    let apns = apns::ApnsEmulator::start(apns_addr, apns::Rules::default()).await?;
    serve_apns(&apns, credentials_dir)?;
    let _ = tokio::signal::ctrl_c().await;
    expo.stop().await;
    apns.stop().await;
    Ok(())
}

fn serve_apns(apns: &apns::ApnsEmulator, credentials_dir: Option<&std::path::Path>) -> std::io::Result<()> {
    println!("apns emulator listening on {} (HTTP/2, TLS)", apns.url());
    println!("  key_id {}, team_id {}, topic {}", apns.key_id(), apns.team_id(), apns.topic());
    match credentials_dir {
        Some(dir) => {
            let (key, ca) = apns::write_credentials(apns, dir)?;
            println!("  providers.apns.key_file = {}, providers.apns.ca_file = {}", key.display(), ca.display());
        }
        None => println!("  pass --credentials-dir DIR to write its signing key (apns-key.p8) and CA (apns-ca.pem)"),
    }
    println!("  failure injection: POST {}/__emulator/answer {{\"token\":\"<hex>\",\"status\":410,\"reason\":\"Unregistered\"}},", apns.url());
    println!(
        "  POST {}/__emulator/fail {{\"status\":503,\"reason\":\"ServiceUnavailable\",\"for_ms\":10000}}",
        apns.url()
    );
    Ok(())
}
