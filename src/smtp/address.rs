//! Parsing of the reverse-path and forward-path of MAIL FROM / RCPT TO (RFC 5321 4.1.2, RFC 6531).

use super::reply::{self, Reply};
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

/// Maximum local-part length in octets (RFC 5321 4.5.3.1.1).
pub const MAX_LOCAL: usize = 64;
/// Maximum domain length in octets (RFC 5321 4.5.3.1.2).
pub const MAX_DOMAIN: usize = 255;
/// Maximum path length in octets, angle brackets included (RFC 5321 4.5.3.1.3).
pub const MAX_PATH: usize = 256;
/// Maximum DNS label length (RFC 1035 2.3.4).
const MAX_LABEL: usize = 63;

/// A mailbox from a MAIL/RCPT path. `domain` is "" only for RCPT <postmaster> (RFC 5321 4.5.1).
/// Both parts are kept as received: a quoted local part keeps its quotes, an address literal its brackets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mailbox {
    /// The local part, e.g. `john.doe` or `"john doe"`.
    pub local: String,
    /// The domain, e.g. `example.com` or `[192.0.2.1]`; "" for a bare `postmaster`.
    pub domain: String,
}

impl Mailbox {
    /// True when the address is pure ASCII, i.e. it needs no SMTPUTF8 (RFC 6531 3.4).
    pub fn is_ascii(&self) -> bool {
        self.local.is_ascii() && self.domain.is_ascii()
    }
}

/// "local@domain", or "local" when the domain is "" (RCPT <postmaster>).
impl fmt::Display for Mailbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.domain.is_empty() {
            f.write_str(&self.local)
        } else {
            write!(f, "{}@{}", self.local, self.domain)
        }
    }
}

/// What is wrong with a path. Every error maps to a 501 reply: 5.1.7 for the sender
/// (`sender_reply`), 5.1.3 for a recipient (`reply`). Length errors are 501 too, as
/// RFC 5321 4.5.3.1.10 lists "501 Path too long".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddressError {
    /// The path does not start with '<'.
    NoOpenBracket,
    /// The path does not end with '>' where it should.
    NoCloseBracket,
    /// A source route ("@a,@b:") is malformed.
    BadRoute,
    /// The local part is not a dot-string or quoted-string.
    BadLocalPart,
    /// No "@domain" (only `postmaster` may go without one, and only in RCPT).
    MissingDomain,
    /// The domain is not a valid host name.
    BadDomain,
    /// The address literal is neither [IPv4] nor [IPv6:...].
    BadLiteral,
    /// The local part is longer than 64 octets.
    LocalTooLong,
    /// The domain is longer than 255 octets.
    DomainTooLong,
    /// The path is longer than 256 octets.
    PathTooLong,
    /// "<>" where a mailbox is required (RCPT TO).
    NullNotAllowed,
}

impl fmt::Display for AddressError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AddressError::NoOpenBracket => "address must be enclosed in <>",
            AddressError::NoCloseBracket => "missing '>' after the address",
            AddressError::BadRoute => "bad source route before the address",
            AddressError::BadLocalPart => "bad local part in address",
            AddressError::MissingDomain => "address needs a domain: use local@domain",
            AddressError::BadDomain => "bad domain in address",
            AddressError::BadLiteral => "bad address literal: use [IPv4] or [IPv6:addr]",
            AddressError::LocalTooLong => "local part longer than 64 octets",
            AddressError::DomainTooLong => "domain longer than 255 octets",
            AddressError::PathTooLong => "path longer than 256 octets",
            AddressError::NullNotAllowed => "null address <> not allowed here",
        })
    }
}

impl std::error::Error for AddressError {}

impl AddressError {
    /// The reply for a bad recipient: 501 5.1.3 (RFC 3463 X.1.3 bad destination mailbox address syntax).
    pub fn reply(&self) -> Reply {
        reply::syntax("5.1.3", format!("Bad recipient address: {self}"))
    }

