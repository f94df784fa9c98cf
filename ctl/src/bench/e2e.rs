//! `e2e`: runs through a worker, from submission to the first COMPLETED snapshot seen by a watch
//! on the runs KV bucket.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use futures::StreamExt;
use pyoco_core::wire::run_status;
use serde_json::{json, Value};

use super::load::{requests_for, MakeRequest};
use super::report::{latency_summary, round3};
use super::submit::make_yaml_submit;
use super::{Ctx, DEFAULT_E2E_RUNS};

/// The first terminal snapshot seen for a run.
#[derive(Clone)]
struct Terminal {
    at: Instant,
    status: String,
    error: Option<String>,
}

/// Terminal statuses seen by the KV watch, keyed by run id, plus a wake-up for waiters.
#[derive(Default)]
struct Completions {
    done: std::sync::Mutex<std::collections::HashMap<String, Terminal>>,
    notify: tokio::sync::Notify,
    /// Set when the watch ended or failed; waiters stop waiting.
    watch_error: std::sync::Mutex<Option<String>>,
    /// Snapshots received by the watch (all runs, all statuses).
    updates: AtomicU64,
}

#[derive(serde::Deserialize)]
struct StatusOnly {
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    error: Option<Value>,
}

impl Completions {
    fn record(&self, key: &str, value: &[u8], at: Instant) {
        self.updates.fetch_add(1, Ordering::Relaxed);
        let Ok(s) = serde_json::from_slice::<StatusOnly>(value) else {
            return;
        };
        let Some(status) = s.status.filter(|st| run_status::is_terminal(st)) else {
            return;
        };
        // is_terminal ignores case (as the original does); the outcome checks compare upper case.
        let status = status.to_ascii_uppercase();
        let mut done = self.done.lock().unwrap();
        if done.contains_key(key) {
            return;
        }
        let error = s.error.filter(|e| !e.is_null()).map(|e| match e {
            Value::String(t) => t,
            other => other.to_string(),
        });
        done.insert(key.to_string(), Terminal { at, status, error });
        drop(done);
        self.notify.notify_waiters();
    }

    fn get(&self, run_id: &str) -> Option<Terminal> {
        self.done.lock().unwrap().get(run_id).cloned()
    }

    fn watch_failed(&self) -> Option<String> {
        self.watch_error.lock().unwrap().clone()
    }

    /// Waits until `run_id` has a terminal snapshot (None: deadline passed or watch ended).
    async fn wait(&self, run_id: &str, deadline: Instant) -> Option<Terminal> {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(t) = self.get(run_id) {
                return Some(t);
            }
            if self.watch_failed().is_some() {
                return None;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            let _ = tokio::time::timeout(left, notified).await;
        }
    }
}

/// Feeds every update of the runs bucket into `c` (only updates after the watch started).
async fn completion_watcher(mut watch: async_nats::jetstream::kv::Watch, c: Arc<Completions>) {
    use async_nats::jetstream::kv::Operation;
    let reason = loop {
        match watch.next().await {
            Some(Ok(entry)) => {
                if entry.operation == Operation::Put {
                    c.record(&entry.key, &entry.value, Instant::now());
                }
            }
            Some(Err(e)) => break format!("KV watch failed: {e}"),
            None => break "KV watch ended".to_string(),
        }
    };
    *c.watch_error.lock().unwrap() = Some(reason);
    c.notify.notify_waiters();
}

