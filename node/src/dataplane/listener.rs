//! Listening sockets and accept loops. A socket belongs to its address, not
//! to a listener config: a reload that changes a listener's protocol or
//! certificate restarts its accept loop on the same socket, so the port is
//! never closed in between.

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Handle;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::h1;
use super::http::{HttpProxy, service};
use super::idle::{ClientIo, ConnActivity};
use super::stats::{ListenerStats, OpenConn};
use super::tcp::{Epoll, TcpProxy};
use super::uring;

/// Binds a listening socket the way a proxy wants it: address reuse so a
/// restart does not wait out TIME_WAIT, and a deep accept backlog.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::from_std(bind_std(addr, false)?)
}

/// One listening socket of `addr` per runtime in `on` (the data-plane
/// workers), each registered with its runtime (see [`bind_std_each`]).
pub fn bind_each(addr: SocketAddr, on: &[Handle]) -> std::io::Result<Vec<Arc<TcpListener>>> {
    register_each(bind_std_each(addr, on.len())?, on)
}

/// `count` listening sockets of `addr`, SO_REUSEPORT when more than one,
/// so the kernel spreads connections over them. A plain bind first proves
/// the address free, since SO_REUSEPORT would otherwise silently share the
/// port with another process of the same user.
pub fn bind_std_each(addr: SocketAddr, count: usize) -> std::io::Result<Vec<std::net::TcpListener>> {
    let shared = count > 1;
    if shared {
        drop(bound(addr, false)?);
    }
    (0..count).map(|_| bind_std(addr, shared)).collect()
}

/// Registers socket `i` with runtime `on[i]`.
pub fn register_each(sockets: Vec<std::net::TcpListener>, on: &[Handle]) -> std::io::Result<Vec<Arc<TcpListener>>> {
    sockets
        .into_iter()
        .zip(on)
        .map(|(socket, h)| {
            let _runtime = h.enter();
            TcpListener::from_std(socket).map(Arc::new)
        })
        .collect()
}

fn bind_std(addr: SocketAddr, reuse_port: bool) -> std::io::Result<std::net::TcpListener> {
    let socket = bound(addr, reuse_port)?;
    // Accepted sockets inherit it: one system call per listener instead
    // of one per connection.
    socket.set_tcp_nodelay(true)?;
    socket.set_nonblocking(true)?;
    socket.listen(4096)?;
    Ok(socket.into())
}

fn bound(addr: SocketAddr, reuse_port: bool) -> std::io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(reuse_port)?;
    // A listener on a VIP binds before this node holds the address (it
    // is a backup, or the election is still running).
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
        socket.set_freebind_v6(true)?;
    } else {
        socket.set_freebind_v4(true)?;
    }
    socket.bind(&addr.into())?;
    Ok(socket)
}

/// When an accept loop stops, and when its connections must wind down:
/// a reload stops a loop but lets its connections live on; only shutdown
/// ends them.
#[derive(Clone)]
pub struct Stop {
    pub accepting: CancellationToken,
    pub connections: CancellationToken,
}

/// How long clients wait in the kernel's accept queue for a free connection
/// slot before the listener starts refusing them.
pub const QUEUE_WAIT: Duration = Duration::from_secs(1);

/// A listener's cap on open connections, shared by its accept loops (one
/// per worker). A loop that accepts a connection at the cap holds it and
/// stops accepting, so further clients wait in the kernel's accept queue
/// (bounded by the listen backlog); if no slot frees within
/// [`QUEUE_WAIT`], that connection is closed, and the loop accepts and
/// closes new ones at once, counting each as refused, until a slot frees.
/// Slots are taken only by accepted connections: an accept loop waiting
/// for a client holds none (with a slot per waiting loop, a cap of 2 and
/// two workers would leave no slot for clients).
#[derive(Clone)]
pub struct ConnLimit {
    max: u32,
    slots: Arc<Semaphore>,
    stats: Arc<ListenerStats>,
}

impl ConnLimit {
    pub fn new(max: u32, stats: Arc<ListenerStats>) -> Self {
        Self {
            max,
            slots: Arc::new(Semaphore::new(max as usize)),
            stats,
        }
    }

