//! A running node: builds pools and listeners from a validated config,
//! starts the data plane, health checks and admin server, and shuts them
//! down gracefully.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use shoal_proto::NodeId;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, HostPort, Protocol, VipConfig};
use crate::dataplane::ListenerStats;
use crate::dataplane::http::{HttpProxy, Upstream};
use crate::dataplane::listener;
use crate::dataplane::tcp::TcpProxy;
use crate::pool::Pool;
use crate::{admin, health};

/// What the admin API shows: the node's identity and live objects.
pub struct NodeState {
    pub id: NodeId,
    pub started: Instant,
    pub pools: Vec<Arc<Pool>>,
    pub listeners: Vec<ListenerInfo>,
    pub vips: Vec<VipConfig>,
}

pub struct ListenerInfo {
    pub name: String,
    pub bind: SocketAddr,
    pub protocol: Protocol,
    pub pool: String,
    pub stats: Arc<ListenerStats>,
}

pub struct RunningNode {
    pub state: Arc<NodeState>,
    pub admin_addr: SocketAddr,
    cancel: CancellationToken,
    tracker: TaskTracker,
    shutdown_timeout: Duration,
}

/// Resolves a backend address; host names must resolve when the node starts.
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

impl RunningNode {
    /// Binds every socket first (so a port conflict fails the start with
    /// nothing half-running), then starts serving.
    pub async fn start(config: Config) -> Result<Self> {
        let mut pools: HashMap<String, Arc<Pool>> = HashMap::new();
        // One keep-alive connection pool per backend pool, shared by every
        // listener using it.
        let mut upstreams: HashMap<String, Arc<Upstream>> = HashMap::new();
        let mut pool_list = Vec::new();
        for pc in &config.pools {
            let mut addrs = Vec::with_capacity(pc.backends.len());
            for b in &pc.backends {
                addrs.push(
                    resolve(&b.address)
                        .await
                        .with_context(|| format!("pool {:?}, backend {:?}", pc.name, b.name))?,
                );
            }
            let pool = Arc::new(Pool::new(pc, &addrs));
            pools.insert(pc.name.clone(), Arc::clone(&pool));
            upstreams.insert(pc.name.clone(), Arc::new(Upstream::new(Arc::clone(&pool))));
            pool_list.push(pool);
        }

        let mut bound = Vec::new();
        for l in &config.listeners {
            let sock = listener::bind(l.bind)
                .with_context(|| format!("listener {:?}: cannot listen on {}", l.name, l.bind))?;
            bound.push((l.clone(), sock));
        }
        let admin_sock = listener::bind(config.node.admin_addr)
            .with_context(|| format!("admin API: cannot listen on {}", config.node.admin_addr))?;
        let admin_addr = admin_sock.local_addr().context("admin socket address")?;

        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        let mut infos = Vec::new();
        for (l, sock) in bound {
            let pool = pools
                .get(&l.pool)
                .cloned()
                .ok_or_else(|| anyhow!("listener {:?}: pool {:?} is not defined", l.name, l.pool))?;
            let stats = Arc::new(ListenerStats::default());
            let name: Arc<str> = Arc::from(l.name.as_str());
            match l.protocol {
                Protocol::Http => {
                    let upstream = upstreams
                        .get(&l.pool)
                        .cloned()
                        .ok_or_else(|| anyhow!("listener {:?}: pool {:?} is not defined", l.name, l.pool))?;
                    let proxy = Arc::new(HttpProxy {
                        listener: name,
                        upstream,
                        stats: Arc::clone(&stats),
                        proto: "http",
                        client_idle: l.idle_timeout().get(),
                    });
                    tracker.spawn(listener::serve_http(
                        sock,
                        proxy,
                        l.idle_timeout().get(),
                        tracker.clone(),
                        cancel.clone(),
                    ));
                }
                Protocol::Tcp => {
                    let proxy = Arc::new(TcpProxy {
                        listener: name,
                        pool,
                        stats: Arc::clone(&stats),
                        idle_timeout: l.idle_timeout().get(),
                    });
                    tracker.spawn(listener::serve_tcp(sock, proxy, tracker.clone(), cancel.clone()));
                }
            }
            tracing::info!(listener = %l.name, bind = %l.bind, protocol = %l.protocol, pool = %l.pool, "listening");
            infos.push(ListenerInfo {
                name: l.name.clone(),
                bind: l.bind,
                protocol: l.protocol,
                pool: l.pool.clone(),
                stats,
            });
        }
        for pool in &pool_list {
            health::spawn_checks(pool, &tracker, &cancel);
        }
        warn_inactive(&config);

        let state = Arc::new(NodeState {
            id: config.node.id.clone(),
            started: Instant::now(),
            pools: pool_list,
            listeners: infos,
            vips: config.vips.clone(),
        });
        tracker.spawn(admin::serve(
            admin_sock,
            Arc::clone(&state),
            tracker.clone(),
            cancel.clone(),
        ));
        tracing::info!(node = %config.node.id, admin = %admin_addr, "node started");
        Ok(Self {
            state,
            admin_addr,
            cancel,
            tracker,
            shutdown_timeout: config.node.shutdown_timeout.get(),
        })
    }

    /// Stops accepting, lets in-flight requests finish up to the configured
    /// shutdown timeout, then returns. Returns whether everything finished.
    pub async fn shutdown(self) -> bool {
        tracing::info!(timeout = ?self.shutdown_timeout, "shutting down: no new connections, finishing in-flight work");
        self.cancel.cancel();
        self.tracker.close();
        let finished = tokio::time::timeout(self.shutdown_timeout, self.tracker.wait())
            .await
            .is_ok();
        if !finished {
            tracing::warn!(timeout = ?self.shutdown_timeout, "shutdown timeout reached; closing remaining connections");
        }
        finished
    }
}

/// Sections that parse and validate but whose features are not built yet.
fn warn_inactive(config: &Config) {
    if config.cluster.is_some() {
        tracing::warn!("[cluster] is validated but not active in this version: the node runs standalone");
    }
    if !config.vips.is_empty() {
        tracing::warn!("[[vip]] is validated but not active in this version: no VIP is managed");
    }
    for p in &config.pools {
        if p.sticky.is_some() {
            tracing::warn!(pool = %p.name, "sticky is validated but not active in this version");
        }
        if p.outlier.is_some() {
            tracing::warn!(pool = %p.name, "outlier is validated but not active in this version");
        }
    }
}

/// Runs a node until SIGTERM or SIGINT, then shuts down gracefully.
pub async fn run(config: Config) -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut hup = signal(SignalKind::hangup()).context("installing SIGHUP handler")?;
    let node = RunningNode::start(config).await?;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                tracing::warn!("SIGHUP: config reload is not supported yet; restart the node to apply a new config");
            }
        }
    }
    node.shutdown().await;
    Ok(())
}
