//! `pyococtl runtime setup|check`: the workers' Python environment.
//!
//! `setup` creates a venv (default `/var/lib/pyoco/venv`, the one the packaged
//! `pyoco-worker@.service` runs), installs pyoco and the user's packages into it with pip —
//! online, or offline from a directory of wheels — and then checks it. `check` starts the
//! worker's own runner shim with the venv's interpreter, exactly as `pyoco-worker` does at start,
//! so "ok" means a worker will accept this runtime. Run as root, the check runs the interpreter
//! as the workers' user (`pyoco`) when it exists, which also proves the venv is readable by them.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::{json, Value};
use tokio::io::AsyncReadExt as _;

use crate::client::{CtlError, CtlResult};
use crate::{exit, Ctx, OutputFormat};

mod record;

/// The venv the packaged worker unit uses (`PYOCO_PYTHON=/var/lib/pyoco/venv/bin/python`).
pub const DEFAULT_VENV: &str = "/var/lib/pyoco/venv";
/// The oldest pyoco the runner shim supports (the shim checks it too).
const PYOCO_REQUIREMENT: &str = "pyoco>=0.6.2";
/// The user the packaged worker units run as.
const WORKER_USER: &str = "pyoco";
/// The worker's runner shim: `check` starts it as the worker does.
const SHIM_SOURCE: &str = include_str!("../../daemons/worker/runner/pyoco_runner.py");

#[derive(Debug, Clone, Subcommand)]
pub enum RuntimeCmd {
    /// Create the workers' venv (when missing) and install pyoco and your packages into it.
    #[command(
        after_help = "Examples:\n  pyococtl runtime setup\n  pyococtl runtime setup --wheel-dir /srv/wheels             # offline: pip --no-index --find-links\n  pyococtl runtime setup -r requirements.txt my-tasks==1.2\n  pyococtl runtime setup --venv ~/.pyoco-venv --python python3.12\n\nRestart the workers afterwards: systemctl restart 'pyoco-worker@*'"
    )]
    Setup(SetupArgs),
    /// Check that the venv can run flows: Python and pyoco versions, the worker's runner start-up.
    #[command(
        after_help = "Examples:\n  pyococtl runtime check\n  pyococtl runtime check --pythonpath /var/lib/pyoco/flows --import hello_tasks\n  pyococtl --output json runtime check\n\nExit codes: 0 the runtime can run flows, 1 it cannot (the message says why and how to fix it)."
    )]
    Check(CheckArgs),
}

#[derive(Debug, Clone, Args)]
pub struct SetupArgs {
    /// The venv to create or update.
    #[arg(long, default_value = DEFAULT_VENV, value_name = "DIR")]
    pub venv: PathBuf,
    /// The Python (3.11 or later) that creates the venv.
    #[arg(long, default_value = "python3", value_name = "PYTHON")]
    pub python: String,
    /// Install offline from the wheels in DIR (pip install --no-index --find-links DIR); DIR must
    /// hold pyoco and its dependencies (`pip download pyoco -d DIR` on a machine with the same Python).
    #[arg(long, value_name = "DIR")]
    pub wheel_dir: Option<PathBuf>,
    /// A pip requirements file to install as well (repeatable).
    #[arg(long = "requirement", short = 'r', value_name = "FILE")]
    pub requirements: Vec<PathBuf>,
    /// The pyoco requirement to install.
    #[arg(long, default_value = PYOCO_REQUIREMENT, value_name = "SPEC")]
    pub pyoco: String,
    /// Upgrade packages that are already installed (pip install --upgrade).
    #[arg(long)]
    pub upgrade: bool,
    /// Empty the venv first (python -m venv --clear): a new interpreter, no old packages.
    #[arg(long)]
    pub recreate: bool,
    /// Only create the venv and install; skip the check at the end.
    #[arg(long)]
    pub no_check: bool,
    /// More packages for pip: names with versions, wheel files, directories (after `--` for pip flags).
    #[arg(value_name = "PACKAGE")]
    pub packages: Vec<String>,
}

