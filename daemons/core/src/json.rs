//! JSON encoding identical to what the Python original writes to NATS:
//! `json.dumps(obj, separators=(",", ":"), ensure_ascii=True)`. The rules live in
//! [`crate::py::json`]; this is the name the daemons call.

use serde::Serialize;

/// Compact JSON with non-ASCII escaped and floats as Python's `repr`, as bytes ready for a KV
/// put or a publish.
pub fn to_ascii_vec<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    crate::py::json::to_vec_compact(value)
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
        // Plain serde_json writes 1e16, 1e-7 and 1e-5 here.
        let v = json!({"t": 1732742681.123456_f64, "z": 1.0_f64, "e": [1e16, 1e-7, 0.00001]});
        assert_eq!(
            String::from_utf8(to_ascii_vec(&v)).unwrap(),
            r#"{"t":1732742681.123456,"z":1.0,"e":[1e+16,1e-07,1e-05]}"#
        );
    }
}
