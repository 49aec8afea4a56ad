use std::collections::HashMap;

use super::*;
use crate::config::Algorithm;

#[derive(Clone, Debug)]
struct Tc {
    slot: usize,
    usable: bool,
    weight: u32,
    load: u64,
    latency: f64,
}

impl Candidate for Tc {
    fn id(&self) -> u64 {
        self.slot as u64
    }
    fn usable(&self) -> bool {
        self.usable
    }
    fn weight(&self) -> u32 {
        self.weight
    }
    fn load(&self) -> u64 {
        self.load
    }
    fn latency_us(&self, _now_ms: u64) -> f64 {
        self.latency
    }
}

const NAMES: [&str; 12] = [
    "web-1", "web-2", "web-3", "web-4", "web-5", "web-6", "web-7", "web-8", "web-9", "web-10", "web-11", "web-12",
];

fn cands(weights: &[u32]) -> Vec<Tc> {
    weights
        .iter()
        .enumerate()
        .map(|(slot, &weight)| Tc {
            slot,
            usable: true,
            weight,
            load: 0,
            latency: 0.0,
        })
        .collect()
}

fn members(weights: &[u32]) -> Vec<Member<'static>> {
    weights
        .iter()
        .enumerate()
        .map(|(i, &weight)| Member { name: NAMES[i], weight })
        .collect()
}

fn seeded(hash: Option<u64>) -> PickCtx {
    PickCtx::with_rng(hash, fastrand::Rng::with_seed(0x5eed))
}

/// Picks `n` times with a fresh context per pick (as requests do); keys
/// for hash algorithms are 0..n.
fn counts(alg: Algorithm, weights: &[u32], n: u64) -> Vec<u64> {
    let b = Balancer::new(alg, &members(weights));
    let cs = cands(weights);
    let mut rng = fastrand::Rng::with_seed(42);
    let mut out = vec![0u64; weights.len()];
    for k in 0..n {
        let mut ctx = PickCtx::with_rng(Some(hash_bytes(&k.to_le_bytes())), rng.fork());
        let i = b.pick(&cs, &mut ctx).unwrap_or_else(|| panic!("{alg} picked nothing"));
        out[i] += 1;
    }
    out
}

/// Asserts each backend's share is within `tol` (absolute, as a fraction of
/// all picks) of its weight's share.
fn assert_shares(alg: Algorithm, weights: &[u32], got: &[u64], tol: f64) {
    let total_w: u32 = weights.iter().sum();
    let total: u64 = got.iter().sum();
    for (i, (&w, &g)) in weights.iter().zip(got).enumerate() {
        let want = f64::from(w) / f64::from(total_w);
        let share = g as f64 / total as f64;
        assert!(
            (share - want).abs() <= tol,
            "{alg}: backend {i} got {share:.4} of picks, weight share {want:.4} (tolerance {tol}); counts {got:?}"
        );
    }
}

#[test]
fn weights_respected_within_one_percent() {
    let weights = [1, 2, 3];
    // Deterministic algorithms: exact over 10 000 picks.
    for alg in [Algorithm::WeightedRoundRobin, Algorithm::LeastConn] {
        assert_shares(alg, &weights, &counts(alg, &weights, 10_000), 0.01);
    }
    // Random and hash-based ones: enough picks that 1% is > 5 standard
    // deviations whatever the seed, so the check cannot flake.
    for alg in [Algorithm::Random, Algorithm::P2c, Algorithm::IpHash, Algorithm::Maglev] {
        assert_shares(alg, &weights, &counts(alg, &weights, 200_000), 0.01);
    }
}

#[test]
fn unweighted_algorithms_split_evenly() {
    let weights = [1, 1, 1];
    assert_eq!(counts(Algorithm::RoundRobin, &weights, 9_999), vec![3333, 3333, 3333]);
    // Round robin ignores weights by definition.
    assert_eq!(counts(Algorithm::RoundRobin, &[5, 1, 1], 9_999), vec![3333, 3333, 3333]);
    // With no latency samples and no load, every score ties.
    assert_shares(
        Algorithm::LeastResponseTime,
        &weights,
        &counts(Algorithm::LeastResponseTime, &weights, 9_999),
        0.001,
    );
}

