//! Stable hashing (xxh3, fixed seeds: identical on every node and release)
//! and the ip_hash algorithm: the key's hash indexes the cumulative weights.

use std::net::IpAddr;

use xxhash_rust::xxh3::xxh3_64_with_seed;

use super::{Candidate, Member, PickCtx, first_allowed_from};

const KEY_SEED: u64 = 0x5348_4f41_4c00_0001; // "SHOAL" + 1

/// Hash of a request key (header value, path, cookie).
pub fn hash_bytes(bytes: &[u8]) -> u64 {
    xxh3_64_with_seed(bytes, KEY_SEED)
}

/// Hash of a client address; IPv4-mapped IPv6 addresses hash as IPv4.
pub fn hash_ip(ip: IpAddr) -> u64 {
    match ip.to_canonical() {
        IpAddr::V4(v4) => hash_bytes(&v4.octets()),
        IpAddr::V6(v6) => hash_bytes(&v6.octets()),
    }
}

/// Mixes `h` with a round number, for rehashing past unusable backends.
pub(super) fn rehash(h: u64, round: u64) -> u64 {
    xxh3_64_with_seed(&h.to_le_bytes(), KEY_SEED ^ round)
}

/// Hash modulo total weight. Adding or removing a backend remaps most keys
/// (use consistent_hash or maglev to avoid that); a key whose backend is
/// unusable is rehashed, like nginx does, so the others keep their keys.
pub struct IpHash {
    /// Cumulative weights: member i owns [cum[i-1], cum[i]).
    cumulative: Vec<u64>,
}

const REHASH_ROUNDS: u64 = 20;

impl IpHash {
    pub fn new(members: &[Member<'_>]) -> Self {
        let mut sum = 0u64;
        let cumulative = members
            .iter()
            .map(|m| {
                sum += u64::from(m.weight.max(1));
                sum
            })
            .collect();
        Self { cumulative }
    }

    fn owner(&self, h: u64) -> Option<usize> {
        let total = *self.cumulative.last()?;
        let point = h % total;
        Some(self.cumulative.partition_point(|&c| c <= point))
    }

    pub fn pick<C: Candidate>(&self, cands: &[C], ctx: &mut PickCtx) -> Option<usize> {
        let h = ctx.hash.unwrap_or(0);
        let mut key = h;
        for round in 0..REHASH_ROUNDS {
            let i = self.owner(key)?;
            if cands.get(i).is_some_and(|c| ctx.allows(c)) {
                return Some(i);
            }
            key = rehash(h, round + 1);
        }
        first_allowed_from(cands, ctx, self.owner(h)?)
    }
}