#[derive(Debug, Clone, Args)]
pub struct CheckArgs {
    /// The venv to check.
    #[arg(long, default_value = DEFAULT_VENV, value_name = "DIR", conflicts_with = "python")]
    pub venv: PathBuf,
    /// Check this interpreter instead of a venv's (what `pyoco-worker --python` would run).
    #[arg(long, value_name = "PYTHON")]
    pub python: Option<PathBuf>,
    /// Directories on the runners' PYTHONPATH, as `pyoco-worker --pythonpath` (repeatable).
    #[arg(long, value_name = "DIR")]
    pub pythonpath: Vec<PathBuf>,
    /// A module the flows need (task modules): checks that it imports (repeatable).
    #[arg(long = "import", value_name = "MODULE")]
    pub imports: Vec<String>,
}

pub async fn dispatch(ctx: &Ctx, cmd: &RuntimeCmd) -> CtlResult<u8> {
    match cmd {
        RuntimeCmd::Setup(a) => setup(ctx, a).await,
        RuntimeCmd::Check(a) => {
            let python = a
                .python
                .clone()
                .unwrap_or_else(|| a.venv.join("bin/python"));
            let report = check(&python, &a.pythonpath, &a.imports).await?;
            print_report(ctx, &report);
            Ok(if report.ok { exit::OK } else { exit::ERROR })
        }
    }
}

// ---------------------------------------------------------------------------------------------
// setup

async fn setup(ctx: &Ctx, a: &SetupArgs) -> CtlResult<u8> {
    if let Some(dir) = &a.wheel_dir {
        if !dir.is_dir() {
            return Err(CtlError::usage(
                format!("--wheel-dir {}: not a directory", dir.display()),
                "pip download pyoco -d /srv/wheels && pyococtl runtime setup --wheel-dir /srv/wheels",
            ));
        }
    }
    for r in &a.requirements {
        if !r.is_file() {
            return Err(CtlError::usage(
                format!("--requirement {}: no such file", r.display()),
                "pyococtl runtime setup -r requirements.txt",
            ));
        }
    }
    let venv = absolute(&a.venv);
    let venv_python = venv.join("bin/python");

    if a.recreate || !venv_python.exists() {
        let version = python_version(&a.python).await?;
        let mut cmd = tokio::process::Command::new(&a.python);
        cmd.arg("-m").arg("venv");
        if a.recreate {
            cmd.arg("--clear");
        }
        cmd.arg(&venv);
        println!(
            "+ {} -m venv{} {}",
            a.python,
            if a.recreate { " --clear" } else { "" },
            venv.display()
        );
        let status = cmd
            .stdin(Stdio::null())
            .status()
            .await
            .map_err(|e| start_error(&a.python, &e))?;
        if !status.success() {
            return Err(CtlError::new(
                exit::ERROR,
                format!(
                    "creating the venv {} with {} failed ({status}); the venv module or ensurepip is missing: \
                     on Debian/Ubuntu `apt install python3-venv`, on Fedora/RHEL `dnf install python3`",
                    venv.display(),
                    a.python
                ),
            ));
        }
        println!("created venv {} (Python {version})", venv.display());
    } else {
        println!(
            "venv {} exists (pass --recreate to start it afresh)",
            venv.display()
        );
    }

    let mut pip: Vec<String> = vec![
        "-m".into(),
        "pip".into(),
        "install".into(),
        "--disable-pip-version-check".into(),
        "--no-input".into(),
    ];
    if let Some(dir) = &a.wheel_dir {
        pip.extend([
            "--no-index".into(),
            "--find-links".into(),
            absolute(dir).display().to_string(),
        ]);
    }
    if a.upgrade {
        pip.push("--upgrade".into());
    }
    pip.push(a.pyoco.clone());
    for r in &a.requirements {
        pip.extend(["--requirement".into(), absolute(r).display().to_string()]);
    }
    pip.extend(a.packages.iter().cloned());
    println!("+ {} {}", venv_python.display(), pip.join(" "));
    let status = tokio::process::Command::new(&venv_python)
        .args(&pip)
        .env("PIP_DISABLE_PIP_VERSION_CHECK", "1")
        .stdin(Stdio::null())
        .status()
        .await
        .map_err(|e| start_error(&venv_python.display().to_string(), &e))?;
    if !status.success() {
        let hint = if a.wheel_dir.is_some() {
            "the wheel directory must hold every package and dependency for this Python \
             (on a machine with the same Python version: pip download pyoco YOUR-PACKAGES -d DIR)"
        } else {
            "without network access, install offline: pip download pyoco -d DIR elsewhere, copy DIR here, \
             then pyococtl runtime setup --wheel-dir DIR"
        };
        return Err(CtlError::new(
            exit::ERROR,
            format!(
                "pip install into {} failed ({status}); {hint}",
                venv.display()
            ),
        ));
    }
    // Whatever the caller's umask was, the workers' user must be able to read the venv.
    if let Err(e) = readable_by_all(&venv) {
        return Err(CtlError::new(
            exit::ERROR,
            format!(
                "cannot make {} readable for the workers: {e}",
                venv.display()
            ),
        ));
    }
    // Flows may name callables only of recorded task packages (the callable policy).
    let (recorded, unresolved) =
        record::record(&venv, &venv_python, &a.packages, &a.requirements).await?;
    if !recorded.is_empty() {
        println!(
            "recorded task packages in {}: {} (flows may name their callables)",
            venv.join(record::TASK_PACKAGES_FILE).display(),
            recorded.join(", ")
        );
    }
    for arg in &unresolved {
        eprintln!(
            "warning: cannot tell which installed distribution {arg:?} is, so flows cannot name its \
             callables yet; fix: add its distribution name to {} or its module to PYOCO_CALLABLE_ALLOW",
            venv.join(record::TASK_PACKAGES_FILE).display()
        );
    }
    println!(
        "installed {}{}",
        a.pyoco,
        if a.packages.is_empty() && a.requirements.is_empty() {
            String::new()
        } else {
            " and your packages".into()
        }
    );

    if a.no_check {
        return Ok(exit::OK);
    }
    let report = check(&venv_python, &[], &[]).await?;
    print_report(ctx, &report);
    if report.ok {
        println!("next: restart running workers to use it: systemctl restart 'pyoco-worker@*'");
        Ok(exit::OK)
    } else {
        Ok(exit::ERROR)
    }
}

