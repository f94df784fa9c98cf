//! Dead letters (contract §2.6): `{"reason", "error", "timestamp", …payload}` on `pyoco.dlq.<tag>`.
//! Best-effort like the original: a failed publish is logged, never fatal.

use pyoco_core::json::to_ascii_vec;
use pyoco_core::time::now;
use pyoco_core::wire::fields;
use serde_json::{json, Value};

use super::{Job, JobCtx};

pub async fn publish_raw(ctx: &JobCtx, tag: &str, reason: &str, error: &str, payload: Value) {
    publish_raw_with_id(ctx, tag, reason, error, payload, None).await
}

/// With a message id, a repeated publish (several workers handling one event) is stored once.
pub async fn publish_raw_with_id(
    ctx: &JobCtx,
    tag: &str,
    reason: &str,
    error: &str,
    payload: Value,
    msg_id: Option<&str>,
) {
    let mut doc = json!({fields::dlq::REASON: reason, fields::dlq::ERROR: error, fields::dlq::TIMESTAMP: now()});
    if let (Some(d), Value::Object(p)) = (doc.as_object_mut(), payload) {
        d.extend(p);
    }
    let subject = ctx
        .res
        .names
        .dlq_subject(if tag.is_empty() { "unknown" } else { tag });
    let result = async {
        let mut publish = async_nats::jetstream::message::PublishMessage::build()
            .payload(to_ascii_vec(&doc).into());
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
    if let Err(e) = result {
        tracing::warn!(subject = %subject, reason, error = %e, "DLQ publish failed");
    }
}

pub async fn publish_run(ctx: &JobCtx, reason: &str, error: &str, job: &Job) {
    // The original's fields, plus (ours) the whole job, so `pyococtl dlq replay` can queue
    // exactly what was submitted, flow.yaml included (the run snapshot does not keep the YAML).
    let payload = json!({
        fields::dlq::RUN_ID: job.run_id, fields::dlq::FLOW_NAME: job.flow_name, fields::dlq::TAG: job.tag, fields::dlq::TAGS: job.tags,
        fields::dlq::TENANT_ID: job.tenant_id, fields::dlq::API_KEY_ID: job.api_key_id, fields::dlq::WORKER_ID: ctx.worker_id,
        fields::dlq::JOB: job.to_doc(),
    });
    publish_raw(ctx, &job.tag, reason, error, payload).await
}
