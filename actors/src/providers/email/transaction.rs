//! One SMTP transaction on an open connection. When the relay offers PIPELINING (RFC 2920;
//! Postfix and Exim do by default), MAIL FROM, RCPT TO and DATA go out in one write and their
//! replies are read in order: a message costs two round trips (the command group, then the
//! message) instead of four. A relay that does not offer it gets lettre's one-command-at-a-time
//! transaction.

use super::classify::{failure_of, Failure};
use super::smtp_url::SmtpRelay;
use lettre::address::Envelope;
use lettre::transport::smtp::client::AsyncSmtpConnection;
use lettre::transport::smtp::commands::{Data, Ehlo, Mail, Rcpt};
use lettre::transport::smtp::extension::{ClientId, Extension, MailBodyParameter, MailParameter};
use lettre::transport::smtp::response::{Response as Reply, Severity};
use lettre::transport::smtp::Error;
use std::fmt;

/// An open connection to the relay, and whether it may pipeline.
pub(super) struct Connection {
    smtp: AsyncSmtpConnection,
    pipelining: bool,
}

impl Connection {
    /// Asks the relay once more what it offers (EHLO again, as RFC 5321 §4.1.4 allows: lettre
    /// keeps only the extensions it knows, and PIPELINING is not one of them). Call it after
    /// STARTTLS, whose EHLO is the one that counts, and before AUTH.
    pub(super) async fn ready(mut smtp: AsyncSmtpConnection, hello: &ClientId) -> Result<Connection, Error> {
        let ehlo = smtp.command(Ehlo::new(hello.clone())).await?;
        Ok(Connection { pipelining: offers_pipelining(&ehlo), smtp })
    }

    pub(super) fn smtp(&mut self) -> &mut AsyncSmtpConnection {
        &mut self.smtp
    }

    pub(super) fn has_broken(&self) -> bool {
        self.smtp.has_broken()
    }

    /// Sends one message. The first refusal is the answer (a refused MAIL FROM is what a relay
    /// means, not the 503s its pipelined RCPT and DATA then get); a connection that saw any
    /// refusal is closed, as lettre does, rather than reused in an unknown state. Every reply
    /// must be of the kind its command asks for (2xx, and 3xx for DATA): a positive reply of
    /// the other kind means the replies are out of step with the commands, and the message's
    /// "accepted" could be another command's.
    pub(super) async fn send(&mut self, envelope: &Envelope, email: &[u8]) -> Result<Reply, Refused> {
        let Some(mail) = self.pipelined_mail(envelope, email) else {
            // Without PIPELINING, or with an extension the relay lacks (lettre's own send then
            // says which).
            let reply = self.smtp.send(envelope, email).await.map_err(Refused::Smtp)?;
            return self.expect(reply, Severity::PositiveCompletion, "the message").await;
        };
        let group = Group { mail, to: envelope.to() };
        // MAIL FROM's reply, one per recipient, then DATA's, in order (RFC 2920 §3.1).
        let steps = std::iter::once(("MAIL FROM", Severity::PositiveCompletion))
            .chain(envelope.to().iter().map(|_| ("RCPT TO", Severity::PositiveCompletion)))
            .chain(std::iter::once(("DATA", Severity::PositiveIntermediate)));
        // `command` writes whatever its argument displays as: here the whole group, each
        // command with its CRLF, and reads the first reply.
        let mut reply = Some(self.smtp.command(group).await);
        let mut refused = None;
        for (step, wanted) in steps {
            let answer = match reply.take() {
                Some(answer) => answer,
                None => self.smtp.read_response().await,
            };
            match answer {
                Ok(r) if r.code().severity != wanted => {
                    refused.get_or_insert(Refused::OutOfStep { after: step, code: u16::from(r.code()) });
                }
                Ok(_) => {}
                Err(e) => {
                    // No reply code: the connection broke, and no further reply will come.
                    let broken = e.status().is_none();
                    refused.get_or_insert(Refused::Smtp(e));
                    if broken {
                        break;
                    }
                }
            }
        }
        if let Some(refused) = refused {
            self.smtp.abort().await;
            return Err(refused);
        }
        // The message and its terminating dot in one write (lettre's `message` writes them
        // apart: one more segment, and one more wake-up of the relay, for every message).
        let sent = match std::str::from_utf8(email) {
            Ok(text) => self.smtp.command(Body(text)).await,
            Err(_) => self.smtp.message(email).await,
        };
        match sent {
            Ok(reply) => self.expect(reply, Severity::PositiveCompletion, "the message").await,
            Err(e) => {
                self.smtp.abort().await;
                Err(Refused::Smtp(e))
            }
        }
    }

    /// `reply`, if it is of the `wanted` kind; otherwise the connection is closed.
    async fn expect(&mut self, reply: Reply, wanted: Severity, after: &'static str) -> Result<Reply, Refused> {
        if reply.code().severity == wanted {
            return Ok(reply);
        }
        self.smtp.abort().await;
        Err(Refused::OutOfStep { after, code: u16::from(reply.code()) })
    }

