//! A scripted smarthost for the delivery tests: plain TCP on 127.0.0.1:0, optional STARTTLS or
//! implicit TLS (test certificates made with openssl), optional AUTH, a chosen reply for any
//! command, and a record of every connection, command and accepted transaction. With
//! `with_oauth` it also takes AUTH XOAUTH2 / OAUTHBEARER (RFC 7628) bearer tokens, checked by a
//! validator (the scripted IdP's), and refuses them the way Microsoft 365 or Gmail do. With
//! `Limits` it enforces a provider's account limits (connections at once, messages per window,
//! a daily quota, recipients per transaction) with the providers' own reply texts, and counts
//! every refusal, so pacing tests can tell a relay that stays under the limits from one that
//! runs into them.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::certs::certs;
use super::idp::Validator;
use super::wait_for;

/// A self-signed leaf for localhost / 127.0.0.1 (what a LAN relay often has), made once per
/// test process next to the CA material of `certs()`.
pub struct SelfSigned {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// "sha256:aa:bb:..", as `tls_fingerprint` takes it.
    pub fingerprint: String,
}

fn openssl(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// self_signed makes (once) the self-signed certificate.
pub fn self_signed() -> &'static SelfSigned {
    static SELF: OnceLock<SelfSigned> = OnceLock::new();
    SELF.get_or_init(|| {
        let d = certs().dir.clone();
        std::fs::write(
            d.join("self.ext"),
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n",
        )
        .unwrap();
        openssl(&d, &["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", "self.key"]);
        openssl(&d, &["req", "-new", "-key", "self.key", "-subj", "/CN=localhost", "-out", "self.csr"]);
        openssl(&d, &[
            "x509", "-req", "-in", "self.csr", "-signkey", "self.key", "-days", "3650", "-extfile", "self.ext",
            "-out", "self.pem",
        ]);
        let text = openssl(&d, &["x509", "-in", "self.pem", "-noout", "-fingerprint", "-sha256"]);
        let hex = text.trim().rsplit('=').next().unwrap().to_ascii_lowercase();
        SelfSigned { cert: d.join("self.pem"), key: d.join("self.key"), fingerprint: format!("sha256:{hex}") }
    })
}

pub fn server_config(cert: &Path, key: &Path) -> Arc<rustls::ServerConfig> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(key).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap(),
    )
}

/// How the sink behaves.
#[derive(Clone, Default)]
pub struct Opts {
    /// Offer STARTTLS with this certificate.
    pub starttls: Option<Arc<rustls::ServerConfig>>,
    /// Speak TLS from the first byte (port 465 style).
    pub implicit_tls: Option<Arc<rustls::ServerConfig>>,
    /// Offer AUTH PLAIN LOGIN (any credentials accepted unless a rule says otherwise).
    pub auth: bool,
    /// Offer these OAuth SASL mechanisms and check bearer tokens (replaces `auth`'s line).
    pub oauth: Option<OAuthOpts>,
    /// Provider limits (none by default).
    pub limits: Limits,
    /// Offer CHUNKING (RFC 3030) and take BDAT as well as DATA.
    pub chunking: bool,
}

/// Microsoft 365's answer to a connection beyond the account's concurrent connections.
pub const CONCURRENCY_REPLY: &str = "432 4.3.2 Concurrent connections limit exceeded. Visit https://aka.ms/concurrent_sending for more information. [Hostname=BY5PR04MB6423.namprd04.prod.outlook.com]";
/// The answer to a recipient beyond `Limits::max_rcpts` in one transaction.
pub const TOO_MANY_RCPTS_REPLY: &str = "452 4.5.3 Too many recipients";

/// How a message over the rate or the daily quota is refused.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum Throttle {
    /// Microsoft 365: `554 5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException`
    /// (a 5xx that must not bounce).
    #[default]
    Microsoft,
    /// Gmail: `550 5.4.5 Daily user sending limit exceeded`, over three lines.
    GmailDaily,
    /// Gmail: `421 4.7.0 Try again later, closing connection.`, then the connection is closed.
    GmailTryLater,
}

impl Throttle {
    /// reply is the wording, in the sink's reply language ('\n' between lines, `&& DROP`).
    pub fn reply(self) -> &'static str {
        match self {
            Throttle::Microsoft => "554 5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException; Failed to process message due to a permanent exception with message [BeginDiagnosticData]Cannot submit message. 0.35250:0A00C184, 1.36674:0A000000, 1.61250:00000000, 1.45378:02000000, 1.44866:A0050000, 16.55847:10000000[EndDiagnosticData] [Hostname=BY5PR04MB6423.namprd04.prod.outlook.com]",
            Throttle::GmailDaily => "550 5.4.5 Daily user sending limit exceeded. For more information on Gmail\n550 5.4.5 sending limits go to\n550 5.4.5  https://support.google.com/a/answer/166852 x12si1234567pgb.55 - gsmtp",
            Throttle::GmailTryLater => "421 4.7.0 Try again later, closing connection. (MAIL) x12si1234567pgb.55 - gsmtp && DROP",
        }
    }
}

/// Where the rate and the daily quota are enforced.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum At {
    /// MAIL FROM is refused; a MAIL that passes counts as a message.
    #[default]
    Mail,
    /// The final dot is refused (Microsoft's STOREDRV error comes there); an accepted message
    /// counts.
    Dot,
}

