//! The DATA stream: reading a message after DATA (end marker, dot-unstuffing, CRLF normalisation) and writing one with dot-stuffing.

use std::io::{self, Read, Write};

/// Where the reader is in the byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At the start of a line after a real CRLF (or right after the DATA command): a dot is special.
    LineStart,
    /// Saw "." at a real line start.
    Dot,
    /// Saw "." CR at a real line start: LF now ends the data.
    DotCr,
    /// Inside a line, or at the start of a line opened by a bare CR/LF (where a dot is plain data).
    Text,
    /// Saw a CR that is not yet known to be part of a CRLF.
    Cr,
    /// The end marker has been consumed.
    Done,
}

/// Header-section tracking, to count Received fields (RFC 5321 6.3 loop detection).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Header {
    /// At the start of a header line.
    LineStart,
    /// Reading a field name; `n` octets so far, `matches` while they equal a prefix of "received".
    Name { n: usize, matches: bool },
    /// Past the name (or in a continuation line): nothing to learn until the line ends.
    Rest,
    /// The empty line was seen: the body has begun.
    Body,
}

const RECEIVED: &[u8] = b"received";

/// DATA reader: a byte state machine (RFC 5321 4.1.1.4, 4.5.2). End of data ONLY on CRLF "." CRLF
/// (the CRLF before the dot may be the one that ended the DATA command line, i.e. the reader starts at "line start").
/// Dot-unstuffing at line starts (after a real CRLF). Bare LF and bare CR (not part of CRLF) are
/// normalised to CRLF in the output; they never end the data (SMTP smuggling, CVE-2023-51764).
/// Output is CRLF-only. Output stops growing past max_size but input is consumed to the end marker.
#[derive(Debug, Clone)]
pub struct DataReader {
    state: State,
    header: Header,
    max_size: u64,
    size: u64,
    received: u32,
    bare: u32,
    eight_bit: bool,
}

impl DataReader {
    /// A reader positioned just after the CRLF of the DATA command; `max_size` caps the output (RFC 1870).
    pub fn new(max_size: u64) -> DataReader {
        DataReader {
            state: State::LineStart,
            header: Header::LineStart,
            max_size,
            size: 0,
            received: 0,
            bare: 0,
            eight_bit: false,
        }
    }

    /// Consumes input, appends message bytes to `out`. Returns (consumed, done). Bytes after the end marker are NOT consumed.
    /// Once done, further calls consume nothing and return (0, true).
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> (usize, bool) {
        let mut i = 0;
        while i < input.len() {
            if self.state == State::Done {
                return (i, true);
            }
            // Fast path: in the body, a run of ordinary lines (each ended by a
            // real CRLF and followed by a byte that is no dot, CR or LF) needs no
            // state machine and is copied in one go.
            if self.header == Header::Body && self.state == State::Text {
                let run = plain_body_run(&input[i..]);
                if run > 0 {
                    self.output(&input[i..i + run], out);
                    i += run;
                    continue;
                }
            }
            self.step(input[i], out);
            i += 1;
        }
        (i, self.state == State::Done)
    }

    /// Advances the state machine by one input byte.
    fn step(&mut self, c: u8, out: &mut Vec<u8>) {
        // `continue` re-dispatches `c` after a pending CR turned out to be bare.
        loop {
            match (self.state, c) {
                (State::Done, _) => return,
                (State::LineStart, b'.') => self.state = State::Dot,
                (State::Dot, b'\r') => self.state = State::DotCr,
                // RFC 5321 4.5.3.1 / 4.1.1.4: only CRLF "." CRLF ends the data.
                (State::DotCr, b'\n') => self.state = State::Done,
                (State::Dot, b'\n') => {
                    // "." then bare LF: a line holding only a dot, which is data (never an end).
                    self.emit(b'.', out);
                    self.bare_newline(out);
                }
                (State::DotCr, _) => {
                    // "." then a bare CR: the dot is data, the CR a bare newline; `c` starts the next line.
                    self.emit(b'.', out);
                    self.bare_newline(out);
                    continue;
                }
                (State::Dot, _) => {
                    // RFC 5321 4.5.2: a leading dot followed by other characters is removed.
                    self.state = State::Text;
                    self.emit(c, out);
                }
                (State::Cr, b'\n') => {
                    self.newline(out);
                    self.state = State::LineStart;
                }
                (State::Cr, _) => {
                    self.bare_newline(out);
                    continue;
                }
                (_, b'\r') => self.state = State::Cr,
                (_, b'\n') => self.bare_newline(out),
                (_, _) => {
                    self.state = State::Text;
                    self.emit(c, out);
                }
            }
            return;
        }
    }

