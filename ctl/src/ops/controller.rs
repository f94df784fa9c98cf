//! `controller start` (the HTTP service that removes leaving servers from the JetStream meta
//! group through the system account) and `leave` (its client).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use clap::Args;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::Mutex;

use super::jsapi::{self, ApiError};
use super::LeaveArgs;
use crate::client::{CtlError, CtlResult};
use crate::{exit, Ctx};

#[derive(Debug, Clone, Args)]
#[command(
    after_help = "NATS: the global --nats-url (or nats_url of the config file), connected as a system-account user:\n\
--sys-creds FILE, or --sys-user/--sys-password[-file] (the secured layout of `pyococtl up`: --sys-user system --sys-password-file <auth-dir>/system.password;\n\
or the user `--sys-user sys` defines), or user:password in the URL.\n\n\
HTTP API:\n  GET  /health    → {\"status\":\"ok\"}\n  POST /v1/leave  {\"request_id\", \"server_name\", \"nats_url\"} → {\"request_id\", \"result\": \"ok\"|\"already_done\"};\n\
                  400 {\"error\":\"invalid_request\"} on a bad body; 502 {\"error\": …, \"detail\": …} when NATS refuses.\n\
Requests are idempotent by request_id (kept in <state-dir>/controller_state.json). A server that is no longer a\n\
member of the meta group is reported as already_done.\n\n\
Note: the default --listen port 8222 is also nats-server's monitoring port; on a NATS node pick another one.\n\n\
Examples:\n  pyococtl --nats-url nats://127.0.0.1:4222 controller start --listen 0.0.0.0:8223 --sys-user system --sys-password-file nats-bootstrap-data/auth/system.password\n  NATS_SYS_PASSWORD=… pyococtl --nats-url nats://127.0.0.1:4222 controller start --listen 0.0.0.0:8223 --sys-user sys"
)]
pub struct StartArgs {
    /// HOST:PORT to serve on.
    #[arg(long, default_value = "127.0.0.1:8222")]
    pub listen: String,
    /// System account credentials file.
    #[arg(long, value_name = "FILE")]
    pub sys_creds: Option<PathBuf>,
    /// System account user.
    #[arg(long, value_name = "USER")]
    pub sys_user: Option<String>,
    /// System account password.
    #[arg(
        long,
        env = "NATS_SYS_PASSWORD",
        hide_env_values = true,
        value_name = "PASSWORD"
    )]
    pub sys_password: Option<String>,
    /// Read the system account password from this file (first line), e.g. the system.password of `pyococtl up`'s --auth-dir.
    #[arg(long, value_name = "FILE", conflicts_with = "sys_password")]
    pub sys_password_file: Option<PathBuf>,
    /// Where the idempotency state lives [default: ~/.nats-bootstrap/controller].
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
}

/// `<state-dir>/controller_state.json`.
#[derive(Debug, Default, Serialize, Deserialize)]
struct StateFile {
    #[serde(default)]
    requests: BTreeMap<String, Value>,
}

struct Shared {
    nats: async_nats::Client,
    nats_url: String,
    state_path: PathBuf,
    state: Mutex<StateFile>,
}

