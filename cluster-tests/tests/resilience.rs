//! Retries, the retry budget, passive health (outlier ejection), circuit
//! breaking and backup backends, against real backends.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use shoal_cluster_tests::client::KeepAlive;
use shoal_cluster_tests::config::{listener, local, node, pool};
use shoal_cluster_tests::{Backend, Node, get, request, wait_until};

fn one_listener_node(pool_extra: &str, backends: &[(&str, SocketAddr)]) -> Result<(Node, SocketAddr)> {
    one_listener_node_with("", pool_extra, backends)
}

/// `one_listener_node` with `node_extra` in its `[node]` table.
fn one_listener_node_with(
    node_extra: &str,
    pool_extra: &str,
    backends: &[(&str, SocketAddr)],
) -> Result<(Node, SocketAddr)> {
    let (admin, http) = (local()?, local()?);
    let cfg = node(admin, node_extra) + &listener("web", http, "http", "web", "") + &pool("web", pool_extra, backends);
    Ok((Node::start(&cfg, admin)?, http))
}

/// Counts responses by (status, backend) over `n` keep-alive requests.
fn tally(http: SocketAddr, n: usize) -> Result<BTreeMap<(u16, String), usize>> {
    let mut conn = KeepAlive::open(http, None)?;
    let mut out = BTreeMap::new();
    for _ in 0..n {
        let r = conn.send("GET", "/", &[], b"", false)?;
        let who = r.backend().unwrap_or("proxy").to_string();
        *out.entry((r.status, who)).or_insert(0) += 1;
    }
    Ok(out)
}

fn failures(t: &BTreeMap<(u16, String), usize>) -> usize {
    t.iter().filter(|((s, _), _)| *s != 200).map(|(_, n)| n).sum()
}

#[test]
fn a_dead_backend_not_yet_detected_costs_no_request() -> Result<()> {
    let (a, b, mut c) = (Backend::start("a")?, Backend::start("b")?, Backend::start("c")?);
    // Health checks every 30 s: the kill below goes unnoticed by them.
    let health = "health = { kind = \"http\", path = \"/health\", interval = \"30s\", timeout = \"1s\" }";
    let (node, http) = one_listener_node(health, &[("a", a.addr), ("b", b.addr), ("c", c.addr)])?;
    c.kill();
    let t = tally(http, 90)?;
    assert_eq!(failures(&t), 0, "{t:?}");
    assert!(
        node.backend_healthy("web", "c")?,
        "the health check has not run again yet"
    );
    // A non-idempotent request is retried too when the connection never
    // reached the backend.
    for _ in 0..6 {
        let r = request(http, None, "POST", "/echo", &[], b"payload")?;
        assert_eq!((r.status, r.text().as_str()), (200, "payload"));
    }
    let retried = node.status()?["pools"][0]["retries_granted"].as_u64().unwrap_or(0);
    assert!(retried >= 30, "about a third of 96 requests hit c first: {retried}");
    node.assert_no_panic();
    Ok(())
}

/// A backend that accepts connections and closes each at once, without a
/// response: "reset before any response byte".
fn start_slamming_backend() -> Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let addr = l.local_addr()?;
    std::thread::spawn(move || {
        for mut conn in l.incoming().flatten() {
            // Read the request head so the close is not a connect failure.
            let mut buf = [0u8; 1024];
            let _ = conn.read(&mut buf);
            drop(conn);
        }
    });
    Ok(addr)
}

#[test]
fn failures_before_the_response_are_retried_only_when_safe() -> Result<()> {
    let slam = start_slamming_backend()?;
    let good = Backend::start("good")?;
    // One worker: each request below comes on a new connection, which the
    // kernel may hand to any worker, and each worker keeps its own
    // round_robin turn; the exact 5/5 split needs one turn.
    let (node, http) = one_listener_node_with(
        "workers = 1",
        "algorithm = \"round_robin\"",
        &[("slam", slam), ("good", good.addr)],
    )?;
    for _ in 0..10 {
        let r = get(http, "/")?;
        assert_eq!(
            (r.status, r.backend()),
            (200, Some("good")),
            "GET is idempotent: retried"
        );
    }
    // POST reached the backend before it failed: not retried.
    let mut statuses = BTreeMap::new();
    for _ in 0..10 {
        *statuses
            .entry(request(http, None, "POST", "/", &[], b"x")?.status)
            .or_insert(0) += 1;
    }
    assert_eq!(statuses.get(&502).copied().unwrap_or(0), 5, "{statuses:?}");
    assert_eq!(statuses.get(&200).copied().unwrap_or(0), 5, "{statuses:?}");
    node.assert_no_panic();
    Ok(())
}

