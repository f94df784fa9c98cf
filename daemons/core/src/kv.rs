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
