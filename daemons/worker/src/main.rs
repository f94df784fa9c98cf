//! `pyoco-worker`: runs pyoco flows from JetStream through a pool of Python runners.
//!
//! The Rust process owns everything about the queue, state and liveness (fetching, snapshots,
//! heartbeats, in-progress acks, cancel, timeouts, the systemd watchdog); Python runners run user
//! code and nothing else. Compatible with pyoco-server 0.5's worker on the same queues.

mod dlq;
mod fetch;
mod job;
mod registry;
mod runner;
mod snapshot;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use pyoco_core::config::{self, Config, LoadOptions, Loaded};
use pyoco_core::{resources, systemd};
use tokio::time::Instant;

use crate::fetch::{FetchLoop, LoopStatus};
use crate::job::JobCtx;
use crate::registry::Registry;
use crate::runner::{Runner, RunnerSpec};

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
    /// NATS server URL [PYOCO_NATS_URL].
    #[arg(long)]
    nats_url: Option<String>,
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
    /// Log level: DEBUG, INFO, WARNING, ERROR.
    #[arg(long)]
    log_level: Option<String>,
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
        push("log_level", &self.log_level);
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

fn fail(code: i32, msg: impl std::fmt::Display) -> ! {
    eprintln!("[pyoco-worker][ERR-PYOCO-0018] {msg}");
    std::process::exit(code);
}

/// Tags: comma-separated, trimmed, empties dropped, each one subject token.
fn parse_tags(raw: &str, default_tag: &str) -> Result<Vec<String>, String> {
    let mut tags: Vec<String> = raw
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .collect();
    if tags.is_empty() {
        tags.push(default_tag.to_string());
    }
    for t in &tags {
        if !pyoco_core::wire::is_valid_tag(t) {
            return Err(format!("--tags: invalid tag '{t}': a tag is letters, digits, '_' and '-' (one NATS subject token); example: --tags hello,gpu"));
        }
    }
    tags.dedup();
    Ok(tags)
}

fn default_worker_id(tags: &[String]) -> String {
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "worker".into());
    let host: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("{host}-{}", tags.join("-"))
}

fn default_python() -> PathBuf {
    if let Ok(venv) = std::env::var("VIRTUAL_ENV") {
        let p = PathBuf::from(venv).join("bin/python");
        if p.exists() {
            return p;
        }
    }
    PathBuf::from("python3")
}

