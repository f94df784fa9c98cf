//! Wheel sync (contract §3.8, issue 13): task code shipped to workers as wheels in the object
//! store `pyoco_wheels`.
//!
//! Selection is the original's (worker tags vs the `x-pyoco-wheel-tags` header, interpreter
//! compatibility and the highest PEP 440 version per package, both decided by `packaging` in the
//! runners' own Python). What differs: a sync starts on the store's metadata subject (an upload
//! or delete) rather than on a poll; the whole selected set is installed with
//! `pip install --no-deps --target` into a new directory `<dir>/sets/<n>`, after every download
//! matched its object's SHA-256; only a complete set becomes `current`; runners take it on their
//! `PYTHONPATH` when they are (re)started between runs (see `fetch.rs`), and a set no runner
//! uses any more is deleted, so removed wheels really disappear.
//!
//! One sync directory belongs to one worker process.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

// One reader of the wheel object store for the gateway and the worker (core's: it reads the
// meta documents of both nats-py and async-nats).
pub use pyoco_core::wheel::store::{ObjectInfo as WheelInfo, WheelStore};
use tokio::process::Command;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use pyoco_core::config::Config;
use pyoco_core::time::now;

use crate::registry::Registry;
use crate::text::truncate;

/// The selection helper, run as `python -I -c` in the runners' interpreter.
const SELECT_PY: &str = include_str!("select.py");
/// Lists in the worker record are cut to this many items (as the original).
pub const MAX_ITEMS: usize = 50;
/// `last_error` is cut to this many bytes (as the original).
pub const MAX_ERROR: usize = 2000;
/// Of pip's output, only the tail is kept (the error shows its last lines).
const PIP_TAIL: usize = 64 * 1024;
const HELPER_TIMEOUT: Duration = Duration::from_secs(60);
/// After an upload/delete event, wait this long for the rest of a burst before syncing.
const DEBOUNCE: Duration = Duration::from_millis(150);
const TAGS_HEADER: &str = "x-pyoco-wheel-tags";
const SET_MANIFEST: &str = ".pyoco-set.json";

/// The active wheel set and which set each runner slot runs with; shared by the sync task
/// (which switches `current` and deletes unused sets) and the runners (which report theirs).
#[derive(Debug)]
pub struct ActiveSets {
    current: watch::Sender<Option<PathBuf>>,
    in_use: Mutex<HashMap<usize, Option<PathBuf>>>,
    released: Notify,
}

impl ActiveSets {
    pub fn new(current: Option<PathBuf>) -> Arc<ActiveSets> {
        Arc::new(ActiveSets {
            current: watch::Sender::new(current),
            in_use: Mutex::default(),
            released: Notify::new(),
        })
    }

    /// The directory new runners put on their `PYTHONPATH` (`None`: no wheels).
    pub fn current(&self) -> Option<PathBuf> {
        self.current.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Option<PathBuf>> {
        self.current.subscribe()
    }

    /// A runner of `slot` starts with `dir` (its predecessor is gone: the set that one used may
    /// be deleted).
    pub fn runner_started(&self, slot: usize, dir: Option<PathBuf>) {
        self.in_use.lock().unwrap().insert(slot, dir);
        self.released.notify_one();
    }

    fn in_use(&self) -> HashSet<PathBuf> {
        let mut out: HashSet<PathBuf> = self
            .in_use
            .lock()
            .unwrap()
            .values()
            .flatten()
            .cloned()
            .collect();
        out.extend(self.current());
        out
    }
}

/// One installed wheel, as in the original's `.installed.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Entry {
    pub nuid: String,
    pub package_name: String,
    pub package_version: String,
    pub size_bytes: u64,
    pub sha256_hex: String,
    pub tags: Vec<String>,
    pub installed_at: f64,
}

pub type Manifest = BTreeMap<String, Entry>;

