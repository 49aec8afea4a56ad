//! Plain-text HTTP connections on a ring thread: Shoal's own HTTP/1.1 path
//! (`dataplane::h1`) on owned-buffer ring operations, with kept-alive
//! backend connections held per ring thread. The epoll worker of the same
//! index accepts each connection and reads its first bytes; a request the
//! own path does not take, and so the rest of the connection, goes back to
//! that worker, where hyper serves it as on an epoll listener.

use std::cell::RefCell;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use super::fd;
use super::serve::Uring;
use crate::dataplane::h1::{self, HttpRelay, IdleSet, make_room};
use crate::dataplane::http::Upstream;
use crate::dataplane::listener::HttpListener;
use crate::dataplane::stats::OpenConn;

thread_local! {
    /// This ring thread's kept-alive backend connections. Only this
    /// thread's requests use them.
    static IDLE: RefCell<IdleSet<TcpStream>> = RefCell::default();
    /// The buffers requests to backends are sent from: the request itself
    /// stays in the connection's buffer, for a retry on another backend.
    static SEND_BUFS: RefCell<SpareBufs> = const { RefCell::new(SpareBufs::new()) };
}

/// Buffers handed to the ring for sends, kept for reuse. The kernel holds
/// a buffer until its send completes, and a ring thread has many sends
/// out at once: a single spare buffer was taken by one and found gone by
/// the others, which then allocated one each (0.9 allocations per request
/// under `wrk -c64`). Bounded, so a burst of large or concurrent sends
/// does not pin its memory.
struct SpareBufs {
    bufs: Vec<Vec<u8>>,
}

impl SpareBufs {
    /// Sends in flight at once on one ring thread, well above what
    /// compare.sh's load reaches (32 connections a thread); past it, a
    /// send allocates.
    const MAX_BUFS: usize = 256;
    /// A buffer grown past this (a large request) is freed, not kept.
    const MAX_BYTES: usize = 16 * 1024;

    const fn new() -> Self {
        Self { bufs: Vec::new() }
    }

    /// An empty buffer, reused if one is spare.
    fn take(&mut self) -> Vec<u8> {
        self.bufs.pop().unwrap_or_default()
    }

    /// Keeps `buf` for a later send, unless enough are kept or it is large.
    fn put(&mut self, mut buf: Vec<u8>) {
        if self.bufs.len() < Self::MAX_BUFS && buf.capacity() <= Self::MAX_BYTES {
            buf.clear();
            self.bufs.push(buf);
        }
    }
}

/// How often a ring thread closes its backend connections idle past their
/// pool's keep-alive time (as the epoll workers' sweeper does).
const SWEEP_EVERY: Duration = Duration::from_secs(5);

impl HttpRelay for Uring {
    async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<usize> {
        make_room(buf, 1, 4096);
        let owned = std::mem::take(buf);
        let filled = owned.len();
        let (read, back) = stream.read(owned.slice_mut(filled..)).await;
        *buf = back.into_inner();
        read
    }

