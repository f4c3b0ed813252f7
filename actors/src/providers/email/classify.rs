//! How the relay answered, as docs/providers.md's SMTP table says: what went wrong in a transaction
//! ([`Failure`], read from lettre's error by [`failure_of`]), classified by [`classify`] into the
//! job's result and the relay's health; and how a batch's health follows from its transactions.

use super::smtp_url::SmtpRelay;
use super::tls::certificate_error;
use crate::circuit::Health;
use crate::job::{bounded, SendResult};
use crate::providers::{combine, Response};
use lettre::transport::smtp::response::Response as Reply;
use std::error::Error as _;
use std::time::Duration;

/// What went wrong in one SMTP transaction, as far as classification cares.
#[derive(Debug, Clone, PartialEq)]
pub enum Failure {
    /// A negative reply: the reply code and its text (led by the enhanced status code, if any).
    Reply { code: u16, text: String },
    /// Could not connect, the connection broke, or the relay's answer was unreadable.
    Network(String),
    /// No answer within the timeout (how long, which relay).
    Timeout(Duration, String),
    /// The relay's TLS certificate was refused.
    Certificate(String),
    /// The relay cannot work with our configuration: STARTTLS or AUTH required but not offered.
    Setup(String),
    /// This message cannot be sent as built (e.g. 8BITMIME or SMTPUTF8 needed but not offered).
    Message(String),
}

/// The enhanced status code (RFC 3463) that leads a reply's text: `5.1.1` → (5, 1, 1).
pub fn enhanced_code(text: &str) -> Option<(u8, u16, u16)> {
    let mut parts = text.split_whitespace().next()?.splitn(3, '.');
    let class = parts.next()?.parse::<u8>().ok().filter(|c| matches!(c, 2 | 4 | 5))?;
    let subject = parts.next()?.parse::<u16>().ok()?;
    let detail = parts.next()?.parse::<u16>().ok()?;
    Some((class, subject, detail))
}

/// The result of the reply that accepted a message: delivered, with the reply (code and text,
/// which usually names the relay's queue id) as the provider's message id.
pub fn accepted(reply: &Reply) -> SendResult {
    let text: Vec<&str> = reply.message().collect();
    let id = Some(format!("{} {}", u16::from(reply.code()), text.join(" ")).trim().to_string());
    SendResult::Delivered { provider_message_id: id }
}

/// docs/providers.md's SMTP table. `repeated_454` says whether a 454 follows another one closely.
pub fn classify(failure: &Failure, repeated_454: bool) -> (SendResult, Health) {
    let retry = |error: String| SendResult::Retry { error, after: None };
    match failure {
        Failure::Reply { code, text } => {
            let error = bounded(format!("email: {code} {}", text.replace(['\r', '\n'], " ").trim()));
            let enhanced = enhanced_code(text);
            match code {
                200..=399 => (SendResult::Delivered { provider_message_id: None }, Health::Up),
                // The relay is going away or overloaded: everything sent there now would fail.
                421 => (retry(error.clone()), Health::Outage(error)),
                454 if repeated_454 => {
                    let error = bounded(format!("{error} (repeated)"));
                    (SendResult::Auth { error: error.clone() }, Health::AuthFailure(error))
                }
                // Temporary authentication failure: the relay's side, not this mailbox's.
                454 => (retry(error.clone()), Health::Outage(error)),
                // 450/451/452/455 and other 4xx: this mailbox or transaction, the relay answered.
                400..=499 => (retry(error), Health::Up),
                530 | 534 | 535 | 538 => (SendResult::Auth { error: error.clone() }, Health::AuthFailure(error)),
                550 | 551 | 553 if matches!(enhanced, Some((5, 1, _))) => {
                    (SendResult::InvalidToken { error }, Health::Up)
                }
                _ => (SendResult::Permanent { error }, Health::Up),
            }
        }
        Failure::Network(e) => {
            let error = bounded(format!("email: {e}"));
            (retry(error.clone()), Health::Outage(error))
        }
        Failure::Timeout(after, relay) => {
            let error =
                bounded(format!("email: no answer from the SMTP relay {relay} within {} ms", after.as_millis()));
            (retry(error.clone()), Health::Outage(error))
        }
        Failure::Certificate(e) | Failure::Setup(e) => {
            let error = bounded(format!("email: {e}"));
            (SendResult::Auth { error: error.clone() }, Health::AuthFailure(error))
        }
        Failure::Message(e) => (SendResult::Permanent { error: bounded(format!("email: {e}")) }, Health::Up),
    }
}