/// A provider's account limits. A connection beyond `max_concurrent` is refused with
/// `CONCURRENCY_REPLY` as its greeting: Microsoft 365 sends it in answer to AUTH, but the sink
/// asks for no login in these tests, and the greeting is the same moment in the client's life
/// (the connection is up, no transaction has begun), so the client meets it where it opens
/// connections, not where it sends messages.
#[derive(Clone, Debug, Default)]
pub struct Limits {
    /// Connections open at once (a connection counts from accept until its QUIT or hang-up).
    pub max_concurrent: Option<usize>,
    /// At most N messages in any sliding window of this length.
    pub rate: Option<(usize, Duration)>,
    /// At most N messages in the sink's life (its "day"), until `Sink::set_daily` lifts it.
    pub daily: Option<usize>,
    /// The wording of rate and quota refusals.
    pub throttle: Throttle,
    /// Where rate and quota are enforced.
    pub at: At,
    /// Recipients accepted per transaction; later ones get `TOO_MANY_RCPTS_REPLY`.
    pub max_rcpts: Option<usize>,
    /// How long the final dot waits for its reply (a busy provider), so a backlog needs time.
    pub latency: Option<Duration>,
}

/// How a refused bearer token is answered.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Refusal {
    /// smtp.office365.com: `535 5.7.3 Authentication unsuccessful`, no challenge.
    Microsoft,
    /// smtp.gmail.com: `334 <base64 JSON status 401>`, the client answers with an empty line
    /// (XOAUTH2) or `AQ==` / empty (OAUTHBEARER), then `535-5.7.8`.
    Gmail,
}

/// The OAuth side of the sink.
#[derive(Clone)]
pub struct OAuthOpts {
    /// What follows "AUTH " in the EHLO reply, e.g. "LOGIN XOAUTH2".
    pub mechs: String,
    pub refusal: Refusal,
    pub validator: Validator,
}

/// What Microsoft 365 offers after STARTTLS.
pub const MICROSOFT_MECHS: &str = "LOGIN XOAUTH2";
/// What smtp.gmail.com offers after STARTTLS.
pub const GMAIL_MECHS: &str = "LOGIN PLAIN XOAUTH2 PLAIN-CLIENTTOKEN OAUTHBEARER XOAUTH";

impl Opts {
    pub fn plain() -> Opts {
        Opts::default()
    }
    /// STARTTLS with the CA-signed leaf.
    pub fn starttls() -> Opts {
        let c = certs();
        Opts {
            starttls: Some(server_config(&c.cert, &c.key)),
            ..Opts::default()
        }
    }
    /// STARTTLS with the self-signed leaf.
    pub fn starttls_self_signed() -> Opts {
        let c = self_signed();
        Opts {
            starttls: Some(server_config(&c.cert, &c.key)),
            ..Opts::default()
        }
    }
    /// Implicit TLS with the CA-signed leaf.
    pub fn implicit_tls() -> Opts {
        let c = certs();
        Opts {
            implicit_tls: Some(server_config(&c.cert, &c.key)),
            ..Opts::default()
        }
    }
    pub fn with_auth(mut self) -> Opts {
        self.auth = true;
        self
    }
    /// with_oauth offers `mechs` (the AUTH line; PLAIN/LOGIN in it take any password) and
    /// checks bearer tokens with `validator`, refusing in the `refusal` style.
    pub fn with_oauth(mut self, mechs: &str, refusal: Refusal, validator: Validator) -> Opts {
        self.oauth = Some(OAuthOpts {
            mechs: mechs.to_string(),
            refusal,
            validator,
        });
        self
    }
    /// microsoft: STARTTLS (test CA), then `AUTH LOGIN XOAUTH2`, refusing with 535 5.7.3.
    pub fn microsoft(validator: Validator) -> Opts {
        Opts::starttls().with_oauth(MICROSOFT_MECHS, Refusal::Microsoft, validator)
    }
    /// gmail: STARTTLS (test CA), then Gmail's AUTH line, refusing with the 334 challenge.
    pub fn gmail(validator: Validator) -> Opts {
        Opts::starttls().with_oauth(GMAIL_MECHS, Refusal::Gmail, validator)
    }
    /// max_concurrent refuses connections beyond `n` open at once with `CONCURRENCY_REPLY`.
    pub fn max_concurrent(mut self, n: usize) -> Opts {
        self.limits.max_concurrent = Some(n);
        self
    }
    /// rate refuses messages beyond `n` in any sliding `window`.
    pub fn rate(mut self, n: usize, window: Duration) -> Opts {
        self.limits.rate = Some((n, window));
        self
    }
    /// daily refuses messages beyond `n` until the test lifts the quota (`Sink::set_daily`).
    pub fn daily(mut self, n: usize) -> Opts {
        self.limits.daily = Some(n);
        self
    }
    /// throttle_with words rate and quota refusals as `how`, given at `at`.
    pub fn throttle_with(mut self, how: Throttle, at: At) -> Opts {
        self.limits.throttle = how;
        self.limits.at = at;
        self
    }
    /// max_rcpts answers recipients beyond `n` in one transaction with `452 4.5.3`.
    pub fn max_rcpts(mut self, n: usize) -> Opts {
        self.limits.max_rcpts = Some(n);
        self
    }
    /// latency delays the reply to every final dot by `d`.
    pub fn latency(mut self, d: Duration) -> Opts {
        self.limits.latency = Some(d);
        self
    }
}

/// One AUTH command and how it ended.
#[derive(Clone, Debug)]
pub struct AuthAttempt {
    /// Connection number (1-based).
    pub conn: usize,
    /// The mechanism, upper case.
    pub mech: String,
    /// The user the client named ("" when it could not be decoded).
    pub user: String,
    /// The bearer token (or the password for PLAIN/LOGIN).
    pub token: String,
    pub accepted: bool,
    /// The client's answer to a Gmail-style 334 challenge, when one was sent.
    pub challenge_response: Option<String>,
    /// The base64 payloads the client sent (initial response), to check they are never printed.
    pub payloads: Vec<String>,
    /// Why the payload was malformed, when it was.
    pub malformed: Option<String>,
}

