//! The wheel registry (`/wheels*`, contract §1.3): the original's checks, statuses and detail
//! strings, objects and meta headers in nats-py's format (see `pyoco_core::wheel::store`).
//! Unlike the original, an upload is streamed into the object store chunk by chunk (never
//! whole in memory) and only becomes visible when every check passed; a download is streamed.

use axum::body::Body;
use axum::extract::multipart::{Multipart, MultipartRejection};
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::StreamExt;
use pyoco_core::json::to_ascii_vec;
use pyoco_core::wheel::store::{ObjectInfo, StoreError, WheelStore};
use pyoco_core::wheel::{self, zip};
use serde_json::{json, Map, Value};

use crate::app::SharedState;
use crate::auth::Principal;
use crate::error::{item, ApiError, ApiResult};
use crate::params::{self, Errors, Query};

/// The zip central directory must lie in the last this many bytes of an upload (it is kept in
/// memory while the rest streams through); real wheels need a few KiB.
const TAIL_MAX: usize = 8 * 1024 * 1024;
/// Longest accepted value of the small form fields (`replace`, `tags`) and part content type.
const SMALL_FIELD_MAX: usize = 8 * 1024;
const CONTENT_TYPE_MAX: usize = 255;
/// Longest request header copied into a history event's `source`.
const SOURCE_HEADER_MAX: usize = 1024;
/// A history listing reads at most this many events.
const HISTORY_SCAN_MAX: usize = 200_000;

fn store_of(res: &pyoco_core::resources::Resources) -> WheelStore {
    WheelStore::new(res.js.clone(), &res.names.wheels_bucket)
}

/// Serialises the version check and the meta publish of uploads in this gateway, so two
/// concurrent uploads of one version cannot both pass the check (0.5's list-then-put race).
/// Only this short step is serialised, not the streaming of the bytes.
static COMMIT: std::sync::LazyLock<tokio::sync::Mutex<()>> =
    std::sync::LazyLock::new(|| tokio::sync::Mutex::new(()));

fn store_err(e: StoreError, state: &SharedState) -> ApiError {
    match e {
        StoreError::NotFound => ApiError::not_found("wheel not found"),
        StoreError::Full(_) => ApiError::new(
            StatusCode::INSUFFICIENT_STORAGE,
            format!(
                "wheel store full: the bucket holds at most PYOCO_WHEEL_MAX_BYTES={} bytes; \
                 delete old wheels (pyococtl wheel delete) or raise the limit",
                state.cfg.wheel_max_bytes
            ),
        ),
        StoreError::BadMeta(m) => ApiError::nats(format!("bad object meta: {m}")),
        StoreError::Nats(m) => ApiError::nats(m),
    }
}

/// The GET /wheels item of one object.
pub fn info_to_http(info: &ObjectInfo) -> Value {
    let digest = info.digest();
    json!({
        "name": info.name(),
        "size_bytes": info.size(),
        "digest": digest,
        "sha256_b64": digest.strip_prefix("SHA-256="),
        "mtime": info.mtime(),
        "nuid": info.nuid(),
        "tags": info.tags(),
    })
}

pub async fn list(State(state): State<SharedState>, headers: HeaderMap) -> ApiResult<Response> {
    state.authenticate(&headers).await?;
    let res = state.res().await?;
    let infos = store_of(&res)
        .list()
        .await
        .map_err(|e| store_err(e, &state))?;
    let mut items: Vec<&ObjectInfo> = infos
        .iter()
        .filter(|i| wheel::WHEEL_NAME_RE.is_match(i.name()))
        .collect();
    items.sort_by(|a, b| a.name().cmp(b.name()));
    let out: Vec<Value> = items.into_iter().map(info_to_http).collect();
    Ok(Json(Value::Array(out)).into_response())
}

/// The upload being streamed: its name, content type, chunks written so far and the tail.
struct Incoming {
    name: String,
    dist: String,
    version: wheel::Version,
    content_type: String,
    upload: wheel::store::Upload,
    tail: Vec<u8>,
}

/// Reads a small text field, refusing one longer than [`SMALL_FIELD_MAX`].
async fn small_field(mut f: axum::extract::multipart::Field<'_>, name: &str) -> ApiResult<String> {
    let mut buf = Vec::new();
    while let Some(c) = f.chunk().await.map_err(|e| bad_multipart(&e))? {
        buf.extend_from_slice(&c);
        if buf.len() > SMALL_FIELD_MAX {
            return Err(ApiError::unprocessable(format!(
                "form field {name} too long: at most {SMALL_FIELD_MAX} bytes"
            )));
        }
    }
    String::from_utf8(buf)
        .map_err(|_| ApiError::unprocessable(format!("form field {name} is not UTF-8")))
}

fn bad_multipart(e: &axum::extract::multipart::MultipartError) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        format!("invalid multipart body: {}", e.body_text()),
    )
}

