//! `pyoco-server`: the HTTP gateway of pyoco-server, in Rust.
//!
//! A drop-in replacement for pyoco-server 0.5's gateway (same HTTP API, JetStream resources and
//! documents), built as a systemd-native daemon: socket activation, `Type=notify` readiness and
//! status, watchdog, journald logging, graceful shutdown on SIGTERM.

mod app;
mod auth;
mod devstack;
mod error;
mod index;
mod metrics;
mod metrics_route;
mod params;
mod retention;
mod runs;
mod sse;
mod workers;

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use pyoco_core::config::{self, LoadOptions, Loaded};
use pyoco_core::{resources, systemd};
use tokio_util::sync::CancellationToken;

use crate::app::AppState;
use crate::auth::Auth;
use crate::index::{follow_bucket, RunIndex, WorkerIndex};
use crate::metrics::Metrics;

#[derive(Parser)]
#[command(
    name = "pyoco-server",
    version,
    about = "The pyoco-server HTTP gateway (Rust)",
    args_conflicts_with_subcommands = true,
    after_help = "Examples:\n  pyoco-server --nats-url nats://127.0.0.1:4222 --port 8000\n  pyoco-server config          # effective configuration and where each value came from"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the HTTP API (the default; `up` is the original's name for it).
    #[command(visible_alias = "up")]
    Serve(ServeArgs),
    /// Print the effective configuration and the source of every value.
    Config(ServeArgs),
}

#[derive(Args, Clone, Default)]
struct ServeArgs {
    /// TOML configuration file (default: $PYOCO_CONFIG, else /etc/pyoco/pyoco.toml when present).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Address to bind when no socket is passed by systemd [PYOCO_HTTP_HOST].
    #[arg(long)]
    host: Option<String>,
    /// Port to bind when no socket is passed by systemd [PYOCO_HTTP_PORT].
    #[arg(long)]
    port: Option<String>,
    /// NATS server URL [PYOCO_NATS_URL].
    #[arg(long)]
    nats_url: Option<String>,
    /// Log level: DEBUG, INFO, WARNING, ERROR [PYOCO_LOG_LEVEL].
    #[arg(long)]
    log_level: Option<String>,
    /// Log format when not under journald: json or text [PYOCO_LOG_FORMAT].
    #[arg(long)]
    log_format: Option<String>,
    /// `none` or `api_key` [PYOCO_HTTP_AUTH_MODE].
    #[arg(long)]
    auth_mode: Option<String>,
    /// Dashboard language auto|ja|en [PYOCO_DASHBOARD_LANG] (accepted for compatibility).
    #[arg(long)]
    dashboard_lang: Option<String>,
    #[command(flatten)]
    dev: devstack::DevStackArgs,
}

impl ServeArgs {
    fn load(&self) -> Result<Loaded, config::ConfigError> {
        let mut flags = Vec::new();
        let mut push = |k: &str, v: &Option<String>| {
            if let Some(v) = v {
                flags.push((k.to_string(), v.clone()));
            }
        };
        push("http_host", &self.host);
        push("http_port", &self.port);
        push("nats_url", &self.nats_url);
        push("log_level", &self.log_level);
        push("log_format", &self.log_format);
        push("http_auth_mode", &self.auth_mode);
        push("dashboard_lang", &self.dashboard_lang);
        config::load(&LoadOptions {
            config_file: self.config.clone(),
            flags,
            ..LoadOptions::default()
        })
    }
}

fn main() {
    let cli = Cli::parse();
    let (args, print_config) = match cli.command {
        None => (cli.serve, false),
        Some(Command::Serve(a)) => (a, false),
        Some(Command::Config(a)) => (a, true),
    };
    let loaded = match args.load() {
        Ok(l) => l,
        Err(e) => {
            eprintln!("[pyoco-server][ERR-PYOCO-0018] {e}");
            std::process::exit(2);
        }
    };
    if print_config {
        print_effective_config(&loaded);
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Err(e) = runtime.block_on(serve_with_stack(loaded, args.dev)) {
        eprintln!("[pyoco-server][ERR-PYOCO-0018] {e:#}");
        std::process::exit(1);
    }
}

fn print_effective_config(loaded: &Loaded) {
    let rows = loaded.describe();
    let w = rows.iter().map(|r| r.key.len()).max().unwrap_or(10);
    let wv = rows
        .iter()
        .map(|r| r.value.len())
        .max()
        .unwrap_or(10)
        .min(40);
    for r in rows {
        println!("{:w$}  {:wv$}  {} ({})", r.key, r.value, r.source, r.env);
    }
    for warning in &loaded.warnings {
        println!("warning: {warning}");
    }
}

/// Binds the HTTP socket: systemd's (socket activation) or our own.
async fn bind_listener(cfg: &config::Config) -> anyhow::Result<tokio::net::TcpListener> {
    if let Some(l) = systemd::inherited_listener("http")? {
        return Ok(tokio::net::TcpListener::from_std(l)?);
    }
    let addr = format!("{}:{}", cfg.http_host, cfg.http_port);
    tokio::net::TcpListener::bind(&addr).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot listen on {addr}: {e}; fix: choose a free --port or stop what uses it"
        )
    })
}

