//! Forwarding-time rewriting: `[aliases]` on recipients, `[rewrite] sender` on the envelope and
//! `[rewrite] from` on the From: header (only the header section is parsed; the body streams).

use std::collections::BTreeMap;
use std::io::{self, BufRead};

/// Most header bytes read into memory to rewrite From:. A header section this big is absurd
/// (RFC 5322 2.1.1 bounds lines, not their number); past it the message goes out unchanged.
pub const MAX_HEADER_SECTION: usize = 1024 * 1024;

/// alias returns the address `addr` is forwarded to, or None when no alias applies.
/// Only local recipients are looked up: no domain (`postmaster`), or a domain in
/// `local_domains` (already lowercased). The local part is matched case-insensitively
/// (the config lowercases alias names); `*` catches any other local name. One level only:
/// an alias target is never looked up again, so aliases cannot loop.
pub fn alias(
    addr: &str,
    aliases: &BTreeMap<String, String>,
    local_domains: &[String],
) -> Option<String> {
    if aliases.is_empty() {
        return None;
    }
    // The domain cannot contain '@'; a quoted local part can, so split at the last one.
    let (local, domain) = match addr.rsplit_once('@') {
        Some((l, d)) => (l, d),
        None => (addr, ""),
    };
    let is_local =
        domain.is_empty() || local_domains.iter().any(|d| d.eq_ignore_ascii_case(domain));
    if !is_local || local.is_empty() {
        return None;
    }
    aliases
        .get(&local.to_ascii_lowercase())
        .or_else(|| aliases.get("*"))
        .cloned()
}

/// envelope_sender is the MAIL FROM address for a message from `sender`: `rewrite` when set,
/// except for the null sender, which stays `<>` (RFC 5321 4.5.5, 6.1: a bounce must keep the
/// null reverse-path so nobody answers it).
pub fn envelope_sender(sender: &str, rewrite: Option<&str>) -> String {
    match rewrite {
        Some(r) if !sender.is_empty() => r.to_string(),
        _ => sender.to_string(),
    }
}

/// read_header_section reads lines up to and including the empty line that ends the header
/// section (RFC 5322 2.1), at most `max` bytes. Returns the bytes and whether the end was
/// found; when it was not, everything read is still returned (the caller sends it as is).
pub fn read_header_section<R: BufRead>(r: &mut R, max: usize) -> io::Result<(Vec<u8>, bool)> {
    let mut out = Vec::new();
    loop {
        let start = out.len();
        // take() bounds a single endless line as well as the whole section.
        let limit = max.saturating_sub(start) as u64;
        if limit == 0 {
            return Ok((out, false));
        }
        let n = <&mut R as io::Read>::take(&mut *r, limit).read_until(b'\n', &mut out)?;
        if n == 0 {
            return Ok((out, false));
        }
        let line = &out[start..];
        if line == b"\r\n" || line == b"\n" {
            return Ok((out, true));
        }
        if !line.ends_with(b"\n") {
            return Ok((out, false));
        }
    }
}

/// One header field: its name and the whole field, continuation lines and CRLF included.
struct Field<'a> {
    name: &'a [u8],
    raw: &'a [u8],
}

/// split_fields splits a header section into fields and the rest (the empty line, or
/// whatever follows the first line that is neither a field nor a continuation).
fn split_fields(section: &[u8]) -> (Vec<Field<'_>>, &[u8]) {
    let mut fields = Vec::new();
    let mut pos = 0;
    while pos < section.len() {
        let line_end = |from: usize| {
            section[from..]
                .iter()
                .position(|&b| b == b'\n')
                .map(|i| from + i + 1)
                .unwrap_or(section.len())
        };
        let first_end = line_end(pos);
        let line = &section[pos..first_end];
        // RFC 5322 2.2: field-name = 1*ftext (printable US-ASCII except ':'), then ':'.
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            break;
        };
        let name = &line[..colon];
        if name.is_empty() || !name.iter().all(|&b| (33..=126).contains(&b)) {
            break;
        }
        // RFC 5322 2.2.3: a line starting with WSP continues the field (folding).
        let mut end = first_end;
        while end < section.len() && matches!(section[end], b' ' | b'\t') {
            end = line_end(end);
        }
        fields.push(Field {
            name,
            raw: &section[pos..end],
        });
        pos = end;
    }
    (fields, &section[pos..])
}

/// rewrite_from returns `section` (a header section as read by `read_header_section`) with
/// every From: field replaced by one `From: {from}`. When the message had a From: and no
/// Reply-To:, the original From value becomes the Reply-To, so answers still reach the real
/// author. With no From: at all, one is added. Other fields keep their order and bytes.
pub fn rewrite_from(section: &[u8], from: &str) -> Vec<u8> {
    let (fields, rest) = split_fields(section);
    let is = |f: &Field, name: &str| f.name.eq_ignore_ascii_case(name.as_bytes());
    let has_reply_to = fields.iter().any(|f| is(f, "reply-to"));
    let mut out = Vec::with_capacity(section.len() + from.len() + 32);
    let new_from = format!("From: {from}\r\n");
    let mut done = false;
    for f in &fields {
        if !is(f, "from") {
            out.extend_from_slice(f.raw);
            continue;
        }
        if done {
            continue; // a second From: (malformed) goes too
        }
        done = true;
        out.extend_from_slice(new_from.as_bytes());
        // The value with its folding, after "From:"; the field's own line end is re-added.
        let value = &f.raw[f.name.len() + 1..];
        let value = trim_line_end(value);
        if !has_reply_to && value.iter().any(|b| !b.is_ascii_whitespace()) {
            out.extend_from_slice(b"Reply-To:");
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        }
    }
    if !done {
        out.extend_from_slice(new_from.as_bytes());
    }
    out.extend_from_slice(rest);
    out
}

