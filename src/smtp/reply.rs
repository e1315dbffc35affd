//! SMTP replies: the `Reply` type, one named constructor per reply we send, and the client-side reply-line parser.

use std::fmt;

/// Maximum length of one reply line we send, including the code and CRLF (RFC 5321 4.5.3.1.5).
pub const MAX_REPLY_LINE: usize = 512;

/// Maximum length of one reply line the smarthost client accepts, including CRLF. RFC 5321 4.5.3.1.5
/// says 512, but real servers send longer EHLO lines; 1000 (the text line limit of 4.5.3.1.6) is lenient yet bounded.
pub const MAX_PEER_REPLY_LINE: usize = 1000;

/// Maximum number of lines in one multi-line reply the smarthost client accepts. RFC 5321 sets no limit;
/// the caller stops at this many so a hostile server cannot grow our memory without bound.
pub const MAX_REPLY_LINES: usize = 100;

/// An SMTP reply: code, RFC 3463 enhanced status ("" when none), text lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The three-digit reply code (RFC 5321 4.2).
    pub code: u16,
    /// The RFC 3463 enhanced status code ("2.0.0"), or "" to send none (greeting, EHLO, 354, 334).
    pub status: &'static str,
    /// Text lines; more than one makes a multi-line reply.
    pub lines: Vec<String>,
}

impl Reply {
    /// A one-line reply.
    pub fn new(code: u16, status: &'static str, text: impl Into<String>) -> Reply {
        Reply {
            code,
            status,
            lines: vec![text.into()],
        }
    }

    /// A multi-line reply (RFC 5321 4.2.1); every line carries the same code and status.
    pub fn multiline(code: u16, status: &'static str, lines: Vec<String>) -> Reply {
        Reply {
            code,
            status,
            lines,
        }
    }

    /// Serialises as "250-2.0.0 a\r\n250 2.0.0 b\r\n" (status omitted when "").
    /// CR and LF inside a line become spaces (a reply must never inject a line), and each line
    /// is cut to 512 octets including code and CRLF (RFC 5321 4.5.3.1.5).
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let empty = [String::new()];
        let lines: &[String] = if self.lines.is_empty() {
            &empty
        } else {
            &self.lines
        };
        let code = self.code.min(999);
        for (i, text) in lines.iter().enumerate() {
            let start = out.len();
            let last = i + 1 == lines.len();
            out.extend_from_slice(format!("{code:03}").as_bytes());
            if self.status.is_empty() && text.is_empty() {
                // "354" or "334" alone; a continuation line still needs its "-".
                if !last {
                    out.push(b'-');
                }
                out.extend_from_slice(b"\r\n");
                continue;
            }
            out.push(if last { b' ' } else { b'-' });
            out.extend_from_slice(self.status.as_bytes());
            if !self.status.is_empty() && !text.is_empty() {
                out.push(b' ');
            }
            // RFC 5321 4.5.3.1.5: a reply line is at most 512 octets including CRLF.
            let room = MAX_REPLY_LINE.saturating_sub(out.len() - start + 2);
            let mut cut = text.len().min(room);
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            out.extend(text.as_bytes()[..cut].iter().map(|&b| {
                if b == b'\r' || b == b'\n' {
                    b' '
                } else {
                    b
                }
            }));
            out.extend_from_slice(b"\r\n");
        }
    }

    /// The serialised reply as bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_to(&mut out);
        out
    }
}

/// One line for logs: "550 5.7.1 Relaying denied" (multi-line replies joined with " / ").
impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.code)?;
        if !self.status.is_empty() {
            write!(f, " {}", self.status)?;
        }
        for (i, line) in self.lines.iter().enumerate() {
            f.write_str(if i == 0 { " " } else { " / " })?;
            f.write_str(line)?;
        }
        Ok(())
    }
}

// ---- Named replies (RFC 5321 4.2.2 codes, RFC 3463 enhanced status codes). ----

/// 220 greeting (RFC 5321 4.2; RFC 2034 3: no enhanced code in the greeting).
pub fn greeting(host: &str) -> Reply {
    Reply::new(220, "", format!("{host} ESMTP picorelay"))
}

