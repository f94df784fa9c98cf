//! Run endpoints: submit (JSON and flow.yaml), list, get, tasks, cancel (contract §1.3).

use pyoco_core::wire::fields;
use std::time::Duration;

use async_nats::jetstream::{self, context::PublishErrorKind, kv};
use axum::body::Bytes;
use axum::extract::multipart::{Multipart, MultipartRejection};
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use pyoco_core::callables;
use pyoco_core::flow_yaml;
use pyoco_core::json::to_ascii_vec;
use pyoco_core::kv::{Decision, ModifyError};
use pyoco_core::resources::Resources;
use pyoco_core::time::now;
use pyoco_core::wire::{
    self, f64_field, is_valid_kv_key, is_valid_tag, run_status, str_field, Doc, NewRun,
    MAX_DISPLAY_TAGS, MAX_FLOW_NAME_LEN, MAX_TAG_LEN,
};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use crate::app::SharedState;
use crate::auth::Principal;
use crate::error::{item, ApiError, ApiResult};
use crate::index::{RunFilter, SortKey};
use crate::params::{self, Errors, Query};

const TAG_PATTERN: &str = "^[A-Za-z0-9_-]+$";
const IDEMPOTENCY_HEADER: &str = "idempotency-key";

// ---------------------------------------------------------------------------------------------
// Submit

/// `POST /runs`: validate like the original's pydantic model, then create the run.
pub async fn submit(
    State(state): State<SharedState>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> ApiResult<Response> {
    let body = params::body_bytes(body)?;
    let obj = params::json_object_body(&headers, &body)?;
    let mut errs = Errors::default();
    let flow_name = match obj.get("flow_name") {
        None => {
            errs.0.push(item::missing(
                json!(["body", "flow_name"]),
                Value::Object(obj.clone()),
            ));
            String::new()
        }
        Some(Value::String(s)) if s.is_empty() => {
            errs.0
                .push(item::too_short(json!(["body", "flow_name"]), json!(s)));
            String::new()
        }
        Some(Value::String(s)) if s.chars().count() > MAX_FLOW_NAME_LEN => {
            errs.0.push(item::too_long(
                json!(["body", "flow_name"]),
                json!(s),
                MAX_FLOW_NAME_LEN,
            ));
            String::new()
        }
        Some(Value::String(s)) => s.clone(),
        Some(other) => {
            errs.0.push(item::string_type(
                json!(["body", "flow_name"]),
                other.clone(),
            ));
            String::new()
        }
    };
    let params_obj = match obj.get("params") {
        None => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(other) => {
            errs.0
                .push(item::dict_type(json!(["body", "params"]), other.clone()));
            Map::new()
        }
    };
    let tag = match obj.get("tag") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if is_valid_tag(s) => Some(s.clone()),
        Some(Value::String(s)) if s.len() > MAX_TAG_LEN => {
            errs.0.push(item::too_long(
                json!(["body", "tag"]),
                json!(s),
                MAX_TAG_LEN,
            ));
            None
        }
        Some(Value::String(s)) => {
            errs.0
                .push(item::pattern(json!(["body", "tag"]), json!(s), TAG_PATTERN));
            None
        }
        Some(other) => {
            errs.0
                .push(item::string_type(json!(["body", "tag"]), other.clone()));
            None
        }
    };
    let tags: Vec<String> = match obj.get("tags") {
        None => vec![],
        Some(Value::Array(a)) if a.len() > MAX_DISPLAY_TAGS => {
            errs.0.push(item::list_too_long(
                json!(["body", "tags"]),
                Value::Array(a.clone()),
                MAX_DISPLAY_TAGS,
                a.len(),
            ));
            vec![]
        }
        Some(Value::Array(a)) => {
            let mut v = vec![];
            for (i, t) in a.iter().enumerate() {
                match t {
                    Value::String(s) if s.chars().count() > MAX_TAG_LEN => errs.0.push(
                        item::too_long(json!(["body", "tags", i]), json!(s), MAX_TAG_LEN),
                    ),
                    Value::String(s) => v.push(s.clone()),
                    other => errs
                        .0
                        .push(item::string_type(json!(["body", "tags", i]), other.clone())),
                }
            }
            v
        }
        Some(other) => {
            errs.0
                .push(item::list_type(json!(["body", "tags"]), other.clone()));
            vec![]
        }
    };
    let timeout_sec = match obj.get("timeout_sec") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => match n.as_f64() {
            Some(t) if t > 0.0 => Some(t),
            _ => {
                errs.0.push(item::gt_float(
                    json!(["body", "timeout_sec"]),
                    Value::Number(n.clone()),
                    0.0,
                ));
                None
            }
        },
        Some(other) => {
            errs.0.push(item::float_type(
                json!(["body", "timeout_sec"]),
                other.clone(),
            ));
            None
        }
    };
    errs.finish()?;
    let principal = state.authenticate(&headers).await?;
    let tag = tag.unwrap_or_else(|| state.cfg.default_tag.clone());
    let tags = if tags.is_empty() {
        vec![tag.clone()]
    } else {
        tags
    };
    let run = new_run(
        &principal,
        flow_name,
        tag,
        tags,
        params_obj,
        None,
        None,
        timeout_sec,
    );
    create_run(&state, &headers, &principal, run).await
}

