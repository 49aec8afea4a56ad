//! Each algorithm's distribution through the real proxy, over HTTP and TCP
//! listeners, against three real demo backends with weights 1, 2, 3.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use anyhow::{Context, Result, bail};
use shoal_cluster_tests::client::KeepAlive;
use shoal_cluster_tests::{Backend, Node, free_port, tcp_get};

const ALGORITHMS: [&str; 9] = [
    "round_robin",
    "weighted_round_robin",
    "least_conn",
    "least_response_time",
    "p2c",
    "random",
    "ip_hash",
    "consistent_hash",
    "maglev",
];

struct Setup {
    node: Node,
    _backends: Vec<Backend>,
    http: HashMap<&'static str, SocketAddr>,
    tcp: HashMap<&'static str, SocketAddr>,
    user_hash_http: SocketAddr,
}

fn setup() -> Result<Setup> {
    // demo-c is slow, which least_response_time must notice.
    let backends = vec![
        Backend::start("demo-a")?,
        Backend::start("demo-b")?,
        Backend::start_with_delay("demo-c", "5ms")?,
    ];
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let mut cfg = format!("[node]\nid = \"lb1\"\nadmin_addr = \"{admin}\"\n\n");
    let pool_backends = |cfg: &mut String| {
        for (b, w) in backends.iter().zip([1, 2, 3]) {
            cfg.push_str(&format!(
                "[[pool.backend]]\nname = \"{}\"\naddress = \"{}\"\nweight = {w}\n\n",
                b.name, b.addr
            ));
        }
    };
    let (mut http, mut tcp) = (HashMap::new(), HashMap::new());
    for alg in ALGORITHMS {
        let (h, t) = (
            SocketAddr::from(([127, 0, 0, 1], free_port()?)),
            SocketAddr::from(([127, 0, 0, 1], free_port()?)),
        );
        cfg.push_str(&format!(
            "[[listener]]\nname = \"http-{alg}\"\nbind = \"{h}\"\nprotocol = \"http\"\npool = \"{alg}\"\n\n\
             [[listener]]\nname = \"tcp-{alg}\"\nbind = \"{t}\"\nprotocol = \"tcp\"\npool = \"{alg}\"\n\n\
             [[pool]]\nname = \"{alg}\"\nalgorithm = \"{alg}\"\n\n"
        ));
        pool_backends(&mut cfg);
        http.insert(alg, h);
        tcp.insert(alg, t);
    }
    let user_hash_http = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    cfg.push_str(&format!(
        "[[listener]]\nname = \"http-user\"\nbind = \"{user_hash_http}\"\nprotocol = \"http\"\npool = \"by-user\"\n\n\
         [[pool]]\nname = \"by-user\"\nalgorithm = \"maglev\"\nhash_key = \"header:x-user\"\n\n"
    ));
    pool_backends(&mut cfg);
    let node = Node::start(&cfg, admin)?;
    Ok(Setup {
        node,
        _backends: backends,
        http,
        tcp,
        user_hash_http,
    })
}

type Counts = BTreeMap<String, u32>;

fn http_counts(addr: SocketAddr, n: u32) -> Result<Counts> {
    let mut conn = KeepAlive::open(addr, None)?;
    let mut counts = Counts::new();
    for _ in 0..n {
        let r = conn.send("GET", "/", &[], b"", false)?;
        if r.status != 200 {
            bail!("status {} from {addr}: {}", r.status, r.text());
        }
        *counts
            .entry(r.backend().context("no x-backend")?.to_string())
            .or_default() += 1;
    }
    Ok(counts)
}

fn tcp_counts(addr: SocketAddr, n: u32) -> Result<Counts> {
    let mut counts = Counts::new();
    for _ in 0..n {
        let r = tcp_get(addr, None, "/")?;
        *counts
            .entry(r.backend().context("no x-backend")?.to_string())
            .or_default() += 1;
    }
    Ok(counts)
}

fn get(c: &Counts, name: &str) -> u32 {
    c.get(name).copied().unwrap_or(0)
}

