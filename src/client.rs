//! SMTP client that hands queued messages to the one smarthost (RFC 5321, 3207, 4954, 1870, 2920, 3030, 6152, 6531).
//!
//! Plain blocking I/O: `Connection::open` connects, reads the greeting, says EHLO, upgrades with
//! STARTTLS when required (never falling back to plaintext), logs in, and `send` forwards one
//! message, returning one outcome per recipient. Every error carries its stage and its permanence,
//! decided where the reply is read.

use crate::config::{SmarthostAuth, TlsMode};
use crate::smtp::data::write_stuffed;
use crate::smtp::reply::{parse_reply_line, MAX_PEER_REPLY_LINE, MAX_REPLY_LINES};
use crate::smtp::sasl::{self, BearerMechanism};
use crate::smtp::throttle::{self, Throttle};
use crate::tls::Stream;
use std::fmt;
use std::io::{self, BufWriter, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// RFC 5321 4.5.3.2.4: DATA initiation, 2 minutes (capped by `Settings::command_timeout`).
const DATA_INIT_TIMEOUT: Duration = Duration::from_secs(120);
/// RFC 5321 4.5.3.2.5: one data block, 3 minutes (capped by `Settings::data_timeout`).
const DATA_BLOCK_TIMEOUT: Duration = Duration::from_secs(180);
/// How long QUIT waits for its 221: we are leaving anyway.
const QUIT_TIMEOUT: Duration = Duration::from_secs(10);
/// Buffer between the spool file and the socket: few large writes instead of one per line.
const WRITE_BUFFER: usize = 64 * 1024;
/// What the transcript shows instead of an AUTH payload or challenge.
const MASK: &str = "********";

/// Where a delivery attempt failed: the relay pauses delivery after Tls/Auth failures and
/// reports the last error of each stage in `picorelay status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Name resolution, TCP connect, greeting, EHLO.
    Connect,
    /// STARTTLS missing or refused, or the TLS handshake (certificate) failed.
    Tls,
    /// AUTH missing or refused.
    Auth,
    /// MAIL, RCPT, DATA, the message itself, RSET.
    Send,
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stage::Connect => "connect",
            Stage::Tls => "tls",
            Stage::Auth => "auth",
            Stage::Send => "send",
        })
    }
}

/// A failed attempt: `permanent` is true only when retrying the same thing cannot succeed
/// (a 5xx reply, a message too big for the smarthost, a refused login).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientError {
    /// Where it failed.
    pub stage: Stage,
    /// True for a permanent failure (5xx or equivalent).
    pub permanent: bool,
    /// "host:port: what happened", with the smarthost's reply when there is one.
    pub message: String,
    /// What kind of failure it is, stable from one attempt to the next (a reply code and
    /// enhanced status code, an identity provider's error code; never ids or times): a pause
    /// is logged again only when this, the stage or the permanence changes. Empty = unnamed.
    pub kind: String,
    /// Set when the smarthost said the account is throttled (a quota, a rate or connection
    /// limit): never permanent, whatever the reply's first digit.
    pub throttle: Option<Throttle>,
}

impl ClientError {
    fn new(stage: Stage, permanent: bool, message: impl Into<String>) -> ClientError {
        ClientError {
            stage,
            permanent,
            message: message.into(),
            kind: String::new(),
            throttle: None,
        }
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.stage, self.message)
    }
}

impl std::error::Error for ClientError {}

/// Where OAuth access tokens come from (delivery wires in `oauth::Tokens`): the client only
/// asks for a token and says when the smarthost refused one.
pub trait BearerSource: Send + Sync {
    /// bearer returns an access token for one login. `refused` is the token the smarthost has
    /// just refused: a different, newly issued one is wanted. An Err is a ClientError at the
    /// Auth stage, transient when the identity provider may answer later.
    fn bearer(&self, refused: Option<&str>) -> Result<String, ClientError>;
}

/// How to reach and log in to the smarthost (built by the caller from `config::Smarthost`).
#[derive(Clone)]
pub struct Settings {
    /// Hosts tried in order: (name or IP literal, port).
    pub hosts: Vec<(String, u16)>,
    /// StartTls (required, never downgraded), Implicit (RFC 8314) or None.
    pub tls: TlsMode,
    /// From `tls::client_config`.
    pub tls_config: Arc<rustls::ClientConfig>,
    /// AUTH user; None = no AUTH.
    pub username: Option<String>,
    /// AUTH password.
    pub password: Option<String>,
    /// Which mechanism logs in (`[smarthost] auth`).
    pub auth: SmarthostAuth,
    /// OAuth access tokens, for XOAUTH2/OAUTHBEARER; None = password mechanisms.
    pub bearer: Option<Arc<dyn BearerSource>>,
    /// `[smarthost] throttle_replies`: more replies that mean "account throttled".
    pub throttle_replies: Arc<[String]>,
    /// Name sent in EHLO/HELO.
    pub helo: String,
    /// Per address TCP connect timeout (e.g. 30 s).
    pub connect_timeout: Duration,
    /// Greeting, EHLO, STARTTLS, AUTH, MAIL, RCPT, RSET (RFC 5321 4.5.3.2: 5 min); also caps
    /// DATA initiation (2 min) and is the TLS handshake's read timeout.
    pub command_timeout: Duration,
    /// Reply to the final dot (RFC 5321 4.5.3.2.6: 10 min); also caps the data block write timeout (3 min).
    pub data_timeout: Duration,
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The password never reaches a log, even through {:?}.
        f.debug_struct("Settings")
            .field("hosts", &self.hosts)
            .field("tls", &self.tls)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| MASK))
            .field("auth", &self.auth)
            .field("bearer", &self.bearer.as_ref().map(|_| "oauth"))
            .field("helo", &self.helo)
            .field("connect_timeout", &self.connect_timeout)
            .field("command_timeout", &self.command_timeout)
            .field("data_timeout", &self.data_timeout)
            .finish()
    }
}

/// What became of one recipient; the text is the smarthost's reply ("550 5.1.1 no such user").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RcptOutcome {
    /// Taken by the smarthost (RCPT and the final dot both accepted).
    Accepted,
    /// 4xx: try again later.
    Transient(String),
    /// 5xx: bounce.
    Permanent(String),
    /// The account is throttled (whatever the code): wait, never bounce for it.
    Throttled(Throttle, String),
}

/// outcome is what a refusal of one recipient (RCPT, or the final dot) means.
fn outcome(r: &Reply, extra: &[String]) -> RcptOutcome {
    match throttle::classify(r.code, &r.text(), extra) {
        Some(t) => RcptOutcome::Throttled(t, r.text()),
        None if (500..600).contains(&r.code) => RcptOutcome::Permanent(r.text()),
        None => RcptOutcome::Transient(r.text()),
    }
}

/// The EHLO keywords this client uses (RFC 5321 4.1.1.1; each extension's RFC at its field).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Extensions {
    /// RFC 3207.
    pub starttls: bool,
    /// RFC 4954: mechanisms, uppercased.
    pub auth: Vec<String>,
    /// RFC 1870: Some(limit) when SIZE is offered; 0 = no fixed limit.
    pub size: Option<u64>,
    /// RFC 2920.
    pub pipelining: bool,
    /// RFC 6152.
    pub eight_bit_mime: bool,
    /// RFC 6531.
    pub smtputf8: bool,
    /// RFC 3030 2: BDAT.
    pub chunking: bool,
    /// RFC 3030 3: BODY=BINARYMIME. Parsed only: messages here are 7bit/8bit text.
    pub binarymime: bool,
}

impl Extensions {
    /// Extensions::parse reads the text lines of a 250 EHLO reply; the first line is the
    /// server's name and carries no keyword. Unknown keywords are ignored.
    pub fn parse(lines: &[String]) -> Extensions {
        let mut ext = Extensions::default();
        for line in lines.iter().skip(1) {
            let mut words = line.split_ascii_whitespace();
            let Some(keyword) = words.next() else {
                continue;
            };
            let keyword = keyword.to_ascii_uppercase();
            // "AUTH=PLAIN LOGIN" is the pre-RFC 4954 form some servers still send.
            if let Some(first) = keyword.strip_prefix("AUTH=") {
                add_mechanisms(&mut ext.auth, std::iter::once(first).chain(words));
                continue;
            }
            match keyword.as_str() {
                "STARTTLS" => ext.starttls = true,
                "AUTH" => add_mechanisms(&mut ext.auth, words),
                // RFC 1870 4: "SIZE" alone or "SIZE 0" means no fixed limit.
                "SIZE" => ext.size = Some(words.next().and_then(|n| n.parse().ok()).unwrap_or(0)),
                "PIPELINING" => ext.pipelining = true,
                "8BITMIME" => ext.eight_bit_mime = true,
                "SMTPUTF8" => ext.smtputf8 = true,
                "CHUNKING" => ext.chunking = true,
                "BINARYMIME" => ext.binarymime = true,
                _ => {}
            }
        }
        ext
    }
}

fn add_mechanisms<'a>(list: &mut Vec<String>, words: impl Iterator<Item = &'a str>) {
    for w in words {
        let m = w.to_ascii_uppercase();
        if !m.is_empty() && !list.contains(&m) {
            list.push(m);
        }
    }
}

/// A reply from the smarthost.
#[derive(Debug)]
struct Reply {
    code: u16,
    lines: Vec<String>,
}

impl Reply {
    /// "550 5.1.1 no such user" (lines joined with spaces), for messages and outcomes.
    fn text(&self) -> String {
        let text = self.lines.join(" ");
        let text = text.trim();
        if text.is_empty() {
            self.code.to_string()
        } else {
            format!("{} {}", self.code, text)
        }
    }
}

/// Why reading or writing the socket failed; always transient.
#[derive(Debug)]
enum WireError {
    Timeout,
    Closed,
    Io(io::Error),
    Invalid(&'static str),
}

impl From<io::Error> for WireError {
    fn from(e: io::Error) -> WireError {
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => WireError::Timeout,
            io::ErrorKind::UnexpectedEof => WireError::Closed,
            _ => WireError::Io(e),
        }
    }
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::Timeout => f.write_str("timed out"),
            WireError::Closed => f.write_str("connection closed by the smarthost"),
            WireError::Io(e) => write!(f, "{e}"),
            WireError::Invalid(why) => write!(f, "smarthost sent an invalid reply ({why})"),
        }
    }
}

fn wire_error(stage: Stage, peer: &str, what: &str, e: WireError) -> ClientError {
    ClientError::new(stage, false, format!("{peer}: {what}: {e}"))
}

/// Permanence from the reply code: 5xx permanent, anything else (4xx, nonsense) transient.
fn reply_error(stage: Stage, peer: &str, what: &str, r: &Reply, extra: &[String]) -> ClientError {
    let permanent = (500..600).contains(&r.code);
    let mut e = ClientError::new(stage, permanent, format!("{peer}: {what}: {}", r.text()));
    e.kind = reply_kind(r);
    throttled(e, r, extra)
}

/// throttled marks an error whose reply is a throttle (the account is limited): transient,
/// with the throttle's kind.
fn throttled(mut e: ClientError, r: &Reply, extra: &[String]) -> ClientError {
    if let Some(t) = throttle::classify(r.code, &r.text(), extra) {
        e.permanent = false;
        e.kind = format!("throttle {}", t.name());
        e.throttle = Some(t);
    }
    e
}

/// reply_kind is the code and, when the reply has one, its enhanced status code (RFC 3463):
/// "535 5.7.3".
fn reply_kind(r: &Reply) -> String {
    let first = r.lines.first().and_then(|l| l.split_whitespace().next());
    match first
        .filter(|w| w.split('.').count() == 3 && w.bytes().all(|b| b.is_ascii_digit() || b == b'.'))
    {
        Some(enhanced) => format!("{} {enhanced}", r.code),
        None => r.code.to_string(),
    }
}

/// Where `Connection::set_transcript` sends the lines of later commands.
pub type TranscriptSink = Box<dyn FnMut(&str) + Send>;

/// A transcript sink: "C: ..." / "S: ..." lines (also sent to log::debug!).
type Transcript<'a> = &'a mut dyn FnMut(&str);

fn note(tr: Transcript<'_>, peer: &str, line: &str) {
    log::debug!("smarthost {peer}: {line}");
    tr(line);
}

