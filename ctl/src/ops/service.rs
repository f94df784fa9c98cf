//! `service install|uninstall|status`: a systemd unit that runs `pyococtl up --wait-ready …`.
//!
//! systemd counts as present when it runs as init (`/run/systemd/system` exists) or when
//! `PYOCO_SYSTEMCTL` names a systemctl to use (tests, containers with a systemctl shim).
//! Without it, the unit file is still written or removed, and the systemctl steps are printed
//! for later instead of run.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use clap::Args;
use serde_json::{json, Value};

use super::{ServiceCmd, UpArgs, DEFAULT_DATAFOLDER, DEFAULT_SERVICE_NAME};
use crate::client::{CtlError, CtlResult};
use crate::{exit, Ctx, OutputFormat};

#[derive(Debug, Clone, Args)]
pub struct UnitArgs {
    /// Unit name (without .service).
    #[arg(long, default_value = DEFAULT_SERVICE_NAME)]
    pub service_name: String,
    /// Where unit files live [default: /etc/systemd/system; ~/.config/systemd/user with --user].
    #[arg(long, value_name = "DIR")]
    pub unit_dir: Option<PathBuf>,
    /// A user unit (systemctl --user).
    #[arg(long)]
    pub user: bool,
}

#[derive(Debug, Clone, Args)]
#[command(
    after_help = "Every `up` option given here is baked into ExecStart (the data folder defaults to /var/lib/<service-name>,\n\
or ~/.local/state/<service-name> with --user). The unit is Type=notify: `systemctl start` returns once JetStream answers.\n\
Secrets (NATS_SYS_PASSWORD for --sys-user) go into the optional EnvironmentFile /etc/pyoco/<service-name>.env.\n\
--dry-run prints the unit without writing anything.\n\n\
Examples:\n  pyococtl service install --enable\n  pyococtl service install --cluster pyoco --server-name n1 --seed 10.0.0.2 --seed 10.0.0.3 --sys-user sys --enable\n  pyococtl service install --user --unit-dir /tmp/units --dry-run"
)]
pub struct InstallArgs {
    #[command(flatten)]
    pub unit: UnitArgs,
    /// Run the server as this user (User=/Group=); it must own the data folder.
    #[arg(long, value_name = "USER")]
    pub run_as: Option<String>,
    /// Also `systemctl enable --now` the unit.
    #[arg(long)]
    pub enable: bool,
    /// Replace an existing, different unit file.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub up: UpArgs,
}

/// How to reach systemd.
#[derive(Debug, Clone)]
pub struct Systemd {
    systemctl: Option<PathBuf>,
    user: bool,
}

/// `systemctl is-active` / `is-enabled` of one unit.
#[derive(Debug, Clone)]
pub struct UnitState {
    pub unit: String,
    pub active: String,
    pub enabled: String,
}

impl UnitState {
    pub fn json(&self) -> Value {
        json!({"unit": self.unit, "active": self.active, "enabled": self.enabled})
    }
}

impl Systemd {
    pub fn detect(user: bool) -> Systemd {
        if let Some(p) = std::env::var_os("PYOCO_SYSTEMCTL").filter(|p| !p.is_empty()) {
            return Systemd {
                systemctl: Some(PathBuf::from(p)),
                user,
            };
        }
        let booted = Path::new("/run/systemd/system").is_dir();
        let systemctl = if booted {
            super::resolve::which("systemctl")
        } else {
            None
        };
        Systemd { systemctl, user }
    }

    pub fn present(&self) -> bool {
        self.systemctl.is_some()
    }

    /// Runs systemctl; (success, trimmed output).
    pub fn run(&self, args: &[&str]) -> Result<(bool, String), String> {
        let Some(sc) = &self.systemctl else {
            return Err("systemd is not running".into());
        };
        let mut cmd = Command::new(sc);
        if self.user {
            cmd.arg("--user");
        }
        cmd.args(args);
        super::resolve::run_with_timeout(&mut cmd, Duration::from_secs(60))
            .map(|(ok, out)| (ok, out.trim().to_string()))
    }

    fn first_word(&self, args: &[&str]) -> String {
        match self.run(args) {
            Ok((_, out)) => out.lines().next().unwrap_or("unknown").trim().to_string(),
            Err(e) => format!("error: {e}"),
        }
    }

    pub fn unit_state(&self, unit: &str) -> UnitState {
        let mut active = self.first_word(&["is-active", unit]);
        let enabled = self.first_word(&["is-enabled", unit]);
        if enabled == "not-found" || enabled.is_empty() {
            active = "not-found".into();
        }
        UnitState {
            unit: unit.to_string(),
            active,
            enabled: if enabled.is_empty() {
                "not-found".into()
            } else {
                enabled
            },
        }
    }

