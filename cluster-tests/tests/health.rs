//! Active health checks against real backends: a killed backend leaves the
//! rotation within fall × interval (+ one interval) and comes back after it
//! returns.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use shoal_cluster_tests::client::KeepAlive;
use shoal_cluster_tests::config::node;
use shoal_cluster_tests::{Backend, Node, free_port, tcp_get, wait_until};

const INTERVAL_MS: u64 = 300;
const FALL: u64 = 2;
const RISE: u64 = 2;
/// Scheduling and polling slack on a busy 2-core machine.
const SLACK: Duration = Duration::from_millis(250);

fn config(admin: SocketAddr, http: SocketAddr, tcp: SocketAddr, backends: &[Backend], kind: &str) -> String {
    let mut cfg = node(admin, "");
    cfg.push_str(&format!(
        "[[listener]]\nname = \"web\"\nbind = \"{http}\"\nprotocol = \"http\"\npool = \"web\"\n\n\
         [[listener]]\nname = \"raw\"\nbind = \"{tcp}\"\nprotocol = \"tcp\"\npool = \"web\"\n\n\
         [[pool]]\nname = \"web\"\nalgorithm = \"round_robin\"\n\
         # No retries: a request routed to the dead backend would fail.\nretries = 0\n\
         health = {{ kind = \"{kind}\", path = \"/health\", interval = \"{INTERVAL_MS}ms\", timeout = \"200ms\", rise = {RISE}, fall = {FALL} }}\n\n"
    ));
    for b in backends {
        cfg.push_str(&format!(
            "[[pool.backend]]\nname = \"{}\"\naddress = \"{}\"\n\n",
            b.name, b.addr
        ));
    }
    cfg
}

fn served_by(http: SocketAddr, n: usize) -> Result<BTreeSet<String>> {
    let mut conn = KeepAlive::open(http, None)?;
    let mut seen = BTreeSet::new();
    for i in 0..n {
        let r = conn.send("GET", "/", &[], b"", false)?;
        anyhow::ensure!(r.status == 200, "request {i} failed with {}: {}", r.status, r.text());
        seen.insert(r.backend().context("no x-backend")?.to_string());
    }
    Ok(seen)
}

fn killed_backend_leaves_and_returns(kind: &str) -> Result<()> {
    let mut backends = vec![Backend::start("a")?, Backend::start("b")?, Backend::start("c")?];
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let http = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let tcp = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let node = Node::start(&config(admin, http, tcp, &backends, kind), admin)?;
    assert_eq!(served_by(http, 30)?.len(), 3);

    backends[2].kill();
    let bound = Duration::from_millis(FALL * INTERVAL_MS + INTERVAL_MS) + SLACK;
    let (_, took) = wait_until("backend c marked down", bound * 3, Duration::from_millis(10), || {
        node.backend_healthy("web", "c").ok().filter(|h| !h).map(|_| ())
    })?;
    assert!(
        took <= bound,
        "{kind} check took {took:?} to mark c down; bound {bound:?}"
    );
    // With no retries, any request still routed to c would fail here.
    let seen = served_by(http, 60)?;
    assert_eq!(seen, BTreeSet::from(["a".to_string(), "b".to_string()]));
    for _ in 0..20 {
        let r = tcp_get(tcp, None, "/")?;
        assert_ne!(r.backend(), Some("c"));
        assert_eq!(r.status, 200);
    }

    backends[2].restart()?;
    let bound = Duration::from_millis(RISE * INTERVAL_MS + INTERVAL_MS) + SLACK;
    let (_, took) = wait_until("backend c back up", bound * 3, Duration::from_millis(10), || {
        node.backend_healthy("web", "c").ok().filter(|h| *h).map(|_| ())
    })?;
    assert!(
        took <= bound,
        "{kind} check took {took:?} to bring c back; bound {bound:?}"
    );
    assert_eq!(served_by(http, 30)?.len(), 3, "c gets traffic again");

    let log = node.log();
    assert!(
        log.contains("backend is DOWN") && log.contains("backend is UP"),
        "transitions are logged:\n{log}"
    );
    node.assert_no_panic();
    Ok(())
}

#[test]
fn http_check_takes_killed_backend_out_and_back() -> Result<()> {
    killed_backend_leaves_and_returns("http")
}

#[test]
fn tcp_check_takes_killed_backend_out_and_back() -> Result<()> {
    killed_backend_leaves_and_returns("tcp")
}

#[test]
fn http_check_requires_a_healthy_status() -> Result<()> {
    // A backend that answers 503 on the health path is down although it
    // accepts connections: check a pool whose health path returns 503.
    let backends = [Backend::start("a")?];
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let http = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let cfg = node(admin, "")
        + &format!(
            "[[listener]]\nname = \"web\"\nbind = \"{http}\"\nprotocol = \"http\"\npool = \"web\"\n\n\
         [[pool]]\nname = \"web\"\n\
         health = {{ kind = \"http\", path = \"/status/503\", interval = \"100ms\", timeout = \"100ms\", rise = 1, fall = 1 }}\n\n\
         [[pool.backend]]\nname = \"a\"\naddress = \"{}\"\n",
            backends[0].addr
        );
    let node = Node::start(&cfg, admin)?;
    wait_until(
        "a marked down",
        Duration::from_secs(5),
        Duration::from_millis(10),
        || node.backend_healthy("web", "a").ok().filter(|h| !h).map(|_| ()),
    )?;
    let r = shoal_cluster_tests::get(http, "/")?;
    assert_eq!(r.status, 503);
    assert!(r.text().contains("no usable backend in pool \"web\""), "{}", r.text());
    node.assert_no_panic();
    Ok(())
}