    /// The reply for a bad sender: 501 5.1.7 (RFC 3463 X.1.7 bad sender's mailbox address syntax).
    pub fn sender_reply(&self) -> Reply {
        reply::syntax("5.1.7", format!("Bad sender address: {self}"))
    }
}

/// Parses the text after "MAIL FROM:" / "RCPT TO:" up to the closing '>': returns the mailbox (None for "<>"),
/// and the rest of the line (parameters). Accepts quoted local parts, address literals [1.2.3.4] / [IPv6:...],
/// UTF-8 in local part and domain (SMTPUTF8, RFC 6531). Tolerates spaces after the colon (a common client bug).
/// Source routes "<@a,@b:user@d>" are accepted and the route dropped (RFC 5321 4.1.2, C.).
/// A bare "<postmaster>" (any case) gives a mailbox with domain "" (RFC 5321 4.5.1); the caller refuses it in MAIL.
/// Whether non-ASCII is allowed (SMTPUTF8 given) is the caller's check: see `Mailbox::is_ascii`.
pub fn parse_path(s: &str) -> Result<(Option<Mailbox>, &str), AddressError> {
    let s = s.trim_start_matches(' ');
    let b = s.as_bytes();
    // All indexes below sit on ASCII delimiters, hence on char boundaries: slicing cannot panic.
    if b.first() != Some(&b'<') {
        return Err(AddressError::NoOpenBracket);
    }
    match b.get(1) {
        None => return Err(AddressError::NoCloseBracket),
        Some(b'>') => return Ok((None, &s[2..])),
        Some(_) => {}
    }
    let mut i = 1;
    // Source route: A-d-l ":" (RFC 5321 4.1.2); parsed for syntax, then dropped (C.).
    let mut routed = false;
    if b.get(i) == Some(&b'@') {
        routed = true;
        loop {
            if b.get(i) != Some(&b'@') {
                return Err(AddressError::BadRoute);
            }
            let start = i + 1;
            let end = start + scan_domain(&b[start..]);
            check_domain(&s[start..end]).map_err(|_| AddressError::BadRoute)?;
            i = end;
            match b.get(i) {
                Some(b',') => i += 1,
                Some(b':') => {
                    i += 1;
                    break;
                }
                _ => return Err(AddressError::BadRoute),
            }
        }
    }
    let local_start = i;
    if b.get(i) == Some(&b'"') {
        i = scan_quoted(b, i + 1).ok_or(AddressError::BadLocalPart)?;
    } else {
        i += b[i..]
            .iter()
            .take_while(|&&c| is_atext(c) || c == b'.')
            .count();
        check_dot_string(&b[local_start..i])?;
    }
    let local = &s[local_start..i];
    // RFC 5321 4.5.3.1.1: local part at most 64 octets.
    if local.len() > MAX_LOCAL {
        return Err(AddressError::LocalTooLong);
    }
    let domain = match b.get(i) {
        Some(b'@') => {
            let start = i + 1;
            let end = if b.get(start) == Some(&b'[') {
                let close = b[start..]
                    .iter()
                    .position(|&c| c == b']')
                    .ok_or(AddressError::BadLiteral)?;
                let end = start + close + 1;
                check_literal(&s[start + 1..end - 1])?;
                end
            } else {
                let end = start + scan_domain(&b[start..]);
                check_domain(&s[start..end])?;
                end
            };
            i = end;
            &s[start..end]
        }
        Some(b'>') if !routed && local.eq_ignore_ascii_case("postmaster") => "",
        Some(b'>') => return Err(AddressError::MissingDomain),
        Some(_) => return Err(AddressError::BadLocalPart),
        None => return Err(AddressError::NoCloseBracket),
    };
    // RFC 5321 4.5.3.1.2: domain at most 255 octets.
    if domain.len() > MAX_DOMAIN {
        return Err(AddressError::DomainTooLong);
    }
    match b.get(i) {
        Some(b'>') => i += 1,
        Some(_) => return Err(AddressError::BadDomain),
        None => return Err(AddressError::NoCloseBracket),
    }
    // RFC 5321 4.5.3.1.3: path at most 256 octets, punctuation included.
    if i > MAX_PATH {
        return Err(AddressError::PathTooLong);
    }
    let mailbox = Mailbox {
        local: local.to_string(),
        domain: domain.to_string(),
    };
    Ok((Some(mailbox), &s[i..]))
}

