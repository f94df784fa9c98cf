//! NATS day-2 operations: `up join down leave status doctor service controller backup restore`.
//!
//! These take over the job of the Python tool nats-bootstrap 0.0.9, natively and with its safety
//! rules (destructive operations need `--confirm`; nothing is stopped on a doubtful PID file;
//! a restore checks the whole backup before touching anything). Where flag names clash with
//! pyococtl's global flags, the global one is used: `--nats-url` (leave, controller, backup),
//! `--config` (the TOML file; nats-bootstrap's JSON config is `--bootstrap-config`) and
//! `--output` (the format; backup's directory is `--dir`).
//!
//! Files: `resolve` (which nats-server / nats CLI, the JSON config), `server` (up, join, down,
//! PID files), `secure` (the secured layout: accounts, role permissions, credential files),
//! `bootstrap_yaml` (nats-bootstrap 0.1.0's bootstrap.yaml), `controller` (controller start, leave), `facts` (status, doctor), `service`
//! (systemd units), `backup` (backup, restore), `jsapi` (raw JetStream API requests).

use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};

use crate::client::CtlResult;
use crate::Ctx;

mod backup;
mod bootstrap_yaml;
mod controller;
mod facts;
mod jsapi;
mod resolve;
pub(crate) mod secure;
mod server;
mod service;

/// Default data folder, as nats-bootstrap.
pub const DEFAULT_DATAFOLDER: &str = "./nats-bootstrap-data";
/// The PID file's name inside the data folder.
pub const PID_FILE_NAME: &str = "nats-server.pid";
/// The generated nats-server configuration's name inside the data folder.
pub const CONF_FILE_NAME: &str = "nats-bootstrap.conf";
/// Default systemd unit name of `pyococtl service`.
pub const DEFAULT_SERVICE_NAME: &str = "pyoco-nats";

