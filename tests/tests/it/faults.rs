//! Faults and hostile behaviour of user code that the daemons must survive with bounded memory.

use std::time::Duration;

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
