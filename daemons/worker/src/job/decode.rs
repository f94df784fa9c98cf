//! The job message (contract §2.5) → a typed [`Job`]: the original's decoding rules, plus type
//! checks where the original would crash later.

use pyoco_core::wire::fields;
use pyoco_core::wire::{f64_field, run_status, str_field, Doc};
use pyoco_core::wire::{JobMessage, WorkflowYaml};
use serde_json::{json, Map, Value};

use crate::snapshot::RunState;

/// A decoded job message (contract §2.5).
#[derive(Debug, Clone)]
pub struct Job {
    pub run_id: String,
    pub flow_name: String,
    pub tag: String,
    pub tags: Vec<String>,
    pub tenant_id: Value,
    pub api_key_id: Value,
    pub params: Map<String, Value>,
    pub workflow_yaml: Option<String>,
    pub workflow_yaml_sha256: Value,
    pub workflow_yaml_bytes: Value,
    pub timeout_sec: Option<f64>,
}

impl Job {
    /// The job message again (contract §2.5), e.g. for a dead letter that can be replayed.
    /// Without `submitted_at`: the worker does not keep it.
    pub fn to_message(&self) -> JobMessage {
        JobMessage {
            run_id: json!(self.run_id),
            flow_name: json!(self.flow_name),
            tag: json!(self.tag),
            tags: json!(self.tags),
            tenant_id: self.tenant_id.clone(),
            api_key_id: self.api_key_id.clone(),
            params: self.params.clone(),
            submitted_at: None,
            workflow_yaml: self.workflow_yaml.as_ref().map(|text| WorkflowYaml {
                text: text.clone(),
                sha256: self.workflow_yaml_sha256.clone(),
                bytes: self.workflow_yaml_bytes.clone(),
            }),
            timeout_sec: self.timeout_sec.map(|t| json!(t)),
        }
    }

    pub fn to_doc(&self) -> Value {
        Value::Object(self.to_message().to_doc())
    }
}

/// Why a message is not a job: the reason, and the run id when one could be read.
#[derive(Debug)]
pub struct InvalidJob {
    pub reason: String,
    pub run_id: Option<String>,
}

/// The original's decoding rules (§2.5), plus type checks where the original would crash later.
pub fn decode_job(payload: &[u8]) -> Result<Job, InvalidJob> {
    let invalid = |reason: &str, run_id: Option<String>| InvalidJob {
        reason: reason.to_string(),
        run_id,
    };
    let doc: Doc = match serde_json::from_slice::<Value>(payload) {
        Ok(Value::Object(m)) => m,
        Ok(_) => return Err(invalid("job is not a JSON object", None)),
        Err(e) => return Err(invalid(&format!("job is not JSON: {e}"), None)),
    };
    let run_id = match doc.get(fields::job::RUN_ID) {
        Some(Value::String(s)) if pyoco_core::wire::is_valid_kv_key(s) => s.clone(),
        Some(Value::String(_)) => return Err(invalid("run_id is not a valid run id", None)),
        Some(_) => return Err(invalid("run_id is not a string", None)),
        None => return Err(invalid("missing run_id", None)),
    };
    let some_id = Some(run_id.clone());
    let flow_name = match doc.get(fields::job::FLOW_NAME) {
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(invalid("flow_name is not a string", some_id)),
        None => return Err(invalid("missing flow_name", some_id)),
    };
    match doc.get(fields::job::SUBMITTED_AT) {
        None | Some(Value::Null) | Some(Value::Number(_)) => {}
        Some(Value::String(s)) if s.trim().parse::<f64>().is_ok() => {}
        Some(_) => return Err(invalid("submitted_at is not a number", some_id)),
    }
    let tag = str_field(&doc, fields::job::TAG)
        .unwrap_or("default")
        .to_string();
    let tags: Vec<String> = match doc.get(fields::job::TAGS) {
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|t| t.as_str().map(str::to_string))
            .collect(),
        _ => vec![],
    };
    let params = match doc.get(fields::job::PARAMS) {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(_) => return Err(invalid("params is not an object", some_id)),
    };
    let workflow_yaml = match doc.get(fields::job::WORKFLOW_YAML) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(invalid("workflow_yaml is not a string", some_id)),
    };
    Ok(Job {
        run_id,
        flow_name,
        tags: if tags.is_empty() {
            vec![tag.clone()]
        } else {
            tags
        },
        tag,
        tenant_id: doc
            .get(fields::job::TENANT_ID)
            .cloned()
            .unwrap_or(Value::Null),
        api_key_id: doc
            .get(fields::job::API_KEY_ID)
            .cloned()
            .unwrap_or(Value::Null),
        params,
        workflow_yaml,
        workflow_yaml_sha256: doc
            .get(fields::job::WORKFLOW_YAML_SHA256)
            .cloned()
            .unwrap_or(Value::Null),
        workflow_yaml_bytes: doc
            .get(fields::job::WORKFLOW_YAML_BYTES)
            .cloned()
            .unwrap_or(Value::Null),
        timeout_sec: f64_field(&doc, fields::job::TIMEOUT_SEC).filter(|t| *t > 0.0),
    })
}

