//! In-memory indexes of the runs and workers buckets, kept current by KV watches.
//!
//! At start (and after any watch failure) a watch with `LastPerSubject` delivery replays the
//! current value of every key, then follows changes. Listing, filtering, paging, `/metrics` and
//! `/workers` read these indexes; no request scans a bucket. Another gateway's writes arrive
//! through the same watch within milliseconds.

use pyoco_core::wire::fields;
use std::cmp::Ordering;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, RwLock};

use async_nats::jetstream::kv::{self, Operation};
use bytes::Bytes;
use futures::StreamExt;
use pyoco_core::wire::{f64_field, run_status, str_field, Doc};
use tokio::sync::watch;

use crate::metrics::Metrics;

/// Sort key of `GET /runs`: `(updated_at, run_id)` descending, so iteration order is list order.
#[derive(Debug, Clone, PartialEq)]
pub struct SortKey {
    pub updated_at: f64,
    pub run_id: String,
}

impl Eq for SortKey {}

impl Ord for SortKey {
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .updated_at
            .total_cmp(&self.updated_at)
            .then_with(|| other.run_id.cmp(&self.run_id))
    }
}

impl PartialOrd for SortKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// One run as the index keeps it: its list summary (the JSON `GET /runs` shows without
/// `include=full`) plus the fields used to filter, sort and count. The whole snapshot (task
/// records can be kilobytes) stays in KV and is read when a request needs it; a parsed
/// document per run would cost several times its JSON size in RSS.
#[derive(Debug, Clone)]
pub struct RunEntry {
    pub summary: Bytes,
    pub revision: u64,
    pub updated_at: f64,
    pub status: Arc<str>,
    flow_name: Option<Arc<str>>,
    tag: Option<Arc<str>>,
    tenant_id: Option<Arc<str>>,
    workflow_yaml_sha256: Option<Box<str>>,
    had_start: bool,
    /// `updated_at` of the first PENDING snapshot seen: the submit time, for queue-wait metrics.
    pub pending_since: Option<f64>,
    generation: u64,
}

impl RunEntry {
    /// The run's tenant (`None` for runs made with auth off).
    pub fn tenant_id(&self) -> Option<&str> {
        self.tenant_id.as_deref()
    }

    /// The list summary as a document.
    pub fn summary_doc(&self) -> Doc {
        serde_json::from_slice(&self.summary).unwrap_or_default()
    }
}

/// Equality filters of `GET /runs` (empty = no filter) plus the tenant of the caller.
#[derive(Debug, Default, Clone)]
pub struct RunFilter {
    pub status: Option<String>,
    pub flow: Option<String>,
    pub tag: Option<String>,
    pub workflow_yaml_sha256: Option<String>,
    /// Some(tenant) when auth is on: only that tenant's runs.
    pub tenant: Option<Option<String>>,
}

impl RunFilter {
    fn matches(&self, e: &RunEntry) -> bool {
        fn eq<S: std::ops::Deref<Target = str>>(want: &Option<String>, have: &Option<S>) -> bool {
            match want {
                None => true,
                Some(w) => have.as_deref() == Some(w.as_str()),
            }
        }
        if let Some(tenant) = &self.tenant {
            if e.tenant_id.as_deref() != tenant.as_deref() {
                return false;
            }
        }
        self.status
            .as_deref()
            .map(|s| s == &*e.status)
            .unwrap_or(true)
            && eq(&self.flow, &e.flow_name)
            && eq(&self.tag, &e.tag)
            && eq(&self.workflow_yaml_sha256, &e.workflow_yaml_sha256)
    }
}

#[derive(Default)]
struct RunsInner {
    by_id: HashMap<String, RunEntry>,
    order: BTreeSet<SortKey>,
    status_counts: HashMap<String, u64>,
    generation: u64,
    /// Status, flow, tag and tenant values repeat across runs: one shared copy each.
    interned: std::collections::HashSet<Arc<str>>,
}

impl RunsInner {
    fn intern(&mut self, v: &str) -> Arc<str> {
        if let Some(a) = self.interned.get(v) {
            return a.clone();
        }
        let a: Arc<str> = Arc::from(v);
        self.interned.insert(a.clone());
        a
    }

