//! The `/status` document: the node as the design's status contract
//! describes it. Field names are a contract with tests and operators.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use serde::Serialize;

use crate::balance::Candidate;
use crate::cluster::BackendCluster;
use crate::config::IoMode;
use crate::server::NodeState;

#[derive(Debug, Serialize)]
pub struct Status {
    pub node: NodeInfo,
    /// Absent for a standalone node.
    pub cluster: Option<ClusterInfo>,
    pub peers: Vec<Peer>,
    pub vips: Vec<Vip>,
    pub listeners: Vec<Listener>,
    pub pools: Vec<Pool>,
    pub affinity: Affinity,
}

#[derive(Debug, Serialize)]
pub struct NodeInfo {
    pub id: String,
    pub version: &'static str,
    pub uptime_s: u64,
    /// How TCP and plain-text HTTP listeners wait for I/O: "epoll" or
    /// "io_uring".
    pub tcp_io: IoMode,
}

#[derive(Debug, Serialize)]
pub struct Peer {
    pub id: String,
    pub state: &'static str,
    pub gossip_addr: String,
    pub last_seen_ms: u64,
    /// Announced a graceful leave (state is then "dead").
    pub left: bool,
    pub admin_addr: Option<String>,
    pub replication_addr: Option<String>,
    pub config_fingerprint: Option<String>,
    /// Whether its pools and backends are the same as this node's.
    pub config_matches: bool,
}