fn load_state(path: &Path) -> CtlResult<StateFile> {
    match std::fs::read_to_string(path) {
        Ok(t) => serde_json::from_str(&t).map_err(|e| {
            CtlError::new(
                exit::ERROR,
                format!(
                    "controller error: {} is not a valid state file: {e}",
                    path.display()
                ),
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(StateFile::default()),
        Err(e) => Err(CtlError::new(
            exit::ERROR,
            format!("controller error: cannot read {}: {e}", path.display()),
        )),
    }
}

fn save_state(path: &Path, state: &StateFile) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(state).expect("JSON"))?;
    std::fs::rename(&tmp, path)
}

fn secs_now() -> f64 {
    pyoco_core::time::now()
}

pub async fn start(ctx: &Ctx, a: &StartArgs) -> CtlResult<u8> {
    let url = ctx.nats_url();
    if let Some(c) = &a.sys_creds {
        if !c.is_file() {
            return Err(CtlError::new(
                exit::USAGE,
                format!("controller error: sys.creds not found: {}", c.display()),
            ));
        }
    }
    // The configuration's own credentials, not pyococtl's admin default: the admin user is not
    // in the system account.
    let config_auth = pyoco_core::nats::NatsAuth::from_config(&ctx.config)
        .map_err(|e| CtlError::new(exit::USAGE, format!("ERR-PYOCO-0018: {e}")))?;
    let sys_password = match &a.sys_password_file {
        Some(f) => Some(super::secure::read_password(f)?),
        None => a.sys_password.clone(),
    };
    if a.sys_creds.is_none()
        && a.sys_user.is_none()
        && !url.contains('@')
        && !config_auth.has_method()
    {
        return Err(CtlError::usage(
            "the peer removal needs the system account: give --sys-creds FILE, or --sys-user USER with --sys-password / NATS_SYS_PASSWORD, or a system-account user in the configuration (PYOCO_NATS_CREDS_FILE, PYOCO_NATS_USER + PYOCO_NATS_PASSWORD_FILE)",
            "NATS_SYS_PASSWORD=… pyococtl --nats-url nats://127.0.0.1:4222 controller start --listen 0.0.0.0:8223 --sys-user sys",
        ));
    }
    let addr: SocketAddr = a.listen.parse().map_err(|e| {
        CtlError::usage(
            format!("--listen {}: {e}", a.listen),
            "pyococtl controller start --listen 127.0.0.1:8223",
        )
    })?;
    let state_dir = a
        .state_dir
        .clone()
        .map(|d| super::absolute(&d))
        .unwrap_or_else(|| super::expand_tilde(Path::new("~/.nats-bootstrap/controller")));
    std::fs::create_dir_all(&state_dir).map_err(|e| {
        CtlError::new(
            exit::ERROR,
            format!(
                "controller error: cannot create {}: {e}",
                state_dir.display()
            ),
        )
    })?;
    let state_path = state_dir.join("controller_state.json");
    let state = load_state(&state_path)?;

    let mut opts = match &a.sys_creds {
        Some(c) => async_nats::ConnectOptions::with_credentials_file(c.clone())
            .await
            .map_err(|e| {
                CtlError::new(
                    exit::USAGE,
                    format!("controller error: --sys-creds {}: {e}", c.display()),
                )
            })?,
        // No system-account flags: the configuration's credentials (they must be a system
        // account user then).
        None if a.sys_user.is_none() => config_auth
            .apply(&url, async_nats::ConnectOptions::new())
            .map_err(|e| {
                crate::client::nats_error(&url, "controller error: NATS credentials", &e)
            })?,
        None => async_nats::ConnectOptions::new(),
    };
    if let Some(u) = &a.sys_user {
        opts = opts.user_and_password(u.clone(), sys_password.clone().unwrap_or_default());
    }
    if a.sys_creds.is_some() || a.sys_user.is_some() {
        // The system account's own credentials, over the configured TLS.
        opts = config_auth.apply_tls(opts);
    }
    // Like the daemons: start even while NATS is down and keep reconnecting.
    let nats = opts
        .name("pyococtl-controller")
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(3))
        .connect(&url)
        .await
        .map_err(|e| {
            crate::client::nats_error(&url, "controller error: cannot connect to NATS", &e)
        })?;

    let shared = Arc::new(Shared {
        nats,
        nats_url: pyoco_core::nats::redact_url(&url),
        state_path: state_path.clone(),
        state: Mutex::new(state),
    });
    let app = Router::new()
        .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/v1/leave", post(leave_handler))
        .with_state(shared);
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        let hint = if e.kind() == std::io::ErrorKind::AddrInUse {
            "\n- hint: 8222 is also nats-server's monitoring port; choose another, e.g. --listen 127.0.0.1:8223"
        } else {
            ""
        };
        CtlError::new(exit::ERROR, format!("controller error: cannot listen on {addr}: {e}{hint}"))
    })?;
    eprintln!(
        "controller: listening on http://{addr} (NATS {}, state {})",
        pyoco_core::nats::redact_url(&url),
        state_path.display()
    );
    let shutdown = async {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            term.recv().await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|e| CtlError::new(exit::ERROR, format!("controller error: {e}")))?;
    Ok(exit::OK)
}

