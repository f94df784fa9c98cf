//! `pyoco-server up --with-nats --with-worker`: the one-command local stack runs a flow to
//! COMPLETED and Ctrl-C stops everything it started.

use std::time::Duration;

use nix::sys::signal::Signal;
use pyoco_tests::*;
use serde_json::Value;

#[tokio::test]
async fn up_with_nats_and_worker_runs_the_example_and_stops_cleanly() {
    let dir = TestDir::new("devstack");
    let examples = workspace_root().join("deploy/examples");
    let (port, nats_port, http_port) = (
        free_port().to_string(),
        free_port().to_string(),
        free_port().to_string(),
    );
    let store = dir.join("nats");
    let py = py311();
    let mut up = spawn_workspace_bin(
        "pyoco-server",
        &[
            "up",
            "--host",
            "127.0.0.1",
            "--port",
            &port,
            "--with-nats",
            "--nats-client-port",
            &nats_port,
            "--nats-http-port",
            &http_port,
            "--nats-store-dir",
            store.to_str().unwrap(),
            "--with-worker",
            "--tags",
            "hello",
            "--worker-python",
            py.to_str().unwrap(),
            "--worker-pythonpath",
            examples.to_str().unwrap(),
        ],
        &[],
    );
    let base = format!("http://127.0.0.1:{port}");
    wait_healthy(&mut up, &base, Duration::from_secs(30)).await;
    assert!(
        up.wait_for_log("worker ready", Duration::from_secs(60))
            .await,
        "{}",
        up.log_tail(50)
    );
    let yaml = std::fs::read_to_string(examples.join("flow.yaml")).unwrap();
    let id = submit_yaml(&base, &yaml, "hello").await;
    let done = wait_for_run_status(
        &base,
        &id,
        &["COMPLETED", "FAILED"],
        Duration::from_secs(30),
        None,
    )
    .await;
    assert_eq!(done["status"], "COMPLETED", "{done}\n{}", up.log_tail(50));
    let (_, full) = get_run(&base, &format!("{id}?include=records"), None).await;
    assert_eq!(full["task_records"]["to_text"]["output"], "v=2");

    // Ctrl-C (SIGINT to the gateway) stops the worker and NATS too.
    up.signal(Signal::SIGINT);
    let st = up
        .wait_exit(Duration::from_secs(30))
        .await
        .expect("up exits after Ctrl-C");
    assert!(st.success(), "{st}\n{}", up.log_tail(30));
    let nats_gone = wait_until(
        Duration::from_secs(5),
        Duration::from_millis(100),
        || async { std::net::TcpStream::connect(format!("127.0.0.1:{nats_port}")).is_err() },
    )
    .await;
    assert!(nats_gone, "the managed nats-server stopped");
    assert!(up.log_text().contains("stopped"), "{}", up.log_tail(30));
}

#[tokio::test]
async fn up_refuses_a_busy_nats_port() {
    let blocker = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = blocker.local_addr().unwrap().port().to_string();
    let out = run_workspace_bin(
        "pyoco-server",
        &[
            "up",
            "--port",
            &free_port().to_string(),
            "--with-nats",
            "--nats-client-port",
            &busy,
        ],
        &[],
    )
    .await;
    assert_eq!(out.code(), Some(1));
    assert!(
        out.stderr_text().contains(&format!(
            "NATS client port is already in use: 127.0.0.1:{busy}"
        )),
        "{}",
        out.stderr_text()
    );
}

