//! The spool file format (version 2; version 1 files, written before, are still read):
//! ```text
//! picorelay-spool 2
//! length: 00000000000000004396       (the message bytes after the blank line; fixed width)
//! id: 0005f3c2a1b2c3000004d200000007
//! sender: alice@example.com
//! client: 192.0.2.7
//! helo: mx.example.com
//! arrival: 1700000000
//! auth-user: alice                      (only when set)
//! eight-bit: no
//! smtputf8: no
//! attempts: 0
//! next-attempt: 0
//! last-error: 451 4.3.0 try later       (only when set)
//! bounced: no
//! rcpt: pending to=bob@example.com orig=root reply=250%202.1.5%20ok   (one per recipient, in order)
//!
//! <message bytes exactly as received, CRLF>
//! <anything: ignored>
//! ```
//! Header lines end in LF. Values are percent-encoded (`%`, control characters and, inside `rcpt:` tokens,
//! spaces) so no value can contain CR or LF; UTF-8 is kept as is so `queue show` stays readable.
//! `orig=` and `reply=` are present only when set.
//!
//! `length` says where the message ends, so a file may be longer than its message: the spool reuses the file
//! of a delivered message in place (see `spares.rs`) and leaves whatever lies past the new message. It is
//! written last, over a placeholder, once the message is complete; a file shorter than its header says is
//! corrupt (truncated), never delivered short. Version 1 has no `length`: the message runs to the end of the
//! file.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use super::{io_err, Envelope, RcptState, Recipient, SpoolError};

/// First line of every spool file; the number is the format version.
const MAGIC: &str = "picorelay-spool";
/// The format version this build writes; it reads this one and 1.
const VERSION: u32 = 2;
/// Digits of the `length` value: fixed, so it can be written over its placeholder in place.
const LENGTH_WIDTH: usize = 20;
/// Largest envelope header accepted, blank line included. Bounds memory when reading a hostile or broken file;
/// the writer enforces it too, so anything written can be read back.
pub const MAX_HEADER: usize = 1024 * 1024;
/// Most recipients accepted in one envelope (far above server.max_recipients' default of 100;
/// RFC 5321 4.5.3.1.8 only requires 100). Enforced by writer and parser alike.
pub const MAX_RECIPIENTS: usize = 10_000;
/// `reply` and `last_error` are informational: longer texts are cut (at a char boundary) when written.
pub const MAX_TEXT: usize = 2000;

/// Percent-encodes `%`, control characters (CR and LF among them) and, when `space` is set, spaces.
fn escape(s: &str, space: bool, out: &mut String) {
    for c in s.chars() {
        if c == '%' || c.is_control() || (space && c == ' ') {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("%{b:02X}"));
            }
        } else {
            out.push(c);
        }
    }
}

