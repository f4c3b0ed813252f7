//! SMTP relay emulator: enough ESMTP (RFC 5321) for lettre and for a person with `nc`.
//!
//! Greets with 220; EHLO advertises `PIPELINING` (unless [`SmtpOptions::pipelining`] is off),
//! `8BITMIME`, `SIZE`, `ENHANCEDSTATUSCODES`, `STARTTLS` (when
//! TLS is configured and not yet on) and `AUTH PLAIN LOGIN` (when credentials are configured,
//! and over TLS when TLS is configured); HELO, AUTH PLAIN / LOGIN (wrong credentials → 535
//! 5.7.8), STARTTLS (tokio-rustls, a self-signed certificate for `127.0.0.1` and `localhost`,
//! [`SmtpEmulator::ca_pem`] for the client), implicit TLS, MAIL FROM, RCPT TO, DATA
//! (dot-unstuffing; over the size limit → 552 5.3.4), RSET, NOOP, QUIT; 500 for unknown
//! commands and 503 for commands out of sequence. A connection may carry several transactions
//! (clients pool their connections). With credentials configured, MAIL before AUTH → 530 5.7.0.
//!
//! Pipelining (RFC 2920) as Postfix does it: replies to commands that came together are held
//! until nothing more is waiting to be read, then written at once. With pipelining off, a
//! command that came before the previous one was answered is refused with `503 5.5.0 Improper
//! use of SMTP command pipelining` ([`SmtpEmulator::pipelined`] counts the commands that came
//! ahead either way).
//!
//! Failures are injected by the recipient's local part (`word@any.domain`, or `word+tag@…`),
//! mirroring docs/providers.md's SMTP table:
//!
//! | local part | reply to RCPT TO |
//! |---|---|
//! | `unknown` | 550 5.1.1 user unknown |
//! | `moved` | 551 5.1.6 user has moved |
//! | `badaddr` | 553 5.1.3 bad address syntax |
//! | `denied` | 550 5.7.1 relay access denied |
//! | `policy` | 554 5.7.1 rejected by policy |
//! | `full` | 452 4.2.2 mailbox full |
//! | `greylist` | 450 4.2.0 greylisted |
//! | `busy` | 451 4.3.0 local error in processing |
//! | `params` | 455 4.5.0 unable to accommodate parameters |
//! | `tempauth` | 454 4.7.0 temporary authentication failure |
//! | `authreq` | 530 5.7.0 authentication required |
//! | `weakauth` | 534 5.7.9 mechanism too weak |
//! | `badcreds` | 535 5.7.8 credentials invalid |
//! | `needtls` | 538 5.7.11 encryption required |
//! | `closing` | 421 4.3.2 closing, and the connection is closed |
//! | `reply-NNN[-X.Y.Z]` | that reply (300–599), e.g. `reply-504-5.5.4@…`; a 3xx is a relay out of step |
//! | `toolarge` | accepted, then 552 5.3.4 at the end of DATA |
//! | `twice` | accepted, and answered twice (`250` `250`): every later reply is one step behind its command |
//! | `stall` | no answer at all (the client's timeout fires) |
//!
//! Whole-server failures, the [`FailPlan`] every emulator takes: [`SmtpEmulator::fail_next`]
//! (the next N connections or transactions get `status` at the greeting or at MAIL FROM),
//! [`SmtpEmulator::fail_for`] (every one for a while), or the admin command
//! `XFAIL {"status":421,"code":"4.3.2","for_ms":10000}` on any connection. A 421 also closes the
//! connection, as a relay that goes away does.

use crate::failure::{FailPlan, Failure};
use base64::Engine;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{AbortHandle, JoinHandle};
use uuid::Uuid;

/// The largest message accepted by default (advertised as `SIZE`).
pub const DEFAULT_MAX_SIZE: usize = 10 * 1024 * 1024;
/// Longest command line accepted (RFC 5321 §4.5.3.1.4 says 512; AUTH lines can be longer).
const MAX_LINE: u64 = 4096;

/// How the emulator protects its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsMode {
    /// Plain SMTP, no STARTTLS.
    #[default]
    None,
    /// STARTTLS offered, and required before AUTH and MAIL.
    StartTls,
    /// TLS from the first byte (`smtps://`).
    Implicit,
}

