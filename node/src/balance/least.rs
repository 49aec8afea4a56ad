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
        // (index, load, weight) of the minimum, and how many share it.
        let mut best: Option<(usize, u64, u64)> = None;
        let mut tied_with_best = 0;
        for (i, c) in cands.iter().enumerate().filter(|(_, c)| ctx.allows(*c)) {
            let (load, weight) = (c.load(), u64::from(c.weight().max(1)));
            match best.map(|(_, bl, bw)| ratio_cmp((load, weight), (bl, bw))) {
                None | Some(Ordering::Less) => {
                    best = Some((i, load, weight));
                    tied_with_best = 1;
                }
                Some(Ordering::Equal) => tied_with_best += 1,
                Some(Ordering::Greater) => {}
            }
        }
        let (min_index, bl, bw) = best?;
        if tied_with_best == 1 {
            // No tie: the rotation would pick it too, and with only one
            // candidate its scores come out unchanged (+weight −weight).
            return Some(min_index);
        }
        // Loads move under our feet; if none still ties with the minimum we
        // saw, the minimum's backend is still a fine choice.
        let tied = self.tie_break.pick(cands, ctx, |i| {
            let c = &cands[i];
            ratio_cmp((c.load(), u64::from(c.weight().max(1))), (bl, bw)) == Ordering::Equal
        });
        Some(tied.unwrap_or(min_index))
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

/// Lowest expected wait: latency EWMA × (in-flight + 1) / weight. A backend
/// without a latency sample counts as nearly instant, so it is tried at once
/// and sampled, while its load still counts against it. The EWMA decays
/// with time since its last sample (see `pool::ewma`), so a backend that
/// scored badly once is tried again rather than starved for good.
pub struct LeastResponseTime {
    rotation: Rotation,
}

/// Stand-in latency of a backend without samples.
const UNSAMPLED_US: f64 = 1.0;

impl LeastResponseTime {
    pub fn new() -> Self {
        Self {
            rotation: Rotation::new(),
        }
    }

    pub fn pick<C: Candidate>(&self, cands: &[C], ctx: &mut PickCtx) -> Option<usize> {
        let n = cands.len();
        let start = self.rotation.next(n, ctx);
        let now_ms = ctx.now_ms();
        let mut best: Option<(usize, f64)> = None;
        for k in 0..n {
            let i = (start + k) % n;
            let c = &cands[i];
            if !ctx.allows(c) {
                continue;
            }
            let latency = match c.latency_us(now_ms) {
                l if l > 0.0 => l,
                _ => UNSAMPLED_US,
            };
            let score = latency * (c.load() as f64 + 1.0) / f64::from(c.weight().max(1));
            if best.is_none_or(|(_, s)| score < s) {
                best = Some((i, score));
            }
        }
        best.map(|(i, _)| i)
    }
}
