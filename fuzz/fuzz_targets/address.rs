//! Fuzzes the MAIL/RCPT path parser; a parsed mailbox must parse again to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use picorelay_fuzz::smtp::address::{parse_path, MAX_DOMAIN, MAX_LOCAL, MAX_PATH};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let Ok((mailbox, rest)) = parse_path(s) else {
        return;
    };
    // The rest is a tail of the input (the parameters).
    assert!(s.ends_with(rest));
    let Some(mb) = mailbox else {
        return;
    };
    // RFC 5321 4.5.3.1.1 / 4.5.3.1.2 / 4.5.3.1.3 limits hold for what we accept.
    assert!(mb.local.len() <= MAX_LOCAL, "local part {:?}", mb.local);
    assert!(mb.domain.len() <= MAX_DOMAIN);
    let text = mb.to_string();
    assert!(text.len() + 2 <= MAX_PATH, "path {text:?}");
    // No control character can reach a spool file, a log line or the smarthost (RFC 5321 4.1.2:
    // qtextSMTP and quoted-pairSMTP are printable).
    assert!(
        !text.chars().any(|c| c.is_ascii_control()),
        "control character in {text:?}"
    );
    // Canonical form round trip: what we store and forward must be accepted again as the same mailbox.
    let again = format!("<{text}>");
    match parse_path(&again) {
        Ok((Some(mb2), "")) => assert_eq!(mb, mb2, "{again:?}"),
        other => panic!("{again:?} (from {s:?}) does not parse back: {other:?}"),
    }
});
