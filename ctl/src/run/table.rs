//! `run list --output table`: pyoco-client's table (columns `run_id status flow_name tag
//! updated_at`, left-justified, two spaces between columns, `(no items)` when empty).

use serde_json::Value;

use crate::output::{render_table, LastColumn};

use super::pyjson::py_str;

pub const HEADERS: [&str; 5] = ["run_id", "status", "flow_name", "tag", "updated_at"];

/// How `updated_at` is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeFormat {
    /// As pyoco-client: Python `str()` of the float (`1795813674.581129`).
    Raw,
    /// Local time, `2026-11-27 22:31:02` (for a person at a terminal).
    Local,
}

/// The cells of one run, as pyoco-client builds them (`str(item.get(key, "-"))`).
pub fn row(item: &Value, time: TimeFormat) -> Vec<String> {
    HEADERS
        .iter()
        .map(|key| match item.get(*key) {
            None => "-".to_string(),
            Some(v) if *key == "updated_at" && time == TimeFormat::Local => {
                local_time(v).unwrap_or_else(|| py_str(v))
            }
            Some(v) => py_str(v),
        })
        .collect()
}

fn local_time(v: &Value) -> Option<String> {
    let secs = v.as_f64()?;
    let dt = chrono::DateTime::from_timestamp(secs.floor() as i64, 0)?;
    Some(
        dt.with_timezone(&chrono::Local)
            .format("%Y-%m-%d %H:%M:%S")
            .to_string(),
    )
}

/// The whole table, one `\n`-terminated line per row: pyoco-client's bytes (every column
/// padded), `(no items)` when empty.
pub fn render(rows: &[Vec<String>]) -> String {
    if rows.is_empty() {
        return "(no items)\n".to_string();
    }
    render_table(&HEADERS, rows, LastColumn::Padded)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn like_pyoco_client() {
        assert_eq!(render(&[]), "(no items)\n");
        let items = [
            json!({"run_id": "r1", "status": "COMPLETED", "flow_name": "main", "tag": "default", "updated_at": 1795813674.5}),
            json!({"run_id": "run-2", "status": "PENDING", "flow_name": "f", "tag": null}),
        ];
        let rows: Vec<_> = items.iter().map(|i| row(i, TimeFormat::Raw)).collect();
        assert_eq!(
            render(&rows),
            "run_id  status     flow_name  tag      updated_at  \n\
             r1      COMPLETED  main       default  1795813674.5\n\
             run-2   PENDING    f          None     -           \n"
        );
    }
}
