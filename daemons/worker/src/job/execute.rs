//! The per-run orchestration: pick the job up, run it in a runner, follow its events, enforce
//! cancel, timeouts and drain, then write the terminal snapshot, dead-letter if due, and ACK.

use pyoco_core::wire::fields;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind};
use futures::StreamExt;
use pyoco_core::flow_yaml;
use pyoco_core::time::now;
use pyoco_core::wire::{run_status, str_field, Doc};
use serde_json::{json, Map, Value};
use tokio::time::Instant;

use super::dlq;
use super::failure::{invalid_job, nak_delay, requeue, retry_later};
use super::{decode_job, end_open_tasks, Job, JobCtx, RunnerFate};
use crate::protocol::{self, Event, Request};
use crate::runner::{Runner, RunnerEvent};
use crate::snapshot::{self, cancel_requested, RunState, WriteError};
use crate::text::truncate;

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

/// How `execute` left the run.
enum Outcome {
    Finished(Box<Final>),
    /// The worker is draining: put the job back for another worker.
    Drained,
    /// Another execution took the run over (this one went silent past the ack wait and was
    /// superseded): stop without writing or acknowledging.
    Fenced,
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

/// Processes one message with `runner`; returns the runner and what became of it.
pub async fn process(ctx: &JobCtx, msg: jetstream::Message, runner: Runner) -> RunnerFate {
    let delivered = msg.info().map(|i| i.delivered).unwrap_or(1);
    let last_delivery = ctx.settings.max_deliver.is_some_and(|max| delivered >= max);
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

    let mut state = job.run_state(&ctx.worker_id);
    state.start_time = Some(now());
    state.attempt_id = format!(
        "{}/{}/{}",
        ctx.worker_id,
        delivered,
        (now() * 1000.0) as u64
    );
    if job.workflow_yaml.is_some() && job.flow_name.is_empty() {
        state.flow_name = "main".into();
    }
    let stale_after = stale_after(ctx);
    let mut writer =
        snapshot::Writer::new(ctx.res.runs.clone(), ctx.limits).stale_after(stale_after);

    // One read decides: already over (finished, or cancelled while pending) → not run again;
    // a cancel requested before it started (the original gateway marks a PENDING run
    // CANCELLING and leaves it to the worker) → CANCELLED without running anything.
    match ctx.res.runs.entry(&job.run_id).await {
        Ok(Some(e)) if e.operation == async_nats::jetstream::kv::Operation::Put => {
            if let Ok(stored) = serde_json::from_slice::<Doc>(&e.value) {
                let status = str_field(&stored, fields::run::STATUS)
                    .unwrap_or("")
                    .to_string();
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
                    let mut written = writer.write(&state, true).await;
                    while let Err(WriteError::Busy(other)) | Err(WriteError::Fenced(other)) =
                        &written
                    {
                        // A live execution has it: that one answers the cancel.
                        match wait_out_other(ctx, &msg, &job, other, stale_after, &mut key_changes)
                            .await
                        {
                            WaitEnd::Terminal => {
                                let _ = msg.double_ack().await;
                                return RunnerFate::Reusable(runner);
                            }
                            WaitEnd::Silent => written = writer.write(&state, true).await,
                            WaitEnd::Drained => {
                                let _ = msg.ack_with(AckKind::Nak(None)).await;
                                return RunnerFate::Reusable(runner);
                            }
                        }
                    }
                    return match written {
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

    // The claim: RUNNING under this attempt, unless another execution is live (then wait for
    // it to end or go silent, keeping this delivery alive so the job is never lost).
    loop {
        match writer.write(&state, true).await {
            Ok(_) => break,
            Err(WriteError::Terminal(stored)) => {
                tracing::info!(run_id = %job.run_id, status = str_field(&stored, fields::run::STATUS).unwrap_or(""), "run finished before pickup; acknowledging without running");
                let _ = msg.double_ack().await;
                return RunnerFate::Reusable(runner);
            }
            Err(WriteError::Busy(other)) | Err(WriteError::Fenced(other)) => {
                match wait_out_other(ctx, &msg, &job, &other, stale_after, &mut key_changes).await {
                    WaitEnd::Terminal => {
                        let _ = msg.double_ack().await;
                        return RunnerFate::Reusable(runner);
                    }
                    WaitEnd::Silent => continue,
                    WaitEnd::Drained => {
                        let _ = msg.ack_with(AckKind::Nak(None)).await;
                        return RunnerFate::Reusable(runner);
                    }
                }
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
    let fin = match fin {
        Outcome::Finished(f) => *f,
        // Drained: put back for another worker.
        Outcome::Drained => return requeue(ctx, &msg, &mut state, runner).await,
        Outcome::Fenced => {
            ctx.registry.run_finished(&job.run_id, "FENCED").await;
            *runner.current.lock().unwrap() = None;
            return RunnerFate::Replace(runner);
        }
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
                tracing::warn!(run_id = %job.run_id, status = str_field(&stored, fields::run::STATUS).unwrap_or(""), "run was already terminal at our final write; kept");
                written = true;
                break;
            }
            Err(WriteError::Fenced(other)) | Err(WriteError::Busy(other)) => {
                // Superseded while cut off: the other execution's result is the run's.
                let (_, runner, _) = fenced(&job, runner, &other).await;
                ctx.registry.run_finished(&job.run_id, "FENCED").await;
                *runner.current.lock().unwrap() = None;
                return RunnerFate::Replace(runner);
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
            .await;
        }
        Some("execution_error") if ctx.settings.cfg.dlq_publish_execution_error => {
            dlq::publish_run(
                ctx,
                "execution_error",
                fin.error.as_deref().unwrap_or(""),
                &job,
            )
            .await;
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
) -> (Outcome, Runner, bool) {
    *runner.current.lock().unwrap() = Some(job.run_id.clone());
    // A flow.yaml job is checked again with the policy (as the original worker does).
    if let Some(yaml) = &job.workflow_yaml {
        if let Err(e) = flow_yaml::parse_workflow_yaml(yaml.as_bytes(), true) {
            return (
                Outcome::Finished(Box::new(Final::failed(e.to_string(), "build_error"))),
                runner,
                true,
            );
        }
    }
    let request = Request::Run {
        run_id: job.run_id.clone(),
        flow_name: state.flow_name.clone(),
        params: job.params.clone(),
        workflow_yaml: job.workflow_yaml.clone(),
    };
    if let Err(e) = runner.send(&request).await {
        let text = runner.exit_text().await;
        return (
            Outcome::Finished(Box::new(Final::failed(
                format!("runner_exited: {text} ({e})"),
                "runner_exited",
            ))),
            runner,
            false,
        );
    }

    let t0 = Instant::now();
    let flush_every = Duration::from_millis(250);
    let heartbeat_every = ctx.settings.run_heartbeat;
    let progress_every = ctx.settings.ack_progress;
    let timeout_deadline = job
        .timeout_sec
        .map(Duration::from_secs_f64)
        .or(ctx.settings.run_timeout)
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
                RunnerEvent::Message(ev) => match ev {
                    Event::RunStarted { flow_name, tasks, .. } => {
                        if let Some(n) = flow_name { state.flow_name = n; }
                        for n in tasks.iter().filter_map(|t| t.as_str()) {
                            state.tasks.entry(n.to_string()).or_insert(json!("PENDING"));
                        }
                        dirty = true;
                    }
                    Event::Task { task, state: st, ts, duration_ms, error, .. } => {
                        apply_task_event(state, task, st, ts, duration_ms, error);
                        dirty = true;
                    }
                    Event::Log { task, text, .. } => {
                        tracing::info!(run_id = %job.run_id, task = task.as_deref().unwrap_or(""), stream = "task", "{}", truncate(text.as_deref().unwrap_or(""), 8192));
                    }
                    Event::RunFinished(f) if f.run_id.as_deref() == Some(job.run_id.as_str()) => {
                        return (Outcome::Finished(Box::new(Final::from_event(*f))), runner, true);
                    }
                    Event::Error { kind, message, run_id } => tracing::warn!(run_id = %job.run_id, kind = kind.as_deref().unwrap_or(""), message = message.as_deref().unwrap_or(""), for_run = run_id.as_deref().unwrap_or(""), "runner reported an error"),
                    _ => {}
                },
                RunnerEvent::Exited => {
                    let text = runner.exit_text().await;
                    tracing::error!(run_id = %job.run_id, err_id = "ERR-PYOCO-0007", "runner exited during the run ({text})");
                    let mut f = Final::failed(format!("runner_exited: {text}"), "runner_exited");
                    f.tasks = Some(end_open_tasks(&state.tasks, "FAILED"));
                    return (Outcome::Finished(Box::new(f)), runner, false);
                }
            },
            _ = tokio::time::sleep_until(flush_at) => {
                match writer.write(state, true).await {
                    Ok(stored) if cancel_requested(&stored) && !cancel_sent => {
                        send_cancel(&mut runner, job, &mut cancel_sent, &mut cancel_kill_at, ctx.settings.cancel_kill_after).await;
                    }
                    Err(WriteError::Fenced(other)) => return fenced(job, runner, &other).await,
                    _ => {}
                }
                dirty = false;
                last_flush = Instant::now();
            }
            _ = tokio::time::sleep_until(next_heartbeat) => {
                // A cancel written meanwhile makes this compare-and-set re-read and merge: the
                // merged snapshot shows it even when the key subscription missed it (reconnect).
                match writer.write(state, false).await {
                    Ok(stored) if cancel_requested(&stored) && !cancel_sent => {
                        send_cancel(&mut runner, job, &mut cancel_sent, &mut cancel_kill_at, ctx.settings.cancel_kill_after).await;
                    }
                    Err(WriteError::Fenced(other)) => return fenced(job, runner, &other).await,
                    _ => {}
                }
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
                        send_cancel(&mut runner, job, &mut cancel_sent, &mut cancel_kill_at, ctx.settings.cancel_kill_after).await;
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
                return (Outcome::Finished(Box::new(f)), runner, false);
            }
            _ = tokio::time::sleep_until(timeout_deadline.unwrap_or(far)) => {
                tracing::warn!(run_id = %job.run_id, "run timed out; killing its runner");
                runner.kill(Duration::from_secs(2)).await;
                let mut f = Final::failed("timeout".into(), "timeout");
                f.tasks = Some(end_open_tasks(&state.tasks, "CANCELLED"));
                return (Outcome::Finished(Box::new(f)), runner, false);
            }
            _ = tokio::time::sleep_until(drain_at) => {
                tracing::warn!(run_id = %job.run_id, "drain timeout reached; stopping the run and putting it back in the queue");
                runner.kill(Duration::from_secs(2)).await;
                return (Outcome::Drained, runner, false);
            }
            _ = drain.changed() => {}
        }
    }
}

/// This execution was superseded: its runner is killed (the task's side effects stop here) and
/// nothing more is written or acknowledged; the other execution owns the run.
async fn fenced(job: &Job, mut runner: Runner, other: &Doc) -> (Outcome, Runner, bool) {
    tracing::warn!(
        run_id = %job.run_id,
        err_id = "ERR-PYOCO-0003",
        other_attempt = str_field(other, fields::run::ATTEMPT_ID).unwrap_or(""),
        other_worker = str_field(other, fields::run::WORKER_ID).unwrap_or(""),
        "another execution took this run over while we were cut off; stopping ours without writing or acknowledging"
    );
    runner.kill(Duration::from_secs(2)).await;
    (Outcome::Fenced, runner, false)
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
        .send(&Request::Cancel {
            run_id: job.run_id.clone(),
        })
        .await;
    if !after.is_zero() {
        *kill_at = Some(Instant::now() + after);
    }
}

/// Interim task records from the events; the runner's `run_finished` has the final ones.
fn apply_task_event(
    state: &mut RunState,
    task: Option<String>,
    st: Option<String>,
    ts: Option<f64>,
    duration_ms: Option<Value>,
    error: Option<String>,
) {
    let Some(task) = task else {
        return;
    };
    let st = st.unwrap_or_else(|| "PENDING".into());
    let ts = ts.unwrap_or_else(now);
    state.tasks.insert(task.clone(), json!(st));
    let rec = state
        .task_records
        .entry(task)
        .or_insert_with(|| json!({"state": "PENDING", "started_at": null, "ended_at": null, "duration_ms": null, "error": null, "traceback": null, "inputs": {}, "output": null, "artifacts": {}}));
    rec["state"] = json!(st);
    match st.as_str() {
        "RUNNING" => rec["started_at"] = json!(ts),
        "SUCCEEDED" | "FAILED" | "CANCELLED" => {
            rec["ended_at"] = json!(ts);
            if let Some(d) = duration_ms {
                rec["duration_ms"] = d;
            }
            if let Some(e) = error {
                rec["error"] = json!(e);
                state.error = Some(e);
            }
        }
        _ => {}
    }
}

/// Another execution's heartbeat older than this means it is gone (killed, frozen, cut off):
/// three run heartbeats, at least 2 s.
fn stale_after(ctx: &JobCtx) -> f64 {
    (3.0 * ctx.settings.run_heartbeat.as_secs_f64()).max(2.0)
}

enum WaitEnd {
    /// The other execution ended the run.
    Terminal,
    /// It stopped heartbeating: claim again.
    Silent,
    /// This worker is draining.
    Drained,
}

/// Waits while another, live execution runs the job: this delivery is kept alive with
/// in-progress acks, so if that execution dies the job is still ours to run.
async fn wait_out_other(
    ctx: &JobCtx,
    msg: &jetstream::Message,
    job: &Job,
    other: &Doc,
    stale_after: f64,
    key_changes: &mut Option<async_nats::Subscriber>,
) -> WaitEnd {
    tracing::info!(
        run_id = %job.run_id,
        other_attempt = str_field(other, fields::run::ATTEMPT_ID).unwrap_or(""),
        other_worker = str_field(other, fields::run::WORKER_ID).unwrap_or(""),
        "the run is being executed by another live execution; waiting for it to end or go silent instead of running it twice"
    );
    let recheck = Duration::from_secs_f64((stale_after / 2.0).max(0.5));
    let mut next_check = Instant::now() + recheck;
    let mut next_progress = Instant::now() + ctx.settings.ack_progress;
    let mut drain = ctx.drain.clone();
    loop {
        if drain.borrow().is_some() {
            return WaitEnd::Drained;
        }
        tokio::select! {
            _ = tokio::time::sleep_until(next_progress) => {
                let _ = msg.ack_with(AckKind::Progress).await;
                next_progress = Instant::now() + ctx.settings.ack_progress;
            }
            _ = tokio::time::sleep_until(next_check) => {
                next_check = Instant::now() + recheck;
                match ctx.res.runs.get(&job.run_id).await {
                    Ok(Some(bytes)) => {
                        let Ok(stored) = serde_json::from_slice::<Doc>(&bytes) else { return WaitEnd::Silent };
                        if run_status::is_terminal(str_field(&stored, fields::run::STATUS).unwrap_or("")) {
                            return WaitEnd::Terminal;
                        }
                        if !snapshot::live_execution(&stored, now(), stale_after) {
                            return WaitEnd::Silent;
                        }
                    }
                    Ok(None) => return WaitEnd::Silent,
                    Err(e) => tracing::warn!(run_id = %job.run_id, error = %e, "reading the run while waiting failed; still waiting"),
                }
            }
            Some(change) = next_change(key_changes) => {
                if let Ok(stored) = serde_json::from_slice::<Doc>(&change.payload) {
                    if run_status::is_terminal(str_field(&stored, fields::run::STATUS).unwrap_or("")) {
                        return WaitEnd::Terminal;
                    }
                }
            }
            _ = drain.changed() => {}
        }
    }
}

impl Final {
    fn from_event(f: protocol::RunFinished) -> Final {
        Final {
            status: f.status.unwrap_or_else(|| run_status::FAILED.into()),
            error: f.error,
            error_kind: f.error_kind,
            tasks: f.tasks,
            task_records: f.task_records,
            end_time: f.end_time.unwrap_or_else(now),
            flow_name: f.flow_name,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_events_build_interim_records() {
        let job = decode_job(br#"{"run_id":"r","flow_name":"f"}"#).unwrap();
        let mut s = job.run_state("w");
        apply_task_event(
            &mut s,
            Some("a".into()),
            Some("RUNNING".into()),
            Some(1.0),
            None,
            None,
        );
        apply_task_event(
            &mut s,
            Some("a".into()),
            Some("FAILED".into()),
            Some(2.5),
            Some(json!(1500.0)),
            Some("boom".into()),
        );
        apply_task_event(&mut s, None, Some("RUNNING".into()), None, None, None);
        assert_eq!(
            s.tasks,
            serde_json::from_value::<Map<_, _>>(json!({"a": "FAILED"})).unwrap()
        );
        let r = &s.task_records["a"];
        assert_eq!(
            (
                r["started_at"].clone(),
                r["ended_at"].clone(),
                r["duration_ms"].clone(),
                r["error"].clone()
            ),
            (json!(1.0), json!(2.5), json!(1500.0), json!("boom"))
        );
        assert_eq!(
            s.error.as_deref(),
            Some("boom"),
            "the last task error is the run's error so far"
        );
    }

    #[test]
    fn a_run_finished_without_status_is_a_failure() {
        let Event::RunFinished(f) =
            Event::from_line(r#"{"type":"run_finished","run_id":"r","error":"x"}"#).unwrap()
        else {
            panic!()
        };
        let fin = Final::from_event(*f);
        assert_eq!(
            (fin.status.as_str(), fin.error.as_deref()),
            ("FAILED", Some("x"))
        );
        assert!(fin.end_time > 0.0);
    }
}