/// `POST /runs/yaml`: multipart `workflow` (file), `flow_name`, optional `tag`.
pub async fn submit_yaml(
    State(state): State<SharedState>,
    headers: HeaderMap,
    multipart: Result<Multipart, MultipartRejection>,
) -> ApiResult<Response> {
    let mut workflow: Option<Bytes> = None;
    let mut flow_name: Option<String> = None;
    let mut tag: Option<String> = None;
    let mut too_large = false;
    if let Ok(mut mp) = multipart {
        loop {
            let field = match mp.next_field().await {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                    too_large = true;
                    break;
                }
                Err(e) => {
                    return Err(ApiError::new(
                        StatusCode::BAD_REQUEST,
                        format!("invalid multipart body: {}", e.body_text()),
                    ))
                }
            };
            let name = field.name().unwrap_or("").to_string();
            let data = match field.bytes().await {
                Ok(d) => d,
                Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                    too_large = true;
                    break;
                }
                Err(e) => {
                    return Err(ApiError::new(
                        StatusCode::BAD_REQUEST,
                        format!("invalid multipart body: {}", e.body_text()),
                    ))
                }
            };
            match name.as_str() {
                "workflow" => workflow = Some(data),
                "flow_name" => flow_name = Some(String::from_utf8_lossy(&data).into_owned()),
                "tag" => tag = Some(String::from_utf8_lossy(&data).into_owned()),
                _ => {}
            }
        }
    }
    if too_large {
        let _ = state.authenticate(&headers).await?;
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "workflow too large",
        ));
    }
    let mut errs = Errors::default();
    if workflow.is_none() {
        errs.0
            .push(item::missing(json!(["body", "workflow"]), Value::Null));
    }
    if flow_name.is_none() {
        errs.0
            .push(item::missing(json!(["body", "flow_name"]), Value::Null));
    }
    errs.finish()?;
    let (workflow, flow_name) = (workflow.unwrap_or_default(), flow_name.unwrap_or_default());

    let principal = state.authenticate(&headers).await?;
    let tag = tag
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| state.cfg.default_tag.clone())
        .trim()
        .to_string();
    if !is_valid_tag(&tag) {
        return Err(ApiError::unprocessable("invalid tag"));
    }
    let max = state.cfg.workflow_yaml_max_bytes;
    if max > 0 && workflow.len() as i64 > max {
        tracing::warn!(
            err_id = "ERR-PYOCO-0016",
            size_bytes = workflow.len(),
            max_bytes = max,
            "workflow yaml too large"
        );
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "workflow too large",
        ));
    }
    let parsed = flow_yaml::parse_workflow_yaml(&workflow, true).map_err(|e| {
        tracing::info!(err_id = "ERR-PYOCO-0002", reason = %e.code, "invalid workflow yaml");
        ApiError::unprocessable(format!("invalid workflow yaml: {e}"))
    })?;
    // What every worker would refuse anyway (and what this gateway's allow list leaves out)
    // is refused here, so the submitter gets the reason now instead of a FAILED run.
    for task in &parsed.tasks {
        let Some(callable) = &task.callable else {
            continue;
        };
        let by_key = match principal.as_ref().and_then(|p| p.callable_allow.as_ref()) {
            None => None,
            Some(Ok(key_allow)) => callables::key_refusal(key_allow, &task.name, callable),
            Some(Err(e)) => Some(format!(
                "callable_not_allowed: this API key's callable_allow is malformed ({e}); fix: \
                 create a new key with `pyococtl key create --tenant T --callable-allow MODULES`"
            )),
        };
        if let Some(why) = by_key.or_else(|| {
            callables::submit_refusal(&state.settings.callable_allow, &task.name, callable)
        }) {
            tracing::info!(err_id = "ERR-PYOCO-0002", reason = "callable_not_allowed", task = %task.name, "invalid workflow yaml");
            return Err(ApiError::unprocessable(format!(
                "invalid workflow yaml: {why}"
            )));
        }
    }
    let flow_name = flow_name.trim().to_string();
    if flow_name.is_empty() {
        return Err(ApiError::unprocessable("missing flow_name"));
    }
    if flow_name.chars().count() > MAX_FLOW_NAME_LEN {
        return Err(ApiError::unprocessable(format!(
            "flow_name too long: at most {MAX_FLOW_NAME_LEN} characters"
        )));
    }
    let run = new_run(
        &principal,
        flow_name,
        tag.clone(),
        vec![tag],
        parsed.defaults.clone(),
        Some((parsed.sha256_hex.clone(), parsed.size_bytes)),
        Some(parsed.text.clone()),
        None,
    );
    create_run(&state, &headers, &principal, run).await
}