/// Creates the sync directory and finds the set made current by a previous run (runners start
/// with it, before NATS is even reachable). `None` when wheel sync is off.
pub fn prepare(cfg: &Config) -> Result<Option<(PathBuf, Arc<ActiveSets>)>, String> {
    if !cfg.wheel_sync_enabled {
        return Ok(None);
    }
    let dir = PathBuf::from(&cfg.wheel_sync_dir);
    std::fs::create_dir_all(dir.join("sets")).map_err(|e| {
        format!(
            "wheel_sync_dir {}: cannot create it: {e}; fix: point --wheel-sync-dir / PYOCO_WHEEL_SYNC_DIR at a writable directory",
            dir.display()
        )
    })?;
    let dir = dir.canonicalize().unwrap_or(dir);
    let current = read_current(&dir);
    Ok(Some((dir, ActiveSets::new(current))))
}

fn read_current(dir: &Path) -> Option<PathBuf> {
    let target = std::fs::read_link(dir.join("current")).ok()?;
    let set = dir.join(target);
    set.join(SET_MANIFEST).is_file().then_some(set)
}

fn load_manifest(set: &Path) -> Manifest {
    std::fs::read(set.join(SET_MANIFEST))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// The `wheel_sync` block before any sync (`idle`) or with sync off (`disabled`).
pub fn initial_block(enabled: bool) -> Value {
    json!({
        "enabled": enabled,
        "last_result": if enabled { "idle" } else { "disabled" },
        "last_attempt_at": null,
        "last_success_at": null,
        "last_synced_at": null,
        "last_error": null,
        "selected_count": 0,
        "updated_count": 0,
        "removed_count": 0,
        "skipped_incompatible_count": 0,
        "selected_wheels": [],
        "updated_wheels": [],
        "removed_wheels": [],
        "skipped_incompatible": [],
        "installed_wheels": [],
    })
}

/// Original's object-name rule (`^[A-Za-z0-9._+-]+\.whl$`, bounded): core's.
pub fn valid_wheel_name(name: &str) -> bool {
    pyoco_core::wheel::normalize_wheel_name(name).as_deref() == Some(name)
}

/// The wheel's tags from its meta header (CSV; tokens that are not valid tags are dropped).
pub fn wheel_tags(info: &WheelInfo) -> Vec<String> {
    let raw = info.header(TAGS_HEADER).unwrap_or_default();
    let mut tags: Vec<String> = raw
        .split(',')
        .map(str::trim)
        .filter(|t| pyoco_core::wire::is_valid_tag(t))
        .map(str::to_string)
        .collect();
    tags.sort();
    tags.dedup();
    tags
}

#[derive(Debug, Deserialize)]
struct Picked {
    wheel_name: String,
    package_name: String,
    package_version: String,
}

#[derive(Debug, Deserialize)]
struct Selection {
    selected: Vec<Picked>,
    skipped_incompatible: Vec<Value>,
}

pub struct WheelSync {
    pub store: WheelStore,
    pub bucket: String,
    pub python: PathBuf,
    pub tags: Vec<String>,
    pub dir: PathBuf,
    pub interval: Duration,
    pub install_timeout: Duration,
    /// Largest wheel downloaded (the bucket's own limit; 0 = none).
    pub max_bytes: u64,
    pub sets: Arc<ActiveSets>,
    pub registry: Registry,
    state: Value,
    /// The set (names and nuids) whose install failed, and why: not retried until the store changes.
    failed: Option<(String, String)>,
}

impl WheelSync {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cfg: &Config,
        store: WheelStore,
        python: PathBuf,
        tags: Vec<String>,
        dir: PathBuf,
        sets: Arc<ActiveSets>,
        registry: Registry,
    ) -> WheelSync {
        WheelSync {
            store,
            bucket: cfg.wheel_object_store_bucket.clone(),
            python,
            tags,
            dir,
            interval: Duration::from_secs_f64(cfg.wheel_sync_interval_sec.max(0.1)),
            install_timeout: Duration::from_secs_f64(cfg.wheel_install_timeout_sec.max(1.0)),
            max_bytes: cfg.wheel_max_bytes.max(0) as u64,
            sets,
            registry,
            state: initial_block(true),
            failed: None,
        }
    }

    /// Syncs now, then on every upload/delete event of the store (debounced), and every
    /// interval as a fallback for missed events; until `halt`.
    pub async fn run(mut self, client: async_nats::Client, halt: CancellationToken) {
        let subject = format!("$O.{}.M.>", self.bucket);
        let mut sub = match client.subscribe(subject.clone()).await {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(subject = %subject, error = %e, "cannot watch the wheel store; syncing on the interval only");
                None
            }
        };
        let mut next = Instant::now() + self.interval;
        loop {
            let event = async {
                match sub.as_mut() {
                    Some(s) => s.next().await.is_some(),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = tokio::time::sleep_until(next) => {}
                alive = event => {
                    if !alive {
                        sub = None;
                        continue;
                    }
                    tokio::time::sleep(DEBOUNCE).await;
                    if let Some(s) = sub.as_mut() {
                        while let Some(Some(_)) = futures::FutureExt::now_or_never(s.next()) {}
                    }
                    tracing::debug!("wheel store changed; syncing");
                }
                _ = self.sets.released.notified() => {
                    self.gc();
                    continue;
                }
                _ = halt.cancelled() => return,
            }
            self.attempt().await;
            next = Instant::now() + self.interval;
        }
    }

    /// One sync; the outcome goes into the worker record. Never fails: errors are reported.
    pub async fn attempt(&mut self) {
        let attempted_at = now();
        match self.sync_once(attempted_at).await {
            Ok(block) => self.state = block,
            Err(e) => {
                tracing::error!(error = %e, "wheel sync failed; the previous wheel set stays active");
                let mut block = self.state.clone();
                block["enabled"] = json!(true);
                block["last_result"] = json!("error");
                block["last_attempt_at"] = json!(attempted_at);
                block["last_error"] = json!(tail(&e, MAX_ERROR));
                self.state = block;
            }
        }
        self.registry.set_wheel_sync(self.state.clone());
        self.gc();
    }

    async fn sync_once(&mut self, attempted_at: f64) -> Result<Value, String> {
        let listed = self
            .store
            .list()
            .await
            .map_err(|e| format!("listing the wheel store {}: {e}", self.bucket))?;
        let mut infos: HashMap<String, (WheelInfo, Vec<String>)> = HashMap::new();
        let mut order = Vec::new();
        for info in listed {
            if info.deleted() || !valid_wheel_name(info.name()) {
                continue;
            }
            let tags = wheel_tags(&info);
            if !tags.is_empty() && !tags.iter().any(|t| self.tags.contains(t)) {
                continue;
            }
            order.push(info.name().to_string());
            infos.insert(info.name().to_string(), (info, tags));
        }
        let sel = select(&self.python, &order).await?;
        let fingerprint = sel
            .selected
            .iter()
            .map(|p| format!("{}={}", p.wheel_name, infos[&p.wheel_name].0.nuid()))
            .collect::<Vec<_>>()
            .join(",");
        let current = self.sets.current();
        let old = current.as_deref().map(load_manifest).unwrap_or_default();
        let old_fp = old
            .iter()
            .map(|(n, e)| format!("{n}={}", e.nuid))
            .collect::<Vec<_>>()
            .join(",");
        let selected: Vec<String> = sel.selected.iter().map(|p| p.wheel_name.clone()).collect();
        let (manifest, updated, removed) = if fingerprint == old_fp {
            (old, vec![], vec![])
        } else {
            if let Some((fp, err)) = &self.failed {
                if *fp == fingerprint {
                    return Err(err.clone());
                }
            }
            let manifest = match self.install_set(&sel.selected, &infos).await {
                Ok(m) => m,
                Err(e) => {
                    self.failed = Some((fingerprint, e.clone()));
                    return Err(e);
                }
            };
            self.failed = None;
            let updated: Vec<String> = manifest
                .iter()
                .filter(|(n, e)| old.get(*n).map(|o| o.nuid != e.nuid).unwrap_or(true))
                .map(|(n, _)| n.clone())
                .collect();
            let removed: Vec<String> = old
                .keys()
                .filter(|n| !manifest.contains_key(*n))
                .cloned()
                .collect();
            tracing::info!(selected = %selected.join(","), updated = %updated.join(","), removed = %removed.join(","), "wheel set installed; runners switch to it between runs");
            (manifest, updated, removed)
        };
        let t = now();
        let installed: Vec<Value> = manifest
            .iter()
            .take(MAX_ITEMS)
            .map(|(n, e)| {
                json!({"wheel_name": n, "package_name": e.package_name, "package_version": e.package_version,
                       "installed_at": e.installed_at, "nuid": e.nuid})
            })
            .collect();
        let cap = |v: &[String]| v.iter().take(MAX_ITEMS).cloned().collect::<Vec<_>>();
        Ok(json!({
            "enabled": true,
            "last_result": "ok",
            "last_attempt_at": attempted_at,
            "last_success_at": t,
            "last_synced_at": t,
            "last_error": null,
            "selected_count": selected.len(),
            "updated_count": updated.len(),
            "removed_count": removed.len(),
            "skipped_incompatible_count": sel.skipped_incompatible.len(),
            "selected_wheels": cap(&selected),
            "updated_wheels": cap(&updated),
            "removed_wheels": cap(&removed),
            "skipped_incompatible": sel.skipped_incompatible.iter().take(MAX_ITEMS).collect::<Vec<_>>(),
            "installed_wheels": installed,
        }))
    }

    /// Downloads and installs the whole selection into a new set directory and makes it
    /// current; on any failure the directory is removed and the current set stays.
    async fn install_set(
        &self,
        picked: &[Picked],
        infos: &HashMap<String, (WheelInfo, Vec<String>)>,
    ) -> Result<Manifest, String> {
        if picked.is_empty() {
            self.make_current(None)?;
            return Ok(Manifest::new());
        }
        let sets = self.dir.join("sets");
        let n = next_set_number(&sets);
        let target = sets.join(n.to_string());
        let incoming = self.dir.join("incoming").join(n.to_string());
        let result = async {
            for d in [&target, &incoming] {
                std::fs::create_dir_all(d)
                    .map_err(|e| format!("cannot create {}: {e}", d.display()))?;
            }
            let mut manifest = Manifest::new();
            let mut files = Vec::new();
            for p in picked {
                let (info, tags) = &infos[&p.wheel_name];
                let path = incoming.join(&p.wheel_name);
                let (size, sha, nuid) = download(&self.store, info, &path, self.max_bytes).await?;
                files.push(path);
                manifest.insert(
                    p.wheel_name.clone(),
                    Entry {
                        nuid,
                        package_name: p.package_name.clone(),
                        package_version: p.package_version.clone(),
                        size_bytes: size,
                        sha256_hex: sha,
                        tags: tags.clone(),
                        installed_at: 0.0,
                    },
                );
            }
            pip_install(&self.python, &target, &files, self.install_timeout).await?;
            let t = now();
            for e in manifest.values_mut() {
                e.installed_at = t;
            }
            let text = serde_json::to_vec_pretty(&manifest).unwrap_or_default();
            std::fs::write(target.join(SET_MANIFEST), &text).map_err(|e| {
                format!("cannot write the set manifest in {}: {e}", target.display())
            })?;
            Ok::<_, String>((manifest, text))
        }
        .await;
        let _ = std::fs::remove_dir_all(&incoming);
        match result {
            Ok((manifest, text)) => {
                self.make_current(Some(&target))?;
                // The original's manifest, for tools that read it.
                let _ = std::fs::write(self.dir.join(".installed.json"), text);
                Ok(manifest)
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&target);
                Err(e)
            }
        }
    }

    /// Points `current` at `set` (atomically: a new symlink renamed over the old one), then
    /// tells the runners.
    fn make_current(&self, set: Option<&Path>) -> Result<(), String> {
        let link = self.dir.join("current");
        match set {
            Some(set) => {
                let rel = set.strip_prefix(&self.dir).unwrap_or(set);
                let tmp = self
                    .dir
                    .join(format!(".current.{}.tmp", std::process::id()));
                let _ = std::fs::remove_file(&tmp);
                std::os::unix::fs::symlink(rel, &tmp)
                    .and_then(|_| std::fs::rename(&tmp, &link))
                    .map_err(|e| {
                        format!("cannot point {} at {}: {e}", link.display(), set.display())
                    })?;
            }
            None => {
                let _ = std::fs::remove_file(&link);
                let _ = std::fs::remove_file(self.dir.join(".installed.json"));
            }
        }
        self.sets.current.send_replace(set.map(Path::to_path_buf));
        Ok(())
    }

    /// Deletes sets neither current nor used by a runner, and leftover downloads.
    fn gc(&self) {
        let keep = self.sets.in_use();
        let Ok(entries) = std::fs::read_dir(self.dir.join("sets")) else {
            return;
        };
        for e in entries.flatten() {
            let path = e.path();
            if !keep.contains(&path) {
                tracing::info!(set = %path.display(), "deleting a wheel set no runner uses");
                if let Err(err) = std::fs::remove_dir_all(&path) {
                    tracing::warn!(set = %path.display(), error = %err, "cannot delete an unused wheel set");
                }
            }
        }
        let _ = std::fs::remove_dir_all(self.dir.join("incoming"));
    }
}