/// `X.Y.Z` of an interpreter, refusing anything older than 3.11 (the runner shim's floor).
async fn python_version(python: &str) -> CtlResult<String> {
    let out = tokio::process::Command::new(python)
        .args(["-c", "import sys; print('%d.%d.%d' % sys.version_info[:3]); sys.exit(0 if sys.version_info >= (3, 11) else 3)"])
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| start_error(python, &e))?;
    let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
    match out.status.code() {
        Some(0) => Ok(version),
        Some(3) => Err(CtlError::new(
            exit::ERROR,
            format!("{python} is Python {version}; the workers need Python 3.11 or later: pass --python python3.11 (or newer)"),
        )),
        _ => Err(CtlError::new(exit::ERROR, format!("{python} does not run: {}", String::from_utf8_lossy(&out.stderr).trim()))),
    }
}

fn start_error(program: &str, e: &std::io::Error) -> CtlError {
    let hint = if e.kind() == std::io::ErrorKind::NotFound {
        "; install Python 3 (Debian/Ubuntu: apt install python3 python3-venv) or pass --python PATH"
    } else {
        ""
    };
    CtlError::new(exit::ERROR, format!("cannot run {program}: {e}{hint}"))
}

/// `chmod -R a+rX DIR` without following symlinks.
fn readable_by_all(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let meta = std::fs::symlink_metadata(dir)?;
    if meta.file_type().is_symlink() {
        return Ok(());
    }
    let mode = meta.permissions().mode();
    let want = if meta.is_dir() || mode & 0o111 != 0 {
        mode | 0o555
    } else {
        mode | 0o444
    };
    if want != mode {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(want))?;
    }
    if meta.is_dir() {
        for entry in std::fs::read_dir(dir)? {
            readable_by_all(&entry?.path())?;
        }
    }
    Ok(())
}

