//! Python-compatibility rules, in one place: where the original's behaviour comes from a CPython
//! builtin (`str.strip()`, `int(str)`, `float(str)`, `repr(float)`, `json.dumps`), the daemons and
//! `pyococtl` call the functions here instead of spelling the rule out again.
//!
//! Pinned by `tests/fixtures/py_reference.json`, CPython 3.11's own answers (regenerate with
//! `tests/fixtures/gen_py_reference.py`).
//!
//! Known differences: `int()`/`float()` read ASCII digits only (CPython also reads other Unicode
//! decimal digits such as `"１２"`), and `int()` is limited to the `i64` range.

pub mod json;

/// Python's `str.isspace()` for one character: Unicode `White_Space` plus the ASCII separators
/// U+001C..U+001F (CPython counts bidi classes B and S as space; Rust does not).
pub fn is_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's `str.strip()` with no argument.
pub fn strip(s: &str) -> &str {
    s.trim_matches(is_space)
}

/// Python's `str.splitlines()` (without `keepends`): splits at `\n`, `\r`, `\r\n`, `\x0b`, `\x0c`,
/// `\x1c`..`\x1e`, `\x85`, U+2028 and U+2029; a trailing break adds no empty line.
pub fn splitlines(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut iter = text.char_indices().peekable();
    while let Some((i, c)) = iter.next() {
        let is_break = matches!(
            c,
            '\n' | '\r'
                | '\u{0b}'
                | '\u{0c}'
                | '\u{1c}'
                | '\u{1d}'
                | '\u{1e}'
                | '\u{85}'
                | '\u{2028}'
                | '\u{2029}'
        );
        if !is_break {
            continue;
        }
        out.push(&text[start..i]);
        let mut end = i + c.len_utf8();
        if c == '\r' {
            if let Some(&(j, '\n')) = iter.peek() {
                iter.next();
                end = j + 1;
            }
        }
        start = end;
    }
    if start < text.len() {
        out.push(&text[start..]);
    }
    out
}

/// The whitespace `int()` and `float()` skip around a number: unlike `strip()`, not U+001C..U+001F
/// (CPython keeps ASCII as it is and then skips only ASCII whitespace, after mapping non-ASCII
/// spaces to `' '`), which is exactly Unicode `White_Space`.
fn strip_numeric(s: &str) -> &str {
    s.trim_matches(char::is_whitespace)
}

/// Removes `_` separators the way `int()`/`float()` allow them: a single `_` between two ASCII
/// digits. `None` when an underscore sits anywhere else.
fn strip_digit_underscores(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    for (i, c) in s.char_indices() {
        if c == '_' {
            let prev_ok = i > 0 && b[i - 1].is_ascii_digit();
            let next_ok = b.get(i + 1).is_some_and(|n| n.is_ascii_digit());
            if !(prev_ok && next_ok) {
                return None;
            }
        } else {
            out.push(c);
        }
    }
    Some(out)
}

/// Python's `int(s)` (base 10): surrounding whitespace (not U+001C..U+001F), an optional sign, ASCII digits with
/// single underscores between them. `None` where Python raises `ValueError` and where the value
/// does not fit an `i64`.
pub fn int_from_str(s: &str) -> Option<i64> {
    let clean = strip_digit_underscores(strip_numeric(s))?;
    let digits = clean.strip_prefix(['+', '-']).unwrap_or(&clean);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    clean.parse().ok()
}

/// Python's `int(f)` for a float: truncation toward zero; `None` for NaN, the infinities and
/// values outside the `i64` range (Python would give a big integer).
pub fn int_from_float(f: f64) -> Option<i64> {
    if !f.is_finite() {
        return None;
    }
    let t = f.trunc();
    // -2^63 and 2^63 are both exactly representable, so the bounds are exact.
    (-9_223_372_036_854_775_808.0..9_223_372_036_854_775_808.0)
        .contains(&t)
        .then_some(t as i64)
}

/// Python's `float(s)`: surrounding whitespace (not U+001C..U+001F), decimal and exponent forms with single
/// underscores between digits, `inf`/`infinity`/`nan` in any case with an optional sign.
/// Overflow gives an infinity, as in Python. `None` where Python raises `ValueError`.
pub fn float_from_str(s: &str) -> Option<f64> {
    // Rust's grammar for f64 is Python's once the underscores are gone, special names included.
    strip_digit_underscores(strip_numeric(s))?.parse().ok()
}

/// Python's `repr(f)` spelled for JSON: what `json.dumps` writes for a float. Finite values as
/// `repr` (shortest round-tripping digits; positional when the decimal exponent is in `-4..16`,
/// always with a fractional part as in `1.0`, else `1e+16`, `1e-07`; `-0.0`); non-finite ones as
/// `NaN`, `Infinity`, `-Infinity`.
pub fn float_repr(f: f64) -> String {
    if f.is_nan() {
        "NaN".into()
    } else if f.is_infinite() {
        if f > 0.0 { "Infinity" } else { "-Infinity" }.into()
    } else {
        finite_repr(f)
    }
}

/// Python's `repr(f)`/`str(f)` exactly: as [`float_repr`] but `nan`, `inf`, `-inf`.
pub fn float_str(f: f64) -> String {
    if f.is_nan() {
        "nan".into()
    } else if f.is_infinite() {
        if f > 0.0 { "inf" } else { "-inf" }.into()
    } else {
        finite_repr(f)
    }
}