    /// A slot for a connection just accepted: at once if one is free;
    /// never while `refusing` (the last wait found none); else after
    /// waiting up to [`QUEUE_WAIT`] for one. `None` means refuse it: the
    /// refusal is counted, unless the loop was cancelled meanwhile.
    pub(super) async fn admit(
        &self,
        name: &str,
        refusing: &mut bool,
        cancel: &CancellationToken,
    ) -> Option<OwnedSemaphorePermit> {
        if let Ok(permit) = Arc::clone(&self.slots).try_acquire_owned() {
            *refusing = false;
            return Some(permit);
        }
        if !*refusing {
            let wait = tokio::select! {
                () = cancel.cancelled() => return None,
                r = tokio::time::timeout(QUEUE_WAIT, Arc::clone(&self.slots).acquire_owned()) => r,
            };
            if let Ok(Ok(permit)) = wait {
                return Some(permit);
            }
            tracing::warn!(
                listener = name,
                limit = self.max,
                "listener at max_connections: refusing new connections"
            );
            *refusing = true;
        }
        self.stats.here().refused.fetch_add(1, Ordering::Relaxed);
        None
    }
}

/// Accepts until cancelled, at most `limit` connections open at once; each
/// connection holds its slot until it ends. Errors such as running out of
/// file descriptors are logged and retried after a pause instead of
/// spinning.
async fn accept_loop(
    name: &str,
    listener: &TcpListener,
    limit: &ConnLimit,
    cancel: &CancellationToken,
    mut on_accept: impl FnMut(TcpStream, SocketAddr, OwnedSemaphorePermit),
) {
    let mut refusing = false;
    loop {
        let accepted = tokio::select! {
            () = cancel.cancelled() => return,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, peer)) => {
                // Refused: dropping the stream closes it.
                if let Some(slot) = limit.admit(name, &mut refusing, cancel).await {
                    on_accept(stream, peer, slot);
                }
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
    /// Longest a request line and headers may take from their first byte.
    pub header_timeout: Duration,
    /// Largest request head (HTTP/1.1 read buffer, HTTP/2 header list);
    /// beyond it HTTP/1.1 clients get 431. At least 8 KiB (hyper's floor,
    /// enforced by config validation).
    pub max_header_bytes: usize,
    /// TLS termination; HTTP/2 is offered (ALPN) only with TLS.
    pub tls: Option<TlsAcceptor>,
}

/// `ring`: where plain-text connections are served once they speak
/// (`[node] io = "io_uring"`); else here.
pub async fn serve_http(
    listener: Arc<TcpListener>,
    proxy: Arc<HttpProxy>,
    serving: HttpServing,
    limit: ConnLimit,
    tracker: TaskTracker,
    stop: Stop,
    ring: Option<uring::Ring>,
) {
    let name = Arc::clone(&proxy.site.load().listener);
    // TLS connections stay here: rustls and hyper are written on tokio.
    let ring = ring.filter(|_| serving.tls.is_none()).map(|r| (r, tracker.clone()));
    let shared = HttpListener::new(proxy, serving, &stop, ring);
    accept_loop(&name, &listener, &limit, &stop.accepting, |stream, peer, slot| {
        tracker.spawn(Arc::clone(&shared).accept(stream, peer, slot));
    })
    .await;
}

/// What every connection of one HTTP accept loop shares.
pub struct HttpListener {
    pub proxy: Arc<HttpProxy>,
    serving: HttpServing,
    /// The node's drain, as this loop's connections see it.
    shutdown: CancellationToken,
    /// The ring thread that serves this loop's connections once they speak,
    /// and what tracks them there.
    ring: Option<(uring::Ring, TaskTracker)>,
}

impl HttpListener {
    fn new(
        proxy: Arc<HttpProxy>,
        serving: HttpServing,
        stop: &Stop,
        ring: Option<(uring::Ring, TaskTracker)>,
    ) -> Arc<Self> {
        Arc::new(Self {
            proxy,
            serving,
            ring,
            // A token of this loop's own (cancelled with the node's): every
            // request checks it, and a token's state sits behind a lock
            // that the other workers' requests would otherwise contend for.
            shutdown: stop.connections.child_token(),
        })
    }

    /// The settings of Shoal's own HTTP/1.1 path for a client at `peer`.
    pub fn h1_settings(&self, peer: SocketAddr) -> h1::Settings<'_> {
        h1::Settings {
            proxy: &self.proxy,
            peer,
            idle_timeout: self.serving.idle_timeout,
            header_timeout: self.serving.header_timeout,
            max_header_bytes: self.serving.max_header_bytes,
            shutdown: &self.shutdown,
        }
    }

    /// A connection costs only its socket and a small task (about 640
    /// bytes in all, docs/benchmarks.md) until the client speaks: the protocol
    /// state and its buffers (about 18 KiB) are allocated, boxed, after the
    /// first bytes, here or on the ring thread. (A tokio task's allocation
    /// is rounded up to 128 bytes: this future at 400 bytes took 700 bytes
    /// per idle connection, at 408 bytes 980.)
    async fn accept(self: Arc<Self>, mut stream: TcpStream, peer: SocketAddr, slot: OwnedSemaphorePermit) {
        let open = self.proxy.stats.open();
        let first = tokio::select! {
            r = tokio::time::timeout(self.serving.idle_timeout, first_bytes(&mut stream)) => {
                r.unwrap_or_else(|_| Err(std::io::Error::new(ErrorKind::TimedOut, "sent nothing within the idle timeout")))
            }
            () = self.shutdown.cancelled() => return,
        };
        let first = match first {
            Ok(first) => first,
            Err(e) => {
                tracing::debug!(client = %peer, error = %e, "client connection ended before its first byte");
                return;
            }
        };
        match &self.ring {
            Some((ring, tracker)) if h1::head::worth_keeping(&first) => {
                self.to_ring(ring, tracker, stream, first, peer, open, slot);
            }
            _ => Box::pin(self.serve(stream, first, peer, open, slot)).await,
        }
    }

    /// Moves a connection that has spoken to its ring thread.
    #[allow(clippy::too_many_arguments)]
    fn to_ring(
        self: &Arc<Self>,
        ring: &uring::Ring,
        tracker: &TaskTracker,
        stream: TcpStream,
        first: Bytes,
        peer: SocketAddr,
        open: OpenConn,
        slot: OwnedSemaphorePermit,
    ) {
        let stream = match stream.into_std() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(client = %peer, error = %e, "cannot move a connection to io_uring; closing it");
                return;
            }
        };
        let accepted = uring::Accepted {
            stream,
            first,
            peer,
            open,
            slot,
            tracker: tracker.clone(),
        };
        let listener = Arc::clone(self);
        let tracker = tracker.clone();
        // A ring that has stopped (the node is stopping) drops the
        // connection, which closes it.
        if ring.spawn(move || tracker.track_future(uring::serve_http(listener, accepted))) {
            self.proxy.stats.here().on_ring.fetch_add(1, Ordering::Relaxed);
        } else {
            tracing::debug!(client = %peer, "the node is stopping: connection closed");
        }
    }

    async fn serve(
        &self,
        stream: TcpStream,
        first: Bytes,
        peer: SocketAddr,
        open: OpenConn,
        slot: OwnedSemaphorePermit,
    ) {
        let _open = open;
        let _slot = slot;
        let (stream, first) = match &self.serving.tls {
            // Plain HTTP/1.1: Shoal's own path, hyper for what it does not
            // take.
            None => match h1::serve::<Epoll>(&self.h1_settings(peer), stream, &first).await {
                Ok(h1::Ending::Handoff { stream, buffered }) => (stream, buffered),
                Ok(h1::Ending::Closed) => return,
                Err(e) => {
                    tracing::debug!(listener = %self.proxy.site.load().listener, client = %peer, error = %e, "client connection ended with an error");
                    return;
                }
            },
            Some(_) => (stream, first),
        };
        self.serve_hyper(stream, first, peer).await;
    }

    /// Serves the connection with hyper from here: TLS listeners from the
    /// start, plain ones from a request Shoal's own path does not take
    /// (`first`: the bytes read so far).
    pub async fn serve_hyper(&self, stream: TcpStream, first: Bytes, peer: SocketAddr) {
        let activity = Arc::new(ConnActivity::default());
        let conn = Conn {
            proxy: &self.proxy,
            peer,
            idle: self.serving.idle_timeout,
            max_header_bytes: self.serving.max_header_bytes,
            activity: &activity,
            shutdown: &self.shutdown,
        };
        let stream = ClientIo::new(
            stream,
            self.serving.idle_timeout,
            self.serving.header_timeout,
            Arc::clone(&activity),
        )
        .with_prefix(first);
        let result = match &self.serving.tls {
            None => conn.serve_h1(stream).await,
            Some(acceptor) => {
                let handshake = tokio::time::timeout(self.serving.idle_timeout, acceptor.accept(stream)).await;
                match handshake {
                    Ok(Ok(mut tls)) => {
                        let (io, session) = tls.get_mut();
                        if session.alpn_protocol() == Some(b"h2") {
                            io.stop_head_timer();
                        } else {
                            io.restart_head();
                        }
                        conn.serve_auto(tls).await
                    }
                    Ok(Err(e)) => Err(format!("TLS handshake failed: {e}")),
                    Err(_) => Err("TLS handshake timed out".to_string()),
                }
            }
        };
        if let Err(e) = result {
            tracing::debug!(listener = %self.proxy.site.load().listener, client = %peer, error = %e, "client connection ended with an error");
        }
    }
}

