//! The data plane on io_uring (`[node] io = "io_uring"`), for TCP and
//! plain-text HTTP listeners: one monoio runtime per worker, each on a
//! ring of its own created with IORING_SETUP_SINGLE_ISSUER |
//! IORING_SETUP_DEFER_TASKRUN (Linux 6.1+: without deferred task work
//! rings do no better than epoll here, so older kernels stay on epoll), so
//! a worker enters the kernel once per round for all its sockets' I/O and
//! completions run only when it asks for them (docs/benchmarks.md,
//! "io_uring"). Balancing, retries and stats are the epoll path's own
//! (`tcp::TcpProxy::handle_on`, `h1::serve`); only the socket operations
//! are written here (TCP: accepting, connecting, copying; HTTP: reading,
//! writing and keeping backend connections, after the worker accepted the
//! connection and read its first bytes).
//!
//! Each ring thread enters the tokio runtime of the worker with the same
//! index: the tokio-timed paths shared with the epoll path (a backend
//! queue's wait, an accept at `max_connections`, ejection timers, the HTTP
//! path's timeouts) then run unchanged, at the cost of a cross-thread
//! wakeup when one fires.

mod copy;
mod fd;
mod http;
mod serve;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::panic::AssertUnwindSafe;
use std::task::{Poll, Waker};
use std::time::Duration;

use monoio::time::TimeDriver;
use monoio::{IoUringDriver, RuntimeBuilder};
use tokio::runtime::Handle;
use tokio::sync::mpsc;

pub use http::{Accepted, serve_http};

pub use serve::{Uring, serve_tcp};

/// Work handed to a ring thread: it builds its future there, since
/// monoio's sockets are bound to their thread.
type Job = Box<dyn FnOnce() + Send>;

thread_local! {
    /// This ring thread's tasks, so that a stopping ring can end them:
    /// monoio drops only the tasks that are runnable with its runtime.
    static TASKS: RingTasks = RingTasks::default();
}

/// The tasks of one ring thread, each with the waker that ends it.
#[derive(Default)]
struct RingTasks {
    /// Set when the ring stops: every task ends at its next poll.
    closing: Cell<bool>,
    next_id: Cell<u64>,
    /// The waker of each running task, stored at its first poll (a monoio
    /// task keeps one waker).
    running: RefCell<HashMap<u64, Option<Waker>>>,
}

