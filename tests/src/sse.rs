//! A `text/event-stream` reader (WHATWG "server-sent events" parsing rules).

use std::collections::VecDeque;
use std::pin::Pin;

use futures::{Stream, StreamExt};

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field; `"message"` when the event had none.
    pub event: String,
    /// The `data:` lines joined with `\n` (no trailing newline).
    pub data: String,
    /// The `id:` field given *in this event block* (unlike browsers, not carried over from
    /// earlier events, so tests can see exactly what the server sent).
    pub id: Option<String>,
}

impl SseEvent {
    /// `data` parsed as JSON (panics with the data if it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.data).unwrap_or_else(|e| {
            panic!("SSE `{}` data is not JSON ({e}): {}", self.event, self.data)
        })
    }
}

/// Incremental parser: feed bytes with [`SseParser::push`], get complete events back.
/// Lines end in `\n`, `\r\n` or `\r` (also split across chunks); a blank line dispatches;
/// `:` lines are comments (counted in [`SseParser::comments`]); a leading UTF-8 BOM is dropped;
/// a block without `data:` is not dispatched (as the standard says).
#[derive(Debug, Default)]
pub struct SseParser {
    line: Vec<u8>,
    last_was_cr: bool,
    started: bool,
    event: Option<String>,
    data: Option<String>,
    id: Option<String>,
    comments: Vec<String>,
    retry: Option<String>,
}

impl SseParser {
    pub fn new() -> SseParser {
        SseParser::default()
    }

    /// Comment lines seen so far (without the leading `:`).
    pub fn comments(&self) -> &[String] {
        &self.comments
    }

    /// The last `retry:` value seen, if any.
    pub fn retry(&self) -> Option<&str> {
        self.retry.as_deref()
    }

    /// Feeds a chunk; returns the events completed by it.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<SseEvent> {
        let mut out = Vec::new();
        let mut bytes = chunk;
        if !self.started {
            if bytes.is_empty() {
                return out;
            }
            self.started = true;
            // A BOM may itself be split across chunks in theory; ignore that corner.
            if bytes.starts_with(&[0xEF, 0xBB, 0xBF]) {
                bytes = &bytes[3..];
            }
        }
        for &b in bytes {
            match b {
                b'\n' if self.last_was_cr => {
                    self.last_was_cr = false;
                }
                b'\n' | b'\r' => {
                    self.last_was_cr = b == b'\r';
                    let line = std::mem::take(&mut self.line);
                    if let Some(ev) = self.process_line(&line) {
                        out.push(ev);
                    }
                }
                _ => {
                    self.last_was_cr = false;
                    self.line.push(b);
                }
            }
        }
        out
    }

    fn process_line(&mut self, line: &[u8]) -> Option<SseEvent> {
        if line.is_empty() {
            let event = self.event.take();
            let id = self.id.take();
            let data = self.data.take()?;
            return Some(SseEvent {
                event: event
                    .filter(|e| !e.is_empty())
                    .unwrap_or_else(|| "message".to_string()),
                data,
                id,
            });
        }
        let line = String::from_utf8_lossy(line);
        if let Some(c) = line.strip_prefix(':') {
            self.comments.push(c.to_string());
            return None;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line.as_ref(), ""),
        };
        match field {
            "event" => self.event = Some(value.to_string()),
            "data" => match &mut self.data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => self.data = Some(value.to_string()),
            },
            "id" if !value.contains('\0') => self.id = Some(value.to_string()),
            "retry" => self.retry = Some(value.to_string()),
            _ => {}
        }
        None
    }
}

/// A stream of parsed events.
pub type SseStream = Pin<Box<dyn Stream<Item = anyhow::Result<SseEvent>> + Send>>;

/// Turns a `text/event-stream` response into a stream of [`SseEvent`]s. The stream ends when
/// the server closes the body (an unterminated last block is dropped); transport errors are
/// yielded as `Err`.
pub fn sse_events(response: reqwest::Response) -> SseStream {
    let body = response.bytes_stream();
    let state = (body, SseParser::new(), VecDeque::<SseEvent>::new(), false);
    Box::pin(futures::stream::unfold(
        state,
        |(mut body, mut parser, mut queue, mut done)| async move {
            loop {
                if let Some(ev) = queue.pop_front() {
                    return Some((Ok(ev), (body, parser, queue, done)));
                }
                if done {
                    return None;
                }
                match body.next().await {
                    Some(Ok(chunk)) => queue.extend(parser.push(&chunk)),
                    Some(Err(e)) => {
                        done = true;
                        return Some((Err(anyhow::Error::new(e)), (body, parser, queue, done)));
                    }
                    None => return None,
                }
            }
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_contract_wire_format() {
        let mut p = SseParser::new();
        let evs = p.push(
            b"event: snapshot\ndata: {\"run_id\":\"r\"}\n\nevent: heartbeat\ndata: {\"ts\":1.0}\n\n",
        );
        assert_eq!(evs.len(), 2);
        assert_eq!(evs[0].event, "snapshot");
        assert_eq!(evs[0].json()["run_id"], "r");
        assert_eq!(evs[0].id, None);
        assert_eq!(evs[1].event, "heartbeat");
    }

    #[test]
    fn multiline_data_comments_crlf_and_split_chunks() {
        let mut p = SseParser::new();
        let mut evs = Vec::new();
        let wire = b": hello\r\nid: 7\r\ndata: a\r\ndata:b\r\n\r\ndata: c\r\r";
        for b in wire.iter() {
            evs.extend(p.push(std::slice::from_ref(b)));
        }
        assert_eq!(
            evs,
            vec![
                SseEvent {
                    event: "message".into(),
                    data: "a\nb".into(),
                    id: Some("7".into())
                },
                SseEvent {
                    event: "message".into(),
                    data: "c".into(),
                    id: None
                },
            ]
        );
        assert_eq!(p.comments(), &[" hello".to_string()]);
    }

    #[test]
    fn block_without_data_is_not_dispatched() {
        let mut p = SseParser::new();
        assert!(p.push(b"event: x\n\n").is_empty());
        let evs = p.push(b"data\n\n");
        assert_eq!(evs[0].data, "");
        assert_eq!(evs[0].event, "message");
    }
}
