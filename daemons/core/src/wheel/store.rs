//! The wheel object store, read and written in nats-py's format: meta on
//! `$O.<bucket>.M.<urlsafe-b64(name)>` (rollup per subject), chunks on `$O.<bucket>.C.<nuid>`.
//! nats-py keeps meta `headers` as a map of plain strings, which async-nats' typed
//! `ObjectInfo` cannot read (it wants lists), so the meta JSON is handled here; list values
//! (written by Go/Rust clients) are read too, their first element counting.

use async_nats::jetstream::{self, consumer, stream};
use base64::Engine;
use bytes::Bytes;
use futures::StreamExt;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

/// Chunk size nats-py and the Go client use.
pub const CHUNK_SIZE: usize = 128 * 1024;
/// A listing stops after this many objects (bounded memory; a real registry has far fewer).
pub const MAX_LIST: usize = 100_000;

/// One object's meta document (what `ObjectInfo.as_dict()` writes), kept as JSON so unknown
/// fields survive a rewrite.
#[derive(Debug, Clone)]
pub struct ObjectInfo(pub Map<String, Value>);

impl ObjectInfo {
    pub fn name(&self) -> &str {
        self.0.get("name").and_then(Value::as_str).unwrap_or("")
    }
    pub fn nuid(&self) -> &str {
        self.0.get("nuid").and_then(Value::as_str).unwrap_or("")
    }
    pub fn size(&self) -> u64 {
        self.0.get("size").and_then(Value::as_u64).unwrap_or(0)
    }
    pub fn chunks(&self) -> u64 {
        self.0.get("chunks").and_then(Value::as_u64).unwrap_or(0)
    }
    pub fn digest(&self) -> &str {
        self.0.get("digest").and_then(Value::as_str).unwrap_or("")
    }
    pub fn mtime(&self) -> &str {
        self.0.get("mtime").and_then(Value::as_str).unwrap_or("")
    }
    pub fn deleted(&self) -> bool {
        self.0
            .get("deleted")
            .and_then(Value::as_bool)
            .unwrap_or(false)
    }
    /// A meta header, looked up as written and in `str.title()` form; list values give their
    /// first element.
    pub fn header(&self, key: &str) -> Option<String> {
        let h = self.0.get("headers")?.as_object()?;
        let v = h.get(key).or_else(|| h.get(&title_case(key)))?;
        match v {
            Value::String(s) => Some(s.clone()),
            Value::Array(a) => a.first().and_then(Value::as_str).map(str::to_string),
            _ => None,
        }
    }
    /// The wheel's tags from `x-pyoco-wheel-tags` (invalid CSV → none).
    pub fn tags(&self) -> Vec<String> {
        super::parse_tags_csv(self.header(super::TAGS_HEADER).as_deref()).unwrap_or_default()
    }
    /// The `sha256` header when it is 64 hex digits.
    pub fn sha256_hex(&self) -> Option<String> {
        let v = self.header("sha256")?.trim().to_ascii_lowercase();
        (v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit())).then_some(v)
    }
    /// The SHA-256 of the content from `digest` (`SHA-256=<urlsafe b64>`).
    pub fn digest_bytes(&self) -> Option<Vec<u8>> {
        let d = self.digest();
        let b = d
            .strip_prefix("SHA-256=")
            .or_else(|| d.strip_prefix("sha-256="))?;
        base64::engine::general_purpose::URL_SAFE
            .decode(b)
            .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(b))
            .ok()
    }
}

fn title_case(s: &str) -> String {
    // Python's str.title(): upper after any non-letter, lower otherwise.
    let mut out = String::new();
    let mut prev_letter = false;
    for c in s.chars() {
        if c.is_alphabetic() {
            if prev_letter {
                out.extend(c.to_lowercase());
            } else {
                out.extend(c.to_uppercase());
            }
            prev_letter = true;
        } else {
            out.push(c);
            prev_letter = false;
        }
    }
    out
}

