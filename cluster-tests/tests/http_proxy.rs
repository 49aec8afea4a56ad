//! The HTTP proxy end to end: forwarding headers, keep-alive on both sides,
//! streamed bodies, error statuses, hostile input and graceful shutdown.
//! Every test runs on both I/O interfaces (`[node] io`): `epoll::*` and
//! `io_uring::*`.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use shoal_cluster_tests::client::{self, KeepAlive};
use shoal_cluster_tests::config::{listener, local, node, pool};
use shoal_cluster_tests::{Backend, Io, Node, get, on_both_io, request, wait_until};

/// A node with one HTTP listener on a pool of `backends` (name, address),
/// plus `pool_extra` lines in the pool table.
fn node_with(io: Io, backends: &[(&str, SocketAddr)], pool_extra: &str) -> Result<(Node, SocketAddr)> {
    let (admin, http) = (local()?, local()?);
    let cfg = node(admin, &format!("shutdown_timeout = \"5s\"\n{}", io.config()))
        + &listener("web", http, "http", "web", "")
        + &pool("web", pool_extra, backends);
    started(io, &cfg, admin, http)
}

/// Starts a node from `cfg`, checking it serves plain HTTP on `io` (a
/// silent fallback to epoll would fail the test, not pass it there).
fn started(io: Io, cfg: &str, admin: SocketAddr, http: SocketAddr) -> Result<(Node, SocketAddr)> {
    let node = Node::start(cfg, admin)?;
    anyhow::ensure!(
        node.status()?["node"]["tcp_io"] == io.name(),
        "the node does not run on {}: {}",
        io.name(),
        node.log()
    );
    Ok((node, http))
}

/// Checks how many of the node's client connections were served on
/// io_uring: none on epoll; on io_uring, `on_ring` (a connection moves to a
/// ring once it speaks, unless its first request asks to close).
fn assert_ring_connections(io: Io, node: &Node, on_ring: u64) -> Result<()> {
    let expected = match io {
        Io::Epoll => 0,
        Io::IoUring => on_ring,
    };
    let got = node.status()?["listeners"][0]["ring_connections"].as_u64();
    anyhow::ensure!(got == Some(expected), "ring_connections is {got:?}, not {expected}");
    Ok(())
}

fn header_lines(text: &str) -> BTreeSet<String> {
    text.lines().map(str::to_string).collect()
}

/// A node with one HTTP listener (`listener_extra` added to its table) on
/// a pool of one backend; the backend lives as long as the returned value.
fn one_backend_node(io: Io, listener_extra: &str) -> Result<(Backend, Node, SocketAddr)> {
    let b = Backend::start("a")?;
    let (admin, http) = (local()?, local()?);
    let cfg = node(admin, &io.config())
        + &listener("web", http, "http", "web", listener_extra)
        + &pool("web", "", &[("a", b.addr)]);
    let (node, http) = started(io, &cfg, admin, http)?;
    Ok((b, node, http))
}

/// A `wait_until` condition: the first listener's `key` in /status is `n`.
fn listener_stat(node: &Node, key: &str, n: u64) -> Option<()> {
    (node.status().ok()?["listeners"][0][key] == n).then_some(())
}

