//! Sticky sessions with real nodes: the four modes, and the replicated
//! table surviving the loss of the node that created the bindings.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use shoal_cluster_tests::client::KeepAlive;
use shoal_cluster_tests::config::{listener, local, node, node_named, pool};
use shoal_cluster_tests::procs::run_shoal;
use shoal_cluster_tests::{Backend, Node, get, request, tcp_get, wait_until};

#[derive(Clone, Copy)]
struct Addrs {
    admin: SocketAddr,
    gossip: SocketAddr,
    repl: SocketAddr,
    http: SocketAddr,
    tcp: SocketAddr,
}

fn addrs() -> Result<Addrs> {
    Ok(Addrs {
        admin: local()?,
        gossip: local()?,
        repl: local()?,
        http: local()?,
        tcp: local()?,
    })
}

/// Certificates and the gossip key for `nodes`, from `shoal certs`.
fn certs(dir: &Path, nodes: &str) -> Result<()> {
    let (code, _, err) = run_shoal(&["certs", "--dir", &dir.to_string_lossy(), "--nodes", nodes])?;
    anyhow::ensure!(code == 0, "shoal certs failed: {err}");
    Ok(())
}

fn cluster_config(id: &str, a: Addrs, seed: SocketAddr, dir: &Path, backends: &[(&str, SocketAddr)]) -> String {
    let d = dir.display();
    node_named(id, a.admin, "")
        + &format!(
            "[cluster]\nname = \"edge\"\ngossip_addr = \"{}\"\nreplication_addr = \"{}\"\nseeds = [\"{seed}\"]\n\
             gossip_key_file = \"{d}/gossip.key\"\ntls = {{ ca = \"{d}/ca.pem\", cert = \"{d}/{id}.pem\", key = \"{d}/{id}.key\" }}\n\n",
            a.gossip, a.repl
        )
        + &listener("web", a.http, "http", "web", "")
        + &listener("raw", a.tcp, "tcp", "raw", "")
        // Round robin on purpose: without the table, a session would move.
        + &pool("web", "sticky = { mode = \"learn_cookie\", cookie = \"sid\", ttl = \"10m\" }", backends)
        + &pool("raw", "sticky = { mode = \"source_ip\", ttl = \"10m\" }", backends)
}

struct Cluster {
    dir: tempfile::TempDir,
    backends: Vec<Backend>,
    addrs: Vec<Addrs>,
    nodes: Vec<Node>,
}

impl Cluster {
    fn backend_list(&self) -> Vec<(&str, SocketAddr)> {
        self.backends.iter().map(|b| (b.name.as_str(), b.addr)).collect()
    }

    fn config(&self, i: usize) -> String {
        cluster_config(
            &format!("lb{}", i + 1),
            self.addrs[i],
            self.addrs[0].gossip,
            self.dir.path(),
            &self.backend_list(),
        )
    }

    fn start(n: usize) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        certs(
            dir.path(),
            &(1..=n).map(|i| format!("lb{i}")).collect::<Vec<_>>().join(","),
        )?;
        let mut c = Self {
            dir,
            backends: vec![
                Backend::start("web-1")?,
                Backend::start("web-2")?,
                Backend::start("web-3")?,
            ],
            addrs: (0..n).map(|_| addrs()).collect::<Result<_>>()?,
            nodes: Vec::new(),
        };
        for i in 0..n {
            let node = Node::start(&c.config(i), c.addrs[i].admin)?;
            c.nodes.push(node);
        }
        // Every node pushes to every other.
        for (i, n) in c.nodes.iter().enumerate() {
            wait_until(
                &format!("lb{} replicating to all peers", i + 1),
                Duration::from_secs(10),
                Duration::from_millis(50),
                || {
                    let s = n.status().ok()?;
                    let peers = s["affinity"]["peers"].as_array()?.clone();
                    (peers.len() == c.nodes.len() - 1 && peers.iter().all(|p| p["connected"] == true)).then_some(())
                },
            )?;
        }
        Ok(c)
    }
}

fn entries(node: &Node) -> u64 {
    node.status()
        .ok()
        .and_then(|s| s["affinity"]["entries"].as_u64())
        .unwrap_or(0)
}

/// Waits until `node` has sent `want` sticky entries to its peers, and
/// fails if it sent more: the last write was a marker, and a link sends in
/// order.
fn assert_sent_exactly(node: &Node, want: u64) -> Result<()> {
    let sent = || node.status().ok()?["affinity"]["entries_sent"].as_u64();
    wait_until(
        &format!("{want} entries sent"),
        Duration::from_secs(10),
        Duration::from_millis(20),
        || sent().filter(|&n| n >= want).map(drop),
    )?;
    let affinity = &node.status()?["affinity"];
    assert_eq!(affinity["entries_sent"], want, "uses rewrote bindings: {affinity}");
    Ok(())
}

