//! Where things are: the workspace, the test environment written by `scripts/setup-test-env.sh`,
//! and the workspace binaries built next to the running test executable.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The workspace root (the directory holding the top-level `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests crate lives inside the workspace")
        .to_path_buf()
}

fn env_file_values() -> &'static HashMap<String, String> {
    static VALUES: OnceLock<HashMap<String, String>> = OnceLock::new();
    VALUES.get_or_init(|| {
        let path = workspace_root().join(".test-env").join("env");
        let Ok(text) = std::fs::read_to_string(&path) else {
            return HashMap::new();
        };
        parse_env_file(&text)
    })
}

/// Parses `export K=V` / `K=V` lines (surrounding quotes removed, `#` lines skipped).
pub(crate) fn parse_env_file(text: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line).trim();
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let mut v = v.trim();
        if v.len() >= 2
            && ((v.starts_with('"') && v.ends_with('"'))
                || (v.starts_with('\'') && v.ends_with('\'')))
        {
            v = &v[1..v.len() - 1];
        }
        out.insert(k.trim().to_string(), v.to_string());
    }
    out
}

/// A test-environment variable: the process environment if set and non-empty, else the value in
/// `<workspace>/.test-env/env`.
pub fn test_env(key: &str) -> Option<String> {
    match std::env::var(key) {
        Ok(v) if !v.trim().is_empty() => Some(v),
        _ => env_file_values()
            .get(key)
            .filter(|v| !v.trim().is_empty())
            .cloned(),
    }
}

/// Like [`test_env`] but the value must name an existing path; panics with setup instructions
/// otherwise (tests never skip silently).
pub fn test_env_path(key: &str) -> PathBuf {
    let env_file = workspace_root().join(".test-env").join("env");
    match test_env(key) {
        Some(v) => {
            let p = PathBuf::from(&v);
            if !p.exists() {
                panic!(
                    "{key}={v} does not exist. Run `bash scripts/setup-test-env.sh` in {} \
                     (it writes {}).",
                    workspace_root().display(),
                    env_file.display()
                );
            }
            p
        }
        None => panic!(
            "{key} is not set and not found in {}. Run `bash scripts/setup-test-env.sh` in {} \
             to install the test environment (nats-server builds, Python venvs).",
            env_file.display(),
            workspace_root().display()
        ),
    }
}

/// `$PYOCO_TEST_ORIG_VENV`: the Python 3.12 venv with the original pyoco-server 0.5.1.
pub fn orig_venv() -> PathBuf {
    test_env_path("PYOCO_TEST_ORIG_VENV")
}

/// `$PYOCO_TEST_ORIG_VENV/bin/<name>`, which must exist.
pub fn orig_bin(name: &str) -> PathBuf {
    let p = orig_venv().join("bin").join(name);
    if !p.exists() {
        panic!(
            "{} is missing. Run `bash scripts/setup-test-env.sh` to (re)install the original \
             pyoco-server venv.",
            p.display()
        );
    }
    p
}

/// `$PYOCO_TEST_PY311`: a Python 3.11 with `pyoco`.
pub fn py311() -> PathBuf {
    test_env_path("PYOCO_TEST_PY311")
}

/// The target profile directory of the running test executable
/// (`target/<profile>/deps/<exe>` → `target/<profile>`).
pub fn target_profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let deps = exe.parent().expect("test executable has a parent dir");
    if deps.file_name().map(|n| n == "deps").unwrap_or(false) {
        deps.parent().expect("deps has a parent").to_path_buf()
    } else {
        deps.to_path_buf()
    }
}

/// Path of a workspace binary (`pyoco-server`, `pyoco-worker`, `pyococtl`) built in the same
/// profile as this test. Panics if it is not built.
pub fn bin_path(name: &str) -> PathBuf {
    let p = target_profile_dir().join(name);
    if !p.is_file() {
        panic!(
            "workspace binary `{name}` not found at {}: build it with `cargo build --workspace --bins` \
             (same profile as the tests)",
            p.display()
        );
    }
    p
}
