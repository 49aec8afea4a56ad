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
    epoch().elapsed().as_millis() as u64 + 1
}

/// Time since a `now_ms()` reading.
pub fn since_ms(then: u64) -> Duration {
    Duration::from_millis(now_ms().saturating_sub(then))
}
