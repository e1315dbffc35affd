//! The little RFC 5322 work on messages: the Received trace header, dates, and the
//! header fields of locally submitted mail (address lists, Bcc, From/Date/Message-ID).

use std::time::{SystemTime, UNIX_EPOCH};

/// More Received headers than this means the message is looping
/// (RFC 5321 §6.3; Postfix and Exim use similar counts).
pub const MAX_RECEIVED: u32 = 50;

/// Trace is what a Received header records about one hop (RFC 5321 §4.4).
pub struct Trace<'a> {
    /// The name the client gave in HELO/EHLO.
    pub helo: &'a str,
    /// The client's IP address.
    pub client: &'a str,
    /// Our host name.
    pub hostname: &'a str,
    /// ESMTP, ESMTPS, ESMTPA, ESMTPSA (RFC 3848).
    pub protocol: &'a str,
    /// TLS version and cipher, when encrypted.
    pub tls: Option<&'a str>,
    /// The queue id.
    pub id: &'a str,
    /// The recipient, named only when there is exactly one (privacy of Bcc lists).
    pub recipient: Option<&'a str>,
    /// Unix time of arrival.
    pub time: u64,
}

/// received_header formats the Received: field, folded, ending in CRLF.
pub fn received_header(t: &Trace) -> String {
    let mut h = format!(
        "Received: from {} ([{}])\r\n\tby {} (picorelay) with {}",
        clean(t.helo),
        t.client,
        clean(t.hostname),
        t.protocol
    );
    if let Some(tls) = t.tls {
        h.push_str(&format!("\r\n\t(using {})", clean(tls)));
    }
    h.push_str(&format!(" id {}", t.id));
    if let Some(r) = t.recipient {
        h.push_str(&format!("\r\n\tfor <{}>", clean(r)));
    }
    h.push_str(&format!(";\r\n\t{}\r\n", rfc5322_date(t.time)));
    h
}

/// clean keeps a client-supplied value from breaking the header: no controls,
/// no characters that would end a comment or a field.
fn clean(s: &str) -> String {
    s.chars()
        .take(255)
        .map(|c| {
            if c.is_control() || matches!(c, '(' | ')' | ';' | '\\') {
                '_'
            } else {
                c
            }
        })
        .collect()
}

/// now is the current unix time in seconds.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// rfc5322_date formats unix seconds as an RFC 5322 §3.3 date in UTC, e.g.
/// "Sun, 29 Nov 2026 06:07:08 +0000".
pub fn rfc5322_date(secs: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} +0000",
        DAYS[(days % 7) as usize],
        d,
        MONTHS[(m - 1) as usize],
        y,
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// civil_from_days turns days since 1970-01-01 into (year, month, day)
/// (Howard Hinnant's algorithm, proleptic Gregorian calendar).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// LocalTrace is what the Received header of a message submitted through
/// `sendmail` or `mail` records: there is no client address, only a user.
pub struct LocalTrace<'a> {
    /// The invoking user's login name.
    pub user: &'a str,
    /// Our host name.
    pub hostname: &'a str,
    /// The WITH value: "local" for a message on stdin, "local-esmtp" or "local-smtp"
    /// for an SMTP session on stdin (`sendmail -bs`), the words Exim uses.
    pub protocol: &'a str,
    /// The queue id.
    pub id: &'a str,
    /// The recipient, named only when there is exactly one (privacy of Bcc lists).
    pub recipient: Option<&'a str>,
    /// Unix time of submission.
    pub time: u64,
}

/// local_received_header formats the Received: field of a locally submitted
/// message like SMTP's, with client "localhost" and the protocol of `t` (Exim's
/// words for the same hop), folded, ending in CRLF.
pub fn local_received_header(t: &LocalTrace) -> String {
    let mut h = format!(
        "Received: from localhost (user {})\r\n\tby {} (picorelay) with {} id {}",
        clean(t.user),
        clean(t.hostname),
        t.protocol,
        t.id
    );
    if let Some(r) = t.recipient {
        h.push_str(&format!("\r\n\tfor <{}>", clean(r)));
    }
    h.push_str(&format!(";\r\n\t{}\r\n", rfc5322_date(t.time)));
    h
}

/// Lines we write ourselves are folded before this many characters
/// (RFC 5322 §2.1.1: SHOULD be no more than 78).
const FOLD_AT: usize = 78;

