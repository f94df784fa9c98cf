//! Following a run over `GET /runs/{run_id}/watch` (SSE), with reconnects.
//!
//! - Each event's `id:` (our gateway: the KV revision) is remembered and sent back as
//!   `Last-Event-ID` when the connection is re-opened, so nothing is missed or repeated. The
//!   original gateway sends no ids; there the first snapshot after a reconnect is dropped when it
//!   equals the last one shown.
//! - A dropped connection, a 5xx answer, or 30 s without a byte (both gateways send a heartbeat
//!   every 5 s) → reconnect, backing off from 0.25 s to 2 s, until the watch's deadline.
//! - The watch ends at the first terminal snapshot (our gateway also ends the stream there; the
//!   original's stream goes on with heartbeats until its `timeout_sec`), at `--max-events`, or
//!   at the deadline (`--timeout-sec`; each connection asks the server for the time left, at most
//!   600 s, so longer watches reconnect transparently).

use pyoco_core::wire::fields;
use std::time::Duration;

use pyoco_core::wire::run_status::is_terminal;
use serde_json::{json, Value};
use tokio::time::Instant;

use super::pyjson;
use crate::client::{Client, CtlResult};
use crate::output as out;

const IDLE: Duration = Duration::from_secs(30);
const MAX_SERVER_TIMEOUT: u64 = 600;

/// What to follow and when to stop.
#[derive(Debug, Clone)]
pub struct Spec {
    pub run_id: String,
    pub include_records: bool,
    pub since: Option<f64>,
    /// Seconds; 0 = no limit.
    pub timeout_sec: u64,
    pub until_terminal: bool,
    /// 0 = unlimited.
    pub max_events: u64,
    /// Connection errors on the very first request end the watch at once (a wrong `--server`
    /// should not look like a long wait); later ones are retried.
    pub fail_fast: bool,
}

/// One received event.
#[derive(Debug, Clone)]
pub struct WatchEvent {
    pub name: String,
    /// The `data:` JSON (`{"raw": text}` when it is not JSON, as pyoco-client does).
    pub data: Value,
}

/// Why the watch ended.
#[derive(Debug, Clone)]
pub enum End {
    /// A snapshot with a terminal status arrived.
    Terminal { status: String },
    /// The deadline passed first (without `--until-terminal` this is the normal end).
    Deadline {
        last_status: Option<String>,
        last_error: Option<String>,
    },
    /// `--max-events` events were shown.
    MaxEvents { last_status: Option<String> },
}

/// Where events go.
pub trait Sink {
    fn event(&mut self, ev: &WatchEvent) -> CtlResult<()>;
    /// Connection trouble (`Some`) or its end (`None`). Default: one line on stderr.
    fn note(&mut self, note: Option<String>) -> CtlResult<()> {
        if let Some(n) = note {
            eprintln!("pyococtl: {n}");
        }
        Ok(())
    }
    fn wants_ticks(&self) -> bool {
        false
    }
    fn tick(&mut self) -> CtlResult<()> {
        Ok(())
    }
    fn finish(&mut self, _end: &End) -> CtlResult<()> {
        Ok(())
    }
}

/// pyoco-client's default: `{"event": name, "data": payload}` per line.
pub struct JsonLines;

impl Sink for JsonLines {
    fn event(&mut self, ev: &WatchEvent) -> CtlResult<()> {
        out::line(&pyjson::dumps(&json!({"event": ev.name, "data": ev.data})))
    }
}

/// pyoco-client's `--output status`: `<ts>\t<event>\t<status or ->\t<run_id>`.
pub struct StatusLines;

impl Sink for StatusLines {
    fn event(&mut self, ev: &WatchEvent) -> CtlResult<()> {
        out::line(&status_line(ev))
    }
}

