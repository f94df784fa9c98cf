//! `.env` file support with the exact line rules of pyoco-server 0.5 (reference §9).
//!
//! Rules, per line (lines are split like Python's `str.splitlines()`):
//! * blank lines and lines starting with `#` (after trimming) are skipped;
//! * an optional `export ` prefix is removed;
//! * the line must be `KEY=VALUE` where the trimmed key matches `^[A-Za-z_][A-Za-z0-9_]*$`;
//!   any other line is ignored;
//! * the value is trimmed; if its first and last characters are the same quote (`'` or `"`) they
//!   are removed (a lone quote character therefore yields an empty value, as in the original);
//!   double-quoted bodies additionally get Python `unicode_escape`-style decoding of backslash
//!   escapes (see [`decode_python_escapes`]); if that decoding fails the body is kept verbatim;
//! * unquoted values lose an inline comment starting at the first `" #"` (space, hash).
//!
//! The loader ([`load_dotenv_with`]) is enabled unless `PYOCO_LOAD_DOTENV` is one of
//! `0/false/no/off` (case-insensitive) and reads `PYOCO_ENV_FILE` (default `.env`; relative to the
//! current directory; a leading `~` is expanded with `HOME`; set-but-blank disables the loader).
//! A missing or unreadable file is ignored. Values are never exported to the process environment.
//!
//! Deliberate difference from the original: the original runs `unicode_escape` on the UTF-8
//! *bytes* of double-quoted values, which turns any non-ASCII character into mojibake
//! (`"é"` → `"Ã©"`). Here non-ASCII characters are kept as written; only escapes are decoded.
//! `\N{NAME}` escapes are kept literally (no Unicode name table); lone surrogates (`\ud800`)
//! become U+FFFD because Rust strings cannot hold them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::py;

/// Environment variable that disables the `.env` loader when `0/false/no/off`.
pub const LOAD_DOTENV_VAR: &str = "PYOCO_LOAD_DOTENV";
/// Environment variable naming the `.env` file (default `.env`).
pub const ENV_FILE_VAR: &str = "PYOCO_ENV_FILE";

/// `^[A-Za-z_][A-Za-z0-9_]*$`
fn is_valid_key(key: &str) -> bool {
    let mut chars = key.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphabetic() || c == '_' => {}
        _ => return false,
    }
    chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Parse one `.env` line; `None` for blank, comment and malformed lines.
pub fn parse_dotenv_line(line: &str) -> Option<(String, String)> {
    let mut raw = py::strip(line);
    if raw.is_empty() || raw.starts_with('#') {
        return None;
    }
    if let Some(rest) = raw.strip_prefix("export ") {
        raw = py::strip(rest);
    }
    let (key, value) = raw.split_once('=')?;
    let key = py::strip(key);
    if !is_valid_key(key) {
        return None;
    }
    let value = py::strip(value);
    if let (Some(first), Some(last)) = (value.chars().next(), value.chars().last()) {
        if first == last && (first == '\'' || first == '"') {
            // Same rule as Python's value[1:-1]: a lone quote gives an empty body.
            let body = if value.len() >= 2 {
                &value[1..value.len() - 1]
            } else {
                ""
            };
            let body = if first == '"' {
                decode_python_escapes(body).unwrap_or_else(|| body.to_string())
            } else {
                body.to_string()
            };
            return Some((key.to_string(), body));
        }
    }
    let value = match value.split_once(" #") {
        Some((before, _)) => py::strip(before),
        None => value,
    };
    Some((key.to_string(), value.to_string()))
}

/// Parse a whole `.env` text; entries are returned in file order (duplicates included, the last
/// one wins when collected into a map).
pub fn parse_dotenv(text: &str) -> Vec<(String, String)> {
    py::splitlines(text)
        .into_iter()
        .filter_map(parse_dotenv_line)
        .collect()
}

