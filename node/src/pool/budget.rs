//! Retry budget, as Envoy does it: retries in flight may be at most a share
//! of requests in flight (or a small floor), so retries cannot multiply the
//! load on a pool that is already failing.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::config::RetryBudgetConfig;
use crate::dataplane::workers::PerWorker;

#[derive(Debug)]
pub struct RetryBudget {
    percent: u64,
    min_retries: u64,
    /// Requests in flight, counted per data-plane worker (every request
    /// counts itself in and out; only a retry reads the sum).
    active_requests: PerWorker<AtomicU64>,
    active_retries: AtomicU64,
    /// Retries granted, and refused for lack of budget.
    pub granted: AtomicU64,
    pub denied: AtomicU64,
}

impl RetryBudget {
    pub fn new(cfg: &RetryBudgetConfig) -> Self {
        Self {
            percent: u64::from(cfg.percent),
            min_retries: u64::from(cfg.min_retries),
            active_requests: PerWorker::new(AtomicU64::default),
            active_retries: AtomicU64::new(0),
            granted: AtomicU64::new(0),
            denied: AtomicU64::new(0),
        }
    }

    pub fn same_config(&self, cfg: &RetryBudgetConfig) -> bool {
        self.percent == u64::from(cfg.percent) && self.min_retries == u64::from(cfg.min_retries)
    }

    /// Counts a request in flight until the guard drops.
    pub fn request(&self) -> RequestGuard<'_> {
        let counter = self.active_requests.mine();
        counter.fetch_add(1, Ordering::Relaxed);
        RequestGuard(counter)
    }

    fn requests_in_flight(&self) -> u64 {
        self.active_requests.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// Grants a retry if the budget allows; it counts until the guard drops.
    pub fn try_retry(&self) -> Option<RetryGuard<'_>> {
        let requests = self.requests_in_flight();
        let allowed = (requests * self.percent / 100).max(self.min_retries);
        let granted = self
            .active_retries
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |r| (r < allowed).then_some(r + 1))
            .is_ok();
        if granted {
            self.granted.fetch_add(1, Ordering::Relaxed);
            Some(RetryGuard(self))
        } else {
            self.denied.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

/// Counts its request out of the worker's counter it was counted into,
/// wherever it drops.
pub struct RequestGuard<'a>(&'a AtomicU64);

impl Drop for RequestGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

pub struct RetryGuard<'a>(&'a RetryBudget);

impl RetryGuard<'_> {
    /// The retry did not happen after all (no backend to take it): it no
    /// longer counts as granted.
    pub fn retract(self) {
        self.0.granted.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Drop for RetryGuard<'_> {
    fn drop(&mut self) {
        self.0.active_retries.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(percent: u32, min_retries: u32) -> RetryBudget {
        RetryBudget::new(&RetryBudgetConfig { percent, min_retries })
    }

    #[test]
    fn a_quiet_pool_may_always_retry_up_to_the_floor() {
        let b = budget(20, 3);
        let _req = b.request();
        let r1 = b.try_retry();
        let r2 = b.try_retry();
        let r3 = b.try_retry();
        assert!(r1.is_some() && r2.is_some() && r3.is_some());
        assert!(
            b.try_retry().is_none(),
            "a fourth concurrent retry exceeds the floor of 3"
        );
        drop(r1);
        assert!(b.try_retry().is_some(), "a finished retry frees budget");
    }

    #[test]
    fn a_busy_pool_retries_at_most_its_share() {
        let b = budget(20, 3);
        let requests: Vec<_> = (0..100).map(|_| b.request()).collect();
        let retries: Vec<_> = (0..50).filter_map(|_| b.try_retry()).collect();
        assert_eq!(retries.len(), 20);
        assert_eq!(b.denied.load(Ordering::Relaxed), 30);
        drop(retries);
        drop(requests);
        assert_eq!(b.requests_in_flight(), 0);
        assert_eq!(b.active_retries.load(Ordering::Relaxed), 0);
    }
}
