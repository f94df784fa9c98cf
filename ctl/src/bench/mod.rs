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
//!
//! One file per scenario (`submit`, `list`, `sse`, `e2e`, `rss`), plus `seed` (runs written
//! into KV), `load` (the request loop) and `report` (percentiles and the table); this file holds
//! the flags, the NATS handles and the dispatch.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, ValueEnum};
use serde_json::{json, Map, Value};

use crate::{Cli, OutputFormat};

mod e2e;
mod list;
mod load;
mod report;
mod rss;
mod seed;
mod sse;
mod submit;

use report::{now_f64, print_table, round3};
use rss::{proc_name, sample_rss, self_cpu_ticks};

/// The contract's example single-flow `flow.yaml` (§4), used when `--workflow-file` is not given.
pub const EXAMPLE_FLOW_YAML: &str = pyoco_core::flow_yaml::EXAMPLE_FLOW_YAML;

const DEFAULT_SUBMIT_REQUESTS: u64 = 2000;

const DEFAULT_LIST_REQUESTS: u64 = 20;

const DEFAULT_SSE_EVENTS: u64 = 20;

const DEFAULT_E2E_RUNS: u64 = 100;

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
            Scenario::Submit => submit::scenario_submit(&ctx, false).await,
            Scenario::SubmitYaml => submit::scenario_submit(&ctx, true).await,
            Scenario::List => list::scenario_list(&ctx).await,
            Scenario::Sse => sse::scenario_sse(&ctx).await,
            Scenario::E2e => e2e::scenario_e2e(&ctx).await,
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
        OutputFormat::Json | OutputFormat::Plugins => {
            println!("{}", serde_json::to_string(&report)?)
        }
        OutputFormat::Table | OutputFormat::Status => print_table(&report),
    }
    if failed {
        bail!("at least one scenario failed");
    }
    Ok(())
}
