//! Random choices: weighted random, and power of two choices (two weighted
//! random candidates, the less loaded per weight wins).
//!
//! Both sample by rejection, so a pick costs the same at 3 backends and at
//! 10 000: draw a candidate uniformly and keep it with probability
//! weight / bound, where the bound is the largest weight seen. Accepted
//! draws are exactly weight-proportional while no weight exceeds the bound;
//! a draw above it, or too many rejections (most backends down), fall back
//! to an exact scan, which also raises the bound.

use std::cmp::Ordering;
use std::sync::atomic::{AtomicU32, Ordering as AtomicOrdering};

use super::least::load_per_weight_cmp;
use super::{Candidate, PickCtx};

/// Draws before a pick gives up sampling and scans. A draw is kept with
/// probability (usable share) × (mean weight / largest weight): with every
/// backend up and weights 1–4 at least 1/4, so 16 draws all fail in about
/// 1% of picks at worst, and in none with equal weights.
const DRAWS: usize = 16;

/// Weighted random sampling over a pool's candidates.
#[derive(Debug, Default)]
pub struct Sampler {
    /// The largest weight any scan has seen; 0 before the first pick.
    bound: AtomicU32,
}

impl Sampler {
    /// A weighted random allowed candidate, never `skip`.
    pub fn weighted<C: Candidate>(&self, cands: &[C], ctx: &mut PickCtx, skip: Option<usize>) -> Option<usize> {
        let bound = self.bound.load(AtomicOrdering::Relaxed);
        if bound > 0 && !cands.is_empty() {
            for _ in 0..DRAWS {
                let i = ctx.rng().usize(0..cands.len());
                let c = &cands[i];
                if Some(i) == skip || !ctx.allows(c) {
                    continue;
                }
                let w = c.weight().max(1);
                if w > bound {
                    // The bound is stale (a weight grew): this pick scans.
                    break;
                }
                if ctx.rng().u32(0..bound) < w {
                    return Some(i);
                }
            }
        }
        self.scan(cands, ctx, skip)
    }

    /// Power of two choices: sample two distinct candidates by weight, keep
    /// the one with less load per weight (the first sampled on a tie, so an
    /// idle pool is still balanced by weight).
    pub fn p2c<C: Candidate>(&self, cands: &[C], ctx: &mut PickCtx) -> Option<usize> {
        let first = self.weighted(cands, ctx, None)?;
        let Some(second) = self.weighted(cands, ctx, Some(first)) else {
            return Some(first);
        };
        match load_per_weight_cmp(&cands[second], &cands[first]) {
            Ordering::Less => Some(second),
            _ => Some(first),
        }
    }

    /// The exact weighted choice by a scan; records the largest weight.
    fn scan<C: Candidate>(&self, cands: &[C], ctx: &mut PickCtx, skip: Option<usize>) -> Option<usize> {
        let mut total = 0u64;
        let mut largest = 0u32;
        for (i, c) in cands.iter().enumerate() {
            let w = c.weight().max(1);
            largest = largest.max(w);
            if Some(i) != skip && ctx.allows(c) {
                total += u64::from(w);
            }
        }
        // Read first: the bound is shared by every worker, and most scans
        // find nothing larger.
        if largest > self.bound.load(AtomicOrdering::Relaxed) {
            self.bound.fetch_max(largest, AtomicOrdering::Relaxed);
        }
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
}