#[derive(Debug, Clone)]
pub struct SmtpOptions {
    /// (user, password) that AUTH must present; `None` = no AUTH offered or needed.
    pub credentials: Option<(String, String)>,
    pub tls: TlsMode,
    /// Largest accepted message in bytes; 0 = [`DEFAULT_MAX_SIZE`].
    pub max_size: usize,
    /// A client silent this long between commands gets `421 4.4.2` and is hung up on, as
    /// Postfix does after `smtpd_timeout`; `None` = wait forever.
    pub idle_timeout: Option<std::time::Duration>,
    /// Whether EHLO offers PIPELINING (on by default, as on every relay in use today).
    pub pipelining: bool,
}

impl Default for SmtpOptions {
    fn default() -> SmtpOptions {
        SmtpOptions { credentials: None, tls: TlsMode::None, max_size: 0, idle_timeout: None, pipelining: true }
    }
}

/// One message the emulator accepted (250 after DATA).
#[derive(Debug, Clone)]
pub struct Received {
    /// The envelope (MAIL FROM, RCPT TO).
    pub from: String,
    pub to: Vec<String>,
    /// The message as sent, dot-unstuffed, CRLF line ends.
    pub data: Vec<u8>,
    pub subject: Option<String>,
    pub notification_id: Option<String>,
    pub message_id: Option<String>,
    /// Whether the transaction ran over TLS, and who authenticated.
    pub tls: bool,
    pub user: Option<String>,
    pub received_at: SystemTime,
}

impl Received {
    /// The message as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.data).into_owned()
    }

    /// A header's value (unfolded), by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<String> {
        header(&self.data, name)
    }
}

fn header(data: &[u8], name: &str) -> Option<String> {
    let [value] = headers(data, [name]);
    value
}

/// The values of the `names` headers (the first of each, found by any case, unfolded), read in
/// one pass over the message's head only.
fn headers<const N: usize>(data: &[u8], names: [&str; N]) -> [Option<String>; N] {
    let end = data.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or(data.len());
    let head = String::from_utf8_lossy(&data[..end]);
    let mut found: [Option<String>; N] = std::array::from_fn(|_| None);
    let mut current: Option<(usize, String)> = None;
    let mut finish = |current: &mut Option<(usize, String)>| {
        if let Some((i, value)) = current.take() {
            found[i].get_or_insert_with(|| value.trim().to_string());
        }
    };
    for line in head.split("\r\n") {
        if line.starts_with([' ', '\t']) {
            if let Some((_, value)) = current.as_mut() {
                value.push_str(line);
            }
            continue;
        }
        finish(&mut current);
        let Some((key, value)) = line.split_once(':') else { continue };
        let key = key.trim();
        current = names.iter().position(|n| key.eq_ignore_ascii_case(n)).map(|i| (i, value.to_string()));
    }
    finish(&mut current);
    found
}

fn default_enhanced(status: u16) -> &'static str {
    match status {
        421 => "4.3.2",
        454 => "4.7.0",
        530 => "5.7.0",
        535 => "5.7.8",
        400..=499 => "4.3.0",
        _ => "5.3.0",
    }
}

#[derive(Debug, Default)]
struct State {
    received: Vec<Received>,
    /// A [`FailPlan`] in force: `status` with enhanced `code`.
    fail: Failure,
    connections: usize,
    /// Connections ended (by either side), counted once the socket is closed.
    closed: usize,
    transactions: usize,
    /// Commands that arrived before the one in front of them was answered.
    pipelined: usize,
    /// Whole-server failures answered (greetings and transactions refused by the plan).
    injected: usize,
    sessions: Vec<AbortHandle>,
}

struct Shared {
    options: SmtpOptions,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    state: Mutex<State>,
}

impl Shared {
    fn injected(&self) -> Option<(u16, String)> {
        let mut state = self.state.lock().ok()?;
        let plan = state.fail.strike()?;
        let reply = (plan.status, plan.code.clone().unwrap_or_else(|| default_enhanced(plan.status).into()));
        state.injected += 1;
        Some(reply)
    }

    fn max_size(&self) -> usize {
        match self.options.max_size {
            0 => DEFAULT_MAX_SIZE,
            n => n,
        }
    }
}

pub struct SmtpEmulator {
    addr: SocketAddr,
    shared: Arc<Shared>,
    ca_pem: Option<String>,
    accept: JoinHandle<()>,
}

