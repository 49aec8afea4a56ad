//! A process-wide monotonic clock in milliseconds, for timestamps kept in
//! atomics (an `Instant` does not fit one).

use std::sync::OnceLock;
use std::time::{Duration, Instant};

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Milliseconds since the process first asked; never 0, so 0 can mean
/// "unset" in an atomic.
pub fn now_ms() -> u64 {
    ms_at(Instant::now())
}

/// `at` as a `now_ms()` reading, for a caller that has read the clock
/// already. (An `at` before the epoch, which no caller has, reads as 1.)
pub fn ms_at(at: Instant) -> u64 {
    at.saturating_duration_since(epoch()).as_millis() as u64 + 1
}

/// Time since a `now_ms()` reading.
pub fn since_ms(then: u64) -> Duration {
    Duration::from_millis(now_ms().saturating_sub(then))
}
