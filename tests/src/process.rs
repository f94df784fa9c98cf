//! Managed child processes ("daemons") and one-shot command runs.

use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, killpg, Signal};
use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::dirs::TestDir;

type SpawnRequest = (Command, mpsc::Sender<std::io::Result<Child>>);

/// Children are spawned from one long-lived thread so that `PR_SET_PDEATHSIG` (which fires when
/// the *spawning thread* exits) only fires when the whole test process dies — e.g. when
/// `cargo test` is interrupted, daemons in their own process groups would otherwise survive.
fn spawner() -> &'static Mutex<mpsc::Sender<SpawnRequest>> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("pyoco-tests-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("spawn the spawner thread");
        Mutex::new(tx)
    })
}

/// Adds `PR_SET_PDEATHSIG(SIGKILL)` to a command (the child dies with the test process).
pub(crate) fn die_with_parent(cmd: &mut Command) {
    let parent = std::process::id() as i32;
    // SAFETY: prctl/getppid/kill are async-signal-safe; no allocation happens in the closure.
    unsafe {
        cmd.pre_exec(move || {
            let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
            if nix::unistd::getppid().as_raw() != parent {
                // The test process already died between fork and prctl.
                let _ = kill(nix::unistd::getpid(), Signal::SIGKILL);
            }
            Ok(())
        });
    }
}

fn spawn_via_spawner(cmd: Command) -> std::io::Result<Child> {
    let (tx, rx) = mpsc::channel();
    spawner()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send((cmd, tx))
        .expect("spawner thread alive");
    rx.recv().expect("spawner thread replied")
}

/// Removes inherited `PYOCO_*` variables (except the harness's own `PYOCO_TEST_*`) so that the
/// developer's shell settings never leak into a daemon under test.
pub fn scrub_pyoco_env(cmd: &mut Command) {
    for (k, _) in std::env::vars_os() {
        if let Some(k) = k.to_str() {
            if k.starts_with("PYOCO_") && !k.starts_with("PYOCO_TEST_") {
                cmd.env_remove(k);
            }
        }
    }
}

/// Last `max_lines` lines (at most `max_bytes` bytes) of a file.
pub fn tail_of_file(path: &Path, max_lines: usize, max_bytes: u64) -> String {
    let Ok(mut f) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(max_bytes);
    let _ = f.seek(SeekFrom::Start(start));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(max_lines);
    lines[from..].join("\n")
}

/// A managed child process: own process group, stdout+stderr appended to a log file, killed with
/// its whole process group on drop (SIGTERM, up to 5 s, then SIGKILL). If the test is panicking,
/// the tail of the log is printed on drop (set `PYOCO_TEST_SHOW_LOGS=1` to always print it).
pub struct Daemon {
    name: String,
    child: Child,
    pid: Pid,
    log_path: PathBuf,
    exit: Option<ExitStatus>,
    dir: Option<TestDir>,
}

impl Daemon {
    /// Spawns `cmd` with its own temp dir: the log is `<dir>/<name>.log`, and, unless the command
    /// already has a current dir, the CWD is `<dir>/cwd` (empty).
    pub fn spawn(name: &str, mut cmd: Command) -> Daemon {
        let dir = TestDir::new(name);
        if cmd.get_current_dir().is_none() {
            cmd.current_dir(dir.subdir("cwd"));
        }
        let log = dir.join(format!("{}.log", sanitize(name)));
        let mut d = Daemon::spawn_logged(name, cmd, &log);
        d.dir = Some(dir);
        d
    }

