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
    let create = a.recreate || !venv_python.exists();
    refuse_untrusted_inputs(a, &venv, create)?;

    if create {
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
    // pip, site-packages and their .pth files run as root from here on.
    refuse_untrusted_exec(&venv_python.display().to_string())
        .map_err(|m| CtlError::new(exit::ERROR, m))?;
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
    // Whatever the caller's umask was, the workers' user must be able to read the venv, and
    // only its owner write it.
    if let Err(e) = normalise_modes(&venv) {
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

/// Run as root, `setup` executes the interpreter that makes the venv, then the venv's own
/// Python and pip, and installs what the wheel directory and requirement files name: none of
/// them may be writable by a user other than root or the caller.
fn refuse_untrusted_inputs(a: &SetupArgs, venv: &Path, create: bool) -> CtlResult<()> {
    if effective_uid() != Some(0) {
        return Ok(());
    }
    let refuse = |what: String, u: Untrusted| {
        CtlError::new(
            exit::ERROR,
            format!(
                "refusing to use {what} as root: {u}, so a user other than root (such as the \
                 workers' user {WORKER_USER}) could change what root installs or runs; fix: \
                 chown root:root {p} && chmod go-w {p}, or pass a directory only root can write",
                p = u.path.display()
            ),
        )
    };
    if create {
        refuse_untrusted_exec(&a.python).map_err(|m| CtlError::new(exit::ERROR, m))?;
        // A new venv: where it goes must be root's, or it could be swapped under pip.
        let existing = if a.recreate && venv.exists() {
            check_path(venv, false)
        } else {
            check_path(venv, true)
        };
        existing.map_err(|u| refuse(format!("--venv {}", venv.display()), u))?;
    }
    let owners = trusted_owners();
    if let Some(dir) = &a.wheel_dir {
        let dir = absolute(dir);
        check_path_with(&dir, false, &owners)
            .and_then(|()| check_tree_with(&dir, &owners, &mut 1_000_000))
            .map_err(|u| refuse(format!("--wheel-dir {}", dir.display()), u))?;
    }
    for r in &a.requirements {
        let r = absolute(r);
        check_path_with(&r, false, &owners)
            .map_err(|u| refuse(format!("--requirement {}", r.display()), u))?;
    }
    Ok(())
}

/// `chmod -R a+rX,go-w DIR` without following symlinks.
fn normalise_modes(dir: &Path) -> std::io::Result<()> {
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
    } & !0o022;
    if want != mode {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(want))?;
    }
    if meta.is_dir() {
        for entry in std::fs::read_dir(dir)? {
            normalise_modes(&entry?.path())?;
        }
    }
    Ok(())
}

fn absolute(p: &Path) -> PathBuf {
    crate::ops::absolute(p)
}

// ---------------------------------------------------------------------------------------------
// What root may execute

/// The system user of `pyoco-nats.service`: like the workers' user, never trusted by root.
const NATS_USER: &str = "pyoco-nats";

/// A file or directory that someone other than root (or the caller) could change: root must
/// not execute what lies beneath it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Untrusted {
    /// The path whose owner or mode is wrong.
    pub path: PathBuf,
    /// Why, e.g. "owned by pyoco (uid 998)" or "writable by its group (mode 0775)".
    pub reason: String,
}

impl std::fmt::Display for Untrusted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} is {}", self.path.display(), self.reason)
    }
}

/// The effective uid, read from `/proc/self` (it belongs to the effective user).
fn effective_uid() -> Option<u32> {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata("/proc/self").map(|m| m.uid()).ok()
}

/// `name`'s uid in /etc/passwd.
fn passwd_uid(name: &str) -> Option<u32> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 3 && f[0] == name).then(|| f[2].parse().ok())?
    })
}

fn user_name(uid: u32) -> Option<String> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 3 && f[2].parse() == Ok(uid)).then(|| f[0].to_string())
    })
}

/// Who may own what root executes: root, the caller and, under sudo, the user who ran sudo —
/// never the daemons' users (what they can write is what an attacker in a task can write).
fn trusted_owners() -> Vec<u32> {
    let mut owners = vec![0];
    if let Some(uid) = effective_uid() {
        owners.push(uid);
    }
    if let Some(uid) = std::env::var("SUDO_UID")
        .ok()
        .and_then(|v| v.trim().parse::<u32>().ok())
    {
        owners.push(uid);
    }
    let daemons: Vec<u32> = [WORKER_USER, NATS_USER]
        .iter()
        .filter_map(|u| passwd_uid(u))
        .collect();
    owners.retain(|o| *o == 0 || !daemons.contains(o));
    owners
}

