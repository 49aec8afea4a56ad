//! Cluster membership over gossip with real `shoal` processes on loopback:
//! discovery, shared connection counts and health, failure detection,
//! graceful leave, gossip authentication, and the operator's views
//! (`/status`, `/metrics`, `shoal status`, the dashboard in Chromium).

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::Value;
use shoal_cluster_tests::browser::Browser;
use shoal_cluster_tests::config::{cluster, listener, local, node_named, pool};
use shoal_cluster_tests::procs::run_shoal;
use shoal_cluster_tests::{Backend, Node, get, wait_until};

/// Addresses of one node of a test cluster.
#[derive(Clone, Copy)]
struct Addrs {
    admin: SocketAddr,
    gossip: SocketAddr,
    repl: SocketAddr,
    tcp: SocketAddr,
    http: SocketAddr,
}

fn addrs() -> Result<Addrs> {
    Ok(Addrs {
        admin: local()?,
        gossip: local()?,
        repl: local()?,
        tcp: local()?,
        http: local()?,
    })
}

fn config(id: &str, a: Addrs, seeds: &[SocketAddr], key: &Path, backends: &[(&str, SocketAddr)]) -> String {
    node_named(id, a.admin, "")
        + &cluster(a.gossip, a.repl, seeds, Some(key))
        + &listener("raw", a.tcp, "tcp", "web", "")
        + &listener("web", a.http, "http", "web", "")
        + &pool("web", "algorithm = \"least_conn\"", backends)
}

fn write_key(dir: &Path, name: &str, byte: u8) -> Result<std::path::PathBuf> {
    let path = dir.join(name);
    std::fs::write(&path, format!("{}\n", format!("{byte:02x}").repeat(32)))?;
    Ok(path)
}

fn peer(status: &Value, id: &str) -> Option<Value> {
    status["peers"].as_array()?.iter().find(|p| p["id"] == id).cloned()
}

fn peer_state(node: &Node, id: &str) -> Option<String> {
    peer(&node.status().ok()?, id).and_then(|p| p["state"].as_str().map(str::to_string))
}

struct TestCluster {
    _dir: tempfile::TempDir,
    key: std::path::PathBuf,
    backends: Vec<Backend>,
    addrs: Vec<Addrs>,
    nodes: Vec<Node>,
}

impl TestCluster {
    fn config(&self, i: usize) -> String {
        let seeds = [self.addrs[0].gossip];
        let b: Vec<(&str, SocketAddr)> = self.backends.iter().map(|b| (b.name.as_str(), b.addr)).collect();
        config(&format!("lb{}", i + 1), self.addrs[i], &seeds, &self.key, &b)
    }

    fn start(n: usize) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let key = write_key(dir.path(), "gossip.key", 0x5a)?;
        let mut c = Self {
            key,
            _dir: dir,
            backends: vec![Backend::start("web-1")?, Backend::start("web-2")?],
            addrs: (0..n).map(|_| addrs()).collect::<Result<_>>()?,
            nodes: Vec::new(),
        };
        for i in 0..n {
            let node = Node::start(&c.config(i), c.addrs[i].admin)?;
            c.nodes.push(node);
        }
        Ok(c)
    }

    /// Waits until every node sees every other alive; returns how long.
    fn converge(&self) -> Result<Duration> {
        let ids: Vec<String> = (1..=self.nodes.len()).map(|i| format!("lb{i}")).collect();
        let (_, took) = wait_until(
            "all nodes alive everywhere",
            Duration::from_secs(10),
            Duration::from_millis(20),
            || {
                self.nodes
                    .iter()
                    .enumerate()
                    .all(|(i, n)| {
                        ids.iter()
                            .enumerate()
                            .filter(|(j, _)| *j != i)
                            .all(|(_, id)| peer_state(n, id).as_deref() == Some("alive"))
                    })
                    .then_some(())
            },
        )?;
        Ok(took)
    }
}

fn web1(node: &Node) -> Option<Value> {
    node.backend_status("web", "web-1").ok()
}

