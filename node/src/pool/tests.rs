use std::sync::atomic::Ordering;

use super::*;
use crate::config::{BackendConfig, HostPort};

fn pool_cfg(extra: &str, backends: &[(&str, bool)]) -> (PoolConfig, Vec<SocketAddr>) {
    let text = format!(
        "name = \"p\"\n{extra}\n{}",
        backends
            .iter()
            .enumerate()
            .map(|(i, (n, backup))| format!(
                "[[backend]]\nname = \"{n}\"\naddress = \"127.0.0.1:{}\"\nbackup = {backup}\n",
                1000 + i
            ))
            .collect::<String>()
    );
    let cfg: PoolConfig = toml::from_str(&text).unwrap_or_else(|e| panic!("{e}"));
    let addrs = cfg
        .backends
        .iter()
        .map(|b: &BackendConfig| match &b.address {
            HostPort::Ip(a) => *a,
            HostPort::Name { .. } => SocketAddr::from(([127, 0, 0, 1], 1)),
        })
        .collect();
    (cfg, addrs)
}

fn pool(extra: &str, backends: &[(&str, bool)]) -> Pool {
    let (cfg, addrs) = pool_cfg(extra, backends);
    let pool = Pool::new(&cfg, &addrs, None);
    pool.activate();
    pool
}

fn pick(pool: &Pool) -> Option<String> {
    pool.select(&mut PickCtx::new(None)).map(|b| b.name.to_string())
}

#[test]
fn backups_serve_only_when_no_primary_is_usable() {
    let pool = pool("", &[("a", false), ("b", false), ("spare", true)]);
    for _ in 0..10 {
        assert_ne!(pick(&pool).as_deref(), Some("spare"));
    }
    pool.backends()[0].set_healthy(false);
    assert_eq!(pick(&pool).as_deref(), Some("b"));
    pool.backends()[1].set_admin_state(AdminState::Drain);
    assert_eq!(pick(&pool).as_deref(), Some("spare"));
    pool.backends()[2].set_admin_state(AdminState::Maint);
    assert_eq!(pick(&pool), None);
}

#[test]
fn in_flight_guard_counts_until_dropped() {
    let pool = pool("", &[("a", false)]);
    let b = &pool.backends()[0];
    let g1 = b.try_begin();
    let g2 = b.try_begin();
    assert_eq!(b.active(), 2);
    drop(g1);
    assert_eq!(b.active(), 1);
    drop(g2);
    assert_eq!(b.active(), 0);
    assert_eq!(b.sent(), 2);
}

#[tokio::test(start_paused = true)]
async fn circuit_breaker_queues_then_fails_fast() {
    let pool = pool(
        "max_connections = 2\nmax_pending = 1\nconnect_timeout = \"1s\"",
        &[("a", false)],
    );
    let b = Arc::clone(&pool.backends()[0]);
    let g1 = pool.acquire(&mut PickCtx::new(None), None).await;
    let g2 = pool.acquire(&mut PickCtx::new(None), None).await;
    assert!(g1.is_ok() && g2.is_ok());
    assert!(b.try_begin().is_none(), "at the limit");
    // A third request waits in the queue; the queue is then full, so the
    // backend is saturated and a fourth fails at once.
    let waiter = {
        let b = Arc::clone(&b);
        tokio::spawn(async move { b.begin(Duration::from_secs(1)).await.is_ok() })
    };
    while b.pending() == 0 {
        tokio::task::yield_now().await;
    }
    assert!(b.saturated());
    assert_eq!(
        pool.acquire(&mut PickCtx::new(None), None).await.err(),
        Some(NoBackend::Saturated)
    );
    // Freeing a slot lets the queued request through.
    drop(g1);
    assert_eq!(waiter.await.ok(), Some(true));
    // A queued request that gets no slot within the wait fails.
    let started = tokio::time::Instant::now();
    let b2 = Arc::clone(&b);
    let (held_a, held_b) = (b.try_begin(), g2);
    assert!(held_a.is_some());
    assert_eq!(b2.begin(Duration::from_millis(300)).await.err(), Some(Saturated));
    assert!(started.elapsed() >= Duration::from_millis(300));
    // Only the timed-out wait counts against the backend: the saturated
    // pick above never reached it.
    assert_eq!(b.counters.rejected.load(Ordering::Relaxed), 1);

    drop((held_a, held_b));
    // A queued wait abandoned mid-way (client gone) gives its place back.
    let holders: Vec<_> = (0..2).filter_map(|_| b.try_begin()).collect();
    assert_eq!(holders.len(), 2);
    let abandoned = {
        let b = Arc::clone(&b);
        tokio::spawn(async move { b.begin(Duration::from_secs(60)).await.is_ok() })
    };
    while b.pending() == 0 {
        tokio::task::yield_now().await;
    }
    abandoned.abort();
    let _ = abandoned.await;
    assert_eq!(b.pending(), 0, "an abandoned wait must leave the queue");
    drop(holders);
}

