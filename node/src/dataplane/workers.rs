//! Data-plane threads: one single-threaded tokio runtime per core. Every
//! listener has one SO_REUSEPORT socket per worker, so the kernel spreads
//! new connections over the workers, and a connection, the backend
//! connections it uses and their timers then stay on one thread: no task
//! migrates, no wakeup crosses threads, and each worker has its own backend
//! connection pools (no pool lock shared between cores).

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::sync::OnceLock;

use crossbeam_utils::CachePadded;
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

use super::uring::UringWorkers;

thread_local! {
    static CURRENT: Cell<usize> = const { Cell::new(0) };
}

/// How many per-worker shards state written on every request keeps: one
/// per core, the default worker count (workers beyond that, and threads
/// that are no worker, share shards, which stays correct, only slower;
/// with fewer workers some shards, 128 bytes each, go unused).
pub fn shard_count() -> usize {
    static COUNT: OnceLock<usize> = OnceLock::new();
    *COUNT.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()).min(64))
}

/// One `T` per data-plane worker, each on cache lines of its own: state
/// written on every request, kept apart so that one worker's writes do not
/// take the cache line from the other workers' cores.
#[derive(Debug)]
pub struct PerWorker<T> {
    slots: Box<[CachePadded<T>]>,
}

impl<T> PerWorker<T> {
    /// A slot per [`shard_count`].
    pub fn new(make: impl FnMut() -> T) -> Self {
        Self::with_count(shard_count(), make)
    }

    /// `count` slots (at least one); workers beyond them share slots.
    pub fn with_count(count: usize, mut make: impl FnMut() -> T) -> Self {
        Self {
            slots: (0..count.max(1)).map(|_| CachePadded::new(make())).collect(),
        }
    }

    /// The calling worker's slot.
    pub fn mine(&self) -> &T {
        self.of(current())
    }

    /// Worker `worker`'s slot.
    pub fn of(&self, worker: usize) -> &T {
        &self.slots[worker % self.slots.len()]
    }

    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.slots.iter().map(|s| &**s)
    }
}

/// Marks the calling thread as worker `index` (a data-plane thread of
/// another runtime serving the same shards).
pub(crate) fn set_current(index: usize) {
    CURRENT.with(|c| c.set(index));
}

/// The index of the worker running the caller; 0 on any other thread.
/// Picks the worker's own backend connection pool.
pub fn current() -> usize {
    CURRENT.with(Cell::get)
}

/// The running data-plane threads; they stop when this is dropped (after
/// the node has drained: their tasks end with them).
pub struct Workers {
    rings: Option<UringWorkers>,
    handles: Vec<Handle>,
    stop: CancellationToken,
}

impl Workers {
    /// Starts `n` worker threads, or none for `n == 0`: then everything
    /// runs on the caller's runtime (tests, tools).
    pub fn start(n: usize) -> io::Result<Self> {
        let stop = CancellationToken::new();
        let mut handles = Vec::with_capacity(n);
        for i in 0..n {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            handles.push(rt.handle().clone());
            let stop = stop.clone();
            std::thread::Builder::new()
                .name(format!("shoal-dp-{i}"))
                .spawn(move || {
                    set_current(i);
                    rt.block_on(stop.cancelled());
                })?;
        }
        Ok(Self {
            rings: None,
            handles,
            stop,
        })
    }

    /// Adds a ring thread per worker, for TCP and plain-text HTTP
    /// listeners (`[node] io = "io_uring"`, the default). Where the kernel
    /// refuses io_uring, says so and keeps serving on epoll.
    pub fn with_rings(mut self) -> Self {
        if self.handles.is_empty() {
            return self;
        }
        match UringWorkers::start(&self.handles) {
            Ok(rings) => {
                tracing::info!(
                    rings = rings.count(),
                    "TCP and plain-text HTTP listeners run on io_uring"
                );
                self.rings = Some(rings);
            }
            // A warning, not an error: io_uring is the default, and the
            // node serves on as before, only with more CPU per request.
            Err(e) => tracing::warn!(
                error = %e,
                "this kernel refuses io_uring with deferred task work (Linux 6.1+): every listener runs on epoll (`[node] io = \"epoll\"` says so and silences this)"
            ),
        }
        self
    }

    /// The ring threads, when listeners run on io_uring.
    pub fn rings(&self) -> Option<&UringWorkers> {
        self.rings.as_ref()
    }

    /// How many accept sockets (and backend pools) each listener needs: one
    /// per worker, or one on the caller's runtime.
    pub fn count(&self) -> usize {
        self.handles.len().max(1)
    }

    /// The runtime of each worker, or the caller's when there are none.
    pub fn handles(&self) -> Vec<Handle> {
        if self.handles.is_empty() {
            vec![Handle::current()]
        } else {
            self.handles.clone()
        }
    }

    /// Runs `make(i)` on every worker `i`.
    pub fn spawn_each<F>(&self, mut make: impl FnMut(usize) -> F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        for (i, h) in self.handles().iter().enumerate() {
            h.spawn(make(i));
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        // The ring threads first: they use the runtimes' timers.
        drop(self.rings.take());
        self.stop.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn each_worker_runs_its_own_tasks_on_its_own_thread() -> io::Result<()> {
        let workers = Workers::start(2)?;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        workers.spawn_each(|i| {
            let tx = tx.clone();
            async move {
                let name = std::thread::current().name().map(str::to_string);
                let _ = tx.send((i, current(), name));
            }
        });
        let mut seen = Vec::new();
        for _ in 0..2 {
            seen.extend(rx.recv().await);
        }
        seen.sort();
        assert_eq!(
            seen,
            [
                (0, 0, Some("shoal-dp-0".to_string())),
                (1, 1, Some("shoal-dp-1".to_string()))
            ]
        );
        Ok(())
    }

    #[test]
    fn per_worker_slots_are_apart_and_wrap_around() {
        let slots = PerWorker::with_count(2, || std::sync::atomic::AtomicUsize::new(0));
        for w in 0..5 {
            slots.of(w).fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let counts: Vec<_> = slots
            .iter()
            .map(|s| s.load(std::sync::atomic::Ordering::Relaxed))
            .collect();
        assert_eq!(counts, [3, 2]);
        // At least a cache line apart.
        let (a, b) = (slots.of(0) as *const _ as usize, slots.of(1) as *const _ as usize);
        assert!(b.abs_diff(a) >= 64, "slots {} bytes apart", b.abs_diff(a));
        // No slot count is no worker at all: one slot.
        assert_eq!(PerWorker::with_count(0, || ()).iter().count(), 1);
    }

    #[tokio::test]
    async fn without_workers_tasks_run_on_the_callers_runtime() -> io::Result<()> {
        let workers = Workers::start(0)?;
        assert_eq!(workers.count(), 1);
        let (tx, rx) = tokio::sync::oneshot::channel();
        let mut tx = Some(tx);
        workers.spawn_each(|i| {
            let tx = tx.take();
            async move {
                if let Some(tx) = tx {
                    let _ = tx.send(i);
                }
            }
        });
        assert_eq!(rx.await.ok(), Some(0));
        Ok(())
    }
}
