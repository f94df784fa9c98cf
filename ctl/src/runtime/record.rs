//! The task packages `pyococtl runtime setup PACKAGE…` installed, recorded in
//! `<venv>/pyoco-task-packages.txt`: the runner's callable policy lets flows name callables of
//! these distributions (and of no other site-package). Which distribution an argument is
//! (`name==1.2`, a wheel file, a project directory, a line of a requirements file) is decided
//! by the venv's own Python, which then confirms it is installed.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use crate::client::{CtlError, CtlResult};
use crate::exit;

/// Read by the runner from `sys.prefix` (daemons/worker/runner/pyoco_runner.py).
pub const TASK_PACKAGES_FILE: &str = "pyoco-task-packages.txt";

/// Prints JSON `{"recorded": [...], "unresolved": [...]}` for the arguments in `sys.argv[1]`.
const RESOLVE_PY: &str = r#"
import configparser, importlib.metadata as md, json, os, re, sys

def canonical(n):
    return re.sub(r"[-_.]+", "-", n).lower()

def from_dir(d):
    try:
        import tomllib
        with open(os.path.join(d, "pyproject.toml"), "rb") as f:
            name = tomllib.load(f).get("project", {}).get("name")
        if name:
            return name
    except Exception:
        pass
    cfg = configparser.ConfigParser()
    try:
        cfg.read(os.path.join(d, "setup.cfg"))
        return cfg.get("metadata", "name", fallback=None)
    except Exception:
        return None

def name_of(arg):
    arg = arg.strip()
    if not arg or arg.startswith("-"):
        return None
    if os.path.isdir(arg):
        return from_dir(arg)
    base = os.path.basename(arg)
    if base.endswith(".whl"):
        return base.split("-", 1)[0]
    for ext in (".tar.gz", ".zip", ".tar.bz2"):
        if base.endswith(ext):
            return base[: -len(ext)].rsplit("-", 1)[0]
    try:
        from pip._vendor.packaging.requirements import Requirement
        return Requirement(arg).name
    except Exception:
        m = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", arg)
        return m.group(0) if m else None

args = json.loads(sys.argv[1])
recorded, unresolved = [], []
for arg in args:
    if arg.strip().startswith("-"):
        continue
    name = name_of(arg)
    try:
        if name is None:
            raise LookupError
        md.distribution(name)
        recorded.append(canonical(name))
    except Exception:
        unresolved.append(arg)
print(json.dumps({"recorded": recorded, "unresolved": unresolved}))
"#;

/// The requirement lines of a pip requirements file (comments, options and blanks dropped).
fn requirement_lines(file: &Path) -> CtlResult<Vec<String>> {
    let text = std::fs::read_to_string(file).map_err(|e| {
        CtlError::new(
            exit::ERROR,
            format!("cannot read the requirements file {}: {e}", file.display()),
        )
    })?;
    Ok(text
        .lines()
        .map(|l| l.split(" #").next().unwrap_or("").trim())
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('-'))
        .map(str::to_string)
        .collect())
}

/// Records the distributions behind `packages` and the lines of `requirements` in the venv's
/// list (merged with what it held); returns (recorded now, arguments it could not resolve).
pub async fn record(
    venv: &Path,
    venv_python: &Path,
    packages: &[String],
    requirements: &[PathBuf],
) -> CtlResult<(Vec<String>, Vec<String>)> {
    let mut args: Vec<String> = packages.to_vec();
    for r in requirements {
        args.extend(requirement_lines(r)?);
    }
    if args.is_empty() {
        return Ok((vec![], vec![]));
    }
    let out = tokio::process::Command::new(venv_python)
        .arg("-c")
        .arg(RESOLVE_PY)
        .arg(serde_json::to_string(&args).unwrap_or_default())
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| {
            CtlError::new(
                exit::ERROR,
                format!("cannot start {}: {e}", venv_python.display()),
            )
        })?;
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|_| {
        CtlError::new(
            exit::ERROR,
            format!(
                "{} could not tell which distributions were installed: {}",
                venv_python.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        )
    })?;
    let list = |k: &str| -> Vec<String> {
        answer[k]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let (recorded, unresolved) = (list("recorded"), list("unresolved"));

    let file = venv.join(TASK_PACKAGES_FILE);
    let mut names: Vec<String> = std::fs::read_to_string(&file)
        .unwrap_or_default()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect();
    names.extend(recorded.iter().cloned());
    names.sort();
    names.dedup();
    let text = format!(
        "# Task packages installed with `pyococtl runtime setup PACKAGE`: flows may name callables\n\
         # in them (the workers' callable policy). One distribution name per line.\n{}\n",
        names.join("\n")
    );
    // Readable by the workers' user whatever the caller's umask (the runner reads it).
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::write(&file, text)
        .and_then(|()| std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)))
        .map_err(|e| CtlError::new(exit::ERROR, format!("cannot write {}: {e}", file.display())))?;
    Ok((recorded, unresolved))
}