#[tokio::test(start_paused = true)]
async fn outliers_are_ejected_capped_and_return() {
    let pool = pool(
        "outlier = { consecutive_failures = 3, base_ejection = \"10s\", max_ejection_percent = 50 }",
        &[("a", false), ("b", false), ("c", false), ("d", false)],
    );
    let [a, b, c, _d] = [0, 1, 2, 3].map(|i| Arc::clone(&pool.backends()[i]));
    // A success in between resets the count.
    for outcome in [
        Outcome::Failure,
        Outcome::Failure,
        Outcome::Success,
        Outcome::Failure,
        Outcome::Failure,
    ] {
        pool.report(&a, outcome);
    }
    assert!(!a.is_ejected());
    pool.report(&a, Outcome::Failure);
    assert!(a.is_ejected());
    for _ in 0..3 {
        pool.report(&b, Outcome::Failure);
    }
    assert!(b.is_ejected());
    // 50% of 4 is 2: a third ejection is refused.
    for _ in 0..5 {
        pool.report(&c, Outcome::Failure);
    }
    assert!(!c.is_ejected());
    for _ in 0..50 {
        assert!(matches!(pick(&pool).as_deref(), Some("c") | Some("d")));
    }
    tokio::time::sleep(Duration::from_secs(11)).await;
    assert!(!a.is_ejected() && !b.is_ejected(), "ejections last base_ejection");
    // Ejected again soon after: twice as long.
    for _ in 0..3 {
        pool.report(&a, Outcome::Failure);
    }
    tokio::time::sleep(Duration::from_secs(11)).await;
    assert!(a.is_ejected());
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(!a.is_ejected());
    assert_eq!(a.counters.ejections.load(Ordering::Relaxed), 2);
}

#[test]
fn slow_start_ramps_a_returning_backend() {
    let pool = pool("slow_start = \"1h\"", &[("a", false), ("b", false)]);
    let a = &pool.backends()[0];
    assert_eq!(a.effective_weight(), WEIGHT_SCALE);
    a.set_healthy(false);
    a.set_healthy(true);
    assert_eq!(a.effective_weight(), 1, "just back: the ramp starts at its bottom");
    let b = &pool.backends()[1];
    b.set_admin_state(AdminState::Maint);
    assert_eq!(b.effective_weight(), WEIGHT_SCALE, "leaving ready does not ramp");
    b.set_admin_state(AdminState::Ready);
    assert_eq!(b.effective_weight(), 1);
    let no_ramp = self::pool("", &[("a", false)]);
    no_ramp.backends()[0].set_healthy(false);
    no_ramp.backends()[0].set_healthy(true);
    assert_eq!(no_ramp.backends()[0].effective_weight(), WEIGHT_SCALE);
}

#[test]
fn a_rebuilt_pool_keeps_the_state_of_unchanged_backends() {
    let (cfg, addrs) = pool_cfg("slow_start = \"1h\"", &[("a", false), ("b", false)]);
    let old = Pool::new(&cfg, &addrs, None);
    old.activate();
    old.backends()[0].set_admin_state(AdminState::Drain);
    old.backends()[1].set_healthy(false);
    let (mut cfg2, mut addrs2) = pool_cfg("slow_start = \"1h\"", &[("b", false), ("a", false), ("new", false)]);
    cfg2.backends[1].weight = 5;
    addrs2[0] = addrs[1];
    addrs2[1] = addrs[0];
    let new = Pool::new(&cfg2, &addrs2, Some(&old));
    // Building changes nothing live: a's weight is still the old one.
    assert_eq!(old.backends()[0].configured_weight(), 1);
    new.activate();
    let a = new.backend("a").cloned();
    let b = new.backend("b").cloned();
    assert!(
        a.as_ref().is_some_and(|a| Arc::ptr_eq(a, &old.backends()[0])),
        "a is the same backend"
    );
    assert_eq!(
        a.map(|a| (a.admin_state(), a.configured_weight())),
        Some((AdminState::Drain, 5))
    );
    assert_eq!(b.map(|b| b.is_healthy()), Some(false));
    let fresh = new.backend("new").map(|n| n.effective_weight());
    assert_eq!(fresh, Some(1), "a backend joining a running pool slow-starts");
    // A backend whose address changed is a new backend.
    let (cfg3, mut addrs3) = pool_cfg("", &[("a", false)]);
    addrs3[0] = SocketAddr::from(([127, 0, 0, 1], 9999));
    let moved = Pool::new(&cfg3, &addrs3, Some(&new));
    moved.activate();
    assert_eq!(moved.backends()[0].admin_state(), AdminState::Ready);
}
