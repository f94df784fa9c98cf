//! `list`: `GET /runs` in three variants (plain, filtered, vNext page).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Result};
use serde_json::{json, Map, Value};

use super::load::{requests_for, run_load, MakeRequest, Validate};
use super::seed::{count_runs, seed_runs};
use super::{Ctx, DEFAULT_LIST_REQUESTS};

fn validate_list(vnext: bool, limit: u32) -> Validate {
    Arc::new(move |body: &[u8]| {
        let v: Value = serde_json::from_slice(body).map_err(|e| format!("bad JSON: {e}"))?;
        let items = if vnext {
            v.get("items")
                .and_then(Value::as_array)
                .ok_or_else(|| "vNext list response without an items array".to_string())?
        } else {
            v.as_array()
                .ok_or_else(|| "list response is not a JSON array".to_string())?
        };
        if items.len() > limit as usize {
            return Err(format!("{} items for limit={limit}", items.len()));
        }
        Ok(())
    })
}

pub(super) async fn scenario_list(ctx: &Arc<Ctx>) -> Result<Value> {
    let args = &ctx.args;
    let seeding = if args.seed_runs > 0 {
        seed_runs(ctx, args.seed_runs).await?
    } else {
        Value::Null
    };
    let runs_in_bucket = if args.nats_url.is_some() {
        Some(count_runs(ctx.kv().await?).await?)
    } else {
        None
    };
    let limit = args.list_limit;
    let tag = &args.tag;
    let variants: [(&str, String, bool); 3] = [
        ("plain", format!("/runs?limit={limit}"), false),
        (
            "filter",
            format!("/runs?status=PENDING&tag={tag}&limit={limit}"),
            false,
        ),
        ("page", format!("/runs?updated_after=0&limit={limit}"), true),
    ];
    let n = args
        .list_requests
        .unwrap_or_else(|| requests_for(ctx, DEFAULT_LIST_REQUESTS));
    let duration = args.duration_sec.map(Duration::from_secs_f64);
    let mut out = Map::new();
    for (i, (name, path, vnext)) in variants.into_iter().enumerate() {
        let c = ctx.clone();
        let url = ctx.url(&path);
        let make: MakeRequest = Arc::new(move || c.http.get(&url).timeout(c.request_timeout));
        let validate = validate_list(vnext, limit);
        if i == 0 {
            let warmup = args.warmup.unwrap_or(1);
            if warmup > 0 {
                let w = run_load(1, warmup, None, make.clone(), validate.clone()).await;
                if w.ok == 0 {
                    bail!(
                        "warm-up failed: {}",
                        w.first_error.unwrap_or_else(|| "no response".into())
                    );
                }
            }
        }
        let r = run_load(1, n, duration, make, validate).await;
        let mut v = r.to_json();
        v["endpoint"] = json!(format!("GET {path}"));
        out.insert(name.to_string(), v);
    }
    Ok(json!({
        "runs_in_bucket": runs_in_bucket,
        "seeding": seeding,
        "variants": Value::Object(out),
    }))
}
