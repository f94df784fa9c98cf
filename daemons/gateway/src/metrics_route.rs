//! The `/metrics` handler: gauges from the indexes, one DLQ stream-info request.

use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use chrono::{Local, TimeZone};
use pyoco_core::time::now;
use pyoco_core::wire::{normalize_worker, worker_alive};

use crate::app::SharedState;
use crate::error::ApiResult;
use crate::index::{RunIndex, WorkerIndex};
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

/// The gauges from the indexes at `now` (`today` = start of the day the "today" gauge counts).
pub fn gauges(
    runs: &RunIndex,
    workers: &WorkerIndex,
    disconnect_timeout_sec: f64,
    now: f64,
    today: f64,
    dlq_messages: Option<u64>,
) -> Gauges {
    let workers_alive = workers
        .all()
        .iter()
        .filter(|(raw, _)| worker_alive(normalize_worker(raw, now, disconnect_timeout_sec).1))
        .count() as u64;
    Gauges {
        runs_by_status: runs.status_counts(),
        runs_today_by_status: runs.status_counts_since(today),
        workers_alive,
        dlq_messages,
        pending_by_tag: runs.pending_by_tag(),
    }
}

pub async fn metrics(State(state): State<SharedState>, headers: HeaderMap) -> ApiResult<Response> {
    // A documented difference: protected in api_key mode (the original leaves it open).
    state.authenticate(&headers).await?;
    state.indexes_loaded().await?;
    let t = now();
    let dlq_messages = match state.res().await {
        Ok(res) => match res.js.get_stream(&res.names.dlq_stream).await {
            Ok(s) => Some(s.cached_info().state.messages),
            Err(_) => None,
        },
        Err(_) => None,
    };
    let gauges = gauges(
        &state.runs,
        &state.workers,
        state.settings.worker_disconnect_timeout_sec,
        t,
        start_of_today(),
        dlq_messages,
    );
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(&gauges),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use async_nats::jetstream::kv::Operation;
    use bytes::Bytes;
    use serde_json::json;

    use super::*;
    use crate::index::Follower;
    use crate::metrics::Metrics;

    fn feed(f: &impl Follower, docs: &[(&str, serde_json::Value)]) {
        let g = f.begin();
        for (i, (key, v)) in docs.iter().enumerate() {
            let value = Bytes::from(serde_json::to_vec(v).unwrap());
            f.entry(key, Operation::Put, &value, i as u64 + 1, false);
        }
        f.finish(g);
    }

    #[test]
    fn gauges_of_a_known_set_of_runs_and_workers() {
        let now = 1_000_000.0;
        let today = now - 3600.0;
        let metrics = Arc::new(Metrics::default());
        let runs = RunIndex::new(metrics.clone());
        let run = |status: &str, at: f64, tag: &str| json!({"status": status, "updated_at": at, "tag": tag, "flow_name": "f"});
        feed(
            runs.as_ref(),
            &[
                ("r1", run("COMPLETED", now - 7200.0, "default")),
                ("r2", run("COMPLETED", now - 10.0, "default")),
                ("r3", run("FAILED", now - 20.0, "gpu")),
                ("r4", run("PENDING", now - 1.0, "gpu")),
                ("r5", run("PENDING", now - 2.0, "gpu")),
                ("r6", run("RUNNING", now - 86400.0, "default")),
            ],
        );
        let workers = WorkerIndex::default();
        let worker = |state: &str, seen: f64| json!({"state": state, "last_seen_at": seen, "tags": ["default"]});
        feed(
            &workers,
            &[
                ("w-idle", worker("IDLE", now - 5.0)),
                ("w-busy", worker("RUNNING", now - 1.0)),
                ("w-silent", worker("IDLE", now - 100.0)),
                ("w-gone", worker("STOPPED_GRACEFUL", now - 1.0)),
            ],
        );
        let g = gauges(&runs, &workers, 20.0, now, today, Some(0));
        let text = metrics.render(&g);
        let expected = "\
# HELP pyoco_runs_total Count of runs by status (best-effort from KV).
# TYPE pyoco_runs_total gauge
pyoco_runs_total{status=\"COMPLETED\"} 2
pyoco_runs_total{status=\"FAILED\"} 1
pyoco_runs_total{status=\"PENDING\"} 2
pyoco_runs_total{status=\"RUNNING\"} 1
# HELP pyoco_runs_today_total Count of runs updated today by status (best-effort from KV).
# TYPE pyoco_runs_today_total gauge
pyoco_runs_today_total{status=\"COMPLETED\"} 1
pyoco_runs_today_total{status=\"FAILED\"} 1
pyoco_runs_today_total{status=\"PENDING\"} 2
# HELP pyoco_workers_alive_total Count of workers present in TTL KV (best-effort).
# TYPE pyoco_workers_alive_total gauge
pyoco_workers_alive_total 2
# HELP pyoco_dlq_messages_total Total DLQ messages in the DLQ stream (best-effort).
# TYPE pyoco_dlq_messages_total gauge
pyoco_dlq_messages_total 0
# HELP pyoco_queue_depth Runs waiting (PENDING) per routing tag.
# TYPE pyoco_queue_depth gauge
pyoco_queue_depth{tag=\"gpu\"} 2
# HELP pyoco_runs_submitted_total";
        assert!(text.starts_with(expected), "{text}");
        // Replayed runs are state, not events: no counters yet.
        assert!(text.contains("# TYPE pyoco_runs_submitted_total counter\n# HELP"));
    }
}
