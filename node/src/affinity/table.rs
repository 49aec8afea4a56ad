//! The sticky table: (pool, key) → backend, replicated between nodes. Every
//! write carries a version (hybrid logical clock, node); a write applies
//! only over an older version, so all nodes converge whatever order writes
//! arrive in. Entries expire at a wall-clock time, on every node alike.
//!
//! Memory: per entry the key bytes, the backend name shared with the pool
//! (`Arc<str>`), and about 100 bytes of map and entry overhead; a million
//! 32-byte keys take about 150 MB.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use shoal_proto::hlc::Hlc;
use shoal_proto::replication::{Entry, Version};
use tokio::sync::broadcast;

#[derive(Debug, Clone)]
struct Binding {
    /// `None`: deleted (kept until expiry so an older write cannot revive it).
    backend: Option<Arc<str>>,
    expires_unix_ms: u64,
    version: Version,
}

#[derive(Default)]
struct PoolTable {
    map: DashMap<Box<[u8]>, Binding>,
}

/// Counters, for status and metrics.
#[derive(Debug, Default)]
pub struct TableStats {
    /// Remote entries applied (newer than what was here).
    pub applied: AtomicU64,
    /// Remote entries ignored (older, already expired, or versioned more
    /// than a minute ahead of this node's clock).
    pub ignored: AtomicU64,
    pub evicted: AtomicU64,
}

pub struct AffinityTable {
    pools: DashMap<Arc<str>, Arc<PoolTable>>,
    hlc: Hlc,
    node: u64,
    max_entries: AtomicU64,
    /// Local writes, for replication to peers. A slow subscriber lags and
    /// resyncs; writers never wait.
    updates: broadcast::Sender<Entry>,
    pub stats: TableStats,
}

/// Writes queued for replication before a slow peer must resync.
pub const UPDATE_QUEUE: usize = 65_536;

/// The node part of versions written by node `id`.
pub fn node_tag(id: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(id.as_bytes())
}

impl AffinityTable {
    pub fn new(node_id: &str, max_entries: u64) -> Self {
        let (updates, _) = broadcast::channel(UPDATE_QUEUE);
        Self {
            pools: DashMap::new(),
            hlc: Hlc::default(),
            node: node_tag(node_id),
            max_entries: AtomicU64::new(max_entries.max(1)),
            updates,
            stats: TableStats::default(),
        }
    }