fn forwarding_headers_are_set_and_hop_by_hop_headers_stripped(io: Io) -> Result<()> {
    let b = Backend::start("a")?;
    let (node, http) = node_with(io, &[("a", b.addr)], "")?;
    let r = request(
        http,
        None,
        "GET",
        "/headers",
        &[
            ("Connection", "keep-alive, X-Drop-Me"),
            ("X-Drop-Me", "secret"),
            ("Keep-Alive", "timeout=5"),
            ("X-Forwarded-For", "203.0.113.9"),
            ("X-Real-IP", "198.51.100.1"),
            ("X-Request-Id", "trace-abc-123"),
        ],
        b"",
    )?;
    assert_eq!(r.status, 200);
    let seen = header_lines(&r.text());
    for want in [
        "x-forwarded-for: 203.0.113.9, 127.0.0.1",
        "x-real-ip: 127.0.0.1",
        "x-forwarded-proto: http",
        "x-request-id: trace-abc-123",
        "host: shoal-test",
    ] {
        assert!(seen.contains(want), "backend did not see {want:?}; saw {seen:?}");
    }
    for gone in ["x-drop-me", "keep-alive", "connection"] {
        assert!(
            !seen.iter().any(|l| l.starts_with(gone)),
            "backend saw hop-by-hop {gone}: {seen:?}"
        );
    }
    assert_eq!(r.header("x-request-id"), Some("trace-abc-123"));

    // Without a client id, the proxy makes one and tells both sides.
    let r = get(http, "/headers")?;
    let id = r.header("x-request-id").context("no request id")?.to_string();
    assert_eq!(id.len(), 32);
    assert!(header_lines(&r.text()).contains(&format!("x-request-id: {id}")));
    node.assert_no_panic();
    Ok(())
}

fn keep_alive_on_both_sides(io: Io) -> Result<()> {
    let b = Backend::start("a")?;
    let (node, http) = node_with(io, &[("a", b.addr)], "")?;
    let mut conn = KeepAlive::open(http, None)?;
    let mut backend_conns = BTreeSet::new();
    for i in 0..20 {
        let r = conn.send("GET", "/", &[], b"", false)?;
        assert_eq!(r.status, 200, "request {i} on the same client connection");
        // The greeting names the proxy's side of the backend connection.
        let via = r
            .text()
            .rsplit("via ")
            .next()
            .unwrap_or("")
            .trim_end_matches([')', '\n'])
            .to_string();
        backend_conns.insert(via);
    }
    assert!(
        backend_conns.len() <= 3,
        "20 sequential requests used {} backend connections: {backend_conns:?}",
        backend_conns.len()
    );
    let status = node.status()?;
    assert_eq!(status["listeners"][0]["accepted_connections"], 1);
    assert_eq!(status["listeners"][0]["requests"], 20);
    assert_ring_connections(io, &node, 1)?;
    node.assert_no_panic();
    Ok(())
}

fn response_bodies_are_streamed_not_buffered(io: Io) -> Result<()> {
    let b = Backend::start("a")?;
    let (node, http) = node_with(io, &[("a", b.addr)], "")?;
    let mut s = client::connect(http, None)?;
    let start = Instant::now();
    write!(
        s,
        "GET /drip?chunks=3&interval_ms=700 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )?;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let mut first_chunk_at = None;
    loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
        if first_chunk_at.is_none() && String::from_utf8_lossy(&got).contains("chunk 0") {
            first_chunk_at = Some(start.elapsed());
        }
    }
    let total = start.elapsed();
    let first = first_chunk_at.context("never saw the first chunk")?;
    let text = String::from_utf8_lossy(&got);
    assert!(text.contains("chunk 2"), "{text}");
    assert!(
        total >= Duration::from_millis(1400),
        "the stream ended too early: {total:?}"
    );
    assert!(
        first < Duration::from_millis(600),
        "first chunk took {first:?}: the proxy buffered the body"
    );
    // It asked to close: served where it was accepted.
    assert_ring_connections(io, &node, 0)?;
    node.assert_no_panic();
    Ok(())
}

fn request_bodies_pass_through_intact(io: Io) -> Result<()> {
    let b = Backend::start("a")?;
    let (node, http) = node_with(io, &[("a", b.addr)], "")?;
    let body: Vec<u8> = (0..8 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    // Write on another thread: the echo streams back while we upload.
    let s = client::connect(http, None)?;
    let writer = {
        let mut w = s.try_clone()?;
        let body = body.clone();
        std::thread::spawn(move || -> std::io::Result<()> {
            write!(
                w,
                "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            )?;
            w.write_all(&body)
        })
    };
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    let r = client::read_response(&mut std::io::BufReader::new(s), "POST")?;
    writer.join().map_err(|_| anyhow::anyhow!("writer panicked"))??;
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), body.len());
    assert!(r.body == body, "echoed body differs");
    node.assert_no_panic();
    Ok(())
}

