//! Delivery status notifications (RFC 3464): builds the multipart/report for failed recipients
//! and queues it, from the null sender, like any other message.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};

use crate::config::{BounceTo, Config};
use crate::message;
use crate::spool::{Envelope, Spool, SpoolError};

/// At most this much of the original header section is returned (RFC 6522 text/rfc822-headers
/// needs only enough to recognise the message); cut at a line end.
pub const MAX_ORIGINAL_HEADERS: usize = 64 * 1024;

/// Texts we put on one header or report line are cut here, well under the 998 octets of
/// RFC 5322 2.1.1 once the field name is added.
const MAX_TEXT_LINE: usize = 900;

/// One recipient the report is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The address delivery was attempted to (after aliases).
    pub recipient: String,
    /// The address as the sender gave it, when an alias changed it.
    pub orig: Option<String>,
    /// Why, for people: the smarthost's reply, or "gave up after 5 days: last error ...".
    pub reason: String,
    /// RFC 3463 status code, e.g. "5.1.1" (see `status_for`).
    pub status: String,
    /// The smarthost's own reply ("550 5.1.1 no such user"), for Diagnostic-Code; None when the
    /// failure did not come with one (a connection that never worked).
    pub diagnostic: Option<String>,
}

/// status_for picks the RFC 3463 status of a failure: the enhanced code of the smarthost's
/// reply when it has one whose class matches the reply code, else 5.0.0 (permanent, other),
/// or 4.4.7 (delivery time expired, RFC 3463 3.5) when the message gave up after `lifetime`.
pub fn status_for(reply: &str, expired: bool) -> String {
    if expired {
        return "4.4.7".to_string();
    }
    match reply_parts(reply) {
        Some((code, Some(status))) if status.starts_with(&code[..1]) => status.to_string(),
        _ => "5.0.0".to_string(),
    }
}

/// reply_parts finds an SMTP reply inside `text` ("host:25: RCPT: 550 5.1.1 no" or
/// "550 5.1.1 no"): its 3-digit code and its enhanced status, when present.
fn reply_parts(text: &str) -> Option<(&str, Option<&str>)> {
    let start = reply_start(text)?;
    let mut words = text[start..].split_ascii_whitespace();
    let code = words.next()?;
    let status = words.next().filter(|w| is_status(w));
    Some((code, status))
}

/// reply_start is the byte offset of the first "NNN" reply code (2xx..5xx) that starts a word
/// and is followed by a space or the end.
fn reply_start(text: &str) -> Option<usize> {
    let b = text.as_bytes();
    (0..b.len().saturating_sub(2)).find(|&i| {
        (i == 0 || b[i - 1] == b' ')
            && (b'2'..=b'5').contains(&b[i])
            && b[i + 1].is_ascii_digit()
            && b[i + 2].is_ascii_digit()
            && (i + 3 == b.len() || b[i + 3] == b' ')
    })
}

/// is_status recognises an RFC 3463 code: class "." subject "." detail, 1-3 digits each.
fn is_status(w: &str) -> bool {
    let parts: Vec<&str> = w.split('.').collect();
    parts.len() == 3
        && matches!(parts[0], "2" | "4" | "5")
        && parts[1..]
            .iter()
            .all(|p| (1..=3).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()))
}

/// smtp_reply_in extracts the smarthost's reply from an error text, for Diagnostic-Code.
pub fn smtp_reply_in(text: &str) -> Option<String> {
    reply_start(text).map(|i| text[i..].to_string())
}

