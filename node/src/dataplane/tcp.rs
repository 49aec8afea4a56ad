//! The L4 proxy: each client connection is rate-limited, balanced once,
//! connected to a backend (another one if connecting fails), then bytes are
//! copied both ways until either side is done or the connection idles out.
//! Balancing and retries are written once; connecting and copying belong
//! to the I/O interface ([`Relay`]: epoll here, io_uring in `uring`).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::net::TcpStream;

use super::copy::{self, CopyError, Transferred};
use super::ratelimit::RateLimiter;
use super::stats::ListenerStats;
use crate::affinity::sticky::ip_key;
use crate::affinity::{AffinityTable, now_unix_ms};
use crate::balance::{PickCtx, hash_ip};
use crate::pool::{NoAttempt, NoBackend, Outcome, Pool};

/// A TCP listener's settings; replaced whole on reload.
pub struct TcpSite {
    pub listener: Arc<str>,
    pub pool: Arc<Pool>,
    pub idle_timeout: Duration,
    pub rate_limit: Option<Arc<RateLimiter>>,
    /// Sticky bindings (node-wide, replicated); TCP pools stick by source IP.
    pub affinity: Arc<AffinityTable>,
}

pub struct TcpProxy {
    pub site: ArcSwap<TcpSite>,
    pub stats: Arc<ListenerStats>,
}

/// How an I/O interface connects to a backend and relays a connection.
pub trait Relay {
    type Stream;
    /// Connects (with TCP_NODELAY), failing with `TimedOut` after `timeout`.
    fn connect(addr: SocketAddr, timeout: Duration) -> impl Future<Output = io::Result<Self::Stream>>;
    /// Copies both ways until both directions end, either side fails, or
    /// nothing moves for `idle` (see `copy::proxy`).
    fn relay(
        client: Self::Stream,
        backend: Self::Stream,
        idle: Duration,
        on_first_response: impl FnOnce(Duration) + Send + 'static,
    ) -> impl Future<Output = Result<Transferred, CopyError>>;
}

/// tokio's sockets, on epoll.
pub struct Epoll;

impl Relay for Epoll {
    type Stream = TcpStream;

    async fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
        let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
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

pub fn timed_out(after: Duration) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, format!("timed out after {after:?}"))
}

impl TcpProxy {
    /// Serves one client connection on epoll.
    pub async fn handle(&self, client: TcpStream, peer: SocketAddr) {
        self.handle_on::<Epoll>(client, peer).await;
    }

    /// Serves one client connection on the I/O interface `R`.
    pub async fn handle_on<R: Relay>(&self, client: R::Stream, peer: SocketAddr) {
        let site = self.site.load_full();
        if let Some(limit) = &site.rate_limit
            && limit.check(peer.ip(), Instant::now()).is_err()
        {
            self.stats.here().rate_limited.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(listener = %site.listener, client = %peer, "rate limit exceeded: closing connection");
            return;
        }
        let pool = &site.pool;
        let hash = pool.needs_hash().then(|| hash_ip(peer.ip()));
        let mut ctx = PickCtx::new(hash);
        let _counted = pool.budget.request();
        let sticky = pool.sticky.as_ref().map(|s| (s, ip_key(peer.ip()), now_unix_ms()));
        let found = sticky
            .as_ref()
            .and_then(|(s, key, now)| site.affinity.find(&pool.name, key, s.ttl, *now));
        let preferred = found.as_ref().and_then(|f| pool.backend(&f.backend).cloned());
        let mut no_backend = NoBackend::NoneUsable;
        for attempt in 0..=pool.retries {
            let (in_flight, _retry) = match pool.next_attempt(&mut ctx, attempt, preferred.as_ref()).await {
                Ok(a) => a,
                Err(NoAttempt::Budget) => break,
                Err(NoAttempt::NoBackend(e)) => {
                    no_backend = e;
                    break;
                }
            };
            let backend = Arc::clone(in_flight.backend());
            let stream = match R::connect(backend.addr, pool.connect_timeout).await {
                Ok(s) => s,
                Err(error) => {
                    backend.counters.connect_failures.fetch_add(1, Ordering::Relaxed);
                    backend.observe_latency(pool.connect_timeout);
                    pool.report(&backend, Outcome::Failure);
                    ctx.exclude(backend.id);
                    tracing::warn!(listener = %site.listener, pool = %pool.name, backend = %backend.name, attempt, %error, "connect to backend failed");
                    continue;
                }
            };
            pool.report(&backend, Outcome::Success);
            if let Some((s, key, now)) = &sticky {
                site.affinity
                    .record_use(&pool.name, key, &backend.name, found.as_ref(), s.ttl, *now);
            }
            // The first response time is what L4 sees of a backend's
            // latency (for least_response_time).
            let sampled = Arc::clone(&backend);
            let on_first_response = move |d| sampled.observe_latency(d);
            match R::relay(client, stream, site.idle_timeout, on_first_response).await {
                Ok(moved) => {
                    tracing::debug!(listener = %site.listener, backend = %backend.name, ?moved, "connection done")
                }
                Err(CopyError::Idle(d)) => {
                    tracing::debug!(listener = %site.listener, backend = %backend.name, idle = ?d, "idle connection closed");
                }
                Err(CopyError::Io(e)) => {
                    tracing::debug!(listener = %site.listener, backend = %backend.name, error = %e, "connection ended with an error");
                }
            }
            drop(in_flight);
            return;
        }
        self.stats.here().unserved.fetch_add(1, Ordering::Relaxed);
        let why = match no_backend {
            NoBackend::Saturated => "every usable backend is at its connection limit",
            NoBackend::NoneUsable => "no usable backend",
        };
        tracing::warn!(listener = %site.listener, pool = %pool.name, client = %peer, "{why}: closing client connection");
    }
}
