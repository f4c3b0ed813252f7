//! `notify-relay mock-providers`: all four emulators on their usual addresses, with the
//! credentials a relay needs written to disk, for staging smoke tests and load tests without
//! real devices.

use crate::{apns, expo, fcm, smtp};
use std::future::Future;

/// `notify-relay mock-providers` flags.
#[derive(Debug, clap::Args)]
pub struct MockArgs {
    /// Listen address of the Expo emulator.
    #[arg(long, default_value = "127.0.0.1:4000")]
    pub expo_addr: String,
    /// Listen address of the FCM emulator (and its OAuth token endpoint).
    #[arg(long, default_value = "127.0.0.1:4001")]
    pub fcm_addr: String,
    /// Listen address of the APNs emulator (HTTP/2 over TLS).
    #[arg(long, default_value = "127.0.0.1:4002")]
    pub apns_addr: String,
    /// Listen address of the SMTP relay emulator.
    #[arg(long, default_value = "127.0.0.1:2525")]
    pub smtp_addr: String,
    /// Where to write the credentials the relay needs to talk to the emulators
    /// (`fcm-service-account.json`, `apns-key.p8`, `apns-ca.pem`).
    #[arg(long, default_value = "mock-credentials")]
    pub credentials_dir: std::path::PathBuf,
}

/// `notify-relay mock-providers`: serves until `shutdown` completes (the binary passes its
/// SIGTERM / Ctrl-C wait, the one the service stops on).
pub async fn serve(args: MockArgs, shutdown: impl Future<Output = ()>) -> std::io::Result<()> {
    let expo = expo::ExpoEmulator::start(&args.expo_addr, None).await?;
    println!("expo emulator listening on {}", expo.url());
    println!("  failure injection: tokens containing 'unregistered', 'ratelimited', 'invalidcredentials',");
    println!("  'developererror', 'expoerror', 'mismatchsenderid', 'providererror';");
    println!("  POST {}/__emulator/fail {{\"status\":503,\"count\":10}}", expo.url());

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

    let apns = apns::ApnsEmulator::start(&args.apns_addr, apns::Rules::default()).await?;
    serve_apns(&apns, &args.credentials_dir)?;

    let smtp = smtp::SmtpEmulator::start(&args.smtp_addr, smtp::SmtpOptions::default()).await?;
    println!("smtp emulator listening on {} (plain, no AUTH)", smtp.url());
    println!("  failure injection: recipients unknown@, moved@, badaddr@, denied@, policy@, full@, greylist@,");
    println!("  busy@, params@, tempauth@, authreq@, weakauth@, badcreds@, needtls@, closing@, toolarge@, stall@,");
    println!(
        "  reply-<code>[-<x.y.z>]@ (any domain; word+tag@ too); the command XFAIL {{\"status\":421,\"for_ms\":10000}}"
    );
    shutdown.await;
    smtp.stop().await;
    expo.stop().await;
    fcm.stop().await;
    apns.stop().await;
    Ok(())
}

fn serve_apns(apns: &apns::ApnsEmulator, credentials_dir: &std::path::Path) -> std::io::Result<()> {
    println!("apns emulator listening on {} (HTTP/2, TLS)", apns.url());
    println!("  key_id {}, team_id {}, topic {}", apns.key_id(), apns.team_id(), apns.topic());
    let (key, ca) = apns::write_credentials(apns, credentials_dir)?;
    println!("  providers.apns.key_file = {}, providers.apns.ca_file = {}", key.display(), ca.display());
    println!("  failure injection: POST {}/__emulator/answer {{\"token\":\"<hex>\",\"status\":410,\"reason\":\"Unregistered\"}},", apns.url());
    println!(
        "  POST {}/__emulator/fail {{\"status\":503,\"reason\":\"ServiceUnavailable\",\"for_ms\":10000}}",
        apns.url()
    );
    Ok(())
}
