//! Active health checks: one task per backend probing at the pool's
//! interval and flipping the backend's health through [`RiseFall`].

mod probe;
mod state;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use probe::{ProbeError, ProbeSpec, probe};
pub use state::{RiseFall, Transition};

use crate::pool::{AdminState, Backend, Pool};

/// Starts the checks of every backend in `pool` (none if the pool has no
/// `health` table). Tasks end when `cancel` fires.
pub fn spawn_checks(pool: &Arc<Pool>, tracker: &TaskTracker, cancel: &CancellationToken) {
    let Some(cfg) = &pool.health else { return };
    let spec = ProbeSpec {
        kind: cfg.kind,
        path: cfg.path.clone(),
        host: cfg.host.clone(),
        timeout: cfg.timeout.get(),
    };
    for backend in pool.backends() {
        let checker = Checker {
            pool: Arc::clone(&pool.name),
            backend: Arc::clone(backend),
            spec: spec.clone(),
            interval: cfg.interval.get(),
            fall: cfg.fall,
            state: RiseFall::new(cfg.rise, cfg.fall, backend.is_healthy()),
        };
        tracker.spawn(checker.run(cancel.clone()));
    }
}

struct Checker {
    pool: Arc<str>,
    backend: Arc<Backend>,
    spec: ProbeSpec,
    interval: Duration,
    fall: u32,
    state: RiseFall,
}

impl Checker {
    async fn run(mut self, cancel: CancellationToken) {
        // Spread the first probes so a pool's checks do not fire together.
        let first = Duration::from_millis(fastrand::u64(0..=self.interval.as_millis().min(1000) as u64 / 4));
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + first, self.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = ticker.tick() => {}
            }
            // Maintenance means the operator took the backend out: no probes.
            if self.backend.admin_state() == AdminState::Maint {
                continue;
            }
            let result = tokio::select! {
                _ = cancel.cancelled() => return,
                r = probe(&self.spec, self.backend.addr) => r,
            };
            self.apply(result);
        }
    }

    fn apply(&mut self, result: Result<(), ProbeError>) {
        let passed = result.is_ok();
        match self.state.record(passed) {
            Some(Transition::Down) => {
                self.backend.set_healthy(false);
                tracing::warn!(
                    pool = %self.pool, backend = %self.backend.name, addr = %self.backend.addr,
                    error = %result.err().map(|e| e.to_string()).unwrap_or_default(),
                    "backend is DOWN: health check failed {} times in a row", self.fall
                );
            }
            Some(Transition::Up) => {
                self.backend.set_healthy(true);
                tracing::info!(pool = %self.pool, backend = %self.backend.name, addr = %self.backend.addr, "backend is UP");
            }
            None => {
                if let Err(e) = result {
                    tracing::debug!(pool = %self.pool, backend = %self.backend.name, error = %e, "health check failed");
                }
            }
        }
    }
}