pub async fn upload(
    State(state): State<SharedState>,
    headers: HeaderMap,
    mp: Result<Multipart, MultipartRejection>,
) -> ApiResult<Response> {
    let principal = state.authenticate(&headers).await?;
    // Not a multipart body: FastAPI's answer, the `wheel` part is missing.
    let mut mp = mp.map_err(|_| {
        ApiError::validation(vec![item::missing(json!(["body", "wheel"]), Value::Null)])
    })?;
    let res = state.res().await?;
    let store = store_of(&res);
    let mut incoming: Option<Incoming> = None;
    let result = read_form(&state, &store, &mut mp, &mut incoming).await;
    match result {
        Ok((replace, tags)) => {
            let Some(mut inc) = incoming else {
                return Err(ApiError::validation(vec![item::missing(
                    json!(["body", "wheel"]),
                    Value::Null,
                )]));
            };
            match finish_upload(&state, &store, &mut inc, replace, &tags).await {
                Ok(out) => {
                    let size = inc.upload.size;
                    let sha = out
                        .get("sha256_hex")
                        .and_then(Value::as_str)
                        .map(str::to_string);
                    append_history(
                        &state,
                        &res,
                        &headers,
                        "upload",
                        &inc.name,
                        principal.as_ref(),
                        &tags,
                        Some(size),
                        sha,
                        Some(replace),
                    )
                    .await;
                    Ok(Json(out).into_response())
                }
                Err(e) => {
                    inc.upload.abort().await;
                    Err(e)
                }
            }
        }
        Err(e) => {
            if let Some(mut inc) = incoming {
                inc.upload.abort().await;
            }
            Err(e)
        }
    }
}

/// Reads the form; the `wheel` part is streamed into `incoming`. Returns `replace` and tags.
async fn read_form(
    state: &SharedState,
    store: &WheelStore,
    mp: &mut Multipart,
    incoming: &mut Option<Incoming>,
) -> ApiResult<(bool, Vec<String>)> {
    let limit = size_limit(state);
    let mut replace_raw: Option<String> = None;
    let mut tags_raw: Option<String> = None;
    let mut ignored = 0usize;
    while let Some(mut f) = mp.next_field().await.map_err(|e| bad_multipart(&e))? {
        match f.name().unwrap_or("") {
            "replace" => replace_raw = Some(small_field(f, "replace").await?),
            "tags" => tags_raw = Some(small_field(f, "tags").await?),
            "wheel" if incoming.is_none() => {
                let raw_name = f.file_name().unwrap_or("").to_string();
                let name = wheel::normalize_wheel_name(&raw_name)
                    .ok_or_else(|| ApiError::unprocessable("invalid wheel name"))?;
                let parsed = wheel::parse_wheel_filename(&name)
                    .map_err(|_| ApiError::unprocessable("invalid wheel filename"))?;
                // Tags sent before the file (as clients do) are checked before its bytes.
                if let Some(t) = &tags_raw {
                    wheel::parse_tags_csv(Some(t))
                        .ok_or_else(|| ApiError::unprocessable("invalid wheel tags"))?;
                }
                let content_type = f
                    .content_type()
                    .unwrap_or("application/octet-stream")
                    .to_string();
                if content_type.len() > CONTENT_TYPE_MAX
                    || content_type.chars().any(|c| c.is_control())
                {
                    return Err(ApiError::unprocessable(format!(
                        "invalid wheel content type: at most {CONTENT_TYPE_MAX} printable characters"
                    )));
                }
                let inc = incoming.insert(Incoming {
                    name,
                    dist: parsed.name,
                    version: parsed.version,
                    content_type,
                    upload: store.begin(),
                    tail: Vec::new(),
                });
                while let Some(c) = f.chunk().await.map_err(|e| bad_multipart(&e))? {
                    if limit > 0 && inc.upload.size + c.len() as u64 > limit {
                        return Err(ApiError::new(
                            StatusCode::PAYLOAD_TOO_LARGE,
                            "wheel too large",
                        ));
                    }
                    inc.upload
                        .write(&c)
                        .await
                        .map_err(|e| store_err(e, state))?;
                    inc.tail.extend_from_slice(&c);
                    if inc.tail.len() > 2 * TAIL_MAX {
                        let cut = inc.tail.len() - TAIL_MAX;
                        inc.tail.drain(..cut);
                    }
                }
            }
            // Other parts (and a second `wheel`) are read and dropped, up to a bound, so a
            // client cannot keep the request going forever outside the size limit.
            _ => {
                while let Some(c) = f.chunk().await.map_err(|e| bad_multipart(&e))? {
                    ignored += c.len();
                    if ignored > SMALL_FIELD_MAX * 128 {
                        return Err(ApiError::new(
                            StatusCode::PAYLOAD_TOO_LARGE,
                            format!(
                                "unexpected form parts too large: at most {} bytes besides wheel, replace and tags",
                                SMALL_FIELD_MAX * 128
                            ),
                        ));
                    }
                }
            }
        }
    }
    let tags = wheel::parse_tags_csv(tags_raw.as_deref())
        .ok_or_else(|| ApiError::unprocessable("invalid wheel tags"))?;
    let replace = match replace_raw {
        None => true,
        Some(r) => params::parse_lax_bool(&r).ok_or_else(|| {
            ApiError::validation(vec![item::bool_parsing(
                json!(["body", "replace"]),
                json!(r),
            )])
        })?,
    };
    Ok((replace, tags))
}

