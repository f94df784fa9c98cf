//! `pyococtl key|worker|dlq|metrics|health` against a real nats-server, our gateway and worker,
//! and the Python original (its admin CLI and gateway) for the API-key interop.
//!
//! Table outputs are compared with `tests/golden/admin_*.txt` after masking times and ids
//! (same-length placeholders, so the column alignment is checked too). Regenerate them with
//! `PYOCO_UPDATE_GOLDEN=1 cargo test -p pyoco-tests --test ctl_admin`.

use std::process::Output;
use std::time::Duration;

use pyoco_tests::*;
use serde_json::{json, Value};

const PEPPER: &str = "pepper-for-ctl-tests";

/// What Python's `json.dumps(json.loads(line), ensure_ascii=True)` prints: the original's text.
async fn python_dumps(line: &str) -> String {
    let script = "import json,sys; sys.stdout.write(json.dumps(json.loads(sys.argv[1]), ensure_ascii=True) + '\\n')";
    let out = orig_venv_run("python", &["-c", script, line.trim_end()], &[]).await;
    out.assert_success();
    out.stdout_text()
}

/// `YYYY-MM-DD HH:MM:SS` → a placeholder of the same length.
fn mask_times(s: &str) -> String {
    let pat: Vec<char> = "dddd-dd-dd dd:dd:dd".chars().collect();
    let chars: Vec<char> = s.chars().collect();
    let (mut out, mut i) = (String::new(), 0);
    while i < chars.len() {
        let hit = i + pat.len() <= chars.len()
            && pat.iter().zip(&chars[i..i + pat.len()]).all(|(p, c)| {
                if *p == 'd' {
                    c.is_ascii_digit()
                } else {
                    p == c
                }
            });
        if hit {
            out.push_str("YYYY-MM-DD hh:mm:ss");
            i += pat.len();
        } else {
            out.push(chars[i]);
            i += 1;
        }
    }
    out
}

/// A trailing `<n> s ago` (last table column) → `<ago>`.
fn mask_ago(s: &str) -> String {
    s.lines()
        .map(|l| match l.rfind("  ") {
            Some(i) if l.ends_with(" ago") => format!("{}<ago>", &l[..i + 2]),
            _ => l.to_string(),
        })
        .map(|l| l + "\n")
        .collect()
}

/// Replaces `id` with `label` padded to the id's length.
fn mask_id(s: &str, id: &str, label: &str) -> String {
    s.replace(id, &format!("{label:<width$}", width = id.len()))
}

