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

use crate::per_core;

/// Serves on a monoio runtime per core; `defer_taskrun` creates its rings
/// with IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN.
pub fn serve(listen: SocketAddr, backends: Vec<SocketAddr>, defer_taskrun: bool) -> Result<()> {
    let what = if defer_taskrun {
        "monoio (deferred task work)"
    } else {
        "monoio"
    };
    per_core::serve(listen, backends, what, move |l, b, i| worker(l, b, i, defer_taskrun))
}

fn worker(listener: std::net::TcpListener, backends: Vec<SocketAddr>, index: usize, defer_taskrun: bool) -> Result<()> {
    let mut builder = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new();
    if defer_taskrun {
        let mut ring = io_uring_06::IoUring::builder();
        ring.setup_single_issuer().setup_defer_taskrun();
        builder = builder.uring_builder(ring);
    }
    let mut runtime = builder.build().context("starting monoio's io_uring runtime")?;
    runtime.block_on(async move {
        let listener = TcpListener::from_std(listener).context("registering the listener")?;
        per_core::accept_round_robin(
            || listener.accept(),
            &backends,
            index,
            |client, backend| {
                monoio::spawn(async move { per_core::report(backend, relay(client, backend).await) });
            },
        )
        .await;
        Ok(())
    })
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
