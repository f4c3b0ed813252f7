//! TLS for Postgres connections, with libpq's `sslmode` meanings (rustls; webpki checks chains).
//!
//! | `sslmode` | TLS | chain checked | host name checked |
//! |---|---|---|---|
//! | `disable` | never | – | – |
//! | `prefer` (default) | if the server offers it | only with a CA | no |
//! | `require` | always | only with a CA (then as `verify-ca`) | no |
//! | `verify-ca` | always | yes | no |
//! | `verify-full` | always | yes | yes |
//!
//! "A CA" is `sslrootcert=` in the URL, else `database.ca_file` (or `PGSSLROOTCERT`). The one
//! difference from libpq: `verify-ca`/`verify-full` without a CA check against the Mozilla roots
//! (libpq's `sslrootcert=system`) where libpq would refuse to start for want of `root.crt`.
//! tokio-postgres knows neither `verify-*` nor `sslrootcert`, so [`PgTarget::from_url`] takes
//! them out of the URL before handing it over and applies them here.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_postgres::tls::MakeTlsConnect;

/// What `sslmode` asks for (libpq's five values).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    pub fn parse(value: &str) -> Option<SslMode> {
        Some(match value {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// Why a Postgres URL or its CA cannot be used. Never quotes the URL (it may hold a password).
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PgUrlError {
    #[error("is not a valid Postgres URL (postgres://user:pass@host:port/db)")]
    Invalid,
    #[error("has sslmode={0}; use disable, prefer, require, verify-ca or verify-full")]
    SslMode(String),
    /// The URL's `sslrootcert=`.
    #[error("sslrootcert {0}")]
    RootCert(CaError),
    /// The `ca_file` given beside the URL (`database.ca_file`, `PGSSLROOTCERT`).
    #[error("{0}")]
    CaFile(CaError),
}

/// A CA file that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CaError {
    #[error("file {path} cannot be read: {reason}")]
    Unreadable { path: PathBuf, reason: String },
    #[error("file {path} holds no PEM certificate")]
    NoCertificate { path: PathBuf },
    #[error("file {path} holds a certificate rustls cannot use: {reason}")]
    Unusable { path: PathBuf, reason: String },
}

/// The certificates of a PEM file, each checked as a trust anchor.
pub fn read_ca(path: &Path) -> Result<Vec<CertificateDer<'static>>, CaError> {
    let unreadable = |reason: String| CaError::Unreadable { path: path.to_path_buf(), reason };
    let pem = std::fs::read(path).map_err(|e| unreadable(e.to_string()))?;
    let certs =
        rustls_pemfile::certs(&mut &pem[..]).collect::<Result<Vec<_>, _>>().map_err(|e| unreadable(e.to_string()))?;
    if certs.is_empty() {
        return Err(CaError::NoCertificate { path: path.to_path_buf() });
    }
    let mut roots = RootCertStore::empty();
    for cert in &certs {
        roots.add(cert.clone()).map_err(|e| CaError::Unusable { path: path.to_path_buf(), reason: e.to_string() })?;
    }
    Ok(certs)
}

/// A Postgres config and the TLS its connections use: what every connection (pool, LISTEN,
/// migrations, admin commands) is opened from. Derefs to the tokio-postgres config, whose own
/// `ssl_mode` is kept in step (disable, prefer or require: whether TLS is asked for at all).
#[derive(Clone)]
pub struct PgTarget {
    config: tokio_postgres::Config,
    mode: SslMode,
    /// Whether the CA came from the configuration (it changes what a refusal advises).
    has_ca: bool,
    connector: tokio_postgres_rustls::MakeRustlsConnect,
}

/// The stream of a connection opened by [`PgTarget::connect`].
pub type PgStream = <tokio_postgres_rustls::MakeRustlsConnect as MakeTlsConnect<tokio_postgres::Socket>>::Stream;