    /// A bare CR or LF: written as CRLF, but the next line is not a "real" line start, so a dot
    /// there is plain data and can never begin the end marker.
    fn bare_newline(&mut self, out: &mut Vec<u8>) {
        self.bare = self.bare.saturating_add(1);
        self.newline(out);
        self.state = State::Text;
    }

    /// Writes CRLF and tracks header lines.
    fn newline(&mut self, out: &mut Vec<u8>) {
        self.header = match self.header {
            // RFC 5322 2.1: the header section ends at the first empty line.
            Header::LineStart => Header::Body,
            Header::Name { .. } | Header::Rest => Header::LineStart,
            Header::Body => Header::Body,
        };
        self.output(b"\r\n", out);
    }

    /// Writes one message byte (never CR or LF) and tracks header field names.
    fn emit(&mut self, c: u8, out: &mut Vec<u8>) {
        self.header = match self.header {
            // RFC 5322 2.2.3: a line starting with WSP continues the previous field.
            Header::LineStart if c == b' ' || c == b'\t' => Header::Rest,
            Header::LineStart => Self::name_byte(0, true, c, &mut self.received),
            Header::Name { n, matches } => Self::name_byte(n, matches, c, &mut self.received),
            h => h,
        };
        self.output(&[c], out);
    }

    /// One octet of a field name; counts the field when the name is "Received" (any case;
    /// WSP before the colon, RFC 5322 4.5.3 obsolete syntax, is tolerated).
    fn name_byte(n: usize, matches: bool, c: u8, received: &mut u32) -> Header {
        if c == b':' {
            if matches && n == RECEIVED.len() {
                *received = received.saturating_add(1);
            }
            return Header::Rest;
        }
        if (c == b' ' || c == b'\t') && n >= RECEIVED.len() {
            return Header::Name { n, matches };
        }
        let matches = matches && RECEIVED.get(n).is_some_and(|r| c.eq_ignore_ascii_case(r));
        if !matches && n >= RECEIVED.len() {
            return Header::Rest;
        }
        Header::Name {
            n: n.saturating_add(1).min(RECEIVED.len() + 1),
            matches,
        }
    }

    /// Counts message bytes and appends them to `out` while within `max_size` (RFC 1870 6.3:
    /// the server keeps reading to the end marker, then refuses with 552).
    fn output(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        if !self.eight_bit && !bytes.is_ascii() {
            self.eight_bit = true;
        }
        let before = self.size;
        self.size = self.size.saturating_add(bytes.len() as u64);
        if before < self.max_size {
            let room = usize::try_from(self.max_size - before).unwrap_or(usize::MAX);
            out.extend_from_slice(&bytes[..bytes.len().min(room)]);
        }
    }

    /// Message bytes seen (also those past the cap), after unstuffing and normalisation.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// True when the message is larger than `max_size`: reply 552 5.3.4 (RFC 1870 6.3).
    pub fn exceeded(&self) -> bool {
        self.size > self.max_size
    }

    /// Count of "Received:" header fields (case-insensitive) in the header section.
    pub fn received_headers(&self) -> u32 {
        self.received
    }

    /// How many bare CR/LF were normalised to CRLF (for the log).
    pub fn bare_newlines(&self) -> u32 {
        self.bare
    }

    /// True when any byte >= 0x80 was seen.
    #[cfg(test)]
    pub fn eight_bit(&self) -> bool {
        self.eight_bit
    }
}

