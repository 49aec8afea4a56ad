//! Pools of backends: their live state, selection with circuit breaking,
//! passive health (outlier ejection) and the retry budget.

mod backend;
mod budget;
mod ewma;
mod outlier;
mod ramp;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use backend::{AdminState, Backend, BackendCounters, BackendParams, InFlight, Saturated};
pub use budget::{RequestGuard, RetryBudget, RetryGuard};
pub use ewma::AtomicEwma;
pub use outlier::{EjectionHistory, OutlierPolicy};
pub use ramp::WEIGHT_SCALE;

use crate::affinity::Sticky;
use crate::balance::{Balancer, Member, PickCtx};
use crate::config::{Algorithm, HashKey, HealthConfig, PoolConfig};

/// Backends chosen among by one balancer: the primaries, or the backups.
struct Group {
    members: Vec<Arc<Backend>>,
    balancer: Balancer,
}

impl Group {
    /// Builds from the new parameters, which kept backends do not carry yet
    /// (they apply when the pool is activated).
    fn new(algorithm: Algorithm, members: Vec<(Arc<Backend>, BackendParams)>) -> Self {
        let m: Vec<Member<'_>> = members
            .iter()
            .map(|(b, p)| Member {
                name: &b.name,
                weight: p.weight,
            })
            .collect();
        let balancer = Balancer::new(algorithm, &m);
        Self {
            members: members.into_iter().map(|(b, _)| b).collect(),
            balancer,
        }
    }

    fn pick(&self, ctx: &mut PickCtx) -> Option<&Arc<Backend>> {
        self.balancer.pick(&self.members, ctx).map(|i| &self.members[i])
    }
}

/// What happened to one attempt, for passive health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failure,
}

/// Why a request gets no (further) attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoAttempt {
    /// A retry the pool's retry budget does not allow.
    Budget,
    NoBackend(NoBackend),
}

/// Why no backend could take a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoBackend {
    /// None healthy, ready and not ejected (or all already tried).
    NoneUsable,
    /// Usable ones exist but all are at their connection limits.
    Saturated,
}

pub struct Pool {
    pub name: Arc<str>,
    pub algorithm: Algorithm,
    pub hash_key: HashKey,
    pub retries: u32,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    pub keepalive_timeout: Duration,
    pub health: Option<HealthConfig>,
    pub sticky: Option<Sticky>,
    /// Shared with the previous generation while its settings are the
    /// same, so its counters carry across reloads.
    pub budget: Arc<RetryBudget>,
    outlier: Option<OutlierPolicy>,
    /// Serialises ejection decisions (rare) so the cap holds.
    eject_lock: Mutex<()>,
    backends: Vec<Arc<Backend>>,
    /// Parameters to put into the backends when the pool goes live.
    params: Vec<BackendParams>,
    primary: Group,
    backup: Group,
}

impl Pool {
    /// Builds a pool from its config and the resolved address of each
    /// backend (same order as `cfg.backends`). Backends of `previous` with
    /// the same name and address are kept, with their health, admin state,
    /// ejection and counters; new ones joining a running pool slow-start.
    /// Nothing running changes until [`Pool::activate`].
    pub fn new(cfg: &PoolConfig, addrs: &[SocketAddr], previous: Option<&Pool>) -> Self {
        let members: Vec<(Arc<Backend>, BackendParams)> = cfg
            .backends
            .iter()
            .zip(addrs)
            .map(|(b, addr)| {
                let params = BackendParams {
                    weight: b.weight,
                    backup: b.backup,
                    max_connections: cfg.max_connections.unwrap_or(0),
                    max_pending: cfg.max_pending,
                    slow_start: cfg.slow_start.map(|d| d.get()),
                };
                let kept = previous
                    .and_then(|p| p.backend(&b.name))
                    .filter(|old| old.addr == *addr);
                let backend = match kept {
                    Some(old) => Arc::clone(old),
                    None => {
                        let fresh = Arc::new(Backend::new(&b.name, b.address.to_string(), *addr, params));
                        if previous.is_some() {
                            fresh.came_back();
                        }
                        fresh
                    }
                };
                (backend, params)
            })
            .collect();
        let budget = match previous {
            Some(p) if p.budget.same_config(&cfg.retry_budget) => Arc::clone(&p.budget),
            _ => Arc::new(RetryBudget::new(&cfg.retry_budget)),
        };
        let (backup, primary): (Vec<_>, Vec<_>) = members.iter().cloned().partition(|(_, p)| p.backup);
        let names: Vec<Arc<str>> = members.iter().map(|(b, _)| Arc::clone(&b.name)).collect();
        let sticky = cfg.sticky.as_ref().map(|s| Sticky::new(s, &cfg.name, &names));
        Self {
            name: Arc::from(cfg.name.as_str()),
            algorithm: cfg.algorithm,
            hash_key: cfg.hash_key.clone(),
            retries: cfg.retries,
            connect_timeout: cfg.connect_timeout.get(),
            response_timeout: cfg.response_timeout.get(),
            keepalive_timeout: cfg.keepalive_timeout.get(),
            health: cfg.health.clone(),
            sticky,
            budget,
            outlier: cfg.outlier.as_ref().map(OutlierPolicy::from),
            eject_lock: Mutex::new(()),
            primary: Group::new(cfg.algorithm, primary),
            backup: Group::new(cfg.algorithm, backup),
            params: members.iter().map(|(_, p)| *p).collect(),
            backends: members.into_iter().map(|(b, _)| b).collect(),
        }
    }

