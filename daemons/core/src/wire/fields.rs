//! Field names of the wire documents (contract §2, §3.6, §5), written once.
//!
//! One module per document. A field that several documents share (`run_id`, `tag`, …) is
//! defined once in [`run`] and re-exported, so `job::RUN_ID == run::RUN_ID` by construction.
//! The idempotency record (KV `pyoco_idempotency`) has no fields: its value is the run id.

/// Run snapshot (KV `pyoco_runs`, contract §2.1).
pub mod run {
    pub const RUN_ID: &str = "run_id";
    pub const FLOW_NAME: &str = "flow_name";
    pub const TAG: &str = "tag";
    pub const TAGS: &str = "tags";
    pub const TENANT_ID: &str = "tenant_id";
    pub const API_KEY_ID: &str = "api_key_id";
    pub const WORKFLOW_YAML_SHA256: &str = "workflow_yaml_sha256";
    pub const WORKFLOW_YAML_BYTES: &str = "workflow_yaml_bytes";
    pub const CANCEL_REQUESTED_AT: &str = "cancel_requested_at";
    pub const CANCEL_REQUESTED_BY: &str = "cancel_requested_by";
    pub const STATUS: &str = "status";
    pub const PARAMS: &str = "params";
    pub const TASKS: &str = "tasks";
    pub const TASK_RECORDS: &str = "task_records";
    pub const TASK_RECORDS_TRUNCATED: &str = "task_records_truncated";
    pub const START_TIME: &str = "start_time";
    pub const END_TIME: &str = "end_time";
    pub const HEARTBEAT_AT: &str = "heartbeat_at";
    pub const UPDATED_AT: &str = "updated_at";
    pub const ERROR: &str = "error";
    /// Only on the worker's pickup snapshot (contract §12).
    pub const WORKER_ID: &str = "worker_id";
    /// Ours: the run timeout; the original ignores it.
    pub const TIMEOUT_SEC: &str = "timeout_sec";
    /// Ours: which execution owns the run (`<worker_id>/<delivery>/<start ms>`), for fencing
    /// between workers; the original ignores it.
    pub const ATTEMPT_ID: &str = "attempt_id";
}

/// Job message (stream `PYOCO_WORK`, contract §2.5).
pub mod job {
    pub use super::run::{
        API_KEY_ID, FLOW_NAME, PARAMS, RUN_ID, TAG, TAGS, TENANT_ID, TIMEOUT_SEC,
        WORKFLOW_YAML_BYTES, WORKFLOW_YAML_SHA256,
    };
    pub const SUBMITTED_AT: &str = "submitted_at";
    /// The raw flow.yaml text (`POST /runs/yaml` only), not base64.
    pub const WORKFLOW_YAML: &str = "workflow_yaml";
}

/// Worker record (KV `pyoco_workers`, contract §3.6).
pub mod worker {
    pub use super::run::{HEARTBEAT_AT, TAGS, UPDATED_AT, WORKER_ID};
    pub const INSTANCE_ID: &str = "instance_id";
    pub const STATE: &str = "state";
    pub const HIDDEN: &str = "hidden";
    pub const LAST_SEEN_AT: &str = "last_seen_at";
    pub const LAST_HEARTBEAT_AT: &str = "last_heartbeat_at";
    pub const CURRENT_RUN_ID: &str = "current_run_id";
    /// Ours: every run of a worker with several slots; the original has only `current_run_id`.
    pub const CURRENT_RUN_IDS: &str = "current_run_ids";
    pub const LAST_RUN_ID: &str = "last_run_id";
    pub const LAST_RUN_STATUS: &str = "last_run_status";
    pub const LAST_RUN_STARTED_AT: &str = "last_run_started_at";
    pub const LAST_RUN_FINISHED_AT: &str = "last_run_finished_at";
    pub const STOPPED_AT: &str = "stopped_at";
    pub const STOP_REASON: &str = "stop_reason";
    pub const WHEEL_SYNC: &str = "wheel_sync";
}

/// Dead-letter message (stream `PYOCO_DLQ`, contract §2.6): `{reason, error, timestamp, …payload}`.
pub mod dlq {
    pub use super::run::{API_KEY_ID, ERROR, FLOW_NAME, RUN_ID, TAG, TAGS, TENANT_ID, WORKER_ID};
    pub const REASON: &str = "reason";
    pub const TIMESTAMP: &str = "timestamp";
    /// `invalid_job`: the subject the message arrived on.
    pub const SUBJECT: &str = "subject";
    pub const NUM_DELIVERED: &str = "num_delivered";
    /// `invalid_job`: the first 4096 bytes of the raw message.
    pub const PAYLOAD: &str = "payload";
    /// Ours: the whole job, so a replay queues exactly what was submitted.
    pub const JOB: &str = "job";
}

/// API key record (KV `pyoco_auth`, key `api_keys.<key_id>`, contract §5).
pub mod api_key {
    pub use super::run::TENANT_ID;
    pub const KEY_ID: &str = "key_id";
    pub const KDF: &str = "kdf";
    pub const ITERATIONS: &str = "iterations";
    pub const SALT_B64: &str = "salt_b64";
    pub const HASH_B64: &str = "hash_b64";
    pub const CREATED_AT: &str = "created_at";
    pub const REVOKED_AT: &str = "revoked_at";
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apikey::ApiKeyRecord;

    /// The API key record is a serde struct (its names are Rust field names, which cannot be
    /// consts); pin them to this table so neither drifts alone.
    #[test]
    fn api_key_record_serialises_with_these_names() {
        let rec = ApiKeyRecord {
            key_id: "k".into(),
            tenant_id: "t".into(),
            kdf: "pbkdf2_hmac_sha256".into(),
            iterations: 1,
            salt_b64: "s".into(),
            hash_b64: "h".into(),
            created_at: 1.0,
            revoked_at: None,
            extra: Default::default(),
        };
        let v = serde_json::to_value(&rec).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        use api_key::*;
        assert_eq!(
            keys,
            [KEY_ID, TENANT_ID, KDF, ITERATIONS, SALT_B64, HASH_B64, CREATED_AT, REVOKED_AT]
        );
    }

    #[test]
    fn shared_names_are_one_definition() {
        assert_eq!(job::RUN_ID, run::RUN_ID);
        assert_eq!(dlq::WORKER_ID, worker::WORKER_ID);
        assert_eq!(job::WORKFLOW_YAML_SHA256, "workflow_yaml_sha256");
        assert_eq!(run::CANCEL_REQUESTED_AT, "cancel_requested_at");
    }
}
