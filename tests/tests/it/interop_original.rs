//! Interoperability with the Python original (pyoco-server 0.5.1): its worker executes runs
//! submitted to this gateway, and its `pyoco-client` works against this gateway.

use std::time::Duration;

use pyoco_tests::*;
use serde_json::{json, Value};

#[tokio::test]
async fn original_worker_executes_runs_submitted_here() {
    let nats = NatsServer::start().await;
    let gw = Gateway::start(&nats.url(), &[]).await;
    gw.wait_nats_connected().await;
    let worker = OrigWorker::start(&nats.url(), "interop", &unique("orig-worker"), &[], None).await;
    let dir = TestDir::new("interop-flow");
    let flow = dir.write("flow.yaml", example_flow_yaml());

    let out = orig_client(
        &gw.base_url(),
        &[
            "submit-yaml",
            "--workflow-file",
            flow.to_str().unwrap(),
            "--flow-name",
            "main",
            "--tag",
            "interop",
        ],
        &[],
    )
    .await;
    out.assert_success();
    let run_id = out.stdout_json()["run_id"].as_str().unwrap().to_string();
    let done = wait_for_run_status(
        &gw.base_url(),
        &run_id,
        &["COMPLETED", "FAILED"],
        Duration::from_secs(60),
        None,
    )
    .await;
    assert_eq!(
        done["status"],
        "COMPLETED",
        "{done}\nworker log:\n{}",
        worker.log_text()
    );
    let (_, full) = get_run(&gw.base_url(), &format!("{run_id}?include=records"), None).await;
    assert_eq!(full["task_records"]["to_text"]["output"], "v=2");
    assert_eq!(
        full["tasks"],
        json!({"add_one": "SUCCEEDED", "to_text": "SUCCEEDED"})
    );

    // The worker's record is served by /workers, and the run is enriched while worker_id is set.
    let r = http()
        .get(gw.url("/workers"))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(r[0]["worker_id"].as_str(), Some(worker.worker_id()));
    assert_eq!(r[0]["tags"], json!(["interop"]));
}

