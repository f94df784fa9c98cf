//! `api_key` mode: the auth matrix, tenant isolation, keys made by the original's
//! `pyoco-server-admin`, and revocation taking effect through the cached-key invalidation.

use std::time::{Duration, Instant};

use pyoco_tests::*;
use serde_json::{json, Value};

const PEPPER: &str = "pepper-for-tests";

async fn admin_create(nats: &NatsServer, tenant: &str) -> (String, String) {
    let out = orig_admin(
        &nats.url(),
        &["api-key", "create", "--tenant", tenant],
        &[("PYOCO_AUTH_PEPPER", PEPPER)],
    )
    .await;
    out.assert_success();
    let v = out.stdout_json();
    (
        v["api_key"].as_str().unwrap().to_string(),
        v["key_id"].as_str().unwrap().to_string(),
    )
}

async fn call(method: &str, url: &str, key: Option<&str>, body: Option<Value>) -> (u16, Value) {
    let c = http();
    let mut req = match method {
        "GET" => c.get(url),
        "POST" => c.post(url),
        "PATCH" => c.patch(url),
        _ => unreachable!(),
    };
    if let Some(k) = key {
        req = req.header("X-API-Key", k);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.unwrap();
    let code = r.status().as_u16();
    let text = r.text().await.unwrap();
    (
        code,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

#[tokio::test]
async fn auth_matrix_tenants_and_revocation() {
    let nats = NatsServer::start().await;
    let env = [
        ("PYOCO_HTTP_AUTH_MODE", "api_key"),
        ("PYOCO_AUTH_PEPPER", PEPPER),
    ];
    let gw = Gateway::start(&nats.url(), &env).await;
    gw.wait_nats_connected().await;
    let (key_a, id_a) = admin_create(&nats, "tenant-a").await;
    let (key_b, _id_b) = admin_create(&nats, "tenant-b").await;

    // Open endpoints.
    assert_eq!(call("GET", &gw.url("/health"), None, None).await.0, 200);
    assert_eq!(
        call("GET", &gw.url("/openapi.json"), None, None).await.0,
        200
    );
    // Protected endpoints, including /metrics and /workers (open in the original).
    let protected = [
        ("POST", "/runs", Some(json!({"flow_name": "main"}))),
        ("GET", "/runs", None),
        ("GET", "/runs/some-run", None),
        ("GET", "/runs/some-run/tasks", None),
        ("GET", "/runs/some-run/watch", None),
        ("POST", "/runs/some-run/cancel", None),
        ("GET", "/metrics", None),
        ("GET", "/workers", None),
        ("PATCH", "/workers/w", Some(json!({"hidden": true}))),
    ];
    for (m, path, body) in &protected {
        assert_eq!(
            call(m, &gw.url(path), None, body.clone()).await,
            (401, json!({"detail": "api key required"})),
            "{m} {path}"
        );
        for bad in [
            "nonsense",
            "pyoco_abc.def",
            "pyoco_0123456789abcdef01234567.AAAAAAAAAAAAAAAAAAAAAAAA",
            &format!("{key_a}x"),
        ] {
            assert_eq!(
                call(m, &gw.url(path), Some(bad), body.clone()).await,
                (403, json!({"detail": "invalid api key"})),
                "{m} {path} with {bad}"
            );
        }
    }
    let (code, _) = call("GET", &gw.url("/metrics"), Some(&key_a), None).await;
    assert_eq!(code, 200);

    // Tenants: runs are stamped, listed and readable only by their own tenant.
    let (code, sub) = call(
        "POST",
        &gw.url("/runs"),
        Some(&key_a),
        Some(json!({"flow_name": "main", "tag": "auth"})),
    )
    .await;
    assert_eq!(code, 200, "{sub}");
    let run_a = sub["run_id"].as_str().unwrap().to_string();
    let (_, snap) = call(
        "GET",
        &gw.url(&format!("/runs/{run_a}")),
        Some(&key_a),
        None,
    )
    .await;
    assert_eq!(
        (snap["tenant_id"].clone(), snap["api_key_id"].clone()),
        (json!("tenant-a"), json!(id_a))
    );
    assert_eq!(
        call(
            "GET",
            &gw.url(&format!("/runs/{run_a}")),
            Some(&key_b),
            None
        )
        .await,
        (404, json!({"detail": "run not found"}))
    );
    assert_eq!(
        call(
            "GET",
            &gw.url(&format!("/runs/{run_a}/watch")),
            Some(&key_b),
            None
        )
        .await
        .0,
        404
    );
    assert_eq!(
        call(
            "POST",
            &gw.url(&format!("/runs/{run_a}/cancel")),
            Some(&key_b),
            None
        )
        .await
        .0,
        404
    );
    assert!(
        wait_until(
            Duration::from_secs(2),
            Duration::from_millis(20),
            || async {
                call("GET", &gw.url("/runs"), Some(&key_a), None)
                    .await
                    .1
                    .as_array()
                    .map(|a| a.len())
                    == Some(1)
            }
        )
        .await
    );
    assert_eq!(
        call("GET", &gw.url("/runs"), Some(&key_b), None).await.1,
        json!([])
    );
    // Idempotency keys are per tenant.
    let idem = |key: String| {
        let url = gw.url("/runs");
        async move {
            let r = http()
                .post(url)
                .header("X-API-Key", key)
                .header("Idempotency-Key", "same")
                .json(&json!({"flow_name": "main", "tag": "auth"}))
                .send()
                .await
                .unwrap();
            r.json::<Value>().await.unwrap()["run_id"]
                .as_str()
                .unwrap()
                .to_string()
        }
    };
    let (ia, ib) = (idem(key_a.clone()).await, idem(key_b.clone()).await);
    assert_ne!(ia, ib);
    assert_eq!(idem(key_a.clone()).await, ia);
    // Cancel records who asked.
    let (_, c) = call(
        "POST",
        &gw.url(&format!("/runs/{run_a}/cancel")),
        Some(&key_a),
        None,
    )
    .await;
    assert_eq!(c["cancel_requested_by"], json!(format!("api_key:{id_a}")));

    // Revocation with the original's admin tool takes effect within a second, although the
    // key was verified (and cached) just before.
    assert_eq!(
        call("GET", &gw.url("/runs"), Some(&key_a), None).await.0,
        200
    );
    let out = orig_admin(
        &nats.url(),
        &["api-key", "revoke", "--key-id", &id_a],
        &[("PYOCO_AUTH_PEPPER", PEPPER)],
    )
    .await;
    out.assert_success();
    let revoked_at = Instant::now();
    let ok = wait_until(
        Duration::from_secs(1),
        Duration::from_millis(10),
        || async { call("GET", &gw.url("/runs"), Some(&key_a), None).await.0 == 403 },
    )
    .await;
    assert!(ok, "revoked key refused within 1 s");
    eprintln!("revocation effective after {:?}", revoked_at.elapsed());
    assert_eq!(
        call("GET", &gw.url("/runs"), Some(&key_b), None).await.0,
        200,
        "other keys unaffected"
    );
}

#[tokio::test]
async fn wrong_pepper_refuses_keys() {
    let nats = NatsServer::start().await;
    let gw = Gateway::start(
        &nats.url(),
        &[
            ("PYOCO_HTTP_AUTH_MODE", "api_key"),
            ("PYOCO_AUTH_PEPPER", "other"),
        ],
    )
    .await;
    gw.wait_nats_connected().await;
    let (key, _) = admin_create(&nats, "t").await;
    assert_eq!(
        call("GET", &gw.url("/runs"), Some(&key), None).await,
        (403, json!({"detail": "invalid api key"}))
    );
}

#[tokio::test]
async fn custom_header_name() {
    let nats = NatsServer::start().await;
    let gw = Gateway::start(
        &nats.url(),
        &[
            ("PYOCO_HTTP_AUTH_MODE", "api_key"),
            ("PYOCO_AUTH_PEPPER", PEPPER),
            ("PYOCO_HTTP_API_KEY_HEADER", "X-Team-Key"),
        ],
    )
    .await;
    gw.wait_nats_connected().await;
    let (key, _) = admin_create(&nats, "t").await;
    let r = http()
        .get(gw.url("/runs"))
        .header("X-Team-Key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        call("GET", &gw.url("/runs"), Some(&key), None).await.0,
        401,
        "X-API-Key is not the configured header"
    );
}

#[tokio::test]
async fn workers_do_not_show_another_tenants_run_ids() {
    let nats = NatsServer::start().await;
    let env = [
        ("PYOCO_HTTP_AUTH_MODE", "api_key"),
        ("PYOCO_AUTH_PEPPER", PEPPER),
    ];
    let gw = Gateway::start(&nats.url(), &env).await;
    gw.wait_nats_connected().await;
    let (key_a, _) = admin_create(&nats, "tenant-a").await;
    let (key_b, _) = admin_create(&nats, "tenant-b").await;
    let (code, run) = call(
        "POST",
        &gw.url("/runs"),
        Some(&key_a),
        Some(json!({"flow_name": "main", "tag": "nobody"})),
    )
    .await;
    assert_eq!(code, 200, "{run}");
    let run_id = run["run_id"].as_str().unwrap().to_string();
    // A worker busy with tenant a's run, as any worker writes its record.
    let js = nats.jetstream().await;
    let kv = js.get_key_value("pyoco_workers").await.unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let record = json!({"worker_id": "w-busy", "state": "RUNNING", "tags": ["nobody"],
        "current_run_id": run_id, "last_run_id": run_id, "last_seen_at": now,
        "last_heartbeat_at": now, "hidden": false});
    kv.put("w-busy", serde_json::to_vec(&record).unwrap().into())
        .await
        .unwrap();
    let shown = |key: String| {
        let url = gw.url("/workers");
        async move {
            let (code, list) = call("GET", &url, Some(&key), None).await;
            assert_eq!(code, 200, "{list}");
            list.as_array()
                .unwrap()
                .iter()
                .find(|w| w["worker_id"] == "w-busy")
                .cloned()
        }
    };
    let ok = wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
        let s = shown(key_a.clone());
        async move { s.await.is_some() }
    })
    .await;
    assert!(ok, "the record reached the index");
    let for_a = shown(key_a.clone()).await.unwrap();
    assert_eq!(for_a["current_run_id"], run_id.as_str(), "{for_a}");
    let for_b = shown(key_b.clone()).await.unwrap();
    assert_eq!(for_b["current_run_id"], Value::Null, "{for_b}");
    assert_eq!(for_b["last_run_id"], Value::Null, "{for_b}");
    assert_eq!(
        for_b["state"], "RUNNING",
        "the rest of the record stays: {for_b}"
    );
}