/// One accepted transaction.
#[derive(Clone, Debug)]
pub struct Txn {
    /// Connection number (1-based, in accept order).
    pub conn: usize,
    /// The path inside MAIL FROM:<...> ("" for the null sender).
    pub mail_from: String,
    /// The MAIL FROM line's parameters.
    pub params: String,
    /// Accepted recipients, in order.
    pub rcpts: Vec<String>,
    /// The message, dot-unstuffed, CRLF lines.
    pub data: String,
    /// Received over TLS.
    pub tls: bool,
    /// The AUTH user and password of the connection, when it logged in.
    pub auth: Option<(String, String)>,
    /// When the sink accepted the message (just before its final 250 went out).
    pub at: Instant,
    /// It came with BDAT (RFC 3030), not DATA.
    pub chunked: bool,
}

/// A reply override: the first rule whose prefix starts the command line (case-insensitive)
/// answers it. Special prefixes: "GREETING" (the banner), "DOT" (after the data, or BDAT LAST),
/// "BODY" (after the first line of message data, or 1 KiB into a BDAT chunk: only "DROP" means
/// something there). Special replies:
/// "DROP" closes the connection; "HANG" never answers (reads until the client gives up);
/// "DELAY <ms> <reply>" sleeps, then answers <reply>; "DRIP <ms> <reply>" sends the reply one
/// byte every <ms>; "RAW <bytes>" sends the bytes as they are (no CRLF added); "ENDLESS" sends
/// "250-" continuation lines until the client hangs up. "A && B" does A, then B.
struct Rule {
    prefix: String,
    reply: String,
    times: Option<usize>,
}

#[derive(Default)]
struct State {
    rules: Vec<Rule>,
    txns: Vec<Txn>,
    /// (connection, line) for every command line received (AUTH payloads too).
    commands: Vec<(usize, String)>,
    /// When each connection was accepted.
    accepted: Vec<Instant>,
    /// AUTH commands seen, per connection.
    auth_attempts: Vec<usize>,
    /// Every AUTH exchange, in order.
    auth_log: Vec<AuthAttempt>,
    /// A handle on each connection's socket (to hang up on it) and whether it has ended.
    sockets: Vec<Option<TcpStream>>,
    closed: Vec<bool>,
    /// Connections that said QUIT: over from the provider's point of view.
    quit: Vec<bool>,
    /// Connections refused as beyond `limits.max_concurrent`.
    over_limit: Vec<bool>,
    limits: Limits,
    /// When each message that counts against the rate and the quota was let through.
    admitted: Vec<Instant>,
    /// Messages let through while a daily quota was set.
    daily_used: usize,
    /// Most connections open at once.
    max_concurrent: usize,
    /// Refusals sent: over the rate, over the daily quota, over the concurrent connections.
    throttled: usize,
    quota_refusals: usize,
    concurrency_refusals: usize,
}

impl State {
    /// live counts connections still open from the client's side: not ended, no QUIT, and the
    /// peer has not hung up (a client may close and reconnect before the session thread reads
    /// the end of the old connection).
    fn live(&self) -> usize {
        (0..self.sockets.len())
            .filter(|&i| !self.closed[i] && !self.quit[i])
            .filter(|&i| self.sockets[i].as_ref().is_some_and(|s| !peer_gone(s)))
            .count()
    }

    /// admit decides whether one more message may pass now: None (and it is counted), or the
    /// refusal to send (and the refusal is counted).
    fn admit(&mut self) -> Option<String> {
        let now = Instant::now();
        if self.limits.daily.is_some_and(|n| self.daily_used >= n) {
            self.quota_refusals += 1;
            return Some(self.limits.throttle.reply().to_string());
        }
        if let Some((n, window)) = self.limits.rate {
            let recent = self
                .admitted
                .iter()
                .filter(|t| now.duration_since(**t) < window)
                .count();
            if recent >= n {
                self.throttled += 1;
                return Some(self.limits.throttle.reply().to_string());
            }
        }
        self.admitted.push(now);
        if self.limits.daily.is_some() {
            self.daily_used += 1;
        }
        None
    }
}