    /// pyoco-server.socket, pyoco-server.service and every pyoco-worker@ instance.
    pub fn product_units(&self) -> Vec<UnitState> {
        let mut v: Vec<UnitState> = ["pyoco-server.socket", "pyoco-server.service"]
            .iter()
            .map(|u| self.unit_state(u))
            .collect();
        if let Ok((_, out)) = self.run(&[
            "list-units",
            "--all",
            "--plain",
            "--no-legend",
            "--no-pager",
            "pyoco-worker@*",
        ]) {
            for line in out.lines() {
                let cols: Vec<&str> = line.split_whitespace().collect();
                if let Some(unit) = cols.first().filter(|u| u.starts_with("pyoco-worker@")) {
                    let enabled = self.first_word(&["is-enabled", unit]);
                    v.push(UnitState {
                        unit: unit.to_string(),
                        active: cols.get(2).unwrap_or(&"unknown").to_string(),
                        enabled,
                    });
                }
            }
        }
        v
    }
}

fn unit_dir(a: &UnitArgs) -> PathBuf {
    match &a.unit_dir {
        Some(d) => super::absolute(d),
        None if a.user => super::expand_tilde(Path::new("~/.config/systemd/user")),
        None => PathBuf::from("/etc/systemd/system"),
    }
}

fn unit_path(a: &UnitArgs) -> CtlResult<PathBuf> {
    let n = &a.service_name;
    if n.is_empty() || n.contains('/') || n.ends_with(".service") {
        return Err(CtlError::usage(
            format!("--service-name {n:?}: give the unit name without .service"),
            "pyococtl service install --service-name pyoco-nats",
        ));
    }
    Ok(unit_dir(a).join(format!("{n}.service")))
}

/// systemd's quoting of one ExecStart word.
fn sd_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=@,+".contains(c))
    {
        s.to_string()
    } else {
        format!(
            "\"{}\"",
            s.replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('$', "$$")
                .replace('%', "%%")
        )
    }
}

/// The `pyococtl up` arguments the unit runs: every option that differs from its default.
fn up_words(a: &UpArgs, datafolder: &Path) -> Vec<String> {
    let mut w: Vec<String> = vec!["up".into(), "--wait-ready".into()];
    let mut opt = |flag: &str, v: Option<String>| {
        if let Some(v) = v {
            w.push(flag.to_string());
            w.push(v);
        }
    };
    opt("--cluster", a.cluster.clone());
    for s in &a.seeds {
        opt("--seed", Some(s.clone()));
    }
    opt("--server-name", a.server_name.clone());
    opt("--datafolder", Some(datafolder.display().to_string()));
    opt("--listen", a.listen.clone());
    opt(
        "--cluster-port",
        (a.cluster_port != 6222).then(|| a.cluster_port.to_string()),
    );
    opt(
        "--client-port",
        (a.client_port != 4222).then(|| a.client_port.to_string()),
    );
    opt(
        "--http-port",
        (a.http_port != 8222).then(|| a.http_port.to_string()),
    );
    opt("--client-host", a.client_host.clone());
    opt(
        "--nats-config",
        a.nats_config
            .as_ref()
            .map(|p| super::absolute(p).display().to_string()),
    );
    opt(
        "--nats-server-path",
        a.nats_server_path
            .as_ref()
            .map(|p| super::absolute(p).display().to_string()),
    );
    opt(
        "--bootstrap-config",
        a.bootstrap_config
            .as_ref()
            .map(|p| super::absolute(p).display().to_string()),
    );
    opt(
        "--pid-file",
        a.pid_file
            .as_ref()
            .map(|p| super::absolute(p).display().to_string()),
    );
    opt(
        "--auth-dir",
        a.auth_dir
            .as_ref()
            .map(|p| super::absolute(p).display().to_string()),
    );
    opt("--http-host", a.http_host.clone());
    opt("--sys-user", a.sys_user.clone());
    opt(
        "--sys-password-env",
        (a.sys_password_env != "NATS_SYS_PASSWORD").then(|| a.sys_password_env.clone()),
    );
    opt(
        "--ready-timeout",
        (a.ready_timeout != 60).then(|| a.ready_timeout.to_string()),
    );
    opt("--ready-url", a.ready_url.clone());
    if a.insecure {
        w.push("--insecure".into());
    }
    if !a.nats_args.is_empty() {
        w.push("--".into());
        w.extend(a.nats_args.iter().cloned());
    }
    w
}