#[test]
fn learned_cookie_sessions_survive_the_loss_of_the_node_that_made_them() -> Result<()> {
    let mut c = Cluster::start(3)?;
    // 200 sessions through node 1: each backend sets its own `sid`.
    let mut sessions = BTreeMap::new();
    let mut conn = KeepAlive::open(c.addrs[0].http, None)?;
    for _ in 0..200 {
        let r = conn.send("GET", "/session", &[], b"", false)?;
        let sid = r.session_id().context("no session cookie")?.to_string();
        sessions.insert(sid, r.backend().context("no x-backend")?.to_string());
    }
    assert_eq!(sessions.len(), 200);
    // Using a session within a tenth of its TTL writes nothing to
    // replicate; one more new session after them is the marker (a link
    // sends in order): node 1 has sent 201 entries to each peer.
    for (sid, backend) in &sessions {
        let r = conn.send("GET", "/", &[("Cookie", &format!("sid={sid}"))], b"", false)?;
        assert_eq!(r.backend(), Some(backend.as_str()));
    }
    conn.send("GET", "/session", &[], b"", false)?;
    assert_sent_exactly(&c.nodes[0], 402)?;
    std::thread::sleep(Duration::from_millis(500));
    c.nodes[0].kill();
    for (i, n) in [(1, "node 2"), (2, "node 3")] {
        let mut conn = KeepAlive::open(c.addrs[i].http, None)?;
        let mut same = 0;
        for (sid, backend) in &sessions {
            let r = conn.send("GET", "/", &[("Cookie", &format!("sid={sid}"))], b"", false)?;
            if r.backend() == Some(backend.as_str()) {
                same += 1;
            }
        }
        assert_eq!(same, 200, "{n} sent {same} of 200 sessions to their backend");
    }
    Ok(())
}

#[test]
fn source_ip_bindings_over_tcp_survive_node_loss_and_a_restarted_node_gets_the_table_back() -> Result<()> {
    let mut c = Cluster::start(3)?;
    let mut bound = BTreeMap::new();
    for last in 2..=101u8 {
        let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, last));
        let r = tcp_get(c.addrs[0].tcp, Some(ip), "/")?;
        bound.insert(ip, r.backend().context("no x-backend")?.to_string());
    }
    // Coming back within a tenth of the TTL keeps the binding and writes
    // nothing to replicate: one more new address after them is the marker
    // (a link sends in order), so node 1 has sent 101 entries to each peer.
    for (ip, backend) in &bound {
        assert_eq!(
            tcp_get(c.addrs[0].tcp, Some(*ip), "/")?.backend(),
            Some(backend.as_str())
        );
    }
    tcp_get(c.addrs[0].tcp, Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 102))), "/")?;
    assert_sent_exactly(&c.nodes[0], 202)?;
    std::thread::sleep(Duration::from_millis(500));
    c.nodes[0].kill();
    for i in [1, 2] {
        let mut same = 0;
        for (ip, backend) in &bound {
            if tcp_get(c.addrs[i].tcp, Some(*ip), "/")?.backend() == Some(backend.as_str()) {
                same += 1;
            }
        }
        assert_eq!(
            same,
            100,
            "node {} kept {same} of 100 client addresses on their backend",
            i + 1
        );
    }
    // Node 1 comes back empty and receives the whole table from its peers.
    let restarted = Node::start(&c.config(0), c.addrs[0].admin)?;
    let want = entries(&c.nodes[1]);
    assert!(want >= 100, "{want}");
    let synced = wait_until(
        "the restarted node's full table",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || (entries(&restarted) >= want).then_some(()),
    );
    if let Err(e) = synced {
        anyhow::bail!(
            "{e}\nrestarted: {}\nnode 2: {}\nlog 2:\n{}",
            restarted.status()?["affinity"],
            c.nodes[1].status()?["affinity"],
            c.nodes[1]
                .log()
                .lines()
                .filter(|l| l.contains("repl") || l.contains("sync") || l.contains("peer"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    let mut same = 0;
    for (ip, backend) in &bound {
        if tcp_get(c.addrs[0].tcp, Some(*ip), "/")?.backend() == Some(backend.as_str()) {
            same += 1;
        }
    }
    assert_eq!(same, 100);
    restarted.assert_no_panic();
    Ok(())
}

#[test]
fn a_node_with_a_certificate_from_another_ca_is_refused() -> Result<()> {
    let c = Cluster::start(2)?;
    // lb3 shares the gossip key (so it is a cluster member) but its
    // certificate comes from another CA.
    let rogue_dir = tempfile::tempdir()?;
    certs(rogue_dir.path(), "lb3")?;
    std::fs::copy(c.dir.path().join("gossip.key"), rogue_dir.path().join("gossip.key"))?;
    let a3 = addrs()?;
    let rogue = Node::start(
        &cluster_config("lb3", a3, c.addrs[0].gossip, rogue_dir.path(), &c.backend_list()),
        a3.admin,
    )?;
    wait_until(
        "the rogue node in gossip",
        Duration::from_secs(5),
        Duration::from_millis(50),
        || {
            let s = c.nodes[0].status().ok()?;
            s["peers"]
                .as_array()?
                .iter()
                .any(|p| p["id"] == "lb3" && p["state"] == "alive")
                .then_some(())
        },
    )?;
    // Bindings made on the rogue node never reach the others...
    for last in 150..=159u8 {
        tcp_get(a3.tcp, Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))), "/")?;
    }
    wait_until(
        "refused replication attempts",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || {
            let s = c.nodes[0].status().ok()?;
            let rejected = s["affinity"]["rejected"].as_u64()?;
            let link = s["affinity"]["peers"]
                .as_array()?
                .iter()
                .find(|p| p["id"] == "lb3")?
                .clone();
            (rejected > 0 && link["connected"] == false).then_some(())
        },
    )?;
    assert_eq!(entries(&c.nodes[0]), 0, "nothing from the rogue node was applied");
    assert_eq!(entries(&c.nodes[1]), 0);
    assert_eq!(entries(&rogue), 10);
    Ok(())
}

