//! A small strict JSON parser (RFC 8259) for token endpoint answers: bytes in, one `Value` out.
//!
//! Strict on purpose: a token response is security material, so anything a lenient parser
//! would have to guess at (duplicate keys, lone surrogates, trailing garbage) is refused.
//! Recursion is bounded by `MAX_DEPTH`; the caller bounds the input size (64 KiB).

use std::fmt;

/// Deepest nesting of arrays and objects accepted. RFC 8259 section 9 lets a parser limit
/// it; token answers are two levels deep, and the limit keeps the recursion shallow.
pub const MAX_DEPTH: usize = 64;

/// Value is a parsed JSON value. Objects keep their members in document order.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `null`.
    Null,
    /// `true` or `false`.
    Bool(bool),
    /// Any number, as the nearest f64.
    Number(f64),
    /// A string with every escape resolved.
    String(String),
    /// An array.
    Array(Vec<Value>),
    /// An object; keys are unique (duplicates are a parse error).
    Object(Vec<(String, Value)>),
}

/// JsonError says where (byte offset into the input) and why parsing stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonError {
    /// Byte offset of the offending input.
    pub offset: usize,
    /// What is wrong there, lowercase.
    pub reason: &'static str,
}

impl fmt::Display for JsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid JSON at byte {}: {}", self.offset, self.reason)
    }
}

impl std::error::Error for JsonError {}

impl Value {
    /// get returns the member `key` of an object; None for a missing key or a non-object.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Object(members) => members.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// as_str returns the text of a string value.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// as_f64 returns the value of a number.
    #[cfg(test)]
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Number(n) => Some(*n),
            _ => None,
        }
    }

    /// as_u64_lenient returns a non-negative integer given as a number (3599) or as a string
    /// of decimal digits ("3599"): token endpoints send `expires_in` either way (Microsoft's
    /// v1 endpoint sends strings). Fractions, negatives, signs, spaces and values above 2^53
    /// (where f64 stops being exact) give None.
    pub fn as_u64_lenient(&self) -> Option<u64> {
        const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
        match self {
            Value::Number(n) if *n >= 0.0 && *n <= EXACT && n.fract() == 0.0 => Some(*n as u64),
            Value::String(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
                s.parse().ok()
            }
            _ => None,
        }
    }
}

/// parse reads exactly one JSON value, with optional whitespace around it, from `input`.
pub fn parse(input: &[u8]) -> Result<Value, JsonError> {
    // RFC 8259 section 8.1: JSON text is UTF-8. Checking it once up front lets the string
    // scanner copy raw runs as &str without re-validating.
    let text = std::str::from_utf8(input).map_err(|e| JsonError {
        offset: e.valid_up_to(),
        reason: "invalid UTF-8",
    })?;
    let mut p = Parser { s: text, pos: 0 };
    p.skip_ws();
    let v = p.value(0)?;
    p.skip_ws();
    if p.pos != input.len() {
        return Err(p.err("unexpected data after the value"));
    }
    Ok(v)
}

/// Parser is the cursor over validated UTF-8 input.
struct Parser<'a> {
    s: &'a str,
    pos: usize,
}

impl<'a> Parser<'a> {
    /// err is an error at the cursor.
    fn err(&self, reason: &'static str) -> JsonError {
        JsonError {
            offset: self.pos,
            reason,
        }
    }

    /// peek returns the byte at the cursor, None at the end.
    fn peek(&self) -> Option<u8> {
        self.s.as_bytes().get(self.pos).copied()
    }

    /// RFC 8259 section 2: whitespace is space, tab, LF and CR, nothing else.
    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    /// value parses one value at nesting `depth` (0 for the top level).
    fn value(&mut self, depth: usize) -> Result<Value, JsonError> {
        match self.peek() {
            None => Err(self.err("unexpected end of input")),
            Some(b'{') => self.object(depth + 1),
            Some(b'[') => self.array(depth + 1),
            Some(b'"') => self.string().map(Value::String),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(b't') => self.literal("true", Value::Bool(true)),
            Some(b'f') => self.literal("false", Value::Bool(false)),
            Some(b'n') => self.literal("null", Value::Null),
            Some(_) => Err(self.err("expected a value")),
        }
    }