#[allow(clippy::too_many_arguments)]
fn new_run(
    principal: &Option<Principal>,
    flow_name: String,
    tag: String,
    tags: Vec<String>,
    params: Map<String, Value>,
    workflow_yaml: Option<(String, usize)>,
    workflow_yaml_text: Option<String>,
    timeout_sec: Option<f64>,
) -> NewRun {
    NewRun {
        run_id: uuid::Uuid::new_v4().to_string(),
        flow_name,
        tag,
        tags,
        tenant_id: principal.as_ref().map(|p| p.tenant_id.clone()),
        api_key_id: principal.as_ref().map(|p| p.api_key_id.clone()),
        params,
        workflow_yaml,
        workflow_yaml_text,
        timeout_sec,
        now: now(),
    }
}

/// Queues the job, then stores the PENDING snapshot. With an `Idempotency-Key` header, a key
/// seen before (same tenant, within the TTL) returns the first run instead of creating another.
async fn create_run(
    state: &SharedState,
    headers: &HeaderMap,
    principal: &Option<Principal>,
    run: NewRun,
) -> ApiResult<Response> {
    let res = state.res().await?;
    let job_len = to_ascii_vec(&run.job_message()).len();
    let max_payload = state.client.server_info().max_payload;
    if max_payload > 0 && job_len > max_payload {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("run too large: the job message is {job_len} bytes, above the NATS max_payload of {max_payload} bytes; send smaller params"),
        ));
    }

    let idem_key = headers
        .get(IDEMPOTENCY_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .map(|k| {
            let tenant = principal
                .as_ref()
                .map(|p| p.tenant_id.as_str())
                .unwrap_or("_");
            format!("{tenant}.{}", hex::encode(Sha256::digest(k.as_bytes())))
        });
    let mut run = run;
    if let Some(key) = &idem_key {
        if let Some(existing) = claim_idempotency_key(&res.idempotency, key, &run.run_id).await? {
            match res.runs.get(existing.clone()).await {
                Ok(Some(b)) => {
                    let status = status_of(&b);
                    return Ok(Json(json!({"run_id": existing, "status": status})).into_response());
                }
                // The key is claimed but the run was never stored: the earlier submit is still
                // in flight, or its publish failed. Submit again *as that run*: the same
                // Nats-Msg-Id makes the stream drop the job if the first one got there after all.
                Ok(None) => {
                    tracing::info!(run_id = %existing, "retry of an unfinished submit with the same Idempotency-Key; submitting it again as the same run");
                    run.run_id = existing;
                }
                Err(e) => return Err(ApiError::nats(e.kind())),
            }
        }
    }
    let job = to_ascii_vec(&run.job_message());

    // The job first, then the snapshot: a run is stored only once its job is queued, so a
    // gateway that dies (or loses NATS) half-way leaves no PENDING run without a job. A worker
    // that is faster than the create writes the snapshot itself (from the job), and then the
    // create below finds it. A failed publish keeps the idempotency claim: a retry with the
    // same key resubmits the same run id instead of minting a second run whose work might
    // run twice (the first job may have been stored with its ack lost).
    if let Err(e) = publish_job(&res, &run.tag, &run.run_id, job).await {
        tracing::error!(err_id = "ERR-PYOCO-0003", run_id = %run.run_id, tag = %run.tag, error = %e, "queueing the job failed");
        return Err(ApiError::nats(e));
    }
    let snapshot = to_ascii_vec(&run.initial_snapshot());
    match res.runs.create(&run.run_id, snapshot.clone().into()).await {
        Ok(_) => {}
        Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
            // A worker picked the job up first: its snapshot stands.
            let status = match res.runs.get(run.run_id.clone()).await {
                Ok(Some(b)) => status_of(&b),
                _ => run_status::PENDING.to_string(),
            };
            tracing::info!(run_id = %run.run_id, status = %status, "run submitted (picked up before its snapshot was stored)");
            return Ok(Json(json!({"run_id": run.run_id, "status": status})).into_response());
        }
        Err(e) => {
            // The job is queued durably and will run (the worker stores the snapshot if we
            // cannot): the submit succeeded. Keep trying to store the PENDING snapshot for a
            // while, in the background, so the run is visible before a worker takes it.
            tracing::warn!(err_id = "ERR-PYOCO-0003", run_id = %run.run_id, error = %e, "the job is queued but storing its snapshot failed; retrying in the background");
            let runs = res.runs.clone();
            let run_id = run.run_id.clone();
            let shutdown = state.runtime.shutdown.clone();
            state.runtime.spawn(shutdown.run_until_cancelled_owned(async move {
                for attempt in 0..8u32 {
                    tokio::time::sleep(Duration::from_millis(250 << attempt.min(5))).await;
                    match runs.create(&run_id, snapshot.clone().into()).await {
                        Ok(_) => return,
                        Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => return,
                        Err(_) => {}
                    }
                }
                tracing::warn!(run_id = %run_id, "gave up storing the PENDING snapshot; the worker that runs the job stores it");
            }));
        }
    }
    tracing::info!(run_id = %run.run_id, flow_name = %run.flow_name, tag = %run.tag, "run submitted");
    Ok(Json(json!({"run_id": run.run_id, "status": run_status::PENDING})).into_response())
}

