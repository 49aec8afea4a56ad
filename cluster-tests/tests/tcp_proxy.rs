//! The TCP proxy end to end: half-close, connect retries, idle timeout and
//! what a client sees when no backend can be reached. Every test runs on
//! both I/O interfaces (`[node] io`): `epoll::*` and `io_uring::*`.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::Result;
use shoal_cluster_tests::client;
use shoal_cluster_tests::config::{listener, local, node, pool};
use shoal_cluster_tests::{Backend, Io, Node, get, on_both_io, tcp_get, wait_until};

fn node_with(io: Io, backends: &[(&str, SocketAddr)], listener_extra: &str) -> Result<(Node, SocketAddr)> {
    let (admin, tcp) = (local()?, local()?);
    let cfg = node(admin, &io.config())
        + &listener("raw", tcp, "tcp", "p", listener_extra)
        + &pool("p", "retries = 2\nconnect_timeout = \"500ms\"", backends);
    let node = Node::start(&cfg, admin)?;
    // The node says which one its TCP listeners really use.
    assert_eq!(node.status()?["node"]["tcp_io"], io.name(), "{}", node.log());
    Ok((node, tcp))
}

on_both_io!(
    half_close_is_forwarded_and_the_backend_can_still_answer,
    connect_failures_are_retried_on_another_backend,
    idle_connections_are_closed_but_active_ones_are_not,
    without_any_reachable_backend_the_client_is_closed,
    a_backend_that_never_completes_the_handshake_costs_a_client_at_most_connect_timeout,
    over_max_connections_a_tcp_client_is_refused_after_a_short_wait,
    a_reload_moves_a_port_between_tcp_and_http_and_back,
);

/// A raw TCP backend that reads until the client's FIN, then answers with
/// everything it read reversed and closes. It can only answer if the proxy
/// forwards the half-close.
fn start_reverse_on_eof_backend() -> Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut got = Vec::new();
                if conn.read_to_end(&mut got).is_ok() {
                    got.reverse();
                    let _ = conn.write_all(&got);
                }
            });
        }
    });
    Ok(addr)
}

fn half_close_is_forwarded_and_the_backend_can_still_answer(io: Io) -> Result<()> {
    let backend = start_reverse_on_eof_backend()?;
    let (node, tcp) = node_with(io, &[("rev", backend)], "")?;
    let data: Vec<u8> = (0..2 * 1024 * 1024u32).map(|i| (i % 253) as u8).collect();
    let mut s = client::connect(tcp, None)?;
    let writer = {
        let mut w = s.try_clone()?;
        let data = data.clone();
        std::thread::spawn(move || -> std::io::Result<()> {
            w.write_all(&data)?;
            w.shutdown(Shutdown::Write)
        })
    };
    let mut answer = Vec::new();
    s.read_to_end(&mut answer)?;
    writer.join().map_err(|_| anyhow::anyhow!("writer panicked"))??;
    let mut want = data;
    want.reverse();
    assert_eq!(answer.len(), want.len());
    assert!(answer == want, "the answer after the half-close differs");
    node.assert_no_panic();
    Ok(())
}

fn connect_failures_are_retried_on_another_backend(io: Io) -> Result<()> {
    let live = Backend::start("live")?;
    let dead = local()?;
    let (node, tcp) = node_with(io, &[("dead", dead), ("live", live.addr)], "")?;
    for i in 0..30 {
        let r = tcp_get(tcp, None, "/")?;
        assert_eq!((i, r.status, r.backend()), (i, 200, Some("live")));
    }
    let status = node.status()?;
    let on_ring = match io {
        Io::Epoll => 0,
        Io::IoUring => 30,
    };
    assert_eq!(status["listeners"][0]["ring_connections"], on_ring, "{status}");
    assert!(
        status["pools"][0]["backends"][0]["connect_failures"]
            .as_u64()
            .unwrap_or(0)
            >= 10
    );
    node.assert_no_panic();
    Ok(())
}

fn idle_connections_are_closed_but_active_ones_are_not(io: Io) -> Result<()> {
    let b = Backend::start("a")?;
    let (node, tcp) = node_with(io, &[("a", b.addr)], "idle_timeout = \"400ms\"")?;

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

    // Chunks every 100 ms keep the connection active well past the timeout.
    let r = tcp_get(tcp, None, "/drip?chunks=12&interval_ms=100")?;
    assert!(r.text().contains("chunk 11"), "{}", r.text());
    node.assert_no_panic();
    Ok(())
}

fn without_any_reachable_backend_the_client_is_closed(io: Io) -> Result<()> {
    let (node, tcp) = node_with(io, &[("dead1", local()?), ("dead2", local()?)], "")?;
    let mut s = client::connect(tcp, None)?;
    let mut buf = [0u8; 16];
    assert_eq!(s.read(&mut buf)?, 0);
    let status = node.status()?;
    assert_eq!(status["listeners"][0]["accepted_connections"], 1);
    assert!(node.log().contains("no usable backend"), "{}", node.log());
    node.assert_no_panic();
    Ok(())
}