/// peer_gone tells whether the client has closed its side (a FIN is in), data pending or not.
fn peer_gone(s: &TcpStream) -> bool {
    use std::os::fd::AsRawFd;
    let mut p = libc::pollfd {
        fd: s.as_raw_fd(),
        events: libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: one valid pollfd, count 1, no wait; the fd stays open while `s` is borrowed.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    n > 0 && p.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0
}

/// The running sink.
pub struct Sink {
    pub port: u16,
    state: Arc<Mutex<State>>,
}

impl Sink {
    pub fn start(opts: Opts) -> Sink {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(State {
            limits: opts.limits.clone(),
            ..State::default()
        }));
        let st = Arc::clone(&state);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let n = {
                    let mut s = st.lock().unwrap();
                    s.accepted.push(Instant::now());
                    s.auth_attempts.push(0);
                    s.sockets.push(stream.try_clone().ok());
                    s.closed.push(false);
                    s.quit.push(false);
                    let live = s.live();
                    s.max_concurrent = s.max_concurrent.max(live);
                    let over = s.limits.max_concurrent.is_some_and(|m| live > m);
                    s.over_limit.push(over);
                    s.concurrency_refusals += usize::from(over);
                    s.accepted.len()
                };
                let (st, opts) = (Arc::clone(&st), opts.clone());
                std::thread::spawn(move || {
                    let _ = Session::run(stream, n, Arc::clone(&st), opts);
                    let mut s = st.lock().unwrap();
                    s.closed[n - 1] = true;
                    s.sockets[n - 1] = None;
                });
            }
        });
        Sink { port, state }
    }

    /// "127.0.0.1:PORT"
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// rule answers commands starting with `prefix` with `reply`, every time.
    pub fn rule(&self, prefix: &str, reply: &str) {
        self.push_rule(prefix, reply, None);
    }

    /// rule_times answers `times` commands, then falls back to the default.
    pub fn rule_times(&self, prefix: &str, reply: &str, times: usize) {
        self.push_rule(prefix, reply, Some(times));
    }

    fn push_rule(&self, prefix: &str, reply: &str, times: Option<usize>) {
        let r = Rule {
            prefix: prefix.to_ascii_uppercase(),
            reply: reply.to_string(),
            times,
        };
        self.state.lock().unwrap().rules.push(r);
    }

    pub fn clear_rules(&self) {
        self.state.lock().unwrap().rules.clear();
    }

    /// set_daily sets (Some) or lifts (None) the daily quota; messages already let through
    /// count against a new quota.
    pub fn set_daily(&self, n: Option<usize>) {
        self.state.lock().unwrap().limits.daily = n;
    }

    /// set_rate sets (Some) or lifts (None) the rate limit.
    pub fn set_rate(&self, rate: Option<(usize, Duration)>) {
        self.state.lock().unwrap().limits.rate = rate;
    }

    /// Most connections that were open at once.
    pub fn max_concurrent(&self) -> usize {
        self.state.lock().unwrap().max_concurrent
    }

    /// Refusals sent because a message was over the rate.
    pub fn throttled(&self) -> usize {
        self.state.lock().unwrap().throttled
    }

    /// Refusals sent because the daily quota was used up.
    pub fn quota_refusals(&self) -> usize {
        self.state.lock().unwrap().quota_refusals
    }

    /// Connections refused with `CONCURRENCY_REPLY`.
    pub fn concurrency_refusals(&self) -> usize {
        self.state.lock().unwrap().concurrency_refusals
    }

    /// When each accepted message was accepted, in the order of `txns()`.
    pub fn arrivals(&self) -> Vec<Instant> {
        self.txns().iter().map(|t| t.at).collect()
    }

    pub fn txns(&self) -> Vec<Txn> {
        self.state.lock().unwrap().txns.clone()
    }

    /// wait_txns waits until at least `n` transactions were accepted and returns them all.
    pub fn wait_txns(&self, n: usize) -> Vec<Txn> {
        wait_for(&format!("{n} transaction(s) at the smarthost"), || {
            self.txns().len() >= n
        });
        self.txns()
    }

    /// Every command line, with its connection number.
    pub fn commands(&self) -> Vec<(usize, String)> {
        self.state.lock().unwrap().commands.clone()
    }

    /// True when any command line starts with `verb` (case-insensitive).
    pub fn saw(&self, verb: &str) -> bool {
        let v = verb.to_ascii_uppercase();
        self.commands()
            .iter()
            .any(|(_, c)| c.to_ascii_uppercase().starts_with(&v))
    }

    pub fn connections(&self) -> usize {
        self.state.lock().unwrap().accepted.len()
    }

    /// When each connection was accepted.
    pub fn accepted_at(&self) -> Vec<Instant> {
        self.state.lock().unwrap().accepted.clone()
    }

    /// AUTH commands per connection (index 0 = connection 1).
    pub fn auth_attempts(&self) -> Vec<usize> {
        self.state.lock().unwrap().auth_attempts.clone()
    }

    /// Every AUTH exchange, in order.
    pub fn auth_log(&self) -> Vec<AuthAttempt> {
        self.state.lock().unwrap().auth_log.clone()
    }

    /// Connections not yet ended.
    pub fn open_connections(&self) -> usize {
        self.state
            .lock()
            .unwrap()
            .closed
            .iter()
            .filter(|c| !**c)
            .count()
    }

    /// hang_up closes every open connection (as a smarthost does with idle clients) and
    /// waits until their sessions have ended, so the next message needs a new connection.
    pub fn hang_up(&self) {
        for s in self.state.lock().unwrap().sockets.iter().flatten() {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
        wait_for("the smarthost's sessions to end", || {
            self.open_connections() == 0
        });
    }
}

/// The socket, plain or TLS.
enum Io {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ServerConnection, TcpStream>>),
    Gone,
}

impl Read for Io {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Io::Plain(s) => s.read(buf),
            Io::Tls(s) => s.read(buf),
            Io::Gone => Ok(0),
        }
    }
}

impl Write for Io {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Io::Plain(s) => s.write(buf),
            Io::Tls(s) => s.write(buf),
            Io::Gone => Err(io::ErrorKind::NotConnected.into()),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Io::Plain(s) => s.flush(),
            Io::Tls(s) => s.flush(),
            Io::Gone => Ok(()),
        }
    }
}

