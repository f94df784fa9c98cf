//! `pyococtl bench`: a load generator against a pyoco-server HTTP gateway (ours or the Python
//! original — it only speaks the public HTTP API plus, for seeding and SSE, the NATS KV bucket
//! `pyoco_runs` described in the compatibility contract §2.1).
//!
//! Scenarios:
//! - `submit`: `POST /runs` (JSON) — throughput and latency percentiles.
//! - `submit-yaml`: `POST /runs/yaml` (multipart with a `flow.yaml`).
//! - `list`: `GET /runs` in three variants (plain, filtered, vNext page) with at least
//!   `--seed-runs` runs present; missing runs are written straight into the KV bucket.
//! - `sse`: notification latency of `GET /runs/{id}/watch`: time from the ack of a KV put of a
//!   modified snapshot to the arrival of the `snapshot` event carrying it.
//! - `e2e`: worker benchmark — submits flow.yaml runs (`POST /runs/yaml`) on a tag a worker
//!   serves and times submit → first snapshot with status COMPLETED, detected by a watch on the
//!   runs KV bucket (no polling of the gateway). `--sequential` waits for each run before the
//!   next submission (with `--concurrency 1`: the latency measure); otherwise the submitters
//!   submit as fast as they can and the throughput is completed runs / (first submit → last
//!   completion).
//! - `rss`: resident memory of the given `--rss-pid`s (also sampled before/after any other scenario).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, ValueEnum};
use futures::{StreamExt, TryStreamExt};
use pyoco_core::wire::run_status;
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;

use crate::{Cli, OutputFormat};

/// The contract's example single-flow `flow.yaml` (§4), used when `--workflow-file` is not given.
pub const EXAMPLE_FLOW_YAML: &str = pyoco_core::flow_yaml::EXAMPLE_FLOW_YAML;

const DEFAULT_SUBMIT_REQUESTS: u64 = 2000;
const DEFAULT_LIST_REQUESTS: u64 = 20;
const DEFAULT_SSE_EVENTS: u64 = 20;
const DEFAULT_E2E_RUNS: u64 = 100;
/// How long the SSE scenario waits for one notification before counting it as missed.
const SSE_EVENT_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    Submit,
    SubmitYaml,
    List,
    Sse,
    /// End-to-end runs through a worker (not part of `all`: needs a worker serving --tag).
    E2e,
    Rss,
    /// submit, submit-yaml, list and sse (plus rss when --rss-pid is given).
    All,
}

