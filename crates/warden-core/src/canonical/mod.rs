//! Canonical JSON and digests.
//!
//! Warden hashes JSON values (tool arguments, records) in a canonical form so that the same value
//! always yields the same digest, whatever the key order or whitespace it arrived with, and so
//! that an independent verifier can recompute it. The form follows RFC 8785 (JSON Canonicalization
//! Scheme): object members sorted by the UTF-16 code units of their names, no insignificant
//! whitespace, strings escaped minimally. Integers are written exactly; non-integral numbers are
//! written in the shortest form that round-trips (RFC 8785 uses the ECMAScript rendering, which
//! agrees for every value Warden's manifests and tools use in practice: finite values between
//! 1e-6 and 1e21).

use serde_json::Value;
use sha2::{Digest, Sha256};
use std::fmt::Write as _;

mod typed;
pub use typed::{digest_if_every_string_and_number, to_canonical_bytes, typed_digest};

/// Writes `value` in canonical form.
#[must_use]
pub fn to_canonical_string(value: &Value) -> String {
    let mut out = String::new();
    write_value(&mut out, value);
    out
}

fn write_value(out: &mut String, value: &Value) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                let _ = write!(out, "{i}");
            } else if let Some(u) = n.as_u64() {
                let _ = write!(out, "{u}");
            } else if let Some(f) = n.as_f64() {
                write_float(out, f);
            }
        }
        Value::String(s) => write_string(out, s),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(out, item);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut members: Vec<(&String, &Value)> = map.iter().collect();
            let bytewise = members.iter().all(|(k, _)| bytes_sort_as_utf16(k));
            // Names are unique, so an unstable sort gives the one order there is.
            members.sort_unstable_by(|a, b| name_order(bytewise, a.0, b.0));
            out.push('{');
            for (i, (k, v)) in members.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(out, k);
                out.push(':');
                write_value(out, v);
            }
            out.push('}');
        }
    }
}

/// Writes a finite float as RFC 8785 does for the values Warden meets (see the module's note).
fn write_float(out: &mut String, f: f64) {
    if f == 0.0 {
        // RFC 8785: negative zero is written as `0`.
        out.push('0');
    } else if f == f.trunc() && f.abs() < 1e21 {
        // INVARIANT (reproducible hashes): integral floats render without a fraction, as
        // ECMAScript does (`1.0` -> `1`).
        let _ = write!(out, "{f:.0}");
    } else {
        let _ = write!(out, "{f}");
    }
}

/// The order RFC 8785 puts member names in: by their UTF-16 code units, which is their bytes'
/// order when every name of the object has `bytes_sort_as_utf16` (`bytewise`).
fn name_order(bytewise: bool, a: &str, b: &str) -> std::cmp::Ordering {
    if bytewise {
        a.cmp(b)
    } else {
        a.encode_utf16().cmp(b.encode_utf16())
    }
}

/// RFC 8785 sorts member names by their UTF-16 code units. Names without a character from
/// U+E000 up (UTF-8 lead byte 0xEE or more) sort the same by their UTF-8 bytes; above it,
/// UTF-16's surrogates put the characters past U+FFFF first.
fn bytes_sort_as_utf16(name: &str) -> bool {
    name.bytes().all(|b| b < 0xEE)
}

/// Writes `s` as a JSON string, escaping only what RFC 8785 requires (`"`, `\\`, and control
/// characters): runs between escapes are copied whole.
fn write_string(out: &mut String, s: &str) {
    out.push('"');
    let needs_escape = |b: &u8| *b < 0x20 || *b == b'"' || *b == b'\\';
    if !s.as_bytes().iter().any(needs_escape) {
        out.push_str(s);
        out.push('"');
        return;
    }
    let mut run = 0;
    for (i, b) in s.bytes().enumerate() {
        let escape = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            0x08 => "\\b",
            0x0c => "\\f",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            b if b < 0x20 => "",
            _ => continue,
        };
        // Every byte that is escaped is ASCII, so `run..i` lies on character boundaries.
        out.push_str(s.get(run..i).unwrap_or_default());
        if escape.is_empty() {
            let _ = write!(out, "\\u{b:04x}");
        } else {
            out.push_str(escape);
        }
        run = i + 1;
    }
    out.push_str(s.get(run..).unwrap_or_default());
    out.push('"');
}

/// SHA-256 of `bytes`, as `sha256:<lowercase hex>`.
#[must_use]
pub fn sha256_tagged(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256:");
    push_hex(&mut out, &digest);
    out
}

/// Appends `bytes` as lowercase hex.
#[expect(clippy::indexing_slicing, reason = "a nibble is always below 16")]
pub fn push_hex(out: &mut String, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0x0f)]));
    }
}

/// The digest Warden cites for a JSON value: SHA-256 over its canonical form.
#[must_use]
pub fn json_digest(value: &Value) -> String {
    sha256_tagged(to_canonical_string(value).as_bytes())
}

