//! Output exactly as the original `pyoco-client` prints it: `json.dumps(obj, ensure_ascii=True)`
//! with Python's default separators, and `str(value)` for table cells, so scripts that parse
//! pyoco-client's text keep working. The JSON and float rules are `pyoco_core::py`'s.

use serde_json::Value;

pub use pyoco_core::py::float_repr;

/// `json.dumps(value, ensure_ascii=True)`.
pub fn dumps(value: &Value) -> String {
    pyoco_core::py::json::to_string_default(value)
}

fn number(n: &serde_json::Number) -> String {
    match n.as_f64() {
        Some(f) if !(n.is_i64() || n.is_u64()) => float_repr(f),
        _ => n.to_string(),
    }
}

/// Python's `str(value)` for a decoded JSON value, as pyoco-client puts it in table cells
/// (`None`, `True`, float `repr`; containers as Python would print them, approximately).
pub fn py_str(value: &Value) -> String {
    match value {
        Value::Null => "None".into(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::Number(n) => number(n),
        Value::String(s) => s.clone(),
        Value::Array(items) => format!(
            "[{}]",
            items.iter().map(py_repr).collect::<Vec<_>>().join(", ")
        ),
        Value::Object(map) => format!(
            "{{{}}}",
            map.iter()
                .map(|(k, v)| format!("{}: {}", py_repr(&Value::String(k.clone())), py_repr(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn py_repr(value: &Value) -> String {
    match value {
        Value::String(s) => format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'")),
        other => py_str(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn timestamps_survive_parse_and_dump() {
        // Needs serde_json's `float_roundtrip` (without it ~1 in 8 17-digit times moves by 1 ulp);
        // this crate enables it itself, so it is checked here, not only in core.
        for i in 0..20000u32 {
            let t = 1795813674.0 + f64::from(i) * 0.0000123457;
            let text = float_repr(t);
            let v: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(dumps(&v), text);
        }
    }

    #[test]
    fn dumps_like_python() {
        // python3 -c 'import json; print(json.dumps({...}, ensure_ascii=True))'
        let v = json!({"a": "é😀\u{7f}\u{1f}\n\"\\/", "b": 1.5, "c": [1, null, true, false], "d": {}, "e": [], "f": -3, "g": 1e16});
        assert_eq!(
            dumps(&v),
            r#"{"a": "\u00e9\ud83d\ude00\u007f\u001f\n\"\\/", "b": 1.5, "c": [1, null, true, false], "d": {}, "e": [], "f": -3, "g": 1e+16}"#
        );
        let parsed: Value =
            serde_json::from_str(r#"{"run_id":"r","status":"PENDING","t":1.0,"n":10}"#).unwrap();
        assert_eq!(
            dumps(&parsed),
            r#"{"run_id": "r", "status": "PENDING", "t": 1.0, "n": 10}"#
        );
    }

    #[test]
    fn str_like_python() {
        assert_eq!(py_str(&json!(null)), "None");
        assert_eq!(py_str(&json!(1795813674.5)), "1795813674.5");
        assert_eq!(py_str(&json!(1e16)), "1e+16");
        assert_eq!(py_str(&json!(-7)), "-7");
        assert_eq!(py_str(&json!("x")), "x");
        assert_eq!(py_str(&json!(["a", 1])), "['a', 1]");
        assert_eq!(py_str(&json!(true)), "True");
    }
}
