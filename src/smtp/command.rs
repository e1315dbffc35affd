//! Parsing of one SMTP command line into a `Command` (RFC 5321 4.1.1, with SIZE, 8BITMIME, SMTPUTF8, AUTH), and the line splitter.

use super::address::{parse_path, AddressError, Mailbox};
use super::reply::{self, Reply};
use std::fmt;

/// Longest command line, CRLF included (RFC 5321 4.5.3.1.4).
pub const MAX_LINE: usize = 512;

/// Longest MAIL line: RFC 5321 4.5.3.1.4 lets extensions raise the limit, and SIZE adds 26
/// (RFC 1870 3), the AUTH= parameter 500 (RFC 4954 5), BODY=8BITMIME 15 and SMTPUTF8 9.
pub const MAX_MAIL_LINE: usize = MAX_LINE + 26 + 500 + 15 + 9;

/// Longest line of an AUTH exchange (the client's answer to a 334 challenge), CRLF included (RFC 4954 4).
pub const MAX_AUTH_LINE: usize = 12288;

/// Value of the BODY= parameter of MAIL (RFC 6152).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// BODY=7BIT
    SevenBit,
    /// BODY=8BITMIME
    EightBitMime,
}

/// The parameters of MAIL FROM we support.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MailParams {
    /// SIZE= the client's estimate of the message size (RFC 1870).
    pub size: Option<u64>,
    /// BODY= (RFC 6152).
    pub body: Option<Body>,
    /// SMTPUTF8 given (RFC 6531 3.4).
    pub smtputf8: bool,
}

/// One parsed SMTP command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// EHLO with the client's name (first word of the argument, as sent).
    Ehlo(String),
    /// HELO with the client's name.
    Helo(String),
    /// MAIL FROM; `from` is None for the null reverse-path "<>".
    Mail {
        /// The sender, None for "<>".
        from: Option<Mailbox>,
        /// SIZE, BODY, SMTPUTF8.
        params: MailParams,
    },
    /// RCPT TO (no parameters supported).
    Rcpt {
        /// The recipient; domain "" only for <postmaster>.
        to: Mailbox,
    },
    /// DATA
    Data,
    /// RSET
    Rset,
    /// NOOP (any argument ignored, RFC 5321 4.1.1.9).
    Noop,
    /// QUIT
    Quit,
    /// VRFY with its argument.
    Vrfy(String),
    /// EXPN with its argument.
    Expn(String),
    /// HELP (any argument ignored).
    Help,
    /// STARTTLS (RFC 3207).
    StartTls,
    /// AUTH (RFC 4954).
    Auth {
        /// The SASL mechanism, uppercased.
        mechanism: String,
        /// The initial response: raw base64 text, or "=" for an empty one.
        initial: Option<String>,
    },
    /// An HTTP request line (GET, POST, HEAD, PUT, OPTIONS, CONNECT, ...): a web client on the SMTP port.
    Http,
}

