//! `pyococtl dlq list|show|replay|purge`: the dead letters of stream `PYOCO_DLQ` (subjects
//! `pyoco.dlq.<tag>`, contract §2.6), read and changed directly on NATS.
//!
//! The original can only write dead letters; looking after them is ours. Replay queues the
//! original job again: the letter's `job` field when it has one (letters of our worker), else
//! a job rebuilt from the letter and the run snapshot (letters of the original worker); a
//! flow.yaml run without `job` cannot be rebuilt because its YAML is kept nowhere else.
//! Order of a replay: reset the snapshot to PENDING (compare-and-set), publish the job with
//! `Nats-Msg-Id: <run_id>-replay-<seq>`, delete the letter. The reset comes first because a
//! worker acknowledges a job whose run is already terminal without running it; a failed
//! publish puts the old snapshot back.

use pyoco_core::kv::{Decision, ModifyError};
use pyoco_core::wire::fields;
use pyoco_core::wire::DeadLetter;
use pyoco_core::wire::JobMessage;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, kv, stream, Context};
use bytes::Bytes;
use clap::Subcommand;
use futures::StreamExt;
use pyoco_core::json::to_ascii_vec;
use pyoco_core::resources::Names;
use pyoco_core::wire::{is_valid_kv_key, is_valid_tag, run_status, str_field, Doc};
use serde_json::{json, Map, Value};

use crate::client::{connect_nats, nats_error, CtlError, CtlResult};
use crate::output::{
    local_time, one_line, print_json, render_table, stdout_is_terminal, wants_table, LastColumn,
};
use crate::{exit, Ctx, OutputFormat};

#[derive(Debug, Clone, Subcommand)]
pub enum DlqCmd {
    /// List dead letters, newest first: a table on a terminal, JSON otherwise.
    #[command(
        after_help = "Table columns: SEQ (stream sequence, for show/replay), TIME (local), TAG, REASON, RUN ID, ERROR (cut to one line).\n\
JSON: [{\"seq\", \"time\", \"subject\", \"tag\", \"reason\", \"run_id\", \"flow_name\", \"error\", \"worker_id\", \"has_job\"}] with the whole error.\n\n\
Examples:\n  pyococtl dlq list\n  pyococtl dlq list --tag gpu --reason execution_error --limit 20"
    )]
    List(ListArgs),
    /// Print one dead letter, the whole message as stored (pretty on a terminal).
    Show {
        /// Stream sequence of the letter (`dlq list` shows it).
        seq: u64,
    },
    /// Queue the run of a dead letter again (or of all matching letters), then delete the letter.
    #[command(
        after_help = "The job queued is the letter's `job` field when present (letters written by pyoco-worker in Rust, \
flow.yaml runs included); otherwise it is rebuilt from the letter and the run snapshot (flow_name, tag, tags, tenant, params). \
A flow.yaml run whose letter has no `job` cannot be rebuilt (the YAML is not kept): submit it again with `pyococtl run submit-yaml`. \
invalid_job letters are never replayed (they hold a message that was not a job). Only FAILED or CANCELLED runs are replayed.\n\
The run snapshot goes back to PENDING (tasks, times, error and cancel fields cleared) and records replayed_at, replay_count and \
replayed_from_dlq_seq; the job is published with Nats-Msg-Id <run_id>-replay-<seq>.\n\n\
Output (JSON when not on a terminal): one object {\"seq\", \"run_id\", \"tag\", \"subject\", \"msg_id\", \"source\": \"job\"|\"rebuilt\", \"replay_count\", \"dlq_deleted\"}; \
with --all {\"replayed\": [...], \"skipped\": [{\"seq\", \"run_id\", \"reason\", \"why\"}], \"failed\": [{\"seq\", \"run_id\", \"error\"}]}.\n\
Exit: 0 replayed (with --all: nothing failed; skipped letters are reported, not errors); 1 not replayed, not found, or NATS failure.\n\n\
Examples:\n  pyococtl dlq replay 42\n  pyococtl dlq replay --all --tag gpu --reason execution_error"
    )]
    Replay(ReplayArgs),
    /// Delete dead letters: all of them, or those matching --tag / --reason. Needs --confirm.
    #[command(
        after_help = "Without --confirm nothing is deleted: the command says how many letters would go and exits 2.\n\
Output (JSON when not on a terminal): {\"purged\": N, \"stream\": \"PYOCO_DLQ\", \"tag\": …, \"reason\": …}.\n\n\
Examples:\n  pyococtl dlq purge --confirm --reason invalid_job\n  pyococtl dlq purge --confirm"
    )]
    Purge(PurgeArgs),
}