#[test]
fn consistent_hash_shares_track_weights_within_ring_variance() {
    // A ring with ~160 points per backend has a share spread of a few
    // percent (about 1/sqrt(points)); maglev is the exact one.
    let weights = [1, 2, 3];
    let got = counts(Algorithm::ConsistentHash, &weights, 200_000);
    assert_shares(Algorithm::ConsistentHash, &weights, &got, 0.05);
}

#[test]
fn smooth_wrr_never_exceeds_weight_in_a_row() {
    for weights in [
        vec![5, 1, 1],
        vec![3, 2, 1],
        vec![1, 1, 1],
        vec![10, 1],
        vec![7, 7, 2, 1],
    ] {
        let b = Balancer::new(Algorithm::WeightedRoundRobin, &members(&weights));
        let cs = cands(&weights);
        let total: u32 = weights.iter().sum();
        let mut seq = Vec::new();
        for _ in 0..total * 10 {
            seq.push(b.pick(&cs, &mut seeded(None)).unwrap_or(usize::MAX));
        }
        let mut run = 1;
        for pair in seq.windows(2) {
            run = if pair[0] == pair[1] { run + 1 } else { 1 };
            let w = weights[pair[1]];
            assert!(
                run <= w as usize,
                "weights {weights:?}: backend {} picked {run} times in a row",
                pair[1]
            );
        }
        for (i, &w) in weights.iter().enumerate() {
            assert_eq!(
                seq.iter().filter(|&&s| s == i).count(),
                w as usize * 10,
                "weights {weights:?}"
            );
        }
    }
    // nginx's documented sequence for 5,1,1.
    let b = Balancer::new(Algorithm::WeightedRoundRobin, &members(&[5, 1, 1]));
    let cs = cands(&[5, 1, 1]);
    let seq: Vec<usize> = (0..7).filter_map(|_| b.pick(&cs, &mut seeded(None))).collect();
    assert_eq!(seq, vec![0, 0, 1, 0, 2, 0, 0]);
}

#[test]
fn each_worker_keeps_its_own_smooth_rotation() {
    let wrr = super::weighted::SmoothWeighted::with_shards(3, 2);
    let cs = cands(&[5, 1, 1]);
    let (mut first, mut second) = (Vec::new(), Vec::new());
    // Interleaved picks of two workers, the second picking twice as often.
    for _ in 0..7 {
        first.extend(wrr.pick(&cs, &seeded(None).on_worker(0), |_| true));
        for _ in 0..2 {
            second.extend(wrr.pick(&cs, &seeded(None).on_worker(1), |_| true));
        }
    }
    assert_eq!(first, vec![0, 0, 1, 0, 2, 0, 0]);
    assert_eq!(second, [[0, 0, 1, 0, 2, 0, 0]; 2].concat());
}

#[test]
fn unusable_and_excluded_backends_are_never_picked() {
    for alg in Algorithm::ALL {
        let b = Balancer::new(alg, &members(&[1, 2, 3, 4]));
        let mut cs = cands(&[1, 2, 3, 4]);
        cs[1].usable = false;
        for k in 0..2_000u64 {
            let mut ctx = seeded(Some(hash_bytes(&k.to_le_bytes())));
            ctx.exclude(3);
            let i = b.pick(&cs, &mut ctx);
            assert!(matches!(i, Some(0) | Some(2)), "{alg} picked {i:?}");
        }
        for c in &mut cs {
            c.usable = false;
        }
        assert_eq!(b.pick(&cs, &mut seeded(Some(1))), None, "{alg} must pick nothing");
        let empty: Vec<Tc> = Vec::new();
        let b = Balancer::new(alg, &[]);
        assert_eq!(b.pick(&empty, &mut seeded(Some(1))), None, "{alg} on an empty pool");
    }
}

