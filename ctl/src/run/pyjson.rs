//! Output exactly as the original `pyoco-client` prints it: `json.dumps(obj, ensure_ascii=True)`
//! with Python's default separators (`", "` and `": "`), Python float `repr`, and `str(value)` for
//! table cells. Scripts that parse pyoco-client's text keep working.

use serde_json::Value;

/// `json.dumps(value, ensure_ascii=True)`.
pub fn dumps(value: &Value) -> String {
    let mut out = String::new();
    write_value(&mut out, value);
    out
}

fn write_value(out: &mut String, value: &Value) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::Number(n) => out.push_str(&number(n)),
        Value::String(s) => write_string(out, s),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_value(out, item);
            }
            out.push(']');
        }
        Value::Object(map) => {
            out.push('{');
            for (i, (k, v)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_string(out, k);
                out.push_str(": ");
                write_value(out, v);
            }
            out.push('}');
        }
    }
}

fn number(n: &serde_json::Number) -> String {
    if n.is_i64() || n.is_u64() {
        n.to_string()
    } else {
        float_repr(n.as_f64().unwrap_or(f64::NAN))
    }
}

/// Python's string escaping with `ensure_ascii=True`: `\"`, `\\`, `\b \f \n \r \t`, and `\uXXXX`
/// (lower-case hex, UTF-16 surrogate pairs) for every other character outside `' '..='~'`.
fn write_string(out: &mut String, s: &str) {
    out.push('"');
    let mut units = [0u16; 2];
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            ' '..='~' => out.push(ch),
            _ => {
                for unit in ch.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
        }
    }
    out.push('"');
}

/// Python's `repr(float)`: the shortest round-tripping digits, positional notation when the
/// decimal exponent is in `-4..16` (always with a fractional part, `1.0`), else `1e+16`,
/// `1.5e-05`. Non-finite values are written as `json.dumps` writes them.
pub fn float_repr(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 {
            "Infinity".into()
        } else {
            "-Infinity".into()
        };
    }
    if f == 0.0 {
        return if f.is_sign_negative() {
            "-0.0".into()
        } else {
            "0.0".into()
        };
    }
    // `{:e}` gives the shortest round-tripping digits: "1.2345e-5", "1e16". When two strings of
    // that length round-trip, Python takes the one nearest the exact value (ties to even): the
    // correctly rounded string of that many digits, whenever it round-trips.
    let shortest = format!("{:e}", f.abs());
    let n_digits = shortest
        .split_once('e')
        .map(|(m, _)| m.chars().filter(char::is_ascii_digit).count())
        .unwrap_or(1);
    let nearest = format!("{:.*e}", n_digits.saturating_sub(1), f.abs());
    let sci = if nearest.parse::<f64>().ok() == Some(f.abs()) {
        nearest
    } else {
        shortest
    };
    let (mantissa, exp) = sci.split_once('e').expect("`{:e}` has an exponent");
    let exp: i32 = exp.parse().expect("`{:e}` exponent is an integer");
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let sign = if f < 0.0 { "-" } else { "" };
    if (-4..16).contains(&exp) {
        let body = if exp >= 0 {
            let int_len = exp as usize + 1;
            if digits.len() <= int_len {
                format!("{}{}.0", digits, "0".repeat(int_len - digits.len()))
            } else {
                format!("{}.{}", &digits[..int_len], &digits[int_len..])
            }
        } else {
            format!("0.{}{}", "0".repeat((-exp - 1) as usize), digits)
        };
        format!("{sign}{body}")
    } else {
        let mant = if digits.len() > 1 {
            format!("{}.{}", &digits[..1], &digits[1..])
        } else {
            digits
        };
        let esign = if exp < 0 { '-' } else { '+' };
        format!("{sign}{mant}e{esign}{:02}", exp.abs())
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
    fn floats_like_python_repr() {
        // python3 -c 'print([repr(x) for x in (...)])'
        let cases: &[(f64, &str)] = &[
            (1795813674.581129, "1795813674.581129"),
            (1.0, "1.0"),
            (0.5, "0.5"),
            (100000.0, "100000.0"),
            (1e15, "1000000000000000.0"),
            (1e16, "1e+16"),
            (1.5e16, "1.5e+16"),
            (123456789012345678.0, "1.2345678901234568e+17"),
            (0.0001, "0.0001"),
            (0.00012, "0.00012"),
            (0.00001, "1e-05"),
            (1.5e-7, "1.5e-07"),
            (-2.5, "-2.5"),
            (-0.0, "-0.0"),
            (0.0, "0.0"),
            (0.1, "0.1"),
            (1e100, "1e+100"),
            (5e-324, "5e-324"),
            (0.1773834228515625, "0.1773834228515625"),
            // Two 17-digit strings round-trip; Python takes the nearest (a tie here: to even).
            (154446623768692.12, "154446623768692.12"),
        ];
        for (f, want) in cases {
            assert_eq!(float_repr(*f), *want, "{f:e}");
        }
    }

    #[test]
    fn timestamps_survive_parse_and_dump() {
        // Needs serde_json's `float_roundtrip` (without it ~1 in 8 17-digit times moves by 1 ulp).
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
        assert_eq!(py_str(&json!("x")), "x");
        assert_eq!(py_str(&json!(["a", 1])), "['a', 1]");
        assert_eq!(py_str(&json!(true)), "True");
    }
}