    /// Forgets the interned values of an entry that left the index when nothing else uses them
    /// (flow names and tags come from clients: without this the set only ever grows). A value
    /// still held by a request's copy of an entry is kept until a later release finds it unused.
    fn release(&mut self, old: RunEntry) {
        let values = [Some(old.status), old.flow_name, old.tag, old.tenant_id];
        for v in values.into_iter().flatten() {
            // One reference in the set, one here: nobody else has it.
            if Arc::strong_count(&v) == 2 {
                self.interned.remove(&*v);
            }
        }
    }

    /// Distinct interned values.
    #[cfg(test)]
    fn interned_len(&self) -> usize {
        self.interned.len()
    }
}

/// The runs index plus per-run change notifications for SSE.
pub struct RunIndex {
    inner: RwLock<RunsInner>,
    /// run_id → revision of the latest change; SSE connections subscribe here.
    watchers: Mutex<HashMap<String, watch::Sender<u64>>>,
    loaded: watch::Sender<bool>,
    metrics: Arc<Metrics>,
}

pub fn status_of(snap: &Doc) -> String {
    str_field(snap, fields::run::STATUS)
        .unwrap_or("UNKNOWN")
        .to_string()
}

impl RunIndex {
    pub fn new(metrics: Arc<Metrics>) -> Arc<RunIndex> {
        Arc::new(RunIndex {
            inner: RwLock::default(),
            watchers: Mutex::default(),
            loaded: watch::channel(false).0,
            metrics,
        })
    }

    pub fn is_loaded(&self) -> bool {
        *self.loaded.borrow()
    }

