//! The SMTP server state machine: one command line in, one action out; no sockets.
//!
//! The server (src/server.rs) owns the I/O: it splits input into lines, feeds them
//! to [`Session::line`], writes the replies, and performs what an [`Action`] asks
//! (TLS handshake, reading DATA into the spool). Everything a client can do wrong
//! is answered here, so it can be tested with plain byte strings.

use crate::base64;
use crate::config::AuthMode;
use crate::smtp::address::Mailbox;
use crate::smtp::command::{self, Body, Command, MailParams};
use crate::smtp::reply::{self, Reply};

/// After this many erroneous commands the session is closed (a confused or
/// hostile client should not hold a worker forever).
pub const MAX_ERRORS: u32 = 10;

/// Failed AUTH attempts allowed in one session before `421 4.7.0` (issue: brute-force brake).
pub const MAX_AUTH_FAILURES: u32 = 3;

/// Policy is what the server knows about this connection before the first byte.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Our name, for the banner, EHLO and Received.
    pub hostname: String,
    /// Prefix for log lines, e.g. "session 7f3a from 192.0.2.7".
    pub tag: String,
    pub max_message_size: u64,
    pub max_recipients: usize,
    /// The peer is in `relay_networks`.
    pub relay_allowed: bool,
    /// The peer is 127.0.0.1 or ::1 exactly.
    pub local_client: bool,
    /// A certificate is configured and this connection is not TLS yet.
    pub starttls_available: bool,
    /// The connection came in on an implicit-TLS listener.
    pub implicit_tls: bool,
    pub auth: AuthMode,
    /// There is at least one user to authenticate against.
    pub have_users: bool,
    pub require_tls: bool,
}

/// Authenticator checks a user name and password (SHA-crypt from `[users]`).
pub trait Authenticator {
    /// verify is true when `password` is right for `user`.
    fn verify(&self, user: &str, password: &[u8]) -> bool;
}

/// Action is what the server must do after a line.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Send the reply (buffered; flushed when the client's input is drained).
    Reply(Reply),
    /// Send the reply, flush and close the connection.
    Close(Reply),
    /// Send the reply, drop every byte already buffered, run the TLS handshake,
    /// then call [`Session::tls_started`].
    StartTls(Reply),
    /// Send the 354 reply, read the message with the DATA reader into the spool,
    /// then call [`Session::data_finished`].
    Data(Reply),
}

/// Transaction is one MAIL … RCPT … in progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction {
    /// The envelope sender, "" for `<>`.
    pub sender: String,
    pub params: MailParams,
    pub recipients: Vec<String>,
}

/// How the DATA phase ended, as the server saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataOutcome {
    /// Durably committed to the spool under this id.
    Queued(String),
    /// More than `max_message_size` octets (RFC 1870 §6.2: 552 after reading to the end).
    TooBig,
    /// Too many Received headers: a mail loop (RFC 5321 §6.3).
    Loop,
    /// The spool refused or failed: 452 4.3.1, the client will retry.
    StorageFailed,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Connected, no HELO/EHLO yet (also right after STARTTLS, RFC 3207 §4.2).
    Fresh,
    /// Greeted; MAIL may follow.
    Ready,
    /// AUTH PLAIN sent 334, waiting for the response line.
    AuthPlain,
    /// AUTH LOGIN waiting for the user name.
    AuthLoginUser,
    /// AUTH LOGIN waiting for the password of this user.
    AuthLoginPass(String),
}

/// Session is the protocol state of one connection.
pub struct Session<'a> {
    policy: Policy,
    auth: &'a dyn Authenticator,
    state: State,
    txn: Option<Transaction>,
    helo: Option<String>,
    esmtp: bool,
    tls: bool,
    user: Option<String>,
    errors: u32,
    auth_failures: u32,
}

