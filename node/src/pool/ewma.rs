//! Exponentially weighted moving average of latency, updated lock-free.

use std::sync::atomic::{AtomicU64, Ordering};

/// Weight of a new sample. 0.2 follows a shift in a handful of requests
/// without jumping on a single outlier.
pub const ALPHA: f64 = 0.2;

/// The pure update rule; the first sample seeds the average.
pub fn next(current: f64, sample: f64) -> f64 {
    if current <= 0.0 {
        sample
    } else {
        current + ALPHA * (sample - current)
    }
}

/// An EWMA shared between threads: an f64 in an atomic, updated by CAS.
#[derive(Debug, Default)]
pub struct AtomicEwma(AtomicU64);

impl AtomicEwma {
    pub fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }

    pub fn observe(&self, sample: f64) {
        // fetch_update retries on contention; the closure never fails.
        let _ = self.0.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
            Some(next(f64::from_bits(bits), sample).to_bits())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_then_converges() {
        let e = AtomicEwma::default();
        assert_eq!(e.get(), 0.0);
        e.observe(100.0);
        assert_eq!(e.get(), 100.0);
        e.observe(200.0);
        assert!((e.get() - 120.0).abs() < 1e-9);
        for _ in 0..100 {
            e.observe(50.0);
        }
        assert!((e.get() - 50.0).abs() < 0.01);
    }
}
