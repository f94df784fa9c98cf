//! Our `pyoco-worker`, started with the test Python 3.11 venv (real pyoco) as its runtime.

use std::path::Path;
use std::time::Duration;

use crate::env::py311;
use crate::gateway::spawn_workspace_bin;
use crate::process::Daemon;

/// Task functions the worker tests use, importable as `wtasks`.
pub const TEST_TASKS: &str = r#"
import os, signal, time

def add_one(x=0):
    return x + 1

def to_text(add_one):
    return f"v={add_one}"

def left(x=0):
    return "L"

def right(x=0):
    return "R"

def join(left, right):
    return left + right

def boom():
    raise ValueError("boom!")

def slow(seconds=1.0):
    time.sleep(seconds)
    return "slow"

def after(slow):
    return "after"

def hang():
    time.sleep(3600)

def suicide():
    os.kill(os.getpid(), signal.SIGKILL)

def record(n=0, log=""):
    with open(log, "a") as f:
        f.write(f"{n}\n")
    return n
"#;

pub struct Worker {
    daemon: Daemon,
    pub worker_id: String,
}

impl Worker {
    /// Starts `pyoco-worker --nats-url URL --tags TAGS --worker-id ID --python <py311>
    /// --pythonpath <tasks_dir> [extra]` and waits until it logs `worker ready`.
    pub async fn start(
        nats_url: &str,
        tags: &str,
        worker_id: &str,
        tasks_dir: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Worker {
        Self::start_with_python(nats_url, tags, worker_id, &py311(), tasks_dir, extra, env).await
    }

    /// [`Worker::start`] with another runner interpreter (a venv made by the test).
    pub async fn start_with_python(
        nats_url: &str,
        tags: &str,
        worker_id: &str,
        py: &Path,
        tasks_dir: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Worker {
        let mut args: Vec<String> = vec![
            "--nats-url".into(),
            nats_url.into(),
            "--tags".into(),
            tags.into(),
            "--worker-id".into(),
            worker_id.into(),
            "--python".into(),
            py.display().to_string(),
            "--pythonpath".into(),
            tasks_dir.display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let daemon = spawn_workspace_bin("pyoco-worker", &argv, env);
        let w = Worker {
            daemon,
            worker_id: worker_id.to_string(),
        };
        assert!(
            w.daemon
                .wait_for_log("worker ready", Duration::from_secs(60))
                .await,
            "pyoco-worker did not become ready; log:\n{}",
            w.daemon.log_tail(80)
        );
        w
    }

    pub fn daemon(&mut self) -> &mut Daemon {
        &mut self.daemon
    }

    pub fn log_text(&self) -> String {
        self.daemon.log_text()
    }
}