    /// Spawns `cmd`, appending its stdout+stderr to `log_path` (created if missing).
    pub fn spawn_logged(name: &str, mut cmd: Command, log_path: &Path) -> Daemon {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path)
            .unwrap_or_else(|e| panic!("open log {}: {e}", log_path.display()));
        let log2 = log.try_clone().expect("clone log fd");
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2))
            .process_group(0);
        die_with_parent(&mut cmd);
        let program = cmd.get_program().to_string_lossy().into_owned();
        let child =
            spawn_via_spawner(cmd).unwrap_or_else(|e| panic!("spawn {name} ({program}): {e}"));
        let pid = Pid::from_raw(child.id() as i32);
        Daemon {
            name: name.to_string(),
            child,
            pid,
            log_path: log_path.to_path_buf(),
            exit: None,
            dir: None,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The pid of the process (also its process-group id).
    pub fn pid(&self) -> u32 {
        self.pid.as_raw() as u32
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The daemon's own temp dir (log file, `cwd/`), if it was spawned with [`Daemon::spawn`].
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_ref().map(|d| d.path())
    }

    /// Everything the process printed so far (stdout and stderr interleaved).
    pub fn log_text(&self) -> String {
        std::fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail_of_file(&self.log_path, lines, 64 * 1024)
    }

    /// Waits until the log contains `needle`; false on timeout.
    pub async fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.log_text().contains(needle) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends `sig` to the process (not its group). No-op once the process was reaped.
    pub fn signal(&self, sig: Signal) {
        if self.exit.is_none() {
            let _ = kill(self.pid, sig);
        }
    }

    /// Sends `sig` to the whole process group. No-op once the process was reaped.
    pub fn signal_group(&self, sig: Signal) {
        if self.exit.is_none() {
            let _ = killpg(self.pid, sig);
        }
    }

    /// Non-blocking: the exit status if the process has exited. When the leader has exited, any
    /// processes left in its group are SIGKILLed before it is reaped (a daemon's group never
    /// outlives it, and the pgid cannot be reused while the zombie exists).
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exit.is_some() {
            return self.exit;
        }
        let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
        match waitid(Id::Pid(self.pid), flags) {
            Ok(WaitStatus::StillAlive) => None,
            Ok(_) | Err(_) => {
                let _ = killpg(self.pid, Signal::SIGKILL);
                match self.child.try_wait() {
                    Ok(Some(st)) => {
                        self.exit = Some(st);
                        self.exit
                    }
                    Ok(None) => None,
                    Err(e) => panic!("wait for {}: {e}", self.name),
                }
            }
        }
    }

    /// True while the process has not exited.
    pub fn is_running(&mut self) -> bool {
        self.try_exit().is_none()
    }

    /// Waits (asynchronously) up to `timeout` for the process to exit.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.try_exit() {
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGTERM to the process group, wait up to `grace`, then SIGKILL. Returns the exit status.
    pub async fn stop(&mut self, grace: Duration) -> ExitStatus {
        self.signal_group(Signal::SIGTERM);
        if let Some(st) = self.wait_exit(grace).await {
            return st;
        }
        self.kill()
    }

    /// SIGKILL to the process group (a crash), then reap. Blocking, but SIGKILL is immediate.
    pub fn kill(&mut self) -> ExitStatus {
        self.signal_group(Signal::SIGKILL);
        self.blocking_wait(Duration::from_secs(10))
            .unwrap_or_else(|| panic!("{} did not die after SIGKILL", self.name))
    }

    fn blocking_wait(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.try_exit() {
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Panics with the log tail unless the process is still running.
    pub fn assert_running(&mut self) {
        if let Some(st) = self.try_exit() {
            panic!(
                "{} exited unexpectedly ({st}); log tail:\n{}",
                self.name,
                self.log_tail(80)
            );
        }
    }

    fn print_tail(&self, why: &str) {
        eprintln!(
            "----- [pyoco-tests] {} (pid {}) log tail ({why}): {} -----\n{}\n----- end of {} -----",
            self.name,
            self.pid,
            self.log_path.display(),
            self.log_tail(60),
            self.name
        );
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.exit.is_none() {
            self.signal_group(Signal::SIGTERM);
            if self.blocking_wait(Duration::from_secs(5)).is_none() {
                self.signal_group(Signal::SIGKILL);
                let _ = self.blocking_wait(Duration::from_secs(5));
            }
        }
        let always = std::env::var("PYOCO_TEST_SHOW_LOGS")
            .map(|v| v == "1")
            .unwrap_or(false);
        if std::thread::panicking() {
            self.print_tail("test panicked");
        } else if always {
            self.print_tail("PYOCO_TEST_SHOW_LOGS=1");
        }
    }
}

fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Runs a command to completion (asynchronously) with a timeout; the child is killed if the
/// timeout elapses (then this panics). stdin is null.
pub async fn run_command(mut cmd: tokio::process::Command, timeout: Duration) -> Output {
    cmd.stdin(Stdio::null()).kill_on_drop(true);
    let program = format!("{:?}", cmd.as_std());
    match tokio::time::timeout(timeout, cmd.output()).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => panic!("run {program}: {e}"),
        Err(_) => panic!("{program} did not finish within {timeout:?}"),
    }
}

/// Convenience accessors for a finished command's [`Output`].
pub trait OutputExt {
    fn stdout_text(&self) -> String;
    fn stderr_text(&self) -> String;
    /// stdout parsed as JSON (panics with stdout/stderr if it is not JSON).
    fn stdout_json(&self) -> serde_json::Value;
    /// Panics with stdout/stderr unless the exit status is 0; returns self.
    fn assert_success(&self) -> &Self;
    /// Exit code (None if killed by a signal).
    fn code(&self) -> Option<i32>;
}

impl OutputExt for Output {
    fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
    fn stdout_json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}); status {}\nstdout:\n{}\nstderr:\n{}",
                self.status,
                self.stdout_text(),
                self.stderr_text()
            )
        })
    }
    fn assert_success(&self) -> &Self {
        if !self.status.success() {
            panic!(
                "command failed: {}\nstdout:\n{}\nstderr:\n{}",
                self.status,
                self.stdout_text(),
                self.stderr_text()
            );
        }
        self
    }
    fn code(&self) -> Option<i32> {
        self.status.code()
    }
}
