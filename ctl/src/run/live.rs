//! The live view of `run watch` at a terminal: the run, its status with the elapsed time, and one
//! line per task, redrawn in place on every event (and every second, so times keep moving).
//!
//! ```text
//! run 5c1e…  flow main  tag default  worker host-default
//! RUNNING  3.21s
//!   ✓ add_one   SUCCEEDED  0.01s
//!   ▸ slow      RUNNING    3.02s
//!   · after     PENDING
//! ```

use pyoco_core::wire::fields;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;

use super::watch::{End, Sink, WatchEvent};
use crate::client::CtlResult;
use crate::output as out;

const RESET: &str = "\x1b[0m";
const BOLD: &str = "\x1b[1m";
const DIM: &str = "\x1b[2m";
const RED: &str = "\x1b[31m";
const GREEN: &str = "\x1b[32m";
const YELLOW: &str = "\x1b[33m";
const CYAN: &str = "\x1b[36m";

/// What the view knows.
#[derive(Debug, Default, Clone)]
pub struct State {
    pub run_id: String,
    pub snapshot: Option<Value>,
    /// Server clock minus local clock, from the events' `ts` (task durations use server times).
    pub offset: f64,
    /// A transient remark (`reconnecting…`).
    pub note: Option<String>,
}

/// A run of text with an optional style.
type Part = (String, Option<&'static str>);

fn part(s: impl Into<String>, style: Option<&'static str>) -> Part {
    (s.into(), style)
}

/// Local unix time in seconds.
pub fn local_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// `0.01s`, `3.21s`, `12.3s`, `4m05s`, `1h02m`.
pub fn fmt_duration(secs: f64) -> String {
    let secs = secs.max(0.0);
    if secs < 10.0 {
        format!("{secs:.2}s")
    } else if secs < 60.0 {
        format!("{secs:.1}s")
    } else if secs < 3600.0 {
        let s = secs as u64;
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        let s = secs as u64;
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    }
}

fn status_style(status: &str) -> Option<&'static str> {
    match status {
        "COMPLETED" | "SUCCEEDED" => Some(GREEN),
        "FAILED" => Some(RED),
        "CANCELLED" | "CANCELLING" => Some(YELLOW),
        "RUNNING" => Some(CYAN),
        _ => None,
    }
}

fn task_symbol(state: &str) -> &'static str {
    match state {
        "SUCCEEDED" => "✓",
        "FAILED" => "✗",
        "CANCELLED" => "⊘",
        "RUNNING" => "▸",
        _ => "·",
    }
}

fn f(v: Option<&Value>) -> Option<f64> {
    v.and_then(Value::as_f64)
}

fn s(v: Option<&Value>) -> Option<&str> {
    v.and_then(Value::as_str)
}

/// Seconds the run has taken so far (or took), and whether it is still waiting for a worker.
fn run_elapsed(snap: &Value, server_now: f64) -> Option<(f64, bool)> {
    let status = s(snap.get("status")).unwrap_or("");
    let terminal = pyoco_core::wire::run_status::is_terminal(status);
    match f(snap.get("start_time")) {
        Some(start) => {
            let end = f(snap.get("end_time")).or_else(|| {
                if terminal {
                    f(snap.get("updated_at"))
                } else {
                    None
                }
            });
            Some((end.unwrap_or(server_now) - start, false))
        }
        None if status == "PENDING" => f(snap.get("updated_at")).map(|u| (server_now - u, true)),
        None => None,
    }
}

