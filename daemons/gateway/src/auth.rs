//! API-key authentication (contract §5), with a verified-key cache.
//!
//! The original runs PBKDF2 (200 000 iterations) on the event loop for every request. Here a
//! verified key is cached in memory (keyed by the SHA-256 of the presented key), PBKDF2 runs on
//! the blocking pool, and a watch on the auth bucket drops cached entries of a key the moment its
//! record changes, so a revocation takes effect within the watch latency (milliseconds).
//!
//! Hardened against abuse: keys that verified and keys that did not are cached apart (a flood
//! of well-formed bogus keys fills only its own bounded map and never evicts the valid ones), at
//! most [`MAX_CONCURRENT_KDF`] PBKDF2 runs happen at once (the rest wait their turn instead of
//! taking every core; past [`MAX_KDF_WAITING`] waiting, 503 at once), and an invalidation
//! epoch keeps a verification that was in flight when a key changed from caching a result the
//! change made stale (the revocation race).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_nats::jetstream::kv::{self, Operation};
use axum::http::{HeaderMap, StatusCode};
use pyoco_core::apikey;
use sha2::{Digest, Sha256};

use crate::error::{ApiError, ApiResult};
use crate::index::Follower;

/// Who made a request, when auth is on.
#[derive(Debug, Clone, PartialEq)]
pub struct Principal {
    pub tenant_id: String,
    pub api_key_id: String,
    /// The key's own callable allow list (record field `callable_allow`), if it has one.
    pub callable_allow: Option<Result<pyoco_core::callables::CallableAllow, String>>,
}

#[derive(Clone)]
struct Cached {
    key_id: String,
    principal: Option<Principal>,
    at: Instant,
}

pub struct Auth {
    pub enabled: bool,
    pub header: String,
    pepper: Option<String>,
    ttl: Duration,
    /// Keys that verified.
    cache: Mutex<HashMap<[u8; 32], Cached>>,
    /// Keys that did not (unknown id, wrong secret, revoked).
    rejected: Mutex<HashMap<[u8; 32], Cached>>,
    /// Bumped by every invalidation; a verification caches its result only if no invalidation
    /// happened since it read the record.
    epoch: AtomicU64,
    kdf: tokio::sync::Semaphore,
    /// Verifications waiting for a PBKDF2 turn.
    kdf_waiting: AtomicUsize,
}

/// Each cache never grows past this; a full one is simply cleared (entries are cheap to redo).
const CACHE_MAX: usize = 10_000;
/// PBKDF2 verifications at once (200 000 iterations each: ~0.1 s of one core).
pub const MAX_CONCURRENT_KDF: usize = 4;
/// Verifications that may wait for a turn; more are answered 503 at once. A flood of wrong
/// secrets for a real key id (each one a PBKDF2) then costs a newly presented valid key at
/// most this many turns of waiting (~1.6 s), not minutes.
pub const MAX_KDF_WAITING: usize = 64;

/// Counts a verification as waiting until dropped (also when the client goes away).
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn invalid() -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "invalid api key")
}

impl Auth {
    pub fn new(enabled: bool, header: &str, pepper: Option<String>, ttl: Duration) -> Auth {
        Auth {
            enabled,
            header: header.to_string(),
            pepper,
            ttl,
            cache: Mutex::default(),
            rejected: Mutex::default(),
            epoch: AtomicU64::new(0),
            kdf: tokio::sync::Semaphore::new(MAX_CONCURRENT_KDF),
            kdf_waiting: AtomicUsize::new(0),
        }
    }

    /// `Ok(None)` when auth is off; the caller when the key is valid; 401/403/503 otherwise.
    pub async fn check(
        &self,
        headers: &HeaderMap,
        store: Option<&kv::Store>,
    ) -> ApiResult<Option<Principal>> {
        if !self.enabled {
            return Ok(None);
        }
        let presented = headers
            .get(self.header.as_str())
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .unwrap_or("");
        if presented.is_empty() {
            return Err(ApiError::new(StatusCode::UNAUTHORIZED, "api key required"));
        }
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        for cache in [&self.cache, &self.rejected] {
            if let Some(hit) = cache.lock().unwrap().get(&digest).cloned() {
                if hit.at.elapsed() < self.ttl {
                    return hit.principal.map(Some).ok_or_else(invalid);
                }
            }
        }
        let (key_id, secret) = apikey::parse_presented_key(presented).map_err(|_| invalid())?;
        let store = store.ok_or_else(|| ApiError::nats("not connected"))?;
        let epoch = self.epoch.load(Ordering::SeqCst);
        let raw = store
            .get(apikey::kv_key(&key_id))
            .await
            .map_err(|e| ApiError::nats(e.kind()))?;
        let principal = match raw
            .and_then(|b| serde_json::from_slice::<apikey::ApiKeyRecord>(b.as_ref()).ok())
        {
            None => None,
            Some(record) => {
                let pepper = self.pepper.clone();
                let secret = secret.to_string();
                let tenant = record.tenant_id.clone();
                let callable_allow = record.callable_allow();
                let _turn = self.kdf_turn().await?;
                let ok = tokio::task::spawn_blocking(move || {
                    apikey::verify(&record, &secret, pepper.as_deref())
                })
                .await
                .unwrap_or(false);
                ok.then(|| Principal {
                    tenant_id: tenant,
                    api_key_id: key_id.clone(),
                    callable_allow,
                })
            }
        };
        self.remember(digest, key_id, principal.clone(), epoch);
        principal.map(Some).ok_or_else(invalid)
    }