/// The gateway alone: serve until SIGTERM / Ctrl-C.
async fn serve_until_signal(loaded: Loaded) -> anyhow::Result<()> {
    init_logging(&loaded);
    let listener = bind_listener(&loaded.config).await?;
    let shutdown = CancellationToken::new();
    tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            shutdown_signal().await;
            shutdown.cancel();
        }
    });
    serve(loaded, listener, shutdown, None).await
}

/// `up --with-nats/--with-worker`: a supervised local stack. Start order NATS → gateway →
/// worker, stop order the reverse; a part that dies stops the rest and `up` exits non-zero.
async fn serve_with_stack(
    mut loaded: Loaded,
    mut dev: devstack::DevStackArgs,
) -> anyhow::Result<()> {
    if !dev.with_nats && !dev.with_worker {
        return serve_until_signal(loaded).await;
    }
    init_logging(&loaded);
    let cwd = std::env::current_dir()?;
    dev.resolve_paths(&cwd);
    loaded.config.nats_url = devstack::DevStack::nats_url(&dev, &loaded.config.nats_url)?;
    // The HTTP port first: a busy port fails before anything was started.
    let listener = bind_listener(&loaded.config).await?;
    let mut stack = devstack::DevStack::start_nats(&dev).await?;
    let nats_url = loaded.config.nats_url.clone();

    let shutdown = CancellationToken::new();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let mut gateway = tokio::spawn(serve(loaded, listener, shutdown.clone(), Some(ready_tx)));
    let mut signal = Box::pin(shutdown_signal());

    // The worker once the gateway has ensured the resources (bounded by its ready timeout).
    let started = tokio::select! {
        _ = ready_rx => stack.start_worker(&dev, &nats_url),
        r = &mut gateway => {
            stack.stop().await;
            return gateway_result(r);
        }
        _ = &mut signal => Ok(()),
    };
    let reason = match started {
        Err(e) => {
            shutdown.cancel();
            let _ = tokio::time::timeout(GATEWAY_STOP, &mut gateway).await;
            stack.stop().await;
            return Err(e);
        }
        Ok(()) if shutdown.is_cancelled() => devstack::StopReason::Signal,
        Ok(()) => tokio::select! {
            _ = &mut signal => devstack::StopReason::Signal,
            reason = stack.watch() => reason,
            r = &mut gateway => {
                stack.stop().await;
                return gateway_result(r).and_then(|_| Err(anyhow::anyhow!("the gateway stopped on its own")));
            }
        },
    };
    // Reverse order: the worker drains and writes its final record while NATS is still up.
    stack.stop_worker().await;
    shutdown.cancel();
    let gateway_outcome = match tokio::time::timeout(GATEWAY_STOP, &mut gateway).await {
        Ok(r) => gateway_result(r),
        Err(_) => {
            gateway.abort();
            Ok(())
        }
    };
    stack.stop().await;
    match reason {
        devstack::StopReason::Signal => gateway_outcome,
        devstack::StopReason::ChildDied {
            name,
            status,
            last_lines,
        } => Err(anyhow::anyhow!(
            "{name} exited unexpectedly ({status}); stopped the rest of the stack. Its last lines:\n{last_lines}"
        )),
    }
}

/// How long the gateway may take to close its connections when the stack stops.
const GATEWAY_STOP: Duration = Duration::from_secs(2);

fn gateway_result(r: Result<anyhow::Result<()>, tokio::task::JoinError>) -> anyhow::Result<()> {
    match r {
        Ok(r) => r,
        Err(e) => Err(anyhow::anyhow!("the gateway task failed: {e}")),
    }
}

fn init_logging(loaded: &Loaded) {
    let cfg = &loaded.config;
    pyoco_core::logging::init(
        "pyoco-server:http",
        &cfg.log_level,
        &cfg.log_format,
        cfg.log_utc,
    );
    for warning in &loaded.warnings {
        tracing::warn!(err_id = "ERR-PYOCO-0002", "configuration: {warning}");
    }
}

