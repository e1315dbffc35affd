//! Fuzzes the server state machine with an arbitrary byte stream, split into lines as the
//! server does (scan_line up to MAX_AUTH_LINE, skip_line after an over-long line), with DATA
//! read by the DataReader and STARTTLS/data outcomes simulated.
//!
//! Input: byte 0 picks the policy, byte 1 the DATA outcomes; the rest is what the client sends.
#![no_main]

use libfuzzer_sys::fuzz_target;
use picorelay_fuzz::config::AuthMode;
use picorelay_fuzz::session::{Action, Authenticator, DataOutcome, Policy, Session};
use picorelay_fuzz::smtp::command::{scan_line, skip_line, LineScan, MAX_AUTH_LINE};
use picorelay_fuzz::smtp::data::DataReader;
use picorelay_fuzz::smtp::reply::{parse_reply_line, Reply, MAX_REPLY_LINE};

/// Accepts exactly user "u" with password "p" (base64 "AHUAcA==" for PLAIN).
struct Dummy;

impl Authenticator for Dummy {
    fn verify(&self, user: &str, password: &[u8]) -> bool {
        user == "u" && password == b"p"
    }
}

/// Every reply we send is well formed: CRLF lines of at most 512 octets, no other control
/// characters, a 2xx-5xx code the client-side parser reads back, the last line marked last.
fn check(r: &Reply) {
    assert!((200..600).contains(&r.code), "{r:?}");
    let bytes = r.to_bytes();
    let lines: Vec<&[u8]> = bytes.split_inclusive(|&b| b == b'\n').collect();
    for (i, line) in lines.iter().enumerate() {
        assert!(line.len() <= MAX_REPLY_LINE, "reply line too long: {r:?}");
        assert!(line.ends_with(b"\r\n"));
        let body = &line[..line.len() - 2];
        assert!(
            !body.iter().any(|&b| b < 0x20 || b == 0x7f),
            "control byte in reply {r:?}"
        );
        let (code, last, _) = parse_reply_line(line).expect("our reply parses");
        assert_eq!(code, r.code);
        assert_eq!(last, i + 1 == lines.len());
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let (p, outcomes, mut buf) = (data[0], data[1], &data[2..]);
    let policy = Policy {
        hostname: "relay.test".into(),
        tag: "session fuzz".into(),
        max_message_size: 1000,
        max_recipients: 3,
        relay_allowed: p & 1 != 0,
        local_client: p & 2 != 0,
        starttls_available: p & 4 != 0,
        implicit_tls: p & 8 != 0,
        auth: match (p >> 4) & 3 {
            0 => AuthMode::Off,
            1 => AuthMode::Optional,
            _ => AuthMode::Required,
        },
        have_users: p & 64 != 0,
        require_tls: p & 128 != 0,
    };
    let auth = Dummy;
    let mut s = Session::new(policy.clone(), &auth);
    check(&s.greeting());
    let mut n_data = 0u32;
    loop {
        let action = match scan_line(buf, MAX_AUTH_LINE) {
            LineScan::Line { end, next } => {
                let a = s.line(&buf[..end]);
                buf = &buf[next..];
                a
            }
            LineScan::NeedMore => break,
            LineScan::TooLong => {
                let a = s.line_too_long();
                match skip_line(buf) {
                    Some(n) => buf = &buf[n..],
                    None => buf = &[],
                }
                a
            }
        };
        match action {
            Action::Reply(r) => check(&r),
            Action::Close(r) => {
                check(&r);
                return;
            }
            Action::StartTls(r) => {
                check(&r);
                assert!(policy.starttls_available && !s.is_tls());
                // The server drops everything pipelined after STARTTLS (RFC 3207 §4, CVE-2011-0411).
                buf = &[];
                s.tls_started();
                assert!(s.transaction().is_none() && s.user().is_none());
            }
            Action::Data(r) => {
                check(&r);
                assert_eq!(r.code, 354);
                let t = s.transaction().expect("DATA without a transaction");
                assert!(!t.recipients.is_empty() && t.recipients.len() <= policy.max_recipients);
                // Relaying needs relay_networks or AUTH.
                assert!(policy.relay_allowed || s.user().is_some());
                if policy.require_tls && !policy.local_client {
                    assert!(s.is_tls());
                }
                if policy.auth == AuthMode::Required {
                    assert!(s.user().is_some());
                }
                let mut reader = DataReader::new(policy.max_message_size);
                let mut out = Vec::new();
                let (used, done) = reader.feed(buf, &mut out);
                buf = &buf[used..];
                if !done {
                    return; // the client vanished mid-DATA
                }
                let outcome = match (outcomes >> (2 * (n_data % 4))) & 3 {
                    _ if reader.exceeded() => DataOutcome::TooBig,
                    0 => DataOutcome::Queued("0123456789abcdefABCDEF".into()),
                    1 => DataOutcome::Loop,
                    2 => DataOutcome::StorageFailed,
                    _ => DataOutcome::Queued("X".into()),
                };
                n_data += 1;
                check(&s.data_finished(outcome));
                assert!(s.transaction().is_none());
            }
        }
    }
});