/// 250 reply to HELO (no enhanced code: RFC 2034 3 excludes the HELO/EHLO reply).
pub fn helo(host: &str) -> Reply {
    Reply::new(250, "", host.to_string())
}

/// 250 multi-line reply to EHLO: the host, then one extension keyword per line (RFC 5321 4.1.1.1).
pub fn ehlo(host: &str, extensions: &[String]) -> Reply {
    let mut lines = Vec::with_capacity(extensions.len() + 1);
    lines.push(host.to_string());
    lines.extend(extensions.iter().cloned());
    Reply::multiline(250, "", lines)
}

/// 250 2.0.0 generic success (NOOP, RSET, ...).
pub fn ok(text: impl Into<String>) -> Reply {
    Reply::new(250, "2.0.0", text)
}

/// 250 2.1.0 sender accepted (RFC 3463 X.1.0).
pub fn sender_ok() -> Reply {
    Reply::new(250, "2.1.0", "Sender ok")
}

/// 250 2.1.5 recipient accepted (RFC 3463 X.1.5).
pub fn recipient_ok() -> Reply {
    Reply::new(250, "2.1.5", "Recipient ok")
}

/// 250 2.0.0 message committed to the spool.
pub fn queued(id: &str) -> Reply {
    Reply::new(250, "2.0.0", format!("Ok: queued as {id}"))
}

/// 221 2.0.0 reply to QUIT.
pub fn closing(host: &str) -> Reply {
    Reply::new(221, "2.0.0", format!("{host} closing connection"))
}

/// 214 2.0.0 reply to HELP.
pub fn help() -> Reply {
    Reply::new(
        214,
        "2.0.0",
        "Commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT VRFY HELP STARTTLS AUTH (RFC 5321)",
    )
}

/// 252 2.5.0 reply to VRFY: we never confirm or deny an address (RFC 5321 3.5.3, 7.3).
pub fn vrfy() -> Reply {
    Reply::new(
        252,
        "2.5.0",
        "Cannot VRFY user, but will accept message and attempt delivery",
    )
}

/// 502 5.5.1 reply to EXPN: list expansion is disabled (RFC 5321 7.3).
pub fn expn_disabled() -> Reply {
    Reply::new(502, "5.5.1", "EXPN not available")
}

/// 354 go-ahead for DATA (no enhanced code: 354 is an intermediate reply).
pub fn start_data() -> Reply {
    Reply::new(354, "", "End data with <CR><LF>.<CR><LF>")
}

/// 220 2.0.0 go-ahead for STARTTLS (RFC 3207 4).
pub fn ready_to_start_tls() -> Reply {
    Reply::new(220, "2.0.0", "Ready to start TLS")
}

/// 500 5.5.2 unrecognised command (RFC 5321 4.2.4).
pub fn unknown_command() -> Reply {
    Reply::new(500, "5.5.2", "Command not recognized")
}

/// 500 5.5.2 command line longer than allowed (RFC 5321 4.5.3.1.4, 4.5.3.1.10).
pub fn line_too_long() -> Reply {
    Reply::new(500, "5.5.2", "Line too long")
}

/// 501 syntax error in parameters or arguments, with the given enhanced code and text.
pub fn syntax(status: &'static str, text: impl Into<String>) -> Reply {
    Reply::new(501, status, text)
}

/// 502 5.5.1 command known but not implemented here.
pub fn not_implemented() -> Reply {
    Reply::new(502, "5.5.1", "Command not implemented")
}

/// 503 5.5.1 MAIL/RCPT/DATA/AUTH before HELO/EHLO.
pub fn need_helo() -> Reply {
    Reply::new(503, "5.5.1", "Send EHLO or HELO first")
}

/// 503 5.5.1 RCPT or DATA before MAIL.
pub fn need_mail() -> Reply {
    Reply::new(503, "5.5.1", "Sender not yet given")
}

/// 503 5.5.1 MAIL inside a transaction (RFC 5321 4.1.4: MAIL may not be nested).
pub fn nested_mail() -> Reply {
    Reply::new(503, "5.5.1", "Sender already given")
}