/// Reads lettre's error: a reply (`status()` and the reply text, which is the error's source),
/// or how the connection failed.
pub(super) fn failure_of(e: &lettre::transport::smtp::Error, relay: &SmtpRelay) -> Failure {
    let detail = e.source().map(|s| s.to_string()).unwrap_or_default();
    if let Some(code) = e.status() {
        return Failure::Reply { code: u16::from(code), text: detail };
    }
    if let Some(reason) = certificate_error(e) {
        return Failure::Certificate(format!(
            "the TLS certificate of the SMTP relay {} was refused: {reason}",
            relay.name()
        ));
    }
    if e.is_timeout() {
        return Failure::Network(format!("connecting to the SMTP relay {} timed out", relay.name()));
    }
    if e.is_client() {
        // lettre's own checks of what the relay offers (its texts, lettre 0.11).
        return match detail.as_str() {
            d if d.contains("STARTTLS is not supported") => {
                Failure::Setup(format!("the SMTP relay {} does not offer STARTTLS", relay.name()))
            }
            d if d.contains("authentication mechanism") => Failure::Setup(format!(
                "the SMTP relay {} offers no authentication (AUTH PLAIN or LOGIN) for the configured credentials",
                relay.name()
            )),
            d => Failure::Message(d.to_string()),
        };
    }
    if e.is_tls() {
        return Failure::Setup(format!("TLS with the SMTP relay {} failed: {detail}", relay.name()));
    }
    Failure::Network(format!("SMTP relay {}: {e}", relay.name()))
}

/// What became of one job of a batch.
#[derive(Debug, Clone, PartialEq)]
pub enum Attempt {
    /// A transaction with the relay, classified: its health says how the relay did.
    Transaction(SendResult, Health),
    /// Nothing reached the relay (no free connection in time, or a message that cannot be
    /// built), so it says nothing about the relay's health.
    NotSent(SendResult),
}