impl PgTarget {
    /// Parses `url` (URL or `key=value` form) after taking out `sslmode` and `sslrootcert`; the
    /// URL's `sslrootcert` wins over `ca_file` (as in libpq, where it wins over `PGSSLROOTCERT`).
    /// Without `sslmode` the mode is `prefer`, libpq's default.
    pub fn from_url(url: &str, ca_file: Option<&Path>) -> Result<PgTarget, PgUrlError> {
        let (rest, mode, root) = strip_tls_params(url)?;
        let config: tokio_postgres::Config = rest.parse().map_err(|_| PgUrlError::Invalid)?;
        let ca = match (root, ca_file) {
            (Some(path), _) => Some(read_ca(Path::new(&path)).map_err(PgUrlError::RootCert)?),
            (None, Some(path)) => Some(read_ca(path).map_err(PgUrlError::CaFile)?),
            (None, None) => None,
        };
        Ok(PgTarget::new(config, mode.unwrap_or(SslMode::Prefer), ca))
    }

    /// `config` with TLS as `mode` and `ca` say (`ca` replaces the Mozilla roots).
    pub fn new(
        mut config: tokio_postgres::Config,
        mode: SslMode,
        ca: Option<Vec<CertificateDer<'static>>>,
    ) -> PgTarget {
        config.ssl_mode(match mode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            _ => tokio_postgres::config::SslMode::Require,
        });
        let has_ca = ca.is_some();
        let connector = tokio_postgres_rustls::MakeRustlsConnect::new(client_config(mode, ca));
        PgTarget { config, mode, has_ca, connector }
    }

    pub fn mode(&self) -> SslMode {
        self.mode
    }

    pub fn config(&self) -> &tokio_postgres::Config {
        &self.config
    }

    /// Opens a connection; an error is the driver's own (see [`explain`] for a message).
    pub async fn connect(
        &self,
    ) -> Result<
        (tokio_postgres::Client, tokio_postgres::Connection<tokio_postgres::Socket, PgStream>),
        tokio_postgres::Error,
    > {
        self.config.connect(self.connector.clone()).await
    }

    /// The driver's error, with what a TLS failure means and the setting that fixes it.
    /// With its sources: tokio-postgres's own message is only "error performing TLS handshake".
    pub fn explain(&self, err: &(dyn std::error::Error + 'static)) -> String {
        let said = crate::error::with_sources(err);
        match tls_failure(err) {
            Some(failure) => format!("{said}: {}", failure.advice(self.mode, self.has_ca)),
            None => said,
        }
    }
}

/// A config as tokio-postgres sees it: its own `sslmode`, no CA (the tests' and tools' plain
/// configs).
impl From<tokio_postgres::Config> for PgTarget {
    fn from(config: tokio_postgres::Config) -> PgTarget {
        let mode = match config.get_ssl_mode() {
            tokio_postgres::config::SslMode::Disable => SslMode::Disable,
            tokio_postgres::config::SslMode::Require => SslMode::Require,
            _ => SslMode::Prefer,
        };
        PgTarget::new(config, mode, None)
    }
}

impl std::ops::Deref for PgTarget {
    type Target = tokio_postgres::Config;

    fn deref(&self) -> &tokio_postgres::Config {
        &self.config
    }
}

/// Changing the config's own `ssl_mode` here would not change the verification: use
/// [`PgTarget::new`] for that.
impl std::ops::DerefMut for PgTarget {
    fn deref_mut(&mut self) -> &mut tokio_postgres::Config {
        &mut self.config
    }
}

impl fmt::Debug for PgTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // tokio-postgres's Debug redacts the password.
        f.debug_struct("PgTarget").field("config", &self.config).field("mode", &self.mode).finish()
    }
}

