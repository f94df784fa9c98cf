//! HTTP connections: our own accept loop around hyper, with the limits `axum::serve` does not
//! have (the original, uvicorn with its defaults, had none of them either):
//!
//! - **connection cap** (`PYOCO_HTTP_MAX_CONNECTIONS`): at most that many connections are
//!   served at once. One over the cap waits up to [`CAP_WAIT`] for a slot; if none frees it is
//!   answered `503` with a JSON `detail` naming the limit, `Retry-After: 1`, and closed. At most
//!   [`MAX_WAITING`] connections wait at once; past that a connection gets the same `503`
//!   written without waiting and is closed.
//! - **header-read timeout** (`PYOCO_HTTP_HEADER_READ_TIMEOUT_SEC`): a request head (request
//!   line and headers) must arrive complete within this time, counted from the accept for the
//!   first request and from its first byte for the next ones (slowloris).
//! - **idle timeout** (`PYOCO_HTTP_IDLE_TIMEOUT_SEC`): a keep-alive connection without a
//!   request is closed after this long; so is one whose request body stalls (no byte read for
//!   this long while the handler waits for the body).
//!
//! A response in progress is never cut: an open `/watch` stream (or a slow handler) keeps its
//! connection whatever the timeouts. Hyper's own `header_read_timeout` is not used: it starts
//! the moment a keep-alive connection goes idle, so it would cap the idle time too.

use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::Request;
use axum::Router;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::metrics::Metrics;

const LOG_TARGET: &str = "pyoco_server::conn";
/// How long a connection over the cap waits for a slot before it is answered 503.
pub const CAP_WAIT: Duration = Duration::from_secs(1);
/// Connections over the cap that may wait at once; more are refused without waiting.
pub const MAX_WAITING: usize = 256;
/// After a 503, how long the refused client's request is read (and discarded) so that closing
/// does not reset the connection before the client has read the answer.
const REJECT_LINGER: Duration = Duration::from_millis(500);
/// The largest request head (431 above): hyper's default, its read buffer (~400 KiB), times
/// the connection cap would let slow heads pin gigabytes.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// After an accept error other than a dropped connection (e.g. out of file descriptors).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Counters of the connections, shown by `/metrics`.
#[derive(Debug, Default)]
pub struct Stats {
    open: AtomicU64,
    refused: AtomicU64,
    header_read: AtomicU64,
    idle: AtomicU64,
    body_stalled: AtomicU64,
}

impl Stats {
    pub fn render(&self, o: &mut String) {
        use std::fmt::Write;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let _ = write!(
            o,
            "# HELP pyoco_http_connections_open HTTP connections being served now.\n# TYPE pyoco_http_connections_open gauge\npyoco_http_connections_open {}\n\
             # HELP pyoco_http_connections_refused_total Connections answered 503 at the connection cap (PYOCO_HTTP_MAX_CONNECTIONS).\n# TYPE pyoco_http_connections_refused_total counter\npyoco_http_connections_refused_total {}\n\
             # HELP pyoco_http_connections_closed_total Connections closed by the gateway on a timeout, by reason.\n# TYPE pyoco_http_connections_closed_total counter\n\
             pyoco_http_connections_closed_total{{reason=\"header_read_timeout\"}} {}\n\
             pyoco_http_connections_closed_total{{reason=\"idle_timeout\"}} {}\n\
             pyoco_http_connections_closed_total{{reason=\"body_stalled\"}} {}\n",
            get(&self.open),
            get(&self.refused),
            get(&self.header_read),
            get(&self.idle),
            get(&self.body_stalled),
        );
    }

