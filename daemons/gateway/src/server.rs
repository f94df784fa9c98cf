//! Running the gateway: bind, connect, start the background tasks on one [`Runtime`], serve
//! until the shutdown token is cancelled, then stop everything within a bounded time.
//!
//! Background tasks, all named in the task registry and restarted when they end or panic:
//! `nats` (connects, ensures the resources, starts the followers, keeps the status line
//! current), `runs follower` / `workers follower` / `auth follower` (KV watches feeding the
//! indexes and the auth cache) and `retention`. The watchdog pings only while all of them are
//! alive.

use std::sync::Arc;
use std::time::Duration;

use pyoco_core::config::Config;
use pyoco_core::nats::redact_url;
use pyoco_core::resources::{self, Resources};
use pyoco_core::systemd;

use crate::app::{self, AppState, SharedState};
use crate::devstack;
use crate::index::{follow_bucket, Follower};
use crate::retention;
use crate::settings::GatewaySettings;
use crate::tasks::Runtime;

/// These lines were logged from the binary's root module before the library existed; the
/// JSON `logger` field keeps that name.
const LOG_TARGET: &str = "pyoco_server";
/// After shutdown begins, how long open HTTP requests may take to finish (SSE streams end at
/// once on the token).
const HTTP_DRAIN: Duration = Duration::from_secs(4);
/// Then how long the background tasks and streams may take to end.
const TASKS_STOP: Duration = Duration::from_secs(2);
/// How long the gateway may take to close its connections when the dev stack stops.
const GATEWAY_STOP: Duration = Duration::from_secs(2);