/// Task names in display order: the started ones by start time, then the others in the order of
/// `tasks` (then of `task_records`).
fn task_names(snap: &Value) -> Vec<String> {
    let mut names: Vec<String> = snap
        .get("tasks")
        .and_then(Value::as_object)
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    let recs = snap
        .get(fields::run::TASK_RECORDS)
        .and_then(Value::as_object);
    if let Some(recs) = recs {
        for k in recs.keys() {
            if !names.contains(k) {
                names.push(k.clone());
            }
        }
    }
    let started = |n: &String| {
        f(recs
            .and_then(|r| r.get(n))
            .and_then(|r| r.get("started_at")))
        .unwrap_or(f64::INFINITY)
    };
    // A stable sort keeps the given order among tasks not started yet.
    names.sort_by(|a, b| started(a).total_cmp(&started(b)));
    names
}

/// The lines of the view (without the final line), at most `max_lines`.
pub fn render(state: &State, now: f64) -> Vec<Vec<Part>> {
    let server_now = now + state.offset;
    let mut lines: Vec<Vec<Part>> = Vec::new();
    let Some(snap) = &state.snapshot else {
        let mut l = vec![
            part(format!("run {}", state.run_id), Some(BOLD)),
            part("  waiting for the first snapshot…", Some(DIM)),
        ];
        if let Some(n) = &state.note {
            l.push(part(format!("  ({n})"), Some(YELLOW)));
        }
        lines.push(l);
        return lines;
    };
    let mut head = vec![part(format!("run {}", state.run_id), Some(BOLD))];
    for (label, key) in [
        ("flow", "flow_name"),
        ("tag", "tag"),
        ("worker", "worker_id"),
    ] {
        if let Some(v) = s(snap.get(key)).filter(|v| !v.is_empty()) {
            head.push(part(format!("  {label} {v}"), None));
        }
    }
    lines.push(head);

    let status = s(snap.get("status")).unwrap_or("?");
    let mut st = vec![part(status, status_style(status).or(Some(BOLD)))];
    match run_elapsed(snap, server_now) {
        Some((secs, true)) => st.push(part(
            format!("  waiting for a worker {}", fmt_duration(secs)),
            None,
        )),
        Some((secs, false)) => st.push(part(format!("  {}", fmt_duration(secs)), None)),
        None => {}
    }
    if status == "CANCELLING" {
        st.push(part("  (cancel requested)", Some(DIM)));
    }
    if let Some(n) = &state.note {
        st.push(part(format!("  ({n})"), Some(YELLOW)));
    }
    lines.push(st);

    let names = task_names(snap);
    if names.is_empty() {
        lines.push(vec![part("  (no tasks yet)", Some(DIM))]);
    }
    let width = names.iter().map(|n| n.chars().count()).max().unwrap_or(0);
    let tasks = snap.get("tasks");
    let records = snap.get(fields::run::TASK_RECORDS);
    for name in &names {
        let rec = records.and_then(|r| r.get(name));
        let state_txt = s(tasks.and_then(|t| t.get(name)))
            .or_else(|| s(rec.and_then(|r| r.get("state"))))
            .unwrap_or("PENDING");
        let style = status_style(state_txt);
        let mut l = vec![
            part(format!("  {} ", task_symbol(state_txt)), style),
            part(
                format!("{name}{}  ", " ".repeat(width - name.chars().count())),
                None,
            ),
            part(format!("{state_txt:<9}"), style),
        ];
        let dur = match f(rec.and_then(|r| r.get("duration_ms"))) {
            Some(ms) => Some(ms / 1000.0),
            None if state_txt == "RUNNING" => {
                f(rec.and_then(|r| r.get("started_at"))).map(|t| server_now - t)
            }
            None => None,
        };
        if let Some(d) = dur {
            l.push(part(format!("  {}", fmt_duration(d)), None));
        }
        if let Some(err) = s(rec.and_then(|r| r.get("error"))).filter(|e| !e.is_empty()) {
            l.push(part(
                format!("  {}", err.lines().next().unwrap_or("")),
                Some(RED),
            ));
        }
        lines.push(l);
    }
    lines
}

