//! One generation of a node's configuration, applied: pools with their
//! backends and connection pools, and how each listener handles traffic.
//! A reload builds the next generation from the previous one, keeping the
//! state of everything that did not change.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};

use crate::affinity::AffinityTable;
use crate::config::{Config, HostPort, ListenerConfig, PoolConfig, Protocol};
use crate::dataplane::ListenerStats;
use crate::dataplane::http::{HttpSite, Route, Upstream};
use crate::dataplane::ratelimit::RateLimiter;
use crate::dataplane::route::RouteMatch;
use crate::dataplane::tcp::TcpSite;
use crate::pool::Pool;

/// What the admin API shows about a listener.
pub struct ListenerInfo {
    pub name: String,
    pub bind: SocketAddr,
    pub protocol: Protocol,
    pub tls: bool,
    pub pool: String,
    pub routes: usize,
    pub stats: Arc<ListenerStats>,
}

pub struct Generation {
    pub config: Arc<Config>,
    /// Hash of the pools and backends, so nodes can tell when they
    /// disagree.
    pub fingerprint: String,
    /// Pools in config order, each with its HTTP connection pool.
    pub upstreams: Vec<Arc<Upstream>>,
    pub listeners: Vec<ListenerInfo>,
}

impl Generation {
    pub fn pools(&self) -> impl Iterator<Item = &Arc<Pool>> {
        self.upstreams.iter().map(|u| &u.pool)
    }

    pub fn pool(&self, name: &str) -> Option<&Arc<Pool>> {
        self.pools().find(|p| &*p.name == name)
    }

    pub fn upstream(&self, name: &str) -> Option<&Arc<Upstream>> {
        self.upstreams.iter().find(|u| &*u.pool.name == name)
    }
}

/// A short hash of what must agree across a cluster: pools, algorithms and
/// backends (names, addresses, weights, roles).
pub fn fingerprint(config: &Config) -> String {
    let mut canonical = String::new();
    for p in &config.pools {
        canonical.push_str(&format!("pool {} {}\n", p.name, p.algorithm));
        for b in &p.backends {
            canonical.push_str(&format!("  {} {} {} {}\n", b.name, b.address, b.weight, b.backup));
        }
    }
    format!("{:016x}", xxhash_rust::xxh3::xxh3_64(canonical.as_bytes()))
}

/// Resolves a backend address; host names must resolve when applied.
async fn resolve(addr: &HostPort) -> Result<SocketAddr> {
    match addr {
        HostPort::Ip(a) => Ok(*a),
        HostPort::Name { host, port } => tokio::net::lookup_host((host.as_str(), *port))
            .await
            .with_context(|| format!("cannot resolve {addr}"))?
            .next()
            .ok_or_else(|| anyhow!("{addr} resolved to no address")),
    }
}

async fn build_pool(pc: &PoolConfig, previous: Option<&Upstream>, workers: usize) -> Result<Arc<Upstream>> {
    let mut addrs = Vec::with_capacity(pc.backends.len());
    for b in &pc.backends {
        addrs.push(
            resolve(&b.address)
                .await
                .with_context(|| format!("pool {:?}, backend {:?}", pc.name, b.name))?,
        );
    }
    let pool = Arc::new(Pool::new(pc, &addrs, previous.map(|u| &*u.pool)));
    let upstream = Upstream::new(pool, previous, workers);
    if !previous.is_some_and(|p| Arc::ptr_eq(p.backend_conns(), upstream.backend_conns())) {
        spawn_sweeper(Arc::downgrade(upstream.backend_conns()), |c| {
            let closed = c.sweep();
            if closed > 0 {
                tracing::debug!(closed, "closed idle backend connections");
            }
        });
    }
    Ok(Arc::new(upstream))
}

/// Builds the pools of `config`, reusing what `previous` has of them, with
/// a backend connection pool for each of `workers`.
pub async fn build_upstreams(
    config: &Config,
    previous: Option<&Generation>,
    workers: usize,
) -> Result<Vec<Arc<Upstream>>> {
    let mut out = Vec::with_capacity(config.pools.len());
    for pc in &config.pools {
        let prev = previous.and_then(|g| g.upstream(&pc.name));
        out.push(build_pool(pc, prev.map(|u| &**u), workers).await?);
    }
    Ok(out)
}

