//! `pyococtl run …` against a real nats-server, our gateway and worker (real pyoco on Python
//! 3.11), and the Python original: pyoco-client (its output must be reproduced byte for byte) and
//! its gateway (whose watch stream does not end at the terminal snapshot).
//!
//! Table outputs are compared with `tests/golden/run_*.txt` (runs with fixed ids and times are
//! written straight into the runs bucket). Regenerate them with
//! `PYOCO_UPDATE_GOLDEN=1 cargo test -p pyoco-tests --test ctl_run`.
//! The live view is driven in a real terminal: tmux (a private server per test, `-L`).

use std::path::PathBuf;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use pyoco_tests::*;
use serde_json::{json, Value};
use tokio::io::AsyncBufReadExt;

// ---------------------------------------------------------------------------------------------
// helpers

/// What Python's `json.dumps(json.loads(line), ensure_ascii=True)` prints for each line: the
/// original's text.
async fn python_dumps(text: &str) -> String {
    let dir = TestDir::new("pydumps");
    let input = dir.write("in.txt", text).display().to_string();
    let script = "import json,sys\nfor l in open(sys.argv[1], encoding='utf-8').read().splitlines(): sys.stdout.write(json.dumps(json.loads(l), ensure_ascii=True) + '\\n')";
    let out = orig_venv_run("python", &["-c", script, &input], &[]).await;
    out.assert_success();
    out.stdout_text()
}

fn flow_yaml(graph: &str, tasks: &[&str], defaults: &str) -> String {
    let mut y = format!("version: 1\nflow:\n  graph: |\n    {graph}\n");
    if !defaults.is_empty() {
        y.push_str(&format!("  defaults: {defaults}\n"));
    }
    y.push_str("tasks:\n");
    for t in tasks {
        y.push_str(&format!("  {t}: {{callable: \"wtasks:{t}\"}}\n"));
    }
    y
}

fn lines(out: &Output) -> Vec<String> {
    out.stdout_text().lines().map(String::from).collect()
}

fn json_line(line: &str) -> Value {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
}

/// The run status in a `{"event": "snapshot", "data": {...}}` line.
fn event_status(line: &str) -> Option<String> {
    json_line(line)["data"]["snapshot"]["status"]
        .as_str()
        .map(String::from)
}

struct Stack {
    nats: NatsServer,
    gw: Gateway,
    dir: TestDir,
    workers: Vec<Worker>,
}

impl Stack {
    async fn new(env: &[(&str, &str)]) -> Stack {
        let nats = NatsServer::start().await;
        let gw = Gateway::start(&nats.url(), env).await;
        gw.wait_nats_connected().await;
        let dir = TestDir::new("ctl-run");
        dir.write("wtasks.py", TEST_TASKS);
        Stack {
            nats,
            gw,
            dir,
            workers: Vec::new(),
        }
    }

    async fn worker(&mut self, tag: &str, extra: &[&str]) {
        let w = Worker::start(
            &self.nats.url(),
            tag,
            &unique("w"),
            self.dir.path(),
            extra,
            &[],
        )
        .await;
        self.workers.push(w);
    }

    fn base(&self) -> String {
        self.gw.base_url()
    }

    async fn ctl(&self, args: &[&str]) -> Output {
        let base = self.base();
        let mut all = vec!["--server", base.as_str()];
        all.extend_from_slice(args);
        run_workspace_bin("pyococtl", &all, &[]).await
    }

    /// Writes a flow file and returns its path.
    fn flow(&self, name: &str, graph: &str, tasks: &[&str], defaults: &str) -> String {
        self.dir
            .write(name, flow_yaml(graph, tasks, defaults))
            .display()
            .to_string()
    }

    /// `run submit-yaml` → run_id.
    async fn submit_yaml(&self, file: &str, tag: &str) -> String {
        let out = self
            .ctl(&[
                "run",
                "submit-yaml",
                "--workflow-file",
                file,
                "--flow-name",
                "main",
                "--tag",
                tag,
            ])
            .await;
        expect_code(&out, 0);
        out.stdout_json()["run_id"].as_str().unwrap().to_string()
    }

    async fn wait_status(&self, id: &str, want: &[&str]) -> Value {
        wait_for_run_status(&self.base(), id, want, Duration::from_secs(60), None).await
    }

    /// Waits until `task` of the run is RUNNING (a cancel before that ends the run at once).
    async fn wait_task_running(&self, id: &str, task: &str) {
        wait_task_running(&self.base(), id, task).await
    }
}

async fn wait_task_running(base: &str, id: &str, task: &str) {
    let ok = wait_until(
        Duration::from_secs(60),
        Duration::from_millis(50),
        || async { get_run(base, id, None).await.1["tasks"][task] == "RUNNING" },
    )
    .await;
    assert!(
        ok,
        "task {task} of run {id} never RUNNING: {}",
        get_run(base, id, None).await.1
    );
}

/// `pyococtl` started in the background with stdout and stderr captured line by line.
struct Bg {
    child: tokio::process::Child,
    stdout: tokio::sync::mpsc::UnboundedReceiver<String>,
    stderr: tokio::task::JoinHandle<String>,
    seen: Vec<String>,
}

impl Bg {
    fn spawn(args: &[&str]) -> Bg {
        let mut std_cmd = std::process::Command::new(bin_path("pyococtl"));
        std_cmd.args(args).env("PYOCO_LOAD_DOTENV", "0");
        scrub_pyoco_env(&mut std_cmd);
        let mut cmd = tokio::process::Command::from(std_cmd);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("spawn pyococtl");
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let mut out = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        tokio::spawn(async move {
            while let Ok(Some(l)) = out.next_line().await {
                let _ = tx.send(l);
            }
        });
        let mut err = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let stderr = tokio::spawn(async move {
            let mut all = String::new();
            while let Ok(Some(l)) = err.next_line().await {
                all.push_str(&l);
                all.push('\n');
            }
            all
        });
        Bg {
            child,
            stdout: rx,
            stderr,
            seen: Vec::new(),
        }
    }

