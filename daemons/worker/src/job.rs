//! One job, from the message to the ACK: decode, skip finished runs, pick up, run through a
//! runner, record progress, enforce cancel and timeouts, write the terminal snapshot, then ACK.
//!
//! At-least-once delivery made harmless: a redelivered job whose run is already terminal is
//! acknowledged without running; a job that fails on its last allowed delivery ends FAILED and
//! in the DLQ instead of staying RUNNING.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind};
use futures::StreamExt;
use pyoco_core::config::Config;
use pyoco_core::flow_yaml;
use pyoco_core::resources::Resources;
use pyoco_core::time::now;
use pyoco_core::wire::{f64_field, run_status, str_field, Doc};
use serde_json::{json, Map, Value};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::dlq;
use crate::registry::Registry;
use crate::runner::{Runner, RunnerEvent};
use crate::snapshot::{self, cancel_requested, Limits, RunState, WriteError};

/// Everything a job needs from the worker.
pub struct JobCtx {
    pub cfg: Arc<Config>,
    pub res: Resources,
    pub worker_id: String,
    pub registry: Registry,
    pub limits: Limits,
    pub run_timeout: Option<Duration>,
    pub cancel_kill_after: Duration,
    /// Becomes `Some(deadline)` on SIGTERM: unfinished runs are put back at the deadline.
    pub drain: watch::Receiver<Option<Instant>>,
}

/// A decoded job message (contract §2.5).
#[derive(Debug, Clone)]
pub struct Job {
    pub run_id: String,
    pub flow_name: String,
    pub tag: String,
    pub tags: Vec<String>,
    pub tenant_id: Value,
    pub api_key_id: Value,
    pub params: Map<String, Value>,
    pub workflow_yaml: Option<String>,
    pub workflow_yaml_sha256: Value,
    pub workflow_yaml_bytes: Value,
    pub timeout_sec: Option<f64>,
}

impl Job {
    /// The job message again (contract §2.5), e.g. for a dead letter that can be replayed.
    pub fn to_doc(&self) -> Value {
        let mut d = json!({
            "run_id": self.run_id, "flow_name": self.flow_name, "tag": self.tag, "tags": self.tags,
            "tenant_id": self.tenant_id, "api_key_id": self.api_key_id, "params": Value::Object(self.params.clone()),
        });
        if let Some(y) = &self.workflow_yaml {
            d["workflow_yaml"] = json!(y);
            d["workflow_yaml_sha256"] = self.workflow_yaml_sha256.clone();
            d["workflow_yaml_bytes"] = self.workflow_yaml_bytes.clone();
        }
        if let Some(t) = self.timeout_sec {
            d["timeout_sec"] = json!(t);
        }
        d
    }
}

/// Why a message is not a job: the reason, and the run id when one could be read.
#[derive(Debug)]
pub struct InvalidJob {
    pub reason: String,
    pub run_id: Option<String>,
}