#[test]
fn round_robin_does_not_double_the_successor_of_a_down_backend() {
    let b = Balancer::new(Algorithm::RoundRobin, &members(&[1, 1, 1, 1]));
    let mut cs = cands(&[1, 1, 1, 1]);
    cs[1].usable = false;
    let mut got = [0u32; 4];
    for _ in 0..3_000 {
        if let Some(i) = b.pick(&cs, &mut seeded(None)) {
            got[i] += 1;
        }
    }
    assert_eq!(got, [1000, 0, 1000, 1000]);
}

#[test]
fn each_worker_keeps_its_own_round_robin_turn() {
    let rr = super::rotate::RoundRobin::with_shards(2);
    let cs = cands(&[1, 1, 1]);
    let (mut first, mut second) = (Vec::new(), Vec::new());
    // Interleaved picks of two workers, the second picking twice as often:
    // with one counter for both, each would skip the other's turns.
    for _ in 0..6 {
        first.extend(rr.pick(&cs, &mut seeded(None).on_worker(0)));
        for _ in 0..2 {
            second.extend(rr.pick(&cs, &mut seeded(None).on_worker(1)));
        }
    }
    assert_eq!(first, [0, 1, 2].repeat(2));
    assert_eq!(second, [0, 1, 2].repeat(4));
}

#[test]
fn least_conn_prefers_lowest_load_per_weight() {
    let b = Balancer::new(Algorithm::LeastConn, &members(&[1, 1, 1]));
    let mut cs = cands(&[1, 1, 1]);
    cs[0].load = 5;
    cs[1].load = 0;
    cs[2].load = 2;
    assert_eq!(b.pick(&cs, &mut seeded(None)), Some(1));
    // 4 per weight 1 is more than 6 per weight 3.
    let b = Balancer::new(Algorithm::LeastConn, &members(&[1, 3]));
    let mut cs = cands(&[1, 3]);
    cs[0].load = 4;
    cs[1].load = 6;
    assert_eq!(b.pick(&cs, &mut seeded(None)), Some(1));
    cs[1].load = 13;
    assert_eq!(b.pick(&cs, &mut seeded(None)), Some(0));
}

#[test]
fn least_conn_fills_backends_in_proportion_to_weight() {
    // Simulate long connections: every pick adds one to the chosen load.
    let weights = [1, 2, 3];
    let b = Balancer::new(Algorithm::LeastConn, &members(&weights));
    let mut cs = cands(&weights);
    for _ in 0..600 {
        if let Some(i) = b.pick(&cs, &mut seeded(None)) {
            cs[i].load += 1;
        }
    }
    let loads: Vec<u64> = cs.iter().map(|c| c.load).collect();
    assert_eq!(loads, vec![100, 200, 300]);
}

#[test]
fn least_conn_breaks_ties_by_weighted_rotation_among_the_tied_only() {
    // A model of the rule: the lowest load per weight wins; among ties,
    // smooth weighted round robin over the tied backends alone. A unique
    // minimum leaves the rotation's scores as they were.
    let weights = [1, 2, 3, 2];
    let b = Balancer::new(Algorithm::LeastConn, &members(&weights));
    let mut cs = cands(&weights);
    let mut scores = [0i64; 4];
    let mut rng = fastrand::Rng::with_seed(7);
    let mut unique = 0;
    for round in 0..2000 {
        for c in cs.iter_mut() {
            c.load = rng.u64(0..4);
        }
        let ratio = |i: usize| (cs[i].load, u64::from(cs[i].weight));
        let less = |a: (u64, u64), b: (u64, u64)| u128::from(a.0) * u128::from(b.1) < u128::from(b.0) * u128::from(a.1);
        let min = (0..4).fold(0, |m, i| if less(ratio(i), ratio(m)) { i } else { m });
        let tied: Vec<usize> = (0..4)
            .filter(|&i| !less(ratio(i), ratio(min)) && !less(ratio(min), ratio(i)))
            .collect();
        unique += usize::from(tied.len() == 1);
        let mut total = 0;
        let mut want = tied[0];
        for &i in &tied {
            scores[i] += i64::from(weights[i]);
            total += i64::from(weights[i]);
            if scores[i] > scores[want] {
                want = i;
            }
        }
        scores[want] -= total;
        assert_eq!(
            b.pick(&cs, &mut seeded(None)),
            Some(want),
            "round {round}, loads {cs:?}"
        );
    }
    // Both paths were taken, many times.
    assert!((200..1800).contains(&unique), "{unique} unique minima");
}

