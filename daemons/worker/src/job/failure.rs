//! The paths where a job does not simply run: NAK with backoff, the last delivery ending FAILED
//! and dead-lettered, drain requeue, undecodable jobs, and max-deliveries advisories.

use pyoco_core::wire::fields;
use pyoco_core::wire::DeadLetter;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind};
use pyoco_core::time::now;
use pyoco_core::wire::{f64_field, run_status, str_field, Doc};
use serde_json::{json, Value};

use super::dlq;
use super::{decode_job, end_open_tasks, InvalidJob, Job, JobCtx, RunnerFate};
use crate::runner::Runner;
use crate::snapshot::{self, RunState, WriteError};

pub(super) fn nak_delay(delivered: i64) -> Duration {
    // 2 s, 4 s, 8 s … capped at a minute: a NATS hiccup is retried soon, an outage not in a loop.
    Duration::from_secs((2u64 << (delivered.clamp(1, 6) - 1) as u32).min(60))
}

/// A transient failure: NAK with a growing delay, or on the last allowed delivery end the run
/// FAILED and dead-letter it, so it never stays RUNNING.
#[allow(clippy::too_many_arguments)]
pub(super) async fn retry_later(
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
            ctx.settings.cfg.consumer_max_deliver
        );
        state.status = run_status::FAILED.into();
        state.error = Some(error.clone());
        state.end_time = Some(now());
        let _ = snapshot::write(&ctx.res.runs, state, true, ctx.limits).await;
        // The run as this worker has it (a resolved flow name), and the job as it came.
        let letter = DeadLetter {
            run_id: Some(json!(state.run_id)),
            flow_name: Some(json!(state.flow_name)),
            tag: Some(json!(state.tag)),
            tags: Some(json!(state.tags)),
            tenant_id: Some(json!(state.tenant_id)),
            api_key_id: Some(json!(state.api_key_id)),
            worker_id: Some(json!(ctx.worker_id)),
            num_delivered: Some(json!(delivered)),
            job: Some(job.to_doc()),
            ..DeadLetter::new("max_deliver_exceeded", &error, now())
        };
        dlq::publish(ctx, &state.tag, &letter, None).await;
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
pub(super) async fn requeue(
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
pub(super) async fn invalid_job(
    ctx: &JobCtx,
    msg: &jetstream::Message,
    inv: InvalidJob,
    delivered: i64,
) {
    let subject = msg.subject.to_string();
    let tag = subject.rsplit('.').next().unwrap_or("").to_string();
    tracing::error!(err_id = "ERR-PYOCO-0012", subject = %subject, reason = %inv.reason, "invalid job");
    let raw = String::from_utf8_lossy(&msg.payload[..msg.payload.len().min(4096)]).into_owned();
    let letter = DeadLetter {
        payload: Some(json!(raw)),
        ..dlq::for_invalid(ctx, &inv.reason, &subject, delivered)
    };
    dlq::publish(ctx, &tag, &letter, None).await;
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
            flow_name: str_field(&stored, fields::run::FLOW_NAME)
                .unwrap_or("")
                .to_string(),
            tag: str_field(&stored, fields::run::TAG)
                .unwrap_or(&tag)
                .to_string(),
            tags: vec![str_field(&stored, fields::run::TAG)
                .unwrap_or(&tag)
                .to_string()],
            tenant_id: field(fields::run::TENANT_ID),
            api_key_id: field(fields::run::API_KEY_ID),
            params: stored
                .get(fields::run::PARAMS)
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default(),
            workflow_yaml: None,
            workflow_yaml_sha256: field(fields::run::WORKFLOW_YAML_SHA256),
            workflow_yaml_bytes: field(fields::run::WORKFLOW_YAML_BYTES),
            timeout_sec: None,
        };
        let mut state = job.run_state(&ctx.worker_id);
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
    // The advisory fires once: a transient NATS error must not leave the run RUNNING and the
    // message queued forever, so the whole handling is retried (each step is idempotent: a
    // terminal run is not rewritten, the letter carries a message id, a gone message is done).
    let mut backoff = Duration::from_millis(500);
    for attempt in 1..=MAX_DELIVERIES_ATTEMPTS {
        match handle_max_deliveries(ctx, advisory).await {
            Ok(()) => return,
            Err(reason) if attempt < MAX_DELIVERIES_ATTEMPTS => {
                tracing::warn!(attempt, reason = %reason, retry_in_ms = backoff.as_millis() as u64, "max-deliveries advisory: not done yet; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
            Err(reason) => {
                tracing::error!(err_id = "ERR-PYOCO-0007", attempts = attempt, reason = %reason, "max-deliveries advisory: giving up; the run may stay RUNNING (pyococtl dlq / the run's cancel can end it)");
            }
        }
    }
}

/// How often the handling of one max-deliveries advisory is tried (≈ 2.5 min in all).
const MAX_DELIVERIES_ATTEMPTS: u32 = 20;

/// One attempt: the run FAILED, the letter published, the message deleted. `Err` = try again.
async fn handle_max_deliveries(ctx: &JobCtx, advisory: &[u8]) -> Result<(), String> {
    let Ok(adv) = serde_json::from_slice::<Value>(advisory) else {
        return Ok(());
    };
    let (Some(seq), deliveries) = (
        adv["stream_seq"].as_u64(),
        adv["deliveries"].as_i64().unwrap_or(0),
    ) else {
        return Ok(());
    };
    let stream = ctx
        .res
        .js
        .get_stream(&ctx.res.names.work_stream)
        .await
        .map_err(|e| format!("cannot open the work stream: {e}"))?;
    let raw = match stream.get_raw_message(seq).await {
        Ok(raw) => raw,
        // Gone: another worker of the group (or a previous attempt) finished the job.
        Err(e)
            if e.kind() == async_nats::jetstream::stream::RawMessageErrorKind::NoMessageFound =>
        {
            return Ok(())
        }
        Err(e) => return Err(format!("cannot read message {seq}: {e}")),
    };
    let subject = raw.subject.to_string();
    let tag = subject.rsplit('.').next().unwrap_or("").to_string();
    let error =
        format!("max_deliver_exceeded: the job was delivered {deliveries} times without finishing");
    match decode_job(&raw.payload) {
        Ok(job) => {
            let stored = match ctx.res.runs.get(&job.run_id).await {
                Ok(b) => b.and_then(|b| serde_json::from_slice::<Doc>(&b).ok()),
                Err(e) => return Err(format!("cannot read run {}: {e}", job.run_id)),
            };
            let mut state = job.run_state(&ctx.worker_id);
            state.status = run_status::FAILED.into();
            state.end_time = Some(now());
            state.error = Some(error.clone());
            if let Some(s) = &stored {
                // Keep what the last attempt recorded; open tasks can no longer finish.
                if let Some(Value::Object(t)) = s.get(fields::run::TASKS) {
                    state.tasks = end_open_tasks(t, "FAILED");
                }
                if let Some(Value::Object(r)) = s.get(fields::run::TASK_RECORDS) {
                    state.task_records = r.clone();
                }
                state.start_time = f64_field(s, fields::run::START_TIME);
                if let Some(w) = str_field(s, fields::run::WORKER_ID) {
                    state.worker_id = w.to_string();
                }
                // A verdict on the message, not a new execution: written as the last attempt,
                // so fencing (which refuses writes over a live execution) lets it through.
                if let Some(a) = str_field(s, fields::run::ATTEMPT_ID) {
                    state.attempt_id = a.to_string();
                }
            }
            // A previous attempt may have failed the run already and then stumbled: its letter
            // is still owed. A run that ended on its own gets none.
            let failed_by_us_before = stored.as_ref().is_some_and(|s| {
                str_field(s, fields::run::STATUS) == Some(run_status::FAILED)
                    && str_field(s, fields::run::ERROR)
                        .is_some_and(|e| e.starts_with("max_deliver_exceeded"))
            });
            let failed_now = match snapshot::write(&ctx.res.runs, &state, true, ctx.limits).await {
                Ok(_) => true,
                Err(WriteError::Terminal(_)) => false,
                Err(e) => return Err(format!("could not fail run {}: {e}", job.run_id)),
            };
            if failed_now || failed_by_us_before {
                let letter = DeadLetter {
                    num_delivered: Some(json!(deliveries)),
                    ..dlq::for_job(ctx, "max_deliver_exceeded", &error, &job)
                };
                // One letter per lost message (its stream sequence), however many workers see
                // the advisory and however often this is retried.
                let msg_id = format!("max-deliver-{}-{seq}", job.run_id);
                if !dlq::publish(ctx, &job.tag, &letter, Some(&msg_id)).await {
                    return Err("the dead letter could not be published".into());
                }
                if failed_now {
                    tracing::error!(run_id = %job.run_id, err_id = "ERR-PYOCO-0007", deliveries, "job exhausted its deliveries; run FAILED and dead-lettered");
                }
            }
        }
        Err(inv) => {
            let letter = dlq::for_invalid(ctx, &inv.reason, &subject, deliveries);
            let msg_id = format!("max-deliver-invalid-{seq}");
            if !dlq::publish(ctx, &tag, &letter, Some(&msg_id)).await {
                return Err("the dead letter could not be published".into());
            }
        }
    }
    match stream.delete_message(seq).await {
        Ok(_) => Ok(()),
        Err(e) if e.to_string().contains("no message found") => Ok(()),
        Err(e) => Err(format!("cannot delete message {seq}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nak_delay_grows_and_is_capped() {
        assert_eq!(nak_delay(1), Duration::from_secs(2));
        assert_eq!(nak_delay(2), Duration::from_secs(4));
        assert_eq!(nak_delay(20), Duration::from_secs(60));
    }
}
