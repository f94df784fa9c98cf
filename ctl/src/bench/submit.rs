//! `submit` and `submit-yaml`: `POST /runs` and `POST /runs/yaml` under load.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use super::load::{requests_for, run_load, MakeRequest, Validate};
use super::{Ctx, DEFAULT_SUBMIT_REQUESTS, EXAMPLE_FLOW_YAML};

fn validate_submit() -> Validate {
    Arc::new(|body: &[u8]| {
        let v: Value = serde_json::from_slice(body).map_err(|e| format!("bad JSON: {e}"))?;
        match v.get("run_id").and_then(Value::as_str) {
            Some(id) if !id.is_empty() => Ok(()),
            _ => Err(format!(
                "no run_id in response: {}",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            )),
        }
    })
}

/// `POST /runs/yaml` with the --workflow-file (or the example flow), --flow-name and --tag.
pub(super) fn make_yaml_submit(ctx: &Arc<Ctx>) -> Result<MakeRequest> {
    let text: bytes::Bytes = match &ctx.args.workflow_file {
        Some(p) => std::fs::read(p)
            .with_context(|| format!("reading {}", p.display()))?
            .into(),
        None => bytes::Bytes::from_static(EXAMPLE_FLOW_YAML.as_bytes()),
    };
    let c = ctx.clone();
    let url = ctx.url("/runs/yaml");
    Ok(Arc::new(move || {
        let part = reqwest::multipart::Part::stream(text.clone())
            .file_name("flow.yaml")
            .mime_str("application/x-yaml")
            .expect("static mime type");
        let form = reqwest::multipart::Form::new()
            .part("workflow", part)
            .text("flow_name", c.args.flow_name.clone())
            .text("tag", c.args.tag.clone());
        c.http.post(&url).timeout(c.request_timeout).multipart(form)
    }))
}

pub(super) async fn scenario_submit(ctx: &Arc<Ctx>, yaml: bool) -> Result<Value> {
    let args = &ctx.args;
    let make: MakeRequest = if yaml {
        make_yaml_submit(ctx)?
    } else {
        let body = serde_json::to_vec(&json!({
            "flow_name": args.flow_name,
            "params": {"x": 1},
            "tag": args.tag,
        }))?;
        let body = bytes::Bytes::from(body);
        let c = ctx.clone();
        let url = ctx.url("/runs");
        Arc::new(move || {
            c.http
                .post(&url)
                .timeout(c.request_timeout)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.clone())
        })
    };
    let validate = validate_submit();
    let total = requests_for(ctx, DEFAULT_SUBMIT_REQUESTS);
    let conc = args.concurrency;
    let warmup = args.warmup.unwrap_or(conc as u64);
    if warmup > 0 {
        let w = run_load(conc, warmup, None, make.clone(), validate.clone()).await;
        if w.ok == 0 {
            bail!(
                "warm-up failed: {}",
                w.first_error.unwrap_or_else(|| "no response".into())
            );
        }
    }
    let duration = args.duration_sec.map(Duration::from_secs_f64);
    let r = run_load(conc, total, duration, make, validate).await;
    let mut v = r.to_json();
    v["warmup"] = json!(warmup);
    v["endpoint"] = json!(if yaml {
        "POST /runs/yaml"
    } else {
        "POST /runs"
    });
    Ok(v)
}