/// Raw octets of UTF-8 text per RFC 2047 encoded-word: 42 octets become 56
/// base64 characters, 68 with `=?UTF-8?B?` and `?=`: under the 75 of RFC 2047 §2,
/// and "Subject: " plus one word still fits in 78.
const WORD_OCTETS: usize = 42;

/// One header field as read: its name and its raw lines, folding kept, each
/// line ending in CRLF.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    /// The field name as written (compare with `is`).
    pub name: String,
    /// The whole field, every line ending in CRLF.
    pub raw: Vec<u8>,
}

impl Field {
    /// Field::start begins a field from its first line (line end already
    /// removed); None when the line does not start a header field.
    pub fn start(line: &[u8]) -> Option<Field> {
        let name = field_name(line)?.to_string();
        let mut f = Field {
            name,
            raw: Vec::with_capacity(line.len() + 2),
        };
        f.push_line(line);
        Some(f)
    }

    /// Field::fold appends a continuation line (one that starts with SP or
    /// HTAB, RFC 5322 §2.2.3).
    pub fn fold(&mut self, line: &[u8]) {
        self.push_line(line);
    }

    /// push_line appends a line and CRLF; a stray CR inside a header line
    /// becomes a space so that no bare CR is ever stored.
    fn push_line(&mut self, line: &[u8]) {
        self.raw
            .extend(line.iter().map(|&b| if b == b'\r' { b' ' } else { b }));
        self.raw.extend_from_slice(b"\r\n");
    }

    /// Field::is compares the name case-insensitively (RFC 5322 §1.2.2).
    pub fn is(&self, name: &str) -> bool {
        self.name.eq_ignore_ascii_case(name)
    }

    /// Field::value is the unfolded text after the colon (RFC 5322 §2.2.3),
    /// trimmed; invalid UTF-8 becomes U+FFFD.
    pub fn value(&self) -> String {
        let text = String::from_utf8_lossy(&self.raw);
        let after = text.split_once(':').map(|(_, v)| v).unwrap_or("");
        after.replace("\r\n", "").trim().to_string()
    }
}

/// field_name returns the name when `line` starts a header field: 1*ftext
/// (printable ASCII but ':'), optional WSP (obsolete syntax, RFC 5322 §4.5),
/// then ':' (RFC 5322 §2.2, §3.6.8).
pub fn field_name(line: &[u8]) -> Option<&str> {
    let n = line
        .iter()
        .take_while(|&&b| (33..=126).contains(&b) && b != b':')
        .count();
    if n == 0 {
        return None;
    }
    let ws = line[n..]
        .iter()
        .take_while(|&&b| b == b' ' || b == b'\t')
        .count();
    if line.get(n + ws) != Some(&b':') {
        return None;
    }
    // The name is printable ASCII, hence valid UTF-8.
    std::str::from_utf8(&line[..n]).ok()
}

/// is_continuation tells whether a line continues the previous field: it
/// starts with SP or HTAB (RFC 5322 §2.2.3).
pub fn is_continuation(line: &[u8]) -> bool {
    matches!(line.first(), Some(b' ' | b'\t'))
}

/// A message's header section as a list of fields, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Header {
    /// The fields in the order read.
    pub fields: Vec<Field>,
}

impl Header {
    /// Header::has tells whether a field of this name is present.
    pub fn has(&self, name: &str) -> bool {
        self.fields.iter().any(|f| f.is(name))
    }

    /// Header::count counts the fields of this name.
    pub fn count(&self, name: &str) -> usize {
        self.fields.iter().filter(|f| f.is(name)).count()
    }

    /// Header::addresses returns the addr-specs of every field named in
    /// `names` (e.g. To, Cc, Bcc), in order.
    pub fn addresses(&self, names: &[&str]) -> Vec<String> {
        self.fields
            .iter()
            .filter(|f| names.iter().any(|n| f.is(n)))
            .flat_map(|f| address_list(&f.value()))
            .collect()
    }

    /// Header::remove drops every field of this name (Bcc must never travel,
    /// RFC 5322 §3.6.3); returns how many there were.
    pub fn remove(&mut self, name: &str) -> usize {
        let before = self.fields.len();
        self.fields.retain(|f| !f.is(name));
        before - self.fields.len()
    }