#[test]
fn three_nodes_find_each_other_and_share_connection_counts() -> Result<()> {
    let c = TestCluster::start(3)?;
    let took = c.converge()?;
    assert!(took < Duration::from_secs(2), "the cluster converged in {took:?}");
    // 12 idle TCP connections through node 1 (least_conn: split over two
    // backends) show up in node 2's cluster-wide counts.
    let held: Vec<TcpStream> = (0..12)
        .map(|_| TcpStream::connect(c.addrs[0].tcp))
        .collect::<Result<_, _>>()?;
    let start = Instant::now();
    let (_, took) = wait_until(
        "12 connections in node 2's view",
        Duration::from_secs(5),
        Duration::from_millis(20),
        || {
            let s = c.nodes[1].status().ok()?;
            let total: u64 = s["pools"][0]["backends"]
                .as_array()?
                .iter()
                .map(|b| b["cluster_connections"].as_u64().unwrap_or(0))
                .sum();
            (total == 12).then_some(())
        },
    )?;
    assert!(took < Duration::from_secs(2), "counts reached node 2 after {took:?}");
    let b = web1(&c.nodes[1]).context("web-1")?;
    assert_eq!(b["active_connections"], 0, "node 2 holds none itself");
    let health = b["health_by_node"].as_object().context("health_by_node")?;
    let all_up: serde_json::Map<String, Value> = ["lb1", "lb2", "lb3"]
        .iter()
        .map(|n| (n.to_string(), Value::Bool(true)))
        .collect();
    assert_eq!(*health, all_up, "every node's verdict is shown");
    drop(held);
    wait_until(
        "the connections to close everywhere",
        Duration::from_secs(5),
        Duration::from_millis(20),
        || web1(&c.nodes[2]).filter(|b| b["cluster_connections"] == 0),
    )?;
    assert!(start.elapsed() < Duration::from_secs(10));
    for n in &c.nodes {
        n.assert_no_panic();
    }
    Ok(())
}

#[test]
fn a_killed_node_is_dead_within_two_seconds_and_a_restarted_one_rejoins() -> Result<()> {
    let mut c = TestCluster::start(3)?;
    c.converge()?;
    // Node 3 holds connections; when it dies, its counts stop counting.
    let held: Vec<TcpStream> = (0..6)
        .map(|_| TcpStream::connect(c.addrs[2].tcp))
        .collect::<Result<_, _>>()?;
    wait_until(
        "node 3's connections in node 1's view",
        Duration::from_secs(5),
        Duration::from_millis(20),
        || {
            let s = c.nodes[0].status().ok()?;
            let total: u64 = s["pools"][0]["backends"]
                .as_array()?
                .iter()
                .filter_map(|b| b["cluster_connections"].as_u64())
                .sum();
            (total == 6).then_some(())
        },
    )?;
    c.nodes[2].kill();
    let (_, took) = wait_until(
        "node 3 dead in both views",
        Duration::from_secs(10),
        Duration::from_millis(20),
        || {
            (peer_state(&c.nodes[0], "lb3").as_deref() == Some("dead")
                && peer_state(&c.nodes[1], "lb3").as_deref() == Some("dead"))
            .then_some(())
        },
    )?;
    assert!(took < Duration::from_secs(2), "node 3 was declared dead after {took:?}");
    let s = c.nodes[0].status()?;
    let total: u64 = s["pools"][0]["backends"]
        .as_array()
        .context("backends")?
        .iter()
        .filter_map(|b| b["cluster_connections"].as_u64())
        .sum();
    assert_eq!(total, 0, "a dead node's counts are dropped");
    drop(held);

    let restarted = Node::start(&c.config(2), c.addrs[2].admin)?;
    let (_, took) = wait_until(
        "node 3 back",
        Duration::from_secs(10),
        Duration::from_millis(20),
        || (peer_state(&c.nodes[0], "lb3").as_deref() == Some("alive")).then_some(()),
    )?;
    assert!(took < Duration::from_secs(2), "node 3 rejoined after {took:?}");
    // It is one peer, not two generations.
    assert_eq!(c.nodes[0].status()?["peers"].as_array().map(Vec::len), Some(2));
    wait_until(
        "node 3 to see the others",
        Duration::from_secs(5),
        Duration::from_millis(20),
        || (peer_state(&restarted, "lb1").as_deref() == Some("alive")).then_some(()),
    )?;
    c.nodes[0].assert_no_panic();
    Ok(())
}

