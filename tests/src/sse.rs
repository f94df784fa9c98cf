//! A `text/event-stream` reader over a reqwest response, on core's parser
//! ([`pyoco_core::sse`], the one `pyococtl` uses too).

use std::collections::VecDeque;
use std::pin::Pin;

use futures::{Stream, StreamExt};

/// One dispatched event; its `id` is the one given in that event's own block.
pub use pyoco_core::sse::Event as SseEvent;
/// Incremental parser; [`SseParser::keeping_comments`] also records `:` lines.
pub use pyoco_core::sse::Parser as SseParser;

/// `data` as JSON for assertions (core's event has no panicking accessor of its own).
pub trait SseEventJson {
    /// `data` parsed as JSON (panics with the data if it is not JSON).
    fn json(&self) -> serde_json::Value;
}

impl SseEventJson for SseEvent {
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.data).unwrap_or_else(|e| {
            panic!("SSE `{}` data is not JSON ({e}): {}", self.event, self.data)
        })
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
    fn json_of_an_event() {
        let ev = SseParser::new().push(b"event: snapshot\ndata: {\"run_id\":\"r\"}\n\n");
        assert_eq!(ev[0].json()["run_id"], "r");
    }

    #[test]
    #[should_panic(expected = "SSE `message` data is not JSON")]
    fn json_panics_with_the_data() {
        SseParser::new().push(b"data: nope\n\n")[0].json();
    }
}
