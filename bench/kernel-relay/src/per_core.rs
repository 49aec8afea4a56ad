//! A worker thread per core for the io_uring loops, each with its own
//! SO_REUSEPORT listener, and the accept loop every mode uses: clients go
//! to the backends in turn.

use std::future::Future;
use std::io;
use std::net::SocketAddr;

use anyhow::{Context, Result};

/// Runs `worker(listener, backends, index)` on a thread per core, each with
/// a listener of its own on `listen`, until one fails.
pub fn serve(
    listen: SocketAddr,
    backends: Vec<SocketAddr>,
    what: &str,
    worker: impl Fn(std::net::TcpListener, Vec<SocketAddr>, usize) -> Result<()> + Clone + Send + 'static,
) -> Result<()> {
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let handles: Vec<_> = (0..workers)
        .map(|index| {
            let (backends, worker) = (backends.clone(), worker.clone());
            std::thread::spawn(move || worker(reuse_port_listener(listen)?, backends, index))
        })
        .collect();
    eprintln!("kernel-relay: listening on {listen} ({workers} {what} workers)");
    for handle in handles {
        handle.join().map_err(|_| anyhow::anyhow!("a worker panicked"))??;
    }
    Ok(())
}

/// A listener of its own for one worker: the kernel spreads connections
/// over the workers' sockets.
fn reuse_port_listener(listen: SocketAddr) -> Result<std::net::TcpListener> {
    let socket = socket2::Socket::new(socket2::Domain::for_address(listen), socket2::Type::STREAM, None)?;
    socket.set_reuse_port(true)?;
    socket.set_reuse_address(true)?;
    socket
        .bind(&listen.into())
        .with_context(|| format!("binding {listen}"))?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// Accepts clients for ever and hands each to `relay` with the next
/// backend in turn, starting at backend `turn`.
pub async fn accept_round_robin<C, A>(
    mut accept: impl FnMut() -> A,
    backends: &[SocketAddr],
    mut turn: usize,
    mut relay: impl FnMut(C, SocketAddr),
) where
    A: Future<Output = io::Result<(C, SocketAddr)>>,
{
    loop {
        match accept().await {
            Ok((client, _)) => {
                relay(client, backends[turn % backends.len()]);
                turn += 1;
            }
            Err(e) => eprintln!("kernel-relay: accept: {e}"),
        }
    }
}

/// A relay that failed is worth a line.
pub fn report(backend: SocketAddr, relayed: Result<()>) {
    if let Err(e) = relayed {
        eprintln!("kernel-relay: {backend}: {e:#}");
    }
}
