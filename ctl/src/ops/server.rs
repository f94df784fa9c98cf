//! `up`/`join` (start nats-server in the foreground) and `down` (stop the one in the PID file).

use std::ffi::OsString;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};

use super::resolve::{self, Resolved};
use super::{bootstrap_yaml, secure};
use super::{PidArgs, UpArgs, CONF_FILE_NAME, PID_FILE_NAME};
use crate::client::{CtlError, CtlResult};
use crate::{exit, Ctx, OutputFormat};

// ---------------------------------------------------------------------------------------------
// up / join

/// What `up` will run.
#[derive(Debug)]
pub struct Plan {
    pub mode: &'static str,
    pub binary: Resolved,
    pub args: Vec<OsString>,
    pub conf_path: Option<PathBuf>,
    pub conf_text: Option<String>,
    pub pid_file: PathBuf,
    pub datafolder: PathBuf,
    /// Monitoring base URL for --wait-ready.
    pub ready_url: String,
    /// The secured layout's credentials directory and the files `up` created there.
    pub auth: Option<(PathBuf, Vec<PathBuf>)>,
    /// Secrets in `conf_text`, masked wherever it is shown.
    secrets: Vec<String>,
    /// Warnings to print before starting (e.g. --insecure).
    pub warnings: Vec<String>,
}

impl Plan {
    /// The configuration with every password replaced by `***` (for --dry-run output).
    pub fn conf_shown(&self) -> Option<String> {
        self.conf_text.as_ref().map(|t| {
            let mut t = t.clone();
            for s in &self.secrets {
                t = t.replace(s.as_str(), "***");
            }
            t
        })
    }
}

fn usage(msg: impl Into<String>) -> CtlError {
    CtlError::new(exit::USAGE, msg.into())
}

/// `host` or `host:port` → `host:port` (the port defaults to `default_port`).
fn with_port(value: &str, default_port: u16) -> String {
    let v = value.trim();
    if v.starts_with('[') {
        // [v6]:port or [v6]
        if v.contains("]:") {
            v.to_string()
        } else {
            format!("{v}:{default_port}")
        }
    } else if v.contains(':') {
        v.to_string()
    } else {
        format!("{v}:{default_port}")
    }
}

/// nats-bootstrap's seed rule: `HOST` → `nats://HOST:<cluster-port>`, `HOST:PORT` →
/// `nats://HOST:PORT`, anything with `://` as is.
pub fn normalize_seed(seed: &str, cluster_port: u16) -> String {
    let raw = seed.trim();
    if raw.contains("://") {
        raw.to_string()
    } else {
        format!("nats://{}", with_port(raw, cluster_port))
    }
}

use super::secure::q;

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The open (`--insecure`) configuration bootstrap mode writes to `<datafolder>/nats-bootstrap.conf`.
pub fn bootstrap_conf(
    a: &UpArgs,
    cluster: &str,
    server_name: &str,
    datafolder: &Path,
) -> CtlResult<String> {
    let (listen, routes) = listen_and_routes(a);
    let mut lines = vec![
        "# Written by `pyococtl up` at every start; edit the command line, not this file."
            .to_string(),
        format!("server_name: {}", q(server_name)),
    ];
    if let Some(h) = &a.client_host {
        lines.push(format!("host: {}", q(h)));
    }
    lines.push(format!("port: {}", a.client_port));
    match &a.http_host {
        Some(h) => lines.push(format!(
            "http: {}",
            q(&format!("{}:{}", bracket(h), a.http_port))
        )),
        None => lines.push(format!("http: {}", a.http_port)),
    }
    lines.push(format!(
        "jetstream: {{ store_dir: {} }}",
        q(&datafolder.display().to_string())
    ));
    if let Some(user) = &a.sys_user {
        check_sys_user(a, user)?;
        lines.extend([
            String::new(),
            "# The system account (for `pyococtl controller start`); clients without credentials use APP.".to_string(),
            "accounts: {".to_string(),
            format!("  SYS: {{ users: [ {{ user: {}, password: ${} }} ] }}", q(user), a.sys_password_env),
            "  APP: { jetstream: enabled, users: [ { user: \"pyoco\" } ] }".to_string(),
            "}".to_string(),
            "system_account: SYS".to_string(),
            "no_auth_user: \"pyoco\"".to_string(),
        ]);
    }
    lines.extend([
        String::new(),
        "cluster {".to_string(),
        format!("  name: {}", q(cluster)),
        format!("  listen: {}", q(&listen)),
    ]);
    lines.push("  routes = [".to_string());
    for r in &routes {
        lines.push(format!("    {}", q(r)));
    }
    lines.push("  ]".to_string());
    lines.push("}".to_string());
    lines.push(String::new());
    Ok(lines.join("\n"))
}

/// The value of `-P`/`--pid` in raw arguments.
fn pid_in_args(args: &[String]) -> Option<PathBuf> {
    let mut it = args.iter();
    while let Some(a) = it.next() {
        for flag in ["-P", "--pid", "-pid"] {
            if a == flag {
                return it.next().map(PathBuf::from);
            }
            if let Some(v) = a.strip_prefix(&format!("{flag}=")) {
                return Some(PathBuf::from(v));
            }
        }
    }
    None
}