#[test]
fn least_response_time_prefers_fast_and_idle() {
    let b = Balancer::new(Algorithm::LeastResponseTime, &members(&[1, 1]));
    let mut cs = cands(&[1, 1]);
    cs[0].latency = 1_000.0;
    cs[1].latency = 100.0;
    assert_eq!(b.pick(&cs, &mut seeded(None)), Some(1));
    // The fast one is busy enough that the slow idle one is quicker.
    cs[1].load = 20;
    assert_eq!(b.pick(&cs, &mut seeded(None)), Some(0));
    // A backend without samples is tried at once, even if the other is
    // fast...
    cs[0].latency = 0.0;
    cs[1].load = 1;
    assert_eq!(b.pick(&cs, &mut seeded(None)), Some(0));
    // ...but its own load still counts: 1µs × 501 > 100µs × 2.
    cs[0].load = 500;
    assert_eq!(b.pick(&cs, &mut seeded(None)), Some(1));
    // A slow sampled backend does not make unsampled ones look slow.
    let b = Balancer::new(Algorithm::LeastResponseTime, &members(&[1, 2, 3]));
    let mut cs = cands(&[1, 2, 3]);
    cs[2].latency = 5_000.0;
    assert_ne!(b.pick(&cs, &mut seeded(None)), Some(2));
    // With no samples at all, load and weight decide.
    let b = Balancer::new(Algorithm::LeastResponseTime, &members(&[1, 1, 1]));
    let mut cs = cands(&[1, 1, 1]);
    cs[0].load = 3;
    cs[1].load = 1;
    cs[2].load = 2;
    assert_eq!(b.pick(&cs, &mut seeded(None)), Some(1));
}

/// A backend in a simulation of sequential requests: its true latency, and
/// the decaying estimate the pool keeps of it.
struct Simulated {
    slot: usize,
    weight: u32,
    true_us: f64,
    estimate: crate::pool::AtomicEwma,
}

impl Candidate for Simulated {
    fn id(&self) -> u64 {
        self.slot as u64
    }
    fn usable(&self) -> bool {
        true
    }
    fn weight(&self) -> u32 {
        self.weight
    }
    fn load(&self) -> u64 {
        0
    }
    fn latency_us(&self, now_ms: u64) -> f64 {
        self.estimate.at(now_ms)
    }
}

/// Sends requests one at a time (so nothing is ever in flight at a pick)
/// for `seconds` of simulated time to backends of weights 1, 2, 3 whose
/// true latencies are 300 µs, 300 µs and 5 ms; `outlier(n, slot)` may
/// replace the latency of the `n`th request. Returns each request's
/// (start in ms, backend).
fn sequential_lrt(seconds: u64, outlier: impl Fn(usize, usize) -> Option<f64>) -> Vec<(u64, usize)> {
    let b = Balancer::new(Algorithm::LeastResponseTime, &members(&[1, 2, 3]));
    let cs: Vec<Simulated> = [(1, 300.0), (2, 300.0), (3, 5_000.0)]
        .into_iter()
        .enumerate()
        .map(|(slot, (weight, true_us))| Simulated {
            slot,
            weight,
            true_us,
            estimate: Default::default(),
        })
        .collect();
    let mut rng = fastrand::Rng::with_seed(7);
    let (mut now_us, mut picks) = (1_000_000.0f64, Vec::new());
    while now_us < (seconds as f64 + 1.0) * 1e6 {
        let now_ms = (now_us / 1_000.0) as u64;
        let Some(i) = b.pick(&cs, &mut PickCtx::with_rng(None, rng.fork()).at(now_ms)) else {
            panic!("no pick at {now_ms} ms");
        };
        let took = outlier(picks.len(), i).unwrap_or(cs[i].true_us);
        now_us += took;
        cs[i].estimate.observe(took, (now_us / 1_000.0) as u64);
        picks.push((now_ms, i));
    }
    picks
}