fn connect_failures_are_retried_on_another_backend(io: Io) -> Result<()> {
    let live = Backend::start("live")?;
    let dead = local()?;
    // No health check: only the retry keeps clients from seeing the dead one.
    let (node, http) = node_with(io, &[("dead", dead), ("live", live.addr)], "retries = 2")?;
    for i in 0..40 {
        let r = get(http, "/")?;
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        assert_eq!(r.backend(), Some("live"));
    }
    // The dead backend was tried (round robin) and its failures counted.
    let status = node.status()?;
    let dead_status = &status["pools"][0]["backends"][0];
    assert_eq!(dead_status["name"], "dead");
    assert!(
        dead_status["connect_failures"].as_u64().unwrap_or(0) >= 10,
        "{dead_status}"
    );
    node.assert_no_panic();
    Ok(())
}

fn backend_failures_give_502_and_504_with_a_reason(io: Io) -> Result<()> {
    let dead = local()?;
    let (node, http) = node_with(io, &[("dead", dead)], "retries = 0")?;
    let r = get(http, "/")?;
    assert_eq!(r.status, 502);
    assert!(
        r.text().contains("could not connect to backend \"dead\""),
        "{}",
        r.text()
    );
    drop(node);

    let slow = Backend::start_with_delay("slow", "2s")?;
    let (node, http) = node_with(io, &[("slow", slow.addr)], "response_timeout = \"300ms\"")?;
    let start = Instant::now();
    let r = get(http, "/")?;
    assert_eq!(r.status, 504);
    assert!(
        start.elapsed() < Duration::from_millis(1500),
        "took {:?}",
        start.elapsed()
    );
    assert!(r.text().contains("did not respond within"), "{}", r.text());
    node.assert_no_panic();
    drop(node);

    // A backend's own error status is passed through untouched.
    let fast = Backend::start("fast")?;
    let (node, http) = node_with(io, &[("fast", fast.addr)], "")?;
    let r = get(http, "/status/500")?;
    assert_eq!(r.status, 500);
    assert_eq!(r.text(), "status 500 from fast\n");
    node.assert_no_panic();
    Ok(())
}

/// Sends raw bytes and returns everything the proxy answers before closing.
fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> Result<String> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(bytes)?;
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    Ok(String::from_utf8_lossy(&out).into_owned())
}

fn malformed_requests_get_400_and_the_node_keeps_serving(io: Io) -> Result<()> {
    let b = Backend::start("a")?;
    let (node, http) = node_with(io, &[("a", b.addr)], "")?;
    let bad: [&[u8]; 6] = [
        b"GARBAGE\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost x\r\n\r\n",
        b"GET /\x01\x02 HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
    ];
    for req in bad {
        let answer = raw_exchange(http, req)?;
        assert!(
            answer.starts_with("HTTP/1.1 400"),
            "{:?} got {:?}",
            String::from_utf8_lossy(req),
            answer.lines().next()
        );
        assert!(
            answer.to_ascii_lowercase().contains("\r\nconnection: close\r\n"),
            "{:?} got {answer:?}",
            String::from_utf8_lossy(req)
        );
    }

    let answer = raw_exchange(http, b"GET / HTTP/1.0\r\n\r\n")?;
    assert!(
        answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200"),
        "{answer}"
    );
    let r = request(http, None, "CONNECT", "example.com:443", &[], b"")?;
    assert_eq!(r.status, 405);
    assert_eq!(get(http, "/")?.status, 200);
    node.assert_no_panic();
    Ok(())
}