/// The original's decoding rules (§2.5), plus type checks where the original would crash later.
pub fn decode_job(payload: &[u8]) -> Result<Job, InvalidJob> {
    let invalid = |reason: &str, run_id: Option<String>| InvalidJob {
        reason: reason.to_string(),
        run_id,
    };
    let doc: Doc = match serde_json::from_slice::<Value>(payload) {
        Ok(Value::Object(m)) => m,
        Ok(_) => return Err(invalid("job is not a JSON object", None)),
        Err(e) => return Err(invalid(&format!("job is not JSON: {e}"), None)),
    };
    let run_id = match doc.get("run_id") {
        Some(Value::String(s)) if pyoco_core::wire::is_valid_kv_key(s) => s.clone(),
        Some(Value::String(_)) => return Err(invalid("run_id is not a valid run id", None)),
        Some(_) => return Err(invalid("run_id is not a string", None)),
        None => return Err(invalid("missing run_id", None)),
    };
    let some_id = Some(run_id.clone());
    let flow_name = match doc.get("flow_name") {
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(invalid("flow_name is not a string", some_id)),
        None => return Err(invalid("missing flow_name", some_id)),
    };
    match doc.get("submitted_at") {
        None | Some(Value::Null) | Some(Value::Number(_)) => {}
        Some(Value::String(s)) if s.trim().parse::<f64>().is_ok() => {}
        Some(_) => return Err(invalid("submitted_at is not a number", some_id)),
    }
    let tag = str_field(&doc, "tag").unwrap_or("default").to_string();
    let tags: Vec<String> = match doc.get("tags") {
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|t| t.as_str().map(str::to_string))
            .collect(),
        _ => vec![],
    };
    let params = match doc.get("params") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(_) => return Err(invalid("params is not an object", some_id)),
    };
    let workflow_yaml = match doc.get("workflow_yaml") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(invalid("workflow_yaml is not a string", some_id)),
    };
    Ok(Job {
        run_id,
        flow_name,
        tags: if tags.is_empty() {
            vec![tag.clone()]
        } else {
            tags
        },
        tag,
        tenant_id: doc.get("tenant_id").cloned().unwrap_or(Value::Null),
        api_key_id: doc.get("api_key_id").cloned().unwrap_or(Value::Null),
        params,
        workflow_yaml,
        workflow_yaml_sha256: doc
            .get("workflow_yaml_sha256")
            .cloned()
            .unwrap_or(Value::Null),
        workflow_yaml_bytes: doc
            .get("workflow_yaml_bytes")
            .cloned()
            .unwrap_or(Value::Null),
        timeout_sec: f64_field(&doc, "timeout_sec").filter(|t| *t > 0.0),
    })
}

/// How a run ended, as the runner (or we, when we had to kill it) report it.
#[derive(Debug, Clone)]
struct Final {
    status: String,
    error: Option<String>,
    error_kind: Option<String>,
    tasks: Option<Map<String, Value>>,
    task_records: Option<Map<String, Value>>,
    end_time: f64,
    flow_name: Option<String>,
}

impl Final {
    fn failed(error: String, kind: &str) -> Final {
        Final {
            status: run_status::FAILED.into(),
            error: Some(error),
            error_kind: Some(kind.into()),
            tasks: None,
            task_records: None,
            end_time: now(),
            flow_name: None,
        }
    }
}

/// What became of the runner: still good, or killed/dead (the caller replaces it).
pub enum RunnerFate {
    Reusable(Runner),
    Replace(Runner),
}

fn nak_delay(delivered: i64) -> Duration {
    // 2 s, 4 s, 8 s … capped at a minute: a NATS hiccup is retried soon, an outage not in a loop.
    Duration::from_secs((2u64 << (delivered.clamp(1, 6) - 1) as u32).min(60))
}

