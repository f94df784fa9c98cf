//! `pyoco-worker`: the binary. Flags, configuration, logging, signals and exit codes; the
//! worker itself is the library (`pyoco_worker::run`).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use clap::Parser;
use pyoco_core::config::{self, LoadOptions, Loaded};
use pyoco_worker::{WorkerError, WorkerSettings};
use tokio_util::sync::CancellationToken;

#[derive(Parser, Clone, Default)]
#[command(
    name = "pyoco-worker",
    version,
    about = "Runs pyoco flows from NATS JetStream (pyoco-server worker, Rust)",
    after_help = "Examples:\n  pyoco-worker --nats-url nats://127.0.0.1:4222 --tags hello --concurrency 4\n  pyoco-worker --tags gpu,cpu --flow-resolver myflows:resolve --python /opt/venv/bin/python\n\nExit codes: 0 stopped (drained), 1 cannot start (runtime, NATS resources), 2 bad configuration."
)]
struct Cli {
    /// TOML configuration file (default: $PYOCO_CONFIG, else /etc/pyoco/pyoco.toml when present).
    #[arg(long)]
    config: Option<PathBuf>,
    /// NATS server URL [PYOCO_NATS_URL]; shown with its password as `***`.
    #[arg(long)]
    nats_url: Option<String>,
    /// NATS credentials file (.creds: user JWT and seed) [PYOCO_NATS_CREDS_FILE]; other methods: PYOCO_NATS_USER + PYOCO_NATS_PASSWORD_FILE, PYOCO_NATS_TOKEN_FILE, PYOCO_NATS_NKEY_SEED_FILE.
    #[arg(long)]
    nats_creds: Option<String>,
    /// Tags to serve, comma-separated [PYOCO_WORKER_TAGS; default: PYOCO_DEFAULT_TAG].
    #[arg(long)]
    tags: Option<String>,
    /// Worker id [PYOCO_WORKER_ID; default: <hostname>-<tags>].
    #[arg(long)]
    worker_id: Option<String>,
    /// module:function or path/file.py:function returning a pyoco Flow for a flow name.
    #[arg(long)]
    flow_resolver: Option<String>,
    /// Long-poll length of one fetch, seconds.
    #[arg(long)]
    poll_timeout: Option<String>,
    /// Poll once, run what was fetched, exit 0.
    #[arg(long)]
    run_once: bool,
    /// Runs at once (one Python runner each) [PYOCO_WORKER_CONCURRENCY].
    #[arg(long)]
    concurrency: Option<String>,
    /// The runners' Python interpreter [PYOCO_PYTHON].
    #[arg(long)]
    python: Option<String>,
    /// Directory prepended to the runners' PYTHONPATH (repeatable).
    #[arg(long)]
    pythonpath: Vec<String>,
    /// Where the runners' working directories live.
    #[arg(long)]
    work_dir: Option<String>,
    /// On SIGTERM, seconds running runs may take to finish before they are put back.
    #[arg(long)]
    drain_timeout: Option<String>,
    /// Kill and FAIL (error "timeout") runs running longer than this many seconds (0 = never).
    #[arg(long)]
    run_timeout: Option<String>,
    /// Kill a cancelled run still running after this many seconds (default: the cancel grace period).
    #[arg(long)]
    cancel_kill_after: Option<String>,
    /// Address-space limit of each runner in bytes (0 = none); a run over it ends FAILED "resource_limit".
    #[arg(long)]
    runner_memory_max: Option<String>,
    /// Log level: DEBUG, INFO, WARNING, ERROR.
    #[arg(long)]
    log_level: Option<String>,
    /// Install wheels from the wheel store and keep them in sync [PYOCO_WHEEL_SYNC_ENABLED].
    #[arg(long, overrides_with = "no_wheel_sync")]
    wheel_sync: bool,
    /// Do not sync wheels (overrides the configuration).
    #[arg(long, overrides_with = "wheel_sync")]
    no_wheel_sync: bool,
    /// Directory of the synced wheel sets [PYOCO_WHEEL_SYNC_DIR; default .pyoco/wheels].
    #[arg(long)]
    wheel_sync_dir: Option<String>,
    /// Fallback sync interval in seconds; uploads and deletes are picked up at once [PYOCO_WHEEL_SYNC_INTERVAL_SEC].
    #[arg(long)]
    wheel_sync_interval_sec: Option<String>,
    /// Time limit of one wheel-set install, seconds [PYOCO_WHEEL_INSTALL_TIMEOUT_SEC].
    #[arg(long)]
    wheel_install_timeout_sec: Option<String>,
}