#[test]
fn a_zero_retry_budget_stops_retries() -> Result<()> {
    let (a, mut b) = (Backend::start("a")?, Backend::start("b")?);
    let budget = "algorithm = \"round_robin\"\nretry_budget = { percent = 0, min_retries = 0 }";
    let (node, http) = one_listener_node(budget, &[("a", a.addr), ("b", b.addr)])?;
    b.kill();
    let t = tally(http, 20)?;
    assert_eq!(failures(&t), 10, "without budget, every request picking b fails: {t:?}");
    let denied = node.status()?["pools"][0]["retries_denied"].as_u64().unwrap_or(0);
    assert_eq!(denied, 10);
    node.assert_no_panic();
    Ok(())
}

fn ejected(node: &Node, backend: &str) -> bool {
    node.backend_status("web", backend)
        .map(|s| s["ejected"] == true)
        .unwrap_or(false)
}

#[test]
fn a_failing_backend_is_ejected_for_a_growing_time() -> Result<()> {
    let good = Backend::start("good")?;
    let bad = Backend::start_with("bad", &["--fail-with", "500"])?;
    let outlier = "algorithm = \"round_robin\"\n\
                   outlier = { consecutive_failures = 3, base_ejection = \"1500ms\", max_ejection_percent = 100 }";
    let (node, http) = one_listener_node(outlier, &[("good", good.addr), ("bad", bad.addr)])?;
    let t = tally(http, 40)?;
    assert_eq!(
        failures(&t),
        3,
        "three failures eject the bad backend, then only good serves: {t:?}"
    );
    assert!(ejected(&node, "bad"));
    let (_, took) = wait_until(
        "the ejection to end",
        Duration::from_secs(5),
        Duration::from_millis(20),
        || (!ejected(&node, "bad")).then_some(()),
    )?;
    assert!(took < Duration::from_millis(2500), "first ejection lasted {took:?}");
    // Failing again at once: ejected for twice the base time, counted from
    // before the requests that trigger it (it starts within the first few).
    let second_batch = Instant::now();
    let t = tally(http, 40)?;
    assert_eq!(failures(&t), 3, "{t:?}");
    wait_until(
        "the second ejection to end",
        Duration::from_secs(8),
        Duration::from_millis(20),
        || (!ejected(&node, "bad")).then_some(()),
    )?;
    let took = second_batch.elapsed();
    assert!(
        took > Duration::from_millis(2900) && took < Duration::from_millis(5000),
        "second ejection ended {took:?} after the batch began (3 s expected)"
    );
    assert_eq!(node.backend_status("web", "bad")?["ejections"], 2);
    assert!(node.log().contains("backend EJECTED"));
    node.assert_no_panic();
    Ok(())
}

#[test]
fn no_more_than_the_configured_share_of_a_pool_is_ejected() -> Result<()> {
    let good = Backend::start("good")?;
    let bad1 = Backend::start_with("bad1", &["--fail-with", "500"])?;
    let bad2 = Backend::start_with("bad2", &["--fail-with", "503"])?;
    let outlier = "algorithm = \"round_robin\"\n\
                   outlier = { consecutive_failures = 3, base_ejection = \"30s\", max_ejection_percent = 50 }";
    let (node, http) = one_listener_node(
        outlier,
        &[("good", good.addr), ("bad1", bad1.addr), ("bad2", bad2.addr)],
    )?;
    let t = tally(http, 60)?;
    // 50% of 3 backends is 1: the first bad backend to fail 3 times is
    // ejected, the other keeps serving errors (the cap keeps capacity).
    let out: Vec<&str> = ["bad1", "bad2"].into_iter().filter(|b| ejected(&node, b)).collect();
    assert_eq!(out.len(), 1, "{out:?} {t:?}");
    let from_ejected: usize = t.iter().filter(|((_, b), _)| b == out[0]).map(|(_, n)| n).sum();
    assert_eq!(from_ejected, 3, "the ejected backend got exactly its 3 failures: {t:?}");
    let other = if out[0] == "bad1" { "bad2" } else { "bad1" };
    let from_other: usize = t
        .iter()
        .filter(|((s, b), _)| *s >= 500 && b == other)
        .map(|(_, n)| n)
        .sum();
    assert!(from_other > 20, "{t:?}");
    assert!(node.log().contains("ejection cap reached"));
    node.assert_no_panic();
    Ok(())
}

