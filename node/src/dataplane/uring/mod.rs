//! The data plane on io_uring (`[node] io = "io_uring"`), for TCP
//! listeners: one monoio runtime per worker, each on a ring of its own
//! created with IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN, so
//! a worker enters the kernel once per round for all its sockets' I/O and
//! completions run only when it asks for them (docs/benchmarks.md,
//! "io_uring"). Balancing, retries and stats are the epoll path's own
//! (`tcp::TcpProxy::handle_on`); only accepting, connecting and copying
//! are written here.
//!
//! Each ring thread enters the tokio runtime of the worker with the same
//! index: the few tokio-timed paths shared with the epoll path (a backend
//! queue's wait, an accept at `max_connections`, ejection timers) then run
//! unchanged, at the cost of a cross-thread wakeup when they fire.

mod copy;
mod serve;

use std::future::Future;
use std::io;

use monoio::time::TimeDriver;
use monoio::{IoUringDriver, RuntimeBuilder};
use tokio::runtime::Handle;
use tokio::sync::mpsc;

pub use serve::{Uring, serve_tcp};

/// Work handed to a ring thread: it builds its future there, since
/// monoio's sockets are bound to their thread.
type Job = Box<dyn FnOnce() + Send>;

/// The running ring threads; they stop when this is dropped, with the
/// tasks they run.
pub struct UringWorkers {
    jobs: Vec<mpsc::UnboundedSender<Job>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Drop for UringWorkers {
    /// Returns once every ring thread has dropped its tasks.
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
                    runtime.block_on(async move {
                        while let Some(job) = rx.recv().await {
                            job();
                        }
                    });
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
            let _ = jobs.send(Box::new(move || {
                monoio::spawn(build());
            }));
        }
    }
}

/// A ring with deferred task work (Linux 6.1+), else a plain one.
pub(super) fn runtime() -> io::Result<monoio::Runtime<TimeDriver<IoUringDriver>>> {
    let mut ring = io_uring::IoUring::builder();
    ring.setup_single_issuer().setup_defer_taskrun();
    match RuntimeBuilder::<IoUringDriver>::new()
        .uring_builder(ring)
        .enable_timer()
        .build()
    {
        Ok(r) => Ok(r),
        Err(e) => {
            tracing::info!(error = %e, "io_uring without deferred task work");
            RuntimeBuilder::<IoUringDriver>::new().enable_timer().build()
        }
    }
}
