//! Run snapshots as the worker writes them (contract §2.1), always merged with the stored
//! document and written with compare-and-set: the gateway owns creation and the cancel fields,
//! the worker owns the execution fields, and neither can erase the other's. Terminal states are
//! final: a stored terminal snapshot is never overwritten.

use pyoco_core::kv::{Decision, ModifyError};
use pyoco_core::wire::fields;

use async_nats::jetstream::kv;
use pyoco_core::json::to_ascii_vec;
use pyoco_core::time::now;
use pyoco_core::wire::{f64_field, is_truthy, run_status, str_field, Doc};
use serde_json::{json, Map, Value};

/// What the worker knows about the run it executes.
#[derive(Debug, Clone)]
pub struct RunState {
    pub run_id: String,
    pub flow_name: String,
    pub tag: String,
    pub tags: Vec<String>,
    pub tenant_id: Value,
    pub api_key_id: Value,
    pub workflow_yaml_sha256: Value,
    pub workflow_yaml_bytes: Value,
    pub params: Map<String, Value>,
    pub status: String,
    pub tasks: Map<String, Value>,
    pub task_records: Map<String, Value>,
    pub start_time: Option<f64>,
    pub end_time: Option<f64>,
    pub error: Option<String>,
    pub worker_id: String,
    /// This execution's identity (`<worker_id>/<delivery>/<start ms>`), stored in the snapshot
    /// so a second execution of the same run can tell, and stop the first (fencing).
    pub attempt_id: String,
    /// Set when this process put the run back in the queue (drain).
    pub note: Option<String>,
}

/// Why a write did not happen.
#[derive(Debug)]
pub enum WriteError {
    /// The stored run is already terminal (e.g. cancelled while pending): nothing was written.
    Terminal(Doc),
    /// Another execution owns the run now (it took over after this one went silent): this one
    /// must stop without writing or acknowledging anything.
    Fenced(Doc),
    /// Another execution is running it and alive (its heartbeat is fresh): not claimed.
    Busy(Doc),
    Nats(String),
}

/// Whether `stored` belongs to another execution than (`attempt_id`, `worker_id`): its
/// `attempt_id` differs, or — written by a worker without attempts (the original) — its
/// `worker_id` is another's.
pub fn foreign_attempt(stored: &Doc, attempt_id: &str, worker_id: &str) -> bool {
    match str_field(stored, fields::run::ATTEMPT_ID) {
        Some(a) if !a.is_empty() => a != attempt_id,
        _ => str_field(stored, fields::run::WORKER_ID)
            .is_some_and(|w| !w.is_empty() && w != worker_id),
    }
}

/// Whether the execution that wrote `stored` still looks alive: it is executing (RUNNING or
/// CANCELLING) and its last heartbeat is younger than `stale_after`.
pub fn live_execution(stored: &Doc, t: f64, stale_after: f64) -> bool {
    let executing = matches!(
        str_field(stored, fields::run::STATUS),
        Some(run_status::RUNNING) | Some(run_status::CANCELLING)
    );
    let beat = f64_field(stored, fields::run::HEARTBEAT_AT).unwrap_or(0.0);
    executing && t - beat < stale_after
}

impl std::fmt::Display for WriteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WriteError::Terminal(d) => write!(
                f,
                "run already {}",
                str_field(d, fields::run::STATUS).unwrap_or("terminal")
            ),
            WriteError::Fenced(d) => write!(
                f,
                "another execution owns the run now ({})",
                str_field(d, fields::run::ATTEMPT_ID)
                    .or(str_field(d, fields::run::WORKER_ID))
                    .unwrap_or("?")
            ),
            WriteError::Busy(d) => write!(
                f,
                "another execution is running it ({})",
                str_field(d, fields::run::ATTEMPT_ID)
                    .or(str_field(d, fields::run::WORKER_ID))
                    .unwrap_or("?")
            ),
            WriteError::Nats(e) => f.write_str(e),
        }
    }
}

/// Limits applied to every write.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// `PYOCO_MAX_RUN_SNAPSHOT_BYTES`: above it `task_records` are dropped (0 = no limit).
    pub max_snapshot_bytes: usize,
    /// The server's max_payload: a snapshot never exceeds it.
    pub max_payload: usize,
}