#[derive(Debug, Clone, clap::Args)]
pub struct ListArgs {
    /// Only letters of this tag (subject pyoco.dlq.<tag>).
    #[arg(long)]
    pub tag: Option<String>,
    /// Only letters with this reason (flow_not_found, execution_error, invalid_job, max_deliver_exceeded).
    #[arg(long)]
    pub reason: Option<String>,
    /// At most this many letters, the newest (0 = all).
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
}

#[derive(Debug, Clone, clap::Args)]
pub struct ReplayArgs {
    /// Stream sequence of the letter to replay.
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    pub seq: Option<u64>,
    /// Replay every letter (matching --tag / --reason), oldest first.
    #[arg(long)]
    pub all: bool,
    /// With --all: only letters of this tag.
    #[arg(long)]
    pub tag: Option<String>,
    /// With --all: only letters with this reason.
    #[arg(long)]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, clap::Args)]
pub struct PurgeArgs {
    /// Really delete.
    #[arg(long)]
    pub confirm: bool,
    /// Only letters of this tag.
    #[arg(long)]
    pub tag: Option<String>,
    /// Only letters with this reason.
    #[arg(long)]
    pub reason: Option<String>,
}

pub async fn dispatch(ctx: &Ctx, cmd: &DlqCmd) -> CtlResult<u8> {
    match cmd {
        DlqCmd::List(a) => list(ctx, a).await,
        DlqCmd::Show { seq } => show(ctx, *seq).await,
        DlqCmd::Replay(a) => replay(ctx, a).await,
        DlqCmd::Purge(a) => purge(ctx, a).await,
    }
}

// ---------------------------------------------------------------------------------------------
// Reading letters

/// The DLQ stream (absent until something was dead-lettered or a daemon created it).
struct Dlq {
    url: String,
    js: Context,
    names: Names,
    stream: Option<stream::Stream>,
}

/// One dead letter.
struct Letter {
    seq: u64,
    subject: String,
    tag: String,
    /// When the stream stored it (unix s).
    published: f64,
    payload: Bytes,
    doc: Option<Doc>,
    /// The same document read as a dead letter (None when not a JSON object).
    dl: Option<DeadLetter>,
}

impl Letter {
    fn new(names: &Names, seq: u64, subject: &str, published_ns: i128, payload: Bytes) -> Letter {
        let prefix = format!("{}.", names.dlq_subject_prefix);
        let tag = subject
            .strip_prefix(&prefix)
            .unwrap_or_else(|| subject.rsplit('.').next().unwrap_or(subject))
            .to_string();
        let doc = serde_json::from_slice::<Value>(&payload)
            .ok()
            .and_then(|v| match v {
                Value::Object(m) => Some(m),
                _ => None,
            });
        let dl = DeadLetter::from_slice(&payload);
        Letter {
            seq,
            subject: subject.to_string(),
            tag,
            published: published_ns as f64 / 1e9,
            payload,
            doc,
            dl,
        }
    }

    fn field(&self, k: &str) -> Option<&str> {
        self.dl.as_ref().and_then(|d| d.str(k))
    }

    fn reason(&self) -> Option<&str> {
        self.field(fields::dlq::REASON)
    }

    fn run_id(&self) -> Option<&str> {
        self.field(fields::dlq::RUN_ID).filter(|s| !s.is_empty())
    }

    /// The letter's own `timestamp`, else the stream's time.
    fn time(&self) -> f64 {
        self.dl
            .as_ref()
            .and_then(DeadLetter::timestamp)
            .unwrap_or(self.published)
    }

    fn has_job(&self) -> bool {
        self.dl.as_ref().and_then(DeadLetter::job).is_some()
    }

    fn matches(&self, reason: Option<&str>) -> bool {
        reason.map(|r| self.reason() == Some(r)).unwrap_or(true)
    }

    fn summary(&self) -> Value {
        json!({
            "seq": self.seq,
            "time": self.time(),
            "subject": self.subject,
            "tag": self.tag,
            "reason": self.reason(),
            "run_id": self.run_id(),
            "flow_name": self.field(fields::dlq::FLOW_NAME),
            "error": self.dl.as_ref().and_then(|d| d.get(fields::dlq::ERROR)).cloned().unwrap_or(Value::Null),
            "worker_id": self.field(fields::dlq::WORKER_ID),
            "has_job": self.has_job(),
        })
    }
}

fn check_tag(tag: Option<&String>, example: &str) -> CtlResult<()> {
    match tag {
        Some(t) if !is_valid_tag(t) => Err(CtlError::usage(
            format!("--tag {t:?}: a tag is 1+ characters from A-Z, a-z, 0-9, '_' and '-'"),
            example,
        )),
        _ => Ok(()),
    }
}

impl Dlq {
    async fn open(ctx: &Ctx) -> CtlResult<Dlq> {
        let url = ctx.nats_url();
        let client = connect_nats(&url, &ctx.nats_auth()?).await?;
        let js = jetstream::new(client);
        let names = Names::from_config(&ctx.config);
        let stream = match js.get_stream(&names.dlq_stream).await {
            Ok(s) => Some(s),
            Err(e) => match e.kind() {
                jetstream::context::GetStreamErrorKind::JetStream(j)
                    if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND =>
                {
                    None
                }
                _ => {
                    return Err(nats_error(
                        &url,
                        &format!("cannot read stream {}", names.dlq_stream),
                        &e,
                    ))
                }
            },
        };
        Ok(Dlq {
            url,
            js,
            names,
            stream,
        })
    }