pub fn unit_text(ctx: &Ctx, a: &InstallArgs, exe: &Path) -> CtlResult<(String, PathBuf)> {
    let name = &a.unit.service_name;
    let datafolder = if a.up.datafolder == Path::new(DEFAULT_DATAFOLDER) {
        if a.unit.user {
            let state = std::env::var_os("XDG_STATE_HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| super::expand_tilde(Path::new("~/.local/state")));
            state.join(name)
        } else {
            PathBuf::from("/var/lib").join(name)
        }
    } else {
        super::absolute(&a.up.datafolder)
    };
    // The same checks `up` makes, so a unit that cannot start is not written.
    let mut probe = a.up.clone();
    probe.dry_run = true;
    probe.check_only = true;
    probe.datafolder = datafolder.clone();
    let _ = super::server::plan(ctx, &probe, false)?;

    let mut exec = vec![sd_quote(&exe.display().to_string())];
    // The unit must not depend on the caller's environment for the NATS URL / config file.
    if let Some(c) = &ctx.cli.config {
        exec.push("--config".into());
        exec.push(sd_quote(&super::absolute(c).display().to_string()));
    }
    exec.extend(up_words(&a.up, &datafolder).iter().map(|w| sd_quote(w)));
    let mut s = String::new();
    s.push_str(&format!(
        "# Written by `pyococtl service install`; change it with `pyococtl service install --force …`.\n\
[Unit]\n\
Description=NATS JetStream for pyoco-server ({name}, pyococtl up)\n\
Documentation=man:pyococtl-up(1)\n\
After=network-online.target\n\
Wants=network-online.target\n\
\n\
[Service]\n\
Type=notify\n\
NotifyAccess=main\n\
ExecStart={}\n\
ExecReload=/bin/kill -HUP $MAINPID\n\
Restart=on-failure\n\
RestartSec=2\n\
TimeoutStartSec={}\n\
TimeoutStopSec=60\n\
KillMode=mixed\n\
LimitNOFILE=65536\n",
        exec.join(" "),
        a.up.ready_timeout + 30,
    ));
    if !a.unit.user {
        s.push_str(&format!("EnvironmentFile=-/etc/pyoco/{name}.env\nNoNewPrivileges=yes\nPrivateTmp=yes\nProtectSystem=full\n"));
        if datafolder == Path::new("/var/lib").join(name) {
            s.push_str(&format!("StateDirectory={name}\nStateDirectoryMode=0750\n"));
        }
    }
    if let Some(u) = &a.run_as {
        s.push_str(&format!("User={u}\nGroup={u}\n"));
    }
    s.push_str(&format!(
        "\n[Install]\nWantedBy={}\n",
        if a.unit.user {
            "default.target"
        } else {
            "multi-user.target"
        }
    ));
    Ok((s, datafolder))
}

pub async fn dispatch(ctx: &Ctx, c: &ServiceCmd) -> CtlResult<u8> {
    match c {
        ServiceCmd::Install(a) => install(ctx, a),
        ServiceCmd::Uninstall(a) => uninstall(a),
        ServiceCmd::Status(a) => status(ctx, a),
    }
}

fn step(sd: &Systemd, args: &[&str], later: &mut Vec<String>) -> CtlResult<()> {
    let shown = format!(
        "systemctl {}{}",
        if sd.user { "--user " } else { "" },
        args.join(" ")
    );
    if !sd.present() {
        later.push(shown);
        return Ok(());
    }
    match sd.run(args) {
        Ok((true, _)) => {
            eprintln!("service: {shown}");
            Ok(())
        }
        Ok((false, out)) => Err(CtlError::new(
            exit::ERROR,
            format!("service: `{shown}` failed: {out}"),
        )),
        Err(e) => Err(CtlError::new(
            exit::ERROR,
            format!("service: `{shown}` failed: {e}"),
        )),
    }
}

fn print_later(later: &[String]) {
    if !later.is_empty() {
        println!("systemd is not running here; run these once it is:");
        for l in later {
            println!("  {l}");
        }
    }
}

fn install(ctx: &Ctx, a: &InstallArgs) -> CtlResult<u8> {
    let path = unit_path(&a.unit)?;
    let exe = std::env::current_exe()
        .and_then(|p| p.canonicalize())
        .map_err(|e| CtlError::new(exit::ERROR, format!("cannot find this binary's path: {e}")))?;
    let (text, datafolder) = unit_text(ctx, a, &exe)?;
    if a.up.dry_run {
        print!("{text}");
        return Ok(exit::OK);
    }
    let name = &a.unit.service_name;
    if !a.force && !a.unit.user && a.unit.unit_dir.is_none() {
        if let Some(pkg) = ["/lib/systemd/system", "/usr/lib/systemd/system"]
            .iter()
            .map(|d| Path::new(d).join(format!("{name}.service")))
            .find(|p| p.exists())
        {
            return Err(CtlError::new(
                exit::ERROR,
                format!(
                    "service: the package already ships {} — a unit in /etc/systemd/system would replace it (and its hardening)\n- hint: set its options in /etc/pyoco/nats.env (NATS_EXTRA_ARGS=\"--cluster … --seed …\"), choose another --service-name, or add --force",
                    pkg.display()
                ),
            ));
        }
    }
    let unchanged = match std::fs::read_to_string(&path) {
        Ok(old) if old == text => true,
        Ok(_) if !a.force => {
            return Err(CtlError::new(
                exit::ERROR,
                format!("service: {} already exists with other settings; add --force to replace it (or `pyococtl service uninstall` first)", path.display()),
            ))
        }
        _ => false,
    };
    if !unchanged {
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d).map_err(|e| {
                CtlError::new(exit::ERROR, format!("cannot create {}: {e}", d.display()))
            })?;
        }
        let tmp = path.with_extension("service.tmp");
        std::fs::write(&tmp, &text)
            .and_then(|_| std::fs::rename(&tmp, &path))
            .map_err(|e| {
                CtlError::new(exit::ERROR, format!("cannot write {}: {e}", path.display()))
            })?;
    }
    println!(
        "service: {} {} (data folder {})",
        path.display(),
        if unchanged { "unchanged" } else { "written" },
        datafolder.display()
    );
    let sd = Systemd::detect(a.unit.user);
    let mut later = Vec::new();
    step(&sd, &["daemon-reload"], &mut later)?;
    if a.enable {
        step(
            &sd,
            &["enable", "--now", &format!("{name}.service")],
            &mut later,
        )?;
    } else {
        println!(
            "start it with: systemctl {}enable --now {name}.service",
            if a.unit.user { "--user " } else { "" }
        );
    }
    print_later(&later);
    Ok(exit::OK)
}

