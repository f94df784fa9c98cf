//! The worker's settings, typed and validated once at start: durations instead of `f64`
//! seconds, `Option` instead of sentinels, and an error naming the setting when one is invalid.
//! `pyoco_core::config::Config` stays the source (file + env + flags); the resource and
//! consumer code that takes a `Config` gets it from here.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use pyoco_core::callables::CallableAllow;
use pyoco_core::config::Config;

use crate::error::WorkerError;

/// Everything `run` needs, decided before anything starts.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    pub cfg: Arc<Config>,
    pub tags: Vec<String>,
    pub worker_id: String,
    pub concurrency: usize,
    /// Poll once, run what was fetched, stop.
    pub run_once: bool,
    pub python: PathBuf,
    pub pythonpath: Vec<PathBuf>,
    pub flow_resolver: Option<String>,
    /// `PYOCO_CALLABLE_ALLOW`, passed to every runner (which enforces the callable policy).
    pub callable_allow: CallableAllow,
    /// Where the runners' working directories live (created at start).
    pub work_dir: PathBuf,
    pub poll_timeout: Duration,
    pub drain_timeout: Duration,
    /// Kill and FAIL runs running longer than this (job `timeout_sec` wins).
    pub run_timeout: Option<Duration>,
    /// Kill a cancelled run still running after this; zero = never.
    pub cancel_kill_after: Duration,
    pub worker_heartbeat: Duration,
    pub run_heartbeat: Duration,
    /// The ack wait of consumers this worker creates (at least 1 s).
    pub ack_wait: Duration,
    /// In-progress ack interval, always below the consumer's ack wait.
    pub ack_progress: Duration,
    /// Deliveries of a job before JetStream gives up on it; `None` = unlimited.
    pub max_deliver: Option<i64>,
    /// Above this size a snapshot's `task_records` are dropped; 0 = no limit.
    pub max_snapshot_bytes: usize,
    pub ready_timeout: Duration,
    /// RLIMIT_AS of each runner; `None` = no limit.
    pub runner_memory_max: Option<u64>,
}

/// Below this a runner cannot even import pyoco (its interpreter, threads and libraries map
/// more), so a smaller limit is a configuration mistake, not a tight budget.
pub const RUNNER_MEMORY_MIN_BYTES: i64 = 64 * 1024 * 1024;

fn secs(name: &str, v: f64) -> Result<Duration, WorkerError> {
    Duration::try_from_secs_f64(v).map_err(|_| {
        WorkerError::Config(format!(
            "{name} = {v}: must be a number of seconds, 0 or more; example: {name} = 30"
        ))
    })
}

impl WorkerSettings {
    /// Validates `cfg` for a worker. Errors name the setting (exit code 2).
    pub fn from_config(cfg: Config, run_once: bool) -> Result<WorkerSettings, WorkerError> {
        let tags = parse_tags(&cfg.worker_tags, &cfg.default_tag).map_err(WorkerError::Config)?;
        if cfg.worker_concurrency < 1 || cfg.worker_concurrency > 256 {
            return Err(WorkerError::Config(format!(
                "--concurrency {}: must be between 1 and 256; example: --concurrency 4",
                cfg.worker_concurrency
            )));
        }
        let worker_id = if cfg.worker_id.trim().is_empty() {
            default_worker_id(&tags)
        } else {
            cfg.worker_id.trim().to_string()
        };
        if !pyoco_core::wire::is_valid_kv_key(&worker_id) {
            return Err(WorkerError::Config(format!("--worker-id '{worker_id}': use letters, digits, '-', '_', '.', '=' or '/'; example: --worker-id $(hostname)-hello")));
        }
        let work_dir = if !cfg.worker_work_dir.is_empty() {
            PathBuf::from(&cfg.worker_work_dir)
        } else if let Ok(state) = std::env::var("STATE_DIRECTORY") {
            PathBuf::from(state.split(':').next().unwrap_or(".")).join("worker")
        } else {
            PathBuf::from(".pyoco-worker")
        };
        let python = if cfg.python.trim().is_empty() {
            default_python()
        } else {
            PathBuf::from(cfg.python.trim())
        };
        // A negative value means "the cancel grace period" (documented default -1).
        let cancel_kill_after = if cfg.cancel_kill_after_sec < 0.0 {
            secs(
                "cancel_grace_period_sec",
                cfg.cancel_grace_period_sec.max(0.0),
            )?
        } else {
            secs("cancel_kill_after_sec", cfg.cancel_kill_after_sec)?
        };
        let run_timeout = secs("worker_run_timeout_sec", cfg.worker_run_timeout_sec)?;
        // The consumer's ack wait is at least 1 s; progress acks come well inside it.
        let ack_wait = cfg.consumer_ack_wait_sec.max(1.0);
        let mut progress = cfg.ack_progress_interval_sec;
        if progress <= 0.0 || progress >= ack_wait {
            progress = (ack_wait / 2.0).max(0.5);
        }
        let memory_max = cfg.worker_runner_memory_max_bytes;
        if memory_max != 0 && memory_max < RUNNER_MEMORY_MIN_BYTES {
            return Err(WorkerError::Config(format!(
                "worker_runner_memory_max_bytes = {memory_max}: must be 0 (no limit) or at least {RUNNER_MEMORY_MIN_BYTES} (64 MiB); example: worker_runner_memory_max_bytes = 4294967296"
            )));
        }
        let callable_allow = CallableAllow::parse(&cfg.callable_allow)
            .map_err(|e| WorkerError::Config(format!("callable_allow: {e}")))?;
        Ok(WorkerSettings {
            callable_allow,
            tags,
            worker_id,
            concurrency: cfg.worker_concurrency as usize,
            run_once,
            python,
            pythonpath: cfg
                .worker_pythonpath
                .split(':')
                .filter(|s| !s.is_empty())
                .map(PathBuf::from)
                .collect(),
            // Already absolute: the configuration resolves path-valued settings at load.
            flow_resolver: Some(cfg.worker_flow_resolver.trim().to_string())
                .filter(|s| !s.is_empty()),
            work_dir,
            // The configuration enforces the minimums (0.05 s, 0.1 s) at load.
            poll_timeout: secs("worker_poll_timeout_sec", cfg.worker_poll_timeout_sec)?,
            drain_timeout: secs("worker_drain_timeout_sec", cfg.worker_drain_timeout_sec)?,
            run_timeout: (!run_timeout.is_zero()).then_some(run_timeout),
            cancel_kill_after,
            worker_heartbeat: secs(
                "worker_heartbeat_interval_sec",
                cfg.worker_heartbeat_interval_sec,
            )?,
            run_heartbeat: secs("run_heartbeat_interval_sec", cfg.run_heartbeat_interval_sec)?,
            ack_wait: secs("consumer_ack_wait_sec", ack_wait)?,
            ack_progress: secs("ack_progress_interval_sec", progress)?,
            max_deliver: (cfg.consumer_max_deliver > 0).then_some(cfg.consumer_max_deliver),
            max_snapshot_bytes: cfg.max_run_snapshot_bytes.max(0) as usize,
            ready_timeout: Duration::from_secs(60),
            runner_memory_max: (memory_max > 0).then_some(memory_max as u64),
            cfg: Arc::new(cfg),
        })
    }
}