/// atext of RFC 5322 3.2.3 as used by RFC 5321 4.1.2, extended with UTF-8 octets (RFC 6531 3.3).
fn is_atext(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~".contains(&c) || c >= 0x80
}

/// Dot-string = Atom *("." Atom): no empty atoms (RFC 5321 4.1.2).
fn check_dot_string(local: &[u8]) -> Result<(), AddressError> {
    if local.is_empty() || local.split(|&c| c == b'.').any(|atom| atom.is_empty()) {
        return Err(AddressError::BadLocalPart);
    }
    Ok(())
}

/// Scans a Quoted-string whose opening quote precedes `i`; returns the index after the closing quote.
/// qtextSMTP = %d32-33 / %d35-91 / %d93-126 (plus UTF-8, RFC 6531); quoted-pairSMTP = "\" %d32-126.
fn scan_quoted(b: &[u8], mut i: usize) -> Option<usize> {
    loop {
        match *b.get(i)? {
            b'"' => return Some(i + 1),
            b'\\' => match *b.get(i + 1)? {
                32..=126 => i += 2,
                _ => return None,
            },
            32..=126 | 0x80..=0xff => i += 1,
            _ => return None,
        }
    }
}

/// Length of the run of octets that may form a domain (letters, digits, '-', '.', UTF-8).
fn scan_domain(b: &[u8]) -> usize {
    b.iter()
        .take_while(|&&c| c.is_ascii_alphanumeric() || c == b'-' || c == b'.' || c >= 0x80)
        .count()
}

/// Domain = sub-domain *("." sub-domain); sub-domain = Let-dig [Ldh-str] (RFC 5321 4.1.2),
/// where a U-label's octets count as letters (RFC 6531 3.3). Labels at most 63 octets (RFC 1035 2.3.4).
fn check_domain(d: &str) -> Result<(), AddressError> {
    if d.is_empty() {
        return Err(AddressError::BadDomain);
    }
    for label in d.as_bytes().split(|&c| c == b'.') {
        let ok = match (label.first(), label.last()) {
            (Some(&f), Some(&l)) => f != b'-' && l != b'-' && label.len() <= MAX_LABEL,
            _ => false,
        };
        if !ok {
            return Err(AddressError::BadDomain);
        }
    }
    Ok(())
}

