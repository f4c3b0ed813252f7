//! The email for one job: the `From` mailbox, the envelope, and the formatted message.

use crate::job::{Job, SendResult};
use lettre::address::Envelope;
use lettre::message::header::{HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart, SinglePart};
use lettre::{Address, Message};

/// A formatted message larger than this fails without being sent (most relays refuse 10 MB+).
pub const MAX_MESSAGE_BYTES: usize = 10 * 1024 * 1024;
/// The header that carries the notification id, so a recipient's tooling can de-duplicate.
pub const NOTIFICATION_ID_HEADER: &str = "X-Notification-Id";

/// `providers.email.from` is not a mailbox (the text follows the key).
#[derive(Debug, thiserror::Error)]
#[error("must be a mailbox like 'Name <no-reply@example.com>' ({0})")]
pub struct MailboxError(#[source] lettre::address::AddressError);

/// Parses the `From` mailbox: `no-reply@example.com` or `Name <no-reply@example.com>`.
pub fn mailbox(from: &str) -> Result<Mailbox, MailboxError> {
    from.trim().parse::<Mailbox>().map_err(MailboxError)
}

/// The envelope and the formatted message for one job, or why it cannot be sent.
///
/// From = the configured mailbox, To = the device token, Subject = `payload.subject` or else
/// `payload.title`, text body = `payload.body`, HTML alternative = `payload.html`; the headers
/// `X-Notification-Id` and a `Message-ID` made of the notification and device ids (a re-send of
/// the same target carries the same Message-ID, so it is recognisable).
pub fn message(job: &Job, from: &Mailbox) -> Result<(Envelope, Vec<u8>), SendResult> {
    let to = job.token.trim().parse::<Address>().map_err(|e| {
        let error = format!("email: '{}' is not an email address ({e})", job.token);
        SendResult::InvalidToken { error }
    })?;
    let permanent = |error: String| SendResult::Permanent { error };
    let text = |key: &str| job.payload.get(key).and_then(serde_json::Value::as_str);
    // A subject is one header line: control characters (a title's newline) become spaces.
    let subject: String = text("subject")
        .or_else(|| text("title"))
        .unwrap_or_default()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let body = text("body").unwrap_or_default().to_string();
    let message_id = format!("<{}.{}@{}>", job.notification_id, job.device_id, from.email.domain());
    let builder = Message::builder()
        .from(from.clone())
        .to(Mailbox::new(None, to))
        .subject(subject)
        .message_id(Some(message_id))
        .raw_header(HeaderValue::new(
            HeaderName::new_from_ascii_str(NOTIFICATION_ID_HEADER),
            job.notification_id.to_string(),
        ))
        // RFC 3834: auto-responders must not answer a notification.
        .raw_header(HeaderValue::new(HeaderName::new_from_ascii_str("Auto-Submitted"), "auto-generated".into()));
    let built = match text("html") {
        Some(html) => builder.multipart(MultiPart::alternative_plain_html(body, html.to_string())),
        None => builder.singlepart(SinglePart::plain(body)),
    };
    let message = built.map_err(|e| permanent(format!("email: cannot build the message: {e}")))?;
    let bytes = message.formatted();
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(permanent(format!("email: message too large: {} bytes (limit {MAX_MESSAGE_BYTES})", bytes.len())));
    }
    Ok((message.envelope().clone(), bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::{Priority, Provider};
    use serde_json::json;
    use uuid::Uuid;

    fn job(token: &str, payload: serde_json::Value) -> Job {
        let job = crate::providers::check::job(Provider::Email, token, payload, Priority::Normal);
        Job { notification_id: Uuid::from_u128(1), device_id: Uuid::from_u128(2), ..job }
    }

    #[test]
    fn the_from_mailbox_must_parse() {
        assert_eq!(mailbox("Notifications <no-reply@example.com>").unwrap().email.to_string(), "no-reply@example.com");
        assert!(mailbox("no-reply@example.com").is_ok());
        assert!(mailbox("Notifications").is_err());
        assert!(mailbox("a@b@c").is_err());
    }

    #[test]
    fn the_message_has_the_headers_and_the_ids() {
        let from = mailbox("Notify <no-reply@example.com>").unwrap();
        let (envelope, bytes) =
            message(&job("alice@example.org", json!({"title": "Shipped", "body": "On its way"})), &from).unwrap();
        assert_eq!(envelope.to()[0].to_string(), "alice@example.org");
        assert_eq!(envelope.from().unwrap().to_string(), "no-reply@example.com");
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.contains("Subject: Shipped\r\n"), "{text}");
        assert!(text.contains(&format!("X-Notification-Id: {}\r\n", Uuid::from_u128(1))), "{text}");
        let id = format!("Message-ID: <{}.{}@example.com>\r\n", Uuid::from_u128(1), Uuid::from_u128(2));
        assert!(text.contains(&id), "{text}");
        assert!(text.contains("\r\n\r\nOn its way"), "{text}");
        assert!(text.contains("Content-Type: text/plain"), "{text}");
    }

    #[test]
    fn a_title_with_control_characters_becomes_a_one_line_subject() {
        let from = mailbox("no-reply@example.com").unwrap();
        let payload = json!({"title": "Two\nlines\r\nBcc: x@evil.example\u{7}"});
        let (_, bytes) = message(&job("a@example.org", payload), &from).unwrap();
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.contains("Subject: Two lines  Bcc: x@evil.example \r\n"), "{text}");
        assert!(!text.contains("\r\nBcc:"), "{text}");
    }

    #[test]
    fn subject_wins_over_title_and_html_becomes_the_alternative() {
        let from = mailbox("no-reply@example.com").unwrap();
        let payload = json!({"title": "T", "subject": "S", "body": "plain", "html": "<p>rich</p>"});
        let (_, bytes) = message(&job("a@example.org", payload), &from).unwrap();
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.contains("Subject: S\r\n"), "{text}");
        assert!(text.contains("multipart/alternative") && text.contains("text/html"), "{text}");
        assert!(text.contains("<p>rich</p>"), "{text}");
    }

    #[test]
    fn an_unparsable_address_is_an_invalid_token_and_a_huge_message_is_permanent() {
        let from = mailbox("no-reply@example.com").unwrap();
        let result = message(&job("not an address", json!({})), &from).unwrap_err();
        assert!(matches!(result, SendResult::InvalidToken { .. }));
        let big = json!({"body": "x".repeat(MAX_MESSAGE_BYTES)});
        let result = message(&job("a@example.org", big), &from).unwrap_err();
        assert!(result.error().unwrap().starts_with("email: message too large: "), "{result:?}");
    }
}
