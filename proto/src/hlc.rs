//! Hybrid logical clock: 48 bits of wall-clock milliseconds and a 16-bit
//! counter. Timestamps only grow, stay close to wall time, and order
//! events across nodes whose clocks disagree slightly. Pure: the wall time
//! is an input.

use std::sync::atomic::{AtomicU64, Ordering};

const LOGICAL_BITS: u32 = 16;

/// How far ahead of local wall time a peer's timestamp may be. Clocks of
/// a cluster agree to within seconds; a timestamp further ahead is a
/// broken clock or a forgery, and observing it would drag every later
/// local timestamp (and so every write's version) along with it.
pub const MAX_AHEAD_MS: u64 = 60_000;

#[derive(Debug, Default)]
pub struct Hlc {
    last: AtomicU64,
}

/// The wall-clock milliseconds of a timestamp.
pub fn physical_ms(ts: u64) -> u64 {
    ts >> LOGICAL_BITS
}

impl Hlc {
    /// A timestamp for a local event at wall time `now_ms`.
    pub fn now(&self, now_ms: u64) -> u64 {
        let wall = now_ms << LOGICAL_BITS;
        let mut prev = self.last.load(Ordering::Relaxed);
        loop {
            let next = if wall > prev { wall } else { prev.saturating_add(1) };
            match self
                .last
                .compare_exchange_weak(prev, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return next,
                Err(actual) => prev = actual,
            }
        }
    }

    /// Takes a timestamp received from a peer into account, so later local
    /// events order after it; refuses (false) one more than
    /// [`MAX_AHEAD_MS`] ahead of the local wall time `now_ms`.
    pub fn observe(&self, remote: u64, now_ms: u64) -> bool {
        if physical_ms(remote) > now_ms.saturating_add(MAX_AHEAD_MS) {
            return false;
        }
        self.last.fetch_max(remote, Ordering::Relaxed);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_even_when_the_wall_clock_stalls_or_steps_back() {
        let h = Hlc::default();
        let a = h.now(1000);
        let b = h.now(1000);
        let c = h.now(990);
        assert!(a < b && b < c);
        assert_eq!(physical_ms(a), 1000);
        let d = h.now(2000);
        assert_eq!(d, 2000 << LOGICAL_BITS);
    }

    #[test]
    fn observing_a_later_peer_moves_local_time_past_it() {
        let h = Hlc::default();
        h.now(1000);
        assert!(h.observe(5000 << LOGICAL_BITS, 1000));
        assert!(h.now(1001) > 5000 << LOGICAL_BITS);
    }

    #[test]
    fn a_timestamp_from_far_in_the_future_is_refused() {
        let h = Hlc::default();
        let now = 1_000_000;
        assert!(!h.observe(u64::MAX, now));
        assert!(!h.observe((now + MAX_AHEAD_MS + 1) << LOGICAL_BITS, now));
        assert_eq!(physical_ms(h.now(now)), now, "local time was dragged ahead");
        assert!(h.observe((now + MAX_AHEAD_MS) << LOGICAL_BITS, now));
    }
}
