//! The node's side of the vip-manager: one VRRP router per `[[vip]]`, fed
//! with the node's health (priority penalty), gossip (split-brain guard)
//! and its sticky table's sync (preemption hold), and their state for
//! status and gossip.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use anyhow::{Context, Result};
use shoal_vip::packet::Checksum;
use shoal_vip::router::{Hooks, Router, VipSpec, VipStatus};
use shoal_vip::state::{Settings, State};

use crate::cluster::keys;
use crate::config::{Config, VipConfig, VrrpChecksum};
use crate::server::NodeState;

pub struct ManagedVip {
    pub config: VipConfig,
    pub router: Router,
}

impl ManagedVip {
    pub fn address(&self) -> String {
        self.config.address.addr.to_string()
    }

    pub fn status(&self) -> VipStatus {
        self.router.status()
    }
}

/// Starts a router per VIP; fails (naming the VIP) without the needed
/// capabilities or interface.
pub async fn start(config: &Config, state: &Arc<NodeState>) -> Result<Vec<ManagedVip>> {
    let mut out = Vec::with_capacity(config.vips.len());
    for v in &config.vips {
        let address = v.address.addr;
        let spec = VipSpec {
            address,
            prefix: v.address.prefix,
            interface: v.interface.clone(),
            vrid: u8::try_from(v.vrid).context("vrid out of range")?,
            priority: u8::try_from(v.priority).context("priority out of range")?,
            settings: Settings {
                advert_interval: v.advert_interval.get(),
                preempt: v.preempt,
                preempt_delay: v.preempt_delay.get(),
                split_brain_hold: v.split_brain_hold.get(),
            },
            unicast_peers: v.unicast_peers.clone(),
            garp_repeat: v.garp_repeat,
            garp_refresh: v.garp_refresh.map(|d| d.get()),
            checksum: match v.checksum {
                VrrpChecksum::PseudoHeader => Checksum::PseudoHeader,
                VrrpChecksum::VrrpOnly => Checksum::VrrpOnly,
            },
        };
        let hooks = Arc::new(NodeHooks {
            state: Arc::downgrade(state),
            address: address.to_string(),
            pools: vip_pools(config, address),
            penalty: u8::try_from(v.health_penalty).unwrap_or(u8::MAX),
            preempt_ready: AtomicBool::new(false),
        });
        let router = Router::start(spec, hooks)
            .await
            .with_context(|| format!("VIP {} on {} (vrid {})", v.address, v.interface, v.vrid))?;
        tracing::info!(vip = %v.address, interface = %v.interface, vrid = v.vrid, priority = v.priority, "VRRP router started");
        out.push(ManagedVip {
            config: v.clone(),
            router,
        });
    }
    Ok(out)
}

/// The pools behind the listeners that serve a VIP: bound to it or to
/// the unspecified address. If none is, all pools.
fn vip_pools(config: &Config, vip: IpAddr) -> BTreeSet<String> {
    let mut pools = BTreeSet::new();
    for l in &config.listeners {
        let ip = l.bind.ip();
        if ip == vip || ip.is_unspecified() {
            pools.insert(l.pool.clone());
            pools.extend(l.routes.iter().map(|r| r.pool.clone()));
        }
    }
    if pools.is_empty() {
        pools.extend(config.pools.iter().map(|p| p.name.clone()));
    }
    pools
}

struct NodeHooks {
    state: Weak<NodeState>,
    address: String,
    pools: BTreeSet<String>,
    penalty: u8,
    /// The sync gate opened (it stays open: a running node's table is
    /// kept current by live replication).
    preempt_ready: AtomicBool,
}

/// Longest a started node holds off preempting while its sticky table is
/// not synced from its peers. The live master serves meanwhile, so holding
/// costs nothing but the wait; past it, a peer that never syncs (a broken
/// replication link) must not keep the preferred node off its VIP forever.
pub const PREEMPT_SYNC_WAIT: Duration = Duration::from_secs(10);

/// Whether a node may take a VIP from a live lower-priority master, as far
/// as its sticky table is concerned.
#[derive(Debug, PartialEq, Eq)]
enum SyncGate {
    /// Not yet: some live peer has not sent its snapshot.
    Hold,
    /// Every live peer (at least one) has sent its snapshot.
    Synced,
    /// `PREEMPT_SYNC_WAIT` passed without a snapshot from these peers.
    GaveUp { missing: Vec<String> },
}

/// `live` are the peers gossip shows alive with a replication address. A
/// node that knows no live peer yet holds too: right after a start gossip
/// has not found them, and a live lower master is a peer to sync from.
fn sync_gate(uptime: Duration, live: &[&str], synced: impl Fn(&str) -> bool) -> SyncGate {
    let missing: Vec<String> = live.iter().filter(|p| !synced(p)).map(|p| p.to_string()).collect();
    if !live.is_empty() && missing.is_empty() {
        SyncGate::Synced
    } else if uptime >= PREEMPT_SYNC_WAIT {
        SyncGate::GaveUp { missing }
    } else {
        SyncGate::Hold
    }
}

