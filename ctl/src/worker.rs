//! `pyococtl worker list|hide|unhide` through the gateway's `GET /workers` and
//! `PATCH /workers/{id}` (works against the original gateway too).

use clap::{Subcommand, ValueEnum};
use pyoco_core::wire::fields;
use serde_json::{json, Value};

use crate::client::{CtlError, CtlResult};
use crate::output::{ago, print_json, render_table, wants_table, LastColumn};
use crate::{exit, Ctx};

#[derive(Debug, Clone, Subcommand)]
pub enum WorkerCmd {
    /// List workers: a table on a terminal (id, state, tags, current run, last seen), JSON otherwise.
    #[command(
        after_help = "JSON output (--output json, or when stdout is not a terminal): the gateway's GET /workers array, \
one record per worker (worker_id, state = effective state, hidden, tags, last_seen_at, current_run_id, last_run_*, …).\n\n\
Examples:\n  pyococtl worker list\n  pyococtl worker list --scope all --state disconnected\n  pyococtl --output json worker list --include-hidden | jq '.[].worker_id'"
    )]
    List(ListArgs),
    /// Hide a worker from `worker list` (and the dashboard) until it is unhidden.
    Hide {
        /// The worker id (`worker list --scope all --include-hidden` shows every id).
        worker_id: String,
    },
    /// Show a hidden worker again.
    Unhide {
        /// The worker id.
        worker_id: String,
    },
}