/// `str(data.ts or snapshot.updated_at or "-")` etc., Python truthiness included.
pub fn status_line(ev: &WatchEvent) -> String {
    fn truthy(v: Option<&Value>) -> Option<&Value> {
        v.filter(|v| match v {
            Value::Null => false,
            Value::Bool(b) => *b,
            Value::Number(n) => n.as_f64() != Some(0.0),
            Value::String(s) => !s.is_empty(),
            Value::Array(a) => !a.is_empty(),
            Value::Object(o) => !o.is_empty(),
        })
    }
    let empty = Value::Object(Default::default());
    let snap = truthy(ev.data.get("snapshot")).unwrap_or(&empty);
    let pick = |a: Option<&Value>, b: Option<&Value>| {
        truthy(a)
            .or(truthy(b))
            .map(pyjson::py_str)
            .unwrap_or_else(|| "-".to_string())
    };
    let run_id = pick(ev.data.get("run_id"), snap.get("run_id"));
    let status = pick(snap.get("status"), None);
    let ts = pick(ev.data.get("ts"), snap.get("updated_at"));
    format!("{ts}\t{}\t{status}\t{run_id}", ev.name)
}

/// Collects nothing but the last snapshot (for `cancel --wait`); notes go to stderr.
#[derive(Default)]
pub struct Quiet;

impl Sink for Quiet {
    fn event(&mut self, _ev: &WatchEvent) -> CtlResult<()> {
        Ok(())
    }
}

fn path(run_id: &str) -> String {
    format!("/runs/{}/watch", super::encode_segment(run_id))
}