/// Processes one message with `runner`; returns the runner and what became of it.
pub async fn process(ctx: &JobCtx, msg: jetstream::Message, runner: Runner) -> RunnerFate {
    let delivered = msg.info().map(|i| i.delivered).unwrap_or(1);
    let last_delivery =
        ctx.cfg.consumer_max_deliver > 0 && delivered >= ctx.cfg.consumer_max_deliver;
    let job = match decode_job(&msg.payload) {
        Ok(j) => j,
        Err(inv) => {
            invalid_job(ctx, &msg, inv, delivered).await;
            return RunnerFate::Reusable(runner);
        }
    };
    // Changes of the run's key, subscribed before anything is read or written, so a cancel
    // landing at any point is seen. A plain subscription on the KV subject: no JetStream
    // consumer per run.
    let key_subject = format!("$KV.{}.{}", ctx.res.names.runs_bucket, job.run_id);
    let mut key_changes = ctx.res.js.client().subscribe(key_subject).await.ok();

    let mut state = RunState::from_job(&job, &ctx.worker_id);
    state.start_time = Some(now());
    if job.workflow_yaml.is_some() && job.flow_name.is_empty() {
        state.flow_name = "main".into();
    }
    let mut writer = snapshot::Writer::new(ctx.res.runs.clone(), ctx.limits);

    // One read decides: already over (finished, or cancelled while pending) → not run again;
    // a cancel requested before it started (the original gateway marks a PENDING run
    // CANCELLING and leaves it to the worker) → CANCELLED without running anything.
    match ctx.res.runs.entry(&job.run_id).await {
        Ok(Some(e)) if e.operation == async_nats::jetstream::kv::Operation::Put => {
            if let Ok(stored) = serde_json::from_slice::<Doc>(&e.value) {
                let status = str_field(&stored, "status").unwrap_or("").to_string();
                if run_status::is_terminal(&status) {
                    tracing::info!(run_id = %job.run_id, status = %status, "run already finished; acknowledging the job without running it");
                    let _ = msg.double_ack().await;
                    return RunnerFate::Reusable(runner);
                }
                let cancelled_early = cancel_requested(&stored);
                writer.seed(e.revision, stored);
                if cancelled_early {
                    state.status = run_status::CANCELLED.into();
                    state.start_time = None;
                    state.end_time = Some(now());
                    return match writer.write(&state, true).await {
                        Ok(_) | Err(WriteError::Terminal(_)) => {
                            tracing::info!(run_id = %job.run_id, "run was cancelled before it started; not running it");
                            let _ = msg.double_ack().await;
                            RunnerFate::Reusable(runner)
                        }
                        Err(e) => {
                            retry_later(
                                ctx,
                                &msg,
                                &job,
                                &mut state,
                                delivered,
                                last_delivery,
                                &e.to_string(),
                                runner,
                            )
                            .await
                        }
                    };
                }
            }
        }
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(run_id = %job.run_id, error = %e, err_id = "ERR-PYOCO-0003", "reading the run failed; job put back");
            let _ = msg.ack_with(AckKind::Nak(Some(nak_delay(delivered)))).await;
            return RunnerFate::Reusable(runner);
        }
    }

    match writer.write(&state, true).await {
        Ok(_) => {}
        Err(WriteError::Terminal(stored)) => {
            tracing::info!(run_id = %job.run_id, status = str_field(&stored, "status").unwrap_or(""), "run finished before pickup; acknowledging without running");
            let _ = msg.double_ack().await;
            return RunnerFate::Reusable(runner);
        }
        Err(e) => {
            return retry_later(
                ctx,
                &msg,
                &job,
                &mut state,
                delivered,
                last_delivery,
                &e.to_string(),
                runner,
            )
            .await;
        }
    }
    ctx.registry.run_started(&job.run_id).await;
    tracing::info!(run_id = %job.run_id, flow_name = %job.flow_name, tag = %job.tag, worker_id = %ctx.worker_id, delivered, "run started");

    let (fin, runner, runner_ok) = execute(
        ctx,
        &msg,
        &job,
        &mut state,
        &mut writer,
        runner,
        &mut key_changes,
    )
    .await;
    let Some(fin) = fin else {
        // Drained: put back for another worker.
        return requeue(ctx, &msg, &mut state, runner).await;
    };

    // Terminal snapshot first, then the DLQ entry, then ACK.
    state.status = fin.status.clone();
    state.error = fin.error.clone();
    state.end_time = Some(fin.end_time);
    if let Some(n) = &fin.flow_name {
        state.flow_name = n.clone();
    }
    if let Some(t) = fin.tasks.clone() {
        state.tasks = t;
    }
    if let Some(r) = fin.task_records.clone() {
        state.task_records = r;
    }
    let mut written = false;
    for attempt in 0..5u64 {
        match writer.write(&state, true).await {
            Ok(_) => {
                written = true;
                break;
            }
            Err(WriteError::Terminal(stored)) => {
                // Someone else ended it (e.g. another worker after a redelivery): theirs stands.
                tracing::warn!(run_id = %job.run_id, status = str_field(&stored, "status").unwrap_or(""), "run was already terminal at our final write; kept");
                written = true;
                break;
            }
            Err(e) => {
                tracing::warn!(run_id = %job.run_id, error = %e, err_id = "ERR-PYOCO-0003", attempt, "terminal snapshot write failed; retrying");
                tokio::time::sleep(Duration::from_millis(200 * (attempt + 1))).await;
            }
        }
    }
    if !written {
        return retry_later(
            ctx,
            &msg,
            &job,
            &mut state,
            delivered,
            last_delivery,
            "terminal snapshot could not be written",
            runner,
        )
        .await;
    }
    match fin.error_kind.as_deref() {
        Some("flow_not_found") => {
            dlq::publish_run(
                ctx,
                "flow_not_found",
                fin.error.as_deref().unwrap_or(""),
                &job,
            )
            .await
        }
        Some("execution_error") if ctx.cfg.dlq_publish_execution_error => {
            dlq::publish_run(
                ctx,
                "execution_error",
                fin.error.as_deref().unwrap_or(""),
                &job,
            )
            .await
        }
        _ => {}
    }
    if let Err(e) = msg.double_ack().await {
        tracing::warn!(run_id = %job.run_id, error = %e, "ACK failed; the job may be delivered again (its run is terminal, so it will not run again)");
    }
    ctx.registry.run_finished(&job.run_id, &fin.status).await;
    tracing::info!(run_id = %job.run_id, status = %fin.status, error = fin.error.as_deref().unwrap_or(""), "run finished");
    *runner.current.lock().unwrap() = None;
    if runner_ok {
        RunnerFate::Reusable(runner)
    } else {
        RunnerFate::Replace(runner)
    }
}