#[derive(Debug, Clone, clap::Args)]
pub struct ListArgs {
    /// `active` (RUNNING or IDLE) or `all` (also STOPPED_GRACEFUL and DISCONNECTED).
    #[arg(long, value_enum, ignore_case = true, default_value = "active")]
    pub scope: Scope,
    /// Only workers in this (effective) state.
    #[arg(long, value_enum, ignore_case = true)]
    pub state: Option<WorkerState>,
    /// Include hidden workers (a HIDDEN column is added to the table).
    #[arg(long)]
    pub include_hidden: bool,
    /// At most this many workers, most recently seen first [gateway default: 100].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=500))]
    pub limit: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scope {
    Active,
    All,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum WorkerState {
    Running,
    Idle,
    StoppedGraceful,
    Disconnected,
}

pub async fn dispatch(ctx: &Ctx, cmd: &WorkerCmd) -> CtlResult<u8> {
    match cmd {
        WorkerCmd::List(args) => list(ctx, args).await,
        WorkerCmd::Hide { worker_id } => set_hidden(ctx, worker_id, true).await,
        WorkerCmd::Unhide { worker_id } => set_hidden(ctx, worker_id, false).await,
    }
}

fn value_name<T: ValueEnum>(v: &T) -> String {
    v.to_possible_value()
        .map(|p| p.get_name().to_string())
        .unwrap_or_default()
}

async fn list(ctx: &Ctx, args: &ListArgs) -> CtlResult<u8> {
    let plugins = ctx.cli.output == Some(crate::OutputFormat::Plugins);
    let table = plugins || wants_table(ctx, "worker list")?;
    let mut query: Vec<(&str, String)> = vec![("scope", value_name(&args.scope))];
    if let Some(s) = &args.state {
        query.push(("state", value_name(s)));
    }
    if args.include_hidden {
        query.push(("include_hidden", "true".into()));
    }
    if let Some(l) = args.limit {
        query.push(("limit", l.to_string()));
    }
    let workers = ctx.client()?.get_json("/workers", &query).await?;
    if !table {
        print_json(&workers);
        return Ok(exit::OK);
    }
    let items = workers.as_array().cloned().unwrap_or_default();
    if plugins {
        print!("{}", plugin_table(&items));
        return Ok(exit::OK);
    }
    if items.is_empty() {
        println!("(no workers)");
        return Ok(exit::OK);
    }
    print!(
        "{}",
        worker_table(&items, args.include_hidden, pyoco_core::time::now())
    );
    Ok(exit::OK)
}

/// The table of `worker list`: id, state, tags, current run, last seen (and hidden).
pub(crate) fn worker_table(items: &[Value], with_hidden: bool, now: f64) -> String {
    let text = |v: &Value, k: &str| {
        v.get(k)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|w| {
            let tags: Vec<&str> = w
                .get("tags")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let mut row = vec![
                text(w, "worker_id").unwrap_or_else(|| "?".into()),
                text(w, "state").unwrap_or_else(|| "?".into()),
                if tags.is_empty() {
                    "-".into()
                } else {
                    tags.join(",")
                },
                text(w, fields::worker::CURRENT_RUN_ID).unwrap_or_else(|| "-".into()),
            ];
            if with_hidden {
                row.push(
                    if w.get("hidden").and_then(Value::as_bool).unwrap_or(false) {
                        "yes".into()
                    } else {
                        "no".into()
                    },
                );
            }
            row.push(ago(
                now,
                w.get(fields::worker::LAST_SEEN_AT).and_then(Value::as_f64),
            ));
            row
        })
        .collect();
    let mut headers = vec!["WORKER ID", "STATE", "TAGS", "CURRENT RUN"];
    if with_hidden {
        headers.push("HIDDEN");
    }
    headers.push("LAST SEEN");
    render_table(&headers, &rows, LastColumn::Trimmed)
}

/// `--output plugins`: one row per wheel each worker installed (`wheel_sync.installed_wheels`),
/// a `-` row for a worker without any — pyoco-client's `workers --output plugins` table, byte
/// for byte (its headers, every cell padded).
pub(crate) fn plugin_table(items: &[Value]) -> String {
    let text = |v: &Value, k: &str| {
        v.get(k)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .unwrap_or("-")
            .to_string()
    };
    let mut rows = Vec::new();
    for w in items {
        let tags: Vec<&str> = w
            .get("tags")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        let tags = if tags.is_empty() {
            "-".to_string()
        } else {
            tags.join(",")
        };
        let head = [text(w, "worker_id"), text(w, "state"), tags];
        let installed: Vec<&Value> = w
            .pointer("/wheel_sync/installed_wheels")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter(|p| p.is_object()).collect())
            .unwrap_or_default();
        if installed.is_empty() {
            rows.push([head.to_vec(), vec!["-".into(); 3]].concat());
        }
        for p in installed {
            let cols = ["package_name", "package_version", "wheel_name"].map(|k| text(p, k));
            rows.push([head.to_vec(), cols.to_vec()].concat());
        }
    }
    if rows.is_empty() {
        return "(no items)\n".into();
    }
    render_table(
        &[
            "worker_id",
            "state",
            "tags",
            "package",
            "version",
            "wheel_name",
        ],
        &rows,
        LastColumn::Padded,
    )
}

/// Percent-encodes one path segment (worker ids may contain `/`, `=`, …).
fn path_segment(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn set_hidden(ctx: &Ctx, worker_id: &str, hidden: bool) -> CtlResult<u8> {
    let client = ctx.client()?;
    let req = client
        .request(
            reqwest::Method::PATCH,
            &format!("/workers/{}", path_segment(worker_id)),
        )
        .json(&json!({"hidden": hidden}));
    let answer = client.json(req).await.map_err(|e| {
        if e.message.contains("HTTP 404 ") {
            CtlError::new(
                e.code,
                format!("{}\n- hint: `pyococtl worker list --scope all --include-hidden` shows every worker id; a worker's record disappears when the workers bucket's TTL expires", e.message),
            )
        } else {
            e
        }
    })?;
    print_json(&answer);
    Ok(exit::OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_rows() {
        let items = vec![
            json!({"worker_id": "w1", "state": "RUNNING", "tags": ["a", "b"], "current_run_id": "r1", "last_seen_at": 97.0, "hidden": false}),
            json!({"worker_id": "w2", "state": "IDLE", "tags": [], "current_run_id": null, "last_seen_at": 0.0, "hidden": true}),
        ];
        assert_eq!(
            worker_table(&items, false, 100.0),
            "WORKER ID  STATE    TAGS  CURRENT RUN  LAST SEEN\nw1         RUNNING  a,b   r1           3 s ago\nw2         IDLE     -     -            never\n"
        );
        assert!(worker_table(&items, true, 100.0).contains("HIDDEN  LAST SEEN"));
        assert_eq!(path_segment("a/b=c"), "a%2Fb%3Dc");
    }
}