/// The line printed under the view when the watch ends.
pub fn final_line(state: &State, end: &End, now: f64) -> Vec<Part> {
    let server_now = now + state.offset;
    let snap = state.snapshot.as_ref();
    let elapsed = snap
        .and_then(|s| run_elapsed(s, server_now))
        .map(|(e, _)| fmt_duration(e));
    match end {
        End::Terminal { status, .. } => {
            let mut l = vec![part(status.clone(), status_style(status).or(Some(BOLD)))];
            let verb = if status == "COMPLETED" { "in" } else { "after" };
            if let Some(e) = elapsed {
                l.push(part(format!(" {verb} {e}"), None));
            }
            if status != "COMPLETED" {
                if let Some(err) = snap
                    .and_then(|s| s.get("error"))
                    .and_then(Value::as_str)
                    .filter(|e| !e.is_empty())
                {
                    l.push(part(
                        format!(": {}", err.lines().next().unwrap_or("")),
                        Some(RED),
                    ));
                }
            }
            l
        }
        End::Deadline { last_status, .. } => vec![part(
            format!(
                "stopped watching: the time limit ran out, run still {}",
                last_status.as_deref().unwrap_or("unknown")
            ),
            Some(YELLOW),
        )],
        End::MaxEvents { .. } => vec![part("stopped watching: --max-events reached", Some(DIM))],
    }
}

/// Renders parts to text: styles when `color`, cut to `width` visible characters.
pub fn to_text(parts: &[Part], width: usize, color: bool) -> String {
    let mut out = String::new();
    let mut left = width;
    for (text, style) in parts {
        if left == 0 {
            break;
        }
        let t: String = text.chars().take(left).collect();
        left -= t.chars().count();
        match (style, color) {
            (Some(st), true) => {
                out.push_str(st);
                out.push_str(&t);
                out.push_str(RESET);
            }
            _ => out.push_str(&t),
        }
    }
    out
}

/// The live view as a watch sink.
pub struct Live {
    pub state: State,
    drawn: usize,
    color: bool,
}

impl Live {
    pub fn new(run_id: &str) -> Live {
        let color = std::env::var_os("NO_COLOR")
            .map(|v| v.is_empty())
            .unwrap_or(true)
            && std::env::var("TERM").map(|t| t != "dumb").unwrap_or(true);
        Live {
            state: State {
                run_id: run_id.to_string(),
                ..State::default()
            },
            drawn: 0,
            color,
        }
    }

    fn draw(&mut self) -> CtlResult<()> {
        let (cols, rows) = out::terminal_size().unwrap_or((100, 40));
        let width = cols.saturating_sub(1).max(20);
        let mut lines = render(&self.state, local_now());
        let max = rows.saturating_sub(2).max(3);
        if lines.len() > max {
            let hidden = lines.len() - (max - 1);
            lines.truncate(max - 1);
            lines.push(vec![part(format!("  … {hidden} more tasks"), Some(DIM))]);
        }
        let mut buf = String::new();
        if self.drawn > 0 {
            buf.push_str(&format!("\x1b[{}F", self.drawn));
        }
        for l in &lines {
            buf.push_str("\x1b[2K");
            buf.push_str(&to_text(l, width, self.color));
            buf.push('\n');
        }
        buf.push_str("\x1b[J");
        self.drawn = lines.len();
        out::write(&buf)
    }
}

impl Sink for Live {
    fn event(&mut self, ev: &WatchEvent) -> CtlResult<()> {
        if let Some(ts) = ev.data.get("ts").and_then(Value::as_f64) {
            self.state.offset = ts - local_now();
        }
        if ev.name == "snapshot" {
            if let Some(snap) = ev.data.get("snapshot") {
                self.state.snapshot = Some(snap.clone());
            }
        }
        self.draw()
    }

    fn wants_ticks(&self) -> bool {
        true
    }

    fn tick(&mut self) -> CtlResult<()> {
        self.draw()
    }

    fn note(&mut self, note: Option<String>) -> CtlResult<()> {
        self.state.note = note;
        self.draw()
    }

