//! Passive health: a backend that fails `consecutive_failures` times in a
//! row is ejected for `base_ejection` × the number of its recent ejections,
//! capped at `max_ejection`. Each `base_ejection` spent back in service
//! forgives one past ejection. Pure logic over injected time.

use std::time::{Duration, Instant};

use crate::config::OutlierConfig;

#[derive(Debug, Clone)]
pub struct OutlierPolicy {
    pub consecutive_failures: u32,
    pub base_ejection: Duration,
    pub max_ejection: Duration,
    pub max_ejection_percent: u32,
}

impl From<&OutlierConfig> for OutlierPolicy {
    fn from(c: &OutlierConfig) -> Self {
        Self {
            consecutive_failures: c.consecutive_failures.max(1),
            base_ejection: c.base_ejection.get(),
            max_ejection: c.max_ejection.get(),
            max_ejection_percent: c.max_ejection_percent,
        }
    }
}

impl OutlierPolicy {
    /// How many of `pool_size` backends may be ejected at once: the share,
    /// but at least one (as Envoy does) unless the share is 0%.
    pub fn max_ejected(&self, pool_size: usize) -> usize {
        if self.max_ejection_percent == 0 {
            0
        } else {
            (pool_size * self.max_ejection_percent as usize / 100).max(1)
        }
    }
}

/// A backend's ejection history.
#[derive(Debug, Default, Clone)]
pub struct EjectionHistory {
    ejections: u32,
    back_since: Option<Instant>,
}

impl EjectionHistory {
    /// Records an ejection at `now`; returns how long it lasts.
    pub fn eject(&mut self, now: Instant, policy: &OutlierPolicy) -> Duration {
        if let Some(back) = self.back_since.take() {
            let base = policy.base_ejection.as_nanos().max(1);
            let forgiven = now.saturating_duration_since(back).as_nanos() / base;
            self.ejections = self
                .ejections
                .saturating_sub(u32::try_from(forgiven).unwrap_or(u32::MAX));
        }
        self.ejections = self.ejections.saturating_add(1);
        policy
            .base_ejection
            .saturating_mul(self.ejections)
            .min(policy.max_ejection)
    }

    /// Records the backend's return to service at `now`.
    pub fn returned(&mut self, now: Instant) {
        self.back_since = Some(now);
    }

    pub fn ejections(&self) -> u32 {
        self.ejections
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> OutlierPolicy {
        OutlierPolicy {
            consecutive_failures: 5,
            base_ejection: Duration::from_secs(30),
            max_ejection: Duration::from_secs(100),
            max_ejection_percent: 50,
        }
    }

    #[test]
    fn ejections_grow_then_cap() {
        let p = policy();
        let mut h = EjectionHistory::default();
        let t0 = Instant::now();
        assert_eq!(h.eject(t0, &p), Duration::from_secs(30));
        h.returned(t0 + Duration::from_secs(30));
        // Failing again at once: twice the base.
        assert_eq!(h.eject(t0 + Duration::from_secs(31), &p), Duration::from_secs(60));
        h.returned(t0 + Duration::from_secs(91));
        assert_eq!(h.eject(t0 + Duration::from_secs(92), &p), Duration::from_secs(90));
        h.returned(t0 + Duration::from_secs(182));
        // 4 × 30 s would be 120 s: capped.
        assert_eq!(h.eject(t0 + Duration::from_secs(183), &p), Duration::from_secs(100));
    }

    #[test]
    fn time_in_service_forgives_past_ejections() {
        let p = policy();
        let mut h = EjectionHistory::default();
        let t0 = Instant::now();
        h.eject(t0, &p);
        h.returned(t0 + Duration::from_secs(30));
        h.eject(t0 + Duration::from_secs(31), &p);
        assert_eq!(h.ejections(), 2);
        h.returned(t0 + Duration::from_secs(91));
        // Two base periods back in service forgive both ejections.
        let d = h.eject(t0 + Duration::from_secs(91 + 61), &p);
        assert_eq!((h.ejections(), d), (1, Duration::from_secs(30)));
    }

    #[test]
    fn at_most_the_configured_share_is_ejected_but_at_least_one() {
        let p = policy();
        assert_eq!(p.max_ejected(10), 5);
        assert_eq!(p.max_ejected(3), 1);
        assert_eq!(p.max_ejected(1), 1);
        let none = OutlierPolicy {
            max_ejection_percent: 0,
            ..policy()
        };
        assert_eq!(none.max_ejected(10), 0);
    }
}