    /// Puts this pool's backend parameters (weights, limits, slow start)
    /// into its backends: the step of a reload that cannot fail.
    pub fn activate(&self) {
        for (b, p) in self.backends.iter().zip(&self.params) {
            b.configure(*p);
        }
    }

    pub fn backends(&self) -> &[Arc<Backend>] {
        &self.backends
    }

    pub fn backend(&self, name: &str) -> Option<&Arc<Backend>> {
        self.backends.iter().find(|b| &*b.name == name)
    }

    /// Whether picks need a request hash key.
    pub fn needs_hash(&self) -> bool {
        self.algorithm.uses_hash_key()
    }

    /// Chooses a backend: primaries first, backups only when no primary is
    /// usable (or all were excluded by earlier attempts).
    pub fn select(&self, ctx: &mut PickCtx) -> Option<&Arc<Backend>> {
        self.primary.pick(ctx).or_else(|| self.backup.pick(ctx))
    }

    /// Chooses a backend and takes a slot on it, waiting up to the connect
    /// timeout in its queue when it is at its limit. A backend whose queue
    /// is full is skipped for another. `preferred` (a sticky binding) wins
    /// when it is usable and not yet tried.
    pub async fn acquire(&self, ctx: &mut PickCtx, preferred: Option<&Arc<Backend>>) -> Result<InFlight, NoBackend> {
        let mut saw_saturated = false;
        if let Some(b) = preferred.filter(|b| ctx.allows(*b)) {
            match b.begin(self.connect_timeout).await {
                Ok(guard) => return Ok(guard),
                Err(Saturated) => {
                    saw_saturated = true;
                    ctx.exclude(b.id);
                }
            }
        }
        loop {
            let Some(backend) = self.select(ctx).cloned() else {
                let saturated = saw_saturated || self.backends.iter().any(|b| blocked_only_by_limits(b));
                return Err(if saturated {
                    NoBackend::Saturated
                } else {
                    NoBackend::NoneUsable
                });
            };
            match backend.begin(self.connect_timeout).await {
                Ok(guard) => return Ok(guard),
                Err(Saturated) => {
                    saw_saturated = true;
                    ctx.exclude(backend.id);
                }
            }
        }
    }

    /// Attempt number `attempt` (0 = first) of a request: a retry must fit
    /// the retry budget, then a backend slot is taken. The retry guard
    /// counts the retry in flight until dropped.
    pub async fn next_attempt(
        &self,
        ctx: &mut PickCtx,
        attempt: u32,
        preferred: Option<&Arc<Backend>>,
    ) -> Result<(InFlight, Option<RetryGuard<'_>>), NoAttempt> {
        let retry = if attempt == 0 {
            None
        } else {
            match self.budget.try_retry() {
                Some(granted) => Some(granted),
                None => {
                    tracing::warn!(pool = %self.name, "retry budget exhausted: not retrying");
                    return Err(NoAttempt::Budget);
                }
            }
        };
        match self.acquire(ctx, preferred).await {
            Ok(in_flight) => Ok((in_flight, retry)),
            Err(e) => {
                // No backend took the retry: it did not happen.
                if let Some(r) = retry {
                    r.retract();
                }
                Err(NoAttempt::NoBackend(e))
            }
        }
    }

    /// Feeds passive health. A backend reaching the failure threshold is
    /// ejected unless that would exceed the pool's ejection cap.
    pub fn report(&self, backend: &Arc<Backend>, outcome: Outcome) {
        let Some(policy) = &self.outlier else { return };
        if outcome == Outcome::Success {
            backend.record_success();
            return;
        }
        let failures = backend.record_failure();
        if failures < policy.consecutive_failures || backend.is_ejected() {
            return;
        }
        let duration = {
            let _serial = self.eject_lock.lock().unwrap_or_else(|e| e.into_inner());
            let ejected = self.backends.iter().filter(|b| b.is_ejected()).count();
            let cap = policy.max_ejected(self.backends.len());
            if ejected >= cap {
                tracing::warn!(
                    pool = %self.name, backend = %backend.name, failures, ejected, cap,
                    "not ejecting failing backend: ejection cap reached"
                );
                return;
            }
            if !backend.set_ejected() {
                return;
            }
            backend.ejection_history().eject(Instant::now(), policy)
        };
        backend
            .counters
            .ejections
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::warn!(
            pool = %self.name, backend = %backend.name, failures, ejected_for = ?duration,
            "backend EJECTED after consecutive failures"
        );
        let backend = Arc::clone(backend);
        let pool = Arc::clone(&self.name);
        tokio::spawn(async move {
            tokio::time::sleep(duration).await;
            backend.ejection_history().returned(Instant::now());
            backend.return_from_ejection();
            tracing::info!(pool = %pool, backend = %backend.name, "backend returns from ejection");
        });
    }
}

/// Whether `b` would take traffic but for its connection limit.
fn blocked_only_by_limits(b: &Backend) -> bool {
    b.saturated() && b.is_healthy() && b.admin_state() == AdminState::Ready && !b.is_ejected()
}

#[cfg(test)]
mod tests;
