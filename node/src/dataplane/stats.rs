//! Per-listener counters, read by the admin API.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct ListenerStats {
    /// Client connections accepted.
    pub accepted: AtomicU64,
    /// Client connections open now.
    pub active: AtomicU64,
    /// HTTP requests received.
    pub requests: AtomicU64,
    /// HTTP responses sent, by class: 1xx..5xx.
    pub responses: [AtomicU64; 5],
    /// TCP connections closed because no backend could be reached.
    pub unserved: AtomicU64,
    /// Requests (HTTP) or connections (TCP) refused by the rate limit.
    pub rate_limited: AtomicU64,
    /// Connections closed unserved because the listener was at its
    /// `max_connections`.
    pub refused: AtomicU64,
    /// Time from a request's arrival to its response headers.
    pub latency: Histogram,
}

/// Upper bounds (seconds) of the latency histogram's buckets.
pub const LATENCY_BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A Prometheus-style cumulative histogram in atomics.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Count per bucket (not cumulative); the last is +Inf.
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: std::time::Duration) {
        let secs = d.as_secs_f64();
        let i = LATENCY_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(d.as_micros() as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// (upper bound, cumulative count) per bucket, ending with +Inf.
    pub fn cumulative(&self) -> Vec<(f64, u64)> {
        let mut total = 0;
        LATENCY_BUCKETS
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(&self.buckets)
            .map(|(le, n)| {
                total += n.load(Ordering::Relaxed);
                (le, total)
            })
            .collect()
    }

    /// The upper bound of the bucket holding quantile `q` (0..1); `None`
    /// without observations, infinity when it lies beyond the last bound.
    pub fn quantile_upper_bound(&self, q: f64) -> Option<f64> {
        let cum = self.cumulative();
        let total = cum.last()?.1;
        if total == 0 {
            return None;
        }
        let rank = (q * total as f64).ceil().max(1.0) as u64;
        cum.into_iter().find(|(_, n)| *n >= rank).map(|(le, _)| le)
    }

    pub fn sum_seconds(&self) -> f64 {
        self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

impl ListenerStats {
    pub fn count_status(&self, status: http::StatusCode) {
        let class = (status.as_u16() / 100).clamp(1, 5) as usize - 1;
        self.responses[class].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a connection as open until the guard drops.
    pub fn open(self: &Arc<Self>) -> OpenConn {
        self.accepted.fetch_add(1, Ordering::Relaxed);
        self.active.fetch_add(1, Ordering::Relaxed);
        OpenConn(Arc::clone(self))
    }
}

pub struct OpenConn(Arc<ListenerStats>);

impl Drop for OpenConn {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_millis(30));
        h.observe(Duration::from_secs(60));
        let c = h.cumulative();
        assert_eq!(c[0], (0.001, 1));
        assert_eq!(c[4], (0.025, 1));
        assert_eq!(c[5], (0.05, 2));
        assert_eq!(c.last().map(|l| l.1), Some(3));
        assert!(c.last().is_some_and(|l| l.0.is_infinite()));
        assert_eq!(h.count(), 3);
        assert!((h.sum_seconds() - 60.0305).abs() < 1e-9);
        assert_eq!(h.quantile_upper_bound(0.3), Some(0.001));
        assert_eq!(h.quantile_upper_bound(0.5), Some(0.05));
        assert_eq!(h.quantile_upper_bound(0.99), Some(f64::INFINITY));
        assert_eq!(Histogram::default().quantile_upper_bound(0.5), None);
    }
}
