//! One job, from the message to the ACK, split by concern:
//! - [`decode`]: the job message → a typed [`Job`] (and its run's initial [`RunState`]);
//! - [`execute`]: the per-run orchestration (skip finished runs, pick up, run through a runner,
//!   record progress, enforce cancel and timeouts, write the terminal snapshot, ACK);
//! - [`failure`]: the NAK / dead-letter / FAILED paths, including max-deliveries advisories;
//! - [`dlq`]: publishing dead letters.
//!
//! At-least-once delivery made harmless: a redelivered job whose run is already terminal is
//! acknowledged without running; a job that fails on its last allowed delivery ends FAILED and
//! in the DLQ instead of staying RUNNING.

pub mod decode;
pub mod dlq;
pub mod execute;
pub mod failure;

use std::sync::Arc;

use pyoco_core::resources::Resources;
use serde_json::{json, Map, Value};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::registry::Registry;
use crate::runner::Runner;
use crate::settings::WorkerSettings;
use crate::snapshot::Limits;

pub use decode::{decode_job, InvalidJob, Job};
pub use execute::process;
pub use failure::on_max_deliveries;

/// Everything a job needs from the worker.
pub struct JobCtx {
    pub settings: Arc<WorkerSettings>,
    pub res: Resources,
    pub worker_id: String,
    pub registry: Registry,
    pub limits: Limits,
    /// Becomes `Some(deadline)` on SIGTERM: unfinished runs are put back at the deadline.
    pub drain: watch::Receiver<Option<Instant>>,
}

/// What became of the runner: still good, or killed/dead (the caller replaces it).
pub enum RunnerFate {
    Reusable(Runner),
    Replace(Runner),
}

/// Running and pending tasks become `to` (the runner is gone, they will never finish).
pub(crate) fn end_open_tasks(tasks: &Map<String, Value>, to: &str) -> Map<String, Value> {
    tasks
        .iter()
        .map(|(k, v)| {
            let open = matches!(v.as_str(), Some("RUNNING") | Some("PENDING"));
            (k.clone(), if open { json!(to) } else { v.clone() })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_tasks_end_finished_ones_stay() {
        let mut t = Map::new();
        for (k, v) in [
            ("a", "RUNNING"),
            ("b", "PENDING"),
            ("c", "SUCCEEDED"),
            ("d", "FAILED"),
        ] {
            t.insert(k.into(), json!(v));
        }
        let e = end_open_tasks(&t, "CANCELLED");
        assert_eq!(
            Value::Object(e),
            json!({"a": "CANCELLED", "b": "CANCELLED", "c": "SUCCEEDED", "d": "FAILED"})
        );
    }
}
