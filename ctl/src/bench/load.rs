//! The request loop shared by the HTTP scenarios: N sequential workers over one request builder.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::report::{latency_summary, round3};
use super::Ctx;

pub(super) type MakeRequest = Arc<dyn Fn() -> reqwest::RequestBuilder + Send + Sync>;

pub(super) type Validate = Arc<dyn Fn(&[u8]) -> std::result::Result<(), String> + Send + Sync>;

#[derive(Default)]
pub(super) struct LoadResult {
    concurrency: usize,
    issued: u64,
    pub(super) ok: u64,
    errors: u64,
    elapsed: Duration,
    latencies_us: Vec<u64>,
    pub(super) first_error: Option<String>,
}

async fn one_request(make: &MakeRequest, validate: &Validate) -> std::result::Result<(), String> {
    let resp = make().send().await.map_err(|e| format!("request: {e}"))?;
    let status = resp.status();
    let body = resp.bytes().await.map_err(|e| format!("body: {e}"))?;
    if !status.is_success() {
        let text = String::from_utf8_lossy(&body[..body.len().min(300)]).to_string();
        return Err(format!("HTTP {}: {}", status.as_u16(), text));
    }
    validate(&body)
}

/// Runs `total` requests (or until `duration`) over `concurrency` sequential workers.
pub(super) async fn run_load(
    concurrency: usize,
    total: u64,
    duration: Option<Duration>,
    make: MakeRequest,
    validate: Validate,
) -> LoadResult {
    let issued = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = duration.map(|d| start + d);
    let mut handles = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let issued = issued.clone();
        let make = make.clone();
        let validate = validate.clone();
        handles.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0u64;
            let mut first_error = None;
            loop {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
                if issued.fetch_add(1, Ordering::Relaxed) >= total {
                    break;
                }
                let t = Instant::now();
                match one_request(&make, &validate).await {
                    Ok(()) => lat.push(t.elapsed().as_micros() as u64),
                    Err(e) => {
                        errors += 1;
                        first_error.get_or_insert(e);
                    }
                }
            }
            (lat, errors, first_error)
        }));
    }
    let mut out = LoadResult {
        concurrency,
        ..Default::default()
    };
    for h in handles {
        if let Ok((lat, errors, first_error)) = h.await {
            out.latencies_us.extend(lat);
            out.errors += errors;
            if out.first_error.is_none() {
                out.first_error = first_error;
            }
        }
    }
    out.elapsed = start.elapsed();
    out.ok = out.latencies_us.len() as u64;
    out.issued = out.ok + out.errors;
    out
}

impl LoadResult {
    pub(super) fn to_json(&self) -> Value {
        let secs = self.elapsed.as_secs_f64();
        let rps = if secs > 0.0 {
            self.ok as f64 / secs
        } else {
            0.0
        };
        json!({
            "requests": self.issued,
            "ok": self.ok,
            "errors": self.errors,
            "concurrency": self.concurrency,
            "elapsed_sec": round3(secs),
            "throughput_rps": round3(rps),
            "latency_ms": latency_summary(&self.latencies_us),
            "first_error": self.first_error,
        })
    }
}

pub(super) fn requests_for(ctx: &Ctx, default: u64) -> u64 {
    match (ctx.args.requests, ctx.args.duration_sec) {
        (Some(n), _) => n,
        (None, Some(_)) => u64::MAX,
        (None, None) => default,
    }
}
