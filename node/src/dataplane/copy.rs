//! Bidirectional byte copy between two TCP connections with an idle timeout
//! and half-close: when one side finishes sending, the other side's write
//! half is shut down and the opposite direction goes on until it ends too.
//!
//! Between TCP sockets, a direction that carries bulk data moves it with
//! splice(2) through a pipe, so its bytes are not copied into user space:
//! a read that fills the whole buffer marks bulk, and the direction
//! splices for as long as each splice moves at least as much. Short
//! messages stay on plain reads and writes, which cost less than the two
//! splices and the pipe (docs/benchmarks.md, `bench/kernel-relay.sh`).

use std::cell::RefCell;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::pin::Pin;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Poll, ready};
use std::time::Duration;

use nix::fcntl::{OFlag, SpliceFFlags};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, Interest, ReadBuf};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::time::Instant;

pub(super) const BUF_SIZE: usize = 16 * 1024;

thread_local! {
    /// Where a read that may find nothing lands, borrowed within one poll
    /// by every connection of the thread: a TCP direction's first read
    /// (`first_read`) and every read of an upgraded connection
    /// (bridge.rs), so that a connection holds a buffer only once it has
    /// bytes to keep.
    pub(super) static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; BUF_SIZE].into_boxed_slice());
}

/// At most this much per splice: a pipe's default capacity, so the pipe,
/// drained after every chunk, never fills. Smaller pipes are not used.
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
pub(super) struct Moved {
    pub(super) total: u64,
    pub(super) spliced: u64,
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

/// Runs both directions, failing with `Idle` once `last_activity`
/// (milliseconds since `start`) is `idle` old.
pub(super) async fn with_idle_watchdog(
    both: impl Future<Output = io::Result<(Moved, Moved)>>,
    start: Instant,
    last_activity: &AtomicU64,
    idle: Duration,
) -> Result<Transferred, CopyError> {
    let watchdog = idle_for(start, || last_activity.load(Ordering::Relaxed), idle);
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

/// Returns once nothing has moved for `idle`, `last_ms()` being the last
/// move in milliseconds since `start`. A tokio timer on both I/O paths: a
/// ring thread drives tokio's timers through its epoll worker.
pub(super) async fn idle_for(start: Instant, last_ms: impl Fn() -> u64, idle: Duration) {
    loop {
        let deadline = start + Duration::from_millis(last_ms()) + idle;
        if Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep_until(deadline).await;
    }
}

/// One direction between TCP sockets: reads and writes through a buffer,
/// and splices while the data comes in bulk (module doc). The buffer is
/// allocated once the first bytes are there, so a connection that never
/// sends costs no buffer. A pipe is held only while bulk chunks
/// follow each other, so an idle connection, or one of short messages,
/// holds none.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    start: Instant,
    last: &AtomicU64,
    mut on_read: impl FnMut(),
) -> io::Result<Moved> {
    // Allocated by the first read that brings something (`first_read`).
    let mut buf = Vec::new();
    let mut moved = Moved::default();
    let mut run = BulkRun::default();
    // fetch_max: the two directions race, and time must not go back.
    let active = || last.fetch_max(start.elapsed().as_millis() as u64, Ordering::Relaxed);
    loop {
        let n = match run.pipe() {
            Some(p) => match p.fill(from.as_ref()).await {
                Ok(n) => n,
                Err(e) if cannot_splice(&e) => {
                    run.refused(&e);
                    0
                }
                Err(e) => return Err(e),
            },
            None if buf.is_empty() => first_read(&mut from, &mut buf).await?,
            None => from.read(&mut buf).await?,
        };
        if n == 0 && run.nothing_spliced() {
            continue;
        }
        if n == 0 {
            // Propagate the half-close; the other direction carries on.
            let _ = to.shutdown().await;
            return Ok(moved);
        }
        on_read();
        active();
        // A slow reader on the other side is activity too, not idleness:
        // the clock moves again once the chunk is out (drain moves it
        // after each partial splice).
        match run.pipe_in_use() {
            Some(p) => {
                p.drain(to.as_ref(), n, &active).await?;
                moved.spliced += n as u64;
            }
            None => {
                to.write_all(&buf[..n]).await?;
                active();
            }
        }
        moved.total += n as u64;
        run.moved(n);
    }
}

/// One direction's bulk rule, the same on epoll and io_uring: a chunk
/// that fills the buffer (or a splice of at least as much) says more is
/// waiting, so the next chunk is spliced through a pipe; anything less
/// ends the run and hands the pipe back. A pipe is held only while bulk
/// chunks follow each other, so an idle connection, or one of short
/// messages, holds none.
#[derive(Default)]
pub(super) struct BulkRun {
    pipe: Option<Pipe>,
    bulk: bool,
    /// Set for good when this kernel, socket or sandbox cannot splice,
    /// or its pipes are too small to be worth it.
    refused: bool,
}

impl BulkRun {
    /// The pipe the next chunk goes through, taken now if the last chunk
    /// was bulk; none means read (and write) it.
    pub(super) fn pipe(&mut self) -> Option<&Pipe> {
        if self.bulk && !self.refused && self.pipe.is_none() {
            match Pipe::take(splice_fds_max()) {
                Ok(p) => self.pipe = Some(p),
                // At the splicing limit or out of descriptors: this chunk
                // is copied, and the next full one tries again.
                Err(NoPipe::Busy) => {}
                Err(NoPipe::Small) => self.refused = true,
            }
        }
        self.pipe.as_ref()
    }