    fn closed(&self, why: Expiry) {
        let c = match why {
            Expiry::HeaderRead => &self.header_read,
            Expiry::Idle => &self.idle,
            Expiry::BodyStalled => &self.body_stalled,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// Counts a connection as open while it lives.
struct Open(Arc<Metrics>);

impl Open {
    fn new(m: &Arc<Metrics>) -> Open {
        m.connections.open.fetch_add(1, Ordering::Relaxed);
        Open(m.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.connections.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The connection limits, from the settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
}

/// The answer to a connection over the cap.
fn rejection(max: usize) -> Vec<u8> {
    let body = format!(
        "{{\"detail\":\"too many open connections: {max} are open on this gateway (its limit); retry shortly (or raise PYOCO_HTTP_MAX_CONNECTIONS)\"}}"
    );
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Serves `router` on `listener` until `shutdown` is cancelled, then stops accepting, lets
/// every connection finish its request in progress (keep-alive off), and returns once all are
/// closed. The caller bounds that wait.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let waiting = Arc::new(Semaphore::new(MAX_WAITING));
    let conns = TaskTracker::new();
    let refusal: Arc<[u8]> = rejection(limits.max_connections).into();
    loop {
        let tcp = tokio::select! {
            r = listener.accept() => match r {
                Ok((tcp, _)) => tcp,
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    // Typically EMFILE: wait instead of spinning; the connections being served
                    // free descriptors as they end.
                    tracing::warn!(target: LOG_TARGET, error = %e, "accepting a connection failed; retrying shortly (out of file descriptors? raise LimitNOFILE or lower PYOCO_HTTP_MAX_CONNECTIONS)");
                    tokio::select! {
                        _ = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
                        _ = shutdown.cancelled() => break,
                    }
                }
            },
            _ = shutdown.cancelled() => break,
        };
        // No Nagle: small SSE frames and JSON answers go out at once instead of waiting up to
        // 40 ms for a delayed ACK.
        let _ = tcp.set_nodelay(true);
        let conn = Conn {
            router: router.clone(),
            limits,
            metrics: metrics.clone(),
            shutdown: shutdown.clone(),
        };
        if let Ok(slot) = slots.clone().try_acquire_owned() {
            conns.spawn(conn.serve(tcp, slot));
            continue;
        }
        match waiting.clone().try_acquire_owned() {
            Ok(turn) => {
                let slots = slots.clone();
                let refusal = refusal.clone();
                conns.spawn(async move {
                    let slot = tokio::select! {
                        s = tokio::time::timeout(CAP_WAIT, slots.acquire_owned()) => s,
                        _ = conn.shutdown.cancelled() => return,
                    };
                    match slot {
                        Ok(Ok(slot)) => {
                            drop(turn);
                            conn.serve(tcp, slot).await;
                        }
                        _ => {
                            conn.metrics
                                .connections
                                .refused
                                .fetch_add(1, Ordering::Relaxed);
                            refuse(tcp, &refusal).await;
                            drop(turn);
                        }
                    }
                });
            }
            Err(_) => {
                // Far over the cap: no task, no wait; the answer fits the socket buffer.
                metrics.connections.refused.fetch_add(1, Ordering::Relaxed);
                let _ = tcp.try_write(&refusal);
            }
        }
    }
    drop(listener);
    conns.close();
    conns.wait().await;
}

/// Errors that concern one connection only (the client went away during the handshake).
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// Writes the 503, then reads and discards what the client sends for a moment, so the close
/// does not turn into a reset that loses the answer.
async fn refuse(mut tcp: TcpStream, refusal: &[u8]) {
    let linger = async {
        tcp.write_all(refusal).await?;
        tcp.shutdown().await?;
        let mut buf = [0u8; 4096];
        loop {
            if tokio::io::AsyncReadExt::read(&mut tcp, &mut buf).await? == 0 {
                return Ok::<(), io::Error>(());
            }
        }
    };
    let _ = tokio::time::timeout(REJECT_LINGER, linger).await;
}

struct Conn {
    router: Router,
    limits: Limits,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
}

/// Why a connection was closed by us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// The request head did not arrive in time.
    HeaderRead,
    /// No request on a keep-alive connection.
    Idle,
    /// The request body stalled.
    BodyStalled,
}

impl Conn {
    async fn serve(self, tcp: TcpStream, _slot: OwnedSemaphorePermit) {
        let _open = Open::new(&self.metrics);
        let clock = Arc::new(Clock::new(Instant::now()));
        let io = TokioIo::new(Watched {
            inner: tcp,
            clock: clock.clone(),
        });
        let router = self.router;
        let svc_clock = clock.clone();
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let guard = svc_clock.begin_request();
            let body_pending = !http_body::Body::is_end_stream(req.body());
            let req = req.map(|inner| {
                Body::new(RequestBody {
                    inner,
                    clock: body_pending.then(|| svc_clock.begin_body()),
                })
            });
            let router = router.clone();
            async move {
                let resp = match router.oneshot(req).await {
                    Ok(r) => r,
                    Err(never) => match never {},
                };
                Ok::<_, Infallible>(resp.map(|inner| ResponseBody {
                    inner,
                    _guard: guard,
                }))
            }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .max_header_size(MAX_HEAD_BYTES)
            .serve_connection(io, service);
        let mut conn = std::pin::pin!(conn);
        let mut draining = false;
        loop {
            let deadline = clock.deadline(&self.limits);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(target: LOG_TARGET, error = %e, "connection ended with an error");
                    }
                    return;
                }
                _ = clock.changed.notified() => {}
                _ = sleep_until(deadline) => {
                    if let Some((at, why)) = clock.deadline(&self.limits) {
                        if at <= Instant::now() {
                            tracing::debug!(target: LOG_TARGET, reason = ?why, "closing the connection");
                            self.metrics.connections.closed(why);
                            return; // dropping the connection closes the socket
                        }
                    }
                }
                _ = self.shutdown.cancelled(), if !draining => {
                    // Finish the request in progress, then close (at once when idle).
                    conn.as_mut().graceful_shutdown();
                    draining = true;
                }
            }
        }
    }
}