/// The URL without `sslmode` and `sslrootcert`, and their values.
fn strip_tls_params(url: &str) -> Result<(String, Option<SslMode>, Option<String>), PgUrlError> {
    let mut mode = None;
    let mut root = None;
    let mut take = |key: &str, value: String| -> Result<bool, PgUrlError> {
        match key {
            "sslmode" => mode = Some(SslMode::parse(&value).ok_or(PgUrlError::SslMode(value))?),
            "sslrootcert" => root = Some(value),
            _ => return Ok(false),
        }
        Ok(true)
    };
    let rest = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        match url.split_once('?') {
            None => url.to_string(),
            Some((base, query)) => {
                let mut kept = Vec::new();
                for pair in query.split('&').filter(|p| !p.is_empty()) {
                    let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                    let value = percent_encoding::percent_decode_str(value)
                        .decode_utf8()
                        .map_err(|_| PgUrlError::Invalid)?
                        .into_owned();
                    if !take(key, value)? {
                        kept.push(pair);
                    }
                }
                match kept.is_empty() {
                    true => base.to_string(),
                    false => format!("{base}?{}", kept.join("&")),
                }
            }
        }
    } else {
        // `key=value` form. Quoted values are left to tokio-postgres: a path with spaces in
        // `sslrootcert` needs the URL form.
        let mut kept = Vec::new();
        for word in url.split_whitespace() {
            let (key, value) = word.split_once('=').unwrap_or((word, ""));
            if !take(key, value.to_string())? {
                kept.push(word);
            }
        }
        kept.join(" ")
    };
    Ok((rest, mode, root))
}

