//! The rise/fall state machine of active health checks: `fall` consecutive
//! failures take a healthy backend down, `rise` consecutive passes bring an
//! unhealthy one back. A single opposite result resets the streak.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Up,
    Down,
}

#[derive(Debug, Clone)]
pub struct RiseFall {
    rise: u32,
    fall: u32,
    healthy: bool,
    /// Consecutive results that disagree with the current verdict.
    streak: u32,
}

impl RiseFall {
    pub fn new(rise: u32, fall: u32, healthy: bool) -> Self {
        Self {
            rise: rise.max(1),
            fall: fall.max(1),
            healthy,
            streak: 0,
        }
    }

    pub fn healthy(&self) -> bool {
        self.healthy
    }

    /// Feeds one check result; returns the transition it caused, if any.
    pub fn record(&mut self, passed: bool) -> Option<Transition> {
        if passed == self.healthy {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        let needed = if self.healthy { self.fall } else { self.rise };
        if self.streak < needed {
            return None;
        }
        self.healthy = passed;
        self.streak = 0;
        Some(if passed { Transition::Up } else { Transition::Down })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn falls_after_fall_consecutive_failures() {
        let mut s = RiseFall::new(2, 3, true);
        assert_eq!(s.record(false), None);
        assert_eq!(s.record(false), None);
        assert_eq!(s.record(false), Some(Transition::Down));
        assert!(!s.healthy());
        assert_eq!(s.record(false), None);
    }

    #[test]
    fn a_pass_resets_the_failure_streak() {
        let mut s = RiseFall::new(2, 3, true);
        for _ in 0..10 {
            assert_eq!(s.record(false), None);
            assert_eq!(s.record(false), None);
            assert_eq!(s.record(true), None);
        }
        assert!(s.healthy());
    }

    #[test]
    fn rises_after_rise_consecutive_passes() {
        let mut s = RiseFall::new(2, 3, false);
        assert_eq!(s.record(true), None);
        assert_eq!(s.record(false), None);
        assert_eq!(s.record(true), None);
        assert_eq!(s.record(true), Some(Transition::Up));
        assert!(s.healthy());
    }

    #[test]
    fn rise_and_fall_of_one_flip_at_once() {
        let mut s = RiseFall::new(1, 1, true);
        assert_eq!(s.record(false), Some(Transition::Down));
        assert_eq!(s.record(true), Some(Transition::Up));
    }
}
