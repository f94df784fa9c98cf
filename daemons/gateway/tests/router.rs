//! The gateway in-process: its router driven with `tower::ServiceExt::oneshot` (as in axum's
//! `examples/testing`), against a real nats-server from the test harness (random loopback port,
//! throw-away store).

use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::{header, Request, StatusCode};
use axum::Router;
use pyoco_core::config::Config;
use pyoco_core::nats::NatsAuth;
use pyoco_server::{router, start_background, AppState, Runtime, SharedState};
use pyoco_tests::NatsServer;
use serde_json::{json, Value};
use tower::ServiceExt;

/// A gateway state on `nats` with its background tasks running, resources ensured and
/// indexes loaded.
async fn gateway(nats: &NatsServer, tweak: impl FnOnce(&mut Config)) -> SharedState {
    let mut cfg = Config::defaults();
    cfg.nats_url = nats.url();
    tweak(&mut cfg);
    let client = pyoco_core::nats::connect(&cfg.nats_url, &NatsAuth::none(), "pyoco-gateway-test")
        .await
        .unwrap();
    let state = AppState::from_config(cfg, client, Runtime::new()).unwrap();
    start_background(&state, "in-process");
    assert!(state.wait_ready_at_start().await, "resources ensured");
    state.indexes_loaded().await.unwrap();
    state
}

async fn send(app: &Router, req: Request<Body>) -> (StatusCode, Bytes) {
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    (status, body)
}

async fn get(app: &Router, uri: &str) -> (StatusCode, Value) {
    let (status, body) = send(app, Request::get(uri).body(Body::empty()).unwrap()).await;
    let v = serde_json::from_slice(&body).unwrap_or(Value::Null);
    (status, v)
}

async fn post_json(app: &Router, uri: &str, body: Value) -> (StatusCode, Value) {
    let req = Request::post(uri)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let (status, body) = send(app, req).await;
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

/// Polls `f` until it holds (the index follows KV through a watch, milliseconds behind).
async fn eventually<F: std::future::Future<Output = bool>>(mut f: impl FnMut() -> F) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("condition not reached within 5 s");
}

#[tokio::test]
async fn health_submit_get_list_metrics_and_errors() {
    let nats = NatsServer::start().await;
    let state = gateway(&nats, |_| {}).await;
    let app = router(state.clone());

    let (status, body) = get(&app, "/health").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"status": "ok", "nats": "connected"}));

    let (status, body) = post_json(
        &app,
        "/runs",
        json!({"flow_name": "hello", "params": {"x": 1}, "tag": "gpu"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "PENDING");
    let run_id = body["run_id"].as_str().unwrap().to_string();

    let (status, run) = get(&app, &format!("/runs/{run_id}")).await;
    assert_eq!(status, StatusCode::OK, "{run}");
    assert_eq!(run["run_id"], run_id.as_str());
    assert_eq!(run["flow_name"], "hello");
    assert_eq!(run["tag"], "gpu");
    assert_eq!(run["status"], "PENDING");
    assert_eq!(run["params"], json!({"x": 1}));

    // The list comes from the index, which the runs follower fills from the KV watch.
    eventually(|| {
        let app = app.clone();
        async move {
            let (_, list) = get(&app, "/runs?tag=gpu").await;
            list.as_array().map(|a| a.len()) == Some(1)
        }
    })
    .await;
    // The original's shape: a plain array of summaries.
    let (_, list) = get(&app, "/runs?tag=gpu").await;
    assert_eq!(list[0]["run_id"], run_id.as_str());
    let (_, none) = get(&app, "/runs?tag=cpu").await;
    assert_eq!(none, json!([]));
    // With a paging parameter: `{items, next_cursor}`.
    let (_, paged) = get(&app, "/runs?updated_after=0&limit=1").await;
    assert_eq!(paged["items"][0]["run_id"], run_id.as_str());
    assert_eq!(paged["next_cursor"], Value::Null);

    let (status, text) = send(&app, Request::get("/metrics").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    let text = String::from_utf8(text.to_vec()).unwrap();
    for line in [
        "pyoco_runs_total{status=\"PENDING\"} 1",
        "pyoco_workers_alive_total 0",
        "pyoco_dlq_messages_total 0",
        "pyoco_queue_depth{tag=\"gpu\"} 1",
        "pyoco_runs_submitted_total{tag=\"gpu\"} 1",
        // The requests above, counted by route template.
        "pyoco_http_requests_total{route=\"/runs/{run_id}\",method=\"GET\",status=\"200\"} 1",
    ] {
        assert!(
            text.contains(&format!("\n{line}\n")),
            "missing {line}:\n{text}"
        );
    }

    let (status, body) = get(&app, "/runs/no-such-run").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body, json!({"detail": "run not found"}));
    let (status, body) = get(&app, "/no/such/route").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body, json!({"detail": "Not Found"}));

    let (status, body) = post_json(&app, "/runs", json!({"params": {}})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["detail"][0]["type"], "missing");
    assert_eq!(body["detail"][0]["loc"], json!(["body", "flow_name"]));
    let (status, body) = get(&app, "/runs?limit=0").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");

    assert!(state.runtime.shutdown(Duration::from_secs(2)).await);
}

