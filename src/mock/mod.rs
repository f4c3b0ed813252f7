//! Loopback emulators of the push providers, faithful to PROVIDERS.md (including their
//! errors). The tests use them, and `notify-relay mock-providers` runs them for staging smoke
//! tests and load tests without real devices.

pub mod apns;
pub mod expo;
pub mod fcm;
pub mod smtp;

/// How long an injected failure lasts: for the next `count` requests, or for `for_ms`.
pub(crate) trait Lasting {
    fn count(&self) -> Option<usize>;
    fn for_ms(&self) -> Option<u64>;
}

/// A failure being injected, and what is left of it.
#[derive(Debug)]
pub(crate) struct ActiveFailure<P> {
    pub(crate) plan: P,
    left: Option<usize>,
    until: Option<std::time::Instant>,
}

impl<P: Lasting> ActiveFailure<P> {
    pub(crate) fn new(plan: P) -> Self {
        let until = plan.for_ms().map(|ms| std::time::Instant::now() + std::time::Duration::from_millis(ms));
        ActiveFailure { left: plan.count(), until, plan }
    }

    /// Whether this request fails (and counts it).
    pub(crate) fn strikes(&mut self) -> bool {
        if let Some(until) = self.until {
            return std::time::Instant::now() < until;
        }
        match self.left.as_mut() {
            Some(n) if *n > 0 => {
                *n -= 1;
                true
            }
            _ => false,
        }
    }
}

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

/// `notify-relay mock-providers`: serve until Ctrl-C / SIGTERM.
pub async fn serve(args: MockArgs) -> std::io::Result<()> {
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
    let _ = tokio::signal::ctrl_c().await;
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
