//! `[node] io`'s default, io_uring, and the fallback to epoll where the
//! kernel refuses rings (a seccomp profile, `kernel.io_uring_disabled`, a
//! kernel before 6.1): the node must still serve every listener, and say
//! which interface it runs on.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::Result;
use shoal_cluster_tests::client::KeepAlive;
use shoal_cluster_tests::config::{listener, local, node_table, pool};
use shoal_cluster_tests::{Backend, Node, io_uring_available, tcp_get};

/// A node with the default `io` (even under SHOAL_TEST_IO), an HTTP and a
/// TCP listener on one backend.
fn config(backend: &Backend) -> Result<(String, SocketAddr, SocketAddr, SocketAddr)> {
    let (admin, http, tcp) = (local()?, local()?, local()?);
    let cfg = node_table("lb1", admin, "", None)
        + &listener("web", http, "http", "p", "")
        + &listener("raw", tcp, "tcp", "p", "")
        + &pool("p", "", &[("a", backend.addr)]);
    Ok((cfg, admin, http, tcp))
}

/// Serves three requests on one kept-alive connection through `http` and
/// one through `tcp`; then how many connections each listener served on
/// a ring, by listener name.
fn serve_and_count_ring_connections(node: &Node, http: SocketAddr, tcp: SocketAddr) -> Result<(u64, u64)> {
    let mut conn = KeepAlive::open(http, None)?;
    for i in 0..3 {
        let r = conn.send("GET", "/", &[], b"", false)?;
        anyhow::ensure!(r.status == 200, "request {i} through the HTTP listener: {}", r.status);
    }
    drop(conn);
    let r = tcp_get(tcp, None, "/")?;
    anyhow::ensure!(r.status == 200, "request through the TCP listener: {}", r.status);
    let status = node.status()?;
    let on_ring = |name: &str| {
        status["listeners"]
            .as_array()
            .and_then(|ls| ls.iter().find(|l| l["name"] == name))
            .and_then(|l| l["ring_connections"].as_u64())
    };
    match (on_ring("web"), on_ring("raw")) {
        (Some(web), Some(raw)) => Ok((web, raw)),
        _ => anyhow::bail!("no ring_connections for both listeners: {status}"),
    }
}

#[test]
fn where_the_kernel_refuses_io_uring_the_default_node_serves_on_epoll_and_says_so() -> Result<()> {
    let backend = Backend::start("a")?;
    let (cfg, admin, http, tcp) = config(&backend)?;
    // io_uring_setup fails with EPERM in the node, as under Docker's or
    // another runtime's seccomp profile that forbids it.
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("no_io_uring.py");
    let node = Node::start_under(&[Path::new("python3"), &script], &cfg, admin)?;
    assert_eq!(node.status()?["node"]["tcp_io"], "epoll", "{}", node.log());
    assert_eq!(
        node.log_count("this kernel refuses io_uring"),
        1,
        "the fallback is logged once: {}",
        node.log()
    );
    // The filter's EPERM, not another refusal (an old kernel's EINVAL):
    // the wrapper itself is what this test relies on.
    assert_eq!(node.log_count("os error 1)"), 1, "{}", node.log());
    let (web, raw) = serve_and_count_ring_connections(&node, http, tcp)?;
    assert_eq!((web, raw), (0, 0), "nothing served on a ring");
    node.assert_no_panic();
    Ok(())
}

#[test]
fn by_default_a_node_serves_on_io_uring_where_the_kernel_allows_it() -> Result<()> {
    if !io_uring_available("by_default_a_node_serves_on_io_uring_where_the_kernel_allows_it") {
        return Ok(());
    }
    let backend = Backend::start("a")?;
    let (cfg, admin, http, tcp) = config(&backend)?;
    let node = Node::start(&cfg, admin)?;
    assert_eq!(node.status()?["node"]["tcp_io"], "io_uring", "{}", node.log());
    assert_eq!(node.log_count("refuses io_uring"), 0, "{}", node.log());
    let (web, raw) = serve_and_count_ring_connections(&node, http, tcp)?;
    assert_eq!(
        (web, raw),
        (1, 1),
        "the kept-alive HTTP connection and the TCP one on rings"
    );
    node.assert_no_panic();
    Ok(())
}