/// Writes a project directory the way a user has one: task modules and a venv-like Python
/// under relative paths.
fn user_project(dir: &TestDir) -> std::path::PathBuf {
    let project = dir.join("project");
    std::fs::create_dir_all(project.join("tasks")).unwrap();
    std::fs::copy(
        workspace_root().join("deploy/examples/hello_tasks.py"),
        project.join("tasks/hello_tasks.py"),
    )
    .unwrap();
    std::fs::copy(
        workspace_root().join("deploy/examples/flow.yaml"),
        project.join("flow.yaml"),
    )
    .unwrap();
    std::fs::write(
        project.join("tasks/slow_tasks.py"),
        "import time\n\ndef nap():\n    time.sleep(60)\n    return 'woke'\n",
    )
    .unwrap();
    // The test venv itself under a relative name (a venv's python finds its site-packages
    // through `<venv>/pyvenv.cfg`, so the directory is linked, not the interpreter).
    let venv = py311().parent().unwrap().parent().unwrap().to_path_buf();
    std::os::unix::fs::symlink(venv, project.join("venv")).unwrap();
    project
}

async fn submit_yaml(base: &str, yaml: &str, tag: &str) -> String {
    submit_flow_yaml(base, yaml, "main", tag).await
}

#[tokio::test]
async fn up_resolves_relative_paths_as_given_on_the_command_line() {
    let dir = TestDir::new("devstack-rel");
    let project = user_project(&dir);
    let (port, nats_port, http_port) = (
        free_port().to_string(),
        free_port().to_string(),
        free_port().to_string(),
    );
    // Exactly the README's shape: every path relative to where `up` is started.
    let mut up = spawn_workspace_bin_in(
        "pyoco-server",
        &[
            "up",
            "--host",
            "127.0.0.1",
            "--port",
            &port,
            "--with-nats",
            "--nats-client-port",
            &nats_port,
            "--nats-http-port",
            &http_port,
            "--nats-store-dir",
            ".dev/nats",
            "--with-worker",
            "--tags",
            "hello",
            "--worker-python",
            "venv/bin/python",
            "--worker-pythonpath",
            "tasks",
        ],
        &[],
        &project,
    );
    let base = format!("http://127.0.0.1:{port}");
    wait_healthy(&mut up, &base, Duration::from_secs(30)).await;
    assert!(
        up.wait_for_log("stack ready", Duration::from_secs(60))
            .await,
        "{}",
        up.log_tail(50)
    );
    let yaml = std::fs::read_to_string(project.join("flow.yaml")).unwrap();
    let id = submit_yaml(&base, &yaml, "hello").await;
    let done = wait_for_run_status(
        &base,
        &id,
        &["COMPLETED", "FAILED"],
        Duration::from_secs(30),
        None,
    )
    .await;
    assert_eq!(done["status"], "COMPLETED", "{done}\n{}", up.log_tail(50));
    let (_, full) = get_run(&base, &format!("{id}?include=records"), None).await;
    assert_eq!(full["task_records"]["to_text"]["output"], "v=2");
    assert!(
        project.join(".dev/nats/jetstream").is_dir(),
        "store where the user said"
    );
    // The worker's start-up log shows the absolute result.
    let log = up.log_text();
    let abs_tasks = project.join("tasks").display().to_string();
    assert!(
        log.contains(&abs_tasks),
        "absolute pythonpath in the log:\n{log}"
    );
    up.signal(Signal::SIGINT);
    let st = up.wait_exit(Duration::from_secs(15)).await.expect("exits");
    assert!(st.success(), "{st}\n{}", up.log_tail(30));
}

