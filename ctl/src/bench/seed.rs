//! `--seed-runs`: PENDING runs written straight into the runs KV bucket, byte for byte as the
//! gateway writes a new run.

use std::time::Instant;

use anyhow::{Context, Result};
use futures::{StreamExt, TryStreamExt};
use pyoco_core::json::to_ascii_vec;
use pyoco_core::wire::NewRun;
use serde_json::{json, Value};

use super::report::{now_f64, round3};
use super::Ctx;

/// Counts the live keys of the runs bucket.
pub(super) async fn count_runs(kv: &async_nats::jetstream::kv::Store) -> Result<u64> {
    let mut keys = kv.keys().await.context("listing KV keys")?;
    let mut n = 0u64;
    while let Some(k) = keys.next().await {
        k.context("listing KV keys")?;
        n += 1;
    }
    Ok(n)
}

/// A seeded run's KV value: the gateway's own PENDING document for `POST /runs` with
/// `{"flow_name", "params": {"x": 1}, "tag"}` and no API key (contract §2.1), built and encoded
/// by the same core code, so a seeded run cannot be told from a submitted one.
fn seeded_run(run_id: &str, flow_name: &str, tag: &str, ts: f64) -> Vec<u8> {
    let mut params = serde_json::Map::new();
    params.insert("x".into(), json!(1));
    let run = NewRun {
        run_id: run_id.to_string(),
        flow_name: flow_name.to_string(),
        tag: tag.to_string(),
        tags: vec![tag.to_string()],
        tenant_id: None,
        api_key_id: None,
        params,
        workflow_yaml: None,
        workflow_yaml_text: None,
        timeout_sec: None,
        now: ts,
    };
    to_ascii_vec(&run.initial_snapshot())
}

pub(super) async fn seed_runs(ctx: &Ctx, want: u64) -> Result<Value> {
    let kv = ctx.kv().await?.clone();
    let t = Instant::now();
    let existing = count_runs(&kv).await?;
    let missing = want.saturating_sub(existing);
    if missing > 0 {
        // Distinct updated_at values, 1 ms apart, all in the past.
        let base = now_f64();
        let flow = ctx.args.flow_name.clone();
        let tag = ctx.args.tag.clone();
        futures::stream::iter(0..missing)
            .map(|i| {
                let kv = kv.clone();
                let flow = flow.clone();
                let tag = tag.clone();
                async move {
                    let id = uuid::Uuid::new_v4().to_string();
                    let ts = base - (i as f64 + 1.0) * 0.001;
                    let bytes = seeded_run(&id, &flow, &tag, ts);
                    kv.put(&id, bytes.into())
                        .await
                        .with_context(|| format!("KV put {id}"))?;
                    Ok::<(), anyhow::Error>(())
                }
            })
            .buffer_unordered(64)
            .try_collect::<Vec<()>>()
            .await?;
    }
    Ok(json!({
        "requested": want,
        "existing_before": existing,
        "seeded": missing,
        "seed_sec": round3(t.elapsed().as_secs_f64()),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_snapshot_shape() {
        let s: serde_json::Map<String, Value> =
            serde_json::from_slice(&seeded_run("id", "bench", "bench", 1.5)).unwrap();
        let keys: Vec<&str> = s.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "run_id",
                "flow_name",
                "tag",
                "tags",
                "tenant_id",
                "api_key_id",
                "status",
                "params",
                "tasks",
                "task_records",
                "start_time",
                "end_time",
                "heartbeat_at",
                "updated_at",
                "error"
            ]
        );
    }

    #[test]
    fn seeded_run_bytes_are_the_gateways() {
        // What the gateway stores for POST /runs {"flow_name": "bénch", "params": {"x": 1},
        // "tag": "t"} without auth: core's builder, encoded as it encodes every KV value.
        let mut params = serde_json::Map::new();
        params.insert("x".into(), json!(1));
        let submitted = NewRun {
            run_id: "r-1".into(),
            flow_name: "bénch".into(),
            tag: "t".into(),
            tags: vec!["t".into()],
            tenant_id: None,
            api_key_id: None,
            params,
            workflow_yaml: None,
            workflow_yaml_text: None,
            timeout_sec: None,
            now: 1795813674.25,
        };
        let gateway = to_ascii_vec(&submitted.initial_snapshot());
        let seeded = seeded_run("r-1", "bénch", "t", 1795813674.25);
        assert_eq!(
            String::from_utf8(seeded.clone()).unwrap(),
            String::from_utf8(gateway).unwrap()
        );
        // Pinned too, so a change in either shows up here: compact, non-ASCII escaped
        // (plain serde_json::to_vec would write the é as UTF-8).
        assert_eq!(
            String::from_utf8(seeded).unwrap(),
            r#"{"run_id":"r-1","flow_name":"b\u00e9nch","tag":"t","tags":["t"],"tenant_id":null,"api_key_id":null,"status":"PENDING","params":{"x":1},"tasks":{},"task_records":{},"start_time":null,"end_time":null,"heartbeat_at":1795813674.25,"updated_at":1795813674.25,"error":null}"#
        );
    }
}
