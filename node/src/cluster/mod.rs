//! Cluster membership over chitchat gossip. Each node publishes its admin
//! and replication addresses, its config fingerprint and, per backend, its
//! health verdict and active connections; every round it reads what its
//! peers publish into a [`ClusterView`] and feeds live peers' connection
//! counts to its own balancers.

pub mod auth;
pub mod keys;
pub mod view;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use arc_swap::ArcSwap;
use chitchat::transport::UdpTransport;
use chitchat::{ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig, ProtocolVersion, spawn_chitchat};
use tokio_util::sync::CancellationToken;

pub use auth::{GossipKey, GossipStats};
pub use view::{BackendCluster, ClusterView, PeerView};

use crate::config::{ClusterConfig, NodeConfig};
use crate::server::{Generation, NodeState};

pub struct Cluster {
    pub name: String,
    handle: ChitchatHandle,
    view: ArcSwap<ClusterView>,
    pub stats: Arc<GossipStats>,
    interval: Duration,
    cancel: CancellationToken,
}

/// The admin address peers are told (the dashboard and `shoal status`
/// show it): an unspecified bind (`0.0.0.0:9901`) is useless to them, so
/// it is published with the gossip address's IP, which they do reach.
fn advertised_admin(admin: SocketAddr, gossip: SocketAddr) -> SocketAddr {
    if admin.ip().is_unspecified() {
        SocketAddr::new(gossip.ip(), admin.port())
    } else {
        admin
    }
}

impl Cluster {
    /// Joins the cluster: binds the gossip address and starts gossiping.
    /// Publishing and reading backend state starts with [`Cluster::run`].
    pub async fn join(
        cfg: &ClusterConfig,
        node: &NodeConfig,
        admin_addr: SocketAddr,
        fingerprint: &str,
        parent: &CancellationToken,
    ) -> Result<Arc<Self>> {
        // A fresh generation per start: peers tell a restarted node from
        // its previous life.
        let generation = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let id = ChitchatId::new(node.id.as_str(), generation, cfg.gossip_addr);
        let interval = cfg.gossip_interval.get();
        let config = ChitchatConfig {
            chitchat_id: id,
            cluster_id: cfg.name.clone(),
            gossip_interval: interval,
            listen_addr: cfg.gossip_addr,
            seed_nodes: cfg.seeds.iter().map(ToString::to_string).collect(),
            failure_detector_config: FailureDetectorConfig {
                // Detection follows the gossip rate: with 100 ms rounds a
                // killed node is dead in well under 2 s.
                initial_interval: interval,
                max_interval: interval * 20,
                // Dead generations (a crash-looping node makes many) are
                // forgotten after ten minutes.
                dead_node_grace_period: Duration::from_secs(600),
                ..FailureDetectorConfig::default()
            },
            marked_for_deletion_grace_period: Duration::from_secs(600),
            catchup_callback: None,
            extra_liveness_predicate: Some(Box::new(|s| s.get(keys::LEAVING).is_none())),
            protocol_version: ProtocolVersion::V0,
        };
        let initial = vec![
            (
                keys::ADMIN.to_string(),
                advertised_admin(admin_addr, cfg.gossip_addr).to_string(),
            ),
            (keys::REPLICATION.to_string(), cfg.replication_addr.to_string()),
            // From the first message, so peers never see this node without
            // one (and flag it as different).
            (keys::FINGERPRINT.to_string(), fingerprint.to_string()),
        ];
        let stats = Arc::new(GossipStats::default());
        let handle = match &cfg.gossip_key_file {
            Some(path) => {
                let key = GossipKey::load(path)?;
                let transport = auth::AuthTransport {
                    key,
                    stats: Arc::clone(&stats),
                };
                spawn_chitchat(config, initial, &transport).await
            }
            None => {
                tracing::warn!("[cluster] has no gossip_key_file: gossip is NOT authenticated");
                spawn_chitchat(config, initial, &UdpTransport).await
            }
        }
        .with_context(|| format!("joining the cluster on {}", cfg.gossip_addr))?;
        let cluster = Arc::new(Self {
            name: cfg.name.clone(),
            handle,
            view: ArcSwap::from_pointee(ClusterView::default()),
            stats,
            interval,
            cancel: parent.child_token(),
        });
        tracing::info!(cluster = %cfg.name, gossip = %cfg.gossip_addr, seeds = ?cfg.seeds, "joined the cluster");
        Ok(cluster)
    }

