//! Shared state of the gateway and its router.

use std::sync::{Arc, RwLock};
use std::time::Instant;

use async_nats::jetstream::kv;
use axum::extract::{MatchedPath, Request, State};
use axum::http::HeaderMap;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use pyoco_core::config::Config;
use pyoco_core::resources::Resources;
use serde_json::json;

use crate::auth::{Auth, Principal};
use crate::error::{ApiError, ApiResult};
use crate::index::{RunIndex, WorkerIndex};
use crate::metrics::Metrics;
use crate::settings::{GatewaySettings, SettingsError};
use crate::tasks::Runtime;
use crate::{runs, sse, wheels, workers};

pub struct AppState {
    /// Open `/watch` streams, bounded in all and per tenant.
    pub streams: Arc<crate::streams::StreamLimits>,
    pub cfg: Config,
    /// The settings the gateway uses in typed form, converted from `cfg` once.
    pub settings: GatewaySettings,
    pub client: async_nats::Client,
    /// Bound once the resources are ensured; `None` while NATS has not been reached yet.
    pub resources: RwLock<Option<Resources>>,
    pub runs: Arc<RunIndex>,
    pub workers: Arc<WorkerIndex>,
    pub auth: Arc<Auth>,
    pub metrics: Arc<Metrics>,
    /// Becomes true once the resources were ensured the first time.
    pub ready: tokio::sync::watch::Sender<bool>,
    /// When the gateway started: `/health` and `READY=1` wait for `ready` until
    /// `started + ready_timeout`.
    pub started: Instant,
    /// The shutdown token (long-lived responses such as SSE end on it), the tracker every
    /// background task and stream is spawned on, and the registry of named tasks.
    pub runtime: Runtime,
}

pub type SharedState = Arc<AppState>;

const FIRST_CONNECT_WAIT: std::time::Duration = std::time::Duration::from_secs(2);
const INDEX_LOAD_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

impl AppState {
    /// The state of a gateway that is about to start: empty indexes, not ready. `client` may
    /// still be connecting; the background tasks ([`crate::server::start_background`]) ensure
    /// the resources and fill the indexes.
    pub fn new(
        cfg: Config,
        settings: GatewaySettings,
        client: async_nats::Client,
        runtime: Runtime,
    ) -> SharedState {
        let metrics = Arc::new(Metrics::default());
        Arc::new(AppState {
            auth: Arc::new(Auth::new(
                cfg.api_key_auth(),
                &cfg.http_api_key_header,
                cfg.auth_pepper.clone(),
                settings.auth_cache_ttl,
            )),
            runs: RunIndex::new(metrics.clone()),
            workers: Arc::new(WorkerIndex::default()),
            metrics,
            resources: RwLock::new(None),
            ready: tokio::sync::watch::channel(false).0,
            started: Instant::now(),
            streams: crate::streams::StreamLimits::new(
                cfg.sse_max_streams,
                cfg.sse_max_streams_per_tenant,
            ),
            runtime,
            client,
            settings,
            cfg,
        })
    }

    /// [`AppState::new`] with the settings converted from `cfg`.
    pub fn from_config(
        cfg: Config,
        client: async_nats::Client,
        runtime: Runtime,
    ) -> Result<SharedState, SettingsError> {
        let settings = GatewaySettings::from_config(&cfg)?;
        Ok(AppState::new(cfg, settings, client, runtime))
    }

    /// The bound resources when NATS is connected.
    pub fn current(&self) -> Option<Resources> {
        if !pyoco_core::nats::is_connected(&self.client) {
            return None;
        }
        self.resources.read().unwrap().clone()
    }

    /// The bound resources, or 503 `nats unavailable: …` while NATS is unreachable. Right after
    /// start (before the first connection) a request waits up to 2 s instead of failing at once.
    pub async fn res(&self) -> ApiResult<Resources> {
        if let Some(r) = self.current() {
            return Ok(r);
        }
        let mut ready = self.ready.subscribe();
        if !*ready.borrow() {
            let _ = tokio::time::timeout(FIRST_CONNECT_WAIT, ready.wait_for(|r| *r)).await;
            if let Some(r) = self.current() {
                return Ok(r);
            }
        }
        if pyoco_core::nats::is_connected(&self.client) {
            Err(ApiError::nats("resources not ready"))
        } else {
            Err(ApiError::nats("not connected"))
        }
    }

