//! `pyococtl`: the ops CLI of pyoco-server.
//!
//! Subcommands live in their own modules; this file only holds the global flags (gateway URL,
//! API key, output format) and the dispatch.

use clap::{Parser, Subcommand, ValueEnum};

mod bench;

/// Global flags shared by every subcommand.
#[derive(Debug, Clone, Parser)]
#[command(name = "pyococtl", version, about = "Ops CLI of pyoco-server")]
pub struct Cli {
    /// Base URL of the pyoco-server HTTP gateway.
    #[arg(
        long,
        env = "PYOCO_SERVER",
        default_value = "http://127.0.0.1:8000",
        global = true
    )]
    pub server: String,

    /// API key sent with every request (only needed when the gateway runs with
    /// PYOCO_HTTP_AUTH_MODE=api_key).
    #[arg(long, env = "PYOCO_API_KEY", hide_env_values = true, global = true)]
    pub api_key: Option<String>,

    /// Header carrying the API key.
    #[arg(
        long,
        env = "PYOCO_HTTP_API_KEY_HEADER",
        default_value = "X-API-Key",
        global = true
    )]
    pub api_key_header: String,

    /// Output format.
    #[arg(long, value_enum, default_value_t = OutputFormat::Table, global = true)]
    pub output: OutputFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Table,
    Json,
}

#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Load generator: measures a gateway's throughput, latencies, SSE notification latency and RSS.
    Bench(bench::BenchArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pyococtl: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        match &cli.command {
            Command::Bench(args) => bench::run(&cli, args).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pyococtl: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