fn invalid() -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({"error": "invalid_request"})),
    )
        .into_response()
}

async fn leave_handler(State(s): State<Arc<Shared>>, body: axum::body::Bytes) -> Response {
    let Ok(Value::Object(req)) = serde_json::from_slice::<Value>(&body) else {
        return invalid();
    };
    let text = |k: &str| {
        req.get(k)
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    let (Some(request_id), Some(server_name)) = (text("request_id"), text("server_name")) else {
        return invalid();
    };
    if !matches!(
        req.get("nats_url"),
        None | Some(Value::Null) | Some(Value::String(_))
    ) {
        return invalid();
    }
    // One removal at a time; the lock also orders the state file writes.
    let mut state = s.state.lock().await;
    if state.requests.contains_key(&request_id) {
        return Json(json!({"request_id": request_id, "result": "already_done"})).into_response();
    }
    let body = json!({"peer": server_name});
    let (result, detail) = match remove_peer(&s.nats, &body).await {
        Ok(_) => ("ok", None),
        Err(e) if e.err_code() == Some(jsapi::SERVER_NOT_MEMBER) => {
            ("already_done", Some(e.to_string()))
        }
        Err(ApiError::Transport(t)) => {
            let detail = format!(
                "{t} (NATS {}): no answer from the JetStream meta leader — is the controller connected as a system-account user, and does the cluster have a leader?",
                s.nats_url
            );
            eprintln!("controller: leave {request_id} ({server_name}) failed: {detail}");
            return (
                StatusCode::BAD_GATEWAY,
                Json(json!({"error": "nats_unavailable", "detail": detail})),
            )
                .into_response();
        }
        Err(e) => {
            eprintln!("controller: leave {request_id} ({server_name}) failed: {e}");
            return (
                StatusCode::BAD_GATEWAY,
                Json(json!({"error": "remove_failed", "detail": e.to_string()})),
            )
                .into_response();
        }
    };
    eprintln!("controller: leave {request_id}: {server_name} → {result}");
    state.requests.insert(
        request_id.clone(),
        json!({
            "server_name": server_name,
            "nats_url": req.get("nats_url").cloned().unwrap_or(Value::Null),
            "result": result,
            "detail": detail,
            "at": secs_now(),
        }),
    );
    if let Err(e) = save_state(&s.state_path, &state) {
        eprintln!(
            "controller: warning: cannot write {}: {e}",
            s.state_path.display()
        );
    }
    Json(json!({"request_id": request_id, "result": result})).into_response()
}

/// `$JS.API.SERVER.REMOVE`. Only the meta leader answers; while the cluster elects one (a few
/// seconds, e.g. right after the leader itself was removed) requests go unanswered, so
/// unanswered attempts are retried for up to 30 s. A leader that removes itself may not answer
/// at all: "not a member" after an unanswered attempt means that attempt did it.
async fn remove_peer(nats: &async_nats::Client, body: &Value) -> Result<Value, ApiError> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut unanswered = false;
    loop {
        match jsapi::request_json(nats, "$JS.API.SERVER.REMOVE", body, Duration::from_secs(5)).await
        {
            Err(ApiError::Transport(t)) if tokio::time::Instant::now() < deadline => {
                eprintln!("controller: no answer yet ({t}); retrying");
                unanswered = true;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) if unanswered && e.err_code() == Some(jsapi::SERVER_NOT_MEMBER) => {
                return Ok(
                    json!({"success": true, "note": "removed by an earlier, unanswered attempt"}),
                );
            }
            other => return other,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// leave

/// `server_name` from the generated configuration in the data folder, if any.
fn server_name_from_conf(datafolder: &Path) -> Option<String> {
    let text = std::fs::read_to_string(datafolder.join(super::CONF_FILE_NAME)).ok()?;
    text.lines().find_map(|l| {
        let v = l.trim().strip_prefix("server_name:")?.trim();
        let v = v.strip_prefix('"')?.strip_suffix('"')?;
        Some(v.replace("\\\"", "\"").replace("\\\\", "\\"))
    })
}

enum Outcome {
    Done(String),
    Unreachable(Vec<String>),
}

async fn call_controllers(controllers: &[String], body: &Value) -> CtlResult<Outcome> {
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(90))
        .no_proxy()
        .build()
        .map_err(|e| CtlError::new(exit::ERROR, format!("HTTP client: {e}")))?;
    let mut failures = Vec::new();
    for c in controllers {
        let url = format!("{}/v1/leave", c.trim_end_matches('/'));
        match http.post(&url).json(body).send().await {
            Err(e) => failures.push(format!("{c}: {e}")),
            Ok(r) => {
                let status = r.status();
                let text = r.text().await.unwrap_or_default();
                if !status.is_success() {
                    return Err(CtlError::new(
                        exit::ERROR,
                        format!(
                            "controller request is invalid: {c} answered HTTP {}: {text}",
                            status.as_u16()
                        ),
                    ));
                }
                let v: Value = serde_json::from_str(&text).map_err(|_| {
                    CtlError::new(
                        exit::ERROR,
                        format!("controller request is invalid: {c} answered {text:?}"),
                    )
                })?;
                let result = v
                    .get("result")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
                if result != "ok" && result != "already_done" {
                    return Err(CtlError::new(
                        exit::ERROR,
                        format!("controller request is invalid: {c} answered {text}"),
                    ));
                }
                return Ok(Outcome::Done(result));
            }
        }
    }
    Ok(Outcome::Unreachable(failures))
}

pub async fn leave(ctx: &Ctx, a: &LeaveArgs) -> CtlResult<u8> {
    if !a.confirm {
        return Err(super::confirm_required(
            "pyococtl leave --confirm --controller http://10.0.0.1:8223",
        ));
    }
    if a.controllers.is_empty() {
        return Err(CtlError::usage(
            "controller endpoints are required (--controller URL, repeatable)",
            "pyococtl leave --confirm --controller http://10.0.0.1:8223",
        ));
    }
    let request_id = a
        .request_id
        .clone()
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    let server_name = a
        .server_name
        .clone()
        .or_else(|| server_name_from_conf(&super::server::effective_datafolder(&a.pid)))
        .unwrap_or_else(super::hostname);
    let body = json!({"request_id": request_id, "server_name": server_name, "nats_url": ctx.cli.nats_url.as_deref().map(pyoco_core::nats::redact_url)});
    eprintln!("leave: server {server_name}, request id {request_id} (reuse it with --request-id to retry safely)");
    match call_controllers(&a.controllers, &body).await? {
        Outcome::Done(result) => {
            println!(
                "{}",
                if result == "already_done" {
                    "leave: already done"
                } else {
                    "leave: ok"
                }
            );
        }
        Outcome::Unreachable(failures) => {
            if !a.stop_anyway {
                return Err(CtlError::new(
                    exit::ERROR,
                    format!(
                        "controller unavailable; nothing was stopped\n{}\n- hint: start one (pyococtl controller start) or, to stop this server without the removal, add --stop-anyway",
                        failures.iter().map(|f| format!("- {f}")).collect::<Vec<_>>().join("\n")
                    ),
                ));
            }
            eprintln!(
                "warning: controller unavailable ({}); the server was NOT removed from the JetStream meta group",
                failures.join("; ")
            );
        }
    }
    if a.keep_running {
        return Ok(exit::OK);
    }
    let path = super::server::pid_file_path(&a.pid);
    let what =
        super::server::stop_from_pid_file(&path, Duration::from_secs(a.timeout), "leave").await?;
    println!("leave: stopped the local nats-server ({what})");
    Ok(exit::OK)
}
