//! The L4 proxy: each client connection is balanced once, connected to a
//! backend (another one if connecting fails), then bytes are copied both
//! ways until either side is done or the connection idles out.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::net::TcpStream;

use super::copy::{self, CopyError};
use super::stats::ListenerStats;
use crate::balance::{PickCtx, hash_ip};
use crate::pool::Pool;

pub struct TcpProxy {
    pub listener: Arc<str>,
    pub pool: Arc<Pool>,
    pub stats: Arc<ListenerStats>,
    pub idle_timeout: Duration,
}

impl TcpProxy {
    pub async fn handle(&self, client: TcpStream, peer: SocketAddr) {
        let pool = &self.pool;
        let hash = pool.needs_hash().then(|| hash_ip(peer.ip()));
        let mut ctx = PickCtx::new(hash);
        for attempt in 0..=pool.retries {
            // The sticky-table lookup (affinity issue) goes before this pick.
            let Some(backend) = pool.select(&mut ctx).cloned() else {
                break;
            };
            let in_flight = backend.begin();
            let connected = tokio::time::timeout(pool.connect_timeout, TcpStream::connect(backend.addr)).await;
            let stream = match connected {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    backend.counters.connect_failures.fetch_add(1, Ordering::Relaxed);
                    backend.observe_latency(pool.connect_timeout);
                    tracing::warn!(listener = %self.listener, pool = %pool.name, backend = %backend.name, attempt, error = %e, "connect to backend failed");
                    ctx.exclude(backend.slot);
                    continue;
                }
                Err(_) => {
                    backend.counters.connect_failures.fetch_add(1, Ordering::Relaxed);
                    backend.observe_latency(pool.connect_timeout);
                    tracing::warn!(listener = %self.listener, pool = %pool.name, backend = %backend.name, attempt, timeout = ?pool.connect_timeout, "connect to backend timed out");
                    ctx.exclude(backend.slot);
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            // The first response time is what L4 sees of a backend's
            // latency (for least_response_time).
            let sampled = Arc::clone(&backend);
            let on_first_response = move |d| sampled.observe_latency(d);
            match copy::proxy(client, stream, self.idle_timeout, on_first_response).await {
                Ok(moved) => {
                    tracing::debug!(listener = %self.listener, backend = %backend.name, ?moved, "connection done")
                }
                Err(CopyError::Idle(d)) => {
                    tracing::debug!(listener = %self.listener, backend = %backend.name, idle = ?d, "idle connection closed");
                }
                Err(CopyError::Io(e)) => {
                    tracing::debug!(listener = %self.listener, backend = %backend.name, error = %e, "connection ended with an error");
                }
            }
            drop(in_flight);
            return;
        }
        self.stats.unserved.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(listener = %self.listener, pool = %pool.name, client = %peer, "no usable backend: closing client connection");
    }
}
