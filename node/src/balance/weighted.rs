//! Smooth weighted round robin, as nginx does it: every pick adds each
//! usable backend's weight to its running score, takes the highest score and
//! subtracts the total from it. Over sum(weights) picks each backend gets
//! exactly its weight, interleaved (weights 5,1,1 give a a b a c a a).
//! As in nginx, every data-plane worker keeps scores of its own: each
//! worker's picks hold the weights, so across the node the shares hold to
//! within one pick per backend and worker, and no lock or cache line is
//! shared between the cores on every pick.

use std::sync::Mutex;

use super::{Candidate, PickCtx};
use crate::dataplane::workers::PerWorker;

pub struct SmoothWeighted {
    /// Running scores per worker; a worker's lock is held for one pass
    /// over the backends, uncontended but where threads share a shard.
    current: PerWorker<Mutex<Vec<i64>>>,
}

impl SmoothWeighted {
    pub fn new(members: usize) -> Self {
        Self::with_shards(members, crate::dataplane::workers::shard_count())
    }

    pub(super) fn with_shards(members: usize, shards: usize) -> Self {
        Self {
            current: PerWorker::with_count(shards, || Mutex::new(vec![0; members])),
        }
    }

    /// Picks among allowed candidates for which `eligible` holds.
    pub fn pick<C: Candidate>(&self, cands: &[C], ctx: &PickCtx, eligible: impl Fn(usize) -> bool) -> Option<usize> {
        // A poisoned lock only means another pick panicked mid-update; the
        // scores are still numbers, so keep using them.
        let mine = self.current.of(ctx.worker);
        let mut current = mine.lock().unwrap_or_else(|e| e.into_inner());
        if current.len() != cands.len() {
            current.resize(cands.len(), 0);
        }
        let mut total: i64 = 0;
        let mut best: Option<usize> = None;
        for (i, c) in cands.iter().enumerate() {
            if !eligible(i) || !ctx.allows(c) {
                continue;
            }
            let w = i64::from(c.weight().max(1));
            current[i] += w;
            total += w;
            if best.is_none_or(|b| current[i] > current[b]) {
                best = Some(i);
            }
        }
        let b = best?;
        current[b] -= total;
        Some(b)
    }
}
