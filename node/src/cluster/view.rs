//! The cluster as this node sees it, computed from gossip state once per
//! round (pure code: the gossip snapshot and the clock are inputs). The
//! data plane and the admin API read the result without touching gossip.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::keys;

/// One node's gossip state, as read from chitchat.
#[derive(Debug, Clone)]
pub struct PeerSnapshot {
    pub id: String,
    pub generation: u64,
    pub gossip_addr: SocketAddr,
    /// Alive by the failure detector (and not leaving).
    pub live: bool,
    pub heartbeat: u64,
    /// Shared with the snapshot cache: unchanged nodes cost no copy.
    pub values: std::sync::Arc<HashMap<String, String>>,
}

/// Which of two generations of one node id to show: a live one over a
/// dead one (a clock step back can give a restarted node a lower
/// generation), else the newer.
pub fn prefer(live: bool, generation: u64, than_live: bool, than_generation: u64) -> bool {
    (live, generation) > (than_live, than_generation)
}

#[derive(Debug, Clone, PartialEq)]
pub struct PeerView {
    pub id: String,
    /// Changes when the node restarts.
    pub generation: u64,
    pub alive: bool,
    /// Announced a graceful leave.
    pub left: bool,
    pub gossip_addr: SocketAddr,
    /// Since its heartbeat last advanced.
    pub last_seen: Duration,
    pub admin_addr: Option<String>,
    pub replication_addr: Option<String>,
    pub fingerprint: Option<String>,
    /// Its VIPs: address → `STATE:PRIORITY`.
    pub vips: BTreeMap<String, String>,
}

/// What live peers report about one backend.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BackendCluster {
    /// Sum of live peers' active connections.
    pub peer_connections: u64,
    /// Each live peer's health verdict.
    pub health_by_node: BTreeMap<String, bool>,
}

#[derive(Debug, Clone, Default)]
pub struct ClusterView {
    pub peers: Vec<PeerView>,
    pub backends: HashMap<(String, String), BackendCluster>,
    /// When it was built (`last_seen` ages are as of then).
    pub built_at: Option<Instant>,
}

impl ClusterView {
    pub fn backend(&self, pool: &str, backend: &str) -> Option<&BackendCluster> {
        self.backends.get(&(pool.to_string(), backend.to_string()))
    }

    pub fn alive_peers(&self) -> usize {
        self.peers.iter().filter(|p| p.alive).count()
    }
}

/// When each node generation's heartbeat last advanced.
#[derive(Debug, Default)]
pub struct LastSeen(HashMap<(String, u64), (u64, Instant)>);