    fn fail(&self, what: &str, e: &dyn std::fmt::Display) -> CtlError {
        nats_error(&self.url, what, e)
    }

    /// Every letter (of `tag`), oldest first, read with one ordered consumer.
    async fn load(&self, tag: Option<&str>) -> CtlResult<Vec<Letter>> {
        let Some(stream) = &self.stream else {
            return Ok(vec![]);
        };
        let failed = |e: &dyn std::fmt::Display| {
            self.fail(
                &format!("cannot read the dead letters of {}", self.names.dlq_stream),
                e,
            )
        };
        let consumer = stream
            .create_consumer(consumer::push::OrderedConfig {
                deliver_subject: self.js.client().new_inbox(),
                description: Some("pyococtl dlq".into()),
                filter_subject: tag.map(|t| self.names.dlq_subject(t)).unwrap_or_default(),
                deliver_policy: consumer::DeliverPolicy::All,
                replay_policy: consumer::ReplayPolicy::Instant,
                ..Default::default()
            })
            .await
            .map_err(|e| failed(&e))?;
        let mut out = Vec::new();
        if consumer.cached_info().num_pending == 0 {
            return Ok(out);
        }
        let mut messages = consumer.messages().await.map_err(|e| failed(&e))?;
        loop {
            match tokio::time::timeout(Duration::from_secs(10), messages.next()).await {
                Ok(Some(Ok(m))) => {
                    let info = m.info().map_err(|e| failed(&e))?;
                    let (seq, pending, ns) = (
                        info.stream_sequence,
                        info.pending,
                        info.published.unix_timestamp_nanos(),
                    );
                    out.push(Letter::new(
                        &self.names,
                        seq,
                        m.subject.as_str(),
                        ns,
                        m.payload.clone(),
                    ));
                    if pending == 0 {
                        return Ok(out);
                    }
                }
                Ok(Some(Err(e))) => return Err(failed(&e)),
                Ok(None) => return Ok(out),
                Err(_) => return Err(failed(&"no message for 10 s while reading")),
            }
        }
    }

    /// The letter with this sequence, if it exists.
    async fn get(&self, seq: u64) -> CtlResult<Option<Letter>> {
        let Some(stream) = &self.stream else {
            return Ok(None);
        };
        match stream.get_raw_message(seq).await {
            Ok(m) => Ok(Some(Letter::new(
                &self.names,
                m.sequence,
                m.subject.as_str(),
                m.time.unix_timestamp_nanos(),
                m.payload,
            ))),
            Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(self.fail(
                &format!("cannot read dead letter {seq} of {}", self.names.dlq_stream),
                &e,
            )),
        }
    }

    async fn require(&self, seq: u64) -> CtlResult<Letter> {
        self.get(seq).await?.ok_or_else(|| {
            CtlError::new(
                exit::ERROR,
                format!(
                    "ERR-PYOCO-DLQ: no dead letter with sequence {seq} in stream {}\n- hint: `pyococtl dlq list` shows the sequences (SEQ) of the letters there are",
                    self.names.dlq_stream
                ),
            )
        })
    }
}

// ---------------------------------------------------------------------------------------------
// list, show

async fn list(ctx: &Ctx, args: &ListArgs) -> CtlResult<u8> {
    let table = wants_table(ctx, "dlq list")?;
    check_tag(args.tag.as_ref(), "pyococtl dlq list --tag gpu")?;
    let dlq = Dlq::open(ctx).await?;
    let mut letters: Vec<Letter> = dlq
        .load(args.tag.as_deref())
        .await?
        .into_iter()
        .filter(|l| l.matches(args.reason.as_deref()))
        .collect();
    letters.reverse();
    if args.limit > 0 {
        letters.truncate(args.limit);
    }
    if !table {
        print_json(&Value::Array(letters.iter().map(Letter::summary).collect()));
        return Ok(exit::OK);
    }
    if letters.is_empty() {
        println!("(no dead letters)");
        return Ok(exit::OK);
    }
    print!("{}", letter_table(&letters));
    Ok(exit::OK)
}

fn letter_table(letters: &[Letter]) -> String {
    let rows: Vec<Vec<String>> = letters
        .iter()
        .map(|l| {
            let error = match l.dl.as_ref().and_then(|d| d.get(fields::dlq::ERROR)) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Null) | None => String::new(),
                Some(other) => other.to_string(),
            };
            vec![
                l.seq.to_string(),
                local_time(Some(l.time())),
                l.tag.clone(),
                l.reason()
                    .unwrap_or(if l.doc.is_none() { "(not JSON)" } else { "-" })
                    .to_string(),
                l.run_id().unwrap_or("-").to_string(),
                one_line(&error, 60),
            ]
        })
        .collect();
    render_table(
        &["SEQ", "TIME", "TAG", "REASON", "RUN ID", "ERROR"],
        &rows,
        LastColumn::Trimmed,
    )
}