/// One result per job, in order. The relay's health is judged on the transactions alone: a
/// relay that hangs is an outage even when most of the batch was still waiting for the
/// connections the hung transactions held.
pub fn batch_response(attempts: Vec<Attempt>) -> Response {
    let transactions = attempts
        .iter()
        .filter_map(|a| match a {
            Attempt::Transaction(result, health) => Some((result.clone(), health.clone())),
            Attempt::NotSent(_) => None,
        })
        .collect();
    let health = combine(transactions).health;
    let results = attempts
        .into_iter()
        .map(|a| match a {
            Attempt::Transaction(result, _) | Attempt::NotSent(result) => result,
        })
        .collect();
    Response { results, health }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(code: u16, text: &str) -> (SendResult, Health) {
        classify(&Failure::Reply { code, text: text.into() }, false)
    }

    #[test]
    fn temporary_replies_are_retried_and_only_421_is_an_outage() {
        for code in [450, 451, 452, 455] {
            let (result, health) = reply(code, "4.2.0 try later");
            assert!(matches!(result, SendResult::Retry { after: None, .. }), "{code}");
            assert_eq!(health, Health::Up, "{code}: the relay answered");
        }
        let (result, health) = reply(421, "4.3.2 closing");
        assert_eq!(result, SendResult::Retry { error: "email: 421 4.3.2 closing".into(), after: None });
        assert!(matches!(health, Health::Outage(_)));
    }

    #[test]
    fn a_454_is_retried_and_a_repeated_one_is_an_auth_failure() {
        let failure = Failure::Reply { code: 454, text: "4.7.0 Temporary authentication failure".into() };
        let (first, health) = classify(&failure, false);
        assert!(matches!(first, SendResult::Retry { .. }));
        assert!(matches!(health, Health::Outage(_)));
        let (second, health) = classify(&failure, true);
        assert!(matches!(second, SendResult::Auth { .. }));
        assert!(matches!(health, Health::AuthFailure(_)));
    }

    #[test]
    fn authentication_replies_are_auth_failures() {
        for code in [530, 534, 535, 538] {
            let (result, health) = reply(code, "5.7.8 no");
            assert!(matches!(result, SendResult::Auth { .. }), "{code}");
            assert!(matches!(health, Health::AuthFailure(_)), "{code}");
        }
    }

    #[test]
    fn only_mailbox_replies_with_an_enhanced_5_1_code_disable_the_address() {
        for (code, text) in [(550, "5.1.1 User unknown"), (551, "5.1.6 moved"), (553, "5.1.3 bad syntax")] {
            let (result, health) = reply(code, text);
            assert!(matches!(result, SendResult::InvalidToken { .. }), "{code} {text}");
            assert_eq!(health, Health::Up);
        }
        for (code, text) in [
            (550, "5.7.1 relay denied"),
            (550, "User unknown"),
            (553, "5.7.1 sender refused"),
            (500, "5.5.2 syntax"),
            (501, "5.1.3 bad address"),
            (502, "5.5.1 not implemented"),
            (503, "5.5.1 bad sequence"),
            (504, "5.5.4 not implemented"),
            (552, "5.3.4 too big"),
            (554, "5.7.1 policy"),
        ] {
            let (result, health) = reply(code, text);
            assert!(matches!(result, SendResult::Permanent { .. }), "{code} {text}");
            assert_eq!(health, Health::Up);
        }
    }

    #[test]
    fn connection_failures_timeouts_and_certificates() {
        let (result, health) = classify(&Failure::Network("connection refused".into()), false);
        assert!(matches!(result, SendResult::Retry { .. }) && matches!(health, Health::Outage(_)));
        let (result, health) = classify(&Failure::Timeout(Duration::from_millis(500), "h:25".into()), false);
        assert_eq!(result.error(), Some("email: no answer from the SMTP relay h:25 within 500 ms"));
        assert!(matches!(health, Health::Outage(_)));
        let (result, health) = classify(&Failure::Certificate("UnknownIssuer".into()), false);
        assert!(matches!(result, SendResult::Auth { .. }) && matches!(health, Health::AuthFailure(_)));
    }

    #[test]
    fn jobs_that_never_reached_the_relay_do_not_hide_an_outage() {
        let timeout = || classify(&Failure::Timeout(Duration::from_millis(300), "h:25".into()), false);
        let (hung, outage) = timeout();
        let waited = || Attempt::NotSent(SendResult::Deferred { error: "no free".into(), after: Duration::ZERO });
        let refused = Attempt::NotSent(SendResult::InvalidToken { error: "not an address".into() });

        let response = batch_response(vec![Attempt::Transaction(hung.clone(), outage.clone()), waited(), refused]);

        assert!(matches!(response.health, Health::Outage(_)), "{response:?}");
        assert_eq!(response.results.len(), 3);
        assert_eq!(response.results[0], hung);
        assert!(matches!(response.results[1], SendResult::Deferred { .. }));
        assert!(matches!(response.results[2], SendResult::InvalidToken { .. }));
        // One transaction the relay answered: it is up, whatever the others waited for.
        let delivered = Attempt::Transaction(SendResult::Delivered { provider_message_id: None }, Health::Up);
        let (hung, outage) = timeout();
        assert_eq!(batch_response(vec![Attempt::Transaction(hung, outage), delivered, waited()]).health, Health::Up);
        // Nothing reached the relay: nothing learned about it.
        assert_eq!(batch_response(vec![waited(), waited()]).health, Health::Up);
    }

    #[test]
    fn enhanced_codes_are_read_from_the_start_of_the_text() {
        assert_eq!(enhanced_code("5.1.1 <a@b>: unknown"), Some((5, 1, 1)));
        assert_eq!(enhanced_code("4.7.0"), Some((4, 7, 0)));
        assert_eq!(enhanced_code("User 5.1.1 unknown"), None);
        assert_eq!(enhanced_code("3.1.1 odd"), None);
        assert_eq!(enhanced_code(""), None);
    }

    #[test]
    fn a_long_reply_is_cut_to_a_bounded_error() {
        // lettre accepts replies of up to 100 kB; the error keeps their start.
        let (result, health) = reply(554, &format!("5.7.1 {}", "no ".repeat(30_000)));
        assert!(result.error().is_some_and(|e| e.len() <= crate::providers::MAX_ERROR_BYTES), "{result:?}");
        let (result, health_454) = classify(&Failure::Reply { code: 454, text: "x".repeat(5_000) }, true);
        assert!(result.error().is_some_and(|e| e.len() <= crate::providers::MAX_ERROR_BYTES), "{result:?}");
        assert!(matches!(health_454, Health::AuthFailure(e) if e.len() <= crate::providers::MAX_ERROR_BYTES));
        assert_eq!(health, Health::Up);
    }
}

#[cfg(test)]
mod proptests {
    use super::*;
    use crate::providers::check::{assert_one_class, class};
    use proptest::prelude::*;

