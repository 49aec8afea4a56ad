//! Copies between the two sides of an upgraded HTTP connection (a
//! WebSocket, say): arbitrary streams, TLS or not, behind hyper's
//! `Upgraded`, so neither splice nor a peek is at hand.
//!
//! Such a connection is mostly idle and lives long, so it holds no buffer
//! of its own: each read goes into a scratch buffer of the thread's,
//! borrowed only within one poll, and what was read is written from it
//! at once. Only bytes the other side will not take yet are copied into
//! a buffer of the connection's, freed once they are written.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use super::copy::{BUF_SIZE, CopyError, Moved, SCRATCH, Transferred, with_idle_watchdog};

/// Copies between `a` and `b` until both directions end (each end is
/// passed on as a shutdown of the other side's writing), either fails, or
/// nothing moves for `idle`.
pub async fn bridge<A, B>(mut a: A, mut b: B, idle: Duration) -> Result<Transferred, CopyError>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let start = Instant::now();
    // Milliseconds since `start` of the last byte moved, in either direction.
    let last_activity = AtomicU64::new(0);
    let active = || {
        // fetch_max: time must not go back.
        last_activity.fetch_max(start.elapsed().as_millis() as u64, Ordering::Relaxed);
    };
    let mut up = Flow::default();
    let mut down = Flow::default();
    let mut up_first = false;
    let both = std::future::poll_fn(|cx| {
        // Both directions are polled on every wakeup: one task, no lock
        // between two halves of a stream. Which goes first alternates, so
        // that one in bulk cannot take every turn from the other.
        up_first = !up_first;
        let (up_done, down_done) = if up_first {
            let up_done = up.poll_copy(cx, &mut a, &mut b, active)?.is_ready();
            (up_done, down.poll_copy(cx, &mut b, &mut a, active)?.is_ready())
        } else {
            let down_done = down.poll_copy(cx, &mut b, &mut a, active)?.is_ready();
            (up.poll_copy(cx, &mut a, &mut b, active)?.is_ready(), down_done)
        };
        if up_done && down_done {
            Poll::Ready(Ok((up.moved(), down.moved())))
        } else {
            Poll::Pending
        }
    });
    with_idle_watchdog(both, start, &last_activity, idle).await
}

/// At most this much is read by one direction in one poll: then it yields
/// (and wakes itself), so the other direction and the worker's other
/// tasks get their turn even from streams that are always ready.
const POLL_BUDGET: usize = 16 * BUF_SIZE;

/// One direction of a bridge.
#[derive(Default)]
struct Flow {
    /// Read but not yet taken by the writer (it pushed back); empty, with
    /// no capacity, otherwise.
    owed: Vec<u8>,
    /// How much of `owed` is written.
    written: usize,
    /// Written since the last flush: a TLS writer may hold bytes until
    /// flushed, so they are flushed before waiting for more to read.
    unflushed: bool,
    total: u64,
    state: FlowState,
}

#[derive(Default, PartialEq, Eq)]
enum FlowState {
    #[default]
    Copying,
    /// The source ended: the writer is being shut down.
    Closing,
    Done,
}

/// What one read into the scratch buffer came to.
enum Step {
    /// Nothing to read yet.
    Waiting,
    /// The source ended.
    End,
    /// `read` bytes read; what the writer did not take is in `owed`.
    Read { read: usize },
}

impl Flow {
    fn moved(&self) -> Moved {
        Moved {
            total: self.total,
            spliced: 0,
        }
    }