fn next_set_number(sets: &Path) -> u64 {
    std::fs::read_dir(sets)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<u64>().ok())
                .max()
                .unwrap_or(0)
        })
        .unwrap_or(0)
        + 1
}

/// Downloads one wheel to `path`, chunk by chunk (never whole in memory), checked against its
/// object's digest and size (core's reader ends with an error on a mismatch) and the size
/// limit. Returns (size, sha256 hex, nuid).
async fn download(
    store: &WheelStore,
    info: &WheelInfo,
    path: &Path,
    max_bytes: u64,
) -> Result<(u64, String, String), String> {
    let name = info.name();
    if max_bytes > 0 && info.size() > max_bytes {
        return Err(format!("wheel {name} is {} bytes, above the limit of {max_bytes} (PYOCO_WHEEL_MAX_BYTES); it is not installed", info.size()));
    }
    let Some(expected) = info.digest_bytes().filter(|d| d.len() == 32) else {
        return Err(format!(
            "wheel {name}: its object has no SHA-256 digest ({:?}); upload it again",
            truncate(info.digest(), 80)
        ));
    };
    let write_err = |e: std::io::Error| format!("cannot write {}: {e}", path.display());
    let mut file = tokio::fs::File::create(path).await.map_err(write_err)?;
    let chunks = store
        .read(info)
        .await
        .map_err(|e| format!("downloading wheel {name}: {e}"))?;
    futures::pin_mut!(chunks);
    let mut size = 0u64;
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(|e| match e {
            pyoco_core::wheel::store::StoreError::BadMeta(why) => {
                format!("wheel {name}: {why}; it is corrupt and not installed — upload it again")
            }
            other => format!("downloading wheel {name}: {other}"),
        })?;
        size += chunk.len() as u64;
        file.write_all(&chunk).await.map_err(write_err)?;
    }
    file.flush().await.map_err(write_err)?;
    if size != info.size() {
        return Err(format!("wheel {name}: got {size} of the {} bytes its object declares (replaced or deleted meanwhile?); not installed", info.size()));
    }
    Ok((size, hex::encode(expected), info.nuid().to_string()))
}