/// Shows bytes from the network without letting control characters reach a terminal or log.
fn printable(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// A zero timeout means "block forever" to the socket API; never ask for that.
fn nonzero(d: Duration) -> Duration {
    d.max(Duration::from_millis(1))
}

/// The socket with a bounded read buffer for reply lines.
struct Wire {
    stream: Stream,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    peer: String,
}

impl Wire {
    fn new(stream: Stream, peer: String) -> Wire {
        Wire {
            stream,
            buf: vec![0; MAX_PEER_REPLY_LINE],
            start: 0,
            end: 0,
            peer,
        }
    }

    /// True when the smarthost sent bytes we have not consumed yet.
    fn pending(&self) -> bool {
        self.start < self.end
    }

    /// Wire::idle_check says, without a round trip, whether the session still looks usable
    /// between transactions: the smarthost has sent nothing (a 421 or a TLS close) and has not
    /// closed the connection. A non-blocking read; TLS records without application data (TLS
    /// 1.3 session tickets) are consumed by rustls and do not count.
    fn idle_check(&mut self) -> Result<(), WireError> {
        if self.pending() {
            return Err(WireError::Invalid("unsolicited data between transactions"));
        }
        // Nothing unread: the whole buffer is free.
        self.start = 0;
        self.end = 0;
        // The last reply's deadline may be long past: this read only looks, it must not fail
        // for lack of time.
        self.stream.set_read_deadline(None);
        self.stream.tcp().set_nonblocking(true)?;
        let got = loop {
            match self.stream.read(&mut self.buf[self.end..]) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => break r,
            }
        };
        self.stream.tcp().set_nonblocking(false)?;
        match got {
            Ok(0) => Err(WireError::Closed),
            Ok(n) => {
                // Kept for the transcript of whoever reads next; the session is not used again.
                self.end += n;
                Err(WireError::Invalid("unsolicited data between transactions"))
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Sends command lines in one write (several = an RFC 2920 pipelined group); `shown` is what
    /// the transcript gets for each (AUTH payloads masked).
    fn send(&mut self, lines: &[(&str, &str)], tr: Transcript<'_>) -> Result<(), WireError> {
        let out = self.encode(lines, tr)?;
        self.stream.write_all(&out)?;
        self.stream.flush()?;
        Ok(())
    }

    /// Wire::encode checks command lines and returns their bytes, CRLF after each, for the
    /// caller to write; the transcript shows `shown` for each.
    fn encode(&self, lines: &[(&str, &str)], tr: Transcript<'_>) -> Result<Vec<u8>, WireError> {
        let mut out = Vec::new();
        for (line, shown) in lines {
            // Last line of defence against command injection: the callers validate first.
            if line.bytes().any(|b| b == b'\r' || b == b'\n') {
                return Err(WireError::Io(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "refusing to send a command containing CR or LF",
                )));
            }
            note(tr, &self.peer, &format!("C: {shown}"));
            out.extend_from_slice(line.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        Ok(out)
    }

    /// Sends one command that is safe to show.
    fn command(&mut self, line: &str, tr: Transcript<'_>) -> Result<(), WireError> {
        self.send(&[(line, line)], tr)
    }

    /// Reads one line (without CR LF) of at most MAX_PEER_REPLY_LINE octets, by `deadline`.
    fn read_line(&mut self, deadline: Instant) -> Result<Vec<u8>, WireError> {
        loop {
            if let Some(i) = self.buf[self.start..self.end]
                .iter()
                .position(|&b| b == b'\n')
            {
                let mut line = self.buf[self.start..self.start + i].to_vec();
                self.start += i + 1;
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Ok(line);
            }
            // RFC 5321 4.5.3.1.5 (reply line length): stop at MAX_PEER_REPLY_LINE instead of
            // buffering forever.
            if self.end - self.start >= MAX_PEER_REPLY_LINE {
                return Err(WireError::Invalid("reply line too long"));
            }
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(WireError::Timeout);
            }
            self.stream.tcp().set_read_timeout(Some(nonzero(left)))?;
            // Over TLS one read is as many socket reads as rustls needs for a whole record:
            // the deadline bounds them all, or a record trickled a byte at a time would not be.
            self.stream.set_read_deadline(Some(deadline));
            let n = loop {
                match self.stream.read(&mut self.buf[self.end..]) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e.into()),
                }
            };
            if n == 0 {
                return Err(WireError::Closed);
            }
            self.end += n;
        }
    }

    /// Reads a whole (multi-line) reply within `timeout`. `mask` hides 334 challenges.
    fn read_reply(
        &mut self,
        timeout: Duration,
        mask: bool,
        tr: Transcript<'_>,
    ) -> Result<Reply, WireError> {
        // RFC 5321 4.5.3.2: the timeout bounds the whole reply, not each read; a server that
        // trickles a byte at a time would otherwise hold delivery for up to MAX_REPLY_LINES
        // lines of MAX_PEER_REPLY_LINE octets, one timeout per byte.
        let deadline = Instant::now() + nonzero(timeout);
        let mut lines = Vec::new();
        let mut code = 0;
        loop {
            let raw = self.read_line(deadline)?;
            let shown = if mask && raw.starts_with(b"334") {
                format!("334 {MASK}")
            } else {
                printable(&raw)
            };
            note(tr, &self.peer, &format!("S: {shown}"));
            let (c, last, text) =
                parse_reply_line(&raw).map_err(|_| WireError::Invalid("not a reply line"))?;
            // RFC 5321 4.2: codes are 2xx..5xx, the same on every line of a reply.
            if !(200..600).contains(&c) {
                return Err(WireError::Invalid("reply code out of range"));
            }
            if !lines.is_empty() && c != code {
                return Err(WireError::Invalid("reply code changed within a reply"));
            }
            code = c;
            lines.push(text.to_string());
            if last {
                return Ok(Reply { code, lines });
            }
            // RFC 5321 4.2.1 sets no line count; MAX_REPLY_LINES keeps a hostile server from
            // making us read forever.
            if lines.len() >= MAX_REPLY_LINES {
                return Err(WireError::Invalid("too many lines in one reply"));
            }
        }
    }

    /// Runs the TLS handshake (implicit TLS or after STARTTLS's 220). Any unread plaintext is
    /// dropped with the old buffer: the caller checked there was none.
    fn start_tls(
        self,
        cfg: Arc<rustls::ClientConfig>,
        host: &str,
        timeout: Duration,
        tr: Transcript<'_>,
    ) -> Result<Wire, ClientError> {
        let peer = self.peer;
        let timeout = nonzero(timeout);
        let tls_error = |e: io::Error| {
            let why = match e.kind() {
                io::ErrorKind::TimedOut => format!(
                    "TLS handshake with {peer} did not complete within {}s",
                    timeout.as_secs_f64()
                ),
                _ => format!("{peer}: TLS handshake failed: {e}"),
            };
            ClientError::new(Stage::Tls, false, why)
        };
        // The whole handshake within the timeout, not each read: a smarthost trickling its
        // handshake a byte at a time must not hold a delivery worker for ever.
        let stream = self
            .stream
            .connect_tls(cfg, host, Instant::now() + timeout)
            .map_err(tls_error)?;
        let info = stream.tls_info().unwrap_or_default();
        note(tr, &peer, &format!("* TLS established: {info}"));
        Ok(Wire::new(stream, peer))
    }

    /// Best-effort goodbye (RFC 5321 4.1.1.10); errors do not matter any more.
    fn quit(&mut self, timeout: Duration, tr: Transcript<'_>) {
        if self.command("QUIT", tr).is_ok() {
            let _ = self.read_reply(timeout.min(QUIT_TIMEOUT), false, tr);
        }
        let _ = self.stream.tcp().shutdown(std::net::Shutdown::Both);
    }
}

/// An open, greeted, (TLS-protected,) logged-in session with the smarthost.
pub struct Connection {
    wire: Wire,
    ext: Extensions,
    command_timeout: Duration,
    data_timeout: Duration,
    /// Set when the session is out of step (I/O error, half-sent message): no more commands.
    broken: bool,
    /// Set when a transaction may still be open on the smarthost (MAIL sent, and the
    /// transaction not ended by a 250 to the final dot or to BDAT LAST, or by RSET): RSET must
    /// precede the next MAIL. RFC 5321 4.1.1.4: a completed transaction clears the server's
    /// buffers, so after a clean 250 the next MAIL goes without RSET.
    needs_rset: bool,
    transcript: Option<TranscriptSink>,
    /// `[smarthost] throttle_replies`.
    throttles: Arc<[String]>,
}

impl Connection {
    /// Connection::open tries each host in order (each resolved address, IPv6 and IPv4), then
    /// greeting, EHLO, STARTTLS when required (no plaintext fallback: STARTTLS missing or refused →
    /// ClientError{stage:Tls}), EHLO again, AUTH (PLAIN else LOGIN) when a username is set.
    /// A host failing at Connect or Tls stage makes it try the next; the last error is returned.
    /// `transcript` receives every line sent/received ("C: ...", "S: ...", and "* ..." notes),
    /// with AUTH payloads and challenges replaced by "********".
    pub fn open(
        s: &Settings,
        transcript: Option<&mut dyn FnMut(&str)>,
    ) -> Result<Connection, ClientError> {
        let mut quiet = |_: &str| {};
        let tr: Transcript<'_> = match transcript {
            Some(t) => t,
            None => &mut quiet,
        };
        // The name goes on the EHLO line: a CR/LF or space there would inject or break commands.
        if s.helo.is_empty() || s.helo.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(ClientError::new(
                Stage::Connect,
                false,
                format!("invalid helo name {:?}: set [smarthost] helo", s.helo),
            ));
        }
        let mut last = None;
        for (host, port) in &s.hosts {
            match open_host(s, host, *port, tr) {
                Ok(c) => return Ok(c),
                // Another host may be reachable or have a valid certificate. A refused login is
                // not retried elsewhere: the same credentials would fail again and risk a lockout.
                Err(e) if matches!(e.stage, Stage::Connect | Stage::Tls) => {
                    log::debug!("smarthost: {e}");
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| {
            ClientError::new(Stage::Connect, false, "no smarthost configured (hold mode)")
        }))
    }

    /// Connection::send forwards one message. Err when the whole message failed (too big, MAIL or
    /// DATA refused, connection lost), with its permanence. Ok holds one outcome per entry of
    /// `rcpts`, in order; a 4xx/5xx after the final dot (or to BDAT LAST) applies to every
    /// accepted recipient. `message` is the stored message (CRLF lines, not dot-stuffed); `size`
    /// its exact length in bytes as sent (BDAT announces it; a message of another length breaks
    /// the session with a transient error). With CHUNKING and PIPELINING offered the message goes
    /// as one `BDAT <size> LAST` chunk in the same write as MAIL and RCPT (RFC 3030), else DATA.
    /// With `eight_bit` and 8BITMIME offered, BODY=8BITMIME is declared (RFC 6152); when it is not
    /// offered the message is sent anyway, as other relays do: nearly all servers pass 8-bit data.
    /// SMTPUTF8 is requested when `smtputf8` is set or an address is not ASCII (RFC 6531 3.4).
    pub fn send(
        &mut self,
        sender: &str,
        rcpts: &[String],
        message: &mut dyn Read,
        size: u64,
        eight_bit: bool,
        smtputf8: bool,
    ) -> Result<Vec<RcptOutcome>, ClientError> {
        let mut sink = self.transcript.take();
        let mut quiet = |_: &str| {};
        let tr: Transcript<'_> = match sink.as_mut() {
            Some(t) => t.as_mut(),
            None => &mut quiet,
        };
        let result = self.send_message(sender, rcpts, message, size, eight_bit, smtputf8, tr);
        self.transcript = sink;
        result
    }

    /// Connection::reset makes sure the next message starts clean, and finds a connection the
    /// smarthost has dropped while idle. After a completed transaction it costs no round trip
    /// (a non-blocking look at the socket). After an aborted one RSET (RFC 5321 4.1.1.5) is
    /// needed: without PIPELINING it is sent now; with PIPELINING it goes in the same write as
    /// the next MAIL/RCPT/DATA group (RFC 2920 3.1) and its reply is read first. Err means the
    /// connection must not be used again.
    pub fn reset(&mut self) -> Result<(), ClientError> {
        let mut sink = self.transcript.take();
        let mut quiet = |_: &str| {};
        let tr: Transcript<'_> = match sink.as_mut() {
            Some(t) => t.as_mut(),
            None => &mut quiet,
        };
        let result = self.prepare(tr);
        self.transcript = sink;
        result
    }

    /// Connection::quit says QUIT, waits briefly for the 221 and closes.
    pub fn quit(mut self) {
        let mut sink = self.transcript.take();
        let mut quiet = |_: &str| {};
        let tr: Transcript<'_> = match sink.as_mut() {
            Some(t) => t.as_mut(),
            None => &mut quiet,
        };
        if !self.broken {
            self.wire.quit(self.command_timeout, tr);
        }
    }

    /// Connection::peer is "host:port" of the smarthost in use.
    pub fn peer(&self) -> String {
        self.wire.peer.clone()
    }

    /// Connection::peer_fingerprint is the SHA-256 of the smarthost's certificate,
    /// when encrypted (probe prints it, ready for `tls_fingerprint`).
    pub fn peer_fingerprint(&self) -> Option<[u8; 32]> {
        self.wire.stream.peer_fingerprint()
    }

    /// Connection::extensions is what the smarthost offered in its last EHLO reply.
    #[cfg(test)]
    pub fn extensions(&self) -> &Extensions {
        &self.ext
    }

    /// Connection::tls_info is "TLSv1.3 ..." when the session is encrypted, else None.
    pub fn tls_info(&self) -> Option<String> {
        self.wire.stream.tls_info()
    }

    /// Connection::set_transcript routes later send/reset/quit lines to `sink` too (probe --to).
    pub fn set_transcript(&mut self, sink: Option<TranscriptSink>) {
        self.transcript = sink;
    }

    /// Marks the session unusable and describes the I/O failure; always transient.
    fn lost(&mut self, what: &str, e: WireError) -> ClientError {
        self.broken = true;
        wire_error(Stage::Send, &self.wire.peer, what, e)
    }

    fn read(
        &mut self,
        timeout: Duration,
        what: &str,
        tr: Transcript<'_>,
    ) -> Result<Reply, ClientError> {
        match self.wire.read_reply(timeout, false, tr) {
            // RFC 5321 3.8: 421 is the smarthost ending the session, at any point of a
            // transaction. The replies still due for a pipelined group never come, and reading
            // on would turn its reason ("try again later", a rate limit) into a bare
            // "connection closed": the reply is the error, throttle and all.
            Ok(r) if r.code == 421 => {
                self.broken = true;
                Err(reply_error(
                    Stage::Send,
                    &self.wire.peer,
                    what,
                    &r,
                    &self.throttles,
                ))
            }
            Ok(r) => Ok(r),
            Err(e) => Err(self.lost(what, e)),
        }
    }

    fn write(&mut self, lines: &[(&str, &str)], tr: Transcript<'_>) -> Result<(), ClientError> {
        match self.wire.send(lines, tr) {
            Ok(()) => Ok(()),
            Err(e) => Err(self.lost("sending a command", e)),
        }
    }

    fn prepare(&mut self, tr: Transcript<'_>) -> Result<(), ClientError> {
        if self.broken {
            return Err(self.unusable());
        }
        if let Err(e) = self.wire.idle_check() {
            return Err(self.lost("connection check between messages", e));
        }
        if self.needs_rset && !self.ext.pipelining {
            self.write(&[("RSET", "RSET")], tr)?;
            self.rset_reply(tr)?;
        }
        Ok(())
    }

    /// Reads the reply to an RSET already sent. Anything but 250 leaves the session in an
    /// unknown state: it is not used again. The error is transient either way: it is about the
    /// connection, not the message.
    fn rset_reply(&mut self, tr: Transcript<'_>) -> Result<(), ClientError> {
        let r = self.read(self.command_timeout, "reading the reply to RSET", tr)?;
        if r.code != 250 {
            self.broken = true;
            return Err(ClientError::new(
                Stage::Send,
                false,
                format!("{}: RSET refused: {}", self.wire.peer, r.text()),
            ));
        }
        self.needs_rset = false;
        Ok(())
    }

    fn unusable(&self) -> ClientError {
        ClientError::new(
            Stage::Send,
            false,
            format!(
                "{}: connection no longer usable after an earlier error",
                self.wire.peer
            ),
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn send_message(
        &mut self,
        sender: &str,
        rcpts: &[String],
        message: &mut dyn Read,
        size: u64,
        eight_bit: bool,
        smtputf8: bool,
        tr: Transcript<'_>,
    ) -> Result<Vec<RcptOutcome>, ClientError> {
        let peer = self.wire.peer.clone();
        if self.broken {
            return Err(self.unusable());
        }
        if rcpts.is_empty() {
            return Ok(Vec::new());
        }
        if !valid_path(sender) {
            return Err(ClientError::new(
                Stage::Send,
                true,
                format!(
                    "{peer}: sender address {:?} contains control characters",
                    sender
                ),
            ));
        }
        // RFC 1870 6: a message bigger than the advertised SIZE would be refused after upload.
        if let Some(max) = self.ext.size {
            if max > 0 && size > max {
                return Err(ClientError::new(
                    Stage::Send,
                    true,
                    format!("{peer}: message of {size} bytes exceeds the smarthost's limit of {max} bytes"),
                ));
            }
        }
        let utf8 = smtputf8 || !sender.is_ascii() || rcpts.iter().any(|r| !r.is_ascii());
        // RFC 6531 3.4: without SMTPUTF8 the message cannot be sent; it will not appear later.
        if utf8 && !self.ext.smtputf8 {
            return Err(ClientError::new(
                Stage::Send,
                true,
                format!("{peer}: message needs SMTPUTF8 (UTF-8 in its addresses or header section) but the smarthost does not offer it"),
            ));
        }

        let mut mail = format!("MAIL FROM:<{sender}>");
        if self.ext.size.is_some() {
            mail.push_str(&format!(" SIZE={size}")); // RFC 1870 3
        }
        if eight_bit {
            if self.ext.eight_bit_mime {
                mail.push_str(" BODY=8BITMIME"); // RFC 6152 2
            } else {
                log::debug!("smarthost {peer}: 8BITMIME not offered; sending 8-bit data anyway");
            }
        }
        if utf8 {
            mail.push_str(" SMTPUTF8"); // RFC 6531 3.4
        }

        // None = accepted so far (the final dot decides).
        let mut outcomes: Vec<Option<RcptOutcome>> = rcpts
            .iter()
            .map(|r| {
                if valid_path(r) && !r.is_empty() {
                    None
                } else {
                    Some(RcptOutcome::Permanent(format!(
                        "invalid recipient address {r:?}"
                    )))
                }
            })
            .collect();
        let rcpt_lines: Vec<(usize, String)> = rcpts
            .iter()
            .enumerate()
            .filter(|(i, _)| outcomes[*i].is_none())
            .map(|(i, r)| (i, format!("RCPT TO:<{r}>")))
            .collect();
        if rcpt_lines.is_empty() {
            return Ok(outcomes.into_iter().flatten().collect());
        }
        // RFC 3030 4.2: BDAT may be pipelined, so MAIL, RCPT and the whole message go in one
        // write and cost one round trip. Without PIPELINING, BDAT would wait for each reply
        // like DATA does and buy nothing: DATA stays.
        if self.ext.chunking && self.ext.pipelining {
            return self.send_chunked(&mail, &rcpt_lines, outcomes, message, size, tr);
        }

        let pipelining = self.ext.pipelining;
        // The last transaction was aborted: RSET first (RFC 5321 4.1.1.5).
        let rset = self.needs_rset;
        // From here until a 250 to the final dot, a transaction may be open on the smarthost.
        self.needs_rset = true;
        if pipelining {
            // RFC 2920 3.1: RSET (when needed), MAIL, every RCPT and DATA go as one group,
            // DATA last; replies are read in order below.
            let mut group: Vec<(&str, &str)> = Vec::with_capacity(rcpt_lines.len() + 3);
            if rset {
                group.push(("RSET", "RSET"));
            }
            group.push((&mail, &mail));
            group.extend(rcpt_lines.iter().map(|(_, l)| (l.as_str(), l.as_str())));
            group.push(("DATA", "DATA"));
            self.write(&group, tr)?;
            if rset {
                // The rest of the group is unread when this fails: the session is broken.
                self.rset_reply(tr)?;
                self.needs_rset = true;
            }
        } else {
            if rset {
                self.write(&[("RSET", "RSET")], tr)?;
                self.rset_reply(tr)?;
                self.needs_rset = true;
            }
            self.write(&[(&mail, &mail)], tr)?;
        }
        // RFC 5321 4.5.3.2.2: MAIL, 5 minutes.
        let mail_reply = self.read(self.command_timeout, "reading the reply to MAIL", tr)?;
        let mail_ok = mail_reply.code == 250;
        if !pipelining && !mail_ok {
            return Err(reply_error(
                Stage::Send,
                &peer,
                "MAIL FROM refused",
                &mail_reply,
                &self.throttles,
            ));
        }

        let mut accepted = 0;
        for (i, line) in &rcpt_lines {
            if !pipelining {
                self.write(&[(line, line)], tr)?;
            }
            // RFC 5321 4.5.3.2.3: RCPT, 5 minutes.
            let r = self.read(self.command_timeout, "reading the reply to RCPT", tr)?;
            outcomes[*i] = match r.code {
                // RFC 5321 3.4: 251 "will forward" is an acceptance too.
                250 | 251 => {
                    accepted += 1;
                    None
                }
                _ => Some(outcome(&r, &self.throttles)),
            };
        }

        // RFC 5321 4.5.3.2.4: DATA initiation, 2 minutes.
        let data_timeout = self.command_timeout.min(DATA_INIT_TIMEOUT);
        let data_reply = if pipelining {
            let r = self.read(data_timeout, "reading the reply to DATA", tr)?;
            if r.code == 354 && (!mail_ok || accepted == 0) {
                // RFC 2920 3.1 forbids this; the only safe way out is to drop the session so no
                // empty message is delivered.
                self.broken = true;
                return Err(ClientError::new(
                    Stage::Send,
                    false,
                    format!("{peer}: smarthost accepted DATA without a valid sender or recipient"),
                ));
            }
            if !mail_ok {
                return Err(reply_error(
                    Stage::Send,
                    &peer,
                    "MAIL FROM refused",
                    &mail_reply,
                    &self.throttles,
                ));
            }
            Some(r)
        } else {
            None
        };
        if accepted == 0 {
            // Nothing to deliver: report each refusal. The transaction stays open
            // (needs_rset): RSET goes before the next MAIL, pipelined with it when it can.
            return Ok(outcomes.into_iter().flatten().collect());
        }
        let data_reply = match data_reply {
            Some(r) => r,
            None => {
                self.write(&[("DATA", "DATA")], tr)?;
                self.read(data_timeout, "reading the reply to DATA", tr)?
            }
        };
        if data_reply.code != 354 {
            return Err(reply_error(
                Stage::Send,
                &peer,
                "DATA refused",
                &data_reply,
                &self.throttles,
            ));
        }

        // RFC 5321 4.5.3.2.5: each data block, 3 minutes.
        let block_timeout = nonzero(self.data_timeout.min(DATA_BLOCK_TIMEOUT));
        let written = self.write_body(message, block_timeout);
        let written = match written {
            Ok(n) => n,
            Err(e) => return Err(self.lost("sending the message", e)),
        };
        note(
            tr,
            &peer,
            &format!("C: ({written} bytes of message, dot-stuffed)"),
        );
        note(tr, &peer, "C: .");
        // RFC 5321 4.5.3.2.6: the reply to the final dot, 10 minutes.
        let dot = self.read(self.data_timeout, "reading the reply to the final dot", tr)?;
        self.finish(&dot, "the final dot", outcomes)
    }

    /// finish applies the final reply of a message (to the final dot, or to BDAT LAST) to
    /// every recipient the smarthost accepted.
    fn finish(
        &mut self,
        last: &Reply,
        what: &str,
        outcomes: Vec<Option<RcptOutcome>>,
    ) -> Result<Vec<RcptOutcome>, ClientError> {
        let final_outcome = match last.code {
            250 => {
                // RFC 5321 4.1.1.4 (and RFC 3030 2 for BDAT LAST): the transaction is complete
                // and the server ready for MAIL. After a 4xx/5xx needs_rset stays set: a refused
                // message may leave a server in any state, and the RSET costs no round trip
                // when pipelined.
                self.needs_rset = false;
                RcptOutcome::Accepted
            }
            400..=599 => outcome(last, &self.throttles),
            _ => {
                // Neither taken nor refused: do not risk a duplicate by guessing; retry later.
                self.broken = true;
                return Err(ClientError::new(
                    Stage::Send,
                    false,
                    format!(
                        "{}: unexpected reply to {what}: {}",
                        self.wire.peer,
                        last.text()
                    ),
                ));
            }
        };
        Ok(outcomes
            .into_iter()
            .map(|o| o.unwrap_or_else(|| final_outcome.clone()))
            .collect())
    }

    /// send_chunked sends RSET (when needed), MAIL, every RCPT and `BDAT <size> LAST` followed
    /// by the message in one write (RFC 3030 4.2), then reads the replies in order. The reply
    /// to BDAT LAST is the final reply for the message, read like the reply to the final dot.
    fn send_chunked(
        &mut self,
        mail: &str,
        rcpt_lines: &[(usize, String)],
        mut outcomes: Vec<Option<RcptOutcome>>,
        message: &mut dyn Read,
        size: u64,
        tr: Transcript<'_>,
    ) -> Result<Vec<RcptOutcome>, ClientError> {
        let peer = self.wire.peer.clone();
        // The last transaction was aborted: RSET first (RFC 5321 4.1.1.5).
        let rset = self.needs_rset;
        // From here until a 250 to BDAT LAST, a transaction may be open on the smarthost.
        self.needs_rset = true;
        let bdat = format!("BDAT {size} LAST");
        let mut group: Vec<(&str, &str)> = Vec::with_capacity(rcpt_lines.len() + 3);
        if rset {
            group.push(("RSET", "RSET"));
        }
        group.push((mail, mail));
        group.extend(rcpt_lines.iter().map(|(_, l)| (l.as_str(), l.as_str())));
        group.push((&bdat, &bdat));
        let commands = match self.wire.encode(&group, tr) {
            Ok(c) => c,
            Err(e) => return Err(self.lost("sending a command", e)),
        };
        // RFC 5321 4.5.3.2.5: each data block, 3 minutes.
        let block_timeout = nonzero(self.data_timeout.min(DATA_BLOCK_TIMEOUT));
        match self.write_chunk(&commands, message, size, block_timeout) {
            Ok(()) => {}
            Err(ChunkError::Wire(e)) => return Err(self.lost("sending the message", e)),
            Err(ChunkError::Changed) => {
                // The announced count is wrong: the smarthost would read the rest of the chunk
                // from whatever comes next. Closing makes it drop the incomplete chunk.
                self.broken = true;
                let _ = self.wire.stream.tcp().shutdown(std::net::Shutdown::Both);
                return Err(ClientError::new(
                    Stage::Send,
                    false,
                    format!("{peer}: the message is not the {size} bytes announced in BDAT (it changed while being sent); connection closed"),
                ));
            }
        }
        note(
            tr,
            &peer,
            &format!("C: ({size} bytes of message, not stuffed)"),
        );
        if rset {
            // The rest of the group is unread when this fails: the session is broken.
            self.rset_reply(tr)?;
            self.needs_rset = true;
        }
        // RFC 5321 4.5.3.2.2: MAIL, 5 minutes.
        let mail_reply = self.read(self.command_timeout, "reading the reply to MAIL", tr)?;
        let mail_ok = mail_reply.code == 250;
        let mut accepted = 0;
        for (i, _) in rcpt_lines {
            // RFC 5321 4.5.3.2.3: RCPT, 5 minutes.
            let r = self.read(self.command_timeout, "reading the reply to RCPT", tr)?;
            outcomes[*i] = match r.code {
                // RFC 5321 3.4: 251 "will forward" is an acceptance too.
                250 | 251 => {
                    accepted += 1;
                    None
                }
                _ => Some(outcome(&r, &self.throttles)),
            };
        }
        // RFC 3030 sets no timeout for BDAT; its LAST reply ends the message like the reply to
        // the final dot (RFC 5321 4.5.3.2.6: 10 minutes).
        let last = self.read(self.data_timeout, "reading the reply to BDAT", tr)?;
        if !mail_ok || accepted == 0 {
            // RFC 3030 2: without a valid sender or recipient the server answers BDAT with 503
            // or 554 and discards the chunk: nothing was delivered.
            if !(400..600).contains(&last.code) {
                // Taken without a sender or recipient: do not guess; drop the session.
                self.broken = true;
                return Err(ClientError::new(
                    Stage::Send,
                    false,
                    format!(
                        "{peer}: smarthost answered BDAT without a valid sender or recipient: {}",
                        last.text()
                    ),
                ));
            }
            if !mail_ok {
                return Err(reply_error(
                    Stage::Send,
                    &peer,
                    "MAIL FROM refused",
                    &mail_reply,
                    &self.throttles,
                ));
            }
            // Nothing to deliver: report each refusal. The transaction stays open
            // (needs_rset): RSET goes before the next MAIL, pipelined with it.
            return Ok(outcomes.into_iter().flatten().collect());
        }
        self.finish(&last, "BDAT LAST", outcomes)
    }

    /// write_chunk writes `commands` and exactly `size` bytes of `message`, unstuffed (RFC
    /// 3030 2: BDAT data is sent as is), through one 64 KiB buffer: a small message goes in the
    /// same write as its commands. The last byte is held back until the message is known to end
    /// there, so a message that changed size never completes a chunk: ChunkError::Changed, and
    /// the caller closes the connection.
    fn write_chunk(
        &mut self,
        commands: &[u8],
        message: &mut dyn Read,
        size: u64,
        timeout: Duration,
    ) -> Result<(), ChunkError> {
        self.wire.stream.tcp().set_write_timeout(Some(timeout))?;
        let mut out = BufWriter::with_capacity(WRITE_BUFFER, &mut self.wire.stream);
        let tail = (|| -> Result<Vec<u8>, ChunkError> {
            if size == 0 {
                // "BDAT 0 LAST" alone is a whole (empty) message: check before the line goes.
                let mut extra = Vec::new();
                message.take(1).read_to_end(&mut extra)?;
                return if extra.is_empty() {
                    out.write_all(commands)?;
                    Ok(extra)
                } else {
                    Err(ChunkError::Changed)
                };
            }
            out.write_all(commands)?;
            let copied = io::copy(&mut message.take(size - 1), &mut out)?;
            // Two bytes asked for one missing: a longer message shows itself.
            let mut tail = Vec::with_capacity(2);
            if copied == size - 1 {
                message.take(2).read_to_end(&mut tail)?;
            }
            if copied + tail.len() as u64 != size {
                return Err(ChunkError::Changed);
            }
            Ok(tail)
        })();
        let tail = match tail {
            Ok(t) => t,
            Err(e) => {
                // Whatever is still buffered is dropped unsent (a BufWriter dropped would flush
                // it): with the last byte held back, no complete chunk reaches the server.
                let _ = out.into_parts();
                return Err(e);
            }
        };
        out.write_all(&tail)?;
        out.flush()?;
        drop(out);
        self.wire
            .stream
            .tcp()
            .set_write_timeout(Some(nonzero(self.command_timeout)))?;
        Ok(())
    }

    /// Streams the message through a 64 KiB buffer with dot-stuffing and the final dot.
    fn write_body(&mut self, message: &mut dyn Read, timeout: Duration) -> Result<u64, WireError> {
        let tcp = self.wire.stream.tcp();
        tcp.set_write_timeout(Some(timeout))?;
        let mut out = BufWriter::with_capacity(WRITE_BUFFER, &mut self.wire.stream);
        let n = write_stuffed(message, &mut out)?;
        out.flush()?;
        drop(out);
        self.wire
            .stream
            .tcp()
            .set_write_timeout(Some(nonzero(self.command_timeout)))?;
        Ok(n)
    }
}

/// Why writing a BDAT chunk failed; always transient, and the session is not used again.
#[derive(Debug)]
enum ChunkError {
    /// The socket or the spool file failed.
    Wire(WireError),
    /// The message is not as long as announced in BDAT: it changed while being sent.
    Changed,
}

impl From<io::Error> for ChunkError {
    fn from(e: io::Error) -> ChunkError {
        ChunkError::Wire(e.into())
    }
}

/// An envelope address is safe on a command line when it has no control characters (CR/LF
/// would inject commands) and no '<' '>' that would end the path early.
fn valid_path(addr: &str) -> bool {
    !addr.chars().any(|c| c.is_control() || c == '<' || c == '>')
}

/// "host:port", with IPv6 literals in brackets.
fn peer_name(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Resolves (IPv6 and IPv4) and connects to the first address that answers.
fn connect(
    host: &str,
    port: u16,
    timeout: Duration,
    peer: &str,
) -> Result<(TcpStream, SocketAddr), ClientError> {
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| {
            ClientError::new(
                Stage::Connect,
                false,
                format!("{peer}: cannot resolve {host}: {e}"),
            )
        })?
        .collect();
    let mut last = None;
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, nonzero(timeout)) {
            Ok(s) => return Ok((s, addr)),
            Err(e) => {
                log::debug!("smarthost {peer}: connect to {addr}: {e}");
                last = Some((addr, e));
            }
        }
    }
    Err(match last {
        Some((addr, e)) => ClientError::new(
            Stage::Connect,
            false,
            format!("{peer}: cannot connect to {addr}: {}", WireError::from(e)),
        ),
        None => ClientError::new(
            Stage::Connect,
            false,
            format!("{peer}: {host} has no address"),
        ),
    })
}