    /// Copies from `from` to `to` until `from` ends and `to` is shut down
    /// (then Ready(Ok) on every later call too), or either fails.
    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        from: &mut R,
        to: &mut W,
        active: impl Fn(),
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let mut read_this_poll = 0;
        loop {
            match self.state {
                FlowState::Done => return Poll::Ready(Ok(())),
                FlowState::Closing => {
                    // The other direction may still carry on: a failed
                    // shutdown (the peer is gone already) ends only this one.
                    let _ = ready!(Pin::new(&mut *to).poll_shutdown(cx));
                    self.state = FlowState::Done;
                    return Poll::Ready(Ok(()));
                }
                FlowState::Copying => {}
            }
            if self.written < self.owed.len() {
                let left = self.owed.len() - self.written;
                let n = ready!(Pin::new(&mut *to).poll_write(cx, &self.owed[self.written..]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                // min: a writer claiming more than it was given must not
                // desynchronise `owed`.
                self.written += n.min(left);
                self.unflushed = true;
                active();
                if self.written >= self.owed.len() {
                    // Freed, not kept: the connection may now idle for hours.
                    self.owed = Vec::new();
                    self.written = 0;
                }
                continue;
            }
            match self.read_and_write(cx, from, to)? {
                Step::Waiting => {
                    if self.unflushed {
                        ready!(Pin::new(&mut *to).poll_flush(cx))?;
                        self.unflushed = false;
                    }
                    return Poll::Pending;
                }
                Step::End => self.state = FlowState::Closing,
                // What the writer did not take is written from `owed` at
                // the top of the loop: a partial write registered no
                // waker, so only a write that returns Pending may end
                // this poll.
                Step::Read { read } => {
                    self.total += read as u64;
                    self.unflushed = true;
                    active();
                    read_this_poll += read;
                    if read_this_poll >= POLL_BUDGET {
                        cx.waker().wake_by_ref();
                        return Poll::Pending;
                    }
                }
            }
        }
    }

    /// Reads what is there into the thread's scratch buffer and writes it
    /// on at once; keeps in `owed` what the writer did not take.
    fn read_and_write<R, W>(&mut self, cx: &mut Context<'_>, from: &mut R, to: &mut W) -> io::Result<Step>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        SCRATCH.with_borrow_mut(|scratch| {
            let read = {
                let mut buf = ReadBuf::new(scratch);
                match Pin::new(&mut *from).poll_read(cx, &mut buf) {
                    Poll::Pending => return Ok(Step::Waiting),
                    Poll::Ready(r) => r?,
                }
                buf.filled().len()
            };
            if read == 0 {
                return Ok(Step::End);
            }
            let written = match Pin::new(&mut *to).poll_write(cx, &scratch[..read]) {
                Poll::Pending => 0,
                Poll::Ready(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
                Poll::Ready(r) => r?,
            };
            if written < read {
                self.owed.extend_from_slice(&scratch[written..read]);
            }
            Ok(Step::Read { read })
        })
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, duplex};

    use super::*;

