//! HTTP helpers and polling.

use std::future::Future;
use std::time::{Duration, Instant};

/// A reqwest client for tests: 5 s connect timeout, 60 s per-read timeout, no total timeout
/// (SSE streams stay open), no proxy.
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .read_timeout(Duration::from_secs(60))
        .no_proxy()
        .build()
        .expect("build reqwest client")
}

/// Polls `f` every `poll_interval` until it returns true (→ true) or `timeout` elapses (→ false).
/// `f` is always tried at least once.
pub async fn wait_until<F, Fut>(timeout: Duration, poll_interval: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if f().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(poll_interval).await;
    }
}

/// `POST <base_url>/runs/yaml` with `yaml` as the `workflow` file, `flow_name` and `tag`, the way
/// pyoco-client sends it; returns the new run's id (panics with the answer otherwise).
pub async fn submit_flow_yaml(base_url: &str, yaml: &str, flow_name: &str, tag: &str) -> String {
    let form = reqwest::multipart::Form::new()
        .part(
            "workflow",
            reqwest::multipart::Part::bytes(yaml.as_bytes().to_vec()).file_name("flow.yaml"),
        )
        .text("flow_name", flow_name.to_string())
        .text("tag", tag.to_string());
    let r = http()
        .post(format!("{base_url}/runs/yaml"))
        .multipart(form)
        .send()
        .await
        .expect("POST /runs/yaml");
    let body: serde_json::Value = r.json().await.expect("JSON answer");
    body["run_id"]
        .as_str()
        .unwrap_or_else(|| panic!("submit failed: {body}"))
        .to_string()
}

/// `GET <base_url>/runs/<run_id>` (with `X-API-Key` if given); (status code, JSON body or Null).
pub async fn get_run(
    base_url: &str,
    run_id: &str,
    api_key: Option<&str>,
) -> (u16, serde_json::Value) {
    let mut req = http().get(format!("{base_url}/runs/{run_id}"));
    if let Some(k) = api_key {
        req = req.header("X-API-Key", k);
    }
    match req.send().await {
        Ok(r) => {
            let code = r.status().as_u16();
            let body = r
                .json::<serde_json::Value>()
                .await
                .unwrap_or(serde_json::Value::Null);
            (code, body)
        }
        Err(e) => panic!("GET {base_url}/runs/{run_id}: {e}"),
    }
}

/// Polls `GET /runs/<run_id>` every 100 ms until `status` is one of `want`; returns that
/// snapshot. Panics with the last answer on timeout.
pub async fn wait_for_run_status(
    base_url: &str,
    run_id: &str,
    want: &[&str],
    timeout: Duration,
    api_key: Option<&str>,
) -> serde_json::Value {
    let deadline = Instant::now() + timeout;
    loop {
        let (code, body) = get_run(base_url, run_id, api_key).await;
        if code == 200 {
            if let Some(s) = body.get("status").and_then(|s| s.as_str()) {
                if want.contains(&s) {
                    return body;
                }
            }
        }
        if Instant::now() >= deadline {
            panic!(
                "run {run_id} did not reach {want:?} within {timeout:?}; last: HTTP {code} {body}"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