/// The rustls client for `mode`: no check of the server's certificate for `prefer` and
/// `require` without a CA; the chain (against `ca`, else the Mozilla roots) for `verify-ca` and
/// for `prefer`/`require` with a CA; chain and host name for `verify-full`.
fn client_config(mode: SslMode, ca: Option<Vec<CertificateDer<'static>>>) -> rustls::ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let has_ca = ca.is_some();
    let mut roots = RootCertStore::empty();
    match ca {
        // Already checked by `read_ca`; a certificate refused here would only be missing.
        Some(certs) => {
            let _ = roots.add_parsable_certificates(certs);
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let roots = Arc::new(roots);
    // None only when there is no root at all: nothing can be trusted, which is what an empty
    // store means anyway (every certificate is then refused).
    let chain = || WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone()).build().ok();
    let check = match (mode, has_ca) {
        (SslMode::VerifyFull, _) => chain().map_or(CertCheck::Refuse, CertCheck::Full),
        (SslMode::VerifyCa, _) | (SslMode::Prefer | SslMode::Require, true) => {
            chain().map_or(CertCheck::Refuse, CertCheck::ChainOnly)
        }
        _ => CertCheck::Accept,
    };
    let verifier = Arc::new(Verifier { provider: provider.clone(), check });
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap_or_else(|_| rustls::ClientConfig::builder());
    builder.dangerous().with_custom_certificate_verifier(verifier).with_no_client_auth()
}

/// What is checked of the server's certificate.
#[derive(Debug)]
enum CertCheck {
    /// `verify-full`: the chain must lead to a trusted root, and the certificate must be for the
    /// host.
    Full(Arc<WebPkiServerVerifier>),
    /// `verify-ca`: the chain must lead to a trusted root; the names in the certificate are not
    /// looked at. webpki checks the chain before the name, so a name error means the chain passed.
    ChainOnly(Arc<WebPkiServerVerifier>),
    /// `prefer`/`require` without a CA: every certificate is accepted (encryption against
    /// passive listeners only, as in libpq).
    Accept,
    /// A verifying mode whose root store came out empty: every certificate is refused.
    Refuse,
}

/// The relay's verifier for every `sslmode` that uses TLS: the certificate as [`CertCheck`]
/// says, and in every case the handshake's signatures (they prove the server holds the
/// certificate's key) with the provider's algorithms, as webpki checks them.
#[derive(Debug)]
struct Verifier {
    provider: Arc<CryptoProvider>,
    check: CertCheck,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let chain = |webpki: &WebPkiServerVerifier| {
            webpki.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        };
        match &self.check {
            CertCheck::Full(webpki) => chain(webpki),
            CertCheck::ChainOnly(webpki) => match chain(webpki) {
                Err(rustls::Error::InvalidCertificate(
                    CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
                )) => Ok(ServerCertVerified::assertion()),
                other => other,
            },
            CertCheck::Accept => Ok(ServerCertVerified::assertion()),
            CertCheck::Refuse => Err(rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// Why a TLS connection to Postgres failed, as far as the relay can tell.
#[derive(Debug, Clone, PartialEq)]
pub enum TlsFailure {
    /// The chain does not lead to a trusted root.
    UnknownIssuer,
    /// The certificate is not for the host the URL names.
    HostnameMismatch,
    Expired,
    NotYetValid,
    /// The server answered the TLS request with "no" (`ssl = off`).
    ServerWithoutTls,
    /// Some other refusal of the certificate or the handshake, as rustls words it.
    Other(String),
}

impl TlsFailure {
    /// The cause and the setting that fixes it.
    pub fn advice(&self, mode: SslMode, has_ca: bool) -> String {
        let set_ca = "set database.ca_file or sslrootcert= to the server's CA";
        match self {
            TlsFailure::UnknownIssuer if has_ca => format!(
                "the server's certificate is not signed by the configured CA (unknown issuer): {set_ca}, \
                 the file that signed it"
            ),
            TlsFailure::UnknownIssuer => format!(
                "the server's certificate is signed by an unknown CA (unknown issuer; without a CA file, \
                 sslmode={} trusts the Mozilla roots only): {set_ca}",
                mode.as_str()
            ),
            TlsFailure::HostnameMismatch => "the server's certificate is not for the host name in database.url \
                 (hostname mismatch): use sslmode=verify-ca or connect by the certificate's name"
                .to_string(),
            TlsFailure::Expired => "the server's certificate has expired: renew it on the server \
                 (or check this machine's clock)"
                .to_string(),
            TlsFailure::NotYetValid => "the server's certificate is not valid yet: check this machine's clock \
                 (or the certificate's start date)"
                .to_string(),
            TlsFailure::ServerWithoutTls => format!(
                "the server does not support TLS (ssl = off), and sslmode={} requires it: turn ssl on in \
                 the server, or use sslmode=prefer or disable if the network is trusted",
                mode.as_str()
            ),
            TlsFailure::Other(reason) => format!("TLS failed ({reason})"),
        }
    }
}

/// The TLS failure somewhere in `err`'s chain of sources, if it is one.
pub fn tls_failure(err: &(dyn std::error::Error + 'static)) -> Option<TlsFailure> {
    causes(err).find_map(|cause| {
        if let Some(tls) = cause.downcast_ref::<rustls::Error>() {
            return Some(from_rustls(tls));
        }
        // tokio-postgres's own words when the server answers the TLS request with "N".
        (cause.source().is_none() && cause.to_string() == "server does not support TLS")
            .then_some(TlsFailure::ServerWithoutTls)
    })
}

/// `err` and every error below it, outermost first, the errors an `io::Error` wraps included:
/// tokio-rustls wraps the rustls error in an `io::Error`, whose `source()` skips it, hence
/// `get_ref`.
pub(crate) fn causes<'a>(
    err: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(err), |&e| io_inner(e).and_then(|i| i.source()).or_else(|| e.source()))
        .flat_map(|e| [Some(e), io_inner(e)].into_iter().flatten())
}

/// The error an `io::Error` wraps, if `e` is one that wraps one.
fn io_inner<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a (dyn std::error::Error + 'static)> {
    e.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()).map(|i| i as &(dyn std::error::Error + 'static))
}

fn from_rustls(err: &rustls::Error) -> TlsFailure {
    use CertificateError as C;
    match err {
        rustls::Error::InvalidCertificate(cert) => match cert {
            C::UnknownIssuer | C::BadSignature => TlsFailure::UnknownIssuer,
            C::NotValidForName | C::NotValidForNameContext { .. } => TlsFailure::HostnameMismatch,
            C::Expired | C::ExpiredContext { .. } => TlsFailure::Expired,
            C::NotValidYet | C::NotValidYetContext { .. } => TlsFailure::NotYetValid,
            other => TlsFailure::Other(format!("invalid certificate: {other:?}")),
        },
        other => TlsFailure::Other(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What tokio-postgres returns for a failed handshake: "error performing TLS handshake",
    /// with the TLS library's error as its source.
    #[derive(Debug)]
    struct Handshake(Box<dyn std::error::Error + Send + Sync>);

    impl fmt::Display for Handshake {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("error performing TLS handshake")
        }
    }

    impl std::error::Error for Handshake {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&*self.0)
        }
    }

    fn io_wrapped(err: rustls::Error) -> Handshake {
        // As tokio-rustls hands it over: an io::Error holding the rustls error.
        Handshake(Box::new(std::io::Error::new(std::io::ErrorKind::InvalidData, err)))
    }

    #[test]
    fn each_certificate_refusal_names_its_cause_and_the_setting_that_fixes_it() {
        let cases = [
            (CertificateError::UnknownIssuer, TlsFailure::UnknownIssuer, "set database.ca_file or sslrootcert="),
            (CertificateError::NotValidForName, TlsFailure::HostnameMismatch, "use sslmode=verify-ca or connect by"),
            (CertificateError::Expired, TlsFailure::Expired, "has expired"),
            (CertificateError::NotValidYet, TlsFailure::NotYetValid, "not valid yet"),
        ];
        for (cert, failure, advice) in cases {
            let err = io_wrapped(rustls::Error::InvalidCertificate(cert));
            assert_eq!(tls_failure(&err), Some(failure.clone()), "{err}");
            let message = failure.advice(SslMode::VerifyFull, false);
            assert!(message.contains(advice), "{message}");
        }
        let unknown = TlsFailure::UnknownIssuer.advice(SslMode::VerifyCa, false);
        assert!(unknown.contains("unknown issuer") && unknown.contains("Mozilla roots"), "{unknown}");
        let wrong_ca = TlsFailure::UnknownIssuer.advice(SslMode::VerifyCa, true);
        assert!(wrong_ca.contains("not signed by the configured CA"), "{wrong_ca}");
    }

    #[test]
    fn a_server_without_tls_is_told_apart() {
        let err = Handshake("server does not support TLS".into());
        assert_eq!(tls_failure(&err), Some(TlsFailure::ServerWithoutTls));
        let advice = TlsFailure::ServerWithoutTls.advice(SslMode::VerifyFull, true);
        assert!(advice.contains("does not support TLS") && advice.contains("sslmode=verify-full"), "{advice}");
        let timeout = tokio_postgres::Error::__private_api_timeout();
        assert_eq!(tls_failure(&timeout), None, "not a TLS failure");
        let target = PgTarget::from_url("postgres://u@h/db?sslmode=verify-full", None).unwrap();
        let message = target.explain(&err);
        assert!(
            message.starts_with("error performing TLS handshake: server does not support TLS: the server"),
            "{message}"
        );
        assert_eq!(target.explain(&timeout), "timeout waiting for server");
    }

    #[test]
    fn sslmode_and_sslrootcert_are_taken_out_of_the_url() {
        let t = PgTarget::from_url("postgres://u:p@h:5433/db?sslmode=verify-ca&connect_timeout=3", None).unwrap();
        assert_eq!(t.mode(), SslMode::VerifyCa);
        assert_eq!(t.get_ssl_mode(), tokio_postgres::config::SslMode::Require);
        assert_eq!(t.get_connect_timeout(), Some(&std::time::Duration::from_secs(3)));
        assert_eq!(t.get_password(), Some(&b"p"[..]));
        let t = PgTarget::from_url("postgres://u@h/db", None).unwrap();
        assert_eq!((t.mode(), t.get_ssl_mode()), (SslMode::Prefer, tokio_postgres::config::SslMode::Prefer));
        let t = PgTarget::from_url("host=h user=u sslmode=disable", None).unwrap();
        assert_eq!(t.get_ssl_mode(), tokio_postgres::config::SslMode::Disable);
        assert_eq!(
            PgTarget::from_url("postgres://u@h/db?sslmode=allow", None).unwrap_err(),
            PgUrlError::SslMode("allow".into())
        );
        let missing = PgTarget::from_url("postgres://u@h/db?sslrootcert=%2Fnonexistent%2Fca.pem", None).unwrap_err();
        assert!(missing.to_string().starts_with("sslrootcert file /nonexistent/ca.pem cannot be read"), "{missing}");
        let missing = PgTarget::from_url("postgres://u@h/db", Some(Path::new("/nonexistent/ca.pem"))).unwrap_err();
        assert!(missing.to_string().starts_with("file /nonexistent/ca.pem cannot be read"), "{missing}");
        assert_eq!(PgTarget::from_url("postgres://u@h/db?sslcert=x", None).unwrap_err(), PgUrlError::Invalid);
    }
}
