//! Kept-alive backend connections of Shoal's own HTTP/1.1 path, one set
//! per data-plane worker: a connection is registered with its worker's
//! runtime, and is only ever taken by a request on that worker, so the
//! lock around each set is never contended. The request's own task uses
//! the connection: no connection task, no channel, no extra wakeup.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;

use super::super::workers::PerWorker;

/// Most idle connections kept per backend and worker; more are closed.
const MAX_IDLE_PER_BACKEND: usize = 1024;

struct Idle<S> {
    stream: S,
    expires: Instant,
}

/// One thread's idle backend connections (of any runtime's stream type
/// `S`), by backend id: a worker's on epoll, a ring thread's on io_uring.
pub(crate) struct IdleSet<S>(HashMap<u64, Vec<Idle<S>>, BuildHasherDefault<IdHasher>>);

impl<S> Default for IdleSet<S> {
    fn default() -> Self {
        Self(HashMap::default())
    }
}

impl<S> IdleSet<S> {
    /// The most recently used connection to `backend` that is unexpired
    /// at `now` and `quiet`; the others met on the way are closed.
    pub(crate) fn take(&mut self, backend: u64, now: Instant, quiet: impl Fn(&S) -> bool) -> Option<S> {
        let list = self.0.get_mut(&backend)?;
        while let Some(conn) = list.pop() {
            if now < conn.expires && quiet(&conn.stream) {
                return Some(conn.stream);
            }
        }
        None
    }

    /// Keeps `stream`, idle from `now`, for `keepalive`. The expired ones
    /// are closed here, and the oldest when the backend has too many.
    pub(crate) fn put(&mut self, backend: u64, stream: S, now: Instant, keepalive: Duration) {
        let list = self.0.entry(backend).or_default();
        let expired = list.iter().take_while(|c| c.expires <= now).count();
        list.drain(..expired);
        if list.len() >= MAX_IDLE_PER_BACKEND {
            list.remove(0);
        }
        list.push(Idle {
            stream,
            expires: now + keepalive,
        });
    }

    /// Closes the connections expired at `now`; how many.
    pub(crate) fn sweep(&mut self, now: Instant) -> usize {
        let mut closed = 0;
        for list in self.0.values_mut() {
            let before = list.len();
            list.retain(|c| now < c.expires);
            closed += before - list.len();
        }
        self.0.retain(|_, list| !list.is_empty());
        closed
    }

    #[cfg(test)]
    pub(crate) fn count(&self, backend: u64) -> usize {
        self.0.get(&backend).map_or(0, Vec::len)
    }
}

