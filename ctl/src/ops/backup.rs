//! `backup` and `restore`: a built-in engine on JetStream's snapshot API (the layout
//! `nats stream backup` writes: `backup.json` + `stream.tar.s2`, the payload stored exactly as the
//! server sent it), or the `nats` CLI.

use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::jsapi::{self, ApiError};
use super::resolve;
use super::{BackupArgs, Engine, EngineArgs, RestoreArgs};
use crate::client::{CtlError, CtlResult};
use crate::{exit, Ctx};

pub const MANIFEST: &str = "manifest.json";
pub const META_FILE: &str = "backup.json";
pub const DATA_FILE: &str = "stream.tar.s2";
/// What newer `nats` CLIs write instead of stream.tar.s2 (accepted on restore).
const DATA_FILE_ALT: &str = "stream.arc.s2";
/// Restore chunk size, as `nats stream restore`.
const RESTORE_CHUNK: usize = 64 * 1024;

fn err(msg: impl Into<String>) -> CtlError {
    CtlError::new(exit::ERROR, msg.into())
}

fn engine_of(e: &EngineArgs) -> Engine {
    e.engine.unwrap_or(if e.nats_cli_path.is_some() {
        Engine::NatsCli
    } else {
        Engine::Builtin
    })
}

fn sha256_file(path: &Path) -> std::io::Result<(String, u64)> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut n_total = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        n_total += n as u64;
    }
    Ok((hex::encode(h.finalize()), n_total))
}

/// A progress line on stderr, only when stderr is a terminal.
struct Progress {
    on: bool,
    last: Instant,
}