fn uninstall(a: &UnitArgs) -> CtlResult<u8> {
    let path = unit_path(a)?;
    let name = &a.service_name;
    if !path.exists() {
        return Err(CtlError::new(
            exit::ERROR,
            format!("service not found: {}", path.display()),
        ));
    }
    let sd = Systemd::detect(a.user);
    let mut later = Vec::new();
    step(
        &sd,
        &["disable", "--now", &format!("{name}.service")],
        &mut later,
    )?;
    std::fs::remove_file(&path).map_err(|e| {
        CtlError::new(
            exit::ERROR,
            format!("cannot remove {}: {e}", path.display()),
        )
    })?;
    println!(
        "service: {} removed (the data folder is kept)",
        path.display()
    );
    step(&sd, &["daemon-reload"], &mut later)?;
    print_later(&later);
    Ok(exit::OK)
}

fn status(ctx: &Ctx, a: &UnitArgs) -> CtlResult<u8> {
    let path = unit_path(a)?;
    let sd = Systemd::detect(a.user);
    let unit = format!("{}.service", a.service_name);
    let state = sd.present().then(|| sd.unit_state(&unit));
    let exec = std::fs::read_to_string(&path).ok().and_then(|t| {
        t.lines()
            .find_map(|l| l.strip_prefix("ExecStart=").map(str::to_string))
    });
    if ctx.output(OutputFormat::Table) == OutputFormat::Json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "unit": unit,
                "unit_file": path,
                "installed": path.exists(),
                "exec_start": exec,
                "systemd": sd.present(),
                "active": state.as_ref().map(|s| s.active.clone()),
                "enabled": state.as_ref().map(|s| s.enabled.clone()),
            }))
            .expect("JSON")
        );
        return Ok(exit::OK);
    }
    println!(
        "unit-file: {} ({})",
        path.display(),
        if path.exists() {
            "installed"
        } else {
            "not installed"
        }
    );
    if let Some(e) = exec {
        println!("exec-start: {e}");
    }
    match state {
        Some(s) => {
            println!("active: {}", s.active);
            println!("enabled: {}", s.enabled);
        }
        None => println!("systemd: not running (is-active/is-enabled not available)"),
    }
    Ok(exit::OK)
}

#[cfg(test)]
mod tests {
    #[test]
    fn quoting() {
        assert_eq!(super::sd_quote("/usr/bin/pyococtl"), "/usr/bin/pyococtl");
        assert_eq!(super::sd_quote("a b"), "\"a b\"");
        assert_eq!(super::sd_quote("$X%"), "\"$$X%%\"");
    }
}