/// 503 5.5.1 DATA with no accepted recipient.
pub fn need_rcpt() -> Reply {
    Reply::new(503, "5.5.1", "No valid recipients")
}

/// 555 5.5.4 MAIL/RCPT parameter not recognised (RFC 5321 4.1.1.11, 4.2.4).
pub fn param_unrecognized() -> Reply {
    Reply::new(
        555,
        "5.5.4",
        "MAIL FROM/RCPT TO parameters not recognized or not implemented",
    )
}

/// 501 5.5.4 MAIL parameter recognised but with a bad value (RFC 3463 X.5.4).
pub fn param_invalid(text: impl Into<String>) -> Reply {
    Reply::new(501, "5.5.4", text)
}

/// 552 5.3.4 message larger than the limit (RFC 1870 6.1, RFC 5321 4.5.3.1.10).
pub fn size_exceeded() -> Reply {
    Reply::new(552, "5.3.4", "Message size exceeds fixed limit")
}

/// 552 5.3.4 the message went on far past the limit: the session ends (it is not read to its
/// end, so the connection cannot go on).
pub fn size_exceeded_closing() -> Reply {
    Reply::new(
        552,
        "5.3.4",
        "Message size exceeds fixed limit, closing connection",
    )
}

/// 452 4.5.3 too many recipients (RFC 5321 4.5.3.1.10: 452, the client sends the rest later).
pub fn too_many_recipients() -> Reply {
    Reply::new(452, "4.5.3", "Too many recipients")
}

/// 550 5.7.1 relaying not permitted for this client and recipient.
pub fn relay_denied() -> Reply {
    Reply::new(550, "5.7.1", "Relaying denied")
}

/// 553 5.6.7 non-ASCII address without the SMTPUTF8 parameter (RFC 6531 3.5, RFC 6533 3).
pub fn utf8_not_permitted() -> Reply {
    Reply::new(
        553,
        "5.6.7",
        "Non-ASCII address requires the SMTPUTF8 parameter",
    )
}

/// 452 4.3.1 spool full (RFC 3463 X.3.1 mail system full).
pub fn storage_error() -> Reply {
    Reply::new(452, "4.3.1", "Insufficient system storage")
}

/// 554 5.4.6 too many Received headers: a mail loop (RFC 5321 6.3, RFC 3463 X.4.6).
pub fn loop_detected() -> Reply {
    Reply::new(
        554,
        "5.4.6",
        "Too many Received headers: mail loop detected",
    )
}

/// 554 5.7.0 refusal of an HTTP request sent to the SMTP port; the session then closes.
pub fn http_refused() -> Reply {
    Reply::new(554, "5.7.0", "This is an SMTP server, not a web server")
}

/// 421 4.3.2 service not available, closing (shutdown, overload; RFC 5321 3.8).
pub fn service_unavailable(text: impl Into<String>) -> Reply {
    Reply::new(421, "4.3.2", text)
}

/// 421 4.7.0 this address already holds too many sessions.
pub fn too_many_connections() -> Reply {
    Reply::new(
        421,
        "4.7.0",
        "Too many connections from your address, try again later",
    )
}

/// 421 4.7.0 after too many failed AUTH attempts (in this session or from this address).
pub fn too_many_auth_failures() -> Reply {
    Reply::new(
        421,
        "4.7.0",
        "Too many failed authentication attempts, closing",
    )
}

/// 421 4.3.2 the relay is shutting down; the client should retry later.
pub fn shutting_down() -> Reply {
    Reply::new(421, "4.3.2", "Service shutting down, try again later")
}

/// 421 4.4.2 idle too long, closing (RFC 5321 4.5.3.2).
pub fn timeout() -> Reply {
    Reply::new(421, "4.4.2", "Timeout, closing connection")
}

/// 421 4.3.2 this idle session is ended so a waiting client can be served (the pool is full).
pub fn evicted() -> Reply {
    Reply::new(
        421,
        "4.3.2",
        "Too busy: closing an idle session to serve another client",
    )
}