/// Which backend each of `n` connections through `tcp` reached, holding
/// them open; the demo backend names itself in its greeting.
fn hold_connections(tcp: SocketAddr, n: usize) -> Result<(Vec<TcpStream>, Vec<String>)> {
    use std::io::{BufRead, BufReader, Write};
    let mut held = Vec::new();
    let mut names = Vec::new();
    for _ in 0..n {
        let mut s = TcpStream::connect(tcp)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        // A keep-alive request: the connection stays open (and counted)
        // after the answer.
        write!(s, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")?;
        let mut reader = BufReader::new(s.try_clone()?);
        let mut line = String::new();
        let name = loop {
            line.clear();
            if reader.read_line(&mut line)? == 0 {
                anyhow::bail!("connection closed");
            }
            if let Some(v) = line.strip_prefix("x-backend: ") {
                break v.trim().to_string();
            }
        };
        names.push(name);
        held.push(s);
    }
    Ok((held, names))
}

#[test]
fn balancing_uses_the_whole_clusters_connection_counts() -> Result<()> {
    let c = TestCluster::start(2)?;
    c.converge()?;
    // Node 1 puts 8 long-lived connections on web-1 (web-2 drained there;
    // admin states are per node).
    let drain = request_state(c.nodes[0].admin, "web-2", "drain")?;
    assert_eq!(drain, 200);
    let (_held1, names1) = hold_connections(c.addrs[0].tcp, 8)?;
    assert!(names1.iter().all(|n| n == "web-1"), "{names1:?}");
    wait_until(
        "node 2 to see them",
        Duration::from_secs(5),
        Duration::from_millis(20),
        || web1(&c.nodes[1]).filter(|b| b["cluster_connections"] == 8),
    )?;
    // Node 2 has no connection of its own: local-only least_conn would
    // split 4/4; cluster-aware, all 8 go to the idle backend.
    let (_held2, names2) = hold_connections(c.addrs[1].tcp, 8)?;
    assert!(
        names2.iter().all(|n| n == "web-2"),
        "node 2 ignored node 1's load: {names2:?}"
    );
    Ok(())
}

fn request_state(admin: SocketAddr, backend: &str, state: &str) -> Result<u16> {
    let body = format!("{{\"state\":\"{state}\"}}");
    let r = shoal_cluster_tests::request(
        admin,
        None,
        "PUT",
        &format!("/pools/web/backends/{backend}/state"),
        &[],
        body.as_bytes(),
    )?;
    Ok(r.status)
}

#[test]
fn one_nodes_view_of_a_backend_is_shown_by_all() -> Result<()> {
    // Node 3 checks a path that fails: it sees both backends down while
    // nodes 1 and 2 see them up (a partial failure, as when one node
    // cannot reach a backend). Health config is not part of the pools'
    // fingerprint, so the nodes still agree.
    let mut c = TestCluster::start(2)?;
    let a3 = addrs()?;
    c.addrs.push(a3);
    let failing = "algorithm = \"least_conn\"\n\
                   health = { kind = \"http\", path = \"/status/503\", interval = \"100ms\", timeout = \"100ms\", rise = 1, fall = 1 }";
    let b: Vec<(&str, SocketAddr)> = c.backends.iter().map(|b| (b.name.as_str(), b.addr)).collect();
    let cfg3 = node_named("lb3", a3.admin, "")
        + &cluster(a3.gossip, a3.repl, &[c.addrs[0].gossip], Some(&c.key))
        + &listener("raw", a3.tcp, "tcp", "web", "")
        + &listener("web", a3.http, "http", "web", "")
        + &pool("web", failing, &b);
    c.nodes.push(Node::start(&cfg3, a3.admin)?);
    c.converge()?;
    wait_until(
        "node 1 to show lb3's verdict",
        Duration::from_secs(5),
        Duration::from_millis(20),
        || web1(&c.nodes[0]).filter(|b| b["health_by_node"]["lb3"] == false),
    )?;
    let b = web1(&c.nodes[0]).context("web-1")?;
    assert_eq!(b["health_by_node"]["lb1"], true);
    assert_eq!(b["health_by_node"]["lb2"], true);
    // Each node routes by its own verdict: node 1 serves, node 3 cannot.
    assert_eq!(get(c.addrs[0].http, "/")?.status, 200);
    assert_eq!(get(a3.http, "/")?.status, 503);
    // Node 2 hears lb3's verdict by gossip too, possibly a round later.
    wait_until(
        "node 2 to show lb3's verdict",
        Duration::from_secs(5),
        Duration::from_millis(20),
        || web1(&c.nodes[1]).filter(|b| b["health_by_node"]["lb3"] == false),
    )?;
    let (code, out, _) = run_shoal(&["status", "--admin", &c.nodes[1].admin.to_string()])?;
    assert_eq!(code, 0);
    let row = out
        .lines()
        .find(|l| l.trim_start().starts_with("web-1"))
        .unwrap_or_default();
    let last: Vec<&str> = row.split_whitespace().rev().take(3).collect();
    assert_eq!(last, ["DOWN", "up", "up"], "health columns lb1 lb2 lb3: {out}");
    Ok(())
}

#[test]
fn a_node_leaving_gracefully_is_dropped_at_once() -> Result<()> {
    let mut c = TestCluster::start(2)?;
    c.converge()?;
    let start = Instant::now();
    c.nodes[1].signal("TERM")?;
    wait_until(
        "node 2 gone from node 1's view",
        Duration::from_secs(5),
        Duration::from_millis(10),
        || peer(&c.nodes[0].status().ok()?, "lb2").filter(|p| p["state"] == "dead" && p["left"] == true),
    )?;
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "leave took {:?}",
        start.elapsed()
    );
    let status = c.nodes[1].wait_exit(Duration::from_secs(10))?;
    assert!(status.success());
    assert!(c.nodes[0].log().contains("peer left the cluster"));
    Ok(())
}

