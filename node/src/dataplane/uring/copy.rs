//! The L4 copy loop on io_uring: the epoll loop's contract (both
//! directions, half-close passed on, idle timeout, first response timed,
//! bulk data spliced; `dataplane::copy`) with owned buffers, each read
//! and write one ring operation.
//!
//! No direction holds a buffer until either side has sent something, so
//! an idle connection costs only its sockets and task, as on epoll. The
//! idle timeout is a tokio timer (the ring thread's epoll worker drives
//! it): monoio's `Sleep` is 640 bytes, which every connection's task
//! would carry.
//!
//! Bulk data (a read that fills the buffer) is spliced as on epoll, with
//! splice(2) calls made by the ring thread itself and readiness waited
//! for through the ring: a ring's own splice operation is always handed
//! to a kernel worker thread (io-wq), a context switch per chunk. Where
//! splicing is refused, bulk is copied through a buffer that grows while
//! reads fill it and shrinks back when they stop.

use std::cell::{Cell, OnceCell};
use std::io;
use std::os::fd::BorrowedFd;
use std::time::Duration;

use monoio::net::TcpStream;
use monoio::net::tcp::{TcpOwnedReadHalf, TcpOwnedWriteHalf};
use nix::errno::Errno;
use tokio::time::Instant;

use super::fd::{self, Half};
use crate::dataplane::copy::{
    BUF_SIZE, BulkRun, CopyError, Moved, Pipe, SpliceFds, Transferred, cannot_splice, idle_for, splice_fds_max,
};

/// The largest buffer a bulk direction grows to when it cannot splice:
/// fewer, larger reads and writes per byte, each one ring operation.
const BULK_BUF_SIZE: usize = 256 * 1024;

/// Copies until both directions have ended, either side fails, or nothing
/// moves for `idle`; `on_first_response` as in `dataplane::copy::proxy`.
pub async fn proxy(
    client: TcpStream,
    backend: TcpStream,
    idle: Duration,
    on_first_response: impl FnOnce(Duration),
) -> Result<Transferred, CopyError> {
    proxy_within(client, backend, idle, on_first_response, splice_fds_max()).await
}

