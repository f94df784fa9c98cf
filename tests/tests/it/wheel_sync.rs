//! Worker wheel sync (issue 13): wheels uploaded with the original's client through the
//! original's gateway (or put straight into the object store) are installed by our worker into a
//! new wheel set, runners switch to it between runs, a broken upload keeps the previous set, a
//! deleted wheel disappears from the runners; the `wheel_sync` block of the worker record; and the
//! original worker installing a wheel put there the same way (our object layout assumptions).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use base64::Engine;
use pyoco_tests::*;
use serde_json::Value;

/// The task module of version `v`: `slow` sleeps, writes its version to `out`, returns it.
fn versioned_src(v: &str) -> String {
    format!(
        "import time\nVERSION = {v:?}\n\ndef slow(seconds=0.0, out=''):\n    time.sleep(float(seconds))\n    if out:\n        open(out, 'w').write(VERSION)\n    return VERSION\n"
    )
}

fn flow(callable: &str, seconds: f64, out: &Path) -> String {
    format!(
        "version: 1\nflow:\n  graph: t\n  defaults: {{seconds: {seconds}, out: '{}'}}\ntasks:\n  t: {{callable: \"{callable}\"}}\n",
        out.display()
    )
}

async fn record(js: &jetstream::Context, worker_id: &str) -> Value {
    let Ok(kv) = js.get_key_value("pyoco_workers").await else {
        return Value::Null;
    };
    match kv.get(worker_id).await {
        Ok(Some(b)) => serde_json::from_slice(&b).unwrap_or(Value::Null),
        _ => Value::Null,
    }
}