/// Runs the selection helper in the runners' Python.
async fn select(python: &Path, names: &[String]) -> Result<Selection, String> {
    let mut child = Command::new(python)
        .args(["-I", "-c", SELECT_PY])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            format!(
                "cannot run the runners' Python {} to select wheels: {e}",
                python.display()
            )
        })?;
    let input = serde_json::to_vec(&json!({ "wheels": names })).unwrap_or_default();
    let mut stdin = child.stdin.take().expect("piped stdin");
    let stdout = child.stdout.take().expect("piped stdout");
    let stderr = child.stderr.take().expect("piped stderr");
    let run = async {
        let _ = stdin.write_all(&input).await;
        drop(stdin);
        let (out, err) = tokio::join!(
            read_tail(stdout, 16 * 1024 * 1024),
            read_tail(stderr, PIP_TAIL)
        );
        let status = child.wait().await;
        (out, err, status)
    };
    let (out, err, status) = tokio::time::timeout(HELPER_TIMEOUT, run)
        .await
        .map_err(|_| {
            format!(
                "selecting wheels with {} took over {HELPER_TIMEOUT:?}",
                python.display()
            )
        })?;
    let ok = status.map(|s| s.success()).unwrap_or(false);
    if !ok {
        return Err(format!(
            "selecting wheels with {} failed (it needs `packaging` or pip): {}",
            python.display(),
            tail(&String::from_utf8_lossy(&err), 1000)
        ));
    }
    serde_json::from_slice(&out)
        .map_err(|e| format!("the wheel selection helper answered badly: {e}"))
}