/// A cancel asked for by the gateway (or anyone) on the stored snapshot.
pub fn cancel_requested(stored: &Doc) -> bool {
    stored
        .get(fields::run::CANCEL_REQUESTED_AT)
        .map(is_truthy)
        .unwrap_or(false)
        || matches!(
            str_field(stored, fields::run::STATUS),
            Some(run_status::CANCELLING) | Some(run_status::CANCELLED)
        )
}

impl RunState {
    /// The merged document to store over `stored`.
    pub fn merged(&self, stored: Option<&Doc>, t: f64, changed: bool) -> Doc {
        let mut d = stored.cloned().unwrap_or_default();
        let put = |d: &mut Doc, k: &str, v: Value| {
            d.insert(k.to_string(), v);
        };
        put(&mut d, fields::run::RUN_ID, json!(self.run_id));
        put(&mut d, fields::run::FLOW_NAME, json!(self.flow_name));
        put(&mut d, fields::run::TAG, json!(self.tag));
        put(&mut d, fields::run::TAGS, json!(self.tags));
        d.entry(fields::run::TENANT_ID)
            .or_insert(self.tenant_id.clone());
        d.entry(fields::run::API_KEY_ID)
            .or_insert(self.api_key_id.clone());
        d.entry(fields::run::WORKFLOW_YAML_SHA256)
            .or_insert(self.workflow_yaml_sha256.clone());
        d.entry(fields::run::WORKFLOW_YAML_BYTES)
            .or_insert(self.workflow_yaml_bytes.clone());
        d.entry(fields::run::CANCEL_REQUESTED_AT)
            .or_insert(Value::Null);
        d.entry(fields::run::CANCEL_REQUESTED_BY)
            .or_insert(Value::Null);
        // A cancel requested on the stored run shows as CANCELLING until we end the run.
        let status = if !run_status::is_terminal(&self.status)
            && self.status != run_status::PENDING
            && stored.map(cancel_requested).unwrap_or(false)
        {
            run_status::CANCELLING.to_string()
        } else if self.status == run_status::COMPLETED
            && stored.map(cancel_requested).unwrap_or(false)
        {
            // The cancel was accepted before this terminal write (a compare-and-set retry sees
            // it): the cancel wins, as in pyoco's engine. COMPLETED only when our write came
            // first, and then the cancel's answer is that COMPLETED snapshot.
            run_status::CANCELLED.to_string()
        } else {
            self.status.clone()
        };
        put(&mut d, fields::run::STATUS, json!(status));
        put(
            &mut d,
            fields::run::PARAMS,
            Value::Object(self.params.clone()),
        );
        put(
            &mut d,
            fields::run::TASKS,
            Value::Object(self.tasks.clone()),
        );
        put(
            &mut d,
            fields::run::TASK_RECORDS,
            Value::Object(self.task_records.clone()),
        );
        d.remove(fields::run::TASK_RECORDS_TRUNCATED);
        put(&mut d, fields::run::START_TIME, json!(self.start_time));
        put(&mut d, fields::run::END_TIME, json!(self.end_time));
        put(&mut d, fields::run::HEARTBEAT_AT, json!(t));
        let updated = if changed {
            t
        } else {
            stored
                .and_then(|s| f64_field(s, fields::run::UPDATED_AT))
                .unwrap_or(t)
        };
        put(&mut d, fields::run::UPDATED_AT, json!(updated));
        put(&mut d, fields::run::ERROR, json!(self.error));
        put(&mut d, fields::run::WORKER_ID, json!(self.worker_id));
        put(&mut d, fields::run::ATTEMPT_ID, json!(self.attempt_id));
        match &self.note {
            Some(n) => put(&mut d, "worker_note", json!(n)),
            None => {
                d.remove("worker_note");
            }
        }
        d
    }
}

/// Encodes a snapshot within the limits: drops `task_records` above the snapshot limit (as the
/// original), then shortens the largest texts until it fits in a NATS message.
pub fn encode(mut doc: Doc, limits: Limits) -> Vec<u8> {
    let mut bytes = to_ascii_vec(&doc);
    if limits.max_snapshot_bytes > 0 && bytes.len() > limits.max_snapshot_bytes {
        doc.insert(fields::run::TASK_RECORDS.into(), json!({}));
        doc.insert(fields::run::TASK_RECORDS_TRUNCATED.into(), json!(true));
        bytes = to_ascii_vec(&doc);
    }
    let cap = limits.max_payload.saturating_sub(1024).max(4096);
    if bytes.len() > cap {
        if let Some(Value::String(e)) = doc.get_mut(fields::run::ERROR) {
            let keep = crate::text::truncate(e, 2000).len();
            e.truncate(keep);
        }
        bytes = to_ascii_vec(&doc);
    }
    if bytes.len() > cap {
        doc.insert(
            fields::run::PARAMS.into(),
            json!({"_truncated": "params too large for a snapshot; see the job message"}),
        );
        doc.insert("snapshot_truncated".into(), json!(true));
        bytes = to_ascii_vec(&doc);
    }
    bytes
}

