//! Load-aware algorithms: least connections (weighted) and least response
//! time (latency EWMA × in-flight).

use std::cmp::Ordering;

use super::rotate::Rotation;
use super::weighted::SmoothWeighted;
use super::{Candidate, PickCtx};

/// Fewest active connections per unit of weight; ties (e.g. an idle pool)
/// are broken by smooth weighted round robin, as nginx does, so weights
/// still hold when every backend is idle.
pub struct LeastConn {
    tie_break: SmoothWeighted,
}

impl LeastConn {
    pub fn new(members: usize) -> Self {
        Self {
            tie_break: SmoothWeighted::new(members),
        }
    }

    pub fn pick<C: Candidate>(&self, cands: &[C], ctx: &mut PickCtx) -> Option<usize> {
        let mut best: Option<(u64, u64)> = None; // (load, weight) of the minimum
        for c in cands.iter().filter(|c| ctx.allows(*c)) {
            let lw = (c.load(), u64::from(c.weight().max(1)));
            if best.is_none_or(|b| ratio_cmp(lw, b) == Ordering::Less) {
                best = Some(lw);
            }
        }
        let best = best?;
        self.tie_break.pick(cands, ctx, |i| {
            let c = &cands[i];
            ratio_cmp((c.load(), u64::from(c.weight().max(1))), best) == Ordering::Equal
        })
    }
}

/// Compares load_a/weight_a with load_b/weight_b without division.
fn ratio_cmp((la, wa): (u64, u64), (lb, wb): (u64, u64)) -> Ordering {
    (u128::from(la) * u128::from(wb)).cmp(&(u128::from(lb) * u128::from(wa)))
}

pub(super) fn load_per_weight_cmp<C: Candidate>(a: &C, b: &C) -> Ordering {
    ratio_cmp(
        (a.load(), u64::from(a.weight().max(1))),
        (b.load(), u64::from(b.weight().max(1))),
    )
}

/// Lowest expected wait: latency EWMA × (in-flight + 1) / weight. Backends
/// without a latency sample yet score 0, so each gets tried early.
#[derive(Default)]
pub struct LeastResponseTime {
    rotation: Rotation,
}

impl LeastResponseTime {
    pub fn pick<C: Candidate>(&self, cands: &[C], ctx: &mut PickCtx) -> Option<usize> {
        let n = cands.len();
        let start = self.rotation.next(n);
        let mut best: Option<(usize, f64)> = None;
        for k in 0..n {
            let i = (start + k) % n;
            let c = &cands[i];
            if !ctx.allows(c) {
                continue;
            }
            let score = c.latency_us() * (c.load() as f64 + 1.0) / f64::from(c.weight().max(1));
            if best.is_none_or(|(_, s)| score < s) {
                best = Some((i, score));
            }
        }
        best.map(|(i, _)| i)
    }
}
