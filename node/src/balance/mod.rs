//! Backend selection algorithms: pure code over a snapshot of candidates.
//!
//! A balancer is built once per pool group from the backends' names and
//! weights (so hash-based tables are identical on every node with the same
//! config) and then asked to [`Balancer::pick`] among candidates, which report
//! their live state (usable, load, latency) through [`Candidate`]. Nothing
//! here does I/O; the time a pick needs comes from [`PickCtx`], which tests
//! set.

mod hash;
mod least;
mod maglev;
mod random;
mod ring;
mod rotate;
mod weighted;

#[cfg(test)]
mod tests;

use crate::config::Algorithm;

pub use hash::{hash_bytes, hash_ip};

/// What an algorithm needs to know about a backend at pick time.
pub trait Candidate {
    /// The backend's identity, stable while it lives; used for retry
    /// exclusion.
    fn id(&self) -> u64;
    /// Healthy, admin-ready and not ejected.
    fn usable(&self) -> bool;
    /// Effective weight (≥ 1).
    fn weight(&self) -> u32;
    /// Active connections or in-flight requests, cluster-wide where known.
    fn load(&self) -> u64;
    /// Smoothed response latency in microseconds as it stands at `now_ms`
    /// (a [`crate::clock::now_ms`] time); 0 when unknown.
    fn latency_us(&self, now_ms: u64) -> f64;
}

impl<T: Candidate> Candidate for std::sync::Arc<T> {
    fn id(&self) -> u64 {
        (**self).id()
    }
    fn usable(&self) -> bool {
        (**self).usable()
    }
    fn weight(&self) -> u32 {
        (**self).weight()
    }
    fn load(&self) -> u64 {
        (**self).load()
    }
    fn latency_us(&self, now_ms: u64) -> f64 {
        (**self).latency_us(now_ms)
    }
}

/// A backend as known when a balancer is built: identity and weight.
#[derive(Debug, Clone, Copy)]
pub struct Member<'a> {
    pub name: &'a str,
    pub weight: u32,
}

/// Per-pick inputs: the request's hash key, a random source, backends
/// already tried by this request, and the time.
pub struct PickCtx {
    pub hash: Option<u64>,
    rng: fastrand::Rng,
    /// A fixed time instead of the clock's, for tests.
    now_ms: Option<u64>,
    excluded: Vec<u64>,
    /// The data-plane worker picking: state an algorithm keeps per worker
    /// (weighted rotation scores) is that worker's.
    worker: usize,
}

impl PickCtx {
    pub fn new(hash: Option<u64>) -> Self {
        Self::with_rng(hash, fastrand::Rng::new())
    }

    pub fn with_rng(hash: Option<u64>, rng: fastrand::Rng) -> Self {
        Self {
            hash,
            rng,
            now_ms: None,
            excluded: Vec::new(),
            worker: crate::dataplane::workers::current(),
        }
    }

    /// As picked on data-plane worker `worker`.
    #[cfg(test)]
    pub(crate) fn on_worker(mut self, worker: usize) -> Self {
        self.worker = worker;
        self
    }

    /// As picked at `now_ms` (a [`crate::clock::now_ms`] time).
    #[cfg(test)]
    pub(crate) fn at(mut self, now_ms: u64) -> Self {
        self.now_ms = Some(now_ms);
        self
    }

    /// The time of this pick; read from the clock only by the algorithms
    /// that need it.
    pub fn now_ms(&self) -> u64 {
        self.now_ms.unwrap_or_else(crate::clock::now_ms)
    }

    /// Never pick the backend `id` again for this request.
    pub fn exclude(&mut self, id: u64) {
        if !self.excluded.contains(&id) {
            self.excluded.push(id);
        }
    }

    pub fn allows<C: Candidate>(&self, c: &C) -> bool {
        c.usable() && !self.excluded.contains(&c.id())
    }

    fn rng(&mut self) -> &mut fastrand::Rng {
        &mut self.rng
    }
}

/// One pool group's selection algorithm and its precomputed state.
pub enum Balancer {
    RoundRobin(rotate::RoundRobin),
    WeightedRoundRobin(weighted::SmoothWeighted),
    LeastConn(least::LeastConn),
    LeastResponseTime(least::LeastResponseTime),
    P2c(random::Sampler),
    Random(random::Sampler),
    IpHash(hash::IpHash),
    ConsistentHash(ring::Ring),
    Maglev(maglev::Maglev),
}

impl Balancer {
    pub fn new(algorithm: Algorithm, members: &[Member<'_>]) -> Self {
        match algorithm {
            Algorithm::RoundRobin => Self::RoundRobin(rotate::RoundRobin::new()),
            Algorithm::WeightedRoundRobin => Self::WeightedRoundRobin(weighted::SmoothWeighted::new(members.len())),
            Algorithm::LeastConn => Self::LeastConn(least::LeastConn::new(members.len())),
            Algorithm::LeastResponseTime => Self::LeastResponseTime(least::LeastResponseTime::new()),
            Algorithm::P2c => Self::P2c(random::Sampler::default()),
            Algorithm::Random => Self::Random(random::Sampler::default()),
            Algorithm::IpHash => Self::IpHash(hash::IpHash::new(members)),
            Algorithm::ConsistentHash => Self::ConsistentHash(ring::Ring::new(members)),
            Algorithm::Maglev => Self::Maglev(maglev::Maglev::new(members)),
        }
    }

    /// Index into `cands` of the chosen backend, or `None` when no candidate
    /// is usable. `cands` must list the members in the order given to `new`.
    pub fn pick<C: Candidate>(&self, cands: &[C], ctx: &mut PickCtx) -> Option<usize> {
        match self {
            Self::RoundRobin(rr) => rr.pick(cands, ctx),
            Self::WeightedRoundRobin(w) => w.pick(cands, ctx, |_| true),
            Self::LeastConn(lc) => lc.pick(cands, ctx),
            Self::LeastResponseTime(lrt) => lrt.pick(cands, ctx),
            Self::P2c(s) => s.p2c(cands, ctx),
            Self::Random(s) => s.weighted(cands, ctx, None),
            Self::IpHash(h) => h.pick(cands, ctx),
            Self::ConsistentHash(r) => r.pick(cands, ctx),
            Self::Maglev(m) => m.pick(cands, ctx),
        }
    }
}

/// The first allowed candidate at or after `start`, wrapping around: the
/// deterministic last resort of the hash-based algorithms.
fn first_allowed_from<C: Candidate>(cands: &[C], ctx: &PickCtx, start: usize) -> Option<usize> {
    let n = cands.len();
    (0..n).map(|k| (start + k) % n).find(|&i| ctx.allows(&cands[i]))
}