async fn get(url: &str, key: Option<&str>) -> (u16, Value) {
    let mut req = http().get(url);
    if let Some(k) = key {
        req = req.header("X-API-Key", k);
    }
    let r = req.send().await.unwrap();
    let code = r.status().as_u16();
    let text = r.text().await.unwrap();
    (
        code,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn unreachable_url(scheme: &str) -> String {
    format!("{scheme}://127.0.0.1:{}", free_port())
}

// ---------------------------------------------------------------------------------------------
// key

#[tokio::test]
async fn key_commands_interoperate_with_the_original_admin_and_gateways() {
    let nats = NatsServer::start().await;
    let url = nats.url();
    let pep = [("PYOCO_AUTH_PEPPER", PEPPER)];

    // Nothing exists yet: an empty list (the original crashes here), no dead letters.
    let out = ctl(&["--nats-url", &url, "key", "list"], &[]).await;
    assert_eq!(expect_code(&out, 0).stdout_text(), "[]\n");
    assert_eq!(
        ctl(
            &["--nats-url", &url, "--output", "table", "key", "list"],
            &[]
        )
        .await
        .stdout_text(),
        "(no api keys)\n"
    );
    assert_eq!(
        ctl(&["--nats-url", &url, "dlq", "list"], &[])
            .await
            .stdout_text(),
        "[]\n"
    );
    expect_code(
        &ctl(&["--nats-url", &url, "dlq", "show", "1"], &[]).await,
        1,
    );

    // create: one line, the original's JSON text and key order.
    let out = ctl(
        &["--nats-url", &url, "key", "create", "--tenant", "acme"],
        &pep,
    )
    .await;
    let line = expect_code(&out, 0).stdout_text();
    assert_eq!(python_dumps(&line).await, line, "same text as json.dumps");
    let created = out.stdout_json();
    assert_eq!(
        created.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["key_id", "tenant_id", "api_key", "created_at"]
    );
    let (key1, id1) = (
        created["api_key"].as_str().unwrap().to_string(),
        created["key_id"].as_str().unwrap().to_string(),
    );
    assert_eq!(created["tenant_id"], "acme");
    assert!(key1.starts_with(&format!("pyoco_{id1}.")));
    assert_eq!(id1.len(), 24);

    // Our gateway and the original's accept it.
    let auth = [
        ("PYOCO_HTTP_AUTH_MODE", "api_key"),
        ("PYOCO_AUTH_PEPPER", PEPPER),
    ];
    let gw = Gateway::start(&url, &auth).await;
    gw.wait_nats_connected().await;
    assert_eq!(get(&gw.url("/runs"), Some(&key1)).await.0, 200);
    assert_eq!(get(&gw.url("/runs"), None).await.0, 401);
    let orig_gw = OrigGateway::start(&url, &auth).await;
    let missing_run = orig_gw.url("/runs/00000000-0000-4000-8000-000000000000");
    assert_eq!(
        get(&missing_run, Some(&key1)).await,
        (404, json!({"detail": "run not found"})),
        "auth passed at the original"
    );
    assert_eq!(get(&missing_run, Some(&format!("{key1}x"))).await.0, 403);

    // A key made by the original admin; both list tools print the same text.
    let out = orig_admin(&url, &["api-key", "create", "--tenant", "beta"], &pep).await;
    out.assert_success();
    let (key2, id2) = (
        out.stdout_json()["api_key"].as_str().unwrap().to_string(),
        out.stdout_json()["key_id"].as_str().unwrap().to_string(),
    );
    let ours = ctl(&["--nats-url", &url, "key", "list"], &[]).await;
    let theirs = orig_admin(&url, &["api-key", "list"], &[]).await;
    theirs.assert_success();
    assert_eq!(expect_code(&ours, 0).stdout_text(), theirs.stdout_text());
    let listed: Vec<Value> = ours.stdout_json().as_array().unwrap().clone();
    assert_eq!(
        listed
            .iter()
            .map(|k| k["key_id"].as_str().unwrap())
            .collect::<Vec<_>>(),
        [id2.as_str(), id1.as_str()],
        "newest first"
    );

    // The table form.
    let table = ctl(
        &["--nats-url", &url, "--output", "table", "key", "list"],
        &[],
    )
    .await;
    let masked = mask_id(
        &mask_id(
            &mask_times(&expect_code(&table, 0).stdout_text()),
            &id1,
            "<key-1>",
        ),
        &id2,
        "<key-2>",
    );
    golden("admin_key_list.txt", &masked);

    // revoke (a key made by the original): our gateway refuses it within a second.
    assert_eq!(get(&gw.url("/runs"), Some(&key2)).await.0, 200);
    let out = ctl(
        &["--nats-url", &url, "key", "revoke", "--key-id", &id2],
        &[],
    )
    .await;
    let line = expect_code(&out, 0).stdout_text();
    assert_eq!(python_dumps(&line).await, line);
    let revoked = out.stdout_json();
    assert_eq!(
        revoked.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["key_id", "revoked_at"]
    );
    assert_eq!(revoked["key_id"], json!(id2));
    let refused = wait_until(
        Duration::from_secs(1),
        Duration::from_millis(20),
        || async { get(&gw.url("/runs"), Some(&key2)).await.0 == 403 },
    )
    .await;
    assert!(
        refused,
        "our gateway still accepts a key revoked a second ago"
    );
    assert_eq!(
        get(&missing_run, Some(&key2)).await.0,
        403,
        "the original gateway refuses it"
    );
    assert_eq!(
        get(&gw.url("/runs"), Some(&key1)).await.0,
        200,
        "the other key still works"
    );
    let theirs = orig_admin(&url, &["api-key", "list"], &[])
        .await
        .stdout_json();
    let rec = theirs
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["key_id"] == json!(id2))
        .unwrap()
        .clone();
    assert_eq!(rec["revoked_at"], revoked["revoked_at"]);

    // The original admin revokes a key pyococtl made; pyococtl lists it revoked.
    orig_admin(&url, &["api-key", "revoke", "--key-id", &id1], &[])
        .await
        .assert_success();
    let ours = ctl(&["--nats-url", &url, "key", "list"], &[])
        .await
        .stdout_json();
    assert!(
        ours.as_array()
            .unwrap()
            .iter()
            .all(|k| k["revoked_at"].is_f64()),
        "{ours}"
    );

    // An unknown key: the original's output and exit code.
    let ours = ctl(
        &["--nats-url", &url, "key", "revoke", "--key-id", "nope1234"],
        &[],
    )
    .await;
    let theirs = orig_admin(&url, &["api-key", "revoke", "--key-id", "nope1234"], &[]).await;
    assert_eq!(
        (ours.code(), ours.stdout_text()),
        (theirs.code(), theirs.stdout_text())
    );
    assert_eq!(
        ours.stdout_text(),
        "{\"error\": \"not_found\", \"key_id\": \"nope1234\"}\n"
    );
    assert_eq!(
        expect_code(
            &ctl(
                &["--nats-url", &url, "key", "revoke", "--key-id", "a b*"],
                &[]
            )
            .await,
            2
        )
        .stdout_text(),
        "{\"error\": \"not_found\", \"key_id\": \"a b*\"}\n"
    );

    // The pepper comes from the shared configuration: a file, the TOML file; a wrong one fails.
    let dir = TestDir::new("ctl-key");
    let pepper_file = dir.write("pepper", format!("{PEPPER}\n"));
    let out = ctl(
        &["--nats-url", &url, "key", "create", "--tenant", "filepep"],
        &[("PYOCO_AUTH_PEPPER_FILE", pepper_file.to_str().unwrap())],
    )
    .await;
    let key3 = expect_code(&out, 0).stdout_json()["api_key"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        get(&gw.url("/runs"), Some(&key3)).await.0,
        200,
        "pepper from PYOCO_AUTH_PEPPER_FILE"
    );
    let toml = dir.write(
        "pyoco.toml",
        format!("nats_url = \"{url}\"\nauth_pepper = \"{PEPPER}\"\n"),
    );
    let out = ctl(
        &[
            "--config",
            toml.to_str().unwrap(),
            "key",
            "create",
            "--tenant",
            "tomlpep",
        ],
        &[],
    )
    .await;
    let key4 = expect_code(&out, 0).stdout_json()["api_key"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        get(&gw.url("/runs"), Some(&key4)).await.0,
        200,
        "pepper and NATS URL from the TOML file"
    );
    let out = ctl(
        &["key", "create", "--tenant", "envurl"],
        &[
            ("PYOCO_NATS_URL", url.as_str()),
            ("PYOCO_AUTH_PEPPER", "another"),
        ],
    )
    .await;
    let key5 = expect_code(&out, 0).stdout_json()["api_key"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        get(&gw.url("/runs"), Some(&key5)).await.0,
        403,
        "a key made with another pepper is refused"
    );

    // Usage errors and an unreachable NATS.
    let out = ctl(
        &[
            "--nats-url",
            &url,
            "key",
            "create",
            "--tenant",
            "bad tenant",
        ],
        &[],
    )
    .await;
    assert!(
        expect_code(&out, 2)
            .stderr_text()
            .contains("invalid tenant_id"),
        "{}",
        out.stderr_text()
    );
    expect_code(&ctl(&["--nats-url", &url, "key", "create"], &[]).await, 2);
    expect_code(&ctl(&["--nats-url", &url, "key", "revoke"], &[]).await, 2);
    let bad = unreachable_url("nats");
    for args in [
        vec!["key", "list"],
        vec!["key", "create", "--tenant", "x"],
        vec!["dlq", "list"],
    ] {
        let mut all = vec!["--nats-url", bad.as_str()];
        all.extend(args.iter());
        let out = ctl(&all, &[]).await;
        let err = expect_code(&out, 1).stderr_text();
        assert!(
            err.contains(&bad) && err.contains("--nats-url") && err.contains("PYOCO_NATS_URL"),
            "{args:?}: {err}"
        );
    }

    // metrics follows the gateway's auth; health is open.
    let out = ctl(&["--server", &gw.base_url(), "metrics"], &[]).await;
    assert!(
        expect_code(&out, 1).stderr_text().contains("HTTP 401"),
        "{}",
        out.stderr_text()
    );
    let out = ctl(
        &["--server", &gw.base_url(), "--api-key", &key1, "metrics"],
        &[],
    )
    .await;
    expect_code(&out, 1); // key1 was revoked by the original admin above
    let out = ctl(
        &["--server", &gw.base_url(), "--api-key", &key3, "metrics"],
        &[],
    )
    .await;
    assert!(expect_code(&out, 0)
        .stdout_text()
        .starts_with("# HELP pyoco_runs_total"));
    // The original gateway's /health says nothing about NATS.
    let out = ctl(
        &[
            "--server",
            &orig_gw.base_url(),
            "--output",
            "table",
            "health",
        ],
        &[],
    )
    .await;
    assert!(
        expect_code(&out, 0)
            .stdout_text()
            .contains("nats     not reported"),
        "{}",
        out.stdout_text()
    );
}

// ---------------------------------------------------------------------------------------------
// worker

#[tokio::test]
async fn worker_list_hide_and_unhide() {
    let nats = NatsServer::start().await;
    let gw = Gateway::start(&nats.url(), &[]).await;
    gw.wait_nats_connected().await;
    let tasks = TestDir::new("ctl-wtasks");
    tasks.write("wtasks.py", TEST_TASKS);
    let w = Worker::start(&nats.url(), "ctlw", "ctl-worker-1", tasks.path(), &[], &[]).await;
    let server = gw.base_url();
    let s = ["--server", server.as_str()];
    let with = |extra: &[&'static str]| -> Vec<&str> {
        s.iter().copied().chain(extra.iter().copied()).collect()
    };

    // Piped: the gateway's JSON.
    let out = ctl(&with(&["worker", "list"]), &[]).await;
    let list = expect_code(&out, 0).stdout_json();
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert_eq!(
        (list[0]["worker_id"].clone(), list[0]["state"].clone()),
        (json!("ctl-worker-1"), json!("IDLE"))
    );
    assert_eq!(python_dumps(&out.stdout_text()).await, out.stdout_text());
    let table = ctl(&with(&["--output", "table", "worker", "list"]), &[]).await;
    golden(
        "admin_worker_list.txt",
        &mask_ago(&expect_code(&table, 0).stdout_text()),
    );

    // A running run shows as the current run.
    let yaml = "version: 1\nflow:\n  graph: |\n    slow\n  defaults: {seconds: 3.0}\ntasks:\n  slow: {callable: \"wtasks:slow\"}\n";
    let form = reqwest::multipart::Form::new()
        .part(
            "workflow",
            reqwest::multipart::Part::bytes(yaml.as_bytes().to_vec()).file_name("flow.yaml"),
        )
        .text("flow_name", "main")
        .text("tag", "ctlw");
    let sub: Value = http()
        .post(gw.url("/runs/yaml"))
        .multipart(form)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let run_id = sub["run_id"].as_str().unwrap().to_string();
    wait_for_run_status(
        &server,
        &run_id,
        &["RUNNING"],
        Duration::from_secs(20),
        None,
    )
    .await;
    let busy = wait_until(
        Duration::from_secs(5),
        Duration::from_millis(50),
        || async {
            let out = ctl(
                &with(&["--output", "table", "worker", "list", "--state", "running"]),
                &[],
            )
            .await;
            out.stdout_text().contains(&run_id)
        },
    )
    .await;
    assert!(
        busy,
        "the table shows the current run; log:\n{}",
        w.log_text()
    );

    // Filters; bad values are usage errors (exit 2).
    wait_for_run_status(
        &server,
        &run_id,
        &["COMPLETED"],
        Duration::from_secs(20),
        None,
    )
    .await;
    let idle = wait_until(
        Duration::from_secs(5),
        Duration::from_millis(50),
        || async {
            ctl(
                &with(&["worker", "list", "--scope", "ALL", "--state", "idle"]),
                &[],
            )
            .await
            .stdout_json()
            .as_array()
            .map(|a| a.len())
                == Some(1)
        },
    )
    .await;
    assert!(idle);
    assert_eq!(
        ctl(
            &with(&[
                "worker",
                "list",
                "--state",
                "stopped_graceful",
                "--scope",
                "all"
            ]),
            &[]
        )
        .await
        .stdout_text(),
        "[]\n"
    );
    assert_eq!(
        ctl(
            &with(&[
                "--output",
                "table",
                "worker",
                "list",
                "--state",
                "disconnected"
            ]),
            &[]
        )
        .await
        .stdout_text(),
        "(no workers)\n"
    );
    for bad in [
        &["worker", "list", "--scope", "some"][..],
        &["worker", "list", "--state", "busy"],
        &["worker", "list", "--limit", "0"],
        &["worker", "list", "--limit", "501"],
        &["--output", "status", "worker", "list"],
    ] {
        expect_code(&ctl(&with(bad), &[]).await, 2);
    }
    assert_eq!(
        ctl(&with(&["worker", "list", "--limit", "1"]), &[])
            .await
            .stdout_json()
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // hide / unhide.
    let out = ctl(&with(&["worker", "hide", "ctl-worker-1"]), &[]).await;
    let hidden = expect_code(&out, 0).stdout_json();
    assert_eq!(
        (hidden["worker_id"].clone(), hidden["hidden"].clone()),
        (json!("ctl-worker-1"), json!(true))
    );
    assert!(hidden["updated_at"].is_f64());
    assert_eq!(
        ctl(&with(&["worker", "list"]), &[]).await.stdout_text(),
        "[]\n"
    );
    let all = ctl(&with(&["worker", "list", "--include-hidden"]), &[])
        .await
        .stdout_json();
    assert_eq!(all[0]["hidden"], json!(true));
    let table = ctl(
        &with(&["--output", "table", "worker", "list", "--include-hidden"]),
        &[],
    )
    .await;
    golden(
        "admin_worker_list_hidden.txt",
        &mask_ago(&expect_code(&table, 0).stdout_text()),
    );
    let out = ctl(&with(&["worker", "unhide", "ctl-worker-1"]), &[]).await;
    assert_eq!(expect_code(&out, 0).stdout_json()["hidden"], json!(false));
    assert_eq!(
        ctl(&with(&["worker", "list"]), &[]).await.stdout_json()[0]["hidden"],
        json!(false)
    );

    // Errors people can act on.
    let out = ctl(&with(&["worker", "hide", "no-such-worker"]), &[]).await;
    let err = expect_code(&out, 1).stderr_text();
    assert!(
        err.contains("HTTP 404")
            && err.contains("worker not found")
            && err.contains("--include-hidden"),
        "{err}"
    );
    let bad = unreachable_url("http");
    let out = ctl(&["--server", &bad, "worker", "list"], &[]).await;
    let err = expect_code(&out, 1).stderr_text();
    assert!(err.contains(&bad) && err.contains("--server"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// metrics, health

#[tokio::test]
async fn metrics_and_health() {
    let nats = NatsServer::start().await;
    let gw = Gateway::start(&nats.url(), &[]).await;
    gw.wait_nats_connected().await;
    let server = gw.base_url();
    let sub: Value = http()
        .post(gw.url("/runs"))
        .json(&json!({"flow_name": "main", "tag": "nobody"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(sub["run_id"].is_string(), "{sub}");
    let js = nats.jetstream().await;
    js.publish(
        "pyoco.dlq.x",
        r#"{"reason":"execution_error","error":"e","timestamp":1.0,"run_id":"r"}"#.into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let seen = wait_until(
        Duration::from_secs(5),
        Duration::from_millis(50),
        || async {
            let (_, body) = get(&gw.url("/metrics"), None).await;
            body.as_str()
                .map(|t| t.contains("pyoco_runs_total{status=\"PENDING\"} 1"))
                .unwrap_or(false)
        },
    )
    .await;
    assert!(seen);

    // Piped: the Prometheus text as is (also with --raw).
    for args in [
        &["metrics"][..],
        &["metrics", "--raw"],
        &["--output", "table", "metrics", "--raw"],
    ] {
        let mut all = vec!["--server", server.as_str()];
        all.extend_from_slice(args);
        let out = ctl(&all, &[]).await;
        let text = expect_code(&out, 0).stdout_text();
        assert!(
            text.starts_with(
                "# HELP pyoco_runs_total Count of runs by status (best-effort from KV).\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("pyoco_dlq_messages_total 1\n")
                && text.contains("pyoco_queue_depth{tag=\"nobody\"} 1\n"),
            "{text}"
        );
    }
    let out = ctl(&["--server", &server, "--output", "table", "metrics"], &[]).await;
    golden("admin_metrics.txt", &expect_code(&out, 0).stdout_text());
    let out = ctl(&["--server", &server, "--output", "json", "metrics"], &[]).await;
    assert_eq!(
        expect_code(&out, 0).stdout_json(),
        json!({"runs": {"PENDING": 1}, "runs_today": {"PENDING": 1}, "workers_alive": 0, "dlq_messages": 1, "queue_depth": {"nobody": 1}})
    );

    // health: the gateway's JSON; a table; exit 1 when unreachable.
    let out = ctl(&["--server", &server, "health"], &[]).await;
    assert_eq!(
        expect_code(&out, 0).stdout_json(),
        json!({"status": "ok", "nats": "connected"})
    );
    let out = ctl(&["--server", &server, "--output", "table", "health"], &[]).await;
    let table = expect_code(&out, 0)
        .stdout_text()
        .replace(&server, "<server>");
    golden("admin_health.txt", &table);
    let bad = unreachable_url("http");
    let out = ctl(&["--server", &bad, "health"], &[]).await;
    let err = expect_code(&out, 1).stderr_text();
    assert!(err.contains(&bad) && err.contains("PYOCO_SERVER"), "{err}");
    expect_code(&ctl(&["--server", &bad, "metrics"], &[]).await, 1);
    // Something that is not a gateway answers 404 on /health.
    let out = ctl(
        &["--server", &format!("{server}/nothing-here"), "health"],
        &[],
    )
    .await;
    assert!(
        expect_code(&out, 1).stderr_text().contains("HTTP 404"),
        "{}",
        out.stderr_text()
    );
}

// ---------------------------------------------------------------------------------------------
// dlq

/// Fails on the first call for a marker path (and creates the marker), succeeds afterwards.
const FLAKY_TASKS: &str = r#"
import os

def flaky(marker=""):
    if not os.path.exists(marker):
        open(marker, "w").close()
        raise RuntimeError("first attempt fails")
    return "ok"
"#;

const RESOLVER: &str = r#"
from pyoco import Flow, task
import ctltasks

@task
def flaky(marker=""):
    return ctltasks.flaky(marker)

def resolve(name):
    if name != "flaky_flow":
        raise KeyError(name)
    f = Flow(name="flaky_flow")
    f >> flaky
    return f
"#;

struct DlqStack {
    nats: NatsServer,
    gw: Gateway,
    dir: TestDir,
    _worker: Worker,
}

impl DlqStack {
    fn nats_url(&self) -> String {
        self.nats.url()
    }
    async fn ctl(&self, args: &[&str]) -> Output {
        let url = self.nats_url();
        let mut all = vec!["--nats-url", url.as_str()];
        all.extend_from_slice(args);
        ctl(&all, &[]).await
    }
    async fn submit_yaml(&self, task: &str, callable: &str, defaults: &str) -> String {
        let yaml = format!("version: 1\nflow:\n  graph: |\n    {task}\n  defaults: {defaults}\ntasks:\n  {task}: {{callable: \"{callable}\"}}\n");
        let form = reqwest::multipart::Form::new()
            .part(
                "workflow",
                reqwest::multipart::Part::bytes(yaml.into_bytes()).file_name("flow.yaml"),
            )
            .text("flow_name", "main")
            .text("tag", "dlq");
        let r: Value = http()
            .post(self.gw.url("/runs/yaml"))
            .multipart(form)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        r["run_id"]
            .as_str()
            .unwrap_or_else(|| panic!("{r}"))
            .to_string()
    }
    async fn wait(&self, run_id: &str, want: &str) -> Value {
        wait_for_run_status(
            &self.gw.base_url(),
            run_id,
            &[want],
            Duration::from_secs(60),
            None,
        )
        .await;
        get(
            &self.gw.url(&format!("/runs/{run_id}?include=records")),
            None,
        )
        .await
        .1
    }
    /// Sequences of the letters there are.
    async fn seqs(&self) -> Vec<u64> {
        let js = self.nats.jetstream().await;
        let mut s = js.get_stream("PYOCO_DLQ").await.unwrap();
        let st = s.info().await.unwrap().state.clone();
        let mut out = vec![];
        for seq in st.first_sequence..=st.last_sequence {
            if s.get_raw_message(seq).await.is_ok() {
                out.push(seq);
            }
        }
        out
    }
    async fn wait_seqs(&self, want: &[u64]) {
        let ok = wait_until(
            Duration::from_secs(15),
            Duration::from_millis(50),
            || async { self.seqs().await == want },
        )
        .await;
        assert!(
            ok,
            "DLQ sequences {:?}, expected {want:?}",
            self.seqs().await
        );
    }
    async fn letter(&self, seq: u64) -> Value {
        let js = self.nats.jetstream().await;
        let s = js.get_stream("PYOCO_DLQ").await.unwrap();
        serde_json::from_slice(&s.get_raw_message(seq).await.unwrap().payload).unwrap()
    }
    /// Re-publishes letter `seq` without its `job` field (as the original worker writes
    /// letters), then deletes the original letter.
    async fn strip_job(&self, seq: u64) {
        let js = self.nats.jetstream().await;
        let s = js.get_stream("PYOCO_DLQ").await.unwrap();
        let m = s.get_raw_message(seq).await.unwrap();
        let mut doc: Value = serde_json::from_slice(&m.payload).unwrap();
        assert!(
            doc.as_object_mut().unwrap().remove("job").is_some(),
            "letters of our worker carry the job"
        );
        js.publish(
            m.subject.to_string(),
            serde_json::to_vec(&doc).unwrap().into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
        assert!(s.delete_message(seq).await.unwrap());
    }
}

#[tokio::test]
async fn dlq_list_show_replay_and_purge() {
    let nats = NatsServer::start().await;
    let gw = Gateway::start(&nats.url(), &[]).await;
    gw.wait_nats_connected().await;
    let dir = TestDir::new("ctl-dlq");
    dir.write("wtasks.py", TEST_TASKS);
    dir.write("ctltasks.py", FLAKY_TASKS);
    let resolver_path = dir.write("resolver.py", RESOLVER);
    let resolver = format!("{}:resolve", resolver_path.display());
    let worker = Worker::start(
        &nats.url(),
        "dlq",
        "ctl-dlq-worker",
        dir.path(),
        &["--flow-resolver", &resolver],
        &[],
    )
    .await;
    let s = DlqStack {
        nats,
        gw,
        dir,
        _worker: worker,
    };
    let marker = |name: &str| s.dir.join(name).display().to_string();

    // 1: a flow.yaml run that fails once (letter with `job`).
    let run_a = s
        .submit_yaml(
            "flaky",
            "ctltasks:flaky",
            &format!("{{marker: \"{}\"}}", marker("marker-a")),
        )
        .await;
    assert_eq!(
        s.wait(&run_a, "FAILED").await["error"],
        "first attempt fails"
    );
    s.wait_seqs(&[1]).await;
    assert!(
        s.letter(1).await["job"]["workflow_yaml"].is_string(),
        "the YAML travels in the letter"
    );
    // 2 → 3: a resolver run that fails once; its letter made to look like the original's.
    let r: Value = http().post(s.gw.url("/runs")).json(&json!({"flow_name": "flaky_flow", "params": {"marker": marker("marker-b")}, "tag": "dlq"})).send().await.unwrap().json().await.unwrap();
    let run_b = r["run_id"].as_str().unwrap().to_string();
    s.wait(&run_b, "FAILED").await;
    s.wait_seqs(&[1, 2]).await;
    s.strip_job(2).await;
    // 4 → 5: a flow.yaml run whose letter has no `job`: cannot be rebuilt.
    let run_c = s.submit_yaml("boom", "wtasks:boom", "{}").await;
    s.wait(&run_c, "FAILED").await;
    s.wait_seqs(&[1, 3, 4]).await;
    s.strip_job(4).await;
    // 6: not a job at all.
    let js = s.nats.jetstream().await;
    js.publish("pyoco.work.dlq", "not json".into())
        .await
        .unwrap()
        .await
        .unwrap();
    s.wait_seqs(&[1, 3, 5, 6]).await;

    // list: newest first; JSON when piped.
    let out = s.ctl(&["dlq", "list"]).await;
    let list = expect_code(&out, 0).stdout_json();
    let seqs: Vec<u64> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [6, 5, 3, 1]);
    let first = &list[3];
    assert_eq!(
        (
            first["tag"].clone(),
            first["reason"].clone(),
            first["run_id"].clone(),
            first["error"].clone(),
            first["has_job"].clone(),
            first["subject"].clone()
        ),
        (
            json!("dlq"),
            json!("execution_error"),
            json!(run_a),
            json!("first attempt fails"),
            json!(true),
            json!("pyoco.dlq.dlq")
        )
    );
    assert_eq!(
        (
            list[1]["has_job"].clone(),
            list[0]["reason"].clone(),
            list[0]["run_id"].clone()
        ),
        (json!(false), json!("invalid_job"), Value::Null)
    );
    assert!(first["time"].is_f64());
    let table = s.ctl(&["--output", "table", "dlq", "list"]).await;
    let mut masked = mask_times(&expect_code(&table, 0).stdout_text());
    for (id, label) in [
        (&run_a, "<run a>"),
        (&run_b, "<run b>"),
        (&run_c, "<run c>"),
    ] {
        masked = mask_id(&masked, id, label);
    }
    golden("admin_dlq_list.txt", &masked);
    // Filters.
    let seqs_of = |out: &Output| -> Vec<u64> {
        out.stdout_json()
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["seq"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(
        seqs_of(&s.ctl(&["dlq", "list", "--reason", "invalid_job"]).await),
        [6]
    );
    assert_eq!(
        seqs_of(
            &s.ctl(&["dlq", "list", "--tag", "dlq", "--limit", "2"])
                .await
        ),
        [6, 5]
    );
    assert_eq!(
        seqs_of(&s.ctl(&["dlq", "list", "--tag", "other"]).await),
        Vec::<u64>::new()
    );
    assert_eq!(
        s.ctl(&["--output", "table", "dlq", "list", "--tag", "other"])
            .await
            .stdout_text(),
        "(no dead letters)\n"
    );
    expect_code(&s.ctl(&["dlq", "list", "--tag", "a.b"]).await, 2);

    // show: the message as stored.
    let out = s.ctl(&["dlq", "show", "1"]).await;
    assert_eq!(expect_code(&out, 0).stdout_json(), s.letter(1).await);
    let out = s.ctl(&["--output", "table", "dlq", "show", "3"]).await;
    assert_eq!(
        serde_json::from_str::<Value>(&expect_code(&out, 0).stdout_text()).unwrap(),
        s.letter(3).await,
        "pretty form is the same JSON"
    );
    let out = s.ctl(&["dlq", "show", "2"]).await;
    let err = expect_code(&out, 1).stderr_text();
    assert!(
        err.contains("no dead letter with sequence 2") && err.contains("dlq list"),
        "{err}"
    );

    // Letters that cannot be replayed say why and what to do.
    let out = s.ctl(&["dlq", "replay", "6"]).await;
    let err = expect_code(&out, 1).stderr_text();
    assert!(
        err.contains("invalid_job") && err.contains("nothing to queue again"),
        "{err}"
    );
    let out = s.ctl(&["dlq", "replay", "5"]).await;
    let err = expect_code(&out, 1).stderr_text();
    assert!(
        err.contains("flow.yaml")
            && err.contains(
                "pyococtl run submit-yaml --workflow-file flow.yaml --flow-name main --tag dlq"
            ),
        "{err}"
    );
    assert_eq!(s.seqs().await, [1, 3, 5, 6], "refused letters stay");
    expect_code(&s.ctl(&["dlq", "replay"]).await, 2);
    expect_code(&s.ctl(&["dlq", "replay", "1", "--all"]).await, 2);
    expect_code(&s.ctl(&["dlq", "replay", "1", "--tag", "dlq"]).await, 2);

    // Replay through the letter's job (a flow.yaml run): the run runs again and completes.
    let out = s.ctl(&["dlq", "replay", "1"]).await;
    let v = expect_code(&out, 0).stdout_json();
    assert_eq!(
        v,
        json!({"seq": 1, "run_id": run_a, "tag": "dlq", "subject": "pyoco.work.dlq", "msg_id": format!("{run_a}-replay-1"),
               "source": "job", "replay_count": 1, "dlq_deleted": true})
    );
    let done = s.wait(&run_a, "COMPLETED").await;
    assert_eq!(done["tasks"], json!({"flaky": "SUCCEEDED"}), "{done}");
    assert_eq!(done["task_records"]["flaky"]["output"], "ok");
    assert_eq!(
        (
            done["replay_count"].clone(),
            done["replayed_from_dlq_seq"].clone()
        ),
        (json!(1), json!(1))
    );
    assert!(
        done["replayed_at"].as_f64().unwrap() <= done["start_time"].as_f64().unwrap(),
        "{done}"
    );
    assert_eq!(done["error"], Value::Null);
    assert!(
        done["workflow_yaml_sha256"].is_string(),
        "still a flow.yaml run: {done}"
    );
    expect_code(&s.ctl(&["dlq", "show", "1"]).await, 1);

    // Replay rebuilt from the letter and the snapshot (a letter of the original worker).
    let out = s.ctl(&["--output", "table", "dlq", "replay", "3"]).await;
    let line = expect_code(&out, 0).stdout_text();
    assert_eq!(
        line,
        format!("replayed dead letter 3: run {run_b} queued again on pyoco.work.dlq (replay 1, from the letter and run snapshot)\n")
    );
    let done = s.wait(&run_b, "COMPLETED").await;
    assert_eq!(
        done["task_records"]["flaky"]["inputs"],
        json!({"marker": marker("marker-b")}),
        "params kept: {done}"
    );
    assert_eq!(done["flow_name"], "flaky_flow");
    assert_eq!(s.seqs().await, [5, 6]);

    // --all: a letter for a COMPLETED run and the two refused ones are skipped, another failed run replayed.
    js.publish("pyoco.dlq.dlq", serde_json::to_vec(&json!({"reason": "execution_error", "error": "old", "timestamp": 1.0, "run_id": run_a, "flow_name": "main", "tag": "dlq"})).unwrap().into())
        .await.unwrap().await.unwrap();
    let run_d = s
        .submit_yaml(
            "flaky",
            "ctltasks:flaky",
            &format!("{{marker: \"{}\"}}", marker("marker-d")),
        )
        .await;
    s.wait(&run_d, "FAILED").await;
    s.wait_seqs(&[5, 6, 7, 8]).await;
    let out = s.ctl(&["dlq", "replay", "--all", "--tag", "dlq"]).await;
    let v = expect_code(&out, 0).stdout_json();
    assert_eq!(
        v["replayed"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["seq"].clone())
            .collect::<Vec<_>>(),
        [json!(8)],
        "{v}"
    );
    assert_eq!(v["replayed"][0]["run_id"], json!(run_d));
    assert_eq!(
        v["skipped"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["seq"].clone())
            .collect::<Vec<_>>(),
        [json!(5), json!(6), json!(7)],
        "{v}"
    );
    assert!(
        v["skipped"][2]["why"]
            .as_str()
            .unwrap()
            .contains("COMPLETED"),
        "{v}"
    );
    assert_eq!(v["failed"], json!([]));
    s.wait(&run_d, "COMPLETED").await;
    assert_eq!(s.seqs().await, [5, 6, 7]);
    let out = s
        .ctl(&[
            "--output",
            "table",
            "dlq",
            "replay",
            "--all",
            "--reason",
            "nothing-like-this",
        ])
        .await;
    assert_eq!(
        expect_code(&out, 0).stdout_text(),
        "0 replayed, 0 skipped, 0 failed\n"
    );

    // purge: refused without --confirm (exit 2, says how many), then by reason, then all.
    let out = s.ctl(&["dlq", "purge"]).await;
    let err = expect_code(&out, 2).stderr_text();
    assert!(
        err.contains("--confirm") && err.contains("would delete 3 dead letter(s)"),
        "{err}"
    );
    let out = s.ctl(&["dlq", "purge", "--reason", "invalid_job"]).await;
    assert!(expect_code(&out, 2)
        .stderr_text()
        .contains("would delete 1 dead letter(s) (matching reason invalid_job)"));
    assert_eq!(s.seqs().await, [5, 6, 7]);
    let out = s
        .ctl(&["dlq", "purge", "--confirm", "--reason", "invalid_job"])
        .await;
    assert_eq!(
        expect_code(&out, 0).stdout_json(),
        json!({"purged": 1, "stream": "PYOCO_DLQ", "tag": null, "reason": "invalid_job"})
    );
    assert_eq!(s.seqs().await, [5, 7]);
    let out = s
        .ctl(&["dlq", "purge", "--confirm", "--tag", "other"])
        .await;
    assert_eq!(expect_code(&out, 0).stdout_json()["purged"], 0);
    let out = s
        .ctl(&["--output", "table", "dlq", "purge", "--confirm"])
        .await;
    assert_eq!(
        expect_code(&out, 0).stdout_text(),
        "purged 2 dead letter(s) from PYOCO_DLQ (all)\n"
    );
    assert_eq!(s.ctl(&["dlq", "list"]).await.stdout_text(), "[]\n");
}
