//! Plain-text HTTP listeners on a ring thread: Shoal's own HTTP/1.1 path
//! (`dataplane::h1`) on owned-buffer ring operations, with kept-alive
//! backend connections held per ring thread. A request that path does not
//! take, and so the whole connection, goes to the epoll worker of the same
//! index, where hyper serves it as on an epoll listener.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::hash::BuildHasherDefault;
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

use super::serve::{Uring, accept_loop};
use super::{fd, spawn};
use crate::dataplane::h1::{self, HttpRelay, IdHasher, MAX_IDLE_PER_BACKEND, make_room};
use crate::dataplane::http::Upstream;
use crate::dataplane::listener::{ConnLimit, FIRST_READ, HttpListener, Stop};
use crate::dataplane::stats::OpenConn;

thread_local! {
    /// This ring thread's kept-alive backend connections, by backend id
    /// (unique in the node). Only this thread's requests use them.
    static IDLE: RefCell<HashMap<u64, Vec<Idle>, BuildHasherDefault<IdHasher>>> = RefCell::default();
    /// The buffer a request to a backend is sent from: the request itself
    /// stays in the connection's buffer, for a retry on another backend.
    static SEND_BUF: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
}

struct Idle {
    stream: TcpStream,
    expires: Instant,
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
        let mut owned = SEND_BUF.take();
        owned.clear();
        owned.extend_from_slice(bytes);
        let (written, back) = stream.write_all(owned).await;
        SEND_BUF.set(back);
        written.map(drop)
    }

    async fn shutdown(stream: &mut TcpStream) {
        let _ = stream.shutdown().await;
    }

    fn take_idle(_upstream: &Upstream, backend: u64, now: Instant) -> Option<TcpStream> {
        IDLE.with_borrow_mut(|idle| {
            let list = idle.get_mut(&backend)?;
            while let Some(conn) = list.pop() {
                if now < conn.expires && fd::quiet(&conn.stream) {
                    return Some(conn.stream);
                }
            }
            None
        })
    }

    fn put_idle(upstream: &Upstream, backend: u64, stream: TcpStream, now: Instant) {
        IDLE.with_borrow_mut(|idle| {
            let list = idle.entry(backend).or_default();
            let expired = list.iter().take_while(|c| c.expires <= now).count();
            list.drain(..expired);
            if list.len() >= MAX_IDLE_PER_BACKEND {
                list.remove(0);
            }
            list.push(Idle {
                stream,
                expires: now + upstream.pool.keepalive_timeout,
            });
        });
    }
}

/// Closes this ring thread's backend connections idle past their
/// keep-alive time, every [`SWEEP_EVERY`], until the ring stops.
pub(super) async fn sweep_idle() {
    loop {
        monoio::time::sleep(SWEEP_EVERY).await;
        let now = Instant::now();
        let closed = IDLE.with_borrow_mut(|idle| {
            let mut closed = 0;
            for list in idle.values_mut() {
                let before = list.len();
                list.retain(|c| now < c.expires);
                closed += before - list.len();
            }
            idle.retain(|_, list| !list.is_empty());
            closed
        });
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

/// The HTTP accept loop of one ring thread, on `socket` (its own
/// descriptor of its worker's listening socket), for a plain-text
/// listener; it stops as the epoll loop (`listener::serve_http`) does.
pub async fn serve_http(
    socket: std::net::TcpListener,
    listener: Arc<HttpListener>,
    limit: ConnLimit,
    tracker: TaskTracker,
    stop: Stop,
) {
    let name = Arc::clone(&listener.proxy.site.load().listener);
    accept_loop(socket, &name, &limit, &stop, |stream, peer, slot| {
        let open = listener.proxy.stats.open();
        let conn = accept(Arc::clone(&listener), stream, peer, open, slot, tracker.clone());
        spawn(tracker.track_future(conn));
    })
    .await;
}

/// Waits for the client's first bytes, holding no buffer until then (as
/// on epoll: an idle connection costs its socket and a small task), then
/// serves the connection.
async fn accept(
    listener: Arc<HttpListener>,
    stream: TcpStream,
    peer: SocketAddr,
    open: OpenConn,
    slot: OwnedSemaphorePermit,
    tracker: TaskTracker,
) {
    let idle = listener.serving.idle_timeout;
    let spoke = monoio::select! {
        r = monoio::time::timeout(idle, stream.readable(true)) => r,
        () = listener.shutdown.cancelled() => return,
    };
    match spoke {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::debug!(client = %peer, error = %e, "client connection ended before its first byte");
            return;
        }
        Err(_) => {
            tracing::debug!(client = %peer, "client connection sent nothing within the idle timeout");
            return;
        }
    }
    Box::pin(serve(listener, stream, peer, open, slot, tracker)).await;
}

async fn serve(
    listener: Arc<HttpListener>,
    mut stream: TcpStream,
    peer: SocketAddr,
    open: OpenConn,
    slot: OwnedSemaphorePermit,
    tracker: TaskTracker,
) {
    let mut first = Vec::with_capacity(FIRST_READ);
    match Uring::read_more(&mut stream, &mut first).await {
        Ok(0) => {
            tracing::debug!(client = %peer, "client connection closed before sending anything");
            return;
        }
        Ok(_) => {}
        Err(e) => {
            tracing::debug!(client = %peer, error = %e, "client connection ended before its first byte");
            return;
        }
    }
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