fn picks_of(picks: &[(u64, usize)], slot: usize, from_ms: u64) -> usize {
    picks.iter().filter(|&&(t, i)| i == slot && t >= from_ms).count()
}

#[test]
fn least_response_time_tries_a_backend_again_after_an_outlier() {
    // What the cluster test once saw under a loaded machine: demo-b's first
    // response takes 4 ms and a later one of demo-a's 8 ms. Each then
    // scores worse than demo-c's 5 ms / weight 3. Without decay neither
    // would ever be picked again and the slow backend would take all.
    let picks = sequential_lrt(60, |n, slot| match (n, slot) {
        (_, 1) if n < 3 => Some(4_000.0),
        (200, 0) => Some(8_000.0),
        _ => None,
    });
    let at = |n: usize| picks[n].0;
    assert!(
        picks[200..].iter().any(|&(_, i)| i == 2),
        "the outliers never sent a request to the slow backend: the test does not test"
    );
    // Each fast backend is tried again once its estimate has decayed below
    // the best score: demo-a (1.84 ms after the outlier) when it falls under
    // demo-c's 1.67 ms, about 1 s later; demo-b (4 ms / 2) under demo-a's
    // 300 µs, about 10 s × ln(2 ms / 300 µs) = 19 s after its outlier.
    for (slot, within_ms) in [(0, 3_000), (1, 25_000)] {
        let back = picks[201..].iter().find(|&&(_, i)| i == slot).map(|&(t, _)| t);
        assert!(
            back.is_some_and(|t| t < at(200) + within_ms),
            "backend {slot} first picked again at {back:?} ms, outlier at {} ms",
            at(200)
        );
    }
    // So the slow backend carried the traffic for about a second...
    let slow_after = picks_of(&picks, 2, at(200));
    assert!(
        slow_after < 400,
        "the slow backend got {slow_after} picks after the outlier"
    );
    // ...and from then on is only re-tried now and then, each time about
    // ln(5 ms / 3 / 150 µs) × 10 s = 24 s apart.
    let from = at(200) + 30_000;
    let (fast, slow) = (
        picks_of(&picks, 0, from) + picks_of(&picks, 1, from),
        picks_of(&picks, 2, from),
    );
    assert!(fast > 50_000, "fast backends got {fast} picks in the last 30 s");
    assert!(slow <= 6, "the slow backend got {slow} picks in the last 30 s");
}

#[test]
fn least_response_time_re_tries_a_slow_backend_rarely() {
    // Ten simulated minutes without outliers: the slow backend is sampled
    // again when its estimate has decayed to the fast ones' score, about
    // every 10 s × ln(5 ms / 3 / 150 µs) = 24 s, once each time.
    let picks = sequential_lrt(600, |_, _| None);
    let slow = picks_of(&picks, 2, 0);
    assert!(
        (10..=40).contains(&slow),
        "the slow backend got {slow} of {} picks",
        picks.len()
    );
}

/// A candidate whose load changes every time it is read, as under real
/// concurrency.
struct Shifty {
    slot: usize,
    reads: std::cell::Cell<u64>,
}

impl Candidate for Shifty {
    fn id(&self) -> u64 {
        self.slot as u64
    }
    fn usable(&self) -> bool {
        true
    }
    fn weight(&self) -> u32 {
        1
    }
    fn load(&self) -> u64 {
        let r = self.reads.get();
        self.reads.set(r + 1);
        // Alternates between loads so no value read twice agrees.
        (r * 7 + self.slot as u64 * 3) % 5
    }
    fn latency_us(&self, _now_ms: u64) -> f64 {
        100.0
    }
}

#[test]
fn load_aware_algorithms_always_pick_while_loads_change() {
    let cs: Vec<Shifty> = (0..3)
        .map(|slot| Shifty {
            slot,
            reads: std::cell::Cell::new(0),
        })
        .collect();
    for alg in [Algorithm::LeastConn, Algorithm::LeastResponseTime, Algorithm::P2c] {
        let b = Balancer::new(alg, &members(&[1, 1, 1]));
        for _ in 0..1_000 {
            assert!(b.pick(&cs, &mut seeded(None)).is_some(), "{alg} found no backend");
        }
    }
}