    pub fn len(&self) -> usize {
        self.inner.read().unwrap().by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Waits until the initial replay finished (for readiness and tests).
    pub async fn wait_loaded(&self) {
        let mut rx = self.loaded.subscribe();
        let _ = rx.wait_for(|l| *l).await;
    }

    pub fn get(&self, run_id: &str) -> Option<RunEntry> {
        self.inner.read().unwrap().by_id.get(run_id).cloned()
    }

    /// Applies one KV change. `live` is false during the initial replay (no metric events then).
    fn apply(&self, key: &str, op: Operation, value: &Bytes, revision: u64, live: bool) {
        let parsed = if op == Operation::Put {
            serde_json::from_slice::<Doc>(value).ok()
        } else {
            None
        };
        let mut inner = self.inner.write().unwrap();
        let generation = inner.generation;
        let old = inner.by_id.remove(key);
        if let Some(old) = &old {
            inner.order.remove(&SortKey {
                updated_at: old.updated_at,
                run_id: key.to_string(),
            });
            if let Some(c) = inner.status_counts.get_mut(&*old.status) {
                *c = c.saturating_sub(1);
            }
        }
        // A delete, or a value that is not a JSON object (skipped, as the original skips it).
        if let Some(snapshot) = parsed {
            let status = status_of(&snapshot);
            let updated_at = f64_field(&snapshot, fields::run::UPDATED_AT).unwrap_or(0.0);
            let pending_since = old
                .as_ref()
                .and_then(|o| o.pending_since)
                .or_else(|| (status == run_status::PENDING).then_some(updated_at));
            if live {
                let old_view = old.as_ref().map(|o| (&*o.status, o.had_start));
                self.metrics
                    .on_run_change(old_view, &snapshot, pending_since);
            }
            *inner.status_counts.entry(status.clone()).or_default() += 1;
            inner.order.insert(SortKey {
                updated_at,
                run_id: key.to_string(),
            });
            let summary =
                Bytes::from(serde_json::to_vec(&bounded_summary(&snapshot)).unwrap_or_default());
            let status = inner.intern(&status);
            let flow_name = str_field(&snapshot, fields::run::FLOW_NAME).map(|v| inner.intern(v));
            let tag = str_field(&snapshot, fields::run::TAG).map(|v| inner.intern(v));
            let tenant_id = str_field(&snapshot, fields::run::TENANT_ID).map(|v| inner.intern(v));
            let entry = RunEntry {
                summary,
                revision,
                updated_at,
                status,
                flow_name,
                tag,
                tenant_id,
                workflow_yaml_sha256: str_field(&snapshot, fields::run::WORKFLOW_YAML_SHA256)
                    .map(Box::from),
                had_start: f64_field(&snapshot, fields::run::START_TIME).is_some(),
                pending_since,
                generation,
            };
            inner.by_id.insert(key.to_string(), entry);
        }
        if let Some(old) = old {
            inner.release(old);
        }
        drop(inner);
        self.notify(key, revision);
    }

    fn notify(&self, key: &str, revision: u64) {
        let mut watchers = self.watchers.lock().unwrap();
        if let Some(tx) = watchers.get(key) {
            if tx.send(revision).is_err() {
                watchers.remove(key);
            }
        }
    }

    /// A receiver that changes whenever the run's key changes (value = new revision).
    pub fn subscribe(&self, run_id: &str) -> watch::Receiver<u64> {
        let mut watchers = self.watchers.lock().unwrap();
        watchers.retain(|_, tx| tx.receiver_count() > 0);
        watchers
            .entry(run_id.to_string())
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }

    /// One page of `GET /runs`: items in `(updated_at, run_id)` descending order, after the
    /// cursor, newer than `updated_after`; `more` says whether another matching item follows.
    pub fn page(
        &self,
        filter: &RunFilter,
        updated_after: Option<f64>,
        cursor: Option<&SortKey>,
        limit: usize,
    ) -> (Vec<RunEntry>, bool) {
        let inner = self.inner.read().unwrap();
        let iter: Box<dyn Iterator<Item = &SortKey>> = match cursor {
            Some(c) => Box::new(
                inner
                    .order
                    .range((std::ops::Bound::Excluded(c), std::ops::Bound::Unbounded)),
            ),
            None => Box::new(inner.order.iter()),
        };
        let mut out = Vec::with_capacity(limit.min(256));
        for key in iter {
            if let Some(after) = updated_after {
                // Sorted descending: nothing newer than `after` follows.
                if key.updated_at.partial_cmp(&after) != Some(Ordering::Greater) {
                    break;
                }
            }
            let entry = &inner.by_id[&key.run_id];
            if !filter.matches(entry) {
                continue;
            }
            if out.len() == limit {
                return (out, true);
            }
            out.push(entry.clone());
        }
        (out, false)
    }

    /// Count of runs per status.
    pub fn status_counts(&self) -> Vec<(String, u64)> {
        let inner = self.inner.read().unwrap();
        let mut v: Vec<_> = inner
            .status_counts
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(s, n)| (s.clone(), *n))
            .collect();
        v.sort();
        v
    }

    /// Count per status of runs updated at or after `since` (newest first, so this stops early).
    pub fn status_counts_since(&self, since: f64) -> Vec<(String, u64)> {
        let inner = self.inner.read().unwrap();
        let mut m: HashMap<String, u64> = HashMap::new();
        for key in inner.order.iter() {
            if key.updated_at < since {
                break;
            }
            *m.entry(inner.by_id[&key.run_id].status.to_string())
                .or_default() += 1;
        }
        let mut v: Vec<_> = m.into_iter().collect();
        v.sort();
        v
    }

    /// PENDING runs per tag (queue depth as the gateway sees it).
    pub fn pending_by_tag(&self) -> Vec<(String, u64)> {
        let inner = self.inner.read().unwrap();
        let mut m: HashMap<String, u64> = HashMap::new();
        for e in inner
            .by_id
            .values()
            .filter(|e| &*e.status == run_status::PENDING)
        {
            *m.entry(e.tag.as_deref().unwrap_or("").to_string())
                .or_default() += 1;
        }
        let mut v: Vec<_> = m.into_iter().collect();
        v.sort();
        v
    }