/// One host: connect, (implicit TLS,) greeting, EHLO, STARTTLS + EHLO, AUTH.
fn open_host(
    s: &Settings,
    host: &str,
    port: u16,
    tr: Transcript<'_>,
) -> Result<Connection, ClientError> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let peer = peer_name(host, port);
    let (tcp, addr) = connect(host, port, s.connect_timeout, &peer)?;
    note(tr, &peer, &format!("* connected to {peer} ({addr})"));
    let _ = tcp.set_nodelay(true); // small commands, waited for: no Nagle delay
    tcp.set_write_timeout(Some(nonzero(s.command_timeout)))
        .map_err(|e| wire_error(Stage::Connect, &peer, "socket setup", e.into()))?;
    let mut wire = Wire::new(Stream::Plain(tcp), peer.clone());
    let t = s.command_timeout;

    if s.tls == TlsMode::Implicit {
        // RFC 8314 3.3: TLS first, then SMTP inside it.
        wire = wire.start_tls(s.tls_config.clone(), host, t, tr)?;
    }

    // RFC 5321 4.5.3.2.1: the greeting, 5 minutes; 3.1: anything but 220 means no service.
    let greeting = wire
        .read_reply(t, false, tr)
        .map_err(|e| wire_error(Stage::Connect, &peer, "waiting for the greeting", e))?;
    if greeting.code != 220 {
        wire.quit(t, tr);
        return Err(refused(
            Stage::Connect,
            &peer,
            "greeting",
            &greeting,
            &s.throttle_replies,
        ));
    }
    let mut ext = hello(&mut wire, s, tr)?;

    if s.tls == TlsMode::StartTls {
        // RFC 3207 4: never fall back to plaintext; only QUIT may still be sent in the clear.
        if !ext.starttls {
            wire.quit(t, tr);
            return Err(ClientError::new(
                Stage::Tls,
                false,
                format!("{peer}: smarthost does not offer STARTTLS; refusing to send in plaintext (tls = starttls)"),
            ));
        }
        wire.command("STARTTLS", tr)
            .map_err(|e| wire_error(Stage::Tls, &peer, "STARTTLS", e))?;
        let r = wire
            .read_reply(t, false, tr)
            .map_err(|e| wire_error(Stage::Tls, &peer, "STARTTLS", e))?;
        if r.code != 220 {
            wire.quit(t, tr);
            return Err(refused(
                Stage::Tls,
                &peer,
                "STARTTLS refused",
                &r,
                &s.throttle_replies,
            ));
        }
        // Bytes that came before the handshake must not be read as if they came through TLS
        // (STARTTLS response injection, CVE-2011-1575 class).
        if wire.pending() {
            return Err(ClientError::new(
                Stage::Tls,
                false,
                format!(
                    "{peer}: smarthost sent data after its STARTTLS reply; refusing to continue"
                ),
            ));
        }
        wire = wire.start_tls(s.tls_config.clone(), host, t, tr)?;
        // RFC 3207 4.2: forget what was learned in plaintext and ask again.
        ext = hello(&mut wire, s, tr)?;
    }

    if let Some(user) = s
        .username
        .as_deref()
        .filter(|_| s.auth != SmarthostAuth::None)
    {
        let result = match &s.bearer {
            Some(source) => authenticate_bearer(&mut wire, &ext, s, user, source.as_ref(), tr),
            None => authenticate(&mut wire, &ext, s, user, tr),
        };
        if let Err(e) = result {
            wire.quit(t, tr);
            return Err(e);
        }
    }

    Ok(Connection {
        wire,
        ext,
        command_timeout: s.command_timeout,
        data_timeout: s.data_timeout,
        broken: false,
        needs_rset: false,
        transcript: None,
        throttles: Arc::clone(&s.throttle_replies),
    })
}

