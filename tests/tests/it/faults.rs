//! Faults and hostile behaviour of user code that the daemons must survive with bounded memory.

use std::time::Duration;

use nix::sys::signal::Signal;
use pyoco_tests::*;

/// VmRSS of a process in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS")
}

#[tokio::test]
async fn a_task_flooding_stderr_without_newlines_does_not_grow_the_worker() {
    let nats = NatsServer::start().await;
    let gw = Gateway::start(&nats.url(), &[]).await;
    gw.wait_nats_connected().await;
    let tasks = TestDir::new("flood");
    // 96 MiB on fd 2, bypassing Python's buffers, with no newline at all: the daemon used to
    // read runner stderr with an unbounded read_until and grew by all of it.
    tasks.write(
        "flood.py",
        "import os\n\ndef flood():\n    chunk = b'x' * (1 << 20)\n    for _ in range(96):\n        os.write(2, chunk)\n    return 'flooded'\n",
    );
    let mut worker =
        Worker::start(&nats.url(), "flood", &unique("w"), tasks.path(), &[], &[]).await;
    let pid = worker.daemon().pid();
    let before = rss_kib(pid);
    let yaml = "version: 1\nflow:\n  graph: flood\ntasks:\n  flood: {callable: flood:flood}\n";
    let id = submit_flow_yaml(&gw.base_url(), yaml, "main", "flood").await;
    let mut peak = before;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let done = loop {
        peak = peak.max(rss_kib(pid));
        let (_, run) = get_run(&gw.base_url(), &id, None).await;
        if matches!(
            run["status"].as_str(),
            Some("COMPLETED" | "FAILED" | "CANCELLED")
        ) {
            break run;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "run did not end: {run}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(done["status"], "COMPLETED", "{done}");
    let grown_mib = peak.saturating_sub(before) / 1024;
    assert!(
        grown_mib < 32,
        "worker RSS grew by {grown_mib} MiB while a task wrote 96 MiB without a newline"
    );
}

/// Fencing between workers: a worker frozen (SIGSTOP) past the ack wait has its job redelivered
/// to another, which takes the run over once the frozen one's heartbeat is stale. When the
/// frozen worker resumes, its next write finds the run owned by the other execution: it stops
/// (kills its runner), writes nothing and does not acknowledge, so the snapshot never flips back
/// and the run ends once, as the second execution finished it. (The first execution's task was
/// already running and, its runner not being frozen, may finish: at-least-once for user code.)
#[tokio::test]
async fn a_worker_frozen_past_the_ack_wait_is_fenced_when_it_resumes() {
    let nats = NatsServer::start().await;
    let gw = Gateway::start(&nats.url(), &[]).await;
    gw.wait_nats_connected().await;
    let tasks = TestDir::new("fence");
    tasks.write(
        "fence_tasks.py",
        "import os, time\n\ndef slow(log='', seconds=1.0):\n    with open(log, 'a') as f:\n        f.write(f'start {os.getpid()}\\n')\n    time.sleep(seconds)\n    return os.getpid()\n",
    );
    let log = tasks.join("starts.log");
    let env = [
        ("PYOCO_CONSUMER_ACK_WAIT_SEC", "2"),
        ("PYOCO_RUN_HEARTBEAT_INTERVAL_SEC", "0.5"),
    ];
    let mut a = Worker::start(&nats.url(), "fence", "fence-a", tasks.path(), &[], &env).await;
    let yaml = format!(
        "version: 1\nflow:\n  graph: slow\n  defaults: {{log: '{}', seconds: 5.0}}\ntasks:\n  slow: {{callable: fence_tasks:slow}}\n",
        log.display()
    );
    let id = submit_flow_yaml(&gw.base_url(), &yaml, "main", "fence").await;
    let running = wait_for_run_status(
        &gw.base_url(),
        &id,
        &["RUNNING"],
        Duration::from_secs(30),
        None,
    )
    .await;
    assert_eq!(running["worker_id"], "fence-a");
    assert!(
        running["attempt_id"]
            .as_str()
            .unwrap()
            .starts_with("fence-a/1/"),
        "{running}"
    );

    a.daemon().signal(Signal::SIGSTOP);
    let b = Worker::start(&nats.url(), "fence", "fence-b", tasks.path(), &[], &env).await;
    let taken = wait_until(
        Duration::from_secs(30),
        Duration::from_millis(100),
        || async { get_run(&gw.base_url(), &id, None).await.1["worker_id"] == "fence-b" },
    )
    .await;
    assert!(
        taken,
        "fence-b did not take the run over; log:\n{}",
        b.log_text()
    );
    a.daemon().signal(Signal::SIGCONT);

    // From the takeover to the end the snapshot stays fence-b's.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let done = loop {
        let (_, run) = get_run(&gw.base_url(), &id, None).await;
        assert_eq!(
            run["worker_id"], "fence-b",
            "the snapshot flipped back: {run}"
        );
        if matches!(
            run["status"].as_str(),
            Some("COMPLETED" | "FAILED" | "CANCELLED")
        ) {
            break run;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "run did not end: {run}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(done["status"], "COMPLETED", "{done}");
    assert!(
        done["attempt_id"]
            .as_str()
            .unwrap()
            .starts_with("fence-b/2/"),
        "{done}"
    );
    assert!(
        a.daemon()
            .wait_for_log(
                "another execution took this run over",
                Duration::from_secs(20)
            )
            .await,
        "fence-a did not notice it was superseded; log:\n{}",
        a.log_text()
    );
    // fence-a stays healthy and serves the next job.
    let id2 = submit_flow_yaml(&gw.base_url(), &yaml.replace("5.0", "0.1"), "main", "fence").await;
    let done2 = wait_for_run_status(
        &gw.base_url(),
        &id2,
        &["COMPLETED", "FAILED"],
        Duration::from_secs(30),
        None,
    )
    .await;
    assert_eq!(done2["status"], "COMPLETED", "{done2}");
    drop(b);
}
