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
    let yaml = std::fs::read(examples.join("flow.yaml")).unwrap();
    let form = reqwest::multipart::Form::new()
        .part(
            "workflow",
            reqwest::multipart::Part::bytes(yaml).file_name("flow.yaml"),
        )
        .text("flow_name", "main")
        .text("tag", "hello");
    let r: Value = http()
        .post(format!("{base}/runs/yaml"))
        .multipart(form)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = r["run_id"].as_str().unwrap().to_string();
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
