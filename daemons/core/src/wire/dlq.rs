//! The dead-letter message (stream `PYOCO_DLQ`, subject `pyoco.dlq.<tag>`, contract §2.6):
//! `{reason, error, timestamp, …payload}`, written by the worker and read by `pyococtl dlq`.

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

use super::fields::dlq as f;

/// One dead letter. Every field is the JSON value as written (a `null` stays a present
/// `null`), absent fields are not written, and fields this version does not know are kept in
/// `extra`, so a letter written by the original or a newer worker reads without loss.
///
/// Serialises in the order our worker writes: `reason, error, timestamp`, then the run's
/// identity (`run_id … api_key_id`), or `subject` for an `invalid_job`, then `worker_id,
/// num_delivered, payload, job`: both payload shapes of §2.6 keep their order.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub reason: Option<Value>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub error: Option<Value>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub timestamp: Option<Value>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub run_id: Option<Value>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub flow_name: Option<Value>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub tag: Option<Value>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub tags: Option<Value>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub tenant_id: Option<Value>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub api_key_id: Option<Value>,
    /// `invalid_job`: the subject the message arrived on.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub subject: Option<Value>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub worker_id: Option<Value>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub num_delivered: Option<Value>,
    /// `invalid_job`: the first 4096 bytes of the raw message.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub payload: Option<Value>,
    /// Ours: the whole job message, so a replay queues exactly what was submitted.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub job: Option<Value>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A present field is `Some`, even when it is `null` (serde's default reads `null` as None).
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

impl DeadLetter {
    pub fn new(reason: &str, error: &str, timestamp: f64) -> DeadLetter {
        DeadLetter {
            reason: Some(Value::from(reason)),
            error: Some(Value::from(error)),
            timestamp: Some(Value::from(timestamp)),
            ..Default::default()
        }
    }

    /// Reads a letter; None when the message is not a JSON object.
    pub fn from_slice(raw: &[u8]) -> Option<DeadLetter> {
        serde_json::from_slice(raw).ok()
    }

    /// The bytes to publish: compact ASCII JSON, as the original writes.
    pub fn to_bytes(&self) -> Vec<u8> {
        crate::json::to_ascii_vec(self)
    }

    /// A field by its wire name, known or not.
    pub fn get(&self, key: &str) -> Option<&Value> {
        let known = match key {
            f::REASON => &self.reason,
            f::ERROR => &self.error,
            f::TIMESTAMP => &self.timestamp,
            f::RUN_ID => &self.run_id,
            f::FLOW_NAME => &self.flow_name,
            f::TAG => &self.tag,
            f::TAGS => &self.tags,
            f::TENANT_ID => &self.tenant_id,
            f::API_KEY_ID => &self.api_key_id,
            f::SUBJECT => &self.subject,
            f::WORKER_ID => &self.worker_id,
            f::NUM_DELIVERED => &self.num_delivered,
            f::PAYLOAD => &self.payload,
            f::JOB => &self.job,
            _ => return self.extra.get(key),
        };
        known.as_ref()
    }

    /// A string field (None when absent or not a string).
    pub fn str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(Value::as_str)
    }

    pub fn reason(&self) -> Option<&str> {
        self.str(f::REASON)
    }

    /// The letter's own time, when it is a number.
    pub fn timestamp(&self) -> Option<f64> {
        self.timestamp.as_ref().and_then(Value::as_f64)
    }

    /// The job our worker stores in the letter (absent in the original's letters).
    pub fn job(&self) -> Option<&Map<String, Value>> {
        self.job.as_ref().and_then(Value::as_object)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn writes_both_shapes_in_the_workers_order() {
        let run = DeadLetter {
            run_id: Some(json!("r")),
            flow_name: Some(json!("f")),
            tag: Some(json!("t")),
            tags: Some(json!(["t"])),
            tenant_id: Some(Value::Null),
            api_key_id: Some(Value::Null),
            worker_id: Some(json!("w")),
            num_delivered: Some(json!(3)),
            job: Some(json!({"run_id": "r"})),
            ..DeadLetter::new("max_deliver_exceeded", "boom \u{e9}", 1.5)
        };
        assert_eq!(
            String::from_utf8(run.to_bytes()).unwrap(),
            r#"{"reason":"max_deliver_exceeded","error":"boom \u00e9","timestamp":1.5,"run_id":"r","flow_name":"f","tag":"t","tags":["t"],"tenant_id":null,"api_key_id":null,"worker_id":"w","num_delivered":3,"job":{"run_id":"r"}}"#
        );
        let invalid = DeadLetter {
            subject: Some(json!("pyoco.work.t")),
            worker_id: Some(json!("w")),
            num_delivered: Some(json!(1)),
            payload: Some(json!("{")),
            ..DeadLetter::new("invalid_job", "bad", 2.0)
        };
        assert_eq!(
            String::from_utf8(invalid.to_bytes()).unwrap(),
            r#"{"reason":"invalid_job","error":"bad","timestamp":2.0,"subject":"pyoco.work.t","worker_id":"w","num_delivered":1,"payload":"{"}"#
        );
    }

    #[test]
    fn reads_the_originals_letters_without_loss() {
        // As the original writes one (no `job`), plus a field from some other version.
        let raw = br#"{"reason":"flow_not_found","error":"flow_not_found: 'x'","timestamp":1700000000.5,"run_id":"r","flow_name":"x","tag":"t","tags":[],"tenant_id":null,"api_key_id":null,"worker_id":"w","note":{"k":1}}"#;
        let l = DeadLetter::from_slice(raw).unwrap();
        assert_eq!(l.reason(), Some("flow_not_found"));
        assert_eq!(l.timestamp(), Some(1700000000.5));
        assert_eq!(l.tenant_id, Some(Value::Null));
        assert_eq!(l.get(f::TENANT_ID), Some(&Value::Null));
        assert_eq!(l.get("note"), Some(&json!({"k": 1})));
        assert!(l.job().is_none());
        // Same fields out again, the unknown one included.
        assert_eq!(l.to_bytes(), raw.to_vec());
        assert!(DeadLetter::from_slice(b"[1]").is_none());
    }

    /// The serde field names are Rust names; pin them to the wire table.
    #[test]
    fn field_names_are_the_wire_names() {
        let all = DeadLetter {
            reason: Some(json!(0)),
            error: Some(json!(0)),
            timestamp: Some(json!(0)),
            run_id: Some(json!(0)),
            flow_name: Some(json!(0)),
            tag: Some(json!(0)),
            tags: Some(json!(0)),
            tenant_id: Some(json!(0)),
            api_key_id: Some(json!(0)),
            subject: Some(json!(0)),
            worker_id: Some(json!(0)),
            num_delivered: Some(json!(0)),
            payload: Some(json!(0)),
            job: Some(json!(0)),
            extra: Map::new(),
        };
        let v = serde_json::to_value(&all).unwrap();
        for k in v.as_object().unwrap().keys() {
            assert!(all.get(k).is_some(), "{k} is not a fields::dlq name");
        }
        assert_eq!(v.as_object().unwrap().len(), 14);
    }
}