/// Errors of the store, split so callers can answer 404 / 503 / 507.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("object not found")]
    NotFound,
    /// The bucket's `max_bytes` would be exceeded.
    #[error("object store full: {0}")]
    Full(String),
    #[error("bad object meta: {0}")]
    BadMeta(String),
    #[error("{0}")]
    Nats(String),
}

fn nats<E: std::fmt::Display>(e: E) -> StoreError {
    let s = e.to_string();
    if s.contains("maximum bytes exceeded") || s.contains("insufficient resources") {
        StoreError::Full(s)
    } else {
        StoreError::Nats(s)
    }
}

/// A handle on one object-store bucket.
#[derive(Clone)]
pub struct WheelStore {
    pub js: jetstream::Context,
    pub bucket: String,
}

/// A random NUID-like id (22 base62 characters) naming one upload's chunk subject.
pub fn new_nuid() -> String {
    use rand::Rng;
    const A: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut r = rand::thread_rng();
    (0..22)
        .map(|_| A[r.gen_range(0..A.len())] as char)
        .collect()
}

/// Python's `datetime.now(timezone.utc).isoformat()`.
pub fn now_iso() -> String {
    chrono::Utc::now()
        .format("%Y-%m-%dT%H:%M:%S%.6f+00:00")
        .to_string()
}

impl WheelStore {
    pub fn new(js: jetstream::Context, bucket: &str) -> WheelStore {
        WheelStore {
            js,
            bucket: bucket.to_string(),
        }
    }
    fn stream_name(&self) -> String {
        format!("OBJ_{}", self.bucket)
    }
    pub fn meta_subject(&self, name: &str) -> String {
        format!(
            "$O.{}.M.{}",
            self.bucket,
            base64::engine::general_purpose::URL_SAFE.encode(name.as_bytes())
        )
    }
    /// A nuid from a stored meta goes into a subject: it must be one plain, bounded token.
    pub fn valid_nuid(nuid: &str) -> bool {
        !nuid.is_empty() && nuid.len() <= 64 && nuid.bytes().all(|b| b.is_ascii_alphanumeric())
    }
    pub fn chunk_subject(&self, nuid: &str) -> String {
        format!("$O.{}.C.{}", self.bucket, nuid)
    }
    async fn stream(&self) -> Result<stream::Stream, StoreError> {
        self.js.get_stream(self.stream_name()).await.map_err(nats)
    }

    /// The current meta of `name`, deleted ones included.
    pub async fn info_any(&self, name: &str) -> Result<Option<ObjectInfo>, StoreError> {
        let s = self.stream().await?;
        match s
            .get_last_raw_message_by_subject(&self.meta_subject(name))
            .await
        {
            Ok(m) => parse_meta(&m.payload).map(Some),
            Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(nats(e)),
        }
    }

    /// The current meta of `name` when it exists and is not deleted.
    pub async fn info(&self, name: &str) -> Result<ObjectInfo, StoreError> {
        match self.info_any(name).await? {
            Some(i) if !i.deleted() => Ok(i),
            _ => Err(StoreError::NotFound),
        }
    }