/// Runs the job in the runner until it ends, is killed, or the worker drains (`None`).
/// Returns the outcome, the runner, and whether the runner is still usable.
async fn execute(
    ctx: &JobCtx,
    msg: &jetstream::Message,
    job: &Job,
    state: &mut RunState,
    writer: &mut snapshot::Writer,
    mut runner: Runner,
    key_changes: &mut Option<async_nats::Subscriber>,
) -> (Option<Final>, Runner, bool) {
    *runner.current.lock().unwrap() = Some(job.run_id.clone());
    // A flow.yaml job is checked again with the policy (as the original worker does).
    if let Some(yaml) = &job.workflow_yaml {
        if let Err(e) = flow_yaml::parse_workflow_yaml(yaml.as_bytes(), true) {
            return (
                Some(Final::failed(e.to_string(), "build_error")),
                runner,
                true,
            );
        }
    }
    let request = json!({
        "type": "run", "run_id": job.run_id, "flow_name": state.flow_name,
        "params": Value::Object(job.params.clone()), "workflow_yaml": job.workflow_yaml,
    });
    if let Err(e) = runner.send(&request).await {
        let text = runner.exit_text().await;
        return (
            Some(Final::failed(
                format!("runner_exited: {text} ({e})"),
                "runner_exited",
            )),
            runner,
            false,
        );
    }

    let t0 = Instant::now();
    let flush_every = Duration::from_millis(250);
    let heartbeat_every = Duration::from_secs_f64(ctx.cfg.run_heartbeat_interval_sec.max(0.1));
    let ack_wait = ctx.cfg.consumer_ack_wait_sec.max(1.0);
    let mut progress_every = ctx.cfg.ack_progress_interval_sec;
    if progress_every <= 0.0 || progress_every >= ack_wait {
        progress_every = (ack_wait / 2.0).max(0.5);
    }
    let progress_every = Duration::from_secs_f64(progress_every);
    let timeout_deadline = job
        .timeout_sec
        .map(Duration::from_secs_f64)
        .or(ctx.run_timeout)
        .map(|d| t0 + d);
    let far = t0 + Duration::from_secs(10 * 365 * 24 * 3600);

    let mut dirty = false;
    let mut last_flush = Instant::now() - flush_every;
    let mut next_heartbeat = Instant::now() + heartbeat_every;
    let mut next_progress = Instant::now() + progress_every;
    let mut cancel_kill_at: Option<Instant> = None;
    let mut cancel_sent = false;
    let mut drain = ctx.drain.clone();

    loop {
        let flush_at = if dirty { last_flush + flush_every } else { far };
        let drain_at = drain.borrow().unwrap_or(far);
        tokio::select! {
            ev = runner.next_event() => match ev {
                RunnerEvent::Message(m) => {
                    match m["type"].as_str().unwrap_or("") {
                        "run_started" => {
                            if let Some(n) = m["flow_name"].as_str() { state.flow_name = n.to_string(); }
                            if let Some(names) = m["tasks"].as_array() {
                                for n in names.iter().filter_map(Value::as_str) {
                                    state.tasks.entry(n.to_string()).or_insert(json!("PENDING"));
                                }
                            }
                            dirty = true;
                        }
                        "task" => {
                            apply_task_event(state, &m);
                            dirty = true;
                        }
                        "log" => {
                            tracing::info!(run_id = %job.run_id, task = m["task"].as_str().unwrap_or(""), stream = "task", "{}", crate::runner::truncate(m["text"].as_str().unwrap_or(""), 8192));
                        }
                        "run_finished" if m["run_id"] == json!(job.run_id) => {
                            return (Some(final_from(&m)), runner, true);
                        }
                        "error" => tracing::warn!(run_id = %job.run_id, message = %m, "runner reported an error"),
                        _ => {}
                    }
                }
                RunnerEvent::Exited => {
                    let text = runner.exit_text().await;
                    tracing::error!(run_id = %job.run_id, err_id = "ERR-PYOCO-0007", "runner exited during the run ({text})");
                    let mut f = Final::failed(format!("runner_exited: {text}"), "runner_exited");
                    f.tasks = Some(end_open_tasks(&state.tasks, "FAILED"));
                    return (Some(f), runner, false);
                }
            },
            _ = tokio::time::sleep_until(flush_at) => {
                if let Ok(stored) = writer.write(state, true).await {
                    if cancel_requested(&stored) && !cancel_sent {
                        send_cancel(&mut runner, job, &mut cancel_sent, &mut cancel_kill_at, ctx.cancel_kill_after).await;
                    }
                }
                dirty = false;
                last_flush = Instant::now();
            }
            _ = tokio::time::sleep_until(next_heartbeat) => {
                let _ = writer.write(state, false).await;
                next_heartbeat = Instant::now() + heartbeat_every;
            }
            _ = tokio::time::sleep_until(next_progress) => {
                let _ = msg.ack_with(AckKind::Progress).await;
                next_progress = Instant::now() + progress_every;
            }
            Some(change) = next_change(key_changes) => {
                // A put carries the whole snapshot; deletes and purges carry none.
                if let Ok(stored) = serde_json::from_slice::<Doc>(&change.payload) {
                    if cancel_requested(&stored) && !cancel_sent {
                        send_cancel(&mut runner, job, &mut cancel_sent, &mut cancel_kill_at, ctx.cancel_kill_after).await;
                    }
                }
            }
            _ = tokio::time::sleep_until(cancel_kill_at.unwrap_or(far)) => {
                tracing::warn!(run_id = %job.run_id, err_id = "ERR-PYOCO-0021", "run still running after the cancel grace period; killing its runner");
                runner.kill(Duration::from_secs(2)).await;
                let f = Final {
                    status: run_status::CANCELLED.into(),
                    error: Some("runner_killed_after_cancel_grace".into()),
                    error_kind: Some("cancel_killed".into()),
                    tasks: Some(end_open_tasks(&state.tasks, "CANCELLED")),
                    task_records: None,
                    end_time: now(),
                    flow_name: None,
                };
                return (Some(f), runner, false);
            }
            _ = tokio::time::sleep_until(timeout_deadline.unwrap_or(far)) => {
                tracing::warn!(run_id = %job.run_id, "run timed out; killing its runner");
                runner.kill(Duration::from_secs(2)).await;
                let mut f = Final::failed("timeout".into(), "timeout");
                f.tasks = Some(end_open_tasks(&state.tasks, "CANCELLED"));
                return (Some(f), runner, false);
            }
            _ = tokio::time::sleep_until(drain_at) => {
                tracing::warn!(run_id = %job.run_id, "drain timeout reached; stopping the run and putting it back in the queue");
                runner.kill(Duration::from_secs(2)).await;
                return (None, runner, false);
            }
            _ = drain.changed() => {}
        }
    }
}

