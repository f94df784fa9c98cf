//! `pyoco-server`: the HTTP gateway of pyoco-server, in Rust. This binary parses the command
//! line, loads the configuration, and runs the library ([`pyoco_server::server::run`]); its
//! exit codes: 0 after a clean stop, 1 when serving failed, 2 for a configuration error.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use pyoco_core::config::{self, LoadOptions, Loaded};
use pyoco_server::{devstack, server, GatewaySettings};

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
    /// NATS server URL [PYOCO_NATS_URL]; shown with its password as `***`.
    #[arg(long)]
    nats_url: Option<String>,
    /// NATS credentials file (.creds: user JWT and seed) [PYOCO_NATS_CREDS_FILE]; other methods: PYOCO_NATS_USER + PYOCO_NATS_PASSWORD_FILE, PYOCO_NATS_TOKEN_FILE, PYOCO_NATS_NKEY_SEED_FILE.
    #[arg(long)]
    nats_creds: Option<String>,
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
        push("nats_creds_file", &self.nats_creds);
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

/// Configuration errors (unusable file, env or flag values).
const EXIT_CONFIG: u8 = 2;
/// The gateway could not start or stopped on an error.
const EXIT_FAILED: u8 = 1;
/// After the last task, how long the runtime may take to drop (blocking-pool work).
const RUNTIME_DROP: Duration = Duration::from_secs(1);

fn main() -> ExitCode {
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
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if print_config {
        print_effective_config(&loaded);
        return ExitCode::SUCCESS;
    }
    let settings = match GatewaySettings::from_config(&loaded.config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("[pyoco-server][ERR-PYOCO-0018] {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let outcome = runtime.block_on(async {
        init_logging(&loaded);
        server::run(loaded.config, settings, args.dev).await
    });
    runtime.shutdown_timeout(RUNTIME_DROP);
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("[pyoco-server][ERR-PYOCO-0018] {e:#}");
            ExitCode::from(EXIT_FAILED)
        }
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