/// The `status` of a stored snapshot, `PENDING` when it cannot be read.
fn status_of(snapshot: &[u8]) -> String {
    serde_json::from_slice::<Doc>(snapshot)
        .ok()
        .and_then(|d| str_field(&d, fields::run::STATUS).map(str::to_string))
        .unwrap_or_else(|| run_status::PENDING.to_string())
}

/// Claims `key` for `run_id`; returns the run id that already holds it, if any.
async fn claim_idempotency_key(
    store: &kv::Store,
    key: &str,
    run_id: &str,
) -> ApiResult<Option<String>> {
    for _ in 0..3 {
        match store.create(key, run_id.to_string().into()).await {
            Ok(_) => return Ok(None),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                match store.get(key).await {
                    Ok(Some(v)) => return Ok(Some(String::from_utf8_lossy(&v).into_owned())),
                    // Expired or deleted between create and get: try to claim again.
                    Ok(None) => continue,
                    Err(e) => return Err(ApiError::nats(e.kind())),
                }
            }
            Err(e) => return Err(ApiError::nats(e.kind())),
        }
    }
    Err(ApiError::nats("idempotency key contention"))
}

/// Publishes with `Nats-Msg-Id = run_id`, so a retry after a lost ack is deduplicated by the stream.
async fn publish_job(res: &Resources, tag: &str, run_id: &str, job: Vec<u8>) -> Result<(), String> {
    let subject = res.names.work_subject(tag);
    let mut last = String::new();
    for attempt in 0..3 {
        let publish = jetstream::message::PublishMessage::build()
            .payload(job.clone().into())
            .message_id(run_id)
            .expected_stream(&res.names.work_stream);
        match res.js.send_publish(subject.clone(), publish).await {
            Ok(ack) => match ack.await {
                Ok(_) => return Ok(()),
                Err(e) => last = e.kind().to_string(),
            },
            Err(e) if e.kind() == PublishErrorKind::TimedOut => last = e.kind().to_string(),
            Err(e) => return Err(e.kind().to_string()),
        }
        tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
    }
    Err(last)
}