/// Waits until the record's `wheel_sync` satisfies `pred`; returns that block.
async fn wait_sync(
    js: &jetstream::Context,
    worker_id: &str,
    timeout: Duration,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let ws = record(js, worker_id).await["wheel_sync"].clone();
        if pred(&ws) {
            return ws;
        }
        if Instant::now() > deadline {
            panic!("wheel_sync of {worker_id} never showed {what} within {timeout:?}; last: {ws}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn selected(ws: &Value) -> Vec<String> {
    ws["selected_wheels"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

async fn upload(gw: &OrigGateway, wheel: &Path, tags: &str) {
    // Hand-made test wheels have no docs or entry points: 0.5.1's preflight would refuse them.
    let mut args = vec![
        "wheel-upload",
        "--preflight",
        "off",
        "--wheel-file",
        wheel.to_str().unwrap(),
    ];
    if !tags.is_empty() {
        args.extend(["--tags", tags]);
    }
    let out = orig_client(&gw.base_url(), &args, &[]).await;
    out.assert_success();
}

async fn run_to_end(gw: &OrigGateway, yaml: &str, tag: &str) -> Value {
    let id = submit_flow_yaml(&gw.base_url(), yaml, "main", tag).await;
    wait_for_run_status(
        &gw.base_url(),
        &id,
        &["COMPLETED", "FAILED", "CANCELLED"],
        Duration::from_secs(60),
        None,
    )
    .await
}

fn current_set(sync_dir: &Path) -> Option<PathBuf> {
    std::fs::read_link(sync_dir.join("current"))
        .ok()
        .map(|t| sync_dir.join(t))
}

#[tokio::test]
async fn uploaded_wheels_run_switch_versions_between_runs_and_disappear_when_deleted() {
    let nats = NatsServer::start().await;
    let gw = OrigGateway::start(&nats.url(), &[]).await;
    let dir = TestDir::new("ws-main");
    let tasks = dir.join("tasks");
    std::fs::create_dir_all(&tasks).unwrap();
    let sync_dir = dir.join("sync");
    let worker_id = unique("ws-worker");
    // A long fallback interval: a sync within seconds can only come from the watch.
    let w = Worker::start(
        &nats.url(),
        "ws",
        &worker_id,
        &tasks,
        &[
            "--concurrency",
            "2",
            "--wheel-sync",
            "--wheel-sync-dir",
            sync_dir.to_str().unwrap(),
            "--wheel-sync-interval-sec",
            "120",
        ],
        &[],
    )
    .await;
    let js = jetstream::new(nats_connect(&nats.url()).await);
    let idle = wait_sync(&js, &worker_id, Duration::from_secs(10), "ok", |ws| {
        ws["last_result"] == "ok"
    })
    .await;
    assert_eq!(idle["selected_count"], 0, "{idle}");
    assert_eq!(idle["enabled"], true, "{idle}");

    // Without the wheel the flow's callable does not exist.
    let out = dir.join("out0");
    let before = run_to_end(&gw, &flow("wsync_pkg:slow", 0.0, &out), "ws").await;
    assert_eq!(before["status"], "FAILED", "{before}");

    // v1: synced within seconds of the upload, then the flow runs on it.
    let v1 = make_task_wheel(
        dir.path(),
        "wsync-pkg",
        "1.0",
        "wsync_pkg",
        "py3-none-any",
        &versioned_src("1"),
    )
    .await;
    upload(&gw, &v1, "ws").await;
    let t0 = Instant::now();
    let ws = wait_sync(&js, &worker_id, Duration::from_secs(8), "v1", |ws| {
        selected(ws) == ["wsync_pkg-1.0-py3-none-any.whl"]
    })
    .await;
    let latency = t0.elapsed();
    eprintln!("upload → synced: {:.2} s", latency.as_secs_f64());
    assert!(
        latency < Duration::from_secs(4),
        "sync took {latency:?} (the watch should start it at once)"
    );
    assert_eq!(ws["last_result"], "ok", "{ws}");
    assert_eq!(
        ws["updated_wheels"],
        serde_json::json!(["wsync_pkg-1.0-py3-none-any.whl"])
    );
    assert_eq!(ws["removed_count"], 0, "{ws}");
    let installed = &ws["installed_wheels"][0];
    assert_eq!(installed["package_name"], "wsync-pkg", "{ws}");
    assert_eq!(installed["package_version"], "1.0", "{ws}");
    assert!(
        installed["nuid"].as_str().is_some_and(|n| !n.is_empty()),
        "{ws}"
    );
    assert!(ws["last_synced_at"].as_f64().is_some(), "{ws}");
    let set1 = current_set(&sync_dir).expect("a current set");
    assert!(
        set1.join("wsync_pkg/__init__.py").is_file(),
        "{}",
        set1.display()
    );

    let out = dir.join("out1");
    let done = run_to_end(&gw, &flow("wsync_pkg:slow", 0.0, &out), "ws").await;
    assert_eq!(done["status"], "COMPLETED", "{done}\n{}", w.log_text());
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "1");

    // v1 → v2 while two runs are in flight: both finish on v1, the next ones run v2.
    let slow: Vec<PathBuf> = (0..2).map(|i| dir.join(format!("slow{i}"))).collect();
    let mut ids = Vec::new();
    for out in &slow {
        ids.push(
            submit_flow_yaml(
                &gw.base_url(),
                &flow("wsync_pkg:slow", 5.0, out),
                "main",
                "ws",
            )
            .await,
        );
    }
    for id in &ids {
        wait_for_run_status(
            &gw.base_url(),
            id,
            &["RUNNING"],
            Duration::from_secs(20),
            None,
        )
        .await;
    }
    let v2 = make_task_wheel(
        dir.path(),
        "wsync-pkg",
        "2.0",
        "wsync_pkg",
        "py3-none-any",
        &versioned_src("2"),
    )
    .await;
    upload(&gw, &v2, "").await;
    let ws = wait_sync(&js, &worker_id, Duration::from_secs(8), "v2", |ws| {
        selected(ws) == ["wsync_pkg-2.0-py3-none-any.whl"]
    })
    .await;
    assert_eq!(
        ws["removed_wheels"],
        serde_json::json!(["wsync_pkg-1.0-py3-none-any.whl"])
    );
    let set2 = current_set(&sync_dir).unwrap();
    assert_ne!(set1, set2);
    assert!(
        set1.is_dir(),
        "the set of the running runs is kept while they run"
    );
    let next: Vec<PathBuf> = (0..2).map(|i| dir.join(format!("next{i}"))).collect();
    let mut next_ids = Vec::new();
    for out in &next {
        next_ids.push(
            submit_flow_yaml(
                &gw.base_url(),
                &flow("wsync_pkg:slow", 0.0, out),
                "main",
                "ws",
            )
            .await,
        );
    }
    for id in ids.iter().chain(&next_ids) {
        let done = wait_for_run_status(
            &gw.base_url(),
            id,
            &["COMPLETED", "FAILED", "CANCELLED"],
            Duration::from_secs(60),
            None,
        )
        .await;
        assert_eq!(done["status"], "COMPLETED", "{done}\n{}", w.log_text());
    }
    for out in &slow {
        assert_eq!(
            std::fs::read_to_string(out).unwrap(),
            "1",
            "a run in flight kept v1"
        );
    }
    for out in &next {
        assert_eq!(
            std::fs::read_to_string(out).unwrap(),
            "2",
            "runs after the sync use v2"
        );
    }
    // Once no runner uses it, the old set is deleted.
    assert!(
        wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
            let gone = !set1.exists();
            async move { gone }
        })
        .await,
        "{} was not deleted",
        set1.display()
    );

    // A broken v3 (not a zip): the install fails, v2 stays active, the record says why.
    let v3 = dir.join("wsync_pkg-3.0-py3-none-any.whl");
    std::fs::write(&v3, b"this is not a zip file").unwrap();
    upload(&gw, &v3, "").await;
    let ws = wait_sync(&js, &worker_id, Duration::from_secs(15), "error", |ws| {
        ws["last_result"] == "error"
    })
    .await;
    let err = ws["last_error"].as_str().unwrap_or_default();
    assert!(
        err.contains("wheel install failed") && err.contains("wsync_pkg-3.0-py3-none-any.whl"),
        "{err}"
    );
    assert!(err.len() <= 2000, "{}", err.len());
    assert_eq!(selected(&ws), ["wsync_pkg-2.0-py3-none-any.whl"], "{ws}");
    assert_eq!(current_set(&sync_dir).unwrap(), set2);
    let out = dir.join("out3");
    let done = run_to_end(&gw, &flow("wsync_pkg:slow", 0.0, &out), "ws").await;
    assert_eq!(done["status"], "COMPLETED", "{done}");
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        "2",
        "v2 stays active"
    );

    // Deleting v3 brings the worker back to ok on v2; deleting every version removes the package.
    for name in [
        "wsync_pkg-3.0-py3-none-any.whl",
        "wsync_pkg-2.0-py3-none-any.whl",
        "wsync_pkg-1.0-py3-none-any.whl",
    ] {
        orig_client(&gw.base_url(), &["wheel-delete", "--name", name], &[])
            .await
            .assert_success();
    }
    let ws = wait_sync(&js, &worker_id, Duration::from_secs(8), "empty", |ws| {
        ws["last_result"] == "ok" && ws["selected_count"] == 0
    })
    .await;
    assert_eq!(ws["installed_wheels"], serde_json::json!([]), "{ws}");
    assert!(current_set(&sync_dir).is_none());
    let out = dir.join("out4");
    let gone = run_to_end(&gw, &flow("wsync_pkg:slow", 0.0, &out), "ws").await;
    assert_eq!(
        gone["status"], "FAILED",
        "a deleted wheel is gone from the runners: {gone}"
    );
    assert!(!out.exists());
}

