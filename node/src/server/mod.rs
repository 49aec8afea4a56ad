//! A running node: applies a validated config (pools, listeners, health
//! checks, admin API), reloads it on SIGHUP without dropping connections,
//! and shuts down gracefully.

mod generation;
mod listeners;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use arc_swap::{ArcSwap, ArcSwapOption};
use shoal_proto::NodeId;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use generation::{Generation, ListenerInfo};
pub use listeners::Changes;

use crate::affinity::{AffinityTable, Replication};
use crate::cluster::Cluster;
use crate::config::{self, Config, IoMode};
use crate::dataplane::listener;
use crate::dataplane::workers::Workers;
use crate::{admin, health};
use listeners::Listeners;

/// What the admin API works on: the node's identity and the current
/// generation of its config.
pub struct NodeState {
    pub id: NodeId,
    pub started: Instant,
    /// How TCP and plain-text HTTP listeners wait for I/O: `[node] io`, or
    /// epoll where the kernel refused io_uring.
    pub tcp_io: IoMode,
    pub current: ArcSwap<Generation>,
    /// Bearer token admin writes must present, if configured.
    pub admin_token: ArcSwapOption<String>,
    /// Gossip membership, when `[cluster]` is configured.
    pub cluster: Option<Arc<Cluster>>,
    /// Sticky bindings of every pool.
    pub affinity: Arc<AffinityTable>,
    /// Their replication to peers, when `[cluster]` has `tls`.
    pub replication: Option<Arc<Replication>>,
    /// The VRRP routers of `[[vip]]`, set once started.
    pub vips: std::sync::OnceLock<Vec<crate::vip::ManagedVip>>,
}

/// Drops expired sticky bindings every few seconds.
fn spawn_sweeper(table: &Arc<AffinityTable>, cancel: &CancellationToken) {
    let table = Arc::clone(table);
    let cancel = cancel.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            table.sweep(crate::affinity::now_unix_ms());
        }
    });
}

pub struct RunningNode {
    pub state: Arc<NodeState>,
    pub admin_addr: SocketAddr,
    cancel: CancellationToken,
    admin_cancel: CancellationToken,
    tracker: TaskTracker,
    shutdown_timeout: Duration,
    listeners: Mutex<Listeners>,
    /// The data-plane threads; dropped (stopped) after the drain.
    workers: Workers,
    /// Cancels the current generation's health checks.
    health: Mutex<CancellationToken>,
    /// Serialises reloads.
    reloading: tokio::sync::Mutex<()>,
}

/// `node.workers`, or one data-plane thread per CPU.
fn worker_count(configured: Option<usize>) -> usize {
    configured.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from))
}

fn read_token(config: &Config) -> Result<Option<Arc<String>>> {
    match &config.node.admin_token_file {
        None => Ok(None),
        Some(path) => {
            let token = std::fs::read_to_string(path)
                .with_context(|| format!("reading admin token file {}", path.display()))?;
            Ok(Some(Arc::new(token.trim().to_string())))
        }
    }
}

fn start_health(applied: &Generation, root: &CancellationToken, tracker: &TaskTracker) -> CancellationToken {
    let token = root.child_token();
    for pool in applied.pools() {
        health::spawn_checks(pool, tracker, &token);
    }
    token
}

impl RunningNode {
    /// Binds every socket first (so a port conflict fails the start with
    /// nothing half-running), then starts serving.
    pub async fn start(config: Config) -> Result<Self> {
        let mut workers =
            Workers::start(worker_count(config.node.workers)).context("starting the data-plane threads")?;
        if config.node.io == IoMode::IoUring {
            workers = workers.with_rings();
        }
        let upstreams = generation::build_upstreams(&config, None, workers.count()).await?;
        for u in &upstreams {
            u.pool.activate();
        }
        let affinity = Arc::new(AffinityTable::new(
            config.node.id.as_str(),
            generation::sticky_capacity(&config),
        ));
        let mut listeners = Listeners::default();
        let plan = listeners.plan(&config, &upstreams, &affinity, &workers)?;
        let admin_sock = listener::bind(config.node.admin_addr)
            .with_context(|| format!("admin API: cannot listen on {}", config.node.admin_addr))?;
        let admin_addr = admin_sock.local_addr().context("admin socket address")?;
        let admin_token = read_token(&config)?;

        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        let cluster = match &config.cluster {
            Some(c) => {
                Some(Cluster::join(c, &config.node, admin_addr, &generation::fingerprint(&config), &cancel).await?)
            }
            None => None,
        };
        let replication = match (&config.cluster, &cluster) {
            (Some(cc), Some(c)) => match &cc.tls {
                Some(files) => Some(
                    Replication::start(
                        cc.replication_addr,
                        files,
                        Arc::clone(c),
                        config.node.id.as_str(),
                        Arc::clone(&affinity),
                        &cancel,
                    )
                    .context("starting sticky-table replication")?,
                ),
                None => {
                    tracing::warn!("[cluster] has no tls: the sticky table is NOT replicated to peers");
                    None
                }
            },
            _ => None,
        };
        spawn_sweeper(&affinity, &cancel);
        listeners.commit(plan, &cancel, &tracker, &workers);
        let applied = Generation {
            listeners: generation::listener_infos(&config, &listeners.stats()),
            upstreams,
            fingerprint: generation::fingerprint(&config),
            config: Arc::new(config),
        };
        let health = start_health(&applied, &cancel, &tracker);
        let id = applied.config.node.id.clone();
        let shutdown_timeout = applied.config.node.shutdown_timeout.get();
        let tcp_io = if workers.rings().is_some() {
            IoMode::IoUring
        } else {
            IoMode::Epoll
        };
        let state = Arc::new(NodeState {
            id: id.clone(),
            started: Instant::now(),
            tcp_io,
            current: ArcSwap::from_pointee(applied),
            admin_token: ArcSwapOption::new(admin_token),
            cluster,
            affinity,
            replication,
            vips: std::sync::OnceLock::new(),
        });
        if let Some(c) = &state.cluster {
            c.run(Arc::clone(&state));
        }
        // VIPs last: this node claims an address only once it serves it.
        let config = state.current.load_full().config.clone();
        match crate::vip::start(&config, &state).await {
            Ok(vips) => {
                let _ = state.vips.set(vips);
            }
            Err(e) => {
                cancel.cancel();
                if let Some(c) = &state.cluster {
                    c.stop().await;
                }
                return Err(e);
            }
        }
        // The admin API outlives the data plane's drain (operators watch
        // it), so it has its own token and tasks, ended last.
        let admin_cancel = CancellationToken::new();
        tokio::spawn(admin::serve(
            admin_sock,
            Arc::clone(&state),
            TaskTracker::new(),
            admin_cancel.clone(),
        ));
        tracing::info!(node = %id, admin = %admin_addr, "node started");
        Ok(Self {
            state,
            admin_addr,
            cancel,
            admin_cancel,
            tracker,
            shutdown_timeout,
            listeners: Mutex::new(listeners),
            workers,
            health: Mutex::new(health),
            reloading: tokio::sync::Mutex::new(()),
        })
    }