    /// literal reads `word` (true, false, null) as `v`.
    fn literal(&mut self, word: &'static str, v: Value) -> Result<Value, JsonError> {
        if self.s[self.pos..].starts_with(word) {
            self.pos += word.len();
            Ok(v)
        } else {
            Err(self.err("expected a value"))
        }
    }

    /// enter refuses an array or object that would nest deeper than MAX_DEPTH, before
    /// recursing, so hostile input can never exhaust the stack.
    fn enter(&self, depth: usize) -> Result<(), JsonError> {
        if depth > MAX_DEPTH {
            return Err(self.err("nesting deeper than 64"));
        }
        Ok(())
    }

    /// array parses an array starting at its "[".
    fn array(&mut self, depth: usize) -> Result<Value, JsonError> {
        self.enter(depth)?;
        self.pos += 1; // [
        let mut items = Vec::new();
        self.skip_ws();
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(Value::Array(items));
        }
        loop {
            self.skip_ws();
            items.push(self.value(depth)?);
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    return Ok(Value::Array(items));
                }
                None => return Err(self.err("unexpected end of input")),
                Some(_) => return Err(self.err("expected ',' or ']'")),
            }
        }
    }

    /// object parses an object starting at its "{".
    fn object(&mut self, depth: usize) -> Result<Value, JsonError> {
        self.enter(depth)?;
        self.pos += 1; // {
        let mut members: Vec<(String, Value)> = Vec::new();
        let mut offsets: Vec<usize> = Vec::new();
        self.skip_ws();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(Value::Object(members));
        }
        loop {
            self.skip_ws();
            match self.peek() {
                Some(b'"') => {}
                None => return Err(self.err("unexpected end of input")),
                Some(_) => return Err(self.err("expected a string key")),
            }
            offsets.push(self.pos);
            let key = self.string()?;
            self.skip_ws();
            if self.peek() != Some(b':') {
                return Err(self.err("expected ':' after the key"));
            }
            self.pos += 1;
            self.skip_ws();
            let v = self.value(depth)?;
            members.push((key, v));
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    break;
                }
                None => return Err(self.err("unexpected end of input")),
                Some(_) => return Err(self.err("expected ',' or '}'")),
            }
        }
        // RFC 8259 section 4 leaves duplicate names to the implementation; a token answer
        // with two access_tokens must not be guessed at. Sorting keeps this O(n log n) for
        // hostile objects with thousands of members.
        if let Some(i) = duplicate(&members) {
            return Err(JsonError {
                offset: offsets[i],
                reason: "duplicate key in object",
            });
        }
        Ok(Value::Object(members))
    }

    /// string parses a string starting at its opening quote and returns its decoded text.
    fn string(&mut self) -> Result<String, JsonError> {
        self.pos += 1; // "
        let mut out = String::new();
        loop {
            // Copy the run up to the next quote, backslash or control character at once.
            let rest = &self.s.as_bytes()[self.pos..];
            let run = rest
                .iter()
                .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
                .unwrap_or(rest.len());
            // The run ends at an ASCII byte or the end, so it is a char boundary.
            out.push_str(&self.s[self.pos..self.pos + run]);
            self.pos += run;
            match self.peek() {
                None => return Err(self.err("unterminated string")),
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(out);
                }
                Some(b'\\') => self.escape(&mut out)?,
                // RFC 8259 section 7: control characters must be escaped.
                Some(_) => return Err(self.err("control character in string")),
            }
        }
    }

    /// escape decodes one backslash escape (the cursor is on the backslash) into `out`.
    fn escape(&mut self, out: &mut String) -> Result<(), JsonError> {
        let start = self.pos;
        self.pos += 1;
        let c = match self.peek() {
            Some(b'"') => '"',
            Some(b'\\') => '\\',
            Some(b'/') => '/',
            Some(b'b') => '\u{8}',
            Some(b'f') => '\u{c}',
            Some(b'n') => '\n',
            Some(b'r') => '\r',
            Some(b't') => '\t',
            Some(b'u') => {
                self.pos += 1;
                let hi = self.hex4()?;
                let c = match hi {
                    // A high surrogate must be followed by an escaped low surrogate
                    // (RFC 8259 section 7); the pair is one character.
                    0xD800..=0xDBFF => {
                        if !self.s[self.pos..].starts_with("\\u") {
                            return Err(JsonError {
                                offset: start,
                                reason: "lone surrogate in string",
                            });
                        }
                        self.pos += 2;
                        let lo = self.hex4()?;
                        if !(0xDC00..=0xDFFF).contains(&lo) {
                            return Err(JsonError {
                                offset: start,
                                reason: "lone surrogate in string",
                            });
                        }
                        0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                    }
                    0xDC00..=0xDFFF => {
                        return Err(JsonError {
                            offset: start,
                            reason: "lone surrogate in string",
                        })
                    }
                    _ => hi,
                };
                // Surrogates are excluded above, so every remaining value is a char.
                out.push(char::from_u32(c).ok_or(JsonError {
                    offset: start,
                    reason: "invalid \\u escape",
                })?);
                return Ok(());
            }
            None => return Err(self.err("unterminated string")),
            Some(_) => return Err(self.err("invalid escape")),
        };
        out.push(c);
        self.pos += 1;
        Ok(())
    }

    /// hex4 reads exactly four hex digits.
    fn hex4(&mut self) -> Result<u32, JsonError> {
        let mut v = 0u32;
        for _ in 0..4 {
            let d = match self.peek() {
                Some(b) => (b as char).to_digit(16),
                None => return Err(self.err("unterminated string")),
            };
            let d = d.ok_or_else(|| self.err("invalid \\u escape"))?;
            v = v * 16 + d;
            self.pos += 1;
        }
        Ok(v)
    }

    /// number parses RFC 8259 section 6 exactly:
    /// `[ "-" ] ( "0" / 1-9 *DIGIT ) [ "." 1*DIGIT ] [ ( "e" / "E" ) [ "-" / "+" ] 1*DIGIT ]`.
    fn number(&mut self) -> Result<Value, JsonError> {
        let start = self.pos;
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        match self.peek() {
            Some(b'0') => {
                self.pos += 1;
                if matches!(self.peek(), Some(b'0'..=b'9')) {
                    return Err(self.err("leading zero in number"));
                }
            }
            Some(b'1'..=b'9') => self.digits(),
            _ => return Err(self.err("expected a digit")),
        }
        if self.peek() == Some(b'.') {
            self.pos += 1;
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return Err(self.err("expected a digit after '.'"));
            }
            self.digits();
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.pos += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.pos += 1;
            }
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return Err(self.err("expected a digit in the exponent"));
            }
            self.digits();
        }
        // The slice matches Rust's float grammar too, so parse cannot fail; a number beyond
        // f64 (1e400) would become infinity, which JSON cannot express: refuse it
        // (RFC 8259 section 6 allows limiting the range).
        match self.s[start..self.pos].parse::<f64>() {
            Ok(n) if n.is_finite() => Ok(Value::Number(n)),
            _ => Err(JsonError {
                offset: start,
                reason: "number out of range",
            }),
        }
    }

    /// digits skips a run of decimal digits.
    fn digits(&mut self) {
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.pos += 1;
        }
    }
}

