//! Per-client rate limiting: a token bucket per client address. Buckets
//! that have refilled are dropped by a periodic sweep, and the table is
//! capped: beyond `max_clients` addresses, new ones share one bucket.

use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use dashmap::DashMap;

use crate::config::RateLimitConfig;

/// A token bucket: `burst` tokens, refilled at `rate` per second.
#[derive(Debug, Clone)]
pub struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    pub fn full(burst: u32, now: Instant) -> Self {
        Self {
            tokens: f64::from(burst),
            last: now,
        }
    }

    /// Takes a token, or says how long until one is available.
    pub fn take(&mut self, now: Instant, rate: f64, burst: u32) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(f64::from(burst));
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            // Validated rates are ≥ 0.001/s, so this is at most 1000 s.
            Err(Duration::try_from_secs_f64((1.0 - self.tokens) / rate).unwrap_or(Duration::MAX))
        }
    }

    /// Whether the bucket would be full at `now` (it then carries no
    /// information and can be forgotten).
    pub fn is_full_at(&self, now: Instant, rate: f64, burst: u32) -> bool {
        self.tokens + now.saturating_duration_since(self.last).as_secs_f64() * rate >= f64::from(burst)
    }
}

pub struct RateLimiter {
    rate: f64,
    burst: u32,
    max_clients: usize,
    buckets: DashMap<IpAddr, Bucket>,
    /// Shared by addresses that arrive while the table is full.
    overflow: Mutex<Bucket>,
}

impl RateLimiter {
    pub fn new(cfg: &RateLimitConfig) -> Self {
        Self {
            rate: cfg.requests_per_second,
            burst: cfg.burst,
            max_clients: cfg.max_clients,
            buckets: DashMap::new(),
            overflow: Mutex::new(Bucket::full(cfg.burst, Instant::now())),
        }
    }

    /// Whether this limiter was built from `cfg` (a reload keeps it then).
    pub fn same_config(&self, cfg: &RateLimitConfig) -> bool {
        self.rate == cfg.requests_per_second && self.burst == cfg.burst && self.max_clients == cfg.max_clients
    }

    /// Admits one request from `client`, or returns how long it must wait.
    pub fn check(&self, client: IpAddr, now: Instant) -> Result<(), Duration> {
        let client = client_key(client);
        if let Some(mut b) = self.buckets.get_mut(&client) {
            return b.take(now, self.rate, self.burst);
        }
        if self.buckets.len() >= self.max_clients {
            let mut shared = self.overflow.lock().unwrap_or_else(|e| e.into_inner());
            return shared.take(now, self.rate, self.burst);
        }
        self.buckets
            .entry(client)
            .or_insert_with(|| Bucket::full(self.burst, now))
            .take(now, self.rate, self.burst)
    }

    /// Drops buckets that have refilled; returns how many remain.
    pub fn sweep(&self, now: Instant) -> usize {
        self.buckets.retain(|_, b| !b.is_full_at(now, self.rate, self.burst));
        self.buckets.len()
    }

    pub fn tracked(&self) -> usize {
        self.buckets.len()
    }
}

/// The key a client is limited by: its IPv4 address, or its IPv6 /64 (one
/// subscriber's allocation, which it can fill with addresses at will).
fn client_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(prefix.into())
        }
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(rps: f64, burst: u32, max_clients: usize) -> RateLimiter {
        RateLimiter::new(&RateLimitConfig {
            requests_per_second: rps,
            burst,
            max_clients,
        })
    }

    #[test]
    fn burst_then_rate() {
        let t0 = Instant::now();
        let l = limiter(20.0, 5, 100);
        let ip: IpAddr = [10, 0, 0, 1].into();
        for _ in 0..5 {
            assert_eq!(l.check(ip, t0), Ok(()));
        }
        let wait = l.check(ip, t0).err().unwrap_or_default();
        assert!((wait.as_secs_f64() - 0.05).abs() < 1e-6, "{wait:?}");
        // 100 ms later two tokens have come back.
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!(l.check(ip, t1), Ok(()));
        assert_eq!(l.check(ip, t1), Ok(()));
        assert!(l.check(ip, t1).is_err());
        // Another client has its own bucket.
        assert_eq!(l.check([10, 0, 0, 2].into(), t1), Ok(()));
    }

    #[test]
    fn a_hundred_requests_at_once_admit_the_burst_only() {
        let t0 = Instant::now();
        let l = limiter(20.0, 5, 100);
        let admitted = (0..100).filter(|_| l.check([10, 0, 0, 1].into(), t0).is_ok()).count();
        assert_eq!(admitted, 5);
    }

    #[test]
    fn memory_is_bounded() {
        let t0 = Instant::now();
        let l = limiter(1.0, 2, 10);
        for i in 0..1000u32 {
            let _ = l.check(IpAddr::from(i.to_be_bytes()), t0);
        }
        assert_eq!(l.tracked(), 10, "beyond max_clients nothing new is stored");
        // Overflowing clients share one bucket of burst 2.
        let t1 = t0 + Duration::from_millis(1);
        assert!(l.check([9, 9, 9, 9].into(), t1).is_err());
        // Idle buckets refill and are swept away.
        assert_eq!(l.sweep(t0 + Duration::from_secs(3)), 0);
        assert_eq!(l.check([9, 9, 9, 9].into(), t0 + Duration::from_secs(3)), Ok(()));
        assert_eq!(l.tracked(), 1);
    }

    #[test]
    fn an_ipv6_64_is_one_client() {
        let t0 = Instant::now();
        let l = limiter(1.0, 1, 10);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap_or(IpAddr::from([0; 4]));
        assert!(l.check(ip("2001:db8:1:2::1"), t0).is_ok());
        assert!(l.check(ip("2001:db8:1:2:ffff::9"), t0).is_err(), "same /64");
        assert!(l.check(ip("2001:db8:1:3::1"), t0).is_ok(), "another /64");
        assert_eq!(l.tracked(), 2);
    }

    #[test]
    fn ipv4_mapped_addresses_share_the_ipv4_bucket() {
        let t0 = Instant::now();
        let l = limiter(1.0, 1, 10);
        assert!(l.check("10.0.0.1".parse().unwrap_or(IpAddr::from([0; 4])), t0).is_ok());
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap_or(IpAddr::from([0; 4]));
        assert!(l.check(mapped, t0).is_err());
    }
}