impl SmtpEmulator {
    /// Starts on `addr` (`127.0.0.1:0` for a free port) in the current tokio runtime.
    pub async fn start(addr: &str, options: SmtpOptions) -> std::io::Result<SmtpEmulator> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let (acceptor, ca_pem) = match options.tls {
            TlsMode::None => (None, None),
            TlsMode::StartTls | TlsMode::Implicit => {
                let (config, pem) = crate::tls::self_signed(&["127.0.0.1", "localhost", "::1"])?;
                (Some(tokio_rustls::TlsAcceptor::from(Arc::new(config))), Some(pem))
            }
        };
        let shared = Arc::new(Shared { options, acceptor, state: Mutex::new(State::default()) });
        let accept = tokio::spawn(accept_loop(listener, shared.clone()));
        Ok(SmtpEmulator { addr, shared, ca_pem, accept })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The `smtp_url` a client uses: the scheme and `tls` parameter of the TLS mode, and the
    /// configured credentials.
    pub fn url(&self) -> String {
        let auth = match &self.shared.options.credentials {
            Some((user, password)) => format!("{}:{}@", encode(user), encode(password)),
            None => String::new(),
        };
        match self.shared.options.tls {
            TlsMode::None => format!("smtp://{auth}{}", self.addr),
            TlsMode::StartTls => format!("smtp://{auth}{}?tls=starttls", self.addr),
            TlsMode::Implicit => format!("smtps://{auth}{}", self.addr),
        }
    }

    /// The PEM of the emulator's self-signed certificate (TLS modes only), to trust it.
    pub fn ca_pem(&self) -> Option<&str> {
        self.ca_pem.as_deref()
    }

    /// Every message accepted so far.
    pub fn received(&self) -> Vec<Received> {
        self.shared.state.lock().map(|s| s.received.clone()).unwrap_or_default()
    }

    pub fn received_count(&self) -> usize {
        self.shared.state.lock().map(|s| s.received.len()).unwrap_or_default()
    }

    /// How many times this notification reached this address.
    pub fn sends_of(&self, notification_id: Uuid, to: &str) -> usize {
        let id = notification_id.to_string();
        self.received()
            .iter()
            .filter(|m| m.to.iter().any(|t| t == to) && m.notification_id.as_deref() == Some(id.as_str()))
            .count()
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.state.lock().map(|s| s.connections).unwrap_or_default()
    }

    /// Connections ended so far (the client quit or went away, or the emulator hung up, e.g.
    /// after `idle_timeout`).
    pub fn closed(&self) -> usize {
        self.shared.state.lock().map(|s| s.closed).unwrap_or_default()
    }

    /// Transactions begun (MAIL FROM answered 250).
    pub fn transactions(&self) -> usize {
        self.shared.state.lock().map(|s| s.transactions).unwrap_or_default()
    }

    /// Commands that arrived before the command in front of them was answered (pipelined by the
    /// client: a pipelined transaction has two, RCPT TO and DATA).
    pub fn pipelined(&self) -> usize {
        self.shared.state.lock().map(|s| s.pipelined).unwrap_or_default()
    }

    /// Greetings and transactions refused by a failure plan so far.
    pub fn injected(&self) -> usize {
        self.shared.state.lock().map(|s| s.injected).unwrap_or_default()
    }

    /// Sets a whole-server failure plan (as the `XFAIL` command does).
    pub fn fail(&self, plan: FailPlan) {
        if let Ok(mut s) = self.shared.state.lock() {
            s.fail.set(plan);
        }
    }

    /// The next `count` connections or transactions are answered `status` (`code` = the
    /// enhanced status code, or a usual one for the status).
    pub fn fail_next(&self, status: u16, code: Option<&str>, count: usize) {
        self.fail(FailPlan::next(status, count).with_code(code));
    }

    /// Every connection and transaction is answered `status` for `duration`.
    pub fn fail_for(&self, status: u16, duration: Duration) {
        self.fail(FailPlan::lasting(status, duration));
    }

    pub async fn stop(self) {
        drop(self);
    }
}

impl Drop for SmtpEmulator {
    fn drop(&mut self) {
        self.accept.abort();
        if let Ok(mut s) = self.shared.state.lock() {
            for session in s.sessions.drain(..) {
                session.abort();
            }
        }
    }
}