#[tokio::test]
async fn selection_by_tag_and_interpreter_and_the_record_fields() {
    let nats = NatsServer::start().await;
    let dir = TestDir::new("ws-select");
    let tasks = dir.join("tasks");
    std::fs::create_dir_all(&tasks).unwrap();
    let sync_dir = dir.join("sync");
    let client = nats_connect(&nats.url()).await;
    let js = jetstream::new(client);
    let worker_id = unique("ws-sel");
    let _w = Worker::start(
        &nats.url(),
        "sel",
        &worker_id,
        &tasks,
        &[
            "--wheel-sync",
            "--wheel-sync-dir",
            sync_dir.to_str().unwrap(),
        ],
        &[],
    )
    .await;
    wait_sync(&js, &worker_id, Duration::from_secs(10), "ok", |ws| {
        ws["last_result"] == "ok"
    })
    .await;
    let store = js.get_object_store("pyoco_wheels").await.unwrap();
    let put = |path: PathBuf, tags: &'static str| {
        let store = store.clone();
        async move {
            let name = path.file_name().unwrap().to_str().unwrap().to_string();
            let mut headers = async_nats::HeaderMap::new();
            if !tags.is_empty() {
                headers.insert("x-pyoco-wheel-tags", tags);
            }
            let meta = async_nats::jetstream::object_store::ObjectMetadata {
                name: name.clone(),
                headers: Some(headers),
                ..Default::default()
            };
            let mut file = tokio::fs::File::open(&path).await.unwrap();
            store.put(meta, &mut file).await.unwrap();
            name
        }
    };
    let other = make_task_wheel(
        dir.path(),
        "other-only",
        "1.0",
        "other_only",
        "py3-none-any",
        "X = 1\n",
    )
    .await;
    let mine = make_task_wheel(
        dir.path(),
        "sel-mine",
        "1.0",
        "sel_mine",
        "py3-none-any",
        "X = 1\n",
    )
    .await;
    let win = make_task_wheel(
        dir.path(),
        "win-only",
        "1.0",
        "win_only",
        "cp27-cp27m-win32",
        "X = 1\n",
    )
    .await;
    put(other, "gpu,other").await;
    let mine = put(mine, "cpu, sel").await;
    let win = put(win, "").await;
    let ws = wait_sync(&js, &worker_id, Duration::from_secs(8), "sel-mine", |ws| {
        selected(ws) == [mine.clone()] && ws["skipped_incompatible_count"] == 1
    })
    .await;
    assert_eq!(
        ws["skipped_incompatible"],
        serde_json::json!([{"wheel_name": win, "package_name": "win-only", "package_version": "1.0", "reason": "unsupported_wheel_tags"}])
    );
    for key in [
        "enabled",
        "last_result",
        "last_attempt_at",
        "last_success_at",
        "last_synced_at",
        "last_error",
        "selected_count",
        "updated_count",
        "removed_count",
        "skipped_incompatible_count",
        "selected_wheels",
        "updated_wheels",
        "removed_wheels",
        "skipped_incompatible",
        "installed_wheels",
    ] {
        assert!(ws.get(key).is_some(), "{key} missing: {ws}");
    }
    assert_eq!(ws["last_error"], Value::Null);
    let set = current_set(&sync_dir).unwrap();
    assert!(set.join("sel_mine/__init__.py").is_file());
    assert!(!set.join("other_only").exists() && !set.join("win_only").exists());
    // The original's manifest sits beside the sets.
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(sync_dir.join(".installed.json")).unwrap()).unwrap();
    assert_eq!(manifest[&mine]["tags"], serde_json::json!(["cpu", "sel"]));
    assert_eq!(manifest[&mine]["package_name"], "sel-mine");
    assert_eq!(manifest[&mine]["sha256_hex"].as_str().unwrap().len(), 64);

    // An object whose bytes do not match its digest (written the object-store way by hand):
    // refused, the current set stays, nothing half-written is left.
    let bad = make_task_wheel(
        dir.path(),
        "sel-bad",
        "1.0",
        "sel_bad",
        "py3-none-any",
        "X = 1\n",
    )
    .await;
    let bytes = std::fs::read(&bad).unwrap();
    let nuid = "BADDIGEST0000000000001";
    js.publish(format!("$O.pyoco_wheels.C.{nuid}"), bytes.clone().into())
        .await
        .unwrap()
        .await
        .unwrap();
    let name = "sel_bad-1.0-py3-none-any.whl";
    let meta = serde_json::json!({
        "name": name, "bucket": "pyoco_wheels", "nuid": nuid, "size": bytes.len(), "chunks": 1,
        "mtime": "2026-01-01T00:00:00Z", "headers": {"x-pyoco-wheel-tags": "sel"},
        // the SHA-256 of other bytes
        "digest": "SHA-256=n4bQgYhMfWWaL-qgxVrQFaO_TxsrC4Is0V1sFbDwCgg=",
    });
    let subject = format!(
        "$O.pyoco_wheels.M.{}",
        base64::engine::general_purpose::URL_SAFE.encode(name)
    );
    js.publish(subject, serde_json::to_vec(&meta).unwrap().into())
        .await
        .unwrap()
        .await
        .unwrap();
    let ws = wait_sync(
        &js,
        &worker_id,
        Duration::from_secs(8),
        "the digest error",
        |ws| ws["last_result"] == "error",
    )
    .await;
    let err = ws["last_error"].as_str().unwrap();
    assert!(
        err.contains(name) && err.contains("SHA-256") && err.contains("not installed"),
        "{err}"
    );
    assert_eq!(
        current_set(&sync_dir).unwrap(),
        set,
        "the previous set stays current"
    );
    let sets: Vec<_> = std::fs::read_dir(sync_dir.join("sets")).unwrap().collect();
    assert_eq!(sets.len(), 1, "no partial set is left");
    assert!(!sync_dir.join("incoming").exists());

    // Sync off: the block says so.
    let off_id = unique("ws-off");
    let _off = Worker::start(&nats.url(), "sel", &off_id, &tasks, &[], &[]).await;
    let ws = wait_sync(&js, &off_id, Duration::from_secs(10), "disabled", |ws| {
        ws["last_result"] == "disabled"
    })
    .await;
    assert_eq!(ws["enabled"], false);
}

