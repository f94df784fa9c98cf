//! JSON encoding identical to what the Python original writes to NATS:
//! `json.dumps(obj, separators=(",", ":"), ensure_ascii=True)`.
//!
//! serde_json already writes compact JSON with Python-compatible float repr; what it does not do
//! is escape non-ASCII characters. Non-ASCII can only occur inside JSON strings, so escaping every
//! non-ASCII char of the encoded text as `\uXXXX` (UTF-16 surrogate pairs above the BMP) is exact.

use serde::Serialize;

/// Compact JSON with non-ASCII escaped, as bytes ready for a KV put or a publish.
pub fn to_ascii_vec<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    let text = serde_json::to_string(value).expect("serializing a JSON value cannot fail");
    escape_non_ascii(&text).into_bytes()
}

/// Escapes every non-ASCII character of already-encoded JSON text.
pub fn escape_non_ascii(text: &str) -> String {
    if text.is_ascii() {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len() + 16);
    let mut units = [0u16; 2];
    for ch in text.chars() {
        if ch.is_ascii() {
            out.push(ch);
        } else {
            for unit in ch.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{:04x}", unit));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn matches_python_dumps() {
        // python3 -c 'import json;print(json.dumps({"a":"é😀","b":1.5,"c":[1,None,True]},separators=(",",":")))'
        let v = json!({"a": "é😀", "b": 1.5, "c": [1, null, true]});
        assert_eq!(
            String::from_utf8(to_ascii_vec(&v)).unwrap(),
            r#"{"a":"\u00e9\ud83d\ude00","b":1.5,"c":[1,null,true]}"#
        );
    }

    #[test]
    fn floats_like_python_repr() {
        let v = json!({"t": 1732742681.123456_f64, "z": 1.0_f64});
        assert_eq!(
            String::from_utf8(to_ascii_vec(&v)).unwrap(),
            r#"{"t":1732742681.123456,"z":1.0}"#
        );
    }
}
