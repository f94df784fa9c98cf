//! The gateway's HTTP API against a real nats-server: endpoints, shapes, status codes, detail
//! strings, and the behaviour that is better than the original's (contract §1, §12).

use std::time::{Duration, Instant};

use futures::StreamExt;
use pyoco_tests::*;
use serde_json::{json, Value};

async fn start() -> (NatsServer, Gateway) {
    let nats = NatsServer::start().await;
    let gw = Gateway::start(&nats.url(), &[]).await;
    wait_connected(&gw).await;
    (nats, gw)
}

async fn wait_connected(gw: &Gateway) {
    gw.wait_nats_connected().await;
}

async fn post_json(url: &str, body: Value) -> (u16, Value) {
    let r = http().post(url).json(&body).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

async fn get_json(url: &str) -> (u16, Value) {
    let r = http().get(url).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

async fn submit(gw: &Gateway, flow: &str, tag: &str) -> String {
    let (code, body) = post_json(
        &gw.url("/runs"),
        json!({"flow_name": flow, "params": {"x": 1}, "tag": tag}),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["status"], "PENDING");
    body["run_id"].as_str().unwrap().to_string()
}

async fn submit_yaml(gw: &Gateway, yaml: &str, flow: &str, tag: Option<&str>) -> reqwest::Response {
    let mut form = reqwest::multipart::Form::new()
        .part(
            "workflow",
            reqwest::multipart::Part::bytes(yaml.as_bytes().to_vec())
                .file_name("flow.yaml")
                .mime_str("application/x-yaml")
                .unwrap(),
        )
        .text("flow_name", flow.to_string());
    if let Some(t) = tag {
        form = form.text("tag", t.to_string());
    }
    http()
        .post(gw.url("/runs/yaml"))
        .multipart(form)
        .send()
        .await
        .unwrap()
}

/// Writes a run snapshot straight into KV (as a worker would) and returns its revision.
async fn kv_put_run(nats: &NatsServer, run_id: &str, snap: &Value) -> u64 {
    let js = nats.jetstream().await;
    let kv = js.get_key_value("pyoco_runs").await.unwrap();
    kv.put(run_id, serde_json::to_vec(snap).unwrap().into())
        .await
        .unwrap()
}

async fn kv_get_run(nats: &NatsServer, run_id: &str) -> Value {
    let js = nats.jetstream().await;
    let kv = js.get_key_value("pyoco_runs").await.unwrap();
    serde_json::from_slice(&kv.get(run_id).await.unwrap().expect("run in KV")).unwrap()
}

#[tokio::test]
async fn health_and_empty_buckets_give_empty_answers() {
    let (_nats, gw) = start().await;
    let (code, body) = get_json(&gw.url("/health")).await;
    assert_eq!((code, body["status"].clone()), (200, json!("ok")));
    assert_eq!(get_json(&gw.url("/runs")).await, (200, json!([])));
    assert_eq!(
        get_json(&gw.url("/runs?updated_after=0")).await,
        (200, json!({"items": [], "next_cursor": null}))
    );
    assert_eq!(get_json(&gw.url("/workers")).await, (200, json!([])));
    let r = http().get(gw.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let text = r.text().await.unwrap();
    assert!(text.starts_with("# HELP pyoco_runs_total Count of runs by status (best-effort from KV).\n# TYPE pyoco_runs_total gauge\n# HELP pyoco_runs_today_total"), "{text}");
    assert!(text.contains("pyoco_workers_alive_total 0\n"), "{text}");
    assert!(text.contains("pyoco_dlq_messages_total 0\n"), "{text}");
    let (code, spec) = get_json(&gw.url("/openapi.json")).await;
    assert_eq!(code, 200);
    assert!(
        spec["paths"]["/runs"].is_object(),
        "openapi.json documents /runs"
    );
}

#[tokio::test]
async fn submit_stores_the_contract_documents() {
    let (nats, gw) = start().await;
    let run_id = submit(&gw, "main", "hello").await;
    // The stored snapshot: the original's keys in the original's order.
    let snap = kv_get_run(&nats, &run_id).await;
    let keys: Vec<&str> = snap
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        [
            "run_id",
            "flow_name",
            "tag",
            "tags",
            "tenant_id",
            "api_key_id",
            "status",
            "params",
            "tasks",
            "task_records",
            "start_time",
            "end_time",
            "heartbeat_at",
            "updated_at",
            "error"
        ]
    );
    assert_eq!(snap["tags"], json!(["hello"]));
    assert_eq!(snap["params"], json!({"x": 1}));
    // The job: on pyoco.work.hello, deduplicated by Nats-Msg-Id = run_id.
    let js = nats.jetstream().await;
    let stream = js.get_stream("PYOCO_WORK").await.unwrap();
    let msg = stream
        .get_last_raw_message_by_subject("pyoco.work.hello")
        .await
        .unwrap();
    let job: Value = serde_json::from_slice(&msg.payload).unwrap();
    assert_eq!(job["run_id"], json!(run_id));
    assert_eq!(job["flow_name"], "main");
    assert_eq!(job["params"], json!({"x": 1}));
    assert!(job["submitted_at"].is_f64());
    let headers = msg.headers;
    assert_eq!(
        headers.get("Nats-Msg-Id").map(|v| v.as_str()),
        Some(run_id.as_str())
    );

    // GET /runs/{id}: snapshot without task_records unless asked for.
    let (code, got) = get_json(&gw.url(&format!("/runs/{run_id}"))).await;
    assert_eq!(code, 200);
    assert!(got.get("task_records").is_none());
    let (_, got) = get_json(&gw.url(&format!("/runs/{run_id}?include=records"))).await;
    assert_eq!(got["task_records"], json!({}));
    let (code, tasks) = get_json(&gw.url(&format!("/runs/{run_id}/tasks"))).await;
    assert_eq!(code, 200);
    assert_eq!(
        tasks,
        json!({"run_id": run_id, "flow_name": "main", "status": "PENDING", "tasks": {}, "task_records": {}, "task_records_truncated": false})
    );
    // Default tag and tags.
    let (_, body) = post_json(&gw.url("/runs"), json!({"flow_name": "f"})).await;
    let snap = kv_get_run(&nats, body["run_id"].as_str().unwrap()).await;
    assert_eq!(
        (snap["tag"].clone(), snap["tags"].clone()),
        (json!("default"), json!(["default"]))
    );
    let (_, body) = post_json(
        &gw.url("/runs"),
        json!({"flow_name": "f", "tag": "a", "tags": ["x", "y"]}),
    )
    .await;
    let snap = kv_get_run(&nats, body["run_id"].as_str().unwrap()).await;
    assert_eq!(
        (snap["tag"].clone(), snap["tags"].clone()),
        (json!("a"), json!(["x", "y"]))
    );
}

#[tokio::test]
async fn listing_filters_pages_and_shapes() {
    let (nats, gw) = start().await;
    let mut ids = vec![];
    for i in 0..7 {
        let tag = if i % 2 == 0 { "even" } else { "odd" };
        ids.push(submit(&gw, if i < 5 { "alpha" } else { "beta" }, tag).await);
    }
    let ok = wait_until(
        Duration::from_secs(5),
        Duration::from_millis(20),
        || async {
            get_json(&gw.url("/runs?limit=200"))
                .await
                .1
                .as_array()
                .map(|a| a.len())
                == Some(7)
        },
    )
    .await;
    assert!(ok, "all 7 runs listed");
    let (_, all) = get_json(&gw.url("/runs")).await;
    let listed: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["run_id"].as_str().unwrap())
        .collect();
    let mut expected = ids.clone();
    expected.reverse(); // newest first
    assert_eq!(listed, expected);
    // Summary keys only.
    let item = all[0].as_object().unwrap();
    let keys: Vec<&str> = item.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "run_id",
            "flow_name",
            "tag",
            "tags",
            "tenant_id",
            "api_key_id",
            "status",
            "updated_at",
            "heartbeat_at",
            "error"
        ]
    );
    let (_, full) = get_json(&gw.url("/runs?include=full&limit=1")).await;
    assert!(full[0].get("params").is_some() && full[0].get("task_records").is_some());
    // Filters.
    let (_, odd) = get_json(&gw.url("/runs?tag=odd")).await;
    assert_eq!(odd.as_array().unwrap().len(), 3);
    let (_, beta) = get_json(&gw.url("/runs?flow=beta")).await;
    assert_eq!(beta.as_array().unwrap().len(), 2);
    assert_eq!(get_json(&gw.url("/runs?status=RUNNING")).await.1, json!([]));
    assert_eq!(
        get_json(&gw.url("/runs?status=pending")).await.1,
        json!([]),
        "status filter is case-sensitive as in the original"
    );
    assert_eq!(
        get_json(&gw.url("/runs?tag="))
            .await
            .1
            .as_array()
            .unwrap()
            .len(),
        7,
        "empty filter = no filter"
    );
    // vNext paging with the cursor.
    let mut seen = vec![];
    let mut url = gw.url("/runs?cursor=&limit=3");
    loop {
        let (code, page) = get_json(&url).await;
        assert_eq!(code, 200);
        for it in page["items"].as_array().unwrap() {
            seen.push(it["run_id"].as_str().unwrap().to_string());
        }
        match page["next_cursor"].as_str() {
            Some(c) => {
                let decoded = String::from_utf8(base64_decode(c)).unwrap();
                assert!(
                    decoded.starts_with("{\"u\":") && decoded.contains(",\"r\":\""),
                    "cursor format: {decoded}"
                );
                url = gw.url(&format!("/runs?cursor={c}&limit=3"));
            }
            None => break,
        }
    }
    assert_eq!(seen, expected);
    // updated_after is strict.
    let (_, all_full) = get_json(&gw.url("/runs?include=full&limit=200")).await;
    let third = all_full[2]["updated_at"].as_f64().unwrap();
    let (_, newer) = get_json(&gw.url(&format!("/runs?updated_after={third}"))).await;
    assert_eq!(newer["items"].as_array().unwrap().len(), 2);
    // workflow_yaml_sha256 switches to vNext and filters.
    let r = submit_yaml(&gw, example_flow_yaml(), "main", Some("even")).await;
    assert_eq!(r.status(), 200);
    let yaml_run = r.json::<Value>().await.unwrap()["run_id"]
        .as_str()
        .unwrap()
        .to_string();
    let sha = kv_get_run(&nats, &yaml_run).await["workflow_yaml_sha256"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        wait_until(
            Duration::from_secs(5),
            Duration::from_millis(20),
            || async {
                get_json(&gw.url(&format!("/runs?workflow_yaml_sha256={sha}")))
                    .await
                    .1["items"]
                    .as_array()
                    .map(|a| a.len())
                    == Some(1)
            }
        )
        .await
    );
    // Bounds and bad cursors.
    for (q, code) in [
        ("limit=0", 422),
        ("limit=201", 422),
        ("limit=200", 200),
        ("limit=x", 422),
        ("updated_after=x", 422),
    ] {
        assert_eq!(
            get_json(&gw.url(&format!("/runs?{q}"))).await.0,
            code,
            "{q}"
        );
    }
    assert_eq!(
        get_json(&gw.url("/runs?cursor=%%%")).await,
        (422, json!({"detail": "invalid list query"}))
    );
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .unwrap()
}