fn single_node(pool_extra: &str, backends: &[(&str, SocketAddr)]) -> Result<(Node, SocketAddr)> {
    let (admin, http) = (local()?, local()?);
    let cfg = node(admin, "") + &listener("web", http, "http", "web", "") + &pool("web", pool_extra, backends);
    Ok((Node::start(&cfg, admin)?, http))
}

#[test]
fn insert_cookie_pins_a_client_and_re_pins_when_its_backend_dies() -> Result<()> {
    let (a, mut b) = (Backend::start("a")?, Backend::start("b")?);
    let extra = "sticky = { mode = \"insert_cookie\", cookie = \"lb\" }\n\
                 health = { kind = \"tcp\", interval = \"100ms\", timeout = \"100ms\", rise = 1, fall = 1 }";
    let (node, http) = single_node(extra, &[("a", a.addr), ("b", b.addr)])?;
    let first = get(http, "/")?;
    let set = first.header("set-cookie").context("no cookie")?.to_string();
    let cookie = set.split(';').next().unwrap_or_default().to_string();
    let value = cookie.trim_start_matches("lb=");
    assert!(
        value.len() == 16 && value.bytes().all(|b| b.is_ascii_hexdigit()),
        "the cookie is opaque: {set}"
    );
    let pinned = first.backend().context("no backend")?.to_string();
    for _ in 0..10 {
        let r = request(http, None, "GET", "/", &[("Cookie", &cookie)], b"")?;
        assert_eq!(r.backend(), Some(pinned.as_str()));
        assert!(r.header("set-cookie").is_none(), "an unchanged binding is not re-sent");
    }
    if pinned == "b" {
        b.kill();
    } else {
        drop(a);
    }
    wait_until(
        "the pinned backend down",
        Duration::from_secs(5),
        Duration::from_millis(20),
        || node.backend_healthy("web", &pinned).ok().filter(|h| !h),
    )?;
    let r = request(http, None, "GET", "/", &[("Cookie", &cookie)], b"")?;
    assert_eq!(r.status, 200);
    assert_ne!(r.backend(), Some(pinned.as_str()));
    assert!(
        r.header("set-cookie").is_some_and(|c| c.starts_with("lb=")),
        "re-pinned with a new cookie"
    );
    Ok(())
}

#[test]
fn header_mode_binds_each_value_to_the_backend_that_served_it_first() -> Result<()> {
    let (a, b, c) = (Backend::start("a")?, Backend::start("b")?, Backend::start("c")?);
    let (node, http) = single_node(
        "sticky = { mode = \"header\", header = \"x-tenant\" }",
        &[("a", a.addr), ("b", b.addr), ("c", c.addr)],
    )?;
    let mut conn = KeepAlive::open(http, None)?;
    let mut first = BTreeMap::new();
    for round in 0..3 {
        for t in 0..30 {
            let tenant = format!("tenant-{t}");
            let r = conn.send("GET", "/", &[("X-Tenant", &tenant)], b"", false)?;
            let name = r.backend().context("no backend")?.to_string();
            let pinned = first.entry(tenant.clone()).or_insert_with(|| name.clone());
            assert_eq!(*pinned, name, "round {round}: {tenant} moved");
        }
    }
    assert_eq!(entries(&node), 30);
    // Round robin would have spread them: all three backends hold tenants.
    assert_eq!(first.values().collect::<std::collections::BTreeSet<_>>().len(), 3);
    Ok(())
}

