//! The L4 copy loop on io_uring: the epoll loop's contract (both
//! directions, half-close passed on, idle timeout, first response timed;
//! `dataplane::copy`) with owned buffers, each read and write one ring
//! operation.
//!
//! No direction holds a buffer until either side has sent something, so
//! an idle connection costs only its sockets and task, as on epoll. The
//! idle timeout is a tokio timer (the ring thread's epoll worker drives
//! it): monoio's `Sleep` is 640 bytes, which every connection's task
//! would carry. Bulk
//! data is copied, not spliced (the epoll path splices it), through a
//! buffer that grows while reads fill it and shrinks back when they stop.

use std::cell::Cell;
use std::io;
use std::time::Duration;

use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, Splitable};
use monoio::net::TcpStream;
use monoio::net::tcp::{TcpOwnedReadHalf, TcpOwnedWriteHalf};
use tokio::time::Instant;

use crate::dataplane::copy::{BUF_SIZE, CopyError, Transferred, idle_for};

/// The largest buffer a bulk direction grows to: fewer, larger reads and
/// writes per byte, each one ring operation.
const BULK_BUF_SIZE: usize = 256 * 1024;

/// Copies until both directions have ended, either side fails, or nothing
/// moves for `idle`; `on_first_response` as in `dataplane::copy::proxy`.
pub async fn proxy(
    client: TcpStream,
    backend: TcpStream,
    idle: Duration,
    on_first_response: impl FnOnce(Duration),
) -> Result<Transferred, CopyError> {
    let start = Instant::now();
    // Milliseconds since `start` of the last byte moved, either way.
    let last_activity = Cell::new(0u64);
    let client_first: Cell<Option<Duration>> = Cell::new(None);
    let on_client_read = || {
        if client_first.get().is_none() {
            client_first.set(Some(start.elapsed()));
        }
    };
    let mut on_first_response = Some(on_first_response);
    let on_backend_read = || {
        if let Some(report) = on_first_response.take() {
            let sent = client_first.get().unwrap_or_default();
            report(start.elapsed().saturating_sub(sent));
        }
    };
    let both = async {
        monoio::select! {
            r = client.readable(true) => r?,
            r = backend.readable(true) => r?,
        }
        let (cr, cw) = client.into_split();
        let (br, bw) = backend.into_split();
        monoio::try_join!(
            pump(cr, bw, start, &last_activity, on_client_read),
            pump(br, cw, start, &last_activity, on_backend_read)
        )
    };
    let watchdog = idle_for(start, || last_activity.get(), idle);
    monoio::select! {
        r = both => {
            let (up, down) = r?;
            Ok(Transferred {
                client_to_backend: up,
                backend_to_client: down,
                spliced: 0,
            })
        }
        () = watchdog => Err(CopyError::Idle(idle)),
    }
}

/// One direction until its source ends (then the half-close is passed
/// on) or either side fails; the bytes moved.
async fn pump(
    mut from: TcpOwnedReadHalf,
    mut to: TcpOwnedWriteHalf,
    start: Instant,
    last: &Cell<u64>,
    mut on_read: impl FnMut(),
) -> io::Result<u64> {
    // Capacity only: the ring writes into it, no memset first.
    let mut buf = Vec::with_capacity(BUF_SIZE);
    let mut total = 0u64;
    loop {
        let (read, back) = from.read(buf).await;
        let n = read?;
        if n == 0 {
            let _ = to.shutdown().await;
            return Ok(total);
        }
        on_read();
        touch(last, start);
        let (written, back) = to.write_all(back).await;
        written?;
        // A slow reader on the other side is activity too, not idleness.
        touch(last, start);
        total += n as u64;
        buf = next_buffer(back, n);
    }
}

/// The buffer for the next read, after one that read `n` into `buf`: four
/// times larger (up to [`BULK_BUF_SIZE`]) when it was filled, back to
/// [`BUF_SIZE`] when a large one was not, else `buf` again.
fn next_buffer(mut buf: Vec<u8>, n: usize) -> Vec<u8> {
    let capacity = buf.capacity();
    if n == capacity && capacity < BULK_BUF_SIZE {
        Vec::with_capacity((capacity * 4).min(BULK_BUF_SIZE))
    } else if n < BUF_SIZE && capacity > BUF_SIZE {
        Vec::with_capacity(BUF_SIZE)
    } else {
        buf.clear();
        buf
    }
}

