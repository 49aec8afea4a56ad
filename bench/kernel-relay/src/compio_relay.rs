//! `compio` and `compio-defer`: the `uring` copy loop written on compio, a
//! thread-per-core completion-based runtime with a safe, owned-buffer API
//! whose Linux driver uses io_uring and falls back to epoll by itself where
//! io_uring is refused (seccomp, `kernel.io_uring_disabled`). That fallback
//! is what Shoal's data plane would otherwise need a second code path for,
//! so this measures whether compio gains what monoio does, and what its
//! epoll fallback costs (`compio-poll`).

use std::io;
use std::net::SocketAddr;

use anyhow::{Context, Result};
use compio::buf::BufResult;
use compio::driver::{DriverType, ProactorBuilder};
use compio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use compio::net::{TcpListener, TcpStream};

use crate::per_core;

/// How compio's driver is set up.
#[derive(Clone, Copy, Debug)]
pub enum Driver {
    /// io_uring with the default ring flags.
    Uring,
    /// io_uring with IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN.
    UringDeferred,
    /// epoll: the fallback where io_uring is refused.
    Poll,
}

/// Serves on a compio runtime per core.
pub fn serve(listen: SocketAddr, backends: Vec<SocketAddr>, driver: Driver) -> Result<()> {
    let what = format!("compio ({driver:?})");
    per_core::serve(listen, backends, &what, move |l, b, i| worker(l, b, i, driver))
}

fn worker(listener: std::net::TcpListener, backends: Vec<SocketAddr>, index: usize, driver: Driver) -> Result<()> {
    let mut proactor = ProactorBuilder::new();
    match driver {
        Driver::Uring => proactor.driver_type(DriverType::IoUring),
        Driver::UringDeferred => proactor
            .driver_type(DriverType::IoUring)
            .single_issuer(true)
            .defer_taskrun(true),
        Driver::Poll => proactor.driver_type(DriverType::Poll),
    };
    let runtime = compio::runtime::RuntimeBuilder::new()
        .with_proactor(proactor)
        .build()
        .context("starting compio's runtime")?;
    eprintln!("kernel-relay: compio worker {index} on {:?}", runtime.driver_type());
    runtime.block_on(async move {
        let listener = TcpListener::from_std(listener).context("registering the listener")?;
        per_core::accept_round_robin(
            || listener.accept(),
            &backends,
            index,
            |client, backend| {
                compio::runtime::spawn(async move { per_core::report(backend, relay(client, backend).await) }).detach();
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
    // tokio's join! only polls; it needs no tokio runtime.
    let (up, down) = tokio::join!(
        one_way(client_read, upstream_write),
        one_way(upstream_read, client_write)
    );
    up.and(down).context("relaying")
}

/// Copies `from` to `to` through one 16 KiB buffer until `from` ends, then
/// shuts down `to`'s sending side.
async fn one_way(mut from: impl AsyncRead, mut to: impl AsyncWrite) -> io::Result<()> {
    let mut buffer = Vec::with_capacity(16 * 1024);
    loop {
        let BufResult(read, back) = from.read(buffer).await;
        if read? == 0 {
            return to.shutdown().await;
        }
        let BufResult(written, back) = to.write_all(back).await;
        written?;
        buffer = back;
        buffer.clear();
    }
}
