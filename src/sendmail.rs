//! The sendmail, mail and mailq personalities: take a message on stdin and write it
//! straight into the spool (same commit order as SMTP), with sendmail's options and
//! sysexits(3) exit codes.
//!
//! The header section is read into memory (bounded by `MAX_HEADER_SECTION`) because
//! `-t`, Bcc removal and the added Date/Message-ID/From need all of it before the
//! envelope, which the spool writes first, can be built. The body is streamed: memory
//! does not grow with the message.

use std::ffi::OsStr;
use std::fmt;
use std::io::{self, BufRead};
use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::delivery;
use crate::message::{self, Defaults, Field, Header, LocalTrace, MAX_RECEIVED};
use crate::queue_cmd;
use crate::smtp::address::{parse_path, AddressError};
use crate::smtp_stdio;
use crate::spool::{Envelope, Incoming, Spool, SpoolError};
use crate::sys;

/// EX_USAGE (sysexits.h): bad option, bad recipient on the command line.
pub const EX_USAGE: u8 = 64;
/// EX_DATAERR: the message itself is unusable (too big, header too long, bad header address).
pub const EX_DATAERR: u8 = 65;
/// EX_IOERR: `-bs` could not write its replies to standard output.
pub const EX_IOERR: u8 = 74;
/// EX_TEMPFAIL: try again later (spool full, disk full, spool not writable, stdin unreadable).
pub const EX_TEMPFAIL: u8 = 75;
/// EX_CONFIG: the config file is missing or invalid.
pub const EX_CONFIG: u8 = 78;

/// The header section is held in memory; a longer one is refused. Real headers are a
/// few KiB; RFC 5322 §2.1.1 bounds each line at 998 octets but not their number.
pub const MAX_HEADER_SECTION: usize = 256 * 1024;

/// Body bytes read from stdin per step.
const READ_CHUNK: usize = 64 * 1024;

/// The personality a link name selects (interface.md, "sendmail compatibility").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Personality {
    /// `sendmail`: submission with sendmail's options.
    Sendmail,
    /// `mailq`: `queue list`.
    Mailq,
    /// `mail` / `mailx`: `mail -s SUBJECT [-r FROM] RCPT...`, body on stdin.
    Mail,
}

/// personality maps argv[0] (its base name) to a personality; None for any
/// other name, `picorelay` included.
pub fn personality(argv0: &OsStr) -> Option<Personality> {
    match Path::new(argv0).file_name()?.to_str()? {
        "sendmail" => Some(Personality::Sendmail),
        "mailq" => Some(Personality::Mailq),
        "mail" | "mailx" => Some(Personality::Mail),
        _ => None,
    }
}

/// Why a submission failed; each kind is one sysexits code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendmailError {
    /// Bad command line (64).
    Usage(String),
    /// Unusable message (65).
    Data(String),
    /// Temporary failure: spool or input (75).
    Temp(String),
    /// Invalid config; the problems were already printed one per line (78).
    Config,
}

impl SendmailError {
    /// SendmailError::exit_code is the sysexits(3) code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            SendmailError::Usage(_) => EX_USAGE,
            SendmailError::Data(_) => EX_DATAERR,
            SendmailError::Temp(_) => EX_TEMPFAIL,
            SendmailError::Config => EX_CONFIG,
        }
    }
}

impl fmt::Display for SendmailError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendmailError::Usage(s) | SendmailError::Data(s) | SendmailError::Temp(s) => {
                f.write_str(s)
            }
            SendmailError::Config => f.write_str("invalid config file"),
        }
    }
}

impl std::error::Error for SendmailError {}

/// What the command line asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// -bm (the default): queue the message read from stdin.
    #[default]
    Submit,
    /// -bp, or the `mailq` link: list the queue.
    ListQueue,
    /// -q: ask the running relay to retry the queue now.
    Flush,
    /// -bi / -I (newaliases): nothing to rebuild, aliases live in the config.
    NewAliases,
    /// -bs: an SMTP session on stdin/stdout (Symfony Mailer, Laravel, Nextcloud).
    Smtp,
}

/// The parsed command line of any personality.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Options {
    /// What to do.
    pub mode: Mode,
    /// -C FILE.
    pub config: Option<PathBuf>,
    /// -f / -r: the envelope sender as given.
    pub sender: Option<String>,
    /// -F: full name for an added From.
    pub full_name: Option<String>,
    /// -t: recipients from To, Cc and Bcc too.
    pub extract: bool,
    /// -i / -oi: a line holding only "." does not end the message.
    pub ignore_dots: bool,
    /// -v: say what was queued.
    pub verbose: bool,
    /// mail: stdin is the body only; the header is built from the options.
    pub mail: bool,
    /// mail -s.
    pub subject: Option<String>,
    /// mail -c.
    pub cc: Vec<String>,
    /// mail -b.
    pub bcc: Vec<String>,
    /// mail -E: queue nothing when the body is empty.
    pub skip_empty: bool,
    /// Recipients named on the command line (each may be a comma-separated list).
    pub recipients: Vec<String>,
}

/// How an option letter takes its value.
#[derive(Clone, Copy)]
enum Arg {
    /// No value; may be grouped (-ti).
    Flag,
    /// A value, glued or the next argument (-fuser, -f user).
    Value,
    /// An optional value, glued only (-q, -q30m, -d0.1).
    Glued,
}

/// Parsed options as (letter, value; "" for a flag), then the operands.
type Parsed = (Vec<(char, String)>, Vec<String>);

/// getopt splits POSIX-style: options until "--" or the first operand;
/// returns (letter, value) pairs and the operands. Any CR or LF in a value or
/// operand is refused: it could inject header lines.
fn getopt(
    args: &[&str],
    spec: fn(char) -> Option<Arg>,
    prog: &str,
) -> Result<Parsed, SendmailError> {
    let mut opts = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let a = args[i];
        if a == "--" {
            i += 1;
            break;
        }
        if !a.starts_with('-') || a == "-" {
            break;
        }
        for (pos, c) in a.char_indices().skip(1) {
            let rest = &a[pos + c.len_utf8()..];
            match spec(c) {
                None => {
                    return Err(SendmailError::Usage(format!(
                        "{prog}: unknown option -{}",
                        c.escape_debug()
                    )))
                }
                Some(Arg::Flag) => opts.push((c, String::new())),
                Some(Arg::Glued) => {
                    opts.push((c, rest.to_string()));
                    break;
                }
                Some(Arg::Value) => {
                    let v = if rest.is_empty() {
                        i += 1;
                        args.get(i).ok_or_else(|| {
                            SendmailError::Usage(format!("{prog}: option -{c} needs a value"))
                        })?
                    } else {
                        rest
                    };
                    opts.push((c, v.to_string()));
                    break;
                }
            }
        }
        i += 1;
    }
    let operands: Vec<String> = args[i.min(args.len())..]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for (c, v) in &opts {
        no_line_break(prog, &format!("option -{c}"), v)?;
    }
    for r in &operands {
        no_line_break(prog, "recipient", r)?;
    }
    Ok((opts, operands))
}

