//! Wheels: file names (PEP 427), distribution names (PEP 503), versions (PEP 440, through
//! `pep440_rs`), the registry's tag CSV, a small zip reader for the checks, and the object
//! store in the exact format nats-py writes ([`store`]). Shared by the gateway, the worker's
//! wheel sync and `pyococtl wheel`.

pub mod store;
pub mod zip;

use std::str::FromStr;
use std::sync::LazyLock;

use regex::Regex;

pub use pep440_rs::Version;

/// The registry's object names: the original's `^[A-Za-z0-9._+-]+\.whl$`.
pub static WHEEL_NAME_RE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[A-Za-z0-9._+-]+\.whl$").unwrap());
/// One wheel tag (routing tag of the workers that install it).
pub static WHEEL_TAG_RE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[A-Za-z0-9_-]+$").unwrap());

/// Object meta header carrying the wheel's tags as CSV.
pub const TAGS_HEADER: &str = "x-pyoco-wheel-tags";

/// Longest accepted wheel file name: the name becomes a NATS subject token (base64, ×4/3) and
/// a header value. PyPI's longest real names are far below this.
pub const MAX_NAME_LEN: usize = 255;
/// At most this many tags per wheel, each at most [`MAX_TAG_LEN`] characters.
pub const MAX_TAGS: usize = 64;
pub const MAX_TAG_LEN: usize = 64;

/// A registry name (trimmed), or `None` when it is not one (`invalid wheel name`).
pub fn normalize_wheel_name(raw: &str) -> Option<String> {
    let name = raw.trim();
    if name.len() > MAX_NAME_LEN || !WHEEL_NAME_RE.is_match(name) {
        return None;
    }
    Some(name.to_string())
}

/// PEP 503 normalisation: lowercase, runs of `-`, `_`, `.` become one `-`.
pub fn canonicalize_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut in_sep = false;
    for c in name.chars() {
        if matches!(c, '-' | '_' | '.') {
            if !in_sep {
                out.push('-');
                in_sep = true;
            }
        } else {
            in_sep = false;
            out.extend(c.to_lowercase());
        }
    }
    out
}

/// What a wheel file name says (packaging's `parse_wheel_filename`).
#[derive(Debug, Clone, PartialEq)]
pub struct WheelFilename {
    /// Canonical (PEP 503) distribution name.
    pub name: String,
    pub version: Version,
    /// Build tag `(number, rest)` when present.
    pub build: Option<(u64, String)>,
    /// The compressed tag sets, e.g. `py3`, `none`, `any` (each may hold `.`-separated alternatives).
    pub python_tag: String,
    pub abi_tag: String,
    pub platform_tag: String,
}

/// Parses `{name}-{version}(-{build})?-{python}-{abi}-{platform}.whl` the way
/// `packaging.utils.parse_wheel_filename` does; `Err` carries the reason.
pub fn parse_wheel_filename(filename: &str) -> Result<WheelFilename, String> {
    let stem = filename
        .strip_suffix(".whl")
        .ok_or_else(|| format!("{filename:?} does not end in .whl"))?;
    let parts: Vec<&str> = stem.split('-').collect();
    if parts.len() != 5 && parts.len() != 6 {
        return Err(format!(
            "{filename:?} has {} parts, not 5 or 6",
            parts.len()
        ));
    }
    let name_part = parts[0];
    if name_part.contains("__")
        || !name_part
            .chars()
            .all(|c| c.is_alphanumeric() || c == '_' || c == '.')
    {
        return Err(format!("{filename:?} has an invalid project name"));
    }
    let version = Version::from_str(parts[1])
        .map_err(|e| format!("{filename:?} has an invalid version: {e}"))?;
    let build = if parts.len() == 6 {
        let b = parts[2];
        let digits: String = b.chars().take_while(|c| c.is_ascii_digit()).collect();
        if digits.is_empty() {
            return Err(format!("{filename:?} has an invalid build number"));
        }
        let n = digits
            .parse::<u64>()
            .map_err(|_| format!("{filename:?} has an invalid build number"))?;
        Some((n, b[digits.len()..].to_string()))
    } else {
        None
    };
    let n = parts.len();
    Ok(WheelFilename {
        name: canonicalize_name(name_part),
        version,
        build,
        python_tag: parts[n - 3].to_string(),
        abi_tag: parts[n - 2].to_string(),
        platform_tag: parts[n - 1].to_string(),
    })
}