async fn show(ctx: &Ctx, seq: u64) -> CtlResult<u8> {
    let pretty = match ctx.cli.output {
        Some(OutputFormat::Json | OutputFormat::Plugins) => false,
        Some(OutputFormat::Table) => true,
        Some(OutputFormat::Status) => {
            return Err(CtlError::usage(
                "--output status is only for `run watch`",
                "pyococtl dlq show 42",
            ))
        }
        None => stdout_is_terminal(),
    };
    let dlq = Dlq::open(ctx).await?;
    let letter = dlq.require(seq).await?;
    match (&letter.doc, pretty) {
        (Some(doc), true) => println!("{}", serde_json::to_string_pretty(doc).unwrap_or_default()),
        // As stored, byte for byte.
        _ => println!("{}", String::from_utf8_lossy(&letter.payload)),
    }
    Ok(exit::OK)
}

// ---------------------------------------------------------------------------------------------
// replay

enum Outcome {
    Replayed(Value),
    /// Cannot be replayed; the why names the fix.
    Skipped(String),
    Failed(String),
}

/// The job to queue again, and where it came from.
fn job_for(
    letter: &Letter,
    doc: &DeadLetter,
    run_id: &str,
    snapshot: Option<&Doc>,
    runs_bucket: &str,
) -> Result<(Map<String, Value>, &'static str), String> {
    if let Some(job) = doc.job() {
        return Ok((job.clone(), "job"));
    }
    let Some(snap) = snapshot else {
        return Err(format!(
            "run {run_id} is no longer in KV {runs_bucket} (removed by retention?) and this letter has no `job` field to rebuild it from; submit the run again (pyococtl run submit …)"
        ));
    };
    if snap
        .get(fields::job::WORKFLOW_YAML_SHA256)
        .map(|v| v.is_string())
        .unwrap_or(false)
    {
        let flow = str_field(snap, fields::job::FLOW_NAME)
            .filter(|s| !s.is_empty())
            .unwrap_or("main");
        let tag = str_field(snap, fields::job::TAG).unwrap_or(&letter.tag);
        return Err(format!(
            "run {run_id} was submitted as a flow.yaml, whose text is kept neither in the run snapshot nor in this letter \
(it has no `job` field: it was written by the original worker or an older version); submit it again: \
pyococtl run submit-yaml --workflow-file flow.yaml --flow-name {flow} --tag {tag}"
        ));
    }
    // The letter has the job's own flow_name (a resolver may have renamed the run's); the
    // params are only in the snapshot.
    let pick = |k: &str| {
        doc.get(k)
            .filter(|v| !v.is_null())
            .or_else(|| snap.get(k))
            .cloned()
            .unwrap_or(Value::Null)
    };
    let tag = doc
        .get(fields::job::TAG)
        .or_else(|| snap.get(fields::job::TAG))
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| letter.tag.clone());
    let tags = match pick(fields::job::TAGS) {
        Value::Array(a) => Value::Array(a),
        _ => json!([tag]),
    };
    let job = JobMessage {
        run_id: json!(run_id),
        flow_name: pick(fields::job::FLOW_NAME),
        tag: json!(tag),
        tags,
        tenant_id: pick(fields::job::TENANT_ID),
        api_key_id: pick(fields::job::API_KEY_ID),
        params: match snap.get(fields::job::PARAMS) {
            Some(Value::Object(p)) => p.clone(),
            _ => Map::new(),
        },
        submitted_at: Some(json!(pyoco_core::time::now())),
        // A flow.yaml run was refused above: its text is not in the snapshot.
        workflow_yaml: None,
        timeout_sec: snap
            .get(fields::job::TIMEOUT_SEC)
            .filter(|v| v.is_number())
            .cloned(),
    }
    .to_doc();
    Ok((job, "rebuilt"))
}