impl<'a> Session<'a> {
    /// Session::new starts a session; the connection is TLS already when
    /// the policy says it came in on an implicit-TLS listener.
    pub fn new(policy: Policy, auth: &'a dyn Authenticator) -> Session<'a> {
        let tls = policy.implicit_tls;
        Session {
            policy,
            auth,
            state: State::Fresh,
            txn: None,
            helo: None,
            esmtp: false,
            tls,
            user: None,
            errors: 0,
            auth_failures: 0,
        }
    }

    /// greeting is the 220 banner.
    pub fn greeting(&self) -> Reply {
        reply::greeting(&self.policy.hostname)
    }

    /// The name the client gave in HELO/EHLO.
    pub fn helo(&self) -> &str {
        self.helo.as_deref().unwrap_or("")
    }

    /// The authenticated user, if any.
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    /// Whether the connection is encrypted (the fuzz target checks it).
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// The transaction whose DATA is being read.
    pub fn transaction(&self) -> Option<&Transaction> {
        self.txn.as_ref()
    }

    /// Whether the next line is a SASL response (AUTH PLAIN/LOGIN continuation),
    /// not a command: the server must not log any part of it.
    pub fn awaiting_auth_response(&self) -> bool {
        self.in_auth()
    }

    /// Failed AUTH attempts so far, for the per-address brake.
    pub fn auth_failures(&self) -> u32 {
        self.auth_failures
    }

    /// protocol is the WITH value of the Received header (RFC 3848).
    pub fn protocol(&self) -> &'static str {
        match (self.esmtp, self.tls, self.user.is_some()) {
            (false, false, _) => "SMTP",
            (false, true, _) => "SMTPS",
            (true, false, false) => "ESMTP",
            (true, true, false) => "ESMTPS",
            (true, false, true) => "ESMTPA",
            (true, true, true) => "ESMTPSA",
        }
    }

    /// line handles one input line (without its terminator).
    pub fn line(&mut self, line: &[u8]) -> Action {
        match std::mem::replace(&mut self.state, State::Ready) {
            State::AuthPlain => return self.auth_plain_response(line),
            State::AuthLoginUser => return self.auth_login_user(line),
            State::AuthLoginPass(user) => return self.auth_login_pass(&user, line),
            other => self.state = other,
        }
        match command::parse(line) {
            Ok(cmd) => self.command(cmd),
            Err(e) => self.error(e.reply()),
        }
    }

    /// line_too_long answers a line over the RFC 5321 §4.5.3.1.4 limit; the server
    /// has discarded it up to its end.
    pub fn line_too_long(&mut self) -> Action {
        if self.in_auth() {
            self.state = State::Ready;
        }
        self.error(reply::line_too_long())
    }

    /// tls_started resets the session after a STARTTLS handshake (RFC 3207 §4.2):
    /// the client must say EHLO again and nothing learned before counts.
    pub fn tls_started(&mut self) {
        self.tls = true;
        self.state = State::Fresh;
        self.txn = None;
        self.helo = None;
        self.esmtp = false;
        self.user = None;
    }

    /// data_finished ends the DATA phase with the reply for the outcome; the
    /// transaction is over either way.
    pub fn data_finished(&mut self, outcome: DataOutcome) -> Reply {
        self.txn = None;
        match outcome {
            DataOutcome::Queued(id) => reply::queued(&id),
            DataOutcome::TooBig => reply::size_exceeded(),
            DataOutcome::Loop => reply::loop_detected(),
            DataOutcome::StorageFailed => reply::storage_error(),
        }
    }

    fn in_auth(&self) -> bool {
        matches!(
            self.state,
            State::AuthPlain | State::AuthLoginUser | State::AuthLoginPass(_)
        )
    }

    /// error counts a client error and closes the session past MAX_ERRORS.
    fn error(&mut self, r: Reply) -> Action {
        self.errors += 1;
        if self.errors >= MAX_ERRORS {
            return Action::Close(reply::too_many_errors());
        }
        Action::Reply(r)
    }

    fn command(&mut self, cmd: Command) -> Action {
        match cmd {
            Command::Ehlo(name) => self.ehlo(name, true),
            Command::Helo(name) => self.ehlo(name, false),
            Command::Mail { from, params } => self.mail(from, params),
            Command::Rcpt { to } => self.rcpt(to),
            Command::Data => self.data(),
            Command::Rset => {
                self.txn = None;
                Action::Reply(reply::ok("Ok"))
            }
            Command::Noop => Action::Reply(reply::ok("Ok")),
            Command::Quit => Action::Close(reply::closing(&self.policy.hostname)),
            Command::Vrfy(_) => Action::Reply(reply::vrfy()),
            Command::Expn(_) => self.error(reply::expn_disabled()),
            Command::Help => Action::Reply(reply::help()),
            Command::StartTls => self.starttls(),
            Command::Auth { mechanism, initial } => self.auth(&mechanism, initial),
            Command::Http => Action::Close(reply::http_refused()),
        }
    }

