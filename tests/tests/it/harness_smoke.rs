//! Smoke tests of the harness itself: real nats-server (both flavours) with JetStream persistence
//! across a restart, and the Python original's gateway + worker running the example flow.

use std::time::Duration;

use bytes::Bytes;
use pyoco_tests::*;

async fn kv_persists_across_restart(flavour: &str) {
    let mut nats = NatsServer::start_using(flavour, &[]).await;
    let label = nats.version_label();
    eprintln!(
        "[smoke] {label} at {} (monitor {})",
        nats.url(),
        nats.monitor_url()
    );
    assert!(label.starts_with(flavour), "{label}");

    {
        let js = nats.jetstream().await;
        // Not `js.create_key_value`: it fails on nats-server 2.9 (see pyoco_tests::jetstream).
        let kv = create_kv(
            &js,
            async_nats::jetstream::kv::Config {
                bucket: "smoke".into(),
                history: 1,
                ..Default::default()
            },
        )
        .await;
        kv.put("k", Bytes::from_static(b"v1")).await.expect("put");
        assert_eq!(kv.get("k").await.expect("get").as_deref(), Some(&b"v1"[..]));
    }

    let port = nats.port();
    nats.stop().await;
    assert!(!nats.is_running());
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "port {port} still accepting after stop"
    );

    nats.start_again().await;
    assert_eq!(nats.port(), port);
    let js = nats.jetstream().await;
    let kv = js
        .get_key_value("smoke")
        .await
        .expect("bucket survives restart");
    assert_eq!(
        kv.get("k").await.expect("get after restart").as_deref(),
        Some(&b"v1"[..]),
        "{label}: value lost across restart"
    );
    assert!(
        nats.log_text().contains("Server is ready"),
        "log:\n{}",
        nats.log_text()
    );
}

#[tokio::test]
async fn nats_kv_persists_across_restart_debian() {
    kv_persists_across_restart("debian").await;
}

#[tokio::test]
async fn nats_kv_persists_across_restart_pypi() {
    kv_persists_across_restart("pypi").await;
}

#[tokio::test]
async fn daemon_lifecycle_and_logs() {
    let mut cmd = std::process::Command::new("/bin/sh");
    cmd.args(["-c", "echo hello-out; echo hello-err >&2; sleep 30 & wait"]);
    let mut d = Daemon::spawn("sh-smoke", cmd);
    assert!(
        d.wait_for_log("hello-err", Duration::from_secs(5)).await,
        "{}",
        d.log_text()
    );
    assert!(d.log_text().contains("hello-out"));
    assert!(d.is_running());
    d.signal_group(nix::sys::signal::Signal::SIGTERM);
    let st = d
        .wait_exit(Duration::from_secs(5))
        .await
        .expect("exits on SIGTERM");
    assert!(!st.success());
    // the group's `sleep` is gone too
    let pgid = nix::unistd::Pid::from_raw(d.pid() as i32);
    let group_gone = wait_until(
        Duration::from_secs(3),
        Duration::from_millis(20),
        || async { nix::sys::signal::killpg(pgid, None).is_err() },
    )
    .await;
    assert!(group_gone, "process group still has members");
}

#[tokio::test]
async fn original_stack_runs_example_flow() {
    let nats = NatsServer::start().await;
    let gw = OrigGateway::start(&nats.url(), &[]).await;
    let worker_id = unique("smoke-worker");
    let _worker = OrigWorker::start(&nats.url(), "default", &worker_id, &[], None).await;

    let dir = TestDir::new("smoke-flow");
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
            "default",
        ],
        &[],
    )
    .await;
    out.assert_success();
    let submitted = out.stdout_json();
    assert_eq!(submitted["status"], "PENDING", "{submitted}");
    let run_id = submitted["run_id"].as_str().expect("run_id").to_string();

    let snap = wait_for_run_status(
        &gw.base_url(),
        &run_id,
        &["COMPLETED", "FAILED", "CANCELLED"],
        Duration::from_secs(30),
        None,
    )
    .await;
    assert_eq!(snap["status"], "COMPLETED", "{snap}");
    assert_eq!(snap["flow_name"], "main", "{snap}");

    // The SSE reader sees the terminal snapshot first.
    let resp = http()
        .get(gw.url(&format!("/runs/{run_id}/watch?timeout_sec=2")))
        .send()
        .await
        .expect("watch");
    assert!(resp.status().is_success());
    let mut events = sse_events(resp);
    use futures::StreamExt;
    let first = events
        .next()
        .await
        .expect("one event")
        .expect("no transport error");
    assert_eq!(first.event, "snapshot");
    assert_eq!(
        first.json()["snapshot"]["status"],
        "COMPLETED",
        "{}",
        first.data
    );

    // The admin CLI reaches the same NATS.
    let created = orig_admin(
        &nats.url(),
        &["api-key", "create", "--tenant", "smoke"],
        &[],
    )
    .await;
    created.assert_success();
    assert_eq!(created.stdout_json()["tenant_id"], "smoke");
}