    /// Reads stdout lines until one satisfies `pred`; panics after `timeout`.
    async fn wait_line(&mut self, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.stdout.recv()).await {
                Ok(Some(l)) => {
                    self.seen.push(l.clone());
                    if pred(&l) {
                        return l;
                    }
                }
                Ok(None) => panic!(
                    "pyococtl closed stdout; lines so far:\n{}",
                    self.seen.join("\n")
                ),
                Err(_) => panic!(
                    "no matching line within {timeout:?}; lines so far:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Waits for the exit; returns (code, all stdout lines, stderr).
    async fn finish(mut self, timeout: Duration) -> (Option<i32>, Vec<String>, String) {
        let status = tokio::time::timeout(timeout, self.child.wait())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "pyococtl still running after {timeout:?}; lines:\n{}",
                    self.seen.join("\n")
                )
            })
            .unwrap();
        while let Some(l) = self.stdout.recv().await {
            self.seen.push(l);
        }
        let stderr = self.stderr.await.unwrap();
        (status.code(), self.seen, stderr)
    }
}

/// A private tmux server with one 120x30 session running `command`; killed (and its socket
/// file removed) on drop.
struct Tmux {
    socket: String,
    socket_path: Option<PathBuf>,
}

impl Tmux {
    fn start(command: &str) -> Tmux {
        let socket = unique("pyococtl-tmux");
        let st = std::process::Command::new("tmux")
            .args([
                "-L",
                &socket,
                "-f",
                "/dev/null",
                "new-session",
                "-d",
                "-x",
                "120",
                "-y",
                "30",
                command,
            ])
            .status()
            .expect("tmux is installed (scripts/setup-test-env.sh installs it)");
        assert!(st.success(), "tmux new-session failed");
        let path = std::process::Command::new("tmux")
            .args(["-L", &socket, "display-message", "-p", "#{socket_path}"])
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .filter(|p| !p.is_empty())
            .map(PathBuf::from);
        Tmux {
            socket,
            socket_path: path,
        }
    }

