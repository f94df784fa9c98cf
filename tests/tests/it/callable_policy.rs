//! Attack catalogue, callables: a flow.yaml naming code outside the task modules
//! (`subprocess:getoutput` ran `id` as the worker's user before the callable policy). The
//! gateway refuses the standard library at submit (422); the worker's runner enforces the
//! whole rule for jobs from any gateway — here the Python original's, which accepts anything.
//! The runner's rule in detail (site-packages, plug-ins, recorded packages, re-exports,
//! resolver flows) is proven by `daemons/worker/runner/test_runner.py::CallablePolicyTests`.

use std::time::Duration;

use pyoco_tests::*;
use serde_json::Value;

const TASKS: &str = "from subprocess import getoutput  # re-exported: still refused\n\ndef ok(x=1):\n    return x + 1\n";

fn flow(callable: &str, defaults: &str) -> String {
    format!("version: 1\nflow:\n  graph: t\n  defaults: {defaults}\ntasks:\n  t: {{callable: \"{callable}\"}}\n")
}

/// `POST /runs/yaml`; (status, JSON body).
async fn submit(base_url: &str, yaml: &str, tag: &str) -> (u16, Value) {
    let form = reqwest::multipart::Form::new()
        .part(
            "workflow",
            reqwest::multipart::Part::bytes(yaml.as_bytes().to_vec()).file_name("flow.yaml"),
        )
        .text("flow_name", "main")
        .text("tag", tag.to_string());
    let r = http()
        .post(format!("{base_url}/runs/yaml"))
        .multipart(form)
        .send()
        .await
        .expect("POST /runs/yaml");
    let code = r.status().as_u16();
    (code, r.json().await.unwrap_or(Value::Null))
}

