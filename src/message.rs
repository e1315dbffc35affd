//! The little RFC 5322 work on messages: the Received trace header and dates.

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
}