/// The snapshot of a replayed run: PENDING, nothing run yet, the replay noted.
fn reset_snapshot(stored: Option<&Doc>, job: &Map<String, Value>, seq: u64, now: f64) -> Doc {
    let mut d = match stored {
        Some(s) => s.clone(),
        None => {
            let mut d = Doc::new();
            for k in [
                fields::job::RUN_ID,
                fields::job::FLOW_NAME,
                fields::job::TAG,
                fields::job::TAGS,
                fields::job::TENANT_ID,
                fields::job::API_KEY_ID,
            ] {
                d.insert(k.into(), job.get(k).cloned().unwrap_or(Value::Null));
            }
            for k in [
                fields::job::WORKFLOW_YAML_SHA256,
                fields::job::WORKFLOW_YAML_BYTES,
            ] {
                if let Some(v) = job.get(k) {
                    d.insert(k.into(), v.clone());
                }
            }
            d
        }
    };
    let count = stored
        .and_then(|s| s.get("replay_count"))
        .and_then(Value::as_u64)
        .unwrap_or(0)
        + 1;
    d.insert(fields::run::STATUS.into(), json!(run_status::PENDING));
    if let Some(p) = job.get(fields::run::PARAMS).filter(|p| p.is_object()) {
        d.insert(fields::run::PARAMS.into(), p.clone());
        d.remove("snapshot_truncated");
    }
    d.insert(fields::run::TASKS.into(), json!({}));
    d.insert(fields::run::TASK_RECORDS.into(), json!({}));
    d.remove(fields::run::TASK_RECORDS_TRUNCATED);
    for k in [
        fields::run::START_TIME,
        fields::run::END_TIME,
        fields::run::ERROR,
        fields::run::CANCEL_REQUESTED_AT,
        fields::run::CANCEL_REQUESTED_BY,
    ] {
        d.insert(k.into(), Value::Null);
    }
    // The previous attempt's worker and notes do not describe the queued run.
    d.remove(fields::run::WORKER_ID);
    d.remove("worker_note");
    d.insert(fields::run::HEARTBEAT_AT.into(), json!(now));
    d.insert(fields::run::UPDATED_AT.into(), json!(now));
    d.insert("replayed_at".into(), json!(now));
    d.insert("replay_count".into(), json!(count));
    d.insert("replayed_from_dlq_seq".into(), json!(seq));
    d
}