/// Percent-encodes what is not unreserved (RFC 3986), for credentials in the URL.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(_) => {
                // Out of file descriptors and the like: wait instead of spinning.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let ended = shared.clone();
        let session = tokio::spawn(async move {
            serve_connection(stream, ended.clone()).await;
            // The stream is dropped (closed) by now: a test waiting for this sees it closed.
            if let Ok(mut s) = ended.state.lock() {
                s.closed += 1;
            }
        });
        if let Ok(mut s) = shared.state.lock() {
            s.connections += 1;
            s.sessions.retain(|h| !h.is_finished());
            s.sessions.push(session.abort_handle());
        }
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A connection, read through a buffer (what is in it came along with the last command) and
/// written through one (replies wait there until they are flushed together).
type Stream = BufReader<BufWriter<Box<dyn Io>>>;

fn stream(io: Box<dyn Io>) -> Stream {
    BufReader::new(BufWriter::new(io))
}

/// How a session goes on after a command.
enum Next {
    Continue,
    Close,
    StartTls,
}

struct Session {
    shared: Arc<Shared>,
    tls: bool,
    greeted: bool,
    user: Option<String>,
    from: Option<String>,
    to: Vec<String>,
}

async fn serve_connection(stream: TcpStream, shared: Arc<Shared>) {
    let _ = stream.set_nodelay(true);
    let mut io = match (&shared.acceptor, shared.options.tls) {
        (Some(acceptor), TlsMode::Implicit) => match acceptor.accept(stream).await {
            Ok(tls) => self::stream(Box::new(tls)),
            Err(_) => return,
        },
        _ => self::stream(Box::new(stream)),
    };
    let mut session = Session {
        tls: shared.options.tls == TlsMode::Implicit,
        shared,
        greeted: false,
        user: None,
        from: None,
        to: Vec::new(),
    };
    let mut greet = true;
    // `run` returns for STARTTLS: the plain stream is handed to the TLS acceptor and the
    // session goes on over TLS, with everything negotiated before forgotten (RFC 3207 §4.2).
    while let Ok(Next::StartTls) = session.run(&mut io, greet).await {
        let Some(acceptor) = session.shared.acceptor.clone() else { return };
        if io.get_mut().flush().await.is_err() {
            return;
        }
        // What the client sent after STARTTLS, before the handshake, is dropped (RFC 3207 §4.2).
        match acceptor.accept(io.into_inner().into_inner()).await {
            Ok(tls) => io = self::stream(Box::new(tls)),
            Err(_) => return,
        }
        session.tls = true;
        session.greeted = false;
        session.user = None;
        session.reset();
        greet = false;
    }
    // The last replies (221, or a 421 before hanging up) may still be in the write buffer.
    let _ = io.get_mut().flush().await;
}

/// Replies `text`. The reply is written at once unless more commands already came with the one
/// it answers: then it waits for theirs, and they go out together (a pipelining server's way).
async fn reply(io: &mut Stream, text: &str) -> std::io::Result<()> {
    io.get_mut().write_all(text.as_bytes()).await?;
    io.get_mut().write_all(b"\r\n").await?;
    if io.buffer().is_empty() {
        io.get_mut().flush().await?;
    }
    Ok(())
}

/// Replies `text`, and the session goes on (a refusal of one command).
async fn answer(io: &mut Stream, text: &str) -> std::io::Result<Next> {
    reply(io, text).await?;
    Ok(Next::Continue)
}

/// Reads one line (without its line end); `None` at the end of the stream. A line over
/// [`MAX_LINE`] is returned truncated with `too_long` set.
async fn read_line(io: &mut Stream) -> std::io::Result<Option<(Vec<u8>, bool)>> {
    let mut line = Vec::new();
    let n = (&mut *io).take(MAX_LINE).read_until(b'\n', &mut line).await?;
    if n == 0 {
        return Ok(None);
    }
    let too_long = !line.ends_with(b"\n");
    if too_long {
        // Skip the rest of the line.
        let mut rest = Vec::new();
        io.read_until(b'\n', &mut rest).await?;
    }
    while line.ends_with(b"\n") || line.ends_with(b"\r") {
        line.pop();
    }
    Ok(Some((line, too_long)))
}

/// `<addr>` from `FROM:<addr> PARAMS`; the params after it.
fn path_arg<'a>(arg: &'a str, prefix: &str) -> Option<(&'a str, &'a str)> {
    let head = arg.get(..prefix.len())?;
    if !head.eq_ignore_ascii_case(prefix) {
        return None;
    }
    let rest = arg[prefix.len()..].trim_start();
    let rest = rest.strip_prefix('<')?;
    let (path, params) = rest.split_once('>')?;
    Some((path, params.trim()))
}