    async fn write_all(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<()> {
        let (written, back) = stream.write_all(std::mem::take(buf)).await;
        *buf = back;
        written.map(drop)
    }

    async fn send_all(stream: &mut TcpStream, bytes: &[u8]) -> io::Result<()> {
        let mut owned = SEND_BUFS.with_borrow_mut(SpareBufs::take);
        owned.extend_from_slice(bytes);
        // A send dropped before it completes loses its buffer, which is
        // the ring's until then; the next send allocates another.
        let (written, back) = stream.write_all(owned).await;
        SEND_BUFS.with_borrow_mut(|spare| spare.put(back));
        written.map(drop)
    }

    async fn shutdown(stream: &mut TcpStream) {
        let _ = stream.shutdown().await;
    }

    fn take_idle(_upstream: &Upstream, backend: u64, now: Instant) -> Option<TcpStream> {
        IDLE.with_borrow_mut(|idle| idle.take(backend, now, fd::quiet))
    }

    fn put_idle(upstream: &Upstream, backend: u64, stream: TcpStream, now: Instant) {
        IDLE.with_borrow_mut(|idle| idle.put(backend, stream, now, upstream.pool.keepalive_timeout));
    }
}

/// Closes this ring thread's backend connections idle past their
/// keep-alive time, every [`SWEEP_EVERY`], until the ring stops.
pub(super) async fn sweep_idle() {
    loop {
        monoio::time::sleep(SWEEP_EVERY).await;
        let closed = IDLE.with_borrow_mut(|idle| idle.sweep(Instant::now()));
        if closed > 0 {
            tracing::debug!(closed, "closed idle backend connections");
        }
    }
}

/// Closes all of this ring thread's kept-alive backend connections (the
/// ring stops: they must close while it still runs).
pub(super) fn close_idle() {
    let _ = IDLE.try_with(|idle| idle.take());
}

/// Serves on this ring thread a plain-text HTTP connection whose first
/// bytes (`first`) its epoll worker read: a connection waits for its
/// client's first request on epoll, where it costs least (about 700
/// bytes, against about 1 000 waiting in a ring), and moves here once it
/// speaks.
pub async fn serve_http(listener: Arc<HttpListener>, accepted: Accepted) {
    let Accepted {
        stream,
        first,
        peer,
        open,
        slot,
        tracker,
    } = accepted;
    let stream = match TcpStream::from_std(stream) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(client = %peer, error = %e, "cannot serve a connection on io_uring; closing it");
            return;
        }
    };
    let (stream, buffered) = match h1::serve::<Uring>(&listener.h1_settings(peer), stream, &first).await {
        Ok(h1::Ending::Handoff { stream, buffered }) => (stream, buffered),
        Ok(h1::Ending::Closed) => return,
        Err(e) => {
            tracing::debug!(listener = %listener.proxy.site.load().listener, client = %peer, error = %e, "client connection ended with an error");
            return;
        }
    };
    hand_to_hyper(listener, &stream, buffered, peer, open, slot, &tracker);
}

/// A client connection an epoll worker accepted and read the first bytes
/// of, with what it holds for its listener.
pub struct Accepted {
    pub stream: std::net::TcpStream,
    pub first: Bytes,
    pub peer: SocketAddr,
    pub open: OpenConn,
    pub slot: OwnedSemaphorePermit,
    pub tracker: TaskTracker,
}

