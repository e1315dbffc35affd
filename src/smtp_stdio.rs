//! `sendmail -bs`: one SMTP session on stdin/stdout, the way Symfony Mailer's
//! SendmailTransport, Laravel and Nextcloud submit mail by default.
//!
//! The protocol is the listener's own state machine ([`Session`]); this module only
//! does its I/O over pipes. The caller is a local user of the box, trusted as plain
//! sendmail trusts it: relaying is allowed, no AUTH and no STARTTLS are offered. As
//! on a socket, command lines are bounded and a message is streamed into the spool,
//! so memory does not grow with the input.
//!
//! There is no command or data timeout: the peer is the process that started us and
//! holds its own pipe; when it goes away stdin ends, and that ends the session.

use std::io::{self, Read, Write};

use crate::config::{AuthMode, Config};
use crate::message::{self, LocalTrace, MAX_RECEIVED};
use crate::sendmail::{EX_IOERR, EX_TEMPFAIL};
use crate::session::{Action, Authenticator, DataOutcome, Policy, Session};
use crate::smtp::command::{scan_line, skip_line, LineScan, MAX_AUTH_LINE};
use crate::smtp::data::DataReader;
use crate::smtp::reply::{self, Reply};
use crate::spool::{Envelope, Incoming, Spool};

/// Input read buffer; larger than MAX_AUTH_LINE, so a command line (or the part of an
/// over-long one that is scanned) always fits.
const READ_CHUNK: usize = 16 * 1024;

/// No user can authenticate: AUTH is neither offered nor needed (see `policy`).
struct NoUsers;

impl Authenticator for NoUsers {
    fn verify(&self, _user: &str, _password: &[u8]) -> bool {
        false
    }
}

/// policy: the caller already runs on this box, as with plain sendmail, so it may
/// relay; STARTTLS would protect nothing on a pipe and AUTH is off, so neither is
/// offered nor required. The limits are the listener's.
fn policy(cfg: &Config) -> Policy {
    Policy {
        hostname: cfg.server.hostname.clone(),
        tag: "sendmail -bs".into(),
        max_message_size: cfg.server.max_message_size,
        max_recipients: cfg.server.max_recipients,
        relay_allowed: true,
        local_client: true,
        starttls_available: false,
        implicit_tls: false,
        auth: AuthMode::Off,
        have_users: false,
        require_tls: false,
    }
}

/// Ctx is what a session needs besides its pipes.
struct Ctx<'a> {
    /// Names the program in error lines.
    prog: &'a str,
    cfg: &'a Config,
    spool: &'a Spool,
    /// The invoking user: the submitter of every message.
    user: &'a str,
}

/// How the session ended early, as an exit code and a line for stderr.
struct End(u8, String);

/// Input buffers stdin so that lines and DATA can be scanned across reads.
struct Input<R> {
    src: R,
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl<R: Read> Input<R> {
    fn new(src: R) -> Input<R> {
        Input {
            src,
            buf: vec![0; READ_CHUNK],
            start: 0,
            end: 0,
        }
    }

    fn pending(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.end);
    }

    /// fill reads more input after what is pending; false at the end of input.
    fn fill(&mut self) -> Result<bool, End> {
        self.buf.copy_within(self.start..self.end, 0);
        self.end -= self.start;
        self.start = 0;
        if self.end == self.buf.len() {
            // Cannot happen: a line is cut at MAX_AUTH_LINE < READ_CHUNK and the DATA
            // reader takes all it is given. Ending beats looping or growing.
            return Err(End(EX_TEMPFAIL, "input buffer full".into()));
        }
        loop {
            match self.src.read(&mut self.buf[self.end..]) {
                Ok(0) => return Ok(false),
                Ok(n) => {
                    self.end += n;
                    return Ok(true);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(End(EX_TEMPFAIL, format!("cannot read standard input: {e}"))),
            }
        }
    }
}

/// Output buffers the replies; they go out when the input has no whole line left,
/// as a PIPELINING server flushes when the client's batch is drained.
struct Output<W: Write> {
    dst: W,
    buf: Vec<u8>,
}

impl<W: Write> Output<W> {
    fn push(&mut self, r: &Reply) {
        r.write_to(&mut self.buf);
    }

