//! The JSON documents on the wire (contract §2, §3.6), shared by gateway, worker and pyococtl.
//!
//! Documents are handled as ordered JSON maps, not typed structs: a document written by another
//! version (the Python original, a newer release) is read, changed and written back without
//! dropping or reordering the fields this code does not know.

use serde_json::{json, Map, Value};

pub mod dlq;
pub mod fields;

pub use dlq::DeadLetter;

pub type Doc = Map<String, Value>;

/// Run states (contract §2.2).
pub mod run_status {
    pub const PENDING: &str = "PENDING";
    pub const RUNNING: &str = "RUNNING";
    pub const COMPLETED: &str = "COMPLETED";
    pub const FAILED: &str = "FAILED";
    pub const CANCELLING: &str = "CANCELLING";
    pub const CANCELLED: &str = "CANCELLED";
    pub const ALL: [&str; 6] = [PENDING, RUNNING, COMPLETED, FAILED, CANCELLING, CANCELLED];

    /// Terminal states are final: nothing may move a run out of them.
    /// Case-insensitive like the original's `status.upper()` check.
    pub fn is_terminal(status: &str) -> bool {
        matches!(
            status.to_ascii_uppercase().as_str(),
            COMPLETED | FAILED | CANCELLED
        )
    }
}

/// Worker states (contract §2.2, §3.7).
pub mod worker_state {
    pub const RUNNING: &str = "RUNNING";
    pub const IDLE: &str = "IDLE";
    pub const STOPPED_GRACEFUL: &str = "STOPPED_GRACEFUL";
    pub const DISCONNECTED: &str = "DISCONNECTED";
    pub const ALL: [&str; 4] = [RUNNING, IDLE, STOPPED_GRACEFUL, DISCONNECTED];
}

/// Keys of a list summary item, in the original's order (contract §1.3 `GET /runs`).
pub const SUMMARY_KEYS: [&str; 11] = [
    fields::run::RUN_ID,
    fields::run::FLOW_NAME,
    fields::run::TAG,
    fields::run::TAGS,
    fields::run::TENANT_ID,
    fields::run::API_KEY_ID,
    fields::run::STATUS,
    fields::run::UPDATED_AT,
    fields::run::HEARTBEAT_AT,
    fields::run::WORKER_ID,
    fields::run::ERROR,
];

/// Longest tag accepted. A tag becomes part of the work subject (`pyoco.work.<tag>`) and the
/// consumer name; without a bound, a ~4 KiB tag exceeds nats-server's control-line limit and
/// the server drops the whole connection — every other client's request with it.
pub const MAX_TAG_LEN: usize = 128;
/// Longest flow name accepted at submit: it is kept in every snapshot, list summary and index
/// entry, so a megabyte name would cost a megabyte per run everywhere.
pub const MAX_FLOW_NAME_LEN: usize = 256;
/// Most display tags (`tags`) one run may carry; each is bounded like a tag.
pub const MAX_DISPLAY_TAGS: usize = 32;
/// Longest KV key accepted (run ids, worker ids, …) before anything is sent to NATS.
pub const MAX_KV_KEY_LEN: usize = 256;

/// Tag rule of the HTTP API: one subject token of `[A-Za-z0-9_-]`, at most [`MAX_TAG_LEN`].
pub fn is_valid_tag(tag: &str) -> bool {
    !tag.is_empty()
        && tag.len() <= MAX_TAG_LEN
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// NATS KV key rule (`[-/_=.a-zA-Z0-9]+`, no leading or trailing dot), at most
/// [`MAX_KV_KEY_LEN`] bytes.
pub fn is_valid_kv_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= MAX_KV_KEY_LEN
        && !key.starts_with('.')
        && !key.ends_with('.')
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-/_=.".contains(&b))
}

pub fn str_field<'a>(doc: &'a Doc, key: &str) -> Option<&'a str> {
    doc.get(key).and_then(Value::as_str)
}

/// A float field the way Python reads it: ints and floats count, anything else is absent.
pub fn f64_field(doc: &Doc, key: &str) -> Option<f64> {
    doc.get(key).and_then(Value::as_f64)
}

/// Fields the gateway puts on a new run and its job, shared by both submit endpoints.
#[derive(Debug, Clone)]
pub struct NewRun {
    pub run_id: String,
    pub flow_name: String,
    pub tag: String,
    pub tags: Vec<String>,
    pub tenant_id: Option<String>,
    pub api_key_id: Option<String>,
    pub params: Map<String, Value>,
    /// (sha256 hex, size) of a submitted flow.yaml
    pub workflow_yaml: Option<(String, usize)>,
    pub workflow_yaml_text: Option<String>,
    /// Optional run timeout (ours; the original ignores the field)
    pub timeout_sec: Option<f64>,
    pub now: f64,
}