    /// Every object not deleted (order of the stream).
    pub async fn list(&self) -> Result<Vec<ObjectInfo>, StoreError> {
        let s = self.stream().await?;
        let all = format!("$O.{}.M.>", self.bucket);
        match s.get_last_raw_message_by_subject(&all).await {
            Ok(_) => {}
            Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => {
                return Ok(Vec::new())
            }
            Err(e) => return Err(nats(e)),
        }
        let c = s
            .create_consumer(consumer::push::OrderedConfig {
                deliver_policy: consumer::DeliverPolicy::LastPerSubject,
                deliver_subject: self.js.client().new_inbox(),
                filter_subject: all,
                ..Default::default()
            })
            .await
            .map_err(nats)?;
        let pending = c.cached_info().num_pending;
        let mut out = Vec::new();
        if pending == 0 {
            return Ok(out);
        }
        let mut msgs = c.messages().await.map_err(nats)?;
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let m = tokio::time::timeout_at(deadline, msgs.next())
                .await
                .map_err(|_| StoreError::Nats("TimeoutError".into()))?;
            let Some(m) = m else { break };
            let m = m.map_err(nats)?;
            let left = m.info().map(|i| i.pending).unwrap_or(0);
            if let Ok(info) = parse_meta(&m.payload) {
                if !info.deleted() && out.len() < MAX_LIST {
                    out.push(info);
                }
            }
            if left == 0 {
                break;
            }
        }
        Ok(out)
    }

    /// Starts an upload: chunks go under a new nuid and nothing is visible until
    /// [`Upload::commit`] publishes the meta ([`Upload::abort`] purges them).
    pub fn begin(&self) -> Upload {
        Upload {
            store: self.clone(),
            nuid: new_nuid(),
            hasher: Sha256::new(),
            size: 0,
            chunks: 0,
            buf: Vec::with_capacity(CHUNK_SIZE),
            acks: Vec::new(),
        }
    }

    pub async fn purge_chunks(&self, nuid: &str) -> Result<(), StoreError> {
        let s = self.stream().await?;
        s.purge()
            .filter(self.chunk_subject(nuid))
            .await
            .map_err(nats)?;
        Ok(())
    }

    /// Marks `name` deleted (meta rewritten as nats-py does) and purges its chunks.
    pub async fn delete(&self, info: &ObjectInfo) -> Result<(), StoreError> {
        let mut m = info.0.clone();
        m.insert("deleted".into(), json!(true));
        m.insert("size".into(), json!(0));
        m.insert("chunks".into(), json!(0));
        m.insert("digest".into(), json!(""));
        m.insert("mtime".into(), json!(""));
        let r = self.publish_meta(info.name(), &m).await;
        let p = self.purge_chunks(info.nuid()).await;
        r.and(p)
    }

    async fn publish_meta(&self, name: &str, m: &Map<String, Value>) -> Result<(), StoreError> {
        let mut h = async_nats::HeaderMap::new();
        h.insert("Nats-Rollup", "sub");
        let body = serde_json::to_vec(m).map_err(|e| StoreError::BadMeta(e.to_string()))?;
        self.js
            .publish_with_headers(self.meta_subject(name), h, body.into())
            .await
            .map_err(nats)?
            .await
            .map_err(nats)?;
        Ok(())
    }

    /// The chunks of `info`, in order, as a stream of byte blocks; the last item is an error
    /// when the content does not match the meta's SHA-256 digest or size.
    pub async fn read(
        &self,
        info: &ObjectInfo,
    ) -> Result<impl futures::Stream<Item = Result<Bytes, StoreError>>, StoreError> {
        if !Self::valid_nuid(info.nuid()) {
            return Err(StoreError::BadMeta(format!(
                "invalid nuid {:?}",
                info.nuid().chars().take(80).collect::<String>()
            )));
        }
        let s = self.stream().await?;
        let chunks = info.chunks();
        let size = info.size();
        let want = info.digest_bytes();
        let msgs = if chunks > 0 {
            let c = s
                .create_consumer(consumer::push::OrderedConfig {
                    deliver_policy: consumer::DeliverPolicy::All,
                    deliver_subject: self.js.client().new_inbox(),
                    filter_subject: self.chunk_subject(info.nuid()),
                    ..Default::default()
                })
                .await
                .map_err(nats)?;
            Some(c.messages().await.map_err(nats)?)
        } else {
            None
        };
        let state = (msgs, 0u64, 0u64, Sha256::new(), false);
        Ok(futures::stream::unfold(
            state,
            move |(mut msgs, seen, got, mut h, done)| {
                let want = want.clone();
                async move {
                    if done || seen >= chunks {
                        return None;
                    }
                    let m = msgs.as_mut()?;
                    let next =
                        tokio::time::timeout(std::time::Duration::from_secs(30), m.next()).await;
                    let b = match next {
                        Err(_) => Err(StoreError::Nats("TimeoutError".into())),
                        Ok(None) => Err(StoreError::Nats("chunk stream ended".into())),
                        Ok(Some(Err(e))) => Err(nats(e)),
                        Ok(Some(Ok(msg))) => Ok(msg.payload.clone()),
                    };
                    let b = match b {
                        Ok(b) => b,
                        Err(e) => return Some((Err(e), (msgs, seen, got, h, true))),
                    };
                    h.update(&b);
                    let got = got + b.len() as u64;
                    let seen = seen + 1;
                    if seen == chunks {
                        let digest_ok = want
                            .as_ref()
                            .is_none_or(|w| w.as_slice() == h.clone().finalize().as_slice());
                        if !digest_ok || got != size {
                            let e = StoreError::BadMeta(
                                "content does not match its SHA-256 digest or size".into(),
                            );
                            return Some((Err(e), (msgs, seen, got, h, true)));
                        }
                    }
                    Some((Ok(b), (msgs, seen, got, h, false)))
                }
            },
        ))
    }
}

