//! Nanoseconds per pick for every balancing algorithm at 3, 100 and 10 000
//! backends, and per sticky-table lookup and per request on a live binding
//! (lookup and recorded use) at 3, 100 and 10 000 sessions.
//! Run with `cargo bench -p shoal-node --bench pick`; results are recorded
//! in docs/benchmarks.md.

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use shoal_node::affinity::AffinityTable;
use shoal_node::balance::{Balancer, Candidate, Member, PickCtx};
use shoal_node::config::Algorithm;
use shoal_node::pool::AtomicEwma;

const SIZES: [usize; 3] = [3, 100, 10_000];

/// A backend as the data plane presents it: live load read atomically, and
/// the pool's decaying latency estimate.
struct Backend {
    id: u64,
    weight: u32,
    load: AtomicU64,
    latency: AtomicEwma,
}

impl Candidate for Backend {
    fn id(&self) -> u64 {
        self.id
    }
    fn usable(&self) -> bool {
        true
    }
    fn weight(&self) -> u32 {
        self.weight
    }
    fn load(&self) -> u64 {
        self.load.load(Ordering::Relaxed)
    }
    fn latency_us(&self, now_ms: u64) -> f64 {
        self.latency.at(now_ms)
    }
}

fn backends(n: usize) -> (Vec<String>, Vec<Backend>) {
    let names: Vec<String> = (0..n).map(|i| format!("b{i}")).collect();
    let cands = (0..n)
        .map(|i| {
            let latency = AtomicEwma::default();
            latency.observe(500.0 + (i * 37 % 101) as f64, shoal_node::clock::now_ms());
            Backend {
                id: i as u64,
                weight: 1 + (i % 4) as u32,
                load: AtomicU64::new((i * 7 % 13) as u64),
                latency,
            }
        })
        .collect();
    (names, cands)
}

fn picks(c: &mut Criterion) {
    for algorithm in Algorithm::ALL {
        let mut group = c.benchmark_group(format!("pick/{algorithm:?}"));
        for n in SIZES {
            let (names, cands) = backends(n);
            let members: Vec<Member<'_>> = names
                .iter()
                .zip(&cands)
                .map(|(name, b)| Member { name, weight: b.weight })
                .collect();
            let balancer = Balancer::new(algorithm, &members);
            let mut key = 0u64;
            group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
                b.iter(|| {
                    // A fresh context per pick, as each request has; hash
                    // algorithms get a different key each time.
                    key = key.wrapping_add(0x9E37_79B9_7F4A_7C15);
                    let mut ctx = PickCtx::with_rng(Some(key), fastrand::Rng::with_seed(key));
                    black_box(balancer.pick(black_box(&cands), &mut ctx))
                })
            });
        }
        group.finish();
    }
}

/// A table of `n` sessions bound over three backends for `ttl`, the
/// backends and the session keys.
fn bound_table(n: usize, ttl: Duration) -> (AffinityTable, Vec<Arc<str>>, Vec<String>) {
    let table = AffinityTable::new("bench", 10_000_000);
    let backends: Vec<Arc<str>> = (0..3).map(|i| Arc::from(format!("b{i}"))).collect();
    let keys: Vec<String> = (0..n).map(|i| format!("session-{i:08}")).collect();
    for (i, k) in keys.iter().enumerate() {
        table.bind("web", k.as_bytes(), &backends[i % 3], ttl, 1_000);
    }
    (table, backends, keys)
}

fn sticky_lookups(c: &mut Criterion) {
    let mut group = c.benchmark_group("sticky_lookup");
    let ttl = Duration::from_secs(600);
    for n in SIZES {
        let (table, _, keys) = bound_table(n, ttl);
        let mut i = 0usize;
        group.bench_with_input(BenchmarkId::new("hit", n), &n, |b, _| {
            b.iter(|| {
                i = (i + 1) % keys.len();
                black_box(table.lookup("web", black_box(keys[i].as_bytes()), 2_000))
            })
        });
        group.bench_with_input(BenchmarkId::new("miss", n), &n, |b, _| {
            b.iter(|| black_box(table.lookup("web", black_box(b"no-such-session"), 2_000)))
        });
    }
    group.finish();
}

/// What a request with a live binding costs the table: the lookup before
/// the pick, and the use recorded after the backend answered.
fn sticky_requests(c: &mut Criterion) {
    let mut group = c.benchmark_group("sticky_request");
    let ttl = Duration::from_secs(600);
    for n in SIZES {
        let (table, backends, keys) = bound_table(n, ttl);
        let mut i = 0usize;
        group.bench_with_input(BenchmarkId::new("kept", n), &n, |b, _| {
            b.iter(|| {
                i = (i + 1) % keys.len();
                let key = black_box(keys[i].as_bytes());
                let found = table.find("web", key, ttl, 2_000);
                table.record_use("web", key, &backends[i % 3], found.as_ref(), ttl, 2_000);
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    targets = picks, sticky_lookups, sticky_requests
}
criterion_main!(benches);
