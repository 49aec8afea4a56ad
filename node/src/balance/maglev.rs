//! Maglev hashing (Eisenbud et al., NSDI 2016): a lookup table of prime size
//! M filled from each backend's permutation of slots, so every backend owns
//! about M/N slots and removing one moves little more than its own keys.
//! Weights scale how many slots a backend claims per round. A key whose
//! backend is unusable probes the following slots, which spreads that
//! backend's keys over the others and moves no other key.

use xxhash_rust::xxh3::xxh3_64_with_seed;

use super::{Candidate, Member, PickCtx, first_allowed_from};

const OFFSET_SEED: u64 = 0x5348_4f41_4c00_0003;
const SKIP_SEED: u64 = 0x5348_4f41_4c00_0004;
const MIN_TABLE: u64 = 65_537;
/// Slots per backend aimed for; the paper suggests M ≥ 100 N.
const SLOTS_PER_BACKEND: u64 = 100;
const PROBES: usize = 64;

pub struct Maglev {
    table: Vec<u32>,
}

impl Maglev {
    pub fn new(members: &[Member<'_>]) -> Self {
        let n = members.len();
        if n == 0 {
            return Self { table: Vec::new() };
        }
        let m = next_prime(MIN_TABLE.max(SLOTS_PER_BACKEND * n as u64));
        let perms: Vec<(u64, u64)> = members
            .iter()
            .map(|b| {
                let offset = xxh3_64_with_seed(b.name.as_bytes(), OFFSET_SEED) % m;
                let skip = xxh3_64_with_seed(b.name.as_bytes(), SKIP_SEED) % (m - 1) + 1;
                (offset, skip)
            })
            .collect();
        let max_weight = members.iter().map(|b| u64::from(b.weight.max(1))).max().unwrap_or(1);
        let mut next = vec![0u64; n]; // next permutation index per backend
        let mut claimed = vec![0u64; n];
        let mut table = vec![u32::MAX; m as usize];
        let mut filled = 0u64;
        let mut round = 0u64;
        while filled < m {
            round += 1;
            for (i, b) in members.iter().enumerate() {
                // Weighted rounds: backend i may hold round·w/max_w slots.
                let quota = round * u64::from(b.weight.max(1)) / max_weight;
                while claimed[i] < quota && filled < m {
                    let (offset, skip) = perms[i];
                    let mut slot = (offset + next[i] * skip) % m;
                    while table[slot as usize] != u32::MAX {
                        next[i] += 1;
                        slot = (offset + next[i] * skip) % m;
                    }
                    table[slot as usize] = i as u32;
                    next[i] += 1;
                    claimed[i] += 1;
                    filled += 1;
                }
            }
        }
        Self { table }
    }

    pub fn pick<C: Candidate>(&self, cands: &[C], ctx: &mut PickCtx) -> Option<usize> {
        let m = self.table.len();
        if m == 0 {
            return None;
        }
        let slot = (ctx.hash.unwrap_or(0) % m as u64) as usize;
        for k in 0..PROBES {
            let i = self.table[(slot + k) % m] as usize;
            if cands.get(i).is_some_and(|c| ctx.allows(c)) {
                return Some(i);
            }
        }
        first_allowed_from(cands, ctx, self.table[slot] as usize)
    }

    #[cfg(test)]
    pub fn table_len(&self) -> usize {
        self.table.len()
    }
}

fn next_prime(mut n: u64) -> u64 {
    while !is_prime(n) {
        n += 1;
    }
    n
}

fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2;
    while d * d <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 1;
    }
    true
}
