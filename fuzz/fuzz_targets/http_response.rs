//! Fuzzes the token endpoint response reader over arbitrary bytes in arbitrary read sizes.
//!
//! Input: byte 0 seeds the read sizes, the rest is what the server sends. Checked: the same
//! result whether the bytes come in one read or in pieces; the body never exceeds the cap,
//! nor does its allocation; a response is final (200..=599) with well-formed header fields.
#![no_main]

use libfuzzer_sys::fuzz_target;
use picorelay_fuzz::oauth::http::{read_response, MAX_HEADERS};
use std::io::{Cursor, Read};

const CAP: usize = 4096;

/// Pieces hands the data out in pseudo-random sizes from 1 to `max`.
struct Pieces<'a> {
    data: &'a [u8],
    state: u32,
    max: usize,
}

impl Read for Pieces<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.state = self.state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        let size = 1 + (self.state >> 16) as usize % self.max;
        let n = size.min(buf.len()).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&seed, input)) = data.split_first() else {
        return;
    };
    let whole = read_response(&mut Cursor::new(input), CAP);
    let mut pieces = Pieces {
        data: input,
        state: u32::from(seed),
        // 1..=16 mostly exercises boundaries; 64 and 5000 cross the reader's buffer.
        max: [1, 2, 3, 7, 16, 64, 5000][usize::from(seed) % 7],
    };
    let split = read_response(&mut pieces, CAP);
    assert_eq!(whole, split, "result depends on read sizes");
    match whole {
        Ok(r) => {
            assert!(r.body.len() <= CAP);
            assert!(r.body.capacity() <= CAP);
            assert!((200..=599).contains(&r.status));
            assert!(r.headers.len() <= MAX_HEADERS);
            for (name, value) in &r.headers {
                assert!(!name.is_empty() && !name.contains([':', ' ', '\r', '\n']));
                assert!(!value.contains(['\r', '\n', '\0']));
                assert!(r.header(name).is_some());
            }
            assert_eq!(r.is_redirect(), (300..400).contains(&r.status));
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