/// The injected reply for a recipient, by its local part.
enum Recipient {
    Accept,
    Refuse(u16, String, String),
    TooLarge,
    Stall,
    /// Accepted, and the acceptance said twice: a relay whose replies fall out of step.
    Twice,
}

const REFUSALS: &[(&str, u16, &str, &str)] = &[
    ("unknown", 550, "5.1.1", "Recipient address rejected: User unknown"),
    ("moved", 551, "5.1.6", "User has moved; no forwarding address"),
    ("badaddr", 553, "5.1.3", "Bad recipient address syntax"),
    ("denied", 550, "5.7.1", "Relay access denied"),
    ("policy", 554, "5.7.1", "Rejected by policy"),
    ("full", 452, "4.2.2", "Mailbox full"),
    ("greylist", 450, "4.2.0", "Greylisted, please try again later"),
    ("busy", 451, "4.3.0", "Local error in processing"),
    ("params", 455, "4.5.0", "Server unable to accommodate parameters"),
    ("tempauth", 454, "4.7.0", "Temporary authentication failure"),
    ("authreq", 530, "5.7.0", "Authentication required"),
    ("weakauth", 534, "5.7.9", "Authentication mechanism is too weak"),
    ("badcreds", 535, "5.7.8", "Authentication credentials invalid"),
    ("needtls", 538, "5.7.11", "Encryption required for requested authentication mechanism"),
    ("closing", 421, "4.3.2", "Service not available, closing transmission channel"),
];

fn recipient(address: &str) -> Recipient {
    let local = address.rsplit_once('@').map(|(l, _)| l).unwrap_or(address).to_ascii_lowercase();
    let word = local.split('+').next().unwrap_or_default();
    if let Some(&(_, code, enhanced, text)) = REFUSALS.iter().find(|(w, ..)| *w == word) {
        return Recipient::Refuse(code, enhanced.into(), format!("<{address}>: {text}"));
    }
    match word {
        "toolarge" => return Recipient::TooLarge,
        "stall" => return Recipient::Stall,
        "twice" => return Recipient::Twice,
        _ => {}
    }
    // reply-NNN or reply-NNN-X.Y.Z
    if let Some(spec) = word.strip_prefix("reply-") {
        let (code, enhanced) = spec.split_once('-').unwrap_or((spec, ""));
        if let Ok(code @ 300..=599) = code.parse::<u16>() {
            let enhanced = match enhanced {
                // A 3xx has no enhanced code (RFC 3463 has classes 2, 4 and 5 only).
                "" if code < 400 => String::new(),
                "" => default_enhanced(code).to_string(),
                given => given.to_string(),
            };
            return Recipient::Refuse(code, enhanced, format!("<{address}>: injected reply"));
        }
    }
    Recipient::Accept
}

impl Session {
    fn reset(&mut self) {
        self.from = None;
        self.to.clear();
    }

    fn state<T>(&self, f: impl FnOnce(&mut State) -> T) -> Option<T> {
        self.shared.state.lock().ok().map(|mut s| f(&mut s))
    }

    /// Serves commands until the client quits or goes away, or asks for STARTTLS.
    async fn run(&mut self, io: &mut Stream, greet: bool) -> std::io::Result<Next> {
        if greet {
            if let Some((status, code)) = self.shared.injected() {
                reply(io, &format!("{status} {code} injected failure, closing")).await?;
                return Ok(Next::Close);
            }
            reply(io, "220 notify-relay.emulator ESMTP SMTP emulator").await?;
        }
        loop {
            // A command already read along with the one before it came before that one's reply.
            let ahead = !io.buffer().is_empty();
            let next = match self.shared.options.idle_timeout {
                Some(limit) => match tokio::time::timeout(limit, read_line(io)).await {
                    Ok(next) => next?,
                    Err(_) => {
                        reply(io, "421 4.4.2 notify-relay.emulator Error: timeout exceeded").await?;
                        return Ok(Next::Close);
                    }
                },
                None => read_line(io).await?,
            };
            let Some((line, too_long)) = next else { return Ok(Next::Close) };
            if too_long {
                reply(io, "500 5.5.6 Line too long").await?;
                continue;
            }
            if ahead {
                self.state(|s| s.pipelined += 1);
                if !self.shared.options.pipelining {
                    reply(io, "503 5.5.0 Improper use of SMTP command pipelining").await?;
                    continue;
                }
            }
            let line = String::from_utf8_lossy(&line).into_owned();
            match self.command(io, &line).await? {
                Next::Continue => {}
                next => return Ok(next),
            }
        }
    }