    /// docs/providers.md's SMTP table.
    fn documented(code: u16, text: &str, repeated_454: bool) -> &'static str {
        match code {
            200..=299 => "OK",
            454 if repeated_454 => "AUTH",
            400..=499 => "RETRY",
            530 | 534 | 535 | 538 => "AUTH",
            550 | 551 | 553 if matches!(enhanced_code(text), Some((5, 1, _))) => "INVALID",
            _ => "PERM",
        }
    }

    #[test]
    fn every_documented_reply_read_from_the_wire_maps_to_its_class() {
        let rows: &[(&str, bool, &str)] = &[
            ("250 2.0.0 Ok: queued as 4Bc1\r\n", false, "OK"),
            ("421 4.3.2 Service not available, closing channel\r\n", false, "RETRY"),
            ("450 4.2.1 Mailbox busy\r\n", false, "RETRY"),
            ("451 4.3.0 Local error\r\n", false, "RETRY"),
            ("452 4.3.1 Insufficient storage\r\n", false, "RETRY"),
            ("455 4.5.4 Parameters cannot be accommodated\r\n", false, "RETRY"),
            ("454 4.7.0 Temporary authentication failure\r\n", false, "RETRY"),
            ("454 4.7.0 Temporary authentication failure\r\n", true, "AUTH"),
            ("530 5.7.0 Authentication required\r\n", false, "AUTH"),
            ("534 5.7.9 Mechanism too weak\r\n", false, "AUTH"),
            ("535 5.7.8 Authentication credentials invalid\r\n", false, "AUTH"),
            ("538 5.7.11 Encryption required\r\n", false, "AUTH"),
            ("550-5.1.1 The email account does not exist.\r\n550 5.1.1 Try again.\r\n", false, "INVALID"),
            ("551 5.1.6 User has moved\r\n", false, "INVALID"),
            ("553 5.1.3 Bad destination syntax\r\n", false, "INVALID"),
            ("550 5.7.1 Relaying denied\r\n", false, "PERM"),
            ("500 5.5.2 Syntax error\r\n", false, "PERM"),
            ("501 5.5.4 Bad arguments\r\n", false, "PERM"),
            ("502 5.5.1 Not implemented\r\n", false, "PERM"),
            ("503 5.5.1 Bad sequence\r\n", false, "PERM"),
            ("504 5.5.4 Not implemented\r\n", false, "PERM"),
            ("552 5.3.4 Message too big\r\n", false, "PERM"),
            ("554 5.7.1 Rejected by policy\r\n", false, "PERM"),
        ];
        for (wire, repeated, expected) in rows {
            let (result, health) = from_the_wire(wire, *repeated).expect("lettre parses the reply");
            assert_one_class(&result, &health);
            assert_eq!(class(&result), *expected, "{wire:?}");
        }
    }

    /// What the client makes of a reply lettre read: `accepted` for a positive one, else the
    /// failure lettre reports (code, and the lines joined) classified.
    fn from_the_wire(wire: &str, repeated_454: bool) -> Option<(SendResult, Health)> {
        let reply: Reply = wire.parse().ok()?;
        if reply.is_positive() {
            return Some((accepted(&reply), Health::Up));
        }
        let text = reply.message().collect::<Vec<_>>().join(" ");
        Some(classify(&Failure::Reply { code: u16::from(reply.code()), text }, repeated_454))
    }

    fn reply_text() -> impl Strategy<Value = String> {
        prop_oneof!["[245]\\.[0-9]{1,3}\\.[0-9]{1,3}( \\PC{0,40})?", any::<String>(), "\\PC{600,2000}",]
    }

    proptest! {
        #[test]
        fn any_reply_is_one_class_and_its_documented_one(
            code in prop_oneof![200u16..600, any::<u16>()],
            text in reply_text(),
            repeated_454 in any::<bool>(),
        ) {
            let (result, health) = classify(&Failure::Reply { code, text: text.clone() }, repeated_454);
            assert_one_class(&result, &health);
            if (200..600).contains(&code) && !(300..400).contains(&code) {
                prop_assert_eq!(class(&result), documented(code, &text, repeated_454));
            }
        }

        #[test]
        fn any_connection_failure_is_one_class(text in reply_text(), ms in any::<u64>()) {
            for failure in [
                Failure::Network(text.clone()),
                Failure::Timeout(Duration::from_millis(ms), text.clone()),
                Failure::Certificate(text.clone()),
                Failure::Setup(text.clone()),
                Failure::Message(text.clone()),
            ] {
                let (result, health) = classify(&failure, false);
                assert_one_class(&result, &health);
            }
        }

        #[test]
        fn any_reply_lettre_reads_is_one_class(
            lines in prop::collection::vec(reply_text(), 1..4),
            code in prop_oneof![prop::sample::select(vec![250u16, 421, 450, 454, 535, 550, 553, 554]), 200u16..600],
            repeated_454 in any::<bool>(),
        ) {
            let last = lines.len() - 1;
            let wire: String = lines
                .iter()
                .enumerate()
                .map(|(i, l)| format!("{code}{}{}\r\n", if i == last { ' ' } else { '-' }, l.replace(['\r', '\n'], " ")))
                .collect();
            if let Some((result, health)) = from_the_wire(&wire, repeated_454) {
                assert_one_class(&result, &health);
            }
        }

        #[test]
        fn enhanced_codes_never_panic_and_have_a_class_of_2_4_or_5(text in reply_text()) {
            if let Some((class, _, _)) = enhanced_code(&text) {
                prop_assert!(matches!(class, 2 | 4 | 5));
            }
        }
    }
}
