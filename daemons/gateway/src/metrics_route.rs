//! The `/metrics` handler: gauges from the indexes, one DLQ stream-info request.

use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use chrono::{Local, TimeZone};
use pyoco_core::time::now;
use pyoco_core::wire::{normalize_worker, worker_alive};

use crate::app::SharedState;
use crate::error::ApiResult;
use crate::metrics::Gauges;

/// Start of today in the gateway's local time zone, as the original counts "today".
fn start_of_today() -> f64 {
    let today = Local::now().date_naive();
    today
        .and_hms_opt(0, 0, 0)
        .and_then(|dt| Local.from_local_datetime(&dt).earliest())
        .map(|dt| dt.timestamp() as f64)
        .unwrap_or(0.0)
}

pub async fn metrics(State(state): State<SharedState>, headers: HeaderMap) -> ApiResult<Response> {
    // A documented difference: protected in api_key mode (the original leaves it open).
    state.authenticate(&headers).await?;
    state.indexes_loaded().await?;
    let t = now();
    let workers_alive = state
        .workers
        .all()
        .iter()
        .filter(|(raw, _)| {
            worker_alive(normalize_worker(raw, t, state.settings.worker_disconnect_timeout_sec).1)
        })
        .count() as u64;
    let dlq_messages = match state.res().await {
        Ok(res) => match res.js.get_stream(&res.names.dlq_stream).await {
            Ok(s) => Some(s.cached_info().state.messages),
            Err(_) => None,
        },
        Err(_) => None,
    };
    let gauges = Gauges {
        runs_by_status: state.runs.status_counts(),
        runs_today_by_status: state.runs.status_counts_since(start_of_today()),
        workers_alive,
        dlq_messages,
        pending_by_tag: state.runs.pending_by_tag(),
    };
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(&gauges),
    )
        .into_response())
}