#[derive(Debug, Clone, Args)]
#[command(after_help = "Modes:\n  \
  (default)             one node with JetStream: writes DIR/nats-bootstrap.conf (0600; accounts, users, permissions) and runs nats-server -c on it\n  \
  --cluster NAME        the same plus cluster{name, listen, routes, authorization}: a cluster member\n  \
  --bootstrap-config F  nats-bootstrap 0.1.0's bootstrap.yaml (cluster, datafolder, ports, system_account, app_account, advertise)\n  \
  --nats-config FILE    runs nats-server -c FILE -P PIDFILE (your configuration, your security)\n  \
  -- ARGS…              (without --cluster/--nats-config) runs nats-server ARGS… -P PIDFILE, nothing added\n\n\
Secured by default: every client must log in. Users (account PYOCO, JetStream): pyoco-gateway, pyoco-worker (only what a worker\n\
needs), pyoco-admin (everything: pyococtl key/dlq/backup/restore); account SYS (system_account) with user system; routes with user\n\
pyoco-route; monitoring on 127.0.0.1 (--http-host to change). Passwords: one file each in --auth-dir (default DIR/auth):\n\
gateway.password worker.password admin.password system.password route.password — missing ones are created (random, 0600), existing\n\
ones never overwritten. A cluster shares one set: copy the directory from the first node to the others before they join.\n\
--insecure writes the old open layout (anonymous clients with full access) for migrations.\n\n\
The server runs in the foreground (pyococtl execs it, so a supervisor such as systemd sees nats-server itself).\n\
--wait-ready instead keeps pyococtl as the parent: it prints `ready` (and notifies systemd) once JetStream answers,\n\
forwards SIGTERM/SIGINT/SIGHUP and exits with the server.\n\n\
Examples:\n  pyococtl up\n  pyococtl up --cluster pyoco --server-name n1 --seed 10.0.0.2 --seed 10.0.0.3\n  scp -rp n1:nats-bootstrap-data/auth nats-bootstrap-data/  # on n2 and n3, before:\n  pyococtl join --cluster pyoco --server-name n2 --seed 10.0.0.1 --seed 10.0.0.3\n  pyococtl up --bootstrap-config bootstrap.yaml\n  pyococtl up --nats-config /etc/nats/nats.conf\n  pyococtl up -- -js -sd /srv/nats -p 4222")]
pub struct UpArgs {
    /// Cluster name: bootstrap mode (a generated nats-server configuration).
    #[arg(long)]
    pub cluster: Option<String>,
    /// Another member's cluster address HOST[:PORT] (port defaults to --cluster-port; a value with :// is used as is). Repeatable; list every other member so any node can restart alone.
    #[arg(long = "seed", value_name = "HOST[:PORT]")]
    pub seeds: Vec<String>,
    /// The server's name in the cluster [default: the hostname].
    #[arg(long)]
    pub server_name: Option<String>,
    /// Data folder: JetStream store, generated configuration, PID file.
    #[arg(long, alias = "data-folder", value_name = "DIR", default_value = DEFAULT_DATAFOLDER)]
    pub datafolder: PathBuf,
    /// Cluster listen address HOST[:PORT] [default: 0.0.0.0:<cluster-port>].
    #[arg(long, value_name = "HOST[:PORT]")]
    pub listen: Option<String>,
    /// Cluster (route) port.
    #[arg(long, default_value_t = 6222)]
    pub cluster_port: u16,
    /// Client port.
    #[arg(long, default_value_t = 4222)]
    pub client_port: u16,
    /// Monitoring (HTTP) port.
    #[arg(long, default_value_t = 8222)]
    pub http_port: u16,
    /// Address clients connect to [default: 127.0.0.1 for one node; all interfaces in a cluster].
    #[arg(long, value_name = "HOST")]
    pub client_host: Option<String>,
    /// Run nats-server on this configuration file instead (not with --cluster).
    #[arg(long, value_name = "FILE")]
    pub nats_config: Option<PathBuf>,
    /// The nats-server binary (first step of the resolution order).
    #[arg(long, value_name = "PATH")]
    pub nats_server_path: Option<PathBuf>,
    /// nats-bootstrap 0.1.0's bootstrap.yaml (*.yaml, *.yml), or 0.0.9's JSON configuration (key `nats_server_path`) [default: ./nats-config.json, else ~/.nats-bootstrap/nats-config.json].
    #[arg(long, value_name = "FILE")]
    pub bootstrap_config: Option<PathBuf>,
    /// Directory of the credential files (gateway.password, worker.password, admin.password, system.password, route.password) [default: <datafolder>/auth].
    #[arg(long, value_name = "DIR")]
    pub auth_dir: Option<PathBuf>,
    /// The old open layout: no accounts, anonymous clients with full access, monitoring on all interfaces (for migrations only).
    #[arg(long)]
    pub insecure: bool,
    /// Address the monitoring (HTTP) port listens on [default: 127.0.0.1; all interfaces with --insecure].
    #[arg(long, value_name = "HOST")]
    pub http_host: Option<String>,
    /// PID file [default: <datafolder>/nats-server.pid].
    #[arg(long, value_name = "FILE")]
    pub pid_file: Option<PathBuf>,
    /// Cluster mode: one more system-account user (for `controller start`; the secured layout always has `system`); its password is read by nats-server from the environment variable --sys-password-env. With --insecure, clients without credentials land in an application account with JetStream.
    #[arg(long, value_name = "USER")]
    pub sys_user: Option<String>,
    /// Environment variable holding the system user's password.
    #[arg(long, value_name = "VAR", default_value = "NATS_SYS_PASSWORD")]
    pub sys_password_env: String,
    /// Keep pyococtl as the parent: print `ready` (and notify systemd) once JetStream is up, forward signals.
    #[arg(long)]
    pub wait_ready: bool,
    /// With --wait-ready: how long to wait for readiness, seconds.
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    pub ready_timeout: u64,
    /// With --wait-ready: the monitoring base URL to poll [default: from the mode's --http-port/-m].
    #[arg(long, value_name = "URL")]
    pub ready_url: Option<String>,
    /// Write the configuration and print the command (JSON with --output json), but start nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Raw nats-server arguments, after `--`.
    #[arg(last = true, value_name = "NATS-SERVER ARGS")]
    pub nats_args: Vec<String>,
    /// Only check the flags (`service install`): create no credential files.
    #[arg(skip)]
    pub check_only: bool,
}

/// Where the PID file is: `--pid-file`, else `<datafolder>/nats-server.pid`.
#[derive(Debug, Clone, Args)]
pub struct PidArgs {
    /// PID file [default: <datafolder>/nats-server.pid; nats-bootstrap's ./nats-server.pid when only that one exists].
    #[arg(long, value_name = "FILE")]
    pub pid_file: Option<PathBuf>,
    /// Data folder of `pyococtl up` [default: ./nats-bootstrap-data, else the package's /var/lib/pyoco/nats when only that one exists].
    #[arg(long, alias = "data-folder", value_name = "DIR", default_value = DEFAULT_DATAFOLDER)]
    pub datafolder: PathBuf,
}

