//! Run retention: terminal runs last updated more than `PYOCO_RUN_RETENTION_SEC` ago are deleted
//! (the original's runs bucket grows forever). Each delete names the revision the index saw, so
//! several gateways doing this at once never delete a run that changed meanwhile, and only one
//! of them succeeds for each run.

use std::time::Duration;

use pyoco_core::time::now;

use crate::app::SharedState;

const SWEEP_EVERY: Duration = Duration::from_secs(60);
const BATCH: usize = 500;

/// Sweeps every minute, forever (a supervised task, started only when retention is on).
pub async fn run(state: SharedState, retention: Duration) -> Result<(), String> {
    state.runs.wait_loaded().await;
    loop {
        sweep(&state, retention).await;
        tokio::time::sleep(SWEEP_EVERY).await;
    }
}

pub async fn sweep(state: &SharedState, retention: Duration) -> usize {
    let Ok(res) = state.res().await else { return 0 };
    let expired = state
        .runs
        .terminal_before(now() - retention.as_secs_f64(), BATCH);
    let mut deleted = 0;
    for (run_id, revision) in expired {
        if res
            .runs
            .delete_expect_revision(&run_id, Some(revision))
            .await
            .is_ok()
        {
            deleted += 1;
        }
    }
    if deleted > 0 {
        tracing::info!(
            deleted,
            retention_sec = retention.as_secs_f64(),
            "deleted runs past retention"
        );
    }
    deleted
}