    /// Header::push_text appends a field we generated ("Name: value\r\n",
    /// possibly folded); text without a colon is ignored.
    pub fn push_text(&mut self, text: &str) {
        if let Some((name, _)) = text.split_once(':') {
            self.fields.push(Field {
                name: name.to_string(),
                raw: text.as_bytes().to_vec(),
            });
        }
    }

    /// Header::write_to appends every field, as stored, to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        for f in &self.fields {
            out.extend_from_slice(&f.raw);
        }
    }
}

/// address_list returns the addr-specs of an RFC 5322 §3.4 address-list:
/// mailboxes with or without a display name ("Doe, John" <j@x>), groups
/// (`team: a@x, b@x;`, `undisclosed-recipients:;`), comments (`j@x (John, Doe)`)
/// and obsolete routes (`<@a,@b:j@x>`, RFC 5322 §4.4). Quoted local parts keep
/// their quotes. Empty members are skipped; a malformed member is returned as
/// it stands so that the caller's validation names it.
pub fn address_list(value: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new(); // the member outside angle brackets
    let mut ang = String::new(); // inside the member's angle brackets
    let (mut have_ang, mut in_ang, mut quoted, mut literal, mut escape) =
        (false, false, false, false, false);
    let mut comment = 0usize;
    for c in value.chars() {
        if comment > 0 {
            if escape {
                escape = false;
            } else if c == '\\' {
                escape = true;
            } else if c == '(' {
                comment += 1;
            } else if c == ')' {
                comment -= 1;
            }
            continue;
        }
        let buf = if in_ang { &mut ang } else { &mut cur };
        if quoted {
            buf.push(c);
            if escape {
                escape = false;
            } else if c == '\\' {
                escape = true;
            } else if c == '"' {
                quoted = false;
            }
            continue;
        }
        if literal {
            if !c.is_whitespace() {
                buf.push(c);
            }
            literal = c != ']';
            continue;
        }
        match c {
            '"' => {
                quoted = true;
                buf.push(c);
            }
            '[' => {
                literal = true;
                buf.push(c);
            }
            '(' => comment = 1,
            '<' if !in_ang => {
                in_ang = true;
                have_ang = true;
                ang.clear();
            }
            '>' if in_ang => in_ang = false,
            ',' | ';' if !in_ang => {
                push_member(&mut out, if have_ang { &ang } else { &cur });
                cur.clear();
                ang.clear();
                have_ang = false;
            }
            // A group's display name ends here; its members follow (RFC 5322 §3.4).
            ':' if !in_ang => cur.clear(),
            c if c.is_whitespace() => {
                if !buf.ends_with(' ') {
                    buf.push(' ');
                }
            }
            _ => buf.push(c),
        }
    }
    push_member(&mut out, if have_ang { &ang } else { &cur });
    out
}

/// push_member normalises one addr-spec and appends it unless empty: spaces
/// next to '.' or '@' go (obsolete CFWS between atoms, RFC 5322 §4.4), other
/// spaces stay and make the address invalid; a route before ':' is dropped.
fn push_member(out: &mut Vec<String>, spec: &str) {
    let mut s = String::with_capacity(spec.len());
    let words: Vec<&str> = spec.split(' ').filter(|w| !w.is_empty()).collect();
    for (i, w) in words.iter().enumerate() {
        if i > 0 {
            let glue = s.ends_with(['.', '@']) || w.starts_with(['.', '@']);
            if !glue {
                s.push(' ');
            }
        }
        s.push_str(w);
    }
    if s.starts_with('@') {
        if let Some((_, rest)) = s.split_once(':') {
            s = rest.to_string();
        }
    }
    if !s.is_empty() {
        out.push(s);
    }
}

/// is_atext: the characters of an RFC 5322 §3.2.3 atom.
fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c)
}

/// encoded_words encodes text as RFC 2047 "B" encoded-words in UTF-8, each at
/// most 75 characters (§2), split on character boundaries.
pub fn encoded_words(s: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut start = 0;
    while start < s.len() {
        let mut end = (start + WORD_OCTETS).min(s.len());
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        words.push(format!(
            "=?UTF-8?B?{}?=",
            crate::base64::encode(&s.as_bytes()[start..end])
        ));
        start = end;
    }
    words
}

