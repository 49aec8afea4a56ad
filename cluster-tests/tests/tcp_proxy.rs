//! The TCP proxy end to end: half-close, connect retries, idle timeout and
//! what a client sees when no backend can be reached.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::Result;
use shoal_cluster_tests::client::{self, read_response};
use shoal_cluster_tests::{Backend, Node, free_port, tcp_get};

fn local() -> Result<SocketAddr> {
    Ok(SocketAddr::from(([127, 0, 0, 1], free_port()?)))
}

fn node_with(backends: &[(&str, SocketAddr)], listener_extra: &str) -> Result<(Node, SocketAddr)> {
    let (admin, tcp) = (local()?, local()?);
    let mut cfg = format!(
        "[node]\nid = \"lb1\"\nadmin_addr = \"{admin}\"\n\n\
         [[listener]]\nname = \"raw\"\nbind = \"{tcp}\"\nprotocol = \"tcp\"\npool = \"p\"\n{listener_extra}\n\n\
         [[pool]]\nname = \"p\"\nretries = 2\nconnect_timeout = \"500ms\"\n\n"
    );
    for (name, addr) in backends {
        cfg.push_str(&format!(
            "[[pool.backend]]\nname = \"{name}\"\naddress = \"{addr}\"\n\n"
        ));
    }
    Ok((Node::start(&cfg, admin)?, tcp))
}

#[test]
fn half_close_lets_the_backend_answer_after_the_client_stops_sending() -> Result<()> {
    let b = Backend::start("a")?;
    let (node, tcp) = node_with(&[("a", b.addr)], "")?;
    let body: Vec<u8> = (0..4 * 1024 * 1024u32).map(|i| (i % 253) as u8).collect();
    let mut s = client::connect(tcp, None)?;
    write!(
        s,
        "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    s.write_all(&body)?;
    s.shutdown(Shutdown::Write)?;
    let r = read_response(&mut std::io::BufReader::new(s), "POST")?;
    assert_eq!(r.status, 200);
    assert!(r.body == body, "echo through the TCP proxy differs");
    node.assert_no_panic();
    Ok(())
}

#[test]
fn connect_failures_are_retried_on_another_backend() -> Result<()> {
    let live = Backend::start("live")?;
    let dead = local()?;
    let (node, tcp) = node_with(&[("dead", dead), ("live", live.addr)], "")?;
    for i in 0..30 {
        let r = tcp_get(tcp, None, "/")?;
        assert_eq!((i, r.status, r.backend()), (i, 200, Some("live")));
    }
    let status = node.status()?;
    assert!(
        status["pools"][0]["backends"][0]["connect_failures"]
            .as_u64()
            .unwrap_or(0)
            >= 10
    );
    node.assert_no_panic();
    Ok(())
}

#[test]
fn idle_connections_are_closed_but_active_ones_are_not() -> Result<()> {
    let b = Backend::start("a")?;
    let (node, tcp) = node_with(&[("a", b.addr)], "idle_timeout = \"400ms\"")?;

    let mut idle = client::connect(tcp, None)?;
    let start = Instant::now();
    let mut buf = [0u8; 16];
    let n = idle.read(&mut buf)?;
    let took = start.elapsed();
    assert_eq!(n, 0, "expected the proxy to close the idle connection");
    assert!(
        took >= Duration::from_millis(350) && took < Duration::from_millis(1500),
        "closed after {took:?}"
    );

    // Chunks every 250 ms keep the connection active past the timeout.
    let r = tcp_get(tcp, None, "/drip?chunks=5&interval_ms=250")?;
    assert!(r.text().contains("chunk 4"), "{}", r.text());
    node.assert_no_panic();
    Ok(())
}

#[test]
fn without_any_reachable_backend_the_client_is_closed() -> Result<()> {
    let (node, tcp) = node_with(&[("dead1", local()?), ("dead2", local()?)], "")?;
    let mut s = client::connect(tcp, None)?;
    let mut buf = [0u8; 16];
    assert_eq!(s.read(&mut buf)?, 0);
    let status = node.status()?;
    assert_eq!(status["listeners"][0]["accepted_connections"], 1);
    assert!(node.log().contains("no usable backend"), "{}", node.log());
    node.assert_no_panic();
    Ok(())
}