fn parse_meta(payload: &[u8]) -> Result<ObjectInfo, StoreError> {
    match serde_json::from_slice::<Value>(payload) {
        Ok(Value::Object(m)) => Ok(ObjectInfo(m)),
        Ok(_) => Err(StoreError::BadMeta("not an object".into())),
        Err(e) => Err(StoreError::BadMeta(e.to_string())),
    }
}

/// One upload in progress: chunks published, meta not yet.
pub struct Upload {
    store: WheelStore,
    pub nuid: String,
    hasher: Sha256,
    pub size: u64,
    chunks: u64,
    buf: Vec<u8>,
    acks: Vec<async_nats::jetstream::context::PublishAckFuture>,
}

/// Publish acks outstanding at most (bounds memory: each holds one chunk in flight).
const ACK_WINDOW: usize = 8;

impl Upload {
    /// Appends bytes, publishing every full chunk.
    pub async fn write(&mut self, mut data: &[u8]) -> Result<(), StoreError> {
        self.hasher.update(data);
        self.size += data.len() as u64;
        while !data.is_empty() {
            let room = CHUNK_SIZE - self.buf.len();
            let take = room.min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buf.len() == CHUNK_SIZE {
                self.flush_chunk().await?;
            }
        }
        Ok(())
    }

    async fn flush_chunk(&mut self) -> Result<(), StoreError> {
        let chunk = Bytes::from(std::mem::replace(
            &mut self.buf,
            Vec::with_capacity(CHUNK_SIZE),
        ));
        let ack = self
            .store
            .js
            .publish(self.store.chunk_subject(&self.nuid), chunk)
            .await
            .map_err(nats)?;
        self.acks.push(ack);
        self.chunks += 1;
        if self.acks.len() >= ACK_WINDOW {
            for a in self.acks.drain(..) {
                a.await.map_err(nats)?;
            }
        }
        Ok(())
    }

    /// Publishes the last chunk and waits for every ack; returns the SHA-256.
    pub async fn finish(&mut self) -> Result<[u8; 32], StoreError> {
        if !self.buf.is_empty() {
            self.flush_chunk().await?;
        }
        for a in self.acks.drain(..) {
            a.await.map_err(nats)?;
        }
        Ok(self.hasher.clone().finalize().into())
    }

    /// Removes whatever was written. The chunks are never referenced by any meta, so they are
    /// invisible anyway; when NATS is down the purge is retried in the background (every 2 s for
    /// 2 minutes) so an upload cut by an outage does not keep its space.
    pub async fn abort(&mut self) {
        self.acks.clear();
        if self.store.purge_chunks(&self.nuid).await.is_ok() {
            return;
        }
        let (store, nuid) = (self.store.clone(), self.nuid.clone());
        tokio::spawn(async move {
            for _ in 0..60 {
                tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                if store.purge_chunks(&nuid).await.is_ok() {
                    return;
                }
            }
            tracing::warn!(
                nuid,
                "could not purge the chunks of an aborted wheel upload"
            );
        });
    }