    /// Terminal runs last updated before `cutoff`, with their revision (for retention).
    pub fn terminal_before(&self, cutoff: f64, max: usize) -> Vec<(String, u64)> {
        let inner = self.inner.read().unwrap();
        inner
            .order
            .iter()
            .rev()
            .take_while(|k| k.updated_at < cutoff)
            .filter_map(|k| {
                let e = &inner.by_id[&k.run_id];
                run_status::is_terminal(&e.status).then(|| (k.run_id.clone(), e.revision))
            })
            .take(max)
            .collect()
    }

    fn begin_replay(&self) -> u64 {
        let mut inner = self.inner.write().unwrap();
        inner.generation += 1;
        inner.generation
    }

    /// Drops entries the last replay did not deliver (deleted while the watch was down).
    fn finish_replay(&self, generation: u64) {
        let mut inner = self.inner.write().unwrap();
        let stale: Vec<String> = inner
            .by_id
            .iter()
            .filter(|(_, e)| e.generation < generation)
            .map(|(k, _)| k.clone())
            .collect();
        for key in &stale {
            if let Some(e) = inner.by_id.remove(key) {
                inner.order.remove(&SortKey {
                    updated_at: e.updated_at,
                    run_id: key.clone(),
                });
                if let Some(c) = inner.status_counts.get_mut(&*e.status) {
                    *c = c.saturating_sub(1);
                }
                inner.release(e);
            }
        }
        drop(inner);
        for key in &stale {
            self.notify(key, 0);
        }
        self.loaded.send_replace(true);
    }
}

/// A stored worker record: the raw document, its KV revision, and the replay generation that
/// last delivered it.
type WorkerSlot = (Arc<Doc>, u64, u64);

/// The workers index: raw stored records, normalized at read time (the effective state
/// depends on the current time).
pub struct WorkerIndex {
    inner: RwLock<HashMap<String, WorkerSlot>>,
    generation: Mutex<u64>,
    loaded: watch::Sender<bool>,
}

impl Default for WorkerIndex {
    fn default() -> Self {
        WorkerIndex {
            inner: RwLock::default(),
            generation: Mutex::default(),
            loaded: watch::channel(false).0,
        }
    }
}

impl WorkerIndex {
    pub async fn wait_loaded(&self) {
        let mut rx = self.loaded.subscribe();
        let _ = rx.wait_for(|l| *l).await;
    }

    pub fn all(&self) -> Vec<(Arc<Doc>, u64)> {
        self.inner
            .read()
            .unwrap()
            .values()
            .map(|(d, rev, _)| (d.clone(), *rev))
            .collect()
    }

    pub fn get(&self, worker_id: &str) -> Option<Arc<Doc>> {
        self.inner
            .read()
            .unwrap()
            .get(worker_id)
            .map(|(d, _, _)| d.clone())
    }

    fn apply(&self, key: &str, op: Operation, value: &Bytes, revision: u64) {
        let generation = *self.generation.lock().unwrap();
        let mut inner = self.inner.write().unwrap();
        match (op, serde_json::from_slice::<Doc>(value)) {
            (Operation::Put, Ok(doc)) => {
                inner.insert(key.to_string(), (Arc::new(doc), revision, generation));
            }
            _ => {
                inner.remove(key);
            }
        }
    }
}

/// What a follower feeds: the run index, the worker index, or a callback (auth cache).
pub trait Follower: Send + Sync + 'static {
    fn begin(&self) -> u64;
    fn entry(&self, key: &str, op: Operation, value: &Bytes, revision: u64, live: bool);
    fn finish(&self, generation: u64);
}

impl Follower for RunIndex {
    fn begin(&self) -> u64 {
        self.begin_replay()
    }
    fn entry(&self, key: &str, op: Operation, value: &Bytes, revision: u64, live: bool) {
        self.apply(key, op, value, revision, live)
    }
    fn finish(&self, generation: u64) {
        self.finish_replay(generation)
    }
}

impl Follower for WorkerIndex {
    fn begin(&self) -> u64 {
        let mut g = self.generation.lock().unwrap();
        *g += 1;
        *g
    }
    fn entry(&self, key: &str, op: Operation, value: &Bytes, revision: u64, _live: bool) {
        self.apply(key, op, value, revision)
    }
    fn finish(&self, generation: u64) {
        self.inner
            .write()
            .unwrap()
            .retain(|_, (_, _, g)| *g >= generation);
        self.loaded.send_replace(true);
    }
}

