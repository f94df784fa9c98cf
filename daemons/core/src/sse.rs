//! The client side of `text/event-stream` (WHATWG "server-sent events" parsing rules), shared by
//! `pyococtl run watch`, `pyococtl bench` and the test harness.
//!
//! Synchronous on purpose: callers feed it whatever chunks their HTTP client hands them, so core
//! needs no HTTP client, and a caller can stamp events with the arrival time of their chunk.
//!
//! Both gateways' formats are read: the original writes `event:`/`data:` blocks with no `id:`;
//! ours adds `id:` (the KV revision). Lines end in `\n`, `\r\n` or `\r` (also split across
//! chunks); a blank line dispatches; `:` lines are comments; a leading UTF-8 BOM is dropped;
//! a block without `data:` is not dispatched; invalid UTF-8 is replaced, not an error.

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The `event:` field as sent; `"message"` when the block had none (or an empty one).
    pub event: String,
    /// The `data:` lines joined with `\n` (no trailing newline).
    pub data: String,
    /// The `id:` field given *in this block*. Unlike browsers, an id is not carried over to
    /// later events, so callers see exactly what the server sent with each event.
    pub id: Option<String>,
}

/// Incremental parser: feed bytes with [`Parser::push`], get complete events back.
#[derive(Debug, Default)]
pub struct Parser {
    line: Vec<u8>,
    last_was_cr: bool,
    started: bool,
    event: Option<String>,
    data: Option<String>,
    id: Option<String>,
    retry: Option<String>,
    /// `None` unless asked for: a long watch would otherwise grow without bound.
    comments: Option<Vec<String>>,
}

impl Parser {
    pub fn new() -> Parser {
        Parser::default()
    }

    /// A parser that also records comment lines (see [`Parser::comments`]).
    pub fn keeping_comments() -> Parser {
        Parser {
            comments: Some(Vec::new()),
            ..Parser::default()
        }
    }

    /// Comment lines seen so far (without the leading `:`); always empty unless the parser was
    /// made with [`Parser::keeping_comments`].
    pub fn comments(&self) -> &[String] {
        self.comments.as_deref().unwrap_or(&[])
    }

    /// The last `retry:` value seen, if any (as sent; the caller decides what it means).
    pub fn retry(&self) -> Option<&str> {
        self.retry.as_deref()
    }