#[tokio::test]
async fn the_original_worker_installs_a_wheel_put_into_the_store_like_ours_reads_it() {
    let nats = NatsServer::start().await;
    let gw = OrigGateway::start(&nats.url(), &[]).await;
    let dir = TestDir::new("ws-orig");
    let wheel = make_task_wheel(
        dir.path(),
        "orig-sync-pkg",
        "1.0",
        "orig_sync_pkg",
        "py3-none-any",
        "X = 1\n",
    )
    .await;
    upload(&gw, &wheel, "ows").await;
    let target = dir.join("pip-target");
    let sync_dir = dir.join("orig-sync");
    let worker_id = unique("ws-orig");
    // PIP_TARGET: the original pip-installs into its own interpreter; keep the shared venv clean.
    let mut w = OrigWorker::spawn(
        &nats.url(),
        "ows",
        &worker_id,
        &[("PIP_TARGET", target.to_str().unwrap())],
        None,
        &[
            "--wheel-sync",
            "--wheel-sync-dir",
            sync_dir.to_str().unwrap(),
            "--wheel-sync-interval-sec",
            "0.5",
        ],
    );
    w.wait_registered(Duration::from_secs(30)).await;
    let js = jetstream::new(nats_connect(&nats.url()).await);
    let ws = wait_sync(
        &js,
        &worker_id,
        Duration::from_secs(30),
        "installed",
        |ws| ws["last_result"] == "ok" && ws["selected_count"] == 1,
    )
    .await;
    assert_eq!(
        selected(&ws),
        ["orig_sync_pkg-1.0-py3-none-any.whl"],
        "{ws}"
    );
    assert!(
        target.join("orig_sync_pkg/__init__.py").is_file(),
        "{}",
        w.log_text()
    );

    // And ours reads the same object the same way.
    let tasks = dir.join("tasks");
    std::fs::create_dir_all(&tasks).unwrap();
    let ours = unique("ws-ours");
    let _o = Worker::start(
        &nats.url(),
        "ows",
        &ours,
        &tasks,
        &[
            "--wheel-sync",
            "--wheel-sync-dir",
            dir.join("our-sync").to_str().unwrap(),
        ],
        &[],
    )
    .await;
    let mine = wait_sync(&js, &ours, Duration::from_secs(10), "installed", |ws| {
        ws["last_result"] == "ok" && ws["selected_count"] == 1
    })
    .await;
    assert_eq!(mine["selected_wheels"], ws["selected_wheels"]);
    assert_eq!(
        mine["installed_wheels"][0]["nuid"],
        ws["installed_wheels"][0]["nuid"]
    );
}

