//! A backend's live state: identity, health, admin state, passive-health
//! ejection, slow-start ramp, circuit-breaker limits and counters. Fields
//! that change at run time are atomics, read on every pick without a lock.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_utils::CachePadded;
use serde::Serialize;
use tokio::sync::Notify;

use super::ewma::AtomicEwma;
use super::outlier::EjectionHistory;
use super::ramp::{WEIGHT_SCALE, ramped_weight};
use crate::balance::Candidate;
use crate::clock;

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

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "ready" => Some(Self::Ready),
            "drain" => Some(Self::Drain),
            "maint" => Some(Self::Maint),
            _ => None,
        }
    }
}

/// The parts of a backend's configuration a reload may change in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendParams {
    pub weight: u32,
    pub backup: bool,
    /// 0 = unlimited.
    pub max_connections: u32,
    pub max_pending: u32,
    pub slow_start: Option<Duration>,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

#[derive(Debug)]
pub struct Backend {
    /// Unique in the process, kept across reloads: retries exclude by it.
    pub id: u64,
    pub name: Arc<str>,
    /// The address as configured (may be a host name).
    pub configured: String,
    /// The resolved address traffic goes to.
    pub addr: SocketAddr,
    /// `addr` as the authority of HTTP request URIs.
    pub authority: http::uri::Authority,
    weight: AtomicU32,
    backup: AtomicBool,
    healthy: AtomicBool,
    admin: AtomicU8,
    ejected: AtomicBool,
    consecutive_failures: AtomicU32,
    ejections: Mutex<EjectionHistory>,
    /// `clock::now_ms()` when a slow-start ramp began; 0 = not ramping.
    ramp_from: AtomicU64,
    slow_start_ms: AtomicU64,
    max_connections: AtomicU32,
    max_pending: AtomicU32,
    pending: AtomicU32,
    slot_freed: Notify,
    /// Connections peers report to this backend (filled by the cluster).
    cluster_load: AtomicU64,
    /// Apart from the fields above, which every pick reads and which
    /// rarely change: otherwise each worker's request would take their
    /// cache line from the other core.
    hot: CachePadded<Hot>,
    pub counters: BackendCounters,
}

/// What every request to the backend writes.
#[derive(Debug, Default)]
struct Hot {
    in_flight: AtomicU64,
    latency_us: AtomicEwma,
    /// Requests (HTTP) or connections (TCP) sent to the backend.
    sent: AtomicU64,
}

/// Monotonic counters, exported as they are.
#[derive(Debug, Default)]
pub struct BackendCounters {
    /// Connection attempts that failed.
    pub connect_failures: AtomicU64,
    /// Requests that failed after connecting (reset, timeout, stall).
    pub failures: AtomicU64,
    /// Times passive health ejected the backend.
    pub ejections: AtomicU64,
    /// Requests refused because the backend was at its limits.
    pub rejected: AtomicU64,
}

/// The backend is at `max_connections` with a full `max_pending` queue, or
/// no slot freed within the wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Saturated;

