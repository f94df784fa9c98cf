//! The Python runner processes: one per concurrency slot, each running one flow at a time.
//!
//! The shim (`runner/pyoco_runner.py`) is compiled into this binary and written out at start.
//! Each runner gets its own process group (so a kill takes its task subprocesses too), its own
//! working directory (pyoco creates `./artifacts`), and dies with the worker (`PDEATHSIG`).
//! Requests go as JSON lines on its stdin; events come back on its stdout, which the shim
//! reserves for the protocol (task output goes to stderr, which is forwarded to our log).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::resource::{getrlimit, setrlimit, Resource};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

use pyoco_core::io::{read_bounded, Bounded};

use crate::protocol::{Event, Request, PROTOCOL};
use crate::text::truncate;

/// The shim, shipped inside the binary.
pub const SHIM_SOURCE: &str = include_str!("../runner/pyoco_runner.py");
pub const SHIM_FILE: &str = "pyoco_runner.py";
/// Stand-in modules put at the end of the runners' `sys.path` (`runner/compat/`): the
/// original's example tasks, so its quickstart flow runs on a runtime without the original.
const COMPAT_FILES: &[(&str, &str)] = &[
    (
        "pyoco_server/__init__.py",
        include_str!("../runner/compat/pyoco_server/__init__.py"),
    ),
    (
        "pyoco_server/_workflow_test_tasks.py",
        include_str!("../runner/compat/pyoco_server/_workflow_test_tasks.py"),
    ),
];

/// How to start runners (shared by all slots).
#[derive(Debug, Clone)]
pub struct RunnerSpec {
    pub python: PathBuf,
    /// The directory holding only the shim (so nothing else lands on `sys.path[0]`).
    pub shim_dir: PathBuf,
    /// Stand-in packages appended to the runners' `sys.path` (see `COMPAT_FILES`).
    pub compat_dir: Option<PathBuf>,
    pub flow_resolver: Option<String>,
    /// `PYOCO_CALLABLE_ALLOW` as parsed (`--callable-allow`); empty = the default rule.
    pub callable_allow: String,
    /// Prepended to the runners' `PYTHONPATH`; what lies under these (and an inherited `PYTHONPATH`)
    /// is task code the callable policy allows.
    pub pythonpath: Vec<PathBuf>,
    /// Parent of the per-slot working directories.
    pub work_dir: PathBuf,
    pub ready_timeout: Duration,
    /// RLIMIT_AS of each runner (and the task subprocesses it starts); `None` = inherited.
    pub memory_max: Option<u64>,
    /// Wheel sync: the current wheel set goes on a new runner's `PYTHONPATH` (after `pythonpath`).
    pub wheels: Option<Arc<crate::wheels::ActiveSets>>,
}

/// Writes the shim into `<work_dir>/runner/` (a directory with nothing else in it) and the
/// stand-in packages into `<work_dir>/compat/`; returns both directories.
pub fn install_shim(work_dir: &Path) -> std::io::Result<(PathBuf, PathBuf)> {
    let dir = work_dir.join("runner");
    write_if_changed(&dir.join(SHIM_FILE), SHIM_SOURCE)?;
    let compat = work_dir.join("compat");
    for (rel, text) in COMPAT_FILES {
        write_if_changed(&compat.join(rel), text)?;
    }
    Ok((dir, compat))
}

/// Replaces `path` atomically when its content differs (runners of another worker on the same
/// work directory may be reading it).
fn write_if_changed(path: &Path, text: &str) -> std::io::Result<()> {
    if std::fs::read_to_string(path).ok().as_deref() == Some(text) {
        return Ok(());
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

/// What the runner reported in its `ready` handshake.
#[derive(Debug, Clone)]
pub struct ReadyInfo {
    pub pid: u32,
    pub python: String,
    pub pyoco_version: String,
}

#[derive(Debug)]
pub enum RunnerEvent {
    /// One protocol message.
    Message(Event),
    /// The process ended (EOF on its stdout).
    Exited,
}

#[derive(Debug)]
pub enum SpawnError {
    /// The interpreter could not be started at all.
    Start(String),
    /// The shim said it cannot work (`fatal`: pyoco missing or too old, bad resolver).
    Fatal { kind: String, message: String },
    /// No `ready` in time, or the process died first.
    NotReady(String),
}

impl std::fmt::Display for SpawnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SpawnError::Start(m) | SpawnError::NotReady(m) => f.write_str(m),
            SpawnError::Fatal { kind, message } => write!(f, "{kind}: {message}"),
        }
    }
}

/// The run id a runner is working on, for tagging its stderr lines in our log.
pub type CurrentRun = Arc<Mutex<Option<String>>>;

