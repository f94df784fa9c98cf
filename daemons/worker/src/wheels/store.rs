//! Reading the wheel object store (stream `OBJ_<bucket>`) directly.
//!
//! Not through async-nats' object store: the Python original (nats-py) writes meta headers as
//! `{"name": "value"}` while async-nats only reads `{"name": ["value"]}`, and fails the whole
//! listing on the first wheel the original uploaded. The layout is NATS' object store one: the
//! last message on `$O.<bucket>.M.<base64 name>` is the object's info (JSON), its bytes are the
//! messages on `$O.<bucket>.C.<nuid>`.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, DeliverPolicy};
use async_nats::jetstream::{self, stream::Stream};
use futures::StreamExt;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::io::Write;

/// A read that makes no progress for this long fails (NATS gone, or a stream cut short).
const READ_STALL: Duration = Duration::from_secs(15);

/// One object's info, as stored by either implementation.
#[derive(Debug, Clone, Default)]
pub struct WheelInfo {
    pub name: String,
    pub nuid: String,
    pub size: u64,
    pub digest: Option<String>,
    /// Header names lower-cased; a list value gives its first item.
    pub headers: HashMap<String, String>,
    pub deleted: bool,
}

/// The info from a meta message; `None` when it is not one.
pub fn parse_meta(payload: &[u8]) -> Option<WheelInfo> {
    let v: Value = serde_json::from_slice(payload).ok()?;
    let mut headers = HashMap::new();
    if let Some(h) = v.get("headers").and_then(Value::as_object) {
        for (k, val) in h {
            let s = match val {
                Value::String(s) => Some(s.clone()),
                Value::Array(a) => a.first().and_then(Value::as_str).map(str::to_string),
                _ => None,
            };
            if let Some(s) = s {
                headers.insert(k.to_ascii_lowercase(), s);
            }
        }
    }
    Some(WheelInfo {
        name: v.get("name")?.as_str()?.to_string(),
        nuid: v
            .get("nuid")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
        size: v.get("size").and_then(Value::as_u64).unwrap_or(0),
        digest: v.get("digest").and_then(Value::as_str).map(str::to_string),
        headers,
        deleted: v.get("deleted").and_then(Value::as_bool).unwrap_or(false),
    })
}

/// A nuid goes into a subject: one plain token, bounded.
fn valid_nuid(nuid: &str) -> bool {
    !nuid.is_empty() && nuid.len() <= 64 && nuid.bytes().all(|b| b.is_ascii_alphanumeric())
}

#[derive(Clone)]
pub struct WheelStore {
    stream: Stream,
    pub bucket: String,
}

impl WheelStore {
    pub async fn open(js: &jetstream::Context, bucket: &str) -> Result<WheelStore, String> {
        let stream = js
            .get_stream(format!("OBJ_{bucket}"))
            .await
            .map_err(|e| format!("wheel store {bucket}: {e}"))?;
        Ok(WheelStore {
            stream,
            bucket: bucket.to_string(),
        })
    }

    /// Every stored message on `subject` (`policy` decides which), read by an ordered consumer,
    /// at most `max` of them.
    async fn read(
        &self,
        subject: String,
        policy: DeliverPolicy,
        max: usize,
        mut each: impl FnMut(&[u8]) -> Result<(), String>,
    ) -> Result<(), String> {
        let what = format!("reading {subject}");
        let consumer = self
            .stream
            .create_consumer(pull::OrderedConfig {
                filter_subject: subject,
                deliver_policy: policy,
                ..Default::default()
            })
            .await
            .map_err(|e| format!("{what}: {e}"))?;
        if consumer.cached_info().num_pending == 0 {
            return Ok(());
        }
        let mut messages = consumer
            .messages()
            .await
            .map_err(|e| format!("{what}: {e}"))?;
        let mut seen = 0usize;
        loop {
            let msg = match tokio::time::timeout(READ_STALL, messages.next()).await {
                Err(_) => return Err(format!("{what}: no progress for {READ_STALL:?}")),
                Ok(None) => return Err(format!("{what}: the stream ended early")),
                Ok(Some(m)) => m.map_err(|e| format!("{what}: {e}"))?,
            };
            seen += 1;
            if seen > max {
                return Err(format!("{what}: more than {max} messages"));
            }
            each(&msg.payload)?;
            let pending = msg.info().map(|i| i.pending).unwrap_or(0);
            if pending == 0 {
                return Ok(());
            }
        }
    }