/// plain_body_run is the length of the prefix of `input` (read inside a body
/// line) that the state machine would copy unchanged: bytes other than CR and
/// LF, and CRLF pairs whose next byte starts an ordinary line (not ".", CR or
/// LF). It stops before anything that needs a decision, including a CRLF at
/// the very end of `input` (the next byte is not known yet).
fn plain_body_run(input: &[u8]) -> usize {
    let mut i = 0;
    loop {
        i += find_cr_or_lf(&input[i..]).unwrap_or(input.len() - i);
        match input.get(i..i + 3) {
            Some([b'\r', b'\n', next]) if !matches!(next, b'.' | b'\r' | b'\n') => i += 3,
            _ => return i,
        }
    }
}

/// find_cr_or_lf is the position of the first CR or LF, eight bytes at a time
/// (a message body is mostly long runs without either).
fn find_cr_or_lf(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let has_byte = |w: u64, b: u8| {
        let x = w ^ (ONES * u64::from(b));
        x.wrapping_sub(ONES) & !x & HIGHS != 0
    };
    let mut chunks = bytes.chunks_exact(8);
    let mut at = 0;
    for c in &mut chunks {
        let w = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        if has_byte(w, b'\r') || has_byte(w, b'\n') {
            break;
        }
        at += 8;
    }
    bytes[at..]
        .iter()
        .position(|&c| c == b'\r' || c == b'\n')
        .map(|p| at + p)
}