/// The client's first bytes, read once it has sent some; an error if it
/// closes first. Reading them here (rather than peeking, then letting the
/// protocol read them again) saves a system call per connection; the stack
/// buffer lives only during a poll, so a waiting connection holds none.
/// (`poll_read`, not `try_read`: a short read clears the readiness, so the
/// protocol's next read waits for more instead of failing with EAGAIN.)
fn first_bytes(stream: &mut TcpStream) -> impl Future<Output = std::io::Result<Bytes>> + '_ {
    std::future::poll_fn(move |cx| {
        // Uninitialised: no 4 KiB memset per poll.
        let mut chunk = [std::mem::MaybeUninit::<u8>::uninit(); FIRST_READ];
        let mut buf = ReadBuf::uninit(&mut chunk);
        std::task::ready!(Pin::new(&mut *stream).poll_read(cx, &mut buf))?;
        Poll::Ready(match buf.filled() {
            [] => Err(std::io::Error::new(
                ErrorKind::UnexpectedEof,
                "closed before sending anything",
            )),
            read => Ok(Bytes::copy_from_slice(read)),
        })
    })
}

/// Most bytes the first read takes: a typical request head, or a TLS
/// ClientHello; the rest is read by the protocol.
const FIRST_READ: usize = 4096;

/// One client connection being served.
struct Conn<'a> {
    proxy: &'a Arc<HttpProxy>,
    peer: SocketAddr,
    idle: Duration,
    max_header_bytes: usize,
    activity: &'a Arc<ConnActivity>,
    shutdown: &'a CancellationToken,
}

