//! FCM HTTP v1: one `POST {base}/v1/projects/{project}/messages:send` per message, authorised by
//! an OAuth access token obtained from the service account (RS256 JWT assertion).

use serde::Deserialize;
use std::fmt;

/// The OAuth scope FCM sends need.
pub const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";
/// Google's token endpoint, used when the service account does not name one.
pub const DEFAULT_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";

/// The fields of a Google service-account JSON key that FCM needs.
#[derive(Clone, Deserialize)]
pub struct ServiceAccount {
    pub project_id: String,
    pub client_email: String,
    /// PKCS#8 PEM RSA key.
    pub private_key: String,
    #[serde(default = "default_token_uri")]
    pub token_uri: String,
}

fn default_token_uri() -> String {
    DEFAULT_TOKEN_URI.into()
}

impl fmt::Debug for ServiceAccount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceAccount")
            .field("project_id", &self.project_id)
            .field("client_email", &self.client_email)
            .field("private_key", &"[redacted]")
            .field("token_uri", &self.token_uri)
            .finish()
    }
}

impl ServiceAccount {
    /// Parses a service-account JSON key and checks that its private key can sign.
    pub fn from_json(raw: &str) -> Result<ServiceAccount, String> {
        let account: ServiceAccount =
            serde_json::from_str(raw).map_err(|e| format!("not a service-account JSON key: {e}"))?;
        if account.project_id.trim().is_empty() {
            return Err("project_id is empty".into());
        }
        if account.client_email.trim().is_empty() {
            return Err("client_email is empty".into());
        }
        if !(account.token_uri.starts_with("https://") || account.token_uri.starts_with("http://")) {
            return Err(format!("token_uri must be an http(s) URL, got '{}'", account.token_uri));
        }
        jsonwebtoken::EncodingKey::from_rsa_pem(account.private_key.as_bytes())
            .map_err(|e| format!("private_key is not a PEM RSA key: {e}"))?;
        Ok(account)
    }
}
