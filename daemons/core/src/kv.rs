//! Read-modify-write of one KV document with compare-and-set, written once.
//!
//! Every state change is conditional (architecture: "every state change is conditional"): the
//! entry is read, a closure decides, and the write carries the read revision, so a concurrent
//! writer is never overwritten blindly; on a revision conflict the closure runs again on what the
//! other writer stored.

use std::time::Duration;

use async_nats::jetstream::kv::{self, Operation, Store};
use bytes::Bytes;

use crate::json::to_ascii_vec;
use crate::wire::Doc;

/// Attempts [`modify`] makes before giving up on a key that keeps changing.
pub const DEFAULT_ATTEMPTS: u32 = 50;

/// What the closure wants done with the document it was shown.
#[derive(Debug, Clone)]
pub enum Decision {
    /// Store this document (compact ASCII JSON, as the original writes).
    Write(Doc),
    /// Store these bytes, reporting `Doc` as the document written: for a caller that stores a
    /// different encoding (a compacted run snapshot) of the document it keeps.
    WriteBytes(Doc, Vec<u8>),
    /// No write; the stored document stands.
    Keep,
    /// Delete the key (a tombstone, conditional on the read revision).
    Delete,
}

/// The outcome of a [`modify`].
#[derive(Debug, Clone)]
pub struct Modified {
    /// The document now stored (None after a delete).
    pub doc: Option<Doc>,
    /// The key's revision now (the read revision when nothing was written).
    pub revision: u64,
    /// Whether this call wrote.
    pub written: bool,
    /// The raw value this call replaced (None when the key was absent or deleted), so a caller
    /// can put it back byte for byte.
    pub previous: Option<Bytes>,
}

#[derive(Debug, thiserror::Error)]
pub enum ModifyError {
    /// The closure kept (or deleted) a key that does not exist or was deleted.
    #[error("not found")]
    NotFound,
    /// The closure kept a key whose value is not a JSON object.
    #[error("the stored value is not a JSON object")]
    Undecodable(Bytes),
    #[error("the key kept changing under concurrent writes ({0} attempts)")]
    Conflict(u32),
    /// A NATS failure on the read (`on_write` false) or the write: `kind` is the error kind's
    /// text (what the gateway reports), `message` the whole error.
    #[error("{message}")]
    Nats {
        on_write: bool,
        kind: String,
        message: String,
    },
}

/// [`modify_bounded`] with [`DEFAULT_ATTEMPTS`].
pub async fn modify<F>(store: &Store, key: &str, f: F) -> Result<Modified, ModifyError>
where
    F: FnMut(Option<&Doc>) -> Decision,
{
    modify_bounded(store, key, DEFAULT_ATTEMPTS, f).await
}