    /// Starts the rounds that publish `state`'s backends and read peers'.
    pub fn run(self: &Arc<Self>, state: Arc<NodeState>) {
        tokio::spawn(Arc::clone(self).rounds(state));
    }

    pub fn view(&self) -> Arc<ClusterView> {
        self.view.load_full()
    }

    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// Announces a graceful leave and waits two gossip rounds for peers to
    /// hear it, so they stop counting this node at once.
    pub async fn leave(&self) {
        self.handle
            .with_chitchat(|c| c.self_node_state().set(keys::LEAVING, "1"))
            .await;
        tokio::time::sleep(self.interval * 3).await;
        self.cancel.cancel();
    }

    pub async fn stop(&self) {
        self.cancel.cancel();
        let _ = self.handle.initiate_shutdown();
    }

    async fn rounds(self: Arc<Self>, state: Arc<NodeState>) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut published: HashMap<String, String> = HashMap::new();
        let mut last_seen = view::LastSeen::default();
        let mut members = Members::default();
        let mut cache = SnapshotCache::new();
        loop {
            tokio::select! {
                () = self.cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            let generation = state.current.load_full();
            let wanted = local_values(&generation, &state);
            // Peers' copies keep only the keys this node publishes too: when
            // that set changes (the VIPs start after the first rounds, a
            // reload adds a backend), copy every peer again, or a quiet
            // peer's VIP state would stay filtered out until it changes.
            if !same_keys(&wanted, &published) {
                cache.clear();
            }
            let snapshots = self
                .handle
                .with_chitchat(|c| {
                    let me = c.self_node_state();
                    for (k, v) in &wanted {
                        if published.get(k) != Some(v) {
                            me.set(k, v);
                        }
                    }
                    for k in published.keys().filter(|k| !wanted.contains_key(*k)) {
                        me.delete(k);
                    }
                    snapshot(c, &wanted, &mut cache)
                })
                .await;
            published = wanted;
            let view = view::build(&snapshots, &mut last_seen, Instant::now());
            apply_loads(&generation, &view);
            members.log_changes(&view, &generation.fingerprint);
            self.view.store(Arc::new(view));
        }
    }
}

fn same_keys(a: &HashMap<String, String>, b: &HashMap<String, String>) -> bool {
    a.len() == b.len() && a.keys().all(|k| b.contains_key(k))
}

/// What this node publishes, from the current generation and its VIPs.
fn local_values(generation: &Generation, state: &NodeState) -> HashMap<String, String> {
    let mut values = HashMap::new();
    for v in state.vips.get().into_iter().flatten() {
        let s = v.status();
        values.insert(
            keys::vip_key(&v.address()),
            keys::vip_value(s.state.as_str(), s.priority),
        );
    }
    values.insert(keys::FINGERPRINT.to_string(), generation.fingerprint.clone());
    for pool in generation.pools() {
        for b in pool.backends() {
            values.insert(
                keys::backend_key(&pool.name, &b.name),
                keys::backend_value(b.is_healthy(), b.active()),
            );
        }
    }
    values
}

/// Peers' values as last copied, by node generation, with the version
/// they were copied at: a node whose state did not change is not copied
/// again, so a round under the chitchat lock costs little.
type SnapshotCache = HashMap<ChitchatId, (u64, Arc<HashMap<String, String>>)>;