    /// Waits (bounded) until the run and worker indexes finished their first replay, so a
    /// listing right after start is complete rather than empty.
    pub async fn indexes_loaded(&self) -> ApiResult<()> {
        let wait = async {
            self.runs.wait_loaded().await;
            self.workers.wait_loaded().await;
        };
        tokio::time::timeout(INDEX_LOAD_WAIT, wait)
            .await
            .map_err(|_| ApiError::nats("run index still loading; retry"))
    }

    pub async fn authenticate(&self, headers: &HeaderMap) -> ApiResult<Option<Principal>> {
        if !self.auth.enabled {
            return Ok(None);
        }
        let store: Option<kv::Store> = self.res().await.ok().map(|r| r.auth);
        self.auth.check(headers, store.as_ref()).await
    }

    /// At start, waits until the resources are ensured, but no longer than `ready_timeout`
    /// after start; returns whether they are. Clients (and the original's test suite) take
    /// `/health` 200 as "ready", so it must not answer before the buckets exist unless NATS
    /// really is unreachable.
    pub async fn wait_ready_at_start(&self) -> bool {
        let mut ready = self.ready.subscribe();
        if *ready.borrow() {
            return true;
        }
        let left = self
            .settings
            .ready_timeout
            .saturating_sub(self.started.elapsed());
        if !left.is_zero() {
            let _ = tokio::time::timeout(left, ready.wait_for(|r| *r)).await;
        }
        let is_ready = *ready.borrow();
        is_ready
    }

    pub fn nats_connected(&self) -> bool {
        pyoco_core::nats::is_connected(&self.client)
    }
}

pub fn router(state: SharedState) -> Router {
    let yaml_limit = (state.cfg.workflow_yaml_max_bytes.max(0) as usize) + 1024 * 1024;
    Router::new()
        .route("/health", get(health))
        .route("/openapi.json", get(openapi))
        .route("/runs", post(runs::submit).get(runs::list))
        .route(
            "/runs/yaml",
            post(runs::submit_yaml).layer(axum::extract::DefaultBodyLimit::max(yaml_limit)),
        )
        .route("/runs/{run_id}", get(runs::get_run))
        .route("/runs/{run_id}/tasks", get(runs::get_tasks))
        .route("/runs/{run_id}/cancel", post(runs::cancel))
        .route("/runs/{run_id}/watch", get(sse::watch))
        .route("/workers", get(workers::list))
        .route("/workers/{worker_id}", axum::routing::patch(workers::patch))
        .route("/metrics", get(crate::metrics_route::metrics))
        // Uploads stream and enforce their own limit (wheels.rs), so no body limit here.
        .route(
            "/wheels",
            get(wheels::list)
                .post(wheels::upload)
                .layer(axum::extract::DefaultBodyLimit::disable()),
        )
        .route("/wheels/history", get(wheels::history))
        .route(
            "/wheels/{wheel_name}",
            get(wheels::download).delete(wheels::delete),
        )
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), track_http))
        .with_state(state)
}

async fn health(State(state): State<SharedState>) -> Response {
    state.wait_ready_at_start().await;
    // "connected" once the resources are ensured too: the gateway can then serve every request.
    let nats = if state.current().is_some() {
        "connected"
    } else {
        "disconnected"
    };
    axum::Json(json!({"status": "ok", "nats": nats})).into_response()
}

/// The OpenAPI document, kept in `docs/openapi.json` and compiled in.
async fn openapi() -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        include_str!("../../../docs/openapi.json"),
    )
        .into_response()
}

async fn not_found() -> ApiError {
    ApiError::not_found("Not Found")
}

/// Counts every request by route template, method and status for `/metrics`.
/// The `method` label: the standard methods by name, anything else `OTHER` — a client must not be
/// able to mint label values (and memory in the metrics) by inventing methods.
fn metric_method(m: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

async fn track_http(State(state): State<SharedState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let method = metric_method(req.method());
    let started = Instant::now();
    let resp = next.run(req).await;
    state.metrics.on_http(
        &route,
        method,
        resp.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    resp
}
