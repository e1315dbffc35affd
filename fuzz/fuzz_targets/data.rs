//! Fuzzes the DATA reader fed in arbitrary splits, and the writer/reader round trip.
//!
//! Input: byte 0 chooses the split pattern, the rest is the stream after "DATA\r\n".
#![no_main]

use libfuzzer_sys::fuzz_target;
use picorelay_fuzz::smtp::data::{write_stuffed, DataReader};

/// Feeds `input` in chunks of the given sizes (cycled); returns (output, consumed, done).
fn run(input: &[u8], sizes: &[usize], max: u64) -> (Vec<u8>, usize, bool, DataReader) {
    let mut r = DataReader::new(max);
    let mut out = Vec::new();
    let mut pos = 0;
    let mut k = 0;
    while pos < input.len() {
        let n = sizes[k % sizes.len()].max(1).min(input.len() - pos);
        k += 1;
        let (used, done) = r.feed(&input[pos..pos + n], &mut out);
        assert!(used <= n);
        pos += used;
        if done {
            return (out, pos, true, r);
        }
        assert_eq!(used, n, "consumed less without being done");
    }
    (out, pos, false, r)
}

/// No bare CR or LF: every CR is followed by LF and every LF preceded by CR.
fn crlf_only(b: &[u8]) -> bool {
    b.iter().enumerate().all(|(i, &c)| match c {
        b'\r' => b.get(i + 1) == Some(&b'\n'),
        b'\n' => i > 0 && b[i - 1] == b'\r',
        _ => true,
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&seed, input)) = data.split_first() else {
        return;
    };
    let sizes: Vec<usize> = [1, 2, 3, 5, 7, 64, 4096]
        .iter()
        .map(|s| s + usize::from(seed >> 4))
        .collect();
    let max = if seed & 1 == 1 {
        u64::from(seed) * 3
    } else {
        u64::MAX
    };
    let (whole, consumed, done, r) = run(input, &[input.len().max(1)], max);
    let (split, consumed2, done2, _) =
        run(input, &sizes[usize::from(seed & 7) % sizes.len()..], max);
    // Splitting the stream never changes the result.
    assert_eq!((&whole, consumed, done), (&split, consumed2, done2));
    // Past the cap the output is cut anywhere (the message is refused with 552 anyway).
    assert!(r.exceeded() || crlf_only(&whole), "bare CR/LF in output");
    assert!(whole.len() as u64 <= max && whole.len() as u64 <= r.size());
    assert_eq!(r.exceeded(), r.size() > max);
    // Done exactly at the first CRLF "." CRLF (the DATA line's CRLF counts as the first CRLF).
    let mut framed = b"\r\n".to_vec();
    framed.extend_from_slice(input);
    let marker = framed.windows(5).position(|w| w == b"\r\n.\r\n");
    match marker {
        Some(p) => {
            assert!(done, "marker at {p} not seen");
            assert_eq!(
                consumed,
                p + 5 - 2,
                "stopped elsewhere than the first marker"
            );
        }
        None => assert!(!done && consumed == input.len()),
    }
    // Round trip: a received message written out with dot-stuffing reads back the same.
    if done && max == u64::MAX {
        let mut wire = Vec::new();
        write_stuffed(&whole[..], &mut wire).unwrap();
        let (back, used, done3, _) = run(&wire, &sizes, u64::MAX);
        assert!(
            done3 && used == wire.len(),
            "stuffed message not ended exactly"
        );
        assert_eq!(back, whole, "round trip changed the message");
    }
});