/// The cluster edge under garbage: 500 TCP connections of random bytes
/// (at the HTTP listener and the admin API) and 4 000 random UDP datagrams
/// (empty, truncated, oversized) at each node's gossip and replication
/// ports. Both nodes keep serving, keep seeing each other, and give the
/// memory back.
#[test]
fn random_bytes_at_every_cluster_port_change_nothing() -> Result<()> {
    use std::io::{Read, Write};
    let c = Cluster::start(2)?;
    let serve_all = |what: &str| -> Result<()> {
        for (i, a) in c.addrs.iter().enumerate() {
            let ok = (0..100)
                .filter(|_| get(a.http, "/").is_ok_and(|r| r.status == 200))
                .count();
            anyhow::ensure!(ok == 100, "{what}: lb{} served {ok}/100", i + 1);
        }
        Ok(())
    };
    serve_all("before")?;
    let before: Vec<u64> = c.nodes.iter().map(Node::rss_kib).collect::<Result<_>>()?;

    let mut rng = fastrand::Rng::with_seed(0x5e_ed);
    let mut junk = |max: usize| -> Vec<u8> {
        let len = rng.usize(0..=max);
        std::iter::repeat_with(|| rng.u8(..)).take(len).collect()
    };
    for k in 0..500 {
        let a = c.addrs[k % 2];
        let target = if k % 4 < 2 { a.http } else { a.admin };
        let mut s = std::net::TcpStream::connect_timeout(&target, Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        // The peer may close before taking it all; that is its right.
        let _ = s.write_all(&junk(4096));
        let _ = s.shutdown(std::net::Shutdown::Write);
        let _ = s.read_to_end(&mut Vec::new());
    }
    let udp = std::net::UdpSocket::bind("127.0.0.1:0")?;
    for k in 0..4000 {
        let a = c.addrs[k % 2];
        let port = if k % 4 < 2 { a.gossip } else { a.repl };
        let max = if k % 50 == 0 { 65_000 } else { 1500 };
        // A full socket buffer may drop some: the point is what arrives.
        let _ = udp.send_to(&junk(max), port);
    }

    serve_all("after")?;
    for (i, n) in c.nodes.iter().enumerate() {
        // Proof the storm arrived: gossip refused unauthenticated datagrams.
        let rejected = n.status()?["cluster"]["gossip_rejected"].as_u64().unwrap_or(0);
        assert!(rejected >= 100, "lb{} rejected only {rejected} gossip datagrams", i + 1);
        wait_until(
            &format!("lb{} to still see its peer alive and replicating", i + 1),
            Duration::from_secs(10),
            Duration::from_millis(50),
            || {
                let s = n.status().ok()?;
                let alive = s["peers"].as_array()?.iter().any(|p| p["state"] == "alive");
                let linked = s["affinity"]["peers"]
                    .as_array()?
                    .iter()
                    .all(|p| p["connected"] == true);
                (alive && linked).then_some(())
            },
        )?;
        // Freed memory goes back lazily; allow it a few seconds.
        let limit = before[i] + before[i] / 5;
        wait_until(
            &format!("lb{} RSS back within 20% of {} KiB", i + 1, before[i]),
            Duration::from_secs(10),
            Duration::from_millis(100),
            || n.rss_kib().ok().filter(|&r| r <= limit),
        )?;
        n.assert_no_panic();
    }
    Ok(())
}

/// A node configured with another node's certificate does not start: its
/// peers would refuse it (the acceptor checks the certificate names the
/// node its hello claims; tested with hand-made peers in
/// node/src/affinity/replication.rs), so it is a config error.
#[test]
fn a_node_configured_with_another_nodes_certificate_does_not_start() -> Result<()> {
    let dir = tempfile::tempdir()?;
    certs(dir.path(), "lb1,lb2")?;
    let a = addrs()?;
    let d = dir.path().display().to_string();
    let config = cluster_config("lb1", a, a.gossip, dir.path(), &[("web-1", local()?)]).replace(
        &format!("cert = \"{d}/lb1.pem\", key = \"{d}/lb1.key\""),
        &format!("cert = \"{d}/lb2.pem\", key = \"{d}/lb2.key\""),
    );
    anyhow::ensure!(config.contains("lb2.pem"), "the certificate swap did not apply");
    let path = dir.path().join("lb1.toml");
    std::fs::write(&path, config)?;
    let (code, _, err) = run_shoal(&["run", "-c", &path.to_string_lossy()])?;
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("cluster.tls.cert") && err.contains("does not name this node (\"lb1\")"),
        "{err}"
    );
    Ok(())
}
