//! `monoio`: the `uring` copy loop written on monoio, a thread-per-core
//! runtime built on io_uring with a safe, owned-buffer API (ByteDance's
//! Monolake proxy runs on it). Like `uring`, each worker enters the kernel
//! once per round: it submits what its tasks queued and waits for the next
//! completions in one io_uring_enter. Unlike `uring`, every operation is a
//! future with a waker, as in any async Rust code.

use std::io;
use std::net::SocketAddr;

use anyhow::{Context, Result};
use monoio::buf::IoBuf;
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, Splitable};
use monoio::net::{TcpListener, TcpStream};

/// Starts a worker per core, each with its own SO_REUSEPORT listener, and
/// serves until one fails.
pub fn serve(listen: SocketAddr, backends: Vec<SocketAddr>) -> Result<()> {
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let handles: Vec<_> = (0..workers)
        .map(|worker| {
            let backends = backends.clone();
            std::thread::spawn(move || -> Result<()> {
                let listener = crate::uring::reuse_port_listener(listen)?;
                let mut builder = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new();
                if std::env::var_os("KERNEL_RELAY_MONOIO_DEFER").is_some() {
                    let mut ring = io_uring_06::IoUring::builder();
                    ring.setup_single_issuer().setup_defer_taskrun();
                    builder = builder.uring_builder(ring);
                }
                let mut runtime = builder.build().context("starting monoio's io_uring runtime")?;
                runtime.block_on(accept_loop(listener, backends, worker))
            })
        })
        .collect();
    eprintln!("kernel-relay: listening on {listen} ({workers} monoio workers)");
    for handle in handles {
        handle.join().map_err(|_| anyhow::anyhow!("a worker panicked"))??;
    }
    Ok(())
}

async fn accept_loop(listener: std::net::TcpListener, backends: Vec<SocketAddr>, mut turn: usize) -> Result<()> {
    let listener = TcpListener::from_std(listener).context("registering the listener")?;
    loop {
        let client = match listener.accept().await {
            Ok((client, _)) => client,
            Err(e) => {
                eprintln!("kernel-relay: accept: {e}");
                continue;
            }
        };
        let backend = backends[turn % backends.len()];
        turn += 1;
        monoio::spawn(async move {
            if let Err(e) = relay(client, backend).await {
                eprintln!("kernel-relay: {backend}: {e:#}");
            }
        });
    }
}

async fn relay(client: TcpStream, backend: SocketAddr) -> Result<()> {
    let upstream = TcpStream::connect(backend).await.context("connecting")?;
    for socket in [&client, &upstream] {
        socket.set_nodelay(true).context("TCP_NODELAY")?;
    }
    let (client_read, client_write) = client.into_split();
    let (upstream_read, upstream_write) = upstream.into_split();
    let (up, down) = monoio::join!(
        one_way(client_read, upstream_write),
        one_way(upstream_read, client_write)
    );
    up.and(down).context("relaying")
}

/// Copies `from` to `to` through one 16 KiB buffer until `from` ends, then
/// shuts down `to`'s sending side.
async fn one_way(mut from: impl AsyncReadRent, mut to: impl AsyncWriteRent) -> io::Result<()> {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let (read, back) = from.read(buffer).await;
        let read = read?;
        if read == 0 {
            return to.shutdown().await;
        }
        let (written, back) = to.write_all(back.slice(..read)).await;
        written?;
        buffer = back.into_inner();
    }
}