/// Raw SHA-256 over the canonical form (for fingerprints that are compared, not printed).
#[must_use]
pub fn json_fingerprint(value: &Value) -> [u8; 32] {
    Sha256::digest(to_canonical_string(value).as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn key_order_and_whitespace_do_not_change_the_form() {
        let a: Value = serde_json::from_str(r#"{ "b": 1, "a": [true, null, "x"] }"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"a":[true,null,"x"],"b":1}"#).unwrap();
        assert_eq!(to_canonical_string(&a), r#"{"a":[true,null,"x"],"b":1}"#);
        assert_eq!(json_digest(&a), json_digest(&b));
    }

    #[test]
    fn rfc8785_string_escapes() {
        let v = json!("a\"b\\c\u{1}\n\u{7f}é");
        assert_eq!(to_canonical_string(&v), "\"a\\\"b\\\\c\\u0001\\n\u{7f}é\"");
    }

    #[test]
    fn keys_sort_by_utf16_code_units() {
        // U+E000 sorts after U+1F600 in UTF-8 but before it in UTF-16 (surrogates are 0xD8xx).
        let v = json!({"\u{1F600}": 1, "\u{E000}": 2});
        assert_eq!(to_canonical_string(&v), "{\"\u{1F600}\":1,\"\u{E000}\":2}");
    }

    #[test]
    fn integral_floats_render_as_integers() {
        let v: Value = serde_json::from_str("[1.0, 2.5, -0.0]").unwrap();
        assert_eq!(to_canonical_string(&v), "[1,2.5,0]");
    }

    #[test]
    fn digest_is_tagged_hex() {
        let d = sha256_tagged(b"");
        assert_eq!(
            d,
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|i| json!(i)),
            ".{0,8}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map(".{0,6}", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// The form as RFC 8785 states it, one character at a time: what the writer must match.
    fn reference(top: &Value) -> String {
        fn string(out: &mut String, s: &str) {
            out.push('"');
            for c in s.chars() {
                match c {
                    '"' => out.push_str("\\\""),
                    '\\' => out.push_str("\\\\"),
                    '\u{08}' => out.push_str("\\b"),
                    '\u{0c}' => out.push_str("\\f"),
                    '\n' => out.push_str("\\n"),
                    '\r' => out.push_str("\\r"),
                    '\t' => out.push_str("\\t"),
                    c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
                    c => out.push(c),
                }
            }
            out.push('"');
        }
        fn value(out: &mut String, v: &Value) {
            match v {
                Value::String(s) => string(out, s),
                Value::Array(items) => {
                    out.push('[');
                    for (i, item) in items.iter().enumerate() {
                        if i > 0 {
                            out.push(',');
                        }
                        value(out, item);
                    }
                    out.push(']');
                }
                Value::Object(map) => {
                    let mut members: Vec<_> = map.iter().collect();
                    members.sort_by(|a, b| a.0.encode_utf16().cmp(b.0.encode_utf16()));
                    out.push('{');
                    for (i, (k, v)) in members.into_iter().enumerate() {
                        if i > 0 {
                            out.push(',');
                        }
                        string(out, k);
                        out.push(':');
                        value(out, v);
                    }
                    out.push('}');
                }
                other => out.push_str(&to_canonical_string(other)),
            }
        }
        let mut out = String::new();
        value(&mut out, top);
        out
    }

    /// Strings and names drawn from every range the fast paths treat apart: ASCII, control
    /// characters, escapes, two- and three-byte characters around U+E000, four-byte ones.
    fn arb_text() -> impl Strategy<Value = String> {
        prop::collection::vec(
            prop_oneof![
                "[a-z\"\\\\]",
                "[\u{0}-\u{1f}\u{7f}]",
                "[\u{80}-\u{7ff}]",
                "[\u{d7f0}-\u{d7ff}\u{e000}-\u{e010}\u{fff0}-\u{ffff}]",
                "[\u{10000}-\u{10010}\u{1f600}-\u{1f610}]",
            ],
            0..8,
        )
        .prop_map(|parts| parts.concat())
    }

    proptest! {
        #[test]
        fn the_writer_matches_the_rfcs_form_character_by_character(
            names in prop::collection::vec(arb_text(), 0..6),
            texts in prop::collection::vec(arb_text(), 0..6),
        ) {
            let object: serde_json::Map<String, Value> = names
                .into_iter()
                .zip(texts.iter().cloned().map(Value::String).chain(std::iter::repeat(Value::Null)))
                .collect();
            let v = json!({ "o": object, "a": texts });
            prop_assert_eq!(to_canonical_string(&v), reference(&v));
        }

        #[test]
        fn canonical_form_parses_back_to_the_same_value(v in arb_json()) {
            let s = to_canonical_string(&v);
            let back: Value = serde_json::from_str(&s).unwrap();
            prop_assert_eq!(&back, &v);
            prop_assert_eq!(to_canonical_string(&back), s);
        }
    }
}