    /// The bound per pool (the largest `max_entries` of the sticky pools).
    pub fn set_max_entries(&self, n: u64) {
        self.max_entries.store(n.max(1), Ordering::Relaxed);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Entry> {
        self.updates.subscribe()
    }

    fn pool(&self, pool: &str) -> Arc<PoolTable> {
        if let Some(p) = self.pools.get(pool) {
            return Arc::clone(&p);
        }
        Arc::clone(&self.pools.entry(Arc::from(pool)).or_default())
    }

    /// The backend `key` is bound to in `pool`, if the binding lives.
    pub fn lookup(&self, pool: &str, key: &[u8], now_unix_ms: u64) -> Option<Arc<str>> {
        let p = self.pools.get(pool)?;
        let b = p.map.get(key)?;
        if b.expires_unix_ms <= now_unix_ms {
            return None;
        }
        b.backend.clone()
    }

    /// `key`'s live binding in `pool` as a request finds it: its backend,
    /// and whether serving the request should extend it (bindings of
    /// `ttl`). Hand it to [`Self::record_use`] afterwards, which then need
    /// not look the key up again.
    pub fn find(&self, pool: &str, key: &[u8], ttl: Duration, now_unix_ms: u64) -> Option<Found> {
        let p = self.pools.get(pool)?;
        let b = p.map.get(key)?;
        if b.expires_unix_ms <= now_unix_ms {
            return None;
        }
        Some(Found {
            backend: b.backend.clone()?,
            refresh_due: refresh_due(&b, ttl, now_unix_ms),
        })
    }

    /// Binds `key` to `backend` for `ttl` (a local write, replicated).
    pub fn bind(&self, pool: &str, key: &[u8], backend: &Arc<str>, ttl: Duration, now_unix_ms: u64) {
        self.write(pool, key, Some(Arc::clone(backend)), ttl, now_unix_ms);
    }

    /// After traffic for `key` went to `backend`, given what [`Self::find`]
    /// found before: extends the binding if it named `backend` and is due
    /// for it, else binds `key` to `backend`.
    pub fn record_use(
        &self,
        pool: &str,
        key: &[u8],
        backend: &Arc<str>,
        found: Option<&Found>,
        ttl: Duration,
        now_unix_ms: u64,
    ) {
        match found {
            Some(f) if *f.backend == **backend => {
                if f.refresh_due {
                    self.write(pool, key, Some(Arc::clone(backend)), ttl, now_unix_ms);
                }
            }
            _ => self.bind(pool, key, backend, ttl, now_unix_ms),
        }
    }

    /// Removes `key`'s binding (a local write, replicated).
    pub fn unbind(&self, pool: &str, key: &[u8], ttl: Duration, now_unix_ms: u64) {
        self.write(pool, key, None, ttl, now_unix_ms);
    }

    fn write(&self, pool: &str, key: &[u8], backend: Option<Arc<str>>, ttl: Duration, now_unix_ms: u64) {
        let version = Version {
            hlc: self.hlc.now(now_unix_ms),
            node: self.node,
        };
        let binding = Binding {
            backend,
            expires_unix_ms: now_unix_ms.saturating_add(ttl.as_millis() as u64),
            version,
        };
        let entry = Entry {
            pool: pool.to_string(),
            key: key.to_vec(),
            backend: binding.backend.as_deref().map(str::to_string),
            expires_unix_ms: binding.expires_unix_ms,
            version,
        };
        let p = self.pool(pool);
        p.map.insert(key.into(), binding);
        self.evict_if_full(&p);
        // No subscriber (standalone) is fine.
        let _ = self.updates.send(entry);
    }

    /// Applies a peer's entry if it is newer than ours; returns whether it
    /// applied.
    pub fn apply(&self, e: &Entry, now_unix_ms: u64) -> bool {
        if !self.hlc.observe(e.version.hlc, now_unix_ms) || e.expires_unix_ms <= now_unix_ms {
            self.stats.ignored.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        let p = self.pool(&e.pool);
        let applied = match p.map.entry(e.key.clone().into_boxed_slice()) {
            dashmap::Entry::Occupied(mut o) => {
                if o.get().version < e.version {
                    o.insert(binding_of(e));
                    true
                } else {
                    false
                }
            }
            dashmap::Entry::Vacant(v) => {
                v.insert(binding_of(e));
                true
            }
        };
        if applied {
            self.stats.applied.fetch_add(1, Ordering::Relaxed);
            self.evict_if_full(&p);
        } else {
            self.stats.ignored.fetch_add(1, Ordering::Relaxed);
        }
        applied
    }

    /// Over the bound, drops about 1% of the pool's entries, those expiring
    /// first: rare, amortised work instead of an ordered index per write.
    fn evict_if_full(&self, p: &PoolTable) {
        let max = self.max_entries.load(Ordering::Relaxed) as usize;
        if p.map.len() <= max {
            return;
        }
        let excess = p.map.len() - max;
        let batch = excess.max(max / 100).max(1);
        let mut by_expiry: Vec<(u64, Box<[u8]>)> = p
            .map
            .iter()
            .map(|r| (r.value().expires_unix_ms, r.key().clone()))
            .collect();
        let cut = batch.min(by_expiry.len());
        by_expiry.select_nth_unstable_by_key(cut.saturating_sub(1), |(exp, _)| *exp);
        for (_, k) in by_expiry.into_iter().take(cut) {
            p.map.remove(&k);
        }
        self.stats.evicted.fetch_add(cut as u64, Ordering::Relaxed);
    }

    /// Drops expired entries; returns how many remain.
    pub fn sweep(&self, now_unix_ms: u64) -> usize {
        let mut left = 0;
        for p in self.pools.iter() {
            p.map.retain(|_, b| b.expires_unix_ms > now_unix_ms);
            left += p.map.len();
        }
        left
    }

    pub fn len(&self) -> usize {
        self.pools.iter().map(|p| p.map.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every live entry, for a full sync, in chunks of `chunk`.
    pub fn snapshot(&self, chunk: usize, now_unix_ms: u64) -> Vec<Vec<Entry>> {
        let mut out = Vec::new();
        let mut cur = Vec::with_capacity(chunk);
        for p in self.pools.iter() {
            for r in p.map.iter() {
                let b = r.value();
                if b.expires_unix_ms <= now_unix_ms {
                    continue;
                }
                cur.push(Entry {
                    pool: p.key().to_string(),
                    key: r.key().to_vec(),
                    backend: b.backend.as_deref().map(str::to_string),
                    expires_unix_ms: b.expires_unix_ms,
                    version: b.version,
                });
                if cur.len() == chunk {
                    out.push(std::mem::replace(&mut cur, Vec::with_capacity(chunk)));
                }
            }
        }
        if !cur.is_empty() {
            out.push(cur);
        }
        out
    }
}

/// A live binding, as [`AffinityTable::find`] found it.
#[derive(Debug, Clone)]
pub struct Found {
    pub backend: Arc<str>,
    /// Using the binding should extend it now.
    pub refresh_due: bool,
}

/// Whether a binding of `ttl` is due to be extended on use: at most every
/// tenth of its TTL (and at most once a second), so that hot keys do not
/// flood replication.
fn refresh_due(b: &Binding, ttl: Duration, now_unix_ms: u64) -> bool {
    let ttl_ms = ttl.as_millis() as u64;
    let written_at = b.expires_unix_ms.saturating_sub(ttl_ms);
    // Saturating: a peer's entry may carry any expiry.
    now_unix_ms >= written_at.saturating_add((ttl_ms / 10).max(1000))
}

fn binding_of(e: &Entry) -> Binding {
    Binding {
        backend: e.backend.as_deref().map(Arc::from),
        expires_unix_ms: e.expires_unix_ms,
        version: e.version,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000_000;
    const TTL: Duration = Duration::from_secs(60);

    fn name(s: &str) -> Arc<str> {
        Arc::from(s)
    }

    #[test]
    fn bindings_live_for_their_ttl() {
        let t = AffinityTable::new("lb1", 100);
        t.bind("web", b"sid-1", &name("web-1"), TTL, NOW);
        assert_eq!(t.lookup("web", b"sid-1", NOW + 1000).as_deref(), Some("web-1"));
        assert_eq!(t.lookup("web", b"sid-1", NOW + 60_000), None, "expired");
        assert_eq!(t.lookup("api", b"sid-1", NOW), None, "pools are separate");
        assert_eq!(t.sweep(NOW + 60_001), 0);
    }

    #[test]
    fn a_use_found_by_find_extends_only_when_due_and_rebinds_elsewhere() {
        let t = AffinityTable::new("lb1", 100);
        let mut updates = t.subscribe();
        let (web1, web2) = (name("web-1"), name("web-2"));
        t.bind("web", b"k", &web1, TTL, NOW);
        let mut writes = || std::iter::from_fn(|| updates.try_recv().ok()).count();
        assert_eq!(writes(), 1, "the bind");

        let early = t.find("web", b"k", TTL, NOW + 1000);
        assert!(early.as_ref().is_some_and(|f| *f.backend == *"web-1" && !f.refresh_due));
        t.record_use("web", b"k", &web1, early.as_ref(), TTL, NOW + 1000);
        assert_eq!(writes(), 0, "not due before a tenth of the TTL");

        let due = t.find("web", b"k", TTL, NOW + 7_000);
        assert!(due.as_ref().is_some_and(|f| f.refresh_due));
        t.record_use("web", b"k", &web1, due.as_ref(), TTL, NOW + 7_000);
        assert_eq!(writes(), 1, "one refresh");
        assert_eq!(
            t.lookup("web", b"k", NOW + 66_000).as_deref(),
            Some("web-1"),
            "extended"
        );

        let found = t.find("web", b"k", TTL, NOW + 8_000);
        t.record_use("web", b"k", &web2, found.as_ref(), TTL, NOW + 8_000);
        assert_eq!(writes(), 1, "served elsewhere: bound there");
        assert_eq!(t.lookup("web", b"k", NOW + 8_000).as_deref(), Some("web-2"));

        assert!(t.find("web", b"new", TTL, NOW).is_none());
        t.record_use("web", b"new", &web1, None, TTL, NOW);
        assert_eq!(writes(), 1, "no binding: bound");
        assert_eq!(t.lookup("web", b"new", NOW).as_deref(), Some("web-1"));
    }

    #[test]
    fn the_newer_version_wins_and_deletes_stick() {
        let a = AffinityTable::new("lb1", 100);
        let b = AffinityTable::new("lb2", 100);
        let mut from_a = a.subscribe();
        a.bind("web", b"k", &name("web-1"), TTL, NOW);
        let first = from_a.try_recv().ok();
        a.unbind("web", b"k", TTL, NOW + 10);
        let second = from_a.try_recv().ok();
        let (Some(first), Some(second)) = (first, second) else {
            panic!("no updates")
        };
        // Out of order: the delete, then the older bind.
        assert!(b.apply(&second, NOW));
        assert!(!b.apply(&first, NOW), "an older write cannot revive a deleted key");
        assert_eq!(b.lookup("web", b"k", NOW), None);
    }

    /// A random history of writes on three nodes, delivered to each node in
    /// its own random order (with duplicates): all end identical.
    #[test]
    fn replicas_converge_whatever_the_delivery_order() {
        for seed in 0..200u64 {
            let mut rng = fastrand::Rng::with_seed(seed);
            let writers: Vec<AffinityTable> = (0..3).map(|i| AffinityTable::new(&format!("lb{i}"), 1000)).collect();
            let mut subs: Vec<_> = writers.iter().map(|w| w.subscribe()).collect();
            let mut history = Vec::new();
            for step in 0..40u64 {
                let w = rng.usize(0..3);
                let key = [rng.u8(0..5)];
                // Clocks that disagree by up to a second.
                let now = NOW + step * 10 + rng.u64(0..1000);
                if rng.u8(0..5) == 0 {
                    writers[w].unbind("web", &key, TTL, now);
                } else {
                    writers[w].bind("web", &key, &name(&format!("web-{}", rng.u8(0..4))), TTL, now);
                }
                while let Ok(e) = subs[w].try_recv() {
                    history.push(e);
                }
            }
            let replicas: Vec<AffinityTable> = (0..3).map(|i| AffinityTable::new(&format!("r{i}"), 1000)).collect();
            for r in &replicas {
                let mut order = history.clone();
                rng.shuffle(&mut order);
                order.extend(history.iter().take(rng.usize(0..history.len())).cloned());
                for e in &order {
                    r.apply(e, NOW);
                }
            }
            let state = |t: &AffinityTable| {
                let mut v: Vec<(Vec<u8>, Option<String>)> = t
                    .snapshot(1000, NOW)
                    .concat()
                    .into_iter()
                    .map(|e| (e.key, e.backend))
                    .collect();
                v.sort();
                v
            };
            assert_eq!(state(&replicas[0]), state(&replicas[1]), "seed {seed}");
            assert_eq!(state(&replicas[1]), state(&replicas[2]), "seed {seed}");
        }
    }

    #[test]
    fn the_table_is_bounded_and_evicts_the_oldest_first() {
        let t = AffinityTable::new("lb1", 1000);
        for i in 0..1500u64 {
            // Later keys expire later.
            t.bind("web", &i.to_be_bytes(), &name("web-1"), TTL, NOW + i);
        }
        assert!(t.len() <= 1000, "{}", t.len());
        assert_eq!(
            t.lookup("web", &1499u64.to_be_bytes(), NOW + 1500).as_deref(),
            Some("web-1")
        );
        assert_eq!(
            t.lookup("web", &0u64.to_be_bytes(), NOW + 1500),
            None,
            "the oldest went first"
        );
        assert!(t.stats.evicted.load(Ordering::Relaxed) >= 500);
    }

    #[test]
    fn expired_remote_entries_are_ignored() {
        let t = AffinityTable::new("lb1", 100);
        let e = Entry {
            pool: "web".into(),
            key: b"k".to_vec(),
            backend: Some("web-1".into()),
            expires_unix_ms: NOW - 1,
            version: Version { hlc: 1, node: 1 },
        };
        assert!(!t.apply(&e, NOW));
        assert!(t.is_empty());
    }

    #[test]
    fn entries_versioned_far_in_the_future_are_ignored_and_do_not_skew_the_clock() {
        let t = AffinityTable::new("lb1", 100);
        let e = Entry {
            pool: "web".into(),
            key: b"k".to_vec(),
            backend: Some("web-2".into()),
            expires_unix_ms: NOW + 60_000,
            version: Version { hlc: u64::MAX, node: 1 },
        };
        assert!(!t.apply(&e, NOW), "it would win over every later write");
        assert!(t.is_empty());
        assert_eq!(t.stats.ignored.load(Ordering::Relaxed), 1);
        // Local writes still carry the local time, so a later peer write
        // can replace them.
        let mut updates = t.subscribe();
        t.bind("web", b"k", &name("web-1"), TTL, NOW);
        let written = updates.try_recv().map(|e| e.version.hlc).unwrap_or_default();
        assert_eq!(shoal_proto::hlc::physical_ms(written), NOW);
    }
}
