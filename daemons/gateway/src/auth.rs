//! API-key authentication (contract §5), with a verified-key cache.
//!
//! The original runs PBKDF2 (200 000 iterations) on the event loop for every request. Here a
//! verified key is cached in memory (keyed by the SHA-256 of the presented key), PBKDF2 runs on
//! the blocking pool, and a watch on the auth bucket drops cached entries of a key the moment its
//! record changes, so a revocation takes effect within the watch latency (milliseconds).

use std::collections::HashMap;
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
    cache: Mutex<HashMap<[u8; 32], Cached>>,
}

/// The cache never grows past this; a full cache is simply cleared (entries are cheap to redo).
const CACHE_MAX: usize = 10_000;

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
        if let Some(hit) = self.cache.lock().unwrap().get(&digest).cloned() {
            if hit.at.elapsed() < self.ttl {
                return hit.principal.map(Some).ok_or_else(invalid);
            }
        }
        let (key_id, secret) = apikey::parse_presented_key(presented).map_err(|_| invalid())?;
        let store = store.ok_or_else(|| ApiError::nats("not connected"))?;
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
                let ok = tokio::task::spawn_blocking(move || {
                    apikey::verify(&record, &secret, pepper.as_deref())
                })
                .await
                .unwrap_or(false);
                ok.then(|| Principal {
                    tenant_id: tenant,
                    api_key_id: key_id.clone(),
                })
            }
        };
        let mut cache = self.cache.lock().unwrap();
        if cache.len() >= CACHE_MAX {
            cache.clear();
        }
        cache.insert(
            digest,
            Cached {
                key_id,
                principal: principal.clone(),
                at: Instant::now(),
            },
        );
        principal.map(Some).ok_or_else(invalid)
    }

    fn invalidate(&self, key_id: &str) {
        self.cache.lock().unwrap().retain(|_, c| c.key_id != key_id);
    }
}

/// The auth bucket's watch: any change to `api_keys.<key_id>` drops that key's cached results.
impl Follower for Auth {
    fn begin(&self) -> u64 {
        // After a watch outage revocations may have been missed: start from an empty cache.
        self.cache.lock().unwrap().clear();
        0
    }
    fn entry(&self, key: &str, _op: Operation, _value: &bytes::Bytes, _revision: u64, _live: bool) {
        if let Some(key_id) = key.strip_prefix("api_keys.") {
            self.invalidate(key_id);
        }
    }
    fn finish(&self, _generation: u64) {}
}