/// Runs the TLS handshake now so a refused certificate ends the session here.
fn accept_tls(tcp: TcpStream, cfg: Arc<rustls::ServerConfig>) -> io::Result<Io> {
    let mut tcp = tcp;
    let mut conn = rustls::ServerConnection::new(cfg).map_err(io::Error::other)?;
    while conn.is_handshaking() {
        let (r, w) = conn.complete_io(&mut tcp)?;
        if r == 0 && w == 0 && conn.is_handshaking() {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
    Ok(Io::Tls(Box::new(rustls::StreamOwned::new(conn, tcp))))
}

struct Session {
    io: Io,
    buf: Vec<u8>,
    n: usize,
    st: Arc<Mutex<State>>,
    opts: Opts,
    auth: Option<(String, String)>,
}

impl Session {
    fn run(tcp: TcpStream, n: usize, st: Arc<Mutex<State>>, opts: Opts) -> io::Result<()> {
        tcp.set_read_timeout(Some(Duration::from_secs(60)))?;
        tcp.set_nodelay(true)?;
        let io = match &opts.implicit_tls {
            Some(cfg) => accept_tls(tcp, Arc::clone(cfg))?,
            None => Io::Plain(tcp),
        };
        let mut s = Session {
            io,
            buf: Vec::new(),
            n,
            st,
            opts,
            auth: None,
        };
        s.serve()
    }

    fn tls(&self) -> bool {
        matches!(self.io, Io::Tls(_))
    }

    /// The reply a rule gives to `line`, if any (counting down limited rules).
    fn rule(&self, line: &str) -> Option<String> {
        let up = line.to_ascii_uppercase();
        let mut st = self.st.lock().unwrap();
        let i = st
            .rules
            .iter()
            .position(|r| up.starts_with(&r.prefix) && r.times != Some(0))?;
        let r = &mut st.rules[i];
        if let Some(t) = r.times.as_mut() {
            *t -= 1;
        }
        Some(r.reply.clone())
    }

    /// end_message answers the end of a message (the final dot, or BDAT LAST; the "DOT"
    /// rules and limits apply to both) and records the transaction when the answer is a 2xx.
    /// None when the connection went away.
    fn end_message(&mut self, txn: &mut Option<Txn>, finish: impl FnOnce(&mut Txn)) -> Option<()> {
        let n = self.st.lock().unwrap().txns.len() + 1;
        let at = Instant::now();
        let ok = format!("250 2.0.0 Ok: queued as S{n}");
        let r = self.answer_limited("DOT", At::Dot, &ok)?;
        if let (true, Some(mut t)) = (r.starts_with('2'), txn.take()) {
            finish(&mut t);
            t.at = at;
            self.st.lock().unwrap().txns.push(t);
        }
        *txn = None;
        Some(())
    }

    /// read_exact_bytes reads `n` bytes of a BDAT chunk (after what is buffered).
    fn read_exact_bytes(&mut self, n: usize) -> Option<Vec<u8>> {
        while self.buf.len() < n {
            let mut chunk = [0u8; 8192];
            match self.io.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(k) => self.buf.extend_from_slice(&chunk[..k]),
            }
        }
        Some(self.buf.drain(..n).collect())
    }

    fn read_line(&mut self) -> Option<String> {
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                let mut line: Vec<u8> = self.buf.drain(..=i).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Some(String::from_utf8_lossy(&line).into_owned());
            }
            let mut chunk = [0u8; 8192];
            match self.io.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(k) => self.buf.extend_from_slice(&chunk[..k]),
            }
        }
    }

    /// send writes a reply ('\n' separates lines of a multi-line reply). Returns false on DROP.
    fn send(&mut self, reply: &str) -> bool {
        if let Some((first, rest)) = reply.split_once(" && ") {
            return self.send(first) && self.send(rest);
        }
        if reply == "DROP" {
            self.io = Io::Gone;
            return false;
        }
        if reply == "HANG" {
            let mut sink = [0u8; 4096];
            while matches!(self.io.read(&mut sink), Ok(n) if n > 0) {}
            self.io = Io::Gone;
            return false;
        }
        if reply == "ENDLESS" {
            for i in 0..1_000_000u32 {
                let line = format!("250-endless line {i}\r\n");
                if self.io.write_all(line.as_bytes()).is_err() {
                    break;
                }
            }
            self.io = Io::Gone;
            return false;
        }
        if let Some(raw) = reply.strip_prefix("RAW ") {
            return self.io.write_all(raw.as_bytes()).is_ok() && self.io.flush().is_ok();
        }
        for (verb, drip) in [("DELAY ", false), ("DRIP ", true)] {
            let Some(rest) = reply.strip_prefix(verb) else {
                continue;
            };
            let (ms, reply) = rest.split_once(' ').expect("DELAY/DRIP <ms> <reply>");
            let ms = Duration::from_millis(ms.parse().expect("milliseconds"));
            if !drip {
                std::thread::sleep(ms);
                return self.send(reply);
            }
            for b in format!("{reply}\r\n").bytes() {
                std::thread::sleep(ms);
                if self.io.write_all(&[b]).is_err() || self.io.flush().is_err() {
                    return false;
                }
            }
            return true;
        }
        let lines: Vec<&str> = reply.split('\n').collect();
        let mut out = String::new();
        for (i, l) in lines.iter().enumerate() {
            let (code, text) = l.split_at(3.min(l.len()));
            let text = text.strip_prefix(' ').unwrap_or(text);
            let sep = if i + 1 == lines.len() { ' ' } else { '-' };
            out.push_str(&format!("{code}{sep}{text}\r\n"));
        }
        self.io.write_all(out.as_bytes()).is_ok() && self.io.flush().is_ok()
    }

    fn answer(&mut self, line: &str, default: &str) -> Option<String> {
        let reply = self.rule(line).unwrap_or_else(|| default.to_string());
        if self.send(&reply) {
            Some(reply)
        } else {
            None
        }
    }

    /// limit_reply is the refusal the limits give a message at `at` (None: it may pass).
    fn limit_reply(&self, at: At) -> Option<String> {
        let mut st = self.st.lock().unwrap();
        if st.limits.at != at || (st.limits.rate.is_none() && st.limits.daily.is_none()) {
            return None;
        }
        st.admit()
    }

    /// answer_limited answers `line` with a rule, else the limits' refusal at `at`, else
    /// `default`; returns the reply sent (None when the connection ended).
    fn answer_limited(&mut self, line: &str, at: At, default: &str) -> Option<String> {
        let reply = match self.rule(line) {
            Some(r) => r,
            None => self.limit_reply(at).unwrap_or_else(|| default.to_string()),
        };
        self.send(&reply).then_some(reply)
    }

    fn serve(&mut self) -> io::Result<()> {
        let over = self.st.lock().unwrap().over_limit[self.n - 1];
        let banner = if over {
            CONCURRENCY_REPLY
        } else {
            "220 sink.test ESMTP scripted"
        };
        let Some(greeting) = self.answer("GREETING", banner) else {
            return Ok(());
        };
        if !greeting.starts_with("220") {
            // A refusing banner: wait for QUIT (or anything) and close.
            let _ = self.read_line();
            self.send("221 2.0.0 bye");
            return Ok(());
        }
        let mut txn: Option<Txn> = None;
        while let Some(line) = self.read_line() {
            self.st
                .lock()
                .unwrap()
                .commands
                .push((self.n, line.clone()));
            let verb = line.split(' ').next().unwrap_or("").to_ascii_uppercase();
            let ok = match verb.as_str() {
                "EHLO" => {
                    let mut ext = vec![
                        "250 sink.test",
                        "PIPELINING",
                        "8BITMIME",
                        "SIZE 10485760",
                        "ENHANCEDSTATUSCODES",
                        "SMTPUTF8",
                    ];
                    if self.opts.starttls.is_some() && !self.tls() {
                        ext.push("STARTTLS");
                    }
                    if self.opts.chunking {
                        ext.push("CHUNKING");
                    }
                    let oauth_line = self
                        .opts
                        .oauth
                        .as_ref()
                        .map(|o| format!("AUTH {}", o.mechs));
                    match &oauth_line {
                        // Like Microsoft 365 and Gmail: AUTH only once the session is private.
                        Some(l) if self.tls() || self.opts.starttls.is_none() => ext.push(l),
                        Some(_) => {}
                        None if self.opts.auth => ext.push("AUTH PLAIN LOGIN"),
                        None => {}
                    }
                    let default = ext
                        .iter()
                        .map(|e| {
                            if e.starts_with("250") {
                                e.to_string()
                            } else {
                                format!("250 {e}")
                            }
                        })
                        .collect::<Vec<_>>()
                        .join("\n");
                    self.answer(&line, &default).is_some()
                }
                "HELO" => self.answer(&line, "250 sink.test").is_some(),
                "STARTTLS" => {
                    let Some(cfg) = self.opts.starttls.clone().filter(|_| !self.tls()) else {
                        self.answer(&line, "502 5.5.1 no STARTTLS here");
                        continue;
                    };
                    let Some(r) = self.answer(&line, "220 2.0.0 go ahead") else {
                        break;
                    };
                    if !r.starts_with("220") {
                        continue;
                    }
                    assert!(self.buf.is_empty(), "client pipelined after STARTTLS");
                    let tcp = match std::mem::replace(&mut self.io, Io::Gone) {
                        Io::Plain(t) => t,
                        _ => break,
                    };
                    match accept_tls(tcp, cfg) {
                        Ok(io) => self.io = io,
                        Err(e) => {
                            self.st
                                .lock()
                                .unwrap()
                                .commands
                                .push((self.n, format!("* TLS handshake failed: {e}")));
                            break;
                        }
                    }
                    txn = None;
                    true
                }
                "AUTH" => {
                    self.st.lock().unwrap().auth_attempts[self.n - 1] += 1;
                    if let Some(r) = self.rule(&line) {
                        self.send(&r)
                    } else if self.opts.oauth.is_some() {
                        self.oauth_exchange(&line)
                    } else {
                        self.auth_exchange(&line)
                    }
                }
                "MAIL" => {
                    let Some(r) = self.answer_limited(&line, At::Mail, "250 2.1.0 sender ok")
                    else {
                        break;
                    };
                    if r.starts_with('2') {
                        let (path, params) = path_of(&line);
                        txn = Some(Txn {
                            conn: self.n,
                            mail_from: path,
                            params,
                            rcpts: Vec::new(),
                            data: String::new(),
                            tls: self.tls(),
                            auth: self.auth.clone(),
                            at: Instant::now(),
                            chunked: false,
                        });
                    }
                    true
                }
                "RCPT" => {
                    let max = self.st.lock().unwrap().limits.max_rcpts;
                    let default = match &txn {
                        Some(t) if max.is_some_and(|m| t.rcpts.len() >= m) => TOO_MANY_RCPTS_REPLY,
                        Some(_) => "250 2.1.5 recipient ok",
                        None => "503 5.5.1 MAIL first",
                    };
                    let Some(r) = self.answer(&line, default) else {
                        break;
                    };
                    if let (true, Some(t)) = (r.starts_with('2'), txn.as_mut()) {
                        t.rcpts.push(path_of(&line).0);
                    }
                    true
                }
                "DATA" => {
                    let ready = txn.as_ref().is_some_and(|t| !t.rcpts.is_empty());
                    let default = if ready {
                        "354 go ahead"
                    } else {
                        "554 5.5.1 no valid recipients"
                    };
                    let Some(r) = self.answer(&line, default) else {
                        break;
                    };
                    if !r.starts_with("354") {
                        continue;
                    }
                    let mut data = String::new();
                    let mut first = true;
                    loop {
                        let Some(l) = self.read_line() else {
                            return Ok(());
                        };
                        if std::mem::take(&mut first)
                            && self.rule("BODY").as_deref() == Some("DROP")
                        {
                            // Close in the middle of the data, with unread input: a reset.
                            self.io = Io::Gone;
                            return Ok(());
                        }
                        if l == "." {
                            break;
                        }
                        data.push_str(l.strip_prefix('.').unwrap_or(&l));
                        data.push_str("\r\n");
                    }
                    let latency = self.st.lock().unwrap().limits.latency;
                    if let Some(d) = latency {
                        std::thread::sleep(d);
                    }
                    if self.end_message(&mut txn, |t| t.data = data).is_none() {
                        break;
                    }
                    true
                }
                // RFC 3030: BDAT SIZE [LAST]; the chunk's bytes follow the line as they are
                // (never dot-stuffed).
                "BDAT" if self.opts.chunking => {
                    let mut words = line.split_ascii_whitespace().skip(1);
                    let size: usize = words.next().and_then(|n| n.parse().ok()).unwrap_or(0);
                    let last = words.next().is_some_and(|w| w.eq_ignore_ascii_case("LAST"));
                    if self.rule("BODY").as_deref() == Some("DROP") {
                        // Close in the middle of the chunk, with unread input: a reset.
                        let _ = self.read_exact_bytes(size.min(1024));
                        self.io = Io::Gone;
                        return Ok(());
                    }
                    let Some(bytes) = self.read_exact_bytes(size) else {
                        return Ok(());
                    };
                    let ready = txn.as_ref().is_some_and(|t| !t.rcpts.is_empty());
                    if let Some(t) = txn.as_mut() {
                        t.data.push_str(&String::from_utf8_lossy(&bytes));
                    }
                    if !ready {
                        self.answer(&line, "503 5.5.1 no valid recipients")
                            .is_some()
                    } else if !last {
                        self.answer(&line, "250 2.0.0 chunk ok").is_some()
                    } else {
                        if self.end_message(&mut txn, |t| t.chunked = true).is_none() {
                            break;
                        }
                        true
                    }
                }
                "RSET" => {
                    txn = None;
                    self.answer(&line, "250 2.0.0 ok").is_some()
                }
                "NOOP" => self.answer(&line, "250 2.0.0 ok").is_some(),
                "QUIT" => {
                    // Over before the 221 goes out: the client may connect again at once.
                    self.st.lock().unwrap().quit[self.n - 1] = true;
                    self.answer(&line, "221 2.0.0 bye");
                    break;
                }
                _ => self.answer(&line, "502 5.5.2 unknown command").is_some(),
            };
            if !ok {
                break;
            }
        }
        Ok(())
    }

    /// AUTH PLAIN (with or without an initial response) and AUTH LOGIN; any credentials pass.
    fn auth_exchange(&mut self, line: &str) -> bool {
        let words: Vec<&str> = line.split_whitespace().collect();
        let mech = words
            .get(1)
            .map(|m| m.to_ascii_uppercase())
            .unwrap_or_default();
        let creds = match mech.as_str() {
            "PLAIN" => {
                let token = match words.get(2) {
                    Some(t) => t.to_string(),
                    None => {
                        self.send("334 ");
                        let Some(t) = self.read_line() else {
                            return false;
                        };
                        t
                    }
                };
                let raw = b64decode(&token).unwrap_or_default();
                let parts: Vec<&[u8]> = raw.split(|&b| b == 0).collect();
                (parts.len() == 3).then(|| {
                    (
                        String::from_utf8_lossy(parts[1]).into_owned(),
                        String::from_utf8_lossy(parts[2]).into_owned(),
                    )
                })
            }
            "LOGIN" => {
                self.send("334 VXNlcm5hbWU6");
                let Some(u) = self.read_line() else {
                    return false;
                };
                self.send("334 UGFzc3dvcmQ6");
                let Some(p) = self.read_line() else {
                    return false;
                };
                let d = |s: &str| {
                    String::from_utf8_lossy(&b64decode(s).unwrap_or_default()).into_owned()
                };
                Some((d(&u), d(&p)))
            }
            _ => None,
        };
        match creds {
            Some(c) => {
                self.auth = Some(c);
                self.send("235 2.7.0 authenticated")
            }
            None => self.send("501 5.5.4 bad AUTH"),
        }
    }
}

