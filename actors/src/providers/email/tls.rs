//! TLS with the relay for `smtps://` (implicit TLS, from the first byte): the rustls client,
//! the stream handed to lettre, and how to tell a refused certificate from other TLS failures.

use super::EmailError;
use lettre::transport::smtp::client::AsyncTokioStream;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

/// The rustls client for `smtps://`: the Mozilla roots plus the certificates of `ca_pem`.
pub(super) fn implicit_tls(ca_pem: Option<&[u8]>) -> Result<rustls::ClientConfig, EmailError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for cert in rustls_pemfile::certs(&mut ca_pem.unwrap_or_default()) {
        let cert = cert.map_err(EmailError::CaUnreadable)?;
        roots.add(cert).map_err(EmailError::CaUnusable)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(EmailError::Rustls)?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// A TLS connection handed to lettre as an already-open stream.
#[derive(Debug)]
pub(super) struct TlsConnection(pub(super) tokio_rustls::client::TlsStream<tokio::net::TcpStream>);

impl AsyncTokioStream for TlsConnection {
    fn peer_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.0.get_ref().0.peer_addr()
    }
}

impl tokio::io::AsyncRead for TlsConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for TlsConnection {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// A certificate that rustls refused, anywhere in the error's chain.
pub(super) fn certificate_error(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    crate::tls::causes(e).find_map(|cause| match cause.downcast_ref::<rustls::Error>() {
        Some(tls @ (rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented)) => {
            Some(tls.to_string())
        }
        _ => None,
    })
}
