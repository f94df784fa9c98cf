//! A small `text/event-stream` parser (WHATWG rules for lines and fields).

/// One event as the stream delivered it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// `event:`; `message` when absent.
    pub name: String,
    /// The `data:` lines joined with `\n`.
    pub data: String,
    /// `id:` of this event, if it had one.
    pub id: Option<String>,
}

/// Feed chunks with [`Parser::push`]; complete events come back.
#[derive(Debug, Default)]
pub struct Parser {
    line: Vec<u8>,
    last_cr: bool,
    event: Option<String>,
    data: Option<String>,
    id: Option<String>,
}

impl Parser {
    pub fn push(&mut self, chunk: &[u8]) -> Vec<Event> {
        let mut out = Vec::new();
        for &b in chunk {
            match b {
                b'\n' if self.last_cr => self.last_cr = false,
                b'\n' | b'\r' => {
                    self.last_cr = b == b'\r';
                    let line = std::mem::take(&mut self.line);
                    if let Some(ev) = self.line_done(&line) {
                        out.push(ev);
                    }
                }
                _ => {
                    self.last_cr = false;
                    self.line.push(b);
                }
            }
        }
        out
    }

    fn line_done(&mut self, line: &[u8]) -> Option<Event> {
        if line.is_empty() {
            let name = self
                .event
                .take()
                .filter(|e| !e.is_empty())
                .unwrap_or_else(|| "message".into());
            let id = self.id.take();
            let data = self.data.take()?;
            return Some(Event { name, data, id });
        }
        let line = String::from_utf8_lossy(line);
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line.as_ref(), ""),
        };
        match field {
            "event" => self.event = Some(value.trim().to_string()),
            "data" => match &mut self.data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => self.data = Some(value.to_string()),
            },
            "id" if !value.contains('\0') => self.id = Some(value.trim().to_string()),
            _ => {}
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_gateways_formats_split_anywhere() {
        let wire = b"event: snapshot\nid: 41\ndata: {\"a\":1}\n\n: comment\r\nevent: heartbeat\r\ndata: {\"ts\":1.5}\r\n\r\nevent: x\n\ndata: a\ndata:b\r\r";
        let mut p = Parser::default();
        let mut evs = Vec::new();
        for b in wire.iter() {
            evs.extend(p.push(std::slice::from_ref(b)));
        }
        assert_eq!(
            evs,
            vec![
                Event {
                    name: "snapshot".into(),
                    data: "{\"a\":1}".into(),
                    id: Some("41".into())
                },
                Event {
                    name: "heartbeat".into(),
                    data: "{\"ts\":1.5}".into(),
                    id: None
                },
                Event {
                    name: "message".into(),
                    data: "a\nb".into(),
                    id: None
                },
            ]
        );
    }
}