/// mta_name turns a peer "host:port" or "[v6]:port" into the host name for Remote-MTA
/// (RFC 3464 2.3.5: an MTA name, without a port).
pub fn mta_name(peer: &str) -> &str {
    let host = match peer.rsplit_once(':') {
        Some((h, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => peer,
    };
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

/// Everything a report says, apart from the original headers.
#[derive(Debug, Clone)]
pub struct Report<'a> {
    /// Our host name: Reporting-MTA and MAILER-DAEMON's domain.
    pub hostname: &'a str,
    /// The queue id of the failed message.
    pub id: &'a str,
    /// Who gets the report (the To: header).
    pub to: &'a str,
    /// When the failed message arrived.
    pub arrival: u64,
    /// Now (Date:, Last-Attempt-Date:).
    pub now: u64,
    /// The smarthost's name, for Remote-MTA, when it answered.
    pub remote: Option<&'a str>,
    /// The failed recipients.
    pub failures: &'a [Failure],
}

/// build returns the whole report message, CRLF lines: a multipart/report (RFC 6522) with a
/// human-readable part, a message/delivery-status part (RFC 3464) and the original headers
/// as text/rfc822-headers. `boundary` must not occur in `original_headers` (see `boundary`).
pub fn build(r: &Report, original_headers: &[u8], boundary: &str) -> Vec<u8> {
    let mut m = String::new();
    let host = clean(r.hostname);
    let line = |m: &mut String, s: &str| {
        m.push_str(s);
        m.push_str("\r\n");
    };
    line(
        &mut m,
        &format!("From: Mail Delivery System <MAILER-DAEMON@{host}>"),
    );
    line(&mut m, &format!("To: <{}>", clean(r.to)));
    line(&mut m, "Subject: Undelivered Mail Returned to Sender");
    line(&mut m, &format!("Date: {}", message::rfc5322_date(r.now)));
    line(
        &mut m,
        &format!("Message-ID: <{}.{}.bounce@{host}>", clean(r.id), r.now),
    );
    // RFC 3834 5: reports are automatic replies; vacation responders must not answer them.
    line(&mut m, "Auto-Submitted: auto-replied");
    line(&mut m, "MIME-Version: 1.0");
    line(
        &mut m,
        &format!("Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"{boundary}\""),
    );
    line(&mut m, "");
    line(&mut m, "This is a MIME-encapsulated message.");
    line(&mut m, "");

    // Part 1: for people.
    line(&mut m, &format!("--{boundary}"));
    let human = human_text(r);
    let encoding = if human.is_ascii() { "7bit" } else { "8bit" };
    line(&mut m, "Content-Description: Notification");
    line(&mut m, "Content-Type: text/plain; charset=utf-8");
    line(&mut m, &format!("Content-Transfer-Encoding: {encoding}"));
    line(&mut m, "");
    m.push_str(&human);
    line(&mut m, "");

    // Part 2: for programs (RFC 3464 2.2 per-message fields, 2.3 per-recipient fields).
    line(&mut m, &format!("--{boundary}"));
    line(&mut m, "Content-Description: Delivery report");
    line(&mut m, "Content-Type: message/delivery-status");
    line(&mut m, "");
    line(&mut m, &format!("Reporting-MTA: dns; {host}"));
    line(&mut m, &format!("X-Picorelay-Queue-ID: {}", clean(r.id)));
    line(
        &mut m,
        &format!("Arrival-Date: {}", message::rfc5322_date(r.arrival)),
    );
    for f in r.failures {
        line(&mut m, "");
        line(
            &mut m,
            &format!("Final-Recipient: rfc822; {}", clean(&f.recipient)),
        );
        line(&mut m, "Action: failed");
        line(&mut m, &format!("Status: {}", clean(&f.status)));
        if let (Some(remote), Some(_)) = (r.remote, &f.diagnostic) {
            line(
                &mut m,
                &format!("Remote-MTA: dns; {}", clean(mta_name(remote))),
            );
        }
        if let Some(d) = &f.diagnostic {
            line(&mut m, &format!("Diagnostic-Code: smtp; {}", clean(d)));
        }
        line(
            &mut m,
            &format!("Last-Attempt-Date: {}", message::rfc5322_date(r.now)),
        );
    }
    line(&mut m, "");

    // Part 3: the original headers (RFC 6522 text/rfc822-headers).
    line(&mut m, &format!("--{boundary}"));
    line(&mut m, "Content-Description: Undelivered message headers");
    line(&mut m, "Content-Type: text/rfc822-headers");
    line(&mut m, "");
    let mut out = m.into_bytes();
    let headers = cut_headers(original_headers);
    out.extend_from_slice(headers);
    if !headers.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    out
}

/// human_text is the first part: who failed and why, in plain words.
fn human_text(r: &Report) -> String {
    let mut t = format!(
        "This is the mail system at host {} (picorelay).\r\n\r\n\
         Your message could not be delivered to the recipients below.\r\n\
         Its headers are attached; the message itself was not kept.\r\n\r\n",
        clean(r.hostname)
    );
    for f in r.failures {
        t.push_str(&format!("<{}>", clean(&f.recipient)));
        if let Some(o) = &f.orig {
            t.push_str(&format!(" (expanded from <{}>)", clean(o)));
        }
        t.push_str(&format!(": {}\r\n", clean(&f.reason)));
    }
    t
}

/// cut_headers keeps the header section, without its empty line, to MAX_ORIGINAL_HEADERS,
/// cut at the last line end.
fn cut_headers(h: &[u8]) -> &[u8] {
    let h = h.strip_suffix(b"\r\n\r\n").map_or(h, |s| &h[..s.len() + 2]);
    if h.len() <= MAX_ORIGINAL_HEADERS {
        return h;
    }
    let part = &h[..MAX_ORIGINAL_HEADERS];
    match part.windows(2).rposition(|w| w == b"\r\n") {
        Some(i) => &part[..i + 2],
        None => &[],
    }
}

/// clean makes a value safe for one header or report line: no control characters (so no
/// CR/LF injection from a smarthost's reply), at most MAX_TEXT_LINE bytes.
fn clean(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if out.len() + c.len_utf8() > MAX_TEXT_LINE {
            out.push_str("...");
            break;
        }
        out.push(if c.is_control() { ' ' } else { c });
    }
    out
}

/// boundary returns a MIME boundary (RFC 2046 5.1.1) that does not occur in `content`.
pub fn boundary(content: &[u8]) -> String {
    loop {
        let mut h = RandomState::new().build_hasher();
        h.write_u64(message::now());
        let b = format!("=_picorelay_{:016x}", h.finish());
        if !content.windows(b.len()).any(|w| w == b.as_bytes()) {
            return b;
        }
    }
}

/// What became of a failure report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// Queued under this id, to this address.
    Queued { id: String, to: String },
    /// Not sent, only logged: why.
    Dropped(&'static str),
}

/// queue builds the report for `env`'s `failures` and commits it to the spool as a message
/// from `<>` to the sender (or `bounce_to`). A message with the null sender, or that is
/// itself a report, is never answered (RFC 5321 6.1, RFC 3464 2): Dropped, for the log.
pub fn queue(
    spool: &Spool,
    cfg: &Config,
    env: &Envelope,
    failures: &[Failure],
    original_headers: &[u8],
    remote: Option<&str>,
) -> Result<Disposition, SpoolError> {
    if env.bounced {
        return Ok(Disposition::Dropped(
            "the message is itself a delivery report",
        ));
    }
    if env.sender.is_empty() {
        return Ok(Disposition::Dropped("the message has the null sender <>"));
    }
    let to = match &cfg.queue.bounce_to {
        BounceTo::Sender => env.sender.clone(),
        BounceTo::Address(a) => a.clone(),
        BounceTo::None => return Ok(Disposition::Dropped("bounce_to = none")),
    };
    let now = message::now();
    let report = Report {
        hostname: &cfg.server.hostname,
        id: &env.id,
        to: &to,
        arrival: env.arrival,
        now,
        remote,
        failures,
    };
    let text = build(&report, original_headers, &boundary(original_headers));
    let bounce = Envelope {
        arrival: now,
        eight_bit: !text.is_ascii(),
        smtputf8: !to.is_ascii(),
        bounced: true,
        ..Envelope::new("", std::slice::from_ref(&to), "local", &cfg.server.hostname)
    };
    let mut incoming = spool.begin(&bounce)?;
    incoming.write_all(&text)?;
    let id = incoming.commit()?;
    Ok(Disposition::Queued { id, to })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes() {
        let cases = [
            ("550 5.1.1 no such user", false, "5.1.1"),
            (
                "host:25: MAIL FROM refused: 553 5.7.1 not yours",
                false,
                "5.7.1",
            ),
            ("550 no such user", false, "5.0.0"),
            ("554 4.1.1 mismatched class", false, "5.0.0"),
            ("message too big", false, "5.0.0"),
            ("451 4.3.0 try later", true, "4.4.7"),
        ];
        for (reply, expired, want) in cases {
            assert_eq!(status_for(reply, expired), want, "{reply}");
        }
        assert_eq!(
            smtp_reply_in("h:25: RCPT: 550 5.1.1 x").as_deref(),
            Some("550 5.1.1 x")
        );
        assert_eq!(smtp_reply_in("h:2525: connection refused"), None);
        for (peer, want) in [
            ("smtp.example.com:587", "smtp.example.com"),
            ("[2001:db8::1]:25", "2001:db8::1"),
            ("127.0.0.1:2525", "127.0.0.1"),
            ("relay", "relay"),
        ] {
            assert_eq!(mta_name(peer), want);
        }
    }

    /// A parsed MIME part: its header fields (lowercased names) and body.
    struct Part {
        headers: Vec<(String, String)>,
        body: String,
    }

    fn parse_entity(text: &str) -> Part {
        let (head, body) = text.split_once("\r\n\r\n").expect("header/body split");
        let mut headers: Vec<(String, String)> = Vec::new();
        for l in head.split("\r\n") {
            if l.starts_with([' ', '\t']) {
                headers
                    .last_mut()
                    .expect("continuation")
                    .1
                    .push_str(l.trim());
            } else {
                let (n, v) = l.split_once(':').expect("field");
                headers.push((n.to_ascii_lowercase(), v.trim().to_string()));
            }
        }
        Part {
            headers,
            body: body.to_string(),
        }
    }

    fn header<'a>(p: &'a Part, name: &str) -> &'a str {
        p.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("no {name} header"))
    }

    #[test]
    fn report_structure_parses_back() {
        let failures = vec![
            Failure {
                recipient: "bob@example.org".into(),
                orig: None,
                reason: "550 5.1.1 no such user\r\nInjected: yes".into(),
                status: status_for("550 5.1.1 no such user", false),
                diagnostic: Some("550 5.1.1 no such user\r\nInjected: yes".into()),
            },
            Failure {
                recipient: "admin@example.com".into(),
                orig: Some("root@relay.test".into()),
                reason: "gave up after 5 days: last error 451 4.3.0 busy".into(),
                status: status_for("451 4.3.0 busy", true),
                diagnostic: Some("451 4.3.0 busy".into()),
            },
        ];
        let original = b"Received: from x\r\n\tby y\r\nFrom: a@example.com\r\nSubject: hi\r\n\r\n";
        let b = boundary(original);
        let msg = build(
            &Report {
                hostname: "relay.test",
                id: "ABC",
                to: "alice@example.com",
                arrival: 0,
                now: 86_400,
                remote: Some("smarthost.test:587"),
                failures: &failures,
            },
            original,
            &b,
        );
        let text = String::from_utf8(msg).unwrap();
        assert!(text.lines().all(|l| l.len() <= 998));
        assert!(!text.replace("\r\n", "").contains('\n'), "bare LF");
        let top = parse_entity(&text);
        assert_eq!(
            header(&top, "from"),
            "Mail Delivery System <MAILER-DAEMON@relay.test>"
        );
        assert_eq!(header(&top, "to"), "<alice@example.com>");
        assert_eq!(header(&top, "auto-submitted"), "auto-replied");
        let ct = header(&top, "content-type");
        assert!(
            ct.starts_with("multipart/report; report-type=delivery-status;"),
            "{ct}"
        );
        assert!(ct.contains(&format!("boundary=\"{b}\"")), "{ct}");

        // Body: preamble, three parts, closing delimiter (RFC 2046 5.1.1).
        let delim = format!("\r\n--{b}");
        let mut chunks: Vec<&str> = top.body.split(&delim).collect();
        assert_eq!(chunks.pop(), Some("--\r\n"), "closing delimiter");
        let parts: Vec<Part> = chunks[1..]
            .iter()
            .map(|c| parse_entity(c.strip_prefix("\r\n").expect("CRLF after delimiter")))
            .collect();
        assert_eq!(parts.len(), 3);
        assert!(header(&parts[0], "content-type").starts_with("text/plain"));
        assert_eq!(header(&parts[1], "content-type"), "message/delivery-status");
        assert_eq!(header(&parts[2], "content-type"), "text/rfc822-headers");

        let human = &parts[0].body;
        assert!(
            human.contains("<bob@example.org>: 550 5.1.1 no such user  Injected: yes"),
            "{human}"
        );
        assert!(human.contains(
            "<admin@example.com> (expanded from <root@relay.test>): gave up after 5 days"
        ));

        // message/delivery-status: per-message block, then one block per recipient.
        let blocks: Vec<&str> = parts[1].body.trim_end().split("\r\n\r\n").collect();
        assert_eq!(blocks.len(), 3, "{:?}", parts[1].body);
        assert!(blocks[0].contains("Reporting-MTA: dns; relay.test"));
        assert!(blocks[0].contains("Arrival-Date: Thu, 01 Jan 1970 00:00:00 +0000"));
        let fields = |b: &str| -> Vec<(String, String)> {
            b.split("\r\n")
                .map(|l| {
                    let (n, v) = l.split_once(": ").unwrap();
                    (n.to_string(), v.to_string())
                })
                .collect()
        };
        let r1 = fields(blocks[1]);
        let get = |f: &[(String, String)], n: &str| {
            f.iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| v.clone())
                .unwrap()
        };
        assert_eq!(get(&r1, "Final-Recipient"), "rfc822; bob@example.org");
        assert_eq!(get(&r1, "Action"), "failed");
        assert_eq!(get(&r1, "Status"), "5.1.1");
        assert_eq!(get(&r1, "Remote-MTA"), "dns; smarthost.test");
        assert_eq!(
            get(&r1, "Diagnostic-Code"),
            "smtp; 550 5.1.1 no such user  Injected: yes"
        );
        let r2 = fields(blocks[2]);
        assert_eq!(get(&r2, "Final-Recipient"), "rfc822; admin@example.com");
        assert_eq!(get(&r2, "Status"), "4.4.7");
        assert_eq!(get(&r2, "Action"), "failed");

        assert_eq!(
            parts[2].body,
            "Received: from x\r\n\tby y\r\nFrom: a@example.com\r\nSubject: hi\r\n"
        );
    }

    #[test]
    fn original_headers_are_cut_at_a_line_end() {
        let line = format!("X-Long: {}\r\n", "a".repeat(100));
        let big = line.repeat(MAX_ORIGINAL_HEADERS / line.len() + 10);
        let cut = cut_headers(big.as_bytes());
        assert!(cut.len() <= MAX_ORIGINAL_HEADERS && cut.ends_with(b"\r\n"));
        assert_eq!(cut.len() % line.len(), 0);
        assert_eq!(cut_headers(b"A: b\r\n\r\n"), b"A: b\r\n");
    }

    #[test]
    fn boundary_avoids_content() {
        let b = boundary(b"");
        let again = boundary(b.as_bytes());
        assert_ne!(b, again);
        assert!(b.len() < 70, "RFC 2046 5.1.1: at most 70 characters");
    }
}