impl Conn<'_> {
    /// HTTP/1.1 only (plain-text listeners), with upgrades.
    async fn serve_h1<IO>(&self, io: IO) -> Result<(), String>
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            // Not hyper's: it runs while a keep-alive connection waits,
            // too. ClientIo times each head from its first byte.
            .header_read_timeout(None)
            .max_buf_size(self.max_header_bytes)
            .keep_alive(true);
        let svc = service(Arc::clone(self.proxy), self.peer, Arc::clone(self.activity));
        let mut conn = pin!(builder.serve_connection(TokioIo::new(io), svc).with_upgrades());
        let result = tokio::select! {
            r = conn.as_mut() => r,
            () = self.wind_down() => {
                // Finish the request in flight, then close.
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        };
        result.map_err(|e| e.to_string())
    }

    /// HTTP/1.1 or HTTP/2, whichever the client speaks (TLS listeners).
    async fn serve_auto<IO>(&self, io: IO) -> Result<(), String>
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(None)
            .max_buf_size(self.max_header_bytes)
            .keep_alive(true);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(self.max_header_bytes).unwrap_or(u32::MAX));
        let svc = service(Arc::clone(self.proxy), self.peer, Arc::clone(self.activity));
        let mut conn = pin!(builder.serve_connection_with_upgrades(TokioIo::new(io), svc));
        let result = tokio::select! {
            r = conn.as_mut() => r,
            () = self.wind_down() => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        };
        result.map_err(|e| e.to_string())
    }

    /// Resolves when the connection should close gracefully: the node
    /// shuts down, or no request has been open and no byte has moved for
    /// the idle timeout (whatever the protocol: HTTP/2 has no idle timer
    /// of its own, and a client may never send a first request).
    async fn wind_down(&self) {
        tokio::select! {
            () = self.shutdown.cancelled() => {}
            () = self.activity.idle(self.idle) => {}
        }
    }
}