/// Writes a stored (CRLF) message to an SMTP peer: dot-stuffing (RFC 5321 4.5.2), CRLF everywhere
/// (bare CR/LF → CRLF), and the final ".\r\n" (adding a CRLF first if the message does not end with one).
/// Streams through fixed buffers: memory does not grow with the message. Flushes `out` at the end.
/// Returns the number of bytes written, end marker included.
pub fn write_stuffed<R: Read, W: Write>(mut msg: R, out: &mut W) -> io::Result<u64> {
    let mut inbuf = [0u8; 8192];
    let mut obuf: Vec<u8> = Vec::with_capacity(16384 + 8);
    let mut written: u64 = 0;
    let mut line_start = true;
    let mut pending_cr = false;
    loop {
        let n = match msg.read(&mut inbuf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let mut rest = &inbuf[..n];
        while let Some(&c) = rest.first() {
            if pending_cr {
                pending_cr = false;
                obuf.extend_from_slice(b"\r\n");
                line_start = true;
                if c == b'\n' {
                    rest = &rest[1..];
                }
                continue;
            }
            match c {
                b'\r' => pending_cr = true,
                b'\n' => {
                    obuf.extend_from_slice(b"\r\n");
                    line_start = true;
                }
                _ => {
                    if line_start && c == b'.' {
                        obuf.push(b'.');
                    }
                    // The rest of the line up to CR/LF goes in one copy.
                    let run = find_cr_or_lf(rest).unwrap_or(rest.len());
                    obuf.extend_from_slice(&rest[..run]);
                    rest = &rest[run..];
                    line_start = false;
                    continue;
                }
            }
            rest = &rest[1..];
        }
        if obuf.len() >= 16384 {
            out.write_all(&obuf)?;
            written += obuf.len() as u64;
            obuf.clear();
        }
    }
    if pending_cr {
        obuf.extend_from_slice(b"\r\n");
        line_start = true;
    }
    if !line_start {
        obuf.extend_from_slice(b"\r\n");
    }
    obuf.extend_from_slice(b".\r\n");
    out.write_all(&obuf)?;
    written += obuf.len() as u64;
    out.flush()?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Out {
        msg: Vec<u8>,
        consumed: usize,
        done: bool,
        size: u64,
        exceeded: bool,
        received: u32,
        bare: u32,
        eight_bit: bool,
    }

    /// Feeds `input` in the given chunks, stopping at done like a server would.
    fn run(chunks: &[&[u8]], max: u64) -> Out {
        let mut r = DataReader::new(max);
        let mut msg = Vec::new();
        let mut consumed = 0;
        let mut done = false;
        for chunk in chunks {
            let (n, d) = r.feed(chunk, &mut msg);
            assert!(n <= chunk.len());
            consumed += n;
            if d {
                done = true;
                break;
            }
            assert_eq!(n, chunk.len(), "all input consumed while not done");
        }
        Out {
            msg,
            consumed,
            done,
            size: r.size(),
            exceeded: r.exceeded(),
            received: r.received_headers(),
            bare: r.bare_newlines(),
            eight_bit: r.eight_bit(),
        }
    }

    /// Runs whole, split at every byte boundary, and byte by byte: all must agree.
    fn run_all(input: &[u8], max: u64) -> Out {
        let whole = run(&[input], max);
        let mut variants: Vec<Vec<&[u8]>> = Vec::new();
        for k in 0..=input.len() {
            variants.push(vec![&input[..k], &input[k..]]);
        }
        variants.push(input.chunks(1).collect());
        variants.push(input.chunks(3).collect());
        for v in variants {
            let o = run(&v, max);
            assert_eq!(o.msg, whole.msg, "split {v:?}");
            assert_eq!(o.consumed, whole.consumed, "split {v:?}");
            assert_eq!(o.done, whole.done, "split {v:?}");
            assert_eq!(o.size, whole.size);
            assert_eq!(o.exceeded, whole.exceeded);
            assert_eq!(o.received, whole.received, "split {v:?}");
            assert_eq!(o.bare, whole.bare);
            assert_eq!(o.eight_bit, whole.eight_bit);
        }
        whole
    }

    #[test]
    fn find_cr_or_lf_agrees_with_a_plain_scan() {
        for len in 0..40 {
            for at in 0..=len {
                for b in [b'\r', b'\n'] {
                    let mut v: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
                    if at < len {
                        v[at] = b;
                    }
                    let naive = v.iter().position(|&c| c == b'\r' || c == b'\n');
                    assert_eq!(find_cr_or_lf(&v), naive, "len {len} at {at}");
                }
            }
        }
        // Bytes next to CR/LF in value (0x0c, 0x0e, 0x8d) are no match.
        assert_eq!(
            find_cr_or_lf(&[0x0c, 0x0e, 0x8d, 0x8a, 0x0b, 9, 0, 0xff, 0x0c]),
            None
        );
    }

    #[test]
    fn body_runs_take_the_same_path_as_the_state_machine() {
        // Bodies long enough for the run copy, with every case it must stop at;
        // run_all checks the whole feed against byte-by-byte and every split.
        let head = b"Subject: x\r\n\r\n".to_vec();
        let bodies: [&[u8]; 9] = [
            b"line one\r\nline two\r\nline three\r\n.\r\n",
            b"aaaaaaaaaaaaaaaaaaaa\r\n..stuffed\r\nbbbbbbbbbbbbbbbb\r\n.\r\n",
            b"bare\rcr then text\r\n.\r\n",
            b"bare\nlf\n.\nstill data\r\n.\r\n",
            b"two\r\n\r\nempty lines\r\n\r\n.\r\n",
            b"eight \xc3\xa9 bit\r\nmore\r\n.\r\n",
            b"ends\r\n.\r\nMAIL FROM:<a@b>\r\n",
            b"cr cr\r\r\nlf\r\n\n.\r\n",
            b"no end yet\r\nxxxxxxxxxxxxxxxx\r\n",
        ];
        for body in bodies {
            let input = [head.as_slice(), body].concat();
            let o = run_all(&input, 1 << 20);
            let cut = run_all(&input, 18);
            assert_eq!(&o.msg[..18], cut.msg.as_slice());
            assert!(cut.exceeded);
        }
        let o = run_all(b"Subject: x\r\n\r\nline one\r\n..two\r\n.\r\ntail", 1000);
        assert_eq!(o.msg, b"Subject: x\r\n\r\nline one\r\n.two\r\n");
        assert!(o.done);
    }

    #[test]
    fn reader() {
        // (input, max, expected output, done, consumed (None = all), bare newlines)
        type Case = (&'static [u8], u64, &'static [u8], bool, Option<usize>, u32);
        let cases: Vec<Case> = vec![
            (b".\r\n", 100, b"", true, None, 0),
            (b"a\r\n.\r\n", 100, b"a\r\n", true, None, 0),
            (
                b"a\r\n.\r\nMAIL FROM:<x@y>\r\n",
                100,
                b"a\r\n",
                true,
                Some(6),
                0,
            ),
            (b"a\r\nb\r\n.\r\n", 100, b"a\r\nb\r\n", true, None, 0),
            // Dot-unstuffing.
            (b"..a\r\n.\r\n", 100, b".a\r\n", true, None, 0),
            (b"...\r\n.\r\n", 100, b"..\r\n", true, None, 0),
            (b"x\r\n..\r\n.\r\n", 100, b"x\r\n.\r\n", true, None, 0),
            (b"a.b\r\n.\r\n", 100, b"a.b\r\n", true, None, 0),
            (b"x\r\n.a\r\n.\r\n", 100, b"x\r\na\r\n", true, None, 0),
            // Lookalike end markers never end the data (SMTP smuggling).
            (b"a\n.\nb\r\n.\r\n", 100, b"a\r\n.\r\nb\r\n", true, None, 2),
            (b"a\r.\rb\r\n.\r\n", 100, b"a\r\n.\r\nb\r\n", true, None, 2),
            (
                b"a\r\n.\nb\r\n.\r\n",
                100,
                b"a\r\n.\r\nb\r\n",
                true,
                None,
                1,
            ),
            (
                b"a\n.\r\nb\r\n.\r\n",
                100,
                b"a\r\n.\r\nb\r\n",
                true,
                None,
                1,
            ),
            (
                b"a\r\n.\rb\r\n.\r\n",
                100,
                b"a\r\n.\r\nb\r\n",
                true,
                None,
                1,
            ),
            (b"a\r\n.\r.\r\n", 100, b"a\r\n.\r\n.\r\n", false, None, 1),
            (b"a\n.\n", 100, b"a\r\n.\r\n", false, None, 2),
            // The last CR is pending: it may still be the start of a CRLF.
            (b"a\r.\r", 100, b"a\r\n.", false, None, 1),
            (b"a\r\n.\n", 100, b"a\r\n.\r\n", false, None, 1),
            (b"a\n.\r\n", 100, b"a\r\n.\r\n", false, None, 1),
            (b"\n.\r\n.\r\n", 100, b"\r\n.\r\n", true, None, 1),
            // Bare CR / LF normalised.
            (b"a\nb\rc\r\n.\r\n", 100, b"a\r\nb\r\nc\r\n", true, None, 2),
            (b"a\r\r\n.\r\n", 100, b"a\r\n\r\n", true, None, 1),
            (b"\r\r\n.\r\n", 100, b"\r\n\r\n", true, None, 1),
            (b"a\n\n.\r\n", 100, b"a\r\n\r\n.\r\n", false, None, 2),
            (b"a\n\r\n.\r\n", 100, b"a\r\n\r\n", true, None, 1),
            // Unterminated.
            (b"abc", 100, b"abc", false, None, 0),
            (b"a\r\n.", 100, b"a\r\n", false, None, 0),
            (b"a\r\n.\r", 100, b"a\r\n", false, None, 0),
            (b"", 100, b"", false, None, 0),
            // Size cap: output stops, input consumed to the end marker.
            (b"abcdef\r\n.\r\n", 4, b"abcd", true, None, 0),
            (b"abcdef\r\n.\r\nQUIT\r\n", 4, b"abcd", true, Some(11), 0),
            (b"ab\r\n.\r\n", 4, b"ab\r\n", true, None, 0),
            (b"ab\r\n.\r\n", 0, b"", true, None, 0),
        ];
        for (input, max, want, done, consumed, bare) in cases {
            let o = run_all(input, max);
            let name = String::from_utf8_lossy(input);
            assert_eq!(
                o.msg,
                want,
                "{name:?}: got {:?}",
                String::from_utf8_lossy(&o.msg)
            );
            assert_eq!(o.done, done, "{name:?}");
            assert_eq!(o.consumed, consumed.unwrap_or(input.len()), "{name:?}");
            assert_eq!(o.bare, bare, "{name:?}");
            if !o.exceeded {
                assert_eq!(o.size, want.len() as u64, "{name:?}");
            }
            assert_eq!(o.exceeded, o.size > max, "{name:?}");
        }
    }

    #[test]
    fn size_accounting() {
        let o = run_all(b"abcdef\r\n.\r\n", 4);
        assert_eq!((o.size, o.exceeded), (8, true));
        let o = run_all(b"ab\r\n.\r\n", 4);
        assert_eq!((o.size, o.exceeded), (4, false));
        let o = run_all(b"..\n.\r\n", 100);
        assert_eq!(o.msg, b".\r\n.\r\n");
        assert_eq!(o.size, 6);
        assert!(!o.done);
    }

    #[test]
    fn eight_bit() {
        assert!(!run_all(b"abc\r\n.\r\n", 100).eight_bit);
        assert!(run_all("Subject: é\r\n\r\nx\r\n.\r\n".as_bytes(), 100).eight_bit);
        assert!(run_all(b"\r\n\xff\r\n.\r\n", 100).eight_bit);
        assert!(run_all(b"\r\n.\xff\r\n.\r\n", 100).eight_bit);
    }

    #[test]
    fn after_done_nothing_is_consumed() {
        let mut r = DataReader::new(100);
        let mut out = Vec::new();
        assert_eq!(r.feed(b".\r\n", &mut out), (3, true));
        assert_eq!(r.feed(b"more\r\n.\r\n", &mut out), (0, true));
        assert!(out.is_empty());
    }

    #[test]
    fn received_headers() {
        let cases: Vec<(&[u8], u32)> = vec![
            (b"Received: a\r\n\r\nbody\r\n.\r\n", 1),
            (b"Received: a\r\nreceived: b\r\nRECEIVED:c\r\nSubject: x\r\n\r\n.\r\n", 3),
            // Folded fields: continuation lines are not fields.
            (b"Received: from a\r\n by b\r\n\tReceived: c\r\n Received: d\r\nReceived: e\r\n\r\n.\r\n", 2),
            // Only in the header section.
            (b"Subject: x\r\n\r\nReceived: body\r\n.\r\n", 0),
            (b"\r\nReceived: x\r\n.\r\n", 0),
            // Bare newlines count as line ends in headers too.
            (b"Received: a\nReceived: b\rSubject: x\n\nReceived: c\r\n.\r\n", 2),
            // Names that only look similar.
            (b"Received-SPF: pass\r\nX-Received: a\r\nReceive: b\r\nReceivedx: c\r\n\r\n.\r\n", 0),
            (b"Received : obsolete\r\nReceived\t: tab\r\n\r\n.\r\n", 2),
            (b"Re ceived: a\r\n\r\n.\r\n", 0),
            // Stuffed dot at a header line start.
            (b"..Received: a\r\n\r\n.\r\n", 0),
            // Unterminated last header with no body.
            (b"Received: a\r\n.\r\n", 1),
            (b"Received:a\r\n.\r\n", 1),
            (b"Received\r\n.\r\n", 0),
        ];
        for (input, want) in cases {
            let o = run_all(input, 1000);
            assert_eq!(o.received, want, "{:?}", String::from_utf8_lossy(input));
            // Still counted past the cap.
            let o = run_all(input, 0);
            assert_eq!(
                o.received,
                want,
                "capped {:?}",
                String::from_utf8_lossy(input)
            );
        }
        let mut many = Vec::new();
        for _ in 0..40 {
            many.extend_from_slice(b"Received: from x by y; Mon, 1 Jan 2024 00:00:00 +0000\r\n");
        }
        many.extend_from_slice(b"\r\n.\r\n");
        assert_eq!(run(&[&many], 100).received, 40);
    }

    #[test]
    fn never_panics_on_random_bytes() {
        // A small deterministic generator (no rand crate): xorshift.
        let mut x: u32 = 0x1234_5678;
        let alphabet = b"\r\n.aR:\xc3\xa9 ";
        for _ in 0..300 {
            let mut input = Vec::new();
            for _ in 0..40 {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                input.push(alphabet[(x % alphabet.len() as u32) as usize]);
            }
            let o = run_all(&input, 16);
            // Output never holds a bare CR or LF.
            let m = &o.msg;
            for (i, &c) in m.iter().enumerate() {
                if c == b'\r' && i + 1 < m.len() {
                    assert_eq!(m[i + 1], b'\n');
                }
                if c == b'\n' {
                    assert!(i > 0 && m[i - 1] == b'\r');
                }
            }
        }
    }

    #[test]
    fn stuffing() {
        let cases: Vec<(&[u8], &[u8])> = vec![
            (b"", b".\r\n"),
            (b"a\r\n", b"a\r\n.\r\n"),
            (b"a", b"a\r\n.\r\n"),
            (b".a\r\n", b"..a\r\n.\r\n"),
            (b".\r\n", b"..\r\n.\r\n"),
            (b"a\r\n.\r\nb\r\n", b"a\r\n..\r\nb\r\n.\r\n"),
            (b"a\r\n..b\r\n", b"a\r\n...b\r\n.\r\n"),
            (b"a.b\r\n", b"a.b\r\n.\r\n"),
            (b"a\nb\rc\r\n", b"a\r\nb\r\nc\r\n.\r\n"),
            (b"a\n.b\r.c", b"a\r\n..b\r\n..c\r\n.\r\n"),
            (b"a\r", b"a\r\n.\r\n"),
            (b"a\r\r\n", b"a\r\n\r\n.\r\n"),
            (b"\r\n", b"\r\n.\r\n"),
            (b".", b"..\r\n.\r\n"),
        ];
        for (msg, want) in cases {
            let mut out = Vec::new();
            let n = write_stuffed(msg, &mut out).unwrap();
            assert_eq!(out, want, "{:?}", String::from_utf8_lossy(msg));
            assert_eq!(n, want.len() as u64);
        }
    }

    /// A reader handing out one byte at a time, to cross every buffer boundary.
    struct Trickle<'a>(&'a [u8]);
    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            match (self.0.split_first(), buf.first_mut()) {
                (Some((&c, rest)), Some(slot)) => {
                    *slot = c;
                    self.0 = rest;
                    Ok(1)
                }
                _ => Ok(0),
            }
        }
    }

    /// The byte-at-a-time definition of write_stuffed's output, for comparison.
    fn stuffed_reference(msg: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let (mut line_start, mut pending_cr) = (true, false);
        for &c in msg {
            if pending_cr {
                pending_cr = false;
                out.extend_from_slice(b"\r\n");
                line_start = true;
                if c == b'\n' {
                    continue;
                }
            }
            match c {
                b'\r' => pending_cr = true,
                b'\n' => {
                    out.extend_from_slice(b"\r\n");
                    line_start = true;
                }
                _ => {
                    if line_start && c == b'.' {
                        out.push(b'.');
                    }
                    out.push(c);
                    line_start = false;
                }
            }
        }
        if pending_cr || !line_start {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
        out
    }

    #[test]
    fn stuffing_agrees_with_the_byte_at_a_time_definition() {
        // Pseudo-random messages over the bytes that matter, whole and trickled.
        let mut x: u32 = 12345;
        for len in (0..300).chain([9000, 20000]) {
            let msg: Vec<u8> = (0..len)
                .map(|_| {
                    x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    b"aaaaaaaa..\r\n\r\n\xe9"[(x >> 16) as usize % 15]
                })
                .collect();
            let want = stuffed_reference(&msg);
            let mut out = Vec::new();
            assert_eq!(
                write_stuffed(msg.as_slice(), &mut out).unwrap(),
                want.len() as u64
            );
            assert_eq!(out, want, "{:?}", String::from_utf8_lossy(&msg));
            let mut out = Vec::new();
            write_stuffed(Trickle(&msg), &mut out).unwrap();
            assert_eq!(out, want);
        }
    }

    #[test]
    fn stuffing_round_trip() {
        // What write_stuffed sends, DataReader reads back unchanged (for CRLF messages).
        let mut big = Vec::new();
        for i in 0..5000 {
            big.extend_from_slice(format!(".line {i}\r\n").as_bytes());
            if i % 7 == 0 {
                big.extend_from_slice(b".\r\n\r\n");
            }
        }
        let msgs: Vec<&[u8]> = vec![b"a\r\n.\r\n..\r\nb\r\n", b"Subject: x\r\n\r\n.\r\n", &big];
        for msg in msgs {
            let mut wire = Vec::new();
            write_stuffed(Trickle(msg), &mut wire).unwrap();
            let mut wire2 = Vec::new();
            write_stuffed(msg, &mut wire2).unwrap();
            assert_eq!(wire, wire2);
            let mut r = DataReader::new(u64::MAX);
            let mut back = Vec::new();
            assert_eq!(r.feed(&wire, &mut back), (wire.len(), true));
            assert_eq!(back, msg);
            assert_eq!(r.bare_newlines(), 0);
        }
    }
}