async fn next_change(sub: &mut Option<async_nats::Subscriber>) -> Option<async_nats::Message> {
    match sub {
        Some(s) => s.next().await,
        None => std::future::pending().await,
    }
}

async fn send_cancel(
    runner: &mut Runner,
    job: &Job,
    sent: &mut bool,
    kill_at: &mut Option<Instant>,
    after: Duration,
) {
    *sent = true;
    tracing::info!(run_id = %job.run_id, "cancel requested; telling the runner");
    let _ = runner
        .send(&json!({"type": "cancel", "run_id": job.run_id}))
        .await;
    if !after.is_zero() {
        *kill_at = Some(Instant::now() + after);
    }
}

/// Running and pending tasks become `to` (the runner is gone, they will never finish).
fn end_open_tasks(tasks: &Map<String, Value>, to: &str) -> Map<String, Value> {
    tasks
        .iter()
        .map(|(k, v)| {
            let open = matches!(v.as_str(), Some("RUNNING") | Some("PENDING"));
            (k.clone(), if open { json!(to) } else { v.clone() })
        })
        .collect()
}

/// Interim task records from the events; the runner's `run_finished` has the final ones.
fn apply_task_event(state: &mut RunState, m: &Value) {
    let Some(task) = m["task"].as_str() else {
        return;
    };
    let st = m["state"].as_str().unwrap_or("PENDING");
    let ts = m["ts"].as_f64().unwrap_or_else(now);
    state.tasks.insert(task.to_string(), json!(st));
    let rec = state
        .task_records
        .entry(task.to_string())
        .or_insert_with(|| json!({"state": "PENDING", "started_at": null, "ended_at": null, "duration_ms": null, "error": null, "traceback": null, "inputs": {}, "output": null, "artifacts": {}}));
    rec["state"] = json!(st);
    match st {
        "RUNNING" => rec["started_at"] = json!(ts),
        "SUCCEEDED" | "FAILED" | "CANCELLED" => {
            rec["ended_at"] = json!(ts);
            if let Some(d) = m.get("duration_ms") {
                rec["duration_ms"] = d.clone();
            }
            if let Some(e) = m.get("error").filter(|e| e.is_string()) {
                rec["error"] = e.clone();
                state.error = e.as_str().map(str::to_string);
            }
        }
        _ => {}
    }
}