async fn wait_for_worker(ctx: &Ctx, worker_id: &str, timeout: Duration) -> Result<Duration> {
    let js = ctx.js().await?;
    let bucket = &ctx.args.workers_bucket;
    let t = Instant::now();
    loop {
        if let Ok(kv) = js.get_key_value(bucket.clone()).await {
            if let Ok(Some(_)) = kv.get(worker_id).await {
                return Ok(t.elapsed());
            }
        }
        if t.elapsed() >= timeout {
            bail!("worker {worker_id} has no record in KV bucket {bucket} after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One submission; returns the run id and the instant the request was started.
async fn submit_one(
    make: &MakeRequest,
) -> std::result::Result<(String, Instant, Duration), String> {
    let t0 = Instant::now();
    let resp = make().send().await.map_err(|e| format!("request: {e}"))?;
    let status = resp.status();
    let body = resp.bytes().await.map_err(|e| format!("body: {e}"))?;
    let took = t0.elapsed();
    if !status.is_success() {
        let text = String::from_utf8_lossy(&body[..body.len().min(300)]).to_string();
        return Err(format!("HTTP {}: {}", status.as_u16(), text));
    }
    let v: Value = serde_json::from_slice(&body).map_err(|e| format!("bad JSON: {e}"))?;
    match v.get("run_id").and_then(Value::as_str) {
        Some(id) if !id.is_empty() => Ok((id.to_string(), t0, took)),
        _ => Err(format!(
            "no run_id in response: {}",
            String::from_utf8_lossy(&body[..body.len().min(200)])
        )),
    }
}

#[derive(Default)]
struct E2eSubmitter {
    /// (run id, submit start)
    runs: Vec<(String, Instant)>,
    submit_us: Vec<u64>,
    submit_errors: u64,
    first_error: Option<String>,
}

pub(super) async fn scenario_e2e(ctx: &Arc<Ctx>) -> Result<Value> {
    let args = &ctx.args;
    let make = make_yaml_submit(ctx)?;
    let run_timeout = Duration::from_secs_f64(args.run_timeout_sec.max(0.1));
    let total = requests_for(ctx, DEFAULT_E2E_RUNS);
    let conc = args.concurrency;
    let sequential = args.sequential;

    let worker_wait = match &args.wait_worker {
        Some(id) => Some(wait_for_worker(ctx, id, run_timeout).await?),
        None => None,
    };

    // The watch starts before the first submission: only new updates are delivered.
    let kv = ctx.kv().await?.clone();
    let watch = kv
        .watch_all()
        .await
        .context("KV watch on the runs bucket")?;
    let comp = Arc::new(Completions::default());
    let watcher = tokio::spawn(completion_watcher(watch, comp.clone()));
    struct AbortOnDrop(tokio::task::JoinHandle<()>);
    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let _watcher = AbortOnDrop(watcher);

    // Warm-up: runs waited for one by one; the first one also proves a worker serves the tag.
    let warmup = args.warmup.unwrap_or(1);
    let t_warm = Instant::now();
    for i in 0..warmup {
        let (id, _, _) = submit_one(&make)
            .await
            .map_err(|e| anyhow!("warm-up submission failed: {e}"))?;
        match comp.wait(&id, Instant::now() + run_timeout).await {
            Some(t) if t.status == "COMPLETED" => {}
            Some(t) => bail!(
                "warm-up run {id} ended {}: {}",
                t.status,
                t.error.unwrap_or_default()
            ),
            None => bail!(
                "warm-up run {} ({id}) not finished within {run_timeout:?}{} — is a worker serving tag {}?",
                i + 1,
                comp.watch_failed().map(|e| format!(" ({e})")).unwrap_or_default(),
                args.tag
            ),
        }
    }
    let warmup_sec = t_warm.elapsed().as_secs_f64();

    let issued = Arc::new(AtomicU64::new(0));
    let duration = args.duration_sec.map(Duration::from_secs_f64);
    let start = Instant::now();
    let deadline = duration.map(|d| start + d);
    let mut handles = Vec::with_capacity(conc);
    for _ in 0..conc {
        let issued = issued.clone();
        let make = make.clone();
        let comp = comp.clone();
        handles.push(tokio::spawn(async move {
            let mut s = E2eSubmitter::default();
            loop {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
                if issued.fetch_add(1, Ordering::Relaxed) >= total {
                    break;
                }
                match submit_one(&make).await {
                    Ok((id, t0, took)) => {
                        s.submit_us.push(took.as_micros() as u64);
                        s.runs.push((id.clone(), t0));
                        if sequential {
                            // The outcome is collected below; here we only wait.
                            comp.wait(&id, t0 + run_timeout).await;
                        }
                    }
                    Err(e) => {
                        s.submit_errors += 1;
                        s.first_error.get_or_insert(e);
                    }
                }
            }
            s
        }));
    }
    let mut all = E2eSubmitter::default();
    for h in handles {
        if let Ok(s) = h.await {
            all.runs.extend(s.runs);
            all.submit_us.extend(s.submit_us);
            all.submit_errors += s.submit_errors;
            if all.first_error.is_none() {
                all.first_error = s.first_error;
            }
        }
    }
    let submit_elapsed = start.elapsed();

    // Collect every run's outcome (each with its own deadline).
    let mut latencies_us = Vec::new();
    let (mut completed, mut failed, mut timed_out) = (0u64, 0u64, 0u64);
    let mut last_done: Option<Instant> = None;
    let mut first_run_error: Option<String> = None;
    for (id, t0) in &all.runs {
        match comp.wait(id, *t0 + run_timeout).await {
            Some(t) => {
                last_done = Some(last_done.map_or(t.at, |l| l.max(t.at)));
                if t.status == "COMPLETED" {
                    completed += 1;
                    latencies_us.push(t.at.saturating_duration_since(*t0).as_micros() as u64);
                } else {
                    failed += 1;
                    first_run_error.get_or_insert_with(|| {
                        format!("run {id} {}: {}", t.status, t.error.unwrap_or_default())
                    });
                }
            }
            None => {
                timed_out += 1;
                first_run_error.get_or_insert_with(|| {
                    format!(
                        "run {id} not finished within {run_timeout:?}{}",
                        comp.watch_failed()
                            .map(|e| format!(" ({e})"))
                            .unwrap_or_default()
                    )
                });
            }
        }
    }
    let elapsed = last_done
        .map(|l| l.saturating_duration_since(start))
        .unwrap_or(submit_elapsed)
        .max(submit_elapsed.min(Duration::from_millis(1)));
    let secs = elapsed.as_secs_f64();
    let rps = if secs > 0.0 {
        completed as f64 / secs
    } else {
        0.0
    };
    let errors = all.submit_errors + failed + timed_out;
    Ok(json!({
        "endpoint": "POST /runs/yaml → first COMPLETED snapshot in the runs KV bucket",
        "mode": if sequential { "sequential" } else { "open" },
        "requests": all.runs.len() as u64 + all.submit_errors,
        "ok": completed,
        "errors": errors,
        "submitted": all.runs.len(),
        "submit_errors": all.submit_errors,
        "completed": completed,
        "failed": failed,
        "timed_out": timed_out,
        "concurrency": conc,
        "elapsed_sec": round3(secs),
        "submit_elapsed_sec": round3(submit_elapsed.as_secs_f64()),
        "throughput_rps": round3(rps),
        "latency_ms": latency_summary(&latencies_us),
        "submit_latency_ms": latency_summary(&all.submit_us),
        "warmup_runs": warmup,
        "warmup_sec": round3(warmup_sec),
        "worker_wait_sec": worker_wait.map(|d| round3(d.as_secs_f64())),
        "kv_updates_seen": comp.updates.load(Ordering::Relaxed),
        "first_error": all.first_error.or(first_run_error),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completions_keep_the_first_terminal_snapshot() {
        let c = Completions::default();
        let t = Instant::now();
        c.record("a", br#"{"status":"RUNNING"}"#, t);
        assert!(c.get("a").is_none());
        c.record("a", br#"{"status": "COMPLETED", "error": null}"#, t);
        c.record(
            "a",
            br#"{"status":"FAILED","error":"late"}"#,
            t + Duration::from_secs(1),
        );
        let a = c.get("a").unwrap();
        assert_eq!(a.status, "COMPLETED");
        assert_eq!(a.at, t);
        assert!(a.error.is_none());
        c.record("b", br#"{"status":"FAILED","error":"boom"}"#, t);
        assert_eq!(c.get("b").unwrap().error.as_deref(), Some("boom"));
        c.record("c", b"not json", t);
        assert!(c.get("c").is_none());
        assert_eq!(c.updates.load(Ordering::Relaxed), 5);
        c.record("d", br#"{"status":"completed"}"#, t);
        assert_eq!(c.get("d").unwrap().status, "COMPLETED");
    }

    #[tokio::test]
    async fn completions_wake_waiters_and_time_out() {
        let c = Arc::new(Completions::default());
        let c2 = c.clone();
        let waiter =
            tokio::spawn(
                async move { c2.wait("x", Instant::now() + Duration::from_secs(5)).await },
            );
        tokio::time::sleep(Duration::from_millis(20)).await;
        c.record("x", br#"{"status":"COMPLETED"}"#, Instant::now());
        assert_eq!(waiter.await.unwrap().unwrap().status, "COMPLETED");
        let none = c
            .wait("y", Instant::now() + Duration::from_millis(30))
            .await;
        assert!(none.is_none());
    }
}