#[test]
fn the_circuit_breaker_fails_fast_beyond_its_limits() -> Result<()> {
    let b = Backend::start("a")?;
    let (node, http) = one_listener_node(
        "max_connections = 2\nmax_pending = 1\nconnect_timeout = \"3s\"",
        &[("a", b.addr)],
    )?;
    let slow = |_: usize| std::thread::spawn(move || get(http, "/drip?chunks=2&interval_ms=1500"));
    let holders: Vec<_> = (0..2).map(slow).collect();
    wait_until(
        "two requests in flight",
        Duration::from_secs(5),
        Duration::from_millis(10),
        || {
            node.backend_status("web", "a")
                .ok()
                .filter(|s| s["active_connections"] == 2)
        },
    )?;
    // The third waits in the queue...
    let queued = std::thread::spawn(move || get(http, "/"));
    wait_until(
        "one request queued",
        Duration::from_secs(5),
        Duration::from_millis(10),
        || node.backend_status("web", "a").ok().filter(|s| s["pending"] == 1),
    )?;
    // ...and with the queue full the fourth fails at once.
    let start = Instant::now();
    let r = get(http, "/")?;
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.text().contains("connection limit"), "{}", r.text());
    assert!(start.elapsed() < Duration::from_millis(500), "{:?}", start.elapsed());
    for h in holders {
        assert_eq!(h.join().map_err(|_| anyhow::anyhow!("panicked"))??.status, 200);
    }
    let q = queued.join().map_err(|_| anyhow::anyhow!("panicked"))??;
    assert_eq!(q.status, 200, "the queued request is served once a slot frees");
    // A client that gives up while queued leaves the queue.
    let holders: Vec<_> = (0..2).map(slow).collect();
    wait_until(
        "two requests in flight again",
        Duration::from_secs(5),
        Duration::from_millis(10),
        || {
            node.backend_status("web", "a")
                .ok()
                .filter(|s| s["active_connections"] == 2)
        },
    )?;
    let mut quitter = std::net::TcpStream::connect(http)?;
    quitter.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")?;
    wait_until(
        "the quitter queued",
        Duration::from_secs(5),
        Duration::from_millis(10),
        || node.backend_status("web", "a").ok().filter(|s| s["pending"] == 1),
    )?;
    drop(quitter);
    wait_until(
        "the queue to empty",
        Duration::from_secs(5),
        Duration::from_millis(10),
        || node.backend_status("web", "a").ok().filter(|s| s["pending"] == 0),
    )?;
    let queued = std::thread::spawn(move || get(http, "/"));
    for h in holders {
        assert_eq!(h.join().map_err(|_| anyhow::anyhow!("panicked"))??.status, 200);
    }
    assert_eq!(
        queued.join().map_err(|_| anyhow::anyhow!("panicked"))??.status,
        200,
        "queueing still works"
    );
    node.assert_no_panic();
    Ok(())
}

