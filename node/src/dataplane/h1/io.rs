//! The socket operations Shoal's own HTTP/1.1 path needs, so that the
//! path is written once for epoll (tokio's sockets, here) and io_uring
//! (`dataplane::uring`).

use std::future::Future;
use std::io;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::dataplane::http::Upstream;
use crate::dataplane::tcp::{Epoll, Relay};

/// Reading, writing and keeping backend connections on one I/O interface;
/// connecting is [`Relay::connect`].
pub trait HttpRelay: Relay {
    /// Reads what the peer sent next into `buf`'s spare capacity (the
    /// caller makes room; a full buffer is grown), appended; 0 at the
    /// stream's end. If the future is dropped before it completes, `buf`
    /// may be left empty (a ring owns the buffer until the kernel is done
    /// with it).
    fn read_more(stream: &mut Self::Stream, buf: &mut Vec<u8>) -> impl Future<Output = io::Result<usize>>;

    /// Writes all of `buf`, which is left as it was; if the future is
    /// dropped before it completes, `buf` may be left empty.
    fn write_all(stream: &mut Self::Stream, buf: &mut Vec<u8>) -> impl Future<Output = io::Result<()>>;

    /// Writes all of `bytes`, which stay intact however the write ends (a
    /// request that may be sent again to another backend).
    fn send_all(stream: &mut Self::Stream, bytes: &[u8]) -> impl Future<Output = io::Result<()>>;

    /// Sends our FIN.
    fn shutdown(stream: &mut Self::Stream) -> impl Future<Output = ()>;

    /// A kept-alive connection to `backend` that is still open and quiet.
    fn take_idle(upstream: &Upstream, backend: u64, now: Instant) -> Option<Self::Stream>;

    /// Keeps `stream`, idle from `now`, for a next request to `backend`.
    fn put_idle(upstream: &Upstream, backend: u64, stream: Self::Stream, now: Instant);
}

/// Grows `buf` by `by` when it has less than `room` left.
pub fn make_room(buf: &mut Vec<u8>, room: usize, by: usize) {
    if buf.capacity() - buf.len() < room {
        buf.reserve(by);
    }
}

impl HttpRelay for Epoll {
    async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<usize> {
        make_room(buf, 1, 4096);
        stream.read_buf(buf).await
    }

    async fn write_all(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<()> {
        AsyncWriteExt::write_all(stream, buf).await
    }

    async fn send_all(stream: &mut TcpStream, bytes: &[u8]) -> io::Result<()> {
        AsyncWriteExt::write_all(stream, bytes).await
    }

    async fn shutdown(stream: &mut TcpStream) {
        let _ = AsyncWriteExt::shutdown(stream).await;
    }

    fn take_idle(upstream: &Upstream, backend: u64, now: Instant) -> Option<TcpStream> {
        upstream.conns.take(backend, now)
    }

    fn put_idle(upstream: &Upstream, backend: u64, stream: TcpStream, now: Instant) {
        upstream.conns.put(backend, stream, now);
    }
}