fn absolute(p: &Path) -> PathBuf {
    crate::ops::absolute(p)
}

// ---------------------------------------------------------------------------------------------
// check

/// What `check` found.
#[derive(Debug, Default)]
pub struct Report {
    pub ok: bool,
    pub python_path: String,
    pub python_executable: String,
    pub python_version: String,
    pub pyoco_version: String,
    pub protocol: Option<i64>,
    /// The user the interpreter ran as, when not the caller.
    pub as_user: Option<String>,
    /// (module, error or None)
    pub imports: Vec<(String, Option<String>)>,
    /// Why the runtime cannot run flows, with the fix.
    pub problem: Option<String>,
}

/// The workers' user (uid, gid, home) when we are root and it exists: the interpreter then runs
/// as that user, as under `pyoco-worker@.service`.
fn worker_identity() -> Option<(u32, u32, String)> {
    // /proc/self belongs to the effective user.
    use std::os::unix::fs::MetadataExt as _;
    if std::fs::metadata("/proc/self").map(|m| m.uid()).ok()? != 0 {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 6 && f[0] == WORKER_USER)
            .then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?, f[5].to_string())))?
    })
}

/// A private directory for the shim, readable by the workers' user.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> std::io::Result<TempDir> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir =
            std::env::temp_dir().join(format!("pyococtl-runtime-{}-{nanos}", std::process::id()));
        std::fs::create_dir(&dir)?;
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
        Ok(TempDir(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn interpreter(
    python: &Path,
    pythonpath: &[PathBuf],
    cwd: &Path,
    who: &Option<(u32, u32, String)>,
) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(python);
    if !pythonpath.is_empty() {
        let joined: Vec<String> = pythonpath
            .iter()
            .map(|p| absolute(p).display().to_string())
            .collect();
        cmd.env("PYTHONPATH", joined.join(":"));
    } else {
        cmd.env_remove("PYTHONPATH");
    }
    cmd.env("PYTHONUNBUFFERED", "1")
        .env("PYTHONUTF8", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .current_dir(cwd)
        .kill_on_drop(true);
    if let Some((uid, gid, home)) = who {
        cmd.uid(*uid).gid(*gid).env("HOME", home);
    }
    cmd
}

/// Starts the worker's runner shim with `python` (stdin closed: it says `ready` or `fatal`,
/// then exits) and imports the requested modules.
pub async fn check(python: &Path, pythonpath: &[PathBuf], imports: &[String]) -> CtlResult<Report> {
    let mut report = Report {
        python_path: python.display().to_string(),
        ..Default::default()
    };
    if !python.exists() {
        report.problem = Some(format!(
            "no Python interpreter at {}; create the workers' runtime: pyococtl runtime setup \
             (offline: pyococtl runtime setup --wheel-dir DIR)",
            python.display()
        ));
        return Ok(report);
    }
    let who = worker_identity();
    report.as_user = who.as_ref().map(|_| WORKER_USER.to_string());
    let dir = TempDir::new().map_err(|e| {
        CtlError::new(
            exit::ERROR,
            format!("cannot create a temporary directory: {e}"),
        )
    })?;
    let shim = dir.0.join("pyoco_runner.py");
    std::fs::write(&shim, SHIM_SOURCE)
        .map_err(|e| CtlError::new(exit::ERROR, format!("cannot write {}: {e}", shim.display())))?;

    let mut child = interpreter(python, pythonpath, &dir.0, &who)
        .arg(&shim)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| start_error(&python.display().to_string(), &e))?;
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let collected = tokio::time::timeout(Duration::from_secs(60), async {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let _ = tokio::join!(stdout.read_to_end(&mut out), stderr.read_to_end(&mut err));
        let status = child.wait().await;
        (out, err, status)
    })
    .await;
    let Ok((out, err, status)) = collected else {
        report.problem = Some(format!(
            "{} did not start the runner within 60 s",
            python.display()
        ));
        return Ok(report);
    };
    let first: Option<Value> = String::from_utf8_lossy(&out)
        .lines()
        .find_map(|l| serde_json::from_str(l).ok());
    match first.as_ref().and_then(|m| m["type"].as_str()) {
        Some("ready") => {
            let m = first.as_ref().expect("matched");
            report.python_version = m["python"].as_str().unwrap_or("?").to_string();
            report.python_executable = m["python_executable"].as_str().unwrap_or("?").to_string();
            report.pyoco_version = m["pyoco_version"].as_str().unwrap_or("?").to_string();
            report.protocol = m["protocol"].as_i64();
        }
        Some("fatal") => {
            let m = first.as_ref().expect("matched");
            report.problem = Some(format!(
                "{}: {}; fix: pyococtl runtime setup (it installs {PYOCO_REQUIREMENT} into the venv)",
                m["kind"].as_str().unwrap_or("fatal"),
                m["message"].as_str().unwrap_or("")
            ));
            return Ok(report);
        }
        _ => {
            let err = String::from_utf8_lossy(&err);
            let tail: Vec<&str> = err
                .lines()
                .rev()
                .take(5)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            let status = status.map(|s| s.to_string()).unwrap_or_default();
            let denied = if err.contains("Permission denied") && who.is_some() {
                format!(
                    "; the venv must be readable by the user {WORKER_USER} (chmod -R a+rX {})",
                    python
                        .parent()
                        .and_then(Path::parent)
                        .unwrap_or(python)
                        .display()
                )
            } else {
                String::new()
            };
            report.problem = Some(format!(
                "{} cannot start the runner ({status}): {}{denied}; fix: pyococtl runtime setup --recreate",
                python.display(),
                tail.join(" | ")
            ));
            return Ok(report);
        }
    }

    for module in imports {
        let out = interpreter(python, pythonpath, &dir.0, &who)
            .args([
                "-c",
                "import importlib, sys; importlib.import_module(sys.argv[1])",
                module,
            ])
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|e| start_error(&python.display().to_string(), &e))?;
        let error = (!out.status.success()).then(|| {
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("import failed")
                .trim()
                .to_string()
        });
        report.imports.push((module.clone(), error));
    }
    let failed: Vec<&str> = report
        .imports
        .iter()
        .filter(|(_, e)| e.is_some())
        .map(|(m, _)| m.as_str())
        .collect();
    if !failed.is_empty() {
        report.problem = Some(format!(
            "cannot import {}; put the task modules on the workers' PYTHONPATH (PYOCO_WORKER_PYTHONPATH, \
             /var/lib/pyoco/flows for the packaged units) or install them: pyococtl runtime setup YOUR-PACKAGE",
            failed.join(", ")
        ));
    }
    report.ok = report.problem.is_none();
    Ok(report)
}

