//! TLS for Postgres connections (rustls with the Mozilla roots).

/// TLS is used when the URL says `sslmode=require`, and then the server certificate is checked
/// against the Mozilla roots. Anything else means plain TCP: libpq's default `prefer` would try
/// TLS against local servers with self-signed certificates and fail the handshake.
pub fn only_when_required(config: &mut tokio_postgres::Config) {
    if config.get_ssl_mode() != tokio_postgres::config::SslMode::Require {
        config.ssl_mode(tokio_postgres::config::SslMode::Disable);
    }
}

/// The TLS connector for every Postgres connection (pool and LISTEN); see
/// [`only_when_required`] for when it is used.
pub fn postgres() -> tokio_postgres_rustls::MakeRustlsConnect {
    let roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap_or_else(|_| rustls::ClientConfig::builder());
    tokio_postgres_rustls::MakeRustlsConnect::new(builder.with_root_certificates(roots).with_no_client_auth())
}
