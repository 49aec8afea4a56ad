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