impl NewRun {
    /// The leading keys shared by the snapshot and the job, in the original's order.
    fn identity(&self) -> Doc {
        let mut d = Doc::new();
        d.insert(fields::run::RUN_ID.into(), json!(self.run_id));
        d.insert(fields::run::FLOW_NAME.into(), json!(self.flow_name));
        d.insert(fields::run::TAG.into(), json!(self.tag));
        d.insert(fields::run::TAGS.into(), json!(self.tags));
        d.insert(fields::run::TENANT_ID.into(), json!(self.tenant_id));
        d.insert(fields::run::API_KEY_ID.into(), json!(self.api_key_id));
        d
    }

    /// The gateway's initial PENDING snapshot, keys in the original's order (contract §2.1).
    pub fn initial_snapshot(&self) -> Doc {
        let mut d = self.identity();
        if let Some((sha, size)) = &self.workflow_yaml {
            d.insert(fields::run::WORKFLOW_YAML_SHA256.into(), json!(sha));
            d.insert(fields::run::WORKFLOW_YAML_BYTES.into(), json!(size));
        }
        d.insert(fields::run::STATUS.into(), json!(run_status::PENDING));
        d.insert(
            fields::run::PARAMS.into(),
            Value::Object(self.params.clone()),
        );
        d.insert(fields::run::TASKS.into(), json!({}));
        d.insert(fields::run::TASK_RECORDS.into(), json!({}));
        d.insert(fields::run::START_TIME.into(), Value::Null);
        d.insert(fields::run::END_TIME.into(), Value::Null);
        d.insert(fields::run::HEARTBEAT_AT.into(), json!(self.now));
        d.insert(fields::run::UPDATED_AT.into(), json!(self.now));
        d.insert(fields::run::ERROR.into(), Value::Null);
        if let Some(t) = self.timeout_sec {
            d.insert(fields::run::TIMEOUT_SEC.into(), json!(t));
        }
        d
    }

    /// The job message published to `pyoco.work.<tag>` (contract §2.5).
    pub fn job_message(&self) -> Doc {
        JobMessage {
            run_id: json!(self.run_id),
            flow_name: json!(self.flow_name),
            tag: json!(self.tag),
            tags: json!(self.tags),
            tenant_id: json!(self.tenant_id),
            api_key_id: json!(self.api_key_id),
            params: self.params.clone(),
            submitted_at: Some(json!(self.now)),
            // Only with both the text and its digest, as the YAML endpoint submits it.
            workflow_yaml: match (&self.workflow_yaml_text, &self.workflow_yaml) {
                (Some(text), Some((sha, size))) => Some(WorkflowYaml {
                    text: text.clone(),
                    sha256: json!(sha),
                    bytes: json!(size),
                }),
                _ => None,
            },
            timeout_sec: self.timeout_sec.map(|t| json!(t)),
        }
        .to_doc()
    }
}

/// The job message (stream `PYOCO_WORK`, contract §2.5), built in one place for the gateway's
/// submit, the worker's copy in a dead letter and pyococtl's replay. Values are JSON as they
/// were read, so a job written by another version goes out again unchanged.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobMessage {
    pub run_id: Value,
    pub flow_name: Value,
    pub tag: Value,
    pub tags: Value,
    pub tenant_id: Value,
    pub api_key_id: Value,
    pub params: Map<String, Value>,
    /// Absent in the worker's copy, which does not keep the submit time.
    pub submitted_at: Option<Value>,
    pub workflow_yaml: Option<WorkflowYaml>,
    /// Ours; the original ignores it.
    pub timeout_sec: Option<Value>,
}

/// A submitted flow.yaml as the job carries it: the raw text (not base64) and its digest.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkflowYaml {
    pub text: String,
    pub sha256: Value,
    pub bytes: Value,
}