    /// The pipe the chunk just filled went through, if it was spliced.
    pub(super) fn pipe_in_use(&self) -> Option<&Pipe> {
        self.pipe.as_ref()
    }

    /// Whether splicing is still on the table for this direction.
    pub(super) fn may_splice(&self) -> bool {
        !self.refused
    }

    /// Splicing cannot work here (`e`): the direction copies from now
    /// on. The chunk in hand counts as a splice that moved nothing.
    pub(super) fn refused(&mut self, e: &io::Error) {
        tracing::debug!(error = %e, "cannot splice(2) here; copying");
        self.refused = true;
    }

    /// After a chunk of 0 bytes: true if it was a splice, which moved
    /// nothing. That is the end of the stream only if a read says so too:
    /// splice also stops at TCP urgent data, which a read passes over. So
    /// the pipe goes back, and the next chunk is read.
    pub(super) fn nothing_spliced(&mut self) -> bool {
        let spliced = self.pipe.is_some();
        if spliced {
            self.not_now();
        }
        spliced
    }

    /// This chunk cannot be spliced after all (something else splicing
    /// needs is short): the pipe, if taken, goes back, the chunk is read,
    /// and the next full one tries again, as when no pipe is to be had.
    pub(super) fn not_now(&mut self) {
        if let Some(empty) = self.pipe.take() {
            empty.release();
        }
        self.bulk = false;
    }

    /// After a chunk of `n` bytes moved out.
    pub(super) fn moved(&mut self, n: usize) {
        self.bulk = n >= BUF_SIZE;
        if !self.bulk
            && let Some(drained) = self.pipe.take()
        {
            drained.release();
        }
    }
}

/// A direction's first read, into `buf` (empty until then), which takes
/// its 16 KiB only once bytes (or the end) are there: tokio may report a
/// socket readable with nothing to read, and an idle connection that took
/// its buffer then would hold it for nothing. The read lands in the
/// thread's scratch buffer and is copied into `buf`, so such a wake
/// allocates nothing. Through `poll_read`, which takes a short read as
/// proof the socket is drained, so the next read waits without a syscall
/// (a peek for the first byte cost one per direction).
async fn first_read(from: &mut OwnedReadHalf, buf: &mut Vec<u8>) -> io::Result<usize> {
    std::future::poll_fn(|cx| {
        SCRATCH.with_borrow_mut(|scratch| {
            let mut read = ReadBuf::new(scratch);
            ready!(Pin::new(&mut *from).poll_read(cx, &mut read))?;
            let first = read.filled();
            if first.is_empty() {
                // The end: no buffer for a direction that is over.
                return Poll::Ready(Ok(0));
            }
            buf.resize(BUF_SIZE, 0);
            buf[..first.len()].copy_from_slice(first);
            Poll::Ready(Ok(first.len()))
        })
    })
    .await
}

/// splice(2) errors that mean "not here" (a kernel, socket or seccomp
/// policy that refuses it) rather than a failed connection; nothing has
/// moved when they come from `Pipe::fill`.
pub(super) fn cannot_splice(e: &io::Error) -> bool {
    use nix::libc::{EINVAL, ENOSYS, EOPNOTSUPP, EPERM};
    matches!(e.raw_os_error(), Some(EINVAL | ENOSYS | EOPNOTSUPP | EPERM))
}

/// Descriptors held for splicing at once in this process: each pipe's
/// two, and on io_uring the second descriptor of each socket that a bulk
/// connection waits for readiness on.
static SPLICE_FDS_OPEN: AtomicUsize = AtomicUsize::new(0);
/// At most a quarter of the open-files limit goes to splicing, so bulk
/// transfers cannot starve accepting clients.
static SPLICE_FDS_MAX: LazyLock<usize> =
    LazyLock::new(
        || match nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE) {
            Ok((soft, _)) => usize::try_from(soft / 4).unwrap_or(usize::MAX),
            Err(_) => 256,
        },
    );

