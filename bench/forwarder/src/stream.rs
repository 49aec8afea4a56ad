//! The forwarder's socket operations, on tokio (epoll: a system call per
//! read and per write) or on monoio (io_uring: the operations of a round
//! go to the kernel together). Buffers are lent to the stream and given
//! back, as io_uring needs: the kernel fills or sends them after the call
//! that submits the operation has returned.

use std::future::Future;
use std::io;
use std::net::SocketAddr;

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub trait Stream: Sized + 'static {
    /// A connection to `addr`, with TCP_NODELAY.
    fn connect(addr: SocketAddr) -> impl Future<Output = io::Result<Self>>;

    /// Reads into `buf[from..]`; Ok(0) at the end of the stream.
    fn read_into(&mut self, buf: Box<[u8]>, from: usize) -> impl Future<Output = (io::Result<usize>, Box<[u8]>)>;

    /// Fills `buf[from..]` whole.
    fn read_exact_into(&mut self, buf: Vec<u8>, from: usize) -> impl Future<Output = (io::Result<()>, Vec<u8>)>;

    fn write_all(&mut self, buf: Vec<u8>) -> impl Future<Output = (io::Result<()>, Vec<u8>)>;
}

impl Stream for tokio::net::TcpStream {
    async fn connect(addr: SocketAddr) -> io::Result<Self> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(stream)
    }

    async fn read_into(&mut self, mut buf: Box<[u8]>, from: usize) -> (io::Result<usize>, Box<[u8]>) {
        let read = self.read(&mut buf[from..]).await;
        (read, buf)
    }

    async fn read_exact_into(&mut self, mut buf: Vec<u8>, from: usize) -> (io::Result<()>, Vec<u8>) {
        let read = self.read_exact(&mut buf[from..]).await.map(drop);
        (read, buf)
    }

    async fn write_all(&mut self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        let written = AsyncWriteExt::write_all(self, &buf).await;
        (written, buf)
    }
}

impl Stream for monoio::net::TcpStream {
    async fn connect(addr: SocketAddr) -> io::Result<Self> {
        let stream = monoio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(stream)
    }

    async fn read_into(&mut self, buf: Box<[u8]>, from: usize) -> (io::Result<usize>, Box<[u8]>) {
        let (read, slice) = self.read(buf.slice_mut(from..)).await;
        (read, slice.into_inner())
    }

    async fn read_exact_into(&mut self, mut buf: Vec<u8>, from: usize) -> (io::Result<()>, Vec<u8>) {
        // monoio sets a vector's length to the end of what each read
        // filled: the length is `whole` again once the last read is in.
        let whole = buf.len();
        let mut at = from;
        while at < whole {
            let (read, slice) = self.read(buf.slice_mut(at..whole)).await;
            buf = slice.into_inner();
            match read {
                Ok(0) => return (Err(io::ErrorKind::UnexpectedEof.into()), buf),
                Ok(n) => at += n,
                Err(e) => return (Err(e), buf),
            }
        }
        (Ok(()), buf)
    }

    async fn write_all(&mut self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        let (written, buf) = AsyncWriteRentExt::write_all(self, buf).await;
        (written.map(drop), buf)
    }
}
