//! Bidirectional byte copy between two TCP connections with an idle timeout
//! and half-close: when one side finishes sending, the other side's write
//! half is shut down and the opposite direction goes on until it ends too.
//!
//! Between TCP sockets, a direction that carries bulk data moves it with
//! splice(2) through a pipe, so its bytes are not copied into user space:
//! a read that fills the whole buffer marks bulk, and the direction
//! splices for as long as each splice fills its chunk too. Short messages
//! stay on plain reads and writes, which cost less than the two splices
//! and the pipe (docs/benchmarks.md, `bench/kernel-relay.sh`).

use std::io;
use std::os::fd::OwnedFd;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use nix::fcntl::{OFlag, SpliceFFlags};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, Interest};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::time::Instant;

const BUF_SIZE: usize = 16 * 1024;
/// At most this much per splice: a pipe's default capacity, so the pipe,
/// drained after every chunk, never fills.
const PIPE_CHUNK: usize = 64 * 1024;

/// Bytes moved in each direction.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Transferred {
    pub client_to_backend: u64,
    pub backend_to_client: u64,
    /// Of both directions' bytes, those moved by splice(2).
    pub spliced: u64,
}

/// Bytes one direction moved, and how many of them by splice(2).
#[derive(Debug, Default, Clone, Copy)]
struct Moved {
    total: u64,
    spliced: u64,
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
pub async fn bridge<A, B>(a: A, b: B, idle: Duration) -> Result<Transferred, CopyError>
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
    both: impl Future<Output = io::Result<(Moved, Moved)>>,
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
            Ok(Transferred {
                client_to_backend: up.total,
                backend_to_client: down.total,
                spliced: up.spliced + down.spliced,
            })
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
) -> io::Result<Moved>
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
            return Ok(Moved { total, spliced: 0 });
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

/// One direction between TCP sockets: reads and writes through a buffer,
/// and splices while the data comes in bulk (module doc). The buffer is
/// allocated on the first readable event, so a connection that never
/// sends costs no buffer. A pipe is held only while full chunks follow
/// each other, so an idle connection, or one of short messages, holds none.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    start: Instant,
    last: &AtomicU64,
    mut on_read: impl FnMut(),
) -> io::Result<Moved> {
    from.readable().await?;
    let mut buf = vec![0u8; BUF_SIZE];
    let mut moved = Moved::default();
    let mut pipe: Option<Pipe> = None;
    let mut bulk = false;
    // Cleared for good when this kernel or socket refuses to splice.
    let mut can_splice = true;
    loop {
        if bulk && can_splice && pipe.is_none() {
            // None at the pipe limit or out of descriptors: this chunk is
            // copied, and the next full one tries again.
            pipe = Pipe::open(&PIPES_OPEN, *PIPES_MAX);
        }
        let n = match &pipe {
            Some(p) => match p.fill(from.as_ref()).await {
                Ok(n) => n,
                Err(e) if cannot_splice(&e) => {
                    tracing::debug!(error = %e, "splice(2) refused; copying");
                    can_splice = false;
                    pipe = None;
                    continue;
                }
                Err(e) => return Err(e),
            },
            None => from.read(&mut buf).await?,
        };
        if n == 0 {
            // Propagate the half-close; the other direction carries on.
            let _ = to.shutdown().await;
            return Ok(moved);
        }
        on_read();
        // fetch_max: the two directions race, and time must not go back.
        last.fetch_max(start.elapsed().as_millis() as u64, Ordering::Relaxed);
        let chunk = match &pipe {
            Some(p) => {
                p.drain(to.as_ref(), n).await?;
                moved.spliced += n as u64;
                PIPE_CHUNK
            }
            None => {
                to.write_all(&buf[..n]).await?;
                BUF_SIZE
            }
        };
        // A slow reader on the other side is activity too, not idleness.
        last.fetch_max(start.elapsed().as_millis() as u64, Ordering::Relaxed);
        moved.total += n as u64;
        // A full chunk says more is waiting: splice the next one.
        bulk = n == chunk;
        if !bulk {
            pipe = None;
        }
    }
}

/// splice(2) errors that mean "not here" (a kernel or socket that cannot
/// splice) rather than a failed connection; nothing has moved when they
/// come from `Pipe::fill`.
fn cannot_splice(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(code) if code == nix::libc::EINVAL || code == nix::libc::ENOSYS || code == nix::libc::EOPNOTSUPP
    )
}

/// Pipes open at once in this process.
static PIPES_OPEN: AtomicUsize = AtomicUsize::new(0);
/// At most a quarter of the open-files limit goes to pipes (two
/// descriptors each), so bulk transfers cannot starve accepting clients.
static PIPES_MAX: LazyLock<usize> =
    LazyLock::new(
        || match nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE) {
            Ok((soft, _)) => usize::try_from(soft / 8).unwrap_or(usize::MAX),
            Err(_) => 128,
        },
    );

/// A pipe that carries one direction's bulk data between two sockets. It
/// is empty between chunks: `fill` moves at most its capacity in, and
/// `drain` moves all of that out before the next `fill`.
struct Pipe {
    out: OwnedFd,
    into: OwnedFd,
    /// The count this pipe is in, taken back when it closes.
    open: &'static AtomicUsize,
}