async fn sleep_until(deadline: Option<(Instant, Expiry)>) {
    match deadline {
        Some((at, _)) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// What a connection is doing, as far as the timeouts care. Updated by the socket wrapper (a
/// byte read), the service (a request head parsed, a response body finished) and the request
/// body (finished or dropped).
pub struct Clock {
    state: Mutex<ClockState>,
    /// Woken when a deadline may have moved earlier or appeared.
    changed: Notify,
}

#[derive(Debug)]
struct ClockState {
    /// Requests whose response body is not finished yet.
    in_flight: usize,
    /// Request bodies that are still being received.
    bodies: usize,
    /// When the connection became idle (accept, or the last response finished).
    idle_since: Instant,
    /// When the current request head began: the accept for the first request, else the first
    /// byte read while idle. `None` while a request is in flight or no byte came yet.
    head_started: Option<Instant>,
    /// The last time a byte was read.
    last_read: Instant,
}

impl Clock {
    pub fn new(now: Instant) -> Clock {
        Clock {
            state: Mutex::new(ClockState {
                in_flight: 0,
                bodies: 0,
                idle_since: now,
                head_started: Some(now),
                last_read: now,
            }),
            changed: Notify::new(),
        }
    }

    /// When the connection must be closed unless something happens first, and why; `None`
    /// while a response is being produced (a stream or a slow handler is never cut).
    pub fn deadline(&self, limits: &Limits) -> Option<(Instant, Expiry)> {
        let s = self.state.lock().unwrap();
        if s.in_flight > 0 {
            return (s.bodies > 0)
                .then(|| (s.last_read + limits.idle_timeout, Expiry::BodyStalled));
        }
        Some(match s.head_started {
            Some(t) => (t + limits.header_read_timeout, Expiry::HeaderRead),
            None => (s.idle_since + limits.idle_timeout, Expiry::Idle),
        })
    }

    /// Bytes were read from the socket.
    pub fn on_read(&self, now: Instant) {
        let mut s = self.state.lock().unwrap();
        s.last_read = now;
        if s.in_flight == 0 && s.head_started.is_none() {
            // A new request head begins: the header-read deadline (earlier than the idle one).
            s.head_started = Some(now);
            drop(s);
            self.changed.notify_one();
        }
    }

    fn begin_request(self: &Arc<Self>) -> RequestGuard {
        let mut s = self.state.lock().unwrap();
        s.in_flight += 1;
        s.head_started = None;
        drop(s);
        self.changed.notify_one();
        RequestGuard(self.clone())
    }

    fn begin_body(self: &Arc<Self>) -> BodyGuard {
        let mut s = self.state.lock().unwrap();
        s.bodies += 1;
        s.last_read = Instant::now();
        drop(s);
        self.changed.notify_one();
        BodyGuard(self.clone())
    }
}

/// Held by a response body; the connection is idle again when it is dropped.
struct RequestGuard(Arc<Clock>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let mut s = self.0.state.lock().unwrap();
        s.in_flight = s.in_flight.saturating_sub(1);
        if s.in_flight == 0 {
            s.idle_since = Instant::now();
            s.head_started = None;
        }
        drop(s);
        self.0.changed.notify_one();
    }
}

/// Held while a request body is being received.
struct BodyGuard(Arc<Clock>);

impl Drop for BodyGuard {
    fn drop(&mut self) {
        let mut s = self.0.state.lock().unwrap();
        s.bodies = s.bodies.saturating_sub(1);
        drop(s);
        self.0.changed.notify_one();
    }
}

/// The socket, noting every read in the connection's [`Clock`].
struct Watched {
    inner: TcpStream,
    clock: Arc<Clock>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.clock.on_read(Instant::now());
        }
        r
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// The request body; its guard is released when it ends or is dropped.
struct RequestBody {
    inner: Incoming,
    clock: Option<BodyGuard>,
}

impl http_body::Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(r, Poll::Ready(None)) || self.inner.is_end_stream() {
            self.clock = None;
        }
        r
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The response body; the connection counts as busy until it is finished (dropped by hyper).
struct ResponseBody {
    inner: Body,
    _guard: RequestGuard,
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = axum::Error;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Raises the soft limit of open files towards the hard one so the connection cap can be
/// reached (tokio does not do it; the usual soft limit is 1024). Returns a warning when even
/// the hard limit leaves too little room.
pub fn raise_fd_limit(max_connections: usize) -> Option<String> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    // NATS, the listener, logs, the blocking pool: some room besides the connections.
    let wanted = max_connections as u64 + 256 + MAX_WAITING as u64;
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    if soft >= wanted {
        return None;
    }
    let new_soft = wanted.min(hard);
    if new_soft > soft {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, new_soft, hard);
    }
    (new_soft < wanted).then(|| {
        format!(
            "the open-files limit ({new_soft}) is below what PYOCO_HTTP_MAX_CONNECTIONS={max_connections} needs ({wanted}); connections past it fail to be accepted; fix: raise LimitNOFILE (or ulimit -n) or lower PYOCO_HTTP_MAX_CONNECTIONS"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: Limits = Limits {
        header_read_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(60),
        max_connections: 8,
    };

    #[test]
    fn the_first_head_is_due_from_the_accept_then_idle_then_from_its_first_byte() {
        let t0 = Instant::now();
        let clock = Arc::new(Clock::new(t0));
        assert_eq!(
            clock.deadline(&L),
            Some((t0 + L.header_read_timeout, Expiry::HeaderRead))
        );
        // Bytes of the first head do not move its deadline (a byte a second does not help).
        clock.on_read(t0 + Duration::from_secs(5));
        assert_eq!(clock.deadline(&L).unwrap().0, t0 + L.header_read_timeout);
        let req = clock.begin_request();
        assert_eq!(clock.deadline(&L), None, "a request in flight is never cut");
        let before = Instant::now();
        drop(req);
        let (at, why) = clock.deadline(&L).unwrap();
        assert_eq!(why, Expiry::Idle);
        assert!(at >= before + L.idle_timeout && at <= Instant::now() + L.idle_timeout);
        let b = before + Duration::from_secs(30);
        clock.on_read(b);
        assert_eq!(
            clock.deadline(&L),
            Some((b + L.header_read_timeout, Expiry::HeaderRead))
        );
    }

    #[test]
    fn a_stalled_body_expires_but_a_streaming_response_does_not() {
        let clock = Arc::new(Clock::new(Instant::now()));
        let req = clock.begin_request();
        let body = clock.begin_body();
        let (at, why) = clock.deadline(&L).unwrap();
        assert_eq!(why, Expiry::BodyStalled);
        let later = Instant::now() + Duration::from_secs(20);
        clock.on_read(later);
        assert_eq!(clock.deadline(&L).unwrap().0, later + L.idle_timeout);
        assert!(at < later + L.idle_timeout);
        drop(body);
        assert_eq!(clock.deadline(&L), None);
        drop(req);
        assert_eq!(clock.deadline(&L).unwrap().1, Expiry::Idle);
    }

    #[test]
    fn the_refusal_is_a_complete_503_naming_the_setting() {
        let r = String::from_utf8(rejection(7)).unwrap();
        let (head, body) = r.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 503 "), "{head}");
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        let d = v["detail"].as_str().unwrap();
        assert!(
            d.contains("7 are open") && d.contains("PYOCO_HTTP_MAX_CONNECTIONS"),
            "{d}"
        );
    }
}
