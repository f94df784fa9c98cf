//! `GET /metrics`: the original's four gauges first (same names, help texts and order, contract
//! §7), then what operators need: submit/finish counters, run duration and queue-wait
//! histograms, queue depth per tag, HTTP request counts and latencies. Everything comes from
//! memory: the run index, the worker index and counters updated by the KV watch.

use pyoco_core::wire::fields;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

use pyoco_core::wire::{f64_field, run_status, str_field, Doc};

const RUN_BUCKETS: [f64; 14] = [
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
];
const HTTP_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

#[derive(Debug, Clone)]
struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }
    fn observe(&mut self, v: f64) {
        for (i, b) in self.bounds.iter().enumerate() {
            if v <= *b {
                self.counts[i] += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }
    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {c}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.count
        );
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum);
        let _ = writeln!(out, "{name}_count{braces} {}", self.count);
    }
}

struct Inner {
    submitted: BTreeMap<String, u64>,
    finished: BTreeMap<(String, String), u64>,
    run_duration: Histogram,
    queue_wait: Histogram,
    http_requests: BTreeMap<(String, String, u16), u64>,
    http_duration: BTreeMap<String, Histogram>,
}

pub struct Metrics {
    inner: Mutex<Inner>,
    /// The HTTP connections (updated by [`crate::conn`] without taking the lock).
    pub connections: crate::conn::Stats,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            inner: Mutex::new(Inner {
                submitted: BTreeMap::new(),
                finished: BTreeMap::new(),
                run_duration: Histogram::new(&RUN_BUCKETS),
                queue_wait: Histogram::new(&RUN_BUCKETS),
                http_requests: BTreeMap::new(),
                http_duration: BTreeMap::new(),
            }),
            connections: crate::conn::Stats::default(),
        }
    }
}

/// What the original's gauges and our queue gauge need from the indexes.
pub struct Gauges {
    pub runs_by_status: Vec<(String, u64)>,
    pub runs_today_by_status: Vec<(String, u64)>,
    pub workers_alive: u64,
    pub dlq_messages: Option<u64>,
    pub pending_by_tag: Vec<(String, u64)>,
}

fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Metrics {
    /// Called by the run index for every live change (not during the initial replay).
    /// `old` = (status, had a start_time) of the previous version, if any.
    pub fn on_run_change(&self, old: Option<(&str, bool)>, new: &Doc, pending_since: Option<f64>) {
        let status = str_field(new, fields::run::STATUS).unwrap_or("UNKNOWN");
        let tag = str_field(new, fields::run::TAG).unwrap_or("").to_string();
        let mut m = self.inner.lock().unwrap();
        let old_status = old.map(|(s, _)| s);
        if old.is_none() && status == run_status::PENDING {
            *m.submitted.entry(tag.clone()).or_default() += 1;
        }
        let was_terminal = old_status.map(run_status::is_terminal).unwrap_or(false);
        if run_status::is_terminal(status) && !was_terminal {
            *m.finished
                .entry((status.to_ascii_uppercase(), tag))
                .or_default() += 1;
            if let (Some(s), Some(e)) = (
                f64_field(new, fields::run::START_TIME),
                f64_field(new, fields::run::END_TIME),
            ) {
                if e >= s {
                    m.run_duration.observe(e - s);
                }
            }
        }
        let had_start = old.map(|(_, h)| h).unwrap_or(false);
        if let (false, Some(start), Some(since)) = (
            had_start,
            f64_field(new, fields::run::START_TIME),
            pending_since,
        ) {
            if start >= since {
                m.queue_wait.observe(start - since);
            }
        }
    }

    pub fn on_http(&self, route: &str, method: &str, status: u16, seconds: f64) {
        let mut m = self.inner.lock().unwrap();
        *m.http_requests
            .entry((route.to_string(), method.to_string(), status))
            .or_default() += 1;
        m.http_duration
            .entry(route.to_string())
            .or_insert_with(|| Histogram::new(&HTTP_BUCKETS))
            .observe(seconds);
    }

    pub fn render(&self, g: &Gauges) -> String {
        let mut out = String::with_capacity(4096);
        let o = &mut out;
        // The original's four gauges, byte for byte.
        o.push_str("# HELP pyoco_runs_total Count of runs by status (best-effort from KV).\n# TYPE pyoco_runs_total gauge\n");
        for (s, n) in &g.runs_by_status {
            let _ = writeln!(o, "pyoco_runs_total{{status=\"{}\"}} {n}", esc(s));
        }
        o.push_str("# HELP pyoco_runs_today_total Count of runs updated today by status (best-effort from KV).\n# TYPE pyoco_runs_today_total gauge\n");
        for (s, n) in &g.runs_today_by_status {
            let _ = writeln!(o, "pyoco_runs_today_total{{status=\"{}\"}} {n}", esc(s));
        }
        o.push_str("# HELP pyoco_workers_alive_total Count of workers present in TTL KV (best-effort).\n# TYPE pyoco_workers_alive_total gauge\n");
        let _ = writeln!(o, "pyoco_workers_alive_total {}", g.workers_alive);
        o.push_str("# HELP pyoco_dlq_messages_total Total DLQ messages in the DLQ stream (best-effort).\n# TYPE pyoco_dlq_messages_total gauge\n");
        if let Some(n) = g.dlq_messages {
            let _ = writeln!(o, "pyoco_dlq_messages_total {n}");
        }

        o.push_str("# HELP pyoco_queue_depth Runs waiting (PENDING) per routing tag.\n# TYPE pyoco_queue_depth gauge\n");
        for (t, n) in &g.pending_by_tag {
            let _ = writeln!(o, "pyoco_queue_depth{{tag=\"{}\"}} {n}", esc(t));
        }
        let m = self.inner.lock().unwrap();
        o.push_str("# HELP pyoco_runs_submitted_total Runs submitted since this gateway started (seen on the runs bucket).\n# TYPE pyoco_runs_submitted_total counter\n");
        for (t, n) in &m.submitted {
            let _ = writeln!(o, "pyoco_runs_submitted_total{{tag=\"{}\"}} {n}", esc(t));
        }
        o.push_str("# HELP pyoco_runs_finished_total Runs that reached a terminal status since this gateway started.\n# TYPE pyoco_runs_finished_total counter\n");
        for ((s, t), n) in &m.finished {
            let _ = writeln!(
                o,
                "pyoco_runs_finished_total{{status=\"{}\",tag=\"{}\"}} {n}",
                esc(s),
                esc(t)
            );
        }
        o.push_str("# HELP pyoco_run_duration_seconds Run execution time (end_time - start_time).\n# TYPE pyoco_run_duration_seconds histogram\n");
        m.run_duration.render(o, "pyoco_run_duration_seconds", "");
        o.push_str("# HELP pyoco_run_queue_wait_seconds Time from submit to a worker starting the run.\n# TYPE pyoco_run_queue_wait_seconds histogram\n");
        m.queue_wait.render(o, "pyoco_run_queue_wait_seconds", "");
        o.push_str("# HELP pyoco_http_requests_total HTTP requests by route, method and status.\n# TYPE pyoco_http_requests_total counter\n");
        for ((r, meth, s), n) in &m.http_requests {
            let _ = writeln!(
                o,
                "pyoco_http_requests_total{{route=\"{}\",method=\"{meth}\",status=\"{s}\"}} {n}",
                esc(r)
            );
        }
        o.push_str("# HELP pyoco_http_request_duration_seconds HTTP request latency by route.\n# TYPE pyoco_http_request_duration_seconds histogram\n");
        for (r, h) in &m.http_duration {
            h.render(
                o,
                "pyoco_http_request_duration_seconds",
                &format!("route=\"{}\"", esc(r)),
            );
        }
        drop(m);
        self.connections.render(o);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc(v: serde_json::Value) -> Doc {
        serde_json::from_value(v).unwrap()
    }

    fn gauges() -> Gauges {
        Gauges {
            runs_by_status: vec![("COMPLETED".into(), 3), ("PENDING".into(), 2)],
            runs_today_by_status: vec![("COMPLETED".into(), 1)],
            workers_alive: 2,
            dlq_messages: Some(4),
            pending_by_tag: vec![("default".into(), 1), ("gpu".into(), 1)],
        }
    }

    #[test]
    fn the_originals_gauges_come_first_byte_for_byte() {
        let text = Metrics::default().render(&gauges());
        let expected = "\
# HELP pyoco_runs_total Count of runs by status (best-effort from KV).
# TYPE pyoco_runs_total gauge
pyoco_runs_total{status=\"COMPLETED\"} 3
pyoco_runs_total{status=\"PENDING\"} 2
# HELP pyoco_runs_today_total Count of runs updated today by status (best-effort from KV).
# TYPE pyoco_runs_today_total gauge
pyoco_runs_today_total{status=\"COMPLETED\"} 1
# HELP pyoco_workers_alive_total Count of workers present in TTL KV (best-effort).
# TYPE pyoco_workers_alive_total gauge
pyoco_workers_alive_total 2
# HELP pyoco_dlq_messages_total Total DLQ messages in the DLQ stream (best-effort).
# TYPE pyoco_dlq_messages_total gauge
pyoco_dlq_messages_total 4
# HELP pyoco_queue_depth Runs waiting (PENDING) per routing tag.
# TYPE pyoco_queue_depth gauge
pyoco_queue_depth{tag=\"default\"} 1
pyoco_queue_depth{tag=\"gpu\"} 1
";
        assert!(text.starts_with(expected), "{text}");
    }

    #[test]
    fn an_unknown_dlq_count_leaves_only_help_and_type() {
        let mut g = gauges();
        g.dlq_messages = None;
        let text = Metrics::default().render(&g);
        assert!(text.contains("# TYPE pyoco_dlq_messages_total gauge\n# HELP pyoco_queue_depth"));
        assert!(!text.contains("pyoco_dlq_messages_total 0"));
    }

    #[test]
    fn label_values_are_escaped() {
        let mut g = gauges();
        g.pending_by_tag = vec![("a\"b\\c\nd".into(), 1)];
        let text = Metrics::default().render(&g);
        assert!(
            text.contains("pyoco_queue_depth{tag=\"a\\\"b\\\\c\\nd\"} 1\n"),
            "{text}"
        );
    }

    #[test]
    fn run_changes_feed_counters_and_histograms() {
        let m = Metrics::default();
        let pending = doc(json!({"status": "PENDING", "tag": "gpu", "updated_at": 100.0}));
        m.on_run_change(None, &pending, Some(100.0));
        let running = doc(json!({"status": "RUNNING", "tag": "gpu", "start_time": 100.5}));
        m.on_run_change(Some(("PENDING", false)), &running, Some(100.0));
        let done = doc(
            json!({"status": "COMPLETED", "tag": "gpu", "start_time": 100.5, "end_time": 103.5}),
        );
        m.on_run_change(Some(("RUNNING", true)), &done, Some(100.0));
        // A second terminal snapshot (a rewrite) is not a second finish.
        m.on_run_change(Some(("COMPLETED", true)), &done, Some(100.0));
        let text = m.render(&gauges());
        for line in [
            "pyoco_runs_submitted_total{tag=\"gpu\"} 1",
            "pyoco_runs_finished_total{status=\"COMPLETED\",tag=\"gpu\"} 1",
            "pyoco_run_duration_seconds_bucket{le=\"2.5\"} 0",
            "pyoco_run_duration_seconds_bucket{le=\"5\"} 1",
            "pyoco_run_duration_seconds_bucket{le=\"+Inf\"} 1",
            "pyoco_run_duration_seconds_sum 3",
            "pyoco_run_duration_seconds_count 1",
            "pyoco_run_queue_wait_seconds_bucket{le=\"0.25\"} 0",
            "pyoco_run_queue_wait_seconds_bucket{le=\"0.5\"} 1",
            "pyoco_run_queue_wait_seconds_sum 0.5",
            "pyoco_run_queue_wait_seconds_count 1",
        ] {
            assert!(
                text.contains(&format!("\n{line}\n")),
                "missing {line}:\n{text}"
            );
        }
    }

    #[test]
    fn http_requests_are_counted_per_route_method_and_status() {
        let m = Metrics::default();
        m.on_http("/runs", "GET", 200, 0.002);
        m.on_http("/runs", "GET", 200, 0.2);
        m.on_http("/runs/{run_id}", "GET", 404, 0.001);
        let text = m.render(&gauges());
        for line in [
            "pyoco_http_requests_total{route=\"/runs\",method=\"GET\",status=\"200\"} 2",
            "pyoco_http_requests_total{route=\"/runs/{run_id}\",method=\"GET\",status=\"404\"} 1",
            "pyoco_http_request_duration_seconds_bucket{route=\"/runs\",le=\"0.0025\"} 1",
            "pyoco_http_request_duration_seconds_bucket{route=\"/runs\",le=\"0.25\"} 2",
            "pyoco_http_request_duration_seconds_count{route=\"/runs\"} 2",
        ] {
            assert!(
                text.contains(&format!("\n{line}\n")),
                "missing {line}:\n{text}"
            );
        }
    }
}