#[test]
fn p2c_avoids_the_loaded_backend() {
    let b = Balancer::new(Algorithm::P2c, &members(&[1, 1, 1]));
    let mut cs = cands(&[1, 1, 1]);
    cs[0].load = 50;
    let mut ctx = seeded(None);
    let mut got = [0u32; 3];
    for _ in 0..3_000 {
        if let Some(i) = b.pick(&cs, &mut ctx) {
            got[i] += 1;
        }
    }
    assert_eq!(got[0], 0, "{got:?}");
    assert!(got[1] > 1_200 && got[2] > 1_200, "{got:?}");
}

fn pick_name(b: &Balancer, cs: &[Tc], names: &[&'static str], key: u64) -> &'static str {
    let i = b
        .pick(cs, &mut seeded(Some(hash_bytes(&key.to_le_bytes()))))
        .unwrap_or(usize::MAX);
    names.get(i).copied().unwrap_or("none")
}

#[test]
fn hash_algorithms_are_stable_across_nodes() {
    for alg in [Algorithm::IpHash, Algorithm::ConsistentHash, Algorithm::Maglev] {
        // Two independently built balancers stand for two nodes.
        let node_a = Balancer::new(alg, &members(&[1, 2, 3, 1]));
        let node_b = Balancer::new(alg, &members(&[1, 2, 3, 1]));
        let cs = cands(&[1, 2, 3, 1]);
        for key in 0..5_000u64 {
            let a = pick_name(&node_a, &cs, &NAMES, key);
            assert_eq!(a, pick_name(&node_b, &cs, &NAMES, key), "{alg} key {key}");
            assert_eq!(a, pick_name(&node_a, &cs, &NAMES, key), "{alg} key {key} repeat");
        }
    }
    // The hash itself is part of the contract between nodes and releases.
    assert_eq!(
        hash_ip("10.1.2.3".parse().unwrap_or(std::net::Ipv4Addr::UNSPECIFIED.into())),
        0x946a_cf76_b436_f6d0
    );
    assert_eq!(
        hash_ip(
            "::ffff:10.1.2.3"
                .parse()
                .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED.into())
        ),
        hash_ip("10.1.2.3".parse().unwrap_or(std::net::Ipv4Addr::UNSPECIFIED.into()))
    );
}

/// Fraction of keys whose backend name differs between two pools.
fn moved(alg: Algorithm, before: &[&'static str], after: &[&'static str], keys: u64) -> (f64, u64) {
    let mb: Vec<Member<'static>> = before.iter().map(|&name| Member { name, weight: 1 }).collect();
    let ma: Vec<Member<'static>> = after.iter().map(|&name| Member { name, weight: 1 }).collect();
    let (bb, ba) = (Balancer::new(alg, &mb), Balancer::new(alg, &ma));
    let (cb, ca) = (cands(&vec![1; before.len()]), cands(&vec![1; after.len()]));
    let removed: Vec<&str> = before.iter().filter(|n| !after.contains(n)).copied().collect();
    let mut moved = 0u64;
    let mut moved_from_survivors = 0u64;
    for key in 0..keys {
        let was = pick_name(&bb, &cb, before, key);
        let now = pick_name(&ba, &ca, after, key);
        if was != now {
            moved += 1;
            if !removed.contains(&was) {
                moved_from_survivors += 1;
            }
        }
    }
    (moved as f64 / keys as f64, moved_from_survivors)
}

#[test]
fn maglev_moves_about_one_nth_when_a_backend_leaves() {
    for n in [3usize, 5, 10] {
        let before: Vec<&'static str> = NAMES[..n].to_vec();
        for gone in [0, n / 2, n - 1] {
            let after: Vec<&'static str> = before
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != gone)
                .map(|(_, s)| *s)
                .collect();
            let (fraction, _) = moved(Algorithm::Maglev, &before, &after, 100_000);
            let bound = 1.0 / n as f64 + 0.02;
            assert!(
                fraction <= bound,
                "n={n}, removed {gone}: {fraction:.4} of keys moved, bound {bound:.4}"
            );
        }
    }
}