pub struct Runner {
    pub slot: usize,
    pub info: ReadyInfo,
    child: Child,
    stdin: ChildStdin,
    events: mpsc::Receiver<RunnerEvent>,
    pub current: CurrentRun,
    /// The wheel set this runner imports from (fixed for its life).
    pub wheel_dir: Option<PathBuf>,
}

impl Runner {
    /// Starts a runner and waits for its `ready` handshake.
    pub async fn spawn(spec: &RunnerSpec, slot: usize) -> Result<Runner, SpawnError> {
        let cwd = spec.work_dir.join(format!("slot-{slot}"));
        std::fs::create_dir_all(&cwd)
            .map_err(|e| SpawnError::Start(format!("cannot create {}: {e}", cwd.display())))?;
        let mut cmd = Command::new(&spec.python);
        cmd.arg(spec.shim_dir.join(SHIM_FILE));
        if let Some(r) = &spec.flow_resolver {
            cmd.args(["--flow-resolver", r]);
        }
        if let Some(dir) = &spec.compat_dir {
            cmd.arg("--compat-path").arg(dir);
        }
        if !spec.callable_allow.is_empty() {
            cmd.arg("--callable-allow").arg(&spec.callable_allow);
        }
        let mut pythonpath: Vec<String> = spec
            .pythonpath
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        let wheel_dir = spec.wheels.as_ref().and_then(|w| w.current());
        if let Some(w) = &spec.wheels {
            // Claimed before the interpreter starts, so the set cannot be deleted under it (the
            // slot's previous runner is gone by now).
            w.runner_started(slot, wheel_dir.clone());
        }
        if let Some(dir) = &wheel_dir {
            pythonpath.push(dir.display().to_string());
        }
        if let Ok(existing) = std::env::var("PYTHONPATH") {
            if !existing.is_empty() {
                pythonpath.push(existing);
            }
        }
        if !pythonpath.is_empty() {
            cmd.env("PYTHONPATH", pythonpath.join(":"));
        }
        cmd.env("PYTHONUNBUFFERED", "1")
            .env("PYTHONUTF8", "1")
            .current_dir(&cwd)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let memory_max = spec.memory_max;
        // SAFETY: only async-signal-safe calls (plain syscalls) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)?;
                if let Some(bytes) = memory_max {
                    // Hard = soft, so task code cannot lift it; never above an inherited hard
                    // limit (raising that would fail with EPERM and the runner not start).
                    let (_, hard) = getrlimit(Resource::RLIMIT_AS).map_err(std::io::Error::from)?;
                    let limit = bytes.min(hard);
                    setrlimit(Resource::RLIMIT_AS, limit, limit).map_err(std::io::Error::from)?;
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|e| {
            SpawnError::Start(format!(
                "cannot start the runner interpreter {}: {e}; fix: install Python 3 with pyoco, or point --python / PYOCO_PYTHON at one",
                spec.python.display()
            ))
        })?;
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let current: CurrentRun = Arc::default();
        let (tx, mut events) = mpsc::channel(256);
        let pgid = child.id().map(|p| Pid::from_raw(p as i32));
        tokio::spawn(read_protocol(stdout, tx, pgid));
        tokio::spawn(forward_stderr(stderr, slot, current.clone()));

        let ready = tokio::time::timeout(spec.ready_timeout, events.recv()).await;
        let info = match ready {
            Err(_) => return Err(SpawnError::NotReady(format!("no ready message within {:?}", spec.ready_timeout))),
            Ok(None) | Ok(Some(RunnerEvent::Exited)) => {
                let status = child.wait().await.map(|s| s.to_string()).unwrap_or_default();
                return Err(SpawnError::NotReady(format!("the runner exited before it was ready ({status}); see the runner's stderr in this log")));
            }
            Ok(Some(RunnerEvent::Message(m))) => match m {
                Event::Ready { protocol, .. } if protocol != Some(PROTOCOL) => {
                    return Err(SpawnError::NotReady(format!(
                        "the runner speaks protocol {} but this worker needs {PROTOCOL}; the shim and the binary do not match",
                        protocol.map(|p| p.to_string()).unwrap_or_else(|| "null".into())
                    )))
                }
                Event::Ready { pid, python, pyoco_version, .. } => ReadyInfo {
                    pid,
                    python: python.unwrap_or_else(|| "?".into()),
                    pyoco_version: pyoco_version.unwrap_or_else(|| "?".into()),
                },
                Event::Fatal { kind, message } => {
                    return Err(SpawnError::Fatal {
                        kind: kind.unwrap_or_else(|| "fatal".into()),
                        message: message.unwrap_or_default(),
                    })
                }
                other => return Err(SpawnError::NotReady(format!("unexpected first message from the runner: {other:?}"))),
            },
        };
        Ok(Runner {
            slot,
            info,
            child,
            stdin,
            events,
            current,
            wheel_dir,
        })
    }

