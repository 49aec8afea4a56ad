//! The node's side of the vip-manager: one VRRP router per `[[vip]]`, fed
//! with the node's health (priority penalty) and gossip (split-brain
//! guard), and their state for status and gossip.

use std::collections::BTreeSet;
use std::net::IpAddr;
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