async fn replay_one(dlq: &Dlq, runs: &kv::Store, letter: &Letter) -> Outcome {
    let seq = letter.seq;
    let Some(doc) = &letter.dl else {
        return Outcome::Skipped(format!("the letter is not a JSON object, so there is no run to queue again (pyococtl dlq show {seq})"));
    };
    if letter.reason() == Some("invalid_job") {
        return Outcome::Skipped(format!(
            "an invalid_job letter holds a message that was not a valid job (its `payload`: pyococtl dlq show {seq}), so there is nothing to queue again; \
fix what published it and submit the run again, then drop the letter (pyococtl dlq purge --confirm --reason invalid_job)"
        ));
    }
    let Some(run_id) = letter
        .run_id()
        .filter(|r| is_valid_kv_key(r))
        .map(str::to_string)
    else {
        return Outcome::Skipped("the letter names no valid run_id".into());
    };
    let runs_bucket = runs.name.clone();
    let failed = |what: &str, e: &dyn std::fmt::Display| {
        Outcome::Failed(format!("{what}: {e} (NATS at {})", dlq.url))
    };

    // 1. The run as stored now, and 2. back to PENDING with compare-and-set against what was
    // read; on a concurrent write, look again.
    let mut skipped: Option<String> = None;
    let mut planned: Option<(Map<String, Value>, &'static str, String)> = None;
    let outcome = pyoco_core::kv::modify_bounded(runs, &run_id, 20, |stored| {
        skipped = None;
        planned = None;
        if let Some(s) = stored {
            let status = str_field(s, fields::run::STATUS)
                .unwrap_or("")
                .to_ascii_uppercase();
            match status.as_str() {
                run_status::FAILED | run_status::CANCELLED => {}
                run_status::COMPLETED => {
                    skipped = Some(format!(
                        "run {run_id} is COMPLETED (it ran again after this letter was written), so there is nothing to replay; drop the letter with pyococtl dlq purge --confirm"
                    ));
                    return Decision::Keep;
                }
                other => {
                    skipped = Some(format!(
                        "run {run_id} is {} and not finished: replaying it now could run it twice; wait until it ends (pyococtl run get {run_id})",
                        if other.is_empty() { "in an unknown state" } else { other }
                    ));
                    return Decision::Keep;
                }
            }
        }
        let (job, source) = match job_for(letter, doc, &run_id, stored, &runs_bucket) {
            Ok(j) => j,
            Err(why) => {
                skipped = Some(why);
                return Decision::Keep;
            }
        };
        let Some(tag) = job
            .get(fields::dlq::TAG)
            .and_then(Value::as_str)
            .filter(|t| is_valid_tag(t))
            .map(str::to_string)
        else {
            skipped = Some(format!(
                "the job of run {run_id} has no valid tag to queue it on"
            ));
            return Decision::Keep;
        };
        let reset = reset_snapshot(stored, &job, seq, pyoco_core::time::now());
        planned = Some((job, source, tag));
        Decision::Write(reset)
    })
    .await;
    if let Some(why) = skipped {
        return Outcome::Skipped(why);
    }
    let m = match outcome {
        Ok(m) => m,
        Err(ModifyError::Conflict(_)) => {
            return Outcome::Failed(format!(
                "run {run_id} kept changing under concurrent writes; try again"
            ))
        }
        Err(ModifyError::Nats {
            on_write: false,
            message,
            ..
        }) => return failed(&format!("cannot read run {run_id}"), &message),
        Err(e) => return failed(&format!("cannot reset run {run_id} to PENDING"), &e),
    };
    let (Some((job, source, tag)), Some(reset)) = (planned, m.doc) else {
        return Outcome::Failed(format!("run {run_id}: nothing was written"));
    };
    let revision = m.revision;
    // 3. The job, under a message id of its own (a plain run_id would be deduplicated).
    let subject = dlq.names.work_subject(&tag);
    let msg_id = format!("{run_id}-replay-{seq}");
    let publish = jetstream::message::PublishMessage::build()
        .payload(to_ascii_vec(&job).into())
        .message_id(msg_id.as_str());
    let published = match dlq.js.send_publish(subject.clone(), publish).await {
        Ok(ack) => match ack.await {
            // Published before under this id (a replay of this letter within the work
            // stream's duplicate window): the stream dropped it, nothing was queued.
            Ok(a) if a.duplicate => Err(format!(
                "the stream dropped it as a duplicate of message id {msg_id}, published by a replay of this letter within the stream's duplicate window; try again in two minutes"
            )),
            Ok(_) => Ok(()),
            Err(e) => Err(e.to_string()),
        },
        Err(e) => Err(e.to_string()),
    };
    if let Err(e) = published {
        // Put the run back as it was, unless someone wrote it since.
        let restored = match &m.previous {
            Some(old) => runs.update(&run_id, old.clone(), revision).await.is_ok(),
            None => runs
                .delete_expect_revision(&run_id, Some(revision))
                .await
                .is_ok(),
        };
        let note = if restored {
            "the run snapshot was put back as it was"
        } else {
            "the run snapshot could NOT be put back: it stays PENDING"
        };
        return Outcome::Failed(format!(
            "cannot publish the job of run {run_id} to {subject}: {e} (NATS at {}); {note}",
            dlq.url
        ));
    }

    // 4. The letter has served.
    let deleted = match &dlq.stream {
        Some(s) => s.delete_message(seq).await.is_ok(),
        None => false,
    };
    if !deleted {
        eprintln!("warning: run {run_id} was queued again but dead letter {seq} could not be deleted; a second replay of it would be refused while the run is not finished");
    }
    Outcome::Replayed(json!({
        "seq": seq,
        "run_id": run_id,
        "tag": tag,
        "subject": subject,
        "msg_id": msg_id,
        "source": source,
        "replay_count": reset.get("replay_count").cloned().unwrap_or(json!(1)),
        "dlq_deleted": deleted,
    }))
}

async fn runs_bucket(ctx: &Ctx, dlq: &Dlq) -> CtlResult<kv::Store> {
    dlq.js
        .get_key_value(&ctx.config.runs_kv_bucket)
        .await
        .map_err(|e| dlq.fail(&format!("cannot open KV {}", ctx.config.runs_kv_bucket), &e))
}

fn replayed_line(v: &Value) -> String {
    format!(
        "replayed dead letter {}: run {} queued again on {} (replay {}, from the {})",
        v["seq"],
        v["run_id"].as_str().unwrap_or(""),
        v["subject"].as_str().unwrap_or(""),
        v["replay_count"],
        if v["source"] == "job" {
            "job in the letter"
        } else {
            "letter and run snapshot"
        },
    )
}

async fn replay(ctx: &Ctx, args: &ReplayArgs) -> CtlResult<u8> {
    let table = wants_table(ctx, "dlq replay")?;
    if args.seq.is_some() && (args.tag.is_some() || args.reason.is_some()) {
        return Err(CtlError::usage(
            "--tag and --reason select letters for --all; a SEQ names one letter already",
            "pyococtl dlq replay --all --tag gpu --reason execution_error",
        ));
    }
    check_tag(args.tag.as_ref(), "pyococtl dlq replay --all --tag gpu")?;
    let dlq = Dlq::open(ctx).await?;

    if let Some(seq) = args.seq {
        let letter = dlq.require(seq).await?;
        let runs = runs_bucket(ctx, &dlq).await?;
        return match replay_one(&dlq, &runs, &letter).await {
            Outcome::Replayed(v) => {
                if table {
                    println!("{}", replayed_line(&v))
                } else {
                    print_json(&v)
                }
                Ok(exit::OK)
            }
            Outcome::Skipped(why) => Err(CtlError::new(
                exit::ERROR,
                format!("ERR-PYOCO-DLQ: dead letter {seq} cannot be replayed\n- reason: {why}"),
            )),
            Outcome::Failed(e) => Err(CtlError::new(
                exit::ERROR,
                format!("ERR-PYOCO-DLQ: replaying dead letter {seq} failed\n- reason: {e}"),
            )),
        };
    }

    let letters: Vec<Letter> = dlq
        .load(args.tag.as_deref())
        .await?
        .into_iter()
        .filter(|l| l.matches(args.reason.as_deref()))
        .collect();
    let (mut replayed, mut skipped, mut failed) = (vec![], vec![], vec![]);
    if !letters.is_empty() {
        let runs = runs_bucket(ctx, &dlq).await?;
        for letter in &letters {
            match replay_one(&dlq, &runs, letter).await {
                Outcome::Replayed(v) => {
                    if table {
                        println!("{}", replayed_line(&v));
                    }
                    replayed.push(v);
                }
                Outcome::Skipped(why) => {
                    if table {
                        println!("skipped dead letter {}: {why}", letter.seq);
                    }
                    skipped.push(json!({"seq": letter.seq, "run_id": letter.run_id(), "reason": letter.reason(), "why": why}));
                }
                Outcome::Failed(e) => {
                    if table {
                        println!("FAILED dead letter {}: {e}", letter.seq);
                    }
                    failed.push(json!({"seq": letter.seq, "run_id": letter.run_id(), "error": e}));
                }
            }
        }
    }
    if table {
        println!(
            "{} replayed, {} skipped, {} failed",
            replayed.len(),
            skipped.len(),
            failed.len()
        );
    } else {
        print_json(&json!({"replayed": replayed, "skipped": skipped, "failed": failed}));
    }
    Ok(if failed.is_empty() {
        exit::OK
    } else {
        exit::ERROR
    })
}

// ---------------------------------------------------------------------------------------------
// purge

fn filters_text(tag: Option<&str>, reason: Option<&str>) -> String {
    let mut parts = vec![];
    if let Some(t) = tag {
        parts.push(format!("tag {t}"));
    }
    if let Some(r) = reason {
        parts.push(format!("reason {r}"));
    }
    if parts.is_empty() {
        "all".into()
    } else {
        format!("matching {}", parts.join(", "))
    }
}

async fn purge(ctx: &Ctx, args: &PurgeArgs) -> CtlResult<u8> {
    let table = wants_table(ctx, "dlq purge")?;
    check_tag(args.tag.as_ref(), "pyococtl dlq purge --confirm --tag gpu")?;
    let (tag, reason) = (args.tag.as_deref(), args.reason.as_deref());
    let mut example = String::from("pyococtl dlq purge --confirm");
    if let Some(t) = tag {
        example.push_str(&format!(" --tag {t}"));
    }
    if let Some(r) = reason {
        example.push_str(&format!(" --reason {r}"));
    }
    if !args.confirm {
        // Say what would go, when NATS can tell; refuse either way.
        let count = match Dlq::open(ctx).await {
            Ok(dlq) => dlq
                .load(tag)
                .await
                .ok()
                .map(|ls| ls.iter().filter(|l| l.matches(reason)).count()),
            Err(_) => None,
        };
        let what = match count {
            Some(n) => format!(
                "this would delete {n} dead letter(s) ({})",
                filters_text(tag, reason)
            ),
            None => format!(
                "this would delete {} dead letters",
                filters_text(tag, reason)
            ),
        };
        return Err(CtlError::new(
            exit::USAGE,
            format!("ERR-PYOCO-0018: refusing to delete dead letters without --confirm\n- reason: {what}\n- example: {example}\n- hint: add --confirm to delete them; `pyococtl dlq list` shows them first"),
        ));
    }
    let dlq = Dlq::open(ctx).await?;
    let mut purged: u64 = 0;
    if let Some(stream) = &dlq.stream {
        let failed = |e: &dyn std::fmt::Display| {
            dlq.fail(
                &format!("cannot delete dead letters of {}", dlq.names.dlq_stream),
                e,
            )
        };
        match (tag, reason) {
            (None, None) => purged = stream.purge().await.map_err(|e| failed(&e))?.purged,
            (Some(t), None) => {
                purged = stream
                    .purge()
                    .filter(dlq.names.dlq_subject(t))
                    .await
                    .map_err(|e| failed(&e))?
                    .purged
            }
            (_, Some(_)) => {
                for letter in dlq.load(tag).await?.iter().filter(|l| l.matches(reason)) {
                    if stream
                        .delete_message(letter.seq)
                        .await
                        .map_err(|e| failed(&e))?
                    {
                        purged += 1;
                    }
                }
            }
        }
    }
    if table {
        println!(
            "purged {purged} dead letter(s) from {} ({})",
            dlq.names.dlq_stream,
            filters_text(tag, reason)
        );
    } else {
        print_json(
            &json!({"purged": purged, "stream": dlq.names.dlq_stream, "tag": tag, "reason": reason}),
        );
    }
    Ok(exit::OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(v: Value) -> Doc {
        v.as_object().unwrap().clone()
    }

    fn letter(v: Value) -> Letter {
        let names = Names::from_config(&pyoco_core::config::Config::defaults());
        Letter::new(
            &names,
            7,
            "pyoco.dlq.t1",
            1_700_000_000_000_000_000,
            Bytes::from(serde_json::to_vec(&v).unwrap()),
        )
    }

    #[test]
    fn rebuilds_a_job_without_job_field() {
        let l = letter(
            json!({"reason": "execution_error", "error": "x", "run_id": "r1", "flow_name": "hello", "tag": "t1", "tags": ["t1"], "tenant_id": null, "api_key_id": null}),
        );
        let snap = doc(
            json!({"run_id": "r1", "flow_name": "renamed", "tag": "t1", "tags": ["t1", "x"], "tenant_id": "acme", "params": {"x": 5}, "status": "FAILED"}),
        );
        let (job, src) =
            job_for(&l, l.dl.as_ref().unwrap(), "r1", Some(&snap), "pyoco_runs").unwrap();
        assert_eq!(src, "rebuilt");
        assert_eq!(job["flow_name"], "hello");
        assert_eq!(job["tags"], json!(["t1"]));
        assert_eq!(job["tenant_id"], "acme");
        assert_eq!(job["params"], json!({"x": 5}));
        assert_eq!(l.tag, "t1");
        assert_eq!(l.time(), 1_700_000_000.0);
    }

    #[test]
    fn refuses_yaml_runs_without_job() {
        let l = letter(
            json!({"reason": "execution_error", "run_id": "r1", "flow_name": "main", "tag": "t1"}),
        );
        let snap = doc(
            json!({"run_id": "r1", "flow_name": "main", "tag": "t1", "workflow_yaml_sha256": "ab", "status": "FAILED"}),
        );
        let why = job_for(&l, l.dl.as_ref().unwrap(), "r1", Some(&snap), "pyoco_runs").unwrap_err();
        assert!(
            why.contains(
                "pyococtl run submit-yaml --workflow-file flow.yaml --flow-name main --tag t1"
            ),
            "{why}"
        );
        // With the job in the letter, the YAML travels with it.
        let l = letter(
            json!({"reason": "execution_error", "run_id": "r1", "job": {"run_id": "r1", "workflow_yaml": "version: 1"}}),
        );
        assert_eq!(
            job_for(&l, l.dl.as_ref().unwrap(), "r1", Some(&snap), "pyoco_runs")
                .unwrap()
                .1,
            "job"
        );
    }

    #[test]
    fn reset_clears_the_run() {
        let snap = doc(
            json!({"run_id": "r1", "status": "FAILED", "tasks": {"a": "FAILED"}, "task_records": {"a": {}}, "task_records_truncated": true,
            "start_time": 1.0, "end_time": 2.0, "error": "boom", "cancel_requested_at": 3.0, "worker_id": "w", "replay_count": 2, "custom": 1}),
        );
        let job = doc(json!({"params": {"x": 1}}));
        let d = reset_snapshot(Some(&snap), &job, 9, 10.0);
        assert_eq!(d["status"], "PENDING");
        assert_eq!(d["tasks"], json!({}));
        assert_eq!(d["task_records"], json!({}));
        assert!(d.get("task_records_truncated").is_none() && d.get("worker_id").is_none());
        assert_eq!(
            (
                d["start_time"].clone(),
                d["error"].clone(),
                d["cancel_requested_at"].clone()
            ),
            (Value::Null, Value::Null, Value::Null)
        );
        assert_eq!(
            (
                d["replay_count"].clone(),
                d["replayed_from_dlq_seq"].clone(),
                d["replayed_at"].clone()
            ),
            (json!(3), json!(9), json!(10.0))
        );
        assert_eq!(d["custom"], 1);
        assert_eq!(d["params"], json!({"x": 1}));
    }
}
