//! Numbers in the report (percentiles, rounding) and its table form.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

pub(super) fn latency_summary(us: &[u64]) -> Value {
    if us.is_empty() {
        return json!({"count": 0, "min": null, "mean": null, "p50": null, "p90": null, "p95": null, "p99": null, "max": null});
    }
    let mut v = us.to_vec();
    v.sort_unstable();
    let ms = |x: u64| round3(x as f64 / 1000.0);
    let pct = |p: f64| {
        let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
        v[rank.clamp(1, v.len()) - 1]
    };
    let mean = v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64;
    json!({
        "count": v.len(),
        "min": ms(v[0]),
        "mean": round3(mean / 1000.0),
        "p50": ms(pct(50.0)),
        "p90": ms(pct(90.0)),
        "p95": ms(pct(95.0)),
        "p99": ms(pct(99.0)),
        "max": ms(*v.last().unwrap()),
    })
}

pub(super) fn now_f64() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

pub(super) fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn fmt_num(v: Option<&Value>, decimals: usize) -> String {
    match v.and_then(Value::as_f64) {
        Some(x) => format!("{x:.decimals$}"),
        None => "-".to_string(),
    }
}

pub(super) fn print_table(report: &Value) {
    println!(
        "pyococtl bench against {}  (tag {}, {:.1} s)",
        report["server"].as_str().unwrap_or("?"),
        report["tag"].as_str().unwrap_or("?"),
        report["elapsed_sec"].as_f64().unwrap_or(0.0)
    );
    println!();
    println!(
        "{:<12} {:<8} {:>8} {:>8} {:>6} {:>5} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "scenario",
        "variant",
        "requests",
        "ok",
        "errors",
        "conc",
        "req/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "max ms"
    );
    let row = |scenario: &str, variant: &str, r: &Value| {
        let lat = &r["latency_ms"];
        println!(
            "{:<12} {:<8} {:>8} {:>8} {:>6} {:>5} {:>9} {:>9} {:>9} {:>9} {:>9}",
            scenario,
            variant,
            fmt_num(r.get("requests"), 0),
            fmt_num(r.get("ok"), 0),
            fmt_num(r.get("errors"), 0),
            fmt_num(r.get("concurrency"), 0),
            fmt_num(r.get("throughput_rps"), 1),
            fmt_num(lat.get("p50"), 2),
            fmt_num(lat.get("p90"), 2),
            fmt_num(lat.get("p99"), 2),
            fmt_num(lat.get("max"), 2),
        );
        if let Some(e) = r.get("first_error").and_then(Value::as_str) {
            println!("{:<12}   first error: {e}", "");
        }
    };
    let mut notes: Vec<String> = Vec::new();
    if let Some(results) = report["results"].as_object() {
        for (key, r) in results {
            let name = key.replace('_', "-");
            if let Some(e) = r.get("error").and_then(Value::as_str) {
                println!("{name:<12} FAILED: {e}");
                continue;
            }
            match key.as_str() {
                "list" => {
                    if let Some(vars) = r["variants"].as_object() {
                        for (vname, v) in vars {
                            row(&name, vname, v);
                        }
                    }
                    let mut note = format!(
                        "list: {} runs in the bucket",
                        fmt_num(r.get("runs_in_bucket"), 0)
                    );
                    if r["seeding"].is_object() {
                        note.push_str(&format!(
                            " ({} seeded in {} s)",
                            fmt_num(r["seeding"].get("seeded"), 0),
                            fmt_num(r["seeding"].get("seed_sec"), 1)
                        ));
                    }
                    notes.push(note);
                }
                "sse" => {
                    let lat = &r["notify_latency_ms"];
                    println!(
                        "{:<12} {:<8} {:>8} {:>8} {:>6} {:>5} {:>9} {:>9} {:>9} {:>9} {:>9}",
                        name,
                        "notify",
                        fmt_num(r.get("events"), 0),
                        fmt_num(r.get("received"), 0),
                        fmt_num(r.get("missed"), 0),
                        1,
                        "-",
                        fmt_num(lat.get("p50"), 2),
                        fmt_num(lat.get("p90"), 2),
                        fmt_num(lat.get("p99"), 2),
                        fmt_num(lat.get("max"), 2),
                    );
                    notes.push(format!(
                        "sse: latency from KV put ack to the snapshot event; first event after {} ms; {} reconnects",
                        fmt_num(r.get("first_event_ms"), 1),
                        fmt_num(r.get("reconnects"), 0)
                    ));
                }
                _ => row(&name, "-", r),
            }
        }
    }
    if let Some(rss) = report["rss"].as_array() {
        for p in rss {
            let mib = |v: &Value| match v.as_f64() {
                Some(kb) => format!("{:.1} MiB", kb / 1024.0),
                None => "n/a".to_string(),
            };
            notes.push(format!(
                "rss: pid {} ({}){}: before {}, after {}",
                p["pid"],
                p["name"].as_str().unwrap_or("?"),
                if p["include_children"].as_bool() == Some(true) {
                    " + children"
                } else {
                    ""
                },
                mib(&p["before_kb"]),
                mib(&p["after_kb"])
            ));
        }
    }
    if !notes.is_empty() {
        println!();
        for n in notes {
            println!("{n}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_nearest_rank() {
        let v: Vec<u64> = (1..=100).map(|x| x * 1000).collect();
        let s = latency_summary(&v);
        assert_eq!(s["p50"], json!(50.0));
        assert_eq!(s["p99"], json!(99.0));
        assert_eq!(s["max"], json!(100.0));
    }
}