/// Reverses `escape`; None on a malformed escape or when the result is not UTF-8.
fn unescape(s: &str) -> Option<String> {
    if !s.contains('%') {
        return Some(s.to_string());
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Cuts `s` to at most MAX_TEXT bytes at a char boundary.
fn clip(s: &str) -> &str {
    if s.len() <= MAX_TEXT {
        return s;
    }
    let mut end = MAX_TEXT;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Parses a decimal number strictly (digits only, no sign, no spaces).
fn parse_num<T: std::str::FromStr>(s: &str) -> Option<T> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "yes" => Some(true),
        "no" => Some(false),
        _ => None,
    }
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

/// A parsed envelope header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub env: Envelope,
    /// Offset of the first message byte (the header's length).
    pub body_at: u64,
    /// The message's length; None in a version 1 file (the message runs to the end of the file).
    pub length: Option<u64>,
}

impl Header {
    /// The message's length in a file of `file_size` bytes; Corrupt when the file is shorter than that.
    pub fn message_len(&self, file_size: u64) -> Result<u64, SpoolError> {
        let room = file_size.saturating_sub(self.body_at);
        match self.length {
            None => Ok(room),
            Some(n) if n <= room => Ok(n),
            Some(n) => Err(SpoolError::Corrupt(format!(
                "truncated: the header says {n} message bytes, the file holds {room}"
            ))),
        }
    }
}

/// Where the `length` value starts in a file this build writes: it is written over its placeholder there
/// once the message is complete.
pub fn length_offset() -> u64 {
    format!("{MAGIC} {VERSION}\nlength: ").len() as u64
}

/// The `length` value as written: LENGTH_WIDTH digits.
pub fn length_value(n: u64) -> String {
    format!("{n:0LENGTH_WIDTH$}")
}

/// Serialises the envelope header (magic line through the blank line) for `env`, with `env.id` as id and
/// `length` as the message's length (0 as a placeholder when it is not known yet). `reply` and `last_error`
/// are cut to MAX_TEXT. Fails when the envelope exceeds MAX_RECIPIENTS or MAX_HEADER, so nothing is ever
/// written that `parse_header` would refuse.
pub fn format_header(env: &Envelope, length: u64) -> Result<Vec<u8>, SpoolError> {
    if env.recipients.len() > MAX_RECIPIENTS {
        return Err(SpoolError::Io(format!(
            "envelope has {} recipients, the spool stores at most {MAX_RECIPIENTS}",
            env.recipients.len()
        )));
    }
    let mut s = format!("{MAGIC} {VERSION}\nlength: {}\n", length_value(length));
    let mut line = |key: &str, value: &str| {
        s.push_str(key);
        s.push_str(": ");
        escape(value, false, &mut s);
        s.push('\n');
    };
    line("id", &env.id);
    line("sender", &env.sender);
    line("client", &env.client);
    line("helo", &env.helo);
    line("arrival", &env.arrival.to_string());
    if let Some(user) = &env.auth_user {
        line("auth-user", user);
    }
    line("eight-bit", yes_no(env.eight_bit));
    line("smtputf8", yes_no(env.smtputf8));
    line("attempts", &env.attempts.to_string());
    line("next-attempt", &env.next_attempt.to_string());
    if let Some(err) = &env.last_error {
        line("last-error", clip(err));
    }
    line("bounced", yes_no(env.bounced));
    for r in &env.recipients {
        s.push_str("rcpt: ");
        s.push_str(r.state.as_str());
        s.push_str(" to=");
        escape(&r.addr, true, &mut s);
        if let Some(orig) = &r.orig {
            s.push_str(" orig=");
            escape(orig, true, &mut s);
        }
        if let Some(reply) = &r.reply {
            s.push_str(" reply=");
            escape(clip(reply), true, &mut s);
        }
        s.push('\n');
    }
    s.push('\n');
    if s.len() > MAX_HEADER {
        return Err(SpoolError::Io(format!(
            "envelope of {} bytes is larger than the spool's limit of {MAX_HEADER}",
            s.len()
        )));
    }
    Ok(s.into_bytes())
}

/// Parses one `rcpt:` value: "STATE to=ADDR [orig=X] [reply=Y]".
fn parse_rcpt(value: &str) -> Result<Recipient, String> {
    let mut tokens = value.split(' ');
    let state = tokens
        .next()
        .and_then(RcptState::parse)
        .ok_or("rcpt: unknown state")?;
    let (mut addr, mut orig, mut reply) = (None, None, None);
    for token in tokens {
        let (key, raw) = token.split_once('=').ok_or("rcpt: token without '='")?;
        let slot = match key {
            "to" => &mut addr,
            "orig" => &mut orig,
            "reply" => &mut reply,
            _ => return Err(format!("rcpt: unknown field {:?}", clip(key))),
        };
        if slot.is_some() {
            return Err(format!("rcpt: duplicate field {key}"));
        }
        *slot = Some(unescape(raw).ok_or("rcpt: bad escape")?);
    }
    Ok(Recipient {
        addr: addr.ok_or("rcpt: missing to=")?,
        orig,
        state,
        reply,
    })
}

/// Parses an envelope header from the start of a spool file (`data` may hold the whole file or just a
/// prefix). Never panics, whatever the bytes; refuses unknown format versions, unknown or duplicate keys, a
/// version 2 header without `length`, headers over MAX_HEADER and more than MAX_RECIPIENTS recipients.
pub fn parse_header(data: &[u8]) -> Result<Header, SpoolError> {
    parse_header_inner(data).map_err(SpoolError::Corrupt)
}

fn parse_header_inner(data: &[u8]) -> Result<Header, String> {
    let data = &data[..data.len().min(MAX_HEADER)];
    let mut pos = 0;
    let mut next_line = || -> Result<&str, String> {
        let rest = &data[pos..];
        let nl = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or(format!("no end of envelope within {MAX_HEADER} bytes"))?;
        pos += nl + 1;
        let line = std::str::from_utf8(&rest[..nl]).map_err(|_| "envelope is not UTF-8")?;
        if line.chars().any(char::is_control) {
            return Err("control character in envelope".to_string());
        }
        Ok(line)
    };

    let first = next_line()?;
    let version = first
        .strip_prefix(MAGIC)
        .and_then(|v| v.strip_prefix(' '))
        .ok_or("not a picorelay spool file")?;
    let version = match parse_num::<u32>(version) {
        Some(v @ (1 | VERSION)) => v,
        _ => return Err(format!("unsupported format version {:?}", clip(version))),
    };

    let mut id = None;
    let mut sender = None;
    let mut client = None;
    let mut helo = None;
    let mut arrival = None;
    let mut auth_user = None;
    let mut eight_bit = None;
    let mut smtputf8 = None;
    let mut attempts = None;
    let mut next_attempt = None;
    let mut last_error = None;
    let mut bounced = None;
    let mut length = None;
    let mut recipients = Vec::new();
    loop {
        let line = next_line()?;
        if line.is_empty() {
            break;
        }
        let (key, value) = line.split_once(':').ok_or("envelope line without ':'")?;
        let value = value.strip_prefix(' ').unwrap_or(value);
        if key == "rcpt" {
            if recipients.len() >= MAX_RECIPIENTS {
                return Err(format!("more than {MAX_RECIPIENTS} recipients"));
            }
            recipients.push(parse_rcpt(value)?);
            continue;
        }
        let bad = || format!("bad value for {key}");
        fn set<T>(slot: &mut Option<T>, v: T, key: &str) -> Result<(), String> {
            if slot.is_some() {
                return Err(format!("duplicate key {key}"));
            }
            *slot = Some(v);
            Ok(())
        }
        match key {
            "id" => set(&mut id, unescape(value).ok_or_else(bad)?, key)?,
            "sender" => set(&mut sender, unescape(value).ok_or_else(bad)?, key)?,
            "client" => set(&mut client, unescape(value).ok_or_else(bad)?, key)?,
            "helo" => set(&mut helo, unescape(value).ok_or_else(bad)?, key)?,
            "auth-user" => set(&mut auth_user, unescape(value).ok_or_else(bad)?, key)?,
            "last-error" => set(&mut last_error, unescape(value).ok_or_else(bad)?, key)?,
            "arrival" => set(&mut arrival, parse_num(value).ok_or_else(bad)?, key)?,
            "attempts" => set(&mut attempts, parse_num(value).ok_or_else(bad)?, key)?,
            "next-attempt" => set(&mut next_attempt, parse_num(value).ok_or_else(bad)?, key)?,
            "eight-bit" => set(&mut eight_bit, parse_bool(value).ok_or_else(bad)?, key)?,
            "smtputf8" => set(&mut smtputf8, parse_bool(value).ok_or_else(bad)?, key)?,
            "bounced" => set(&mut bounced, parse_bool(value).ok_or_else(bad)?, key)?,
            "length" if version >= 2 => set(&mut length, parse_num(value).ok_or_else(bad)?, key)?,
            _ => return Err(format!("unknown key {:?}", clip(key))),
        }
    }
    let missing = |key: &str| format!("missing key {key}");
    let env = Envelope {
        id: id.ok_or_else(|| missing("id"))?,
        sender: sender.ok_or_else(|| missing("sender"))?,
        recipients,
        client: client.ok_or_else(|| missing("client"))?,
        helo: helo.ok_or_else(|| missing("helo"))?,
        arrival: arrival.ok_or_else(|| missing("arrival"))?,
        auth_user,
        eight_bit: eight_bit.ok_or_else(|| missing("eight-bit"))?,
        smtputf8: smtputf8.ok_or_else(|| missing("smtputf8"))?,
        attempts: attempts.ok_or_else(|| missing("attempts"))?,
        next_attempt: next_attempt.ok_or_else(|| missing("next-attempt"))?,
        last_error,
        bounced: bounced.ok_or_else(|| missing("bounced"))?,
    };
    if version >= 2 && length.is_none() {
        return Err(missing("length"));
    }
    Ok(Header {
        env,
        body_at: pos as u64,
        length,
    })
}

/// Reads the header of an open spool file (at most MAX_HEADER bytes, line by line) and parses it.
/// The reader is left at the first message byte.
pub fn read_header(reader: &mut BufReader<File>, path: &Path) -> Result<Header, SpoolError> {
    let mut buf = Vec::new();
    loop {
        let room = (MAX_HEADER - buf.len()) as u64;
        let n = reader
            .by_ref()
            .take(room)
            .read_until(b'\n', &mut buf)
            .map_err(|e| io_err(&e, "cannot read", path))?;
        let line_start = buf.len() - n;
        if n == 0 || buf.len() >= MAX_HEADER || &buf[line_start..] == b"\n" {
            break;
        }
    }
    parse_header(&buf)
        .map_err(|e| SpoolError::Corrupt(format!("{}: {}", path.display(), inner(&e))))
}

/// The reason text of a Corrupt error (to re-wrap it with a path).
pub(super) fn inner(e: &SpoolError) -> String {
    match e {
        SpoolError::Corrupt(why) => why.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::tests::env;

    #[test]
    fn envelope_round_trip_odd_values() {
        let odd = [
            "",
            "\"john smith\"@example.com",
            "jörg@bücher.example",
            "100% done\r\nRCPT TO:<evil@x>",
            "a: b: c",
            " leading and trailing ",
            "tab\there\u{1b}[31m\u{7f}\u{85}",
            "rcpt: pending to=x",
            "%41%",
            "k=v=w",
        ];
        for (i, s) in odd.iter().enumerate() {
            let mut e = env();
            e.id = format!("id{i}");
            e.sender = s.to_string();
            e.client = s.to_string();
            e.helo = s.to_string();
            e.auth_user = Some(s.to_string());
            e.last_error = Some(s.to_string());
            e.recipients = vec![
                Recipient {
                    addr: s.to_string(),
                    orig: Some(s.to_string()),
                    state: RcptState::Failed,
                    reply: Some(s.to_string()),
                },
                Recipient {
                    addr: "x@y".into(),
                    orig: None,
                    state: RcptState::Delivered,
                    reply: None,
                },
            ];
            e.eight_bit = i % 2 == 0;
            e.smtputf8 = i % 3 == 0;
            e.bounced = i % 2 == 1;
            e.attempts = u32::MAX;
            e.next_attempt = u64::MAX;
            e.arrival = i as u64;
            let body = b"Subject: x\r\n\r\nbody\r\n";
            let mut data = format_header(&e, body.len() as u64).unwrap();
            let header_len = data.len();
            assert!(!data[..header_len - 1].contains(&b'\r'), "{s:?}");
            assert_eq!(
                data.iter().filter(|&&b| b == b'\n').count(),
                17, // magic + length + 12 keys + 2 rcpts + blank
                "{s:?}"
            );
            data.extend_from_slice(body);
            data.extend_from_slice(b"stale bytes of an earlier message");
            let back = parse_header(&data).unwrap();
            assert_eq!(back.env, e, "{s:?}");
            assert_eq!(back.body_at, header_len as u64);
            assert_eq!(back.length, Some(body.len() as u64));
            assert_eq!(back.message_len(data.len() as u64), Ok(body.len() as u64));
        }
    }

    #[test]
    fn long_texts_are_clipped_and_limits_enforced() {
        let mut e = env();
        e.last_error = Some("é".repeat(MAX_TEXT));
        let back = parse_header(&format_header(&e, 0).unwrap()).unwrap().env;
        let err = back.last_error.unwrap();
        assert!(err.len() <= MAX_TEXT && err.len() >= MAX_TEXT - 1);

        let mut e = env();
        e.recipients = vec![e.recipients[0].clone(); MAX_RECIPIENTS + 1];
        assert!(matches!(format_header(&e, 0), Err(SpoolError::Io(_))));
        e.recipients.pop();
        let data = format_header(&e, 0).unwrap();
        assert_eq!(
            parse_header(&data).unwrap().env.recipients.len(),
            MAX_RECIPIENTS
        );
        // Hand-made file with one recipient too many is refused by the parser too.
        let mut text = String::from_utf8(data).unwrap();
        text.pop();
        text.push_str("rcpt: pending to=a@b\n\n");
        assert!(matches!(
            parse_header(text.as_bytes()),
            Err(SpoolError::Corrupt(_))
        ));
    }

    #[test]
    fn parser_rejects_garbage() {
        let good = String::from_utf8(format_header(&env(), 5).unwrap()).unwrap();
        let length_line = format!("length: {}\n", length_value(5));
        let cases: Vec<(&str, String)> = vec![
            ("empty", String::new()),
            ("no magic", good.replacen("picorelay-spool 2", "hello", 1)),
            (
                "version 3",
                good.replacen("picorelay-spool 2", "picorelay-spool 3", 1),
            ),
            (
                "version +2",
                good.replacen("picorelay-spool 2", "picorelay-spool +2", 1),
            ),
            (
                "version 2 without length",
                good.replacen(&length_line, "", 1),
            ),
            (
                "length in version 1",
                good.replacen("picorelay-spool 2", "picorelay-spool 1", 1),
            ),
            ("bad length", good.replacen(&length_line, "length: -5\n", 1)),
            (
                "no blank line",
                good.trim_end_matches('\n').to_string() + "\n",
            ),
            (
                "unknown key",
                good.replacen("bounced: no\n", "bounced: no\nfoo: bar\n", 1),
            ),
            (
                "dup key",
                good.replacen("bounced: no\n", "bounced: no\nbounced: no\n", 1),
            ),
            (
                "missing key",
                good.replacen("helo: mx.example.com\n", "", 1),
            ),
            (
                "bad bool",
                good.replacen("bounced: no", "bounced: maybe", 1),
            ),
            ("bad num", good.replacen("attempts: 0", "attempts: -1", 1)),
            (
                "overflow",
                good.replacen("attempts: 0", "attempts: 4294967296", 1),
            ),
            ("bad escape", good.replacen("helo: mx", "helo: %G1mx", 1)),
            (
                "short escape",
                good.replacen("helo: mx.example.com", "helo: x%4", 1),
            ),
            ("non utf8 escape", good.replacen("helo: mx", "helo: %FF", 1)),
            ("raw CR", good.replacen("helo: mx", "helo: m\rx", 1)),
            ("no colon", good.replacen("helo: mx", "helo mx", 1)),
            (
                "rcpt state",
                good.replacen("rcpt: pending", "rcpt: done", 1),
            ),
            ("rcpt no to", good.replacen(" to=bob@example.org", "", 1)),
            (
                "rcpt dup",
                good.replacen("to=bob@example.org", "to=a to=b", 1),
            ),
            (
                "rcpt field",
                good.replacen("to=bob@example.org", "to=a x=y", 1),
            ),
            (
                "rcpt space",
                good.replacen("to=bob@example.org", "to=a  orig=b", 1),
            ),
        ];
        for (name, text) in cases {
            assert!(
                matches!(parse_header(text.as_bytes()), Err(SpoolError::Corrupt(_))),
                "{name}"
            );
        }
        let mut bytes = good.into_bytes();
        bytes[20] = 0xFF;
        assert!(parse_header(&bytes).is_err());
    }

    #[test]
    fn parser_never_panics_on_mutations() {
        // A cheap deterministic fuzz: every prefix, and every single-byte change, of a valid header.
        let mut e = env();
        e.auth_user = Some("ü%".into());
        e.recipients[0].reply = Some("550 5.1.1 no".into());
        let good = format_header(&e, 4396).unwrap();
        for i in 0..=good.len() {
            let _ = parse_header(&good[..i]);
        }
        for i in 0..good.len() {
            for b in [0u8, b'\n', b'%', b' ', b':', b'=', 0x80, 0xFF, b'9'] {
                let mut m = good.clone();
                m[i] = b;
                let _ = parse_header(&m);
            }
        }
        let _ = parse_header(&vec![b'a'; MAX_HEADER + 10]);
    }

    #[test]
    fn the_length_is_written_in_place_and_bounds_the_message() {
        let header = format_header(&env(), 0).unwrap();
        let at = length_offset() as usize;
        let mut file = header.clone();
        let body = b"Subject: x\r\n\r\nbody\r\n";
        file.extend_from_slice(body);
        let value = length_value(body.len() as u64);
        file[at..at + value.len()].copy_from_slice(value.as_bytes());
        let back = parse_header(&file).unwrap();
        assert_eq!(back.length, Some(body.len() as u64));
        assert_eq!(back.body_at, header.len() as u64);
        // A file cut short is corrupt, not a shorter message.
        assert!(matches!(
            back.message_len(file.len() as u64 - 1),
            Err(SpoolError::Corrupt(_))
        ));
    }

    #[test]
    fn version_1_files_are_still_read_to_their_end() {
        let v1 = String::from_utf8(format_header(&env(), 0).unwrap())
            .unwrap()
            .replacen("picorelay-spool 2", "picorelay-spool 1", 1)
            .replacen(&format!("length: {}\n", length_value(0)), "", 1);
        let back = parse_header(v1.as_bytes()).unwrap();
        assert_eq!(back.env, env());
        assert_eq!(back.length, None);
        assert_eq!(back.message_len(v1.len() as u64 + 20), Ok(20));
    }
}