/// Asserts counts for demo-a/b/c are each within `tol` of `want`.
fn assert_near(what: &str, c: &Counts, want: [u32; 3], tol: u32) {
    for (name, w) in ["demo-a", "demo-b", "demo-c"].iter().zip(want) {
        let got = get(c, name);
        assert!(
            got.abs_diff(w) <= tol,
            "{what}: {name} got {got}, expected {w}±{tol}; all: {c:?}"
        );
    }
}

fn check_spread(alg: &str, proto: &str, c: &Counts) {
    let what = format!("{alg} over {proto}");
    match alg {
        // Exact: deterministic rotations, 600 picks are whole cycles.
        "round_robin" => assert_near(&what, c, [200, 200, 200], 0),
        "weighted_round_robin" => assert_near(&what, c, [100, 200, 300], 0),
        // Sequential requests leave every backend idle at pick time, so
        // ties are broken by weight; a connection whose close the proxy has
        // not yet seen can shift a few picks.
        "least_conn" => assert_near(&what, c, [100, 200, 300], 30),
        // Weighted random draws: 45 is over 3 standard deviations.
        "p2c" | "random" => assert_near(&what, c, [100, 200, 300], 45),
        "least_response_time" => {
            let slow = get(c, "demo-c");
            assert!(slow <= 30, "{what}: the slow backend got {slow} of 600: {c:?}");
        }
        _ => unreachable!("{alg}"),
    }
}

#[test]
fn every_algorithm_distributes_as_designed_over_http_and_tcp() -> Result<()> {
    let s = setup()?;
    let results: Vec<Result<()>> = std::thread::scope(|scope| {
        let handles: Vec<_> = ALGORITHMS
            .iter()
            .filter(|a| !matches!(**a, "ip_hash" | "consistent_hash" | "maglev"))
            .map(|&alg| {
                let (h, t) = (s.http[alg], s.tcp[alg]);
                scope.spawn(move || -> Result<()> {
                    check_spread(alg, "http", &http_counts(h, 600)?);
                    check_spread(alg, "tcp", &tcp_counts(t, 600)?);
                    Ok(())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    for r in results {
        r?;
    }
    s.node.assert_no_panic();
    Ok(())
}

#[test]
fn hash_algorithms_pin_each_client_address_to_one_backend() -> Result<()> {
    let s = setup()?;
    for alg in ["ip_hash", "consistent_hash", "maglev"] {
        let mut per_backend = Counts::new();
        for last in 2..=61u8 {
            let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, last));
            let mut conn = KeepAlive::open(s.http[alg], Some(ip))?;
            let first = conn.send("GET", "/", &[], b"", false)?;
            let second = conn.send("GET", "/", &[], b"", true)?;
            let over_tcp = tcp_get(s.tcp[alg], Some(ip), "/")?;
            let name = first.backend().context("no x-backend")?.to_string();
            assert_eq!(
                second.backend(),
                Some(name.as_str()),
                "{alg}: {ip} moved between requests"
            );
            // HTTP and TCP listeners share the pool, hence the mapping.
            assert_eq!(
                over_tcp.backend(),
                Some(name.as_str()),
                "{alg}: {ip} differs between HTTP and TCP"
            );
            *per_backend.entry(name).or_default() += 1;
        }
        assert_eq!(
            per_backend.len(),
            3,
            "{alg}: 60 addresses should reach all 3 backends: {per_backend:?}"
        );
    }
    s.node.assert_no_panic();
    Ok(())
}

#[test]
fn header_hash_key_pins_each_user() -> Result<()> {
    let s = setup()?;
    let mut seen = HashMap::new();
    let mut conn = KeepAlive::open(s.user_hash_http, None)?;
    for round in 0..2 {
        for user in 0..100 {
            let user = format!("user-{user}");
            let r = conn.send("GET", "/", &[("X-User", &user)], b"", false)?;
            let name = r.backend().context("no x-backend")?.to_string();
            let first = seen.entry(user.clone()).or_insert_with(|| name.clone());
            assert_eq!(*first, name, "round {round}: {user} moved");
        }
    }
    let distinct: std::collections::HashSet<&String> = seen.values().collect();
    assert_eq!(distinct.len(), 3, "100 users should reach all 3 backends");
    s.node.assert_no_panic();
    Ok(())
}