/// Why a command line was refused. `reply()` gives the reply to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandError {
    /// Unknown verb: 500 5.5.2.
    Unknown,
    /// Line longer than `MAX_LINE`: 500 5.5.2.
    TooLong,
    /// Not UTF-8, or NUL/control characters: 501 5.5.2.
    BadChars,
    /// Arguments do not fit the verb; the text says the expected syntax: 501 5.5.4.
    Syntax(&'static str),
    /// Bad MAIL FROM path: 501 5.1.7.
    BadSender(AddressError),
    /// Bad RCPT TO path: 501 5.1.3.
    BadRecipient(AddressError),
    /// A well-formed parameter we do not support (its keyword): 555 5.5.4.
    ParamUnrecognized(String),
    /// A supported parameter with a bad value, or malformed: 501 5.5.4.
    ParamInvalid(&'static str),
}

impl fmt::Display for CommandError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CommandError::Unknown => f.write_str("unknown command"),
            CommandError::TooLong => f.write_str("command line too long"),
            CommandError::BadChars => {
                f.write_str("command contains invalid UTF-8 or control characters")
            }
            CommandError::Syntax(usage) => write!(f, "syntax error: {usage}"),
            CommandError::BadSender(e) => write!(f, "bad sender: {e}"),
            CommandError::BadRecipient(e) => write!(f, "bad recipient: {e}"),
            CommandError::ParamUnrecognized(p) => write!(f, "unsupported parameter {p}"),
            CommandError::ParamInvalid(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for CommandError {}

impl CommandError {
    /// The reply that refuses the command.
    pub fn reply(&self) -> Reply {
        match self {
            CommandError::Unknown => reply::unknown_command(),
            CommandError::TooLong => reply::line_too_long(),
            CommandError::BadChars => reply::syntax("5.5.2", "Invalid characters in command"),
            CommandError::Syntax(usage) => reply::syntax("5.5.4", format!("Syntax: {usage}")),
            CommandError::BadSender(e) => e.sender_reply(),
            CommandError::BadRecipient(e) => e.reply(),
            CommandError::ParamUnrecognized(_) => reply::param_unrecognized(),
            CommandError::ParamInvalid(why) => reply::param_invalid(*why),
        }
    }
}

/// The length limit, CRLF included, for the command on this line: MAIL carries extension
/// parameters, AUTH an initial response (RFC 4954 4: up to 12288 octets); every other command 512.
pub fn line_limit(line: &[u8]) -> usize {
    let verb = line.get(..5).unwrap_or(line);
    if verb.len() == 5 && verb[4] == b' ' {
        if verb[..4].eq_ignore_ascii_case(b"MAIL") {
            return MAX_MAIL_LINE;
        }
        if verb[..4].eq_ignore_ascii_case(b"AUTH") {
            return MAX_AUTH_LINE;
        }
    }
    MAX_LINE
}

/// Parses one command line WITHOUT its line terminator (CRLF or LF already stripped by the caller).
/// Verbs are case-insensitive; trailing spaces are ignored. Non-UTF-8 bytes, NUL or control chars:
/// syntax error (501 5.5.2), never a panic. Non-ASCII in an address is returned as is: the caller
/// checks SMTPUTF8 (`Mailbox::is_ascii`, reply 553 5.6.7).
pub fn parse(line: &[u8]) -> Result<Command, CommandError> {
    // RFC 5321 4.5.3.1.4 (raised by extensions, see line_limit); the terminator is already stripped.
    if line.len() + 2 > line_limit(line) {
        return Err(CommandError::TooLong);
    }
    if line.iter().any(|&c| c < 0x20 || c == 0x7f) {
        return Err(CommandError::BadChars);
    }
    let line = std::str::from_utf8(line).map_err(|_| CommandError::BadChars)?;
    let line = line.trim_end_matches(' ');
    let (verb, arg) = match line.split_once(' ') {
        Some((v, a)) => (v, a.trim_start_matches(' ')),
        None => (line, ""),
    };
    let verb = verb.to_ascii_uppercase();
    match verb.as_str() {
        "EHLO" => Ok(Command::Ehlo(hostname(arg, "EHLO hostname")?)),
        "HELO" => Ok(Command::Helo(hostname(arg, "HELO hostname")?)),
        "MAIL" => parse_mail(arg),
        "RCPT" => parse_rcpt(arg),
        "DATA" => no_arg(arg, Command::Data, "DATA (no arguments)"),
        "RSET" => no_arg(arg, Command::Rset, "RSET (no arguments)"),
        "QUIT" => no_arg(arg, Command::Quit, "QUIT (no arguments)"),
        "STARTTLS" => no_arg(arg, Command::StartTls, "STARTTLS (no arguments)"),
        "NOOP" => Ok(Command::Noop),
        "HELP" => Ok(Command::Help),
        "VRFY" if arg.is_empty() => Err(CommandError::Syntax("VRFY address")),
        "VRFY" => Ok(Command::Vrfy(arg.to_string())),
        "EXPN" if arg.is_empty() => Err(CommandError::Syntax("EXPN list")),
        "EXPN" => Ok(Command::Expn(arg.to_string())),
        "AUTH" => parse_auth(arg),
        "GET" | "POST" | "HEAD" | "PUT" | "OPTIONS" | "CONNECT" | "DELETE" | "PATCH" | "TRACE" => {
            Ok(Command::Http)
        }
        _ => Err(CommandError::Unknown),
    }
}

/// The argument of EHLO/HELO: its first word, required (RFC 5321 4.1.1.1).
fn hostname(arg: &str, usage: &'static str) -> Result<String, CommandError> {
    match arg.split(' ').next() {
        Some(h) if !h.is_empty() => Ok(h.to_string()),
        _ => Err(CommandError::Syntax(usage)),
    }
}

fn no_arg(arg: &str, cmd: Command, usage: &'static str) -> Result<Command, CommandError> {
    if arg.is_empty() {
        Ok(cmd)
    } else {
        Err(CommandError::Syntax(usage))
    }
}

/// Strips a case-insensitive ASCII prefix without slicing inside a UTF-8 sequence.
fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let n = prefix.len();
    if s.len() >= n && s.as_bytes()[..n].eq_ignore_ascii_case(prefix.as_bytes()) {
        // The first n bytes are ASCII (they matched an ASCII prefix), so n is a char boundary.
        s.get(n..)
    } else {
        None
    }
}

/// Splits the text after the path into parameters: "" or SP esmtp-param *(SP esmtp-param) (RFC 5321 4.1.2).
fn params<'a>(
    rest: &'a str,
    usage: &'static str,
) -> Result<Vec<(String, Option<&'a str>)>, CommandError> {
    if rest.is_empty() {
        return Ok(Vec::new());
    }
    if !rest.starts_with(' ') {
        return Err(CommandError::Syntax(usage));
    }
    let mut out = Vec::new();
    for p in rest.split(' ').filter(|p| !p.is_empty()) {
        let (key, value) = match p.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (p, None),
        };
        // esmtp-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-")
        let kb = key.as_bytes();
        let key_ok = kb.first().is_some_and(|c| c.is_ascii_alphanumeric())
            && kb.iter().all(|&c| c.is_ascii_alphanumeric() || c == b'-');
        // esmtp-value = 1*(%d33-60 / %d62-126), plus UTF-8 (RFC 6531 3.3)
        let value_ok = !matches!(value, Some(v) if v.is_empty() || v.contains('='));
        if !key_ok || !value_ok {
            return Err(CommandError::ParamInvalid("Malformed MAIL/RCPT parameter"));
        }
        out.push((key.to_ascii_uppercase(), value));
    }
    Ok(out)
}

