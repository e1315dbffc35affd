//! Fuzzes the OAuth JSON parser: no panic, and what it accepts keeps the parser's promises.
//!
//! Checked on success: the input was UTF-8; nesting is within MAX_DEPTH; numbers are finite;
//! object keys are unique and `get` finds each member; surrounding whitespace changes nothing;
//! the value written back as JSON parses to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use picorelay_fuzz::oauth::json::{parse, write_string, Value, MAX_DEPTH};

/// depth counts the nested arrays and objects (a scalar is 0).
fn depth(v: &Value) -> usize {
    match v {
        Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        Value::Object(o) => 1 + o.iter().map(|(_, v)| depth(v)).max().unwrap_or(0),
        _ => 0,
    }
}

/// check asserts the per-value invariants, recursively (at most MAX_DEPTH deep).
fn check(v: &Value) {
    match v {
        Value::Number(n) => {
            assert!(n.is_finite());
            if let Some(u) = v.as_u64_lenient() {
                assert_eq!(u as f64, *n);
            }
        }
        Value::String(s) => {
            if let Some(u) = v.as_u64_lenient() {
                assert_eq!(s.parse::<u64>().ok(), Some(u));
            }
        }
        Value::Array(a) => a.iter().for_each(check),
        Value::Object(o) => {
            let mut keys: Vec<&str> = o.iter().map(|(k, _)| k.as_str()).collect();
            keys.sort_unstable();
            assert!(
                keys.windows(2).all(|w| w[0] != w[1]),
                "duplicate key accepted"
            );
            for (k, m) in o {
                assert_eq!(v.get(k), Some(m));
                check(m);
            }
        }
        Value::Null | Value::Bool(_) => {}
    }
}

/// write serialises `v` as JSON (control characters as \u escapes; f64 Display is exact and
/// never uses an exponent, so every number is valid JSON and reads back the same).
fn write(v: &Value, out: &mut String) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) => write_string(s, out),
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write(x, out);
            }
            out.push(']');
        }
        Value::Object(o) => {
            out.push('{');
            for (i, (k, x)) in o.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(k, out);
                out.push(':');
                write(x, out);
            }
            out.push('}');
        }
    }
}


fuzz_target!(|data: &[u8]| {
    match parse(data) {
        Ok(v) => {
            assert!(std::str::from_utf8(data).is_ok());
            assert!(depth(&v) <= MAX_DEPTH);
            check(&v);
            let mut padded = b" \t\r\n".to_vec();
            padded.extend_from_slice(data);
            padded.extend_from_slice(b"\n ");
            assert_eq!(parse(&padded).as_ref(), Ok(&v));
            let mut json = String::new();
            write(&v, &mut json);
            assert_eq!(parse(json.as_bytes()).as_ref(), Ok(&v), "{json}");
        }
        Err(e) => {
            assert!(e.offset <= data.len());
            assert!(!e.reason.is_empty());
            let _ = e.to_string();
        }
    }
});