#[derive(Debug, Clone, Args)]
#[command(
    after_help = "Stops the nats-server whose PID is in the PID file: SIGTERM, then SIGKILL after --timeout.\n\
A missing, unreadable, invalid or stale PID file (or one naming a process that is not nats-server) is an error (exit 1) and nothing is stopped.\n\
On a node run by systemd, use `systemctl stop pyoco-nats` instead (a stopped service is restarted on failure).\n\n\
Example:\n  pyococtl down --confirm --datafolder /var/lib/pyoco-nats"
)]
pub struct DownArgs {
    /// Required: this stops the server.
    #[arg(long)]
    pub confirm: bool,
    #[command(flatten)]
    pub pid: PidArgs,
    /// Seconds to wait after SIGTERM before SIGKILL.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    pub timeout: u64,
}

#[derive(Debug, Clone, Args)]
#[command(
    after_help = "POSTs {request_id, server_name, nats_url} to <controller>/v1/leave, trying each --controller in order.\n\
Prints `leave: ok` or `leave: already done`, then stops the local server (PID file) unless --keep-running.\n\
An unreachable controller is an error and nothing is stopped, unless --stop-anyway (then a warning).\n\n\
Example:\n  pyococtl --nats-url nats://10.0.0.3:4222 leave --confirm --controller http://10.0.0.1:8223 --controller http://10.0.0.2:8223"
)]
pub struct LeaveArgs {
    /// Required: this removes the server from the cluster and stops it.
    #[arg(long)]
    pub confirm: bool,
    /// Controller base URL; repeatable, tried in order.
    #[arg(long = "controller", value_name = "URL")]
    pub controllers: Vec<String>,
    /// Idempotency key; reuse it to retry safely [default: a new UUID].
    #[arg(long)]
    pub request_id: Option<String>,
    /// The leaving server's name [default: server_name of <datafolder>/nats-bootstrap.conf, else the hostname].
    #[arg(long)]
    pub server_name: Option<String>,
    /// Stop the local server even when no controller answers (a warning instead of an error).
    #[arg(long)]
    pub stop_anyway: bool,
    /// Only ask for the removal; leave the local server running.
    #[arg(long)]
    pub keep_running: bool,
    #[command(flatten)]
    pub pid: PidArgs,
    /// Seconds to wait after SIGTERM before SIGKILL.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    pub timeout: u64,
}

/// The inputs status and doctor share.
#[derive(Debug, Clone, Args)]
pub struct CheckArgs {
    /// The nats-server binary (first step of the resolution order).
    #[arg(long, value_name = "PATH")]
    pub nats_server_path: Option<PathBuf>,
    /// nats-bootstrap's JSON configuration [default: ./nats-config.json, else ~/.nats-bootstrap/nats-config.json].
    #[arg(long, value_name = "FILE")]
    pub bootstrap_config: Option<PathBuf>,
    #[command(flatten)]
    pub pid: PidArgs,
    /// A controller to check (GET /health); repeatable.
    #[arg(long = "controller", value_name = "URL")]
    pub controllers: Vec<String>,
    /// The systemd unit running NATS (checked when systemd runs).
    #[arg(long, default_value = DEFAULT_SERVICE_NAME)]
    pub service_name: String,
    /// The `nats` CLI (reported; needed only by --engine nats-cli).
    #[arg(long, value_name = "PATH")]
    pub nats_cli_path: Option<PathBuf>,
    /// NATS credentials file for the checks.
    #[arg(long, value_name = "FILE")]
    pub creds: Option<PathBuf>,
    /// Leave a check out (repeatable): nats-server, gateway, workers, python, units, resources.
    #[arg(long = "skip", value_enum, value_name = "CHECK")]
    pub skip: Vec<Check>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Check {
    NatsServer,
    Gateway,
    Workers,
    Python,
    Units,
    Resources,
}

#[derive(Debug, Clone, Args)]
#[command(
    after_help = "Prints `status: ok|ng` and the facts: nats-server binary, version and source, the JSON config, the PID file, NATS and JetStream,\n\
the product's streams and buckets, workers alive per tag, the gateway, systemd units, the workers' Python. Always exits 0\n\
(`pyococtl doctor` lists the problems with their fixes and exits 1 when there are any). --output json prints the facts as JSON."
)]
pub struct StatusArgs {
    #[command(flatten)]
    pub check: CheckArgs,
}