#[tokio::test]
async fn up_stops_everything_and_fails_when_the_worker_dies() {
    let dir = TestDir::new("devstack-dead");
    let project = user_project(&dir);
    let (port, nats_port, http_port) = (
        free_port().to_string(),
        free_port().to_string(),
        free_port().to_string(),
    );
    let mut up = spawn_workspace_bin_in(
        "pyoco-server",
        &[
            "up",
            "--port",
            &port,
            "--with-nats",
            "--nats-client-port",
            &nats_port,
            "--nats-http-port",
            &http_port,
            "--nats-store-dir",
            ".dev/nats",
            "--with-worker",
            "--tags",
            "hello",
            "--worker-python",
            "no-such-venv/bin/python",
        ],
        &[],
        &project,
    );
    let st = up
        .wait_exit(Duration::from_secs(30))
        .await
        .expect("up exits when its worker cannot start");
    assert_eq!(st.code(), Some(1), "{}", up.log_tail(40));
    let log = up.log_text();
    assert!(
        log.contains("pyoco-worker exited unexpectedly (exit status: 1)"),
        "{log}"
    );
    // The report carries the worker's own last words, naming the interpreter and the fix.
    let missing = project
        .join("no-such-venv/bin/python")
        .display()
        .to_string();
    assert!(log.contains(&missing), "{log}");
    assert!(log.contains("PYOCO_PYTHON"), "{log}");
    // Nothing left behind: NATS and the HTTP port are free again.
    for p in [&nats_port, &port] {
        assert!(
            std::net::TcpStream::connect(format!("127.0.0.1:{p}")).is_err(),
            "port {p} still open"
        );
    }
}

#[tokio::test]
async fn up_stop_is_bounded_and_the_worker_says_stopped_graceful() {
    let nats = NatsServer::start().await;
    let dir = TestDir::new("devstack-stop");
    let project = user_project(&dir);
    let port = free_port().to_string();
    let worker_id = unique("upw");
    let mut up = spawn_workspace_bin_in(
        "pyoco-server",
        &[
            "up",
            "--port",
            &port,
            "--nats-url",
            &nats.url(),
            "--with-worker",
            "--tags",
            "slow",
            "--worker-python",
            "venv/bin/python",
            "--worker-pythonpath",
            "tasks",
        ],
        &[("PYOCO_WORKER_ID", &worker_id)],
        &project,
    );
    let base = format!("http://127.0.0.1:{port}");
    wait_healthy(&mut up, &base, Duration::from_secs(30)).await;
    assert!(
        up.wait_for_log("stack ready", Duration::from_secs(60))
            .await,
        "{}",
        up.log_tail(50)
    );
    let yaml = "version: 1\nflow:\n  graph: nap\ntasks:\n  nap: {callable: slow_tasks:nap}\n";
    let id = submit_yaml(&base, yaml, "slow").await;
    wait_for_run_status(&base, &id, &["RUNNING"], Duration::from_secs(20), None).await;

    // A run is in the middle of a 60 s task: the stop is still bounded.
    let t = std::time::Instant::now();
    up.signal(Signal::SIGTERM);
    let st = up.wait_exit(Duration::from_secs(20)).await.expect("exits");
    let took = t.elapsed();
    assert!(st.success(), "{st}\n{}", up.log_tail(30));
    assert!(took < Duration::from_secs(10), "stopped in {took:?}");

    let js = nats.jetstream().await;
    let kv = js.get_key_value("pyoco_workers").await.unwrap();
    let record: Value =
        serde_json::from_slice(&kv.get(&worker_id).await.unwrap().expect("worker record")).unwrap();
    assert_eq!(record["state"], "STOPPED_GRACEFUL", "{record}");
    // The interrupted run was put back, not lost: still not terminal, its job still queued.
    let runs = js.get_key_value("pyoco_runs").await.unwrap();
    let snap: Value = serde_json::from_slice(&runs.get(&id).await.unwrap().expect("run")).unwrap();
    assert!(
        !["COMPLETED", "FAILED", "CANCELLED"].contains(&snap["status"].as_str().unwrap()),
        "{snap}"
    );
}