    /// Feeds a chunk; returns the events completed by it.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<Event> {
        let mut out = Vec::new();
        let mut bytes = chunk;
        if !self.started {
            if bytes.is_empty() {
                return out;
            }
            self.started = true;
            // A BOM split across the first chunks is not handled; no server sends one anyway.
            if let Some(rest) = bytes.strip_prefix(&[0xEF, 0xBB, 0xBF]) {
                bytes = rest;
            }
        }
        for &b in bytes {
            match b {
                // The `\n` of a `\r\n` whose `\r` already ended the line (maybe in the last chunk).
                b'\n' if self.last_was_cr => self.last_was_cr = false,
                b'\n' | b'\r' => {
                    self.last_was_cr = b == b'\r';
                    let line = std::mem::take(&mut self.line);
                    if let Some(ev) = self.line_done(&line) {
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

    fn line_done(&mut self, line: &[u8]) -> Option<Event> {
        if line.is_empty() {
            let event = self.event.take();
            let id = self.id.take();
            let data = self.data.take()?;
            return Some(Event {
                event: event
                    .filter(|e| !e.is_empty())
                    .unwrap_or_else(|| "message".to_string()),
                data,
                id,
            });
        }
        let line = String::from_utf8_lossy(line);
        if let Some(c) = line.strip_prefix(':') {
            if let Some(comments) = &mut self.comments {
                comments.push(c.to_string());
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(event: &str, data: &str, id: Option<&str>) -> Event {
        Event {
            event: event.into(),
            data: data.into(),
            id: id.map(Into::into),
        }
    }

    /// Feeds `wire` one byte at a time (the worst split a transport can make).
    fn bytewise(p: &mut Parser, wire: &[u8]) -> Vec<Event> {
        wire.iter()
            .flat_map(|b| p.push(std::slice::from_ref(b)))
            .collect()
    }

    // From pyococtl's `run watch` parser.
    #[test]
    fn parses_both_gateways_formats_split_anywhere() {
        let wire = b"event: snapshot\nid: 41\ndata: {\"a\":1}\n\n: comment\r\nevent: heartbeat\r\ndata: {\"ts\":1.5}\r\n\r\nevent: x\n\ndata: a\ndata:b\r\r";
        let evs = bytewise(&mut Parser::new(), wire);
        assert_eq!(
            evs,
            vec![
                ev("snapshot", "{\"a\":1}", Some("41")),
                ev("heartbeat", "{\"ts\":1.5}", None),
                ev("message", "a\nb", None),
            ]
        );
    }

    // From the test harness's parser.
    #[test]
    fn parses_contract_wire_format() {
        let mut p = Parser::new();
        let evs = p.push(
            b"event: snapshot\ndata: {\"run_id\":\"r\"}\n\nevent: heartbeat\ndata: {\"ts\":1.0}\n\n",
        );
        assert_eq!(evs.len(), 2);
        assert_eq!(evs[0].event, "snapshot");
        let data: serde_json::Value = serde_json::from_str(&evs[0].data).unwrap();
        assert_eq!(data["run_id"], "r");
        assert_eq!(evs[0].id, None);
        assert_eq!(evs[1].event, "heartbeat");
    }

    #[test]
    fn multiline_data_comments_crlf_and_split_chunks() {
        let mut p = Parser::keeping_comments();
        let wire = b": hello\r\nid: 7\r\ndata: a\r\ndata:b\r\n\r\ndata: c\r\r";
        assert_eq!(
            bytewise(&mut p, wire),
            vec![ev("message", "a\nb", Some("7")), ev("message", "c", None)]
        );
        assert_eq!(p.comments(), &[" hello".to_string()]);
    }

    #[test]
    fn block_without_data_is_not_dispatched() {
        let mut p = Parser::new();
        assert!(p.push(b"event: x\n\n").is_empty());
        let evs = p.push(b"data\n\n");
        assert_eq!(evs[0].data, "");
        assert_eq!(evs[0].event, "message");
    }

    // From pyococtl bench's parser: two events in one chunk, LF and CRLF framing.
    #[test]
    fn two_events_in_one_chunk() {
        let buf = b"event: snapshot\ndata: {\"a\":1}\n\nevent: heartbeat\r\ndata: x\r\n\r\n";
        assert_eq!(
            Parser::new().push(buf),
            vec![
                ev("snapshot", "{\"a\":1}", None),
                ev("heartbeat", "x", None)
            ]
        );
    }

    #[test]
    fn unterminated_block_waits_for_its_blank_line() {
        let mut p = Parser::new();
        assert!(p.push(b"event: snapshot\ndata: 1\n").is_empty());
        assert!(p.push(b"\r").len() == 1);
        // The `\n` of that `\r\n` arrives in the next chunk and is not a second blank line.
        assert!(p.push(b"\ndata: 2\n").is_empty());
        assert_eq!(p.push(b"\n"), vec![ev("message", "2", None)]);
    }

    #[test]
    fn comments_are_not_kept_unless_asked_for() {
        let mut p = Parser::new();
        assert_eq!(
            p.push(b": ping\ndata: x\n\n"),
            vec![ev("message", "x", None)]
        );
        assert!(p.comments().is_empty());
    }

    #[test]
    fn retry_bom_nul_ids_and_bad_utf8() {
        let mut p = Parser::new();
        let evs = p.push(b"\xEF\xBB\xBFevent: snapshot\nretry: 1500\nid: a\0b\ndata: \xFF\n\n");
        assert_eq!(evs, vec![ev("snapshot", "\u{FFFD}", None)]);
        assert_eq!(p.retry(), Some("1500"));
        // A BOM later in the stream is data like any other byte.
        let evs = p.push(b"\xEF\xBB\xBFdata: y\n\ndata: z\n\n");
        assert_eq!(evs, vec![ev("message", "z", None)]);
    }

    #[test]
    fn ids_belong_to_their_own_block_and_values_keep_their_spaces() {
        let mut p = Parser::new();
        let evs = p.push(b"id: 3\ndata: a\n\ndata: b\n\nevent:  snapshot \ndata:  c \n\n");
        assert_eq!(
            evs,
            vec![
                ev("message", "a", Some("3")),
                ev("message", "b", None),
                // Only the one space after the colon is dropped.
                ev(" snapshot ", " c ", None),
            ]
        );
    }
}