#[tokio::test]
async fn original_client_works_against_this_gateway() {
    let nats = NatsServer::start().await;
    let gw = Gateway::start(&nats.url(), &[]).await;
    gw.wait_nats_connected().await;
    let _worker = OrigWorker::start(&nats.url(), "cli", &unique("orig-worker"), &[], None).await;
    let dir = TestDir::new("interop-cli");
    let flow = dir.write("flow.yaml", example_flow_yaml());
    let server = gw.base_url();
    let client = |args: Vec<String>| {
        let server = server.clone();
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let out = orig_client(&server, &args, &[]).await;
            assert!(
                out.status.success(),
                "pyoco-client {args:?} failed:\n{}\n{}",
                out.stdout_text(),
                out.stderr_text()
            );
            out.stdout_text()
        }
    };
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();

    // submit (resolver flow: no resolver on the worker → FAILED flow_not_found, but accepted here)
    let sub: Value = serde_json::from_str(
        &client(s(&[
            "submit",
            "--flow-name",
            "nothing",
            "--param",
            "x=1",
            "--tag",
            "nobody",
        ]))
        .await,
    )
    .unwrap();
    assert_eq!(sub["status"], "PENDING");
    let pending = sub["run_id"].as_str().unwrap().to_string();
    let yaml: Value = serde_json::from_str(
        &client(s(&[
            "submit-yaml",
            "--workflow-file",
            flow.to_str().unwrap(),
            "--flow-name",
            "main",
            "--tag",
            "cli",
        ]))
        .await,
    )
    .unwrap();
    let run_id = yaml["run_id"].as_str().unwrap().to_string();

    // watch --until-terminal follows our SSE stream to the end.
    let watched = client(s(&[
        "watch",
        &run_id,
        "--until-terminal",
        "--timeout-sec",
        "60",
        "--output",
        "status",
    ]))
    .await;
    assert!(
        watched.lines().last().unwrap_or("").contains("COMPLETED"),
        "{watched}"
    );

    let got: Value =
        serde_json::from_str(&client(s(&["get", &run_id, "--records"])).await).unwrap();
    assert_eq!(got["task_records"]["to_text"]["output"], "v=2");
    let tasks: Value = serde_json::from_str(&client(s(&["tasks", &run_id])).await).unwrap();
    assert_eq!(tasks["tasks"]["to_text"], "SUCCEEDED");
    let list: Value = serde_json::from_str(&client(s(&["list", "--tag", "cli"])).await).unwrap();
    assert_eq!(list[0]["run_id"], json!(run_id));
    let table = client(s(&["list", "--output", "table"])).await;
    assert!(
        table.contains(&run_id) && table.contains(&pending),
        "{table}"
    );
    let vnext: Value = serde_json::from_str(
        &client(s(&["list-vnext", "--limit", "1", "--updated-after", "0"])).await,
    )
    .unwrap();
    assert_eq!(vnext["items"].as_array().unwrap().len(), 1);
    let cursor = vnext["next_cursor"]
        .as_str()
        .expect("more than one run → a cursor")
        .to_string();
    let page2: Value = serde_json::from_str(
        &client(s(&["list-vnext", "--limit", "1", "--cursor", &cursor])).await,
    )
    .unwrap();
    assert_ne!(page2["items"][0]["run_id"], vnext["items"][0]["run_id"]);
    let cancelled: Value = serde_json::from_str(
        &client(s(&[
            "cancel",
            "--run-id",
            &pending,
            "--wait",
            "--timeout-sec",
            "10",
        ]))
        .await,
    )
    .unwrap();
    assert_eq!(cancelled["status"], "CANCELLED");
    let workers: Value = serde_json::from_str(&client(s(&["workers"])).await).unwrap();
    assert_eq!(workers.as_array().unwrap().len(), 1);
    let metrics = client(s(&["metrics"])).await;
    assert!(
        metrics.contains("pyoco_runs_total{status=\"COMPLETED\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("pyoco_workers_alive_total 1"), "{metrics}");
}

#[tokio::test]
async fn resources_created_by_either_side_are_accepted_by_the_other() {
    // Ours first: nats-py's own create calls with the original's parameters succeed on the
    // streams we created (identical configurations), and the original's gateway starts on them.
    let nats = NatsServer::start().await;
    let gw = Gateway::start(&nats.url(), &[("PYOCO_WORKERS_KV_TTL_SEC", "15")]).await;
    gw.wait_nats_connected().await;
    let dir = TestDir::new("nats-py-create");
    let script = dir.write("create.py", r#"
import asyncio, sys, nats
from nats.js import api
async def main():
    nc = await nats.connect(sys.argv[1])
    js = nc.jetstream()
    await js.create_key_value(api.KeyValueConfig(bucket="pyoco_runs", history=1))
    await js.create_key_value(api.KeyValueConfig(bucket="pyoco_workers", history=1, ttl=15.0))
    await js.add_stream(api.StreamConfig(name="PYOCO_WORK", subjects=["pyoco.work.>"], retention=api.RetentionPolicy.WORK_QUEUE))
    print("ok")
    await nc.close()
asyncio.run(main())
"#);
    let out = orig_venv_run("python", &[script.to_str().unwrap(), &nats.url()], &[]).await;
    assert_eq!(out.stdout_text().trim(), "ok", "{}", out.stderr_text());
    let orig = OrigGateway::start(&nats.url(), &[]).await;
    assert_eq!(http().get(orig.url("/runs?updated_after=0")).send().await.unwrap().status(), 503,
        "the original's empty-bucket bug (NoKeysError), unchanged: proves it is really the original on our buckets");

    // The original first: ours starts on its resources and reports only the real drift
    // (the original's 15 s workers TTL against our default of a day).
    let nats2 = NatsServer::start().await;
    let _orig2 = OrigGateway::start(&nats2.url(), &[]).await;
    let gw2 = Gateway::start(&nats2.url(), &[]).await;
    gw2.wait_nats_connected().await;
    let drift: Vec<String> = gw2
        .log_text()
        .lines()
        .filter(|l| l.contains("resource configuration drift"))
        .map(str::to_string)
        .collect();
    assert_eq!(drift.len(), 1, "{drift:#?}");
    assert!(
        drift[0].contains("KV_pyoco_workers") && drift[0].contains("max_age"),
        "{}",
        drift[0]
    );
    let r = http()
        .post(gw2.url("/runs"))
        .json(&json!({"flow_name": "main"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

fn tasks_dir() -> TestDir {
    let d = TestDir::new("interop-tasks");
    d.write("wtasks.py", TEST_TASKS);
    d
}

const RECORD_FLOW: &str =
    "version: 1\nflow:\n  graph: |\n    record\ntasks:\n  record: {callable: \"wtasks:record\"}\n";

#[tokio::test]
async fn this_worker_executes_runs_submitted_by_the_original_gateway() {
    let nats = NatsServer::start().await;
    let orig = OrigGateway::start(&nats.url(), &[]).await;
    let tasks = tasks_dir();
    let _w = Worker::start(&nats.url(), "ours", &unique("w"), tasks.path(), &[], &[]).await;
    let flow = tasks.write("flow.yaml", "version: 1\nflow:\n  graph: |\n    add_one >> to_text\n  defaults:\n    x: 1\ntasks:\n  add_one: {callable: \"wtasks:add_one\"}\n  to_text: {callable: \"wtasks:to_text\"}\n");
    let out = orig_client(
        &orig.base_url(),
        &[
            "submit-yaml",
            "--workflow-file",
            flow.to_str().unwrap(),
            "--flow-name",
            "main",
            "--tag",
            "ours",
        ],
        &[],
    )
    .await;
    out.assert_success();
    let run_id = out.stdout_json()["run_id"].as_str().unwrap().to_string();
    let done = wait_for_run_status(
        &orig.base_url(),
        &run_id,
        &["COMPLETED", "FAILED"],
        Duration::from_secs(60),
        None,
    )
    .await;
    assert_eq!(done["status"], "COMPLETED", "{done}");
    // The original gateway reads our snapshot (its worker enrichment sees our worker record).
    let (_, full) = get_run(&orig.base_url(), &format!("{run_id}?include=records"), None).await;
    assert_eq!(full["task_records"]["to_text"]["output"], "v=2");
    assert_eq!(full["worker_alive"], true, "{full}");
    // The original client's watch follows it too.
    let out = orig_client(
        &orig.base_url(),
        &[
            "watch",
            &run_id,
            "--until-terminal",
            "--timeout-sec",
            "10",
            "--output",
            "status",
        ],
        &[],
    )
    .await;
    assert!(
        out.stdout_text().contains("COMPLETED"),
        "{}",
        out.stdout_text()
    );
}

#[tokio::test]
async fn both_workers_on_one_tag_lose_and_double_nothing() {
    let nats = NatsServer::start().await;
    let gw = Gateway::start(&nats.url(), &[]).await;
    gw.wait_nats_connected().await;
    let tasks = tasks_dir();
    let log = tasks.join("executions.log");
    let pythonpath = tasks.path().to_str().unwrap().to_string();
    let _orig = OrigWorker::start(
        &nats.url(),
        "mix",
        &unique("orig"),
        &[("PYTHONPATH", &pythonpath)],
        None,
    )
    .await;
    let _ours = Worker::start(
        &nats.url(),
        "mix",
        &unique("ours"),
        tasks.path(),
        &["--concurrency", "2"],
        &[],
    )
    .await;
    let mut ids = vec![];
    for n in 0..24 {
        let yaml = format!("{RECORD_FLOW}  # run {n}\n");
        let yaml = yaml.replace(
            "    record\n",
            &format!(
                "    record\n  defaults:\n    n: {n}\n    log: \"{}\"\n",
                log.display()
            ),
        );
        let form = reqwest::multipart::Form::new()
            .part(
                "workflow",
                reqwest::multipart::Part::bytes(yaml.into_bytes()).file_name("flow.yaml"),
            )
            .text("flow_name", "main")
            .text("tag", "mix");
        let r: Value = http()
            .post(gw.url("/runs/yaml"))
            .multipart(form)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        ids.push(
            r["run_id"]
                .as_str()
                .unwrap_or_else(|| panic!("{r}"))
                .to_string(),
        );
    }
    let mut by_worker = std::collections::HashMap::new();
    for id in &ids {
        let d = wait_for_run_status(
            &gw.base_url(),
            id,
            &["COMPLETED", "FAILED"],
            Duration::from_secs(120),
            None,
        )
        .await;
        assert_eq!(d["status"], "COMPLETED", "{d}");
        let (_, full) = get_run(&gw.base_url(), id, None).await;
        *by_worker
            .entry(full["worker_id"].as_str().unwrap_or("?").to_string())
            .or_insert(0) += 1;
    }
    let lines = std::fs::read_to_string(&log).unwrap();
    let mut seen: Vec<u32> = lines.lines().map(|l| l.trim().parse().unwrap()).collect();
    seen.sort();
    assert_eq!(
        seen,
        (0..24).collect::<Vec<u32>>(),
        "every run executed exactly once"
    );
    // The original drops worker_id after its pickup write (contract §12.2): its runs show none.
    let ours = by_worker
        .iter()
        .filter(|(k, _)| k.starts_with("ours-"))
        .map(|(_, v)| *v)
        .sum::<i32>();
    assert!(
        ours > 0 && ours < 24,
        "both workers took jobs from the shared consumer: {by_worker:?}"
    );
}

#[tokio::test]
async fn a_run_the_original_gateway_cancelled_while_pending_is_not_run() {
    let nats = NatsServer::start().await;
    let orig = OrigGateway::start(&nats.url(), &[]).await;
    let tasks = tasks_dir();
    let log = tasks.join("executions.log");
    let yaml = RECORD_FLOW.replace(
        "    record\n",
        &format!(
            "    record\n  defaults:\n    n: 7\n    log: \"{}\"\n",
            log.display()
        ),
    );
    let flow = tasks.write("flow.yaml", &yaml);
    let out = orig_client(
        &orig.base_url(),
        &[
            "submit-yaml",
            "--workflow-file",
            flow.to_str().unwrap(),
            "--flow-name",
            "main",
            "--tag",
            "late",
        ],
        &[],
    )
    .await;
    let run_id = out.stdout_json()["run_id"].as_str().unwrap().to_string();
    let out = orig_client(&orig.base_url(), &["cancel", "--run-id", &run_id], &[]).await;
    assert_eq!(
        out.stdout_json()["status"],
        "CANCELLING",
        "the original leaves it to the worker"
    );
    let _w = Worker::start(&nats.url(), "late", &unique("w"), tasks.path(), &[], &[]).await;
    let d = wait_for_run_status(
        &orig.base_url(),
        &run_id,
        &["CANCELLED", "COMPLETED", "FAILED"],
        Duration::from_secs(30),
        None,
    )
    .await;
    assert_eq!(d["status"], "CANCELLED");
    assert!(!log.exists(), "the flow never ran");
}
