//! `pyococtl metrics` and `pyococtl health` (the output helpers they share with the other
//! commands live in `crate::output`).

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::client::{CtlError, CtlResult};
use crate::output::{print_json, render_table, stdout_is_terminal, LastColumn};
use crate::{exit, Ctx, OutputFormat};

// ---------------------------------------------------------------------------------------------
// metrics

#[derive(Debug, Clone, clap::Args)]
#[command(
    after_help = "Output: on a terminal a short table (runs by status and today, workers alive, dead letters, queued runs per tag); \
otherwise the Prometheus text as the gateway sends it. --raw always prints the text, --output table|json picks the summary form."
)]
pub struct MetricsArgs {
    /// Print the Prometheus text exactly as the gateway sends it (pyoco-client's `metrics`).
    #[arg(long)]
    pub raw: bool,
}

/// The numbers of the summary, read from the Prometheus text.
#[derive(Debug, Default)]
struct Summary {
    runs: BTreeMap<String, f64>,
    runs_today: BTreeMap<String, f64>,
    workers_alive: Option<f64>,
    dlq_messages: Option<f64>,
    /// `None` when the gateway does not export `pyoco_queue_depth` (the original).
    queue_depth: Option<BTreeMap<String, f64>>,
}

/// `name{k="v",…} value` → (name, labels, value); `None` for comments and unreadable lines.
fn parse_sample(line: &str) -> Option<(String, BTreeMap<String, String>, f64)> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let (series, value) = line.rsplit_once(' ')?;
    let value: f64 = value.trim().parse().ok()?;
    let mut labels = BTreeMap::new();
    let name = match series.split_once('{') {
        None => series.trim().to_string(),
        Some((name, rest)) => {
            let body = rest.trim_end().strip_suffix('}')?;
            let mut chars = body.chars().peekable();
            loop {
                let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
                let key = key.trim().trim_start_matches(',').trim().to_string();
                if key.is_empty() {
                    break;
                }
                if chars.next() != Some('"') {
                    return None;
                }
                let mut val = String::new();
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => match chars.next() {
                            Some('n') => val.push('\n'),
                            Some(other) => val.push(other),
                            None => break,
                        },
                        '"' => break,
                        other => val.push(other),
                    }
                }
                labels.insert(key, val);
            }
            name.trim().to_string()
        }
    };
    Some((name, labels, value))
}

fn summarize(text: &str) -> Summary {
    let mut s = Summary::default();
    if text
        .lines()
        .any(|l| l.starts_with("# TYPE pyoco_queue_depth "))
    {
        s.queue_depth = Some(BTreeMap::new());
    }
    for line in text.lines() {
        let Some((name, labels, value)) = parse_sample(line) else {
            continue;
        };
        let label = |k: &str| labels.get(k).cloned().unwrap_or_default();
        match name.as_str() {
            "pyoco_runs_total" => {
                s.runs.insert(label("status"), value);
            }
            "pyoco_runs_today_total" => {
                s.runs_today.insert(label("status"), value);
            }
            "pyoco_workers_alive_total" => s.workers_alive = Some(value),
            "pyoco_dlq_messages_total" => s.dlq_messages = Some(value),
            "pyoco_queue_depth" => {
                s.queue_depth
                    .get_or_insert_with(BTreeMap::new)
                    .insert(label("tag"), value);
            }
            _ => {}
        }
    }
    s
}