/// Moves the connection to the epoll worker of this ring's index, where
/// hyper serves it from `buffered` on; this ring's descriptor closes when
/// the caller drops `stream`.
fn hand_to_hyper(
    listener: Arc<HttpListener>,
    stream: &TcpStream,
    buffered: Bytes,
    peer: SocketAddr,
    open: OpenConn,
    slot: OwnedSemaphorePermit,
    tracker: &TaskTracker,
) {
    // Registering with tokio's reactor and spawning both reach the worker
    // whose runtime this ring thread entered.
    let stream = match fd::to_std(stream).and_then(tokio::net::TcpStream::from_std) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(client = %peer, error = %e, "cannot hand a connection to hyper; closing it");
            return;
        }
    };
    tokio::spawn(tracker.track_future(async move {
        let _open = open;
        let _slot = slot;
        listener.serve_hyper(stream, buffered, peer).await;
    }));
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;
    use crate::dataplane::uring::tests::ring;

    /// A ring-side stream and its std peer.
    async fn pair(listener: &std::net::TcpListener) -> io::Result<(TcpStream, std::net::TcpStream)> {
        let ours = TcpStream::connect_addr(listener.local_addr()?).await?;
        let (peer, _) = listener.accept()?;
        Ok((ours, peer))
    }

    /// Until the peer's FIN or bytes have reached `conn`.
    async fn until_readable(conn: &TcpStream) -> io::Result<()> {
        monoio::time::timeout(Duration::from_secs(5), conn.readable(false))
            .await
            .map_err(io::Error::other)?
    }

    #[test]
    fn reads_append_writes_keep_their_buffer_and_the_end_reads_zero() -> io::Result<()> {
        let Some(mut rt) = ring("reads_append_writes_keep_their_buffer_and_the_end_reads_zero") else {
            return Ok(());
        };
        rt.block_on(async {
            let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
            let (mut ours, mut peer) = pair(&listener).await?;
            peer.write_all(b"abc")?;
            let mut buf = b"xy".to_vec();
            let mut n = 0;
            while n < 3 {
                n += Uring::read_more(&mut ours, &mut buf).await?;
            }
            assert_eq!(buf, b"xyabc", "appended after what was there");

            let mut out = b"hello".to_vec();
            Uring::write_all(&mut ours, &mut out).await?;
            assert_eq!(out, b"hello", "the buffer comes back whole");
            Uring::send_all(&mut ours, b" world").await?;
            Uring::shutdown(&mut ours).await;
            let mut got = Vec::new();
            peer.read_to_end(&mut got)?;
            assert_eq!(got, b"hello world");

            drop(peer);
            let mut rest = Vec::new();
            assert_eq!(Uring::read_more(&mut ours, &mut rest).await?, 0, "the peer's end");
            Ok(())
        })
    }

    #[test]
    fn spare_send_buffers_are_reused_empty_up_to_their_bounds() {
        let mut spare = SpareBufs::new();
        let mut buf = spare.take();
        buf.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        let at = buf.as_ptr();
        spare.put(buf);
        let again = spare.take();
        assert_eq!((again.as_ptr(), again.len()), (at, 0), "the same allocation, emptied");
        spare.put(again);

        spare.put(Vec::with_capacity(SpareBufs::MAX_BYTES + 1));
        assert_eq!(spare.bufs.len(), 1, "a large buffer is not kept");
        for _ in 0..SpareBufs::MAX_BUFS + 10 {
            spare.put(Vec::with_capacity(16));
        }
        assert_eq!(spare.bufs.len(), SpareBufs::MAX_BUFS, "no more than the bound is kept");
    }

    #[test]
    fn a_kept_connection_is_reused_until_it_closes_speaks_or_expires() -> io::Result<()> {
        let Some(mut rt) = ring("a_kept_connection_is_reused_until_it_closes_speaks_or_expires") else {
            return Ok(());
        };
        rt.block_on(async {
            let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
            let keep = Duration::from_secs(60);
            let mut idle = IdleSet::default();

            let (conn, peer) = pair(&listener).await?;
            idle.put(1, conn, Instant::now(), keep);
            let Some(conn) = idle.take(1, Instant::now(), fd::quiet) else {
                panic!("a quiet connection is reused");
            };
            assert!(idle.take(1, Instant::now(), fd::quiet).is_none(), "taken once");

            // The backend closes it while it is idle.
            drop(peer);
            until_readable(&conn).await?;
            idle.put(1, conn, Instant::now(), keep);
            assert!(
                idle.take(1, Instant::now(), fd::quiet).is_none(),
                "a closed connection is not reused"
            );

            // The backend sends bytes nobody asked for.
            let (conn, mut peer) = pair(&listener).await?;
            peer.write_all(b"HTTP/1.1 200 OK\r\n\r\n")?;
            until_readable(&conn).await?;
            idle.put(2, conn, Instant::now(), keep);
            assert!(
                idle.take(2, Instant::now(), fd::quiet).is_none(),
                "a connection that spoke is not reused"
            );

            // Past its keep-alive time.
            let (conn, _peer) = pair(&listener).await?;
            let (other, _other_peer) = pair(&listener).await?;
            let start = Instant::now();
            idle.put(3, conn, start, Duration::from_secs(1));
            idle.put(3, other, start, Duration::from_secs(10));
            assert_eq!(idle.sweep(start + Duration::from_secs(2)), 1, "only the first expired");
            assert!(idle.take(3, start + Duration::from_secs(2), fd::quiet).is_some());
            assert!(
                idle.take(3, start + Duration::from_secs(2), fd::quiet).is_none(),
                "none left"
            );
            Ok(())
        })
    }
}
