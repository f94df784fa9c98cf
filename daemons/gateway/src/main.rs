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

/// `up --with-nats/--with-worker`: start those first, stop them after the gateway stopped.
async fn serve_with_stack(mut loaded: Loaded, dev: devstack::DevStackArgs) -> anyhow::Result<()> {
    if !dev.with_nats && !dev.with_worker {
        return serve(loaded).await;
    }
    let (stack, url) = devstack::DevStack::start(&dev, &loaded.config.nats_url).await?;
    loaded.config.nats_url = url;
    let result = serve(loaded).await;
    stack.stop().await;
    result
}

async fn serve(loaded: Loaded) -> anyhow::Result<()> {
    let cfg = loaded.config.clone();
    pyoco_core::logging::init(
        "pyoco-server:http",
        &cfg.log_level,
        &cfg.log_format,
        cfg.log_utc,
    );
    for warning in &loaded.warnings {
        tracing::warn!(err_id = "ERR-PYOCO-0002", "configuration: {warning}");
    }

    // The socket first: systemd's (socket activation) or our own bind.
    let listener = match systemd::inherited_listener("http")? {
        Some(l) => tokio::net::TcpListener::from_std(l)?,
        None => {
            let addr = format!("{}:{}", cfg.http_host, cfg.http_port);
            tokio::net::TcpListener::bind(&addr).await.map_err(|e| {
                anyhow::anyhow!(
                    "cannot listen on {addr}: {e}; fix: choose a free --port or stop what uses it"
                )
            })?
        }
    };
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
    systemd::notify_ready(&format!("listening on {local} · NATS connecting"));
    // No Nagle: small SSE frames and JSON answers go out at once instead of waiting up to
    // 40 ms for a delayed ACK.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app::router(state.clone()))
        .with_graceful_shutdown(shutdown_signal())
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