fn sigterm_finishes_in_flight_requests_then_exits_zero(io: Io) -> Result<()> {
    let b = Backend::start("a")?;
    let (mut node, http) = node_with(io, &[("a", b.addr)], "")?;
    let in_flight = std::thread::spawn(move || get(http, "/drip?chunks=3&interval_ms=500"));
    wait_until(
        "the request to be in flight",
        Duration::from_secs(5),
        Duration::from_millis(10),
        || {
            node.status()
                .ok()
                .filter(|s| s["pools"][0]["backends"][0]["active_connections"] == 1)
                .map(|_| ())
        },
    )?;
    node.signal("TERM")?;
    // New connections are refused once the listener is closed.
    wait_until(
        "the listener to close",
        Duration::from_secs(3),
        Duration::from_millis(10),
        || TcpStream::connect(http).is_err().then_some(()),
    )?;
    let r = in_flight
        .join()
        .map_err(|_| anyhow::anyhow!("client thread panicked"))??;
    assert_eq!(r.status, 200);
    assert!(r.text().contains("chunk 2"), "in-flight response was cut: {}", r.text());
    let status = node.wait_exit(Duration::from_secs(5))?;
    assert!(status.success(), "exit status {status}");
    node.assert_no_panic();
    Ok(())
}

fn sigterm_closes_idle_kept_alive_connections_at_once(io: Io) -> Result<()> {
    let b = Backend::start("a")?;
    let (mut node, http) = node_with(io, &[("a", b.addr)], "")?;
    // Served once, then idle between requests (the idle timeout is 60 s).
    let mut idle = KeepAlive::open(http, None)?;
    assert_eq!(idle.send("GET", "/", &[], b"", false)?.status, 200);
    node.signal("TERM")?;
    // The node does not wait for the idle connection (its shutdown
    // timeout is 5 s): the drain closes it.
    let status = node.wait_exit(Duration::from_secs(3))?;
    assert!(status.success(), "exit status {status}");
    assert!(
        idle.send("GET", "/", &[], b"", false).is_err(),
        "the idle connection is still served after the drain"
    );
    node.assert_no_panic();
    Ok(())
}

fn a_backend_stalling_mid_response_is_cut_after_response_timeout(io: Io) -> Result<()> {
    let b = Backend::start("a")?;
    let (node, http) = node_with(io, &[("a", b.addr)], "response_timeout = \"500ms\"")?;
    let start = Instant::now();
    // Headers and the first chunk arrive at once, the second after 5 s.
    let r = get(http, "/drip?chunks=2&interval_ms=5000");
    let took = start.elapsed();
    assert!(r.is_err(), "the cut response must not look complete: {r:?}");
    assert!(took < Duration::from_secs(3), "cut after {took:?}");
    wait_until(
        "the in-flight count to drop",
        Duration::from_secs(3),
        Duration::from_millis(20),
        || {
            node.status()
                .ok()
                .filter(|s| s["pools"][0]["backends"][0]["active_connections"] == 0)
        },
    )?;
    assert_eq!(node.status()?["pools"][0]["backends"][0]["failures"], 1);
    node.assert_no_panic();
    Ok(())
}

fn oversized_heads_get_431_and_oversized_bodies_413(io: Io) -> Result<()> {
    let (_b, node, http) = one_backend_node(io, "max_body_bytes = 1000")?;
    let sent_to_backend = || -> Result<u64> {
        node.status()?["pools"][0]["backends"][0]["requests"]
            .as_u64()
            .context("backend request count")
    };

    // A 200 kB header against the default 64 KiB head limit.
    let big = "x".repeat(200_000);
    let r = client::request(http, None, "GET", "/", &[("X-Big", big.as_str())], b"")?;
    assert_eq!(r.status, 431, "{:?}", String::from_utf8_lossy(&r.body));
    // A declared length over the limit: refused before any backend sees it.
    let r = client::request(http, None, "POST", "/sink", &[], &[b'a'; 2000])?;
    assert_eq!(r.status, 413, "{:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("connection"), Some("close"));
    assert_eq!(sent_to_backend()?, 0, "an oversized request reached the backend");
    // Within the limit: served.
    let r = client::request(http, None, "POST", "/sink", &[], &[b'a'; 1000])?;
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));

    // A chunked body is counted as it streams. It goes out in one write:
    // the node answers 413 and closes once the second chunk passes the
    // limit, and a later write of ours would then fail with a broken pipe.
    let mut s = client::connect(http, None)?;
    let mut request = "POST /sink HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_string();
    for _ in 0..3 {
        request += &format!("258\r\n{}\r\n", "b".repeat(600));
    }
    request += "0\r\n\r\n";
    s.write_all(request.as_bytes())?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)?;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.to_ascii_lowercase().contains("connection: close"), "{answer}");
    node.assert_no_panic();
    Ok(())
}