/// An address whose handshakes hang: a listener with a backlog of one,
/// filled by a connection nobody accepts, so the kernel drops further
/// SYNs. Keep the returned filler alive while it is used.
fn unanswering_backend() -> Result<(socket2::Socket, std::net::TcpStream, SocketAddr)> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    socket.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())?;
    socket.listen(0)?;
    let addr = socket
        .local_addr()?
        .as_socket()
        .ok_or_else(|| anyhow::anyhow!("not an inet socket"))?;
    let filler = std::net::TcpStream::connect(addr)?;
    Ok((socket, filler, addr))
}

fn a_backend_that_never_completes_the_handshake_costs_a_client_at_most_connect_timeout(io: Io) -> Result<()> {
    let live = Backend::start("live")?;
    let (_listening, _filler, hung) = unanswering_backend()?;
    // Pool: connect_timeout 500ms, 2 retries.
    let (node, tcp) = node_with(io, &[("hung", hung), ("live", live.addr)], "")?;
    let mut slowest = Duration::ZERO;
    for _ in 0..4 {
        let started = Instant::now();
        let r = tcp_get(tcp, None, "/")?;
        slowest = slowest.max(started.elapsed());
        assert_eq!((r.status, r.backend()), (200, Some("live")));
    }
    // Those sent to the hung backend first waited its connect timeout
    // once, no more.
    assert!(
        slowest >= Duration::from_millis(450) && slowest < Duration::from_millis(1500),
        "slowest request took {slowest:?}"
    );
    let failures = node.status()?["pools"][0]["backends"][0]["connect_failures"]
        .as_u64()
        .unwrap_or(0);
    assert!(failures >= 1, "{failures} connect failures on the hung backend");
    node.assert_no_panic();
    Ok(())
}

fn over_max_connections_a_tcp_client_is_refused_after_a_short_wait(io: Io) -> Result<()> {
    let b = Backend::start("a")?;
    let (node, tcp) = node_with(io, &[("a", b.addr)], "max_connections = 1")?;
    let holder = client::connect(tcp, None)?;
    shoal_cluster_tests::wait_until(
        "the slot to be taken",
        Duration::from_secs(5),
        Duration::from_millis(20),
        || (node.status().ok()?["listeners"][0]["active_connections"] == 1).then_some(()),
    )?;
    let queued_at = Instant::now();
    let mut refused = client::connect(tcp, None)?;
    let mut buf = [0u8; 16];
    let n = refused.read(&mut buf).unwrap_or(0);
    let waited = queued_at.elapsed();
    assert_eq!(n, 0);
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
        "refused after {waited:?}"
    );
    drop(holder);
    shoal_cluster_tests::wait_until(
        "the slot to free",
        Duration::from_secs(5),
        Duration::from_millis(20),
        || (node.status().ok()?["listeners"][0]["active_connections"] == 0).then_some(()),
    )?;
    assert_eq!(tcp_get(tcp, None, "/")?.status, 200);
    assert!(node.status()?["listeners"][0]["refused_connections"].as_u64() >= Some(1));
    node.assert_no_panic();
    Ok(())
}

/// A listener that changes protocol keeps its port: on io_uring its
/// sockets move between the ring threads and the epoll workers. A
/// connection opened before a reload is served to its end.
fn a_reload_moves_a_port_between_tcp_and_http_and_back(io: Io) -> Result<()> {
    let b = Backend::start("a")?;
    let (lb, port) = node_with(io, &[("a", b.addr)], "")?;
    let as_protocol = |protocol: &str| {
        node(lb.admin, &format!("io = \"{}\"", io.name()))
            + &listener("raw", port, protocol, "p", "")
            + &pool("p", "retries = 2\nconnect_timeout = \"500ms\"", &[("a", b.addr)])
    };
    let mut held = client::connect(port, None)?;
    let held_open = || (lb.status().ok()?["listeners"][0]["active_connections"] == 1).then_some(());
    // Accepted by the TCP loop (and connected to the backend) before the
    // reloads, not left in the kernel's queue for the HTTP loop.
    wait_until(
        "the TCP loop to accept",
        Duration::from_secs(5),
        Duration::from_millis(20),
        held_open,
    )?;
    for (protocol, requests_counted) in [("http", true), ("tcp", false)] {
        lb.reload(&as_protocol(protocol))?;
        wait_until(
            &format!("the listener to serve {protocol}"),
            Duration::from_secs(5),
            Duration::from_millis(20),
            || (lb.status().ok()?["listeners"][0]["protocol"] == protocol).then_some(()),
        )?;
        let before = lb.status()?["listeners"][0]["requests"].as_u64().unwrap_or(0);
        let r = if protocol == "http" {
            get(port, "/")?
        } else {
            tcp_get(port, None, "/")?
        };
        assert_eq!((protocol, r.status, r.backend()), (protocol, 200, Some("a")));
        let after = lb.status()?["listeners"][0]["requests"].as_u64().unwrap_or(0);
        assert_eq!(
            after > before,
            requests_counted,
            "{protocol}: requests {before} -> {after}"
        );
    }
    // Opened on the first TCP loop, before both reloads, and open since.
    assert!(held_open().is_some(), "{}", lb.status()?["listeners"][0]);
    held.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
    let mut answer = String::new();
    held.read_to_string(&mut answer)?;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(lb.status()?["node"]["tcp_io"], io.name());
    lb.assert_no_panic();
    Ok(())
}