/// The value of `-m`/`--http_port` in raw arguments.
fn monitor_in_args(args: &[String]) -> Option<u16> {
    let mut it = args.iter();
    while let Some(a) = it.next() {
        for flag in ["-m", "--http_port", "-http_port"] {
            if a == flag {
                return it.next().and_then(|v| v.parse().ok());
            }
            if let Some(v) = a.strip_prefix(&format!("{flag}=")) {
                return v.parse().ok();
            }
        }
    }
    None
}

/// Host part usable to reach a listener bound to `host`.
fn reach(host: Option<&str>) -> String {
    match host {
        None | Some("0.0.0.0") | Some("::") | Some("[::]") | Some("") => "127.0.0.1".to_string(),
        Some(h) if h.contains(':') && !h.starts_with('[') => format!("[{h}]"),
        Some(h) => h.to_string(),
    }
}

/// The cluster listen address and the routes (a self-route when no seed is given).
fn listen_and_routes(a: &UpArgs) -> (String, Vec<String>) {
    let listen = with_port(a.listen.as_deref().unwrap_or("0.0.0.0"), a.cluster_port);
    let mut routes: Vec<String> = a
        .seeds
        .iter()
        .map(|s| normalize_seed(s, a.cluster_port))
        .collect();
    if routes.is_empty() {
        // JetStream refuses to start clustered without a configured route; a route to ourselves
        // satisfies it (nats-server recognises and drops it) until the others connect to us.
        let host = listen.rsplit_once(':').map(|(h, _)| h).unwrap_or("0.0.0.0");
        let host = if matches!(host, "0.0.0.0" | "[::]" | "::" | "") {
            "127.0.0.1"
        } else {
            host
        };
        let port = listen.rsplit_once(':').map(|(_, p)| p).unwrap_or("6222");
        routes.push(format!("nats://{host}:{port}"));
    }
    (listen, routes)
}

/// A secured configuration: its text, (credentials directory, files created), the secrets in it.
type SecureText = (String, (PathBuf, Vec<PathBuf>), Vec<String>);

/// What the secured layout needs besides the flags.
struct SecureInputs<'a> {
    creds: &'a secure::Credentials,
    names: &'a pyoco_core::resources::Names,
    yaml: Option<&'a bootstrap_yaml::BootstrapYaml>,
    /// bootstrap.yaml's (app, system) user passwords, from their `password_env`.
    yaml_passwords: Option<(String, String)>,
}

/// The secured configuration (one node, or a cluster member when `cluster` is given).
fn secure_conf(
    a: &UpArgs,
    cluster: Option<&str>,
    server_name: Option<&str>,
    datafolder: &Path,
    http_host: &str,
    s: &SecureInputs,
) -> CtlResult<String> {
    let mut lines = vec![
        "# Written by `pyococtl up` at every start; edit the command line, not this file."
            .to_string(),
        "# It holds passwords (from the --auth-dir files): mode 0600.".to_string(),
    ];
    if let Some(n) = server_name {
        lines.push(format!("server_name: {}", q(n)));
    }
    // One node listens on loopback unless asked; a cluster member on every interface.
    let host = match (&a.client_host, cluster) {
        (Some(h), _) => Some(h.clone()),
        (None, None) => Some("127.0.0.1".to_string()),
        (None, Some(_)) => None,
    };
    if let Some(h) = &host {
        lines.push(format!("host: {}", q(h)));
    }
    lines.push(format!("port: {}", a.client_port));
    lines.push(format!(
        "http: {}",
        q(&format!("{}:{}", bracket(http_host), a.http_port))
    ));
    lines.push(format!(
        "jetstream: {{ store_dir: {} }}",
        q(&datafolder.display().to_string())
    ));
    if let Some(adv) = s.yaml.and_then(|y| y.advertise_client.as_deref()) {
        lines.push(format!("client_advertise: {}", q(adv)));
    }
    let (app_account, sys_account) = match s.yaml {
        Some(y) => (y.app_account.name.as_str(), y.system_account.name.as_str()),
        None => (secure::APP_ACCOUNT, secure::SYS_ACCOUNT),
    };
    let mut app_extra = Vec::new();
    let mut sys_extra = Vec::new();
    let mut creds = s.creds.clone();
    if let (Some(y), Some((app_pw, sys_pw))) = (s.yaml, &s.yaml_passwords) {
        for (label, user) in [
            ("app_account", &y.app_account.user),
            ("system_account", &y.system_account.user),
        ] {
            if [
                secure::GATEWAY.user,
                secure::WORKER.user,
                secure::ADMIN.user,
                secure::ROUTE.user,
            ]
            .contains(&user.as_str())
            {
                return Err(usage(format!(
                    "--bootstrap-config {}: {label}.user {user:?} is one of pyococtl's role users\n- fix: give the nats-bootstrap user another name",
                    y.path.display()
                )));
            }
        }
        app_extra.push((y.app_account.user.clone(), q(app_pw)));
        if y.system_account.user == secure::SYSTEM.user {
            // Their `system` user keeps its password (their controller keeps working).
            creds.system = sys_pw.clone();
        } else {
            sys_extra.push((y.system_account.user.clone(), q(sys_pw)));
        }
    }
    if let Some(user) = &a.sys_user {
        check_sys_user(a, user)?;
        if user == secure::SYSTEM.user {
            return Err(usage(
                "--sys-user system: the secured layout already has the system user `system` (password in system.password); leave --sys-user out",
            ));
        }
        sys_extra.push((user.clone(), format!("${}", a.sys_password_env)));
    }
    lines.push(String::new());
    lines.extend(secure::accounts_text(
        &creds,
        s.names,
        app_account,
        sys_account,
        &app_extra,
        &sys_extra,
    ));
    if let Some(cluster) = cluster {
        let (listen, routes) = listen_and_routes(a);
        lines.extend([
            String::new(),
            "cluster {".to_string(),
            format!("  name: {}", q(cluster)),
            format!("  listen: {}", q(&listen)),
        ]);
        if let Some(adv) = s.yaml.and_then(|y| y.advertise_cluster.as_deref()) {
            lines.push(format!("  advertise: {}", q(adv)));
        }
        lines.push(
            "  # Only members knowing the route password may connect as a route.".to_string(),
        );
        lines.push(format!(
            "  authorization {{ user: {}, password: {} }}",
            q(secure::ROUTE.user),
            q(&s.creds.route)
        ));
        lines.push("  routes = [".to_string());
        for r in &routes {
            lines.push(format!(
                "    {}",
                q(&secure::route_with_credentials(r, &s.creds.route))
            ));
        }
        lines.push("  ]".to_string());
        lines.push("}".to_string());
    }
    lines.push(String::new());
    Ok(lines.join("\n"))
}