impl Cli {
    fn load(&self) -> Result<Loaded, config::ConfigError> {
        let mut flags = Vec::new();
        let mut push = |k: &str, v: &Option<String>| {
            if let Some(v) = v {
                flags.push((k.to_string(), v.clone()));
            }
        };
        push("nats_url", &self.nats_url);
        push("nats_creds_file", &self.nats_creds);
        push("worker_tags", &self.tags);
        push("worker_id", &self.worker_id);
        push("worker_flow_resolver", &self.flow_resolver);
        push("worker_poll_timeout_sec", &self.poll_timeout);
        push("worker_concurrency", &self.concurrency);
        push("python", &self.python);
        push("worker_work_dir", &self.work_dir);
        push("worker_drain_timeout_sec", &self.drain_timeout);
        push("worker_run_timeout_sec", &self.run_timeout);
        push("cancel_kill_after_sec", &self.cancel_kill_after);
        push("worker_runner_memory_max_bytes", &self.runner_memory_max);
        push("log_level", &self.log_level);
        push("wheel_sync_dir", &self.wheel_sync_dir);
        push("wheel_sync_interval_sec", &self.wheel_sync_interval_sec);
        push("wheel_install_timeout_sec", &self.wheel_install_timeout_sec);
        if self.wheel_sync {
            flags.push(("wheel_sync_enabled".into(), "true".into()));
        } else if self.no_wheel_sync {
            flags.push(("wheel_sync_enabled".into(), "false".into()));
        }
        if !self.pythonpath.is_empty() {
            flags.push(("worker_pythonpath".into(), self.pythonpath.join(":")));
        }
        config::load(&LoadOptions {
            config_file: self.config.clone(),
            flags,
            ..LoadOptions::default()
        })
    }
}

/// Prints the error the way the original does and exits with its kind's code.
fn exit_with(e: WorkerError) -> ! {
    eprintln!("[pyoco-worker][ERR-PYOCO-0018] {e}");
    std::process::exit(e.exit_code());
}

fn main() {
    let cli = Cli::parse();
    let loaded = cli
        .load()
        .unwrap_or_else(|e| exit_with(WorkerError::Config(e.to_string())));
    let cfg = loaded.config.clone();
    pyoco_core::logging::init(
        "pyoco-server:worker",
        &cfg.log_level,
        &cfg.log_format,
        cfg.log_utc,
    );
    for w in &loaded.warnings {
        tracing::warn!(err_id = "ERR-PYOCO-0002", "configuration: {w}");
    }
    let settings = WorkerSettings::from_config(cfg, cli.run_once).unwrap_or_else(|e| exit_with(e));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| {
            exit_with(WorkerError::Start(format!(
                "cannot start the async runtime: {e}"
            )))
        });
    let interrupted = Arc::new(AtomicBool::new(false));
    let result = runtime.block_on(async {
        let shutdown = CancellationToken::new();
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|e| WorkerError::Start(format!("cannot handle SIGTERM: {e}")))?;
        let signals = {
            let (shutdown, interrupted) = (shutdown.clone(), interrupted.clone());
            tokio::spawn(async move {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => interrupted.store(true, Ordering::SeqCst),
                }
                shutdown.cancel();
            })
        };
        let result = pyoco_worker::run(settings, shutdown).await;
        signals.abort();
        result
    });
    match result {
        // Ctrl-C in a terminal exits 130 like the original; SIGTERM (systemd) is a clean stop.
        Ok(()) if interrupted.load(Ordering::SeqCst) => std::process::exit(130),
        Ok(()) => std::process::exit(0),
        Err(e) => exit_with(e),
    }
}