fn find<'a>(upstreams: &'a [Arc<Upstream>], name: &str) -> Result<&'a Arc<Upstream>> {
    upstreams
        .iter()
        .find(|u| &*u.pool.name == name)
        .ok_or_else(|| anyhow!("pool {name:?} is not defined"))
}

/// A listener's rate limiter: the previous one while its settings are
/// unchanged (clients keep their buckets across a reload).
fn rate_limiter(l: &ListenerConfig, previous: Option<&Arc<RateLimiter>>) -> Option<Arc<RateLimiter>> {
    let cfg = l.rate_limit.as_ref()?;
    if let Some(prev) = previous.filter(|p| p.same_config(cfg)) {
        return Some(Arc::clone(prev));
    }
    let limiter = Arc::new(RateLimiter::new(cfg));
    spawn_sweeper(Arc::downgrade(&limiter), |l| {
        l.sweep(Instant::now());
    });
    Some(limiter)
}

/// Runs `sweep` on `what` every 5 s for as long as it is in use
/// elsewhere: the rate limiter drops refilled buckets, a pool's backend
/// connections close those idle past its keep-alive time (a pool that
/// gets no more requests would otherwise hold them, and the backend's
/// sockets).
fn spawn_sweeper<T: Send + Sync + 'static>(what: Weak<T>, sweep: fn(&T)) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            let Some(it) = what.upgrade() else { return };
            sweep(&it);
        }
    });
}

pub fn http_site(
    l: &ListenerConfig,
    upstreams: &[Arc<Upstream>],
    previous_limiter: Option<&Arc<RateLimiter>>,
    affinity: &Arc<AffinityTable>,
) -> Result<HttpSite> {
    let routes = l
        .routes
        .iter()
        .map(|r| {
            Ok(Route {
                matcher: RouteMatch::new(r),
                upstream: Arc::clone(find(upstreams, &r.pool)?),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(HttpSite {
        listener: Arc::from(l.name.as_str()),
        default: Arc::clone(find(upstreams, &l.pool)?),
        routes,
        rate_limit: rate_limiter(l, previous_limiter),
        client_idle: l.idle_timeout().get(),
        max_body_bytes: l.max_body_bytes(),
        proto: if l.tls.is_some() { "https" } else { "http" },
        affinity: Arc::clone(affinity),
    })
}

pub fn tcp_site(
    l: &ListenerConfig,
    upstreams: &[Arc<Upstream>],
    previous_limiter: Option<&Arc<RateLimiter>>,
    affinity: &Arc<AffinityTable>,
) -> Result<TcpSite> {
    Ok(TcpSite {
        listener: Arc::from(l.name.as_str()),
        pool: Arc::clone(&find(upstreams, &l.pool)?.pool),
        idle_timeout: l.idle_timeout().get(),
        rate_limit: rate_limiter(l, previous_limiter),
        affinity: Arc::clone(affinity),
    })
}

/// The sticky table's bound: the largest `max_entries` of the sticky pools.
pub fn sticky_capacity(config: &Config) -> u64 {
    config
        .pools
        .iter()
        .filter_map(|p| p.sticky.as_ref().map(|s| s.max_entries))
        .max()
        .unwrap_or(1_000_000)
}

/// Pool names per listener, for the admin API.
pub fn listener_infos(config: &Config, stats: &HashMap<String, Arc<ListenerStats>>) -> Vec<ListenerInfo> {
    config
        .listeners
        .iter()
        .filter_map(|l| {
            Some(ListenerInfo {
                name: l.name.clone(),
                bind: l.bind,
                protocol: l.protocol,
                tls: l.tls.is_some(),
                pool: l.pool.clone(),
                routes: l.routes.len(),
                stats: Arc::clone(stats.get(&l.name)?),
            })
        })
        .collect()
}