fn touch(last: &Cell<u64>, start: Instant) {
    let now = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
    last.set(last.get().max(now));
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::Shutdown;
    use std::sync::mpsc;

    use super::super::tests::ring;
    use super::*;

    /// tokio's timers, driven by a worker of their own, as a ring thread's
    /// epoll worker drives them in the node; enter it on the ring's thread.
    fn tokio_timers() -> io::Result<tokio::runtime::Runtime> {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_time()
            .build()
    }

    /// A connected pair: the ring's end, and a blocking std end a thread drives.
    async fn pair() -> io::Result<(TcpStream, std::net::TcpStream)> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let ring_end = TcpStream::connect_addr(listener.local_addr()?).await?;
        let (std_end, _) = listener.accept()?;
        Ok((ring_end, std_end))
    }

    /// 3 MB that no shifted or repeated chunk matches.
    fn pattern() -> Vec<u8> {
        (0..3_000_000u32).map(|i| (i % 251) as u8).collect()
    }

    #[test]
    fn copies_both_ways_passes_the_half_close_and_times_the_first_response() -> io::Result<()> {
        let Some(mut rt) = ring("copies_both_ways_passes_the_half_close_and_times_the_first_response") else {
            return Ok(());
        };
        let timers = tokio_timers()?;
        let _entered = timers.enter();
        rt.block_on(async {
            let (client, mut user) = pair().await?;
            let (backend, mut server) = pair().await?;
            // The backend answers 30 ms after the request, then reads to
            // the client's end and answers that too.
            let backend_side = std::thread::spawn(move || -> io::Result<Vec<u8>> {
                let mut request = [0u8; 4];
                server.read_exact(&mut request)?;
                std::thread::sleep(Duration::from_millis(30));
                server.write_all(b"pong")?;
                let mut rest = Vec::new();
                server.read_to_end(&mut rest)?;
                server.write_all(b"bye")?;
                Ok([&request[..], &rest].concat())
            });
            let user_side = std::thread::spawn(move || -> io::Result<Vec<u8>> {
                user.write_all(b"ping")?;
                let mut answer = [0u8; 4];
                user.read_exact(&mut answer)?;
                // Enough for the buffer to grow to its largest.
                user.write_all(&pattern())?;
                user.shutdown(Shutdown::Write)?;
                let mut rest = Vec::new();
                user.read_to_end(&mut rest)?;
                Ok([&answer[..], &rest].concat())
            });
            let (timed, first_response) = mpsc::channel();
            let moved = proxy(client, backend, Duration::from_secs(10), move |d| {
                let _ = timed.send(d);
            })
            .await
            .map_err(io::Error::other)?;
            let joined = |t: std::thread::JoinHandle<io::Result<Vec<u8>>>| {
                t.join().map_err(|_| io::Error::other("a peer thread panicked"))?
            };
            let (got_backend, got_user) = (joined(backend_side)?, joined(user_side)?);
            assert_eq!(&got_backend[..4], b"ping");
            assert_eq!(got_backend.len(), 4 + 3_000_000);
            assert!(got_backend[4..] == pattern()[..], "the bulk upload arrived changed");
            assert_eq!(got_user, b"pongbye");
            assert_eq!((moved.client_to_backend, moved.backend_to_client), (3_000_004, 7));
            let took = first_response.try_recv().map_err(io::Error::other)?;
            assert!(
                took >= Duration::from_millis(30) && took < Duration::from_secs(5),
                "{took:?}"
            );
            Ok(())
        })
    }

    #[test]
    fn the_buffer_grows_while_reads_fill_it_and_shrinks_when_they_stop() {
        let read_into = |capacity: usize, n: usize| {
            let mut buf = Vec::with_capacity(capacity);
            buf.resize(n.min(capacity), 1);
            next_buffer(buf, n)
        };
        let grown = |capacity, n| {
            let next = read_into(capacity, n);
            assert!(next.is_empty(), "the next read starts at the front");
            next.capacity()
        };
        assert_eq!(grown(BUF_SIZE, BUF_SIZE), 4 * BUF_SIZE);
        assert_eq!(grown(4 * BUF_SIZE, 4 * BUF_SIZE), BULK_BUF_SIZE);
        assert_eq!(grown(BULK_BUF_SIZE, BULK_BUF_SIZE), BULK_BUF_SIZE, "no further");
        // Short messages keep the small buffer; a bulk buffer stays while
        // reads are at least a small buffer's worth.
        assert_eq!(grown(BUF_SIZE, 10), BUF_SIZE);
        assert_eq!(grown(BULK_BUF_SIZE, BUF_SIZE), BULK_BUF_SIZE);
        assert_eq!(grown(BULK_BUF_SIZE, BUF_SIZE - 1), BUF_SIZE);
    }

    #[test]
    fn a_connection_nobody_speaks_on_is_cut_after_the_idle_timeout() -> io::Result<()> {
        let Some(mut rt) = ring("a_connection_nobody_speaks_on_is_cut_after_the_idle_timeout") else {
            return Ok(());
        };
        let timers = tokio_timers()?;
        let _entered = timers.enter();
        rt.block_on(async {
            let (client, _user) = pair().await?;
            let (backend, _server) = pair().await?;
            let started = Instant::now();
            let result = proxy(client, backend, Duration::from_millis(200), |_| {}).await;
            let took = started.elapsed();
            assert!(matches!(result, Err(CopyError::Idle(_))), "{result:?}");
            assert!(
                took >= Duration::from_millis(200) && took < Duration::from_secs(5),
                "{took:?}"
            );
            Ok(())
        })
    }
}
