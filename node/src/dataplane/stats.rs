//! Per-listener counters, read by the admin API.
//!
//! Every data-plane worker counts into a shard of its own, on cache lines
//! of its own: a counter written by both workers on every request would
//! move its cache line between the cores each time. Readers add the
//! shards up.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::workers::PerWorker;

/// One worker's counts.
#[derive(Debug, Default)]
pub struct Counters {
    /// Client connections accepted (counted by `ListenerStats::open`
    /// only, so that every accept has its close).
    accepted: AtomicU64,
    /// Client connections closed (open = accepted - closed).
    closed: AtomicU64,
    /// HTTP requests received.
    pub requests: AtomicU64,
    /// HTTP responses sent, by class: 1xx..5xx.
    responses: [AtomicU64; 5],
    /// TCP connections closed because no backend could be reached.
    pub unserved: AtomicU64,
    /// Requests (HTTP) or connections (TCP) refused by the rate limit.
    pub rate_limited: AtomicU64,
    /// Connections closed unserved because the listener was at its
    /// `max_connections`.
    pub refused: AtomicU64,
    /// Connections served on an io_uring ring thread: TCP ones, and HTTP
    /// ones that moved there once they spoke.
    pub on_ring: AtomicU64,
    /// Time from a request's arrival to its response headers.
    pub latency: Histogram,
}

impl Counters {
    pub fn count_status(&self, status: http::StatusCode) {
        let class = (status.as_u16() / 100).clamp(1, 5) as usize - 1;
        self.responses[class].fetch_add(1, Ordering::Relaxed);
    }
}

/// A listener's counters, sharded by data-plane worker.
#[derive(Debug)]
pub struct ListenerStats {
    shards: PerWorker<Counters>,
}

impl Default for ListenerStats {
    fn default() -> Self {
        Self {
            shards: PerWorker::new(Counters::default),
        }
    }
}

/// A listener's counters summed over the workers, at one moment.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ListenerTotals {
    pub accepted: u64,
    /// Client connections open now.
    pub active: u64,
    pub requests: u64,
    /// By class: 1xx..5xx.
    pub responses: [u64; 5],
    pub unserved: u64,
    pub rate_limited: u64,
    pub refused: u64,
    pub on_ring: u64,
    pub latency: HistogramCounts,
}

impl ListenerStats {
    /// The calling worker's counters.
    pub fn here(&self) -> &Counters {
        self.shards.mine()
    }

    pub fn totals(&self) -> ListenerTotals {
        let mut t = ListenerTotals::default();
        // Every shard's closes first, with the ordering that makes the
        // accepts before them visible (whichever shard counted them): no
        // close is seen without its accept, so the open count never dips.
        let closed: u64 = self.shards.iter().map(|s| s.closed.load(Ordering::Acquire)).sum();
        for s in self.shards.iter() {
            let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
            t.accepted += get(&s.accepted);
            t.requests += get(&s.requests);
            for (sum, n) in t.responses.iter_mut().zip(&s.responses) {
                *sum += get(n);
            }
            t.unserved += get(&s.unserved);
            t.rate_limited += get(&s.rate_limited);
            t.refused += get(&s.refused);
            t.on_ring += get(&s.on_ring);
            t.latency.add(&s.latency);
        }
        t.active = t.accepted.saturating_sub(closed);
        t
    }

    /// Counts a connection as open until the guard drops.
    pub fn open(self: &Arc<Self>) -> OpenConn {
        self.here().accepted.fetch_add(1, Ordering::Relaxed);
        OpenConn(Arc::clone(self))
    }
}

/// Counts its connection as open. The close is counted by the worker the
/// guard drops on (the accepting one: a connection's task stays on its
/// worker); only the sum over the shards means anything. The guard holds
/// no more than the reference: it lives in every idle connection's task.
pub struct OpenConn(Arc<ListenerStats>);

impl Drop for OpenConn {
    fn drop(&mut self) {
        self.0.here().closed.fetch_add(1, Ordering::Release);
    }
}

/// Upper bounds (seconds) of the latency histogram's buckets.
pub const LATENCY_BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A Prometheus-style histogram in atomics.
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

    /// The counts so far.
    pub fn counts(&self) -> HistogramCounts {
        let mut c = HistogramCounts::default();
        c.add(self);
        c
    }
}

/// A histogram's counts at one moment, or the sum of several histograms'.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct HistogramCounts {
    buckets: [u64; LATENCY_BUCKETS.len() + 1],
    sum_micros: u64,
    count: u64,
}

impl HistogramCounts {
    /// Adds `h`'s counts.
    pub fn add(&mut self, h: &Histogram) {
        for (sum, n) in self.buckets.iter_mut().zip(&h.buckets) {
            *sum += n.load(Ordering::Relaxed);
        }
        self.sum_micros += h.sum_micros.load(Ordering::Relaxed);
        self.count += h.count.load(Ordering::Relaxed);
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
                total += n;
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
        self.sum_micros as f64 / 1e6
    }

    pub fn count(&self) -> u64 {
        self.count
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
        let h = h.counts();
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
        assert_eq!(Histogram::default().counts().quantile_upper_bound(0.5), None);
    }

    #[tokio::test]
    async fn the_workers_counts_add_up() -> std::io::Result<()> {
        let stats = Arc::new(ListenerStats::default());
        let workers = crate::dataplane::workers::Workers::start(2)?;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        workers.spawn_each(|i| {
            let (stats, tx) = (Arc::clone(&stats), tx.clone());
            async move {
                let open = stats.open();
                for _ in 0..3 {
                    stats.here().requests.fetch_add(1, Ordering::Relaxed);
                    stats.here().count_status(http::StatusCode::OK);
                    stats.here().latency.observe(Duration::from_millis(2));
                }
                // Worker 1's connection closes on the test's thread.
                let _ = tx.send((i, open));
            }
        });
        let mut opened = Vec::new();
        for _ in 0..2 {
            opened.extend(rx.recv().await);
        }
        opened.retain(|(i, _)| *i == 1);
        let t = stats.totals();
        assert_eq!((t.accepted, t.active, t.requests), (2, 1, 6));
        assert_eq!(t.responses, [0, 6, 0, 0, 0]);
        assert_eq!(t.latency.count(), 6);
        assert_eq!(t.latency.quantile_upper_bound(0.5), Some(0.0025));
        drop(opened);
        assert_eq!(stats.totals().active, 0);
        Ok(())
    }
}
