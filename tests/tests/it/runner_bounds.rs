//! Runner resource bounds end to end: the worker's `PYOCO_WORKER_RUNNER_MEMORY_MAX_BYTES`
//! reaches the Python runners as RLIMIT_AS, a run over it ends FAILED `resource_limit`, and the
//! same worker goes on running.

use std::time::Duration;

use pyoco_tests::*;
use serde_json::Value;

const TASKS: &str = r#"
def hog():
    data = bytearray(1 << 30)
    return len(data)

def small(x=0):
    return x + 1
"#;

async fn submit(gw: &Gateway, graph: &str, tasks: &[&str], tag: &str) -> String {
    let mut yaml = format!("version: 1\nflow:\n  graph: \"{graph}\"\ntasks:\n");
    for t in tasks {
        yaml.push_str(&format!("  {t}: {{callable: \"rbtasks:{t}\"}}\n"));
    }
    let form = reqwest::multipart::Form::new()
        .part(
            "workflow",
            reqwest::multipart::Part::bytes(yaml.into_bytes()).file_name("flow.yaml"),
        )
        .text("flow_name", "main")
        .text("tag", tag.to_string());
    let body: Value = http()
        .post(gw.url("/runs/yaml"))
        .multipart(form)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    body["run_id"]
        .as_str()
        .unwrap_or_else(|| panic!("submit failed: {body}"))
        .to_string()
}

async fn finished(gw: &Gateway, run_id: &str) -> Value {
    let base = gw.base_url();
    wait_for_run_status(
        &base,
        run_id,
        &["COMPLETED", "FAILED", "CANCELLED"],
        Duration::from_secs(60),
        None,
    )
    .await;
    get_run(&base, &format!("{run_id}?include=records"), None)
        .await
        .1
}

#[tokio::test]
async fn a_run_over_the_memory_limit_fails_and_the_worker_goes_on() {
    let nats = NatsServer::start().await;
    let gw = Gateway::start(&nats.url(), &[]).await;
    gw.wait_nats_connected().await;
    let tasks = TestDir::new("rbtasks");
    tasks.write("rbtasks.py", TASKS);
    let w = Worker::start(
        &nats.url(),
        "bounds",
        &unique("w"),
        tasks.path(),
        &[],
        &[("PYOCO_WORKER_RUNNER_MEMORY_MAX_BYTES", "536870912")],
    )
    .await;

    let id = submit(&gw, "small >> hog", &["small", "hog"], "bounds").await;
    let d = finished(&gw, &id).await;
    assert_eq!(d["status"], "FAILED", "{d}\n{}", w.log_text());
    let err = d["error"].as_str().unwrap_or("");
    assert!(
        err.starts_with(
            "resource_limit: task 'hog' ran out of memory (MemoryError) over the runner's memory limit of 536870912 bytes"
        ),
        "{err}"
    );
    assert!(
        err.contains("PYOCO_WORKER_RUNNER_MEMORY_MAX_BYTES"),
        "{err}"
    );
    assert_eq!(d["tasks"]["small"], "SUCCEEDED", "{d}");
    assert_eq!(d["tasks"]["hog"], "FAILED", "{d}");

    // The same worker (one runner, kept) takes the next run.
    let id = submit(&gw, "small", &["small"], "bounds").await;
    let d = finished(&gw, &id).await;
    assert_eq!(d["status"], "COMPLETED", "{d}\n{}", w.log_text());
    assert_eq!(d["task_records"]["small"]["output"], 1);
    assert_eq!(d["worker_id"].as_str(), Some(w.worker_id.as_str()));
}

#[tokio::test]
async fn a_memory_limit_too_small_to_start_python_is_a_configuration_error() {
    let out = run_workspace_bin(
        "pyoco-worker",
        &["--runner-memory-max", "1000", "--tags", "bounds"],
        &[],
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(
            "worker_runner_memory_max_bytes = 1000: must be 0 (no limit) or at least 67108864"
        ),
        "{stderr}"
    );
}