impl Session {
    /// oauth_exchange answers AUTH when the sink speaks OAuth: the offered mechanisms only;
    /// XOAUTH2 and OAUTHBEARER checked by the validator; PLAIN/LOGIN take any password.
    fn oauth_exchange(&mut self, line: &str) -> bool {
        let o = self.opts.oauth.clone().expect("oauth opts");
        let words: Vec<&str> = line.split_whitespace().collect();
        let mech = words
            .get(1)
            .map(|m| m.to_ascii_uppercase())
            .unwrap_or_default();
        let offered = o
            .mechs
            .split_whitespace()
            .any(|m| m.eq_ignore_ascii_case(&mech));
        let mut attempt = AuthAttempt {
            conn: self.n,
            mech: mech.clone(),
            user: String::new(),
            token: String::new(),
            accepted: false,
            challenge_response: None,
            payloads: Vec::new(),
            malformed: None,
        };
        if !offered {
            attempt.malformed = Some(format!("{mech} not offered"));
            self.st.lock().unwrap().auth_log.push(attempt);
            return self.send("504 5.7.4 Unrecognized authentication type");
        }
        if mech == "PLAIN" || mech == "LOGIN" {
            let ok = self.auth_exchange(line);
            if let Some((u, p)) = self.auth.clone() {
                attempt.user = u;
                attempt.token = p;
                attempt.accepted = true;
            }
            self.st.lock().unwrap().auth_log.push(attempt);
            return ok;
        }
        if mech != "XOAUTH2" && mech != "OAUTHBEARER" {
            self.st.lock().unwrap().auth_log.push(attempt);
            return self.send("504 5.7.4 Unrecognized authentication type");
        }
        let payload = match words.get(2) {
            Some(p) => p.to_string(),
            None => {
                if !self.send("334 ") {
                    return false;
                }
                let Some(p) = self.read_line() else {
                    return false;
                };
                p
            }
        };
        attempt.payloads.push(payload.clone());
        let parsed = b64decode(&payload)
            .ok_or_else(|| "not base64".to_string())
            .and_then(|raw| {
                if mech == "XOAUTH2" {
                    parse_xoauth2(&raw)
                } else {
                    parse_oauthbearer(&raw)
                }
            });
        let good = match parsed {
            Ok((user, token)) => {
                let good = (o.validator)(&user, &token);
                attempt.user = user;
                attempt.token = token;
                good
            }
            Err(why) => {
                attempt.malformed = Some(why);
                false
            }
        };
        if good {
            attempt.accepted = true;
            self.auth = Some((attempt.user.clone(), attempt.token.clone()));
            self.st.lock().unwrap().auth_log.push(attempt);
            return self.send("235 2.7.0 Authentication successful");
        }
        // The attempt is on record before the final reply, so a client that has read the
        // reply sees it counted.
        if o.refusal == Refusal::Microsoft {
            self.st.lock().unwrap().auth_log.push(attempt);
            return self.send(
                "535 5.7.3 Authentication unsuccessful [SN4PR0201CA0046.namprd02.prod.outlook.com]",
            );
        }
        let json = r#"{"status":"401","schemes":"bearer","scope":"https://mail.google.com/"}"#;
        if !self.send(&format!("334 {}", super::b64(json.as_bytes()))) {
            return false;
        }
        attempt.challenge_response = self.read_line();
        let gone = attempt.challenge_response.is_none();
        self.st.lock().unwrap().auth_log.push(attempt);
        !gone
            && self.send(
                "535 5.7.8 Username and Password not accepted. For more information, go to\n535 5.7.8  https://support.google.com/mail/?p=BadCredentials x1-20020a.12 - gsmtp",
            )
    }
}