/// Writes one run's snapshots with compare-and-set, remembering the revision and document of
/// its own last write: the next write is a single `update` at that revision, and only when
/// someone else wrote in between (a cancel, another worker) does it read and merge again.
///
/// Fencing: until its first write succeeds the writer is *claiming* — it may replace another
/// execution's snapshot only when that one is no longer live (see [`live_execution`]), else
/// [`WriteError::Busy`]. Afterwards a stored snapshot of another execution means this one was
/// superseded: [`WriteError::Fenced`], nothing written.
pub struct Writer {
    store: kv::Store,
    limits: Limits,
    last: Option<(u64, Doc)>,
    claimed: bool,
    /// Another execution whose heartbeat is older than this is taken over (seconds).
    stale_after: f64,
}

impl Writer {
    pub fn new(store: kv::Store, limits: Limits) -> Writer {
        Writer {
            store,
            limits,
            last: None,
            claimed: false,
            stale_after: f64::INFINITY,
        }
    }

    /// Sets how old another execution's heartbeat must be before a claim takes the run over.
    pub fn stale_after(mut self, secs: f64) -> Writer {
        self.stale_after = secs;
        self
    }

    /// Starts from a stored version the caller already read.
    pub fn seed(&mut self, revision: u64, stored: Doc) {
        self.last = Some((revision, stored));
    }

    /// Writes `state` merged over the stored snapshot; returns the document written. A stored
    /// terminal snapshot is never overwritten. A missing key is created (a job whose snapshot
    /// was lost still gets its state recorded).
    pub async fn write(&mut self, state: &RunState, changed: bool) -> Result<Doc, WriteError> {
        if let Some((rev, stored)) = self.last.take() {
            // The remembered document is what is stored at `rev`: judge it like a fresh read.
            if let Some(e) = self.fence_check(&stored, state) {
                return Err(e);
            }
            let doc = state.merged(Some(&stored), now(), changed);
            match self
                .store
                .update(&state.run_id, encode(doc.clone(), self.limits).into(), rev)
                .await
            {
                Ok(new_rev) => {
                    self.last = Some((new_rev, doc.clone()));
                    self.claimed = true;
                    return Ok(doc);
                }
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {}
                Err(e) => return Err(WriteError::Nats(e.to_string())),
            }
        }
        // Someone wrote in between (or nothing is remembered): read, merge with what they
        // wrote, and write at that revision.
        let limits = self.limits;
        let mut refused = None;
        let outcome = pyoco_core::kv::modify_bounded(&self.store, &state.run_id, 30, |stored| {
            if let Some(s) = stored {
                if let Some(e) = self.fence_check(s, state) {
                    refused = Some(e);
                    return Decision::Keep;
                }
            }
            refused = None;
            let doc = state.merged(stored, now(), changed);
            let bytes = encode(doc.clone(), limits);
            Decision::WriteBytes(doc, bytes)
        })
        .await;
        match outcome {
            Ok(_) if refused.is_some() => Err(refused.unwrap_or(WriteError::Nats(String::new()))),
            Ok(m) => {
                let doc = m.doc.unwrap_or_default();
                self.last = Some((m.revision, doc.clone()));
                self.claimed = true;
                Ok(doc)
            }
            Err(ModifyError::Conflict(_)) => Err(WriteError::Nats(
                "snapshot kept conflicting with concurrent writes".into(),
            )),
            Err(e) => Err(WriteError::Nats(e.to_string())),
        }
    }
}

impl Writer {
    /// Why `stored` must not be overwritten by this execution, if it must not: it is terminal,
    /// or it belongs to another execution (which, while claiming, is only a refusal while that
    /// execution is live).
    fn fence_check(&self, stored: &Doc, state: &RunState) -> Option<WriteError> {
        if run_status::is_terminal(str_field(stored, fields::run::STATUS).unwrap_or("")) {
            return Some(WriteError::Terminal(stored.clone()));
        }
        if !foreign_attempt(stored, &state.attempt_id, &state.worker_id) {
            return None;
        }
        if self.claimed {
            return Some(WriteError::Fenced(stored.clone()));
        }
        live_execution(stored, now(), self.stale_after).then(|| WriteError::Busy(stored.clone()))
    }
}

