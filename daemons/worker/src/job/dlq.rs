//! Dead letters (contract §2.6): [`DeadLetter`] on `pyoco.dlq.<tag>`.
//! Best-effort like the original: a failed publish is logged, never fatal.

use pyoco_core::time::now;
use pyoco_core::wire::DeadLetter;
use serde_json::json;

use super::{Job, JobCtx};

/// With a message id, a repeated publish (several workers handling one event) is stored once.
/// Publishes a dead letter; false (logged) when it could not be stored.
pub async fn publish(ctx: &JobCtx, tag: &str, letter: &DeadLetter, msg_id: Option<&str>) -> bool {
    let subject = ctx
        .res
        .names
        .dlq_subject(if tag.is_empty() { "unknown" } else { tag });
    let result = async {
        let mut publish = async_nats::jetstream::message::PublishMessage::build()
            .payload(letter.to_bytes().into());
        if let Some(id) = msg_id {
            publish = publish.message_id(id);
        }
        ctx.res
            .js
            .send_publish(subject.clone(), publish)
            .await?
            .await?;
        Ok::<_, async_nats::Error>(())
    }
    .await;
    match result {
        Ok(()) => true,
        Err(e) => {
            let reason = letter.reason().unwrap_or("");
            tracing::warn!(subject = %subject, reason, error = %e, "DLQ publish failed");
            false
        }
    }
}

/// The letter of a run's job: the original's fields, plus (ours) the whole job, so `pyococtl
/// dlq replay` can queue exactly what was submitted, flow.yaml included (the run snapshot does
/// not keep the YAML).
pub fn for_job(ctx: &JobCtx, reason: &str, error: &str, job: &Job) -> DeadLetter {
    DeadLetter {
        run_id: Some(json!(job.run_id)),
        flow_name: Some(json!(job.flow_name)),
        tag: Some(json!(job.tag)),
        tags: Some(json!(job.tags)),
        tenant_id: Some(job.tenant_id.clone()),
        api_key_id: Some(job.api_key_id.clone()),
        worker_id: Some(json!(ctx.worker_id)),
        job: Some(job.to_doc()),
        ..DeadLetter::new(reason, error, now())
    }
}

/// The letter of a message that is not a job: where it came from, and who saw it.
pub fn for_invalid(ctx: &JobCtx, error: &str, subject: &str, num_delivered: i64) -> DeadLetter {
    DeadLetter {
        subject: Some(json!(subject)),
        worker_id: Some(json!(ctx.worker_id)),
        num_delivered: Some(json!(num_delivered)),
        ..DeadLetter::new("invalid_job", error, now())
    }
}

pub async fn publish_run(ctx: &JobCtx, reason: &str, error: &str, job: &Job) -> bool {
    publish(ctx, &job.tag, &for_job(ctx, reason, error, job), None).await
}