/// A refused greeting, EHLO or STARTTLS is about the server, not the message: never bounce
/// for it, whatever the code.
fn refused(stage: Stage, peer: &str, what: &str, r: &Reply, extra: &[String]) -> ClientError {
    let e = ClientError::new(stage, false, format!("{peer}: {what}: {}", r.text()));
    throttled(e, r, extra)
}

/// EHLO, falling back to HELO on a 5xx (RFC 5321 3.2) only when nothing needs extensions:
/// HELO can offer neither STARTTLS nor AUTH, so with those required the attempt fails instead.
fn hello(wire: &mut Wire, s: &Settings, tr: Transcript<'_>) -> Result<Extensions, ClientError> {
    let peer = wire.peer.clone();
    let t = s.command_timeout;
    let io = |e| wire_error(Stage::Connect, &peer, "EHLO", e);
    wire.command(&format!("EHLO {}", s.helo), tr).map_err(io)?;
    let r = wire.read_reply(t, false, tr).map_err(io)?;
    if r.code == 250 {
        return Ok(Extensions::parse(&r.lines));
    }
    let needs_extensions =
        s.username.is_some() || (s.tls == TlsMode::StartTls && !wire.stream.is_tls());
    if (500..600).contains(&r.code) && !needs_extensions {
        let io = |e| wire_error(Stage::Connect, &peer, "HELO", e);
        wire.command(&format!("HELO {}", s.helo), tr).map_err(io)?;
        let r = wire.read_reply(t, false, tr).map_err(io)?;
        if r.code == 250 {
            return Ok(Extensions::default());
        }
        wire.quit(t, tr);
        return Err(refused(
            Stage::Connect,
            &peer,
            "HELO refused",
            &r,
            &s.throttle_replies,
        ));
    }
    wire.quit(t, tr);
    Err(refused(
        Stage::Connect,
        &peer,
        "EHLO refused",
        &r,
        &s.throttle_replies,
    ))
}

/// no_auth_offered is the error for a smarthost that offers no AUTH at all.
fn no_auth_offered(wire: &Wire) -> ClientError {
    let hint = if wire.stream.is_tls() {
        ""
    } else {
        " (many servers offer it only over TLS: set tls = starttls or tls)"
    };
    ClientError::new(
        Stage::Auth,
        true,
        format!(
            "{}: username is set but the smarthost does not offer AUTH{hint}",
            wire.peer
        ),
    )
}

/// login_refused describes a refused login with its permanence (RFC 4954 6: 535 = bad
/// credentials, other 5xx = refused for good, retrying the same only risks a lockout; 4xx =
/// try later), and what the provider's reply means when it is a known one.
fn login_refused(peer: &str, r: &Reply, extra: &str, s: &Settings) -> ClientError {
    let bearer = s.bearer.is_some();
    let mut e = reply_error(Stage::Auth, peer, "login refused", r, &s.throttle_replies);
    e.message.push_str(extra);
    if let Some(h) = sasl::login_hint(&r.text(), bearer) {
        e.message.push_str(": ");
        e.message.push_str(h.fix);
    }
    e
}

/// AUTH PLAIN with an initial response (RFC 4954 4, RFC 4616), else AUTH LOGIN; `[smarthost]
/// auth = plain | login` insists on one.
fn authenticate(
    wire: &mut Wire,
    ext: &Extensions,
    s: &Settings,
    user: &str,
    tr: Transcript<'_>,
) -> Result<(), ClientError> {
    let peer = wire.peer.clone();
    let t = s.command_timeout;
    let password = s.password.as_deref().unwrap_or("");
    let io = |e| wire_error(Stage::Auth, &peer, "AUTH", e);
    if ext.auth.is_empty() {
        return Err(no_auth_offered(wire));
    }
    let offered = |m: &str| ext.auth.iter().any(|o| o == m);
    let use_plain = offered("PLAIN") && s.auth != SmarthostAuth::Login;
    let use_login = offered("LOGIN") && s.auth != SmarthostAuth::Plain;
    let reply = if use_plain {
        let line = format!("AUTH PLAIN {}", sasl::plain(user, password));
        wire.send(&[(&line, &format!("AUTH PLAIN {MASK}"))], tr)
            .map_err(io)?;
        wire.read_reply(t, true, tr).map_err(io)?
    } else if use_login {
        wire.command("AUTH LOGIN", tr).map_err(io)?;
        let mut r = wire.read_reply(t, true, tr).map_err(io)?;
        for secret in [user, password] {
            if r.code != 334 {
                break;
            }
            let line = crate::base64::encode(secret.as_bytes());
            wire.send(&[(&line, MASK)], tr).map_err(io)?;
            r = wire.read_reply(t, true, tr).map_err(io)?;
        }
        r
    } else {
        let wanted = match s.auth {
            SmarthostAuth::Plain => "PLAIN (auth = plain)",
            SmarthostAuth::Login => "LOGIN (auth = login)",
            _ => "PLAIN or LOGIN",
        };
        return Err(ClientError::new(
            Stage::Auth,
            true,
            format!(
                "{peer}: smarthost offers AUTH {} but not {wanted}; for XOAUTH2 set up [oauth]",
                ext.auth.join(" ")
            ),
        ));
    };
    match reply.code {
        235 => Ok(()),
        334 => {
            // More challenges than the mechanism has answers for: cancel (RFC 4954 4).
            wire.send(&[("*", "*")], tr).map_err(io)?;
            let _ = wire.read_reply(t, true, tr);
            Err(ClientError::new(
                Stage::Auth,
                false,
                format!("{peer}: unexpected AUTH challenge; login cancelled"),
            ))
        }
        _ => Err(login_refused(&peer, &reply, "", s)),
    }
}

/// bearer_mechanism picks XOAUTH2 or OAUTHBEARER from what EHLO offered: `auto` prefers
/// XOAUTH2 (the one Microsoft 365 offers) and takes OAUTHBEARER when only that is offered.
fn bearer_mechanism(auth: SmarthostAuth, offered: &[String]) -> Result<BearerMechanism, String> {
    let has = |m: BearerMechanism| offered.iter().any(|o| o == m.name());
    let want = match auth {
        SmarthostAuth::Xoauth2 => vec![BearerMechanism::Xoauth2],
        SmarthostAuth::Oauthbearer => vec![BearerMechanism::OauthBearer],
        _ => vec![BearerMechanism::Xoauth2, BearerMechanism::OauthBearer],
    };
    want.iter().copied().find(|m| has(*m)).ok_or_else(|| {
        let names: Vec<&str> = want.iter().map(|m| m.name()).collect();
        format!(
            "smarthost offers AUTH {} but not {}, which [oauth] tokens need",
            offered.join(" "),
            names.join(" or ")
        )
    })
}

/// How one bearer-token AUTH exchange ended.
enum BearerOutcome {
    /// 235.
    Accepted,
    /// The final reply, and the server's error challenge when it sent one (Gmail).
    Refused(Reply, Option<String>),
}

/// authenticate_bearer logs in with an OAuth access token. A refused token gets exactly one
/// fresh token and one more AUTH on the same session (the cached one may have been revoked
/// early); a second refusal is a login failure like a refused password.
fn authenticate_bearer(
    wire: &mut Wire,
    ext: &Extensions,
    s: &Settings,
    user: &str,
    source: &dyn BearerSource,
    tr: Transcript<'_>,
) -> Result<(), ClientError> {
    let peer = wire.peer.clone();
    if ext.auth.is_empty() {
        return Err(no_auth_offered(wire));
    }
    let mech = bearer_mechanism(s.auth, &ext.auth)
        .map_err(|why| ClientError::new(Stage::Auth, true, format!("{peer}: {why}")))?;
    let mut token = source.bearer(None)?;
    let mut retried = false;
    loop {
        let (reply, challenge) = match bearer_attempt(wire, mech, user, &token, s, tr)? {
            BearerOutcome::Accepted => return Ok(()),
            BearerOutcome::Refused(r, c) => (r, c),
        };
        if !retried && sasl::token_refused(reply.code, &reply.text()) {
            retried = true;
            note(
                tr,
                &peer,
                "* token refused: asking the identity provider for a fresh one",
            );
            token = source.bearer(Some(&token))?;
            continue;
        }
        let extra = match (&challenge, retried) {
            (Some(c), true) => format!(" (server said {c}; a fresh token was refused too)"),
            (Some(c), false) => format!(" (server said {c})"),
            (None, true) => " (a fresh token was refused too)".to_string(),
            (None, false) => String::new(),
        };
        return Err(login_refused(&peer, &reply, &extra, s));
    }
}