fn final_from(m: &Value) -> Final {
    let obj = |k: &str| m.get(k).and_then(Value::as_object).cloned();
    Final {
        status: m["status"]
            .as_str()
            .unwrap_or(run_status::FAILED)
            .to_string(),
        error: m["error"].as_str().map(str::to_string),
        error_kind: m["error_kind"].as_str().map(str::to_string),
        tasks: obj("tasks"),
        task_records: obj("task_records"),
        end_time: m["end_time"].as_f64().unwrap_or_else(now),
        flow_name: m["flow_name"].as_str().map(str::to_string),
    }
}

/// A transient failure: NAK with a growing delay, or on the last allowed delivery end the run
/// FAILED and dead-letter it, so it never stays RUNNING.
#[allow(clippy::too_many_arguments)]
async fn retry_later(
    ctx: &JobCtx,
    msg: &jetstream::Message,
    job: &Job,
    state: &mut RunState,
    delivered: i64,
    last: bool,
    why: &str,
    runner: Runner,
) -> RunnerFate {
    if last {
        let error = format!(
            "max_deliver_exceeded: delivery {delivered} of {} failed: {why}",
            ctx.cfg.consumer_max_deliver
        );
        state.status = run_status::FAILED.into();
        state.error = Some(error.clone());
        state.end_time = Some(now());
        let _ = snapshot::write(&ctx.res.runs, state, true, ctx.limits).await;
        dlq::publish_raw(ctx, &state.tag, "max_deliver_exceeded", &error, json!({"run_id": state.run_id, "flow_name": state.flow_name, "tag": state.tag, "tags": state.tags, "tenant_id": state.tenant_id, "api_key_id": state.api_key_id, "worker_id": ctx.worker_id, "num_delivered": delivered, "job": job.to_doc()})).await;
        let _ = msg.ack_with(AckKind::Term).await;
        tracing::error!(run_id = %state.run_id, err_id = "ERR-PYOCO-0003", "last delivery failed; run FAILED and dead-lettered: {why}");
    } else {
        let delay = nak_delay(delivered);
        tracing::warn!(run_id = %state.run_id, err_id = "ERR-PYOCO-0003", delay_sec = delay.as_secs(), "transient failure, job put back: {why}");
        let _ = msg.ack_with(AckKind::Nak(Some(delay))).await;
    }
    ctx.registry
        .run_finished(
            &state.run_id,
            if last { run_status::FAILED } else { "RETRY" },
        )
        .await;
    RunnerFate::Reusable(runner)
}