/// How many descriptors this process may hold for splicing at once.
pub(super) fn splice_fds_max() -> usize {
    *SPLICE_FDS_MAX
}

/// Descriptors counted in SPLICE_FDS_OPEN for as long as this lives.
pub(super) struct SpliceFds(usize);

impl SpliceFds {
    /// `n` more descriptors for splicing, unless that would pass `max`
    /// ([`splice_fds_max`] but in tests).
    pub(super) fn reserve(n: usize, max: usize) -> Option<Self> {
        if SPLICE_FDS_OPEN.fetch_add(n, Ordering::Relaxed) + n > max {
            SPLICE_FDS_OPEN.fetch_sub(n, Ordering::Relaxed);
            return None;
        }
        Some(Self(n))
    }
}

impl Drop for SpliceFds {
    fn drop(&mut self) {
        SPLICE_FDS_OPEN.fetch_sub(self.0, Ordering::Relaxed);
    }
}

/// Why `Pipe::take` gave no pipe.
#[derive(Debug, PartialEq, Eq)]
enum NoPipe {
    /// The descriptors for splicing are all in use, or the kernel has no
    /// descriptor to give: worth trying again later.
    Busy,
    /// The kernel gives pipes smaller than PIPE_CHUNK (a user past
    /// `fs.pipe-user-pages-soft` gets 8 KiB ones), which would cost more
    /// than they save.
    Small,
}

/// Empty pipes kept per worker thread.
const SPARE_PIPES_MAX: usize = 16;

thread_local! {
    /// Empty pipes kept for this worker's next bulk run, so that a run
    /// costs no pipe2 and close (HAProxy pools its pipes likewise).
    static SPARE_PIPES: RefCell<Vec<Pipe>> = const { RefCell::new(Vec::new()) };
}

/// A pipe that carries one direction's bulk data between two sockets,
/// counted in SPLICE_FDS_OPEN while it exists. It is empty between chunks:
/// `fill` moves at most its capacity in, and `drain` moves all of that out
/// before the next `fill`. Dropped, it closes; `release` keeps an empty
/// one for reuse, so a pipe left holding bytes (a failed or cancelled
/// drain) is never lent again.
pub(super) struct Pipe {
    out: OwnedFd,
    into: OwnedFd,
    _counted: SpliceFds,
}

const SPLICE_FLAGS: SpliceFFlags = SpliceFFlags::SPLICE_F_MOVE.union(SpliceFFlags::SPLICE_F_NONBLOCK);