impl JobMessage {
    /// The document, keys in the gateway's order: the original's (§2.5), then ours.
    pub fn to_doc(&self) -> Doc {
        use fields::job;
        let mut d = Doc::new();
        d.insert(job::RUN_ID.into(), self.run_id.clone());
        d.insert(job::FLOW_NAME.into(), self.flow_name.clone());
        d.insert(job::TAG.into(), self.tag.clone());
        d.insert(job::TAGS.into(), self.tags.clone());
        d.insert(job::TENANT_ID.into(), self.tenant_id.clone());
        d.insert(job::API_KEY_ID.into(), self.api_key_id.clone());
        d.insert(job::PARAMS.into(), Value::Object(self.params.clone()));
        if let Some(t) = &self.submitted_at {
            d.insert(job::SUBMITTED_AT.into(), t.clone());
        }
        if let Some(y) = &self.workflow_yaml {
            d.insert(job::WORKFLOW_YAML.into(), json!(y.text));
            d.insert(job::WORKFLOW_YAML_SHA256.into(), y.sha256.clone());
            d.insert(job::WORKFLOW_YAML_BYTES.into(), y.bytes.clone());
        }
        if let Some(t) = &self.timeout_sec {
            d.insert(job::TIMEOUT_SEC.into(), t.clone());
        }
        d
    }

    /// The bytes to publish: compact ASCII JSON, as the original writes.
    pub fn to_bytes(&self) -> Vec<u8> {
        crate::json::to_ascii_vec(&self.to_doc())
    }
}

/// What `GET /runs` shows of a run without `include=full` (only the keys present).
pub fn run_summary(snapshot: &Doc) -> Doc {
    SUMMARY_KEYS
        .iter()
        .filter_map(|k| snapshot.get(*k).map(|v| ((*k).to_string(), v.clone())))
        .collect()
}

/// The snapshot as `GET /runs/{id}` returns it: `task_records` only when asked for.
pub fn run_view(snapshot: &Doc, with_records: bool) -> Doc {
    let mut out = snapshot.clone();
    if !with_records {
        out.remove(fields::run::TASK_RECORDS);
        out.remove(fields::run::TASK_RECORDS_TRUNCATED);
    }
    out
}

/// A worker record normalized as the original does (contract §3.7), with its effective state.
pub fn normalize_worker(raw: &Doc, now: f64, disconnect_timeout: f64) -> (Doc, &'static str) {
    let mut d = raw.clone();
    let stored = match str_field(raw, fields::worker::STATE)
        .map(str::to_ascii_uppercase)
        .as_deref()
    {
        Some("RUNNING") => worker_state::RUNNING,
        Some("STOPPED_GRACEFUL") => worker_state::STOPPED_GRACEFUL,
        Some("DISCONNECTED") => worker_state::DISCONNECTED,
        _ => worker_state::IDLE,
    };
    let truthy = |k: &str| f64_field(raw, k).filter(|v| *v != 0.0);
    let last_seen = truthy(fields::worker::LAST_SEEN_AT)
        .or_else(|| truthy(fields::worker::HEARTBEAT_AT))
        .unwrap_or(0.0);
    let last_hb = truthy(fields::worker::LAST_HEARTBEAT_AT)
        .or_else(|| truthy(fields::worker::HEARTBEAT_AT))
        .unwrap_or(last_seen);
    d.insert(fields::worker::STATE.into(), json!(stored));
    d.insert(
        fields::worker::HIDDEN.into(),
        json!(raw
            .get(fields::worker::HIDDEN)
            .map(is_truthy)
            .unwrap_or(false)),
    );
    let tags: Vec<Value> = match raw.get(fields::worker::TAGS) {
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|t| {
                t.as_str()
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| json!(s))
            })
            .collect(),
        _ => vec![],
    };
    d.insert(fields::worker::TAGS.into(), Value::Array(tags));
    d.insert(fields::worker::LAST_SEEN_AT.into(), json!(last_seen));
    d.insert(fields::worker::LAST_HEARTBEAT_AT.into(), json!(last_hb));
    d.insert(fields::worker::HEARTBEAT_AT.into(), json!(last_hb));
    for k in [
        fields::worker::CURRENT_RUN_ID,
        fields::worker::LAST_RUN_ID,
        fields::worker::LAST_RUN_STATUS,
        fields::worker::LAST_RUN_STARTED_AT,
        fields::worker::LAST_RUN_FINISHED_AT,
        fields::worker::STOPPED_AT,
        fields::worker::STOP_REASON,
    ] {
        d.entry(k.to_string()).or_insert(Value::Null);
    }
    let updated = f64_field(raw, fields::worker::UPDATED_AT).unwrap_or(0.0);
    d.insert(fields::worker::UPDATED_AT.into(), json!(updated));
    let effective = match stored {
        worker_state::STOPPED_GRACEFUL | worker_state::DISCONNECTED => stored,
        _ if disconnect_timeout > 0.0 && now - last_seen > disconnect_timeout => {
            worker_state::DISCONNECTED
        }
        _ => stored,
    };
    (d, effective)
}