/// Follows the run until it ends (see the module comment). HTTP errors that retrying cannot fix
/// (401, 403, 404, 422, …) are returned as errors.
pub async fn follow(client: &Client, spec: &Spec, sink: &mut dyn Sink) -> CtlResult<End> {
    let start = Instant::now();
    // Without --until-terminal the server ending the stream at --timeout-sec is the normal end;
    // leave it a moment to do so.
    let grace = if spec.until_terminal {
        Duration::ZERO
    } else {
        Duration::from_secs(2)
    };
    let limit_at = (spec.timeout_sec > 0).then(|| start + Duration::from_secs(spec.timeout_sec));
    let deadline = limit_at.map(|l| l + grace);
    let far = start + Duration::from_secs(100 * 365 * 86400);
    let until = deadline.unwrap_or(far);

    let mut last_id: Option<String> = None;
    let mut last_snapshot: Option<Value> = None;
    let mut last_status: Option<String> = None;
    let mut last_error: Option<String> = None;
    let mut connected_once = !spec.fail_fast;
    let mut count: u64 = 0;
    let mut backoff = Duration::from_millis(250);
    let mut in_trouble = false;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // A run nobody can take stays PENDING forever: say so instead of waiting silently.
    let (hint_tx, mut hint_rx) = tokio::sync::mpsc::channel::<String>(1);
    let _hint_task = AbortOnDrop(tokio::spawn(pending_hint(
        client.clone(),
        spec.run_id.clone(),
        hint_tx,
    )));
    let mut hint_shown = false;

    let deadline_end = |last_status: &Option<String>, last_error: &Option<String>| End::Deadline {
        last_status: last_status.clone(),
        last_error: last_error.clone(),
    };

    loop {
        let now = Instant::now();
        if now >= until {
            return Ok(deadline_end(&last_status, &last_error));
        }
        let server_timeout = match limit_at {
            Some(d) => (d.saturating_duration_since(now).as_secs_f64().ceil() as u64)
                .clamp(1, MAX_SERVER_TIMEOUT),
            None => MAX_SERVER_TIMEOUT,
        };
        let mut query: Vec<(&str, String)> = Vec::new();
        if spec.include_records {
            query.push(("include", "records".into()));
        }
        if let Some(since) = spec.since {
            query.push(("since", pyjson::float_repr(since)));
        }
        query.push((fields::run::TIMEOUT_SEC, server_timeout.to_string()));
        let mut req = client
            .request(reqwest::Method::GET, &path(&spec.run_id))
            .query(&query)
            .header(reqwest::header::ACCEPT, "text/event-stream");
        if let Some(id) = &last_id {
            req = req.header("Last-Event-ID", id.as_str());
        }

        let sent = tokio::select! {
            r = client.try_send(req) => r,
            _ = tokio::time::sleep_until(until) => return Ok(deadline_end(&last_status, &last_error)),
        };
        let mut resp = match sent {
            Ok(r) => r,
            Err(e) => {
                let retry = match e.status {
                    None => connected_once,
                    Some(s) => s >= 500 || s == 408 || s == 429,
                };
                if !retry {
                    return Err(e.error);
                }
                let reason = reason_of(&e.error.message);
                if !in_trouble || last_error.as_deref() != Some(reason.as_str()) {
                    sink.note(Some(format!("{reason}; retrying{}", resume_hint(&last_id))))?;
                }
                in_trouble = true;
                last_error = Some(reason);
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = tokio::time::sleep_until(until) => return Ok(deadline_end(&last_status, &last_error)),
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        let reconnect = connected_once;
        connected_once = true;
        if in_trouble {
            in_trouble = false;
            sink.note(None)?;
            if !sink.wants_ticks() {
                eprintln!("pyococtl: reconnected{}", resume_hint(&last_id));
            }
        }

        let opened = Instant::now();
        let mut parser = pyoco_core::sse::Parser::new();
        let mut first_snapshot = true;
        let dropped: Option<String> = loop {
            tokio::select! {
                chunk = tokio::time::timeout(IDLE, resp.chunk()) => match chunk {
                    Err(_) => break Some(format!("no data from the gateway for {} s", IDLE.as_secs())),
                    Ok(Err(e)) => break Some(format!("connection to {} lost ({e})", client.base)),
                    Ok(Ok(None)) => break None,
                    Ok(Ok(Some(bytes))) => {
                        for ev in parser.push(&bytes) {
                            // Core keeps values as sent; stray spaces around a name or an id are tolerated here.
                            if let Some(id) = ev.id.as_deref().map(str::trim).filter(|i| !i.is_empty()) {
                                last_id = Some(id.to_string());
                            }
                            let name = match ev.event.trim() {
                                "" => "message".to_string(),
                                n => n.to_string(),
                            };
                            let data: Value = serde_json::from_str(ev.data.trim()).unwrap_or_else(|_| json!({"raw": ev.data}));
                            let mut status = None;
                            if name == "snapshot" {
                                let snap = data.get("snapshot").cloned();
                                let dup = reconnect && first_snapshot && snap.is_some() && snap == last_snapshot;
                                first_snapshot = false;
                                if dup {
                                    continue;
                                }
                                status = snap.as_ref().and_then(|s| s.get("status")).and_then(Value::as_str).map(str::to_string);
                                last_snapshot = snap;
                                if status.is_some() {
                                    last_status = status.clone();
                                }
                            }
                            if hint_shown && status.as_deref().is_some_and(|s| !s.eq_ignore_ascii_case("PENDING")) {
                                hint_shown = false;
                                sink.note(None)?;
                            }
                            let wev = WatchEvent { name, data };
                            sink.event(&wev)?;
                            count += 1;
                            if let Some(st) = status.filter(|s| is_terminal(s)) {
                                // Upper case, as the exit code mapping expects.
                                return Ok(End::Terminal { status: st.to_ascii_uppercase() });
                            }
                            if spec.max_events > 0 && count >= spec.max_events {
                                return Ok(End::MaxEvents { last_status: last_status.clone() });
                            }
                        }
                    }
                },
                _ = tick.tick(), if sink.wants_ticks() => sink.tick()?,
                Some(hint) = hint_rx.recv() => {
                    if last_status.as_deref().is_none_or(|s| s.eq_ignore_ascii_case("PENDING")) {
                        hint_shown = true;
                        sink.note(Some(hint))?;
                    }
                }
                _ = tokio::time::sleep_until(until) => return Ok(deadline_end(&last_status, &last_error)),
            }
        };
        if opened.elapsed() >= Duration::from_secs(1) {
            backoff = Duration::from_millis(250);
        }
        match dropped {
            // The server ended the stream: its timeout (the normal end without --until-terminal
            // when our deadline is near), a restart, or the run went away (the next request says 404).
            None => {
                if !spec.until_terminal
                    && limit_at
                        .map(|l| Instant::now() + Duration::from_secs(1) >= l)
                        .unwrap_or(false)
                {
                    return Ok(deadline_end(&last_status, &last_error));
                }
                // A gateway that keeps closing at once (the original does on a NATS error) is
                // not hammered.
                if opened.elapsed() < Duration::from_secs(1) {
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = tokio::time::sleep_until(until) => return Ok(deadline_end(&last_status, &last_error)),
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
            Some(reason) => {
                sink.note(Some(format!(
                    "{reason}; reconnecting{}",
                    resume_hint(&last_id)
                )))?;
                in_trouble = true;
                last_error = Some(reason);
            }
        }
    }
}

/// Aborts the task when the watch ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How long a run may stay PENDING before the watch looks for a worker that can take it.
const PENDING_HINT_AFTER: Duration = Duration::from_secs(5);

/// After [`PENDING_HINT_AFTER`], if the run is still PENDING and no live worker serves its tag,
/// sends one line saying so and how to start one. Best effort: any error means no hint.
async fn pending_hint(client: Client, run_id: String, tx: tokio::sync::mpsc::Sender<String>) {
    tokio::time::sleep(PENDING_HINT_AFTER).await;
    let Ok(run) = client
        .get_json(&format!("/runs/{}", super::encode_segment(&run_id)), &[])
        .await
    else {
        return;
    };
    if run.get("status").and_then(Value::as_str) != Some("PENDING") {
        return;
    }
    let Some(tag) = run.get("tag").and_then(Value::as_str).map(str::to_string) else {
        return;
    };
    let Ok(workers) = client
        .get_json("/workers", &[("scope", "active".into())])
        .await
    else {
        return;
    };
    if let Some(hint) = no_worker_hint(&tag, &workers) {
        let _ = tx.send(hint).await;
    }
}

/// The hint when no active worker in `GET /workers` serves `tag`.
fn no_worker_hint(tag: &str, workers: &Value) -> Option<String> {
    let serves = |w: &Value| {
        w.get("tags")
            .and_then(Value::as_array)
            .is_some_and(|tags| tags.iter().any(|t| t.as_str() == Some(tag)))
    };
    let list = workers.as_array()?;
    if list.iter().any(serves) {
        return None;
    }
    Some(format!(
        "still PENDING: no live worker serves tag '{tag}' (GET /workers); the run waits until one does. \
         Start one: pyoco-worker --tags {tag} (packaged: systemctl start pyoco-worker@{tag})"
    ))
}

fn resume_hint(last_id: &Option<String>) -> String {
    match last_id {
        Some(id) => format!(" (Last-Event-ID: {id})"),
        None => String::new(),
    }
}

/// The `- reason:` line of a CtlError message, else its first line.
fn reason_of(message: &str) -> String {
    message
        .lines()
        .find_map(|l| l.strip_prefix("- reason: "))
        .unwrap_or_else(|| message.lines().next().unwrap_or(message))
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hint_only_when_no_active_worker_serves_the_tag() {
        let workers = json!([{"worker_id": "w1", "tags": ["gpu", "hello"]}]);
        assert_eq!(no_worker_hint("hello", &workers), None);
        let hint = no_worker_hint("cpu", &workers).unwrap();
        assert!(hint.contains("no live worker serves tag 'cpu'"), "{hint}");
        assert!(hint.contains("pyoco-worker --tags cpu"), "{hint}");
        assert!(no_worker_hint("x", &json!([])).is_some());
        assert_eq!(no_worker_hint("x", &json!({"detail": "?"})), None);
    }

    #[test]
    fn status_lines_like_pyoco_client() {
        let ev = WatchEvent {
            name: "snapshot".into(),
            data: json!({"run_id": "r", "snapshot": {"run_id": "r", "status": "RUNNING", "updated_at": 5.0}, "ts": 1795813680.25}),
        };
        assert_eq!(status_line(&ev), "1795813680.25\tsnapshot\tRUNNING\tr");
        let hb = WatchEvent {
            name: "heartbeat".into(),
            data: json!({"run_id": "r", "ts": 7.0}),
        };
        assert_eq!(status_line(&hb), "7.0\theartbeat\t-\tr");
        let raw = WatchEvent {
            name: "message".into(),
            data: json!({"raw": "x"}),
        };
        assert_eq!(status_line(&raw), "-\tmessage\t-\t-");
    }
}