/// address-literal contents: IPv4-address-literal or "IPv6:" IPv6-addr (RFC 5321 4.1.3).
/// General-address-literals are refused: no standardized tag other than IPv6 exists.
fn check_literal(lit: &str) -> Result<(), AddressError> {
    let b = lit.as_bytes();
    let ok = if b.len() > 5 && b[..5].eq_ignore_ascii_case(b"IPv6:") {
        lit[5..].parse::<Ipv6Addr>().is_ok()
    } else {
        lit.parse::<Ipv4Addr>().is_ok()
    };
    if ok {
        Ok(())
    } else {
        Err(AddressError::BadLiteral)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mb(local: &str, domain: &str) -> Option<Mailbox> {
        Some(Mailbox {
            local: local.into(),
            domain: domain.into(),
        })
    }

    #[test]
    fn parse_paths() {
        let l64 = "a".repeat(64);
        let l65 = "a".repeat(65);
        let d_ok = format!(
            "{}.{}.{}.{}",
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(63),
            "e".repeat(60)
        ); // 252
        let d_long = format!(
            "{}.{}.{}.{}",
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(63),
            "e".repeat(63)
        ); // 255
        let d_256 = format!("{d_long}f"); // 256 but last label 64
        let d_too_long = format!("{}.x", d_long); // 257
        let p_ok = format!(
            "<{}@{}>",
            "a".repeat(40),
            d_ok.get(..200).unwrap().trim_end_matches('.')
        );
        let p_long = format!("<{}@{}>", l64, d_ok.get(..200).unwrap());
        let p_long_in = format!("{p_long} SIZE=1");
        let in_l64 = format!("<{l64}@x>");
        let in_l65 = format!("<{l65}@x>");
        let in_d255 = format!("<a@{d_long}>");
        let in_d252 = format!("<a@{d_ok}>");
        let in_d256 = format!("<a@{d_256}>");
        let in_d257 = format!("<a@{d_too_long}>");
        type R<'a> = Result<(Option<Mailbox>, &'a str), AddressError>;
        let cases: Vec<(&str, R)> = vec![
            ("<>", Ok((None, ""))),
            ("<> SIZE=10", Ok((None, " SIZE=10"))),
            (" <>", Ok((None, ""))),
            ("<a@b.c>", Ok((mb("a", "b.c"), ""))),
            (" <a@b.c>", Ok((mb("a", "b.c"), ""))),
            (
                "  <a@b.c> BODY=8BITMIME",
                Ok((mb("a", "b.c"), " BODY=8BITMIME")),
            ),
            (
                "<John.Doe@Example.COM>",
                Ok((mb("John.Doe", "Example.COM"), "")),
            ),
            ("<a+tag@x-y.z>", Ok((mb("a+tag", "x-y.z"), ""))),
            (
                "<!#$%&'*+-/=?^_`{|}~@h>",
                Ok((mb("!#$%&'*+-/=?^_`{|}~", "h"), "")),
            ),
            ("<\"john doe\"@x>", Ok((mb("\"john doe\"", "x"), ""))),
            ("<\"a>b@c\"@x>", Ok((mb("\"a>b@c\"", "x"), ""))),
            ("<\"a\\\"b\"@x>", Ok((mb("\"a\\\"b\"", "x"), ""))),
            ("<\"\"@x>", Ok((mb("\"\"", "x"), ""))),
            ("<a@[192.0.2.1]>", Ok((mb("a", "[192.0.2.1]"), ""))),
            (
                "<a@[IPv6:2001:db8::1]>",
                Ok((mb("a", "[IPv6:2001:db8::1]"), "")),
            ),
            ("<a@[ipv6:::1]>", Ok((mb("a", "[ipv6:::1]"), ""))),
            ("<@a,@b.c:u@d>", Ok((mb("u", "d"), ""))),
            ("<@a:u@d> X", Ok((mb("u", "d"), " X"))),
            ("<postmaster>", Ok((mb("postmaster", ""), ""))),
            ("<PostMaster>", Ok((mb("PostMaster", ""), ""))),
            ("<jörg@bücher.de>", Ok((mb("jörg", "bücher.de"), ""))),
            ("<用户@例子.广告>", Ok((mb("用户", "例子.广告"), ""))),
            ("<\"é x\"@h>", Ok((mb("\"é x\"", "h"), ""))),
            ("<a@b>x", Ok((mb("a", "b"), "x"))),
            (&in_l64, Ok((mb(&l64, "x"), ""))),
            (&in_d255, Err(AddressError::PathTooLong)),
            (&in_d252, Ok((mb("a", &d_ok), ""))),
            // errors
            ("", Err(AddressError::NoOpenBracket)),
            ("a@b", Err(AddressError::NoOpenBracket)),
            ("<", Err(AddressError::NoCloseBracket)),
            ("<a@b", Err(AddressError::NoCloseBracket)),
            ("<a@b c>", Err(AddressError::BadDomain)),
            ("<a>", Err(AddressError::MissingDomain)),
            ("<@a:postmaster>", Err(AddressError::MissingDomain)),
            ("<a@>", Err(AddressError::BadDomain)),
            ("<@b>", Err(AddressError::BadRoute)),
            ("<@b,c:u@d>", Err(AddressError::BadRoute)),
            ("<@-b:u@d>", Err(AddressError::BadRoute)),
            ("<.a@b>", Err(AddressError::BadLocalPart)),
            ("<a.@b>", Err(AddressError::BadLocalPart)),
            ("<a..b@c>", Err(AddressError::BadLocalPart)),
            ("<a b@c>", Err(AddressError::BadLocalPart)),
            ("<a\x01b@c>", Err(AddressError::BadLocalPart)),
            ("<\"a\x01\"@c>", Err(AddressError::BadLocalPart)),
            ("<\"abc@c>", Err(AddressError::BadLocalPart)),
            ("<\"a\\\x01\"@c>", Err(AddressError::BadLocalPart)),
            ("<a@b..c>", Err(AddressError::BadDomain)),
            ("<a@.b>", Err(AddressError::BadDomain)),
            ("<a@b.>", Err(AddressError::BadDomain)),
            ("<a@-b.c>", Err(AddressError::BadDomain)),
            ("<a@b-.c>", Err(AddressError::BadDomain)),
            ("<a@b_c>", Err(AddressError::BadDomain)),
            ("<a@[1.2.3]>", Err(AddressError::BadLiteral)),
            ("<a@[1.2.3.256]>", Err(AddressError::BadLiteral)),
            ("<a@[IPv6:zz]>", Err(AddressError::BadLiteral)),
            ("<a@[foo:bar]>", Err(AddressError::BadLiteral)),
            ("<a@[1.2.3.4>", Err(AddressError::BadLiteral)),
            ("<a@[1.2.3.4]x>", Err(AddressError::BadDomain)),
            (&in_l65, Err(AddressError::LocalTooLong)),
            (&in_d256, Err(AddressError::BadDomain)),
            (&in_d257, Err(AddressError::DomainTooLong)),
            (&p_long_in, Err(AddressError::PathTooLong)),
        ];
        for (input, want) in cases {
            assert_eq!(parse_path(input), want, "input {input:?}");
        }
        assert!(p_ok.len() <= 256);
        assert!(parse_path(&p_ok).is_ok());
        assert!(p_long.len() > 256);
    }

    #[test]
    fn display_and_ascii() {
        let m = mb("a", "b").unwrap();
        assert_eq!(m.to_string(), "a@b");
        assert!(m.is_ascii());
        let m = mb("postmaster", "").unwrap();
        assert_eq!(m.to_string(), "postmaster");
        assert!(!mb("jörg", "b").unwrap().is_ascii());
        assert!(!mb("a", "bü").unwrap().is_ascii());
    }

    #[test]
    fn replies() {
        let r = AddressError::PathTooLong.reply();
        assert_eq!((r.code, r.status), (501, "5.1.3"));
        let r = AddressError::BadDomain.sender_reply();
        assert_eq!((r.code, r.status), (501, "5.1.7"));
    }

    #[test]
    fn no_panic_on_odd_input() {
        let inputs = [
            "<é",
            "<\"é",
            "<a@é",
            "<a@[é]>",
            "<a@[IPv6:é]>",
            "<@é:",
            "<\"\\é\"@x>",
            "<é@é>",
            "<@",
            "<@,",
            "<a@[",
        ];
        for s in inputs {
            let _ = parse_path(s);
        }
        // Every prefix of a tricky path, cut on char boundaries.
        let s = "<@rö,@ü:\"ä\\\"b\"@[IPv6:::1]> SIZE=1";
        for (i, _) in s.char_indices() {
            let _ = parse_path(&s[..i]);
            let _ = parse_path(&s[i..]);
        }
    }
}