#[test]
fn consistent_hash_moves_only_the_leaving_backends_keys() {
    let before: Vec<&'static str> = NAMES[..6].to_vec();
    let after: Vec<&'static str> = NAMES[..6].iter().filter(|n| **n != "web-3").copied().collect();
    let (fraction, from_survivors) = moved(Algorithm::ConsistentHash, &before, &after, 100_000);
    assert_eq!(from_survivors, 0);
    assert!(fraction < 1.0 / 6.0 + 0.05, "{fraction}");
}

#[test]
fn an_unusable_backend_moves_only_its_own_keys() {
    for alg in [Algorithm::ConsistentHash, Algorithm::Maglev, Algorithm::IpHash] {
        let weights = [1, 1, 1, 1, 1];
        let b = Balancer::new(alg, &members(&weights));
        let healthy = cands(&weights);
        let mut one_down = healthy.clone();
        one_down[2].usable = false;
        let mut spread = HashMap::new();
        for key in 0..50_000u64 {
            let was = pick_name(&b, &healthy, &NAMES, key);
            let now = pick_name(&b, &one_down, &NAMES, key);
            if was == "web-3" {
                *spread.entry(now).or_insert(0u32) += 1;
            } else {
                assert_eq!(was, now, "{alg}: key {key} moved off a healthy backend");
            }
        }
        // The orphaned keys spread over all survivors, not onto one.
        assert_eq!(spread.len(), 4, "{alg}: {spread:?}");
        assert!(!spread.contains_key("web-3"));
    }
}

#[test]
fn maglev_table_grows_with_the_pool() {
    let small = maglev::Maglev::new(&members(&[1, 1, 1]));
    assert_eq!(small.table_len(), 65_537);
    let names: Vec<String> = (0..1000).map(|i| format!("b{i}")).collect();
    let many: Vec<Member<'_>> = names.iter().map(|n| Member { name: n, weight: 1 }).collect();
    let big = maglev::Maglev::new(&many);
    assert!(big.table_len() >= 100_000, "{}", big.table_len());
}

#[test]
fn random_picks_stay_weight_proportional_after_weights_grow() {
    // The sampler's bound is learnt from the weights of the first picks; a
    // weight that grows past it (slow start ending, say) must not lose its
    // share.
    for alg in [Algorithm::Random, Algorithm::P2c] {
        let b = Balancer::new(alg, &members(&[1, 2, 3]));
        let mut rng = fastrand::Rng::with_seed(7);
        let before = cands(&[1, 1, 1]);
        for _ in 0..100 {
            assert!(b.pick(&before, &mut PickCtx::with_rng(None, rng.fork())).is_some());
        }
        let weights = [1, 2, 30];
        let cs = cands(&weights);
        let mut got = vec![0u64; 3];
        for _ in 0..200_000 {
            let i = b.pick(&cs, &mut PickCtx::with_rng(None, rng.fork()));
            got[i.unwrap_or_else(|| panic!("{alg} picked nothing"))] += 1;
        }
        assert_shares(alg, &weights, &got, 0.01);
    }
}

#[test]
fn random_picks_find_the_only_usable_backend_among_ten_thousand() {
    let weights = vec![1; 10_000];
    let mut cs = cands(&weights);
    for c in &mut cs {
        c.usable = false;
    }
    cs[7_777].usable = true;
    for alg in [Algorithm::Random, Algorithm::P2c] {
        let b = Balancer::new(alg, &members(&[1]));
        for _ in 0..100 {
            assert_eq!(b.pick(&cs, &mut seeded(None)), Some(7_777), "{alg}");
        }
        cs[7_777].usable = false;
        assert_eq!(b.pick(&cs, &mut seeded(None)), None, "{alg}");
        cs[7_777].usable = true;
    }
}