/// The whole path on our side: `pyococtl wheel upload` to **our** gateway, our worker syncs it
/// (pushed, not polled) and a flow whose callable lives only in that wheel runs COMPLETED; the
/// original's worker with `--wheel-sync` installs the same upload (our gateway writes the object
/// store as the original does).
#[tokio::test]
async fn a_wheel_uploaded_through_our_gateway_runs_on_our_worker_and_the_originals_installs_it() {
    let nats = NatsServer::start().await;
    let gw = Gateway::start(&nats.url(), &[]).await;
    gw.wait_nats_connected().await;
    let dir = TestDir::new("ws-ours-gw");
    let tasks = dir.join("tasks");
    std::fs::create_dir_all(&tasks).unwrap();
    let worker_id = unique("ws-gw");
    let _w = Worker::start(
        &nats.url(),
        "wgw",
        &worker_id,
        &tasks,
        &[
            "--wheel-sync",
            "--wheel-sync-dir",
            dir.join("sync").to_str().unwrap(),
            "--wheel-sync-interval-sec",
            "120",
        ],
        &[],
    )
    .await;
    let wheel = make_task_wheel(
        dir.path(),
        "gw-tasks",
        "1.0",
        "gw_tasks",
        "py3-none-any",
        &versioned_src("1.0"),
    )
    .await;
    let uploaded = Instant::now();
    let out = run_workspace_bin(
        "pyococtl",
        &[
            "--server",
            &gw.base_url(),
            "wheel",
            "upload",
            "--preflight",
            "off",
            "--wheel-file",
            wheel.to_str().unwrap(),
            "--tags",
            "wgw",
        ],
        &[],
    )
    .await;
    out.assert_success();
    let js = jetstream::new(nats_connect(&nats.url()).await);
    wait_sync(
        &js,
        &worker_id,
        Duration::from_secs(10),
        "the upload",
        |ws| ws["last_result"] == "ok" && selected(ws) == ["gw_tasks-1.0-py3-none-any.whl"],
    )
    .await;
    let synced_in = uploaded.elapsed();
    assert!(
        synced_in < Duration::from_secs(5),
        "synced in {synced_in:?} (the fallback interval is 120 s)"
    );
    let marker = dir.join("ran");
    let id = submit_flow_yaml(
        &gw.base_url(),
        &flow("gw_tasks:slow", 0.0, &marker),
        "main",
        "wgw",
    )
    .await;
    let done = wait_for_run_status(
        &gw.base_url(),
        &id,
        &["COMPLETED", "FAILED"],
        Duration::from_secs(60),
        None,
    )
    .await;
    assert_eq!(done["status"], "COMPLETED", "{done}");
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "1.0");

    // The original's worker installs the wheel our gateway stored.
    let target = dir.join("pip-target");
    let orig_id = unique("ws-orig-gw");
    let mut ow = OrigWorker::spawn(
        &nats.url(),
        "wgw",
        &orig_id,
        &[("PIP_TARGET", target.to_str().unwrap())],
        None,
        &[
            "--wheel-sync",
            "--wheel-sync-dir",
            dir.join("orig-sync").to_str().unwrap(),
            "--wheel-sync-interval-sec",
            "0.5",
        ],
    );
    ow.wait_registered(Duration::from_secs(30)).await;
    wait_sync(&js, &orig_id, Duration::from_secs(30), "installed", |ws| {
        ws["last_result"] == "ok" && ws["selected_count"] == 1
    })
    .await;
    assert!(
        target.join("gw_tasks/__init__.py").is_file(),
        "{}",
        ow.log_text()
    );

    // `--output plugins`: each worker's installed wheels, the same bytes as pyoco-client's.
    let ours = run_workspace_bin(
        "pyococtl",
        &[
            "--server",
            &gw.base_url(),
            "--output",
            "plugins",
            "worker",
            "list",
        ],
        &[],
    )
    .await;
    ours.assert_success();
    let theirs = orig_client(&gw.base_url(), &["workers", "--output", "plugins"], &[]).await;
    theirs.assert_success();
    assert_eq!(ours.stdout_text(), theirs.stdout_text());
    assert!(
        ours.stdout_text().contains("gw-tasks")
            && ours.stdout_text().contains("gw_tasks-1.0-py3-none-any.whl"),
        "{}",
        ours.stdout_text()
    );
    let misplaced = run_workspace_bin(
        "pyococtl",
        &["--server", &gw.base_url(), "--output", "plugins", "health"],
        &[],
    )
    .await;
    assert_eq!(misplaced.code(), Some(2), "{}", misplaced.stderr_text());
    assert!(misplaced.stderr_text().contains("only for `worker list`"));
}