const SPLICE_FLAGS: SpliceFFlags = SpliceFFlags::SPLICE_F_MOVE.union(SpliceFFlags::SPLICE_F_NONBLOCK);

impl Pipe {
    /// A new pipe, counted in `open`; None when `max` are open already or
    /// the kernel has none to give.
    fn open(open: &'static AtomicUsize, max: usize) -> Option<Self> {
        if open.fetch_add(1, Ordering::Relaxed) >= max {
            open.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        match nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC) {
            Ok((out, into)) => Some(Self { out, into, open }),
            Err(e) => {
                open.fetch_sub(1, Ordering::Relaxed);
                tracing::debug!(error = %e, "no pipe for splice(2); copying");
                None
            }
        }
    }

    /// Moves up to PIPE_CHUNK bytes from `from` into the pipe; 0 once
    /// `from` has ended.
    async fn fill(&self, from: &TcpStream) -> io::Result<usize> {
        loop {
            from.readable().await?;
            let r = from.try_io(Interest::READABLE, || {
                Ok(nix::fcntl::splice(
                    from,
                    None,
                    &self.into,
                    None,
                    PIPE_CHUNK,
                    SPLICE_FLAGS,
                )?)
            });
            match r {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                r => return r,
            }
        }
    }

    /// Moves `n` bytes, all the pipe holds, out into `to`.
    async fn drain(&self, to: &TcpStream, mut n: usize) -> io::Result<()> {
        while n > 0 {
            to.writable().await?;
            let r = to.try_io(Interest::WRITABLE, || {
                Ok(nix::fcntl::splice(&self.out, None, to, None, n, SPLICE_FLAGS)?)
            });
            match r {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(sent) => n -= sent,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

impl Drop for Pipe {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }
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
                backend_to_client: 4,
                spliced: 0,
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

    /// `len` bytes that are not all alike, so a lost, repeated or
    /// reordered chunk shows.
    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8 ^ seed).collect()
    }

    /// Sends `data` into `from` and reads as much from `to`, concurrently.
    async fn through(from: &mut TcpStream, to: &mut TcpStream, data: &[u8]) -> io::Result<Vec<u8>> {
        let mut got = vec![0u8; data.len()];
        tokio::try_join!(from.write_all(data), to.read_exact(&mut got))?;
        Ok(got)
    }

    #[tokio::test]
    async fn bulk_data_is_spliced_intact_and_short_messages_still_copied() -> io::Result<()> {
        let (mut client_side, client_conn) = pair().await?;
        let (backend_conn, mut backend_side) = pair().await?;
        let task = tokio::spawn(proxy(client_conn, backend_conn, Duration::from_secs(5), |_| {}));

        // A short request, a bulk response, then the same again: each
        // direction switches between copying and splicing and back.
        let (request, response) = (pattern(300, 1), pattern(3 << 20, 2));
        for _ in 0..2 {
            assert!(through(&mut client_side, &mut backend_side, &request).await? == request);
            assert!(through(&mut backend_side, &mut client_side, &response).await? == response);
        }
        let upload = pattern(1 << 20, 3);
        assert!(through(&mut client_side, &mut backend_side, &upload).await? == upload);
        let tail = pattern(10, 4);
        assert!(through(&mut backend_side, &mut client_side, &tail).await? == tail);

        client_side.shutdown().await?;
        backend_side.shutdown().await?;
        let moved = task.await.map_err(io::Error::other)?.map_err(io::Error::other)?;
        assert_eq!(moved.client_to_backend, 2 * 300 + (1 << 20));
        assert_eq!(moved.backend_to_client, 2 * (3 << 20) + 10);
        // The bulk transfers went mostly through the pipe; the short
        // messages, and each bulk transfer's first buffer, did not.
        assert!(moved.spliced > 4 << 20, "{moved:?}");
        assert!(
            moved.spliced <= 2 * (3 << 20) + (1 << 20) - 3 * BUF_SIZE as u64,
            "{moved:?}"
        );
        Ok(())
    }

    #[tokio::test]
    async fn a_pipe_moves_what_arrived_then_reports_the_end() -> io::Result<()> {
        let (mut writer, from) = pair().await?;
        let (to, mut reader) = pair().await?;
        let data = pattern(5000, 5);
        writer.write_all(&data).await?;
        writer.shutdown().await?;
        static OPEN: AtomicUsize = AtomicUsize::new(0);
        let pipe = Pipe::open(&OPEN, 1).ok_or_else(|| io::Error::other("no pipe"))?;
        // The limit holds, and a closed pipe makes room again.
        assert!(Pipe::open(&OPEN, 1).is_none());
        assert_eq!(OPEN.load(Ordering::Relaxed), 1);
        let mut moved = 0;
        loop {
            let n = pipe.fill(&from).await?;
            if n == 0 {
                break;
            }
            pipe.drain(&to, n).await?;
            moved += n;
        }
        assert_eq!(moved, data.len());
        drop(pipe);
        assert_eq!(OPEN.load(Ordering::Relaxed), 0);
        assert!(Pipe::open(&OPEN, 1).is_some());
        drop(to);
        let mut got = Vec::new();
        reader.read_to_end(&mut got).await?;
        assert!(got == data);
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