impl Job {
    /// The state of this job's run before it starts: what the job says, RUNNING, no tasks yet.
    pub fn run_state(&self, worker_id: &str) -> RunState {
        RunState {
            run_id: self.run_id.clone(),
            flow_name: self.flow_name.clone(),
            tag: self.tag.clone(),
            tags: self.tags.clone(),
            tenant_id: self.tenant_id.clone(),
            api_key_id: self.api_key_id.clone(),
            workflow_yaml_sha256: self.workflow_yaml_sha256.clone(),
            workflow_yaml_bytes: self.workflow_yaml_bytes.clone(),
            params: self.params.clone(),
            status: run_status::RUNNING.into(),
            tasks: Map::new(),
            task_records: Map::new(),
            start_time: None,
            end_time: None,
            error: None,
            worker_id: worker_id.to_string(),
            attempt_id: String::new(),
            note: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_like_the_original() {
        let j = decode_job(br#"{"run_id":"r","flow_name":"f"}"#).unwrap();
        assert_eq!(
            (j.tag.as_str(), j.tags.clone(), j.params.len()),
            ("default", vec!["default".to_string()], 0)
        );
        let j = decode_job(br#"{"run_id":"r","flow_name":"f","tag":"a","tags":["x"],"submitted_at":"1.5","timeout_sec":2}"#).unwrap();
        assert_eq!(
            (j.tag.as_str(), j.tags.clone(), j.timeout_sec),
            ("a", vec!["x".to_string()], Some(2.0))
        );
    }

    /// The copy a dead letter carries is the gateway's job, byte for byte, less `submitted_at`.
    #[test]
    fn the_dead_letter_copy_is_the_gateways_job() {
        let run = pyoco_core::wire::NewRun {
            run_id: "r1".into(),
            flow_name: "f".into(),
            tag: "t".into(),
            tags: vec!["t".into()],
            tenant_id: Some("ten".into()),
            api_key_id: Some("k".into()),
            params: serde_json::from_value(json!({"a": "\u{e9}"})).unwrap(),
            workflow_yaml: Some(("abc".into(), 9)),
            workflow_yaml_text: Some("flow: {}\n".into()),
            timeout_sec: Some(1.5),
            now: 1.25,
        };
        let mut sent = run.job_message();
        let bytes = pyoco_core::json::to_ascii_vec(&sent);
        sent.shift_remove("submitted_at");
        let copy = decode_job(&bytes).unwrap().to_message().to_bytes();
        assert_eq!(
            String::from_utf8(copy).unwrap(),
            String::from_utf8(pyoco_core::json::to_ascii_vec(&sent)).unwrap()
        );
    }

    #[test]
    fn a_job_round_trips_through_to_doc_and_starts_running() {
        let raw = br#"{"run_id":"r","flow_name":"f","tag":"a","tags":["a","b"],"tenant_id":"t","params":{"x":1},"workflow_yaml":"flow: {}","workflow_yaml_sha256":"h","workflow_yaml_bytes":8,"timeout_sec":3}"#;
        let j = decode_job(raw).unwrap();
        let again = decode_job(&serde_json::to_vec(&j.to_doc()).unwrap()).unwrap();
        assert_eq!(again.to_doc(), j.to_doc());
        assert_eq!(j.to_doc()["workflow_yaml_bytes"], 8);
        let s = j.run_state("w");
        assert_eq!(
            (
                s.status.as_str(),
                s.worker_id.as_str(),
                s.tenant_id.clone(),
                s.tags.len()
            ),
            ("RUNNING", "w", json!("t"), 2)
        );
        // A non-positive timeout is no timeout; a missing one is not written back.
        let j = decode_job(br#"{"run_id":"r","flow_name":"f","timeout_sec":0}"#).unwrap();
        assert_eq!(j.timeout_sec, None);
        assert!(j.to_doc().get("timeout_sec").is_none());
    }

    #[test]
    fn invalid_jobs_say_why_and_keep_the_run_id_when_known() {
        let e = decode_job(b"nope").unwrap_err();
        assert!(e.reason.starts_with("job is not JSON") && e.run_id.is_none());
        let e = decode_job(br#"{"flow_name":"f"}"#).unwrap_err();
        assert_eq!(e.reason, "missing run_id");
        let e = decode_job(br#"{"run_id":"r","flow_name":"f","params":[1]}"#).unwrap_err();
        assert_eq!(
            (e.reason.as_str(), e.run_id.as_deref()),
            ("params is not an object", Some("r"))
        );
        let e = decode_job(br#"{"run_id":"r","flow_name":"f","submitted_at":"soon"}"#).unwrap_err();
        assert_eq!(e.reason, "submitted_at is not a number");
        assert!(decode_job(br#"{"run_id":"a b","flow_name":"f"}"#).is_err());
    }
}
