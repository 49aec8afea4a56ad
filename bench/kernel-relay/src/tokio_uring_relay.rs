//! `tokio-uring`: the `uring` copy loop written with tokio-uring's safe,
//! owned-buffer API, the way Shoal (which forbids unsafe code) could use
//! io_uring. Each worker is a tokio current-thread runtime whose ring
//! submits what its tasks queued when the runtime is about to park, and
//! whose completions wake the runtime through epoll: two system calls per
//! round of completions instead of `uring`'s one.

use std::io;
use std::net::{Shutdown, SocketAddr};
use std::rc::Rc;

use anyhow::{Context, Result};
use tokio_uring::buf::BoundedBuf;
use tokio_uring::net::{TcpListener, TcpStream};

use crate::per_core;

/// Serves on a tokio-uring runtime per core.
pub fn serve(listen: SocketAddr, backends: Vec<SocketAddr>) -> Result<()> {
    per_core::serve(listen, backends, "tokio-uring", |listener, backends, index| {
        tokio_uring::start(async move {
            let listener = TcpListener::from_std(listener);
            per_core::accept_round_robin(
                || listener.accept(),
                &backends,
                index,
                |client, backend| {
                    tokio_uring::spawn(async move { per_core::report(backend, relay(client, backend).await) });
                },
            )
            .await;
            Ok(())
        })
    })
}

async fn relay(client: TcpStream, backend: SocketAddr) -> Result<()> {
    let upstream = TcpStream::connect(backend).await.context("connecting")?;
    for socket in [&client, &upstream] {
        socket.set_nodelay(true).context("TCP_NODELAY")?;
    }
    let (client, upstream) = (Rc::new(client), Rc::new(upstream));
    tokio::try_join!(
        one_way(Rc::clone(&client), Rc::clone(&upstream)),
        one_way(upstream, client)
    )
    .context("relaying")?;
    Ok(())
}

/// Copies `from` to `to` through one 16 KiB buffer until `from` ends, then
/// shuts down `to`'s sending side.
async fn one_way(from: Rc<TcpStream>, to: Rc<TcpStream>) -> io::Result<()> {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let (read, back) = from.read(buffer).await;
        let read = read?;
        if read == 0 {
            return to.shutdown(Shutdown::Write);
        }
        let (written, back) = to.write_all(back.slice(..read)).await;
        written?;
        buffer = back.into_inner();
    }
}