/// 421 4.4.2 idle too long while the server is busy (the shorter timeout of stress mode).
pub fn idle_too_long() -> Reply {
    Reply::new(
        421,
        "4.4.2",
        "Idle too long while the server is busy, closing connection",
    )
}

/// 421 4.4.2 the message data arrives too slowly to finish in reasonable time.
pub fn data_too_slow() -> Reply {
    Reply::new(421, "4.4.2", "Data too slow, closing connection")
}

/// 421 4.7.0 too many bad commands, closing.
pub fn too_many_errors() -> Reply {
    Reply::new(421, "4.7.0", "Too many errors, closing connection")
}

/// 530 5.7.0 STARTTLS required before this command (RFC 3207 4).
pub fn tls_required() -> Reply {
    Reply::new(530, "5.7.0", "Must issue a STARTTLS command first")
}

/// 503 5.5.1 STARTTLS on a session that already uses TLS.
pub fn tls_already_active() -> Reply {
    Reply::new(503, "5.5.1", "TLS already active")
}

/// 334 AUTH challenge; `text` is base64 (may be empty) (RFC 4954 4).
pub fn auth_challenge(text: impl Into<String>) -> Reply {
    Reply::new(334, "", text)
}

/// 235 2.7.0 authentication succeeded (RFC 4954 6).
pub fn auth_succeeded() -> Reply {
    Reply::new(235, "2.7.0", "Authentication succeeded")
}

/// 535 5.7.8 bad credentials (RFC 4954 6).
pub fn auth_failed() -> Reply {
    Reply::new(535, "5.7.8", "Authentication credentials invalid")
}

/// 538 5.7.11 AUTH needs an encrypted session (RFC 4954 6).
pub fn auth_encryption_required() -> Reply {
    Reply::new(
        538,
        "5.7.11",
        "Encryption required for requested authentication mechanism",
    )
}

/// 530 5.7.0 authentication required before MAIL (RFC 4954 6).
pub fn auth_required() -> Reply {
    Reply::new(530, "5.7.0", "Authentication required")
}

/// 501 5.7.0 client cancelled AUTH with "*" (RFC 4954 4).
pub fn auth_cancelled() -> Reply {
    Reply::new(501, "5.7.0", "Authentication cancelled")
}

/// 501 5.5.2 AUTH response is not valid base64 (RFC 4954 4).
pub fn auth_bad_base64() -> Reply {
    Reply::new(501, "5.5.2", "Cannot decode AUTH response")
}

/// 504 5.5.4 unsupported SASL mechanism (RFC 4954 4).
pub fn auth_mechanism_unsupported() -> Reply {
    Reply::new(504, "5.5.4", "Unrecognized authentication type")
}

/// 503 5.5.1 AUTH after a successful AUTH, or during a transaction (RFC 4954 4).
pub fn auth_not_allowed_now() -> Reply {
    Reply::new(503, "5.5.1", "AUTH not allowed now")
}

/// 502 5.5.1 AUTH when authentication is switched off.
pub fn auth_not_available() -> Reply {
    Reply::new(502, "5.5.1", "AUTH not available")
}

// ---- Client side: reading the smarthost's replies. ----

/// Why a reply line from a peer could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyParseError {
    /// Fewer than three octets.
    TooShort,
    /// The first three octets are not a reply code 200..=599 (RFC 5321 4.2).
    BadCode,
    /// The code is followed by something other than SP, "-" or the end of the line.
    BadSeparator,
    /// The line is longer than `MAX_PEER_REPLY_LINE`.
    TooLong,
}

impl fmt::Display for ReplyParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ReplyParseError::TooShort => "reply line too short: expected a 3-digit code",
            ReplyParseError::BadCode => "reply line does not start with a valid 3-digit code",
            ReplyParseError::BadSeparator => "reply code not followed by space or '-'",
            ReplyParseError::TooLong => "reply line longer than 1000 octets",
        })
    }
}

impl std::error::Error for ReplyParseError {}