/// `proxy`, its readiness descriptors held within `splice_fds_max`
/// descriptors for splicing (as its pipes are within the process's).
async fn proxy_within(
    client: TcpStream,
    backend: TcpStream,
    idle: Duration,
    on_first_response: impl FnOnce(Duration),
    splice_fds_max: usize,
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
    // Made by the first bulk chunk either way, shared by both directions.
    let (client_watch, backend_watch) = (OnceCell::new(), OnceCell::new());
    let both = async {
        monoio::select! {
            r = client.readable(true) => r?,
            r = backend.readable(true) => r?,
        }
        let (cr, cw) = fd::split(client);
        let (br, bw) = fd::split(backend);
        monoio::try_join!(
            pump(
                (cr, &client_watch),
                (bw, &backend_watch),
                start,
                &last_activity,
                splice_fds_max,
                on_client_read
            ),
            pump(
                (br, &backend_watch),
                (cw, &client_watch),
                start,
                &last_activity,
                splice_fds_max,
                on_backend_read
            )
        )
    };
    let watchdog = idle_for(start, || last_activity.get(), idle);
    monoio::select! {
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

/// One direction until its source ends (then the half-close is passed
/// on) or either side fails: copied through a buffer, spliced while the
/// data comes in bulk, as `dataplane::copy`'s pump does on epoll.
async fn pump(
    (mut from, from_watch): (Half<TcpOwnedReadHalf>, &OnceCell<WatchFd>),
    (mut to, to_watch): (Half<TcpOwnedWriteHalf>, &OnceCell<WatchFd>),
    start: Instant,
    last: &Cell<u64>,
    splice_fds_max: usize,
    mut on_read: impl FnMut(),
) -> io::Result<Moved> {
    // Capacity only: the ring writes into it, no memset first.
    let mut buf = Vec::with_capacity(BUF_SIZE);
    let mut moved = Moved::default();
    let mut run = BulkRun::default();
    // Made by the first bulk chunk, kept for the direction's life.
    let mut watch: Option<Readiness> = None;
    loop {
        if run.pipe().is_some() && watch.is_none() {
            match Readiness::new((from.fd(), from_watch), (to.fd(), to_watch), splice_fds_max) {
                Ok(w) => watch = Some(w),
                // Out of descriptors, or of those splicing may hold.
                Err(e) => {
                    tracing::debug!(error = %e, "no descriptor to wait for readiness on; copying");
                    run.not_now();
                }
            }
        }
        let n = match (run.pipe(), &watch) {
            (Some(p), Some(w)) => match w.fill(p, from.fd()).await {
                Ok(n) => n,
                Err(e) if cannot_splice(&e) => {
                    run.refused(&e);
                    0
                }
                Err(e) => return Err(e),
            },
            _ => {
                let (read, back) = from.read(std::mem::take(&mut buf)).await;
                buf = back;
                read?
            }
        };
        if n == 0 && run.nothing_spliced() {
            continue;
        }
        if n == 0 {
            let _ = to.shutdown().await;
            return Ok(moved);
        }
        on_read();
        touch(last, start);
        match (run.pipe_in_use(), &watch) {
            (Some(p), Some(w)) => {
                w.drain(p, to.fd(), n, || touch(last, start)).await?;
                moved.spliced += n as u64;
            }
            _ => {
                let (written, back) = to.write_all(std::mem::take(&mut buf)).await;
                written?;
                // A slow reader on the other side is activity too, not idleness.
                touch(last, start);
                // A direction that splices its bulk needs no larger buffer.
                buf = if run.may_splice() {
                    reuse(back)
                } else {
                    next_buffer(back, n)
                };
            }
        }
        moved.total += n as u64;
        run.moved(n);
    }
}

/// A second descriptor of a connection's socket, as a ring stream, to wait
/// for readiness on through the ring, which monoio's halves cannot; one
/// per socket, shared by both directions, and counted with the pipes.
struct WatchFd {
    stream: TcpStream,
    _counted: SpliceFds,
}

/// A direction's two sockets' [`WatchFd`]s.
struct Readiness<'a> {
    from: &'a TcpStream,
    to: &'a TcpStream,
    /// Chunks spliced in since the last wait in the ring.
    unwaited: Cell<u32>,
}

/// At most this many chunks (of up to 64 KiB) in a row without a wait in
/// the ring: a bulk stream holds its ring thread for about a millisecond
/// at most.
const SPLICES_PER_WAIT: u32 = 16;

impl<'a> Readiness<'a> {
    /// The direction's source and destination: each socket's descriptor
    /// and the cell that keeps its [`WatchFd`], made here if the other
    /// direction has not made it yet. Fails when the descriptors splicing
    /// may hold (`max`) are all in use, or the kernel gives none.
    fn new(
        from: (BorrowedFd<'_>, &'a OnceCell<WatchFd>),
        to: (BorrowedFd<'_>, &'a OnceCell<WatchFd>),
        max: usize,
    ) -> io::Result<Self> {
        let watch = |(fd, cell): (BorrowedFd<'_>, &'a OnceCell<WatchFd>)| -> io::Result<&'a TcpStream> {
            if let Some(watch) = cell.get() {
                return Ok(&watch.stream);
            }
            let counted = SpliceFds::reserve(1, max)
                .ok_or_else(|| io::Error::other("the descriptors for splicing are all in use"))?;
            let socket = std::net::TcpStream::from(fd.try_clone_to_owned()?);
            // splice(2) waits on a blocking socket. The flag belongs to
            // the socket, so the ring's descriptor gets it too; its reads
            // and writes do not depend on it (the HTTP path's sockets,
            // accepted on epoll, have it all along).
            socket.set_nonblocking(true)?;
            let stream = TcpStream::from_std(socket)?;
            let watch = cell.get_or_init(|| WatchFd {
                stream,
                _counted: counted,
            });
            Ok(&watch.stream)
        };
        Ok(Self {
            from: watch(from)?,
            to: watch(to)?,
            unwaited: Cell::new(0),
        })
    }

    /// Moves up to a pipe's worth from `from` into `pipe`, waiting for it
    /// to be readable if nothing is there. 0 when the splice moved
    /// nothing: the stream ended, reached urgent data, or the socket was
    /// readable with nothing to splice; a read tells which.
    ///
    /// A run of splices that all find bytes never yields, and with
    /// deferred task work the ring's other connections get no completions
    /// until the thread waits in the ring: every SPLICES_PER_WAIT chunks
    /// the wait comes first anyway. (Waiting before every chunk cost
    /// about a fifth more CPU per byte: `bench/bulk.sh`.)
    async fn fill(&self, pipe: &Pipe, from: BorrowedFd<'_>) -> io::Result<usize> {
        if self.unwaited.get() < SPLICES_PER_WAIT {
            match pipe.splice_in(from) {
                Err(Errno::EAGAIN) => {}
                r => {
                    self.unwaited.set(self.unwaited.get() + 1);
                    return Ok(r?);
                }
            }
        }
        self.unwaited.set(0);
        self.from.readable(true).await?;
        match pipe.splice_in(from) {
            Err(Errno::EAGAIN) => Ok(0),
            r => Ok(r?),
        }
    }

    /// Moves `n` bytes, all the pipe holds, into `to`, calling `progress`
    /// after each partial move.
    async fn drain(&self, pipe: &Pipe, to: BorrowedFd<'_>, mut n: usize, progress: impl Fn()) -> io::Result<()> {
        while n > 0 {
            match pipe.splice_out(to, n) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(sent) => {
                    n -= sent;
                    progress();
                }
                Err(Errno::EAGAIN) => self.to.writable(true).await?,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}

/// The buffer for the next read, after one that read `n` into `buf`: four
/// times larger (up to [`BULK_BUF_SIZE`]) when it was filled, back to
/// [`BUF_SIZE`] when a large one was not, else `buf` again.
fn next_buffer(buf: Vec<u8>, n: usize) -> Vec<u8> {
    let capacity = buf.capacity();
    if n == capacity && capacity < BULK_BUF_SIZE {
        Vec::with_capacity((capacity * 4).min(BULK_BUF_SIZE))
    } else if n < BUF_SIZE && capacity > BUF_SIZE {
        Vec::with_capacity(BUF_SIZE)
    } else {
        reuse(buf)
    }
}

fn reuse(mut buf: Vec<u8>) -> Vec<u8> {
    buf.clear();
    buf
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

    /// Runs `body` on a ring, with tokio's timers driven by a worker of
    /// their own, as a ring thread's epoll worker drives them in the node.
    /// None when this kernel refuses io_uring (the test is skipped).
    fn on_ring<T>(test: &str, body: impl Future<Output = io::Result<T>>) -> io::Result<Option<T>> {
        let Some(mut rt) = ring(test) else {
            return Ok(None);
        };
        let timers = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_time()
            .build()?;
        let _entered = timers.enter();
        rt.block_on(body).map(Some)
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
        on_ring(
            "copies_both_ways_passes_the_half_close_and_times_the_first_response",
            async {
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
                // The upload went mostly through a pipe (a wide bound: TCP
                // buffer sizes vary); its first buffer and the rest did not.
                assert!(
                    moved.spliced > 1_000_000 && moved.spliced <= 3_000_000 - BUF_SIZE as u64,
                    "{moved:?}"
                );
                let took = first_response.try_recv().map_err(io::Error::other)?;
                assert!(
                    took >= Duration::from_millis(30) && took < Duration::from_secs(5),
                    "{took:?}"
                );
                Ok(())
            },
        )
        // None: skipped, said so loudly.
        .map(|_| ())
    }

    type Peer = std::net::TcpStream;

    /// Runs `proxy` on a ring between a client end and a backend end:
    /// `before` gets both (user, server) first, on this thread, then
    /// `peers` drives them on a thread of its own while the proxy runs.
    /// None when this kernel refuses io_uring (the test is skipped).
    fn with_proxy(
        test: &str,
        before: impl FnOnce(&mut Peer, &mut Peer) -> io::Result<()>,
        peers: impl FnOnce(Peer, Peer) -> io::Result<()> + Send + 'static,
    ) -> io::Result<Option<Transferred>> {
        with_proxy_within(test, splice_fds_max(), before, peers)
    }

    /// `with_proxy` with the proxy's readiness descriptors held within
    /// `splice_fds_max`.
    fn with_proxy_within(
        test: &str,
        splice_fds_max: usize,
        before: impl FnOnce(&mut Peer, &mut Peer) -> io::Result<()>,
        peers: impl FnOnce(Peer, Peer) -> io::Result<()> + Send + 'static,
    ) -> io::Result<Option<Transferred>> {
        on_ring(test, async {
            let (client, mut user) = pair().await?;
            let (backend, mut server) = pair().await?;
            before(&mut user, &mut server)?;
            let driving = std::thread::spawn(move || peers(user, server));
            let moved = proxy_within(client, backend, Duration::from_secs(10), |_| {}, splice_fds_max).await;
            driving
                .join()
                .map_err(|_| io::Error::other("the peers' thread panicked"))??;
            moved.map_err(io::Error::other)
        })
    }

    /// `len` bytes that are not all alike, so a lost, repeated or
    /// reordered chunk shows.
    fn bytes(len: usize, seed: u8) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8 ^ seed).collect()
    }

    fn read_exactly(from: &mut Peer, len: usize) -> io::Result<Vec<u8>> {
        let mut got = vec![0u8; len];
        from.read_exact(&mut got)?;
        Ok(got)
    }

    fn check(what: &str, got: &[u8], want: &[u8]) -> io::Result<()> {
        if got == want {
            Ok(())
        } else {
            Err(io::Error::other(format!(
                "{what}: {} bytes arrived changed",
                want.len()
            )))
        }
    }

    #[test]
    fn bulk_data_is_spliced_intact_both_ways_and_short_messages_still_copied() -> io::Result<()> {
        let test = "bulk_data_is_spliced_intact_both_ways_and_short_messages_still_copied";
        if let Some(moved) = bulk_and_short(test, splice_fds_max())? {
            crate::dataplane::copy::assert_bulk_and_short_moved(&moved);
        }
        Ok(())
    }

    /// With no descriptor to spare for waiting on readiness, every pipe
    /// taken goes back unused: bulk is copied, and nothing stalls.
    #[test]
    fn bulk_data_is_copied_intact_when_splicing_may_hold_no_more_descriptors() -> io::Result<()> {
        let test = "bulk_data_is_copied_intact_when_splicing_may_hold_no_more_descriptors";
        if let Some(moved) = bulk_and_short(test, 0)? {
            assert_eq!(moved.client_to_backend, 2 * 300 + (1 << 20));
            assert_eq!(moved.backend_to_client, 2 * (3 << 20) + 10);
            assert_eq!(moved.spliced, 0, "{moved:?}");
        }
        Ok(())
    }

    /// Two requests with bulk responses, a bulk upload, a short answer:
    /// each direction switches between short and bulk chunks and back.
    /// Every byte is checked where it arrives.
    fn bulk_and_short(test: &str, splice_fds_max: usize) -> io::Result<Option<Transferred>> {
        let (request, response, upload, tail) = (bytes(300, 1), bytes(3 << 20, 2), bytes(1 << 20, 3), bytes(10, 4));
        let (q, r, u, t) = (request.clone(), response.clone(), upload.clone(), tail.clone());
        with_proxy_within(
            test,
            splice_fds_max,
            |_, _| Ok(()),
            move |mut user, mut server| {
                let backend = std::thread::spawn(move || -> io::Result<()> {
                    for _ in 0..2 {
                        check("request", &read_exactly(&mut server, q.len())?, &q)?;
                        server.write_all(&r)?;
                    }
                    check("upload", &read_exactly(&mut server, u.len())?, &u)?;
                    server.write_all(&t)?;
                    let mut rest = Vec::new();
                    server.read_to_end(&mut rest)?;
                    check("after the upload", &rest, b"")
                });
                for _ in 0..2 {
                    user.write_all(&request)?;
                    check("response", &read_exactly(&mut user, response.len())?, &response)?;
                }
                user.write_all(&upload)?;
                check("tail", &read_exactly(&mut user, tail.len())?, &tail)?;
                user.shutdown(Shutdown::Write)?;
                backend
                    .join()
                    .map_err(|_| io::Error::other("the backend thread panicked"))?
            },
        )
    }

    /// Two full buffers and the end, all queued before the proxy reads:
    /// the first is copied, the second spliced, and the splice after it
    /// finds the end, which a read must confirm and pass on.
    #[test]
    fn an_end_met_while_splicing_is_passed_on_after_every_byte() -> io::Result<()> {
        let upload = bytes(2 * BUF_SIZE, 9);
        let want = upload.clone();
        let moved = with_proxy(
            "an_end_met_while_splicing_is_passed_on_after_every_byte",
            |user, _| {
                user.write_all(&upload)?;
                user.shutdown(Shutdown::Write)
            },
            move |user, mut server| {
                let mut got = Vec::new();
                server.read_to_end(&mut got)?;
                check("upload", &got, &want)?;
                drop((user, server));
                Ok(())
            },
        )?;
        let Some(moved) = moved else { return Ok(()) };
        assert_eq!(moved.client_to_backend, 2 * BUF_SIZE as u64);
        assert_eq!(moved.spliced, BUF_SIZE as u64, "{moved:?}");
        Ok(())
    }

    /// splice(2) stops at TCP urgent data, where a read goes on: a bulk
    /// direction that meets it must read past it, not stall or end there.
    #[test]
    fn urgent_data_in_a_bulk_stream_neither_stalls_nor_truncates_it() -> io::Result<()> {
        for close_after in [true, false] {
            let (before, after) = (bytes(BUF_SIZE, 7), bytes(20_000, 8));
            let want = [&before[..], &after[..]].concat();
            let moved = with_proxy(
                "urgent_data_in_a_bulk_stream_neither_stalls_nor_truncates_it",
                // A full first buffer (so the next chunk is spliced), the
                // urgent byte, then more, all queued before the proxy reads;
                // and the end of the stream too when close_after.
                |user, _| {
                    user.write_all(&before)?;
                    socket2::SockRef::from(&*user).send_out_of_band(b"!")?;
                    user.write_all(&after)?;
                    if close_after {
                        user.shutdown(Shutdown::Write)?;
                    }
                    Ok(())
                },
                move |user, mut server| {
                    // Without SO_OOBINLINE the urgent byte is out of band:
                    // the stream carries everything else.
                    check("stream", &read_exactly(&mut server, want.len())?, &want)?;
                    drop(user);
                    let mut rest = Vec::new();
                    server.read_to_end(&mut rest)?;
                    check("after the end", &rest, b"")
                },
            )?;
            let Some(moved) = moved else { return Ok(()) };
            assert_eq!(
                moved.client_to_backend,
                (BUF_SIZE + 20_000) as u64,
                "close_after {close_after}"
            );
        }
        Ok(())
    }

    /// A bulk stream whose splices keep succeeding must still let the
    /// ring's other connections through: here a ping-pong on a second
    /// connection of the same ring finishes while the stream still flows.
    #[test]
    fn a_bulk_stream_does_not_starve_the_rings_other_connections() -> io::Result<()> {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        // The stream's bound, far more than the ping-pong needs.
        const BULK_MAX: u64 = 8 << 30;
        let pinged = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        on_ring("a_bulk_stream_does_not_starve_the_rings_other_connections", async {
            let (bulk_client, mut bulk_user) = pair().await?;
            let (bulk_backend, mut bulk_server) = pair().await?;
            let (ping_client, mut ping_user) = pair().await?;
            let (ping_backend, mut ping_server) = pair().await?;
            let (stop, count) = (Arc::clone(&pinged), Arc::clone(&sent));
            let sender = std::thread::spawn(move || -> io::Result<()> {
                let chunk = vec![7u8; 256 * 1024];
                while !stop.load(Ordering::Relaxed) && count.load(Ordering::Relaxed) < BULK_MAX {
                    bulk_user.write_all(&chunk)?;
                    count.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                }
                bulk_user.shutdown(Shutdown::Write)
            });
            let sink = std::thread::spawn(move || std::io::copy(&mut bulk_server, &mut std::io::sink()));
            let echo = std::thread::spawn(move || -> io::Result<()> {
                let mut word = [0u8; 4];
                while server_read(&mut ping_server, &mut word)? {
                    ping_server.write_all(&word)?;
                }
                Ok(())
            });
            let done = Arc::clone(&pinged);
            let pinger = std::thread::spawn(move || -> io::Result<()> {
                // Once the stream is under way.
                while sent_so_far(&sent) < 64 << 20 {
                    std::thread::sleep(Duration::from_millis(1));
                }
                for i in 0..50u32 {
                    ping_user.write_all(&i.to_be_bytes())?;
                    let mut word = [0u8; 4];
                    ping_user.read_exact(&mut word)?;
                    assert_eq!(u32::from_be_bytes(word), i);
                }
                let streaming = sent_so_far(&sent) < BULK_MAX;
                done.store(true, Ordering::Relaxed);
                assert!(streaming, "the ping-pong finished only after the stream's bound");
                ping_user.shutdown(Shutdown::Write)
            });
            let (bulk, ping) = monoio::join!(
                proxy(bulk_client, bulk_backend, Duration::from_secs(10), |_| {}),
                proxy(ping_client, ping_backend, Duration::from_secs(10), |_| {})
            );
            bulk.map_err(io::Error::other)?;
            ping.map_err(io::Error::other)?;
            let joined = |t: std::thread::JoinHandle<io::Result<()>>| {
                t.join().map_err(|_| io::Error::other("a peer thread panicked"))?
            };
            joined(pinger)?;
            joined(sender)?;
            joined(echo)?;
            sink.join().map_err(|_| io::Error::other("the sink panicked"))??;
            Ok(())
        })
        // None: skipped, said so loudly.
        .map(|_| ())
    }

    /// Reads exactly `word.len()` bytes; false at a clean end before any.
    fn server_read(from: &mut Peer, word: &mut [u8]) -> io::Result<bool> {
        match from.read_exact(word) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn sent_so_far(sent: &std::sync::atomic::AtomicU64) -> u64 {
        sent.load(std::sync::atomic::Ordering::Relaxed)
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
        on_ring("a_connection_nobody_speaks_on_is_cut_after_the_idle_timeout", async {
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
        // None: skipped, said so loudly.
        .map(|_| ())
    }
}
