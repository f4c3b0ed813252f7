//! `providers.email.smtp_url`: which relay, how the connection is protected, and the
//! credentials. The URL carries the password: nothing here prints it, and no error repeats it.

use lettre::transport::smtp::authentication::Credentials;
use std::fmt;

/// Why `smtp_url` is refused. The texts follow the configuration key
/// (`providers.email.smtp_url has no host`) and never repeat the URL.
#[derive(Debug, thiserror::Error)]
pub enum SmtpUrlError {
    #[error("is not a URL ({0})")]
    NotUrl(#[source] url::ParseError),
    #[error("has an unknown or repeated query parameter `{0}` (only `tls`)")]
    UnknownParameter(String),
    #[error("has tls={0}: use smtp://…?tls=starttls, or smtps:// for implicit TLS")]
    UnknownTls(String),
    #[error("must start with smtp:// or smtps://, not {0}://")]
    Scheme(String),
    #[error("has no host")]
    NoHost,
    #[error("has a user name but no password")]
    NoPassword,
    #[error("has credentials that are not UTF-8 once percent-decoded")]
    NotUtf8,
}

/// How the connection to the relay is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    /// `smtp://`: no TLS (local relays only).
    Plain,
    /// `smtp://…?tls=starttls`: STARTTLS, required (a relay that does not offer it is refused).
    StartTls,
    /// `smtps://`: TLS from the first byte.
    Implicit,
}

/// The relay named by `smtp_url`. Its `Debug` hides the credentials.
#[derive(Clone)]
pub struct SmtpRelay {
    pub host: String,
    pub port: u16,
    pub security: Security,
    pub(super) credentials: Option<Credentials>,
    /// The EHLO name (the URL's path), when given.
    pub(super) hello: Option<String>,
}

impl fmt::Debug for SmtpRelay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SmtpRelay")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("security", &self.security)
            .field("credentials", &self.credentials.as_ref().map(|_| "[redacted]"))
            .finish()
    }
}

impl SmtpRelay {
    /// Parses `smtp://[user:pass@]host[:port][/ehlo-name][?tls=starttls]` or
    /// `smtps://[user:pass@]host[:port]`. User and password are percent-decoded. Errors never
    /// repeat the URL.
    pub fn parse(raw: &str) -> Result<SmtpRelay, SmtpUrlError> {
        let url = url::Url::parse(raw).map_err(SmtpUrlError::NotUrl)?;
        let mut tls = None;
        for (key, value) in url.query_pairs() {
            match key.as_ref() {
                "tls" if tls.is_none() => tls = Some(value.into_owned()),
                other => return Err(SmtpUrlError::UnknownParameter(other.to_string())),
            }
        }
        let security = match (url.scheme(), tls.as_deref()) {
            ("smtp", None | Some("none")) => Security::Plain,
            ("smtp", Some("starttls" | "required")) => Security::StartTls,
            ("smtps", None) => Security::Implicit,
            ("smtp" | "smtps", Some(other)) => return Err(SmtpUrlError::UnknownTls(other.to_string())),
            (scheme, _) => return Err(SmtpUrlError::Scheme(scheme.to_string())),
        };
        let host = match url.host() {
            Some(url::Host::Domain(d)) if !d.is_empty() => d.to_string(),
            Some(url::Host::Ipv4(ip)) => ip.to_string(),
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
            _ => return Err(SmtpUrlError::NoHost),
        };
        let port = url.port().unwrap_or(match security {
            Security::Plain => 25,
            Security::StartTls => 587,
            Security::Implicit => 465,
        });
        let credentials = match (url.username(), url.password()) {
            ("", None) => None,
            (_, None) => return Err(SmtpUrlError::NoPassword),
            (user, Some(password)) => Some(Credentials::new(decode(user)?, decode(password)?)),
        };
        let hello = Some(url.path().trim_matches('/').to_string()).filter(|p| !p.is_empty());
        Ok(SmtpRelay { host, port, security, credentials, hello })
    }

    /// `host:port`, for messages (no credentials).
    pub fn name(&self) -> String {
        match self.host.contains(':') {
            true => format!("[{}]:{}", self.host, self.port),
            false => format!("{}:{}", self.host, self.port),
        }
    }

    pub fn has_credentials(&self) -> bool {
        self.credentials.is_some()
    }
}

fn decode(part: &str) -> Result<String, SmtpUrlError> {
    percent_encoding::percent_decode_str(part).decode_utf8().map(|s| s.into_owned()).map_err(|_| SmtpUrlError::NotUtf8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smtp_urls_are_parsed_without_echoing_them() {
        let r = SmtpRelay::parse("smtp://127.0.0.1:2525").unwrap();
        assert_eq!(
            (r.host.as_str(), r.port, r.security, r.has_credentials()),
            ("127.0.0.1", 2525, Security::Plain, false)
        );
        let r = SmtpRelay::parse("smtp://us%40er:p%3Ass@mail.example.com?tls=starttls").unwrap();
        assert_eq!((r.port, r.security), (587, Security::StartTls));
        let c = r.credentials.clone().unwrap();
        assert_eq!(c, Credentials::new("us@er".into(), "p:ss".into()));
        assert_eq!(SmtpRelay::parse("smtps://u:p@[::1]").unwrap().name(), "[::1]:465");
        let r = SmtpRelay::parse("smtp://relay.local/client.example.com").unwrap();
        assert_eq!(r.hello.as_deref(), Some("client.example.com"));
        for bad in [
            "http://u:secret@host",
            "smtp://u:secret@host?tls=maybe",
            "smtp://u:secret@host?tsl=starttls",
            "smtp://u@host",
            "smtps://u:secret@host?tls=starttls",
            "u:secret@host",
        ] {
            let err = SmtpRelay::parse(bad).unwrap_err();
            assert!(!err.to_string().contains("secret"), "{err}");
        }
    }
}