    fn ehlo(&mut self, name: String, esmtp: bool) -> Action {
        if name.is_empty() {
            return self.error(reply::syntax(
                "5.5.4",
                "a domain or address literal is required",
            ));
        }
        // RFC 5321 §4.1.4: EHLO/HELO ends any transaction in progress.
        self.txn = None;
        self.state = State::Ready;
        self.esmtp = esmtp;
        self.helo = Some(name.clone());
        if !esmtp {
            return Action::Reply(reply::helo(&self.policy.hostname));
        }
        let mut lines = vec![
            "PIPELINING".to_string(),
            format!("SIZE {}", self.policy.max_message_size),
            "8BITMIME".to_string(),
            "ENHANCEDSTATUSCODES".to_string(),
            "SMTPUTF8".to_string(),
        ];
        if self.policy.starttls_available && !self.tls {
            lines.push("STARTTLS".to_string());
        }
        if self.auth_offered() {
            lines.push("AUTH PLAIN LOGIN".to_string());
        }
        lines.push("HELP".to_string());
        Action::Reply(reply::ehlo(
            &format!("{} Hello {}", self.policy.hostname, name),
            &lines,
        ))
    }

    /// AUTH is offered only where it may be used: over TLS, or to a local client
    /// (RFC 4954 §4: no plaintext passwords over the network).
    fn auth_offered(&self) -> bool {
        self.policy.auth != AuthMode::Off
            && self.policy.have_users
            && (self.tls || self.policy.local_client)
            && self.user.is_none()
    }

    fn mail(&mut self, from: Option<Mailbox>, params: MailParams) -> Action {
        if self.state == State::Fresh {
            return self.error(reply::need_helo());
        }
        if self.txn.is_some() {
            return self.error(reply::nested_mail());
        }
        if !self.esmtp && params != MailParams::default() {
            // Parameters are ESMTP extensions (RFC 5321 §4.1.1.11); HELO clients get none.
            return self.error(reply::param_unrecognized());
        }
        if self.policy.require_tls && !self.tls && !self.policy.local_client {
            return self.error(reply::tls_required());
        }
        if self.policy.auth == AuthMode::Required && self.user.is_none() {
            return self.error(reply::auth_required());
        }
        // RFC 1870 §6.1: refuse a declared size over the limit at MAIL.
        if params
            .size
            .is_some_and(|s| s > self.policy.max_message_size)
        {
            return Action::Reply(reply::size_exceeded());
        }
        // RFC 6531 3.4: a non-ASCII address needs the SMTPUTF8 parameter.
        if from.as_ref().is_some_and(|m| !m.is_ascii()) && !params.smtputf8 {
            return self.error(reply::utf8_not_permitted());
        }
        let sender = from.map(|m| m.to_string()).unwrap_or_default();
        self.txn = Some(Transaction {
            sender,
            params,
            recipients: Vec::new(),
        });
        Action::Reply(reply::sender_ok())
    }

    fn rcpt(&mut self, to: Mailbox) -> Action {
        let relay_ok = self.policy.relay_allowed || self.user.is_some();
        let max = self.policy.max_recipients;
        let Some(txn) = self.txn.as_mut() else {
            return self.error(reply::need_mail());
        };
        // RFC 5321 §4.5.3.1.8: past our limit, 452 4.5.3 and the client sends the rest later.
        if txn.recipients.len() >= max {
            return Action::Reply(reply::too_many_recipients());
        }
        if !to.is_ascii() && !txn.params.smtputf8 {
            return Action::Reply(reply::utf8_not_permitted());
        }
        if !relay_ok {
            return Action::Reply(reply::relay_denied());
        }
        txn.recipients.push(to.to_string());
        Action::Reply(reply::recipient_ok())
    }

    fn data(&mut self) -> Action {
        match &self.txn {
            None => self.error(reply::need_mail()),
            Some(t) if t.recipients.is_empty() => self.error(reply::need_rcpt()),
            Some(_) => Action::Data(reply::start_data()),
        }
    }

    fn starttls(&mut self) -> Action {
        if self.tls {
            return self.error(reply::tls_already_active());
        }
        if !self.policy.starttls_available {
            return self.error(reply::not_implemented());
        }
        Action::StartTls(reply::ready_to_start_tls())
    }