    async fn command(&mut self, io: &mut Stream, line: &str) -> std::io::Result<Next> {
        let (verb, arg) = line.split_once(' ').unwrap_or((line, ""));
        let arg = arg.trim();
        let creds = self.shared.options.credentials.clone();
        let tls_wanted = self.shared.options.tls != TlsMode::None;
        match verb.to_ascii_uppercase().as_str() {
            "EHLO" | "HELO" if arg.is_empty() => reply(io, "501 5.5.4 Syntax: EHLO hostname").await?,
            "EHLO" => {
                self.greeted = true;
                self.reset();
                let mut lines = vec![format!("notify-relay.emulator greets {arg}")];
                lines.push("8BITMIME".into());
                lines.push(format!("SIZE {}", self.shared.max_size()));
                lines.push("ENHANCEDSTATUSCODES".into());
                if self.shared.options.pipelining {
                    lines.push("PIPELINING".into());
                }
                if self.shared.options.tls == TlsMode::StartTls && !self.tls {
                    lines.push("STARTTLS".into());
                }
                if creds.is_some() && (self.tls || !tls_wanted) {
                    lines.push("AUTH PLAIN LOGIN".into());
                }
                let last = lines.len() - 1;
                let text: Vec<String> = lines
                    .iter()
                    .enumerate()
                    .map(|(i, l)| format!("250{}{l}", if i == last { ' ' } else { '-' }))
                    .collect();
                reply(io, &text.join("\r\n")).await?;
            }
            "HELO" => {
                self.greeted = true;
                self.reset();
                reply(io, "250 notify-relay.emulator").await?;
            }
            "STARTTLS" => {
                if self.shared.options.tls != TlsMode::StartTls {
                    reply(io, "502 5.5.1 STARTTLS not available").await?;
                } else if self.tls {
                    reply(io, "503 5.5.1 TLS already active").await?;
                } else {
                    reply(io, "220 2.0.0 Ready to start TLS").await?;
                    return Ok(Next::StartTls);
                }
            }
            "AUTH" => self.auth(io, arg).await?,
            "MAIL" => return self.mail(io, arg).await,
            "RCPT" => return self.rcpt(io, arg).await,
            "DATA" => self.data(io).await?,
            "RSET" => {
                self.reset();
                reply(io, "250 2.0.0 Ok").await?;
            }
            "NOOP" => reply(io, "250 2.0.0 Ok").await?,
            "QUIT" => {
                reply(io, "221 2.0.0 Bye").await?;
                return Ok(Next::Close);
            }
            "VRFY" => reply(io, "252 2.5.2 Cannot VRFY user").await?,
            "XFAIL" => match serde_json::from_str::<FailPlan>(arg) {
                Ok(plan) => {
                    self.state(|s| s.fail.set(plan));
                    reply(io, "250 2.0.0 Failure plan set").await?;
                }
                Err(e) => {
                    reply(io, &format!("501 5.5.4 XFAIL {{\"status\":421,\"count\":3}} or {{…,\"for_ms\":10000}}: {e}"))
                        .await?
                }
            },
            _ => reply(io, "500 5.5.2 Command not recognized").await?,
        }
        Ok(Next::Continue)
    }