impl Pipe {
    /// A spare pipe of this worker's, or a new one of at least PIPE_CHUNK
    /// unless that would hold more than `max` descriptors for splicing.
    fn take(max: usize) -> Result<Self, NoPipe> {
        if let Some(pipe) = SPARE_PIPES.with_borrow_mut(Vec::pop) {
            return Ok(pipe);
        }
        let counted = SpliceFds::reserve(2, max).ok_or(NoPipe::Busy)?;
        let (out, into) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC).map_err(|e| {
            tracing::debug!(error = %e, "no pipe for splice(2); copying");
            NoPipe::Busy
        })?;
        let pipe = Self {
            out,
            into,
            _counted: counted,
        };
        match nix::fcntl::fcntl(&pipe.into, nix::fcntl::FcntlArg::F_GETPIPE_SZ) {
            Ok(size) if usize::try_from(size).is_ok_and(|size| size >= PIPE_CHUNK) => Ok(pipe),
            _ => Err(NoPipe::Small),
        }
    }

    /// Keeps this pipe, which must be empty, for the worker's next bulk
    /// run, or closes it if enough are kept already.
    fn release(self) {
        SPARE_PIPES.with_borrow_mut(|spare| {
            if spare.len() < SPARE_PIPES_MAX {
                spare.push(self);
            }
        });
    }

    /// One splice of up to PIPE_CHUNK bytes from `from`, a non-blocking
    /// socket (a blocking one makes splice(2) wait, whatever its flags
    /// say), into the pipe: 0 at the end of the stream or at urgent data,
    /// EAGAIN when nothing is there.
    pub(super) fn splice_in(&self, from: impl AsFd) -> nix::Result<usize> {
        nix::fcntl::splice(from, None, &self.into, None, PIPE_CHUNK, SPLICE_FLAGS)
    }

    /// One splice of up to `n` of the pipe's bytes into `to`, a
    /// non-blocking socket: EAGAIN when its send buffer is full.
    pub(super) fn splice_out(&self, to: impl AsFd, n: usize) -> nix::Result<usize> {
        nix::fcntl::splice(&self.out, None, to, None, n, SPLICE_FLAGS)
    }

    /// Moves up to PIPE_CHUNK bytes from `from` into the pipe once `from`
    /// is readable. 0 when the splice moved nothing: `from` ended, reached
    /// TCP urgent data, or was not readable after all; a read tells which.
    async fn fill(&self, from: &TcpStream) -> io::Result<usize> {
        from.readable().await?;
        // EAGAIN is passed on as 0, not WouldBlock, so that the readiness
        // stays for the read that follows: at urgent data splice says
        // EAGAIN while a read would still return bytes.
        from.try_io(Interest::READABLE, || match self.splice_in(from) {
            Ok(n) => Ok(n),
            Err(nix::errno::Errno::EAGAIN) => Ok(0),
            Err(e) => Err(e.into()),
        })
    }

    /// Moves `n` bytes, all the pipe holds, out into `to`, calling
    /// `progress` after each partial move. (A peer that has closed makes
    /// this fail with EPIPE, not a signal: Rust programs ignore SIGPIPE.)
    async fn drain(&self, to: &TcpStream, mut n: usize, progress: impl Fn() -> u64) -> io::Result<()> {
        while n > 0 {
            to.writable().await?;
            let r = to.try_io(Interest::WRITABLE, || Ok(self.splice_out(to, n)?));
            match r {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(sent) => {
                    n -= sent;
                    progress();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// What the bulk-and-short test of either I/O path moved: two 300-byte
/// requests with 3 MiB responses, a 1 MiB upload, a 10-byte answer.
#[cfg(test)]
pub(super) fn assert_bulk_and_short_moved(moved: &Transferred) {
    assert_eq!(moved.client_to_backend, 2 * 300 + (1 << 20));
    assert_eq!(moved.backend_to_client, 2 * (3 << 20) + 10);
    // The bulk went mostly through pipes (a wider bound than loopback
    // needs: TCP buffer sizes vary). Each direction's first buffer is read
    // (no pipe yet); after that, what follows a bulk run that ended on a
    // full chunk may be spliced too (the next response, the answer).
    assert!(moved.spliced > 4 << 20, "{moved:?}");
    assert!(
        moved.spliced <= 2 * (3 << 20) + (1 << 20) + 10 - 2 * BUF_SIZE as u64,
        "{moved:?}"
    );
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

    #[tokio::test]
    async fn a_direction_that_ends_before_its_first_byte_passes_the_end_on() -> io::Result<()> {
        // The client sends nothing and closes its side: its direction ends
        // on its first read, and the backend may still answer.
        let (mut client_side, mut backend_side, task) = proxied().await?;
        client_side.shutdown().await?;
        let mut got = Vec::new();
        backend_side.read_to_end(&mut got).await?;
        assert!(got.is_empty(), "{got:?}");
        backend_side.write_all(b"late").await?;
        backend_side.shutdown().await?;
        let mut got = Vec::new();
        client_side.read_to_end(&mut got).await?;
        assert_eq!(got, b"late");
        let moved = task.await.map_err(io::Error::other)?.map_err(io::Error::other)?;
        assert_eq!((moved.client_to_backend, moved.backend_to_client), (0, 4));
        Ok(())
    }

    /// A client socket and a backend socket with `proxy` running between
    /// them (5 s idle timeout), and its task.
    async fn proxied() -> io::Result<(
        TcpStream,
        TcpStream,
        tokio::task::JoinHandle<Result<Transferred, CopyError>>,
    )> {
        let (client_side, client_conn) = pair().await?;
        let (backend_conn, backend_side) = pair().await?;
        let task = tokio::spawn(proxy(client_conn, backend_conn, Duration::from_secs(5), |_| {}));
        Ok((client_side, backend_side, task))
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

    /// Fails a test that hangs (a lost wake-up) instead of waiting forever.
    async fn within_10s<T>(test: impl Future<Output = io::Result<T>>) -> io::Result<T> {
        tokio::time::timeout(Duration::from_secs(10), test)
            .await
            .map_err(|_| io::Error::other("the test hung for 10 s"))?
    }

    #[tokio::test]
    async fn bulk_data_is_spliced_intact_and_short_messages_still_copied() -> io::Result<()> {
        within_10s(bulk_and_short()).await
    }

    async fn bulk_and_short() -> io::Result<()> {
        let (mut client_side, mut backend_side, task) = proxied().await?;

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
        assert_bulk_and_short_moved(&moved);
        Ok(())
    }

    /// Two full buffers and the end, all queued before the proxy reads:
    /// the first is copied, the second spliced, and the splice after it
    /// finds the end, which a read must confirm and pass on.
    #[tokio::test]
    async fn an_end_met_while_splicing_is_passed_on_after_every_byte() -> io::Result<()> {
        within_10s(async {
            let (mut client_side, mut backend_side, task) = proxied().await?;
            let upload = pattern(2 * BUF_SIZE, 9);
            client_side.write_all(&upload).await?;
            client_side.shutdown().await?;
            let mut got = Vec::new();
            backend_side.read_to_end(&mut got).await?;
            assert!(got == upload, "{} of {} bytes", got.len(), upload.len());
            drop((client_side, backend_side));
            let moved = task.await.map_err(io::Error::other)?.map_err(io::Error::other)?;
            assert_eq!(moved.client_to_backend, 2 * BUF_SIZE as u64);
            assert_eq!(moved.spliced, BUF_SIZE as u64, "{moved:?}");
            Ok(())
        })
        .await
    }

    #[tokio::test]
    async fn a_bulk_upload_and_its_end_arrive_whole() -> io::Result<()> {
        within_10s(async {
            let (mut client_side, mut backend_side, task) = proxied().await?;
            let upload = pattern(2 << 20, 6);
            let reader = async {
                let mut got = Vec::new();
                backend_side.read_to_end(&mut got).await?;
                io::Result::Ok(got)
            };
            let writer = async {
                client_side.write_all(&upload).await?;
                client_side.shutdown().await
            };
            let (got, ()) = tokio::try_join!(reader, writer)?;
            assert!(got == upload, "{} of {} bytes", got.len(), upload.len());
            drop((client_side, backend_side));
            let moved = task.await.map_err(io::Error::other)?.map_err(io::Error::other)?;
            assert_eq!(moved.client_to_backend, 2 << 20);
            assert!(moved.spliced > 1 << 20, "{moved:?}");
            Ok(())
        })
        .await
    }

    /// splice(2) stops at TCP urgent data, where a read goes on: a bulk
    /// direction that meets it must read past it, not stall or end there.
    #[tokio::test]
    async fn urgent_data_in_a_bulk_stream_neither_stalls_nor_truncates_it() -> io::Result<()> {
        within_10s(async {
            for close_after in [true, false] {
                let (mut client_side, mut backend_side, task) = proxied().await?;
                // A full first buffer (so the next chunk is spliced), the
                // urgent byte, then more; all of it queued before the proxy
                // reads, and with the end of the stream too when close_after.
                let (before, after) = (pattern(BUF_SIZE, 7), pattern(20_000, 8));
                client_side.write_all(&before).await?;
                socket2::SockRef::from(&client_side).send_out_of_band(b"!")?;
                client_side.write_all(&after).await?;
                if close_after {
                    client_side.shutdown().await?;
                }
                // Without SO_OOBINLINE the urgent byte is out of band: the
                // stream carries everything else.
                let want = [before, after].concat();
                let mut got = vec![0u8; want.len()];
                backend_side.read_exact(&mut got).await?;
                assert!(got == want, "close_after {close_after}");
                drop(client_side);
                let mut rest = Vec::new();
                backend_side.read_to_end(&mut rest).await?;
                assert!(rest.is_empty(), "close_after {close_after}: {} more bytes", rest.len());
                drop(backend_side);
                task.await.map_err(io::Error::other)?.map_err(io::Error::other)?;
            }
            Ok(())
        })
        .await
    }

    #[tokio::test]
    async fn a_pipe_moves_what_arrived_then_reports_the_end() -> io::Result<()> {
        let (mut writer, from) = pair().await?;
        let (to, mut reader) = pair().await?;
        let data = pattern(5000, 5);
        writer.write_all(&data).await?;
        writer.shutdown().await?;
        let pipe = Pipe::take(usize::MAX).map_err(|e| io::Error::other(format!("{e:?}")))?;
        let mut moved = 0;
        loop {
            let n = pipe.fill(&from).await?;
            if n == 0 {
                break;
            }
            pipe.drain(&to, n, || 0).await?;
            moved += n;
        }
        assert_eq!(moved, data.len());
        // A released pipe is lent again, even at the limit (0 here), and
        // only once.
        pipe.release();
        assert!(Pipe::take(0).is_ok());
        assert_eq!(Pipe::take(0).err(), Some(NoPipe::Busy));
        // A new one needs both its descriptors within the limit.
        assert_eq!(Pipe::take(1).err(), Some(NoPipe::Busy));
        drop(to);
        let mut got = Vec::new();
        reader.read_to_end(&mut got).await?;
        assert!(got == data);
        Ok(())
    }

    #[test]
    fn a_bulk_run_starts_on_a_full_chunk_and_ends_on_a_short_one_nothing_a_pause_or_a_refusal() {
        let mut run = BulkRun::default();
        assert!(run.pipe().is_none(), "the first chunk is read");
        run.moved(BUF_SIZE);
        assert!(run.pipe().is_some(), "a full chunk: the next one is spliced");
        run.moved(BUF_SIZE);
        assert!(run.pipe_in_use().is_some(), "still bulk");
        run.moved(10);
        assert!(
            run.pipe_in_use().is_none() && run.pipe().is_none(),
            "a short chunk ends the run"
        );
        run.moved(BUF_SIZE);
        assert!(run.pipe().is_some());
        assert!(run.nothing_spliced(), "a splice that moved nothing hands the pipe back");
        assert!(run.pipe().is_none(), "and the next chunk is read");
        assert!(!run.nothing_spliced(), "a read of nothing is the end");
        run.moved(BUF_SIZE);
        assert!(run.pipe().is_some());
        run.not_now();
        assert!(
            run.pipe_in_use().is_none() && run.pipe().is_none() && run.may_splice(),
            "not now: the chunk is read, splicing stays on the table"
        );
        run.moved(BUF_SIZE);
        assert!(run.pipe().is_some(), "and the next full chunk splices again");
        assert!(run.nothing_spliced());
        run.moved(BUF_SIZE);
        assert!(run.pipe().is_some() && run.may_splice());
        run.refused(&io::Error::from_raw_os_error(nix::libc::EINVAL));
        assert!(run.nothing_spliced(), "the refused chunk is read");
        run.moved(BUF_SIZE);
        assert!(run.pipe().is_none() && !run.may_splice(), "refused for good");
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