fn bracket(host: &str) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

fn check_sys_user(a: &UpArgs, user: &str) -> CtlResult<()> {
    if user.trim().is_empty() {
        return Err(usage("--sys-user must not be empty"));
    }
    if user.contains('"') || user.contains('\\') {
        return Err(usage(
            "--sys-user: a plain user name, without quotes or backslashes",
        ));
    }
    if !is_identifier(&a.sys_password_env) {
        return Err(usage(format!(
            "--sys-password-env {}: must be an environment variable name",
            a.sys_password_env
        )));
    }
    Ok(())
}

pub fn plan(ctx: &Ctx, a: &UpArgs, join: bool) -> CtlResult<Plan> {
    let cmd = if join { "join" } else { "up" };
    // nats-bootstrap 0.1.0's bootstrap.yaml: its values fill in the flags.
    let yaml = match &a.bootstrap_config {
        Some(p) if bootstrap_yaml::is_yaml(&super::expand_tilde(p)) => {
            Some(bootstrap_yaml::load(&super::expand_tilde(p))?)
        }
        _ => None,
    };
    let mut eff = a.clone();
    if let Some(y) = &yaml {
        let shown = y.path.display();
        let given: Vec<&str> = [
            ("--cluster", a.cluster.is_some()),
            (
                "--datafolder",
                a.datafolder != Path::new(super::DEFAULT_DATAFOLDER),
            ),
            ("--listen", a.listen.is_some()),
            ("--client-port", a.client_port != 4222),
            ("--http-port", a.http_port != 8222),
            ("--cluster-port", a.cluster_port != 6222),
            ("--nats-config", a.nats_config.is_some()),
            ("--insecure", a.insecure),
            ("--sys-user", a.sys_user.is_some()),
        ]
        .into_iter()
        .filter_map(|(f, g)| g.then_some(f))
        .collect();
        if !given.is_empty() {
            return Err(usage(format!(
                "--bootstrap-config {shown} cannot be combined with {}: the file sets the cluster, data folder, ports and accounts\n- fix: put the values into the file, or leave --bootstrap-config out",
                given.join(", ")
            )));
        }
        eff.cluster = Some(y.cluster.clone());
        eff.datafolder = y.datafolder.clone();
        eff.client_port = y.client_port.unwrap_or(4222);
        eff.http_port = y.http_port.unwrap_or(8222);
        eff.cluster_port = y.cluster_port.unwrap_or(6222);
    }
    let a = &eff;
    // Every flag value that lands in the generated configuration: one short line.
    let conf_values = [
        ("--cluster", a.cluster.as_deref()),
        ("--server-name", a.server_name.as_deref()),
        ("--client-host", a.client_host.as_deref()),
        ("--http-host", a.http_host.as_deref()),
        ("--listen", a.listen.as_deref()),
    ];
    for (flag, v) in conf_values
        .into_iter()
        .chain(a.seeds.iter().map(|s| ("--seed", Some(s.as_str()))))
    {
        if let Some(v) = v {
            if v.len() > 256 || v.chars().any(char::is_control) {
                return Err(usage(format!(
                    "{flag}: the value is longer than 256 characters or holds control characters (it goes into the nats-server configuration)\n- fix: give a plain name or address"
                )));
            }
        }
    }
    if let Some(c) = &a.cluster {
        if c.trim().is_empty() {
            return Err(usage("--cluster must not be empty"));
        }
        if a.nats_config.is_some() {
            return Err(usage("--cluster cannot be used with --nats-config"));
        }
        if join && a.seeds.is_empty() {
            return Err(usage(format!(
                "--seed is required for join when bootstrap mode is used\n- example: pyococtl {cmd} --cluster {c} --seed 10.0.0.1"
            )));
        }
    } else {
        if !a.seeds.is_empty() {
            return Err(usage("--seed needs --cluster (bootstrap mode)"));
        }
        if a.sys_user.is_some() {
            return Err(usage("--sys-user needs --cluster (bootstrap mode)"));
        }
    }
    if a.sys_user.is_some() && std::env::var_os(&a.sys_password_env).is_none() && !a.dry_run {
        return Err(usage(format!(
            "--sys-user needs the password in the environment variable {} (nats-server reads it from there)\n- example: {}=… pyococtl {cmd} --cluster … --sys-user sys",
            a.sys_password_env, a.sys_password_env
        )));
    }
    let datafolder = super::absolute(&a.datafolder);
    if datafolder.exists() && !datafolder.is_dir() {
        return Err(usage(format!(
            "--datafolder must be a directory: {}",
            datafolder.display()
        )));
    }
    if let Some(c) = &a.nats_config {
        if !c.is_file() {
            return Err(usage(format!(
                "--nats-config {}: no such file",
                c.display()
            )));
        }
    }

    let json_config = if yaml.is_some() {
        None
    } else {
        a.bootstrap_config.as_deref()
    };
    let bc = resolve::load_bootstrap_config(json_config)?;
    let (binary, attempts) =
        resolve::resolve_nats_server(a.nats_server_path.as_deref(), &bc, &ctx.config.python);
    let binary = binary.ok_or_else(|| resolve::not_found_error(&attempts))?;

    let raw = a.nats_args.clone();
    let raw_pid = pid_in_args(&raw);
    let pid_file = match (&raw_pid, &a.pid_file) {
        (Some(p), _) => super::absolute(p),
        (None, Some(p)) => super::absolute(p),
        (None, None) => datafolder.join(PID_FILE_NAME),
    };
    let generated = a.nats_config.is_none() && (a.cluster.is_some() || raw.is_empty());
    let secured = generated && !a.insecure;
    let mut warnings = Vec::new();
    if a.insecure && generated {
        warnings.push("warning: --insecure: this NATS accepts anonymous clients with full access (client and route ports, monitoring on all interfaces); use it only while migrating, then restart without --insecure".to_string());
    }
    let http_host = a
        .http_host
        .clone()
        .unwrap_or_else(|| "127.0.0.1".to_string());
    let (mut auth, mut secrets) = (None, Vec::new());
    let secure_text = |cluster: Option<&str>, name: Option<&str>| -> CtlResult<SecureText> {
        let dir = super::absolute(
            &a.auth_dir
                .clone()
                .unwrap_or_else(|| datafolder.join("auth")),
        );
        let (creds, created) = if a.check_only {
            (secure::Credentials::placeholder(&dir), Vec::new())
        } else {
            secure::load_or_create(&dir)?
        };
        let yaml_passwords = match &yaml {
            // The unit reads them from its environment file at start, not now.
            Some(_) if a.check_only => Some((
                "placeholder-not-a-password".to_string(),
                "placeholder-not-a-password".to_string(),
            )),
            Some(y) => Some((
                bootstrap_yaml::password(&y.path, "app_account", &y.app_account)?,
                bootstrap_yaml::password(&y.path, "system_account", &y.system_account)?,
            )),
            None => None,
        };
        let names = pyoco_core::resources::Names::from_config(&ctx.config);
        let inputs = SecureInputs {
            creds: &creds,
            names: &names,
            yaml: yaml.as_ref(),
            yaml_passwords: yaml_passwords.clone(),
        };
        let text = secure_conf(a, cluster, name, &datafolder, &http_host, &inputs)?;
        let mut secrets = vec![
            creds.gateway.clone(),
            creds.worker.clone(),
            creds.admin.clone(),
            creds.system.clone(),
            creds.route.clone(),
        ];
        if let Some((x, y)) = yaml_passwords {
            secrets.extend([x, y]);
        }
        Ok((text, (dir, created), secrets))
    };
    let mut args: Vec<OsString> = Vec::new();
    let (mode, conf_path, conf_text, ready_url);
    if let Some(cluster) = &a.cluster {
        mode = "cluster";
        let name = a.server_name.clone().unwrap_or_else(super::hostname);
        let text = if secured {
            let (text, au, sec) = secure_text(Some(cluster.trim()), Some(&name))?;
            auth = Some(au);
            secrets = sec;
            text
        } else {
            bootstrap_conf(a, cluster.trim(), &name, &datafolder)?
        };
        let path = datafolder.join(CONF_FILE_NAME);
        args.push("-c".into());
        args.push(path.clone().into());
        let monitor_host = if secured || a.http_host.is_some() {
            Some(http_host.as_str())
        } else {
            a.client_host.as_deref()
        };
        ready_url = format!("http://{}:{}", reach(monitor_host), a.http_port);
        conf_path = Some(path);
        conf_text = Some(text);
    } else if let Some(c) = &a.nats_config {
        mode = "nats-config";
        args.push("-c".into());
        args.push(super::absolute(c).into());
        if let Some(n) = &a.server_name {
            args.extend(["-n".into(), n.into()]);
        }
        ready_url = format!(
            "http://127.0.0.1:{}",
            monitor_in_args(&raw).unwrap_or(a.http_port)
        );
        conf_path = None;
        conf_text = None;
    } else if !raw.is_empty() {
        mode = "raw";
        ready_url = format!(
            "http://127.0.0.1:{}",
            monitor_in_args(&raw).unwrap_or(a.http_port)
        );
        conf_path = None;
        conf_text = None;
    } else if secured {
        mode = "single";
        let (text, au, sec) = secure_text(None, a.server_name.as_deref())?;
        auth = Some(au);
        secrets = sec;
        let path = datafolder.join(CONF_FILE_NAME);
        args.push("-c".into());
        args.push(path.clone().into());
        ready_url = format!("http://{}:{}", reach(Some(&http_host)), a.http_port);
        conf_path = Some(path);
        conf_text = Some(text);
    } else {
        mode = "single";
        let host = a
            .client_host
            .clone()
            .unwrap_or_else(|| "127.0.0.1".to_string());
        args.extend(["-js".into(), "-sd".into(), datafolder.clone().into()]);
        args.extend(["-a".into(), host.clone().into()]);
        args.extend([
            "-p".into(),
            a.client_port.to_string().into(),
            "-m".into(),
            a.http_port.to_string().into(),
        ]);
        if let Some(h) = &a.http_host {
            args.extend(["--http_host".into(), h.into()]);
        }
        if let Some(n) = &a.server_name {
            args.extend(["-n".into(), n.into()]);
        }
        ready_url = format!(
            "http://{}:{}",
            reach(Some(a.http_host.as_deref().unwrap_or(&host))),
            a.http_port
        );
        conf_path = None;
        conf_text = None;
    }
    args.extend(raw.iter().map(OsString::from));
    if raw_pid.is_none() {
        args.push("-P".into());
        args.push(pid_file.clone().into());
    }
    Ok(Plan {
        mode,
        binary,
        args,
        conf_path,
        conf_text,
        pid_file,
        datafolder,
        ready_url: a
            .ready_url
            .clone()
            .unwrap_or(ready_url)
            .trim_end_matches('/')
            .to_string(),
        auth,
        secrets,
        warnings,
    })
}

