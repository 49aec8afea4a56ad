//! Stall and idleness detection: a timer armed when a stream has to wait
//! and disarmed by progress (a [`LazyTimer`]), the activity of a client
//! connection, so an idle one can be closed whatever protocol it speaks,
//! and the time a client takes to send each request head.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use super::lazy_timer::LazyTimer;
use crate::clock;

pub struct IdleTimer {
    timeout: Duration,
    /// When the current wait times out; none until a wait begins.
    deadline: Option<Instant>,
    timer: LazyTimer,
}

impl IdleTimer {
    pub fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            deadline: None,
            timer: LazyTimer::default(),
        }
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The stream moved: the next wait starts a fresh timeout.
    pub fn progress(&mut self) {
        self.deadline = None;
    }

    /// The stream has to wait: returns true once it has waited `timeout`
    /// without progress. Registers the waker for the deadline.
    pub fn poll_stalled(&mut self, cx: &mut Context<'_>) -> bool {
        let deadline = *self.deadline.get_or_insert_with(|| Instant::now() + self.timeout);
        self.timer.poll_until(cx, deadline).is_ready()
    }
}

/// Activity of one client connection: when bytes last moved, how many
/// requests are open on it (HTTP/2 multiplexes several), and whether a
/// request head is on its way.
#[derive(Debug, Default)]
pub struct ConnActivity {
    last_ms: AtomicU64,
    open_requests: AtomicU32,
    /// Bytes of a request head have arrived and the request has not
    /// started yet (set by the socket, cleared by the service).
    head_pending: AtomicBool,
    /// The connection was upgraded (WebSocket and friends): what follows
    /// is not HTTP, and has no heads to time.
    upgraded: AtomicBool,
}

impl ConnActivity {
    pub fn touch(&self) {
        self.last_ms.store(clock::now_ms(), Ordering::Relaxed);
    }

    /// Counts a request as open until the guard drops; its head is
    /// complete.
    pub fn request(self: &Arc<Self>) -> OpenRequest {
        self.head_pending.store(false, Ordering::Relaxed);
        self.open_requests.fetch_add(1, Ordering::Relaxed);
        OpenRequest(Arc::clone(self))
    }

    /// Bytes arriving now begin a request head: no request is open to
    /// own them.
    fn awaiting_head(&self) -> bool {
        self.open_requests.load(Ordering::Relaxed) == 0 && !self.upgraded.load(Ordering::Relaxed)
    }

    /// Resolves once no request is open and no byte has moved for
    /// `timeout`: the connection is idle.
    pub async fn idle(&self, timeout: Duration) {
        loop {
            let since = clock::since_ms(self.last_ms.load(Ordering::Relaxed));
            let busy = self.open_requests.load(Ordering::Relaxed) > 0;
            if !busy && since >= timeout {
                return;
            }
            let wait = if busy { timeout } else { timeout - since };
            tokio::time::sleep(wait.max(Duration::from_millis(10))).await;
        }
    }
}

pub struct OpenRequest(Arc<ConnActivity>);

impl OpenRequest {
    /// The request upgraded its connection to another protocol.
    pub fn upgraded(&self) {
        self.0.upgraded.store(true, Ordering::Relaxed);
    }
}

impl Drop for OpenRequest {
    fn drop(&mut self) {
        self.0.touch();
        self.0.open_requests.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The time limit on one request head, counted from its first byte, so a
/// client trickling its headers (slowloris) is cut off however steadily
/// bytes move. Its `Sleep` is allocated only if a head ever arrives in
/// more than one read.
struct HeadTimer {
    timeout: Duration,
    started: Option<Instant>,
    timer: LazyTimer,
}

impl HeadTimer {
    /// True once the head begun at `started` has taken `timeout`.
    /// Registers the waker for the deadline.
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(started) = self.started else { return false };
        self.timer.poll_until(cx, started + self.timeout).is_ready()
    }
}

/// A client connection's socket: records activity; fails reads with
/// `TimedOut` when a request head takes longer than the header timeout;
/// and fails writes with `TimedOut` when the client stops reading for the
/// idle timeout, so a stalled reader cannot hold a connection (and a
/// backend's in-flight slot) forever.
pub struct ClientIo<T> {
    inner: T,
    /// Bytes read from `inner` before it was wrapped, read first.
    prefix: Bytes,
    timer: IdleTimer,
    head: Option<HeadTimer>,
    activity: Arc<ConnActivity>,
}

impl<T> ClientIo<T> {
    pub fn new(inner: T, idle_timeout: Duration, header_timeout: Duration, activity: Arc<ConnActivity>) -> Self {
        activity.touch();
        Self {
            inner,
            prefix: Bytes::new(),
            timer: IdleTimer::new(idle_timeout),
            head: Some(HeadTimer {
                timeout: header_timeout,
                started: None,
                timer: LazyTimer::default(),
            }),
            activity,
        }
    }