/// Tags: comma-separated, trimmed, empties dropped, each one subject token.
pub fn parse_tags(raw: &str, default_tag: &str) -> Result<Vec<String>, String> {
    let mut tags: Vec<String> = raw
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .collect();
    if tags.is_empty() {
        tags.push(default_tag.to_string());
    }
    for t in &tags {
        if !pyoco_core::wire::is_valid_tag(t) {
            return Err(format!("--tags: invalid tag '{t}': a tag is letters, digits, '_' and '-' (one NATS subject token); example: --tags hello,gpu"));
        }
    }
    tags.dedup();
    Ok(tags)
}

fn default_worker_id(tags: &[String]) -> String {
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "worker".into());
    let host: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("{host}-{}", tags.join("-"))
}

fn default_python() -> PathBuf {
    if let Ok(venv) = std::env::var("VIRTUAL_ENV") {
        let p = PathBuf::from(venv).join("bin/python");
        if p.exists() {
            return p;
        }
    }
    PathBuf::from("python3")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Config {
        Config {
            worker_tags: "a, b,,b".into(),
            worker_id: "w1".into(),
            ..Config::default()
        }
    }

    #[test]
    fn seconds_become_durations_and_sentinels_options() {
        let mut c = cfg();
        c.worker_run_timeout_sec = 0.0;
        c.cancel_kill_after_sec = -1.0;
        c.cancel_grace_period_sec = 7.0;
        c.consumer_ack_wait_sec = 4.0;
        c.ack_progress_interval_sec = 10.0;
        let s = WorkerSettings::from_config(c, false).unwrap();
        assert_eq!(s.tags, vec!["a".to_string(), "b".to_string()]);
        assert_eq!(s.run_timeout, None);
        assert_eq!(s.ack_wait, Duration::from_secs(4));
        assert_eq!(s.cancel_kill_after, Duration::from_secs(7));
        assert_eq!(
            s.ack_progress,
            Duration::from_secs(2),
            "inside the ack wait"
        );
        let mut c = cfg();
        c.worker_run_timeout_sec = 1.5;
        c.cancel_kill_after_sec = 0.0;
        let s = WorkerSettings::from_config(c, false).unwrap();
        assert_eq!(s.run_timeout, Some(Duration::from_millis(1500)));
        assert!(s.cancel_kill_after.is_zero());
    }

    #[test]
    fn invalid_settings_are_named() {
        let mut c = cfg();
        c.worker_drain_timeout_sec = -1.0;
        let e = WorkerSettings::from_config(c, false).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(
            e.to_string().starts_with("worker_drain_timeout_sec = -1"),
            "{e}"
        );
        let mut c = cfg();
        c.worker_concurrency = 0;
        assert!(WorkerSettings::from_config(c, false)
            .unwrap_err()
            .to_string()
            .starts_with("--concurrency 0"));
        let mut c = cfg();
        c.worker_tags = "a.b".into();
        assert!(WorkerSettings::from_config(c, false).is_err());
        for bad in [-1, 1000] {
            let mut c = cfg();
            c.worker_runner_memory_max_bytes = bad;
            let e = WorkerSettings::from_config(c, false).unwrap_err();
            assert!(
                e.to_string().starts_with(&format!(
                    "worker_runner_memory_max_bytes = {bad}: must be 0"
                )),
                "{e}"
            );
        }
    }

    #[test]
    fn runner_memory_limit() {
        let s = WorkerSettings::from_config(cfg(), false).unwrap();
        assert_eq!(s.runner_memory_max, Some(4 << 30), "4 GiB by default");
        let mut c = cfg();
        c.worker_runner_memory_max_bytes = 0;
        let s = WorkerSettings::from_config(c, false).unwrap();
        assert_eq!(s.runner_memory_max, None, "0 = no limit");
        let mut c = cfg();
        c.worker_runner_memory_max_bytes = RUNNER_MEMORY_MIN_BYTES;
        let s = WorkerSettings::from_config(c, false).unwrap();
        assert_eq!(s.runner_memory_max, Some(64 << 20));
    }
}