/// Drain: the run goes back to PENDING with a note and the job to the queue for another worker.
async fn requeue(
    ctx: &JobCtx,
    msg: &jetstream::Message,
    state: &mut RunState,
    runner: Runner,
) -> RunnerFate {
    state.status = run_status::PENDING.into();
    state.tasks.clear();
    state.task_records.clear();
    state.start_time = None;
    state.end_time = None;
    state.note = Some(format!(
        "requeued: worker {} stopped before the run finished",
        ctx.worker_id
    ));
    let _ = snapshot::write(&ctx.res.runs, state, true, ctx.limits).await;
    let _ = msg.ack_with(AckKind::Nak(None)).await;
    ctx.registry.run_finished(&state.run_id, "REQUEUED").await;
    tracing::warn!(run_id = %state.run_id, "run put back in the queue for another worker");
    RunnerFate::Replace(runner)
}

/// An undecodable job: dead-letter it, terminate it, and fail its run if the id is known.
async fn invalid_job(ctx: &JobCtx, msg: &jetstream::Message, inv: InvalidJob, delivered: i64) {
    let subject = msg.subject.to_string();
    let tag = subject.rsplit('.').next().unwrap_or("").to_string();
    tracing::error!(err_id = "ERR-PYOCO-0012", subject = %subject, reason = %inv.reason, "invalid job");
    let raw = String::from_utf8_lossy(&msg.payload[..msg.payload.len().min(4096)]).into_owned();
    dlq::publish_raw(ctx, &tag, "invalid_job", &inv.reason, json!({"subject": subject, "worker_id": ctx.worker_id, "num_delivered": delivered, "payload": raw})).await;
    if let Some(run_id) = inv.run_id {
        // Keep what the gateway stored (flow name, params, tenant): merge, don't replace.
        let stored = ctx
            .res
            .runs
            .get(&run_id)
            .await
            .ok()
            .flatten()
            .and_then(|b| serde_json::from_slice::<Doc>(&b).ok())
            .unwrap_or_default();
        let field = |k: &str| stored.get(k).cloned().unwrap_or(Value::Null);
        let job = Job {
            run_id,
            flow_name: str_field(&stored, "flow_name").unwrap_or("").to_string(),
            tag: str_field(&stored, "tag").unwrap_or(&tag).to_string(),
            tags: vec![str_field(&stored, "tag").unwrap_or(&tag).to_string()],
            tenant_id: field("tenant_id"),
            api_key_id: field("api_key_id"),
            params: stored
                .get("params")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default(),
            workflow_yaml: None,
            workflow_yaml_sha256: field("workflow_yaml_sha256"),
            workflow_yaml_bytes: field("workflow_yaml_bytes"),
            timeout_sec: None,
        };
        let mut state = RunState::from_job(&job, &ctx.worker_id);
        state.status = run_status::FAILED.into();
        state.end_time = Some(now());
        state.error = Some(format!("invalid_job: {}", inv.reason));
        let _ = snapshot::write(&ctx.res.runs, &state, true, ctx.limits).await;
    }
    let _ = msg.ack_with(AckKind::Term).await;
}

