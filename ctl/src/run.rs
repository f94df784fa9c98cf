//! `pyococtl run …`: submit, follow, list and cancel runs over the gateway's HTTP API. The
//! replacement of pyoco-client's run commands: same flags where it had them, same output
//! (`json.dumps(obj, ensure_ascii=True)` lines, the same table), plus resumable watches, a live
//! view at a terminal and exit codes that tell how a run ended. Reference: docs/cli.md, "Runs".

use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde_json::{json, Map, Value};

use crate::client::{Client, CtlError, CtlResult};
use crate::{exit, Ctx, OutputFormat};

mod live;
use crate::output as out;
mod params;
pub(crate) mod pyjson;
mod table;
mod watch;

use watch::{End, Sink};

#[derive(Debug, Clone, Subcommand)]
pub enum RunCmd {
    /// Submit a run of a named flow (POST /runs) and print the answer; --watch follows it to the end.
    #[command(after_help = "Examples:
  pyococtl run submit --flow-name report --param day=2026-11-27 --param retries=3 --tag nightly
  pyococtl run submit --params-file params.yaml --params '{\"x\": 1}' --param x=2      # x = 2
  pyococtl run submit --flow-name report --idempotency-key nightly-2026-11-27 --timeout-sec 600 --watch

Output: the gateway's answer, {\"run_id\": \"…\", \"status\": \"PENDING\"}. With --watch, then the watch
output (see `pyococtl run watch --help`) and the exit code of the outcome: 0 COMPLETED, 3 FAILED,
4 CANCELLED, 5 --watch-timeout-sec ran out.")]
    Submit(SubmitArgs),
    /// Submit a single-flow flow.yaml as a run (POST /runs/yaml); --watch follows it to the end.
    #[command(after_help = "Examples:
  pyococtl run submit-yaml --workflow-file flow.yaml --flow-name main --tag default
  pyococtl run submit-yaml --workflow-file flow.yaml --flow-name main --watch

The run's params are the file's flow.defaults. Without --tag the gateway's default tag
(PYOCO_DEFAULT_TAG) routes the run.")]
    SubmitYaml(SubmitYamlArgs),
    /// Print a run's snapshot (GET /runs/{run_id}).
    #[command(after_help = "Examples:
  pyococtl run get 5c1e0b8e-8a4f-4f57-9a53-0d1f3f0b9a11
  pyococtl run get 5c1e0b8e-8a4f-4f57-9a53-0d1f3f0b9a11 --records | jq '.task_records'")]
    Get(GetArgs),
    /// Print a run's task states and records (GET /runs/{run_id}/tasks).
    #[command(after_help = "Example:
  pyococtl run tasks 5c1e0b8e-8a4f-4f57-9a53-0d1f3f0b9a11 | jq '.tasks'")]
    Tasks(TasksArgs),
    /// List runs, newest first (GET /runs): JSON (default) or a table.
    #[command(after_help = "Examples:
  pyococtl run list --status FAILED --limit 20 --output table
  pyococtl run list --flow report --all > all-report-runs.json
  pyococtl run list --updated-after 1795813670.0            # page form: {\"items\": […], \"next_cursor\": …}
  pyococtl run list --cursor \"$NEXT\" --output table          # the next page

JSON output: a bare array, or {\"items\", \"next_cursor\"} when --updated-after, --cursor or
--workflow-yaml-sha256 is given (page form). --all follows next_cursor to the end and prints
everything in the same form (next_cursor null).")]
    List(ListArgs),
    /// Follow a run as it progresses (GET /runs/{run_id}/watch, Server-Sent Events).
    #[command(after_help = "Examples:
  pyococtl run watch 5c1e0b8e-8a4f-4f57-9a53-0d1f3f0b9a11                  # live view at a terminal
  pyococtl run watch 5c1e0b8e-8a4f-4f57-9a53-0d1f3f0b9a11 --until-terminal --timeout-sec 600 && echo done
  pyococtl run watch 5c1e0b8e-8a4f-4f57-9a53-0d1f3f0b9a11 --output status | cut -f3

Output: at a terminal (no --output): a live view redrawn in place. Piped, or --output json: one
{\"event\": …, \"data\": …} line per event. --output status: <ts>TAB<event>TAB<status or ->TAB<run_id>.
--output table: the live view even when piped.
The watch ends at the terminal snapshot, after --max-events events, or after --timeout-sec
seconds. A dropped connection is re-opened with Last-Event-ID. With --until-terminal the exit code
tells the outcome: 0 COMPLETED, 3 FAILED, 4 CANCELLED, 5 --timeout-sec ran out.")]
    Watch(WatchArgs),
    /// Cancel a run (POST /runs/{run_id}/cancel); --wait follows it until it ends.
    #[command(after_help = "Examples:
  pyococtl run cancel 5c1e0b8e-8a4f-4f57-9a53-0d1f3f0b9a11
  pyococtl run cancel --run-id 5c1e0b8e-8a4f-4f57-9a53-0d1f3f0b9a11 --wait --timeout-sec 60

Output: the snapshot after the request; with --wait, the final snapshot. Exit codes with --wait:
0 the run ended CANCELLED (or had already COMPLETED), 3 it ended FAILED, 5 still not finished
after --timeout-sec (ERR-PYOCO-CANCEL: wait timeout).")]
    Cancel(CancelArgs),
}

/// `--watch` for the submit commands.
#[derive(Debug, Clone, Args)]
pub struct SubmitWatch {
    /// After submitting, follow the run until it ends (like `run watch --until-terminal`); the exit code tells the outcome.
    #[arg(long)]
    pub watch: bool,
    /// With --watch: give up after this many seconds (exit 5); 0 = wait until the run ends.
    #[arg(long, value_name = "SECONDS", default_value_t = 0, requires = "watch")]
    pub watch_timeout_sec: u64,
    /// Print only the run id (for scripts: `run_id=$(pyococtl run submit … -q)`).
    #[arg(short, long, conflicts_with = "watch")]
    pub quiet: bool,
}

#[derive(Debug, Clone, Args)]
pub struct SubmitArgs {
    /// Name of the flow the worker resolves.
    #[arg(long, default_value = "main")]
    pub flow_name: String,
    /// Params as a JSON object, e.g. '{"x": 1}' (overrides --params-file).
    #[arg(long, value_name = "JSON")]
    pub params: Option<String>,
    /// Params from a file holding a JSON or YAML mapping (overridden by --params and --param).
    #[arg(long, value_name = "FILE")]
    pub params_file: Option<PathBuf>,
    /// One param, repeatable; the value is JSON when it parses (1, true, [1,2]) else a string (overrides --params).
    #[arg(long, value_name = "KEY=VALUE")]
    pub param: Vec<String>,
    /// Routing tag: workers listening on it run the run [default: the gateway's PYOCO_DEFAULT_TAG].
    #[arg(long)]
    pub tag: Option<String>,
    /// Display tags, comma-separated (default: [tag]).
    #[arg(long, value_name = "A,B")]
    pub tags: Option<String>,
    /// Idempotency-Key header: a repeated key (within 24 h) returns the first run instead of a new one.
    #[arg(long, value_name = "KEY")]
    pub idempotency_key: Option<String>,
    /// Run timeout in seconds, enforced by the worker (body field timeout_sec; pyoco-server 0.5 ignores it).
    #[arg(long, value_name = "SECONDS")]
    pub timeout_sec: Option<f64>,
    #[command(flatten)]
    pub watch: SubmitWatch,
}

#[derive(Debug, Clone, Args)]
pub struct SubmitYamlArgs {
    /// The flow.yaml to submit.
    #[arg(long, value_name = "FILE")]
    pub workflow_file: PathBuf,
    /// Name of the run's flow.
    #[arg(long)]
    pub flow_name: String,
    /// Routing tag [default: the gateway's PYOCO_DEFAULT_TAG] (pyoco-client required it).
    #[arg(long)]
    pub tag: Option<String>,
    /// Idempotency-Key header: a repeated key (within 24 h) returns the first run instead of a new one.
    #[arg(long, value_name = "KEY")]
    pub idempotency_key: Option<String>,
    #[command(flatten)]
    pub watch: SubmitWatch,
}

#[derive(Debug, Clone, Args)]
pub struct GetArgs {
    /// The run's id (as printed by `run submit` and `run list`).
    pub run_id: String,
    /// Include task_records (include=records).
    #[arg(long)]
    pub records: bool,
}

#[derive(Debug, Clone, Args)]
pub struct TasksArgs {
    /// The run's id (as printed by `run submit` and `run list`).
    pub run_id: String,
}

#[derive(Debug, Clone, Args)]
pub struct ListArgs {
    /// Only runs with this status (exact: PENDING, RUNNING, COMPLETED, FAILED, CANCELLING, CANCELLED).
    #[arg(long)]
    pub status: Option<String>,
    /// Only runs of this flow name.
    #[arg(long)]
    pub flow: Option<String>,
    /// Only runs with this routing tag.
    #[arg(long)]
    pub tag: Option<String>,
    /// Only runs submitted with this flow.yaml (hex SHA-256); selects the page form.
    #[arg(long, value_name = "HEX")]
    pub workflow_yaml_sha256: Option<String>,
    /// Whole snapshots instead of summaries (include=full).
    #[arg(long)]
    pub full: bool,
    /// Items per request, 1..200 [gateway default: 50; with --all: 200].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=200))]
    pub limit: Option<u32>,
    /// Only runs updated after this unix time (float seconds); selects the page form.
    #[arg(long, value_name = "UNIX_TIME")]
    pub updated_after: Option<f64>,
    /// Continue after this next_cursor of an earlier page; selects the page form (even empty).
    #[arg(long)]
    pub cursor: Option<String>,
    /// Follow next_cursor until the last page and print every item (--limit = page size).
    #[arg(long)]
    pub all: bool,
}

#[derive(Debug, Clone, Args)]
pub struct WatchArgs {
    /// The run's id (as printed by `run submit` and `run list`).
    pub run_id: String,
    /// Stop at the terminal snapshot and exit with its outcome (0 COMPLETED, 3 FAILED, 4 CANCELLED; 5 on timeout).
    #[arg(long)]
    pub until_terminal: bool,
    /// Skip snapshots whose updated_at is older than this unix time.
    #[arg(long, value_name = "UNIX_TIME")]
    pub since: Option<f64>,
    /// How long to watch, in seconds; the gateway is asked for at most 600 s per connection and
    /// the watch reconnects after that. 0 = no limit.
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    pub timeout_sec: u64,
    /// Include task_records in snapshots (always on in the live view).
    #[arg(long)]
    pub records: bool,
    /// Stop after this many events (0 = no limit).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub max_events: u64,
}

#[derive(Debug, Clone, Args)]
pub struct CancelArgs {
    /// The run to cancel (or --run-id, as pyoco-client).
    #[arg(value_name = "RUN_ID")]
    pub id: Option<String>,
    /// The run to cancel (pyoco-client's spelling).
    #[arg(long = "run-id", value_name = "RUN_ID")]
    pub run_id: Option<String>,
    /// Wait until the run has ended and print the final snapshot.
    #[arg(long)]
    pub wait: bool,
    /// With --wait: give up after this many seconds (exit 5); 0 = no limit.
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    pub timeout_sec: u64,
}

pub async fn dispatch(ctx: &Ctx, cmd: &RunCmd) -> CtlResult<u8> {
    match cmd {
        RunCmd::Submit(a) => submit(ctx, a).await,
        RunCmd::SubmitYaml(a) => submit_yaml(ctx, a).await,
        RunCmd::Get(a) => {
            json_only(ctx, "run get", "pyococtl run get RUN_ID | jq .status")?;
            let query: Vec<(&str, String)> = if a.records {
                vec![("include", "records".into())]
            } else {
                vec![]
            };
            let v = ctx
                .client()?
                .get_json(&run_path(&a.run_id, ""), &query)
                .await?;
            out::line(&pyjson::dumps(&v))?;
            Ok(exit::OK)
        }
        RunCmd::Tasks(a) => {
            json_only(ctx, "run tasks", "pyococtl run tasks RUN_ID | jq .tasks")?;
            let v = ctx
                .client()?
                .get_json(&run_path(&a.run_id, "/tasks"), &[])
                .await?;
            out::line(&pyjson::dumps(&v))?;
            Ok(exit::OK)
        }
        RunCmd::List(a) => list(ctx, a).await,
        RunCmd::Watch(a) => watch_cmd(ctx, a).await,
        RunCmd::Cancel(a) => cancel(ctx, a).await,
    }
}

/// `/runs/<run_id><suffix>` with the id percent-encoded as one path segment.
fn run_path(run_id: &str, suffix: &str) -> String {
    format!("/runs/{}{suffix}", encode_segment(run_id))
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub(crate) fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Commands whose only output is JSON refuse `--output table|status` instead of ignoring it.
fn json_only(ctx: &Ctx, what: &str, example: &str) -> CtlResult<()> {
    match ctx.cli.output {
        None | Some(OutputFormat::Json) => Ok(()),
        Some(other) => Err(CtlError::usage(
            format!(
                "{what} prints JSON only (--output {})",
                format!("{other:?}").to_lowercase()
            ),
            example,
        )),
    }
}

fn check_tag(tag: &Option<String>, example: &str) -> CtlResult<()> {
    if let Some(t) = tag {
        let ok = !t.is_empty()
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !ok {
            return Err(CtlError::usage(
                format!("--tag must be letters, digits, '_' or '-' ('{t}')"),
                example,
            ));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// submit

async fn submit(ctx: &Ctx, a: &SubmitArgs) -> CtlResult<u8> {
    const EXAMPLE: &str = "pyococtl run submit --flow-name main --param x=1 --tag default";
    if !a.watch.watch {
        json_only(ctx, "run submit", "pyococtl --output status run submit --flow-name main --watch   # --output applies to --watch")?;
    }
    if a.flow_name.trim().is_empty() {
        return Err(CtlError::usage("--flow-name is empty", EXAMPLE));
    }
    check_tag(&a.tag, EXAMPLE)?;
    if let Some(t) = a.timeout_sec {
        if !(t > 0.0 && t.is_finite()) {
            return Err(CtlError::usage(
                format!("--timeout-sec must be a number of seconds > 0 ({t})"),
                EXAMPLE,
            ));
        }
    }
    let params = params::build(a.params_file.as_deref(), a.params.as_deref(), &a.param)?;
    let mode = a.watch.watch.then(|| watch_mode(ctx)).transpose()?;

    let mut body = Map::new();
    body.insert("flow_name".into(), json!(a.flow_name));
    body.insert("params".into(), Value::Object(params));
    if let Some(t) = &a.tag {
        body.insert("tag".into(), json!(t));
    }
    if let Some(tags) = split_tags(a.tags.as_deref()) {
        body.insert("tags".into(), json!(tags));
    }
    if let Some(t) = a.timeout_sec {
        body.insert("timeout_sec".into(), json!(t));
    }
    let client = ctx.client()?;
    let mut req = client
        .request(reqwest::Method::POST, "/runs")
        .json(&Value::Object(body));
    if let Some(k) = &a.idempotency_key {
        req = req.header("Idempotency-Key", k.as_str());
    }
    let resp = client.json(req).await?;
    print_submitted(&resp, a.watch.quiet)?;
    match mode {
        None => Ok(exit::OK),
        Some(mode) => watch_submitted(&client, &resp, a.watch.watch_timeout_sec, mode).await,
    }
}

/// The gateway's answer to a submit: as pyoco-client prints it, or only the run id (`-q`).
fn print_submitted(resp: &Value, quiet: bool) -> CtlResult<()> {
    match resp.get("run_id").and_then(Value::as_str) {
        Some(id) if quiet => out::line(id),
        _ => out::line(&pyjson::dumps(resp)),
    }
}

/// pyoco-client's `--tags`: split on `,`, trimmed, empties dropped; nothing left → not sent.
fn split_tags(raw: Option<&str>) -> Option<Vec<String>> {
    let tags: Vec<String> = raw?
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(String::from)
        .collect();
    (!tags.is_empty()).then_some(tags)
}

async fn submit_yaml(ctx: &Ctx, a: &SubmitYamlArgs) -> CtlResult<u8> {
    const EXAMPLE: &str =
        "pyococtl run submit-yaml --workflow-file flow.yaml --flow-name main --tag default";
    if !a.watch.watch {
        json_only(ctx, "run submit-yaml", "pyococtl --output status run submit-yaml --workflow-file flow.yaml --flow-name main --watch   # --output applies to --watch")?;
    }
    check_tag(&a.tag, EXAMPLE)?;
    if a.flow_name.trim().is_empty() {
        return Err(CtlError::usage("--flow-name is empty", EXAMPLE));
    }
    let yaml = std::fs::read(&a.workflow_file).map_err(|e| {
        CtlError::usage(
            format!(
                "cannot read --workflow-file {}: {e}",
                a.workflow_file.display()
            ),
            EXAMPLE,
        )
    })?;
    let mode = a.watch.watch.then(|| watch_mode(ctx)).transpose()?;
    let part = reqwest::multipart::Part::bytes(yaml)
        .file_name("flow.yaml")
        .mime_str("application/x-yaml")
        .map_err(|e| CtlError::new(exit::ERROR, format!("ERR-PYOCO-HTTP: bad request: {e}")))?;
    let mut form = reqwest::multipart::Form::new()
        .part("workflow", part)
        .text("flow_name", a.flow_name.clone());
    if let Some(t) = &a.tag {
        form = form.text("tag", t.clone());
    }
    let client = ctx.client()?;
    let mut req = client
        .request(reqwest::Method::POST, "/runs/yaml")
        .multipart(form);
    if let Some(k) = &a.idempotency_key {
        req = req.header("Idempotency-Key", k.as_str());
    }
    let resp = client.json(req).await?;
    print_submitted(&resp, a.watch.quiet)?;
    match mode {
        None => Ok(exit::OK),
        Some(mode) => watch_submitted(&client, &resp, a.watch.watch_timeout_sec, mode).await,
    }
}

async fn watch_submitted(
    client: &Client,
    resp: &Value,
    timeout_sec: u64,
    mode: Mode,
) -> CtlResult<u8> {
    let run_id = resp.get("run_id").and_then(Value::as_str).ok_or_else(|| {
        CtlError::new(
            exit::ERROR,
            format!("ERR-PYOCO-HTTP: the gateway's answer has no run_id: {resp}"),
        )
    })?;
    let spec = watch::Spec {
        run_id: run_id.to_string(),
        include_records: mode == Mode::Live,
        since: None,
        timeout_sec,
        until_terminal: true,
        max_events: 0,
        fail_fast: false,
    };
    follow_and_exit(client, &spec, mode, "--watch-timeout-sec").await
}

// ---------------------------------------------------------------------------------------------
// list

async fn list(ctx: &Ctx, a: &ListArgs) -> CtlResult<u8> {
    let output = ctx.output(OutputFormat::Json);
    if output == OutputFormat::Status {
        return Err(CtlError::usage(
            "run list prints json or table (--output status)",
            "pyococtl run list --output table",
        ));
    }
    let sha = a.workflow_yaml_sha256.as_deref().filter(|s| !s.is_empty());
    let page_form = a.updated_after.is_some() || a.cursor.is_some() || sha.is_some();
    let mut base: Vec<(&str, String)> = Vec::new();
    for (k, v) in [("status", &a.status), ("flow", &a.flow), ("tag", &a.tag)] {
        if let Some(v) = v.as_deref().filter(|v| !v.is_empty()) {
            base.push((k, v.to_string()));
        }
    }
    if a.full {
        base.push(("include", "full".into()));
    }
    match (a.limit, a.all) {
        (Some(l), _) => base.push(("limit", l.to_string())),
        (None, true) => base.push(("limit", "200".into())),
        (None, false) => {}
    }
    if let Some(u) = a.updated_after {
        base.push(("updated_after", pyjson::float_repr(u)));
    }
    if let Some(s) = sha {
        base.push(("workflow_yaml_sha256", s.to_string()));
    }
    let client = ctx.client()?;
    let mut cursor = a.cursor.clone();
    // --all needs next_cursor, i.e. the page form; an empty cursor asks for it without filtering.
    if a.all && cursor.is_none() {
        cursor = Some(String::new());
    }
    let mut items: Vec<Value> = Vec::new();
    let mut next: Value = Value::Null;
    let mut body_as_is: Option<Value> = None;
    loop {
        let mut q = base.clone();
        if let Some(c) = &cursor {
            q.push(("cursor", c.clone()));
        }
        let body = client.get_json("/runs", &q).await?;
        let (page, page_next) = match &body {
            Value::Array(arr) => (arr.clone(), Value::Null),
            Value::Object(m) => (
                m.get("items")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default(),
                m.get("next_cursor").cloned().unwrap_or(Value::Null),
            ),
            other => {
                return Err(CtlError::new(
                    exit::ERROR,
                    format!("ERR-PYOCO-HTTP: unexpected answer to GET /runs: {other}"),
                ));
            }
        };
        items.extend(page);
        let next_str = page_next
            .as_str()
            .filter(|c| !c.is_empty())
            .map(String::from);
        if !a.all {
            next = page_next;
            body_as_is = Some(body);
            break;
        }
        match next_str {
            Some(c) if Some(&c) != cursor.as_ref() => cursor = Some(c),
            Some(c) => {
                return Err(CtlError::new(
                    exit::ERROR,
                    format!(
                        "ERR-PYOCO-HTTP: the gateway returned the same next_cursor twice ({c})"
                    ),
                ));
            }
            None => break,
        }
    }

    match output {
        OutputFormat::Table => {
            let time = if out::stdout_is_terminal() {
                table::TimeFormat::Local
            } else {
                table::TimeFormat::Raw
            };
            let rows: Vec<Vec<String>> = items.iter().map(|i| table::row(i, time)).collect();
            let mut text = table::render(&rows);
            if page_form {
                if let Some(c) = next.as_str().filter(|c| !c.is_empty()) {
                    text.push_str(&format!("next_cursor: {c}\n"));
                }
            }
            out::write(&text)?;
        }
        _ => {
            let v = match (page_form, body_as_is) {
                // One request: print what pyoco-client printed — the array (`list`), the page as
                // the gateway sent it, or a bare array wrapped as a page (`list-vnext`).
                (false, Some(_)) => Value::Array(items),
                (true, Some(body @ Value::Object(_))) => body,
                (true, _) => json!({"items": items, "next_cursor": next}),
                (false, None) => Value::Array(items),
            };
            out::line(&pyjson::dumps(&v))?;
        }
    }
    Ok(exit::OK)
}

// ---------------------------------------------------------------------------------------------
// watch

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Json,
    Status,
    Live,
}

/// No `--output`: the live view at a terminal, JSON lines otherwise.
fn watch_mode(ctx: &Ctx) -> CtlResult<Mode> {
    Ok(match ctx.cli.output {
        None if out::stdout_is_terminal() => Mode::Live,
        None | Some(OutputFormat::Json | OutputFormat::Plugins) => Mode::Json,
        Some(OutputFormat::Status) => Mode::Status,
        Some(OutputFormat::Table) => Mode::Live,
    })
}

async fn watch_cmd(ctx: &Ctx, a: &WatchArgs) -> CtlResult<u8> {
    let mode = watch_mode(ctx)?;
    let spec = watch::Spec {
        run_id: a.run_id.clone(),
        include_records: a.records || mode == Mode::Live,
        since: a.since,
        timeout_sec: a.timeout_sec,
        until_terminal: a.until_terminal,
        max_events: a.max_events,
        fail_fast: true,
    };
    follow_and_exit(&ctx.client()?, &spec, mode, "--timeout-sec").await
}

async fn follow_and_exit(
    client: &Client,
    spec: &watch::Spec,
    mode: Mode,
    timeout_flag: &str,
) -> CtlResult<u8> {
    let mut sink: Box<dyn Sink> = match mode {
        Mode::Json => Box::new(watch::JsonLines),
        Mode::Status => Box::new(watch::StatusLines),
        Mode::Live => Box::new(live::Live::new(&spec.run_id)),
    };
    let end = watch::follow(client, spec, sink.as_mut()).await?;
    sink.finish(&end)?;
    match end {
        End::Terminal { status, .. } if spec.until_terminal => Ok(exit::for_status(&status)),
        End::Deadline {
            last_status,
            last_error,
        } if spec.until_terminal => {
            let still = last_status.as_deref().unwrap_or("not seen");
            let mut msg = format!(
                "ERR-PYOCO-WATCH: timeout\n- reason: run {} is still {still} after {timeout_flag} {}",
                spec.run_id, spec.timeout_sec
            );
            if let Some(e) = last_error {
                msg.push_str(&format!("\n- last connection error: {e}"));
            }
            msg.push_str(&format!("\n- hint: raise {timeout_flag} (0 = no limit), or look at the run: pyococtl run get {}", spec.run_id));
            Err(CtlError::new(exit::TIMEOUT, msg))
        }
        _ => Ok(exit::OK),
    }
}

// ---------------------------------------------------------------------------------------------
// cancel

async fn cancel(ctx: &Ctx, a: &CancelArgs) -> CtlResult<u8> {
    const EXAMPLE: &str = "pyococtl run cancel 5c1e0b8e-8a4f-4f57-9a53-0d1f3f0b9a11 --wait";
    json_only(ctx, "run cancel", EXAMPLE)?;
    let run_id = match (&a.id, &a.run_id) {
        (Some(x), Some(y)) if x != y => {
            return Err(CtlError::usage(
                format!("two different runs given: '{x}' and --run-id '{y}'"),
                EXAMPLE,
            ));
        }
        (Some(x), _) | (None, Some(x)) => x.clone(),
        (None, None) => {
            return Err(CtlError::usage(
                "the run to cancel is missing (RUN_ID or --run-id)",
                EXAMPLE,
            ))
        }
    };
    let client = ctx.client()?;
    let snap = client
        .json(client.request(reqwest::Method::POST, &run_path(&run_id, "/cancel")))
        .await?;
    if !a.wait {
        out::line(&pyjson::dumps(&snap))?;
        return Ok(exit::OK);
    }
    let status = snap
        .get("status")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_uppercase();
    let final_snap = if pyoco_core::wire::run_status::is_terminal(&status) {
        snap
    } else {
        let spec = watch::Spec {
            run_id: run_id.clone(),
            include_records: false,
            since: None,
            timeout_sec: a.timeout_sec,
            until_terminal: true,
            max_events: 0,
            fail_fast: false,
        };
        match watch::follow(&client, &spec, &mut watch::Quiet).await? {
            End::Terminal { .. } => client.get_json(&run_path(&run_id, ""), &[]).await?,
            End::Deadline { last_status, .. } | End::MaxEvents { last_status } => {
                return Err(CtlError::new(
                    exit::TIMEOUT,
                    format!(
                        "ERR-PYOCO-CANCEL: wait timeout\n- reason: run {run_id} is still {} after --timeout-sec {}\n- hint: retry the cancel, or look at the run and its worker: pyococtl run get {run_id}",
                        last_status.as_deref().unwrap_or(&status),
                        a.timeout_sec
                    ),
                ));
            }
        }
    };
    out::line(&pyjson::dumps(&final_snap))?;
    let final_status = final_snap
        .get("status")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_uppercase();
    Ok(match final_status.as_str() {
        "CANCELLED" => exit::OK,
        "COMPLETED" => {
            eprintln!("pyococtl: run {run_id} had already COMPLETED; nothing was cancelled");
            exit::OK
        }
        "FAILED" => {
            eprintln!("pyococtl: run {run_id} ended FAILED before the cancel took effect");
            exit::RUN_FAILED
        }
        other => {
            return Err(CtlError::new(
                exit::ERROR,
                format!("ERR-PYOCO-CANCEL: unexpected final status {other:?} of run {run_id}"),
            ));
        }
    })
}
