//! The gateway's runtime skeleton: one shutdown token and one task tracker handed to every
//! background task and SSE stream, and a small registry of named, supervised tasks (garage's
//! background workers are the model) that the watchdog and the systemd status line read.
//!
//! A supervised task that ends, fails or panics is logged and restarted with backoff until
//! shutdown. At shutdown the token is cancelled, the tracker closed, and the tasks are awaited
//! for a bounded time, so the process exits well within systemd's `TimeoutStopSec`.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// A run that lasted this long was healthy: the next failure starts from the minimum backoff.
const STABLE_AFTER: Duration = Duration::from_secs(30);
/// A task waiting to restart longer than its backoff plus this is considered stuck.
const RESTART_SLACK: Duration = Duration::from_secs(5);

/// What a named task is doing.
#[derive(Debug, Clone, PartialEq)]
pub enum TaskState {
    Running,
    /// Ended, failed or panicked; restarts at `retry_at`.
    Restarting {
        reason: String,
        retry_at: Instant,
    },
    /// Gone for good (shutdown).
    Stopped,
}

#[derive(Debug, Clone)]
pub struct TaskStatus {
    pub state: TaskState,
    pub restarts: u64,
}

/// Named tasks and their state.
#[derive(Default)]
pub struct TaskRegistry {
    tasks: Mutex<BTreeMap<&'static str, TaskStatus>>,
}

impl TaskRegistry {
    fn set(&self, name: &'static str, state: TaskState) {
        let mut tasks = self.tasks.lock().unwrap();
        let entry = tasks.entry(name).or_insert(TaskStatus {
            state: TaskState::Running,
            restarts: 0,
        });
        if matches!(state, TaskState::Restarting { .. }) {
            entry.restarts += 1;
        }
        entry.state = state;
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tasks.lock().unwrap().contains_key(name)
    }

    pub fn status(&self, name: &str) -> Option<TaskStatus> {
        self.tasks.lock().unwrap().get(name).cloned()
    }

    /// Whether every named task is alive: running, or waiting for a restart that is due soon
    /// (a supervisor that is retrying is alive; one that stopped or hangs is not).
    pub fn all_alive(&self, now: Instant) -> bool {
        self.tasks.lock().unwrap().values().all(|t| match &t.state {
            TaskState::Running => true,
            TaskState::Restarting { retry_at, .. } => now <= *retry_at + RESTART_SLACK,
            TaskState::Stopped => false,
        })
    }

    /// The tasks that are not running, for the status line: `runs follower restarting (…)`.
    pub fn problems(&self) -> Option<String> {
        let tasks = self.tasks.lock().unwrap();
        let v: Vec<String> = tasks
            .iter()
            .filter_map(|(name, t)| match &t.state {
                TaskState::Running => None,
                TaskState::Restarting { reason, .. } => {
                    Some(format!("{name} restarting ({reason})"))
                }
                TaskState::Stopped => Some(format!("{name} stopped")),
            })
            .collect();
        (!v.is_empty()).then(|| v.join(", "))
    }
}

/// The shutdown token, the tracker of every task, and the registry of named tasks.
#[derive(Clone, Default)]
pub struct Runtime {
    pub shutdown: CancellationToken,
    pub tracker: TaskTracker,
    pub registry: Arc<TaskRegistry>,
}

impl Runtime {
    pub fn new() -> Runtime {
        Runtime::default()
    }

    /// A tracked task (joined at shutdown). It must end on `shutdown` itself.
    pub fn spawn<F>(&self, task: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tracker.spawn(task)
    }

