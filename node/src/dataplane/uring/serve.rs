//! Accepting and connecting on a ring thread.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use monoio::io::Canceller;
use monoio::net::{TcpListener, TcpStream};
use tokio_util::task::TaskTracker;

use super::copy;
use crate::dataplane::copy::{CopyError, Transferred};
use crate::dataplane::listener::{ConnLimit, Stop};
use crate::dataplane::tcp::{Relay, TcpProxy, timed_out};

/// monoio's sockets, on the calling ring thread's io_uring.
pub struct Uring;

impl Relay for Uring {
    type Stream = TcpStream;

    async fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
        let stream = monoio::time::timeout(timeout, TcpStream::connect_addr(addr))
            .await
            .map_err(|_| timed_out(timeout))??;
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    fn relay(
        client: TcpStream,
        backend: TcpStream,
        idle: Duration,
        on_first_response: impl FnOnce(Duration) + Send + 'static,
    ) -> impl Future<Output = Result<Transferred, CopyError>> {
        copy::proxy(client, backend, idle, on_first_response)
    }
}

/// The TCP accept loop of one ring thread, on `socket`, its own
/// descriptor of its worker's listening socket; like the epoll loop
/// (`listener::serve_tcp`), it stops accepting when `stop.accepting` is
/// cancelled and leaves its connections be.
pub async fn serve_tcp(
    socket: std::net::TcpListener,
    proxy: Arc<TcpProxy>,
    limit: ConnLimit,
    tracker: TaskTracker,
    stop: Stop,
) {
    let name = Arc::clone(&proxy.site.load().listener);
    let listener = match TcpListener::from_std(socket) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(listener = %name, error = %e, "cannot accept on io_uring: this worker serves no connection of the listener");
            return;
        }
    };
    // An accept still queued in the ring when the loop stops would take a
    // connection nobody serves: the stop cancels it in the ring instead,
    // and an accept that won that race is served.
    let canceller = Canceller::new();
    let cancel = canceller.handle();
    let accepting = stop.accepting.clone();
    super::spawn(async move {
        accepting.cancelled().await;
        canceller.cancel();
    });
    let mut refusing = false;
    loop {
        if stop.accepting.is_cancelled() {
            return;
        }
        match listener.cancelable_accept(cancel.clone()).await {
            Ok((stream, peer)) => {
                let Some(slot) = limit.admit(&name, &mut refusing, &stop.accepting).await else {
                    continue;
                };
                let proxy = Arc::clone(&proxy);
                super::spawn(tracker.track_future(async move {
                    let _open = proxy.stats.open();
                    proxy.stats.here().on_ring.fetch_add(1, Ordering::Relaxed);
                    let _slot = slot;
                    proxy.handle_on::<Uring>(stream, peer).await;
                }));
            }
            Err(_) if stop.accepting.is_cancelled() => return,
            // The listening socket is non-blocking (epoll's descriptors
            // share that flag), which a kernel may honour in a ring's
            // accept: wait for a client instead.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                monoio::select! {
                    r = listener.readable(true) => {
                        if let Err(e) = r {
                            tracing::error!(listener = %name, error = %e, "waiting for a client failed; pausing accepts for 50ms");
                            monoio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                    () = stop.accepting.cancelled() => return,
                }
            }
            Err(e) => {
                tracing::error!(listener = %name, error = %e, "accept failed; pausing accepts for 50ms");
                monoio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
