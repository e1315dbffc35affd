//! Fuzzes the smarthost client's reply-line parser and EHLO extension parser.
#![no_main]

use libfuzzer_sys::fuzz_target;
use picorelay_fuzz::client::Extensions;
use picorelay_fuzz::smtp::reply::{parse_reply_line, MAX_PEER_REPLY_LINE, MAX_REPLY_LINES};

fuzz_target!(|data: &[u8]| {
    let mut texts = Vec::new();
    for line in data.split_inclusive(|&b| b == b'\n').take(MAX_REPLY_LINES) {
        match parse_reply_line(line) {
            Ok((code, _last, text)) => {
                assert!((200..=559).contains(&code));
                assert!(line.len() <= MAX_PEER_REPLY_LINE);
                texts.push(text.to_string());
            }
            Err(e) => {
                let _ = e.to_string();
            }
        }
    }
    let ext = Extensions::parse(&texts);
    assert!(ext
        .auth
        .iter()
        .all(|m| !m.is_empty() && m.to_ascii_uppercase() == *m));
});