/// Binds the HTTP socket: systemd's (socket activation) or our own.
pub async fn bind_listener(cfg: &Config) -> anyhow::Result<tokio::net::TcpListener> {
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

/// The `serve` command: the gateway alone, or with `--with-nats/--with-worker` the supervised
/// dev stack around it. Returns when the process should exit.
pub async fn run(
    cfg: Config,
    settings: GatewaySettings,
    dev: devstack::DevStackArgs,
) -> anyhow::Result<()> {
    if !dev.with_nats && !dev.with_worker {
        return serve_until_signal(cfg, settings).await;
    }
    run_with_stack(cfg, settings, dev).await
}

/// The gateway alone: serve until SIGTERM / Ctrl-C.
async fn serve_until_signal(cfg: Config, settings: GatewaySettings) -> anyhow::Result<()> {
    let listener = bind_listener(&cfg).await?;
    let runtime = Runtime::new();
    runtime.spawn({
        let shutdown = runtime.shutdown.clone();
        async move {
            tokio::select! {
                _ = shutdown_signal() => shutdown.cancel(),
                _ = shutdown.cancelled() => {}
            }
        }
    });
    serve(cfg, settings, listener, runtime, None).await
}

/// `up --with-nats/--with-worker`: a supervised local stack. Start order NATS → gateway →
/// worker, stop order the reverse; a part that dies stops the rest and `up` exits non-zero.
async fn run_with_stack(
    mut cfg: Config,
    settings: GatewaySettings,
    mut dev: devstack::DevStackArgs,
) -> anyhow::Result<()> {
    let cwd = std::env::current_dir()?;
    dev.resolve_paths(&cwd);
    cfg.nats_url = devstack::DevStack::nats_url(&dev, &cfg.nats_url)?;
    // The HTTP port first: a busy port fails before anything was started.
    let listener = bind_listener(&cfg).await?;
    let mut stack = devstack::DevStack::start_nats(&dev).await?;
    let nats_url = cfg.nats_url.clone();

    let runtime = Runtime::new();
    let shutdown = runtime.shutdown.clone();
    let (ready_tx, mut ready_rx) = tokio::sync::oneshot::channel();
    let mut gateway = tokio::spawn(serve(cfg, settings, listener, runtime, Some(ready_tx)));
    let mut signal = Box::pin(shutdown_signal());

    // The worker once the gateway has ensured the resources (bounded by its ready timeout).
    // `None`: a signal came first (the signal future is done then and must not be polled again).
    let started = tokio::select! {
        Ok(_) = &mut ready_rx => Some(stack.start_worker(&dev, &nats_url)),
        r = &mut gateway => {
            stack.stop().await;
            return gateway_result(r);
        }
        _ = &mut signal => None,
    };
    let reason = match started {
        Some(Err(e)) => {
            shutdown.cancel();
            let _ = tokio::time::timeout(GATEWAY_STOP, &mut gateway).await;
            stack.stop().await;
            return Err(e);
        }
        None => devstack::StopReason::Signal,
        Some(Ok(())) => tokio::select! {
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

fn gateway_result(r: Result<anyhow::Result<()>, tokio::task::JoinError>) -> anyhow::Result<()> {
    match r {
        Ok(r) => r,
        Err(e) => Err(anyhow::anyhow!("the gateway task failed: {e}")),
    }
}

/// Serves the HTTP API on `listener` until `runtime.shutdown` is cancelled, then stops the
/// background tasks (bounded). `on_ready` is told once the resources are ensured (or the
/// ready timeout passed).
pub async fn serve(
    cfg: Config,
    settings: GatewaySettings,
    listener: tokio::net::TcpListener,
    runtime: Runtime,
    on_ready: Option<tokio::sync::oneshot::Sender<bool>>,
) -> anyhow::Result<()> {
    let local = listener.local_addr()?;
    let auth = pyoco_core::nats::NatsAuth::from_config(&cfg)?;
    let client = pyoco_core::nats::connect(&cfg.nats_url, &auth, "pyoco-http-api").await?;
    let state = AppState::new(cfg, settings, client, runtime.clone());
    start_background(&state, &local.to_string());

    tracing::info!(target: LOG_TARGET, address = %local, "listening");
    // READY=1 once NATS and the resources are there (bounded): a unit ordered after this one
    // starts against a gateway that can serve it.
    runtime.spawn({
        let state = state.clone();
        async move {
            let ready = tokio::select! {
                r = state.wait_ready_at_start() => r,
                _ = state.runtime.shutdown.cancelled() => return,
            };
            let nats = if ready {
                "NATS connected".to_string()
            } else {
                tracing::warn!(target: LOG_TARGET, err_id = "ERR-PYOCO-0003", nats_url = %redact_url(&state.cfg.nats_url), ready_timeout_sec = state.settings.ready_timeout.as_secs_f64(), "NATS not reachable yet; serving anyway (requests that need NATS answer 503 until it is). Is nats-server running there? (`pyococtl up`, or `pyoco-server up --with-nats`)");
                format!("NATS unreachable at {}, retrying", redact_url(&state.cfg.nats_url))
            };
            systemd::notify_ready(&format!("listening on {local} · {nats}"));
            if let Some(tx) = on_ready {
                let _ = tx.send(ready);
            }
        }
    });
    if let Some(warning) = crate::conn::raise_fd_limit(state.settings.http.max_connections) {
        tracing::warn!(target: LOG_TARGET, "{warning}");
    }
    let server = crate::conn::serve(
        listener,
        app::router(state.clone()),
        state.settings.http,
        state.metrics.clone(),
        runtime.shutdown.clone(),
    );
    // Graceful, but bounded: a slow client must not hold the exit past systemd's stop timeout.
    let drained = async {
        runtime.shutdown.cancelled().await;
        tokio::time::sleep(HTTP_DRAIN).await;
    };
    let served = tokio::select! {
        () = server => Ok(()),
        _ = drained => {
            tracing::warn!(target: LOG_TARGET, drain_sec = HTTP_DRAIN.as_secs(), "open HTTP requests did not finish in time; closing them");
            Ok(())
        }
    };
    runtime.shutdown(TASKS_STOP).await;
    tracing::info!(target: LOG_TARGET, "stopped");
    served
}

/// Starts the gateway's background tasks on its runtime: the `nats` supervisor (which starts
/// the followers once the resources exist), retention when enabled, and the watchdog.
pub fn start_background(state: &SharedState, address: &str) {
    let rt = &state.runtime;
    {
        let state = state.clone();
        let address = address.to_string();
        rt.supervise("nats", move || {
            supervise_nats(state.clone(), address.clone())
        });
    }
    if let Some(retention) = state.settings.run_retention {
        let state = state.clone();
        rt.supervise("retention", move || {
            retention::run(state.clone(), retention)
        });
    }
    if let Some(every) = systemd::watchdog_interval() {
        rt.spawn(
            state
                .runtime
                .clone()
                .watchdog(every, systemd::notify_watchdog),
        );
    }
}

/// A supervised KV follower, unless it runs already (the `nats` task may restart).
fn start_follower<F: Follower>(
    rt: &Runtime,
    name: &'static str,
    store: async_nats::jetstream::kv::Store,
    follower: Arc<F>,
) {
    if rt.registry.contains(name) {
        return;
    }
    rt.supervise(name, move || {
        let store = store.clone();
        let follower = follower.clone();
        async move { follow_bucket(&store, follower.as_ref()).await }
    });
}

fn start_followers(state: &SharedState, res: &Resources) {
    let rt = &state.runtime;
    start_follower(rt, "runs follower", res.runs.clone(), state.runs.clone());
    start_follower(
        rt,
        "workers follower",
        res.workers.clone(),
        state.workers.clone(),
    );
    start_follower(rt, "auth follower", res.auth.clone(), state.auth.clone());
}

/// Connects to NATS (retrying), ensures the resources, starts the KV followers, and keeps the
/// systemd status line current. NATS being down never stops the gateway: requests that need it
/// answer 503 meanwhile.
async fn supervise_nats(state: SharedState, address: String) -> Result<(), String> {
    let stop = state.runtime.shutdown.clone();
    loop {
        // Connected (again): make sure every resource exists, then serve from it.
        let ensured = resources::ensure_until_ready(&state.client, &state.cfg, &stop, |w| {
            match w {
                resources::Waiting::Unreachable { .. } => {
                    systemd::notify_status(&status_line(&state, &address, false))
                }
                resources::Waiting::Failing(e) => {
                    tracing::error!(target: LOG_TARGET, err_id = "ERR-PYOCO-0003", error = %e, "ensuring JetStream resources failed; retrying");
                    systemd::notify_status(&format!(
                        "listening on {address} · NATS resources failing: {e}"
                    ));
                }
            }
        })
        .await;
        let Some(res) = ensured else {
            return Ok(()); // shutting down
        };
        start_followers(&state, &res);
        *state.resources.write().unwrap() = Some(res);
        state.ready.send_replace(true);
        tracing::info!(target: LOG_TARGET, nats_url = %redact_url(&state.cfg.nats_url), "NATS connected; resources ensured");
        // Keep the status line current until the connection drops.
        while state.nats_connected() {
            systemd::notify_status(&status_line(&state, &address, true));
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = stop.cancelled() => return Ok(()),
            }
        }
        tracing::warn!(target: LOG_TARGET, err_id = "ERR-PYOCO-0003", nats_url = %redact_url(&state.cfg.nats_url), "NATS disconnected; retrying");
    }
}

/// `listening on … · NATS connected · 12 runs indexed`, plus any task that is not running.
fn status_line(state: &AppState, address: &str, connected: bool) -> String {
    let nats = if connected {
        "NATS connected".to_string()
    } else if state.client.connection_state() == async_nats::connection::State::Pending {
        format!("NATS connecting to {}", redact_url(&state.cfg.nats_url))
    } else {
        format!(
            "NATS unreachable at {}, retrying",
            redact_url(&state.cfg.nats_url)
        )
    };
    let indexed = if state.runs.is_loaded() {
        format!("{} runs indexed", state.runs.len())
    } else {
        "indexing runs".into()
    };
    let mut line = format!("listening on {address} · {nats} · {indexed}");
    if let Some(problems) = state.runtime.registry.problems() {
        line.push_str(" · ");
        line.push_str(&problems);
    }
    line
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!(target: LOG_TARGET, "shutting down");
    systemd::notify_stopping("shutting down");
}