    /// `len` bytes that are not all alike, so a lost, repeated or
    /// reordered chunk shows.
    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8 ^ seed).collect()
    }

    /// client <-> [bridge] <-> backend over in-memory pipes that hold
    /// `client` and `backend` bytes: a read from the larger brings more
    /// than the smaller takes, so writes to the smaller are partial.
    fn bridged(
        client: usize,
        backend: usize,
        idle: Duration,
    ) -> (
        DuplexStream,
        DuplexStream,
        tokio::task::JoinHandle<Result<Transferred, CopyError>>,
    ) {
        let (client, client_conn) = duplex(client);
        let (backend_conn, backend) = duplex(backend);
        let task = tokio::spawn(bridge(client_conn, backend_conn, idle));
        (client, backend, task)
    }

    /// Sends a megabyte each way through a bridge between pipes of these
    /// sizes, each side ending its sending when done, and checks what
    /// arrived and what the bridge counted.
    async fn exchange(client_pipe: usize, backend_pipe: usize) -> io::Result<()> {
        let (mut client, mut backend, task) = bridged(client_pipe, backend_pipe, Duration::from_secs(5));
        let (up, down) = (pattern(1 << 20, 3), pattern((1 << 20) + 17, 5));
        let (mut client_read, mut client_write) = tokio::io::split(&mut client);
        let (mut backend_read, mut backend_write) = tokio::io::split(&mut backend);
        let ((), (), got_up, got_down) = tokio::try_join!(
            async {
                client_write.write_all(&up).await?;
                client_write.shutdown().await
            },
            async {
                backend_write.write_all(&down).await?;
                backend_write.shutdown().await
            },
            async {
                let mut got = Vec::new();
                backend_read.read_to_end(&mut got).await.map(|_| got)
            },
            async {
                let mut got = Vec::new();
                client_read.read_to_end(&mut got).await.map(|_| got)
            },
        )?;
        assert!(
            got_up == up,
            "client to backend: {} bytes of {}",
            got_up.len(),
            up.len()
        );
        assert!(
            got_down == down,
            "backend to client: {} bytes of {}",
            got_down.len(),
            down.len()
        );
        let moved = task.await.map_err(io::Error::other)?.map_err(io::Error::other)?;
        assert_eq!(
            moved,
            Transferred {
                client_to_backend: up.len() as u64,
                backend_to_client: down.len() as u64,
                spliced: 0,
            }
        );
        Ok(())
    }

    #[tokio::test]
    async fn a_writer_that_takes_less_than_was_read_gets_the_rest_later() -> io::Result<()> {
        // Upwards, then downwards, nearly every write is partial, so most
        // bytes wait in `owed`.
        exchange(64 << 10, 100).await?;
        exchange(100, 64 << 10).await
    }

    #[tokio::test]
    async fn one_side_ending_leaves_the_other_direction_open() -> io::Result<()> {
        let (mut client, mut backend, task) = bridged(4096, 4096, Duration::from_secs(5));
        client.write_all(b"bye").await?;
        client.shutdown().await?;
        let mut got = Vec::new();
        backend.read_to_end(&mut got).await?; // ends: the end was passed on
        assert_eq!(got, b"bye");
        backend.write_all(b"still here").await?;
        let mut got = [0u8; 10];
        client.read_exact(&mut got).await?;
        assert_eq!(&got, b"still here");
        assert!(!task.is_finished(), "the bridge ended with one direction still open");
        backend.shutdown().await?;
        let moved = task.await.map_err(io::Error::other)?.map_err(io::Error::other)?;
        assert_eq!((moved.client_to_backend, moved.backend_to_client), (3, 10));
        Ok(())
    }

    #[tokio::test]
    async fn one_way_traffic_into_a_writer_that_takes_part_of_each_read_flows() -> io::Result<()> {
        // Nothing comes the other way to wake the bridge: a partial write
        // must lead to a wait on the writer, not to a wait on nothing.
        let (mut client, mut backend, task) = bridged(64 << 10, 100, Duration::from_secs(30));
        let up = pattern(1 << 20, 7);
        let ((), got) = tokio::time::timeout(Duration::from_secs(10), async {
            tokio::try_join!(
                async {
                    client.write_all(&up).await?;
                    client.shutdown().await
                },
                async {
                    let mut got = vec![0u8; up.len()];
                    backend.read_exact(&mut got).await.map(|_| got)
                },
            )
        })
        .await
        .map_err(|_| io::Error::other("the one-way transfer stalled"))??;
        assert!(got == up, "{} bytes arrived, not in order or not whole", got.len());
        task.abort();
        Ok(())
    }

    /// One side of a bridge that always has bytes to send and takes every
    /// byte at once, as no tokio socket does (tokio's budget makes them
    /// yield now and then): what it is sent goes to `got`. Its reads fail
    /// once `stop` is set, which ends the bridge.
    struct Firehose {
        got: std::sync::mpsc::Sender<Vec<u8>>,
        stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    }

    impl AsyncRead for Firehose {
        fn poll_read(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
            if self.stop.load(Ordering::Relaxed) {
                return Poll::Ready(Err(io::Error::other("stopped")));
            }
            buf.put_slice(&[7; 1024][..buf.remaining().min(1024)]);
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncWrite for Firehose {
        fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
            let _ = self.got.send(buf.to_vec());
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// The other side: it sends `reply` once, then nothing; takes and
    /// drops every byte.
    struct Replier {
        reply: Option<&'static [u8]>,
    }

    impl AsyncRead for Replier {
        fn poll_read(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
            match self.reply.take() {
                Some(reply) => {
                    buf.put_slice(reply);
                    Poll::Ready(Ok(()))
                }
                // Never ready again: the test ends before it would matter.
                None => Poll::Pending,
            }
        }
    }

    impl AsyncWrite for Replier {
        fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[test]
    fn a_direction_in_endless_bulk_leaves_the_other_its_turn() -> io::Result<()> {
        // The bridge runs on a thread of its own: if one direction never
        // yielded, this thread still sees the deadline pass.
        let (got_tx, got) = std::sync::mpsc::channel();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let client = Firehose {
            got: got_tx,
            stop: std::sync::Arc::clone(&stop),
        };
        let bridging = std::thread::spawn(move || {
            let backend = Replier { reply: Some(b"pong") };
            runtime.block_on(bridge(client, backend, Duration::from_secs(30)))
        });
        let reply = got
            .recv_timeout(Duration::from_secs(10))
            .map_err(|_| io::Error::other("the reply never got a turn beside the endless upload"))?;
        assert_eq!(reply, b"pong");
        stop.store(true, Ordering::Relaxed);
        let ended = bridging.join().map_err(|_| io::Error::other("the bridge panicked"))?;
        assert!(
            matches!(&ended, Err(CopyError::Io(e)) if e.to_string() == "stopped"),
            "{ended:?}"
        );
        Ok(())
    }

    #[tokio::test]
    async fn a_writer_that_buffers_is_flushed_before_the_bridge_waits() -> io::Result<()> {
        // As a TLS stream does, BufWriter holds written bytes until flushed.
        let (mut client, client_conn) = duplex(4096);
        let (backend_conn, mut backend) = duplex(4096);
        let backend_conn = tokio::io::BufWriter::new(backend_conn);
        let task = tokio::spawn(bridge(client_conn, backend_conn, Duration::from_secs(5)));
        client.write_all(b"hello").await?;
        let mut got = [0u8; 5];
        tokio::time::timeout(Duration::from_secs(5), backend.read_exact(&mut got))
            .await
            .map_err(|_| io::Error::other("the message stayed in the writer's buffer"))??;
        assert_eq!(&got, b"hello");
        task.abort();
        Ok(())
    }

    #[tokio::test(start_paused = true)]
    async fn a_bridge_with_nothing_moving_ends_after_its_idle_time() -> io::Result<()> {
        let (mut client, mut backend, task) = bridged(4096, 4096, Duration::from_secs(30));
        client.write_all(b"x").await?;
        let mut got = [0u8; 1];
        backend.read_exact(&mut got).await?;
        let moved_at = Instant::now();
        let ended = task.await.map_err(io::Error::other)?;
        assert!(matches!(ended, Err(CopyError::Idle(_))), "{ended:?}");
        // Paused time advances only to the timer that ends it.
        let waited = moved_at.elapsed();
        assert!(
            waited >= Duration::from_secs(29) && waited <= Duration::from_secs(31),
            "{waited:?}"
        );
        Ok(())
    }

    #[tokio::test]
    async fn a_failing_side_ends_the_bridge_with_its_error() -> io::Result<()> {
        let (client, backend, task) = bridged(64, 64, Duration::from_secs(5));
        drop(backend);
        let mut client = client;
        // The backend pipe is gone: writing to it fails (BrokenPipe).
        client.write_all(b"to nobody").await?;
        let ended = task.await.map_err(io::Error::other)?;
        assert!(
            matches!(&ended, Err(CopyError::Io(e)) if e.kind() == io::ErrorKind::BrokenPipe),
            "{ended:?}"
        );
        Ok(())
    }
}
