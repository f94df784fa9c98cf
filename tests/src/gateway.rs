//! Gateways and workers: ours (workspace binaries) and the Python original's.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::dirs::TestDir;
use crate::env::{bin_path, orig_bin};
use crate::ports::free_port;
use crate::process::{die_with_parent, run_command, scrub_pyoco_env, Daemon};

/// How long a gateway may take to answer `GET /health`.
pub const GATEWAY_START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a one-shot CLI may run.
pub const CLI_TIMEOUT: Duration = Duration::from_secs(60);

fn apply_env(cmd: &mut Command, defaults: &[(&str, &str)], env: &[(&str, &str)]) {
    scrub_pyoco_env(cmd);
    for (k, v) in defaults {
        cmd.env(k, v);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
}

const PY_DEFAULTS: &[(&str, &str)] = &[
    ("PYOCO_LOAD_DOTENV", "0"),
    ("PYTHONUNBUFFERED", "1"),
    ("PYTHONDONTWRITEBYTECODE", "1"),
];

const RUST_DEFAULTS: &[(&str, &str)] = &[("PYOCO_LOAD_DOTENV", "0"), ("PYOCO_LOG_FORMAT", "json")];

/// Waits until `GET <base_url>/health` answers 200; panics with the daemon's log on timeout or
/// if the process exits.
pub async fn wait_healthy(daemon: &mut Daemon, base_url: &str, timeout: Duration) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .expect("reqwest client");
    let url = format!("{base_url}/health");
    let deadline = Instant::now() + timeout;
    let mut last: String;
    loop {
        if let Some(st) = daemon.try_exit() {
            panic!(
                "{} exited before becoming healthy ({st}); log:\n{}",
                daemon.name(),
                daemon.log_tail(80)
            );
        }
        match http.get(&url).send().await {
            Ok(r) if r.status() == reqwest::StatusCode::OK => return,
            Ok(r) => last = format!("HTTP {}", r.status()),
            Err(e) => last = e.to_string(),
        }
        if Instant::now() >= deadline {
            panic!(
                "{} not healthy at {url} after {timeout:?} (last: {last}); log:\n{}",
                daemon.name(),
                daemon.log_tail(80)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Our gateway

/// Our `pyoco-server` binary, started as
/// `pyoco-server --host 127.0.0.1 --port P --nats-url URL [extra…]` in a temp CWD with
/// `PYOCO_LOAD_DOTENV=0`, `PYOCO_LOG_FORMAT=json` (overridable through `env`).
pub struct Gateway {
    daemon: Daemon,
    port: u16,
    nats_url: String,
}

impl Gateway {
    /// Starts and waits for `GET /health` = 200.
    pub async fn start(nats_url: &str, env: &[(&str, &str)]) -> Gateway {
        Self::start_with_args(nats_url, &[], env).await
    }

    /// Starts with extra CLI arguments and waits for `GET /health` = 200.
    pub async fn start_with_args(nats_url: &str, extra: &[&str], env: &[(&str, &str)]) -> Gateway {
        let mut g = Self::spawn_with_args(nats_url, extra, env);
        g.wait_healthy().await;
        g
    }

    /// Spawns without waiting (for tests of start-up failures); see [`Gateway::wait_healthy`].
    pub fn spawn_with_args(nats_url: &str, extra: &[&str], env: &[(&str, &str)]) -> Gateway {
        Self::spawn_on_port(free_port(), nats_url, extra, env)
    }

    /// Spawns on a given port without waiting (e.g. to restart a gateway on the same address).
    pub fn spawn_on_port(
        port: u16,
        nats_url: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Gateway {
        let mut cmd = Command::new(bin_path("pyoco-server"));
        cmd.args([
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--nats-url",
            nats_url,
        ])
        .args(extra);
        apply_env(&mut cmd, RUST_DEFAULTS, env);
        let daemon = Daemon::spawn(&format!("pyoco-server(rust) :{port}"), cmd);
        Gateway {
            daemon,
            port,
            nats_url: nats_url.to_string(),
        }
    }

    pub async fn wait_healthy(&mut self) {
        let base = self.base_url();
        wait_healthy(&mut self.daemon, &base, GATEWAY_START_TIMEOUT).await;
    }

    /// `/health` answers 200 from the first moment; this waits until it also says NATS is
    /// connected and the resources are ensured (`"nats": "connected"`).
    pub async fn wait_nats_connected(&self) {
        let url = self.url("/health");
        let ok =
            crate::http::wait_until(Duration::from_secs(15), Duration::from_millis(20), || {
                let url = url.clone();
                async move {
                    match crate::http::http().get(&url).send().await {
                        Ok(r) => r
                            .json::<serde_json::Value>()
                            .await
                            .map(|v| v["nats"] == "connected")
                            .unwrap_or(false),
                        Err(_) => false,
                    }
                }
            })
            .await;
        assert!(
            ok,
            "gateway never reported NATS connected; log:\n{}",
            self.log_text()
        );
    }

    /// `http://127.0.0.1:<port>`
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `base_url() + path` (path starts with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url())
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn nats_url(&self) -> &str {
        &self.nats_url
    }

    pub fn daemon(&mut self) -> &mut Daemon {
        &mut self.daemon
    }

    pub fn log_text(&self) -> String {
        self.daemon.log_text()
    }
}

/// Spawns any workspace binary as a [`Daemon`] (temp CWD, scrubbed `PYOCO_*` env,
/// `PYOCO_LOAD_DOTENV=0`, `PYOCO_LOG_FORMAT=json`, then `env`). No readiness wait.
pub fn spawn_workspace_bin(name: &str, args: &[&str], env: &[(&str, &str)]) -> Daemon {
    let mut cmd = Command::new(bin_path(name));
    cmd.args(args);
    apply_env(&mut cmd, RUST_DEFAULTS, env);
    Daemon::spawn(name, cmd)
}

/// Like [`spawn_workspace_bin`], but started in `cwd` (for relative paths on the command line).
pub fn spawn_workspace_bin_in(
    name: &str,
    args: &[&str],
    env: &[(&str, &str)],
    cwd: &std::path::Path,
) -> Daemon {
    let mut cmd = Command::new(bin_path(name));
    cmd.args(args).current_dir(cwd);
    apply_env(&mut cmd, RUST_DEFAULTS, env);
    Daemon::spawn(name, cmd)
}

/// Runs a workspace binary (`pyococtl` …) to completion in a temp CWD (same env rules as
/// [`spawn_workspace_bin`]); panics if it runs longer than [`CLI_TIMEOUT`].
pub async fn run_workspace_bin(name: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    run_cli(bin_path(name), args, RUST_DEFAULTS, env).await
}

async fn run_cli(
    program: PathBuf,
    args: &[&str],
    defaults: &[(&str, &str)],
    env: &[(&str, &str)],
) -> Output {
    let cwd = TestDir::new("cli-cwd");
    let mut std_cmd = Command::new(program);
    std_cmd.args(args).current_dir(cwd.path());
    apply_env(&mut std_cmd, defaults, env);
    die_with_parent(&mut std_cmd);
    let out = run_command(tokio::process::Command::from(std_cmd), CLI_TIMEOUT).await;
    drop(cwd);
    out
}

// ---------------------------------------------------------------------------------------------
// The Python original (pyoco-server 0.5.1 in $PYOCO_TEST_ORIG_VENV)

/// The original gateway: `$ORIG/bin/pyoco-server up --host 127.0.0.1 --port P --nats-url URL`.
pub struct OrigGateway {
    daemon: Daemon,
    port: u16,
    nats_url: String,
}

impl OrigGateway {
    /// Starts and waits for `GET /health` = 200.
    pub async fn start(nats_url: &str, env: &[(&str, &str)]) -> OrigGateway {
        let port = free_port();
        let mut cmd = Command::new(orig_bin("pyoco-server"));
        cmd.args([
            "up",
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--nats-url",
            nats_url,
        ]);
        apply_env(&mut cmd, PY_DEFAULTS, env);
        let mut daemon = Daemon::spawn(&format!("pyoco-server(orig) :{port}"), cmd);
        wait_healthy(
            &mut daemon,
            &format!("http://127.0.0.1:{port}"),
            GATEWAY_START_TIMEOUT,
        )
        .await;
        OrigGateway {
            daemon,
            port,
            nats_url: nats_url.to_string(),
        }
    }

    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url())
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn nats_url(&self) -> &str {
        &self.nats_url
    }

    pub fn daemon(&mut self) -> &mut Daemon {
        &mut self.daemon
    }

    pub fn log_text(&self) -> String {
        self.daemon.log_text()
    }
}

/// Which gateway implementation a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GatewayKind {
    Ours,
    Orig,
}

/// Either gateway, for tests that run the same body against both.
pub enum AnyGateway {
    Ours(Gateway),
    Orig(OrigGateway),
}

impl AnyGateway {
    pub async fn start(kind: GatewayKind, nats_url: &str, env: &[(&str, &str)]) -> AnyGateway {
        match kind {
            GatewayKind::Ours => AnyGateway::Ours(Gateway::start(nats_url, env).await),
            GatewayKind::Orig => AnyGateway::Orig(OrigGateway::start(nats_url, env).await),
        }
    }
    pub fn kind(&self) -> GatewayKind {
        match self {
            AnyGateway::Ours(_) => GatewayKind::Ours,
            AnyGateway::Orig(_) => GatewayKind::Orig,
        }
    }
    pub fn base_url(&self) -> String {
        match self {
            AnyGateway::Ours(g) => g.base_url(),
            AnyGateway::Orig(g) => g.base_url(),
        }
    }
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url())
    }
    pub fn daemon(&mut self) -> &mut Daemon {
        match self {
            AnyGateway::Ours(g) => g.daemon(),
            AnyGateway::Orig(g) => g.daemon(),
        }
    }
    pub fn log_text(&self) -> String {
        match self {
            AnyGateway::Ours(g) => g.log_text(),
            AnyGateway::Orig(g) => g.log_text(),
        }
    }
}

/// The original worker:
/// `$ORIG/bin/pyoco-worker --nats-url URL --tags T --worker-id W [--flow-resolver R]`.
pub struct OrigWorker {
    daemon: Daemon,
    worker_id: String,
    nats_url: String,
    workers_bucket: String,
}

impl OrigWorker {
    /// Spawns the worker and waits (≤ 30 s) until its record appears in the workers KV bucket
    /// (`PYOCO_WORKERS_KV_BUCKET` from `env`, default `pyoco_workers`), i.e. its consumers exist.
    pub async fn start(
        nats_url: &str,
        tags: &str,
        worker_id: &str,
        env: &[(&str, &str)],
        flow_resolver: Option<&str>,
    ) -> OrigWorker {
        let mut w = Self::spawn(nats_url, tags, worker_id, env, flow_resolver, &[]);
        w.wait_registered(Duration::from_secs(30)).await;
        w
    }

    /// Spawns without waiting; `extra` args are appended (e.g. `--wheel-sync`).
    pub fn spawn(
        nats_url: &str,
        tags: &str,
        worker_id: &str,
        env: &[(&str, &str)],
        flow_resolver: Option<&str>,
        extra: &[&str],
    ) -> OrigWorker {
        let mut cmd = Command::new(orig_bin("pyoco-worker"));
        cmd.args([
            "--nats-url",
            nats_url,
            "--tags",
            tags,
            "--worker-id",
            worker_id,
        ]);
        if let Some(r) = flow_resolver {
            cmd.args(["--flow-resolver", r]);
        }
        cmd.args(extra);
        apply_env(&mut cmd, PY_DEFAULTS, env);
        let daemon = Daemon::spawn(&format!("pyoco-worker(orig) {worker_id}"), cmd);
        let workers_bucket = env
            .iter()
            .rev()
            .find(|(k, _)| *k == "PYOCO_WORKERS_KV_BUCKET")
            .map(|(_, v)| v.to_string())
            .unwrap_or_else(|| "pyoco_workers".to_string());
        OrigWorker {
            daemon,
            worker_id: worker_id.to_string(),
            nats_url: nats_url.to_string(),
            workers_bucket,
        }
    }

    /// Waits until the worker's registry record exists; panics with the log otherwise.
    pub async fn wait_registered(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let client = crate::nats_connect(&self.nats_url).await;
        let js = async_nats::jetstream::new(client);
        loop {
            if let Some(st) = self.daemon.try_exit() {
                panic!(
                    "original worker {} exited during startup ({st}); log:\n{}",
                    self.worker_id,
                    self.daemon.log_tail(80)
                );
            }
            if let Ok(kv) = js.get_key_value(&self.workers_bucket).await {
                if let Ok(Some(_)) = kv.get(&self.worker_id).await {
                    return;
                }
            }
            if Instant::now() >= deadline {
                panic!(
                    "original worker {} not registered in KV {} after {timeout:?}; log:\n{}",
                    self.worker_id,
                    self.workers_bucket,
                    self.daemon.log_tail(80)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn worker_id(&self) -> &str {
        &self.worker_id
    }

    /// SIGINT: the only signal on which the original closes gracefully (record → STOPPED_GRACEFUL).
    pub fn interrupt(&self) {
        self.daemon.signal(nix::sys::signal::Signal::SIGINT);
    }

    pub fn daemon(&mut self) -> &mut Daemon {
        &mut self.daemon
    }

    pub fn log_text(&self) -> String {
        self.daemon.log_text()
    }
}

/// `$ORIG/bin/pyoco-client --server <server_url> <args…>` (global flags such as `--api-key` must
/// come first in `args`, before the subcommand). Temp CWD, `PYOCO_LOAD_DOTENV=0`.
pub async fn orig_client(server_url: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut all = vec!["--server", server_url];
    all.extend_from_slice(args);
    run_cli(orig_bin("pyoco-client"), &all, PY_DEFAULTS, env).await
}

/// `$ORIG/bin/pyoco-server-admin --nats-url <nats_url> <args…>`.
pub async fn orig_admin(nats_url: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut all = vec!["--nats-url", nats_url];
    all.extend_from_slice(args);
    run_cli(orig_bin("pyoco-server-admin"), &all, PY_DEFAULTS, env).await
}

/// Runs any program from the original venv (`python`, `pip`, …) with the Python env rules.
pub async fn orig_venv_run(program: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    run_cli(orig_bin(program), args, PY_DEFAULTS, env).await
}

/// Runs an arbitrary program with the Python env rules (e.g. `$PYOCO_TEST_PY311`).
pub async fn run_python_program(program: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    run_cli(program.to_path_buf(), args, PY_DEFAULTS, env).await
}
