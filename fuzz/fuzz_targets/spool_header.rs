//! Fuzzes the spool file envelope parser; whatever it accepts must be writable again and
//! read back identically (so `update` can always rewrite a file `scan` accepted).
#![no_main]

use libfuzzer_sys::fuzz_target;
use picorelay_fuzz::spool::{format_header, parse_header};

fuzz_target!(|data: &[u8]| {
    let Ok((env, offset)) = parse_header(data) else {
        return;
    };
    assert!(offset <= data.len());
    assert_eq!(data[offset - 1], b'\n');
    let text = format_header(&env).expect("an accepted envelope can be written back");
    let (again, len) = parse_header(&text).expect("a written envelope parses");
    assert_eq!(len, text.len());
    // format_header cuts long reply texts; after one round trip it is a fixed point.
    let text2 = format_header(&again).expect("written twice");
    assert_eq!(text, text2);
    assert_eq!(again.recipients.len(), env.recipients.len());
    assert_eq!((&again.id, &again.sender), (&env.id, &env.sender));
});