/// `pyococtl nats-credentials`: create the missing files, report which.
pub fn nats_credentials(ctx: &Ctx, a: &super::NatsCredentialsArgs) -> CtlResult<u8> {
    let dir = super::absolute(
        &a.dir
            .clone()
            .unwrap_or_else(secure::packaged_credentials_dir),
    );
    let created = secure::ensure_files(&dir)?;
    // Every file must be usable by `up` (an operator may have written a bad one).
    for r in secure::ROLES {
        secure::read_password(&dir.join(r.file))?;
    }
    let name = |p: &PathBuf| {
        p.file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let created_names: Vec<String> = created.iter().map(name).collect();
    let present: Vec<&str> = secure::ROLES
        .iter()
        .map(|r| r.file)
        .filter(|f| !created_names.iter().any(|c| c == f))
        .collect();
    if a.json || ctx.output(OutputFormat::Table) == OutputFormat::Json {
        crate::output::print_json(&json!({
            "dir": dir,
            "created": created_names,
            "present": present,
        }));
    } else {
        for c in &created {
            println!("created: {}", c.display());
        }
        println!(
            "nats-credentials: {} created, {} already present in {}",
            created.len(),
            present.len(),
            dir.display()
        );
    }
    Ok(exit::OK)
}

fn command_line(p: &Plan) -> String {
    std::iter::once(p.binary.path.display().to_string())
        .chain(p.args.iter().map(|a| {
            let s = a.to_string_lossy();
            if s.contains(' ') {
                format!("'{s}'")
            } else {
                s.into_owned()
            }
        }))
        .collect::<Vec<_>>()
        .join(" ")
}

pub async fn up(ctx: &Ctx, a: &UpArgs, join: bool) -> CtlResult<u8> {
    let p = plan(ctx, a, join)?;
    if !a.dry_run {
        // A second server would overwrite the PID file and fail on the ports, leaving the file
        // naming a dead process: refuse instead.
        if let PidState::Running(pid) = read_pid_file(&p.pid_file) {
            return Err(CtlError::new(
                exit::ERROR,
                format!(
                    "nats-server is already running (pid {pid}, PID file {}); stop it first: pyococtl down --confirm --pid-file {}",
                    p.pid_file.display(),
                    p.pid_file.display()
                ),
            ));
        }
    }
    std::fs::create_dir_all(&p.datafolder).map_err(|e| {
        CtlError::new(
            exit::ERROR,
            format!(
                "cannot create the data folder {}: {e}",
                p.datafolder.display()
            ),
        )
    })?;
    if let Some(parent) = p.pid_file.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    if let (Some(path), Some(text)) = (&p.conf_path, &p.conf_text) {
        // 0600 either way: the secured one holds passwords, an open one is replaced in place.
        secure::write_private(path, text)?;
    }
    let line = command_line(&p);
    if a.dry_run {
        if ctx.output(OutputFormat::Table) == OutputFormat::Json {
            crate::output::print_json(&json!({
                "mode": p.mode,
                "nats_server": p.binary.path,
                "source": p.binary.source,
                "version": p.binary.version,
                "args": p.args.iter().map(|s| s.to_string_lossy().into_owned()).collect::<Vec<_>>(),
                "config_file": p.conf_path,
                "config": p.conf_shown(),
                "secured": p.auth.is_some(),
                "auth_dir": p.auth.as_ref().map(|(d, _)| d),
                "created_credentials": p.auth.as_ref().map(|(_, c)| c),
                "pid_file": p.pid_file,
                "datafolder": p.datafolder,
                "ready_url": p.ready_url,
            }));
        } else {
            for w in &p.warnings {
                eprintln!("{w}");
            }
            if let Some((dir, created)) = &p.auth {
                println!("credentials: {} ({} created)", dir.display(), created.len());
            }
            if let Some(path) = &p.conf_path {
                println!("config: {} (written)", path.display());
            }
            println!("pid-file: {}", p.pid_file.display());
            println!("command: {line}");
        }
        return Ok(exit::OK);
    }
    if let Some(v) = &p.binary.version_error {
        eprintln!("warning: {v}");
    }
    for w in &p.warnings {
        eprintln!("{w}");
    }
    if let Some((dir, created)) = &p.auth {
        for c in created {
            eprintln!("up: created {}", c.display());
        }
        eprintln!(
            "up: secured: users {}, {}, {} (account {}), passwords in {}",
            secure::GATEWAY.user,
            secure::WORKER.user,
            secure::ADMIN.user,
            secure::APP_ACCOUNT,
            dir.display()
        );
    }
    if let Some(path) = &p.conf_path {
        eprintln!("up: wrote {}", path.display());
    }
    eprintln!(
        "up: nats-server {} ({}, source {}), PID file {}",
        p.binary.version.as_deref().unwrap_or("(version unknown)"),
        p.binary.path.display(),
        p.binary.source,
        p.pid_file.display()
    );
    eprintln!("up: {line}");
    let mut cmd = Command::new(&p.binary.path);
    cmd.args(&p.args);
    if !a.wait_ready {
        let err = cmd.exec();
        return Err(CtlError::new(
            exit::ERROR,
            format!("cannot start {}: {err}", p.binary.path.display()),
        ));
    }
    supervise(cmd, &p, Duration::from_secs(a.ready_timeout)).await
}

/// Kills the child (SIGTERM, then SIGKILL) if `up --wait-ready` ends without it having exited —
/// e.g. when Ctrl-C ends pyococtl's main loop first.
struct ChildGuard {
    child: std::process::Child,
    done: bool,
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        if let Ok(None) = self.child.try_wait() {
            let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

async fn supervise(mut cmd: Command, p: &Plan, ready_timeout: Duration) -> CtlResult<u8> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())
        .map_err(|e| CtlError::new(exit::ERROR, format!("signal handler: {e}")))?;
    let mut int = signal(SignalKind::interrupt())
        .map_err(|e| CtlError::new(exit::ERROR, format!("signal handler: {e}")))?;
    let mut hup = signal(SignalKind::hangup())
        .map_err(|e| CtlError::new(exit::ERROR, format!("signal handler: {e}")))?;
    let child = cmd.spawn().map_err(|e| {
        CtlError::new(
            exit::ERROR,
            format!("cannot start {}: {e}", p.binary.path.display()),
        )
    })?;
    let pid = Pid::from_raw(child.id() as i32);
    let mut guard = ChildGuard { child, done: false };
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .no_proxy()
        .build()
        .map_err(|e| CtlError::new(exit::ERROR, format!("HTTP client: {e}")))?;
    let health = format!("{}/healthz?js-enabled-only=true", p.ready_url);
    let deadline = Instant::now() + ready_timeout;
    let mut ready = false;
    let mut stopping = false;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            _ = term.recv() => { stopping = true; let _ = kill(pid, Signal::SIGTERM); }
            _ = int.recv() => { stopping = true; let _ = kill(pid, Signal::SIGINT); }
            _ = hup.recv() => { let _ = kill(pid, Signal::SIGHUP); }
            _ = tick.tick() => {
                if let Ok(Some(st)) = guard.child.try_wait() {
                    guard.done = true;
                    if !ready && !stopping {
                        return Err(CtlError::new(exit::ERROR, format!("nats-server exited before it was ready ({st})")));
                    }
                    eprintln!("up: nats-server exited ({st})");
                    // nats-server 2.9 exits 1 on SIGTERM: a requested stop is a clean stop.
                    return Ok(if stopping || st.success() { exit::OK } else { st.code().map(|c| c.clamp(1, 255) as u8).unwrap_or(exit::ERROR) });
                }
                if !ready && !stopping {
                    if matches!(http.get(&health).send().await, Ok(r) if r.status().is_success()) {
                        ready = true;
                        println!("ready");
                        pyoco_core::systemd::notify_ready(&format!("nats-server ready (pid {pid})"));
                    } else if Instant::now() >= deadline {
                        let _ = kill(pid, Signal::SIGTERM);
                        return Err(CtlError::new(exit::ERROR, format!(
                            "nats-server not ready after {} s ({health} did not answer ok); stopped it",
                            ready_timeout.as_secs()
                        )));
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// PID files and down

/// Where the packages' `pyoco-nats.service` keeps its data (and PID file).
pub const PACKAGED_DATAFOLDER: &str = "/var/lib/pyoco/nats";

/// The data folder of `--datafolder`; when it is left at its default and `./nats-bootstrap-data`
/// does not exist, the packaged unit's `/var/lib/pyoco/nats` (when it exists).
pub fn effective_datafolder(a: &PidArgs) -> PathBuf {
    let given = super::absolute(&a.datafolder);
    if a.datafolder == Path::new(super::DEFAULT_DATAFOLDER)
        && !given.exists()
        && Path::new(PACKAGED_DATAFOLDER).is_dir()
    {
        return PathBuf::from(PACKAGED_DATAFOLDER);
    }
    given
}

/// The PID file: `--pid-file`, else `<datafolder>/nats-server.pid` (see [`effective_datafolder`]);
/// nats-bootstrap's `./nats-server.pid` when only that one exists.
pub fn pid_file_path(a: &PidArgs) -> PathBuf {
    if let Some(p) = &a.pid_file {
        return super::absolute(p);
    }
    let ours = effective_datafolder(a).join(PID_FILE_NAME);
    let legacy = super::absolute(Path::new(PID_FILE_NAME));
    if !ours.exists() && a.datafolder == Path::new(super::DEFAULT_DATAFOLDER) && legacy.exists() {
        legacy
    } else {
        ours
    }
}

/// What a PID file says.
#[derive(Debug, Clone)]
pub enum PidState {
    Missing,
    Unreadable(String),
    Invalid(String),
    /// No such process.
    Stale(i32),
    /// A live process that is not nats-server (the PID was reused).
    NotNats(i32, String),
    /// A live nats-server we may not signal.
    NotPermitted(i32),
    Running(i32),
}

impl PidState {
    pub fn label(&self) -> String {
        match self {
            PidState::Missing => "missing".into(),
            PidState::Unreadable(e) => format!("unreadable: {e}"),
            PidState::Invalid(c) => format!("invalid content {c:?}"),
            PidState::Stale(p) => format!("stale: no process {p}"),
            PidState::NotNats(p, c) => format!("stale: pid {p} is `{c}`, not nats-server"),
            PidState::NotPermitted(p) => format!("pid {p} running, not permitted to signal it"),
            PidState::Running(p) => format!("running, pid {p}"),
        }
    }
    pub fn json(&self) -> Value {
        let (state, pid) = match self {
            PidState::Missing => ("missing", None),
            PidState::Unreadable(_) => ("unreadable", None),
            PidState::Invalid(_) => ("invalid", None),
            PidState::Stale(p) => ("stale", Some(*p)),
            PidState::NotNats(p, _) => ("not-nats-server", Some(*p)),
            PidState::NotPermitted(p) => ("not-permitted", Some(*p)),
            PidState::Running(p) => ("running", Some(*p)),
        };
        json!({"state": state, "pid": pid, "detail": self.label()})
    }
}

/// `/proc/<pid>/stat`'s state letter and the command name (`comm`).
fn proc_state(pid: i32) -> Option<(char, String)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat[open + 1..close].to_string();
    let state = stat[close + 1..].trim_start().chars().next()?;
    Some((state, comm))
}

fn alive(pid: i32) -> bool {
    match kill(Pid::from_raw(pid), None) {
        Err(nix::errno::Errno::ESRCH) => false,
        _ => !matches!(proc_state(pid), Some(('Z', _)) | Some(('X', _))),
    }
}

pub fn read_pid_file(path: &Path) -> PidState {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return PidState::Missing,
        Err(e) => return PidState::Unreadable(e.to_string()),
    };
    let t = text.trim();
    let pid: i32 = match t.parse() {
        Ok(p) if p > 1 => p,
        _ => return PidState::Invalid(t.chars().take(40).collect()),
    };
    if !alive(pid) {
        return PidState::Stale(pid);
    }
    if let Some((_, comm)) = proc_state(pid) {
        if !comm.contains("nats") {
            return PidState::NotNats(pid, comm);
        }
    }
    match kill(Pid::from_raw(pid), None) {
        Err(nix::errno::Errno::EPERM) => PidState::NotPermitted(pid),
        _ => PidState::Running(pid),
    }
}

/// The systemd unit a process runs in, if any (from /proc/<pid>/cgroup).
fn systemd_unit_of(pid: i32) -> Option<String> {
    let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    cg.lines()
        .filter_map(|l| l.rsplit(':').next())
        .flat_map(|p| p.split('/'))
        .find(|seg| seg.ends_with(".service") && !seg.starts_with("user@"))
        .map(str::to_string)
}

/// Stops the nats-server of a PID file. Errors (exit 1) leave everything as it was.
pub async fn stop_from_pid_file(path: &Path, timeout: Duration, who: &str) -> CtlResult<String> {
    let fail = |what: String, hint: Option<String>| {
        CtlError::new(
            exit::ERROR,
            format!(
                "{who}: {what}; nothing was stopped{}",
                hint.map(|h| format!("\n- hint: {h}")).unwrap_or_default()
            ),
        )
    };
    let shown = path.display();
    let pid = match read_pid_file(path) {
        PidState::Running(pid) => pid,
        PidState::Missing => {
            return Err(fail(
                format!("PID file not found: {shown}"),
                Some("`pyococtl up` writes it (default <datafolder>/nats-server.pid); point at it with --pid-file or --datafolder".into()),
            ))
        }
        PidState::Unreadable(e) => return Err(fail(format!("cannot read the PID file {shown}: {e}"), None)),
        PidState::Invalid(c) => return Err(fail(format!("invalid PID file {shown}: {c:?} is not a process id"), Some(format!("remove it: rm {shown}")))),
        PidState::Stale(p) => {
            return Err(fail(
                format!("stale PID file {shown}: no process {p} (the server is not running)"),
                Some(format!("remove it: rm {shown}")),
            ))
        }
        PidState::NotNats(p, c) => {
            return Err(fail(
                format!("stale PID file {shown}: process {p} is `{c}`, not nats-server"),
                Some(format!("remove it: rm {shown}")),
            ))
        }
        PidState::NotPermitted(p) => {
            return Err(fail(format!("not permitted to signal process {p} (PID file {shown})"), Some("run as the server's user or root".into())))
        }
    };
    if let Some(unit) = systemd_unit_of(pid) {
        eprintln!("{who}: note: pid {pid} runs in the systemd unit {unit}; it may be restarted — prefer `systemctl stop {unit}`");
    }
    kill(Pid::from_raw(pid), Signal::SIGTERM)
        .map_err(|e| fail(format!("SIGTERM to {pid}: {e}"), None))?;
    let start = Instant::now();
    let mut killed = false;
    while alive(pid) {
        if !killed && start.elapsed() >= timeout {
            eprintln!(
                "{who}: pid {pid} still running after {} s; sending SIGKILL",
                timeout.as_secs()
            );
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            killed = true;
        }
        if killed && start.elapsed() >= timeout + Duration::from_secs(10) {
            return Err(CtlError::new(
                exit::ERROR,
                format!("{who}: pid {pid} did not exit after SIGKILL"),
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // nats-server leaves its PID file behind; remove it when it still names the stopped process.
    if std::fs::read_to_string(path)
        .ok()
        .and_then(|t| t.trim().parse::<i32>().ok())
        == Some(pid)
    {
        let _ = std::fs::remove_file(path);
    }
    Ok(if killed {
        format!("pid {pid} killed after {} s", timeout.as_secs())
    } else {
        format!("pid {pid} stopped")
    })
}

pub async fn down(a: &super::DownArgs) -> CtlResult<u8> {
    if !a.confirm {
        return Err(super::confirm_required("pyococtl down --confirm"));
    }
    let path = pid_file_path(&a.pid);
    let what = stop_from_pid_file(&path, Duration::from_secs(a.timeout), "down").await?;
    println!("down: ok ({what})");
    Ok(exit::OK)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        up: UpArgs,
    }

    fn args(v: &[&str]) -> UpArgs {
        T::parse_from(std::iter::once("t").chain(v.iter().copied())).up
    }

    #[test]
    fn seeds() {
        assert_eq!(normalize_seed("10.0.0.1", 6222), "nats://10.0.0.1:6222");
        assert_eq!(
            normalize_seed("10.0.0.1:7000", 6222),
            "nats://10.0.0.1:7000"
        );
        assert_eq!(normalize_seed("nats-route://a:1", 6222), "nats-route://a:1");
        assert_eq!(normalize_seed(" h ", 1), "nats://h:1");
    }

    #[test]
    fn conf_text() {
        let a = args(&[
            "--cluster",
            "demo",
            "--seed",
            "h1",
            "--seed",
            "h2:7000",
            "--listen",
            "10.0.0.5",
            "--cluster-port",
            "6000",
        ]);
        let c = bootstrap_conf(&a, "demo", "n\"1", Path::new("/d")).unwrap();
        assert!(c.contains("server_name: \"n\\\"1\"\n"), "{c}");
        assert!(
            c.contains("port: 4222\nhttp: 8222\njetstream: { store_dir: \"/d\" }"),
            "{c}"
        );
        assert!(c.contains("listen: \"10.0.0.5:6000\""), "{c}");
        assert!(
            c.contains("\"nats://h1:6000\"") && c.contains("\"nats://h2:7000\""),
            "{c}"
        );
        assert!(!c.contains("accounts"));
        let a = args(&["--cluster", "demo", "--sys-user", "sys"]);
        let c = bootstrap_conf(&a, "demo", "n1", Path::new("/d")).unwrap();
        assert!(c.contains("password: $NATS_SYS_PASSWORD"), "{c}");
        assert!(c.contains("system_account: SYS"), "{c}");
        assert!(c.contains("\"nats://127.0.0.1:6222\""), "self route: {c}");
    }

    #[test]
    fn secured_cluster_conf() {
        let a = args(&["--cluster", "demo", "--seed", "h1", "--listen", "10.0.0.5"]);
        let creds = secure::Credentials::placeholder(Path::new("/auth"));
        let names =
            pyoco_core::resources::Names::from_config(&pyoco_core::config::Config::defaults());
        let inputs = SecureInputs {
            creds: &creds,
            names: &names,
            yaml: None,
            yaml_passwords: None,
        };
        let c = secure_conf(
            &a,
            Some("demo"),
            Some("n1"),
            Path::new("/d"),
            "127.0.0.1",
            &inputs,
        )
        .unwrap();
        assert!(c.contains("http: \"127.0.0.1:8222\""), "{c}");
        assert!(
            !c.contains("host: "),
            "a member listens for clients everywhere: {c}"
        );
        assert!(!c.contains("no_auth_user"), "{c}");
        assert!(c.contains("system_account: SYS"), "{c}");
        assert!(
            c.contains(
                "authorization { user: \"pyoco-route\", password: \"placeholder-not-a-password\" }"
            ),
            "{c}"
        );
        assert!(
            c.contains("\"nats://pyoco-route:placeholder-not-a-password@h1:6222\""),
            "{c}"
        );
        for user in ["pyoco-gateway", "pyoco-worker", "pyoco-admin", "system"] {
            assert!(c.contains(&format!("user: \"{user}\"")), "{user}: {c}");
        }
        // --sys-user adds a system user read from the environment, as before.
        let a = args(&["--cluster", "demo", "--sys-user", "sys"]);
        let c = secure_conf(
            &a,
            Some("demo"),
            None,
            Path::new("/d"),
            "127.0.0.1",
            &inputs,
        )
        .unwrap();
        assert!(c.contains("password: $NATS_SYS_PASSWORD"), "{c}");
    }

    #[test]
    fn raw_flags() {
        let v: Vec<String> = ["-js", "-P", "/x.pid", "-m", "9"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(pid_in_args(&v), Some(PathBuf::from("/x.pid")));
        assert_eq!(monitor_in_args(&v), Some(9));
        let v: Vec<String> = ["--pid=/y"].iter().map(|s| s.to_string()).collect();
        assert_eq!(pid_in_args(&v), Some(PathBuf::from("/y")));
    }
}
