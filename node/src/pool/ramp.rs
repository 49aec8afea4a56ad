//! Slow start: a backend coming back into service ramps its weight up
//! linearly instead of taking its full share of a warm pool's traffic at
//! once. Weights are kept scaled so even weight 1 ramps in steps.

use std::time::Duration;

/// Internal weight units per configured weight unit.
pub const WEIGHT_SCALE: u32 = 16;

/// The effective (scaled) weight `elapsed` into a ramp of length `window`:
/// from 1 up to `weight × WEIGHT_SCALE`.
pub fn ramped_weight(weight: u32, elapsed: Duration, window: Duration) -> u32 {
    let full = weight.saturating_mul(WEIGHT_SCALE);
    if window.is_zero() || elapsed >= window {
        return full;
    }
    let part = u128::from(full) * elapsed.as_nanos() / window.as_nanos();
    (part as u32).clamp(1, full)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ramps_linearly_from_one_to_full() {
        let w = Duration::from_secs(30);
        assert_eq!(ramped_weight(2, Duration::ZERO, w), 1);
        assert_eq!(ramped_weight(2, Duration::from_secs(15), w), 16);
        assert_eq!(ramped_weight(2, Duration::from_secs(30), w), 32);
        assert_eq!(ramped_weight(2, Duration::from_secs(300), w), 32);
        assert_eq!(ramped_weight(1, Duration::from_secs(3), w), 1);
        assert_eq!(ramped_weight(1, Duration::from_secs(6), w), 3);
        assert_eq!(ramped_weight(5, Duration::from_secs(1), Duration::ZERO), 80);
    }
}
