//! Everything pyococtl writes to stdout, in one place: plain writes that end quietly on a closed
//! pipe, the original's JSON text (`json.dumps(value, ensure_ascii=True)`), tables, and relative
//! and local times.

use std::io::Write;

use chrono::{Local, TimeZone};
use serde_json::Value;

use crate::client::{CtlError, CtlResult};
use crate::{exit, Ctx, OutputFormat};

/// Writes `text` as is and flushes.
pub fn write(text: &str) -> CtlResult<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|_| out.flush())
        .map_err(|e| {
            CtlError::new(
                exit::ERROR,
                format!("pyococtl: cannot write to stdout: {e}"),
            )
        })
}

/// Writes one line.
pub fn line(text: &str) -> CtlResult<()> {
    write(&format!("{text}\n"))
}

/// True when stdout is a terminal.
pub fn stdout_is_terminal() -> bool {
    use std::io::IsTerminal;
    std::io::stdout().is_terminal()
}

/// The terminal's (columns, rows), if stdout is one.
pub fn terminal_size() -> Option<(usize, usize)> {
    let mut ws = nix::libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes a `winsize` into the pointer we pass, nothing else.
    let rc = unsafe { nix::libc::ioctl(1, nix::libc::TIOCGWINSZ, &mut ws) };
    (rc == 0 && ws.ws_col > 0 && ws.ws_row > 0).then_some((ws.ws_col as usize, ws.ws_row as usize))
}

/// How a command with a table and a JSON form prints: `--output table|json`, else a table on
/// a terminal and JSON otherwise. `--output status` belongs to `run watch` alone.
pub fn wants_table(ctx: &Ctx, command: &str) -> CtlResult<bool> {
    match ctx.cli.output {
        Some(OutputFormat::Table) => Ok(true),
        Some(OutputFormat::Json | OutputFormat::Plugins) => Ok(false),
        Some(OutputFormat::Status) => Err(CtlError::usage(
            format!("--output status is only for `run watch`; `{command}` prints table or json"),
            &format!("pyococtl --output json {command}"),
        )),
        None => Ok(stdout_is_terminal()),
    }
}

/// The text of Python's `json.dumps(value, ensure_ascii=True)`: what `pyoco-server-admin` and
/// `pyoco-client` print (one implementation, shared with `run`).
pub fn py_json(value: &Value) -> String {
    crate::run::pyjson::dumps(value)
}

/// One JSON line on stdout, in the original's format.
pub fn print_json(value: &Value) {
    println!("{}", py_json(value));
}

/// How the last column of a table is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LastColumn {
    /// Padded like the others (pyoco-client's `list --output table`: Python's `ljust` on every
    /// cell), byte for byte.
    Padded,
    /// Not padded, trailing spaces trimmed (our own tables).
    Trimmed,
}

/// A plain table: a header line, then one line per row, left-justified columns two spaces apart.
pub fn render_table(headers: &[&str], rows: &[Vec<String>], last: LastColumn) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let header_row: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    let mut out = String::new();
    for row in std::iter::once(&header_row).chain(rows) {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (cell, w))| {
                if last == LastColumn::Trimmed && i + 1 == row.len() {
                    cell.clone()
                } else {
                    format!("{cell}{}", " ".repeat(w - cell.chars().count()))
                }
            })
            .collect();
        let line = cells.join("  ");
        match last {
            LastColumn::Padded => out.push_str(&line),
            LastColumn::Trimmed => out.push_str(line.trim_end()),
        }
        out.push('\n');
    }
    out
}

/// `3 s ago`, `5 min ago`, `2 h ago`, `4 d ago`; `never` for a zero or missing time.
pub fn ago(now: f64, t: Option<f64>) -> String {
    let Some(t) = t.filter(|t| *t > 0.0) else {
        return "never".into();
    };
    let d = (now - t).max(0.0) as u64;
    match d {
        0..=59 => format!("{d} s ago"),
        60..=3599 => format!("{} min ago", d / 60),
        3600..=86399 => format!("{} h ago", d / 3600),
        _ => format!("{} d ago", d / 86400),
    }
}

/// Unix seconds as local `YYYY-MM-DD HH:MM:SS`; `-` when missing.
pub fn local_time(t: Option<f64>) -> String {
    t.and_then(|t| Local.timestamp_opt(t.floor() as i64, 0).single())
        .map(|dt| dt.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|| "-".into())
}

/// One line of at most `max` characters (newlines and tabs become spaces, `…` marks a cut).
pub fn one_line(s: &str, max: usize) -> String {
    let flat: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let flat = flat.trim();
    if flat.chars().count() <= max {
        flat.to_string()
    } else {
        let mut cut: String = flat.chars().take(max.saturating_sub(1)).collect();
        cut.push('…');
        cut
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn python_json_text() {
        let v = json!({"key_id": "k", "n": [1, 2.5, null], "t": "é\u{7f}", "o": {}, "a": []});
        assert_eq!(
            py_json(&v),
            r#"{"key_id": "k", "n": [1, 2.5, null], "t": "\u00e9\u007f", "o": {}, "a": []}"#
        );
        assert_eq!(py_json(&json!([])), "[]");
        assert_eq!(py_json(&json!(1795816854.0827389)), "1795816854.0827389");
        assert_eq!(py_json(&json!(5.0)), "5.0");
    }

    #[test]
    fn tables_and_times() {
        let rows = [vec!["xxx".into(), "y".into()], vec!["".into(), "".into()]];
        let t = render_table(&["A", "BB"], &rows, LastColumn::Trimmed);
        assert_eq!(t, "A    BB\nxxx  y\n\n");
        let t = render_table(&["A", "BB"], &rows, LastColumn::Padded);
        assert_eq!(t, "A    BB\nxxx  y \n       \n");
        assert_eq!(ago(100.0, Some(97.2)), "2 s ago");
        assert_eq!(ago(1000.0, Some(100.0)), "15 min ago");
        assert_eq!(ago(100.0, Some(0.0)), "never");
        assert_eq!(ago(100.0, Some(200.0)), "0 s ago");
        assert_eq!(one_line("a\nb", 10), "a b");
        assert_eq!(one_line("abcdef", 4), "abc…");
    }
}