/// One snapshot per node id (its live generation over a dead one, else the
/// newest), keeping only the keys this node uses: addresses, fingerprint,
/// leave flag, and its own backends' keys. A peer publishing anything else
/// costs nothing here.
fn snapshot(
    c: &chitchat::Chitchat,
    local: &HashMap<String, String>,
    cache: &mut SnapshotCache,
) -> Vec<view::PeerSnapshot> {
    let me = c.self_chitchat_id();
    let live: HashSet<&ChitchatId> = c.live_nodes().collect();
    let mut chosen: HashMap<&str, &ChitchatId> = HashMap::new();
    for id in c.node_states().keys().filter(|id| *id != me) {
        let better = match chosen.get(&*id.node_id) {
            None => true,
            Some(prev) => view::prefer(
                live.contains(id),
                id.generation_id,
                live.contains(prev),
                prev.generation_id,
            ),
        };
        if better {
            chosen.insert(&id.node_id, id);
        }
    }
    let wanted = |k: &str| {
        matches!(k, keys::ADMIN | keys::REPLICATION | keys::FINGERPRINT | keys::LEAVING) || local.contains_key(k)
    };
    let mut out = Vec::with_capacity(chosen.len());
    for id in chosen.values() {
        let Some(st) = c.node_state(id) else { continue };
        let version = st.max_version();
        let values = match cache.get(*id) {
            Some((v, values)) if *v == version => Arc::clone(values),
            _ => {
                let fresh: HashMap<String, String> = st
                    .key_values()
                    .filter(|(k, _)| wanted(k))
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect();
                let fresh = Arc::new(fresh);
                cache.insert((*id).clone(), (version, Arc::clone(&fresh)));
                fresh
            }
        };
        out.push(view::PeerSnapshot {
            id: id.node_id.to_string(),
            generation: id.generation_id,
            gossip_addr: id.gossip_advertise_addr,
            live: live.contains(*id),
            heartbeat: u64::from(st.heartbeat()),
            values,
        });
    }
    cache.retain(|id, _| chosen.values().any(|c| *c == id));
    out
}

/// Live peers' connections feed this node's load-aware balancers.
fn apply_loads(generation: &Generation, view: &ClusterView) {
    for pool in generation.pools() {
        for b in pool.backends() {
            let peers = view.backend(&pool.name, &b.name).map_or(0, |c| c.peer_connections);
            b.set_cluster_load(peers);
        }
    }
}

/// Remembers membership to log joins, deaths and config disagreements once
/// each.
#[derive(Default)]
struct Members {
    alive: HashMap<String, bool>,
    warned_fingerprints: HashSet<(String, String)>,
}

impl Members {
    fn log_changes(&mut self, view: &ClusterView, own_fingerprint: &str) {
        for p in &view.peers {
            let was = self.alive.insert(p.id.clone(), p.alive);
            match (was, p.alive) {
                (Some(true), true) | (Some(false), false) => {}
                (_, true) => tracing::info!(peer = %p.id, gossip = %p.gossip_addr, "peer is alive"),
                (_, false) if p.left => tracing::info!(peer = %p.id, "peer left the cluster"),
                (Some(true), false) => tracing::warn!(peer = %p.id, "peer is DEAD"),
                (None, false) => {}
            }
            if let Some(fp) = &p.fingerprint
                && p.alive
                && fp != own_fingerprint
                && self.warned_fingerprints.insert((p.id.clone(), fp.clone()))
            {
                tracing::warn!(
                    peer = %p.id, theirs = %fp, ours = own_fingerprint,
                    "peer runs different pools or backends: the cluster view is not uniform"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::{advertised_admin, same_keys};

    #[test]
    fn a_new_or_dropped_key_changes_the_key_set_but_a_new_value_does_not() {
        let map = |kv: &[(&str, &str)]| -> HashMap<String, String> {
            kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
        };
        let before = map(&[("fp", "1"), ("b:web:b1", "up:0")]);
        assert!(same_keys(&before, &map(&[("fp", "1"), ("b:web:b1", "up:7")])));
        assert!(!same_keys(
            &before,
            &map(&[("fp", "1"), ("b:web:b1", "up:0"), ("v:10.0.0.100", "master:150")])
        ));
        assert!(!same_keys(&before, &map(&[("fp", "1"), ("b:web:b2", "up:0")])));
        assert!(!same_keys(&before, &map(&[("fp", "1")])));
    }

    #[test]
    fn an_unspecified_admin_bind_is_published_at_the_gossip_ip() -> Result<(), std::net::AddrParseError> {
        let gossip = "172.31.77.11:7946".parse()?;
        let lo = "127.0.0.1:9901".parse()?;
        assert_eq!(
            advertised_admin("0.0.0.0:9901".parse()?, gossip).to_string(),
            "172.31.77.11:9901"
        );
        assert_eq!(advertised_admin(lo, gossip), lo);
        Ok(())
    }
}
