//! Listening sockets and accept loops for both protocols.

use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::http::{HttpProxy, service};
use super::idle::WriteStall;
use super::tcp::TcpProxy;

/// Binds a listening socket the way a proxy wants it: address reuse so a
/// restart does not wait out TIME_WAIT, and a deep accept backlog.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    TcpListener::from_std(socket.into())
}

/// Accepts until cancelled. Errors such as running out of file descriptors
/// are logged and retried after a pause instead of spinning.
async fn accept_loop(
    name: &str,
    listener: &TcpListener,
    cancel: &CancellationToken,
    mut on_accept: impl FnMut(TcpStream, SocketAddr),
) {
    loop {
        let accepted = tokio::select! {
            () = cancel.cancelled() => return,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                on_accept(stream, peer);
            }
            Err(e) => {
                tracing::error!(listener = name, error = %e, "accept failed; pausing accepts for 50ms");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

pub async fn serve_http(
    listener: TcpListener,
    proxy: Arc<HttpProxy>,
    idle_timeout: Duration,
    tracker: TaskTracker,
    cancel: CancellationToken,
) {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        // hyper starts this timer whenever it waits for a request head, so
        // it is also the keep-alive idle timeout.
        .header_read_timeout(idle_timeout)
        .keep_alive(true);
    let name = Arc::clone(&proxy.listener);
    accept_loop(&name, &listener, &cancel, |stream, peer| {
        let proxy = Arc::clone(&proxy);
        let builder = builder.clone();
        let cancel = cancel.clone();
        tracker.spawn(async move {
            let _open = proxy.stats.open();
            let svc = service(Arc::clone(&proxy), peer);
            // A client that stops reading cannot hold the connection (and a
            // backend's in-flight slot) longer than the idle timeout.
            let io = TokioIo::new(WriteStall::new(stream, idle_timeout));
            let mut conn = pin!(builder.serve_connection(io, svc));
            let result = tokio::select! {
                r = conn.as_mut() => r,
                () = cancel.cancelled() => {
                    // Finish the request in flight, then close.
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(listener = %proxy.listener, client = %peer, error = %e, "client connection ended with an error");
            }
        });
    })
    .await;
}

pub async fn serve_tcp(listener: TcpListener, proxy: Arc<TcpProxy>, tracker: TaskTracker, cancel: CancellationToken) {
    let name = Arc::clone(&proxy.listener);
    accept_loop(&name, &listener, &cancel, |stream, peer| {
        let proxy = Arc::clone(&proxy);
        tracker.spawn(async move {
            let _open = proxy.stats.open();
            proxy.handle(stream, peer).await;
        });
    })
    .await;
}
