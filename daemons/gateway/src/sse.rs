//! `GET /runs/{run_id}/watch`: Server-Sent Events pushed from the runs KV watch.
//!
//! The original polls KV every 0.5 s per connection and never ends the stream. Here each change
//! of the run's key (delivered by the gateway's KV watch) is sent at once with `id:` = the KV
//! revision; `Last-Event-ID` resumes (a snapshot is sent only when newer than that revision); the
//! stream ends after the terminal snapshot, after `timeout_sec`, or with a `shutdown` event when
//! the gateway stops (clients reconnect with `Last-Event-ID`). A `heartbeat` event follows
//! 5 s without a snapshot, as in the original.

use pyoco_core::wire::fields;
use std::convert::Infallible;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use pyoco_core::json::to_ascii_vec;
use pyoco_core::time::now;
use pyoco_core::wire::{self, f64_field, run_status, str_field, Doc};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::app::SharedState;
use crate::error::{ApiError, ApiResult};
use crate::params::{self, Errors, Query};
use crate::runs::{check_tenant, include_records, load_run};

const HEARTBEAT: Duration = Duration::from_secs(5);

/// One event on the wire: `event:`, `id:` (snapshots only), `data:` as the original's compact
/// ASCII JSON, blank line.
fn sse_frame(event: &str, id: Option<u64>, data: &Value) -> Bytes {
    let mut frame = format!("event: {event}\n").into_bytes();
    if let Some(id) = id {
        frame.extend(format!("id: {id}\n").into_bytes());
    }
    frame.extend_from_slice(b"data: ");
    frame.extend(to_ascii_vec(data));
    frame.extend_from_slice(b"\n\n");
    Bytes::from(frame)
}

pub async fn watch(
    State(state): State<SharedState>,
    headers: HeaderMap,
    Path(run_id): Path<String>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Response> {
    let q = Query::parse(raw.as_deref());
    let mut errs = Errors::default();
    let since = params::query_float(&q, "since", &mut errs);
    let timeout_sec = params::query_int(&q, "timeout_sec", 60, 1, 600, &mut errs);
    errs.finish()?;
    let principal = state.authenticate(&headers).await?;
    // Subscribe before reading, so no change between the read and the subscription is missed.
    let mut changes = state.runs.subscribe(&run_id);
    let (doc, revision) = load_run(&state, &principal, &run_id).await?;
    let with_records = include_records(&q);
    let resume_after: u64 = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);

    // A bounded number of open streams, in all and per tenant: each holds a task, a channel and
    // a subscription, and a client must not be able to take them all.
    let tenant = principal
        .as_ref()
        .map(|p| p.tenant_id.clone())
        .unwrap_or_default();
    let slot = state.streams.acquire(&tenant).map_err(|full| {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "too many open watch streams: {full}; close some (or raise {})",
                full.setting()
            ),
        )
    })?;
    let (tx, rx) = mpsc::channel::<Result<Bytes, Infallible>>(16);
    let runs = state.runs.clone();
    let store = state.res().await?.runs;
    let shutdown = state.runtime.shutdown.clone();
    // Tracked: shutdown waits (bounded) for the stream to send its `shutdown` event.
    state.runtime.spawn(async move {
        let _slot = slot; // released when the stream ends
        let deadline = Instant::now() + Duration::from_secs(timeout_sec as u64);
        let mut last_sent = resume_after;
        let mut last_event = Instant::now();
        let emit = |doc: &Doc, rev: u64| -> Option<Bytes> {
            let updated = f64_field(doc, fields::run::UPDATED_AT).unwrap_or(0.0);
            if since.map(|s| updated < s).unwrap_or(false) {
                return None;
            }
            let data = json!({"run_id": run_id, "snapshot": Value::Object(wire::run_view(doc, with_records)), "ts": now()});
            Some(sse_frame("snapshot", Some(rev), &data))
        };
        let terminal = |doc: &Doc| run_status::is_terminal(str_field(doc, fields::run::STATUS).unwrap_or(""));

        if revision > last_sent {
            last_sent = revision;
            if let Some(frame) = emit(&doc, revision) {
                if tx.send(Ok(frame)).await.is_err() {
                    return;
                }
                last_event = Instant::now();
            }
        }
        if terminal(&doc) {
            return;
        }
        loop {
            let heartbeat_at = last_event + HEARTBEAT;
            tokio::select! {
                changed = changes.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let Some(indexed) = runs.get(&run_id) else {
                        return; // deleted: the original also stops silently
                    };
                    if indexed.revision <= last_sent {
                        continue;
                    }
                    // The index keeps summaries; the snapshot itself is one KV read.
                    let Ok(Some(entry)) = store.entry(run_id.as_str()).await else {
                        return;
                    };
                    if entry.operation != async_nats::jetstream::kv::Operation::Put || entry.revision <= last_sent {
                        continue;
                    }
                    last_sent = entry.revision;
                    let Ok(snapshot) = serde_json::from_slice::<Doc>(&entry.value) else { return };
                    if check_tenant(&principal, &snapshot).is_err() {
                        return;
                    }
                    if let Some(frame) = emit(&snapshot, entry.revision) {
                        if tx.send(Ok(frame)).await.is_err() {
                            return;
                        }
                        last_event = Instant::now();
                    }
                    if terminal(&snapshot) {
                        return;
                    }
                }
                _ = tokio::time::sleep_until(heartbeat_at) => {
                    let data = json!({"run_id": run_id, "ts": now()});
                    if tx.send(Ok(sse_frame("heartbeat", None, &data))).await.is_err() {
                        return;
                    }
                    last_event = Instant::now();
                }
                _ = tokio::time::sleep_until(deadline) => return,
                // The gateway stops: end the stream (clients reconnect with Last-Event-ID)
                // instead of holding the shutdown until systemd's SIGKILL.
                _ = shutdown.cancelled() => {
                    let data = json!({"run_id": run_id, "ts": now(), "reason": "gateway stopping"});
                    let _ = tx.send(Ok(sse_frame("shutdown", None, &data))).await;
                    return;
                }
            }
        }
    });

    let mut resp = Response::new(Body::from_stream(
        tokio_stream::wrappers::ReceiverStream::new(rx),
    ));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(resp)
}
