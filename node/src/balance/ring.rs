//! Consistent hashing on a ring with virtual nodes. Each backend gets points
//! in proportion to its weight (about 160 per backend of average weight); a
//! key goes to the first point at or after its hash, skipping unusable
//! backends, so only the keys of a backend that leaves move.

use xxhash_rust::xxh3::xxh3_64_with_seed;

use super::{Candidate, Member, PickCtx};

const RING_SEED: u64 = 0x5348_4f41_4c00_0002;
const POINTS_PER_BACKEND: u64 = 160;

pub struct Ring {
    /// (point, member index), sorted by point then index.
    points: Vec<(u64, u32)>,
}

impl Ring {
    pub fn new(members: &[Member<'_>]) -> Self {
        let n = members.len() as u64;
        let total_weight: u64 = members.iter().map(|m| u64::from(m.weight.max(1))).sum();
        let mut points = Vec::new();
        for (i, m) in members.iter().enumerate() {
            let share = (POINTS_PER_BACKEND * n * u64::from(m.weight.max(1))).div_ceil(total_weight.max(1));
            for v in 0..share.max(1) {
                let label = format!("{}#{v}", m.name);
                points.push((xxh3_64_with_seed(label.as_bytes(), RING_SEED), i as u32));
            }
        }
        points.sort_unstable();
        Self { points }
    }

    pub fn pick<C: Candidate>(&self, cands: &[C], ctx: &mut PickCtx) -> Option<usize> {
        let h = ctx.hash.unwrap_or(0);
        let n = self.points.len();
        let start = self.points.partition_point(|&(p, _)| p < h);
        (0..n)
            .map(|k| self.points[(start + k) % n].1 as usize)
            .find(|&i| cands.get(i).is_some_and(|c| ctx.allows(c)))
    }
}