#[test]
fn a_node_with_another_gossip_key_never_joins() -> Result<()> {
    let c = TestCluster::start(2)?;
    c.converge()?;
    let other_key = write_key(c._dir.path(), "other.key", 0x77)?;
    let intruder = addrs()?;
    let b: Vec<(&str, SocketAddr)> = c.backends.iter().map(|b| (b.name.as_str(), b.addr)).collect();
    let node = Node::start(
        &config("lb9", intruder, &[c.addrs[0].gossip], &other_key, &b),
        intruder.admin,
    )?;
    // Gossip rounds are 100 ms: twenty rounds without a join.
    std::thread::sleep(Duration::from_secs(2));
    for n in &c.nodes {
        let s = n.status()?;
        assert!(peer(&s, "lb9").is_none(), "the intruder appears: {}", s["peers"]);
    }
    // It gossips to its seed, node 1, which drops every datagram.
    let rejected = c.nodes[0].status()?["cluster"]["gossip_rejected"].as_u64().unwrap_or(0);
    assert!(rejected >= 5, "node 1 rejected {rejected} datagrams");
    assert_eq!(
        node.status()?["peers"].as_array().map(Vec::len),
        Some(0),
        "and it sees nobody"
    );
    assert!(c.nodes[0].log().contains("without a valid tag"));
    Ok(())
}

#[test]
fn nodes_disagreeing_on_backends_are_flagged() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let key = write_key(dir.path(), "gossip.key", 0x11)?;
    let (b1, b2) = (Backend::start("web-1")?, Backend::start("web-2")?);
    let (a1, a2) = (addrs()?, addrs()?);
    let n1 = Node::start(&config("lb1", a1, &[a1.gossip], &key, &[("web-1", b1.addr)]), a1.admin)?;
    let n2 = Node::start(
        &config("lb2", a2, &[a1.gossip], &key, &[("web-1", b1.addr), ("web-2", b2.addr)]),
        a2.admin,
    )?;
    let (warnings, _) = wait_until(
        "a config warning",
        Duration::from_secs(5),
        Duration::from_millis(20),
        || {
            let s = n1.status().ok()?;
            let w = s["cluster"]["warnings"].as_array()?.clone();
            (!w.is_empty()).then_some(w)
        },
    )?;
    assert!(
        warnings[0]
            .as_str()
            .unwrap_or("")
            .contains("lb2 runs different pools or backends"),
        "{warnings:?}"
    );
    assert_eq!(
        peer(&n1.status()?, "lb2").map(|p| p["config_matches"].clone()),
        Some(Value::Bool(false))
    );
    assert!(n1.log().contains("runs different pools or backends"));
    drop(n2);
    Ok(())
}

#[test]
fn status_metrics_and_the_cli_show_the_cluster() -> Result<()> {
    let c = TestCluster::start(2)?;
    c.converge()?;
    let r = get(c.nodes[0].admin, "/")?;
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    let r = get(c.nodes[0].admin, "/metrics")?;
    let text = r.text();
    for needle in [
        "shoal_peers{state=\"alive\"} 1",
        "shoal_backend_healthy{pool=\"web\",backend=\"web-1\"} 1",
        "shoal_gossip_messages_total{direction=\"received\"}",
        "shoal_request_duration_seconds_bucket{listener=\"web\",le=\"+Inf\"}",
    ] {
        assert!(text.contains(needle), "metrics lack {needle:?}:\n{text}");
    }
    let admin = c.nodes[0].admin.to_string();
    let (code, out, err) = run_shoal(&["status", "--admin", &admin])?;
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("node lb1"), "{out}");
    let peer_line = out
        .lines()
        .find(|l| l.trim_start().starts_with("lb2"))
        .unwrap_or_default();
    assert!(peer_line.contains("alive") && peer_line.contains("same"), "{out}");
    let backend_line = out
        .lines()
        .find(|l| l.trim_start().starts_with("web-1"))
        .unwrap_or_default();
    assert_eq!(backend_line.matches(" up").count(), 2, "health on both nodes: {out}");
    let (code, out, _) = run_shoal(&["status", "--admin", &admin, "--json"])?;
    assert_eq!(code, 0);
    let parsed: Value = serde_json::from_str(&out)?;
    assert_eq!(parsed["node"]["id"], "lb1");
    let (code, _, err) = run_shoal(&["status", "--admin", "127.0.0.1:1"])?;
    assert_eq!(code, 1);
    assert!(err.contains("cannot connect"), "{err}");
    Ok(())
}