#[derive(Debug, Serialize)]
pub struct ClusterInfo {
    pub name: String,
    pub config_fingerprint: String,
    pub peers_alive: usize,
    pub gossip_sent: u64,
    pub gossip_received: u64,
    /// Datagrams dropped for a missing or wrong authentication tag.
    pub gossip_rejected: u64,
    /// Things an operator should look at.
    pub warnings: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct Vip {
    /// As configured (with its prefix).
    pub address: String,
    pub interface: String,
    pub vrid: u16,
    pub state: &'static str,
    /// Advertised now: configured, less `health_penalty` while unhealthy.
    pub priority: u16,
    pub configured_priority: u16,
    /// The master's node id (this node, or the peer that says so in
    /// gossip), else its address.
    pub master: Option<String>,
    pub master_ip: Option<String>,
    pub transitions: u64,
    pub since_change_ms: Option<u64>,
    pub adverts_sent: u64,
    pub adverts_received: u64,
    pub adverts_rejected: u64,
    pub guard_holds: u64,
    /// This node holds off taking the VIP from a lower-priority master
    /// until its sticky table is synced (after a start).
    pub preemption_held: bool,
    pub last_error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Listener {
    pub name: String,
    pub bind: String,
    pub protocol: String,
    pub tls: bool,
    pub pool: String,
    /// Routing rules before the default pool.
    pub routes: usize,
    pub active_connections: u64,
    pub accepted_connections: u64,
    pub requests: u64,
    pub rate_limited: u64,
    /// Closed unserved at `max_connections`.
    pub refused_connections: u64,
    /// Connections served on io_uring (`[node] io = "io_uring"`): TCP ones,
    /// and HTTP ones once they speak, unless they asked to close.
    pub ring_connections: u64,
    pub responses: BTreeMap<&'static str, u64>,
}

#[derive(Debug, Serialize)]
pub struct Pool {
    pub name: String,
    pub algorithm: &'static str,
    pub retries_granted: u64,
    pub retries_denied: u64,
    pub backends: Vec<Backend>,
}

#[derive(Debug, Serialize)]
pub struct Backend {
    pub name: String,
    pub address: String,
    pub weight: u32,
    /// Weight in effect now: below `weight` while slow-starting.
    pub effective_weight: f64,
    pub backup: bool,
    pub healthy: bool,
    /// Taken out by passive health (outlier detection) for a while.
    pub ejected: bool,
    pub usable: bool,
    pub state: &'static str,
    pub active_connections: u64,
    /// Requests or connections waiting for a slot (circuit breaker).
    pub pending: u32,
    pub cluster_connections: u64,
    pub health_by_node: BTreeMap<String, bool>,
    pub requests: u64,
    pub connect_failures: u64,
    pub failures: u64,
    pub ejections: u64,
    /// Refused at the backend's connection limits.
    pub rejected: u64,
    pub latency_ewma_ms: f64,
}

#[derive(Debug, Serialize)]
pub struct Affinity {
    pub entries: u64,
    /// Whether bindings replicate to peers (a `[cluster]` with `tls`).
    pub replicated: bool,
    pub entries_sent: u64,
    pub entries_received: u64,
    /// Remote entries applied (newer than ours) and ignored (older,
    /// expired, or more than a minute ahead of this clock).
    pub entries_applied: u64,
    pub entries_ignored: u64,
    pub evicted: u64,
    /// Replication connections or frames refused.
    pub rejected: u64,
    pub resyncs: u64,
    /// Upper bounds of the buckets holding the median and 99th percentile
    /// of live replication delay (write on a peer to applied here).
    pub delay_p50_ms: Option<f64>,
    pub delay_p99_ms: Option<f64>,
    /// This node's push to each peer.
    pub peers: Vec<AffinityPeer>,
}

#[derive(Debug, Serialize)]
pub struct AffinityPeer {
    pub id: String,
    pub connected: bool,
    /// Age of the oldest batch the peer has not acknowledged.
    pub lag_ms: u64,
    /// Since the last full snapshot was sent; absent if never.
    pub last_full_sync_ms: Option<u64>,
    pub last_error: Option<String>,
}

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

pub fn build(state: &NodeState) -> Status {
    let id = state.id.to_string();
    let current = state.current.load_full();
    let view = state.cluster.as_ref().map(|c| c.view()).unwrap_or_default();
    Status {
        node: NodeInfo {
            id: id.clone(),
            version: env!("CARGO_PKG_VERSION"),
            uptime_s: state.started.elapsed().as_secs(),
            tcp_io: state.tcp_io,
        },
        cluster: state.cluster.as_ref().map(|c| ClusterInfo {
            name: c.name.clone(),
            config_fingerprint: current.fingerprint.clone(),
            peers_alive: view.alive_peers(),
            gossip_sent: c.stats.sent.load(Ordering::Relaxed),
            gossip_received: c.stats.received.load(Ordering::Relaxed),
            gossip_rejected: c.stats.rejected.load(Ordering::Relaxed),
            warnings: view
                .peers
                .iter()
                .filter(|p| p.alive && p.fingerprint.as_deref().is_some_and(|f| f != current.fingerprint))
                .map(|p| {
                    format!(
                        "{} runs different pools or backends (config fingerprint {})",
                        p.id,
                        p.fingerprint.as_deref().unwrap_or("?")
                    )
                })
                .collect(),
        }),
        peers: view
            .peers
            .iter()
            .map(|p| Peer {
                id: p.id.clone(),
                state: if p.alive { "alive" } else { "dead" },
                gossip_addr: p.gossip_addr.to_string(),
                last_seen_ms: p.last_seen.as_millis() as u64,
                left: p.left,
                admin_addr: p.admin_addr.clone(),
                replication_addr: p.replication_addr.clone(),
                config_fingerprint: p.fingerprint.clone(),
                config_matches: p.fingerprint.as_deref() == Some(current.fingerprint.as_str()),
            })
            .collect(),
        vips: vips(state),
        listeners: current
            .listeners
            .iter()
            .map(|l| (l, l.stats.totals()))
            .map(|(l, t)| Listener {
                name: l.name.clone(),
                bind: l.bind.to_string(),
                protocol: l.protocol.to_string(),
                tls: l.tls,
                pool: l.pool.clone(),
                routes: l.routes,
                active_connections: t.active,
                accepted_connections: t.accepted,
                requests: t.requests,
                rate_limited: t.rate_limited,
                refused_connections: t.refused,
                ring_connections: t.on_ring,
                responses: CLASSES.iter().zip(t.responses).map(|(c, n)| (*c, n)).collect(),
            })
            .collect(),
        pools: current
            .pools()
            .map(|p| Pool {
                name: p.name.to_string(),
                algorithm: p.algorithm.as_str(),
                retries_granted: p.budget.granted.load(Ordering::Relaxed),
                retries_denied: p.budget.denied.load(Ordering::Relaxed),
                backends: p
                    .backends()
                    .iter()
                    .map(|b| backend(&id, b, view.backend(&p.name, &b.name)))
                    .collect(),
            })
            .collect(),
        affinity: affinity(state),
    }
}

/// One backend as the status (and the admin API) show it.
/// One backend as the status (and the admin API) show it; `peers` is what
/// live peers report about it.
pub fn backend(node: &str, b: &crate::pool::Backend, peers: Option<&BackendCluster>) -> Backend {
    let mut health_by_node = peers.map(|p| p.health_by_node.clone()).unwrap_or_default();
    health_by_node.insert(node.to_string(), b.is_healthy());
    Backend {
        name: b.name.to_string(),
        address: b.configured.clone(),
        weight: b.configured_weight(),
        effective_weight: f64::from(b.effective_weight()) / f64::from(crate::pool::WEIGHT_SCALE),
        backup: b.is_backup(),
        healthy: b.is_healthy(),
        ejected: b.is_ejected(),
        usable: b.usable(),
        state: b.admin_state().as_str(),
        active_connections: b.active(),
        pending: b.pending(),
        cluster_connections: b.active().saturating_add(peers.map_or(0, |p| p.peer_connections)),
        health_by_node,
        requests: b.sent(),
        connect_failures: b.counters.connect_failures.load(Ordering::Relaxed),
        failures: b.counters.failures.load(Ordering::Relaxed),
        ejections: b.counters.ejections.load(Ordering::Relaxed),
        rejected: b.counters.rejected.load(Ordering::Relaxed),
        latency_ewma_ms: (b.latency_ewma_us() / 10.0).round() / 100.0,
    }
}

fn affinity(state: &NodeState) -> Affinity {
    let t = &state.affinity;
    let r = state.replication.as_deref();
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let mut peers: Vec<AffinityPeer> = r
        .map(|r| r.links())
        .unwrap_or_default()
        .into_iter()
        .map(|(id, l)| AffinityPeer {
            id,
            connected: l.connected,
            lag_ms: l.lag.as_millis() as u64,
            last_full_sync_ms: l.last_full_sync.map(|at| at.elapsed().as_millis() as u64),
            last_error: l.last_error,
        })
        .collect();
    peers.sort_by(|a, b| a.id.cmp(&b.id));
    // One snapshot, so that both quantiles describe the same moment.
    let delay = r.map(|r| r.stats.delay.counts());
    Affinity {
        entries: t.len() as u64,
        replicated: r.is_some(),
        entries_sent: r.map_or(0, |r| load(&r.stats.entries_sent)),
        entries_received: r.map_or(0, |r| load(&r.stats.entries_received)),
        entries_applied: load(&t.stats.applied),
        entries_ignored: load(&t.stats.ignored),
        evicted: load(&t.stats.evicted),
        rejected: r.map_or(0, |r| load(&r.stats.rejected)),
        resyncs: r.map_or(0, |r| load(&r.stats.resyncs)),
        delay_p50_ms: delay
            .as_ref()
            .and_then(|d| d.quantile_upper_bound(0.5))
            .map(|s| s * 1000.0),
        delay_p99_ms: delay
            .as_ref()
            .and_then(|d| d.quantile_upper_bound(0.99))
            .map(|s| s * 1000.0),
        peers,
    }
}

fn vips(state: &NodeState) -> Vec<Vip> {
    state
        .vips
        .get()
        .into_iter()
        .flatten()
        .map(|v| {
            let s = v.status();
            Vip {
                address: v.config.address.to_string(),
                interface: v.config.interface.clone(),
                vrid: v.config.vrid,
                state: s.state.as_str(),
                priority: u16::from(s.priority),
                configured_priority: v.config.priority,
                master: crate::vip::master_name(state, v, &s),
                master_ip: s.master_ip.map(|ip| ip.to_string()),
                transitions: s.transitions,
                since_change_ms: s.since_change.map(|d| d.as_millis() as u64),
                adverts_sent: s.adverts_sent,
                adverts_received: s.adverts_received,
                adverts_rejected: s.adverts_rejected,
                guard_holds: s.guard_holds,
                preemption_held: s.preemption_held,
                last_error: s.last_error,
            }
        })
        .collect()
}