    /// The current info of every object (deleted ones included, flagged), at most `max`.
    pub async fn list(&self, max: usize) -> Result<Vec<WheelInfo>, String> {
        let mut out = Vec::new();
        self.read(
            format!("$O.{}.M.>", self.bucket),
            DeliverPolicy::LastPerSubject,
            max,
            |payload| {
                if let Some(info) = parse_meta(payload) {
                    out.push(info);
                }
                Ok(())
            },
        )
        .await?;
        Ok(out)
    }

    /// Streams the object's bytes to `path`, bounded by the size its info declares; returns
    /// (size, SHA-256).
    pub async fn download(&self, info: &WheelInfo, path: &Path) -> Result<(u64, Vec<u8>), String> {
        let name = &info.name;
        if !valid_nuid(&info.nuid) {
            return Err(format!(
                "wheel {name}: its object has an invalid nuid {:?}; upload it again",
                crate::text::truncate(&info.nuid, 80)
            ));
        }
        let mut hasher = Sha256::new();
        let mut total = 0u64;
        // Written chunk by chunk (never the whole wheel in memory); plain writes of one chunk
        // (128 KiB) to local disk are short enough for the callback.
        let mut file = std::fs::File::create(path)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        let declared = info.size;
        let max_chunks = usize::try_from(declared / 1024 + 1024).unwrap_or(usize::MAX);
        let res = self
            .read(
                format!("$O.{}.C.{}", self.bucket, info.nuid),
                DeliverPolicy::All,
                max_chunks,
                |payload| {
                    total += payload.len() as u64;
                    if total > declared {
                        return Err(format!("wheel {name}: more bytes than the {declared} its object declares; the store is corrupt, upload it again"));
                    }
                    hasher.update(payload);
                    file.write_all(payload)
                        .map_err(|e| format!("cannot write {}: {e}", path.display()))
                },
            )
            .await;
        res.map_err(|e| format!("downloading wheel {name}: {e}"))?;
        if total != declared {
            return Err(format!("wheel {name}: got {total} of the {declared} bytes its object declares (replaced or deleted meanwhile?); not installed"));
        }
        file.flush()
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        Ok((total, hasher.finalize().to_vec()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_of_either_implementation_parses() {
        // nats-py (the original): header values are strings.
        let py = br#"{"name":"a-1.0-py3-none-any.whl","description":null,"headers":{"content-type":"application/octet-stream","sha256":"ab","x-pyoco-wheel-tags":"x,y"},"options":{"max_chunk_size":131072},"bucket":"pyoco_wheels","nuid":"ABC123","size":10,"mtime":"2026-01-01T00:00:00Z","chunks":1,"digest":"SHA-256=xyz="}"#;
        let i = parse_meta(py).unwrap();
        assert_eq!(i.name, "a-1.0-py3-none-any.whl");
        assert_eq!(i.headers["x-pyoco-wheel-tags"], "x,y");
        assert_eq!((i.size, i.nuid.as_str(), i.deleted), (10, "ABC123", false));
        // async-nats: lists, any case.
        let rs = br#"{"name":"b.whl","headers":{"X-Pyoco-Wheel-Tags":["gpu"]},"nuid":"N","size":0,"deleted":true}"#;
        let i = parse_meta(rs).unwrap();
        assert_eq!(i.headers["x-pyoco-wheel-tags"], "gpu");
        assert!(i.deleted);
        assert!(parse_meta(b"not json").is_none());
        assert!(parse_meta(br#"{"nuid":"x"}"#).is_none());
    }

    #[test]
    fn nuids_are_single_plain_tokens() {
        assert!(valid_nuid("Xo3bV9aQ2lJ7sKfP1mN4tR"));
        for bad in ["", "a.b", "a*", ">", "a b", &"a".repeat(65)] {
            assert!(!valid_nuid(bad), "{bad}");
        }
    }
}
