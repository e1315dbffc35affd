//! Fuzzes the spool file envelope parser; whatever it accepts must be writable again and
//! read back identically (so `update` can always rewrite a file `scan` accepted).
#![no_main]

use libfuzzer_sys::fuzz_target;
use picorelay_fuzz::spool::format::{format_header, parse_header};

fuzz_target!(|data: &[u8]| {
    let Ok(header) = parse_header(data) else {
        return;
    };
    let (env, offset) = (header.env.clone(), header.body_at as usize);
    assert!(offset <= data.len());
    assert_eq!(data[offset - 1], b'\n');
    // The message length never exceeds what the file holds past the header, or it is refused.
    if let Some(n) = header.length {
        let room = (data.len() - offset) as u64;
        assert_eq!(header.message_len(data.len() as u64).is_ok(), n <= room);
    }
    let length = header.length.unwrap_or(0);
    let text = format_header(&env, length).expect("an accepted envelope can be written back");
    let again = parse_header(&text).expect("a written envelope parses");
    assert_eq!(again.body_at as usize, text.len());
    assert_eq!(again.length, Some(length));
    let again = again.env;
    // format_header cuts long reply texts; after one round trip it is a fixed point.
    let text2 = format_header(&again, length).expect("written twice");
    assert_eq!(text, text2);
    assert_eq!(again.recipients.len(), env.recipients.len());
    assert_eq!((&again.id, &again.sender), (&env.id, &env.sender));
});