async fn run_count(base_url: &str) -> usize {
    let runs: Value = http()
        .get(format!("{base_url}/runs"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    runs.as_array().map_or(0, Vec::len)
}

#[tokio::test]
async fn gateway_refuses_standard_library_callables_at_submit() {
    let nats = NatsServer::start().await;
    let gw = Gateway::start(&nats.url(), &[]).await;
    gw.wait_nats_connected().await;
    for callable in [
        "subprocess:getoutput",
        "os:system",
        "os.path:join",
        "builtins:exec",
        "__main__:main",
    ] {
        let (code, body) = submit(&gw.base_url(), &flow(callable, "{cmd: id}"), "cp").await;
        let detail = body["detail"].as_str().unwrap_or_default();
        assert_eq!(code, 422, "{callable}: {body}");
        assert!(
            detail.starts_with("invalid workflow yaml: callable_not_allowed: tasks.t.callable")
                && detail.contains(&format!("{callable:?}"))
                && detail.contains("standard library")
                && detail.contains("fix: "),
            "{callable}: {detail}"
        );
    }
    assert_eq!(
        run_count(&gw.base_url()).await,
        0,
        "a refused submit stores nothing"
    );
    // the default rule leaves everything else to the workers
    let (code, body) = submit(&gw.base_url(), &flow("mytasks:ok", "{}"), "cp").await;
    assert_eq!(code, 200, "{body}");
}

#[tokio::test]
async fn worker_refuses_what_another_gateway_let_through() {
    let nats = NatsServer::start().await;
    // The original gateway checks nothing but the shape `module:function`.
    let gw = OrigGateway::start(&nats.url(), &[]).await;
    let tasks = TestDir::new("cp-tasks");
    tasks.write("cptasks.py", TASKS);
    let marker = tasks.join("pwned");
    let _w = Worker::start(
        &nats.url(),
        "cp",
        &unique("cp-worker"),
        tasks.path(),
        &[],
        &[],
    )
    .await;

    let cases = [
        (
            "os:system",
            format!("{{command: 'touch {}'}}", marker.display()),
            "part of the Python standard library",
        ),
        (
            "cptasks:getoutput",
            format!("{{cmd: 'touch {}'}}", marker.display()),
            "defined in 'subprocess'",
        ),
        (
            "yaml:safe_load",
            "{stream: '1'}".to_string(),
            "outside the worker's --pythonpath directories",
        ),
    ];
    for (callable, defaults, why) in &cases {
        let id = submit_flow_yaml(&gw.base_url(), &flow(callable, defaults), "main", "cp").await;
        let done = wait_for_run_status(
            &gw.base_url(),
            &id,
            &["COMPLETED", "FAILED"],
            Duration::from_secs(60),
            None,
        )
        .await;
        let error = done["error"].as_str().unwrap_or_default();
        assert_eq!(done["status"], "FAILED", "{callable}: {done}");
        assert!(
            error.starts_with("callable_not_allowed: ")
                && error.contains(&format!("{callable:?}").replace('"', "'"))
                && error.contains(why),
            "{callable}: {error}"
        );
        assert!(!marker.exists(), "{callable} ran");
    }
    // the worker's own task module still runs
    let id = submit_flow_yaml(&gw.base_url(), &flow("cptasks:ok", "{x: 41}"), "main", "cp").await;
    let done = wait_for_run_status(
        &gw.base_url(),
        &id,
        &["COMPLETED", "FAILED"],
        Duration::from_secs(60),
        None,
    )
    .await;
    assert_eq!(done["status"], "COMPLETED", "{done}");
}

#[tokio::test]
async fn allow_lists_restrict_the_gateway_and_star_restores_anything() {
    let nats = NatsServer::start().await;
    let tasks = TestDir::new("cp-allow");
    tasks.write("cptasks.py", TASKS);

    // A gateway with a list refuses what it leaves out (the example module stays allowed).
    let gw = Gateway::start(&nats.url(), &[("PYOCO_CALLABLE_ALLOW", "cptasks")]).await;
    gw.wait_nats_connected().await;
    let (code, body) = submit(&gw.base_url(), &flow("other_mod:f", "{}"), "cp").await;
    assert_eq!(code, 422, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("outside this gateway's PYOCO_CALLABLE_ALLOW (cptasks)"),
        "{body}"
    );
    let (code, body) = submit(
        &gw.base_url(),
        &flow("pyoco_server._workflow_test_tasks:add_one", "{}"),
        "cp",
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let (code, body) = submit(&gw.base_url(), &flow("cptasks:ok", "{x: 1}"), "cp").await;
    assert_eq!(code, 200, "{body}");
    drop(gw);

    // `*` on both sides: the original's anything-goes, for deployments that rely on it.
    let gw = Gateway::start(&nats.url(), &[("PYOCO_CALLABLE_ALLOW", "*")]).await;
    gw.wait_nats_connected().await;
    let w = Worker::start(
        &nats.url(),
        "star",
        &unique("cp-star"),
        tasks.path(),
        &[],
        &[("PYOCO_CALLABLE_ALLOW", "*")],
    )
    .await;
    let id = submit_flow_yaml(&gw.base_url(), &flow("os:getcwd", "{}"), "main", "star").await;
    let done = wait_for_run_status(
        &gw.base_url(),
        &id,
        &["COMPLETED", "FAILED"],
        Duration::from_secs(60),
        None,
    )
    .await;
    assert_eq!(done["status"], "COMPLETED", "{done}\n{}", w.log_text());
}

#[tokio::test]
async fn a_malformed_allow_list_stops_the_daemons_with_its_name() {
    for bin in ["pyoco-server", "pyoco-worker"] {
        let out = run_workspace_bin(
            bin,
            &["--nats-url", "nats://127.0.0.1:1", "--tags", "x"]
                [..if bin == "pyoco-worker" { 4 } else { 2 }],
            &[("PYOCO_CALLABLE_ALLOW", "good.mod, bad mod")],
        )
        .await;
        let err = out.stderr_text() + &out.stdout_text();
        assert_ne!(out.code(), Some(0), "{bin}: {err}");
        assert!(
            err.contains("PYOCO_CALLABLE_ALLOW") && err.contains("bad mod"),
            "{bin}: {err}"
        );
    }
}

#[tokio::test]
async fn runtime_setup_records_task_packages_that_flows_may_then_name() {
    let dir = TestDir::new("cp-runtime");
    // cp_pkg_tasks-1.0-py3-none-any.whl, distribution cp-pkg-tasks, module cp_pkg
    let wheel = make_task_wheel(
        dir.path(),
        "cp-pkg-tasks",
        "1.0",
        "cp_pkg",
        "py3-none-any",
        "def hello(name='x'):\n    return 'recorded ' + name\n",
    )
    .await;
    let venv = dir.join("venv");
    let wheels = test_env_path("PYOCO_TEST_WHEELS");
    let out = run_workspace_bin(
        "pyococtl",
        &[
            "runtime",
            "setup",
            "--venv",
            venv.to_str().unwrap(),
            "--python",
            "/usr/bin/python3",
            "--wheel-dir",
            wheels.to_str().unwrap(),
            wheel.to_str().unwrap(),
        ],
        &[],
    )
    .await;
    out.assert_success();
    assert!(
        out.stdout_text().contains("recorded task packages in")
            && out.stdout_text().contains("cp-pkg-tasks"),
        "{}",
        out.stdout_text()
    );
    let recorded = std::fs::read_to_string(venv.join("pyoco-task-packages.txt")).unwrap();
    assert!(recorded.lines().any(|l| l == "cp-pkg-tasks"), "{recorded}");

    let nats = NatsServer::start().await;
    let gw = Gateway::start(&nats.url(), &[]).await;
    gw.wait_nats_connected().await;
    let empty = TestDir::new("cp-runtime-tasks");
    let python = venv.join("bin/python");
    let _w = Worker::start_with_python(
        &nats.url(),
        "rt",
        &unique("cp-rt"),
        &python,
        empty.path(),
        &[],
        &[],
    )
    .await;
    let id = submit_flow_yaml(
        &gw.base_url(),
        &flow("cp_pkg:hello", "{name: ok}"),
        "main",
        "rt",
    )
    .await;
    let done = wait_for_run_status(
        &gw.base_url(),
        &id,
        &["COMPLETED", "FAILED"],
        Duration::from_secs(60),
        None,
    )
    .await;
    assert_eq!(done["status"], "COMPLETED", "{done}");
    // pyoco's own dependencies in the same venv were not recorded: refused
    let id = submit_flow_yaml(
        &gw.base_url(),
        &flow("yaml:safe_load", "{stream: '1'}"),
        "main",
        "rt",
    )
    .await;
    let done = wait_for_run_status(
        &gw.base_url(),
        &id,
        &["COMPLETED", "FAILED"],
        Duration::from_secs(60),
        None,
    )
    .await;
    assert!(
        done["error"]
            .as_str()
            .unwrap_or_default()
            .starts_with("callable_not_allowed: "),
        "{done}"
    );
}

/// `POST /runs/yaml` with an API key; (status, JSON body).
async fn submit_with_key(base_url: &str, yaml: &str, key: &str) -> (u16, Value) {
    let form = reqwest::multipart::Form::new()
        .part(
            "workflow",
            reqwest::multipart::Part::bytes(yaml.as_bytes().to_vec()).file_name("flow.yaml"),
        )
        .text("flow_name", "main")
        .text("tag", "cp");
    let r = http()
        .post(format!("{base_url}/runs/yaml"))
        .header("X-API-Key", key)
        .multipart(form)
        .send()
        .await
        .expect("POST /runs/yaml");
    let code = r.status().as_u16();
    (code, r.json().await.unwrap_or(Value::Null))
}

/// A key made with `pyococtl key create --callable-allow` may name only those modules (plus the
/// example module); another tenant's key without a list is not limited by it; the Python
/// original's gateway, which ignores the field, still accepts the key.
#[tokio::test]
async fn an_api_key_may_carry_its_own_allow_list() {
    let nats = NatsServer::start().await;
    let env = [
        ("PYOCO_HTTP_AUTH_MODE", "api_key"),
        ("PYOCO_AUTH_PEPPER", "cp-pepper"),
    ];
    let gw = Gateway::start(&nats.url(), &env).await;
    gw.wait_nats_connected().await;
    let create = |tenant: &'static str, allow: Option<&'static str>| {
        let url = nats.url();
        async move {
            let mut args = vec![
                "--nats-url",
                url.as_str(),
                "key",
                "create",
                "--tenant",
                tenant,
            ];
            if let Some(a) = allow {
                args.extend(["--callable-allow", a]);
            }
            let out =
                run_workspace_bin("pyococtl", &args, &[("PYOCO_AUTH_PEPPER", "cp-pepper")]).await;
            out.assert_success();
            out.stdout_json()
        }
    };
    let limited = create("team-a", Some("cptasks,shared.reports")).await;
    assert_eq!(
        limited["callable_allow"],
        serde_json::json!(["cptasks", "shared.reports"])
    );
    let open = create("team-b", None).await;
    let (a, b) = (
        limited["api_key"].as_str().unwrap(),
        open["api_key"].as_str().unwrap(),
    );

    let (code, body) = submit_with_key(&gw.base_url(), &flow("other_mod:f", "{}"), a).await;
    assert_eq!(code, 422, "{body}");
    let detail = body["detail"].as_str().unwrap();
    assert!(
        detail.contains("outside this API key's callable_allow (cptasks,shared.reports)"),
        "{detail}"
    );
    for ok in [
        "cptasks:ok",
        "shared.reports.daily:run",
        "pyoco_server._workflow_test_tasks:add_one",
    ] {
        let (code, body) = submit_with_key(&gw.base_url(), &flow(ok, "{}"), a).await;
        assert_eq!(code, 200, "{ok}: {body}");
    }
    let (code, body) = submit_with_key(&gw.base_url(), &flow("other_mod:f", "{}"), b).await;
    assert_eq!(code, 200, "a key without a list: {body}");
    // the gateway-wide rule still holds for a limited key
    let (code, _) = submit_with_key(&gw.base_url(), &flow("os:system", "{}"), b).await;
    assert_eq!(code, 422);

    // A malformed flag is a usage error naming it.
    let out = run_workspace_bin(
        "pyococtl",
        &[
            "--nats-url",
            &nats.url(),
            "key",
            "create",
            "--tenant",
            "t",
            "--callable-allow",
            "bad mod",
        ],
        &[("PYOCO_AUTH_PEPPER", "cp-pepper")],
    )
    .await;
    assert_eq!(out.code(), Some(2), "{}", out.stderr_text());
    assert!(
        out.stderr_text().contains("--callable-allow"),
        "{}",
        out.stderr_text()
    );

    // The original's gateway reads the record and ignores the field.
    let orig = OrigGateway::start(&nats.url(), &env).await;
    let (code, body) = submit_with_key(&orig.base_url(), &flow("other_mod:f", "{}"), a).await;
    assert_eq!(code, 200, "the original accepts the key: {body}");
}