    fn auth(&mut self, mechanism: &str, initial: Option<String>) -> Action {
        if self.policy.auth == AuthMode::Off || !self.policy.have_users {
            return self.error(reply::auth_not_available());
        }
        if self.state == State::Fresh || !self.esmtp {
            return self.error(reply::need_helo());
        }
        if self.user.is_some() {
            return self.error(reply::auth_not_allowed_now());
        }
        if self.txn.is_some() {
            return self.error(reply::auth_not_allowed_now());
        }
        // RFC 4954 §4: 538 when the mechanism needs encryption we do not have.
        if !self.tls && !self.policy.local_client {
            return self.error(reply::auth_encryption_required());
        }
        match (mechanism, initial) {
            ("PLAIN", Some(resp)) => self.auth_plain_response(resp.as_bytes()),
            ("PLAIN", None) => {
                self.state = State::AuthPlain;
                Action::Reply(reply::auth_challenge(""))
            }
            ("LOGIN", Some(resp)) => self.auth_login_user(resp.as_bytes()),
            ("LOGIN", None) => {
                self.state = State::AuthLoginUser;
                Action::Reply(reply::auth_challenge(base64::encode(b"Username:")))
            }
            _ => self.error(reply::auth_mechanism_unsupported()),
        }
    }

    /// decode_sasl decodes one client SASL line; `*` cancels (RFC 4954 §4).
    fn decode_sasl(line: &[u8]) -> Result<Vec<u8>, Reply> {
        let text = std::str::from_utf8(line).map_err(|_| reply::auth_bad_base64())?;
        if text == "*" {
            return Err(reply::auth_cancelled());
        }
        if text == "=" {
            return Ok(Vec::new());
        }
        base64::decode(text).ok_or_else(reply::auth_bad_base64)
    }

    fn auth_plain_response(&mut self, line: &[u8]) -> Action {
        let raw = match Self::decode_sasl(line) {
            Ok(raw) => raw,
            Err(r) => return self.error(r),
        };
        // RFC 4616: [authzid] NUL authcid NUL passwd
        let mut parts = raw.split(|&b| b == 0);
        let (Some(authzid), Some(user), Some(pass), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return self.error(reply::auth_bad_base64());
        };
        let Ok(user) = std::str::from_utf8(user) else {
            return self.auth_failed("(invalid)");
        };
        if !authzid.is_empty() && authzid != user.as_bytes() {
            // Acting as another user is not something we offer.
            return self.auth_failed(user);
        }
        self.check_credentials(user.to_string(), pass)
    }

    fn auth_login_user(&mut self, line: &[u8]) -> Action {
        match Self::decode_sasl(line) {
            Ok(raw) => match String::from_utf8(raw) {
                Ok(user) => {
                    self.state = State::AuthLoginPass(user);
                    Action::Reply(reply::auth_challenge(base64::encode(b"Password:")))
                }
                Err(_) => self.error(reply::auth_bad_base64()),
            },
            Err(r) => self.error(r),
        }
    }

    fn auth_login_pass(&mut self, user: &str, line: &[u8]) -> Action {
        match Self::decode_sasl(line) {
            Ok(pass) => self.check_credentials(user.to_string(), &pass),
            Err(r) => self.error(r),
        }
    }

    fn check_credentials(&mut self, user: String, pass: &[u8]) -> Action {
        if self.auth.verify(&user, pass) {
            log::info!("{}: authenticated as {}", self.policy.tag, printable(&user));
            self.user = Some(user);
            return Action::Reply(reply::auth_succeeded());
        }
        self.auth_failed(&user)
    }

    fn auth_failed(&mut self, user: &str) -> Action {
        self.auth_failures += 1;
        log::warn!(
            "{}: authentication failed for {}",
            self.policy.tag,
            printable(user)
        );
        if self.auth_failures >= MAX_AUTH_FAILURES {
            return Action::Close(reply::too_many_auth_failures());
        }
        Action::Reply(reply::auth_failed())
    }
}