/// A one-off write (no earlier revision known).
pub async fn write(
    store: &kv::Store,
    state: &RunState,
    changed: bool,
    limits: Limits,
) -> Result<Doc, WriteError> {
    Writer::new(store.clone(), limits)
        .write(state, changed)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The state of the job `{"run_id":"r1","flow_name":"main","tag":"t","params":{"x":1}}`.
    fn state() -> RunState {
        let mut params = Map::new();
        params.insert("x".into(), json!(1));
        RunState {
            run_id: "r1".into(),
            flow_name: "main".into(),
            tag: "t".into(),
            tags: vec!["t".into()],
            tenant_id: Value::Null,
            api_key_id: Value::Null,
            workflow_yaml_sha256: Value::Null,
            workflow_yaml_bytes: Value::Null,
            params,
            status: run_status::RUNNING.into(),
            tasks: Map::new(),
            task_records: Map::new(),
            start_time: None,
            end_time: None,
            error: None,
            worker_id: "w1".into(),
            attempt_id: "w1/1/1000".into(),
            note: None,
        }
    }

    #[test]
    fn merge_keeps_gateway_fields_and_shows_a_requested_cancel() {
        let stored: Doc = serde_json::from_value(json!({
            "run_id": "r1", "status": "RUNNING", "cancel_requested_at": 5.0, "cancel_requested_by": "api_key:k",
            "tenant_id": "acme", "custom": [1]
        })).unwrap();
        let d = state().merged(Some(&stored), 10.0, true);
        assert_eq!(d["status"], "CANCELLING");
        assert_eq!(d["cancel_requested_at"], 5.0);
        assert_eq!(d["cancel_requested_by"], "api_key:k");
        assert_eq!(d["tenant_id"], "acme");
        assert_eq!(d["custom"], json!([1]), "unknown fields survive");
        assert_eq!(d["worker_id"], "w1");
        // A heartbeat-only write keeps updated_at.
        let stored: Doc =
            serde_json::from_value(json!({"run_id": "r1", "status": "RUNNING", "updated_at": 3.0}))
                .unwrap();
        let d = state().merged(Some(&stored), 10.0, false);
        assert_eq!(
            (d["updated_at"].clone(), d["heartbeat_at"].clone()),
            (json!(3.0), json!(10.0))
        );
    }

    #[test]
    fn a_cancel_accepted_before_the_terminal_write_wins_over_completed() {
        let stored: Doc = serde_json::from_value(json!({
            "run_id": "r1", "status": "CANCELLING", "cancel_requested_at": 5.0
        }))
        .unwrap();
        let mut s = state();
        s.status = run_status::COMPLETED.into();
        s.tasks.insert("a".into(), json!("SUCCEEDED"));
        let d = s.merged(Some(&stored), 10.0, true);
        assert_eq!(d["status"], "CANCELLED");
        assert_eq!(
            d["tasks"],
            json!({"a": "SUCCEEDED"}),
            "the task keeps its result"
        );
        // Without a cancel on the stored run, COMPLETED stays COMPLETED; FAILED stays FAILED.
        let plain: Doc =
            serde_json::from_value(json!({"run_id": "r1", "status": "RUNNING"})).unwrap();
        assert_eq!(s.merged(Some(&plain), 10.0, true)["status"], "COMPLETED");
        s.status = run_status::FAILED.into();
        assert_eq!(s.merged(Some(&stored), 10.0, true)["status"], "FAILED");
    }

    #[test]
    fn merge_ends_cancelling_with_our_terminal_state_and_owns_execution_fields() {
        let stored: Doc = serde_json::from_value(json!({
            "run_id": "r1", "status": "CANCELLING", "cancel_requested_at": 5.0,
            "tenant_id": "acme", "worker_note": "requeued: old", "task_records_truncated": true,
            "tasks": {"old": "RUNNING"}, "error": "stale"
        }))
        .unwrap();
        let mut s = state();
        s.status = run_status::CANCELLED.into();
        s.tasks.insert("a".into(), json!("CANCELLED"));
        let d = s.merged(Some(&stored), 10.0, true);
        assert_eq!(
            d["status"], "CANCELLED",
            "our terminal state wins over CANCELLING"
        );
        assert_eq!(
            d["tasks"],
            json!({"a": "CANCELLED"}),
            "the worker owns tasks"
        );
        assert_eq!(d["error"], Value::Null);
        assert_eq!(d["tenant_id"], "acme", "the gateway's tenant is kept");
        assert!(!d.contains_key("worker_note") && !d.contains_key("task_records_truncated"));
        assert_eq!(d["updated_at"], 10.0);
        // A run put back (PENDING) never shows CANCELLING; the note is written.
        let mut s = state();
        s.status = run_status::PENDING.into();
        s.note = Some("requeued".into());
        let d = s.merged(Some(&stored), 11.0, true);
        assert_eq!(
            (d["status"].clone(), d["worker_note"].clone()),
            (json!("PENDING"), json!("requeued"))
        );
        // Nothing stored yet: the job's fields and null cancel fields.
        let d = state().merged(None, 12.0, true);
        assert_eq!(d["status"], "RUNNING");
        assert_eq!(
            (d["cancel_requested_at"].clone(), d["tenant_id"].clone()),
            (Value::Null, Value::Null)
        );
        assert_eq!(d["params"], json!({"x": 1}));
    }

    fn doc(v: Value) -> Doc {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn another_execution_is_told_by_its_attempt_or_worker_id() {
        let ours = ("w1/1/1000", "w1");
        let with = |v: Value| foreign_attempt(&doc(v), ours.0, ours.1);
        assert!(!with(json!({"attempt_id": "w1/1/1000", "worker_id": "w1"})));
        // a redelivery to the same worker is another execution
        assert!(with(json!({"attempt_id": "w1/2/2000", "worker_id": "w1"})));
        assert!(with(json!({"attempt_id": "w2/2/2000", "worker_id": "w2"})));
        // written by a worker without attempts (the original): its worker id decides
        assert!(with(json!({"worker_id": "orig-1"})));
        assert!(!with(json!({"worker_id": "w1"})));
        // created by a gateway: nobody's
        assert!(!with(json!({"worker_id": null, "status": "PENDING"})));
        assert!(!with(json!({})));
    }

    #[test]
    fn an_execution_is_live_while_it_heartbeats() {
        let d = |status: &str, beat: f64| doc(json!({"status": status, "heartbeat_at": beat}));
        assert!(live_execution(&d("RUNNING", 99.0), 100.0, 3.0));
        assert!(live_execution(&d("CANCELLING", 98.0), 100.0, 3.0));
        assert!(
            !live_execution(&d("RUNNING", 96.0), 100.0, 3.0),
            "silent 4 s"
        );
        assert!(
            !live_execution(&d("PENDING", 100.0), 100.0, 3.0),
            "requeued runs are free"
        );
        assert!(!live_execution(
            &doc(json!({"status": "RUNNING"})),
            100.0,
            3.0
        ));
    }

    #[test]
    fn the_snapshot_names_the_attempt() {
        let d = state().merged(None, 10.0, true);
        assert_eq!(d["attempt_id"], "w1/1/1000");
    }

    #[test]
    fn cancel_is_requested_by_the_field_or_the_status() {
        let doc = |v: Value| -> Doc { serde_json::from_value(v).unwrap() };
        assert!(cancel_requested(&doc(json!({"cancel_requested_at": 1.0}))));
        assert!(cancel_requested(&doc(json!({"status": "CANCELLING"}))));
        assert!(!cancel_requested(&doc(
            json!({"status": "RUNNING", "cancel_requested_at": null})
        )));
    }

    #[test]
    fn size_limits_apply_to_every_write() {
        let mut s = state();
        s.task_records
            .insert("t".into(), json!({"output": "x".repeat(10_000)}));
        let limits = Limits {
            max_snapshot_bytes: 4096,
            max_payload: 1024 * 1024,
        };
        let d: Doc = serde_json::from_slice(&encode(s.merged(None, 1.0, true), limits)).unwrap();
        assert_eq!(d["task_records"], json!({}));
        assert_eq!(d["task_records_truncated"], true);
        // Never above the server's max payload, whatever the snapshot limit says.
        let mut s = state();
        s.error = Some("e".repeat(50_000));
        s.params.insert("big".into(), json!("p".repeat(200_000)));
        let limits = Limits {
            max_snapshot_bytes: 0,
            max_payload: 64 * 1024,
        };
        let bytes = encode(s.merged(None, 1.0, true), limits);
        assert!(bytes.len() <= 64 * 1024, "{}", bytes.len());
    }
}
