//! `pyococtl wheel upload|list|download|delete|history`: the wheel registry through the
//! gateway (ours or the original's), printing what `pyoco-client wheels`, `wheel-upload`,
//! `wheel-delete` and `wheel-history` print (one `json.dumps` line). `upload` runs 0.5.1's
//! preflight (same checks and reasons) before sending, and streams the file from disk.

use std::path::{Path, PathBuf};

use clap::{Subcommand, ValueEnum};
use futures::StreamExt;
use pyoco_core::wheel::zip;
use serde_json::Value;

use crate::client::{CtlError, CtlResult};
use crate::output::{print_json, render_table, LastColumn};
use crate::{exit, Ctx, OutputFormat};

#[derive(Debug, Clone, Subcommand)]
pub enum WheelCmd {
    /// Upload a wheel (`POST /wheels`); workers serving a matching tag install the newest version.
    #[command(
        after_help = "Preflight (before anything is sent; 0.5.1's pyoco-client checks):\n  \
strict (default): refuse a wheel without dist-info/entry_points.txt entries or usage documentation\n  \
(METADATA description of at least 80 characters, or a Project-URL labelled Documentation/Docs/Doc/Usage);\n  \
warn: print the problems and upload anyway; off: no checks.\n\n\
Examples:\n  python -m build --wheel && pyococtl wheel upload --wheel-file dist/my_tasks-1.0.0-py3-none-any.whl --tags cpu\n  \
pyococtl wheel upload --wheel-file dist/x-2.0-py3-none-any.whl --preflight warn"
    )]
    Upload(UploadArgs),
    /// List the wheels in the registry (`GET /wheels`); JSON, or `--output table`.
    List,
    /// Download a wheel (`GET /wheels/{name}`) into a file, checking its SHA-256.
    Download {
        /// The wheel file name, e.g. my_tasks-1.0.0-py3-none-any.whl.
        #[arg(long)]
        name: String,
        /// Where to write it [default: the wheel's name in the current directory].
        #[arg(long)]
        file: Option<PathBuf>,
    },
    /// Delete a wheel from the registry (`DELETE /wheels/{name}`), as pyoco-client wheel-delete.
    Delete {
        /// The wheel file name.
        #[arg(long)]
        name: String,
    },
    /// Upload/delete history, newest first (`GET /wheels/history`).
    History {
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=500))]
        limit: u32,
        /// Only events of this wheel file name.
        #[arg(long)]
        wheel_name: Option<String>,
        #[arg(long, value_enum)]
        action: Option<Action>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Action {
    Upload,
    Delete,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Preflight {
    Strict,
    Warn,
    Off,
}

#[derive(Debug, Clone, clap::Args)]
pub struct UploadArgs {
    /// Path to the *.whl file.
    #[arg(long)]
    pub wheel_file: PathBuf,
    /// Comma-separated tags: workers serving one of them install it (none: every worker).
    #[arg(long)]
    pub tags: Option<String>,
    /// Replace an object of the same name (the default).
    #[arg(long, overrides_with = "no_replace")]
    pub replace: bool,
    /// Refuse when an object of the same name exists.
    #[arg(long)]
    pub no_replace: bool,
    #[arg(long, value_enum, default_value = "strict")]
    pub preflight: Preflight,
    /// Preflight: accept a wheel without entry points.
    #[arg(long)]
    pub allow_no_entry_points: bool,
    /// Preflight: accept a wheel without usage documentation.
    #[arg(long)]
    pub allow_missing_usage_doc: bool,
}

pub async fn dispatch(ctx: &Ctx, cmd: &WheelCmd) -> CtlResult<u8> {
    let client = ctx.client()?;
    match cmd {
        WheelCmd::List => {
            let v = client.get_json("/wheels", &[]).await?;
            if ctx.cli.output == Some(OutputFormat::Table) {
                let rows: Vec<Vec<String>> = v
                    .as_array()
                    .map(|a| a.as_slice())
                    .unwrap_or(&[])
                    .iter()
                    .map(|w| {
                        let tags: Vec<&str> = w["tags"]
                            .as_array()
                            .map(|t| t.iter().filter_map(Value::as_str).collect())
                            .unwrap_or_default();
                        vec![
                            w["name"].as_str().unwrap_or("").to_string(),
                            w["size_bytes"].to_string(),
                            if tags.is_empty() {
                                "-".into()
                            } else {
                                tags.join(",")
                            },
                            w["mtime"].as_str().unwrap_or("").to_string(),
                        ]
                    })
                    .collect();
                crate::output::write(&render_table(
                    &["NAME", "SIZE", "TAGS", "MTIME"],
                    &rows,
                    LastColumn::Trimmed,
                ))?;
            } else {
                print_json(&v);
            }
            Ok(exit::OK)
        }
        WheelCmd::History {
            limit,
            wheel_name,
            action,
        } => {
            let mut q = vec![("limit", limit.to_string())];
            if let Some(n) = wheel_name.as_deref().filter(|n| !n.is_empty()) {
                q.push(("wheel_name", n.to_string()));
            }
            if let Some(a) = action {
                q.push((
                    "action",
                    match a {
                        Action::Upload => "upload",
                        Action::Delete => "delete",
                    }
                    .to_string(),
                ));
            }
            print_json(&client.get_json("/wheels/history", &q).await?);
            Ok(exit::OK)
        }
        WheelCmd::Delete { name } => {
            let req = client.request(
                reqwest::Method::DELETE,
                &format!("/wheels/{}", path_seg(name)),
            );
            print_json(&client.json(req).await?);
            Ok(exit::OK)
        }
        WheelCmd::Download { name, file } => download(&client, name, file.as_deref()).await,
        WheelCmd::Upload(a) => upload(&client, a).await,
    }
}

/// A path segment with everything outside the wheel-name alphabet percent-encoded (so `..` or
/// `/` in a name cannot reach another endpoint).
fn path_seg(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'_' | b'+')
            || (b == b'.' && s != "." && s != "..")
        {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn io_error(path: &Path, e: impl std::fmt::Display) -> CtlError {
    CtlError::new(
        exit::USAGE,
        format!(
            "ERR-PYOCO-0018: file I/O error\n- reason: {}: {e}\n- hint: check file path and permission",
            path.display()
        ),
    )
}

async fn upload(client: &crate::client::Client, a: &UploadArgs) -> CtlResult<u8> {
    let path = &a.wheel_file;
    let meta = std::fs::metadata(path).map_err(|e| io_error(path, e))?;
    if a.preflight != Preflight::Off {
        let (errors, warnings) =
            check_preflight(path, !a.allow_no_entry_points, !a.allow_missing_usage_doc)
                .map_err(|e| io_error(path, e))?;
        for w in &warnings {
            eprintln!("[pyococtl][preflight][warn] {w}");
        }
        if !errors.is_empty() {
            if a.preflight == Preflight::Warn {
                for e in &errors {
                    eprintln!("[pyococtl][preflight][warn] {e}");
                }
            } else {
                return Err(CtlError::new(
                    exit::USAGE,
                    format!(
                        "ERR-PYOCO-0018: invalid command-line input\n- reason: wheel preflight failed: {}\n- hint: fix wheel metadata/entry_points or use --preflight warn/off",
                        errors.join("; ")
                    ),
                ));
            }
        }
    }
    let filename = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("")
        .to_string();
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|e| io_error(path, e))?;
    let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::with_capacity(
        file,
        256 * 1024,
    ));
    let part = reqwest::multipart::Part::stream_with_length(body, meta.len())
        .file_name(filename)
        .mime_str("application/octet-stream")
        .expect("static mime type");
    let mut form = reqwest::multipart::Form::new().text(
        "replace",
        if a.no_replace && !a.replace {
            "false"
        } else {
            "true"
        },
    );
    if let Some(t) = &a.tags {
        let tags: Vec<&str> = t
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .collect();
        if !tags.is_empty() {
            form = form.text("tags", tags.join(","));
        }
    }
    let form = form.part("wheel", part);
    let req = client
        .request(reqwest::Method::POST, "/wheels")
        .multipart(form);
    print_json(&client.json(req).await?);
    Ok(exit::OK)
}

