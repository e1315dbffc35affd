//! Fuzzes the command line splitter (`scan_line`, `skip_line`) and parser (`command::parse`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use picorelay_fuzz::smtp::command::{self, scan_line, skip_line, LineScan};

fuzz_target!(|data: &[u8]| {
    // The parser must answer every line, never panic.
    let _ = command::parse(data);
    let _ = command::line_limit(data);
    // The splitter: walk the input as the server does.
    let max = 1 + usize::from(data.first().copied().unwrap_or(0)) * 4;
    let mut buf = data;
    while !buf.is_empty() {
        match scan_line(buf, max) {
            LineScan::Line { end, next } => {
                assert!(end < next && next <= buf.len() && next <= max);
                assert_eq!(buf[next - 1], b'\n');
                assert!(!buf[..end].contains(&b'\n'));
                assert!(end + 1 == next || (end + 2 == next && buf[end] == b'\r'));
                let _ = command::parse(&buf[..end]);
                buf = &buf[next..];
            }
            LineScan::NeedMore => {
                assert!(buf.len() < max && !buf.contains(&b'\n'));
                break;
            }
            LineScan::TooLong => {
                assert!(buf.len() >= max && !buf[..max].contains(&b'\n'));
                match skip_line(buf) {
                    Some(n) => {
                        assert!(n <= buf.len() && buf[n - 1] == b'\n');
                        buf = &buf[n..];
                    }
                    None => break,
                }
            }
        }
    }
});