#[tokio::test]
async fn errors_use_the_original_details() {
    let (_nats, gw) = start().await;
    assert_eq!(
        get_json(&gw.url("/runs/6b4a3f1e-0000-4000-8000-000000000000")).await,
        (404, json!({"detail": "run not found"}))
    );
    // An id that cannot be a KV key: 404, not the original's 503.
    assert_eq!(
        get_json(&gw.url("/runs/a%20b")).await,
        (404, json!({"detail": "run not found"}))
    );
    assert_eq!(
        get_json(&gw.url("/runs/a*b/tasks")).await,
        (404, json!({"detail": "run not found"}))
    );
    let (code, _) = post_json(&gw.url("/runs/.x/cancel"), json!({})).await;
    assert_eq!(code, 404);
    assert_eq!(
        get_json(&gw.url("/workers?scope=bad")).await,
        (422, json!({"detail": "invalid workers request"}))
    );
    assert_eq!(
        get_json(&gw.url("/workers?state=sleeping")).await,
        (422, json!({"detail": "invalid workers request"}))
    );
    let r = http()
        .patch(gw.url("/workers/nobody"))
        .json(&json!({"hidden": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        (r.status().as_u16(), r.json::<Value>().await.unwrap()),
        (404, json!({"detail": "worker not found"}))
    );
    let (code, body) = post_json(&gw.url("/runs"), json!({})).await;
    assert_eq!(
        (code, body),
        (
            422,
            json!({"detail": [{"type": "missing", "loc": ["body", "flow_name"], "msg": "Field required", "input": {}}]})
        )
    );
    let (code, body) = post_json(
        &gw.url("/runs"),
        json!({"flow_name": "", "tag": "a.b", "params": [], "tags": "x"}),
    )
    .await;
    assert_eq!(code, 422);
    let types: Vec<&str> = body["detail"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "string_too_short",
            "dict_type",
            "string_pattern_mismatch",
            "list_type"
        ]
    );
    // flow.yaml: size limit, policy with its reason, missing fields, bad tag.
    let big = format!("version: 1\n# {}\n", "x".repeat(300_000));
    let r = submit_yaml(&gw, &big, "main", None).await;
    assert_eq!(
        (r.status().as_u16(), r.json::<Value>().await.unwrap()),
        (413, json!({"detail": "workflow too large"}))
    );
    let r = submit_yaml(&gw, "version: 1\nflows: {}\n", "main", None).await;
    assert_eq!(r.status(), 422);
    let detail = r.json::<Value>().await.unwrap()["detail"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        detail.starts_with("invalid workflow yaml: unsupported_key_flows"),
        "{detail}"
    );
    let r = submit_yaml(&gw, example_flow_yaml(), "  ", None).await;
    assert_eq!(
        (r.status().as_u16(), r.json::<Value>().await.unwrap()),
        (422, json!({"detail": "missing flow_name"}))
    );
    let r = submit_yaml(&gw, example_flow_yaml(), "main", Some("a.b")).await;
    assert_eq!(
        (r.status().as_u16(), r.json::<Value>().await.unwrap()),
        (422, json!({"detail": "invalid tag"}))
    );
    let r = http()
        .post(gw.url("/runs/yaml"))
        .multipart(reqwest::multipart::Form::new().text("flow_name", "x"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        (r.status().as_u16(), r.json::<Value>().await.unwrap()),
        (
            422,
            json!({"detail": [{"type": "missing", "loc": ["body", "workflow"], "msg": "Field required", "input": null}]})
        )
    );
}

#[tokio::test]
async fn bad_input_never_gets_a_server_error() {
    let (_nats, gw) = start().await;
    let c = http();
    let bodies: Vec<(&str, Vec<u8>)> = vec![
        ("application/json", b"{bad".to_vec()),
        ("application/json", b"[]".to_vec()),
        ("application/json", b"null".to_vec()),
        ("application/json", vec![0xff, 0xfe, 0x00]),
        (
            "application/json",
            format!(
                "{{\"flow_name\":\"x\",\"params\":{{\"a\":\"{}\"}}}}",
                "y".repeat(2_000_000)
            )
            .into_bytes(),
        ),
        ("text/plain", b"flow_name=x".to_vec()),
        (
            "multipart/form-data; boundary=zzz",
            b"--zzz\r\nbroken".to_vec(),
        ),
        (
            "application/json",
            b"{\"flow_name\":\"x\",\"timeout_sec\":-1}".to_vec(),
        ),
        (
            "application/json",
            b"{\"flow_name\":\"x\",\"tags\":[1,2]}".to_vec(),
        ),
    ];
    for path in ["/runs", "/runs/yaml", "/runs/x/cancel"] {
        for (ct, body) in &bodies {
            // A fresh client each time: a refused oversized body closes its connection.
            let r = match http()
                .post(gw.url(path))
                .header("content-type", *ct)
                .body(body.clone())
                .send()
                .await
            {
                Ok(r) => r,
                // A body far above the limit may be refused and the connection closed before
                // the client finished sending it; the server must stay healthy (checked below).
                Err(e) if body.len() > 1_000_000 => {
                    eprintln!(
                        "POST {path} with {} bytes: connection closed ({e})",
                        body.len()
                    );
                    continue;
                }
                Err(e) => panic!("POST {path} ({ct}): {e}"),
            };
            let code = r.status().as_u16();
            assert!(
                (200..500).contains(&code),
                "POST {path} ({ct}, {} bytes) → {code}",
                body.len()
            );
            let _ = r.bytes().await;
        }
    }
    for q in [
        "limit=-1",
        "limit=99999999999999999999",
        "updated_after=nan",
        "updated_after=1e999",
        "cursor=eyJ1IjoieCJ9",
        "include=%FF",
        "status=%00",
        "since=x",
        "timeout_sec=0",
        "timeout_sec=601",
    ] {
        for path in ["/runs", "/workers", "/runs/x/watch"] {
            let r = c.get(gw.url(&format!("{path}?{q}"))).send().await.unwrap();
            let code = r.status().as_u16();
            assert!((200..500).contains(&code), "GET {path}?{q} → {code}");
        }
    }
    let r = c
        .patch(gw.url("/workers/w"))
        .header("content-type", "application/json")
        .body("{\"hidden\":\"maybe\"}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    // Still serving afterwards.
    assert_eq!(get_json(&gw.url("/health")).await.0, 200);
}

#[tokio::test]
async fn two_gateways_see_each_others_runs_within_a_second() {
    let nats = NatsServer::start().await;
    let a = Gateway::start(&nats.url(), &[]).await;
    let b = Gateway::start(&nats.url(), &[]).await;
    let run_id = submit(&a, "main", "shared").await;
    let started = Instant::now();
    let seen = wait_until(
        Duration::from_secs(1),
        Duration::from_millis(10),
        || async {
            get_json(&b.url("/runs?tag=shared"))
                .await
                .1
                .as_array()
                .map(|a| a.len())
                == Some(1)
        },
    )
    .await;
    assert!(seen, "gateway B lists gateway A's run within 1 s");
    eprintln!("seen by the other gateway after {:?}", started.elapsed());
    // A cancel through B is visible to A.
    let (code, body) = post_json(&b.url(&format!("/runs/{run_id}/cancel")), json!({})).await;
    assert_eq!((code, body["status"].clone()), (200, json!("CANCELLED")));
    assert!(
        wait_until(
            Duration::from_secs(1),
            Duration::from_millis(10),
            || async {
                get_json(&a.url("/runs?status=CANCELLED"))
                    .await
                    .1
                    .as_array()
                    .map(|a| a.len())
                    == Some(1)
            }
        )
        .await
    );
}

#[tokio::test]
async fn cancel_is_compare_and_set() {
    let (nats, gw) = start().await;
    // PENDING → CANCELLED at once, no worker needed; idempotent afterwards.
    let pending = submit(&gw, "main", "nobody").await;
    let (code, body) = post_json(&gw.url(&format!("/runs/{pending}/cancel")), json!({})).await;
    assert_eq!(code, 200);
    assert_eq!(body["status"], "CANCELLED");
    assert!(body["cancel_requested_at"].is_f64());
    let (_, again) = post_json(&gw.url(&format!("/runs/{pending}/cancel")), Value::Null).await;
    assert_eq!(again["cancel_requested_at"], body["cancel_requested_at"]);
    assert_eq!(kv_get_run(&nats, &pending).await["status"], "CANCELLED");

    // RUNNING with a worker rewriting the snapshot with CAS as fast as it can: the cancel lands.
    let running = submit(&gw, "main", "busy").await;
    let mut snap = kv_get_run(&nats, &running).await;
    snap["status"] = json!("RUNNING");
    snap["worker_id"] = json!("w1");
    kv_put_run(&nats, &running, &snap).await;
    let js = nats.jetstream().await;
    let kv = js.get_key_value("pyoco_runs").await.unwrap();
    let writer = {
        let kv = kv.clone();
        let id = running.clone();
        tokio::spawn(async move {
            let mut writes = 0;
            let until = Instant::now() + Duration::from_millis(800);
            while Instant::now() < until {
                let e = kv.entry(&id).await.unwrap().unwrap();
                let mut d: Value = serde_json::from_slice(&e.value).unwrap();
                d["heartbeat_at"] = json!(pyoco_core::time::now());
                if kv
                    .update(&id, serde_json::to_vec(&d).unwrap().into(), e.revision)
                    .await
                    .is_ok()
                {
                    writes += 1;
                }
            }
            writes
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (code, body) = post_json(&gw.url(&format!("/runs/{running}/cancel")), json!({})).await;
    assert_eq!((code, body["status"].clone()), (200, json!("CANCELLING")));
    let writes = writer.await.unwrap();
    assert!(
        writes > 10,
        "the concurrent writer kept writing ({writes} writes)"
    );
    let stored = kv_get_run(&nats, &running).await;
    assert_eq!(stored["status"], "CANCELLING");
    assert!(
        stored["cancel_requested_at"].is_f64(),
        "cancel survived concurrent writes: {stored}"
    );
    // Terminal runs are returned unchanged.
    let mut done = stored.clone();
    done["status"] = json!("COMPLETED");
    kv_put_run(&nats, &running, &done).await;
    let (_, body) = post_json(&gw.url(&format!("/runs/{running}/cancel")), json!({})).await;
    assert_eq!(body["status"], "COMPLETED");
}

#[tokio::test]
async fn idempotency_key_returns_the_first_run() {
    let (nats, gw) = start().await;
    let send = |key: &'static str| {
        let url = gw.url("/runs");
        async move {
            let r = http()
                .post(url)
                .header("Idempotency-Key", key)
                .json(&json!({"flow_name": "main", "tag": "idem"}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            r.json::<Value>().await.unwrap()["run_id"]
                .as_str()
                .unwrap()
                .to_string()
        }
    };
    let first = send("order-42").await;
    assert_eq!(send("order-42").await, first);
    assert_ne!(send("order-43").await, first);
    // Only two jobs were queued.
    let js = nats.jetstream().await;
    let mut stream = js.get_stream("PYOCO_WORK").await.unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages, 2);
    // Same for flow.yaml submits.
    let yaml = || {
        let url = gw.url("/runs/yaml");
        async move {
            let form = reqwest::multipart::Form::new()
                .part(
                    "workflow",
                    reqwest::multipart::Part::bytes(example_flow_yaml().as_bytes().to_vec())
                        .file_name("flow.yaml"),
                )
                .text("flow_name", "main");
            let r = http()
                .post(url)
                .header("Idempotency-Key", "yaml-1")
                .multipart(form)
                .send()
                .await
                .unwrap();
            r.json::<Value>().await.unwrap()["run_id"]
                .as_str()
                .unwrap()
                .to_string()
        }
    };
    assert_eq!(yaml().await, yaml().await);
}

/// A submit whose publish failed keeps its Idempotency-Key claim but stored nothing (the job is
/// queued before the snapshot). The client's retry with the same key resubmits *that* run id,
/// so work whose first job was stored with a lost ack is not minted a second run.
#[tokio::test]
async fn a_retry_after_a_failed_publish_resubmits_the_same_run() {
    use sha2::Digest as _;
    let (nats, gw) = start().await;
    // The state a failed publish leaves: the claim (tenant "_" without auth), no run, no job.
    let claimed = uuid::Uuid::new_v4().to_string();
    let js = nats.jetstream().await;
    let idem = js.get_key_value("pyoco_idempotency").await.unwrap();
    let key = format!("_.{}", hex::encode(sha2::Sha256::digest(b"order-77")));
    idem.create(&key, claimed.clone().into()).await.unwrap();
    let send = || {
        let url = gw.url("/runs");
        async move {
            let r = http()
                .post(url)
                .header("Idempotency-Key", "order-77")
                .json(&json!({"flow_name": "main", "tag": "revive"}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            r.json::<Value>().await.unwrap()
        }
    };
    let body = send().await;
    assert_eq!(body["run_id"], json!(claimed), "{body}");
    assert_eq!(body["status"], "PENDING");
    let (code, run) = get_run(&gw.base_url(), &claimed, None).await;
    assert_eq!(
        (code, run["flow_name"].clone()),
        (200, json!("main")),
        "{run}"
    );
    // Once stored, the same key answers with the run and queues nothing more.
    assert_eq!(send().await["run_id"], json!(claimed));
    let mut stream = js.get_stream("PYOCO_WORK").await.unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages, 1);
}

#[tokio::test]
async fn sse_pushes_changes_with_revision_ids_and_resumes() {
    let (nats, gw) = start().await;
    let run_id = submit(&gw, "main", "sse").await;
    let r = http()
        .get(gw.url(&format!("/runs/{run_id}/watch?timeout_sec=30")))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()["content-type"],
        "text/event-stream; charset=utf-8"
    );
    assert_eq!(r.headers()["cache-control"], "no-cache");
    let mut events = sse_events(r);
    let first = events.next().await.unwrap().unwrap();
    assert_eq!(first.event, "snapshot");
    let first_id: u64 = first.id.clone().expect("id: line").parse().unwrap();
    let data = first.json();
    assert_eq!(data["run_id"], json!(run_id));
    assert_eq!(data["snapshot"]["status"], "PENDING");
    assert!(data["ts"].is_f64());

    // Every change is pushed, with its revision as id: two changes written back to back arrive
    // as two events (a poller would see only the later one).
    let mut snap = kv_get_run(&nats, &run_id).await;
    snap["status"] = json!("RUNNING");
    let rev_a = kv_put_run(&nats, &run_id, &snap).await;
    snap["heartbeat_at"] = json!(pyoco_core::time::now());
    let rev = kv_put_run(&nats, &run_id, &snap).await;
    let ev_a = tokio::time::timeout(Duration::from_secs(5), events.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let ev_b = tokio::time::timeout(Duration::from_secs(5), events.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(ev_a.id.as_deref(), Some(rev_a.to_string().as_str()));
    assert_eq!(ev_b.id.as_deref(), Some(rev.to_string().as_str()));
    assert_eq!(ev_b.json()["snapshot"]["status"], "RUNNING");
    assert!(rev_a > first_id);

    // Resume: with Last-Event-ID = the current revision, nothing is repeated; the next change comes.
    drop(events);
    let r = http()
        .get(gw.url(&format!("/runs/{run_id}/watch?timeout_sec=30")))
        .header("Last-Event-ID", rev.to_string())
        .send()
        .await
        .unwrap();
    let mut events = sse_events(r);
    snap["status"] = json!("COMPLETED");
    snap["end_time"] = json!(pyoco_core::time::now());
    let rev2 = kv_put_run(&nats, &run_id, &snap).await;
    let ev = tokio::time::timeout(Duration::from_secs(2), events.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        ev.id.as_deref(),
        Some(rev2.to_string().as_str()),
        "the first event after resume is the new change"
    );
    assert_eq!(ev.json()["snapshot"]["status"], "COMPLETED");
    // The stream ends after the terminal snapshot.
    let end = tokio::time::timeout(Duration::from_secs(2), events.next())
        .await
        .expect("stream closes after terminal");
    assert!(end.is_none());

    // Resuming with an older id sends the current (terminal) snapshot and closes.
    let r = http()
        .get(gw.url(&format!("/runs/{run_id}/watch")))
        .header("Last-Event-ID", first_id.to_string())
        .send()
        .await
        .unwrap();
    let all: Vec<_> = sse_events(r).collect().await;
    assert_eq!(all.len(), 1);
    assert_eq!(
        all[0].as_ref().unwrap().json()["snapshot"]["status"],
        "COMPLETED"
    );
}

#[tokio::test]
async fn sse_heartbeats_and_timeout() {
    let (_nats, gw) = start().await;
    let run_id = submit(&gw, "main", "hb").await;
    let started = Instant::now();
    let r = http()
        .get(gw.url(&format!("/runs/{run_id}/watch?timeout_sec=7")))
        .send()
        .await
        .unwrap();
    let all: Vec<_> = sse_events(r).collect().await;
    let names: Vec<String> = all
        .iter()
        .map(|e| e.as_ref().unwrap().event.clone())
        .collect();
    assert_eq!(
        names,
        ["snapshot", "heartbeat"],
        "one heartbeat after 5 s idle, closed at timeout_sec"
    );
    let hb = all[1].as_ref().unwrap().json();
    assert_eq!(hb["run_id"], json!(run_id));
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(7) && took < Duration::from_secs(12),
        "closed at timeout_sec: {took:?}"
    );
}

#[tokio::test]
async fn workers_from_the_index_and_hide_with_cas() {
    let (nats, gw) = start().await;
    let js = nats.jetstream().await;
    let kv = js.get_key_value("pyoco_workers").await.unwrap();
    let now = pyoco_core::time::now();
    let rec = |id: &str, state: &str, seen: f64| {
        json!({"worker_id": id, "instance_id": "i", "state": state, "hidden": false,
        "tags": ["t"], "last_seen_at": seen, "last_heartbeat_at": seen, "heartbeat_at": seen, "current_run_id": null,
        "last_run_id": null, "last_run_status": null, "last_run_started_at": null, "last_run_finished_at": null,
        "stopped_at": null, "stop_reason": null, "updated_at": seen, "custom_field": 7})
    };
    kv.put(
        "w-live",
        serde_json::to_vec(&rec("w-live", "IDLE", now))
            .unwrap()
            .into(),
    )
    .await
    .unwrap();
    kv.put(
        "w-old",
        serde_json::to_vec(&rec("w-old", "RUNNING", now - 100.0))
            .unwrap()
            .into(),
    )
    .await
    .unwrap();
    kv.put(
        "w-stop",
        serde_json::to_vec(&rec("w-stop", "STOPPED_GRACEFUL", now - 1.0))
            .unwrap()
            .into(),
    )
    .await
    .unwrap();
    assert!(
        wait_until(
            Duration::from_secs(2),
            Duration::from_millis(20),
            || async {
                get_json(&gw.url("/workers?scope=all"))
                    .await
                    .1
                    .as_array()
                    .map(|a| a.len())
                    == Some(3)
            }
        )
        .await
    );
    let (_, active) = get_json(&gw.url("/workers")).await;
    assert_eq!(active.as_array().unwrap().len(), 1);
    assert_eq!(active[0]["worker_id"], "w-live");
    assert_eq!(
        active[0]["custom_field"], 7,
        "unknown stored fields are kept"
    );
    let (_, all) = get_json(&gw.url("/workers?scope=ALL")).await;
    let order: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["worker_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        order,
        ["w-live", "w-stop", "w-old"],
        "sorted by last_seen_at desc"
    );
    let (_, disc) = get_json(&gw.url("/workers?scope=all&state=disconnected")).await;
    assert_eq!(disc[0]["worker_id"], "w-old");
    assert_eq!(disc[0]["state"], "DISCONNECTED");
    let (_, lim) = get_json(&gw.url("/workers?scope=all&limit=1")).await;
    assert_eq!(lim.as_array().unwrap().len(), 1);
    // Hide: written with CAS, then hidden from the default listing.
    let r = http()
        .patch(gw.url("/workers/w-live"))
        .json(&json!({"hidden": "yes"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        (body["worker_id"].clone(), body["hidden"].clone()),
        (json!("w-live"), json!(true))
    );
    let stored: Value = serde_json::from_slice(&kv.get("w-live").await.unwrap().unwrap()).unwrap();
    assert_eq!(stored["hidden"], true);
    assert_eq!(stored["custom_field"], 7);
    assert!(
        wait_until(
            Duration::from_secs(2),
            Duration::from_millis(20),
            || async { get_json(&gw.url("/workers")).await.1 == json!([]) }
        )
        .await
    );
    let (_, with_hidden) = get_json(&gw.url("/workers?include_hidden=true")).await;
    assert_eq!(with_hidden.as_array().unwrap().len(), 1);

    // Run → worker enrichment.
    let run_id = submit(&gw, "main", "t").await;
    let mut snap = kv_get_run(&nats, &run_id).await;
    snap["worker_id"] = json!("w-live");
    kv_put_run(&nats, &run_id, &snap).await;
    let (_, got) = get_json(&gw.url(&format!("/runs/{run_id}"))).await;
    assert_eq!(got["worker_alive"], true);
    assert_eq!(got["worker_state"], "IDLE");
    assert_eq!(got["worker_hidden"], true);
    assert_eq!(got["worker_tags"], json!(["t"]));
    snap["worker_id"] = json!("w-gone");
    kv_put_run(&nats, &run_id, &snap).await;
    let (_, got) = get_json(&gw.url(&format!("/runs/{run_id}"))).await;
    assert_eq!(
        (
            got["worker_alive"].clone(),
            got["worker_state"].clone(),
            got["worker_heartbeat_at"].clone()
        ),
        (json!(false), json!("DISCONNECTED"), Value::Null)
    );
}

#[tokio::test]
async fn metrics_count_runs_and_requests() {
    let (nats, gw) = start().await;
    let a = submit(&gw, "main", "m1").await;
    submit(&gw, "main", "m1").await;
    submit(&gw, "main", "m2").await;
    let mut snap = kv_get_run(&nats, &a).await;
    let t = pyoco_core::time::now();
    snap["status"] = json!("RUNNING");
    snap["start_time"] = json!(t);
    kv_put_run(&nats, &a, &snap).await;
    snap["status"] = json!("COMPLETED");
    snap["end_time"] = json!(t + 0.2);
    kv_put_run(&nats, &a, &snap).await;
    let ok = wait_until(
        Duration::from_secs(3),
        Duration::from_millis(50),
        || async {
            let text = http()
                .get(gw.url("/metrics"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            text.contains("pyoco_runs_total{status=\"COMPLETED\"} 1\n")
                && text.contains("pyoco_runs_total{status=\"PENDING\"} 2\n")
                && text.contains("pyoco_runs_today_total{status=\"PENDING\"} 2\n")
                && text.contains("pyoco_queue_depth{tag=\"m1\"} 1\n")
                && text.contains("pyoco_runs_submitted_total{tag=\"m1\"} 2\n")
                && text.contains("pyoco_runs_finished_total{status=\"COMPLETED\",tag=\"m1\"} 1\n")
                && text.contains("pyoco_run_duration_seconds_count 1\n")
                && text.contains("pyoco_run_queue_wait_seconds_count 1\n")
                && text.contains(
                    "pyoco_http_requests_total{route=\"/runs\",method=\"POST\",status=\"200\"} 3\n",
                )
        },
    )
    .await;
    let text = http()
        .get(gw.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(ok, "metrics:\n{text}");
}

#[tokio::test]
async fn survives_nats_outage_and_recovers() {
    let (mut nats, gw) = start().await;
    let run_id = submit(&gw, "main", "outage").await;
    nats.stop().await;
    let ok = wait_until(
        Duration::from_secs(5),
        Duration::from_millis(50),
        || async {
            let (code, body) = post_json(&gw.url("/runs"), json!({"flow_name": "main"})).await;
            code == 503
                && body["detail"]
                    .as_str()
                    .unwrap_or("")
                    .starts_with("nats unavailable: ")
        },
    )
    .await;
    assert!(ok, "503 nats unavailable while NATS is down");
    let (code, health) = get_json(&gw.url("/health")).await;
    assert_eq!((code, health["nats"].clone()), (200, json!("disconnected")));
    assert_eq!(get_json(&gw.url(&format!("/runs/{run_id}"))).await.0, 503);
    nats.start_again().await;
    let ok = wait_until(
        Duration::from_secs(15),
        Duration::from_millis(100),
        || async {
            post_json(
                &gw.url("/runs"),
                json!({"flow_name": "main", "tag": "outage"}),
            )
            .await
            .0 == 200
        },
    )
    .await;
    assert!(
        ok,
        "submits work again after NATS is back; log:\n{}",
        gw.log_text()
    );
    assert_eq!(get_json(&gw.url("/health")).await.1["nats"], "connected");
    assert_eq!(get_json(&gw.url(&format!("/runs/{run_id}"))).await.0, 200);
    assert!(
        wait_until(
            Duration::from_secs(5),
            Duration::from_millis(50),
            || async {
                get_json(&gw.url("/runs?tag=outage"))
                    .await
                    .1
                    .as_array()
                    .map(|a| a.len())
                    == Some(2)
            }
        )
        .await,
        "the index follows changes after the restart"
    );
}

#[tokio::test]
async fn starts_without_nats_and_connects_later() {
    let mut nats = NatsServer::start().await;
    nats.stop().await;
    let gw = Gateway::start(&nats.url(), &[]).await; // healthy although NATS is not there
    assert_eq!(get_json(&gw.url("/health")).await.1["nats"], "disconnected");
    let (code, body) = get_json(&gw.url("/runs/x")).await;
    assert_eq!(code, 503, "{body}");
    assert!(body["detail"]
        .as_str()
        .unwrap()
        .starts_with("nats unavailable: "));
    nats.start_again().await;
    let ok = wait_until(
        Duration::from_secs(15),
        Duration::from_millis(100),
        || async { get_json(&gw.url("/runs")).await.0 == 200 },
    )
    .await;
    assert!(ok, "log:\n{}", gw.log_text());
}

#[tokio::test]
async fn retention_deletes_old_terminal_runs_only() {
    let nats = NatsServer::start().await;
    {
        // Seed the bucket the way the original would have left it, before the gateway starts.
        let gw = Gateway::start(&nats.url(), &[]).await;
        wait_connected(&gw).await;
    }
    let old = pyoco_core::time::now() - 3600.0;
    let snap = |id: &str, status: &str, t: f64| json!({"run_id": id, "flow_name": "f", "tag": "r", "tags": ["r"], "status": status, "params": {}, "updated_at": t, "heartbeat_at": t});
    kv_put_run(&nats, "old-done", &snap("old-done", "COMPLETED", old)).await;
    kv_put_run(&nats, "old-running", &snap("old-running", "RUNNING", old)).await;
    kv_put_run(
        &nats,
        "new-done",
        &snap("new-done", "FAILED", pyoco_core::time::now()),
    )
    .await;
    let gw = Gateway::start(&nats.url(), &[("PYOCO_RUN_RETENTION_SEC", "60")]).await;
    let ok = wait_until(
        Duration::from_secs(5),
        Duration::from_millis(50),
        || async { get_json(&gw.url("/runs/old-done")).await.0 == 404 },
    )
    .await;
    assert!(ok, "old terminal run deleted");
    assert_eq!(
        get_json(&gw.url("/runs/old-running")).await.0,
        200,
        "non-terminal runs are kept"
    );
    assert_eq!(
        get_json(&gw.url("/runs/new-done")).await.0,
        200,
        "recent runs are kept"
    );
}

#[tokio::test]
async fn reports_resource_drift_and_keeps_the_resource() {
    let nats = NatsServer::start().await;
    let js = nats.jetstream().await;
    // The original's workers bucket: 15 s TTL; ours defaults to a day.
    create_kv(
        &js,
        async_nats::jetstream::kv::Config {
            bucket: "pyoco_workers".into(),
            history: 1,
            max_age: Duration::from_secs(15),
            ..Default::default()
        },
    )
    .await;
    let gw = Gateway::start(&nats.url(), &[]).await;
    assert!(
        gw.daemon_log_contains("resource configuration drift", Duration::from_secs(5))
            .await,
        "log:\n{}",
        gw.log_text()
    );
    let log = gw.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("KV_pyoco_workers") && l.contains("max_age"))
        .expect("drift line names the bucket and field");
    assert!(
        line.contains("15s") && line.contains("86400s"),
        "both values: {line}"
    );
    let mut s = js.get_stream("KV_pyoco_workers").await.unwrap();
    assert_eq!(
        s.info().await.unwrap().config.max_age,
        Duration::from_secs(15),
        "kept as is"
    );
}

trait LogWait {
    async fn daemon_log_contains(&self, needle: &str, timeout: Duration) -> bool;
}

impl LogWait for Gateway {
    async fn daemon_log_contains(&self, needle: &str, timeout: Duration) -> bool {
        wait_until(timeout, Duration::from_millis(50), || async {
            self.log_text().contains(needle)
        })
        .await
    }
}

#[tokio::test]
async fn an_oversized_tag_is_a_422_and_never_reaches_nats() {
    let (_nats, gw) = start().await;
    // ~4 100 characters made the work subject exceed nats-server's control-line limit, which
    // closed the gateway's connection for every client (503s all around).
    let long = "t".repeat(4100);
    let t = std::time::Instant::now();
    let r = submit_yaml(&gw, example_flow_yaml(), "main", Some(&long)).await;
    assert_eq!(
        (r.status().as_u16(), r.json::<Value>().await.unwrap()),
        (422, json!({"detail": "invalid tag"}))
    );
    let (code, body) = post_json(&gw.url("/runs"), json!({"flow_name": "main", "tag": long})).await;
    assert_eq!(code, 422, "{body}");
    assert_eq!(body["detail"][0]["loc"], json!(["body", "tag"]));
    let (code, body) = post_json(
        &gw.url("/runs"),
        json!({"flow_name": "main", "tag": "t".repeat(pyoco_core::wire::MAX_TAG_LEN)}),
    )
    .await;
    assert_eq!(code, 200, "the longest allowed tag works: {body}");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    // The connection to NATS survived: other requests are served at once.
    let (code, health) = get_json(&gw.url("/health")).await;
    assert_eq!((code, health["nats"].as_str()), (200, Some("connected")));
    let (code, _) = post_json(&gw.url("/runs"), json!({"flow_name": "main"})).await;
    assert_eq!(code, 200);
    assert!(
        !gw.log_text().contains("maximum control line"),
        "{}",
        gw.log_text()
    );
}

#[tokio::test]
async fn invented_http_methods_do_not_mint_metric_labels() {
    let (_nats, gw) = start().await;
    for i in 0..20 {
        let m = reqwest::Method::from_bytes(format!("BOGUS{i}").as_bytes()).unwrap();
        let r = http().request(m, gw.url("/runs")).send().await.unwrap();
        assert!(r.status().is_client_error(), "{}", r.status());
    }
    let text = http()
        .get(gw.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!text.contains("BOGUS"), "{text}");
    assert!(text.contains("method=\"OTHER\""), "{text}");
}

#[tokio::test]
async fn watch_streams_are_bounded_with_a_clear_429() {
    let nats = NatsServer::start().await;
    let gw = Gateway::start(&nats.url(), &[("PYOCO_SSE_MAX_STREAMS_PER_TENANT", "2")]).await;
    wait_connected(&gw).await;
    let id = submit(&gw, "main", "nobody").await;
    let url = gw.url(&format!("/runs/{id}/watch?timeout_sec=60"));
    let first = http().get(&url).send().await.unwrap();
    let second = http().get(&url).send().await.unwrap();
    assert_eq!(
        (first.status().as_u16(), second.status().as_u16()),
        (200, 200)
    );
    let third = http().get(&url).send().await.unwrap();
    assert_eq!(third.status(), 429);
    let detail = third.json::<Value>().await.unwrap()["detail"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        detail.starts_with("too many open watch streams: 2 are open")
            && detail.contains("PYOCO_SSE_MAX_STREAMS_PER_TENANT"),
        "{detail}"
    );
    // A closed stream gives its slot back.
    drop(first);
    let ok = wait_until(
        Duration::from_secs(10),
        Duration::from_millis(100),
        || async { http().get(&url).send().await.unwrap().status() == 200 },
    )
    .await;
    assert!(ok, "a slot came back after a client went away");
    drop(second);
}

#[tokio::test]
async fn oversized_names_and_tag_lists_are_422s_naming_the_limit() {
    let (_nats, gw) = start().await;
    let long_name = "f".repeat(pyoco_core::wire::MAX_FLOW_NAME_LEN + 1);
    let (code, body) = post_json(&gw.url("/runs"), json!({"flow_name": long_name})).await;
    assert_eq!(code, 422, "{body}");
    assert_eq!(body["detail"][0]["type"], "string_too_long");
    assert_eq!(body["detail"][0]["loc"], json!(["body", "flow_name"]));
    assert_eq!(body["detail"][0]["ctx"]["max_length"], 256);
    let r = submit_yaml(&gw, example_flow_yaml(), &long_name, None).await;
    assert_eq!(
        (r.status().as_u16(), r.json::<Value>().await.unwrap()),
        (
            422,
            json!({"detail": "flow_name too long: at most 256 characters"})
        )
    );
    let many: Vec<String> = (0..40).map(|i| format!("t{i}")).collect();
    let (code, body) =
        post_json(&gw.url("/runs"), json!({"flow_name": "main", "tags": many})).await;
    assert_eq!(code, 422, "{body}");
    assert_eq!(body["detail"][0]["type"], "too_long");
    assert_eq!(body["detail"][0]["ctx"]["actual_length"], 40);
    let (code, body) = post_json(
        &gw.url("/runs"),
        json!({"flow_name": "main", "tags": ["ok", "x".repeat(200)]}),
    )
    .await;
    assert_eq!(code, 422, "{body}");
    assert_eq!(body["detail"][0]["loc"], json!(["body", "tags", 1]));
    // At the limits everything still works.
    let (code, body) = post_json(
        &gw.url("/runs"),
        json!({"flow_name": "f".repeat(256), "tags": (0..32).map(|i| format!("t{i}")).collect::<Vec<_>>()}),
    )
    .await;
    assert_eq!(code, 200, "{body}");
}