/// The owner and mode of one file or directory are safe: a trusted owner, and no group or
/// world write bit (a sticky directory such as /tmp may be world-writable: there only an
/// entry's owner can replace it, and the entry is checked next).
fn check_node(path: &Path, meta: &std::fs::Metadata, owners: &[u32]) -> Result<(), Untrusted> {
    use std::os::unix::fs::MetadataExt as _;
    let untrusted = |reason: String| Untrusted {
        path: path.to_path_buf(),
        reason,
    };
    if !owners.contains(&meta.uid()) {
        let who = user_name(meta.uid()).unwrap_or_else(|| "another user".into());
        return Err(untrusted(format!("owned by {who} (uid {})", meta.uid())));
    }
    let mode = meta.mode() & 0o7777;
    let sticky_dir = meta.is_dir() && mode & 0o1000 != 0;
    if mode & 0o022 != 0 && !sticky_dir {
        let by = if mode & 0o002 != 0 {
            "everyone"
        } else {
            "its group"
        };
        return Err(untrusted(format!("writable by {by} (mode {mode:04o})")));
    }
    Ok(())
}

/// Checks `path` the way the kernel reaches it: every directory a name is looked up in, every
/// symlink's target (in turn), and the file itself. `allow_missing`: a path that does not
/// exist yet (a venv to create) is fine once its existing ancestors are.
pub fn check_path(path: &Path, allow_missing: bool) -> Result<(), Untrusted> {
    check_path_with(path, allow_missing, &trusted_owners())
}

fn check_path_with(path: &Path, allow_missing: bool, owners: &[u32]) -> Result<(), Untrusted> {
    use std::collections::VecDeque;
    use std::path::Component;
    let io_error = |p: &Path, e: std::io::Error| Untrusted {
        path: p.to_path_buf(),
        reason: format!("not checkable ({e})"),
    };
    let path = absolute(path);
    let root = PathBuf::from("/");
    let meta = std::fs::metadata(&root).map_err(|e| io_error(&root, e))?;
    check_node(&root, &meta, owners)?;
    // Owned components (None = the root), so a symlink's target can be spliced in.
    let owned = |p: &Path| -> Vec<Option<std::ffi::OsString>> {
        p.components()
            .filter_map(|c| match c {
                Component::RootDir | Component::Prefix(_) => Some(None),
                Component::CurDir => None,
                Component::ParentDir => Some(Some("..".into())),
                Component::Normal(n) => Some(Some(n.to_os_string())),
            })
            .collect()
    };
    let mut pending: VecDeque<Option<std::ffi::OsString>> = owned(&path).into();
    let mut cur = root.clone();
    let mut links = 0;
    while let Some(c) = pending.pop_front() {
        let Some(name) = c else {
            cur = root.clone();
            continue;
        };
        if name == ".." {
            cur.pop();
            continue;
        }
        let next = cur.join(&name);
        let meta = match std::fs::symlink_metadata(&next) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && allow_missing => return Ok(()),
            Err(e) => return Err(io_error(&next, e)),
        };
        if meta.file_type().is_symlink() {
            // Only the directory holding a link can change it, and it was checked.
            links += 1;
            if links > 40 {
                return Err(io_error(
                    &next,
                    std::io::Error::other("too many levels of symbolic links"),
                ));
            }
            let target = std::fs::read_link(&next).map_err(|e| io_error(&next, e))?;
            for t in owned(&target).into_iter().rev() {
                pending.push_front(t);
            }
            continue;
        }
        check_node(&next, &meta, owners)?;
        cur = next;
    }
    Ok(())
}

/// Every file and directory of a tree (a venv: its interpreter, pip, site-packages and their
/// `.pth` files all run as root) passes [`check_node`]; symlinks are followed with [`check_path`].
fn check_tree_with(dir: &Path, owners: &[u32], budget: &mut usize) -> Result<(), Untrusted> {
    let entries = std::fs::read_dir(dir).map_err(|e| Untrusted {
        path: dir.to_path_buf(),
        reason: format!("not checkable ({e})"),
    })?;
    for entry in entries {
        let entry = entry.map_err(|e| Untrusted {
            path: dir.to_path_buf(),
            reason: format!("not checkable ({e})"),
        })?;
        let p = entry.path();
        let meta = std::fs::symlink_metadata(&p).map_err(|e| Untrusted {
            path: p.clone(),
            reason: format!("not checkable ({e})"),
        })?;
        *budget = budget.saturating_sub(1);
        if *budget == 0 {
            return Err(Untrusted {
                path: dir.to_path_buf(),
                reason: "too large to check (over 1 000 000 entries)".into(),
            });
        }
        if meta.file_type().is_symlink() {
            check_path_with(&p, true, owners)?;
        } else {
            check_node(&p, &meta, owners)?;
            if meta.is_dir() {
                check_tree_with(&p, owners, budget)?;
            }
        }
    }
    Ok(())
}

