//! Python's `json.dumps` with `ensure_ascii=True`, in its two spellings the original uses:
//!
//! * compact, `separators=(",", ":")`: what the original writes into NATS (KV values, job and
//!   event messages), [`to_vec_compact`] / [`to_string_compact`];
//! * default, `", "` and `": "`: what `json.dumps(obj)` prints in the original CLIs,
//!   [`to_string_default`].
//!
//! Both are one [`serde_json::ser::Formatter`], [`PyFormatter`], so any `Serialize` value is
//! written the Python way: floats as `repr` ([`super::float_repr`]: `1e+16`, `1e-07`, `1.0`), and
//! every character outside `' '..='~'` in strings as `\uXXXX` (lower-case hex, UTF-16 surrogate
//! pairs above the BMP), besides the usual `\"`, `\\`, `\b`, `\f`, `\n`, `\r`, `\t`.
//!
//! One difference is deliberate: a non-finite `f64` field is written as `null` (serde_json's
//! serializer decides that before the formatter sees it), where Python writes `NaN`/`Infinity`,
//! which strict JSON readers refuse. A `serde_json::Value` cannot hold such a number at all.

use std::io::{self, Write};

use serde::Serialize;
use serde_json::ser::Formatter;

/// Which separators `json.dumps` was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// `separators=(",", ":")`.
    Compact,
    /// Python's default separators, `(", ", ": ")`.
    Default,
}

/// A serde_json formatter writing what `json.dumps(..., ensure_ascii=True)` writes in `style`.
#[derive(Debug, Clone, Copy)]
pub struct PyFormatter {
    style: Style,
}

impl PyFormatter {
    pub fn new(style: Style) -> Self {
        PyFormatter { style }
    }

    fn item_separator(&self) -> &'static [u8] {
        match self.style {
            Style::Compact => b",",
            Style::Default => b", ",
        }
    }

    fn key_separator(&self) -> &'static [u8] {
        match self.style {
            Style::Compact => b":",
            Style::Default => b": ",
        }
    }
}

impl Formatter for PyFormatter {
    fn write_f64<W: ?Sized + Write>(&mut self, writer: &mut W, value: f64) -> io::Result<()> {
        writer.write_all(super::float_repr(value).as_bytes())
    }

    fn write_f32<W: ?Sized + Write>(&mut self, writer: &mut W, value: f32) -> io::Result<()> {
        // Python has no f32; the value it would hold is the f64 of it.
        self.write_f64(writer, f64::from(value))
    }

    /// serde_json has already escaped `"`, `\` and C0 controls; what is left for ASCII-only
    /// output is DEL and everything beyond ASCII.
    fn write_string_fragment<W: ?Sized + Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        let mut units = [0u16; 2];
        let mut run_start = 0;
        for (i, ch) in fragment.char_indices() {
            if (' '..='~').contains(&ch) {
                continue;
            }
            writer.write_all(&fragment.as_bytes()[run_start..i])?;
            for unit in ch.encode_utf16(&mut units) {
                write!(writer, "\\u{unit:04x}")?;
            }
            run_start = i + ch.len_utf8();
        }
        writer.write_all(&fragment.as_bytes()[run_start..])
    }

    fn begin_array_value<W: ?Sized + Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> io::Result<()> {
        if first {
            Ok(())
        } else {
            writer.write_all(self.item_separator())
        }
    }

    fn begin_object_key<W: ?Sized + Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> io::Result<()> {
        if first {
            Ok(())
        } else {
            writer.write_all(self.item_separator())
        }
    }

    fn begin_object_value<W: ?Sized + Write>(&mut self, writer: &mut W) -> io::Result<()> {
        writer.write_all(self.key_separator())
    }
}

/// `value` as `json.dumps` writes it in `style`.
pub fn to_vec<T: Serialize + ?Sized>(value: &T, style: Style) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    let mut ser = serde_json::Serializer::with_formatter(&mut out, PyFormatter::new(style));
    // Only a Serialize impl that fails on purpose (or a map with non-string keys) errs; the
    // documents written here are JSON values and derived structs.
    value
        .serialize(&mut ser)
        .expect("serializing a JSON document cannot fail");
    out
}

/// `json.dumps(value, separators=(",", ":"), ensure_ascii=True)` as bytes, ready for a KV put
/// or a publish.
pub fn to_vec_compact<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    to_vec(value, Style::Compact)
}

/// `json.dumps(value, separators=(",", ":"), ensure_ascii=True)`.
pub fn to_string_compact<T: Serialize + ?Sized>(value: &T) -> String {
    String::from_utf8(to_vec_compact(value)).expect("ensure_ascii output is ASCII")
}

/// `json.dumps(value)` (default separators, `ensure_ascii=True`).
pub fn to_string_default<T: Serialize + ?Sized>(value: &T) -> String {
    String::from_utf8(to_vec(value, Style::Default)).expect("ensure_ascii output is ASCII")
}

#[cfg(test)]
mod tests {
    use super::super::reference::cases;
    use super::*;
    use serde_json::{json, Value};

    #[test]
    fn both_styles_match_cpython() {
        for case in cases("json") {
            let compact = case["compact"].as_str().unwrap();
            let default = case["default"].as_str().unwrap();
            let value: Value = serde_json::from_str(compact).expect("CPython's JSON parses");
            assert_eq!(to_string_compact(&value), compact);
            assert_eq!(to_string_default(&value), default);
        }
    }

    #[test]
    fn every_float_of_the_fixture_through_a_value() {
        // The same floats as py::tests, but read back from JSON text and written by the
        // formatter: parse and dump must not move a value by one ulp (float_roundtrip).
        for case in cases("floats") {
            let json_text = case[2].as_str().unwrap();
            if let Ok(v) = serde_json::from_str::<Value>(json_text) {
                assert_eq!(to_string_compact(&v), json_text);
            } else {
                assert!(["NaN", "Infinity", "-Infinity"].contains(&json_text));
            }
        }
    }

    #[derive(Serialize)]
    struct Doc<'a> {
        name: &'a str,
        t: f64,
        f: f32,
        nan: f64,
        tags: Vec<&'a str>,
        by_key: std::collections::BTreeMap<i32, bool>,
    }

    #[test]
    fn structs_and_non_finite_floats() {
        let d = Doc {
            name: "é\u{7f}",
            t: 1e16,
            f: 0.5,
            nan: f64::NAN,
            tags: vec!["a", "b"],
            by_key: [(2, true), (10, false)].into_iter().collect(),
        };
        assert_eq!(
            to_string_compact(&d),
            r#"{"name":"\u00e9\u007f","t":1e+16,"f":0.5,"nan":null,"tags":["a","b"],"by_key":{"2":true,"10":false}}"#
        );
        assert_eq!(
            to_string_default(&d),
            r#"{"name": "\u00e9\u007f", "t": 1e+16, "f": 0.5, "nan": null, "tags": ["a", "b"], "by_key": {"2": true, "10": false}}"#
        );
    }

    #[test]
    fn bytes_equal_string() {
        let v = json!({"k": [1, "😀"]});
        assert_eq!(to_vec_compact(&v), to_string_compact(&v).into_bytes());
    }
}