/// no_line_break refuses a CR or LF in a command-line value (header injection).
fn no_line_break(prog: &str, what: &str, v: &str) -> Result<(), SendmailError> {
    if v.contains(['\r', '\n']) {
        return Err(SendmailError::Usage(format!(
            "{prog}: {what} {v:?} contains a line break; refused"
        )));
    }
    Ok(())
}

/// sendmail_spec: the option letters of sendmail 8 and Postfix's sendmail.
fn sendmail_spec(c: char) -> Option<Arg> {
    match c {
        'A' | 'B' | 'C' | 'F' | 'L' | 'N' | 'O' | 'R' | 'V' | 'X' | 'b' | 'e' | 'f' | 'h' | 'o'
        | 'p' | 'r' => Some(Arg::Value),
        'q' | 'd' => Some(Arg::Glued),
        't' | 'i' | 'v' | 'G' | 'I' | 'U' | 'm' | 'n' | 'c' => Some(Arg::Flag),
        _ => None,
    }
}

/// parse_sendmail_args reads sendmail's command line (`prog` names it in errors).
/// -B, -N, -R, -V, -L, -X, -e, -h, -p, -d, -A, -G, -U, -m, -n, -c and every -o/-O
/// other than "i"/"IgnoreDots" are accepted and ignored, as other sendmail
/// replacements do.
pub fn parse_sendmail_args(prog: &str, args: &[&str]) -> Result<Options, SendmailError> {
    let (opts, operands) = getopt(args, sendmail_spec, prog)?;
    let mut o = Options {
        recipients: operands,
        ..Options::default()
    };
    for (c, v) in opts {
        match c {
            'b' => {
                o.mode = match v.as_str() {
                    "m" => Mode::Submit,
                    "p" => Mode::ListQueue,
                    "i" => Mode::NewAliases,
                    "s" => Mode::Smtp,
                    other => {
                        return Err(SendmailError::Usage(format!(
                            "{prog}: -b{} is not supported: picorelay queues a message read from stdin (-bm), lists the queue (-bp), speaks SMTP on stdin/stdout (-bs) or on its listeners",
                            other.escape_debug()
                        )))
                    }
                }
            }
            'I' => o.mode = Mode::NewAliases,
            'q' => o.mode = Mode::Flush,
            'C' => o.config = Some(PathBuf::from(v)),
            'f' | 'r' => o.sender = Some(v),
            'F' => o.full_name = Some(v),
            't' => o.extract = true,
            'i' => o.ignore_dots = true,
            'o' if v == "i" => o.ignore_dots = true,
            'O' if is_ignore_dots(&v) => o.ignore_dots = true,
            'v' => o.verbose = true,
            _ => {}
        }
    }
    Ok(o)
}

/// is_ignore_dots recognises the long form `-O IgnoreDots[=true]`.
fn is_ignore_dots(v: &str) -> bool {
    let (name, val) = v.split_once('=').unwrap_or((v, "true"));
    name.trim().eq_ignore_ascii_case("IgnoreDots")
        && matches!(
            val.trim().to_ascii_lowercase().as_str(),
            "true" | "yes" | "t" | "y" | "1"
        )
}

/// mail_spec: the mail/mailx options notification tools use.
fn mail_spec(c: char) -> Option<Arg> {
    match c {
        's' | 'r' | 'c' | 'b' | 'a' | 'S' | 'C' => Some(Arg::Value),
        'E' | 'i' | 'n' | 'N' | 'v' | 'd' => Some(Arg::Flag),
        _ => None,
    }
}

/// parse_mail_args reads `mail [-s SUBJECT] [-r FROM] [-c CC] [-b BCC] [-E] RCPT...`
/// (-C FILE names the config; -i, -n, -N, -v, -d and -S are accepted and ignored).
pub fn parse_mail_args(prog: &str, args: &[&str]) -> Result<Options, SendmailError> {
    let (opts, operands) = getopt(args, mail_spec, prog)?;
    let mut o = Options {
        mail: true,
        // mail reads the body to the end: a lone dot is text.
        ignore_dots: true,
        recipients: operands,
        ..Options::default()
    };
    for (c, v) in opts {
        match c {
            's' => o.subject = Some(v),
            'r' => o.sender = Some(v),
            'c' => o.cc.push(v),
            'b' => o.bcc.push(v),
            'C' => o.config = Some(PathBuf::from(v)),
            'E' => o.skip_empty = true,
            'v' => o.verbose = true,
            'a' => {
                return Err(SendmailError::Usage(format!(
                    "{prog}: -a (attachment or header) is not supported; pipe a complete message to sendmail -t instead"
                )))
            }
            _ => {}
        }
    }
    if o.recipients.is_empty() {
        return Err(SendmailError::Usage(format!(
            "{prog}: no recipient given (reading mailboxes is not supported); usage: {prog} -s SUBJECT [-r FROM] RCPT..."
        )));
    }
    Ok(o)
}

/// mailq_spec: -C FILE names the config; every other letter is accepted and ignored.
fn mailq_spec(c: char) -> Option<Arg> {
    match c {
        'C' | 'O' | 'o' => Some(Arg::Value),
        'q' => Some(Arg::Glued),
        _ => Some(Arg::Flag),
    }
}

/// parse_mailq_args reads `mailq [-C FILE]`.
pub fn parse_mailq_args(prog: &str, args: &[&str]) -> Result<Options, SendmailError> {
    let (opts, _) = getopt(args, mailq_spec, prog)?;
    let mut o = Options {
        mode: Mode::ListQueue,
        ..Options::default()
    };
    for (c, v) in opts {
        if c == 'C' {
            o.config = Some(PathBuf::from(v));
        }
    }
    Ok(o)
}

/// run is `picorelay [-c FILE] sendmail [options] [RCPT...]`; returns the exit code.
pub fn run(config: &Path, args: &[&str]) -> u8 {
    let prog = "picorelay sendmail";
    report(
        prog,
        parse_sendmail_args(prog, args).and_then(|o| execute(prog, config, &o)),
    )
}

/// run_personality runs the binary as started through a link (`sendmail`,
/// `mailq`, `mail`, `mailx`); `config` is the default ($PICORELAY_CONFIG or
/// the built-in path), which -C overrides.
pub fn run_personality(p: Personality, config: &Path, args: &[String]) -> u8 {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (prog, parsed) = match p {
        Personality::Sendmail => ("sendmail", parse_sendmail_args("sendmail", &args)),
        Personality::Mailq => ("mailq", parse_mailq_args("mailq", &args)),
        Personality::Mail => ("mail", parse_mail_args("mail", &args)),
    };
    report(prog, parsed.and_then(|o| execute(prog, config, &o)))
}