    async fn auth(&mut self, io: &mut Stream, arg: &str) -> std::io::Result<()> {
        let Some((user, password)) = self.shared.options.credentials.clone() else {
            return reply(io, "502 5.5.1 AUTH not available").await;
        };
        if !self.greeted {
            return reply(io, "503 5.5.1 Send EHLO first").await;
        }
        if self.user.is_some() {
            return reply(io, "503 5.5.1 Already authenticated").await;
        }
        if self.shared.options.tls != TlsMode::None && !self.tls {
            return reply(io, "538 5.7.11 Encryption required for requested authentication mechanism").await;
        }
        let (mechanism, initial) = arg.split_once(' ').unwrap_or((arg, ""));
        let b64 = base64::engine::general_purpose::STANDARD;
        let decode = |s: &str| b64.decode(s.trim()).ok().map(|b| String::from_utf8_lossy(&b).into_owned());
        let given = match mechanism.to_ascii_uppercase().as_str() {
            "PLAIN" => {
                let response = match initial {
                    "" => {
                        reply(io, "334 ").await?;
                        match read_line(io).await? {
                            Some((l, _)) => String::from_utf8_lossy(&l).into_owned(),
                            None => return Ok(()),
                        }
                    }
                    initial => initial.to_string(),
                };
                if response.trim() == "*" {
                    return reply(io, "501 5.7.0 Authentication cancelled").await;
                }
                // authzid \0 authcid \0 password
                decode(&response).and_then(|plain| {
                    let mut parts = plain.split('\0');
                    let _authzid = parts.next()?;
                    Some((parts.next()?.to_string(), parts.next()?.to_string()))
                })
            }
            "LOGIN" => {
                let name = match initial {
                    "" => {
                        reply(io, &format!("334 {}", b64.encode("Username:"))).await?;
                        match read_line(io).await? {
                            Some((l, _)) => decode(&String::from_utf8_lossy(&l)),
                            None => return Ok(()),
                        }
                    }
                    initial => decode(initial),
                };
                reply(io, &format!("334 {}", b64.encode("Password:"))).await?;
                let secret = match read_line(io).await? {
                    Some((l, _)) => decode(&String::from_utf8_lossy(&l)),
                    None => return Ok(()),
                };
                name.zip(secret)
            }
            _ => return reply(io, "504 5.5.4 Unrecognized authentication type").await,
        };
        match given {
            Some((u, p)) if u == user && p == password => {
                self.user = Some(u);
                reply(io, "235 2.7.0 Authentication successful").await
            }
            Some(_) => reply(io, "535 5.7.8 Authentication credentials invalid").await,
            None => reply(io, "501 5.5.2 Cannot decode the response").await,
        }
    }

    async fn mail(&mut self, io: &mut Stream, arg: &str) -> std::io::Result<Next> {
        if !self.greeted {
            return answer(io, "503 5.5.1 Send EHLO first").await;
        }
        if self.shared.options.tls == TlsMode::StartTls && !self.tls {
            return answer(io, "530 5.7.0 Must issue a STARTTLS command first").await;
        }
        if self.shared.options.credentials.is_some() && self.user.is_none() {
            return answer(io, "530 5.7.0 Authentication required").await;
        }
        if self.from.is_some() {
            return answer(io, "503 5.5.1 Nested MAIL command").await;
        }
        let Some((path, params)) = path_arg(arg, "FROM:") else {
            return answer(io, "501 5.5.4 Syntax: MAIL FROM:<address>").await;
        };
        if let Some((status, code)) = self.shared.injected() {
            reply(io, &format!("{status} {code} injected failure")).await?;
            return Ok(if status == 421 { Next::Close } else { Next::Continue });
        }
        let declared = params.split_whitespace().find_map(|p| {
            let (k, v) = p.split_once('=')?;
            k.eq_ignore_ascii_case("SIZE").then(|| v.parse::<usize>().ok()).flatten()
        });
        if declared.is_some_and(|size| size > self.shared.max_size()) {
            return answer(io, "552 5.3.4 Message size exceeds fixed maximum message size").await;
        }
        self.from = Some(path.to_string());
        self.state(|s| s.transactions += 1);
        answer(io, "250 2.1.0 Ok").await
    }

    async fn rcpt(&mut self, io: &mut Stream, arg: &str) -> std::io::Result<Next> {
        if self.from.is_none() {
            return answer(io, "503 5.5.1 Need MAIL command").await;
        }
        let Some((path, _)) = path_arg(arg, "TO:") else {
            return answer(io, "501 5.5.4 Syntax: RCPT TO:<address>").await;
        };
        match recipient(path) {
            Recipient::Refuse(code, enhanced, text) => {
                let enhanced = if enhanced.is_empty() { String::new() } else { format!("{enhanced} ") };
                reply(io, &format!("{code} {enhanced}{text}")).await?;
                if code == 421 {
                    return Ok(Next::Close);
                }
            }
            Recipient::Stall => {
                // Never answer: read (and drop) whatever comes until the client gives up. The
                // replies before this one still go out.
                io.get_mut().flush().await?;
                while read_line(io).await?.is_some() {}
                return Ok(Next::Close);
            }
            Recipient::Accept | Recipient::TooLarge => {
                self.to.push(path.to_string());
                reply(io, "250 2.1.5 Ok").await?;
            }
            Recipient::Twice => {
                self.to.push(path.to_string());
                reply(io, "250 2.1.5 Ok\r\n250 2.1.5 Ok").await?;
            }
        }
        Ok(Next::Continue)
    }

