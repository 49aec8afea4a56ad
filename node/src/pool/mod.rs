//! Pools of backends: their live state and the selection entry point.

mod backend;
mod ewma;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub use backend::{AdminState, Backend, BackendCounters, InFlight};

use crate::balance::{Balancer, Member, PickCtx};
use crate::config::{Algorithm, HashKey, HealthConfig, PoolConfig};

/// Backends chosen among by one balancer: the primaries, or the backups.
struct Group {
    members: Vec<Arc<Backend>>,
    balancer: Balancer,
}

impl Group {
    fn new(algorithm: Algorithm, members: Vec<Arc<Backend>>) -> Self {
        let m: Vec<Member<'_>> = members
            .iter()
            .map(|b| Member {
                name: &b.name,
                weight: b.weight,
            })
            .collect();
        let balancer = Balancer::new(algorithm, &m);
        Self { members, balancer }
    }

    fn pick(&self, ctx: &mut PickCtx) -> Option<&Arc<Backend>> {
        self.balancer.pick(&self.members, ctx).map(|i| &self.members[i])
    }
}

pub struct Pool {
    pub name: Arc<str>,
    pub algorithm: Algorithm,
    pub hash_key: HashKey,
    pub retries: u32,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    pub keepalive_timeout: Duration,
    pub health: Option<HealthConfig>,
    backends: Vec<Arc<Backend>>,
    primary: Group,
    backup: Group,
}

impl Pool {
    /// Builds a pool from its config and the resolved address of each
    /// backend (same order as `cfg.backends`).
    pub fn new(cfg: &PoolConfig, addrs: &[SocketAddr]) -> Self {
        let backends: Vec<Arc<Backend>> = cfg
            .backends
            .iter()
            .zip(addrs)
            .enumerate()
            .map(|(slot, (b, addr))| {
                Arc::new(Backend::new(
                    &b.name,
                    slot,
                    b.address.to_string(),
                    *addr,
                    b.weight,
                    b.backup,
                ))
            })
            .collect();
        let (backup, primary): (Vec<_>, Vec<_>) = backends.iter().cloned().partition(|b| b.backup);
        Self {
            name: Arc::from(cfg.name.as_str()),
            algorithm: cfg.algorithm,
            hash_key: cfg.hash_key.clone(),
            retries: cfg.retries,
            connect_timeout: cfg.connect_timeout.get(),
            response_timeout: cfg.response_timeout.get(),
            keepalive_timeout: cfg.keepalive_timeout.get(),
            health: cfg.health.clone(),
            primary: Group::new(cfg.algorithm, primary),
            backup: Group::new(cfg.algorithm, backup),
            backends,
        }
    }

    pub fn backends(&self) -> &[Arc<Backend>] {
        &self.backends
    }

    pub fn backend(&self, name: &str) -> Option<&Arc<Backend>> {
        self.backends.iter().find(|b| &*b.name == name)
    }

    /// Whether picks need a request hash key.
    pub fn needs_hash(&self) -> bool {
        self.algorithm.uses_hash_key()
    }

    /// Chooses a backend: primaries first, backups only when no primary is
    /// usable (or all were excluded by earlier attempts).
    pub fn select(&self, ctx: &mut PickCtx) -> Option<&Arc<Backend>> {
        self.primary.pick(ctx).or_else(|| self.backup.pick(ctx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{BackendConfig, HostPort};

    fn pool_cfg(backends: &[(&str, bool)]) -> (PoolConfig, Vec<SocketAddr>) {
        let text = format!(
            "name = \"p\"\n{}",
            backends
                .iter()
                .enumerate()
                .map(|(i, (n, backup))| format!(
                    "[[backend]]\nname = \"{n}\"\naddress = \"127.0.0.1:{}\"\nbackup = {backup}\n",
                    1000 + i
                ))
                .collect::<String>()
        );
        let cfg: PoolConfig = toml::from_str(&text).unwrap_or_else(|e| panic!("{e}"));
        let addrs = cfg
            .backends
            .iter()
            .map(|b: &BackendConfig| match &b.address {
                HostPort::Ip(a) => *a,
                HostPort::Name { .. } => SocketAddr::from(([127, 0, 0, 1], 1)),
            })
            .collect();
        (cfg, addrs)
    }

    #[test]
    fn backups_serve_only_when_no_primary_is_usable() {
        let (cfg, addrs) = pool_cfg(&[("a", false), ("b", false), ("spare", true)]);
        let pool = Pool::new(&cfg, &addrs);
        let pick = |pool: &Pool| pool.select(&mut PickCtx::new(None)).map(|b| b.name.to_string());
        for _ in 0..10 {
            assert_ne!(pick(&pool).as_deref(), Some("spare"));
        }
        pool.backends()[0].set_healthy(false);
        assert_eq!(pick(&pool).as_deref(), Some("b"));
        pool.backends()[1].set_admin_state(AdminState::Drain);
        assert_eq!(pick(&pool).as_deref(), Some("spare"));
        pool.backends()[2].set_admin_state(AdminState::Maint);
        assert_eq!(pick(&pool), None);
    }

    #[test]
    fn in_flight_guard_counts_until_dropped() {
        let (cfg, addrs) = pool_cfg(&[("a", false)]);
        let pool = Pool::new(&cfg, &addrs);
        let b = &pool.backends()[0];
        let g1 = b.begin();
        let g2 = b.begin();
        assert_eq!(b.active(), 2);
        drop(g1);
        assert_eq!(b.active(), 1);
        drop(g2);
        assert_eq!(b.active(), 0);
        assert_eq!(b.counters.sent.load(std::sync::atomic::Ordering::Relaxed), 2);
    }
}
