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

/// Starts a worker per core, each with its own SO_REUSEPORT listener, and
/// serves until one fails.
pub fn serve(listen: SocketAddr, backends: Vec<SocketAddr>) -> Result<()> {
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let handles: Vec<_> = (0..workers)
        .map(|worker| {
            let backends = backends.clone();
            std::thread::spawn(move || {
                let listener = crate::uring::reuse_port_listener(listen)?;
                tokio_uring::start(accept_loop(listener, backends, worker))
            })
        })
        .collect();
    eprintln!("kernel-relay: listening on {listen} ({workers} tokio-uring workers)");
    for handle in handles {
        handle.join().map_err(|_| anyhow::anyhow!("a worker panicked"))??;
    }
    Ok(())
}

async fn accept_loop(listener: std::net::TcpListener, backends: Vec<SocketAddr>, mut turn: usize) -> Result<()> {
    let listener = TcpListener::from_std(listener);
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
        tokio_uring::spawn(async move {
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