/// The upload form's `tags`: split on `,`, trimmed, empties dropped, each `^[A-Za-z0-9_-]+$`,
/// deduplicated keeping order. `None` = `invalid wheel tags`.
pub fn parse_tags_csv(raw: Option<&str>) -> Option<Vec<String>> {
    let Some(raw) = raw else {
        return Some(Vec::new());
    };
    let mut out: Vec<String> = Vec::new();
    for part in raw.split(',') {
        let tag = part.trim();
        if tag.is_empty() {
            continue;
        }
        if tag.len() > MAX_TAG_LEN || !WHEEL_TAG_RE.is_match(tag) {
            return None;
        }
        if !out.iter().any(|t| t == tag) {
            out.push(tag.to_string());
        }
        if out.len() > MAX_TAGS {
            return None;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_normalise_like_pep503() {
        assert_eq!(canonicalize_name("Foo_Bar.baz"), "foo-bar-baz");
        assert_eq!(canonicalize_name("foo--__bar"), "foo-bar");
        assert_eq!(canonicalize_name("FOO"), "foo");
    }

    #[test]
    fn filenames_parse_like_packaging() {
        let w = parse_wheel_filename("My_Pkg-1.0.post1-py3-none-any.whl").unwrap();
        assert_eq!(w.name, "my-pkg");
        assert_eq!(w.version, Version::from_str("1.0.post1").unwrap());
        assert_eq!(w.build, None);
        let w = parse_wheel_filename("pkg-2.0-1b-cp311-cp311-linux_x86_64.whl").unwrap();
        assert_eq!(w.build, Some((1, "b".into())));
        assert_eq!(w.platform_tag, "linux_x86_64");
        for bad in [
            "pkg-1.0-py3-any.whl",
            "pkg-notaversion-py3-none-any.whl",
            "p__kg-1.0-py3-none-any.whl",
            "pkg-1.0-x-py3-none-any.whl",
            "pkg+x-1.0-py3-none-any.whl",
            "pkg-1.0-py3-none-any.zip",
        ] {
            assert!(parse_wheel_filename(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn versions_order_like_pep440() {
        let v = |s: &str| Version::from_str(s).unwrap();
        assert!(v("1.0") == v("1.0.0"));
        assert!(v("1.0a1") < v("1.0b1"));
        assert!(v("1.0rc1") < v("1.0"));
        assert!(v("1.0") < v("1.0.post1"));
        assert!(v("1.0.dev1") < v("1.0a1"));
        assert!(v("1.10") > v("1.9"));
        assert!(v("1.0+local") > v("1.0"));
        assert!(v("1!0.1") > v("2.0"));
    }

    #[test]
    fn tags_csv() {
        assert_eq!(
            parse_tags_csv(Some(" a, b,,a ,c_d ")).unwrap(),
            vec!["a", "b", "c_d"]
        );
        assert_eq!(parse_tags_csv(None).unwrap(), Vec::<String>::new());
        assert!(parse_tags_csv(Some("a.b")).is_none());
        assert!(parse_tags_csv(Some(&"x".repeat(65))).is_none());
    }

    #[test]
    fn wheel_names_are_bounded() {
        assert!(normalize_wheel_name(" a-1-py3-none-any.whl ").is_some());
        assert!(normalize_wheel_name("../a.whl").is_none());
        assert!(normalize_wheel_name("a/b.whl").is_none());
        assert!(normalize_wheel_name(&format!("{}.whl", "a".repeat(300))).is_none());
    }
}