fn main() {
    let cli = Cli::parse();
    let loaded = cli.load().unwrap_or_else(|e| fail(2, e));
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
    let tags = parse_tags(&cfg.worker_tags, &cfg.default_tag).unwrap_or_else(|e| fail(2, e));
    if cfg.worker_concurrency < 1 || cfg.worker_concurrency > 256 {
        fail(
            2,
            format!(
                "--concurrency {}: must be between 1 and 256; example: --concurrency 4",
                cfg.worker_concurrency
            ),
        );
    }
    let worker_id = if cfg.worker_id.trim().is_empty() {
        default_worker_id(&tags)
    } else {
        cfg.worker_id.trim().to_string()
    };
    if !pyoco_core::wire::is_valid_kv_key(&worker_id) {
        fail(2, format!("--worker-id '{worker_id}': use letters, digits, '-', '_', '.', '=' or '/'; example: --worker-id $(hostname)-hello"));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let code = runtime.block_on(run(cfg, cli.run_once, tags, worker_id));
    std::process::exit(code);
}

async fn run(cfg: Config, run_once: bool, tags: Vec<String>, worker_id: String) -> i32 {
    let work_dir = if !cfg.worker_work_dir.is_empty() {
        PathBuf::from(&cfg.worker_work_dir)
    } else if let Ok(state) = std::env::var("STATE_DIRECTORY") {
        PathBuf::from(state.split(':').next().unwrap_or(".")).join("worker")
    } else {
        PathBuf::from(".pyoco-worker")
    };
    // Absolute, because every runner runs in its own slot directory below it.
    if let Err(e) = std::fs::create_dir_all(&work_dir) {
        fail(1, format!("cannot create the work directory {}: {e}; fix: point --work-dir at a writable directory", work_dir.display()));
    }
    let work_dir = work_dir.canonicalize().unwrap_or(work_dir);
    let (shim_dir, compat_dir) = match runner::install_shim(&work_dir) {
        Ok(d) => d,
        Err(e) => fail(1, format!("cannot write the runner shim under {}: {e}; fix: point --work-dir at a writable directory", work_dir.display())),
    };
    let python = if cfg.python.trim().is_empty() {
        default_python()
    } else {
        PathBuf::from(cfg.python.trim())
    };
    let spec = RunnerSpec {
        python: python.clone(),
        shim_dir,
        compat_dir: Some(compat_dir),
        // Already absolute: the configuration resolves path-valued settings at load.
        flow_resolver: Some(cfg.worker_flow_resolver.trim().to_string()).filter(|s| !s.is_empty()),
        pythonpath: cfg
            .worker_pythonpath
            .split(':')
            .filter(|s| !s.is_empty())
            .map(PathBuf::from)
            .collect(),
        work_dir: work_dir.clone(),
        ready_timeout: Duration::from_secs(60),
    };

    for dir in &spec.pythonpath {
        if !dir.is_dir() {
            tracing::warn!(err_id = "ERR-PYOCO-0002", path = %dir.display(), "--pythonpath / PYOCO_WORKER_PYTHONPATH entry is not a directory; task modules there cannot be imported");
        }
    }
    tracing::info!(python = %python.display(), pythonpath = %cfg.worker_pythonpath, work_dir = %work_dir.display(), flow_resolver = %cfg.worker_flow_resolver, "starting runners");
    // Runners first: a missing or too old pyoco is a start-up error, not a failed run later.
    systemd::notify_status("starting Python runners");
    let mut runners = Vec::new();
    for slot in 0..cfg.worker_concurrency as usize {
        match Runner::spawn(&spec, slot).await {
            Ok(r) => {
                tracing::info!(runner_slot = slot, pid = r.info.pid, python = %r.info.python, pyoco_version = %r.info.pyoco_version, "runner ready");
                runners.push(r);
            }
            Err(e) => {
                tracing::error!(err_id = "ERR-PYOCO-0018", error = %e, "runner failed to start");
                fail(1, format!("the Python runtime at {} cannot run flows: {e}; the packaged workers' runtime is made with `pyococtl runtime setup` (and checked with `pyococtl runtime check`)", python.display()));
            }
        }
    }

    // NATS: retried until reachable (an outage at start is not fatal).
    let client =
        match pyoco_core::nats::connect(&cfg.nats_url, &format!("pyoco-nats-worker:{worker_id}"))
            .await
        {
            Ok(c) => c,
            Err(e) => fail(1, format!("NATS URL {}: {e}", cfg.nats_url)),
        };
    let js = async_nats::jetstream::new(client.clone());
    let mut backoff = Duration::from_millis(200);
    let waited_since = Instant::now();
    let mut next_warning = Duration::from_secs(3);
    let (res, consumers) = loop {
        if pyoco_core::nats::is_connected(&client) {
            match resources::ensure(&js, &cfg).await {
                Ok((res, drift)) => {
                    for d in drift {
                        tracing::warn!(err_id = "ERR-PYOCO-0003", resource = %d.resource, "resource configuration drift: {d}");
                    }
                    match fetch::bind_consumers(&js, &cfg, &tags).await {
                        Ok(c) => break (res, c),
                        Err(e) => {
                            tracing::error!(err_id = "ERR-PYOCO-0003", error = %e, "binding consumers failed; retrying")
                        }
                    }
                }
                Err(e) => {
                    tracing::error!(err_id = "ERR-PYOCO-0003", error = %e, "ensuring resources failed; retrying")
                }
            }
        } else {
            systemd::notify_status(&format!("NATS unreachable at {}, retrying", cfg.nats_url));
            if waited_since.elapsed() >= next_warning {
                tracing::warn!(err_id = "ERR-PYOCO-0003", nats_url = %cfg.nats_url, waited_sec = waited_since.elapsed().as_secs(), "NATS is not reachable yet; retrying. Is nats-server running there? (start one with `pyococtl up`, or `pyoco-server up --with-nats` for a local stack; or point --nats-url / PYOCO_NATS_URL at yours)");
                next_warning = waited_since.elapsed() + Duration::from_secs(10);
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    };

    let registry = Registry::new(res.workers.clone(), &worker_id, &tags, Default::default());
    if let Err(e) = registry.write().await {
        tracing::warn!(worker_id = %worker_id, error = %e, "writing the worker record failed");
    }
    tokio::spawn(registry.clone().writer_loop(Duration::from_secs_f64(
        cfg.worker_heartbeat_interval_sec.max(0.1),
    )));

    let (drain_tx, drain_rx) = tokio::sync::watch::channel::<Option<Instant>>(None);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let cancel_kill_after = if cfg.cancel_kill_after_sec < 0.0 {
        cfg.cancel_grace_period_sec
    } else {
        cfg.cancel_kill_after_sec
    };
    let max_payload = client.server_info().max_payload;
    let ctx = Arc::new(JobCtx {
        res: res.clone(),
        worker_id: worker_id.clone(),
        registry: registry.clone(),
        limits: snapshot::Limits {
            max_snapshot_bytes: cfg.max_run_snapshot_bytes.max(0) as usize,
            max_payload: if max_payload > 0 {
                max_payload
            } else {
                1024 * 1024
            },
        },
        run_timeout: (cfg.worker_run_timeout_sec > 0.0)
            .then(|| Duration::from_secs_f64(cfg.worker_run_timeout_sec)),
        cancel_kill_after: Duration::from_secs_f64(cancel_kill_after.max(0.0)),
        drain: drain_rx,
        cfg: Arc::new(cfg.clone()),
    });
    let (status_tx, status_rx) = tokio::sync::watch::channel(LoopStatus {
        busy: 0,
        runners: runners.len(),
        last_fetch: Instant::now(),
        last_tick: Instant::now(),
    });
    let fetch_loop = FetchLoop {
        ctx,
        consumers,
        tags: tags.clone(),
        spec,
        poll_timeout: Duration::from_secs_f64(cfg.worker_poll_timeout_sec.max(0.05)),
        run_once,
        status: status_tx,
    };
    // Max-deliveries advisories of our consumers: one worker of the group handles each.
    for tag in &tags {
        let subject = format!(
            "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{}.{}",
            res.names.work_stream,
            resources::Names::consumer_name(tag)
        );
        match client
            .queue_subscribe(subject.clone(), "pyoco-max-deliveries".to_string())
            .await
        {
            Ok(mut sub) => {
                let ctx = fetch_loop.ctx.clone();
                tokio::spawn(async move {
                    use futures::StreamExt;
                    while let Some(msg) = sub.next().await {
                        job::on_max_deliveries(&ctx, &msg.payload).await;
                    }
                });
            }
            Err(e) => {
                tracing::warn!(subject = %subject, error = %e, "cannot subscribe to max-deliveries advisories")
            }
        }
    }
    let loop_task = tokio::spawn(fetch_loop.run(runners, stop_rx));
    tokio::spawn(status_and_watchdog(status_rx, tags.join(",")));

    tracing::info!(worker_id = %worker_id, tags = %tags.join(","), concurrency = cfg.worker_concurrency, "worker ready");
    systemd::notify_ready(&format!(
        "tags {} · 0/{} busy",
        tags.join(","),
        cfg.worker_concurrency
    ));

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    let mut loop_task = loop_task;
    let mut interrupted = false;
    tokio::select! {
        _ = &mut loop_task => {}
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => { interrupted = true; }
    }
    if !loop_task.is_finished() {
        let drain = Duration::from_secs_f64(cfg.worker_drain_timeout_sec.max(0.0));
        tracing::info!(worker_id = %worker_id, drain_timeout_sec = drain.as_secs_f64(), "stopping: no new runs; letting running runs finish");
        systemd::notify_stopping(&format!("draining (up to {:.0} s)", drain.as_secs_f64()));
        let _ = drain_tx.send(Some(Instant::now() + drain));
        let _ = stop_tx.send(true);
        let _ = loop_task.await;
    }
    registry.stopped("graceful_shutdown").await;
    tracing::info!(worker_id = %worker_id, "stopped");
    // Ctrl-C in a terminal exits 130 like the original; SIGTERM (systemd) is a clean stop.
    if interrupted {
        130
    } else {
        0
    }
}

/// Keeps `STATUS=` current and pings the watchdog only while the fetch loop is alive.
async fn status_and_watchdog(status: tokio::sync::watch::Receiver<LoopStatus>, tags: String) {
    let watchdog = systemd::watchdog_interval();
    let every = watchdog
        .unwrap_or(Duration::from_secs(1))
        .min(Duration::from_secs(1));
    loop {
        tokio::time::sleep(every).await;
        let s = status.borrow().clone();
        systemd::notify_status(&format!(
            "tags {tags} · {}/{} busy · last fetch {:.1} s ago",
            s.busy,
            s.runners,
            s.last_fetch.elapsed().as_secs_f64()
        ));
        if watchdog.is_some() && s.last_tick.elapsed() < Duration::from_secs(5) {
            systemd::notify_watchdog();
        }
    }
}