    pub async fn send(&mut self, msg: &Request) -> std::io::Result<()> {
        self.stdin.write_all(&msg.to_line()).await?;
        self.stdin.flush().await
    }

    /// The next event; `Exited` once the process is gone (and forever after).
    pub async fn next_event(&mut self) -> RunnerEvent {
        match self.events.recv().await {
            Some(e) => e,
            None => RunnerEvent::Exited,
        }
    }

    pub async fn exit_text(&mut self) -> String {
        match tokio::time::timeout(Duration::from_secs(2), self.child.wait()).await {
            Ok(Ok(status)) => describe_exit(status),
            _ => "exit status unknown".to_string(),
        }
    }

    /// Kills the runner's whole process group: SIGTERM, then SIGKILL after `grace`.
    pub async fn kill(&mut self, grace: Duration) {
        let Some(pid) = self.child.id() else { return };
        let pgid = Pid::from_raw(pid as i32);
        let _ = killpg(pgid, Signal::SIGTERM);
        if tokio::time::timeout(grace, self.child.wait())
            .await
            .is_err()
        {
            let _ = killpg(pgid, Signal::SIGKILL);
            let _ = self.child.wait().await;
        }
        // Anything the tasks left in the group.
        let _ = killpg(pgid, Signal::SIGKILL);
    }

    /// Asks the runner to exit after its current run (EOF means the same).
    pub async fn shutdown(mut self, wait: Duration) {
        let _ = self.send(&Request::Shutdown).await;
        if tokio::time::timeout(wait, self.child.wait()).await.is_err() {
            self.kill(Duration::from_secs(1)).await;
        }
    }
}

fn describe_exit(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(s)) => format!(
            "killed by signal {}",
            Signal::try_from(s)
                .map(|s| s.as_str().to_string())
                .unwrap_or_else(|_| s.to_string())
        ),
        _ => status.to_string(),
    }
}

/// Longest protocol line accepted from a runner. The shim bounds what it sends (outputs are cut to
/// the snapshot limits, log lines to 16 KiB); a longer line means a broken runner, and reading it
/// whole could take the daemon's memory — and every other run's — with it.
pub const MAX_PROTOCOL_LINE: usize = 16 * 1024 * 1024;
/// Runner stderr is forwarded in lines of at most this many bytes (longer ones in pieces).
pub const MAX_STDERR_LINE: usize = 16 * 1024;

async fn read_protocol(
    stdout: tokio::process::ChildStdout,
    tx: mpsc::Sender<RunnerEvent>,
    pgid: Option<Pid>,
) {
    let mut reader = BufReader::new(stdout);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match read_bounded(&mut reader, &mut buf, MAX_PROTOCOL_LINE).await {
            Ok(Bounded::Line) => {
                let line = String::from_utf8_lossy(&buf);
                let line = line.trim();
                if line.is_empty() {
                    continue;
                }
                match Event::from_line(line) {
                    Ok(ev) => {
                        if tx.send(RunnerEvent::Message(ev)).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(line = %truncate(line, 300), reason = %e.0, "runner wrote a non-protocol line on its protocol channel; ignored")
                    }
                }
            }
            Ok(Bounded::Cut) => {
                // Its run cannot be finished from a message we refuse to read: the runner is
                // killed, and its run ends as for any runner that died.
                tracing::error!(
                    err_id = "ERR-PYOCO-0007",
                    limit_bytes = MAX_PROTOCOL_LINE,
                    "runner sent a protocol message longer than the limit; killing it"
                );
                if let Some(pgid) = pgid {
                    let _ = killpg(pgid, Signal::SIGKILL);
                }
                let _ = tx.send(RunnerEvent::Exited).await;
                return;
            }
            Ok(Bounded::Eof) | Err(_) => {
                let _ = tx.send(RunnerEvent::Exited).await;
                return;
            }
        }
    }
}

async fn forward_stderr(stderr: tokio::process::ChildStderr, slot: usize, current: CurrentRun) {
    // Bytes, not lines of UTF-8: a task printing invalid UTF-8 must not stop the forwarding
    // (the pipe would fill and block the runner).
    let mut reader = BufReader::new(stderr);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match read_bounded(&mut reader, &mut buf, MAX_STDERR_LINE).await {
            Ok(Bounded::Eof) | Err(_) => return,
            Ok(Bounded::Line | Bounded::Cut) => {
                let line = String::from_utf8_lossy(&buf);
                let line = line.trim_end_matches(['\n', '\r']);
                let run_id = current.lock().unwrap().clone().unwrap_or_default();
                tracing::info!(run_id = %run_id, runner_slot = slot, stream = "stderr", "{}", line);
            }
        }
    }
}