/// Python truthiness of a JSON value.
pub fn is_truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().map(|f| f != 0.0).unwrap_or(true),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

pub fn worker_alive(effective: &str) -> bool {
    matches!(effective, worker_state::RUNNING | worker_state::IDLE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kv_keys() {
        assert!(is_valid_kv_key("0b8f6c1e-7c1d-4d0e-9a49-0e0e6c1f0d2a"));
        assert!(!is_valid_kv_key("a b"));
        assert!(!is_valid_kv_key(".a"));
        assert!(!is_valid_kv_key("a*"));
        assert!(!is_valid_kv_key(""));
        assert!(is_valid_kv_key(&"k".repeat(MAX_KV_KEY_LEN)));
        assert!(!is_valid_kv_key(&"k".repeat(MAX_KV_KEY_LEN + 1)));
    }

    #[test]
    fn tags_are_one_bounded_subject_token() {
        assert!(is_valid_tag("gpu-1_a"));
        assert!(!is_valid_tag("a.b"));
        assert!(!is_valid_tag(""));
        assert!(is_valid_tag(&"t".repeat(MAX_TAG_LEN)));
        assert!(!is_valid_tag(&"t".repeat(MAX_TAG_LEN + 1)));
    }

    #[test]
    fn worker_disconnected_after_timeout() {
        let raw: Doc =
            serde_json::from_value(json!({"worker_id":"w","state":"IDLE","last_seen_at":100.0}))
                .unwrap();
        assert_eq!(normalize_worker(&raw, 110.0, 20.0).1, "IDLE");
        assert_eq!(normalize_worker(&raw, 121.0, 20.0).1, "DISCONNECTED");
        let raw: Doc =
            serde_json::from_value(json!({"state":"STOPPED_GRACEFUL","last_seen_at":1.0})).unwrap();
        assert_eq!(normalize_worker(&raw, 1000.0, 20.0).1, "STOPPED_GRACEFUL");
    }

    #[test]
    fn summary_keeps_only_present_keys_in_order() {
        let snap: Doc =
            serde_json::from_value(json!({"status":"PENDING","run_id":"r","params":{},"tag":"t"}))
                .unwrap();
        let s = run_summary(&snap);
        assert_eq!(
            s.keys().collect::<Vec<_>>(),
            vec!["run_id", "tag", "status"]
        );
    }

    /// The job message's bytes as the gateway publishes them (key order, compact ASCII JSON,
    /// Python float repr), pinned before the builder moved into [`JobMessage`].
    #[test]
    fn job_message_bytes_are_pinned() {
        let run = NewRun {
            run_id: "r1".into(),
            flow_name: "f".into(),
            tag: "t".into(),
            tags: vec!["t".into(), "x".into()],
            tenant_id: Some("ten".into()),
            api_key_id: None,
            params: serde_json::from_value(json!({"a": "\u{e9}", "n": 1e16})).unwrap(),
            workflow_yaml: Some(("abc".into(), 12)),
            workflow_yaml_text: Some("flow: \u{e9}\n".into()),
            timeout_sec: Some(2.5),
            now: 1700000000.25,
        };
        assert_eq!(
            String::from_utf8(crate::json::to_ascii_vec(&run.job_message())).unwrap(),
            r#"{"run_id":"r1","flow_name":"f","tag":"t","tags":["t","x"],"tenant_id":"ten","api_key_id":null,"params":{"a":"\u00e9","n":1e+16},"submitted_at":1700000000.25,"workflow_yaml":"flow: \u00e9\n","workflow_yaml_sha256":"abc","workflow_yaml_bytes":12,"timeout_sec":2.5}"#
        );
        // Without a flow.yaml or timeout: the eight keys of §2.5.
        let plain = NewRun {
            workflow_yaml: None,
            workflow_yaml_text: None,
            timeout_sec: None,
            tenant_id: None,
            params: Map::new(),
            ..run
        };
        assert_eq!(
            String::from_utf8(crate::json::to_ascii_vec(&plain.job_message())).unwrap(),
            r#"{"run_id":"r1","flow_name":"f","tag":"t","tags":["t","x"],"tenant_id":null,"api_key_id":null,"params":{},"submitted_at":1700000000.25}"#
        );
    }
}