/// parse_xoauth2 reads `user=U\x01auth=Bearer T\x01\x01` into (U, T).
pub fn parse_xoauth2(raw: &[u8]) -> Result<(String, String), String> {
    let s = std::str::from_utf8(raw).map_err(|_| "not UTF-8".to_string())?;
    let body = s
        .strip_suffix("\x01\x01")
        .ok_or_else(|| format!("XOAUTH2 payload does not end with ^A^A: {s:?}"))?;
    let mut parts = body.split('\x01');
    let user = parts
        .next()
        .and_then(|p| p.strip_prefix("user="))
        .ok_or_else(|| format!("XOAUTH2: no user= first: {s:?}"))?;
    let token = parts
        .next()
        .and_then(|p| p.strip_prefix("auth=Bearer "))
        .ok_or_else(|| format!("XOAUTH2: no auth=Bearer second: {s:?}"))?;
    if parts.next().is_some() {
        return Err(format!("XOAUTH2: extra fields: {s:?}"));
    }
    Ok((user.to_string(), token.to_string()))
}

/// parse_oauthbearer reads RFC 7628 `n,a=U,\x01[host=H\x01][port=P\x01]auth=Bearer T\x01\x01`.
pub fn parse_oauthbearer(raw: &[u8]) -> Result<(String, String), String> {
    let s = std::str::from_utf8(raw).map_err(|_| "not UTF-8".to_string())?;
    let (gs2, rest) = s
        .split_once('\x01')
        .ok_or_else(|| format!("OAUTHBEARER: no ^A after the GS2 header: {s:?}"))?;
    // gs2-header = gs2-cbind-flag "," [ authzid ] "," (RFC 5801 §4); OAUTHBEARER uses "n".
    let g: Vec<&str> = gs2.split(',').collect();
    if g.len() != 3 || g[0] != "n" || !g[2].is_empty() {
        return Err(format!("OAUTHBEARER: bad GS2 header {gs2:?}"));
    }
    let user = g[1]
        .strip_prefix("a=")
        .ok_or_else(|| format!("OAUTHBEARER: no a=user in {gs2:?}"))?
        .replace("=2C", ",")
        .replace("=3D", "=");
    let body = rest
        .strip_suffix("\x01\x01")
        .ok_or_else(|| format!("OAUTHBEARER payload does not end with ^A^A: {s:?}"))?;
    let mut token = None;
    for kv in body.split('\x01') {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| format!("OAUTHBEARER: bad kvpair {kv:?}"))?;
        match k {
            "auth" => {
                token = Some(
                    v.strip_prefix("Bearer ")
                        .ok_or_else(|| format!("OAUTHBEARER: auth is not Bearer: {v:?}"))?
                        .to_string(),
                )
            }
            "host" | "port" => {}
            _ => return Err(format!("OAUTHBEARER: unknown key {k:?}")),
        }
    }
    let token = token.ok_or_else(|| format!("OAUTHBEARER: no auth= in {s:?}"))?;
    Ok((user, token))
}

/// path_of splits "MAIL FROM:<a@b> SIZE=1" into ("a@b", "SIZE=1").
fn path_of(line: &str) -> (String, String) {
    let start = line.find('<').map(|i| i + 1).unwrap_or(line.len());
    let end = line[start..]
        .find('>')
        .map(|i| start + i)
        .unwrap_or(line.len());
    (
        line[start..end].to_string(),
        line.get(end + 1..).unwrap_or("").trim().to_string(),
    )
}

/// b64decode is a strict-enough RFC 4648 decoder for AUTH payloads.
pub fn b64decode(s: &str) -> Option<Vec<u8>> {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let s = s.trim().trim_end_matches('=');
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes() {
        let v = A.iter().position(|&a| a == c)? as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}