/// The per-wheel limit: the smaller positive one of `PYOCO_WHEEL_MAX_BYTES` (the original's
/// check) and `PYOCO_WHEEL_MAX_FILE_BYTES`; 0 when neither is set.
fn size_limit(state: &SharedState) -> u64 {
    [state.cfg.wheel_max_bytes, state.cfg.wheel_max_file_bytes]
        .into_iter()
        .filter(|v| *v > 0)
        .map(|v| v as u64)
        .min()
        .unwrap_or(0)
}

async fn finish_upload(
    state: &SharedState,
    store: &WheelStore,
    inc: &mut Incoming,
    replace: bool,
    tags: &[String],
) -> ApiResult<Value> {
    let sha = inc.upload.finish().await.map_err(|e| store_err(e, state))?;
    // The file must be a zip whose members are safe to install (pip would refuse it later,
    // on every worker; here the uploader is told at once).
    if state.cfg.wheel_check_archive {
        zip::central_directory(&inc.tail, inc.upload.size)
            .and_then(|e| zip::check_wheel_members(&e))
            .map_err(|why| {
                ApiError::unprocessable(format!(
                    "invalid wheel file: {why} (build it with `python -m build --wheel`)"
                ))
            })?;
    }
    inc.tail = Vec::new();
    let _serial = COMMIT.lock().await;
    let infos = store.list().await.map_err(|e| store_err(e, state))?;
    let mut newest: Option<wheel::Version> = None;
    for i in &infos {
        if !wheel::WHEEL_NAME_RE.is_match(i.name()) {
            continue;
        }
        let Ok(w) = wheel::parse_wheel_filename(i.name()) else {
            continue;
        };
        if w.name != inc.dist {
            continue;
        }
        if w.version == inc.version {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "wheel version already exists; bump version",
            ));
        }
        if newest.as_ref().is_none_or(|n| w.version > *n) {
            newest = Some(w.version);
        }
    }
    if newest.as_ref().is_some_and(|n| inc.version < *n) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "wheel version must be greater than existing latest version",
        ));
    }
    let previous = store
        .info_any(&inc.name)
        .await
        .map_err(|e| store_err(e, state))?;
    if !replace && previous.as_ref().is_some_and(|p| !p.deleted()) {
        return Err(ApiError::new(StatusCode::CONFLICT, "wheel already exists"));
    }
    let sha_hex = hex::encode(sha);
    let mut meta = Map::new();
    meta.insert("content-type".into(), json!(inc.content_type));
    meta.insert("sha256".into(), json!(sha_hex));
    if !tags.is_empty() {
        meta.insert(wheel::TAGS_HEADER.into(), json!(tags.join(",")));
    }
    let info = inc
        .upload
        .commit(&inc.name, &sha, meta, previous.as_ref())
        .await
        .map_err(|e| store_err(e, state))?;
    let mut out = info_to_http(&info);
    out["sha256_hex"] = json!(sha_hex);
    out["tags"] = json!(tags);
    Ok(out)
}

fn header_value(headers: &HeaderMap, name: &str) -> Value {
    match headers.get(name).and_then(|v| v.to_str().ok()) {
        Some(v) if !v.is_empty() => {
            let mut s = v.to_string();
            if s.len() > SOURCE_HEADER_MAX {
                let mut cut = SOURCE_HEADER_MAX;
                while !s.is_char_boundary(cut) {
                    cut -= 1;
                }
                s.truncate(cut);
            }
            json!(s)
        }
        _ => Value::Null,
    }
}

