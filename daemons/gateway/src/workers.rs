//! `GET /workers`, `PATCH /workers/{id}` and the run→worker enrichment (contract §1.3, §3.7).

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use pyoco_core::kv::{Decision, ModifyError};
use pyoco_core::time::now;
use pyoco_core::wire::fields;
use pyoco_core::wire::{
    self, f64_field, is_valid_kv_key, normalize_worker, worker_alive, worker_state, Doc,
};
use serde_json::{json, Value};

use crate::app::SharedState;
use crate::error::{item, ApiError, ApiResult};
use crate::params::{self, Errors, Query};

/// Adds `worker_alive`, `worker_state`, … to a run view from the worker index.
pub fn enrich_run(state: &SharedState, worker_id: &str, view: &mut Doc) {
    match state.workers.get(worker_id) {
        Some(raw) => {
            let (rec, effective) =
                normalize_worker(&raw, now(), state.settings.worker_disconnect_timeout_sec);
            view.insert("worker_alive".into(), json!(worker_alive(effective)));
            view.insert("worker_state".into(), json!(effective));
            view.insert(
                "worker_heartbeat_at".into(),
                rec.get(fields::worker::LAST_HEARTBEAT_AT)
                    .cloned()
                    .unwrap_or(Value::Null),
            );
            view.insert(
                "worker_hidden".into(),
                rec.get(fields::worker::HIDDEN)
                    .cloned()
                    .unwrap_or(json!(false)),
            );
            view.insert(
                "worker_tags".into(),
                rec.get(fields::worker::TAGS).cloned().unwrap_or(json!([])),
            );
        }
        None => {
            view.insert("worker_alive".into(), json!(false));
            view.insert("worker_state".into(), json!(worker_state::DISCONNECTED));
            view.insert("worker_heartbeat_at".into(), Value::Null);
        }
    }
}

pub async fn list(
    State(state): State<SharedState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> ApiResult<Response> {
    let q = Query::parse(raw.as_deref());
    let mut errs = Errors::default();
    let include_hidden = params::query_bool(&q, "include_hidden", false, &mut errs);
    let limit = params::query_int(&q, "limit", 100, 1, 500, &mut errs) as usize;
    errs.finish()?;
    let invalid = || {
        tracing::info!(err_id = "ERR-PYOCO-0019", "invalid workers request");
        ApiError::unprocessable("invalid workers request")
    };
    let scope = q
        .last("scope")
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "active".into());
    if scope != "active" && scope != "all" {
        return Err(invalid());
    }
    let state_filter = q
        .last("state")
        .map(|s| s.trim().to_ascii_uppercase())
        .filter(|s| !s.is_empty());
    if let Some(s) = &state_filter {
        if !worker_state::ALL.contains(&s.as_str()) {
            return Err(invalid());
        }
    }
    // A documented difference: the original leaves /workers open even in api_key mode.
    let principal = state.authenticate(&headers).await?;
    state.indexes_loaded().await?;
    // With API keys, the run ids a worker names are shown only when the run is the caller's:
    // another tenant's run id (which `GET /runs/{id}` would not show) stays hidden.
    let foreign = |run_id: &str| match &principal {
        None => false,
        Some(p) => state
            .runs
            .get(run_id)
            .is_none_or(|e| e.tenant_id() != Some(p.tenant_id.as_str())),
    };
    let t = now();
    let mut items: Vec<(f64, Doc)> = state
        .workers
        .all()
        .into_iter()
        .filter_map(|(raw, _)| {
            let (mut rec, effective) =
                normalize_worker(&raw, t, state.settings.worker_disconnect_timeout_sec);
            if !include_hidden
                && rec
                    .get(fields::worker::HIDDEN)
                    .map(wire::is_truthy)
                    .unwrap_or(false)
            {
                return None;
            }
            if scope == "active" && !worker_alive(effective) {
                return None;
            }
            if state_filter
                .as_deref()
                .map(|s| s != effective)
                .unwrap_or(false)
            {
                return None;
            }
            rec.insert(fields::worker::STATE.into(), json!(effective));
            for key in [fields::worker::CURRENT_RUN_ID, fields::worker::LAST_RUN_ID] {
                if rec.get(key).and_then(Value::as_str).is_some_and(foreign) {
                    rec.insert(key.into(), Value::Null);
                }
            }
            if let Some(Value::Array(ids)) = rec.get_mut(fields::worker::CURRENT_RUN_IDS) {
                ids.retain(|id| id.as_str().is_some_and(|id| !foreign(id)));
            }
            Some((
                f64_field(&rec, fields::worker::LAST_SEEN_AT).unwrap_or(0.0),
                rec,
            ))
        })
        .collect();
    items.sort_by(|a, b| b.0.total_cmp(&a.0));
    let items: Vec<Value> = items
        .into_iter()
        .take(limit)
        .map(|(_, d)| Value::Object(d))
        .collect();
    Ok(Json(Value::Array(items)).into_response())
}

/// `PATCH /workers/{id}` `{"hidden": bool}`: compare-and-set, so a concurrent heartbeat write
/// neither loses the flag nor is lost.
pub async fn patch(
    State(state): State<SharedState>,
    headers: HeaderMap,
    Path(worker_id): Path<String>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> ApiResult<Response> {
    let body = params::body_bytes(body)?;
    let obj = params::json_object_body(&headers, &body)?;
    let hidden = match obj.get("hidden") {
        None => {
            return Err(ApiError::validation(vec![item::missing(
                json!(["body", "hidden"]),
                Value::Object(obj.clone()),
            )]))
        }
        Some(Value::Bool(b)) => *b,
        Some(Value::Number(n)) if n.as_i64() == Some(0) || n.as_i64() == Some(1) => {
            n.as_i64() == Some(1)
        }
        Some(Value::String(s)) if params::parse_lax_bool(s).is_some() => {
            params::parse_lax_bool(s).unwrap_or(false)
        }
        Some(other) => {
            return Err(ApiError::validation(vec![item::bool_parsing(
                json!(["body", "hidden"]),
                other.clone(),
            )]))
        }
    };
    state.authenticate(&headers).await?;
    let not_found = || {
        tracing::info!(err_id = "ERR-PYOCO-0020", worker_id = %worker_id, "worker not found");
        ApiError::not_found("worker not found")
    };
    if !is_valid_kv_key(&worker_id) {
        return Err(not_found());
    }
    let res = state.res().await?;
    let mut t = 0.0;
    let disconnect_timeout = state.settings.worker_disconnect_timeout_sec;
    let outcome = pyoco_core::kv::modify(&res.workers, &worker_id, |stored| {
        let Some(raw) = stored else {
            return Decision::Keep;
        };
        t = now();
        let (mut rec, _) = normalize_worker(raw, t, disconnect_timeout);
        rec.insert(fields::worker::HIDDEN.into(), json!(hidden));
        rec.insert(fields::worker::UPDATED_AT.into(), json!(t));
        Decision::Write(rec)
    })
    .await;
    match outcome {
        Ok(_) => Ok(
            Json(json!({"worker_id": worker_id, "hidden": hidden, "updated_at": t}))
                .into_response(),
        ),
        Err(ModifyError::NotFound | ModifyError::Undecodable(_)) => Err(not_found()),
        Err(ModifyError::Conflict(_)) => Err(ApiError::nats(
            "worker record kept conflicting with concurrent writes; retry",
        )),
        Err(ModifyError::Nats { kind, .. }) => Err(ApiError::nats(kind)),
    }
}