/// Decode backslash escapes like Python's `unicode_escape` codec.
///
/// Supported: `\\ \' \" \a \b \f \n \r \t \v`, backslash-newline (removed), octal `\o`..`\ooo`,
/// `\xHH`, `\uHHHH`, `\UHHHHHHHH`. Unknown escapes (e.g. `\q`) and `\N{NAME}` are kept verbatim.
/// Returns `None` where Python raises (truncated `\x`/`\u`/`\U`, code point above U+10FFFF,
/// `\N` without `{NAME}`, trailing lone backslash); the caller then keeps the raw text, as the
/// original does.
pub fn decode_python_escapes(s: &str) -> Option<String> {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        let esc = chars.next()?;
        match esc {
            '\n' => {}
            '\\' => out.push('\\'),
            '\'' => out.push('\''),
            '"' => out.push('"'),
            'a' => out.push('\u{07}'),
            'b' => out.push('\u{08}'),
            'f' => out.push('\u{0c}'),
            'n' => out.push('\n'),
            'r' => out.push('\r'),
            't' => out.push('\t'),
            'v' => out.push('\u{0b}'),
            '0'..='7' => {
                let mut value = esc.to_digit(8)?;
                for _ in 0..2 {
                    match chars.peek().and_then(|d| d.to_digit(8)) {
                        Some(d) => {
                            value = value * 8 + d;
                            chars.next();
                        }
                        None => break,
                    }
                }
                out.push(char::from_u32(value)?);
            }
            'x' | 'u' | 'U' => {
                let width = match esc {
                    'x' => 2,
                    'u' => 4,
                    _ => 8,
                };
                let mut value: u32 = 0;
                for _ in 0..width {
                    let d = chars.peek().and_then(|d| d.to_digit(16))?;
                    chars.next();
                    value = value * 16 + d;
                }
                if value > 0x10FFFF {
                    return None;
                }
                // Surrogates cannot live in a Rust string.
                out.push(char::from_u32(value).unwrap_or('\u{FFFD}'));
            }
            'N' => {
                // `\N{NAME}`: no Unicode name table here, keep it verbatim. Python rejects a
                // `\N` without a braced, non-empty name, so that is a decoding failure.
                if chars.next() != Some('{') {
                    return None;
                }
                let mut name = String::new();
                loop {
                    match chars.next()? {
                        '}' => break,
                        c => name.push(c),
                    }
                }
                if name.is_empty() {
                    return None;
                }
                out.push_str("\\N{");
                out.push_str(&name);
                out.push('}');
            }
            other => {
                out.push('\\');
                out.push(other);
            }
        }
    }
    Some(out)
}

fn is_off(raw: &str) -> bool {
    matches!(
        py::strip(raw).to_lowercase().as_str(),
        "0" | "false" | "no" | "off"
    )
}

/// Where the `.env` file would be read from, given an environment lookup and the current
/// directory; `None` when the loader is disabled (`PYOCO_LOAD_DOTENV` off or `PYOCO_ENV_FILE`
/// set but blank). The file may not exist.
pub fn dotenv_path_with(lookup: &dyn Fn(&str) -> Option<String>, cwd: &Path) -> Option<PathBuf> {
    if let Some(flag) = lookup(LOAD_DOTENV_VAR) {
        if is_off(&flag) {
            return None;
        }
    }
    let name = lookup(ENV_FILE_VAR).unwrap_or_else(|| ".env".to_string());
    let name = py::strip(&name);
    if name.is_empty() {
        return None;
    }
    let expanded = expand_home(name, lookup);
    Some(if expanded.is_absolute() {
        expanded
    } else {
        cwd.join(expanded)
    })
}

/// Expand a leading `~` / `~/` with `HOME` (`~user` forms are left as written).
fn expand_home(name: &str, lookup: &dyn Fn(&str) -> Option<String>) -> PathBuf {
    let rest = if name == "~" {
        Some("")
    } else {
        name.strip_prefix("~/")
    };
    match (rest, lookup("HOME")) {
        (Some(rest), Some(home)) if !home.is_empty() => {
            let home = PathBuf::from(home);
            if rest.is_empty() {
                home
            } else {
                home.join(rest.trim_start_matches('/'))
            }
        }
        _ => PathBuf::from(name),
    }
}

/// Load the `.env` file selected by `lookup` (an environment accessor) relative to `cwd`.
/// Returns the file path and its values (last duplicate wins); `None` when disabled, missing or
/// unreadable. Invalid UTF-8 is decoded lossily.
pub fn load_dotenv_with(
    lookup: &dyn Fn(&str) -> Option<String>,
    cwd: &Path,
) -> Option<(PathBuf, HashMap<String, String>)> {
    let path = dotenv_path_with(lookup, cwd)?;
    if !path.is_file() {
        return None;
    }
    let bytes = std::fs::read(&path).ok()?;
    let text = String::from_utf8_lossy(&bytes);
    let values = parse_dotenv(&text).into_iter().collect();
    Some((path, values))
}