async fn download(
    client: &crate::client::Client,
    name: &str,
    file: Option<&Path>,
) -> CtlResult<u8> {
    use sha2::Digest;
    use tokio::io::AsyncWriteExt;
    let target = file
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(name));
    // The expected SHA-256 from the listing (the `sha256_b64` of the object's digest).
    let list = client.get_json("/wheels", &[]).await?;
    let want = list
        .as_array()
        .and_then(|a| a.iter().find(|w| w["name"] == name))
        .and_then(|w| w["sha256_b64"].as_str().map(str::to_string));
    let req = client.request(reqwest::Method::GET, &format!("/wheels/{}", path_seg(name)));
    let resp = client.send(req).await?;
    // Written next to the target and renamed at the end: a failed download leaves no file.
    let tmp = target.with_extension("whl.part");
    let mut out = tokio::fs::File::create(&tmp)
        .await
        .map_err(|e| io_error(&tmp, e))?;
    let mut h = sha2::Sha256::new();
    let mut size = 0u64;
    let mut body = resp.bytes_stream();
    let result: CtlResult<()> = async {
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| {
                CtlError::new(exit::ERROR, format!("ERR-PYOCO-HTTP: download of {name} broke off: {e}"))
            })?;
            h.update(&chunk);
            size += chunk.len() as u64;
            out.write_all(&chunk).await.map_err(|e| io_error(&tmp, e))?;
        }
        out.flush().await.map_err(|e| io_error(&tmp, e))?;
        let got = base64_url(&h.clone().finalize());
        if let Some(w) = &want {
            if w.trim_end_matches('=') != got.trim_end_matches('=') {
                return Err(CtlError::new(
                    exit::ERROR,
                    format!("ERR-PYOCO-HTTP: {name}: SHA-256 mismatch (registry {w}, downloaded {got}); nothing written"),
                ));
            }
        }
        Ok(())
    }
    .await;
    if let Err(e) = result {
        let _ = tokio::fs::remove_file(&tmp).await;
        return Err(e);
    }
    tokio::fs::rename(&tmp, &target)
        .await
        .map_err(|e| io_error(&target, e))?;
    print_json(&serde_json::json!({
        "name": name,
        "path": target.display().to_string(),
        "size_bytes": size,
        "sha256_hex": hex::encode(h.finalize()),
    }));
    Ok(exit::OK)
}