fn at_max_connections_new_clients_wait_then_are_refused_until_a_slot_frees(io: Io) -> Result<()> {
    let (_b, node, http) = one_backend_node(io, "max_connections = 2\nidle_timeout = \"30s\"")?;
    let first = client::connect(http, None)?;
    let _second = client::connect(http, None)?;
    wait_until(
        "both slots to be taken",
        Duration::from_secs(5),
        Duration::from_millis(20),
        || listener_stat(&node, "active_connections", 2),
    )?;

    // The third waits in the accept queue, then is closed unserved.
    let queued_at = Instant::now();
    let mut third = client::connect(http, None)?;
    write!(third, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")?;
    let mut buf = [0u8; 64];
    let n = third.read(&mut buf).unwrap_or(0);
    let waited = queued_at.elapsed();
    assert_eq!(
        n,
        0,
        "a client over the cap got {:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
        "refused after {waited:?}"
    );
    wait_until(
        "the refusal to be counted",
        Duration::from_secs(5),
        Duration::from_millis(20),
        || listener_stat(&node, "refused_connections", 1),
    )?;

    // A freed slot serves the next client again.
    drop(first);
    wait_until(
        "a slot to free",
        Duration::from_secs(5),
        Duration::from_millis(20),
        || listener_stat(&node, "active_connections", 1),
    )?;
    let r = client::request(http, None, "GET", "/", &[], b"")?;
    assert_eq!(r.status, 200);
    node.assert_no_panic();
    Ok(())
}

fn a_slowloris_client_trickling_its_headers_is_cut_within_header_timeout(io: Io) -> Result<()> {
    // The idle timeout is long: it is the header timeout that cuts.
    let (_b, node, http) = one_backend_node(io, "idle_timeout = \"30s\"\nheader_timeout = \"1s\"")?;
    let mut s = client::connect(http, None)?;
    let started = Instant::now();
    // One byte every 100 ms: bytes keep moving, the head never ends.
    let head = b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: "
        .iter()
        .chain(std::iter::repeat(&b'a'));
    let mut cut = None;
    for &byte in head.take(100) {
        if s.write_all(&[byte]).is_err() {
            cut = Some(started.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let cut = cut.context("a client trickling its headers for 10 s was never cut off")?;
    assert!(
        cut >= Duration::from_millis(900) && cut < Duration::from_secs(3),
        "cut after {cut:?}"
    );
    node.assert_no_panic();
    Ok(())
}

fn a_keep_alive_connection_may_wait_longer_than_header_timeout(io: Io) -> Result<()> {
    let (_b, node, http) = one_backend_node(io, "idle_timeout = \"30s\"\nheader_timeout = \"1s\"")?;
    let mut conn = client::KeepAlive::open(http, None)?;
    assert_eq!(conn.send("GET", "/", &[], b"", false)?.status, 200);
    // Idle between requests for 2.5 header timeouts: the idle timeout's
    // business, so the connection stays.
    std::thread::sleep(Duration::from_millis(2500));
    let r = conn
        .send("GET", "/", &[], b"", true)
        .context("the connection was closed while idle between requests")?;
    assert_eq!(r.status, 200);
    node.assert_no_panic();
    Ok(())
}

fn a_connection_that_sends_nothing_counts_as_open_and_is_closed_after_idle_timeout(io: Io) -> Result<()> {
    let (_b, node, http) = one_backend_node(io, "idle_timeout = \"1s\"")?;

    let opened = Instant::now();
    let mut silent = client::connect(http, None)?;
    wait_until(
        "the silent connection to count",
        Duration::from_secs(5),
        Duration::from_millis(20),
        || listener_stat(&node, "active_connections", 1),
    )?;
    // A client that speaks late, but within the timeout, is served.
    let mut late = client::connect(http, None)?;
    std::thread::sleep(Duration::from_millis(300));
    write!(late, "GET /ok HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
    let mut answer = String::new();
    late.read_to_string(&mut answer)?;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // The silent one is closed by the proxy (EOF), not by the test's own
    // 10 s read timeout.
    let mut buf = [0u8; 16];
    let n = silent.read(&mut buf).context("reading the silent connection")?;
    let took = opened.elapsed();
    assert_eq!(n, 0, "the proxy sent {:?} to a client that said nothing", &buf[..n]);
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "closed after {took:?}"
    );
    wait_until(
        "no open connections",
        Duration::from_secs(5),
        Duration::from_millis(20),
        || listener_stat(&node, "active_connections", 0),
    )?;
    node.assert_no_panic();
    Ok(())
}

fn a_client_that_stops_reading_is_cut_after_idle_timeout(io: Io) -> Result<()> {
    let (_b, node, http) = one_backend_node(io, "idle_timeout = \"1s\"")?;
    let mut s = client::connect(http, None)?;
    // Ask for far more than socket buffers hold, and never read.
    write!(s, "GET /bytes?n=500000000 HTTP/1.1\r\nHost: x\r\n\r\n")?;
    wait_until(
        "the response to start",
        Duration::from_secs(5),
        Duration::from_millis(20),
        || {
            node.status()
                .ok()
                .filter(|st| st["pools"][0]["backends"][0]["active_connections"] == 1)
        },
    )?;
    let (_, took) = wait_until(
        "the stalled connection to be cut",
        Duration::from_secs(10),
        Duration::from_millis(20),
        || {
            node.status()
                .ok()
                .filter(|st| st["pools"][0]["backends"][0]["active_connections"] == 0)
        },
    )?;
    assert!(took < Duration::from_secs(5), "cut after {took:?}");
    drop(s);
    node.assert_no_panic();
    Ok(())
}

fn slow_uploads_are_bounded_by_the_client_idle_timeout_not_blamed_on_the_backend(io: Io) -> Result<()> {
    let b = Backend::start("a")?;
    let (admin, http) = (local()?, local()?);
    let cfg = node(admin, &io.config())
        + &listener("web", http, "http", "web", "idle_timeout = \"1s\"")
        + &pool("web", "response_timeout = \"300ms\"", &[("a", b.addr)]);
    let (node, http) = started(io, &cfg, admin, http)?;
    // An upload taking 3 × 400 ms is fine: each pause is under the 1 s idle
    // timeout, and the 300 ms response timeout starts after the upload.
    let mut s = client::connect(http, None)?;
    write!(
        s,
        "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 9\r\nConnection: close\r\n\r\n"
    )?;
    for part in ["abc", "def", "ghi"] {
        std::thread::sleep(Duration::from_millis(400));
        s.write_all(part.as_bytes())?;
    }
    let r = client::read_response(&mut std::io::BufReader::new(s), "POST")?;
    assert_eq!((r.status, r.text().as_str()), (200, "abcdefghi"));

    // A client that stalls mid-upload gets 400 (from a backend that waits
    // for the whole body), and the backend is not charged with a failure.
    let mut s = client::connect(http, None)?;
    write!(
        s,
        "POST /sink HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nonly a little"
    )?;
    let start = Instant::now();
    let r = client::read_response(&mut std::io::BufReader::new(s), "POST")?;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(start.elapsed() < Duration::from_secs(4), "took {:?}", start.elapsed());
    let backend = &node.status()?["pools"][0]["backends"][0];
    assert_eq!(backend["failures"], 0, "{backend}");
    node.assert_no_panic();
    Ok(())
}

fn requests_that_cannot_be_forwarded_faithfully_are_refused(io: Io) -> Result<()> {
    let b = Backend::start("a")?;
    let (node, http) = node_with(io, &[("a", b.addr)], "")?;
    let answer = raw_exchange(http, b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")?;
    assert!(answer.starts_with("HTTP/1.1 400"), "missing Host: {answer}");
    let answer = raw_exchange(
        http,
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\nConnection: close\r\n\r\n0\r\n\r\n",
    )?;
    assert!(answer.starts_with("HTTP/1.1 501"), "gzip transfer coding: {answer}");
    node.assert_no_panic();
    Ok(())
}

/// A backend written out byte by byte, for framings and connection
/// behaviour the demo backend does not have. Per connection it reads
/// request heads (bodies are not expected) and answers by path:
/// `/chunked` a chunked body, `/until-close` a body ended by closing,
/// `/early-hints` a 103 before the 200, anything else a 2-byte body.
/// Its `Closes` modes close connections that the responses call
/// kept-alive, as a backend whose keep-alive timeout ends does.
struct ScriptedBackend {
    addr: SocketAddr,
    connections: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

/// When a scripted backend closes a kept-alive connection.
#[derive(Clone, Copy, PartialEq)]
enum Closes {
    Never,
    /// Right after the first response.
    AfterFirstResponse,
    /// When the second request arrives, unanswered.
    OnSecondRequest,
}

impl ScriptedBackend {
    fn start(closes: Closes) -> Result<Self> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let connections = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = std::sync::Arc::clone(&connections);
        // Ends with the test process.
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                std::thread::spawn(move || Self::serve(conn, closes));
            }
        });
        Ok(Self { addr, connections })
    }

    fn serve(conn: TcpStream, closes: Closes) {
        let mut reader = std::io::BufReader::new(conn);
        for n in 0.. {
            let mut path = None;
            loop {
                let mut line = String::new();
                match std::io::BufRead::read_line(&mut reader, &mut line) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                if path.is_none() {
                    path = line.split_whitespace().nth(1).map(str::to_string);
                } else if line == "\r\n" {
                    break;
                }
            }
            if n == 1 && closes == Closes::OnSecondRequest {
                return;
            }
            let reply: &[u8] = match path.as_deref() {
                Some("/chunked") => {
                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
                }
                Some("/until-close") => b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nall of this, then FIN",
                Some("/early-hints") => {
                    b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
                }
                _ => b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            };
            if reader.get_mut().write_all(reply).is_err()
                || path.as_deref() == Some("/until-close")
                || closes == Closes::AfterFirstResponse
            {
                return;
            }
        }
    }
}

fn chunked_close_delimited_and_interim_responses_reach_the_client_intact(io: Io) -> Result<()> {
    let b = ScriptedBackend::start(Closes::Never)?;
    let (node, http) = node_with(io, &[("a", b.addr)], "")?;
    let mut conn = KeepAlive::open(http, None)?;
    for _ in 0..3 {
        let r = conn.send("GET", "/chunked", &[], b"", false)?;
        assert_eq!((r.status, r.text().as_str()), (200, "hello world"));
        assert_eq!(r.header("transfer-encoding"), Some("chunked"));
        let r = conn.send("GET", "/early-hints", &[], b"", false)?;
        assert_eq!((r.status, r.text().as_str()), (200, "ok"), "the 103 is not forwarded");
    }
    // The backend's connection was reused: chunked bodies end where they
    // end, with nothing left over.
    assert_eq!(b.connections.load(std::sync::atomic::Ordering::Relaxed), 1);
    let r = conn.send("GET", "/until-close", &[], b"", false)?;
    assert_eq!((r.status, r.text().as_str()), (200, "all of this, then FIN"));
    assert_eq!(
        r.header("connection"),
        Some("close"),
        "a body ended by closing ends the client connection too"
    );
    assert_ring_connections(io, &node, 1)?;
    node.assert_no_panic();
    Ok(())
}

fn kept_alive_backend_connections_that_the_backend_closed_cost_no_request(io: Io) -> Result<()> {
    // Closed while idle: the proxy sees the FIN and does not use it.
    // Closed as the request arrives: the proxy sends it again on a new
    // connection (a GET may be sent twice).
    for closes in [Closes::AfterFirstResponse, Closes::OnSecondRequest] {
        let b = ScriptedBackend::start(closes)?;
        let (node, http) = node_with(io, &[("a", b.addr)], "")?;
        let mut conn = KeepAlive::open(http, None)?;
        for i in 0..20 {
            let r = conn.send("GET", "/", &[], b"", false)?;
            assert_eq!((r.status, r.text().as_str()), (200, "ok"), "request {i}");
        }
        let backend = &node.status()?["pools"][0]["backends"][0];
        assert_eq!(backend["failures"], 0, "{backend}");
        assert_eq!(backend["requests"], 20, "{backend}");
        assert_ring_connections(io, &node, 1)?;
        node.assert_no_panic();
    }
    Ok(())
}

fn pipelined_requests_are_answered_in_order_and_hyper_takes_over_mid_connection(io: Io) -> Result<()> {
    let b = Backend::start("a")?;
    let (node, http) = node_with(io, &[("a", b.addr)], "")?;
    let s = client::connect(http, None)?;
    let mut reader = std::io::BufReader::new(s.try_clone()?);
    let mut w = s;
    // Three requests in one write: two for Shoal's own path, then a
    // chunked upload, which hyper serves, on the same connection.
    w.write_all(
        b"GET /headers HTTP/1.1\r\nHost: x\r\n\r\n\
          POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nfirst\
          POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nsecond\r\n0\r\n\r\n",
    )?;
    let r = client::read_response(&mut reader, "GET")?;
    assert_eq!(r.status, 200);
    assert!(r.text().contains("x-forwarded-for: 127.0.0.1"), "{}", r.text());
    let r = client::read_response(&mut reader, "POST")?;
    assert_eq!((r.status, r.text().as_str()), (200, "first"));
    let r = client::read_response(&mut reader, "POST")?;
    assert_eq!((r.status, r.text().as_str()), (200, "second"));
    // hyper keeps serving the connection.
    w.write_all(b"GET /headers HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
    let r = client::read_response(&mut reader, "GET")?;
    assert_eq!(r.status, 200);
    assert_eq!(node.status()?["listeners"][0]["requests"], 4);
    // Served on the ring until hyper took over.
    assert_ring_connections(io, &node, 1)?;
    node.assert_no_panic();
    Ok(())
}

on_both_io!(
    forwarding_headers_are_set_and_hop_by_hop_headers_stripped,
    keep_alive_on_both_sides,
    response_bodies_are_streamed_not_buffered,
    request_bodies_pass_through_intact,
    connect_failures_are_retried_on_another_backend,
    backend_failures_give_502_and_504_with_a_reason,
    malformed_requests_get_400_and_the_node_keeps_serving,
    sigterm_finishes_in_flight_requests_then_exits_zero,
    sigterm_closes_idle_kept_alive_connections_at_once,
    a_backend_stalling_mid_response_is_cut_after_response_timeout,
    oversized_heads_get_431_and_oversized_bodies_413,
    at_max_connections_new_clients_wait_then_are_refused_until_a_slot_frees,
    a_slowloris_client_trickling_its_headers_is_cut_within_header_timeout,
    a_keep_alive_connection_may_wait_longer_than_header_timeout,
    a_connection_that_sends_nothing_counts_as_open_and_is_closed_after_idle_timeout,
    a_client_that_stops_reading_is_cut_after_idle_timeout,
    slow_uploads_are_bounded_by_the_client_idle_timeout_not_blamed_on_the_backend,
    requests_that_cannot_be_forwarded_faithfully_are_refused,
    chunked_close_delimited_and_interim_responses_reach_the_client_intact,
    kept_alive_backend_connections_that_the_backend_closed_cost_no_request,
    pipelined_requests_are_answered_in_order_and_hyper_takes_over_mid_connection,
);