#[derive(Debug, Clone, Args)]
#[command(
    after_help = "Checks what `status` shows and ends with `doctor: ok`, or `doctor: ng` and a numbered list of problems, each with\n\
the command that fixes it (exit 1). Warnings do not make it fail. --output json prints the facts, problems and warnings.\n\n\
Examples:\n  pyococtl doctor\n  pyococtl --nats-url nats://10.0.0.1:4222 doctor --controller http://10.0.0.1:8223 --skip python"
)]
pub struct DoctorArgs {
    #[command(flatten)]
    pub check: CheckArgs,
}

#[derive(Debug, Clone, Subcommand)]
pub enum ServiceCmd {
    /// Write a systemd unit that runs `pyococtl up --wait-ready …` (Type=notify) and reload systemd.
    Install(Box<service::InstallArgs>),
    /// Stop, disable and remove the unit.
    Uninstall(service::UnitArgs),
    /// The unit file and `systemctl is-active/is-enabled`.
    Status(service::UnitArgs),
}

#[derive(Debug, Clone, Subcommand)]
pub enum ControllerCmd {
    /// Serve GET /health and POST /v1/leave (removes servers from the JetStream meta group).
    Start(controller::StartArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Engine {
    /// JetStream's snapshot API, spoken by pyococtl itself.
    Builtin,
    /// `nats stream backup|restore` of the Go `nats` CLI.
    NatsCli,
}

#[derive(Debug, Clone, Args)]
#[command(
    after_help = "Without --stream: every stream of the product (work queue, DLQ, the KV buckets and the wheel object store) into\n\
DIR/<stream>/{backup.json,stream.tar.s2} (the layout `nats stream backup` writes) plus DIR/manifest.json (message counts, bytes,\n\
sha256 of every file, nats-server version, time). With --stream NAME: that stream into DIR itself (+ manifest.json).\n\n\
Examples:\n  pyococtl backup --dir /var/backups/pyoco/$(date +%F)\n  pyococtl backup --stream KV_pyoco_auth --dir /tmp/auth-backup\n  pyococtl backup --engine nats-cli --dir /var/backups/pyoco/today"
)]
pub struct BackupArgs {
    /// Output directory (created; must be empty unless --force).
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
    /// Only this stream (a KV bucket is KV_<bucket>, an object store OBJ_<bucket>).
    #[arg(long)]
    pub stream: Option<String>,
    /// Leave the consumers (and their positions) out of the snapshot.
    #[arg(long)]
    pub no_consumers: bool,
    /// Write into a non-empty directory.
    #[arg(long)]
    pub force: bool,
    /// Fail when no data arrives for this long, seconds (an idle timeout, not a total one).
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    pub idle_timeout: u64,
    /// Snapshot chunk size, bytes (1 KiB … 1 MiB).
    #[arg(long, value_name = "BYTES", default_value_t = 128 * 1024, value_parser = clap::value_parser!(u32).range(1024..=1_048_576))]
    pub chunk_size: u32,
    /// Snapshot flow-control window, bytes (≤ 32 MiB).
    #[arg(long, value_name = "BYTES", default_value_t = 8 * 1024 * 1024, value_parser = clap::value_parser!(u32).range(1024..=33_554_432))]
    pub window_size: u32,
    #[command(flatten)]
    pub engine: EngineArgs,
}

#[derive(Debug, Clone, Args)]
pub struct EngineArgs {
    /// builtin (JetStream's snapshot API) or nats-cli [default: builtin; nats-cli when --nats-cli-path is given].
    #[arg(long, value_enum)]
    pub engine: Option<Engine>,
    /// The `nats` CLI [resolution: this flag, NATS_CLI_PATH, PATH].
    #[arg(long, value_name = "PATH")]
    pub nats_cli_path: Option<PathBuf>,
    /// NATS credentials file.
    #[arg(long, value_name = "FILE")]
    pub creds: Option<PathBuf>,
    /// nats CLI context (nats-cli engine only).
    #[arg(long)]
    pub context: Option<String>,
}