/// How long a stopping ring thread waits for its tasks to end; they end
/// at their next poll, which the stop itself brings.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// The running ring threads; they stop when this is dropped, with the
/// tasks they run.
pub struct UringWorkers {
    jobs: Vec<mpsc::UnboundedSender<Job>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Drop for UringWorkers {
    /// Returns once every ring thread has ended its tasks (or waited
    /// [`CLOSE_WAIT`] for them).
    fn drop(&mut self) {
        self.jobs.clear();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl UringWorkers {
    /// One ring thread per runtime in `tokio` (the epoll workers, whose
    /// index each shares). Fails if the kernel refuses io_uring (too old,
    /// or a seccomp profile), with no thread left running.
    pub fn start(tokio: &[Handle]) -> io::Result<Self> {
        let mut started = Self {
            jobs: Vec::with_capacity(tokio.len()),
            threads: Vec::with_capacity(tokio.len()),
        };
        for (i, handle) in tokio.iter().enumerate() {
            let (tx, mut rx) = mpsc::unbounded_channel::<Job>();
            let (ready_tx, ready_rx) = std::sync::mpsc::channel();
            let handle = handle.clone();
            let thread = std::thread::Builder::new()
                .name(format!("shoal-uring-{i}"))
                .spawn(move || {
                    let _tokio = handle.enter();
                    super::workers::set_current(i);
                    let mut runtime = match runtime() {
                        Ok(r) => r,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = ready_tx.send(Ok(()));
                    let serve = async move {
                        spawn(http::sweep_idle());
                        while let Some(job) = rx.recv().await {
                            job();
                        }
                        close().await;
                    };
                    // Tasks contain their own panics; one here is the
                    // ring's. Its worker's sockets would keep taking a
                    // share of new connections that nobody accepts: exit,
                    // so that a supervisor restarts the node and a peer
                    // takes its addresses meanwhile.
                    if std::panic::catch_unwind(AssertUnwindSafe(|| runtime.block_on(serve))).is_err() {
                        tracing::error!(ring = i, "an io_uring ring thread panicked: the node exits");
                        std::process::exit(70);
                    }
                })?;
            started.threads.push(thread);
            // On an error, dropping `started` stops the threads started.
            ready_rx
                .recv()
                .map_err(|_| io::Error::other("the ring thread ended before starting"))??;
            started.jobs.push(tx);
        }
        Ok(started)
    }

    pub fn count(&self) -> usize {
        self.jobs.len()
    }

    /// What starts tasks on ring thread `i` (of [`count`](Self::count)).
    pub fn ring(&self, i: usize) -> Option<Ring> {
        self.jobs.get(i).cloned().map(Ring)
    }

    /// Runs the future `make(i)()` builds on every ring thread `i`.
    pub fn spawn_each<M, F>(&self, mut make: impl FnMut(usize) -> M)
    where
        M: FnOnce() -> F + Send + 'static,
        F: Future<Output = ()> + 'static,
    {
        for (i, jobs) in self.jobs.iter().enumerate() {
            let build = make(i);
            // A send fails only when the thread is gone (the node is
            // stopping): the work is moot then.
            let _ = jobs.send(Box::new(move || spawn(build())));
        }
    }
}

/// Starts tasks on one ring thread, from any thread.
#[derive(Clone)]
pub struct Ring(mpsc::UnboundedSender<Job>);

impl Ring {
    /// Runs the future `make` builds there; false if the ring has stopped
    /// (the node is stopping), and `make` is dropped unrun.
    pub fn spawn<F: Future<Output = ()> + 'static>(&self, make: impl FnOnce() -> F + Send + 'static) -> bool {
        self.0.send(Box::new(move || spawn(make()))).is_ok()
    }
}

/// A ring with deferred task work; an error where the kernel refuses it
/// (before Linux 6.1, `kernel.io_uring_disabled`, seccomp).
pub(super) fn runtime() -> io::Result<monoio::Runtime<TimeDriver<IoUringDriver>>> {
    let mut ring = io_uring::IoUring::builder();
    ring.setup_single_issuer().setup_defer_taskrun();
    RuntimeBuilder::<IoUringDriver>::new()
        .uring_builder(ring)
        .enable_timer()
        .build()
}

/// Runs `task` on the calling ring thread until it ends or the ring stops.
/// A panic in it is logged and ends only this task (and its sockets), as
/// a panic in a tokio task does.
pub(super) fn spawn(task: impl Future<Output = ()> + 'static) {
    let id = TASKS.with(|t| {
        let id = t.next_id.get();
        t.next_id.set(id + 1);
        t.running.borrow_mut().insert(id, None);
        id
    });
    monoio::spawn(Contained {
        task,
        listed: Listed(id),
        waker_stored: false,
    });
}

/// Takes a task off its ring's list when it ends, however it ends.
struct Listed(u64);

impl Drop for Listed {
    fn drop(&mut self) {
        // Not at all while the thread's locals are being torn down.
        let _ = TASKS.try_with(|t| t.running.borrow_mut().remove(&self.0));
    }
}

pin_project_lite::pin_project! {
    /// A ring task: it ends at the ring's stop and contains its panics.
    /// A struct rather than an `async` block, which would hold the task
    /// twice (captured, then pinned): an idle connection's task is most of
    /// what the connection costs.
    struct Contained<F> {
        #[pin]
        task: F,
        listed: Listed,
        waker_stored: bool,
    }
}

impl<F: Future<Output = ()>> Future for Contained<F> {
    type Output = ();

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<()> {
        let this = self.project();
        // Each poll checks one flag for the ring's stop, rather than
        // polling a second future beside the task on every wakeup.
        if TASKS.with(|t| t.closing.get()) {
            return Poll::Ready(());
        }
        if !*this.waker_stored {
            let id = this.listed.0;
            TASKS.with(|t| t.running.borrow_mut().insert(id, Some(cx.waker().clone())));
            *this.waker_stored = true;
        }
        let task = this.task;
        match std::panic::catch_unwind(AssertUnwindSafe(|| task.poll(cx))) {
            Ok(poll) => poll,
            Err(_) => {
                tracing::error!("a task on an io_uring ring panicked: its connection is closed");
                Poll::Ready(())
            }
        }
    }
}

/// How many tasks this ring thread runs.
fn running() -> usize {
    TASKS.with(|t| t.running.borrow().len())
}

/// Ends this ring thread's tasks and waits (up to [`CLOSE_WAIT`]) until
/// they have dropped their sockets and timers.
async fn close() {
    http::close_idle();
    let wakers: Vec<Waker> = TASKS.with(|t| {
        t.closing.set(true);
        t.running.borrow().values().flatten().cloned().collect()
    });
    wakers.into_iter().for_each(Waker::wake);
    let deadline = monoio::time::Instant::now() + CLOSE_WAIT;
    while running() > 0 && monoio::time::Instant::now() < deadline {
        monoio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[cfg(test)]
pub(super) mod tests {
    use std::io::Read;
    use std::rc::Rc;

    use super::*;

    /// A ring runtime for a test, or `None` (after a loud SKIP line) where
    /// this kernel refuses io_uring with deferred task work.
    pub(crate) fn ring(test: &str) -> Option<monoio::Runtime<TimeDriver<IoUringDriver>>> {
        match runtime() {
            Ok(r) => Some(r),
            Err(e) => {
                eprintln!("\n!!!!! SKIPPED {test}: this kernel refuses io_uring ({e}) !!!!!\n");
                None
            }
        }
    }

    #[test]
    fn a_panic_ends_only_its_own_task() {
        let Some(mut rt) = ring("a_panic_ends_only_its_own_task") else {
            return;
        };
        rt.block_on(async {
            spawn(async { panic!("a task's own panic") });
            let ran = Rc::new(Cell::new(false));
            let after = Rc::clone(&ran);
            spawn(async move { after.set(true) });
            monoio::time::sleep(Duration::from_millis(20)).await;
            assert!(ran.get(), "the ring went on running tasks");
            assert_eq!(running(), 0, "both tasks are counted out");
        });
    }

    #[test]
    fn closing_a_ring_ends_its_tasks_and_their_sockets() -> io::Result<()> {
        let Some(mut rt) = ring("closing_a_ring_ends_its_tasks_and_their_sockets") else {
            return Ok(());
        };
        rt.block_on(async {
            let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
            let ring_end = monoio::net::TcpStream::connect_addr(listener.local_addr()?).await?;
            let (mut peer, _) = listener.accept()?;
            // A task that waits for a byte that never comes.
            spawn(async move {
                let mut held = ring_end;
                let _ = monoio::io::AsyncReadRent::read(&mut held, Vec::with_capacity(16)).await;
                std::future::pending::<()>().await;
            });
            monoio::time::sleep(Duration::from_millis(10)).await;
            assert_eq!(running(), 1);
            close().await;
            assert_eq!(running(), 0);
            // Its socket is closed: the peer reads the end of the stream.
            peer.set_read_timeout(Some(Duration::from_secs(5)))?;
            assert_eq!(peer.read(&mut [0u8; 16])?, 0);
            Ok(())
        })
    }
}
