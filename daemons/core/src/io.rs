//! Reading from pipes and sockets without trusting the other side to end its lines.

use tokio::io::{AsyncBufRead, AsyncBufReadExt};

/// What [`read_bounded`] read into the buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Bounded {
    /// A line (with its `\n`, or the last bytes before EOF).
    Line,
    /// `max` bytes without a newline: the line goes on.
    Cut,
    /// Nothing more.
    Eof,
}

/// Reads up to and including the next `\n`, but never more than `max` bytes into `buf`
/// (`read_until` has no bound: a child printing without newlines would grow it forever).
pub async fn read_bounded<R: AsyncBufRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<Bounded> {
    loop {
        let available = r.fill_buf().await?;
        if available.is_empty() {
            return Ok(if buf.is_empty() {
                Bounded::Eof
            } else {
                Bounded::Line
            });
        }
        let room = max.saturating_sub(buf.len());
        let window = &available[..available.len().min(room)];
        if let Some(pos) = window.iter().position(|&b| b == b'\n') {
            buf.extend_from_slice(&window[..=pos]);
            r.consume(pos + 1);
            return Ok(Bounded::Line);
        }
        let n = window.len();
        buf.extend_from_slice(window);
        r.consume(n);
        if buf.len() >= max {
            return Ok(Bounded::Cut);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::BufReader;

    async fn lines(input: &[u8], max: usize, capacity: usize) -> Vec<(Bounded, Vec<u8>)> {
        let mut r = BufReader::with_capacity(capacity, input);
        let mut out = Vec::new();
        loop {
            let mut buf = Vec::new();
            let got = read_bounded(&mut r, &mut buf, max).await.unwrap();
            if got == Bounded::Eof {
                return out;
            }
            out.push((got, buf));
        }
    }

    #[tokio::test]
    async fn bounded_lines_never_exceed_the_limit() {
        // Split reads (capacity 3) and lines of every length around the limit.
        let got = lines(b"ab\nabcd\nabcdefghij\nxy", 5, 3).await;
        let want: Vec<(Bounded, &[u8])> = vec![
            (Bounded::Line, b"ab\n"),
            (Bounded::Line, b"abcd\n"),
            (Bounded::Cut, b"abcde"),
            (Bounded::Cut, b"fghij"),
            (Bounded::Line, b"\n"),
            (Bounded::Line, b"xy"),
        ];
        assert_eq!(
            got,
            want.into_iter()
                .map(|(b, v)| (b, v.to_vec()))
                .collect::<Vec<_>>()
        );
        // A long run without newlines is read in pieces of exactly `max`.
        let big = vec![b'x'; 10_000];
        let got = lines(&big, 4096, 8192).await;
        assert_eq!(got.len(), 3);
        assert!(got.iter().all(|(_, b)| b.len() <= 4096));
        assert_eq!(got.iter().map(|(_, b)| b.len()).sum::<usize>(), 10_000);
    }
}
