//! The descriptor under a ring's socket. monoio implements `AsRawFd` but
//! not `AsFd`, and its split halves expose no descriptor at all, so
//! borrowing it takes the crate's only `unsafe`: each borrow is tied to
//! something that keeps the descriptor open.
#![allow(unsafe_code)]

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};

use monoio::BufResult;
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, Splitable};
use monoio::net::TcpStream;
use monoio::net::tcp::{TcpOwnedReadHalf, TcpOwnedWriteHalf};

fn borrow(stream: &TcpStream) -> BorrowedFd<'_> {
    // SAFETY: `stream` owns the descriptor and closes it only when the
    // last reference to it drops, which cannot happen while the returned
    // borrow (of `stream`) lives.
    unsafe { BorrowedFd::borrow_raw(stream.as_raw_fd()) }
}

/// A socket of the epoll world for the connection `stream` holds: a new
/// descriptor of the same socket (non-blocking, as tokio needs it), so
/// that `stream` may be dropped.
pub fn to_std(stream: &TcpStream) -> io::Result<std::net::TcpStream> {
    let fd = borrow(stream).try_clone_to_owned()?;
    let std = std::net::TcpStream::from(fd);
    std.set_nonblocking(true)?;
    Ok(std)
}

/// A kept-alive backend connection has nothing to say: if it is readable,
/// the backend closed it (or sent bytes no request asked for), and it must
/// not carry a request. One non-blocking peek: a ring keeps no readiness.
pub fn quiet(stream: &TcpStream) -> bool {
    let fd = borrow(stream);
    let socket = socket2::SockRef::from(&fd);
    let mut byte = [MaybeUninit::<u8>::uninit(); 1];
    let flags = nix::libc::MSG_PEEK | nix::libc::MSG_DONTWAIT;
    matches!(socket.recv_with_flags(&mut byte, flags), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
}

/// One owned half of a split ring connection and its socket's descriptor,
/// which monoio's halves do not give out (splicing needs it).
pub struct Half<H> {
    io: H,
    fd: RawFd,
}

/// Splits `stream` into halves that can each lend the socket's descriptor.
pub fn split(stream: TcpStream) -> (Half<TcpOwnedReadHalf>, Half<TcpOwnedWriteHalf>) {
    let fd = stream.as_raw_fd();
    let (read, write) = stream.into_split();
    (Half { io: read, fd }, Half { io: write, fd })
}

impl<H> Half<H> {
    /// The socket's descriptor, for as long as this half is borrowed.
    pub fn fd(&self) -> BorrowedFd<'_> {
        // SAFETY: `fd` is the descriptor of the stream `io` is a half of
        // (only `split` builds a Half, and `io` is never replaced). Both
        // halves share that stream, which closes the descriptor when the
        // last of them drops: not while `self` is borrowed.
        unsafe { BorrowedFd::borrow_raw(self.fd) }
    }
}

// Reads and writes go through these, not through a `&mut` to the half,
// which could swap in another connection's half under `fd`.
impl Half<TcpOwnedReadHalf> {
    pub async fn read(&mut self, buf: Vec<u8>) -> BufResult<usize, Vec<u8>> {
        self.io.read(buf).await
    }
}

impl Half<TcpOwnedWriteHalf> {
    pub async fn write_all(&mut self, buf: Vec<u8>) -> BufResult<usize, Vec<u8>> {
        self.io.write_all(buf).await
    }

    pub async fn shutdown(&mut self) -> io::Result<()> {
        self.io.shutdown().await
    }
}