/// Reads `key`, shows the closure the stored document (None when absent, deleted or not a JSON
/// object) and carries out its decision with compare-and-set on the read revision: `update` at
/// that revision (a tombstone's too), `create` when the key never existed. On a revision
/// conflict it reads again and asks the closure again, at most `attempts` times, with a short
/// growing pause so that two writers stop colliding.
pub async fn modify_bounded<F>(
    store: &Store,
    key: &str,
    attempts: u32,
    mut f: F,
) -> Result<Modified, ModifyError>
where
    F: FnMut(Option<&Doc>) -> Decision,
{
    fn nats<K: std::fmt::Display + Clone + std::fmt::Debug + PartialEq>(
        e: &async_nats::error::Error<K>,
        on_write: bool,
    ) -> ModifyError {
        ModifyError::Nats {
            on_write,
            kind: e.kind().to_string(),
            message: e.to_string(),
        }
    }
    for attempt in 0..attempts {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(u64::from(attempt.min(10)) * 5)).await;
        }
        let entry = store.entry(key).await.map_err(|e| nats(&e, false))?;
        let (raw, revision) = match &entry {
            Some(e) if e.operation == Operation::Put => (Some(e.value.clone()), Some(e.revision)),
            Some(e) => (None, Some(e.revision)),
            None => (None, None),
        };
        let stored: Option<Doc> = raw.as_ref().and_then(|v| serde_json::from_slice(v).ok());
        let (doc, bytes) = match f(stored.as_ref()) {
            Decision::Keep => {
                return match (stored, raw, revision) {
                    (Some(doc), previous, Some(revision)) => Ok(Modified {
                        doc: Some(doc),
                        revision,
                        written: false,
                        previous,
                    }),
                    (None, Some(raw), _) => Err(ModifyError::Undecodable(raw)),
                    _ => Err(ModifyError::NotFound),
                };
            }
            Decision::Delete => {
                let (Some(rev), Some(previous)) = (revision, raw) else {
                    return Err(ModifyError::NotFound);
                };
                match store.delete_expect_revision(key, Some(rev)).await {
                    Ok(()) => {
                        // The tombstone's revision is not returned by the API; read it back.
                        let revision = match store.entry(key).await {
                            Ok(Some(e)) => e.revision,
                            _ => rev,
                        };
                        return Ok(Modified {
                            doc: None,
                            revision,
                            written: true,
                            previous: Some(previous),
                        });
                    }
                    Err(e) => {
                        // The server's "wrong last sequence" comes back as a generic error:
                        // a changed revision tells a conflict from a failure.
                        match store.entry(key).await {
                            Ok(now) if now.as_ref().map(|e| e.revision) != Some(rev) => continue,
                            _ => return Err(nats(&e, true)),
                        }
                    }
                }
            }
            Decision::Write(doc) => {
                let bytes = to_ascii_vec(&doc);
                (doc, bytes)
            }
            Decision::WriteBytes(doc, bytes) => (doc, bytes),
        };
        let written = match revision {
            Some(rev) => match store.update(key, bytes.into(), rev).await {
                Ok(r) => Some(r),
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => None,
                Err(e) => return Err(nats(&e, true)),
            },
            None => match store.create(key, bytes.into()).await {
                Ok(r) => Some(r),
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => None,
                Err(e) => return Err(nats(&e, true)),
            },
        };
        if let Some(revision) = written {
            return Ok(Modified {
                doc: Some(doc),
                revision,
                written: true,
                previous: raw,
            });
        }
    }
    Err(ModifyError::Conflict(attempts))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::net::TcpStream;
    use std::path::PathBuf;
    use std::process::{Child, Command, Stdio};
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;
    use std::time::Instant;

    /// `nats-server -js` on a free port with a throw-away store; killed on drop.
    struct Nats {
        child: Child,
        port: u16,
        _store: tempfile::TempDir,
    }

    impl Nats {
        fn start() -> Nats {
            let bin = std::env::var_os("PYOCO_TEST_NATS_DEBIAN")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/usr/sbin/nats-server"));
            assert!(
                bin.is_file(),
                "nats-server not found at {} (set PYOCO_TEST_NATS_DEBIAN: source .test-env/env)",
                bin.display()
            );
            for _ in 0..3 {
                let port = std::net::TcpListener::bind("127.0.0.1:0")
                    .unwrap()
                    .local_addr()
                    .unwrap()
                    .port();
                let store = tempfile::tempdir().unwrap();
                let mut child = Command::new(&bin)
                    .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
                    .arg(store.path())
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("start nats-server");
                let deadline = Instant::now() + Duration::from_secs(10);
                while Instant::now() < deadline {
                    if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                        return Nats {
                            child,
                            port,
                            _store: store,
                        };
                    }
                    if child.try_wait().unwrap().is_some() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                let _ = child.kill();
                let _ = child.wait();
            }
            panic!("nats-server did not start");
        }
    }

    impl Drop for Nats {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    async fn bucket(nats: &Nats) -> Store {
        let client = async_nats::connect(format!("nats://127.0.0.1:{}", nats.port))
            .await
            .unwrap();
        let js = async_nats::jetstream::new(client);
        // The buckets as the daemons create them (works on Debian's nats-server 2.9 too).
        js.create_stream(crate::resources::kv_stream_config("t", Duration::ZERO))
            .await
            .unwrap();
        js.get_key_value("t").await.unwrap()
    }

    fn doc(v: serde_json::Value) -> Doc {
        serde_json::from_value(v).unwrap()
    }

    #[tokio::test]
    async fn creates_updates_keeps_and_deletes() {
        let nats = Nats::start();
        let store = bucket(&nats).await;
        assert!(matches!(
            modify(&store, "k", |_| Decision::Keep).await,
            Err(ModifyError::NotFound)
        ));
        let m = modify(&store, "k", |d| {
            assert!(d.is_none());
            Decision::Write(doc(json!({"n": 1, "é": 1.0})))
        })
        .await
        .unwrap();
        assert!(m.written && m.previous.is_none());
        // Stored as the original writes it: compact ASCII JSON.
        assert_eq!(
            store.get("k").await.unwrap().unwrap().as_ref(),
            br#"{"n":1,"\u00e9":1.0}"#
        );
        let m2 = modify(&store, "k", |d| {
            let mut d = d.unwrap().clone();
            d.insert("n".into(), json!(2));
            Decision::Write(d)
        })
        .await
        .unwrap();
        assert!(m2.revision > m.revision);
        assert_eq!(
            m2.previous.as_deref(),
            Some(&br#"{"n":1,"\u00e9":1.0}"#[..])
        );
        let kept = modify(&store, "k", |_| Decision::Keep).await.unwrap();
        assert!(!kept.written);
        assert_eq!(kept.revision, m2.revision);
        assert_eq!(kept.doc.unwrap()["n"], json!(2));
        let del = modify(&store, "k", |_| Decision::Delete).await.unwrap();
        assert!(del.written && del.doc.is_none());
        assert!(store.get("k").await.unwrap().is_none());
        assert!(matches!(
            modify(&store, "k", |_| Decision::Keep).await,
            Err(ModifyError::NotFound)
        ));
        // A deleted key is written again at the tombstone's revision.
        let again = modify(&store, "k", |d| {
            assert!(d.is_none());
            Decision::WriteBytes(doc(json!({"n": 3})), b"{\"n\": 3}".to_vec())
        })
        .await
        .unwrap();
        assert_eq!(again.doc.unwrap()["n"], json!(3));
        assert_eq!(
            store.get("k").await.unwrap().unwrap().as_ref(),
            b"{\"n\": 3}"
        );
        store.put("bad", "[1]".into()).await.unwrap();
        assert!(matches!(
            modify(&store, "bad", |_| Decision::Keep).await,
            Err(ModifyError::Undecodable(b)) if b.as_ref() == b"[1]"
        ));
    }

    /// Another writer gets in between the read and the write: the closure runs again on what
    /// that writer stored, and its change survives.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn conflict_reads_again_and_keeps_the_other_write() {
        let nats = Nats::start();
        let store = bucket(&nats).await;
        store.put("k", r#"{"a":1}"#.into()).await.unwrap();
        let calls = AtomicU32::new(0);
        let other = store.clone();
        let m = modify(&store, "k", |d| {
            if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                tokio::task::block_in_place(|| {
                    tokio::runtime::Handle::current()
                        .block_on(other.put("k", r#"{"a":1,"b":2}"#.into()))
                        .unwrap();
                });
            }
            let mut d = d.unwrap().clone();
            d.insert("c".into(), json!(3));
            Decision::Write(d)
        })
        .await
        .unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        assert_eq!(m.doc.unwrap(), doc(json!({"a": 1, "b": 2, "c": 3})));
        assert_eq!(
            store.get("k").await.unwrap().unwrap().as_ref(),
            br#"{"a":1,"b":2,"c":3}"#
        );
        // A key that changes on every attempt exhausts the bound.
        let err = modify_bounded(&store, "k", 3, |d| {
            tokio::task::block_in_place(|| {
                tokio::runtime::Handle::current()
                    .block_on(other.put("k", r#"{"x":0}"#.into()))
                    .unwrap();
            });
            Decision::Write(d.cloned().unwrap_or_default())
        })
        .await
        .unwrap_err();
        assert!(matches!(err, ModifyError::Conflict(3)));
    }

    /// Concurrent writers incrementing one counter: no increment is lost.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writers_lose_nothing() {
        let nats = Nats::start();
        let store = bucket(&nats).await;
        let calls = Arc::new(AtomicU32::new(0));
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let (store, calls) = (store.clone(), calls.clone());
            tasks.push(tokio::spawn(async move {
                for _ in 0..10 {
                    modify(&store, "n", |d| {
                        calls.fetch_add(1, Ordering::SeqCst);
                        let n = d.and_then(|d| d["n"].as_u64()).unwrap_or(0);
                        Decision::Write(doc(json!({ "n": n + 1 })))
                    })
                    .await
                    .unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let v: Doc = serde_json::from_slice(&store.get("n").await.unwrap().unwrap()).unwrap();
        assert_eq!(v["n"], json!(40));
        assert!(calls.load(Ordering::SeqCst) >= 40);
    }
}
