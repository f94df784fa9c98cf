//! The worker as a library, in-process: `pyoco_worker::run` against a real nats-server and a
//! real Python runner, stopped by cancelling its shutdown token.
//!
//! Needs the test environment (`source .test-env/env`: `PYOCO_TEST_PY311` with pyoco, a
//! nats-server); without it the test says so and does nothing.

use std::time::Duration;

use pyoco_core::config::Config;
use pyoco_core::resources::Names;
use pyoco_tests::nats::NatsServer;
use pyoco_worker::{run, WorkerSettings};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

const FLOW: &str = "version: 1\nflow:\n  graph: |\n    add_one >> to_text\n  defaults: {}\ntasks:\n  add_one: {callable: \"pyoco_server._workflow_test_tasks:add_one\"}\n  to_text: {callable: \"pyoco_server._workflow_test_tasks:to_text\"}\n";

async fn kv_doc(kv: &async_nats::jetstream::kv::Store, key: &str) -> Option<Value> {
    let bytes = kv.get(key).await.ok().flatten()?;
    serde_json::from_slice(&bytes).ok()
}

/// Polls `f` every 100 ms until it returns `Some`, or panics after `secs`.
async fn wait_for<T, F, Fut>(secs: u64, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let until = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_a_job_and_stops_on_the_token_with_a_final_record() {
    // The harness finds the interpreter in the environment or `.test-env/env` (and fails,
    // naming the fix, when neither has it): no silent skip.
    let python = pyoco_tests::py311().display().to_string();
    let nats = NatsServer::start().await;
    let work = std::env::temp_dir().join(format!("pyoco-worker-inproc-{}", std::process::id()));
    let cfg = Config {
        nats_url: nats.url(),
        worker_tags: "inproc".into(),
        worker_id: "inproc-w".into(),
        worker_concurrency: 1,
        python,
        worker_work_dir: work.display().to_string(),
        worker_drain_timeout_sec: 5.0,
        ..Config::default()
    };
    let names = Names::from_config(&cfg);
    let settings = WorkerSettings::from_config(cfg, false).expect("valid settings");
    let shutdown = CancellationToken::new();
    let worker = tokio::spawn(run(settings, shutdown.clone()));

    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    // The worker record appears once resources exist and the fetch loop is about to start.
    let workers = wait_for(60, "the workers bucket", || async {
        js.get_key_value(&names.workers_bucket).await.ok()
    })
    .await;
    let rec = wait_for(60, "the worker record", || async {
        kv_doc(&workers, "inproc-w").await
    })
    .await;
    assert_eq!(rec["state"], "IDLE", "{rec}");

    let job = json!({"run_id": "inproc-r1", "flow_name": "main", "tag": "inproc", "tags": ["inproc"],
        "params": {"x": 1}, "workflow_yaml": FLOW});
    js.publish(names.work_subject("inproc"), job.to_string().into())
        .await
        .unwrap()
        .await
        .unwrap();
    let runs = js.get_key_value(&names.runs_bucket).await.unwrap();
    let done = wait_for(60, "the run to finish", || async {
        kv_doc(&runs, "inproc-r1")
            .await
            .filter(|d| d["status"] == "COMPLETED" || d["status"] == "FAILED")
    })
    .await;
    assert_eq!(done["status"], "COMPLETED", "{done}");
    assert_eq!(done["task_records"]["to_text"]["output"], "v=2");
    assert_eq!(done["worker_id"], "inproc-w");

    // Cancelling the token is SIGTERM: drained, every task joined, the final record written.
    shutdown.cancel();
    let result = tokio::time::timeout(Duration::from_secs(30), worker)
        .await
        .expect("run returns soon after the token is cancelled")
        .expect("run did not panic");
    assert!(result.is_ok(), "{result:?}");
    let rec = kv_doc(&workers, "inproc-w").await.expect("worker record");
    assert_eq!(
        (
            rec["state"].clone(),
            rec["stop_reason"].clone(),
            rec["last_run_id"].clone()
        ),
        (
            json!("STOPPED_GRACEFUL"),
            json!("graceful_shutdown"),
            json!("inproc-r1")
        )
    );
    let _ = std::fs::remove_dir_all(&work);
}

#[tokio::test]
async fn bad_settings_are_refused_before_anything_starts() {
    let cfg = Config {
        worker_tags: "no.dots".into(),
        ..Config::default()
    };
    let e = WorkerSettings::from_config(cfg, false).unwrap_err();
    assert_eq!(e.exit_code(), 2);
    assert!(e.to_string().contains("invalid tag 'no.dots'"), "{e}");
}
