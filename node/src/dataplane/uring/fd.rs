//! The descriptor under a ring's socket. monoio implements `AsRawFd` but
//! not `AsFd`, so borrowing it takes the crate's only `unsafe`: the
//! borrow is tied to the stream, which keeps the descriptor open.
#![allow(unsafe_code)]

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, BorrowedFd};

use monoio::net::TcpStream;

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