    /// Publishes the meta (the object becomes visible) and purges the chunks of the version it
    /// replaces. `headers` are written as plain strings, as nats-py does.
    pub async fn commit(
        &mut self,
        name: &str,
        sha: &[u8; 32],
        headers: Map<String, Value>,
        previous: Option<&ObjectInfo>,
    ) -> Result<ObjectInfo, StoreError> {
        let mut m = Map::new();
        m.insert("name".into(), json!(name));
        m.insert("bucket".into(), json!(self.store.bucket));
        m.insert("nuid".into(), json!(self.nuid));
        m.insert("size".into(), json!(self.size));
        m.insert("mtime".into(), json!(now_iso()));
        m.insert("chunks".into(), json!(self.chunks));
        m.insert(
            "digest".into(),
            json!(format!(
                "SHA-256={}",
                base64::engine::general_purpose::URL_SAFE.encode(sha)
            )),
        );
        m.insert("deleted".into(), json!(false));
        m.insert("headers".into(), Value::Object(headers));
        m.insert("options".into(), json!({"max_chunk_size": CHUNK_SIZE}));
        self.store.publish_meta(name, &m).await?;
        if let Some(p) = previous {
            if !p.deleted() && p.nuid() != self.nuid {
                let _ = self.store.purge_chunks(p.nuid()).await;
            }
        }
        Ok(ObjectInfo(m))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_of_either_implementation_parses() {
        // nats-py (the original): header values are strings.
        let py = br#"{"name":"a-1.0-py3-none-any.whl","headers":{"content-type":"application/octet-stream","x-pyoco-wheel-tags":"x,y"},"nuid":"ABC123","size":10,"chunks":1,"digest":"SHA-256=xyz="}"#;
        let i = parse_meta(py).unwrap();
        assert_eq!(
            (i.name(), i.nuid(), i.size(), i.deleted()),
            ("a-1.0-py3-none-any.whl", "ABC123", 10, false)
        );
        assert_eq!(i.header("x-pyoco-wheel-tags").as_deref(), Some("x,y"));
        // async-nats / Go: lists, title case.
        let rs = br#"{"name":"b.whl","headers":{"X-Pyoco-Wheel-Tags":["gpu"]},"nuid":"N","size":0,"deleted":true}"#;
        let i = parse_meta(rs).unwrap();
        assert_eq!(i.header("x-pyoco-wheel-tags").as_deref(), Some("gpu"));
        assert!(i.deleted());
        assert!(parse_meta(b"not json").is_err());
    }

    #[test]
    fn digests_decode_with_or_without_padding() {
        let sha = Sha256::digest(b"wheel");
        let info = |d: String| ObjectInfo(serde_json::from_value(json!({"digest": d})).unwrap());
        let padded = format!(
            "SHA-256={}",
            base64::engine::general_purpose::URL_SAFE.encode(sha)
        );
        assert_eq!(info(padded.clone()).digest_bytes().unwrap(), sha.to_vec());
        let bare = padded.trim_end_matches('=').to_string();
        assert_eq!(info(bare).digest_bytes().unwrap(), sha.to_vec());
        assert!(info("MD5=abc".into()).digest_bytes().is_none());
    }

    #[test]
    fn nuids_are_single_plain_tokens() {
        assert!(WheelStore::valid_nuid("Xo3bV9aQ2lJ7sKfP1mN4tR"));
        for bad in ["", "a.b", "a*", ">", "a b", &"a".repeat(65)] {
            assert!(!WheelStore::valid_nuid(bad), "{bad}");
        }
    }
}