    async fn data(&mut self, io: &mut Stream) -> std::io::Result<()> {
        if self.to.is_empty() {
            let text = if self.from.is_none() { "503 5.5.1 Need MAIL command" } else { "503 5.5.1 Need RCPT command" };
            return reply(io, text).await;
        }
        reply(io, "354 End data with <CR><LF>.<CR><LF>").await?;
        let max = self.shared.max_size();
        let mut data = Vec::new();
        let mut too_large = false;
        let mut line = Vec::new();
        loop {
            line.clear();
            if io.read_until(b'\n', &mut line).await? == 0 {
                return Ok(()); // the client went away mid-message: nothing is accepted
            }
            if line == b".\r\n" || line == b".\n" {
                break;
            }
            // Dot-unstuffing (RFC 5321 §4.5.2).
            let line = line.strip_prefix(b".").unwrap_or(&line);
            if data.len() + line.len() > max {
                too_large = true;
            } else {
                data.extend_from_slice(line);
            }
        }
        let from = self.from.take().unwrap_or_default();
        let to = std::mem::take(&mut self.to);
        if too_large || to.iter().any(|t| matches!(recipient(t), Recipient::TooLarge)) {
            return reply(io, "552 5.3.4 Message size exceeds fixed maximum message size").await;
        }
        let [subject, notification_id, message_id] = headers(&data, ["Subject", "X-Notification-Id", "Message-ID"]);
        let received = Received {
            subject,
            notification_id,
            message_id,
            from,
            to,
            data,
            tls: self.tls,
            user: self.user.clone(),
            received_at: SystemTime::now(),
        };
        self.state(|s| s.received.push(received));
        reply(io, &format!("250 2.0.0 Ok: queued as {}", Uuid::new_v4().simple())).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipients_are_matched_on_the_whole_first_word_of_the_local_part() {
        assert!(matches!(recipient("unknown@example.com"), Recipient::Refuse(550, ref e, _) if e == "5.1.1"));
        assert!(matches!(recipient("Unknown+erin@example.com"), Recipient::Refuse(550, ..)));
        assert!(matches!(recipient("unknownish@example.com"), Recipient::Accept));
        assert!(matches!(recipient("reply-504-5.5.4@x.org"), Recipient::Refuse(504, ref e, _) if e == "5.5.4"));
        assert!(matches!(recipient("reply-451@x.org"), Recipient::Refuse(451, ref e, _) if e == "4.3.0"));
        assert!(matches!(recipient("stall@x.org"), Recipient::Stall));
        assert!(matches!(recipient("Twice+1@x.org"), Recipient::Twice));
        assert!(matches!(recipient("reply-354@x.org"), Recipient::Refuse(354, ref e, _) if e.is_empty()));
        assert!(matches!(recipient("reply-250@x.org"), Recipient::Accept), "a 2xx is no injection");
    }

    #[test]
    fn headers_are_unfolded_and_found_by_any_case() {
        let data = b"Subject: a\r\n long one\r\nX-Notification-Id: 7\r\n\r\nSubject: body\r\n";
        assert_eq!(header(data, "subject").as_deref(), Some("a long one"));
        assert_eq!(header(data, "x-notification-id").as_deref(), Some("7"));
        assert_eq!(header(data, "Message-ID"), None);
        let folded_last = b"To: a@b\r\nSubject: one\r\n two\r\n\r\n";
        assert_eq!(headers(folded_last, ["subject", "to", "cc"]), [Some("one two".into()), Some("a@b".into()), None]);
        assert_eq!(header(b"Subject: first\r\nSubject: second\r\n", "Subject").as_deref(), Some("first"));
    }

    #[test]
    fn mail_and_rcpt_paths_are_read_with_their_parameters() {
        assert_eq!(path_arg("FROM:<a@b> BODY=8BITMIME", "FROM:"), Some(("a@b", "BODY=8BITMIME")));
        assert_eq!(path_arg("to: <c@d>", "TO:"), Some(("c@d", "")));
        assert_eq!(path_arg("FROM:a@b", "FROM:"), None);
    }
}