impl Scenario {
    fn key(self) -> &'static str {
        match self {
            Scenario::Submit => "submit",
            Scenario::SubmitYaml => "submit_yaml",
            Scenario::List => "list",
            Scenario::Sse => "sse",
            Scenario::E2e => "e2e",
            Scenario::Rss => "rss",
            Scenario::All => "all",
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// What to measure.
    #[arg(long, value_enum, default_value_t = Scenario::All)]
    pub scenario: Scenario,

    /// Requests per scenario (list: per variant; sse: number of notifications; e2e: runs).
    /// Defaults: submit/submit-yaml 2000, list 20, sse 20, e2e 100. With --duration-sec and no
    /// --requests, unlimited.
    #[arg(long)]
    pub requests: Option<u64>,

    /// Concurrent connections for submit / submit-yaml, concurrent submitters for e2e (list and
    /// sse are sequential).
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,

    /// Stop a submit/submit-yaml/list measurement after this many seconds.
    #[arg(long)]
    pub duration_sec: Option<f64>,

    /// Untimed requests sent before measuring (default: --concurrency for submit scenarios,
    /// 1 for list and e2e; e2e warm-up runs are waited for one by one).
    #[arg(long)]
    pub warmup: Option<u64>,

    /// list: make sure at least this many runs exist in the runs KV bucket, writing PENDING
    /// snapshots straight into it (needs --nats-url).
    #[arg(long, default_value_t = 0)]
    pub seed_runs: u64,

    /// NATS URL of the gateway's JetStream (needed by --seed-runs and the sse and e2e scenarios).
    #[arg(long, env = "PYOCO_NATS_URL")]
    pub nats_url: Option<String>,

    /// Runs KV bucket.
    #[arg(long, env = "PYOCO_RUNS_KV_BUCKET", default_value = "pyoco_runs")]
    pub runs_bucket: String,

    /// Tag of the submitted/seeded runs; use one no worker serves, so runs stay PENDING (e2e: the
    /// tag the measured worker serves).
    #[arg(long, default_value = "bench")]
    pub tag: String,

    /// flow_name of submitted/seeded runs.
    #[arg(long, default_value = "bench")]
    pub flow_name: String,

    /// flow.yaml sent by submit-yaml and e2e (default: the contract's example flow).
    #[arg(long)]
    pub workflow_file: Option<PathBuf>,

    /// `limit` of the list requests.
    #[arg(long, default_value_t = 50)]
    pub list_limit: u32,

    /// list: requests per variant (overrides --requests).
    #[arg(long)]
    pub list_requests: Option<u64>,

    /// sse: number of notifications to time (overrides --requests).
    #[arg(long)]
    pub sse_events: Option<u64>,

    /// sse: `timeout_sec` of the watch request (default: long enough for all notifications).
    #[arg(long)]
    pub watch_timeout_sec: Option<u64>,

    /// sse: upper bound of the random pause between two KV writes (ms); the random pause keeps
    /// the writes out of phase with a polling gateway.
    #[arg(long, default_value_t = 600)]
    pub sse_max_gap_ms: u64,

    /// Process ids whose VmRSS is reported before and after the scenarios (repeatable).
    #[arg(long = "rss-pid", visible_alias = "pid")]
    pub rss_pids: Vec<u32>,

    /// Add the RSS of all descendant processes to each --rss-pid.
    #[arg(long)]
    pub rss_children: bool,

    /// e2e: each submitter waits for its run's terminal status before submitting the next run
    /// (closed loop; with --concurrency 1 this measures latency on an otherwise idle worker).
    #[arg(long)]
    pub sequential: bool,

    /// e2e: first wait until this worker id has a record in the workers KV bucket.
    #[arg(long)]
    pub wait_worker: Option<String>,

    /// Workers KV bucket (for --wait-worker).
    #[arg(long, env = "PYOCO_WORKERS_KV_BUCKET", default_value = "pyoco_workers")]
    pub workers_bucket: String,

    /// e2e: how long a run may take from submission to a terminal status (and how long
    /// --wait-worker waits) before it counts as an error.
    #[arg(long, default_value_t = 120.0)]
    pub run_timeout_sec: f64,

    /// Per-request timeout (seconds) of non-streaming requests.
    #[arg(long, default_value_t = 120.0)]
    pub request_timeout_sec: f64,
}

/// Shared state of one `bench` invocation.
struct Ctx {
    base: String,
    http: reqwest::Client,
    args: BenchArgs,
    request_timeout: Duration,
    kv: tokio::sync::OnceCell<async_nats::jetstream::kv::Store>,
    js: tokio::sync::OnceCell<async_nats::jetstream::Context>,
}

impl Ctx {
    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    async fn js(&self) -> Result<&async_nats::jetstream::Context> {
        self.js
            .get_or_try_init(|| async {
                let url = self
                    .args
                    .nats_url
                    .clone()
                    .ok_or_else(|| anyhow!("--nats-url (or PYOCO_NATS_URL) is required"))?;
                let client = async_nats::ConnectOptions::new()
                    .name("pyococtl-bench")
                    .connection_timeout(Duration::from_secs(5))
                    .connect(url.as_str())
                    .await
                    .with_context(|| format!("connecting to NATS at {url}"))?;
                Ok::<_, anyhow::Error>(async_nats::jetstream::new(client))
            })
            .await
    }

