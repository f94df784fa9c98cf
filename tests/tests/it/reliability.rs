//! Fault injection under load (issue 12, item 6): workers, the gateway and nats-server are killed
//! or stopped while runs flow, and every test checks the guarantees `docs/reliability.md` states:
//! no accepted run lost, none stuck non-terminal, no double execution where fencing applies, no
//! lost cancel, no 5xx from a healthy gateway, bounded memory. Everything is real (nats-server,
//! our binaries, Python runners) on loopback, with short ack waits and heartbeats so that a
//! redelivery takes seconds, not minutes. The figures each test measures are printed
//! (`--nocapture`) and quoted in `docs/reliability.md`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pyoco_tests::*;
use serde_json::Value;

const TERMINAL: [&str; 3] = ["COMPLETED", "FAILED", "CANCELLED"];

/// Short timings: a job of a killed worker is redelivered after 2 s and taken over once its
/// heartbeat (every 0.5 s) is 2 s old; enough deliveries that a run hit by several kills still
/// completes instead of ending `max_deliver_exceeded`.
const FAST: [(&str, &str); 4] = [
    ("PYOCO_CONSUMER_ACK_WAIT_SEC", "2"),
    ("PYOCO_RUN_HEARTBEAT_INTERVAL_SEC", "0.5"),
    ("PYOCO_CONSUMER_MAX_DELIVER", "30"),
    ("PYOCO_WORKER_POLL_TIMEOUT_SEC", "1"),
];

/// The tasks: each appends `<n> <worker pid>` to `log` when it starts (the runner is a direct
/// child of the worker, so `getppid()` names the worker that executed it), then sleeps.
const TASKS: &str = r#"
import os, time

def _mark(log, n, name):
    if log:
        with open(log, "a") as f:
            f.write(f"{n} {os.getppid()} {name}\n")

def step(n=0, log="", ms=0):
    _mark(log, n, "step")
    time.sleep(ms / 1000.0)
    return n

def ra(n=0, log="", ms_a=0):
    _mark(log, n, "ra")
    time.sleep(ms_a / 1000.0)
    return n

def rb(ra, ms_b=0):
    time.sleep(ms_b / 1000.0)
    return ra

def rc(rb, ms_c=0):
    time.sleep(ms_c / 1000.0)
    return rb
"#;

/// A seeded SplitMix64 (no `rand` in the workspace; the seed is printed so a failure replays).
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (n > 0).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len() as u64) as usize]
    }
}

/// `PYOCO_RELIABILITY_SCALE=N` multiplies runs, kills, cancels and fuzz requests by N for a
/// longer soak than CI's budget allows (default 1).
fn scale() -> usize {
    std::env::var("PYOCO_RELIABILITY_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n >= 1)
        .unwrap_or(1)
}

fn seed_from_env(var: &str) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| uuid::Uuid::new_v4().as_u128() as u64)
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn yaml_step(tag_log: &Path, n: usize, ms: u64) -> String {
    format!(
        "version: 1\nflow:\n  graph: step\n  defaults: {{n: {n}, log: '{}', ms: {ms}}}\ntasks:\n  step: {{callable: reltasks:step}}\n",
        tag_log.display()
    )
}

fn yaml_chain(log: &Path, n: usize, a: u64, b: u64, c: u64) -> String {
    format!(
        "version: 1\nflow:\n  graph: ra >> rb >> rc\n  defaults: {{n: {n}, log: '{}', ms_a: {a}, ms_b: {b}, ms_c: {c}}}\ntasks:\n  ra: {{callable: reltasks:ra}}\n  rb: {{callable: reltasks:rb}}\n  rc: {{callable: reltasks:rc}}\n",
        log.display()
    )
}

/// `POST /runs/yaml`; Ok((http status, body)) or Err(transport error). Never panics, so a test
/// can retry and count.
async fn try_submit(
    client: &reqwest::Client,
    base: &str,
    yaml: &str,
    tag: &str,
    idem: Option<&str>,
) -> Result<(u16, Value), String> {
    let form = reqwest::multipart::Form::new()
        .part(
            "workflow",
            reqwest::multipart::Part::bytes(yaml.as_bytes().to_vec()).file_name("flow.yaml"),
        )
        .text("flow_name", "main")
        .text("tag", tag.to_string());
    let mut req = client
        .post(format!("{base}/runs/yaml"))
        .multipart(form)
        .timeout(Duration::from_secs(10));
    if let Some(k) = idem {
        req = req.header("Idempotency-Key", k);
    }
    let r = req.send().await.map_err(|e| e.to_string())?;
    let code = r.status().as_u16();
    let body = r.json::<Value>().await.unwrap_or(Value::Null);
    Ok((code, body))
}

/// Status of one run (None on a transport error or a non-200).
async fn status_of(client: &reqwest::Client, base: &str, id: &str) -> Option<(u16, Value)> {
    let r = client
        .get(format!("{base}/runs/{id}"))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .ok()?;
    let code = r.status().as_u16();
    Some((code, r.json::<Value>().await.unwrap_or(Value::Null)))
}