#[test]
fn backups_serve_only_while_no_primary_can() -> Result<()> {
    let (mut p1, mut p2, spare) = (Backend::start("p1")?, Backend::start("p2")?, Backend::start("spare")?);
    let (admin, http) = (local()?, local()?);
    let cfg = node(admin, "")
        + &listener("web", http, "http", "web", "")
        + "[[pool]]\nname = \"web\"\nhealth = { kind = \"tcp\", interval = \"100ms\", timeout = \"100ms\", rise = 1, fall = 1 }\n\n"
        + &format!("[[pool.backend]]\nname = \"p1\"\naddress = \"{}\"\n\n", p1.addr)
        + &format!("[[pool.backend]]\nname = \"p2\"\naddress = \"{}\"\n\n", p2.addr)
        + &format!(
            "[[pool.backend]]\nname = \"spare\"\naddress = \"{}\"\nbackup = true\n\n",
            spare.addr
        );
    let node = Node::start(&cfg, admin)?;
    let who =
        |n| -> Result<Vec<String>> { tally(http, n).map(|t| t.keys().map(|(_, b)| b.clone()).collect::<Vec<_>>()) };
    assert_eq!(who(20)?, vec!["p1".to_string(), "p2".to_string()]);
    p1.kill();
    p2.kill();
    wait_until(
        "both primaries down",
        Duration::from_secs(5),
        Duration::from_millis(10),
        || {
            let down = |b| node.backend_healthy("web", b).map(|h| !h).unwrap_or(false);
            (down("p1") && down("p2")).then_some(())
        },
    )?;
    assert_eq!(who(10)?, vec!["spare".to_string()]);
    p1.restart()?;
    wait_until("p1 back", Duration::from_secs(5), Duration::from_millis(10), || {
        node.backend_healthy("web", "p1").ok().filter(|h| *h)
    })?;
    assert_eq!(who(10)?, vec!["p1".to_string()]);
    drop(p2);
    node.assert_no_panic();
    Ok(())
}

#[test]
fn a_returning_backend_slow_starts() -> Result<()> {
    let (a, b, mut c) = (Backend::start("a")?, Backend::start("b")?, Backend::start("c")?);
    let extra = "algorithm = \"weighted_round_robin\"\nslow_start = \"6s\"\n\
                 health = { kind = \"tcp\", interval = \"100ms\", timeout = \"100ms\", rise = 1, fall = 1 }";
    let (node, http) = one_listener_node(extra, &[("a", a.addr), ("b", b.addr), ("c", c.addr)])?;
    c.kill();
    wait_until("c down", Duration::from_secs(5), Duration::from_millis(10), || {
        node.backend_healthy("web", "c").ok().filter(|h| !h)
    })?;
    c.restart()?;
    wait_until("c up", Duration::from_secs(5), Duration::from_millis(10), || {
        node.backend_healthy("web", "c").ok().filter(|h| *h)
    })?;
    let back_at = Instant::now();
    let early = tally(http, 90)?;
    let early_c: usize = early.iter().filter(|((_, b), _)| b == "c").map(|(_, n)| n).sum();
    let early_weight = node.backend_status("web", "c")?["effective_weight"]
        .as_f64()
        .context("weight")?;
    assert!(
        back_at.elapsed() < Duration::from_secs(3),
        "the early sample took too long to mean anything"
    );
    wait_until(
        "the ramp to end",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || {
            node.backend_status("web", "c")
                .ok()
                .filter(|s| s["effective_weight"] == 1.0)
        },
    )?;
    let late = tally(http, 150)?;
    let late_c: usize = late.iter().filter(|((_, b), _)| b == "c").map(|(_, n)| n).sum();
    assert!(early_weight < 0.6, "just back, c's weight is ramping: {early_weight}");
    // Even three seconds into a six-second ramp c weighs half: under a
    // fifth of the traffic in all.
    assert!(early_c < 18, "c took {early_c} of 90 right after returning: {early:?}");
    assert_eq!(late_c, 50, "after the ramp c takes its full third: {late:?}");
    assert_eq!(failures(&early) + failures(&late), 0);
    node.assert_no_panic();
    Ok(())
}

#[test]
fn websocket_style_upgrades_pass_through() -> Result<()> {
    let b = Backend::start("a")?;
    let (node, http) = one_listener_node("", &[("a", b.addr)])?;
    let mut s = std::net::TcpStream::connect(http)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET /upgrade HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte)?;
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    for msg in ["hello", "through the proxy"] {
        s.write_all(msg.as_bytes())?;
        let mut back = vec![0u8; msg.len()];
        s.read_exact(&mut back)?;
        assert_eq!(back, msg.as_bytes());
    }
    // The upgraded connection counts against the backend while open.
    assert_eq!(node.backend_status("web", "a")?["active_connections"], 1);
    drop(s);
    wait_until(
        "the upgraded connection to close",
        Duration::from_secs(5),
        Duration::from_millis(10),
        || {
            node.backend_status("web", "a")
                .ok()
                .filter(|st| st["active_connections"] == 0)
        },
    )?;
    node.assert_no_panic();
    Ok(())
}
