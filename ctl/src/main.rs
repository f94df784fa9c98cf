//! `pyococtl`: the ops CLI of pyoco-server.
//!
//! Every subcommand family lives in its own module (`run`, `key`, `worker`, `dlq`, `info`,
//! `bench`); this file holds the global flags, the shared context and the dispatch.

use std::path::PathBuf;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};

mod bench;
mod client;
mod dlq;
mod exit;
mod info;
mod key;
mod ops;
mod output;
mod run;
mod runtime;
mod worker;

use client::{Client, CtlError, CtlResult};

/// Global flags shared by every subcommand.
#[derive(Debug, Clone, Parser)]
#[command(name = "pyococtl", version, about = "The ops CLI of pyoco-server: runs, API keys, workers, dead letters, NATS",
    after_help = "Examples:\n  pyococtl run submit-yaml --workflow-file flow.yaml --flow-name main --tag hello --watch\n  pyococtl run list --status FAILED --output table\n  pyococtl key create --tenant acme\n\nExit codes: 0 success · 1 request failed · 2 usage error · 3 run FAILED · 4 run CANCELLED · 5 timeout · 130 Ctrl-C (--help for details)",
    after_long_help = exit::HELP)]
pub struct Cli {
    /// Base URL of the pyoco-server HTTP gateway.
    #[arg(
        long,
        env = "PYOCO_SERVER",
        default_value = "http://127.0.0.1:8000",
        global = true,
        help_heading = "Global options"
    )]
    pub server: String,

    /// API key sent with every request (needed when the gateway runs with PYOCO_HTTP_AUTH_MODE=api_key).
    #[arg(
        long,
        env = "PYOCO_API_KEY",
        hide_env_values = true,
        global = true,
        help_heading = "Global options"
    )]
    pub api_key: Option<String>,

    /// Read the API key from this file (first line), so it stays out of the process list.
    #[arg(long, global = true, help_heading = "Global options")]
    pub api_key_file: Option<PathBuf>,

    /// Header carrying the API key.
    #[arg(
        long,
        env = "PYOCO_HTTP_API_KEY_HEADER",
        default_value = "X-API-Key",
        global = true,
        help_heading = "Global options"
    )]
    pub api_key_header: String,

    /// NATS URL, for the commands that talk to NATS directly (key, dlq) [default: PYOCO_NATS_URL or the config file].
    #[arg(long, global = true, help_heading = "Global options")]
    pub nats_url: Option<String>,

    /// TOML configuration file shared with the daemons (default: $PYOCO_CONFIG, else /etc/pyoco/pyoco.toml when present).
    #[arg(long, global = true, help_heading = "Global options")]
    pub config: Option<PathBuf>,

    /// Output format, where the command has several.
    #[arg(long, value_enum, global = true, help_heading = "Global options")]
    pub output: Option<OutputFormat>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Table,
    Json,
    Status,
}

#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Submit, follow, list and cancel runs.
    #[command(subcommand)]
    Run(run::RunCmd),
    /// Create, list and revoke API keys (in the NATS auth bucket, like pyoco-server-admin).
    #[command(subcommand)]
    Key(key::KeyCmd),
    /// List workers, hide and unhide them.
    #[command(subcommand)]
    Worker(worker::WorkerCmd),
    /// Look after dead letters: list, show, replay, purge.
    #[command(subcommand)]
    Dlq(dlq::DlqCmd),
    /// The gateway's Prometheus metrics, raw or as a short table.
    Metrics(info::MetricsArgs),
    /// The gateway's health.
    Health,
    /// Load generator: measures a gateway's throughput, latencies, SSE notification latency and RSS.
    Bench(bench::BenchArgs),
    /// Start the product's nats-server in the foreground (one node, or a cluster member).
    Up(ops::UpArgs),
    /// `up` that joins a cluster through --seed.
    Join(ops::UpArgs),
    /// Create the missing NATS credential files (one password per role) and report which.
    NatsCredentials(ops::NatsCredentialsArgs),
    /// Stop the nats-server of the PID file (needs --confirm).
    Down(ops::DownArgs),
    /// Leave the cluster through a controller (needs --confirm).
    Leave(ops::LeaveArgs),
    /// What runs where: nats-server binary and version, config, PID file, NATS and the product's resources.
    Status(ops::StatusArgs),
    /// Check everything and list each problem with the command that fixes it.
    Doctor(ops::DoctorArgs),
    /// Install, remove or inspect the systemd unit that runs `pyococtl up`.
    #[command(subcommand)]
    Service(ops::ServiceCmd),
    /// The cluster controller that removes leaving servers.
    #[command(subcommand)]
    Controller(ops::ControllerCmd),
    /// Back up the product's streams, KV buckets and object stores.
    Backup(ops::BackupArgs),
    /// Restore a backup (needs --confirm).
    Restore(ops::RestoreArgs),
    /// The workers' Python runtime: create it, install pyoco and your packages.
    #[command(subcommand)]
    Runtime(runtime::RuntimeCmd),
    /// Print a shell completion script (bash, zsh, fish).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write man pages for pyococtl and its subcommands into a directory.
    #[command(hide = true)]
    Man { dir: PathBuf },
}

/// What every command may need, built once.
pub struct Ctx {
    pub cli: Cli,
    pub config: pyoco_core::config::Config,
}