const MAIL_USAGE: &str = "MAIL FROM:<address> [SIZE=n] [BODY=7BIT|8BITMIME] [SMTPUTF8]";
const RCPT_USAGE: &str = "RCPT TO:<address>";

fn parse_mail(arg: &str) -> Result<Command, CommandError> {
    let path = strip_prefix_ci(arg, "FROM:").ok_or(CommandError::Syntax(MAIL_USAGE))?;
    let (from, rest) = parse_path(path).map_err(CommandError::BadSender)?;
    if let Some(m) = &from {
        // <postmaster> without a domain is only a recipient (RFC 5321 4.5.1).
        if m.domain.is_empty() {
            return Err(CommandError::BadSender(AddressError::MissingDomain));
        }
    }
    let mut p = MailParams::default();
    let mut seen_auth = false;
    for (key, value) in params(rest, MAIL_USAGE)? {
        match (key.as_str(), value) {
            ("SIZE", Some(v)) => {
                if p.size.is_some() {
                    return Err(CommandError::ParamInvalid("SIZE given twice"));
                }
                // RFC 1870 3: size-value ::= 1*20DIGIT
                if v.len() > 20 || !v.bytes().all(|c| c.is_ascii_digit()) {
                    return Err(CommandError::ParamInvalid("SIZE value must be a number"));
                }
                // Twenty digits can exceed u64: such a message is too big for any limit, which
                // is RFC 1870's 552 at MAIL, not a syntax error.
                p.size = Some(v.parse::<u64>().unwrap_or(u64::MAX));
            }
            ("SIZE", None) => return Err(CommandError::ParamInvalid("SIZE needs a value")),
            ("BODY", v) => {
                if p.body.is_some() {
                    return Err(CommandError::ParamInvalid("BODY given twice"));
                }
                // RFC 6152 2: BODY=7BIT / BODY=8BITMIME
                p.body = Some(match v {
                    Some(v) if v.eq_ignore_ascii_case("7BIT") => Body::SevenBit,
                    Some(v) if v.eq_ignore_ascii_case("8BITMIME") => Body::EightBitMime,
                    _ => return Err(CommandError::ParamInvalid("BODY must be 7BIT or 8BITMIME")),
                });
            }
            ("SMTPUTF8", None) => {
                if p.smtputf8 {
                    return Err(CommandError::ParamInvalid("SMTPUTF8 given twice"));
                }
                p.smtputf8 = true;
            }
            // RFC 6531 3.4: SMTPUTF8 takes no value.
            ("SMTPUTF8", Some(_)) => {
                return Err(CommandError::ParamInvalid("SMTPUTF8 takes no value"))
            }
            // RFC 4954 5: a server offering AUTH must accept AUTH= on MAIL. We relay to one
            // smarthost that authenticates us, so the value (an xtext mailbox or "<>") is dropped.
            ("AUTH", Some(_)) if !seen_auth => seen_auth = true,
            ("AUTH", _) => return Err(CommandError::ParamInvalid("Bad AUTH parameter")),
            _ => return Err(CommandError::ParamUnrecognized(key)),
        }
    }
    Ok(Command::Mail { from, params: p })
}