#[tokio::test]
async fn health_waits_for_nats_and_every_resource_at_start() {
    let mut nats = NatsServer::start().await;
    nats.stop().await;
    let gw = Gateway::spawn_with_args(&nats.url(), &[], &[("PYOCO_READY_TIMEOUT_SEC", "20")]);
    // Asked before NATS is there: the answer waits for it instead of a premature 200.
    let url = gw.url("/health");
    let asked = tokio::spawn(async move {
        let t = std::time::Instant::now();
        loop {
            // The socket may not be bound for the first few milliseconds.
            if let Ok(r) = http().get(&url).send().await {
                let code = r.status().as_u16();
                let body: Value = r.json().await.unwrap();
                return (code, body, t.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    nats.start_again().await;
    let (code, body, took) = asked.await.unwrap();
    assert_eq!((code, body["nats"].as_str()), (200, Some("connected")));
    assert!(
        took >= Duration::from_millis(1000),
        "answered after {took:?}"
    );
    // "ready" means every stream, bucket and object store of the contract exists.
    let js = nats.jetstream().await;
    for stream in [
        "PYOCO_WORK",
        "PYOCO_DLQ",
        "KV_pyoco_runs",
        "KV_pyoco_workers",
        "KV_pyoco_auth",
        "KV_pyoco_wheel_history",
        "OBJ_pyoco_wheels",
    ] {
        assert!(js.get_stream(stream).await.is_ok(), "{stream} exists");
    }
}

#[tokio::test]
async fn health_answers_disconnected_once_the_ready_bound_passed() {
    let mut nats = NatsServer::start().await;
    nats.stop().await;
    let gw = Gateway::spawn_with_args(&nats.url(), &[], &[("PYOCO_READY_TIMEOUT_SEC", "1")]);
    let ok = wait_until(
        Duration::from_secs(10),
        Duration::from_millis(50),
        || async {
            http()
                .get(gw.url("/health"))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
        },
    )
    .await;
    assert!(ok);
    assert_eq!(get_json(&gw.url("/health")).await["nats"], "disconnected");
}

async fn get_json(url: &str) -> Value {
    http().get(url).send().await.unwrap().json().await.unwrap()
}

#[tokio::test]
async fn gateway_with_an_open_watch_exits_soon_after_sigterm() {
    use futures::StreamExt;
    let nats = NatsServer::start().await;
    let mut gw = Gateway::start(&nats.url(), &[]).await;
    gw.wait_nats_connected().await;
    // PENDING forever (no worker): the watch would stay open for its full 600 s.
    let id = submit_yaml(&gw.base_url(), example_flow_yaml(), "nobody").await;
    let resp = http()
        .get(gw.url(&format!("/runs/{id}/watch?timeout_sec=600")))
        .send()
        .await
        .unwrap();
    let mut events = sse_events(resp);
    let first = events.next().await.unwrap().unwrap();
    assert_eq!(first.event, "snapshot");
    let t = std::time::Instant::now();
    gw.daemon().signal(Signal::SIGTERM);
    let mut last = None;
    while let Ok(Some(ev)) = tokio::time::timeout(Duration::from_secs(10), events.next()).await {
        match ev {
            Ok(ev) => last = Some(ev),
            Err(_) => break,
        }
    }
    let last = last.expect("a final event");
    assert_eq!(last.event, "shutdown", "{last:?}");
    assert_eq!(last.json()["run_id"], id.as_str());
    let st = gw
        .daemon()
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("the gateway exits within 10 s with a watch open");
    assert!(st.success(), "{st}");
    assert!(t.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn watch_says_when_no_worker_serves_the_runs_tag() {
    let nats = NatsServer::start().await;
    let gw = Gateway::start(&nats.url(), &[]).await;
    gw.wait_nats_connected().await;
    let dir = TestDir::new("nobody");
    let flow = dir.join("flow.yaml");
    std::fs::write(&flow, example_flow_yaml()).unwrap();
    let out = ctl(
        &[
            "--server",
            &gw.base_url(),
            "run",
            "submit-yaml",
            "--workflow-file",
            flow.to_str().unwrap(),
            "--flow-name",
            "main",
            "--tag",
            "nobody",
            "--watch",
            "--watch-timeout-sec",
            "8",
        ],
        &[],
    )
    .await;
    assert_eq!(out.code(), Some(5), "watch timeout: {}", out.stderr_text());
    let err = out.stderr_text();
    assert!(
        err.contains("no live worker serves tag 'nobody'")
            && err.contains("pyoco-worker --tags nobody"),
        "{err}"
    );
}
