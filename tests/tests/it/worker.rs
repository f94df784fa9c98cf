//! `pyoco-worker` against a real nats-server, our gateway, and real pyoco on Python 3.11.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use pyoco_tests::*;
use serde_json::{json, Value};

struct Stack {
    nats: NatsServer,
    gw: Gateway,
    tasks: TestDir,
}

impl Stack {
    async fn new() -> Stack {
        Self::with_env(&[]).await
    }
    async fn with_env(env: &[(&str, &str)]) -> Stack {
        let nats = NatsServer::start().await;
        let gw = Gateway::start(&nats.url(), env).await;
        gw.wait_nats_connected().await;
        let tasks = TestDir::new("wtasks");
        tasks.write("wtasks.py", TEST_TASKS);
        Stack { nats, gw, tasks }
    }
    async fn worker(&self, tags: &str, extra: &[&str]) -> Worker {
        self.worker_env(tags, extra, &[]).await
    }
    async fn worker_env(&self, tags: &str, extra: &[&str], env: &[(&str, &str)]) -> Worker {
        Worker::start(
            &self.nats.url(),
            tags,
            &unique("w"),
            self.tasks.path(),
            extra,
            env,
        )
        .await
    }
    /// Submits a flow.yaml whose tasks are `wtasks:<name>`.
    async fn submit(&self, graph: &str, tasks: &[&str], defaults: &str, tag: &str) -> String {
        let yaml = flow_yaml(graph, tasks, defaults);
        let form = reqwest::multipart::Form::new()
            .part(
                "workflow",
                reqwest::multipart::Part::bytes(yaml.into_bytes()).file_name("flow.yaml"),
            )
            .text("flow_name", "main")
            .text("tag", tag.to_string());
        let r = http()
            .post(self.gw.url("/runs/yaml"))
            .multipart(form)
            .send()
            .await
            .unwrap();
        let body: Value = r.json().await.unwrap();
        body["run_id"]
            .as_str()
            .unwrap_or_else(|| panic!("submit failed: {body}"))
            .to_string()
    }
    async fn wait(&self, run_id: &str, secs: u64) -> Value {
        let base = self.gw.base_url();
        let v = wait_for_run_status(
            &base,
            run_id,
            &["COMPLETED", "FAILED", "CANCELLED"],
            Duration::from_secs(secs),
            None,
        )
        .await;
        get_run(&base, &format!("{run_id}?include=records"), None)
            .await
            .1
            .as_object()
            .map(|_| ())
            .map(|_| v)
            .unwrap()
    }
    async fn full(&self, run_id: &str) -> Value {
        get_run(
            &self.gw.base_url(),
            &format!("{run_id}?include=records"),
            None,
        )
        .await
        .1
    }
    async fn cancel(&self, run_id: &str) -> Value {
        http()
            .post(self.gw.url(&format!("/runs/{run_id}/cancel")))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
    async fn dlq(&self) -> Vec<Value> {
        let js = self.nats.jetstream().await;
        let mut out = vec![];
        let mut s = js.get_stream("PYOCO_DLQ").await.unwrap();
        let n = s.info().await.unwrap().state.last_sequence;
        for seq in 1..=n {
            if let Ok(m) = s.get_raw_message(seq).await {
                out.push(serde_json::from_slice(&m.payload).unwrap());
            }
        }
        out
    }
}

fn flow_yaml(graph: &str, tasks: &[&str], defaults: &str) -> String {
    let mut y = format!(
        "version: 1\nflow:\n  graph: |\n    {}\n",
        graph.replace('\n', "\n    ")
    );
    if !defaults.is_empty() {
        y.push_str(&format!("  defaults: {defaults}\n"));
    }
    y.push_str("tasks:\n");
    for t in tasks {
        let (name, callable) = t
            .split_once('=')
            .map(|(n, c)| (n.to_string(), c.to_string()))
            .unwrap_or((t.to_string(), format!("wtasks:{t}")));
        y.push_str(&format!("  {name}: {{callable: \"{callable}\"}}\n"));
    }
    y
}

#[tokio::test]
async fn runs_the_example_flow() {
    let s = Stack::new().await;
    let w = s.worker("hello", &[]).await;
    let id = s
        .submit(
            "add_one >> to_text",
            &["add_one", "to_text"],
            "{x: 1}",
            "hello",
        )
        .await;
    let done = s.wait(&id, 30).await;
    assert_eq!(done["status"], "COMPLETED", "{done}\n{}", w.log_text());
    let full = s.full(&id).await;
    assert_eq!(full["task_records"]["to_text"]["output"], "v=2");
    assert_eq!(full["task_records"]["add_one"]["inputs"], json!({"x": 1}));
    assert_eq!(
        full["tasks"],
        json!({"add_one": "SUCCEEDED", "to_text": "SUCCEEDED"})
    );
    assert_eq!(
        full["worker_id"],
        json!(w.worker_id),
        "worker_id stays on every write"
    );
    assert!(full["start_time"].as_f64().unwrap() <= full["end_time"].as_f64().unwrap());
    assert_eq!(full["error"], Value::Null);
    // The worker record: IDLE with the last run.
    let workers: Value = http()
        .get(s.gw.url("/workers"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let rec = workers
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["worker_id"] == json!(w.worker_id))
        .expect("worker listed");
    assert_eq!(rec["state"], "IDLE");
    assert_eq!(rec["last_run_id"], json!(id));
    assert_eq!(rec["last_run_status"], "COMPLETED");
    assert_eq!(rec["tags"], json!(["hello"]));
    // Task output and RUN_ID-tagged lines reach the worker's log.
    assert!(w.log_text().contains(&id));
}

#[tokio::test]
async fn parallel_branches_and_failures() {
    let s = Stack::new().await;
    let _w = s.worker("par", &[]).await;
    let par = s
        .submit(
            "(left & right) >> join",
            &["left", "right", "join"],
            "",
            "par",
        )
        .await;
    let boom = s
        .submit("add_one >> boom", &["add_one", "boom"], "", "par")
        .await;
    let import = s
        .submit(
            "add_one >> gone",
            &["add_one", "gone=no_such_module:fn"],
            "",
            "par",
        )
        .await;
    let evil = s.submit("import os", &["add_one"], "", "par").await;
    let attr = s.submit("add_one.__class__", &["add_one"], "", "par").await;

    let d = s.wait(&par, 30).await;
    assert_eq!(d["status"], "COMPLETED");
    assert_eq!(s.full(&par).await["task_records"]["join"]["output"], "LR");

    let d = s
        .full(s.wait(&boom, 30).await["run_id"].as_str().unwrap())
        .await;
    assert_eq!(d["status"], "FAILED");
    assert_eq!(d["error"], "boom!");
    assert_eq!(d["tasks"]["boom"], "FAILED");
    assert!(d["task_records"]["boom"]["traceback"]
        .as_str()
        .unwrap_or("")
        .contains("ValueError"));

    let d = s.wait(&import, 30).await;
    assert_eq!(d["status"], "FAILED");
    let err = d["error"].as_str().unwrap();
    assert!(
        err.contains("no_such_module") && err.contains("ModuleNotFoundError"),
        "the real import error: {err}"
    );

    for id in [&evil, &attr] {
        let d = s.wait(id, 30).await;
        assert_eq!(d["status"], "FAILED");
        assert!(
            d["error"]
                .as_str()
                .unwrap()
                .starts_with("graph_not_allowed:"),
            "{}",
            d["error"]
        );
        assert_eq!(
            d["tasks"]
                .as_object()
                .map(|t| t.values().all(|v| v != "SUCCEEDED")),
            Some(true),
            "nothing ran: {d}"
        );
    }
    let dlq = s.dlq().await;
    let reasons: Vec<&str> = dlq.iter().map(|m| m["reason"].as_str().unwrap()).collect();
    assert!(reasons.contains(&"execution_error"), "{dlq:?}");
    let exec = dlq
        .iter()
        .find(|m| m["reason"] == "execution_error")
        .unwrap();
    assert_eq!(exec["run_id"], json!(boom));
    assert_eq!(exec["error"], "boom!");
}

#[tokio::test]
async fn flow_not_found_and_resolver_flows() {
    let s = Stack::new().await;
    s.tasks.write(
        "resolver.py",
        r#"
from pyoco import Flow, task

@task
def hello(x=0):
    return f"hello {x}"

def resolve(name):
    if name != "hello":
        raise KeyError(name)
    f = Flow(name="hello")
    f >> hello
    return f
"#,
    );
    let resolver = format!("{}:resolve", s.tasks.join("resolver.py").display());
    let _w = s.worker("res", &["--flow-resolver", &resolver]).await;
    let post = |flow: &'static str| {
        let url = s.gw.url("/runs");
        async move {
            let r: Value = http()
                .post(url)
                .json(&json!({"flow_name": flow, "params": {"x": 5}, "tag": "res"}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            r["run_id"].as_str().unwrap().to_string()
        }
    };
    let ok = post("hello").await;
    let missing = post("nope").await;
    let d = s.wait(&ok, 30).await;
    assert_eq!(d["status"], "COMPLETED", "{d}");
    assert_eq!(d["flow_name"], "hello");
    let d = s.wait(&missing, 30).await;
    assert_eq!(d["status"], "FAILED");
    assert_eq!(d["error"], "flow_not_found: 'nope'");
    let dlq = s.dlq().await;
    assert!(
        dlq.iter()
            .any(|m| m["reason"] == "flow_not_found" && m["run_id"] == json!(missing)),
        "{dlq:?}"
    );
}

#[tokio::test]
async fn invalid_jobs_are_dead_lettered() {
    let s = Stack::new().await;
    let _w = s.worker("bad", &[]).await;
    let js = s.nats.jetstream().await;
    js.publish("pyoco.work.bad", "not json".into())
        .await
        .unwrap()
        .await
        .unwrap();
    // A job whose run id is known but whose params are not an object: its run ends FAILED.
    let id = s.submit("add_one", &["add_one"], "", "nobody").await;
    let job = json!({"run_id": id, "flow_name": "main", "tag": "bad", "params": [1, 2]});
    js.publish("pyoco.work.bad", serde_json::to_vec(&job).unwrap().into())
        .await
        .unwrap()
        .await
        .unwrap();
    let d = s.wait(&id, 30).await;
    assert_eq!(d["status"], "FAILED");
    assert!(
        d["error"].as_str().unwrap().starts_with("invalid_job:"),
        "{d}"
    );
    assert!(
        wait_until(
            Duration::from_secs(5),
            Duration::from_millis(100),
            || async {
                s.dlq()
                    .await
                    .iter()
                    .filter(|m| m["reason"] == "invalid_job")
                    .count()
                    == 2
            }
        )
        .await
    );
    let dlq = s.dlq().await;
    let first = dlq
        .iter()
        .find(|m| m["payload"] == "not json")
        .expect("raw payload kept");
    assert_eq!(first["subject"], "pyoco.work.bad");
    assert_eq!(first["num_delivered"], 1);
}

#[tokio::test]
async fn cancel_pending_cooperative_and_hung() {
    let s = Stack::new().await;
    // Cancelled while PENDING: the worker that receives the job later acknowledges it unrun.
    let pending = s.submit("add_one", &["add_one"], "", "cx").await;
    assert_eq!(s.cancel(&pending).await["status"], "CANCELLED");
    let w = s.worker("cx", &["--cancel-kill-after", "1"]).await;
    assert!(
        w.daemon_wait_log("already finished", 10).await,
        "{}",
        w.log_text()
    );
    assert_eq!(s.full(&pending).await["status"], "CANCELLED");
    assert!(
        s.full(&pending).await["start_time"].is_null(),
        "never started"
    );

    // Cooperative: the running task finishes, the downstream task is cancelled.
    let coop = s
        .submit("slow >> after", &["slow", "after"], "{seconds: 1.0}", "cx")
        .await;
    wait_for_run_status(
        &s.gw.base_url(),
        &coop,
        &["RUNNING"],
        Duration::from_secs(10),
        None,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let asked = Instant::now();
    s.cancel(&coop).await;
    let d = s.wait(&coop, 30).await;
    assert_eq!(d["status"], "CANCELLED", "{d}");
    assert_eq!(
        d["tasks"],
        json!({"slow": "SUCCEEDED", "after": "CANCELLED"})
    );
    assert!(d["cancel_requested_at"].is_f64());
    eprintln!("cooperative cancel took {:?}", asked.elapsed());

    // Hung task: killed after --cancel-kill-after, the runner replaced, the next run works.
    let hung = s.submit("hang", &["hang"], "", "cx").await;
    wait_for_run_status(
        &s.gw.base_url(),
        &hung,
        &["RUNNING"],
        Duration::from_secs(10),
        None,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let asked = Instant::now();
    s.cancel(&hung).await;
    let d = s.wait(&hung, 30).await;
    assert_eq!(d["status"], "CANCELLED");
    assert_eq!(d["error"], "runner_killed_after_cancel_grace");
    assert_eq!(d["tasks"]["hang"], "CANCELLED");
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "{:?}",
        asked.elapsed()
    );
    let next = s
        .submit(
            "add_one >> to_text",
            &["add_one", "to_text"],
            "{x: 1}",
            "cx",
        )
        .await;
    assert_eq!(s.wait(&next, 30).await["status"], "COMPLETED");
}

#[tokio::test]
async fn timeouts_and_dying_runners() {
    let s = Stack::new().await;
    let _w = s.worker("to", &["--run-timeout", "1.5"]).await;
    let hung = s.submit("hang", &["hang"], "", "to").await;
    let d = s.wait(&hung, 30).await;
    assert_eq!(
        (d["status"].clone(), d["error"].clone()),
        (json!("FAILED"), json!("timeout"))
    );
    // timeout_sec on the submit request.
    let r: Value = http()
        .post(s.gw.url("/runs"))
        .json(&json!({"flow_name": "x", "tag": "to2", "timeout_sec": 0.5}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["status"], "PENDING");
    // A task that kills its own runner: FAILED runner_exited, and the worker goes on.
    let dead = s.submit("suicide", &["suicide"], "", "to").await;
    let d = s.wait(&dead, 30).await;
    assert_eq!(d["status"], "FAILED");
    assert!(
        d["error"]
            .as_str()
            .unwrap()
            .starts_with("runner_exited: killed by signal SIGKILL"),
        "{}",
        d["error"]
    );
    let next = s.submit("add_one", &["add_one"], "", "to").await;
    assert_eq!(s.wait(&next, 30).await["status"], "COMPLETED");
}

#[tokio::test]
async fn concurrency_runs_at_once_and_tags_are_fair() {
    let s = Stack::new().await;
    let _w = s.worker("c4", &["--concurrency", "4"]).await;
    let mut ids = vec![];
    for _ in 0..4 {
        ids.push(s.submit("slow", &["slow"], "{seconds: 1.5}", "c4").await);
    }
    let mut docs = vec![];
    for id in &ids {
        docs.push(s.wait(id, 30).await);
    }
    let starts: Vec<f64> = docs
        .iter()
        .map(|d| d["start_time"].as_f64().unwrap())
        .collect();
    let ends: Vec<f64> = docs
        .iter()
        .map(|d| d["end_time"].as_f64().unwrap())
        .collect();
    let first_end = ends.iter().cloned().fold(f64::MAX, f64::min);
    assert!(
        starts.iter().all(|s| *s < first_end),
        "all 4 ran at once: starts {starts:?} first end {first_end}"
    );

    // Two tags, one runner, both queues full: the tags take turns.
    let mut a = vec![];
    let mut b = vec![];
    for _ in 0..4 {
        a.push(s.submit("add_one", &["add_one"], "", "ta").await);
        b.push(s.submit("add_one", &["add_one"], "", "tb").await);
    }
    let _w2 = s.worker("ta,tb", &["--concurrency", "1"]).await;
    let mut finished: Vec<(f64, &str)> = vec![];
    for id in a.iter().chain(b.iter()) {
        let d = s.wait(id, 60).await;
        finished.push((
            d["end_time"].as_f64().unwrap(),
            d["tag"]
                .as_str()
                .map(|t| if t == "ta" { "ta" } else { "tb" })
                .unwrap(),
        ));
    }
    finished.sort_by(|x, y| x.0.total_cmp(&y.0));
    let first_half: Vec<&str> = finished.iter().take(4).map(|(_, t)| *t).collect();
    assert!(
        first_half.contains(&"ta") && first_half.contains(&"tb"),
        "neither tag starves: {first_half:?}"
    );
}

#[tokio::test]
async fn sigterm_drains_and_requeues() {
    let s = Stack::new().await;
    let mut w = s.worker("dr", &["--drain-timeout", "10"]).await;
    let id = s.submit("slow", &["slow"], "{seconds: 1.5}", "dr").await;
    wait_for_run_status(
        &s.gw.base_url(),
        &id,
        &["RUNNING"],
        Duration::from_secs(10),
        None,
    )
    .await;
    w.daemon().signal(Signal::SIGTERM);
    let st = w
        .daemon()
        .wait_exit(Duration::from_secs(20))
        .await
        .expect("exits after drain");
    assert!(st.success(), "{st}");
    assert_eq!(
        s.full(&id).await["status"],
        "COMPLETED",
        "the running run finished during the drain"
    );
    let rec: Value = http()
        .get(s.gw.url("/workers?scope=all"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let rec = rec
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["worker_id"] == json!(w.worker_id))
        .unwrap()
        .clone();
    assert_eq!(rec["state"], "STOPPED_GRACEFUL");
    assert_eq!(rec["stop_reason"], "graceful_shutdown");

    // Drain timeout shorter than the run: the run goes back to the queue and another worker
    // completes it.
    let mut w1 = s.worker("dr2", &["--drain-timeout", "0.5"]).await;
    let id = s.submit("slow", &["slow"], "{seconds: 2.0}", "dr2").await;
    wait_for_run_status(
        &s.gw.base_url(),
        &id,
        &["RUNNING"],
        Duration::from_secs(10),
        None,
    )
    .await;
    w1.daemon().signal(Signal::SIGTERM);
    assert!(w1
        .daemon()
        .wait_exit(Duration::from_secs(20))
        .await
        .expect("exits")
        .success());
    let back = s.full(&id).await;
    assert_eq!(back["status"], "PENDING", "{back}");
    assert!(
        back["worker_note"]
            .as_str()
            .unwrap()
            .starts_with("requeued"),
        "{back}"
    );
    let w2 = s.worker("dr2", &[]).await;
    let d = s.wait(&id, 30).await;
    assert_eq!(d["status"], "COMPLETED");
    assert_eq!(s.full(&id).await["worker_id"], json!(w2.worker_id));
}

#[tokio::test]
async fn a_killed_worker_run_is_completed_by_another() {
    let s = Stack::with_env(&[]).await;
    let env = [("PYOCO_CONSUMER_ACK_WAIT_SEC", "2")];
    let mut w1 = s.worker_env("kill", &[], &env).await;
    let id = s.submit("slow", &["slow"], "{seconds: 1.0}", "kill").await;
    wait_for_run_status(
        &s.gw.base_url(),
        &id,
        &["RUNNING"],
        Duration::from_secs(10),
        None,
    )
    .await;
    w1.daemon().kill();
    let w2 = s.worker_env("kill", &[], &env).await;
    let d = s.wait(&id, 60).await;
    assert_eq!(d["status"], "COMPLETED", "{d}");
    assert_eq!(s.full(&id).await["worker_id"], json!(w2.worker_id));
}

#[tokio::test]
async fn long_run_with_short_ack_wait_is_not_redelivered() {
    let s = Stack::new().await;
    let env = [
        ("PYOCO_CONSUMER_ACK_WAIT_SEC", "1"),
        ("PYOCO_ACK_PROGRESS_INTERVAL_SEC", "0.3"),
    ];
    let w = s.worker_env("long", &[], &env).await;
    let id = s.submit("slow", &["slow"], "{seconds: 3.5}", "long").await;
    assert_eq!(s.wait(&id, 30).await["status"], "COMPLETED");
    let starts = w
        .log_text()
        .lines()
        .filter(|l| l.contains("run started") && l.contains(&id))
        .count();
    assert_eq!(starts, 1, "ran once: {}", w.log_text());
}

#[tokio::test]
async fn nats_outage_during_a_run_is_retried_and_completes() {
    let mut s = Stack::new().await;
    let env = [("PYOCO_CONSUMER_ACK_WAIT_SEC", "3")];
    let w = s.worker_env("out", &[], &env).await;
    let id = s.submit("slow", &["slow"], "{seconds: 1.0}", "out").await;
    wait_for_run_status(
        &s.gw.base_url(),
        &id,
        &["RUNNING"],
        Duration::from_secs(10),
        None,
    )
    .await;
    s.nats.stop().await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    s.nats.start_again().await;
    let d = s.wait(&id, 60).await;
    assert_eq!(d["status"], "COMPLETED", "{d}\n{}", w.log_text());
}

trait WaitLog {
    async fn daemon_wait_log(&self, needle: &str, secs: u64) -> bool;
}

impl WaitLog for Worker {
    async fn daemon_wait_log(&self, needle: &str, secs: u64) -> bool {
        wait_until(
            Duration::from_secs(secs),
            Duration::from_millis(50),
            || async { self.log_text().contains(needle) },
        )
        .await
    }
}

#[tokio::test]
async fn tells_systemd_ready_status_watchdog_and_stopping() {
    use std::os::unix::net::UnixDatagram;
    let s = Stack::new().await;
    let dir = TestDir::new("wnotify");
    let sock_path = dir.join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let env = [
        ("NOTIFY_SOCKET", sock_path.to_str().unwrap()),
        ("WATCHDOG_USEC", "1000000"),
    ];
    let mut w = s.worker_env("sd", &["--concurrency", "2"], &env).await;
    let collect = move |sock: UnixDatagram, want: &'static str| {
        tokio::task::spawn_blocking(move || {
            let mut all = String::new();
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut buf = vec![0u8; 4096];
            while Instant::now() < deadline && !all.contains(want) {
                if let Ok(n) = sock.recv(&mut buf) {
                    all.push_str(&String::from_utf8_lossy(&buf[..n]));
                    all.push('\n');
                }
            }
            (sock, all)
        })
    };
    let (sock, got) = collect(sock, "WATCHDOG=1").await.unwrap();
    assert!(got.contains("READY=1"), "{got}");
    assert!(got.contains("STATUS=tags sd · 0/2 busy"), "{got}");
    assert!(got.contains("WATCHDOG=1"), "{got}");
    let (_, got) = collect(sock, "last fetch").await.unwrap();
    assert!(got.contains("last fetch"), "{got}");
    w.daemon().signal(Signal::SIGTERM);
    let st = w
        .daemon()
        .wait_exit(Duration::from_secs(20))
        .await
        .expect("exits");
    assert!(st.success());
}

#[tokio::test]
async fn a_job_lost_on_its_last_delivery_fails_its_run() {
    let s = Stack::new().await;
    let env = [
        ("PYOCO_CONSUMER_MAX_DELIVER", "1"),
        ("PYOCO_CONSUMER_ACK_WAIT_SEC", "1"),
        ("PYOCO_ACK_PROGRESS_INTERVAL_SEC", "0.3"),
    ];
    let mut first = s.worker_env("last", &[], &env).await;
    let mut second = s.worker_env("last", &[], &env).await;
    let id = s.submit("slow", &["slow"], "{seconds: 30}", "last").await;
    let running = wait_for_run_status(
        &s.gw.base_url(),
        &id,
        &["RUNNING"],
        Duration::from_secs(10),
        None,
    )
    .await;
    // Kill whichever worker took it; the other one gets the max-deliveries advisory.
    if running["worker_id"] == json!(first.worker_id) {
        first.daemon().kill();
    } else {
        second.daemon().kill();
    }
    let d = s.wait(&id, 30).await;
    assert_eq!(d["status"], "FAILED", "not stuck in RUNNING: {d}");
    assert!(
        d["error"]
            .as_str()
            .unwrap()
            .starts_with("max_deliver_exceeded:"),
        "{d}"
    );
    assert!(
        wait_until(
            Duration::from_secs(5),
            Duration::from_millis(100),
            || async {
                s.dlq()
                    .await
                    .iter()
                    .filter(|m| m["reason"] == "max_deliver_exceeded" && m["run_id"] == json!(id))
                    .count()
                    == 1
            }
        )
        .await,
        "dead-lettered once: {:?}",
        s.dlq().await
    );
    let js = s.nats.jetstream().await;
    let mut work = js.get_stream("PYOCO_WORK").await.unwrap();
    assert_eq!(
        work.info().await.unwrap().state.messages,
        0,
        "the job left the work queue"
    );
}