fn parse_rcpt(arg: &str) -> Result<Command, CommandError> {
    let path = strip_prefix_ci(arg, "TO:").ok_or(CommandError::Syntax(RCPT_USAGE))?;
    let (to, rest) = parse_path(path).map_err(CommandError::BadRecipient)?;
    let to = to.ok_or(CommandError::BadRecipient(AddressError::NullNotAllowed))?;
    // We advertise no RCPT parameter (no DSN), so any is unrecognised (RFC 5321 4.1.1.11).
    if let Some((key, _)) = params(rest, RCPT_USAGE)?.into_iter().next() {
        return Err(CommandError::ParamUnrecognized(key));
    }
    Ok(Command::Rcpt { to })
}

/// AUTH mechanism [initial-response] (RFC 4954 4); sasl-mech = 1*20 (UPPER-ALPHA / DIGIT / "-" / "_").
fn parse_auth(arg: &str) -> Result<Command, CommandError> {
    const USAGE: &str = "AUTH mechanism [initial-response]";
    let mut words = arg.split(' ').filter(|w| !w.is_empty());
    let mechanism = words.next().ok_or(CommandError::Syntax(USAGE))?;
    let initial = words.next();
    if words.next().is_some()
        || mechanism.len() > 20
        || !mechanism
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
    {
        return Err(CommandError::Syntax(USAGE));
    }
    Ok(Command::Auth {
        mechanism: mechanism.to_ascii_uppercase(),
        initial: initial.map(str::to_string),
    })
}

/// Result of looking for the next command line in a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineScan {
    /// A line: `buf[..end]` is its text without terminator, `next` the index after the terminator.
    Line {
        /// End of the line's text (before CR LF or LF).
        end: usize,
        /// Index of the first byte after the line terminator.
        next: usize,
    },
    /// No terminator yet and fewer than `max` bytes: read more.
    NeedMore,
    /// No terminator within `max` bytes.
    TooLong,
}

/// Finds the next command line in `buf` (terminated by CRLF or a bare LF; a trailing CR before LF is stripped).
/// Returns Line(len_without_terminator, consumed) or NeedMore, or TooLong when no terminator within `max`
/// bytes, the terminator included (RFC 5321 4.5.3.1.4). The caller then discards up to the next LF
/// (`skip_line`) and replies 500 5.5.2 so the session stays in sync.
pub fn scan_line(buf: &[u8], max: usize) -> LineScan {
    let window = &buf[..buf.len().min(max)];
    match window.iter().position(|&c| c == b'\n') {
        Some(lf) => {
            let end = if lf > 0 && buf[lf - 1] == b'\r' {
                lf - 1
            } else {
                lf
            };
            LineScan::Line { end, next: lf + 1 }
        }
        None if buf.len() >= max => LineScan::TooLong,
        None => LineScan::NeedMore,
    }
}

