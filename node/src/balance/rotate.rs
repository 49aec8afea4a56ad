//! Plain round robin over the usable backends, ignoring weights.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::{Candidate, PickCtx};

#[derive(Default)]
pub struct RoundRobin {
    next: AtomicUsize,
}

impl RoundRobin {
    /// The next candidate in turn when it is allowed (O(1), the common
    /// case); otherwise counts the allowed ones and takes the turn's k-th,
    /// so a backend that goes down does not double its successor's share.
    pub fn pick<C: Candidate>(&self, cands: &[C], ctx: &mut PickCtx) -> Option<usize> {
        if cands.is_empty() {
            return None;
        }
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
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
#[derive(Default)]
pub struct Rotation(AtomicUsize);

impl Rotation {
    pub fn next(&self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            self.0.fetch_add(1, Ordering::Relaxed) % n
        }
    }
}