pub async fn serve_tcp(
    listener: Arc<TcpListener>,
    proxy: Arc<TcpProxy>,
    limit: ConnLimit,
    tracker: TaskTracker,
    stop: Stop,
) {
    let name = Arc::clone(&proxy.site.load().listener);
    accept_loop(&name, &listener, &limit, &stop.accepting, |stream, peer, slot| {
        let proxy = Arc::clone(&proxy);
        tracker.spawn(async move {
            let _open = proxy.stats.open();
            let _slot = slot;
            proxy.handle(stream, peer).await;
        });
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::workers::Workers;

    /// Every idle client connection holds one task around this future,
    /// and the task is allocated in steps: eight bytes more (416 to 424)
    /// cost 686 -> about 920 bytes per idle connection (docs/benchmarks.md,
    /// "idle memory and the task's size"). A change that must grow it
    /// measures idle memory with bench/compare.sh and moves this bound.
    #[test]
    fn an_idle_connections_task_stays_within_its_allocation_step() {
        fn output_size<A, B, C, D, F>(_: impl Fn(A, B, C, D) -> F) -> usize {
            std::mem::size_of::<F>()
        }
        let size = output_size(HttpListener::accept);
        assert!(size <= 416, "the accept future grew to {size} bytes");
    }

    #[tokio::test]
    async fn each_worker_gets_a_socket_and_a_taken_port_is_refused() -> std::io::Result<()> {
        let workers = Workers::start(2)?;
        let held = std::net::TcpListener::bind("127.0.0.1:0")?;
        let taken = held.local_addr()?;
        let err = bind_each(taken, &workers.handles()).err();
        assert_eq!(err.map(|e| e.kind()), Some(ErrorKind::AddrInUse));

        let free = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0")?;
            probe.local_addr()?
        };
        let group = bind_each(free, &workers.handles())?;
        assert_eq!(group.len(), 2);
        // SO_REUSEPORT would let a second group (another node, say) share
        // the port silently: the plain probe bind refuses it.
        let err = bind_each(free, &workers.handles()).err();
        assert_eq!(err.map(|e| e.kind()), Some(ErrorKind::AddrInUse));
        // Connections reach the group.
        let _client = tokio::net::TcpStream::connect(free).await?;
        Ok(())
    }

    #[tokio::test(start_paused = true)]
    async fn at_the_cap_a_connection_waits_for_a_slot_then_the_listener_refuses_until_one_frees() {
        let stats = Arc::new(ListenerStats::default());
        let limit = ConnLimit::new(1, Arc::clone(&stats));
        let cancel = CancellationToken::new();
        let mut refusing = false;
        let first = limit.admit("l", &mut refusing, &cancel).await;
        assert!(first.is_some());

        // A slot that frees during the wait is taken.
        let started = tokio::time::Instant::now();
        let (admitted, ()) = tokio::join!(limit.admit("l", &mut refusing, &cancel), async {
            tokio::time::sleep(QUEUE_WAIT / 2).await;
            drop(first);
        });
        assert!(admitted.is_some());
        assert_eq!(started.elapsed(), QUEUE_WAIT / 2);

        // None frees: refused after the full wait, then at once.
        let started = tokio::time::Instant::now();
        assert!(limit.admit("l", &mut refusing, &cancel).await.is_none());
        assert_eq!(started.elapsed(), QUEUE_WAIT);
        assert!(refusing);
        assert!(limit.admit("l", &mut refusing, &cancel).await.is_none());
        assert_eq!(started.elapsed(), QUEUE_WAIT, "refusing does not wait");
        assert_eq!(stats.totals().refused, 2);

        // A freed slot ends the refusal.
        drop(admitted);
        assert!(limit.admit("l", &mut refusing, &cancel).await.is_some());
        assert!(!refusing);
    }

    #[tokio::test]
    async fn accepted_sockets_inherit_tcp_nodelay() -> std::io::Result<()> {
        let listener = bind("127.0.0.1:0".parse().map_err(std::io::Error::other)?)?;
        let _client = TcpStream::connect(listener.local_addr()?).await?;
        let (accepted, _) = listener.accept().await?;
        assert!(accepted.nodelay()?);
        Ok(())
    }
}