    /// A PBKDF2 turn, or 503 when too many verifications wait already.
    async fn kdf_turn(&self) -> ApiResult<Option<tokio::sync::SemaphorePermit<'_>>> {
        if let Ok(turn) = self.kdf.try_acquire() {
            return Ok(Some(turn));
        }
        let waiting = Waiting(&self.kdf_waiting);
        if self.kdf_waiting.fetch_add(1, Ordering::SeqCst) >= MAX_KDF_WAITING {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("too many api key verifications in progress ({MAX_KDF_WAITING} waiting); retry shortly"),
            ));
        }
        let turn = self.kdf.acquire().await.ok();
        drop(waiting);
        Ok(turn)
    }

    /// Caches a verification made from the record as it was at `epoch`, unless a key changed
    /// since (then the next request verifies again).
    fn remember(&self, digest: [u8; 32], key_id: String, principal: Option<Principal>, epoch: u64) {
        let cache = if principal.is_some() {
            &self.cache
        } else {
            &self.rejected
        };
        let mut cache = cache.lock().unwrap();
        // Checked under the lock `invalidate` also takes: no invalidation can slip in between.
        if self.epoch.load(Ordering::SeqCst) != epoch {
            return;
        }
        if cache.len() >= CACHE_MAX {
            cache.clear();
        }
        cache.insert(
            digest,
            Cached {
                key_id,
                principal,
                at: Instant::now(),
            },
        );
    }

    fn invalidate(&self, key_id: &str) {
        let mut valid = self.cache.lock().unwrap();
        let mut rejected = self.rejected.lock().unwrap();
        self.epoch.fetch_add(1, Ordering::SeqCst);
        valid.retain(|_, c| c.key_id != key_id);
        rejected.retain(|_, c| c.key_id != key_id);
    }

    fn clear(&self) {
        let mut valid = self.cache.lock().unwrap();
        let mut rejected = self.rejected.lock().unwrap();
        self.epoch.fetch_add(1, Ordering::SeqCst);
        valid.clear();
        rejected.clear();
    }
}

/// The auth bucket's watch: any change to `api_keys.<key_id>` drops that key's cached results.
impl Follower for Auth {
    fn begin(&self) -> u64 {
        // After a watch outage revocations may have been missed: start from an empty cache.
        self.clear();
        0
    }
    fn entry(&self, key: &str, _op: Operation, _value: &bytes::Bytes, _revision: u64, _live: bool) {
        if let Some(key_id) = key.strip_prefix("api_keys.") {
            self.invalidate(key_id);
        }
    }
    fn finish(&self, _generation: u64) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(t: &str) -> Option<Principal> {
        Some(Principal {
            tenant_id: t.into(),
            api_key_id: "k".into(),
            callable_allow: None,
        })
    }

    #[test]
    fn a_verification_in_flight_during_a_revocation_is_not_cached() {
        let auth = Auth::new(true, "X-API-Key", None, Duration::from_secs(300));
        let epoch = auth.epoch.load(Ordering::SeqCst); // the record is read (still valid)…
        auth.invalidate("k"); // …the revocation lands while PBKDF2 runs…
        auth.remember([1; 32], "k".into(), p("t"), epoch); // …and the stale "valid" is dropped
        assert!(auth.cache.lock().unwrap().is_empty());
        // Without an invalidation in between the result is cached.
        let epoch = auth.epoch.load(Ordering::SeqCst);
        auth.remember([1; 32], "k".into(), p("t"), epoch);
        assert_eq!(auth.cache.lock().unwrap().len(), 1);
        auth.invalidate("k");
        assert!(auth.cache.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn verifications_past_the_waiting_bound_are_503_at_once() {
        let auth = std::sync::Arc::new(Auth::new(true, "X-API-Key", None, Duration::from_secs(1)));
        let busy: Vec<_> = (0..MAX_CONCURRENT_KDF)
            .map(|_| auth.kdf.try_acquire().unwrap())
            .collect();
        let mut waiters = vec![];
        for _ in 0..MAX_KDF_WAITING {
            let auth = auth.clone();
            waiters.push(tokio::spawn(async move { auth.kdf_turn().await.is_ok() }));
        }
        while auth.kdf_waiting.load(Ordering::SeqCst) < MAX_KDF_WAITING {
            tokio::task::yield_now().await;
        }
        let e = auth.kdf_turn().await.unwrap_err();
        assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE);
        drop(busy);
        for w in waiters {
            assert!(w.await.unwrap(), "the waiting ones get their turn");
        }
        assert_eq!(auth.kdf_waiting.load(Ordering::SeqCst), 0);
        assert!(auth.kdf_turn().await.is_ok());
    }

    #[test]
    fn bogus_keys_never_evict_valid_ones() {
        let auth = Auth::new(true, "X-API-Key", None, Duration::from_secs(300));
        let epoch = auth.epoch.load(Ordering::SeqCst);
        auth.remember([0; 32], "good".into(), p("t"), epoch);
        for i in 0..(CACHE_MAX as u32 + 500) {
            let mut d = [9u8; 32];
            d[..4].copy_from_slice(&i.to_le_bytes());
            auth.remember(d, format!("bogus{i}"), None, epoch);
        }
        assert!(auth.cache.lock().unwrap().contains_key(&[0; 32]));
        assert!(auth.rejected.lock().unwrap().len() <= CACHE_MAX);
    }
}