/// JetStream's max-deliveries advisory: a job was delivered `PYOCO_CONSUMER_MAX_DELIVER` times
/// without being acknowledged (e.g. its worker was killed on the last delivery) and will not be
/// delivered again. Its run must not stay RUNNING: it ends FAILED and dead-lettered, and the
/// message leaves the work queue. Advisories go to one worker of the queue group; the
/// compare-and-set write and the DLQ message id make a repeat harmless anyway.
pub async fn on_max_deliveries(ctx: &JobCtx, advisory: &[u8]) {
    let Ok(adv) = serde_json::from_slice::<Value>(advisory) else {
        return;
    };
    let (Some(seq), deliveries) = (
        adv["stream_seq"].as_u64(),
        adv["deliveries"].as_i64().unwrap_or(0),
    ) else {
        return;
    };
    let stream = match ctx.res.js.get_stream(&ctx.res.names.work_stream).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "max-deliveries advisory: cannot open the work stream");
            return;
        }
    };
    let Ok(raw) = stream.get_raw_message(seq).await else {
        return;
    };
    let subject = raw.subject.to_string();
    let tag = subject.rsplit('.').next().unwrap_or("").to_string();
    let error =
        format!("max_deliver_exceeded: the job was delivered {deliveries} times without finishing");
    match decode_job(&raw.payload) {
        Ok(job) => {
            let stored = ctx
                .res
                .runs
                .get(&job.run_id)
                .await
                .ok()
                .flatten()
                .and_then(|b| serde_json::from_slice::<Doc>(&b).ok());
            let mut state = RunState::from_job(&job, &ctx.worker_id);
            state.status = run_status::FAILED.into();
            state.end_time = Some(now());
            state.error = Some(error.clone());
            if let Some(s) = &stored {
                // Keep what the last attempt recorded; open tasks can no longer finish.
                if let Some(Value::Object(t)) = s.get("tasks") {
                    state.tasks = end_open_tasks(t, "FAILED");
                }
                if let Some(Value::Object(r)) = s.get("task_records") {
                    state.task_records = r.clone();
                }
                state.start_time = f64_field(s, "start_time");
                if let Some(w) = str_field(s, "worker_id") {
                    state.worker_id = w.to_string();
                }
            }
            match snapshot::write(&ctx.res.runs, &state, true, ctx.limits).await {
                Ok(_) => {
                    tracing::error!(run_id = %job.run_id, err_id = "ERR-PYOCO-0007", deliveries, "job exhausted its deliveries; run FAILED and dead-lettered");
                    let payload = json!({"run_id": job.run_id, "flow_name": job.flow_name, "tag": job.tag, "tags": job.tags,
                        "tenant_id": job.tenant_id, "api_key_id": job.api_key_id, "worker_id": ctx.worker_id, "num_delivered": deliveries,
                        "job": job.to_doc()});
                    // One letter per lost message (its stream sequence), however many workers see the advisory.
                    dlq::publish_raw_with_id(
                        ctx,
                        &job.tag,
                        "max_deliver_exceeded",
                        &error,
                        payload,
                        Some(&format!("max-deliver-{}-{seq}", job.run_id)),
                    )
                    .await;
                }
                Err(WriteError::Terminal(_)) => {}
                Err(e) => {
                    tracing::warn!(run_id = %job.run_id, error = %e, "max-deliveries advisory: could not fail the run");
                    return;
                }
            }
        }
        Err(inv) => {
            dlq::publish_raw(ctx, &tag, "invalid_job", &inv.reason, json!({"subject": subject, "worker_id": ctx.worker_id, "num_delivered": deliveries})).await;
        }
    }
    let _ = stream.delete_message(seq).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_like_the_original() {
        let j = decode_job(br#"{"run_id":"r","flow_name":"f"}"#).unwrap();
        assert_eq!(
            (j.tag.as_str(), j.tags.clone(), j.params.len()),
            ("default", vec!["default".to_string()], 0)
        );
        let j = decode_job(br#"{"run_id":"r","flow_name":"f","tag":"a","tags":["x"],"submitted_at":"1.5","timeout_sec":2}"#).unwrap();
        assert_eq!(
            (j.tag.as_str(), j.tags.clone(), j.timeout_sec),
            ("a", vec!["x".to_string()], Some(2.0))
        );
    }

    #[test]
    fn invalid_jobs_say_why_and_keep_the_run_id_when_known() {
        let e = decode_job(b"nope").unwrap_err();
        assert!(e.reason.starts_with("job is not JSON") && e.run_id.is_none());
        let e = decode_job(br#"{"flow_name":"f"}"#).unwrap_err();
        assert_eq!(e.reason, "missing run_id");
        let e = decode_job(br#"{"run_id":"r","flow_name":"f","params":[1]}"#).unwrap_err();
        assert_eq!(
            (e.reason.as_str(), e.run_id.as_deref()),
            ("params is not an object", Some("r"))
        );
        let e = decode_job(br#"{"run_id":"r","flow_name":"f","submitted_at":"soon"}"#).unwrap_err();
        assert_eq!(e.reason, "submitted_at is not a number");
        assert!(decode_job(br#"{"run_id":"a b","flow_name":"f"}"#).is_err());
    }

    #[test]
    fn nak_delay_grows_and_is_capped() {
        assert_eq!(nak_delay(1), Duration::from_secs(2));
        assert_eq!(nak_delay(2), Duration::from_secs(4));
        assert_eq!(nak_delay(20), Duration::from_secs(60));
    }
}
