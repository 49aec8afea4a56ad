//! A backend's latency estimate: an exponentially weighted moving average
//! of samples whose hold fades with time, updated lock-free.
//!
//! A plain EWMA moves only when its backend is picked. Under light load one
//! slow outlier can then make a fast backend score worse than the others
//! for good: it is never picked again, so never sampled again. As in
//! peak-EWMA (Finagle, Linkerd), the estimate read for a pick decays toward
//! 0 with the time since its last sample, so an unpicked backend's score
//! falls until it is tried again; and a new sample outweighs the old
//! estimate the more, the older that estimate is.
//!
//! Time is milliseconds of [`crate::clock::now_ms`], passed in, so the rules
//! are tested with injected time.

use std::sync::atomic::{AtomicU64, Ordering};

/// Weight of a new sample that follows the previous one at once. 0.2
/// follows a shift in a handful of requests without jumping on a single
/// outlier.
pub const ALPHA: f64 = 0.2;

/// Time constant of the decay, in milliseconds: an estimate left alone
/// falls to 1/e of itself in this time. Under light load a backend that
/// scores 5× the best is re-tried about every 16 s (τ × ln 5), and a fast
/// one whose score an outlier pushed to 2× the best after about 7 s.
/// Finagle and Linkerd decay over the same 10 s.
pub const DECAY_MS: f64 = 10_000.0;

/// How much of an estimate still counts `age_ms` after its sample:
/// e^(−age/τ); exactly 1 at once, so back-to-back samples are a plain EWMA.
fn hold(age_ms: u32) -> f64 {
    if age_ms == 0 {
        return 1.0;
    }
    (-f64::from(age_ms) / DECAY_MS).exp()
}

/// The estimate `value` as read `age_ms` after its last sample.
pub fn decayed(value: f64, age_ms: u32) -> f64 {
    value * hold(age_ms)
}

/// The estimate after `sample` arrives `age_ms` after the previous one: the
/// old value keeps a weight of (1 − α)·hold(age). The first sample seeds it.
pub fn next(current: f64, age_ms: u32, sample: f64) -> f64 {
    if current <= 0.0 {
        return sample;
    }
    let keep = (1.0 - ALPHA) * hold(age_ms);
    keep * current + (1.0 - keep) * sample
}

/// An estimate shared between threads. One atomic holds both the value (an
/// f32 of microseconds, low half) and the `now_ms` of its last sample (low
/// 32 bits, high half), so an update never pairs a value with another
/// sample's time.
#[derive(Debug, Default)]
pub struct AtomicEwma(AtomicU64);

fn unpack(bits: u64) -> (f64, u32) {
    (f64::from(f32::from_bits(bits as u32)), (bits >> 32) as u32)
}

fn pack(value: f64, at_ms: u64) -> u64 {
    ((at_ms as u32 as u64) << 32) | u64::from((value as f32).to_bits())
}

/// How far a reader's `now_ms` may lag a sample stored by another thread
/// (its clock read a moment earlier) and still be taken as "just then".
const LAG_MS: u32 = 60_000;

/// Milliseconds from `then` to `now`, both truncated `now_ms` values, so
/// counted modulo 2^32 ms (49.7 days). A `now` up to a minute before
/// `then` is another thread's sample landing after this reader's clock
/// read: age 0. (The cost of the truncation: a backend left unsampled for
/// a multiple of 49.7 days, give or take a minute, reads as just sampled,
/// so undecayed, for a while.)
fn age(now_ms: u64, then: u32) -> u32 {
    let age = (now_ms as u32).wrapping_sub(then);
    if age > u32::MAX - LAG_MS { 0 } else { age }
}

impl AtomicEwma {
    /// The last estimate as sampled, without decay: what was measured.
    pub fn last(&self) -> f64 {
        unpack(self.0.load(Ordering::Relaxed)).0
    }

    /// The estimate at `now_ms`, decayed since its last sample; 0 when
    /// never sampled.
    pub fn at(&self, now_ms: u64) -> f64 {
        let (value, then) = unpack(self.0.load(Ordering::Relaxed));
        decayed(value, age(now_ms, then))
    }

    pub fn observe(&self, sample: f64, now_ms: u64) {
        // fetch_update retries on contention; the closure never fails.
        let _ = self.0.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
            let (value, then) = unpack(bits);
            Some(pack(next(value, age(now_ms, then), sample), now_ms))
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= b.abs() * 1e-6
    }

    #[test]
    fn back_to_back_samples_are_a_plain_ewma() {
        let e = AtomicEwma::default();
        assert_eq!(e.at(5), 0.0);
        e.observe(100.0, 5);
        assert_eq!(e.at(5), 100.0);
        e.observe(200.0, 5);
        assert!(close(e.at(5), 120.0), "{}", e.at(5));
        for _ in 0..100 {
            e.observe(50.0, 5);
        }
        assert!((e.at(5) - 50.0).abs() < 0.01);
    }

    #[test]
    fn an_estimate_left_alone_decays_and_the_last_sample_stays_readable() {
        let e = AtomicEwma::default();
        e.observe(1_000.0, 1_000);
        assert!(close(e.at(1_000 + 10_000), 1_000.0 / std::f64::consts::E));
        assert!(e.at(1_000 + 60_000) < 3.0);
        // Later reads never raise it; the measured value is kept apart.
        assert!(e.at(1_000 + 20_000) < e.at(1_000 + 10_000));
        assert_eq!(e.last(), 1_000.0);
    }

    #[test]
    fn a_new_sample_outweighs_an_old_estimate_the_more_the_older_it_is() {
        // Just after: 80% of the old value kept, as a plain EWMA.
        assert!(close(next(1_000.0, 0, 100.0), 820.0));
        // 10 s later: 80% × 1/e of it.
        let keep = 0.8 / std::f64::consts::E;
        assert!(close(
            next(1_000.0, 10_000, 100.0),
            keep * 1_000.0 + (1.0 - keep) * 100.0
        ));
        // Long after, the sample is nearly all that counts: a slow backend
        // re-tried after a long while is scored by what it does now.
        assert!(next(1_000.0, 120_000, 5_000.0) > 4_999.0);
        // The first sample seeds the estimate whatever the time.
        assert_eq!(next(0.0, 7, 300.0), 300.0);
    }

    #[test]
    fn what_ages_come_to() {
        assert_eq!(hold(0), 1.0);
        assert!(close(hold(10_000), (-1.0f64).exp()));
        assert_eq!(hold(u32::MAX), 0.0);
    }

    #[test]
    fn a_now_read_just_before_anothers_sample_is_age_zero_and_the_clock_may_wrap() {
        let e = AtomicEwma::default();
        e.observe(400.0, 2_000);
        // A reader's now_ms from 1 ms before that sample landed.
        assert_eq!(e.at(1_999), 400.0);
        // A backend unsampled for 30 days has decayed to nothing.
        assert_eq!(e.at(2_000 + 30 * 86_400_000), 0.0);
        // now_ms past 2^32 ms compares by its low bits.
        let wrap = 1u64 << 32;
        let e = AtomicEwma::default();
        e.observe(400.0, wrap - 5_000);
        assert!(close(e.at(wrap + 5_000), 400.0 * (-1.0f64).exp()));
    }
}