/// duplicate returns the index of a member whose key already appeared earlier, if any.
fn duplicate(members: &[(String, Value)]) -> Option<usize> {
    if members.len() < 2 {
        return None;
    }
    let mut idx: Vec<usize> = (0..members.len()).collect();
    // Stable: equal keys stay in document order, so the later one is the duplicate.
    idx.sort_by(|&a, &b| members[a].0.cmp(&members[b].0));
    idx.windows(2)
        .filter(|w| members[w[0]].0 == members[w[1]].0)
        .map(|w| w[1])
        .min()
}

/// write_string appends `s` as a JSON string (RFC 8259 section 7): quote, backslash and
/// control characters escaped; U+2028/U+2029 too, so the output is also valid JavaScript.
pub fn write_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{7f}' || c == '\u{2028}' || c == '\u{2029}' => {
                out.push_str(&format!("\\u{:04x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> Value {
        Value::String(v.to_string())
    }

    fn n(v: f64) -> Value {
        Value::Number(v)
    }

    fn obj(members: Vec<(&str, Value)>) -> Value {
        Value::Object(
            members
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
        )
    }

    fn nested(depth: usize) -> String {
        format!("{}{}", "[".repeat(depth), "]".repeat(depth))
    }

    #[test]
    fn valid_documents() {
        let cases: Vec<(&str, Value)> = vec![
            ("null", Value::Null),
            ("true", Value::Bool(true)),
            (" \t\r\nfalse \t\r\n", Value::Bool(false)),
            ("\"\"", s("")),
            ("\"abc\"", s("abc")),
            ("\"h\u{e9}llo \u{1f600}\"", s("h\u{e9}llo \u{1f600}")),
            (
                r#""\" \\ \/ \b \f \n \r \t""#,
                s("\" \\ / \u{8} \u{c} \n \r \t"),
            ),
            (r#""\u0041\u00e9\u20AC""#, s("A\u{e9}\u{20ac}")),
            (r#""\u0000""#, s("\0")),
            (r#""\ud83d\ude00""#, s("\u{1f600}")),
            (r#""\uD83D\uDE00x""#, s("\u{1f600}x")),
            (r#""\udbff\udfff""#, s("\u{10ffff}")),
            ("[]", Value::Array(vec![])),
            ("[ ]", Value::Array(vec![])),
            ("{}", obj(vec![])),
            ("{ }", obj(vec![])),
            (
                "[1, \"a\", null, [true]]",
                Value::Array(vec![
                    n(1.0),
                    s("a"),
                    Value::Null,
                    Value::Array(vec![Value::Bool(true)]),
                ]),
            ),
            (
                r#"{"a":1,"b":{"c":[]}}"#,
                obj(vec![
                    ("a", n(1.0)),
                    ("b", obj(vec![("c", Value::Array(vec![]))])),
                ]),
            ),
            // Keys differing only by case or escape spelling of other characters are distinct.
            (
                r#"{"a":1,"A":2,"ab":3}"#,
                obj(vec![("a", n(1.0)), ("A", n(2.0)), ("ab", n(3.0))]),
            ),
        ];
        for (input, want) in cases {
            assert_eq!(parse(input.as_bytes()), Ok(want), "{input:?}");
        }
    }

    #[test]
    fn invalid_documents() {
        let cases: Vec<(&[u8], usize, &str)> = vec![
            (b"", 0, "unexpected end of input"),
            (b"   ", 3, "unexpected end of input"),
            (b"nul", 0, "expected a value"),
            (b"True", 0, "expected a value"),
            (b"null null", 5, "unexpected data after the value"),
            (b"{}x", 2, "unexpected data after the value"),
            (b"\x0cnull", 0, "expected a value"), // form feed is not JSON whitespace
            (b"\"abc", 4, "unterminated string"),
            (b"\"a\nb\"", 2, "control character in string"),
            (b"\"a\tb\"", 2, "control character in string"),
            (b"\"\\x\"", 2, "invalid escape"),
            (b"\"\\u12\"", 5, "invalid \\u escape"),
            (b"\"\\u12", 5, "unterminated string"),
            (b"\"\\ud83d\"", 1, "lone surrogate in string"),
            (b"\"\\ud83dx\"", 1, "lone surrogate in string"),
            (b"\"\\ude00\"", 1, "lone surrogate in string"),
            (b"\"\\ude00\\ud83d\"", 1, "lone surrogate in string"),
            (b"\"\\ud83d\\ud83d\"", 1, "lone surrogate in string"),
            (b"\"\\ud83d\\u0041\"", 1, "lone surrogate in string"),
            (b"\"\xff\"", 1, "invalid UTF-8"),
            (b"\"\xed\xa0\x80\"", 1, "invalid UTF-8"), // a surrogate encoded as UTF-8
            (b"\"\xc3\"", 1, "invalid UTF-8"),
            (b"[1,]", 3, "expected a value"),
            (b"[1 2]", 3, "expected ',' or ']'"),
            (b"[1", 2, "unexpected end of input"),
            (b"{\"a\"}", 4, "expected ':' after the key"),
            (b"{\"a\":}", 5, "expected a value"),
            (b"{\"a\":1,}", 7, "expected a string key"),
            (b"{a:1}", 1, "expected a string key"),
            (b"{\"a\":1 \"b\":2}", 7, "expected ',' or '}'"),
            (b"{\"a\":1", 6, "unexpected end of input"),
            (b"{\"a\":1,\"a\":2}", 7, "duplicate key in object"),
            (b"{\"a\":1,\"\\u0061\":2}", 7, "duplicate key in object"),
            (
                b"{\"access_token\":\"x\",\"b\":1,\"access_token\":\"y\"}",
                26,
                "duplicate key in object",
            ),
            (b"{\"o\":{\"a\":1,\"a\":1}}", 12, "duplicate key in object"),
            (b"'a'", 0, "expected a value"),
        ];
        for (input, offset, reason) in cases {
            let got = parse(input);
            assert_eq!(
                got,
                Err(JsonError { offset, reason }),
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn numbers() {
        let ok: &[(&str, f64)] = &[
            ("0", 0.0),
            ("-0", -0.0),
            ("7", 7.0),
            ("-12", -12.0),
            ("3599", 3599.0),
            ("0.5", 0.5),
            ("-0.25", -0.25),
            ("1e3", 1000.0),
            ("1E3", 1000.0),
            ("1e+3", 1000.0),
            ("25e-2", 0.25),
            ("1.5e2", 150.0),
            ("0e0", 0.0),
            ("1.7976931348623157e308", f64::MAX),
            ("1e-400", 0.0), // underflow rounds to zero, as any f64 parser does
        ];
        for (input, want) in ok {
            assert_eq!(parse(input.as_bytes()), Ok(n(*want)), "{input}");
        }
        let bad: &[(&str, usize, &str)] = &[
            ("01", 1, "leading zero in number"),
            ("-01", 2, "leading zero in number"),
            ("00", 1, "leading zero in number"),
            ("+1", 0, "expected a value"),
            (".5", 0, "expected a value"),
            ("-", 1, "expected a digit"),
            ("-a", 1, "expected a digit"),
            ("1.", 2, "expected a digit after '.'"),
            ("1.e3", 2, "expected a digit after '.'"),
            ("1e", 2, "expected a digit in the exponent"),
            ("1e+", 3, "expected a digit in the exponent"),
            ("1x", 1, "unexpected data after the value"),
            ("0x10", 1, "unexpected data after the value"),
            ("1 2", 2, "unexpected data after the value"),
            ("Infinity", 0, "expected a value"),
            ("NaN", 0, "expected a value"),
            ("1e400", 0, "number out of range"),
            ("-1e400", 0, "number out of range"),
        ];
        for (input, offset, reason) in bad {
            assert_eq!(
                parse(input.as_bytes()),
                Err(JsonError {
                    offset: *offset,
                    reason
                }),
                "{input}"
            );
        }
    }

    #[test]
    fn depth_limit() {
        assert!(parse(nested(MAX_DEPTH).as_bytes()).is_ok());
        let deep = nested(MAX_DEPTH + 1);
        assert_eq!(
            parse(deep.as_bytes()),
            Err(JsonError {
                offset: MAX_DEPTH,
                reason: "nesting deeper than 64"
            })
        );
        let objects = format!("{}1{}", "{\"a\":".repeat(MAX_DEPTH), "}".repeat(MAX_DEPTH));
        assert!(parse(objects.as_bytes()).is_ok());
        let objects = format!("[{objects}]");
        assert_eq!(
            parse(objects.as_bytes()).unwrap_err().reason,
            "nesting deeper than 64"
        );
        // Hostile input far deeper than the stack would allow without the limit.
        let huge = "[".repeat(1 << 20);
        assert_eq!(parse(huge.as_bytes()).unwrap_err().offset, MAX_DEPTH);
    }

    #[test]
    fn many_keys_are_checked_quickly() {
        let mut doc = String::from("{");
        for i in 0..20_000 {
            doc.push_str(&format!("\"k{i}\":{i},"));
        }
        doc.push_str("\"k19999\":0}");
        let e = parse(doc.as_bytes()).unwrap_err();
        assert_eq!(e.reason, "duplicate key in object");
        assert_eq!(&doc[e.offset..e.offset + 9], "\"k19999\":");
        assert_eq!(e.offset, doc.len() - 11);
    }

    #[test]
    fn token_responses() {
        let microsoft = br#"{"token_type":"Bearer","scope":"https://outlook.office.com/SMTP.Send","expires_in":4442,"ext_expires_in":4442,"access_token":"eyJ0eXAiOiJKV1QiLCJub25jZSI6Ik.x","refresh_token":"0.AXoA-abc_def"}"#;
        let v = parse(microsoft).unwrap();
        assert_eq!(v.get("token_type").and_then(Value::as_str), Some("Bearer"));
        assert_eq!(
            v.get("expires_in").and_then(Value::as_u64_lenient),
            Some(4442)
        );
        assert_eq!(
            v.get("refresh_token").and_then(Value::as_str),
            Some("0.AXoA-abc_def")
        );

        let google = b"{\n  \"access_token\": \"ya29.a0AfH6SMB\",\n  \"expires_in\": 3599,\n  \"scope\": \"https://mail.google.com/\",\n  \"token_type\": \"Bearer\"\n}\n";
        let v = parse(google).unwrap();
        assert_eq!(
            v.get("access_token").and_then(Value::as_str),
            Some("ya29.a0AfH6SMB")
        );
        assert_eq!(v.get("expires_in").and_then(Value::as_f64), Some(3599.0));
        assert_eq!(v.get("refresh_token"), None);

        // Azure AD v1 sends the numbers as strings.
        let v1 = br#"{"token_type":"Bearer","expires_in":"3599","access_token":"a"}"#;
        let v = parse(v1).unwrap();
        assert_eq!(
            v.get("expires_in").and_then(Value::as_u64_lenient),
            Some(3599)
        );

        let ms_error = br#"{"error":"invalid_grant","error_description":"AADSTS70008: The provided authorization code or refresh token has expired due to inactivity.\r\nTrace ID: 1f2e\r\nTimestamp: 2024-05-01 10:00:00Z","error_codes":[70008],"timestamp":"2024-05-01 10:00:00Z","trace_id":"1f2e","correlation_id":"9a8b","error_uri":"https://login.microsoftonline.com/error?code=70008"}"#;
        let v = parse(ms_error).unwrap();
        assert_eq!(
            v.get("error").and_then(Value::as_str),
            Some("invalid_grant")
        );
        assert!(v
            .get("error_description")
            .and_then(Value::as_str)
            .is_some_and(|d| d.contains("\r\nTrace ID")));
        assert_eq!(v.get("error_codes"), Some(&Value::Array(vec![n(70008.0)])));

        let google_error =
            b"{\n  \"error\": \"invalid_grant\",\n  \"error_description\": \"Token has been expired or revoked.\"\n}";
        let v = parse(google_error).unwrap();
        assert_eq!(
            v.get("error").and_then(Value::as_str),
            Some("invalid_grant")
        );
    }

    #[test]
    fn accessors() {
        let v = parse(br#"{"s":"x","n":2.5,"a":[1]}"#).unwrap();
        assert_eq!(v.get("s").and_then(Value::as_str), Some("x"));
        assert_eq!(v.get("s").and_then(Value::as_f64), None);
        assert_eq!(v.get("n").and_then(Value::as_f64), Some(2.5));
        assert_eq!(v.get("n").and_then(Value::as_str), None);
        assert_eq!(v.get("missing"), None);
        assert_eq!(v.get("a").and_then(|a| a.get("0")), None);
        assert_eq!(s("x").get("x"), None);

        // (value, as_u64_lenient)
        let cases: Vec<(Value, Option<u64>)> = vec![
            (n(0.0), Some(0)),
            (n(3599.0), Some(3599)),
            (n(9_007_199_254_740_992.0), Some(1 << 53)),
            (n(1e300), None),
            (n(1.5), None),
            (n(-1.0), None),
            (s("3599"), Some(3599)),
            (s("0"), Some(0)),
            (s("18446744073709551615"), Some(u64::MAX)),
            (s("18446744073709551616"), None),
            (s(""), None),
            (s(" 1"), None),
            (s("+1"), None),
            (s("-1"), None),
            (s("1.0"), None),
            (s("1e3"), None),
            (Value::Null, None),
            (Value::Bool(true), None),
        ];
        for (v, want) in cases {
            assert_eq!(v.as_u64_lenient(), want, "{v:?}");
        }
    }

    #[test]
    fn error_display() {
        let e = parse(b"[1,]").unwrap_err();
        assert_eq!(e.to_string(), "invalid JSON at byte 3: expected a value");
    }

    #[test]
    fn strings_are_written_escaped_and_read_back() {
        for (raw, json) in [
            ("a", r#""a""#),
            ("q\"b\\", r#""q\"b\\""#),
            ("l\r\n\t", r#""l\r\n\t""#),
            ("\u{1}\u{1f}\u{7f}", r#""\u0001\u001f\u007f""#),
            ("\u{2028}", r#""\u2028""#),
            ("é/€ü", "\"é/€ü\""),
        ] {
            let mut out = String::new();
            write_string(raw, &mut out);
            assert_eq!(out, json, "{raw:?}");
            assert_eq!(parse(out.as_bytes()).unwrap().as_str(), Some(raw));
        }
    }
}