    /// Applies a new validated config. Established connections and requests
    /// in flight continue; the next requests use the new config. Either all
    /// of it applies or, on error, nothing does.
    pub async fn reload(&self, config: Config) -> Result<Changes> {
        let _serial = self.reloading.lock().await;
        let old = self.state.current.load_full();
        for what in restart_only_changes(&old.config, &config) {
            tracing::warn!("reload: {what} changed; that takes effect only after a restart");
        }
        let upstreams = generation::build_upstreams(&config, Some(&old), self.workers.count()).await?;
        let admin_token = read_token(&config)?;
        let mut listeners = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
        let plan = listeners.plan(&config, &upstreams, &self.state.affinity, &self.workers)?;
        // Nothing below can fail.
        for u in &upstreams {
            u.pool.activate();
        }
        self.state
            .affinity
            .set_max_entries(generation::sticky_capacity(&config));
        let changes = listeners.commit(plan, &self.cancel, &self.tracker, &self.workers);

        let applied = Generation {
            listeners: generation::listener_infos(&config, &listeners.stats()),
            upstreams,
            fingerprint: generation::fingerprint(&config),
            config: Arc::new(config),
        };
        drop(listeners);
        let health = start_health(&applied, &self.cancel, &self.tracker);
        let old_health = std::mem::replace(&mut *self.health.lock().unwrap_or_else(|e| e.into_inner()), health);
        old_health.cancel();
        self.state.admin_token.store(admin_token);
        self.state.current.store(Arc::new(applied));
        Ok(changes)
    }

    /// Stops accepting, lets in-flight requests finish up to the configured
    /// shutdown timeout, then returns. Returns whether everything finished.
    pub async fn shutdown(self) -> bool {
        // Backups take the VIPs over (priority 0) while this node still
        // serves what reaches it.
        for v in self.state.vips.get().into_iter().flatten() {
            v.router.shutdown().await;
        }
        // Peers stop counting this node before it stops serving.
        if let Some(c) = &self.state.cluster {
            c.leave().await;
        }
        tracing::info!(timeout = ?self.shutdown_timeout, "shutting down: no new connections, finishing in-flight work");
        self.cancel.cancel();
        self.tracker.close();
        let finished = tokio::time::timeout(self.shutdown_timeout, self.tracker.wait())
            .await
            .is_ok();
        if !finished {
            tracing::warn!(timeout = ?self.shutdown_timeout, "shutdown timeout reached; closing remaining connections");
        }
        if let Some(r) = &self.state.replication {
            r.stop();
        }
        if let Some(c) = &self.state.cluster {
            c.stop().await;
        }
        self.admin_cancel.cancel();
        finished
    }
}

/// Settings a running node cannot change in place.
fn restart_only_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut changed = Vec::new();
    if old.node.id != new.node.id {
        changed.push("node.id");
    }
    if old.node.admin_addr != new.node.admin_addr {
        changed.push("node.admin_addr");
    }
    if old.node.workers != new.node.workers {
        changed.push("node.workers");
    }
    if old.node.io != new.node.io {
        changed.push("node.io");
    }
    if old.node.shutdown_timeout != new.node.shutdown_timeout {
        changed.push("node.shutdown_timeout");
    }
    if old.cluster != new.cluster {
        changed.push("[cluster]");
    }
    if old.vips != new.vips {
        changed.push("[[vip]]");
    }
    changed
}

/// Re-reads `path` and reloads; an invalid config is logged and the old
/// one keeps serving.
async fn reload_from(node: &RunningNode, path: &Path) {
    tracing::info!(config = %path.display(), "SIGHUP: reloading the config");
    let config = match config::load(path) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("reload refused, the running config stays in service:\n{e}");
            return;
        }
    };
    match node.reload(config).await {
        Ok(c) => tracing::info!(
            updated = ?c.updated, started = ?c.started, stopped = ?c.stopped,
            "reload applied"
        ),
        Err(e) => tracing::error!("reload refused, the running config stays in service: {e:#}"),
    }
}

/// Runs a node until SIGTERM or SIGINT, then shuts down gracefully; SIGHUP
/// reloads `path`.
pub async fn run(config: Config, path: PathBuf) -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut hup = signal(SignalKind::hangup()).context("installing SIGHUP handler")?;
    let node = RunningNode::start(config).await?;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => reload_from(&node, &path).await,
        }
    }
    node.shutdown().await;
    Ok(())
}