impl Hooks for NodeHooks {
    fn priority(&self, configured: u8) -> u8 {
        let Some(state) = self.state.upgrade() else {
            return configured;
        };
        let current = state.current.load();
        let healthy = current
            .pools()
            .filter(|p| self.pools.contains(&*p.name))
            .any(|p| p.backends().iter().any(|b| b.is_healthy()));
        if healthy {
            configured
        } else {
            configured.saturating_sub(self.penalty).max(1)
        }
    }

    /// A node that has just started preempts only once its sticky table
    /// holds what its peers' do, so taking the VIP back moves no session.
    fn may_preempt(&self) -> bool {
        if self.preempt_ready.load(Ordering::Relaxed) {
            return true;
        }
        let Some(state) = self.state.upgrade() else {
            return true;
        };
        let (Some(cluster), Some(replication)) = (&state.cluster, &state.replication) else {
            return self.open_gate();
        };
        let current = state.current.load();
        let uses_table = current
            .pools()
            .filter(|p| self.pools.contains(&*p.name))
            .any(|p| p.sticky.as_ref().is_some_and(|s| s.uses_table()));
        if !uses_table {
            return self.open_gate();
        }
        let view = cluster.view();
        let live: Vec<&str> = view
            .peers
            .iter()
            .filter(|p| p.alive && !p.left && p.replication_addr.is_some() && p.id != state.id.as_str())
            .map(|p| p.id.as_str())
            .collect();
        match sync_gate(state.started.elapsed(), &live, |p| replication.has_synced_from(p)) {
            SyncGate::Hold => false,
            SyncGate::Synced => {
                tracing::info!(vip = %self.address, peers = ?live, "sticky table synced from every live peer: this node may preempt");
                self.open_gate()
            }
            SyncGate::GaveUp { missing } if missing.is_empty() => {
                tracing::info!(vip = %self.address, wait = ?PREEMPT_SYNC_WAIT, "no live peer to sync the sticky table from: this node may preempt");
                self.open_gate()
            }
            SyncGate::GaveUp { missing } => {
                tracing::warn!(
                    vip = %self.address, ?missing, wait = ?PREEMPT_SYNC_WAIT,
                    "no sticky-table snapshot from these peers: this node may preempt anyway, and sessions only they know can move"
                );
                self.open_gate()
            }
        }
    }

    fn master_alive_in_gossip(&self) -> bool {
        let Some(cluster) = self.state.upgrade().and_then(|s| s.cluster.clone()) else {
            return false;
        };
        let view = cluster.view();
        // Fresh: heard within two gossip rounds. A master that died
        // stops being fresh about as fast as its adverts stop counting.
        let fresh = cluster.interval() * 2;
        let age = view.built_at.map_or(Duration::MAX, |t| t.elapsed());
        view.peers.iter().any(|p| {
            p.alive
                && p.last_seen.saturating_add(age) < fresh
                && p.vips
                    .get(&self.address)
                    .is_some_and(|v| keys::parse_vip_value(v).is_some_and(|(s, _)| s == "master"))
        })
    }
}

impl NodeHooks {
    fn open_gate(&self) -> bool {
        self.preempt_ready.store(true, Ordering::Relaxed);
        true
    }
}

/// The node id of a VIP's master: this node, or the live peer that says
/// it is master in gossip; else its address, if known.
pub fn master_name(state: &NodeState, vip: &ManagedVip, status: &VipStatus) -> Option<String> {
    if status.state == State::Master {
        return Some(state.id.to_string());
    }
    let address = vip.address();
    if let Some(c) = &state.cluster {
        let view = c.view();
        if let Some(p) = view.peers.iter().find(|p| {
            p.alive
                && p.vips
                    .get(&address)
                    .is_some_and(|v| keys::parse_vip_value(v).is_some_and(|(s, _)| s == "master"))
        }) {
            return Some(p.id.clone());
        }
    }
    status.master_ip.map(|ip| ip.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sync_gate_opens_once_every_live_peer_synced_or_the_wait_is_over() {
        let early = Duration::from_millis(300);
        let synced = |p: &str| p == "lb2";
        // Gossip has found no peer yet: hold.
        assert_eq!(sync_gate(early, &[], synced), SyncGate::Hold);
        // lb3 has not sent its snapshot: hold.
        assert_eq!(sync_gate(early, &["lb2", "lb3"], synced), SyncGate::Hold);
        assert_eq!(sync_gate(early, &["lb2"], synced), SyncGate::Synced);
        // Never longer than the wait.
        assert_eq!(
            sync_gate(PREEMPT_SYNC_WAIT, &["lb2", "lb3"], synced),
            SyncGate::GaveUp {
                missing: vec!["lb3".into()]
            }
        );
        assert_eq!(
            sync_gate(PREEMPT_SYNC_WAIT, &[], synced),
            SyncGate::GaveUp { missing: vec![] }
        );
        assert_eq!(
            sync_gate(PREEMPT_SYNC_WAIT - Duration::from_millis(1), &["lb3"], synced),
            SyncGate::Hold
        );
    }
}
