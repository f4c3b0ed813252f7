//! Expo push receipts: `POST {base}/--/api/v2/push/getReceipts`, and how its answer is read.
//! A receipt is classified like the ticket it follows (docs/providers.md, Expo table).

use super::classify::{classify_ticket, Ticket};
use super::{ExpoClient, MAX_RESPONSE_BYTES};
use crate::job::{bounded, SendResult};
use serde::Deserialize;
use serde_json::json;

/// Why no receipts could be read from Expo; every receipt asked for is asked for again later.
/// The text goes to the log: it is bounded like every provider error.
#[derive(Debug, thiserror::Error)]
pub enum ReceiptsError {
    #[error("expo receipts: {0}")]
    Request(#[source] awc::error::SendRequestError),
    #[error("expo receipts: {0}")]
    Read(#[source] awc::error::PayloadError),
    /// Not a 200; `body` is the start of what Expo sent.
    #[error("{}", bounded(format!("expo receipts: HTTP {}: {}", .status, .body)))]
    Status { status: u16, body: String },
    #[error("{}", bounded(format!("expo receipts: unreadable response: {}", .0)))]
    Unreadable(#[source] serde_json::Error),
}

impl ExpoClient {
    /// `POST {base}/--/api/v2/push/getReceipts` for at most 1000 ids. Returns the receipts Expo
    /// has, classified like tickets; ids it does not know yet are absent.
    pub async fn receipts(&self, ids: &[&str]) -> Result<Vec<(String, SendResult)>, ReceiptsError> {
        let mut req = self.poster.http.post(&self.receipts_url).insert_header(("accept", "application/json"));
        if let Some(token) = &self.poster.access_token {
            req = req.bearer_auth(token);
        }
        let mut resp = req.send_json(&json!({ "ids": ids })).await.map_err(ReceiptsError::Request)?;
        let status = resp.status().as_u16();
        let body = resp.body().limit(MAX_RESPONSE_BYTES).await.map_err(ReceiptsError::Read)?;
        classify_receipts(status, &body)
    }
}

/// Classifies a getReceipts answer: the receipts it holds, classified like tickets, or why the
/// whole answer is unusable (then every receipt asked for is asked for again later).
pub fn classify_receipts(status: u16, body: &[u8]) -> Result<Vec<(String, SendResult)>, ReceiptsError> {
    if status != 200 {
        let body = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
        return Err(ReceiptsError::Status { status, body });
    }
    let parsed: ReceiptsResponse = serde_json::from_slice(body).map_err(ReceiptsError::Unreadable)?;
    Ok(parsed.data.into_iter().map(|(id, ticket)| (id, classify_ticket(ticket))).collect())
}

#[derive(Deserialize)]
struct ReceiptsResponse {
    data: std::collections::HashMap<String, Ticket>,
}