/// Waits until every run is terminal; returns id → final snapshot. Panics naming the runs
/// still non-terminal (the "stuck" goal) and asserts no 5xx was answered meanwhile.
async fn wait_all_terminal(
    base: &str,
    ids: &[String],
    timeout: Duration,
) -> HashMap<String, Value> {
    let client = http();
    let deadline = Instant::now() + timeout;
    let mut done: HashMap<String, Value> = HashMap::new();
    loop {
        for id in ids {
            if done.contains_key(id) {
                continue;
            }
            if let Some((code, body)) = status_of(&client, base, id).await {
                assert!(code < 500, "GET /runs/{id} answered {code}: {body}");
                if code == 200 && TERMINAL.contains(&body["status"].as_str().unwrap_or("")) {
                    done.insert(id.clone(), body);
                }
            }
        }
        if done.len() == ids.len() {
            return done;
        }
        if Instant::now() >= deadline {
            let mut stuck = Vec::new();
            for id in ids.iter().filter(|i| !done.contains_key(*i)).take(10) {
                stuck.push(format!("{id}: {:?}", status_of(&client, base, id).await));
            }
            panic!(
                "{} of {} runs not terminal after {timeout:?} (lost or stuck):\n{}",
                ids.len() - done.len(),
                ids.len(),
                stuck.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn distribution(done: &HashMap<String, Value>) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for v in done.values() {
        *m.entry(v["status"].as_str().unwrap_or("?").to_string())
            .or_insert(0) += 1;
    }
    m
}

/// `n → [worker pid of each execution]` from the task log.
fn executions(log: &Path) -> HashMap<usize, Vec<u32>> {
    let mut m: HashMap<usize, Vec<u32>> = HashMap::new();
    for line in std::fs::read_to_string(log).unwrap_or_default().lines() {
        let mut it = line.split_whitespace();
        if let (Some(n), Some(pid)) = (it.next(), it.next()) {
            if let (Ok(n), Ok(pid)) = (n.parse(), pid.parse()) {
                m.entry(n).or_default().push(pid);
            }
        }
    }
    m
}

/// All runs of a tag from `GET /runs?tag=…` (paged).
async fn runs_of_tag(base: &str, tag: &str) -> Vec<Value> {
    let client = http();
    let mut out = Vec::new();
    let mut cursor = String::new();
    loop {
        let r = client
            .get(format!("{base}/runs"))
            .query(&[("tag", tag), ("limit", "200"), ("cursor", cursor.as_str())])
            .send()
            .await
            .expect("GET /runs");
        let code = r.status().as_u16();
        let v: Value = r.json().await.expect("JSON");
        assert_eq!(code, 200, "GET /runs?tag={tag}: {v}");
        out.extend(v["items"].as_array().cloned().unwrap_or_default());
        match v["next_cursor"].as_str() {
            Some(c) => cursor = c.to_string(),
            None => return out,
        }
    }
}

fn tasks_dir() -> TestDir {
    let d = TestDir::new("reliability");
    d.write("reltasks.py", TASKS);
    d
}

async fn start_worker(
    nats_url: &str,
    tag: &str,
    id: &str,
    dir: &Path,
    env: &[(&str, &str)],
) -> Worker {
    Worker::start(nats_url, tag, id, dir, &["--concurrency", "2"], env).await
}

// ---------------------------------------------------------------------------------------------

/// Fault: SIGKILL of whole worker process groups (worker + its runners) while they execute runs,
/// ≥ 25 kills over ≥ 60 runs, each killed worker restarted at once; three workers with
/// `--concurrency 2`. Proves: every accepted run ends terminal (redelivered after AckWait, taken
/// over once the dead execution's heartbeat is stale) and COMPLETED; a run executes more than
/// once only if an execution ran under a worker that was killed — at-least-once is inherent
/// there (the task had started; its side effect happened), never otherwise; no 5xx; the
/// gateway's memory stays bounded.
#[tokio::test]
async fn sigkilled_workers_lose_no_run_and_rerun_only_what_they_were_running() {
    let seed = seed_from_env("PYOCO_RELIABILITY_SEED");
    eprintln!("[reliability] worker kills: seed {seed} (PYOCO_RELIABILITY_SEED replays)");
    let mut rng = Rng::new(seed);
    let nats = NatsServer::start().await;
    let mut gw = Gateway::start(&nats.url(), &[]).await;
    gw.wait_nats_connected().await;
    let base = gw.base_url();
    let gw_pid = gw.daemon().pid();
    let rss_before = rss_kib(gw_pid);
    let dir = tasks_dir();
    let log = dir.join("exec.log");
    let tag = "kills";
    let mut workers = Vec::new();
    for i in 0..3 {
        workers.push(start_worker(&nats.url(), tag, &format!("k{i}"), dir.path(), &FAST).await);
    }
    let client = http();
    let mut ids: Vec<String> = Vec::new();
    let submit = |n: usize, ms: u64| {
        let (client, base, yaml) = (client.clone(), base.clone(), yaml_step(&log, n, ms));
        async move {
            let (code, body) = try_submit(&client, &base, &yaml, tag, None)
                .await
                .expect("submit to a healthy gateway");
            assert_eq!(code, 200, "submit: {body}");
            body["run_id"].as_str().unwrap().to_string()
        }
    };
    let (runs, kill_target) = (60 * scale(), 25 * scale());
    for n in 0..runs {
        ids.push(submit(n, 800 + rng.below(1200)).await);
    }
    let mut killed_pids: HashSet<u32> = HashSet::new();
    let mut kills = 0;
    let mut mid_run = 0;
    let mut cancelled: Vec<(String, String)> = Vec::new();
    let started = Instant::now();
    while kills < kill_target {
        assert!(
            started.elapsed() < Duration::from_secs(150 * scale() as u64),
            "only {kills} kills in 150 s"
        );
        // Keep work queued so every kill lands on a busy worker.
        let mut live = Vec::new();
        for id in &ids {
            if let Some((code, b)) = status_of(&client, &base, id).await {
                assert!(code < 500, "GET /runs/{id}: {code} {b}");
                if code == 200 && b["status"] == "RUNNING" {
                    live.push((
                        id.clone(),
                        b["worker_id"].as_str().unwrap_or("").to_string(),
                    ));
                }
            }
        }
        if live.len() < 4 {
            for _ in 0..4 {
                let n = ids.len();
                ids.push(submit(n, 800 + rng.below(1200)).await);
            }
        }
        // The victim is a worker seen executing a run (any worker if none was seen).
        let busy: Vec<usize> = (0..3)
            .filter(|i| live.iter().any(|(_, w)| *w == format!("k{i}")))
            .collect();
        let victim = if busy.is_empty() {
            rng.below(3) as usize
        } else {
            *rng.pick(&busy)
        };
        let vid = format!("k{victim}");
        let victims_runs: Vec<&String> = live
            .iter()
            .filter(|(_, w)| *w == vid)
            .map(|(id, _)| id)
            .collect();
        if !victims_runs.is_empty() {
            mid_run += 1;
        }
        // Every 5th kill also cancels one of the victim's runs just before: the cancel must
        // survive the crash and the redelivery.
        if kills % 5 == 0 {
            if let Some(id) = victims_runs.first() {
                let r = client
                    .post(format!("{base}/runs/{id}/cancel"))
                    .send()
                    .await
                    .expect("cancel");
                assert_eq!(r.status().as_u16(), 200);
                let c: Value = r.json().await.unwrap();
                let answered = c["status"].as_str().unwrap_or("").to_string();
                cancelled.push(((*id).clone(), answered));
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.below(300))).await;
        killed_pids.insert(workers[victim].daemon().pid());
        workers[victim].daemon().kill();
        kills += 1;
        workers[victim] = start_worker(&nats.url(), tag, &vid, dir.path(), &FAST).await;
    }
    let done = wait_all_terminal(&base, &ids, Duration::from_secs(120)).await;
    let dist = distribution(&done);
    let execs = executions(&log);
    let mut reruns = 0;
    for (n, id) in ids.iter().enumerate() {
        let pids = execs.get(&n).cloned().unwrap_or_default();
        assert!(
            !pids.is_empty(),
            "run {n} ({id}) ended without executing: {}",
            done[id]
        );
        let by_survivors = pids.iter().filter(|p| !killed_pids.contains(p)).count();
        assert!(
            by_survivors <= 1,
            "run {n} ({id}) executed {by_survivors} times by workers that were never killed: {pids:?}"
        );
        if pids.len() > 1 {
            reruns += 1;
        }
    }
    let mut cancels_honoured = 0;
    for (id, answered) in &cancelled {
        let end = done[id]["status"].as_str().unwrap_or("");
        if answered == "CANCELLING" || answered == "CANCELLED" {
            assert_eq!(
                end, "CANCELLED",
                "run {id}: cancel answered {answered} before its worker was killed, ended {}",
                done[id]
            );
            cancels_honoured += 1;
        } else {
            assert_eq!(end, answered, "run {id}");
        }
    }
    let completed = dist.get("COMPLETED").copied().unwrap_or(0);
    assert_eq!(
        completed + cancels_honoured,
        ids.len(),
        "every run not cancelled completes after redelivery: {dist:?}"
    );
    let rss_after = rss_kib(gw_pid);
    eprintln!(
        "[reliability] worker kills: runs {} kills {kills} (victim had a RUNNING run: {mid_run}) \
         cancelled just before the kill {} (ended CANCELLED {cancels_honoured}) \
         lost 0 stuck 0 re-executed after a kill {reruns} statuses {dist:?} gateway RSS {} -> {} KiB in {:?}",
        ids.len(),
        cancelled.len(),
        rss_before,
        rss_after,
        started.elapsed()
    );
    assert!(
        rss_after < rss_before + 64 * 1024,
        "gateway RSS grew from {rss_before} to {rss_after} KiB"
    );
}

/// Fault: SIGKILL of the gateway (three times, restarted on the same port) during a burst of
/// submits from 8 concurrent clients, each retrying a failed submit (transport error or 5xx)
/// with the same `Idempotency-Key`. Proves: every run a client got a 200 for ends terminal, a key
/// only ever maps to one run id, no run is left PENDING, and each key's work executed once (no
/// worker was harmed: a duplicate here would be a duplicate run).
#[tokio::test]
async fn sigkilled_gateway_mid_burst_keeps_every_accepted_run_and_one_run_per_key() {
    let nats = NatsServer::start().await;
    let port = free_port();
    let mut gw = Gateway::spawn_on_port(port, &nats.url(), &[], &[]);
    gw.wait_healthy().await;
    gw.wait_nats_connected().await;
    let base = gw.base_url();
    let dir = tasks_dir();
    let log = dir.join("exec.log");
    let tag = "gwkill";
    let _w = start_worker(&nats.url(), tag, "g0", dir.path(), &FAST).await;
    let clients = 8;
    // Each client submits until the last gateway restart is over (at least 10 runs each), so
    // every kill lands in the middle of the burst.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let retries = Arc::new(AtomicUsize::new(0));
    let mut handles = Vec::new();
    for c in 0..clients {
        let (base, log, retries, stop) = (base.clone(), log.clone(), retries.clone(), stop.clone());
        handles.push(tokio::spawn(async move {
            let client = http();
            let mut got: Vec<(String, String)> = Vec::new();
            let mut j = 0;
            while j < 10 || !stop.load(Ordering::Relaxed) {
                let n = c * 1000 + j;
                j += 1;
                let key = format!("burst-{n}");
                let yaml = yaml_step(&log, n, 50);
                let deadline = Instant::now() + Duration::from_secs(90);
                let id = loop {
                    match try_submit(&client, &base, &yaml, tag, Some(&key)).await {
                        Ok((200, b)) => break b["run_id"].as_str().unwrap().to_string(),
                        Ok((code, b)) if code >= 500 => {
                            assert!(code == 503, "only 503 while NATS is not ready: {code} {b}")
                        }
                        Ok((code, b)) => panic!("submit {key}: {code} {b}"),
                        Err(_) => {}
                    }
                    assert!(Instant::now() < deadline, "{key} never accepted");
                    retries.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                };
                // The same key again answers the same run.
                let again = loop {
                    if let Ok((200, b)) = try_submit(&client, &base, &yaml, tag, Some(&key)).await {
                        break b["run_id"].as_str().unwrap().to_string();
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                };
                assert_eq!(id, again, "key {key} answered two run ids");
                got.push((key, id));
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
            got
        }));
    }
    let mut gw_kills = 0;
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        gw.daemon().kill();
        gw_kills += 1;
        tokio::time::sleep(Duration::from_millis(300)).await;
        gw = Gateway::spawn_on_port(port, &nats.url(), &[], &[]);
        gw.wait_healthy().await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut accepted: Vec<(String, String)> = Vec::new();
    for h in handles {
        accepted.extend(h.await.expect("client task"));
    }
    let ids: Vec<String> = accepted.iter().map(|(_, id)| id.clone()).collect();
    let unique_ids: HashSet<&String> = ids.iter().collect();
    assert_eq!(
        unique_ids.len(),
        ids.len(),
        "two keys answered the same run"
    );
    let done = wait_all_terminal(&base, &ids, Duration::from_secs(120)).await;
    let dist = distribution(&done);
    assert_eq!(
        dist.get("COMPLETED").copied().unwrap_or(0),
        ids.len(),
        "{dist:?}"
    );
    // No orphans: the tag holds exactly the accepted runs, none PENDING.
    let listed = runs_of_tag(&base, tag).await;
    let listed_ids: HashSet<String> = listed
        .iter()
        .map(|r| r["run_id"].as_str().unwrap_or("").to_string())
        .collect();
    let extra: Vec<&String> = listed_ids
        .iter()
        .filter(|i| !unique_ids.contains(i))
        .collect();
    assert!(
        extra.is_empty(),
        "runs nobody got a 200 for (duplicates/orphans): {extra:?}"
    );
    assert!(
        listed.iter().all(|r| r["status"] != "PENDING"),
        "PENDING orphans left"
    );
    let execs = executions(&log);
    assert_eq!(
        execs.len(),
        accepted.len(),
        "executed keys vs accepted keys"
    );
    for (key, _) in &accepted {
        let n: usize = key.trim_start_matches("burst-").parse().unwrap();
        assert_eq!(
            execs.get(&n).map(Vec::len).unwrap_or(0),
            1,
            "key {key} executed {:?} times",
            execs.get(&n)
        );
    }
    let retries = retries.load(Ordering::Relaxed);
    assert!(
        retries > 0,
        "no submit was cut off: the kills missed the burst"
    );
    eprintln!(
        "[reliability] gateway kills: runs {} keys {} gateway kills {gw_kills} client retries {retries} \
         lost 0 duplicates 0 pending 0 statuses {dist:?}",
        ids.len(),
        accepted.len(),
    );
}

/// Fault: nats-server stopped (SIGTERM), later killed (SIGKILL), each time started again (same
/// port, same store dir) while runs execute.
/// Proves: runs submitted before and after the outage all complete; gateway and workers
/// reconnect by themselves (no restart); `/health` stays 200 and reports `nats` as
/// `disconnected` during the outage and `connected` after; submits during the outage are refused
/// with 503 (not accepted and lost).
#[tokio::test]
async fn nats_restart_under_load_loses_nothing_and_health_tells_the_truth() {
    let mut nats = NatsServer::start().await;
    let mut gw = Gateway::start(&nats.url(), &[]).await;
    gw.wait_nats_connected().await;
    let base = gw.base_url();
    let dir = tasks_dir();
    let log = dir.join("exec.log");
    let tag = "natsrestart";
    let mut w1 = start_worker(&nats.url(), tag, "r1", dir.path(), &FAST).await;
    let mut w2 = start_worker(&nats.url(), tag, "r2", dir.path(), &FAST).await;
    let client = http();
    let mut ids = Vec::new();
    for n in 0..20 {
        let (code, b) = try_submit(&client, &base, &yaml_step(&log, n, 400), tag, None)
            .await
            .unwrap();
        assert_eq!(code, 200, "{b}");
        ids.push(b["run_id"].as_str().unwrap().to_string());
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    nats.stop().await;
    let health = |client: reqwest::Client, base: String| async move {
        let r = client
            .get(format!("{base}/health"))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .expect("/health answers during the outage");
        assert_eq!(r.status().as_u16(), 200);
        r.json::<Value>().await.unwrap()
    };
    let saw_down = wait_until(Duration::from_secs(15), Duration::from_millis(100), || {
        let (c, b) = (client.clone(), base.clone());
        async move { health(c, b).await["nats"] == "disconnected" }
    })
    .await;
    assert!(saw_down, "/health never said nats disconnected");
    let (code, body) = try_submit(&client, &base, &yaml_step(&log, 999, 0), tag, None)
        .await
        .unwrap();
    assert_eq!(code, 503, "a submit during the outage is refused: {body}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    nats.start_again().await;
    let saw_up = wait_until(Duration::from_secs(30), Duration::from_millis(100), || {
        let (c, b) = (client.clone(), base.clone());
        async move { health(c, b).await["nats"] == "connected" }
    })
    .await;
    assert!(saw_up, "gateway never reconnected; log:\n{}", gw.log_text());
    for n in 20..40 {
        let (code, b) = try_submit(&client, &base, &yaml_step(&log, n, 400), tag, None)
            .await
            .unwrap();
        assert_eq!(code, 200, "{b}");
        ids.push(b["run_id"].as_str().unwrap().to_string());
    }
    // A second outage, now a crash (SIGKILL) of nats-server while those run: what JetStream
    // had acknowledged is in its store files (the OS keeps them; only a machine crash could
    // lose the unsynced tail).
    tokio::time::sleep(Duration::from_millis(800)).await;
    nats.kill();
    let saw_down = wait_until(Duration::from_secs(15), Duration::from_millis(100), || {
        let (c, b) = (client.clone(), base.clone());
        async move { health(c, b).await["nats"] == "disconnected" }
    })
    .await;
    assert!(
        saw_down,
        "/health never said nats disconnected after the crash"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    nats.start_again().await;
    let saw_up = wait_until(Duration::from_secs(30), Duration::from_millis(100), || {
        let (c, b) = (client.clone(), base.clone());
        async move { health(c, b).await["nats"] == "connected" }
    })
    .await;
    assert!(
        saw_up,
        "gateway never reconnected after the crash; log:\n{}",
        gw.log_text()
    );
    for n in 40..60 {
        let (code, b) = try_submit(&client, &base, &yaml_step(&log, n, 100), tag, None)
            .await
            .unwrap();
        assert_eq!(code, 200, "{b}");
        ids.push(b["run_id"].as_str().unwrap().to_string());
    }
    let done = wait_all_terminal(&base, &ids, Duration::from_secs(120)).await;
    let dist = distribution(&done);
    assert_eq!(
        dist.get("COMPLETED").copied().unwrap_or(0),
        ids.len(),
        "{dist:?}"
    );
    w1.daemon().assert_running();
    w2.daemon().assert_running();
    gw.daemon().assert_running();
    eprintln!(
        "[reliability] nats restart: runs {} (20 before a stop, 20 before a SIGKILL, 20 after) \
         lost 0 stuck 0 statuses {dist:?}",
        ids.len()
    );
}

/// Fault: random cancels racing the runs. ≥ 200 runs of `ra >> rb >> rc` (each task 0–200 ms),
/// cancelled 0–300 ms after the submit, two workers with `--concurrency 2`. Proves: every cancel
/// answered with a non-terminal status (CANCELLING, or CANCELLED at once for a PENDING run)
/// ends CANCELLED — cancel wins over a completion racing it; a cancel that came after the end
/// changes nothing.
#[tokio::test]
async fn random_cancels_are_never_lost() {
    let seed = seed_from_env("PYOCO_RELIABILITY_SEED");
    eprintln!("[reliability] cancels: seed {seed} (PYOCO_RELIABILITY_SEED replays)");
    let mut rng = Rng::new(seed);
    let nats = NatsServer::start().await;
    let mut gw = Gateway::start(&nats.url(), &[]).await;
    gw.wait_nats_connected().await;
    let base = gw.base_url();
    let dir = tasks_dir();
    let log = dir.join("exec.log");
    let tag = "cancels";
    let _w1 = start_worker(&nats.url(), tag, "c1", dir.path(), &FAST).await;
    let _w2 = start_worker(&nats.url(), tag, "c2", dir.path(), &FAST).await;
    let total = 200 * scale();
    let sem = Arc::new(tokio::sync::Semaphore::new(6));
    let mut handles = Vec::new();
    for n in 0..total {
        let yaml = yaml_chain(&log, n, rng.below(201), rng.below(201), rng.below(201));
        let delay = rng.below(301);
        let (base, sem) = (base.clone(), sem.clone());
        handles.push(tokio::spawn(async move {
            let _p = sem.acquire_owned().await.unwrap();
            let client = http();
            let (code, b) = try_submit(&client, &base, &yaml, "cancels", None)
                .await
                .expect("submit");
            assert_eq!(code, 200, "{b}");
            let id = b["run_id"].as_str().unwrap().to_string();
            tokio::time::sleep(Duration::from_millis(delay)).await;
            let r = client
                .post(format!("{base}/runs/{id}/cancel"))
                .send()
                .await
                .expect("cancel");
            assert_eq!(r.status().as_u16(), 200);
            let c: Value = r.json().await.unwrap();
            (id, c["status"].as_str().unwrap_or("").to_string())
        }));
    }
    let mut answers = Vec::new();
    for h in handles {
        answers.push(h.await.unwrap());
    }
    let ids: Vec<String> = answers.iter().map(|(i, _)| i.clone()).collect();
    let done = wait_all_terminal(&base, &ids, Duration::from_secs(150)).await;
    let mut table: BTreeMap<(String, String), usize> = BTreeMap::new();
    for (id, answered) in &answers {
        let end = done[id]["status"].as_str().unwrap().to_string();
        if !TERMINAL.contains(&answered.as_str()) || answered == "CANCELLED" {
            assert_eq!(
                end, "CANCELLED",
                "run {id}: cancel answered {answered}, ended {end}"
            );
        } else {
            assert_eq!(
                &end, answered,
                "run {id}: a late cancel changed the end state"
            );
        }
        *table.entry((answered.clone(), end)).or_insert(0) += 1;
    }
    eprintln!(
        "[reliability] cancels: runs {total} (cancel answer, end) -> count: {table:?} lost 0"
    );
    gw.daemon().assert_running();
}

/// One raw HTTP/1.1 exchange: returns the status code (None if the server closed without an
/// answer or did not answer within 5 s — neither is a 5xx, both are counted).
async fn raw_exchange(port: u16, request: &[u8]) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    s.write_all(request).await.ok()?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let read = async {
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(k) => {
                    buf.extend_from_slice(&chunk[..k]);
                    if buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.len() > 65536 {
                        break;
                    }
                }
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), read).await;
    let line = String::from_utf8_lossy(&buf);
    line.strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok())
}

fn fuzz_request(rng: &mut Rng, run_id: &str) -> Vec<u8> {
    let methods = [
        "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE", "FOO",
    ];
    let paths = [
        "/health".to_string(),
        "/runs".to_string(),
        "/runs/yaml".to_string(),
        format!("/runs/{run_id}"),
        format!("/runs/{run_id}/tasks"),
        format!("/runs/{run_id}/cancel"),
        format!("/runs/{run_id}/watch"),
        "/runs/watch".to_string(),
        "/workers".to_string(),
        "/workers/x".to_string(),
        "/metrics".to_string(),
        "/openapi.json".to_string(),
        "/docs".to_string(),
        "/runs/%00".to_string(),
        "/runs/..%2f..%2f".to_string(),
        "/runs/a.b.c".to_string(),
        "/runs/*".to_string(),
        "/runs/>".to_string(),
        "//runs".to_string(),
        format!("/runs/{}", "x".repeat(5000)),
    ];
    let odd = [
        "%", "%zz", "%ff%fe", "\u{7f}", "é", "..", "*", ">", " ", "\t", "%20", ";", "#",
    ];
    let queries = [
        "",
        "?limit=0",
        "?limit=-1",
        "?limit=99999999999999999999",
        "?limit=abc",
        "?status=%ff",
        "?tag=a.b",
        "?cursor=",
        "?cursor=!!!",
        "?cursor=eyJ1IjoxfQ",
        "?updated_after=nan",
        "?updated_after=1e400",
        "?include=full",
        "?include=zzz",
        "?since=-5",
        "?a=1&a=2&a=3",
        "?%00=%00",
    ];
    let bodies: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"{".to_vec(),
        b"null".to_vec(),
        b"[]".to_vec(),
        b"{\"flow_name\":\"\"}".to_vec(),
        b"{\"flow_name\":1,\"params\":[]}".to_vec(),
        b"{\"flow_name\":\"x\",\"tag\":\"a.b\"}".to_vec(),
        b"{\"flow_name\":\"x\",\"tag\":\"\xff\"}".to_vec(),
        b"{\"flow_name\":\"x\",\"timeout_sec\":-1}".to_vec(),
        b"{\"flow_name\":\"x\",\"params\":{\"a\":1e999}}".to_vec(),
        format!("{{\"flow_name\":\"{}\"}}", "y".repeat(10_000)).into_bytes(),
        "[".repeat(3000).into_bytes(),
        vec![0xff, 0xfe, 0x00, 0x01],
        b"--B\r\nContent-Disposition: form-data; name=\"workflow\"; filename=\"f\"\r\n\r\nversion: 1\r\n--B--\r\n".to_vec(),
        b"--B\r\nContent-Disposition: form-data; name=\"flow_name\"\r\n\r\nmain\r\n--B\r\nContent-Disposition: form-data; name=\"workflow\"\r\n\r\n: : :\r\n--B--\r\n".to_vec(),
        b"--B\r\nbroken".to_vec(),
        b"--B\r\nContent-Disposition: form-data; name=\"flow_name\"\r\n\r\nmain\r\n--B\r\nContent-Disposition: form-data; name=\"tag\"\r\n\r\n..\r\n--B\r\nContent-Disposition: form-data; name=\"workflow\"\r\n\r\nversion: 1\nflow: {graph: 'a >> '}\ntasks: {}\n\r\n--B--\r\n".to_vec(),
    ];
    let ctypes = [
        "application/json",
        "multipart/form-data; boundary=B",
        "multipart/form-data",
        "multipart/form-data; boundary=",
        "text/plain",
        "application/json; charset=\u{1}",
        "",
    ];
    let extra_headers = [
        "",
        "X-API-Key: \r\n",
        "X-API-Key: nope\r\n",
        "Idempotency-Key: k\r\n",
        "Idempotency-Key: \u{7f}\u{7f}\r\n",
        "Last-Event-ID: -1\r\n",
        "Accept: text/event-stream\r\n",
        "Transfer-Encoding: chunked\r\n",
        "X-Odd: \u{1}\r\n",
    ];
    let method = *rng.pick(&methods);
    let mut path = rng.pick(&paths).clone();
    if rng.below(3) == 0 {
        let o: &&str = rng.pick(&odd);
        path.push_str(o);
    }
    let q: &&str = rng.pick(&queries);
    path.push_str(q);
    let body = rng.pick(&bodies).clone();
    let ct = *rng.pick(&ctypes);
    let hdr = *rng.pick(&extra_headers);
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n")
        .into_bytes();
    if !ct.is_empty() {
        req.extend_from_slice(format!("Content-Type: {ct}\r\n").as_bytes());
    }
    req.extend_from_slice(hdr.as_bytes());
    if hdr.starts_with("Transfer-Encoding") {
        // A valid chunked framing of the body.
        req.extend_from_slice(b"\r\n");
        req.extend_from_slice(format!("{:x}\r\n", body.len()).as_bytes());
        req.extend_from_slice(&body);
        req.extend_from_slice(b"\r\n0\r\n\r\n");
    } else {
        req.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
        req.extend_from_slice(&body);
    }
    req
}

/// Fault: hostile input. ≥ 2 000 malformed requests (random methods, paths with odd bytes,
/// bodies, headers, query strings, multipart) from a seeded RNG against every endpoint, 8 at a
/// time. Proves: no 5xx (bad input is a 4xx naming the problem), and the gateway is healthy
/// afterwards (serves `/health` and a real submit).
#[tokio::test]
async fn fuzzing_every_endpoint_yields_no_5xx() {
    let seed = seed_from_env("PYOCO_FUZZ_SEED");
    let nats = NatsServer::start().await;
    let mut gw = Gateway::start(&nats.url(), &[]).await;
    gw.wait_nats_connected().await;
    let base = gw.base_url();
    let port = gw.port();
    let run_id = submit_flow_yaml(&base, example_flow_yaml(), "main", "fuzz").await;
    let total = 2000 * scale();
    let mut rng = Rng::new(seed);
    let requests: Vec<Vec<u8>> = (0..total)
        .map(|_| fuzz_request(&mut rng, &run_id))
        .collect();
    let sem = Arc::new(tokio::sync::Semaphore::new(8));
    let mut handles = Vec::new();
    for (i, req) in requests.into_iter().enumerate() {
        let sem = sem.clone();
        handles.push(tokio::spawn(async move {
            let _p = sem.acquire_owned().await.unwrap();
            (i, raw_exchange(port, &req).await, req)
        }));
    }
    let mut by_code: BTreeMap<String, usize> = BTreeMap::new();
    let mut bad = Vec::new();
    for h in handles {
        let (i, code, req) = h.await.unwrap();
        let key = code.map(|c| c.to_string()).unwrap_or_else(|| "none".into());
        *by_code.entry(key).or_insert(0) += 1;
        if code.is_some_and(|c| c >= 500) {
            bad.push(format!(
                "#{i}: {code:?} for {:?}",
                String::from_utf8_lossy(&req[..req.len().min(300)])
            ));
        }
    }
    eprintln!("[reliability] fuzz: seed {seed} requests {total} answers {by_code:?}");
    assert!(
        bad.is_empty(),
        "seed {seed} (PYOCO_FUZZ_SEED={seed} replays): {} 5xx answers:\n{}",
        bad.len(),
        bad.iter().take(10).cloned().collect::<Vec<_>>().join("\n")
    );
    gw.daemon().assert_running();
    gw.wait_nats_connected().await;
    let id = submit_flow_yaml(&base, example_flow_yaml(), "main", "fuzz").await;
    assert!(!id.is_empty());
}

// ---------------------------------------------------------------------------------------------
// The 3-node secured cluster.

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// The secured cluster of the failover test: formed (60 s on a loaded machine), every node
/// healthy.
async fn secured_cluster(d: &TestDir) -> Vec<ClusterMember> {
    start_secured_cluster(d, &d.join("auth"), Duration::from_secs(60)).await
}

fn password(auth: &Path, file: &str) -> String {
    std::fs::read_to_string(auth.join(file))
        .unwrap_or_else(|e| panic!("{}: {e}", auth.join(file).display()))
        .trim()
        .to_string()
}

/// Fault: SIGKILL of one node of a 3-node secured cluster (`pyococtl up --cluster` + `join
/// --seed`) under load. Gateways and workers log in with their role users and list all three
/// nodes in `nats_url`; resources are created with 3 replicas (asserted from stream info).
/// Proves: runs submitted before and after the kill all complete, nothing is lost, and both
/// gateways and both workers keep working through the surviving nodes — the worker whose node
/// died fetches again at once (its pending pull died with the node; before the fix it waited
/// for the pull's expiry + 5 s while the other worker did all the work).
#[tokio::test]
async fn a_killed_cluster_node_loses_nothing_and_clients_fail_over() {
    let d = TestDir::new("rel-cluster");
    let mut members = secured_cluster(&d).await;
    let auth = d.join("auth");
    let url: String = members
        .iter()
        .map(|m| format!("nats://127.0.0.1:{}", m.client))
        .collect::<Vec<_>>()
        .join(",");
    let gw_pw = s(&auth.join("gateway.password"));
    let w_pw = s(&auth.join("worker.password"));
    let gw_env = [
        ("PYOCO_NATS_USER", "pyoco-gateway"),
        ("PYOCO_NATS_PASSWORD_FILE", gw_pw.as_str()),
        ("PYOCO_NATS_REPLICAS", "0"),
    ];
    // The default 5 s long poll (not FAST's 1 s): a pull lost with its node must be noticed
    // at once, not after async-nats' expiry + 5 s.
    let mut w_env: Vec<(&str, &str)> = FAST
        .iter()
        .filter(|(k, _)| *k != "PYOCO_WORKER_POLL_TIMEOUT_SEC")
        .copied()
        .collect();
    w_env.extend([
        ("PYOCO_NATS_USER", "pyoco-worker"),
        ("PYOCO_NATS_PASSWORD_FILE", w_pw.as_str()),
        ("PYOCO_NATS_REPLICAS", "0"),
    ]);
    let mut g1 = Gateway::start(&url, &gw_env).await;
    g1.wait_nats_connected().await;
    let mut g2 = Gateway::start(&url, &gw_env).await;
    g2.wait_nats_connected().await;
    // Stream info as the admin: every resource has 3 replicas.
    let admin = password(&auth, "admin.password");
    let nc = async_nats::ConnectOptions::new()
        .user_and_password("pyoco-admin".into(), admin)
        .connect(format!("127.0.0.1:{}", members[1].client))
        .await
        .expect("admin connects");
    let mut replicas = BTreeMap::new();
    for name in ["PYOCO_WORK", "KV_pyoco_runs", "KV_pyoco_workers"] {
        let msg = nc
            .request(format!("$JS.API.STREAM.INFO.{name}"), "".into())
            .await
            .unwrap_or_else(|e| panic!("stream info {name}: {e}"));
        let info: Value = serde_json::from_slice(&msg.payload).expect("stream info JSON");
        replicas.insert(name, info["config"]["num_replicas"].clone());
        assert_eq!(info["config"]["num_replicas"], 3, "{name}: {info}");
    }
    let dir = tasks_dir();
    let log = dir.join("exec.log");
    let tag = "cluster";
    let mut w1 = start_worker(&url, tag, "cl1", dir.path(), &w_env).await;
    let mut w2 = start_worker(&url, tag, "cl2", dir.path(), &w_env).await;
    let client = http();
    let mut ids = Vec::new();
    let gws = [g1.base_url(), g2.base_url()];
    for n in 0..20 {
        let (code, b) = try_submit(&client, &gws[n % 2], &yaml_step(&log, n, 300), tag, None)
            .await
            .unwrap();
        assert_eq!(code, 200, "{b}");
        ids.push(b["run_id"].as_str().unwrap().to_string());
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // The node serving worker cl1 dies (so a worker's pending pull dies with it), and with it
    // whatever else it served.
    let mut conns = Vec::new();
    let mut victim = None;
    for (i, m) in members.iter().enumerate() {
        let j: Value = http()
            .get(format!("http://127.0.0.1:{}/connz", m.monitor))
            .send()
            .await
            .expect("connz")
            .json()
            .await
            .expect("connz JSON");
        conns.push(j["num_connections"].as_u64().unwrap_or(0));
        let names: Vec<&str> = j["connections"]
            .as_array()
            .map(|a| a.iter().filter_map(|c| c["name"].as_str()).collect())
            .unwrap_or_default();
        if names.contains(&"pyoco-nats-worker:cl1") {
            victim = Some(i);
        }
    }
    let victim = victim.unwrap_or_else(|| panic!("worker cl1 is connected nowhere: {conns:?}"));
    members[victim].daemon.kill();
    assert!(
        !nats_healthz(members[victim].monitor).await,
        "the killed node still answers"
    );
    let mut after_retries = 0;
    for n in 20..40 {
        // A submit racing the failover may be refused (503) or cut off; retried like a client
        // would, with an Idempotency-Key so a retry cannot make a second run.
        let key = format!("cl-{n}");
        let deadline = Instant::now() + Duration::from_secs(60);
        let id = loop {
            match try_submit(
                &client,
                &gws[n % 2],
                &yaml_step(&log, n, 300),
                tag,
                Some(&key),
            )
            .await
            {
                Ok((200, b)) => break b["run_id"].as_str().unwrap().to_string(),
                Ok((code, b)) => assert!(code == 503, "{code} {b}"),
                Err(_) => {}
            }
            after_retries += 1;
            assert!(
                Instant::now() < deadline,
                "no gateway accepted {key} after the kill"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        ids.push(id);
    }
    let done = wait_all_terminal(&gws[1], &ids, Duration::from_secs(120)).await;
    let dist = distribution(&done);
    assert_eq!(
        dist.get("COMPLETED").copied().unwrap_or(0),
        ids.len(),
        "{dist:?}"
    );
    // Both gateways report NATS connected again (through a survivor) …
    for g in &gws {
        let url = format!("{g}/health");
        let ok = wait_until(Duration::from_secs(15), Duration::from_millis(100), || {
            let url = url.clone();
            async move {
                match http().get(&url).send().await {
                    Ok(r) => r
                        .json::<Value>()
                        .await
                        .is_ok_and(|v| v["nats"] == "connected"),
                    Err(_) => false,
                }
            }
        })
        .await;
        assert!(ok, "{g} does not report NATS connected after the node died");
    }
    // … and both workers execute runs submitted after the kill — cl1 among them, whose node
    // died: it failed over. Under a loaded machine the 20 runs above may all go to cl2 before
    // cl1 is back, so more small bursts follow until cl1 took one (bounded).
    let worker_pids: HashSet<u32> = [w1.daemon().pid(), w2.daemon().pid()].into();
    let after_pids = |execs: &HashMap<usize, Vec<u32>>| -> HashSet<u32> {
        execs
            .iter()
            .filter(|(n, _)| **n >= 20)
            .flat_map(|(_, pids)| pids.iter().copied())
            .collect()
    };
    let mut next = 40;
    let deadline = Instant::now() + Duration::from_secs(90);
    while after_pids(&executions(&log)) != worker_pids {
        assert!(
            Instant::now() < deadline,
            "runs after the kill were not executed by both workers: {:?} of {worker_pids:?}\ncl1 log:\n{}",
            after_pids(&executions(&log)),
            w1.log_text()
        );
        let mut burst = Vec::new();
        for n in next..next + 4 {
            if let Ok((200, b)) =
                try_submit(&client, &gws[n % 2], &yaml_step(&log, n, 300), tag, None).await
            {
                burst.push(b["run_id"].as_str().unwrap_or_default().to_string());
            }
        }
        next += 4;
        let more = wait_all_terminal(&gws[1], &burst, Duration::from_secs(60)).await;
        let d = distribution(&more);
        assert_eq!(
            d.get("COMPLETED").copied().unwrap_or(0),
            burst.len(),
            "{d:?}"
        );
    }
    for g in [&mut g1, &mut g2] {
        g.daemon().assert_running();
    }
    w1.daemon().assert_running();
    w2.daemon().assert_running();
    eprintln!(
        "[reliability] cluster: replicas {replicas:?} client connections per node {conns:?}, killed n{} \
         runs {} (20 before, 20 after the kill) retries after the kill {after_retries} lost 0 statuses {dist:?}",
        victim + 1,
        ids.len()
    );
}
