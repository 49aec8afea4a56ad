//! Random choices: weighted random, and power of two choices (two weighted
//! random candidates, the less loaded per weight wins).

use std::cmp::Ordering;

use super::least::load_per_weight_cmp;
use super::{Candidate, PickCtx};

/// A weighted random allowed candidate, never `skip`.
pub fn weighted<C: Candidate>(cands: &[C], ctx: &mut PickCtx, skip: Option<usize>) -> Option<usize> {
    let allowed = |i: usize, c: &C| Some(i) != skip && ctx.allows(c);
    let total: u64 = cands
        .iter()
        .enumerate()
        .filter(|(i, c)| allowed(*i, c))
        .map(|(_, c)| u64::from(c.weight().max(1)))
        .sum();
    if total == 0 {
        return None;
    }
    let mut r = ctx.rng().u64(0..total);
    let mut last = None;
    for (i, c) in cands.iter().enumerate() {
        if !(Some(i) != skip && ctx.allows(c)) {
            continue;
        }
        let w = u64::from(c.weight().max(1));
        if r < w {
            return Some(i);
        }
        r -= w;
        last = Some(i);
    }
    // Only reachable if a weight changed between the two passes.
    last
}

/// Power of two choices: sample two distinct candidates by weight, keep the
/// one with less load per weight (the first sampled on a tie, so an idle
/// pool is still balanced by weight).
pub fn p2c<C: Candidate>(cands: &[C], ctx: &mut PickCtx) -> Option<usize> {
    let first = weighted(cands, ctx, None)?;
    let Some(second) = weighted(cands, ctx, Some(first)) else {
        return Some(first);
    };
    match load_per_weight_cmp(&cands[second], &cands[first]) {
        Ordering::Less => Some(second),
        _ => Some(first),
    }
}