// ---------------------------------------------------------------------------------------------
// List

#[derive(serde::Serialize, serde::Deserialize)]
struct Cursor {
    u: f64,
    r: String,
}

pub fn encode_cursor(updated_at: f64, run_id: &str) -> String {
    let text = serde_json::to_string(&Cursor {
        u: updated_at,
        r: run_id.to_string(),
    })
    .unwrap_or_default();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
}

fn decode_cursor(c: &str) -> Option<SortKey> {
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(c.trim_end_matches('='))
        .ok()?;
    let cur: Cursor = serde_json::from_slice(&raw).ok()?;
    Some(SortKey {
        updated_at: cur.u,
        run_id: cur.r,
    })
}

fn non_empty(q: &Query, key: &str) -> Option<String> {
    q.last(key).filter(|s| !s.is_empty()).map(str::to_string)
}

fn wants(include: &[String], words: &[&str]) -> bool {
    include
        .iter()
        .any(|i| words.contains(&i.trim().to_ascii_lowercase().as_str()))
}

/// `GET /runs`: answered from the in-memory index.
pub async fn list(
    State(state): State<SharedState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> ApiResult<Response> {
    let q = Query::parse(raw.as_deref());
    let mut errs = Errors::default();
    let limit = params::query_int(&q, "limit", 50, 1, 200, &mut errs) as usize;
    let updated_after = params::query_float(&q, "updated_after", &mut errs);
    errs.finish()?;
    let principal = state.authenticate(&headers).await?;
    state.indexes_loaded().await?;
    let cursor = match q.last("cursor") {
        Some(c) if !c.is_empty() => Some(decode_cursor(c).ok_or_else(|| {
            tracing::info!(err_id = "ERR-PYOCO-0017", "undecodable list cursor");
            ApiError::unprocessable("invalid list query")
        })?),
        _ => None,
    };
    let filter = RunFilter {
        status: non_empty(&q, "status"),
        flow: non_empty(&q, "flow"),
        tag: non_empty(&q, "tag"),
        workflow_yaml_sha256: non_empty(&q, "workflow_yaml_sha256"),
        tenant: principal.as_ref().map(|p| Some(p.tenant_id.clone())),
    };
    let vnext = q.has("updated_after") || q.has("cursor") || filter.workflow_yaml_sha256.is_some();
    let full = wants(q.all("include"), &["full", "all"]);
    let (items, more) = state
        .runs
        .page(&filter, updated_after, cursor.as_ref(), limit);
    let items: Vec<Doc> = if full {
        // The whole snapshots live in KV: one read per item of this page (≤ 200), in parallel.
        let res = state.res().await?;
        let reads = items.iter().map(|e| {
            let runs = res.runs.clone();
            let id = str_field(&e.summary_doc(), fields::run::RUN_ID)
                .unwrap_or("")
                .to_string();
            async move { runs.get(id).await }
        });
        let mut docs = Vec::with_capacity(items.len());
        for (entry, got) in items.iter().zip(futures::future::join_all(reads).await) {
            match got {
                Ok(Some(b)) => docs.push(
                    serde_json::from_slice::<Doc>(&b).unwrap_or_else(|_| entry.summary_doc()),
                ),
                // Deleted since the page was cut: leave it out, as a list taken a moment later would.
                Ok(None) => {}
                Err(e) => return Err(ApiError::nats(e.kind())),
            }
        }
        docs
    } else {
        items.iter().map(|e| e.summary_doc()).collect()
    };
    let next_cursor = match (more, items.last()) {
        (true, Some(last)) => Some(encode_cursor(
            f64_field(last, fields::run::UPDATED_AT).unwrap_or(0.0),
            str_field(last, fields::run::RUN_ID).unwrap_or(""),
        )),
        _ => None,
    };
    let items: Vec<Value> = items.into_iter().map(Value::Object).collect();
    Ok(if vnext {
        Json(json!({"items": items, "next_cursor": next_cursor})).into_response()
    } else {
        Json(Value::Array(items)).into_response()
    })
}

// ---------------------------------------------------------------------------------------------
// Single run

/// Reads a run the caller may see: 404 for a missing run, an impossible id, or another tenant.
pub async fn load_run(
    state: &SharedState,
    principal: &Option<Principal>,
    run_id: &str,
) -> ApiResult<(Doc, u64)> {
    if !is_valid_kv_key(run_id) {
        return Err(ApiError::not_found("run not found"));
    }
    let res = state.res().await?;
    let entry = res
        .runs
        .entry(run_id)
        .await
        .map_err(|e| ApiError::nats(e.kind()))?;
    let Some(entry) = entry.filter(|e| e.operation == kv::Operation::Put) else {
        tracing::info!(err_id = "ERR-PYOCO-0005", run_id = %run_id, "run not found");
        return Err(ApiError::not_found("run not found"));
    };
    let doc: Doc =
        serde_json::from_slice(&entry.value).map_err(|_| ApiError::not_found("run not found"))?;
    check_tenant(principal, &doc)?;
    Ok((doc, entry.revision))
}

pub fn check_tenant(principal: &Option<Principal>, doc: &Doc) -> ApiResult<()> {
    if let Some(p) = principal {
        if str_field(doc, fields::run::TENANT_ID) != Some(p.tenant_id.as_str()) {
            return Err(ApiError::not_found("run not found"));
        }
    }
    Ok(())
}

pub fn include_records(q: &Query) -> bool {
    wants(
        q.all("include"),
        &["records", "task_records", "full", "all"],
    )
}

/// `GET /runs/{run_id}` with `include` and the worker enrichment.
pub async fn get_run(
    State(state): State<SharedState>,
    headers: HeaderMap,
    Path(run_id): Path<String>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Response> {
    let q = Query::parse(raw.as_deref());
    let principal = state.authenticate(&headers).await?;
    let (doc, _) = load_run(&state, &principal, &run_id).await?;
    let mut view = wire::run_view(&doc, include_records(&q));
    if let Some(worker_id) = doc
        .get(fields::run::WORKER_ID)
        .filter(|v| wire::is_truthy(v))
        .and_then(Value::as_str)
    {
        crate::workers::enrich_run(&state, worker_id, &mut view);
    }
    Ok(Json(Value::Object(view)).into_response())
}

/// `GET /runs/{run_id}/tasks`.
pub async fn get_tasks(
    State(state): State<SharedState>,
    headers: HeaderMap,
    Path(run_id): Path<String>,
) -> ApiResult<Response> {
    let principal = state.authenticate(&headers).await?;
    let (doc, _) = load_run(&state, &principal, &run_id).await?;
    Ok(Json(json!({
        fields::run::RUN_ID: doc.get(fields::run::RUN_ID).cloned().unwrap_or(json!(run_id)),
        fields::run::FLOW_NAME: doc.get(fields::run::FLOW_NAME).cloned().unwrap_or(Value::Null),
        fields::run::STATUS: doc.get(fields::run::STATUS).cloned().unwrap_or(Value::Null),
        fields::run::TASKS: doc.get(fields::run::TASKS).cloned().unwrap_or(json!({})),
        fields::run::TASK_RECORDS: doc.get(fields::run::TASK_RECORDS).cloned().unwrap_or(json!({})),
        fields::run::TASK_RECORDS_TRUNCATED: doc.get(fields::run::TASK_RECORDS_TRUNCATED).map(wire::is_truthy).unwrap_or(false),
    }))
    .into_response())
}

/// `POST /runs/{run_id}/cancel`: compare-and-set on the snapshot's revision, retried on conflict,
/// so no concurrent worker write can erase the request. A PENDING run is cancelled at once.
pub async fn cancel(
    State(state): State<SharedState>,
    headers: HeaderMap,
    Path(run_id): Path<String>,
) -> ApiResult<Response> {
    let principal = state.authenticate(&headers).await?;
    let not_found = || {
        tracing::info!(err_id = "ERR-PYOCO-0005", run_id = %run_id, "run not found");
        ApiError::not_found("run not found")
    };
    if !is_valid_kv_key(&run_id) {
        return Err(ApiError::not_found("run not found"));
    }
    let res = state.res().await?;
    // Another tenant's run: no write, and a 404 like any run the caller may not see.
    let mut denied = false;
    let outcome = pyoco_core::kv::modify(&res.runs, &run_id, |stored| {
        let Some(stored) = stored else {
            return Decision::Keep;
        };
        if check_tenant(&principal, stored).is_err() {
            denied = true;
            return Decision::Keep;
        }
        let status = str_field(stored, fields::run::STATUS)
            .unwrap_or("")
            .to_string();
        // Terminal states are final: shown as they are, nothing written.
        if run_status::is_terminal(&status) {
            return Decision::Keep;
        }
        let mut doc = stored.clone();
        let t = now();
        // The first request's time stands.
        if doc
            .get(fields::run::CANCEL_REQUESTED_AT)
            .map(|v| !wire::is_truthy(v))
            .unwrap_or(true)
        {
            doc.insert(fields::run::CANCEL_REQUESTED_AT.into(), json!(t));
        }
        if let Some(p) = &principal {
            doc.insert(
                fields::run::CANCEL_REQUESTED_BY.into(),
                json!(format!("api_key:{}", p.api_key_id)),
            );
        }
        if status.eq_ignore_ascii_case(run_status::PENDING) {
            // No worker has it: cancel now. The worker that later receives the job sees a
            // terminal run and acknowledges it without running it.
            doc.insert(fields::run::STATUS.into(), json!(run_status::CANCELLED));
            doc.insert(fields::run::END_TIME.into(), json!(t));
        } else {
            doc.insert(fields::run::STATUS.into(), json!(run_status::CANCELLING));
        }
        doc.insert(fields::run::UPDATED_AT.into(), json!(t));
        Decision::Write(doc)
    })
    .await;
    match outcome {
        Ok(_) if denied => Err(ApiError::not_found("run not found")),
        Ok(m) => {
            let doc = m.doc.unwrap_or_default();
            if m.written {
                tracing::info!(run_id = %run_id, status = %str_field(&doc, fields::run::STATUS).unwrap_or(""), "cancel requested");
            }
            Ok(Json(Value::Object(wire::run_view(&doc, false))).into_response())
        }
        Err(ModifyError::NotFound) => Err(not_found()),
        Err(ModifyError::Undecodable(_)) => Err(ApiError::not_found("run not found")),
        Err(ModifyError::Conflict(_)) => Err(ApiError::nats(
            "cancel kept conflicting with concurrent writes; retry",
        )),
        Err(ModifyError::Nats { kind, .. }) => Err(ApiError::nats(kind)),
    }
}
