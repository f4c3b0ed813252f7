//! The emulators' TLS: a fresh self-signed certificate per emulator, which the client trusts
//! as its CA (`providers.apns.ca_file`, the SMTP URL's extra roots), so no real certificate or
//! key is ever needed or shipped.

use std::sync::Arc;

/// A server config for a new self-signed certificate naming `names`, and the certificate's PEM.
pub(crate) fn self_signed(names: &[&str]) -> std::io::Result<(rustls::ServerConfig, String)> {
    let names = names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
    let certified = rcgen::generate_simple_self_signed(names).map_err(std::io::Error::other)?;
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(std::io::Error::other)?
        .with_no_client_auth()
        .with_single_cert(vec![certified.cert.der().clone()], key)
        .map_err(std::io::Error::other)?;
    Ok((config, certified.cert.pem()))
}