/// bearer_attempt sends one AUTH with the token as the initial response (RFC 4954 4). A server
/// that refuses it with an error challenge (RFC 7628 3.2.3; Gmail does this for XOAUTH2 too)
/// gets the mechanism's acknowledgement, then sends its final reply.
fn bearer_attempt(
    wire: &mut Wire,
    mech: BearerMechanism,
    user: &str,
    token: &str,
    s: &Settings,
    tr: Transcript<'_>,
) -> Result<BearerOutcome, ClientError> {
    let peer = wire.peer.clone();
    let t = s.command_timeout;
    let io = |e| wire_error(Stage::Auth, &peer, "AUTH", e);
    let name = mech.name();
    let payload = mech.initial_response(user, token);
    let line = format!("AUTH {name} {payload}");
    wire.send(&[(&line, &format!("AUTH {name} {MASK}"))], tr)
        .map_err(io)?;
    let mut r = wire.read_reply(t, true, tr).map_err(io)?;
    let mut challenge = None;
    if r.code == 334 {
        let text = r.lines.join("");
        if text.trim().is_empty() {
            // A server that wants the response after an empty challenge, not on the AUTH line.
            wire.send(&[(&payload, MASK)], tr).map_err(io)?;
            r = wire.read_reply(t, true, tr).map_err(io)?;
        }
    }
    if r.code == 334 {
        challenge = Some(sasl::challenge_text(&r.lines.join("")));
        let ack = mech.error_ack();
        wire.send(&[(ack, ack)], tr).map_err(io)?;
        r = wire.read_reply(t, true, tr).map_err(io)?;
        if r.code == 334 {
            // RFC 4954 4: cancel an exchange that does not end.
            wire.send(&[("*", "*")], tr).map_err(io)?;
            let _ = wire.read_reply(t, true, tr);
            return Err(ClientError::new(
                Stage::Auth,
                false,
                format!("{peer}: unexpected AUTH challenge; login cancelled"),
            ));
        }
    }
    Ok(if r.code == 235 {
        BearerOutcome::Accepted
    } else {
        BearerOutcome::Refused(r, challenge)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::tests::far;
    use std::net::TcpListener;
    use std::path::PathBuf;
    use std::sync::{Mutex, OnceLock};
    use std::thread::JoinHandle;
    use std::time::Instant;

    /// One step of a scripted smarthost.
    enum Step {
        /// Send these lines ('\n'-separated; CRLF appended to each) in one write.
        S(&'static str),
        /// Read one line; it must start with this (else the script stops and logs UNEXPECTED).
        C(&'static str),
        /// Read message lines up to the final dot; logged as "BODY:" + lines joined with '\n'.
        Data,
        /// Read exactly the byte count announced by the last logged "BDAT <n> ..." line; logged
        /// as "BODY:" + the bytes as received (CRLF kept), or "EOF in chunk" when it ends early.
        Chunk,
        /// Server side of the TLS handshake.
        Tls,
        /// Send raw bytes.
        Raw(Vec<u8>),
        /// After Tls: send this line (CRLF appended) in a TLS record written a byte at a time,
        /// this many milliseconds apart.
        TrickleTls(&'static str, u64),
        /// Do nothing for this many milliseconds.
        Wait(u64),
        /// Close the connection now.
        Close,
    }
    use Step::*;

    /// A scripted server on 127.0.0.1:0; `log` returns every line it received.
    struct Server {
        port: u16,
        handle: JoinHandle<Vec<String>>,
    }

    impl Server {
        fn log(self) -> Vec<String> {
            self.handle.join().unwrap()
        }
    }

    fn read_line(s: &mut Stream) -> Option<String> {
        let mut line = Vec::new();
        let mut b = [0u8; 1];
        loop {
            match s.read(&mut b) {
                Ok(1) => {
                    if b[0] == b'\n' {
                        if line.last() == Some(&b'\r') {
                            line.pop();
                        }
                        return Some(String::from_utf8_lossy(&line).into_owned());
                    }
                    line.push(b[0]);
                }
                _ => return None,
            }
        }
    }

    fn serve(script: Vec<Step>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let handle = std::thread::spawn(move || {
            let mut log = Vec::new();
            let (tcp, _) = listener.accept().unwrap();
            tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut s = Some(Stream::Plain(tcp));
            for step in script {
                let st = s.as_mut().unwrap();
                match step {
                    S(text) => {
                        let mut out = String::new();
                        for l in text.split('\n') {
                            out.push_str(l);
                            out.push_str("\r\n");
                        }
                        if st.write_all(out.as_bytes()).is_err() {
                            break;
                        }
                    }
                    Raw(bytes) => {
                        if st.write_all(&bytes).is_err() {
                            break;
                        }
                    }
                    TrickleTls(text, ms) => {
                        let Stream::Server(tls) = st else {
                            panic!("TrickleTls before Tls")
                        };
                        let line = format!("{text}\r\n");
                        tls.conn.writer().write_all(line.as_bytes()).unwrap();
                        let mut records = Vec::new();
                        while tls.conn.wants_write() {
                            tls.conn.write_tls(&mut records).unwrap();
                        }
                        let sent = records.iter().all(|b| {
                            std::thread::sleep(Duration::from_millis(ms));
                            tls.sock.tcp.write_all(&[*b]).is_ok()
                        });
                        if !sent {
                            break;
                        }
                    }
                    C(prefix) => match read_line(st) {
                        Some(l) if l.starts_with(prefix) => log.push(l),
                        Some(l) => {
                            log.push(format!("UNEXPECTED {l}"));
                            break;
                        }
                        None => {
                            log.push(format!("EOF waiting for {prefix}"));
                            break;
                        }
                    },
                    Data => {
                        let mut body = Vec::new();
                        loop {
                            match read_line(st) {
                                Some(l) if l == "." => break,
                                Some(l) => body.push(l),
                                None => break,
                            }
                        }
                        log.push(format!("BODY:{}", body.join("\n")));
                    }
                    Chunk => {
                        let n: usize = log
                            .iter()
                            .rev()
                            .find_map(|l: &String| l.strip_prefix("BDAT "))
                            .and_then(|l| l.split(' ').next())
                            .and_then(|n| n.parse().ok())
                            .unwrap_or(0);
                        let mut body = vec![0; n];
                        if st.read_exact(&mut body).is_err() {
                            log.push("EOF in chunk".to_string());
                            break;
                        }
                        log.push(format!("BODY:{}", String::from_utf8_lossy(&body)));
                    }
                    Tls => {
                        let plain = s.take().unwrap();
                        s = Some(plain.accept_tls(server_tls(), far()).unwrap());
                    }
                    Wait(ms) => std::thread::sleep(Duration::from_millis(ms)),
                    Close => return log,
                }
            }
            // Record whatever else the client sends (proves what it did NOT send, too).
            if let Some(mut st) = s {
                let _ = st.tcp().set_read_timeout(Some(Duration::from_millis(500)));
                while let Some(l) = read_line(&mut st) {
                    log.push(format!("AFTER {l}"));
                }
            }
            log
        });
        Server { port, handle }
    }

    /// A port nobody listens on.
    fn dead_port() -> u16 {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    }

    struct Certs {
        ca: PathBuf,
        cert: PathBuf,
        key: PathBuf,
    }

    /// A throwaway CA and a "localhost"/127.0.0.1 server certificate, made once with openssl.
    fn certs() -> &'static Certs {
        static CERTS: OnceLock<Certs> = OnceLock::new();
        CERTS.get_or_init(|| {
            let dir = std::env::temp_dir().join(format!("picorelay-client-test-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let run = |args: &[&str]| {
                let st = std::process::Command::new("openssl")
                    .args(args)
                    .current_dir(&dir)
                    .stderr(std::process::Stdio::null())
                    .status()
                    .unwrap();
                assert!(st.success(), "openssl {args:?}");
            };
            let ec = ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"];
            run(&[&["genpkey"][..], &ec, &["-out", "ca.key"]].concat());
            run(&["req", "-x509", "-new", "-key", "ca.key", "-subj", "/CN=Test CA", "-days", "2", "-out", "ca.pem"]);
            run(&[&["genpkey"][..], &ec, &["-out", "leaf.key"]].concat());
            run(&["req", "-new", "-key", "leaf.key", "-subj", "/CN=localhost", "-out", "leaf.csr"]);
            std::fs::write(
                dir.join("ext"),
                "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
            )
            .unwrap();
            run(&[
                "x509", "-req", "-in", "leaf.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                "-days", "2", "-extfile", "ext", "-out", "leaf.pem",
            ]);
            Certs {
                ca: dir.join("ca.pem"),
                cert: dir.join("leaf.pem"),
                key: dir.join("leaf.key"),
            }
        })
    }

    fn server_tls() -> Arc<rustls::ServerConfig> {
        let c = certs();
        crate::tls::server_config(&c.cert, &c.key).unwrap()
    }

    fn settings(ports: &[u16], tls: TlsMode) -> Settings {
        Settings {
            hosts: ports
                .iter()
                .map(|p| ("127.0.0.1".to_string(), *p))
                .collect(),
            tls,
            tls_config: crate::tls::client_config(true, Some(&certs().ca), None).unwrap(),
            username: None,
            password: None,
            auth: SmarthostAuth::Auto,
            bearer: None,
            throttle_replies: Arc::from(Vec::new()),
            helo: "relay.test".to_string(),
            connect_timeout: Duration::from_secs(2),
            command_timeout: Duration::from_secs(5),
            data_timeout: Duration::from_secs(5),
        }
    }

    fn with_auth(mut s: Settings) -> Settings {
        s.username = Some("user".to_string());
        s.password = Some("sekret pass".to_string());
        s
    }

    const GREET: Step = S("220 smarthost.test ESMTP");

    fn rcpts(list: &[&str]) -> Vec<String> {
        list.iter().map(|r| r.to_string()).collect()
    }

    const MSG: &[u8] = b"Subject: hi\r\n\r\n.leading dot\r\nbody\r\n";

    fn send(c: &mut Connection, to: &[&str]) -> Result<Vec<RcptOutcome>, ClientError> {
        c.send(
            "s@x.test",
            &rcpts(to),
            &mut &MSG[..],
            MSG.len() as u64,
            false,
            false,
        )
    }

    /// Collects a transcript into a shared Vec.
    fn recorder() -> (Arc<Mutex<Vec<String>>>, TranscriptSink) {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let l2 = lines.clone();
        (
            lines,
            Box::new(move |l: &str| l2.lock().unwrap().push(l.to_string())),
        )
    }

    fn has(log: &[String], prefix: &str) -> bool {
        log.iter()
            .any(|l| l.trim_start_matches("AFTER ").starts_with(prefix))
    }

    #[test]
    fn pipelined_happy_path() {
        // A non-pipelining client would wait for the MAIL reply forever: the script only
        // answers after MAIL, both RCPTs and DATA arrived.
        let srv = serve(vec![
            GREET,
            C("EHLO relay.test"),
            S("250-smarthost.test\n250-PIPELINING\n250-SIZE 1000000\n250 8BITMIME"),
            C("MAIL FROM:<s@x.test> SIZE=35 BODY=8BITMIME"),
            C("RCPT TO:<a@y.test>"),
            C("RCPT TO:<b@y.test>"),
            C("DATA"),
            S("250 2.1.0 ok\n250 2.1.5 ok\n250 2.1.5 ok\n354 go"),
            Data,
            S("250 2.0.0 queued"),
            // No RSET after a completed transaction (RFC 5321 4.1.1.4).
            C("QUIT"),
            S("221 bye"),
        ]);
        let mut c = Connection::open(&settings(&[srv.port], TlsMode::None), None).unwrap();
        assert!(c.extensions().pipelining);
        assert_eq!(c.extensions().size, Some(1_000_000));
        let out = c
            .send(
                "s@x.test",
                &rcpts(&["a@y.test", "b@y.test"]),
                &mut &MSG[..],
                35,
                true,
                false,
            )
            .unwrap();
        assert_eq!(out, vec![RcptOutcome::Accepted, RcptOutcome::Accepted]);
        c.reset().unwrap();
        c.quit();
        let log = srv.log();
        assert!(
            has(&log, "BODY:Subject: hi\n\n..leading dot\nbody"),
            "{log:?}"
        );
        assert!(has(&log, "QUIT"), "{log:?}");
    }

    #[test]
    fn one_by_one_happy_path() {
        // No SIZE, no 8BITMIME offered: MAIL carries no parameters, 8-bit data is sent anyway.
        let srv = serve(vec![
            GREET,
            C("EHLO"),
            S("250-smarthost.test\n250 HELP"),
            C("MAIL FROM:<s@x.test>"),
            S("250 ok"),
            C("RCPT TO:<a@y.test>"),
            S("250 ok"),
            C("DATA"),
            S("354 go"),
            Data,
            S("250 queued"),
        ]);
        let mut c = Connection::open(&settings(&[srv.port], TlsMode::None), None).unwrap();
        let out = c
            .send(
                "s@x.test",
                &rcpts(&["a@y.test"]),
                &mut &MSG[..],
                35,
                true,
                false,
            )
            .unwrap();
        assert_eq!(out, vec![RcptOutcome::Accepted]);
        drop(c);
        let log = srv.log();
        assert!(log.contains(&"MAIL FROM:<s@x.test>".to_string()), "{log:?}");
    }

    /// Per-recipient replies and the final-dot reply, table-driven; pipelined and not.
    #[test]
    fn recipient_outcomes() {
        let perm = |t: &str| RcptOutcome::Permanent(t.to_string());
        let temp = |t: &str| RcptOutcome::Transient(t.to_string());
        let cases: Vec<(&str, [&'static str; 2], &'static str, Vec<RcptOutcome>)> = vec![
            (
                "550 on one",
                ["250 ok", "550 5.1.1 no such user"],
                "250 queued",
                vec![RcptOutcome::Accepted, perm("550 5.1.1 no such user")],
            ),
            // Too many recipients: the rest go in another transaction, not after a backoff.
            (
                "452 on one",
                ["452 4.5.3 too many", "250 ok"],
                "250 queued",
                vec![
                    RcptOutcome::Throttled(
                        Throttle::TooManyRecipients,
                        "452 4.5.3 too many".into(),
                    ),
                    RcptOutcome::Accepted,
                ],
            ),
            // A quota after the dot is the account's, not the message's: never a bounce.
            (
                "quota after dot",
                ["250 ok", "250 ok"],
                "554 5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException",
                vec![
                    RcptOutcome::Throttled(
                        Throttle::DailyQuota,
                        "554 5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException"
                            .into(),
                    );
                    2
                ],
            ),
            (
                "5xx after dot",
                ["250 ok", "551 no"],
                "554 5.7.1 spam",
                vec![perm("554 5.7.1 spam"), perm("551 no")],
            ),
            (
                "4xx after dot",
                ["250 ok", "250 ok"],
                "451 4.3.0 later",
                vec![temp("451 4.3.0 later"), temp("451 4.3.0 later")],
            ),
        ];
        for pipelining in [false, true] {
            for (name, rcpt_replies, dot, want) in &cases {
                let mut script = greeting(pipelining);
                if pipelining {
                    script.extend([C("MAIL"), C("RCPT"), C("RCPT"), C("DATA"), S("250 ok")]);
                    script.extend([S(rcpt_replies[0]), S(rcpt_replies[1]), S("354 go")]);
                } else {
                    script.extend([C("MAIL"), S("250 ok"), C("RCPT"), S(rcpt_replies[0])]);
                    script.extend([C("RCPT"), S(rcpt_replies[1]), C("DATA"), S("354 go")]);
                }
                script.extend([Data, S(dot)]);
                let srv = serve(script);
                let mut c = Connection::open(&settings(&[srv.port], TlsMode::None), None).unwrap();
                let out = send(&mut c, &["a@y.test", "b@y.test"]).unwrap();
                assert_eq!(&out, want, "{name} pipelining={pipelining}");
                drop(c);
                let log = srv.log();
                assert!(has(&log, "BODY:"), "{name}: {log:?}");
            }
        }
    }

    #[test]
    fn no_recipient_accepted_sends_no_data() {
        for pipelining in [false, true] {
            let mut script = vec![GREET, C("EHLO")];
            if pipelining {
                script.extend([S("250-s\n250 PIPELINING"), C("MAIL"), C("RCPT"), C("DATA")]);
                script.push(S(
                    "250 ok\n550 5.1.1 unknown\n554 5.5.1 no valid recipients",
                ));
            } else {
                script.extend([
                    S("250 s"),
                    C("MAIL"),
                    S("250 ok"),
                    C("RCPT"),
                    S("550 5.1.1 unknown"),
                ]);
            }
            let srv = serve(script);
            let mut c = Connection::open(&settings(&[srv.port], TlsMode::None), None).unwrap();
            let out = send(&mut c, &["a@y.test"]).unwrap();
            assert_eq!(
                out,
                vec![RcptOutcome::Permanent("550 5.1.1 unknown".to_string())]
            );
            drop(c);
            let log = srv.log();
            assert!(!has(&log, "BODY:") && !has(&log, "UNEXPECTED"), "{log:?}");
            // The RSET waits for the next message (see rset_only_after_an_aborted_transaction).
            assert!(!has(&log, "RSET"), "{log:?}");
            assert_eq!(
                log.iter().filter(|l| l.starts_with("DATA")).count(),
                usize::from(pipelining)
            );
        }
    }

    /// greeting is the start of a script: banner, EHLO, and its reply with or
    /// without PIPELINING.
    fn greeting(pipelining: bool) -> Vec<Step> {
        let ehlo = if pipelining {
            "250-s\n250 PIPELINING"
        } else {
            "250 s"
        };
        vec![GREET, C("EHLO"), S(ehlo)]
    }

    /// Replies for one whole transaction (MAIL, one RCPT, DATA, message, dot), pipelined or not.
    fn transaction(script: &mut Vec<Step>, pipelining: bool, dot: &'static str) {
        if pipelining {
            script.extend([C("MAIL"), C("RCPT"), C("DATA"), S("250 ok\n250 ok\n354 go")]);
        } else {
            script.extend([C("MAIL"), S("250 ok"), C("RCPT"), S("250 ok")]);
            script.extend([C("DATA"), S("354 go")]);
        }
        script.extend([Data, S(dot)]);
    }

    #[test]
    fn no_rset_after_a_completed_transaction() {
        // RFC 5321 4.1.1.4: after a 250 to the final dot the server is ready for MAIL.
        for pipelining in [false, true] {
            let mut script = greeting(pipelining);
            transaction(&mut script, pipelining, "250 queued 1");
            transaction(&mut script, pipelining, "250 queued 2");
            script.extend([C("QUIT"), S("221 bye")]);
            let srv = serve(script);
            let mut c = Connection::open(&settings(&[srv.port], TlsMode::None), None).unwrap();
            for _ in 0..2 {
                c.reset().unwrap();
                let out = send(&mut c, &["a@y.test"]).unwrap();
                assert_eq!(out, vec![RcptOutcome::Accepted]);
            }
            c.reset().unwrap();
            c.quit();
            let log = srv.log();
            assert!(!has(&log, "UNEXPECTED") && !has(&log, "EOF"), "{log:?}");
            assert!(!has(&log, "RSET") && has(&log, "QUIT"), "{log:?}");
            assert_eq!(log.iter().filter(|l| l.starts_with("BODY:")).count(), 2);
        }
    }

    #[test]
    fn rset_only_after_an_aborted_transaction() {
        // (name, first transaction's script after EHLO, pipelining, first send succeeds)
        let cases: Vec<(&str, Vec<Step>, bool, bool)> = vec![
            (
                "all recipients refused",
                vec![
                    C("MAIL"),
                    C("RCPT"),
                    C("DATA"),
                    S("250 ok\n550 no\n554 no rcpt"),
                ],
                true,
                true,
            ),
            (
                "MAIL refused",
                vec![
                    C("MAIL"),
                    C("RCPT"),
                    C("DATA"),
                    S("451 later\n503 no\n503 no"),
                ],
                true,
                false,
            ),
            (
                "4xx after the dot",
                vec![
                    C("MAIL"),
                    C("RCPT"),
                    C("DATA"),
                    S("250 ok\n250 ok\n354 go"),
                    Data,
                    S("451 4.3.0 later"),
                ],
                true,
                true,
            ),
            (
                "all recipients refused",
                vec![C("MAIL"), S("250 ok"), C("RCPT"), S("550 no")],
                false,
                true,
            ),
            (
                "MAIL refused",
                vec![C("MAIL"), S("451 later")],
                false,
                false,
            ),
            (
                "DATA refused",
                vec![
                    C("MAIL"),
                    S("250 ok"),
                    C("RCPT"),
                    S("250 ok"),
                    C("DATA"),
                    S("451 later"),
                ],
                false,
                false,
            ),
        ];
        for (name, first, pipelining, first_ok) in cases {
            let mut script = greeting(pipelining);
            script.extend(first);
            if pipelining {
                // The server answers only once RSET and the whole group arrived: an unpipelined
                // RSET would wait for its reply until the test times out.
                script.extend([C("RSET"), C("MAIL"), C("RCPT"), C("DATA")]);
                script.extend([
                    S("250 reset\n250 ok\n250 ok\n354 go"),
                    Data,
                    S("250 queued"),
                ]);
            } else {
                script.extend([C("RSET"), S("250 reset")]);
                transaction(&mut script, false, "250 queued");
            }
            // A completed transaction: no second RSET.
            transaction(&mut script, pipelining, "250 queued");
            script.extend([C("QUIT"), S("221 bye")]);
            let srv = serve(script);
            let (lines, sink) = recorder();
            let mut c = Connection::open(&settings(&[srv.port], TlsMode::None), None).unwrap();
            c.set_transcript(Some(sink));
            assert_eq!(send(&mut c, &["a@y.test"]).is_ok(), first_ok, "{name}");
            for _ in 0..2 {
                c.reset().unwrap();
                let out = send(&mut c, &["a@y.test"]).unwrap();
                assert_eq!(out, vec![RcptOutcome::Accepted], "{name}");
            }
            c.quit();
            let log = srv.log();
            assert!(
                !has(&log, "UNEXPECTED") && !has(&log, "EOF"),
                "{name} pipelining={pipelining}: {log:?}"
            );
            assert_eq!(
                log.iter().filter(|l| *l == "RSET").count(),
                1,
                "{name}: {log:?}"
            );
            // One write with PIPELINING, RSET's reply read first; alone without.
            let want = if pipelining {
                "C: RSET\nC: MAIL FROM:<s@x.test>\nC: RCPT TO:<a@y.test>\nC: DATA\nS: 250 reset\nS: 250 ok"
            } else {
                "C: RSET\nS: 250 reset\nC: MAIL FROM:<s@x.test>"
            };
            let t = lines.lock().unwrap().join("\n");
            assert!(t.contains(want), "{name}: {t}");
        }
    }

    #[test]
    fn refused_rset_makes_the_connection_unusable() {
        for pipelining in [false, true] {
            let mut script = greeting(pipelining);
            if pipelining {
                script.extend([C("MAIL"), C("RCPT"), C("DATA"), S("250 ok\n550 no\n554 no")]);
                script.extend([C("RSET"), C("MAIL"), C("RCPT"), C("DATA")]);
                script.push(S("502 5.5.1 no RSET here\n250 ok\n250 ok\n354 go"));
            } else {
                script.extend([C("MAIL"), S("250 ok"), C("RCPT"), S("550 no")]);
                script.extend([C("RSET"), S("502 5.5.1 no RSET here")]);
            }
            let srv = serve(script);
            let mut c = Connection::open(&settings(&[srv.port], TlsMode::None), None).unwrap();
            send(&mut c, &["a@y.test"]).unwrap();
            let e = if pipelining {
                c.reset().unwrap();
                send(&mut c, &["a@y.test"]).unwrap_err()
            } else {
                c.reset().unwrap_err()
            };
            // About the connection, not the message: never a bounce.
            assert_eq!((e.stage, e.permanent), (Stage::Send, false), "{e}");
            assert!(e.message.contains("RSET refused: 502"), "{e}");
            assert!(c.reset().is_err());
            assert!(send(&mut c, &["a@y.test"]).is_err());
            c.quit();
            let log = srv.log();
            assert!(!has(&log, "UNEXPECTED") && !has(&log, "BODY:"), "{log:?}");
            // Nothing after the refused RSET (not even QUIT): the session's state is unknown.
            assert!(!log.iter().any(|l| l.starts_with("AFTER")), "{log:?}");
        }
    }

    #[test]
    fn idle_connection_dropped_by_the_smarthost_is_found_without_a_round_trip() {
        let closing: Vec<(&str, Step)> =
            vec![("closed", Close), ("421", S("421 4.4.2 idle too long"))];
        for (name, last) in closing {
            let mut script = vec![GREET, C("EHLO"), S("250-s\n250 PIPELINING")];
            transaction(&mut script, true, "250 queued");
            script.push(last);
            let srv = serve(script);
            let mut c = Connection::open(&settings(&[srv.port], TlsMode::None), None).unwrap();
            send(&mut c, &["a@y.test"]).unwrap();
            // Let the close or the 421 arrive.
            std::thread::sleep(Duration::from_millis(200));
            let e = c.reset().unwrap_err();
            assert_eq!((e.stage, e.permanent), (Stage::Send, false), "{name}: {e}");
            assert!(send(&mut c, &["a@y.test"]).is_err());
            drop(c);
            let log = srv.log();
            assert!(
                !log.iter().any(|l| l.starts_with("AFTER")),
                "{name}: {log:?}"
            );
        }
        // A live idle connection passes the check, over TLS too (TLS 1.3 session tickets are
        // not application data), and after the last reply's deadline has passed.
        let mut script = vec![GREET, C("EHLO"), S("250-s\n250-STARTTLS\n250 PIPELINING")];
        script.extend([
            C("STARTTLS"),
            S("220 go"),
            Tls,
            C("EHLO"),
            S("250-s\n250 PIPELINING"),
        ]);
        transaction(&mut script, true, "250 queued");
        transaction(&mut script, true, "250 queued");
        script.extend([C("QUIT"), S("221 bye")]);
        let srv = serve(script);
        let mut s = settings(&[srv.port], TlsMode::StartTls);
        s.hosts = vec![("localhost".to_string(), srv.port)];
        let t = Duration::from_millis(500);
        (s.command_timeout, s.data_timeout) = (t, t);
        let mut c = Connection::open(&s, None).unwrap();
        for _ in 0..2 {
            std::thread::sleep(Duration::from_millis(1200));
            c.reset().unwrap();
            assert_eq!(
                send(&mut c, &["a@y.test"]).unwrap(),
                vec![RcptOutcome::Accepted]
            );
        }
        c.quit();
        let log = srv.log();
        assert!(!has(&log, "UNEXPECTED") && !has(&log, "RSET"), "{log:?}");
    }

    #[test]
    fn mail_refused_is_an_error_with_its_permanence() {
        for (reply, permanent) in [
            ("553 5.7.1 sender denied", true),
            ("451 4.7.1 later", false),
        ] {
            let srv = serve(vec![GREET, C("EHLO"), S("250 s"), C("MAIL"), S(reply)]);
            let mut c = Connection::open(&settings(&[srv.port], TlsMode::None), None).unwrap();
            let e = send(&mut c, &["a@y.test"]).unwrap_err();
            assert_eq!((e.stage, e.permanent), (Stage::Send, permanent), "{e}");
            assert!(e.message.contains(reply), "{e}");
            drop(c);
            assert!(!has(&srv.log(), "RCPT"));
        }
    }

    #[test]
    fn tls_handshake_trickled_byte_by_byte_times_out_as_a_whole() {
        // A smarthost whose ServerHello record comes a byte every 100 ms: each read is well
        // within the timeout, the handshake as a whole is not. Without a deadline over the
        // whole handshake the client waited until the server gave up (seconds here; for ever
        // for a server that keeps trickling).
        let trickled = || {
            let mut steps = vec![Raw(vec![0x16, 0x03, 0x03, 0x02, 0x00])];
            for _ in 0..40 {
                steps.push(Wait(100));
                steps.push(Raw(vec![0x02]));
            }
            steps
        };
        let starttls = vec![
            GREET,
            C("EHLO"),
            S("250-s\n250 STARTTLS"),
            C("STARTTLS"),
            S("220 go ahead"),
        ];
        for (mode, before) in [(TlsMode::Implicit, vec![]), (TlsMode::StartTls, starttls)] {
            let srv = serve(before.into_iter().chain(trickled()).collect());
            let mut s = settings(&[srv.port], mode);
            s.command_timeout = Duration::from_millis(600);
            let e = Connection::open(&s, None)
                .err()
                .expect("a handshake timeout");
            assert_eq!((e.stage, e.permanent), (Stage::Tls, false), "{mode:?}: {e}");
            assert!(
                e.message.contains("TLS handshake with 127.0.0.1:")
                    && e.message.contains("did not complete within 0.6s"),
                "{mode:?}: {e}"
            );
            drop(srv);
        }
    }

    #[test]
    fn reply_trickled_inside_tls_times_out_as_a_whole() {
        // The greeting in one TLS record, a byte every 60 ms: rustls reads the socket until
        // the record is whole, so a timeout per socket read never fired.
        let srv = serve(vec![Tls, TrickleTls("220 smarthost.test ESMTP slowly", 60)]);
        let mut s = settings(&[srv.port], TlsMode::Implicit);
        s.command_timeout = Duration::from_millis(600);
        let e = Connection::open(&s, None).err().expect("a timeout");
        assert_eq!(e.stage, Stage::Connect, "{e}");
        assert!(e.message.contains("greeting: timed out"), "{e}");
        drop(srv);
    }

    #[test]
    fn reply_trickled_byte_by_byte_times_out_as_a_whole() {
        // Regression (issue 7): the timeout applied to each read, so a server sending one byte
        // every (timeout - ε) could hold delivery for hours. Each byte here comes well within
        // the timeout; the whole greeting does not.
        let mut script = Vec::new();
        for b in b"220 smarthost.test ESMTP slowly\r\n" {
            script.push(Wait(60));
            script.push(Raw(vec![*b]));
        }
        let srv = serve(script);
        let mut s = settings(&[srv.port], TlsMode::None);
        s.command_timeout = Duration::from_millis(600);
        let started = std::time::Instant::now();
        let e = Connection::open(&s, None).err().expect("a timeout");
        assert!(started.elapsed() < Duration::from_millis(1500), "{e}");
        assert_eq!(e.stage, Stage::Connect, "{e}");
        assert!(e.message.contains("greeting: timed out"), "{e}");
        drop(srv);
    }

    #[test]
    fn starttls_missing_or_refused_sends_nothing_in_plaintext() {
        let cases = [
            (
                "does not offer STARTTLS",
                vec![
                    GREET,
                    C("EHLO"),
                    S("250-s\n250 AUTH PLAIN"),
                    C("QUIT"),
                    S("221 bye"),
                ],
            ),
            (
                "454 4.7.0 TLS not available",
                vec![
                    GREET,
                    C("EHLO"),
                    S("250-s\n250 STARTTLS"),
                    C("STARTTLS"),
                    S("454 4.7.0 TLS not available"),
                    C("QUIT"),
                    S("221 bye"),
                ],
            ),
            // A reply smuggled behind the 220 (response injection) is refused too.
            (
                "after its STARTTLS reply",
                vec![
                    GREET,
                    C("EHLO"),
                    S("250-s\n250 STARTTLS"),
                    C("STARTTLS"),
                    S("220 go\n250 injected"),
                ],
            ),
        ];
        for (why, script) in cases {
            let srv = serve(script);
            let s = with_auth(settings(&[srv.port], TlsMode::StartTls));
            let e = Connection::open(&s, None).err().unwrap();
            assert_eq!((e.stage, e.permanent), (Stage::Tls, false), "{e}");
            assert!(e.message.contains(why), "{e}");
            let log = srv.log();
            for verb in ["MAIL", "AUTH", "RCPT", "UNEXPECTED"] {
                assert!(!has(&log, verb), "{verb} in {log:?}");
            }
            assert_eq!(
                log.iter().filter(|l| l.contains("EHLO")).count(),
                1,
                "{log:?}"
            );
        }
    }

    #[test]
    fn auth_plain_and_login() {
        let plain = format!(
            "AUTH PLAIN {}",
            crate::base64::encode(b"\0user\0sekret pass")
        );
        let plain: &'static str = Box::leak(plain.into_boxed_str());
        let u: &'static str = Box::leak(crate::base64::encode(b"user").into_boxed_str());
        let p: &'static str = Box::leak(crate::base64::encode(b"sekret pass").into_boxed_str());
        let cases = vec![
            vec![
                GREET,
                C("EHLO"),
                S("250-s\n250 AUTH LOGIN PLAIN"),
                C(plain),
                S("235 2.7.0 ok"),
            ],
            vec![
                GREET,
                C("EHLO"),
                S("250-s\n250 AUTH=LOGIN"),
                C("AUTH LOGIN"),
                S("334 VXNlcm5hbWU6"),
                C(u),
                S("334 UGFzc3dvcmQ6"),
                C(p),
                S("235 2.7.0 ok"),
            ],
        ];
        for script in cases {
            let srv = serve(script);
            let (lines, mut rec) = recorder();
            let c = Connection::open(
                &with_auth(settings(&[srv.port], TlsMode::None)),
                Some(&mut *rec),
            )
            .unwrap();
            c.quit();
            let log = srv.log();
            assert!(!has(&log, "UNEXPECTED") && !has(&log, "EOF"), "{log:?}");
            let t = lines.lock().unwrap().join("\n");
            assert!(
                !t.contains(p)
                    && !t.contains(u)
                    && !t.contains("sekret")
                    && !t.contains(&plain[11..]),
                "{t}"
            );
            assert!(t.contains("C: AUTH ") && t.contains("********"), "{t}");
            assert!(!t.contains("VXNlcm5hbWU6"), "challenge not masked: {t}");
        }
    }

    #[test]
    fn auth_failures() {
        let cases: Vec<(&'static str, &'static str, bool)> = vec![
            ("250-s\n250 AUTH PLAIN", "535 5.7.8 bad credentials", true),
            ("250-s\n250 AUTH PLAIN", "534 5.7.9 weak", true),
            ("250-s\n250 AUTH PLAIN", "454 4.7.0 try later", false),
        ];
        for (ehlo, reply, permanent) in cases {
            // The second host must not be tried after a refused login.
            let other = serve(vec![]);
            let srv = serve(vec![
                GREET,
                C("EHLO"),
                S(ehlo),
                C("AUTH PLAIN"),
                S(reply),
                C("QUIT"),
                S("221 bye"),
            ]);
            let s = with_auth(settings(&[srv.port, other.port], TlsMode::None));
            let e = Connection::open(&s, None).err().unwrap();
            assert_eq!((e.stage, e.permanent), (Stage::Auth, permanent), "{e}");
            assert!(e.message.contains(reply), "{e}");
            assert!(!has(&srv.log(), "UNEXPECTED"));
            // Unblock the untouched server's accept().
            drop(TcpStream::connect(("127.0.0.1", other.port)));
            assert!(other.log().is_empty());
        }
        for ehlo in ["250-s\n250 SIZE 10", "250-s\n250 AUTH CRAM-MD5"] {
            let srv = serve(vec![GREET, C("EHLO"), S(ehlo)]);
            let e = Connection::open(&with_auth(settings(&[srv.port], TlsMode::None)), None)
                .err()
                .unwrap();
            assert_eq!((e.stage, e.permanent), (Stage::Auth, true), "{e}");
            assert!(!has(&srv.log(), "AUTH"));
        }
    }

    /// A token source handing out "tok1", "tok2", ... and recording what it was told.
    struct Tokens {
        calls: Mutex<Vec<Option<String>>>,
        fail: Option<ClientError>,
    }

    impl BearerSource for Tokens {
        fn bearer(&self, refused: Option<&str>) -> Result<String, ClientError> {
            let mut calls = self.calls.lock().unwrap();
            calls.push(refused.map(str::to_string));
            match &self.fail {
                Some(e) => Err(e.clone()),
                None => Ok(format!("tok{}", calls.len())),
            }
        }
    }

    fn with_tokens(mut s: Settings, auth: SmarthostAuth) -> (Settings, Arc<Tokens>) {
        let t = Arc::new(Tokens {
            calls: Mutex::new(Vec::new()),
            fail: None,
        });
        s.username = Some("box@example.com".to_string());
        s.auth = auth;
        s.bearer = Some(t.clone());
        (s, t)
    }

    fn leak(s: String) -> &'static str {
        Box::leak(s.into_boxed_str())
    }

    #[test]
    fn bearer_logins() {
        let user = "box@example.com";
        let x = |t: &str| leak(format!("AUTH XOAUTH2 {}", sasl::xoauth2(user, t)));
        let o = |t: &str| leak(format!("AUTH OAUTHBEARER {}", sasl::oauthbearer(user, t)));
        let gmail_no = leak(format!(
            "334 {}",
            crate::base64::encode(br#"{"status":"401","schemes":"bearer"}"#)
        ));
        // (auth, script, token requests (None = first, Some = refused token), Ok or the error's permanence)
        type Case = (
            SmarthostAuth,
            Vec<Step>,
            Vec<Option<&'static str>>,
            Option<bool>,
        );
        let cases: Vec<Case> = vec![
            // Microsoft 365 offers LOGIN XOAUTH2: XOAUTH2 with the initial response.
            (
                SmarthostAuth::Auto,
                vec![GREET, C("EHLO"), S("250-s\n250 AUTH LOGIN XOAUTH2"), C(x("tok1")), S("235 2.7.0 ok")],
                vec![None],
                None,
            ),
            // auto prefers XOAUTH2 when both are offered.
            (
                SmarthostAuth::Auto,
                vec![GREET, C("EHLO"), S("250-s\n250 AUTH OAUTHBEARER XOAUTH2"), C(x("tok1")), S("235 ok")],
                vec![None],
                None,
            ),
            // OAUTHBEARER when only it is offered, or when forced.
            (
                SmarthostAuth::Auto,
                vec![GREET, C("EHLO"), S("250-s\n250 AUTH PLAIN OAUTHBEARER"), C(o("tok1")), S("235 ok")],
                vec![None],
                None,
            ),
            (
                SmarthostAuth::Oauthbearer,
                vec![GREET, C("EHLO"), S("250-s\n250 AUTH XOAUTH2 OAUTHBEARER"), C(o("tok1")), S("235 ok")],
                vec![None],
                None,
            ),
            // Microsoft refuses with 535 5.7.3: one fresh token, one more AUTH.
            (
                SmarthostAuth::Auto,
                vec![
                    GREET, C("EHLO"), S("250-s\n250 AUTH XOAUTH2"),
                    C(x("tok1")), S("535 5.7.3 Authentication unsuccessful"),
                    C(x("tok2")), S("235 2.7.0 Authentication successful"),
                ],
                vec![None, Some("tok1")],
                None,
            ),
            // ... and no third: refused twice is a login failure (permanent, 5xx).
            (
                SmarthostAuth::Auto,
                vec![
                    GREET, C("EHLO"), S("250-s\n250 AUTH XOAUTH2"),
                    C(x("tok1")), S("535 5.7.3 Authentication unsuccessful"),
                    C(x("tok2")), S("535 5.7.3 Authentication unsuccessful"),
                    C("QUIT"), S("221 bye"),
                ],
                vec![None, Some("tok1")],
                Some(true),
            ),
            // Gmail: a 334 error challenge, the empty response, then 535; then a fresh token.
            (
                SmarthostAuth::Auto,
                vec![
                    GREET, C("EHLO"), S("250-s\n250 AUTH LOGIN PLAIN XOAUTH2 OAUTHBEARER"),
                    C(x("tok1")), S(gmail_no), C(""), S("535-5.7.8 Username and Password not accepted\n535 5.7.8 more"),
                    C(x("tok2")), S("235 2.7.0 Accepted"),
                ],
                vec![None, Some("tok1")],
                None,
            ),
            // OAUTHBEARER's error challenge is answered with %x01 (RFC 7628 3.2.3).
            (
                SmarthostAuth::Oauthbearer,
                vec![
                    GREET, C("EHLO"), S("250-s\n250 AUTH OAUTHBEARER"),
                    C(o("tok1")), S(gmail_no), C("AQ=="), S("535 5.7.8 no"),
                    C(o("tok2")), S("235 ok"),
                ],
                vec![None, Some("tok1")],
                None,
            ),
            // SMTP AUTH disabled for the mailbox: no fresh token can fix it.
            (
                SmarthostAuth::Auto,
                vec![
                    GREET, C("EHLO"), S("250-s\n250 AUTH XOAUTH2"),
                    C(x("tok1")), S("535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Mailbox."),
                    C("QUIT"), S("221 bye"),
                ],
                vec![None],
                Some(true),
            ),
            // A transient refusal is not a bad token.
            (
                SmarthostAuth::Auto,
                vec![
                    GREET, C("EHLO"), S("250-s\n250 AUTH XOAUTH2"),
                    C(x("tok1")), S("454 4.7.0 Temporary authentication failure"),
                    C("QUIT"), S("221 bye"),
                ],
                vec![None],
                Some(false),
            ),
            // Forced XOAUTH2 that is not offered; and no bearer mechanism at all.
            (SmarthostAuth::Xoauth2, vec![GREET, C("EHLO"), S("250-s\n250 AUTH OAUTHBEARER"), C("QUIT"), S("221 bye")], vec![], Some(true)),
            (SmarthostAuth::Auto, vec![GREET, C("EHLO"), S("250-s\n250 AUTH PLAIN LOGIN"), C("QUIT"), S("221 bye")], vec![], Some(true)),
        ];
        for (i, (auth, script, want_calls, want)) in cases.into_iter().enumerate() {
            let srv = serve(script);
            let (s, tokens) = with_tokens(settings(&[srv.port], TlsMode::None), auth);
            let (lines, mut rec) = recorder();
            let got = Connection::open(&s, Some(&mut *rec));
            match (&got, want) {
                (Ok(_), None) => {}
                (Err(e), Some(permanent)) => {
                    assert_eq!(
                        (e.stage, e.permanent),
                        (Stage::Auth, permanent),
                        "case {i}: {e}"
                    )
                }
                (Ok(_), Some(_)) => panic!("case {i}: login should fail"),
                (Err(e), None) => panic!("case {i}: {e}"),
            }
            if let Ok(c) = got {
                c.quit();
            }
            let log = srv.log();
            assert!(!has(&log, "UNEXPECTED"), "case {i}: {log:?}");
            let calls = tokens.calls.lock().unwrap().clone();
            let want_calls: Vec<Option<String>> =
                want_calls.iter().map(|c| c.map(str::to_string)).collect();
            assert_eq!(calls, want_calls, "case {i}");
            let t = lines.lock().unwrap().join("\n");
            assert!(
                !t.contains("tok1") && !t.contains("tok2"),
                "case {i}: token in transcript: {t}"
            );
            for secret in [sasl::xoauth2(user, "tok1"), sasl::oauthbearer(user, "tok1")] {
                assert!(!t.contains(&secret), "case {i}: {t}");
            }
        }
    }

    #[test]
    fn token_source_failure_is_an_auth_error_without_sending_auth() {
        let srv = serve(vec![
            GREET,
            C("EHLO"),
            S("250-s\n250 AUTH XOAUTH2"),
            C("QUIT"),
            S("221 bye"),
        ]);
        let (mut s, _) = with_tokens(settings(&[srv.port], TlsMode::None), SmarthostAuth::Auto);
        s.bearer = Some(Arc::new(Tokens {
            calls: Mutex::new(Vec::new()),
            fail: Some(ClientError::new(Stage::Auth, false, "token endpoint: 503")),
        }));
        let e = Connection::open(&s, None).err().unwrap();
        assert_eq!((e.stage, e.permanent), (Stage::Auth, false), "{e}");
        assert!(e.message.contains("503"));
        assert!(!has(&srv.log(), "UNEXPECTED"));
    }

    #[test]
    fn forced_password_mechanism() {
        let plain = leak(format!("AUTH PLAIN {}", sasl::plain("user", "sekret pass")));
        // auth = login uses LOGIN although PLAIN is offered; auth = plain refuses LOGIN-only servers.
        let srv = serve(vec![
            GREET,
            C("EHLO"),
            S("250-s\n250 AUTH PLAIN LOGIN"),
            C("AUTH LOGIN"),
            S("334 VXNlcm5hbWU6"),
            C("dXNlcg=="),
            S("334 UGFzc3dvcmQ6"),
            C("c2VrcmV0IHBhc3M="),
            S("235 ok"),
        ]);
        let mut s = with_auth(settings(&[srv.port], TlsMode::None));
        s.auth = SmarthostAuth::Login;
        Connection::open(&s, None).unwrap().quit();
        assert!(!has(&srv.log(), "UNEXPECTED"));
        let srv = serve(vec![
            GREET,
            C("EHLO"),
            S("250-s\n250 AUTH LOGIN"),
            C("QUIT"),
            S("221 bye"),
        ]);
        let mut s = with_auth(settings(&[srv.port], TlsMode::None));
        s.auth = SmarthostAuth::Plain;
        let e = Connection::open(&s, None).err().unwrap();
        assert!(e.message.contains("not PLAIN (auth = plain)"), "{e}");
        assert!(!has(&srv.log(), plain));
    }

    #[test]
    fn throttle_replies_are_never_permanent() {
        // (script after the greeting/EHLO, the error's throttle kind)
        let quota =
            "550 5.4.5 Daily user sending limit exceeded. For more information go to support";
        let cases: Vec<(Vec<Step>, Throttle)> = vec![
            (
                vec![S("421 4.7.0 Try again later, closing connection.")],
                Throttle::Rate,
            ),
            (
                vec![S("220 s"), C("EHLO"), S("250 s"), C("MAIL"), S(quota)],
                Throttle::DailyQuota,
            ),
            (
                vec![
                    S("220 s"),
                    C("EHLO"),
                    S("250 s"),
                    C("MAIL"),
                    S("432 4.3.2 Concurrent connections limit exceeded"),
                ],
                Throttle::Concurrency,
            ),
        ];
        for (i, (script, want)) in cases.into_iter().enumerate() {
            let srv = serve(script);
            let s = settings(&[srv.port], TlsMode::None);
            let e = match Connection::open(&s, None) {
                Err(e) => e,
                Ok(mut c) => send(&mut c, &["a@y.test"]).unwrap_err(),
            };
            assert_eq!(
                (e.throttle, e.permanent),
                (Some(want), false),
                "case {i}: {e}"
            );
            assert!(e.kind.starts_with("throttle "), "case {i}: {}", e.kind);
        }
        // [smarthost] throttle_replies adds wording the table does not know.
        let srv = serve(vec![
            S("220 s"),
            C("EHLO"),
            S("250 s"),
            C("MAIL"),
            S("554 5.7.0 Hourly quota for this account reached"),
        ]);
        let mut s = settings(&[srv.port], TlsMode::None);
        s.throttle_replies = Arc::from(vec!["hourly quota".to_string()]);
        let mut c = Connection::open(&s, None).unwrap();
        let e = send(&mut c, &["a@y.test"]).unwrap_err();
        assert_eq!(
            (e.throttle, e.permanent),
            (Some(Throttle::Rate), false),
            "{e}"
        );
    }

    #[test]
    fn a_421_in_a_pipelined_group_is_the_error() {
        // Gmail's throttle: 421 at MAIL or RCPT, then the connection is closed. The replies
        // still due never come; the error is the 421's, so the queue pauses on its reason.
        let try_later = "421 4.7.0 Try again later, closing connection.";
        let ehlos = [
            ("250-s\n250 PIPELINING", false),
            ("250-s\n250-PIPELINING\n250 CHUNKING", true),
        ];
        for (ehlo, chunking) in ehlos {
            for after_mail in [false, true] {
                // The whole group is read first: closing on unread bytes would reset the
                // connection and drop the 421 before the client reads it.
                let mut script = vec![GREET, C("EHLO"), S(ehlo), C("MAIL"), C("RCPT")];
                script.extend(if chunking {
                    vec![C("BDAT"), Chunk]
                } else {
                    vec![C("DATA")]
                });
                if after_mail {
                    script.push(S("250 2.1.0 ok"));
                }
                script.extend([S(try_later), Close]);
                let srv = serve(script);
                let mut c = Connection::open(&settings(&[srv.port], TlsMode::None), None).unwrap();
                let e = send(&mut c, &["a@y.test"]).unwrap_err();
                let case = format!("{ehlo:?}, 421 after MAIL's 250: {after_mail}");
                assert_eq!(
                    (e.throttle, e.permanent),
                    (Some(Throttle::Rate), false),
                    "{case}: {e}"
                );
                assert!(e.message.contains("Try again later"), "{case}: {e}");
                assert!(c.broken, "{case}");
            }
        }
    }

    #[test]
    fn size_and_smtputf8_limits_are_permanent() {
        let srv = serve(vec![GREET, C("EHLO"), S("250-s\n250 SIZE 100")]);
        let mut c = Connection::open(&settings(&[srv.port], TlsMode::None), None).unwrap();
        let e = c
            .send(
                "s@x.test",
                &rcpts(&["a@y.test"]),
                &mut &MSG[..],
                1000,
                false,
                false,
            )
            .unwrap_err();
        assert_eq!((e.stage, e.permanent), (Stage::Send, true), "{e}");
        let e = c
            .send(
                "s@x.test",
                &rcpts(&["jörg@y.test"]),
                &mut &MSG[..],
                35,
                false,
                false,
            )
            .unwrap_err();
        assert_eq!((e.stage, e.permanent), (Stage::Send, true), "{e}");
        assert!(e.message.contains("SMTPUTF8"), "{e}");
        drop(c);
        assert!(!has(&srv.log(), "MAIL"));

        let srv = serve(vec![
            GREET,
            C("EHLO"),
            S("250-s\n250 SMTPUTF8"),
            C("MAIL FROM:<s@x.test> SMTPUTF8"),
            S("250 ok"),
            C("RCPT TO:<jörg@y.test>"),
            S("250 ok"),
            C("DATA"),
            S("354 go"),
            Data,
            S("250 ok"),
        ]);
        let mut c = Connection::open(&settings(&[srv.port], TlsMode::None), None).unwrap();
        assert_eq!(
            send(&mut c, &["jörg@y.test"]).unwrap(),
            vec![RcptOutcome::Accepted]
        );
        drop(c);
        assert!(!has(&srv.log(), "UNEXPECTED"));
    }

    #[test]
    fn bad_addresses_are_never_sent() {
        let srv = serve(vec![GREET, C("EHLO"), S("250 s")]);
        let mut c = Connection::open(&settings(&[srv.port], TlsMode::None), None).unwrap();
        let out = send(&mut c, &["a@y.test\r\nRSET", "b>@y"]).unwrap();
        assert!(
            out.iter().all(|o| matches!(o, RcptOutcome::Permanent(_))),
            "{out:?}"
        );
        let e = c
            .send(
                "s@x\nQUIT",
                &rcpts(&["a@y.test"]),
                &mut &MSG[..],
                35,
                false,
                false,
            )
            .unwrap_err();
        assert!(e.permanent);
        drop(c);
        let log = srv.log();
        assert!(!has(&log, "MAIL") && !has(&log, "RCPT"), "{log:?}");
    }

    #[test]
    fn failover_to_the_next_host() {
        let srv = serve(vec![GREET, C("EHLO"), S("250 s"), C("QUIT"), S("221 bye")]);
        let c = Connection::open(&settings(&[dead_port(), srv.port], TlsMode::None), None).unwrap();
        assert_eq!(c.peer(), format!("127.0.0.1:{}", srv.port));
        c.quit();
        srv.log();
        // All hosts down: the last error is returned.
        let dead = dead_port();
        let e = Connection::open(&settings(&[dead_port(), dead], TlsMode::None), None)
            .err()
            .unwrap();
        assert_eq!((e.stage, e.permanent), (Stage::Connect, false));
        assert!(e.message.contains(&format!(":{dead}")), "{e}");
    }

    #[test]
    fn broken_servers_give_transient_errors_without_hanging() {
        let many: String = (0..MAX_REPLY_LINES + 5)
            .map(|_| "250-x\n")
            .collect::<String>()
            + "250 x";
        let many: &'static str = Box::leak(many.into_boxed_str());
        let cases: Vec<(&str, Vec<Step>, Stage)> = vec![
            (
                "too many lines",
                vec![GREET, C("EHLO"), S(many), Wait(3000)],
                Stage::Connect,
            ),
            (
                "line too long",
                vec![Raw(vec![b'2'; 5000]), Wait(3000)],
                Stage::Connect,
            ),
            (
                "garbage",
                vec![S("hello there"), Wait(3000)],
                Stage::Connect,
            ),
            (
                "mixed codes",
                vec![GREET, C("EHLO"), S("250-s\n251 x"), Wait(3000)],
                Stage::Connect,
            ),
            (
                "greeting 554",
                vec![S("554 go away"), C("QUIT")],
                Stage::Connect,
            ),
            ("closed", vec![Close], Stage::Connect),
        ];
        for (name, script, stage) in cases {
            let srv = serve(script);
            let mut s = settings(&[srv.port], TlsMode::None);
            s.command_timeout = Duration::from_secs(10);
            let t0 = Instant::now();
            let e = Connection::open(&s, None).err().unwrap();
            assert!(
                t0.elapsed() < Duration::from_secs(2),
                "{name}: took {:?}",
                t0.elapsed()
            );
            assert_eq!((e.stage, e.permanent), (stage, false), "{name}: {e}");
            if !matches!(name, "greeting 554" | "closed") {
                assert!(
                    e.message.contains("smarthost sent an invalid reply"),
                    "{name}: {e}"
                );
            }
            // Not joined: the server thread ends on its own after its Wait.
            drop(srv);
        }
    }

    #[test]
    fn silent_server_times_out() {
        let srv = serve(vec![Wait(1500)]);
        let mut s = settings(&[srv.port], TlsMode::None);
        s.command_timeout = Duration::from_millis(300);
        let t0 = Instant::now();
        let e = Connection::open(&s, None).err().unwrap();
        assert!(t0.elapsed() < Duration::from_secs(1));
        assert_eq!((e.stage, e.permanent), (Stage::Connect, false));
        assert!(e.message.contains("timed out"), "{e}");
        srv.log();

        // No reply to the final dot within data_timeout.
        let srv = serve(vec![
            GREET,
            C("EHLO"),
            S("250 s"),
            C("MAIL"),
            S("250 ok"),
            C("RCPT"),
            S("250 ok"),
            C("DATA"),
            S("354 go"),
            Data,
            Wait(1500),
        ]);
        let mut s = settings(&[srv.port], TlsMode::None);
        s.data_timeout = Duration::from_millis(300);
        let mut c = Connection::open(&s, None).unwrap();
        let e = send(&mut c, &["a@y.test"]).unwrap_err();
        assert_eq!((e.stage, e.permanent), (Stage::Send, false), "{e}");
        assert!(e.message.contains("timed out"), "{e}");
        // The session is out of step now: no more commands on it.
        assert!(c.reset().is_err());
        srv.log();
    }

    #[test]
    fn connection_lost_mid_data_is_transient() {
        let srv = serve(vec![
            GREET,
            C("EHLO"),
            S("250 s"),
            C("MAIL"),
            S("250 ok"),
            C("RCPT"),
            S("250 ok"),
            C("DATA"),
            S("354 go"),
            Close,
        ]);
        let mut c = Connection::open(&settings(&[srv.port], TlsMode::None), None).unwrap();
        let big =
            b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\r\n".repeat(40_000);
        let e = c
            .send(
                "s@x.test",
                &rcpts(&["a@y.test"]),
                &mut &big[..],
                big.len() as u64,
                false,
                false,
            )
            .unwrap_err();
        assert_eq!((e.stage, e.permanent), (Stage::Send, false), "{e}");
        srv.log();
    }

    #[test]
    fn helo_fallback_only_when_nothing_is_required() {
        let srv = serve(vec![
            GREET,
            C("EHLO"),
            S("502 5.5.2 what"),
            C("HELO relay.test"),
            S("250 hi"),
            C("QUIT"),
            S("221"),
        ]);
        let c = Connection::open(&settings(&[srv.port], TlsMode::None), None).unwrap();
        assert_eq!(c.extensions(), &Extensions::default());
        c.quit();
        assert!(!has(&srv.log(), "UNEXPECTED"));

        let srv = serve(vec![
            GREET,
            C("EHLO"),
            S("502 5.5.2 what"),
            C("QUIT"),
            S("221"),
        ]);
        let e = Connection::open(&with_auth(settings(&[srv.port], TlsMode::None)), None)
            .err()
            .unwrap();
        assert_eq!((e.stage, e.permanent), (Stage::Connect, false), "{e}");
        assert!(!has(&srv.log(), "HELO"));
    }

    #[test]
    fn starttls_then_auth_over_tls() {
        let srv = serve(vec![
            GREET,
            C("EHLO"),
            S("250-s\n250 STARTTLS"),
            C("STARTTLS"),
            S("220 go"),
            Tls,
            C("EHLO relay.test"),
            S("250-s\n250-AUTH PLAIN\n250 PIPELINING"),
            C("AUTH PLAIN "),
            S("235 ok"),
            C("MAIL"),
            C("RCPT"),
            C("DATA"),
            S("250 ok\n250 ok\n354 go"),
            Data,
            S("250 queued"),
            C("QUIT"),
            S("221 bye"),
        ]);
        let mut s = with_auth(settings(&[srv.port], TlsMode::StartTls));
        s.hosts = vec![("localhost".to_string(), srv.port)];
        let (lines, mut rec) = recorder();
        let mut c = Connection::open(&s, Some(&mut *rec)).unwrap();
        assert!(c.tls_info().unwrap().starts_with("TLS"));
        assert!(c.extensions().pipelining && !c.extensions().starttls);
        let (send_lines, sink) = recorder();
        c.set_transcript(Some(sink));
        assert_eq!(
            send(&mut c, &["a@y.test"]).unwrap(),
            vec![RcptOutcome::Accepted]
        );
        c.quit();
        let log = srv.log();
        assert!(!has(&log, "UNEXPECTED") && has(&log, "BODY:"), "{log:?}");
        assert!(lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.starts_with("* TLS established")));
        assert!(send_lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l == "S: 250 queued"));
    }

    #[test]
    fn implicit_tls_and_untrusted_certificate() {
        let srv = serve(vec![
            Tls,
            GREET,
            C("EHLO"),
            S("250 s"),
            C("QUIT"),
            S("221 bye"),
        ]);
        let c = Connection::open(&settings(&[srv.port], TlsMode::Implicit), None).unwrap();
        assert!(c.tls_info().is_some());
        c.quit();
        assert!(!has(&srv.log(), "UNEXPECTED"));

        // Web PKI roots do not know the test CA: Tls error, and nothing sent.
        let srv = std::thread::spawn(|| {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            let port = l.local_addr().unwrap().port();
            (
                port,
                std::thread::spawn(move || {
                    let (tcp, _) = l.accept().unwrap();
                    let _ = Stream::Plain(tcp).accept_tls(server_tls(), far());
                }),
            )
        })
        .join()
        .unwrap();
        let mut s = settings(&[srv.0], TlsMode::Implicit);
        s.tls_config = crate::tls::client_config(true, None, None).unwrap();
        let e = Connection::open(&s, None).err().unwrap();
        assert_eq!((e.stage, e.permanent), (Stage::Tls, false), "{e}");
        srv.1.join().unwrap();
    }

    /// chunking is the start of a script whose smarthost offers PIPELINING and CHUNKING.
    fn chunking() -> Vec<Step> {
        vec![GREET, C("EHLO"), S("250-s\n250-PIPELINING\n250 CHUNKING")]
    }

    #[test]
    fn bdat_pipelined_happy_path() {
        // The script answers only once MAIL, both RCPTs, BDAT and the whole chunk arrived: a
        // client that waited for a reply first, or sent fewer bytes, would hang until timeout.
        let msg = "Subject: hi\r\n\r\n.leading dot\r\nbody\r\n";
        let srv = serve(vec![
            GREET,
            C("EHLO relay.test"),
            S("250-smarthost.test\n250-PIPELINING\n250-SIZE 1000000\n250-8BITMIME\n250-CHUNKING\n250 BINARYMIME"),
            C("MAIL FROM:<s@x.test> SIZE=35 BODY=8BITMIME"),
            C("RCPT TO:<a@y.test>"),
            C("RCPT TO:<b@y.test>"),
            C("BDAT 35 LAST"),
            Chunk,
            S("250 2.1.0 ok\n250 2.1.5 ok\n250 2.1.5 ok\n250 2.0.0 queued"),
            // A completed transaction (RFC 3030 2): the next MAIL goes without RSET.
            C("MAIL FROM:<s@x.test> SIZE=35"),
            C("RCPT TO:<a@y.test>"),
            C("BDAT 35 LAST"),
            Chunk,
            S("250 ok\n250 ok\n250 queued 2"),
            C("QUIT"),
            S("221 bye"),
        ]);
        let mut c = Connection::open(&settings(&[srv.port], TlsMode::None), None).unwrap();
        assert!(c.extensions().chunking && c.extensions().binarymime);
        let (lines, sink) = recorder();
        c.set_transcript(Some(sink));
        let out = c
            .send(
                "s@x.test",
                &rcpts(&["a@y.test", "b@y.test"]),
                &mut &MSG[..],
                35,
                true,
                false,
            )
            .unwrap();
        assert_eq!(out, vec![RcptOutcome::Accepted, RcptOutcome::Accepted]);
        c.reset().unwrap();
        assert_eq!(
            send(&mut c, &["a@y.test"]).unwrap(),
            vec![RcptOutcome::Accepted]
        );
        c.reset().unwrap();
        c.quit();
        let log = srv.log();
        assert!(!has(&log, "UNEXPECTED") && !has(&log, "EOF"), "{log:?}");
        assert!(!has(&log, "RSET") && !has(&log, "DATA"), "{log:?}");
        // RFC 3030 2: not dot-stuffed, the bytes as stored.
        let body = format!("BODY:{msg}");
        assert_eq!(log.iter().filter(|l| **l == body).count(), 2, "{log:?}");
        // BINARYMIME is parsed, never asked for.
        assert!(log.contains(&"MAIL FROM:<s@x.test> SIZE=35 BODY=8BITMIME".to_string()));
        // One write: every command and the chunk before the first reply.
        let t = lines.lock().unwrap().join("\n");
        let want = "C: MAIL FROM:<s@x.test> SIZE=35 BODY=8BITMIME\nC: RCPT TO:<a@y.test>\nC: RCPT TO:<b@y.test>\nC: BDAT 35 LAST\nC: (35 bytes of message, not stuffed)\nS: 250 2.1.0 ok";
        assert!(t.contains(want), "{t}");
        assert!(t.contains("S: 250 queued 2"), "{t}");
    }

    #[test]
    fn bdat_outcomes() {
        let perm = |t: &str| RcptOutcome::Permanent(t.to_string());
        let temp = |t: &str| RcptOutcome::Transient(t.to_string());
        let quota = "554 5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException";
        // (name, replies to MAIL, RCPT a, RCPT b, BDAT; the result, Err = its permanence;
        // whether the next transaction starts with RSET)
        // Err holds the error's permanence.
        type Want = Result<Vec<RcptOutcome>, bool>;
        let cases: Vec<(&str, &'static str, Want, bool)> = vec![
            (
                "550 on one",
                "250 ok\n250 ok\n550 5.1.1 no such user\n250 queued",
                Ok(vec![RcptOutcome::Accepted, perm("550 5.1.1 no such user")]),
                false,
            ),
            (
                "452 on one",
                "250 ok\n452 4.5.3 too many\n250 ok\n250 queued",
                Ok(vec![
                    RcptOutcome::Throttled(Throttle::TooManyRecipients, "452 4.5.3 too many".into()),
                    RcptOutcome::Accepted,
                ]),
                false,
            ),
            (
                "5xx to BDAT",
                "250 ok\n250 ok\n551 no\n554 5.7.1 spam",
                Ok(vec![perm("554 5.7.1 spam"), perm("551 no")]),
                true,
            ),
            (
                "4xx to BDAT",
                "250 ok\n250 ok\n250 ok\n451 4.3.0 later",
                Ok(vec![temp("451 4.3.0 later"), temp("451 4.3.0 later")]),
                true,
            ),
            (
                "quota on BDAT",
                "250 ok\n250 ok\n250 ok\n554 5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException",
                Ok(vec![RcptOutcome::Throttled(Throttle::DailyQuota, quota.into()); 2]),
                true,
            ),
            (
                "all recipients refused",
                "250 ok\n550 5.1.1 unknown\n550 5.1.2 bad domain\n554 5.5.1 no valid recipients",
                Ok(vec![perm("550 5.1.1 unknown"), perm("550 5.1.2 bad domain")]),
                true,
            ),
            (
                "MAIL refused 4xx",
                "451 4.3.0 later\n503 5.5.1 no\n503 5.5.1 no\n503 5.5.1 no valid sender",
                Err(false),
                true,
            ),
            (
                "MAIL refused 5xx",
                "550 5.7.1 not you\n503 5.5.1 no\n503 5.5.1 no\n503 5.5.1 no valid sender",
                Err(true),
                true,
            ),
        ];
        for (name, replies, want, rset) in cases {
            let mut script = chunking();
            script.extend([
                C("MAIL"),
                C("RCPT"),
                C("RCPT"),
                C("BDAT 35 LAST"),
                Chunk,
                S(replies),
            ]);
            if rset {
                script.push(C("RSET"));
            }
            script.extend([C("MAIL"), C("RCPT"), C("BDAT 35 LAST"), Chunk]);
            script.push(S(if rset {
                "250 reset\n250 ok\n250 ok\n250 queued"
            } else {
                "250 ok\n250 ok\n250 queued"
            }));
            let srv = serve(script);
            let mut c = Connection::open(&settings(&[srv.port], TlsMode::None), None).unwrap();
            let got = send(&mut c, &["a@y.test", "b@y.test"]).map_err(|e| e.permanent);
            assert_eq!(got, want, "{name}");
            // The session stays usable; RSET goes in the next group only after a refusal.
            c.reset().unwrap();
            assert_eq!(
                send(&mut c, &["a@y.test"]).unwrap(),
                vec![RcptOutcome::Accepted],
                "{name}"
            );
            drop(c);
            let log = srv.log();
            assert!(
                !has(&log, "UNEXPECTED") && !has(&log, "EOF"),
                "{name}: {log:?}"
            );
            assert_eq!(has(&log, "RSET"), rset, "{name}: {log:?}");
        }
    }

    #[test]
    fn bdat_connection_closed_mid_chunk_is_transient() {
        let big =
            b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\r\n".repeat(40_000);
        // Closed in the middle of the chunk, and after it but before any reply.
        for (name, end) in [
            ("mid-chunk", vec![Close]),
            ("before the reply", vec![Chunk, Close]),
        ] {
            let mut script = chunking();
            script.extend([C("MAIL"), C("RCPT"), C("BDAT")]);
            script.extend(end);
            let srv = serve(script);
            let mut c = Connection::open(&settings(&[srv.port], TlsMode::None), None).unwrap();
            let e = c
                .send(
                    "s@x.test",
                    &rcpts(&["a@y.test"]),
                    &mut &big[..],
                    big.len() as u64,
                    false,
                    false,
                )
                .unwrap_err();
            assert_eq!((e.stage, e.permanent), (Stage::Send, false), "{name}: {e}");
            // Out of step: no more commands on this session.
            assert!(c.reset().is_err(), "{name}");
            srv.log();
        }
    }

    #[test]
    fn bdat_message_of_another_size_never_completes_a_chunk() {
        let big =
            b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\r\n".repeat(4_000);
        let n = big.len() as u64;
        // (name, message, size announced): a file that shrank, grew, or is not empty at all.
        let cases: Vec<(&str, &[u8], u64)> = vec![
            ("shorter", &big, n + 10),
            ("longer", &big, n - 10),
            ("longer by one", &big, n - 1),
            ("not empty", MSG, 0),
        ];
        for (name, msg, size) in cases {
            let mut script = chunking();
            script.extend([
                C("MAIL"),
                C("RCPT"),
                C("BDAT"),
                Chunk,
                S("250 ok\n250 ok\n250 queued"),
            ]);
            let srv = serve(script);
            let mut c = Connection::open(&settings(&[srv.port], TlsMode::None), None).unwrap();
            let e = c
                .send(
                    "s@x.test",
                    &rcpts(&["a@y.test"]),
                    &mut &msg[..],
                    size,
                    false,
                    false,
                )
                .unwrap_err();
            assert_eq!((e.stage, e.permanent), (Stage::Send, false), "{name}: {e}");
            assert!(e.message.contains("announced in BDAT"), "{name}: {e}");
            assert!(c.reset().is_err(), "{name}");
            let log = srv.log();
            assert!(!has(&log, "BODY:"), "{name}: {log:?}");
            assert!(has(&log, "EOF"), "{name}: {log:?}");
        }
    }

    #[test]
    fn data_without_chunking_or_without_pipelining() {
        // (EHLO reply, the script from MAIL on)
        let cases: Vec<(&'static str, Vec<Step>)> = vec![
            (
                "250-s\n250-CHUNKING\n250 BINARYMIME",
                vec![
                    C("MAIL"),
                    S("250 ok"),
                    C("RCPT"),
                    S("250 ok"),
                    C("DATA"),
                    S("354 go"),
                ],
            ),
            (
                "250-s\n250-PIPELINING\n250 BINARYMIME",
                vec![C("MAIL"), C("RCPT"), C("DATA"), S("250 ok\n250 ok\n354 go")],
            ),
        ];
        for (ehlo, steps) in cases {
            let mut script = vec![GREET, C("EHLO"), S(ehlo)];
            script.extend(steps);
            script.extend([Data, S("250 queued")]);
            let srv = serve(script);
            let mut c = Connection::open(&settings(&[srv.port], TlsMode::None), None).unwrap();
            assert_eq!(
                send(&mut c, &["a@y.test"]).unwrap(),
                vec![RcptOutcome::Accepted],
                "{ehlo}"
            );
            drop(c);
            let log = srv.log();
            assert!(
                !has(&log, "UNEXPECTED") && !has(&log, "BDAT"),
                "{ehlo}: {log:?}"
            );
            // DATA is dot-stuffed as before.
            assert!(
                has(&log, "BODY:Subject: hi\n\n..leading dot\nbody"),
                "{ehlo}: {log:?}"
            );
        }
    }

    #[test]
    fn ehlo_keywords() {
        let cases: Vec<(&str, Extensions)> = vec![
            ("250-mx\n250-PIPELINING\n250-SIZE 35882577\n250-8BITMIME\n250-STARTTLS\n250-AUTH LOGIN PLAIN XOAUTH2\n250 SMTPUTF8",
                Extensions { starttls: true, auth: vec!["LOGIN".into(), "PLAIN".into(), "XOAUTH2".into()], size: Some(35_882_577), pipelining: true, eight_bit_mime: true, smtputf8: true, ..Extensions::default() }),
            ("250-smtp.gmail.com at your service\n250-CHUNKING\n250-binarymime\n250 PIPELINING",
                Extensions { chunking: true, binarymime: true, pipelining: true, ..Extensions::default() }),
            ("250-mx\n250-auth=login plain\n250-AUTH PLAIN\n250 size",
                Extensions { auth: vec!["LOGIN".into(), "PLAIN".into()], size: Some(0), ..Extensions::default() }),
            ("250-mx greets you\n250-SIZE abc\n250 X-UNKNOWN 1", Extensions { size: Some(0), ..Extensions::default() }),
            ("250 PIPELINING", Extensions::default()),
        ];
        for (text, want) in cases {
            let lines: Vec<String> = text.lines().map(|l| l[4..].to_string()).collect();
            assert_eq!(Extensions::parse(&lines), want, "{text}");
        }
    }

    #[test]
    fn settings_debug_hides_the_password() {
        let s = with_auth(settings(&[25], TlsMode::None));
        let d = format!("{s:?}");
        assert!(!d.contains("sekret") && d.contains("********"), "{d}");
    }
}