#[derive(Debug, Clone, Args)]
#[command(
    after_help = "Checks the whole backup first (manifest, files present, sha256, backup.json) and refuses to restore over an existing\n\
stream unless --replace (which deletes it first). A directory written by `nats stream backup` (backup.json + stream.tar.s2,\n\
no manifest) is accepted too.\n\n\
Examples:\n  pyococtl restore --confirm --input /var/backups/pyoco/2024-05-01\n  pyococtl restore --confirm --replace --stream KV_pyoco_auth --input /var/backups/pyoco/2024-05-01"
)]
pub struct RestoreArgs {
    /// Required: this creates (with --replace: replaces) streams.
    #[arg(long)]
    pub confirm: bool,
    /// The backup directory.
    #[arg(long, alias = "dir", value_name = "DIR")]
    pub input: PathBuf,
    /// Only this stream of a full backup.
    #[arg(long)]
    pub stream: Option<String>,
    /// Delete an existing stream before restoring it.
    #[arg(long)]
    pub replace: bool,
    /// Restore with this replica count instead of the backed-up one (e.g. 1 when moving a cluster's backup to one node).
    #[arg(long, value_name = "N")]
    pub replicas: Option<u32>,
    /// Fail when a chunk is not acknowledged within this long, seconds.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    pub idle_timeout: u64,
    #[command(flatten)]
    pub engine: EngineArgs,
}

#[derive(Debug, Clone, Args)]
#[command(
    after_help = "Creates the NATS credential files that are missing in DIR (mode 0700) — gateway.password, worker.password,\n\
admin.password, system.password, route.password: one random URL-safe line of 43 characters each, mode 0600 — and reports\n\
which it created. Existing files are never changed. `pyococtl up --auth-dir DIR` reads them; the daemons read theirs\n\
through PYOCO_NATS_USER + PYOCO_NATS_PASSWORD_FILE (users pyoco-gateway, pyoco-worker, pyoco-admin).\n\n\
Examples:\n  pyococtl nats-credentials\n  pyococtl nats-credentials --dir /srv/pyoco/auth --json"
)]
pub struct NatsCredentialsArgs {
    /// The directory [default: $PYOCO_CREDENTIALS_DIR, else /etc/pyoco/credentials].
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Print {"dir", "created", "present"} as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Which operation to run.
pub enum Op<'a> {
    NatsCredentials(&'a NatsCredentialsArgs),
    Up(&'a UpArgs, bool),
    Down(&'a DownArgs),
    Leave(&'a LeaveArgs),
    Status(&'a StatusArgs),
    Doctor(&'a DoctorArgs),
    Service(&'a ServiceCmd),
    Controller(&'a ControllerCmd),
    Backup(&'a BackupArgs),
    Restore(&'a RestoreArgs),
}

pub async fn dispatch(ctx: &Ctx, op: Op<'_>) -> CtlResult<u8> {
    match op {
        Op::NatsCredentials(a) => server::nats_credentials(ctx, a),
        Op::Up(a, join) => server::up(ctx, a, join).await,
        Op::Down(a) => server::down(a).await,
        Op::Leave(a) => controller::leave(ctx, a).await,
        Op::Status(a) => facts::status(ctx, &a.check).await,
        Op::Doctor(a) => facts::doctor(ctx, &a.check).await,
        Op::Service(c) => service::dispatch(ctx, c).await,
        Op::Controller(ControllerCmd::Start(a)) => controller::start(ctx, a).await,
        Op::Backup(a) => backup::backup(ctx, a).await,
        Op::Restore(a) => backup::restore(ctx, a).await,
    }
}

/// The refusal of a destructive command without `--confirm` (exit 2).
pub(crate) fn confirm_required(example: &str) -> crate::client::CtlError {
    crate::client::CtlError::new(
        crate::exit::USAGE,
        format!("--confirm is required\n- hint: this command is destructive; run it again with --confirm, e.g. {example}"),
    )
}

/// The machine's hostname (nats-bootstrap's default server name).
pub(crate) fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

/// An absolute version of `p` (relative to the current directory), without resolving symlinks:
/// the same rule as the daemons' path-valued settings (`pyoco_core::config::absolutize`).
pub(crate) fn absolute(p: &std::path::Path) -> PathBuf {
    let p = expand_tilde(p);
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
    PathBuf::from(pyoco_core::config::absolutize(&cwd, &p.to_string_lossy()))
}

/// `~/x` → `$HOME/x`.
pub(crate) fn expand_tilde(p: &std::path::Path) -> PathBuf {
    if let Ok(rest) = p.strip_prefix("~") {
        if let Some(home) = std::env::var_os("HOME") {
            return PathBuf::from(home).join(rest);
        }
    }
    p.to_path_buf()
}

/// Human size: 1023 B, 1.5 KiB, 3.2 MiB …
pub(crate) fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn human_sizes() {
        assert_eq!(super::human_bytes(10), "10 B");
        assert_eq!(super::human_bytes(1536), "1.5 KiB");
        assert_eq!(super::human_bytes(3 * 1024 * 1024), "3.0 MiB");
    }
}