/// The bytes without one trailing CRLF or LF.
fn trim_line_end(b: &[u8]) -> &[u8] {
    let b = b.strip_suffix(b"\n").unwrap_or(b);
    b.strip_suffix(b"\r").unwrap_or(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_map_local_names_only() {
        let mut aliases = BTreeMap::new();
        aliases.insert("root".to_string(), "admin@example.com".to_string());
        aliases.insert("*".to_string(), "catchall@example.com".to_string());
        let domains = vec!["relay.test".to_string(), "localhost".to_string()];
        let cases = [
            ("root@relay.test", Some("admin@example.com")),
            ("ROOT@Relay.Test", Some("admin@example.com")),
            ("root", Some("admin@example.com")),
            ("postmaster", Some("catchall@example.com")),
            ("backup@localhost", Some("catchall@example.com")),
            ("root@example.org", None),
            ("\"a@b\"@relay.test", Some("catchall@example.com")),
            ("\"a@b\"@other.test", None),
        ];
        for (addr, want) in cases {
            assert_eq!(alias(addr, &aliases, &domains).as_deref(), want, "{addr}");
        }
        // Without "*", unknown local names pass unchanged.
        aliases.remove("*");
        assert_eq!(alias("backup@localhost", &aliases, &domains), None);
        assert_eq!(alias("root", &BTreeMap::new(), &domains), None);
    }

    #[test]
    fn sender_rewrite_keeps_null_sender() {
        let cases = [
            ("a@b", None, "a@b"),
            ("a@b", Some("nas@example.com"), "nas@example.com"),
            ("", Some("nas@example.com"), ""),
        ];
        for (sender, rw, want) in cases {
            assert_eq!(envelope_sender(sender, rw), want);
        }
    }

    #[test]
    fn from_rewrite() {
        let nas = "NAS <nas@example.com>";
        let cases: &[(&str, &str)] = &[
            // Plain From, no Reply-To: the original moves to Reply-To.
            (
                "Subject: x\r\nFrom: Alice <a@example.org>\r\nTo: b@x\r\n\r\n",
                "Subject: x\r\nFrom: NAS <nas@example.com>\r\nReply-To: Alice <a@example.org>\r\nTo: b@x\r\n\r\n",
            ),
            // A Reply-To already there is kept and not doubled.
            (
                "From: a@example.org\r\nReply-To: list@example.org\r\n\r\n",
                "From: NAS <nas@example.com>\r\nReply-To: list@example.org\r\n\r\n",
            ),
            // Folded From: the whole field goes, folding kept in Reply-To.
            (
                "FROM: \"A very long name\"\r\n\t<a@example.org>\r\nTo: b@x\r\n\r\n",
                "From: NAS <nas@example.com>\r\nReply-To: \"A very long name\"\r\n\t<a@example.org>\r\nTo: b@x\r\n\r\n",
            ),
            // No From at all: one is added at the end of the fields.
            ("To: b@x\r\n\r\n", "To: b@x\r\nFrom: NAS <nas@example.com>\r\n\r\n"),
            // Two From fields: one left.
            (
                "From: a@x\r\nFrom: c@x\r\n\r\n",
                "From: NAS <nas@example.com>\r\nReply-To: a@x\r\n\r\n",
            ),
            // Body-looking line without a blank line: fields stop there, the rest is kept.
            (
                "From: a@x\r\nnot a header\r\n",
                "From: NAS <nas@example.com>\r\nReply-To: a@x\r\nnot a header\r\n",
            ),
            // From-like text after the header section is not touched.
            (
                "To: b@x\r\n\r\nFrom: body\r\n",
                "To: b@x\r\nFrom: NAS <nas@example.com>\r\n\r\nFrom: body\r\n",
            ),
        ];
        for (input, want) in cases {
            let got = rewrite_from(input.as_bytes(), nas);
            assert_eq!(String::from_utf8_lossy(&got), *want, "input {input:?}");
        }
    }

    #[test]
    fn header_section_is_bounded() {
        let cases: &[(&str, usize, &str, bool)] = &[
            (
                "A: 1\r\nB: 2\r\n\r\nbody\r\n",
                100,
                "A: 1\r\nB: 2\r\n\r\n",
                true,
            ),
            ("A: 1\r\n", 100, "A: 1\r\n", false),
            ("\r\nbody", 100, "\r\n", true),
            ("A: 123456789\r\n\r\n", 8, "A: 12345", false),
        ];
        for (input, max, want, complete) in cases {
            let mut r = io::Cursor::new(input.as_bytes());
            let (got, done) = read_header_section(&mut r, *max).unwrap();
            assert_eq!(
                (String::from_utf8_lossy(&got).as_ref(), done),
                (*want, *complete),
                "{input:?}"
            );
            // Nothing is lost: the rest is still in the reader.
            let mut rest = Vec::new();
            io::Read::read_to_end(&mut r, &mut rest).unwrap();
            assert_eq!([got, rest].concat(), input.as_bytes());
        }
    }
}