    fn flush(&mut self) -> Result<(), End> {
        let res = self
            .dst
            .write_all(&self.buf)
            .and_then(|()| self.dst.flush());
        self.buf.clear();
        res.map_err(|e| End(EX_IOERR, format!("cannot write standard output: {e}")))
    }
}

/// serve runs one SMTP session: replies to `output`, commands and messages from
/// `input`, messages into the spool of `cfg` submitted by `user`. Returns the exit
/// code: 0 once the session ended (QUIT, or the end of input between commands),
/// whatever the replies were, as MTAs do for -bs; EX_TEMPFAIL (75) when the spool
/// cannot be opened (after a 421) or the input ended inside DATA (nothing was
/// queued); EX_IOERR (74) when the replies cannot be written. Problems are told on
/// stderr as one line starting with `prog`.
pub fn serve(prog: &str, cfg: &Config, user: &str, input: impl Read, output: impl Write) -> u8 {
    let mut out = Output {
        dst: output,
        buf: Vec::new(),
    };
    let result = match Spool::open(&cfg.queue.dir, cfg.queue.max_size) {
        Ok(spool) => {
            let ctx = Ctx {
                prog,
                cfg,
                spool: &spool,
                user,
            };
            session(&ctx, &mut Input::new(input), &mut out)
        }
        Err(e) => {
            out.push(&reply::service_unavailable(
                "Queue unavailable, try again later",
            ));
            Err(End(
                EX_TEMPFAIL,
                format!("spool {}: {e}", cfg.queue.dir.display()),
            ))
        }
    };
    // The last replies (221, or the 421 above) go out before any error is told.
    let result = match result {
        Ok(()) => out.flush(),
        Err(end) => {
            let _ = out.flush();
            Err(end)
        }
    };
    match result {
        Ok(()) => 0,
        Err(End(code, why)) => {
            eprintln!("{prog}: {why}");
            code
        }
    }
}

/// session drives the state machine until QUIT, a closing reply or the end of input.
fn session<R: Read, W: Write>(
    ctx: &Ctx,
    input: &mut Input<R>,
    out: &mut Output<W>,
) -> Result<(), End> {
    let mut session = Session::new(policy(ctx.cfg), &NoUsers);
    out.push(&session.greeting());
    // Inside an over-long line: drop input up to its line end (the reply was given).
    let mut skipping = false;
    loop {
        if skipping {
            match skip_line(input.pending()) {
                Some(n) => {
                    input.consume(n);
                    skipping = false;
                }
                None => {
                    input.consume(input.pending().len());
                    if !input.fill()? {
                        return Ok(());
                    }
                }
            }
            continue;
        }
        // The server's window: AUTH lines may be longer; parse applies each verb's limit.
        let action = match scan_line(input.pending(), MAX_AUTH_LINE) {
            LineScan::Line { end, next } => {
                let action = session.line(&input.pending()[..end]);
                input.consume(next);
                action
            }
            LineScan::TooLong => {
                skipping = true;
                session.line_too_long()
            }
            LineScan::NeedMore => {
                out.flush()?;
                // The end of input between commands ends the session like QUIT; a
                // partial last line without its line end is not a command.
                if !input.fill()? {
                    return Ok(());
                }
                continue;
            }
        };
        match action {
            Action::Reply(r) => out.push(&r),
            Action::Close(r) => {
                out.push(&r);
                return Ok(());
            }
            // STARTTLS is not offered, so the session refuses it before this; were it
            // ever asked for, no handshake can follow on a pipe.
            Action::StartTls(_) => out.push(&reply::not_implemented()),
            Action::Data(start) => {
                let r = receive_data(ctx, &mut session, input, out, start)?;
                out.push(&r);
            }
        }
    }
}

/// receive_data answers 354, streams the message into the spool as the listener
/// does (src/server.rs receive_data) and returns the final reply. The input ending
/// before the end marker is an error: the temporary file goes with `incoming`, so
/// nothing is half-queued.
fn receive_data<R: Read, W: Write>(
    ctx: &Ctx,
    session: &mut Session,
    input: &mut Input<R>,
    out: &mut Output<W>,
    start: Reply,
) -> Result<Reply, End> {
    let Some(txn) = session.transaction().cloned() else {
        return Ok(session.data_finished(DataOutcome::StorageFailed));
    };
    let env = Envelope {
        // The local user who ran us, as plain sendmail records it.
        auth_user: Some(ctx.user.to_string()),
        // As with plain sendmail: local programs often send UTF-8 without declaring
        // BODY=8BITMIME, and declaring it for a 7-bit message is harmless (RFC 6152 §3).
        eight_bit: true,
        smtputf8: txn.params.smtputf8,
        ..Envelope::new(&txn.sender, &txn.recipients, "local", session.helo())
    };
    // Refuse before 354 when the spool cannot take the message (full, unwritable).
    let mut incoming = match ctx.spool.begin(&env) {
        Ok(i) => Some(i),
        Err(e) => {
            eprintln!("{}: spool refused a message: {e}", ctx.prog);
            return Ok(session.data_finished(DataOutcome::StorageFailed));
        }
    };
    if let Some(i) = &incoming {
        // sendmail may run as any user: the message file must be readable by the relay.
        i.share_like(&ctx.spool.dir().join("queue"));
    }
    out.push(&start);
    out.flush()?;
    let id = incoming
        .as_ref()
        .map(|i| i.id().to_string())
        .unwrap_or_default();
    let protocol = if session.protocol().starts_with("ESMTP") {
        "local-esmtp"
    } else {
        "local-smtp"
    };
    // Like plain sendmail's: the user is what is known of the sender; the HELO name
    // an application gives on a pipe says nothing.
    let received = message::local_received_header(&LocalTrace {
        user: ctx.user,
        hostname: &ctx.cfg.server.hostname,
        protocol,
        id: &id,
        recipient: (txn.recipients.len() == 1).then(|| txn.recipients[0].as_str()),
        time: env.arrival,
    });
    let mut write_failed = write_spool(ctx.prog, &mut incoming, received.as_bytes());
    let mut reader = DataReader::new(ctx.cfg.server.max_message_size);
    let mut chunk = Vec::with_capacity(READ_CHUNK + 64);
    loop {
        let (used, done) = reader.feed(input.pending(), &mut chunk);
        input.consume(used);
        if !chunk.is_empty() {
            // Past the size limit the data is read on to its end and dropped (RFC 1870 §6.3).
            if !write_failed && !reader.exceeded() {
                write_failed = write_spool(ctx.prog, &mut incoming, &chunk);
            }
            chunk.clear();
        }
        if done {
            break;
        }
        if !input.fill()? {
            return Err(End(
                EX_TEMPFAIL,
                "input ended inside DATA (no line \".\"); the message was discarded".into(),
            ));
        }
    }
    let outcome = if reader.exceeded() {
        DataOutcome::TooBig
    } else if reader.received_headers() > MAX_RECEIVED {
        DataOutcome::Loop
    } else if write_failed {
        DataOutcome::StorageFailed
    } else {
        match incoming.take().map(Incoming::commit) {
            Some(Ok(id)) => DataOutcome::Queued(id),
            Some(Err(e)) => {
                eprintln!("{}: could not commit the message: {e}", ctx.prog);
                DataOutcome::StorageFailed
            }
            None => DataOutcome::StorageFailed,
        }
    };
    Ok(session.data_finished(outcome))
}

/// write_spool appends to the message file; true when it failed (the message is
/// then answered 452 once its data has been read).
fn write_spool(prog: &str, incoming: &mut Option<Incoming>, buf: &[u8]) -> bool {
    let Some(i) = incoming.as_mut() else {
        return true;
    };
    match i.write_all(buf) {
        Ok(()) => false,
        Err(e) => {
            eprintln!("{prog}: writing the message to the spool failed: {e}");
            *incoming = None;
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// session runs `input` through serve with the spool at `queue_dir`; returns
    /// (exit code, replies).
    fn session(queue_dir: &str, input: &[u8]) -> (u8, String) {
        let text = format!("[server]\nhostname = relay.test\n[queue]\ndir = {queue_dir}\n");
        let cfg = Config::parse(&PathBuf::from("/x/picorelay.ini"), &text).unwrap();
        let mut out = Vec::new();
        let code = serve("test", &cfg, "alice", input, &mut out);
        (code, String::from_utf8(out).unwrap())
    }

    fn temp_spool() -> String {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "picorelay-smtp-stdio-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        ));
        dir.to_str().unwrap().to_string()
    }

    #[test]
    fn unusable_spool_is_421_and_tempfail() {
        let (code, out) = session("/dev/null/spool", b"EHLO x\r\nQUIT\r\n");
        assert_eq!(code, EX_TEMPFAIL);
        assert!(out.starts_with("421 4.3.2 "), "{out}");
        assert_eq!(out.lines().count(), 1, "{out}");
    }

    #[test]
    fn long_lines_tls_and_auth_are_refused_and_the_session_goes_on() {
        let dir = temp_spool();
        let long = format!("NOOP {}\r\n", "x".repeat(3 * READ_CHUNK));
        let input =
            format!("EHLO x\r\n{long}STARTTLS\r\nAUTH PLAIN AGFAYg==\r\nNOOP\r\nQUIT\r\nNOOP\r\n");
        let (code, out) = session(&dir, input.as_bytes());
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(code, 0, "{out}");
        let last: Vec<&str> = out
            .lines()
            .filter(|l| l.as_bytes().get(3) == Some(&b' '))
            .map(|l| &l[..3])
            .collect();
        assert_eq!(
            last,
            ["220", "250", "500", "502", "502", "250", "221"],
            "{out}"
        );
        assert!(
            !out.lines()
                .any(|l| l.starts_with("250-STARTTLS") || l.starts_with("250-AUTH")),
            "{out}"
        );
    }

    /// A reader that fails: stdin unreadable mid-session.
    struct Broken;

    impl Read for Broken {
        fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
            Err(io::Error::other("gone"))
        }
    }

    /// A writer that fails: the caller closed its end of stdout.
    struct Closed;

    impl Write for Closed {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn broken_pipes_end_the_session() {
        let dir = temp_spool();
        let text = format!("[server]\nhostname = relay.test\n[queue]\ndir = {dir}\n");
        let cfg = Config::parse(&PathBuf::from("/x/picorelay.ini"), &text).unwrap();
        let mut out = Vec::new();
        assert_eq!(serve("test", &cfg, "alice", Broken, &mut out), EX_TEMPFAIL);
        assert!(out.starts_with(b"220 "));
        assert_eq!(
            serve("test", &cfg, "alice", &b"QUIT\r\n"[..], Closed),
            EX_IOERR
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
