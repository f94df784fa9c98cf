//! `sse`: notification latency of `GET /runs/{id}/watch`, from the ack of a KV put to the
//! arrival of the `snapshot` event carrying it.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use futures::StreamExt;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::report::{latency_summary, now_f64, round3};
use super::{Ctx, DEFAULT_SSE_EVENTS};

/// How long the SSE scenario waits for one notification before counting it as missed.
const SSE_EVENT_WAIT: Duration = Duration::from_secs(10);

/// An event with the arrival time of the chunk that completed it.
struct SseEvent {
    event: pyoco_core::sse::Event,
    at: Instant,
}

/// Reads an SSE body and forwards each event, stamped with the arrival time of the chunk that
/// completed it. The channel closes when the stream ends.
async fn sse_reader(resp: reqwest::Response, tx: mpsc::UnboundedSender<SseEvent>) {
    let mut stream = resp.bytes_stream();
    let mut parser = pyoco_core::sse::Parser::new();
    while let Some(chunk) = stream.next().await {
        let Ok(chunk) = chunk else { break };
        let at = Instant::now();
        for event in parser.push(&chunk) {
            if tx.send(SseEvent { event, at }).is_err() {
                return;
            }
        }
    }
}

struct Watch {
    rx: mpsc::UnboundedReceiver<SseEvent>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Opens the watch stream and waits for its first `snapshot` event; returns the stream and
/// the time to that first event.
async fn open_watch(ctx: &Ctx, run_id: &str, timeout_sec: u64) -> Result<(Watch, Duration)> {
    let t = Instant::now();
    let resp = ctx
        .http
        .get(ctx.url(&format!("/runs/{run_id}/watch?timeout_sec={timeout_sec}")))
        .send()
        .await
        .context("GET /runs/{id}/watch")?;
    let status = resp.status();
    if !status.is_success() {
        let body = resp.text().await.unwrap_or_default();
        bail!("GET /runs/{{id}}/watch: HTTP {}: {}", status.as_u16(), body);
    }
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(sse_reader(resp, tx));
    let mut w = Watch { rx, task };
    loop {
        match tokio::time::timeout(SSE_EVENT_WAIT, w.rx.recv()).await {
            Ok(Some(ev)) if ev.event.event == "snapshot" => {
                return Ok((w, ev.at.duration_since(t)))
            }
            Ok(Some(_)) => continue,
            Ok(None) => bail!("watch stream ended before the first snapshot event"),
            Err(_) => bail!("no first snapshot event within {SSE_EVENT_WAIT:?}"),
        }
    }
}

fn event_seq(ev: &SseEvent) -> Option<u64> {
    let v: Value = serde_json::from_str(&ev.event.data).ok()?;
    v.get("snapshot")?.get("bench_seq")?.as_u64()
}

/// Tiny xorshift PRNG for the pauses between writes (no need for a crypto RNG here).
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

pub(super) async fn scenario_sse(ctx: &Arc<Ctx>) -> Result<Value> {
    let args = &ctx.args;
    let kv = ctx.kv().await?.clone();
    let n = args
        .sse_events
        .unwrap_or_else(|| args.requests.unwrap_or(DEFAULT_SSE_EVENTS));
    let max_gap = args.sse_max_gap_ms.max(51);
    let timeout_sec = args.watch_timeout_sec.unwrap_or_else(|| {
        let est = (n as f64 + 1.0) * (max_gap as f64 / 1000.0 + 1.0) + 15.0;
        (est.ceil() as u64).clamp(30, 600)
    });

    // 1. create a run
    let resp = ctx
        .http
        .post(ctx.url("/runs"))
        .timeout(ctx.request_timeout)
        .json(&json!({"flow_name": args.flow_name, "params": {"x": 1}, "tag": args.tag}))
        .send()
        .await
        .context("POST /runs")?;
    let status = resp.status();
    let body: Value = resp.json().await.context("POST /runs response")?;
    if !status.is_success() {
        bail!("POST /runs: HTTP {}: {}", status.as_u16(), body);
    }
    let run_id = body
        .get("run_id")
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow!("POST /runs: no run_id in {body}"))?
        .to_string();

    // 2. open the watch and read the first snapshot
    let (mut watch, first_event) = open_watch(ctx, &run_id, timeout_sec).await?;

    // 3. the stored snapshot we keep rewriting
    let stored = kv
        .get(&run_id)
        .await
        .context("KV get")?
        .ok_or_else(|| anyhow!("run {run_id} not in KV bucket {}", args.runs_bucket))?;
    let mut doc: Value = serde_json::from_slice(&stored).context("stored snapshot")?;
    if !doc.is_object() {
        bail!("stored snapshot of {run_id} is not a JSON object");
    }

    let mut rng = XorShift(
        (SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as u64)
            | 1,
    );
    let mut lat_us = Vec::new();
    let mut missed = 0u64;
    let mut reconnects = 0u64;
    let mut put_us = Vec::new();
    let t_all = Instant::now();
    // seq 0 is an untimed warm-up write.
    for seq in 0..=n {
        let gap = 50 + rng.next() % (max_gap - 50);
        tokio::time::sleep(Duration::from_millis(gap)).await;
        let ts = now_f64();
        doc["updated_at"] = json!(ts);
        doc["heartbeat_at"] = json!(ts);
        doc["bench_seq"] = json!(seq);
        // Encoded as the gateway and the worker encode every KV value.
        let bytes = pyoco_core::json::to_ascii_vec(&doc);
        let t_put = Instant::now();
        kv.put(&run_id, bytes.into()).await.context("KV put")?;
        let t_ack = Instant::now();
        put_us.push(t_ack.duration_since(t_put).as_micros() as u64);
        let deadline = t_ack + SSE_EVENT_WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, watch.rx.recv()).await {
                Ok(Some(ev)) => {
                    if ev.event.event == "snapshot" && event_seq(&ev) == Some(seq) {
                        if seq > 0 {
                            lat_us.push(ev.at.saturating_duration_since(t_ack).as_micros() as u64);
                        }
                        break;
                    }
                }
                Ok(None) => {
                    // Stream ended (timeout_sec elapsed): reconnect; this sample is lost.
                    reconnects += 1;
                    watch = open_watch(ctx, &run_id, timeout_sec).await?.0;
                    break;
                }
                Err(_) => {
                    missed += 1;
                    break;
                }
            }
        }
    }
    let elapsed = t_all.elapsed();
    drop(watch);
    Ok(json!({
        "endpoint": "GET /runs/{id}/watch",
        "run_id": run_id,
        "events": n,
        "received": lat_us.len(),
        "missed": missed,
        "reconnects": reconnects,
        "elapsed_sec": round3(elapsed.as_secs_f64()),
        "first_event_ms": round3(first_event.as_secs_f64() * 1000.0),
        "notify_latency_ms": latency_summary(&lat_us),
        "kv_put_ms": latency_summary(&put_us),
    }))
}
