//! L4 proxies whose bytes the kernel relays, to measure against the
//! user-space copy loop that Shoal, HAProxy and the forwarder yardstick use
//! (bench/kernel-relay.sh runs them). All pick backends round robin.
//!
//! - `splice`: each direction moves bytes socket -> pipe -> socket with
//!   splice(2), so they are never copied into user space; the proxy is still
//!   woken for every chunk and makes two system calls per chunk.
//! - `sockmap`: each accepted connection and its backend connection go into
//!   a SOCKHASH to which splice.bpf.c's stream verdict is attached, so bytes
//!   that arrive on one socket of the pair are sent out of the other by the
//!   kernel without waking the proxy. User space relays only what arrived
//!   before the pair was in the map, and the end of each direction.
//! - `uring`, `tokio-uring`, `monoio`: a user-space copy loop whose system
//!   calls io_uring batches, to measure what fewer kernel entries are worth:
//!   by hand (uring.rs), and on three runtimes with safe APIs; `uring-plain`,
//!   `monoio-defer` and `compio-defer` change only how the rings are set up;
//!   `compio-poll` is compio on its epoll fallback; `uring-fixed`,
//!   `uring-pollfirst` and `uring-both` are `uring` with its sockets
//!   registered with the ring, with receives that arm their poll first, and
//!   with both.

use std::io;
use std::net::{IpAddr, Shutdown, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, bail};
use aya::maps::{MapData, SockHash};
use aya::programs::SkSkb;
use nix::fcntl::{OFlag, SpliceFFlags, splice};
use tokio::io::Interest;
use tokio::net::{TcpListener, TcpStream};

mod compio_relay;
mod monoio_relay;
mod per_core;
mod tokio_uring_relay;
mod uring;

const USAGE: &str = "usage: kernel-relay splice LISTEN BACKEND... | kernel-relay sockmap BPF_OBJECT LISTEN BACKEND... | kernel-relay uring|uring-plain|uring-fixed|uring-pollfirst|uring-both|tokio-uring|monoio|monoio-defer|compio|compio-defer|compio-poll LISTEN BACKEND...";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // The io_uring loops run threads of their own, not tokio's.
    if let [mode, listen, backends @ ..] = args.as_slice()
        && let Some(serve) = io_uring_loop(mode)
    {
        let listen = listen.parse().with_context(|| format!("listen address {listen}"))?;
        return serve(listen, parse_backends(backends)?);
    }
    tokio_runtime(args)
}

fn uring_options(defer_taskrun: bool, fixed_files: bool, poll_first: bool) -> uring::Options {
    uring::Options {
        defer_taskrun,
        fixed_files,
        poll_first,
    }
}

type Serve = fn(SocketAddr, Vec<SocketAddr>) -> Result<()>;

fn io_uring_loop(mode: &str) -> Option<Serve> {
    Some(match mode {
        "uring" => |listen, backends| uring::serve(listen, backends, uring_options(true, false, false)),
        "uring-plain" => |listen, backends| uring::serve(listen, backends, uring_options(false, false, false)),
        "uring-fixed" => |listen, backends| uring::serve(listen, backends, uring_options(true, true, false)),
        "uring-pollfirst" => |listen, backends| uring::serve(listen, backends, uring_options(true, false, true)),
        "uring-both" => |listen, backends| uring::serve(listen, backends, uring_options(true, true, true)),
        "tokio-uring" => tokio_uring_relay::serve,
        "monoio" => |listen, backends| monoio_relay::serve(listen, backends, false),
        "monoio-defer" => |listen, backends| monoio_relay::serve(listen, backends, true),
        "compio" => |listen, backends| compio_relay::serve(listen, backends, compio_relay::Driver::Uring),
        "compio-defer" => |listen, backends| compio_relay::serve(listen, backends, compio_relay::Driver::UringDeferred),
        "compio-poll" => |listen, backends| compio_relay::serve(listen, backends, compio_relay::Driver::Poll),
        _ => return None,
    })
}

fn tokio_runtime(args: Vec<String>) -> Result<()> {
    tokio::runtime::Runtime::new()
        .context("starting the runtime")?
        .block_on(serve_tokio(args))
}

fn parse_backends(backends: &[String]) -> Result<Vec<SocketAddr>> {
    let backends: Vec<SocketAddr> = backends
        .iter()
        .map(|b| b.parse().with_context(|| format!("backend address {b}")))
        .collect::<Result<_>>()?;
    if backends.is_empty() {
        bail!("{USAGE} (no backend given)");
    }
    Ok(backends)
}

async fn serve_tokio(args: Vec<String>) -> Result<()> {
    // `_program` keeps the verdict attached: dropping it would detach it.
    let (mode, listen, backends, _program) = match args.as_slice() {
        [mode, listen, backends @ ..] if mode == "splice" => (Mode::Splice, listen, backends, None),
        [mode, object, listen, backends @ ..] if mode == "sockmap" => {
            let (program, peers) = load_sockmap(object)?;
            (Mode::Sockmap(peers), listen, backends, Some(program))
        }
        _ => bail!(USAGE),
    };
    let backends = parse_backends(backends)?;
    let listener = TcpListener::bind(listen.as_str())
        .await
        .with_context(|| format!("binding {listen}"))?;
    eprintln!("kernel-relay: listening on {listen}");
    per_core::accept_round_robin(
        || listener.accept(),
        &backends,
        0,
        |client, backend| {
            let mode = mode.clone();
            tokio::spawn(async move { per_core::report(backend, relay(client, backend, &mode).await) });
        },
    )
    .await;
    Ok(())
}

