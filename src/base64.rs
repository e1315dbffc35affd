//! Base64 (RFC 4648 section 4, standard alphabet, padded) for the SMTP AUTH exchange, and the
//! URL-safe unpadded form (section 5) that PKCE (RFC 7636) uses.

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const URL_ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Encodes `data` with the standard alphabet and `=` padding (RFC 4648 section 4).
pub fn encode(data: &[u8]) -> String {
    encode_with(data, ALPHABET, true)
}

/// Encodes `data` with the URL and file name safe alphabet, without padding (RFC 4648
/// section 5; RFC 7636 appendix A).
pub fn encode_url(data: &[u8]) -> String {
    encode_with(data, URL_ALPHABET, false)
}

fn encode_with(data: &[u8], alphabet: &[u8; 64], pad: bool) -> String {
    let sym = |v: u32| char::from(alphabet[(v & 0x3f) as usize]);
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b0 = chunk[0];
        let b1 = chunk.get(1).copied().unwrap_or(0);
        let b2 = chunk.get(2).copied().unwrap_or(0);
        let w = (u32::from(b0) << 16) | (u32::from(b1) << 8) | u32::from(b2);
        out.push(sym(w >> 18));
        out.push(sym(w >> 12));
        if chunk.len() > 1 {
            out.push(sym(w >> 6));
        } else if pad {
            out.push('=');
        }
        if chunk.len() > 2 {
            out.push(sym(w));
        } else if pad {
            out.push('=');
        }
    }
    out
}

/// The 6-bit value of one alphabet character, None for anything else (including '=').
fn value(c: u8) -> Option<u32> {
    let v = match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => return None,
    };
    Some(u32::from(v))
}

/// Decodes padded standard base64, strictly: None when the length is not a multiple
/// of 4, on any character outside the alphabet (whitespace included), on padding
/// anywhere but the end of the last quantum, and when the unused bits before the
/// padding are not zero (RFC 4648 section 3.5: a canonical encoding only, so one
/// secret has one spelling). The empty string decodes to an empty vector.
pub fn decode(text: &str) -> Option<Vec<u8>> {
    let bytes = text.as_bytes();
    // RFC 4648 section 3.2: padded encodings are whole 4-character quanta.
    if bytes.len() % 4 != 0 {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    let quanta = bytes.len() / 4;
    for (i, q) in bytes.chunks_exact(4).enumerate() {
        let last = i + 1 == quanta;
        let pad = match (q[2], q[3]) {
            (b'=', b'=') if last => 2,
            (_, b'=') if last => 1,
            _ => 0,
        };
        let a = value(q[0])?;
        let b = value(q[1])?;
        let c = if pad == 2 { 0 } else { value(q[2])? };
        let d = if pad >= 1 { 0 } else { value(q[3])? };
        let w = (a << 18) | (b << 12) | (c << 6) | d;
        // RFC 4648 section 3.5: pad bits must be zero in a canonical encoding.
        if (pad == 2 && w & 0xffff != 0) || (pad == 1 && w & 0xff != 0) {
            return None;
        }
        out.push((w >> 16) as u8);
        if pad < 2 {
            out.push((w >> 8) as u8);
        }
        if pad < 1 {
            out.push(w as u8);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_alphabet_without_padding() {
        assert_eq!(encode_url(b""), "");
        assert_eq!(encode_url(b"f"), "Zg");
        assert_eq!(encode_url(b"fo"), "Zm8");
        assert_eq!(encode_url(b"foo"), "Zm9v");
        assert_eq!(encode_url(&[0xfb, 0xff, 0xbf]), "-_-_");
        assert_eq!(encode(&[0xfb, 0xff, 0xbf]), "+/+/");
    }

    /// RFC 4648 section 10 test vectors, plus binary data using '+' and '/'.
    const VECTORS: &[(&[u8], &str)] = &[
        (b"", ""),
        (b"f", "Zg=="),
        (b"fo", "Zm8="),
        (b"foo", "Zm9v"),
        (b"foob", "Zm9vYg=="),
        (b"fooba", "Zm9vYmE="),
        (b"foobar", "Zm9vYmFy"),
        (b"\0user\0pass", "AHVzZXIAcGFzcw=="),
        (&[0xfb, 0xff, 0xbf], "+/+/"),
        (&[0xff, 0xff, 0xff, 0x00], "////AA=="),
        ("pässwörd".as_bytes(), "cMOkc3N3w7ZyZA=="),
    ];

    #[test]
    fn encode_vectors() {
        for (raw, text) in VECTORS {
            assert_eq!(encode(raw), *text, "encode {raw:?}");
        }
    }

    #[test]
    fn decode_vectors() {
        for (raw, text) in VECTORS {
            assert_eq!(decode(text).as_deref(), Some(*raw), "decode {text:?}");
        }
    }

    #[test]
    fn round_trip_all_lengths() {
        let data: Vec<u8> = (0..=255u8).collect();
        for n in 0..data.len() {
            assert_eq!(decode(&encode(&data[..n])).as_deref(), Some(&data[..n]));
        }
    }

    #[test]
    fn decode_rejects() {
        let bad = [
            "Zg",       // missing padding
            "Zg=",      // short padding
            "Zm9vY",    // not a multiple of 4
            "Zg==Zg==", // padding before the end
            "Zm=v",     // '=' in the middle of a quantum
            "=Zm9",     // leading padding
            "Z===",     // three padding characters
            "====",     // padding only
            "Zm9v\r\n", // line break
            "Zm9 v",    // space
            " Zm9v",    // leading whitespace
            "Zm9v-_8=", // URL-safe alphabet (RFC 4648 section 5) is not accepted
            "Zm9v!A==", // punctuation
            "Zh==",     // non-zero pad bits
            "Zm9=",     // non-zero pad bits
            "Zm9vYé=",  // non-ASCII
            "Zg\0=",    // NUL
        ];
        for text in bad {
            assert_eq!(decode(text), None, "decode {text:?}");
        }
    }
}