fn num(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

fn summary_json(s: &Summary) -> Value {
    let map = |m: &BTreeMap<String, f64>| {
        Value::Object(
            m.iter()
                .map(|(k, v)| (k.clone(), json!(v.round() as i64)))
                .collect(),
        )
    };
    json!({
        "runs": map(&s.runs),
        "runs_today": map(&s.runs_today),
        "workers_alive": s.workers_alive.map(|v| v.round() as i64),
        "dlq_messages": s.dlq_messages.map(|v| v.round() as i64),
        "queue_depth": s.queue_depth.as_ref().map(map),
    })
}

fn summary_table(s: &Summary) -> String {
    let mut out = String::new();
    let statuses: std::collections::BTreeSet<&String> =
        s.runs.keys().chain(s.runs_today.keys()).collect();
    if statuses.is_empty() {
        out.push_str("runs           0\n");
    } else {
        let rows: Vec<Vec<String>> = statuses
            .iter()
            .map(|st| {
                vec![
                    st.to_string(),
                    num(s.runs.get(*st).copied().unwrap_or(0.0)),
                    num(s.runs_today.get(*st).copied().unwrap_or(0.0)),
                ]
            })
            .collect();
        out.push_str(&render_table(
            &["STATUS", "RUNS", "TODAY"],
            &rows,
            LastColumn::Trimmed,
        ));
    }
    out.push('\n');
    let opt = |v: Option<f64>| v.map(num).unwrap_or_else(|| "?".into());
    out.push_str(&render_table(
        &["workers alive", &opt(s.workers_alive)],
        &[vec!["dead letters".into(), opt(s.dlq_messages)]],
        LastColumn::Trimmed,
    ));
    if let Some(q) = &s.queue_depth {
        out.push('\n');
        if q.is_empty() {
            out.push_str("queued runs    0\n");
        } else {
            let rows: Vec<Vec<String>> = q.iter().map(|(t, v)| vec![t.clone(), num(*v)]).collect();
            out.push_str(&render_table(
                &["TAG", "QUEUED"],
                &rows,
                LastColumn::Trimmed,
            ));
        }
    }
    out
}

pub async fn metrics(ctx: &Ctx, args: &MetricsArgs) -> CtlResult<u8> {
    // Decide the form before the request, so a bad --output fails without a gateway.
    let form = if args.raw {
        None
    } else {
        match ctx.cli.output {
            Some(OutputFormat::Status) => {
                return Err(CtlError::usage(
                    "--output status is only for `run watch`; `metrics` prints table or json (or --raw)",
                    "pyococtl metrics --raw",
                ))
            }
            Some(OutputFormat::Table) => Some(true),
            Some(OutputFormat::Json | OutputFormat::Plugins) => Some(false),
            None if stdout_is_terminal() => Some(true),
            None => None,
        }
    };
    let client = ctx.client()?;
    let resp = client
        .send(client.request(reqwest::Method::GET, "/metrics"))
        .await?;
    let text = resp.text().await.map_err(|e| {
        CtlError::new(
            exit::ERROR,
            format!(
                "ERR-PYOCO-HTTP: reading the /metrics answer of {}: {e}",
                client.base
            ),
        )
    })?;
    match form {
        None => print!("{text}"),
        Some(true) => print!("{}", summary_table(&summarize(&text))),
        Some(false) => print_json(&summary_json(&summarize(&text))),
    }
    Ok(exit::OK)
}

// ---------------------------------------------------------------------------------------------
// health

pub async fn health(ctx: &Ctx) -> CtlResult<u8> {
    let table = match ctx.cli.output {
        Some(OutputFormat::Table) => true,
        Some(OutputFormat::Json | OutputFormat::Plugins) | None => false,
        Some(OutputFormat::Status) => {
            return Err(CtlError::usage(
                "--output status is only for `run watch`; `health` prints json or table",
                "pyococtl --output table health",
            ))
        }
    };
    let client = ctx.client()?;
    let resp = client
        .send(client.request(reqwest::Method::GET, "/health"))
        .await?;
    let status = resp.status();
    let body = resp.text().await.unwrap_or_default();
    if status != reqwest::StatusCode::OK {
        return Err(CtlError::new(
            exit::ERROR,
            format!("ERR-PYOCO-HTTP: the gateway at {} is not healthy\n- reason: GET /health answered HTTP {}: {}", client.base, status.as_u16(), body.trim()),
        ));
    }
    if !table {
        println!("{}", body.trim());
        return Ok(exit::OK);
    }
    let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let gateway = v
        .get("status")
        .and_then(Value::as_str)
        .unwrap_or("ok")
        .to_string();
    let nats = v
        .get("nats")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| "not reported (the gateway does not say)".into());
    print!(
        "{}",
        render_table(
            &["gateway", &format!("{gateway}  {}", client.base)],
            &[vec!["nats".into(), nats]],
            LastColumn::Trimmed
        )
    );
    Ok(exit::OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_summary() {
        let text = "# HELP x\npyoco_runs_total{status=\"COMPLETED\"} 3\npyoco_runs_total{status=\"FAILED\"} 1\n\
pyoco_runs_today_total{status=\"COMPLETED\"} 2\npyoco_workers_alive_total 1\n# TYPE pyoco_queue_depth gauge\n\
pyoco_queue_depth{tag=\"a\\\"b\"} 4\npyoco_http_requests_total{route=\"/runs\",method=\"GET\",status=\"200\"} 9\n";
        let s = summarize(text);
        assert_eq!(s.runs["COMPLETED"], 3.0);
        assert_eq!(s.runs_today.get("FAILED"), None);
        assert_eq!(s.workers_alive, Some(1.0));
        assert_eq!(s.dlq_messages, None);
        assert_eq!(s.queue_depth.as_ref().unwrap()["a\"b"], 4.0);
        assert_eq!(
            summary_table(&s),
            "STATUS     RUNS  TODAY\nCOMPLETED  3     2\nFAILED     1     0\n\nworkers alive  1\ndead letters   ?\n\nTAG  QUEUED\na\"b  4\n"
        );
        assert_eq!(summary_json(&s)["dlq_messages"], Value::Null);
    }
}