/// Serves the HTTP API on `listener` until `shutdown` is cancelled. `on_ready` is told once
/// the resources are ensured (or the ready timeout passed).
async fn serve(
    loaded: Loaded,
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
    on_ready: Option<tokio::sync::oneshot::Sender<bool>>,
) -> anyhow::Result<()> {
    let cfg = loaded.config.clone();
    let local = listener.local_addr()?;

    let client = pyoco_core::nats::connect(&cfg.nats_url, "pyoco-http-api").await?;
    let metrics = Arc::new(Metrics::default());
    let state = Arc::new(AppState {
        auth: Arc::new(Auth::new(
            cfg.api_key_auth(),
            &cfg.http_api_key_header,
            cfg.auth_pepper.clone(),
            cfg.auth_cache_ttl_sec,
        )),
        runs: RunIndex::new(metrics.clone()),
        workers: Arc::new(WorkerIndex::default()),
        metrics,
        resources: RwLock::new(None),
        ready: tokio::sync::watch::channel(false).0,
        started: std::time::Instant::now(),
        shutdown: shutdown.clone(),
        client,
        cfg,
    });

    tokio::spawn(supervise_nats(state.clone(), local.to_string()));
    tokio::spawn(retention::run(state.clone()));
    if let Some(every) = systemd::watchdog_interval() {
        tokio::spawn(async move {
            loop {
                systemd::notify_watchdog();
                tokio::time::sleep(every).await;
            }
        });
    }

    tracing::info!(address = %local, "listening");
    // READY=1 once NATS and the resources are there (bounded): a unit ordered after this one
    // starts against a gateway that can serve it.
    {
        let state = state.clone();
        tokio::spawn(async move {
            let ready = state.wait_ready_at_start().await;
            let nats = if ready {
                "NATS connected".to_string()
            } else {
                tracing::warn!(err_id = "ERR-PYOCO-0003", nats_url = %state.cfg.nats_url, ready_timeout_sec = state.cfg.ready_timeout_sec, "NATS not reachable yet; serving anyway (requests that need NATS answer 503 until it is). Is nats-server running there? (`pyococtl up`, or `pyoco-server up --with-nats`)");
                format!("NATS unreachable at {}, retrying", state.cfg.nats_url)
            };
            systemd::notify_ready(&format!("listening on {local} · {nats}"));
            if let Some(tx) = on_ready {
                let _ = tx.send(ready);
            }
        });
    }
    // No Nagle: small SSE frames and JSON answers go out at once instead of waiting up to
    // 40 ms for a delayed ACK.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let stopping = shutdown.clone();
    axum::serve(listener, app::router(state.clone()))
        .with_graceful_shutdown(async move { stopping.cancelled().await })
        .await?;
    tracing::info!("stopped");
    Ok(())
}

/// Connects to NATS (retrying), ensures the resources, starts the KV followers, and keeps the
/// systemd status line current. NATS being down never stops the gateway: requests that need it
/// answer 503 meanwhile.
async fn supervise_nats(state: Arc<AppState>, address: String) {
    let mut followers_started = false;
    let mut was_connected = false;
    let mut backoff = Duration::from_millis(200);
    loop {
        let connected = state.nats_connected();
        if connected && (!was_connected || state.resources.read().unwrap().is_none()) {
            let js = async_nats::jetstream::new(state.client.clone());
            match resources::ensure(&js, &state.cfg).await {
                Ok((res, drift)) => {
                    for d in drift {
                        tracing::warn!(err_id = "ERR-PYOCO-0003", resource = %d.resource, field = d.field, expected = %d.expected, actual = %d.actual, "resource configuration drift: {d}");
                    }
                    if !followers_started {
                        tokio::spawn(follow_bucket(res.runs.clone(), state.runs.clone(), "runs"));
                        tokio::spawn(follow_bucket(
                            res.workers.clone(),
                            state.workers.clone(),
                            "workers",
                        ));
                        tokio::spawn(follow_bucket(res.auth.clone(), state.auth.clone(), "auth"));
                        followers_started = true;
                    }
                    *state.resources.write().unwrap() = Some(res);
                    state.ready.send_replace(true);
                    tracing::info!(nats_url = %state.cfg.nats_url, "NATS connected; resources ensured");
                    was_connected = true;
                    backoff = Duration::from_millis(200);
                }
                Err(e) => {
                    tracing::error!(err_id = "ERR-PYOCO-0003", error = %e, "ensuring JetStream resources failed; retrying");
                    systemd::notify_status(&format!(
                        "listening on {address} · NATS resources failing: {e}"
                    ));
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            }
        }
        if !connected && was_connected {
            tracing::warn!(err_id = "ERR-PYOCO-0003", nats_url = %state.cfg.nats_url, "NATS disconnected; retrying");
            was_connected = false;
        }
        let nats = if connected {
            "NATS connected".to_string()
        } else if state.client.connection_state() == async_nats::connection::State::Pending {
            format!("NATS connecting to {}", state.cfg.nats_url)
        } else {
            format!("NATS unreachable at {}, retrying", state.cfg.nats_url)
        };
        let indexed = if state.runs.is_loaded() {
            format!("{} runs indexed", state.runs.len())
        } else {
            "indexing runs".into()
        };
        systemd::notify_status(&format!("listening on {address} · {nats} · {indexed}"));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutting down");
    systemd::notify_stopping("shutting down");
}
