//! Loopback emulators of the push providers, faithful to PROVIDERS.md (including their
//! errors). The tests use them, and `notify-relay mock-providers` runs them for staging smoke
//! tests and load tests without real devices.

pub mod expo;
pub mod fcm;

/// `notify-relay mock-providers` flags.
#[derive(Debug, clap::Args)]
pub struct MockArgs {
    /// Listen address of the Expo emulator.
    #[arg(long, default_value = "127.0.0.1:4000")]
    pub expo_addr: String,
    /// Listen address of the FCM emulator (and its OAuth token endpoint).
    #[arg(long, default_value = "127.0.0.1:4001")]
    pub fcm_addr: String,
    /// Where to write the credentials the relay needs to talk to the emulators
    /// (`fcm-service-account.json`, …).
    #[arg(long, default_value = "mock-credentials")]
    pub credentials_dir: std::path::PathBuf,
}

/// `notify-relay mock-providers`: serve until Ctrl-C / SIGTERM.
pub async fn serve(args: MockArgs) -> std::io::Result<()> {
    let expo = expo::ExpoEmulator::start(&args.expo_addr, None).await?;
    println!("expo emulator listening on {}", expo.url());
    println!("  failure injection: tokens containing 'unregistered', 'ratelimited', 'invalidcredentials',");
    println!("  'developererror', 'expoerror'; POST {}/__emulator/fail {{\"status\":503,\"count\":10}}", expo.url());

    let fcm = fcm::FcmEmulator::start(&args.fcm_addr).await?;
    let account = fcm.write_credentials(&args.credentials_dir)?;
    println!("fcm emulator listening on {} (token endpoint {}/token)", fcm.url(), fcm.url());
    println!(
        "  providers.fcm.base_url = \"{}\", providers.fcm.service_account_file = \"{}\"",
        fcm.url(),
        account.display()
    );
    println!(
        "  failure injection: tokens containing 'unregistered', 'senderidmismatch', 'badtoken', 'invalidargument',"
    );
    println!(
        "  'quota', 'unavailable', 'internal', 'thirdpartyauth', 'unspecified'; POST {}/__emulator/fail",
        fcm.url()
    );

    let _ = tokio::signal::ctrl_c().await;
    expo.stop().await;
    fcm.stop().await;
    Ok(())
}
