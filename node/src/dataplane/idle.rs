//! Stall and idleness detection: a timer armed when a stream has to wait
//! and disarmed by progress (it allocates its `Sleep` only the first time a
//! stream waits), and the activity of a client connection, so an idle one
//! can be closed whatever protocol it speaks.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::clock;

pub struct IdleTimer {
    timeout: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
    armed: bool,
}

impl IdleTimer {
    pub fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            sleep: None,
            armed: false,
        }
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The stream moved: the next wait starts a fresh timeout.
    pub fn progress(&mut self) {
        self.armed = false;
    }

    /// The stream has to wait: returns true once it has waited `timeout`
    /// without progress. Registers the waker for the deadline.
    pub fn poll_stalled(&mut self, cx: &mut Context<'_>) -> bool {
        let deadline = Instant::now() + self.timeout;
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if !self.armed {
            sleep.as_mut().reset(deadline);
            self.armed = true;
        }
        sleep.as_mut().poll(cx).is_ready()
    }
}

/// Activity of one client connection: when bytes last moved, and how many
/// requests are open on it (HTTP/2 multiplexes several).
#[derive(Debug, Default)]
pub struct ConnActivity {
    last_ms: AtomicU64,
    open_requests: AtomicU32,
}

impl ConnActivity {
    pub fn touch(&self) {
        self.last_ms.store(clock::now_ms(), Ordering::Relaxed);
    }

    /// Counts a request as open until the guard drops.
    pub fn request(self: &Arc<Self>) -> OpenRequest {
        self.open_requests.fetch_add(1, Ordering::Relaxed);
        OpenRequest(Arc::clone(self))
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

impl Drop for OpenRequest {
    fn drop(&mut self) {
        self.0.touch();
        self.0.open_requests.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A client connection's socket: records activity, and fails writes with
/// `TimedOut` when the client stops reading for `timeout`, so a stalled
/// reader cannot hold a connection (and a backend's in-flight slot)
/// forever.
pub struct ClientIo<T> {
    inner: T,
    timer: IdleTimer,
    activity: Arc<ConnActivity>,
}

impl<T> ClientIo<T> {
    pub fn new(inner: T, timeout: Duration, activity: Arc<ConnActivity>) -> Self {
        activity.touch();
        Self {
            inner,
            timer: IdleTimer::new(timeout),
            activity,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ClientIo<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
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
}