#[test]
fn certs_writes_keys_privately_and_reuses_the_ca() -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir()?;
    let d = dir.path().to_string_lossy().into_owned();
    let (code, out, err) = run_shoal(&["certs", "--dir", &d, "--nodes", "lb1,lb2"])?;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.matches("created").count(), 7, "{out}");
    for key in ["ca.key", "lb1.key", "lb2.key", "gossip.key"] {
        let mode = std::fs::metadata(dir.path().join(key))?.permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{key}");
    }
    let ca = std::fs::read(dir.path().join("ca.pem"))?;
    let (code, out, _) = run_shoal(&["certs", "--dir", &d, "--nodes", "lb3"])?;
    assert_eq!(code, 0);
    assert!(
        out.contains("created") && out.contains("lb3.pem") && out.contains("kept") && out.contains("ca.pem"),
        "{out}"
    );
    assert_eq!(std::fs::read(dir.path().join("ca.pem"))?, ca, "the CA is reused");
    let (code, _, err) = run_shoal(&["certs", "--dir", &d, "--nodes", "Bad Name"])?;
    assert_eq!(code, 2);
    assert!(err.contains("Bad Name"), "{err}");
    // The written gossip key is one a node accepts.
    let a = addrs()?;
    let b = Backend::start("web-1")?;
    let cfg = config("lb1", a, &[], &dir.path().join("gossip.key"), &[("web-1", b.addr)]);
    let node = Node::start(&cfg, a.admin)?;
    node.assert_no_panic();
    Ok(())
}

#[test]
fn the_dashboard_renders_the_cluster_and_updates_when_a_node_dies() -> Result<()> {
    let mut c = TestCluster::start(3)?;
    c.converge()?;
    let url = format!("http://{}/", c.nodes[0].admin);
    let mut browser = Browser::open(&url)?;
    let cards = "JSON.stringify([...document.querySelectorAll('.node')].map(n => [n.dataset.node, n.dataset.state]))";
    let states = |b: &mut Browser| -> Option<Vec<(String, String)>> {
        let v = b.eval(cards).ok()?;
        serde_json::from_str(v.as_str()?).ok()
    };
    let want_alive = vec![
        ("lb1".to_string(), "alive".to_string()),
        ("lb2".to_string(), "alive".to_string()),
        ("lb3".to_string(), "alive".to_string()),
    ];
    wait_until(
        "the dashboard to show three live nodes",
        Duration::from_secs(15),
        Duration::from_millis(100),
        || states(&mut browser).filter(|s| *s == want_alive),
    )?;
    let cell = browser.eval("document.querySelector('td[data-backend=\"web-1\"][data-node=\"lb3\"]').textContent")?;
    assert_eq!(cell, "up");
    c.nodes[2].kill();
    // The same page, never reloaded, must turn lb3 dead by itself.
    wait_until(
        "the dashboard to show lb3 dead",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || states(&mut browser).filter(|s| s.iter().any(|(n, st)| n == "lb3" && st == "dead")),
    )?;
    let change = browser.eval(
        "(() => { const e = document.querySelector('li[data-event-node=\"lb3\"]'); return e ? e.dataset.from + '>' + e.dataset.to : null })()",
    )?;
    assert_eq!(change, "alive>dead", "the page recorded the change it saw");
    // A dead node's verdicts no longer count: its column empties.
    wait_until(
        "lb3's health cell to clear",
        Duration::from_secs(5),
        Duration::from_millis(100),
        || {
            let v = browser
                .eval("document.querySelector('td[data-backend=\"web-1\"][data-node=\"lb3\"]').textContent")
                .ok()?;
            (v == "-").then_some(())
        },
    )?;
    let shot = c._dir.path().join("dashboard.png");
    browser.screenshot(&shot)?;
    assert!(std::fs::metadata(&shot)?.len() > 10_000, "a real screenshot");
    Ok(())
}