/// phrase renders a display name (RFC 5322 §3.2.5): atoms as they are, other
/// ASCII as a quoted-string, anything else as encoded-words (RFC 2047 §5).
/// Control characters become spaces.
pub fn phrase(name: &str) -> String {
    let name: String = name
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let name = name.trim();
    if !name.is_ascii() {
        return encoded_words(name).join(" ");
    }
    if name
        .split(' ')
        .all(|w| !w.is_empty() && w.chars().all(is_atext))
    {
        return name.to_string();
    }
    let mut q = String::from("\"");
    for c in name.chars() {
        if c == '"' || c == '\\' {
            q.push('\\');
        }
        q.push(c);
    }
    q.push('"');
    q
}

/// mailbox formats `Name <addr>` (name through `phrase`), or the bare address
/// when there is no name.
pub fn mailbox(name: Option<&str>, addr: &str) -> String {
    match name.map(str::trim).filter(|n| !n.is_empty()) {
        Some(n) => format!("{} <{addr}>", phrase(n)),
        None => addr.to_string(),
    }
}

/// fold writes "Name: w1 w2 ...\r\n", breaking before a word where a line
/// would pass 78 characters (RFC 5322 §2.2.3: the space stays in front of the
/// word, so unfolding gives back the value exactly).
fn fold<'a>(name: &str, words: impl IntoIterator<Item = &'a str>) -> String {
    let mut out = format!("{name}:");
    let mut line = out.len();
    for (i, w) in words.into_iter().enumerate() {
        if i > 0 && !w.is_empty() && line + 1 + w.len() > FOLD_AT {
            out.push_str("\r\n");
            line = 0;
        }
        out.push(' ');
        out.push_str(w);
        line += 1 + w.len();
    }
    out.push_str("\r\n");
    out
}

/// unstructured formats an unstructured field such as Subject (RFC 5322
/// §3.2.5): folded ASCII, or RFC 2047 encoded-words when the text is not
/// ASCII. Control characters other than HTAB become spaces, so a value can
/// never end the field early.
pub fn unstructured(name: &str, value: &str) -> String {
    let value: String = value
        .chars()
        .map(|c| if c.is_control() && c != '\t' { ' ' } else { c })
        .collect();
    if value.is_ascii() {
        fold(name, value.split(' '))
    } else {
        let words = encoded_words(&value);
        fold(name, words.iter().map(String::as_str))
    }
}

/// address_field formats "To: a@x, b@y\r\n", folded between addresses.
pub fn address_field(name: &str, addrs: &[String]) -> String {
    let words: Vec<String> = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| {
            if i + 1 < addrs.len() {
                format!("{a},")
            } else {
                a.clone()
            }
        })
        .collect();
    fold(name, words.iter().map(String::as_str))
}

/// Defaults holds what `missing_fields` adds to a locally submitted message.
pub struct Defaults<'a> {
    /// Unix time for Date.
    pub time: u64,
    /// Message-ID without the angle brackets: `queue-id@hostname`.
    pub message_id: &'a str,
    /// The From value: `addr` or `Name <addr>` (see `mailbox`).
    pub from: &'a str,
}