/// Follows a bucket: replays the current value of every key, then live changes, until the
/// watch ends or fails. The caller (a supervised task) restarts it, which replays again.
pub async fn follow_bucket<F: Follower>(store: &kv::Store, follower: &F) -> Result<(), String> {
    let mut stream = store.stream.clone();
    let info = stream.info().await.map_err(|e| e.to_string())?;
    let empty = info.state.messages == 0;
    // The replay has caught up once it delivered this sequence (or a later one): the server
    // sends the last value per key in sequence order. `delta == 0` alone is not enough: the
    // server's pending count for a last-per-subject consumer can stay above 0 (nats-server
    // overcounts it under concurrent writes), and then the index never reported "loaded" and
    // every list answered 503 until the next write.
    let last_seq = info.state.last_sequence;
    let mut watch = store
        .watch_with_history(">")
        .await
        .map_err(|e| e.to_string())?;
    let generation = follower.begin();
    let mut replaying = !empty;
    if empty {
        follower.finish(generation);
    }
    while let Some(next) = watch.next().await {
        let entry = next.map_err(|e| e.to_string())?;
        follower.entry(
            &entry.key,
            entry.operation,
            &entry.value,
            entry.revision,
            !replaying,
        );
        if replaying && (entry.delta == 0 || entry.revision >= last_seq) {
            replaying = false;
            follower.finish(generation);
        }
    }
    Ok(())
}

/// Characters of a run's `error` the index keeps for lists; `GET /runs/{id}` reads the whole
/// snapshot from KV. Workers write the error (an exception message can be any size), and the
/// index holds every run in memory: without a bound 10 000 runs could hold gigabytes.
pub const MAX_SUMMARY_ERROR_CHARS: usize = 4096;