    fn capture(&self) -> String {
        let out = std::process::Command::new("tmux")
            .args(["-L", &self.socket, "capture-pane", "-p"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Polls the screen until `pred` holds; panics with the screen after `timeout`.
    async fn wait_for(&self, timeout: Duration, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let screen = self.capture();
            if pred(&screen) {
                return screen;
            }
            if Instant::now() >= deadline {
                panic!("the terminal never showed {what} within {timeout:?}; screen:\n{screen}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = std::process::Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .status();
        if let Some(p) = &self.socket_path {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// The screen line that starts (after spaces) with `prefix`.
fn screen_line<'a>(screen: &'a str, prefix: &str) -> Option<&'a str> {
    screen.lines().find(|l| l.trim_start().starts_with(prefix))
}

fn tmux_command(args: &[&str]) -> String {
    format!(
        "env -u PYOCO_API_KEY -u PYOCO_CONFIG -u PYOCO_SERVER PYOCO_LOAD_DOTENV=0 {} {}; echo \"[exit $?]\"; sleep 600",
        bin_path("pyococtl").display(),
        args.join(" ")
    )
}

// ---------------------------------------------------------------------------------------------
// submit, get, tasks, list: pyoco-client's output byte for byte

#[tokio::test]
async fn submit_get_tasks_list_print_what_pyoco_client_prints() {
    let mut s = Stack::new(&[]).await;
    s.worker("ctl", &[]).await;

    // Params: file < --params < --param; --tags; the Idempotency-Key header; timeout_sec.
    let pfile = s
        .dir
        .write("p.yaml", "a: 1\nb: file\nc: file\nnested: {k: [1, 2.5]}\n")
        .display()
        .to_string();
    let submit = [
        "run",
        "submit",
        "--flow-name",
        "report",
        "--tag",
        "idle",
        "--params-file",
        &pfile,
        "--params",
        r#"{"b": "params", "c": "params"}"#,
        "--param",
        "c=3",
        "--param",
        "d=",
        "--param",
        "e=hello",
        "--param",
        "f=[1, 2]",
        "--param",
        "g=\"é\"",
        "--tags",
        "x, y,,",
        "--idempotency-key",
        "ctl-run-k1",
        "--timeout-sec",
        "30",
    ];
    let out = s.ctl(&submit).await;
    let text = expect_code(&out, 0).stdout_text();
    assert!(
        text.starts_with("{\"run_id\": \"") && text.ends_with("\", \"status\": \"PENDING\"}\n"),
        "{text}"
    );
    let id = out.stdout_json()["run_id"].as_str().unwrap().to_string();
    let snap = get_run(&s.base(), &id, None).await.1;
    assert_eq!(
        snap["params"],
        json!({"a": 1, "b": "params", "c": 3, "nested": {"k": [1, 2.5]}, "d": "", "e": "hello", "f": [1, 2], "g": "é"})
    );
    assert_eq!(snap["tags"], json!(["x", "y"]));
    assert_eq!(
        (snap["tag"].as_str(), snap["flow_name"].as_str()),
        (Some("idle"), Some("report"))
    );
    // The same Idempotency-Key: the same run, no second one.
    let again = s.ctl(&submit).await;
    assert_eq!(expect_code(&again, 0).stdout_json()["run_id"], json!(id));

    // submit-yaml, followed to the end.
    let ok = s.flow(
        "ok.yaml",
        "add_one >> to_text",
        &["add_one", "to_text"],
        "{x: 1}",
    );
    let done = s.submit_yaml(&ok, "ctl").await;
    expect_code(
        &s.ctl(&["run", "watch", &done, "--until-terminal"]).await,
        0,
    );
    assert_eq!(
        get_run(&s.base(), &done, None).await.1["status"],
        "COMPLETED"
    );

    // Same commands, same gateway: the same bytes as pyoco-client.
    let pairs: Vec<(Vec<&str>, Vec<&str>)> = vec![
        (vec!["get", &done], vec!["get", &done]),
        (
            vec!["get", &done, "--records"],
            vec!["get", &done, "--records"],
        ),
        (vec!["get", &id], vec!["get", &id]),
        (vec!["tasks", &done], vec!["tasks", &done]),
        (vec!["list"], vec!["list"]),
        (
            vec!["list", "--status", "COMPLETED", "--full"],
            vec!["list", "--status", "COMPLETED", "--full"],
        ),
        (vec!["list", "--limit", "1"], vec!["list", "--limit", "1"]),
        (
            vec!["--output", "table", "list"],
            vec!["list", "--output", "table"],
        ),
        (
            vec!["list", "--updated-after", "0", "--limit", "1"],
            vec!["list-vnext", "--updated-after", "0", "--limit", "1"],
        ),
        (
            vec![
                "--output",
                "table",
                "list",
                "--updated-after",
                "0",
                "--limit",
                "1",
            ],
            vec![
                "list-vnext",
                "--updated-after",
                "0",
                "--limit",
                "1",
                "--output",
                "table",
            ],
        ),
    ];
    for (ours, theirs) in pairs {
        let mut a = vec!["run"];
        a.extend(ours.iter().copied());
        let mine = s.ctl(&a).await;
        let orig = orig_client(&s.base(), &theirs, &[]).await;
        assert_eq!(
            expect_code(&mine, 0).stdout_text(),
            expect_code(&orig, 0).stdout_text(),
            "pyococtl run {ours:?} vs pyoco-client {theirs:?}"
        );
    }
    // And what Python's json.dumps makes of it (non-ASCII escaped, `, ` and `: `).
    let get = s.ctl(&["run", "get", &id]).await.stdout_text();
    assert!(get.contains(r#""g": "\u00e9""#), "{get}");
    assert_eq!(python_dumps(&get).await, get);

    // --all: every page, in the form of the first request.
    let all = s.ctl(&["run", "list", "--all", "--limit", "1"]).await;
    let all = expect_code(&all, 0).stdout_json();
    assert_eq!(all.as_array().map(Vec::len), Some(2), "{all}");
    let all = s
        .ctl(&[
            "run",
            "list",
            "--all",
            "--limit",
            "1",
            "--updated-after",
            "0",
        ])
        .await;
    let all = expect_code(&all, 0).stdout_json();
    assert_eq!(
        (all["items"].as_array().map(Vec::len), &all["next_cursor"]),
        (Some(2), &Value::Null),
        "{all}"
    );
}

// ---------------------------------------------------------------------------------------------
// errors

#[tokio::test]
async fn errors_say_what_to_fix_and_exit_with_the_documented_codes() {
    let s = Stack::new(&[]).await;
    let list_file = s.dir.write("list.yaml", "- 1\n- 2\n").display().to_string();
    let missing = s.dir.join("missing.yaml").display().to_string();
    let bad_yaml = s
        .dir
        .write("bad.yaml", "version: 1\n")
        .display()
        .to_string();

    let usage: Vec<(Vec<&str>, String)> = vec![
        (
            vec!["run", "submit", "--param", "x"],
            "--param must be key=value ('x')".into(),
        ),
        (
            vec!["run", "submit", "--param", "=1"],
            "--param key is empty ('=1')".into(),
        ),
        (
            vec!["run", "submit", "--params", "[1]"],
            "--params must be a JSON object, not a list".into(),
        ),
        (
            vec!["run", "submit", "--params", "{x"],
            "--params must be a valid JSON object".into(),
        ),
        (
            vec!["run", "submit", "--params-file", &missing],
            format!("cannot read --params-file {missing}"),
        ),
        (
            vec!["run", "submit", "--params-file", &list_file],
            "--params-file must contain an object (mapping) at the top level".into(),
        ),
        (
            vec!["run", "submit", "--tag", "a.b"],
            "--tag must be letters, digits, '_' or '-' ('a.b')".into(),
        ),
        (
            vec!["run", "submit", "--timeout-sec", "0"],
            "--timeout-sec must be a number of seconds > 0".into(),
        ),
        (
            vec![
                "run",
                "submit-yaml",
                "--workflow-file",
                &missing,
                "--flow-name",
                "main",
            ],
            format!("cannot read --workflow-file {missing}"),
        ),
        (
            vec!["run", "cancel"],
            "the run to cancel is missing (RUN_ID or --run-id)".into(),
        ),
        (
            vec!["run", "cancel", "a", "--run-id", "b"],
            "two different runs given".into(),
        ),
        (
            vec!["--output", "table", "run", "get", "x"],
            "run get prints JSON only".into(),
        ),
        (
            vec!["--output", "status", "run", "list"],
            "run list prints json or table".into(),
        ),
    ];
    for (args, reason) in usage {
        let out = s.ctl(&args).await;
        expect_code(&out, 2);
        let err = out.stderr_text();
        assert!(
            err.starts_with("ERR-PYOCO-0018: invalid command-line input"),
            "{args:?}: {err}"
        );
        assert!(
            err.contains(&format!("- reason: {reason}")),
            "{args:?}: {err}"
        );
        assert!(err.contains("- example: pyococtl "), "{args:?}: {err}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
    // clap's own checks: exit 2 too.
    expect_code(&s.ctl(&["run", "list", "--limit", "0"]).await, 2);
    expect_code(
        &s.ctl(&["run", "submit-yaml", "--flow-name", "main"]).await,
        2,
    );
    expect_code(&s.ctl(&["run", "watch"]).await, 2);

    // The gateway's refusals: status and detail, exit 1.
    let out = s
        .ctl(&[
            "run",
            "submit-yaml",
            "--workflow-file",
            &bad_yaml,
            "--flow-name",
            "main",
        ])
        .await;
    assert!(
        expect_code(&out, 1)
            .stderr_text()
            .contains("- reason: HTTP 422 POST /runs/yaml: invalid workflow yaml"),
        "{}",
        out.stderr_text()
    );
    for (args, path) in [
        (vec!["run", "get", "no-such-run"], "GET /runs/no-such-run"),
        (
            vec!["run", "tasks", "no-such-run"],
            "GET /runs/no-such-run/tasks",
        ),
        (
            vec!["run", "watch", "no-such-run"],
            "GET /runs/no-such-run/watch",
        ),
        (
            vec!["run", "cancel", "no-such-run"],
            "POST /runs/no-such-run/cancel",
        ),
        (
            vec!["run", "cancel", "--run-id", "no-such-run", "--wait"],
            "POST /runs/no-such-run/cancel",
        ),
    ] {
        let out = s.ctl(&args).await;
        let err = expect_code(&out, 1).stderr_text();
        assert!(
            err.contains(&format!("- reason: HTTP 404 {path}: run not found")),
            "{args:?}: {err}"
        );
    }

    // Nobody listening: the URL is named, at once (watch does not retry a first connection).
    let dead = format!("http://127.0.0.1:{}", free_port());
    for args in [
        vec!["run", "get", "x"],
        vec!["run", "watch", "x", "--until-terminal"],
        vec!["run", "submit"],
        vec!["run", "list", "--all"],
    ] {
        let t0 = Instant::now();
        let mut all = vec!["--server", dead.as_str()];
        all.extend(args.iter().copied());
        let out = run_workspace_bin("pyococtl", &all, &[]).await;
        let err = expect_code(&out, 1).stderr_text();
        assert!(
            err.contains(&format!("cannot connect to the gateway at {dead}")),
            "{args:?}: {err}"
        );
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "{args:?} took {:?}",
            t0.elapsed()
        );
    }

    // --help: every subcommand shows an example.
    for sub in [
        "submit",
        "submit-yaml",
        "get",
        "tasks",
        "list",
        "watch",
        "cancel",
    ] {
        let out = s.ctl(&["run", sub, "--help"]).await;
        let text = expect_code(&out, 0).stdout_text();
        assert!(
            text.contains("Example") && text.contains(&format!("pyococtl run {sub}")),
            "run {sub} --help:\n{text}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// list tables (golden files)

fn fixed_run(
    n: u32,
    flow: &str,
    tag: &str,
    status: &str,
    updated_at: f64,
    error: Value,
) -> (String, Value) {
    let id = format!("00000000-0000-4000-8000-00000000000{n}");
    let doc = json!({
        "run_id": id, "flow_name": flow, "tag": tag, "tags": [tag], "tenant_id": null, "api_key_id": null,
        "status": status, "params": {}, "tasks": {}, "task_records": {}, "start_time": null, "end_time": null,
        "heartbeat_at": updated_at, "updated_at": updated_at, "error": error
    });
    (id, doc)
}

#[tokio::test]
async fn list_tables_match_the_golden_files_and_pyoco_client() {
    // Fixed times from 2026: keep them, retention off.
    let s = Stack::new(&[("PYOCO_RUN_RETENTION_SEC", "0")]).await;
    let empty = s.ctl(&["--output", "table", "run", "list"]).await;
    golden(
        "run_list_table_empty.txt",
        &expect_code(&empty, 0).stdout_text(),
    );
    assert_eq!(s.ctl(&["run", "list"]).await.stdout_text(), "[]\n");
    assert_eq!(
        s.ctl(&["run", "list", "--updated-after", "0"])
            .await
            .stdout_text(),
        "{\"items\": [], \"next_cursor\": null}\n"
    );

    let kv = s
        .nats
        .jetstream()
        .await
        .get_key_value("pyoco_runs")
        .await
        .unwrap();
    let runs = [
        fixed_run(
            1,
            "report",
            "default",
            "COMPLETED",
            1795813674.581129,
            Value::Null,
        ),
        fixed_run(
            2,
            "hello",
            "gpu",
            "FAILED",
            1795813680.25,
            json!("ValueError: boom!"),
        ),
        fixed_run(
            3,
            "a-much-longer-flow-name",
            "default",
            "RUNNING",
            1795813690.0,
            Value::Null,
        ),
        fixed_run(
            4,
            "report",
            "nightly_batch",
            "CANCELLED",
            1795813600.0000002,
            Value::Null,
        ),
    ];
    for (id, doc) in &runs {
        kv.put(id.as_str(), serde_json::to_vec(doc).unwrap().into())
            .await
            .unwrap();
    }
    let listed = wait_until(
        Duration::from_secs(10),
        Duration::from_millis(50),
        || async {
            s.ctl(&["run", "list"])
                .await
                .stdout_json()
                .as_array()
                .map(Vec::len)
                == Some(4)
        },
    )
    .await;
    assert!(listed, "the gateway never listed the 4 runs");

    let cases: Vec<(&str, Vec<&str>, Vec<&str>)> = vec![
        (
            "run_list_table.txt",
            vec!["list"],
            vec!["list", "--output", "table"],
        ),
        (
            "run_list_table_filtered.txt",
            vec!["list", "--tag", "default"],
            vec!["list", "--tag", "default", "--output", "table"],
        ),
        (
            "run_list_table_page.txt",
            vec!["list", "--updated-after", "0", "--limit", "2"],
            vec![
                "list-vnext",
                "--updated-after",
                "0",
                "--limit",
                "2",
                "--output",
                "table",
            ],
        ),
        (
            "run_list_table_none.txt",
            vec!["list", "--status", "PENDING"],
            vec!["list", "--status", "PENDING", "--output", "table"],
        ),
    ];
    for (file, ours, theirs) in cases {
        let mut a = vec!["--output", "table", "run"];
        a.extend(ours.iter().copied());
        let mine = expect_code(&s.ctl(&a).await, 0).stdout_text();
        golden(file, &mine);
        let orig = orig_client(&s.base(), &theirs, &[]).await;
        assert_eq!(
            mine,
            expect_code(&orig, 0).stdout_text(),
            "{file}: pyococtl vs pyoco-client"
        );
    }
    // The next page, by the printed cursor.
    let page = s
        .ctl(&[
            "--output",
            "table",
            "run",
            "list",
            "--updated-after",
            "0",
            "--limit",
            "2",
        ])
        .await
        .stdout_text();
    let cursor = page
        .lines()
        .find_map(|l| l.strip_prefix("next_cursor: "))
        .expect("a next_cursor line")
        .to_string();
    let next = s
        .ctl(&[
            "--output", "table", "run", "list", "--cursor", &cursor, "--limit", "2",
        ])
        .await;
    golden(
        "run_list_table_page2.txt",
        &expect_code(&next, 0).stdout_text(),
    );
    // --all in both JSON forms, and as a table (no next_cursor line at the end).
    golden(
        "run_list_all.json",
        &expect_code(&s.ctl(&["run", "list", "--all", "--limit", "1"]).await, 0).stdout_text(),
    );
    golden(
        "run_list_all_page.json",
        &expect_code(
            &s.ctl(&[
                "run",
                "list",
                "--all",
                "--limit",
                "3",
                "--updated-after",
                "0",
            ])
            .await,
            0,
        )
        .stdout_text(),
    );
    let table_all = s
        .ctl(&[
            "--output",
            "table",
            "run",
            "list",
            "--all",
            "--limit",
            "1",
            "--updated-after",
            "0",
        ])
        .await;
    assert_eq!(
        expect_code(&table_all, 0).stdout_text(),
        std::fs::read_to_string(workspace_root().join("tests/golden/run_list_table.txt")).unwrap()
    );
}

// ---------------------------------------------------------------------------------------------
// watch

#[tokio::test]
async fn watch_outputs_and_exit_codes() {
    let mut s = Stack::new(&[]).await;
    s.worker("wt", &["--cancel-kill-after", "1"]).await;
    let ok = s.flow(
        "ok.yaml",
        "add_one >> to_text",
        &["add_one", "to_text"],
        "{x: 1}",
    );
    let boom = s.flow("boom.yaml", "add_one >> boom", &["add_one", "boom"], "");
    let hang = s.flow("hang.yaml", "hang", &["hang"], "");

    // COMPLETED → 0; one {"event", "data"} line per event, as pyoco-client prints them.
    let id = s.submit_yaml(&ok, "wt").await;
    let out = s
        .ctl(&[
            "run",
            "watch",
            &id,
            "--until-terminal",
            "--timeout-sec",
            "60",
        ])
        .await;
    let ls = lines(expect_code(&out, 0));
    for l in &ls {
        let v = json_line(l);
        assert_eq!(
            v.as_object().unwrap().keys().collect::<Vec<_>>(),
            ["event", "data"],
            "{l}"
        );
        assert!(
            ["snapshot", "heartbeat"].contains(&v["event"].as_str().unwrap()),
            "{l}"
        );
        assert_eq!(v["data"]["run_id"], json!(id));
    }
    assert_eq!(
        event_status(ls.last().unwrap()).as_deref(),
        Some("COMPLETED")
    );
    assert!(
        json_line(ls.last().unwrap())["data"]["snapshot"]
            .get("task_records")
            .is_none(),
        "no records without --records"
    );
    assert_eq!(python_dumps(&out.stdout_text()).await, out.stdout_text());
    // --records; --output status; --max-events.
    let rec = s.ctl(&["run", "watch", &id, "--records"]).await;
    let l = lines(expect_code(&rec, 0));
    assert_eq!(
        l.len(),
        1,
        "a finished run: its terminal snapshot, then the end"
    );
    assert_eq!(
        json_line(&l[0])["data"]["snapshot"]["task_records"]["to_text"]["output"],
        "v=2"
    );
    let st = s.ctl(&["--output", "status", "run", "watch", &id]).await;
    let st = expect_code(&st, 0).stdout_text();
    let fields: Vec<&str> = st.trim_end().split('\t').collect();
    assert_eq!(fields[1..], ["snapshot", "COMPLETED", id.as_str()], "{st}");
    assert!(fields[0].parse::<f64>().unwrap() > 1.7e9, "{st}");

    // FAILED → 3 with --until-terminal, 0 without (the watch still ends at the terminal snapshot).
    let failed = s.submit_yaml(&boom, "wt").await;
    let out = s.ctl(&["run", "watch", &failed, "--until-terminal"]).await;
    assert_eq!(
        event_status(lines(expect_code(&out, 3)).last().unwrap()).as_deref(),
        Some("FAILED")
    );
    expect_code(&s.ctl(&["run", "watch", &failed]).await, 0);

    // Still running: --timeout-sec ends the watch, 5 with --until-terminal, 0 without.
    let hung = s.submit_yaml(&hang, "wt").await;
    s.wait_task_running(&hung, "hang").await;
    let t0 = Instant::now();
    let out = s
        .ctl(&[
            "run",
            "watch",
            &hung,
            "--until-terminal",
            "--timeout-sec",
            "2",
        ])
        .await;
    let err = expect_code(&out, 5).stderr_text();
    assert!(
        err.starts_with("ERR-PYOCO-WATCH: timeout")
            && err.contains(&format!(
                "run {hung} is still RUNNING after --timeout-sec 2"
            )),
        "{err}"
    );
    assert!(t0.elapsed() < Duration::from_secs(6), "{:?}", t0.elapsed());
    let t0 = Instant::now();
    let out = s
        .ctl(&[
            "--output",
            "status",
            "run",
            "watch",
            &hung,
            "--timeout-sec",
            "2",
        ])
        .await;
    assert!(
        lines(expect_code(&out, 0))
            .iter()
            .all(|l| l.contains("\tRUNNING\t") || l.contains("\theartbeat\t-\t")),
        "{}",
        out.stdout_text()
    );
    assert!(
        t0.elapsed() >= Duration::from_secs(2) && t0.elapsed() < Duration::from_secs(7),
        "{:?}",
        t0.elapsed()
    );
    let out = s.ctl(&["run", "watch", &hung, "--max-events", "1"]).await;
    assert_eq!(lines(expect_code(&out, 0)).len(), 1);

    // CANCELLED → 4.
    let bg = Bg::spawn(&[
        "--server",
        &s.base(),
        "run",
        "watch",
        &hung,
        "--until-terminal",
        "--timeout-sec",
        "60",
    ]);
    let c = s.ctl(&["run", "cancel", &hung]).await;
    assert_eq!(expect_code(&c, 0).stdout_json()["status"], "CANCELLING");
    let (code, ls, err) = bg.finish(Duration::from_secs(30)).await;
    assert_eq!(code, Some(4), "stderr: {err}");
    assert_eq!(
        event_status(ls.last().unwrap()).as_deref(),
        Some("CANCELLED")
    );
}

#[tokio::test]
async fn watch_resumes_with_last_event_id_after_the_gateway_restarts() {
    let nats = NatsServer::start().await;
    let mut gw = Gateway::start(&nats.url(), &[]).await;
    gw.wait_nats_connected().await;
    let dir = TestDir::new("ctl-run-resume");
    dir.write("wtasks.py", TEST_TASKS);
    let _w = Worker::start(&nats.url(), "rs", &unique("w"), dir.path(), &[], &[]).await;
    let flow = dir.write(
        "f.yaml",
        flow_yaml(
            "add_one >> slow >> after",
            &["add_one", "slow", "after"],
            "{seconds: 5}",
        ),
    );
    let base = gw.base_url();
    let out = run_workspace_bin(
        "pyococtl",
        &[
            "--server",
            &base,
            "run",
            "submit-yaml",
            "--workflow-file",
            &flow.display().to_string(),
            "--flow-name",
            "main",
            "--tag",
            "rs",
        ],
        &[],
    )
    .await;
    let id = expect_code(&out, 0).stdout_json()["run_id"]
        .as_str()
        .unwrap()
        .to_string();

    let mut bg = Bg::spawn(&[
        "--server",
        &base,
        "run",
        "watch",
        &id,
        "--until-terminal",
        "--timeout-sec",
        "90",
    ]);
    bg.wait_line(Duration::from_secs(30), |l| {
        json_line(l)["data"]["snapshot"]["tasks"]["slow"].as_str() == Some("RUNNING")
    })
    .await;
    // A crash: the connection drops mid-run; the same port comes back a moment later.
    let port = gw.port();
    gw.daemon().kill();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut gw2 = Gateway::spawn_on_port(port, &nats.url(), &[], &[]);
    gw2.wait_healthy().await;

    let (code, ls, err) = bg.finish(Duration::from_secs(60)).await;
    assert_eq!(code, Some(0), "stderr:\n{err}\nstdout:\n{}", ls.join("\n"));
    assert_eq!(
        event_status(ls.last().unwrap()).as_deref(),
        Some("COMPLETED")
    );
    assert!(
        err.contains("reconnected (Last-Event-ID: "),
        "a note about the drop and the resume point:\n{err}"
    );
    // Resumed, not restarted: no snapshot shown twice in a row.
    let snaps: Vec<Value> = ls
        .iter()
        .map(|l| json_line(l))
        .filter(|v| v["event"] == "snapshot")
        .map(|v| v["data"]["snapshot"].clone())
        .collect();
    for pair in snaps.windows(2) {
        assert_ne!(pair[0], pair[1], "a snapshot repeated after the reconnect");
    }
    let ups: Vec<f64> = snaps
        .iter()
        .map(|s| s["updated_at"].as_f64().unwrap())
        .collect();
    assert!(ups.windows(2).all(|w| w[0] <= w[1]), "{ups:?}");
}

#[tokio::test]
async fn submit_watch_ends_with_the_runs_outcome() {
    let mut s = Stack::new(&[]).await;
    s.worker("sw", &[]).await;
    let ok = s.flow(
        "ok.yaml",
        "add_one >> to_text",
        &["add_one", "to_text"],
        "{x: 1}",
    );
    let boom = s.flow("boom.yaml", "add_one >> boom", &["add_one", "boom"], "");

    let out = s
        .ctl(&[
            "run",
            "submit-yaml",
            "--workflow-file",
            &ok,
            "--flow-name",
            "main",
            "--tag",
            "sw",
            "--watch",
        ])
        .await;
    let ls = lines(expect_code(&out, 0));
    let first = json_line(&ls[0]);
    assert_eq!(
        first["status"], "PENDING",
        "the submit answer comes first: {}",
        ls[0]
    );
    assert_eq!(
        event_status(ls.last().unwrap()).as_deref(),
        Some("COMPLETED")
    );

    let out = s
        .ctl(&[
            "--output",
            "status",
            "run",
            "submit-yaml",
            "--workflow-file",
            &boom,
            "--flow-name",
            "main",
            "--tag",
            "sw",
            "--watch",
        ])
        .await;
    assert!(
        lines(expect_code(&out, 3))
            .last()
            .unwrap()
            .contains("\tsnapshot\tFAILED\t"),
        "{}",
        out.stdout_text()
    );

    // POST /runs with a flow no worker can resolve: FAILED flow_not_found → 3.
    let out = s
        .ctl(&[
            "run",
            "submit",
            "--flow-name",
            "nope",
            "--tag",
            "sw",
            "--param",
            "x=1",
            "--watch",
        ])
        .await;
    let last = json_line(lines(expect_code(&out, 3)).last().unwrap());
    assert_eq!(last["data"]["snapshot"]["status"], "FAILED");

    // Nobody serves the tag: --watch-timeout-sec → 5.
    let t0 = Instant::now();
    let out = s
        .ctl(&[
            "run",
            "submit",
            "--tag",
            "nobody",
            "--watch",
            "--watch-timeout-sec",
            "2",
        ])
        .await;
    let err = expect_code(&out, 5).stderr_text();
    assert!(
        err.contains("is still PENDING after --watch-timeout-sec 2"),
        "{err}"
    );
    assert!(t0.elapsed() < Duration::from_secs(8));
}

// ---------------------------------------------------------------------------------------------
// cancel

#[tokio::test]
async fn cancel_with_and_without_wait() {
    let mut s = Stack::new(&[]).await;
    s.worker("cx", &["--cancel-kill-after", "1"]).await;
    s.worker("stubborn", &["--cancel-kill-after", "60"]).await;
    let ok = s.flow(
        "ok.yaml",
        "add_one >> to_text",
        &["add_one", "to_text"],
        "{x: 1}",
    );
    let boom = s.flow("boom.yaml", "boom", &["boom"], "");
    let hang = s.flow("hang.yaml", "hang", &["hang"], "");

    // --wait on a running run: the final snapshot, CANCELLED → 0; pyoco-client's --run-id spelling.
    let id = s.submit_yaml(&hang, "cx").await;
    s.wait_task_running(&id, "hang").await;
    let out = s
        .ctl(&[
            "run",
            "cancel",
            "--run-id",
            &id,
            "--wait",
            "--timeout-sec",
            "30",
        ])
        .await;
    let text = expect_code(&out, 0).stdout_text();
    assert_eq!(out.stdout_json()["status"], "CANCELLED");
    assert_eq!(python_dumps(&text).await, text);

    // A PENDING run (nobody serves the tag) is CANCELLED at once by our gateway.
    let out = s.ctl(&["run", "submit", "--tag", "nobody"]).await;
    let pending = expect_code(&out, 0).stdout_json()["run_id"]
        .as_str()
        .unwrap()
        .to_string();
    let out = s.ctl(&["run", "cancel", &pending]).await;
    assert_eq!(expect_code(&out, 0).stdout_json()["status"], "CANCELLED");
    let out = s.ctl(&["run", "cancel", &pending, "--wait"]).await;
    assert_eq!(expect_code(&out, 0).stdout_json()["status"], "CANCELLED");

    // Already finished: COMPLETED → 0 (said on stderr), FAILED → 3.
    let done = s.submit_yaml(&ok, "cx").await;
    s.wait_status(&done, &["COMPLETED"]).await;
    let out = s.ctl(&["run", "cancel", &done, "--wait"]).await;
    assert!(expect_code(&out, 0)
        .stderr_text()
        .contains("had already COMPLETED; nothing was cancelled"));
    let failed = s.submit_yaml(&boom, "cx").await;
    s.wait_status(&failed, &["FAILED"]).await;
    let out = s.ctl(&["run", "cancel", &failed, "--wait"]).await;
    assert_eq!(expect_code(&out, 3).stdout_json()["status"], "FAILED");

    // A task that ignores the cancel for longer than --timeout-sec → 5.
    let stuck = s.submit_yaml(&hang, "stubborn").await;
    s.wait_task_running(&stuck, "hang").await;
    let t0 = Instant::now();
    let out = s
        .ctl(&["run", "cancel", &stuck, "--wait", "--timeout-sec", "2"])
        .await;
    let err = expect_code(&out, 5).stderr_text();
    assert!(err.starts_with("ERR-PYOCO-CANCEL: wait timeout"), "{err}");
    assert!(
        err.contains(&format!(
            "run {stuck} is still CANCELLING after --timeout-sec 2"
        )),
        "{err}"
    );
    assert!(out.stdout.is_empty());
    assert!(t0.elapsed() < Duration::from_secs(8));
}

// ---------------------------------------------------------------------------------------------
// the live view, in a real terminal

#[tokio::test]
async fn live_view_in_a_terminal() {
    let mut s = Stack::new(&[]).await;
    s.worker("live", &[]).await;
    let slow = s.flow(
        "slow.yaml",
        "add_one >> slow >> after",
        &["add_one", "slow", "after"],
        "{seconds: 3}",
    );
    let id = s.submit_yaml(&slow, "live").await;
    let base = s.base();
    let tmux = Tmux::start(&tmux_command(&[
        "--server",
        &base,
        "run",
        "watch",
        &id,
        "--until-terminal",
    ]));

    // While it runs: who, the status with its elapsed time, each task's state.
    let screen = tmux
        .wait_for(Duration::from_secs(30), "slow RUNNING", |sc| {
            screen_line(sc, "▸ slow")
                .map(|l| l.contains("RUNNING"))
                .unwrap_or(false)
        })
        .await;
    let head = screen_line(&screen, &format!("run {id}"))
        .unwrap_or_else(|| panic!("no header line:\n{screen}"));
    assert!(
        head.contains("flow main") && head.contains("tag live"),
        "{screen}"
    );
    let status =
        screen_line(&screen, "RUNNING  ").unwrap_or_else(|| panic!("no status line:\n{screen}"));
    assert!(
        status.trim_end().ends_with('s'),
        "elapsed time on the status line: {status}"
    );
    assert!(
        screen_line(&screen, "✓ add_one")
            .unwrap()
            .contains("SUCCEEDED"),
        "{screen}"
    );
    assert!(
        screen_line(&screen, "· after").unwrap().contains("PENDING"),
        "{screen}"
    );
    // The elapsed time moves while nothing else happens.
    let t1 = status.to_string();
    let later = tmux
        .wait_for(Duration::from_secs(5), "a newer elapsed time", |sc| {
            screen_line(sc, "RUNNING  ")
                .map(|l| l != t1)
                .unwrap_or(true)
        })
        .await;
    assert!(
        later.contains("RUNNING") || later.contains("COMPLETED"),
        "{later}"
    );

    // The end: every task done, the final line, exit 0; drawn in place (one header, one status line).
    let screen = tmux
        .wait_for(Duration::from_secs(30), "[exit 0]", |sc| {
            sc.contains("[exit ")
        })
        .await;
    assert!(screen.contains("[exit 0]"), "{screen}");
    for t in ["add_one", "slow", "after"] {
        assert!(
            screen_line(&screen, &format!("✓ {t}"))
                .map(|l| l.contains("SUCCEEDED"))
                .unwrap_or(false),
            "{t}:\n{screen}"
        );
    }
    let slow_line = screen_line(&screen, "✓ slow").unwrap();
    let secs: f64 = slow_line
        .split_whitespace()
        .last()
        .unwrap()
        .trim_end_matches('s')
        .parse()
        .unwrap();
    assert!(
        (3.0..4.5).contains(&secs),
        "slow took about 3 s: {slow_line}"
    );
    assert!(screen_line(&screen, "COMPLETED in ").is_some(), "{screen}");
    assert_eq!(
        screen.matches(&format!("run {id}")).count(),
        1,
        "redrawn in place:\n{screen}"
    );
    assert_eq!(
        screen
            .lines()
            .filter(|l| l.starts_with("COMPLETED  "))
            .count(),
        1,
        "{screen}"
    );
    assert!(
        !screen.contains("RUNNING  "),
        "no stale status line:\n{screen}"
    );
}

#[tokio::test]
async fn live_view_of_a_failing_submit_watch() {
    let mut s = Stack::new(&[]).await;
    s.worker("livef", &[]).await;
    let boom = s.flow("boom.yaml", "add_one >> boom", &["add_one", "boom"], "");
    let base = s.base();
    let tmux = Tmux::start(&tmux_command(&[
        "--server",
        &base,
        "run",
        "submit-yaml",
        "--workflow-file",
        &boom,
        "--flow-name",
        "main",
        "--tag",
        "livef",
        "--watch",
    ]));
    let screen = tmux
        .wait_for(Duration::from_secs(40), "[exit", |sc| sc.contains("[exit "))
        .await;
    assert!(screen.contains("[exit 3]"), "{screen}");
    assert!(
        screen
            .lines()
            .next()
            .unwrap_or("")
            .starts_with("{\"run_id\": "),
        "the submit answer first:\n{screen}"
    );
    assert!(screen_line(&screen, "✓ add_one").is_some(), "{screen}");
    assert!(
        screen_line(&screen, "✗ boom")
            .map(|l| l.contains("FAILED") && l.contains("boom!"))
            .unwrap_or(false),
        "{screen}"
    );
    let fin =
        screen_line(&screen, "FAILED after ").unwrap_or_else(|| panic!("no final line:\n{screen}"));
    assert!(fin.contains("boom!"), "{fin}");
}

// ---------------------------------------------------------------------------------------------
// the original gateway: its stream does not end at the terminal snapshot

#[tokio::test]
async fn watch_and_cancel_against_the_original_gateway() {
    let nats = NatsServer::start().await;
    let gw = OrigGateway::start(&nats.url(), &[]).await;
    let dir = TestDir::new("ctl-run-orig");
    dir.write("wtasks.py", TEST_TASKS);
    let _w = Worker::start(
        &nats.url(),
        "orig",
        &unique("w"),
        dir.path(),
        &["--cancel-kill-after", "1"],
        &[],
    )
    .await;
    let ok = dir
        .write(
            "ok.yaml",
            flow_yaml("add_one >> to_text", &["add_one", "to_text"], "{x: 1}"),
        )
        .display()
        .to_string();
    let hang = dir
        .write("hang.yaml", flow_yaml("hang", &["hang"], ""))
        .display()
        .to_string();
    let base = gw.base_url();
    let ctl = |args: Vec<String>| {
        let base = base.clone();
        async move {
            let mut all = vec!["--server".to_string(), base];
            all.extend(args);
            let refs: Vec<&str> = all.iter().map(String::as_str).collect();
            run_workspace_bin("pyococtl", &refs, &[]).await
        }
    };
    let sv = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();

    let t0 = Instant::now();
    let out = ctl(sv(&[
        "run",
        "submit-yaml",
        "--workflow-file",
        &ok,
        "--flow-name",
        "main",
        "--tag",
        "orig",
        "--watch",
    ]))
    .await;
    let ls = lines(expect_code(&out, 0));
    assert_eq!(
        event_status(ls.last().unwrap()).as_deref(),
        Some("COMPLETED")
    );
    assert!(
        t0.elapsed() < Duration::from_secs(30),
        "stopped at the terminal snapshot: {:?}",
        t0.elapsed()
    );
    let id = json_line(&ls[0])["run_id"].as_str().unwrap().to_string();

    // A finished run: one snapshot, then the watch stops by itself.
    let t0 = Instant::now();
    let out = ctl(sv(&[
        "--output",
        "status",
        "run",
        "watch",
        &id,
        "--timeout-sec",
        "30",
    ]))
    .await;
    assert_eq!(
        lines(expect_code(&out, 0)).len(),
        1,
        "{}",
        out.stdout_text()
    );
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
    // Output identical to pyoco-client's.
    for args in [
        vec!["get", id.as_str()],
        vec!["tasks", id.as_str()],
        vec!["list"],
    ] {
        let mut a = sv(&["run"]);
        a.extend(sv(&args));
        let mine = ctl(a).await;
        assert_eq!(
            expect_code(&mine, 0).stdout_text(),
            orig_client(&base, &args, &[]).await.stdout_text(),
            "{args:?}"
        );
    }

    // cancel --wait: the original sets CANCELLING, our worker ends the run CANCELLED.
    let out = ctl(sv(&[
        "run",
        "submit-yaml",
        "--workflow-file",
        &hang,
        "--flow-name",
        "main",
        "--tag",
        "orig",
    ]))
    .await;
    let hung = expect_code(&out, 0).stdout_json()["run_id"]
        .as_str()
        .unwrap()
        .to_string();
    wait_task_running(&base, &hung, "hang").await;
    let out = ctl(sv(&["run", "cancel", &hung, "--wait"])).await;
    assert_eq!(expect_code(&out, 0).stdout_json()["status"], "CANCELLED");
    let out = ctl(sv(&["run", "watch", &hung, "--until-terminal"])).await;
    expect_code(&out, 4);
}