fn finite_repr(f: f64) -> String {
    if f == 0.0 {
        return if f.is_sign_negative() { "-0.0" } else { "0.0" }.into();
    }
    let (digits, exp) = shortest_digits(f.abs());
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

/// The digits of `repr` for a finite positive `f` and the decimal exponent of the first one
/// (`1234.5` → `("12345", 3)`).
fn shortest_digits(f: f64) -> (String, i32) {
    // `{:e}` gives a shortest round-tripping digit string, but when two strings of that length
    // round-trip it may not take the one Python takes: the nearest to the exact value (ties to
    // even), which is the correctly rounded string of that length whenever it round-trips.
    let shortest = format!("{f:e}");
    let n_digits = shortest
        .split_once('e')
        .map_or(1, |(m, _)| m.bytes().filter(u8::is_ascii_digit).count());
    let nearest = format!("{:.*e}", n_digits.saturating_sub(1), f);
    let sci = if nearest.parse::<f64>().ok() == Some(f) {
        nearest
    } else {
        shortest
    };
    let (mantissa, exp) = sci.split_once('e').expect("`{:e}` has an exponent");
    let exp = exp.parse().expect("`{:e}` exponent is an integer");
    (mantissa.chars().filter(|c| *c != '.').collect(), exp)
}

#[cfg(test)]
pub(crate) mod reference {
    //! CPython's answers, loaded from the checked-in fixture.
    use serde_json::Value;
    use std::sync::OnceLock;

    pub fn doc() -> &'static Value {
        static DOC: OnceLock<Value> = OnceLock::new();
        DOC.get_or_init(|| {
            serde_json::from_str(include_str!("../../tests/fixtures/py_reference.json"))
                .expect("py_reference.json is JSON")
        })
    }

    pub fn cases(key: &str) -> &'static [Value] {
        let list = doc()[key]
            .as_array()
            .unwrap_or_else(|| panic!("fixture lacks {key}"));
        assert!(!list.is_empty(), "fixture section {key} is empty");
        list
    }

    pub fn f64_of_bits(hex: &str) -> f64 {
        f64::from_bits(u64::from_str_radix(hex, 16).expect("hex bits"))
    }
}

#[cfg(test)]
mod tests {
    use super::reference::{cases, doc, f64_of_bits};
    use super::*;

    #[test]
    fn fixture_is_from_cpython_311() {
        assert!(doc()["python"].as_str().unwrap().starts_with("3.11."));
    }

    #[test]
    fn float_repr_matches_cpython() {
        let all = cases("floats");
        assert!(all.len() > 1000, "too few float cases");
        let mut bad = Vec::new();
        for case in all {
            let f = f64_of_bits(case[0].as_str().unwrap());
            let (repr, json) = (case[1].as_str().unwrap(), case[2].as_str().unwrap());
            if float_str(f) != repr || float_repr(f) != json {
                bad.push(format!(
                    "{f:e}: repr {repr} / json {json}, got {} / {}",
                    float_str(f),
                    float_repr(f)
                ));
            }
        }
        assert!(
            bad.is_empty(),
            "{} mismatches:\n{}",
            bad.len(),
            bad.join("\n")
        );
    }

    #[test]
    fn float_repr_named_values() {
        // The values the rules turn on, spelled out so a broken fixture cannot hide them.
        for (f, want) in [
            (1e16, "1e+16"),
            (1e15, "1000000000000000.0"),
            (1e-7, "1e-07"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (-0.0, "-0.0"),
            (1e22, "1e+22"),
            (123456789012345678.0, "1.2345678901234568e+17"),
            (5e-324, "5e-324"),
            (1.7976931348623157e308, "1.7976931348623157e+308"),
            (154446623768692.12, "154446623768692.12"),
            (f64::NAN, "NaN"),
            (f64::NEG_INFINITY, "-Infinity"),
        ] {
            assert_eq!(float_repr(f), want);
        }
        assert_eq!(float_str(f64::INFINITY), "inf");
        assert_eq!(float_str(f64::NAN), "nan");
    }

    #[test]
    fn int_from_str_matches_cpython() {
        for case in cases("int_from_str") {
            let input = case["input"].as_str().unwrap();
            assert_eq!(
                int_from_str(input),
                case["value"].as_i64(),
                "int({input:?})"
            );
        }
    }

    #[test]
    fn int_from_float_truncates() {
        assert_eq!(int_from_float(1.9), Some(1));
        assert_eq!(int_from_float(-1.9), Some(-1));
        assert_eq!(int_from_float(-(2f64.powi(63))), Some(i64::MIN));
        assert_eq!(int_from_float(2f64.powi(63)), None);
        assert_eq!(
            int_from_float(2f64.powi(63) - 1024.0),
            Some(i64::MAX - 1023)
        );
        assert_eq!(int_from_float(f64::NAN), None);
    }

    #[test]
    fn float_from_str_matches_cpython() {
        for case in cases("float_from_str") {
            let input = case["input"].as_str().unwrap();
            let got = float_from_str(input);
            match case["bits"].as_str() {
                None => assert_eq!(got, None, "float({input:?})"),
                Some(hex) => {
                    let want = f64_of_bits(hex);
                    let same = got.is_some_and(|g| {
                        g.to_bits() == want.to_bits() || (g.is_nan() && want.is_nan())
                    });
                    assert!(same, "float({input:?}): want {want:?}, got {got:?}");
                }
            }
        }
    }

    #[test]
    fn is_space_matches_cpython_everywhere() {
        let want: Vec<u32> = doc()["isspace"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let got: Vec<u32> = (0..=0x10ffff_u32)
            .filter(|&c| char::from_u32(c).is_some_and(is_space))
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn strip_and_splitlines_match_cpython() {
        for case in cases("strip") {
            let input = case["input"].as_str().unwrap();
            assert_eq!(strip(input), case["value"].as_str().unwrap(), "{input:?}");
        }
        for case in cases("splitlines") {
            let input = case["input"].as_str().unwrap();
            let want: Vec<&str> = case["value"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap())
                .collect();
            assert_eq!(splitlines(input), want, "{input:?}");
        }
    }
}