/// `pip install --no-deps --target <target> <wheels>`, bounded in time and output.
async fn pip_install(
    python: &Path,
    target: &Path,
    files: &[PathBuf],
    timeout: Duration,
) -> Result<(), String> {
    let mut cmd = Command::new(python);
    cmd.args([
        "-I",
        "-m",
        "pip",
        "install",
        "--disable-pip-version-check",
        "--no-input",
        "--no-deps",
        "--no-index",
        "--target",
    ])
    .arg(target)
    .args(files)
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .process_group(0)
    .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot run {} -m pip: {e}", python.display()))?;
    let stdout = child.stdout.take().expect("piped stdout");
    let stderr = child.stderr.take().expect("piped stderr");
    let names: Vec<String> = files
        .iter()
        .filter_map(|f| f.file_name()?.to_str().map(str::to_string))
        .collect();
    let run = async {
        let (out, err) = tokio::join!(read_tail(stdout, PIP_TAIL), read_tail(stderr, PIP_TAIL));
        (out, err, child.wait().await)
    };
    match tokio::time::timeout(timeout, run).await {
        Err(_) => {
            if let Some(pid) = child.id() {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            let _ = child.wait().await;
            Err(format!(
                "wheel install timed out after {:.0} s (PYOCO_WHEEL_INSTALL_TIMEOUT_SEC): {}",
                timeout.as_secs_f64(),
                names.join(" ")
            ))
        }
        Ok((out, err, status)) => {
            let status = status.map_err(|e| format!("pip: {e}"))?;
            if status.success() {
                return Ok(());
            }
            let detail = if err.is_empty() { out } else { err };
            Err(format!(
                "wheel install failed ({status}): {}: {}",
                names.join(" "),
                tail(String::from_utf8_lossy(&detail).trim_end(), 1500)
            ))
        }
    }
}

/// Reads everything, keeping only the last `cap` bytes.
async fn read_tail(mut r: impl AsyncRead + Unpin, cap: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    while let Ok(n) = r.read(&mut buf).await {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
        if out.len() > 2 * cap {
            out.drain(..out.len() - cap);
        }
    }
    if out.len() > cap {
        out.drain(..out.len() - cap);
    }
    out
}

/// The last at most `max` bytes of `s`, on a character boundary.
fn tail(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    s[start..].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wheel_names_follow_the_original_rule() {
        assert!(valid_wheel_name("demo_pkg-1.0.0-py3-none-any.whl"));
        assert!(valid_wheel_name("a+b-1.0-py3-none-any.whl"));
        assert!(!valid_wheel_name("../x-1.0-py3-none-any.whl"));
        assert!(!valid_wheel_name("x y-1.0-py3-none-any.whl"));
        assert!(!valid_wheel_name(".whl"));
        assert!(!valid_wheel_name("demo.zip"));
        assert!(!valid_wheel_name(&format!(
            "{}.whl",
            "a".repeat(pyoco_core::wheel::MAX_NAME_LEN)
        )));
    }

    #[test]
    fn wheel_tags_drop_invalid_tokens_and_read_either_header_case() {
        let meta = |j: &str| WheelInfo(serde_json::from_str(j).unwrap());
        let info = meta(
            r#"{"name":"a.whl","nuid":"N","headers":{"X-Pyoco-Wheel-Tags":" gpu, ,bad.tag,cpu,gpu"}}"#,
        );
        assert_eq!(wheel_tags(&info), ["cpu", "gpu"]);
        let none = meta(r#"{"name":"a.whl","nuid":"N"}"#);
        assert!(wheel_tags(&none).is_empty());
    }

    #[test]
    fn set_numbers_grow_past_every_existing_set() {
        let dir = std::env::temp_dir().join(format!("pyoco-sets-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(next_set_number(&dir), 1);
        for n in ["3", "10", "junk"] {
            std::fs::create_dir_all(dir.join(n)).unwrap();
        }
        assert_eq!(next_set_number(&dir), 11);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn tail_keeps_the_end_on_a_char_boundary() {
        assert_eq!(tail("abcdef", 3), "def");
        assert_eq!(tail("aéé", 3), "é");
        assert_eq!(tail("ab", 3), "ab");
    }
}