#[derive(Clone)]
enum Mode {
    Splice,
    Sockmap(Peers),
}

async fn relay(mut client: TcpStream, backend: SocketAddr, mode: &Mode) -> Result<()> {
    client.set_nodelay(true).context("TCP_NODELAY")?;
    let mut upstream = TcpStream::connect(backend).await.context("connecting")?;
    upstream.set_nodelay(true).context("TCP_NODELAY")?;
    match mode {
        Mode::Splice => {
            tokio::try_join!(splice_one_way(&client, &upstream), splice_one_way(&upstream, &client))
                .context("splicing")?;
        }
        Mode::Sockmap(peers) => {
            pair(peers, &client, &upstream)?;
            // What arrived before the pair was in the map, and each
            // direction's end, still come through user space. Closing a
            // socket takes it out of the map.
            tokio::io::copy_bidirectional(&mut client, &mut upstream)
                .await
                .context("relaying")?;
        }
    }
    Ok(())
}

/// Moves bytes from `from` to `to` through a pipe until `from` ends, then
/// shuts down `to`'s sending side.
async fn splice_one_way(from: &TcpStream, to: &TcpStream) -> io::Result<()> {
    const CHUNK: usize = 1 << 16; // a pipe's default capacity
    let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
    let (pipe_out, pipe_in) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
    loop {
        from.readable().await?;
        let moved = match from.try_io(Interest::READABLE, || {
            Ok(splice(from, None, &pipe_in, None, CHUNK, flags)?)
        }) {
            Ok(0) => break,
            Ok(moved) => moved,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        };
        // Drain the pipe before reading more, so it never fills.
        let mut left = moved;
        while left > 0 {
            to.writable().await?;
            match to.try_io(Interest::WRITABLE, || {
                Ok(splice(&pipe_out, None, to, None, left, flags)?)
            }) {
                Ok(sent) => left -= sent,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
    }
    socket2::SockRef::from(to).shutdown(Shutdown::Write)
}

/// splice.bpf.c's `struct pair_key`: the 4-tuple of the socket bytes arrive
/// on, as the verdict program reads it from the skb (addresses in network
/// byte order, ports in host byte order).
type PairKey = [u32; 4];

type Peers = Arc<Mutex<SockHash<MapData, PairKey>>>;

fn key_of(socket: &TcpStream) -> Result<PairKey> {
    let (local, remote) = (socket.local_addr()?, socket.peer_addr()?);
    let (IpAddr::V4(l), IpAddr::V4(r)) = (local.ip(), remote.ip()) else {
        bail!("the sockmap relay handles IPv4 only, not {local} - {remote}");
    };
    Ok([
        u32::from_ne_bytes(r.octets()),
        u32::from_ne_bytes(l.octets()),
        u32::from(remote.port()),
        u32::from(local.port()),
    ])
}

/// Loads splice.bpf.c's object and attaches its verdict to its PEERS map.
fn load_sockmap(object: &str) -> Result<(aya::Ebpf, Peers)> {
    let bytes = std::fs::read(object).with_context(|| format!("reading {object}"))?;
    let mut ebpf = aya::Ebpf::load(&bytes).context("loading the BPF object")?;
    let peers: SockHash<MapData, PairKey> = ebpf
        .take_map("PEERS")
        .context("the BPF object has no PEERS map")?
        .try_into()
        .context("PEERS is not a SOCKHASH with 16-byte keys")?;
    let verdict: &mut SkSkb = ebpf
        .program_mut("splice_verdict")
        .context("the BPF object has no splice_verdict program")?
        .try_into()
        .context("splice_verdict is not an sk_skb program")?;
    verdict
        .load()
        .context("loading splice_verdict (needs CAP_BPF and CAP_NET_ADMIN)")?;
    verdict
        .attach(peers.fd())
        .context("attaching splice_verdict to PEERS")?;
    Ok((ebpf, Arc::new(Mutex::new(peers))))
}

/// Puts both sockets in PEERS, each under the other's key: bytes arriving
/// on the client socket go out of the upstream socket, and the other way.
fn pair(peers: &Peers, client: &TcpStream, upstream: &TcpStream) -> Result<()> {
    let (client_key, upstream_key) = (key_of(client)?, key_of(upstream)?);
    let mut map = peers
        .lock()
        .map_err(|_| anyhow::anyhow!("the PEERS lock is poisoned"))?;
    map.insert(client_key, upstream.as_raw_fd(), 0)
        .context("adding the upstream socket to PEERS")?;
    if let Err(e) = map.insert(upstream_key, client.as_raw_fd(), 0) {
        let _ = map.remove(&client_key);
        return Err(e).context("adding the client socket to PEERS");
    }
    Ok(())
}
