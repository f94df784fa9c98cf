//! The worker record in KV `pyoco_workers` (contract §3.6): same fields and states as the
//! original (IDLE, RUNNING, STOPPED_GRACEFUL), written with compare-and-set so `hidden` (set by
//! `PATCH /workers/{id}`) is never lost, refreshed by a heartbeat.

use pyoco_core::kv::{Decision, ModifyError};
use pyoco_core::wire::fields;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv;
use pyoco_core::time::now;
use pyoco_core::wire::{worker_state, Doc};
use serde_json::{json, Value};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

/// The fields this process owns; `hidden` and unknown fields come from the stored record.
#[derive(Debug, Clone)]
struct Local {
    state: &'static str,
    current_run_ids: Vec<String>,
    last_run_id: Value,
    last_run_status: Value,
    last_run_started_at: Value,
    last_run_finished_at: Value,
    stopped_at: Value,
    stop_reason: Value,
}

#[derive(Clone)]
pub struct Registry {
    store: kv::Store,
    worker_id: String,
    instance_id: String,
    tags: Vec<String>,
    extra: Doc,
    local: Arc<Mutex<Local>>,
    /// Wakes the background writer: run start/end updates are written off the run's path,
    /// coalesced when several come at once.
    dirty: Arc<tokio::sync::Notify>,
    /// One write at a time, so the last change made is also the last one stored.
    write_lock: Arc<Mutex<()>>,
    /// The `wheel_sync` block (contract §3.6), set by the wheel sync task.
    wheel_sync: Arc<std::sync::Mutex<Value>>,
}

impl Registry {
    pub fn new(store: kv::Store, worker_id: &str, tags: &[String], extra: Doc) -> Registry {
        Registry {
            store,
            worker_id: worker_id.to_string(),
            instance_id: uuid::Uuid::new_v4().simple().to_string(),
            tags: tags.to_vec(),
            extra,
            local: Arc::new(Mutex::new(Local {
                state: worker_state::IDLE,
                current_run_ids: vec![],
                last_run_id: Value::Null,
                last_run_status: Value::Null,
                last_run_started_at: Value::Null,
                last_run_finished_at: Value::Null,
                stopped_at: Value::Null,
                stop_reason: Value::Null,
            })),
            dirty: Arc::new(tokio::sync::Notify::new()),
            write_lock: Arc::default(),
            wheel_sync: Arc::new(std::sync::Mutex::new(crate::wheels::initial_block(false))),
        }
    }

    /// Replaces the `wheel_sync` block; the background writer stores it.
    pub fn set_wheel_sync(&self, block: Value) {
        *self.wheel_sync.lock().unwrap() = block;
        self.dirty.notify_one();
    }

    /// Writes the record: stored document (keeps `hidden` and unknown fields) with
    /// our fields (and `wheel_sync`) on top, by compare-and-set.
    pub async fn write(&self) -> Result<(), String> {
        let _one_at_a_time = self.write_lock.lock().await;
        // Taken once per write: a change made meanwhile marks the record dirty and the
        // background writer stores it next.
        let local = self.local.lock().await.clone();
        let outcome = pyoco_core::kv::modify_bounded(&self.store, &self.worker_id, 20, |stored| {
            let mut doc = stored.cloned().unwrap_or_default();
            let t = now();
            let hidden = doc
                .get(fields::worker::HIDDEN)
                .cloned()
                .unwrap_or(json!(false));
            let current = local
                .current_run_ids
                .first()
                .cloned()
                .map(Value::String)
                .unwrap_or(Value::Null);
            for (k, v) in [
                (fields::worker::WORKER_ID, json!(self.worker_id)),
                (fields::worker::INSTANCE_ID, json!(self.instance_id)),
                (fields::worker::STATE, json!(local.state)),
                (fields::worker::HIDDEN, hidden),
                (fields::worker::TAGS, json!(self.tags)),
                (fields::worker::LAST_SEEN_AT, json!(t)),
                (fields::worker::LAST_HEARTBEAT_AT, json!(t)),
                (fields::worker::HEARTBEAT_AT, json!(t)),
                (fields::worker::CURRENT_RUN_ID, current),
                (fields::worker::LAST_RUN_ID, local.last_run_id.clone()),
                (
                    fields::worker::LAST_RUN_STATUS,
                    local.last_run_status.clone(),
                ),
                (
                    fields::worker::LAST_RUN_STARTED_AT,
                    local.last_run_started_at.clone(),
                ),
                (
                    fields::worker::LAST_RUN_FINISHED_AT,
                    local.last_run_finished_at.clone(),
                ),
                (fields::worker::STOPPED_AT, local.stopped_at.clone()),
                (fields::worker::STOP_REASON, local.stop_reason.clone()),
                (fields::worker::UPDATED_AT, json!(t)),
                (
                    fields::worker::CURRENT_RUN_IDS,
                    json!(local.current_run_ids),
                ),
            ] {
                doc.insert(k.to_string(), v);
            }
            doc.insert(
                "wheel_sync".to_string(),
                self.wheel_sync.lock().unwrap().clone(),
            );
            for (k, v) in &self.extra {
                doc.insert(k.clone(), v.clone());
            }
            Decision::Write(doc)
        })
        .await;
        match outcome {
            Ok(_) => Ok(()),
            Err(ModifyError::Conflict(_)) => {
                Err("worker record kept conflicting with concurrent writes".into())
            }
            Err(e) => Err(e.to_string()),
        }
    }

    /// Changes our fields and lets the background writer store them.
    async fn update(&self, f: impl FnOnce(&mut Local)) {
        f(&mut *self.local.lock().await);
        self.dirty.notify_one();
    }

    /// Writes the record whenever it changed, and refreshes it every `interval` (the heartbeat),
    /// until the worker stopped or `halt` fires (the final record is written by `stopped`).
    pub async fn writer_loop(self, interval: Duration, halt: CancellationToken) {
        loop {
            tokio::select! {
                _ = tokio::time::timeout(interval, self.dirty.notified()) => {}
                _ = halt.cancelled() => return,
            }
            if self.local.lock().await.state == worker_state::STOPPED_GRACEFUL {
                return;
            }
            if let Err(e) = self.write().await {
                tracing::warn!(worker_id = %self.worker_id, error = %e, "writing the worker record failed");
            }
        }
    }

    pub async fn run_started(&self, run_id: &str) {
        let run_id = run_id.to_string();
        self.update(|l| {
            l.current_run_ids.push(run_id);
            l.state = worker_state::RUNNING;
            l.last_run_started_at = json!(now());
        })
        .await
    }

    pub async fn run_finished(&self, run_id: &str, status: &str) {
        let (run_id, status) = (run_id.to_string(), status.to_string());
        self.update(|l| {
            l.current_run_ids.retain(|r| *r != run_id);
            l.state = if l.current_run_ids.is_empty() {
                worker_state::IDLE
            } else {
                worker_state::RUNNING
            };
            l.last_run_id = json!(run_id);
            l.last_run_status = json!(status);
            l.last_run_finished_at = json!(now());
        })
        .await
    }

    /// The final record: written at once (the writer loop ends).
    pub async fn stopped(&self, reason: &str) {
        {
            let mut l = self.local.lock().await;
            l.state = worker_state::STOPPED_GRACEFUL;
            l.current_run_ids.clear();
            l.stopped_at = json!(now());
            l.stop_reason = json!(reason);
        }
        if let Err(e) = self.write().await {
            tracing::warn!(worker_id = %self.worker_id, error = %e, "writing the final worker record failed");
        }
    }
}