/// After `TooLong`: the number of bytes to drop to get past the next LF, or None when `buf`
/// holds no LF (drop it all and keep discarding).
pub fn skip_line(buf: &[u8]) -> Option<usize> {
    buf.iter().position(|&c| c == b'\n').map(|i| i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mb(local: &str, domain: &str) -> Mailbox {
        Mailbox {
            local: local.into(),
            domain: domain.into(),
        }
    }

    fn mail(from: Option<Mailbox>, size: Option<u64>, body: Option<Body>, utf8: bool) -> Command {
        Command::Mail {
            from,
            params: MailParams {
                size,
                body,
                smtputf8: utf8,
            },
        }
    }

    #[test]
    fn parse_ok() {
        let cases: Vec<(&[u8], Command)> = vec![
            (
                b"EHLO client.example",
                Command::Ehlo("client.example".into()),
            ),
            (
                b"ehlo client.example",
                Command::Ehlo("client.example".into()),
            ),
            (b"EhLo [192.0.2.1]", Command::Ehlo("[192.0.2.1]".into())),
            (b"EHLO  host extra ", Command::Ehlo("host".into())),
            (b"HELO h", Command::Helo("h".into())),
            (b"helo h", Command::Helo("h".into())),
            (
                b"MAIL FROM:<a@b>",
                mail(Some(mb("a", "b")), None, None, false),
            ),
            (
                b"mail from:<a@b>",
                mail(Some(mb("a", "b")), None, None, false),
            ),
            (
                b"MAIL FROM: <a@b>",
                mail(Some(mb("a", "b")), None, None, false),
            ),
            (b"MAIL FROM:<>", mail(None, None, None, false)),
            (b"MAIL FROM:<> SIZE=0", mail(None, Some(0), None, false)),
            (
                b"MAIL FROM:<> SIZE=99999999999999999999",
                mail(None, Some(u64::MAX), None, false),
            ),
            (
                b"MAIL FROM:<a@b> SIZE=12345 BODY=8BITMIME SMTPUTF8",
                mail(
                    Some(mb("a", "b")),
                    Some(12345),
                    Some(Body::EightBitMime),
                    true,
                ),
            ),
            (
                b"MAIL FROM:<a@b> size=18446744073709551615 body=7bit smtputf8",
                mail(
                    Some(mb("a", "b")),
                    Some(u64::MAX),
                    Some(Body::SevenBit),
                    true,
                ),
            ),
            (
                b"MAIL FROM:<a@b>  SIZE=1  ",
                mail(Some(mb("a", "b")), Some(1), None, false),
            ),
            (
                b"MAIL FROM:<a@b> AUTH=<>",
                mail(Some(mb("a", "b")), None, None, false),
            ),
            (
                b"MAIL FROM:<a@b> AUTH=x+2By@z",
                mail(Some(mb("a", "b")), None, None, false),
            ),
            (
                "MAIL FROM:<jörg@bücher.de> SMTPUTF8".as_bytes(),
                mail(Some(mb("jörg", "bücher.de")), None, None, true),
            ),
            (
                b"MAIL FROM:<\"john doe\"@[IPv6:::1]>",
                mail(Some(mb("\"john doe\"", "[IPv6:::1]")), None, None, false),
            ),
            (
                b"MAIL FROM:<@r1,@r2:u@d>",
                mail(Some(mb("u", "d")), None, None, false),
            ),
            (b"RCPT TO:<a@b>", Command::Rcpt { to: mb("a", "b") }),
            (b"rcpt to: <a@b>", Command::Rcpt { to: mb("a", "b") }),
            (
                b"RCPT TO:<Postmaster>",
                Command::Rcpt {
                    to: mb("Postmaster", ""),
                },
            ),
            (
                b"RCPT TO:<a@[10.0.0.1]>",
                Command::Rcpt {
                    to: mb("a", "[10.0.0.1]"),
                },
            ),
            (b"DATA", Command::Data),
            (b"data", Command::Data),
            (b"DATA ", Command::Data),
            (b"RSET", Command::Rset),
            (b"NOOP", Command::Noop),
            (b"noop anything here", Command::Noop),
            (b"QUIT", Command::Quit),
            (b"quit", Command::Quit),
            (b"VRFY root", Command::Vrfy("root".into())),
            (b"EXPN staff", Command::Expn("staff".into())),
            (b"HELP", Command::Help),
            (b"HELP MAIL", Command::Help),
            (b"STARTTLS", Command::StartTls),
            (b"starttls", Command::StartTls),
            (
                b"AUTH PLAIN",
                Command::Auth {
                    mechanism: "PLAIN".into(),
                    initial: None,
                },
            ),
            (
                b"auth plain AGFsaWNlAHNlY3JldA==",
                Command::Auth {
                    mechanism: "PLAIN".into(),
                    initial: Some("AGFsaWNlAHNlY3JldA==".into()),
                },
            ),
            (
                b"AUTH LOGIN =",
                Command::Auth {
                    mechanism: "LOGIN".into(),
                    initial: Some("=".into()),
                },
            ),
            (
                b"AUTH CRAM-MD5",
                Command::Auth {
                    mechanism: "CRAM-MD5".into(),
                    initial: None,
                },
            ),
            (b"GET / HTTP/1.1", Command::Http),
            (b"POST /x HTTP/1.0", Command::Http),
            (b"HEAD / HTTP/1.1", Command::Http),
            (b"PUT / HTTP/1.1", Command::Http),
            (b"OPTIONS * HTTP/1.1", Command::Http),
            (b"CONNECT mail.example:25 HTTP/1.1", Command::Http),
        ];
        for (line, want) in cases {
            assert_eq!(parse(line), Ok(want), "{:?}", String::from_utf8_lossy(line));
        }
    }

    #[test]
    fn parse_errors() {
        let long_line = [b"NOOP ".as_slice(), &[b'x'; MAX_LINE]].concat();
        let long_local = format!("MAIL FROM:<{}@b>", "a".repeat(65));
        let long_domain = format!(
            "RCPT TO:<a@{}.{}.{}.{}.x>",
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(63),
            "e".repeat(63)
        );
        let long_path = format!(
            "RCPT TO:<{}@{}.{}.{}.{}>",
            "a".repeat(60),
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(63),
            "e".repeat(10)
        );
        use AddressError as A;
        use CommandError as E;
        let cases: Vec<(&[u8], CommandError, u16, &str)> = vec![
            (b"", E::Unknown, 500, "5.5.2"),
            (b"FOO", E::Unknown, 500, "5.5.2"),
            (b"BDAT 10 LAST", E::Unknown, 500, "5.5.2"),
            (b" MAIL FROM:<a@b>", E::Unknown, 500, "5.5.2"),
            (b"MAILFROM:<a@b>", E::Unknown, 500, "5.5.2"),
            (&long_line, E::TooLong, 500, "5.5.2"),
            (b"HELO h\0", E::BadChars, 501, "5.5.2"),
            (b"HELO h\x7f", E::BadChars, 501, "5.5.2"),
            (b"HELO h\tx", E::BadChars, 501, "5.5.2"),
            (b"HELO h\r", E::BadChars, 501, "5.5.2"),
            (b"HELO \xff\xfe", E::BadChars, 501, "5.5.2"),
            (b"MAIL FROM:<\xc3@b>", E::BadChars, 501, "5.5.2"),
            (b"EHLO", E::Syntax("EHLO hostname"), 501, "5.5.4"),
            (b"HELO ", E::Syntax("HELO hostname"), 501, "5.5.4"),
            (b"MAIL", E::Syntax(MAIL_USAGE), 501, "5.5.4"),
            (b"MAIL TO:<a@b>", E::Syntax(MAIL_USAGE), 501, "5.5.4"),
            (
                b"MAIL FROM:<a@b>SIZE=1",
                E::Syntax(MAIL_USAGE),
                501,
                "5.5.4",
            ),
            (b"RCPT FROM:<a@b>", E::Syntax(RCPT_USAGE), 501, "5.5.4"),
            (b"RCPT", E::Syntax(RCPT_USAGE), 501, "5.5.4"),
            (b"DATA x", E::Syntax("DATA (no arguments)"), 501, "5.5.4"),
            (b"QUIT now", E::Syntax("QUIT (no arguments)"), 501, "5.5.4"),
            (b"RSET x", E::Syntax("RSET (no arguments)"), 501, "5.5.4"),
            (
                b"STARTTLS x",
                E::Syntax("STARTTLS (no arguments)"),
                501,
                "5.5.4",
            ),
            (b"VRFY", E::Syntax("VRFY address"), 501, "5.5.4"),
            (b"EXPN", E::Syntax("EXPN list"), 501, "5.5.4"),
            (
                b"AUTH",
                E::Syntax("AUTH mechanism [initial-response]"),
                501,
                "5.5.4",
            ),
            (
                b"AUTH PLAIN a b",
                E::Syntax("AUTH mechanism [initial-response]"),
                501,
                "5.5.4",
            ),
            (
                b"AUTH PL@IN",
                E::Syntax("AUTH mechanism [initial-response]"),
                501,
                "5.5.4",
            ),
            (
                b"MAIL FROM:a@b",
                E::BadSender(A::NoOpenBracket),
                501,
                "5.1.7",
            ),
            (
                b"MAIL FROM:<postmaster>",
                E::BadSender(A::MissingDomain),
                501,
                "5.1.7",
            ),
            (
                b"MAIL FROM:<a@b..c>",
                E::BadSender(A::BadDomain),
                501,
                "5.1.7",
            ),
            (
                long_local.as_bytes(),
                E::BadSender(A::LocalTooLong),
                501,
                "5.1.7",
            ),
            (
                b"RCPT TO:<>",
                E::BadRecipient(A::NullNotAllowed),
                501,
                "5.1.3",
            ),
            (
                b"RCPT TO:<a>",
                E::BadRecipient(A::MissingDomain),
                501,
                "5.1.3",
            ),
            (
                b"RCPT TO:<a@[1.2.3.999]>",
                E::BadRecipient(A::BadLiteral),
                501,
                "5.1.3",
            ),
            (
                long_domain.as_bytes(),
                E::BadRecipient(A::DomainTooLong),
                501,
                "5.1.3",
            ),
            (
                long_path.as_bytes(),
                E::BadRecipient(A::PathTooLong),
                501,
                "5.1.3",
            ),
            (
                b"MAIL FROM:<a@b> FOO=1",
                E::ParamUnrecognized("FOO".into()),
                555,
                "5.5.4",
            ),
            (
                b"MAIL FROM:<a@b> RET=HDRS",
                E::ParamUnrecognized("RET".into()),
                555,
                "5.5.4",
            ),
            (
                b"MAIL FROM:<a@b> SIZE=1 X-Y",
                E::ParamUnrecognized("X-Y".into()),
                555,
                "5.5.4",
            ),
            (
                b"RCPT TO:<a@b> NOTIFY=NEVER",
                E::ParamUnrecognized("NOTIFY".into()),
                555,
                "5.5.4",
            ),
            (
                b"RCPT TO:<a@b> SIZE=1",
                E::ParamUnrecognized("SIZE".into()),
                555,
                "5.5.4",
            ),
            (
                b"MAIL FROM:<a@b> SIZE=abc",
                E::ParamInvalid("SIZE value must be a number"),
                501,
                "5.5.4",
            ),
            (
                b"MAIL FROM:<a@b> SIZE=-1",
                E::ParamInvalid("SIZE value must be a number"),
                501,
                "5.5.4",
            ),
            (
                b"MAIL FROM:<a@b> SIZE=1.5",
                E::ParamInvalid("SIZE value must be a number"),
                501,
                "5.5.4",
            ),
            (
                b"MAIL FROM:<a@b> SIZE=123456789012345678901",
                E::ParamInvalid("SIZE value must be a number"),
                501,
                "5.5.4",
            ),
            (
                b"MAIL FROM:<a@b> SIZE",
                E::ParamInvalid("SIZE needs a value"),
                501,
                "5.5.4",
            ),
            (
                b"MAIL FROM:<a@b> SIZE=",
                E::ParamInvalid("Malformed MAIL/RCPT parameter"),
                501,
                "5.5.4",
            ),
            (
                b"MAIL FROM:<a@b> SIZE=1 SIZE=2",
                E::ParamInvalid("SIZE given twice"),
                501,
                "5.5.4",
            ),
            (
                b"MAIL FROM:<a@b> BODY=BINARYMIME",
                E::ParamInvalid("BODY must be 7BIT or 8BITMIME"),
                501,
                "5.5.4",
            ),
            (
                b"MAIL FROM:<a@b> BODY",
                E::ParamInvalid("BODY must be 7BIT or 8BITMIME"),
                501,
                "5.5.4",
            ),
            (
                b"MAIL FROM:<a@b> SMTPUTF8=yes",
                E::ParamInvalid("SMTPUTF8 takes no value"),
                501,
                "5.5.4",
            ),
            (
                b"MAIL FROM:<a@b> =x",
                E::ParamInvalid("Malformed MAIL/RCPT parameter"),
                501,
                "5.5.4",
            ),
            (
                b"MAIL FROM:<a@b> -X",
                E::ParamInvalid("Malformed MAIL/RCPT parameter"),
                501,
                "5.5.4",
            ),
            (
                b"MAIL FROM:<a@b> A=b=c",
                E::ParamInvalid("Malformed MAIL/RCPT parameter"),
                501,
                "5.5.4",
            ),
        ];
        for (line, want, code, status) in cases {
            let got = parse(line);
            assert_eq!(
                got,
                Err(want.clone()),
                "{:?}",
                String::from_utf8_lossy(line)
            );
            let r = want.reply();
            assert_eq!((r.code, r.status), (code, status), "{want:?}");
            assert!(!want.to_string().is_empty());
        }
    }

    #[test]
    fn parse_never_panics() {
        let seeds: &[&[u8]] = &[
            "MAIL FROM:<jörg@bücher.de> SIZE=10 BODY=8BITMIME SMTPUTF8".as_bytes(),
            "RCPT TO:<\"ü\\\"x\"@[IPv6:::1]>".as_bytes(),
            "AUTH PLAIN ä=".as_bytes(),
            "EHLO ü".as_bytes(),
        ];
        for s in seeds {
            for i in 0..=s.len() {
                let _ = parse(&s[..i]);
                let _ = parse(&s[i..]);
                let mut m = s.to_vec();
                if i < m.len() {
                    m[i] ^= 0x80;
                    let _ = parse(&m);
                }
            }
        }
    }

    #[test]
    fn scan_lines() {
        let cases: Vec<(&[u8], usize, LineScan)> = vec![
            (b"QUIT\r\n", 512, LineScan::Line { end: 4, next: 6 }),
            (b"QUIT\n", 512, LineScan::Line { end: 4, next: 5 }),
            (b"QUIT\r\nNOOP\r\n", 512, LineScan::Line { end: 4, next: 6 }),
            (b"\r\n", 512, LineScan::Line { end: 0, next: 2 }),
            (b"\n", 512, LineScan::Line { end: 0, next: 1 }),
            (b"QU\rIT\n", 512, LineScan::Line { end: 5, next: 6 }),
            (b"QUIT\r\r\n", 512, LineScan::Line { end: 5, next: 7 }),
            (b"", 512, LineScan::NeedMore),
            (b"QUIT", 512, LineScan::NeedMore),
            (b"QUIT\r", 512, LineScan::NeedMore),
            // Exactly max with the CRLF: fits (RFC 5321 4.5.3.1.4 counts the CRLF).
            (b"abcd\r\n", 6, LineScan::Line { end: 4, next: 6 }),
            (b"abcde\n", 6, LineScan::Line { end: 5, next: 6 }),
            (b"abcde\r\n", 6, LineScan::TooLong),
            (b"abcdef", 6, LineScan::TooLong),
            (b"abcde", 6, LineScan::NeedMore),
            (b"abcdefgh\n", 6, LineScan::TooLong),
        ];
        for (buf, max, want) in cases {
            assert_eq!(
                scan_line(buf, max),
                want,
                "{:?}",
                String::from_utf8_lossy(buf)
            );
        }
        let cases: Vec<(&[u8], Option<usize>)> = vec![
            (b"xxxx", None),
            (b"xx\nQUIT\r\n", Some(3)),
            (b"\n", Some(1)),
        ];
        for (buf, want) in cases {
            assert_eq!(skip_line(buf), want);
        }
    }
}