/// Hashes a backend id with one multiplication. Ids are the node's own
/// counter, not input, so nothing can aim collisions at the set, and
/// SipHash (the default) cost as much as the rest of taking and putting a
/// connection.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        // Only u64 keys are hashed here; bytes are folded in all the same.
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, id: u64) {
        // Fibonacci hashing: the table takes its tag from the top bits,
        // which the multiplication fills from every bit of the id.
        self.0 = (self.0 ^ id).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

pub struct BackendConns {
    /// Connections idle longer than this are closed rather than reused.
    keepalive: Duration,
    /// Each worker's lock is on its own cache line: taking it does not
    /// take the line from the other cores.
    per_worker: PerWorker<Mutex<IdleSet<TcpStream>>>,
}

impl BackendConns {
    pub fn new(keepalive: Duration, workers: usize) -> Self {
        Self {
            keepalive,
            per_worker: PerWorker::with_count(workers, Mutex::default),
        }
    }

    fn mine(&self) -> std::sync::MutexGuard<'_, IdleSet<TcpStream>> {
        // A poisoned set only lost the connection being moved.
        self.per_worker
            .mine()
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The most recently used idle connection to `backend` that is still
    /// open and quiet at `now`; stale ones met on the way are closed.
    pub fn take(&self, backend: u64, now: Instant) -> Option<TcpStream> {
        self.mine().take(backend, now, quiet)
    }

    /// Keeps `stream`, idle from `now`, for the next request to `backend`.
    /// Connections past the keep-alive time are closed here, oldest first.
    pub fn put(&self, backend: u64, stream: TcpStream, now: Instant) {
        self.mine().put(backend, stream, now, self.keepalive);
    }

    /// Closes every connection idle past the keep-alive time, of every
    /// worker (from any thread: a socket may be closed anywhere; each
    /// worker's lock is taken briefly, once).
    pub fn sweep(&self) -> usize {
        let now = Instant::now();
        self.per_worker
            .iter()
            .map(|slot| {
                slot.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .sweep(now)
            })
            .sum()
    }

    #[cfg(test)]
    pub fn idle_count(&self, backend: u64) -> usize {
        self.mine().count(backend)
    }
}

/// An idle backend connection has nothing to say: if it is readable, the
/// backend closed it (or sent bytes no request asked for), and it must
/// not carry a request. Readiness is what the runtime already knows: no
/// system call.
fn quiet(stream: &TcpStream) -> bool {
    let mut cx = Context::from_waker(Waker::noop());
    matches!(stream.poll_read_ready(&mut cx), Poll::Pending)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    async fn pair(listener: &tokio::net::TcpListener) -> std::io::Result<(TcpStream, TcpStream)> {
        let client = TcpStream::connect(listener.local_addr()?).await?;
        let (server, _) = listener.accept().await?;
        Ok((client, server))
    }

    /// Polls until the runtime has seen `stream` become readable.
    async fn until_readable(stream: &TcpStream) -> std::io::Result<()> {
        tokio::time::timeout(Duration::from_secs(5), stream.readable())
            .await
            .map_err(std::io::Error::other)?
    }

    #[tokio::test]
    async fn a_connection_is_reused_until_the_backend_closes_it() -> std::io::Result<()> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let conns = BackendConns::new(Duration::from_secs(60), 1);
        let (client, server) = pair(&listener).await?;
        conns.put(7, client, Instant::now());
        let Some(client) = conns.take(7, Instant::now()) else {
            panic!("a quiet connection is reused");
        };
        assert!(conns.take(7, Instant::now()).is_none(), "taken once");

        conns.put(7, client, Instant::now());
        drop(server);
        // What take() sees is the runtime's readiness: let the FIN arrive.
        let probe = conns.take(7, Instant::now());
        let Some(probe) = probe else {
            panic!("still quiet before the FIN was polled");
        };
        until_readable(&probe).await?;
        conns.put(7, probe, Instant::now());
        assert!(
            conns.take(7, Instant::now()).is_none(),
            "a closed connection is not reused"
        );
        assert_eq!(conns.idle_count(7), 0);
        Ok(())
    }

    #[tokio::test]
    async fn unasked_bytes_make_a_connection_unusable() -> std::io::Result<()> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let conns = BackendConns::new(Duration::from_secs(60), 1);
        let (client, mut server) = pair(&listener).await?;
        server.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await?;
        until_readable(&client).await?;
        conns.put(1, client, Instant::now());
        assert!(conns.take(1, Instant::now()).is_none());
        Ok(())
    }

    #[tokio::test(start_paused = true)]
    async fn connections_idle_past_the_keepalive_are_closed() -> std::io::Result<()> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let conns = BackendConns::new(Duration::from_secs(10), 1);
        let (a, _sa) = pair(&listener).await?;
        let (b, _sb) = pair(&listener).await?;
        conns.put(1, a, Instant::now());
        tokio::time::advance(Duration::from_secs(6)).await;
        conns.put(1, b, Instant::now());
        tokio::time::advance(Duration::from_secs(6)).await;
        assert_eq!(conns.sweep(), 1, "only the first is past 10 s");
        assert_eq!(conns.idle_count(1), 1);
        tokio::time::advance(Duration::from_secs(6)).await;
        assert!(
            conns.take(1, Instant::now()).is_none(),
            "expired connections are not handed out"
        );
        Ok(())
    }
}
