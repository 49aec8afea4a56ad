//! Listening sockets and accept loops. A socket belongs to its address, not
//! to a listener config: a reload that changes a listener's protocol or
//! certificate restarts its accept loop on the same socket, so the port is
//! never closed in between.

use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
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

/// How an HTTP listener serves its connections.
#[derive(Clone)]
pub struct HttpServing {
    pub idle_timeout: Duration,
    /// TLS termination; HTTP/2 is offered (ALPN) only with TLS.
    pub tls: Option<TlsAcceptor>,
}

pub async fn serve_http(
    listener: Arc<TcpListener>,
    proxy: Arc<HttpProxy>,
    serving: HttpServing,
    tracker: TaskTracker,
    cancel: CancellationToken,
) {
    let name = Arc::clone(&proxy.site.load().listener);
    accept_loop(&name, &listener, &cancel, |stream, peer| {
        let proxy = Arc::clone(&proxy);
        let serving = serving.clone();
        let cancel = cancel.clone();
        tracker.spawn(async move {
            let _open = proxy.stats.open();
            // A client that stops reading cannot hold the connection (and
            // a backend's in-flight slot) longer than the idle timeout.
            let stream = WriteStall::new(stream, serving.idle_timeout);
            let result = match &serving.tls {
                None => serve_h1(stream, &proxy, peer, serving.idle_timeout, &cancel).await,
                Some(acceptor) => {
                    let handshake = tokio::time::timeout(serving.idle_timeout, acceptor.accept(stream)).await;
                    match handshake {
                        Ok(Ok(tls)) => serve_auto(tls, &proxy, peer, serving.idle_timeout, &cancel).await,
                        Ok(Err(e)) => Err(format!("TLS handshake failed: {e}")),
                        Err(_) => Err("TLS handshake timed out".to_string()),
                    }
                }
            };
            if let Err(e) = result {
                tracing::debug!(listener = %proxy.site.load().listener, client = %peer, error = %e, "client connection ended with an error");
            }
        });
    })
    .await;
}

/// HTTP/1.1 only (plain-text listeners), with upgrades.
async fn serve_h1<IO>(
    io: IO,
    proxy: &Arc<HttpProxy>,
    peer: SocketAddr,
    idle: Duration,
    cancel: &CancellationToken,
) -> Result<(), String>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        // hyper starts this timer whenever it waits for a request head, so
        // it is also the keep-alive idle timeout.
        .header_read_timeout(idle)
        .keep_alive(true);
    let svc = service(Arc::clone(proxy), peer);
    let mut conn = pin!(builder.serve_connection(TokioIo::new(io), svc).with_upgrades());
    let result = tokio::select! {
        r = conn.as_mut() => r,
        () = cancel.cancelled() => {
            // Finish the request in flight, then close.
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    result.map_err(|e| e.to_string())
}

/// HTTP/1.1 or HTTP/2, whichever the client speaks (TLS listeners).
async fn serve_auto<IO>(
    io: IO,
    proxy: &Arc<HttpProxy>,
    peer: SocketAddr,
    idle: Duration,
    cancel: &CancellationToken,
) -> Result<(), String>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(idle)
        .keep_alive(true);
    builder.http2().timer(TokioTimer::new());
    let svc = service(Arc::clone(proxy), peer);
    let mut conn = pin!(builder.serve_connection_with_upgrades(TokioIo::new(io), svc));
    let result = tokio::select! {
        r = conn.as_mut() => r,
        () = cancel.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    result.map_err(|e| e.to_string())
}

pub async fn serve_tcp(
    listener: Arc<TcpListener>,
    proxy: Arc<TcpProxy>,
    tracker: TaskTracker,
    cancel: CancellationToken,
) {
    let name = Arc::clone(&proxy.site.load().listener);
    accept_loop(&name, &listener, &cancel, |stream, peer| {
        let proxy = Arc::clone(&proxy);
        tracker.spawn(async move {
            let _open = proxy.stats.open();
            proxy.handle(stream, peer).await;
        });
    })
    .await;
}