    /// A named task, restarted with backoff whenever it ends, fails or panics, and aborted at
    /// shutdown. `make` builds a fresh future for each start.
    pub fn supervise<M, F>(&self, name: &'static str, mut make: M)
    where
        M: FnMut() -> F + Send + 'static,
        F: Future<Output = Result<(), String>> + Send + 'static,
    {
        let rt = self.clone();
        rt.registry.set(name, TaskState::Running);
        self.tracker.spawn(async move {
            let mut backoff = BACKOFF_MIN;
            loop {
                rt.registry.set(name, TaskState::Running);
                let started = Instant::now();
                let mut run = rt.tracker.spawn(make());
                let outcome = tokio::select! {
                    r = &mut run => r,
                    _ = rt.shutdown.cancelled() => {
                        run.abort();
                        let _ = run.await;
                        break;
                    }
                };
                let reason = match outcome {
                    Ok(Ok(())) => "ended".to_string(),
                    Ok(Err(e)) => format!("failed: {e}"),
                    Err(e) if e.is_panic() => "panicked".to_string(),
                    Err(_) => "was cancelled".to_string(),
                };
                if started.elapsed() >= STABLE_AFTER {
                    backoff = BACKOFF_MIN;
                }
                tracing::warn!(
                    task = name,
                    backoff_ms = backoff.as_millis() as u64,
                    "{name} {reason}; restarting"
                );
                rt.registry.set(
                    name,
                    TaskState::Restarting {
                        reason,
                        retry_at: Instant::now() + backoff,
                    },
                );
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = rt.shutdown.cancelled() => break,
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
            rt.registry.set(name, TaskState::Stopped);
        });
    }

    /// Calls `ping` (systemd's `WATCHDOG=1`) every `every`, but only while every named task is
    /// alive: a follower that died and is not restarted, or a hung supervisor, gets the process
    /// restarted by systemd. Ends on shutdown.
    pub async fn watchdog(self, every: Duration, ping: impl Fn() + Send) {
        let mut paused = false;
        loop {
            if self.registry.all_alive(Instant::now()) {
                ping();
                if paused {
                    tracing::info!("all background tasks alive again; watchdog pings resumed");
                    paused = false;
                }
            } else if !paused {
                let problems = self.registry.problems().unwrap_or_default();
                tracing::error!(err_id = "ERR-PYOCO-0003", problems = %problems, "a background task is not alive; watchdog pings paused");
                paused = true;
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = self.shutdown.cancelled() => return,
            }
        }
    }

    /// Cancels everything and waits up to `bound` for the tracked tasks; returns whether they
    /// all ended in time (the process exits either way).
    pub async fn shutdown(&self, bound: Duration) -> bool {
        self.shutdown.cancel();
        self.tracker.close();
        let done = tokio::time::timeout(bound, self.tracker.wait())
            .await
            .is_ok();
        if !done {
            tracing::warn!(
                left = self.tracker.len(),
                "background tasks still running at shutdown; exiting anyway"
            );
        }
        done
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    async fn wait_for(mut f: impl FnMut() -> bool) {
        for _ in 0..200 {
            if f() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("condition not reached");
    }

    #[tokio::test]
    async fn a_task_that_fails_or_panics_is_restarted() {
        let rt = Runtime::new();
        let starts = Arc::new(AtomicU32::new(0));
        let s = starts.clone();
        rt.supervise("flaky", move || {
            let n = s.fetch_add(1, Ordering::SeqCst);
            async move {
                match n {
                    0 => Err("boom".to_string()),
                    1 => panic!("second start panics"),
                    2 => Ok(()),
                    _ => {
                        std::future::pending::<()>().await;
                        Ok(())
                    }
                }
            }
        });
        wait_for(|| starts.load(Ordering::SeqCst) >= 4).await;
        let st = rt.registry.status("flaky").unwrap();
        assert_eq!(st.restarts, 3);
        assert_eq!(st.state, TaskState::Running);
        assert!(rt.registry.all_alive(Instant::now()));
        assert_eq!(rt.registry.problems(), None);
        assert!(rt.shutdown(Duration::from_secs(2)).await);
        assert_eq!(
            rt.registry.status("flaky").unwrap().state,
            TaskState::Stopped
        );
        assert!(!rt.registry.all_alive(Instant::now()));
    }

    #[tokio::test]
    async fn restarting_is_reported_and_alive_until_overdue() {
        let rt = Runtime::new();
        rt.supervise("follower", || async { Err("no watch".to_string()) });
        wait_for(|| rt.registry.problems().is_some()).await;
        let problems = rt.registry.problems().unwrap();
        assert!(
            problems.starts_with("follower restarting (failed: no watch)"),
            "{problems}"
        );
        assert!(rt.registry.all_alive(Instant::now()));
        // A restart long overdue means the supervisor itself is stuck.
        assert!(!rt
            .registry
            .all_alive(Instant::now() + BACKOFF_MAX + RESTART_SLACK + Duration::from_secs(1)));
        assert!(rt.shutdown(Duration::from_secs(2)).await);
    }

    #[tokio::test]
    async fn the_watchdog_pings_only_while_every_task_is_alive() {
        let rt = Runtime::new();
        let pings = Arc::new(AtomicU32::new(0));
        rt.supervise("follower", std::future::pending);
        let p = pings.clone();
        rt.spawn(rt.clone().watchdog(Duration::from_millis(10), move || {
            p.fetch_add(1, Ordering::SeqCst);
        }));
        wait_for(|| pings.load(Ordering::SeqCst) >= 3).await;
        // A task that is gone for good stops the pings.
        rt.registry.set("follower", TaskState::Stopped);
        tokio::time::sleep(Duration::from_millis(30)).await;
        let paused_at = pings.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            pings.load(Ordering::SeqCst),
            paused_at,
            "no pings while a task is stopped"
        );
        // Alive again: pings resume.
        rt.registry.set("follower", TaskState::Running);
        wait_for(|| pings.load(Ordering::SeqCst) > paused_at + 2).await;
        assert!(
            rt.shutdown(Duration::from_secs(2)).await,
            "the watchdog ends on shutdown"
        );
    }

    #[tokio::test]
    async fn shutdown_is_bounded_by_tasks_that_ignore_it() {
        let rt = Runtime::new();
        rt.spawn(async { tokio::time::sleep(Duration::from_secs(60)).await });
        let ends = rt.spawn({
            let token = rt.shutdown.clone();
            async move { token.cancelled().await }
        });
        let t = Instant::now();
        assert!(!rt.shutdown(Duration::from_millis(200)).await);
        assert!(t.elapsed() < Duration::from_secs(2));
        assert!(ends.is_finished());
    }
}