fn print_report(ctx: &Ctx, r: &Report) {
    if ctx.output(OutputFormat::Table) == OutputFormat::Json {
        let imports: serde_json::Map<String, Value> = r
            .imports
            .iter()
            .map(|(m, e)| (m.clone(), e.as_ref().map_or(json!("ok"), |e| json!(e))))
            .collect();
        let doc = json!({
            "ok": r.ok,
            "python": r.python_path,
            "python_executable": r.python_executable,
            "python_version": r.python_version,
            "pyoco_version": r.pyoco_version,
            "runner_protocol": r.protocol,
            "as_user": r.as_user,
            "imports": imports,
            "problem": r.problem,
        });
        println!("{doc}");
        return;
    }
    if !r.python_version.is_empty() {
        println!("python   {} ({})", r.python_version, r.python_executable);
        println!("pyoco    {}", r.pyoco_version);
        let user = r
            .as_user
            .as_ref()
            .map(|u| format!(", as user {u}"))
            .unwrap_or_default();
        println!(
            "runner   ready (protocol {}{user})",
            r.protocol
                .map(|p| p.to_string())
                .unwrap_or_else(|| "?".into())
        );
    }
    for (m, e) in &r.imports {
        match e {
            None => println!("import   {m}: ok"),
            Some(e) => println!("import   {m}: {e}"),
        }
    }
    match &r.problem {
        None => println!("ok: pyoco-worker can run flows with {}", r.python_path),
        Some(p) => eprintln!("not usable: {p}"),
    }
}