    fn finish(&mut self, end: &End) -> CtlResult<()> {
        self.state.note = None;
        self.draw()?;
        let (cols, _) = out::terminal_size().unwrap_or((100, 40));
        out::line(&to_text(
            &final_line(&self.state, end, local_now()),
            cols.saturating_sub(1).max(20),
            self.color,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn plain(state: &State, now: f64) -> Vec<String> {
        render(state, now)
            .iter()
            .map(|l| to_text(l, 200, false))
            .collect()
    }

    #[test]
    fn running_run_with_tasks() {
        let st = State {
            run_id: "r1".into(),
            snapshot: Some(json!({
                "run_id": "r1", "flow_name": "main", "tag": "default", "worker_id": "w1", "status": "RUNNING",
                "start_time": 100.0, "end_time": null, "updated_at": 101.0,
                "tasks": {"add_one": "SUCCEEDED", "slow": "RUNNING", "after": "PENDING"},
                "task_records": {
                    "add_one": {"state": "SUCCEEDED", "started_at": 100.0, "duration_ms": 12.0, "error": null},
                    "slow": {"state": "RUNNING", "started_at": 100.5, "duration_ms": null, "error": null},
                    "after": {"state": "PENDING", "started_at": null, "duration_ms": null, "error": null}
                }
            })),
            offset: 0.0,
            note: None,
        };
        assert_eq!(
            plain(&st, 103.75),
            vec![
                "run r1  flow main  tag default  worker w1",
                "RUNNING  3.75s",
                "  ✓ add_one  SUCCEEDED  0.01s",
                "  ▸ slow     RUNNING    3.25s",
                "  · after    PENDING  ",
            ]
        );
    }

    #[test]
    fn pending_failed_and_final_lines() {
        let mut st = State {
            run_id: "r2".into(),
            ..State::default()
        };
        assert_eq!(
            plain(&st, 0.0),
            vec!["run r2  waiting for the first snapshot…"]
        );
        st.snapshot = Some(
            json!({"status": "PENDING", "flow_name": "f", "tag": "t", "updated_at": 10.0, "tasks": {}}),
        );
        assert_eq!(
            plain(&st, 12.5),
            vec![
                "run r2  flow f  tag t",
                "PENDING  waiting for a worker 2.50s",
                "  (no tasks yet)"
            ]
        );
        st.snapshot = Some(
            json!({"status": "FAILED", "start_time": 10.0, "end_time": 11.5, "error": "ValueError: boom!\ntrace",
            "tasks": {"boom": "FAILED"}, "task_records": {"boom": {"duration_ms": 1.0, "error": "boom!"}}}),
        );
        assert_eq!(plain(&st, 99.0)[2], "  ✗ boom  FAILED     0.00s  boom!");
        let end = End::Terminal {
            status: "FAILED".into(),
        };
        assert_eq!(
            to_text(&final_line(&st, &end, 99.0), 200, false),
            "FAILED after 1.50s: ValueError: boom!"
        );
        let end = End::Terminal {
            status: "COMPLETED".into(),
        };
        st.snapshot.as_mut().unwrap()["status"] = json!("COMPLETED");
        assert_eq!(
            to_text(&final_line(&st, &end, 99.0), 200, false),
            "COMPLETED in 1.50s"
        );
    }

    #[test]
    fn durations_and_truncation() {
        assert_eq!(fmt_duration(0.012), "0.01s");
        assert_eq!(fmt_duration(12.34), "12.3s");
        assert_eq!(fmt_duration(245.0), "4m05s");
        assert_eq!(fmt_duration(3725.0), "1h02m");
        let parts = vec![part("abcdef", Some(RED)), part("ghi", None)];
        assert_eq!(to_text(&parts, 4, false), "abcd");
        assert_eq!(to_text(&parts, 7, true), format!("{RED}abcdef{RESET}g"));
    }
}