impl Progress {
    fn new() -> Progress {
        Progress {
            on: std::io::stderr().is_terminal(),
            last: Instant::now(),
        }
    }
    fn show(&mut self, text: impl FnOnce() -> String) {
        if self.on && self.last.elapsed() >= Duration::from_millis(250) {
            self.last = Instant::now();
            eprint!("\r\x1b[K{}", text());
        }
    }
    fn clear(&mut self) {
        if self.on {
            eprint!("\r\x1b[K");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// backup

/// What one stream's backup produced (a manifest entry).
fn file_entry(dir: &Path, name: &str) -> CtlResult<Value> {
    let (sha, bytes) = sha256_file(&dir.join(name))
        .map_err(|e| err(format!("cannot read {}: {e}", dir.join(name).display())))?;
    Ok(json!({"sha256": sha, "bytes": bytes}))
}

fn manifest_entry(stream: &str, rel_dir: &str, dir: &Path) -> CtlResult<Value> {
    let meta: Value = std::fs::read(dir.join(META_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| {
            err(format!(
                "{}: missing or not JSON",
                dir.join(META_FILE).display()
            ))
        })?;
    let data = if dir.join(DATA_FILE).exists() {
        DATA_FILE
    } else {
        DATA_FILE_ALT
    };
    let state = meta.get("state").cloned().unwrap_or(Value::Null);
    Ok(json!({
        "name": stream,
        "dir": rel_dir,
        "messages": state.get("messages").cloned().unwrap_or(Value::Null),
        "bytes": state.get("bytes").cloned().unwrap_or(Value::Null),
        "first_seq": state.get("first_seq").cloned().unwrap_or(Value::Null),
        "last_seq": state.get("last_seq").cloned().unwrap_or(Value::Null),
        "consumers": state.get("consumer_count").cloned().unwrap_or(Value::Null),
        "replicas": meta.pointer("/config/num_replicas").cloned().unwrap_or(Value::Null),
        "files": {
            META_FILE: file_entry(dir, META_FILE)?,
            data: file_entry(dir, data)?,
        },
    }))
}

struct SnapOpts {
    no_consumers: bool,
    chunk_size: u32,
    window_size: u32,
    idle: Duration,
}

/// Snapshots one stream into `dir` (backup.json + stream.tar.s2). Returns (bytes, messages).
async fn snapshot_stream(
    client: &async_nats::Client,
    stream: &str,
    dir: &Path,
    o: &SnapOpts,
) -> CtlResult<(u64, u64)> {
    std::fs::create_dir_all(dir)
        .map_err(|e| err(format!("cannot create {}: {e}", dir.display())))?;
    let inbox = client.new_inbox();
    let mut sub = client
        .subscribe(inbox.clone())
        .await
        .map_err(|e| err(format!("{stream}: subscribe: {e}")))?;
    let req = json!({
        "deliver_subject": inbox,
        "no_consumers": o.no_consumers,
        "chunk_size": o.chunk_size,
        "window_size": o.window_size,
        "jsck": false,
    });
    let resp = jsapi::request_json(
        client,
        &format!("$JS.API.STREAM.SNAPSHOT.{stream}"),
        &req,
        Duration::from_secs(30),
    )
    .await
    .map_err(|e| err(format!("backup of {stream} failed: {e}")))?;
    let expected = resp
        .pointer("/state/bytes")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    let messages = resp
        .pointer("/state/messages")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    let data_path = dir.join(DATA_FILE);
    let mut file = tokio::fs::File::create(&data_path)
        .await
        .map_err(|e| err(format!("cannot create {}: {e}", data_path.display())))?;
    let mut received = 0u64;
    let mut progress = Progress::new();
    loop {
        let msg = match tokio::time::timeout(o.idle, sub.next()).await {
            Ok(Some(m)) => m,
            Ok(None) => return Err(err(format!("backup of {stream} failed: the subscription ended early"))),
            Err(_) => {
                return Err(err(format!(
                    "backup of {stream} failed: timed out after receiving no data for {} s (--idle-timeout)",
                    o.idle.as_secs()
                )))
            }
        };
        // Flow control: acknowledge at once, the server stops after ~2 s without it.
        if let Some(reply) = &msg.reply {
            client
                .publish(reply.clone(), Bytes::new())
                .await
                .map_err(|e| err(format!("backup of {stream}: flow control reply: {e}")))?;
        }
        if msg.payload.is_empty() {
            // 204 ends it; servers before 2.10 end it with an empty message without a status.
            let code = msg.status.map(|s| s.as_u16());
            if code.is_none() || code == Some(204) {
                break;
            }
            let why = msg
                .description
                .clone()
                .unwrap_or_else(|| "no description".into());
            return Err(err(format!(
                "backup of {stream} failed: the server ended the snapshot with status {} ({why})",
                code.map(|c| c.to_string()).unwrap_or_else(|| "none".into())
            )));
        }
        file.write_all(&msg.payload)
            .await
            .map_err(|e| err(format!("cannot write {}: {e}", data_path.display())))?;
        received += msg.payload.len() as u64;
        progress.show(|| {
            format!(
                "backup: {stream}: {} received (stream holds {})",
                super::human_bytes(received),
                super::human_bytes(expected)
            )
        });
    }
    progress.clear();
    file.flush()
        .await
        .map_err(|e| err(format!("cannot write {}: {e}", data_path.display())))?;
    file.sync_all()
        .await
        .map_err(|e| err(format!("cannot sync {}: {e}", data_path.display())))?;
    let _ = sub.unsubscribe().await;
    let meta = json!({"config": resp.get("config").cloned().unwrap_or(Value::Null), "state": resp.get("state").cloned().unwrap_or(Value::Null)});
    std::fs::write(
        dir.join(META_FILE),
        serde_json::to_vec_pretty(&meta).expect("JSON"),
    )
    .map_err(|e| {
        err(format!(
            "cannot write {}: {e}",
            dir.join(META_FILE).display()
        ))
    })?;
    Ok((received, messages))
}

fn check_output_dir(dir: &Path, force: bool) -> CtlResult<()> {
    if dir.exists() {
        if !dir.is_dir() {
            return Err(CtlError::new(
                exit::USAGE,
                format!("--dir {}: not a directory", dir.display()),
            ));
        }
        let non_empty = std::fs::read_dir(dir)
            .map(|mut d| d.next().is_some())
            .unwrap_or(false);
        if non_empty && !force {
            return Err(CtlError::new(
                exit::USAGE,
                format!("--dir {} is not empty; choose a new directory (or add --force to write into it)", dir.display()),
            ));
        }
    }
    std::fs::create_dir_all(dir).map_err(|e| err(format!("cannot create {}: {e}", dir.display())))
}

fn write_manifest(dir: &Path, manifest: &Value) -> CtlResult<()> {
    let tmp = dir.join(format!("{MANIFEST}.tmp"));
    std::fs::write(&tmp, serde_json::to_vec_pretty(manifest).expect("JSON"))
        .map_err(|e| err(format!("cannot write {}: {e}", tmp.display())))?;
    std::fs::rename(&tmp, dir.join(MANIFEST))
        .map_err(|e| err(format!("cannot write the manifest: {e}")))
}

pub async fn backup(ctx: &Ctx, a: &BackupArgs) -> CtlResult<u8> {
    let dir = super::absolute(&a.dir);
    let engine = engine_of(&a.engine);
    let names = pyoco_core::resources::Names::from_config(&ctx.config);
    let url = ctx.nats_url();
    // The nats CLI must be there before anything is written.
    let cli = if engine == Engine::NatsCli {
        Some(nats_cli(&a.engine)?)
    } else {
        None
    };
    check_output_dir(&dir, a.force)?;

    let client = match engine {
        Engine::Builtin => {
            Some(jsapi::connect(&url, &ctx.nats_auth()?, a.engine.creds.as_deref()).await?)
        }
        // Used only to skip streams that do not exist and to record the server version.
        Engine::NatsCli if a.stream.is_none() => {
            jsapi::connect(&url, &ctx.nats_auth()?, a.engine.creds.as_deref())
                .await
                .ok()
        }
        Engine::NatsCli => None,
    };
    let (single, wanted) = match &a.stream {
        Some(s) => (true, vec![s.clone()]),
        None => (false, names.all_streams()),
    };
    let mut entries = Vec::new();
    let mut skipped = Vec::new();
    let opts = SnapOpts {
        no_consumers: a.no_consumers,
        chunk_size: a.chunk_size,
        window_size: a.window_size,
        idle: Duration::from_secs(a.idle_timeout.max(1)),
    };
    for stream in &wanted {
        if let Some(c) = &client {
            match jsapi::stream_info(c, stream).await {
                Ok(Some(info)) => {
                    if info.pointer("/config/storage").and_then(Value::as_str) == Some("memory") {
                        if single {
                            return Err(err(format!(
                                "{stream} uses memory storage, which JetStream cannot snapshot"
                            )));
                        }
                        eprintln!("backup: warning: {stream} skipped (memory storage cannot be snapshotted)");
                        skipped.push(json!({"name": stream, "reason": "memory storage"}));
                        continue;
                    }
                }
                Ok(None) => {
                    if single {
                        return Err(err(format!(
                            "stream {stream} not found (NATS {})",
                            pyoco_core::nats::redact_url(&url)
                        )));
                    }
                    eprintln!("backup: warning: {stream} does not exist; skipped");
                    skipped.push(json!({"name": stream, "reason": "not found"}));
                    continue;
                }
                Err(e) => {
                    return Err(crate::client::nats_error(
                        &url,
                        &format!("cannot look up stream {stream}"),
                        &e,
                    ))
                }
            }
        }
        let (rel, sdir) = if single {
            (".".to_string(), dir.clone())
        } else {
            (stream.clone(), dir.join(stream))
        };
        let started = Instant::now();
        match (&client, &cli, engine) {
            (Some(c), _, Engine::Builtin) => {
                let (bytes, messages) = snapshot_stream(c, stream, &sdir, &opts).await?;
                eprintln!(
                    "backup: {stream}: {messages} messages, {} snapshot in {:.1} s → {}",
                    super::human_bytes(bytes),
                    started.elapsed().as_secs_f64(),
                    sdir.display()
                );
            }
            (_, Some(cli), _) => {
                let mut args = cli_base(ctx, &a.engine);
                args.extend([
                    "stream".into(),
                    "backup".into(),
                    stream.clone(),
                    sdir.display().to_string(),
                ]);
                run_cli(cli, &args).await?;
                eprintln!("backup: {stream} → {} (nats CLI)", sdir.display());
            }
            _ => unreachable!("engine set up above"),
        }
        entries.push(manifest_entry(stream, &rel, &sdir)?);
    }
    let server = client.as_ref().map(|c| {
        let i = c.server_info();
        json!({"version": i.version, "name": i.server_name, "cluster": i.cluster})
    });
    let manifest = json!({
        "format": "pyococtl-backup/1",
        "tool": format!("pyococtl {}", env!("CARGO_PKG_VERSION")),
        "engine": if engine == Engine::Builtin { "builtin" } else { "nats-cli" },
        "created_at": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "nats_url": pyoco_core::nats::redact_url(&url),
        "nats_server": server,
        "layout": if single { "single" } else { "per-stream" },
        "streams": entries,
        "skipped": skipped,
    });
    write_manifest(&dir, &manifest)?;
    println!(
        "backup: ok ({} streams → {})",
        manifest["streams"].as_array().map(Vec::len).unwrap_or(0),
        dir.display()
    );
    Ok(exit::OK)
}

// ---------------------------------------------------------------------------------------------
// restore

/// One stream to restore, checked.
struct Item {
    name: String,
    dir: PathBuf,
    data: PathBuf,
    meta: Value,
}

fn load_meta(dir: &Path) -> CtlResult<Value> {
    let p = dir.join(META_FILE);
    let bytes =
        std::fs::read(&p).map_err(|e| err(format!("restore: cannot read {}: {e}", p.display())))?;
    let v: Value = serde_json::from_slice(&bytes)
        .map_err(|e| err(format!("restore: {} is not valid JSON: {e}", p.display())))?;
    if !v.get("config").map(Value::is_object).unwrap_or(false) {
        return Err(err(format!(
            "restore: {} has no stream config",
            p.display()
        )));
    }
    Ok(v)
}

/// Checks the whole backup before anything is touched.
fn check_backup(input: &Path, only: Option<&str>) -> CtlResult<Vec<Item>> {
    let manifest_path = input.join(MANIFEST);
    let mut items = Vec::new();
    if manifest_path.exists() {
        let m: Value = std::fs::read(&manifest_path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| {
                err(format!(
                    "restore: {} is not valid JSON",
                    manifest_path.display()
                ))
            })?;
        let streams = m.get("streams").and_then(Value::as_array).ok_or_else(|| {
            err(format!(
                "restore: {} lists no streams",
                manifest_path.display()
            ))
        })?;
        for s in streams {
            let name = s
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| err("restore: a manifest entry has no name"))?
                .to_string();
            if only.is_some_and(|o| o != name) {
                continue;
            }
            let rel = s.get("dir").and_then(Value::as_str).unwrap_or(".");
            if rel.contains("..") || rel.starts_with('/') {
                return Err(err(format!(
                    "restore: manifest entry {name}: bad dir {rel:?}"
                )));
            }
            let dir = if rel == "." || rel.is_empty() {
                input.to_path_buf()
            } else {
                input.join(rel)
            };
            let files = s
                .get("files")
                .and_then(Value::as_object)
                .ok_or_else(|| err(format!("restore: manifest entry {name} lists no files")))?;
            let mut data = None;
            for (fname, f) in files {
                let p = dir.join(fname);
                if !p.is_file() {
                    return Err(err(format!(
                        "restore: {} is missing (backup incomplete)",
                        p.display()
                    )));
                }
                let want = f.get("sha256").and_then(Value::as_str).unwrap_or("");
                let (got, _) = sha256_file(&p)
                    .map_err(|e| err(format!("restore: cannot read {}: {e}", p.display())))?;
                if got != want {
                    return Err(err(format!("restore: sha256 mismatch for {} (manifest {want}, file {got}): the backup is damaged", p.display())));
                }
                if fname == DATA_FILE || fname == DATA_FILE_ALT {
                    data = Some(p);
                }
            }
            let data = data
                .ok_or_else(|| err(format!("restore: manifest entry {name} has no {DATA_FILE}")))?;
            let meta = load_meta(&dir)?;
            items.push(Item {
                name,
                dir,
                data,
                meta,
            });
        }
    } else if input.join(META_FILE).exists() {
        // A directory written by `nats stream backup`.
        let meta = load_meta(input)?;
        let name = meta
            .pointer("/config/name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let data = [DATA_FILE, DATA_FILE_ALT]
            .iter()
            .map(|f| input.join(f))
            .find(|p| p.is_file())
            .ok_or_else(|| {
                err(format!(
                    "restore: {} is missing (backup incomplete)",
                    input.join(DATA_FILE).display()
                ))
            })?;
        if only.is_none_or(|o| o == name) {
            items.push(Item {
                name,
                dir: input.to_path_buf(),
                data,
                meta,
            });
        }
    } else {
        return Err(err(format!(
            "restore: {} holds no {MANIFEST} and no {META_FILE}: not a backup",
            input.display()
        )));
    }
    if let Some(o) = only {
        if items.is_empty() {
            return Err(err(format!("restore: stream {o} is not in the backup")));
        }
    }
    for it in &items {
        let cfg_name = it
            .meta
            .pointer("/config/name")
            .and_then(Value::as_str)
            .unwrap_or("");
        if cfg_name != it.name {
            return Err(err(format!(
                "restore: {} names stream {cfg_name:?}, the manifest {:?} (a stream cannot be renamed on restore)",
                it.dir.join(META_FILE).display(),
                it.name
            )));
        }
        if it.meta.pointer("/config/storage").and_then(Value::as_str) == Some("memory") {
            return Err(err(format!(
                "restore: {} uses memory storage, which JetStream cannot restore",
                it.name
            )));
        }
    }
    if items.is_empty() {
        return Err(err("restore: the backup holds no stream"));
    }
    Ok(items)
}

async fn restore_stream(
    client: &async_nats::Client,
    it: &Item,
    replicas: Option<u32>,
    idle: Duration,
) -> CtlResult<Value> {
    let name = &it.name;
    let mut req = json!({"config": it.meta["config"], "state": it.meta.get("state").cloned().unwrap_or(Value::Null)});
    if let Some(r) = replicas {
        req["config"]["num_replicas"] = json!(r);
    }
    let resp = jsapi::request_json(
        client,
        &format!("$JS.API.STREAM.RESTORE.{name}"),
        &req,
        Duration::from_secs(30),
    )
    .await
    .map_err(|e| err(format!("restore of {name} failed: {e}")))?;
    let deliver = resp
        .get("deliver_subject")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            err(format!(
                "restore of {name} failed: no deliver_subject in {resp}"
            ))
        })?
        .to_string();
    let mut file = tokio::fs::File::open(&it.data)
        .await
        .map_err(|e| err(format!("cannot open {}: {e}", it.data.display())))?;
    let total = file.metadata().await.map(|m| m.len()).unwrap_or(0);
    let mut sent = 0u64;
    let mut buf = vec![0u8; RESTORE_CHUNK];
    let mut progress = Progress::new();
    loop {
        // Fill a whole chunk (a short read is not the end of the file).
        let mut n = 0;
        while n < RESTORE_CHUNK {
            let k = file
                .read(&mut buf[n..])
                .await
                .map_err(|e| err(format!("cannot read {}: {e}", it.data.display())))?;
            if k == 0 {
                break;
            }
            n += k;
        }
        if n == 0 {
            break;
        }
        let r = async_nats::Request::new()
            .payload(Bytes::copy_from_slice(&buf[..n]))
            .timeout(Some(idle));
        let ack = client.send_request(deliver.clone(), r).await.map_err(|e| {
            err(format!(
                "restore of {name} failed after {}: chunk not acknowledged: {e}",
                super::human_bytes(sent)
            ))
        })?;
        if !ack.payload.is_empty() {
            if let Ok(v) = serde_json::from_slice::<Value>(&ack.payload) {
                if let Some(e) = v.get("error") {
                    return Err(err(format!("restore of {name} failed: {e}")));
                }
            }
        } else if let Some(st) = ack.status.filter(|s| s.as_u16() >= 300) {
            return Err(err(format!(
                "restore of {name} failed: status {st} {}",
                ack.description.unwrap_or_default()
            )));
        }
        sent += n as u64;
        progress.show(|| {
            format!(
                "restore: {name}: {} / {} sent",
                super::human_bytes(sent),
                super::human_bytes(total)
            )
        });
    }
    progress.clear();
    // The server now rebuilds the stream; this can take long, hence the generous timeout.
    let r = async_nats::Request::new()
        .payload(Bytes::new())
        .timeout(Some(Duration::from_secs(3600)));
    let fin = client
        .send_request(deliver, r)
        .await
        .map_err(|e| err(format!("restore of {name} failed at the end: {e}")))?;
    let v: Value = serde_json::from_slice(&fin.payload).map_err(|_| {
        err(format!(
            "restore of {name} failed: unexpected final answer {:?}",
            String::from_utf8_lossy(&fin.payload)
        ))
    })?;
    if let Some(e) = v.get("error") {
        return Err(err(format!(
            "restore of {name} failed: {}",
            e.get("description")
                .and_then(Value::as_str)
                .unwrap_or(&e.to_string())
        )));
    }
    if v.get("type").and_then(Value::as_str)
        != Some("io.nats.jetstream.api.v1.stream_create_response")
    {
        return Err(err(format!(
            "restore of {name} failed: expected a stream_create_response, got {v}"
        )));
    }
    Ok(v)
}

pub async fn restore(ctx: &Ctx, a: &RestoreArgs) -> CtlResult<u8> {
    if !a.confirm {
        return Err(super::confirm_required(
            "pyococtl restore --confirm --input /var/backups/pyoco/2024-05-01",
        ));
    }
    let input = super::absolute(&a.input);
    if !input.is_dir() {
        return Err(CtlError::new(
            exit::USAGE,
            format!("restore: input directory not found: {}", input.display()),
        ));
    }
    let engine = engine_of(&a.engine);
    let cli = if engine == Engine::NatsCli {
        Some(nats_cli(&a.engine)?)
    } else {
        None
    };
    let items = check_backup(&input, a.stream.as_deref())?;
    let url = ctx.nats_url();

    if let Some(cli) = cli {
        if a.replace || a.replicas.is_some() {
            return Err(CtlError::new(
                exit::USAGE,
                "--replace and --replicas need the builtin engine",
            ));
        }
        for it in &items {
            let mut args = cli_base(ctx, &a.engine);
            args.extend([
                "stream".into(),
                "restore".into(),
                it.dir.display().to_string(),
            ]);
            run_cli(&cli, &args).await?;
            println!("restore: {}: ok (nats CLI)", it.name);
        }
        return Ok(exit::OK);
    }

    let client = jsapi::connect(&url, &ctx.nats_auth()?, a.engine.creds.as_deref()).await?;
    // Refuse over existing streams before touching anything.
    let mut existing = Vec::new();
    for it in &items {
        match jsapi::stream_info(&client, &it.name).await {
            Ok(Some(_)) => existing.push(it.name.clone()),
            Ok(None) => {}
            Err(e) => {
                return Err(crate::client::nats_error(
                    &url,
                    &format!("cannot look up stream {}", it.name),
                    &e,
                ))
            }
        }
    }
    if !existing.is_empty() && !a.replace {
        return Err(err(format!(
            "restore: these streams already exist: {}; nothing was changed\n- hint: add --replace to delete and restore them (their current contents are lost)",
            existing.join(", ")
        )));
    }
    let idle = Duration::from_secs(a.idle_timeout.max(1));
    for it in &items {
        if existing.contains(&it.name) {
            jsapi::request(
                &client,
                &format!("$JS.API.STREAM.DELETE.{}", it.name),
                Bytes::new(),
                Duration::from_secs(30),
            )
            .await
            .map_err(|e: ApiError| {
                err(format!(
                    "restore: cannot delete {} before restoring it: {e}",
                    it.name
                ))
            })?;
            eprintln!(
                "restore: {}: deleted the existing stream (--replace)",
                it.name
            );
        }
        let started = Instant::now();
        let v = restore_stream(&client, it, a.replicas, idle).await?;
        let got = v
            .pointer("/state/messages")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        let want = it.meta.pointer("/state/messages").and_then(Value::as_u64);
        println!(
            "restore: {}: ok ({got} messages, {:.1} s)",
            it.name,
            started.elapsed().as_secs_f64()
        );
        if let Some(w) = want.filter(|w| *w != got) {
            eprintln!("restore: warning: {}: the backup recorded {w} messages, the restored stream has {got}", it.name);
        }
    }
    Ok(exit::OK)
}

// ---------------------------------------------------------------------------------------------
// the nats CLI engine

fn nats_cli(e: &EngineArgs) -> CtlResult<resolve::NatsCli> {
    let (cli, attempts) = resolve::resolve_nats_cli(e.nats_cli_path.as_deref());
    cli.ok_or_else(|| {
        err(format!(
            "nats CLI not found\nresolution:\n{}\n- hint: install the nats CLI (https://github.com/nats-io/natscli) or use the builtin engine (drop --engine nats-cli / --nats-cli-path)",
            resolve::attempt_lines(&attempts).join("\n")
        ))
    })
}

/// `--server URL [--creds F] [--context C]`.
fn cli_base(ctx: &Ctx, e: &EngineArgs) -> Vec<String> {
    let mut v = Vec::new();
    // With a context, the context's server applies unless --nats-url was given explicitly.
    if e.context.is_none() || ctx.cli.nats_url.is_some() {
        v.extend(["--server".to_string(), ctx.nats_url()]);
    }
    if let Some(c) = &e.creds {
        v.extend(["--creds".to_string(), c.display().to_string()]);
    }
    if let Some(c) = &e.context {
        v.extend(["--context".to_string(), c.clone()]);
    }
    v
}

async fn run_cli(cli: &resolve::NatsCli, args: &[String]) -> CtlResult<()> {
    eprintln!("run: {} {}", cli.path.display(), args.join(" "));
    let st = tokio::process::Command::new(&cli.path)
        .args(args)
        .status()
        .await
        .map_err(|e| err(format!("cannot run {}: {e}", cli.path.display())))?;
    if !st.success() {
        return Err(err(format!(
            "{} {} failed ({st})",
            cli.path.display(),
            args.join(" ")
        )));
    }
    Ok(())
}