/// Load the `.env` file as the original does: `PYOCO_LOAD_DOTENV` / `PYOCO_ENV_FILE` / `HOME` are
/// read from the process environment, relative paths resolve against the current directory.
pub fn load_dotenv_from_process_env() -> Option<(PathBuf, HashMap<String, String>)> {
    let cwd = std::env::current_dir().ok()?;
    load_dotenv_with(&|k| std::env::var(k).ok(), &cwd)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(line: &str) -> Option<(String, String)> {
        parse_dotenv_line(line)
    }

    fn kv(k: &str, v: &str) -> Option<(String, String)> {
        Some((k.to_string(), v.to_string()))
    }

    // Expected values below were checked against pyoco_server 0.5.1's `_parse_dotenv_line`.
    #[test]
    fn basic_lines() {
        assert_eq!(p(""), None);
        assert_eq!(p("   "), None);
        assert_eq!(p("# comment"), None);
        assert_eq!(p("   # indented comment"), None);
        assert_eq!(p("K"), None);
        assert_eq!(p("1K=v"), None);
        assert_eq!(p("A-B=v"), None);
        assert_eq!(p("K=v"), kv("K", "v"));
        assert_eq!(p(" export K = v "), kv("K", "v"));
        assert_eq!(p("export  K=1"), kv("K", "1"));
        assert_eq!(p("exportK=1"), kv("exportK", "1"));
        assert_eq!(p("K =v"), kv("K", "v"));
        assert_eq!(p("_k9=v"), kv("_k9", "v"));
        assert_eq!(p("K="), kv("K", ""));
        assert_eq!(p("K==\"x\""), kv("K", "=\"x\""));
        assert_eq!(p("K=a=b"), kv("K", "a=b"));
    }

    #[test]
    fn inline_comments() {
        assert_eq!(p("K=a #b"), kv("K", "a"));
        assert_eq!(p("K=a#b"), kv("K", "a#b"));
        assert_eq!(p("K=v  #x #y"), kv("K", "v"));
        assert_eq!(p("K= #x"), kv("K", "#x"));
        assert_eq!(p("K=\t#x"), kv("K", "#x"));
        // Quoted value followed by a comment: not "quoted" any more, quotes stay.
        assert_eq!(p("K=\"a\" # c"), kv("K", "\"a\""));
        // Quoted values keep " #".
        assert_eq!(p("K=\"a #b\""), kv("K", "a #b"));
        assert_eq!(p("K='a #b'"), kv("K", "a #b"));
    }

    #[test]
    fn quotes() {
        assert_eq!(p("K=\""), kv("K", ""));
        assert_eq!(p("K='"), kv("K", ""));
        assert_eq!(p("K=\"\""), kv("K", ""));
        assert_eq!(p("K=''"), kv("K", ""));
        assert_eq!(p("K=\"a'\""), kv("K", "a'"));
        assert_eq!(p("K='a\\nb'"), kv("K", "a\\nb"));
        assert_eq!(p("K=\"a\\nb\""), kv("K", "a\nb"));
        assert_eq!(p("K=\"a'"), kv("K", "\"a'"));
        assert_eq!(p("K=  \"  spaced  \"  "), kv("K", "  spaced  "));
    }

    #[test]
    fn escapes() {
        assert_eq!(p(r#"K="\x41\u00e9\U0001F600""#), kv("K", "Aé😀"));
        assert_eq!(p(r#"K="\t\\\"\'""#), kv("K", "\t\\\"'"));
        assert_eq!(p(r#"K="\a\b\f\v\r""#), kv("K", "\u{7}\u{8}\u{c}\u{b}\r"));
        assert_eq!(p(r#"K="\101\7\0""#), kv("K", "A\u{7}\0"));
        assert_eq!(p(r#"K="\777""#), kv("K", "ǿ"));
        assert_eq!(p(r#"K="\1234""#), kv("K", "S4"));
        // Unknown escapes are kept.
        assert_eq!(p(r#"K="\q""#), kv("K", "\\q"));
        assert_eq!(p(r#"K="\N{BULLET}\t""#), kv("K", "\\N{BULLET}\t"));
        assert_eq!(p(r#"K="\N\t""#), kv("K", "\\N\\t"));
        assert_eq!(p(r#"K="\N{}""#), kv("K", "\\N{}"));
        // Decoding errors keep the whole body verbatim.
        assert_eq!(p(r#"K="\x4""#), kv("K", "\\x4"));
        assert_eq!(p(r#"K="ok\n\x4""#), kv("K", "ok\\n\\x4"));
        assert_eq!(p(r#"K="abc\""#), kv("K", "abc\\"));
        assert_eq!(p(r#"K="\U00110000""#), kv("K", "\\U00110000"));
        assert_eq!(p(r#"K="\u12""#), kv("K", "\\u12"));
        // Deliberate fix: non-ASCII stays intact (the original produces mojibake).
        assert_eq!(p("K=\"é\\tñ\""), kv("K", "é\tñ"));
        assert_eq!(p(r#"K="\ud800""#), kv("K", "\u{FFFD}"));
        assert_eq!(decode_python_escapes("a\\\nb"), Some("ab".to_string()));
    }

    #[test]
    fn whole_text_and_line_splitting() {
        let text =
            "# header\n\nA=1\r\nexport B='two'\rC=\"x\\ty\"\u{0b}D=4 # c\nbad line\nA=override\n";
        let parsed = parse_dotenv(text);
        let expected: Vec<(String, String)> = [
            ("A", "1"),
            ("B", "two"),
            ("C", "x\ty"),
            ("D", "4"),
            ("A", "override"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(parsed, expected);
        assert_eq!(
            py::splitlines("a\x1cb\u{85}c\u{2028}d\re\r\nf\x0bg\x0ch"),
            vec!["a", "b", "c", "d", "e", "f", "g", "h"]
        );
        assert_eq!(py::splitlines("a\n"), vec!["a"]);
        assert_eq!(py::splitlines("a\n\nb"), vec!["a", "", "b"]);
        // Python's strip() also removes 0x1C..0x1F.
        assert_eq!(p("K=v\u{1f}"), kv("K", "v"));
    }

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k: &str| map.get(k).cloned()
    }

    #[test]
    fn loader_rules() {
        let dir = tempfile::tempdir().unwrap();
        let cwd = dir.path();
        std::fs::write(cwd.join(".env"), "A=1\nA=2\nB=\"x\"\n").unwrap();
        std::fs::create_dir(cwd.join("home")).unwrap();
        std::fs::write(cwd.join("home/my.env"), "H=home\n").unwrap();
        std::fs::write(cwd.join("other.env"), "O=other\n").unwrap();

        let (path, values) = load_dotenv_with(&env(&[]), cwd).unwrap();
        assert_eq!(path, cwd.join(".env"));
        assert_eq!(values.get("A").map(String::as_str), Some("2"));
        assert_eq!(values.get("B").map(String::as_str), Some("x"));

        for off in ["0", "false", "No", " OFF "] {
            assert!(
                load_dotenv_with(&env(&[(LOAD_DOTENV_VAR, off)]), cwd).is_none(),
                "{off}"
            );
        }
        for on in ["1", "true", "", "whatever"] {
            assert!(
                load_dotenv_with(&env(&[(LOAD_DOTENV_VAR, on)]), cwd).is_some(),
                "{on}"
            );
        }

        let (path, values) = load_dotenv_with(&env(&[(ENV_FILE_VAR, "other.env")]), cwd).unwrap();
        assert_eq!(path, cwd.join("other.env"));
        assert_eq!(values.get("O").map(String::as_str), Some("other"));

        let home = cwd.join("home");
        let lookup = env(&[
            (ENV_FILE_VAR, " ~/my.env "),
            ("HOME", home.to_str().unwrap()),
        ]);
        let (path, values) = load_dotenv_with(&lookup, Path::new("/nonexistent")).unwrap();
        assert_eq!(path, home.join("my.env"));
        assert_eq!(values.get("H").map(String::as_str), Some("home"));

        // Set-but-blank PYOCO_ENV_FILE disables the loader; missing file → None.
        assert!(load_dotenv_with(&env(&[(ENV_FILE_VAR, "  ")]), cwd).is_none());
        assert!(load_dotenv_with(&env(&[(ENV_FILE_VAR, "missing.env")]), cwd).is_none());
        // A directory is not a file.
        assert!(load_dotenv_with(&env(&[(ENV_FILE_VAR, "home")]), cwd).is_none());
    }
}