    async fn kv(&self) -> Result<&async_nats::jetstream::kv::Store> {
        self.kv
            .get_or_try_init(|| async {
                let js = self.js().await?;
                let bucket = self.args.runs_bucket.clone();
                if let Ok(kv) = js.get_key_value(bucket.clone()).await {
                    return Ok(kv);
                }
                // The bucket as the gateway creates it; async-nats' `create_key_value` would
                // fail on nats-server 2.9 (see pyoco_core::jsapi).
                let config = pyoco_core::resources::kv_stream_config(&bucket, Duration::ZERO);
                js.get_or_create_stream(config)
                    .await
                    .with_context(|| format!("creating KV bucket {bucket}"))?;
                js.get_key_value(bucket.clone())
                    .await
                    .with_context(|| format!("opening KV bucket {bucket}"))
            })
            .await
    }
}

pub async fn run(cli: &Cli, args: &BenchArgs) -> Result<()> {
    if args.tag.is_empty()
        || !args
            .tag
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        bail!("--tag must match ^[A-Za-z0-9_-]+$");
    }
    if args.concurrency == 0 {
        bail!("--concurrency must be at least 1");
    }
    if args.scenario == Scenario::Rss && args.rss_pids.is_empty() {
        bail!("--scenario rss needs at least one --rss-pid");
    }
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(key) = cli.api_key.as_deref().filter(|k| !k.is_empty()) {
        headers.insert(
            reqwest::header::HeaderName::from_bytes(cli.api_key_header.as_bytes())
                .context("invalid --api-key-header")?,
            reqwest::header::HeaderValue::from_str(key).context("invalid --api-key")?,
        );
    }
    let http = reqwest::Client::builder()
        .default_headers(headers)
        .pool_max_idle_per_host(args.concurrency.max(4))
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(5))
        .build()?;
    let ctx = Arc::new(Ctx {
        base: cli.server.trim_end_matches('/').to_string(),
        http,
        args: args.clone(),
        request_timeout: Duration::from_secs_f64(args.request_timeout_sec.max(0.001)),
        kv: tokio::sync::OnceCell::new(),
        js: tokio::sync::OnceCell::new(),
    });

    let started_at = now_f64();
    let cpu_before = self_cpu_ticks();
    let rss_before = sample_rss(&args.rss_pids, args.rss_children);

    let scenarios: Vec<Scenario> = match args.scenario {
        Scenario::All => vec![
            Scenario::Submit,
            Scenario::SubmitYaml,
            Scenario::List,
            Scenario::Sse,
        ],
        s => vec![s],
    };
    let mut results = Map::new();
    let mut failed = false;
    for s in scenarios {
        let r = match s {
            Scenario::Submit => scenario_submit(&ctx, false).await,
            Scenario::SubmitYaml => scenario_submit(&ctx, true).await,
            Scenario::List => scenario_list(&ctx).await,
            Scenario::Sse => scenario_sse(&ctx).await,
            Scenario::E2e => scenario_e2e(&ctx).await,
            Scenario::Rss | Scenario::All => continue,
        };
        match r {
            Ok(v) => {
                results.insert(s.key().to_string(), v);
            }
            Err(e) => {
                failed = true;
                results.insert(s.key().to_string(), json!({"error": format!("{e:#}")}));
            }
        }
    }
    let rss_after = sample_rss(&args.rss_pids, args.rss_children);
    let rss: Vec<Value> = args
        .rss_pids
        .iter()
        .map(|pid| {
            let before = rss_before.get(pid).copied().flatten();
            let after = rss_after.get(pid).copied().flatten();
            json!({
                "pid": pid,
                "name": proc_name(*pid),
                "include_children": args.rss_children,
                "before_kb": before,
                "after_kb": after,
            })
        })
        .collect();

    let report = json!({
        "tool": "pyococtl bench",
        "server": ctx.base,
        "started_at": started_at,
        "elapsed_sec": round3(now_f64() - started_at),
        "scenario": args.scenario.key(),
        "tag": args.tag,
        "results": Value::Object(results),
        "rss": rss,
        // utime+stime of this load generator over the whole invocation, in clock ticks
        // (/proc/self/stat; usually 100 per second), so its CPU share can be reported.
        "client_cpu_ticks": self_cpu_ticks().zip(cpu_before).map(|(a, b)| a.saturating_sub(b)),
    });
    match cli.output.unwrap_or(OutputFormat::Table) {
        OutputFormat::Json => println!("{}", serde_json::to_string(&report)?),
        OutputFormat::Table | OutputFormat::Status => print_table(&report),
    }
    if failed {
        bail!("at least one scenario failed");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Load loop

type MakeRequest = Arc<dyn Fn() -> reqwest::RequestBuilder + Send + Sync>;
type Validate = Arc<dyn Fn(&[u8]) -> std::result::Result<(), String> + Send + Sync>;

#[derive(Default)]
struct LoadResult {
    concurrency: usize,
    issued: u64,
    ok: u64,
    errors: u64,
    elapsed: Duration,
    latencies_us: Vec<u64>,
    first_error: Option<String>,
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
async fn run_load(
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
    fn to_json(&self) -> Value {
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

fn latency_summary(us: &[u64]) -> Value {
    if us.is_empty() {
        return json!({"count": 0, "min": null, "mean": null, "p50": null, "p90": null, "p95": null, "p99": null, "max": null});
    }
    let mut v = us.to_vec();
    v.sort_unstable();
    let ms = |x: u64| round3(x as f64 / 1000.0);
    let pct = |p: f64| {
        let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
        v[rank.clamp(1, v.len()) - 1]
    };
    let mean = v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64;
    json!({
        "count": v.len(),
        "min": ms(v[0]),
        "mean": round3(mean / 1000.0),
        "p50": ms(pct(50.0)),
        "p90": ms(pct(90.0)),
        "p95": ms(pct(95.0)),
        "p99": ms(pct(99.0)),
        "max": ms(*v.last().unwrap()),
    })
}

fn requests_for(ctx: &Ctx, default: u64) -> u64 {
    match (ctx.args.requests, ctx.args.duration_sec) {
        (Some(n), _) => n,
        (None, Some(_)) => u64::MAX,
        (None, None) => default,
    }
}

// ---------------------------------------------------------------------------------------------
// submit / submit-yaml

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
fn make_yaml_submit(ctx: &Arc<Ctx>) -> Result<MakeRequest> {
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

async fn scenario_submit(ctx: &Arc<Ctx>, yaml: bool) -> Result<Value> {
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

// ---------------------------------------------------------------------------------------------
// list

/// Counts the live keys of the runs bucket.
async fn count_runs(kv: &async_nats::jetstream::kv::Store) -> Result<u64> {
    let mut keys = kv.keys().await.context("listing KV keys")?;
    let mut n = 0u64;
    while let Some(k) = keys.next().await {
        k.context("listing KV keys")?;
        n += 1;
    }
    Ok(n)
}

/// The gateway's initial PENDING snapshot (contract §2.1, key order of the server's snapshot).
fn pending_snapshot(run_id: &str, flow_name: &str, tag: &str, ts: f64) -> Value {
    // The gateway's own document for a new run (contract §2.1), so seeded runs are real ones.
    let mut params = serde_json::Map::new();
    params.insert("x".into(), json!(1));
    let run = pyoco_core::wire::NewRun {
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
    Value::Object(run.initial_snapshot())
}

async fn seed_runs(ctx: &Ctx, want: u64) -> Result<Value> {
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
                    let doc = pending_snapshot(&id, &flow, &tag, ts);
                    let bytes = serde_json::to_vec(&doc)?;
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

async fn scenario_list(ctx: &Arc<Ctx>) -> Result<Value> {
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

// ---------------------------------------------------------------------------------------------
// sse

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

async fn scenario_sse(ctx: &Arc<Ctx>) -> Result<Value> {
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
        let bytes = serde_json::to_vec(&doc)?;
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

// ---------------------------------------------------------------------------------------------
// e2e

/// The first terminal snapshot seen for a run.
#[derive(Clone)]
struct Terminal {
    at: Instant,
    status: String,
    error: Option<String>,
}

/// Terminal statuses seen by the KV watch, keyed by run id, plus a wake-up for waiters.
#[derive(Default)]
struct Completions {
    done: std::sync::Mutex<std::collections::HashMap<String, Terminal>>,
    notify: tokio::sync::Notify,
    /// Set when the watch ended or failed; waiters stop waiting.
    watch_error: std::sync::Mutex<Option<String>>,
    /// Snapshots received by the watch (all runs, all statuses).
    updates: AtomicU64,
}

#[derive(serde::Deserialize)]
struct StatusOnly {
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    error: Option<Value>,
}

impl Completions {
    fn record(&self, key: &str, value: &[u8], at: Instant) {
        self.updates.fetch_add(1, Ordering::Relaxed);
        let Ok(s) = serde_json::from_slice::<StatusOnly>(value) else {
            return;
        };
        let Some(status) = s.status.filter(|st| run_status::is_terminal(st)) else {
            return;
        };
        // is_terminal ignores case (as the original does); the outcome checks compare upper case.
        let status = status.to_ascii_uppercase();
        let mut done = self.done.lock().unwrap();
        if done.contains_key(key) {
            return;
        }
        let error = s.error.filter(|e| !e.is_null()).map(|e| match e {
            Value::String(t) => t,
            other => other.to_string(),
        });
        done.insert(key.to_string(), Terminal { at, status, error });
        drop(done);
        self.notify.notify_waiters();
    }

    fn get(&self, run_id: &str) -> Option<Terminal> {
        self.done.lock().unwrap().get(run_id).cloned()
    }

    fn watch_failed(&self) -> Option<String> {
        self.watch_error.lock().unwrap().clone()
    }

    /// Waits until `run_id` has a terminal snapshot (None: deadline passed or watch ended).
    async fn wait(&self, run_id: &str, deadline: Instant) -> Option<Terminal> {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(t) = self.get(run_id) {
                return Some(t);
            }
            if self.watch_failed().is_some() {
                return None;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            let _ = tokio::time::timeout(left, notified).await;
        }
    }
}

/// Feeds every update of the runs bucket into `c` (only updates after the watch started).
async fn completion_watcher(mut watch: async_nats::jetstream::kv::Watch, c: Arc<Completions>) {
    use async_nats::jetstream::kv::Operation;
    let reason = loop {
        match watch.next().await {
            Some(Ok(entry)) => {
                if entry.operation == Operation::Put {
                    c.record(&entry.key, &entry.value, Instant::now());
                }
            }
            Some(Err(e)) => break format!("KV watch failed: {e}"),
            None => break "KV watch ended".to_string(),
        }
    };
    *c.watch_error.lock().unwrap() = Some(reason);
    c.notify.notify_waiters();
}

async fn wait_for_worker(ctx: &Ctx, worker_id: &str, timeout: Duration) -> Result<Duration> {
    let js = ctx.js().await?;
    let bucket = &ctx.args.workers_bucket;
    let t = Instant::now();
    loop {
        if let Ok(kv) = js.get_key_value(bucket.clone()).await {
            if let Ok(Some(_)) = kv.get(worker_id).await {
                return Ok(t.elapsed());
            }
        }
        if t.elapsed() >= timeout {
            bail!("worker {worker_id} has no record in KV bucket {bucket} after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One submission; returns the run id and the instant the request was started.
async fn submit_one(
    make: &MakeRequest,
) -> std::result::Result<(String, Instant, Duration), String> {
    let t0 = Instant::now();
    let resp = make().send().await.map_err(|e| format!("request: {e}"))?;
    let status = resp.status();
    let body = resp.bytes().await.map_err(|e| format!("body: {e}"))?;
    let took = t0.elapsed();
    if !status.is_success() {
        let text = String::from_utf8_lossy(&body[..body.len().min(300)]).to_string();
        return Err(format!("HTTP {}: {}", status.as_u16(), text));
    }
    let v: Value = serde_json::from_slice(&body).map_err(|e| format!("bad JSON: {e}"))?;
    match v.get("run_id").and_then(Value::as_str) {
        Some(id) if !id.is_empty() => Ok((id.to_string(), t0, took)),
        _ => Err(format!(
            "no run_id in response: {}",
            String::from_utf8_lossy(&body[..body.len().min(200)])
        )),
    }
}

#[derive(Default)]
struct E2eSubmitter {
    /// (run id, submit start)
    runs: Vec<(String, Instant)>,
    submit_us: Vec<u64>,
    submit_errors: u64,
    first_error: Option<String>,
}

async fn scenario_e2e(ctx: &Arc<Ctx>) -> Result<Value> {
    let args = &ctx.args;
    let make = make_yaml_submit(ctx)?;
    let run_timeout = Duration::from_secs_f64(args.run_timeout_sec.max(0.1));
    let total = requests_for(ctx, DEFAULT_E2E_RUNS);
    let conc = args.concurrency;
    let sequential = args.sequential;

    let worker_wait = match &args.wait_worker {
        Some(id) => Some(wait_for_worker(ctx, id, run_timeout).await?),
        None => None,
    };

    // The watch starts before the first submission: only new updates are delivered.
    let kv = ctx.kv().await?.clone();
    let watch = kv
        .watch_all()
        .await
        .context("KV watch on the runs bucket")?;
    let comp = Arc::new(Completions::default());
    let watcher = tokio::spawn(completion_watcher(watch, comp.clone()));
    struct AbortOnDrop(tokio::task::JoinHandle<()>);
    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let _watcher = AbortOnDrop(watcher);

    // Warm-up: runs waited for one by one; the first one also proves a worker serves the tag.
    let warmup = args.warmup.unwrap_or(1);
    let t_warm = Instant::now();
    for i in 0..warmup {
        let (id, _, _) = submit_one(&make)
            .await
            .map_err(|e| anyhow!("warm-up submission failed: {e}"))?;
        match comp.wait(&id, Instant::now() + run_timeout).await {
            Some(t) if t.status == "COMPLETED" => {}
            Some(t) => bail!(
                "warm-up run {id} ended {}: {}",
                t.status,
                t.error.unwrap_or_default()
            ),
            None => bail!(
                "warm-up run {} ({id}) not finished within {run_timeout:?}{} — is a worker serving tag {}?",
                i + 1,
                comp.watch_failed().map(|e| format!(" ({e})")).unwrap_or_default(),
                args.tag
            ),
        }
    }
    let warmup_sec = t_warm.elapsed().as_secs_f64();

    let issued = Arc::new(AtomicU64::new(0));
    let duration = args.duration_sec.map(Duration::from_secs_f64);
    let start = Instant::now();
    let deadline = duration.map(|d| start + d);
    let mut handles = Vec::with_capacity(conc);
    for _ in 0..conc {
        let issued = issued.clone();
        let make = make.clone();
        let comp = comp.clone();
        handles.push(tokio::spawn(async move {
            let mut s = E2eSubmitter::default();
            loop {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
                if issued.fetch_add(1, Ordering::Relaxed) >= total {
                    break;
                }
                match submit_one(&make).await {
                    Ok((id, t0, took)) => {
                        s.submit_us.push(took.as_micros() as u64);
                        s.runs.push((id.clone(), t0));
                        if sequential {
                            // The outcome is collected below; here we only wait.
                            comp.wait(&id, t0 + run_timeout).await;
                        }
                    }
                    Err(e) => {
                        s.submit_errors += 1;
                        s.first_error.get_or_insert(e);
                    }
                }
            }
            s
        }));
    }
    let mut all = E2eSubmitter::default();
    for h in handles {
        if let Ok(s) = h.await {
            all.runs.extend(s.runs);
            all.submit_us.extend(s.submit_us);
            all.submit_errors += s.submit_errors;
            if all.first_error.is_none() {
                all.first_error = s.first_error;
            }
        }
    }
    let submit_elapsed = start.elapsed();

    // Collect every run's outcome (each with its own deadline).
    let mut latencies_us = Vec::new();
    let (mut completed, mut failed, mut timed_out) = (0u64, 0u64, 0u64);
    let mut last_done: Option<Instant> = None;
    let mut first_run_error: Option<String> = None;
    for (id, t0) in &all.runs {
        match comp.wait(id, *t0 + run_timeout).await {
            Some(t) => {
                last_done = Some(last_done.map_or(t.at, |l| l.max(t.at)));
                if t.status == "COMPLETED" {
                    completed += 1;
                    latencies_us.push(t.at.saturating_duration_since(*t0).as_micros() as u64);
                } else {
                    failed += 1;
                    first_run_error.get_or_insert_with(|| {
                        format!("run {id} {}: {}", t.status, t.error.unwrap_or_default())
                    });
                }
            }
            None => {
                timed_out += 1;
                first_run_error.get_or_insert_with(|| {
                    format!(
                        "run {id} not finished within {run_timeout:?}{}",
                        comp.watch_failed()
                            .map(|e| format!(" ({e})"))
                            .unwrap_or_default()
                    )
                });
            }
        }
    }
    let elapsed = last_done
        .map(|l| l.saturating_duration_since(start))
        .unwrap_or(submit_elapsed)
        .max(submit_elapsed.min(Duration::from_millis(1)));
    let secs = elapsed.as_secs_f64();
    let rps = if secs > 0.0 {
        completed as f64 / secs
    } else {
        0.0
    };
    let errors = all.submit_errors + failed + timed_out;
    Ok(json!({
        "endpoint": "POST /runs/yaml → first COMPLETED snapshot in the runs KV bucket",
        "mode": if sequential { "sequential" } else { "open" },
        "requests": all.runs.len() as u64 + all.submit_errors,
        "ok": completed,
        "errors": errors,
        "submitted": all.runs.len(),
        "submit_errors": all.submit_errors,
        "completed": completed,
        "failed": failed,
        "timed_out": timed_out,
        "concurrency": conc,
        "elapsed_sec": round3(secs),
        "submit_elapsed_sec": round3(submit_elapsed.as_secs_f64()),
        "throughput_rps": round3(rps),
        "latency_ms": latency_summary(&latencies_us),
        "submit_latency_ms": latency_summary(&all.submit_us),
        "warmup_runs": warmup,
        "warmup_sec": round3(warmup_sec),
        "worker_wait_sec": worker_wait.map(|d| round3(d.as_secs_f64())),
        "kv_updates_seen": comp.updates.load(Ordering::Relaxed),
        "first_error": all.first_error.or(first_run_error),
    }))
}

// ---------------------------------------------------------------------------------------------
// rss

fn rss_kb(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// utime + stime of this process (all threads), in clock ticks.
fn self_cpu_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // after ')': state(0) ppid(1) ... utime(11) stime(12)
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

fn proc_name(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim().to_string())
}

/// All descendants of `root` (scan of /proc/*/stat).
fn descendants(root: u32) -> Vec<u32> {
    let mut parent_of: Vec<(u32, u32)> = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            // fields after the last ')' : state ppid ...
            if let Some(rest) = stat.rsplit_once(')').map(|x| x.1) {
                let mut it = rest.split_whitespace();
                let _state = it.next();
                if let Some(ppid) = it.next().and_then(|p| p.parse::<u32>().ok()) {
                    parent_of.push((pid, ppid));
                }
            }
        }
    }
    let mut out = Vec::new();
    let mut frontier = vec![root];
    while let Some(p) = frontier.pop() {
        for &(c, pp) in &parent_of {
            if pp == p && !out.contains(&c) {
                out.push(c);
                frontier.push(c);
            }
        }
    }
    out
}

fn sample_rss(pids: &[u32], children: bool) -> BTreeMap<u32, Option<u64>> {
    pids.iter()
        .map(|&pid| {
            let mut kb = rss_kb(pid);
            if children {
                if let Some(k) = kb.as_mut() {
                    *k += descendants(pid).into_iter().filter_map(rss_kb).sum::<u64>();
                }
            }
            (pid, kb)
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// output

fn now_f64() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn fmt_num(v: Option<&Value>, decimals: usize) -> String {
    match v.and_then(Value::as_f64) {
        Some(x) => format!("{x:.decimals$}"),
        None => "-".to_string(),
    }
}

fn print_table(report: &Value) {
    println!(
        "pyococtl bench against {}  (tag {}, {:.1} s)",
        report["server"].as_str().unwrap_or("?"),
        report["tag"].as_str().unwrap_or("?"),
        report["elapsed_sec"].as_f64().unwrap_or(0.0)
    );
    println!();
    println!(
        "{:<12} {:<8} {:>8} {:>8} {:>6} {:>5} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "scenario",
        "variant",
        "requests",
        "ok",
        "errors",
        "conc",
        "req/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "max ms"
    );
    let row = |scenario: &str, variant: &str, r: &Value| {
        let lat = &r["latency_ms"];
        println!(
            "{:<12} {:<8} {:>8} {:>8} {:>6} {:>5} {:>9} {:>9} {:>9} {:>9} {:>9}",
            scenario,
            variant,
            fmt_num(r.get("requests"), 0),
            fmt_num(r.get("ok"), 0),
            fmt_num(r.get("errors"), 0),
            fmt_num(r.get("concurrency"), 0),
            fmt_num(r.get("throughput_rps"), 1),
            fmt_num(lat.get("p50"), 2),
            fmt_num(lat.get("p90"), 2),
            fmt_num(lat.get("p99"), 2),
            fmt_num(lat.get("max"), 2),
        );
        if let Some(e) = r.get("first_error").and_then(Value::as_str) {
            println!("{:<12}   first error: {e}", "");
        }
    };
    let mut notes: Vec<String> = Vec::new();
    if let Some(results) = report["results"].as_object() {
        for (key, r) in results {
            let name = key.replace('_', "-");
            if let Some(e) = r.get("error").and_then(Value::as_str) {
                println!("{name:<12} FAILED: {e}");
                continue;
            }
            match key.as_str() {
                "list" => {
                    if let Some(vars) = r["variants"].as_object() {
                        for (vname, v) in vars {
                            row(&name, vname, v);
                        }
                    }
                    let mut note = format!(
                        "list: {} runs in the bucket",
                        fmt_num(r.get("runs_in_bucket"), 0)
                    );
                    if r["seeding"].is_object() {
                        note.push_str(&format!(
                            " ({} seeded in {} s)",
                            fmt_num(r["seeding"].get("seeded"), 0),
                            fmt_num(r["seeding"].get("seed_sec"), 1)
                        ));
                    }
                    notes.push(note);
                }
                "sse" => {
                    let lat = &r["notify_latency_ms"];
                    println!(
                        "{:<12} {:<8} {:>8} {:>8} {:>6} {:>5} {:>9} {:>9} {:>9} {:>9} {:>9}",
                        name,
                        "notify",
                        fmt_num(r.get("events"), 0),
                        fmt_num(r.get("received"), 0),
                        fmt_num(r.get("missed"), 0),
                        1,
                        "-",
                        fmt_num(lat.get("p50"), 2),
                        fmt_num(lat.get("p90"), 2),
                        fmt_num(lat.get("p99"), 2),
                        fmt_num(lat.get("max"), 2),
                    );
                    notes.push(format!(
                        "sse: latency from KV put ack to the snapshot event; first event after {} ms; {} reconnects",
                        fmt_num(r.get("first_event_ms"), 1),
                        fmt_num(r.get("reconnects"), 0)
                    ));
                }
                _ => row(&name, "-", r),
            }
        }
    }
    if let Some(rss) = report["rss"].as_array() {
        for p in rss {
            let mib = |v: &Value| match v.as_f64() {
                Some(kb) => format!("{:.1} MiB", kb / 1024.0),
                None => "n/a".to_string(),
            };
            notes.push(format!(
                "rss: pid {} ({}){}: before {}, after {}",
                p["pid"],
                p["name"].as_str().unwrap_or("?"),
                if p["include_children"].as_bool() == Some(true) {
                    " + children"
                } else {
                    ""
                },
                mib(&p["before_kb"]),
                mib(&p["after_kb"])
            ));
        }
    }
    if !notes.is_empty() {
        println!();
        for n in notes {
            println!("{n}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_nearest_rank() {
        let v: Vec<u64> = (1..=100).map(|x| x * 1000).collect();
        let s = latency_summary(&v);
        assert_eq!(s["p50"], json!(50.0));
        assert_eq!(s["p99"], json!(99.0));
        assert_eq!(s["max"], json!(100.0));
    }

    #[test]
    fn completions_keep_the_first_terminal_snapshot() {
        let c = Completions::default();
        let t = Instant::now();
        c.record("a", br#"{"status":"RUNNING"}"#, t);
        assert!(c.get("a").is_none());
        c.record("a", br#"{"status": "COMPLETED", "error": null}"#, t);
        c.record(
            "a",
            br#"{"status":"FAILED","error":"late"}"#,
            t + Duration::from_secs(1),
        );
        let a = c.get("a").unwrap();
        assert_eq!(a.status, "COMPLETED");
        assert_eq!(a.at, t);
        assert!(a.error.is_none());
        c.record("b", br#"{"status":"FAILED","error":"boom"}"#, t);
        assert_eq!(c.get("b").unwrap().error.as_deref(), Some("boom"));
        c.record("c", b"not json", t);
        assert!(c.get("c").is_none());
        assert_eq!(c.updates.load(Ordering::Relaxed), 5);
        c.record("d", br#"{"status":"completed"}"#, t);
        assert_eq!(c.get("d").unwrap().status, "COMPLETED");
    }

    #[tokio::test]
    async fn completions_wake_waiters_and_time_out() {
        let c = Arc::new(Completions::default());
        let c2 = c.clone();
        let waiter =
            tokio::spawn(
                async move { c2.wait("x", Instant::now() + Duration::from_secs(5)).await },
            );
        tokio::time::sleep(Duration::from_millis(20)).await;
        c.record("x", br#"{"status":"COMPLETED"}"#, Instant::now());
        assert_eq!(waiter.await.unwrap().unwrap().status, "COMPLETED");
        let none = c
            .wait("y", Instant::now() + Duration::from_millis(30))
            .await;
        assert!(none.is_none());
    }

    #[test]
    fn own_cpu_time_is_readable() {
        assert!(self_cpu_ticks().is_some());
    }

    #[test]
    fn seeded_snapshot_shape() {
        let s = pending_snapshot("id", "bench", "bench", 1.5);
        let keys: Vec<&str> = s.as_object().unwrap().keys().map(String::as_str).collect();
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
}
