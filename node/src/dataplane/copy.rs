//! Bidirectional byte copy between two TCP connections with an idle timeout
//! and half-close: when one side finishes sending, the other side's write
//! half is shut down and the opposite direction goes on until it ends too.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::time::Instant;

const BUF_SIZE: usize = 16 * 1024;

/// Bytes moved in each direction.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Transferred {
    pub client_to_backend: u64,
    pub backend_to_client: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("no data in either direction for {0:?}")]
    Idle(Duration),
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// Copies until both directions have ended, either side fails, or nothing
/// moves for `idle`. `on_first_response` gets the backend's first response
/// time: from the client's first byte to the backend's first byte (or from
/// the start, for protocols where the server speaks first).
pub async fn proxy(
    client: TcpStream,
    backend: TcpStream,
    idle: Duration,
    on_first_response: impl FnOnce(Duration) + Send,
) -> Result<Transferred, CopyError> {
    let start = Instant::now();
    // Milliseconds since `start` of the last byte moved, in either direction.
    let last_activity = AtomicU64::new(0);
    // Microseconds since `start` of the client's first byte; MAX = none yet.
    let client_first = AtomicU64::new(u64::MAX);
    let (cr, cw) = client.into_split();
    let (br, bw) = backend.into_split();
    // Only the first chunk is stamped: later ones cost one load.
    let on_client_read = || {
        if client_first.load(Ordering::Relaxed) == u64::MAX {
            let now = start.elapsed().as_micros() as u64;
            let _ = client_first.compare_exchange(u64::MAX, now, Ordering::Relaxed, Ordering::Relaxed);
        }
    };
    let mut on_first_response = Some(on_first_response);
    let on_backend_read = || {
        if let Some(report) = on_first_response.take() {
            let sent = match client_first.load(Ordering::Relaxed) {
                u64::MAX => 0,
                us => us,
            };
            let now = start.elapsed().as_micros() as u64;
            report(Duration::from_micros(now.saturating_sub(sent)));
        }
    };
    let both = async {
        tokio::try_join!(
            pump(cr, bw, start, &last_activity, on_client_read),
            pump(br, cw, start, &last_activity, on_backend_read)
        )
    };
    with_idle_watchdog(both, start, &last_activity, idle).await
}

/// Copies between two arbitrary streams (upgraded HTTP connections) until
/// both directions end, either fails, or nothing moves for `idle`.
pub async fn splice<A, B>(a: A, b: B, idle: Duration) -> Result<Transferred, CopyError>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let start = Instant::now();
    let last_activity = AtomicU64::new(0);
    let (ar, aw) = tokio::io::split(a);
    let (br, bw) = tokio::io::split(b);
    let both = async {
        tokio::try_join!(
            pump_io(ar, bw, start, &last_activity, || {}),
            pump_io(br, aw, start, &last_activity, || {})
        )
    };
    with_idle_watchdog(both, start, &last_activity, idle).await
}

/// Runs both directions, failing with `Idle` once `last_activity`
/// (milliseconds since `start`) is `idle` old.
async fn with_idle_watchdog(
    both: impl Future<Output = io::Result<(u64, u64)>>,
    start: Instant,
    last_activity: &AtomicU64,
    idle: Duration,
) -> Result<Transferred, CopyError> {
    let watchdog = async {
        loop {
            let last = start + Duration::from_millis(last_activity.load(Ordering::Relaxed));
            let deadline = last + idle;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    };
    tokio::select! {
        r = both => {
            let (up, down) = r?;
            Ok(Transferred { client_to_backend: up, backend_to_client: down })
        }
        () = watchdog => Err(CopyError::Idle(idle)),
    }
}

/// One direction between generic streams, until the source ends (then
/// the half-close is passed on) or either side fails.
async fn pump_io<R, W>(
    mut from: R,
    mut to: W,
    start: Instant,
    last: &AtomicU64,
    mut on_read: impl FnMut(),
) -> io::Result<u64>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; BUF_SIZE];
    let mut total = 0u64;
    loop {
        // `read`, not `readable` + `try_read`: tokio takes a short read from
        // a socket as proof it is drained, where `try_read` would need one
        // more read (EAGAIN) per chunk to learn it.
        let n = from.read(&mut buf).await?;
        if n == 0 {
            // Propagate the half-close; the other direction carries on.
            let _ = to.shutdown().await;
            return Ok(total);
        }
        on_read();
        // fetch_max: the two directions race, and time must not go back.
        last.fetch_max(start.elapsed().as_millis() as u64, Ordering::Relaxed);
        to.write_all(&buf[..n]).await?;
        // A slow reader on the other side is activity too, not idleness.
        last.fetch_max(start.elapsed().as_millis() as u64, Ordering::Relaxed);
        total += n as u64;
    }
}

/// One direction between TCP sockets. The buffer is allocated on the
/// first readable event, so a connection that never sends costs no buffer.
async fn pump(
    from: OwnedReadHalf,
    to: OwnedWriteHalf,
    start: Instant,
    last: &AtomicU64,
    on_read: impl FnMut(),
) -> io::Result<u64> {
    from.readable().await?;
    pump_io(from, to, start, last, on_read).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    /// A connected pair of sockets over loopback.
    async fn pair() -> io::Result<(TcpStream, TcpStream)> {
        let l = TcpListener::bind("127.0.0.1:0").await?;
        let addr = l.local_addr()?;
        let (a, b) = tokio::join!(TcpStream::connect(addr), l.accept());
        Ok((a?, b?.0))
    }

    #[tokio::test]
    async fn copies_both_ways_and_propagates_half_close() -> io::Result<()> {
        // client_side <-> [proxy: client_conn, backend_conn] <-> backend_side
        let (mut client_side, client_conn) = pair().await?;
        let (backend_conn, mut backend_side) = pair().await?;
        let (first_tx, first_rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(proxy(client_conn, backend_conn, Duration::from_secs(5), move |d| {
            let _ = first_tx.send(d);
        }));

        client_side.write_all(b"ping").await?;
        client_side.shutdown().await?; // half-close: no more from the client
        let mut got = Vec::new();
        backend_side.read_to_end(&mut got).await?; // ends because FIN was forwarded
        assert_eq!(got, b"ping");
        // The backend can still answer after the client's half-close.
        tokio::time::sleep(Duration::from_millis(30)).await;
        backend_side.write_all(b"pong").await?;
        backend_side.shutdown().await?;
        let mut got = Vec::new();
        client_side.read_to_end(&mut got).await?;
        assert_eq!(got, b"pong");
        let moved = task.await.map_err(io::Error::other)?.map_err(io::Error::other)?;
        assert_eq!(
            moved,
            Transferred {
                client_to_backend: 4,
                backend_to_client: 4
            }
        );
        // The backend answered 30ms or more after the client's first byte.
        let first = first_rx.await.map_err(io::Error::other)?;
        assert!(
            first >= Duration::from_millis(30) && first < Duration::from_secs(5),
            "{first:?}"
        );
        Ok(())
    }

    #[tokio::test(start_paused = true)]
    async fn idle_connections_are_cut() -> io::Result<()> {
        let (_client_side, client_conn) = pair().await?;
        let (backend_conn, _backend_side) = pair().await?;
        let r = proxy(client_conn, backend_conn, Duration::from_secs(30), |_| {}).await;
        assert!(
            matches!(r, Err(CopyError::Idle(d)) if d == Duration::from_secs(30)),
            "{r:?}"
        );
        Ok(())
    }
}