/// The venv that holds `python` (`VENV/bin/python` with a `VENV/pyvenv.cfg`), if any.
fn venv_of(python: &Path) -> Option<PathBuf> {
    let venv = absolute(python).parent()?.parent()?.to_path_buf();
    venv.join("pyvenv.cfg").is_file().then_some(venv)
}

/// A `PROGRAM` without a slash, as `execvp` finds it on PATH.
fn on_path(program: &str) -> Option<PathBuf> {
    if program.contains('/') {
        return Some(PathBuf::from(program));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// Refuses, when we are root, to execute `program` (a path, or a name looked up on PATH) if a
/// user other than root or the caller — the workers' user `pyoco` above all — could have
/// written it, a directory above it, or, for a venv's interpreter, anything in that venv.
/// `Ok` when not root (nothing to escalate to). The error names the path, why, and the fix.
/// `pyococtl doctor` calls this before running the workers' Python.
pub fn refuse_untrusted_exec(program: &str) -> Result<(), String> {
    if effective_uid() != Some(0) {
        return Ok(());
    }
    let Some(path) = on_path(program) else {
        return Ok(()); // not found: executing it fails on its own
    };
    let owners = trusted_owners();
    let venv = venv_of(&path);
    let found = check_path_with(&path, false, &owners).err().or_else(|| {
        venv.as_ref().and_then(|v| {
            check_path_with(v, false, &owners)
                .and_then(|()| check_tree_with(v, &owners, &mut 1_000_000))
                .err()
        })
    });
    match found {
        None => Ok(()),
        Some(u) => Err(untrusted_message(program, &u, venv.as_deref())),
    }
}

fn untrusted_message(program: &str, u: &Untrusted, venv: Option<&Path>) -> String {
    let p = u.path.display();
    let fix = match venv {
        Some(v) if u.path.starts_with(v) => format!(
            "make a fresh venv owned by root: rm -rf {v} && pyococtl runtime setup --venv {v} \
             (only if you changed it yourself: chown -R root:root {v} && chmod -R go-w {v})",
            v = v.display()
        ),
        Some(v) if v.starts_with(&u.path) => format!(
            "chown root:root {p} && chmod go-w {p}; the venv below it may have been replaced \
             meanwhile, so make it afresh: rm -rf {v} && pyococtl runtime setup --venv {v}",
            v = v.display()
        ),
        _ => format!("chown root:root {p} && chmod go-w {p}"),
    };
    format!(
        "refusing to run {program} as root: {u}, so a user other than root (such as the \
         workers' user {WORKER_USER}) could have replaced what root would execute; fix: {fix}"
    )
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
    if effective_uid()? != 0 {
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
    if who.is_none() {
        // Root without the workers' user runs the interpreter itself.
        if let Err(m) = refuse_untrusted_exec(&python.display().to_string()) {
            report.problem = Some(m);
            return Ok(report);
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt as _};

    /// A scratch directory under the system temp dir (sticky, root's: a trusted parent).
    struct Scratch(PathBuf);
    impl Scratch {
        fn new(name: &str) -> Scratch {
            let dir =
                std::env::temp_dir().join(format!("pyococtl-trust-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir(&dir).unwrap();
            chmod(&dir, 0o755);
            Scratch(dir)
        }
    }
    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    fn chmod(p: &Path, mode: u32) {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    fn me() -> Vec<u32> {
        vec![0, effective_uid().unwrap()]
    }
    fn file(p: &Path) {
        std::fs::write(p, "#!/bin/sh\n").unwrap();
        chmod(p, 0o755);
    }

    #[test]
    fn a_trusted_chain_passes_and_missing_tails_are_allowed_on_request() {
        let s = Scratch::new("ok");
        let bin = s.0.join("bin");
        std::fs::create_dir(&bin).unwrap();
        chmod(&bin, 0o755);
        file(&bin.join("python"));
        assert_eq!(check_path_with(&bin.join("python"), false, &me()), Ok(()));
        assert_eq!(check_path_with(&s.0.join("new/venv"), true, &me()), Ok(()));
        let err = check_path_with(&s.0.join("new/venv"), false, &me()).unwrap_err();
        assert_eq!(err.path, s.0.join("new"));
    }

    #[test]
    fn a_group_writable_directory_on_the_way_is_named() {
        let s = Scratch::new("gw");
        let venv = s.0.join("venv");
        std::fs::create_dir_all(venv.join("bin")).unwrap();
        chmod(&venv, 0o775);
        chmod(&venv.join("bin"), 0o755);
        file(&venv.join("bin/python"));
        let err = check_path_with(&venv.join("bin/python"), false, &me()).unwrap_err();
        assert_eq!(err.path, venv);
        assert_eq!(err.reason, "writable by its group (mode 0775)");
        // A world-writable file is refused too; a sticky world-writable directory is not.
        chmod(&venv, 0o755);
        chmod(&venv.join("bin/python"), 0o757);
        let err = check_path_with(&venv.join("bin/python"), false, &me()).unwrap_err();
        assert_eq!(err.reason, "writable by everyone (mode 0757)");
        chmod(&venv.join("bin/python"), 0o755);
        chmod(&venv.join("bin"), 0o1777);
        assert_eq!(
            check_path_with(&venv.join("bin/python"), false, &me()),
            Ok(())
        );
    }

    #[test]
    fn an_owner_outside_the_trusted_set_is_refused() {
        let s = Scratch::new("owner");
        file(&s.0.join("python"));
        // Trust only uid 0 and a uid nobody has: our own files are then "another user's".
        let owners = if effective_uid() == Some(0) {
            vec![4_000_000]
        } else {
            vec![0]
        };
        let err = check_path_with(&s.0.join("python"), false, &owners).unwrap_err();
        assert!(err.reason.starts_with("owned by "), "{err}");
    }

    #[test]
    fn symlinks_are_followed_through_untrusted_targets() {
        let s = Scratch::new("link");
        let evil = s.0.join("evil");
        std::fs::create_dir(&evil).unwrap();
        chmod(&evil, 0o777);
        file(&evil.join("python3"));
        let bin = s.0.join("bin");
        std::fs::create_dir(&bin).unwrap();
        chmod(&bin, 0o755);
        // bin/python -> python3 -> ../evil/python3: two hops, the second into a 0777 directory.
        symlink("python3", bin.join("python")).unwrap();
        symlink("../evil/python3", bin.join("python3")).unwrap();
        let err = check_path_with(&bin.join("python"), false, &me()).unwrap_err();
        assert_eq!(err.path, evil);
        // A loop ends with an error, not a hang.
        symlink("loop", s.0.join("loop")).unwrap();
        let err = check_path_with(&s.0.join("loop"), false, &me()).unwrap_err();
        assert!(err.reason.contains("symbolic links"), "{err}");
    }

    #[test]
    fn a_venv_tree_with_one_writable_file_deep_inside_is_refused() {
        let s = Scratch::new("tree");
        let venv = s.0.join("venv");
        let site = venv.join("lib/python3.11/site-packages");
        std::fs::create_dir_all(&site).unwrap();
        for d in [
            &venv,
            &venv.join("lib"),
            &venv.join("lib/python3.11"),
            &site,
        ] {
            chmod(d, 0o755);
        }
        std::fs::write(site.join("ok.py"), "").unwrap();
        chmod(&site.join("ok.py"), 0o644);
        assert_eq!(check_tree_with(&venv, &me(), &mut 1000), Ok(()));
        std::fs::write(site.join("evil.pth"), "import os").unwrap();
        chmod(&site.join("evil.pth"), 0o664);
        let err = check_tree_with(&venv, &me(), &mut 1000).unwrap_err();
        assert_eq!(err.path, site.join("evil.pth"));
        // normalise_modes (what setup runs after pip) makes it safe again.
        normalise_modes(&venv).unwrap();
        assert_eq!(check_tree_with(&venv, &me(), &mut 1000), Ok(()));
    }

    #[test]
    fn the_refusal_names_the_path_the_reason_and_the_fix() {
        let v = Path::new("/var/lib/pyoco/venv");
        let above = Untrusted {
            path: "/var/lib/pyoco".into(),
            reason: "owned by pyoco (uid 998)".into(),
        };
        let m = untrusted_message("/var/lib/pyoco/venv/bin/python", &above, Some(v));
        assert!(m.starts_with("refusing to run /var/lib/pyoco/venv/bin/python as root: /var/lib/pyoco is owned by pyoco (uid 998)"), "{m}");
        assert!(
            m.contains("chown root:root /var/lib/pyoco && chmod go-w /var/lib/pyoco"),
            "{m}"
        );
        assert!(
            m.contains("rm -rf /var/lib/pyoco/venv && pyococtl runtime setup"),
            "{m}"
        );
        let inside = Untrusted {
            path: "/var/lib/pyoco/venv/bin".into(),
            reason: "writable by its group (mode 0775)".into(),
        };
        let m = untrusted_message("/var/lib/pyoco/venv/bin/python", &inside, Some(v));
        assert!(
            m.contains("fix: make a fresh venv owned by root: rm -rf /var/lib/pyoco/venv"),
            "{m}"
        );
    }
}