fn base64_url(b: &[u8]) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for c in b.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..=c.len() {
            out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// 0.5.1's preflight: the same checks, in the same order, with the same reasons.

/// `(errors, warnings)`; `Err` only for file I/O errors.
pub fn check_preflight(
    path: &Path,
    require_entry_points: bool,
    require_usage_doc: bool,
) -> Result<(Vec<String>, Vec<String>), String> {
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    let mut f = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let Ok(entries) = zip::read_directory(&mut f) else {
        errors.push("wheel file is not a valid zip archive".to_string());
        return Ok((errors, warnings));
    };
    let find = |file: &str| {
        let suffix = format!(".dist-info/{file}");
        let mut hits: Vec<&zip::Entry> = entries
            .iter()
            .filter(|e| e.name.ends_with(&suffix))
            .collect();
        hits.sort_by(|a, b| a.name.cmp(&b.name));
        hits.first().map(|e| (*e).clone())
    };
    let Some(meta_entry) = find("METADATA") else {
        errors.push("missing dist-info/METADATA".to_string());
        return Ok((errors, warnings));
    };
    let Ok(text) = zip::read_member(&mut f, &meta_entry, 16 * 1024 * 1024) else {
        errors.push("wheel file is not a valid zip archive".to_string());
        return Ok((errors, warnings));
    };
    let text = String::from_utf8_lossy(&text);
    let (headers, payload) = parse_email(&text);
    let get = |k: &str| {
        headers
            .iter()
            .find(|(h, _)| h.eq_ignore_ascii_case(k))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_default()
    };
    if get("Name").is_empty() {
        errors.push("METADATA Name is missing".to_string());
    }
    if get("Version").is_empty() {
        errors.push("METADATA Version is missing".to_string());
    }
    if get("Summary").is_empty() {
        warnings.push("METADATA Summary is empty".to_string());
    }
    let has_docs_url = headers
        .iter()
        .filter(|(h, _)| h.eq_ignore_ascii_case("Project-URL"))
        .any(|(_, v)| {
            let (label, url) = v.trim().split_once(',').unwrap_or((v.trim(), ""));
            matches!(
                label.trim().to_lowercase().as_str(),
                "documentation" | "docs" | "doc" | "usage"
            ) && !url.trim().is_empty()
        });
    let has_usage_doc = payload.trim().chars().count() >= 80 || has_docs_url;
    if require_usage_doc && !has_usage_doc {
        errors.push("usage documentation is missing (need METADATA description>=80 chars or Project-URL: Documentation,...)".to_string());
    } else if !has_usage_doc {
        warnings.push("usage documentation seems missing".to_string());
    }
    let mut count = 0usize;
    if let Some(ep) = find("entry_points.txt") {
        match zip::read_member(&mut f, &ep, 16 * 1024 * 1024) {
            Ok(b) => match count_entry_points(&String::from_utf8_lossy(&b)) {
                Some(n) => count = n,
                None => errors.push("dist-info/entry_points.txt format is invalid".to_string()),
            },
            Err(_) => errors.push("dist-info/entry_points.txt format is invalid".to_string()),
        }
    }
    if require_entry_points && count == 0 {
        errors.push("entry_points are missing (dist-info/entry_points.txt)".to_string());
    } else if count == 0 {
        warnings.push("entry_points are missing".to_string());
    }
    Ok((errors, warnings))
}

/// RFC 822 headers (folded lines joined) and the body, as Python's `email.parser.Parser`.
fn parse_email(text: &str) -> (Vec<(String, String)>, String) {
    let mut headers: Vec<(String, String)> = Vec::new();
    let mut lines = text.split_inclusive('\n');
    let mut body = String::new();
    for line in lines.by_ref() {
        let l = line.trim_end_matches(['\r', '\n']);
        if l.is_empty() {
            break;
        }
        if l.starts_with([' ', '\t']) {
            if let Some(last) = headers.last_mut() {
                last.1.push('\n');
                last.1.push_str(l);
                continue;
            }
        }
        match l.split_once(':') {
            Some((k, v)) => headers.push((k.to_string(), v.trim_start().to_string())),
            None => {
                // Not a header: Python treats the rest as the body.
                body.push_str(line);
                break;
            }
        }
    }
    for line in lines {
        body.push_str(line);
    }
    (headers, body)
}

/// The number of entry points as configparser (strict, `optionxform = str`) counts them;
/// `None` where configparser raises.
pub fn count_entry_points(text: &str) -> Option<usize> {
    let mut sections: Vec<(String, Vec<String>)> = Vec::new();
    let mut in_value = false;
    for raw in text.lines() {
        let line = raw.trim_end();
        let stripped = line.trim_start();
        if stripped.is_empty() {
            in_value = false;
            continue;
        }
        if stripped.starts_with('#') || stripped.starts_with(';') {
            continue;
        }
        let indented = line.len() != stripped.len();
        if indented && in_value {
            continue; // a continuation line of the previous value
        }
        if let Some(name) = stripped
            .strip_prefix('[')
            .and_then(|r| r.split_once(']').map(|(n, _)| n))
        {
            if sections.iter().any(|(s, _)| s == name) {
                return None;
            }
            sections.push((name.to_string(), Vec::new()));
            in_value = false;
            continue;
        }
        let (_, opts) = sections.last_mut()?;
        let i = stripped.find(['=', ':'])?;
        let key = stripped[..i].trim_end();
        if key.is_empty() || opts.iter().any(|o| o == key) {
            return None;
        }
        opts.push(key.to_string());
        in_value = true;
    }
    Some(sections.iter().map(|(_, o)| o.len()).sum())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_points_count_like_configparser() {
        assert_eq!(
            count_entry_points("[a]\nx = m:f\ny=m:g\n[b]\nz: m\n"),
            Some(3)
        );
        assert_eq!(count_entry_points(""), Some(0));
        assert_eq!(count_entry_points("x = 1\n"), None);
        assert_eq!(count_entry_points("[a]\nnovalue\n"), None);
        assert_eq!(count_entry_points("[a]\nx=1\nx=2\n"), None);
        assert_eq!(count_entry_points("[a]\n[a]\n"), None);
        assert_eq!(count_entry_points("[a]\nx = 1\n  continued\n"), Some(1));
    }

    #[test]
    fn path_segments_cannot_escape() {
        assert_eq!(
            path_seg("a-1.0+x-py3-none-any.whl"),
            "a-1.0+x-py3-none-any.whl"
        );
        assert_eq!(path_seg(".."), "%2E%2E");
        assert_eq!(path_seg("a/b"), "a%2Fb");
    }

    #[test]
    fn base64_url_matches() {
        assert_eq!(base64_url(b"\xfb\xff"), "-_8");
        assert_eq!(base64_url(b"abc"), "YWJj");
    }
}