/// report prints an error on one line and turns the outcome into an exit code.
fn report(prog: &str, result: Result<u8, SendmailError>) -> u8 {
    match result {
        Ok(code) => code,
        Err(SendmailError::Config) => EX_CONFIG,
        Err(e) => {
            eprintln!("{prog}: {e}");
            e.exit_code()
        }
    }
}

/// execute carries out the parsed command line.
fn execute(prog: &str, default_config: &Path, o: &Options) -> Result<u8, SendmailError> {
    let path = o.config.as_deref().unwrap_or(default_config);
    let cfg = load_config(path)?;
    match o.mode {
        // queue list loads the config again: cheap, and it keeps one listing code path.
        Mode::ListQueue => Ok(queue_cmd::list(path)),
        Mode::NewAliases => {
            eprintln!(
                "{prog}: aliases are read from [aliases] in {}; nothing to rebuild",
                path.display()
            );
            Ok(0)
        }
        Mode::Flush => {
            let spool = open_spool(&cfg)?;
            let n = delivery::request_flush(&spool).map_err(|e| spool_error(&cfg, e))?;
            if o.verbose {
                eprintln!("{prog}: flush requested ({n} deferred message(s))");
            }
            Ok(0)
        }
        // The envelope comes from MAIL and RCPT: -f, -t, -i and recipients on the
        // command line are ignored, as sendmail does with -bs.
        Mode::Smtp => Ok(smtp_stdio::serve(
            &format!("{prog} -bs"),
            &cfg,
            &invoking_user(),
            io::stdin().lock(),
            io::stdout().lock(),
        )),
        Mode::Submit => {
            let stdin = io::stdin();
            let mut input = stdin.lock();
            match submit(&cfg, o, &mut input)? {
                Some(q) if o.verbose => {
                    eprintln!(
                        "{prog}: queued as {} from=<{}> to={}",
                        q.id,
                        q.sender,
                        q.recipients.join(",")
                    );
                }
                Some(_) => {}
                None if o.verbose => eprintln!("{prog}: empty message not sent (-E)"),
                None => {}
            }
            Ok(0)
        }
    }
}

/// load_config loads the config, printing each problem on its own line.
fn load_config(path: &Path) -> Result<Config, SendmailError> {
    Config::load_for_spool(path).map_err(|errors| {
        for line in &errors.0 {
            eprintln!("{line}");
        }
        SendmailError::Config
    })
}

fn open_spool(cfg: &Config) -> Result<Spool, SendmailError> {
    Spool::open(&cfg.queue.dir, cfg.queue.max_size).map_err(|e| spool_error(cfg, e))
}

/// spool_error: every spool failure is temporary for the caller (75): the disk may
/// be freed, the queue drained, the permissions fixed.
fn spool_error(cfg: &Config, e: SpoolError) -> SendmailError {
    SendmailError::Temp(format!("spool {}: {e}", cfg.queue.dir.display()))
}

/// What was queued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queued {
    /// The queue id.
    pub id: String,
    /// The envelope sender.
    pub sender: String,
    /// The envelope recipients.
    pub recipients: Vec<String>,
}

/// submit reads the message from `input` and commits it to the spool. Ok(None)
/// when `mail -E` found an empty body. Returns only once the message is durably
/// queued (Incoming::commit: fsync, rename, fsync of queue/).
pub fn submit(
    cfg: &Config,
    o: &Options,
    input: &mut dyn BufRead,
) -> Result<Option<Queued>, SendmailError> {
    let host = cfg.server.hostname.as_str();
    let user = invoking_user();
    let sender = envelope_sender(o.sender.as_deref(), &user, host)?;
    let mut recipients = Vec::new();
    for text in &o.recipients {
        add_recipients(&mut recipients, text, "recipient", SendmailError::Usage)?;
    }
    for text in o.cc.iter().chain(&o.bcc) {
        add_recipients(&mut recipients, text, "recipient", SendmailError::Usage)?;
    }

    let (mut header, rest) = if o.mail {
        if o.skip_empty && fill(input)?.is_empty() {
            return Ok(None);
        }
        (mail_header(o)?, Rest::Body(Vec::new()))
    } else {
        read_header(input, !o.ignore_dots)?
    };
    // RFC 5321 §6.3: too many Received fields means the message loops.
    if header.count("Received") as u32 > MAX_RECEIVED {
        return Err(SendmailError::Data(format!(
            "more than {MAX_RECEIVED} Received: fields; the message is looping"
        )));
    }
    if o.extract {
        for field in ["To", "Cc", "Bcc"] {
            for addr in header.addresses(&[field]) {
                add_recipients(&mut recipients, &addr, field, SendmailError::Data)?;
            }
        }
    }
    // A Bcc field never travels (RFC 5322 §3.6.3), with or without -t.
    header.remove("Bcc");
    header.remove("Resent-Bcc");
    if recipients.is_empty() {
        return Err(if o.extract {
            SendmailError::Data("no recipients in To, Cc or Bcc nor on the command line".into())
        } else {
            SendmailError::Usage(
                "no recipients given; name them, or use -t to read them from the header".into(),
            )
        });
    }
    // RFC 5321 §4.5.3.1.8: the same recipient limit as SMTP.
    if recipients.len() > cfg.server.max_recipients {
        return Err(SendmailError::Data(format!(
            "{} recipients, more than server.max_recipients ({})",
            recipients.len(),
            cfg.server.max_recipients
        )));
    }

    let spool = open_spool(cfg)?;
    let env = Envelope {
        auth_user: Some(user.clone()),
        // The spool writes the envelope before the body is read, so whether the body
        // is 8-bit is not known yet; local programs often send UTF-8 undeclared, and
        // BODY=8BITMIME on a 7-bit message is harmless (RFC 6152 §3).
        eight_bit: true,
        ..Envelope::new(&sender, &recipients, "local", "localhost")
    };
    let incoming = spool.begin(&env).map_err(|e| spool_error(cfg, e))?;
    incoming.share_like(&spool.dir().join("queue"));
    let id = incoming.id().to_string();

    let received = message::local_received_header(&LocalTrace {
        user: &user,
        hostname: host,
        protocol: "local",
        id: &id,
        recipient: (recipients.len() == 1).then(|| recipients[0].as_str()),
        time: env.arrival,
    });
    let mut head = Vec::new();
    header.write_to(&mut head);
    let from_addr = if sender.is_empty() {
        qualify(&user, host)
    } else {
        sender.clone()
    };
    let from = from_value(o, &from_addr);
    let message_id = format!("{id}@{host}");
    for f in message::missing_fields(
        &header,
        &Defaults {
            time: env.arrival,
            message_id: &message_id,
            from: &from,
        },
    ) {
        head.extend_from_slice(f.as_bytes());
    }
    head.extend_from_slice(b"\r\n");

    let mut sink = Sink {
        incoming,
        size: 0,
        max: cfg.server.max_message_size,
    };
    // Our own Received field does not count against the size limit (as in SMTP).
    sink.incoming
        .write_all(received.as_bytes())
        .map_err(|e| spool_error(cfg, e))?;
    sink.write(&head)?;
    if let Rest::Body(first) = rest {
        let mut filter = BodyFilter::new(!o.ignore_dots);
        let mut out = Vec::with_capacity(READ_CHUNK + 1024);
        let mut done = filter.feed(&first, &mut out);
        while !done {
            let buf = fill(input)?;
            if buf.is_empty() {
                break;
            }
            let n = buf.len();
            done = filter.feed(buf, &mut out);
            input.consume(n);
            sink.write(&out)?;
            out.clear();
        }
        if !done {
            filter.finish(&mut out);
        }
        sink.write(&out)?;
    }
    let id = sink.incoming.commit().map_err(|e| spool_error(cfg, e))?;
    Ok(Some(Queued {
        id,
        sender,
        recipients,
    }))
}