impl Ctx {
    /// The HTTP client for `--server` with the API key (flag, file, or env).
    pub fn client(&self) -> CtlResult<Client> {
        let key = match (&self.cli.api_key, &self.cli.api_key_file) {
            (Some(k), _) => Some(k.clone()),
            (None, Some(path)) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| {
                        CtlError::usage(
                            format!("--api-key-file {}: {e}", path.display()),
                            "pyococtl --api-key-file ~/.config/pyoco/key run list",
                        )
                    })?
                    .lines()
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_string(),
            ),
            (None, None) => None,
        };
        Client::new(&self.cli.server, key, &self.cli.api_key_header)
    }

    /// The NATS credentials and TLS files of the configuration (checked when it was loaded).
    /// Without any configured, the packaged admin credentials (see [`client::admin_default`]).
    pub fn nats_auth(&self) -> CtlResult<pyoco_core::nats::NatsAuth> {
        let auth = pyoco_core::nats::NatsAuth::from_config(&self.config)
            .map_err(|e| CtlError::new(exit::USAGE, format!("ERR-PYOCO-0018: {e}")))?;
        Ok(client::admin_default(&self.config, &self.nats_url(), auth))
    }

    pub fn nats_url(&self) -> String {
        self.cli
            .nats_url
            .clone()
            .unwrap_or_else(|| self.config.nats_url.clone())
    }

    /// The chosen output format, or the command's default.
    pub fn output(&self, default: OutputFormat) -> OutputFormat {
        self.cli.output.unwrap_or(default)
    }
}

fn load_config(cli: &Cli) -> CtlResult<pyoco_core::config::Config> {
    let opts = pyoco_core::config::LoadOptions {
        config_file: cli.config.clone(),
        ..Default::default()
    };
    pyoco_core::config::load(&opts)
        .map(|l| l.config)
        .map_err(|e| CtlError::new(exit::USAGE, format!("ERR-PYOCO-0018: {e}")))
}

async fn dispatch(ctx: &Ctx) -> CtlResult<u8> {
    match &ctx.cli.command {
        Command::Run(cmd) => run::dispatch(ctx, cmd).await,
        Command::Key(cmd) => key::dispatch(ctx, cmd).await,
        Command::Worker(cmd) => worker::dispatch(ctx, cmd).await,
        Command::Dlq(cmd) => dlq::dispatch(ctx, cmd).await,
        Command::Metrics(args) => info::metrics(ctx, args).await,
        Command::Health => info::health(ctx).await,
        Command::Bench(args) => bench::run(&ctx.cli, args)
            .await
            .map(|_| exit::OK)
            .map_err(|e| CtlError::new(exit::ERROR, format!("{e:#}"))),
        Command::Up(a) => ops::dispatch(ctx, ops::Op::Up(a, false)).await,
        Command::Join(a) => ops::dispatch(ctx, ops::Op::Up(a, true)).await,
        Command::NatsCredentials(a) => ops::dispatch(ctx, ops::Op::NatsCredentials(a)).await,
        Command::Down(a) => ops::dispatch(ctx, ops::Op::Down(a)).await,
        Command::Leave(a) => ops::dispatch(ctx, ops::Op::Leave(a)).await,
        Command::Status(a) => ops::dispatch(ctx, ops::Op::Status(a)).await,
        Command::Doctor(a) => ops::dispatch(ctx, ops::Op::Doctor(a)).await,
        Command::Service(c) => ops::dispatch(ctx, ops::Op::Service(c)).await,
        Command::Controller(c) => ops::dispatch(ctx, ops::Op::Controller(c)).await,
        Command::Backup(a) => ops::dispatch(ctx, ops::Op::Backup(a)).await,
        Command::Restore(a) => ops::dispatch(ctx, ops::Op::Restore(a)).await,
        Command::Runtime(c) => runtime::dispatch(ctx, c).await,
        Command::Completions { shell } => {
            clap_complete::generate(
                *shell,
                &mut Cli::command(),
                "pyococtl",
                &mut std::io::stdout(),
            );
            Ok(exit::OK)
        }
        Command::Man { dir } => write_man_pages(dir).map(|_| exit::OK),
    }
}

/// One page for `pyococtl` and one per subcommand (`pyococtl-run-submit.1`, …).
fn write_man_pages(dir: &std::path::Path) -> CtlResult<()> {
    fn walk(cmd: clap::Command, name: String, dir: &std::path::Path) -> std::io::Result<()> {
        let cmd = cmd.name(name.clone());
        let mut buf = Vec::new();
        clap_mangen::Man::new(cmd.clone()).render(&mut buf)?;
        std::fs::write(dir.join(format!("{name}.1")), buf)?;
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            walk(sub.clone(), format!("{name}-{}", sub.get_name()), dir)?;
        }
        Ok(())
    }
    std::fs::create_dir_all(dir)
        .and_then(|_| walk(Cli::command(), "pyococtl".into(), dir))
        .map_err(|e| {
            CtlError::new(
                exit::ERROR,
                format!("writing man pages to {}: {e}", dir.display()),
            )
        })
}

fn main() -> std::process::ExitCode {
    // `pyococtl … | head` must end quietly, not panic on a closed pipe.
    // SAFETY: resetting a signal disposition before any thread exists.
    unsafe {
        let _ = nix::sys::signal::signal(
            nix::sys::signal::Signal::SIGPIPE,
            nix::sys::signal::SigHandler::SigDfl,
        );
    }
    let cli = Cli::parse();
    let config = match load_config(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return std::process::ExitCode::from(e.code);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pyococtl: cannot start the async runtime: {e}");
            return std::process::ExitCode::from(exit::ERROR);
        }
    };
    let ctx = Ctx { cli, config };
    let code = rt.block_on(async {
        tokio::select! {
            r = dispatch(&ctx) => match r {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("{e}");
                    e.code
                }
            },
            _ = tokio::signal::ctrl_c() => exit::INTERRUPTED,
        }
    });
    std::process::ExitCode::from(code)
}