impl Backend {
    pub fn new(name: &str, configured: String, addr: SocketAddr, params: BackendParams) -> Self {
        let b = Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            name: Arc::from(name),
            configured,
            addr,
            // A socket address always formats as a valid authority.
            authority: http::uri::Authority::try_from(addr.to_string().as_str())
                .unwrap_or_else(|_| http::uri::Authority::from_static("invalid")),
            weight: AtomicU32::new(1),
            backup: AtomicBool::new(false),
            healthy: AtomicBool::new(true),
            admin: AtomicU8::new(AdminState::Ready as u8),
            ejected: AtomicBool::new(false),
            consecutive_failures: AtomicU32::new(0),
            ejections: Mutex::new(EjectionHistory::default()),
            ramp_from: AtomicU64::new(0),
            slow_start_ms: AtomicU64::new(0),
            max_connections: AtomicU32::new(0),
            max_pending: AtomicU32::new(0),
            pending: AtomicU32::new(0),
            slot_freed: Notify::new(),
            cluster_load: AtomicU64::new(0),
            hot: CachePadded::new(Hot::default()),
            counters: BackendCounters::default(),
        };
        b.configure(params);
        b
    }

    /// Applies (re)loaded parameters in place.
    pub fn configure(&self, p: BackendParams) {
        self.weight.store(p.weight.max(1), Ordering::Relaxed);
        self.backup.store(p.backup, Ordering::Relaxed);
        self.max_connections.store(p.max_connections, Ordering::Relaxed);
        self.max_pending.store(p.max_pending, Ordering::Relaxed);
        let ms = p.slow_start.map_or(0, |d| d.as_millis().max(1) as u64);
        self.slow_start_ms.store(ms, Ordering::Relaxed);
        // Queued waiters re-check against the new limits.
        self.slot_freed.notify_waiters();
    }

    pub fn configured_weight(&self) -> u32 {
        self.weight.load(Ordering::Relaxed)
    }

    pub fn is_backup(&self) -> bool {
        self.backup.load(Ordering::Relaxed)
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Sets the health verdict; returns whether it changed.
    pub fn set_healthy(&self, healthy: bool) -> bool {
        let changed = self.healthy.swap(healthy, Ordering::Relaxed) != healthy;
        if changed && healthy {
            self.came_back();
        }
        changed
    }

    pub fn admin_state(&self) -> AdminState {
        AdminState::from_u8(self.admin.load(Ordering::Relaxed))
    }

    /// Sets the admin state; returns the previous one.
    pub fn set_admin_state(&self, state: AdminState) -> AdminState {
        let old = AdminState::from_u8(self.admin.swap(state as u8, Ordering::Relaxed));
        if old != AdminState::Ready && state == AdminState::Ready {
            self.came_back();
        }
        old
    }

    pub fn is_ejected(&self) -> bool {
        self.ejected.load(Ordering::Relaxed)
    }

    /// Starts a slow-start ramp if the pool has one.
    pub fn came_back(&self) {
        if self.slow_start_ms.load(Ordering::Relaxed) > 0 {
            self.ramp_from.store(clock::now_ms(), Ordering::Relaxed);
        }
    }

    /// Effective weight in `WEIGHT_SCALE` units (ramped during slow start).
    pub fn effective_weight(&self) -> u32 {
        let full = self.configured_weight().saturating_mul(WEIGHT_SCALE);
        let from = self.ramp_from.load(Ordering::Relaxed);
        if from == 0 {
            return full;
        }
        let window = Duration::from_millis(self.slow_start_ms.load(Ordering::Relaxed));
        let elapsed = clock::since_ms(from);
        if elapsed >= window {
            // Ramp over: stop reading the clock on every pick.
            let _ = self
                .ramp_from
                .compare_exchange(from, 0, Ordering::Relaxed, Ordering::Relaxed);
            return full;
        }
        ramped_weight(self.configured_weight(), elapsed, window)
    }

    /// Local active connections (TCP) plus in-flight requests (HTTP).
    pub fn active(&self) -> u64 {
        self.hot.in_flight.load(Ordering::Relaxed)
    }

    /// Requests (HTTP) or connections (TCP) sent to the backend so far.
    pub fn sent(&self) -> u64 {
        self.hot.sent.load(Ordering::Relaxed)
    }

    pub fn pending(&self) -> u32 {
        self.pending.load(Ordering::Relaxed)
    }

    pub fn cluster_load(&self) -> u64 {
        self.cluster_load.load(Ordering::Relaxed)
    }

    pub fn set_cluster_load(&self, load: u64) {
        self.cluster_load.store(load, Ordering::Relaxed);
    }

    /// The latency EWMA as last sampled, without the decay balancing
    /// applies to it.
    pub fn latency_ewma_us(&self) -> f64 {
        self.hot.latency_us.last()
    }

    pub fn observe_latency(&self, latency: Duration) {
        self.observe_latency_at(latency, Instant::now());
    }

    /// As `observe_latency`, for a sample that ended at `ended`: the
    /// request path has just read the clock, and need not read it twice.
    pub fn observe_latency_at(&self, latency: Duration, ended: Instant) {
        self.hot
            .latency_us
            .observe(latency.as_secs_f64() * 1e6, clock::ms_at(ended));
    }

    /// At its connection limit with a full waiting queue.
    pub fn saturated(&self) -> bool {
        let max = self.max_connections.load(Ordering::Relaxed);
        max > 0 && self.active() >= u64::from(max) && self.pending() >= self.max_pending.load(Ordering::Relaxed)
    }

    /// Counts one unit of work until the returned guard drops, if the
    /// backend is below its connection limit.
    pub fn try_begin(self: &Arc<Self>) -> Option<InFlight> {
        let max = u64::from(self.max_connections.load(Ordering::Relaxed));
        self.hot
            .in_flight
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (max == 0 || n < max).then_some(n + 1)
            })
            .ok()?;
        self.hot.sent.fetch_add(1, Ordering::Relaxed);
        Some(InFlight(Arc::clone(self)))
    }

    /// Like [`Backend::try_begin`], but waits up to `wait` for a slot when
    /// the backend is at its limit and its queue has room.
    pub async fn begin(self: &Arc<Self>, wait: Duration) -> Result<InFlight, Saturated> {
        if let Some(g) = self.try_begin() {
            return Ok(g);
        }
        let max_pending = self.max_pending.load(Ordering::Relaxed);
        if self
            .pending
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |p| {
                (p < max_pending).then_some(p + 1)
            })
            .is_err()
        {
            self.counters.rejected.fetch_add(1, Ordering::Relaxed);
            return Err(Saturated);
        }
        // A guard, not a plain decrement: the caller's future may be
        // dropped mid-wait (client gone), and the queue must not leak.
        let _queued = Queued(&self.pending);
        let waited = tokio::time::timeout(wait, async {
            loop {
                let freed = self.slot_freed.notified();
                if let Some(g) = self.try_begin() {
                    return g;
                }
                freed.await;
            }
        })
        .await;
        waited.map_err(|_| {
            self.counters.rejected.fetch_add(1, Ordering::Relaxed);
            Saturated
        })
    }

    /// Counts a failure for passive health; returns the failures in a row.
    pub(super) fn record_failure(&self) -> u32 {
        self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub(super) fn record_success(&self) {
        // Avoid writing the shared line on every success.
        if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
            self.consecutive_failures.store(0, Ordering::Relaxed);
        }
    }

    /// Marks the backend ejected; returns false if it already was.
    pub(super) fn set_ejected(&self) -> bool {
        !self.ejected.swap(true, Ordering::Relaxed)
    }

    pub(super) fn ejection_history(&self) -> std::sync::MutexGuard<'_, EjectionHistory> {
        // The history is plain numbers: a poisoned lock is still usable.
        self.ejections.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn return_from_ejection(&self) {
        self.consecutive_failures.store(0, Ordering::Relaxed);
        self.ejected.store(false, Ordering::Relaxed);
        self.came_back();
    }
}

impl Candidate for Backend {
    fn id(&self) -> u64 {
        self.id
    }
    fn usable(&self) -> bool {
        self.is_healthy() && self.admin_state() == AdminState::Ready && !self.is_ejected() && !self.saturated()
    }
    fn weight(&self) -> u32 {
        self.effective_weight()
    }
    fn load(&self) -> u64 {
        self.active().saturating_add(self.cluster_load())
    }
    fn latency_us(&self, now_ms: u64) -> f64 {
        self.hot.latency_us.at(now_ms)
    }
}

/// One place in a backend's waiting queue, given back however the wait
/// ends.
struct Queued<'a>(&'a AtomicU32);

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Decrements the backend's in-flight count when dropped, however the
/// request or connection ends, and wakes one queued waiter.
#[derive(Debug)]
pub struct InFlight(Arc<Backend>);

impl InFlight {
    pub fn backend(&self) -> &Arc<Backend> {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.hot.in_flight.fetch_sub(1, Ordering::Relaxed);
        if self.0.pending() > 0 {
            self.0.slot_freed.notify_one();
        }
    }
}