/// printable makes a client-supplied string safe for one log line.
pub fn printable(s: &str) -> String {
    s.chars()
        .take(100)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// needs_8bit tells whether the transaction declared 8-bit content.
pub fn declared_8bit(params: &MailParams) -> bool {
    params.body == Some(Body::EightBitMime)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Users;
    impl Authenticator for Users {
        fn verify(&self, user: &str, password: &[u8]) -> bool {
            user == "alice" && password == "pa:ss wörd".as_bytes()
        }
    }

    fn policy() -> Policy {
        Policy {
            hostname: "relay.test".into(),
            tag: "session t".into(),
            max_message_size: 1000,
            max_recipients: 2,
            relay_allowed: true,
            local_client: false,
            starttls_available: true,
            implicit_tls: false,
            auth: AuthMode::Optional,
            have_users: true,
            require_tls: false,
        }
    }

    /// run feeds lines and returns "code status" of each reply (or "close"/"tls"/"data" prefixes).
    fn run(p: Policy, lines: &[&str]) -> Vec<String> {
        let users = Users;
        let mut s = Session::new(p, &users);
        lines
            .iter()
            .map(|l| {
                if *l == "<TLS>" {
                    s.tls_started();
                    return "tls-done".to_string();
                }
                if *l == "<QUEUED>" {
                    let r = s.data_finished(DataOutcome::Queued("ID1".into()));
                    return format!("{} {}", r.code, r.status);
                }
                match s.line(l.as_bytes()) {
                    Action::Reply(r) => format!("{} {}", r.code, r.status),
                    Action::Close(r) => format!("close {} {}", r.code, r.status),
                    Action::StartTls(r) => format!("starttls {}", r.code),
                    Action::Data(r) => format!("data {}", r.code),
                }
            })
            .collect()
    }

    fn plain_b64(s: &str) -> String {
        base64::encode(s.as_bytes())
    }

    #[test]
    fn sequences() {
        let cases: Vec<(&str, Policy, Vec<&str>, Vec<&str>)> = vec![
            (
                "whole transaction",
                policy(),
                vec![
                    "EHLO c",
                    "MAIL FROM:<a@b>",
                    "RCPT TO:<c@d>",
                    "DATA",
                    "<QUEUED>",
                    "QUIT",
                ],
                vec![
                    "250 ",
                    "250 2.1.0",
                    "250 2.1.5",
                    "data 354",
                    "250 2.0.0",
                    "close 221 2.0.0",
                ],
            ),
            (
                "mail before helo",
                policy(),
                vec!["MAIL FROM:<a@b>"],
                vec!["503 5.5.1"],
            ),
            (
                "rcpt before mail, data before rcpt",
                policy(),
                vec!["HELO c", "RCPT TO:<c@d>", "MAIL FROM:<>", "DATA"],
                vec!["250 ", "503 5.5.1", "250 2.1.0", "503 5.5.1"],
            ),
            (
                "nested mail and rset",
                policy(),
                vec![
                    "EHLO c",
                    "MAIL FROM:<a@b>",
                    "MAIL FROM:<a@b>",
                    "RSET",
                    "MAIL FROM:<a@b>",
                ],
                vec!["250 ", "250 2.1.0", "503 5.5.1", "250 2.0.0", "250 2.1.0"],
            ),
            (
                "too many recipients",
                policy(),
                vec![
                    "EHLO c",
                    "MAIL FROM:<a@b>",
                    "RCPT TO:<1@d>",
                    "RCPT TO:<2@d>",
                    "RCPT TO:<3@d>",
                ],
                vec!["250 ", "250 2.1.0", "250 2.1.5", "250 2.1.5", "452 4.5.3"],
            ),
            (
                "size at mail",
                policy(),
                vec![
                    "EHLO c",
                    "MAIL FROM:<a@b> SIZE=1001",
                    "MAIL FROM:<a@b> SIZE=1000",
                ],
                vec!["250 ", "552 5.3.4", "250 2.1.0"],
            ),
            (
                "params after HELO are refused",
                policy(),
                vec!["HELO c", "MAIL FROM:<a@b> SIZE=10"],
                vec!["250 ", "555 5.5.4"],
            ),
            (
                "relay denied",
                Policy {
                    relay_allowed: false,
                    ..policy()
                },
                vec!["EHLO c", "MAIL FROM:<a@b>", "RCPT TO:<c@d>", "DATA"],
                vec!["250 ", "250 2.1.0", "550 5.7.1", "503 5.5.1"],
            ),
            (
                "SMTPUTF8 addresses need the parameter",
                policy(),
                vec![
                    "EHLO c",
                    "MAIL FROM:<jörg@b.test>",
                    "MAIL FROM:<jörg@b.test> SMTPUTF8",
                    "RCPT TO:<ü@d.test>",
                ],
                vec!["250 ", "553 5.6.7", "250 2.1.0", "250 2.1.5"],
            ),
            (
                "non-ASCII recipient without SMTPUTF8",
                policy(),
                vec!["EHLO c", "MAIL FROM:<a@b.test>", "RCPT TO:<ü@d.test>"],
                vec!["250 ", "250 2.1.0", "553 5.6.7"],
            ),
            (
                "vrfy help noop",
                policy(),
                vec!["VRFY x", "HELP", "NOOP"],
                vec!["252 2.5.0", "214 2.0.0", "250 2.0.0"],
            ),
            (
                "http",
                policy(),
                vec!["GET / HTTP/1.1"],
                vec!["close 554 5.7.0"],
            ),
            (
                "starttls resets and cannot repeat",
                policy(),
                vec![
                    "EHLO c",
                    "MAIL FROM:<a@b>",
                    "STARTTLS",
                    "<TLS>",
                    "MAIL FROM:<a@b>",
                    "EHLO c",
                    "STARTTLS",
                ],
                vec![
                    "250 ",
                    "250 2.1.0",
                    "starttls 220",
                    "tls-done",
                    "503 5.5.1",
                    "250 ",
                    "503 5.5.1",
                ],
            ),
            (
                "require_tls",
                Policy {
                    require_tls: true,
                    ..policy()
                },
                vec![
                    "EHLO c",
                    "MAIL FROM:<a@b>",
                    "STARTTLS",
                    "<TLS>",
                    "EHLO c",
                    "MAIL FROM:<a@b>",
                ],
                vec![
                    "250 ",
                    "530 5.7.0",
                    "starttls 220",
                    "tls-done",
                    "250 ",
                    "250 2.1.0",
                ],
            ),
            (
                "require_tls spares local clients",
                Policy {
                    require_tls: true,
                    local_client: true,
                    ..policy()
                },
                vec!["EHLO c", "MAIL FROM:<a@b>"],
                vec!["250 ", "250 2.1.0"],
            ),
            (
                "auth over plaintext from the network",
                policy(),
                vec!["EHLO c", "AUTH PLAIN"],
                vec!["250 ", "538 5.7.11"],
            ),
            (
                "auth required",
                Policy {
                    auth: AuthMode::Required,
                    implicit_tls: true,
                    ..policy()
                },
                vec!["EHLO c", "MAIL FROM:<a@b>"],
                vec!["250 ", "530 5.7.0"],
            ),
            (
                "auth off",
                Policy {
                    auth: AuthMode::Off,
                    implicit_tls: true,
                    ..policy()
                },
                vec!["EHLO c", "AUTH PLAIN"],
                vec!["250 ", "502 5.5.1"],
            ),
        ];
        for (name, p, input, want) in cases {
            let got = run(p, &input);
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn auth_flows() {
        let tls = Policy {
            implicit_tls: true,
            relay_allowed: false,
            ..policy()
        };
        let good = plain_b64("\0alice\0pa:ss wörd");
        let bad = plain_b64("\0alice\0nope");
        let cases: Vec<(&str, Vec<String>, Vec<&str>)> = vec![
            (
                "plain initial response then relay",
                vec![
                    "EHLO c".into(),
                    format!("AUTH PLAIN {good}"),
                    "AUTH PLAIN".into(),
                    "MAIL FROM:<a@b>".into(),
                    "RCPT TO:<x@y>".into(),
                ],
                vec!["250 ", "235 2.7.0", "503 5.5.1", "250 2.1.0", "250 2.1.5"],
            ),
            (
                "plain with challenge",
                vec!["EHLO c".into(), "AUTH PLAIN".into(), good.clone()],
                vec!["250 ", "334 ", "235 2.7.0"],
            ),
            (
                "login",
                vec![
                    "EHLO c".into(),
                    "AUTH LOGIN".into(),
                    plain_b64("alice"),
                    plain_b64("pa:ss wörd"),
                ],
                vec!["250 ", "334 ", "334 ", "235 2.7.0"],
            ),
            (
                "login with initial user",
                vec![
                    "EHLO c".into(),
                    format!("AUTH LOGIN {}", plain_b64("alice")),
                    plain_b64("pa:ss wörd"),
                ],
                vec!["250 ", "334 ", "235 2.7.0"],
            ),
            (
                "cancel",
                vec!["EHLO c".into(), "AUTH LOGIN".into(), "*".into()],
                vec!["250 ", "334 ", "501 5.7.0"],
            ),
            (
                "bad base64",
                vec!["EHLO c".into(), "AUTH PLAIN !!!".into()],
                vec!["250 ", "501 5.5.2"],
            ),
            (
                "three failures close",
                vec![
                    "EHLO c".into(),
                    format!("AUTH PLAIN {bad}"),
                    format!("AUTH PLAIN {bad}"),
                    format!("AUTH PLAIN {bad}"),
                ],
                vec!["250 ", "535 5.7.8", "535 5.7.8", "close 421 4.7.0"],
            ),
            (
                "unknown mechanism",
                vec!["EHLO c".into(), "AUTH CRAM-MD5".into()],
                vec!["250 ", "504 5.5.4"],
            ),
        ];
        for (name, input, want) in cases {
            let refs: Vec<&str> = input.iter().map(|s| s.as_str()).collect();
            assert_eq!(run(tls.clone(), &refs), want, "{name}");
        }
    }

    #[test]
    fn ehlo_advertises_by_context() {
        let users = Users;
        let ehlo = |p: Policy| {
            let mut s = Session::new(p, &users);
            match s.line(b"EHLO c") {
                Action::Reply(r) => r.lines.join("\n"),
                other => panic!("unexpected {other:?}"),
            }
        };
        let plain = ehlo(policy());
        for kw in [
            "PIPELINING",
            "SIZE 1000",
            "8BITMIME",
            "ENHANCEDSTATUSCODES",
            "SMTPUTF8",
            "STARTTLS",
        ] {
            assert!(plain.contains(kw), "{kw} in {plain}");
        }
        assert!(
            !plain.contains("AUTH"),
            "no AUTH over plaintext to the network"
        );
        let local = ehlo(Policy {
            local_client: true,
            ..policy()
        });
        assert!(local.contains("AUTH PLAIN LOGIN"));
        let tls = ehlo(Policy {
            implicit_tls: true,
            starttls_available: false,
            ..policy()
        });
        assert!(tls.contains("AUTH PLAIN LOGIN") && !tls.contains("STARTTLS"));
        let off = ehlo(Policy {
            implicit_tls: true,
            auth: AuthMode::Off,
            ..policy()
        });
        assert!(!off.contains("AUTH"));
    }

    #[test]
    fn too_many_errors_closes() {
        let input: Vec<&str> = std::iter::repeat("BOGUS")
            .take(MAX_ERRORS as usize)
            .collect();
        let got = run(policy(), &input);
        assert_eq!(got.last().map(String::as_str), Some("close 421 4.7.0"));
        assert!(got[..got.len() - 1].iter().all(|r| r == "500 5.5.2"));
    }

    #[test]
    fn protocol_names() {
        let users = Users;
        let mut s = Session::new(policy(), &users);
        assert_eq!(s.protocol(), "SMTP");
        s.line(b"EHLO c");
        assert_eq!(s.protocol(), "ESMTP");
        assert!(!s.is_tls());
        s.tls_started();
        assert!(s.is_tls());
        s.line(b"EHLO c");
        assert_eq!(s.protocol(), "ESMTPS");
        s.line(format!("AUTH PLAIN {}", plain_b64("\0alice\0pa:ss wörd")).as_bytes());
        assert_eq!(s.protocol(), "ESMTPSA");
    }

    /// The server asks this before each line so a SASL response never reaches the log.
    #[test]
    fn awaiting_auth_response_only_between_challenge_and_response() {
        let cases: &[(&[&str], bool)] = &[
            (&["EHLO c"], false),
            (&["EHLO c", "AUTH PLAIN"], true),
            (&["EHLO c", "AUTH PLAIN", "*"], false),
            (&["EHLO c", "AUTH LOGIN"], true),
            (&["EHLO c", "AUTH LOGIN", "YWxpY2U="], true),
            (&["EHLO c", "AUTH LOGIN", "YWxpY2U=", "d3Jvbmc="], false),
            (&["EHLO c", "AUTH LOGIN YWxpY2U="], true),
        ];
        let users = Users;
        for (lines, want) in cases {
            let mut s = Session::new(policy(), &users);
            s.tls_started();
            for l in *lines {
                s.line(l.as_bytes());
            }
            assert_eq!(s.awaiting_auth_response(), *want, "{lines:?}");
        }
    }
}
