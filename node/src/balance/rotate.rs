//! Plain round robin over the usable backends, ignoring weights.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::{Candidate, PickCtx};
use crate::dataplane::workers::{self, PerWorker};

pub struct RoundRobin {
    turns: Turns,
}

impl RoundRobin {
    pub fn new() -> Self {
        Self::with_shards(workers::shard_count())
    }

    pub(super) fn with_shards(shards: usize) -> Self {
        Self {
            turns: Turns::with_shards(shards),
        }
    }

    /// The next candidate in turn when it is allowed (O(1), the common
    /// case); otherwise counts the allowed ones and takes the turn's k-th,
    /// so a backend that goes down does not double its successor's share.
    pub fn pick<C: Candidate>(&self, cands: &[C], ctx: &mut PickCtx) -> Option<usize> {
        if cands.is_empty() {
            return None;
        }
        let turn = self.turns.next(ctx.worker);
        let direct = turn % cands.len();
        if ctx.allows(&cands[direct]) {
            return Some(direct);
        }
        let usable = cands.iter().filter(|c| ctx.allows(*c)).count();
        if usable == 0 {
            return None;
        }
        let k = turn % usable;
        let mut allowed = cands.iter().enumerate().filter(|(_, c)| ctx.allows(*c)).map(|(i, _)| i);
        let first = allowed.next()?;
        // Health can flip between the two passes: fall back to the first.
        Some(if k == 0 {
            first
        } else {
            allowed.nth(k - 1).unwrap_or(first)
        })
    }
}

/// A rotating start position, used to break ties evenly.
pub struct Rotation(Turns);

impl Rotation {
    pub fn new() -> Self {
        Self(Turns::with_shards(workers::shard_count()))
    }

    pub fn next(&self, n: usize, ctx: &PickCtx) -> usize {
        if n == 0 { 0 } else { self.0.next(ctx.worker) % n }
    }
}

/// A turn counter per data-plane worker. A single counter would be written
/// by every core on every pick, taking its cache line from the other cores
/// each time; as with nginx's per-worker round robin, each worker turns on
/// its own, and across the node the shares still hold to within one turn
/// per worker and backend.
struct Turns(PerWorker<AtomicUsize>);

impl Turns {
    fn with_shards(shards: usize) -> Self {
        Self(PerWorker::with_count(shards, AtomicUsize::default))
    }

    /// The worker's next turn. An atomic add, not a load and store, because
    /// threads beyond the shard count share a counter.
    fn next(&self, worker: usize) -> usize {
        self.0.of(worker).fetch_add(1, Ordering::Relaxed)
    }
}