/// Sink writes message bytes to the spool, enforcing server.max_message_size.
struct Sink {
    incoming: Incoming,
    size: u64,
    max: u64,
}

impl Sink {
    fn write(&mut self, buf: &[u8]) -> Result<(), SendmailError> {
        self.size = self.size.saturating_add(buf.len() as u64);
        // RFC 5321 §4.5.3.1.7: the limit SMTP advertises with SIZE applies here too.
        if self.max > 0 && self.size > self.max {
            return Err(SendmailError::Data(format!(
                "message larger than server.max_message_size ({} bytes)",
                self.max
            )));
        }
        self.incoming
            .write_all(buf)
            .map_err(|e| SendmailError::Temp(format!("spool: {e}")))
    }
}

/// fill returns the next buffered input, empty at EOF.
fn fill(input: &mut dyn BufRead) -> Result<&[u8], SendmailError> {
    input.fill_buf().map_err(|e| {
        SendmailError::Temp(format!("cannot read the message from standard input: {e}"))
    })
}

/// invoking_user is the login name of the real user, "nobody" without a passwd entry.
fn invoking_user() -> String {
    sys::current_user_name()
        .filter(|u| parse_local(u).is_ok())
        .unwrap_or_else(|| "nobody".into())
}

/// qualify appends @hostname to a local name.
fn qualify(local: &str, host: &str) -> String {
    format!("{local}@{host}")
}

/// from_value is the From an added field carries: `-F NAME <sender>` for
/// sendmail, the -r text itself for mail when it has a display name.
fn from_value(o: &Options, addr: &str) -> String {
    if o.mail {
        if let Some(r) = &o.sender {
            if r.contains('<') && message::address_list(r).len() == 1 && r.contains('@') {
                return r.trim().chars().filter(|c| !c.is_control()).collect();
            }
        }
    }
    message::mailbox(o.full_name.as_deref(), addr)
}

/// envelope_sender turns -f/-r into the envelope sender: "" for "<>" or "",
/// a local name qualified with server.hostname, else the address as SMTP's MAIL
/// would take it. Without -f: the invoking user at server.hostname.
pub fn envelope_sender(raw: Option<&str>, user: &str, host: &str) -> Result<String, SendmailError> {
    let Some(raw) = raw.map(str::trim) else {
        return Ok(qualify(user, host));
    };
    if raw.is_empty() || raw == "<>" {
        return Ok(String::new());
    }
    let bad = |why: String| SendmailError::Usage(format!("bad sender {raw:?}: {why}"));
    let list = message::address_list(raw);
    let [addr] = list.as_slice() else {
        return Err(bad("give exactly one address".into()));
    };
    match canonical(addr).map_err(bad)? {
        Addr::Full(a) => Ok(a),
        Addr::Local(l) => Ok(qualify(&l, host)),
    }
}

/// An address as checked: with a domain, or a local name ([aliases] apply at forwarding).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Addr {
    Full(String),
    Local(String),
}

impl Addr {
    fn into_string(self) -> String {
        match self {
            Addr::Full(s) | Addr::Local(s) => s,
        }
    }
}

/// canonical checks one addr-spec with the SMTP path parser (RFC 5321 §4.1.2 and
/// the length limits of §4.5.3.1) and returns its canonical form.
fn canonical(addr: &str) -> Result<Addr, String> {
    if addr.contains('\u{FFFD}') {
        return Err("not valid UTF-8".into());
    }
    match parse_path(&format!("<{addr}>")) {
        Ok((Some(m), "")) if !m.domain.is_empty() => Ok(Addr::Full(m.to_string())),
        Ok((Some(m), "")) => Ok(Addr::Local(m.local)),
        Ok(_) => Err("not an address".into()),
        Err(AddressError::MissingDomain) => parse_local(addr).map(Addr::Local),
        Err(e) => Err(e.to_string()),
    }
}

