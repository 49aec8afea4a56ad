//! A backend's live state: identity, health, admin state and counters. All
//! fields that change at run time are atomics, read on every pick without a
//! lock, and published as they are by the admin API (and later gossip).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;

use super::ewma::AtomicEwma;
use crate::balance::Candidate;

/// Operator-set state: `drain` takes no new work but finishes what it has;
/// `maint` also stops health checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AdminState {
    Ready = 0,
    Drain = 1,
    Maint = 2,
}

impl AdminState {
    fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::Drain,
            2 => Self::Maint,
            _ => Self::Ready,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ready => "ready",
            Self::Drain => "drain",
            Self::Maint => "maint",
        }
    }
}

#[derive(Debug)]
pub struct Backend {
    pub name: Arc<str>,
    /// Position in the pool; stable for the pool's lifetime.
    pub slot: usize,
    /// The address as configured (may be a host name).
    pub configured: String,
    /// The resolved address traffic goes to.
    pub addr: SocketAddr,
    /// `addr` as the authority of HTTP request URIs.
    pub authority: http::uri::Authority,
    pub weight: u32,
    pub backup: bool,
    healthy: AtomicBool,
    admin: AtomicU8,
    in_flight: AtomicU64,
    /// Connections peers report to this backend (filled by the cluster).
    cluster_load: AtomicU64,
    latency_us: AtomicEwma,
    pub counters: BackendCounters,
}

/// Monotonic counters, exported as they are.
#[derive(Debug, Default)]
pub struct BackendCounters {
    /// Requests (HTTP) or connections (TCP) sent to the backend.
    pub sent: AtomicU64,
    /// Connection attempts that failed.
    pub connect_failures: AtomicU64,
    /// Requests that failed after connecting (reset, timeout, bad response).
    pub failures: AtomicU64,
}

impl Backend {
    pub fn new(name: &str, slot: usize, configured: String, addr: SocketAddr, weight: u32, backup: bool) -> Self {
        Self {
            name: Arc::from(name),
            slot,
            configured,
            addr,
            // A socket address always formats as a valid authority.
            authority: http::uri::Authority::try_from(addr.to_string().as_str())
                .unwrap_or_else(|_| http::uri::Authority::from_static("invalid")),
            weight,
            backup,
            healthy: AtomicBool::new(true),
            admin: AtomicU8::new(AdminState::Ready as u8),
            in_flight: AtomicU64::new(0),
            cluster_load: AtomicU64::new(0),
            latency_us: AtomicEwma::default(),
            counters: BackendCounters::default(),
        }
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Sets the health verdict; returns whether it changed.
    pub fn set_healthy(&self, healthy: bool) -> bool {
        self.healthy.swap(healthy, Ordering::Relaxed) != healthy
    }

    pub fn admin_state(&self) -> AdminState {
        AdminState::from_u8(self.admin.load(Ordering::Relaxed))
    }

    pub fn set_admin_state(&self, state: AdminState) {
        self.admin.store(state as u8, Ordering::Relaxed);
    }

    /// Local active connections (TCP) plus in-flight requests (HTTP).
    pub fn active(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub fn cluster_load(&self) -> u64 {
        self.cluster_load.load(Ordering::Relaxed)
    }

    pub fn set_cluster_load(&self, load: u64) {
        self.cluster_load.store(load, Ordering::Relaxed);
    }

    pub fn latency_ewma_us(&self) -> f64 {
        self.latency_us.get()
    }

    pub fn observe_latency(&self, latency: Duration) {
        self.latency_us.observe(latency.as_secs_f64() * 1e6);
    }

    /// Counts one unit of work until the returned guard drops.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.counters.sent.fetch_add(1, Ordering::Relaxed);
        InFlight(Arc::clone(self))
    }
}

impl Candidate for Backend {
    fn slot(&self) -> usize {
        self.slot
    }
    fn usable(&self) -> bool {
        self.is_healthy() && self.admin_state() == AdminState::Ready
    }
    fn weight(&self) -> u32 {
        self.weight
    }
    fn load(&self) -> u64 {
        self.active() + self.cluster_load()
    }
    fn latency_us(&self) -> f64 {
        self.latency_ewma_us()
    }
}

/// Decrements the backend's in-flight count when dropped, however the
/// request or connection ends.
#[derive(Debug)]
pub struct InFlight(Arc<Backend>);

impl InFlight {
    pub fn backend(&self) -> &Arc<Backend> {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}