    /// MAIL FROM with the parameters the message needs, when it can be pipelined: the relay
    /// offers PIPELINING and every extension the message needs (SMTPUTF8 for addresses,
    /// 8BITMIME for the body, as lettre's send decides).
    fn pipelined_mail(&self, envelope: &Envelope, email: &[u8]) -> Option<Mail> {
        if !self.pipelining {
            return None;
        }
        let offers = |extension| self.smtp.server_info().supports_feature(extension);
        let mut parameters = Vec::new();
        let addresses = envelope.from().into_iter().chain(envelope.to());
        if addresses.map(AsRef::<str>::as_ref).any(|a| !a.is_ascii()) {
            offers(Extension::SmtpUtfEight).then_some(())?;
            parameters.push(MailParameter::SmtpUtfEight);
        }
        if !email.is_ascii() {
            offers(Extension::EightBitMime).then_some(())?;
            parameters.push(MailParameter::Body(MailBodyParameter::EightBitMime));
        }
        Some(Mail::new(envelope.from().cloned(), parameters))
    }
}

/// Why a transaction did not end with the message accepted.
#[derive(Debug)]
pub(super) enum Refused {
    /// A negative reply, or the connection broke (lettre's error).
    Smtp(Error),
    /// A positive reply of the wrong kind: a 354 where a 250 belongs, or the reverse.
    OutOfStep { after: &'static str, code: u16 },
}

impl Refused {
    /// Whether a kept-open connection may have been the problem (it went away, or said 421 as
    /// relays do when they close an idle client, or had a reply left over), so that a new
    /// connection is worth one more try.
    pub(super) fn may_be_the_connection(&self) -> bool {
        match self {
            Refused::Smtp(e) => e.status().is_none_or(|code| u16::from(code) == 421),
            Refused::OutOfStep { .. } => true,
        }
    }

    pub(super) fn failure(&self, relay: &SmtpRelay) -> Failure {
        match self {
            Refused::Smtp(e) => failure_of(e, relay),
            Refused::OutOfStep { after, code } => Failure::Network(format!(
                "SMTP relay {}: a {code} reply to {after}, out of step with the commands",
                relay.name()
            )),
        }
    }
}

/// Whether an EHLO reply offers PIPELINING: a keyword line after the greeting line.
fn offers_pipelining(ehlo: &Reply) -> bool {
    ehlo.message()
        .skip(1)
        .any(|line| line.split_whitespace().next().is_some_and(|keyword| keyword.eq_ignore_ascii_case("PIPELINING")))
}

/// MAIL FROM, one RCPT TO per recipient and DATA, written as one.
struct Group<'a> {
    mail: Mail,
    to: &'a [lettre::Address],
}

impl fmt::Display for Group<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.mail)?;
        for to in self.to {
            write!(f, "{}", Rcpt::new(to.clone(), Vec::new()))?;
        }
        write!(f, "{Data}")
    }
}

/// A message as DATA sends it: every line that starts with a dot gets a second one (RFC 5321
/// §4.5.2, as lettre's codec does it: a line starts after CRLF), then CRLF, dot, CRLF.
struct Body<'a>(&'a str);

impl fmt::Display for Body<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = self.0;
        let mut from = 0;
        let mut line_start = true;
        let bytes = text.as_bytes();
        for (i, &b) in bytes.iter().enumerate() {
            if b == b'.' && line_start {
                // Up to and with this dot, then the dot again.
                f.write_str(&text[from..=i])?;
                from = i;
            }
            line_start = b == b'\n' && i > 0 && bytes[i - 1] == b'\r';
        }
        f.write_str(&text[from..])?;
        f.write_str("\r\n.\r\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lettre::transport::smtp::response::{Category, Code, Detail};

    fn ehlo(lines: &[&str]) -> Reply {
        let ok = Code::new(Severity::PositiveCompletion, Category::MailSystem, Detail::Zero);
        Reply::new(ok, lines.iter().map(|l| l.to_string()).collect())
    }

    #[test]
    fn pipelining_is_a_keyword_after_the_greeting_in_any_case() {
        assert!(offers_pipelining(&ehlo(&["relay greets you", "SIZE 1000", "PIPELINING"])));
        assert!(offers_pipelining(&ehlo(&["relay", "pipelining"])));
        assert!(!offers_pipelining(&ehlo(&["PIPELINING relay", "SIZE 1000"])), "the greeting line is a name");
        assert!(!offers_pipelining(&ehlo(&["relay", "XPIPELINING", "CHUNKING"])));
    }

    #[test]
    fn the_body_doubles_each_dot_that_starts_a_line_and_ends_with_the_terminator() {
        let body = |text: &str| Body(text).to_string();
        assert_eq!(body("Hi\r\n"), "Hi\r\n\r\n.\r\n");
        assert_eq!(
            body(".hidden\r\n..two\r\nmid.dle.\r\n.\r\n."),
            "..hidden\r\n...two\r\nmid.dle.\r\n..\r\n..\r\n.\r\n"
        );
        // A bare LF does not start a line (lettre's codec agrees): only CRLF does.
        assert_eq!(body("a\n.b\r.c"), "a\n.b\r.c\r\n.\r\n");
        assert_eq!(body(""), "\r\n.\r\n");
        assert_eq!(body("é.\r\n.é"), "é.\r\n..é\r\n.\r\n", "multi-byte text is cut only at dots");
    }

    #[test]
    fn the_group_is_mail_each_rcpt_and_data_each_with_its_crlf() {
        let from: lettre::Address = "a@example.org".parse().expect("address");
        let to: Vec<lettre::Address> = vec!["b@example.org".parse().expect("address")];
        let group = Group { mail: Mail::new(Some(from), Vec::new()), to: &to };
        assert_eq!(group.to_string(), "MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n");
    }
}