#[allow(clippy::too_many_arguments)]
async fn append_history(
    _state: &SharedState,
    res: &pyoco_core::resources::Resources,
    headers: &HeaderMap,
    action: &str,
    wheel_name: &str,
    principal: Option<&Principal>,
    tags: &[String],
    size_bytes: Option<u64>,
    sha256_hex: Option<String>,
    replace: Option<bool>,
) {
    let now = pyoco_core::time::now();
    let event_id = uuid::Uuid::new_v4().simple().to_string();
    let key = format!("{:013}_{}", (now * 1000.0) as u64, event_id);
    let evt = json!({
        "event_id": event_id,
        "occurred_at": now,
        "action": action,
        "wheel_name": wheel_name,
        "tags": tags,
        "size_bytes": size_bytes,
        "sha256_hex": sha256_hex,
        "replace": replace,
        "actor": {
            "tenant_id": principal.map(|p| p.tenant_id.clone()),
            "api_key_id": principal.map(|p| p.api_key_id.clone()),
        },
        "source": {
            // The peer address is not passed down to the handlers.
            "remote_addr": Value::Null,
            "x_forwarded_for": header_value(headers, "x-forwarded-for"),
            "x_real_ip": header_value(headers, "x-real-ip"),
            "user_agent": header_value(headers, "user-agent"),
            "host": header_value(headers, "host"),
            "scheme": "http",
        },
    });
    if let Err(e) = res.wheel_history.put(key, to_ascii_vec(&evt).into()).await {
        tracing::error!(wheel_name, action, error = %e, "append wheel history failed");
    }
}

pub async fn history(
    State(state): State<SharedState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> ApiResult<Response> {
    let q = Query::parse(raw.as_deref());
    let mut errs = Errors::default();
    let limit = params::query_int(&q, "limit", 100, 1, 500, &mut errs) as usize;
    errs.finish()?;
    state.authenticate(&headers).await?;
    let name_filter = match q.last("wheel_name").map(str::trim) {
        Some(n) if !n.is_empty() => Some(
            wheel::normalize_wheel_name(n)
                .ok_or_else(|| ApiError::unprocessable("invalid wheel name"))?,
        ),
        _ => None,
    };
    let action_filter = match q.last("action").map(str::trim) {
        Some(a) if !a.is_empty() => {
            let a = a.to_ascii_lowercase();
            if a != "upload" && a != "delete" {
                return Err(ApiError::unprocessable("invalid action"));
            }
            Some(a)
        }
        _ => None,
    };
    let res = state.res().await?;
    let mut keys = res.wheel_history.keys().await.map_err(ApiError::nats)?;
    let mut out: Vec<Value> = Vec::new();
    let mut scanned = 0usize;
    while let Some(k) = keys.next().await {
        let k = k.map_err(ApiError::nats)?;
        scanned += 1;
        if scanned > HISTORY_SCAN_MAX {
            break;
        }
        let Ok(Some(v)) = res.wheel_history.get(&k).await else {
            continue;
        };
        let Ok(item @ Value::Object(_)) = serde_json::from_slice::<Value>(&v) else {
            continue;
        };
        if let Some(n) = &name_filter {
            if item.get("wheel_name").and_then(Value::as_str).unwrap_or("") != n {
                continue;
            }
        }
        if let Some(a) = &action_filter {
            let act = item
                .get("action")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_ascii_lowercase();
            if &act != a {
                continue;
            }
        }
        out.push(item);
    }
    let key = |v: &Value| {
        (
            v.get("occurred_at").and_then(Value::as_f64).unwrap_or(0.0),
            v.get("event_id")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
        )
    };
    out.sort_by(|a, b| {
        let (ka, kb) = (key(a), key(b));
        kb.0.total_cmp(&ka.0).then(kb.1.cmp(&ka.1))
    });
    out.truncate(limit);
    Ok(Json(Value::Array(out)).into_response())
}

pub async fn download(
    State(state): State<SharedState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    state.authenticate(&headers).await?;
    let name =
        wheel::normalize_wheel_name(&name).ok_or_else(|| ApiError::not_found("wheel not found"))?;
    let res = state.res().await?;
    let store = store_of(&res);
    let info = store.info(&name).await.map_err(|e| store_err(e, &state))?;
    let body = store.read(&info).await.map_err(|e| store_err(e, &state))?;
    let body = body.map(|r| {
        r.map_err(|e| {
            tracing::error!(error = %e, "download wheel failed mid-stream");
            std::io::Error::other(e.to_string())
        })
    });
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, info.size().to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}\""),
            ),
        ],
        Body::from_stream(body),
    )
        .into_response())
}

pub async fn delete(
    State(state): State<SharedState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    let principal = state.authenticate(&headers).await?;
    let name =
        wheel::normalize_wheel_name(&name).ok_or_else(|| ApiError::not_found("wheel not found"))?;
    let res = state.res().await?;
    let store = store_of(&res);
    let info = store.info(&name).await.map_err(|e| store_err(e, &state))?;
    store
        .delete(&info)
        .await
        .map_err(|e| store_err(e, &state))?;
    append_history(
        &state,
        &res,
        &headers,
        "delete",
        &name,
        principal.as_ref(),
        &info.tags(),
        Some(info.size()),
        info.sha256_hex(),
        None,
    )
    .await;
    Ok(Json(json!({"name": name, "deleted": true})).into_response())
}