/// missing_fields returns the Date, Message-ID and From fields the header
/// lacks, each ending in CRLF (RFC 5322 §3.6: Date and From are required,
/// Message-ID SHOULD be present; RFC 6409 §8 lets a submission server add them).
pub fn missing_fields(h: &Header, d: &Defaults) -> Vec<String> {
    let mut out = Vec::new();
    if !h.has("Date") {
        out.push(format!("Date: {}\r\n", rfc5322_date(d.time)));
    }
    if !h.has("Message-ID") {
        out.push(format!("Message-ID: <{}>\r\n", d.message_id));
    }
    if !h.has("From") {
        out.push(fold("From", d.from.split(' ')));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        let cases = [
            (0, "Thu, 01 Jan 1970 00:00:00 +0000"),
            (951_782_400, "Tue, 29 Feb 2000 00:00:00 +0000"),
            (1_795_932_428, "Sun, 29 Nov 2026 06:07:08 +0000"),
            (4_102_444_799, "Thu, 31 Dec 2099 23:59:59 +0000"),
        ];
        for (secs, want) in cases {
            assert_eq!(rfc5322_date(secs), want);
        }
    }

    #[test]
    fn received_has_every_part_and_no_injection() {
        let h = received_header(&Trace {
            helo: "evil\r\nX-Injected: 1",
            client: "192.0.2.7",
            hostname: "relay.test",
            protocol: "ESMTPS",
            tls: Some("TLSv1.3 TLS13_AES_128_GCM_SHA256"),
            id: "ABC123",
            recipient: Some("x@y"),
            time: 0,
        });
        assert!(
            h.starts_with("Received: from evil__X-Injected: 1 ([192.0.2.7])\r\n\tby relay.test")
        );
        assert!(h.contains("with ESMTPS\r\n\t(using TLSv1.3 TLS13_AES_128_GCM_SHA256) id ABC123"));
        assert!(h.contains("for <x@y>;"));
        assert!(h.ends_with("Thu, 01 Jan 1970 00:00:00 +0000\r\n"));
        assert_eq!(h.matches("\r\n").count(), h.matches("\r\n\t").count() + 1);
    }

    #[test]
    fn address_lists() {
        let cases: &[(&str, &[&str])] = &[
            ("root", &["root"]),
            ("a@x.org, b@y.org", &["a@x.org", "b@y.org"]),
            (
                "\"Doe, John\" <john@x.org>, jane@y.org",
                &["john@x.org", "jane@y.org"],
            ),
            ("John Doe <john@x.org>", &["john@x.org"]),
            (
                "john@x.org (Doe, John), <jane@y.org>",
                &["john@x.org", "jane@y.org"],
            ),
            (
                "team: a@x.org, b@y.org;, c@z.org",
                &["a@x.org", "b@y.org", "c@z.org"],
            ),
            ("undisclosed-recipients:;", &[]),
            ("<@relay.x,@relay.y:j@x.org>", &["j@x.org"]),
            ("\"odd local\"@x.org", &["\"odd local\"@x.org"]),
            ("\"a:b\" <c@d.org>", &["c@d.org"]),
            ("john . doe @ x.org", &["john.doe@x.org"]),
            ("joe@[IPv6:2001:db8::1]", &["joe@[IPv6:2001:db8::1]"]),
            ("a@x.org,,  ,b@y.org", &["a@x.org", "b@y.org"]),
            ("<>", &[]),
            // Malformed members come back as they stand, for the caller to refuse.
            ("john doe@x.org", &["john doe@x.org"]),
            ("=?UTF-8?Q?J=C3=B6rg?= <joerg@x.de>", &["joerg@x.de"]),
        ];
        for (input, want) in cases {
            assert_eq!(address_list(input), *want, "{input:?}");
        }
    }

    #[test]
    fn field_names() {
        let cases: &[(&[u8], Option<&str>)] = &[
            (b"Subject: hi", Some("Subject")),
            (b"X-Empty:", Some("X-Empty")),
            (b"Subject : obsolete space", Some("Subject")),
            (b"From someone Mon Jan 1", None),
            (b" continued", None),
            (b": no name", None),
            (b"no colon here", None),
            (b"", None),
        ];
        for (line, want) in cases {
            assert_eq!(
                field_name(line),
                *want,
                "{:?}",
                String::from_utf8_lossy(line)
            );
        }
        assert!(is_continuation(b"\tx") && is_continuation(b" x") && !is_continuation(b"x"));
    }

    #[test]
    fn folded_fields_unfold_and_keep_their_raw_form() {
        let mut f = Field::start(b"To: a@x.org,").unwrap();
        f.fold(b"\t\"Doe, John\" <j@y.org>,");
        f.fold(b" c@z.org\rtrailing");
        assert_eq!(
            f.raw,
            b"To: a@x.org,\r\n\t\"Doe, John\" <j@y.org>,\r\n c@z.org trailing\r\n".to_vec()
        );
        assert_eq!(
            f.value(),
            "a@x.org,\t\"Doe, John\" <j@y.org>, c@z.org trailing"
        );
        let mut h = Header::default();
        h.fields.push(f);
        h.fields.push(Field::start(b"cc: d@w.org").unwrap());
        h.fields.push(Field::start(b"BCC: hidden@v.org").unwrap());
        h.fields.push(Field::start(b"Subject: x").unwrap());
        assert_eq!(
            h.addresses(&["To", "Cc", "Bcc"]),
            [
                "a@x.org",
                "j@y.org",
                "c@z.org trailing",
                "d@w.org",
                "hidden@v.org"
            ]
        );
        assert_eq!(h.remove("Bcc"), 1);
        let mut out = Vec::new();
        h.write_to(&mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(!text.to_lowercase().contains("bcc") && !text.contains("hidden"));
        assert!(text.ends_with("cc: d@w.org\r\nSubject: x\r\n"));
    }

    #[test]
    fn missing_fields_are_added_only_when_missing() {
        let d = Defaults {
            time: 0,
            message_id: "ID1@relay.test",
            from: "CronDaemon <root@relay.test>",
        };
        let date = "Date: Thu, 01 Jan 1970 00:00:00 +0000\r\n";
        let mid = "Message-ID: <ID1@relay.test>\r\n";
        let from = "From: CronDaemon <root@relay.test>\r\n";
        let cases: &[(&[&[u8]], &[&str])] = &[
            (&[b"Subject: x"], &[date, mid, from]),
            (&[b"date: Mon, 1 Jan 2024 00:00:00 +0000"], &[mid, from]),
            (&[b"MESSAGE-ID: <a@b>", b"From: me@x.org"], &[date]),
            (&[b"Date: x", b"Message-Id: <a@b>", b"from: me@x.org"], &[]),
        ];
        for (lines, want) in cases {
            let mut h = Header::default();
            for l in *lines {
                h.fields.push(Field::start(l).unwrap());
            }
            assert_eq!(missing_fields(&h, &d), *want, "{lines:?}");
        }
    }

    #[test]
    fn phrases_and_mailboxes() {
        let cases = [
            ("CronDaemon", "CronDaemon"),
            ("Cron Daemon", "Cron Daemon"),
            ("Doe, John", "\"Doe, John\""),
            ("say \"hi\"", "\"say \\\"hi\\\"\""),
            ("J\u{f6}rg", "=?UTF-8?B?SsO2cmc=?="),
            ("evil\r\nBcc: x", "\"evil  Bcc: x\""),
        ];
        for (name, want) in cases {
            assert_eq!(phrase(name), want, "{name:?}");
        }
        assert_eq!(
            mailbox(Some("Cron Daemon"), "root@h"),
            "Cron Daemon <root@h>"
        );
        assert_eq!(mailbox(Some("  "), "root@h"), "root@h");
        assert_eq!(mailbox(None, "root@h"), "root@h");
    }

    #[test]
    fn unstructured_fields_fold_and_encode() {
        assert_eq!(
            unstructured("Subject", "SMART error"),
            "Subject: SMART error\r\n"
        );
        assert_eq!(
            unstructured("Subject", "a\r\nBcc: x"),
            "Subject: a  Bcc: x\r\n",
            "no line break can get through"
        );
        let long = "word ".repeat(40);
        let f = unstructured("Subject", long.trim_end());
        assert!(
            f.lines().all(|l| l.trim_end_matches('\r').len() <= 78),
            "{f}"
        );
        assert_eq!(
            f.replace("\r\n ", " "),
            format!("Subject: {}\r\n", long.trim_end())
        );
        let f = unstructured("Subject", &"\u{e9}t\u{e9} ".repeat(20));
        assert!(f.starts_with("Subject: =?UTF-8?B?"), "{f}");
        for l in f.split("\r\n") {
            assert!(l.len() <= 78, "{l}");
        }
        for w in encoded_words(&"\u{1F600}".repeat(30)) {
            assert!(w.len() <= 75, "RFC 2047 section 2: {w}");
        }
        assert_eq!(
            address_field("To", &["a@x.org".into(), "b@y.org".into()]),
            "To: a@x.org, b@y.org\r\n"
        );
    }

    #[test]
    fn local_received() {
        let h = local_received_header(&LocalTrace {
            user: "root",
            hostname: "relay.test",
            protocol: "local",
            id: "ABC",
            recipient: Some("admin@x.org"),
            time: 0,
        });
        assert_eq!(
            h,
            "Received: from localhost (user root)\r\n\tby relay.test (picorelay) with local id ABC\r\n\tfor <admin@x.org>;\r\n\tThu, 01 Jan 1970 00:00:00 +0000\r\n"
        );
    }
}