/// parse_local checks a local name by giving it a placeholder domain.
fn parse_local(local: &str) -> Result<String, String> {
    match parse_path(&format!("<{local}@localhost>")) {
        Ok((Some(m), "")) => Ok(m.local),
        Ok(_) => Err("not an address".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// add_recipients parses `text` as an address list and appends each new
/// address (duplicates, compared without case, are dropped); `err` picks the
/// exit code (command line 64, header 65).
fn add_recipients(
    out: &mut Vec<String>,
    text: &str,
    what: &str,
    err: fn(String) -> SendmailError,
) -> Result<(), SendmailError> {
    for a in message::address_list(text) {
        let addr = canonical(&a)
            .map_err(|why| err(format!("bad {what} address {a:?}: {why}")))?
            .into_string();
        if !out.iter().any(|r| r.eq_ignore_ascii_case(&addr)) {
            out.push(addr);
        }
    }
    Ok(())
}

/// mail_header builds the header of a `mail` message: To, Cc, Subject and a
/// plain-text MIME declaration (the body is taken as UTF-8 text, as mailx does).
fn mail_header(o: &Options) -> Result<Header, SendmailError> {
    let mut to = Vec::new();
    for r in &o.recipients {
        add_recipients(&mut to, r, "recipient", SendmailError::Usage)?;
    }
    let mut cc = Vec::new();
    for r in &o.cc {
        add_recipients(&mut cc, r, "recipient", SendmailError::Usage)?;
    }
    let mut h = Header::default();
    h.push_text(&message::address_field("To", &to));
    if !cc.is_empty() {
        h.push_text(&message::address_field("Cc", &cc));
    }
    if let Some(s) = &o.subject {
        h.push_text(&message::unstructured("Subject", s));
    }
    h.push_text("MIME-Version: 1.0\r\n");
    h.push_text("Content-Type: text/plain; charset=UTF-8\r\n");
    h.push_text("Content-Transfer-Encoding: 8bit\r\n");
    Ok(h)
}

/// What follows the header section.
#[derive(Debug, PartialEq, Eq)]
enum Rest {
    /// The input ended (EOF, or a lone "." without -i): no body.
    End,
    /// The body; these bytes were already read and go first.
    Body(Vec<u8>),
}

/// One line as read: bytes without the LF.
struct Line {
    bytes: Vec<u8>,
    lf: bool,
    overlong: bool,
}

/// read_line reads up to LF, at most `limit` bytes; None at EOF.
fn read_line(input: &mut dyn BufRead, limit: usize) -> Result<Option<Line>, SendmailError> {
    let mut bytes = Vec::new();
    loop {
        if bytes.len() >= limit {
            return Ok(Some(Line {
                bytes,
                lf: false,
                overlong: true,
            }));
        }
        let buf = fill(input)?;
        if buf.is_empty() {
            return Ok((!bytes.is_empty()).then_some(Line {
                bytes,
                lf: false,
                overlong: false,
            }));
        }
        let take = buf.len().min(limit - bytes.len());
        if let Some(p) = buf[..take].iter().position(|&b| b == b'\n') {
            bytes.extend_from_slice(&buf[..p]);
            input.consume(p + 1);
            return Ok(Some(Line {
                bytes,
                lf: true,
                overlong: false,
            }));
        }
        bytes.extend_from_slice(&buf[..take]);
        input.consume(take);
    }
}

/// read_header reads the header section: it ends at an empty line, at the end
/// of input, at a lone "." when `dot_ends`, or, as in sendmail, at the first
/// line that is neither a field nor a continuation (that line starts the body).
/// A leading mbox "From " line is dropped. At most MAX_HEADER_SECTION bytes.
fn read_header(input: &mut dyn BufRead, dot_ends: bool) -> Result<(Header, Rest), SendmailError> {
    let mut header = Header::default();
    let mut total = 0usize;
    let mut first = true;
    loop {
        let Some(line) = read_line(input, MAX_HEADER_SECTION - total.min(MAX_HEADER_SECTION))?
        else {
            return Ok((header, Rest::End));
        };
        total += line.bytes.len() + 1;
        let text = line.bytes.strip_suffix(b"\r").unwrap_or(&line.bytes);
        let is_field = message::field_name(text).is_some();
        let continues = message::is_continuation(text) && !header.fields.is_empty();
        if line.overlong {
            if is_field || continues || line.bytes.is_empty() {
                return Err(SendmailError::Data(format!(
                    "header section longer than {} KiB; is a blank line missing after it?",
                    MAX_HEADER_SECTION / 1024
                )));
            }
            // A long first body line: the rest of it follows from the input.
            return Ok((header, Rest::Body(line.bytes)));
        }
        if dot_ends && text == b"." {
            return Ok((header, Rest::End));
        }
        if text.is_empty() {
            return Ok((header, Rest::Body(Vec::new())));
        }
        if std::mem::take(&mut first) && text.starts_with(b"From ") {
            continue;
        }
        if continues {
            if let Some(last) = header.fields.last_mut() {
                last.fold(text);
            }
            continue;
        }
        if let Some(f) = Field::start(text) {
            header.fields.push(f);
            continue;
        }
        let mut body = line.bytes;
        if line.lf {
            body.push(b'\n');
        }
        return Ok((header, Rest::Body(body)));
    }
}

/// BodyFilter turns the body as read into stored bytes: LF, CRLF and a bare CR
/// each end a line and become CRLF (the spool holds CRLF only, as SMTP's DATA
/// reader stores it); with `dot_ends` a line holding only "." ends the input
/// (sendmail without -i). Dots are never unstuffed: this is not SMTP.
#[derive(Debug)]
pub struct BodyFilter {
    dot_ends: bool,
    line_start: bool,
    cr: bool,
    /// 0: nothing held; 1: a "." at line start; 2: "." then CR.
    dot: u8,
}

impl BodyFilter {
    /// BodyFilter::new starts at the beginning of a line.
    pub fn new(dot_ends: bool) -> BodyFilter {
        BodyFilter {
            dot_ends,
            line_start: true,
            cr: false,
            dot: 0,
        }
    }

    /// BodyFilter::feed appends the stored form of `input` to `out`; true when a
    /// lone dot ended the message (the rest of the input is ignored).
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> bool {
        for &b in input {
            if self.step(b, out) {
                return true;
            }
        }
        false
    }

    fn step(&mut self, b: u8, out: &mut Vec<u8>) -> bool {
        if self.cr {
            self.cr = false;
            out.extend_from_slice(b"\r\n");
            self.line_start = true;
            if b == b'\n' {
                return false;
            }
        }
        match self.dot {
            1 => match b {
                b'\n' => return true,
                b'\r' => {
                    self.dot = 2;
                    return false;
                }
                _ => {
                    self.dot = 0;
                    out.push(b'.');
                }
            },
            2 => {
                if b == b'\n' {
                    return true;
                }
                self.dot = 0;
                out.extend_from_slice(b".\r\n");
                self.line_start = true;
            }
            _ => {}
        }
        if self.line_start && self.dot_ends && b == b'.' {
            self.dot = 1;
            self.line_start = false;
            return false;
        }
        match b {
            b'\r' => self.cr = true,
            b'\n' => {
                out.extend_from_slice(b"\r\n");
                self.line_start = true;
            }
            _ => {
                out.push(b);
                self.line_start = false;
            }
        }
        false
    }

    /// BodyFilter::finish flushes what is held at the end of input and ends the
    /// last line with CRLF.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        match std::mem::take(&mut self.dot) {
            1 => {
                out.push(b'.');
                self.line_start = false;
            }
            2 => {
                out.push(b'.');
                self.cr = true;
            }
            _ => {}
        }
        if self.cr {
            self.cr = false;
            out.extend_from_slice(b"\r\n");
            self.line_start = true;
        }
        if !self.line_start {
            out.extend_from_slice(b"\r\n");
            self.line_start = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Cursor, Read};

    fn sendmail(args: &[&str]) -> Result<Options, SendmailError> {
        parse_sendmail_args("sendmail", args)
    }

    fn opts(f: impl FnOnce(&mut Options)) -> Options {
        let mut o = Options::default();
        f(&mut o);
        o
    }

    #[test]
    fn real_caller_vectors_and_value_forms() {
        let s = |v: &str| Some(v.to_string());
        let cases: Vec<(&[&str], Options)> = vec![
            // cron (Vixie/cronie)
            (
                &[
                    "-FCronDaemon",
                    "-i",
                    "-odi",
                    "-oem",
                    "-oi",
                    "-t",
                    "-f",
                    "root",
                ],
                opts(|o| {
                    o.full_name = s("CronDaemon");
                    o.ignore_dots = true;
                    o.extract = true;
                    o.sender = s("root");
                }),
            ),
            // Debian cron
            (
                &["-FCronDaemon", "-i", "-B8BITMIME", "-oem", "root"],
                opts(|o| {
                    o.full_name = s("CronDaemon");
                    o.ignore_dots = true;
                    o.recipients = vec!["root".into()];
                }),
            ),
            // mdadm, logwatch
            (&["-t"], opts(|o| o.extract = true)),
            // PHP's default sendmail_path
            (
                &["-t", "-i"],
                opts(|o| {
                    o.extract = true;
                    o.ignore_dots = true;
                }),
            ),
            (
                &["-ti"],
                opts(|o| {
                    o.extract = true;
                    o.ignore_dots = true;
                }),
            ),
            (&["-fuser@x.org"], opts(|o| o.sender = s("user@x.org"))),
            (&["-f", "user@x.org"], opts(|o| o.sender = s("user@x.org"))),
            (&["-r", "user@x.org"], opts(|o| o.sender = s("user@x.org"))),
            (&["-o", "i"], opts(|o| o.ignore_dots = true)),
            (&["-O", "IgnoreDots=True"], opts(|o| o.ignore_dots = true)),
            (&["-O", "DeliveryMode=b", "-o", "em"], Options::default()),
            (
                &["-F", "Cron Daemon"],
                opts(|o| o.full_name = s("Cron Daemon")),
            ),
            (
                &["-C", "/x.ini", "-bm"],
                opts(|o| o.config = Some("/x.ini".into())),
            ),
            (&["-Cx.ini"], opts(|o| o.config = Some("x.ini".into()))),
            (&["-bp"], opts(|o| o.mode = Mode::ListQueue)),
            (&["-b", "p"], opts(|o| o.mode = Mode::ListQueue)),
            (&["-q"], opts(|o| o.mode = Mode::Flush)),
            (&["-q30m"], opts(|o| o.mode = Mode::Flush)),
            (&["-bi"], opts(|o| o.mode = Mode::NewAliases)),
            // Symfony Mailer's default, and Laravel's.
            (&["-bs"], opts(|o| o.mode = Mode::Smtp)),
            (
                &["-bs", "-i"],
                opts(|o| {
                    o.mode = Mode::Smtp;
                    o.ignore_dots = true;
                }),
            ),
            (
                &[
                    "-v", "-d0.1", "-Am", "-N", "never", "-R", "hdrs", "-V", "x", "-X", "/tmp/log",
                    "-Lsm", "-h", "5", "-Gmnc", "-U",
                ],
                opts(|o| o.verbose = true),
            ),
            (
                &["a@x.org", "b@y.org, root"],
                opts(|o| o.recipients = vec!["a@x.org".into(), "b@y.org, root".into()]),
            ),
            (
                &["--", "-oddname"],
                opts(|o| o.recipients = vec!["-oddname".into()]),
            ),
            // Options end at the first recipient, as POSIX getopt does.
            (
                &["root", "-t"],
                opts(|o| o.recipients = vec!["root".into(), "-t".into()]),
            ),
        ];
        for (args, want) in cases {
            assert_eq!(sendmail(args), Ok(want), "{args:?}");
        }
    }

    #[test]
    fn bad_command_lines_are_usage_errors() {
        let cases: &[&[&str]] = &[
            &["-bd"],
            &["-bv"],
            &["-bt"],
            &["-z"],
            &["-f"],
            &["-F"],
            &["-f", "root\nBcc: x@y"],
            &["-Fa\r\nX: y"],
            &["-t", "root\r\nBcc: x@y"],
            &["-o", "i\n"],
        ];
        for args in cases {
            match sendmail(args) {
                Err(e @ SendmailError::Usage(_)) => {
                    assert_eq!(e.exit_code(), EX_USAGE);
                    assert!(!e.to_string().contains(['\r', '\n']), "one line: {e:?}");
                }
                other => panic!("{args:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn mail_and_mailq_command_lines() {
        let mail = |f: fn(&mut Options)| {
            let mut o = Options {
                mail: true,
                ignore_dots: true,
                ..Options::default()
            };
            f(&mut o);
            o
        };
        let cases: Vec<(&[&str], Options)> = vec![
            // smartd, ZED, apcupsd
            (
                &["-s", "SMART error (ATA error count) on /dev/sda", "root"],
                mail(|o| {
                    o.subject = Some("SMART error (ATA error count) on /dev/sda".into());
                    o.recipients = vec!["root".into()];
                }),
            ),
            (
                &["-sUPS on battery", "-r", "nas@x.org", "a@x.org", "b@x.org"],
                mail(|o| {
                    o.subject = Some("UPS on battery".into());
                    o.sender = Some("nas@x.org".into());
                    o.recipients = vec!["a@x.org".into(), "b@x.org".into()];
                }),
            ),
            (
                &["-E", "-c", "cc@x.org", "-b", "bcc@x.org", "root"],
                mail(|o| {
                    o.skip_empty = true;
                    o.cc = vec!["cc@x.org".into()];
                    o.bcc = vec!["bcc@x.org".into()];
                    o.recipients = vec!["root".into()];
                }),
            ),
        ];
        for (args, want) in cases {
            assert_eq!(parse_mail_args("mail", args), Ok(want), "{args:?}");
        }
        for args in [
            &["-s", "x"][..],
            &["-a", "file", "root"],
            &["-s", "a\nBcc: x", "root"],
        ] {
            assert!(
                matches!(parse_mail_args("mail", args), Err(SendmailError::Usage(_))),
                "{args:?}"
            );
        }
        let q = parse_mailq_args("mailq", &["-v", "-C", "/x.ini", "-Ac"]).unwrap();
        assert_eq!((q.mode, q.config), (Mode::ListQueue, Some("/x.ini".into())));
    }

    #[test]
    fn personalities_from_argv0() {
        let cases = [
            ("sendmail", Some(Personality::Sendmail)),
            ("/usr/sbin/sendmail", Some(Personality::Sendmail)),
            ("/usr/lib/sendmail", Some(Personality::Sendmail)),
            ("mailq", Some(Personality::Mailq)),
            ("/usr/bin/mail", Some(Personality::Mail)),
            ("mailx", Some(Personality::Mail)),
            ("picorelay", None),
            ("/usr/sbin/sendmail.postfix", None),
            ("", None),
        ];
        for (argv0, want) in cases {
            assert_eq!(personality(OsStr::new(argv0)), want, "{argv0:?}");
        }
    }

    #[test]
    fn senders() {
        let cases: &[(Option<&str>, Result<&str, ()>)] = &[
            (None, Ok("alice@relay.test")),
            (Some("root"), Ok("root@relay.test")),
            (Some("root@nas.lan"), Ok("root@nas.lan")),
            (Some("<root@nas.lan>"), Ok("root@nas.lan")),
            (Some("NAS <nas@x.org>"), Ok("nas@x.org")),
            (Some("<>"), Ok("")),
            (Some(""), Ok("")),
            (Some("a@x.org, b@x.org"), Err(())),
            (Some("bad address@x.org"), Err(())),
            (Some("a@-bad-.org"), Err(())),
        ];
        for (raw, want) in cases {
            let got = envelope_sender(*raw, "alice", "relay.test");
            match want {
                Ok(w) => assert_eq!(got.as_deref(), Ok(*w), "{raw:?}"),
                Err(()) => assert!(
                    matches!(got, Err(SendmailError::Usage(_))),
                    "{raw:?}: {got:?}"
                ),
            }
        }
    }

    #[test]
    fn recipients_are_checked_and_deduplicated() {
        let mut out = Vec::new();
        add_recipients(
            &mut out,
            "root, Admin <admin@x.org>",
            "recipient",
            SendmailError::Usage,
        )
        .unwrap();
        add_recipients(
            &mut out,
            "ADMIN@x.org, postmaster, \"a b\"@x.org",
            "To",
            SendmailError::Data,
        )
        .unwrap();
        assert_eq!(out, ["root", "admin@x.org", "postmaster", "\"a b\"@x.org"]);
        let bad = [
            ("john doe@x.org", EX_USAGE),
            ("a@b@c", EX_USAGE),
            (&*format!("{}@x.org", "l".repeat(65)), EX_USAGE),
            ("x@\u{FFFD}.org", EX_USAGE),
        ];
        for (text, code) in bad {
            let e = add_recipients(&mut out, text, "recipient", SendmailError::Usage).unwrap_err();
            assert_eq!(e.exit_code(), code, "{text:?}");
        }
    }

    #[test]
    fn body_filter() {
        // (input, lone dot ends, stored, ended by the dot)
        let cases: &[(&[u8], bool, &[u8], bool)] = &[
            (b"a\nb\n", true, b"a\r\nb\r\n", false),
            (b"a\r\nb\r\n", true, b"a\r\nb\r\n", false),
            (b"a\rb", true, b"a\r\nb\r\n", false),
            (b"no newline", false, b"no newline\r\n", false),
            (b"a\n.\nafter\n", true, b"a\r\n", true),
            (b"a\r\n.\r\nafter\r\n", true, b"a\r\n", true),
            (b".\n", true, b"", true),
            (b"a\n.\nafter\n", false, b"a\r\n.\r\nafter\r\n", false),
            (b"..x\n.y\n", true, b"..x\r\n.y\r\n", false),
            (b"a\n.", true, b"a\r\n.\r\n", false),
            (b"a\n.\r", true, b"a\r\n.\r\n", false),
            (b"a\n.\rb\n", true, b"a\r\n.\r\nb\r\n", false),
            (b"x.\n", true, b"x.\r\n", false),
            (b"", true, b"", false),
            (b"\n\n", true, b"\r\n\r\n", false),
        ];
        for (input, dot_ends, want, want_done) in cases {
            // Whole, and one byte at a time (a CR and its LF may arrive apart).
            for split in [false, true] {
                let mut f = BodyFilter::new(*dot_ends);
                let mut out = Vec::new();
                let mut done = false;
                if split {
                    for b in input.iter() {
                        if f.feed(std::slice::from_ref(b), &mut out) {
                            done = true;
                            break;
                        }
                    }
                } else {
                    done = f.feed(input, &mut out);
                }
                if !done {
                    f.finish(&mut out);
                }
                assert_eq!(
                    (String::from_utf8_lossy(&out), done),
                    (String::from_utf8_lossy(want), *want_done),
                    "{:?} split={split}",
                    String::from_utf8_lossy(input)
                );
            }
        }
    }

    #[test]
    fn header_sections() {
        // (input, lone dot ends, field names, what follows)
        let cases: &[(&[u8], bool, &[&str], Rest)] = &[
            (
                b"Subject: x\nTo: a\n\nbody\n",
                true,
                &["Subject", "To"],
                Rest::Body(vec![]),
            ),
            (
                b"Subject: x\r\nTo: a,\r\n b\r\n\r\n",
                true,
                &["Subject", "To"],
                Rest::Body(vec![]),
            ),
            (b"Subject: x\n", true, &["Subject"], Rest::End),
            (b"Subject: x\n.\nbody\n", true, &["Subject"], Rest::End),
            (
                b"Subject: x\n.\nbody\n",
                false,
                &["Subject"],
                Rest::Body(b".\n".to_vec()),
            ),
            (
                b"just text\nmore\n",
                true,
                &[],
                Rest::Body(b"just text\n".to_vec()),
            ),
            (
                b"Subject: x\nnot a header\n",
                true,
                &["Subject"],
                Rest::Body(b"not a header\n".to_vec()),
            ),
            (
                b"From root Mon Jan 1 00:00:00 2024\nSubject: x\n\n",
                true,
                &["Subject"],
                Rest::Body(vec![]),
            ),
            (
                b" leading space\n",
                true,
                &[],
                Rest::Body(b" leading space\n".to_vec()),
            ),
            (b"", true, &[], Rest::End),
        ];
        for (input, dot_ends, names, rest) in cases {
            let (h, r) = read_header(&mut Cursor::new(input.to_vec()), *dot_ends).unwrap();
            let got: Vec<&str> = h.fields.iter().map(|f| f.name.as_str()).collect();
            assert_eq!(
                (&got[..], &r),
                (*names, rest),
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
        let (h, _) = read_header(&mut Cursor::new(b"To: a,\n\tb\n\n".to_vec()), true).unwrap();
        assert_eq!(h.fields[0].raw, b"To: a,\r\n\tb\r\n");
        // An endless header is refused; an endless first body line is not.
        let huge = format!("X-Long: {}\n\n", "x".repeat(MAX_HEADER_SECTION));
        let e = read_header(&mut Cursor::new(huge.into_bytes()), true).unwrap_err();
        assert_eq!(e.exit_code(), EX_DATAERR);
        let blob = "y".repeat(MAX_HEADER_SECTION + 10);
        let mut input = Cursor::new(blob.clone().into_bytes());
        let (_, r) = read_header(&mut input, true).unwrap();
        let mut rest = Vec::new();
        input.read_to_end(&mut rest).unwrap();
        match r {
            Rest::Body(b) => assert_eq!(b.len() + rest.len(), blob.len()),
            Rest::End => panic!("body lost"),
        }
    }

    /// A config with its spool in a fresh temp dir (removed on drop).
    struct TestSpool {
        dir: PathBuf,
        cfg: Config,
    }

    impl TestSpool {
        fn new(extra: &str) -> TestSpool {
            static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            let dir = std::env::temp_dir().join(format!(
                "picorelay-sendmail-unit-{}-{}",
                std::process::id(),
                N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            ));
            std::fs::create_dir_all(&dir).unwrap();
            let text = format!(
                "[server]\nhostname = relay.test\n{extra}\n[queue]\ndir = {}\n",
                dir.join("spool").display()
            );
            let cfg = Config::parse(&dir.join("picorelay.ini"), &text).unwrap();
            TestSpool { dir, cfg }
        }

        /// submit runs a submission and returns the envelope and the stored message.
        fn submit(&self, args: &[&str], input: &[u8]) -> Result<(Envelope, String), SendmailError> {
            let o = parse_sendmail_args("sendmail", args)?;
            let q = submit(&self.cfg, &o, &mut Cursor::new(input.to_vec()))?.unwrap();
            let spool = Spool::open(&self.cfg.queue.dir, 0).unwrap();
            let (env, mut r, _) = spool.open_message(&q.id).unwrap();
            let mut text = String::new();
            r.read_to_string(&mut text).unwrap();
            Ok((env, text))
        }
    }

    impl Drop for TestSpool {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    #[test]
    fn submission_adds_fields_and_removes_bcc() {
        let t = TestSpool::new("");
        let user = invoking_user();
        let (env, text) = t
            .submit(
                &["-t", "-F", "Cron Daemon", "-f", "root"],
                b"To: \"Doe, John\" <john@x.org>,\n  team: a@x.org, b@x.org;\nBcc: hidden@x.org\nSubject: s\n\nline\n.\nafter\n",
            )
            .unwrap();
        let rcpts: Vec<&str> = env.recipients.iter().map(|r| r.addr.as_str()).collect();
        assert_eq!(rcpts, ["john@x.org", "a@x.org", "b@x.org", "hidden@x.org"]);
        assert_eq!(env.sender, "root@relay.test");
        assert_eq!(
            (env.client.as_str(), env.helo.as_str()),
            ("local", "localhost")
        );
        assert_eq!(env.auth_user.as_deref(), Some(user.as_str()));
        assert!(text.starts_with(&format!("Received: from localhost (user {user})\r\n\tby relay.test (picorelay) with local id {};", env.id)), "{text}");
        assert!(!text.contains("hidden") && !text.contains("Bcc"), "{text}");
        assert!(
            text.contains(&format!("\r\nMessage-ID: <{}@relay.test>\r\n", env.id)),
            "{text}"
        );
        assert!(text.contains("\r\nDate: "), "{text}");
        assert!(
            text.contains("\r\nFrom: Cron Daemon <root@relay.test>\r\n\r\nline\r\n"),
            "{text}"
        );
        assert!(
            !text.contains("after"),
            "a lone dot ends the message without -i: {text}"
        );
        assert!(
            !text.replace("\r\n", "").contains(['\r', '\n']),
            "CRLF only"
        );

        // Present fields are kept, nothing is added twice; -i keeps the dot.
        let (_, text) = t
            .submit(
                &["-i", "root"],
                b"From: me@x.org\nDate: Mon, 1 Jan 2024 00:00:00 +0000\nMessage-ID: <m@x>\n\n.\nafter",
            )
            .unwrap();
        assert_eq!(text.matches("From:").count(), 1);
        assert_eq!(text.matches("Date:").count(), 1);
        assert_eq!(text.matches("Message-ID:").count(), 1);
        assert!(text.ends_with("<m@x>\r\n\r\n.\r\nafter\r\n"), "{text:?}");
    }

    #[test]
    fn submission_limits() {
        let t = TestSpool::new("max_message_size = 64K\nmax_recipients = 2\n");
        let big = format!("Subject: big\n\n{}", "x".repeat(70 * 1024));
        let e = t.submit(&["root"], big.as_bytes()).unwrap_err();
        assert_eq!(e.exit_code(), EX_DATAERR, "{e}");
        let e = t
            .submit(&["a@x.org", "b@x.org", "c@x.org"], b"\n")
            .unwrap_err();
        assert_eq!(e.exit_code(), EX_DATAERR, "{e}");
        let e = t.submit(&[], b"Subject: x\n\n").unwrap_err();
        assert_eq!(e.exit_code(), EX_USAGE, "{e}");
        let e = t.submit(&["-t"], b"Subject: x\n\n").unwrap_err();
        assert_eq!(e.exit_code(), EX_DATAERR, "{e}");
        let e = t.submit(&["-t"], b"To: john doe@x.org\n\n").unwrap_err();
        assert_eq!(e.exit_code(), EX_DATAERR, "{e}");
        let loops = "Received: x\n".repeat(MAX_RECEIVED as usize + 1) + "\n";
        let e = t.submit(&["root"], loops.as_bytes()).unwrap_err();
        assert_eq!(e.exit_code(), EX_DATAERR, "{e}");
        // Nothing was left behind by the refusals.
        let spool = Spool::open(&t.cfg.queue.dir, 0).unwrap();
        assert!(spool.scan().unwrap().is_empty());
        assert_eq!(
            std::fs::read_dir(t.cfg.queue.dir.join("tmp"))
                .unwrap()
                .count(),
            0
        );
    }

    #[test]
    fn mail_builds_the_header() {
        let t = TestSpool::new("");
        let o = parse_mail_args(
            "mail",
            &[
                "-s",
                "Pool tank: DEGRADED \u{2013} check",
                "-r",
                "NAS <nas@x.org>",
                "-c",
                "cc@x.org",
                "-b",
                "bcc@x.org",
                "root",
                "admin@x.org",
            ],
        )
        .unwrap();
        let q = submit(&t.cfg, &o, &mut Cursor::new(b"status:\n.\nend".to_vec()))
            .unwrap()
            .unwrap();
        assert_eq!(q.sender, "nas@x.org");
        assert_eq!(
            q.recipients,
            ["root", "admin@x.org", "cc@x.org", "bcc@x.org"]
        );
        let spool = Spool::open(&t.cfg.queue.dir, 0).unwrap();
        let (_, mut r, _) = spool.open_message(&q.id).unwrap();
        let mut text = String::new();
        r.read_to_string(&mut text).unwrap();
        assert!(
            text.contains("\r\nTo: root, admin@x.org\r\nCc: cc@x.org\r\nSubject: =?UTF-8?B?"),
            "{text}"
        );
        assert!(text.contains("\r\nFrom: NAS <nas@x.org>\r\n"), "{text}");
        assert!(!text.contains("bcc@"), "{text}");
        assert!(
            text.ends_with("\r\n\r\nstatus:\r\n.\r\nend\r\n"),
            "mail reads to EOF: {text:?}"
        );
        let o = parse_mail_args("mail", &["-E", "-s", "x", "root"]).unwrap();
        assert_eq!(submit(&t.cfg, &o, &mut Cursor::new(Vec::new())), Ok(None));
    }
}