#[tokio::test]
async fn api_key_mode_refuses_requests_without_a_key() {
    let nats = NatsServer::start().await;
    let state = gateway(&nats, |c| c.http_auth_mode = "api_key".into()).await;
    let app = router(state.clone());
    let (status, body) = get(&app, "/runs").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body, json!({"detail": "api key required"}));
    // /health stays open for probes.
    let (status, _) = get(&app, "/health").await;
    assert_eq!(status, StatusCode::OK);
    assert!(state.runtime.shutdown(Duration::from_secs(2)).await);
}

#[tokio::test]
async fn shutdown_ends_an_open_watch_and_every_task() {
    let nats = NatsServer::start().await;
    let state = gateway(&nats, |_| {}).await;
    let app = router(state.clone());
    let (_, body) = post_json(&app, "/runs", json!({"flow_name": "hello"})).await;
    let run_id = body["run_id"].as_str().unwrap().to_string();
    for name in ["nats", "runs follower", "workers follower", "auth follower"] {
        assert!(state.runtime.registry.contains(name), "{name} registered");
    }
    assert!(state.runtime.registry.all_alive(Instant::now()));

    let resp = app
        .clone()
        .oneshot(
            Request::get(format!("/runs/{run_id}/watch?timeout_sec=600"))
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body().into_data_stream();
    use futures::StreamExt;
    let first = body.next().await.unwrap().unwrap();
    assert!(first.starts_with(b"event: snapshot\n"), "{first:?}");

    let t = Instant::now();
    let stopped = state.runtime.shutdown(Duration::from_secs(3));
    let rest = async {
        let mut rest = Vec::new();
        while let Some(chunk) = body.next().await {
            rest.extend_from_slice(&chunk.unwrap());
        }
        rest
    };
    let (stopped, rest) = tokio::join!(stopped, rest);
    let rest = String::from_utf8(rest).unwrap();
    assert!(rest.starts_with("event: shutdown\n"), "{rest}");
    assert!(rest.contains("\"reason\":\"gateway stopping\""), "{rest}");
    assert!(stopped, "every tracked task ended");
    assert!(t.elapsed() < Duration::from_secs(2));
    assert!(!state.runtime.registry.all_alive(Instant::now()));
}

/// Records what a KV follower is fed and panics on the first live-or-replayed entry it sees
/// once: the supervisor must restart it, and the restart must replay the bucket.
#[derive(Default)]
struct PanicsOnce {
    panicked: std::sync::atomic::AtomicBool,
    seen: std::sync::Mutex<Vec<String>>,
    finished: std::sync::atomic::AtomicU32,
}

impl pyoco_server::index::Follower for PanicsOnce {
    fn begin(&self) -> u64 {
        self.seen.lock().unwrap().clear();
        1
    }
    fn entry(
        &self,
        key: &str,
        _op: async_nats::jetstream::kv::Operation,
        _value: &Bytes,
        _revision: u64,
        _live: bool,
    ) {
        use std::sync::atomic::Ordering;
        if !self.panicked.swap(true, Ordering::SeqCst) {
            panic!("follower test: first entry panics");
        }
        self.seen.lock().unwrap().push(key.to_string());
    }
    fn finish(&self, _generation: u64) {
        self.finished
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

#[tokio::test]
async fn a_follower_that_panics_is_restarted_and_replays_the_bucket() {
    let nats = NatsServer::start().await;
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    // The buckets as the gateway creates them (core's `ensure`, which also waits out a
    // JetStream that answers a moment after the port opens).
    let mut cfg = Config::defaults();
    cfg.nats_url = nats.url();
    let mut store = None;
    for _ in 0..100 {
        if let Ok((res, _)) = pyoco_core::resources::ensure(&js, &cfg).await {
            store = Some(res.workers);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let store = store.expect("resources ensured");
    store.put("a", "1".into()).await.unwrap();
    store.put("b", "2".into()).await.unwrap();

    let rt = Runtime::new();
    let follower = std::sync::Arc::new(PanicsOnce::default());
    {
        let follower = follower.clone();
        rt.supervise("test follower", move || {
            let store = store.clone();
            let follower = follower.clone();
            async move { pyoco_server::index::follow_bucket(&store, follower.as_ref()).await }
        });
    }
    eventually(|| {
        let f = follower.clone();
        async move { f.finished.load(std::sync::atomic::Ordering::SeqCst) >= 1 }
    })
    .await;
    assert_eq!(*follower.seen.lock().unwrap(), ["a", "b"], "a full replay");
    let status = rt.registry.status("test follower").unwrap();
    assert_eq!(status.restarts, 1);
    assert_eq!(status.state, pyoco_server::tasks::TaskState::Running);
    assert!(rt.shutdown(Duration::from_secs(2)).await);
}