    /// `prefix` was read from the stream already: it is read first, and
    /// counts as the client's bytes like any other.
    pub fn with_prefix(mut self, prefix: Bytes) -> Self {
        self.prefix = prefix;
        self
    }

    /// The bytes so far were not a request head (a TLS handshake): the
    /// next ones begin it.
    pub fn restart_head(&mut self) {
        if let Some(head) = &mut self.head {
            head.started = None;
        }
        self.activity.head_pending.store(false, Ordering::Relaxed);
    }

    /// The connection speaks a protocol whose requests are not timed here
    /// (HTTP/2: streams interleave, and frames between requests are no
    /// head).
    pub fn stop_head_timer(&mut self) {
        self.head = None;
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ClientIo<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let head_pending = this.activity.head_pending.load(Ordering::Relaxed);
        if let Some(head) = &mut this.head
            && head.started.is_some()
            && !head_pending
        {
            // The service took the request: that head is complete.
            head.started = None;
        }
        let before = buf.filled().len();
        let r = if this.prefix.is_empty() {
            Pin::new(&mut this.inner).poll_read(cx, buf)
        } else {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            Poll::Ready(Ok(()))
        };
        if buf.filled().len() > before {
            this.activity.touch();
            if let Some(head) = &mut this.head
                && head.started.is_none()
                && this.activity.awaiting_head()
            {
                head.started = Some(Instant::now());
                this.activity.head_pending.store(true, Ordering::Relaxed);
            }
        }
        if r.is_pending()
            && let Some(head) = &mut this.head
            && head.poll_expired(cx)
        {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("request head not complete within {:?}", head.timeout),
            )));
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> ClientIo<T> {
    fn stalled(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        if self.timer.poll_stalled(cx) {
            Poll::Ready(io::Error::new(io::ErrorKind::TimedOut, "client stopped reading"))
        } else {
            Poll::Pending
        }
    }

    fn progressed<R>(&mut self, ready: Poll<io::Result<R>>) -> Poll<io::Result<R>> {
        self.timer.progress();
        self.activity.touch();
        ready
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ClientIo<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, buf) {
            Poll::Pending => self.stalled(cx).map(Err),
            ready => self.progressed(ready),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write_vectored(cx, bufs) {
            Poll::Pending => self.stalled(cx).map(Err),
            ready => self.progressed(ready),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.inner).poll_flush(cx) {
            Poll::Pending => self.stalled(cx).map(Err),
            ready => {
                self.timer.progress();
                ready
            }
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn timer_fires_only_after_a_full_timeout_without_progress() {
        let mut t = IdleTimer::new(Duration::from_secs(10));
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        assert!(!t.poll_stalled(&mut cx));
        tokio::time::advance(Duration::from_secs(6)).await;
        assert!(!t.poll_stalled(&mut cx));
        t.progress();
        tokio::time::advance(Duration::from_secs(6)).await;
        // 12s since the first wait, but only 6s since progress.
        assert!(!t.poll_stalled(&mut cx));
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(!t.poll_stalled(&mut cx));
        tokio::time::advance(Duration::from_secs(6)).await;
        assert!(t.poll_stalled(&mut cx));
    }

    const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

    fn client_io() -> (ClientIo<DuplexStream>, DuplexStream, Arc<ConnActivity>) {
        let (server, client) = tokio::io::duplex(1024);
        let activity = Arc::new(ConnActivity::default());
        let io = ClientIo::new(server, Duration::from_secs(60), HEADER_TIMEOUT, Arc::clone(&activity));
        (io, client, activity)
    }

    /// Reads until the stream fails, the client trickling a byte every
    /// 500 ms; returns how long the head lasted and the error.
    async fn trickle_until_cut(io: &mut ClientIo<DuplexStream>, client: &mut DuplexStream) -> (Duration, io::Error) {
        let started = Instant::now();
        let mut buf = [0u8; 64];
        loop {
            client.write_all(b"a").await.unwrap_or_else(|e| panic!("{e}"));
            // Reads the byte, then waits for the next one, as a parser of
            // an incomplete head does.
            loop {
                match tokio::time::timeout(Duration::from_millis(500), io.read(&mut buf)).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return (started.elapsed(), e),
                    Err(_) => break,
                }
            }
            assert!(started.elapsed() < HEADER_TIMEOUT * 3, "never cut");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_head_trickled_past_the_header_timeout_is_cut() {
        let (mut io, mut client, _activity) = client_io();
        let (lasted, e) = trickle_until_cut(&mut io, &mut client).await;
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(
            (HEADER_TIMEOUT..HEADER_TIMEOUT + Duration::from_secs(2)).contains(&lasted),
            "cut after {lasted:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn keep_alive_waits_and_request_bodies_are_not_timed_as_heads() {
        let (mut io, mut client, activity) = client_io();
        let mut buf = [0u8; 64];
        client
            .write_all(b"GET / HTTP/1.1\r\n")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(io.read(&mut buf).await.unwrap_or_else(|e| panic!("{e}")), 16);
        // The service takes the request: its head is complete, and a body
        // arriving slowly while it is open is not a head.
        let open = activity.request();
        for _ in 0..3 {
            tokio::time::sleep(HEADER_TIMEOUT).await;
            client.write_all(b"b").await.unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(io.read(&mut buf).await.unwrap_or_else(|e| panic!("{e}")), 1);
        }
        drop(open);
        // Keep-alive: waiting three header timeouts for the next request
        // is the idle timeout's business, not this one's.
        let waited = tokio::time::timeout(HEADER_TIMEOUT * 3, io.read(&mut buf)).await;
        assert!(waited.is_err(), "an idle keep-alive read ended: {waited:?}");
        // The next head is timed from its own first byte.
        let (lasted, e) = trickle_until_cut(&mut io, &mut client).await;
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(lasted >= HEADER_TIMEOUT, "cut after {lasted:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_prefix_is_read_first_and_starts_the_head_timer() {
        let (io, mut client, _activity) = client_io();
        let mut io = io.with_prefix(Bytes::from_static(b"GET / HT"));
        // Reads smaller than the prefix take it in order.
        let mut got = Vec::new();
        let mut buf = [0u8; 3];
        while got.len() < 8 {
            let n = io.read(&mut buf).await.unwrap_or_else(|e| panic!("{e}"));
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got, b"GET / HT");
        // Then the stream's bytes. The head began with the prefix, half a
        // header timeout before the first of them: cut half a timeout on.
        tokio::time::sleep(HEADER_TIMEOUT / 2).await;
        let (lasted, e) = trickle_until_cut(&mut io, &mut client).await;
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(
            (HEADER_TIMEOUT / 2..HEADER_TIMEOUT / 2 + Duration::from_secs(1)).contains(&lasted),
            "cut after {lasted:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn upgraded_and_http2_connections_have_no_head_timer() {
        let (mut io, mut client, activity) = client_io();
        let open = activity.request();
        open.upgraded();
        drop(open);
        let mut buf = [0u8; 64];
        for _ in 0..3 {
            client.write_all(b"x").await.unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(io.read(&mut buf).await.unwrap_or_else(|e| panic!("{e}")), 1);
            let waited = tokio::time::timeout(HEADER_TIMEOUT, io.read(&mut buf)).await;
            assert!(waited.is_err(), "{waited:?}");
        }

        let (mut io, mut client, _activity) = client_io();
        io.stop_head_timer();
        client.write_all(b"PRI").await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(io.read(&mut buf).await.unwrap_or_else(|e| panic!("{e}")), 3);
        let waited = tokio::time::timeout(HEADER_TIMEOUT * 2, io.read(&mut buf)).await;
        assert!(waited.is_err(), "{waited:?}");
    }
}