/// The list summary with `error` cut to [`MAX_SUMMARY_ERROR_CHARS`] (marked as cut).
fn bounded_summary(snapshot: &Doc) -> Doc {
    let mut summary = pyoco_core::wire::run_summary(snapshot);
    if let Some(serde_json::Value::String(e)) = summary.get_mut(fields::run::ERROR) {
        if let Some((cut, _)) = e.char_indices().nth(MAX_SUMMARY_ERROR_CHARS) {
            e.truncate(cut);
            e.push_str("… (cut; GET /runs/{run_id} has the whole error)");
        }
    }
    summary
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn snap(id: &str, status: &str, updated_at: f64, extra: serde_json::Value) -> Bytes {
        let mut v = json!({
            "run_id": id,
            "flow_name": "hello",
            "tag": "default",
            "status": status,
            "updated_at": updated_at,
            "task_records": {"t": {"state": "RUNNING", "big": "x".repeat(100)}},
        });
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        Bytes::from(serde_json::to_vec(&v).unwrap())
    }

    fn index() -> (Arc<RunIndex>, Arc<Metrics>) {
        let m = Arc::new(Metrics::default());
        (RunIndex::new(m.clone()), m)
    }

    fn put(ix: &RunIndex, id: &str, status: &str, at: f64, rev: u64, extra: serde_json::Value) {
        ix.apply(id, Operation::Put, &snap(id, status, at, extra), rev, true);
    }

    #[test]
    fn interned_values_are_forgotten_when_no_run_uses_them() {
        let (ix, _) = index();
        put(
            &ix,
            "keep",
            "PENDING",
            1.0,
            1,
            json!({"flow_name": "common", "tag": "t"}),
        );
        let baseline = ix.inner.read().unwrap().interned_len();
        // Clients choose flow names: a thousand distinct ones come and go.
        for i in 0..1000 {
            let id = format!("r{i}");
            put(
                &ix,
                &id,
                "PENDING",
                2.0,
                10 + i,
                json!({"flow_name": format!("flow-{i}"), "tag": "t"}),
            );
            // Replaced by a COMPLETED snapshot with the same name: still used, kept.
            put(
                &ix,
                &id,
                "COMPLETED",
                3.0,
                5000 + i,
                json!({"flow_name": format!("flow-{i}"), "tag": "t"}),
            );
            ix.apply(&id, Operation::Delete, &Bytes::new(), 9000 + i, true);
        }
        let inner = ix.inner.read().unwrap();
        assert_eq!(
            inner.interned_len(),
            baseline,
            "every value that left with its runs is gone"
        );
        assert!(inner.interned.contains("common"), "a value in use stays");
    }

    fn ids(entries: &[RunEntry]) -> Vec<String> {
        entries
            .iter()
            .map(|e| str_field(&e.summary_doc(), "run_id").unwrap().to_string())
            .collect()
    }

    fn all(ix: &RunIndex, f: &RunFilter) -> Vec<String> {
        ids(&ix.page(f, None, None, 100).0)
    }

    #[test]
    fn sort_key_orders_newest_first_then_run_id_descending() {
        let k = |at: f64, id: &str| SortKey {
            updated_at: at,
            run_id: id.into(),
        };
        let mut v = vec![k(1.0, "a"), k(3.0, "a"), k(2.0, "a"), k(2.0, "b")];
        v.sort();
        assert_eq!(v, vec![k(3.0, "a"), k(2.0, "b"), k(2.0, "a"), k(1.0, "a")]);
    }

    #[test]
    fn puts_updates_and_deletes() {
        let (ix, _) = index();
        put(&ix, "r1", "PENDING", 10.0, 1, json!({}));
        put(&ix, "r2", "PENDING", 20.0, 2, json!({}));
        put(&ix, "r3", "PENDING", 20.0, 3, json!({}));
        assert_eq!(ix.len(), 3);
        assert_eq!(all(&ix, &RunFilter::default()), ["r3", "r2", "r1"]);

        // An update re-sorts the run and replaces revision and status.
        put(&ix, "r1", "RUNNING", 30.0, 4, json!({"start_time": 29.0}));
        assert_eq!(all(&ix, &RunFilter::default()), ["r1", "r3", "r2"]);
        let r1 = ix.get("r1").unwrap();
        assert_eq!(r1.revision, 4);
        assert_eq!(&*r1.status, "RUNNING");
        assert_eq!(
            r1.pending_since,
            Some(10.0),
            "submit time kept across updates"
        );
        assert_eq!(
            ix.status_counts(),
            [("PENDING".to_string(), 2), ("RUNNING".to_string(), 1)]
        );

        ix.apply("r3", Operation::Delete, &Bytes::new(), 5, true);
        assert!(ix.get("r3").is_none());
        assert_eq!(all(&ix, &RunFilter::default()), ["r1", "r2"]);
        assert_eq!(
            ix.status_counts(),
            [("PENDING".to_string(), 1), ("RUNNING".to_string(), 1)]
        );

        // A value that is not a JSON object drops the run, as the original skips it.
        ix.apply(
            "r2",
            Operation::Put,
            &Bytes::from_static(b"not json"),
            6,
            true,
        );
        assert_eq!(all(&ix, &RunFilter::default()), ["r1"]);
        assert_eq!(ix.status_counts(), [("RUNNING".to_string(), 1)]);
    }

    #[test]
    fn the_summary_bounds_the_error() {
        let (ix, _) = index();
        let long = "é".repeat(MAX_SUMMARY_ERROR_CHARS * 50);
        put(&ix, "r1", "FAILED", 1.0, 1, json!({"error": long}));
        put(&ix, "r2", "FAILED", 1.0, 2, json!({"error": "short"}));
        let e = str_field(&ix.get("r1").unwrap().summary_doc(), "error")
            .unwrap()
            .to_string();
        assert!(e.starts_with(&"é".repeat(MAX_SUMMARY_ERROR_CHARS)), "{e}");
        assert!(e.ends_with("has the whole error)"), "{e}");
        assert!(e.chars().count() < MAX_SUMMARY_ERROR_CHARS + 100);
        assert_eq!(
            str_field(&ix.get("r2").unwrap().summary_doc(), "error"),
            Some("short")
        );
    }

    #[test]
    fn the_summary_leaves_task_records_out() {
        let (ix, _) = index();
        put(&ix, "r1", "PENDING", 1.0, 1, json!({}));
        let s = ix.get("r1").unwrap().summary_doc();
        assert_eq!(str_field(&s, "status"), Some("PENDING"));
        assert!(!s.contains_key("task_records"), "{s:?}");
    }

    #[test]
    fn filters_and_tenants() {
        let (ix, _) = index();
        put(&ix, "a", "PENDING", 1.0, 1, json!({"tenant_id": "t1"}));
        put(
            &ix,
            "b",
            "COMPLETED",
            2.0,
            2,
            json!({"tenant_id": "t2", "tag": "gpu"}),
        );
        put(
            &ix,
            "c",
            "COMPLETED",
            3.0,
            3,
            json!({"flow_name": "other", "workflow_yaml_sha256": "abc"}),
        );
        let f = |g: fn(&mut RunFilter)| {
            let mut f = RunFilter::default();
            g(&mut f);
            all(&ix, &f)
        };
        assert_eq!(f(|f| f.status = Some("COMPLETED".into())), ["c", "b"]);
        assert_eq!(f(|f| f.flow = Some("hello".into())), ["b", "a"]);
        assert_eq!(f(|f| f.tag = Some("gpu".into())), ["b"]);
        assert_eq!(f(|f| f.workflow_yaml_sha256 = Some("abc".into())), ["c"]);
        assert_eq!(f(|f| f.tenant = Some(Some("t1".into()))), ["a"]);
        assert_eq!(
            f(|f| f.tenant = Some(Some("t3".into()))),
            Vec::<String>::new()
        );
        // A caller without tenant sees only runs without one.
        assert_eq!(f(|f| f.tenant = Some(None)), ["c"]);
        assert_eq!(
            f(|f| {
                f.tenant = Some(Some("t2".into()));
                f.status = Some("PENDING".into());
            }),
            Vec::<String>::new()
        );
    }

    #[test]
    fn cursor_paging_and_updated_after() {
        let (ix, _) = index();
        for (i, id) in ["r1", "r2", "r3", "r4", "r5"].iter().enumerate() {
            put(&ix, id, "PENDING", i as f64, i as u64 + 1, json!({}));
        }
        let f = RunFilter::default();
        let (p1, more) = ix.page(&f, None, None, 2);
        assert_eq!(ids(&p1), ["r5", "r4"]);
        assert!(more);
        let cursor = SortKey {
            updated_at: p1[1].updated_at,
            run_id: "r4".into(),
        };
        let (p2, more) = ix.page(&f, None, Some(&cursor), 2);
        assert_eq!(ids(&p2), ["r3", "r2"]);
        assert!(more);
        let cursor = SortKey {
            updated_at: p2[1].updated_at,
            run_id: "r2".into(),
        };
        let (p3, more) = ix.page(&f, None, Some(&cursor), 2);
        assert_eq!(ids(&p3), ["r1"]);
        assert!(!more);
        // Exactly `limit` left: no further page.
        let (p, more) = ix.page(&f, None, None, 5);
        assert_eq!(p.len(), 5);
        assert!(!more);
        // Strictly newer than updated_after.
        let (p, more) = ix.page(&f, Some(2.0), None, 10);
        assert_eq!(ids(&p), ["r5", "r4"]);
        assert!(!more);
    }

    #[test]
    fn counts_pending_by_tag_and_retention_candidates() {
        let (ix, _) = index();
        put(&ix, "a", "PENDING", 1.0, 1, json!({}));
        put(&ix, "b", "PENDING", 2.0, 2, json!({"tag": "gpu"}));
        put(&ix, "c", "COMPLETED", 3.0, 3, json!({}));
        put(&ix, "d", "FAILED", 4.0, 7, json!({}));
        put(&ix, "e", "CANCELLED", 50.0, 5, json!({}));
        assert_eq!(
            ix.pending_by_tag(),
            [("default".to_string(), 1), ("gpu".to_string(), 1)]
        );
        assert_eq!(
            ix.status_counts_since(3.0),
            [
                ("CANCELLED".to_string(), 1),
                ("COMPLETED".to_string(), 1),
                ("FAILED".to_string(), 1)
            ]
        );
        // Oldest first, terminal only, with the revision the delete must name.
        assert_eq!(
            ix.terminal_before(10.0, 10),
            [("c".to_string(), 3), ("d".to_string(), 7)]
        );
        assert_eq!(ix.terminal_before(10.0, 1), [("c".to_string(), 3)]);
    }

    #[test]
    fn a_replay_drops_runs_deleted_while_the_watch_was_down() {
        let (ix, _) = index();
        assert!(!ix.is_loaded());
        let g = ix.begin_replay();
        ix.apply(
            "a",
            Operation::Put,
            &snap("a", "PENDING", 1.0, json!({})),
            1,
            false,
        );
        ix.apply(
            "b",
            Operation::Put,
            &snap("b", "PENDING", 2.0, json!({})),
            2,
            false,
        );
        ix.finish_replay(g);
        assert!(ix.is_loaded());
        assert_eq!(ix.len(), 2);
        let changes = ix.subscribe("b");
        // The watch restarts; `b` was deleted meanwhile and is not replayed.
        let g = ix.begin_replay();
        ix.apply(
            "a",
            Operation::Put,
            &snap("a", "RUNNING", 3.0, json!({})),
            3,
            false,
        );
        ix.finish_replay(g);
        assert_eq!(all(&ix, &RunFilter::default()), ["a"]);
        assert_eq!(ix.status_counts(), [("RUNNING".to_string(), 1)]);
        assert!(
            changes.has_changed().unwrap(),
            "SSE watchers of a dropped run are told"
        );
    }

    #[test]
    fn subscribers_see_each_revision() {
        let (ix, _) = index();
        let mut rx = ix.subscribe("r1");
        put(&ix, "r1", "PENDING", 1.0, 7, json!({}));
        assert!(rx.has_changed().unwrap());
        assert_eq!(*rx.borrow_and_update(), 7);
        put(&ix, "r2", "PENDING", 1.0, 8, json!({}));
        assert!(!rx.has_changed().unwrap(), "other runs do not wake it");
    }

    #[test]
    fn replayed_runs_are_not_counted_as_submitted() {
        let (ix, m) = index();
        let g = ix.begin_replay();
        ix.apply(
            "old",
            Operation::Put,
            &snap("old", "PENDING", 1.0, json!({})),
            1,
            false,
        );
        ix.finish_replay(g);
        put(&ix, "new", "PENDING", 2.0, 2, json!({}));
        let text = m.render(&crate::metrics::Gauges {
            runs_by_status: vec![],
            runs_today_by_status: vec![],
            workers_alive: 0,
            dlq_messages: None,
            pending_by_tag: vec![],
        });
        assert!(
            text.contains("\npyoco_runs_submitted_total{tag=\"default\"} 1\n"),
            "{text}"
        );
    }

    #[test]
    fn the_worker_index_replays_too() {
        let ix = WorkerIndex::default();
        let doc = |id: &str| Bytes::from(serde_json::to_vec(&json!({"worker_id": id})).unwrap());
        let g = ix.begin();
        ix.entry("w1", Operation::Put, &doc("w1"), 1, false);
        ix.entry("w2", Operation::Put, &doc("w2"), 2, false);
        ix.finish(g);
        assert_eq!(ix.all().len(), 2);
        ix.entry("w1", Operation::Delete, &Bytes::new(), 3, true);
        assert!(ix.get("w1").is_none());
        let g = ix.begin();
        ix.entry("w3", Operation::Put, &doc("w3"), 4, false);
        ix.finish(g);
        let mut ids: Vec<_> = ix
            .all()
            .iter()
            .map(|(d, _)| str_field(d, "worker_id").unwrap().to_string())
            .collect();
        ids.sort();
        assert_eq!(ids, ["w3"]);
    }
}