/// Parses one reply line from a peer: returns (code, is_last_line, text).
/// A trailing CRLF or LF is ignored. The text stops at the first byte that is not valid UTF-8
/// (replies are ASCII by RFC 5321 4.2; a stray Latin-1 byte must not fail a delivery).
/// The caller checks that all lines of one reply carry the same code and stops after `MAX_REPLY_LINES`.
pub fn parse_reply_line(line: &[u8]) -> Result<(u16, bool, &str), ReplyParseError> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    // RFC 5321 4.5.3.1.5 (512), leniently raised to the text line limit; see MAX_PEER_REPLY_LINE.
    if line.len() + 2 > MAX_PEER_REPLY_LINE {
        return Err(ReplyParseError::TooLong);
    }
    if line.len() < 3 {
        return Err(ReplyParseError::TooShort);
    }
    let (d0, d1, d2) = (line[0], line[1], line[2]);
    // RFC 5321 4.2: Reply-code = %x32-35 %x30-35 %x30-39
    if !(b'2'..=b'5').contains(&d0) || !(b'0'..=b'5').contains(&d1) || !d2.is_ascii_digit() {
        return Err(ReplyParseError::BadCode);
    }
    let code = u16::from(d0 - b'0') * 100 + u16::from(d1 - b'0') * 10 + u16::from(d2 - b'0');
    let (last, rest) = match line.get(3) {
        None => (true, &line[3..]),
        Some(b' ') => (true, &line[4..]),
        Some(b'-') => (false, &line[4..]),
        Some(_) => return Err(ReplyParseError::BadSeparator),
    };
    let text = match std::str::from_utf8(rest) {
        Ok(t) => t,
        Err(e) => std::str::from_utf8(&rest[..e.valid_up_to()]).unwrap_or(""),
    };
    Ok((code, last, text))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ser(r: &Reply) -> String {
        String::from_utf8(r.to_bytes()).unwrap()
    }

    #[test]
    fn serialisation() {
        let cases: Vec<(Reply, &str)> = vec![
            (ok("Ok"), "250 2.0.0 Ok\r\n"),
            (
                Reply::multiline(250, "2.0.0", vec!["a".into(), "b".into()]),
                "250-2.0.0 a\r\n250 2.0.0 b\r\n",
            ),
            (
                ehlo("mx.example", &["PIPELINING".into(), "SIZE 1000".into()]),
                "250-mx.example\r\n250-PIPELINING\r\n250 SIZE 1000\r\n",
            ),
            (start_data(), "354 End data with <CR><LF>.<CR><LF>\r\n"),
            (auth_challenge(""), "334\r\n"),
            (auth_challenge("VXNlcm5hbWU6"), "334 VXNlcm5hbWU6\r\n"),
            (Reply::new(250, "2.0.0", ""), "250 2.0.0\r\n"),
            (Reply::multiline(250, "", vec![]), "250\r\n"),
            (
                Reply::multiline(250, "", vec!["".into(), "x".into()]),
                "250-\r\n250 x\r\n",
            ),
            (ok("a\r\nb\nc"), "250 2.0.0 a  b c\r\n"),
            (queued("ABC123"), "250 2.0.0 Ok: queued as ABC123\r\n"),
            (closing("h"), "221 2.0.0 h closing connection\r\n"),
            (greeting("h"), "220 h ESMTP picorelay\r\n"),
        ];
        for (r, want) in cases {
            assert_eq!(ser(&r), want, "{r:?}");
        }
    }

    #[test]
    fn long_lines_are_cut_on_char_boundaries() {
        let r = ok("é".repeat(400));
        let s = ser(&r);
        assert!(s.len() <= MAX_REPLY_LINE, "{}", s.len());
        assert!(s.ends_with("\r\n"));
        let r = ok("x".repeat(1000));
        assert_eq!(ser(&r).len(), MAX_REPLY_LINE);
    }

    #[test]
    fn named_codes() {
        let cases: Vec<(Reply, u16, &str)> = vec![
            (ok("x"), 250, "2.0.0"),
            (sender_ok(), 250, "2.1.0"),
            (recipient_ok(), 250, "2.1.5"),
            (need_mail(), 503, "5.5.1"),
            (need_rcpt(), 503, "5.5.1"),
            (need_helo(), 503, "5.5.1"),
            (nested_mail(), 503, "5.5.1"),
            (syntax("5.5.4", "x"), 501, "5.5.4"),
            (unknown_command(), 500, "5.5.2"),
            (line_too_long(), 500, "5.5.2"),
            (param_unrecognized(), 555, "5.5.4"),
            (param_invalid("x"), 501, "5.5.4"),
            (size_exceeded(), 552, "5.3.4"),
            (size_exceeded_closing(), 552, "5.3.4"),
            (too_many_recipients(), 452, "4.5.3"),
            (relay_denied(), 550, "5.7.1"),
            (storage_error(), 452, "4.3.1"),
            (closing("h"), 221, "2.0.0"),
            (service_unavailable("x"), 421, "4.3.2"),
            (timeout(), 421, "4.4.2"),
            (too_many_errors(), 421, "4.7.0"),
            (too_many_connections(), 421, "4.7.0"),
            (start_data(), 354, ""),
            (queued("x"), 250, "2.0.0"),
            (loop_detected(), 554, "5.4.6"),
            (vrfy(), 252, "2.5.0"),
            (help(), 214, "2.0.0"),
            (expn_disabled(), 502, "5.5.1"),
            (not_implemented(), 502, "5.5.1"),
            (utf8_not_permitted(), 553, "5.6.7"),
            (http_refused(), 554, "5.7.0"),
            (ready_to_start_tls(), 220, "2.0.0"),
            (tls_required(), 530, "5.7.0"),
            (tls_already_active(), 503, "5.5.1"),
            (auth_challenge("x"), 334, ""),
            (auth_succeeded(), 235, "2.7.0"),
            (auth_failed(), 535, "5.7.8"),
            (auth_encryption_required(), 538, "5.7.11"),
            (auth_required(), 530, "5.7.0"),
            (auth_cancelled(), 501, "5.7.0"),
            (auth_bad_base64(), 501, "5.5.2"),
            (auth_mechanism_unsupported(), 504, "5.5.4"),
            (auth_not_allowed_now(), 503, "5.5.1"),
            (auth_not_available(), 502, "5.5.1"),
            (greeting("h"), 220, ""),
            (helo("h"), 250, ""),
        ];
        for (r, code, status) in cases {
            assert_eq!((r.code, r.status), (code, status), "{r:?}");
        }
    }

    #[test]
    fn display() {
        assert_eq!(relay_denied().to_string(), "550 5.7.1 Relaying denied");
        let r = Reply::multiline(250, "", vec!["a".into(), "b".into()]);
        assert_eq!(r.to_string(), "250 a / b");
    }

    #[test]
    fn parse_reply_lines() {
        type R<'a> = Result<(u16, bool, &'a str), ReplyParseError>;
        let cases: Vec<(&[u8], R)> = vec![
            (b"250 2.0.0 Ok\r\n", Ok((250, true, "2.0.0 Ok"))),
            (b"250-PIPELINING\r\n", Ok((250, false, "PIPELINING"))),
            (b"250-PIPELINING\n", Ok((250, false, "PIPELINING"))),
            (b"354", Ok((354, true, ""))),
            (b"334 \r\n", Ok((334, true, ""))),
            (b"220 h\xe9llo", Ok((220, true, "h"))),
            (b"25", Err(ReplyParseError::TooShort)),
            (b"", Err(ReplyParseError::TooShort)),
            (b"abc def", Err(ReplyParseError::BadCode)),
            (b"199 x", Err(ReplyParseError::BadCode)),
            (b"600 x", Err(ReplyParseError::BadCode)),
            (b"26x x", Err(ReplyParseError::BadCode)),
            (b"250x", Err(ReplyParseError::BadSeparator)),
            (b"\xff\xfe\xfd", Err(ReplyParseError::BadCode)),
        ];
        for (line, want) in cases {
            assert_eq!(
                parse_reply_line(line),
                want,
                "{:?}",
                String::from_utf8_lossy(line)
            );
        }
        let long = [b"250 ".as_slice(), &[b'x'; 1000]].concat();
        assert_eq!(parse_reply_line(&long), Err(ReplyParseError::TooLong));
    }
}