/// Builds the view from snapshots of every known node except this one.
/// A node id that appears with several generations (it restarted) is shown
/// by its newest one.
pub fn build(snapshots: &[PeerSnapshot], last_seen: &mut LastSeen, now: Instant) -> ClusterView {
    let mut newest: BTreeMap<&str, &PeerSnapshot> = BTreeMap::new();
    for s in snapshots {
        match newest.get(s.id.as_str()) {
            Some(prev) if !prefer(s.live, s.generation, prev.live, prev.generation) => {}
            _ => {
                newest.insert(&s.id, s);
            }
        }
    }
    let mut seen = HashMap::new();
    let mut peers = Vec::with_capacity(newest.len());
    let mut backends: HashMap<(String, String), BackendCluster> = HashMap::new();
    for s in newest.values() {
        let key = (s.id.clone(), s.generation);
        let at = match last_seen.0.get(&key) {
            Some(&(hb, at)) if hb == s.heartbeat => at,
            _ => now,
        };
        seen.insert(key, (s.heartbeat, at));
        let left = s.values.contains_key(keys::LEAVING);
        let alive = s.live && !left;
        peers.push(PeerView {
            id: s.id.clone(),
            generation: s.generation,
            alive,
            left,
            gossip_addr: s.gossip_addr,
            last_seen: now.saturating_duration_since(at),
            admin_addr: s.values.get(keys::ADMIN).cloned(),
            replication_addr: s.values.get(keys::REPLICATION).cloned(),
            fingerprint: s.values.get(keys::FINGERPRINT).cloned(),
            vips: s
                .values
                .iter()
                .filter_map(|(k, v)| Some((keys::parse_vip_key(k)?.to_string(), v.clone())))
                .collect(),
        });
        // Dead or departed peers' counts and verdicts are stale: drop them.
        if !alive {
            continue;
        }
        for (k, v) in s.values.iter() {
            let (Some((pool, backend)), Some((healthy, conns))) =
                (keys::parse_backend_key(k), keys::parse_backend_value(v))
            else {
                continue;
            };
            let entry = backends.entry((pool.to_string(), backend.to_string())).or_default();
            entry.peer_connections = entry.peer_connections.saturating_add(conns);
            entry.health_by_node.insert(s.id.clone(), healthy);
        }
    }
    // Forget nodes no longer known, so the map stays bounded.
    last_seen.0 = seen;
    ClusterView {
        peers,
        backends,
        built_at: Some(now),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(id: &str, generation: u64, live: bool, heartbeat: u64, values: &[(&str, &str)]) -> PeerSnapshot {
        PeerSnapshot {
            id: id.into(),
            generation,
            gossip_addr: SocketAddr::from(([127, 0, 0, 1], 7946)),
            live,
            heartbeat,
            values: std::sync::Arc::new(values.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
        }
    }

    #[test]
    fn live_peers_counts_add_up_and_dead_ones_are_dropped() {
        let t0 = Instant::now();
        let mut ls = LastSeen::default();
        let view = build(
            &[
                snap(
                    "lb2",
                    1,
                    true,
                    5,
                    &[("b:web/a", "1:12"), ("b:web/b", "0:3"), ("admin", "127.0.0.1:9902")],
                ),
                snap("lb3", 1, true, 5, &[("b:web/a", "1:4")]),
                snap("lb4", 1, false, 5, &[("b:web/a", "1:100")]),
                snap("lb5", 1, true, 5, &[("b:web/a", "1:50"), ("leaving", "1")]),
            ],
            &mut ls,
            t0,
        );
        let a = view.backend("web", "a").cloned().unwrap_or_default();
        assert_eq!(a.peer_connections, 16);
        assert_eq!(
            a.health_by_node,
            BTreeMap::from([("lb2".into(), true), ("lb3".into(), true)])
        );
        assert_eq!(
            view.backend("web", "b").map(|b| b.health_by_node.get("lb2").copied()),
            Some(Some(false))
        );
        assert_eq!(view.alive_peers(), 2);
        let lb5 = view.peers.iter().find(|p| p.id == "lb5").map(|p| (p.alive, p.left));
        assert_eq!(lb5, Some((false, true)));
        assert_eq!(view.peers[0].admin_addr.as_deref(), Some("127.0.0.1:9902"));
    }

    #[test]
    fn last_seen_grows_until_the_heartbeat_moves() {
        let t0 = Instant::now();
        let mut ls = LastSeen::default();
        build(&[snap("lb2", 1, true, 5, &[])], &mut ls, t0);
        let v = build(
            &[snap("lb2", 1, true, 5, &[])],
            &mut ls,
            t0 + Duration::from_millis(700),
        );
        assert_eq!(v.peers[0].last_seen, Duration::from_millis(700));
        let v = build(
            &[snap("lb2", 1, true, 6, &[])],
            &mut ls,
            t0 + Duration::from_millis(800),
        );
        assert_eq!(v.peers[0].last_seen, Duration::ZERO);
    }

    #[test]
    fn a_restarted_node_shows_by_its_newest_generation() {
        let mut ls = LastSeen::default();
        let v = build(
            &[
                snap("lb2", 1, false, 9, &[("b:web/a", "1:7")]),
                snap("lb2", 2, true, 1, &[("b:web/a", "1:2")]),
            ],
            &mut ls,
            Instant::now(),
        );
        assert_eq!(v.peers.len(), 1);
        assert!(v.peers[0].alive);
        assert_eq!(v.backend("web", "a").map(|b| b.peer_connections), Some(2));
    }

    #[test]
    fn a_live_generation_wins_over_a_newer_dead_one() {
        let v = build(
            &[snap("lb2", 9, false, 1, &[]), snap("lb2", 5, true, 1, &[])],
            &mut LastSeen::default(),
            Instant::now(),
        );
        assert!(v.peers[0].alive);
    }

    #[test]
    fn huge_counts_from_peers_do_not_overflow() {
        let v = build(
            &[
                snap("lb2", 1, true, 1, &[("b:web/a", "1:18446744073709551615")]),
                snap("lb3", 1, true, 1, &[("b:web/a", "1:18446744073709551615")]),
            ],
            &mut LastSeen::default(),
            Instant::now(),
        );
        assert_eq!(
            v.backend("web", "a").map(|b| b.peer_connections),
            Some(2 * keys::MAX_PEER_CONNECTIONS)
        );
    }

    #[test]
    fn garbage_values_are_ignored() {
        let v = build(
            &[snap("lb2", 1, true, 1, &[("b:web/a", "nonsense"), ("b:broken", "1:1")])],
            &mut LastSeen::default(),
            Instant::now(),
        );
        assert!(v.backends.is_empty());
    }
}
