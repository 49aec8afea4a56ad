//! Polling with deadlines instead of fixed sleeps.

use std::time::{Duration, Instant};

/// Polls `cond` every `every` until it returns `Some`, or fails after
/// `deadline` with `what` in the message. Returns the value and the time
/// it took.
pub fn wait_until<T>(
    what: &str,
    deadline: Duration,
    every: Duration,
    mut cond: impl FnMut() -> Option<T>,
) -> anyhow::Result<(T, Duration)> {
    let start = Instant::now();
    loop {
        if let Some(v) = cond() {
            return Ok((v, start.elapsed()));
        }
        if start.elapsed() >= deadline {
            anyhow::bail!("timed out after {deadline:?} waiting for {what}");
        }
        std::thread::sleep(every);
    }
}
